//! What the job page computes: the next fires of a schedule (via
//! [`crate::schedule::Schedule`], the same code as `GET /v1/schedule/preview`)
//! shown in the job's zone and in UTC with DST transitions marked, and the
//! bars of the run-duration chart (rendered as SVG by the template).

use super::view::{human_ms, Ts};
use crate::schedule::Schedule;
use chrono::{DateTime, LocalResult, Offset, TimeZone, Utc};
use chrono_tz::Tz;
use sundial_proto::Run;

/// A DST mark on a fire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DstMark {
    /// The clocks jump forward at this instant: a fixed time inside the
    /// skipped hour fires here, at the first instant after the gap.
    Gap,
    /// This local time occurs twice (clocks go back).
    Repeat,
}

impl DstMark {
    pub fn text(self) -> &'static str {
        match self {
            DstMark::Gap => {
                "DST gap: clocks jump forward here; a time in the skipped hour fires now"
            }
            DstMark::Repeat => "DST repeat: this local time occurs twice",
        }
    }
}

/// One upcoming fire.
#[derive(Debug, Clone)]
pub struct Fire {
    pub utc: Ts,
    /// Local time in the job's zone, with the zone abbreviation.
    pub local: String,
    pub mark: Option<DstMark>,
}

/// The DST situation of instant `ms` in `tz`.
pub fn dst_mark(tz: Tz, ms: i64) -> Option<DstMark> {
    let at = DateTime::<Utc>::from_timestamp_millis(ms)?;
    let before = DateTime::<Utc>::from_timestamp_millis(ms - 1)?;
    let off_now = tz.offset_from_utc_datetime(&at.naive_utc()).fix();
    let off_before = tz.offset_from_utc_datetime(&before.naive_utc()).fix();
    if off_now.local_minus_utc() > off_before.local_minus_utc() {
        return Some(DstMark::Gap);
    }
    let naive = at.with_timezone(&tz).naive_local();
    match tz.from_local_datetime(&naive) {
        LocalResult::Ambiguous(..) => Some(DstMark::Repeat),
        _ => None,
    }
}

/// The next `count` fires after `after` of `schedule` read in `timezone`.
pub fn next_fires(
    schedule: &str,
    timezone: &str,
    after: i64,
    count: usize,
) -> Result<Vec<Fire>, String> {
    let parsed = Schedule::parse(schedule, timezone).map_err(|e| e.to_string())?;
    let tz: Tz = timezone
        .parse()
        .map_err(|_| format!("unknown time zone {timezone:?}"))?;
    Ok(parsed
        .fires_after(after)
        .take(count)
        .map(|ms| Fire {
            utc: Ts::new(ms),
            local: DateTime::<Utc>::from_timestamp_millis(ms)
                .map(|t| {
                    t.with_timezone(&tz)
                        .format("%Y-%m-%d %H:%M:%S %Z")
                        .to_string()
                })
                .unwrap_or_default(),
            mark: dst_mark(tz, ms),
        })
        .collect())
}

/// One bar of the duration chart (SVG user units).
#[derive(Debug, Clone)]
pub struct Bar {
    pub run_id: i64,
    pub x: u32,
    pub y: u32,
    pub w: u32,
    pub h: u32,
    pub bad: bool,
    pub label: String,
}

pub const CHART_W: u32 = 720;
pub const CHART_H: u32 = 160;

/// Bars for finished runs, oldest left; height scaled to the longest.
/// Returns the bars and the longest duration's text (the scale).
pub fn duration_bars(runs_newest_first: &[Run]) -> (Vec<Bar>, String) {
    let done: Vec<(&Run, i64)> = runs_newest_first
        .iter()
        .rev()
        .filter_map(|r| Some((r, r.finished_at? - r.started_at?)))
        .collect();
    let max = done.iter().map(|(_, d)| *d).max().unwrap_or(0).max(1);
    let n = done.len().max(1) as u32;
    let slot = (CHART_W - 20) / n.max(10);
    let w = slot.saturating_sub(2).max(2);
    let bars = done
        .iter()
        .enumerate()
        .map(|(i, (r, d))| {
            let h = ((*d as f64 / max as f64) * f64::from(CHART_H - 40)).round() as u32;
            let h = h.max(1);
            Bar {
                run_id: r.id,
                x: 10 + i as u32 * slot,
                y: CHART_H - 20 - h,
                w,
                h,
                bad: !matches!(r.state, sundial_proto::RunState::Succeeded),
                label: format!("run {}: {} ({})", r.id, human_ms(*d), r.state),
            }
        })
        .collect();
    (bars, human_ms(max))
}

#[cfg(test)]
mod tests {
    use super::*;
    use sundial_proto::time::parse_rfc3339_ms;

    #[test]
    fn spring_forward_fire_is_marked_gap() {
        // Berlin, 2026-03-29: 02:00 CET → 03:00 CEST. 02:30 does not exist.
        let after = parse_rfc3339_ms("2026-03-28T12:00:00Z").unwrap();
        let fires = next_fires("0 30 2 * * *", "Europe/Berlin", after, 2).unwrap();
        assert_eq!(fires[0].utc.iso, "2026-03-29T01:00:00.000Z");
        assert_eq!(fires[0].local, "2026-03-29 03:00:00 CEST");
        assert_eq!(fires[0].mark, Some(DstMark::Gap));
        assert_eq!(fires[1].mark, None);
    }

    #[test]
    fn fall_back_fire_is_marked_repeat() {
        // Berlin, 2026-10-25: 03:00 CEST → 02:00 CET. 02:30 occurs twice; fires once.
        let after = parse_rfc3339_ms("2026-10-24T12:00:00Z").unwrap();
        let fires = next_fires("0 30 2 * * *", "Europe/Berlin", after, 2).unwrap();
        assert_eq!(fires[0].utc.iso, "2026-10-25T00:30:00.000Z");
        assert_eq!(fires[0].mark, Some(DstMark::Repeat));
        assert_eq!(fires[1].mark, None);
        // An hourly job fires in both copies of the repeated hour; both are marked.
        let fires = next_fires("0 0 * * * *", "Europe/Berlin", after, 20).unwrap();
        let repeats = fires
            .iter()
            .filter(|f| f.mark == Some(DstMark::Repeat))
            .count();
        assert_eq!(repeats, 2);
    }

    #[test]
    fn bad_schedule_is_an_error() {
        assert!(next_fires("not cron", "UTC", 0, 3).is_err());
        assert!(next_fires("@hourly", "Mars/Base", 0, 3).is_err());
    }

    #[test]
    fn bars_scale_to_the_longest() {
        // Built from JSON so the test does not depend on Run's Rust field types.
        let run = |id: i64, d: i64| -> Run {
            serde_json::from_value(serde_json::json!({
                "id": id, "job_id": "j", "scheduled_for": "1970-01-01T00:00:00Z",
                "node": null, "trigger": "manual", "attempt": 1, "state": "succeeded",
                "created_at": "1970-01-01T00:00:00Z", "started_at": "1970-01-01T00:00:00Z",
                "finished_at": sundial_proto::time::format_ms(d), "exit_code": 0,
                "output": null, "truncated": false, "error": null
            }))
            .unwrap()
        };
        let (bars, scale) = duration_bars(&[run(2, 2000), run(1, 1000)]);
        assert_eq!(scale, "2.0 s");
        assert_eq!(bars[0].run_id, 1);
        assert_eq!(bars[1].h, CHART_H - 40);
        assert_eq!(bars[0].h, (CHART_H - 40) / 2);
    }
}
