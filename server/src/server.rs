//! Wiring: opens the store, seeds the admin key, starts the scheduler and the
//! retention sweep, serves HTTP, and shuts everything down in order on
//! SIGTERM/SIGINT (stop accepting, finish requests, stop the scheduler, drain
//! the writer, checkpoint).

use crate::api::{self, App};
use crate::auth;
use crate::config::Settings;
use crate::dispatch::Dispatcher;
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
use sundial_proto::time::now_ms;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// How often the history sweep runs.
const RETENTION_INTERVAL: Duration = Duration::from_secs(60);

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

/// Starts a server and returns once it listens.
pub async fn start(settings: Settings, env_admin_key: Option<String>) -> anyhow::Result<Running> {
    std::fs::create_dir_all(&settings.data_dir)
        .with_context(|| format!("creating data directory {}", settings.data_dir.display()))?;
    let db_path = settings.data_dir.join(DB_FILE);
    let metrics = Arc::new(Metrics::new());
    let store = Arc::new(
        Store::open(&db_path, metrics.clone())
            .with_context(|| format!("opening database {}", db_path.display()))?,
    );
    let admin_key =
        auth::bootstrap(&store, env_admin_key, settings.admin_key_file.as_deref()).await?;
    let shutdown = CancellationToken::new();
    let epoch = store
        .write(crate::store::bump_epoch)
        .await
        .context("bumping the epoch")?;
    metrics.epoch.set(epoch);
    let secrets =
        ClusterSecrets::load(settings.cluster_secret_file.as_deref(), &settings.data_dir)?;
    let registry = Arc::new(Registry::load(&store).await.context("loading nodes")?);
    let dispatcher = Arc::new(Dispatcher::new(
        store.clone(),
        metrics.clone(),
        registry.clone(),
        settings.lease.as_millis_i64(),
        shutdown.clone(),
    ));
    let queued = dispatcher.load().await.context("loading pending runs")?;
    tracing::info!(pending = queued, "dispatch queue loaded");
    let scheduler = Arc::new(Scheduler::new(
        store.clone(),
        metrics.clone(),
        registry.clone(),
        dispatcher.clone(),
    ));
    let listener = TcpListener::bind(settings.listen)
        .await
        .with_context(|| format!("binding {}", settings.listen))?;
    let addr = listener.local_addr()?;
    let retention_defaults = Retention {
        keep: settings.history_keep,
        max_age_ms: settings.history_max_age.as_millis_i64(),
    };
    let app = Arc::new(App {
        store: store.clone(),
        scheduler: scheduler.clone(),
        metrics: metrics.clone(),
        keys: auth::KeyCache::default(),
        registry,
        dispatcher: dispatcher.clone(),
        secrets,
        nonces: Default::default(),
        settings,
        started_at: now_ms(),
    });
    let tasks = CancellationToken::new();
    let scheduler_task = tokio::spawn(scheduler.run(tasks.clone()));
    let dispatch_task = tokio::spawn(dispatcher.run_background(tasks.clone()));
    let retention_task = tokio::spawn(retention::run(
        store.clone(),
        retention_defaults,
        metrics,
        RETENTION_INTERVAL,
        tasks.clone(),
    ));
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
    let router = api::router(app);
    let stop = shutdown.clone();
    let done = tokio::spawn(async move {
        let served = match tls {
            None => axum::serve(listener, router)
                .with_graceful_shutdown(async move { stop.cancelled().await })
                .await
                .map_err(anyhow::Error::from),
            Some(config) => {
                let handle = axum_server::Handle::new();
                let h = handle.clone();
                tokio::spawn(async move {
                    stop.cancelled().await;
                    h.graceful_shutdown(Some(Duration::from_secs(30)));
                });
                match listener.into_std() {
                    Ok(std_listener) => axum_server::from_tcp_rustls(std_listener, config)
                        .handle(handle)
                        .serve(router.into_make_service())
                        .await
                        .map_err(anyhow::Error::from),
                    Err(e) => Err(anyhow::Error::from(e)),
                }
            }
        };
        tasks.cancel();
        let _ = scheduler_task.await;
        let _ = dispatch_task.await;
        let _ = retention_task.await;
        store.close().await;
        tracing::info!("server stopped");
        served.context("serving HTTP")
    });
    tracing::info!(%addr, db = %db_path.display(), tls = tls_on, "sundial-server listening");
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
