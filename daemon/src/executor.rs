//! Executors: how one attempt runs. `exec` starts a program directly, `shell`
//! runs a script with `/bin/sh -c`, `http` makes a request.
//!
//! Processes run in their own process group. A timeout or cancel sends
//! SIGTERM to the whole group, waits the kill grace, then SIGKILLs the group;
//! when the main process exits, whatever is left of its group is killed too,
//! so no orphan outlives its run. stdout and stderr share one pipe, so they
//! are captured together in the order written, up to the output cap; beyond
//! it output is drained and dropped and the run is flagged `truncated`.

use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use std::path::Path;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use sundial_proto::agent::{Assignment, Outcome};
use sundial_proto::time::format_ms;
use sundial_proto::Executor;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::process::Command;
use tokio_util::sync::CancellationToken;

/// Per-node execution limits.
#[derive(Debug, Clone)]
pub struct Limits {
    pub output_cap: usize,
    pub kill_grace: Duration,
    /// This node's id, given to jobs as `SUNDIAL_NODE_ID`.
    pub node_id: String,
    /// The executors `--allow-executors` names: an assignment of another
    /// kind fails here, whatever the server believes this node offers.
    pub allowed: Vec<String>,
}

/// The runner's handle on a running attempt: asks it to stop (remembering
/// why), and reads the output it has printed so far (for live output).
#[derive(Default)]
pub struct Stop {
    token: CancellationToken,
    reason: Mutex<Option<Outcome>>,
    output: Arc<Mutex<Capture>>,
}

impl Stop {
    /// Output printed after byte `offset`, up to the last whole UTF-8
    /// character: (the chunk, the offset after it). None when nothing new.
    pub fn output_since(&self, offset: usize) -> Option<(String, usize)> {
        let c = self.output.lock().ok()?;
        let new = c.buf.get(offset..)?;
        let whole = match std::str::from_utf8(new) {
            Ok(s) => s,
            // Up to a character cut in half at the end; invalid bytes in
            // the middle are sent replaced (the final result has them all).
            Err(e) if e.error_len().is_none() => {
                std::str::from_utf8(&new[..e.valid_up_to()]).unwrap_or_default()
            }
            Err(_) => return Some((String::from_utf8_lossy(new).into_owned(), c.buf.len())),
        };
        (!whole.is_empty()).then(|| (whole.to_string(), offset + whole.len()))
    }

    /// Stops the attempt; the first reason given wins.
    pub fn stop(&self, reason: Outcome) {
        if let Ok(mut r) = self.reason.lock() {
            r.get_or_insert(reason);
        }
        self.token.cancel();
    }

    /// Resolves once the attempt is stopped.
    pub async fn stopped(&self) {
        self.token.cancelled().await
    }

    fn reason(&self) -> Outcome {
        self.reason
            .lock()
            .ok()
            .and_then(|r| *r)
            .unwrap_or(Outcome::Cancelled)
    }
}

/// The result of one attempt.
#[derive(Debug, Clone)]
pub struct Finished {
    pub outcome: Outcome,
    pub exit_code: Option<i32>,
    pub output: String,
    pub truncated: bool,
    pub error: Option<String>,
}

impl Finished {
    /// An attempt stopped (cancelled, handed back) before it started.
    pub fn not_started(stop: &Stop) -> Finished {
        Finished {
            outcome: stop.reason(),
            exit_code: None,
            output: String::new(),
            truncated: false,
            error: Some("stopped before it started".into()),
        }
    }

    fn failed(error: String) -> Finished {
        Finished {
            outcome: Outcome::Failed,
            exit_code: None,
            output: String::new(),
            truncated: false,
            error: Some(error),
        }
    }
}

/// Output collected up to a cap.
#[derive(Default)]
pub struct Capture {
    buf: Vec<u8>,
    truncated: bool,
}

impl Capture {
    fn push(&mut self, chunk: &[u8], cap: usize) {
        let room = cap.saturating_sub(self.buf.len());
        if chunk.len() > room {
            self.truncated = true;
        }
        self.buf.extend_from_slice(&chunk[..chunk.len().min(room)]);
    }

    /// The output as text and whether it was cut. Bytes that are not UTF-8
    /// become U+FFFD (3 bytes each), so the text is cut to `cap` bytes again
    /// (at a character boundary): the cap holds for what is stored.
    fn text(&self, cap: usize) -> (String, bool) {
        let mut text = String::from_utf8_lossy(&self.buf).into_owned();
        if text.len() <= cap {
            return (text, self.truncated);
        }
        let end = (0..=cap)
            .rev()
            .find(|&i| text.is_char_boundary(i))
            .unwrap_or(0);
        text.truncate(end);
        (text, true)
    }
}

/// The collected output of an attempt, capped (see [`Capture::text`]).
fn collected(capture: &Mutex<Capture>, cap: usize) -> (String, bool) {
    capture
        .lock()
        .map(|c| c.text(cap))
        .unwrap_or((String::new(), false))
}

async fn drain(mut r: impl AsyncRead + Unpin, cap: usize, into: Arc<Mutex<Capture>>) {
    let mut chunk = [0u8; 8192];
    loop {
        match r.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                if let Ok(mut c) = into.lock() {
                    c.push(&chunk[..n], cap);
                }
            }
        }
    }
}

/// One pipe for a job's stdout and stderr: the two write ends go to the
/// child, the read end stays with the daemon.
struct OutputPipe {
    read: tokio::net::unix::pipe::Receiver,
    stdout: Stdio,
    stderr: Stdio,
}

impl OutputPipe {
    fn open() -> std::io::Result<OutputPipe> {
        // Close-on-exec: the child gets the write end as fds 1 and 2 only,
        // and no other job's process inherits it.
        let (read, write) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
        let stderr = write.try_clone()?;
        Ok(OutputPipe {
            read: tokio::net::unix::pipe::Receiver::from_owned_fd(read)?,
            stdout: Stdio::from(write),
            stderr: Stdio::from(stderr),
        })
    }
}

fn signal_group(pgid: i32, sig: Signal) {
    // ESRCH (group already gone) is the normal case after a clean exit.
    let _ = killpg(Pid::from_raw(pgid), sig);
}

/// Runs one attempt to completion, timeout or stop.
pub async fn execute(
    a: &Assignment,
    limits: &Limits,
    stop: &Stop,
    http: &reqwest::Client,
) -> Finished {
    let kind = a.executor.kind();
    if !limits.allowed.iter().any(|k| k == kind.as_str()) {
        return Finished::failed(format!(
            "executor {kind} is not allowed on this node (--allow-executors {})",
            limits.allowed.join(",")
        ));
    }
    let timeout = a.timeout_ms.map(Duration::from_millis);
    match &a.executor {
        Executor::Exec { argv, env, cwd } => {
            let Some((program, args)) = argv.split_first() else {
                return Finished::failed("exec executor has an empty argv".into());
            };
            let mut cmd = Command::new(program);
            cmd.args(args).envs(env);
            if let Some(dir) = cwd {
                cmd.current_dir(dir).env("PWD", dir);
            }
            run_process(cmd, a, timeout, limits, stop).await
        }
        Executor::Shell { script, env, cwd } => {
            let mut cmd = Command::new("/bin/sh");
            cmd.arg("-c").arg(script).envs(env);
            if let Some(dir) = cwd {
                cmd.current_dir(dir).env("PWD", dir);
            }
            run_process(cmd, a, timeout, limits, stop).await
        }
        Executor::Http {
            method,
            url,
            headers,
            body,
            expect_status,
        } => {
            run_http(
                http,
                method,
                url,
                headers,
                body.as_deref(),
                expect_status,
                timeout,
                limits,
                stop,
            )
            .await
        }
    }
}

/// Why a process did not start, naming what was missing: the program, or
/// the working directory (both fail with the same "No such file").
fn start_failure(
    (program, cwd): &(std::ffi::OsString, Option<std::path::PathBuf>),
    e: &std::io::Error,
) -> String {
    let program = program.to_string_lossy();
    match cwd {
        Some(dir) if !dir.is_dir() => {
            format!(
                "starting {program}: working directory {} does not exist or is not a directory",
                dir.display()
            )
        }
        _ => format!("starting {program}: {e}"),
    }
}

/// The daemon's own settings in its environment (the `env` names of its
/// flags): a job does not inherit them. The join token above all would let
/// any job join new nodes to the cluster.
const DAEMON_SETTINGS: [&str; 13] = [
    "SUNDIAL_ALLOW_EXECUTORS",
    "SUNDIAL_CAPACITY",
    "SUNDIAL_CA_FILE",
    "SUNDIAL_DRAIN_GRACE",
    "SUNDIAL_JOIN_TOKEN",
    "SUNDIAL_JOIN_TOKEN_FILE",
    "SUNDIAL_KILL_GRACE",
    "SUNDIAL_LABELS",
    "SUNDIAL_LOG_FORMAT",
    "SUNDIAL_NODE_ID",
    "SUNDIAL_OUTPUT_CAP_BYTES",
    "SUNDIAL_SERVER",
    "SUNDIAL_STATE_DIR",
];

async fn run_process(
    mut cmd: Command,
    a: &Assignment,
    timeout: Option<Duration>,
    limits: &Limits,
    stop: &Stop,
) -> Finished {
    for name in DAEMON_SETTINGS {
        cmd.env_remove(name);
    }
    cmd.env("SUNDIAL_RUN_ID", a.run_id.to_string())
        .env("SUNDIAL_JOB_ID", &a.job_id)
        .env("SUNDIAL_SCHEDULED_FOR", format_ms(a.scheduled_for))
        .env("SUNDIAL_ATTEMPT", a.attempt.to_string())
        .env("SUNDIAL_NODE_ID", &limits.node_id)
        .envs(
            a.upstream_run_id
                .map(|id| ("SUNDIAL_UPSTREAM_RUN_ID", id.to_string())),
        )
        .stdin(Stdio::null())
        .process_group(0)
        .kill_on_drop(true);
    // stdout and stderr share one pipe: the output keeps the order the job
    // wrote it in, and a run costs one pipe and one reader, not two.
    let output = match OutputPipe::open() {
        Ok(pipe) => pipe,
        Err(e) => return Finished::failed(format!("creating the output pipe: {e}")),
    };
    cmd.stdout(output.stdout).stderr(output.stderr);
    let cmd_desc = (
        cmd.as_std().get_program().to_owned(),
        cmd.as_std().get_current_dir().map(Path::to_path_buf),
    );
    let spawned = cmd.spawn();
    // The parent's write ends live in the command: close them now, so the
    // reader sees the end of the output when the job's side closes.
    drop(cmd);
    let mut child = match spawned {
        Ok(c) => c,
        Err(e) => return Finished::failed(start_failure(&cmd_desc, &e)),
    };
    let Some(pid) = child.id() else {
        return Finished::failed("the process exited before it could be tracked".into());
    };
    let pgid = pid as i32;
    let capture = stop.output.clone();
    let reader = tokio::spawn(drain(output.read, limits.output_cap, capture.clone()));
    let deadline = timeout.map(|t| tokio::time::Instant::now() + t);
    let timed = async {
        match deadline {
            Some(d) => tokio::time::sleep_until(d).await,
            None => std::future::pending().await,
        }
    };
    let mut forced: Option<Outcome> = None;
    let status = tokio::select! {
        s = child.wait() => s,
        _ = timed => {
            forced = Some(Outcome::TimedOut);
            terminate(&mut child, pgid, limits.kill_grace).await
        }
        _ = stop.token.cancelled() => {
            forced = Some(stop.reason());
            terminate(&mut child, pgid, limits.kill_grace).await
        }
    };
    // Nothing of the job's process group outlives the job.
    signal_group(pgid, Signal::SIGKILL);
    let _ = tokio::time::timeout(Duration::from_secs(2), reader).await;
    let (output, truncated) = collected(&capture, limits.output_cap);
    let exit_code = status.as_ref().ok().and_then(|s| s.code());
    let signal = status
        .as_ref()
        .ok()
        .and_then(std::os::unix::process::ExitStatusExt::signal);
    let (outcome, error) = match (forced, &status) {
        (Some(Outcome::TimedOut), _) => (
            Outcome::TimedOut,
            Some(format!("timed out after {}", fmt_dur(timeout))),
        ),
        (Some(reason), _) => (reason, Some("stopped".to_string())),
        (None, Err(e)) => (
            Outcome::Failed,
            Some(format!("waiting for the process: {e}")),
        ),
        (None, Ok(s)) if s.success() => (Outcome::Succeeded, None),
        (None, Ok(_)) => (
            Outcome::Failed,
            Some(match (exit_code, signal) {
                (Some(c), _) => format!("exited with status {c}"),
                (None, Some(sig)) => format!("killed by signal {sig}"),
                _ => "failed".to_string(),
            }),
        ),
    };
    Finished {
        outcome,
        exit_code,
        output,
        truncated,
        error,
    }
}

fn fmt_dur(d: Option<Duration>) -> String {
    d.and_then(|d| sundial_proto::Duration::from_millis(d.as_millis() as u64))
        .map_or_else(|| "?".into(), |d| d.to_string())
}

/// SIGTERM the group, wait the grace, then SIGKILL it; returns the exit status.
async fn terminate(
    child: &mut tokio::process::Child,
    pgid: i32,
    grace: Duration,
) -> std::io::Result<std::process::ExitStatus> {
    signal_group(pgid, Signal::SIGTERM);
    match tokio::time::timeout(grace, child.wait()).await {
        Ok(s) => s,
        Err(_) => {
            signal_group(pgid, Signal::SIGKILL);
            child.wait().await
        }
    }
}

#[allow(clippy::too_many_arguments)]
async fn run_http(
    http: &reqwest::Client,
    method: &str,
    url: &str,
    headers: &std::collections::BTreeMap<String, String>,
    body: Option<&str>,
    expect: &[u16],
    timeout: Option<Duration>,
    limits: &Limits,
    stop: &Stop,
) -> Finished {
    let Ok(method) = reqwest::Method::from_bytes(method.as_bytes()) else {
        return Finished::failed(format!("{method:?} is not an HTTP method"));
    };
    let mut req = http.request(method, url);
    for (k, v) in headers {
        req = req.header(k, v);
    }
    if let Some(b) = body {
        req = req.body(b.to_string());
    }
    if let Some(t) = timeout {
        req = req.timeout(t);
    }
    let work = async {
        let mut resp = req.send().await?;
        let status = resp.status().as_u16();
        while let Some(chunk) = resp.chunk().await? {
            if let Ok(mut c) = stop.output.lock() {
                c.push(&chunk, limits.output_cap);
            }
        }
        Ok::<_, reqwest::Error>(status)
    };
    let finished = tokio::select! {
        r = work => match r {
            Ok(status) => {
                let ok = expect.contains(&status);
                Finished {
                    outcome: if ok { Outcome::Succeeded } else { Outcome::Failed },
                    exit_code: Some(i32::from(status)),
                    error: (!ok).then(|| format!("unexpected HTTP status {status} (expected one of {expect:?})")),
                    ..Finished::failed(String::new())
                }
            }
            Err(e) if e.is_timeout() => Finished {
                outcome: Outcome::TimedOut,
                error: Some(format!("timed out after {}", fmt_dur(timeout))),
                ..Finished::failed(String::new())
            },
            Err(e) => Finished::failed(format!(
                "HTTP request failed: {}",
                sundial_proto::cause::chain(&e)
            )),
        },
        _ = stop.token.cancelled() => Finished {
            outcome: stop.reason(),
            error: Some("stopped".into()),
            ..Finished::failed(String::new())
        },
    };
    // What the body brought so far is the output, however the request ended.
    let (output, truncated) = collected(&stop.output, limits.output_cap);
    Finished {
        output,
        truncated,
        ..finished
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sundial_proto::Executor;

    fn assignment(executor: Executor, timeout_ms: Option<u64>) -> Assignment {
        Assignment {
            run_id: 7,
            job_id: "job-x".into(),
            attempt: 2,
            scheduled_for: 1_790_000_000_000,
            executor,
            timeout_ms,
            lease_ms: 30_000,
            upstream_run_id: Some(41),
            start_in_ms: 0,
        }
    }

    fn shell(script: &str) -> Executor {
        Executor::Shell {
            script: script.into(),
            env: Default::default(),
            cwd: None,
        }
    }

    fn limits(cap: usize) -> Limits {
        Limits {
            output_cap: cap,
            kill_grace: Duration::from_millis(500),
            node_id: "node-t".into(),
            allowed: ["exec", "shell", "http"].map(String::from).into(),
        }
    }

    /// `--allow-executors` holds on the daemon itself: a shell job handed
    /// to an exec-only node (a stale or tampered node record) never starts.
    #[tokio::test]
    async fn an_executor_the_node_does_not_allow_never_starts() {
        let dir = tempfile::tempdir().unwrap();
        let marker = dir.path().join("ran");
        let a = assignment(shell(&format!("touch {}", marker.display())), None);
        let exec_only = Limits {
            allowed: vec!["exec".into()],
            ..limits(4096)
        };
        let f = execute(&a, &exec_only, &Stop::default(), &reqwest::Client::new()).await;
        assert_eq!(f.outcome, Outcome::Failed);
        let error = f.error.unwrap();
        assert!(
            error.contains("executor shell is not allowed on this node (--allow-executors exec)"),
            "{error}"
        );
        assert!(!marker.exists(), "the shell job ran");
    }

    #[tokio::test]
    async fn exec_sets_env_and_captures_output() {
        let a = assignment(shell("echo \"$SUNDIAL_JOB_ID $SUNDIAL_RUN_ID $SUNDIAL_ATTEMPT $SUNDIAL_SCHEDULED_FOR $SUNDIAL_NODE_ID $SUNDIAL_UPSTREAM_RUN_ID\"; echo err >&2; exit 3"), None);
        let f = execute(&a, &limits(4096), &Stop::default(), &reqwest::Client::new()).await;
        assert_eq!(f.outcome, Outcome::Failed);
        assert_eq!(f.exit_code, Some(3));
        assert!(f.output.contains("job-x 7 2 2026-09-21T"), "{}", f.output);
        assert!(f.output.contains(" node-t 41\n"), "{}", f.output);
        assert!(f.output.contains("err"));
        let ok = execute(
            &assignment(
                Executor::Exec {
                    argv: vec!["/bin/echo".into(), "hi".into()],
                    env: Default::default(),
                    cwd: None,
                },
                None,
            ),
            &limits(4096),
            &Stop::default(),
            &reqwest::Client::new(),
        )
        .await;
        assert_eq!(ok.outcome, Outcome::Succeeded);
        assert_eq!(ok.output, "hi\n");
        let missing = execute(
            &assignment(
                Executor::Exec {
                    argv: vec!["/no/such/program".into()],
                    env: Default::default(),
                    cwd: None,
                },
                None,
            ),
            &limits(4096),
            &Stop::default(),
            &reqwest::Client::new(),
        )
        .await;
        assert_eq!(missing.outcome, Outcome::Failed);
        assert!(missing.error.unwrap().contains("starting"));
    }

    #[tokio::test]
    async fn stdout_and_stderr_keep_the_order_they_were_written_in() {
        let script = "for i in 1 2 3 4 5; do echo out$i; echo err$i >&2; done";
        let f = execute(
            &assignment(shell(script), None),
            &limits(4096),
            &Stop::default(),
            &reqwest::Client::new(),
        )
        .await;
        assert_eq!(f.outcome, Outcome::Succeeded, "{:?}", f.error);
        let expected: String = (1..=5).map(|i| format!("out{i}\nerr{i}\n")).collect();
        assert_eq!(f.output, expected);
    }

    #[tokio::test]
    async fn a_job_ends_when_its_process_does() {
        // The daemon closes its copies of the output pipe's write ends at
        // the spawn: otherwise the reader would wait for them (up to 2 s)
        // after the job had exited.
        let started = std::time::Instant::now();
        let f = execute(
            &assignment(shell("echo quick"), None),
            &limits(4096),
            &Stop::default(),
            &reqwest::Client::new(),
        )
        .await;
        assert_eq!(
            (f.outcome, f.output.as_str()),
            (Outcome::Succeeded, "quick\n")
        );
        let took = started.elapsed();
        assert!(took < Duration::from_millis(1500), "took {took:?}");
    }

    #[tokio::test]
    async fn output_over_the_cap_is_truncated() {
        let a = assignment(shell("head -c 100000 /dev/zero | tr '\\0' x"), None);
        let f = execute(&a, &limits(1000), &Stop::default(), &reqwest::Client::new()).await;
        assert_eq!(f.outcome, Outcome::Succeeded);
        assert_eq!(f.output.len(), 1000);
        assert!(f.truncated);
    }

    #[tokio::test]
    async fn timeout_kills_the_whole_group() {
        let dir = tempfile::tempdir().unwrap();
        let pidfile = dir.path().join("child.pid");
        // The job starts a grandchild that ignores SIGTERM, then waits forever.
        let script = format!(
            "sh -c 'trap \"\" TERM; echo $$ > {}; exec sleep 60' & wait",
            pidfile.display()
        );
        let started = std::time::Instant::now();
        let f = execute(
            &assignment(shell(&script), Some(300)),
            &limits(4096),
            &Stop::default(),
            &reqwest::Client::new(),
        )
        .await;
        assert_eq!(f.outcome, Outcome::TimedOut);
        assert!(started.elapsed() < Duration::from_secs(5));
        let pid: i32 = std::fs::read_to_string(&pidfile)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        // The grandchild ignored SIGTERM; the group SIGKILL must have reached it.
        // (A zombie awaiting its reaper counts as gone.)
        let alive = |pid: i32| {
            std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .map(|s| {
                    !s.rsplit(')')
                        .next()
                        .unwrap_or("")
                        .trim_start()
                        .starts_with('Z')
                })
                .unwrap_or(false)
        };
        let mut gone = false;
        for _ in 0..100 {
            if !alive(pid) {
                gone = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(gone, "grandchild {pid} survived the timeout");
    }

    /// A loopback HTTP/1.1 responder for `http` jobs, one request per
    /// connection: `/go` redirects to `/final` ("done"), `/teapot` answers
    /// 418, `/echo` answers with the request's method, `x-t` header and body.
    async fn responder() -> String {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move {
            while let Ok((mut conn, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 1024];
                    // The head, then as much body as Content-Length says.
                    let (head, mut body) = loop {
                        let Ok(n) = conn.read(&mut chunk).await else {
                            return;
                        };
                        if n == 0 {
                            return;
                        }
                        buf.extend_from_slice(&chunk[..n]);
                        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                            let head = String::from_utf8_lossy(&buf[..i]).to_lowercase();
                            break (head, buf[i + 4..].to_vec());
                        }
                    };
                    let length: usize = head
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length:"))
                        .and_then(|v| v.trim().parse().ok())
                        .unwrap_or(0);
                    while body.len() < length {
                        let Ok(n) = conn.read(&mut chunk).await else {
                            return;
                        };
                        if n == 0 {
                            return;
                        }
                        body.extend_from_slice(&chunk[..n]);
                    }
                    let mut words = head.split_whitespace();
                    let (method, path) = (words.next().unwrap_or(""), words.next().unwrap_or(""));
                    let header = head
                        .lines()
                        .find_map(|l| l.strip_prefix("x-t:"))
                        .unwrap_or("")
                        .trim();
                    if path == "/slow" {
                        // Part of the body, then nothing for longer than a job's timeout.
                        let head = "HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\npartial\n";
                        let _ = conn.write_all(head.as_bytes()).await;
                        let _ = conn.flush().await;
                        tokio::time::sleep(Duration::from_secs(10)).await;
                        return;
                    }
                    let (status, extra, text) = match path {
                        "/go" => ("302 Found", "location: /final\r\n", String::new()),
                        "/final" => ("200 OK", "", "done".to_string()),
                        "/teapot" => ("418 I'm a teapot", "", "no".to_string()),
                        "/echo" => (
                            "200 OK",
                            "",
                            format!("{method} {header} {}", String::from_utf8_lossy(&body)),
                        ),
                        _ => ("404 Not Found", "", String::new()),
                    };
                    let reply = format!(
                        "HTTP/1.1 {status}\r\n{extra}content-length: {}\r\nconnection: close\r\n\r\n{text}",
                        text.len()
                    );
                    let _ = conn.write_all(reply.as_bytes()).await;
                });
            }
        });
        base
    }

    /// The client `http` jobs run with in the daemon.
    fn jobs_client() -> reqwest::Client {
        crate::client::job_http_client(None).unwrap()
    }

    fn http(method: &str, url: String, expect: &[u16]) -> Executor {
        Executor::Http {
            method: method.into(),
            url,
            headers: Default::default(),
            body: None,
            expect_status: expect.to_vec(),
        }
    }

    #[tokio::test]
    async fn an_http_job_follows_redirects_and_keeps_the_body() {
        let base = responder().await;
        let f = execute(
            &assignment(http("GET", format!("{base}/go"), &[200]), Some(5_000)),
            &limits(4096),
            &Stop::default(),
            &jobs_client(),
        )
        .await;
        // The status is the final response's, after the redirect.
        assert_eq!(f.outcome, Outcome::Succeeded, "{:?}", f.error);
        assert_eq!(f.exit_code, Some(200));
        assert_eq!(f.output, "done");
    }

    #[tokio::test]
    async fn an_http_job_sends_its_method_headers_and_body() {
        let base = responder().await;
        let mut executor = http("POST", format!("{base}/echo"), &[200]);
        if let Executor::Http { headers, body, .. } = &mut executor {
            headers.insert("X-T".into(), "v1".into());
            *body = Some("payload".into());
        }
        let f = execute(
            &assignment(executor, Some(5_000)),
            &limits(4096),
            &Stop::default(),
            &jobs_client(),
        )
        .await;
        assert_eq!(f.outcome, Outcome::Succeeded, "{:?}", f.error);
        assert_eq!(f.output, "post v1 payload");
    }

    #[tokio::test]
    async fn an_http_status_outside_expect_status_fails_the_run() {
        let base = responder().await;
        let f = execute(
            &assignment(
                http("GET", format!("{base}/teapot"), &[200, 204]),
                Some(5_000),
            ),
            &limits(4096),
            &Stop::default(),
            &jobs_client(),
        )
        .await;
        assert_eq!(f.outcome, Outcome::Failed);
        assert_eq!(f.exit_code, Some(418));
        assert_eq!(f.output, "no");
        let error = f.error.unwrap_or_default();
        assert!(error.contains("unexpected HTTP status 418"), "{error}");
        let bad = execute(
            &assignment(http("NOT A METHOD", format!("{base}/final"), &[200]), None),
            &limits(4096),
            &Stop::default(),
            &jobs_client(),
        )
        .await;
        assert_eq!(bad.outcome, Outcome::Failed);
        assert!(bad
            .error
            .unwrap_or_default()
            .contains("is not an HTTP method"));
    }

    #[test]
    fn output_that_is_not_utf8_stays_within_the_cap() {
        let mut c = Capture::default();
        c.push(&[0xff; 100], 64);
        let (text, truncated) = c.text(64);
        assert!(text.len() <= 64, "{}", text.len());
        assert!(truncated);
        assert_eq!(text, "\u{fffd}".repeat(21));
        let mut ok = Capture::default();
        ok.push(b"fine", 64);
        assert_eq!(ok.text(64), ("fine".to_string(), false));
    }

    /// The list of settings a job does not inherit is the daemon's flags'
    /// environment names, all of them.
    #[test]
    fn jobs_do_not_inherit_the_daemons_settings() {
        use clap::CommandFactory;
        let mut names: Vec<String> = crate::config::Args::command()
            .get_arguments()
            .filter_map(|a| a.get_env())
            .map(|e| e.to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(names, DAEMON_SETTINGS);
    }

    #[tokio::test]
    async fn a_job_sees_its_own_variables_not_the_daemons() {
        // The test process stands in for the daemon: a setting in its
        // environment must not reach the job.
        std::env::set_var("SUNDIAL_JOIN_TOKEN", "sjt_secret");
        let f = execute(
            &assignment(
                Executor::Shell {
                    script:
                        "echo \"token=${SUNDIAL_JOIN_TOKEN-unset} run=$SUNDIAL_RUN_ID pwd=$PWD\""
                            .into(),
                    env: Default::default(),
                    cwd: Some("/tmp".into()),
                },
                Some(5_000),
            ),
            &limits(4096),
            &Stop::default(),
            &reqwest::Client::new(),
        )
        .await;
        assert_eq!(f.output, "token=unset run=7 pwd=/tmp\n");
    }

    /// A timed-out request keeps the body it received; a failed one says why.
    #[tokio::test]
    async fn an_http_job_keeps_its_partial_body_and_names_its_failure() {
        let base = responder().await;
        let f = execute(
            &assignment(http("GET", format!("{base}/slow"), &[200]), Some(500)),
            &limits(4096),
            &Stop::default(),
            &jobs_client(),
        )
        .await;
        assert_eq!(f.outcome, Outcome::TimedOut, "{:?}", f.error);
        assert_eq!(f.output, "partial\n");
        // A port nothing listens on: the cause, not just "error sending request".
        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/x", closed.local_addr().unwrap());
        drop(closed);
        let f = execute(
            &assignment(http("GET", url, &[200]), Some(5_000)),
            &limits(4096),
            &Stop::default(),
            &jobs_client(),
        )
        .await;
        assert_eq!(f.outcome, Outcome::Failed);
        let error = f.error.unwrap_or_default();
        assert!(error.to_lowercase().contains("refused"), "{error}");
    }

    #[tokio::test]
    async fn a_process_that_cannot_start_names_what_is_missing() {
        let exec = |argv: &str, cwd: Option<&str>| {
            assignment(
                Executor::Exec {
                    argv: vec![argv.into()],
                    env: Default::default(),
                    cwd: cwd.map(str::to_string),
                },
                Some(5_000),
            )
        };
        for (a, expect) in [
            (
                exec("/no/such/bin", None),
                "starting /no/such/bin: No such file",
            ),
            (
                exec("/bin/pwd", Some("/no/such/dir")),
                "working directory /no/such/dir does not exist",
            ),
        ] {
            let f = execute(&a, &limits(4096), &Stop::default(), &reqwest::Client::new()).await;
            let error = f.error.unwrap_or_default();
            assert!(error.contains(expect), "{error}");
        }
    }

    #[tokio::test]
    async fn stop_reports_its_reason() {
        let stop = Arc::new(Stop::default());
        let s2 = stop.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(100)).await;
            s2.stop(Outcome::HandedBack);
        });
        let f = execute(
            &assignment(shell("sleep 30"), None),
            &limits(4096),
            &stop,
            &reqwest::Client::new(),
        )
        .await;
        assert_eq!(f.outcome, Outcome::HandedBack);
    }
}
