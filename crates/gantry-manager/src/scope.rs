//! Which DNS names and network members a node is sent: those of the
//! networks its tasks join, and the names its ingress forwarder looks up
//! (the services that publish ingress ports, on every node). A change to
//! one service then goes to the nodes that run tasks on its networks, not
//! to the cluster.
//!
//! A task sees no more than this anyway: the node's DNS answers a task
//! only with addresses on the networks it shares with them.
//!
//! The records are grouped by scope (a stack network, or [`INGRESS`]) and
//! diffed once per round, scope by scope ([`changes`]); a node's change
//! ([`node_delta`]) is put together from the changes of the scopes it
//! keeps, and the whole records of the scopes it gains or loses, so its
//! cost is that of what the node is sent.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use gantry_api::{diff_addrs, AddrChange};
use gantry_spec::PortMode;
use gantry_state::{State, TaskState};

/// Names or networks to addresses (lists sorted, no duplicates).
pub type Records = BTreeMap<String, Vec<Ipv4Addr>>;

/// The scope every node is in: the long names (`STACK_SERVICE`) of the
/// services that publish ingress ports, which every node forwards.
pub const INGRESS: &str = "*ingress";

/// The cluster's records by scope.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Scoped {
    /// DNS records by scope: a stack network (`STACK_NET`) holds the names
    /// of the services on it; [`INGRESS`] the ingress services' long names.
    pub dns: BTreeMap<String, Records>,
    /// Each stack network's live task addresses.
    pub networks: Records,
}

/// The records of the cluster's state.
pub fn scoped(s: &State) -> Scoped {
    let mut out = Scoped::default();
    for rec in s.services.values() {
        let short = rec
            .name
            .strip_prefix(&format!("{}_", rec.stack))
            .unwrap_or(&rec.name);
        let mut running = Vec::new();
        let mut live = Vec::new();
        for t in s.tasks_of(&rec.name) {
            let Some(a) = t.addr else { continue };
            if t.desired != TaskState::Running || !s.reachable(t) {
                continue;
            }
            match t.state {
                TaskState::Running => {
                    running.push(a);
                    live.push(a);
                }
                TaskState::Assigned => live.push(a),
                _ => {}
            }
        }
        let names = [
            (short.to_owned(), &running),
            (format!("{short}.{}", rec.stack), &running),
            (rec.name.clone(), &running),
            (format!("tasks.{short}"), &live),
            (format!("tasks.{}", rec.name), &live),
        ];
        for n in &rec.spec.networks {
            let net = format!("{}_{n}", rec.stack);
            out.networks.entry(net.clone()).or_default().extend(&live);
            let scope = out.dns.entry(net).or_default();
            for (name, addrs) in &names {
                scope.entry(name.clone()).or_default().extend(*addrs);
            }
        }
        let ingress =
            rec.spec.ports.iter().any(|p| {
                p.mode == PortMode::Ingress && p.protocol == "tcp" && p.published.is_some()
            });
        if ingress {
            out.dns
                .entry(INGRESS.to_owned())
                .or_default()
                .entry(rec.name.clone())
                .or_default()
                .extend(&running);
        }
    }
    let tidy = |r: &mut Records, drop_empty: bool| {
        for v in r.values_mut() {
            v.sort();
            v.dedup();
        }
        if drop_empty {
            r.retain(|_, v| !v.is_empty());
        }
    };
    for r in out.dns.values_mut() {
        tidy(r, true);
    }
    tidy(&mut out.networks, false);
    out
}

/// The scopes of a node: [`INGRESS`] and the networks of the tasks it
/// runs or starts.
pub fn node_scopes(s: &State, node: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::from([INGRESS.to_owned()]);
    for t in s.tasks_on(node) {
        if t.desired != TaskState::Running
            || matches!(t.state, TaskState::Failed | TaskState::Shutdown)
        {
            continue;
        }
        if let Some(rec) = s.services.get(&t.service) {
            out.extend(
                rec.spec
                    .networks
                    .iter()
                    .map(|n| format!("{}_{n}", rec.stack)),
            );
        }
    }
    out
}

/// A node's DNS records and network members, whole.
pub fn node_records(sc: &Scoped, scopes: &BTreeSet<String>) -> (Records, Records) {
    let mut dns = Records::new();
    for scope in scopes {
        for (name, addrs) in sc.dns.get(scope).into_iter().flatten() {
            dns.entry(name.clone()).or_default().extend(addrs);
        }
    }
    for v in dns.values_mut() {
        v.sort();
        v.dedup();
    }
    let networks = sc
        .networks
        .iter()
        .filter(|(k, _)| scopes.contains(*k))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    (dns, networks)
}

/// What changed between two rounds, scope by scope: a DNS name gone from
/// a scope is its old addresses removed (another scope of a node may hold
/// the same name).
#[derive(Debug, Clone, Default)]
pub struct Changes {
    dns: BTreeMap<String, BTreeMap<String, AddrChange>>,
    networks: BTreeMap<String, AddrChange>,
    networks_gone: BTreeSet<String>,
}

/// The changes from `old` to `new`.
pub fn changes(old: &Scoped, new: &Scoped) -> Changes {
    let empty = Records::new();
    let mut dns = BTreeMap::new();
    let scopes: BTreeSet<&String> = old.dns.keys().chain(new.dns.keys()).collect();
    for scope in scopes {
        let (o, n) = (
            old.dns.get(scope).unwrap_or(&empty),
            new.dns.get(scope).unwrap_or(&empty),
        );
        if o == n {
            continue;
        }
        let (mut put, gone) = diff_addrs(o, n);
        for name in gone {
            put.insert(
                name.clone(),
                AddrChange {
                    add: Vec::new(),
                    remove: o[&name].clone(),
                },
            );
        }
        dns.insert(scope.clone(), put);
    }
    let (networks, gone) = diff_addrs(&old.networks, &new.networks);
    Changes {
        dns,
        networks,
        networks_gone: gone.into_iter().collect(),
    }
}

/// What a node that held `old`'s records of `old_scopes` needs to hold
/// `new`'s of `new_scopes`: DNS changes, networks put and networks gone
/// (for [`gantry_api::AssignmentDelta`]).
pub fn node_delta(
    old: &Scoped,
    new: &Scoped,
    ch: &Changes,
    old_scopes: &BTreeSet<String>,
    new_scopes: &BTreeSet<String>,
) -> (
    BTreeMap<String, AddrChange>,
    BTreeMap<String, AddrChange>,
    Vec<String>,
) {
    let mut dns: BTreeMap<String, (BTreeSet<Ipv4Addr>, BTreeSet<Ipv4Addr>)> = BTreeMap::new();
    for scope in new_scopes.intersection(old_scopes) {
        for (name, c) in ch.dns.get(scope).into_iter().flatten() {
            let e = dns.entry(name.clone()).or_default();
            e.0.extend(&c.add);
            e.1.extend(&c.remove);
        }
    }
    for scope in new_scopes.difference(old_scopes) {
        for (name, addrs) in new.dns.get(scope).into_iter().flatten() {
            dns.entry(name.clone()).or_default().0.extend(addrs);
        }
    }
    for scope in old_scopes.difference(new_scopes) {
        for (name, addrs) in old.dns.get(scope).into_iter().flatten() {
            dns.entry(name.clone()).or_default().1.extend(addrs);
        }
    }
    let holds = |name: &str, a: &Ipv4Addr| {
        new_scopes.iter().any(|sc| {
            new.dns
                .get(sc)
                .and_then(|r| r.get(name))
                .is_some_and(|v| v.binary_search(a).is_ok())
        })
    };
    let dns = dns
        .into_iter()
        .filter_map(|(name, (add, remove))| {
            // Still on the node by another scope: not removed.
            let remove: Vec<Ipv4Addr> = remove.into_iter().filter(|a| !holds(&name, a)).collect();
            let add: Vec<Ipv4Addr> = add.into_iter().filter(|a| holds(&name, a)).collect();
            (!add.is_empty() || !remove.is_empty()).then_some((name, AddrChange { add, remove }))
        })
        .collect();
    let mut networks: BTreeMap<String, AddrChange> = ch
        .networks
        .iter()
        .filter(|(k, _)| new_scopes.contains(*k) && old_scopes.contains(*k))
        .map(|(k, c)| (k.clone(), c.clone()))
        .collect();
    for k in new_scopes.difference(old_scopes) {
        if let Some(v) = new.networks.get(k) {
            networks.insert(
                k.clone(),
                AddrChange {
                    add: v.clone(),
                    remove: Vec::new(),
                },
            );
        }
    }
    let gone = old_scopes
        .iter()
        .filter(|k| old.networks.contains_key(*k))
        .filter(|k| !new_scopes.contains(*k) || ch.networks_gone.contains(*k))
        .cloned()
        .collect();
    (dns, networks, gone)
}

#[cfg(test)]
mod tests {
    use gantry_api::{AssignmentDelta, Assignments};
    use proptest::prelude::*;

    use super::*;

    fn ip(o: u8) -> Ipv4Addr {
        Ipv4Addr::new(10, 0, 0, o)
    }

    #[test]
    fn a_node_gets_the_names_of_its_networks_and_the_ingress_names() {
        let mut sc = Scoped::default();
        sc.dns.insert(
            "a_default".into(),
            [("web".into(), vec![ip(1)]), ("a_web".into(), vec![ip(1)])].into(),
        );
        sc.dns
            .insert("b_default".into(), [("db".into(), vec![ip(2)])].into());
        sc.dns
            .insert(INGRESS.into(), [("c_site".into(), vec![ip(3)])].into());
        sc.networks = [
            ("a_default".into(), vec![ip(1)]),
            ("b_default".into(), vec![ip(2)]),
        ]
        .into();
        let scopes = BTreeSet::from([INGRESS.to_owned(), "b_default".to_owned()]);
        let (dns, nets) = node_records(&sc, &scopes);
        assert_eq!(dns.keys().collect::<Vec<_>>(), ["c_site", "db"]);
        assert_eq!(nets.keys().collect::<Vec<_>>(), ["b_default"]);
        // A change on network a reaches no node outside it.
        let mut next = sc.clone();
        next.dns
            .get_mut("a_default")
            .unwrap()
            .insert("web".into(), vec![ip(1), ip(4)]);
        next.networks.insert("a_default".into(), vec![ip(1), ip(4)]);
        let (d, n, gone) = node_delta(&sc, &next, &changes(&sc, &next), &scopes, &scopes);
        assert!(d.is_empty() && n.is_empty() && gone.is_empty());
    }

    fn arb_scoped() -> impl Strategy<Value = Scoped> {
        let addrs = proptest::collection::btree_set(0u8..4, 0..3)
            .prop_map(|s| s.into_iter().map(ip).collect::<Vec<_>>());
        let records = proptest::collection::btree_map("[ab]", addrs.clone(), 0..3);
        (
            proptest::collection::btree_map("[xy*]", records, 0..4),
            proptest::collection::btree_map("[xy]", addrs, 0..3),
        )
            .prop_map(|(dns, networks)| {
                let dns = dns
                    .into_iter()
                    .map(|(k, mut r): (String, Records)| {
                        r.retain(|_, v| !v.is_empty());
                        (k, r)
                    })
                    .collect();
                Scoped { dns, networks }
            })
    }

    fn arb_scopes() -> impl Strategy<Value = BTreeSet<String>> {
        proptest::collection::btree_set("[xy*]", 0..4)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(4096))]

        /// Whatever the records and the node's scopes before and after,
        /// the node's delta applied to what it held gives what it must
        /// hold now.
        #[test]
        fn a_node_delta_gives_its_new_records(
            old in arb_scoped(), other in arb_scoped(), keep in proptest::collection::vec(any::<bool>(), 4),
            old_scopes in arb_scopes(), new_scopes in arb_scopes(),
        ) {
            // The new records: some scopes as they were, some changed.
            let mut new = other;
            for (i, (k, v)) in old.dns.iter().enumerate() {
                if keep[i % 4] {
                    new.dns.insert(k.clone(), v.clone());
                }
            }
            let mut held = Assignments::empty();
            (held.dns, held.networks) = node_records(&old, &old_scopes);
            let (dns, networks, networks_gone) =
                node_delta(&old, &new, &changes(&old, &new), &old_scopes, &new_scopes);
            held.apply(AssignmentDelta { dns, networks, networks_gone, ..AssignmentDelta::default() });
            let mut want = Assignments::empty();
            (want.dns, want.networks) = node_records(&new, &new_scopes);
            prop_assert_eq!(held.dns, want.dns);
            prop_assert_eq!(held.networks, want.networks);
        }
    }
}

#[cfg(test)]
mod more {
    use super::*;

    #[test]
    fn a_name_held_by_a_kept_scope_stays_when_another_scope_goes() {
        let ip = Ipv4Addr::new(10, 0, 0, 1);
        let mut sc = Scoped::default();
        for s in ["x", "y"] {
            sc.dns.insert(s.into(), [("a".into(), vec![ip])].into());
        }
        let old_scopes = BTreeSet::from(["x".to_owned(), "y".to_owned()]);
        let new_scopes = BTreeSet::from(["x".to_owned()]);
        let (d, _, _) = node_delta(&sc, &sc, &changes(&sc, &sc), &old_scopes, &new_scopes);
        assert!(d.is_empty(), "{d:?}");
    }
}
