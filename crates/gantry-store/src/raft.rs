//! The store as openraft wants it: the log and vote ([`LogStore`]) and
//! the state machine with its snapshots ([`Machine`]), both in the one
//! redb file. Log writes are durable before they are acknowledged (an
//! fsync per append); the committed index is written without one (Raft
//! does not need it to be durable; it saves a restart the wait for a
//! leader before replaying).

use std::fmt::Debug;
use std::ops::RangeBounds;
use std::sync::{Arc, Mutex};

use openraft::storage::{LogFlushed, RaftLogStorage, RaftStateMachine};
use openraft::{
    BasicNode, CommittedLeaderId, Entry, LogState, Membership, OptionalSend, RaftLogReader,
    RaftSnapshotBuilder, SnapshotMeta, StorageError, StorageIOError, StoredMembership, Vote,
};
use redb::{Database, ReadableDatabase, ReadableTable};
use serde::{Deserialize, Serialize};

use crate::{dberr, Command, Rejected, Snapshot, Store, StoreError, RAFT_LOG, RAFT_META};

/// A manager's id in the group (random, chosen when it first starts).
pub type MemberId = u64;
/// A log entry's id.
pub type LogId = openraft::LogId<MemberId>;
/// The group's members (voters and learners) with their addresses, and
/// the log entry that made it so.
pub type Members = StoredMembership<MemberId, BasicNode>;

/// What the log carries: commands that apply together, stamped with the
/// proposer's clock (for events: every manager shows the same time).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Batch {
    /// The commands, in order.
    pub cmds: Vec<Command>,
    /// When the leader proposed them (ms since the epoch).
    pub at_ms: u64,
}

impl std::fmt::Display for Batch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "batch of {} commands", self.cmds.len())
    }
}

/// The answer to a batch: applied, or rejected (and nothing changed).
pub type Outcome = Result<(), Rejected>;

openraft::declare_raft_types!(
    /// Gantry's Raft types.
    pub TypeConfig:
        D = Batch,
        R = Outcome,
        NodeId = MemberId,
        Node = BasicNode,
        SnapshotData = Vec<u8>,
);

type SErr = StorageError<MemberId>;

fn read_err(e: impl std::fmt::Display) -> SErr {
    StorageIOError::read_logs(openraft::AnyError::error(e.to_string())).into()
}

fn write_err(e: impl std::fmt::Display) -> SErr {
    StorageIOError::write_logs(openraft::AnyError::error(e.to_string())).into()
}

/// The id of the log entry a group starts after (the bootstrap snapshot).
pub(crate) fn first_log_id(me: MemberId) -> LogId {
    LogId::new(CommittedLeaderId::new(0, me), 0)
}

/// A group of one voter.
pub(crate) fn single(me: MemberId, addr: &str, at: LogId) -> Members {
    let nodes = [(me, BasicNode::new(addr))]
        .into_iter()
        .collect::<std::collections::BTreeMap<_, _>>();
    let voters = [me].into_iter().collect();
    Members::new(Some(at), Membership::new(vec![voters], nodes))
}

pub(crate) fn snapshot_id(at: &LogId) -> String {
    format!(
        "{}-{}-{}",
        at.leader_id.term, at.leader_id.node_id, at.index
    )
}

pub(crate) fn put_meta<T: Serialize>(
    w: &redb::WriteTransaction,
    key: &str,
    value: &T,
) -> Result<(), StoreError> {
    let bytes = serde_json::to_vec(value).map_err(|e| StoreError::Corrupt(e.to_string()))?;
    w.open_table(RAFT_META)
        .map_err(dberr)?
        .insert(key, bytes.as_slice())
        .map_err(dberr)?;
    Ok(())
}

fn get_meta<T: serde::de::DeserializeOwned>(
    db: &Database,
    key: &str,
) -> Result<Option<T>, StoreError> {
    let r = db.begin_read().map_err(dberr)?;
    let t = r.open_table(RAFT_META).map_err(dberr)?;
    match t.get(key).map_err(dberr)? {
        Some(v) => serde_json::from_slice(v.value())
            .map(Some)
            .map_err(|e| StoreError::Corrupt(format!("raft {key}: {e}"))),
        None => Ok(None),
    }
}

fn decode(index: u64, bytes: &[u8]) -> Result<Entry<TypeConfig>, StoreError> {
    serde_json::from_slice(bytes)
        .map_err(|e| StoreError::Corrupt(format!("log entry {index}: {e}")))
}

/// The log entries after `applied` up to the committed one (to bring the
/// state up to date outside Raft, see [`Store::migrate_in_place`]).
pub(crate) fn committed_entries(
    db: &Database,
    applied: Option<LogId>,
) -> Result<Vec<Entry<TypeConfig>>, StoreError> {
    let Some(committed) = get_meta::<Option<LogId>>(db, "committed")?.flatten() else {
        return Ok(Vec::new());
    };
    let from = applied.map_or(0, |l| l.index + 1);
    let r = db.begin_read().map_err(dberr)?;
    let t = r.open_table(RAFT_LOG).map_err(dberr)?;
    let mut out = Vec::new();
    for e in t.range(from..=committed.index).map_err(dberr)? {
        let (k, v) = e.map_err(dberr)?;
        out.push(decode(k.value(), v.value())?);
    }
    Ok(out)
}

/// The Raft log and vote, in the store's file.
#[derive(Clone)]
pub struct LogStore {
    db: Arc<Database>,
}

impl LogStore {
    pub(crate) fn new(db: Arc<Database>) -> Self {
        Self { db }
    }

    fn write(
        &self,
        durable: bool,
        f: impl FnOnce(&redb::WriteTransaction) -> Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        let mut w = self.db.begin_write().map_err(dberr)?;
        if !durable {
            w.set_durability(redb::Durability::None)
                .map_err(|e| StoreError::Corrupt(e.to_string()))?;
        }
        f(&w)?;
        w.commit().map_err(dberr)
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry<TypeConfig>>, SErr> {
        let read = || -> Result<_, StoreError> {
            let r = self.db.begin_read().map_err(dberr)?;
            let t = r.open_table(RAFT_LOG).map_err(dberr)?;
            let mut out = Vec::new();
            for e in t.range(range).map_err(dberr)? {
                let (k, v) = e.map_err(dberr)?;
                out.push(decode(k.value(), v.value())?);
            }
            Ok(out)
        };
        read().map_err(read_err)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, SErr> {
        let read = || -> Result<_, StoreError> {
            let purged: Option<LogId> = get_meta::<Option<LogId>>(&self.db, "purged")?.flatten();
            let r = self.db.begin_read().map_err(dberr)?;
            let t = r.open_table(RAFT_LOG).map_err(dberr)?;
            let last = match t.last().map_err(dberr)? {
                Some((k, v)) => Some(decode(k.value(), v.value())?.log_id),
                None => purged,
            };
            Ok(LogState {
                last_purged_log_id: purged,
                last_log_id: last,
            })
        };
        read().map_err(read_err)
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<MemberId>) -> Result<(), SErr> {
        self.write(true, |w| put_meta(w, "vote", vote))
            .map_err(write_err)
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<MemberId>>, SErr> {
        get_meta(&self.db, "vote").map_err(read_err)
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), SErr> {
        self.write(false, |w| put_meta(w, "committed", &committed))
            .map_err(write_err)
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, SErr> {
        Ok(get_meta::<Option<LogId>>(&self.db, "committed")
            .map_err(read_err)?
            .flatten())
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig>) -> Result<(), SErr>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let written = self.write(true, |w| {
            let mut t = w.open_table(RAFT_LOG).map_err(dberr)?;
            for e in entries {
                let bytes =
                    serde_json::to_vec(&e).map_err(|e| StoreError::Corrupt(e.to_string()))?;
                t.insert(e.log_id.index, bytes.as_slice()).map_err(dberr)?;
            }
            Ok(())
        });
        match written {
            Ok(()) => {
                callback.log_io_completed(Ok(()));
                Ok(())
            }
            Err(e) => {
                callback.log_io_completed(Err(std::io::Error::other(e.to_string())));
                Err(write_err(e))
            }
        }
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), SErr> {
        self.write(true, |w| {
            let mut t = w.open_table(RAFT_LOG).map_err(dberr)?;
            t.retain(|k, _| k < log_id.index).map_err(dberr)?;
            Ok(())
        })
        .map_err(write_err)
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), SErr> {
        self.write(true, |w| {
            put_meta(w, "purged", &Some(log_id))?;
            let mut t = w.open_table(RAFT_LOG).map_err(dberr)?;
            t.retain(|k, _| k > log_id.index).map_err(dberr)?;
            Ok(())
        })
        .map_err(write_err)
    }
}

/// The state machine, shared with the manager that reads it.
#[derive(Clone)]
pub struct Machine(pub Arc<Mutex<Store>>);

impl Machine {
    fn lock(&self) -> std::sync::MutexGuard<'_, Store> {
        self.0.lock().expect("store lock")
    }
}

fn snap_err(e: impl std::fmt::Display) -> SErr {
    StorageIOError::write_snapshot(None, openraft::AnyError::error(e.to_string())).into()
}

impl RaftSnapshotBuilder<TypeConfig> for Machine {
    async fn build_snapshot(&mut self) -> Result<openraft::Snapshot<TypeConfig>, SErr> {
        // Copied under the lock, serialised and written outside it: the
        // manager's reads and applies do not wait for the disk.
        let (snap, db) = {
            let s = self.lock();
            (s.snapshot(), s.db().clone())
        };
        let bytes = serde_json::to_vec(&snap).map_err(snap_err)?;
        let w = db.begin_write().map_err(snap_err)?;
        crate::put_snapshot_bytes(&w, &bytes).map_err(snap_err)?;
        w.commit().map_err(snap_err)?;
        Ok(openraft::Snapshot {
            meta: SnapshotMeta {
                last_log_id: snap.last_log_id,
                last_membership: snap.membership,
                snapshot_id: snap.id,
            },
            snapshot: Box::new(bytes),
        })
    }
}

impl RaftStateMachine<TypeConfig> for Machine {
    type SnapshotBuilder = Machine;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, Members), SErr> {
        let s = self.lock();
        Ok((s.applied, s.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Outcome>, SErr>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut s = self.lock();
        Ok(entries.into_iter().map(|e| s.apply_entry(&e)).collect())
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Vec<u8>>, SErr> {
        Ok(Box::default())
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<MemberId, BasicNode>,
        data: Box<Vec<u8>>,
    ) -> Result<(), SErr> {
        let mut snap: Snapshot = serde_json::from_slice(&data).map_err(snap_err)?;
        snap.last_log_id = meta.last_log_id;
        snap.membership = meta.last_membership.clone();
        snap.id = meta.snapshot_id.clone();
        self.lock().install(snap).map_err(snap_err)
    }

    async fn get_current_snapshot(
        &mut self,
    ) -> Result<Option<openraft::Snapshot<TypeConfig>>, SErr> {
        let db = self.lock().db().clone();
        let Some(bytes) = crate::read_snapshot_bytes(&db).map_err(snap_err)? else {
            return Ok(None);
        };
        let snap: Snapshot = serde_json::from_slice(&bytes).map_err(snap_err)?;
        if snap.last_log_id.is_none() {
            return Ok(None);
        }
        Ok(Some(openraft::Snapshot {
            meta: SnapshotMeta {
                last_log_id: snap.last_log_id,
                last_membership: snap.membership,
                snapshot_id: snap.id,
            },
            snapshot: Box::new(bytes),
        }))
    }
}
