//! The node's tasks: what the manager assigned, the containers that run
//! them, and their state as reported.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use gantry_api::{Assignment, Assignments, TaskState, TaskStatus};
use gantry_image::container::{container_config, Overrides};
use gantry_image::{ImageRef, LocalImage, Store};
use gantry_runtime::{
    ContainerConfig, Mount, MountKind, MountOptions, PortMapping, Runtime, Status, ANONYMOUS_LABEL,
};
use gantry_spec::{MountType as StackMount, PortMode, Service};
use tokio::sync::Notify;

use crate::health::Check;
use crate::helper;
use crate::AgentConfig;

mod container;
mod node_net;

/// Labels on every task container.
pub(crate) const TASK_LABEL: &str = "gantry.task.id";
pub(crate) const SERVICE_LABEL: &str = "gantry.service.name";
pub(crate) const SLOT_LABEL: &str = "gantry.task.slot";
pub(crate) const STACK_LABEL: &str = "gantry.stack.namespace";
const NODE_LABEL: &str = "gantry.node.id";

/// Ended tasks are still reported for this long, then forgotten.
const KEEP_ENDED: Duration = Duration::from_secs(30);

#[derive(Debug, Clone, Copy, PartialEq)]
enum Phase {
    /// Pulling and starting.
    Preparing,
    /// The container was started.
    Up,
    /// Stopping (or asked to while preparing).
    Stopping,
    /// The container ended or is gone.
    Ended(Instant),
}

struct Local {
    /// In the manager's latest assignment set (adopted tasks count as
    /// wanted until the first set says otherwise).
    wanted: bool,
    assignment: Option<Assignment>,
    container: Option<String>,
    status: TaskStatus,
    phase: Phase,
}

/// The node's overlay as set up, and the peers last programmed.
struct Net {
    overlay: gantry_net::Overlay,
    mac: [u8; 6],
    mtu: u32,
    peers: Vec<gantry_net::PeerNode>,
}

pub(crate) struct Agent {
    cfg: AgentConfig,
    node_id: String,
    /// The node's host name, as registered.
    hostname: String,
    /// The node's underlay address (the VXLAN source).
    underlay: Option<std::net::Ipv4Addr>,
    net: Mutex<Option<Net>>,
    /// The overlay's BPF fast path between tasks, once loaded.
    fast: Mutex<Option<gantry_net::FastPath>>,
    /// Services' virtual IPs, translated at the socket (none: the kernel
    /// cannot, and services' names answer their tasks instead).
    vips: Mutex<Option<gantry_net::Vips>>,
    /// Service discovery records, served on the node's gateway.
    pub(crate) dns: Arc<gantry_dns::Table>,
    /// Ingress-mode published ports.
    ingress: crate::ingress::Ingress,
    /// The firewall last applied.
    firewall: Mutex<Option<gantry_net::Firewall>>,
    pub(crate) rt: Option<Arc<Runtime>>,
    tasks: Mutex<BTreeMap<String, Local>>,
    /// Something worth reporting at once happened.
    pub(crate) changed: Notify,
    assigned: AtomicBool,
    /// The edge proxy, when this node runs one.
    edge: std::sync::OnceLock<Arc<crate::edge::Edge>>,
    /// Starts under way at once (pull, create, start): bounded, so that a
    /// big deployment queues instead of forking hundreds of helpers.
    starts: tokio::sync::Semaphore,
    /// Stops under way at once (each a helper that waits out the task's
    /// grace period): bounded, so that removing a big stack queues.
    stops: tokio::sync::Semaphore,
    /// One pull per image at a time: the tasks that wait for it find it
    /// pulled.
    pulls: Mutex<BTreeMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// A sweep for orphans is under way (one at a time).
    sweeping: AtomicBool,
    /// Orphan containers removed since the agent started.
    pub(crate) orphans_removed: std::sync::atomic::AtomicU64,
}

/// Between two sweeps for orphan containers.
pub(crate) const SWEEP_EVERY: Duration = Duration::from_secs(30);

/// Starts under way at once on a node.
const MAX_STARTS: usize = 4;

/// Stops under way at once on a node (mostly waiting for processes to
/// exit, so more than starts).
const MAX_STOPS: usize = 16;

fn status(id: &str, state: TaskState, message: impl Into<String>) -> TaskStatus {
    TaskStatus {
        id: id.to_owned(),
        state,
        exit_code: None,
        message: message.into(),
        container: None,
    }
}

fn terminal(s: TaskState) -> bool {
    matches!(s, TaskState::Failed | TaskState::Shutdown)
}

impl Agent {
    pub(crate) fn new(
        cfg: AgentConfig,
        node_id: String,
        underlay: Option<std::net::Ipv4Addr>,
    ) -> Self {
        let rt = match Runtime::new(&cfg.data_dir) {
            Ok(rt) => Some(Arc::new(rt)),
            Err(e) => {
                tracing::error!("runtime: {e}");
                None
            }
        };
        let vips = match rt.as_ref().map(|_| gantry_net::Vips::load()) {
            Some(Ok(v)) => Some(v),
            Some(Err(e)) => {
                tracing::warn!("{e}; services' names answer their tasks' addresses instead");
                None
            }
            None => None,
        };
        Self {
            hostname: crate::node_info(&cfg, "").hostname,
            cfg,
            node_id,
            underlay,
            net: Mutex::new(None),
            fast: Mutex::new(None),
            vips: Mutex::new(vips),
            dns: Arc::new(gantry_dns::Table::default()),
            ingress: crate::ingress::Ingress::default(),
            firewall: Mutex::new(None),
            rt,
            tasks: Mutex::new(BTreeMap::new()),
            changed: Notify::new(),
            assigned: AtomicBool::new(false),
            edge: std::sync::OnceLock::new(),
            starts: tokio::sync::Semaphore::new(MAX_STARTS),
            stops: tokio::sync::Semaphore::new(MAX_STOPS),
            pulls: Mutex::new(BTreeMap::new()),
            sweeping: AtomicBool::new(false),
            orphans_removed: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// Gives the agent its edge proxy (once).
    pub(crate) fn set_edge(&self, edge: Arc<crate::edge::Edge>) {
        let _ = self.edge.set(edge);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Local>> {
        self.tasks.lock().expect("tasks lock")
    }

    /// Takes back the task containers already on the node.
    pub(crate) fn adopt(&self) {
        let Some(rt) = &self.rt else { return };
        let mut map = self.lock();
        for c in rt.list() {
            let Some(task) = c.config.labels.get(TASK_LABEL) else {
                continue;
            };
            if c.config.labels.get(NODE_LABEL) != Some(&self.node_id) {
                continue;
            }
            let running = matches!(c.state.status, Status::Running | Status::Restarting);
            let mut st = if running {
                status(
                    task,
                    TaskState::Running,
                    "re-adopted after an agent restart",
                )
            } else {
                let mut s = status(task, TaskState::Failed, "ended while the agent was away");
                s.exit_code = c.state.exit_code;
                s
            };
            st.container = Some(c.config.id.clone());
            tracing::info!(task, container = %c.config.id, running, "re-adopted");
            map.insert(
                task.clone(),
                Local {
                    wanted: true,
                    assignment: None,
                    container: Some(c.config.id.clone()),
                    status: st,
                    phase: if running {
                        Phase::Up
                    } else {
                        Phase::Ended(Instant::now())
                    },
                },
            );
        }
    }

    /// What to report: every task the node knows of.
    pub(crate) fn statuses(&self) -> Vec<TaskStatus> {
        self.lock().values().map(|l| l.status.clone()).collect()
    }

    /// Forgets tasks that ended a while ago and have no container left.
    pub(crate) fn forget_ended(&self) {
        self.lock().retain(|_, l| match l.phase {
            Phase::Ended(t) => l.container.is_some() || t.elapsed() < KEEP_ENDED,
            _ => true,
        });
    }

    /// The names of the node's local volumes (at most
    /// [`gantry_api::MAX_NODE_VOLUMES`]), for the manager to place tasks
    /// that need an existing one.
    pub(crate) fn volume_names(&self) -> Vec<String> {
        let mut v = self
            .rt
            .as_ref()
            .map(|rt| rt.volumes().names())
            .unwrap_or_default();
        v.truncate(gantry_api::MAX_NODE_VOLUMES);
        v
    }

    /// Makes the node match a new assignment set.
    pub(crate) fn assign(self: &Arc<Self>, set: Assignments) {
        let first = !self.assigned.swap(true, Ordering::SeqCst);
        tracing::debug!(tasks = set.tasks.len(), "assignment set");
        self.network(&set);
        // Names and members are derived from the addresses held, once per
        // application (which is coalesced).
        let members = gantry_api::addrs::network_members(&set.addrs);
        if let Some(f) = self.fast.lock().expect("fast path lock").as_mut() {
            if let Err(e) = f.set_networks(&members) {
                tracing::warn!("{e}");
            }
        }
        // Virtual IPs first: a name answers one only once it leads
        // somewhere.
        let vips = match self.vips.lock().expect("vips lock").as_mut() {
            Some(v) => match v.set(&gantry_api::addrs::vip_backends(&set.addrs)) {
                Ok(()) => true,
                Err(e) => {
                    tracing::warn!("{e}");
                    false
                }
            },
            None => false,
        };
        self.dns
            .set(&gantry_api::addrs::dns_names(&set.addrs, vips));
        self.dns
            .set_aliases(&gantry_api::addrs::dns_aliases(&set.addrs, vips));
        self.dns
            .set_networks(&gantry_api::addrs::dns_members(&set.addrs));
        self.ingress.set(&set.ingress, &self.dns);
        if let Some(e) = self.edge.get() {
            e.apply(&set);
        }
        self.firewall(&set, &members);
        let wanted: BTreeMap<String, Assignment> = set
            .tasks
            .into_iter()
            .map(|a| (a.task.id.clone(), a))
            .collect();
        let mut map = self.lock();
        for (id, a) in &wanted {
            match map.get_mut(id) {
                None => {
                    map.insert(
                        id.clone(),
                        Local {
                            wanted: true,
                            assignment: Some(a.clone()),
                            container: None,
                            status: status(id, TaskState::Assigned, "preparing"),
                            phase: Phase::Preparing,
                        },
                    );
                    tokio::spawn(self.clone().start(id.clone()));
                }
                Some(l) if l.assignment.is_none() => {
                    // Re-adopted: now we know its spec, and its health check.
                    l.assignment = Some(a.clone());
                    if l.phase == Phase::Up {
                        if let (Some(check), Some(c)) = (self.check_of(a), l.container.clone()) {
                            tokio::spawn(self.clone().health(id.clone(), c, check, true));
                        }
                    }
                }
                Some(_) => {}
            }
        }
        for (id, l) in map.iter_mut() {
            if wanted.contains_key(id) {
                l.wanted = true;
                continue;
            }
            l.wanted = false;
            match l.phase {
                Phase::Preparing => l.phase = Phase::Stopping,
                Phase::Up => {
                    l.phase = Phase::Stopping;
                    tokio::spawn(self.clone().stop(id.clone(), true));
                }
                Phase::Ended(_) if l.container.is_some() => {
                    l.phase = Phase::Stopping;
                    tokio::spawn(self.clone().stop(id.clone(), true));
                }
                _ => {}
            }
        }
        if first {
            tracing::info!(tasks = wanted.len(), "first assignment set received");
        }
        drop(map);
        self.changed.notify_one();
        tokio::spawn(self.clone().sweep());
    }

    /// The task containers on the node that no task of the agent accounts
    /// for: labelled with a task it does not know (left by a crash, made by
    /// hand, or created after the manager gave the task up), or a second
    /// container of a task whose own container is another.
    fn orphans(&self) -> Vec<(String, String)> {
        let Some(rt) = &self.rt else {
            return Vec::new();
        };
        let found: Vec<(String, String)> = rt
            .list()
            .into_iter()
            .filter_map(|c| Some((c.config.labels.get(TASK_LABEL)?.clone(), c.config.id)))
            .collect();
        let map = self.lock();
        found
            .into_iter()
            .filter(|(task, cid)| match map.get(task) {
                None => true,
                // A start under way: its container is not known yet, and
                // the start itself stops it if the task was given up.
                Some(l) if matches!(l.phase, Phase::Preparing | Phase::Stopping) => {
                    l.container.as_ref().is_some_and(|c| c != cid)
                }
                Some(l) => l.container.as_deref() != Some(cid.as_str()),
            })
            .collect()
    }

    /// Stops and removes orphan containers (see [`Agent::orphans`]). Runs
    /// after every assignment set and every [`SWEEP_EVERY`]; never before
    /// the first set, which tells what the manager wants here.
    pub(crate) async fn sweep(self: Arc<Self>) {
        if !self.assigned.load(Ordering::SeqCst) || self.sweeping.swap(true, Ordering::SeqCst) {
            return;
        }
        for (task, cid) in self.orphans() {
            tracing::warn!(task, container = %cid, "removing an orphan task container");
            let (h, d) = (&self.cfg.helper, &self.cfg.data_dir);
            let wait = Duration::from_secs(40);
            let r = match helper::call(h, d, &["stop", &cid, "10"], None, wait).await {
                Ok((0, _)) => helper::call(h, d, &["rm", &cid], None, wait).await,
                other => other,
            };
            match r {
                Ok((0, _)) => self.orphans_removed.fetch_add(1, Ordering::Relaxed),
                Ok((_, e)) | Err(e) => {
                    tracing::warn!(task, container = %cid, "orphan: {e}");
                    0
                }
            };
        }
        self.sweeping.store(false, Ordering::SeqCst);
    }

    fn check_of(&self, a: &Assignment) -> Option<Check> {
        let svc = &a.spec;
        let image = Store::open(&self.cfg.data_dir)
            .ok()
            .and_then(|s| s.resolve(&svc.image).ok())
            .and_then(|i| i.config.config.healthcheck.clone());
        Check::of(svc.healthcheck.as_ref(), image.as_ref())
    }

    fn set(&self, id: &str, f: impl FnOnce(&mut Local)) {
        if let Some(l) = self.lock().get_mut(id) {
            f(l);
        }
        self.changed.notify_one();
    }

    async fn start(self: Arc<Self>, id: String) {
        let r = {
            let Ok(_turn) = self.starts.acquire().await else {
                return;
            };
            // A task the manager gave up on while it waited is never
            // started: it just ends.
            let a = match self.lock().get(&id) {
                Some(l) if l.phase == Phase::Preparing => l.assignment.clone(),
                Some(_) => None,
                None => return,
            };
            let Some(a) = a else {
                self.clone().stop(id, true).await;
                return;
            };
            self.prepare_and_start(&a).await
        };
        let mut stop = false;
        let mut health = None;
        self.set(&id, |l| match r {
            Ok((cid, check)) => {
                l.container = Some(cid.clone());
                l.status.container = Some(cid.clone());
                if l.phase == Phase::Stopping {
                    stop = true;
                } else {
                    l.phase = Phase::Up;
                    match check {
                        Some(c) => {
                            l.status.message = "starting: waiting for the health check".into();
                            health = Some((cid, c));
                        }
                        None => {
                            l.status.state = TaskState::Running;
                            l.status.message = "started".into();
                        }
                    }
                }
            }
            Err(msg) => {
                tracing::warn!(task = %id, "cannot start: {msg}");
                l.status.state = TaskState::Failed;
                l.status.message = msg;
                l.phase = Phase::Ended(Instant::now());
            }
        });
        // On the fast path before its first health check passes, so that
        // traffic to a running task never waits for the monitor's sweep.
        self.sync_fast_path();
        if stop {
            self.clone().stop(id.clone(), true).await;
        } else if let Some((cid, c)) = health {
            self.health(id, cid, c, false).await;
        }
    }

    async fn prepare_and_start(&self, a: &Assignment) -> Result<(String, Option<Check>), String> {
        if let Some(why) = &a.blocked {
            return Err(why.clone());
        }
        let svc = &a.spec;
        let store = Store::open(&self.cfg.data_dir).map_err(|e| e.to_string())?;
        let img = match store.resolve(&svc.image) {
            Ok(i) => i,
            Err(gantry_image::StoreError::NotFound(_)) => {
                self.set(&a.task.id, |l| {
                    l.status.message = format!("pulling {}", svc.image)
                });
                let lock = self
                    .pulls
                    .lock()
                    .expect("pulls lock")
                    .entry(svc.image.clone())
                    .or_default()
                    .clone();
                let _one = lock.lock().await;
                match store.resolve(&svc.image) {
                    // Pulled by another task while this one waited.
                    Ok(i) => i,
                    Err(_) => {
                        let r = ImageRef::parse(&svc.image).map_err(|e| e.to_string())?;
                        gantry_image::pull(&store, &r, &self.cfg.registry, Arc::new(|_| {}))
                            .await
                            .map_err(|e| format!("pull {}: {e}", svc.image))?
                    }
                }
            }
            Err(e) => return Err(e.to_string()),
        };
        let check = Check::of(
            svc.healthcheck.as_ref(),
            img.config.config.healthcheck.as_ref(),
        );
        let cfg = self.container_config(a, svc, &store, &img)?;
        let req = helper::StartRequest {
            config: cfg,
            files: a.files.clone(),
        };
        let input = zeroize::Zeroizing::new(serde_json::to_vec(&req).map_err(|e| e.to_string())?);
        let cfg = req.config;
        let (code, err) = helper::call(
            &self.cfg.helper,
            &self.cfg.data_dir,
            &["start"],
            Some(input),
            Duration::from_secs(60),
        )
        .await?;
        if code != 0 {
            return Err(if err.is_empty() {
                format!("start failed (exit {code})")
            } else {
                err
            });
        }
        Ok((cfg.id, check))
    }

    /// Stops the task's container and, with `remove`, removes it.
    async fn stop(self: Arc<Self>, id: String, remove: bool) {
        let (cid, secs) = {
            let map = self.lock();
            let Some(l) = map.get(&id) else { return };
            let secs = l
                .assignment
                .as_ref()
                .map_or(10, |a| a.spec.stop_grace_period_ns.div_ceil(1_000_000_000));
            (l.container.clone(), secs)
        };
        let mut err = None;
        if let Some(cid) = &cid {
            let Ok(_turn) = self.stops.acquire().await else {
                return;
            };
            let h = &self.cfg.helper;
            let d = &self.cfg.data_dir;
            let wait = Duration::from_secs(secs + 30);
            match helper::call(h, d, &["stop", cid, &secs.to_string()], None, wait).await {
                Ok((0, _)) => {}
                Ok((_, e)) | Err(e) => err = Some(e),
            }
            if remove {
                // Its logs outlive it, under the retention.
                if let Some(rt) = &self.rt {
                    if let Err(e) = crate::logs::keep(rt, d, cid, self.cfg.log_retention) {
                        tracing::warn!(task = %id, "keeping the logs: {e}");
                    }
                }
                match helper::call(h, d, &["rm", cid], None, wait).await {
                    Ok((0, _)) => {}
                    Ok((_, e)) | Err(e) => err = Some(e),
                }
            }
        }
        if let Some(e) = &err {
            tracing::warn!(task = %id, "stop: {e}");
        }
        let mut again = false;
        self.set(&id, |l| {
            if remove && err.is_none() {
                l.container = None;
            }
            if !terminal(l.status.state) {
                l.status.state = TaskState::Shutdown;
                l.status.message = "stopped".into();
            }
            l.phase = Phase::Ended(Instant::now());
            // Unassigned while it was being stopped for another reason.
            if !remove && !l.wanted && l.container.is_some() {
                l.phase = Phase::Stopping;
                again = true;
            }
        });
        if again {
            Box::pin(self.stop(id, true)).await;
        }
    }

    /// Runs a task's health check until the task is no longer up. The task
    /// turns running at its first success; `retries` failures in a row
    /// (after the start period) make it failed, and its container stops.
    async fn health(self: Arc<Self>, id: String, cid: String, check: Check, adopted: bool) {
        let started = Instant::now();
        let mut failures = 0u32;
        let mut healthy = adopted;
        // Until the first success, probe every second (Docker's
        // start_interval); then every interval.
        let mut next = Duration::from_millis(200);
        loop {
            tokio::time::sleep(next).await;
            let ip = {
                let map = self.lock();
                match map.get(&id) {
                    Some(l) if l.phase == Phase::Up && l.container.as_deref() == Some(&cid) => {}
                    _ => return,
                }
                self.rt
                    .as_ref()
                    .and_then(|rt| rt.state(&cid).ok())
                    .and_then(|s| s.ip)
            };
            let r = check
                .probe(&self.cfg.helper, &self.cfg.data_dir, &cid, ip)
                .await;
            match r {
                Ok(()) => {
                    failures = 0;
                    if !healthy {
                        healthy = true;
                        self.set(&id, |l| {
                            if l.phase == Phase::Up && !terminal(l.status.state) {
                                l.status.state = TaskState::Running;
                                l.status.message = "healthy".into();
                            }
                        });
                    }
                }
                Err(e) => {
                    if !healthy && started.elapsed() < check.start_period {
                        // Grace: failures do not count yet.
                    } else {
                        failures += 1;
                        tracing::info!(task = %id, failures, "health check failed: {e}");
                        if failures >= check.retries {
                            let mut up = false;
                            self.set(&id, |l| {
                                if l.phase == Phase::Up {
                                    up = true;
                                    l.phase = Phase::Stopping;
                                    l.status.state = TaskState::Failed;
                                    l.status.message = format!("unhealthy: {e}");
                                }
                            });
                            if up {
                                self.clone().stop(id.clone(), false).await;
                            }
                            return;
                        }
                    }
                }
            }
            next = match check.start_interval {
                _ if healthy => check.interval,
                // start_interval paces the checks during the start period.
                Some(si) if started.elapsed() < check.start_period => si,
                _ => check.interval.min(Duration::from_secs(1)),
            };
        }
    }

    /// Watches the containers of tasks that are up; a container that ended
    /// makes its task failed (with its exit code). Exits are learnt from
    /// the containers' monitor processes ([`crate::exits`]), so the work
    /// is per exit, not per container and tick; the fast path's task
    /// ports are synced when the set of containers up changed, and in
    /// full at each full check.
    pub(crate) async fn monitor(self: Arc<Self>) {
        let Some(rt) = &self.rt else { return };
        let mut swept = Instant::now();
        let mut exits = crate::exits::Exits::new();
        let mut synced: Option<(BTreeSet<String>, Instant)> = None;
        loop {
            tokio::time::sleep(Duration::from_millis(200)).await;
            if swept.elapsed() >= SWEEP_EVERY {
                swept = Instant::now();
                tokio::spawn(self.clone().sweep());
            }
            let up: BTreeMap<String, String> = self
                .lock()
                .iter()
                .filter(|(_, l)| l.phase == Phase::Up)
                .filter_map(|(id, l)| Some((l.container.clone()?, id.clone())))
                .collect();
            let cids: BTreeSet<String> = up.keys().cloned().collect();
            let stale = synced
                .as_ref()
                .is_none_or(|(set, at)| *set != cids || at.elapsed() >= crate::exits::FULL_CHECK);
            if stale {
                self.sync_fast_path();
                synced = Some((cids.clone(), Instant::now()));
            }
            let due = exits.due(&cids, |cid| rt.state(cid).ok().and_then(|s| s.monitor_pid));
            let up: Vec<(String, String)> = due
                .into_iter()
                .filter_map(|cid| Some((up.get(&cid)?.clone(), cid)))
                .collect();
            for (id, cid) in up {
                let st = rt.state(&cid);
                let ended = match &st {
                    Ok(s) => !matches!(s.status, Status::Running | Status::Restarting),
                    Err(_) => true,
                };
                if !ended {
                    continue;
                }
                self.set(&id, |l| {
                    if l.phase != Phase::Up {
                        return;
                    }
                    l.phase = Phase::Ended(Instant::now());
                    l.status.state = TaskState::Failed;
                    match &st {
                        Ok(s) => {
                            l.status.exit_code = s.exit_code;
                            l.status.message = if s.oom_killed {
                                "OOM killed".into()
                            } else {
                                format!("exited with code {}", s.exit_code.unwrap_or(-1))
                            };
                        }
                        Err(e) => {
                            l.container = None;
                            l.status.message = format!("container gone: {e}");
                        }
                    }
                });
            }
        }
    }
}
