//! The managers' cluster state: a replicated log of command batches
//! applied in order to a deterministic [`State`] machine, on openraft.
//! This crate is the durable half (the log, the vote and the snapshots in
//! one redb file, [`raft`]) and the state machine ([`Store`]); the
//! network and the managers' roles live in `gantry-server`.
//!
//! **Architecture invariant:** a batch applies whole or not at all, on
//! every manager alike: a rejected one leaves the state as it was and
//! answers its proposer with the rejection. Reopening the store (snapshot,
//! then the committed log after it) gives back exactly the state that was
//! there, whenever the process stopped.

mod migrate;
pub mod raft;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use redb::{Database, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition};
use serde::{Deserialize, Serialize};

pub use gantry_state::{
    BackupRecord, Before, BlobRef, CertRecord, CertSource, ChallengeRecord, Command, ConfigRecord,
    ConfigValue, EventRecord, FileKind, FileMeta, ManifestRecord, NetworkRecord, NodeRecord,
    RegistryUser, Rejected, ReplicaRecord, RepoRecord, RouteRecord, SecretRecord, ServiceRecord,
    State, TaskRecord, TaskState, UpdateStatus,
};
pub use raft::{Batch, LogId, LogStore, Machine, MemberId, Members, TypeConfig};

/// Formats 0 to 2 logged single commands here (one manager, no Raft).
const OLD_LOG: TableDefinition<u64, &[u8]> = TableDefinition::new("log");
/// `format` (the mark), `state` (the last snapshot, [`Snapshot`] as JSON).
const SNAPSHOT: TableDefinition<&str, &[u8]> = TableDefinition::new("snapshot");
/// The Raft log: entries by index.
pub(crate) const RAFT_LOG: TableDefinition<u64, &[u8]> = TableDefinition::new("raft_log");
/// The Raft log's own records: `vote`, `committed`, `purged`.
pub(crate) const RAFT_META: TableDefinition<&str, &[u8]> = TableDefinition::new("raft_meta");

/// The store's format, kept under `format` in the snapshot table: the
/// shape of the log and of the snapshot. Format 0 is a store from before
/// it was recorded (every release up to part 5). Opening an older format
/// migrates it: the old snapshot and log are read as that format wrote
/// them, and the state is written back as a snapshot of this format with
/// an empty log, in one transaction, so a crash halfway leaves the old
/// store whole. A newer format is refused.
/// Format 2 keeps service specs as typed documents, where 1 kept them as
/// JSON inside strings (see `migrate`). Format 3 is the Raft log: batches
/// with their log ids, a vote, and snapshots that carry the membership.
pub const FORMAT: u32 = 3;

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
    /// The managers cannot take a write now (no leader, no quorum, or
    /// this manager stopped leading while the write was under way); the
    /// message says which.
    #[error("{0}")]
    Unavailable(String),
}

pub(crate) fn dberr<E: Into<redb::Error>>(e: E) -> StoreError {
    StoreError::Db(e.into())
}

/// A snapshot as it is kept and sent: the state and where in the log it
/// stands.
#[derive(Serialize, Deserialize)]
pub(crate) struct Snapshot {
    /// The last entry it includes (none: it includes no entry, the
    /// store is not yet part of a group).
    pub(crate) last_log_id: Option<LogId>,
    pub(crate) membership: Members,
    pub(crate) id: String,
    pub(crate) state: State,
}

/// What formats 0 to 2 kept as the snapshot.
#[derive(Deserialize)]
struct OldSnapshot {
    index: u64,
    state: State,
}

/// What an applied batch changed, for the manager's events and wake-ups.
pub enum Change<'a> {
    /// A batch applied at `index`.
    Batch {
        /// Its log index.
        index: u64,
        /// The entries it changed, as they were.
        before: &'a Before,
        /// The state after it.
        state: &'a State,
        /// Its commands.
        cmds: &'a [Command],
        /// The events it recorded.
        events: Vec<EventRecord>,
    },
    /// The whole state was replaced (a snapshot installed from the
    /// leader) at `index`.
    Replaced {
        /// The snapshot's last index.
        index: u64,
    },
}

/// Called with every change the state machine makes, under its lock.
pub type Hook = Box<dyn FnMut(Change<'_>) + Send>;

/// The cluster state machine: the state, where in the log it stands, the
/// group's membership, and the file its snapshots go to.
pub struct Store {
    path: PathBuf,
    db: Arc<Database>,
    state: State,
    applied: Option<LogId>,
    membership: Members,
    hook: Option<Hook>,
}

impl Store {
    /// Opens (or creates) the store at `path`: the last snapshot's state
    /// (Raft replays the committed log after it), or an older format's
    /// state, migrated (see [`FORMAT`]).
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let db = Database::create(path).map_err(dberr)?;
        let format = Self::read_format(&db)?;
        if format > FORMAT {
            return Err(StoreError::Newer(format));
        }
        {
            let w = db.begin_write().map_err(dberr)?;
            w.open_table(SNAPSHOT).map_err(dberr)?;
            w.open_table(RAFT_LOG).map_err(dberr)?;
            w.open_table(RAFT_META).map_err(dberr)?;
            w.commit().map_err(dberr)?;
        }
        let snap = if format < FORMAT {
            let snap = Self::read_old(&db, format)?;
            // Written back in this format, the old log gone, in one
            // transaction.
            let w = db.begin_write().map_err(dberr)?;
            put_snapshot(&w, &snap)?;
            put_format(&w)?;
            w.delete_table(OLD_LOG).map_err(dberr)?;
            w.commit().map_err(dberr)?;
            if format > 0 || !snap.state.nodes.is_empty() {
                tracing::info!(from = format, to = FORMAT, "cluster store migrated");
            }
            snap
        } else {
            match read_snapshot(&db)? {
                Some(s) => s,
                None => {
                    let w = db.begin_write().map_err(dberr)?;
                    put_format(&w)?;
                    w.commit().map_err(dberr)?;
                    Snapshot {
                        last_log_id: None,
                        membership: Members::default(),
                        id: String::new(),
                        state: State::default(),
                    }
                }
            }
        };
        let mut state = snap.state;
        // The indexes of tasks by node and service are not stored: built
        // once here, kept by every command after.
        state.reindex();
        let mut store = Self {
            path: path.to_owned(),
            db: Arc::new(db),
            state,
            applied: snap.last_log_id,
            membership: snap.membership,
            hook: None,
        };
        // The committed log after the snapshot applies now, so that the
        // state is whole before Raft starts (the manager reads its CA from
        // it); Raft then applies what follows.
        for e in raft::committed_entries(&store.db, store.applied)? {
            let _ = store.apply_entry(&e);
        }
        Ok(store)
    }

    /// The state an older format kept: its snapshot, then its log of
    /// single commands replayed.
    fn read_old(db: &Database, format: u32) -> Result<Snapshot, StoreError> {
        let r = db.begin_read().map_err(dberr)?;
        let (mut state, from) = match r
            .open_table(SNAPSHOT)
            .map_err(dberr)?
            .get("state")
            .map_err(dberr)?
        {
            Some(v) => {
                let s: OldSnapshot =
                    migrate::decode(format, v.value(), "snapshot", migrate::snapshot_1_to_2)?;
                (s.state, s.index)
            }
            None => (State::default(), 0),
        };
        state.reindex();
        match r.open_table(OLD_LOG) {
            Ok(log) => {
                for entry in log.range(from + 1..).map_err(dberr)? {
                    let (k, v) = entry.map_err(dberr)?;
                    let cmd: Command = migrate::decode(
                        format,
                        v.value(),
                        &format!("log entry {}", k.value()),
                        migrate::command_1_to_2,
                    )?;
                    state.apply(&cmd).map_err(|e| {
                        StoreError::Corrupt(format!(
                            "log entry {} no longer applies: {e}",
                            k.value()
                        ))
                    })?;
                }
            }
            Err(redb::TableError::TableDoesNotExist(_)) => {}
            Err(e) => return Err(dberr(e)),
        }
        Ok(Snapshot {
            last_log_id: None,
            membership: Members::default(),
            id: String::new(),
            state,
        })
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
        let has_log = match r.open_table(OLD_LOG) {
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

    /// The format the store is in (see [`FORMAT`]).
    pub fn format(&self) -> Result<u32, StoreError> {
        Self::read_format(&self.db)
    }

    /// The current state.
    pub fn state(&self) -> &State {
        &self.state
    }

    /// The index of the last applied log entry.
    pub fn index(&self) -> u64 {
        self.applied.map_or(0, |l| l.index)
    }

    /// The group's membership as the state machine last applied it.
    pub fn members(&self) -> &Members {
        &self.membership
    }

    /// Whether this store belongs to a group yet (a new or migrated one
    /// does not until [`Store::bootstrap`]; a joining manager's does when
    /// the leader's snapshot arrives).
    pub fn is_bootstrapped(&self) -> bool {
        self.membership.voter_ids().next().is_some()
    }

    /// Calls `hook` with every change from now on.
    pub fn set_hook(&mut self, hook: Hook) {
        self.hook = Some(hook);
    }

    /// The log and vote over the same file.
    pub fn log_store(&self) -> LogStore {
        LogStore::new(self.db.clone())
    }

    /// Makes this store a group of one voter, `me` at `addr`, whose log
    /// starts after the state it holds: a new cluster, one migrated from
    /// a single manager, one restored from a backup, or the survivor of a
    /// lost quorum (`--force-new-cluster`): the log, the vote and any
    /// other member are dropped; the state stays.
    pub fn bootstrap(&mut self, me: MemberId, addr: &str) -> Result<(), StoreError> {
        let first = raft::first_log_id(me);
        let membership = raft::single(me, addr, first);
        let snap = Snapshot {
            last_log_id: Some(first),
            membership: membership.clone(),
            id: raft::snapshot_id(&first),
            state: self.state.clone(),
        };
        let w = self.db.begin_write().map_err(dberr)?;
        put_snapshot(&w, &snap)?;
        w.delete_table(RAFT_LOG).map_err(dberr)?;
        w.delete_table(RAFT_META).map_err(dberr)?;
        w.open_table(RAFT_LOG).map_err(dberr)?;
        raft::put_meta(&w, "purged", &Some(first))?;
        w.commit().map_err(dberr)?;
        self.applied = Some(first);
        self.membership = membership;
        Ok(())
    }

    /// Creates a store at `path` (which must not exist) holding `state`,
    /// in no group yet: a cluster restored from a backup (the manager
    /// then bootstraps it).
    pub fn create_from(path: &Path, state: State) -> Result<Self, StoreError> {
        if path.exists() {
            return Err(StoreError::Corrupt(format!(
                "{} exists: a store is restored only where there is none",
                path.display()
            )));
        }
        {
            let db = Database::create(path).map_err(dberr)?;
            let w = db.begin_write().map_err(dberr)?;
            put_snapshot(
                &w,
                &Snapshot {
                    last_log_id: None,
                    membership: Members::default(),
                    id: String::new(),
                    state,
                },
            )?;
            put_format(&w)?;
            w.commit().map_err(dberr)?;
        }
        Self::open(path)
    }

    /// Changes the state outside the log, before Raft runs: for a
    /// migration of what an older release stored (a key kept in clear is
    /// sealed), never for the cluster's own changes. Only a store that is
    /// a group of one may do it (no other manager holds a copy to diverge
    /// from); the state (with the committed log, applied at open) is then
    /// written as the snapshot.
    pub fn migrate_in_place(&mut self, f: impl FnOnce(&mut State)) -> Result<(), StoreError> {
        if self.membership.voter_ids().count() > 1 {
            return Err(StoreError::Corrupt(
                "a store in a group of managers is changed only through its log".into(),
            ));
        }
        f(&mut self.state);
        let snap = self.snapshot();
        let w = self.db.begin_write().map_err(dberr)?;
        put_snapshot(&w, &snap)?;
        w.commit().map_err(dberr)?;
        Ok(())
    }

    /// Writes everything the store holds into a new database file that
    /// replaces the store's (with the same permissions): nothing the old
    /// file held in pages it had freed is in the new one. For a value
    /// that must leave the disk (a key stored in clear by an older
    /// release). Only before Raft runs: the log store must not be open.
    pub fn rewrite(&mut self) -> Result<(), StoreError> {
        let io = |e: std::io::Error| StoreError::Db(redb::Error::Io(e));
        let tmp = self.path.with_extension("redb.new");
        let _ = std::fs::remove_file(&tmp);
        let mode = std::fs::metadata(&self.path).map_err(io)?.permissions();
        {
            let db = Database::create(&tmp).map_err(dberr)?;
            std::fs::set_permissions(&tmp, mode).map_err(io)?;
            let w = db.begin_write().map_err(dberr)?;
            put_snapshot(&w, &self.snapshot())?;
            put_format(&w)?;
            let r = self.db.begin_read().map_err(dberr)?;
            {
                let mut to = w.open_table(RAFT_LOG).map_err(dberr)?;
                for e in r
                    .open_table(RAFT_LOG)
                    .map_err(dberr)?
                    .iter()
                    .map_err(dberr)?
                {
                    let (k, v) = e.map_err(dberr)?;
                    to.insert(k.value(), v.value()).map_err(dberr)?;
                }
                let mut to = w.open_table(RAFT_META).map_err(dberr)?;
                for e in r
                    .open_table(RAFT_META)
                    .map_err(dberr)?
                    .iter()
                    .map_err(dberr)?
                {
                    let (k, v) = e.map_err(dberr)?;
                    to.insert(k.value(), v.value()).map_err(dberr)?;
                }
            }
            w.commit().map_err(dberr)?;
        }
        std::fs::rename(&tmp, &self.path).map_err(io)?;
        self.db = Arc::new(Database::create(&self.path).map_err(dberr)?);
        Ok(())
    }

    /// The state as a snapshot (a copy).
    pub(crate) fn snapshot(&self) -> Snapshot {
        Snapshot {
            last_log_id: self.applied,
            membership: self.membership.clone(),
            id: self
                .applied
                .as_ref()
                .map(raft::snapshot_id)
                .unwrap_or_default(),
            state: self.state.clone(),
        }
    }

    /// Applies one committed log entry. A batch applies whole or, if a
    /// command is rejected against the state the ones before it leave,
    /// not at all: the state is put back and the rejection is the answer.
    pub(crate) fn apply_entry(&mut self, e: &openraft::Entry<TypeConfig>) -> raft::Outcome {
        use openraft::EntryPayload;
        self.applied = Some(e.log_id);
        match &e.payload {
            EntryPayload::Blank => Ok(()),
            EntryPayload::Membership(m) => {
                self.membership = Members::new(Some(e.log_id), m.clone());
                Ok(())
            }
            EntryPayload::Normal(batch) => {
                let before = self.state.before(&batch.cmds);
                for cmd in &batch.cmds {
                    if let Err(r) = self.state.apply(cmd) {
                        self.state.restore(&before);
                        return Err(r);
                    }
                }
                let n = self
                    .state
                    .record_events(&before.state, &batch.cmds, batch.at_ms);
                if let Some(hook) = &mut self.hook {
                    let len = self.state.events.len();
                    let events = self.state.events.range(len - n..).cloned().collect();
                    hook(Change::Batch {
                        index: e.log_id.index,
                        before: &before,
                        state: &self.state,
                        cmds: &batch.cmds,
                        events,
                    });
                }
                Ok(())
            }
        }
    }

    /// Replaces the state with a snapshot from the leader.
    pub(crate) fn install(&mut self, snap: Snapshot) -> Result<(), StoreError> {
        let w = self.db.begin_write().map_err(dberr)?;
        put_snapshot(&w, &snap)?;
        w.commit().map_err(dberr)?;
        let mut state = snap.state;
        state.reindex();
        self.state = state;
        self.applied = snap.last_log_id;
        self.membership = snap.membership;
        let index = self.index();
        if let Some(hook) = &mut self.hook {
            hook(Change::Replaced { index });
        }
        Ok(())
    }

    pub(crate) fn db(&self) -> &Arc<Database> {
        &self.db
    }
}

/// The last snapshot written, if any.
pub(crate) fn read_snapshot(db: &Database) -> Result<Option<Snapshot>, StoreError> {
    let r = db.begin_read().map_err(dberr)?;
    let t = r.open_table(SNAPSHOT).map_err(dberr)?;
    let Some(v) = t.get("state").map_err(dberr)? else {
        return Ok(None);
    };
    serde_json::from_slice(v.value())
        .map(Some)
        .map_err(|e| StoreError::Corrupt(format!("snapshot: {e}")))
}

/// The last snapshot's bytes as written, if any.
pub(crate) fn read_snapshot_bytes(db: &Database) -> Result<Option<Vec<u8>>, StoreError> {
    let r = db.begin_read().map_err(dberr)?;
    let t = r.open_table(SNAPSHOT).map_err(dberr)?;
    Ok(t.get("state").map_err(dberr)?.map(|v| v.value().to_vec()))
}

pub(crate) fn put_snapshot(w: &redb::WriteTransaction, snap: &Snapshot) -> Result<(), StoreError> {
    let bytes = serde_json::to_vec(snap).map_err(|e| StoreError::Corrupt(e.to_string()))?;
    put_snapshot_bytes(w, &bytes)
}

pub(crate) fn put_snapshot_bytes(
    w: &redb::WriteTransaction,
    bytes: &[u8],
) -> Result<(), StoreError> {
    w.open_table(SNAPSHOT)
        .map_err(dberr)?
        .insert("state", bytes)
        .map_err(dberr)?;
    Ok(())
}

fn put_format(w: &redb::WriteTransaction) -> Result<(), StoreError> {
    w.open_table(SNAPSHOT)
        .map_err(dberr)?
        .insert("format", FORMAT.to_string().as_bytes())
        .map_err(dberr)?;
    Ok(())
}

/// The voters of `m` (for the node list's manager status).
pub fn voters(m: &Members) -> BTreeSet<MemberId> {
    m.voter_ids().collect()
}

#[cfg(test)]
mod tests;
