//! `--wal-autocheckpoint`: the server checkpoints its WAL every 1,000 pages
//! by default and never with 0 (Litestream then owns the checkpoints; see
//! docs/dr.md), and `sundial_db_wal_bytes` reports the WAL's size.

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
    let text = server
        .call(Method::GET, "/metrics", None)
        .await
        .text()
        .await
        .unwrap();
    let reported: u64 = text
        .lines()
        .find_map(|l| l.strip_prefix("sundial_db_wal_bytes "))
        .unwrap_or_else(|| panic!("no sundial_db_wal_bytes in /metrics"))
        .parse()
        .unwrap();
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
