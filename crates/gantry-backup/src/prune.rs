//! Forgetting old snapshots and giving their space back: `forget` keeps
//! a volume's newest snapshots; `prune` then removes the packs that no
//! remaining snapshot needs a blob of.
//!
//! Order keeps the repository whole at every step: snapshots go first
//! (what they alone named is then garbage); each changed index file is
//! written anew before the old one goes (a blob is never in no index
//! while its pack is there); a pack goes only once no index names it. A
//! prune cut short leaves garbage, never a snapshot missing a blob.
//!
//! A pack still holding one needed blob stays whole (restic would
//! repack it): the space of its other blobs comes back only when its
//! last needed blob goes. Nothing else may write the repository while it
//! runs; the cluster runs one job per repository at a time.

use std::collections::HashSet;

use serde::{Deserialize, Serialize};

use crate::repo::{IndexFile, PackEntry};
use crate::tree::{Kind, Tree};
use crate::{BackupError, Repo, Snapshot};

/// What a prune removed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pruned {
    /// Packs removed.
    pub packs: u64,
    /// Their bytes.
    pub bytes: u64,
    /// Packs kept although some of their blobs are needed no more.
    pub partly_used: u64,
}

/// Removes volume `volume`'s snapshots but its newest `keep` (at least
/// one is kept); returns those removed, oldest first.
pub async fn forget(repo: &Repo, volume: &str, keep: usize) -> Result<Vec<Snapshot>, BackupError> {
    let mine: Vec<Snapshot> = crate::snapshots(repo)
        .await?
        .into_iter()
        .filter(|s| s.volume == volume)
        .collect();
    let n = mine.len().saturating_sub(keep.max(1));
    let gone: Vec<Snapshot> = mine.into_iter().take(n).collect();
    for s in &gone {
        repo.delete("snapshots", &s.id).await?;
    }
    Ok(gone)
}

/// Every blob the repository's snapshots need: their trees and the
/// chunks of their files.
async fn needed(repo: &Repo, idx: &crate::Index) -> Result<HashSet<String>, BackupError> {
    let mut seen = HashSet::new();
    let mut todo: Vec<String> = crate::snapshots(repo)
        .await?
        .into_iter()
        .map(|s| s.tree)
        .collect();
    while let Some(id) = todo.pop() {
        if !seen.insert(id.clone()) {
            continue;
        }
        let plain = repo.blob(idx, &id).await?;
        let tree: Tree = serde_json::from_slice(&plain)
            .map_err(|e| BackupError::Corrupt(format!("tree {id}: {e}")))?;
        for n in tree.nodes {
            match n.kind {
                Kind::File { chunks } => seen.extend(chunks),
                Kind::Dir { tree } => todo.push(tree),
                Kind::Symlink { .. } => {}
            }
        }
    }
    Ok(seen)
}

/// Removes the packs no snapshot needs.
pub async fn prune(repo: &Repo) -> Result<Pruned, BackupError> {
    let idx = repo.index().await?;
    let needed = needed(repo, &idx).await?;
    let mut out = Pruned::default();
    let mut doomed = Vec::new();
    for id in repo.list("index").await? {
        let file: IndexFile = repo.read_sealed("index", &id).await?;
        let (keep, gone): (Vec<PackEntry>, Vec<PackEntry>) = file
            .packs
            .into_iter()
            .partition(|p| p.blobs.iter().any(|(b, _, _)| needed.contains(b)));
        out.partly_used += keep
            .iter()
            .filter(|p| p.blobs.iter().any(|(b, _, _)| !needed.contains(b)))
            .count() as u64;
        if gone.is_empty() {
            continue;
        }
        if !keep.is_empty() {
            let new = IndexFile { packs: keep };
            repo.write_sealed("index", &hex::encode(rand::random::<[u8; 16]>()), &new)
                .await?;
        }
        repo.delete("index", &id).await?;
        doomed.extend(gone.into_iter().map(|p| {
            let len = p.blobs.iter().map(|(_, o, l)| o + u64::from(*l)).max();
            (p.id, len.unwrap_or(0))
        }));
    }
    // A pack another index file still names (written twice by a backup
    // retried) stays.
    let still = repo.index().await?;
    let named: HashSet<&String> = still.packs.iter().collect();
    for (pack, len) in doomed {
        if named.contains(&pack) {
            continue;
        }
        repo.delete("packs", &pack).await?;
        out.packs += 1;
        out.bytes += len;
    }
    Ok(out)
}
