//! The orchestration loop: marks nodes down when their heartbeats stop
//! (with the storm guard), reconciles the services that changes touched or
//! that are not at rest (and every service every 30 s), and trims their
//! task history. It runs when something changed and at least every 250 ms
//! (restart delays, update monitors and heartbeat graces are times).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use gantry_store::{Command, State, StoreError, TaskState};

use crate::{new_id, now_ms, Shared};

/// Ended tasks kept per slot (Swarm's task history limit).
const HISTORY: usize = 5;

/// Rounds of reconciliation per pass: a service converges in a few
/// (shut down, then place).
const ROUNDS: usize = 4;

/// Commands per store commit in a pass (more for one big service).
const BATCH: usize = 4096;

/// Every service is reconciled at least this often, touched or not (a
/// safety net: what changes a service's decision is a command, or time
/// while it is not at rest).
const FULL_SWEEP: Duration = Duration::from_secs(30);

pub(crate) async fn run(sh: Arc<Shared>) {
    loop {
        tokio::select! {
            _ = sh.kick.notified() => {}
            _ = tokio::time::sleep(Duration::from_millis(250)) => {}
        }
        // Only the leader orchestrates. One that has just taken over gives
        // every node a fresh grace (its heartbeats went to the old leader)
        // and looks at every service once: no mass rescheduling because
        // the leader changed, and a rollout goes on where it was.
        if !sh.is_leader() {
            *sh.leading_since.lock().expect("leading lock") = None;
            continue;
        }
        {
            let mut since = sh.leading_since.lock().expect("leading lock");
            if since.is_none() {
                *since = Some(Instant::now());
                sh.dirty.lock().expect("dirty lock").all = true;
                tracing::info!("leading the managers: orchestration starts");
            }
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
    // The node ids first, then the liveness stamps: never the stamps' lock
    // while waiting for the store's, or every heartbeat (which stamps
    // before it waits for anything) would wait for the store too.
    let ids: Vec<String> = sh.read(|s| s.nodes.keys().cloned().collect());
    let since = sh
        .leading_since
        .lock()
        .expect("leading lock")
        .unwrap_or(now)
        .max(sh.started);
    let silent: BTreeMap<String, Duration> = {
        let seen = sh.seen.lock().expect("seen lock");
        ids.into_iter()
            .map(|id| {
                let last = seen.get(&id).copied().unwrap_or(since).max(since);
                let silent = now.saturating_duration_since(last);
                (id, silent)
            })
            .collect()
    };
    let recent: BTreeSet<String> = {
        let mut downs = sh.downs.lock().expect("downs lock");
        downs.retain(|(at, _)| now.duration_since(*at) <= sh.cfg.grace);
        downs.iter().map(|(_, id)| id.clone()).collect()
    };
    let guard = gantry_manager::liveness::StormGuard {
        grace: sh.cfg.grace,
        ratio: sh.cfg.storm_ratio,
    };
    let mut marked = Vec::new();
    sh.update(|s| {
        let cmds = gantry_manager::liveness::nodes_down(s, &silent, &recent, guard);
        for c in &cmds {
            match c {
                Command::SetNodeUp { id, .. } => {
                    let hostname = s.nodes.get(id).map(|n| n.hostname.as_str());
                    tracing::warn!(node = %id, hostname, "node down: no heartbeat");
                    marked.push(id.clone());
                }
                Command::SetNodeHeld { id, reason, .. } => {
                    tracing::warn!(node = %id, "{reason}");
                }
                _ => {}
            }
        }
        cmds
    })?;
    sh.downs
        .lock()
        .expect("downs lock")
        .extend(marked.into_iter().map(|id| (now, id)));
    // Nodes from before the overlay (or from a full CIDR) get a block.
    sh.update(gantry_manager::network::blocks_for_nodes_without)?;
    // The services to reconcile: those changes touched, those not at rest
    // (waiting on time or room), and all of them every FULL_SWEEP.
    let touched = std::mem::take(&mut *sh.dirty.lock().expect("dirty lock"));
    let mut last_sweep = sh.swept.lock().expect("swept lock");
    let sweep = touched.all || last_sweep.elapsed() >= FULL_SWEEP;
    if sweep {
        *last_sweep = Instant::now();
    }
    drop(last_sweep);
    let mut restless = sh.restless.lock().expect("restless lock");
    let names: Vec<String> = if sweep {
        sh.read(|s| s.services.keys().cloned().collect())
    } else {
        let mut n: BTreeSet<String> = touched.services;
        n.extend(restless.iter().cloned());
        n.into_iter().collect()
    };
    restless.clear();
    // A service converges in a few rounds (shut down, then place). Each
    // round reconciles the services still changing on one scheduler view
    // per store commit, a commit holding up to BATCH commands, so the
    // store lock is never held for a whole big pass.
    let mut todo: Vec<String> = names.clone();
    for _ in 0..ROUNDS {
        let mut changed = Vec::new();
        let mut rest = todo.as_slice();
        while !rest.is_empty() {
            sh.update(|s| {
                let mut view = gantry_manager::snapshot(s);
                let mut cmds = Vec::new();
                while let Some((name, tail)) = rest.split_first() {
                    rest = tail;
                    match gantry_manager::reconcile_in(s, &mut view, name, now_ms(), &mut new_id) {
                        Ok(c) if c.is_empty() => {}
                        Ok(c) => {
                            changed.push(name.clone());
                            cmds.extend(c);
                        }
                        Err(e) => tracing::warn!(service = %name, "cannot reconcile: {e:?}"),
                    }
                    if cmds.len() >= BATCH {
                        break;
                    }
                }
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
            })?;
        }
        todo = changed;
        if todo.is_empty() {
            break;
        }
    }
    // Still changing after the last round, or waiting on time or room:
    // reconciled again on the next pass.
    restless.extend(todo);
    sh.read(|s| {
        restless.extend(
            names
                .iter()
                .filter(|n| !gantry_manager::touch::at_rest(s, n))
                .cloned(),
        )
    });
    drop(restless);
    crate::edge::internal_certs(sh)?;
    sh.update(|s| trim_history(s, &names))
}

/// Ended tasks beyond the newest [`HISTORY`] of each slot of `services`.
pub(crate) fn trim_history(s: &State, services: &[String]) -> Vec<Command> {
    let mut by_slot: BTreeMap<(&str, String), Vec<(u64, &str)>> = BTreeMap::new();
    for t in services.iter().flat_map(|n| s.tasks_of(n)) {
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
