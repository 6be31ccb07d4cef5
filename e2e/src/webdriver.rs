//! A minimal W3C WebDriver client over blocking reqwest, for the console's
//! browser tests: it starts `chromedriver` (Debian's `chromium-driver`) on a
//! free loopback port as a child process, opens one headless Chromium session
//! and offers the dozen commands the tests use (navigate, find, click, type,
//! read text/attributes, run a script, screenshot).
//!
//! Why hand-written: the protocol is a few JSON POSTs; a client crate
//! (fantoccini, thirtyfour) would pull in an async stack and dozens of crates
//! for that, and the e2e tests are synchronous like the rest of the harness.

use crate::{free_port, which};
use anyhow::{bail, Context, Result};
use base64::Engine;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The key under which W3C WebDriver returns element references.
const ELEMENT_KEY: &str = "element-6066-11e4-a52e-4f735466cecf";

/// Chromium's flags that work in this environment (no sandbox, no network noise).
const CHROMIUM_ARGS: &[&str] = &[
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--window-size=1280,800",
];

/// A running `chromedriver`, killed by PID on drop.
pub struct Chromedriver {
    child: Option<Child>,
    pub url: String,
    pub log: PathBuf,
}

impl Chromedriver {
    /// Starts chromedriver on a free loopback port and waits until it is ready.
    /// The browser it starts runs in time zone `tz` (IANA name, via `TZ`).
    pub fn start(log: &Path, tz: &str) -> Result<Chromedriver> {
        let exe = which("chromedriver").context("chromedriver is not on PATH")?;
        let port = free_port()?;
        let out = std::fs::File::create(log)?;
        let child = Command::new(exe)
            .arg(format!("--port={port}"))
            .arg("--allowed-ips=127.0.0.1")
            .env("TZ", tz)
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()
            .context("spawning chromedriver")?;
        let d = Chromedriver {
            child: Some(child),
            url: format!("http://127.0.0.1:{port}"),
            log: log.to_path_buf(),
        };
        let http = client()?;
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(r) = http.get(format!("{}/status", d.url)).send() {
                if let Ok(v) = r.json::<Value>() {
                    if v["value"]["ready"] == true {
                        return Ok(d);
                    }
                }
            }
            if Instant::now() > deadline {
                bail!(
                    "chromedriver not ready after 20 s; log:\n{}",
                    std::fs::read_to_string(log).unwrap_or_default()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Chromedriver {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn client() -> Result<reqwest::blocking::Client> {
    Ok(reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()?)
}

/// An element reference.
#[derive(Debug, Clone)]
pub struct Element(String);

/// One browser session; deleted (the browser quits) on drop.
pub struct Browser {
    http: reqwest::blocking::Client,
    base: String,
    _profile: tempfile::TempDir,
}

impl Browser {
    /// Opens a headless Chromium with a fresh profile directory.
    pub fn open(driver: &Chromedriver) -> Result<Browser> {
        let profile = tempfile::tempdir()?;
        let binary = which("chromium").context("chromium is not on PATH")?;
        let mut args: Vec<String> = CHROMIUM_ARGS.iter().map(|s| s.to_string()).collect();
        args.push(format!("--user-data-dir={}", profile.path().display()));
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "pageLoadStrategy": "normal",
            "goog:chromeOptions": {"binary": binary, "args": args},
            "goog:loggingPrefs": {"browser": "ALL"}
        }}});
        let http = client()?;
        let resp: Value = http
            .post(format!("{}/session", driver.url))
            .json(&caps)
            .send()?
            .json()?;
        let id = resp["value"]["sessionId"]
            .as_str()
            .with_context(|| format!("creating a browser session: {resp}"))?;
        Ok(Browser {
            base: format!("{}/session/{id}", driver.url),
            http,
            _profile: profile,
        })
    }

    fn cmd(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Result<Value> {
        let mut req = self.http.request(method, format!("{}{path}", self.base));
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send()?;
        let status = resp.status();
        let v: Value = resp.json()?;
        if !status.is_success() {
            bail!("webdriver {path}: {status} {}", v["value"]);
        }
        Ok(v["value"].clone())
    }

    fn post(&self, path: &str, body: Value) -> Result<Value> {
        self.cmd(reqwest::Method::POST, path, Some(body))
    }

    fn get(&self, path: &str) -> Result<Value> {
        self.cmd(reqwest::Method::GET, path, None)
    }

    pub fn goto(&self, url: &str) -> Result<()> {
        self.post("/url", json!({"url": url})).map(|_| ())
    }

    pub fn current_url(&self) -> Result<String> {
        Ok(self.get("/url")?.as_str().unwrap_or_default().to_string())
    }

    pub fn source(&self) -> Result<String> {
        Ok(self
            .get("/source")?
            .as_str()
            .unwrap_or_default()
            .to_string())
    }

    /// The first element matching a CSS selector, or None.
    pub fn find(&self, css: &str) -> Result<Option<Element>> {
        Ok(self.find_all(css)?.into_iter().next())
    }

    /// The first element matching a CSS selector; an error when there is none.
    pub fn must(&self, css: &str) -> Result<Element> {
        self.find(css)?.with_context(|| {
            format!(
                "no element matches {css:?} on {}",
                self.current_url().unwrap_or_default()
            )
        })
    }

    pub fn find_all(&self, css: &str) -> Result<Vec<Element>> {
        let v = self.post("/elements", json!({"using": "css selector", "value": css}))?;
        Ok(v.as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|e| e[ELEMENT_KEY].as_str().map(|s| Element(s.to_string())))
                    .collect()
            })
            .unwrap_or_default())
    }

    pub fn click(&self, el: &Element) -> Result<()> {
        self.post(&format!("/element/{}/click", el.0), json!({}))
            .map(|_| ())
    }

    pub fn type_text(&self, el: &Element, text: &str) -> Result<()> {
        self.post(&format!("/element/{}/value", el.0), json!({"text": text}))
            .map(|_| ())
    }

    pub fn text(&self, el: &Element) -> Result<String> {
        Ok(self
            .get(&format!("/element/{}/text", el.0))?
            .as_str()
            .unwrap_or_default()
            .to_string())
    }

    pub fn attr(&self, el: &Element, name: &str) -> Result<Option<String>> {
        Ok(self
            .get(&format!("/element/{}/attribute/{name}", el.0))?
            .as_str()
            .map(str::to_string))
    }

    /// Runs a script in the page (WebDriver's, not the page's: CSP does not apply).
    pub fn execute(&self, script: &str) -> Result<Value> {
        self.post("/execute/sync", json!({"script": script, "args": []}))
    }

    /// The text of an open alert/confirm dialog, if one is open.
    pub fn alert_text(&self) -> Option<String> {
        self.get("/alert/text")
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
    }

    /// Browser console messages since the last call (chromedriver's log
    /// endpoint), e.g. to find Content-Security-Policy violations.
    pub fn console_log(&self) -> Result<Vec<String>> {
        let v = self.post("/se/log", json!({"type": "browser"}))?;
        Ok(v.as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|e| e["message"].as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default())
    }

    /// Resizes the browser window (e.g. to a phone's width).
    pub fn set_window(&self, width: u32, height: u32) -> Result<()> {
        self.post("/window/rect", json!({"width": width, "height": height}))
            .map(|_| ())
    }

    /// Writes a PNG screenshot of the viewport.
    pub fn screenshot(&self, path: &Path) -> Result<()> {
        let b64 = self.get("/screenshot")?;
        let png = base64::engine::general_purpose::STANDARD
            .decode(b64.as_str().unwrap_or_default())
            .context("decoding the screenshot")?;
        std::fs::write(path, png)?;
        Ok(())
    }

    /// Polls until `check` returns Some (no reload: reads the live DOM).
    pub fn wait<T>(
        &self,
        timeout: Duration,
        mut check: impl FnMut(&Browser) -> Result<Option<T>>,
    ) -> Result<T> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(v) = check(self)? {
                return Ok(v);
            }
            if Instant::now() > deadline {
                bail!("timed out after {timeout:?} on {}", self.current_url()?);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.http.delete(&self.base).send();
    }
}
