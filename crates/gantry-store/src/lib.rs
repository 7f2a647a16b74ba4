//! The manager's cluster state, shaped as Raft wants it: a log of
//! [`Command`]s applied in order to a deterministic [`State`] machine, with
//! snapshots that let the log be trimmed. One manager writes both to redb
//! today; HA managers on openraft will replicate the same log and apply the
//! same commands, so nothing above this crate changes.
//!
//! **Architecture invariant:** a command is checked against the state
//! before it is logged; a logged command always applies. Reopening the store
//! (snapshot, then the log after it) gives back exactly the state that was
//! there, whenever the process stopped.

mod migrate;

use std::path::Path;
use std::sync::{Arc, Mutex};

use redb::{Database, ReadableDatabase, ReadableTableMetadata, TableDefinition};

pub use gantry_state::{
    Before, CertRecord, CertSource, ChallengeRecord, Command, ConfigRecord, ConfigValue, FileKind,
    FileMeta, NetworkRecord, NodeRecord, Rejected, RouteRecord, SecretRecord, ServiceRecord, State,
    TaskRecord, TaskState, UpdateStatus,
};

const LOG: TableDefinition<u64, &[u8]> = TableDefinition::new("log");
const SNAPSHOT: TableDefinition<&str, &[u8]> = TableDefinition::new("snapshot");

/// The store's format, kept under `format` in the snapshot table: the
/// shape of the commands in the log and of the state in the snapshot.
/// Format 0 is a store from before it was recorded (every release up to
/// part 5). Opening an older format migrates it: the old snapshot and log
/// are read as that format wrote them, and the state is written back as a
/// snapshot of this format with an empty log, in one transaction, so a
/// crash halfway leaves the old store whole. A newer format is refused.
/// Format 2 keeps service specs as typed documents, where 1 kept them as
/// JSON inside strings (see `migrate`).
pub const FORMAT: u32 = 2;

/// A store operation that failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The command breaks a rule of the state; nothing was written.
    #[error(transparent)]
    Rejected(#[from] Rejected),
    /// The database failed.
    #[error("cluster store: {0}")]
    Db(#[from] redb::Error),
    /// What is on disk does not make sense.
    #[error("cluster store is corrupt: {0}")]
    Corrupt(String),
    /// A newer release wrote it.
    #[error("cluster store has format {0}, newer than this release reads ({FORMAT}): run a newer gantry")]
    Newer(u32),
}

fn dberr<E: Into<redb::Error>>(e: E) -> StoreError {
    StoreError::Db(e.into())
}

#[derive(serde::Serialize, serde::Deserialize)]
struct Snapshot {
    index: u64,
    state: State,
}

/// The durable cluster state.
pub struct Store {
    path: std::path::PathBuf,
    db: Arc<Database>,
    state: State,
    index: u64,
    snapshot_index: u64,
    snapshot_every: u64,
    /// The snapshot being written in the background, if any.
    writing: Mutex<Option<std::thread::JoinHandle<Result<(), StoreError>>>>,
}

impl Store {
    /// Opens (or creates) the store at `path`, replaying what it holds and
    /// migrating an older format (see [`FORMAT`]).
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let db = Database::create(path).map_err(dberr)?;
        let format = Self::read_format(&db)?;
        if format > FORMAT {
            return Err(StoreError::Newer(format));
        }
        {
            let w = db.begin_write().map_err(dberr)?;
            w.open_table(LOG).map_err(dberr)?;
            w.open_table(SNAPSHOT).map_err(dberr)?;
            w.commit().map_err(dberr)?;
        }
        let r = db.begin_read().map_err(dberr)?;
        let (mut state, snapshot_index) = match r
            .open_table(SNAPSHOT)
            .map_err(dberr)?
            .get("state")
            .map_err(dberr)?
        {
            Some(v) => {
                let s: Snapshot =
                    migrate::decode(format, v.value(), "snapshot", migrate::snapshot_1_to_2)?;
                (s.state, s.index)
            }
            None => (State::default(), 0),
        };
        // The index of tasks by node is not stored: built once here, kept
        // by every command after.
        state.reindex();
        let mut index = snapshot_index;
        let log = r.open_table(LOG).map_err(dberr)?;
        for entry in log.range(snapshot_index + 1..).map_err(dberr)? {
            let (k, v) = entry.map_err(dberr)?;
            let cmd: Command = migrate::decode(
                format,
                v.value(),
                &format!("log entry {}", k.value()),
                migrate::command_1_to_2,
            )?;
            state.apply(&cmd).map_err(|e| {
                StoreError::Corrupt(format!("log entry {} no longer applies: {e}", k.value()))
            })?;
            index = k.value();
        }
        drop(log);
        drop(r);
        let mut store = Self {
            path: path.to_owned(),
            db: Arc::new(db),
            state,
            index,
            snapshot_index,
            snapshot_every: 1000,
            writing: Mutex::new(None),
        };
        if format < FORMAT {
            store.migrate(format)?;
        } else if store.format()? != FORMAT {
            // A new store: mark it.
            store.snapshot_with(Some(FORMAT))?;
        }
        Ok(store)
    }

    /// The store's format: its mark, [`FORMAT`] for a new store, 0 for a
    /// store from before the mark. Reads only.
    fn read_format(db: &Database) -> Result<u32, StoreError> {
        let r = db.begin_read().map_err(dberr)?;
        let snap = match r.open_table(SNAPSHOT) {
            Ok(t) => Some(t),
            Err(redb::TableError::TableDoesNotExist(_)) => None,
            Err(e) => return Err(dberr(e)),
        };
        let has_log = match r.open_table(LOG) {
            Ok(t) => !t.is_empty().map_err(dberr)?,
            Err(redb::TableError::TableDoesNotExist(_)) => false,
            Err(e) => return Err(dberr(e)),
        };
        let Some(snap) = snap else {
            return Ok(if has_log { 0 } else { FORMAT });
        };
        match snap.get("format").map_err(dberr)? {
            Some(v) => std::str::from_utf8(v.value())
                .ok()
                .and_then(|v| v.parse::<u32>().ok())
                .ok_or_else(|| StoreError::Corrupt("bad format mark".into())),
            None if has_log || !snap.is_empty().map_err(dberr)? => Ok(0),
            None => Ok(FORMAT),
        }
    }

    /// Writes the state read from format `from` back in this format: a
    /// snapshot, an empty log and the format mark, in one transaction.
    fn migrate(&mut self, from: u32) -> Result<(), StoreError> {
        self.snapshot_with(Some(FORMAT))?;
        tracing::info!(
            from,
            to = FORMAT,
            commands = self.index,
            "cluster store migrated"
        );
        Ok(())
    }

    /// Takes a snapshot every `n` commands (default 1000), or every as
    /// many commands as the state has entries if that is more: a snapshot
    /// writes the whole state, so its cost per command stays constant
    /// however big the cluster.
    pub fn snapshot_every(mut self, n: u64) -> Self {
        self.snapshot_every = n.max(1);
        self
    }

    fn snapshot_due(&self) -> bool {
        let s = &self.state;
        let size = (s.nodes.len() + s.services.len() + s.tasks.len()) as u64;
        self.index - self.snapshot_index >= self.snapshot_every.max(size)
    }

    /// The current state.
    pub fn state(&self) -> &State {
        &self.state
    }

    /// The index of the last applied command.
    pub fn index(&self) -> u64 {
        self.index
    }

    /// Checks, logs durably, then applies a command; returns its index.
    pub fn apply(&mut self, cmd: Command) -> Result<u64, StoreError> {
        self.state.check(&cmd)?;
        let bytes = serde_json::to_vec(&cmd).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        let next = self.index + 1;
        let w = self.db.begin_write().map_err(dberr)?;
        w.open_table(LOG)
            .map_err(dberr)?
            .insert(next, bytes.as_slice())
            .map_err(dberr)?;
        w.commit().map_err(dberr)?;
        self.state
            .apply(&cmd)
            .expect("a checked command applies (the state did not change in between)");
        self.index = next;
        if self.snapshot_due() {
            self.snapshot_in_background();
        }
        Ok(next)
    }

    /// Checks, logs and applies several commands in one durable write:
    /// all of them or, if one is rejected (against the state the ones
    /// before it leave), none. Returns the last index.
    pub fn apply_batch(&mut self, cmds: &[Command]) -> Result<u64, StoreError> {
        self.apply_batch_before(cmds).map(|(i, _)| i)
    }

    /// The same, returning also the entries the batch changed as they were
    /// before it (for events). The cost is that of the batch, not of the
    /// state: the entries are copied, applied in place, and put back if a
    /// command is rejected or the write fails.
    pub fn apply_batch_before(&mut self, cmds: &[Command]) -> Result<(u64, Before), StoreError> {
        let before = self.state.before(cmds);
        if cmds.is_empty() {
            return Ok((self.index, before));
        }
        let mut entries = Vec::with_capacity(cmds.len());
        for cmd in cmds {
            let applied = self
                .state
                .apply(cmd)
                .map_err(StoreError::from)
                .and_then(|()| {
                    serde_json::to_vec(cmd).map_err(|e| StoreError::Corrupt(e.to_string()))
                });
            match applied {
                Ok(bytes) => entries.push(bytes),
                Err(e) => {
                    self.state.restore(&before);
                    return Err(e);
                }
            }
        }
        let written = (|| {
            let w = self.db.begin_write().map_err(dberr)?;
            {
                let mut log = w.open_table(LOG).map_err(dberr)?;
                for (i, bytes) in entries.iter().enumerate() {
                    log.insert(self.index + 1 + i as u64, bytes.as_slice())
                        .map_err(dberr)?;
                }
            }
            w.commit().map_err(dberr)
        })();
        if let Err(e) = written {
            self.state.restore(&before);
            return Err(e);
        }
        self.index += cmds.len() as u64;
        if self.snapshot_due() {
            self.snapshot_in_background();
        }
        Ok((self.index, before))
    }

    /// Writes the state as a snapshot and trims the log it covers.
    pub fn snapshot(&mut self) -> Result<(), StoreError> {
        self.snapshot_with(None)
    }

    /// Creates a store at `path` (which must not exist) holding `state` at
    /// `index`, as a snapshot of this format with an empty log: a cluster
    /// restored from a backup.
    pub fn create_from(path: &Path, index: u64, state: State) -> Result<Self, StoreError> {
        if path.exists() {
            return Err(StoreError::Corrupt(format!(
                "{} exists: a store is restored only where there is none",
                path.display()
            )));
        }
        {
            let db = Database::create(path).map_err(dberr)?;
            let w = db.begin_write().map_err(dberr)?;
            w.open_table(LOG).map_err(dberr)?;
            w.open_table(SNAPSHOT).map_err(dberr)?;
            w.commit().map_err(dberr)?;
            write_snapshot(&db, &Snapshot { index, state }, Some(FORMAT))?;
        }
        Self::open(path)
    }

    /// Writes the state as a snapshot into a new database file that
    /// replaces the store's (with the same permissions): nothing the old
    /// file held, in its log or in pages it had freed, is in the new one.
    /// For a value that must leave the disk (a key stored in clear by an
    /// older release).
    pub fn rewrite(&mut self) -> Result<(), StoreError> {
        self.settle()?;
        let io = |e: std::io::Error| StoreError::Db(redb::Error::Io(e));
        let tmp = self.path.with_extension("redb.new");
        let _ = std::fs::remove_file(&tmp);
        let mode = std::fs::metadata(&self.path).map_err(io)?.permissions();
        {
            let db = Database::create(&tmp).map_err(dberr)?;
            std::fs::set_permissions(&tmp, mode).map_err(io)?;
            let w = db.begin_write().map_err(dberr)?;
            w.open_table(LOG).map_err(dberr)?;
            w.open_table(SNAPSHOT).map_err(dberr)?;
            w.commit().map_err(dberr)?;
            let snap = Snapshot {
                index: self.index,
                state: self.state.clone(),
            };
            write_snapshot(&db, &snap, Some(FORMAT))?;
        }
        std::fs::rename(&tmp, &self.path).map_err(io)?;
        self.db = Arc::new(Database::create(&self.path).map_err(dberr)?);
        self.snapshot_index = self.index;
        Ok(())
    }

    /// The format the store is in (see [`FORMAT`]).
    pub fn format(&self) -> Result<u32, StoreError> {
        let r = self.db.begin_read().map_err(dberr)?;
        let t = r.open_table(SNAPSHOT).map_err(dberr)?;
        let v = t.get("format").map_err(dberr)?;
        Ok(
            v.and_then(|v| std::str::from_utf8(v.value()).ok()?.parse().ok())
                .unwrap_or(0),
        )
    }

    fn snapshot_with(&mut self, format: Option<u32>) -> Result<(), StoreError> {
        self.settle()?;
        let snap = Snapshot {
            index: self.index,
            state: self.state.clone(),
        };
        write_snapshot(&self.db, &snap, format)?;
        self.snapshot_index = self.index;
        Ok(())
    }

    /// Snapshots without holding up the caller (who holds the manager's
    /// store lock, which heartbeats and every request wait on): the state
    /// is copied here, and serialised and written on a thread of its own,
    /// in a transaction of its own (log writes wait for it only while it
    /// commits). A snapshot still being written makes this one wait for
    /// the next turn; one that fails leaves the log untrimmed, so nothing
    /// is lost.
    fn snapshot_in_background(&mut self) {
        let mut writing = self.writing.lock().expect("snapshot lock");
        if writing.as_ref().is_some_and(|h| !h.is_finished()) {
            return;
        }
        if let Some(Ok(Err(e))) = writing.take().map(|h| h.join()) {
            tracing::warn!("a snapshot failed (the log keeps its commands): {e}");
        }
        let snap = Snapshot {
            index: self.index,
            state: self.state.clone(),
        };
        let db = self.db.clone();
        *writing = Some(std::thread::spawn(move || write_snapshot(&db, &snap, None)));
        self.snapshot_index = self.index;
    }

    /// Waits for the snapshot being written, if any.
    fn settle(&self) -> Result<(), StoreError> {
        let h = self.writing.lock().expect("snapshot lock").take();
        match h.map(|h| h.join()) {
            None => Ok(()),
            Some(Ok(r)) => r,
            Some(Err(_)) => Err(StoreError::Corrupt("the snapshot writer panicked".into())),
        }
    }

    /// Commands logged after the last snapshot (for tests and, later, for
    /// followers catching up).
    pub fn log_len(&self) -> Result<u64, StoreError> {
        self.settle()?;
        let r = self.db.begin_read().map_err(dberr)?;
        let n = r.open_table(LOG).map_err(dberr)?.len().map_err(dberr)?;
        Ok(n)
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        // A snapshot being written finishes before the database closes.
        let _ = self.settle();
    }
}

/// Writes `snap` as the snapshot (and `format` as the format mark) and
/// trims the log it covers, in one transaction.
fn write_snapshot(db: &Database, snap: &Snapshot, format: Option<u32>) -> Result<(), StoreError> {
    let bytes = serde_json::to_vec(snap).map_err(|e| StoreError::Corrupt(e.to_string()))?;
    let w = db.begin_write().map_err(dberr)?;
    {
        let mut t = w.open_table(SNAPSHOT).map_err(dberr)?;
        t.insert("state", bytes.as_slice()).map_err(dberr)?;
        if let Some(f) = format {
            t.insert("format", f.to_string().as_bytes())
                .map_err(dberr)?;
        }
    }
    {
        let mut log = w.open_table(LOG).map_err(dberr)?;
        let upto = snap.index;
        log.retain(|k, _| k > upto).map_err(dberr)?;
    }
    w.commit().map_err(dberr)
}

#[cfg(test)]
mod tests;
