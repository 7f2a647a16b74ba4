//! Cluster networks (`gantry network create/ls/inspect/rm`): networks that
//! stacks share by naming them `external` (the reverse-proxy pattern).
//! The state refuses a service on a network that does not exist and the
//! removal of a network a service is on.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::{Extension, Json};

use gantry_api::{NetworkCreate, NetworkView};
use gantry_store::{Command, NetworkRecord, State as Cluster};

use crate::api::{bad, not_found, Fail, JsonBody, Peer};
use crate::{now_ms, Shared};

fn view(s: &Cluster, n: &NetworkRecord) -> NetworkView {
    NetworkView {
        name: n.name.clone(),
        labels: n.labels.clone(),
        created: chrono::DateTime::from_timestamp_millis(n.created_ms as i64)
            .map(|t| t.to_rfc3339())
            .unwrap_or_default(),
        services: s
            .services
            .values()
            .filter(|r| r.spec.network_names.values().any(|x| *x == n.name))
            .map(|r| r.name.clone())
            .collect(),
    }
}

/// `GET /v1/networks`.
pub(crate) async fn ls(
    State(sh): State<Arc<Shared>>,
    Extension(peer): Extension<Peer>,
) -> Result<Json<Vec<NetworkView>>, Fail> {
    peer.admin()?;
    Ok(Json(sh.read(|s| {
        s.networks.values().map(|n| view(s, n)).collect()
    })))
}

/// `GET /v1/networks/{name}`.
pub(crate) async fn inspect(
    State(sh): State<Arc<Shared>>,
    Extension(peer): Extension<Peer>,
    Path(name): Path<String>,
) -> Result<Json<NetworkView>, Fail> {
    peer.admin()?;
    sh.read(|s| s.networks.get(&name).map(|n| view(s, n)))
        .map(Json)
        .ok_or_else(|| not_found(format!("no such network: {name}")))
}

/// `POST /v1/networks`.
pub(crate) async fn create(
    State(sh): State<Arc<Shared>>,
    Extension(peer): Extension<Peer>,
    JsonBody(req): JsonBody<NetworkCreate>,
) -> Result<Json<NetworkView>, Fail> {
    peer.admin()?;
    let ok = req.name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && req.name.len() <= 63
        && req
            .name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c));
    if !ok {
        return Err(bad(format!(
            "invalid network name {:?}: letters, digits, '_', '.' and '-', starting with a letter or digit, at most 63",
            req.name
        )));
    }
    if let Some((k, _)) = req
        .labels
        .iter()
        .find(|(k, v)| k.is_empty() || k.chars().chain(v.chars()).any(char::is_control))
    {
        return Err(bad(format!("invalid label {k:?}")));
    }
    let mut exists = false;
    let rec = NetworkRecord {
        name: req.name.clone(),
        labels: req.labels,
        created_ms: now_ms(),
    };
    sh.update(|s| {
        exists = s.networks.contains_key(&rec.name);
        if exists {
            Vec::new()
        } else {
            vec![Command::PutNetwork(rec.clone())]
        }
    })?;
    if exists {
        return Err(Fail(
            axum::http::StatusCode::CONFLICT,
            format!("network {} exists already", req.name),
        ));
    }
    Ok(Json(sh.read(|s| view(s, &rec))))
}

/// `DELETE /v1/networks/{name}`.
pub(crate) async fn rm(
    State(sh): State<Arc<Shared>>,
    Extension(peer): Extension<Peer>,
    Path(name): Path<String>,
) -> Result<Json<()>, Fail> {
    peer.admin()?;
    sh.apply(vec![Command::RemoveNetwork { name }])?;
    Ok(Json(()))
}
