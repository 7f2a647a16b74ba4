//! Stacks (`gantry deploy`, `stack ls`, `stack rm`): a stack's services,
//! and the secrets and configs its file declares, put in one batch; the
//! secrets and configs a stack made go with it.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::{Path, State};
use axum::{Extension, Json};

use gantry_api::{DeployRequest, DeployResponse, StackView};
use gantry_spec::Service;
use gantry_store::{Command, FileKind, Rejected, StoreError};

use crate::api::{bad, not_found, Fail, JsonBody, Peer};
use crate::files;
use crate::Shared;

type Sh = State<Arc<Shared>>;
type Res<T> = Result<Json<T>, Fail>;

/// The label of the secrets and configs a stack made (Docker's).
pub(crate) const STACK_NAMESPACE: &str = "com.docker.stack.namespace";

/// `POST /v1/stacks/{name}`.
pub(crate) async fn deploy(
    State(sh): Sh,
    Extension(peer): Extension<Peer>,
    Path(stack): Path<String>,
    JsonBody(req): JsonBody<DeployRequest>,
) -> Res<DeployResponse> {
    peer.admin()?;
    gantry_stack::check::stack_name(&stack).map_err(bad)?;
    for short in req.services.keys() {
        gantry_stack::check::service_name(short).map_err(bad)?;
    }
    // The same checks as the CLI's: a request that did not come from it
    // gets no further.
    gantry_stack::check::deploy(&stack, req.services.iter().map(|(n, s)| (n.as_str(), s)))
        .map_err(bad)?;
    let mut made = Vec::new();
    for (kind, list) in [
        (FileKind::Secret, &req.secrets),
        (FileKind::Config, &req.configs),
    ] {
        for f in list {
            let value = zeroize::Zeroizing::new(files::check(kind, f).map_err(bad)?);
            made.push((kind, f.clone(), value));
        }
    }
    let specs: BTreeMap<String, Service> = req
        .services
        .into_iter()
        .map(|(short, svc)| (format!("{stack}_{short}"), svc))
        .collect();
    crate::edge::check_labels(specs.iter().map(|(n, s)| (n.as_str(), s))).map_err(bad)?;
    // An external volume is mounted, never made: one that no node has
    // would leave the service's tasks pending for ever.
    let missing = sh.read(|s| {
        specs.iter().find_map(|(name, spec)| {
            gantry_manager::reconcile::missing_external_volume(s, &stack, spec)
                .map(|v| (name.clone(), v))
        })
    });
    if let Some((service, v)) = missing {
        return Err(bad(format!(
            "service {service}: external volume {v} exists on no node: create it on the node that is to hold it (gantry volume create {v}), or drop external: true to have the stack make it"
        )));
    }
    let guard = sh.data_key.read().expect("data key lock");
    if guard.is_none() && !req.secrets.is_empty() {
        return Err(crate::unlock::locked());
    }
    let mut resp = DeployResponse::default();
    let stored = sh.update(|s| {
        // Secrets and configs first: the services pin their versions.
        let mut cmds: Vec<Command> = made
            .iter()
            .filter_map(|(kind, f, v)| files::put(guard.as_ref(), s, *kind, f, v))
            .collect();
        for (name, spec) in &specs {
            // As it would be stored: its secrets and configs pinned.
            let mut spec = spec.clone();
            gantry_manager::files::pin_spec(s, &cmds, &mut spec);
            match s.services.get(name) {
                None => resp.created.push(name.clone()),
                Some(old) if old.spec == spec => {
                    resp.unchanged.push(name.clone());
                    continue;
                }
                Some(_) => resp.updated.push(name.clone()),
            }
            cmds.push(Command::PutService {
                name: name.clone(),
                stack: stack.clone(),
                spec: Box::new(spec),
                vip: None,
            });
        }
        if req.prune {
            for (name, rec) in &s.services {
                if rec.stack == stack && !specs.contains_key(name) {
                    resp.removed.push(name.clone());
                    cmds.push(Command::RemoveService { name: name.clone() });
                }
            }
        }
        cmds
    });
    drop(guard);
    match stored {
        // The state refuses a service naming one that exists nowhere (the
        // batch is refused whole): say what to do.
        Err(StoreError::Rejected(Rejected::NoSuchFile(kind, name))) => Err(bad(format!(
            "the stack uses {kind} {name}, which does not exist: create it (gantry {kind} create {name} FILE), or declare it in the stack file without external: true"
        ))),
        r => {
            r?;
            Ok(Json(resp))
        }
    }
}

/// `GET /v1/stacks`.
pub(crate) async fn ls(State(sh): Sh, Extension(peer): Extension<Peer>) -> Res<Vec<StackView>> {
    peer.admin()?;
    let mut by: BTreeMap<String, usize> = BTreeMap::new();
    sh.read(|s| {
        for rec in s.services.values() {
            *by.entry(rec.stack.clone()).or_default() += 1;
        }
    });
    Ok(Json(
        by.into_iter()
            .map(|(name, services)| StackView { name, services })
            .collect(),
    ))
}

/// `DELETE /v1/stacks/{name}`: its services, and the secrets and configs
/// it made that no other stack's service uses.
pub(crate) async fn rm(
    State(sh): Sh,
    Extension(peer): Extension<Peer>,
    Path(stack): Path<String>,
) -> Res<Vec<String>> {
    peer.admin()?;
    let mut removed = Vec::new();
    sh.update(|s| {
        let mut cmds: Vec<Command> = s
            .services
            .values()
            .filter(|r| r.stack == stack)
            .map(|r| {
                removed.push(r.name.clone());
                Command::RemoveService {
                    name: r.name.clone(),
                }
            })
            .collect();
        let ours = |labels: &BTreeMap<String, String>| {
            labels.get(STACK_NAMESPACE).is_some_and(|n| *n == stack)
        };
        let free = |kind: FileKind, name: &str| {
            s.file_users(kind, name)
                .iter()
                .all(|u| s.services.get(u).is_some_and(|r| r.stack == stack))
        };
        for r in s.secrets.values() {
            if ours(&r.meta.labels) && free(FileKind::Secret, &r.meta.name) {
                cmds.push(Command::RemoveSecret {
                    name: r.meta.name.clone(),
                });
            }
        }
        for r in s.configs.values() {
            if ours(&r.meta.labels) && free(FileKind::Config, &r.meta.name) {
                cmds.push(Command::RemoveConfig {
                    name: r.meta.name.clone(),
                });
            }
        }
        cmds
    })?;
    if removed.is_empty() {
        return Err(not_found(format!("no such stack: {stack}")));
    }
    Ok(Json(removed))
}
