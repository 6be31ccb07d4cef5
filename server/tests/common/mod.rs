//! In-process test server: the real router, store and scheduler on a loopback
//! port with a temporary data directory.

#![allow(dead_code)]

use reqwest::{Client, Method, Response};
use serde_json::Value;
use std::time::{Duration, Instant};
use sundial_server::config::Settings;
use sundial_server::server::{self, Running};

pub const ADMIN_KEY: &str = "test-admin-key-0123456789";

pub struct TestServer {
    pub dir: tempfile::TempDir,
    pub base: String,
    pub client: Client,
    running: Option<Running>,
}

impl TestServer {
    pub async fn start() -> TestServer {
        TestServer::start_with(|_| {}).await
    }

    /// [`TestServer::start`] with settings changed by `change`.
    pub async fn start_with(change: impl FnOnce(&mut Settings)) -> TestServer {
        let dir = tempfile::tempdir().unwrap();
        let mut settings = Settings {
            listen: "127.0.0.1:0".parse().unwrap(),
            data_dir: dir.path().to_path_buf(),
            max_body_bytes: 64 * 1024,
            ..Settings::default()
        };
        change(&mut settings);
        let running = server::start(settings, Some(ADMIN_KEY.into()))
            .await
            .unwrap();
        TestServer {
            base: format!("http://{}", running.addr),
            dir,
            client: Client::new(),
            running: Some(running),
        }
    }

    pub fn db_path(&self) -> std::path::PathBuf {
        self.dir.path().join(sundial_server::store::DB_FILE)
    }

    pub async fn call(&self, method: Method, path: &str, body: Option<Value>) -> Response {
        self.call_as(ADMIN_KEY, method, path, body).await
    }

    pub async fn call_as(
        &self,
        key: &str,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> Response {
        let mut req = self
            .client
            .request(method, format!("{}{}", self.base, path))
            .bearer_auth(key);
        if let Some(b) = body {
            req = req.json(&b);
        }
        req.send().await.unwrap()
    }

    /// Sends and returns (status, JSON body or Null).
    pub async fn json(&self, method: Method, path: &str, body: Option<Value>) -> (u16, Value) {
        let resp = self.call(method, path, body).await;
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap();
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    pub async fn stop(mut self) {
        if let Some(r) = self.running.take() {
            r.stop().await.unwrap();
        }
    }
}

/// Polls `check` every 50 ms until it returns Some or `timeout` passes.
pub async fn wait_for<T, F, Fut>(timeout: Duration, mut check: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check().await {
            return Some(v);
        }
        if Instant::now() > deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Every row of every table, as text: equal snapshots mean nothing was written.
pub fn snapshot(db: &std::path::Path) -> String {
    let conn =
        rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .unwrap();
    let mut out = String::new();
    for table in ["cluster", "api_keys", "jobs", "runs"] {
        let mut stmt = conn
            .prepare(&format!("SELECT * FROM {table} ORDER BY 1"))
            .unwrap();
        let cols = stmt.column_count();
        let mut rows = stmt.query([]).unwrap();
        while let Some(row) = rows.next().unwrap() {
            out.push_str(table);
            for i in 0..cols {
                let v: rusqlite::types::Value = row.get(i).unwrap();
                out.push_str(&format!("|{v:?}"));
            }
            out.push('\n');
        }
    }
    out
}
