//! Volume backups through the cluster: what the CLI asks a manager
//! (`POST /v1/volumes/{name}/backup|backups|restore`, secrets by name),
//! and what a manager asks the node that holds the volume on its peer
//! port (the same, with the secrets' values).

use serde::{Deserialize, Serialize};

pub use gantry_backup::{Pruned, Restored, Snapshot};

/// A repository named by the CLI: its URL and the secrets that open it.
/// Left out, the volume's `x-gantry` backup settings are taken.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RepoRef {
    /// The repository's URL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repo: Option<String>,
    /// The secret whose value is the key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_secret: Option<String>,
    /// The secret that holds S3 settings (`AWS_*=` lines).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials: Option<String>,
}

/// `POST /v1/volumes/{name}/backup`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackupRequest {
    /// Where to.
    #[serde(flatten)]
    pub repo: RepoRef,
    /// The node whose volume of that name (when several have one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// Leave the users running.
    #[serde(default)]
    pub no_freeze: bool,
    /// A command run in each user before.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pre: Option<String>,
    /// A command run in each user after.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub post: Option<String>,
}

/// `POST /v1/volumes/{name}/backup`: the snapshot made, and where.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackupDone {
    /// The snapshot.
    pub snapshot: Snapshot,
    /// The node's host name.
    pub node: String,
    /// Containers frozen while it was read.
    pub frozen: usize,
}

/// `POST /v1/volumes/{name}/backups`: the volume's snapshots.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackupsRequest {
    /// Which repository.
    #[serde(flatten)]
    pub repo: RepoRef,
}

/// `POST /v1/volumes/{name}/restore`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RestoreRequest {
    /// From which repository.
    #[serde(flatten)]
    pub repo: RepoRef,
    /// The snapshot: an id, a prefix of one, or `latest`.
    pub from: String,
    /// A new volume to restore into (none: in place).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<String>,
    /// The node to restore on (a node id, or its host name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
}

/// `POST /v1/volumes/{name}/restore`: what was restored where.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RestoreDone {
    /// The snapshot.
    pub snapshot: Snapshot,
    /// The volume written.
    pub volume: String,
    /// The node's host name.
    pub node: String,
    /// What was written.
    pub restored: Restored,
}

/// A repository as a manager gives it to a node: the key's value, and S3
/// settings.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeRepo {
    /// The repository's URL.
    pub url: String,
    /// The key, base64.
    pub key: String,
    /// S3 settings.
    #[serde(default)]
    pub env: Vec<(String, String)>,
}

impl std::fmt::Debug for NodeRepo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeRepo").field("url", &self.url).finish()
    }
}

/// What a manager asks of a node's volume (`POST /volumes/{name}/job`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "job", rename_all = "snake_case")]
pub enum NodeVolumeJob {
    /// Back it up.
    Backup {
        /// Where to.
        repo: NodeRepo,
        /// The node's host name, recorded in the snapshot.
        host: String,
        /// Leave the users running.
        #[serde(default)]
        no_freeze: bool,
        /// Before, in each user.
        #[serde(default)]
        pre: Option<String>,
        /// After, in each user.
        #[serde(default)]
        post: Option<String>,
    },
    /// List its snapshots.
    Snapshots {
        /// Where.
        repo: NodeRepo,
    },
    /// Restore one of them.
    Restore {
        /// From where.
        repo: NodeRepo,
        /// Which.
        from: String,
        /// Into a new volume (none: in place).
        #[serde(default)]
        to: Option<String>,
    },
    /// List what it holds (made first, with `options`, when it is not
    /// here), for a copy into it.
    Listing {
        /// The options it is made with.
        #[serde(default)]
        options: std::collections::BTreeMap<String, String>,
    },
    /// List this node's standby copy of it (nothing when there is none).
    ReplicaListing,
    /// Forget this node's standby copy of it.
    DropReplica,
    /// Keep its newest `keep` snapshots and give back the space of the
    /// others.
    Prune {
        /// Where.
        repo: NodeRepo,
        /// How many stay.
        keep: u64,
    },
}

// A volume copied between nodes (`gantry volume move`): the receiver's
// listing, and what an import did.

/// What one entry is, as the quick check compares it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct CopyStat {
    /// `d`, `f`, `l` (link) or `o` (other, left out).
    pub kind: char,
    /// Bytes (files).
    pub size: u64,
    /// Modification time, ns.
    pub mtime_ns: i64,
}

/// Every entry under a folder, by path relative to it (`/`-separated).
pub type CopyListing = std::collections::BTreeMap<String, CopyStat>;

/// What an import did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CopyImported {
    /// Entries written.
    pub written: u64,
    /// File bytes written.
    pub bytes: u64,
    /// Entries removed (the sender no longer has them).
    pub removed: u64,
}

/// `POST /v1/volumes/{name}/move`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MoveRequest {
    /// The node to move it to (an id, a prefix, or a host name); none:
    /// the manager picks one where its services may run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<String>,
    /// The node it is on, when several hold one of that name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
}

/// `POST /v1/volumes/{name}/move`: what moved where, and how long its
/// services were stopped.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MoveDone {
    /// The volume.
    pub volume: String,
    /// The host name it left.
    pub from: String,
    /// The host name it is on now.
    pub to: String,
    /// The copy while its services ran.
    pub first: CopyImported,
    /// The copy with them stopped.
    pub last: CopyImported,
    /// The services stopped for the last copy.
    pub stopped: Vec<String>,
    /// How long they were stopped, ms.
    pub stopped_ms: u64,
}

/// A node's answer to [`NodeVolumeJob::Prune`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PruneDone {
    /// Snapshots forgotten.
    pub forgotten: usize,
    /// What the prune removed.
    pub pruned: Pruned,
}

/// Reads S3 settings from `KEY=value` lines (a secret's value): only
/// `AWS_*` names; blank lines and `#` comments are skipped.
pub fn parse_s3_settings(text: &[u8]) -> Result<Vec<(String, String)>, String> {
    let text = std::str::from_utf8(text).map_err(|_| "the S3 settings are not UTF-8".to_owned())?;
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let line = line.strip_prefix("export ").unwrap_or(line);
        match line.split_once('=') {
            Some((k, v)) if k.starts_with("AWS_") => {
                out.push((k.to_owned(), v.trim_matches('"').to_owned()))
            }
            _ => {
                return Err(format!(
                    "S3 settings line {}: AWS_NAME=value lines only",
                    n + 1
                ))
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn s3_settings_are_aws_lines_only() {
        let env = parse_s3_settings(
            b"# minio\nAWS_ACCESS_KEY_ID=ab\n\nexport AWS_SECRET_ACCESS_KEY=\"cd\"\n",
        )
        .unwrap();
        assert_eq!(
            env,
            vec![
                ("AWS_ACCESS_KEY_ID".into(), "ab".into()),
                ("AWS_SECRET_ACCESS_KEY".into(), "cd".into())
            ]
        );
        assert!(parse_s3_settings(b"PATH=/tmp")
            .unwrap_err()
            .contains("line 1"));
        assert!(parse_s3_settings(b"\xff").is_err());
    }
}
