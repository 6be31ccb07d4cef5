//! `preview`: the next fires of a schedule from `GET /v1/schedule/preview`,
//! shown in local time and UTC with the offset and DST notes.

use super::Ctx;
use crate::args::PreviewArgs;
use crate::client::Client;
use crate::error::{CliError, CliResult};
use crate::render;
use serde::Deserialize;

#[derive(Deserialize)]
struct PreviewAnswer {
    fires: Vec<String>,
}

/// The next `count` fire instants (unix ms) after `after` (now when `None`).
pub fn fetch(
    client: &Client,
    schedule: &str,
    tz: &str,
    count: usize,
    after: Option<&str>,
) -> CliResult<Vec<i64>> {
    let mut q = vec![
        ("schedule", schedule.to_string()),
        ("timezone", tz.to_string()),
        ("count", count.to_string()),
    ];
    if let Some(a) = after {
        q.push(("after", a.to_string()));
    }
    let query = serde_urlencoded::to_string(&q).map_err(|e| anyhow::anyhow!("{e}"))?;
    let answer: PreviewAnswer = client.get(&format!("/v1/schedule/preview?{query}"))?;
    answer
        .fires
        .iter()
        .map(|f| {
            sundial_proto::time::parse_rfc3339_ms(f)
                .ok_or_else(|| CliError::Other(anyhow::anyhow!("server sent a bad instant {f:?}")))
        })
        .collect()
}

#[derive(serde::Serialize)]
struct FireOut {
    local: String,
    utc: String,
    offset: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    note: String,
}

pub fn run(ctx: &Ctx, args: &PreviewArgs) -> CliResult<()> {
    let tz: chrono_tz::Tz = args
        .tz
        .parse()
        .map_err(|_| CliError::usage(format!("--tz {:?} is not an IANA time zone", args.tz)))?;
    let client = ctx.client()?;
    let fires = fetch(
        &client,
        &args.schedule,
        &args.tz,
        args.count,
        args.after.as_deref(),
    )?;
    let rows = render::fires(tz, &fires);
    let value: Vec<FireOut> = rows
        .iter()
        .map(|f| FireOut {
            local: f.local.clone(),
            utc: f.utc.clone(),
            offset: f.offset.clone(),
            note: f.note.clone(),
        })
        .collect();
    ctx.print(&value, || render::fires_table(&rows))
}
