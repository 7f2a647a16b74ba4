use super::Strategy as Scoring;
use super::*;
use proptest::prelude::{any, prop_assert, prop_assert_eq, proptest, Strategy};

const GB: u64 = 1 << 30;
const CPU: u64 = 1_000_000_000;

fn node(id: &str, labels: &[(&str, &str)]) -> Node {
    Node {
        id: id.into(),
        hostname: format!("host-{id}"),
        manager: id == "n0",
        arch: "x86_64".into(),
        labels: labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        availability: Availability::Active,
        ready: true,
        capacity: Resources {
            nano_cpus: 2 * CPU,
            memory: 4 * GB,
        },
        volumes: Default::default(),
    }
}

fn nodes(n: usize) -> Vec<Node> {
    (0..n).map(|i| node(&format!("n{i}"), &[])).collect()
}

fn spec(service: &str) -> TaskSpec {
    TaskSpec {
        service: service.into(),
        ..Default::default()
    }
}

fn tally(nodes: &[String]) -> BTreeMap<String, usize> {
    let mut m = BTreeMap::new();
    for n in nodes {
        *m.entry(n.clone()).or_default() += 1;
    }
    m
}

#[test]
fn six_replicas_spread_two_two_two() {
    let mut c = Cluster::new(nodes(3), &[], &BTreeMap::new());
    let p = c.place(&spec("web"), 6);
    assert_eq!(p.pending, 0);
    assert_eq!(
        tally(&p.nodes).values().copied().collect::<Vec<_>>(),
        vec![2, 2, 2]
    );
}

#[test]
fn spread_prefers_fewer_tasks_in_total_on_ties() {
    let busy = Assigned {
        node: "n0".into(),
        service: "other".into(),
        reservations: Resources::default(),
        host_ports: vec![],
    };
    let mut c = Cluster::new(nodes(2), &[busy], &BTreeMap::new());
    assert_eq!(c.place(&spec("web"), 1).nodes, vec!["n1"]);
}

#[test]
fn constraints_and_availability_filter_with_reasons() {
    let mut ns = vec![
        node("n0", &[("zone", "east")]),
        node("n1", &[("zone", "west")]),
        node("n2", &[("zone", "east")]),
        node("n3", &[("zone", "east")]),
    ];
    ns[2].availability = Availability::Drain;
    ns[3].ready = false;
    let mut c = Cluster::new(ns, &[], &BTreeMap::new());
    let mut s = spec("api");
    s.constraints = vec![Constraint::parse("node.labels.zone==east").unwrap()];
    let p = c.place(&s, 3);
    assert_eq!(p.nodes, vec!["n0", "n0", "n0"], "only n0 is eligible");
    s.constraints
        .push(Constraint::parse("node.role!=manager").unwrap());
    let p = c.place(&s, 1);
    assert_eq!(p.pending, 1);
    let why = p.reason.unwrap().to_string();
    assert_eq!(
        why,
        "no suitable node (node not ready on 1 node; node drained or paused on 1 node; \
         constraint node.labels.zone==east not satisfied on 1 node; constraint node.role!=manager not satisfied on 1 node)"
    );
}

#[test]
fn reservations_that_fit_nowhere_stay_pending() {
    let mut c = Cluster::new(nodes(2), &[], &BTreeMap::new());
    let mut s = spec("db");
    s.reservations.memory = 3 * GB;
    let p = c.place(&s, 3);
    assert_eq!(p.nodes.len(), 2, "one per node: 4 GB each");
    assert_eq!(p.pending, 1);
    assert_eq!(
        p.reason.unwrap().to_string(),
        "no suitable node (insufficient memory on 2 nodes)"
    );
    s.reservations = Resources {
        nano_cpus: 3 * CPU,
        memory: 0,
    };
    let p = c.place(&s, 1);
    assert!(p
        .reason
        .unwrap()
        .to_string()
        .contains("insufficient cpu on 2 nodes"));
}

#[test]
fn binpack_fills_the_fullest_node_first() {
    let mut c = Cluster::new(nodes(3), &[], &BTreeMap::new());
    let mut s = spec("batch");
    s.strategy = Scoring::Binpack;
    s.reservations = Resources {
        nano_cpus: CPU / 2,
        memory: GB,
    };
    let p = c.place(&s, 6);
    let t = tally(&p.nodes);
    assert_eq!(
        t.values().copied().collect::<Vec<_>>(),
        vec![4, 2],
        "{t:?}: n0 full (4 x 0.5 CPU), then the next"
    );
}

#[test]
fn host_ports_conflict() {
    let mut c = Cluster::new(nodes(2), &[], &BTreeMap::new());
    let mut s = spec("edge");
    s.host_ports = vec![80];
    let p = c.place(&s, 3);
    assert_eq!(p.nodes.len(), 2);
    assert_eq!(
        p.reason.unwrap().to_string(),
        "no suitable node (host port 80 in use on 2 nodes)"
    );
}

#[test]
fn tasks_follow_their_volume() {
    let vols = BTreeMap::from([("data".to_string(), "n2".to_string())]);
    let mut c = Cluster::new(nodes(3), &[], &vols);
    let mut s = spec("counter");
    s.volumes = vec!["data".into()];
    assert_eq!(c.place(&s, 2).nodes, vec!["n2", "n2"]);
    s.volumes = vec!["fresh".into()];
    assert_eq!(
        c.place(&s, 1).pending,
        0,
        "a volume that lives nowhere yet goes anywhere"
    );
}

#[test]
fn preferences_spread_over_a_label_first() {
    let ns = vec![
        node("a1", &[("zone", "a")]),
        node("a2", &[("zone", "a")]),
        node("a3", &[("zone", "a")]),
        node("b1", &[("zone", "b")]),
    ];
    let mut c = Cluster::new(ns, &[], &BTreeMap::new());
    let mut s = spec("web");
    s.spread_over = Some("zone".into());
    let p = c.place(&s, 4);
    let t = tally(&p.nodes);
    assert_eq!(t.get("b1"), Some(&2), "zone b gets half: {t:?}");
    assert_eq!(
        t.get("a1").unwrap_or(&0) + t.get("a2").unwrap_or(&0) + t.get("a3").unwrap_or(&0),
        2
    );
}

#[test]
fn global_services_cover_every_eligible_node_including_late_joiners() {
    let mut c = Cluster::new(nodes(3), &[], &BTreeMap::new());
    let s = spec("agent");
    let (targets, why) = c.global_targets(&s);
    assert_eq!(targets, vec!["n0", "n1", "n2"]);
    assert!(why.is_none());
    assert!(c.global_targets(&s).0.is_empty(), "already everywhere");
    // A fourth node joins: a new snapshot with the existing tasks.
    let existing: Vec<Assigned> = targets
        .iter()
        .map(|n| Assigned {
            node: n.clone(),
            service: "agent".into(),
            reservations: Resources::default(),
            host_ports: vec![],
        })
        .collect();
    let mut c = Cluster::new(nodes(4), &existing, &BTreeMap::new());
    assert_eq!(c.global_targets(&s).0, vec!["n3"]);
}

#[test]
fn rebalance_moves_gradually_to_a_new_node() {
    let existing: Vec<Assigned> = ["n0", "n0", "n0", "n1", "n1", "n1"]
        .iter()
        .map(|n| Assigned {
            node: n.to_string(),
            service: "web".into(),
            reservations: Resources::default(),
            host_ports: vec![],
        })
        .collect();
    let mut c = Cluster::new(nodes(3), &existing, &BTreeMap::new());
    let first = c.rebalance(&spec("web"), 1);
    assert_eq!(first.len(), 1, "one move per round");
    let rest = c.rebalance(&spec("web"), 10);
    assert_eq!(rest.len(), 1);
    assert!(first.iter().chain(&rest).all(|m| m.to == "n2"));
    let counts = c.counts("web");
    assert_eq!(counts.values().copied().collect::<Vec<_>>(), vec![2, 2, 2]);
    assert!(
        c.rebalance(&spec("web"), 10).is_empty(),
        "even: nothing to do"
    );
}

#[test]
fn an_empty_cluster_says_so() {
    let mut c = Cluster::new(vec![], &[], &BTreeMap::new());
    let p = c.place(&spec("x"), 1);
    assert_eq!(
        p.reason.unwrap().to_string(),
        "no suitable node (the cluster has no nodes)"
    );
}

fn arb_nodes() -> impl Strategy<Value = Vec<Node>> {
    proptest::collection::vec((any::<bool>(), 0u8..3, 1u64..5, 1u64..9, 0u8..3), 1..12).prop_map(
        |v| {
            v.into_iter()
                .enumerate()
                .map(|(i, (ready, avail, cpus, gbs, zone))| Node {
                    id: format!("n{i}"),
                    hostname: format!("h{i}"),
                    manager: i == 0,
                    arch: "x86_64".into(),
                    labels: BTreeMap::from([("zone".to_string(), format!("z{zone}"))]),
                    availability: match avail {
                        0 => Availability::Active,
                        1 => Availability::Pause,
                        _ => Availability::Drain,
                    },
                    ready,
                    capacity: Resources {
                        nano_cpus: cpus * CPU,
                        memory: gbs * GB,
                    },
                    volumes: Default::default(),
                })
                .collect()
        },
    )
}

proptest! {
    #[test]
    fn placement_never_overcommits_or_uses_ineligible_nodes(
        ns in arb_nodes(),
        n in 0usize..40,
        cpu_tenths in 0u64..15,
        mem_tenths in 0u64..30,
        binpack in any::<bool>(),
        spread_zone in any::<bool>(),
        port in proptest::option::of(1u16..3),
    ) {
        let mut c = Cluster::new(ns.clone(), &[], &BTreeMap::new());
        let s = TaskSpec {
            service: "svc".into(),
            reservations: Resources { nano_cpus: cpu_tenths * CPU / 10, memory: mem_tenths * GB / 10 },
            strategy: if binpack { Scoring::Binpack } else { Scoring::Spread },
            max_per_node: 0,
            spread_over: spread_zone.then(|| "zone".to_string()),
            host_ports: port.into_iter().collect(),
            ..Default::default()
        };
        let p = c.place(&s, n);
        prop_assert_eq!(p.nodes.len() + p.pending, n);
        prop_assert_eq!(p.reason.is_some(), p.pending > 0);
        let t = tally(&p.nodes);
        for (id, k) in &t {
            let node = ns.iter().find(|x| &x.id == id).unwrap();
            prop_assert!(node.ready && node.availability == Availability::Active, "{id} is not eligible");
            let k = *k as u64;
            prop_assert!(k * s.reservations.nano_cpus <= node.capacity.nano_cpus);
            prop_assert!(k * s.reservations.memory <= node.capacity.memory);
            if port.is_some() {
                prop_assert_eq!(k, 1, "two tasks share a host port on {}", id);
            }
        }
    }

    #[test]
    fn spread_is_even_when_everything_fits(m in 1usize..30, n in 0usize..200) {
        let mut c = Cluster::new(nodes(m), &[], &BTreeMap::new());
        let p = c.place(&spec("svc"), n);
        prop_assert_eq!(p.pending, 0);
        let counts: Vec<u32> = c.counts("svc").into_values().collect();
        let (lo, hi) = (*counts.iter().min().unwrap(), *counts.iter().max().unwrap());
        prop_assert!(hi - lo <= 1, "{:?}", counts);
    }

    #[test]
    fn rebalance_ends_even_and_keeps_the_count(
        start in proptest::collection::vec(0u32..8, 2..8),
    ) {
        let m = start.len();
        let existing: Vec<Assigned> = start
            .iter()
            .enumerate()
            .flat_map(|(i, k)| (0..*k).map(move |_| Assigned {
                node: format!("n{i}"),
                service: "svc".into(),
                reservations: Resources::default(),
                host_ports: vec![],
            }))
            .collect();
        let mut c = Cluster::new(nodes(m), &existing, &BTreeMap::new());
        let before: u32 = start.iter().sum();
        c.rebalance(&spec("svc"), usize::MAX);
        let counts: Vec<u32> = c.counts("svc").into_values().collect();
        prop_assert_eq!(counts.iter().sum::<u32>(), before);
        let (lo, hi) = (*counts.iter().min().unwrap(), *counts.iter().max().unwrap());
        prop_assert!(hi - lo <= 1, "{:?}", counts);
    }
}

#[test]
fn constraints_read_as_swarm_reads_them() {
    let n = node("n1", &[("Zone", "East")]);
    let yes = |c: &str| crate::Constraint::parse(c).unwrap().matches(&n);
    assert!(
        yes("node.Labels.Zone == east"),
        "field name and value, any case"
    );
    assert!(!yes("node.labels.zone == East"), "a label's key is exact");
    assert!(yes("node.platform.os == linux"));
    assert!(yes("node.platform.OS == Linux"));
    assert!(!yes("node.platform.os == windows"));
    assert!(yes("node.platform.arch == amd64"), "Go's name for x86_64");
    assert!(yes("node.platform.arch != arm64"));
    assert!(yes("node.Role == Worker"));
    assert!(yes("node.hostname == HOST-N1"));
    let e = crate::Constraint::parse("engine.labels.x == y").unwrap_err();
    assert!(e.to_string().contains("node.labels"), "{e}");
}

#[test]
fn max_per_node_caps_each_node_and_the_rest_waits_with_the_reason() {
    let mut c = Cluster::new(nodes(2), &[], &BTreeMap::new());
    let s = TaskSpec {
        max_per_node: 2,
        ..spec("web")
    };
    let p = c.place(&s, 6);
    assert_eq!(p.nodes.len(), 4);
    assert_eq!(p.pending, 2);
    assert!(tally(&p.nodes).values().all(|n| *n == 2), "{:?}", p.nodes);
    assert!(
        p.reason
            .as_ref()
            .is_some_and(|r| r.to_string().contains("max replicas per node (2)")),
        "{:?}",
        p.reason
    );
}

#[test]
fn a_task_with_an_external_volume_goes_only_where_it_is() {
    let mut ns = nodes(3);
    ns[2].volumes.insert("legacy_data".into());
    let mut c = Cluster::new(ns, &[], &BTreeMap::new());
    let mut s = spec("db");
    s.external_volumes = vec!["legacy_data".into()];
    assert_eq!(c.place(&s, 2).nodes, ["n2", "n2"]);
    let mut s = spec("other");
    s.external_volumes = vec!["nowhere".into()];
    let p = c.place(&s, 1);
    assert_eq!(p.pending, 1);
    let e = p.reason.unwrap().to_string();
    assert!(
        e.contains("external volume nowhere is not on the node on 3 nodes"),
        "{e}"
    );
}
