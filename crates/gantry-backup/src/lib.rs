//! Volume backups: a volume's files cut into content-defined chunks
//! (FastCDC, 1 MiB on average), each named by a keyed hash of its
//! content, compressed (zstd) and sealed (XChaCha20-Poly1305), packed,
//! and stored once per repository in a folder or an S3-compatible bucket.
//!
//! A backup reads only what changed since the volume's last snapshot: a
//! file whose size, times and inode are those recorded is taken as it
//! was (as restic does); a changed file is read again, but only its
//! chunks that the repository lacks are stored. Directory trees are
//! blobs too, so an unchanged folder costs nothing. The snapshot is
//! written last: a backup cut short leaves the earlier ones whole. A
//! restore checks every chunk against its name.

mod blob;
mod chunk;
pub mod crypto;
mod prune;
mod repo;
mod snapshot;
mod tree;
mod walk;

pub use prune::{forget, prune, Pruned};
pub use repo::{target, target_with, Config, Index, Location, Repo};
pub use snapshot::{find, snapshots, Snapshot, Stats};
pub use walk::{backup, restore, Restored};

/// What went wrong.
#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    /// The target URL or folder is unusable.
    #[error("backup target {0}")]
    Target(String),
    /// The key does not open the repository, or its bytes were changed.
    #[error("the key does not open this repository (or its data was changed)")]
    WrongKeyOrCorrupt,
    /// The repository holds something this code cannot read.
    #[error("the repository is damaged: {0}")]
    Corrupt(String),
    /// No such snapshot.
    #[error("no snapshot {0}")]
    NoSnapshot(String),
    /// Reading or writing the volume's files.
    #[error(transparent)]
    Io(#[from] std::io::Error),
    /// The storage failed.
    #[error("storage: {0}")]
    Store(#[from] object_store::Error),
}
