//! The admin's side of the registry: its password users (`gantry
//! registry user add/ls/rm`) and what it holds (`gantry registry ls`).

use std::collections::BTreeSet;
use std::sync::Arc;

use axum::extract::{Path, State};
use axum::{Extension, Json};
use gantry_api::{RegistryUserCreate, RegistryUserView, RepoView};
use gantry_store::{Command, RegistryUser};
use sha2::Digest as _;

use crate::api::{bad, Fail, JsonBody, Peer};
use crate::files::time;
use crate::{now_ms, Shared};

fn name_ok(n: &str) -> bool {
    !n.is_empty()
        && n.len() <= 64
        && n.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'@'))
}

/// `GET /v1/registry/users`.
pub(crate) async fn ls(
    State(sh): State<Arc<Shared>>,
    Extension(peer): Extension<Peer>,
) -> Result<Json<Vec<RegistryUserView>>, Fail> {
    peer.admin()?;
    Ok(Json(sh.read(|s| {
        s.registry_users
            .values()
            .map(|u| RegistryUserView {
                name: u.name.clone(),
                push: u.push,
                created: time(u.created_ms),
                password: None,
            })
            .collect()
    })))
}

/// `POST /v1/registry/users`: makes a user (or gives one a new password)
/// and answers its password, the only time it is shown.
pub(crate) async fn create(
    State(sh): State<Arc<Shared>>,
    Extension(peer): Extension<Peer>,
    JsonBody(req): JsonBody<RegistryUserCreate>,
) -> Result<Json<RegistryUserView>, Fail> {
    peer.admin()?;
    if !name_ok(&req.name) {
        return Err(bad(format!(
            "invalid user name {:?}: letters, digits and -_.@, at most 64",
            req.name
        )));
    }
    let password = {
        use rand::Rng;
        let b: [u8; 32] = rand::rng().random();
        hex::encode(b)
    };
    let user = RegistryUser {
        name: req.name.clone(),
        password_sha256: hex::encode(sha2::Sha256::digest(password.as_bytes())),
        push: req.push,
        created_ms: now_ms(),
    };
    let created = time(user.created_ms);
    sh.apply(vec![Command::PutRegistryUser(user)])?;
    Ok(Json(RegistryUserView {
        name: req.name,
        push: req.push,
        created,
        password: Some(password),
    }))
}

/// `DELETE /v1/registry/users/{name}`.
pub(crate) async fn rm(
    State(sh): State<Arc<Shared>>,
    Extension(peer): Extension<Peer>,
    Path(name): Path<String>,
) -> Result<Json<serde_json::Value>, Fail> {
    peer.admin()?;
    sh.apply(vec![Command::RemoveRegistryUser { name }])?;
    Ok(Json(serde_json::json!({})))
}

/// `GET /v1/registry`: the repositories.
pub(crate) async fn repos(
    State(sh): State<Arc<Shared>>,
    Extension(peer): Extension<Peer>,
) -> Result<Json<Vec<RepoView>>, Fail> {
    peer.node_or_admin()?;
    Ok(Json(sh.read(|s| {
        s.registry
            .values()
            .map(|r| {
                let mut seen = BTreeSet::new();
                let size = r
                    .manifests
                    .values()
                    .flat_map(|m| &m.blobs)
                    .filter(|b| seen.insert(b.digest.as_str()))
                    .map(|b| b.size)
                    .sum();
                RepoView {
                    name: r.name.clone(),
                    tags: r.tags.clone(),
                    manifests: r.manifests.len(),
                    size,
                    pushed: time(r.manifests.values().map(|m| m.pushed_ms).max().unwrap_or(0)),
                }
            })
            .collect()
    })))
}
