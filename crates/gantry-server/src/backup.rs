//! Backups (`gantry server backup FILE`, `gantry server --restore FILE`):
//! a running manager answers a consistent copy of its state, taken under
//! the store lock, with its data key as it keeps it at rest (sealed with
//! the unlock key under autolock, else as its file holds it); secrets and
//! certificate keys stay sealed in it. A new data dir restored from one
//! starts the same cluster: its CAs, join token, services, secrets,
//! configs, networks and routes; its nodes rejoin when their agents reach
//! it (their certificates are the same CA's).
//!
//! A backup is as sensitive as the manager's data dir: it holds the CAs'
//! keys, and, without autolock, the data key. It is written 0600.

use std::path::Path;
use std::sync::Arc;

use axum::extract::State;
use axum::{Extension, Json};
use serde::{Deserialize, Serialize};

use crate::api::{Fail, Peer};
use crate::{private_dir, ServerError, Shared};

/// What a backup file holds.
#[derive(Serialize, Deserialize)]
pub struct Backup {
    /// The store's format the state is in ([`gantry_store::FORMAT`]).
    pub format: u32,
    /// The log index of the last batch the state holds.
    pub index: u64,
    /// When it was taken (RFC 3339).
    pub taken: String,
    /// The data key's file as the manager keeps it: its name
    /// (`data.key`, or `data.key.locked` under autolock) and text.
    pub key_file: String,
    /// See [`Backup::key_file`].
    pub key: String,
    /// The state.
    pub state: gantry_store::State,
}

/// `GET /v1/backup`.
pub(crate) async fn backup(
    State(sh): State<Arc<Shared>>,
    Extension(peer): Extension<Peer>,
) -> Result<Json<Backup>, Fail> {
    peer.admin()?;
    let dir = sh.cfg.data_dir.join("manager");
    let (key_file, key) = [crate::unlock::LOCKED, crate::unlock::PLAIN]
        .iter()
        .find_map(|n| Some((n.to_string(), std::fs::read_to_string(dir.join(n)).ok()?)))
        .ok_or_else(|| {
            Fail(
                axum::http::StatusCode::INTERNAL_SERVER_ERROR,
                "the data key's file is missing".into(),
            )
        })?;
    let (index, state) = sh.read_with_index(|s| s.clone());
    Ok(Json(Backup {
        format: gantry_store::FORMAT,
        index,
        taken: chrono::Utc::now().to_rfc3339(),
        key_file,
        key,
        state,
    }))
}

/// Writes a new manager data dir under `data_dir` from a backup's bytes:
/// refused where a store exists, or for a backup of another format.
pub fn restore(data_dir: &Path, bytes: &[u8]) -> Result<(), ServerError> {
    let b: Backup = serde_json::from_slice(bytes)
        .map_err(|e| ServerError::Config(format!("not a Gantry backup: {e}")))?;
    // Format 3 changed the log, not the state: a backup of format 2 (a
    // single manager's, part 8) restores as it is.
    if !(2..=gantry_store::FORMAT).contains(&b.format) {
        return Err(ServerError::Config(format!(
            "the backup's state has format {}; this release restores formats 2 to {}",
            b.format,
            gantry_store::FORMAT
        )));
    }
    if ![crate::unlock::LOCKED, crate::unlock::PLAIN].contains(&b.key_file.as_str()) {
        return Err(ServerError::Config(format!(
            "the backup names an unknown key file {:?}",
            b.key_file
        )));
    }
    let dir = data_dir.join("manager");
    let store = dir.join("state.redb");
    if store.exists() {
        return Err(ServerError::Config(format!(
            "{} holds a cluster already: restore into an empty data dir",
            dir.display()
        )));
    }
    private_dir(&dir).map_err(|e| ServerError::Io(format!("create {}", dir.display()), e))?;
    let key = dir.join(&b.key_file);
    crate::unlock::write_private(&key, b.key.as_bytes())?;
    let mut state = b.state;
    // Nothing is known to be up until it says so.
    for n in state.nodes.values_mut() {
        n.up = false;
    }
    drop(gantry_store::Store::create_from(&store, state)?);
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&store, std::fs::Permissions::from_mode(0o600))
        .map_err(|e| ServerError::Io(format!("chmod {}", store.display()), e))?;
    tracing::info!(index = b.index, taken = %b.taken, "cluster restored from a backup");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn backup(format: u32, key_file: &str) -> Vec<u8> {
        serde_json::to_vec(&Backup {
            format,
            index: 7,
            taken: String::new(),
            key_file: key_file.into(),
            key: "k".into(),
            state: gantry_store::State::default(),
        })
        .unwrap()
    }

    #[test]
    fn restore_refuses_what_is_no_backup_of_this_release_and_never_overwrites() {
        let dir = tempfile::tempdir().unwrap();
        let err = |b: &[u8]| restore(dir.path(), b).unwrap_err().to_string();
        assert!(err(b"{\"state\": 1}").contains("not a Gantry backup"));
        assert!(err(&backup(1, "data.key")).contains("format 1"));
        assert!(err(&backup(gantry_store::FORMAT, "../../etc/x")).contains("unknown key file"));
        // Nothing was written by the refusals.
        assert!(!dir.path().join("manager").exists());
        restore(dir.path(), &backup(gantry_store::FORMAT, "data.key")).unwrap();
        let m = dir.path().join("manager");
        assert_eq!(std::fs::read_to_string(m.join("data.key")).unwrap(), "k");
        use std::os::unix::fs::PermissionsExt;
        for f in ["data.key", "state.redb"] {
            let mode = std::fs::metadata(m.join(f)).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600, "{f}");
        }
        // A new cluster: its first manager bootstraps a group of one.
        assert!(!gantry_store::Store::open(&m.join("state.redb"))
            .unwrap()
            .is_bootstrapped());
        assert!(err(&backup(gantry_store::FORMAT, "data.key")).contains("holds a cluster already"));
    }
}
