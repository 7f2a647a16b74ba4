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

mod state;

use std::path::Path;

use redb::{Database, ReadableDatabase, ReadableTableMetadata, TableDefinition};

pub use state::{
    CertRecord, CertSource, ChallengeRecord, Command, NodeRecord, Rejected, RouteRecord,
    ServiceRecord, State, TaskRecord, TaskState, UpdateStatus,
};

const LOG: TableDefinition<u64, &[u8]> = TableDefinition::new("log");
const SNAPSHOT: TableDefinition<&str, &[u8]> = TableDefinition::new("snapshot");

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
    db: Database,
    state: State,
    index: u64,
    snapshot_index: u64,
    snapshot_every: u64,
}

impl Store {
    /// Opens (or creates) the store at `path`, replaying what it holds.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let db = Database::create(path).map_err(dberr)?;
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
                let s: Snapshot = serde_json::from_slice(v.value())
                    .map_err(|e| StoreError::Corrupt(format!("snapshot: {e}")))?;
                (s.state, s.index)
            }
            None => (State::default(), 0),
        };
        let mut index = snapshot_index;
        let log = r.open_table(LOG).map_err(dberr)?;
        for entry in log.range(snapshot_index + 1..).map_err(dberr)? {
            let (k, v) = entry.map_err(dberr)?;
            let cmd: Command = serde_json::from_slice(v.value())
                .map_err(|e| StoreError::Corrupt(format!("log entry {}: {e}", k.value())))?;
            state.apply(&cmd).map_err(|e| {
                StoreError::Corrupt(format!("log entry {} no longer applies: {e}", k.value()))
            })?;
            index = k.value();
        }
        drop(log);
        drop(r);
        Ok(Self {
            db,
            state,
            index,
            snapshot_index,
            snapshot_every: 1000,
        })
    }

    /// Takes a snapshot every `n` commands (default 1000).
    pub fn snapshot_every(mut self, n: u64) -> Self {
        self.snapshot_every = n.max(1);
        self
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
        if self.index - self.snapshot_index >= self.snapshot_every {
            self.snapshot()?;
        }
        Ok(next)
    }

    /// Checks, logs and applies several commands in one durable write:
    /// all of them or, if one is rejected (against the state the ones
    /// before it leave), none. Returns the last index.
    pub fn apply_batch(&mut self, cmds: &[Command]) -> Result<u64, StoreError> {
        if cmds.is_empty() {
            return Ok(self.index);
        }
        let mut next_state = self.state.clone();
        let mut entries = Vec::with_capacity(cmds.len());
        for cmd in cmds {
            next_state.apply(cmd)?;
            entries.push(serde_json::to_vec(cmd).map_err(|e| StoreError::Corrupt(e.to_string()))?);
        }
        let w = self.db.begin_write().map_err(dberr)?;
        {
            let mut log = w.open_table(LOG).map_err(dberr)?;
            for (i, bytes) in entries.iter().enumerate() {
                log.insert(self.index + 1 + i as u64, bytes.as_slice())
                    .map_err(dberr)?;
            }
        }
        w.commit().map_err(dberr)?;
        self.state = next_state;
        self.index += cmds.len() as u64;
        if self.index - self.snapshot_index >= self.snapshot_every {
            self.snapshot()?;
        }
        Ok(self.index)
    }

    /// Writes the state as a snapshot and trims the log it covers.
    pub fn snapshot(&mut self) -> Result<(), StoreError> {
        let snap = Snapshot {
            index: self.index,
            state: self.state.clone(),
        };
        let bytes = serde_json::to_vec(&snap).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        let w = self.db.begin_write().map_err(dberr)?;
        w.open_table(SNAPSHOT)
            .map_err(dberr)?
            .insert("state", bytes.as_slice())
            .map_err(dberr)?;
        {
            let mut log = w.open_table(LOG).map_err(dberr)?;
            let upto = self.index;
            log.retain(|k, _| k > upto).map_err(dberr)?;
        }
        w.commit().map_err(dberr)?;
        self.snapshot_index = self.index;
        Ok(())
    }

    /// Commands logged after the last snapshot (for tests and, later, for
    /// followers catching up).
    pub fn log_len(&self) -> Result<u64, StoreError> {
        let r = self.db.begin_read().map_err(dberr)?;
        let n = r.open_table(LOG).map_err(dberr)?.len().map_err(dberr)?;
        Ok(n)
    }
}

#[cfg(test)]
mod tests;
