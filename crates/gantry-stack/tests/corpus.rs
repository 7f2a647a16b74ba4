//! The corpus: compose files in the shapes of real stacks (databases with
//! init scripts, a reverse proxy on an external network, monitoring, apps
//! with relative binds and `.env`, Swarm stacks with templates and
//! placement, build-based dev stacks), each with its normalised result
//! (or its error) as a snapshot; and the same files given to Docker's own
//! CLI (`docker stack config`, no daemon needed): where Swarm defines the
//! behaviour the two agree, and each difference is one the docs list.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use gantry_stack::{parse, parse_env_file, ParseOptions};
use serde_json::{json, Value};

fn corpus() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/corpus");
    let mut v: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "yml"))
        .collect();
    v.sort();
    v
}

/// The variables of a corpus file: its `.env`, read as `.env` files are.
fn vars(file: &Path) -> BTreeMap<String, String> {
    let env = file.with_extension("env");
    match std::fs::read_to_string(&env) {
        Ok(t) => parse_env_file(&t, &BTreeMap::new())
            .unwrap()
            .into_iter()
            .collect(),
        Err(_) => BTreeMap::new(),
    }
}

/// Files are read as if they stood in /srv/stack, for user /home/user.
fn options() -> ParseOptions {
    ParseOptions {
        dir: Some("/srv/stack".into()),
        home: Some("/home/user".into()),
        ..ParseOptions::default()
    }
}

fn ours(file: &Path) -> Result<gantry_stack::Parsed, gantry_stack::StackError> {
    let name = file.file_name().unwrap().to_string_lossy().into_owned();
    let text = std::fs::read_to_string(file).unwrap();
    parse(
        &name,
        &text,
        &vars(file),
        &|_| Err("no env files in the corpus".into()),
        &options(),
    )
}

#[test]
fn every_file_of_the_corpus_normalises_as_its_snapshot() {
    let files = corpus();
    assert!(files.len() >= 60, "the corpus has {} files", files.len());
    let mut settings = insta::Settings::clone_current();
    settings.set_snapshot_path("snapshots");
    settings.set_prepend_module_to_snapshot(false);
    settings.bind(|| {
        for f in &files {
            let name = f.file_stem().unwrap().to_string_lossy().into_owned();
            let out = match ours(f) {
                Ok(p) => {
                    let mut s = String::new();
                    for w in &p.warnings {
                        s.push_str(&format!("warning: {w}\n"));
                    }
                    s.push_str(&serde_json::to_string_pretty(&p.stack).unwrap());
                    s
                }
                Err(e) => format!("error: {e}"),
            };
            insta::assert_snapshot!(name, out);
        }
    });
}

#[test]
fn what_stack_config_prints_reads_back_as_the_same_stack() {
    for f in corpus() {
        let name = f.file_stem().unwrap().to_string_lossy().into_owned();
        let Ok(first) = ours(&f) else { continue };
        let yaml = first.stack.to_yaml();
        let again = parse(
            &name,
            &yaml,
            &BTreeMap::new(),
            &|_| Err("none".into()),
            &options(),
        )
        .unwrap_or_else(|e| panic!("{name}: the printed file does not parse: {e}\n{yaml}"));
        assert_eq!(again.stack, first.stack, "{name}:\n{yaml}");
        // Variables were substituted once: a `$` left in a value is
        // written as `$$`, or it would be read as a variable again.
        assert!(
            again.warnings.iter().all(|w| !w.contains("variable")),
            "{name}: {:?}",
            again.warnings
        );
    }
}

/// Files Docker's CLI and Gantry read differently, on purpose, and why;
/// docs/compose.md lists the same differences.
const DIFFERENT: &[(&str, &str)] = &[
    (
        "compose-v2-limits",
        "Swarm's schema forbids mem_limit, cpus, scale, restart...; Gantry maps them",
    ),
    (
        "depends-on-conditions",
        "Swarm's schema takes depends_on as a list only",
    ),
    (
        "known-ignored-keys",
        "Swarm's schema forbids container_name...; Gantry notes them",
    ),
    ("nested-defaults", "Swarm's CLI lacks ${VAR:+alt}"),
    (
        "network-map-priority",
        "Swarm's schema lacks a network's priority",
    ),
    ("platform-key", "Swarm's schema lacks platform"),
    ("ports-long-syntax", "Swarm's schema lacks host_ip"),
    (
        "ports-host-ip",
        "Swarm publishes on every address and warns; Gantry honours the address",
    ),
    (
        "nextcloud-stack",
        "its 127.0.0.1 port: Swarm publishes on every address; Gantry on loopback only",
    ),
    ("profiles", "Swarm's schema lacks profiles"),
    ("resolvers", "Swarm's schema lacks dns_opt"),
    (
        "typo-keys",
        "Swarm refuses unknown keys; Gantry warns of them",
    ),
    (
        "privileged-refused",
        "Swarm ignores privileged; Gantry refuses it",
    ),
    (
        "network-mode-host",
        "Swarm ignores network_mode; Gantry refuses it",
    ),
    (
        "devices-refused",
        "Swarm ignores devices; Gantry refuses them",
    ),
    (
        "logging-syslog",
        "Swarm passes logging to the engine; Gantry keeps logs itself",
    ),
    (
        "invalid-image",
        "Swarm's CLI does not check image references; the engine refuses them later",
    ),
    (
        "volume-driver-unknown",
        "Gantry's volumes use the local driver only",
    ),
    ("engine-labels", "Gantry's nodes have one set of labels"),
    ("build-only", "a stack deploys images"),
    (
        "depends-on-cycle",
        "Swarm has no start order; Gantry refuses a cycle",
    ),
    (
        "command-list",
        "entrypoint: [] clears the image's entrypoint, as Compose says; Swarm's CLI drops it",
    ),
];

/// Docker's CLI, the peer: the client binary of this machine kind
/// (`docker stack config` needs no daemon).
fn docker() -> String {
    for p in ["/usr/local/bin/docker", "/usr/bin/docker"] {
        let ok = std::process::Command::new(p)
            .args(["stack", "config", "--help"])
            .output()
            .is_ok_and(|o| o.status.success());
        if ok {
            return p.to_owned();
        }
    }
    panic!("no Docker CLI with `stack config` on this machine (the differential test needs one)");
}

/// One service as both sides can say it.
fn comparable_ours(s: &gantry_stack::Service) -> Value {
    json!({
        "image": s.image,
        "command": s.command,
        "entrypoint": s.entrypoint,
        "environment": s.environment,
        "ports": s.ports.iter().map(|p| json!([p.target, p.published, p.protocol, format!("{:?}", p.mode).to_lowercase(), p.host_ip])).collect::<Vec<_>>(),
        "volumes": s.volumes.iter().filter(|m| !m.source.is_empty()).map(|m| json!([format!("{:?}", m.kind).to_lowercase(), m.source, m.target, m.read_only])).collect::<Vec<_>>(),
        "replicas": s.replicas(),
        "labels": s.labels,
        "deploy_labels": s.service_labels,
        "hostname": s.hostname,
        "user": s.user,
        "working_dir": s.working_dir,
        "memory": s.limits.memory,
        "cap_add": s.security.cap_add,
        "cap_drop": s.security.cap_drop,
        "sysctls": s.security.sysctls,
        "init": s.security.init,
        "max_per_node": s.max_replicas_per_node,
        "endpoint_mode": format!("{:?}", s.endpoint_mode).to_lowercase(),
        "constraints": s.constraints.iter().map(|c| c.replace(' ', "").to_lowercase()).collect::<Vec<_>>(),
        "secrets": s.secrets.iter().map(|f| json!([f.source, f.secret_path(), f.uid, f.gid, f.mode])).collect::<Vec<_>>(),
        "configs": s.configs.iter().map(|f| json!([f.source, f.config_path(), f.uid, f.gid, f.mode])).collect::<Vec<_>>(),
    })
}

fn comparable_docker(s: &Value) -> Value {
    let strs = |v: &Value| -> Option<Vec<String>> {
        match v {
            Value::Array(a) => Some(
                a.iter()
                    .map(|x| x.as_str().map_or(x.to_string(), str::to_owned))
                    .collect(),
            ),
            Value::String(x) => Some(vec![x.clone()]),
            _ => None,
        }
    };
    let map = |v: &Value| -> BTreeMap<String, String> {
        match v {
            Value::Object(m) => m
                .iter()
                .filter(|(_, v)| !v.is_null())
                .map(|(k, v)| (k.clone(), v.as_str().map_or(v.to_string(), str::to_owned)))
                .collect(),
            Value::Array(a) => a
                .iter()
                .filter_map(|e| {
                    e.as_str()?
                        .split_once('=')
                        .map(|(k, v)| (k.to_owned(), v.to_owned()))
                })
                .collect(),
            _ => BTreeMap::new(),
        }
    };
    let num = |v: &Value| v.as_u64().or_else(|| v.as_str()?.parse().ok());
    let d = &s["deploy"];
    let caps = |v: &Value| {
        strs(v)
            .unwrap_or_default()
            .iter()
            .map(|c| c.to_uppercase().trim_start_matches("CAP_").to_owned())
            .collect::<Vec<_>>()
    };
    json!({
        "image": s["image"],
        "command": strs(&s["command"]),
        "entrypoint": strs(&s["entrypoint"]),
        "environment": map(&s["environment"]),
        "ports": s["ports"].as_array().cloned().unwrap_or_default().iter().map(|p| json!([num(&p["target"]), num(&p["published"]), p["protocol"].as_str().unwrap_or("tcp"), p["mode"].as_str().unwrap_or("ingress"), p.get("host_ip")])).collect::<Vec<_>>(),
        "volumes": s["volumes"].as_array().cloned().unwrap_or_default().iter().filter(|m| m["source"].is_string()).map(|m| json!([m["type"], m["source"], m["target"], m["read_only"].as_bool().unwrap_or(false)])).collect::<Vec<_>>(),
        "replicas": if d["mode"] == "global" { None } else { Some(num(&d["replicas"]).unwrap_or(1)) },
        "labels": map(&s["labels"]),
        "deploy_labels": map(&d["labels"]),
        "hostname": s["hostname"],
        "user": s["user"],
        "working_dir": s["working_dir"],
        "memory": num(&d["resources"]["limits"]["memory"]),
        "cap_add": caps(&s["cap_add"]),
        "cap_drop": caps(&s["cap_drop"]),
        "sysctls": map(&s["sysctls"]),
        "init": s["init"].as_bool().unwrap_or(false),
        "max_per_node": num(&d["placement"]["max_replicas_per_node"]),
        "endpoint_mode": d["endpoint_mode"].as_str().unwrap_or("vip"),
        "constraints": strs(&d["placement"]["constraints"]).unwrap_or_default().iter().map(|c| c.replace(' ', "").to_lowercase()).collect::<Vec<_>>(),
        // Swarm's defaults: a secret at /run/secrets/TARGET, a config at
        // /TARGET (TARGET: the source unless given).
        "secrets": files(&s["secrets"], "/run/secrets/"),
        "configs": files(&s["configs"], "/"),
    })
}

fn files(v: &Value, under: &str) -> Vec<Value> {
    v.as_array()
        .map(|a| {
            a.iter()
                .map(|f| {
                    let source = f["source"].as_str().unwrap_or_default();
                    let target = f["target"].as_str().unwrap_or(source);
                    let path = if target.starts_with('/') {
                        target.to_owned()
                    } else {
                        format!("{under}{target}")
                    };
                    let id = |k: &str| {
                        f[k].as_str()
                            .and_then(|v| v.parse::<u32>().ok())
                            .unwrap_or(0)
                    };
                    let mode = f["mode"].as_u64().unwrap_or(0o444);
                    json!([source, path, id("uid"), id("gid"), mode])
                })
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn docker_stack_config_agrees_where_swarm_defines_the_meaning() {
    let docker = docker();
    let home = std::env::var("HOME").unwrap_or_else(|_| "/root".into());
    let mut differ = Vec::new();
    for f in corpus() {
        let name = f.file_stem().unwrap().to_string_lossy().into_owned();
        let vars = vars(&f);
        let o = std::process::Command::new(&docker)
            .args(["stack", "config", "-c"])
            .arg(&f)
            .env_clear()
            .env("HOME", &home)
            .env("PATH", "/usr/bin:/bin")
            .envs(&vars)
            .output()
            .unwrap();
        let text = std::fs::read_to_string(&f).unwrap();
        let opts = ParseOptions {
            dir: f.parent().map(Path::to_path_buf),
            home: Some(home.clone().into()),
            ..ParseOptions::default()
        };
        let mine = parse(&name, &text, &vars, &|_| Err("none".into()), &opts);
        let theirs: Option<Value> = o
            .status
            .success()
            .then(|| serde_saphyr::from_slice(&o.stdout).unwrap());
        let same = match (&mine, &theirs) {
            (Err(_), None) => true,
            (Ok(p), Some(t)) => p.stack.services.iter().all(|(n, s)| {
                let a = comparable_ours(s);
                let b = comparable_docker(&t["services"][n]);
                if a != b {
                    eprintln!("{name}/{n}:\n  gantry: {a}\n  docker: {b}");
                }
                a == b
            }),
            _ => false,
        };
        if !same {
            differ.push(name);
        }
    }
    let known: Vec<&str> = DIFFERENT.iter().map(|(n, _)| *n).collect();
    let unexpected: Vec<&String> = differ
        .iter()
        .filter(|d| !known.contains(&d.as_str()))
        .collect();
    assert!(
        unexpected.is_empty(),
        "Gantry and docker stack config differ on {unexpected:?}"
    );
    let stale: Vec<&&str> = known
        .iter()
        .filter(|k| !differ.iter().any(|d| d == *k))
        .collect();
    assert!(
        stale.is_empty(),
        "no longer different, take them off DIFFERENT: {stale:?}"
    );
}
