//! Secrets and configs (`gantry secret` and `gantry config`: create, ls,
//! inspect, rm). A secret's value is sealed with the cluster's data key
//! before it reaches the store and is never answered back; a config's is
//! kept as given, and `inspect` shows it, as Docker's does. Creating one
//! that exists gives it the new value (its version goes up, so that the
//! services that use it can roll) or the new labels. The state refuses the
//! removal of one that a service uses, naming the services.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::{Path, State};
use axum::{Extension, Json};
use base64::Engine;

use gantry_api::{FileCreate, FileView};
use gantry_store::{
    Command, ConfigRecord, ConfigValue, FileKind, FileMeta, SecretRecord, State as Cluster,
};

use crate::api::{bad, not_found, Fail, JsonBody, Peer};
use crate::{now_ms, Shared};

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

/// The largest value, as Docker's (500 KiB).
pub(crate) const MAX_VALUE: usize = 500 * 1024;

/// A time (ms since the epoch) as RFC 3339.
pub(crate) fn time(ms: u64) -> String {
    chrono::DateTime::from_timestamp_millis(ms as i64)
        .map(|t| t.to_rfc3339())
        .unwrap_or_default()
}

/// What one looks like: its metadata, and a config's value when `data`.
fn view(s: &Cluster, kind: FileKind, name: &str, data: bool) -> Option<FileView> {
    let (meta, value) = match kind {
        FileKind::Secret => (&s.secrets.get(name)?.meta, None),
        FileKind::Config => {
            let r = s.configs.get(name)?;
            (&r.meta, data.then(|| r.value.data.clone()))
        }
    };
    Some(FileView {
        name: name.to_owned(),
        labels: meta.labels.clone(),
        version: meta.version,
        created: time(meta.created_ms),
        updated: time(meta.updated_ms),
        services: s.file_users(kind, name),
        data: value,
    })
}

fn names(s: &Cluster, kind: FileKind) -> Vec<String> {
    match kind {
        FileKind::Secret => s.secrets.keys().cloned().collect(),
        FileKind::Config => s.configs.keys().cloned().collect(),
    }
}

/// A name as Docker allows one.
pub(crate) fn check_name(kind: FileKind, name: &str) -> Result<(), String> {
    if gantry_stack::check::file_name(name) {
        Ok(())
    } else {
        Err(format!(
            "invalid {kind} name {name:?}: letters, digits, '_', '.' and '-', starting with a letter or digit, at most 64"
        ))
    }
}

pub(crate) fn check(kind: FileKind, req: &FileCreate) -> Result<Vec<u8>, String> {
    check_name(kind, &req.name)?;
    if let Some((k, _)) = req
        .labels
        .iter()
        .find(|(k, v)| k.is_empty() || k.chars().chain(v.chars()).any(char::is_control))
    {
        return Err(format!("invalid label {k:?}"));
    }
    // (The error never quotes the value.)
    let value = B64
        .decode(&req.data)
        .map_err(|_| format!("the {kind}'s value is not base64"))?;
    if value.is_empty() {
        return Err(format!("the {kind}'s value is empty"));
    }
    if value.len() > MAX_VALUE {
        return Err(format!(
            "the {kind}'s value is {} bytes; at most {MAX_VALUE}",
            value.len()
        ));
    }
    if req.template {
        if kind == FileKind::Secret {
            return Err("templates are for configs; a secret's value is kept as given".into());
        }
        gantry_spec::template::check_file(&value)
            .map_err(|e| format!("config {}: template: {e}", req.name))?;
    }
    Ok(value)
}

/// The command that makes `name` hold `value` and `labels`, given what the
/// state has: none when nothing changes (or a secret comes without the
/// data key).
pub(crate) fn put(
    key: Option<&gantry_pki::seal::DataKey>,
    s: &Cluster,
    kind: FileKind,
    req: &FileCreate,
    value: &[u8],
) -> Option<Command> {
    let (name, labels, template) = (&req.name, &req.labels, req.template);
    let now = now_ms();
    match kind {
        FileKind::Secret => {
            let key = key?;
            let old = s.secrets.get(name);
            let same = old.is_some_and(|o| o.open(key).is_ok_and(|v| v[..] == *value));
            let meta = FileMeta::after_put(old.map(|o| &o.meta), name, labels, same, now)?;
            let value = match old {
                Some(o) if same => o.value.clone(),
                _ => key.seal(value, &SecretRecord::aad(name, meta.version)),
            };
            Some(Command::PutSecret(SecretRecord {
                meta,
                value,
                older: BTreeMap::new(),
            }))
        }
        FileKind::Config => {
            let value = ConfigValue {
                data: B64.encode(value),
                template,
            };
            let old = s.configs.get(name);
            let same = old.is_some_and(|o| o.value == value);
            let meta = FileMeta::after_put(old.map(|o| &o.meta), name, labels, same, now)?;
            Some(Command::PutConfig(ConfigRecord {
                meta,
                value,
                older: BTreeMap::new(),
            }))
        }
    }
}

async fn ls_of(sh: Arc<Shared>, peer: Peer, kind: FileKind) -> Result<Json<Vec<FileView>>, Fail> {
    peer.admin()?;
    Ok(Json(sh.read(|s| {
        names(s, kind)
            .iter()
            .filter_map(|n| view(s, kind, n, false))
            .collect()
    })))
}

async fn inspect_of(
    sh: Arc<Shared>,
    peer: Peer,
    kind: FileKind,
    name: String,
) -> Result<Json<FileView>, Fail> {
    peer.admin()?;
    sh.read(|s| view(s, kind, &name, true))
        .map(Json)
        .ok_or_else(|| not_found(format!("no such {kind}: {name}")))
}

async fn create_of(
    sh: Arc<Shared>,
    peer: Peer,
    kind: FileKind,
    req: FileCreate,
) -> Result<Json<FileView>, Fail> {
    peer.admin()?;
    let value = zeroize::Zeroizing::new(check(kind, &req).map_err(bad)?);
    let guard = sh.data_key.read().expect("data key lock");
    let key = match (kind, guard.as_ref()) {
        (FileKind::Secret, None) => return Err(crate::unlock::locked()),
        (FileKind::Secret, k) => k,
        // A config needs no key.
        (FileKind::Config, _) => None,
    };
    sh.update(|s| put(key, s, kind, &req, &value).into_iter().collect())?;
    drop(guard);
    sh.read(|s| view(s, kind, &req.name, false))
        .map(Json)
        .ok_or_else(|| not_found(format!("no such {kind}: {}", req.name)))
}

async fn rm_of(
    sh: Arc<Shared>,
    peer: Peer,
    kind: FileKind,
    name: String,
) -> Result<Json<()>, Fail> {
    peer.admin()?;
    sh.apply(vec![match kind {
        FileKind::Secret => Command::RemoveSecret { name },
        FileKind::Config => Command::RemoveConfig { name },
    }])?;
    Ok(Json(()))
}

/// Which of the two a route serves.
pub(crate) trait Kind {
    const KIND: FileKind;
}

/// `/v1/secrets`.
pub(crate) struct Secrets;

impl Kind for Secrets {
    const KIND: FileKind = FileKind::Secret;
}

/// `/v1/configs`.
pub(crate) struct Configs;

impl Kind for Configs {
    const KIND: FileKind = FileKind::Config;
}

/// `GET /v1/secrets`, `GET /v1/configs`.
pub(crate) async fn ls<K: Kind>(
    State(sh): State<Arc<Shared>>,
    Extension(peer): Extension<Peer>,
) -> Result<Json<Vec<FileView>>, Fail> {
    ls_of(sh, peer, K::KIND).await
}

/// `GET /v1/secrets/{name}` (metadata only), `GET /v1/configs/{name}`
/// (with the value).
pub(crate) async fn inspect<K: Kind>(
    State(sh): State<Arc<Shared>>,
    Extension(peer): Extension<Peer>,
    Path(name): Path<String>,
) -> Result<Json<FileView>, Fail> {
    inspect_of(sh, peer, K::KIND, name).await
}

/// `POST /v1/secrets`, `POST /v1/configs`.
pub(crate) async fn create<K: Kind>(
    State(sh): State<Arc<Shared>>,
    Extension(peer): Extension<Peer>,
    JsonBody(req): JsonBody<FileCreate>,
) -> Result<Json<FileView>, Fail> {
    create_of(sh, peer, K::KIND, req).await
}

/// `DELETE /v1/secrets/{name}`, `DELETE /v1/configs/{name}`.
pub(crate) async fn rm<K: Kind>(
    State(sh): State<Arc<Shared>>,
    Extension(peer): Extension<Peer>,
    Path(name): Path<String>,
) -> Result<Json<()>, Fail> {
    rm_of(sh, peer, K::KIND, name).await
}
