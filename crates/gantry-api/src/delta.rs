//! The assignment stream's changes: instead of a node's whole assignment
//! set on every change, the manager sends what changed, numbered. The first
//! line of a stream is the whole set; an agent that sees a number out of
//! order drops the stream and reconnects for a whole set again.
//!
//! [`Assignments::diff`] and [`Assignments::apply`] are exact inverses:
//! applying the diff of `a` to `b` on `a` gives `b`.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

use crate::{
    Assignment, Assignments, Cert, IngressPort, NodeNetwork, Peer, ScopeChange, ScopedAddrs,
};

/// A line of `GET /v1/agent/watch`: `{"seq":N,"full":{..}}` or
/// `{"seq":N,"delta":{..}}`. It is read through [`UpdateLine`], because
/// serde's `flatten` would first copy a whole set into a generic tree.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "UpdateLine")]
pub struct AssignmentUpdate {
    /// 1 for the first line of a stream, then one more each line.
    pub seq: u64,
    /// What it carries.
    #[serde(flatten)]
    pub change: Change,
}

/// How a line is read.
#[derive(Deserialize)]
struct UpdateLine {
    seq: u64,
    #[serde(default)]
    full: Option<Box<Assignments>>,
    #[serde(default)]
    delta: Option<Box<AssignmentDelta>>,
}

impl TryFrom<UpdateLine> for AssignmentUpdate {
    type Error = &'static str;

    fn try_from(l: UpdateLine) -> Result<Self, Self::Error> {
        let change = match (l.full, l.delta) {
            (Some(a), None) => Change::Full(a),
            (None, Some(d)) => Change::Delta(d),
            _ => return Err("an assignment line carries either `full` or `delta`"),
        };
        Ok(Self { seq: l.seq, change })
    }
}

/// A whole set or the changes to the set the stream gave so far.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Change {
    /// Replaces everything.
    Full(Box<Assignments>),
    /// Changes the set held.
    Delta(Box<AssignmentDelta>),
}

/// What changed in a node's assignment set. Keyed parts (tasks, peers,
/// scopes' task addresses) carry the entries put and the keys gone; the rest
/// is whole when it changed.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct AssignmentDelta {
    /// Tasks new or changed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tasks: Vec<Assignment>,
    /// Ids of tasks no longer assigned.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tasks_gone: Vec<String>,
    /// Peers new or changed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub peers: Vec<Peer>,
    /// Ids of peers gone.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub peers_gone: Vec<String>,
    /// Task addresses, by scope: what changed in each.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub addrs: BTreeMap<String, ScopeChange>,
    /// Scopes gone.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub scopes_gone: Vec<String>,
    /// The node's network, when it changed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<Option<NodeNetwork>>,
    /// Ingress ports, whole, when they changed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ingress: Option<Vec<IngressPort>>,
    /// The node's HTTP routes, whole, when they changed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub routes: Option<Vec<gantry_route::Route>>,
    /// Certificates, whole, when they changed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub certs: Option<Vec<Cert>>,
    /// HTTP-01 challenges, whole, when they changed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http01: Option<BTreeMap<String, String>>,
    /// TLS-ALPN-01 challenges, whole, when they changed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alpn01: Option<Vec<Cert>>,
    /// Whether the node runs the edge proxy, when that changed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub edge: Option<bool>,
    /// Whether certificates are withheld, when that changed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub certs_withheld: Option<bool>,
}

impl AssignmentDelta {
    /// Whether nothing changed.
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }
}

/// Entries of `new` that are not in `old` as they are, and keys of `old`
/// missing from `new`.
fn diff_map<K: Ord + Clone, V: PartialEq + Clone>(
    old: &BTreeMap<K, V>,
    new: &BTreeMap<K, V>,
) -> (BTreeMap<K, V>, Vec<K>) {
    let put = new
        .iter()
        .filter(|(k, v)| old.get(*k) != Some(*v))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    (put, keys_gone(old, new))
}

/// Keys of `old` missing from `new`.
pub(crate) fn keys_gone<K: Ord + Clone, V, W>(
    old: &BTreeMap<K, V>,
    new: &BTreeMap<K, W>,
) -> Vec<K> {
    old.keys()
        .filter(|k| !new.contains_key(*k))
        .cloned()
        .collect()
}

fn changed<T: PartialEq + Clone>(old: &T, new: &T) -> Option<T> {
    (old != new).then(|| new.clone())
}

impl Assignments {
    /// An empty set (no tasks, no network, an edge node).
    pub fn empty() -> Self {
        Self {
            tasks: Vec::new(),
            network: None,
            peers: Vec::new(),
            addrs: ScopedAddrs::new(),
            ingress: Vec::new(),
            routes: Vec::new(),
            certs: Vec::new(),
            http01: BTreeMap::new(),
            alpn01: Vec::new(),
            edge: true,
            certs_withheld: false,
        }
    }

    /// What turns `self` into `new`.
    pub fn diff(&self, new: &Assignments) -> AssignmentDelta {
        let by_id = |v: &[Assignment]| -> BTreeMap<String, Assignment> {
            v.iter().map(|a| (a.task.id.clone(), a.clone())).collect()
        };
        let peers = |v: &[Peer]| -> BTreeMap<String, Peer> {
            v.iter().map(|p| (p.id.clone(), p.clone())).collect()
        };
        let (tasks, tasks_gone) = diff_map(&by_id(&self.tasks), &by_id(&new.tasks));
        let (peers, peers_gone) = diff_map(&peers(&self.peers), &peers(&new.peers));
        let (addrs, scopes_gone) = crate::addrs::diff_scoped(&self.addrs, &new.addrs);
        AssignmentDelta {
            tasks: tasks.into_values().collect(),
            tasks_gone,
            peers: peers.into_values().collect(),
            peers_gone,
            addrs,
            scopes_gone,
            network: changed(&self.network, &new.network),
            ingress: changed(&self.ingress, &new.ingress),
            routes: changed(&self.routes, &new.routes),
            certs: changed(&self.certs, &new.certs),
            http01: changed(&self.http01, &new.http01),
            alpn01: changed(&self.alpn01, &new.alpn01),
            edge: changed(&self.edge, &new.edge),
            certs_withheld: changed(&self.certs_withheld, &new.certs_withheld),
        }
    }

    /// Applies a change (tasks and peers stay ordered by id).
    pub fn apply(&mut self, d: AssignmentDelta) {
        fn keyed<T>(v: &mut Vec<T>, key: impl Fn(&T) -> &str, put: Vec<T>, gone: &[String]) {
            if put.is_empty() && gone.is_empty() {
                return;
            }
            let mut map: BTreeMap<String, T> =
                v.drain(..).map(|t| (key(&t).to_owned(), t)).collect();
            for k in gone {
                map.remove(k);
            }
            for t in put {
                map.insert(key(&t).to_owned(), t);
            }
            v.extend(map.into_values());
        }
        keyed(&mut self.tasks, |a| &a.task.id, d.tasks, &d.tasks_gone);
        keyed(&mut self.peers, |p| &p.id, d.peers, &d.peers_gone);
        crate::addrs::apply_scoped(&mut self.addrs, &d.addrs, &d.scopes_gone);
        if let Some(n) = d.network {
            self.network = n;
        }
        if let Some(v) = d.ingress {
            self.ingress = v;
        }
        if let Some(v) = d.routes {
            self.routes = v;
        }
        if let Some(v) = d.certs_withheld {
            self.certs_withheld = v;
        }
        // Withheld: the certificates held stay.
        if let Some(v) = d.certs.filter(|_| !self.certs_withheld) {
            self.certs = v;
        }
        if let Some(v) = d.http01 {
            self.http01 = v;
        }
        if let Some(v) = d.alpn01 {
            self.alpn01 = v;
        }
        if let Some(v) = d.edge {
            self.edge = v;
        }
    }

    /// Tasks and peers ordered by id, as [`Assignments::apply`] leaves
    /// them (what the manager sends).
    pub fn normalise(&mut self) {
        self.tasks.sort_by(|a, b| a.task.id.cmp(&b.task.id));
        self.peers.sort_by(|a, b| a.id.cmp(&b.id));
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;
    use std::net::Ipv4Addr;

    use super::*;
    use gantry_ipam::Net;
    use gantry_spec::Service;
    use gantry_state::{TaskRecord, TaskState};
    use proptest::prelude::*;

    fn task(id: u8, version: u64) -> Assignment {
        Assignment {
            task: TaskRecord {
                id: format!("t{id}"),
                service: "s_web".into(),
                version,
                slot: u32::from(id),
                node: Some("n1".into()),
                desired: TaskState::Running,
                state: TaskState::Assigned,
                message: String::new(),
                exit_code: None,
                attempt: 0,
                updated_ms: 0,
                addr: Some(Ipv4Addr::new(10, 32, 0, id)),
            },
            stack: "s".into(),
            spec: Service::new(format!("web:{version}")),
            files: Vec::new(),
            blocked: None,
        }
    }

    fn peer(id: u8, mac: u8) -> Peer {
        Peer {
            id: format!("p{id}"),
            addr: format!("192.168.1.{id}"),
            block: Net::new(Ipv4Addr::new(10, 32, id, 0), 24),
            vtep_mac: format!("02:00:00:00:00:{mac:02x}"),
        }
    }

    prop_compose! {
        fn arb_set()(
            tasks in proptest::collection::btree_map(0u8..12, 1u64..3, 0..8),
            peers in proptest::collection::btree_map(1u8..8, 0u8..3, 0..5),
            addrs in proptest::collection::btree_map(
                "[x-z*]",
                proptest::collection::btree_map(
                    "[a-c]",
                    (proptest::collection::btree_set(0u8..4, 0..3), proptest::collection::btree_set(0u8..4, 0..3)),
                    0..3,
                ),
                0..3,
            ),
            edge in any::<bool>(),
            http in proptest::collection::btree_map("[a-b]", "[a-b]", 0..2),
            ingress in proptest::collection::vec(1u16..4, 0..2),
        ) -> Assignments {
            let ips = |v: BTreeSet<u8>| v.into_iter().map(|o| Ipv4Addr::new(10, 32, 0, o)).collect::<BTreeSet<_>>();
            let mut a = Assignments::empty();
            a.tasks = tasks.into_iter().map(|(id, v)| task(id, v)).collect();
            a.peers = peers.into_iter().map(|(id, m)| peer(id, m)).collect();
            a.addrs = addrs
                .into_iter()
                .map(|(scope, services)| {
                    let services = services
                        .into_iter()
                        .map(|(name, (running, live))| {
                            // Aliases come and go with the running set's size.
                            let aliases = (running.len() % 2 == 1).then(|| format!("{name}-alias")).into_iter().collect();
                            let vip = (live.len() % 2 == 1).then(|| Ipv4Addr::new(10, 47, 0, running.len() as u8));
                            let s = crate::ServiceAddrs { stack: name.clone(), running: ips(running), live: ips(live), aliases, vip };
                            (name, s)
                        })
                        .collect();
                    (scope, services)
                })
                .collect();
            a.edge = edge;
            a.http01 = http;
            a.ingress = ingress.into_iter().map(|p| IngressPort { published: p, target: 80, service: "s_web".into(), udp: false, host_ip: None }).collect();
            a.normalise();
            a
        }
    }

    proptest! {
        /// Whatever two sets, the diff of one to the other applied to the
        /// first gives the second, and survives the wire.
        #[test]
        fn applying_the_diff_gives_the_new_set(old in arb_set(), new in arb_set()) {
            let d = old.diff(&new);
            let line = serde_json::to_string(&AssignmentUpdate { seq: 2, change: Change::Delta(Box::new(d)) }).unwrap();
            let back: AssignmentUpdate = serde_json::from_str(&line).unwrap();
            let Change::Delta(d) = back.change else { panic!("{line}") };
            let mut got = old.clone();
            got.apply(*d);
            prop_assert_eq!(got, new);
        }

        /// The same set twice: an empty diff.
        #[test]
        fn no_change_no_delta(a in arb_set()) {
            prop_assert!(a.diff(&a).is_empty());
        }
    }

    #[test]
    fn a_line_is_a_whole_set_or_a_change_and_not_both() {
        let full = serde_json::to_string(&AssignmentUpdate {
            seq: 1,
            change: Change::Full(Box::new(Assignments::empty())),
        })
        .unwrap();
        assert!(full.starts_with(r#"{"seq":1,"full":{"#), "{full}");
        let back: AssignmentUpdate = serde_json::from_str(&full).unwrap();
        assert!(matches!(back.change, Change::Full(_)));
        let set = serde_json::to_string(&Assignments::empty()).unwrap();
        let both = format!(r#"{{"seq":2,"full":{set},"delta":{{}}}}"#);
        let no_seq = format!(r#"{{"full":{set}}}"#);
        for bad in [r#"{"seq":2}"#, &both, &no_seq] {
            assert!(
                serde_json::from_str::<AssignmentUpdate>(bad).is_err(),
                "{bad}"
            );
        }
        let delta: AssignmentUpdate = serde_json::from_str(r#"{"seq":2,"delta":{}}"#).unwrap();
        assert_eq!(delta.change, Change::Delta(Box::default()));
    }

    #[test]
    fn a_delta_carries_only_what_changed() {
        let mut old = Assignments::empty();
        old.tasks = (1..=100).map(|i| task(i, 1)).collect();
        old.normalise();
        let mut new = old.clone();
        new.tasks.retain(|a| a.task.id != "t7");
        new.tasks.push(task(200, 1));
        new.normalise();
        let d = old.diff(&new);
        assert_eq!(d.tasks.len(), 1);
        assert_eq!(d.tasks_gone, ["t7"]);
        let full = serde_json::to_vec(&new).unwrap().len();
        let delta = serde_json::to_vec(&d).unwrap().len();
        assert!(delta * 20 < full, "{delta} bytes of {full}");
    }
}
