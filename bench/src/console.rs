//! `console` scenario: server time of the web console's pages over a large
//! database. Populates `--jobs` jobs through the library (like `startup`),
//! adds run history with plain SQL in one transaction (`--runs` finished runs
//! spread over the jobs, 1,000 of them on `job-0000001`, and every tenth job's
//! latest run marked failed), starts the release server, signs in through
//! `/ui/login` like a browser, and times each page `--requests` times on one
//! keep-alive connection (client-side, loopback: an upper bound of the
//! server's time).

use anyhow::{bail, Context, Result};
use rusqlite::params;
use std::path::Path;
use std::time::{Duration, Instant};
use sundial_bench::{load, summary, wall_ms};
use sundial_e2e::{ServerProc, ADMIN_KEY};

pub struct Args {
    pub jobs: u64,
    pub runs: u64,
    pub requests: usize,
}

/// Finished runs, a failing state on every tenth job, 1,000 runs on job 1.
fn add_history(db: &Path, jobs: u64, runs: u64) -> Result<()> {
    let mut conn = rusqlite::Connection::open(db)?;
    let tx = conn.transaction()?;
    let now = wall_ms();
    {
        let mut insert = tx.prepare(
            "INSERT INTO runs (job, trigger, scheduled_for, node, attempt, state, created_at,
                               started_at, finished_at, exit_code, output)
             VALUES (?1, 'schedule', ?2, '', 1, ?3, ?2, ?2, ?4, ?5, 'ok')",
        )?;
        let pk1: i64 = tx.query_row("SELECT pk FROM jobs WHERE id = 'job-0000001'", [], |r| {
            r.get(0)
        })?;
        for i in 0..runs {
            let (job, at) = if i < 1000 {
                (pk1, now - 3_600_000 * 24 + i as i64 * 60_000)
            } else {
                (
                    (i % jobs) as i64 + 1,
                    now - 7_200_000 + (i as i64 % 3_600_000),
                )
            };
            let failed = i % 7 == 0;
            insert.execute(params![
                job,
                at,
                if failed { "failed" } else { "succeeded" },
                at + 200 + (i as i64 * 37) % 5000,
                if failed { 1 } else { 0 },
            ])?;
        }
    }
    tx.execute(
        "UPDATE job_stats SET last_state = CASE WHEN pk % 10 = 0 THEN 'failed' ELSE 'succeeded' END,
                         last_run_at = ?1 - pk, runs_total = 1",
        [now],
    )?;
    tx.commit()?;
    Ok(())
}

/// A browser-like client: no redirects followed, the session cookie kept.
struct Client {
    http: reqwest::blocking::Client,
    base: String,
    cookies: String,
}

impl Client {
    fn sign_in(base: &str) -> Result<Client> {
        let http = reqwest::blocking::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(Duration::from_secs(30))
            .build()?;
        let resp = http.get(format!("{base}/ui/login")).send()?;
        let login_cookie = cookie(&resp, "sundial_login")?;
        let html = resp.text()?;
        let at = html
            .find("name=\"csrf\" value=\"")
            .context("no csrf field")?
            + 19;
        let csrf = html[at..].split('"').next().unwrap_or_default().to_string();
        let resp = http
            .post(format!("{base}/ui/login"))
            .header("cookie", format!("sundial_login={login_cookie}"))
            .form(&[("key", ADMIN_KEY), ("csrf", csrf.as_str())])
            .send()?;
        if resp.status() != 303 {
            bail!("sign-in answered {}", resp.status());
        }
        let session = cookie(&resp, "sundial_session")?;
        Ok(Client {
            http,
            base: base.to_string(),
            cookies: format!("sundial_session={session}"),
        })
    }

    /// Times one GET; the body is read completely and must contain `expect`.
    fn time(&self, path: &str, expect: &str) -> Result<(Duration, usize)> {
        let t = Instant::now();
        let resp = self
            .http
            .get(format!("{}{path}", self.base))
            .header("cookie", &self.cookies)
            .send()?;
        let status = resp.status();
        let body = resp.bytes()?;
        let took = t.elapsed();
        if status != 200 {
            bail!("GET {path}: {status}");
        }
        if !String::from_utf8_lossy(&body).contains(expect) {
            bail!("GET {path}: the page lacks {expect:?}");
        }
        Ok((took, body.len()))
    }
}

fn cookie(resp: &reqwest::blocking::Response, name: &str) -> Result<String> {
    resp.headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .filter_map(|v| v.split(';').next()?.split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.to_string())
        .with_context(|| format!("no {name} cookie"))
}

pub fn run(data: &Path, args: &Args) -> Result<()> {
    let db = data.join("sundial.db");
    println!(
        "populating {} jobs and {} runs in {}",
        args.jobs,
        args.runs,
        data.display()
    );
    let took = crate::startup::populate(&db, args.jobs, 20_000)?;
    add_history(&db, args.jobs, args.runs)?;
    // Job labels on one job in ten, for the label filter.
    rusqlite::Connection::open(&db)?.execute(
        "UPDATE jobs SET labels = '{\"team\":\"pay\"}' WHERE pk % 10 = 0",
        [],
    )?;
    println!("populated in {:.1} s", took.as_secs_f64());
    let server = ServerProc::start(data).context("starting the server")?;
    let client = Client::sign_in(&server.base)?;
    let run_id: i64 = rusqlite::Connection::open(&db)?.query_row(
        "SELECT max(id) FROM runs WHERE job = (SELECT pk FROM jobs WHERE id = 'job-0000001')",
        [],
        |r| r.get(0),
    )?;
    let deep = args.jobs as usize / 50;
    let jobs_table = "<table id=\"jobs\">";
    let pages: Vec<(String, String, &str)> = vec![
        (
            "jobs, first page (sort by id)".into(),
            "/ui/jobs".into(),
            "job-0000049",
        ),
        (
            format!("jobs, page {deep} (OFFSET {})", (deep - 1) * 50),
            format!("/ui/jobs?page={deep}"),
            jobs_table,
        ),
        (
            "jobs, sort by next fire".into(),
            "/ui/jobs?sort=next".into(),
            jobs_table,
        ),
        (
            "jobs, sort by latest run".into(),
            "/ui/jobs?sort=last".into(),
            jobs_table,
        ),
        (
            "jobs, id contains \"00777\"".into(),
            "/ui/jobs?q=00777".into(),
            "job-0007770",
        ),
        (
            "jobs, latest failed + active".into(),
            "/ui/jobs?state=failed&paused=no".into(),
            "job-0000009",
        ),
        (
            "job page (1,000 runs; shows 50, chart, 10 fires)".into(),
            "/ui/jobs/job-0000001".into(),
            "<svg class=\"chart\"",
        ),
        (
            "job page (2 runs)".into(),
            "/ui/jobs/job-0050000".into(),
            "<table id=\"runs\">",
        ),
        (
            "run page".into(),
            format!("/ui/runs/{run_id}"),
            "id=\"run-live\"",
        ),
        ("overview".into(), "/ui/".into(), "id=\"role\""),
        (
            "jobs, job label team=pay (1 in 10 jobs)".into(),
            "/ui/jobs?label=team%3Dpay".into(),
            jobs_table,
        ),
        (
            "events page (newest 100)".into(),
            "/ui/events".into(),
            "<table id=\"events\"",
        ),
    ];
    std::thread::sleep(Duration::from_secs(2));
    println!("before measuring: {}", load());
    println!("| page | time per request (client, loopback) | body |");
    println!("|---|---|---|");
    for (name, path, expect) in &pages {
        client.time(path, expect)?; // warm the statement cache and page cache
        let mut times = Vec::with_capacity(args.requests);
        let mut bytes = 0;
        for _ in 0..args.requests {
            let (t, n) = client.time(path, expect)?;
            times.push(t.as_micros() as i64);
            bytes = n;
        }
        let text = summary(&mut times, "µs");
        println!("| {name} `{path}` | {text} | {} KB |", bytes / 1024);
    }
    crate::harness::stop_server(server)
}
