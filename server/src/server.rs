//! Wiring: opens the store, follows the HA role source, and runs a *term* as
//! primary (writer, scheduler, dispatcher, retention) whenever this server is
//! primary; serves HTTP throughout. Shuts everything down in order on
//! SIGTERM/SIGINT (stop accepting, finish requests, end the term, drain the
//! writer, checkpoint).

use crate::api::{self, App};
use crate::auth;
use crate::config::Settings;
use crate::dispatch::Dispatcher;
use crate::ha::{self, Observed, Role};
use crate::loops::Loops;
use crate::metrics::Metrics;
use crate::registry::Registry;
use crate::retention;
use crate::scheduler::Scheduler;
use crate::secrets::ClusterSecrets;
use crate::store::runs::Retention;
use crate::store::{Store, DB_FILE};
use anyhow::Context;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use sundial_proto::dir_lock::{DirLock, DirLockError};
use tokio::net::TcpListener;
use tokio::sync::{watch, Notify};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// How often the history sweep runs.
const RETENTION_INTERVAL: Duration = Duration::from_secs(60);
/// Retry delay when promotion failed (e.g. the database was busy).
const PROMOTE_RETRY: Duration = Duration::from_millis(500);

/// A cluster secret was just generated for a database that already has
/// nodes or webhooks (a restore without its `cluster.secret`): their
/// credentials and signing secrets were derived from another secret.
async fn warn_if_secret_is_new_to_the_data(store: &Store) {
    if !store.path().exists() {
        // A new data directory: nothing to warn of, and a read would wait
        // the pool's whole connection timeout for a file not there yet.
        return;
    }
    let counts = store
        .read(|c| {
            Ok((
                crate::store::nodes::count_unrevoked(c)?,
                crate::store::webhooks::count(c)?,
            ))
        })
        .await;
    if let Ok((nodes, webhooks)) = counts {
        if nodes > 0 || webhooks > 0 {
            tracing::warn!(
                nodes,
                webhooks,
                "generated a new cluster secret for a database that has nodes or webhooks: \
                 every daemon must join again and every webhook's signing secret changed; \
                 if this is a restore, stop and put the old cluster.secret back (docs/dr.md)"
            );
        }
    }
}

/// A running server (for tests and `main`).
pub struct Running {
    pub addr: SocketAddr,
    pub admin_key: Option<String>,
    shutdown: CancellationToken,
    done: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl Running {
    /// Asks the server to stop and waits until it has.
    pub async fn stop(self) -> anyhow::Result<()> {
        self.shutdown.cancel();
        self.done.await.context("server task")?
    }
}

/// One term as primary: its tasks stop when `token` is cancelled.
struct Term {
    token: CancellationToken,
    tasks: Vec<JoinHandle<()>>,
}

/// Follows the role source and starts/ends terms.
struct Controller {
    app: Arc<App>,
    retention: retention::Policy,
    env_admin_key: Option<String>,
    term: Option<Term>,
    /// Set when fenced: ignore "you are primary" until the source changes.
    fenced_latch: bool,
    fenced: Arc<Notify>,
    generated_key: Option<String>,
}

impl Controller {
    fn set_state(&self, role: Role, epoch: i64, obs: &Observed) {
        let primary_url = if role == Role::Primary {
            None
        } else {
            self.app
                .settings
                .ha
                .primary_url(obs.primary_host.as_deref())
        };
        self.app
            .ha
            .set(role, epoch, obs.primary_host.clone(), primary_url);
        self.app
            .metrics
            .is_primary
            .set(i64::from(role == Role::Primary));
    }

    /// Applies an observation; an error is a promotion that failed (retried later).
    async fn apply(&mut self, obs: &Observed) -> anyhow::Result<()> {
        if !obs.primary {
            self.fenced_latch = false;
            self.end_term().await;
            let role = if obs.primary_host.is_some()
                || !matches!(self.app.settings.ha, ha::Source::Litefs { .. })
            {
                Role::Replica
            } else {
                Role::Unknown
            };
            self.set_state(role, 0, obs);
            return Ok(());
        }
        if self.fenced_latch {
            self.set_state(Role::Unknown, 0, obs);
            return Ok(());
        }
        if self.term.is_some() {
            return Ok(());
        }
        match self.begin_term().await {
            Ok(epoch) => {
                self.set_state(Role::Primary, epoch, obs);
                Ok(())
            }
            Err(e) => {
                tracing::error!(error = format!("{e:#}"), "promotion failed");
                self.set_state(Role::Unknown, 0, obs);
                Err(e)
            }
        }
    }

    async fn begin_term(&mut self) -> anyhow::Result<i64> {
        let started = std::time::Instant::now();
        let store = self.app.store.clone();
        let fenced = self.fenced.clone();
        let epoch = tokio::task::spawn_blocking(move || {
            store.promote_blocking(Box::new(move |_| fenced.notify_one()))
        })
        .await
        .context("promotion task")?
        .context("opening the database for writing")?;
        match self.start_term_tasks(epoch).await {
            Ok(()) => {}
            Err(e) => {
                // Give the term back so the retry starts from a clean slate.
                self.app.dispatcher.end_term();
                self.app.store.demote().await;
                return Err(e);
            }
        }
        let app = &self.app;
        app.metrics.epoch.set(epoch);
        app.metrics.promotions.inc();
        tracing::info!(
            epoch,
            took_ms = started.elapsed().as_millis() as u64,
            "promoted to primary"
        );
        Ok(epoch)
    }

    /// The part of a promotion after the writer is ours: seed the admin
    /// key, load nodes and pending runs, start the term's loops.
    async fn start_term_tasks(&mut self, epoch: i64) -> anyhow::Result<()> {
        let app = &self.app;
        if let Some(key) = auth::bootstrap(
            &app.store,
            self.env_admin_key.take(),
            app.settings.admin_key_file.as_deref(),
        )
        .await?
        {
            self.generated_key = Some(key);
        }
        app.registry
            .reload(&app.store)
            .await
            .context("loading nodes")?;
        let token = CancellationToken::new();
        app.dispatcher.start_term(token.clone(), epoch);
        let queued = app
            .dispatcher
            .load()
            .await
            .context("loading pending runs")?;
        app.loops.reset();
        let tasks = vec![
            tokio::spawn(app.scheduler.clone().run(token.clone())),
            tokio::spawn(app.dispatcher.clone().run_background(token.clone())),
            tokio::spawn(app.deliverer.clone().run(token.clone())),
            tokio::spawn(crate::alerts::run(
                app.dispatcher.clone(),
                app.registry.clone(),
                app.loops.clone(),
                token.clone(),
            )),
            tokio::spawn(retention::run(
                app.store.clone(),
                self.retention,
                app.metrics.clone(),
                app.loops.clone(),
                RETENTION_INTERVAL,
                token.clone(),
            )),
        ];
        self.term = Some(Term { token, tasks });
        tracing::info!(pending = queued, "term started");
        Ok(())
    }

    async fn end_term(&mut self) {
        let Some(term) = self.term.take() else {
            return;
        };
        term.token.cancel();
        self.app.dispatcher.end_term();
        for t in term.tasks {
            let _ = t.await;
        }
        self.app.store.demote().await;
        tracing::info!("term as primary ended");
    }

    async fn run(mut self, mut observed: watch::Receiver<Observed>, shutdown: CancellationToken) {
        let mut ok = true;
        loop {
            tokio::select! {
                r = observed.changed() => { if r.is_err() { break; } }
                _ = self.fenced.notified() => {
                    tracing::error!("fenced by a newer primary: stepping down");
                    self.fenced_latch = true;
                    self.end_term().await;
                }
                _ = tokio::time::sleep(PROMOTE_RETRY), if !ok => {}
                _ = shutdown.cancelled() => break,
            }
            let obs = observed.borrow_and_update().clone();
            ok = self.apply(&obs).await.is_ok();
        }
        self.end_term().await;
    }
}

/// The lock file a standalone server holds in its data directory.
pub const LOCK_FILE: &str = "sundial-server.lock";

/// A standalone server owns its data directory: a second one started on it
/// is refused here, before it opens the database (it would promote itself
/// and fence the first, leaving that one without a role). Under LiteFS or
/// static roles the servers of a pair may share a directory's files by
/// design (LiteFS's mount holds only the database), so none is taken.
fn lock_data_dir(settings: &Settings) -> anyhow::Result<Option<DirLock>> {
    if !matches!(settings.ha, ha::Source::Standalone) {
        return Ok(None);
    }
    match DirLock::try_acquire(&settings.data_dir, LOCK_FILE) {
        Ok(lock) => Ok(Some(lock)),
        Err(DirLockError::Held { holder, .. }) => anyhow::bail!(
            "another sundial-server{} is using the data directory {}: run one server per data directory (stop the other, or give this one its own --data-dir)",
            holder.map(|p| format!(" (pid {p})")).unwrap_or_default(),
            settings.data_dir.display()
        ),
        Err(e) => Err(e).context("locking the data directory"),
    }
}

/// Starts a server and returns once it listens (and, when its source says
/// so, once it is primary).
pub async fn start(settings: Settings, env_admin_key: Option<String>) -> anyhow::Result<Running> {
    std::fs::create_dir_all(&settings.data_dir)
        .with_context(|| format!("creating data directory {}", settings.data_dir.display()))?;
    let dir_lock = lock_data_dir(&settings)?;
    let db_path = settings.data_dir.join(DB_FILE);
    let metrics = Arc::new(Metrics::new());
    let store = Arc::new(
        Store::open_replica_with(
            &db_path,
            metrics.clone(),
            Duration::from_millis(settings.busy_timeout.as_millis()),
        )
        .with_context(|| format!("opening database {}", db_path.display()))?
        .with_wal_autocheckpoint(settings.wal_autocheckpoint),
    );
    let generating = settings.cluster_secret_file.is_none()
        && !settings
            .data_dir
            .join(crate::secrets::GENERATED_FILE)
            .exists();
    let secrets =
        ClusterSecrets::load(settings.cluster_secret_file.as_deref(), &settings.data_dir)?;
    if generating {
        warn_if_secret_is_new_to_the_data(&store).await;
    }
    let registry = Arc::new(Registry::default());
    let loops = Arc::new(Loops::new(metrics.clone()));
    let shutdown = CancellationToken::new();
    let dispatcher = Arc::new(Dispatcher::new(
        store.clone(),
        metrics.clone(),
        registry.clone(),
        loops.clone(),
        settings.lease.as_millis_i64(),
        shutdown.clone(),
    ));
    let scheduler = Arc::new(Scheduler::new(
        store.clone(),
        metrics.clone(),
        registry.clone(),
        dispatcher.clone(),
        loops.clone(),
    ));
    let listener = TcpListener::bind(settings.listen)
        .await
        .with_context(|| format!("binding {}", settings.listen))?;
    let addr = listener.local_addr()?;
    let retention_policy = retention::Policy {
        runs: Retention {
            keep: settings.history_keep,
            max_age_ms: settings.history_max_age.as_millis_i64(),
        },
        events_keep: settings.events_keep,
        events_max_age_ms: settings.events_max_age.as_millis_i64(),
        audit_keep: settings.audit_keep,
        audit_max_age_ms: settings.audit_max_age.as_millis_i64(),
    };
    let source = settings.ha.clone();
    let deliverer = Arc::new(crate::webhooks::Deliverer::new(
        store.clone(),
        secrets.clone(),
        metrics.clone(),
        loops.clone(),
        crate::webhooks::Settings {
            timeout: Duration::from_millis(settings.webhook_timeout.as_millis()),
            retry_for_ms: settings.webhook_retry_for.as_millis_i64(),
            deny_private: settings.webhook_deny_private,
        },
    )?);
    let app = Arc::new(App {
        store: store.clone(),
        scheduler,
        metrics: metrics.clone(),
        keys: Arc::default(),
        registry,
        dispatcher,
        loops,
        deliverer,
        secrets: Arc::new(secrets),
        nonces: Default::default(),
        ha: Arc::default(),
        forwarder: api::forward::Forwarder::new()?,
        settings: Arc::new(settings),
        shutdown: shutdown.clone(),
        auth_limit: Default::default(),
    });
    let ha_stop = CancellationToken::new();
    let mut observed = ha::watch_source(&source, ha_stop.clone());
    let mut controller = Controller {
        app: app.clone(),
        retention: retention_policy,
        env_admin_key,
        term: None,
        fenced_latch: false,
        fenced: Arc::new(Notify::new()),
        generated_key: None,
    };
    // Decide the first role before serving, so a standalone server answers as primary at once.
    let first = observed.borrow_and_update().clone();
    if let Err(e) = controller.apply(&first).await {
        if matches!(source, ha::Source::Standalone) {
            return Err(e.context(format!("becoming primary over {}", db_path.display())));
        }
    }
    let admin_key = controller.generated_key.take();
    let ha_task = tokio::spawn(controller.run(observed, ha_stop.clone()));

    let tls_on = app.settings.tls.is_some();
    let tls = match &app.settings.tls {
        Some((cert, key)) => {
            // ring is the one provider compiled in; installing twice is harmless.
            let _ = rustls::crypto::ring::default_provider().install_default();
            Some(
                axum_server::tls_rustls::RustlsConfig::from_pem_file(cert, key)
                    .await
                    .with_context(|| {
                        format!(
                            "loading TLS certificate {} and key {}",
                            cert.display(),
                            key.display()
                        )
                    })?,
            )
        }
        None => None,
    };
    let limits = app.settings.limits;
    let router = api::router(api::AppState::new(app));
    let stop = shutdown.clone();
    let done = tokio::spawn(async move {
        let served = match tls {
            None => crate::listen::serve_plain(listener, router, limits, metrics, stop).await,
            Some(config) => {
                crate::listen::serve_tls(listener, config, router, limits, metrics, stop).await
            }
        }
        .map_err(anyhow::Error::from);
        ha_stop.cancel();
        let _ = ha_task.await;
        store.close().await;
        drop(dir_lock);
        tracing::info!("server stopped");
        served.context("serving HTTP")
    });
    tracing::info!(%addr, db = %db_path.display(), tls = tls_on, mode = source.mode(), "sundial-server listening");
    Ok(Running {
        addr,
        admin_key,
        shutdown,
        done,
    })
}

/// Runs until `signal` resolves, then shuts down cleanly.
pub async fn serve_until(
    settings: Settings,
    env_admin_key: Option<String>,
    signal: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let running = start(settings, env_admin_key).await?;
    if let Some(key) = &running.admin_key {
        // Printed once: only its hash is stored.
        eprintln!(
            "\nGenerated admin API key (shown once, store it now):\n\n    {key}\n\n\
             Use it as: curl -H 'Authorization: Bearer {key}' http://{}/v1/jobs\n",
            running.addr
        );
    }
    signal.await;
    tracing::info!("shutting down");
    running.stop().await
}
