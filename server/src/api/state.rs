//! The server state handlers see, piece by piece. The router's state is
//! [`AppState`] (every part, built once in [`crate::server`]); a handler
//! does not take it whole but extracts, through axum's `FromRef`, only the
//! parts it touches: one piece (`State<Arc<Store>>`,
//! `State<Arc<Scheduler>>`, `State<Arc<Dispatcher>>`, ...) or one of the
//! bundles below, so its signature says what it reads and changes.
//!
//! The whole state stays where a request is checked before any handler
//! runs: the replica-forwarding middleware ([`forward::layer`]: role,
//! metrics, secrets, forwarder, body limits) and the authenticating
//! extractors (`Admin`, `Reader`, `Origin`, `Signed`, the console's
//! `Viewer`), which between them read the store, key cache, secrets,
//! nonces, registry, rate limiter and metrics. The request-metrics
//! middleware takes only the metrics, the overload guard its own state.

use super::{agent_auth, forward};
use crate::auth::KeyCache;
use crate::auth_limit::AuthLimiter;
use crate::config::Settings;
use crate::dispatch::Dispatcher;
use crate::ha::RoleCell;
use crate::loops::Loops;
use crate::metrics::Metrics;
use crate::registry::Registry;
use crate::scheduler::Scheduler;
use crate::secrets::ClusterSecrets;
use crate::store::Store;
use crate::webhooks::Deliverer;
use axum::extract::FromRef;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

/// Every part of the running server, shared by the HTTP layer and the HA
/// controller in [`crate::server`].
pub struct App {
    pub store: Arc<Store>,
    pub scheduler: Arc<Scheduler>,
    pub metrics: Arc<Metrics>,
    pub keys: Arc<KeyCache>,
    pub registry: Arc<Registry>,
    pub dispatcher: Arc<Dispatcher>,
    /// Health of the term's background loops (for `/readyz`).
    pub loops: Arc<Loops>,
    /// Webhook delivery (its loop runs in each term as primary).
    pub deliverer: Arc<Deliverer>,
    pub secrets: Arc<ClusterSecrets>,
    pub nonces: agent_auth::NonceCache,
    /// The HA role and what goes with it (see [`crate::ha`]).
    pub ha: Arc<RoleCell>,
    pub forwarder: forward::Forwarder,
    pub settings: Arc<Settings>,
    /// Cancelled when the server shuts down: long-lived responses (event
    /// streams) end so HTTP can drain.
    pub shutdown: CancellationToken,
    /// Buckets of authentication failures (see [`crate::auth_limit`]).
    pub auth_limit: Arc<AuthLimiter>,
}

impl App {
    /// The HA role and what goes with it, now.
    pub fn ha_state(&self) -> crate::ha::HaState {
        self.ha.snapshot()
    }
}

/// The router's state: the whole [`App`]. Handlers extract parts of it
/// (see the module doc); the middleware and the authenticating extractors
/// read it whole (it derefs to [`App`]).
#[derive(Clone)]
pub struct AppState(Arc<App>);

impl AppState {
    pub fn new(app: Arc<App>) -> AppState {
        AppState(app)
    }
}

impl std::ops::Deref for AppState {
    type Target = App;

    fn deref(&self) -> &App {
        &self.0
    }
}

/// One `FromRef<AppState>` per piece a handler may extract alone.
macro_rules! piece {
    ($($ty:ty => $field:ident),* $(,)?) => {
        $(impl FromRef<AppState> for $ty {
            fn from_ref(app: &AppState) -> $ty {
                app.$field.clone()
            }
        })*
    };
}

piece! {
    Arc<Store> => store,
    Arc<Scheduler> => scheduler,
    Arc<Dispatcher> => dispatcher,
    Arc<Registry> => registry,
    Arc<Metrics> => metrics,
    Arc<KeyCache> => keys,
    Arc<Deliverer> => deliverer,
    Arc<ClusterSecrets> => secrets,
    Arc<AuthLimiter> => auth_limit,
    Arc<RoleCell> => ha,
    Arc<Settings> => settings,
}

/// The run queue's side of the server: what the agent protocol (join,
/// register, poll, heartbeat, output, complete) and a manual trigger touch
/// to place runs on nodes, hand them out and settle them.
#[derive(Clone)]
pub struct Queue {
    pub store: Arc<Store>,
    pub dispatcher: Arc<Dispatcher>,
    pub registry: Arc<Registry>,
    pub metrics: Arc<Metrics>,
}

impl FromRef<AppState> for Queue {
    fn from_ref(app: &AppState) -> Queue {
        Queue {
            store: app.store.clone(),
            dispatcher: app.dispatcher.clone(),
            registry: app.registry.clone(),
            metrics: app.metrics.clone(),
        }
    }
}

/// What readiness and the HA status report on: the role, the store (epoch),
/// the background loops and the settings they are judged by (stall limit,
/// HA mode). Read only.
#[derive(Clone)]
pub struct Health {
    pub store: Arc<Store>,
    pub ha: Arc<RoleCell>,
    pub loops: Arc<Loops>,
    pub settings: Arc<Settings>,
}

impl FromRef<AppState> for Health {
    fn from_ref(app: &AppState) -> Health {
        Health {
            store: app.store.clone(),
            ha: app.ha.clone(),
            loops: app.loops.clone(),
            settings: app.settings.clone(),
        }
    }
}

/// What a long-lived streaming response (SSE) follows: the store and its
/// commit signal, and the shutdown token that ends the stream so HTTP can
/// drain.
#[derive(Clone)]
pub struct Streaming {
    pub store: Arc<Store>,
    pub shutdown: CancellationToken,
}

impl FromRef<AppState> for Streaming {
    fn from_ref(app: &AppState) -> Streaming {
        Streaming {
            store: app.store.clone(),
            shutdown: app.shutdown.clone(),
        }
    }
}

/// The authentication-failure limiter and the metrics its refusals count
/// in: what a handler that checks a credential itself (the agent's join,
/// the console's sign-in) needs to apply the limits of [`super::limit`].
#[derive(Clone)]
pub struct Gate {
    pub auth_limit: Arc<AuthLimiter>,
    pub metrics: Arc<Metrics>,
}

impl FromRef<AppState> for Gate {
    fn from_ref(app: &AppState) -> Gate {
        Gate {
            auth_limit: app.auth_limit.clone(),
            metrics: app.metrics.clone(),
        }
    }
}

/// What the web console's pages and its sign-in read: the store, the role
/// every page header shows, and the settings (TLS decides `Secure` cookies).
#[derive(Clone)]
pub struct Console {
    pub store: Arc<Store>,
    pub ha: Arc<RoleCell>,
    pub settings: Arc<Settings>,
}

impl FromRef<AppState> for Console {
    fn from_ref(app: &AppState) -> Console {
        Console {
            store: app.store.clone(),
            ha: app.ha.clone(),
            settings: app.settings.clone(),
        }
    }
}
