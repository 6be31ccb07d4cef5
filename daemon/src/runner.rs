//! The work loop: long-poll for as many runs as there are free slots, run
//! each with heartbeats (which also carry cancels), deliver the result or
//! spool it, and on SIGTERM drain: stop polling, let running jobs finish
//! within the grace period, hand back the rest.

use crate::client::{CallError, Client};
use crate::executor::{self, Limits, Stop};
use crate::results::{self, Results};
use crate::spool::{Entry, Spool};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use sundial_proto::agent::{Assignment, CompleteRequest, Outcome, OutputRequest};
use sundial_proto::backoff::Backoff;
use sundial_proto::time::now_ms;
use tokio::sync::{Notify, Semaphore};
use tokio_util::sync::CancellationToken;

/// How long one long-poll waits on the server.
const POLL_WAIT: Duration = Duration::from_secs(30);

pub struct Runner {
    client: Client,
    /// What `http` jobs run with ([`crate::client::job_http_client`]).
    http: reqwest::Client,
    limits: Limits,
    capacity: u32,
    spool: Arc<Spool>,
    running: Mutex<HashMap<i64, Arc<Stop>>>,
    slots: Arc<Semaphore>,
    spool_wake: Notify,
    /// Longest wait between tries to deliver spooled results: a third of
    /// the shortest lease seen (at most [`FLUSH_BACKOFF_MAX`]), the
    /// heartbeat cadence. After an outage the server renews every lease
    /// once, for one lease: a result retried less often than heartbeats
    /// could arrive after its lease ran out, and the run that succeeded
    /// would end `lost`.
    flush_cap_ms: AtomicU64,
    /// Held while spooled results are sent: the flusher and the work loop
    /// (after an outage) both send them, and one result sent twice would be
    /// removed from the spool twice.
    flushing: tokio::sync::Mutex<()>,
    results: Results,
}

/// The spool's retry backoff, when no lease is known yet.
const FLUSH_BACKOFF_MAX: Duration = Duration::from_secs(10);

impl Runner {
    pub fn new(
        client: Client,
        http: reqwest::Client,
        limits: Limits,
        capacity: u32,
        spool: Spool,
    ) -> Runner {
        Runner {
            results: Results::new(client.clone()),
            client,
            http,
            limits,
            capacity,
            spool: Arc::new(spool),
            running: Mutex::new(HashMap::new()),
            slots: Arc::new(Semaphore::new(capacity as usize)),
            spool_wake: Notify::new(),
            flush_cap_ms: AtomicU64::new(FLUSH_BACKOFF_MAX.as_millis() as u64),
            flushing: tokio::sync::Mutex::new(()),
        }
    }

    fn running_len(&self) -> usize {
        self.running.lock().map(|m| m.len()).unwrap_or(0)
    }

    /// Polls and runs until `drain` is cancelled, then drains within `grace`.
    /// `receipt` is registration's, acknowledged by the first poll.
    pub async fn run(
        self: Arc<Self>,
        drain: CancellationToken,
        grace: Duration,
        receipt: Option<u64>,
    ) {
        let flusher = tokio::spawn(self.clone().flush_loop(drain.clone()));
        // Lives until the process ends: a result queued at any time is answered.
        let _sender = self.results.spawn();
        let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(15));
        // The receipt of the last poll response read: a poll that gets no
        // answer leaves it as it was, and the server hands back what that
        // lost answer held instead of waiting for its lease.
        let mut ack: Option<u64> = receipt;
        // False until a poll gets through (and after a failed one): results
        // spooled by an earlier start or during an outage go first.
        let mut reachable = false;
        loop {
            if drain.is_cancelled() {
                break;
            }
            // Wait for a free slot before asking for work.
            let first = tokio::select! {
                p = self.slots.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => break },
                _ = drain.cancelled() => break,
            };
            let free = (self.slots.available_permits() + 1) as u32;
            drop(first);
            // Back from an outage: the results it held go before new work
            // is asked for. A run finished meanwhile is still active to the
            // server until its result arrives, and would make a `forbid`
            // job's next slots be skipped.
            if !reachable && !self.flush_once().await {
                let delay = backoff.next_delay();
                tracing::warn!(
                    retry_in_ms = delay.as_millis() as u64,
                    "server unreachable; delivering spooled results first"
                );
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = drain.cancelled() => break,
                }
                continue;
            }
            let polled = tokio::select! {
                r = self.client.poll(free, POLL_WAIT, ack) => r,
                _ = drain.cancelled() => break,
            };
            match polled {
                Ok(resp) => {
                    backoff.reset();
                    reachable = true;
                    // Read, so every run in it is started (or handed back) here.
                    if resp.receipt.is_some() {
                        ack = resp.receipt;
                    }
                    // A run handed out ahead of its time waits from here, its
                    // arrival, not from whenever its task is first polled.
                    let received = tokio::time::Instant::now();
                    for a in resp.runs {
                        let permit = match self.slots.clone().acquire_owned().await {
                            Ok(p) => p,
                            Err(_) => break,
                        };
                        let me = self.clone();
                        tokio::spawn(async move {
                            me.run_one(a, received).await;
                            drop(permit);
                        });
                    }
                }
                Err(e) => {
                    reachable = !matches!(e, CallError::Unavailable(_));
                    let delay = backoff.next_delay();
                    match &e {
                        CallError::Unauthorized(_) => {
                            tracing::error!(error = %e, "the server refused this node's credential (revoked?); retrying")
                        }
                        _ => {
                            tracing::warn!(error = %e, retry_in_ms = delay.as_millis() as u64, "poll failed")
                        }
                    }
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => {}
                        _ = drain.cancelled() => break,
                    }
                }
            }
        }
        self.drain(grace).await;
        flusher.abort();
        self.flush_once().await;
        let left = self.spool.len();
        if left > 0 {
            tracing::warn!(
                spooled = left,
                "exiting with undelivered results; they are sent at next start"
            );
        }
    }

    async fn drain(&self, grace: Duration) {
        let busy = self.running_len();
        if busy == 0 {
            return;
        }
        tracing::info!(
            running = busy,
            grace_ms = grace.as_millis() as u64,
            "draining"
        );
        let all = self.capacity;
        let finished = tokio::time::timeout(grace, self.slots.acquire_many(all)).await;
        if let Ok(Ok(permits)) = finished {
            drop(permits);
            return;
        }
        let stops: Vec<Arc<Stop>> = self
            .running
            .lock()
            .map(|m| m.values().cloned().collect())
            .unwrap_or_default();
        tracing::warn!(
            handed_back = stops.len(),
            "grace period over; handing back running jobs"
        );
        for s in stops {
            s.stop(Outcome::HandedBack);
        }
        let wait = self.limits.kill_grace + Duration::from_secs(10);
        let _ = tokio::time::timeout(wait, self.slots.acquire_many(all)).await;
    }

    async fn run_one(self: Arc<Self>, a: Assignment, received: tokio::time::Instant) {
        let stop = Arc::new(Stop::default());
        if let Ok(mut m) = self.running.lock() {
            m.insert(a.run_id, stop.clone());
        }
        tracing::debug!(run = a.run_id, job = %a.job_id, attempt = a.attempt, "starting");
        let work = async {
            // Handed out ahead of its time: start on the dot, unless stopped first.
            let waited = if a.start_in_ms > 0 {
                tokio::select! {
                    _ = tokio::time::sleep_until(received + Duration::from_millis(a.start_in_ms)) => true,
                    _ = stop.stopped() => false,
                }
            } else {
                true
            };
            let started_at = now_ms();
            let f = if waited {
                executor::execute(&a, &self.limits, &stop, &self.http).await
            } else {
                executor::Finished::not_started(&stop)
            };
            (started_at, f)
        };
        tokio::pin!(work);
        // Most runs end before their first heartbeat or output report is
        // due: only a run still going then gets the tasks that send them.
        let every = heartbeat_every(a.lease_ms);
        self.flush_cap_ms
            .fetch_min(every.as_millis() as u64, Ordering::Relaxed);
        let quiet = every.min(LIVE_OUTPUT_EVERY);
        let (started_at, f) = tokio::select! {
            done = &mut work => done,
            _ = tokio::time::sleep(quiet) => {
                let hb = tokio::spawn(heartbeats(
                    self.client.clone(),
                    a.run_id,
                    a.attempt,
                    every,
                    every - quiet,
                    stop.clone(),
                ));
                let live = tokio::spawn(live_output(
                    self.client.clone(),
                    a.run_id,
                    a.attempt,
                    LIVE_OUTPUT_EVERY - quiet,
                    stop.clone(),
                ));
                let done = work.await;
                hb.abort();
                live.abort();
                done
            }
        };
        let request = CompleteRequest {
            attempt: a.attempt,
            outcome: f.outcome,
            exit_code: f.exit_code,
            output: f.output,
            truncated: f.truncated,
            error: f.error,
            started_at,
            finished_at: now_ms(),
        };
        let entry = Entry {
            run_id: a.run_id,
            request,
        };
        if let Err(entry) = self.results.deliver(entry).await {
            if let Err(e) = self.spool.put(&entry) {
                tracing::error!(run = a.run_id, error = %e, "could not spool a result; it is lost");
            } else {
                tracing::info!(
                    run = a.run_id,
                    "result not delivered (server unreachable, or this node's credential refused); spooled"
                );
                self.spool_wake.notify_one();
            }
        }
        if let Ok(mut m) = self.running.lock() {
            m.remove(&a.run_id);
        }
    }

    /// Sends a result; true when the server has it (or will never take it).
    async fn flush_once(&self) -> bool {
        let _one_at_a_time = self.flushing.lock().await;
        for (path, entry) in self.spool.list() {
            let run = entry.run_id;
            if results::deliver_one(&self.client, entry).await.is_err() {
                return false;
            }
            self.spool.remove(&path);
            tracing::info!(run, "spooled result delivered");
        }
        true
    }

    async fn flush_loop(self: Arc<Self>, stop: CancellationToken) {
        let mut backoff = Backoff::new(Duration::from_millis(200), FLUSH_BACKOFF_MAX);
        loop {
            let delay = if self.flush_once().await {
                backoff.reset();
                Duration::from_secs(5)
            } else {
                let cap = Duration::from_millis(self.flush_cap_ms.load(Ordering::Relaxed));
                backoff.next_delay().min(cap)
            };
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = self.spool_wake.notified() => {}
                _ = stop.cancelled() => return,
            }
        }
    }
}

/// Sends what a running attempt printed, twice a second (the first time
/// after `first`), until the attempt ends (the complete call carries the
/// whole output) or the server says the attempt is no longer this node's.
async fn live_output(client: Client, run_id: i64, attempt: u32, first: Duration, stop: Arc<Stop>) {
    let mut sent = 0usize;
    let mut wait = first;
    loop {
        tokio::time::sleep(wait).await;
        wait = LIVE_OUTPUT_EVERY;
        let Some((chunk, _)) = stop.output_since(sent) else {
            continue;
        };
        let req = OutputRequest {
            attempt,
            offset: sent as u64,
            chunk,
        };
        match client.output(run_id, &req).await {
            // The server says where it is: normally after this chunk.
            Ok(r) => sent = r.stored as usize,
            Err(CallError::Rejected { status, .. }) if status == 404 || status == 409 => return,
            Err(e) => tracing::debug!(run = run_id, error = %e, "sending live output failed"),
        }
    }
}

/// How often a running attempt's new output is sent.
const LIVE_OUTPUT_EVERY: Duration = Duration::from_millis(500);

/// How often a running attempt renews its lease: every third of it.
fn heartbeat_every(lease_ms: u64) -> Duration {
    Duration::from_millis((lease_ms / 3).max(200))
}

/// Renews the lease every `every` (the first time after `first`); a reply
/// asking to cancel stops the run.
async fn heartbeats(
    client: Client,
    run_id: i64,
    attempt: u32,
    every: Duration,
    first: Duration,
    stop: Arc<Stop>,
) {
    let mut wait = first;
    loop {
        tokio::time::sleep(wait).await;
        wait = every;
        match client.heartbeat(run_id, attempt).await {
            Ok(r) if r.cancel => {
                tracing::info!(run = run_id, "cancelled by the server");
                stop.stop(Outcome::Cancelled);
                return;
            }
            Ok(_) => {}
            Err(CallError::Rejected { status: 404, .. }) => {
                stop.stop(Outcome::Cancelled);
                return;
            }
            Err(e) if e.is_revoked() => {
                // The server retries the run elsewhere once its lease
                // expires: running on would run it twice.
                tracing::warn!(run = run_id, "this node was revoked: stopping the run");
                stop.stop(Outcome::Cancelled);
                return;
            }
            Err(e) => tracing::debug!(run = run_id, error = %e, "heartbeat failed"),
        }
    }
}
