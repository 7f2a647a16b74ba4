//! Simulated nodes for the scale harness: many agents in one process that
//! join with the token and then speak the real protocol over mutual TLS,
//! each with its own certificate and connections (the assignment stream,
//! applying its numbered changes, and heartbeats that report the tasks
//! that changed and every tenth all of them, as the agent's do),
//! without running containers: a task is reported running as soon as it is
//! assigned, and shut down as soon as it is withdrawn.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use gantry_api::{
    AssignmentUpdate, Assignments, Change, Client, NodeInfo, StatusReport, TaskState, TaskStatus,
};
use gantry_pki::{ClusterCa, Issued};
use tokio::sync::{Notify, Semaphore};

use crate::AgentError;

/// How the simulated nodes run.
#[derive(Debug, Clone)]
pub struct SimConfig {
    /// The manager (`HOST:PORT`).
    pub manager: String,
    /// The join token.
    pub token: String,
    /// How many nodes.
    pub nodes: usize,
    /// Host names are `PREFIX-N`.
    pub prefix: String,
    /// Between heartbeats.
    pub heartbeat: Duration,
    /// Joins under way at once.
    pub joins: usize,
    /// Volumes each node has and reports.
    pub volumes: usize,
}

/// Counts the harness prints.
#[derive(Debug, Default)]
pub struct SimStats {
    /// Nodes that joined.
    pub joined: std::sync::atomic::AtomicUsize,
    /// Tasks the nodes report running, together.
    pub running: std::sync::atomic::AtomicUsize,
    /// Assignment lines received.
    pub lines: std::sync::atomic::AtomicU64,
    /// Bytes of assignment lines received.
    pub bytes: std::sync::atomic::AtomicU64,
    /// Streams dropped for a line out of order.
    pub resyncs: std::sync::atomic::AtomicU64,
}

/// One simulated node's tasks, as it reports them.
#[derive(Default)]
struct Node {
    /// Task id to its status; ended ones are reported once more.
    tasks: Mutex<BTreeMap<String, TaskStatus>>,
    changed: Notify,
}

/// Joins `cfg.nodes` nodes and runs them until the process ends.
pub async fn simulate(cfg: SimConfig, stats: Arc<SimStats>) -> Result<(), AgentError> {
    // Heartbeats have a thread, a runtime and connections of their own, as
    // the real agent's do: however busy the streams keep this runtime, the
    // nodes' heartbeats leave on time, so the harness measures the manager
    // and not its own starvation.
    let (beats, mut joined) = tokio::sync::mpsc::unbounded_channel::<(usize, Arc<Node>, Tls)>();
    let bcfg = cfg.clone();
    std::thread::Builder::new()
        .name("sim-heartbeats".into())
        .spawn(move || -> Result<(), AgentError> {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| AgentError::Io("heartbeat runtime".into(), e))?;
            rt.block_on(async move {
                while let Some((i, node, tls)) = joined.recv().await {
                    match Client::new(&bcfg.manager, tls) {
                        Ok(client) => {
                            tokio::spawn(beat(bcfg.clone(), i, node, client));
                        }
                        Err(e) => tracing::warn!("simulated node {i}: heartbeat client: {e}"),
                    }
                }
            });
            Ok(())
        })
        .map_err(|e| AgentError::Io("heartbeat thread".into(), e))?;
    let joins = Arc::new(Semaphore::new(cfg.joins.max(1)));
    let mut set = tokio::task::JoinSet::new();
    for i in 0..cfg.nodes {
        let (cfg, stats, joins, beats) = (cfg.clone(), stats.clone(), joins.clone(), beats.clone());
        set.spawn(async move {
            let tls = {
                let _turn = joins.acquire().await;
                join(&cfg, i).await?
            };
            let client = Client::new(&cfg.manager, tls.clone())?;
            stats
                .joined
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let node = Arc::new(Node::default());
            let _ = beats.send((i, node.clone(), tls));
            watch(node, client, stats).await;
            Ok::<(), AgentError>(())
        });
    }
    while let Some(r) = set.join_next().await {
        match r {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(e),
            Err(e) => return Err(AgentError::Config(format!("simulated node: {e}"))),
        }
    }
    Ok(())
}

type Tls = rustls::ClientConfig;

fn info(cfg: &SimConfig, i: usize) -> NodeInfo {
    let [a, b] = (i as u16).to_be_bytes();
    NodeInfo {
        hostname: format!("{}-{i}", cfg.prefix),
        addr: format!("10.{}.{}.{}", 100 + (i >> 16) % 100, a, b),
        arch: std::env::consts::ARCH.to_owned(),
        nano_cpus: 4_000_000_000,
        memory: 16 << 30,
        disk: 100 << 30,
        labels: BTreeMap::new(),
        vtep_mac: Some(format!("02:5a:00:{:02x}:{a:02x}:{b:02x}", (i >> 16) as u8)),
        volumes: None,
        peer_port: None,
    }
}

async fn join(cfg: &SimConfig, i: usize) -> Result<Tls, AgentError> {
    let mut backoff = Duration::from_millis(200);
    let (resp, key_pem) = loop {
        match Client::join(&cfg.manager, &cfg.token, info(cfg, i)).await {
            Ok(r) => break r,
            Err(e) if backoff < Duration::from_secs(20) => {
                tracing::debug!("simulated node {i}: join: {e}; again");
                tokio::time::sleep(backoff).await;
                backoff *= 2;
            }
            Err(e) => return Err(e.into()),
        }
    };
    let ca = ClusterCa::from_pem("", &resp.ca_pem, "");
    ca.client_config(&Issued {
        cert_pem: resp.cert_pem,
        key_pem,
    })
    .map_err(|e| AgentError::Config(format!("node credential: {e}")))
}

/// Follows the node's assignment stream: assigned tasks run at once,
/// withdrawn ones shut down.
async fn watch(node: Arc<Node>, client: Client, stats: Arc<SimStats>) {
    use std::sync::atomic::Ordering::Relaxed;
    // GANTRY_SIM_DUMP=1 prints every line received (to debug the harness).
    let dump = std::env::var_os("GANTRY_SIM_DUMP").is_some_and(|v| !v.is_empty() && v != "0");
    loop {
        let mut held: Option<Assignments> = None;
        let mut last = 0u64;
        let (n2, s2) = (node.clone(), stats.clone());
        let r = client
            .watch_raw("/v1/agent/watch", move |chunk| {
                s2.bytes.fetch_add(chunk.len() as u64, Relaxed);
                for line in chunk.split(|b| *b == b'\n') {
                    if line.iter().all(u8::is_ascii_whitespace) {
                        continue;
                    }
                    let Ok(u) = serde_json::from_slice::<AssignmentUpdate>(line) else {
                        return false;
                    };
                    s2.lines.fetch_add(1, Relaxed);
                    if dump {
                        eprintln!("{}", String::from_utf8_lossy(line));
                    }
                    match u.change {
                        Change::Full(set) => held = Some(*set),
                        Change::Delta(d) => match held.as_mut() {
                            Some(set) if last > 0 && u.seq == last + 1 => set.apply(*d),
                            _ => {
                                s2.resyncs.fetch_add(1, Relaxed);
                                return false;
                            }
                        },
                    }
                    last = u.seq;
                    if let Some(set) = &held {
                        settle(&n2, set, &s2);
                    }
                }
                true
            })
            .await;
        if let Err(e) = r {
            tracing::debug!("simulated node: stream: {e}");
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Makes the node's tasks match its set.
fn settle(node: &Node, set: &Assignments, stats: &SimStats) {
    use std::sync::atomic::Ordering::Relaxed;
    let mut tasks = node.tasks.lock().expect("tasks lock");
    let mut changed = false;
    for a in &set.tasks {
        tasks.entry(a.task.id.clone()).or_insert_with(|| {
            changed = true;
            stats.running.fetch_add(1, Relaxed);
            TaskStatus {
                id: a.task.id.clone(),
                state: TaskState::Running,
                exit_code: None,
                message: "started (simulated)".into(),
                container: None,
            }
        });
    }
    let wanted: std::collections::BTreeSet<&str> =
        set.tasks.iter().map(|a| a.task.id.as_str()).collect();
    for (id, st) in tasks.iter_mut() {
        if !wanted.contains(id.as_str()) && st.state == TaskState::Running {
            st.state = TaskState::Shutdown;
            st.message = "stopped (simulated)".into();
            stats.running.fetch_sub(1, Relaxed);
            changed = true;
        }
    }
    if changed {
        node.changed.notify_one();
    }
}

/// Heartbeats: every interval and at once on a change, with the tasks that
/// changed (every task in every tenth, as the agent does).
async fn beat(cfg: SimConfig, i: usize, node: Arc<Node>, client: Client) {
    let mut facts = info(&cfg, i);
    // Spread the nodes' heartbeats over the interval.
    tokio::time::sleep(cfg.heartbeat.mul_f64((i % 100) as f64 / 100.0)).await;
    let mut reports = crate::reports::TaskReports::default();
    // Volumes as an agent reports them: the list and every figure first
    // (and the list every minute), then every 30 s one volume's figures
    // that changed.
    let names: Vec<String> = (0..cfg.volumes).map(|k| format!("vol-{k}")).collect();
    let stat = |name: &str, used: u64| gantry_api::VolumeStat {
        name: name.to_owned(),
        mountpoint: format!("/var/lib/gantry/volumes/{name}/_data"),
        used,
        limit: Some(10 << 30),
        free: Some((10 << 30) - used),
        created: "2026-12-04T00:00:00Z".into(),
        labels: BTreeMap::new(),
        options: [("size".to_owned(), "10g".to_owned())].into(),
    };
    let mut list_at: Option<std::time::Instant> = None;
    let mut figures_at: Option<std::time::Instant> = None;
    let mut round = 0u64;
    loop {
        let now = std::time::Instant::now();
        facts.volumes = (cfg.volumes > 0
            && list_at.is_none_or(|t| now - t > Duration::from_secs(60)))
        .then(|| names.clone());
        if facts.volumes.is_some() {
            list_at = Some(now);
        }
        let volumes = if cfg.volumes == 0 {
            None
        } else if figures_at.is_none() {
            figures_at = Some(now);
            Some(gantry_api::VolumeReport {
                time_ms: crate::stats::now_ms(),
                volumes: names.iter().map(|n| stat(n, 1 << 20)).collect(),
                partial: false,
                gone: Vec::new(),
            })
        } else if figures_at.is_some_and(|t| now - t > Duration::from_secs(30)) {
            figures_at = Some(now);
            round += 1;
            let k = (round as usize) % names.len();
            Some(gantry_api::VolumeReport {
                time_ms: crate::stats::now_ms(),
                volumes: vec![stat(&names[k], (1 << 20) + round * 4096)],
                partial: true,
                gone: Vec::new(),
            })
        } else {
            None
        };
        let all: Vec<TaskStatus> = node
            .tasks
            .lock()
            .expect("tasks lock")
            .values()
            .cloned()
            .collect();
        let (tasks, partial) = reports.select(&all);
        let report = StatusReport {
            info: facts.clone(),
            tasks,
            stats: None,
            partial,
            volumes,
        };
        if let Err(e) = client.post::<_, ()>("/v1/agent/status", &report).await {
            reports.failed();
            tracing::debug!("simulated node {i}: heartbeat: {e}");
        } else {
            reports.accepted(all, partial);
            // Ended tasks were reported once: forget them.
            node.tasks
                .lock()
                .expect("tasks lock")
                .retain(|_, s| s.state == TaskState::Running);
        }
        tokio::select! {
            _ = node.changed.notified() => {}
            _ = tokio::time::sleep(cfg.heartbeat) => {}
        }
    }
}
