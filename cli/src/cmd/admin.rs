//! `nodes ls|revoke`, `tokens create|ls|rm`, `keys create|ls|rm` and `status`.
//! Secrets (API keys, join tokens) are printed only by `create`.

use super::Ctx;
use crate::args::{KeysCmd, NodesCmd, TokensCmd};
use crate::client::enc;
use crate::error::CliResult;
use crate::render::{self, Status};
use reqwest::Method;
use serde_json::{json, Value};
use std::collections::BTreeSet;
use sundial_proto::{Job, List, Run, RunState};

fn items(v: &Value) -> Vec<Value> {
    v["items"].as_array().cloned().unwrap_or_default()
}

pub fn nodes(ctx: &Ctx, cmd: NodesCmd) -> CliResult<()> {
    let client = ctx.client()?;
    match cmd {
        NodesCmd::Ls => {
            let v: Value = client.get("/v1/nodes")?;
            let list = items(&v);
            ctx.print(&list, || render::nodes_table(&ctx.view, &list))
        }
        NodesCmd::Revoke { id } => {
            client.send_empty(Method::DELETE, &format!("/v1/nodes/{}", enc(&id)))?;
            ctx.print(&json!({"revoked": id}), || {
                format!("Revoked node {id}; it must join again with a join token.\n")
            })
        }
    }
}

pub fn tokens(ctx: &Ctx, cmd: TokensCmd) -> CliResult<()> {
    let client = ctx.client()?;
    match cmd {
        TokensCmd::Create {
            name,
            ttl,
            max_uses,
        } => {
            let mut body = json!({"name": name});
            if let Some(t) = ttl {
                body["ttl"] = json!(t.to_string());
            }
            if let Some(m) = max_uses {
                body["max_uses"] = json!(m);
            }
            let v: Value = client.call(Method::POST, "/v1/join-tokens", Some(&body))?;
            ctx.print(&v, || {
                format!(
                    "Join token {} (expires {}). It is shown once:\n{}\n",
                    v["id"].as_str().unwrap_or("?"),
                    v["expires_at"].as_str().unwrap_or("?"),
                    v["token"].as_str().unwrap_or("?")
                )
            })
        }
        TokensCmd::Ls => {
            let v: Value = client.get("/v1/join-tokens")?;
            let list = items(&v);
            ctx.print(&list, || render::tokens_table(&ctx.view, &list))
        }
        TokensCmd::Rm { id } => {
            client.send_empty(Method::DELETE, &format!("/v1/join-tokens/{}", enc(&id)))?;
            ctx.print(&json!({"deleted": id}), || {
                format!("Deleted join token {id}.\n")
            })
        }
    }
}

pub fn keys(ctx: &Ctx, cmd: KeysCmd) -> CliResult<()> {
    let client = ctx.client()?;
    match cmd {
        KeysCmd::Create {
            scope,
            name,
            expires_in,
        } => {
            let mut body = json!({"scope": scope, "name": name});
            if let Some(d) = expires_in {
                body["expires_in"] = json!(d.to_string());
            }
            let v: Value = client.call(Method::POST, "/v1/api-keys", Some(&body))?;
            ctx.print(&v, || {
                format!(
                    "API key {} ({} scope, expires {}). It is shown once:\n{}\n",
                    v["id"].as_str().unwrap_or("?"),
                    v["scope"].as_str().unwrap_or("?"),
                    v["expires_at"].as_str().unwrap_or("never"),
                    v["key"].as_str().unwrap_or("?")
                )
            })
        }
        KeysCmd::Ls => {
            let v: Value = client.get("/v1/api-keys")?;
            let list = items(&v);
            ctx.print(&list, || render::keys_table(&ctx.view, &list))
        }
        KeysCmd::Rm { id } => {
            client.send_empty(Method::DELETE, &format!("/v1/api-keys/{}", enc(&id)))?;
            ctx.print(&json!({"deleted": id}), || {
                format!("Deleted API key {id}.\n")
            })
        }
    }
}

/// Recent failed runs examined to find failing jobs.
const FAILURE_SCAN: usize = 200;

pub fn status(ctx: &Ctx) -> CliResult<()> {
    let client = ctx.client()?;
    let ha: Value = client.get("/v1/ha/status")?;
    let nodes: Value = client.get("/v1/nodes")?;
    let count = |st: &str| items(&nodes).iter().filter(|n| n["status"] == st).count();
    // Counted, not shown: without their output (up to 1 MiB a run).
    let pending: List<Run> = client.get("/v1/runs?state=pending&limit=1000&output=false")?;
    let running: List<Run> = client.get("/v1/runs?state=running&limit=1000&output=false")?;
    // Jobs whose latest run failed: candidates from recent failures, confirmed on the job.
    let mut candidates = BTreeSet::new();
    for st in [RunState::Failed, RunState::TimedOut, RunState::Lost] {
        let page: List<Run> = client.get(&format!(
            "/v1/runs?state={st}&limit={FAILURE_SCAN}&output=false"
        ))?;
        candidates.extend(page.items.into_iter().map(|r| r.job_id));
    }
    let mut failing = Vec::new();
    for id in candidates {
        if let Ok(job) = client.get::<Job>(&format!("/v1/jobs/{}", enc(&id))) {
            if matches!(
                job.counters.last_state.as_deref(),
                Some("failed" | "timed_out" | "lost")
            ) {
                failing.push(id);
            }
        }
    }
    let st = Status {
        server: client.base().to_string(),
        mode: ha["mode"].as_str().unwrap_or("?").to_string(),
        role: ha["role"].as_str().unwrap_or("?").to_string(),
        epoch: ha["epoch"].as_i64().unwrap_or(0),
        primary: ha["primary"]
            .as_str()
            .or(ha["primary_url"].as_str())
            .map(str::to_string),
        since: ha["since"].as_str().map(str::to_string),
        nodes_ready: count("ready"),
        nodes_down: count("down"),
        nodes_revoked: count("revoked"),
        queue_depth: pending.items.len(),
        queue_more: pending.next_cursor.is_some(),
        running: running.items.len(),
        failing_jobs: failing,
    };
    ctx.print(&st, || render::status(&ctx.view, &st))
}
