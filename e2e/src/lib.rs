//! Harness for the multi-process tests in `tests/`: starts the real
//! `sundial-server` binary on a loopback port with its own data directory,
//! waits for readiness, talks to it over HTTP, and kills/reaps exactly the
//! processes it started (by PID, never by name).

pub mod agent;
pub mod ha;
pub mod invariants;
pub mod litestream;
pub mod misfire;
pub mod receiver;
pub mod webdriver;

use anyhow::{bail, Context, Result};
use serde_json::Value;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// Admin key the harness seeds into every server it starts.
pub const ADMIN_KEY: &str = "e2e-admin-key-0123456789abcdef";

/// Path of a workspace binary (built by `cargo build --workspace --bins`).
pub fn binary(name: &str) -> Result<PathBuf> {
    let exe = std::env::current_exe()?;
    // Tests run as target/<profile>/deps/<test-binary>; other binaries (the
    // benchmark) as target/<profile>/<binary>. Either way → target/<profile>/<name>.
    let parent = exe.parent().context("locating the target directory")?;
    let dir = if parent.file_name().is_some_and(|n| n == "deps") {
        parent.parent().context("locating the target directory")?
    } else {
        parent
    };
    let path = dir.join(name);
    if !path.exists() {
        bail!(
            "{} not found; build it first (scripts/test.sh runs `cargo build --workspace --bins`)",
            path.display()
        );
    }
    Ok(path)
}

/// A free loopback port (bound and released; the caller binds it next).
pub fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// A `sundial-server` child process.
pub struct ServerProc {
    child: Option<Child>,
    pub port: u16,
    pub data_dir: PathBuf,
    pub log: PathBuf,
    pub base: String,
    http: reqwest::blocking::Client,
    extra_env: Vec<(String, String)>,
}

impl ServerProc {
    /// Starts a server over `data_dir` and waits until `/readyz` answers.
    pub fn start(data_dir: &Path) -> Result<ServerProc> {
        Self::start_with(data_dir, &[])
    }

    pub fn start_with(data_dir: &Path, env: &[(&str, &str)]) -> Result<ServerProc> {
        let port = free_port()?;
        let mut s = ServerProc {
            child: None,
            port,
            data_dir: data_dir.to_path_buf(),
            log: data_dir.with_extension(format!("{port}.log")),
            base: format!("http://127.0.0.1:{port}"),
            http: reqwest::blocking::Client::builder()
                .timeout(Duration::from_secs(30))
                // Below the server's idle keep-alive bound (30 s).
                .pool_idle_timeout(Duration::from_secs(20))
                .build()?,
            extra_env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        };
        s.spawn()?;
        Ok(s)
    }

    /// Starts an HTTPS server with the given certificate; the harness trusts `ca`.
    pub fn start_tls(data_dir: &Path, cert: &Path, key: &Path, ca: &Path) -> Result<ServerProc> {
        let port = free_port()?;
        let pem = std::fs::read(ca)?;
        let mut s = ServerProc {
            child: None,
            port,
            data_dir: data_dir.to_path_buf(),
            log: data_dir.with_extension(format!("{port}.log")),
            base: format!("https://localhost:{port}"),
            http: reqwest::blocking::Client::builder()
                .timeout(Duration::from_secs(30))
                // Below the server's idle keep-alive bound (30 s).
                .pool_idle_timeout(Duration::from_secs(20))
                .tls_built_in_root_certs(false)
                .add_root_certificate(reqwest::Certificate::from_pem(&pem)?)
                .build()?,
            extra_env: vec![
                ("SUNDIAL_TLS_CERT".into(), cert.display().to_string()),
                ("SUNDIAL_TLS_KEY".into(), key.display().to_string()),
            ],
        };
        s.spawn()?;
        Ok(s)
    }

    fn spawn(&mut self) -> Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)?;
        let mut cmd = Command::new(binary("sundial-server")?);
        cmd.arg("serve")
            .arg("--listen")
            .arg(format!("127.0.0.1:{}", self.port))
            .arg("--data-dir")
            .arg(&self.data_dir)
            .env("SUNDIAL_ADMIN_KEY", ADMIN_KEY)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        for (k, v) in &self.extra_env {
            cmd.env(k, v);
        }
        self.child = Some(cmd.spawn().context("spawning sundial-server")?);
        self.wait_ready(Duration::from_secs(30))
    }

    fn wait_ready(&mut self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(child) = self.child.as_mut() {
                if let Some(status) = child.try_wait()? {
                    bail!("server exited early ({status}); log:\n{}", self.log_text());
                }
            }
            if let Ok(r) = self.http.get(format!("{}/readyz", self.base)).send() {
                if r.status().is_success() {
                    return Ok(());
                }
            }
            if Instant::now() > deadline {
                bail!(
                    "server not ready after {timeout:?}; log:\n{}",
                    self.log_text()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Starts the same server again (same port and data) after a stop or kill.
    pub fn restart(&mut self) -> Result<()> {
        if self.child.is_some() {
            bail!("server still running");
        }
        self.spawn()
    }

    /// SIGKILL and reap.
    pub fn kill9(&mut self) -> Result<()> {
        if let Some(mut child) = self.child.take() {
            child.kill()?;
            child.wait()?;
        }
        Ok(())
    }

    /// SIGTERM and wait (bounded) for a clean exit; returns the exit code.
    pub fn terminate(&mut self, timeout: Duration) -> Result<Option<i32>> {
        let Some(mut child) = self.child.take() else {
            return Ok(None);
        };
        Ok(stop_child(&mut child, "TERM", timeout, "server")?.code())
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Sends a request with the admin key; returns (status, JSON or Null).
    pub fn call(&self, method: &str, path: &str, body: Option<&Value>) -> Result<(u16, Value)> {
        let method = reqwest::Method::from_bytes(method.as_bytes())?;
        let mut req = self
            .http
            .request(method, format!("{}{}", self.base, path))
            .bearer_auth(ADMIN_KEY);
        if let Some(b) = body {
            req = req.json(b);
        }
        let resp = req.send()?;
        let status = resp.status().as_u16();
        let text = resp.text()?;
        Ok((status, serde_json::from_str(&text).unwrap_or(Value::Null)))
    }

    /// `PUT /v1/jobs/{id}`; the stored job, or an error naming the refusal.
    pub fn put_job(&self, id: &str, spec: &Value) -> Result<Value> {
        let (status, body) = self.call("PUT", &format!("/v1/jobs/{id}"), Some(spec))?;
        if !matches!(status, 200 | 201) {
            bail!("PUT /v1/jobs/{id}: {status} {body}");
        }
        Ok(body)
    }

    /// `POST /v1/jobs/{id}/trigger`; the new run's id.
    pub fn trigger(&self, id: &str) -> Result<i64> {
        let (status, run) = self.call("POST", &format!("/v1/jobs/{id}/trigger"), None)?;
        match run["id"].as_i64() {
            Some(run_id) if status == 201 => Ok(run_id),
            _ => bail!("POST /v1/jobs/{id}/trigger: {status} {run}"),
        }
    }

    /// Every run of a job (following cursors), oldest first.
    pub fn all_runs(&self, job: &str) -> Result<Vec<Value>> {
        let mut out = Vec::new();
        let mut cursor: Option<String> = None;
        for _ in 0..10_000 {
            let path = match &cursor {
                Some(c) => format!("/v1/runs?job={job}&limit=1000&cursor={c}"),
                None => format!("/v1/runs?job={job}&limit=1000"),
            };
            let (status, body) = self.call("GET", &path, None)?;
            if status != 200 {
                bail!("GET {path}: {status} {body}");
            }
            out.extend(body["items"].as_array().cloned().unwrap_or_default());
            match body["next_cursor"].as_str() {
                Some(c) => cursor = Some(c.to_string()),
                None => break,
            }
        }
        out.reverse();
        Ok(out)
    }
}

impl Drop for ServerProc {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Polls `check` every 50 ms until it returns Some or `timeout` passes.
pub fn wait_for<T>(timeout: Duration, mut check: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check() {
            return Some(v);
        }
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Milliseconds of an RFC 3339 field of a JSON object.
pub fn ms(v: &Value, field: &str) -> i64 {
    v[field]
        .as_str()
        .and_then(sundial_proto::time::parse_rfc3339_ms)
        .unwrap_or_else(|| panic!("{field} is not an RFC 3339 instant in {v}"))
}

impl ServerProc {
    /// Starts a server with extra command-line flags.
    pub fn start_args(data_dir: &Path, args: &[&str]) -> Result<ServerProc> {
        // Flags go through their SUNDIAL_* variables so restart() reuses them.
        let env: Vec<(String, String)> = args
            .chunks(2)
            .filter_map(|pair| match pair {
                [flag, value] => Some((
                    format!(
                        "SUNDIAL_{}",
                        flag.trim_start_matches("--")
                            .replace('-', "_")
                            .to_uppercase()
                    ),
                    value.to_string(),
                )),
                _ => None,
            })
            .collect();
        let refs: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        Self::start_with(data_dir, &refs)
    }

    /// Joins one daemon, `n1`, keeping its state in `dir/n1`, and waits
    /// until it has joined.
    pub fn one_daemon(&self, dir: &Path) -> Result<DaemonProc> {
        let token = self.join_token()?;
        let daemon = DaemonProc::start(&self.base, &token, "n1", &dir.join("n1"), &[])?;
        self.wait_for_a_node();
        Ok(daemon)
    }

    /// Waits (20 s at most) until a node has joined; panics otherwise.
    pub fn wait_for_a_node(&self) {
        wait_for(Duration::from_secs(20), || {
            let (_, n) = self.call("GET", "/v1/nodes", None).ok()?;
            (!n["items"].as_array()?.is_empty()).then_some(())
        })
        .expect("daemon joined");
    }

    /// Creates a join token and returns its secret.
    pub fn join_token(&self) -> Result<String> {
        let (status, body) = self.call(
            "POST",
            "/v1/join-tokens",
            Some(&serde_json::json!({"name": "e2e", "ttl": "1h"})),
        )?;
        if status != 201 {
            bail!("creating a join token: {status} {body}");
        }
        Ok(body["token"].as_str().context("token")?.to_string())
    }

    /// The value of one sample in `/metrics` (`name{labels}` as printed), or 0.
    pub fn metric(&self, sample: &str) -> Result<f64> {
        let text = self
            .http
            .get(format!("{}/metrics", self.base))
            .send()?
            .text()?;
        Ok(text
            .lines()
            .filter(|l| !l.starts_with('#'))
            .find_map(|l| {
                let (name, value) = l.rsplit_once(' ')?;
                (name == sample).then(|| value.parse().ok())?
            })
            .unwrap_or(0.0))
    }

    /// Every row of every table, as text: equal snapshots mean nothing was written.
    pub fn snapshot(&self) -> Result<String> {
        litestream::dump(&self.data_dir.join("sundial.db"))
    }

    /// Every run of the cluster (following cursors), oldest first.
    pub fn every_run(&self) -> Result<Vec<Value>> {
        let mut out = Vec::new();
        let mut cursor: Option<String> = None;
        for _ in 0..100_000 {
            let path = match &cursor {
                Some(c) => format!("/v1/runs?limit=1000&cursor={c}"),
                None => "/v1/runs?limit=1000".to_string(),
            };
            let (status, body) = self.call("GET", &path, None)?;
            if status != 200 {
                bail!("GET {path}: {status} {body}");
            }
            out.extend(body["items"].as_array().cloned().unwrap_or_default());
            match body["next_cursor"].as_str() {
                Some(c) => cursor = Some(c.to_string()),
                None => break,
            }
        }
        out.reverse();
        Ok(out)
    }
}

/// A `sundial-daemon` child process.
pub struct DaemonProc {
    child: Option<Child>,
    pub node_id: String,
    pub state_dir: PathBuf,
    pub log: PathBuf,
    args: Vec<String>,
}

impl DaemonProc {
    /// Starts a daemon joining `server_url` with `token`; extra flags are appended.
    pub fn start(
        server_url: &str,
        token: &str,
        node_id: &str,
        state_dir: &Path,
        extra: &[&str],
    ) -> Result<DaemonProc> {
        let mut args: Vec<String> = vec![
            "--server".into(),
            server_url.into(),
            "--join-token".into(),
            token.into(),
            "--node-id".into(),
            node_id.into(),
            "--state-dir".into(),
            state_dir.display().to_string(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        let mut d = DaemonProc {
            child: None,
            node_id: node_id.to_string(),
            state_dir: state_dir.to_path_buf(),
            log: state_dir.with_extension("log"),
            args,
        };
        d.spawn()?;
        Ok(d)
    }

    fn spawn(&mut self) -> Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)?;
        let child = Command::new(binary("sundial-daemon")?)
            .args(&self.args)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("spawning sundial-daemon")?;
        self.child = Some(child);
        Ok(())
    }

    pub fn restart(&mut self) -> Result<()> {
        if self.child.is_some() {
            bail!("daemon still running");
        }
        self.spawn()
    }

    pub fn kill9(&mut self) -> Result<()> {
        if let Some(mut child) = self.child.take() {
            child.kill()?;
            child.wait()?;
        }
        Ok(())
    }

    /// SIGTERM (drain) and wait up to `timeout`; returns the exit code.
    pub fn terminate(&mut self, timeout: Duration) -> Result<Option<i32>> {
        let Some(mut child) = self.child.take() else {
            return Ok(None);
        };
        Ok(stop_child(&mut child, "TERM", timeout, "daemon")?.code())
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Files waiting in this daemon's result spool.
    pub fn spooled(&self) -> usize {
        std::fs::read_dir(self.state_dir.join("spool"))
            .map(|d| {
                d.flatten()
                    .filter(|e| e.path().extension().is_some_and(|x| x == "json"))
                    .count()
            })
            .unwrap_or(0)
    }
}

impl Drop for DaemonProc {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Waits until no run is pending or running (after jobs were paused).
pub fn wait_quiet(server: &ServerProc, timeout: Duration) -> Result<Vec<Value>> {
    let deadline = Instant::now() + timeout;
    loop {
        let runs = server.every_run()?;
        let busy = runs
            .iter()
            .filter(|r| r["state"] == "pending" || r["state"] == "running")
            .count();
        if busy == 0 {
            return Ok(runs);
        }
        if Instant::now() > deadline {
            bail!("{busy} runs still pending or running after {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// A loopback TCP listener whose connections are each handled by `serve` on
/// a thread of their own. Stops accepting, and joins its accept thread, when
/// dropped; connection threads end with their connections (bound them with
/// read timeouts).
pub struct LoopbackListener {
    pub port: u16,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl LoopbackListener {
    pub fn start(
        serve: impl Fn(std::net::TcpStream) + Send + Sync + 'static,
    ) -> Result<LoopbackListener> {
        use std::sync::atomic::{AtomicBool, Ordering};
        let listener = TcpListener::bind("127.0.0.1:0")?;
        listener.set_nonblocking(true)?;
        let port = listener.local_addr()?.port();
        let stop = std::sync::Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let serve = std::sync::Arc::new(serve);
        let thread = std::thread::spawn(move || {
            while !flag.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((stream, _)) => {
                        let _ = stream.set_nonblocking(false);
                        let serve = serve.clone();
                        std::thread::spawn(move || serve(stream));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        Ok(LoopbackListener {
            port,
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for LoopbackListener {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Reads the head of one HTTP/1.1 request from `stream` and returns its
/// path; a body is left unread (the doubles here answer GETs).
fn request_path(stream: &std::net::TcpStream) -> Option<String> {
    use std::io::{BufRead, BufReader};
    let mut reader = BufReader::new(stream.try_clone().ok()?);
    let mut first = String::new();
    reader.read_line(&mut first).ok()?;
    // Skip the headers.
    let mut line = String::new();
    while reader.read_line(&mut line).map(|n| n > 2).unwrap_or(false) {
        line.clear();
    }
    Some(first.split_whitespace().nth(1).unwrap_or("/").to_string())
}

/// A tiny HTTP target for `http` executor jobs: answers every request with
/// `200` and the request path as the body. Stops when dropped.
pub struct EchoHttp {
    pub port: u16,
    _listener: LoopbackListener,
}

impl EchoHttp {
    pub fn start() -> Result<EchoHttp> {
        use std::io::Write;
        let listener = LoopbackListener::start(|stream| {
            let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
            let Some(path) = request_path(&stream) else {
                return;
            };
            let mut out = stream;
            let _ = write!(
                out,
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{}",
                path.len(),
                path
            );
        })?;
        Ok(EchoHttp {
            port: listener.port,
            _listener: listener,
        })
    }
}

/// A stand-in for LiteFS on one node, speaking its contract: the
/// `<dir>/.primary` file (present only on replicas, holding the primary's host
/// name) and the API's `GET /info` and `GET /events` (JSON lines: `init`, then
/// `primaryChange`). LiteFS itself cannot be installed here; this is what it
/// presents to the application.
pub struct LitefsDouble {
    pub dir: PathBuf,
    pub api_port: u16,
    state: std::sync::Arc<(std::sync::Mutex<DoubleState>, std::sync::Condvar)>,
    /// Ends the `/events` streams when the double is dropped.
    closing: std::sync::Arc<std::sync::atomic::AtomicBool>,
    _listener: LoopbackListener,
}

#[derive(Clone, Debug)]
struct DoubleState {
    version: u64,
    primary: bool,
    primary_host: Option<String>,
}

impl DoubleState {
    fn json(&self, kind: Option<&str>) -> String {
        let host = self.primary_host.clone().unwrap_or_default();
        match kind {
            None => serde_json::json!({"clusterID": "e2e", "isPrimary": self.primary, "candidate": true,
                "path": "/var/lib/litefs", "primary": {"hostname": host}})
            .to_string(),
            Some(k) => serde_json::json!({"type": k, "data": {"isPrimary": self.primary, "hostname": host}}).to_string(),
        }
    }
}

impl LitefsDouble {
    /// Starts as a replica with no known primary.
    pub fn start(dir: &Path) -> Result<LitefsDouble> {
        use std::io::Write;
        use std::sync::atomic::{AtomicBool, Ordering};
        std::fs::create_dir_all(dir)?;
        std::fs::write(dir.join(".primary"), "")?;
        let state = std::sync::Arc::new((
            std::sync::Mutex::new(DoubleState {
                version: 0,
                primary: false,
                primary_host: None,
            }),
            std::sync::Condvar::new(),
        ));
        let closing = std::sync::Arc::new(AtomicBool::new(false));
        let (st, flag) = (state.clone(), closing.clone());
        let listener = LoopbackListener::start(move |stream| {
            let Some(path) = request_path(&stream) else {
                return;
            };
            let mut out = stream;
            let snapshot = || {
                st.0.lock()
                    .map(|s| s.clone())
                    .unwrap_or_else(|p| p.into_inner().clone())
            };
            if path == "/info" {
                let body = snapshot().json(None);
                let _ = write!(out, "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len());
                return;
            }
            if path != "/events" {
                let _ = write!(
                    out,
                    "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                );
                return;
            }
            if write!(
                out,
                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n\r\n"
            )
            .is_err()
            {
                return;
            }
            let mut seen = snapshot();
            if writeln!(out, "{}", seen.json(Some("init")))
                .and_then(|_| out.flush())
                .is_err()
            {
                return;
            }
            while !flag.load(Ordering::Relaxed) {
                let guard = match st.0.lock() {
                    Ok(g) => g,
                    Err(_) => return,
                };
                let (guard, _) = match st.1.wait_timeout(guard, Duration::from_millis(200)) {
                    Ok(r) => r,
                    Err(_) => return,
                };
                let now = guard.clone();
                drop(guard);
                if now.version != seen.version {
                    seen = now;
                    if writeln!(out, "{}", seen.json(Some("primaryChange")))
                        .and_then(|_| out.flush())
                        .is_err()
                    {
                        return;
                    }
                }
            }
        })?;
        Ok(LitefsDouble {
            dir: dir.to_path_buf(),
            api_port: listener.port,
            state,
            closing,
            _listener: listener,
        })
    }

    pub fn api_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.api_port)
    }

    fn set(&self, primary: bool, host: Option<&str>) -> Result<()> {
        // The file first, as LiteFS updates it on the lease change.
        if primary {
            let _ = std::fs::remove_file(self.dir.join(".primary"));
        } else {
            std::fs::write(
                self.dir.join(".primary"),
                format!("{}\n", host.unwrap_or("")),
            )?;
        }
        let mut s = self
            .state
            .0
            .lock()
            .map_err(|_| anyhow::anyhow!("double state poisoned"))?;
        s.version += 1;
        s.primary = primary;
        s.primary_host = host.map(str::to_string);
        self.state.1.notify_all();
        Ok(())
    }

    /// This node holds the lease now.
    pub fn make_primary(&self) -> Result<()> {
        self.set(true, None)
    }

    /// This node follows `host` (None: no primary known).
    pub fn make_replica(&self, host: Option<&str>) -> Result<()> {
        self.set(false, host)
    }
}

impl Drop for LitefsDouble {
    fn drop(&mut self) {
        // The listener stops accepting as it drops, after this.
        self.closing
            .store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

/// A real HAProxy running `haproxy/haproxy.cfg` with loopback addresses.
pub struct HaproxyProc {
    child: Option<Child>,
    pub port: u16,
    /// The stats frontend (`/stats;csv`).
    stats: u16,
    pub log: PathBuf,
}

impl HaproxyProc {
    /// Starts HAProxy in front of two servers. Fails (so the caller can skip
    /// or fail) when the `haproxy` binary is missing.
    pub fn start(dir: &Path, server1: u16, server2: u16) -> Result<HaproxyProc> {
        let bin =
            which("haproxy").context("haproxy is not installed (scripts/test.sh installs it)")?;
        let cfg = Path::new(env!("CARGO_MANIFEST_DIR")).join("../haproxy/haproxy.cfg");
        let port = free_port()?;
        let stats = free_port()?;
        let log = dir.join("haproxy.log");
        let out = std::fs::File::create(&log)?;
        let child = Command::new(bin)
            .arg("-db")
            .arg("-f")
            .arg(&cfg)
            .env("SUNDIAL_HAPROXY_BIND", format!("127.0.0.1:{port}"))
            .env("SUNDIAL_SERVER_1", format!("127.0.0.1:{server1}"))
            .env("SUNDIAL_SERVER_2", format!("127.0.0.1:{server2}"))
            .env("SUNDIAL_HAPROXY_STATS", format!("127.0.0.1:{stats}"))
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()
            .context("spawning haproxy")?;
        let p = HaproxyProc {
            child: Some(child),
            port,
            stats,
            log,
        };
        let up = wait_for(Duration::from_secs(10), || {
            std::net::TcpStream::connect(("127.0.0.1", port)).ok()
        });
        if up.is_none() {
            bail!(
                "haproxy did not listen; log:\n{}",
                std::fs::read_to_string(&p.log).unwrap_or_default()
            );
        }
        Ok(p)
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The health of each server of the backend as HAProxy's stats give it
    /// (`UP`, `DOWN`, `UP 1/2` while going down, …), in config order.
    pub fn server_states(&self) -> Result<Vec<String>> {
        let csv = reqwest::blocking::Client::builder()
            .timeout(Duration::from_secs(5))
            .build()?
            .get(format!("http://127.0.0.1:{}/stats;csv", self.stats))
            .send()?
            .text()?;
        let mut lines = csv.lines();
        let header: Vec<&str> = lines
            .next()
            .context("empty stats")?
            .trim_start_matches("# ")
            .split(',')
            .collect();
        let col = |name: &str| {
            header
                .iter()
                .position(|h| *h == name)
                .with_context(|| format!("no {name} column in the stats"))
        };
        let (px, sv, status) = (col("pxname")?, col("svname")?, col("status")?);
        Ok(lines
            .map(|l| l.split(',').collect::<Vec<_>>())
            .filter(|f| {
                f.get(px) == Some(&"sundial_primary")
                    && !matches!(f.get(sv), Some(&"BACKEND" | &"FRONTEND"))
            })
            .filter_map(|f| f.get(status).map(|s| s.to_string()))
            .collect())
    }
}

impl Drop for HaproxyProc {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Finds an executable on PATH.
pub fn which(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|p| p.join(name))
            .find(|p| p.is_file())
    })
}

/// Under `CI=true` a missing external tool fails the test; otherwise the test
/// prints why it is skipped. Returns true when the caller should skip.
pub fn skip_without(tool: &str) -> bool {
    if which(tool).is_some() {
        return false;
    }
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("{tool} is required under CI=true (scripts/test.sh installs it)");
    }
    eprintln!("SKIPPED: {tool} is not installed; run scripts/test.sh to install it");
    true
}

/// A client for a URL that is not a `ServerProc` (e.g. HAProxy).
pub fn admin_call(
    base: &str,
    method: &str,
    path: &str,
    body: Option<&Value>,
) -> Result<(u16, Value)> {
    let http = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()?;
    let mut req = http
        .request(
            reqwest::Method::from_bytes(method.as_bytes())?,
            format!("{base}{path}"),
        )
        .bearer_auth(ADMIN_KEY);
    if let Some(b) = body {
        req = req.json(b);
    }
    let resp = req.send()?;
    let status = resp.status().as_u16();
    let text = resp.text()?;
    Ok((status, serde_json::from_str(&text).unwrap_or(Value::Null)))
}

impl DaemonProc {
    /// The daemon's PID while it runs (for SIGSTOP/SIGCONT).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }
}

/// Sends `signal` (a `kill` name: `TERM`, `INT`, …) to one of the test's
/// own children and waits up to `timeout` for it to exit; past that the
/// child is killed and reaped, and the wait is an error naming `what`.
pub fn stop_child(
    child: &mut Child,
    signal: &str,
    timeout: Duration,
    what: &str,
) -> Result<ExitStatus> {
    send_signal(child.id(), signal)?;
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(status);
        }
        if Instant::now() > deadline {
            child.kill()?;
            child.wait()?;
            bail!("{what} did not exit within {timeout:?} of SIG{signal}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Sends `signal` (a `kill -<signal>` name: `STOP`, `CONT`, …) to one of
/// the test's own children, by PID.
pub fn send_signal(pid: u32, signal: &str) -> Result<()> {
    let status = Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(pid.to_string())
        .status()
        .context("running kill")?;
    if !status.success() {
        bail!("kill -{signal} {pid}: {status}");
    }
    Ok(())
}
