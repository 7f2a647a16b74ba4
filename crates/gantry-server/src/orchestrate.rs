//! The orchestration loop: marks nodes down when their heartbeats stop,
//! reconciles every service, and trims task history. It runs when
//! something changed and at least every 250 ms (restart delays, update
//! monitors and heartbeat graces are times).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use gantry_store::{Command, State, StoreError, TaskState};

use crate::{new_id, now_ms, Shared};

/// Ended tasks kept per slot (Swarm's task history limit).
const HISTORY: usize = 5;

pub(crate) async fn run(sh: Arc<Shared>) {
    loop {
        tokio::select! {
            _ = sh.kick.notified() => {}
            _ = tokio::time::sleep(Duration::from_millis(250)) => {}
        }
        let s = sh.clone();
        match tokio::task::spawn_blocking(move || step(&s)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!("orchestration: {e}"),
            Err(e) => tracing::error!("orchestration step panicked: {e}"),
        }
    }
}

fn step(sh: &Shared) -> Result<(), StoreError> {
    let now = Instant::now();
    let seen = sh.seen.lock().expect("seen lock").clone();
    sh.update(|s| {
        s.nodes
            .values()
            .filter(|n| n.up)
            .filter(|n| {
                let last = seen
                    .get(&n.id)
                    .copied()
                    .unwrap_or(sh.started)
                    .max(sh.started);
                now.duration_since(last) > sh.cfg.grace
            })
            .map(|n| {
                tracing::warn!(node = %n.id, hostname = %n.hostname, "node down: no heartbeat");
                Command::SetNodeUp {
                    id: n.id.clone(),
                    up: false,
                }
            })
            .collect()
    })?;
    // Nodes from before the overlay (or from a full CIDR) get a block.
    sh.update(|s| {
        let mut st = s.clone();
        let mut out = Vec::new();
        for n in s.nodes.values().filter(|n| n.block.is_none()) {
            if let Some(b) = gantry_manager::network::block_for_new_node(&st) {
                let mut rec = n.clone();
                rec.block = Some(b);
                let cmd = Command::PutNode(rec);
                let _ = st.apply(&cmd);
                out.push(cmd);
            }
        }
        out
    })?;
    let names: Vec<String> = sh.read(|s| s.services.keys().cloned().collect());
    for name in names {
        // A service converges in a few rounds (shut down, then place).
        for _ in 0..4 {
            let mut any = false;
            sh.update(
                |s| match gantry_manager::reconcile(s, &name, now_ms(), &mut || new_id()) {
                    Ok(mut cmds) => {
                        any = !cmds.is_empty();
                        gantry_manager::network::assign_addresses(s, &mut cmds);
                        // A task put with a node it did not have was placed.
                        let placed = cmds
                            .iter()
                            .filter(|c| match c {
                                Command::PutTask(t) => {
                                    t.node.is_some()
                                        && s.tasks.get(&t.id).is_none_or(|old| old.node.is_none())
                                }
                                _ => false,
                            })
                            .count();
                        sh.counters
                            .placed
                            .fetch_add(placed as u64, std::sync::atomic::Ordering::Relaxed);
                        cmds
                    }
                    Err(e) => {
                        tracing::warn!(service = %name, "cannot reconcile: {e:?}");
                        Vec::new()
                    }
                },
            )?;
            if !any {
                break;
            }
        }
    }
    crate::edge::internal_certs(sh)?;
    sh.update(trim_history)
}

/// Ended tasks beyond the newest [`HISTORY`] of each slot.
pub(crate) fn trim_history(s: &State) -> Vec<Command> {
    let mut by_slot: BTreeMap<(&str, String), Vec<(u64, &str)>> = BTreeMap::new();
    for t in s.tasks.values() {
        let ended = t.desired != TaskState::Running
            && (matches!(t.state, TaskState::Failed | TaskState::Shutdown)
                || t.node.is_none()
                || t.state == TaskState::Pending);
        if ended {
            let slot = if t.slot == 0 {
                t.node.clone().unwrap_or_default()
            } else {
                t.slot.to_string()
            };
            by_slot
                .entry((t.service.as_str(), slot))
                .or_default()
                .push((t.updated_ms, t.id.as_str()));
        }
    }
    let mut out = Vec::new();
    for (_, mut ended) in by_slot {
        if ended.len() > HISTORY {
            ended.sort();
            for (_, id) in &ended[..ended.len() - HISTORY] {
                out.push(Command::RemoveTask { id: (*id).into() });
            }
        }
    }
    out
}
