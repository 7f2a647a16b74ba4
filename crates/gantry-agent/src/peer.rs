//! A node serves the image blobs it holds to the other nodes (`GET
//! /blobs/sha256:HEX`), over the cluster's mutual TLS: only a node's or a
//! manager's certificate is answered. A manager points a node that pulls
//! a blob at another node that already fetched it (see `registry.rs`),
//! so that deploying to many nodes does not take every byte from the
//! managers. What is served is checked by the fetching node against its
//! digest; a node that no longer has a blob answers 404. A manager may
//! also send a build here (`POST /builds`, see `builds.rs`), and jobs
//! on volumes (`/volumes/...`, see `volume_jobs.rs`).

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{combinators::BoxBody, BodyExt, Empty, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

use crate::builds::Builder;

pub(crate) type Body = BoxBody<Bytes, std::io::Error>;

pub(crate) fn status(s: StatusCode) -> Response<Body> {
    let mut r = Response::new(Empty::new().map_err(|e: Infallible| match e {}).boxed());
    *r.status_mut() = s;
    r
}

/// Serves the blobs of the image store under the builder's data dir on
/// `l`, and builds.
pub(crate) async fn serve(
    l: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    builder: Builder,
    rt: Arc<std::sync::OnceLock<Arc<gantry_runtime::Runtime>>>,
) {
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    let blobs = Arc::new(builder.data_dir.join("images/blobs/sha256"));
    let builder = Arc::new(builder);
    loop {
        let (tcp, from) = match l.accept().await {
            Ok(x) => x,
            Err(e) => {
                tracing::warn!("peer blobs: accept: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        let acceptor = acceptor.clone();
        let blobs = blobs.clone();
        let builder = builder.clone();
        let rt = rt.clone();
        tokio::spawn(async move {
            let Ok(Ok(tls)) =
                tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await
            else {
                return;
            };
            let who = tls
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|c| c.first())
                .and_then(|c| gantry_pki::peer_identity(c.as_ref()));
            let allowed = matches!(
                who,
                Some((_, gantry_pki::Role::Worker | gantry_pki::Role::Manager))
            );
            if !allowed {
                tracing::info!(%from, "peer blobs: a client without a node's certificate");
                return;
            }
            let manager = matches!(who, Some((_, gantry_pki::Role::Manager)));
            let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                let blobs = blobs.clone();
                let builder = builder.clone();
                let rt = rt.clone();
                async move {
                    if req.method() == hyper::Method::POST && req.uri().path() == "/builds" {
                        if !manager {
                            return Ok(status(StatusCode::FORBIDDEN));
                        }
                        return Ok::<_, Infallible>(crate::builds::build(&builder, req));
                    }
                    if let Some(name) = req.uri().path().strip_prefix("/volumes/") {
                        if !manager {
                            return Ok(status(StatusCode::FORBIDDEN));
                        }
                        let name = name.to_owned();
                        return Ok(crate::volume_jobs::handle(rt.get().cloned(), &name, req).await);
                    }
                    Ok::<_, Infallible>(answer(&blobs, &req).await)
                }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(Duration::from_secs(10))
                .serve_connection(TokioIo::new(tls), svc)
                .await;
        });
    }
}

async fn answer(blobs: &std::path::Path, req: &Request<Incoming>) -> Response<Body> {
    if req.method() != hyper::Method::GET {
        return status(StatusCode::METHOD_NOT_ALLOWED);
    }
    let Some(hex) = req
        .uri()
        .path()
        .strip_prefix("/blobs/sha256:")
        .filter(|h| h.len() == 64 && h.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')))
    else {
        return status(StatusCode::NOT_FOUND);
    };
    let Ok(f) = tokio::fs::File::open(blobs.join(hex)).await else {
        // Still arriving: what is here now, and the rest as it comes.
        let digest = format!("sha256:{hex}");
        return match gantry_image::arriving(&digest) {
            Some(a) => {
                tracing::info!(%digest, "serving a blob that is still arriving");
                tail(a).await
            }
            None => status(StatusCode::NOT_FOUND),
        };
    };
    let len = f.metadata().await.map(|m| m.len()).unwrap_or(0);
    let stream = tokio_util::io::ReaderStream::with_capacity(f, 256 * 1024);
    let body = StreamBody::new(futures::StreamExt::map(stream, |c| c.map(Frame::data)));
    let mut r = Response::new(BodyExt::boxed(body));
    if let Ok(v) = len.to_string().parse() {
        r.headers_mut().insert(hyper::header::CONTENT_LENGTH, v);
    }
    r
}

/// A blob that is still arriving: its bytes as they land in its file,
/// until all `size` are sent; the stream breaks when its fetch fails (the
/// reader then asks the managers).
async fn tail(a: gantry_image::Arriving) -> Response<Body> {
    use gantry_image::Arrived;
    use tokio::io::AsyncReadExt;
    let Ok(f) = tokio::fs::File::open(&a.path).await else {
        return status(StatusCode::NOT_FOUND);
    };
    let size = a.size;
    let stream = futures::stream::unfold(
        (f, a.state, 0u64, vec![0u8; 256 * 1024]),
        move |(mut f, mut state, mut pos, mut buf)| async move {
            let broke = |why: &str| std::io::Error::other(format!("the blob's fetch here {why}"));
            loop {
                if pos >= size {
                    return None;
                }
                let now = *state.borrow_and_update();
                let avail = match now {
                    Arrived::Bytes(n) => n.min(size),
                    Arrived::Done => size,
                    Arrived::Failed => return Some((Err(broke("failed")), (f, state, size, buf))),
                };
                if pos < avail {
                    let want = ((avail - pos) as usize).min(buf.len());
                    return match f.read(&mut buf[..want]).await {
                        Ok(0) => Some((Err(broke("ended short")), (f, state, size, buf))),
                        Ok(n) => {
                            pos += n as u64;
                            let chunk = Bytes::copy_from_slice(&buf[..n]);
                            Some((Ok(Frame::data(chunk)), (f, state, pos, buf)))
                        }
                        Err(e) => Some((Err(e), (f, state, size, buf))),
                    };
                }
                if now == Arrived::Done {
                    // Done, yet shorter than the manifest says.
                    return Some((Err(broke("ended short")), (f, state, size, buf)));
                }
                if state.changed().await.is_err() && *state.borrow() != Arrived::Done {
                    return Some((Err(broke("stopped")), (f, state, size, buf)));
                }
            }
        },
    );
    let mut r = Response::new(BodyExt::boxed(StreamBody::new(stream)));
    if let Ok(v) = size.to_string().parse() {
        r.headers_mut().insert(hyper::header::CONTENT_LENGTH, v);
    }
    r
}
