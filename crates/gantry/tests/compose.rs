//! Compose files deploy as written, end to end on the dev server (a
//! manager and an agent in one process on this host): what the file says
//! reaches the container intact (a password with `#`, a quoted command),
//! volumes are the ones named (external, with driver options, anonymous),
//! binds resolve against the stack file's folder.

mod common;

use std::time::Duration;

use common::cluster::*;
use common::*;
use serde_json::Value;

#[test]
fn a_stack_file_reaches_the_container_as_written() {
    let Some(d) = Dev::start("a_stack_file_reaches_the_container_as_written") else {
        return;
    };
    d.g.busybox_image("bb:1");
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path();
    // An existing volume with data, for `external`.
    let o = d.cli(&["volume", "create", "legacy_data"]);
    assert!(o.status.success(), "{}", errtext(&o));
    let v: Value = serde_json::from_slice(
        &d.cli(&["volume", "inspect", "--local", "legacy_data"])
            .stdout,
    )
    .unwrap();
    let mountpoint = v[0]["mountpoint"].as_str().unwrap().to_owned();
    std::fs::write(format!("{mountpoint}/hello.txt"), "kept\n").unwrap();
    // The node reports it (the manager places tasks that need it there).
    wait_for(
        "the node to report legacy_data",
        Duration::from_secs(10),
        || {
            let v: Value =
                serde_json::from_slice(&d.cli(&["node", "ls", "--format", "json"]).stdout).unwrap();
            if v[0]["volumes"]
                .as_array()
                .is_some_and(|a| a.iter().any(|x| x == "legacy_data"))
            {
                Ok(())
            } else {
                Err(v.to_string())
            }
        },
    );
    // A host folder mounted by driver options, and one beside the file.
    let opt_dir = tempfile::tempdir().unwrap();
    std::fs::write(opt_dir.path().join("opt.txt"), "by driver_opts\n").unwrap();
    std::fs::create_dir(p.join("init")).unwrap();
    std::fs::write(p.join("init/init.sql"), "create table t;\n").unwrap();
    std::fs::write(p.join(".env"), "PW='s3cret #42'\nUSER_NAME=ann\n").unwrap();
    let stack = format!(
        r#"services:
  db:
    image: bb:1
    command: sh -c "echo 'a  b' > /out; exec sleep 100000"
    stop_grace_period: 1s
    environment:
      POSTGRES_PASSWORD: ${{PW}}
      GREETING: "hello ${{USER_NAME}}: ${{MISSING:-*star*}}"
    volumes:
      - legacy:/data
      - byopts:/opt/mnt
      - ./init:/init:ro
      - /anon
volumes:
  legacy:
    external: true
    name: legacy_data
  byopts:
    driver_opts:
      type: none
      o: bind
      device: {}
"#,
        opt_dir.path().display()
    );
    std::fs::write(p.join("stack.yml"), stack).unwrap();
    let file = p.join("stack.yml").display().to_string();
    // From another folder: relative binds follow the file, not the shell.
    let o = d.cli(&["deploy", "-f", &file, "app"]);
    assert!(o.status.success(), "{}{}", text(&o), errtext(&o));
    let id = wait_for("the db container", Duration::from_secs(30), || {
        let ps = text(&d.cli(&["ps", "-q"]));
        ps.lines().next().map(str::to_owned).ok_or(ps)
    });
    let exec = |args: &[&str]| {
        let mut a = vec!["exec", id.as_str()];
        a.extend_from_slice(args);
        let o = d.cli(&a);
        assert!(o.status.success(), "{args:?}: {}", errtext(&o));
        text(&o)
    };
    let env = |k: &str| exec(&["sh", "-c", &format!("echo \"${k}\"")]);
    assert_eq!(env("POSTGRES_PASSWORD"), "s3cret #42\n");
    assert_eq!(env("GREETING"), "hello ann: *star*\n");
    wait_for("the command's output", Duration::from_secs(5), || {
        let o = d.cli(&["exec", &id, "cat", "/out"]);
        if text(&o) == "a  b\n" {
            Ok(())
        } else {
            Err(text(&o))
        }
    });
    assert_eq!(exec(&["cat", "/data/hello.txt"]), "kept\n");
    assert_eq!(exec(&["cat", "/opt/mnt/opt.txt"]), "by driver_opts\n");
    assert_eq!(exec(&["cat", "/init/init.sql"]), "create table t;\n");
    // The bind is read-only; the anonymous volume is writable.
    let o = d.cli(&["exec", &id, "touch", "/init/x"]);
    assert!(!o.status.success(), "a :ro bind took a write");
    exec(&["touch", "/anon/x"]);
    let vols = text(&d.cli(&["volume", "ls", "-q", "--local"]));
    assert_eq!(
        vols.lines().filter(|v| v.contains("-anon-")).count(),
        1,
        "{vols}"
    );
    assert!(!vols.contains("app_legacy"), "external made anew: {vols}");

    // Confinement and resolution as written: capabilities, a namespaced
    // sysctl, limits, an init as PID 1, hosts and resolver lines.
    std::fs::write(
        p.join("confined.yml"),
        r#"services:
  c:
    image: bb:1
    command: ["sleep", "100000"]
    stop_grace_period: 1s
    hostname: "{{.Service.Name}}-{{.Task.Slot}}"
    environment:
      WHERE: "{{.Node.Hostname}}/{{ .Task.Slot }}"
    init: true
    cap_drop: [ALL]
    cap_add: [NET_BIND_SERVICE, KILL]
    sysctls: {net.core.somaxconn: "1234"}
    ulimits: {nofile: {soft: 512, hard: 1024}}
    extra_hosts: ["db.local:10.9.8.7"]
    dns: [10.9.8.53]
    dns_search: [corp.example]
    dns_opt: ["ndots:3"]
"#,
    )
    .unwrap();
    let o = d.cli(&[
        "deploy",
        "-f",
        &p.join("confined.yml").display().to_string(),
        "conf",
    ]);
    assert!(o.status.success(), "{}{}", text(&o), errtext(&o));
    let cid = wait_for("the confined container", Duration::from_secs(30), || {
        let ps = d.cli(&["ps", "--format", "json"]);
        ids_named(&ps, "conf_c")
            .into_iter()
            .next()
            .ok_or_else(|| text(&ps))
    });
    let in_c = |script: &str| {
        let o = d.cli(&["exec", &cid, "sh", "-c", script]);
        assert!(o.status.success(), "{script}: {}", errtext(&o));
        text(&o)
    };
    // NET_BIND_SERVICE (bit 10) and KILL (bit 5): 0x420.
    assert!(
        in_c("grep CapBnd /proc/self/status").contains("0000000000000420"),
        "{}",
        in_c("grep Cap /proc/self/status")
    );
    assert_eq!(in_c("cat /proc/sys/net/core/somaxconn"), "1234\n");
    // Swarm's templates, filled for the task.
    assert_eq!(in_c("hostname"), "conf_c-1\n");
    assert_eq!(
        in_c("echo \"$WHERE\""),
        in_c("echo \"$GANTRY_NODE_HOSTNAME/1\"")
    );
    assert_eq!(in_c("ulimit -n"), "512\n");
    assert_ne!(in_c("cat /proc/1/comm"), "sleep\n", "the init is PID 1");
    assert!(in_c("cat /proc/*/comm").contains("sleep"));
    assert!(in_c("cat /etc/hosts").contains("10.9.8.7\tdb.local"));
    let resolv = in_c("cat /etc/resolv.conf");
    assert!(
        resolv.contains("search corp.example")
            && resolv.contains("nameserver 10.9.8.53")
            && resolv.contains("options ndots:3"),
        "{resolv}"
    );
    // The init passes SIGTERM on: sleep dies of it (143), where a sleep
    // as PID 1 would ignore it until the SIGKILL (137).
    let o = d.cli(&["stop", "-t", "20", &cid]);
    assert!(o.status.success(), "{}", errtext(&o));
    let v: Value = serde_json::from_slice(&d.cli(&["inspect", &cid]).stdout).unwrap();
    assert_eq!(v[0]["State"]["ExitCode"], 143, "{}", v[0]["State"]);

    // An external volume that no node has: refused, nothing stored.
    std::fs::write(
        p.join("missing.yml"),
        "services:\n  m:\n    image: bb:1\n    command: [sleep, '1000']\n    volumes: [v:/v]\n    deploy:\n      restart_policy: {condition: none}\nvolumes:\n  v: {external: true, name: nothere}\n",
    )
    .unwrap();
    let o = d.cli(&[
        "deploy",
        "-d",
        "-f",
        &p.join("missing.yml").display().to_string(),
        "miss",
    ]);
    assert!(!o.status.success(), "{}", text(&o));
    assert!(
        errtext(&o).contains("service miss_m: external volume nothere exists on no node"),
        "{}",
        errtext(&o)
    );
    assert!(!text(&d.cli(&["stack", "ls"])).contains("miss"));

    // Removing the stack takes the anonymous volume along, not the others.
    assert!(d.cli(&["stack", "rm", "app", "conf"]).status.success());
    wait_for("containers to go", Duration::from_secs(30), || {
        let ps = text(&d.cli(&["ps", "-aq"]));
        if ps.trim().is_empty() {
            Ok(())
        } else {
            Err(ps)
        }
    });
    let vols = text(&d.cli(&["volume", "ls", "-q", "--local"]));
    assert!(!vols.contains("-anon-"), "{vols}");
    assert!(vols.contains("legacy_data"), "{vols}");
    assert!(opt_dir.path().join("opt.txt").exists());
}

/// The reverse-proxy pattern: a network of the cluster that two stacks
/// share by naming it `external`; a stack naming one that does not exist
/// is refused, and a network in use cannot be removed.
#[test]
fn stacks_share_an_external_network() {
    let Some(d) = Dev::start("stacks_share_an_external_network") else {
        return;
    };
    d.g.busybox_image("bb:1");
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path();
    let write = |name: &str, text: &str| {
        std::fs::write(p.join(name), text).unwrap();
        p.join(name).display().to_string()
    };
    let front = write(
        "front.yml",
        "services:\n  edge:\n    image: bb:1\n    command: [sleep, '100000']\n    stop_grace_period: 1s\n    networks: [proxy]\nnetworks:\n  proxy:\n    external: true\n",
    );
    let back = write(
        "back.yml",
        "services:
  web:
    image: bb:1
    command: [sh, -c, 'echo back > /index.html && exec httpd -f -p 8080 -h /']
    stop_grace_period: 1s
    networks:
      default: {aliases: [www]}
      shared: {aliases: [site.internal]}
  client:
    image: bb:1
    command: [sleep, '100000']
    stop_grace_period: 1s
    links: ['web:backend']
networks:
  shared:
    external: true
    name: proxy
",
    );
    // Not created yet: refused, nothing stored.
    let o = d.cli(&["deploy", "-f", &front, "front"]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(
        errtext(&o).contains("no such network: proxy (create it with gantry network create proxy)"),
        "{}",
        errtext(&o)
    );
    assert_eq!(
        text(&d.cli(&["stack", "ls", "--format", "json"])).trim(),
        "[]"
    );
    let o = d.cli(&["network", "create", "proxy"]);
    assert!(o.status.success(), "{}", errtext(&o));
    let o = d.cli(&["network", "create", "proxy"]);
    assert!(errtext(&o).contains("exists already"), "{}", errtext(&o));
    for (f, s) in [(&front, "front"), (&back, "back")] {
        let o = d.cli(&["deploy", "-f", f, s]);
        assert!(o.status.success(), "{s}: {}{}", text(&o), errtext(&o));
    }
    // The edge of one stack reaches the web of the other by its name.
    let edge = wait_for("the edge container", Duration::from_secs(30), || {
        let ps = d.cli(&["ps", "--format", "json"]);
        ids_named(&ps, "front_edge")
            .into_iter()
            .next()
            .ok_or_else(|| text(&ps))
    });
    let get = |from: &str, name: &str| {
        let o = d.cli(&[
            "exec",
            from,
            "sh",
            "-c",
            &format!("printf 'GET /index.html HTTP/1.0\\r\\n\\r\\n' | nc -w 3 {name} 8080"),
        ]);
        if text(&o).contains("back") {
            Ok(())
        } else {
            Err(format!("{}{}", text(&o), errtext(&o)))
        }
    };
    wait_for("back_web from front_edge", Duration::from_secs(30), || {
        get(&edge, "back_web")
    });
    // Its alias on the shared network answers there; its alias on its
    // stack's own network does not.
    get(&edge, "site.internal").unwrap();
    assert!(get(&edge, "www").is_err());
    // In its own stack: the alias of the default network, and the link's.
    let client = wait_for("the client container", Duration::from_secs(30), || {
        let ps = d.cli(&["ps", "--format", "json"]);
        ids_named(&ps, "back_client")
            .into_iter()
            .next()
            .ok_or_else(|| text(&ps))
    });
    wait_for("backend from back_client", Duration::from_secs(30), || {
        get(&client, "backend")
    });
    get(&client, "www").unwrap();
    assert!(get(&client, "site.internal").is_err());
    let v: Value = serde_json::from_slice(&d.cli(&["network", "inspect", "proxy"]).stdout).unwrap();
    assert_eq!(
        v[0]["services"],
        serde_json::json!(["back_web", "front_edge"])
    );
    // In use: not removed.
    let o = d.cli(&["network", "rm", "proxy"]);
    assert!(
        errtext(&o).contains("network proxy is in use by back_web, front_edge"),
        "{}",
        errtext(&o)
    );
    assert!(d.cli(&["stack", "rm", "front", "back"]).status.success());
    let o = d.cli(&["network", "rm", "proxy"]);
    assert!(o.status.success(), "{}", errtext(&o));
    assert_eq!(
        text(&d.cli(&["network", "ls", "--format", "json"])).trim(),
        "[]"
    );
    wait_for("containers to go", Duration::from_secs(30), || {
        let ps = text(&d.cli(&["ps", "-aq"]));
        if ps.trim().is_empty() {
            Ok(())
        } else {
            Err(ps)
        }
    });
}

#[test]
fn endpoint_modes_answer_a_virtual_ip_or_the_tasks() {
    let Some(d) = Dev::start("endpoint_modes_answer_a_virtual_ip_or_the_tasks") else {
        return;
    };
    d.g.busybox_image("bb:1");
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("stack.yml");
    std::fs::write(
        &file,
        "services:
  vip:
    image: bb:1
    command: [sh, -c, 'hostname > /index.html && exec httpd -f -p 8080 -h /']
    stop_grace_period: 1s
    deploy: {replicas: 2}
  rr:
    image: bb:1
    command: [sh, -c, 'hostname > /index.html && exec httpd -f -p 8080 -h /']
    stop_grace_period: 1s
    deploy: {replicas: 2, endpoint_mode: dnsrr}
  client:
    image: bb:1
    command: [sleep, '100000']
    stop_grace_period: 1s
",
    )
    .unwrap();
    let o = d.cli(&["deploy", "-f", file.to_str().unwrap(), "modes"]);
    assert!(o.status.success(), "{}{}", text(&o), errtext(&o));
    let client = wait_for("the client container", Duration::from_secs(30), || {
        let ps = d.cli(&["ps", "--format", "json"]);
        ids_named(&ps, "modes_client")
            .into_iter()
            .next()
            .ok_or_else(|| text(&ps))
    });
    let lookup = |name: &str| resolved(&d.cli(&["exec", &client, "nslookup", name]));
    wait_for("both services' tasks", Duration::from_secs(30), || {
        let (v, r) = (lookup("tasks.vip"), lookup("rr"));
        if v.len() == 2 && r.len() == 2 {
            Ok(())
        } else {
            Err(format!("{v:?} {r:?}"))
        }
    });
    // vip: one address of the pool, not a task's.
    let vip = lookup("vip");
    assert_eq!(vip.len(), 1, "{vip:?}");
    assert!(!lookup("tasks.vip").contains(&vip[0]), "{vip:?}");
    let pool = gantry_ipam::Plan::new(gantry_testkit::DEV_CIDR.parse().unwrap(), 24)
        .unwrap()
        .vip_pool();
    assert!(pool.contains(vip[0].parse().unwrap()), "{pool}: {vip:?}");
    // dnsrr: the tasks themselves.
    assert_eq!(lookup("rr"), lookup("tasks.rr"));
    // Through the virtual IP, both tasks answer over 20 connections.
    let get = "for i in $(seq 20); do printf 'GET /index.html HTTP/1.0\\r\\n\\r\\n' | nc -w 3 vip 8080 | tail -1; done";
    let o = d.cli(&["exec", &client, "sh", "-c", get]);
    let answered = distinct_lines(&o);
    assert_eq!(answered.len(), 2, "{answered:?} {}", errtext(&o));
    // Scaled to none: a connection to the virtual IP is refused at once
    // (no waiting for a timeout), and the name no longer answers it.
    assert!(d.cli(&["service", "scale", "modes_vip=0"]).status.success());
    wait_for("vip's tasks to go", Duration::from_secs(30), || {
        let t = lookup("tasks.vip");
        if t.is_empty() {
            Ok(())
        } else {
            Err(format!("{t:?}"))
        }
    });
    let o = d.cli(&[
        "exec",
        &client,
        "sh",
        "-c",
        &format!("nc -w 30 {} 8080 </dev/null", vip[0]),
    ]);
    assert!(!o.status.success(), "{}", text(&o));
    assert!(
        errtext(&o).contains("not permitted"),
        "refused (EPERM), not timed out: {}",
        errtext(&o)
    );
    assert!(lookup("vip").is_empty());
    assert!(d.cli(&["stack", "rm", "modes"]).status.success());
}
