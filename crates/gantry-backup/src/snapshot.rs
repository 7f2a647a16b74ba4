//! Snapshots: one per backup, the last object it writes.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::{BackupError, Repo};

/// What one backup read and stored.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stats {
    /// Files in the snapshot.
    pub files: u64,
    /// Folders in it.
    pub dirs: u64,
    /// Bytes of its files.
    pub bytes: u64,
    /// Files taken unread from the previous snapshot.
    pub unchanged_files: u64,
    /// Bytes read (files that changed or are new).
    pub read_bytes: u64,
    /// Blobs stored anew.
    pub new_blobs: u64,
    /// Their bytes, before compression.
    pub new_bytes: u64,
    /// What the repository grew by (packs, sealed and compressed).
    pub stored_bytes: u64,
    /// Entries left out (devices, sockets, fifos).
    pub skipped: u64,
    /// Entries that went while the backup read the folder.
    #[serde(default)]
    pub vanished: u64,
    /// How long it took, milliseconds.
    pub millis: u64,
}

/// A backup of one volume.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Snapshot {
    /// Its id (hex).
    pub id: String,
    /// When it was taken.
    pub time: DateTime<Utc>,
    /// The volume.
    pub volume: String,
    /// The host (node) it was taken on.
    pub host: String,
    /// Its root tree.
    pub tree: String,
    /// The volume folder's own mode, owner and group.
    #[serde(default)]
    pub root: (u32, u32, u32),
    /// The snapshot it was compared with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<String>,
    /// What it read and stored.
    pub stats: Stats,
}

/// Every snapshot in the repository, oldest first.
pub async fn snapshots(repo: &Repo) -> Result<Vec<Snapshot>, BackupError> {
    let mut out = Vec::new();
    for id in repo.list("snapshots").await? {
        out.push(repo.read_sealed::<Snapshot>("snapshots", &id).await?);
    }
    out.sort_by(|a, b| (a.time, &a.id).cmp(&(b.time, &b.id)));
    Ok(out)
}

/// The snapshot `id` names: its id, a unique prefix of it, or `latest`
/// (of `volume`, when given).
pub async fn find(repo: &Repo, id: &str, volume: Option<&str>) -> Result<Snapshot, BackupError> {
    let all = snapshots(repo).await?;
    let of_volume = |s: &&Snapshot| volume.is_none_or(|v| s.volume == v);
    if id == "latest" {
        return all.iter().rev().find(of_volume).cloned().ok_or_else(|| {
            BackupError::NoSnapshot(format!("of {}", volume.unwrap_or("any volume")))
        });
    }
    let found: Vec<&Snapshot> = all
        .iter()
        .filter(of_volume)
        .filter(|s| s.id.starts_with(id))
        .collect();
    match found[..] {
        [one] if !id.is_empty() => Ok(one.clone()),
        [] => Err(BackupError::NoSnapshot(id.into())),
        _ => Err(BackupError::NoSnapshot(format!(
            "{id} (several match: give more of it)"
        ))),
    }
}
