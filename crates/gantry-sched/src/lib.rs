//! Gantry's scheduler: where tasks go.
//!
//! **Architecture invariant:** this crate does no I/O. It takes a snapshot of
//! nodes and of the tasks already assigned ([`Cluster::new`]) and answers
//! placements ([`Cluster::place`]), the nodes a global service still lacks
//! ([`Cluster::global_targets`]) and the moves that even out a replicated
//! service ([`Cluster::rebalance`]). The manager applies the answers.
//!
//! A placement runs the filters (node ready, availability, constraints,
//! volume affinity, then resources and host ports) and scores the nodes that
//! pass: `spread` (fewest tasks of the service, then fewest in total) or
//! `binpack` (the fullest node that still fits), optionally spreading over
//! the values of a node label first. A batch of N tasks of one service costs
//! O(N log M) on M nodes: candidates sit in a heap keyed by score, and a node
//! that stops fitting leaves the batch for good (resources and ports only
//! fill up as the batch places).

mod constraint;

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap, HashSet};
use std::fmt;

use serde::{Deserialize, Serialize};

pub use constraint::{BadConstraint, Constraint, Field};

/// CPU and memory, for capacity, reservations and use.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Resources {
    /// Billionths of a CPU (Docker's NanoCPUs).
    pub nano_cpus: u64,
    /// Bytes.
    pub memory: u64,
}

impl Resources {
    fn add(self, o: Self) -> Self {
        Self {
            nano_cpus: self.nano_cpus + o.nano_cpus,
            memory: self.memory + o.memory,
        }
    }
    fn sub(self, o: Self) -> Self {
        Self {
            nano_cpus: self.nano_cpus.saturating_sub(o.nano_cpus),
            memory: self.memory.saturating_sub(o.memory),
        }
    }
}

/// Whether a node takes tasks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Availability {
    /// Takes new tasks.
    #[default]
    Active,
    /// Keeps its tasks, takes no new ones.
    Pause,
    /// Its tasks move away; takes none.
    Drain,
}

/// A node as the scheduler sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Node {
    /// Unique id.
    pub id: String,
    /// Host name.
    pub hostname: String,
    /// A manager (else a worker).
    pub manager: bool,
    /// CPU architecture (`x86_64`).
    pub arch: String,
    /// Operator-set labels.
    pub labels: BTreeMap<String, String>,
    /// Active, pause or drain.
    pub availability: Availability,
    /// Heartbeats arrive (not down).
    pub ready: bool,
    /// What the node has.
    pub capacity: Resources,
    /// Its local volumes' names.
    pub volumes: std::collections::BTreeSet<String>,
}

/// `spread` or `binpack`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Strategy {
    /// Fewest tasks of the service, then fewest in total.
    #[default]
    Spread,
    /// The fullest node that still fits.
    Binpack,
}

/// What every task of one service needs.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskSpec {
    /// The service's name.
    pub service: String,
    /// Reserved per task.
    pub reservations: Resources,
    /// All must hold.
    pub constraints: Vec<Constraint>,
    /// Spread over the values of this node label first (compose
    /// `placement.preferences: - spread: node.labels.X`).
    pub spread_over: Option<String>,
    /// Host ports each task binds (host-mode publishing).
    pub host_ports: Vec<u16>,
    /// Named local volumes; a task goes where they live.
    pub volumes: Vec<String>,
    /// Volumes that exist already (compose's `external`); a task goes
    /// only to a node that has them all.
    pub external_volumes: Vec<String>,
    /// How nodes are scored.
    pub strategy: Strategy,
    /// At most this many of the service's tasks on one node (0: no limit;
    /// `deploy.placement.max_replicas_per_node`).
    pub max_per_node: u32,
}

/// A task already on a node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Assigned {
    /// The node's id.
    pub node: String,
    /// The task's service.
    pub service: String,
    /// What it reserves.
    pub reservations: Resources,
    /// Host ports it binds.
    pub host_ports: Vec<u16>,
}

/// Why a node was not chosen: the first filter it failed.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Reason {
    /// Missed heartbeats.
    NotReady,
    /// Drained or paused.
    Unavailable,
    /// A placement constraint does not hold.
    Constraint(String),
    /// A named volume of the task lives on another node.
    VolumeElsewhere(String),
    /// Not enough CPU left to reserve.
    InsufficientCpu,
    /// Not enough memory left to reserve.
    InsufficientMemory,
    /// A host port the task needs is taken.
    PortInUse(u16),
    /// The node runs as many of the service's tasks as it may.
    MaxPerNode(u32),
    /// An external volume the task mounts is not on the node.
    NoVolume(String),
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NotReady => write!(f, "node not ready"),
            Self::Unavailable => write!(f, "node drained or paused"),
            Self::Constraint(c) => write!(f, "constraint {c} not satisfied"),
            Self::VolumeElsewhere(v) => write!(f, "volume {v} lives on another node"),
            Self::InsufficientCpu => write!(f, "insufficient cpu"),
            Self::InsufficientMemory => write!(f, "insufficient memory"),
            Self::PortInUse(p) => write!(f, "host port {p} in use"),
            Self::MaxPerNode(n) => write!(f, "max replicas per node ({n}) reached"),
            Self::NoVolume(v) => write!(f, "external volume {v} is not on the node"),
        }
    }
}

/// Why tasks stay pending: how many nodes failed each filter.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Unplaceable {
    /// Filter → number of nodes that failed it.
    pub reasons: BTreeMap<Reason, usize>,
}

impl fmt::Display for Unplaceable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.reasons.is_empty() {
            return write!(f, "no suitable node (the cluster has no nodes)");
        }
        let parts: Vec<String> = self
            .reasons
            .iter()
            .map(|(r, n)| format!("{r} on {n} node{}", if *n == 1 { "" } else { "s" }))
            .collect();
        write!(f, "no suitable node ({})", parts.join("; "))
    }
}

/// The answer to [`Cluster::place`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Placement {
    /// Node ids, one per placed task, in placement order.
    pub nodes: Vec<String>,
    /// Tasks that fit nowhere.
    pub pending: usize,
    /// Why, when `pending > 0`.
    pub reason: Option<Unplaceable>,
}

/// A task to move: start one on `to`, then stop one on `from`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Move {
    /// Node losing a task.
    pub from: String,
    /// Node gaining one.
    pub to: String,
}

/// A snapshot of the cluster, indexed for placement.
#[derive(Debug, Clone)]
pub struct Cluster {
    nodes: Vec<Node>,
    index: HashMap<String, usize>,
    used: Vec<Resources>,
    total: Vec<u32>,
    by_service: HashMap<String, Vec<u32>>,
    ports: Vec<HashSet<u16>>,
    volumes: HashMap<String, usize>,
}

impl Cluster {
    /// Indexes nodes, the tasks on them, and where named volumes live
    /// (volume name → node id).
    pub fn new(nodes: Vec<Node>, tasks: &[Assigned], volumes: &BTreeMap<String, String>) -> Self {
        let index: HashMap<String, usize> = nodes
            .iter()
            .enumerate()
            .map(|(i, n)| (n.id.clone(), i))
            .collect();
        let m = nodes.len();
        let mut c = Self {
            used: vec![Resources::default(); m],
            total: vec![0; m],
            by_service: HashMap::new(),
            ports: vec![HashSet::new(); m],
            volumes: volumes
                .iter()
                .filter_map(|(v, n)| Some((v.clone(), *index.get(n)?)))
                .collect(),
            nodes,
            index,
        };
        for t in tasks {
            if let Some(&i) = c.index.get(&t.node) {
                c.assign(i, &t.service, t.reservations, &t.host_ports);
            }
        }
        c
    }

    fn assign(&mut self, i: usize, service: &str, res: Resources, ports: &[u16]) {
        let m = self.nodes.len();
        self.used[i] = self.used[i].add(res);
        self.total[i] += 1;
        self.by_service
            .entry(service.to_owned())
            .or_insert_with(|| vec![0; m])[i] += 1;
        self.ports[i].extend(ports.iter().copied());
    }

    fn unassign(&mut self, i: usize, service: &str, res: Resources, ports: &[u16]) {
        self.used[i] = self.used[i].sub(res);
        self.total[i] = self.total[i].saturating_sub(1);
        if let Some(v) = self.by_service.get_mut(service) {
            v[i] = v[i].saturating_sub(1);
        }
        for p in ports {
            self.ports[i].remove(p);
        }
    }

    /// Records that a task is on its node (as [`Cluster::new`] does for
    /// the tasks it is given).
    pub fn add(&mut self, t: &Assigned) {
        if let Some(&i) = self.index.get(&t.node) {
            self.assign(i, &t.service, t.reservations, &t.host_ports);
        }
    }

    /// Records that a task left its node.
    pub fn remove(&mut self, t: &Assigned) {
        if let Some(&i) = self.index.get(&t.node) {
            self.unassign(i, &t.service, t.reservations, &t.host_ports);
        }
    }

    /// Tasks of `service` on each node, by node id.
    pub fn counts(&self, service: &str) -> BTreeMap<String, u32> {
        let v = self.by_service.get(service);
        self.nodes
            .iter()
            .enumerate()
            .map(|(i, n)| (n.id.clone(), v.map_or(0, |v| v[i])))
            .collect()
    }

    /// The filters that do not change while a batch places.
    fn static_check(&self, i: usize, spec: &TaskSpec) -> Result<(), Reason> {
        let n = &self.nodes[i];
        if !n.ready {
            return Err(Reason::NotReady);
        }
        if n.availability != Availability::Active {
            return Err(Reason::Unavailable);
        }
        if let Some(c) = spec.constraints.iter().find(|c| !c.matches(n)) {
            return Err(Reason::Constraint(c.to_string()));
        }
        if let Some(v) = spec
            .external_volumes
            .iter()
            .find(|v| !n.volumes.contains(*v))
        {
            return Err(Reason::NoVolume(v.clone()));
        }
        for v in &spec.volumes {
            if let Some(&home) = self.volumes.get(v) {
                if home != i {
                    return Err(Reason::VolumeElsewhere(v.clone()));
                }
            }
        }
        Ok(())
    }

    /// The filters that placing tasks can make fail.
    fn fits(&self, i: usize, spec: &TaskSpec) -> Result<(), Reason> {
        let cap = self.nodes[i].capacity;
        let after = self.used[i].add(spec.reservations);
        if spec.reservations.nano_cpus > 0 && after.nano_cpus > cap.nano_cpus {
            return Err(Reason::InsufficientCpu);
        }
        if spec.reservations.memory > 0 && after.memory > cap.memory {
            return Err(Reason::InsufficientMemory);
        }
        if let Some(p) = spec.host_ports.iter().find(|p| self.ports[i].contains(p)) {
            return Err(Reason::PortInUse(*p));
        }
        if spec.max_per_node > 0 {
            let here = self.by_service.get(&spec.service).map_or(0, |v| v[i]);
            if here >= spec.max_per_node {
                return Err(Reason::MaxPerNode(spec.max_per_node));
            }
        }
        Ok(())
    }

    fn score(&self, i: usize, spec: &TaskSpec) -> Score {
        let svc = self.by_service.get(&spec.service).map_or(0, |v| v[i]);
        match spec.strategy {
            Strategy::Spread => Score {
                primary: u64::from(svc),
                secondary: u64::from(self.total[i]),
                node: i,
            },
            Strategy::Binpack => {
                // Fullest after placing: the largest share used, as a
                // fraction in millionths; the heap is a min-heap, so invert.
                let cap = self.nodes[i].capacity;
                let after = self.used[i].add(spec.reservations);
                let frac = |u: u64, c: u64| u.saturating_mul(1_000_000).checked_div(c).unwrap_or(0);
                let fill = frac(after.nano_cpus, cap.nano_cpus) + frac(after.memory, cap.memory);
                Score {
                    primary: u64::MAX - fill,
                    secondary: u64::from(self.total[i]),
                    node: i,
                }
            }
        }
    }

    /// Places `n` tasks of `spec`, recording them in the snapshot. Tasks
    /// that fit nowhere are counted as pending, with the reason.
    pub fn place(&mut self, spec: &TaskSpec, n: usize) -> Placement {
        let mut reasons: BTreeMap<Reason, usize> = BTreeMap::new();
        // Candidate groups: one per value of the spread label (or one).
        let mut groups: BTreeMap<Option<String>, BinaryHeap<Reverse<Score>>> = BTreeMap::new();
        for i in 0..self.nodes.len() {
            if let Err(r) = self.static_check(i, spec) {
                *reasons.entry(r).or_default() += 1;
                continue;
            }
            let key = spec
                .spread_over
                .as_ref()
                .and_then(|l| self.nodes[i].labels.get(l).cloned());
            groups
                .entry(key)
                .or_default()
                .push(Reverse(self.score(i, spec)));
        }
        let mut group_count: BTreeMap<Option<String>, u64> = groups
            .keys()
            .map(|k| {
                let c = self.group_tasks(spec, k.as_deref());
                (k.clone(), c)
            })
            .collect();
        let mut out = Placement::default();
        while out.nodes.len() < n {
            // The group with the fewest tasks of the service that still
            // has a candidate.
            let Some(g) = group_count
                .iter()
                .filter(|(k, _)| groups.get(*k).is_some_and(|h| !h.is_empty()))
                .min_by_key(|(k, c)| (**c, (*k).clone()))
                .map(|(k, _)| k.clone())
            else {
                break;
            };
            let heap = groups.get_mut(&g).expect("group exists");
            let Some(Reverse(best)) = heap.pop() else {
                continue;
            };
            let i = best.node;
            if let Err(r) = self.fits(i, spec) {
                *reasons.entry(r).or_default() += 1;
                continue; // out of this batch for good
            }
            self.assign(i, &spec.service, spec.reservations, &spec.host_ports);
            out.nodes.push(self.nodes[i].id.clone());
            *group_count.get_mut(&g).expect("group counted") += 1;
            let s = self.score(i, spec);
            groups.get_mut(&g).expect("group exists").push(Reverse(s));
        }
        out.pending = n - out.nodes.len();
        if out.pending > 0 {
            out.reason = Some(Unplaceable { reasons });
        }
        out
    }

    fn group_tasks(&self, spec: &TaskSpec, value: Option<&str>) -> u64 {
        let (Some(label), Some(v)) = (&spec.spread_over, self.by_service.get(&spec.service)) else {
            return 0;
        };
        self.nodes
            .iter()
            .enumerate()
            .filter(|(_, n)| n.labels.get(label).map(String::as_str) == value)
            .map(|(i, _)| u64::from(v[i]))
            .sum()
    }

    /// For a global service: the eligible nodes that have no task of it yet,
    /// recorded as placed. Nodes that pass the static filters but lack room
    /// are reported with the reason.
    pub fn global_targets(&mut self, spec: &TaskSpec) -> (Vec<String>, Option<Unplaceable>) {
        let mut out = Vec::new();
        let mut reasons: BTreeMap<Reason, usize> = BTreeMap::new();
        for i in 0..self.nodes.len() {
            let has = self.by_service.get(&spec.service).is_some_and(|v| v[i] > 0);
            if has || self.static_check(i, spec).is_err() {
                continue;
            }
            match self.fits(i, spec) {
                Ok(()) => {
                    self.assign(i, &spec.service, spec.reservations, &spec.host_ports);
                    out.push(self.nodes[i].id.clone());
                }
                Err(r) => *reasons.entry(r).or_default() += 1,
            }
        }
        let reason = (!reasons.is_empty()).then_some(Unplaceable { reasons });
        (out, reason)
    }

    /// Moves that even out a replicated service over its eligible nodes,
    /// at most `max_moves` (the orchestrator applies them start-first, so
    /// the service never runs fewer than its desired replicas). Stops when
    /// the busiest and the idlest eligible node differ by at most one.
    pub fn rebalance(&mut self, spec: &TaskSpec, max_moves: usize) -> Vec<Move> {
        let eligible: Vec<usize> = (0..self.nodes.len())
            .filter(|&i| self.static_check(i, spec).is_ok())
            .collect();
        let mut moves = Vec::new();
        while moves.len() < max_moves {
            let count = |i: usize| self.by_service.get(&spec.service).map_or(0, |v| v[i]);
            // Tasks on nodes that are no longer eligible are the
            // orchestrator's to replace, not to rebalance.
            let Some(&from) = eligible.iter().max_by_key(|&&i| (count(i), Reverse(i))) else {
                break;
            };
            let Some(&to) = eligible
                .iter()
                .filter(|&&i| self.fits(i, spec).is_ok())
                .min_by_key(|&&i| (count(i), self.total[i], i))
            else {
                break;
            };
            if count(from) <= count(to) + 1 {
                break;
            }
            self.assign(to, &spec.service, spec.reservations, &spec.host_ports);
            self.unassign(from, &spec.service, spec.reservations, &spec.host_ports);
            moves.push(Move {
                from: self.nodes[from].id.clone(),
                to: self.nodes[to].id.clone(),
            });
        }
        moves
    }
}

/// A node's score; lower is better. Ties break on the node's position so
/// that placement is deterministic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Score {
    primary: u64,
    secondary: u64,
    node: usize,
}

#[cfg(test)]
mod tests;
