//! Placing 100,000 tasks on 5,000 simulated nodes (the part 2 goal: at
//! least 50,000 placements a second on one core).

use std::collections::BTreeMap;
use std::hint::black_box;
use std::time::Instant;

use criterion::{criterion_group, criterion_main, Criterion};
use gantry_sched::{Availability, Cluster, Constraint, Node, Resources, Strategy, TaskSpec};

fn cluster() -> Vec<Node> {
    (0..5_000)
        .map(|i| Node {
            id: format!("node-{i}"),
            hostname: format!("host-{i}"),
            manager: i < 3,
            arch: "x86_64".into(),
            labels: BTreeMap::from([("zone".to_string(), format!("z{}", i % 5))]),
            availability: Availability::Active,
            ready: true,
            capacity: Resources {
                nano_cpus: 64_000_000_000,
                memory: 256 << 30,
            },
            volumes: Default::default(),
        })
        .collect()
}

/// 100 services of 1,000 replicas each, with reservations and a constraint
/// on half of them, spread over zones for a quarter.
fn place_all(strategy: Strategy) -> usize {
    let mut c = Cluster::new(cluster(), &[], &BTreeMap::new());
    let mut placed = 0;
    for s in 0..100 {
        let spec = TaskSpec {
            service: format!("svc-{s}"),
            reservations: Resources {
                nano_cpus: 100_000_000,
                memory: 64 << 20,
            },
            constraints: if s % 2 == 0 {
                vec![Constraint::parse("node.role!=manager").expect("valid")]
            } else {
                vec![]
            },
            spread_over: (s % 4 == 0).then(|| "zone".to_string()),
            strategy,
            ..Default::default()
        };
        placed += c.place(&spec, 1_000).nodes.len();
    }
    placed
}

fn bench(c: &mut Criterion) {
    for (name, strategy) in [("spread", Strategy::Spread), ("binpack", Strategy::Binpack)] {
        // One plain measurement for BENCHMARKS.md, then criterion's.
        let t = Instant::now();
        let n = place_all(strategy);
        let secs = t.elapsed().as_secs_f64();
        println!(
            "{name}: {n} placements on 5000 nodes in {secs:.3} s = {:.0} placements/s",
            n as f64 / secs
        );
        let mut g = c.benchmark_group("place 100k tasks on 5k nodes");
        g.sample_size(10);
        g.bench_function(name, |b| b.iter(|| black_box(place_all(strategy))));
        g.finish();
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
