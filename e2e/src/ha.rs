//! Helpers for the HA tests: a server in LiteFS mode driven by a
//! [`LitefsDouble`], its `host:port` as LiteFS's `.primary` names it, and the
//! epoch of whichever server answers as primary at a URL, and the pair the
//! HA tests start ([`start_pair`]).

use crate::{admin_call, wait_for, HaproxyProc, LitefsDouble, ServerProc};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// A server over the shared database file `shared`, its role from `double`
/// (`--ha-mode litefs`), with the shared cluster secret and a 3 s lease.
pub fn start_litefs_server(shared: &Path, double: &LitefsDouble, secret: &Path) -> ServerProc {
    let api = double.api_url();
    let mut args = vec![
        "--ha-mode",
        "litefs",
        "--litefs-dir",
        double.dir.to_str().unwrap(),
        "--litefs-api",
        &api,
        "--peer-url-template",
        "http://{hostname}",
        "--cluster-secret-file",
        secret.to_str().unwrap(),
        "--lease",
        "3s",
    ];
    // As deployed (k8s/configmap.yaml): the pair's database is replicated by
    // Litestream, so the servers take the flags they run with beside it.
    args.extend_from_slice(crate::litestream::SERVER_FLAGS);
    ServerProc::start_args(shared, &args).unwrap()
}

/// The server's `host:port` (what a replica's `.primary` file holds).
pub fn host(s: &ServerProc) -> String {
    format!("127.0.0.1:{}", s.port)
}

/// Whether the server answers 200 on `/v1/ha/primary` (the load balancer's check).
pub fn is_primary(s: &ServerProc) -> bool {
    s.call("GET", "/v1/ha/primary", None)
        .map(|(st, _)| st == 200)
        .unwrap_or(false)
}

/// The term epoch of the primary answering at `base` (None when it is not
/// a primary or does not answer).
/// Waits until HAProxy has marked one server down and routes only to the
/// other, which answers as primary; returns its epoch. (Right after HAProxy
/// starts, both servers count as up until the replica fails two checks, so a
/// first answer from the primary does not mean the next request goes there.)
pub fn routed_to_primary(lb: &HaproxyProc, timeout: Duration) -> Option<i64> {
    wait_for(timeout, || {
        let states = lb.server_states().ok()?;
        let up = states.iter().filter(|s| *s == "UP").count();
        let down = states.iter().filter(|s| s.starts_with("DOWN")).count();
        (up == 1 && down == 1).then_some(())?;
        term_epoch(&lb.url())
    })
}

pub fn term_epoch(base: &str) -> Option<i64> {
    let (status, st) = admin_call(base, "GET", "/v1/ha/status", None).ok()?;
    (status == 200 && st["role"] == "primary").then(|| st["term_epoch"].as_i64())?
}

/// An HA pair over the LiteFS test double, as the HA tests start it: one
/// shared database file, one cluster secret, server 0 primary and server 1
/// its replica (`doubles[i]` drives `servers[i]`).
pub struct HaPair {
    pub shared: PathBuf,
    pub secret: PathBuf,
    pub doubles: [LitefsDouble; 2],
    pub servers: [ServerProc; 2],
}

/// Starts an [`HaPair`] under `dir` and waits until both servers listen.
pub fn start_pair(dir: &Path) -> HaPair {
    let shared = dir.join("litefs-mount");
    let secret = dir.join("cluster.secret");
    std::fs::write(&secret, "e2e-cluster-secret-0123456789\n").unwrap();
    let doubles = [
        LitefsDouble::start(&dir.join("l1")).unwrap(),
        LitefsDouble::start(&dir.join("l2")).unwrap(),
    ];
    doubles[0].make_primary().unwrap();
    let primary = start_litefs_server(&shared, &doubles[0], &secret);
    doubles[1].make_replica(Some(&host(&primary))).unwrap();
    let replica = start_litefs_server(&shared, &doubles[1], &secret);
    HaPair {
        shared,
        secret,
        doubles,
        servers: [primary, replica],
    }
}
