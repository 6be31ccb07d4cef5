//! Helpers for the `sundial-bench` scenarios (see `docs/benchmarks.md`):
//! machine description, percentiles, Prometheus histogram scraping,
//! `/proc` readings, and a read-only watcher that timestamps when run rows
//! become visible in the database.

use anyhow::{Context, Result};
use rusqlite::{Connection, OpenFlags};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Wall-clock unix milliseconds (the server stamps rows with the same clock).
pub fn wall_ms() -> i64 {
    sundial_proto::time::now_ms()
}

/// `nproc`, CPU model, memory and current load, one line each.
pub fn machine() -> String {
    let nproc = std::thread::available_parallelism().map_or(0, |n| n.get());
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .and_then(|l| l.split_once(':'))
        .map_or("unknown", |(_, m)| m.trim())
        .to_string();
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let mem_kb = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|n| n.parse::<u64>().ok())
        .unwrap_or(0);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    format!(
        "machine: nproc={nproc}, cpu={model}, mem={:.1} GiB, kernel={}\n{}",
        mem_kb as f64 / 1024.0 / 1024.0,
        kernel.trim(),
        load()
    )
}

/// The `uptime`-style load averages.
pub fn load() -> String {
    let l = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let parts: Vec<&str> = l.split_whitespace().take(3).collect();
    format!("load average: {}", parts.join(", "))
}

/// Nearest-rank percentile of an ascending slice (`p` in 0..=100).
pub fn percentile(sorted: &[i64], p: f64) -> Option<i64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}

/// p50/p90/p99/max of a sample, formatted with a unit.
pub fn summary(values: &mut [i64], unit: &str) -> String {
    values.sort_unstable();
    let f = |p: f64| percentile(values, p).map_or("-".to_string(), |v| format!("{v} {unit}"));
    format!(
        "n={} p50={} p90={} p99={} max={}",
        values.len(),
        f(50.0),
        f(90.0),
        f(99.0),
        f(100.0)
    )
}

/// A Prometheus histogram as exposed in the text format.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Histogram {
    /// Cumulative counts by upper bound (`le`), `+Inf` last.
    pub buckets: Vec<(f64, f64)>,
    pub sum: f64,
    pub count: f64,
}

impl Histogram {
    /// Parses `name` (full metric name, e.g. `sundial_fire_lateness_seconds`)
    /// out of an exposition. Only unlabelled histograms (besides `le`).
    pub fn parse(text: &str, name: &str) -> Histogram {
        let mut h = Histogram::default();
        let bucket = format!("{name}_bucket{{le=\"");
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let Some((sample, value)) = line.rsplit_once(' ') else {
                continue;
            };
            let Ok(value) = value.parse::<f64>() else {
                continue;
            };
            if let Some(rest) = sample.strip_prefix(&bucket) {
                let le = rest.trim_end_matches("\"}");
                let le = if le == "+Inf" {
                    f64::INFINITY
                } else {
                    le.parse().unwrap_or(f64::NAN)
                };
                h.buckets.push((le, value));
            } else if sample == format!("{name}_sum") {
                h.sum = value;
            } else if sample == format!("{name}_count") {
                h.count = value;
            }
        }
        h
    }

    /// Histogram `name` over the interval between two scrapes of one
    /// process: `after − before`.
    pub fn between(before: &str, after: &str, name: &str) -> Histogram {
        Histogram::parse(after, name).since(&Histogram::parse(before, name))
    }

    /// `self - earlier` (both scraped from the same process).
    pub fn since(&self, earlier: &Histogram) -> Histogram {
        let buckets = self
            .buckets
            .iter()
            .map(|(le, n)| {
                let before = earlier
                    .buckets
                    .iter()
                    .find(|(l, _)| l == le)
                    .map_or(0.0, |(_, b)| *b);
                (*le, n - before)
            })
            .collect();
        Histogram {
            buckets,
            sum: self.sum - earlier.sum,
            count: self.count - earlier.count,
        }
    }

    /// The smallest bucket bound holding at least `q` of the observations.
    pub fn quantile_bound(&self, q: f64) -> Option<f64> {
        if self.count <= 0.0 {
            return None;
        }
        let want = q * self.count;
        self.buckets
            .iter()
            .find(|(_, n)| *n >= want)
            .map(|(le, _)| *le)
    }

    /// A compact table: per-bucket (non-cumulative) counts, sum, count.
    pub fn render(&self, unit_scale: f64, unit: &str) -> String {
        let mut out = String::new();
        let mut prev = 0.0;
        for (le, n) in &self.buckets {
            let here = n - prev;
            prev = *n;
            if here > 0.0 {
                let bound = if le.is_infinite() {
                    "+Inf".to_string()
                } else {
                    format!("{}{unit}", le * unit_scale)
                };
                out.push_str(&format!("    le {bound:>8}: {here:>8}\n"));
            }
        }
        let mean = if self.count > 0.0 {
            self.sum / self.count * unit_scale
        } else {
            0.0
        };
        out.push_str(&format!(
            "    count={} sum={:.4} mean={mean:.3}{unit}",
            self.count, self.sum
        ));
        for q in [0.5, 0.9, 0.99] {
            if let Some(b) = self.quantile_bound(q) {
                out.push_str(&format!(" p{}<={}{unit}", q * 100.0, b * unit_scale));
            }
        }
        out
    }
}

/// Fetches `/metrics` (blocking; call outside any async runtime).
pub fn scrape(http: &reqwest::blocking::Client, base: &str) -> Result<String> {
    let resp = http
        .get(format!("{base}/metrics"))
        .send()
        .context("GET /metrics")?;
    let status = resp.status();
    let text = resp.text().context("reading /metrics")?;
    anyhow::ensure!(status.is_success(), "GET /metrics: {status}");
    Ok(text)
}

/// `VmRSS` and `VmHWM` of a process, in KiB.
pub fn rss_kb(pid: u32) -> Result<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status"))?;
    let field = |name: &str| -> Result<u64> {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|l| l.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .with_context(|| format!("{name} missing from /proc/{pid}/status"))
    };
    Ok((field("VmRSS:")?, field("VmHWM:")?))
}

/// The sum of two tick counters of `/proc/<pid>/stat` (1-based field
/// numbers as in proc(5)), in seconds, assuming the usual 100 ticks per second.
fn stat_seconds(pid: &str, a: usize, b: usize) -> Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("reading /proc/{pid}/stat"))?;
    // Fields after the parenthesised command name start at field 3 (state),
    // so field n is index n - 3.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, r)| r)
        .context("parsing /proc/<pid>/stat")?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |n: usize| -> Result<f64> {
        fields
            .get(n - 3)
            .and_then(|v| v.parse::<f64>().ok())
            .with_context(|| format!("parsing field {n} of /proc/{pid}/stat"))
    };
    Ok((ticks(a)? + ticks(b)?) / 100.0)
}

/// User + system CPU time of a process in seconds (utime + stime).
pub fn cpu_seconds(pid: &str) -> Result<f64> {
    stat_seconds(pid, 14, 15)
}

/// The value of one sample of a Prometheus exposition (`name` or
/// `name{labels}` exactly as printed), or 0 when absent.
pub fn sample(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| {
            let (n, v) = l.rsplit_once(' ')?;
            (n == name).then(|| v.parse().ok())?
        })
        .unwrap_or(0.0)
}

/// Open file descriptors of a process (sockets included).
pub fn fd_count(pid: u32) -> Result<usize> {
    Ok(std::fs::read_dir(format!("/proc/{pid}/fd"))
        .with_context(|| format!("listing /proc/{pid}/fd"))?
        .count())
}

/// Soft and hard `RLIMIT_NOFILE` of a process (`pid` or `"self"`), from
/// `/proc/<pid>/limits`; `u64::MAX` for "unlimited".
pub fn nofile_limit(pid: &str) -> Result<(u64, u64)> {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits"))
        .with_context(|| format!("reading /proc/{pid}/limits"))?;
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .context("no \"Max open files\" line in /proc/<pid>/limits")?;
    let nums: Vec<u64> = line
        .trim_start_matches("Max open files")
        .split_whitespace()
        .take(2)
        .map(|v| v.parse().unwrap_or(u64::MAX))
        .collect();
    match nums.as_slice() {
        [soft, hard] => Ok((*soft, *hard)),
        _ => anyhow::bail!("cannot parse {line:?}"),
    }
}

/// CPU seconds of a process's reaped children (`cutime + cstime` of
/// `/proc/<pid>/stat`): for a daemon, the jobs it ran.
pub fn children_cpu_seconds(pid: &str) -> Result<f64> {
    stat_seconds(pid, 16, 17)
}

/// Machine-wide CPU time from `/proc/stat`, in seconds: (busy, iowait).
pub fn machine_cpu() -> Result<(f64, f64)> {
    let stat = std::fs::read_to_string("/proc/stat").context("reading /proc/stat")?;
    let line = stat.lines().next().context("empty /proc/stat")?;
    let v: Vec<f64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    let get = |i: usize| v.get(i).copied().unwrap_or(0.0);
    // user nice system idle iowait irq softirq steal
    let busy = get(0) + get(1) + get(2) + get(5) + get(6) + get(7);
    Ok((busy / 100.0, get(4) / 100.0))
}

/// Opens the server's database read-only.
pub fn open_ro(db: &Path) -> Result<Connection> {
    let conn = Connection::open_with_flags(
        db,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .with_context(|| format!("opening {} read-only", db.display()))?;
    conn.busy_timeout(Duration::from_secs(5))?;
    Ok(conn)
}

/// Polls `SELECT max(id) FROM runs` (and the cluster epoch) on a read-only
/// connection and records the wall time at which each new value was first
/// seen: an upper bound on when the rows were committed, within one poll
/// interval plus the query time.
pub struct Watcher {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<Timeline>>,
}

/// What a [`Watcher`] saw.
#[derive(Debug, Default, Clone)]
pub struct Timeline {
    /// (wall ms, max run id) whenever max(id) grew.
    pub max_id: Vec<(i64, i64)>,
    /// (wall ms, epoch) whenever the cluster epoch changed.
    pub epoch: Vec<(i64, i64)>,
    pub polls: u64,
    /// Errors seen (e.g. the file not existing yet); the last one.
    pub last_error: Option<String>,
}

impl Timeline {
    /// When a run row with this id (or a later one) was first seen.
    pub fn visible_at(&self, id: i64) -> Option<i64> {
        let i = self.max_id.partition_point(|(_, m)| *m < id);
        self.max_id.get(i).map(|(t, _)| *t)
    }
}

impl Watcher {
    /// Starts polling `db` every `every`; stops by itself after `limit`.
    pub fn start(db: PathBuf, every: Duration, limit: Duration) -> Watcher {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut tl = Timeline::default();
            let deadline = Instant::now() + limit;
            let mut conn: Option<Connection> = None;
            let mut last_id = i64::MIN;
            let mut last_epoch = i64::MIN;
            while !flag.load(Ordering::Relaxed) && Instant::now() < deadline {
                if conn.is_none() {
                    match open_ro(&db) {
                        Ok(c) => conn = Some(c),
                        Err(e) => tl.last_error = Some(format!("{e:#}")),
                    }
                }
                if let Some(c) = &conn {
                    let read = (|| -> rusqlite::Result<(i64, i64)> {
                        let id: Option<i64> =
                            c.query_row("SELECT max(id) FROM runs", [], |r| r.get(0))?;
                        let epoch: i64 =
                            c.query_row("SELECT epoch FROM cluster WHERE id = 1", [], |r| {
                                r.get(0)
                            })?;
                        Ok((id.unwrap_or(0), epoch))
                    })();
                    let now = wall_ms();
                    tl.polls += 1;
                    match read {
                        Ok((id, epoch)) => {
                            if id > last_id {
                                last_id = id;
                                tl.max_id.push((now, id));
                            }
                            if epoch != last_epoch {
                                last_epoch = epoch;
                                tl.epoch.push((now, epoch));
                            }
                        }
                        Err(e) => {
                            tl.last_error = Some(e.to_string());
                            conn = None;
                        }
                    }
                }
                std::thread::sleep(every);
            }
            tl
        });
        Watcher {
            stop,
            thread: Some(thread),
        }
    }

    /// Stops polling and returns what was seen.
    pub fn finish(mut self) -> Timeline {
        self.stop.store(true, Ordering::Relaxed);
        self.thread
            .take()
            .and_then(|t| t.join().ok())
            .unwrap_or_default()
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A daily cron schedule (`S M H * * *`) for job `i` that stays clear of the
/// `clear_minutes` after `now_ms` (UTC), so pre-created jobs do not fire
/// while a scenario runs.
pub fn quiet_daily_schedule(i: u64, now_ms: i64, clear_minutes: u64) -> String {
    let minute_now = (now_ms.div_euclid(60_000)).rem_euclid(1440) as u64;
    let usable = 1440 - 2 * clear_minutes;
    let offset = clear_minutes + (i / 60) % usable;
    let minute_of_day = (minute_now + offset) % 1440;
    format!(
        "{} {} {} * * *",
        i % 60,
        minute_of_day % 60,
        minute_of_day / 60
    )
}

/// TCP sockets in TIME_WAIT on this machine (`/proc/net/tcp{,6}`, state 06).
pub fn time_wait_sockets() -> usize {
    ["/proc/net/tcp", "/proc/net/tcp6"]
        .iter()
        .filter_map(|p| std::fs::read_to_string(p).ok())
        .map(|t| {
            t.lines()
                .skip(1)
                .filter(|l| l.split_whitespace().nth(3) == Some("06"))
                .count()
        })
        .sum()
}

/// Waits (at most `limit`) until fewer than `below` sockets are in
/// TIME_WAIT. A run at 10,000 jobs/s opens ~13,000 loopback connections,
/// and the next run started within the kernel's 60 s TIME_WAIT finds the
/// ephemeral ports nearly used up: `connect()` then spends seconds of
/// system CPU searching for a free port, which skews whichever run of an
/// A/B pair comes second. Returns how many were left.
pub fn wait_time_wait_drained(below: usize, limit: Duration) -> usize {
    let start = Instant::now();
    let mut left = time_wait_sockets();
    if left >= below {
        println!(
            "waiting for {left} TIME_WAIT sockets of an earlier run to expire (≤ {} s)",
            limit.as_secs()
        );
    }
    while left >= below && start.elapsed() < limit {
        std::thread::sleep(Duration::from_millis(500));
        left = time_wait_sockets();
    }
    left
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles() {
        let v: Vec<i64> = (1..=100).collect();
        assert_eq!(percentile(&v, 50.0), Some(50));
        assert_eq!(percentile(&v, 99.0), Some(99));
        assert_eq!(percentile(&v, 100.0), Some(100));
        assert_eq!(percentile(&v, 0.0), Some(1));
        assert_eq!(percentile(&[], 50.0), None);
    }

    #[test]
    fn histogram_parse_and_delta() {
        let a = "# HELP x\nsundial_x_bucket{le=\"0.001\"} 1\nsundial_x_bucket{le=\"0.01\"} 3\n\
                 sundial_x_bucket{le=\"+Inf\"} 4\nsundial_x_sum 0.5\nsundial_x_count 4\n";
        let b = "sundial_x_bucket{le=\"0.001\"} 11\nsundial_x_bucket{le=\"0.01\"} 23\n\
                 sundial_x_bucket{le=\"+Inf\"} 24\nsundial_x_sum 0.7\nsundial_x_count 24\n";
        let ha = Histogram::parse(a, "sundial_x");
        assert_eq!(ha.buckets.len(), 3);
        assert_eq!(ha.count, 4.0);
        let d = Histogram::parse(b, "sundial_x").since(&ha);
        assert_eq!(d.count, 20.0);
        assert_eq!(d.buckets[0], (0.001, 10.0));
        assert_eq!(d.quantile_bound(0.6), Some(0.01));
        assert_eq!(d.quantile_bound(0.5), Some(0.001));
    }

    #[test]
    fn quiet_schedules_avoid_the_window() {
        let now = 1_700_000_000_000i64;
        let minute_now = (now / 60_000) % 1440;
        for i in (0..1_000_000u64).step_by(997) {
            let s = quiet_daily_schedule(i, now, 15);
            let f: Vec<u64> = s
                .split_whitespace()
                .take(3)
                .map(|x| x.parse().unwrap())
                .collect();
            let m = (f[2] * 60 + f[1]) as i64;
            let ahead = (m - minute_now).rem_euclid(1440);
            assert!((15..1425).contains(&ahead), "{s} fires {ahead} min ahead");
        }
    }

    #[test]
    fn cpu_times_of_this_process_parse() {
        // Burn a little CPU so utime + stime is visibly positive.
        let mut x = 0u64;
        for i in 0..20_000_000u64 {
            x = x.wrapping_mul(31).wrapping_add(i);
        }
        assert!(x != 1);
        let own = cpu_seconds("self").expect("own stat");
        assert!(own > 0.0, "utime + stime = {own}");
        assert!(children_cpu_seconds("self").expect("own stat") >= 0.0);
        assert!(cpu_seconds("no-such-pid").is_err());
    }

    #[test]
    fn samples_by_exact_name() {
        let text = "# HELP a\nsundial_a 3\nsundial_b{outcome=\"succeeded\"} 7\n";
        assert_eq!(sample(text, "sundial_a"), 3.0);
        assert_eq!(sample(text, "sundial_b{outcome=\"succeeded\"}"), 7.0);
        assert_eq!(sample(text, "sundial_c"), 0.0);
    }

    #[test]
    fn visible_at() {
        let tl = Timeline {
            max_id: vec![(10, 5), (20, 9), (30, 15)],
            ..Timeline::default()
        };
        assert_eq!(tl.visible_at(1), Some(10));
        assert_eq!(tl.visible_at(6), Some(20));
        assert_eq!(tl.visible_at(15), Some(30));
        assert_eq!(tl.visible_at(16), None);
    }
}
