//! Pins Sundial's schedule semantics, DST rules first, with exact instants.

use super::*;
use proptest::prelude::*;

fn ms(rfc3339: &str) -> i64 {
    DateTime::parse_from_rfc3339(rfc3339)
        .unwrap()
        .timestamp_millis()
}

fn iso(ms: i64) -> String {
    DateTime::<Utc>::from_timestamp_millis(ms)
        .unwrap()
        .format("%Y-%m-%dT%H:%M:%SZ")
        .to_string()
}

/// Fires in [start, end) as UTC strings.
fn fires(expr: &str, tz: &str, start: &str, end: &str) -> Vec<String> {
    let s = Schedule::parse(expr, tz).unwrap();
    let (start, end) = (ms(start), ms(end));
    s.fires_after(start - 1)
        .take_while(|t| *t < end)
        .take(10_000)
        .map(iso)
        .collect()
}

// Local days as UTC ranges (checked against chrono-tz in `day_bounds_are_right`).
const NY_SPRING: (&str, &str) = ("2026-03-08T05:00:00Z", "2026-03-09T04:00:00Z"); // 23 h
const NY_FALL: (&str, &str) = ("2026-11-01T04:00:00Z", "2026-11-02T05:00:00Z"); // 25 h
const LON_SPRING: (&str, &str) = ("2026-03-29T00:00:00Z", "2026-03-29T23:00:00Z"); // 23 h
const LON_FALL: (&str, &str) = ("2026-10-24T23:00:00Z", "2026-10-26T00:00:00Z"); // 25 h
const LH_FALL: (&str, &str) = ("2026-04-04T13:00:00Z", "2026-04-05T13:30:00Z"); // 24.5 h
const LH_SPRING: (&str, &str) = ("2026-10-03T13:30:00Z", "2026-10-04T13:00:00Z"); // 23.5 h

#[test]
fn day_bounds_are_right() {
    let check = |tz: &str, day: (&str, &str), local_start: &str, local_end: &str| {
        let tz: Tz = tz.parse().unwrap();
        let at = |t: &str| {
            DateTime::<Utc>::from_timestamp_millis(ms(t))
                .unwrap()
                .with_timezone(&tz)
                .format("%Y-%m-%d %H:%M")
                .to_string()
        };
        assert_eq!(at(day.0), local_start);
        assert_eq!(at(day.1), local_end);
    };
    check(
        "America/New_York",
        NY_SPRING,
        "2026-03-08 00:00",
        "2026-03-09 00:00",
    );
    check(
        "America/New_York",
        NY_FALL,
        "2026-11-01 00:00",
        "2026-11-02 00:00",
    );
    check(
        "Europe/London",
        LON_SPRING,
        "2026-03-29 00:00",
        "2026-03-30 00:00",
    );
    check(
        "Europe/London",
        LON_FALL,
        "2026-10-25 00:00",
        "2026-10-26 00:00",
    );
    check(
        "Australia/Lord_Howe",
        LH_FALL,
        "2026-04-05 00:00",
        "2026-04-06 00:00",
    );
    check(
        "Australia/Lord_Howe",
        LH_SPRING,
        "2026-10-04 00:00",
        "2026-10-05 00:00",
    );
    // Lord Howe shifts by 30 minutes: +11:00 in summer, +10:30 in winter.
    let lh: Tz = "Australia/Lord_Howe".parse().unwrap();
    let off = |t: &str| {
        lh.offset_from_utc_datetime(
            &DateTime::<Utc>::from_timestamp_millis(ms(t))
                .unwrap()
                .naive_utc(),
        )
        .fix()
        .local_minus_utc()
    };
    assert_eq!(off("2026-04-04T14:59:00Z"), 11 * 3600);
    assert_eq!(off("2026-04-04T15:00:00Z"), 10 * 3600 + 1800);
    assert_eq!(off("2026-10-03T15:29:00Z"), 10 * 3600 + 1800);
    assert_eq!(off("2026-10-03T15:30:00Z"), 11 * 3600);
}

// Rule 3: hour field `*` or `*/n` follows elapsed time.
#[test]
fn hourly_follows_elapsed_time_across_dst() {
    let ny = "America/New_York";
    assert_eq!(fires("0 * * * *", ny, NY_SPRING.0, NY_SPRING.1).len(), 23);
    let fall = fires("0 * * * *", ny, NY_FALL.0, NY_FALL.1);
    assert_eq!(fall.len(), 25);
    // The repeated 01:00 fires twice: 01:00 EDT and 01:00 EST.
    assert!(fall.contains(&"2026-11-01T05:00:00Z".to_string()));
    assert!(fall.contains(&"2026-11-01T06:00:00Z".to_string()));
    // Spring: 01:00 EST, then 03:00 EDT one hour of elapsed time later.
    let spring = fires("0 * * * *", ny, NY_SPRING.0, NY_SPRING.1);
    assert_eq!(
        spring[1..3],
        ["2026-03-08T06:00:00Z", "2026-03-08T07:00:00Z"]
    );
    assert_eq!(fires("@hourly", ny, NY_FALL.0, NY_FALL.1).len(), 25);
    assert_eq!(
        fires("*/15 * * * *", ny, NY_SPRING.0, NY_SPRING.1).len(),
        92
    );
    assert_eq!(fires("*/15 * * * *", ny, NY_FALL.0, NY_FALL.1).len(), 100);
    // Even wall-clock hours in the offset in force: the repeated 01:00 hour is
    // odd, so a two-hourly job still fires 12 times (00:00 EDT, then 02:00 EST
    // three elapsed hours later).
    let two_hourly = fires("0 0 */2 * * *", ny, NY_FALL.0, NY_FALL.1);
    assert_eq!(two_hourly.len(), 12);
    assert_eq!(
        two_hourly[..2],
        ["2026-11-01T04:00:00Z", "2026-11-01T07:00:00Z"]
    );

    let lon = "Europe/London";
    assert_eq!(
        fires("0 * * * *", lon, LON_SPRING.0, LON_SPRING.1).len(),
        23
    );
    assert_eq!(fires("0 * * * *", lon, LON_FALL.0, LON_FALL.1).len(), 25);
    assert_eq!(
        fires("*/15 * * * *", lon, LON_FALL.0, LON_FALL.1).len(),
        100
    );
}

#[test]
fn lord_howe_thirty_minute_shift() {
    let lh = "Australia/Lord_Howe";
    // Fall back 02:00 LHDT → 01:30 LHST: the day is 24.5 h. The repeated half
    // hour holds no :00, so an hourly job fires 24 times, once per wall hour,
    // and the second run of 01:30–02:00 adds two quarter-hours.
    let hourly = fires("0 * * * *", lh, LH_FALL.0, LH_FALL.1);
    assert_eq!(hourly.len(), 24);
    // 01:00 LHDT, then 02:00 LHST 1.5 h of elapsed time later.
    assert!(hourly.contains(&"2026-04-04T14:00:00Z".to_string()));
    assert!(hourly.contains(&"2026-04-04T15:30:00Z".to_string()));
    assert_eq!(fires("*/15 * * * *", lh, LH_FALL.0, LH_FALL.1).len(), 98);
    // Spring forward 02:00 LHST → 02:30 LHDT: 02:00 never happens; 23 fires.
    let spring = fires("0 * * * *", lh, LH_SPRING.0, LH_SPRING.1);
    assert_eq!(spring.len(), 23);
    assert!(spring.contains(&"2026-10-03T14:30:00Z".to_string())); // 01:00 LHST
    assert!(spring.contains(&"2026-10-03T16:00:00Z".to_string())); // 03:00 LHDT
    assert_eq!(
        fires("*/15 * * * *", lh, LH_SPRING.0, LH_SPRING.1).len(),
        94
    );
    // Rule 1 on a 30-minute gap: 02:15 does not exist → 02:30 LHDT.
    assert_eq!(
        fires("15 2 * * *", lh, LH_SPRING.0, LH_SPRING.1),
        ["2026-10-03T15:30:00Z"]
    );
    // Rule 2: 01:45 happens twice → first occurrence only (01:45 LHDT).
    assert_eq!(
        fires("45 1 * * *", lh, LH_FALL.0, LH_FALL.1),
        ["2026-04-04T14:45:00Z"]
    );
}

// Rule 1: a fixed local time in the gap fires once, at the first instant after it.
#[test]
fn nonexistent_fixed_time_fires_after_the_gap() {
    let ny = "America/New_York";
    assert_eq!(
        fires("30 2 * * *", ny, NY_SPRING.0, NY_SPRING.1),
        ["2026-03-08T07:00:00Z"]
    );
    assert_eq!(
        fires("0 30 2 * * *", ny, NY_SPRING.0, NY_SPRING.1),
        ["2026-03-08T07:00:00Z"]
    );
    // Normal days keep their time.
    assert_eq!(
        fires(
            "30 2 * * *",
            ny,
            "2026-03-09T04:00:00Z",
            "2026-03-10T04:00:00Z"
        ),
        ["2026-03-09T06:30:00Z"]
    );
    let lon = "Europe/London";
    assert_eq!(
        fires("30 1 * * *", lon, LON_SPRING.0, LON_SPRING.1),
        ["2026-03-29T01:00:00Z"]
    );
}

// Rule 1 over a whole skipped day: Samoa went from 2011-12-29 24:00 (UTC-10)
// to 2011-12-31 00:00 (UTC+14). The 30th's noon fires when the 31st begins,
// and the schedule goes on (it once found no next fire at all).
#[test]
fn a_skipped_calendar_day_fires_after_it_and_goes_on() {
    assert_eq!(
        fires(
            "0 12 * * *",
            "Pacific/Apia",
            "2011-12-28T00:00:00Z",
            "2012-01-01T00:00:00Z"
        ),
        [
            "2011-12-28T22:00:00Z", // 28th noon, UTC-10
            "2011-12-29T22:00:00Z", // 29th noon, UTC-10
            "2011-12-30T10:00:00Z", // the 30th's noon: 31st 00:00, UTC+14
            "2011-12-30T22:00:00Z", // 31st noon, UTC+14
            "2011-12-31T22:00:00Z", // 2012-01-01 noon
        ]
    );
    // Kwajalein skipped 1993-08-21 (UTC-12 to UTC+12): its midnight
    // collapses into the 22nd's, 12:00Z on the 21st, as each local
    // midnight before was 12:00Z the same day.
    let kwaj = fires(
        "0 0 * * *",
        "Pacific/Kwajalein",
        "1993-08-18T00:00:00Z",
        "1993-08-25T00:00:00Z",
    );
    let days: Vec<String> = (18..=24)
        .map(|d| format!("1993-08-{d}T12:00:00Z"))
        .collect();
    assert_eq!(kwaj, days);
}

// Rule 2: a fixed local time that occurs twice fires once, at the first occurrence.
#[test]
fn ambiguous_fixed_time_fires_once_first() {
    let ny = "America/New_York";
    assert_eq!(
        fires("30 1 * * *", ny, NY_FALL.0, NY_FALL.1),
        ["2026-11-01T05:30:00Z"]
    );
    // Asking from inside the repeated hour does not fire the second occurrence.
    let s = Schedule::parse("30 1 * * *", ny).unwrap();
    assert_eq!(
        iso(s.next_after(ms("2026-11-01T06:10:00Z")).unwrap()),
        "2026-11-02T06:30:00Z"
    );
    assert_eq!(
        fires("30 2 * * *", ny, NY_FALL.0, NY_FALL.1),
        ["2026-11-01T07:30:00Z"]
    );
    let lon = "Europe/London";
    assert_eq!(
        fires("30 1 * * *", lon, LON_FALL.0, LON_FALL.1),
        ["2026-10-25T00:30:00Z"]
    );
}

// Rule 4: several nonexistent times collapse into one fire.
#[test]
fn nonexistent_times_collapse() {
    let ny = "America/New_York";
    assert_eq!(
        fires("0,30 2 * * *", ny, NY_SPRING.0, NY_SPRING.1),
        ["2026-03-08T07:00:00Z"]
    );
    assert_eq!(
        fires("*/10 2 * * *", ny, NY_SPRING.0, NY_SPRING.1),
        ["2026-03-08T07:00:00Z"]
    );
    assert_eq!(
        fires("0,30 2,4 * * *", ny, NY_SPRING.0, NY_SPRING.1).len(),
        3
    );
}

#[test]
fn every_second_on_the_second() {
    let s = Schedule::parse("*/1 * * * * *", "UTC").unwrap();
    let got: Vec<i64> = s.fires_after(1_000_500).take(5).collect();
    assert_eq!(got, [1_001_000, 1_002_000, 1_003_000, 1_004_000, 1_005_000]);
    assert_eq!(s.next_after(1_001_000), Some(1_002_000));
}

#[test]
fn ordinary_schedules() {
    let berlin = Schedule::parse("0 30 2 * * *", "Europe/Berlin").unwrap();
    assert_eq!(
        iso(berlin.next_after(ms("2026-11-24T00:00:00Z")).unwrap()),
        "2026-11-24T01:30:00Z"
    );
    assert_eq!(
        iso(berlin.next_after(ms("2026-07-01T00:00:00Z")).unwrap()),
        "2026-07-01T00:30:00Z"
    );
    let daily = Schedule::parse("@daily", "UTC").unwrap();
    assert_eq!(
        iso(daily.next_after(ms("2026-11-24T10:00:00Z")).unwrap()),
        "2026-11-25T00:00:00Z"
    );
    for midnight in ["@midnight", "@MIDNIGHT"] {
        let m = Schedule::parse(midnight, "UTC").unwrap();
        assert_eq!(
            iso(m.next_after(ms("2026-11-24T10:00:00Z")).unwrap()),
            "2026-11-25T00:00:00Z",
            "{midnight} is @daily"
        );
    }
    let weekly = Schedule::parse("@weekly", "UTC").unwrap();
    assert_eq!(
        iso(weekly.next_after(ms("2026-11-24T10:00:00Z")).unwrap()),
        "2026-11-29T00:00:00Z"
    );
    let yearly = Schedule::parse("@yearly", "Asia/Tokyo").unwrap();
    assert_eq!(
        iso(yearly.next_after(ms("2026-11-24T10:00:00Z")).unwrap()),
        "2026-12-31T15:00:00Z"
    );
    let monthly = Schedule::parse("@monthly", "UTC").unwrap();
    assert_eq!(
        iso(monthly.next_after(ms("2026-11-24T10:00:00Z")).unwrap()),
        "2026-12-01T00:00:00Z"
    );
    let names = Schedule::parse("0 9 * JAN MON", "UTC").unwrap();
    assert_eq!(
        iso(names.next_after(ms("2026-11-24T10:00:00Z")).unwrap()),
        "2027-01-04T09:00:00Z"
    );
    // Classic cron: day-of-month OR day-of-week when both are restricted.
    let either = Schedule::parse("0 0 13 * FRI", "UTC").unwrap();
    let next: Vec<String> = either
        .fires_after(ms("2026-11-24T00:00:00Z"))
        .take(3)
        .map(iso)
        .collect();
    assert_eq!(
        next,
        [
            "2026-11-27T00:00:00Z",
            "2026-12-04T00:00:00Z",
            "2026-12-11T00:00:00Z"
        ]
    );
    let more: Vec<String> = either
        .fires_after(ms("2026-12-11T00:00:00Z"))
        .take(2)
        .map(iso)
        .collect();
    assert_eq!(more, ["2026-12-13T00:00:00Z", "2026-12-18T00:00:00Z"]);
}

#[test]
fn every_and_at() {
    let e = Schedule::parse("@every 30s", "Europe/Berlin").unwrap();
    assert_eq!(
        e.next_after(ms("2026-11-24T10:00:10Z")),
        Some(ms("2026-11-24T10:00:30Z"))
    );
    assert_eq!(
        e.next_after(ms("2026-11-24T10:00:30Z")),
        Some(ms("2026-11-24T10:01:00Z"))
    );
    let seven = Schedule::parse("@every 7s", "UTC").unwrap();
    assert_eq!(seven.next_after(0), Some(7000));
    assert_eq!(seven.next_after(6999), Some(7000));
    assert_eq!(seven.next_after(7000), Some(14000));
    let long = Schedule::parse("@every 1h30m", "UTC").unwrap();
    assert_eq!(long.next_after(0), Some(5_400_000));
    let at = Schedule::parse("@at 2027-01-01T00:00:00Z", "UTC").unwrap();
    assert!(at.is_one_shot());
    assert_eq!(
        at.next_after(ms("2026-12-31T23:59:59Z")),
        Some(ms("2027-01-01T00:00:00Z"))
    );
    assert_eq!(at.next_after(ms("2027-01-01T00:00:00Z")), None);
    let offset = Schedule::parse("@at 2027-01-01T01:00:00+01:00", "UTC").unwrap();
    assert_eq!(offset.next_after(0), Some(ms("2027-01-01T00:00:00Z")));
}

/// No schedule yields an instant the API cannot write (past the year 9999):
/// `@every` is capped at 100 years, and fires past 9999 are "never again".
#[test]
fn fires_stay_within_rfc3339_years() {
    let century = Schedule::parse("@every 36500d", "UTC").unwrap();
    let next = century.next_after(ms("2026-11-27T00:00:00Z")).unwrap();
    assert_eq!(iso(next), "2069-12-07T00:00:00Z");
    assert_eq!(century.next_after(ms("9999-01-01T00:00:00Z")), None);
    let err = Schedule::parse("@every 999ms", "UTC").unwrap_err();
    assert!(err.to_string().contains("at least 1s"), "{err}");
    assert!(Schedule::parse("@every 1500ms", "UTC").is_ok());
    let err = Schedule::parse("@every 3000000d", "UTC").unwrap_err();
    assert!(err.to_string().contains("at most 36500d"), "{err}");
    let last = Schedule::parse("@at 9999-12-31T23:59:59.999Z", "UTC").unwrap();
    assert_eq!(
        last.next_after(0),
        Some(sundial_proto::time::LAST_INSTANT_MS)
    );
    let yearly = Schedule::parse("@yearly", "UTC").unwrap();
    assert_eq!(yearly.next_after(ms("9999-06-01T00:00:00Z")), None);
}

#[test]
fn errors_name_the_field() {
    for bad in [
        "61 * * * *",
        "* * *",
        "",
        "   ",
        "0 0 0 * * * 2027",
        "* 25 * * *",
        "@reboot",
        "@every 0s",
        "@every -5s",
        "@every soon",
        "@at yesterday",
        "0 0 30 2 *",
        "hello world",
    ] {
        let err = Schedule::parse(bad, "UTC").unwrap_err();
        assert_eq!(err.field(), "schedule", "{bad}");
        assert!(err.to_string().contains("invalid schedule"), "{bad}: {err}");
    }
    let err = Schedule::parse("@hourly", "Mars/Olympus").unwrap_err();
    assert_eq!(err.field(), "timezone");
    assert!(err.to_string().contains("Mars/Olympus"));
    let err = Schedule::parse("61 * * * *", "UTC")
        .unwrap_err()
        .to_string();
    assert!(err.contains("61 * * * *"), "{err}");
}

#[test]
fn input_is_held_to_each_field_and_taken_as_written() {
    // Accepted by the stored-job parser, refused as input, naming the field.
    for (bad, why) in [
        ("*/61 * * * *", "minute: step 61"),
        (
            "1,2,,3 * * * *",
            "minute: \"1,2,,3\" has an empty list element",
        ),
        ("0 24 * * *", "hour: 24 is out of range 0–23"),
        (" 0 0 * * * ", "remove the spaces before or after it"),
    ] {
        let err = Schedule::parse_input(bad, "UTC").unwrap_err();
        assert_eq!(err.field(), "schedule", "{bad}");
        assert!(err.to_string().contains(why), "{bad}: {err}");
    }
    assert!(
        Schedule::parse("*/61 * * * *", "UTC").is_ok(),
        "a stored job stays readable"
    );
    let err = Schedule::parse_input("@daily", "America/New_York ").unwrap_err();
    assert_eq!(err.field(), "timezone");
    // The documented extensions and the day fields' OR.
    for ok in [
        "0 0 L * *",
        "0 0 * * 5L",
        "0 0 15W * *",
        "0 0 * * 5#2",
        "0 0 ? * MON",
    ] {
        assert!(Schedule::parse_input(ok, "UTC").is_ok(), "{ok}");
    }
    assert_eq!(
        fires(
            "0 0 */5 * MON",
            "UTC",
            "2026-06-01T00:00:00Z",
            "2026-06-12T00:00:00Z"
        ),
        [
            "2026-06-01T00:00:00Z", // day 1, a Monday
            "2026-06-06T00:00:00Z", // day 6
            "2026-06-08T00:00:00Z", // a Monday
            "2026-06-11T00:00:00Z", // day 11
        ]
    );
    // The second Friday, the last Friday, the weekday nearest the 15th.
    let first = |expr: &str| {
        iso(Schedule::parse_input(expr, "UTC")
            .unwrap()
            .next_after(ms("2026-05-31T00:00:00Z"))
            .unwrap())
    };
    assert_eq!(first("0 0 * * 5#2"), "2026-06-12T00:00:00Z");
    assert_eq!(first("0 0 * * 5L"), "2026-06-26T00:00:00Z");
    assert_eq!(first("0 0 15W * *"), "2026-06-15T00:00:00Z");
}

const EXPRS: &[&str] = &[
    "*/1 * * * * *",
    "0 * * * *",
    "*/15 * * * *",
    "30 2 * * *",
    "30 1 * * *",
    "0,30 2 * * *",
    "0 30 2 * * *",
    "15 9-17 * * MON-FRI",
    "0 0 1 * *",
    "@hourly",
    "@daily",
    "@every 45s",
    "7 */3 * * *",
];
const ZONES: &[&str] = &[
    "UTC",
    "America/New_York",
    "Europe/London",
    "Europe/Berlin",
    "Australia/Lord_Howe",
    "Asia/Kolkata",
    "America/Santiago",
    "Pacific/Chatham",
];

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]
    #[test]
    fn next_after_is_strictly_later_monotone_and_matches_the_wall_clock(
        e in 0..EXPRS.len(), z in 0..ZONES.len(),
        t in 1_577_836_800_000i64..2_082_758_400_000i64, dt in 0i64..86_400_000,
    ) {
        let s = Schedule::parse(EXPRS[e], ZONES[z]).unwrap();
        let n1 = s.next_after(t).unwrap();
        prop_assert!(n1 > t);
        let n2 = s.next_after(n1).unwrap();
        prop_assert!(n2 > n1);
        let later = s.next_after(t + dt).unwrap();
        prop_assert!(later >= n1, "not monotone: next({}) = {} < next({}) = {}", t + dt, later, t, n1);
        // Nothing fires strictly between t and n1 that the schedule would skip:
        // next_after(n1 - 1) is n1 itself.
        prop_assert_eq!(s.next_after(n1 - 1), Some(n1));
        if EXPRS[e].starts_with('*') && EXPRS[e].split_whitespace().count() == 6 {
            prop_assert_eq!(n1 % 1000, 0);
        }
        if !EXPRS[e].starts_with('@') {
            // Fires land on whole minutes (and on :00 or :30 seconds for these patterns).
            prop_assert_eq!(n1 % 1000, 0);
        }
    }
}

#[test]
fn next_after_is_cheap() {
    let s = Schedule::parse("0 30 2 * * *", "Europe/Berlin").unwrap();
    let e = Schedule::parse("*/1 * * * * *", "UTC").unwrap();
    let started = std::time::Instant::now();
    let mut t = ms("2026-01-01T00:00:00Z");
    for _ in 0..2_000 {
        t = s.next_after(t).unwrap();
        t = e.next_after(t).unwrap();
    }
    // A loose sanity bound (debug build, shared CI machine): ~µs per call in release.
    assert!(
        started.elapsed() < std::time::Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
}

/// A cron field: `*`, `*/n`, `a`, `a-b` or `a,b` over `lo..=hi`.
fn cron_field(lo: u32, hi: u32) -> impl Strategy<Value = String> {
    prop_oneof![
        Just("*".to_string()),
        (1..=hi.max(2)).prop_map(|n| format!("*/{n}")),
        (lo..=hi).prop_map(|a| a.to_string()),
        (lo..=hi, lo..=hi).prop_map(|(a, b)| format!("{}-{}", a.min(b), a.max(b))),
        (lo..=hi, lo..=hi).prop_map(|(a, b)| format!("{a},{b}")),
    ]
}

/// Valid schedules: 5- and 6-field cron (days of month up to 28, so every
/// pattern matches some date), macros, `@every` and `@at`.
fn valid_schedule() -> impl Strategy<Value = String> {
    let five = || {
        (
            cron_field(0, 59),
            cron_field(0, 23),
            cron_field(1, 28),
            cron_field(1, 12),
            cron_field(0, 6),
        )
            .prop_map(|(m, h, dom, mon, dow)| format!("{m} {h} {dom} {mon} {dow}"))
    };
    let six = (cron_field(0, 59), five()).prop_map(|(s, rest)| format!("{s} {rest}"));
    let every = (0u64..400, 0u64..30, 0u64..70, 0u64..70, 0u64..1500)
        .prop_filter("at least 1s", |(d, h, m, s, ms)| {
            d + h + m + s > 0 || *ms >= 1_000
        })
        .prop_map(|(d, h, m, s, ms)| {
            let mut text = String::from("@every ");
            for (n, unit) in [(d, "d"), (h, "h"), (m, "m"), (s, "s"), (ms, "ms")] {
                if n > 0 {
                    text.push_str(&format!("{n}{unit}"));
                }
            }
            text
        });
    let at = (0i64..253_402_300_799_000, -14i32 * 60..=14 * 60).prop_map(|(ms, off_min)| {
        let offset = chrono::FixedOffset::east_opt(off_min * 60).unwrap();
        let t = chrono::DateTime::from_timestamp_millis(ms)
            .unwrap()
            .with_timezone(&offset);
        format!("@at {}", t.to_rfc3339())
    });
    let macros = prop_oneof![
        Just("@hourly".to_string()),
        Just("@daily".to_string()),
        Just("@weekly".to_string()),
        Just("@monthly".to_string()),
        Just("@yearly".to_string()),
    ];
    prop_oneof![five(), six, every, at, macros]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(500))]

    /// No input makes the parser (or the first fire after a parse) panic.
    #[test]
    fn parse_never_panics(
        expr in prop_oneof![
            ".{0,40}",
            "@(every|at|hourly|daily|Every|AT)? ?[-0-9a-zA-Z:.+ ]{0,30}",
            "([0-9*/,LW#?-]{1,6} ){4,6}[0-9*/,-]{0,4}",
        ],
        zone in prop_oneof![".{0,20}", (0..ZONES.len()).prop_map(|z| ZONES[z].to_string())],
        t in 0i64..4_102_444_800_000,
    ) {
        if let Ok(s) = Schedule::parse(&expr, &zone) {
            let _ = s.next_after(t);
            let _ = s.to_string();
        }
        // Input is held to more, never to less.
        if Schedule::parse_input(&expr, &zone).is_ok() {
            prop_assert!(Schedule::parse(&expr, &zone).is_ok());
        }
    }

    /// What users write (every generated valid schedule) passes as input.
    #[test]
    fn valid_schedules_pass_as_input(expr in valid_schedule(), z in 0..ZONES.len()) {
        prop_assert!(Schedule::parse_input(&expr, ZONES[z]).is_ok(), "{}", expr);
    }

    /// parse ∘ print: printing a parsed schedule and parsing that again gives
    /// the same text and the same fires.
    #[test]
    fn print_parse_round_trips(
        expr in valid_schedule(),
        z in 0..ZONES.len(),
        t in 1_577_836_800_000i64..2_082_758_400_000i64,
    ) {
        let s = Schedule::parse(&expr, ZONES[z]).map_err(|e| TestCaseError::fail(e.to_string()))?;
        let printed = s.to_string();
        let back = Schedule::parse(&printed, ZONES[z])
            .map_err(|e| TestCaseError::fail(format!("{printed:?} does not parse: {e}")))?;
        prop_assert_eq!(back.to_string(), printed.clone());
        prop_assert_eq!(back.next_after(t), s.next_after(t), "{} vs {}", expr, printed);
        prop_assert_eq!(back.is_one_shot(), s.is_one_shot());
    }
}

#[test]
fn prints_the_canonical_form() {
    let p = |e: &str| Schedule::parse(e, "UTC").unwrap().to_string();
    assert_eq!(p("  0 30 2 * * * "), "0 30 2 * * *");
    assert_eq!(p("@every 90m"), "@every 1h30m");
    assert_eq!(p("@EVERY 1500ms"), "@every 1s500ms");
    assert_eq!(
        p("@at 2027-01-01T01:00:00+01:00"),
        "@at 2027-01-01T00:00:00.000Z"
    );
    // Macros print as the cron pattern they stand for.
    assert_eq!(p("@hourly"), "0 * * * *");
}
