//! A node serves the image blobs it holds to the other nodes (`GET
//! /blobs/sha256:HEX`), over the cluster's mutual TLS: only a node's or a
//! manager's certificate is answered. A manager points a node that pulls
//! a blob at another node that already fetched it (see `registry.rs`),
//! so that deploying to many nodes does not take every byte from the
//! managers. What is served is checked by the fetching node against its
//! digest; a node that no longer has a blob answers 404.

use std::convert::Infallible;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{combinators::BoxBody, BodyExt, Empty, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

type Body = BoxBody<Bytes, std::io::Error>;

fn status(s: StatusCode) -> Response<Body> {
    let mut r = Response::new(Empty::new().map_err(|e: Infallible| match e {}).boxed());
    *r.status_mut() = s;
    r
}

/// Serves the blobs of the image store under `data_dir` on `l`.
pub(crate) async fn serve(l: TcpListener, tls: Arc<rustls::ServerConfig>, data_dir: PathBuf) {
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    let blobs = Arc::new(data_dir.join("images/blobs/sha256"));
    loop {
        let (tcp, from) = match l.accept().await {
            Ok(x) => x,
            Err(e) => {
                tracing::warn!("peer blobs: accept: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let acceptor = acceptor.clone();
        let blobs = blobs.clone();
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
            let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                let blobs = blobs.clone();
                async move { Ok::<_, Infallible>(answer(&blobs, &req).await) }
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
        return status(StatusCode::NOT_FOUND);
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
