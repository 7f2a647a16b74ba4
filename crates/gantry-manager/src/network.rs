//! Overlay addresses for nodes and tasks, decided from the state (pure):
//! a joining node gets the next free block of the cluster CIDR; a task
//! placed on a node gets the next free address of that node's block. An
//! address is in use while its task lives (not failed or shut down), so it
//! is released when the task ends and never held by two live tasks. A
//! service with `endpoint_mode: vip` gets a virtual IP from the plan's
//! pool, which it keeps until it is removed.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use gantry_ipam::{next_addr, next_vip, Net, Plan};
use gantry_spec::EndpointMode;
use gantry_state::{Command, State, TaskRecord, TaskState};

/// Metadata keys of the address plan (`gantry server --cluster-cidr`,
/// `--block-prefix`).
pub const CIDR_KEY: &str = "cluster_cidr";
/// See [`CIDR_KEY`].
pub const BLOCK_PREFIX_KEY: &str = "block_prefix";

/// The cluster's address plan as the state records it (the default plan
/// if none is recorded).
pub fn plan(state: &State) -> Plan {
    let cidr = state.meta.get(CIDR_KEY).and_then(|c| c.parse::<Net>().ok());
    let prefix = state
        .meta
        .get(BLOCK_PREFIX_KEY)
        .and_then(|p| p.parse::<u8>().ok());
    match (cidr, prefix) {
        (Some(c), Some(p)) => Plan::new(c, p).unwrap_or_else(|_| Plan::default_plan()),
        _ => Plan::default_plan(),
    }
}

/// The next free block for a joining node.
pub fn block_for_new_node(state: &State) -> Option<Net> {
    let used: BTreeSet<Net> = state.nodes.values().filter_map(|n| n.block).collect();
    plan(state).next_block(&used)
}

/// Blocks for the nodes that have none (nodes from before the overlay, or
/// that joined when the CIDR was full), as the commands that record them;
/// none when every node has one. Costs the nodes, not the tasks.
pub fn blocks_for_nodes_without(state: &State) -> Vec<Command> {
    if state.nodes.values().all(|n| n.block.is_some()) {
        return Vec::new();
    }
    let plan = plan(state);
    let mut used: BTreeSet<Net> = state.nodes.values().filter_map(|n| n.block).collect();
    let mut out = Vec::new();
    for n in state.nodes.values().filter(|n| n.block.is_none()) {
        let Some(b) = plan.next_block(&used) else {
            break;
        };
        used.insert(b);
        let mut rec = n.clone();
        rec.block = Some(b);
        out.push(Command::PutNode(rec));
    }
    out
}

fn holds_addr(t: &TaskRecord) -> bool {
    !matches!(t.state, TaskState::Failed | TaskState::Shutdown)
}

/// Gives every task that a batch places on a node (and that has no address
/// yet) an address of that node's block, as if the batch were applied:
/// tasks the batch ends free their addresses only after it. Records each
/// node's last address handed out (a `PutNode` appended to the batch), so
/// addresses go round the block.
pub fn assign_addresses(state: &State, cmds: &mut Vec<Command>) {
    // The addresses in use on the nodes the batch places tasks on (only
    // those: the cost is theirs, not the cluster's).
    let mut used: BTreeMap<&str, BTreeSet<Ipv4Addr>> = BTreeMap::new();
    for cmd in cmds.iter() {
        let Command::PutTask(t) = cmd else { continue };
        let Some(n) = t.node.as_deref() else { continue };
        let Some((n, _)) = state.nodes.get_key_value(n) else {
            continue;
        };
        if used.contains_key(n.as_str()) {
            continue;
        }
        let addrs = state
            .tasks_on(n)
            .filter(|t| holds_addr(t))
            .filter_map(|t| t.addr)
            .collect();
        used.insert(n.as_str(), addrs);
    }
    let mut last: BTreeMap<String, Ipv4Addr> = BTreeMap::new();
    for cmd in cmds.iter_mut() {
        let Command::PutTask(t) = cmd else { continue };
        if t.addr.is_some() || t.desired != TaskState::Running || !holds_addr(t) {
            continue;
        }
        let Some(node) = state.nodes.get(t.node.as_deref().unwrap_or_default()) else {
            continue;
        };
        let Some(block) = node.block else { continue };
        let prev = last.get(&node.id).copied().or(node.last_addr);
        let set = used.entry(node.id.as_str()).or_default();
        if let Some(a) = next_addr(block, set, prev) {
            set.insert(a);
            t.addr = Some(a);
            last.insert(node.id.clone(), a);
        }
    }
    // Nodes updated in this batch keep their other changes.
    for (id, a) in last {
        let mut rec = cmds
            .iter()
            .rev()
            .find_map(|c| match c {
                Command::PutNode(n) if n.id == id => Some(n.clone()),
                _ => None,
            })
            .unwrap_or_else(|| state.nodes[&id].clone());
        rec.last_addr = Some(a);
        cmds.push(Command::PutNode(rec));
    }
}

/// Gives a virtual IP to each service that a batch puts with
/// `endpoint_mode: vip` and that has none yet: the lowest free address of
/// the plan's pool. Costs the services only when one needs an address.
pub fn assign_vips(state: &State, cmds: &mut [Command]) {
    let needs = |c: &Command| match c {
        Command::PutService {
            name, spec, vip, ..
        } => {
            vip.is_none()
                && spec.endpoint_mode == EndpointMode::Vip
                && state.services.get(name).is_none_or(|r| r.vip.is_none())
        }
        _ => false,
    };
    if !cmds.iter().any(needs) {
        return;
    }
    let pool = plan(state).vip_pool();
    let mut used: BTreeSet<Ipv4Addr> = state.services.values().filter_map(|r| r.vip).collect();
    used.extend(cmds.iter().filter_map(|c| match c {
        Command::PutService { vip, .. } => *vip,
        _ => None,
    }));
    let mut given: BTreeMap<String, Ipv4Addr> = BTreeMap::new();
    for c in cmds.iter_mut() {
        if !needs(c) {
            continue;
        }
        let Command::PutService { name, vip, .. } = c else {
            continue;
        };
        // A service put twice in one batch keeps the first one's.
        if let Some(v) = given.get(name.as_str()) {
            *vip = Some(*v);
            continue;
        }
        if let Some(v) = next_vip(pool, &used) {
            used.insert(v);
            given.insert(name.clone(), v);
            *vip = Some(v);
        }
    }
}
