//! Secrets and configs on the dev server (a manager and an agent in one
//! process on this host): created from a file or standard input, listed
//! and inspected without a secret's value, changed with a new version,
//! refused when in use or malformed, and sealed in the store: a canary
//! value is nowhere in the manager's data dir, its events or its answers.

mod common;

use common::cluster::*;
use common::*;
use std::time::Duration;

use serde_json::Value;

const CANARY: &str = "canary-5e1f0c2d9b s3cret #42";

/// Every file under `dir` that holds `needle`.
fn holding(dir: &std::path::Path, needle: &[u8]) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if let Ok(b) = std::fs::read(&p) {
                if b.windows(needle.len()).any(|w| w == needle) {
                    out.push(p.display().to_string());
                }
            }
        }
    }
    out
}

#[test]
fn secrets_are_sealed_and_never_answered_back() {
    let Some(d) = Dev::start("secrets_are_sealed_and_never_answered_back") else {
        return;
    };
    // From standard input.
    let o = d.cli_with_input(
        &["secret", "create", "--label", "team=db", "db_password", "-"],
        CANARY.as_bytes(),
    );
    assert!(o.status.success(), "{}", errtext(&o));
    assert_eq!(text(&o).trim(), "db_password");
    // From a file: a config, whose value inspect shows.
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("app.conf");
    std::fs::write(&conf, "listen 8080\n").unwrap();
    let o = d.cli(&["config", "create", "app_conf", conf.to_str().unwrap()]);
    assert!(o.status.success(), "{}", errtext(&o));

    let ls = d.cli(&["secret", "ls"]);
    assert!(text(&ls).contains("db_password"), "{}", text(&ls));
    let v: Value =
        serde_json::from_slice(&d.cli(&["secret", "inspect", "db_password"]).stdout).unwrap();
    assert_eq!(v[0]["version"], 1);
    assert_eq!(v[0]["labels"]["team"], "db");
    assert!(v[0].get("data").is_none(), "{v}");
    let v: Value =
        serde_json::from_slice(&d.cli(&["config", "inspect", "app_conf"]).stdout).unwrap();
    assert_eq!(v[0]["data"], "bGlzdGVuIDgwODAK");

    // The same value again: nothing changes; a new one: version 2.
    let secret_file = dir.path().join("pw");
    std::fs::write(&secret_file, CANARY).unwrap();
    assert!(d
        .cli(&[
            "secret",
            "create",
            "--label",
            "team=db",
            "db_password",
            secret_file.to_str().unwrap()
        ])
        .status
        .success());
    let v: Value =
        serde_json::from_slice(&d.cli(&["secret", "inspect", "db_password"]).stdout).unwrap();
    assert_eq!(v[0]["version"], 1);
    std::fs::write(&secret_file, format!("{CANARY} two")).unwrap();
    assert!(d
        .cli(&[
            "secret",
            "create",
            "db_password",
            secret_file.to_str().unwrap()
        ])
        .status
        .success());
    let v: Value =
        serde_json::from_slice(&d.cli(&["secret", "inspect", "db_password"]).stdout).unwrap();
    assert_eq!(v[0]["version"], 2);

    // Bad input: a clear error, nothing stored.
    let empty = dir.path().join("empty");
    std::fs::write(&empty, "").unwrap();
    let big = dir.path().join("big");
    std::fs::write(&big, vec![b'x'; 600 * 1024]).unwrap();
    for (args, want) in [
        (
            vec![
                "secret",
                "create",
                "bad/name",
                secret_file.to_str().unwrap(),
            ],
            "invalid secret name",
        ),
        (
            vec!["secret", "create", "e", empty.to_str().unwrap()],
            "value is empty",
        ),
        (
            vec!["secret", "create", "b", big.to_str().unwrap()],
            "larger than",
        ),
        (
            vec!["secret", "create", "n", "/nonexistent/file"],
            "/nonexistent/file",
        ),
        (
            vec!["secret", "inspect", "nothere"],
            "no such secret: nothere",
        ),
        (vec!["config", "rm", "nothere"], "no such config: nothere"),
    ] {
        let o = d.cli(&args);
        assert!(!o.status.success(), "{args:?}");
        assert!(errtext(&o).contains(want), "{args:?}: {}", errtext(&o));
    }
    let names = text(&d.cli(&["secret", "ls", "-q"]));
    assert_eq!(names.trim(), "db_password");

    // The canary is nowhere in clear: not in the manager's data dir (the
    // store, its log), not in events, not in any answer.
    let found = holding(d.g.data.path(), CANARY.as_bytes());
    assert!(found.is_empty(), "in clear in {found:?}");
    // (The search does find what the store holds in clear: the name.)
    let named = holding(d.g.data.path(), b"\"db_password\"");
    assert!(named.iter().any(|p| p.ends_with("state.redb")), "{named:?}");
    let ev = text(&d.cli(&["events", "--since", "10m", "--no-follow"]));
    assert!(ev.contains("secret") && !ev.contains("canary"), "{ev}");
    let all = format!(
        "{}{}",
        text(&d.cli(&["secret", "ls", "--format", "json"])),
        text(&d.cli(&["secret", "inspect", "db_password"]))
    );
    assert!(!all.contains("canary"), "{all}");
    // Without autolock there is no unlock key to rotate.
    let o = d.cli(&["unlock-key", "--rotate"]);
    assert!(!o.status.success());
    assert!(errtext(&o).contains("autolock is off"), "{}", errtext(&o));
    // The data key is its own file, private.
    let key = d.g.data.path().join("manager/data.key");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&key).unwrap().permissions().mode() & 0o777,
        0o600
    );

    // Removed: gone.
    for kind in ["secret", "config"] {
        let name = if kind == "secret" {
            "db_password"
        } else {
            "app_conf"
        };
        let o = d.cli(&[kind, "rm", name]);
        assert!(o.status.success(), "{}", errtext(&o));
    }
    assert_eq!(text(&d.cli(&["secret", "ls", "-q"])).trim(), "");
}

/// `gantry unlock` with `key` on standard input.
fn unlock(d: &Dev, key: &str) -> std::process::Output {
    d.cli_with_input(&["unlock"], format!("{key}\n").as_bytes())
}

#[test]
fn an_autolocked_manager_serves_secrets_only_once_unlocked() {
    let Some(mut d) = Dev::start_with(
        "an_autolocked_manager_serves_secrets_only_once_unlocked",
        &["--autolock"],
    ) else {
        return;
    };
    // The unlock key is shown once, at the start that turned autolock on.
    let out = d.stdout();
    let key = out
        .lines()
        .find(|l| l.starts_with("GKEY-1-"))
        .unwrap_or_else(|| panic!("no unlock key shown: {out}"))
        .to_owned();
    let dir = tempfile::tempdir().unwrap();
    let value = dir.path().join("v");
    std::fs::write(&value, CANARY).unwrap();
    let create = |d: &Dev| d.cli(&["secret", "create", "api_key", value.to_str().unwrap()]);
    assert!(create(&d).status.success());
    // At rest the data key is only sealed; nothing holds the unlock key.
    let manager = d.g.data.path().join("manager");
    assert!(!manager.join("data.key").exists());
    assert!(manager.join("data.key.locked").exists());
    assert!(holding(d.g.data.path(), key.as_bytes()).is_empty());

    // Restarted (autolock stays on without the flag): locked.
    d.restart(&[]);
    assert_eq!(
        d.stdout().matches("GKEY-1-").count(),
        1,
        "a key shown again"
    );
    let o = create(&d);
    assert!(!o.status.success());
    assert!(
        errtext(&o).contains(
            "the manager is locked (autolock): give it its unlock key with gantry unlock"
        ),
        "{}",
        errtext(&o)
    );
    // What needs no key still answers.
    assert!(text(&d.cli(&["secret", "ls", "-q"])).contains("api_key"));
    for (bad, want) in [
        (
            "GKEY-1-AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
            "wrong unlock key",
        ),
        ("not a key", "unlock key (GKEY-1-...)"),
    ] {
        let o = unlock(&d, bad);
        assert!(!o.status.success(), "{bad}");
        assert!(errtext(&o).contains(want), "{bad}: {}", errtext(&o));
    }
    // A task that starts while the manager is locked cannot have its
    // secret: it fails, saying why (and nothing else of it runs).
    d.g.busybox_image("bb:1");
    let stack = dir.path().join("s.yml");
    std::fs::write(
        &stack,
        "services:\n  app:\n    image: bb:1\n    command: [sleep, '100000']\n    stop_grace_period: 1s\n    secrets: [{source: api_key}]\n    deploy:\n      restart_policy: {condition: none}\nsecrets:\n  api_key: {external: true}\n",
    )
    .unwrap();
    let o = d.cli(&["deploy", "-d", "-f", stack.to_str().unwrap(), "lk"]);
    assert!(o.status.success(), "{}", errtext(&o));
    let ps = |d: &Dev| text(&d.cli(&["service", "ps", "lk_app", "--format", "json"]));
    wait_for(
        "the locked task to fail",
        std::time::Duration::from_secs(30),
        || {
            let out = ps(&d);
            if out.contains("the manager is locked (gantry unlock)") {
                Ok(())
            } else {
                Err(out)
            }
        },
    );
    let o = unlock(&d, &key);
    assert!(o.status.success(), "{}", errtext(&o));
    // Unlocked: a new task gets the secret, and one more, added as
    // Docker's --secret-add does.
    let o = d.cli(&[
        "service",
        "update",
        "-d",
        "--secret-add",
        "source=api_key,target=/etc/api_key,uid=5,gid=6,mode=0400",
        "lk_app",
    ]);
    assert!(o.status.success(), "{}", errtext(&o));
    wait_for(
        "the task to run",
        std::time::Duration::from_secs(30),
        || {
            let out = ps(&d);
            let tasks: Value = serde_json::from_str(&out).map_err(|e| e.to_string())?;
            if tasks
                .as_array()
                .is_some_and(|t| t.iter().any(|t| t["state"] == "running"))
            {
                Ok(())
            } else {
                Err(out)
            }
        },
    );
    let id = text(&d.cli(&["ps", "-q"])).trim().to_owned();
    let o = d.cli(&["exec", &id, "stat", "-c", "%a %u %g", "/etc/api_key"]);
    assert_eq!(text(&o), "400 5 6\n", "{}", errtext(&o));
    let o = d.cli(&["exec", &id, "cat", "/etc/api_key"]);
    assert_eq!(text(&o), CANARY);
    assert!(d.cli(&["stack", "rm", "lk"]).status.success());
    // Unlocked: the same value again opens the old one and changes nothing.
    assert!(create(&d).status.success());
    let v: Value =
        serde_json::from_slice(&d.cli(&["secret", "inspect", "api_key"]).stdout).unwrap();
    assert_eq!(v[0]["version"], 1, "{v}");
    assert!(holding(d.g.data.path(), CANARY.as_bytes()).is_empty());

    // A new unlock key: shown once; after a restart the old one no longer
    // unlocks, the new one does.
    let o = d.cli(&["unlock-key"]);
    assert!(!o.status.success());
    assert!(errtext(&o).contains("--rotate"), "{}", errtext(&o));
    let o = d.cli(&["unlock-key", "--rotate", "-q"]);
    assert!(o.status.success(), "{}", errtext(&o));
    let new_key = text(&o).trim().to_owned();
    assert!(new_key.starts_with("GKEY-1-") && new_key != key);
    assert!(holding(d.g.data.path(), new_key.as_bytes()).is_empty());
    d.restart(&[]);
    let o = unlock(&d, &key);
    assert!(!o.status.success());
    assert!(errtext(&o).contains("wrong unlock key"), "{}", errtext(&o));
    let o = unlock(&d, &new_key);
    assert!(o.status.success(), "{}", errtext(&o));
    assert!(create(&d).status.success());
}

/// Every file under `dir`, on `dir`'s own filesystem (what is written to
/// its disk; a tmpfs mounted below is memory), that holds `needle`.
fn on_disk_holding(dir: &std::path::Path, needle: &[u8]) -> Vec<String> {
    use std::os::unix::fs::MetadataExt;
    let dev = std::fs::metadata(dir).unwrap().dev();
    let mut out = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            let Ok(m) = std::fs::symlink_metadata(&p) else {
                continue;
            };
            if m.dev() != dev {
                continue;
            }
            if m.is_dir() {
                stack.push(p);
            } else if m.is_file() {
                if let Ok(b) = std::fs::read(&p) {
                    if b.windows(needle.len()).any(|w| w == needle) {
                        out.push(p.display().to_string());
                    }
                }
            }
        }
    }
    out
}

/// A node's assignment stream as the node gets it, for a few seconds,
/// with its own certificate (which takes the stream over from its agent
/// meanwhile; the agent connects again).
fn node_stream(cl: &Cluster, i: usize) -> Vec<u8> {
    let id: Value = serde_json::from_slice(
        &std::fs::read(cl.agents[i].data.path().join("agent/identity.json")).unwrap(),
    )
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    for k in ["ca_pem", "cert_pem", "key_pem"] {
        std::fs::write(dir.path().join(k), id[k].as_str().unwrap()).unwrap();
    }
    let p = |k: &str| dir.path().join(k).display().to_string();
    let o = cl.lan.hosts[0]
        .command("curl")
        .args(["-sS", "-N", "--max-time", "4", "--cacert", &p("ca_pem")])
        .args(["--cert", &p("cert_pem"), "--key", &p("key_pem")])
        .arg(format!("https://{}/v1/agent/watch", cl.manager_addr()))
        .output()
        .unwrap();
    assert!(!o.stdout.is_empty(), "no stream: {}", errtext(&o));
    o.stdout
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// The stack of the delivery test: a database-style service on node-1
/// that reads its password, an API key and a templated config; another
/// service on node-2 that uses none.
fn db_stack(image: &str, dir: &std::path::Path) -> String {
    format!(
        r#"services:
  db:
    image: {image}
    command: ["sh", "-c", "exec httpd -f -p 8080 -h /"]
    stop_grace_period: 1s
    healthcheck:
      test: ["CMD", "grep", "-q", "good", "/run/secrets/db_password"]
      interval: 1s
      retries: 2
    secrets:
      - db_password
      - source: api_key
        target: /etc/keys/api
        uid: "999"
        gid: "998"
        mode: 0400
    configs:
      - source: app
        target: /etc/app.conf
        uid: "999"
        gid: "998"
        mode: 0440
    deploy:
      placement: {{constraints: ["node.hostname == node-1"]}}
      update_config: {{failure_action: rollback, monitor: 4s}}
  other:
    image: {image}
    command: ["sh", "-c", "exec httpd -f -p 8080 -h /"]
    stop_grace_period: 1s
    deploy:
      placement: {{constraints: ["node.hostname == node-2"]}}
      labels:
        gantry.http.host: other.shop.test
        gantry.http.port: "8080"
secrets:
  db_password:
    file: {dir}/db_password
  api_key:
    environment: GANTRY_TEST_API_KEY
configs:
  app:
    content: "host={{{{ .Node.Hostname }}}} slot={{{{ .Task.Slot }}}} pw={{{{ secret \"db_password\" }}}}"
    template_driver: golang
"#,
        dir = dir.display()
    )
}

#[test]
fn secrets_reach_only_their_tasks_in_memory_and_roll_when_they_change() {
    let Some(mut cl) = Cluster::new(
        "secrets_reach_only_their_tasks_in_memory_and_roll_when_they_change",
        2,
    ) else {
        return;
    };
    // Every crate at debug: no log line at any level may hold a value.
    cl.log_filter = Some("debug");
    cl.kill_manager();
    cl.start_manager();
    cl.start_agent(0);
    cl.start_agent(1);
    let src = tempfile::tempdir().unwrap();
    let mut value = format!("good {CANARY}").into_bytes();
    value.extend_from_slice(b"\x00\xff\n");
    std::fs::write(src.path().join("db_password"), &value).unwrap();
    let stack_file = cl.logs.path().join("shop.yml");
    std::fs::write(&stack_file, db_stack(&cl.image, src.path())).unwrap();
    let deploy = |env_key: &str| {
        cl.g.cmd_on(&cl.lan.hosts[0])
            .env("GANTRY_CONFIG_DIR", cl.cfg.path())
            .env("GANTRY_TEST_API_KEY", env_key)
            .args(["deploy", "-d", "-f", stack_file.to_str().unwrap(), "shop"])
            .output()
            .unwrap()
    };
    let o = deploy("api-key-1");
    assert!(o.status.success(), "{}", errtext(&o));
    cl.wait_running("shop_db", &[("node-1", 1)], Duration::from_secs(60));
    cl.wait_running("shop_other", &[("node-2", 1)], Duration::from_secs(60));

    // In the container: the exact bytes, owners and modes.
    let id = cl.container_of(0, "shop_db");
    let exec = |args: &[&str]| {
        let mut a = vec!["exec", id.as_str()];
        a.extend(args);
        cl.on_agent(0, &a)
    };
    assert_eq!(exec(&["cat", "/run/secrets/db_password"]).stdout, value);
    assert_eq!(text(&exec(&["cat", "/etc/keys/api"])), "api-key-1");
    let mut conf = b"host=node-1 slot=1 pw=".to_vec();
    conf.extend_from_slice(&value);
    assert_eq!(exec(&["cat", "/etc/app.conf"]).stdout, conf);
    let modes = exec(&[
        "stat",
        "-c",
        "%a %u %g",
        "/run/secrets/db_password",
        "/etc/keys/api",
        "/etc/app.conf",
    ]);
    assert_eq!(
        text(&modes),
        "444 0 0\n400 999 998\n440 999 998\n",
        "{}",
        errtext(&modes)
    );
    let w = exec(&["sh", "-c", "echo x > /run/secrets/db_password"]);
    assert!(!w.status.success(), "a secret must be read-only");

    // On the node: on a tmpfs of the container's, nowhere on disk.
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let agent_dir = cl.agents[0].data.path().display().to_string();
    assert!(
        mounts
            .lines()
            .any(|l| l.contains(&agent_dir) && l.contains("/files ") && l.contains(" - tmpfs ")),
        "no tmpfs for the container's files under {agent_dir}:\n{mounts}"
    );
    let canary = CANARY.as_bytes();
    let mut places = vec![cl.g.data.path().to_owned(), cl.logs.path().to_owned()];
    places.extend(cl.agents.iter().map(|a| a.data.path().to_owned()));
    for p in &places {
        let found = on_disk_holding(p, canary);
        assert!(found.is_empty(), "the canary is on disk in {found:?}");
    }
    // (The search does find what is on disk: the stack file names the
    // secret's file.)
    assert!(!on_disk_holding(cl.logs.path(), b"db_password").is_empty());
    // Nor in any answer or event.
    for args in [
        vec!["service", "inspect", "shop_db"],
        vec!["service", "ps", "shop_db", "--format", "json"],
        vec!["secret", "inspect", "shop_db_password"],
        vec!["config", "ls", "--format", "json"],
        vec!["events", "--since", "10m", "--no-follow"],
    ] {
        let out = cl.admin_ok(&args);
        assert!(!out.contains(CANARY), "{args:?}: {out}");
    }
    assert!(!text(&cl.on_agent(0, &["inspect", &id])).contains(CANARY));
    // Nor in metrics: the manager's cluster view and the node's own.
    for (host, addr) in [(0, "127.0.0.1:9324"), (1, "127.0.0.1:9323")] {
        let m = metrics_on(&cl.lan.hosts[host], addr);
        assert!(m.contains("gantry_") && !m.contains(CANARY), "{addr}");
    }
    // Only node-1's stream carries it (base64, as the wire has it); and
    // once node-1 is the only edge node, only its stream carries the
    // private keys of the edge certificates, which are sealed at rest.
    cl.admin_ok(&[
        "node",
        "update",
        "--label-add",
        "gantry.edge=true",
        "node-1",
    ]);
    wait_for(
        "other.shop.test's certificate",
        Duration::from_secs(30),
        || {
            let out = cl.admin_ok(&["cert", "ls", "--format", "json"]);
            if out.contains("other.shop.test") {
                Ok(())
            } else {
                Err(out)
            }
        },
    );
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD.encode(&value);
    let one = node_stream(&cl, 0);
    assert!(
        contains(&one, b64.as_bytes()),
        "node-1's stream lacks its secret"
    );
    // The certificate's key, as the edge node got it: a line of it.
    let key_line = String::from_utf8_lossy(&one)
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find_map(|v| {
            let certs = v["full"]["certs"].as_array()?.clone();
            let c = certs.iter().find(|c| c["names"][0] == "other.shop.test")?;
            Some(c["key_pem"].as_str()?.lines().nth(1)?.to_owned())
        })
        .expect("the edge node's stream lacks the certificate and its key");
    let found = on_disk_holding(cl.g.data.path(), key_line.as_bytes());
    assert!(
        found.is_empty(),
        "the certificate's key is in clear in {found:?}"
    );
    let two = node_stream(&cl, 1);
    assert!(
        !contains(&two, b64.as_bytes()) && !contains(&two, canary),
        "node-2 runs no task that uses the secret, yet its stream has it"
    );
    assert!(
        !contains(&two, key_line.as_bytes()) && !contains(&two, b"PRIVATE KEY"),
        "node-2 is no edge node, yet its stream has keys"
    );
    let two = String::from_utf8_lossy(&two);
    assert!(two.contains("shop_other"), "{two}");

    // A new value rolls the service: same name, version 2.
    let v2 = b"good two".to_vec();
    std::fs::write(src.path().join("db_password"), &v2).unwrap();
    let o = deploy("api-key-1");
    assert!(o.status.success(), "{}", errtext(&o));
    assert!(
        text(&o).contains("Updating service shop_db"),
        "{}",
        text(&o)
    );
    let sec = cl.json(&["secret", "inspect", "shop_db_password"]);
    assert_eq!(sec[0]["version"], 2);
    wait_for(
        "shop_db to roll to the new value",
        Duration::from_secs(60),
        || {
            let id = cl
                .containers(0)
                .into_iter()
                .find(|c| text(&cl.on_agent(0, &["inspect", c])).contains("shop_db"));
            let got = id.map(|c| {
                cl.on_agent(0, &["exec", &c, "cat", "/run/secrets/db_password"])
                    .stdout
            });
            if got.as_deref() == Some(&v2[..]) {
                Ok(())
            } else {
                Err(format!(
                    "{:?}",
                    got.map(|g| String::from_utf8_lossy(&g).into_owned())
                ))
            }
        },
    );
    cl.wait_running("shop_db", &[("node-1", 1)], Duration::from_secs(60));
    // The other service does not use it: untouched.
    assert_eq!(
        cl.json(&["service", "inspect", "shop_other"])[0]["version"],
        1
    );

    // A value the health check refuses: the update rolls back to the
    // previous value.
    std::fs::write(src.path().join("db_password"), b"bad three").unwrap();
    let o = deploy("api-key-1");
    assert!(o.status.success(), "{}", errtext(&o));
    wait_for(
        "the bad value to roll back",
        Duration::from_secs(90),
        || {
            let s = cl.json(&["service", "inspect", "shop_db"]);
            if s[0]["update"]["state"] == "rolled_back" {
                Ok(())
            } else {
                Err(format!("{}", s[0]["update"]))
            }
        },
    );
    cl.wait_running("shop_db", &[("node-1", 1)], Duration::from_secs(60));
    let id = cl.container_of(0, "shop_db");
    assert_eq!(
        cl.on_agent(0, &["exec", &id, "cat", "/run/secrets/db_password"])
            .stdout,
        v2
    );

    // In use: not removable, and the error names the service.
    let o = cl.admin(&["secret", "rm", "shop_db_password"]);
    assert!(!o.status.success());
    assert!(errtext(&o).contains("in use by shop_db"), "{}", errtext(&o));
    // An external secret that does not exist fails the deploy, naming it.
    let ext = cl.logs.path().join("ext.yml");
    std::fs::write(
        &ext,
        format!(
            "services:\n  a:\n    image: {}\n    secrets: [missing_pw]\nsecrets:\n  missing_pw:\n    external: true\n",
            cl.image
        ),
    )
    .unwrap();
    let o = cl.admin(&["deploy", "-d", "-f", ext.to_str().unwrap(), "ext"]);
    assert!(!o.status.success());
    assert!(
        errtext(&o).contains("secret missing_pw, which does not exist"),
        "{}",
        errtext(&o)
    );
    assert!(cl
        .admin_ok(&["stack", "ls"])
        .lines()
        .all(|l| !l.starts_with("ext")));
    // Removing the stack removes what it made, and stops the delivery.
    cl.admin_ok(&["stack", "rm", "shop"]);
    let left = cl.admin_ok(&["secret", "ls", "-q"]);
    assert!(!left.contains("shop_"), "{left}");
    wait_for("the files' tmpfs to go", Duration::from_secs(30), || {
        let m = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        if m.lines()
            .any(|l| l.contains(&agent_dir) && l.contains("/files "))
        {
            Err("still mounted".into())
        } else {
            Ok(())
        }
    });
}

#[test]
fn a_backup_starts_a_new_cluster_with_its_services_and_secrets() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("cluster.backup");
    let stack = dir.path().join("app.yml");
    let pw = dir.path().join("pw");
    std::fs::write(&pw, CANARY).unwrap();
    std::fs::write(
        &stack,
        format!(
            "services:\n  web:\n    image: bb:1\n    command: [sleep, '100000']\n    stop_grace_period: 1s\n    secrets: [pw]\n    configs: [{{source: conf, target: /etc/app.conf}}]\nsecrets:\n  pw: {{file: {}}}\nconfigs:\n  conf: {{content: \"listen 8080\"}}\n",
            pw.display()
        ),
    )
    .unwrap();
    {
        let Some(d) = Dev::start("a_backup_starts_a_new_cluster_with_its_services_and_secrets")
        else {
            return;
        };
        d.g.busybox_image("bb:1");
        let o = d.cli(&["deploy", "-d", "-f", stack.to_str().unwrap(), "app"]);
        assert!(o.status.success(), "{}", errtext(&o));
        let o = d.cli(&["network", "create", "shared"]);
        assert!(o.status.success(), "{}", errtext(&o));
        let o = d.cli(&["server", "backup", file.to_str().unwrap()]);
        assert!(o.status.success(), "{}", errtext(&o));
        assert!(
            text(&o).contains("1 services, 1 secrets, 1 configs"),
            "{}",
            text(&o)
        );
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&file).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        // Secrets stay sealed in it.
        assert!(holding(dir.path(), CANARY.as_bytes())
            .iter()
            .all(|p| p.ends_with("/pw")));
    }
    // A new manager, in a new data dir, from the backup: the same
    // services, secret (its value opens: the task reads it), config and
    // network; its old node is down and the task runs on the new one.
    let file_arg = file.to_str().unwrap().to_owned();
    let Some(d) = Dev::start_with(
        "a_backup_starts_a_new_cluster_with_its_services_and_secrets",
        &["--restore", &file_arg],
    ) else {
        return;
    };
    assert!(text(&d.cli(&["secret", "ls", "-q"])).contains("app_pw"));
    assert!(text(&d.cli(&["network", "ls"])).contains("shared"));
    d.g.busybox_image("bb:1");
    wait_for(
        "the task to run on the new node",
        std::time::Duration::from_secs(60),
        || {
            let ids = text(&d.cli(&["ps", "-q"]));
            let id = ids.split_whitespace().next().ok_or("no container")?;
            let o = d.cli(&["exec", id, "cat", "/run/secrets/pw", "/etc/app.conf"]);
            if text(&o) == format!("{CANARY}listen 8080") {
                Ok(())
            } else {
                Err(format!("{} {}", text(&o), errtext(&o)))
            }
        },
    );
    // A restore never overwrites a cluster.
    let o = d.cli(&["server", "--restore", &file_arg, "--listen", "127.0.0.1:0"]);
    assert!(!o.status.success());
    assert!(
        errtext(&o).contains("holds a cluster already"),
        "{}",
        errtext(&o)
    );
}
