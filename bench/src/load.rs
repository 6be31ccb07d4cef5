//! The load generator: distinct jobs `PUT` over concurrent keep-alive
//! connections, with each request's latency and the generator's own CPU.

use crate::report::{percentiles, row, verdict};
use anyhow::{Context, Result};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use sundial_bench::{cpu_seconds, summary};
use sundial_e2e::ADMIN_KEY;

/// Result of a batch of PUTs.
pub(crate) struct Load {
    pub(crate) latencies_us: Vec<i64>,
    pub(crate) errors: usize,
    pub(crate) first_error: Option<String>,
    pub(crate) elapsed: Duration,
    /// Load generator CPU seconds (this process).
    pub(crate) client_cpu: f64,
}

/// PUTs `jobs` distinct jobs (`{prefix}-{i}`, schedule from `schedule(i)`,
/// executor `exec ["true"]`) with `clients` concurrent keep-alive connections.
pub(crate) fn put_jobs(
    base: &str,
    prefix: &str,
    jobs: u64,
    clients: usize,
    threads: usize,
    schedule: impl Fn(u64) -> String + Send + Sync + 'static,
) -> Result<Load> {
    put_job_bodies(base, prefix, jobs, clients, threads, move |i| {
        serde_json::json!({
            "schedule": schedule(i),
            "executor": {"type": "exec", "argv": ["true"]},
        })
    })
}

/// PUTs `jobs` distinct jobs (`{prefix}-{i}`, body from `body(i)`) with
/// `clients` concurrent keep-alive connections.
pub(crate) fn put_job_bodies(
    base: &str,
    prefix: &str,
    jobs: u64,
    clients: usize,
    threads: usize,
    body: impl Fn(u64) -> serde_json::Value + Send + Sync + 'static,
) -> Result<Load> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .enable_all()
        .build()
        .context("building the tokio runtime")?;
    let cpu_before = cpu_seconds("self")?;
    let base = base.to_string();
    let prefix = prefix.to_string();
    let make_body = Arc::new(body);
    let load = rt.block_on(async move {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .pool_max_idle_per_host(clients)
            .tcp_nodelay(true)
            .build()
            .context("building the HTTP client")?;
        let next = Arc::new(AtomicUsize::new(0));
        let started = Instant::now();
        let mut tasks = Vec::with_capacity(clients);
        for _ in 0..clients {
            let (http, next, base, prefix, make_body) = (
                http.clone(),
                next.clone(),
                base.clone(),
                prefix.clone(),
                make_body.clone(),
            );
            tasks.push(tokio::spawn(async move {
                let mut lat = Vec::new();
                let mut errors = 0usize;
                let mut first_error = None;
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed) as u64;
                    if i >= jobs {
                        break;
                    }
                    let body = make_body(i);
                    let t = Instant::now();
                    let resp = http
                        .put(format!("{base}/v1/jobs/{prefix}-{i}"))
                        .bearer_auth(ADMIN_KEY)
                        .json(&body)
                        .send()
                        .await;
                    let outcome = match resp {
                        Ok(r) => {
                            let status = r.status();
                            let text = r.text().await.unwrap_or_default();
                            if status.as_u16() == 201 {
                                Ok(())
                            } else {
                                Err(format!("{status}: {text}"))
                            }
                        }
                        Err(e) => Err(e.to_string()),
                    };
                    lat.push(t.elapsed().as_micros() as i64);
                    if let Err(e) = outcome {
                        errors += 1;
                        first_error.get_or_insert(e);
                    }
                }
                (lat, errors, first_error)
            }));
        }
        let mut load = Load {
            latencies_us: Vec::with_capacity(jobs as usize),
            errors: 0,
            first_error: None,
            elapsed: Duration::ZERO,
            client_cpu: 0.0,
        };
        for t in tasks {
            let (lat, errors, first_error) = t.await.context("client task")?;
            load.latencies_us.extend(lat);
            load.errors += errors;
            if load.first_error.is_none() {
                load.first_error = first_error;
            }
        }
        load.elapsed = started.elapsed();
        anyhow::Ok(load)
    })?;
    drop(rt);
    let mut load = load;
    load.client_cpu = cpu_seconds("self")? - cpu_before;
    if let Some(e) = &load.first_error {
        println!("first error: {e}");
    }
    Ok(load)
}

/// The rows of a load: jobs created, wall time, throughput, latencies.
pub(crate) fn report_load(load: &mut Load, jobs: u64, with_target: bool) {
    let rate = jobs as f64 / load.elapsed.as_secs_f64();
    row(
        "jobs created",
        format!("{} ({} errors)", jobs as usize - load.errors, load.errors),
        "",
    );
    row(
        "wall time",
        format!("{:.2} s", load.elapsed.as_secs_f64()),
        "",
    );
    row(
        "throughput",
        format!("{rate:.0} jobs/s"),
        &if with_target {
            format!("≥ 20000 {}", verdict(rate >= 20_000.0))
        } else {
            String::new()
        },
    );
    let s = summary(&mut load.latencies_us, "µs");
    for (k, v) in percentiles(&s) {
        row(&format!("request latency {k}"), format!("{v} µs"), "");
    }
}
