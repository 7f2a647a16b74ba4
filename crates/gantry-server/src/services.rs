//! Services (`gantry service ls/inspect/update/rollback/rm`): views of the
//! records, and updates applied to a copy of the spec, checked as a
//! deploy's, then put (the manager pins new secrets and configs).

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::{Extension, Json};

use gantry_api::{ServiceUpdate, ServiceView};
use gantry_spec::{Mode, Service};
use gantry_store::{Command, State as Cluster, TaskRecord, TaskState};

use crate::api::{bad, not_found, Fail, JsonBody, Peer};
use crate::{now_ms, Shared};

type Sh = State<Arc<Shared>>;
type Res<T> = Result<Json<T>, Fail>;

pub(crate) fn service_view(s: &Cluster, name: &str) -> Option<ServiceView> {
    let rec = s.services.get(name)?.clone();
    let tasks: Vec<&TaskRecord> = s.tasks_of(name).collect();
    let running = tasks
        .iter()
        .filter(|t| t.desired == TaskState::Running && t.state == TaskState::Running)
        .count() as u32;
    let (mode, desired) = match rec.spec.mode {
        Mode::Replicated { replicas } => ("replicated", replicas),
        Mode::Global => (
            "global",
            tasks
                .iter()
                .filter(|t| t.desired == TaskState::Running)
                .count() as u32,
        ),
    };
    Some(ServiceView {
        mode: mode.into(),
        running,
        desired,
        image: rec.spec.image.clone(),
        record: rec,
    })
}

pub(crate) async fn ls(State(sh): Sh, Extension(peer): Extension<Peer>) -> Res<Vec<ServiceView>> {
    peer.admin()?;
    Ok(Json(sh.read(|s| {
        s.services
            .keys()
            .filter_map(|n| service_view(s, n))
            .collect()
    })))
}

pub(crate) async fn inspect(
    State(sh): Sh,
    Extension(peer): Extension<Peer>,
    Path(name): Path<String>,
) -> Res<ServiceView> {
    peer.admin()?;
    sh.read(|s| service_view(s, &name))
        .map(Json)
        .ok_or_else(|| not_found(format!("no such service: {name}")))
}

pub(crate) async fn rm(
    State(sh): Sh,
    Extension(peer): Extension<Peer>,
    Path(name): Path<String>,
) -> Res<String> {
    peer.admin()?;
    sh.apply(vec![Command::RemoveService { name: name.clone() }])?;
    Ok(Json(name))
}

fn apply_update(svc: &mut Service, u: &ServiceUpdate) -> Result<(), Fail> {
    if let Some(i) = &u.image {
        if i.trim().is_empty() {
            return Err(bad("--image must not be empty"));
        }
        svc.image = i.clone();
    }
    for k in &u.env_rm {
        svc.environment.remove(k);
    }
    svc.environment.extend(u.env_add.clone());
    for k in &u.label_rm {
        svc.labels.remove(k);
    }
    svc.labels.extend(u.label_add.clone());
    if let Some(c) = &u.command {
        svc.command = Some(c.clone());
    }
    // As Docker's: removals first, then additions (one that names a
    // source the service has replaces it).
    let edit =
        |refs: &mut Vec<gantry_spec::FileRef>, rm: &[String], add: &[gantry_spec::FileRef]| {
            refs.retain(|f| !rm.contains(&f.source) && !add.iter().any(|a| a.source == f.source));
            refs.extend(add.iter().cloned());
        };
    edit(&mut svc.secrets, &u.secret_rm, &u.secret_add);
    edit(&mut svc.configs, &u.config_rm, &u.config_add);
    if let Some(n) = u.replicas {
        match &mut svc.mode {
            Mode::Replicated { replicas } => *replicas = n,
            Mode::Global => {
                return Err(bad(
                    "scale can only be used with replicated services; this one is global",
                ))
            }
        }
    }
    Ok(())
}

pub(crate) async fn update(
    State(sh): Sh,
    Extension(peer): Extension<Peer>,
    Path(name): Path<String>,
    JsonBody(u): JsonBody<ServiceUpdate>,
) -> Res<ServiceView> {
    peer.admin()?;
    let mut failed = None;
    sh.update(|s| {
        let Some(rec) = s.services.get(&name) else {
            failed = Some(not_found(format!("no such service: {name}")));
            return Vec::new();
        };
        let mut svc = rec.spec.clone();
        if let Err(e) = apply_update(&mut svc, &u) {
            failed = Some(e);
            return Vec::new();
        }
        let short = name
            .strip_prefix(&format!("{}_", rec.stack))
            .unwrap_or(&name);
        if let Err(e) = gantry_stack::check::service(short, &svc) {
            failed = Some(bad(e));
            return Vec::new();
        }
        if let Err(e) = crate::edge::label_routes(&name, &svc) {
            failed = Some(bad(format!("service {name}: {e}")));
            return Vec::new();
        }
        vec![Command::PutService {
            name: name.clone(),
            stack: rec.stack.clone(),
            spec: Box::new(svc),
            vip: None,
        }]
    })?;
    if let Some(f) = failed {
        return Err(f);
    }
    sh.read(|s| service_view(s, &name))
        .map(Json)
        .ok_or_else(|| not_found(format!("no such service: {name}")))
}

pub(crate) async fn rollback(
    State(sh): Sh,
    Extension(peer): Extension<Peer>,
    Path(name): Path<String>,
) -> Res<ServiceView> {
    peer.admin()?;
    sh.apply(vec![Command::RollbackService {
        name: name.clone(),
        reason: "rollback requested".into(),
        at_ms: now_ms(),
    }])?;
    sh.read(|s| service_view(s, &name))
        .map(Json)
        .ok_or_else(|| not_found(format!("no such service: {name}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use gantry_spec::FileRef;

    fn r(source: &str, target: &str, version: u64) -> FileRef {
        FileRef {
            source: source.into(),
            target: target.into(),
            uid: 0,
            gid: 0,
            mode: 0o444,
            version,
        }
    }

    #[test]
    fn secret_and_config_edits_remove_then_add_as_dockers() {
        let mut svc = Service::new("db:1");
        svc.secrets = vec![r("a", "a", 3), r("b", "b", 1)];
        svc.configs = vec![r("c", "/c", 2)];
        let u = ServiceUpdate {
            secret_rm: vec!["a".into()],
            secret_add: vec![r("b", "/etc/b", 0), r("d", "d", 0)],
            config_rm: vec!["c".into(), "nothere".into()],
            ..Default::default()
        };
        apply_update(&mut svc, &u).map_err(|f| f.1).unwrap();
        // `b` is replaced (a new target; its version pinned again when the
        // spec is stored), `a` and `c` are gone, `d` is new.
        assert_eq!(svc.secrets, vec![r("b", "/etc/b", 0), r("d", "d", 0)]);
        assert!(svc.configs.is_empty());
        // Untouched references keep their pinned versions.
        let mut svc2 = Service::new("db:1");
        svc2.secrets = vec![r("a", "a", 3)];
        apply_update(&mut svc2, &ServiceUpdate::default())
            .map_err(|f| f.1)
            .unwrap();
        assert_eq!(svc2.secrets, vec![r("a", "a", 3)]);
    }
}
