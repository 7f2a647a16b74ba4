//! A volume of this host backed up, listed and restored: the one place
//! that does it, for `gantry volume backup|backups|restore` on the host
//! and for the managers' requests on the peer port (`peer.rs`).
//!
//! A backup is one moment of the volume: the running containers that
//! mount it are frozen (cgroup freezer) while it is read, or their own
//! commands run around it instead (`pre`/`post`, a database dump). A
//! restore goes beside the content and replaces it only when whole.

use std::path::Path;
use std::sync::Arc;

use gantry_backup::{Repo, Restored, Snapshot};
use gantry_runtime::Runtime;

/// How a backup is made consistent.
#[derive(Debug, Clone, Default)]
pub struct Consistency {
    /// Leave the users running and unfrozen.
    pub no_freeze: bool,
    /// Run in each user before (instead of freezing them).
    pub pre: Option<String>,
    /// Run in each user after, even when the backup failed.
    pub post: Option<String>,
}

/// Where the repository is and what opens it.
#[derive(Clone)]
pub struct Target {
    /// Its URL.
    pub url: String,
    /// The key (a secret's value).
    pub key: zeroize::Zeroizing<Vec<u8>>,
    /// S3 settings (`AWS_*` names and values).
    pub env: Vec<(String, String)>,
}

impl Target {
    async fn open(&self) -> Result<Repo, String> {
        if self.key.len() < 16 {
            return Err("a backup key has at least 16 bytes".into());
        }
        Repo::open_or_init_with(&self.url, &self.key, &self.env)
            .await
            .map_err(|e| e.to_string())
    }
}

/// A backup made.
#[derive(Debug)]
pub struct Backed {
    /// Its snapshot.
    pub snapshot: Snapshot,
    /// How many containers were frozen while it was read.
    pub frozen: usize,
}

/// Containers frozen while a volume is read, thawed when dropped.
pub(crate) struct Frozen {
    rt: Arc<Runtime>,
    ids: Vec<String>,
}

impl Drop for Frozen {
    fn drop(&mut self) {
        for id in &self.ids {
            if let Err(e) = self.rt.freeze(id, false) {
                tracing::warn!(container = %id, "thawing after a backup: {e}");
            }
        }
    }
}

/// Freezes the running containers that mount volume `name` until the
/// guard is dropped.
pub(crate) fn freeze_users(rt: &Arc<Runtime>, name: &str) -> Result<Frozen, String> {
    let mut frozen = Frozen {
        rt: rt.clone(),
        ids: Vec::new(),
    };
    for (id, cname) in users_of(rt, name) {
        rt.freeze(&id, true)
            .map_err(|e| format!("freezing container {cname}: {e}"))?;
        frozen.ids.push(id);
    }
    Ok(frozen)
}

/// The running containers that mount volume `name`: (id, name).
fn users_of(rt: &Runtime, name: &str) -> Vec<(String, String)> {
    rt.volume_users(name)
        .into_iter()
        .filter(|c| c.state.status == gantry_runtime::Status::Running)
        .map(|c| (c.config.id, c.config.name))
        .collect()
}

/// Runs a hook in each container; the first failure is the error.
async fn hook(
    rt: &Arc<Runtime>,
    users: &[(String, String)],
    cmd: &str,
    what: &str,
) -> Result<(), String> {
    for (id, name) in users {
        let (rt, id, cmd) = (rt.clone(), id.clone(), cmd.to_owned());
        let code = tokio::task::spawn_blocking(move || {
            rt.exec(
                &id,
                &gantry_runtime::ExecOptions {
                    args: vec!["sh".into(), "-c".into(), cmd],
                    ..Default::default()
                },
            )
        })
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| format!("the {what} command in container {name}: {e}"))?;
        if code != 0 {
            return Err(format!(
                "the {what} command exited with {code} in container {name}"
            ));
        }
    }
    Ok(())
}

/// Backs up volume `name` into `to`, as host `host`.
pub async fn backup(
    rt: Arc<Runtime>,
    name: &str,
    to: &Target,
    how: &Consistency,
    host: &str,
) -> Result<Backed, String> {
    let v = rt.volumes().inspect(name).map_err(|e| e.to_string())?;
    rt.volumes().ensure_mounted(&v).map_err(|e| e.to_string())?;
    let repo = Arc::new(to.open().await?);
    let users = users_of(&rt, name);
    if let Some(pre) = &how.pre {
        if let Err(e) = hook(&rt, &users, pre, "pre").await {
            if let Some(post) = &how.post {
                let _ = hook(&rt, &users, post, "post").await;
            }
            return Err(e);
        }
    }
    let frozen = if !how.no_freeze && how.pre.is_none() {
        freeze_users(&rt, name)?
    } else {
        Frozen {
            rt: rt.clone(),
            ids: Vec::new(),
        }
    };
    let snap = gantry_backup::backup(repo, v.mountpoint.clone(), name, host)
        .await
        .map_err(|e| e.to_string());
    let n_frozen = frozen.ids.len();
    drop(frozen);
    if let Some(post) = &how.post {
        hook(&rt, &users, post, "post").await?;
    }
    Ok(Backed {
        snapshot: snap?,
        frozen: n_frozen,
    })
}

/// Volume `name`'s snapshots in `repo`, oldest first.
pub async fn snapshots(name: &str, repo: &Target) -> Result<Vec<Snapshot>, String> {
    let r = repo.open().await?;
    Ok(gantry_backup::snapshots(&r)
        .await
        .map_err(|e| e.to_string())?
        .into_iter()
        .filter(|s| s.volume == name)
        .collect())
}

/// After a forget, the space no snapshot needs given back.
pub async fn forget_and_prune(
    name: &str,
    repo: &Target,
    keep: usize,
) -> Result<(usize, gantry_backup::Pruned), String> {
    let r = repo.open().await?;
    let gone = gantry_backup::forget(&r, name, keep)
        .await
        .map_err(|e| e.to_string())?;
    if gone.is_empty() {
        return Ok((0, Default::default()));
    }
    let pruned = gantry_backup::prune(&r).await.map_err(|e| e.to_string())?;
    Ok((gone.len(), pruned))
}

/// Moves what `from` holds into `into` (same filesystem), after removing
/// everything else `into` holds.
fn replace_contents(into: &Path, from: &Path) -> std::io::Result<()> {
    for e in std::fs::read_dir(into)? {
        let e = e?;
        if e.path() == from {
            continue;
        }
        if e.file_type()?.is_dir() {
            std::fs::remove_dir_all(e.path())?;
        } else {
            std::fs::remove_file(e.path())?;
        }
    }
    for e in std::fs::read_dir(from)? {
        let e = e?;
        std::fs::rename(e.path(), into.join(e.file_name()))?;
    }
    let md = std::fs::metadata(from)?;
    std::fs::set_permissions(into, md.permissions())?;
    std::os::unix::fs::chown(
        into,
        Some(std::os::unix::fs::MetadataExt::uid(&md)),
        Some(std::os::unix::fs::MetadataExt::gid(&md)),
    )?;
    std::fs::remove_dir(from)
}

/// Restores snapshot `from` (an id, a prefix of one, or `latest`) of
/// volume `name` into volume `to` (made now, with `name`'s options when
/// this host has it), or in place (refused while a container that mounts
/// it runs; a stopped one sees the restored content when it starts).
pub async fn restore(
    rt: Arc<Runtime>,
    name: &str,
    from: &str,
    repo: &Target,
    to: Option<&str>,
) -> Result<(Snapshot, Restored), String> {
    let vols = rt.volumes();
    let target = to.unwrap_or(name).to_owned();
    let v = match to {
        None => {
            if let Some(c) = rt.volume_users(name).iter().find(|c| {
                matches!(
                    c.state.status,
                    gantry_runtime::Status::Running | gantry_runtime::Status::Restarting
                )
            }) {
                return Err(format!(
                    "volume {name} is in use by container {}: stop it to restore in place, or give a new volume to restore into",
                    c.config.name
                ));
            }
            vols.inspect(name).map_err(|e| e.to_string())?
        }
        Some(new) => {
            if vols.inspect(new).is_ok() {
                return Err(format!("volume {new} exists: restore into a new volume"));
            }
            let options = vols.inspect(name).map(|v| v.options).unwrap_or_default();
            vols.create_with(new, Default::default(), options)
                .map_err(|e| e.to_string())?
        }
    };
    let made = to.is_some();
    let undo = |e: String| {
        if made {
            let _ = vols.remove(&target);
        }
        e
    };
    vols.ensure_mounted(&v).map_err(|e| undo(e.to_string()))?;
    // Restored beside the content, which it replaces only when whole.
    let tmp = v.mountpoint.join(".gantry-restore");
    let _ = std::fs::remove_dir_all(&tmp);
    let done = async {
        let r = Arc::new(repo.open().await?);
        let snap = gantry_backup::find(&r, from, Some(name))
            .await
            .map_err(|e| e.to_string())?;
        let done = gantry_backup::restore(r, &snap, tmp.clone())
            .await
            .map_err(|e| e.to_string())?;
        Ok::<_, String>((snap, done))
    }
    .await;
    let (snap, done) = match done {
        Ok(d) => d,
        Err(e) => {
            let _ = std::fs::remove_dir_all(&tmp);
            return Err(undo(e));
        }
    };
    replace_contents(&v.mountpoint, &tmp)
        .map_err(|e| format!("{}: {e}", v.mountpoint.display()))?;
    // The volume is no longer fresh: an image does not fill it.
    vols.take_fresh(&target);
    Ok((snap, done))
}
