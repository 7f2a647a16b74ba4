//! HA managers on simulated hosts: three managers in a Raft group and
//! three agents. The leader's process is killed (a new leader takes
//! writes, agents and the CLI follow with no user action, no task is
//! rescheduled because the leader changed), the killed manager comes
//! back and catches up, the leader is demoted and promoted, a quorum is
//! lost (writes refused naming the managers, reads and containers go on)
//! and recovered with `--force-new-cluster`.

mod common;

use std::collections::BTreeMap;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use common::cluster::{web, Cluster, GRACE};
use common::*;
use serde_json::Value;

/// A manager besides the fixture's (host 0): its process, data and
/// config dirs. Killed when dropped.
struct Extra {
    host: usize,
    data: tempfile::TempDir,
    cfg: tempfile::TempDir,
    child: Option<Child>,
}

impl Drop for Extra {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn start_extra(cl: &Cluster, e: &mut Extra, extra: &[&str]) {
    let host = &cl.lan.hosts[e.host];
    let child = host
        .command(env!("CARGO_BIN_EXE_gantry"))
        .arg("--data-dir")
        .arg(e.data.path())
        .args([
            "server",
            "--listen",
            &format!("0.0.0.0:{}", cl.port),
            "--advertise",
            &host.addr,
            "--heartbeat-grace",
            GRACE,
            "--hostname",
            &format!("node-{}", e.host),
            "--manager-metrics",
            "127.0.0.1:0",
        ])
        .args(extra)
        .env("GANTRY_CONFIG_DIR", e.cfg.path())
        .env("GANTRY_LOG", "info,gantry_server=debug,openraft=warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(cl.log(&format!("manager{}.log", e.host)))
        .spawn()
        .unwrap();
    e.child = Some(child);
}

fn kill(e: &mut Extra) {
    if let Some(mut c) = e.child.take() {
        let _ = c.kill();
        let _ = c.wait();
    }
}

/// The managers by host name, with their status.
fn managers(cl: &Cluster) -> Result<BTreeMap<String, String>, String> {
    let o = cl.admin(&["manager", "ls", "--format", "json"]);
    if !o.status.success() {
        return Err(errtext(&o));
    }
    let v: Value = serde_json::from_str(&text(&o)).map_err(|e| e.to_string())?;
    Ok(v.as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["hostname"].as_str().unwrap().to_owned(),
                m["status"].as_str().unwrap().to_owned(),
            )
        })
        .collect())
}

fn wait_managers(cl: &Cluster, want: &[(&str, &str)], within: Duration) {
    let want: BTreeMap<String, String> = want
        .iter()
        .map(|(h, s)| (h.to_string(), s.to_string()))
        .collect();
    wait_for("the managers", within, || match managers(cl) {
        Ok(m) if m == want => Ok(()),
        Ok(m) => Err(format!("{m:?}")),
        Err(e) => Err(e),
    });
}

fn leader(cl: &Cluster) -> String {
    wait_for("a leader", Duration::from_secs(20), || {
        let m = managers(cl)?;
        m.iter()
            .find(|(_, s)| s.as_str() == "Leader")
            .map(|(h, _)| h.clone())
            .ok_or(format!("{m:?}"))
    })
}

fn task_ids(cl: &Cluster, service: &str) -> Vec<String> {
    let mut ids: Vec<String> = cl
        .tasks(service)
        .into_iter()
        .filter(|t| t["desired"] == "running")
        .map(|t| t["id"].as_str().unwrap().to_owned())
        .collect();
    ids.sort();
    ids
}

fn all_up(cl: &Cluster) -> Result<(), String> {
    let o = cl.admin(&["node", "ls", "--format", "json"]);
    if !o.status.success() {
        return Err(errtext(&o));
    }
    let v: Value = serde_json::from_str(&text(&o)).map_err(|e| e.to_string())?;
    let down: Vec<&str> = v
        .as_array()
        .unwrap()
        .iter()
        .filter(|n| n["up"] != true)
        .map(|n| n["hostname"].as_str().unwrap())
        .collect();
    if down.is_empty() {
        Ok(())
    } else {
        Err(format!("down: {down:?}"))
    }
}

/// A cluster of three hosts whose fixture manager is `manager-0`, with an
/// agent on each host.
fn three_hosts(test: &str) -> Option<Cluster> {
    let mut cl = Cluster::new_with(test, 3, |_| {
        (vec!["--hostname".into(), "manager-0".into()], None)
    })?;
    for i in 0..3 {
        cl.start_agent(i);
    }
    Some(cl)
}

/// Managers on hosts 1 and 2, not started.
fn two_extras() -> Vec<Extra> {
    [1, 2]
        .into_iter()
        .map(|host| Extra {
            host,
            data: tempfile::tempdir().unwrap(),
            cfg: tempfile::tempdir().unwrap(),
            child: None,
        })
        .collect()
}

/// Managers on hosts 1 and 2 joined with the manager token; returns once
/// the three answer, the fixture's leading.
fn join_two(cl: &Cluster) -> Vec<Extra> {
    let token = cl
        .admin_ok(&["join-token", "manager", "-q"])
        .trim()
        .to_owned();
    let mut extras = two_extras();
    let join = cl.manager_addr();
    for e in &mut extras {
        start_extra(cl, e, &["--join", &join, "--token", &token]);
    }
    wait_three(cl);
    extras
}

/// Waits for the three managers, the fixture's leading.
fn wait_three(cl: &Cluster) {
    wait_managers(
        cl,
        &[
            ("manager-0", "Leader"),
            ("node-1", "Reachable"),
            ("node-2", "Reachable"),
        ],
        Duration::from_secs(30),
    );
}

#[test]
fn three_managers_survive_their_leader_and_a_lost_quorum() {
    let Some(mut cl) = three_hosts("three_managers") else {
        return;
    };
    let token = cl
        .admin_ok(&["join-token", "manager", "-q"])
        .trim()
        .to_owned();
    assert!(token.starts_with("GTKN-1-"), "{token}");
    // A worker's token does not make a manager, nor the reverse.
    let worker = cl.token();
    assert_ne!(worker, token);
    let mut extras = two_extras();
    let join = cl.manager_addr();
    {
        // The worker token is refused, and the manager exits with why.
        let e = &mut extras[0];
        start_extra(&cl, e, &["--join", &join, "--token", &worker]);
        let status = e.child.as_mut().unwrap().wait().unwrap();
        e.child = None;
        assert!(!status.success());
        let log = std::fs::read_to_string(cl.logs.path().join("manager1.log")).unwrap();
        assert!(log.contains("invalid manager join token"), "{log}");
    }
    for e in &mut extras {
        start_extra(&cl, e, &["--join", &join, "--token", &token]);
    }
    wait_three(&cl);
    // The node on a manager's host shows its manager's status.
    let nodes = cl.json(&["node", "ls", "--format", "json"]);
    let status: BTreeMap<&str, &str> = nodes
        .as_array()
        .unwrap()
        .iter()
        .map(|n| {
            (
                n["hostname"].as_str().unwrap(),
                n["manager_status"].as_str().unwrap_or(""),
            )
        })
        .collect();
    assert_eq!(status["node-1"], "Reachable", "{nodes}");
    assert_eq!(status["node-3"], "", "{nodes}");

    let o = cl.deploy(
        "app",
        &web(
            3,
            "      update_config:\n        parallelism: 1\n        delay: 2s\n",
        )
        .replace("IMAGE", &cl.image),
    );
    assert!(o.status.success(), "{}", errtext(&o));
    cl.wait_total("app_web", 3, Duration::from_secs(60));
    let before = task_ids(&cl, "app_web");
    // Every manager holds the same state: a read from each (their own
    // admin credentials) sees the service.
    for e in &extras {
        let o =
            cl.g.cmd_on(&cl.lan.hosts[e.host])
                .env("GANTRY_CONFIG_DIR", e.cfg.path())
                .args(["service", "ls", "--format", "json"])
                .output()
                .unwrap();
        assert!(o.status.success(), "{}", errtext(&o));
        assert!(text(&o).contains("app_web"), "{}", text(&o));
    }

    // The leader's process dies: the others elect one, and the CLI (whose
    // credential named only the first manager when it was made) and the
    // agents go on with no user action.
    let killed = Instant::now();
    cl.kill_manager();
    wait_for(
        "a write after the leader's death",
        Duration::from_secs(30),
        || {
            let o = cl.admin(&["node", "update", "--label-add", "after=kill", "node-3"]);
            if o.status.success() {
                Ok(())
            } else {
                Err(errtext(&o))
            }
        },
    );
    eprintln!(
        "HA: a write succeeded {:.2} s after the leader was killed",
        killed.elapsed().as_secs_f64()
    );
    let new = leader(&cl);
    assert_ne!(new, "manager-0");
    wait_for(
        "the dead manager to be unreachable",
        Duration::from_secs(10),
        || {
            let m = managers(&cl)?;
            if m["manager-0"] == "Unreachable" {
                Ok(())
            } else {
                Err(format!("{m:?}"))
            }
        },
    );
    // Nodes keep their heartbeats through the other managers; nothing is
    // rescheduled because the leader changed.
    std::thread::sleep(Duration::from_secs(5));
    wait_for("every node up", Duration::from_secs(20), || all_up(&cl));
    assert_eq!(task_ids(&cl, "app_web"), before);

    // The killed manager comes back with its disk and catches up.
    cl.start_manager();
    wait_managers(
        &cl,
        &[
            ("manager-0", "Reachable"),
            (&new, "Leader"),
            (
                if new == "node-1" { "node-2" } else { "node-1" },
                "Reachable",
            ),
        ],
        Duration::from_secs(30),
    );

    // Demoting the leader: the others elect one; promoted, it votes again.
    cl.admin_ok(&["node", "demote", &new]);
    let next = leader(&cl);
    assert_ne!(next, new);
    wait_for(
        "the demoted manager to be a learner",
        Duration::from_secs(20),
        || {
            let m = managers(&cl)?;
            if m.get(&new).map(String::as_str) == Some("Learner") {
                Ok(())
            } else {
                Err(format!("{m:?}"))
            }
        },
    );
    cl.admin_ok(&["node", "promote", &new]);
    wait_for(
        "the promoted manager to vote",
        Duration::from_secs(20),
        || {
            let m = managers(&cl)?;
            if m.get(&new)
                .is_some_and(|s| s == "Reachable" || s == "Leader")
            {
                Ok(())
            } else {
                Err(format!("{m:?}"))
            }
        },
    );

    // All three restart at once: they elect a leader from their disks,
    // and nothing is lost.
    cl.kill_manager();
    for e in extras.iter_mut() {
        kill(e);
    }
    for e in extras.iter_mut() {
        start_extra(&cl, e, &[]);
    }
    cl.start_manager();
    leader(&cl);
    wait_for(
        "every node up after the restart",
        Duration::from_secs(30),
        || all_up(&cl),
    );
    let v = cl.json(&["node", "inspect", "node-3"]);
    assert_eq!(v[0]["labels"]["after"], "kill", "{v}");
    assert_eq!(task_ids(&cl, "app_web"), before);

    // A manager whose disk is lost is removed, and comes back as a new
    // member with the same address.
    let old: Value = cl.json(&["manager", "ls", "--format", "json"]);
    let old_id = old
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["hostname"] == "node-2")
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    {
        let e = &mut extras[1];
        kill(e);
        e.data = tempfile::tempdir().unwrap();
    }
    let o = cl.admin(&["manager", "rm", &old_id]);
    assert!(o.status.success(), "{}", errtext(&o));
    let e = &mut extras[1];
    start_extra(&cl, e, &["--join", &join, "--token", &token]);
    wait_for("the replaced manager", Duration::from_secs(40), || {
        let v: Value = serde_json::from_str(&cl.admin_ok(&["manager", "ls", "--format", "json"]))
            .map_err(|e| e.to_string())?;
        let ms = v.as_array().unwrap();
        let fresh = ms.iter().find(|m| m["hostname"] == "node-2");
        match fresh {
            Some(m)
                if ms.len() == 3 && m["id"] != old_id.as_str() && m["status"] == "Reachable" =>
            {
                Ok(())
            }
            _ => Err(format!("{v}")),
        }
    });
    leader(&cl);

    // A rolling update under way goes on when the leader changes.
    cl.admin_ok(&[
        "service",
        "update",
        "--detach",
        "--env-add",
        "ROLL=1",
        "app_web",
    ]);
    let leader_now = leader(&cl);
    if leader_now == "manager-0" {
        cl.kill_manager();
    } else {
        let e = extras
            .iter_mut()
            .find(|e| format!("node-{}", e.host) == leader_now)
            .unwrap();
        kill(e);
    }
    wait_for(
        "the update to finish under the new leader",
        Duration::from_secs(90),
        || {
            let v = cl.json(&["service", "inspect", "app_web"]);
            let state = v[0]["update"]["state"].as_str().unwrap_or("").to_owned();
            let env = &v[0]["spec"]["environment"]["ROLL"];
            if state == "completed" && env == "1" {
                Ok(())
            } else {
                Err(format!("{state} {env}"))
            }
        },
    );

    // Two of three managers gone: no quorum. Writes are refused, naming
    // the managers; reads still answer; containers keep running.
    let survivor = extras
        .iter_mut()
        .find(|e| e.child.is_some())
        .map(|e| e.host);
    let (alive_host, alive_cfg) = match survivor {
        Some(h) => {
            cl.kill_manager();
            for e in extras.iter_mut().filter(|e| e.host != h) {
                kill(e);
            }
            let e = extras.iter().find(|e| e.host == h).unwrap();
            (h, e.cfg.path().to_owned())
        }
        None => unreachable!("one of the two others is alive"),
    };
    let on_survivor = |args: &[&str]| {
        cl.g.cmd_on(&cl.lan.hosts[alive_host])
            .env("GANTRY_CONFIG_DIR", &alive_cfg)
            .args(args)
            .output()
            .unwrap()
    };
    let containers_before: Vec<String> = (0..3).flat_map(|i| cl.containers(i)).collect();
    let refused = wait_for(
        "writes refused without quorum",
        Duration::from_secs(30),
        || {
            let o = on_survivor(&["node", "update", "--label-add", "q=lost", "node-3"]);
            if o.status.success() {
                Err("a write was acknowledged without a quorum".into())
            } else {
                let e = errtext(&o);
                if e.contains("no manager leads") {
                    Ok(e)
                } else {
                    Err(e)
                }
            }
        },
    );
    assert!(refused.contains(&cl.lan.hosts[0].addr), "{refused}");
    let o = on_survivor(&["service", "ls", "--format", "json"]);
    assert!(o.status.success(), "{}", errtext(&o));
    assert!(text(&o).contains("app_web"));
    // Running containers go on (one an agent was starting may join them).
    let containers_after: Vec<String> = (0..3).flat_map(|i| cl.containers(i)).collect();
    for c in &containers_before {
        assert!(
            containers_after.contains(c),
            "{c} stopped: {containers_after:?}"
        );
    }

    // --force-new-cluster: the survivor alone, with the state it holds.
    let e = extras.iter_mut().find(|e| e.host == alive_host).unwrap();
    kill(e);
    start_extra(&cl, e, &["--force-new-cluster"]);
    wait_for(
        "writes after --force-new-cluster",
        Duration::from_secs(30),
        || {
            let o = on_survivor(&["node", "update", "--label-add", "q=back", "node-3"]);
            if o.status.success() {
                Ok(())
            } else {
                Err(errtext(&o))
            }
        },
    );
    let o = on_survivor(&["manager", "ls", "--format", "json"]);
    let v: Value = serde_json::from_str(&text(&o)).unwrap();
    assert_eq!(v.as_array().unwrap().len(), 1, "{v}");
    // Acknowledged writes were all kept.
    let o = on_survivor(&["node", "inspect", "node-3"]);
    let t = text(&o);
    assert!(
        t.contains("\"after\": \"kill\"") || t.contains("\"after\":\"kill\""),
        "{t}"
    );
    assert!(!t.contains("lost"), "{t}");
    // Events are part of the replicated state: the survivor, restarted
    // as a new group, still has those of before its restart, the first
    // leader's included, with the time the leader gave them.
    let o = on_survivor(&["events", "--since", "1h", "--no-follow", "--format", "json"]);
    assert!(o.status.success(), "{}", errtext(&o));
    let evs: Vec<Value> = text(&o)
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(
        evs.iter()
            .any(|e| e["type"] == "service" && e["action"] == "create" && e["id"] == "app_web"),
        "{evs:?}"
    );
    assert!(
        evs.iter()
            .any(|e| e["type"] == "service" && e["action"] == "update_completed"),
        "{evs:?}"
    );
    // The agents follow the survivor: every node comes back up.
    wait_for(
        "every node up on the new cluster",
        Duration::from_secs(30),
        || {
            let o = on_survivor(&["node", "ls", "--format", "json"]);
            let v: Value = serde_json::from_str(&text(&o)).map_err(|e| e.to_string())?;
            let down = v
                .as_array()
                .unwrap()
                .iter()
                .filter(|n| n["up"] != true)
                .count();
            if down == 0 {
                Ok(())
            } else {
                Err(format!("{down} down"))
            }
        },
    );
}

/// Three managers alone on simulated hosts, for the history checker.
struct Group {
    g: G,
    lan: Lan,
    port: u16,
    dirs: Vec<(tempfile::TempDir, tempfile::TempDir)>,
    logs: tempfile::TempDir,
    children: Vec<Option<Child>>,
}

impl Drop for Group {
    fn drop(&mut self) {
        for c in self.children.iter_mut().flatten() {
            let _ = c.kill();
            let _ = c.wait();
        }
        if std::thread::panicking() {
            for i in 0..self.children.len() {
                let t = std::fs::read_to_string(self.logs.path().join(format!("m{i}.log")))
                    .unwrap_or_default();
                let lines: Vec<&str> = t.lines().collect();
                eprintln!(
                    "--- m{i}.log:\n{}",
                    lines[lines.len().saturating_sub(30)..].join("\n")
                );
            }
        }
    }
}

impl Group {
    fn start(&mut self, i: usize, extra: &[&str]) {
        let host = &self.lan.hosts[i];
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.logs.path().join(format!("m{i}.log")))
            .unwrap();
        let child = host
            .command(env!("CARGO_BIN_EXE_gantry"))
            .arg("--data-dir")
            .arg(self.dirs[i].0.path())
            .args([
                "server",
                "--listen",
                &format!("0.0.0.0:{}", self.port),
                "--advertise",
                &host.addr,
                "--hostname",
                &format!("m{i}"),
                "--no-acme",
                "--manager-metrics",
                "127.0.0.1:0",
            ])
            .args(extra)
            .env("GANTRY_CONFIG_DIR", self.dirs[i].1.path())
            .env("GANTRY_LOG", "info,openraft=warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.children[i] = Some(child);
    }

    fn kill(&mut self, i: usize) {
        if let Some(mut c) = self.children[i].take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// The CLI on host `i`, with the first manager's credential pointed
    /// at the manager on its own host (and the others after it).
    fn cli(&self, i: usize, cfg: &std::path::Path, args: &[&str]) -> std::process::Output {
        self.g
            .cmd_on(&self.lan.hosts[i])
            .env("GANTRY_CONFIG_DIR", cfg)
            .args(args)
            .output()
            .unwrap()
    }
}

/// Clients on the three hosts write and read one value (an environment
/// variable of a service) through the managers of their own hosts while
/// the leader's process is killed and restarted, and the leader's host
/// is cut off and comes back. The recorded history must be linearizable
/// (every read returns the last value written, in one order that agrees
/// with real time), and every acknowledged write must be there at the
/// end. Answers marked stale (no leader) are left out: they are allowed
/// to be.
#[test]
fn the_history_stays_linearizable_while_the_leader_dies_and_is_cut_off() {
    use gantry_testkit::linear::{check_register, Event, Op};
    use std::sync::{Arc, Mutex};
    let Some(g) = G::new("the_history_stays_linearizable") else {
        return;
    };
    let mut grp = Group {
        g,
        lan: Lan::new(3),
        port: free_port(),
        dirs: (0..3)
            .map(|_| (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()))
            .collect(),
        logs: tempfile::tempdir().unwrap(),
        children: vec![None, None, None],
    };
    grp.start(0, &[]);
    let admin = grp.dirs[0].1.path().join("admin.json");
    wait_for("the first manager", Duration::from_secs(15), || {
        if admin.exists() {
            Ok(())
        } else {
            Err("no credential yet".into())
        }
    });
    let cfg0 = grp.dirs[0].1.path().to_owned();
    let token = text(&grp.cli(0, &cfg0, &["join-token", "manager", "-q"]))
        .trim()
        .to_owned();
    let first = format!("{}:{}", grp.lan.hosts[0].addr, grp.port);
    for i in 1..3 {
        grp.start(i, &["--join", &first, "--token", &token]);
    }
    let addrs: Vec<String> = (0..3)
        .map(|i| format!("{}:{}", grp.lan.hosts[i].addr, grp.port))
        .collect();
    // Each client's credential: its own host's manager first.
    let clients: Vec<tempfile::TempDir> = (0..3)
        .map(|i| {
            let d = tempfile::tempdir().unwrap();
            let mut c: Value = serde_json::from_slice(&std::fs::read(&admin).unwrap()).unwrap();
            c["manager"] = addrs[i].clone().into();
            c["managers"] = addrs.clone().into();
            std::fs::write(d.path().join("admin.json"), c.to_string()).unwrap();
            d
        })
        .collect();
    let status = |grp: &Group| -> Result<BTreeMap<String, String>, String> {
        let o = grp.cli(0, clients[0].path(), &["manager", "ls", "--format", "json"]);
        let v: Value = serde_json::from_str(&text(&o)).map_err(|_| errtext(&o))?;
        Ok(v.as_array()
            .unwrap()
            .iter()
            .map(|m| {
                (
                    m["hostname"].as_str().unwrap().to_owned(),
                    m["status"].as_str().unwrap().to_owned(),
                )
            })
            .collect())
    };
    let all_up = |grp: &Group| {
        wait_for("three managers", Duration::from_secs(40), || {
            let m = status(grp)?;
            let ok = m.len() == 3
                && m.values().filter(|s| *s == "Leader").count() == 1
                && m.values().all(|s| s == "Leader" || s == "Reachable");
            if ok {
                Ok(())
            } else {
                Err(format!("{m:?}"))
            }
        })
    };
    all_up(&grp);
    let stack = grp.logs.path().join("reg.yml");
    std::fs::write(
        &stack,
        "services:\n  reg:\n    image: registry.invalid/reg:1\n    deploy:\n      replicas: 0\n",
    )
    .unwrap();
    let o = grp.cli(
        0,
        clients[0].path(),
        &["deploy", "-d", "-f", stack.to_str().unwrap(), "reg"],
    );
    assert!(o.status.success(), "{}", errtext(&o));

    let start = Instant::now();
    let history: Arc<Mutex<Vec<Event>>> = Arc::default();
    let acked: Arc<Mutex<Vec<String>>> = Arc::default();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let grp = Arc::new(Mutex::new(grp));
    let us = move || start.elapsed().as_micros() as u64;
    let mut threads = Vec::new();
    for (c, client) in clients.iter().enumerate() {
        let (history, acked, stop, grp) =
            (history.clone(), acked.clone(), stop.clone(), grp.clone());
        let cfg = client.path().to_owned();
        threads.push(std::thread::spawn(move || {
            let (g, host) = {
                let grp = grp.lock().unwrap();
                (
                    G {
                        data: tempfile::tempdir().unwrap(),
                        home: tempfile::tempdir().unwrap(),
                    },
                    grp.lan.hosts[c].name.clone(),
                )
            };
            let host = Host {
                name: host,
                addr: String::new(),
            };
            let mut n = 0;
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                n += 1;
                let write = n % 3 != 0;
                let value = format!("c{c}n{n}");
                let call = us();
                let o = if write {
                    g.cmd_on(&host)
                        .env("GANTRY_CONFIG_DIR", &cfg)
                        .args(["service", "update", "-d", "--env-add"])
                        .arg(format!("X={value}"))
                        .arg("--env-add")
                        .arg(format!("W_{value}=1"))
                        .arg("reg_reg")
                        .output()
                        .unwrap()
                } else {
                    g.cmd_on(&host)
                        .env("GANTRY_CONFIG_DIR", &cfg)
                        .args(["service", "inspect", "reg_reg"])
                        .output()
                        .unwrap()
                };
                let ret = us();
                let err = errtext(&o);
                let ev = if write {
                    if o.status.success() {
                        acked.lock().unwrap().push(value.clone());
                        Some(Event {
                            client: c,
                            call,
                            ret: Some(ret),
                            op: Op::Write(value),
                        })
                    } else if err.contains("no manager leads") {
                        // Refused before it was proposed: it did not happen.
                        None
                    } else {
                        Some(Event {
                            client: c,
                            call,
                            ret: None,
                            op: Op::Write(value),
                        })
                    }
                } else if o.status.success() && !err.contains("may be stale") {
                    let v: Value = serde_json::from_str(&text(&o)).unwrap();
                    let x = v[0]["spec"]["environment"]["X"].as_str().map(str::to_owned);
                    Some(Event {
                        client: c,
                        call,
                        ret: Some(ret),
                        op: Op::Read(x),
                    })
                } else {
                    None
                };
                if let Some(ev) = ev {
                    history.lock().unwrap().push(ev);
                }
            }
        }));
    }
    let leader_of = |grp: &Group| -> usize {
        wait_for("a leader", Duration::from_secs(30), || {
            let m = status(grp)?;
            m.iter()
                .find(|(_, s)| s.as_str() == "Leader")
                .map(|(h, _)| h.trim_start_matches('m').parse::<usize>().unwrap())
                .ok_or(format!("{m:?}"))
        })
    };
    // The nemesis: kill the leader's process, then cut the new leader's
    // host off, each for a few seconds.
    std::thread::sleep(Duration::from_secs(3));
    let l = leader_of(&grp.lock().unwrap());
    grp.lock().unwrap().kill(l);
    std::thread::sleep(Duration::from_secs(4));
    grp.lock().unwrap().start(l, &[]);
    all_up(&grp.lock().unwrap());
    let l = leader_of(&grp.lock().unwrap());
    let ns = grp.lock().unwrap().lan.hosts[l].name.clone();
    let ip = |args: &[&str]| {
        let o = std::process::Command::new("ip")
            .args(["-n", &ns])
            .args(args)
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", errtext(&o));
    };
    ip(&["link", "set", "eth0", "down"]);
    std::thread::sleep(Duration::from_secs(5));
    ip(&["link", "set", "eth0", "up"]);
    all_up(&grp.lock().unwrap());
    std::thread::sleep(Duration::from_secs(2));
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    for t in threads {
        t.join().unwrap();
    }
    let grp = grp.lock().unwrap();
    // Every acknowledged write is there.
    let o = grp.cli(0, clients[0].path(), &["service", "inspect", "reg_reg"]);
    let v: Value = serde_json::from_str(&text(&o)).unwrap();
    let env = &v[0]["spec"]["environment"];
    let acked = acked.lock().unwrap().clone();
    for a in &acked {
        assert_eq!(
            env[format!("W_{a}")],
            "1",
            "acknowledged write {a} lost: {env}"
        );
    }
    let mut history = history.lock().unwrap().clone();
    // The final read closes the history.
    history.push(Event {
        client: 9,
        call: us(),
        ret: Some(us() + 1),
        op: Op::Read(env["X"].as_str().map(str::to_owned)),
    });
    let writes = history
        .iter()
        .filter(|e| matches!(e.op, Op::Write(_)))
        .count();
    let reads = history.len() - writes;
    eprintln!(
        "HISTORY: {} operations ({writes} writes, {} acknowledged; {reads} reads) checked",
        history.len(),
        acked.len()
    );
    assert!(acked.len() >= 10 && reads >= 10, "too little happened");
    check_register(&history).unwrap();
}

/// With certificates valid for 20 s, the node and the manager renew theirs
/// (each a third before it expires) and go on talking: the node stays up
/// long after its first certificate expired, with a new one in its
/// identity, and the manager presents a new one too.
#[test]
fn node_and_manager_certificates_renew_before_they_expire() {
    let Some(mut cl) = Cluster::new_with("certificates_renew", 1, |_| {
        (vec!["--cert-expiry".into(), "20s".into()], None)
    }) else {
        return;
    };
    cl.start_agent(0);
    let identity = cl.agents[0].data.path().join("agent/identity.json");
    let cert_of = |p: &std::path::Path| -> String {
        let v: Value = serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap();
        v["cert_pem"].as_str().unwrap().to_owned()
    };
    let first = cert_of(&identity);
    let manager_cred = cl.g.data.path().join("manager/credential.json");
    let manager_first = cert_of(&manager_cred);
    // Past the first certificates' expiry, with room for two renewals.
    std::thread::sleep(Duration::from_secs(30));
    let nodes = cl.json(&["node", "ls", "--format", "json"]);
    assert_eq!(nodes[0]["up"], true, "{nodes}");
    let last_seen = nodes[0]["last_seen_ms"].as_u64().unwrap_or(u64::MAX);
    assert!(last_seen < 3000, "the node's heartbeats stopped: {nodes}");
    let now = cert_of(&identity);
    assert_ne!(now, first, "the node's certificate was not renewed");
    assert_ne!(
        cert_of(&manager_cred),
        manager_first,
        "the manager's certificate was not renewed"
    );
    let log = std::fs::read_to_string(cl.logs.path().join("agent0.log")).unwrap();
    assert!(log.contains("the node certificate was renewed"), "{log}");
}

#[test]
fn the_cluster_ca_rotates_while_everything_keeps_running() {
    let Some(mut cl) = three_hosts("ca_rotate") else {
        return;
    };
    let worker_token = cl.token();
    let mut extras = join_two(&cl);
    let o = cl.deploy("app", &web(3, "").replace("IMAGE", &cl.image));
    assert!(o.status.success(), "{}", errtext(&o));
    cl.wait_total("app_web", 3, Duration::from_secs(60));
    let before: Vec<(String, String)> = cl
        .tasks("app_web")
        .into_iter()
        .filter(|t| t["desired"] == "running")
        .map(|t| {
            (
                t["id"].as_str().unwrap().to_owned(),
                t["node"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    let old = cl.json(&["ca", "inspect", "--format", "json"]);
    let old_fp = old["fingerprint"].as_str().unwrap().to_owned();
    assert_eq!(old["trusted"], serde_json::json!([old_fp]), "{old}");
    // A copy of the CLI's credential as it is before: refused once the
    // rotation is over.
    let stale = tempfile::tempdir().unwrap();
    std::fs::copy(
        cl.cfg.path().join("admin.json"),
        stale.path().join("admin.json"),
    )
    .unwrap();
    let stale_cli = |cl: &Cluster| {
        cl.g.cmd_on(&cl.lan.hosts[0])
            .env("GANTRY_CONFIG_DIR", stale.path())
            .args(["service", "ls"])
            .output()
            .unwrap()
    };
    let o = stale_cli(&cl);
    assert!(o.status.success(), "{}", errtext(&o));

    // A node that is down when the rotation starts holds it open until it
    // comes back.
    cl.kill_agent(2);
    let o = cl.admin(&["ca", "rotate", "--detach", "-q"]);
    assert!(o.status.success(), "{}", errtext(&o));
    let new_fp = text(&o).trim().to_owned();
    assert_ne!(new_fp, old_fp);
    let o = cl.admin(&["ca", "rotate", "--detach"]);
    assert!(!o.status.success(), "a second rotation started");
    assert!(errtext(&o).contains("under way"), "{}", errtext(&o));
    wait_for(
        "everyone but the stopped node to renew",
        Duration::from_secs(30),
        || {
            let s = cl.json(&["ca", "inspect", "--format", "json"]);
            let r = &s["rotation"];
            match r["waiting"].as_array() {
                Some(w) if w.len() == 1 && w[0] == "node node-3 (down)" => Ok(()),
                _ => Err(format!("{s}")),
            }
        },
    );
    let s = cl.json(&["ca", "inspect", "--format", "json"]);
    assert_eq!(s["fingerprint"], new_fp.as_str(), "{s}");
    assert_eq!(s["trusted"], serde_json::json!([new_fp, old_fp]), "{s}");
    assert_eq!(s["rotation"]["total"], 6, "{s}");
    // The join tokens changed with the CA.
    assert_ne!(cl.token(), worker_token);
    cl.start_agent(2);
    wait_for("the rotation to end", Duration::from_secs(30), || {
        let s = cl.json(&["ca", "inspect", "--format", "json"]);
        if s["rotation"].is_null() && s["trusted"] == serde_json::json!([new_fp]) {
            Ok(())
        } else {
            Err(format!("{s}"))
        }
    });
    // Every credential trusts the new root alone and holds a certificate
    // of the new CA: the CLI's, the managers', the nodes'.
    wait_for(
        "every credential to follow",
        Duration::from_secs(20),
        || {
            let _ = cl.admin(&["node", "ls"]);
            let mut files = vec![
                cl.cfg.path().join("admin.json"),
                cl.g.data.path().join("manager/credential.json"),
            ];
            for e in &extras {
                files.push(e.data.path().join("manager/credential.json"));
                files.push(e.cfg.path().join("admin.json"));
            }
            for a in &cl.agents {
                files.push(a.data.path().join("agent/identity.json"));
            }
            let mut wrong = Vec::new();
            for f in &files {
                let v: Value = serde_json::from_slice(&std::fs::read(f).unwrap()).unwrap();
                let roots = v["ca_pem"].as_str().unwrap();
                let cert = v["cert_pem"].as_str().unwrap();
                let one_root = gantry_pki::split_pem(roots).len() == 1
                    && gantry_pki::fingerprint(roots).ok().as_deref() == Some(new_fp.as_str());
                if !one_root || !gantry_pki::issued_by(cert, roots) {
                    wrong.push(f.display().to_string());
                }
            }
            if wrong.is_empty() {
                Ok(())
            } else {
                Err(format!("not on the new CA alone: {wrong:?}"))
            }
        },
    );
    // The old credential is refused; the nodes stayed up, and no task
    // restarted.
    let o = stale_cli(&cl);
    assert!(!o.status.success(), "the old CA's credential still works");
    assert!(
        errtext(&o).contains("refused this credential"),
        "{}",
        errtext(&o)
    );
    wait_for("every node up", Duration::from_secs(20), || all_up(&cl));
    // The tasks of the nodes that stayed up did not restart (the one
    // stopped for the test was down past its grace: its task moved).
    let stopped = &cl.json_map(&["node", "ls", "--format", "json"], "hostname", "id")["node-3"];
    let after = task_ids(&cl, "app_web");
    for (id, node) in &before {
        assert!(
            node == stopped || after.contains(id),
            "{before:?} -> {after:?}"
        );
    }
    for e in &extras {
        let o =
            cl.g.cmd_on(&cl.lan.hosts[e.host])
                .env("GANTRY_CONFIG_DIR", e.cfg.path())
                .args(["service", "ls", "--format", "json"])
                .output()
                .unwrap();
        assert!(o.status.success(), "{}", errtext(&o));
    }
    // A manager restarted after the rotation comes back with what it kept.
    kill(&mut extras[0]);
    start_extra(&cl, &mut extras[0], &[]);
    wait_three(&cl);
    let s = cl.json(&["ca", "inspect", "--format", "json"]);
    assert_eq!(s["fingerprint"], new_fp.as_str(), "{s}");
}

/// Waits until the three managers answer, one of them leading.
fn wait_any_leader(cl: &Cluster) {
    wait_for(
        "three managers, one leading",
        Duration::from_secs(60),
        || {
            let m = managers(cl)?;
            let leaders = m.values().filter(|s| *s == "Leader").count();
            let reachable = m.values().filter(|s| *s == "Reachable").count();
            if m.len() == 3 && leaders == 1 && reachable == 2 {
                Ok(())
            } else {
                Err(format!("{m:?}"))
            }
        },
    );
}

/// Part 2's failover (a host dies: its replicas run elsewhere) with and
/// without the managers' leader dying at the same moment. Prints each
/// time (`FAILOVER-HA`); `HA_FAILOVER_ROUNDS` (default 1) rounds of each
/// for BENCHMARKS.md.
#[test]
fn a_worker_fails_over_while_the_managers_change_leader() {
    let rounds: usize = std::env::var("HA_FAILOVER_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1);
    let Some(mut cl) = three_hosts("worker_failover_ha") else {
        return;
    };
    let mut extras = join_two(&cl);
    let o = cl.deploy("app", &web(6, "").replace("IMAGE", &cl.image));
    assert!(o.status.success(), "{}", errtext(&o));
    cl.wait_total("app_web", 6, Duration::from_secs(60));
    let mut times: Vec<(bool, f64)> = Vec::new();
    for round in 0..rounds {
        for with_leader in [false, true] {
            // The host with the most replicas dies.
            let running = cl.running("app_web");
            let (victim_host, lost) = running
                .iter()
                .filter(|(h, _)| h.starts_with("node-"))
                .max_by_key(|(_, n)| **n)
                .map(|(h, n)| (h.clone(), *n))
                .unwrap();
            let victim = cl
                .agents
                .iter()
                .position(|a| format!("node-{}", a.host) == victim_host)
                .unwrap();
            let leader = if with_leader { Some(leader(&cl)) } else { None };
            let t0 = Instant::now();
            match leader.as_deref() {
                Some("manager-0") => cl.kill_manager(),
                Some("node-1") => kill(&mut extras[0]),
                Some("node-2") => kill(&mut extras[1]),
                Some(other) => panic!("unknown manager {other}"),
                None => {}
            }
            cl.kill_agent(victim);
            cl.kill_containers(victim);
            wait_for(
                &format!("web back to 6 without {victim_host}"),
                Duration::from_secs(60),
                || {
                    let r = cl.running("app_web");
                    let n: usize = r
                        .iter()
                        .filter(|(h, _)| **h != victim_host)
                        .map(|(_, n)| n)
                        .sum();
                    if n == 6 {
                        Ok(())
                    } else {
                        Err(format!("{r:?}"))
                    }
                },
            );
            let t = t0.elapsed().as_secs_f64();
            eprintln!(
                "FAILOVER-HA round {round}: {lost} replica(s) lost with {victim_host}, leader {} killed too: 6 running again after {t:.2} s (grace {GRACE})",
                leader.as_deref().unwrap_or("not")
            );
            times.push((with_leader, t));
            match leader.as_deref() {
                Some("manager-0") => cl.start_manager(),
                Some("node-1") => start_extra(&cl, &mut extras[0], &[]),
                Some("node-2") => start_extra(&cl, &mut extras[1], &[]),
                _ => {}
            }
            wait_any_leader(&cl);
            cl.start_agent(victim);
            wait_for("every node up", Duration::from_secs(20), || all_up(&cl));
            std::thread::sleep(Duration::from_secs(3));
        }
    }
    for with_leader in [false, true] {
        let mut t: Vec<f64> = times
            .iter()
            .filter(|(w, _)| *w == with_leader)
            .map(|(_, t)| *t)
            .collect();
        t.sort_by(f64::total_cmp);
        eprintln!(
            "FAILOVER-HA leader killed too: {with_leader}: median {:.2} s, max {:.2} s over {}",
            t[t.len() / 2],
            t[t.len() - 1],
            t.len()
        );
    }
}

/// The registry's blobs on every manager's disk (file names).
fn registry_blobs(data: &std::path::Path) -> std::collections::BTreeSet<String> {
    std::fs::read_dir(data.join("manager/registry/blobs/sha256"))
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect()
}

/// An image pushed to a follower reaches every manager's disk (the
/// leader fetches the blobs to accept the manifest, the third by its
/// loop), and nodes still pull it once the manager it was pushed to is
/// gone.
#[test]
fn registry_images_pushed_to_one_manager_are_on_all_and_survive_it() {
    let Some(cl) = three_hosts("registry_images_pushed_to_one_manager") else {
        return;
    };
    let mut extras = join_two(&cl);
    let follower = format!("{}:{}", cl.lan.hosts[1].addr, cl.port);
    let image = format!("{follower}/shop/bb:1");
    cl.g.ok(&["tag", &cl.image, &image]);
    let o =
        cl.g.cmd_on(&cl.lan.hosts[0])
            .env("GANTRY_CONFIG_DIR", cl.cfg.path())
            .args(["-H", &follower, "push", "-q", &image])
            .output()
            .unwrap();
    assert!(o.status.success(), "push: {}", errtext(&o));
    let on_follower = registry_blobs(extras[0].data.path());
    assert!(on_follower.len() >= 2, "config and layer: {on_follower:?}");
    wait_for(
        "the blobs on all three managers",
        Duration::from_secs(30),
        || {
            let all = [
                registry_blobs(cl.g.data.path()),
                registry_blobs(extras[1].data.path()),
            ];
            if all.iter().all(|b| on_follower.is_subset(b)) {
                Ok(())
            } else {
                Err(format!("{all:?} vs {on_follower:?}"))
            }
        },
    );
    // The manager it was pushed to dies; every node pulls it from the
    // others (each agent's first pull of it).
    kill(&mut extras[0]);
    let stack = cl.g.data.path().join("registry-ha.yml");
    std::fs::write(
        &stack,
        format!(
            "services:\n  app:\n    image: {image}\n    command: [sleep, '100000']\n    stop_grace_period: 1s\n    deploy:\n      mode: global\n"
        ),
    )
    .unwrap();
    let o = cl.admin(&["deploy", "-d", "-f", stack.to_str().unwrap(), "reg"]);
    assert!(o.status.success(), "{}", errtext(&o));
    cl.wait_total("reg_app", 3, Duration::from_secs(90));
}
