//! Operations end to end on simulated hosts: cluster-wide logs, metrics
//! and stats.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::io::BufRead;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::cluster::*;
use common::*;
use serde_json::Value;

fn entries(out: &str) -> Vec<Value> {
    out.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

#[test]
fn service_logs_merge_every_node_in_time_order_and_follow_new_replicas() {
    let Some(mut cl) = Cluster::new(
        "service_logs_merge_every_node_in_time_order_and_follow_new_replicas",
        3,
    ) else {
        return;
    };
    for i in 0..3 {
        cl.start_agent(i);
    }
    let stack = r#"services:
  talk:
    image: IMAGE
    command: ["sh", "-c", "i=0; while true; do echo \"$$GANTRY_NODE_HOSTNAME out $$i\"; echo \"$$GANTRY_NODE_HOSTNAME err $$i\" >&2; i=$$((i+1)); sleep 0.1; done"]
    stop_grace_period: 1s
    deploy:
      replicas: 3
"#
    .replace("IMAGE", &cl.image);
    let o = cl.deploy("logs", &stack);
    assert!(o.status.success(), "{}", errtext(&o));
    cl.wait_running(
        "logs_talk",
        &[("node-1", 1), ("node-2", 1), ("node-3", 1)],
        Duration::from_secs(40),
    );
    std::thread::sleep(Duration::from_secs(2));

    // Every replica of every node, both streams, in time order.
    let all = entries(&cl.admin_ok(&["service", "logs", "--format", "json", "talk"]));
    let nodes: BTreeSet<&str> = all.iter().map(|e| e["node"].as_str().unwrap()).collect();
    assert_eq!(nodes, BTreeSet::from(["node-1", "node-2", "node-3"]));
    let streams: BTreeSet<&str> = all.iter().map(|e| e["stream"].as_str().unwrap()).collect();
    assert_eq!(streams, BTreeSet::from(["stderr", "stdout"]));
    let times: Vec<chrono::DateTime<chrono::Utc>> = all
        .iter()
        .map(|e| e["time"].as_str().unwrap().parse().unwrap())
        .collect();
    assert!(all.len() >= 30, "{} lines", all.len());
    assert!(
        times.windows(2).all(|w| w[0] <= w[1]),
        "not in time order: {times:?}"
    );
    // Each task's own lines in its order, nothing lost between them.
    let mut per_task: BTreeMap<&str, Vec<u64>> = BTreeMap::new();
    for e in &all {
        let line = e["line"].as_str().unwrap();
        // The agent tells a task its node (GANTRY_NODE_HOSTNAME).
        assert_eq!(line.split_whitespace().next(), e["node"].as_str(), "{e}");
        if e["stream"] == "stdout" {
            let n = line.split_whitespace().nth(2).unwrap().parse().unwrap();
            per_task
                .entry(e["task"].as_str().unwrap())
                .or_default()
                .push(n);
        }
    }
    assert_eq!(per_task.len(), 3);
    for (t, ns) in &per_task {
        assert!(ns.windows(2).all(|w| w[1] == w[0] + 1), "task {t}: {ns:?}");
        assert_eq!(ns[0], 0, "task {t} starts at its first line");
    }

    // --tail per task; the plain format's prefix; a task by id.
    let tail = entries(&cl.admin_ok(&[
        "service",
        "logs",
        "--format",
        "json",
        "--tail",
        "2",
        "logs_talk",
    ]));
    assert_eq!(tail.len(), 6, "{tail:?}");
    let plain = cl.admin(&[
        "service",
        "logs",
        "--tail",
        "2",
        "--no-task-ids",
        "logs_talk",
    ]);
    assert!(plain.status.success(), "{}", errtext(&plain));
    let out = text(&plain);
    for n in 1..=3 {
        assert!(
            out.contains(&format!("@node-{n}    | ")),
            "prefix for node-{n} in {out}"
        );
    }
    assert!(errtext(&plain).contains(" err "), "stderr to stderr");
    let task = per_task.keys().next().unwrap().to_string();
    let one = entries(&cl.admin_ok(&["logs", "--format", "json", "--tail", "3", &task]));
    assert_eq!(one.len(), 3);
    assert!(one.iter().all(|e| e["task"] == task.as_str()));
    let since = entries(&cl.admin_ok(&[
        "service",
        "logs",
        "--format",
        "json",
        "--since",
        "1s",
        "logs_talk",
    ]));
    assert!(since.len() < all.len() && !since.is_empty());
    // --until: the lines before a time, and --since with it a window; both
    // as RFC 3339, as `all` gives them.
    let (t_from, t_to) = (
        all[5]["time"].as_str().unwrap(),
        all[20]["time"].as_str().unwrap(),
    );
    let (from, to) = (times[5], times[20]);
    let until = entries(&cl.admin_ok(&[
        "service",
        "logs",
        "--format",
        "json",
        "--until",
        t_to,
        "logs_talk",
    ]));
    // (The end is left out, as Docker's --until does.)
    let want = times.iter().filter(|t| **t < to).count();
    assert_eq!(until.len(), want, "--until {t_to}: {until:?}");
    let window = entries(&cl.admin_ok(&[
        "service",
        "logs",
        "--format",
        "json",
        "--since",
        t_from,
        "--until",
        t_to,
        "logs_talk",
    ]));
    let want = times.iter().filter(|t| **t >= from && **t < to).count();
    assert_eq!(
        window.len(),
        want,
        "--since {t_from} --until {t_to}: {window:?}"
    );
    // -t: each line starts with its time.
    let stamped = cl.admin(&["service", "logs", "-t", "--tail", "1", "logs_talk"]);
    assert!(stamped.status.success(), "{}", errtext(&stamped));
    let out = format!("{}{}", text(&stamped), errtext(&stamped));
    assert_eq!(out.lines().count(), 3, "{out}");
    for l in out.lines() {
        let t = l.split_whitespace().next().unwrap_or_default();
        assert!(
            t.parse::<chrono::DateTime<chrono::Utc>>().is_ok(),
            "no timestamp first: {l}"
        );
    }
    let o = cl.admin(&["service", "logs", "nosuch"]);
    assert!(
        !o.status.success() && errtext(&o).contains("no such service"),
        "{}",
        errtext(&o)
    );

    // -f: lines keep coming, and a replica that starts later joins in.
    let mut follow =
        cl.g.cmd_on(&cl.lan.hosts[0])
            .env("GANTRY_CONFIG_DIR", cl.cfg.path())
            .args([
                "service",
                "logs",
                "-f",
                "--tail",
                "0",
                "--format",
                "json",
                "logs_talk",
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
    let seen: Arc<Mutex<Vec<Value>>> = Arc::default();
    let reader = {
        let seen = seen.clone();
        let out = follow.stdout.take().unwrap();
        std::thread::spawn(move || {
            for l in std::io::BufReader::new(out).lines() {
                let Ok(l) = l else { break };
                if let Ok(v) = serde_json::from_str::<Value>(&l) {
                    seen.lock().unwrap().push(v);
                }
            }
        })
    };
    let tasks_seen = |seen: &Mutex<Vec<Value>>| -> BTreeSet<String> {
        seen.lock()
            .unwrap()
            .iter()
            .map(|e| e["task"].as_str().unwrap().to_owned())
            .collect()
    };
    wait_for("followed lines of 3 tasks", Duration::from_secs(15), || {
        let t = tasks_seen(&seen);
        if t.len() == 3 {
            Ok(())
        } else {
            Err(format!("{t:?}"))
        }
    });
    cl.admin_ok(&["service", "scale", "-d", "logs_talk=4"]);
    wait_for(
        "a 4th task's lines while following",
        Duration::from_secs(30),
        || {
            let t = tasks_seen(&seen);
            if t.len() == 4 {
                Ok(())
            } else {
                Err(format!("{t:?}"))
            }
        },
    );
    // An agent that restarts (as a node that joins) is taken in by the
    // follow already open: its task's new lines come through.
    cl.kill_agent(0);
    let back = chrono::Utc::now();
    cl.start_agent(0);
    wait_for(
        "node-1's lines after its agent restarted",
        Duration::from_secs(20),
        || {
            let fresh = seen
                .lock()
                .unwrap()
                .iter()
                .filter(|e| e["node"] == "node-1")
                .filter_map(|e| {
                    e["time"]
                        .as_str()?
                        .parse::<chrono::DateTime<chrono::Utc>>()
                        .ok()
                })
                .filter(|t| *t > back)
                .count();
            if fresh > 0 {
                Ok(())
            } else {
                Err("none yet".into())
            }
        },
    );
    let _ = follow.kill();
    let _ = follow.wait();
    reader.join().unwrap();

    // Scaled down, the removed replicas' logs are kept on their nodes.
    cl.admin_ok(&["service", "scale", "-d", "logs_talk=1"]);
    wait_for("one replica", Duration::from_secs(30), || {
        let r = cl.running("logs_talk");
        let gone = cl
            .tasks("logs_talk")
            .iter()
            .filter(|t| t["state"] == "running")
            .count();
        if r.values().sum::<usize>() == 1 && gone == 1 {
            Ok(())
        } else {
            Err(format!("{r:?}"))
        }
    });
    std::thread::sleep(Duration::from_secs(3));
    let kept = entries(&cl.admin_ok(&["service", "logs", "--format", "json", "logs_talk"]));
    let t: BTreeSet<&str> = kept.iter().map(|e| e["task"].as_str().unwrap()).collect();
    assert_eq!(t.len(), 4, "logs of all 4 tasks, 3 of them ended: {t:?}");
}

fn cgroup_file(id_prefix: &str, ctrl: &str, file: &str) -> String {
    let root = std::path::Path::new("/sys/fs/cgroup")
        .join(ctrl)
        .join("gantry");
    let dir = std::fs::read_dir(&root)
        .unwrap()
        .flatten()
        .find(|e| e.file_name().to_string_lossy().starts_with(id_prefix))
        .unwrap_or_else(|| panic!("no cgroup {id_prefix} under {}", root.display()))
        .path();
    std::fs::read_to_string(dir.join(file)).unwrap()
}

#[test]
fn container_metrics_match_their_cgroup_and_pass_promtool() {
    let Some(mut cl) = Cluster::new("container_metrics_match_their_cgroup_and_pass_promtool", 1)
    else {
        return;
    };
    cl.start_agent(0);
    let stack = r#"services:
  hog:
    image: IMAGE
    command: ["sh", "-c", "dd if=/dev/zero of=/fill bs=1M count=24; exec sleep 100000"]
    stop_grace_period: 1s
    deploy:
      resources:
        limits:
          memory: 64M
"#
    .replace("IMAGE", &cl.image);
    let o = cl.deploy("m", &stack);
    assert!(o.status.success(), "{}", errtext(&o));
    cl.wait_running("m_hog", &[("node-1", 1)], Duration::from_secs(40));
    let ids = cl.containers(0);
    assert_eq!(ids.len(), 1, "{ids:?}");
    let id = &ids[0];
    let task = cl.tasks("m_hog")[0]["id"].as_str().unwrap().to_owned();
    let host = &cl.lan.hosts[1];
    let want = [r#"service="m_hog""#, r#"stack="m""#, r#"node="node-1""#];
    let mut body = String::new();
    wait_for("the container's metrics", Duration::from_secs(15), || {
        body = metrics_on(host, "127.0.0.1:9323");
        match sample(&body, "gantry_container_memory_usage_bytes", &want) {
            Some(v) if v > 24e6 => Ok(()),
            v => Err(format!("{v:?}")),
        }
    });
    assert!(body.contains(&format!(r#"task="{task}""#)), "{body}");
    let limit: f64 = cgroup_file(id, "memory", "memory.limit_in_bytes")
        .trim()
        .parse()
        .unwrap();
    assert_eq!(limit, 64.0 * 1024.0 * 1024.0);
    assert_eq!(
        sample(&body, "gantry_container_memory_limit_bytes", &want),
        Some(limit)
    );
    let usage: f64 = cgroup_file(id, "memory", "memory.usage_in_bytes")
        .trim()
        .parse()
        .unwrap();
    let reported = sample(&body, "gantry_container_memory_usage_bytes", &want).unwrap();
    assert!(
        (reported - usage).abs() / usage < 0.05,
        "memory: metric {reported}, cgroup {usage}"
    );
    // The working set: usage less inactive page cache (as docker stats).
    let inactive: f64 = cgroup_file(id, "memory", "memory.stat")
        .lines()
        .find_map(|l| l.strip_prefix("total_inactive_file "))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let working = sample(&body, "gantry_container_memory_working_set_bytes", &want).unwrap();
    assert!(
        (working - (usage - inactive)).abs() <= 0.05 * usage,
        "working set: metric {working}, cgroup {usage} - {inactive}"
    );
    let procs = cgroup_file(id, "pids", "cgroup.procs").lines().count() as f64;
    assert_eq!(sample(&body, "gantry_container_pids", &want), Some(procs));
    let cpu: f64 = cgroup_file(id, "cpuacct", "cpuacct.usage")
        .trim()
        .parse()
        .unwrap();
    let cpu_metric = sample(&body, "gantry_container_cpu_usage_seconds_total", &want).unwrap();
    assert!(
        cpu_metric > 0.0 && cpu_metric <= cpu / 1e9 + 1e-9,
        "cpu: metric {cpu_metric}, cgroup {}",
        cpu / 1e9
    );
    assert_eq!(
        sample(&body, "gantry_container_oom_kills_total", &want),
        Some(0.0)
    );
    assert!(
        sample(
            &body,
            "gantry_node_memory_total_bytes",
            &[r#"node="node-1""#]
        )
        .unwrap()
            > 0.0
    );
    assert!(body.contains("gantry_dns_queries_total{"), "{body}");
    promtool_ok(&body);

    // The manager's cluster view: the same container, by node, and its own
    // families.
    let mut view = String::new();
    wait_for("the cluster view", Duration::from_secs(15), || {
        view = metrics_on(&cl.lan.hosts[0], "127.0.0.1:9324");
        match sample(&view, "gantry_container_memory_limit_bytes", &want) {
            Some(v) if v == limit => Ok(()),
            v => Err(format!("{v:?}")),
        }
    });
    assert_eq!(
        sample(&view, "gantry_cluster_nodes", &[r#"state="up""#]),
        Some(1.0)
    );
    assert_eq!(
        sample(&view, "gantry_cluster_tasks", &[r#"state="running""#]),
        Some(1.0)
    );
    assert!(
        view.contains("gantry_scheduler_placements_total 1"),
        "{view}"
    );
    promtool_ok(&view);

    // gantry stats and node ls.
    let rows: Vec<Value> =
        serde_json::from_str(&cl.admin_ok(&["stats", "--no-stream", "--format", "json", "hog"]))
            .unwrap();
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(rows[0]["task"], task.as_str());
    assert_eq!(rows[0]["node"], "node-1");
    assert_eq!(rows[0]["memory_limit"], 64 * 1024 * 1024);
    let table = cl.admin_ok(&["stats", "--no-stream"]);
    assert!(
        table.contains("m_hog.1.") && table.contains("/ 67.109MB"),
        "{table}"
    );
    assert!(
        table.contains("SERVICE") && table.contains("m_hog"),
        "{table}"
    );
    let nodes = cl.json(&["node", "ls", "--format", "json"]);
    assert!(nodes[0]["cpu_percent"].is_number(), "{nodes}");
    assert!(nodes[0]["mem_used"].as_u64().unwrap() > 0, "{nodes}");
    let ls = cl.admin_ok(&["node", "ls"]);
    assert!(ls.contains("CPU %") && ls.contains("MEMORY"), "{ls}");
}
