//! The store under a real openraft, with managers in one process joined
//! by an in-process network that can cut a member off: restarts lose
//! nothing, snapshots trim the log, a group of three replicates, elects a
//! new leader when its leader dies, and a member that was away catches up.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use gantry_store::{Batch, Command, LogStore, Machine, MemberId, Store, TypeConfig};
use openraft::error::{
    Fatal, InstallSnapshotError, RPCError, RaftError, RemoteError, ReplicationClosed,
    StreamingError, Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    SnapshotResponse, VoteRequest, VoteResponse,
};
use openraft::{BasicNode, Raft, Snapshot, Vote};

type R = Raft<TypeConfig>;

/// The members by id; those in `cut` neither send nor receive.
#[derive(Clone, Default)]
struct Router {
    rafts: Arc<Mutex<HashMap<MemberId, R>>>,
    cut: Arc<Mutex<BTreeSet<MemberId>>>,
}

struct Link {
    from: MemberId,
    to: MemberId,
    router: Router,
}

#[derive(Debug)]
struct Down;
impl std::fmt::Display for Down {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("unreachable")
    }
}
impl std::error::Error for Down {}

impl Link {
    fn target(&self) -> Option<R> {
        let cut = self.router.cut.lock().unwrap();
        if cut.contains(&self.from) || cut.contains(&self.to) {
            return None;
        }
        self.router.rafts.lock().unwrap().get(&self.to).cloned()
    }
}

impl RaftNetworkFactory<TypeConfig> for Router {
    type Network = Link;
    async fn new_client(&mut self, target: MemberId, _node: &BasicNode) -> Link {
        unreachable!("each member has its own factory, {target}")
    }
}

/// A member's own factory (it knows who sends).
struct From(MemberId, Router);

impl RaftNetworkFactory<TypeConfig> for From {
    type Network = Link;
    async fn new_client(&mut self, target: MemberId, _node: &BasicNode) -> Link {
        Link {
            from: self.0,
            to: target,
            router: self.1.clone(),
        }
    }
}

type E<X = openraft::error::Infallible> = RPCError<MemberId, BasicNode, RaftError<MemberId, X>>;

impl RaftNetwork<TypeConfig> for Link {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        _o: RPCOption,
    ) -> Result<AppendEntriesResponse<MemberId>, E> {
        let t = self.target().ok_or_else(|| Unreachable::new(&Down))?;
        t.append_entries(rpc)
            .await
            .map_err(|e| RemoteError::new(self.to, e).into())
    }

    async fn install_snapshot(
        &mut self,
        _rpc: InstallSnapshotRequest<TypeConfig>,
        _o: RPCOption,
    ) -> Result<InstallSnapshotResponse<MemberId>, E<InstallSnapshotError>> {
        unreachable!("snapshots are sent whole")
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<MemberId>,
        _o: RPCOption,
    ) -> Result<VoteResponse<MemberId>, E> {
        let t = self.target().ok_or_else(|| Unreachable::new(&Down))?;
        t.vote(rpc)
            .await
            .map_err(|e| RemoteError::new(self.to, e).into())
    }

    async fn full_snapshot(
        &mut self,
        vote: Vote<MemberId>,
        snapshot: Snapshot<TypeConfig>,
        _cancel: impl std::future::Future<Output = ReplicationClosed> + Send + 'static,
        _o: RPCOption,
    ) -> Result<SnapshotResponse<MemberId>, StreamingError<TypeConfig, Fatal<MemberId>>> {
        let t = self.target().ok_or_else(|| Unreachable::new(&Down))?;
        t.install_full_snapshot(vote, snapshot)
            .await
            .map_err(|e| RemoteError::new(self.to, e).into())
    }
}

struct Member {
    id: MemberId,
    raft: R,
    store: Arc<Mutex<Store>>,
}

fn config(snapshot_every: u64) -> Arc<openraft::Config> {
    Arc::new(
        openraft::Config {
            heartbeat_interval: 50,
            election_timeout_min: 300,
            election_timeout_max: 600,
            snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(snapshot_every),
            max_in_snapshot_log_to_keep: 0,
            ..Default::default()
        }
        .validate()
        .unwrap(),
    )
}

/// Opens a store; openraft's tasks let go of a stopped member's file a
/// moment after its shutdown returns.
async fn open(path: &Path) -> Store {
    for _ in 0..50 {
        match Store::open(path) {
            Ok(s) => return s,
            Err(gantry_store::StoreError::Db(redb::Error::DatabaseAlreadyOpen)) => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("{e}"),
        }
    }
    panic!("{} stays open", path.display());
}

async fn start(dir: &Path, id: MemberId, router: &Router, bootstrap: bool, every: u64) -> Member {
    let mut store = open(&dir.join(format!("m{id}.redb"))).await;
    if bootstrap && !store.is_bootstrapped() {
        store.bootstrap(id, &format!("m{id}")).unwrap();
    }
    let log: LogStore = store.log_store();
    let store = Arc::new(Mutex::new(store));
    let raft = Raft::new(
        id,
        config(every),
        From(id, router.clone()),
        log,
        Machine(store.clone()),
    )
    .await
    .unwrap();
    router.rafts.lock().unwrap().insert(id, raft.clone());
    Member { id, raft, store }
}

async fn stop(m: Member, router: &Router) {
    router.rafts.lock().unwrap().remove(&m.id);
    m.raft.shutdown().await.unwrap();
}

async fn leader(members: &[&Member]) -> MemberId {
    for _ in 0..100 {
        for m in members {
            if m.raft.current_leader().await == Some(m.id) {
                return m.id;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("no leader");
}

fn meta(k: &str, v: &str) -> Command {
    Command::SetMeta {
        key: k.into(),
        value: v.into(),
    }
}

async fn write(raft: &R, cmds: Vec<Command>) -> Result<(), String> {
    match raft.client_write(Batch { cmds, at_ms: 1 }).await {
        Ok(r) => r.data.map_err(|e| e.to_string()),
        Err(e) => Err(e.to_string()),
    }
}

async fn wait_applied(m: &Member, index: u64) {
    for _ in 0..200 {
        if m.store.lock().unwrap().index() >= index {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("member {} did not reach {index}", m.id);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_manager_restarts_with_nothing_lost_and_rejects_whole() {
    let dir = tempfile::tempdir().unwrap();
    let router = Router::default();
    let m = start(dir.path(), 1, &router, true, 1000).await;
    leader(&[&m]).await;
    for i in 0..20 {
        write(&m.raft, vec![meta(&format!("k{i}"), "v")])
            .await
            .unwrap();
    }
    // A batch whose second command is refused: nothing of it stays.
    let err = write(
        &m.raft,
        vec![
            meta("half", "x"),
            Command::RemoveService {
                name: "ghost".into(),
            },
        ],
    )
    .await
    .unwrap_err();
    assert!(err.contains("ghost"), "{err}");
    let (index, state) = {
        let s = m.store.lock().unwrap();
        (s.index(), s.state().clone())
    };
    assert!(!state.meta.contains_key("half"));
    assert_eq!(state.meta.len(), 20);
    stop(m, &router).await;
    // Reopened, the store applies the committed log after its snapshot
    // before Raft runs (the manager reads its CA from the state then).
    {
        let s = open(&dir.path().join("m1.redb")).await;
        assert_eq!(s.state(), &state);
    }
    let m = start(dir.path(), 1, &router, true, 1000).await;
    wait_applied(&m, index).await;
    assert_eq!(m.store.lock().unwrap().state(), &state);
    leader(&[&m]).await;
    write(&m.raft, vec![meta("after", "restart")])
        .await
        .unwrap();
    stop(m, &router).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshots_trim_the_log_and_a_restart_starts_from_one() {
    let dir = tempfile::tempdir().unwrap();
    let router = Router::default();
    let m = start(dir.path(), 1, &router, true, 10).await;
    leader(&[&m]).await;
    for i in 0..45 {
        write(&m.raft, vec![meta(&format!("k{i}"), &i.to_string())])
            .await
            .unwrap();
    }
    let mut metrics = m.raft.metrics();
    for _ in 0..100 {
        if metrics.borrow().snapshot.is_some_and(|s| s.index >= 40) {
            break;
        }
        tokio::time::timeout(Duration::from_secs(1), metrics.changed())
            .await
            .ok();
    }
    let snap = m.raft.metrics().borrow().snapshot.unwrap();
    assert!(snap.index >= 40, "{snap:?}");
    let state = m.store.lock().unwrap().state().clone();
    stop(m, &router).await;
    let m = start(dir.path(), 1, &router, true, 10).await;
    wait_applied(&m, 46).await;
    assert_eq!(m.store.lock().unwrap().state(), &state);
    assert_eq!(state.meta.len(), 45);
    stop(m, &router).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_managers_replicate_survive_the_leader_and_catch_up() {
    let dir = tempfile::tempdir().unwrap();
    let router = Router::default();
    let m1 = start(dir.path(), 1, &router, true, 20).await;
    leader(&[&m1]).await;
    // State from before the group grew reaches the others by snapshot.
    write(&m1.raft, vec![meta("before", "join")]).await.unwrap();
    let m2 = start(dir.path(), 2, &router, false, 20).await;
    let m3 = start(dir.path(), 3, &router, false, 20).await;
    for id in [2, 3] {
        m1.raft
            .add_learner(id, BasicNode::new(format!("m{id}")), true)
            .await
            .unwrap();
    }
    m1.raft
        .change_membership(BTreeSet::from([1, 2, 3]), false)
        .await
        .unwrap();
    let mut acked = BTreeMap::new();
    for i in 0..30 {
        let k = format!("k{i}");
        write(&m1.raft, vec![meta(&k, "1")]).await.unwrap();
        acked.insert(k, "1".to_owned());
    }
    let idx = m1.store.lock().unwrap().index();
    wait_applied(&m2, idx).await;
    wait_applied(&m3, idx).await;
    let s1 = m1.store.lock().unwrap().state().clone();
    assert_eq!(m2.store.lock().unwrap().state(), &s1);
    assert_eq!(m3.store.lock().unwrap().state(), &s1);
    assert_eq!(s1.meta["before"], "join");

    // The leader dies: the others elect one and take writes.
    stop(m1, &router).await;
    let l = leader(&[&m2, &m3]).await;
    let (lm, other) = if l == 2 { (&m2, &m3) } else { (&m3, &m2) };
    for i in 30..60 {
        let k = format!("k{i}");
        write(&lm.raft, vec![meta(&k, "2")]).await.unwrap();
        acked.insert(k, "2".to_owned());
    }
    // The follower is cut off: the leader alone has no quorum, so a write
    // is not acknowledged.
    router.cut.lock().unwrap().insert(other.id);
    let lone = tokio::time::timeout(
        Duration::from_secs(2),
        write(&lm.raft, vec![meta("lost", "x")]),
    )
    .await;
    assert!(
        !matches!(lone, Ok(Ok(()))),
        "a write without quorum was acknowledged"
    );
    router.cut.lock().unwrap().clear();

    // The first manager returns with its disk and catches up.
    // (The member that was cut off may call an election when it returns:
    // the write goes to whoever leads, as a client's would.)
    let m1 = start(dir.path(), 1, &router, true, 20).await;
    let mut idx = None;
    for _ in 0..20 {
        let l = leader(&[&m1, &m2, &m3]).await;
        let lm = [&m1, &m2, &m3].into_iter().find(|m| m.id == l).unwrap();
        if write(&lm.raft, vec![meta("end", "x")]).await.is_ok() {
            idx = Some(lm.store.lock().unwrap().index());
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let idx = idx.expect("a write after the first manager's return");
    for m in [&m1, &m2, &m3] {
        wait_applied(m, idx).await;
        let s = m.store.lock().unwrap().state().clone();
        for (k, v) in &acked {
            assert_eq!(s.meta.get(k), Some(v), "member {} lost {k}", m.id);
        }
    }
    let s = m1.store.lock().unwrap().state().clone();
    assert_eq!(m2.store.lock().unwrap().state(), &s);
    assert_eq!(m3.store.lock().unwrap().state(), &s);
    for m in [m1, m2, m3] {
        stop(m, &router).await;
    }
}
