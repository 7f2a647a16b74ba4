//! Keys the stack parser knows, for warnings that name unknown ones (a
//! typo like `replica:` must not pass in silence), and keys it knows but a
//! stack ignores, as `docker stack deploy` does.

use serde_json::Value;

/// The keys allowed in the mapping at `path` (`*` stands for a user-chosen
/// name, `#` for a list index).
fn allowed(path: &[&str]) -> Option<&'static [&'static str]> {
    Some(match path {
        [] => &[
            "version", "name", "services", "volumes", "networks", "configs", "secrets",
        ],
        ["services", _] => &[
            "image",
            "command",
            "entrypoint",
            "environment",
            "env_file",
            "labels",
            "ports",
            "volumes",
            "tmpfs",
            "healthcheck",
            "depends_on",
            "deploy",
            "networks",
            "hostname",
            "user",
            "working_dir",
            "stop_signal",
            "stop_grace_period",
            "build",
            "container_name",
            "restart",
            "x-gantry",
        ],
        ["services", _, "healthcheck"] => &[
            "test",
            "interval",
            "timeout",
            "start_period",
            "start_interval",
            "retries",
            "disable",
        ],
        ["services", _, "deploy"] => &[
            "mode",
            "replicas",
            "resources",
            "placement",
            "restart_policy",
            "update_config",
            "rollback_config",
            "labels",
            "endpoint_mode",
        ],
        ["services", _, "deploy", "resources"] => &["limits", "reservations"],
        ["services", _, "deploy", "resources", _] => &["cpus", "memory", "pids"],
        ["services", _, "deploy", "placement"] => {
            &["constraints", "preferences", "max_replicas_per_node"]
        }
        ["services", _, "deploy", "placement", "preferences", _] => &["spread"],
        ["services", _, "deploy", "restart_policy"] => {
            &["condition", "delay", "max_attempts", "window"]
        }
        ["services", _, "deploy", "update_config" | "rollback_config"] => &[
            "parallelism",
            "delay",
            "order",
            "failure_action",
            "monitor",
            "max_failure_ratio",
        ],
        ["services", _, "ports", _] => &[
            "target",
            "published",
            "protocol",
            "mode",
            "host_ip",
            "name",
            "app_protocol",
        ],
        ["services", _, "volumes", _] => &[
            "type",
            "source",
            "target",
            "read_only",
            "volume",
            "bind",
            "tmpfs",
        ],
        ["services", _, "depends_on", _] => &["condition", "restart", "required"],
        ["services", _, "x-gantry"] => &["strategy", "rebalance", "metadata"],
        ["volumes" | "networks", _] => &[
            "driver",
            "driver_opts",
            "labels",
            "external",
            "name",
            "attachable",
            "internal",
        ],
        _ => return None,
    })
}

/// Keys a stack accepts but does not act on (Swarm ignores them too).
const IGNORED: [&str; 3] = ["build", "container_name", "restart"];

/// Walks the document and returns one warning per unknown or ignored key.
pub(crate) fn warnings(doc: &Value) -> Vec<String> {
    let mut out = Vec::new();
    walk(doc, &mut Vec::new(), &mut out);
    out
}

fn walk(v: &Value, path: &mut Vec<String>, out: &mut Vec<String>) {
    match v {
        Value::Object(map) => {
            let owned = path.clone();
            let p: Vec<&str> = owned.iter().map(String::as_str).collect();
            let known = allowed(&p);
            for (k, child) in map {
                let ours = p.len() == 2 && p[0] == "services" && k == "x-gantry";
                if k.starts_with("x-") && !ours {
                    continue; // extensions are the user's business
                }
                let shown = if p.is_empty() {
                    k.clone()
                } else {
                    format!("{}.{k}", p.join("."))
                };
                match known {
                    Some(keys) if !keys.contains(&k.as_str()) => {
                        out.push(format!("unknown key {shown} is ignored"));
                        continue;
                    }
                    Some(_)
                        if p.len() == 2 && p[0] == "services" && IGNORED.contains(&k.as_str()) =>
                    {
                        out.push(format!(
                            "{shown} is not supported in a stack and is ignored"
                        ));
                        continue;
                    }
                    _ => {}
                }
                // User-chosen names become `*` in the schema path, so the
                // message keeps the real name but the lookup matches.
                path.push(k.clone());
                walk(child, path, out);
                path.pop();
            }
        }
        Value::Array(items) => {
            for item in items {
                path.push("#".into());
                walk(item, path, out);
                path.pop();
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_unknown_and_ignored_keys() {
        let doc = serde_json::json!({
            "services": {"web": {"image": "x", "replica": 3, "restart": "always",
                                 "deploy": {"replicas": 2, "placment": {}},
                                 "ports": [{"target": 80, "publishd": 8080}],
                                 "x-anything": 1}},
            "x-common": {"anything": true},
            "volumes": {"data": {"drivr": "local"}},
        });
        let w = warnings(&doc);
        assert_eq!(
            w,
            vec![
                "unknown key services.web.deploy.placment is ignored",
                "unknown key services.web.ports.#.publishd is ignored",
                "unknown key services.web.replica is ignored",
                "services.web.restart is not supported in a stack and is ignored",
                "unknown key volumes.data.drivr is ignored",
            ]
        );
    }
}
