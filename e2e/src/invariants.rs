//! The chaos soak's invariant checker: pure functions over the rows read
//! back from the final database(s) and what the test observed (the windows
//! when no primary was up, the runs it saw finished through the API).
//!
//! What it asserts, per job of an every-second schedule:
//! - no slot doubled: one run per `(job, scheduled_for, node)` whatever the
//!   trigger (the UNIQUE key includes the trigger, so an on-time and a
//!   catch-up run of one instant would both fit it); a broadcast slot has
//!   exactly one run per expected node;
//! - no expected slot missing unless it fell in an outage window and the
//!   job's misfire policy drops it (`skip`: any; `run_once`: all but the
//!   newest missed fire, which follows as a catch-up slot; `run_all`: only
//!   beyond `max_catch_up`, the newest `cap` following as catch-up slots);
//!   catch-up slots only in outage windows, never under `skip`;
//! - every run finished, in a state its concurrency policy allows, with one
//!   result: one terminal event, `attempt − 1` retries, the output of its
//!   final attempt (`"<run id> <attempt>\n"`), recorded once;
//! - `forbid`: no two runs of the job overlap in `[started_at, finished_at]`;
//!   `replace`: a run still running when a later one started was asked to
//!   stop (`cancel_requested`);
//!   `allow`: overlaps are counted, not judged.
//!
//! And for the restore: every run the test saw finished more than 1 s before
//! the end is in the restored file in the same state, and every finished run
//! of the restored file is the same in the live one.

use anyhow::{Context, Result};
use std::collections::{BTreeMap, HashMap};
use std::path::Path;

/// A job's misfire policy, as the checker needs it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Misfire {
    Skip,
    RunOnce,
    RunAll { cap: usize },
}

/// A job's concurrency policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Concurrency {
    Allow,
    Forbid,
    Replace,
}

/// What one every-second job should have produced.
#[derive(Debug, Clone)]
pub struct JobExpect {
    pub id: String,
    pub misfire: Misfire,
    pub concurrency: Concurrency,
    /// When the job was created (unix ms): no slot at or before it.
    pub created_at: i64,
    /// First and last slot (unix ms, whole seconds) that must exist unless an
    /// outage and the policy allow it to be missing.
    pub first_slot: i64,
    pub last_slot: i64,
    /// No slot may be scheduled after this instant (the job was paused).
    pub no_slot_after: i64,
    /// A broadcast job: one run per node of this list for every slot.
    pub nodes: Option<Vec<String>>,
    /// `retries.max + 1`.
    pub max_attempts: u32,
}

/// One row of `runs` (joined with its job's id).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Run {
    pub id: i64,
    pub job: String,
    pub trigger: String,
    pub scheduled_for: i64,
    pub node: String,
    pub attempt: u32,
    pub state: String,
    pub started_at: Option<i64>,
    pub finished_at: Option<i64>,
    pub exit_code: Option<i64>,
    pub output: Option<String>,
    pub cancel_requested: bool,
}

/// One run event of the outbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// The outbox id: the order the events were committed in.
    pub id: i64,
    pub run_id: i64,
    pub kind: String,
}

/// An interval (unix ms, inclusive) when no primary was up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    pub from: i64,
    pub to: i64,
}

/// A run the test saw finished through the API, and when.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seen {
    pub run_id: i64,
    pub state: String,
    pub seen_at: i64,
}

/// What the checker found and how much it looked at.
#[derive(Debug, Default)]
pub struct Report {
    pub violations: Vec<String>,
    /// Expected (job, instant) slots examined.
    pub slots_checked: usize,
    pub runs_checked: usize,
    /// Expected slots missing where an outage and the policy allowed it.
    pub dropped_by_policy: usize,
    pub catch_up: usize,
    pub skipped_by_forbid: usize,
    /// Runs asked to stop because a later one started (`replace`).
    pub replaced: usize,
    pub lost: usize,
    /// Pairs of overlapping runs of `allow` jobs.
    pub overlaps_allowed: usize,
}

/// The run states a run never leaves.
pub const TERMINAL: [&str; 6] = [
    "succeeded",
    "failed",
    "timed_out",
    "lost",
    "cancelled",
    "skipped",
];

/// Whether `t` falls in an outage window, give or take `tolerance_ms`.
fn in_outage(outages: &[Window], tolerance_ms: i64, t: i64) -> bool {
    outages
        .iter()
        .any(|w| w.from - tolerance_ms <= t && t <= w.to + tolerance_ms)
}

/// Checks every job's history. `tolerance_ms` widens each outage window on
/// both sides (the test observes its edges from outside).
pub fn check(
    jobs: &[JobExpect],
    runs: &[Run],
    events: &[Event],
    outages: &[Window],
    tolerance_ms: i64,
) -> Report {
    let mut report = Report::default();
    let mut by_job: HashMap<&str, Vec<&Run>> = HashMap::new();
    for r in runs {
        by_job.entry(r.job.as_str()).or_default().push(r);
    }
    let mut by_run: HashMap<i64, Vec<&Event>> = HashMap::new();
    for e in events {
        by_run.entry(e.run_id).or_default().push(e);
    }
    for list in by_run.values_mut() {
        list.sort_by_key(|e| e.id);
    }
    for job in jobs {
        let runs = by_job.remove(job.id.as_str()).unwrap_or_default();
        check_slots(job, &runs, outages, tolerance_ms, &mut report);
        for r in &runs {
            check_run(job, r, by_run.get(&r.id).map(Vec::as_slice), &mut report);
        }
        check_concurrency(job, &runs, &by_run, &mut report);
    }
    report
}

/// Slots: none doubled, none off the second or outside the job's life,
/// none missing beyond what an outage and the misfire policy allow.
fn check_slots(
    job: &JobExpect,
    runs: &[&Run],
    outages: &[Window],
    tolerance_ms: i64,
    report: &mut Report,
) {
    let id = &job.id;
    let v = &mut report.violations;
    // instant → (node → triggers of the runs there)
    let mut slots: BTreeMap<i64, BTreeMap<&str, Vec<&str>>> = BTreeMap::new();
    for r in runs {
        if r.trigger != "schedule" && r.trigger != "catch_up" {
            v.push(format!(
                "{id}: run {} has trigger {:?}; nothing triggered it",
                r.id, r.trigger
            ));
            continue;
        }
        let t = r.scheduled_for;
        if t % 1000 != 0 {
            v.push(format!(
                "{id}: run {} scheduled off the second at {t}",
                r.id
            ));
        }
        if t <= job.created_at || t > job.no_slot_after {
            v.push(format!(
                "{id}: run {} scheduled at {t}, outside the job's life ({}, {}]",
                r.id, job.created_at, job.no_slot_after
            ));
        }
        if r.trigger == "catch_up" {
            report.catch_up += 1;
            if job.misfire == Misfire::Skip {
                v.push(format!("{id}: catch-up run {} at {t} under skip", r.id));
            }
            if !in_outage(outages, tolerance_ms, t) {
                v.push(format!(
                    "{id}: catch-up run {} at {t} outside any outage",
                    r.id
                ));
            }
        }
        slots
            .entry(t)
            .or_default()
            .entry(r.node.as_str())
            .or_default()
            .push(r.trigger.as_str());
    }
    for (t, nodes) in &slots {
        for (node, triggers) in nodes {
            if triggers.len() > 1 {
                v.push(format!(
                    "{id}: slot {t} node {node:?} doubled ({triggers:?})"
                ));
            }
        }
        let got: Vec<&str> = nodes.keys().copied().collect();
        let want: Vec<&str> = match &job.nodes {
            Some(list) => list.iter().map(String::as_str).collect(),
            None => vec![""],
        };
        if got != want {
            v.push(format!(
                "{id}: slot {t} has runs for nodes {got:?}, expected {want:?}"
            ));
        }
    }
    // Missing slots, in blocks of consecutive seconds.
    let expected: Vec<i64> = (job.first_slot..=job.last_slot).step_by(1000).collect();
    report.slots_checked += expected.len();
    let missing: Vec<i64> = expected
        .into_iter()
        .filter(|t| !slots.contains_key(t))
        .collect();
    let mut blocks: Vec<Vec<i64>> = Vec::new();
    for t in missing {
        match blocks.last_mut() {
            Some(b) if b.last() == Some(&(t - 1000)) => b.push(t),
            _ => blocks.push(vec![t]),
        }
    }
    for block in blocks {
        let (start, end) = (block[0], block[block.len() - 1]);
        let outside: Vec<i64> = block
            .iter()
            .copied()
            .filter(|&s| !in_outage(outages, tolerance_ms, s))
            .collect();
        if !outside.is_empty() {
            v.push(format!(
                "{id}: {} slot(s) missing outside any outage: {outside:?}",
                outside.len()
            ));
            continue;
        }
        // The slots the policy must have created right after the block.
        let follow = match job.misfire {
            Misfire::Skip => 0,
            Misfire::RunOnce => 1,
            Misfire::RunAll { cap } => cap as i64,
        };
        let next = end + 1000;
        let caught_up = (0..follow).all(|k| {
            slots
                .get(&(next + k * 1000))
                .is_some_and(|n| n.values().flatten().all(|tr| *tr == "catch_up"))
        });
        if caught_up {
            report.dropped_by_policy += block.len();
        } else {
            v.push(format!(
                "{id}: slots {start}..={end} missing ({}) in an outage, but {:?} requires the \
                 {follow} slot(s) from {next} to be catch-up runs",
                block.len(),
                job.misfire
            ));
        }
    }
}

/// One run: finished, in an allowed state, attempts and result consistent.
fn check_run(job: &JobExpect, r: &Run, events: Option<&[&Event]>, report: &mut Report) {
    report.runs_checked += 1;
    let id = &job.id;
    let v = &mut report.violations;
    let allowed: &[&str] = match job.concurrency {
        Concurrency::Allow => &["succeeded", "lost"],
        Concurrency::Forbid => &["succeeded", "lost", "skipped"],
        Concurrency::Replace => &["succeeded", "lost", "cancelled"],
    };
    if !allowed.contains(&r.state.as_str()) {
        v.push(format!(
            "{id}: run {} ended {:?}; {:?} allows {allowed:?}",
            r.id, r.state, job.concurrency
        ));
    }
    match r.state.as_str() {
        "lost" => report.lost += 1,
        "skipped" => report.skipped_by_forbid += 1,
        _ => {}
    }
    if r.attempt < 1 || r.attempt > job.max_attempts {
        v.push(format!(
            "{id}: run {} at attempt {} (at most {})",
            r.id, r.attempt, job.max_attempts
        ));
    }
    if TERMINAL.contains(&r.state.as_str()) && r.finished_at.is_none() {
        v.push(format!(
            "{id}: run {} is {} with no finished_at",
            r.id, r.state
        ));
    }
    if r.state == "succeeded" {
        let want = format!("{} {}\n", r.id, r.attempt);
        if r.output.as_deref() != Some(want.as_str()) || r.exit_code != Some(0) {
            v.push(format!(
                "{id}: run {} succeeded at attempt {} with output {:?} exit {:?}; expected {want:?} exit 0",
                r.id, r.attempt, r.output, r.exit_code
            ));
        }
        match (r.started_at, r.finished_at) {
            (Some(s), Some(f)) if s <= f => {}
            other => v.push(format!("{id}: run {} succeeded with times {other:?}", r.id)),
        }
    }
    let events: Vec<&str> = events
        .unwrap_or_default()
        .iter()
        .map(|e| e.kind.as_str())
        .collect();
    let count = |kind: &str| events.iter().filter(|k| **k == kind).count() as u32;
    let terminal: Vec<&&str> = events
        .iter()
        .filter(|k| {
            k.strip_prefix("run.")
                .is_some_and(|s| TERMINAL.contains(&s))
        })
        .collect();
    let want_end = format!("run.{}", r.state);
    if terminal.len() != 1 || *terminal[0] != want_end {
        v.push(format!(
            "{id}: run {} ({}) has terminal events {terminal:?}; expected exactly [{want_end:?}]",
            r.id, r.state
        ));
    }
    let retries = count("run.retrying");
    if retries + 1 != r.attempt {
        v.push(format!(
            "{id}: run {} at attempt {} has {retries} retry event(s)",
            r.id, r.attempt
        ));
    }
    let started = count("run.started");
    let ran_last = matches!(
        r.state.as_str(),
        "succeeded" | "failed" | "timed_out" | "lost"
    );
    let ok = if r.state == "skipped" {
        started == 0 && r.attempt == 1
    } else if ran_last {
        started == r.attempt
    } else {
        started + 1 == r.attempt || started == r.attempt
    };
    if !ok {
        v.push(format!(
            "{id}: run {} ({}, attempt {}) has {started} start event(s)",
            r.id, r.state, r.attempt
        ));
    }
}

/// One attempt's time as the server saw it: from its `run.started` event to
/// the run's next `run.retrying` or terminal event (event ids: the commit
/// order, which timestamps of one millisecond or daemon clocks cannot give).
struct Attempt<'a> {
    run: &'a Run,
    start: i64,
    end: i64,
    /// The run's last attempt (ended by its terminal event, or still open).
    last: bool,
}

fn attempts<'a>(run: &'a Run, events: &[&Event]) -> Vec<Attempt<'a>> {
    let mut out = Vec::new();
    let mut open: Option<i64> = None;
    for e in events {
        let ends = e.kind == "run.retrying"
            || e.kind
                .strip_prefix("run.")
                .is_some_and(|s| TERMINAL.contains(&s));
        if e.kind == "run.started" {
            open = Some(e.id);
        } else if ends {
            if let Some(start) = open.take() {
                out.push(Attempt {
                    run,
                    start,
                    end: e.id,
                    last: e.kind != "run.retrying",
                });
            }
        }
    }
    if let Some(start) = open {
        out.push(Attempt {
            run,
            start,
            end: i64::MAX,
            last: true,
        });
    }
    out
}

/// `forbid`: no attempt starts while another run's attempt runs;
/// `replace`: one that does finds the running one flagged to stop (which
/// also ends it: a flagged attempt is never retried); `allow`: counted.
fn check_concurrency(
    job: &JobExpect,
    runs: &[&Run],
    by_run: &HashMap<i64, Vec<&Event>>,
    report: &mut Report,
) {
    let mut all: Vec<Attempt> = runs
        .iter()
        .flat_map(|r| attempts(r, by_run.get(&r.id).map(Vec::as_slice).unwrap_or_default()))
        .collect();
    all.sort_by_key(|a| a.start);
    for (i, a) in all.iter().enumerate() {
        let mut overlapped = false;
        // Every attempt starting while `a` runs (another run's: a run's own
        // attempts follow one another).
        for b in all[i + 1..].iter().take_while(|b| b.start < a.end) {
            if b.run.id == a.run.id {
                continue;
            }
            overlapped = true;
            let what = format!(
                "run {} started (event {}) while run {} ran (events {}..{})",
                b.run.id, b.start, a.run.id, a.start, a.end
            );
            match job.concurrency {
                Concurrency::Allow => report.overlaps_allowed += 1,
                Concurrency::Forbid => report
                    .violations
                    .push(format!("{}: forbid, but {what}", job.id)),
                Concurrency::Replace if !(a.last && a.run.cancel_requested) => {
                    report.violations.push(format!(
                        "{}: replace, but {what} and was not asked to stop (final attempt: {}, {})",
                        job.id, a.last, a.run.state
                    ))
                }
                Concurrency::Replace => {}
            }
        }
        if overlapped && job.concurrency == Concurrency::Replace {
            report.replaced += 1;
        }
    }
}

/// The restore against what was acknowledged and against the live history:
/// returns the violations and how many acknowledged runs were required.
pub fn check_restored(
    seen: &[Seen],
    restored: &[Run],
    live: &[Run],
    end: i64,
) -> (Vec<String>, usize) {
    let restored: HashMap<i64, &Run> = restored.iter().map(|r| (r.id, r)).collect();
    let live_by_id: HashMap<i64, &Run> = live.iter().map(|r| (r.id, r)).collect();
    let mut v = Vec::new();
    let mut required = 0;
    for s in seen {
        match live_by_id.get(&s.run_id) {
            Some(r) if r.state == s.state => {}
            other => v.push(format!(
                "run {} was seen {} but the live database has {:?}",
                s.run_id,
                s.state,
                other.map(|r| &r.state)
            )),
        }
        if s.seen_at < end - 1000 {
            required += 1;
            match restored.get(&s.run_id) {
                Some(r) if r.state == s.state => {}
                other => v.push(format!(
                    "run {} seen {} at {} (end {end}) is {:?} in the restore",
                    s.run_id,
                    s.state,
                    s.seen_at,
                    other.map(|r| &r.state)
                )),
            }
        }
    }
    for r in restored.values() {
        if !TERMINAL.contains(&r.state.as_str()) {
            continue;
        }
        if live_by_id.get(&r.id).copied() != Some(*r) {
            v.push(format!(
                "restored finished run {} differs from the live one: {r:?} vs {:?}",
                r.id,
                live_by_id.get(&r.id)
            ));
        }
    }
    (v, required)
}

fn open(db: &Path) -> Result<rusqlite::Connection> {
    rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
        .with_context(|| format!("opening {}", db.display()))
}

/// Every run of the database at `db`, oldest first.
pub fn read_runs(db: &Path) -> Result<Vec<Run>> {
    let conn = open(db)?;
    let mut stmt = conn.prepare(
        "SELECT r.id, j.id, r.trigger, r.scheduled_for, r.node, r.attempt, r.state,
                r.started_at, r.finished_at, r.exit_code, r.output, r.cancel_requested
         FROM runs r JOIN jobs j ON j.pk = r.job ORDER BY r.id",
    )?;
    let rows = stmt.query_map([], |r| {
        Ok(Run {
            id: r.get(0)?,
            job: r.get(1)?,
            trigger: r.get(2)?,
            scheduled_for: r.get(3)?,
            node: r.get(4)?,
            attempt: r.get(5)?,
            state: r.get(6)?,
            started_at: r.get(7)?,
            finished_at: r.get(8)?,
            exit_code: r.get(9)?,
            output: r.get(10)?,
            cancel_requested: r.get(11)?,
        })
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// Every run event of the outbox at `db`, oldest first.
pub fn read_events(db: &Path) -> Result<Vec<Event>> {
    let conn = open(db)?;
    let mut stmt =
        conn.prepare("SELECT id, run_id, type FROM events WHERE run_id IS NOT NULL ORDER BY id")?;
    let rows = stmt.query_map([], |r| {
        Ok(Event {
            id: r.get(0)?,
            run_id: r.get(1)?,
            kind: r.get(2)?,
        })
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// When each job was created (unix ms), by id.
pub fn read_job_created(db: &Path) -> Result<HashMap<String, i64>> {
    let conn = open(db)?;
    let mut stmt = conn.prepare("SELECT id, created_at FROM jobs")?;
    let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
    Ok(rows.collect::<Result<_, _>>()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: i64 = 1000;

    fn job(misfire: Misfire, concurrency: Concurrency) -> JobExpect {
        JobExpect {
            id: "j".into(),
            misfire,
            concurrency,
            created_at: 99 * S + 500,
            first_slot: 100 * S,
            last_slot: 109 * S,
            no_slot_after: 111 * S,
            nodes: None,
            max_attempts: 3,
        }
    }

    /// A clean history: one succeeded run per second 100..=109 with its
    /// events; `skip` lists seconds left out, `catch_up` seconds created late.
    fn history(skip: &[i64], catch_up: &[i64]) -> (Vec<Run>, Vec<Event>) {
        let mut runs = Vec::new();
        let mut events = Vec::new();
        for sec in 100..110 {
            if skip.contains(&sec) {
                continue;
            }
            let id = sec;
            runs.push(Run {
                id,
                job: "j".into(),
                trigger: if catch_up.contains(&sec) {
                    "catch_up"
                } else {
                    "schedule"
                }
                .into(),
                scheduled_for: sec * S,
                node: String::new(),
                attempt: 1,
                state: "succeeded".into(),
                started_at: Some(sec * S + 10),
                finished_at: Some(sec * S + 500),
                exit_code: Some(0),
                output: Some(format!("{id} 1\n")),
                cancel_requested: false,
            });
            // Started and finished within its second (event ids in commit order).
            events.push(ev(sec * 10, id, "run.started"));
            events.push(ev(sec * 10 + 5, id, "run.succeeded"));
        }
        (runs, events)
    }

    fn ev(id: i64, run_id: i64, kind: &str) -> Event {
        Event {
            id,
            run_id,
            kind: kind.into(),
        }
    }

    fn violations_of(
        j: &JobExpect,
        runs: &[Run],
        events: &[Event],
        outages: &[Window],
    ) -> Vec<String> {
        check(std::slice::from_ref(j), runs, events, outages, 0).violations
    }

    fn report(
        misfire: Misfire,
        concurrency: Concurrency,
        runs: &[Run],
        events: &[Event],
        outages: &[Window],
    ) -> Report {
        check(&[job(misfire, concurrency)], runs, events, outages, 0)
    }

    fn violations(
        misfire: Misfire,
        concurrency: Concurrency,
        runs: &[Run],
        events: &[Event],
        outages: &[Window],
    ) -> Vec<String> {
        report(misfire, concurrency, runs, events, outages).violations
    }

    #[test]
    fn a_clean_history_passes_and_is_counted() {
        let (runs, events) = history(&[], &[]);
        let r = report(Misfire::Skip, Concurrency::Forbid, &runs, &events, &[]);
        assert!(r.violations.is_empty(), "{:?}", r.violations);
        assert_eq!(r.slots_checked, 10);
        assert_eq!(r.runs_checked, 10);
    }

    #[test]
    fn a_doubled_slot_is_detected() {
        let (mut runs, mut events) = history(&[], &[]);
        let mut twin = runs[3].clone();
        twin.id = 500;
        twin.trigger = "catch_up".into();
        twin.output = Some("500 1\n".into());
        twin.started_at = twin.finished_at; // no overlap: only the doubling is wrong
        runs.push(twin);
        events.push(ev(1036, 500, "run.started"));
        events.push(ev(1037, 500, "run.succeeded"));
        let outage = [Window {
            from: 0,
            to: i64::MAX,
        }];
        let v = violations(
            Misfire::RunAll { cap: 10 },
            Concurrency::Allow,
            &runs,
            &events,
            &outage,
        );
        assert_eq!(v.len(), 1, "{v:?}");
        assert!(v[0].contains("slot 103000 node \"\" doubled"), "{v:?}");
    }

    #[test]
    fn a_missing_slot_is_detected_outside_outages_and_allowed_by_skip_inside() {
        let (runs, events) = history(&[104], &[]);
        let j = job(Misfire::Skip, Concurrency::Allow);
        let v = violations_of(&j, &runs, &events, &[]);
        assert_eq!(v.len(), 1, "{v:?}");
        assert!(
            v[0].contains("missing outside any outage: [104000]"),
            "{v:?}"
        );
        let outage = [Window {
            from: 103_500,
            to: 104_500,
        }];
        assert!(violations_of(&j, &runs, &events, &outage).is_empty());
    }

    #[test]
    fn run_once_and_run_all_must_follow_a_gap_with_catch_up() {
        let outage = [Window {
            from: 103_500,
            to: 107_500,
        }];
        // run_once: 104..=105 dropped, 106 the catch-up.
        let (runs, events) = history(&[104, 105], &[106]);
        assert!(violations(
            Misfire::RunOnce,
            Concurrency::Allow,
            &runs,
            &events,
            &outage
        )
        .is_empty());
        // The same gap with no catch-up after it.
        let (runs, events) = history(&[104, 105], &[]);
        let v = violations(
            Misfire::RunOnce,
            Concurrency::Allow,
            &runs,
            &events,
            &outage,
        );
        assert!(
            v.iter()
                .any(|m| m.contains("must") || m.contains("requires")),
            "{v:?}"
        );
        // run_all, cap 2: one catch-up is not enough.
        let (runs, events) = history(&[104], &[105]);
        let v = violations(
            Misfire::RunAll { cap: 2 },
            Concurrency::Allow,
            &runs,
            &events,
            &outage,
        );
        assert_eq!(v.len(), 1, "{v:?}");
        let (runs, events) = history(&[104], &[105, 106]);
        assert!(violations(
            Misfire::RunAll { cap: 2 },
            Concurrency::Allow,
            &runs,
            &events,
            &outage
        )
        .is_empty());
        // skip never catches up.
        let v = violations(Misfire::Skip, Concurrency::Allow, &runs, &events, &outage);
        assert_eq!(v.len(), 2, "{v:?}");
    }

    #[test]
    fn forbid_overlap_and_unflagged_replace_are_detected() {
        let (mut runs, mut events) = history(&[], &[]);
        // Run 102 ends (event 1035) after run 103 started (event 1030): in
        // commit order, whatever the timestamps say.
        events.retain(|e| e.id != 1025);
        events.push(ev(1035, 102, "run.succeeded"));
        let v = violations(Misfire::Skip, Concurrency::Forbid, &runs, &events, &[]);
        assert_eq!(v.len(), 1, "{v:?}");
        assert!(
            v[0].contains("run 103 started (event 1030) while run 102 ran"),
            "{v:?}"
        );
        let v = violations(Misfire::Skip, Concurrency::Replace, &runs, &events, &[]);
        assert_eq!(v.len(), 1, "{v:?}");
        runs[2].cancel_requested = true;
        let r = report(Misfire::Skip, Concurrency::Replace, &runs, &events, &[]);
        assert!(r.violations.is_empty(), "{:?}", r.violations);
        assert_eq!(r.replaced, 1);
        let r = report(Misfire::Skip, Concurrency::Allow, &runs, &events, &[]);
        assert_eq!(r.overlaps_allowed, 1);
    }

    #[test]
    fn an_overlap_with_an_earlier_attempt_counts_too() {
        // Run 102: attempt 1 (events 1020..1022 retrying) overlaps run 103's
        // start only if 103 starts inside it; here 103 starts at 1021.
        let (mut runs, mut events) = history(&[], &[]);
        runs[2].attempt = 2;
        runs[2].output = Some("102 2\n".into());
        events.retain(|e| e.run_id != 103);
        events.push(ev(1021, 103, "run.started"));
        events.push(ev(1022, 102, "run.retrying"));
        events.push(ev(1023, 103, "run.succeeded"));
        events.push(ev(1024, 102, "run.started"));
        let v = violations(Misfire::Skip, Concurrency::Forbid, &runs, &events, &[]);
        assert_eq!(v.len(), 1, "{v:?}");
        assert!(v[0].contains("events 1020..1022"), "{v:?}");
        // Under replace, a flagged run is never retried: the same history is wrong.
        runs[2].cancel_requested = true;
        let v = violations(Misfire::Skip, Concurrency::Replace, &runs, &events, &[]);
        assert_eq!(v.len(), 1, "{v:?}");
    }

    #[test]
    fn a_result_recorded_twice_or_for_another_attempt_is_detected() {
        let (mut runs, mut events) = history(&[], &[]);
        events.push(ev(1057, 105, "run.succeeded"));
        runs[7].output = Some("107 1\n107 1\n".into());
        let v = violations(Misfire::Skip, Concurrency::Allow, &runs, &events, &[]);
        assert_eq!(v.len(), 2, "{v:?}");
        assert!(v
            .iter()
            .any(|m| m.contains("run 105") && m.contains("terminal events")));
        assert!(v
            .iter()
            .any(|m| m.contains("run 107") && m.contains("output")));
        // A retry without its event: attempts inconsistent.
        let (mut runs, events) = history(&[], &[]);
        runs[0].attempt = 2;
        runs[0].output = Some("100 2\n".into());
        let v = violations(Misfire::Skip, Concurrency::Allow, &runs, &events, &[]);
        assert!(v.iter().any(|m| m.contains("retry event")), "{v:?}");
    }

    #[test]
    fn broadcast_slots_need_one_run_per_node() {
        let (mut runs, mut events) = history(&[], &[]);
        let mut j = job(Misfire::Skip, Concurrency::Allow);
        j.nodes = Some(vec!["n1".into(), "n2".into()]);
        for r in runs.iter_mut() {
            r.node = "n1".into();
        }
        let extra: Vec<Run> = runs
            .iter()
            .map(|r| Run {
                id: r.id + 1000,
                node: "n2".into(),
                output: Some(format!("{} 1\n", r.id + 1000)),
                ..r.clone()
            })
            .collect();
        for r in &extra {
            let sec = r.id - 1000;
            events.push(ev(sec * 10 + 1, r.id, "run.started"));
            events.push(ev(sec * 10 + 6, r.id, "run.succeeded"));
        }
        let mut all = runs.clone();
        all.extend(extra.iter().cloned());
        assert!(violations_of(&j, &all, &events, &[]).is_empty());
        let v = violations_of(&j, &runs, &events, &[]);
        assert_eq!(v.len(), 10, "{v:?}");
    }

    #[test]
    fn the_restore_must_hold_what_was_acknowledged_before_the_end() {
        let (live, _) = history(&[], &[]);
        let restored: Vec<Run> = live[..5].to_vec();
        let seen = |id: i64, at: i64| Seen {
            run_id: id,
            state: "succeeded".into(),
            seen_at: at,
        };
        let end = 200 * S;
        // Seen long before the end but not restored: a violation.
        let (v, required) = check_restored(
            &[seen(100, 150 * S), seen(107, 150 * S)],
            &restored,
            &live,
            end,
        );
        assert_eq!(required, 2);
        assert_eq!(v.len(), 1, "{v:?}");
        assert!(v[0].contains("run 107"), "{v:?}");
        // Seen within the last second: not required.
        let (v, required) = check_restored(&[seen(107, end - 500)], &restored, &live, end);
        assert_eq!((v.len(), required), (0, 0));
        // A restored finished run that differs from the live one.
        let mut bad = restored.clone();
        bad[1].output = Some("other\n".into());
        let (v, _) = check_restored(&[], &bad, &live, end);
        assert_eq!(v.len(), 1, "{v:?}");
    }
}
