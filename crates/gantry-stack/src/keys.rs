//! Every key of the compose specification in exactly one of three
//! classes: honoured; accepted with a note saying why it does not apply in
//! a cluster (a warning); refused with an error that says what to write
//! instead, at the key's line and column. A key the specification does not
//! have is a warning naming it (a typo like `replica:` must not pass in
//! silence). `x-` extensions are the user's, but for Gantry's `x-gantry`.
//!
//! [`support_table`] renders the classes as the support table of
//! `docs/compose.md`; a test keeps the two the same.

use serde_saphyr::Location;

use crate::tree::Tree;

/// What Gantry does with a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    /// It means what Compose and Swarm say it means.
    Honoured(&'static str),
    /// Accepted and ignored, with this note.
    Noted(&'static str),
    /// Refused, with what to write instead.
    Refused(&'static str),
}

use Class::{Honoured as Y, Noted as N, Refused as R};

const TOP: &[(&str, Class)] = &[
    ("services", Y("")),
    ("volumes", Y("")),
    ("networks", Y("")),
    ("version", N("obsolete in the Compose specification")),
    ("name", N("the stack's name is the one given to `gantry deploy`")),
    ("include", R("merge the files into one, or deploy them as separate stacks")),
    ("configs", Y("made (STACK_NAME unless name: is given) from a file, an environment variable or content; external ones must exist; a new value rolls the services that use it")),
    ("secrets", Y("made (STACK_NAME unless name: is given) from a file or an environment variable, sealed at rest; external ones must exist; a new value rolls the services that use it")),
    ("models", R("models are a Docker Desktop feature; not available")),
];

const SERVICE: &[(&str, Class)] = &[
    ("image", Y("validated as an image reference")),
    ("command", Y("a string is split as a shell splits words")),
    ("entrypoint", Y("a string is split as a shell splits words")),
    ("environment", Y("values may hold Swarm's templates ({{.Task.Slot}}, {{.Node.Hostname}}...)")),
    ("env_file", Y("read beside the stack file, interpolated as `.env`")),
    ("labels", Y("container labels")),
    ("ports", Y("short and long syntax, host IP, ranges, udp")),
    ("volumes", Y("short and long syntax; relative and `~` binds resolve against the stack file's folder; sources may hold Swarm's templates")),
    ("tmpfs", Y("with `size=`")),
    ("healthcheck", Y("")),
    ("depends_on", Y("start order; a dependency with a health check is waited for until healthy")),
    ("deploy", Y("")),
    ("networks", Y("")),
    ("hostname", Y("may hold Swarm's templates")),
    ("user", Y("")),
    ("working_dir", Y("")),
    ("stop_signal", Y("")),
    ("stop_grace_period", Y("")),
    ("read_only", Y("")),
    ("mem_limit", Y("as deploy.resources.limits.memory")),
    ("mem_reservation", Y("as deploy.resources.reservations.memory")),
    ("cpus", Y("as deploy.resources.limits.cpus")),
    ("pids_limit", Y("as deploy.resources.limits.pids")),
    ("scale", Y("as deploy.replicas")),
    ("restart", Y("mapped onto deploy.restart_policy (no: none; always, unless-stopped: any; on-failure[:N]), with a note")),
    ("profiles", Y("a service with profiles deploys only when one is active (`--profile`, COMPOSE_PROFILES)")),
    ("logging", Y("json-file and local: max-size and max-file; Gantry keeps every task's logs itself")),
    ("platform", Y("linux only; the architecture becomes a placement constraint")),
    ("x-gantry", Y("Gantry's own settings: strategy, rebalance, metadata")),
    ("container_name", N("a service's containers are named STACK_SERVICE.SLOT.TASK, as Swarm names them")),
    ("expose", N("documentation only: a task's ports are reachable from its networks")),
    ("build", Y("built by `gantry deploy` on a node labelled gantry.builder=true or the manager (context sent after .dockerignore), pushed to the cluster's registry and deployed by digest; a failed build deploys nothing; cache_from reads images Gantry built")),
    ("stdin_open", N("a service has no terminal")),
    ("tty", N("a service has no terminal")),
    ("pull_policy", N("nodes pull an image when they do not have it")),
    ("external_links", N("reach other stacks' services over a shared network")),
    ("domainname", N("not set in service containers")),
    ("cpu_shares", N("use deploy.resources.limits.cpus")),
    ("cpu_quota", N("use deploy.resources.limits.cpus")),
    ("cpu_period", N("use deploy.resources.limits.cpus")),
    ("cpu_count", N("use deploy.resources.limits.cpus")),
    ("cpu_percent", N("use deploy.resources.limits.cpus")),
    ("cpu_rt_runtime", N("real-time scheduling is not offered")),
    ("cpu_rt_period", N("real-time scheduling is not offered")),
    ("cpuset", N("tasks are not pinned to CPUs")),
    ("blkio_config", N("block I/O weights and limits are not applied")),
    ("oom_score_adj", N("not applied")),
    ("oom_kill_disable", N("not applied: a task over its memory limit is killed")),
    ("mem_swappiness", N("not applied")),
    ("memswap_limit", N("not applied: tasks do not swap beyond their limit")),
    ("shm_size", N("/dev/shm is the kernel's default size")),
    ("isolation", N("a Windows setting")),
    ("credential_spec", N("a Windows setting")),
    ("annotations", N("not applied")),
    ("attach", N("`gantry service logs` follows a service's output")),
    ("develop", N("a `docker compose watch` setting")),
    ("cap_add", Y("added to Docker's default set")),
    ("cap_drop", Y("removed from Docker's default set")),
    ("sysctls", Y("namespaced ones (net.*, kernel.shm*, kernel.msg*, kernel.sem, fs.mqueue.*); others refused")),
    ("ulimits", Y("")),
    ("init", Y("a small init as PID 1 passes signals on and reaps orphans")),
    ("extra_hosts", Y("lines of /etc/hosts; host-gateway is refused")),
    ("dns", Y("on the overlay, after the node's service-discovery server")),
    ("dns_search", Y("")),
    ("dns_opt", Y("")),
    ("security_opt", Y("no-new-privileges (always on) and seccomp=unconfined; apparmor and label noted; other options refused")),
    ("links", Y("SERVICE:ALIAS makes ALIAS a DNS name of SERVICE on the networks the two share (for every task on them); no start order: use depends_on")),
    ("privileged", R("not allowed in a stack: add the capabilities the program needs")),
    ("network_mode", R("tasks are on the stack's networks; publish ports with mode: host to use the node's address")),
    ("pid", R("a task has its own process namespace")),
    ("ipc", R("a task has its own IPC namespace")),
    ("uts", R("a task has its own host name")),
    ("userns_mode", R("not offered")),
    ("devices", R("host devices are not given to tasks")),
    ("device_cgroup_rules", R("host devices are not given to tasks")),
    ("gpus", R("GPUs are not offered")),
    ("cgroup", R("a task has its own cgroup namespace")),
    ("cgroup_parent", R("tasks' cgroups are Gantry's")),
    ("storage_opt", R("not offered")),
    ("runtime", R("tasks run in Gantry's own runtime")),
    ("volumes_from", R("declare the volume and mount it in both services")),
    ("extends", R("merge the services by hand, or use YAML anchors and `<<`")),
    ("configs", Y("files at their target (/NAME by default) on a tmpfs, short or long syntax")),
    ("secrets", Y("files at /run/secrets/NAME (or the target) on a tmpfs, never on a node's disk; short or long syntax")),
    ("group_add", R("not supported yet: give the user's groups in the image")),
    ("mac_address", R("task addresses are the overlay's")),
    ("label_file", R("write the labels in the file")),
    ("post_start", R("run it from the entrypoint")),
    ("pre_stop", R("handle the stop signal in the program")),
    ("provider", R("not offered")),
    ("use_api_socket", R("there is no Docker API socket on Gantry's nodes")),
    ("models", R("models are a Docker Desktop feature; not available")),
];

/// The keys of each nested mapping of a service (all honoured unless a
/// class says otherwise), by path below the service.
fn nested(path: &[&str]) -> Option<&'static [(&'static str, Class)]> {
    Some(match path {
        ["healthcheck"] => &[
            ("test", Y("")),
            ("interval", Y("")),
            ("timeout", Y("")),
            ("start_period", Y("")),
            ("start_interval", Y("between checks during start_period")),
            ("retries", Y("")),
            ("disable", Y("")),
        ],
        ["build"] => &[
            ("context", Y("a local folder (not a Git or HTTP URL)")),
            ("dockerfile", Y("")),
            ("args", Y("")),
            ("target", Y("")),
            ("secrets", Y("top-level secrets from a file or an environment variable, for RUN --mount=type=secret")),
            ("no_cache", Y("")),
            ("cache_from", Y("images built by Gantry (their recorded steps); a name the cluster's registry holds is read from it; type=registry,ref= only")),
            ("cache_to", N("every image Gantry builds records its steps (as BuildKit's inline cache); the builder's own cache stays on its host")),
            ("pull", N("base images are pulled when the builder does not have them")),
            ("labels", R("set them with LABEL in the Dockerfile")),
            ("tags", N("the image is pushed under the service's image name only")),
            ("dockerfile_inline", R("write the Dockerfile in the context")),
            ("ssh", R("SSH agent forwarding to builds is not offered")),
            ("network", R("RUN steps have the builder's network; use RUN --network=none to cut it")),
            ("extra_hosts", R("not offered in builds")),
            ("additional_contexts", R("not offered: use COPY --from an image or stage")),
            ("platforms", R("images are built for linux/amd64")),
            ("privileged", R("RUN steps are never privileged")),
            ("entitlements", R("RUN steps are never privileged")),
            ("isolation", N("a Windows setting")),
            ("shm_size", N("/dev/shm is the kernel's default size")),
            ("ulimits", R("not offered in builds")),
        ],
        ["deploy"] => &[
            ("mode", Y("replicated or global")),
            ("replicas", Y("")),
            ("resources", Y("")),
            ("placement", Y("")),
            ("restart_policy", Y("")),
            ("update_config", Y("")),
            ("rollback_config", Y("")),
            ("labels", Y("service labels")),
            ("endpoint_mode", Y("vip (the default): the name answers one virtual IP, which each connection turns into a running task's address; dnsrr: the name answers the tasks' addresses in turn")),
        ],
        ["deploy", "resources"] => &[("limits", Y("")), ("reservations", Y(""))],
        ["deploy", "resources", "limits"] => {
            &[("cpus", Y("")), ("memory", Y("")), ("pids", Y(""))]
        }
        ["deploy", "resources", "reservations"] => &[
            ("cpus", Y("")),
            ("memory", Y("")),
            ("pids", N("a reservation of processes means nothing; use limits.pids")),
            ("generic_resources", R("not offered")),
            ("devices", R("devices (GPUs) are not offered")),
        ],
        ["deploy", "placement"] => &[
            ("constraints", Y("")),
            ("preferences", Y("")),
            ("max_replicas_per_node", Y("a node takes no more of the service's tasks; the others wait, saying why")),
        ],
        ["deploy", "placement", "preferences", _] => &[("spread", Y(""))],
        ["deploy", "restart_policy"] => &[
            ("condition", Y("")),
            ("delay", Y("")),
            ("max_attempts", Y("")),
            ("window", Y("")),
        ],
        ["deploy", "update_config" | "rollback_config"] => &[
            ("parallelism", Y("")),
            ("delay", Y("")),
            ("order", Y("")),
            ("failure_action", Y("")),
            ("monitor", Y("")),
            ("max_failure_ratio", Y("")),
        ],
        ["ports", _] => &[
            ("target", Y("")),
            ("published", Y("")),
            ("protocol", Y("")),
            ("mode", Y("")),
            ("host_ip", Y("")),
            ("name", N("a name for people; not used")),
            ("app_protocol", N("a hint for people; not used")),
        ],
        ["volumes", _] => &[
            ("type", Y("volume, bind or tmpfs")),
            ("source", Y("")),
            ("target", Y("")),
            ("read_only", Y("")),
            ("volume", Y("")),
            ("bind", Y("")),
            ("tmpfs", Y("")),
            ("consistency", N("a Docker Desktop setting")),
        ],
        ["volumes", _, "volume"] => &[
            ("nocopy", Y("")),
            ("subpath", R("mount the volume and point the program at the folder")),
        ],
        ["volumes", _, "bind"] => &[
            ("propagation", Y("")),
            ("create_host_path", R("a stack's bind source must exist on the node")),
            ("selinux", N("Gantry's nodes do not relabel for SELinux")),
        ],
        ["volumes", _, "tmpfs"] => &[("size", Y("")), ("mode", N("tmpfs mounts are mode 1777"))],
        ["depends_on", _] => &[
            ("condition", Y("service_healthy and service_started wait for the dependency")),
            ("restart", N("a dependency's restart does not restart its dependents")),
            ("required", N("every dependency is required")),
        ],
        ["logging"] => &[("driver", Y("")), ("options", Y(""))],
        ["secrets" | "configs", _] => &[
            ("source", Y("")),
            ("target", Y("")),
            ("uid", Y("")),
            ("gid", Y("")),
            ("mode", Y("octal, 0444 unless given")),
        ],
        ["networks", _] => &[
            ("aliases", Y("more DNS names of the service, answered on that network only")),
            ("ipv4_address", N("not applied, as in Swarm: tasks get addresses from the cluster's plan; reach them by name")),
            ("ipv6_address", N("not applied: the overlay is IPv4")),
            ("link_local_ips", R("not offered")),
            ("mac_address", R("task addresses are the overlay's")),
            ("priority", N("every network of a task is equal")),
            ("gw_priority", N("a task leaves through its node")),
            ("driver_opts", N("the overlay takes no options")),
            ("interface_name", N("interfaces are named by Gantry")),
        ],
        ["x-gantry"] => &[
            ("strategy", Y("")),
            ("rebalance", Y("")),
            ("metadata", Y("")),
        ],
        _ => return None,
    })
}

const VOLUME: &[(&str, Class)] = &[
    ("driver", Y("local only; another driver is refused by name")),
    ("driver_opts", Y("the local driver's type, o and device")),
    ("labels", Y("")),
    (
        "external",
        Y("mounted as it is, never created; on a node without it the task fails, saying so"),
    ),
    ("name", Y("the volume's name on the nodes, as given")),
    (
        "x-gantry",
        Y("Gantry's own settings: size, backup, replicas"),
    ),
];

const SECRET: &[(&str, Class)] = &[
    (
        "file",
        Y("read by the CLI beside the stack file when it deploys"),
    ),
    ("environment", Y("the deploying CLI's variable (or .env)")),
    (
        "external",
        Y("one of the cluster's (gantry secret create); it must exist"),
    ),
    ("name", Y("its name in the cluster instead of STACK_NAME")),
    ("labels", Y("")),
    ("template_driver", R("templates are for configs")),
    ("driver", R("secrets are kept by the managers; no drivers")),
    (
        "driver_opts",
        R("secrets are kept by the managers; no drivers"),
    ),
];

const CONFIG: &[(&str, Class)] = &[
    ("file", Y("read by the CLI beside the stack file when it deploys")),
    ("environment", Y("the deploying CLI's variable (or .env)")),
    ("content", Y("")),
    ("external", Y("one of the cluster's (gantry config create); it must exist")),
    ("name", Y("its name in the cluster instead of STACK_NAME")),
    ("labels", Y("")),
    ("template_driver", Y("golang: {{ .Task.Slot }}, {{ .Node.Hostname }}, {{ env \"X\" }}, {{ secret \"x\" }}... filled for each task")),
];

const NETWORK: &[(&str, Class)] = &[
    (
        "driver",
        N("every stack network is one of Gantry's overlay networks"),
    ),
    ("driver_opts", N("the overlay takes no options")),
    ("labels", N("not kept")),
    (
        "attachable",
        N("containers outside the stack do not join stack networks"),
    ),
    (
        "name",
        Y("the network's name in the cluster instead of STACK_NETWORK; stacks that give the same name share the network, as on one Compose host"),
    ),
    (
        "external",
        Y("a network of the cluster (`gantry network create`), shared by the stacks that name it; it must exist"),
    ),
    (
        "internal",
        Y("a task on internal networks only reaches nothing outside the overlay, and nothing outside reaches it"),
    ),
    (
        "ipam",
        R("addresses come from the cluster's own address plan"),
    ),
    ("enable_ipv6", R("the overlay is IPv4")),
    ("enable_ipv4", N("the overlay is IPv4")),
];

/// What the key checks found: warnings, or the first refused key.
pub(crate) fn check(doc: &Tree) -> Result<Vec<String>, (Location, String)> {
    let mut out = Vec::new();
    let Tree::Map(top) = doc else {
        return Ok(out);
    };
    for (k, v) in top {
        let key = k.value.as_str();
        if key.starts_with("x-") {
            continue;
        }
        match class(TOP, key) {
            None => {
                out.push(format!("unknown key {key} is ignored"));
                continue;
            }
            Some(c) => apply(c, key, k, &mut out)?,
        }
        let Tree::Map(entries) = v else { continue };
        for (name, body) in entries {
            let Tree::Map(fields) = body else { continue };
            let (table, what) = match key {
                "services" => (SERVICE, "services"),
                "volumes" => (VOLUME, "volumes"),
                "networks" => (NETWORK, "networks"),
                "secrets" => (SECRET, "secrets"),
                "configs" => (CONFIG, "configs"),
                _ => continue,
            };
            for (fk, fv) in fields {
                let f = fk.value.as_str();
                let shown = format!("{what}.{}.{f}", name.value);
                if f.starts_with("x-") && f != "x-gantry" {
                    continue;
                }
                match class(table, f) {
                    None => out.push(format!("unknown key {shown} is ignored")),
                    Some(c) => {
                        apply(c, &shown, fk, &mut out)?;
                        if what == "services" && matches!(c, Y(_)) {
                            walk(fv, &mut vec![f.to_owned()], &shown, &mut out)?;
                        }
                    }
                }
            }
        }
    }
    Ok(out)
}

fn class(table: &[(&str, Class)], key: &str) -> Option<Class> {
    table.iter().find(|(k, _)| *k == key).map(|(_, c)| *c)
}

fn apply(
    c: Class,
    shown: &str,
    at: &serde_saphyr::Spanned<String>,
    out: &mut Vec<String>,
) -> Result<(), (Location, String)> {
    match c {
        Y(_) => Ok(()),
        N(why) => {
            out.push(format!("{shown} is ignored: {why}"));
            Ok(())
        }
        R(instead) => Err((
            at.referenced,
            format!("{shown} is not supported: {instead}"),
        )),
    }
}

/// Walks a service's nested mappings below `path` (`#` stands for a list
/// index, `*` for a user-chosen name).
fn walk(
    v: &Tree,
    path: &mut Vec<String>,
    shown: &str,
    out: &mut Vec<String>,
) -> Result<(), (Location, String)> {
    match v {
        Tree::Map(map) => {
            let p: Vec<&str> = path.iter().map(String::as_str).collect();
            let table = nested(&p);
            for (k, child) in map {
                let key = k.value.as_str();
                if key.starts_with("x-") {
                    continue;
                }
                let here = format!("{shown}.{key}");
                if let Some(t) = table {
                    match class(t, key) {
                        None => {
                            out.push(format!("unknown key {here} is ignored"));
                            continue;
                        }
                        Some(c) => apply(c, &here, k, out)?,
                    }
                }
                // A mapping whose keys are names (depends_on, labels...)
                // walks its values under `*`.
                let step = if table.is_some() {
                    key.to_owned()
                } else {
                    "*".to_owned()
                };
                path.push(step);
                walk(child, path, &here, out)?;
                path.pop();
            }
        }
        Tree::Seq(items) => {
            for (i, item) in items.iter().enumerate() {
                path.push("#".into());
                walk(item, path, &format!("{shown}.{i}"), out)?;
                path.pop();
            }
        }
        _ => {}
    }
    Ok(())
}

/// The support table of `docs/compose.md`: every key with its class.
pub fn support_table() -> String {
    let mut s = String::from("| key | Gantry | note |\n|---|---|---|\n");
    let mut row = |key: String, c: &Class| {
        let (what, note) = match c {
            Y(n) => ("honoured", *n),
            N(n) => ("accepted, ignored", *n),
            R(n) => ("refused", *n),
        };
        s.push_str(&format!(
            "| `{key}` | {what} | {} |\n",
            note.replace('|', "\\|")
        ));
    };
    for (k, c) in TOP {
        row((*k).to_owned(), c);
    }
    for (k, c) in SERVICE {
        row(format!("services.*.{k}"), c);
    }
    let paths: &[&[&str]] = &[
        &["healthcheck"],
        &["deploy"],
        &["deploy", "resources", "reservations"],
        &["deploy", "placement"],
        &["ports", "#"],
        &["volumes", "#"],
        &["volumes", "#", "volume"],
        &["volumes", "#", "bind"],
        &["volumes", "#", "tmpfs"],
        &["depends_on", "*"],
        &["logging"],
        &["networks", "*"],
        &["secrets", "#"],
        &["configs", "#"],
    ];
    for p in paths {
        for (k, c) in nested(p).unwrap_or_default() {
            row(format!("services.*.{}.{k}", p.join(".")), c);
        }
    }
    for (k, c) in VOLUME {
        row(format!("volumes.*.{k}"), c);
    }
    for (k, c) in NETWORK {
        row(format!("networks.*.{k}"), c);
    }
    for (k, c) in SECRET {
        row(format!("secrets.*.{k}"), c);
    }
    for (k, c) in CONFIG {
        row(format!("configs.*.{k}"), c);
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tree(y: &str) -> Tree {
        serde_saphyr::from_str(y).unwrap()
    }

    #[test]
    fn names_unknown_and_noted_keys_and_locates_refused_ones() {
        let doc = tree(
            "services:\n  web:\n    image: x\n    replica: 3\n    container_name: w\n    deploy:\n      replicas: 2\n      placment: {}\n    ports:\n      - {target: 80, publishd: 8080}\n    depends_on:\n      db: {condition: service_healthy}\n    x-anything: 1\nx-common: {anything: true}\nvolumes:\n  data: {drivr: local}\n",
        );
        let w = check(&doc).unwrap();
        assert_eq!(
            w,
            vec![
                "unknown key services.web.replica is ignored",
                "services.web.container_name is ignored: a service's containers are named STACK_SERVICE.SLOT.TASK, as Swarm names them",
                "unknown key services.web.deploy.placment is ignored",
                "unknown key services.web.ports.0.publishd is ignored",
                "unknown key volumes.data.drivr is ignored",
            ]
        );
        let (at, msg) = check(&tree(
            "services:\n  web:\n    image: x\n    privileged: true\n",
        ))
        .unwrap_err();
        assert_eq!((at.line(), at.column()), (4, 5));
        assert!(
            msg.contains("services.web.privileged is not supported: "),
            "{msg}"
        );
        let (at, _) =
            check(&tree("services:\n  web:\n    image: x\n    deploy:\n      resources:\n        reservations:\n          devices: []\n")).unwrap_err();
        assert_eq!(at.line(), 7);
    }

    #[test]
    fn every_key_is_in_one_class_once() {
        let mut all: Vec<String> = support_table()
            .lines()
            .skip(2)
            .map(|l| l.split('|').nth(1).unwrap().trim().to_owned())
            .collect();
        let n = all.len();
        all.sort();
        all.dedup();
        // (configs and secrets stand at the top and in services.)
        assert_eq!(all.len(), n, "a key is listed twice");
    }
}
