//! The node routes: `node ls`, `inspect`, `update` (availability,
//! labels), `rm` and `confirm-down`, and a node's view (its record, its
//! liveness and figures, and the manager on its host).

use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::{Extension, Json};
use serde::Deserialize;

use gantry_api::{NodeUpdate, NodeView};
use gantry_store::{Command, State as Cluster, TaskState};

use crate::api::{bad, not_found, Fail, JsonBody, Peer};
use crate::Shared;

type Sh = State<Arc<Shared>>;
type Res<T> = Result<Json<T>, Fail>;

/// What a node's view takes from the state (read under the store's lock:
/// its record, and how many tasks run there now, by the node's index).
fn node_facts(s: &Cluster, id: &str) -> Option<(gantry_store::NodeRecord, usize)> {
    let rec = s.nodes.get(id)?.clone();
    // What runs there now, wanted or not yet stopped (a drained node is
    // empty once this is 0).
    let tasks = s
        .tasks_on(id)
        .filter(|t| matches!(t.state, TaskState::Assigned | TaskState::Running))
        .count();
    Some((rec, tasks))
}

/// A node's view: its facts, and its liveness and figures (taken after the
/// store's lock is let go).
fn node_view(
    sh: &Shared,
    managers: &[gantry_api::ManagerView],
    (record, tasks): (gantry_store::NodeRecord, usize),
) -> NodeView {
    let last_seen_ms = sh
        .seen
        .lock()
        .expect("seen lock")
        .get(&record.id)
        .map(|t| t.elapsed().as_millis() as u64);
    let stats = sh
        .stats
        .lock()
        .expect("stats lock")
        .get(&record.id)
        .cloned();
    // A manager on the node's host (by host name), as Swarm's column.
    let manager_status = managers
        .iter()
        .find(|m| !m.hostname.is_empty() && m.hostname == record.hostname)
        .map(|m| m.status.clone());
    NodeView {
        record,
        tasks,
        last_seen_ms,
        manager_status,
        cpu_percent: stats.as_ref().map(|s| s.cpu_percent),
        mem_used: stats
            .as_ref()
            .map(|s| s.mem_total.saturating_sub(s.mem_available)),
    }
}

/// The view of node `id`.
fn node_view_of(sh: &Shared, id: &str, key: &str) -> Res<NodeView> {
    sh.read(|s| node_facts(s, id))
        .map(|f| Json(node_view(sh, &sh.managers(), f)))
        .ok_or_else(|| not_found(format!("no such node: {key}")))
}

/// A node by id, unique id prefix or hostname.
pub(crate) fn find_node(s: &Cluster, key: &str) -> Result<String, Fail> {
    if s.nodes.contains_key(key) {
        return Ok(key.to_owned());
    }
    let by_name: Vec<&String> = s
        .nodes
        .values()
        .filter(|n| n.hostname == key)
        .map(|n| &n.id)
        .collect();
    let hits = if by_name.is_empty() {
        s.nodes.keys().filter(|id| id.starts_with(key)).collect()
    } else {
        by_name
    };
    match hits.as_slice() {
        [one] => Ok((*one).clone()),
        [] => Err(not_found(format!("no such node: {key}"))),
        _ => Err(bad(format!("node {key:?} is ambiguous: use its id"))),
    }
}

pub(crate) async fn nodes(State(sh): Sh, Extension(peer): Extension<Peer>) -> Res<Vec<NodeView>> {
    peer.admin()?;
    let facts: Vec<_> = sh.read(|s| s.nodes.keys().filter_map(|id| node_facts(s, id)).collect());
    let managers = sh.managers();
    Ok(Json(
        facts
            .into_iter()
            .map(|f| node_view(&sh, &managers, f))
            .collect(),
    ))
}

pub(crate) async fn node_inspect(
    State(sh): Sh,
    Extension(peer): Extension<Peer>,
    Path(key): Path<String>,
) -> Res<NodeView> {
    peer.admin()?;
    let id = sh.read(|s| find_node(s, &key))?;
    node_view_of(&sh, &id, &key)
}

pub(crate) async fn node_update(
    State(sh): Sh,
    Extension(peer): Extension<Peer>,
    Path(key): Path<String>,
    JsonBody(u): JsonBody<NodeUpdate>,
) -> Res<NodeView> {
    peer.admin()?;
    let id = sh.read(|s| find_node(s, &key))?;
    sh.update(|s| {
        let mut cmds = Vec::new();
        let Some(n) = s.nodes.get(&id) else {
            return cmds;
        };
        if let Some(a) = u.availability {
            if a != n.availability {
                cmds.push(Command::SetAvailability {
                    id: id.clone(),
                    availability: a,
                });
            }
        }
        let mut labels = n.labels.clone();
        for k in &u.label_rm {
            labels.remove(k);
        }
        labels.extend(u.label_add.clone());
        if labels != n.labels {
            cmds.push(Command::SetLabels {
                id: id.clone(),
                labels,
            });
        }
        cmds
    })?;
    node_view_of(&sh, &id, &key)
}

/// An operator confirms that a node the storm guard holds is down: its
/// tasks are rescheduled.
pub(crate) async fn node_confirm_down(
    State(sh): Sh,
    Extension(peer): Extension<Peer>,
    Path(key): Path<String>,
) -> Res<NodeView> {
    peer.admin()?;
    let id = sh.read(|s| find_node(s, &key))?;
    let mut up = false;
    sh.update(|s| match s.nodes.get(&id) {
        Some(n) if n.up => {
            up = true;
            Vec::new()
        }
        Some(n) if n.held => vec![Command::SetNodeHeld {
            id: id.clone(),
            held: false,
            reason: "an operator confirmed it down; its tasks are rescheduled".into(),
        }],
        _ => Vec::new(),
    })?;
    if up {
        return Err(Fail(
            StatusCode::CONFLICT,
            format!("node {key} is up: nothing to confirm"),
        ));
    }
    sh.kick.notify_one();
    node_view_of(&sh, &id, &key)
}

#[derive(Deserialize)]
pub(crate) struct Force {
    #[serde(default)]
    force: bool,
}

pub(crate) async fn node_rm(
    State(sh): Sh,
    Extension(peer): Extension<Peer>,
    Path(key): Path<String>,
    Query(f): Query<Force>,
) -> Res<String> {
    peer.admin()?;
    let id = sh.read(|s| find_node(s, &key))?;
    let mut cmds = Vec::new();
    if f.force {
        // Forget it as if it had died: down, its tasks ended.
        cmds.push(Command::SetNodeUp {
            id: id.clone(),
            up: false,
        });
        for t in sh.read(|s| {
            s.tasks
                .values()
                .filter(|t| t.node.as_deref() == Some(id.as_str()))
                .cloned()
                .collect::<Vec<_>>()
        }) {
            if matches!(t.state, TaskState::Assigned | TaskState::Running) {
                let mut t = t;
                t.state = TaskState::Shutdown;
                t.desired = TaskState::Shutdown;
                t.message = "node removed".into();
                cmds.push(Command::PutTask(t));
            }
        }
    }
    cmds.push(Command::RemoveNode { id: id.clone() });
    sh.apply(cmds)?;
    sh.seen.lock().expect("seen lock").remove(&id);
    Ok(Json(id))
}
