//! `POST /v1/volumes/{name}/move`: a volume copied to another node over
//! the cluster's mutual TLS (this manager joins the sending node's
//! export to the receiving node's import), first while its services run,
//! then, with them paused, only what changed since; then it lives on the
//! new node (the state says so, and its services start there) and goes
//! from the old one. Restoring in place pauses the services the same way.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::{Extension, Json};
use gantry_api::{CopyImported, CopyListing, MoveDone, MoveRequest, NodeVolumeJob};
use gantry_store::{Command, NodeRecord};

use crate::api::{bad, Fail, Peer};
use crate::Shared;

/// How long paused services may take to stop.
const STOP_WAIT: Duration = Duration::from_secs(120);

/// How long one copy may take.
const COPY_TIMEOUT: Duration = Duration::from_secs(6 * 3600);

/// Services paused for a volume's sake, resumed when dropped (whatever
/// happened meanwhile).
pub(crate) struct Paused {
    sh: Arc<Shared>,
    pub(crate) services: Vec<String>,
    pub(crate) since: Instant,
}

impl Drop for Paused {
    fn drop(&mut self) {
        if self.services.is_empty() {
            return;
        }
        let cmds = self
            .services
            .iter()
            .map(|s| Command::PauseService {
                name: s.clone(),
                reason: None,
            })
            .collect();
        // Refused only for a service removed meanwhile.
        if let Err(e) = self.sh.apply(cmds) {
            tracing::warn!("resuming {:?}: {e}", self.services);
        }
    }
}

/// Pauses the services whose tasks on `node` mount volume `name`, and
/// waits until their containers there are gone.
pub(crate) async fn pause_users(
    sh: &Arc<Shared>,
    name: &str,
    node: &NodeRecord,
    why: &str,
) -> Result<Paused, Fail> {
    let services: Vec<String> = sh.read(|s| {
        let mut v: Vec<String> = s
            .tasks_on(&node.id)
            .filter(|t| t.desired == gantry_store::TaskState::Running)
            .map(|t| t.service.clone())
            .filter(|svc| {
                gantry_manager::volumes::users(s, name, Some(&node.id))
                    .0
                    .contains(svc)
            })
            .collect();
        v.sort();
        v.dedup();
        v
    });
    let paused = Paused {
        sh: sh.clone(),
        services: services.clone(),
        since: Instant::now(),
    };
    if services.is_empty() {
        return Ok(paused);
    }
    sh.apply(
        services
            .iter()
            .map(|s| Command::PauseService {
                name: s.clone(),
                reason: Some(why.to_owned()),
            })
            .collect(),
    )?;
    let deadline = Instant::now() + STOP_WAIT;
    loop {
        let (_, tasks) = sh.read(|s| gantry_manager::volumes::users(s, name, Some(&node.id)));
        if tasks.is_empty() {
            return Ok(paused);
        }
        if Instant::now() > deadline {
            return Err(Fail(
                StatusCode::GATEWAY_TIMEOUT,
                format!(
                    "task {} on {} did not stop within {}s",
                    tasks.join(", "),
                    node.hostname,
                    STOP_WAIT.as_secs()
                ),
            ));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// One pass: `dst` lists what it has (making the volume with `options`),
/// `src` sends what differs, `dst` takes it.
async fn copy_pass(
    sh: &Shared,
    src: &NodeRecord,
    dst: &NodeRecord,
    name: &str,
    options: &std::collections::BTreeMap<String, String>,
) -> Result<CopyImported, String> {
    let have: CopyListing = crate::volume_backups::on_node(
        sh,
        dst,
        name,
        &NodeVolumeJob::Listing {
            options: options.clone(),
        },
    )
    .await?;
    relay(sh, name, src, dst, &have, false, "import").await
}

/// The copy itself: `src` sends what differs from `have` (its users
/// frozen while it reads, with `freeze`), and this manager streams it to
/// `dst`'s `POST /volumes/NAME/{into}` (`import` into the volume,
/// `replica` into its standby copy).
pub(crate) async fn relay(
    sh: &Shared,
    name: &str,
    src: &NodeRecord,
    dst: &NodeRecord,
    have: &CopyListing,
    freeze: bool,
    into: &str,
) -> Result<CopyImported, String> {
    let err = |n: &NodeRecord, e: reqwest::Error| {
        format!(
            "{}: {}",
            n.hostname,
            gantry_image::registry::error_chain(&e)
        )
    };
    let query = if freeze { "?freeze=1" } else { "" };
    let (c, base) = crate::builds::node_client(sh, src)?;
    let out = c
        .post(format!("{base}/volumes/{name}/export{query}"))
        .json(have)
        .timeout(COPY_TIMEOUT)
        .send()
        .await
        .map_err(|e| err(src, e))?;
    if !out.status().is_success() {
        let status = out.status();
        return Err(format!(
            "{}: {status}: {}",
            src.hostname,
            out.text().await.unwrap_or_default()
        ));
    }
    let (c, base) = crate::builds::node_client(sh, dst)?;
    let resp = c
        .post(format!("{base}/volumes/{name}/{into}"))
        .body(reqwest::Body::wrap_stream(out.bytes_stream()))
        .timeout(COPY_TIMEOUT)
        .send()
        .await
        .map_err(|e| err(dst, e))?;
    if !resp.status().is_success() {
        let status = resp.status();
        return Err(format!(
            "{}: {status}: {}",
            dst.hostname,
            resp.text().await.unwrap_or_default()
        ));
    }
    resp.json().await.map_err(|e| err(dst, e))
}

/// `POST /v1/volumes/{name}/move`.
pub(crate) async fn move_volume(
    State(sh): State<Arc<Shared>>,
    Extension(peer): Extension<Peer>,
    Path(name): Path<String>,
    Json(req): Json<MoveRequest>,
) -> Result<Json<MoveDone>, Fail> {
    peer.admin()?;
    let src = crate::volume_backups::holder(&sh, &name, req.node.as_deref())?;
    let view = crate::volumes::views_of(&sh, &name)
        .into_iter()
        .find(|v| v.node == src.id)
        .ok_or_else(|| bad(format!("volume {name} is not on {}", src.hostname)))?;
    if view.options.contains_key("device") {
        return Err(bad(format!(
            "volume {name} is mounted from {}: it is not on {} to move",
            view.options["device"], src.hostname
        )));
    }
    let dst = match &req.to {
        Some(to) => crate::volume_backups::holder(&sh, &name, Some(to))?,
        None => {
            let id = sh
                .read(|s| {
                    gantry_manager::volumes::move_target(s, &name, &src.id, view.used.unwrap_or(0))
                })
                .map_err(|e| Fail(StatusCode::CONFLICT, e))?;
            sh.read(|s| s.nodes.get(&id).cloned())
                .ok_or_else(|| bad(format!("no such node: {id}")))?
        }
    };
    if dst.id == src.id {
        return Err(bad(format!("volume {name} is on {} already", src.hostname)));
    }
    if !dst.up {
        return Err(Fail(
            StatusCode::CONFLICT,
            format!("node {} is down", dst.hostname),
        ));
    }
    if crate::volumes::holders(&sh, &name)
        .iter()
        .any(|n| n.id == dst.id)
    {
        return Err(Fail(
            StatusCode::CONFLICT,
            format!("{} has a volume {name} already", dst.hostname),
        ));
    }
    let fail = |e: String| Fail(StatusCode::CONFLICT, format!("moving volume {name}: {e}"));
    tracing::info!(
        volume = name,
        from = src.hostname,
        to = dst.hostname,
        "moving a volume"
    );
    let first = copy_pass(&sh, &src, &dst, &name, &view.options)
        .await
        .map_err(fail)?;
    let paused = pause_users(
        &sh,
        &name,
        &src,
        &format!("volume {name} is moving to {}", dst.hostname),
    )
    .await?;
    let last = copy_pass(&sh, &src, &dst, &name, &view.options)
        .await
        .map_err(fail)?;
    sh.apply(vec![Command::SetVolumeHome {
        volume: name.clone(),
        node: Some(dst.id.clone()),
    }])?;
    let stopped = paused.services.clone();
    let stopped_ms = paused.since.elapsed().as_millis() as u64;
    drop(paused);
    // The old copy goes once nothing there mounts it (a service held in
    // place by something else keeps it).
    if let Err(e) = crate::volumes::remove_on(&sh, &src, &name).await {
        tracing::warn!(
            volume = name,
            node = src.hostname,
            "the moved volume's old copy stays: {e}"
        );
    }
    Ok(Json(MoveDone {
        volume: name,
        from: src.hostname,
        to: dst.hostname,
        first,
        last,
        stopped,
        stopped_ms,
    }))
}
