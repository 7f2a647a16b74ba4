//! Autolock, as Swarm's: with `gantry server --autolock` the data key that
//! seals secrets is kept at rest only sealed with an unlock key
//! (`manager/data.key.locked`), which Gantry keeps nowhere: it is shown
//! once, when made, and the operator gives it back after each start of
//! the manager (`gantry unlock`). Until then the manager serves everything
//! but secrets, and says how to unlock.
//!
//! Without autolock the data key is `manager/data.key` (0600), apart from
//! the store. Turning autolock on for an existing cluster seals that file
//! and removes it; a manager whose key is locked stays locked, with or
//! without the flag.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::Arc;

use axum::extract::State;
use axum::{Extension, Json};
use gantry_pki::seal::{DataKey, SealError, Sealed, UnlockKey};
use zeroize::Zeroizing;

use crate::api::{bad, Fail, JsonBody, Peer};
use crate::{ServerError, Shared};

/// The plain data key's file, in the manager's dir.
pub(crate) const PLAIN: &str = "data.key";
/// The locked data key's file.
pub(crate) const LOCKED: &str = "data.key.locked";

/// What a locked manager answers when a secret is asked of it.
pub(crate) const LOCKED_MESSAGE: &str =
    "the manager is locked (autolock): give it its unlock key with gantry unlock";

/// The answer to a request that needs the data key while it is locked.
pub(crate) fn locked() -> crate::api::Fail {
    crate::api::Fail(
        axum::http::StatusCode::SERVICE_UNAVAILABLE,
        LOCKED_MESSAGE.into(),
    )
}

/// The data key at start: none while locked; with the unlock key just made
/// when autolock was turned on now (to be shown once).
pub(crate) fn open(
    dir: &Path,
    autolock: bool,
) -> Result<(Option<DataKey>, Option<UnlockKey>), ServerError> {
    let err = |e: SealError| ServerError::Config(e.to_string());
    let io = |what: &str, p: &Path, e| ServerError::Io(format!("{what} {}", p.display()), e);
    let (plain, locked) = (dir.join(PLAIN), dir.join(LOCKED));
    if locked.exists() {
        if !autolock {
            tracing::warn!("the data key is locked: autolock stays on");
        }
        return Ok((None, None));
    }
    let key = DataKey::load_or_create(&plain).map_err(err)?;
    if !autolock {
        return Ok((Some(key), None));
    }
    let unlock = write_locked(dir, &key)?;
    std::fs::remove_file(&plain).map_err(|e| io("remove", &plain, e))?;
    Ok((Some(key), Some(unlock)))
}

/// Seals the data key with a new unlock key into the locked key's file
/// (replaced whole, or not at all); returns the unlock key.
fn write_locked(dir: &Path, key: &DataKey) -> Result<UnlockKey, ServerError> {
    let unlock = UnlockKey::generate();
    let text = serde_json::to_vec(&key.lock(&unlock)).expect("a sealed value serialises");
    write_private(&dir.join(LOCKED), &text)?;
    Ok(unlock)
}

/// Writes `path` (0600) whole, or not at all: a new file synced, then
/// renamed over it.
pub(crate) fn write_private(path: &Path, bytes: &[u8]) -> Result<(), ServerError> {
    let io = |what: &str, p: &Path, e| ServerError::Io(format!("{what} {}", p.display()), e);
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".new");
    let tmp = std::path::PathBuf::from(tmp);
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(|e| io("create", &tmp, e))?;
    f.write_all(bytes).map_err(|e| io("write", &tmp, e))?;
    f.sync_all().map_err(|e| io("sync", &tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| io("rename", path, e))
}

/// `POST /v1/unlock-key/rotate`'s answer: the new unlock key.
#[derive(serde::Serialize)]
pub(crate) struct UnlockKeyView {
    key: String,
}

/// `POST /v1/unlock-key/rotate` (`gantry unlock-key --rotate`): an
/// autolocked, unlocked manager seals its data key with a new unlock key,
/// answered once; the old one no longer opens it.
pub(crate) async fn rotate(
    State(sh): State<Arc<Shared>>,
    Extension(peer): Extension<Peer>,
) -> Result<Json<UnlockKeyView>, Fail> {
    peer.admin()?;
    let dir = sh.cfg.data_dir.join("manager");
    if !dir.join(LOCKED).exists() {
        return Err(Fail(
            axum::http::StatusCode::CONFLICT,
            "autolock is off: there is no unlock key (start the manager with --autolock)".into(),
        ));
    }
    let guard = sh.data_key.read().expect("data key lock");
    let key = guard.as_ref().ok_or_else(locked)?;
    let unlock = write_locked(&dir, key)
        .map_err(|e| Fail(axum::http::StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    tracing::info!(key = key.id(), "unlock key rotated");
    Ok(Json(UnlockKeyView {
        key: unlock.reveal().to_string(),
    }))
}

/// `POST /v1/unlock`: the unlock key, for a locked manager.
#[derive(serde::Deserialize)]
pub(crate) struct UnlockRequest {
    key: String,
}

/// `POST /v1/unlock`.
pub(crate) async fn unlock(
    State(sh): State<Arc<Shared>>,
    Extension(peer): Extension<Peer>,
    JsonBody(req): JsonBody<UnlockRequest>,
) -> Result<Json<()>, Fail> {
    peer.admin()?;
    let given = Zeroizing::new(req.key);
    if sh.data_key.read().expect("data key lock").is_some() {
        return Ok(Json(()));
    }
    let unlock = UnlockKey::parse(&given).map_err(|e| bad(e.to_string()))?;
    let path = sh.cfg.data_dir.join("manager").join(LOCKED);
    let text = std::fs::read(&path).map_err(|e| bad(format!("{}: {e}", path.display())))?;
    let locked: Sealed =
        serde_json::from_slice(&text).map_err(|e| bad(format!("{}: {e}", path.display())))?;
    let key = DataKey::unlock(&locked, &unlock).map_err(|e| bad(e.to_string()))?;
    tracing::info!(key = key.id(), "unlocked");
    // Keys an older release stored in clear are sealed now (by the
    // leader, through the log).
    if sh.is_leader() {
        sh.update(|s| crate::edge::seal_commands(s, &key))?;
    }
    *sh.data_key.write().expect("data key lock") = Some(key);
    // The assignment streams send what was withheld.
    sh.hub.kick();
    Ok(Json(()))
}
