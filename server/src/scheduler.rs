//! The scheduler (primary only): turns due `next_fire_at` values into run
//! slots.
//!
//! The `jobs_due` index on `job_stats.next_fire_at` is the priority queue:
//! each tick asks the writer to take the due jobs, plan their slots (see
//! [`crate::misfire`]), insert them with `ON CONFLICT DO NOTHING` and
//! advance `next_fire_at` — all in one transaction, so a crash or failover
//! can neither lose nor repeat a slot. Ticks run [`LOOKAHEAD_MS`] ahead —
//! more before a busy second, see [`lookahead_ms`] — so a slot is committed
//! before its time and released by the dispatcher exactly at it. The loop
//! then sleeps until the earliest remaining fire, or until an API write
//! hints that something earlier exists.

use crate::dispatch::Dispatcher;
use crate::loops::{self, Loop, Loops};
use crate::metrics::Metrics;
use crate::misfire;
use crate::registry::Registry;
use crate::schedule::Schedule;
use crate::store::events::{self, EventType};
use crate::store::lifecycle::{self, NextFire, Queued};
use crate::store::prepared::Prepared;
use crate::store::{jobs, Store, StoreError};
use rusqlite::Connection;
use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use sundial_proto::time::now_ms;
use sundial_proto::{Target, Trigger};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// Most jobs fired in one write transaction; more due jobs take more
/// transactions. Small enough that the first slots of a big second are
/// committed (visible, dispatchable) within milliseconds.
const FIRE_BATCH: usize = 250;
/// Slots are written at least this long before their scheduled time, so
/// they are committed, and handed to daemons (see
/// [`crate::dispatch::DISPATCH_AHEAD_MS`]), before it arrives: daemons start
/// them on the dot. Longer than the dispatch lookahead plus a small second's
/// inserts; a busy second gets more ([`lookahead_ms`]). Misfire grace is
/// still judged against the real time.
pub const LOOKAHEAD_MS: i64 = 250;
/// Extra lookahead per job due in the second that starts at the next fire: a
/// generous bound on the writer's time to create one slot while it also
/// assigns and completes runs (25–40 µs alone, up to ~120 µs under a busy
/// second on a slow 2-core machine: docs/benchmarks.md §20).
const LEAD_PER_FIRE_US: i64 = 100;
/// Most extra lookahead. A pause, edit or delete this close to a very busy
/// second may not stop its slots (docs/scheduling.md, "Slots").
pub const MAX_LEAD_MS: i64 = 2_000;
/// The window, from the next fire, whose fires size the extra lookahead.
const BUSY_WINDOW_MS: i64 = 1_000;
/// Fires counted at most: enough for [`MAX_LEAD_MS`].
const BUSY_COUNT_CAP: usize = (MAX_LEAD_MS * 1000 / LEAD_PER_FIRE_US) as usize;

/// How far ahead the next tick writes slots when `fires` jobs fall due in
/// the second from the next fire: [`LOOKAHEAD_MS`], plus enough for the
/// writer to create them all before that second starts. 10,000 jobs due
/// on one second are fired from 1.25 s before it, one job from 250 ms.
pub fn lookahead_ms(fires: usize) -> i64 {
    let lead = i64::try_from(fires)
        .unwrap_or(i64::MAX)
        .saturating_mul(LEAD_PER_FIRE_US)
        / 1000;
    LOOKAHEAD_MS + lead.min(MAX_LEAD_MS)
}
/// Longest sleep when nothing is scheduled (a safety net, not a poll).
const IDLE_WAKE_MS: i64 = 60_000;
/// Parsed schedules kept between fires.
const CACHE_CAP: usize = 200_000;

/// A due job's parsed schedule and target, kept while its columns are unchanged.
struct Parsed {
    schedule_text: String,
    timezone: String,
    target_text: String,
    schedule: Schedule,
    target: Arc<Target>,
}

/// Why a stored job cannot fire (only a hand-edited database gets here:
/// everything is validated on write).
#[derive(Debug, thiserror::Error)]
enum Unfireable {
    #[error(transparent)]
    Schedule(#[from] crate::schedule::ScheduleError),
    #[error(transparent)]
    Row(#[from] StoreError),
}

/// Parsed schedules by job key, reused while the job's expression is unchanged.
#[derive(Default)]
struct ScheduleCache {
    map: HashMap<i64, Parsed>,
}

impl ScheduleCache {
    fn get(&mut self, job: &jobs::DueJob) -> Result<&Parsed, Unfireable> {
        let fresh = matches!(self.map.get(&job.pk),
            Some(p) if p.schedule_text == job.schedule && p.timezone == job.timezone
                && p.target_text == job.target);
        if !fresh {
            if self.map.len() >= CACHE_CAP {
                self.map.clear();
            }
            let parsed = Parsed {
                schedule: Schedule::parse(&job.schedule, &job.timezone)?,
                schedule_text: job.schedule.clone(),
                timezone: job.timezone.clone(),
                target: Arc::new(lifecycle::parse_target(&job.id, &job.target)?),
                target_text: job.target.clone(),
            };
            self.map.insert(job.pk, parsed);
        }
        match self.map.get(&job.pk) {
            Some(p) => Ok(p),
            None => unreachable!("inserted above"),
        }
    }
}

/// What one tick did.
#[derive(Debug, Default, Clone)]
pub struct Tick {
    /// The slots created, for the dispatch queue.
    pub created: Vec<Queued>,
    /// Scheduled times of the on-time slots created (for the lateness histogram,
    /// observed once they are committed).
    pub on_time: Vec<i64>,
    pub slots_created: usize,
    /// Slots created per trigger, and fires skipped by misfire policies:
    /// counted in the metrics once the tick has committed, so a batch that
    /// rolls back (and is retried) is not counted twice.
    pub created_by_trigger: Vec<(Trigger, u64)>,
    pub skipped: u64,
    /// Fires of broadcast jobs with no node to run them (no run made).
    pub empty_broadcasts: u64,
    pub jobs_fired: usize,
    /// Earliest fire still pending after this tick.
    pub next_fire: Option<i64>,
    /// Jobs due in the second from `next_fire` (at most [`BUSY_COUNT_CAP`]),
    /// counted by the tick's last write: sizes the next lookahead.
    pub fires_next: usize,
}

pub struct Scheduler {
    store: Arc<Store>,
    metrics: Arc<Metrics>,
    registry: Arc<Registry>,
    dispatcher: Arc<Dispatcher>,
    loops: Arc<Loops>,
    cache: Arc<Mutex<ScheduleCache>>,
    wake: Notify,
    /// The instant the loop currently sleeps until (ms); hints earlier than it wake the loop.
    wake_at: AtomicI64,
}

impl Scheduler {
    pub fn new(
        store: Arc<Store>,
        metrics: Arc<Metrics>,
        registry: Arc<Registry>,
        dispatcher: Arc<Dispatcher>,
        loops: Arc<Loops>,
    ) -> Scheduler {
        Scheduler {
            store,
            metrics,
            registry,
            dispatcher,
            loops,
            cache: Arc::new(Mutex::new(ScheduleCache::default())),
            wake: Notify::new(),
            wake_at: AtomicI64::new(0),
        }
    }

    /// Tells the loop a job's next fire changed; wakes it only if that is sooner.
    pub fn hint(&self, next_fire_at: Option<i64>) {
        if let Some(t) = next_fire_at {
            if t < self.wake_at.fetch_min(t, Ordering::AcqRel) {
                self.wake.notify_one();
            }
        }
    }

    /// Fires everything due up to `lookahead_ms` from now (in batches) and
    /// returns the totals. "Now" is read inside each write transaction, not
    /// when the write was queued: a write that waited for the database
    /// (busy, full disk) judges its fires against the time it really runs,
    /// so the misfire policy sees how late they are.
    pub async fn tick(&self, lookahead_ms: i64) -> Result<Tick, StoreError> {
        let mut total = Tick::default();
        loop {
            let cache = self.cache.clone();
            let registry = self.registry.clone();
            let mut tick = self
                .store
                .write(move |conn| {
                    let now = now_ms();
                    fire_due(conn, now, lookahead_ms, FIRE_BATCH, &cache, &registry)
                })
                .await?;
            let committed = now_ms();
            for (trigger, n) in tick.created_by_trigger.drain(..) {
                self.metrics
                    .slots_created
                    .with_label_values(&[trigger.as_str()])
                    .inc_by(n);
            }
            self.metrics.misfires_skipped.inc_by(tick.skipped);
            self.metrics
                .broadcast_slots_empty
                .inc_by(tick.empty_broadcasts);
            for at in tick.on_time.drain(..) {
                let late = (committed - at).max(0) as f64 / 1000.0;
                self.metrics.fire_lateness_seconds.observe(late);
            }
            self.dispatcher.enqueue(std::mem::take(&mut tick.created));
            total.slots_created += tick.slots_created;
            total.jobs_fired += tick.jobs_fired;
            total.next_fire = tick.next_fire;
            total.fires_next = tick.fires_next;
            if tick.jobs_fired < FIRE_BATCH {
                return Ok(total);
            }
        }
    }

    /// The scheduling loop; returns only when `shutdown` (the end of the
    /// term) is cancelled. A failed tick — busy database, full disk, even a
    /// fenced writer whose term is about to end — is reported to [`Loops`]
    /// and retried after a backoff; nothing is lost, because a slot and its
    /// `next_fire_at` advance commit together (missed fires then follow the
    /// job's misfire policy).
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        tracing::info!("scheduler started");
        let mut backoff = loops::retry_backoff();
        let mut lookahead = LOOKAHEAD_MS;
        while !shutdown.is_cancelled() {
            let now = now_ms();
            // Claim the wake slot before reading, so a hint racing this tick is not lost.
            self.wake_at.store(i64::MAX, Ordering::Release);
            self.loops.begin(Loop::Scheduler);
            let sleep_ms = match self.tick(lookahead).await {
                Ok(tick) => {
                    backoff.reset();
                    lookahead = lookahead_ms(tick.fires_next);
                    self.metrics
                        .scheduler_lookahead
                        .set(lookahead as f64 / 1000.0);
                    self.loops.ok(Loop::Scheduler);
                    if tick.slots_created > 0 {
                        tracing::debug!(
                            slots = tick.slots_created,
                            jobs = tick.jobs_fired,
                            "fired"
                        );
                    }
                    let target = tick.next_fire.unwrap_or(now + IDLE_WAKE_MS);
                    self.wake_at.fetch_min(target, Ordering::AcqRel);
                    let until = self.wake_at.load(Ordering::Acquire) - now_ms();
                    // Jobs may still be added for that instant (a bulk
                    // apply; their hints do not wake a loop already waiting
                    // for it): look again once the longest lookahead begins,
                    // so a second that became busy meanwhile is sized anew.
                    let recount = until - (LOOKAHEAD_MS + MAX_LEAD_MS);
                    if recount > 0 {
                        recount.min(IDLE_WAKE_MS)
                    } else {
                        (until - lookahead).clamp(0, IDLE_WAKE_MS)
                    }
                }
                Err(e) => {
                    let delay = backoff.next_delay();
                    self.loops.failed(Loop::Scheduler, &e, delay);
                    delay.as_millis() as i64
                }
            };
            if sleep_ms > 0 {
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(sleep_ms as u64)) => {}
                    _ = self.wake.notified() => {}
                    _ = shutdown.cancelled() => break,
                }
            }
        }
        tracing::info!("scheduler stopped (end of term)");
    }
}

/// A stored job that cannot fire stops firing, loudly.
fn disable_timer(
    conn: &Connection,
    pk: i64,
    id: &str,
    error: &dyn std::fmt::Display,
) -> Result<(), StoreError> {
    tracing::error!(job = %id, error = %error, "stored job no longer parses; disabling its timer");
    jobs::set_next_fire(conn, pk, None)
}

/// One transaction: take due jobs, create their slots, advance their fires.
#[allow(clippy::too_many_arguments)]
fn fire_due(
    conn: &Connection,
    now: i64,
    lookahead_ms: i64,
    limit: usize,
    cache: &Mutex<ScheduleCache>,
    registry: &Registry,
) -> Result<Tick, StoreError> {
    // Fires up to `horizon` are taken now; the misfire cutoff stays
    // `now - grace` (the plan sees the horizon, and a grace as much longer).
    let horizon = now + lookahead_ms;
    let due = jobs::due(conn, horizon, limit)?;
    let mut tick = Tick {
        jobs_fired: due.len(),
        ..Tick::default()
    };
    let mut cache = cache
        .lock()
        .map_err(|_| StoreError::Io("schedule cache poisoned".into()))?;
    // Each job's slot insert and counters: prepared once for the batch.
    let mut p = Prepared::new(conn);
    for job in &due {
        let (job, parsed) = match job {
            Err(bad) => {
                disable_timer(conn, bad.pk, &bad.id, &bad.error)?;
                continue;
            }
            Ok(job) => match cache.get(job) {
                Ok(parsed) => (job, parsed),
                Err(e) => {
                    disable_timer(conn, job.pk, &job.id, &e)?;
                    continue;
                }
            },
        };
        let slot_job = lifecycle::SlotJob {
            pk: job.pk,
            target: parsed.target.clone(),
            executor_kind: job.executor_kind,
        };
        let nodes = lifecycle::slot_nodes(&parsed.target, || {
            registry.broadcast_targets(&parsed.target, job.executor_kind, now)
        });
        let plan = misfire::plan(
            &parsed.schedule,
            job.next_fire_at,
            horizon,
            job.misfire,
            job.grace_ms.saturating_add(lookahead_ms),
            job.max_catch_up.max(1) as usize,
        );
        let mut fired = lifecycle::Fired::default();
        for (at, trigger) in &plan.slots {
            let new = lifecycle::create_slots(
                &mut p,
                &slot_job,
                *trigger,
                *at,
                &nodes,
                now_ms(),
                &mut fired,
            )?;
            match tick
                .created_by_trigger
                .iter_mut()
                .find(|(t, _)| t == trigger)
            {
                Some((_, n)) => *n += new as u64,
                None => tick.created_by_trigger.push((*trigger, new as u64)),
            }
            if *trigger == Trigger::Schedule && new > 0 {
                tick.on_time.push(*at);
            }
        }
        if parsed.target.all && nodes.is_empty() && !plan.slots.is_empty() {
            // Nothing waits, so no queue alert sees it: say so.
            tick.empty_broadcasts += plan.slots.len() as u64;
            tracing::warn!(
                job = %job.id,
                fires = plan.slots.len(),
                "broadcast job fired with no live node matching its target and allowing its executor: no run made"
            );
        }
        if plan.skipped > 0 {
            tick.skipped += plan.skipped;
            tracing::info!(job = %job.id, skipped = plan.skipped, policy = job.misfire.as_str(), "missed fires not run");
            events::append(
                conn,
                now_ms(),
                EventType::SlotMissed,
                Some(&job.id),
                None,
                None,
                &serde_json::json!({"missed": plan.skipped, "policy": job.misfire.as_str()}),
            )?;
        }
        lifecycle::record_slots(&mut p, job.pk, NextFire::Set(plan.next), &fired)?;
        tick.slots_created += fired.queued.len();
        tick.created.append(&mut fired.queued);
    }
    tick.next_fire = jobs::earliest_fire(conn)?;
    if due.len() < limit {
        // The tick's last write: size the next lookahead (a bounded walk of
        // the index, at most once per tick, not per batch).
        if let Some(next) = tick.next_fire {
            tick.fires_next = jobs::fires_between(
                conn,
                next,
                next.saturating_add(BUSY_WINDOW_MS),
                BUSY_COUNT_CAP,
            )?;
        }
    }
    Ok(tick)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::test_support::temp_store;
    use sundial_proto::JobSpec;

    /// A tick's slots, counted per trigger.
    fn counted(m: &Metrics) -> u64 {
        Trigger::ALL
            .iter()
            .map(|t| m.slots_created.with_label_values(&[t.as_str()]).get())
            .sum()
    }

    fn scheduler(store: &Arc<Store>, metrics: &Arc<Metrics>) -> Arc<Scheduler> {
        let registry = Arc::new(Registry::default());
        let loops = Arc::new(Loops::new(metrics.clone()));
        let dispatcher = Arc::new(Dispatcher::new(
            store.clone(),
            metrics.clone(),
            registry.clone(),
            loops.clone(),
            30_000,
            CancellationToken::new(),
        ));
        Arc::new(Scheduler::new(
            store.clone(),
            metrics.clone(),
            registry,
            dispatcher,
            loops,
        ))
    }

    /// Stores `n` jobs firing every second, their next fire at `at`.
    async fn every_second_jobs(store: &Store, prefix: &str, n: usize, at: i64) {
        let spec: JobSpec = serde_json::from_str(
            r#"{"schedule":"@every 1s","executor":{"type":"exec","argv":["true"]}}"#,
        )
        .unwrap();
        let prefix = prefix.to_string();
        store
            .write(move |c| {
                for i in 0..n {
                    jobs::upsert(c, &format!("{prefix}-{i}"), &spec, 0, |_| Some(at))?;
                }
                Ok(())
            })
            .await
            .unwrap();
    }

    #[test]
    fn the_lookahead_grows_with_the_fires_of_the_next_second_up_to_a_bound() {
        assert_eq!(lookahead_ms(0), LOOKAHEAD_MS);
        assert_eq!(lookahead_ms(1), LOOKAHEAD_MS);
        assert_eq!(lookahead_ms(1_000), LOOKAHEAD_MS + 100);
        assert_eq!(lookahead_ms(10_000), LOOKAHEAD_MS + 1_000);
        assert_eq!(lookahead_ms(BUSY_COUNT_CAP), LOOKAHEAD_MS + MAX_LEAD_MS);
        assert_eq!(lookahead_ms(usize::MAX), LOOKAHEAD_MS + MAX_LEAD_MS);
    }

    #[tokio::test]
    async fn a_tick_counts_the_fires_in_the_second_from_the_next_one() {
        let (_dir, store) = temp_store();
        let store = Arc::new(store);
        let s = scheduler(&store, &Arc::new(Metrics::new()));
        let at = now_ms() + 600_000;
        every_second_jobs(&store, "busy", 300, at).await;
        every_second_jobs(&store, "edge", 1, at + BUSY_WINDOW_MS - 1).await;
        every_second_jobs(&store, "after", 5, at + BUSY_WINDOW_MS).await;
        store
            .write(|c| {
                Ok(c.execute_batch(
                    "UPDATE job_stats SET paused = 1
                     WHERE pk = (SELECT pk FROM jobs WHERE id = 'busy-0')",
                )?)
            })
            .await
            .unwrap();
        let tick = s.tick(LOOKAHEAD_MS).await.unwrap();
        assert_eq!(tick.slots_created, 0, "{tick:?}");
        assert_eq!(tick.next_fire, Some(at));
        // 299 active jobs at `at`, one at its last millisecond; not the
        // paused one, nor those a second later.
        assert_eq!(tick.fires_next, 300);
    }

    /// 5,000 jobs due on one second are fired 750 ms ahead (250 + 500):
    /// their first slots exist before the plain lookahead would have fired
    /// any, and every slot is created once. All but one are set to fire
    /// there while the loop already waits for that instant (their hints do
    /// not wake it): it counts again before the longest lookahead begins.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_busy_second_is_fired_early_enough_and_once() {
        let (_dir, store) = temp_store();
        let store = Arc::new(store);
        let metrics = Arc::new(Metrics::new());
        let s = scheduler(&store, &metrics);
        let n = 5_000;
        let far = now_ms() + 600_000;
        every_second_jobs(&store, "busy", n, far).await;
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(s.clone().run(shutdown.clone()));
        let at = now_ms() + LOOKAHEAD_MS + MAX_LEAD_MS + 1_000;
        let move_fires = |sql: &'static str| {
            let store = store.clone();
            async move {
                store
                    .write(move |c| Ok(c.execute(sql, [at])?))
                    .await
                    .unwrap()
            }
        };
        move_fires(
            "UPDATE job_stats SET next_fire_at = ?1
             WHERE pk = (SELECT pk FROM jobs WHERE id = 'busy-0')",
        )
        .await;
        s.hint(Some(at));
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(
            metrics.scheduler_lookahead.get(),
            lookahead_ms(1) as f64 / 1000.0
        );
        assert_eq!(
            move_fires(
                "UPDATE job_stats SET next_fire_at = ?1
                 WHERE pk != (SELECT pk FROM jobs WHERE id = 'busy-0')",
            )
            .await,
            n - 1
        );
        s.hint(Some(at));
        let slots_at = |t: i64| {
            let store = store.clone();
            async move {
                store
                    .read(move |c| {
                        Ok(c.query_row(
                            "SELECT count(*), count(DISTINCT job) FROM runs WHERE scheduled_for = ?1",
                            [t],
                            |r| Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?)),
                        )?)
                    })
                    .await
                    .unwrap()
            }
        };
        tokio::time::sleep(Duration::from_millis((at - 300 - now_ms()).max(0) as u64)).await;
        let (early, _) = slots_at(at).await;
        assert!(
            now_ms() < at - LOOKAHEAD_MS,
            "the test itself was too slow to look before the plain lookahead"
        );
        assert!(
            early > 0,
            "no slot of the busy second existed {} ms before it",
            at - now_ms()
        );
        assert_eq!(
            metrics.scheduler_lookahead.get(),
            lookahead_ms(n) as f64 / 1000.0
        );
        // Every slot, once (bounded wait: a loaded machine may still be
        // writing the last batches).
        let mut all = slots_at(at).await;
        for _ in 0..100 {
            if all.0 >= n as i64 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
            all = slots_at(at).await;
        }
        assert_eq!(all, (n as i64, n as i64));
        shutdown.cancel();
        task.await.unwrap();
    }

    #[tokio::test]
    async fn a_tick_that_does_not_commit_counts_no_slot() {
        let (_dir, store) = temp_store();
        let store = Arc::new(store);
        let metrics = Arc::new(Metrics::new());
        let s = scheduler(&store, &metrics);
        let spec: JobSpec = serde_json::from_str(
            r#"{"schedule":"@every 1s","executor":{"type":"exec","argv":["true"]}}"#,
        )
        .unwrap();
        let now = now_ms();
        store
            .write(move |c| {
                jobs::upsert(c, "every", &spec, now, |_| Some(now - 100))?;
                // Refuses the job's next fire, which the tick writes after
                // its slot: the slot's insert is rolled back with it.
                c.execute_batch(
                    "CREATE TEMP TRIGGER refuse BEFORE UPDATE OF next_fire_at ON job_stats
                     BEGIN SELECT RAISE(ABORT, 'refused by the test'); END;",
                )?;
                Ok(())
            })
            .await
            .unwrap();
        let err = s.tick(0).await.unwrap_err();
        assert!(err.to_string().contains("refused by the test"), "{err}");
        let runs = || {
            store
                .read(|c| Ok(c.query_row("SELECT count(*) FROM runs", [], |r| r.get::<_, i64>(0))?))
        };
        assert_eq!(runs().await.unwrap(), 0);
        assert_eq!(
            counted(&metrics),
            0,
            "a slot that was rolled back was counted"
        );

        store
            .write(|c| Ok(c.execute_batch("DROP TRIGGER refuse")?))
            .await
            .unwrap();
        let tick = s.tick(0).await.unwrap();
        assert!(tick.slots_created >= 1, "{tick:?}");
        assert_eq!(runs().await.unwrap(), tick.slots_created as i64);
        assert_eq!(counted(&metrics), tick.slots_created as u64);
    }
}
