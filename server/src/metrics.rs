//! Prometheus metrics: one registry per server, exposed on `GET /metrics`.
//!
//! Counters and histograms are updated where the events happen; gauges that
//! describe stored data (jobs, runs by state) are refreshed at scrape time.

use prometheus::{
    Encoder, Gauge, GaugeVec, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec,
    IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};

pub struct Metrics {
    pub registry: Registry,
    pub http_requests: IntCounterVec,
    pub http_seconds: HistogramVec,
    pub write_batch_size: Histogram,
    pub commit_seconds: Histogram,
    pub fire_lateness_seconds: Histogram,
    pub slots_created: IntCounterVec,
    pub misfires_skipped: IntCounter,
    pub broadcast_slots_empty: IntCounter,
    pub runs_pruned: IntCounter,
    pub jobs: IntGauge,
    pub runs: IntGaugeVec,
    pub epoch: IntGauge,
    pub is_primary: IntGauge,
    pub dispatch_queue: IntGauge,
    pub dispatch_oldest_wait: Gauge,
    pub scheduler_lookahead: Gauge,
    pub start_lateness_seconds: Histogram,
    pub runs_dispatched: IntCounter,
    pub runs_completed: IntCounterVec,
    pub lease_expiries: IntCounter,
    pub runs_unread_handed_back: IntCounter,
    pub agent_auth_failures: IntCounterVec,
    pub promotions: IntCounter,
    pub forwarded: IntCounterVec,
    pub write_failures: IntCounter,
    pub loop_last_success: GaugeVec,
    pub loop_errors: IntCounterVec,
    pub loop_failing: IntGaugeVec,
    pub events_pruned: IntCounter,
    pub events_stored: IntGauge,
    pub db_wal_bytes: IntGauge,
    pub db_litestream_checkpoint_conflict: IntGauge,
    pub events_last_id: IntGauge,
    pub webhooks: IntGauge,
    pub webhook_deliveries: IntCounterVec,
    pub webhook_lag_seconds: Histogram,
    pub webhook_backlog: IntGauge,
    pub auth_rate_limited: IntCounterVec,
    /// Connections, shed requests, timeouts (see [`crate::overload`]).
    pub overload: crate::overload::OverloadMetrics,
}

fn must<T>(r: prometheus::Result<T>) -> T {
    // Metric definitions are static; a failure here is a programming error.
    r.unwrap_or_else(|e| panic!("metric definition: {e}"))
}

impl Metrics {
    pub fn new() -> Metrics {
        let registry = Registry::new_custom(Some("sundial".into()), None)
            .unwrap_or_else(|e| panic!("registry: {e}"));
        let http_requests = must(IntCounterVec::new(
            Opts::new(
                "http_requests_total",
                "HTTP requests by route, method and status",
            ),
            &["route", "method", "status"],
        ));
        let http_seconds = must(HistogramVec::new(
            HistogramOpts::new(
                "http_request_duration_seconds",
                "HTTP request latency by route",
            )
            .buckets(vec![
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0, 30.0,
            ]),
            &["route"],
        ));
        let write_batch_size = must(Histogram::with_opts(
            HistogramOpts::new(
                "store_write_batch_size",
                "Operations applied per write transaction",
            )
            .buckets(vec![
                1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0, 4096.0,
            ]),
        ));
        let commit_seconds = must(Histogram::with_opts(
            HistogramOpts::new(
                "store_commit_seconds",
                "Time to apply and commit one write batch",
            )
            .buckets(vec![
                0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
            ]),
        ));
        let fire_lateness_seconds = must(Histogram::with_opts(
            HistogramOpts::new(
                "fire_lateness_seconds",
                "Delay between an on-time slot's scheduled time and the commit that created it",
            )
            .buckets(vec![
                0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0, 60.0,
            ]),
        ));
        let slots_created = must(IntCounterVec::new(
            Opts::new("slots_created_total", "Run slots created, by trigger"),
            &["trigger"],
        ));
        let misfires_skipped = must(IntCounter::new(
            "misfires_skipped_total",
            "Missed slots dropped by misfire policy",
        ));
        let broadcast_slots_empty = must(IntCounter::new(
            "broadcast_slots_empty_total",
            "Fires of broadcast jobs that made no run: no live node matched the target and allowed the executor",
        ));
        let runs_pruned = must(IntCounter::new(
            "runs_pruned_total",
            "Finished runs deleted by history retention",
        ));
        let jobs = must(IntGauge::new("jobs", "Jobs stored"));
        let runs = must(IntGaugeVec::new(
            Opts::new("runs", "Runs stored, by state"),
            &["state"],
        ));
        let epoch = must(IntGauge::new(
            "cluster_epoch",
            "Cluster epoch (fencing token)",
        ));
        let is_primary = must(IntGauge::new(
            "is_primary",
            "1 when this server is the primary",
        ));
        let scheduler_lookahead = must(Gauge::new(
            "scheduler_lookahead_seconds",
            "How far ahead of their time the scheduler writes the next fires' slots",
        ));
        let dispatch_queue = must(IntGauge::new(
            "dispatch_queue_depth",
            "Pending runs waiting for a node",
        ));
        let dispatch_oldest_wait = must(Gauge::new(
            "dispatch_oldest_wait_seconds",
            "How long the longest-waiting pending run has been ready without a node taking it",
        ));
        let start_lateness_seconds = must(Histogram::with_opts(
            HistogramOpts::new(
                "start_lateness_seconds",
                "Delay between a run's scheduled time and its assignment to a node",
            )
            .buckets(vec![
                0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0, 60.0,
            ]),
        ));
        let runs_dispatched = must(IntCounter::new(
            "runs_dispatched_total",
            "Attempts assigned to nodes",
        ));
        let runs_completed = must(IntCounterVec::new(
            Opts::new(
                "runs_completed_total",
                "Attempt results recorded, by outcome",
            ),
            &["outcome"],
        ));
        let lease_expiries = must(IntCounter::new(
            "lease_expiries_total",
            "Attempts whose lease expired (node lost)",
        ));
        let runs_unread_handed_back = must(IntCounter::new(
            "runs_unread_handed_back_total",
            "Attempts handed back at once because their poll response never reached the node",
        ));
        let agent_auth_failures = must(IntCounterVec::new(
            Opts::new(
                "agent_auth_failures_total",
                "Agent requests refused with 401, by reason",
            ),
            &["reason"],
        ));
        let promotions = must(IntCounter::new(
            "promotions_total",
            "Times this server became primary",
        ));
        let forwarded = must(IntCounterVec::new(
            Opts::new(
                "forwarded_requests_total",
                "Requests a replica forwarded to the primary, by outcome",
            ),
            &["outcome"],
        ));
        let write_failures = must(IntCounter::new(
            "store_write_failures_total",
            "Write batches that failed as a whole (busy, disk full, I/O); their callers were told to retry",
        ));
        let loop_last_success = must(GaugeVec::new(
            Opts::new(
                "loop_last_success_timestamp_seconds",
                "Unix time of each background loop's last successful pass",
            ),
            &["loop"],
        ));
        let loop_errors = must(IntCounterVec::new(
            Opts::new(
                "loop_errors_total",
                "Failed passes of each background loop (each is retried)",
            ),
            &["loop"],
        ));
        let loop_failing = must(IntGaugeVec::new(
            Opts::new(
                "loop_failing",
                "1 while a background loop's last pass failed",
            ),
            &["loop"],
        ));
        let events_pruned = must(IntCounter::new(
            "events_pruned_total",
            "Events deleted by retention",
        ));
        let events_stored = must(IntGauge::new("events", "Events stored"));
        let db_wal_bytes = must(IntGauge::new(
            "db_wal_bytes",
            "Size of the database's WAL file (grows while nothing checkpoints)",
        ));
        let db_litestream_checkpoint_conflict = must(IntGauge::new(
            "db_litestream_checkpoint_conflict",
            "1 while Litestream replicates the database (its tables are in it) and this server \
             checkpoints the WAL itself (--wal-autocheckpoint above 0): a Litestream crash can \
             then leave a replica that restores corrupt",
        ));
        let events_last_id = must(IntGauge::new(
            "events_last_id",
            "Id of the newest event (the stream's head)",
        ));
        let webhooks = must(IntGauge::new(
            "webhooks",
            "Webhooks being delivered by this primary",
        ));
        let webhook_deliveries = must(IntCounterVec::new(
            Opts::new(
                "webhook_deliveries_total",
                "Webhook delivery attempts, by outcome (delivered, retrying, failed)",
            ),
            &["outcome"],
        ));
        let webhook_lag_seconds = must(Histogram::with_opts(
            HistogramOpts::new(
                "webhook_lag_seconds",
                "Time from an event to its successful delivery",
            )
            .buckets(vec![
                0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0, 30.0, 300.0, 3600.0,
            ]),
        ));
        let webhook_backlog = must(IntGauge::new(
            "webhook_backlog",
            "Largest number of events any webhook has not handled yet (by id distance)",
        ));
        let auth_rate_limited = must(IntCounterVec::new(
            Opts::new(
                "auth_rate_limited_total",
                "Requests answered 429 after repeated authentication failures, by credential kind and by what ran out (source address or subject)",
            ),
            &["kind", "by"],
        ));
        for c in [
            Box::new(http_requests.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(http_seconds.clone()),
            Box::new(write_batch_size.clone()),
            Box::new(commit_seconds.clone()),
            Box::new(fire_lateness_seconds.clone()),
            Box::new(slots_created.clone()),
            Box::new(misfires_skipped.clone()),
            Box::new(broadcast_slots_empty.clone()),
            Box::new(runs_pruned.clone()),
            Box::new(jobs.clone()),
            Box::new(runs.clone()),
            Box::new(epoch.clone()),
            Box::new(is_primary.clone()),
            Box::new(dispatch_queue.clone()),
            Box::new(dispatch_oldest_wait.clone()),
            Box::new(scheduler_lookahead.clone()),
            Box::new(start_lateness_seconds.clone()),
            Box::new(runs_dispatched.clone()),
            Box::new(runs_completed.clone()),
            Box::new(lease_expiries.clone()),
            Box::new(runs_unread_handed_back.clone()),
            Box::new(agent_auth_failures.clone()),
            Box::new(promotions.clone()),
            Box::new(forwarded.clone()),
            Box::new(write_failures.clone()),
            Box::new(loop_last_success.clone()),
            Box::new(loop_errors.clone()),
            Box::new(loop_failing.clone()),
            Box::new(events_pruned.clone()),
            Box::new(events_stored.clone()),
            Box::new(db_wal_bytes.clone()),
            Box::new(db_litestream_checkpoint_conflict.clone()),
            Box::new(events_last_id.clone()),
            Box::new(webhooks.clone()),
            Box::new(webhook_deliveries.clone()),
            Box::new(webhook_lag_seconds.clone()),
            Box::new(webhook_backlog.clone()),
            Box::new(auth_rate_limited.clone()),
        ] {
            must(registry.register(c));
        }
        let overload = crate::overload::OverloadMetrics::register(&registry);
        Metrics {
            registry,
            http_requests,
            http_seconds,
            write_batch_size,
            commit_seconds,
            fire_lateness_seconds,
            slots_created,
            misfires_skipped,
            broadcast_slots_empty,
            runs_pruned,
            jobs,
            runs,
            epoch,
            is_primary,
            dispatch_queue,
            dispatch_oldest_wait,
            scheduler_lookahead,
            start_lateness_seconds,
            runs_dispatched,
            runs_completed,
            lease_expiries,
            runs_unread_handed_back,
            agent_auth_failures,
            promotions,
            forwarded,
            write_failures,
            loop_last_success,
            loop_errors,
            loop_failing,
            events_pruned,
            events_stored,
            db_wal_bytes,
            db_litestream_checkpoint_conflict,
            events_last_id,
            webhooks,
            webhook_deliveries,
            webhook_lag_seconds,
            webhook_backlog,
            auth_rate_limited,
            overload,
        }
    }

    /// Renders every metric in the Prometheus text exposition format.
    pub fn render(&self) -> String {
        let mut buf = Vec::with_capacity(16 * 1024);
        let encoder = TextEncoder::new();
        if let Err(e) = encoder.encode(&self.registry.gather(), &mut buf) {
            tracing::warn!(error = %e, "encoding metrics");
        }
        String::from_utf8(buf).unwrap_or_default()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}
