//! Cluster events, derived from the commands a batch applied: node up
//! and down, availability and labels; task state changes; service
//! creation, updates, rollout status and removal; routes, certificates,
//! secrets and configs (names and versions, never a value). They are part
//! of the replicated state: every manager records the same events, at the
//! time the leader stamped the batch with, and keeps the last
//! [`EVENTS_KEPT`] (in its snapshots too), so `gantry events --since`
//! survives restarts and changes of leader.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::{Command, FileMeta, RouteRecord, State, UpdateStatus};

/// Events the state keeps.
pub const EVENTS_KEPT: usize = 1000;

/// One event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventRecord {
    /// When the leader proposed the batch (ms since the epoch).
    pub time_ms: u64,
    /// `node`, `task`, `service`, ...
    pub kind: String,
    /// What happened (`up`, `down`, `running`, `failed`, `update`, ...).
    pub action: String,
    /// The node, task or service.
    pub id: String,
    /// More about it (`service`, `node`, `state`, `message`, ...).
    pub attributes: BTreeMap<String, String>,
}

impl State {
    /// Records the events of a batch just applied (`before` holds the
    /// entries it changed as they were), stamped `at_ms`, keeping the last
    /// [`EVENTS_KEPT`]; returns how many it recorded.
    pub fn record_events(&mut self, before: &State, cmds: &[Command], at_ms: u64) -> usize {
        let new = of(before, self, cmds);
        let n = new.len();
        for mut e in new {
            e.time_ms = at_ms;
            if self.events.len() >= EVENTS_KEPT {
                self.events.pop_front();
            }
            self.events.push_back(e);
        }
        n
    }
}

fn event(kind: &str, action: &str, id: &str, attrs: &[(&str, String)]) -> EventRecord {
    EventRecord {
        time_ms: 0,
        kind: kind.into(),
        action: action.into(),
        id: id.into(),
        attributes: attrs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), v.clone()))
            .collect::<BTreeMap<_, _>>(),
    }
}

fn state_name<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_value(v)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default()
}

/// The events of a batch, from the state before and after it.
fn of(before: &State, after: &State, cmds: &[Command]) -> Vec<EventRecord> {
    let mut out = Vec::new();
    let hostname = |id: &str| {
        after
            .nodes
            .get(id)
            .or_else(|| before.nodes.get(id))
            .map(|n| n.hostname.clone())
            .unwrap_or_default()
    };
    for cmd in cmds {
        match cmd {
            Command::PutNode(n) if !before.nodes.contains_key(&n.id) => out.push(event(
                "node",
                "join",
                &n.id,
                &[("hostname", n.hostname.clone()), ("addr", n.addr.clone())],
            )),
            Command::SetNodeUp { id, up } if before.nodes.get(id).is_some_and(|n| n.up != *up) => {
                out.push(event(
                    "node",
                    if *up { "up" } else { "down" },
                    id,
                    &[("hostname", hostname(id))],
                ));
            }
            Command::SetNodeHeld { id, held, reason }
                if before.nodes.get(id).is_some_and(|n| n.held != *held) =>
            {
                out.push(event(
                    "node",
                    if *held { "hold" } else { "release" },
                    id,
                    &[("hostname", hostname(id)), ("reason", reason.clone())],
                ));
            }
            Command::SetAvailability { id, availability } => out.push(event(
                "node",
                "update",
                id,
                &[
                    ("hostname", hostname(id)),
                    ("availability", state_name(availability)),
                ],
            )),
            Command::SetLabels { id, .. } => {
                out.push(event("node", "update", id, &[("hostname", hostname(id))]))
            }
            Command::RemoveNode { id } => {
                out.push(event("node", "remove", id, &[("hostname", hostname(id))]))
            }
            Command::PutService { name, .. } => {
                let new = after.services.get(name).map(|s| s.version);
                match before.services.get(name) {
                    None => out.push(event("service", "create", name, &[])),
                    Some(old) if Some(old.version) != new => out.push(event(
                        "service",
                        "update",
                        name,
                        &[("version", new.unwrap_or_default().to_string())],
                    )),
                    Some(_) => {}
                }
            }
            Command::SetUpdate { name, status }
                if before.services.get(name).map(|s| &s.update) != Some(status) =>
            {
                let (action, reason) = match status {
                    UpdateStatus::Completed => ("update_completed", String::new()),
                    UpdateStatus::Updating { .. } => ("update_started", String::new()),
                    UpdateStatus::Paused { reason } => ("update_paused", reason.clone()),
                    UpdateStatus::RollingBack { reason, .. } => {
                        ("rollback_started", reason.clone())
                    }
                    UpdateStatus::RolledBack { reason } => ("rollback_completed", reason.clone()),
                };
                out.push(event("service", action, name, &[("reason", reason)]));
            }
            Command::RollbackService { name, reason, .. } => out.push(event(
                "service",
                "rollback_started",
                name,
                &[("reason", reason.clone())],
            )),
            Command::RemoveService { name } => out.push(event("service", "remove", name, &[])),
            Command::PutTask(t) => {
                let old = before.tasks.get(&t.id);
                if old.map(|o| (o.state, o.desired)) != Some((t.state, t.desired)) {
                    let action = if old.is_some_and(|o| o.state != t.state) || old.is_none() {
                        state_name(&t.state)
                    } else {
                        format!("desired_{}", state_name(&t.desired))
                    };
                    out.push(event(
                        "task",
                        &action,
                        &t.id,
                        &[
                            ("service", t.service.clone()),
                            ("slot", t.slot.to_string()),
                            ("node", t.node.clone().unwrap_or_default()),
                            (
                                "hostname",
                                t.node.as_deref().map(hostname).unwrap_or_default(),
                            ),
                            ("message", t.message.clone()),
                        ],
                    ));
                }
            }
            Command::PutRoutes(r)
                if before
                    .routes
                    .get(&RouteRecord::key(&r.service, r.node.as_deref()))
                    != Some(r) =>
            {
                out.push(event(
                    "route",
                    "update",
                    &r.service,
                    &[
                        ("node", r.node.clone().unwrap_or_default()),
                        ("routes", (r.routes.len() + r.tcp.len()).to_string()),
                    ],
                ))
            }
            Command::RemoveRoutes { key } => {
                if let Some(r) = before.routes.get(key) {
                    out.push(event(
                        "route",
                        "remove",
                        &r.service,
                        &[("node", r.node.clone().unwrap_or_default())],
                    ))
                }
            }
            Command::PutCert(c) => out.push(event(
                "certificate",
                if before.certs.contains_key(&c.name) {
                    "renew"
                } else {
                    "issue"
                },
                &c.name,
                &[
                    ("source", c.source.name().to_owned()),
                    ("names", c.names.join(",")),
                ],
            )),
            Command::RemoveCert { name } => out.push(event("certificate", "remove", name, &[])),
            // Names and versions only: never a value.
            Command::PutSecret(r) => {
                let known = before.secrets.contains_key(&r.meta.name);
                out.push(file_put("secret", known, &r.meta));
            }
            Command::PutConfig(r) => {
                let known = before.configs.contains_key(&r.meta.name);
                out.push(file_put("config", known, &r.meta));
            }
            Command::RemoveSecret { name } => out.push(event("secret", "remove", name, &[])),
            Command::RemoveConfig { name } => out.push(event("config", "remove", name, &[])),
            Command::PutManifest {
                repo, digest, tag, ..
            } if !before.registry.get(repo).is_some_and(|r| {
                tag.as_ref().map_or(r.manifests.contains_key(digest), |t| {
                    r.tags.get(t) == Some(digest)
                })
            }) =>
            {
                let id = match tag {
                    Some(t) => format!("{repo}:{t}"),
                    None => format!("{repo}@{digest}"),
                };
                out.push(event("image", "push", &id, &[("digest", digest.clone())]))
            }
            Command::RemoveManifest { repo, digest } => out.push(event(
                "image",
                "delete",
                &format!("{repo}@{digest}"),
                &[("digest", digest.clone())],
            )),
            Command::RemoveTag { repo, tag } => {
                out.push(event("image", "untag", &format!("{repo}:{tag}"), &[]))
            }
            Command::PutRegistryUser(u) => out.push(event(
                "registry_user",
                if before.registry_users.contains_key(&u.name) {
                    "update"
                } else {
                    "create"
                },
                &u.name,
                &[("push", u.push.to_string())],
            )),
            Command::RemoveRegistryUser { name } => {
                out.push(event("registry_user", "remove", name, &[]))
            }
            _ => {}
        }
    }
    out
}

/// A secret or config made or given a new value: its name and version.
fn file_put(kind: &str, known: bool, m: &FileMeta) -> EventRecord {
    let action = if known { "update" } else { "create" };
    event(kind, action, &m.name, &[("version", m.version.to_string())])
}
