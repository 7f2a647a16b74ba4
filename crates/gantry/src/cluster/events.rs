//! `gantry events`: the cluster's events, kept and followed.

use clap::Args;

use gantry_api::Event;

use crate::output::Format;
use crate::Ctx;

use super::*;

#[derive(Args)]
pub(crate) struct EventsArgs {
    /// Only events matching KEY=VALUE (type, id, service, node, action).
    #[arg(short, long, value_name = "KEY=VALUE")]
    filter: Vec<String>,
    /// Replay kept events from this long ago (10m) or this time (RFC 3339).
    #[arg(long)]
    since: Option<String>,
    /// Stop after the replay instead of following.
    #[arg(long)]
    no_follow: bool,
    /// Output: lines, or one JSON object a line.
    #[arg(long, value_enum, default_value_t)]
    format: Format,
}

/// A point in time given as RFC 3339 or as a duration ago (`10m`), for
/// the flag `what`.
pub(crate) fn time_arg(s: &str, what: &str) -> anyhow::Result<chrono::DateTime<chrono::Utc>> {
    if let Ok(t) = chrono::DateTime::parse_from_rfc3339(s) {
        return Ok(t.with_timezone(&chrono::Utc));
    }
    let d = duration(s, what)?;
    Ok(chrono::Utc::now() - chrono::Duration::from_std(d)?)
}

fn matches(e: &Event, filters: &[(String, String)]) -> bool {
    filters.iter().all(|(k, v)| match k.as_str() {
        "type" => &e.kind == v,
        "id" => e.id.starts_with(v.as_str()),
        "action" => &e.action == v,
        other => e.attributes.get(other) == Some(v),
    })
}

pub(crate) fn events(ctx: &Ctx, a: EventsArgs) -> anyhow::Result<u8> {
    let c = client(ctx)?;
    let filters = a
        .filter
        .iter()
        .map(|f| kv(f))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let mut q = format!("/v1/events?follow={}", !a.no_follow);
    if let Some(s) = &a.since {
        let t = time_arg(s, "--since")?.to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
        q.push_str(&format!("&since={t}"));
    }
    let json = a.format == Format::Json;
    call(c.watch(&q, |e: Event| {
        if matches(&e, &filters) {
            if json {
                println!("{}", serde_json::to_string(&e).unwrap_or_default());
            } else {
                let attrs: Vec<String> = e
                    .attributes
                    .iter()
                    .filter(|(_, v)| !v.is_empty())
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect();
                println!(
                    "{} {} {} {} ({})",
                    e.time,
                    e.kind,
                    e.action,
                    e.id,
                    attrs.join(", ")
                );
            }
            use std::io::Write;
            let _ = std::io::stdout().flush();
        }
        true
    }))?;
    Ok(0)
}
