//! The managers' Raft group: openraft over the cluster API's mutual TLS
//! (`/v1/raft/*`, manager certificates only), who leads, and how a
//! manager joins, is promoted, demoted or removed.
//!
//! Every manager runs the same state machine (`gantry-store`); only the
//! leader proposes. A write is decided and proposed under one lock
//! (`Shared::propose`), so what a read-modify-write read is what its
//! batch applies to.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::{Extension, Json};
use openraft::error::{
    Fatal, InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, ReplicationClosed,
    StreamingError, Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    SnapshotResponse, VoteRequest, VoteResponse,
};
use openraft::{BasicNode, Snapshot, SnapshotMeta, Vote};
use serde::{Deserialize, Serialize};

use gantry_store::{MemberId, TypeConfig};

use crate::api::{Fail, JsonBody, Peer};
use crate::Shared;

/// The managers' Raft.
pub(crate) type Raft = openraft::Raft<TypeConfig>;

/// Raft's timing: a heartbeat every 100 ms; a follower that hears none
/// for the leader's lease (the longest election timeout, 1 s) and then
/// 0.5 to 1 s more calls an election (openraft waits out the lease before
/// it elects). A leader's death is noticed and replaced in 1.5 to 2 s
/// (Swarm's takes about 10 s); the timeouts stay at five heartbeats and
/// more, so a busy leader is not deposed.
pub(crate) fn config() -> openraft::Config {
    openraft::Config {
        cluster_name: "gantry".into(),
        heartbeat_interval: 100,
        election_timeout_min: 500,
        election_timeout_max: LEADER_LEASE_MS,
        // A snapshot writes the whole state: every 1,000 entries, and the
        // 1,000 before it kept for followers a little behind.
        snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(1000),
        max_in_snapshot_log_to_keep: 1000,
        install_snapshot_timeout: 30_000,
        ..Default::default()
    }
}

/// How long a leader goes on leading without hearing from a quorum: the
/// longest election timeout (openraft's lease).
const LEADER_LEASE_MS: u64 = 1000;

/// The other managers as this one knows them: the TLS it calls them with
/// (set once it has its certificate), and when each last answered or
/// called (for `Reachable`).
#[derive(Clone, Default)]
pub(crate) struct Peers {
    tls: Arc<RwLock<Option<rustls::ClientConfig>>>,
    seen: Arc<Mutex<HashMap<MemberId, Instant>>>,
}

impl Peers {
    pub(crate) fn set_tls(&self, tls: rustls::ClientConfig) {
        *self.tls.write().expect("peer tls lock") = Some(tls);
    }

    pub(crate) fn tls(&self) -> Option<rustls::ClientConfig> {
        self.tls.read().expect("peer tls lock").clone()
    }

    pub(crate) fn saw(&self, id: MemberId) {
        self.seen
            .lock()
            .expect("peer seen lock")
            .insert(id, Instant::now());
    }

    pub(crate) fn seen(&self) -> HashMap<MemberId, Instant> {
        self.seen.lock().expect("peer seen lock").clone()
    }
}

/// Makes a link to each other manager.
pub(crate) struct Network(pub(crate) Peers);

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = Link;

    async fn new_client(&mut self, target: MemberId, node: &BasicNode) -> Link {
        Link {
            target,
            addr: node.addr.clone(),
            peers: self.0.clone(),
            client: None,
        }
    }
}

/// The link to one manager.
pub(crate) struct Link {
    target: MemberId,
    addr: String,
    peers: Peers,
    client: Option<gantry_api::Client>,
}

#[derive(Debug)]
struct Msg(String);
impl std::fmt::Display for Msg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}
impl std::error::Error for Msg {}

/// How a call failed, before it is put in the error type of its RPC.
enum CallError {
    Unreachable(String),
    Network(String),
}

impl Link {
    async fn call<Q: Serialize, A: serde::de::DeserializeOwned>(
        &mut self,
        path: &str,
        req: &Q,
        ttl: Duration,
    ) -> Result<A, CallError> {
        if self.client.is_none() {
            let tls = self
                .peers
                .tls()
                .ok_or_else(|| CallError::Unreachable("no certificate yet".into()))?;
            let c = gantry_api::Client::new(&self.addr, tls)
                .map_err(|e| CallError::Unreachable(e.to_string()))?;
            self.client = Some(c);
        }
        let client = self.client.as_ref().expect("client");
        match tokio::time::timeout(ttl, client.post::<Q, A>(path, req)).await {
            Err(_) => Err(CallError::Unreachable(format!(
                "manager {} at {} did not answer within {} ms",
                self.target,
                self.addr,
                ttl.as_millis()
            ))),
            Ok(Ok(a)) => {
                self.peers.saw(self.target);
                Ok(a)
            }
            Ok(Err(gantry_api::ApiError::Unreachable { msg, .. })) => {
                Err(CallError::Unreachable(msg))
            }
            Ok(Err(e)) => Err(CallError::Network(e.to_string())),
        }
    }
}

fn rpc_err<E: std::error::Error>(e: CallError) -> RPCError<MemberId, BasicNode, E> {
    match e {
        CallError::Unreachable(m) => RPCError::Unreachable(Unreachable::new(&Msg(m))),
        CallError::Network(m) => RPCError::Network(NetworkError::new(&Msg(m))),
    }
}

type RpcResult<T, E = openraft::error::Infallible> =
    Result<T, RPCError<MemberId, BasicNode, RaftError<MemberId, E>>>;

impl RaftNetwork<TypeConfig> for Link {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> RpcResult<AppendEntriesResponse<MemberId>> {
        let r: Result<AppendEntriesResponse<MemberId>, RaftError<MemberId>> = self
            .call("/v1/raft/append", &rpc, option.hard_ttl())
            .await
            .map_err(rpc_err)?;
        r.map_err(|e| RemoteError::new(self.target, e).into())
    }

    async fn install_snapshot(
        &mut self,
        _rpc: InstallSnapshotRequest<TypeConfig>,
        _option: RPCOption,
    ) -> RpcResult<InstallSnapshotResponse<MemberId>, InstallSnapshotError> {
        // Snapshots go whole (`full_snapshot`); openraft does not call this
        // with generic snapshot data.
        Err(RPCError::Network(NetworkError::new(&Msg(
            "snapshots are sent whole".into(),
        ))))
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<MemberId>,
        option: RPCOption,
    ) -> RpcResult<VoteResponse<MemberId>> {
        let r: Result<VoteResponse<MemberId>, RaftError<MemberId>> = self
            .call("/v1/raft/vote", &rpc, option.hard_ttl())
            .await
            .map_err(rpc_err)?;
        r.map_err(|e| RemoteError::new(self.target, e).into())
    }

    async fn full_snapshot(
        &mut self,
        vote: Vote<MemberId>,
        snapshot: Snapshot<TypeConfig>,
        _cancel: impl std::future::Future<Output = ReplicationClosed> + Send + 'static,
        _option: RPCOption,
    ) -> Result<SnapshotResponse<MemberId>, StreamingError<TypeConfig, Fatal<MemberId>>> {
        let data = String::from_utf8(*snapshot.snapshot)
            .ok()
            .and_then(|s| serde_json::value::RawValue::from_string(s).ok())
            .ok_or_else(|| {
                StreamingError::Network(NetworkError::new(&Msg("snapshot is not JSON".into())))
            })?;
        let req = SnapshotRequest {
            vote,
            meta: snapshot.meta,
            data,
        };
        let r: Result<SnapshotResponse<MemberId>, Fatal<MemberId>> = self
            .call("/v1/raft/snapshot", &req, Duration::from_secs(60))
            .await
            .map_err(|e| match e {
                CallError::Unreachable(m) => StreamingError::Unreachable(Unreachable::new(&Msg(m))),
                CallError::Network(m) => StreamingError::Network(NetworkError::new(&Msg(m))),
            })?;
        r.map_err(|e| RemoteError::new(self.target, e).into())
    }
}

/// A whole snapshot on the wire: the state is JSON already, so it goes
/// as it is.
#[derive(Serialize, Deserialize)]
pub(crate) struct SnapshotRequest {
    vote: Vote<MemberId>,
    meta: SnapshotMeta<MemberId, BasicNode>,
    data: Box<serde_json::value::RawValue>,
}

pub(crate) async fn append(
    State(sh): State<Arc<Shared>>,
    Extension(peer): Extension<Peer>,
    JsonBody(req): JsonBody<AppendEntriesRequest<TypeConfig>>,
) -> Result<Json<Result<AppendEntriesResponse<MemberId>, RaftError<MemberId>>>, Fail> {
    peer.manager()?;
    sh.peers
        .saw(req.vote.leader_id().voted_for().unwrap_or_default());
    Ok(Json(sh.raft.append_entries(req).await))
}

pub(crate) async fn vote(
    State(sh): State<Arc<Shared>>,
    Extension(peer): Extension<Peer>,
    JsonBody(req): JsonBody<VoteRequest<MemberId>>,
) -> Result<Json<Result<VoteResponse<MemberId>, RaftError<MemberId>>>, Fail> {
    peer.manager()?;
    Ok(Json(sh.raft.vote(req).await))
}

pub(crate) async fn snapshot(
    State(sh): State<Arc<Shared>>,
    Extension(peer): Extension<Peer>,
    JsonBody(req): JsonBody<SnapshotRequest>,
) -> Result<Json<Result<SnapshotResponse<MemberId>, Fatal<MemberId>>>, Fail> {
    peer.manager()?;
    let snap = Snapshot {
        meta: req.meta,
        snapshot: Box::new(req.data.get().as_bytes().to_vec()),
    };
    Ok(Json(sh.raft.install_full_snapshot(req.vote, snap).await))
}

/// Who leads, as this manager knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Leader {
    /// This manager.
    Me,
    /// Another, at this address.
    At(String),
    /// None known (an election, or no quorum).
    Unknown,
}

impl Shared {
    /// Who leads.
    pub(crate) fn leader(&self) -> Leader {
        if self.stepping_down.load(std::sync::atomic::Ordering::SeqCst) {
            return Leader::Unknown;
        }
        // Read in place: this runs for every request and every write.
        let rx = self.raft.metrics();
        let m = rx.borrow();
        let voters = m.membership_config.membership().voter_ids().count();
        // A leader that has not heard from a quorum for longer than an
        // election takes does not lead any more in any way that counts
        // (openraft 0.9 keeps it leader until it hears of a newer one).
        let heard = m
            .millis_since_quorum_ack
            .is_some_and(|ms| ms <= LEADER_LEASE_MS);
        match m.current_leader {
            Some(id) if id == self.me && m.state.is_leader() && (voters <= 1 || heard) => {
                Leader::Me
            }
            Some(id) if id != self.me => match m.membership_config.membership().get_node(&id) {
                Some(n) => Leader::At(n.addr.clone()),
                None => Leader::Unknown,
            },
            _ => Leader::Unknown,
        }
    }

    pub(crate) fn is_leader(&self) -> bool {
        self.leader() == Leader::Me
    }

    /// Why no write can be taken now, naming the managers this one cannot
    /// reach.
    pub(crate) fn no_leader_message(&self) -> String {
        let m = self.raft.metrics().borrow().clone();
        let members = m.membership_config.membership();
        let voters: Vec<MemberId> = members.voter_ids().collect();
        let others: Vec<String> = voters
            .iter()
            .filter(|id| **id != self.me)
            .filter_map(|id| members.get_node(id).map(|n| n.addr.clone()))
            .collect();
        format!(
            "no manager leads the cluster now ({} of {} managers needed): writes are refused until a quorum is back; this manager cannot confirm the others ({}) are reachable (reads are served, possibly stale)",
            voters.len() / 2 + 1,
            voters.len(),
            if others.is_empty() { "none".to_owned() } else { others.join(", ") },
        )
    }
}

/// Waits until this manager leads (a group of one, just started).
pub(crate) async fn wait_leader(sh: &Shared, within: Duration) -> Result<(), crate::ServerError> {
    let mut m = sh.raft.metrics();
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if sh.is_leader() {
            return Ok(());
        }
        if tokio::time::timeout_at(deadline, m.changed())
            .await
            .is_err()
        {
            return Err(crate::ServerError::Group(format!(
                "this manager, alone in its group, was not elected within {} s",
                within.as_secs()
            )));
        }
    }
}

/// Waits until the state holds the cluster (a joining manager: until
/// the leader's snapshot arrives).
pub(crate) async fn wait_state(sh: &Shared, within: Duration) -> Result<(), crate::ServerError> {
    let mut changed = sh.changed.subscribe();
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if sh.meta("ca_key").is_some() {
            return Ok(());
        }
        if tokio::time::timeout_at(deadline, changed.changed())
            .await
            .is_err()
        {
            return Err(crate::ServerError::Group(format!(
                "the cluster's state did not reach this manager within {} s: is the leader reachable, and this manager at the address it gave?",
                within.as_secs()
            )));
        }
    }
}

/// Makes this manager, which no longer votes, stop leading: openraft 0.9
/// keeps a leader removed from the voters leading (it has no transfer of
/// leadership), so this one stops proposing and sending heartbeats until
/// the voters, hearing nothing, elect one of theirs; its vote then
/// changes and it follows.
pub(crate) async fn step_down(sh: &Shared) {
    use std::sync::atomic::Ordering;
    sh.stepping_down.store(true, Ordering::SeqCst);
    sh.raft.runtime_config().heartbeat(false);
    let mut m = sh.raft.metrics();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let other = {
            let now = m.borrow();
            now.current_leader.is_some_and(|l| l != sh.me)
        };
        if other
            || tokio::time::timeout_at(deadline, m.changed())
                .await
                .is_err()
        {
            break;
        }
    }
    sh.raft.runtime_config().heartbeat(true);
    sh.stepping_down.store(false, Ordering::SeqCst);
    tracing::info!(leader = ?sh.raft.metrics().borrow().current_leader, "stepped down");
}
