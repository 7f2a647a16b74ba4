//! Which task addresses a node is sent (for its DNS names and network
//! members): those of the networks its tasks join, and those its ingress
//! forwarder looks up (the services that publish ingress ports or that
//! docker-flow-proxy's TCP routes name, on every node). A change to one service then goes to the nodes that run tasks on
//! its networks, not to the cluster.
//!
//! A task sees no more than this anyway: the node's DNS answers a task
//! only with addresses on the networks it shares with them.
//!
//! The records are one per service and scope (a stack network, or
//! [`INGRESS`]; the node derives the names and members, see
//! [`gantry_api::addrs`]) and diffed once per round, scope by scope
//! ([`changes`]); a node's change ([`node_delta`]) is put together from
//! the changes of the scopes it keeps, and the whole records of the
//! scopes it gains or loses, so its cost is that of what the node is sent.

use std::collections::{BTreeMap, BTreeSet};

use gantry_api::addrs::{ScopeChange, ScopedAddrs, ServiceAddrs};
use gantry_spec::PortMode;
use gantry_state::{State, TaskState};

pub use gantry_api::INGRESS;

/// The cluster's records by scope: a stack network (`STACK_NET`) holds the
/// services on it; [`INGRESS`] the services that publish ingress ports
/// (their running tasks only).
pub type Scoped = ScopedAddrs;

/// The records of the cluster's state.
pub fn scoped(s: &State) -> Scoped {
    let mut out = Scoped::new();
    // The services that docker-flow-proxy's TCP routes forward to, by
    // their full name or their name in the stack (few: routes are set by
    // hand).
    let tcp_routed: BTreeSet<&str> = s
        .routes
        .values()
        .filter(|r| !r.tcp.is_empty())
        .flat_map(|r| {
            s.services.values().filter(move |rec| {
                rec.name == r.service
                    || rec
                        .name
                        .strip_prefix(rec.stack.as_str())
                        .and_then(|n| n.strip_prefix('_'))
                        == Some(r.service.as_str())
            })
        })
        .map(|rec| rec.name.as_str())
        .collect();
    for rec in s.services.values() {
        let mut addrs = ServiceAddrs {
            stack: rec.stack.clone(),
            vip: rec
                .vip
                .filter(|_| rec.spec.endpoint_mode == gantry_spec::EndpointMode::Vip),
            ..ServiceAddrs::default()
        };
        for t in s.tasks_of(&rec.name) {
            let Some(a) = t.addr else { continue };
            if t.desired != TaskState::Running || !s.reachable(t) {
                continue;
            }
            match t.state {
                TaskState::Running => {
                    addrs.running.insert(a);
                    addrs.live.insert(a);
                }
                TaskState::Assigned => {
                    addrs.live.insert(a);
                }
                _ => {}
            }
        }
        let ingress = tcp_routed.contains(rec.name.as_str())
            || rec
                .spec
                .ports
                .iter()
                .any(|p| p.mode == PortMode::Ingress && p.published.is_some());
        if ingress {
            let front = ServiceAddrs {
                stack: rec.stack.clone(),
                running: addrs.running.clone(),
                // The ingress forwarder wants the tasks themselves.
                ..ServiceAddrs::default()
            };
            out.entry(INGRESS.to_owned())
                .or_default()
                .insert(rec.name.clone(), front);
        }
        for n in &rec.spec.networks {
            let mut on = addrs.clone();
            if let Some(a) = rec.spec.network_aliases.get(n) {
                on.aliases.clone_from(a);
            }
            out.entry(rec.spec.network_scope(&rec.stack, n))
                .or_default()
                .insert(rec.name.clone(), on);
        }
    }
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
                    .map(|n| rec.spec.network_scope(&rec.stack, n)),
            );
        }
    }
    out
}

/// A node's records, whole: those of its scopes.
pub fn node_records(sc: &Scoped, scopes: &BTreeSet<String>) -> ScopedAddrs {
    sc.iter()
        .filter(|(k, _)| scopes.contains(*k))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

/// What changed between two rounds in each scope both hold.
pub type Changes = BTreeMap<String, ScopeChange>;

/// The changes from `old` to `new`.
pub fn changes(old: &Scoped, new: &Scoped) -> Changes {
    new.iter()
        .filter_map(|(k, n)| Some((k.clone(), ScopeChange::between(old.get(k)?, n)?)))
        .collect()
}

/// What a node that held `old`'s records of `old_scopes` needs to hold
/// `new`'s of `new_scopes`: the changes of the scopes it keeps, the whole
/// records of those it gains, and the scopes it loses (for
/// [`gantry_api::AssignmentDelta`]). Nodes with the same scopes get the
/// same change: the caller may compute it once for them.
pub fn node_delta(
    old: &Scoped,
    new: &Scoped,
    ch: &Changes,
    old_scopes: &BTreeSet<String>,
    new_scopes: &BTreeSet<String>,
) -> (BTreeMap<String, ScopeChange>, Vec<String>) {
    let mut put = BTreeMap::new();
    let mut gone = Vec::new();
    for k in old_scopes.union(new_scopes) {
        let held = old.get(k).filter(|_| old_scopes.contains(k));
        let wanted = new.get(k).filter(|_| new_scopes.contains(k));
        match (held, wanted) {
            (Some(_), Some(_)) => {
                if let Some(c) = ch.get(k) {
                    put.insert(k.clone(), c.clone());
                }
            }
            (Some(_), None) => gone.push(k.clone()),
            (None, Some(n)) => {
                put.insert(k.clone(), ScopeChange::whole(n));
            }
            (None, None) => {}
        }
    }
    (put, gone)
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use gantry_api::{AssignmentDelta, Assignments};
    use proptest::prelude::*;

    use super::*;

    fn ips(v: &[u8]) -> BTreeSet<Ipv4Addr> {
        v.iter().map(|&o| Ipv4Addr::new(10, 0, 0, o)).collect()
    }

    fn svc(running: &[u8]) -> ServiceAddrs {
        ServiceAddrs {
            stack: "s".into(),
            running: ips(running),
            live: ips(running),
            aliases: BTreeSet::new(),
            vip: None,
        }
    }

    #[test]
    fn a_node_gets_the_records_of_its_networks_and_of_ingress() {
        let mut sc = Scoped::new();
        sc.insert("a_default".into(), [("a_web".into(), svc(&[1]))].into());
        sc.insert("b_default".into(), [("b_db".into(), svc(&[2]))].into());
        sc.insert(INGRESS.into(), [("c_site".into(), svc(&[3]))].into());
        let scopes = BTreeSet::from([INGRESS.to_owned(), "b_default".to_owned()]);
        let held = node_records(&sc, &scopes);
        assert_eq!(held.keys().collect::<Vec<_>>(), [INGRESS, "b_default"]);
        // A change on network a reaches no node outside it.
        let mut next = sc.clone();
        next.get_mut("a_default")
            .unwrap()
            .insert("a_web".into(), svc(&[1, 4]));
        let (put, gone) = node_delta(&sc, &next, &changes(&sc, &next), &scopes, &scopes);
        assert!(put.is_empty() && gone.is_empty());
        // A node on network a gets one record: the address gained.
        let on_a = BTreeSet::from(["a_default".to_owned()]);
        let (put, _) = node_delta(&sc, &next, &changes(&sc, &next), &on_a, &on_a);
        let c = &put["a_default"].put["a_web"];
        assert_eq!(c.running.add, [Ipv4Addr::new(10, 0, 0, 4)]);
        assert_eq!(c.live.add, [Ipv4Addr::new(10, 0, 0, 4)]);
    }

    fn arb_scoped() -> impl Strategy<Value = Scoped> {
        let set = proptest::collection::btree_set(0u8..4, 0..3)
            .prop_map(|s| s.into_iter().map(|o| Ipv4Addr::new(10, 0, 0, o)).collect());
        let aliases = proptest::collection::btree_set("[pq]", 0..2);
        let vip = proptest::option::of(0u8..2).prop_map(|o| o.map(|o| Ipv4Addr::new(10, 47, 0, o)));
        let service = (set.clone(), set, aliases, vip).prop_map(
            |(running, live, aliases, vip): (BTreeSet<_>, BTreeSet<_>, _, _)| ServiceAddrs {
                stack: "s".into(),
                live: live.union(&running).copied().collect(),
                running,
                aliases,
                vip,
            },
        );
        let scope = proptest::collection::btree_map("[ab]", service, 0..3);
        proptest::collection::btree_map("[xy*]", scope, 0..4)
    }

    fn arb_scopes() -> impl Strategy<Value = BTreeSet<String>> {
        proptest::collection::btree_set("[xy*]", 0..4)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(4096))]

        /// Whatever the records and the node's scopes before and after,
        /// the node's delta applied to what it held gives what it must
        /// hold now, and the names and members it derives are those of
        /// its new records.
        #[test]
        fn a_node_delta_gives_its_new_records(
            old in arb_scoped(), other in arb_scoped(), keep in proptest::collection::vec(any::<bool>(), 4),
            old_scopes in arb_scopes(), new_scopes in arb_scopes(),
        ) {
            // The new records: some scopes as they were, some changed.
            let mut new = other;
            for (i, (k, v)) in old.iter().enumerate() {
                if keep[i % 4] {
                    new.insert(k.clone(), v.clone());
                }
            }
            let mut held = Assignments::empty();
            held.addrs = node_records(&old, &old_scopes);
            let (addrs, scopes_gone) =
                node_delta(&old, &new, &changes(&old, &new), &old_scopes, &new_scopes);
            held.apply(AssignmentDelta { addrs, scopes_gone, ..AssignmentDelta::default() });
            let want = node_records(&new, &new_scopes);
            prop_assert_eq!(gantry_api::addrs::dns_names(&held.addrs, true), gantry_api::addrs::dns_names(&want, true));
            prop_assert_eq!(held.addrs, want);
        }
    }
}
