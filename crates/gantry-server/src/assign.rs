//! The assignment streams (`GET /v1/agent/watch`). One hub serves every
//! connected node: after a change of state it waits [`COALESCE`] for more,
//! then computes once what every node shares (peers, ingress ports,
//! certificates, challenges, the routes of nodes without routes of their
//! own) and what changed in it, the task addresses by scope (one record
//! per service; `gantry_manager::scope`) and what changed in each, and for
//! each node only its own part: its tasks against those it was last sent,
//! the records of its scopes (the networks its tasks join, and ingress;
//! computed once for all the nodes that share the same scopes), its
//! network, routes and edge role. A node gets one numbered line with the
//! change, or nothing when nothing of its changed; a node that connects
//! gets its whole set. A node whose stream is behind (its queue full) is
//! skipped, and once it drains gets one change from what it was last sent
//! (each node keeps, by reference, the shared part and records it was
//! sent), so a slow node costs one coalesced change, never a bigger whole
//! set.
//!
//! The work of a change grows with the cluster once (one pass over the
//! state) and with the nodes only by the size of what each is sent.

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use gantry_api::{Assignment, AssignmentDelta, AssignmentUpdate, Assignments, Change, IngressPort};
use gantry_store::{State as Cluster, TaskRecord, TaskState};
use tokio::sync::{mpsc, Notify};

use crate::api::json_line;
use crate::Shared;
use gantry_manager::scope::{self, Scoped};
use gantry_manager::views::ingress_ports;

/// How long the hub waits after a change for more before it sends.
pub(crate) const COALESCE: Duration = Duration::from_millis(50);

/// Lines queued to one node before it counts as behind.
const QUEUE: usize = 16;

/// A connected node's stream.
struct Conn {
    tx: mpsc::Sender<Bytes>,
    /// The number of the last line sent.
    seq: u64,
    /// What the node holds, unless it needs a whole set.
    sent: Option<Held>,
}

/// What a node holds, apart from the shared part: its tasks, network,
/// routes and edge role. A task is sent once: what a node needs of it (its
/// spec, address and slot) never changes for one id (a new spec is a new
/// task; a task re-stamped with a new version of the same container, as a
/// scale does, is the same to the node).
struct Held {
    /// The shared part it was last sent (shared by reference with every
    /// node sent the same round).
    shared: Arc<Assignments>,
    /// The scoped records it was last sent (the same).
    scoped: Arc<Scoped>,
    tasks: std::collections::BTreeSet<String>,
    /// Its DNS and network scopes (`gantry_manager::scope`).
    scopes: std::collections::BTreeSet<String>,
    network: Option<gantry_api::NodeNetwork>,
    routes: Vec<gantry_route::Route>,
    ingress: Vec<IngressPort>,
    edge: bool,
}

/// The assignment streams of every connected node.
#[derive(Default)]
pub(crate) struct Hub {
    conns: Mutex<HashMap<String, Conn>>,
    /// Each node's newest stream (by number): the one the hub feeds. Kept
    /// apart from `conns`, which a round takes out while it runs.
    current: Mutex<HashMap<String, u64>>,
    next: std::sync::atomic::AtomicU64,
    kick: Notify,
}

/// A stream's handle for its keep-alive lines.
pub(crate) struct KeepAlive {
    node: String,
    number: u64,
    tx: mpsc::Sender<Bytes>,
}

impl Hub {
    /// Registers a node's new stream, which replaces any other of the node;
    /// its whole set goes out with the next round, which starts at once.
    /// Also returns the stream's keep-alive handle.
    pub(crate) fn connect(&self, node: &str) -> (mpsc::Receiver<Bytes>, KeepAlive) {
        let (tx, rx) = mpsc::channel(QUEUE);
        let number = self.next.fetch_add(1, Ordering::Relaxed);
        self.current
            .lock()
            .expect("hub lock")
            .insert(node.to_owned(), number);
        self.conns.lock().expect("hub lock").insert(
            node.to_owned(),
            Conn {
                tx: tx.clone(),
                seq: 0,
                sent: None,
            },
        );
        self.kick.notify_one();
        let keep = KeepAlive {
            node: node.to_owned(),
            number,
            tx,
        };
        (rx, keep)
    }

    /// Starts a round now (something the rounds read besides the state
    /// changed: the data key arrived).
    pub(crate) fn kick(&self) {
        self.kick.notify_one();
    }

    /// Sends a stream a keep-alive line if it is still its node's stream
    /// and open. Returns false when it is not: the caller drops the handle,
    /// which ends a replaced stream (the hub no longer holds its sender),
    /// so that a node never listens to a stream that nothing feeds. (A
    /// node whose first request was slow to arrive may connect again, and
    /// the older request register after the newer one.)
    pub(crate) fn keep_alive(&self, k: &KeepAlive) -> bool {
        let current = self.current.lock().expect("hub lock").get(&k.node) == Some(&k.number);
        current
            && !matches!(
                k.tx.try_send(Bytes::from_static(b"\n")),
                Err(mpsc::error::TrySendError::Closed(_))
            )
    }
}

/// The hub's loop: a round after every change (coalesced) or connection.
pub(crate) async fn run(sh: Arc<Shared>) {
    let mut changed = sh.changed.subscribe();
    loop {
        tokio::select! {
            r = changed.changed() => if r.is_err() { return },
            _ = sh.hub.kick.notified() => {}
        }
        tokio::time::sleep(COALESCE).await;
        changed.mark_unchanged();
        let s2 = sh.clone();
        match tokio::task::spawn_blocking(move || round(&s2)).await {
            Ok(behind) => {
                if behind {
                    // A node's queue was full: try it again soon.
                    let sh = sh.clone();
                    tokio::spawn(async move {
                        tokio::time::sleep(Duration::from_millis(500)).await;
                        sh.hub.kick.notify_one();
                    });
                }
            }
            Err(e) => tracing::error!("assignment round panicked: {e}"),
        }
    }
}

/// The part every node shares (DNS and networks are scoped: each node
/// gets those of its own networks).
fn shared_part(s: &Cluster, key: Option<&gantry_pki::seal::DataKey>) -> Assignments {
    let mut a = Assignments::empty();
    a.peers = s
        .nodes
        .values()
        .filter(|n| n.up)
        .filter_map(|n| {
            Some(gantry_api::Peer {
                id: n.id.clone(),
                addr: n.addr.clone(),
                block: n.block?,
                vtep_mac: n.vtep_mac.clone()?,
            })
        })
        .collect();
    (a.certs, a.certs_withheld) = crate::edge::certs(s, key);
    a.http01 = s
        .challenges
        .values()
        .filter(|c| !c.token.is_empty())
        .map(|c| (c.token.clone(), c.key_auth.clone()))
        .collect();
    a.alpn01 = s
        .challenges
        .values()
        .filter(|c| c.token.is_empty())
        .map(|c| gantry_api::Cert {
            names: vec![c.name.clone()],
            cert_pem: c.cert_pem.clone(),
            key_pem: c.key_pem.clone(),
        })
        .collect();
    a.normalise();
    a
}

/// The tasks a node must run now.
fn wanted(t: &TaskRecord) -> bool {
    t.desired == TaskState::Running && !matches!(t.state, TaskState::Failed | TaskState::Shutdown)
}

/// A task with the spec of its version and its files (secrets opened
/// with `key`; a task that cannot have them is sent why).
fn assignment(
    s: &Cluster,
    t: &TaskRecord,
    hostname: &str,
    key: Option<&gantry_pki::seal::DataKey>,
) -> Option<Assignment> {
    let rec = s.services.get(&t.service)?;
    let spec = match &rec.previous {
        Some((v, spec)) if *v == t.version && t.version != rec.version => spec.clone(),
        _ => rec.spec.clone(),
    };
    let (files, blocked) = match gantry_manager::files::task_files(s, t, &spec, hostname, key) {
        Ok(f) => (f, None),
        Err(e) => (Vec::new(), Some(e)),
    };
    Some(Assignment {
        task: t.clone(),
        stack: rec.stack.clone(),
        spec,
        files,
        blocked,
    })
}

/// The node's network, routes (with TCP routes folded into ingress) and
/// edge role; `generic`: the routes of a node without DFP routes of its
/// own, computed once.
struct NodePart {
    network: Option<gantry_api::NodeNetwork>,
    routes: Vec<gantry_route::Route>,
    ingress: Vec<IngressPort>,
    edge: bool,
}

/// What a round computes once for every node's part.
struct RoundFacts {
    ingress: Vec<IngressPort>,
    /// The routes of a node without DFP routes of its own.
    generic: (Vec<gantry_route::Route>, Vec<IngressPort>),
    /// Nodes with DFP routes of their own.
    with_own: std::collections::BTreeSet<String>,
    /// Whether some node is marked an edge node.
    edge_marked: bool,
    cidr: gantry_ipam::Net,
    vni: u32,
    direct_routing: bool,
}

impl RoundFacts {
    fn of(s: &Cluster) -> Self {
        Self {
            ingress: ingress_ports(s),
            generic: crate::edge::routes_for(s, ""),
            with_own: s.routes.values().filter_map(|r| r.node.clone()).collect(),
            edge_marked: crate::edge::any_marked(s),
            cidr: gantry_manager::network::plan(s).cidr,
            vni: s
                .meta
                .get(crate::VNI_KEY)
                .and_then(|v| v.parse().ok())
                .unwrap_or(crate::DEFAULT_VNI),
            direct_routing: s.meta.get(crate::DIRECT_ROUTING_KEY).map(String::as_str)
                == Some("true"),
        }
    }
}

fn node_part(s: &Cluster, node: &str, f: &RoundFacts) -> NodePart {
    let network = s
        .nodes
        .get(node)
        .and_then(|n| n.block)
        .map(|block| gantry_api::NodeNetwork {
            block,
            vni: f.vni,
            cidr: f.cidr,
            direct_routing: f.direct_routing,
        });
    let edge = crate::edge::is_edge_given(s, node, f.edge_marked);
    let own;
    let (routes, tcp) = match (edge, f.with_own.contains(node)) {
        (false, _) => (&Vec::new(), &Vec::new()),
        (true, false) => (&f.generic.0, &f.generic.1),
        (true, true) => {
            own = crate::edge::routes_for(s, node);
            (&own.0, &own.1)
        }
    };
    let mut all: Vec<IngressPort> = f.ingress.iter().chain(tcp).cloned().collect();
    all.sort();
    all.dedup_by_key(|p| p.key());
    NodePart {
        network,
        routes: routes.clone(),
        ingress: all,
        edge,
    }
}

/// The records a node held, the scopes it held them of, and its scopes
/// now.
type AddrKey = (*const Scoped, BTreeSet<String>, BTreeSet<String>);
/// A node's change of addresses: scopes changed, scopes gone.
type AddrDelta = (
    std::collections::BTreeMap<String, gantry_api::ScopeChange>,
    Vec<String>,
);

/// What a round reads of the state for one node: its part, the ids of its
/// tasks, the assignments of those it was not sent yet, its scopes.
struct NodeInput {
    part: NodePart,
    tasks: BTreeSet<String>,
    fresh: Vec<Assignment>,
    scopes: BTreeSet<String>,
}

/// One round. The store is read under its lock only for what the round
/// needs of it (proportional to the state once, and to what each node
/// gains); the nodes' changes are computed and serialised after the lock
/// is let go, so heartbeats and the orchestrator never wait on a round's
/// fan-out.
fn round(sh: &Shared) -> bool {
    // The round takes the streams out, so that a node connecting meanwhile
    // (an async handler) never waits for a round; one that connected
    // during the round keeps its new stream.
    let mut conns = std::mem::take(&mut *sh.hub.conns.lock().expect("hub lock"));
    let behind = round_of(sh, &mut conns);
    let mut held = sh.hub.conns.lock().expect("hub lock");
    for (node, c) in conns {
        held.entry(node).or_insert(c);
    }
    behind
}

fn round_of(sh: &Shared, conns: &mut HashMap<String, Conn>) -> bool {
    conns.retain(|_, c| !c.tx.is_closed());
    let key = sh.data_key.read().expect("data key lock");
    let (shared, sc, inputs) = sh.read(|s| {
        let shared = Arc::new(shared_part(s, key.as_ref()));
        let sc = Arc::new(scope::scoped(s));
        let facts = RoundFacts::of(s);
        let inputs: HashMap<String, NodeInput> = conns
            .iter()
            .map(|(node, conn)| {
                let part = node_part(s, node, &facts);
                let wanted: Vec<&TaskRecord> = s.tasks_on(node).filter(|t| wanted(t)).collect();
                let held = conn.sent.as_ref().map(|h| &h.tasks);
                let hostname = s.nodes.get(node).map_or("", |n| n.hostname.as_str());
                let fresh = wanted
                    .iter()
                    .filter(|t| held.is_none_or(|h| !h.contains(&t.id)))
                    .filter_map(|t| assignment(s, t, hostname, key.as_ref()))
                    .collect();
                let input = NodeInput {
                    part,
                    tasks: wanted.iter().map(|t| t.id.clone()).collect(),
                    fresh,
                    scopes: scope::node_scopes(s, node),
                };
                (node.clone(), input)
            })
            .collect();
        (shared, sc, inputs)
    });
    drop(key);
    // The changes from each version some node holds (nearly always one:
    // the last round's), computed once.
    let mut shared_deltas: HashMap<*const Assignments, AssignmentDelta> = HashMap::new();
    let mut changes: HashMap<*const Scoped, scope::Changes> = HashMap::new();
    let mut addr_deltas: HashMap<AddrKey, AddrDelta> = HashMap::new();
    let mut behind = false;
    for (node, input) in inputs {
        let Some(conn) = conns.get_mut(&node) else {
            continue;
        };
        let NodeInput {
            part,
            tasks,
            fresh,
            scopes,
        } = input;
        let (change, held) = match &conn.sent {
            None => {
                let mut a = (*shared).clone();
                a.peers.retain(|p| p.id != node);
                a.tasks = fresh;
                a.network = part.network.clone();
                a.routes = part.routes.clone();
                a.ingress = part.ingress.clone();
                a.edge = part.edge;
                if !part.edge {
                    // Certificates' keys go to edge nodes only.
                    a.certs.clear();
                    a.alpn01.clear();
                }
                a.addrs = scope::node_records(&sc, &scopes);
                a.normalise();
                (
                    Change::Full(Box::new(a)),
                    held_of(&shared, &sc, tasks, scopes, part),
                )
            }
            Some(h) => {
                let mut d: AssignmentDelta = shared_deltas
                    .entry(Arc::as_ptr(&h.shared))
                    .or_insert_with(|| h.shared.diff(&shared))
                    .clone();
                d.peers.retain(|p| p.id != node);
                d.peers_gone.retain(|p| *p != node);
                d.tasks = fresh;
                d.tasks_gone = h.tasks.difference(&tasks).cloned().collect();
                d.network = (h.network != part.network).then(|| part.network.clone());
                d.routes = (h.routes != part.routes).then(|| part.routes.clone());
                d.edge = (h.edge != part.edge).then_some(part.edge);
                // Certificates' keys go to edge nodes only: a node that
                // turns edge gets them whole, one that stops gets none.
                match (h.edge, part.edge) {
                    (_, false) => {
                        d.certs = h.edge.then(Vec::new);
                        d.alpn01 = h.edge.then(Vec::new);
                    }
                    (false, true) => {
                        d.certs = Some(shared.certs.clone());
                        d.alpn01 = Some(shared.alpn01.clone());
                    }
                    (true, true) => {}
                }
                // Ingress is shared but for the node's TCP routes: sent
                // whole whenever the node's list changed.
                d.ingress = (h.ingress != part.ingress).then(|| part.ingress.clone());
                // Nodes that held the same records of the same scopes and
                // hold the same scopes now (on a cluster where services
                // spread, nearly all) get the same change, computed once.
                let key = (Arc::as_ptr(&h.scoped), h.scopes.clone(), scopes.clone());
                (d.addrs, d.scopes_gone) = addr_deltas
                    .entry(key)
                    .or_insert_with(|| {
                        let ch = changes
                            .entry(Arc::as_ptr(&h.scoped))
                            .or_insert_with(|| scope::changes(&h.scoped, &sc));
                        scope::node_delta(&h.scoped, &sc, ch, &h.scopes, &scopes)
                    })
                    .clone();
                if d.is_empty() {
                    // It holds what it would hold now: let it hold the new
                    // versions (the old ones can go).
                    if let Some(h) = conn.sent.as_mut() {
                        h.shared = shared.clone();
                        h.scoped = sc.clone();
                    }
                    continue;
                }
                (
                    Change::Delta(Box::new(d)),
                    held_of(&shared, &sc, tasks, scopes, part),
                )
            }
        };
        let line = json_line(&AssignmentUpdate {
            seq: conn.seq + 1,
            change,
        });
        let n = line.len() as u64;
        match conn.tx.try_send(line) {
            Ok(()) => {
                conn.seq += 1;
                conn.sent = Some(held);
                sh.counters.assign_bytes.fetch_add(n, Ordering::Relaxed);
                sh.counters.assign_lines.fetch_add(1, Ordering::Relaxed);
            }
            Err(mpsc::error::TrySendError::Full(_)) => {
                // What it holds is unchanged: its next change is computed
                // from it once it drains.
                tracing::debug!(node = %node, "assignment stream behind; its changes wait");
                behind = true;
            }
            Err(mpsc::error::TrySendError::Closed(_)) => conn.sent = None,
        }
    }
    behind
}

fn held_of(
    shared: &Arc<Assignments>,
    scoped: &Arc<Scoped>,
    tasks: BTreeSet<String>,
    scopes: BTreeSet<String>,
    part: NodePart,
) -> Held {
    Held {
        shared: shared.clone(),
        scoped: scoped.clone(),
        tasks,
        scopes,
        network: part.network,
        routes: part.routes,
        edge: part.edge,
        ingress: part.ingress,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A node that connects twice (its first request slow to arrive, say)
    /// is fed on its newest stream only, and the other ends once its
    /// keep-alive finds it replaced: the node never waits on a stream
    /// that nothing feeds.
    #[tokio::test]
    async fn a_replaced_stream_ends_and_the_newest_is_kept_alive() {
        let hub = Hub::default();
        let (mut old_rx, old) = hub.connect("n1");
        let (mut new_rx, new) = hub.connect("n1");
        assert!(!hub.keep_alive(&old));
        assert!(hub.keep_alive(&new));
        drop(old);
        assert_eq!(old_rx.recv().await, None, "the replaced stream ends");
        assert_eq!(new_rx.recv().await.as_deref(), Some(&b"\n"[..]));
        // A stream whose node went away is not kept alive either.
        drop(new_rx);
        assert!(!hub.keep_alive(&new));
        // Another node's streams are its own.
        let (_rx, other) = hub.connect("n2");
        assert!(hub.keep_alive(&other));
    }
}
