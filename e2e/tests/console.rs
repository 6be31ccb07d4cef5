//! The web console in a real browser (headless Chromium via chromedriver, see
//! `sundial_e2e::webdriver`), against a real server and daemon: sign-in with a
//! wrong and a right key, a job created through the API appears, a
//! `<script>` description renders as text, a triggered run finishes on the
//! run page without a reload, pause and resume, a new join token's secret is
//! shown once, and a read-scope key sees no action controls. Plain HTTP
//! checks cover what a browser does not show: security headers, cookie
//! attributes, CSRF and scope refusals of forged POSTs.
//!
//! Screenshots of each page go to `target/console-screenshots/` (or
//! `$CONSOLE_SCREENSHOTS`); the current ones are in `docs/console/`.
//! Under `CI=true` a missing browser fails the test; otherwise it skips.

use anyhow::{Context, Result};
use serde_json::{json, Value};
use std::path::PathBuf;
use std::time::Duration;
use sundial_e2e::webdriver::{Browser, Chromedriver};
use sundial_e2e::{skip_without, wait_for, DaemonProc, LitefsDouble, ServerProc, ADMIN_KEY};

const XSS: &str = "<script>alert(1)</script>";

fn shots_dir() -> PathBuf {
    let dir = std::env::var_os("CONSOLE_SCREENSHOTS")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/console-screenshots")
        });
    std::fs::create_dir_all(&dir).expect("creating the screenshot directory");
    dir
}

/// The run page's live state, read in one step (htmx replaces the element
/// every second, so a held element reference goes stale).
fn run_state(b: &Browser) -> Result<String> {
    let v = b.execute(
        "var e = document.getElementById('run-live'); return e ? e.getAttribute('data-state') : '';",
    )?;
    Ok(v.as_str().unwrap_or_default().to_string())
}

fn sign_in(b: &Browser, base: &str, key: &str) -> Result<()> {
    b.goto(&format!("{base}/ui/login"))?;
    let field = b.must("#key")?;
    b.type_text(&field, key)?;
    b.click(&b.must("#sign-in")?)?;
    Ok(())
}

/// Clicks an action link, then the confirmation page's button.
fn confirm_action(b: &Browser, link: &str) -> Result<()> {
    b.click(&b.must(link)?)?;
    b.wait(Duration::from_secs(10), |b| b.find("#confirm"))?;
    b.click(&b.must("#confirm")?)?;
    Ok(())
}

#[test]
fn console_in_a_real_browser() {
    if skip_without("chromium") || skip_without("chromedriver") {
        return;
    }
    run().unwrap();
}

fn run() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let shots = shots_dir();
    let server = ServerProc::start(&dir.path().join("data"))?;
    let base = server.base.clone();
    let token = server.join_token()?;
    let _daemon = DaemonProc::start(
        &base,
        &token,
        "worker-1",
        &dir.path().join("worker-1"),
        &["--labels", "role=worker,zone=a", "--capacity", "4"],
    )?;
    wait_for(Duration::from_secs(20), || {
        let (_, nodes) = server.call("GET", "/v1/nodes", None).ok()?;
        (nodes["items"][0]["status"] == "ready").then_some(())
    })
    .context("the daemon did not become ready")?;

    // Jobs created through the API.
    let (st, body) = server.call(
        "PUT",
        "/v1/jobs/hello",
        Some(&json!({
            "schedule": "0 30 2 * * *", "timezone": "Europe/Berlin",
            "executor": {"type": "shell", "script": "echo started; sleep 2; echo hello from sundial"},
            "description": XSS
        })),
    )?;
    assert_eq!(st, 201, "{body}");
    for (id, sched, labels) in [
        (
            "nightly-report",
            "0 0 3 * * *",
            json!({"team": "pay", "tier": "1"}),
        ),
        ("cleanup", "@every 6h", json!({"team": "pay"})),
        ("ping", "@every 1m", json!({})),
    ] {
        let (st, body) = server.call(
            "PUT",
            &format!("/v1/jobs/{id}"),
            Some(
                &json!({"schedule": sched, "executor": {"type": "exec", "argv": ["/bin/true"]},
                         "description": format!("{id} (example)"), "labels": labels}),
            ),
        )?;
        assert!(st == 201, "{body}");
    }

    // A watched job that never succeeds: overdue after a second.
    let (st, body) = server.call(
        "PUT",
        "/v1/jobs/watched",
        Some(
            &json!({"schedule": "@every 24h", "executor": {"type": "exec", "argv": ["/bin/true"]},
                     "alert": {"overdue_after": "1s"}}),
        ),
    )?;
    assert_eq!(st, 201, "{body}");

    let driver = Chromedriver::start(&dir.path().join("chromedriver.log"), "America/New_York")?;
    let b = Browser::open(&driver)?;

    // `/` redirects to the console, which asks for a key.
    b.goto(&format!("{base}/"))?;
    assert!(
        b.current_url()?.ends_with("/ui/login"),
        "{}",
        b.current_url()?
    );

    // A wrong key: a clear error, still on the sign-in page.
    sign_in(&b, &base, "sdk_not-a-real-key")?;
    let err = b.wait(Duration::from_secs(10), |b| b.find("#login-error"))?;
    let text = b.text(&err)?;
    assert!(text.contains("not valid"), "error text: {text}");
    b.screenshot(&shots.join("login-error.png"))?;

    // The admin key: the overview.
    sign_in(&b, &base, ADMIN_KEY)?;
    b.wait(Duration::from_secs(10), |b| b.find("#role"))?;
    assert_eq!(b.text(&b.must("#role")?)?, "primary");
    assert!(
        b.source()?.contains("1 ready"),
        "overview shows the ready node"
    );

    // The jobs page lists the API-created job; the description is text.
    b.goto(&format!("{base}/ui/jobs"))?;
    let link = b.must("a[href='/ui/jobs/hello']")?;
    assert_eq!(b.text(&link)?, "hello");
    let src = b.source()?;
    assert!(
        !src.contains(XSS),
        "the description reached the DOM as markup"
    );
    assert!(src.contains("&lt;script&gt;alert(1)&lt;/script&gt;"));
    assert!(b.alert_text().is_none(), "an alert opened");
    b.screenshot(&shots.join("jobs.png"))?;

    // Filter by job labels: the form's field (all pairs must match), and
    // repeated `label=k=v` parameters; a job's labels show on its row.
    b.type_text(&b.must("#label")?, "team=pay")?;
    b.click(&b.must("#filter")?)?;
    b.wait(Duration::from_secs(10), |b| {
        Ok(b.current_url()?.contains("label=team%3Dpay").then_some(()))
    })?;
    let ids = |b: &Browser| -> Result<Vec<String>> {
        b.find_all("#jobs tbody tr td:first-child > a:first-child")?
            .iter()
            .map(|a| b.text(a))
            .collect()
    };
    assert_eq!(ids(&b)?, vec!["cleanup", "nightly-report"]);
    b.goto(&format!("{base}/ui/jobs?label=team%3Dpay&label=tier%3D1"))?;
    assert_eq!(ids(&b)?, vec!["nightly-report"]);
    let pills: Vec<String> = b
        .find_all("#jobs a.pill.label")?
        .iter()
        .map(|a| b.text(a))
        .collect::<Result<_>>()?;
    assert_eq!(pills, vec!["team=pay", "tier=1"]);
    b.goto(&format!("{base}/ui/jobs?label=team%3Dops"))?;
    assert!(ids(&b)?.is_empty());
    b.goto(&format!("{base}/ui/jobs?label=no-equals-sign"))?;
    assert!(b.source()?.contains("must be key=value"));
    b.goto(&format!("{base}/ui/jobs/nightly-report"))?;
    assert_eq!(b.text(&b.must("#job-labels")?)?, "team=pay tier=1");

    // The job page: description as text, next fires with the DST note column.
    b.goto(&format!("{base}/ui/jobs/hello"))?;
    assert_eq!(b.text(&b.must("#description")?)?, XSS);
    assert_eq!(b.find_all("#fires tbody tr")?.len(), 10);
    // Times: the viewer's zone (the browser runs in New York), UTC on hover;
    // the fires table's UTC column stays UTC.
    let next = b.must("dl.kv time")?;
    let (shown, hover) = (b.text(&next)?, b.attr(&next, "title")?.unwrap_or_default());
    assert!(hover.ends_with(" UTC"), "hover text: {hover:?}");
    assert!(
        !shown.ends_with("UTC") && shown != hover,
        "not localized: {shown:?}"
    );
    let utc = b.must("#fires time.keep")?;
    assert!(b.text(&utc)?.ends_with(" UTC"));
    assert_eq!(b.attr(&utc, "title")?, None);
    assert!(b.alert_text().is_none(), "an alert opened");

    // Trigger: confirmation, then the run page follows the run to its end
    // without a reload (a marker set on the page must survive).
    confirm_action(&b, "#trigger")?;
    b.wait(Duration::from_secs(10), |b| b.find("#run-live"))?;
    let run_url = b.current_url()?;
    assert!(run_url.contains("/ui/runs/"), "{run_url}");
    b.execute("window.__sundialMarker = 42; return null;")?;
    let first = run_state(&b)?;
    assert!(
        first == "pending" || first == "running",
        "state on arrival: {first}"
    );
    // Catch it running (the script sleeps 2 s) for the screenshot.
    let saw_running = b.wait(Duration::from_secs(10), |b| {
        let s = run_state(b)?;
        Ok((s != "pending").then_some(s))
    })?;
    if saw_running == "running" {
        b.screenshot(&shots.join("run-running.png"))?;
    }
    b.wait(Duration::from_secs(30), |b| {
        Ok((run_state(b)? == "succeeded").then_some(()))
    })?;
    // Finished: the fragment no longer asks to be polled.
    let live = b.must("#run-live")?;
    assert_eq!(
        b.attr(&live, "hx-trigger")?,
        None,
        "still polling a finished run"
    );
    assert_eq!(
        b.execute("return window.__sundialMarker;")?,
        json!(42),
        "the page reloaded"
    );
    let out = b.text(&b.must("#output")?)?;
    assert!(out.contains("hello from sundial"), "output: {out}");
    assert_eq!(b.text(&b.must("#exit-code")?)?, "0");
    b.screenshot(&shots.join("run.png"))?;

    // Pause and resume, each confirmed; the API agrees.
    b.goto(&format!("{base}/ui/jobs/hello"))?;
    confirm_action(&b, "#pause")?;
    b.wait(Duration::from_secs(10), |b| b.find("#resume"))?;
    assert_eq!(b.text(&b.must("#job-status")?)?, "paused");
    assert_eq!(
        server.call("GET", "/v1/jobs/hello", None)?.1["paused"],
        true
    );
    confirm_action(&b, "#resume")?;
    b.wait(Duration::from_secs(10), |b| b.find("#pause"))?;
    assert_eq!(b.text(&b.must("#job-status")?)?, "active");
    assert_eq!(
        server.call("GET", "/v1/jobs/hello", None)?.1["paused"],
        false
    );
    b.screenshot(&shots.join("job.png"))?;

    // Two more runs for the history strip and the duration chart.
    for _ in 0..2 {
        assert_eq!(server.call("POST", "/v1/jobs/hello/trigger", None)?.0, 201);
    }
    wait_for(Duration::from_secs(30), || {
        let runs = server.all_runs("hello").ok()?;
        (runs.len() == 3 && runs.iter().all(|r| r["state"] == "succeeded")).then_some(())
    })
    .context("the extra runs did not finish")?;
    b.goto(&format!("{base}/ui/jobs/hello"))?;
    assert_eq!(b.find_all(".strip a")?.len(), 3);
    assert_eq!(b.find_all("svg.chart rect")?.len(), 3);
    b.execute("document.getElementById('history').scrollIntoView(); return null;")?;
    b.screenshot(&shots.join("job-history.png"))?;

    // A running run's output grows live: a job printing a line every 0.5 s
    // shows its first lines on the run page while it still runs.
    let (st, body) = server.call(
        "PUT",
        "/v1/jobs/ticker",
        Some(
            &json!({"schedule": "@every 24h", "executor": {"type": "shell",
            "script": "for i in 1 2 3 4 5 6 7 8 9 10; do echo tick $i; sleep 0.5; done"}}),
        ),
    )?;
    assert_eq!(st, 201, "{body}");
    let (st, run) = server.call("POST", "/v1/jobs/ticker/trigger", None)?;
    assert_eq!(st, 201, "{run}");
    let run_id = run["id"].as_i64().context("trigger returned no run id")?;
    b.goto(&format!("{base}/ui/runs/{run_id}"))?;
    b.execute("window.__sundialMarker = 7; return null;")?;
    let (partial, state) = b.wait(Duration::from_secs(20), |b| {
        let Some(out) = b.find("#output")? else {
            return Ok(None);
        };
        let (out, state) = (b.text(&out)?, run_state(b)?);
        Ok(out.contains("tick 2").then_some((out, state)))
    })?;
    assert_eq!(state, "running", "output only seen at the end: {partial}");
    assert!(!partial.contains("tick 10"), "{partial}");
    b.wait(Duration::from_secs(30), |b| {
        Ok((run_state(b)? == "succeeded").then_some(()))
    })?;
    assert!(b.text(&b.must("#output")?)?.contains("tick 10"));
    assert_eq!(b.execute("return window.__sundialMarker;")?, json!(7));

    // Events: newest first, filtered by family; a new event appears at the
    // top without a reload.
    b.goto(&format!("{base}/ui/events"))?;
    assert!(b
        .find("nav a[href='/ui/events'][aria-current='page']")?
        .is_some());
    let kinds = |b: &Browser| -> Result<Vec<String>> {
        b.find_all("#events tr.event .pill")?
            .iter()
            .map(|p| b.text(p))
            .collect()
    };
    assert!(kinds(&b)?.contains(&"run.succeeded".to_string()));
    b.goto(&format!("{base}/ui/events?type=job.*&job=cleanup"))?;
    b.execute("window.__sundialMarker = 9; return null;")?;
    let before = kinds(&b)?;
    assert!(
        !before.is_empty() && before.iter().all(|k| k.starts_with("job.")),
        "{before:?}"
    );
    assert_eq!(server.call("POST", "/v1/jobs/cleanup/pause", None)?.0, 200);
    b.wait(Duration::from_secs(10), |b| {
        Ok((kinds(b)?.first().map(String::as_str) == Some("job.paused")).then_some(()))
    })?;
    assert_eq!(b.execute("return window.__sundialMarker;")?, json!(9));
    assert_eq!(kinds(&b)?.len(), before.len() + 1);
    b.goto(&format!("{base}/ui/events"))?;
    b.screenshot(&shots.join("events.png"))?;
    b.goto(&format!("{base}/ui/events?type=runs.*"))?;
    assert!(b.source()?.contains("matches no event type"));

    // Readable on a phone: the jobs page at 390 px.
    b.set_window(390, 844)?;
    b.goto(&format!("{base}/ui/jobs"))?;
    b.screenshot(&shots.join("jobs-phone.png"))?;
    b.set_window(1280, 800)?;

    // Overview after a run; nodes page.
    // The overview lists the overdue job (marked by the overdue watch).
    b.wait(Duration::from_secs(15), |b| {
        b.goto(&format!("{base}/ui/"))?;
        b.find("#overdue-jobs a[href='/ui/jobs/watched']")
    })?;
    b.screenshot(&shots.join("overview.png"))?;
    b.goto(&format!("{base}/ui/nodes"))?;
    assert!(b.source()?.contains("role=worker, zone=a"));
    b.screenshot(&shots.join("nodes.png"))?;

    // Keys page: a new join token's secret is shown once.
    b.goto(&format!("{base}/ui/keys"))?;
    b.type_text(&b.must("#tok-name")?, "daemonset")?;
    b.click(&b.must("#create-token")?)?;
    let secret = b.wait(Duration::from_secs(10), |b| b.find("#new-secret"))?;
    assert!(b.text(&secret)?.starts_with("sjt_"));
    b.screenshot(&shots.join("keys.png"))?;
    b.goto(&format!("{base}/ui/keys"))?;
    assert!(
        b.find("#new-secret")?.is_none(),
        "the secret was shown twice"
    );

    // Delete a job (confirmed): gone from the list and from the API.
    b.goto(&format!("{base}/ui/jobs/cleanup"))?;
    confirm_action(&b, "#delete")?;
    b.wait(Duration::from_secs(10), |b| b.find("table#jobs"))?;
    assert!(b.find("a[href='/ui/jobs/cleanup']")?.is_none());
    assert_eq!(server.call("GET", "/v1/jobs/cleanup", None)?.0, 404);

    // No CSP violation (or other refusal) in the browser console so far.
    let errors: Vec<String> = b
        .console_log()?
        .into_iter()
        .filter(|m| m.contains("Content Security Policy") || m.contains("Refused"))
        .collect();
    assert!(errors.is_empty(), "browser console: {errors:#?}");

    // Revoke the node (confirmed); the runs above are long done.
    b.goto(&format!("{base}/ui/nodes"))?;
    confirm_action(&b, "a[href='/ui/nodes/worker-1/confirm']")?;
    b.wait(Duration::from_secs(10), |b| b.find("table#nodes"))?;
    assert!(b.source()?.contains(">revoked<"));
    assert_eq!(
        server.call("GET", "/v1/nodes/worker-1", None)?.1["status"],
        "revoked"
    );

    // A read-scope key: no action controls anywhere.
    let (st, created) = server.call(
        "POST",
        "/v1/api-keys",
        Some(&json!({"scope": "read", "name": "viewer"})),
    )?;
    assert_eq!(st, 201, "{created}");
    let read_key = created["key"].as_str().context("key")?.to_string();
    b.click(&b.must("header form[action='/ui/logout'] button")?)?;
    b.wait(Duration::from_secs(10), |b| b.find("#key"))?;
    // Keyboard only: type the key and press Enter.
    b.goto(&format!("{base}/ui/login"))?;
    b.type_text(&b.must("#key")?, &format!("{read_key}\u{E007}"))?;
    b.wait(Duration::from_secs(10), |b| b.find("#role"))?;
    assert!(
        b.find("a[href='/ui/keys']")?.is_none(),
        "read scope sees the keys page link"
    );
    b.goto(&format!("{base}/ui/jobs/hello"))?;
    assert!(
        b.find("#job-actions")?.is_none(),
        "read scope sees job actions"
    );
    assert!(b.find("#trigger")?.is_none() && b.find("#delete")?.is_none());
    // The only form on the page is sign-out.
    let forms = b.find_all("main form")?;
    assert!(forms.is_empty(), "read scope sees {} forms", forms.len());
    b.goto(&format!("{base}/ui/nodes"))?;
    assert!(b.find("table#nodes")?.is_some());
    assert!(
        b.find("a[href$='/confirm']")?.is_none(),
        "read scope sees revoke"
    );
    // Read scope may see the event feed.
    b.goto(&format!("{base}/ui/events"))?;
    assert!(b.find("table#events tr.event")?.is_some());
    b.goto(&format!("{base}/ui/jobs/hello"))?;
    b.screenshot(&shots.join("job-read-only.png"))?;
    drop(b);
    drop(driver);

    http_checks(&server, &read_key)?;
    eprintln!("console screenshots: {}", shots.display());
    Ok(())
}

/// A no-redirect HTTP client with a manual cookie jar of one cookie per name.
struct Plain {
    http: reqwest::blocking::Client,
    base: String,
    cookies: Vec<(String, String)>,
}

impl Plain {
    fn new(base: &str) -> Result<Plain> {
        Ok(Plain {
            http: reqwest::blocking::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .timeout(Duration::from_secs(30))
                .build()?,
            base: base.to_string(),
            cookies: Vec::new(),
        })
    }

    fn send(
        &mut self,
        method: &str,
        path: &str,
        form: Option<&[(&str, &str)]>,
    ) -> Result<reqwest::blocking::Response> {
        let mut req = self.http.request(
            reqwest::Method::from_bytes(method.as_bytes())?,
            format!("{}{path}", self.base),
        );
        if !self.cookies.is_empty() {
            let c: Vec<String> = self
                .cookies
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect();
            req = req.header("cookie", c.join("; "));
        }
        if let Some(f) = form {
            req = req.form(f);
        }
        let resp = req.send()?;
        for sc in resp.headers().get_all("set-cookie") {
            let sc = sc.to_str()?.to_string();
            let pair = sc.split(';').next().unwrap_or_default();
            if let Some((k, v)) = pair.split_once('=') {
                self.cookies.retain(|(n, _)| n != k);
                if !v.is_empty() {
                    self.cookies.push((k.to_string(), v.to_string()));
                }
            }
        }
        Ok(resp)
    }

    /// The `csrf` hidden field of the page at `path`.
    fn csrf(&mut self, path: &str) -> Result<String> {
        let html = self.send("GET", path, None)?.text()?;
        let at = html
            .find("name=\"csrf\" value=\"")
            .context("no csrf field")?
            + 19;
        Ok(html[at..].split('"').next().unwrap_or_default().to_string())
    }

    fn login(&mut self, key: &str) -> Result<u16> {
        let csrf = self.csrf("/ui/login")?;
        Ok(self
            .send("POST", "/ui/login", Some(&[("key", key), ("csrf", &csrf)]))?
            .status()
            .as_u16())
    }
}

/// The console's own error page: `status`, HTML, with its security headers.
fn error_page(resp: &reqwest::blocking::Response, status: u16) -> Result<()> {
    anyhow::ensure!(
        resp.status().as_u16() == status,
        "status {} (wanted {status})",
        resp.status()
    );
    anyhow::ensure!(
        resp.headers().contains_key("content-security-policy"),
        "no CSP"
    );
    let ct = resp
        .headers()
        .get("content-type")
        .context("no content type")?;
    anyhow::ensure!(ct.to_str()?.starts_with("text/html"), "content type {ct:?}");
    Ok(())
}

fn http_checks(server: &ServerProc, read_key: &str) -> Result<()> {
    let base = &server.base;
    // Security headers and cookie attributes.
    let mut anon = Plain::new(base)?;
    let resp = anon.send("GET", "/ui/login", None)?;
    let h = resp.headers();
    let csp = h.get("content-security-policy").context("CSP")?.to_str()?;
    assert!(csp.contains("default-src 'self'") && csp.contains("script-src 'self'"));
    assert!(!csp.contains("unsafe-inline") && !csp.contains("unsafe-eval"));
    assert_eq!(h.get("x-frame-options").context("XFO")?, "DENY");
    assert_eq!(h.get("referrer-policy").context("referrer")?, "no-referrer");
    assert_eq!(
        h.get("x-content-type-options").context("nosniff")?,
        "nosniff"
    );
    let assets = anon.send("GET", "/ui/assets/htmx.min.js", None)?;
    assert_eq!(assets.status(), 200);
    assert!(assets.headers()["cache-control"]
        .to_str()?
        .contains("max-age"));
    // A page without a session redirects to sign-in; an htmx poll is told
    // to load the sign-in page (a 303 would be followed inside the fragment).
    assert_eq!(anon.send("GET", "/ui/jobs", None)?.status(), 303);
    let resp = anon
        .http
        .get(format!("{base}/ui/runs/1/live"))
        .header("hx-request", "true")
        .send()?;
    assert_eq!(resp.status(), 401);
    assert_eq!(resp.headers()["hx-redirect"], "/ui/login");

    // Sign-in without the login form's token is refused.
    let mut forged = Plain::new(base)?;
    let st = forged
        .send(
            "POST",
            "/ui/login",
            Some(&[("key", ADMIN_KEY), ("csrf", "guess")]),
        )?
        .status();
    assert_eq!(st, 403);

    // Admin session: cookie attributes; a POST without the CSRF token is refused.
    let mut admin = Plain::new(base)?;
    let resp = {
        let csrf = admin.csrf("/ui/login")?;
        admin.send(
            "POST",
            "/ui/login",
            Some(&[("key", ADMIN_KEY), ("csrf", &csrf)]),
        )?
    };
    assert_eq!(resp.status(), 303);
    let cookie = resp
        .headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find(|v| v.starts_with("sundial_session="))
        .context("session cookie")?
        .to_string();
    for attr in ["HttpOnly", "SameSite=Strict", "Path=/ui"] {
        assert!(cookie.contains(attr), "cookie lacks {attr}: {cookie}");
    }
    // Pages that do not exist: the console's 404 page, with its headers.
    let resp = anon.send("GET", "/ui/nosuch", None)?;
    error_page(&resp, 404)?;
    for path in ["/ui/jobs/nope/confirm/delete", "/ui/nodes/nope/confirm"] {
        assert_eq!(admin.send("GET", path, None)?.status(), 404, "{path}");
    }
    // A method a page does not answer: the console's 405 page.
    error_page(&admin.send("GET", "/ui/jobs/hello/pause", None)?, 405)?;
    // A bad query parameter or form body: the console's 400 page, not
    // axum's plain text.
    for path in [
        "/ui/jobs?page=abc",
        "/ui/events?after=x",
        "/ui/events/live?after=-",
    ] {
        let resp = admin.send("GET", path, None)?;
        error_page(&resp, 400).context(path)?;
        let text = resp.text()?;
        assert!(text.contains("bad parameter"), "{path}: {text}");
    }
    let resp = anon
        .http
        .post(format!("{base}/ui/login"))
        .header("content-type", "text/plain")
        .body("key=x")
        .send()?;
    error_page(&resp, 400).context("a form that is not one")?;
    let text = resp.text()?;
    assert!(text.contains("The form could not be read"), "{text}");
    let runs_before = server.all_runs("hello")?.len();
    let st = admin
        .send("POST", "/ui/jobs/hello/trigger", Some(&[("csrf", "wrong")]))?
        .status();
    assert_eq!(st, 403, "a POST with a wrong CSRF token");
    assert_eq!(
        server.all_runs("hello")?.len(),
        runs_before,
        "a refused POST wrote"
    );
    // Sign-out ends the session server-side: the old cookie no longer works.
    let old = admin.cookies.clone();
    let csrf = admin.csrf("/ui/")?;
    assert_eq!(
        admin
            .send("POST", "/ui/logout", Some(&[("csrf", &csrf)]))?
            .status(),
        303
    );
    let mut replay = Plain::new(base)?;
    replay.cookies = old;
    assert_eq!(
        replay.send("GET", "/ui/", None)?.status(),
        303,
        "a signed-out session still works"
    );

    // Read scope: a forged POST with a valid token is refused (403), nothing written.
    let mut reader = Plain::new(base)?;
    assert_eq!(reader.login(read_key)?, 303);
    let csrf = reader.csrf("/ui/jobs/hello")?;
    for path in [
        "/ui/jobs/hello/trigger",
        "/ui/jobs/hello/pause",
        "/ui/jobs/hello/delete",
        "/ui/nodes/worker-1/revoke",
    ] {
        let st = reader
            .send("POST", path, Some(&[("csrf", &csrf)]))?
            .status();
        assert_eq!(st, 403, "read scope POST {path}");
    }
    assert_eq!(reader.send("GET", "/ui/keys", None)?.status(), 403);
    assert_eq!(server.all_runs("hello")?.len(), runs_before);
    let (_, job): (u16, Value) = server.call("GET", "/v1/jobs/hello", None)?;
    assert_eq!(job["paused"], false);
    Ok(())
}

fn start_ha(
    shared: &std::path::Path,
    double: &LitefsDouble,
    secret: &std::path::Path,
) -> Result<ServerProc> {
    ServerProc::start_args(
        shared,
        &[
            "--ha-mode",
            "litefs",
            "--litefs-dir",
            double.dir.to_str().context("path")?,
            "--litefs-api",
            &double.api_url(),
            "--peer-url-template",
            "http://{hostname}",
            "--cluster-secret-file",
            secret.to_str().context("path")?,
            "--lease",
            "3s",
        ],
    )
}

fn is_primary(s: &ServerProc) -> bool {
    s.call("GET", "/v1/ha/primary", None)
        .map(|(st, _)| st == 200)
        .unwrap_or(false)
}

/// Sessions live in the database: a console used through a replica signs in
/// and acts (its POSTs are forwarded to the primary), and the same session
/// keeps working on both servers after a failover. Plain HTTP (no browser).
#[test]
fn console_through_a_replica_and_across_a_failover() {
    replica_and_failover().unwrap();
}

fn replica_and_failover() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let shared = dir.path().join("litefs-mount");
    let secret = dir.path().join("cluster.secret");
    std::fs::write(&secret, "e2e-cluster-secret-0123456789\n")?;
    let d1 = LitefsDouble::start(&dir.path().join("l1"))?;
    let d2 = LitefsDouble::start(&dir.path().join("l2"))?;
    d1.make_primary()?;
    let s1 = start_ha(&shared, &d1, &secret)?;
    let host = |s: &ServerProc| format!("127.0.0.1:{}", s.port);
    d2.make_replica(Some(&host(&s1)))?;
    let s2 = start_ha(&shared, &d2, &secret)?;
    assert!(is_primary(&s1) && !is_primary(&s2));
    let spec = json!({"schedule": "@every 1h", "executor": {"type": "exec", "argv": ["true"]}});
    assert_eq!(s1.call("PUT", "/v1/jobs/ha-job", Some(&spec))?.0, 201);

    // Through the replica: sign in (forwarded), read, act (forwarded).
    let mut c = Plain::new(&s2.base)?;
    assert_eq!(c.login(ADMIN_KEY)?, 303, "sign-in through the replica");
    let page = c.send("GET", "/ui/jobs", None)?;
    assert_eq!(page.status(), 200);
    assert!(page.text()?.contains("ha-job"));
    let csrf = c.csrf("/ui/jobs/ha-job")?;
    let st = c
        .send("POST", "/ui/jobs/ha-job/pause", Some(&[("csrf", &csrf)]))?
        .status();
    assert_eq!(st, 303, "pause through the replica");
    assert_eq!(s1.call("GET", "/v1/jobs/ha-job", None)?.1["paused"], true);

    // Failover: s2 becomes primary, s1 a replica of it.
    d1.make_replica(Some(&host(&s2)))?;
    d2.make_primary()?;
    wait_for(Duration::from_secs(10), || is_primary(&s2).then_some(()))
        .context("s2 did not become primary")?;
    wait_for(Duration::from_secs(10), || {
        let (_, st) = s1.call("GET", "/v1/ha/status", None).ok()?;
        (st["role"] == "replica" && st["primary_url"] == format!("http://{}", host(&s2)))
            .then_some(())
    })
    .context("s1 did not follow s2")?;

    // The same session works on the new primary and through the new replica.
    let page = c.send("GET", "/ui/", None)?;
    assert_eq!(page.status(), 200, "session on the new primary");
    assert!(page.text()?.contains(">primary<"));
    let csrf = c.csrf("/ui/jobs/ha-job")?;
    let st = c
        .send("POST", "/ui/jobs/ha-job/resume", Some(&[("csrf", &csrf)]))?
        .status();
    assert_eq!(st, 303, "resume on the new primary");
    assert_eq!(s2.call("GET", "/v1/jobs/ha-job", None)?.1["paused"], false);
    let mut via_s1 = Plain::new(&s1.base)?;
    via_s1.cookies = c.cookies.clone();
    assert_eq!(via_s1.send("GET", "/ui/jobs/ha-job", None)?.status(), 200);
    let st = via_s1
        .send("POST", "/ui/jobs/ha-job/pause", Some(&[("csrf", &csrf)]))?
        .status();
    assert_eq!(st, 303, "pause forwarded by the new replica");
    assert_eq!(s2.call("GET", "/v1/jobs/ha-job", None)?.1["paused"], true);
    // Sign-out through the replica ends the session everywhere.
    assert_eq!(
        via_s1
            .send("POST", "/ui/logout", Some(&[("csrf", &csrf)]))?
            .status(),
        303
    );
    assert_eq!(c.send("GET", "/ui/", None)?.status(), 303);
    Ok(())
}

/// Under TLS the console's cookies carry `Secure` (and still `HttpOnly`,
/// `SameSite=Strict`, `Path=/ui`).
#[test]
fn console_cookies_are_secure_under_tls() {
    tls_cookies().unwrap();
}

fn tls_cookies() -> Result<()> {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
    let dir = tempfile::tempdir()?;
    let ca_key = KeyPair::generate()?;
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key)?;
    let key = KeyPair::generate()?;
    let cert =
        CertificateParams::new(vec!["localhost".to_string()])?.signed_by(&key, &ca, &ca_key)?;
    let (ca_pem, cert_pem, key_pem) = (
        dir.path().join("ca.pem"),
        dir.path().join("cert.pem"),
        dir.path().join("key.pem"),
    );
    std::fs::write(&ca_pem, ca.pem())?;
    std::fs::write(&cert_pem, cert.pem())?;
    std::fs::write(&key_pem, key.serialize_pem())?;
    let server = ServerProc::start_tls(&dir.path().join("data"), &cert_pem, &key_pem, &ca_pem)?;
    let http = reqwest::blocking::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(&std::fs::read(&ca_pem)?)?)
        .build()?;
    let set_cookie = |r: &reqwest::blocking::Response, name: &str| -> Option<String> {
        r.headers()
            .get_all("set-cookie")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .find(|v| v.starts_with(&format!("{name}=")))
            .map(str::to_string)
    };
    let resp = http.get(format!("{}/ui/login", server.base)).send()?;
    let login = set_cookie(&resp, "sundial_login").context("login cookie")?;
    assert!(login.ends_with("; Secure"), "{login}");
    let token = login.split(';').next().unwrap_or_default().to_string();
    let html = resp.text()?;
    let at = html.find("name=\"csrf\" value=\"").context("csrf")? + 19;
    let csrf = html[at..].split('"').next().unwrap_or_default().to_string();
    let resp = http
        .post(format!("{}/ui/login", server.base))
        .header("cookie", token)
        .form(&[("key", ADMIN_KEY), ("csrf", csrf.as_str())])
        .send()?;
    assert_eq!(resp.status(), 303);
    let session = set_cookie(&resp, "sundial_session").context("session cookie")?;
    for attr in ["HttpOnly", "SameSite=Strict", "Path=/ui", "Secure"] {
        assert!(
            session.contains(attr),
            "session cookie lacks {attr}: {session}"
        );
    }
    Ok(())
}
