//! A stack written back as a compose file (`gantry stack config`), as
//! `docker compose config` does: the Compose specification's long forms,
//! every value explicit, Gantry's own settings under `x-gantry`. Read
//! again, it gives the same stack.

use serde_json::{json, Map, Value};

use std::collections::BTreeMap;

use crate::{Mode, Mount, MountType, Service, Stack};

/// A duration in nanoseconds as compose writes it (`30s`, `1500ms`).
fn duration(ns: u64) -> String {
    const UNITS: [(u64, &str); 6] = [
        (3_600_000_000_000, "h"),
        (60_000_000_000, "m"),
        (1_000_000_000, "s"),
        (1_000_000, "ms"),
        (1_000, "us"),
        (1, "ns"),
    ];
    if ns == 0 {
        return "0s".into();
    }
    let (n, u) = UNITS
        .iter()
        .find(|(n, _)| ns % n == 0)
        .copied()
        .unwrap_or((1, "ns"));
    format!("{}{u}", ns / n)
}

/// CPUs in billionths as compose writes them (`0.5`).
fn cpus(nano: u64) -> String {
    let whole = nano / 1_000_000_000;
    let frac = nano % 1_000_000_000;
    if frac == 0 {
        return whole.to_string();
    }
    let f = format!("{frac:09}");
    format!("{whole}.{}", f.trim_end_matches('0'))
}

/// Inserts `v` under `k` unless it is null, empty or false.
fn put(m: &mut Map<String, Value>, k: &str, v: Value) {
    let empty = match &v {
        Value::Null => true,
        Value::Bool(b) => !b,
        Value::Array(a) => a.is_empty(),
        Value::Object(o) => o.is_empty(),
        _ => false,
    };
    if !empty {
        m.insert(k.to_owned(), v);
    }
}

fn mount(m: &Mount) -> Value {
    let mut o = Map::new();
    let kind = match m.kind {
        MountType::Volume => "volume",
        MountType::Bind => "bind",
        MountType::Tmpfs => "tmpfs",
    };
    o.insert("type".into(), json!(kind));
    if !m.source.is_empty() {
        o.insert("source".into(), json!(m.source));
    }
    o.insert("target".into(), json!(m.target));
    put(&mut o, "read_only", json!(m.read_only));
    if m.volume.nocopy {
        o.insert("volume".into(), json!({"nocopy": true}));
    }
    if let Some(p) = &m.propagation {
        o.insert("bind".into(), json!({"propagation": p}));
    }
    if let Some(s) = m.tmpfs_size {
        o.insert("tmpfs".into(), json!({"size": s}));
    }
    Value::Object(o)
}

fn update(u: &crate::UpdateConfig) -> Value {
    json!({
        "parallelism": u.parallelism,
        "delay": duration(u.delay_ns),
        "order": u.order,
        "failure_action": u.failure_action,
        "monitor": duration(u.monitor_ns),
        "max_failure_ratio": u.max_failure_ratio,
    })
}

fn service(s: &Service) -> Value {
    let mut o = Map::new();
    o.insert("image".into(), json!(s.image));
    if let Some(c) = &s.command {
        o.insert("command".into(), json!(c));
    }
    if let Some(e) = &s.entrypoint {
        o.insert("entrypoint".into(), json!(e));
    }
    put(&mut o, "environment", json!(s.environment));
    put(&mut o, "labels", json!(s.labels));
    let refs = |v: &[gantry_spec::FileRef]| -> Value {
        v.iter()
            .map(|f| {
                json!({
                    "source": f.source,
                    "target": f.target,
                    "uid": f.uid.to_string(),
                    "gid": f.gid.to_string(),
                    "mode": f.mode,
                })
            })
            .collect()
    };
    put(&mut o, "secrets", refs(&s.secrets));
    put(&mut o, "configs", refs(&s.configs));
    put(
        &mut o,
        "ports",
        Value::Array(
            s.ports
                .iter()
                .map(|p| {
                    let mut m = Map::new();
                    m.insert("target".into(), json!(p.target));
                    if let Some(pb) = p.published {
                        m.insert("published".into(), json!(pb));
                    }
                    m.insert("protocol".into(), json!(p.protocol));
                    m.insert(
                        "mode".into(),
                        json!(match p.mode {
                            crate::PortMode::Ingress => "ingress",
                            crate::PortMode::Host => "host",
                        }),
                    );
                    if let Some(ip) = p.host_ip {
                        m.insert("host_ip".into(), json!(ip.to_string()));
                    }
                    Value::Object(m)
                })
                .collect(),
        ),
    );
    put(
        &mut o,
        "volumes",
        Value::Array(s.volumes.iter().map(mount).collect()),
    );
    if let Some(h) = &s.healthcheck {
        o.insert(
            "healthcheck".into(),
            if h.test.first().map(String::as_str) == Some("NONE") {
                json!({"disable": true})
            } else {
                {
                    let mut m = json!({
                        "test": h.test,
                        "interval": duration(h.interval_ns),
                        "timeout": duration(h.timeout_ns),
                        "start_period": duration(h.start_period_ns),
                        "retries": h.retries,
                    });
                    if h.start_interval_ns > 0 {
                        m["start_interval"] = json!(duration(h.start_interval_ns));
                    }
                    m
                }
            },
        );
    }
    put(&mut o, "depends_on", json!(s.depends_on));
    if s.network_aliases.is_empty() {
        o.insert("networks".into(), json!(s.networks));
    } else {
        // The mapping form, which carries aliases (links were turned into
        // aliases on the linked service when the file was read).
        let nets: Map<String, Value> = s
            .networks
            .iter()
            .map(|n| match s.network_aliases.get(n) {
                Some(a) => (n.clone(), json!({ "aliases": a })),
                None => (n.clone(), Value::Null),
            })
            .collect();
        o.insert("networks".into(), Value::Object(nets));
    }
    put(&mut o, "hostname", json!(s.hostname));
    put(&mut o, "user", json!(s.user));
    put(&mut o, "working_dir", json!(s.working_dir));
    put(&mut o, "stop_signal", json!(s.stop_signal));
    o.insert(
        "stop_grace_period".into(),
        json!(duration(s.stop_grace_period_ns)),
    );
    put(&mut o, "read_only", json!(s.read_only));
    let sec = &s.security;
    put(&mut o, "cap_add", json!(sec.cap_add));
    put(&mut o, "cap_drop", json!(sec.cap_drop));
    if sec.seccomp_unconfined {
        o.insert("security_opt".into(), json!(["seccomp=unconfined"]));
    }
    put(&mut o, "sysctls", json!(sec.sysctls));
    put(
        &mut o,
        "ulimits",
        Value::Object(
            sec.ulimits
                .iter()
                .map(|(k, (soft, hard))| {
                    let n = |v: &u64| if *v == u64::MAX { json!(-1) } else { json!(v) };
                    (k.clone(), json!({"soft": n(soft), "hard": n(hard)}))
                })
                .collect(),
        ),
    );
    put(&mut o, "init", json!(sec.init));
    let r = &s.resolution;
    put(
        &mut o,
        "extra_hosts",
        json!(r
            .extra_hosts
            .iter()
            .map(|(h, a)| format!("{h}={a}"))
            .collect::<Vec<_>>()),
    );
    put(
        &mut o,
        "dns",
        json!(r.dns.iter().map(ToString::to_string).collect::<Vec<_>>()),
    );
    put(&mut o, "dns_search", json!(r.dns_search));
    put(&mut o, "dns_opt", json!(r.dns_opt));
    if s.log_max_size.is_some() || s.log_max_files.is_some() {
        let mut opts = Map::new();
        if let Some(b) = s.log_max_size {
            opts.insert("max-size".into(), json!(b.to_string()));
        }
        if let Some(n) = s.log_max_files {
            opts.insert("max-file".into(), json!(n.to_string()));
        }
        o.insert(
            "logging".into(),
            json!({"driver": "json-file", "options": opts}),
        );
    }
    let mut d = Map::new();
    match s.mode {
        Mode::Global => {
            d.insert("mode".into(), json!("global"));
        }
        Mode::Replicated { replicas } => {
            d.insert("mode".into(), json!("replicated"));
            d.insert("replicas".into(), json!(replicas));
        }
    }
    if s.endpoint_mode == gantry_spec::EndpointMode::Dnsrr {
        d.insert("endpoint_mode".into(), json!("dnsrr"));
    }
    let amounts = |a: &crate::Amounts, pids: bool| {
        let mut m = Map::new();
        if let Some(c) = a.nano_cpus {
            m.insert("cpus".into(), json!(cpus(c)));
        }
        if let Some(b) = a.memory {
            m.insert("memory".into(), json!(b.to_string()));
        }
        if let (Some(p), true) = (a.pids, pids) {
            m.insert("pids".into(), json!(p));
        }
        Value::Object(m)
    };
    let mut res = Map::new();
    put(&mut res, "limits", amounts(&s.limits, true));
    put(&mut res, "reservations", amounts(&s.reservations, false));
    put(&mut d, "resources", Value::Object(res));
    let mut placement = Map::new();
    put(&mut placement, "constraints", json!(s.constraints));
    put(
        &mut placement,
        "preferences",
        json!(s
            .spread_over
            .iter()
            .map(|l| json!({"spread": format!("node.labels.{l}")}))
            .collect::<Vec<_>>()),
    );
    put(
        &mut placement,
        "max_replicas_per_node",
        json!(s.max_replicas_per_node),
    );
    put(&mut d, "placement", Value::Object(placement));
    let rp = &s.restart_policy;
    d.insert(
        "restart_policy".into(),
        json!({
            "condition": rp.condition,
            "delay": duration(rp.delay_ns),
            "max_attempts": rp.max_attempts,
            "window": duration(rp.window_ns),
        }),
    );
    d.insert("update_config".into(), update(&s.update_config));
    d.insert("rollback_config".into(), update(&s.rollback_config));
    put(&mut d, "labels", json!(s.service_labels));
    o.insert("deploy".into(), Value::Object(d));
    let mut x = Map::new();
    if let Some(st) = s.strategy {
        x.insert(
            "strategy".into(),
            json!(match st {
                gantry_sched::Strategy::Spread => "spread",
                gantry_sched::Strategy::Binpack => "binpack",
            }),
        );
    }
    if !s.rebalance {
        x.insert("rebalance".into(), json!(false));
    }
    put(&mut x, "metadata", json!(s.metadata));
    put(&mut o, "x-gantry", Value::Object(x));
    Value::Object(o)
}

/// The stack as a compose document.
/// A `build:` in its long form.
fn build(b: &crate::Build) -> Value {
    let mut o = Map::new();
    o.insert("context".into(), json!(b.context));
    put(&mut o, "dockerfile", json!(b.dockerfile));
    put(&mut o, "args", json!(b.args));
    put(&mut o, "target", json!(b.target));
    put(
        &mut o,
        "secrets",
        json!(b.secrets.keys().collect::<Vec<_>>()),
    );
    put(&mut o, "no_cache", json!(b.no_cache));
    Value::Object(o)
}

pub(crate) fn compose(stack: &Stack) -> Value {
    let services: Map<String, Value> = stack
        .services
        .iter()
        .map(|(n, s)| {
            let mut v = service(s);
            if let (Some(b), Value::Object(o)) = (stack.builds.get(n), &mut v) {
                o.insert("build".into(), build(b));
            }
            (n.clone(), v)
        })
        .collect();
    let volumes: Map<String, Value> = stack
        .volumes
        .iter()
        .map(|(n, v)| {
            let mut o = Map::new();
            if v.external {
                o.insert("external".into(), json!(true));
            }
            put(&mut o, "name", json!(v.name));
            put(&mut o, "driver_opts", json!(v.driver_opts));
            put(&mut o, "labels", json!(v.labels));
            let mut x = Map::new();
            if let Some(b) = &v.backup {
                x.insert("backup".into(), json!(b));
            }
            if v.replicas > 1 {
                x.insert("replicas".into(), json!(v.replicas));
            }
            if !x.is_empty() {
                o.insert("x-gantry".into(), Value::Object(x));
            }
            (n.clone(), Value::Object(o))
        })
        .collect();
    let networks: Map<String, Value> = stack
        .networks
        .iter()
        .filter(|n| *n != "default")
        .map(|n| {
            let external = stack.services.values().find_map(|s| s.network_names.get(n));
            let internal = stack
                .services
                .values()
                .any(|s| s.internal_networks.contains(n));
            let own = stack
                .services
                .values()
                .find_map(|s| s.network_own_names.get(n));
            let mut v = match external {
                Some(name) => json!({"external": true, "name": name}),
                None if internal => json!({"internal": true}),
                None => json!({}),
            };
            if let Some(name) = own {
                v["name"] = json!(name);
            }
            (n.clone(), v)
        })
        .collect();
    let mut doc = Map::new();
    doc.insert("services".into(), Value::Object(services));
    put(&mut doc, "volumes", Value::Object(volumes));
    put(&mut doc, "networks", Value::Object(networks));
    let decls = |d: &BTreeMap<String, crate::FileDecl>| -> Value {
        Value::Object(
            d.iter()
                .map(|(k, v)| (k.clone(), crate::files::render(v)))
                .collect(),
        )
    };
    put(&mut doc, "secrets", decls(&stack.secrets));
    put(&mut doc, "configs", decls(&stack.configs));
    let mut doc = Value::Object(doc);
    escape(&mut doc);
    doc
}

/// Values are interpolated when the file is read: a `$` they hold is
/// written `$$`, so that it reads back as itself. (Keys are not
/// interpolated.)
fn escape(v: &mut Value) {
    match v {
        Value::String(s) if s.contains('$') => *s = s.replace('$', "$$"),
        Value::Array(a) => a.iter_mut().for_each(escape),
        Value::Object(o) => o.values_mut().for_each(escape),
        _ => {}
    }
}
