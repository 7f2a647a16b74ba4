//! The control plane under load and under failure: a big deployment on
//! three simulated hosts runs exactly its replicas without a node ever
//! taken for dead, an orphan container is removed, and the storm guard
//! holds tasks in place when most nodes vanish at once. (The figures at
//! full size, 300 and 1,000 replicas, are in BENCHMARKS.md.)

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::cluster::*;
use common::*;

/// Replicas of the big deployment: enough that every agent has a queue of
/// starts much longer than it runs at once (four), so liveness competes
/// with a saturated runtime.
const N: usize = 90;

fn sleepers(replicas: usize) -> String {
    format!(
        r#"services:
  many:
    image: IMAGE
    command: ["sleep", "100000"]
    stop_grace_period: 1s
    deploy:
      replicas: {replicas}
"#
    )
}

/// Task containers running on every agent, together.
fn all_containers(cl: &Cluster) -> usize {
    (0..cl.agents.len()).map(|i| cl.containers(i).len()).sum()
}

/// The nodes as `node ls --format json` has them, by host name: (up, held).
fn node_states(cl: &Cluster) -> BTreeMap<String, (bool, bool)> {
    cl.json(&["node", "ls", "--format", "json"])
        .as_array()
        .unwrap()
        .iter()
        .map(|n| {
            (
                n["hostname"].as_str().unwrap().to_owned(),
                (n["up"] == true, n["held"] == true),
            )
        })
        .collect()
}

/// Kept events (no follow) as JSON objects.
fn events(cl: &Cluster) -> Vec<serde_json::Value> {
    let o = cl.admin(&[
        "events",
        "--since",
        "10m",
        "--no-follow",
        "--format",
        "json",
    ]);
    assert!(o.status.success(), "{}", errtext(&o));
    text(&o)
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn a_big_deploy_runs_exactly_its_replicas_no_node_goes_down_and_orphans_go() {
    let Some(mut cl) = Cluster::new(
        "a_big_deploy_runs_exactly_its_replicas_no_node_goes_down_and_orphans_go",
        3,
    ) else {
        return;
    };
    for i in 0..3 {
        cl.start_agent(i);
    }
    let t0 = Instant::now();
    let o = cl.deploy("big", &sleepers(N).replace("IMAGE", &cl.image));
    assert!(o.status.success(), "{}", errtext(&o));
    // Every node stays Ready the whole time its runtime is busy with the
    // queue of starts.
    let mut downs = Vec::new();
    wait_for(
        &format!("{N} replicas to run"),
        Duration::from_secs(240),
        || {
            for (host, (up, _)) in node_states(&cl) {
                if !up {
                    downs.push(format!("{host} at {:?}", t0.elapsed()));
                }
            }
            let r = cl.running("big_many");
            if r.values().sum::<usize>() == N {
                Ok(())
            } else {
                Err(format!("{r:?}"))
            }
        },
    );
    eprintln!("{N} replicas ran after {:?}", t0.elapsed());
    assert!(downs.is_empty(), "nodes seen down: {downs:?}");
    let log = cl.tail("manager.log");
    assert!(!log.contains("node down"), "{log}");
    assert!(
        !events(&cl).iter().any(|e| e["action"] == "down"),
        "a node-down event"
    );
    // Exactly the replicas, no more: every container is a task's.
    wait_for(
        "exactly N containers",
        Duration::from_secs(30),
        || match all_containers(&cl) {
            n if n == N => Ok(()),
            n => Err(format!("{n} containers")),
        },
    );

    // An orphan: a container labelled as a task the manager never made
    // (as a crashed agent or a start that raced a stop leaves behind).
    // The next assignment the node gets (a scale down) sweeps it away.
    let node_id = cl
        .hostnames()
        .into_iter()
        .find(|(_, h)| h == "node-1")
        .unwrap()
        .0;
    let o = cl.on_agent(
        0,
        &[
            "run",
            "-d",
            "--name",
            "orphan",
            "--label",
            "gantry.task.id=notamanagerstask",
            "--label",
            &format!("gantry.node.id={node_id}"),
            &cl.image,
            "sleep",
            "100000",
        ],
    );
    assert!(o.status.success(), "{}", errtext(&o));
    let o = cl.admin(&["service", "scale", "big_many=30"]);
    assert!(o.status.success(), "{}", errtext(&o));
    cl.wait_total("big_many", 30, Duration::from_secs(60));
    wait_for(
        "the orphan gone and 30 containers left",
        Duration::from_secs(60),
        || {
            let orphan = cl.on_agent(0, &["inspect", "orphan"]).status.success();
            match (orphan, all_containers(&cl)) {
                (false, 30) => Ok(()),
                (o, n) => Err(format!("orphan there: {o}, {n} containers")),
            }
        },
    );
    assert!(cl
        .tail("agent0.log")
        .contains("removing an orphan task container"));

    // A stack rm leaves nothing behind.
    let t1 = Instant::now();
    let o = cl.admin(&["stack", "rm", "big"]);
    assert!(o.status.success(), "{}", errtext(&o));
    wait_for(
        "no containers left",
        Duration::from_secs(60),
        || match all_containers(&cl) {
            0 => Ok(()),
            n => Err(format!("{n} containers")),
        },
    );
    eprintln!("stack rm emptied the hosts in {:?}", t1.elapsed());
}

/// Takes a simulated host off the LAN, or puts it back.
fn link(cl: &Cluster, host: usize, up: bool) {
    let o = std::process::Command::new("ip")
        .args(["-n", &cl.lan.hosts[host].name, "link", "set", "eth0"])
        .arg(if up { "up" } else { "down" })
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", errtext(&o));
}

#[test]
fn the_storm_guard_holds_tasks_when_most_nodes_vanish_at_once() {
    let Some(mut cl) = Cluster::new(
        "the_storm_guard_holds_tasks_when_most_nodes_vanish_at_once",
        3,
    ) else {
        return;
    };
    for i in 0..3 {
        cl.start_agent(i);
    }
    let o = cl.deploy("app", &web(6, "").replace("IMAGE", &cl.image));
    assert!(o.status.success(), "{}", errtext(&o));
    let even = [("node-1", 2), ("node-2", 2), ("node-3", 2)];
    cl.wait_running("app_web", &even, Duration::from_secs(60));
    let tasks_before = cl.tasks("app_web").len();

    // Two of three hosts lose their links at once: a network fault, not
    // two dead hosts. Both are marked down, held; nothing is rescheduled.
    link(&cl, 2, false);
    link(&cl, 3, false);
    wait_for(
        "node-2 and node-3 down and held",
        Duration::from_secs(20),
        || {
            let s = node_states(&cl);
            if s["node-2"] == (false, true) && s["node-3"] == (false, true) {
                Ok(())
            } else {
                Err(format!("{s:?}"))
            }
        },
    );
    std::thread::sleep(Duration::from_secs(4));
    let tasks = cl.tasks("app_web");
    assert_eq!(tasks.len(), tasks_before, "no task was added: {tasks:?}");
    assert!(
        tasks.iter().all(|t| t["desired"] == "running"),
        "no task was shut down: {tasks:?}"
    );
    let table = cl.admin_ok(&["node", "ls"]);
    assert_eq!(table.matches("Down (held)").count(), 2, "{table}");
    let held: Vec<serde_json::Value> = events(&cl)
        .into_iter()
        .filter(|e| e["action"] == "hold")
        .collect();
    assert_eq!(held.len(), 2, "{held:?}");
    let reason = held[0]["attributes"]["reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains("storm guard") && reason.contains("confirm-down"),
        "{held:?}"
    );

    // An operator confirms node-2 down: its tasks move to node-1, the one
    // node up; node-3's stay held (as last reported: running).
    let o = cl.admin(&["node", "confirm-down", "node-2"]);
    assert!(o.status.success(), "{}", errtext(&o));
    cl.wait_running(
        "app_web",
        &[("node-1", 4), ("node-3", 2)],
        Duration::from_secs(30),
    );
    assert_eq!(node_states(&cl)["node-3"], (false, true));
    let o = cl.admin(&["node", "confirm-down", "node-1"]);
    assert!(!o.status.success(), "node-1 is up");
    assert!(errtext(&o).contains("is up"), "{}", errtext(&o));

    // The links come back: both nodes are ready and no longer held; the
    // service spreads out again.
    link(&cl, 2, true);
    link(&cl, 3, true);
    wait_for("node-2 and node-3 back", Duration::from_secs(20), || {
        let s = node_states(&cl);
        if s.values().all(|v| *v == (true, false)) {
            Ok(())
        } else {
            Err(format!("{s:?}"))
        }
    });
    cl.wait_running("app_web", &even, Duration::from_secs(90));

    // One host of three dying is a host failure, not a storm: its
    // replicas run elsewhere within 10 s.
    let t0 = Instant::now();
    cl.kill_agent(2);
    cl.kill_containers(2);
    cl.wait_running(
        "app_web",
        &[("node-1", 3), ("node-2", 3)],
        Duration::from_secs(20),
    );
    eprintln!("one host of three: failed over in {:?}", t0.elapsed());
    assert_eq!(node_states(&cl)["node-3"], (false, false));
}
