//! Storage management on simulated hosts: the cluster knows its volumes
//! (where they are, their size and limit, who mounts them), a sized
//! volume fills up inside its container only, and a volume in use is not
//! removed.

mod common;

use std::time::Duration;

use common::cluster::*;
use common::*;
use serde_json::Value;

/// The cluster's view of volume `name`, once `ok` holds for it.
fn wait_volume(cl: &Cluster, name: &str, what: &str, ok: impl Fn(&Value) -> bool) -> Value {
    wait_for(what, Duration::from_secs(60), || {
        let v = cl.json(&["volume", "ls", "--format", "json"]);
        v.as_array()
            .and_then(|a| a.iter().find(|x| x["name"] == name && ok(x)))
            .cloned()
            .ok_or_else(|| v.to_string())
    })
}

#[test]
fn the_cluster_knows_its_volumes_and_a_sized_one_holds_its_limit() {
    let metrics = format!("127.0.0.1:{}", free_port());
    let m = metrics.clone();
    let Some(mut cl) = Cluster::new_with("the_cluster_knows_its_volumes", 2, move |_| {
        (vec!["--manager-metrics".into(), m], None)
    }) else {
        return;
    };
    for i in 0..2 {
        cl.start_agent(i);
    }
    let o = cl.deploy(
        "shop",
        &format!(
            "services:\n  db:\n    image: {}\n    command: [sleep, '100000']\n    stop_grace_period: 1s\n    volumes: [\"data:/data\", \"plain:/plain\"]\n    deploy:\n      placement: {{constraints: [node.hostname == node-1]}}\nvolumes:\n  data:\n    driver_opts: {{size: 32m}}\n  plain: {{}}\n",
            cl.image
        ),
    );
    assert!(o.status.success(), "{}", errtext(&o));
    cl.wait_total("shop_db", 1, Duration::from_secs(60));
    let c = cl.container_of(0, "shop_db");
    // Past its size, a write fails inside the container.
    let o = cl.on_agent(
        0,
        &[
            "exec",
            &c,
            "sh",
            "-c",
            "dd if=/dev/zero of=/data/fill bs=1M count=64; dd if=/dev/zero of=/plain/p bs=1M count=3",
        ],
    );
    assert!(
        errtext(&o).contains("No space left on device"),
        "{}{}",
        text(&o),
        errtext(&o)
    );
    // The node measures both and reports them: where, how full, the
    // limit, the service and task that mount them.
    let v = wait_volume(&cl, "shop_data", "shop_data measured full", |v| {
        v["used"].as_u64().unwrap_or(0) > 20 << 20
            && v["free"].as_u64().is_some_and(|f| f < 1 << 20)
    });
    assert_eq!(v["hostname"], "node-1", "{v}");
    assert_eq!(v["limit"], 32 << 20, "{v}");
    assert_eq!(v["services"], serde_json::json!(["shop_db"]), "{v}");
    assert_eq!(v["tasks"], serde_json::json!(["shop_db.1"]), "{v}");
    let p = wait_volume(&cl, "shop_plain", "shop_plain measured", |v| {
        v["used"].as_u64().unwrap_or(0) >= 3 << 20
    });
    assert!(p["limit"].is_null(), "{p}");
    let table = cl.admin_ok(&["volume", "ls"]);
    assert!(
        table.contains("shop_data") && table.contains("33.554MB"),
        "{table}"
    );
    // The manager's metrics have them.
    let body = metrics_on(&cl.lan.hosts[0], &metrics);
    promtool_ok(&body);
    assert_eq!(
        sample(
            &body,
            "gantry_volume_limit_bytes",
            &["node=\"node-1\"", "volume=\"shop_data\""]
        ),
        Some(f64::from(32u32 << 20)),
        "{body}"
    );
    assert!(
        sample(
            &body,
            "gantry_volume_used_bytes",
            &["volume=\"shop_plain\""]
        )
        .is_some_and(|b| b >= f64::from(3u32 << 20)),
        "{body}"
    );
    // In use: not removed, and the answer names the users.
    let o = cl.admin(&["volume", "rm", "shop_data"]);
    assert!(!o.status.success());
    assert!(
        errtext(&o).contains("in use by service shop_db and task shop_db.1"),
        "{}",
        errtext(&o)
    );
    let o = cl.admin(&["volume", "rm", "nothing_here"]);
    assert!(errtext(&o).contains("no such volume"), "{}", errtext(&o));
    // Once the stack is gone, removed from its node, loop device and all.
    cl.admin_ok(&["stack", "rm", "shop"]);
    wait_for("the container to go", Duration::from_secs(30), || {
        if cl.containers(0).is_empty() {
            Ok(())
        } else {
            Err("still there".into())
        }
    });
    let disk = cl.agents[0].data.path().join("volumes/shop_data/disk.img");
    assert!(disk.exists());
    let o = cl.admin(&["volume", "rm", "shop_data", "shop_plain"]);
    assert!(o.status.success(), "{}", errtext(&o));
    assert!(!disk.exists());
    let local = text(&cl.on_agent(0, &["volume", "ls", "-q", "--local"]));
    assert!(!local.contains("shop_"), "{local}");
    wait_for(
        "the cluster to forget them",
        Duration::from_secs(30),
        || {
            let names = cl.admin_ok(&["volume", "ls", "-q"]);
            if names.contains("shop_") {
                Err(names)
            } else {
                Ok(())
            }
        },
    );
}

/// The numbers in a writer's sequence file: each line whole and one more
/// than the line before, from 1.
fn whole_sequence(text: &str) -> Result<u64, String> {
    let mut last = 0;
    for (i, line) in text.lines().enumerate() {
        let n: u64 = line
            .parse()
            .map_err(|_| format!("line {} is torn: {line:?}", i + 1))?;
        if n != last + 1 {
            return Err(format!("line {}: {n} after {last}", i + 1));
        }
        last = n;
    }
    if !text.is_empty() && !text.ends_with('\n') {
        return Err("the last line is torn".into());
    }
    Ok(last)
}

#[test]
fn scheduled_backups_keep_their_count_and_restore_on_another_node() {
    let metrics = format!("127.0.0.1:{}", free_port());
    let m = metrics.clone();
    let Some(mut cl) = Cluster::new_with("scheduled_backups", 2, move |_| {
        (vec!["--manager-metrics".into(), m], None)
    }) else {
        return;
    };
    for i in 0..2 {
        cl.start_agent(i);
    }
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("backup.key");
    std::fs::write(&key, "the key of the shop's backups, from a file").unwrap();
    let s3 = dir.path().join("s3.env");
    std::fs::write(&s3, "AWS_ACCESS_KEY_ID=test\nAWS_SECRET_ACCESS_KEY=test\n").unwrap();
    // An S3-compatible server on the manager's host, which the nodes
    // reach over the LAN; the nodes' agents have no AWS variables: the
    // settings come from a secret.
    let h0 = &cl.lan.hosts[0];
    let moto = Moto::start(h0.command("python3"), || h0.command("curl"), &h0.addr);
    let repo = format!(
        "s3://backups/shop?endpoint=http://{}:{}&region=us-east-1",
        h0.addr, moto.port
    );
    // A writer appends numbers; its volume is backed up every 3 seconds
    // (a six-field schedule) into the bucket, and 2 snapshots are kept.
    let o = cl.deploy(
        "shop",
        &format!(
            "services:\n  db:\n    image: {}\n    command: [sh, -c, 'i=0; while true; do i=$$((i+1)); echo $$i >> /data/seq; sleep 0.05; done']\n    stop_grace_period: 1s\n    volumes: [\"data:/data\"]\n    deploy:\n      placement: {{constraints: [node.hostname == node-1]}}\nvolumes:\n  data:\n    x-gantry:\n      backup: {{schedule: '*/3 * * * * *', keep: 2, to: '{}', key: bk, credentials: s3}}\nsecrets:\n  bk: {{file: {}}}\n  s3: {{file: {}}}\n",
            cl.image,
            repo,
            key.display(),
            s3.display()
        ),
    );
    assert!(o.status.success(), "{}", errtext(&o));
    cl.wait_total("shop_db", 1, Duration::from_secs(60));
    let mut seen = std::collections::BTreeSet::new();
    wait_for("four scheduled backups", Duration::from_secs(90), || {
        let v = cl.json(&["volume", "ls", "--format", "json"]);
        let b = v
            .as_array()
            .and_then(|a| a.iter().find(|x| x["name"] == "shop_data"))
            .map(|x| x["last_backup"].clone())
            .unwrap_or_default();
        assert!(b["error"].is_null(), "a scheduled backup failed: {b}");
        if let Some(id) = b["snapshot"].as_str() {
            seen.insert(id.to_owned());
        }
        if seen.len() >= 4 {
            Ok(())
        } else {
            Err(format!("{seen:?} {b}"))
        }
    });
    // Only the newest 2 stay (a backup may have just added a third, which
    // its prune then removes).
    let list = wait_for("the older snapshots to go", Duration::from_secs(30), || {
        let l = cl.json(&["volume", "backups", "shop_data", "--format", "json"]);
        match l.as_array().map(Vec::len) {
            Some(2) => Ok(l),
            _ => Err(l.to_string()),
        }
    });
    assert_eq!(list[1]["host"], "node-1", "{list}");
    let table = cl.admin_ok(&["volume", "ls"]);
    assert!(
        table.contains("LAST BACKUP") && table.contains(" ago"),
        "{table}"
    );
    // The manager's metrics: the last backup's age and length.
    let body = metrics_on(&cl.lan.hosts[0], &metrics);
    promtool_ok(&body);
    let age = sample(
        &body,
        "gantry_volume_backup_age_seconds",
        &["node=\"node-1\"", "volume=\"shop_data\""],
    );
    assert!(age.is_some_and(|a| a < 60.0), "{body}");
    assert!(
        sample(
            &body,
            "gantry_volume_backup_duration_seconds",
            &["volume=\"shop_data\""]
        )
        .is_some(),
        "{body}"
    );
    // The key is in use by the schedule.
    let o = cl.admin(&["secret", "rm", "shop_bk"]);
    assert!(errtext(&o).contains("in use by shop_db"), "{}", errtext(&o));
    // One asked for: the same settings, through the cluster.
    let out = cl.admin_ok(&["volume", "backup", "shop_data"]);
    assert!(
        out.starts_with("snapshot ") && out.contains("(1 container(s) frozen meanwhile)"),
        "{out}"
    );
    // Restored on the other node into a new volume: a whole prefix of the
    // writer's sequence (the writer was frozen while it was read).
    let out = cl.admin_ok(&[
        "volume",
        "restore",
        "shop_data",
        "--from",
        "latest",
        "--to",
        "shop_copy",
        "--node",
        "node-2",
    ]);
    assert!(out.contains("into shop_copy on node-2"), "{out}");
    let copy =
        std::fs::read_to_string(cl.agents[1].data.path().join("volumes/shop_copy/_data/seq"))
            .unwrap();
    let restored = whole_sequence(&copy)
        .map_err(|e| format!("{e}: {:?}", &copy[..copy.len().min(200)]))
        .unwrap();
    let live =
        std::fs::read_to_string(cl.agents[0].data.path().join("volumes/shop_data/_data/seq"))
            .unwrap();
    assert!(
        live.starts_with(&copy),
        "the copy is not a prefix of the volume"
    );
    assert!(restored > 10, "{restored}");
    wait_volume(&cl, "shop_copy", "the copy on node-2", |v| {
        v["hostname"] == "node-2"
    });
    // In place: the service is paused meanwhile and runs again after.
    let out = cl.admin_ok(&["volume", "restore", "shop_data", "--from", "latest"]);
    assert!(out.contains("into shop_data on node-1"), "{out}");
    let stopped = cl
        .tasks("shop_db")
        .iter()
        .filter(|t| t["desired"] == "shutdown")
        .count();
    assert!(stopped >= 1, "the task was not stopped for the restore");
    cl.wait_total("shop_db", 1, Duration::from_secs(60));
    // A bad key is a clear error.
    let o = cl.admin(&["volume", "backups", "shop_data", "--key-secret", "nope"]);
    assert!(
        errtext(&o).contains("no such secret: nope"),
        "{}",
        errtext(&o)
    );
    let o = cl.admin(&["volume", "backup", "shop_copy"]);
    assert!(
        errtext(&o).contains("has no backup settings"),
        "{}",
        errtext(&o)
    );
}

/// The host running `service`'s one task, once it runs.
fn running_on(cl: &Cluster, service: &str, not: Option<&str>) -> String {
    wait_for("the task to run", Duration::from_secs(90), || {
        let r = cl.running(service);
        match r.keys().collect::<Vec<_>>()[..] {
            [one] if Some(one.as_str()) != not => Ok(one.clone()),
            _ => Err(format!("{r:?}")),
        }
    })
}

/// The writer's sequence in volume `vol` on host `host` (node-N).
fn sequence_on(cl: &Cluster, host: &str, vol: &str) -> u64 {
    let i: usize = host.trim_start_matches("node-").parse::<usize>().unwrap() - 1;
    let p = cl.agents[i]
        .data
        .path()
        .join(format!("volumes/{vol}/_data/seq"));
    let t = std::fs::read_to_string(&p).unwrap_or_default();
    whole_sequence(&t).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

#[test]
fn volumes_move_with_their_service_and_drain_with_the_node() {
    let Some(mut cl) = Cluster::new("volumes_move", 3) else {
        return;
    };
    for i in 0..3 {
        cl.start_agent(i);
    }
    // A writer that carries on from the last number in its file: after a
    // move, the sequence goes on with no gap and no torn line only if
    // every write made before the stop reached the new node.
    let o = cl.deploy(
        "shop",
        &format!(
            "services:\n  db:\n    image: {}\n    command: [sh, -c, 'i=$$(tail -n 1 /data/seq 2>/dev/null || echo 0); while true; do i=$$((i+1)); echo $$i >> /data/seq; sleep 0.02; done']\n    stop_grace_period: 1s\n    volumes: [\"data:/data\"]\nvolumes:\n  data:\n    x-gantry: {{size: 64m}}\n",
            cl.image
        ),
    );
    assert!(o.status.success(), "{}", errtext(&o));
    let first = running_on(&cl, "shop_db", None);
    wait_for("writes", Duration::from_secs(30), || {
        let n = sequence_on(&cl, &first, "shop_data");
        if n > 50 {
            Ok(())
        } else {
            Err(n.to_string())
        }
    });
    let to = if first == "node-1" {
        "node-2"
    } else {
        "node-1"
    };
    let out = cl.admin_ok(&["volume", "move", "shop_data", "--to", to]);
    assert!(
        out.contains(&format!("moved from {first} to {to}")) && out.contains("shop_db stopped for"),
        "{out}"
    );
    let second = running_on(&cl, "shop_db", Some(&first));
    assert_eq!(second, to);
    let at_move = sequence_on(&cl, to, "shop_data");
    wait_for("writes on the new node", Duration::from_secs(30), || {
        let n = sequence_on(&cl, to, "shop_data");
        if n > at_move + 20 {
            Ok(())
        } else {
            Err(format!("{n} (at the move: {at_move})"))
        }
    });
    // The old copy is gone; the new one keeps its size.
    let i = first.trim_start_matches("node-").parse::<usize>().unwrap() - 1;
    assert!(!cl.agents[i].data.path().join("volumes/shop_data").exists());
    let v = wait_volume(&cl, "shop_data", "the volume on its new node", |v| {
        v["hostname"] == to && !v["limit"].is_null()
    });
    assert_eq!(v["limit"], 64 << 20, "{v}");
    // Errors: to where it is, to a node that does not exist.
    let o = cl.admin(&["volume", "move", "shop_data", "--to", to]);
    assert!(errtext(&o).contains("already"), "{}", errtext(&o));
    let o = cl.admin(&["volume", "move", "shop_data", "--to", "node-9"]);
    assert!(errtext(&o).contains("no such node"), "{}", errtext(&o));
    // Draining the node with its volumes: the volume and its writer go
    // to a node the manager picks, and the sequence goes on whole.
    let out = cl.admin_ok(&["node", "drain", "--with-volumes", to]);
    assert!(out.contains("volume shop_data moved from"), "{out}");
    assert!(out.contains("drained"), "{out}");
    let third = running_on(&cl, "shop_db", Some(to));
    let at_drain = sequence_on(&cl, &third, "shop_data");
    assert!(at_drain > at_move, "{at_drain} after {at_move}");
    wait_for("writes after the drain", Duration::from_secs(30), || {
        let n = sequence_on(&cl, &third, "shop_data");
        if n > at_drain + 20 {
            Ok(())
        } else {
            Err(n.to_string())
        }
    });
}

/// A writer's lines `N WHO`: N goes up by one from 1 with no gap, each
/// line whole; returns each line's (N, WHO).
fn whole_records(text: &str) -> Result<Vec<(u64, String)>, String> {
    let mut out: Vec<(u64, String)> = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let (n, who) = line
            .split_once(' ')
            .ok_or_else(|| format!("line {} is torn: {line:?}", i + 1))?;
        let n: u64 = n
            .parse()
            .map_err(|_| format!("line {} is torn: {line:?}", i + 1))?;
        let want = out.last().map_or(1, |l| l.0 + 1);
        if n != want || who.len() < 4 {
            return Err(format!("line {}: {line:?} after {:?}", i + 1, out.last()));
        }
        out.push((n, who.to_owned()));
    }
    if !text.is_empty() && !text.ends_with('\n') {
        return Err("the last line is torn".into());
    }
    Ok(out)
}

#[test]
fn a_replicated_volume_comes_back_on_its_standby_when_its_host_dies() {
    let Some(mut cl) = Cluster::new("replicated_volume", 3) else {
        return;
    };
    for i in 0..3 {
        cl.start_agent(i);
    }
    // Each line: the next number and the writing container's host name.
    let o = cl.deploy(
        "shop",
        &format!(
            "services:\n  db:\n    image: {}\n    command: [sh, -c, 'i=$$(tail -n 1 /data/seq 2>/dev/null | cut -d \" \" -f 1); i=$${{i:-0}}; while true; do i=$$((i+1)); echo \"$$i $$(hostname)\" >> /data/seq; sleep 0.05; done']\n    stop_grace_period: 1s\n    volumes: [\"data:/data\"]\nvolumes:\n  data:\n    x-gantry: {{replicas: 2}}\n",
            cl.image
        ),
    );
    assert!(o.status.success(), "{}", errtext(&o));
    let first = running_on(&cl, "shop_db", None);
    let v = wait_volume(&cl, "shop_data", "copies on the standby", |v| {
        v["replica"]["copies"].as_u64().unwrap_or(0) >= 3
    });
    let standby = v["replica"]["standby"].as_str().unwrap().to_owned();
    // The host dies with its containers, at some moment between two
    // copies (they start every 3 s).
    let phase = Duration::from_millis(
        u64::from(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .subsec_nanos(),
        ) % 3000,
    );
    std::thread::sleep(phase);
    let i = first.trim_start_matches("node-").parse::<usize>().unwrap() - 1;
    let t0 = std::time::Instant::now();
    cl.kill_agent(i);
    cl.kill_containers(i);
    let lost_file = cl.agents[i].data.path().join("volumes/shop_data/_data/seq");
    let written = whole_records(&std::fs::read_to_string(&lost_file).unwrap()).unwrap();
    let last_written = written.last().unwrap().0;
    let second = running_on(&cl, "shop_db", Some(&first));
    let rto = t0.elapsed();
    let names = cl.hostnames();
    assert_eq!(
        names.get(&standby).map(String::as_str),
        Some(second.as_str()),
        "the task came back on {second}, not on the standby"
    );
    // The new node's file: what the copy held (the dead writer's lines, a
    // whole prefix) and then the new writer's, with no gap.
    let j = second.trim_start_matches("node-").parse::<usize>().unwrap() - 1;
    let p = cl.agents[j].data.path().join("volumes/shop_data/_data/seq");
    let records = wait_for("the new writer's lines", Duration::from_secs(30), || {
        let t = std::fs::read_to_string(&p).unwrap_or_default();
        let r = whole_records(&t)?;
        let old_who = &written[0].1;
        if r.iter().any(|l| &l.1 != old_who) {
            Ok(r)
        } else {
            Err(format!("{} lines", r.len()))
        }
    });
    let restored = records.iter().take_while(|l| l.1 == written[0].1).count() as u64;
    assert_eq!(
        &records[..restored as usize],
        &written[..restored as usize],
        "the copy is not what the writer wrote"
    );
    let lost = last_written - restored;
    // 20 lines a second (at most; sleep 0.05 and the write).
    let rpo = lost as f64 * 0.05;
    eprintln!(
        "REPLICA: {lost} of {last_written} lines lost (RPO at most {rpo:.1} s), serving again after {:.1} s (killed {:.1} s after a copy was seen)",
        rto.as_secs_f64(),
        phase.as_secs_f64()
    );
    assert!(rpo <= 15.0, "lost {lost} lines, {rpo:.1} s of writes");
    // The dead node still lists its old copy; the volume is the one on
    // its new home (a missing secret is the error, not the ambiguity).
    let o = cl.admin(&[
        "volume",
        "restore",
        "shop_data",
        "--from",
        "latest",
        "--repo",
        "/srv/none",
        "--key-secret",
        "nope",
    ]);
    assert!(
        errtext(&o).contains("no such secret: nope"),
        "{}",
        errtext(&o)
    );
    assert!(rto < Duration::from_secs(60), "{rto:?}");
}
