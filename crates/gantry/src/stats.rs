//! `gantry stats`: a live table of the cluster's task containers, as
//! `docker stats`, with a total per service across nodes.

use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};
use std::time::Duration;

use clap::Args;
use gantry_api::{NodeStatsView, TaskStats};

use crate::output::{self, Format};
use crate::Ctx;

#[derive(Args)]
pub(crate) struct StatsArgs {
    /// Only these services (full or short names).
    services: Vec<String>,
    /// Print once and exit.
    #[arg(long)]
    no_stream: bool,
    /// Output format.
    #[arg(long, value_enum, default_value_t)]
    format: Format,
}

fn wanted(a: &StatsArgs, t: &TaskStats) -> bool {
    a.services.is_empty()
        || a.services
            .iter()
            .any(|s| t.service == *s || t.service.strip_prefix(&format!("{}_", t.stack)) == Some(s))
}

fn pct(part: u64, whole: u64) -> String {
    if whole == 0 {
        "-".into()
    } else {
        format!("{:.2}%", part as f64 / whole as f64 * 100.0)
    }
}

fn io(a: u64, b: u64) -> String {
    format!("{} / {}", output::size(a), output::size(b))
}

pub(crate) fn stats(ctx: &Ctx, a: StatsArgs) -> anyhow::Result<u8> {
    let c = crate::cluster::client(ctx)?;
    let live = !a.no_stream && std::io::stdout().is_terminal();
    loop {
        let v: Vec<NodeStatsView> =
            crate::images::block_on(c.get("/v1/stats"))?.map_err(anyhow::Error::from)?;
        let tasks: Vec<(&NodeStatsView, &TaskStats)> = v
            .iter()
            .flat_map(|n| n.stats.tasks.iter().map(move |t| (n, t)))
            .filter(|(_, t)| wanted(&a, t))
            .collect();
        if a.format == Format::Json {
            let rows: Vec<serde_json::Value> = tasks
                .iter()
                .map(|(n, t)| {
                    let mut j = serde_json::to_value(t).unwrap_or_default();
                    j["node"] = serde_json::Value::String(n.hostname.clone());
                    j
                })
                .collect();
            println!("{}", serde_json::to_string(&rows)?);
        } else {
            if live {
                print!("\x1b[2J\x1b[H");
            }
            let mut rows = Vec::new();
            let mut per: BTreeMap<&str, (usize, f64, u64, u64)> = BTreeMap::new();
            for (n, t) in &tasks {
                let limit = t.memory_limit.unwrap_or(n.stats.mem_total);
                let net = t.net.unwrap_or_default();
                rows.push(vec![
                    format!(
                        "{}.{}.{}",
                        t.service,
                        t.slot,
                        &t.task[..t.task.len().min(12)]
                    ),
                    n.hostname.clone(),
                    format!("{:.2}%", t.cpu_percent),
                    io(t.memory_working_set, limit),
                    pct(t.memory_working_set, limit),
                    io(net[0], net[2]),
                    io(t.blk_read, t.blk_write),
                    t.pids.to_string(),
                ]);
                let e = per.entry(&t.service).or_default();
                e.0 += 1;
                e.1 += t.cpu_percent;
                e.2 += t.memory_working_set;
                e.3 += t.pids;
            }
            output::table(
                &[
                    "NAME",
                    "NODE",
                    "CPU %",
                    "MEM USAGE / LIMIT",
                    "MEM %",
                    "NET I/O",
                    "BLOCK I/O",
                    "PIDS",
                ],
                rows,
            );
            println!();
            output::table(
                &["SERVICE", "TASKS", "CPU %", "MEM USAGE", "PIDS"],
                per.into_iter()
                    .map(|(s, (n, cpu, mem, pids))| {
                        vec![
                            s.to_owned(),
                            n.to_string(),
                            format!("{cpu:.2}%"),
                            output::size(mem),
                            pids.to_string(),
                        ]
                    })
                    .collect(),
            );
        }
        let _ = std::io::stdout().flush();
        if a.no_stream {
            return Ok(0);
        }
        std::thread::sleep(Duration::from_secs(2));
    }
}
