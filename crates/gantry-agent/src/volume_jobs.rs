//! What a manager asks of this node's volumes on the peer port (manager
//! certificates only): `DELETE /volumes/NAME` removes one no container
//! uses; `POST /volumes/NAME/job` backs one up, lists its snapshots,
//! restores one, or prunes its repository ([`gantry_api::NodeVolumeJob`],
//! with the key's value, which goes no further than this process), or
//! lists it for a copy; `POST /volumes/NAME/export` and `.../import` are
//! the two ends of a copy between nodes, which the manager joins.

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
    let (name, what) = match rest.split_once('/') {
        Some((n, w @ ("job" | "export" | "import" | "replica"))) => (n.to_owned(), w),
        Some(_) => return status(StatusCode::NOT_FOUND),
        None => (rest.to_owned(), ""),
    };
    if !gantry_api::valid_volume_name(&name) {
        return status(StatusCode::BAD_REQUEST);
    }
    match (req.method().clone(), what) {
        (hyper::Method::DELETE, "") => remove(rt, name).await,
        (hyper::Method::POST, "export") => export(rt, name, req).await,
        (hyper::Method::POST, "import") => import(rt, name, req, false).await,
        (hyper::Method::POST, "replica") => import(rt, name, req, true).await,
        (hyper::Method::POST, "job") => {
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

/// The largest listing a copy sends.
const MAX_LISTING: usize = 64 << 20;

/// The volume's folder, mounted.
fn folder(rt: &gantry_runtime::Runtime, name: &str) -> Result<std::path::PathBuf, String> {
    let v = rt.volumes().inspect(name).map_err(|e| e.to_string())?;
    if v.options.contains_key("device") {
        return Err(format!(
            "volume {name} is mounted from {}: there is nothing of it here to copy",
            v.options["device"]
        ));
    }
    rt.volumes().ensure_mounted(&v).map_err(|e| e.to_string())?;
    Ok(v.mountpoint)
}

/// `POST /volumes/NAME/export`: a tar of what differs from the listing
/// sent (see `volume_copy.rs`), streamed as it is made.
async fn export(
    rt: Arc<gantry_runtime::Runtime>,
    name: String,
    req: Request<Incoming>,
) -> Response<Body> {
    // `?freeze=1`: one moment of the volume (a replica's copy): its
    // running users frozen until every byte is read.
    let freeze = req.uri().query() == Some("freeze=1");
    let body = match http_body_util::Limited::new(req.into_body(), MAX_LISTING)
        .collect()
        .await
    {
        Ok(b) => b.to_bytes(),
        Err(_) => return status(StatusCode::PAYLOAD_TOO_LARGE),
    };
    let have: gantry_api::CopyListing = match serde_json::from_slice(&body) {
        Ok(h) => h,
        Err(e) => return text(StatusCode::BAD_REQUEST, format!("listing: {e}")),
    };
    let root = match folder(&rt, &name) {
        Ok(r) => r,
        Err(e) => return text(StatusCode::CONFLICT, e),
    };
    let frozen = if freeze {
        match crate::backup::freeze_users(&rt, &name) {
            Ok(f) => Some(f),
            Err(e) => return text(StatusCode::CONFLICT, e),
        }
    } else {
        None
    };
    let (tx, rx) = tokio::sync::mpsc::channel::<std::io::Result<Bytes>>(8);
    tokio::task::spawn_blocking(move || {
        let _frozen = frozen;
        let out = ChanWriter(tx.clone());
        let out = std::io::BufWriter::with_capacity(256 << 10, out);
        if let Err(e) = crate::volume_copy::export(&root, &have, out) {
            tracing::warn!(volume = name, "exporting a volume: {e}");
            let _ = tx.blocking_send(Err(e));
        }
    });
    let stream = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|r| (r.map(hyper::body::Frame::data), rx))
    });
    Response::new(http_body_util::StreamBody::new(stream).boxed())
}

/// Bytes written go down a channel.
struct ChanWriter(tokio::sync::mpsc::Sender<std::io::Result<Bytes>>);

impl std::io::Write for ChanWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .blocking_send(Ok(Bytes::copy_from_slice(buf)))
            .map_err(|_| std::io::Error::other("the reader went"))?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// `POST /volumes/NAME/import`: a volume made what the stream says;
/// `POST /volumes/NAME/replica`: this node's standby copy of it.
async fn import(
    rt: Arc<gantry_runtime::Runtime>,
    name: String,
    req: Request<Incoming>,
    replica: bool,
) -> Response<Body> {
    let root = if replica {
        rt.data_dir().to_owned()
    } else {
        match folder(&rt, &name) {
            Ok(r) => r,
            Err(e) => return text(StatusCode::CONFLICT, e),
        }
    };
    use futures::TryStreamExt;
    let frames = TryStreamExt::map_err(
        http_body_util::BodyStream::new(req.into_body()),
        std::io::Error::other,
    )
    .try_filter_map(|f| futures::future::ready(Ok(f.into_data().ok())));
    let reader = tokio_util::io::SyncIoBridge::new(tokio_util::io::StreamReader::new(frames));
    let n = name.clone();
    let done = tokio::task::spawn_blocking(move || {
        if replica {
            crate::replica::import(&root, &n, reader)
        } else {
            crate::volume_copy::import(&root, reader)
        }
    })
    .await;
    match done {
        Ok(Ok(d)) => json(&d),
        Ok(Err(e)) => text(StatusCode::CONFLICT, format!("volume {name}: {e}")),
        Err(_) => status(StatusCode::INTERNAL_SERVER_ERROR),
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
    let name_owned = name.to_owned();
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
        J::Listing { options } => {
            let done = tokio::task::spawn_blocking(move || {
                let vols = rt.volumes();
                let name = name_owned;
                if vols.inspect(&name).is_err() {
                    vols.create_with(&name, Default::default(), options)
                        .map_err(|e| e.to_string())?;
                }
                let root = folder(&rt, &name)?;
                crate::volume_copy::listing(&root).map_err(|e| e.to_string())
            })
            .await;
            match done {
                Ok(Ok(l)) => json(&l),
                Ok(Err(e)) => fail(e),
                Err(_) => status(StatusCode::INTERNAL_SERVER_ERROR),
            }
        }
        J::ReplicaListing => {
            let dir = rt.data_dir().to_owned();
            let n = name.to_owned();
            match tokio::task::spawn_blocking(move || crate::replica::listing(&dir, &n)).await {
                Ok(Ok(l)) => json(&l),
                Ok(Err(e)) => fail(e.to_string()),
                Err(_) => status(StatusCode::INTERNAL_SERVER_ERROR),
            }
        }
        J::DropReplica => match crate::replica::drop_copy(rt.data_dir(), name) {
            Ok(()) => json(&()),
            Err(e) => fail(e.to_string()),
        },
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
