//! A request whose client hangs up while its write waits for the database:
//! the write still commits (it was already queued), and what must follow
//! the commit in memory follows it — the handler's future, dropped with the
//! connection, is not the one that does it.

mod common;

use common::{wait_for, TestServer};
use reqwest::{Client, Method};
use serde_json::json;
use std::time::Duration;

/// Holds SQLite's write lock from an outside connection until dropped (well
/// within the server's 5 s busy timeout, so its writer waits, then commits).
struct WriteLock(rusqlite::Connection);

impl WriteLock {
    fn take(server: &TestServer) -> WriteLock {
        let conn = rusqlite::Connection::open(server.db_path()).unwrap();
        conn.execute_batch("BEGIN IMMEDIATE").unwrap();
        WriteLock(conn)
    }
}

impl Drop for WriteLock {
    fn drop(&mut self) {
        let _ = self.0.execute_batch("ROLLBACK");
    }
}

/// Sends `method path` as admin from a client that gives up after 300 ms.
async fn hang_up(server: &TestServer, method: Method, path: &str) {
    let impatient = Client::builder()
        .timeout(Duration::from_millis(300))
        .build()
        .unwrap();
    let sent = impatient
        .request(method, format!("{}{path}", server.base))
        .bearer_auth(common::ADMIN_KEY)
        .send()
        .await;
    assert!(
        sent.as_ref().is_err_and(|e| e.is_timeout()),
        "expected the client to time out while the write waits: {sent:?}"
    );
    // The server sees the connection close; the writer is still waiting.
    tokio::time::sleep(Duration::from_millis(300)).await;
}

/// Reads one value from the database file, outside the server.
fn db_count(server: &TestServer, sql: &str) -> i64 {
    let conn = rusqlite::Connection::open(server.db_path()).unwrap();
    conn.query_row(sql, [], |r| r.get(0)).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_deleted_by_a_client_that_hung_up_stops_working() {
    let server = TestServer::start().await;
    let (status, key) = server
        .json(
            Method::POST,
            "/v1/api-keys",
            Some(json!({"name": "ci", "scope": "read"})),
        )
        .await;
    assert_eq!(status, 201, "{key}");
    let (id, secret) = (key["id"].as_str().unwrap(), key["key"].as_str().unwrap());
    // Used once: the server now has it cached.
    let used = server.call_as(secret, Method::GET, "/v1/jobs", None).await;
    assert_eq!(used.status(), 200);

    let lock = WriteLock::take(&server);
    hang_up(&server, Method::DELETE, &format!("/v1/api-keys/{id}")).await;
    drop(lock);
    let sql = format!("SELECT count(*) FROM api_keys WHERE id = '{id}'");
    let gone = wait_for(Duration::from_secs(10), || async {
        (db_count(&server, &sql) == 0).then_some(())
    })
    .await;
    assert!(
        gone.is_some(),
        "the delete committed once the lock was released"
    );
    let after = server.call_as(secret, Method::GET, "/v1/jobs", None).await;
    assert_eq!(
        after.status(),
        401,
        "a deleted key must stop working, not live on in the cache"
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_triggered_by_a_client_that_hung_up_is_queued() {
    let server = TestServer::start().await;
    let spec = json!({"schedule": "@yearly", "executor": {"type": "exec", "argv": ["true"]}});
    let (status, body) = server.json(Method::PUT, "/v1/jobs/t", Some(spec)).await;
    assert!(status == 201 || status == 200, "{status} {body}");

    let lock = WriteLock::take(&server);
    hang_up(&server, Method::POST, "/v1/jobs/t/trigger").await;
    drop(lock);
    let sql = "SELECT count(*) FROM runs WHERE state = 'pending'";
    let created = wait_for(Duration::from_secs(10), || async {
        (db_count(&server, sql) == 1).then_some(())
    })
    .await;
    assert!(
        created.is_some(),
        "the trigger committed once the lock was released"
    );
    // No daemon: the run waits in the dispatch queue, where a daemon's poll
    // would find it (not only in the database, until the next promotion).
    let queued = wait_for(Duration::from_secs(5), || async {
        let text = server
            .call(Method::GET, "/metrics", None)
            .await
            .text()
            .await
            .ok()?;
        let has = |sample: &str| text.lines().any(|l| l == sample);
        // Queued, and counted once (when its write committed).
        (has("sundial_dispatch_queue_depth 1")
            && has("sundial_slots_created_total{trigger=\"manual\"} 1"))
        .then_some(())
    })
    .await;
    assert!(
        queued.is_some(),
        "the triggered run is in the dispatch queue and counted"
    );
    server.stop().await;
}
