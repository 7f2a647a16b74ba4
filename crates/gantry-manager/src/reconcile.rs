//! One reconciliation step for one service: desired against actual, as
//! store [`Command`]s. Pure: the caller gives the state, the time and a way
//! to make task ids, and applies what comes back (then calls again; a
//! converged service yields nothing).
//!
//! What it does:
//! - a task on a node that is down, drained, gone or no longer eligible is
//!   shut down and its slot filled elsewhere at once (host failure),
//!   unless the storm guard holds the node (it stays put, and no service
//!   rebalances meanwhile);
//! - a failed task is replaced in its slot under the restart policy
//!   (condition, delay, max attempts), or left shut down;
//! - replicated services get slots `1..=replicas`, surplus slots are shut
//!   down; global services get one task per eligible node;
//! - new tasks are placed by the scheduler; those that fit nowhere wait as
//!   pending, with the scheduler's reason.

use std::collections::{BTreeMap, BTreeSet};

use gantry_sched::{Assigned, Cluster, Constraint, Node, Resources, TaskSpec};
use gantry_spec::{Mode, PortMode, Service};
use gantry_state::{Command, ServiceRecord, State, TaskRecord, TaskState, UpdateStatus};

/// Why a service cannot be reconciled at all.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReconcileError {
    /// No such service in the state.
    NoSuchService(String),
}

/// Rebalancing moves at most 1/this of a service's replicas per round.
const REBALANCE_SHARE: usize = 10;

const EXHAUSTED: &str = "restart attempts exhausted";
const NOT_RESTARTED: &str = "not restarted by policy";

fn live(t: &TaskRecord) -> bool {
    t.desired == TaskState::Running && !matches!(t.state, TaskState::Failed | TaskState::Shutdown)
}

fn holds_resources(t: &TaskRecord) -> bool {
    t.node.is_some()
        && t.desired == TaskState::Running
        && matches!(
            t.state,
            TaskState::Pending | TaskState::Assigned | TaskState::Running
        )
}

/// The cluster's default scoring strategy (`gantry server
/// --default-strategy`), kept in the state's metadata.
pub const DEFAULT_STRATEGY_KEY: &str = "default_strategy";

fn default_strategy(state: &State) -> gantry_sched::Strategy {
    match state.meta.get(DEFAULT_STRATEGY_KEY).map(String::as_str) {
        Some("binpack") => gantry_sched::Strategy::Binpack,
        _ => gantry_sched::Strategy::Spread,
    }
}

/// The scheduler's view of a service's tasks; `default` is the strategy
/// of services that name none.
pub fn task_spec(
    name: &str,
    stack: &str,
    s: &Service,
    default: gantry_sched::Strategy,
) -> TaskSpec {
    TaskSpec {
        service: name.to_owned(),
        reservations: Resources {
            nano_cpus: s.reservations.nano_cpus.unwrap_or(0),
            memory: s.reservations.memory.unwrap_or(0),
        },
        // The stack parser validated these already.
        constraints: s
            .constraints
            .iter()
            .filter_map(|c| Constraint::parse(c).ok())
            .collect(),
        spread_over: s.spread_over.first().cloned(),
        host_ports: s
            .ports
            .iter()
            .filter(|p| p.mode == PortMode::Host)
            .filter_map(|p| p.published)
            .collect(),
        volumes: s
            .volumes
            .iter()
            // (Anonymous volumes are each task's own: no affinity.)
            .filter(|m| m.kind == gantry_spec::MountType::Volume && !m.source.is_empty())
            .map(|m| m.volume_name(stack))
            .collect(),
        external_volumes: s
            .volumes
            .iter()
            .filter(|m| m.kind == gantry_spec::MountType::Volume && m.volume.external)
            .map(|m| m.volume_name(stack))
            .collect(),
        strategy: s.strategy.unwrap_or(default),
        max_per_node: s.max_replicas_per_node.unwrap_or(0),
    }
}

/// The first external volume of a service that no node has (none: each
/// is somewhere), for a deploy to refuse rather than leave its tasks
/// pending. Nodes down count: their volumes come back with them.
pub fn missing_external_volume(state: &State, stack: &str, s: &Service) -> Option<String> {
    s.volumes
        .iter()
        .filter(|m| m.kind == gantry_spec::MountType::Volume && m.volume.external)
        .map(|m| m.volume_name(stack))
        .find(|v| !state.nodes.values().any(|n| n.volumes.contains(v)))
}

/// The cluster as the scheduler sees it: nodes, every task that holds
/// resources on one, and where named volumes live (the node of the latest
/// task that used each: local volumes do not move).
pub fn snapshot(state: &State) -> Cluster {
    let nodes = state
        .nodes
        .values()
        .map(|n| Node {
            id: n.id.clone(),
            hostname: n.hostname.clone(),
            manager: n.manager,
            arch: n.arch.clone(),
            labels: n.labels.clone(),
            availability: n.availability,
            ready: n.up,
            capacity: n.capacity,
            volumes: n.volumes.clone(),
        })
        .collect();
    let mut reservations: BTreeMap<&str, (Resources, Vec<u16>)> = BTreeMap::new();
    let mut service_volumes: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    for (name, svc) in &state.services {
        let s = &svc.spec;
        let ts = task_spec(name, &svc.stack, s, gantry_sched::Strategy::Spread);
        reservations.insert(name, (ts.reservations, ts.host_ports));
        // Affinity is for a single replica (a database and its data);
        // replicas of a bigger service each use their node's own volume of
        // that name, as in Swarm.
        if s.mode == (Mode::Replicated { replicas: 1 }) {
            service_volumes.insert(name, ts.volumes);
        }
    }
    let mut volumes: BTreeMap<String, (u64, String)> = BTreeMap::new();
    for t in state.tasks.values() {
        let Some(node) = &t.node else { continue };
        // A task that never started made no volume.
        if matches!(t.state, TaskState::Pending | TaskState::Assigned)
            && t.desired != TaskState::Running
        {
            continue;
        }
        for v in service_volumes
            .get(t.service.as_str())
            .into_iter()
            .flatten()
        {
            let e = volumes.entry(v.clone()).or_insert((0, node.clone()));
            if t.updated_ms >= e.0 {
                *e = (t.updated_ms, node.clone());
            }
        }
    }
    let mut volumes: BTreeMap<String, String> =
        volumes.into_iter().map(|(v, (_, n))| (v, n)).collect();
    // A volume moved lives where it was moved to.
    for (v, n) in &state.volume_homes {
        volumes.insert(v.clone(), n.clone());
    }
    let tasks: Vec<Assigned> = state
        .tasks
        .values()
        .filter(|t| holds_resources(t))
        .map(|t| {
            let (res, ports) = reservations
                .get(t.service.as_str())
                .cloned()
                .unwrap_or_default();
            Assigned {
                node: t.node.clone().unwrap_or_default(),
                service: t.service.clone(),
                reservations: res,
                host_ports: ports,
            }
        })
        .collect();
    Cluster::new(nodes, &tasks, &volumes)
}

/// Whether a task runs something other than the service's current spec.
fn outdated(rec: &ServiceRecord, t: &TaskRecord) -> bool {
    if t.version == rec.version {
        return false;
    }
    match &rec.previous {
        Some((v, spec)) if *v == t.version => !spec.same_tasks(&rec.spec),
        _ => true,
    }
}

enum Rollout {
    /// Commands, and slots to fill with a task of the current version.
    Steps {
        commands: Vec<Command>,
        replace: Vec<u32>,
    },
    /// Stop here this round (rollback or pause decided).
    Stop(Vec<Command>),
}

/// The rolling update (or rollback) of a service's slots, health-gated:
/// a new task counts once it has run for `monitor` without failing; at
/// most `parallelism` are in flight; failures beyond `max_failure_ratio`
/// trigger `failure_action`.
fn rollout(
    rec: &ServiceRecord,
    svc: &Service,
    tasks: &[&TaskRecord],
    live: &[&TaskRecord],
    replicas: u32,
    now_ms: u64,
) -> Rollout {
    let mut commands = Vec::new();
    let set = |status: UpdateStatus| Command::SetUpdate {
        name: rec.name.clone(),
        status,
    };
    let old: Vec<&TaskRecord> = live.iter().copied().filter(|t| outdated(rec, t)).collect();
    let (since, rolling_back) = match &rec.update {
        UpdateStatus::Paused { .. } | UpdateStatus::RolledBack { .. } => {
            return Rollout::Steps {
                commands,
                replace: Vec::new(),
            };
        }
        UpdateStatus::Updating { since_ms } if *since_ms > 0 => (*since_ms, false),
        UpdateStatus::RollingBack { since_ms, .. } => (*since_ms, true),
        _ if old.is_empty() => {
            // Nothing left to replace (a first version, or old tasks that
            // all ended): the change is rolled out.
            if rec.update != UpdateStatus::Completed {
                commands.push(set(UpdateStatus::Completed));
            }
            return Rollout::Steps {
                commands,
                replace: Vec::new(),
            };
        }
        _ => {
            commands.push(set(UpdateStatus::Updating { since_ms: now_ms }));
            (now_ms, false)
        }
    };
    if old.is_empty() && rolling_back {
        commands.push(set(match &rec.update {
            UpdateStatus::RollingBack { reason, .. } => UpdateStatus::RolledBack {
                reason: reason.clone(),
            },
            _ => UpdateStatus::Completed,
        }));
        return Rollout::Steps {
            commands,
            replace: Vec::new(),
        };
    }
    let cfg = if rolling_back {
        &svc.rollback_config
    } else {
        &svc.update_config
    };
    let monitor_ms = cfg.monitor_ns / 1_000_000;
    let failed = tasks
        .iter()
        .filter(|t| {
            t.version == rec.version && t.state == TaskState::Failed && t.updated_ms >= since
        })
        .count();
    if !rolling_back && failed > 0 && failed as f64 > cfg.max_failure_ratio * f64::from(replicas) {
        let reason = format!(
            "{failed} task(s) of version {} failed during the update",
            rec.version
        );
        match cfg.failure_action.as_str() {
            "rollback" if rec.previous.is_some() => {
                commands.push(Command::RollbackService {
                    name: rec.name.clone(),
                    reason,
                    at_ms: now_ms,
                });
                return Rollout::Stop(commands);
            }
            "continue" => {}
            _ => {
                commands.push(set(UpdateStatus::Paused { reason }));
                return Rollout::Stop(commands);
            }
        }
    }
    // New-version tasks by slot, and which of them are still being watched.
    let new: Vec<&TaskRecord> = live.iter().copied().filter(|t| !outdated(rec, t)).collect();
    let in_flight = new
        .iter()
        .filter(|t| !settled(t, monitor_ms, now_ms) && t.updated_ms >= since)
        .count();
    if old.is_empty() {
        // Every old task is replaced; the update is done once the new
        // ones have run for `monitor` (with stop-first, the last old task
        // goes before its replacement is known to work: a failure of the
        // replacement must still trigger failure_action).
        if in_flight == 0 {
            commands.push(set(UpdateStatus::Completed));
        }
        return Rollout::Steps {
            commands,
            replace: Vec::new(),
        };
    }
    let parallelism = if cfg.parallelism == 0 {
        replicas as usize
    } else {
        cfg.parallelism as usize
    };
    let room = parallelism.saturating_sub(in_flight);
    let mut replace = Vec::new();
    let mut pending_old: Vec<&&TaskRecord> = old
        .iter()
        .filter(|o| !new.iter().any(|n| n.slot == o.slot))
        .collect();
    pending_old.sort_by_key(|t| t.slot);
    for o in pending_old.into_iter().take(room) {
        if cfg.order == "stop-first" {
            let mut t = (**o).clone();
            t.desired = TaskState::Shutdown;
            t.message = "replaced by the update".into();
            commands.push(Command::PutTask(t));
        }
        replace.push(o.slot);
    }
    Rollout::Steps { commands, replace }
}

/// Whether a task has run for `monitor_ms`.
fn settled(t: &TaskRecord, monitor_ms: u64, now_ms: u64) -> bool {
    t.state == TaskState::Running && now_ms >= t.updated_ms + monitor_ms
}

/// Where a slot (for a global service, a node) runs more than one task (a
/// start-first update, a rebalance move): once the newest has run for
/// `monitor_ms`, the others, to be shut down; and whether any slot had
/// more than one.
fn superseded<'a>(
    tasks: &[&'a TaskRecord],
    monitor_ms: u64,
    now_ms: u64,
) -> (Vec<&'a TaskRecord>, bool) {
    let mut by_slot: BTreeMap<u32, Vec<&TaskRecord>> = BTreeMap::new();
    for t in tasks {
        by_slot.entry(t.slot).or_default().push(t);
    }
    let mut doubled = false;
    let mut gone = Vec::new();
    for group in by_slot.values().filter(|g| g.len() > 1) {
        doubled = true;
        let newest = group
            .iter()
            .copied()
            .max_by_key(|t| (t.updated_ms, t.id.clone()))
            .expect("non-empty");
        if settled(newest, monitor_ms, now_ms) {
            gone.extend(group.iter().copied().filter(|t| t.id != newest.id));
        }
    }
    (gone, doubled)
}

/// The rolling update (or rollback) of a global service: the same
/// [`rollout`] as a replicated service's, each node standing for a slot,
/// so that its outdated tasks are replaced node by node as
/// `update_config` says. Two tasks on one node (start-first): once the
/// newest has run for `monitor`, the others go.
fn global_rollout(
    rec: &ServiceRecord,
    svc: &Service,
    tasks: &[&TaskRecord],
    live_tasks: &[&TaskRecord],
    now_ms: u64,
    new_id: &mut dyn FnMut() -> String,
    out: &mut Vec<Command>,
) {
    let mut nodes: Vec<&str> = tasks.iter().filter_map(|t| t.node.as_deref()).collect();
    nodes.sort_unstable();
    nodes.dedup();
    let slotted = |ts: &[&TaskRecord]| -> Vec<TaskRecord> {
        ts.iter()
            .filter_map(|t| {
                let i = nodes.binary_search(&t.node.as_deref()?).ok()?;
                let mut t = (*t).clone();
                t.slot = i as u32 + 1;
                Some(t)
            })
            .collect()
    };
    // Global tasks have no slot of their own.
    let unslotted = |c: Command| match c {
        Command::PutTask(mut t) => {
            t.slot = 0;
            Command::PutTask(t)
        }
        c => c,
    };
    let all = slotted(tasks);
    let kept = slotted(live_tasks);
    let all: Vec<&TaskRecord> = all.iter().collect();
    let kept: Vec<&TaskRecord> = kept.iter().collect();
    let monitor_ms = svc.update_config.monitor_ns / 1_000_000;
    for t in superseded(&kept, monitor_ms, now_ms).0 {
        let mut t = t.clone();
        t.desired = TaskState::Shutdown;
        t.message = "superseded on its node".into();
        out.push(unslotted(Command::PutTask(t)));
    }
    let on = kept.iter().map(|t| t.slot).collect::<BTreeSet<u32>>().len() as u32;
    match rollout(rec, svc, &all, &kept, on, now_ms) {
        Rollout::Stop(commands) => out.extend(commands.into_iter().map(unslotted)),
        Rollout::Steps { commands, replace } => {
            out.extend(commands.into_iter().map(unslotted));
            for slot in replace {
                out.push(Command::PutTask(TaskRecord {
                    id: new_id(),
                    service: rec.name.clone(),
                    version: rec.version,
                    slot: 0,
                    node: Some(nodes[slot as usize - 1].to_owned()),
                    desired: TaskState::Running,
                    state: TaskState::Assigned,
                    message: String::new(),
                    exit_code: None,
                    attempt: 0,
                    updated_ms: now_ms,
                    addr: None,
                }));
            }
        }
    }
}

/// Whether a dependency (a short name in the same stack) runs as wanted.
fn dependency_ready(state: &State, stack: &str, dep: &str) -> bool {
    let full = format!("{stack}_{dep}");
    let Some((name, rec)) = state
        .services
        .get_key_value(&full)
        .or_else(|| state.services.get_key_value(dep))
        .filter(|(_, r)| r.stack == stack)
    else {
        // Gone from the stack: nothing to wait for.
        return true;
    };
    let svc = &rec.spec;
    let wanted: Vec<&TaskRecord> = state
        .tasks_of(name)
        .filter(|t| t.desired == TaskState::Running)
        .collect();
    let running = wanted
        .iter()
        .filter(|t| t.state == TaskState::Running)
        .count();
    match svc.mode {
        Mode::Replicated { replicas } => running >= replicas as usize,
        Mode::Global => running > 0 && running == wanted.len(),
    }
}

/// One reconciliation step for service `name`, on a scheduler view built
/// for it alone (see [`reconcile_in`] to reconcile many services on one).
pub fn reconcile(
    state: &State,
    name: &str,
    now_ms: u64,
    new_id: &mut dyn FnMut() -> String,
) -> Result<Vec<Command>, ReconcileError> {
    reconcile_in(state, &mut snapshot(state), name, now_ms, new_id)
}

/// One reconciliation step for service `name` on `cluster`, the
/// scheduler's view of `state` ([`snapshot`]), which it keeps current with
/// what it decides: the tasks it places and those it moves off their
/// nodes. So one view, built once, serves a whole pass over many services
/// (building it is O(nodes + tasks); placing is O(nodes) per service),
/// and a later service of the pass sees what an earlier one placed.
pub fn reconcile_in(
    state: &State,
    cluster: &mut Cluster,
    name: &str,
    now_ms: u64,
    new_id: &mut dyn FnMut() -> String,
) -> Result<Vec<Command>, ReconcileError> {
    let rec = state
        .services
        .get(name)
        .ok_or_else(|| ReconcileError::NoSuchService(name.to_owned()))?;
    let svc = &rec.spec;
    // depends_on: a service starts once the services it depends on run
    // (healthy, where they have a check); after that it lives on its own,
    // as with `docker compose up`.
    if !svc.depends_on.is_empty() && state.tasks_of(name).next().is_none() {
        let waiting = svc
            .depends_on
            .iter()
            .any(|d| !dependency_ready(state, &rec.stack, d));
        if waiting {
            return Ok(Vec::new());
        }
    }
    let spec = task_spec(name, &rec.stack, svc, default_strategy(state));
    let mut out = Vec::new();
    let shutdown = |t: &TaskRecord, why: &str| {
        let mut t = t.clone();
        t.desired = TaskState::Shutdown;
        t.message = why.to_owned();
        Command::PutTask(t)
    };
    let tasks: Vec<&TaskRecord> = state.tasks_of(name).collect();

    // Live tasks of the previous version whose container the change does
    // not touch (replicas, update or restart settings) become tasks of the
    // current version, so that a later change does not mistake them for
    // outdated ones: a change of replicas rolls no task, now or later.
    let restamp: Vec<Command> = tasks
        .iter()
        .filter(|t| live(t) && t.version != rec.version && !outdated(rec, t))
        .map(|t| {
            let mut t = (*t).clone();
            t.version = rec.version;
            Command::PutTask(t)
        })
        .collect();
    if !restamp.is_empty() {
        return Ok(restamp);
    }

    // Live tasks whose node can no longer hold them go, and their slots
    // are refilled below; a paused service (its volume is restored or
    // moved) keeps none.
    let paused = rec.paused.as_ref().map(|why| format!("paused: {why}"));
    let mut live_tasks: Vec<&TaskRecord> = Vec::new();
    for t in tasks.iter().copied().filter(|t| live(t)) {
        let node_ok = match &t.node {
            None => true, // pending: placed below
            Some(n) => state.nodes.get(n).is_some_and(|n| {
                n.keeps_tasks() && n.availability == gantry_sched::Availability::Active
            }),
        };
        if node_ok && paused.is_none() {
            live_tasks.push(t);
        } else {
            let why = match (&paused, t.node.as_ref().and_then(|n| state.nodes.get(n))) {
                (Some(p), _) => p.as_str(),
                (None, None) => "node removed; rescheduled",
                (None, Some(n)) if !n.up => "node down; rescheduled",
                (None, Some(_)) => "node drained; rescheduled",
            };
            out.push(shutdown(t, why));
            if let Some(n) = &t.node {
                cluster.remove(&Assigned {
                    node: n.clone(),
                    service: name.to_owned(),
                    reservations: spec.reservations,
                    host_ports: spec.host_ports.clone(),
                });
            }
        }
    }
    if paused.is_some() {
        return Ok(out);
    }

    // Failed tasks: restart in their slot per policy, or let them rest.
    let policy = &svc.restart_policy;
    // A slot whose task ended for good under this version stays empty
    // until the service changes.
    let mut blocked_slots: BTreeSet<u32> = tasks
        .iter()
        .filter(|t| {
            t.desired == TaskState::Shutdown
                && t.state == TaskState::Failed
                && t.version == rec.version
        })
        .filter(|t| t.message.starts_with(EXHAUSTED) || t.message.starts_with(NOT_RESTARTED))
        .map(|t| t.slot)
        .collect();
    let mut restarts: Vec<(u32, u32, Option<String>)> = Vec::new(); // (slot, attempt, node for global)
    for t in tasks
        .iter()
        .copied()
        .filter(|t| t.desired == TaskState::Running && t.state == TaskState::Failed)
    {
        let exhausted = policy.max_attempts > 0 && t.attempt + 1 > policy.max_attempts;
        let wanted = match policy.condition.as_str() {
            "none" => false,
            "on-failure" => t.exit_code != Some(0),
            _ => true,
        };
        // Keep why it failed after the verdict, for `service ps`.
        let because = |verdict: &str| {
            if t.message.is_empty() {
                verdict.to_owned()
            } else {
                format!("{verdict}: {}", t.message)
            }
        };
        if !wanted || exhausted {
            out.push(shutdown(
                t,
                &because(if exhausted { EXHAUSTED } else { NOT_RESTARTED }),
            ));
            blocked_slots.insert(t.slot);
            continue;
        }
        if now_ms < t.updated_ms + policy.delay_ns / 1_000_000 {
            blocked_slots.insert(t.slot); // waiting out the restart delay
            continue;
        }
        out.push(shutdown(t, &because("restarted")));
        restarts.push((t.slot, t.attempt + 1, t.node.clone()));
    }

    let mut new_tasks: Vec<(u32, u32)> = Vec::new(); // (slot, attempt)
    match svc.mode {
        Mode::Replicated { replicas } => {
            let mut filled: BTreeSet<u32> = live_tasks.iter().map(|t| t.slot).collect();
            for (slot, attempt, _) in &restarts {
                if *slot <= replicas && filled.insert(*slot) {
                    new_tasks.push((*slot, *attempt));
                }
            }
            for slot in 1..=replicas {
                if !filled.contains(&slot) && !blocked_slots.contains(&slot) {
                    filled.insert(slot);
                    new_tasks.push((slot, 0));
                }
            }
            for t in live_tasks.iter().filter(|t| t.slot > replicas) {
                out.push(shutdown(t, "scaled down"));
            }
            let kept: Vec<&TaskRecord> = live_tasks
                .iter()
                .copied()
                .filter(|t| t.slot <= replicas)
                .collect();
            // Two tasks in one slot (start-first update, rebalance move):
            // once the newest has run for `monitor`, the others go.
            let monitor_ms = svc.update_config.monitor_ns / 1_000_000;
            let (gone, doubled) = superseded(&kept, monitor_ms, now_ms);
            for t in gone {
                out.push(shutdown(t, "superseded in its slot"));
            }
            let (commands, replace) = match rollout(rec, svc, &tasks, &kept, replicas, now_ms) {
                Rollout::Steps { commands, replace } => (commands, replace),
                Rollout::Stop(commands) => {
                    out.extend(commands);
                    return Ok(out);
                }
            };
            let quiet = commands.is_empty()
                && replace.is_empty()
                && new_tasks.is_empty()
                && !doubled
                && kept.iter().all(|t| settled(t, monitor_ms, now_ms))
                && !kept.iter().any(|t| outdated(rec, t));
            out.extend(commands);
            new_tasks.extend(replace.into_iter().map(|slot| (slot, 0)));
            // Rebalance start-first (a moved slot runs twice until the new
            // task has settled, so the service never drops below its
            // replicas), a tenth of the replicas per round, only when the
            // service is otherwise at rest (moby/swarmkit#310). Nor while
            // the storm guard holds nodes: their tasks stay put.
            let holding = state.nodes.values().any(|n| n.held);
            if quiet && !holding && svc.rebalance && spec.strategy == gantry_sched::Strategy::Spread
            {
                let batch = (replicas as usize).div_ceil(REBALANCE_SHARE).max(1);
                let mut moved: BTreeSet<u32> = BTreeSet::new();
                for m in cluster.rebalance(&spec, batch) {
                    // Start-first: the task moved stays on its node, and
                    // holds its room there, until the new one settles.
                    cluster.add(&Assigned {
                        node: m.from.clone(),
                        service: name.to_owned(),
                        reservations: spec.reservations,
                        host_ports: spec.host_ports.clone(),
                    });
                    let on_from = kept.iter().filter(|t| {
                        t.node.as_deref() == Some(m.from.as_str()) && !moved.contains(&t.slot)
                    });
                    if let Some(t) = on_from.max_by_key(|t| t.slot) {
                        moved.insert(t.slot);
                        out.push(Command::PutTask(TaskRecord {
                            id: new_id(),
                            service: name.to_owned(),
                            version: rec.version,
                            slot: t.slot,
                            node: Some(m.to),
                            desired: TaskState::Running,
                            state: TaskState::Assigned,
                            message: "rebalanced".into(),
                            exit_code: None,
                            attempt: 0,
                            updated_ms: now_ms,
                            addr: None,
                        }));
                    }
                }
            }
        }
        Mode::Global => {
            // Nodes that already run one (or wait out a restart) are
            // covered; the scheduler names the eligible rest.
            let (targets, _) = cluster.global_targets(&spec);
            let waiting: BTreeSet<&String> = tasks
                .iter()
                .filter(|t| t.desired == TaskState::Running && t.state == TaskState::Failed)
                .filter_map(|t| t.node.as_ref())
                .collect();
            for node in targets {
                if waiting.contains(&node)
                    && !restarts.iter().any(|(_, _, n)| n.as_ref() == Some(&node))
                {
                    continue;
                }
                let attempt = restarts
                    .iter()
                    .find(|(_, _, n)| n.as_ref() == Some(&node))
                    .map_or(0, |r| r.1);
                out.push(Command::PutTask(TaskRecord {
                    id: new_id(),
                    service: name.to_owned(),
                    version: rec.version,
                    slot: 0,
                    node: Some(node),
                    desired: TaskState::Running,
                    state: TaskState::Assigned,
                    message: String::new(),
                    exit_code: None,
                    attempt,
                    updated_ms: now_ms,
                    addr: None,
                }));
            }
            global_rollout(rec, svc, &tasks, &live_tasks, now_ms, new_id, &mut out);
            return Ok(out);
        }
    }

    // Place new tasks and the pending ones that still wait.
    let pending: Vec<&TaskRecord> = live_tasks
        .iter()
        .copied()
        .filter(|t| t.node.is_none())
        .collect();
    let want = new_tasks.len() + pending.len();
    let placement = cluster.place(&spec, want);
    let mut nodes = placement.nodes.into_iter();
    let reason = placement.reason.map(|r| r.to_string()).unwrap_or_default();
    for t in pending {
        let mut t = t.clone();
        match nodes.next() {
            Some(n) => {
                t.node = Some(n);
                t.state = TaskState::Assigned;
                t.message.clear();
                t.updated_ms = now_ms;
                out.push(Command::PutTask(t));
            }
            None if t.message != reason => {
                t.message = reason.clone();
                out.push(Command::PutTask(t));
            }
            None => {}
        }
    }
    for (slot, attempt) in new_tasks {
        let node = nodes.next();
        out.push(Command::PutTask(TaskRecord {
            id: new_id(),
            service: name.to_owned(),
            version: rec.version,
            slot,
            state: if node.is_some() {
                TaskState::Assigned
            } else {
                TaskState::Pending
            },
            message: if node.is_some() {
                String::new()
            } else {
                reason.clone()
            },
            node,
            desired: TaskState::Running,
            exit_code: None,
            attempt,
            updated_ms: now_ms,
            addr: None,
        }));
    }
    Ok(out)
}
