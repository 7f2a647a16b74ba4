//! The cluster's volumes: `GET /v1/volumes` (every volume on every node,
//! its size and limit as its node last measured them, and who mounts it)
//! and `DELETE /v1/volumes/{name}` (refused while a service or task
//! mounts it, naming them; else removed by the agent of every node that
//! holds it, over its peer port).

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::{Extension, Json};
use gantry_api::{VolumeRemoved, VolumeView};

use crate::api::{not_found, Fail, Peer};
use crate::Shared;

/// `GET /v1/volumes`.
pub(crate) async fn volumes(
    State(sh): State<Arc<Shared>>,
    Extension(peer): Extension<Peer>,
) -> Result<Json<Vec<VolumeView>>, Fail> {
    peer.admin()?;
    let reports = sh.volumes.lock().expect("volumes lock").clone();
    Ok(Json(
        sh.read(|s| gantry_manager::volumes::views(s, &reports)),
    ))
}

/// Volume `name` on every node that holds it.
pub(crate) fn views_of(sh: &Shared, name: &str) -> Vec<VolumeView> {
    let reports = sh.volumes.lock().expect("volumes lock").clone();
    sh.read(|s| {
        gantry_manager::volumes::views(s, &reports)
            .into_iter()
            .filter(|v| v.name == name)
            .collect()
    })
}

/// The nodes that hold volume `name`: those the state says have it, and
/// those whose last measurement lists it.
pub(crate) fn holders(sh: &Shared, name: &str) -> Vec<gantry_store::NodeRecord> {
    let views = views_of(sh, name);
    sh.read(|s| {
        views
            .iter()
            .filter_map(|v| s.nodes.get(&v.node).cloned())
            .collect()
    })
}

/// A list as a sentence: `a`, `a and b`, `a, b and c`.
fn listed(v: &[String]) -> String {
    match v {
        [] => String::new(),
        [one] => one.clone(),
        [rest @ .., last] => format!("{} and {last}", rest.join(", ")),
    }
}

/// `DELETE /v1/volumes/{name}`.
pub(crate) async fn volume_rm(
    State(sh): State<Arc<Shared>>,
    Extension(peer): Extension<Peer>,
    Path(name): Path<String>,
) -> Result<Json<VolumeRemoved>, Fail> {
    peer.admin()?;
    let holders = holders(&sh, &name);
    let (services, tasks) = sh.read(|s| gantry_manager::volumes::users(s, &name, None));
    if holders.is_empty() {
        return Err(not_found(format!("no such volume: {name}")));
    }
    if !services.is_empty() || !tasks.is_empty() {
        let mut users = Vec::new();
        if !services.is_empty() {
            users.push(format!("service {}", listed(&services)));
        }
        if !tasks.is_empty() {
            users.push(format!("task {}", listed(&tasks)));
        }
        return Err(Fail(
            StatusCode::CONFLICT,
            format!("volume {name} is in use by {}", users.join(" and ")),
        ));
    }
    let mut removed = Vec::new();
    let mut failed = Vec::new();
    for n in &holders {
        if !n.up {
            failed.push(format!("{}: the node is down", n.hostname));
            continue;
        }
        match remove_on(&sh, n, &name).await {
            Ok(()) => {
                removed.push(n.hostname.clone());
                let key = gantry_manager::backups::record_key(&n.id, &name);
                if sh.read(|s| s.backups.contains_key(&key)) {
                    sh.apply(vec![gantry_store::Command::RemoveBackup { key }])?;
                }
            }
            Err(e) => failed.push(format!("{}: {e}", n.hostname)),
        }
    }
    if !failed.is_empty() {
        let done = if removed.is_empty() {
            String::new()
        } else {
            format!(" (removed on {})", listed(&removed))
        };
        return Err(Fail(
            StatusCode::CONFLICT,
            format!("volume {name}: {}{done}", failed.join("; ")),
        ));
    }
    Ok(Json(VolumeRemoved {
        name,
        nodes: removed,
    }))
}

/// Asks `node`'s agent to remove the volume (refused while a container
/// there mounts it).
pub(crate) async fn remove_on(
    sh: &Shared,
    node: &gantry_store::NodeRecord,
    name: &str,
) -> Result<(), String> {
    let (client, base) = crate::builds::node_client(sh, node)?;
    let resp = client
        .delete(format!("{base}/volumes/{name}"))
        .timeout(std::time::Duration::from_secs(30))
        .send()
        .await
        .map_err(|e| gantry_image::registry::error_chain(&e))?;
    if resp.status().is_success() {
        // Its figures go now; its list says so at its next heartbeat.
        if let Some(h) = sh.volumes.lock().expect("volumes lock").get_mut(&node.id) {
            h.volumes.remove(name);
        }
        return Ok(());
    }
    let status = resp.status();
    let text = resp.text().await.unwrap_or_default();
    Err(if text.is_empty() {
        format!("its agent answered {status}")
    } else {
        text
    })
}
