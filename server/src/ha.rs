//! High availability: which role this server plays and how it changes.
//!
//! The role comes from a *source*: `standalone` (always primary), `static`
//! (`--role`, `--primary-url`), or `litefs`, which follows LiteFS's contract —
//! `<litefs-dir>/.primary` exists only on replicas and names the primary's
//! host, and the LiteFS API (`/info`, `/events`) says the same with less
//! delay and is preferred while reachable. A primary host name becomes a URL
//! through `--peer-url-template` (e.g. `http://{hostname}:8080`).
//!
//! Promotion opens the writer and bumps the cluster epoch; the server then
//! starts its scheduler and dispatcher for that term. Demotion stops them at
//! once. A primary whose write finds a newer epoch (split brain) was fenced:
//! it steps down and will not promote again until its source has reported a
//! change, so it cannot steal the role back.

use std::path::{Path, PathBuf};
use std::time::Duration;
use sundial_proto::time::now_ms;
use tokio::io::AsyncBufReadExt;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// This server's current role.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Primary,
    Replica,
    /// Not yet known (start-up) or stepped down with no primary in sight.
    Unknown,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Primary => "primary",
            Role::Replica => "replica",
            Role::Unknown => "unknown",
        }
    }
}

/// What the source says right now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Observed {
    pub primary: bool,
    /// The primary's host name (replicas), if known.
    pub primary_host: Option<String>,
}

/// The role and what goes with it, as the API reports it.
#[derive(Debug, Clone)]
pub struct HaState {
    pub role: Role,
    pub epoch: i64,
    /// When the current role began (unix ms).
    pub since: i64,
    /// Where writes are forwarded (replicas).
    pub primary_url: Option<String>,
    pub primary_host: Option<String>,
}

/// Where the role comes from.
#[derive(Debug, Clone)]
pub enum Source {
    Standalone,
    Static {
        primary: bool,
        primary_url: Option<String>,
    },
    Litefs {
        dir: PathBuf,
        api: Option<String>,
        template: String,
    },
}

impl Source {
    pub fn mode(&self) -> &'static str {
        match self {
            Source::Standalone => "standalone",
            Source::Static { .. } => "static",
            Source::Litefs { .. } => "litefs",
        }
    }

    /// Maps a primary host name to the URL writes are forwarded to.
    pub fn primary_url(&self, host: Option<&str>) -> Option<String> {
        match self {
            Source::Standalone => None,
            Source::Static { primary_url, .. } => primary_url.clone(),
            Source::Litefs { template, .. } => host.map(|h| {
                template
                    .replace("{hostname}", h)
                    .trim_end_matches('/')
                    .to_string()
            }),
        }
    }
}

/// How often `.primary` is checked (the API's event stream is faster).
const FILE_POLL: Duration = Duration::from_millis(100);

/// Reads LiteFS's `.primary` file: absent means this node is primary.
pub fn read_primary_file(dir: &Path) -> Observed {
    match std::fs::read_to_string(dir.join(".primary")) {
        Ok(text) => Observed {
            primary: false,
            primary_host: Some(text.trim().to_string()).filter(|h| !h.is_empty()),
        },
        Err(_) => Observed {
            primary: true,
            primary_host: None,
        },
    }
}

#[derive(serde::Deserialize)]
struct LitefsInfo {
    #[serde(rename = "isPrimary")]
    is_primary: bool,
    #[serde(default)]
    primary: Option<LitefsPrimary>,
}

#[derive(serde::Deserialize)]
struct LitefsPrimary {
    #[serde(default)]
    hostname: String,
}

#[derive(serde::Deserialize)]
struct LitefsEvent {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    data: Option<LitefsEventData>,
}

#[derive(serde::Deserialize)]
struct LitefsEventData {
    #[serde(rename = "isPrimary", default)]
    is_primary: bool,
    #[serde(default)]
    hostname: Option<String>,
}

/// Follows the LiteFS API: `/info` once, then `/events` (JSON lines). Sends
/// `Some(observed)` while connected and `None` when the API is unreachable.
async fn follow_api(base: String, tx: watch::Sender<Option<Observed>>, stop: CancellationToken) {
    let http = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(2))
        .build()
        .unwrap_or_default();
    let mut delay = Duration::from_millis(100);
    while !stop.is_cancelled() {
        let info = http
            .get(format!("{base}/info"))
            .timeout(Duration::from_secs(2))
            .send()
            .await;
        let connected = match info {
            Ok(r) if r.status().is_success() => match r.json::<LitefsInfo>().await {
                Ok(info) => {
                    let host = info.primary.map(|p| p.hostname).filter(|h| !h.is_empty());
                    tx.send_replace(Some(Observed {
                        primary: info.is_primary,
                        primary_host: if info.is_primary { None } else { host },
                    }));
                    true
                }
                Err(_) => false,
            },
            _ => false,
        };
        if connected {
            delay = Duration::from_millis(100);
            if let Ok(resp) = http.get(format!("{base}/events")).send().await {
                let stream = tokio_util::io::StreamReader::new(futures_stream(resp));
                let mut lines = tokio::io::BufReader::new(stream).lines();
                loop {
                    let line = tokio::select! {
                        l = lines.next_line() => l,
                        _ = stop.cancelled() => return,
                    };
                    let Ok(Some(line)) = line else { break };
                    let Ok(ev) = serde_json::from_str::<LitefsEvent>(&line) else {
                        continue;
                    };
                    if ev.kind == "init" || ev.kind == "primaryChange" {
                        if let Some(d) = ev.data {
                            tx.send_replace(Some(Observed {
                                primary: d.is_primary,
                                primary_host: if d.is_primary {
                                    None
                                } else {
                                    d.hostname.filter(|h| !h.is_empty())
                                },
                            }));
                        }
                    }
                }
            }
        }
        tx.send_replace(None);
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = stop.cancelled() => return,
        }
        delay = (delay * 2).min(Duration::from_secs(5));
    }
}

fn futures_stream(
    resp: reqwest::Response,
) -> impl futures_core::Stream<Item = std::io::Result<bytes::Bytes>> {
    use futures_util::TryStreamExt;
    resp.bytes_stream().map_err(std::io::Error::other)
}

/// Emits what the source says whenever it changes.
pub fn watch_source(source: &Source, stop: CancellationToken) -> watch::Receiver<Observed> {
    match source {
        Source::Standalone => {
            let (tx, rx) = watch::channel(Observed {
                primary: true,
                primary_host: None,
            });
            tokio::spawn(async move {
                stop.cancelled().await;
                drop(tx);
            });
            rx
        }
        Source::Static { primary, .. } => {
            let (tx, rx) = watch::channel(Observed {
                primary: *primary,
                primary_host: None,
            });
            tokio::spawn(async move {
                stop.cancelled().await;
                drop(tx);
            });
            rx
        }
        Source::Litefs { dir, api, .. } => {
            let (tx, rx) = watch::channel(read_primary_file(dir));
            let (api_tx, mut api_rx) = watch::channel(None);
            if let Some(base) = api.clone() {
                tokio::spawn(follow_api(
                    base.trim_end_matches('/').to_string(),
                    api_tx,
                    stop.clone(),
                ));
            } else {
                drop(api_tx);
            }
            let dir = dir.clone();
            let mut api_alive = api.is_some();
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(FILE_POLL);
                loop {
                    let api_view = api_rx.borrow_and_update().clone();
                    // The API is preferred while reachable; the file is the fallback.
                    let now = api_view.unwrap_or_else(|| read_primary_file(&dir));
                    tx.send_if_modified(|cur| {
                        if *cur != now {
                            *cur = now.clone();
                            true
                        } else {
                            false
                        }
                    });
                    tokio::select! {
                        _ = tick.tick() => {}
                        r = api_rx.changed(), if api_alive => { api_alive = r.is_ok(); }
                        _ = stop.cancelled() => return,
                    }
                }
            });
            rx
        }
    }
}

/// The starting state before any decision.
pub fn initial_state() -> HaState {
    HaState {
        role: Role::Unknown,
        epoch: 0,
        since: now_ms(),
        primary_url: None,
        primary_host: None,
    }
}

/// This server's current role: written by the server's role controller,
/// read by the API (probes, forwarding, status).
#[derive(Debug)]
pub struct RoleCell(std::sync::RwLock<HaState>);

impl Default for RoleCell {
    fn default() -> Self {
        RoleCell(std::sync::RwLock::new(initial_state()))
    }
}

impl RoleCell {
    /// A copy of the current state.
    pub fn snapshot(&self) -> HaState {
        // Every update is a whole-field assignment: a poisoned lock holds valid data.
        self.0.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub fn role(&self) -> Role {
        self.0.read().unwrap_or_else(|p| p.into_inner()).role
    }

    /// Records a role decision (`epoch` 0 keeps the last known epoch).
    pub fn set(
        &self,
        role: Role,
        epoch: i64,
        primary_host: Option<String>,
        primary_url: Option<String>,
    ) {
        let mut st = self.0.write().unwrap_or_else(|p| p.into_inner());
        if st.role != role {
            st.since = now_ms();
            tracing::info!(role = role.as_str(), epoch, primary = ?primary_url, "role changed");
        }
        st.role = role;
        if epoch > 0 {
            st.epoch = epoch;
        }
        st.primary_host = primary_host;
        st.primary_url = primary_url;
    }
}
