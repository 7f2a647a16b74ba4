//! The cluster end to end, on simulated hosts: a manager on host 0, agents
//! on the others (each with its own data dir, address and host name), a
//! real registry on host 0 that every node pulls from. Processes are the
//! real `gantry server` and `gantry agent`; the CLI talks to the manager
//! with the admin credential the manager wrote.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::cluster::*;
use common::*;
use serde_json::Value;

#[test]
fn nodes_join_only_with_the_right_token() {
    let Some(mut cl) = Cluster::new("nodes_join_only_with_the_right_token", 1) else {
        return;
    };
    // No token: the agent says what it needs and stops.
    let o = cl.agent_command(0, "").output().unwrap();
    assert_eq!(o.status.code(), Some(1));
    assert!(errtext(&o).contains("--token"), "{}", errtext(&o));
    // A malformed token.
    let o = cl.agent_command(0, "SWMTKN-1-abc").output().unwrap();
    assert!(
        errtext(&o).contains("invalid join token"),
        "{}",
        errtext(&o)
    );
    // The right CA but a wrong secret: the manager refuses.
    let token = cl.token();
    let wrong = format!("{}{}", &token[..token.len() - 32], "0".repeat(32));
    let o = cl.agent_command(0, &wrong).output().unwrap();
    assert_eq!(o.status.code(), Some(1));
    assert!(
        errtext(&o).contains("invalid join token"),
        "{}",
        errtext(&o)
    );
    // A token of another cluster: the agent refuses the manager.
    let fp = "ab".repeat(32);
    let other = format!("GTKN-1-{fp}-{}", "1".repeat(32));
    let o = cl.agent_command(0, &other).output().unwrap();
    assert!(errtext(&o).contains("another cluster"), "{}", errtext(&o));
    // Nothing joined.
    assert_eq!(
        cl.json(&["node", "ls", "--format", "json"]),
        serde_json::json!([])
    );
    // A rotated token: the old one no longer joins, the new one does.
    cl.admin_ok(&["join-token", "--rotate"]);
    let o = cl.agent_command(0, &token).output().unwrap();
    assert!(
        errtext(&o).contains("invalid join token"),
        "{}",
        errtext(&o)
    );
    cl.start_agent(0);
    // An admin certificate from another cluster's CA is refused by the
    // manager, even by a client that trusts the manager.
    let stranger = tempfile::tempdir().unwrap();
    let mine: Value =
        serde_json::from_slice(&std::fs::read(cl.cfg.path().join("admin.json")).unwrap()).unwrap();
    let other = gantry_pki::ClusterCa::generate("other").unwrap();
    let forged = other.issue("admin", gantry_pki::Role::Admin, &[]).unwrap();
    // The CLI with this cluster's CA but another certificate and key.
    let as_stranger = |cert: Value, key: Value| {
        let mut cred = mine.clone();
        cred["cert_pem"] = cert;
        cred["key_pem"] = key;
        std::fs::write(
            stranger.path().join("admin.json"),
            serde_json::to_vec(&cred).unwrap(),
        )
        .unwrap();
        let o =
            cl.g.cmd_on(&cl.lan.hosts[0])
                .env("GANTRY_CONFIG_DIR", stranger.path())
                .args(["node", "ls"])
                .output()
                .unwrap();
        assert_eq!(o.status.code(), Some(1), "{}", text(&o));
        errtext(&o)
    };
    let e = as_stranger(forged.cert_pem.into(), forged.key_pem.into());
    assert!(e.contains("refused this credential"), "{e}");
    // A node certificate cannot do what the admin does.
    let node: Value = serde_json::from_slice(
        &std::fs::read(cl.agents[0].data.path().join("agent/identity.json")).unwrap(),
    )
    .unwrap();
    let e = as_stranger(node["cert_pem"].clone(), node["key_pem"].clone());
    assert!(e.contains("admin credential"), "{e}");
}

/// Counts running tasks of `service` whenever asked, remembering the most
/// seen at once.
struct Sampler {
    max: usize,
    min: usize,
}

impl Sampler {
    fn new() -> Self {
        Self {
            max: 0,
            min: usize::MAX,
        }
    }
    fn sample(&mut self, cl: &Cluster, service: &str) -> BTreeMap<String, usize> {
        let r = cl.running(service);
        let n: usize = r.values().sum();
        self.max = self.max.max(n);
        self.min = self.min.min(n);
        r
    }
}

#[test]
fn services_spread_fail_over_come_back_and_drain() {
    let Some(mut cl) = Cluster::new("services_spread_fail_over_come_back_and_drain", 3) else {
        return;
    };
    cl.start_agent(0);
    cl.start_agent(1);
    let stack = web(6, "")
        + r#"  mon:
    image: IMAGE
    command: ["sleep", "100000"]
    stop_grace_period: 1s
    deploy:
      mode: global
  pinned:
    image: IMAGE
    command: ["sleep", "100000"]
    stop_grace_period: 1s
    deploy:
      placement:
        constraints: ["node.labels.zone == z2"]
  huge:
    image: IMAGE
    command: ["sleep", "100000"]
    deploy:
      resources:
        reservations:
          cpus: "64"
"#;
    let o = cl.deploy("app", &stack.replace("IMAGE", &cl.image));
    assert!(o.status.success(), "{}", errtext(&o));
    cl.wait_running(
        "app_web",
        &[("node-1", 3), ("node-2", 3)],
        Duration::from_secs(30),
    );
    cl.wait_running(
        "app_mon",
        &[("node-1", 1), ("node-2", 1)],
        Duration::from_secs(10),
    );
    cl.wait_running("app_pinned", &[("node-2", 1)], Duration::from_secs(10));
    // Reservations that fit nowhere: pending, and service ps says why.
    let huge = cl.tasks("app_huge");
    assert_eq!(huge.len(), 1, "{huge:?}");
    assert_eq!(huge[0]["state"], "pending");
    let why = huge[0]["message"].as_str().unwrap();
    assert!(why.contains("2 node"), "{why}");
    let table = cl.admin_ok(&["service", "ps", "huge"]);
    assert!(table.contains("Pending"), "{table}");

    // A third node joins: the global service follows it, and web is
    // rebalanced to 2/2/2 without ever running fewer than 6.
    cl.start_agent(2);
    cl.wait_running(
        "app_mon",
        &[("node-1", 1), ("node-2", 1), ("node-3", 1)],
        Duration::from_secs(10),
    );
    let mut s = Sampler::new();
    wait_for("web rebalanced to 2/2/2", Duration::from_secs(60), || {
        let r = s.sample(&cl, "app_web");
        if r.values().all(|n| *n == 2) && r.len() == 3 {
            Ok(())
        } else {
            Err(format!("{r:?}"))
        }
    });
    assert!(s.min >= 6, "web dropped to {} during the rebalance", s.min);

    // Host death: node-3's agent and containers die. The service is back
    // to 6 on the other hosts within 10 s.
    let t0 = Instant::now();
    cl.kill_agent(2);
    cl.kill_containers(2);
    let mut s = Sampler::new();
    wait_for(
        "web back to 6 without node-3",
        Duration::from_secs(10),
        || {
            let r = s.sample(&cl, "app_web");
            let n: usize = r
                .iter()
                .filter(|(h, _)| h.as_str() != "node-3")
                .map(|(_, n)| n)
                .sum();
            if n == 6 {
                Ok(())
            } else {
                Err(format!("{r:?}; tasks: {:#?}", cl.tasks("app_web")))
            }
        },
    );
    let failover = t0.elapsed();
    eprintln!(
        "FAILOVER: a replica lost with its host ran elsewhere after {:.2} s (heartbeat grace {GRACE})",
        failover.as_secs_f64()
    );
    let nodes = cl.json(&["node", "ls", "--format", "json"]);
    assert!(
        nodes
            .as_array()
            .unwrap()
            .iter()
            .any(|n| n["hostname"] == "node-3" && n["up"] == false),
        "{nodes}"
    );

    // The host returns (same data dir: same node, no token needed): no
    // more than 6 ever run, and it gets its share back.
    let child = cl
        .agent_command(2, "")
        .stdout(Stdio::null())
        .stderr(cl.log("agent2.log"))
        .spawn()
        .unwrap();
    cl.agents[2].child = Some(child);
    let mut s = Sampler::new();
    wait_for("web back to 2/2/2", Duration::from_secs(60), || {
        let r = s.sample(&cl, "app_web");
        if r.values().all(|n| *n == 2) && r.len() == 3 {
            Ok(())
        } else {
            Err(format!("{r:?}"))
        }
    });
    assert!(
        s.max <= 7,
        "{} running at once (start-first moves add one)",
        s.max
    );
    assert!(s.min >= 6, "web dropped to {}", s.min);
    cl.wait_running(
        "app_mon",
        &[("node-1", 1), ("node-2", 1), ("node-3", 1)],
        Duration::from_secs(10),
    );

    // Drain node-1: its tasks move away before the command returns.
    let out = cl.admin_ok(&["node", "drain", "node-1"]);
    assert!(out.contains("drained"), "{out}");
    cl.wait_running(
        "app_web",
        &[("node-2", 3), ("node-3", 3)],
        Duration::from_secs(30),
    );
    assert!(cl.containers(0).is_empty(), "{:?}", cl.containers(0));
    let table = cl.admin_ok(&["node", "ls"]);
    assert!(table.contains("Drain"), "{table}");
    // Pause is not drain: nothing moves back until it is active again.
    cl.admin_ok(&["node", "activate", "node-1"]);
    cl.admin_ok(&["node", "update", "--label-add", "tier=front", "node-1"]);
    let n = cl.json(&["node", "inspect", "node-1"]);
    assert_eq!(n[0]["labels"]["tier"], "front", "{n}");

    // node ps: the tasks on a node, by hostname, and nothing of the others
    // (web's 3 and the global mon's 1 on each node left).
    let web = |v: &serde_json::Value| -> (usize, std::collections::BTreeSet<String>) {
        let tasks: Vec<&serde_json::Value> = v
            .as_array()
            .unwrap()
            .iter()
            .filter(|t| t["service"] == "app_web")
            .collect();
        let nodes = tasks
            .iter()
            .map(|t| t["node"].as_str().unwrap_or_default().to_owned())
            .collect();
        (tasks.len(), nodes)
    };
    let on2 = cl.json(&["node", "ps", "--no-history", "--format", "json", "node-2"]);
    let (n, nodes) = web(&on2);
    assert_eq!((n, nodes.len()), (3, 1), "{on2}");
    assert!(
        on2.as_array()
            .unwrap()
            .iter()
            .any(|t| t["service"] == "app_mon"),
        "{on2}"
    );
    let both = cl.json(&[
        "node",
        "ps",
        "--no-history",
        "--format",
        "json",
        "node-2",
        "node-3",
    ]);
    let (n, nodes) = web(&both);
    assert_eq!((n, nodes.len()), (6, 2), "{both}");
    let table = cl.admin_ok(&["node", "ps", "node-3"]);
    assert!(
        table.contains("app_web.") && table.contains("node-3"),
        "{table}"
    );

    // stack ps and rm.
    let table = cl.admin_ok(&["stack", "ps", "app"]);
    assert!(table.contains("app_web.1"), "{table}");
    cl.admin_ok(&["stack", "rm", "app"]);
    wait_for("every container to go", Duration::from_secs(30), || {
        let left: Vec<String> = (0..3).flat_map(|i| cl.containers(i)).collect();
        if left.is_empty() {
            Ok(())
        } else {
            Err(format!("{left:?}"))
        }
    });
}

#[test]
fn managers_restart_agents_readopt_and_bad_updates_roll_back() {
    let Some(mut cl) = Cluster::new(
        "managers_restart_agents_readopt_and_bad_updates_roll_back",
        2,
    ) else {
        return;
    };
    // An image whose entrypoint fails at once.
    let broken = format!("{}/test/bb:broken", cl.reg.addr);
    let ctx = cl.g.context(&format!(
        "{BUSYBOX_DOCKERFILE}ENTRYPOINT [\"/bin/false\"]\n"
    ));
    cl.g.ok(&["build", "-q", "-t", &broken, ctx.path().to_str().unwrap()]);
    cl.push(&broken);
    cl.start_agent(0);
    cl.start_agent(1);
    let stack = web(
        4,
        "      update_config:\n        parallelism: 1\n        monitor: 3s\n        failure_action: rollback\n",
    )
    .replace("IMAGE", &cl.image);
    let o = cl.deploy("app", &stack);
    assert!(o.status.success(), "{}", errtext(&o));
    cl.wait_running(
        "app_web",
        &[("node-1", 2), ("node-2", 2)],
        Duration::from_secs(30),
    );
    // Deploying the same file again changes nothing.
    let before: Vec<Value> = cl.tasks("app_web");
    let out = cl.admin_ok(&[
        "deploy",
        "-f",
        cl.logs.path().join("app.yml").to_str().unwrap(),
        "app",
    ]);
    assert!(out.contains("up to date"), "{out}");
    assert_eq!(cl.tasks("app_web"), before);

    // The manager restarts: state kept, agents reconnect, containers untouched.
    let containers: Vec<Vec<String>> = (0..2).map(|i| cl.containers(i)).collect();
    assert_eq!(containers[0].len(), 2, "{containers:?}");
    assert_eq!(containers[1].len(), 2, "{containers:?}");
    cl.kill_manager();
    std::thread::sleep(Duration::from_millis(500));
    cl.start_manager();
    let tasks: Vec<String> = before
        .iter()
        .filter(|t| t["desired"] == "running")
        .map(|t| t["id"].as_str().unwrap().to_owned())
        .collect();
    wait_for("agents to report again", Duration::from_secs(10), || {
        let nodes = cl.json(&["node", "ls", "--format", "json"]);
        let seen = nodes
            .as_array()
            .unwrap()
            .iter()
            .all(|n| n["up"] == true && n["last_seen_ms"].as_u64().is_some_and(|ms| ms < 1500));
        if seen {
            Ok(())
        } else {
            Err(format!("{nodes}"))
        }
    });
    // Longer than the grace: nobody went down, nothing was moved.
    std::thread::sleep(Duration::from_secs(4));
    let now: Vec<String> = cl
        .tasks("app_web")
        .iter()
        .filter(|t| t["desired"] == "running" && t["state"] == "running")
        .map(|t| t["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(now, tasks);
    assert_eq!(
        (0..2).map(|i| cl.containers(i)).collect::<Vec<_>>(),
        containers
    );

    // An agent restarts while its containers keep running: it re-adopts
    // them, nothing restarts.
    let veth0 = format!("gv{}", &containers[0][0][..11]);
    assert_eq!(ingress_programs(&cl.lan.hosts[1], &veth0), ["from_task"]);
    cl.kill_agent(0);
    assert_eq!(
        ingress_programs(&cl.lan.hosts[1], &veth0),
        Vec::<String>::new(),
        "the fast path outlived its agent"
    );
    let log = cl.log("agent0.log");
    let child = cl
        .agent_command(0, "")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    cl.agents[0].child = Some(child);
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(cl.containers(0), containers[0]);
    cl.wait_running(
        "app_web",
        &[("node-1", 2), ("node-2", 2)],
        Duration::from_secs(5),
    );
    // The fast path's programs went with the old agent; the new one puts
    // the re-adopted tasks back on it.
    for c in &containers[0] {
        let veth = format!("gv{}", &c[..11]);
        wait_for(
            &format!("{veth} back on the fast path"),
            Duration::from_secs(5),
            || match ingress_programs(&cl.lan.hosts[1], &veth) {
                p if p == ["from_task"] => Ok(()),
                p => Err(format!("{p:?}")),
            },
        );
    }

    // A partition: node-1's agent is gone past the grace but its
    // containers live on. Its tasks run elsewhere; when it is back, the
    // stale containers are stopped.
    cl.kill_agent(0);
    cl.wait_running("app_web", &[("node-2", 4)], Duration::from_secs(15));
    assert_eq!(
        cl.containers(0).len(),
        2,
        "the partitioned node still runs its two"
    );
    let log = cl.log("agent0.log");
    let child = cl
        .agent_command(0, "")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    cl.agents[0].child = Some(child);
    wait_for("stale containers to stop", Duration::from_secs(15), || {
        let c = cl.containers(0);
        // Rebalance may already have started new tasks there: none of the
        // old containers may remain.
        let stale: Vec<&String> = c.iter().filter(|id| containers[0].contains(id)).collect();
        if stale.is_empty() {
            Ok(())
        } else {
            Err(format!("{stale:?}"))
        }
    });

    // A rolling update to a broken image rolls back by itself.
    cl.wait_running(
        "app_web",
        &[("node-1", 2), ("node-2", 2)],
        Duration::from_secs(60),
    );
    let o = cl.admin(&["service", "update", "--image", &broken, "web"]);
    assert_eq!(o.status.code(), Some(1), "{}{}", text(&o), errtext(&o));
    assert!(text(&o).contains("rolled back"), "{}", text(&o));
    let svc = cl.json(&["service", "inspect", "web"]);
    assert_eq!(svc[0]["spec"]["image"], cl.image.as_str(), "{svc}");
    assert_eq!(svc[0]["update"]["state"], "rolled_back", "{svc}");
    // Specs are objects in the JSON, never JSON inside a string.
    let ls = cl.json(&["service", "ls", "--format", "json"]);
    let web = ls
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "app_web")
        .unwrap_or_else(|| panic!("{ls}"));
    assert!(
        web["spec"]["mode"]["replicated"]["replicas"].is_u64(),
        "{web}"
    );
    assert!(web["previous"][1]["image"].is_string(), "{web}");
    cl.wait_running(
        "app_web",
        &[("node-1", 2), ("node-2", 2)],
        Duration::from_secs(30),
    );
    // The events tell the story.
    let ev = cl.admin_ok(&[
        "events",
        "--since",
        "5m",
        "--no-follow",
        "--filter",
        "type=service",
    ]);
    assert!(ev.contains("rollback_started"), "{ev}");
    assert!(ev.contains("rollback_completed"), "{ev}");
}

fn write(dir: &Path, name: &str, text: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p.to_str().unwrap().to_owned()
}

#[test]
fn a_dev_server_runs_stacks_and_refuses_bad_input() {
    let Some(d) = Dev::start("a_dev_server_runs_stacks_and_refuses_bad_input") else {
        return;
    };
    d.g.busybox_image("bb:1");
    let dir = tempfile::tempdir().unwrap();
    let good = write(
        dir.path(),
        "stack.yml",
        &web(2, "").replace("IMAGE", "bb:1"),
    );
    // Without -d, deploy follows the rollout to the end.
    let o = d.cli(&["deploy", "-f", &good, "app"]);
    assert!(o.status.success(), "{}{}", text(&o), errtext(&o));
    assert!(text(&o).contains("app_web: 2/2 running"), "{}", text(&o));
    let before = d.state();

    // A malformed stack file: file, line and column; nothing changes.
    let bad = write(
        dir.path(),
        "bad.yml",
        "services:\n  web:\n    image: bb:1\n    deploy:\n      replicas: lots\n",
    );
    let refused = |args: &[&str], why: &str| {
        let o = d.cli(args);
        assert_eq!(o.status.code(), Some(1), "{args:?}: {}", text(&o));
        assert!(errtext(&o).contains(why), "{args:?}: {}", errtext(&o));
    };
    refused(&["deploy", "-f", &bad, "app"], "bad.yml:5:");
    // Unknown services and nodes, bad values.
    refused(&["service", "ps", "nope"], "no such service: nope");
    refused(&["node", "drain", "nope"], "no such node: nope");
    refused(&["node", "ps", "nope"], "no such node: nope");
    refused(&["service", "scale", "web=x"], "must be a number");
    refused(&["service", "rollback", "web"], "no previous version");
    refused(&["deploy", "-f", &good, "bad name!"], "invalid stack name");
    refused(&["node", "rm", "vm-that-is-not"], "no such node");
    let me = text(&d.cli(&["node", "ls", "--format", "json"]));
    let me: Value = serde_json::from_str(&me).unwrap();
    refused(
        &["node", "rm", me[0]["id"].as_str().unwrap()],
        "is up or still has tasks",
    );
    assert_eq!(d.state(), before);

    // An impossible constraint and a registry that does not answer: the
    // stack deploys, the tasks say why they do not run.
    let other = write(
        dir.path(),
        "other.yml",
        r#"services:
  nowhere:
    image: bb:1
    command: ["sleep", "1000"]
    deploy:
      placement:
        constraints: ["node.labels.region == mars"]
  unreachable:
    image: 127.0.0.1:9/nothing/here:1
    deploy:
      restart_policy:
        condition: none
"#,
    );
    let o = d.cli(&["deploy", "-d", "-f", &other, "other"]);
    assert!(o.status.success(), "{}", errtext(&o));
    wait_for("the reasons", Duration::from_secs(20), || {
        let ps = text(&d.cli(&["stack", "ps", "other"]));
        if ps.contains("constraint") && ps.contains("pull 127.0.0.1:9/nothing/here:1") {
            Ok(())
        } else {
            Err(ps)
        }
    });

    // Scale and update follow to the end; service ls shows the counts.
    let o = d.cli(&["service", "scale", "web=3"]);
    assert!(o.status.success(), "{}", errtext(&o));
    let ls = text(&d.cli(&["service", "ls"]));
    assert!(ls.contains("3/3"), "{ls}");
    let o = d.cli(&["service", "update", "--env-add", "COLOR=blue", "web"]);
    assert!(o.status.success(), "{}{}", text(&o), errtext(&o));
    let svc: Value = serde_json::from_slice(&d.cli(&["service", "inspect", "web"]).stdout).unwrap();
    assert_eq!(svc[0]["spec"]["environment"]["COLOR"], "blue");
    assert_eq!(svc[0]["version"], 3, "{svc}");
    // And back by hand.
    let o = d.cli(&["service", "rollback", "web"]);
    assert!(o.status.success(), "{}{}", text(&o), errtext(&o));
    let svc: Value = serde_json::from_slice(&d.cli(&["service", "inspect", "web"]).stdout).unwrap();
    assert!(
        svc[0]["spec"]["environment"].get("COLOR").is_none(),
        "{svc}"
    );
    assert_eq!(svc[0]["version"], 2, "{svc}");

    // Health checks (CMD-SHELL and CMD in the container, TCP from the node),
    // depends_on waiting for health, and an unhealthy task replaced.
    let deps = write(
        dir.path(),
        "deps.yml",
        r#"services:
  db:
    image: bb:1
    command: ["sh", "-c", "sleep 2; touch /ready; exec sleep 100000"]
    stop_grace_period: 1s
    healthcheck:
      test: ["CMD-SHELL", "test -f /ready"]
      interval: 1s
      retries: 1
      start_period: 30s
  app:
    image: bb:1
    command: ["httpd", "-f", "-p", "8080"]
    stop_grace_period: 1s
    depends_on: [db]
    healthcheck:
      test: ["TCP", "8080"]
      interval: 1s
  sick:
    image: bb:1
    command: ["sleep", "100000"]
    stop_grace_period: 1s
    healthcheck:
      test: ["CMD", "false"]
      interval: 1s
      retries: 1
"#,
    );
    let o = d.cli(&["deploy", "-d", "-f", &deps, "deps"]);
    assert!(o.status.success(), "{}", errtext(&o));
    wait_for("app to run", Duration::from_secs(30), || {
        let ls = text(&d.cli(&["service", "ls"]));
        if ls
            .lines()
            .any(|l| l.contains("deps_app") && l.contains("1/1"))
        {
            Ok(())
        } else {
            Err(ls)
        }
    });
    let events = |svc: &str| -> Vec<Value> {
        let o = d.cli(&[
            "events",
            "--since",
            "5m",
            "--no-follow",
            "--format",
            "json",
            "--filter",
            &format!("service={svc}"),
        ]);
        text(&o)
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    };
    let first = |evs: &[Value], action: &str| -> String {
        evs.iter()
            .find(|e| e["action"] == action)
            .unwrap_or_else(|| panic!("no {action} in {evs:?}"))["time"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    let db_healthy = first(&events("deps_db"), "running");
    let app_created = first(&events("deps_app"), "assigned");
    assert!(
        app_created >= db_healthy,
        "app was created at {app_created}, before db was healthy at {db_healthy}"
    );
    wait_for(
        "the sick task to be replaced",
        Duration::from_secs(30),
        || {
            let ps = text(&d.cli(&["service", "ps", "sick"]));
            if ps.contains("unhealthy") {
                Ok(())
            } else {
                Err(ps)
            }
        },
    );

    // Removing the stacks removes every container.
    assert!(d
        .cli(&["stack", "rm", "app", "other", "deps"])
        .status
        .success());
    wait_for("containers to go", Duration::from_secs(30), || {
        let ps = text(&d.cli(&["ps", "-aq"]));
        if ps.trim().is_empty() {
            Ok(())
        } else {
            Err(ps)
        }
    });
    let ls = d.cli(&["stack", "ls", "--format", "json"]);
    assert_eq!(text(&ls).trim(), "[]");
}

/// `ip` or `bridge` inside a simulated host.
fn ip_on(host: &Host, tool: &str, args: &[&str]) -> String {
    let o = Command::new(tool)
        .arg("-n")
        .arg(&host.name)
        .args(args)
        .output()
        .unwrap();
    text(&o)
}

#[test]
fn containers_reach_each_other_across_hosts_on_the_overlay() {
    let Some(mut cl) = Cluster::new("containers_reach_each_other_across_hosts_on_the_overlay", 3)
    else {
        return;
    };
    for i in 0..3 {
        cl.start_agent(i);
    }
    let o = cl.deploy("app", &web(3, "").replace("IMAGE", &cl.image));
    assert!(o.status.success(), "{}", errtext(&o));
    cl.wait_running(
        "app_web",
        &[("node-1", 1), ("node-2", 1), ("node-3", 1)],
        Duration::from_secs(30),
    );
    let names = cl.hostnames();
    // Each task's overlay address, by host name.
    let addr: BTreeMap<String, String> = cl
        .tasks("app_web")
        .iter()
        .filter(|t| t["state"] == "running")
        .map(|t| {
            (
                names[t["node"].as_str().unwrap()].clone(),
                t["addr"]
                    .as_str()
                    .unwrap_or_else(|| panic!("no overlay address: {t}"))
                    .to_owned(),
            )
        })
        .collect();
    assert_eq!(addr.len(), 3, "{addr:?}");
    let blocks: std::collections::BTreeSet<String> = addr
        .values()
        .map(|a| a.rsplit_once('.').unwrap().0.to_owned())
        .collect();
    assert_eq!(blocks.len(), 3, "one block per node: {addr:?}");

    // A container on host 1 reaches the ones on hosts 2 and 3, by address,
    // over TCP; the page names the container that answered.
    let web1 = cl.containers(0);
    assert_eq!(web1.len(), 1);
    for target in ["node-2", "node-3"] {
        let i = if target == "node-2" { 1 } else { 2 };
        let id = &cl.containers(i)[0];
        let url = format!("http://{}:8080/index.html", addr[target]);
        // (busybox-static's wget crashes in glibc's resolver; nc does not.)
        let get = format!(
            "printf 'GET /index.html HTTP/1.0\\r\\n\\r\\n' | nc -w 5 {} 8080",
            addr[target]
        );
        let o = cl.on_agent(0, &["exec", &web1[0], "sh", "-c", &get]);
        let diag = || {
            let h = &cl.lan.hosts[1];
            format!(
                "status {:?} out {:?}\nin container: {:?} {:?}\nroutes:\n{}\nneigh:\n{}\nfdb:\n{}\nlinks:\n{}\naddrs:\n{}\nping: {}",
                o.status,
                text(&o),
                cl.on_agent(0, &["exec", &web1[0], "ping", "-c1", "-W2", &addr[target]]),
                cl.on_agent(0, &["exec", &web1[0], "ip", "route"]),
                ip_on(h, "ip", &["route"]),
                ip_on(h, "ip", &["neigh"]),
                ip_on(h, "bridge", &["fdb", "show", "dev", "gantry.vx"]),
                ip_on(h, "ip", &["-d", "link", "show", "gantry.vx"]),
                ip_on(h, "ip", &["-o", "addr"]),
                text(&h.command("ping").args(["-c1", "-W2", &addr[target]]).output().unwrap()),
            )
        };
        assert!(o.status.success(), "{url}: {}{}", errtext(&o), diag());
        let page = text(&o);
        let body = page.rsplit("\r\n\r\n").next().unwrap_or_default().trim();
        assert!(
            !body.is_empty() && id.starts_with(body),
            "{url} answered {page:?}, not {id}"
        );
    }
    // Those requests took the overlay's fast path: from node-1's task veth,
    // encapsulated in VXLAN by the fast path itself, straight out of the
    // underlay device; on nodes 2 and 3, from the underlay device,
    // decapsulated, straight into the tasks (the counters are the BPF
    // programs').
    let n1 = fast_path_on(&cl.lan.hosts[1]).expect("node-1's fast path");
    assert!(n1.remote > 0.0, "node-1 sent nothing on the fast path");
    assert!(n1.vxlan_out > 0.0, "node-1 encapsulated nothing itself");
    for h in [2, 3] {
        let n = fast_path_on(&cl.lan.hosts[h]).expect("the fast path");
        assert!(
            n.to_task > 0.0,
            "host {h} delivered nothing on the fast path"
        );
        assert!(n.vxlan_in > 0.0, "host {h} decapsulated nothing itself");
    }
    for dev in ["gantry.vx", "eth0"] {
        assert_eq!(
            ingress_programs(&cl.lan.hosts[1], dev),
            ["to_task"],
            "{dev}"
        );
    }
    let veth = format!("gv{}", &web1[0][..11]);
    assert_eq!(ingress_programs(&cl.lan.hosts[1], &veth), ["from_task"]);
    // By name: the node's DNS server answers the service's virtual IP
    // (compose's default endpoint_mode), and tasks.SERVICE its healthy
    // tasks; other names are forwarded (and fail here: the simulated hosts
    // have no resolver).
    let lookup = |name: &str| resolved(&cl.on_agent(0, &["exec", &web1[0], "nslookup", name]));
    let mut all: Vec<String> = addr.values().cloned().collect();
    all.sort();
    assert_eq!(lookup("tasks.web"), all);
    let vip = lookup("web");
    assert_eq!(vip.len(), 1, "{vip:?}");
    let pool = gantry_ipam::Plan::new(gantry_testkit::cluster_cidr().parse().unwrap(), 24)
        .unwrap()
        .vip_pool();
    assert!(
        pool.contains(vip[0].parse().unwrap()),
        "from the plan's pool {pool}: {vip:?}"
    );
    for name in ["web.app", "app_web"] {
        assert_eq!(lookup(name), vip, "{name}");
    }
    // The same over TCP, as a resolver does when UDP answers are too big:
    // a length-prefixed query for `web` gets its three A records.
    let gateway = format!("{}.1", addr["node-1"].rsplit_once('.').unwrap().0);
    let tcp_query = format!(
        "printf '\\x00\\x15\\x12\\x34\\x01\\x00\\x00\\x01\\x00\\x00\\x00\\x00\\x00\\x00\\x03web\\x00\\x00\\x01\\x00\\x01' | nc -w 2 {gateway} 53 | wc -c"
    );
    let o = cl.on_agent(0, &["exec", &web1[0], "sh", "-c", &tcp_query]);
    assert_eq!(
        text(&o).trim(),
        (2 + 21 + 16).to_string(),
        "length prefix, header and question, the virtual IP: {}",
        errtext(&o)
    );
    // Each connection to the virtual IP reaches one of the tasks, on any
    // host, and over the connections all of them answer.
    let get = "for i in $(seq 30); do printf 'GET /index.html HTTP/1.0\\r\\n\\r\\n' | nc -w 5 web 8080 | tail -1; done";
    let o = cl.on_agent(0, &["exec", &web1[0], "sh", "-c", get]);
    let answered = distinct_lines(&o);
    assert_eq!(
        answered.len(),
        3,
        "by name, 30 connections: {answered:?} {}",
        errtext(&o)
    );
    // DNS follows a scale-up and a scale-down.
    cl.admin_ok(&["service", "scale", "web=5"]);
    let t0 = Instant::now();
    wait_for("5 addresses for tasks.web", Duration::from_secs(2), || {
        let l = lookup("tasks.web");
        if l.len() == 5 {
            Ok(())
        } else {
            Err(format!("{l:?}"))
        }
    });
    eprintln!(
        "DNS: 5 records {:?} after the scale-up converged",
        t0.elapsed()
    );
    assert_eq!(lookup("web"), vip, "the virtual IP stays");
    cl.admin_ok(&["service", "scale", "web=3"]);
    wait_for("3 addresses for web", Duration::from_secs(2), || {
        let l = lookup("tasks.web");
        if l.len() == 3 {
            Ok(())
        } else {
            let o = cl.on_agent(0, &["exec", &web1[0], "nslookup", "tasks.web"]);
            Err(format!("{l:?} {o:?} {:?}", cl.tasks("app_web")))
        }
    });

    // An ingress-mode published port answers on every node, wherever the
    // one task of its service runs.
    let edge = web(1, "").replace("IMAGE", &cl.image).replace(
        "    stop_grace_period: 1s\n",
        "    stop_grace_period: 1s\n    ports: [\"8088:8080\", \"127.0.0.1:8089:8080\"]\n",
    );
    let o = cl.deploy("edge", &edge);
    assert!(o.status.success(), "{}", errtext(&o));
    let only = wait_for("edge's task", Duration::from_secs(30), || {
        let r = cl.running("edge_web");
        if r.len() == 1 {
            Ok(r.into_keys().next().unwrap())
        } else {
            Err(format!("{r:?}"))
        }
    });
    for h in 1..=3 {
        let url = format!("http://{}:8088/index.html", cl.lan.hosts[h].addr);
        wait_for(
            &format!("{url} from host 0"),
            Duration::from_secs(5),
            || {
                let o = cl.lan.hosts[0]
                    .command("curl")
                    .args(["-sf", "-m", "3", &url])
                    .output()
                    .unwrap();
                if o.status.success() && !text(&o).trim().is_empty() {
                    Ok(())
                } else {
                    Err(format!("the task runs on {only}: {}", errtext(&o)))
                }
            },
        );
    }
    // A port published on 127.0.0.1 answers on each node's loopback and
    // nowhere else: never more exposed than written.
    for h in 1..=3 {
        wait_for(
            &format!("127.0.0.1:8089 on host {h}"),
            Duration::from_secs(5),
            || {
                let o = cl.lan.hosts[h]
                    .command("curl")
                    .args(["-sf", "-m", "3", "http://127.0.0.1:8089/index.html"])
                    .output()
                    .unwrap();
                if o.status.success() {
                    Ok(())
                } else {
                    Err(errtext(&o))
                }
            },
        );
        let o = cl.lan.hosts[0]
            .command("curl")
            .args([
                "-s",
                "-m",
                "3",
                &format!("http://{}:8089/index.html", cl.lan.hosts[h].addr),
            ])
            .output()
            .unwrap();
        assert_eq!(
            o.status.code(),
            Some(7),
            "host {h}'s loopback-only port from host 0: {}{}",
            text(&o),
            errtext(&o)
        );
    }
    let in_web1 = |script: &str| text(&cl.on_agent(0, &["exec", &web1[0], "sh", "-c", script]));
    // From a container: its own host's published port is open (hairpin)...
    let hairpin = in_web1(&format!(
        "printf 'GET /index.html HTTP/1.0\\r\\n\\r\\n' | nc -w 3 {} 8088",
        cl.lan.hosts[1].addr
    ));
    assert!(hairpin.contains("200 OK"), "hairpin: {hairpin:?}");
    // ...the registry on host 0, which knows no overlay route, answers:
    // the container's traffic leaves masqueraded behind host 1's address...
    let (reg_ip, reg_port) = cl.reg.addr.split_once(':').unwrap();
    let out = in_web1(&format!(
        "printf 'GET /v2/ HTTP/1.0\\r\\n\\r\\n' | nc -w 3 {reg_ip} {reg_port}"
    ));
    assert!(out.contains("200 OK"), "to the registry on host 0: {out:?}");
    // A task on an internal network only: its network's other service
    // answers, the registry outside the cluster does not.
    let inner = format!(
        "services:\n  box:\n    image: {img}\n    command: [sleep, '100000']\n    stop_grace_period: 1s\n    networks: [back]\n    deploy:\n      placement: {{constraints: [node.hostname == node-1]}}\n  web:\n    image: {img}\n    command: [sh, -c, 'echo inner > /index.html && exec httpd -f -p 8080 -h /']\n    stop_grace_period: 1s\n    networks: [back]\nnetworks:\n  back:\n    internal: true\n",
        img = cl.image
    );
    let o = cl.deploy("inner", &inner);
    assert!(o.status.success(), "{}", errtext(&o));
    wait_for("inner's tasks", Duration::from_secs(30), || {
        let (b, w) = (cl.running("inner_box"), cl.running("inner_web"));
        if b.len() == 1 && w.len() == 1 {
            Ok(())
        } else {
            Err(format!("{b:?} {w:?}"))
        }
    });
    // Containers of agent 0 whose name starts with `prefix`.
    let named = |prefix: &str| ids_named(&cl.on_agent(0, &["ps", "--format", "json"]), prefix);
    let boxed = wait_for(
        "the box container on host 1",
        Duration::from_secs(10),
        || {
            named("inner_box")
                .into_iter()
                .next()
                .ok_or("none yet".to_owned())
        },
    );
    let in_box = |script: &str| text(&cl.on_agent(0, &["exec", &boxed, "sh", "-c", script]));
    wait_for("inner_web from the box", Duration::from_secs(10), || {
        let out = in_box("printf 'GET /index.html HTTP/1.0\\r\\n\\r\\n' | nc -w 3 web 8080");
        if out.contains("inner") {
            Ok(())
        } else {
            Err(out)
        }
    });
    let out = in_box(&format!(
        "printf 'GET /v2/ HTTP/1.0\\r\\n\\r\\n' | nc -w 3 {reg_ip} {reg_port}; echo done"
    ));
    assert!(
        !out.contains("200 OK") && out.contains("done"),
        "an internal network reached the registry outside the cluster: {out:?}"
    );
    cl.admin_ok(&["stack", "rm", "inner"]);
    wait_for("inner's containers to go", Duration::from_secs(20), || {
        let c = named("inner_");
        if c.is_empty() {
            Ok(())
        } else {
            Err(format!("{c:?}"))
        }
    });
    // ...and the host's other services are closed to it, though open to
    // the LAN.
    let mut listener = cl.lan.hosts[1]
        .command("busybox")
        .args(["nc", "-l", "-p", "9999"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(200));
    for target in [
        cl.lan.hosts[1].addr.clone(),
        format!("{}.1", addr["node-1"].rsplit_once('.').unwrap().0),
    ] {
        let r = in_web1(&format!(
            "nc -w 2 {target} 9999 </dev/null && echo open || echo closed"
        ));
        assert_eq!(
            r.trim(),
            "closed",
            "host 1's port 9999 at {target} from its container"
        );
    }
    let o = cl.lan.hosts[0]
        .command("busybox")
        .args(["nc", "-w", "2", &cl.lan.hosts[1].addr, "9999"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "host 0 reaches host 1's port 9999: {}",
        errtext(&o)
    );
    let _ = listener.kill();
    let _ = listener.wait();
    let o = cl.lan.hosts[1]
        .command("nft")
        .args(["list", "table", "inet", "gantry"])
        .output()
        .unwrap();
    let ruleset = text(&o);
    assert!(
        ruleset.contains("masquerade") && ruleset.contains("tcp dport 8088 accept"),
        "{ruleset}{}",
        errtext(&o)
    );
    cl.admin_ok(&["stack", "rm", "edge"]);

    // A host reaches a container on another host by its overlay address.
    let o = cl.lan.hosts[1]
        .command("curl")
        .args([
            "-sf",
            "-m",
            "5",
            &format!("http://{}:8080/index.html", addr["node-3"]),
        ])
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "host 1 to node-3's task: {}",
        errtext(&o)
    );

    // The VXLAN device's MTU is the underlay's minus 50, and so is the
    // containers'.
    let link = ip_on(&cl.lan.hosts[1], "ip", &["-o", "link", "show", "gantry.vx"]);
    assert!(link.contains("mtu 1450"), "{link}");
    let o = cl.on_agent(0, &["exec", &web1[0], "cat", "/sys/class/net/eth0/mtu"]);
    assert_eq!(text(&o).trim(), "1450");

    // node-3 leaves: within a few seconds the others forget its block,
    // neighbour and FDB entries.
    let block3 = format!("{}.0/24", addr["node-3"].rsplit_once('.').unwrap().0);
    assert!(ip_on(&cl.lan.hosts[1], "ip", &["route"]).contains(&block3));
    cl.kill_agent(2);
    wait_for(
        "node-1 to drop node-3's route",
        Duration::from_secs(10),
        || {
            let routes = ip_on(&cl.lan.hosts[1], "ip", &["route"]);
            let fdb = ip_on(
                &cl.lan.hosts[1],
                "bridge",
                &["fdb", "show", "dev", "gantry.vx"],
            );
            let neigh = ip_on(
                &cl.lan.hosts[1],
                "ip",
                &["neigh", "show", "dev", "gantry.vx"],
            );
            let peers_left = fdb.lines().filter(|l| l.contains(" dst ")).count();
            if !routes.contains(&block3) && peers_left == 1 && neigh.lines().count() == 1 {
                Ok(())
            } else {
                Err(format!("routes:\n{routes}\nfdb:\n{fdb}\nneigh:\n{neigh}"))
            }
        },
    );

    // --cleanup leaves nothing of Gantry on the host.
    cl.kill_agent(0);
    let o = cl.on_agent(0, &["agent", "--cleanup"]);
    assert!(o.status.success(), "{}", errtext(&o));
    // (The kernel destroys a dead container's veth pair asynchronously.)
    wait_for("no Gantry link on host 1", Duration::from_secs(3), || {
        let links = ip_on(&cl.lan.hosts[1], "ip", &["-o", "link"]);
        if links.contains("gantry0") || links.contains("gantry.vx") || links.contains(": gv") {
            Err(links)
        } else {
            Ok(())
        }
    });
    let routes = ip_on(&cl.lan.hosts[1], "ip", &["route"]);
    let cidr = gantry_testkit::cluster_cidr();
    let overlay = cidr.trim_end_matches("0.0/16");
    assert!(!routes.contains(overlay), "{routes}");
    let o = cl.lan.hosts[1]
        .command("nft")
        .args(["list", "tables"])
        .output()
        .unwrap();
    assert!(o.status.success(), "nft: {}", errtext(&o));
    assert!(!text(&o).contains("gantry"), "{}", text(&o));
    assert!(text(&cl.on_agent(0, &["ps", "-aq"])).trim().is_empty());
}

#[test]
fn stack_networks_are_isolated() {
    let Some(mut cl) = Cluster::new("stack_networks_are_isolated", 2) else {
        return;
    };
    cl.start_agent(0);
    cl.start_agent(1);
    for stack in ["red", "blue"] {
        let o = cl.deploy(stack, &web(2, "").replace("IMAGE", &cl.image));
        assert!(o.status.success(), "{}", errtext(&o));
    }
    for svc in ["red_web", "blue_web"] {
        cl.wait_running(
            svc,
            &[("node-1", 1), ("node-2", 1)],
            Duration::from_secs(30),
        );
    }
    let addr = |svc: &str, host: &str| cl.task_addr(svc, host);
    // A red task on node-1.
    let red1 = cl.container_of(0, "red_web");
    let get = |to: &str| cl.get_from(0, &red1, to);
    // Within red, across hosts: open.
    assert!(get(&addr("red_web", "node-2")).contains("200 OK"));
    // To blue, on the same host (bridged) and across hosts (routed): shut.
    for host in ["node-1", "node-2"] {
        let out = get(&addr("blue_web", host));
        assert!(
            !out.contains("200 OK"),
            "red reached blue on {host}: {out:?}"
        );
    }
    // Two tasks of one stack on one node talk straight from veth to veth
    // (the fast path's "local" way), past the bridge.
    let green = web(
        2,
        "      placement:\n        constraints: [\"node.hostname == node-1\"]\n",
    )
    .replace("IMAGE", &cl.image);
    let o = cl.deploy("green", &green);
    assert!(o.status.success(), "{}", errtext(&o));
    cl.wait_running("green_web", &[("node-1", 2)], Duration::from_secs(30));
    let greens: Vec<String> = cl
        .tasks("green_web")
        .iter()
        .filter(|t| t["state"] == "running")
        .filter_map(|t| t["addr"].as_str().map(str::to_owned))
        .collect();
    assert_eq!(greens.len(), 2, "{greens:?}");
    let green1 = cl.container_of(0, "green_web");
    let local_before = fast_path_on(&cl.lan.hosts[1])
        .expect("node-1's fast path")
        .local;
    for to in &greens {
        let out = cl.get_from(0, &green1, to);
        assert!(out.contains("200 OK"), "green to {to}: {out:?}");
    }
    let local = fast_path_on(&cl.lan.hosts[1]).unwrap().local;
    assert!(
        local > local_before,
        "no packet took the local way: {local_before} then {local}"
    );
    // A green task does not reach red on its own node either.
    let out = cl.get_from(0, &green1, &addr("red_web", "node-1"));
    assert!(!out.contains("200 OK"), "green reached red: {out:?}");
    // Names are scoped too: `web` is red's web for a red task (its
    // tasks, and its one virtual IP, not blue's too).
    let lookup = |name: &str| resolved(&cl.on_agent(0, &["exec", &red1, "nslookup", name]));
    let mut red: Vec<String> = vec![addr("red_web", "node-1"), addr("red_web", "node-2")];
    red.sort();
    assert_eq!(lookup("tasks.web"), red);
    assert_eq!(lookup("web").len(), 1, "{:?}", lookup("web"));
    // A host-mode published port: from another machine the kernel DNATs
    // to the task, which sees the client's own address.
    let cgi = r#"services:
  who:
    image: IMAGE
    command: ["sh", "-c", "mkdir -p /www/cgi-bin && printf '#!/bin/sh\necho Content-Type: text/plain\necho\necho $$REMOTE_ADDR\n' > /www/cgi-bin/ip && chmod +x /www/cgi-bin/ip && exec httpd -f -p 8080 -h /www"]
    stop_grace_period: 1s
    ports:
      - target: 8080
        published: 8089
        mode: host
    deploy:
      placement:
        constraints: ["node.hostname == node-1"]
"#
    .replace("IMAGE", &cl.image);
    let o = cl.deploy("seen", &cgi);
    assert!(o.status.success(), "{}", errtext(&o));
    cl.wait_running("seen_who", &[("node-1", 1)], Duration::from_secs(30));
    let url = format!("http://{}:8089/cgi-bin/ip", cl.lan.hosts[1].addr);
    let seen = wait_for("the host-mode port", Duration::from_secs(10), || {
        let o = cl.lan.hosts[0]
            .command("curl")
            .args(["-sf", "-m", "3", &url])
            .output()
            .unwrap();
        if o.status.success() {
            Ok(text(&o).trim().to_owned())
        } else {
            Err(errtext(&o))
        }
    });
    // (busybox httpd listens on IPv6 too and prints v4 clients mapped.)
    let seen = seen.trim_start_matches("[::ffff:").trim_end_matches(']');
    assert_eq!(
        seen, cl.lan.hosts[0].addr,
        "the task saw the client as {seen}"
    );
    for family in ["inet", "bridge"] {
        let o = cl.lan.hosts[1]
            .command("nft")
            .args(["list", "table", family, "gantry"])
            .output()
            .unwrap();
        let ruleset = text(&o);
        assert!(
            ruleset.contains("@net0") && ruleset.contains("drop"),
            "{family}: {ruleset}{}",
            errtext(&o)
        );
    }
}

#[test]
fn direct_routing_skips_vxlan_between_nodes_of_one_subnet() {
    let Some(mut cl) = Cluster::new_with(
        "direct_routing_skips_vxlan_between_nodes_of_one_subnet",
        3,
        |_| (vec!["--direct-routing".into()], None),
    ) else {
        return;
    };
    // Host 3 is on another subnet as well (the same wire, routed on-link),
    // and is known to the cluster by that address: nodes 1 and 2 reach it
    // over VXLAN, each other directly.
    let far = "172.31.250.13";
    for (h, args) in [
        (3, vec!["addr", "add", "172.31.250.13/24", "dev", "eth0"]),
        (1, vec!["route", "add", "172.31.250.0/24", "dev", "eth0"]),
        (2, vec!["route", "add", "172.31.250.0/24", "dev", "eth0"]),
    ] {
        let o = cl.lan.hosts[h].command("ip").args(&args).output().unwrap();
        assert!(o.status.success(), "{}", errtext(&o));
    }
    cl.start_agent(0);
    cl.start_agent(1);
    // Node-3 runs without the fast path: nodes with and without it
    // interoperate (the fast path is local to each node).
    cl.start_agent_with(2, &["--advertise", far, "--no-fast-path"]);
    for stack in ["red", "blue"] {
        let o = cl.deploy(stack, &web(3, "").replace("IMAGE", &cl.image));
        assert!(o.status.success(), "{}", errtext(&o));
    }
    for svc in ["red_web", "blue_web"] {
        cl.wait_running(
            svc,
            &[("node-1", 1), ("node-2", 1), ("node-3", 1)],
            Duration::from_secs(30),
        );
    }
    let addr = |svc: &str, host: &str| cl.task_addr(svc, host);
    let red2 = addr("red_web", "node-2");
    let block2 = format!("{}.0/24", red2.rsplit_once('.').unwrap().0);
    let vtep1 = format!(
        "{}.0",
        addr("red_web", "node-1").rsplit_once('.').unwrap().0
    );
    let (h1, h2) = (&cl.lan.hosts[1], &cl.lan.hosts[2]);
    // Host 1 routes node-2's block straight to host 2 on the LAN, with
    // Gantry's route protocol and its VTEP address as source.
    let route = wait_for(
        "a direct route to node-2's block",
        Duration::from_secs(5),
        || {
            let r = ip_on(h1, "ip", &["route", "show", &block2]);
            let want = format!("via {} dev eth0 proto 103 src {vtep1}", h2.addr);
            if r.contains(&want) {
                Ok(r)
            } else {
                Err(format!("{r:?}, want {want:?}"))
            }
        },
    );
    eprintln!("direct route: {route}");
    let vx_tx = || -> u64 {
        let s = ip_on(h1, "ip", &["-j", "-s", "link", "show", "gantry.vx"]);
        let v: Value = serde_json::from_str(&s).unwrap_or_default();
        v[0]["stats64"]["tx"]["packets"].as_u64().expect(&s)
    };
    let before = vx_tx();
    // A red task on node-1 reaches red's on node-2 by address, over TCP.
    let red1 = cl.container_of(0, "red_web");
    let get = |to: &str| cl.get_from(0, &red1, to);
    assert!(get(&red2).contains("200 OK"), "{}", get(&red2));
    // The host reaches the task too, by its overlay address.
    let host_get = |to: &str| {
        h1.command("curl")
            .args(["-sf", "-m", "3", &format!("http://{to}:8080/index.html")])
            .output()
            .unwrap()
    };
    let o = host_get(&red2);
    assert!(o.status.success(), "host to task: {}", errtext(&o));
    // None of it went through VXLAN.
    assert_eq!(vx_tx(), before, "packets left through gantry.vx");
    // Between nodes 1 and 2 it took the fast path: straight from node-1's
    // task veth out of its underlay device, and from node-2's underlay
    // device straight into the task.
    assert_eq!(ingress_programs(h1, "eth0"), ["to_task"]);
    let n1 = fast_path_on(h1).expect("node-1's fast path");
    assert!(n1.remote > 0.0, "node-1 sent nothing on the fast path");
    let n2 = fast_path_on(h2).expect("node-2's fast path");
    assert!(
        n2.to_task > 0.0,
        "node-2 delivered nothing on the fast path"
    );
    assert_eq!(fast_path_on(&cl.lan.hosts[3]), None, "node-3 has it off");
    // Node-3, on the other subnet, is reached over VXLAN, from the task
    // and from the host.
    let red3 = addr("red_web", "node-3");
    let block3 = format!("{}.0/24", red3.rsplit_once('.').unwrap().0);
    let r = ip_on(h1, "ip", &["route", "show", &block3]);
    assert!(
        r.contains("dev gantry.vx") && !r.contains("proto 103"),
        "{r}"
    );
    // The task's packets are encapsulated by node-1's fast path and taken
    // by node-3's VXLAN device (node-3 has no fast path); node-3's answers,
    // encapsulated by its VXLAN device, are decapsulated by node-1's fast
    // path: the two encodings are one. The host's packets go through the
    // VXLAN device.
    let before1 = fast_path_on(h1).unwrap();
    assert!(get(&red3).contains("200 OK"), "{}", get(&red3));
    let after1 = fast_path_on(h1).unwrap();
    assert!(
        after1.vxlan_out > before1.vxlan_out,
        "node-3 was not reached over VXLAN"
    );
    assert!(
        after1.vxlan_in > before1.vxlan_in,
        "node-3's answers were not decapsulated"
    );
    let o = host_get(&red3);
    assert!(o.status.success(), "host to node-3's task: {}", errtext(&o));
    assert!(vx_tx() > before, "the host did not reach node-3 over VXLAN");
    // Stacks stay isolated: red does not reach blue on the other node.
    let out = get(&addr("blue_web", "node-2"));
    assert!(!out.contains("200 OK"), "red reached blue: {out:?}");

    // Cleanup takes the direct routes too; the fast path's programs went
    // with the agent's process (their links were its own).
    cl.kill_agent(0);
    let o = cl.on_agent(0, &["agent", "--cleanup"]);
    assert!(o.status.success(), "{}", errtext(&o));
    assert_eq!(
        ingress_programs(&cl.lan.hosts[1], "eth0"),
        Vec::<String>::new()
    );
    let routes = ip_on(&cl.lan.hosts[1], "ip", &["route"]);
    assert!(
        !routes.contains("proto 103") && !routes.contains(&block2),
        "{routes}"
    );
}
