//! A builder node (labelled `gantry.builder=true`) takes builds a manager
//! sends it on its peer port (`POST /builds`, only from a manager's
//! certificate): the same query, secret headers and context stream as
//! the manager's `POST /v1/builds`. It builds into this node's image
//! store (as `localhost/REPO:TAG`) and answers the build's output as JSON
//! lines, ending with the manifest's digest, which the manager then
//! fetches from this node's blobs into the cluster's registry.

use std::convert::Infallible;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use gantry_api::{BuildEvent, BuildParams};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::{Request, Response, StatusCode};
use tokio::sync::mpsc;

use crate::peer::Body;

/// What a build on this node needs.
#[derive(Debug, Clone)]
pub(crate) struct Builder {
    /// The agent's data dir (its image store).
    pub(crate) data_dir: PathBuf,
    /// This program.
    pub(crate) exe: PathBuf,
    /// Registries reached over plain HTTP.
    pub(crate) insecure: Vec<String>,
}

fn json_line(e: &BuildEvent) -> Bytes {
    let mut l = serde_json::to_vec(e).unwrap_or_default();
    l.push(b'\n');
    Bytes::from(l)
}

/// Where builds run: a private directory each, emptied at start.
fn builds_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("agent/builds")
}

/// Removes what builds cut short by a crash left (contexts, secrets).
pub(crate) fn clean(data_dir: &Path) {
    let _ = std::fs::remove_dir_all(builds_dir(data_dir));
}

fn private_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
}

fn refuse(s: StatusCode, why: String) -> Response<Body> {
    let mut r = Response::new(
        http_body_util::Full::new(Bytes::from(why))
            .map_err(|e: Infallible| match e {})
            .boxed(),
    );
    *r.status_mut() = s;
    r
}

/// `POST /builds?QUERY`.
pub(crate) fn build(b: &Builder, req: Request<Incoming>) -> Response<Body> {
    let params = match BuildParams::parse(req.uri().query().unwrap_or("")) {
        Ok(p) => p,
        Err(e) => return refuse(StatusCode::BAD_REQUEST, e),
    };
    let mut secrets = Vec::new();
    for v in req.headers().get_all(gantry_api::BUILD_SECRET_HEADER) {
        match gantry_api::parse_build_secret(v.as_bytes()) {
            Ok(s) => secrets.push(s),
            Err(e) => return refuse(StatusCode::BAD_REQUEST, e),
        }
    }
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = builds_dir(&b.data_dir).join(format!("{}-{n}", std::process::id()));
    if let Err(e) = private_dir(&dir) {
        return refuse(StatusCode::INTERNAL_SERVER_ERROR, format!("build dir: {e}"));
    }
    let mut global: Vec<std::ffi::OsString> = Vec::new();
    for r in &b.insecure {
        global.extend(["--insecure-registry".into(), r.into()]);
    }
    global.extend(["--data-dir".into(), b.data_dir.clone().into()]);
    let image = format!("localhost/{}:{}", params.repo, params.tag);
    let job = gantry_image::job::Job {
        exe: b.exe.clone(),
        global,
        // No admin credential, even where this host has one: a build here
        // reaches the cluster's registry with the node's own certificate
        // (pulls only; the manager does the push).
        env: vec![
            ("GANTRY_CONFIG_DIR".into(), dir.join("no-config").into()),
            (gantry_image::job::NODE_REGISTRY_ENV.into(), "1".into()),
        ],
        image: image.clone(),
        push: false,
        dockerfile: params.dockerfile.clone(),
        target: params.target.clone(),
        args: params.args,
        no_cache: params.no_cache,
        cache_from: params.cache_from,
    };
    let data_dir = b.data_dir.clone();
    let (tx, rx) = mpsc::channel::<Bytes>(64);
    let context = req.into_body().into_data_stream();
    tokio::spawn(async move {
        tracing::info!(%image, "a build from a manager");
        let (out, mut lines) = mpsc::channel::<String>(64);
        let relay = {
            let tx = tx.clone();
            tokio::spawn(async move {
                while let Some(l) = lines.recv().await {
                    if tx.send(json_line(&BuildEvent::Line(l))).await.is_err() {
                        return;
                    }
                }
            })
        };
        let built = job.run(&dir, context, &secrets, &out).await;
        drop(out);
        let _ = relay.await;
        let _ = tokio::fs::remove_dir_all(&dir).await;
        let ended = match built {
            Err(message) => BuildEvent::Failed { message },
            Ok(()) => {
                match gantry_image::store::Store::open(&data_dir).and_then(|s| s.resolve(&image)) {
                    Ok(img) => BuildEvent::Done {
                        image: img.record.manifest,
                    },
                    Err(e) => BuildEvent::Failed {
                        message: format!("built, but {image} is not in the store: {e}"),
                    },
                }
            }
        };
        tracing::info!(%image, ?ended, "build ended");
        let _ = tx.send(json_line(&ended)).await;
    });
    let stream = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|b| (Ok::<_, std::io::Error>(Frame::data(b)), rx))
    });
    let mut r = Response::new(BodyExt::boxed(StreamBody::new(stream)));
    if let Ok(v) = "application/x-ndjson".parse() {
        r.headers_mut().insert(hyper::header::CONTENT_TYPE, v);
    }
    r
}
