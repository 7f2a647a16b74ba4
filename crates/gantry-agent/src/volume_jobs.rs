//! What a manager asks of this node's volumes on the peer port (manager
//! certificates only): `DELETE /volumes/NAME` removes one no container
//! uses; `POST /volumes/NAME/job` backs one up, lists its snapshots,
//! restores one, or prunes its repository ([`gantry_api::NodeVolumeJob`],
//! with the key's value, which goes no further than this process).

use std::convert::Infallible;
use std::sync::Arc;

use base64::Engine;
use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};

use crate::backup::{Consistency, Target};
use crate::peer::{status, Body};

/// The largest job a manager sends.
const MAX_JOB: usize = 256 << 10;

fn text(code: StatusCode, body: String) -> Response<Body> {
    let mut r = Response::new(
        http_body_util::Full::new(Bytes::from(body))
            .map_err(|e: Infallible| match e {})
            .boxed(),
    );
    *r.status_mut() = code;
    r
}

fn json<T: serde::Serialize>(v: &T) -> Response<Body> {
    let mut r = text(
        StatusCode::OK,
        serde_json::to_string(v).expect("answers serialise"),
    );
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    r
}

/// `/volumes/{rest}`.
pub(crate) async fn handle(
    rt: Option<Arc<gantry_runtime::Runtime>>,
    rest: &str,
    req: Request<Incoming>,
) -> Response<Body> {
    let Some(rt) = rt else {
        return status(StatusCode::NOT_FOUND);
    };
    let (name, job) = match rest.split_once('/') {
        Some((n, "job")) => (n.to_owned(), true),
        Some(_) => return status(StatusCode::NOT_FOUND),
        None => (rest.to_owned(), false),
    };
    if !gantry_api::valid_volume_name(&name) {
        return status(StatusCode::BAD_REQUEST);
    }
    match (req.method().clone(), job) {
        (hyper::Method::DELETE, false) => remove(rt, name).await,
        (hyper::Method::POST, true) => {
            let body = match http_body_util::Limited::new(req.into_body(), MAX_JOB)
                .collect()
                .await
            {
                Ok(b) => b.to_bytes(),
                Err(_) => return status(StatusCode::PAYLOAD_TOO_LARGE),
            };
            match serde_json::from_slice::<gantry_api::NodeVolumeJob>(&body) {
                Ok(j) => run(rt, &name, j).await,
                Err(e) => text(StatusCode::BAD_REQUEST, format!("volume job: {e}")),
            }
        }
        _ => status(StatusCode::METHOD_NOT_ALLOWED),
    }
}

/// Removes a volume no container here uses (409 with the reason
/// otherwise).
async fn remove(rt: Arc<gantry_runtime::Runtime>, name: String) -> Response<Body> {
    match tokio::task::spawn_blocking(move || crate::volumes::remove(&rt, &name)).await {
        Ok(Ok(())) => status(StatusCode::NO_CONTENT),
        Ok(Err(why)) => text(StatusCode::CONFLICT, why),
        Err(_) => status(StatusCode::INTERNAL_SERVER_ERROR),
    }
}

fn target(r: gantry_api::NodeRepo) -> Result<Target, String> {
    let key = base64::engine::general_purpose::STANDARD
        .decode(r.key.as_bytes())
        .map_err(|_| "the key is not base64".to_owned())?;
    Ok(Target {
        url: r.url,
        key: zeroize::Zeroizing::new(key),
        env: r.env,
    })
}

async fn run(
    rt: Arc<gantry_runtime::Runtime>,
    name: &str,
    job: gantry_api::NodeVolumeJob,
) -> Response<Body> {
    use gantry_api::NodeVolumeJob as J;
    let fail = |e: String| text(StatusCode::CONFLICT, e);
    match job {
        J::Backup {
            repo,
            host,
            no_freeze,
            pre,
            post,
        } => {
            let to = match target(repo) {
                Ok(t) => t,
                Err(e) => return text(StatusCode::BAD_REQUEST, e),
            };
            let how = Consistency {
                no_freeze,
                pre,
                post,
            };
            tracing::info!(volume = name, repo = %to.url, "backing up a volume");
            match crate::backup::backup(rt, name, &to, &how, &host).await {
                Ok(b) => json(&gantry_api::BackupDone {
                    snapshot: b.snapshot,
                    node: host,
                    frozen: b.frozen,
                }),
                Err(e) => fail(e),
            }
        }
        J::Snapshots { repo } => match target(repo) {
            Ok(t) => match crate::backup::snapshots(name, &t).await {
                Ok(list) => json(&list),
                Err(e) => fail(e),
            },
            Err(e) => text(StatusCode::BAD_REQUEST, e),
        },
        J::Restore { repo, from, to } => {
            let t = match target(repo) {
                Ok(t) => t,
                Err(e) => return text(StatusCode::BAD_REQUEST, e),
            };
            if to
                .as_deref()
                .is_some_and(|n| !gantry_api::valid_volume_name(n))
            {
                return text(StatusCode::BAD_REQUEST, "invalid volume name".into());
            }
            tracing::info!(volume = name, into = ?to, "restoring a volume");
            match crate::backup::restore(rt, name, &from, &t, to.as_deref()).await {
                Ok((snapshot, restored)) => json(&gantry_api::RestoreDone {
                    snapshot,
                    volume: to.unwrap_or_else(|| name.to_owned()),
                    node: String::new(),
                    restored,
                }),
                Err(e) => fail(e),
            }
        }
        J::Prune { repo, keep } => match target(repo) {
            Ok(t) => {
                let keep = usize::try_from(keep).unwrap_or(usize::MAX);
                match crate::backup::forget_and_prune(name, &t, keep).await {
                    Ok((forgotten, pruned)) => json(&gantry_api::PruneDone { forgotten, pruned }),
                    Err(e) => fail(e),
                }
            }
            Err(e) => text(StatusCode::BAD_REQUEST, e),
        },
    }
}
