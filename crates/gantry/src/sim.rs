//! `gantry sim-nodes` (hidden): many simulated nodes in one process for
//! the scale harness (`scripts/bench-scale.sh`). Every second it prints a
//! line of counts: `joined=N running=N lines=N bytes=N resyncs=N`.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;

/// `gantry sim-nodes`.
#[derive(clap::Args)]
pub(crate) struct SimArgs {
    /// The manager (HOST:PORT).
    #[arg(long)]
    manager: String,
    /// A file with the join token.
    #[arg(long)]
    token_file: std::path::PathBuf,
    /// How many nodes.
    #[arg(long, default_value_t = 100)]
    nodes: usize,
    /// Host names are PREFIX-N.
    #[arg(long, default_value = "sim")]
    prefix: String,
    /// Between heartbeats.
    #[arg(long, default_value = "1s")]
    heartbeat: String,
    /// Joins under way at once.
    #[arg(long, default_value_t = 16)]
    joins: usize,
    /// Volumes each node has and reports (their figures change every 30 s).
    #[arg(long, default_value_t = 0)]
    volumes: usize,
}

pub(crate) fn run(a: SimArgs) -> anyhow::Result<u8> {
    let token = std::fs::read_to_string(&a.token_file)
        .with_context(|| format!("read {}", a.token_file.display()))?
        .trim()
        .to_owned();
    let cfg = gantry_agent::SimConfig {
        manager: a.manager,
        token,
        nodes: a.nodes,
        prefix: a.prefix,
        heartbeat: crate::cluster::duration(&a.heartbeat, "--heartbeat")?,
        joins: a.joins,
        volumes: a.volumes,
    };
    let stats = Arc::new(gantry_agent::SimStats::default());
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(async move {
        let s = stats.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(1)).await;
                println!(
                    "joined={} running={} lines={} bytes={} resyncs={}",
                    s.joined.load(Relaxed),
                    s.running.load(Relaxed),
                    s.lines.load(Relaxed),
                    s.bytes.load(Relaxed),
                    s.resyncs.load(Relaxed),
                );
            }
        });
        gantry_agent::simulate(cfg, stats).await
    })?;
    Ok(0)
}
