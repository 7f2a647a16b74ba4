//! Reads the node's and its task containers' figures every few seconds
//! (cgroup, network namespace, `/proc`), for the heartbeat (the manager's
//! cluster view, `gantry stats`, `gantry node ls`) and `/metrics`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use gantry_api::{NodeStats, TaskStats};
use gantry_runtime::Runtime;

use crate::tasks::{SERVICE_LABEL, SLOT_LABEL, STACK_LABEL, TASK_LABEL};

/// Between readings.
const EVERY: Duration = Duration::from_secs(2);

#[derive(Default)]
pub(crate) struct Stats {
    latest: Mutex<Option<NodeStats>>,
}

impl Stats {
    /// The last reading.
    pub(crate) fn latest(&self) -> Option<NodeStats> {
        self.latest.lock().expect("stats lock").clone()
    }

    /// Reads every `EVERY` until the task is dropped.
    pub(crate) async fn run(self: Arc<Self>, rt: Arc<Runtime>) {
        let mut prev: Prev = Prev::default();
        loop {
            let rt2 = rt.clone();
            let p = std::mem::take(&mut prev);
            let r = tokio::task::spawn_blocking(move || read(&rt2, p)).await;
            if let Ok((s, p)) = r {
                *self.latest.lock().expect("stats lock") = Some(s);
                prev = p;
            }
            tokio::time::sleep(EVERY).await;
        }
    }
}

/// The previous reading's counters, for rates.
#[derive(Default)]
struct Prev {
    at: Option<Instant>,
    node: Option<gantry_runtime::stats::NodeSample>,
    cpu: HashMap<String, u64>,
}

pub(crate) fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn read(rt: &Runtime, prev: Prev) -> (NodeStats, Prev) {
    let at = Instant::now();
    let secs = prev.at.map(|p| at.duration_since(p).as_secs_f64());
    let node = gantry_runtime::stats::node().unwrap_or_default();
    let cpu_percent = match prev.node {
        Some(p) if node.total > p.total => {
            (node.busy.saturating_sub(p.busy)) as f64 / (node.total - p.total) as f64 * 100.0
        }
        _ => 0.0,
    };
    let mut next = Prev {
        at: Some(at),
        node: Some(node),
        cpu: HashMap::new(),
    };
    let mut tasks = Vec::new();
    for c in rt.list() {
        let labels = &c.config.labels;
        let (Some(task), Some(pid)) = (labels.get(TASK_LABEL), c.state.pid) else {
            continue;
        };
        if !matches!(c.state.status, gantry_runtime::Status::Running) {
            continue;
        }
        let Ok(cg) = rt.cgroup(&c.config.id).stats() else {
            continue;
        };
        let cpu = match (secs, prev.cpu.get(task)) {
            (Some(s), Some(&p)) if s > 0.0 => {
                cg.cpu_usage_ns.saturating_sub(p) as f64 / (s * 1e9) * 100.0
            }
            _ => 0.0,
        };
        next.cpu.insert(task.clone(), cg.cpu_usage_ns);
        let own_net = !matches!(c.config.network, gantry_runtime::NetworkMode::Host);
        let net = own_net
            .then(|| gantry_runtime::stats::net_of(pid).ok())
            .flatten()
            .map(|n| [n.rx_bytes, n.rx_packets, n.tx_bytes, n.tx_packets]);
        tasks.push(TaskStats {
            task: task.clone(),
            service: labels.get(SERVICE_LABEL).cloned().unwrap_or_default(),
            stack: labels.get(STACK_LABEL).cloned().unwrap_or_default(),
            slot: labels
                .get(SLOT_LABEL)
                .and_then(|s| s.parse().ok())
                .unwrap_or(0),
            container: c.config.name.clone(),
            cpu_percent: cpu,
            cpu_ns: cg.cpu_usage_ns,
            throttled_periods: cg.nr_throttled,
            throttled_ns: cg.throttled_ns,
            memory_usage: cg.memory_usage,
            memory_working_set: cg.memory_usage.saturating_sub(cg.inactive_file),
            memory_limit: cg.memory_limit,
            oom_kills: cg.oom_kills,
            pids: cg.pids,
            blk_read: cg.blk_read,
            blk_write: cg.blk_write,
            net,
        });
    }
    tasks.sort_by(|a, b| a.task.cmp(&b.task));
    let s = NodeStats {
        time_ms: now_ms(),
        cpus: std::thread::available_parallelism().map_or(1, |n| n.get()) as u64,
        cpu_percent,
        mem_total: node.mem_total,
        mem_available: node.mem_available,
        tasks,
    };
    (s, next)
}
