//! Gantry's node agent. It joins the cluster once (token, then a node
//! certificate kept under its data dir), then:
//! - follows its assignment stream from the manager and makes the node's
//!   containers match it: a new task is pulled, created and started; a task
//!   that left the set is stopped and removed;
//! - watches its containers and runs their health checks (CMD, CMD-SHELL,
//!   and Gantry's HTTP and TCP checks); a task counts as running once
//!   healthy, and an unhealthy one is stopped and reported failed;
//! - reports everything it runs with every heartbeat, so that a restarted
//!   manager re-learns the node at once.
//!
//! When it starts again it re-adopts the task containers it finds instead
//! of killing them.
//!
//! **Architecture invariant:** the agent is a tokio program, and the
//! runtime forks; every runtime call that forks or waits goes through the
//! single-threaded helper ([`helper_main`], a re-exec of the `gantry`
//! binary), never from the agent's threads.

pub mod backup;
mod builds;
mod edge;
mod exits;
mod health;
mod helper;
mod http;
mod ingress;
mod logs;
mod metrics;
mod peer;
mod registry;
mod replica;
mod reports;
mod sim;
mod stats;
mod tasks;
mod volume_copy;
mod volume_jobs;
mod volumes;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use gantry_api::{ApiError, AssignmentUpdate, Assignments, Change, Client, NodeInfo, StatusReport};
use gantry_pki::Issued;

pub use edge::EdgeConfig;
pub use helper::helper_main;
pub use logs::Retention;
pub use sim::{simulate, SimConfig, SimStats};

pub use registry::ClusterRegistry;

/// How the agent runs.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// Images, containers and volumes; the node identity lives in
    /// `DATA_DIR/agent`.
    pub data_dir: PathBuf,
    /// The manager (`HOST[:PORT]`); taken from the identity if absent.
    pub manager: Option<String>,
    /// The join token, needed only for the first start.
    pub token: Option<String>,
    /// The address other nodes reach this one at (default: the local
    /// address of the route to the manager).
    pub advertise: Option<String>,
    /// Node labels given at join.
    pub labels: BTreeMap<String, String>,
    /// The host name to register (default: the system's).
    pub hostname: Option<String>,
    /// Between heartbeats.
    pub heartbeat: Duration,
    /// The `gantry` binary, for the single-threaded runtime helper.
    pub helper: PathBuf,
    /// How images are pulled.
    pub registry: gantry_image::RegistryOptions,
    /// The edge proxy, unless `None`.
    pub edge: Option<EdgeConfig>,
    /// Where `/metrics` is served (Prometheus), unless `None`.
    pub metrics: Option<std::net::SocketAddr>,
    /// How long and how much of ended tasks' logs are kept.
    pub log_retention: Retention,
    /// Whether traffic between tasks takes the overlay's BPF fast path
    /// (`gantry-net::fastpath`) where the kernel has it.
    pub fast_path: bool,
    /// The port it serves image blobs to the other nodes on (none: it
    /// does not, and fetches from the managers only).
    pub peer_port: Option<u16>,
}

/// An agent failure.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// Joining failed.
    #[error("join: {0}")]
    Join(#[from] gantry_api::JoinError),
    /// The API failed.
    #[error(transparent)]
    Api(#[from] ApiError),
    /// Nothing to go on.
    #[error("{0}")]
    Config(String),
    /// I/O.
    #[error("{0}: {1}")]
    Io(String, std::io::Error),
}

/// What a node keeps after joining: its id, the manager, the cluster CA
/// and its own certificate and key.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Identity {
    /// The node id the manager gave.
    pub node_id: String,
    /// The manager's address.
    pub manager: String,
    /// Every manager's address, tried in turn when `manager` cannot be
    /// reached (kept current from the managers' answers).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub managers: Vec<String>,
    /// The cluster CA.
    pub ca_pem: String,
    /// The node certificate.
    pub cert_pem: String,
    /// Its key.
    pub key_pem: String,
}

impl Identity {
    fn path(data_dir: &Path) -> PathBuf {
        data_dir.join("agent/identity.json")
    }

    /// The identity saved under `data_dir`, if any.
    pub fn load(data_dir: &Path) -> Option<Self> {
        serde_json::from_slice(&std::fs::read(Self::path(data_dir)).ok()?).ok()
    }

    /// Saves it under `data_dir`, readable by root only.
    pub fn save(&self, data_dir: &Path) -> Result<(), AgentError> {
        let p = Self::path(data_dir);
        gantry_api::write_secret(&p, self)
            .map_err(|e| AgentError::Io(format!("write {}", p.display()), e))
    }
}

/// The node's facts as the manager wants them.
pub fn node_info(cfg: &AgentConfig, manager: &str) -> NodeInfo {
    let hostname = cfg.hostname.clone().unwrap_or_else(|| {
        nix::unistd::gethostname()
            .ok()
            .and_then(|h| h.into_string().ok())
            .unwrap_or_else(|| "localhost".into())
    });
    let addr = cfg.advertise.clone().unwrap_or_else(|| {
        // The local end of the route to the manager.
        gantry_api::resolve(manager)
            .ok()
            .and_then(|m| {
                let s = std::net::UdpSocket::bind(("0.0.0.0", 0)).ok()?;
                s.connect(m).ok()?;
                Some(s.local_addr().ok()?.ip().to_string())
            })
            .unwrap_or_default()
    });
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get()) as u64;
    let memory = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        })
        .unwrap_or(0)
        * 1024;
    let disk = nix::sys::statvfs::statvfs(&cfg.data_dir)
        .map(|s| s.blocks_available() * s.fragment_size())
        .unwrap_or(0);
    NodeInfo {
        hostname,
        addr,
        arch: std::env::consts::ARCH.to_owned(),
        nano_cpus: cpus * 1_000_000_000,
        memory,
        disk,
        labels: cfg.labels.clone(),
        vtep_mac: None,
        volumes: None,
        peer_port: cfg.peer_port,
    }
}

/// Joins with the token unless an identity exists (or is given).
pub async fn identity(cfg: &AgentConfig) -> Result<Identity, AgentError> {
    if let Some(mut id) = Identity::load(&cfg.data_dir) {
        if let Some(m) = &cfg.manager {
            id.manager = m.clone();
        }
        return Ok(id);
    }
    let manager = cfg.manager.clone().ok_or_else(|| {
        AgentError::Config(
            "this node has not joined a cluster yet: give --manager and --token".into(),
        )
    })?;
    let token = cfg.token.clone().ok_or_else(|| {
        AgentError::Config(
            "this node has not joined a cluster yet: give --token (from `gantry join-token` on the manager)"
                .into(),
        )
    })?;
    let info = node_info(cfg, &manager);
    let (resp, key_pem) = Client::join(&manager, &token, info).await?;
    let id = Identity {
        node_id: resp.node_id,
        manager,
        managers: Vec::new(),
        ca_pem: resp.ca_pem,
        cert_pem: resp.cert_pem,
        key_pem,
    };
    id.save(&cfg.data_dir)?;
    tracing::info!(node = %id.node_id, "joined the cluster");
    Ok(id)
}

/// Removes everything the agent made on this host: its task containers
/// and the overlay's devices (with every route and entry on them). Call it
/// from a single-threaded process (it removes containers).
pub fn cleanup(data_dir: &Path) -> Result<usize, AgentError> {
    let mut removed = 0;
    let mut failed = Vec::new();
    if let Ok(rt) = gantry_runtime::Runtime::new(data_dir) {
        for c in rt.list() {
            if c.config.labels.contains_key(tasks::TASK_LABEL) {
                // Keep going: everything that can go, goes.
                match rt.remove(&c.config.id, true) {
                    Ok(()) => removed += 1,
                    Err(e) => failed.push(format!("remove {}: {e}", c.config.name)),
                }
            }
        }
        // Sized volumes' filesystems (their files stay).
        rt.volumes().unmount_all();
    }
    if let Err(e) = gantry_net::Overlay::cleanup() {
        failed.push(e.to_string());
    }
    if failed.is_empty() {
        Ok(removed)
    } else {
        Err(AgentError::Config(failed.join("; ")))
    }
}

/// Runs the agent until the process ends.
pub async fn run(mut cfg: AgentConfig, id: Identity) -> Result<(), AgentError> {
    let own = cfg.data_dir.join("agent");
    gantry_runtime::private_dir(&own)
        .map_err(|e| AgentError::Io(format!("create {}", own.display()), e))?;
    let me = Issued {
        cert_pem: id.cert_pem.clone(),
        key_pem: id.key_pem.clone(),
    };
    // Presented and trusted live: renewed and rotated in place
    // (`renew_cert`).
    let live = gantry_pki::LiveCert::new(&me)
        .map_err(|e| AgentError::Config(format!("node credential: {e}")))?;
    let trust = gantry_pki::Trust::new(&id.ca_pem)
        .map_err(|e| AgentError::Config(format!("node credential: {e}")))?;
    let tls = trust
        .client_config(live.clone())
        .map_err(|e| AgentError::Config(format!("node credential: {e}")))?;
    let client = Client::with_managers(&id.manager, &id.managers, tls.clone())?;
    // Images in the cluster's registry come over this connection, with
    // the node's certificate, or from the other nodes that have them; the
    // blobs this node holds go to them in turn.
    let mut serving = None;
    // The runtime, once the agent has made it (the peer port removes
    // volumes with it).
    let peer_rt: Arc<std::sync::OnceLock<Arc<gantry_runtime::Runtime>>> = Arc::default();
    if let Some(port) = cfg.peer_port {
        match tokio::net::TcpListener::bind(("0.0.0.0", port)).await {
            Ok(l) => {
                let server = trust
                    .server_config_join(live.clone())
                    .map_err(|e| AgentError::Config(format!("node credential: {e}")))?;
                crate::builds::clean(&cfg.data_dir);
                let builder = crate::builds::Builder {
                    data_dir: cfg.data_dir.clone(),
                    exe: cfg.helper.clone(),
                    insecure: cfg.registry.insecure.clone(),
                };
                tokio::spawn(peer::serve(l, Arc::new(server), builder, peer_rt.clone()));
                serving = Some(port);
            }
            Err(e) => tracing::warn!(port, "not serving blobs to the other nodes: {e}"),
        }
    }
    cfg.registry.cluster = Some(Arc::new(match serving {
        Some(port) => ClusterRegistry::with_peers(client.fork()?, port, tls.clone()),
        None => ClusterRegistry::new(client.fork()?),
    }));
    let kept = Arc::new(Mutex::new(id.clone()));
    tokio::spawn(renew_cert(
        client.clone(),
        live,
        trust,
        cfg.data_dir.clone(),
        kept.clone(),
    ));
    tokio::spawn(remember_managers(
        client.clone(),
        cfg.data_dir.clone(),
        kept,
    ));
    let underlay = node_info(&cfg, &id.manager).addr;
    let agent = Arc::new(tasks::Agent::new(
        cfg.clone(),
        id.node_id.clone(),
        underlay.parse().ok(),
    ));
    let edge = match &cfg.edge {
        Some(e) => {
            let edge = edge::Edge::start(e, client.clone()).await?;
            agent.set_edge(edge.clone());
            Some(edge)
        }
        None => None,
    };
    let host = node_info(&cfg, &id.manager).hostname;
    let stats = Arc::new(stats::Stats::default());
    let measured = Arc::new(volumes::Measured::default());
    if let Some(rt) = &agent.rt {
        tokio::spawn(stats.clone().run(rt.clone()));
        tokio::spawn(measured.clone().run(rt.clone()));
        let _ = peer_rt.set(rt.clone());
    }
    if let Some(addr) = cfg.metrics {
        let l = tokio::net::TcpListener::bind(addr).await.map_err(|e| {
            AgentError::Io(
                format!("metrics: listen on {addr} (change it with --metrics ADDR)"),
                e,
            )
        })?;
        tracing::info!(addr = ?l.local_addr().ok(), "metrics on /metrics");
        tokio::spawn(metrics::serve(
            l,
            edge,
            stats.clone(),
            agent.clone(),
            host.clone(),
        ));
    }
    agent.adopt();
    if let Some(rt) = &agent.rt {
        let host = node_info(&cfg, &id.manager).hostname;
        tokio::spawn(logs::serve(
            rt.clone(),
            cfg.data_dir.clone(),
            host,
            client.clone(),
        ));
        tokio::spawn(logs::retain(cfg.data_dir.clone(), cfg.log_retention));
    }
    tokio::spawn(agent.clone().monitor());
    let beat_client = client.fork()?;
    tokio::spawn(watch(agent.clone(), client));
    // Heartbeats have a thread, a runtime and a connection of their own:
    // however busy the node's runtime is with starts, stops, pulls and
    // health checks, its heartbeat still leaves on time, so a loaded node
    // is not taken for a dead one.
    let manager = id.manager.clone();
    let beat = std::thread::Builder::new()
        .name("heartbeat".into())
        .spawn(move || -> Result<(), AgentError> {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| AgentError::Io("heartbeat runtime".into(), e))?;
            rt.block_on(async move {
                report(agent, beat_client, cfg, manager, stats, measured).await;
                Ok(())
            })
        })
        .map_err(|e| AgentError::Io("heartbeat thread".into(), e))?;
    match tokio::task::spawn_blocking(move || beat.join()).await {
        Ok(Ok(r)) => r,
        _ => Err(AgentError::Config("the heartbeat thread panicked".into())),
    }
}

/// Keeps the identity's list of managers as the managers' answers give
/// it, so that a restarted agent finds the others when its first manager
/// is gone.
async fn remember_managers(client: Client, data_dir: PathBuf, id: Arc<Mutex<Identity>>) {
    loop {
        tokio::time::sleep(std::time::Duration::from_secs(5)).await;
        let mut now = client.managers();
        now.sort();
        let mut id = id.lock().expect("identity lock");
        let mut kept = id.managers.clone();
        kept.sort();
        if now != kept {
            id.managers = now;
            match id.save(&data_dir) {
                Ok(()) => tracing::info!(managers = ?id.managers, "the managers changed"),
                Err(e) => tracing::warn!("saving the managers: {e}"),
            }
        }
    }
}

/// Renews the node certificate when a third of its life is left, or when
/// the managers trust other roots than the node does (a CA rotation:
/// the answers' `X-Gantry-Trust`); the new certificate and roots hold from
/// the next handshake on.
async fn renew_cert(
    client: Client,
    live: Arc<gantry_pki::LiveCert>,
    trust: Arc<gantry_pki::Trust>,
    data_dir: PathBuf,
    id: Arc<Mutex<Identity>>,
) {
    use std::time::Duration;
    let now_ms = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0)
    };
    let mut seen = client.trust_seen();
    loop {
        let pem = id.lock().expect("identity lock").cert_pem.clone();
        let at = match gantry_pki::renew_at_ms(&pem) {
            Ok(at) => at,
            Err(e) => {
                tracing::warn!("the node certificate: {e}");
                return;
            }
        };
        let wanted = seen.borrow_and_update().clone();
        let rotated = !wanted.is_empty() && wanted != trust.id();
        if !rotated && at > now_ms() {
            let wait = Duration::from_millis(at.saturating_sub(now_ms()));
            tokio::select! {
                _ = tokio::time::sleep(wait.clamp(Duration::from_secs(1), Duration::from_secs(3600))) => {}
                r = seen.changed() => if r.is_err() { return },
            }
            continue;
        }
        if rotated {
            // Every node sees the change at once: spread their renewals.
            let jitter = u64::from(
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap_or_default()
                    .subsec_nanos(),
            ) % 2000;
            tokio::time::sleep(Duration::from_millis(jitter)).await;
        }
        let renewed = async {
            let (key_pem, csr_pem) = gantry_pki::new_request().map_err(|e| e.to_string())?;
            let r: gantry_api::RenewResponse = client
                .post("/v1/agent/renew", &gantry_api::RenewRequest { csr_pem })
                .await
                .map_err(|e| e.to_string())?;
            let me = Issued {
                cert_pem: r.cert_pem,
                key_pem,
            };
            trust.set(&r.ca_pem).map_err(|e| e.to_string())?;
            live.replace(&me).map_err(|e| e.to_string())?;
            let mut id = id.lock().expect("identity lock");
            id.cert_pem = me.cert_pem;
            id.key_pem = me.key_pem;
            id.ca_pem = r.ca_pem;
            id.save(&data_dir).map_err(|e| e.to_string())
        };
        match renewed.await {
            Ok(()) => tracing::info!(rotation = rotated, "the node certificate was renewed"),
            Err(e) => {
                tracing::warn!("renewing the node certificate: {e}");
                tokio::time::sleep(Duration::from_secs(10)).await;
                continue;
            }
        }
        if rotated && *seen.borrow() != trust.id() {
            // The managers do not agree yet (one applied the change
            // before the others): not in a loop.
            tokio::time::sleep(Duration::from_secs(5)).await;
        }
    }
}

/// The assignment stream: each line changes the set held (the first is
/// whole); a line out of order drops the stream, and the next one starts
/// with a whole set again. Applying the set to the node is coalesced:
/// at most once per [`APPLY_EVERY`], however many lines came.
async fn watch(agent: Arc<tasks::Agent>, client: Client) {
    let held: Arc<Mutex<Option<Assignments>>> = Arc::default();
    let dirty = Arc::new(tokio::sync::Notify::new());
    tokio::spawn(apply(agent, held.clone(), dirty.clone()));
    let mut backoff = Duration::from_millis(100);
    loop {
        let mut last = 0u64;
        let (h2, d2) = (held.clone(), dirty.clone());
        let r = client
            .watch("/v1/agent/watch", move |u: AssignmentUpdate| {
                let mut held = h2.lock().expect("held lock");
                match u.change {
                    Change::Full(mut set) => {
                        // A locked manager withholds the certificates:
                        // the proxies keep serving those they have.
                        if set.certs_withheld {
                            set.certs = held.as_ref().map(|h| h.certs.clone()).unwrap_or_default();
                        }
                        *held = Some(*set)
                    }
                    Change::Delta(d) => match held.as_mut() {
                        Some(set) if last > 0 && u.seq == last + 1 => set.apply(*d),
                        _ => {
                            tracing::warn!(
                                seq = u.seq,
                                last,
                                "assignment line out of order; reconnecting"
                            );
                            return false;
                        }
                    },
                }
                last = u.seq;
                d2.notify_one();
                true
            })
            .await;
        match r {
            Ok(()) => {
                tracing::info!("assignment stream ended; reconnecting");
                backoff = Duration::from_millis(100);
            }
            Err(e) => tracing::warn!("assignment stream: {e}"),
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(1));
    }
}

/// Between two applications of the assignment set to the node.
const APPLY_EVERY: Duration = Duration::from_millis(100);

async fn apply(
    agent: Arc<tasks::Agent>,
    held: Arc<Mutex<Option<Assignments>>>,
    dirty: Arc<tokio::sync::Notify>,
) {
    loop {
        dirty.notified().await;
        let set = held.lock().expect("held lock").clone();
        if let Some(set) = set {
            agent.assign(set);
        }
        tokio::time::sleep(APPLY_EVERY).await;
    }
}

async fn report(
    agent: Arc<tasks::Agent>,
    client: Client,
    cfg: AgentConfig,
    manager: String,
    stats: Arc<stats::Stats>,
    measured: Arc<volumes::Measured>,
) {
    let info = Mutex::new(node_info(&cfg, &manager));
    let mut failing = false;
    // The figures change every few seconds; heartbeats in between (and
    // those sent at once on a change) leave them out.
    let mut stats_sent = 0;
    let mut reports = reports::TaskReports::default();
    // The volume list goes when it changed since the manager last took
    // it, and every minute (in case the manager's record was reset).
    let mut volumes_sent: Option<(Vec<String>, std::time::Instant)> = None;
    // The volumes' figures: the changes since what the manager took, and
    // all of them now and then.
    let mut measured_sent = 0;
    let mut held: Option<(
        std::collections::BTreeMap<String, gantry_api::VolumeStat>,
        std::time::Instant,
    )> = None;
    loop {
        let mut facts = info.lock().expect("info lock").clone();
        facts.vtep_mac = agent.vtep_mac();
        let volumes = agent.volume_names();
        let stale = volumes_sent.as_ref().is_none_or(|(v, at)| {
            *v != volumes || at.elapsed() > std::time::Duration::from_secs(60)
        });
        facts.volumes = stale.then(|| volumes.clone());
        if volumes_sent.as_ref().is_some_and(|(v, _)| *v != volumes) {
            measured.changed();
        }
        let full = measured.newer_than(measured_sent);
        let figures = full.as_ref().map(|f| match &held {
            Some((h, at))
                if at.elapsed()
                    < std::time::Duration::from_secs(gantry_api::VOLUME_FULL_REPORT_SECS) =>
            {
                gantry_api::VolumeReport::delta(h, &f.volumes, f.time_ms)
            }
            _ => f.clone(),
        });
        let all = agent.statuses();
        let (tasks, partial) = reports.select(&all);
        let report = StatusReport {
            info: facts,
            tasks,
            stats: stats.latest().filter(|s| s.time_ms != stats_sent),
            partial,
            volumes: figures.filter(|v| !v.partial || !v.volumes.is_empty() || !v.gone.is_empty()),
        };
        match client.post::<_, ()>("/v1/agent/status", &report).await {
            Ok(()) => {
                reports.accepted(all, partial);
                if stale {
                    volumes_sent = Some((volumes, std::time::Instant::now()));
                }
                if let Some(s) = &report.stats {
                    stats_sent = s.time_ms;
                }
                if let Some(f) = full {
                    measured_sent = f.time_ms;
                    let at = match (&report.volumes, &held) {
                        (Some(v), Some((_, at))) if v.partial => *at,
                        (None, Some((_, at))) => *at,
                        _ => std::time::Instant::now(),
                    };
                    held = Some((
                        f.volumes.into_iter().map(|v| (v.name.clone(), v)).collect(),
                        at,
                    ));
                }
                if failing {
                    tracing::info!("manager reachable again");
                }
                failing = false;
            }
            Err(e) => {
                reports.failed();
                if !failing {
                    tracing::warn!("heartbeat: {e}");
                }
                failing = true;
            }
        }
        agent.forget_ended();
        tokio::select! {
            _ = agent.changed.notified() => {}
            _ = tokio::time::sleep(cfg.heartbeat) => {}
        }
    }
}
