//! `--wal-autocheckpoint`: the server checkpoints its WAL every 1,000 pages
//! by default and never with 0 (Litestream then owns the checkpoints; see
//! docs/dr.md), `sundial_db_wal_bytes` reports the WAL's size, and
//! `sundial_db_litestream_checkpoint_conflict` tells when the server still
//! checkpoints a database Litestream replicates.

mod common;

use common::TestServer;
use reqwest::Method;
use serde_json::json;

const PAGE: u64 = 4096;

/// Writes jobs one request at a time (one transaction each) with ~3 KB
/// specs, and returns the WAL's size in pages as `/metrics` reports it,
/// after checking the file says the same.
async fn wal_pages_after_writes(server: &TestServer, jobs: usize) -> u64 {
    let arg = "x".repeat(3_000);
    for i in 0..jobs {
        let (status, body) = server
            .json(
                Method::PUT,
                &format!("/v1/jobs/wal-{i}"),
                Some(json!({
                    "schedule": "@at 2099-01-01T00:00:00Z",
                    "executor": {"type": "exec", "argv": ["echo", arg]},
                })),
            )
            .await;
        assert_eq!(status, 201, "{body}");
    }
    let reported = u64::try_from(gauge(server, "sundial_db_wal_bytes").await).unwrap();
    let mut wal = server.db_path().into_os_string();
    wal.push("-wal");
    assert_eq!(reported, std::fs::metadata(wal).unwrap().len());
    reported / PAGE
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_checkpoints_by_default_and_never_with_wal_autocheckpoint_0() {
    let server = TestServer::start().await;
    let default = wal_pages_after_writes(&server, 400).await;
    server.stop().await;

    let server = TestServer::start_with(|s| s.wal_autocheckpoint = 0).await;
    let never = wal_pages_after_writes(&server, 400).await;
    server.stop().await;

    eprintln!("WAL after 400 job writes: {default} pages by default, {never} with 0");
    assert!(
        default < 1_300,
        "the default server let the WAL grow to {default} pages"
    );
    assert!(
        never > 2 * default,
        "with --wal-autocheckpoint 0 the WAL holds every frame: {never} pages against {default} by default"
    );
}

/// A gauge's value in the server's `/metrics`.
async fn gauge(server: &TestServer, name: &str) -> i64 {
    let text = server
        .call(Method::GET, "/metrics", None)
        .await
        .text()
        .await
        .unwrap();
    let prefix = format!("{name} ");
    text.lines()
        .find_map(|l| l.strip_prefix(prefix.as_str()))
        .unwrap_or_else(|| panic!("no {name} in /metrics"))
        .parse()
        .unwrap()
}

/// Creates the tables Litestream 0.5 creates in a database it replicates
/// (`e2e/tests/dr_litestream.rs` checks the gauge against the real tool).
fn as_litestream_would(server: &TestServer) {
    let conn = rusqlite::Connection::open(server.db_path()).unwrap();
    conn.busy_timeout(std::time::Duration::from_secs(5))
        .unwrap();
    conn.execute_batch(
        "CREATE TABLE _litestream_seq (id INTEGER PRIMARY KEY, seq INTEGER);
         CREATE TABLE _litestream_lock (id INTEGER);",
    )
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checkpoints_beside_litestream_show_as_a_conflict_until_they_are_off() {
    const CONFLICT: &str = "sundial_db_litestream_checkpoint_conflict";

    let server = TestServer::start().await;
    assert_eq!(gauge(&server, CONFLICT).await, 0, "no Litestream yet");
    as_litestream_would(&server);
    assert_eq!(
        gauge(&server, CONFLICT).await,
        1,
        "Litestream replicates and the server checkpoints (the default)"
    );
    server.stop().await;

    let server = TestServer::start_with(|s| s.wal_autocheckpoint = 0).await;
    as_litestream_would(&server);
    assert_eq!(
        gauge(&server, CONFLICT).await,
        0,
        "with --wal-autocheckpoint 0 Litestream owns the checkpoints"
    );
    server.stop().await;
}
