//! One request: find its route, answer it ourselves or forward it.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use gantry_route::{Hit, HttpsMode, RouteSpec};
use http_body_util::{combinators::BoxBody, BodyExt, Empty, Full};
use hyper::body::{Body as _, Incoming};
use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};
use hyper::{Method, Request, Response, StatusCode, Version};
use hyper_util::rt::TokioIo;

use crate::backend::Backend;
use crate::{Pool, Proxy};

/// Bodies both ways.
pub(crate) type Body = BoxBody<Bytes, hyper::Error>;

/// The cookie of sticky sessions.
pub(crate) const STICKY_COOKIE: &str = "gantry_sticky";

/// Where a request came from.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Conn {
    /// The client (from the PROXY header when a trusted proxy sent one).
    pub(crate) client: SocketAddr,
    /// Over TLS.
    pub(crate) tls: bool,
}

fn empty() -> Body {
    Empty::new().map_err(|never| match never {}).boxed()
}

fn text(status: StatusCode, msg: impl Into<Bytes>) -> Response<Body> {
    let mut r = Response::new(
        Full::new(msg.into())
            .map_err(|never| match never {})
            .boxed(),
    );
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

fn redirect(status: StatusCode, location: &str) -> Response<Body> {
    let mut r = text(status, format!("redirecting to {location}\n"));
    if let Ok(v) = HeaderValue::from_str(location) {
        r.headers_mut().insert(header::LOCATION, v);
    }
    r
}

/// The hop-by-hop headers (RFC 9110 7.6.1), never forwarded.
const HOP: [HeaderName; 7] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

fn strip_hop(h: &mut HeaderMap, keep_upgrade: bool) {
    let named: Vec<HeaderName> = h
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
        .collect();
    for n in HOP.iter().chain(&named) {
        if keep_upgrade && (n == header::CONNECTION || n == header::UPGRADE) {
            continue;
        }
        h.remove(n);
    }
    if keep_upgrade {
        h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    }
}

fn is_upgrade(req: &Request<Incoming>) -> bool {
    req.version() == Version::HTTP_11
        && req.headers().contains_key(header::UPGRADE)
        && req
            .headers()
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .any(|v| {
                v.split(',')
                    .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
            })
}

fn sticky_cookie(h: &HeaderMap) -> Option<String> {
    h.get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|c| c.trim().split_once('='))
        .find(|(k, _)| *k == STICKY_COOKIE)
        .map(|(_, v)| v.to_owned())
}

/// The host a request is for: the URI's authority (HTTP/2, absolute
/// form) or the Host header.
fn request_host(req: &Request<Incoming>) -> String {
    req.uri()
        .authority()
        .map(|a| a.as_str().to_owned())
        .or_else(|| {
            req.headers()
                .get(header::HOST)
                .and_then(|h| h.to_str().ok())
                .map(str::to_owned)
        })
        .unwrap_or_default()
}

/// Answers one request.
pub(crate) async fn handle(
    proxy: Arc<Proxy>,
    conn: Conn,
    req: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    let started = Instant::now();
    let method = req.method().clone();
    let host = request_host(&req);
    let path = tracing::enabled!(target: "gantry::access", tracing::Level::INFO)
        .then(|| req.uri().path().to_owned())
        .unwrap_or_default();
    let (resp, backend, metrics) = route(&proxy, conn, req, &host).await;
    match &metrics {
        Some(m) => m.observe(resp.status().as_u16(), started.elapsed().as_secs_f64()),
        None if resp.status() == StatusCode::NOT_FOUND => {
            proxy.metrics.unrouted.inc();
        }
        None => {}
    }
    tracing::info!(
        target: "gantry::access",
        client = %conn.client,
        tls = conn.tls,
        %method,
        host = %host,
        path = %path,
        status = resp.status().as_u16(),
        backend = backend.map(|b| b.to_string()).unwrap_or_default(),
        us = started.elapsed().as_micros() as u64,
    );
    Ok(resp)
}

/// A response, the backend that gave it, and the route's metrics.
type Routed = (
    Response<Body>,
    Option<SocketAddr>,
    Option<Arc<crate::metrics::RouteMetrics>>,
);

async fn route(proxy: &Arc<Proxy>, conn: Conn, req: Request<Incoming>, host: &str) -> Routed {
    let path = req.uri().path();
    if !conn.tls {
        if let Some(token) = path.strip_prefix("/.well-known/acme-challenge/") {
            if let Some(ka) = proxy.challenges.load().http01.get(token) {
                return (text(StatusCode::OK, ka.clone()), None, None);
            }
        }
    }
    let table = proxy.table.load_full();
    let hit = table.lookup(host, path);
    let pq = req.uri().path_and_query().map_or("/", |p| p.as_str());
    match hit {
        None => (
            text(
                StatusCode::NOT_FOUND,
                format!(
                    "no route for {}{}\n",
                    gantry_route::normalize_host(host),
                    path
                ),
            ),
            None,
            None,
        ),
        Some(Hit::Redirect { host: to, spec }) => {
            let scheme = if spec.https == HttpsMode::Off && !conn.tls {
                "http"
            } else {
                "https"
            };
            let loc = format!("{scheme}://{}{pq}", with_port(proxy, to, scheme));
            (redirect(StatusCode::MOVED_PERMANENTLY, &loc), None, None)
        }
        Some(Hit::Route { spec, value, path }) => {
            let to_https = !conn.tls
                && match spec.https {
                    HttpsMode::Redirect => true,
                    HttpsMode::Auto => proxy.has_cert(&gantry_route::normalize_host(host)),
                    HttpsMode::Off => false,
                };
            if to_https {
                let status = if matches!(req.method(), &Method::GET | &Method::HEAD) {
                    StatusCode::MOVED_PERMANENTLY
                } else {
                    StatusCode::PERMANENT_REDIRECT
                };
                let h = gantry_route::normalize_host(host);
                let loc = format!("https://{}{pq}", with_port(proxy, &h, "https"));
                return (redirect(status, &loc), None, Some(value.metrics.clone()));
            }
            // The request's own path and query when the route keeps the
            // path (no copy), else the rewritten path with the query.
            let pq = match req.uri().path_and_query() {
                Some(p) if p.path() == path => p.clone(),
                _ => {
                    let query = req
                        .uri()
                        .query()
                        .map(|q| format!("?{q}"))
                        .unwrap_or_default();
                    match hyper::http::uri::PathAndQuery::try_from(format!("{path}{query}")) {
                        Ok(p) => p,
                        Err(_) => return (text(StatusCode::BAD_REQUEST, "bad path\n"), None, None),
                    }
                }
            };
            let (resp, b) = forward(proxy, conn, req, host, spec, value, pq).await;
            (resp, b, Some(value.metrics.clone()))
        }
    }
}

fn with_port(proxy: &Proxy, host: &str, scheme: &str) -> String {
    if scheme == "https" && proxy.config.https_port != 443 {
        format!("{host}:{}", proxy.config.https_port)
    } else {
        host.to_owned()
    }
}

#[allow(clippy::too_many_arguments)]
async fn forward(
    proxy: &Arc<Proxy>,
    conn: Conn,
    mut req: Request<Incoming>,
    host: &str,
    spec: &RouteSpec,
    pool: &Pool,
    pq: hyper::http::uri::PathAndQuery,
) -> (Response<Body>, Option<SocketAddr>) {
    let upgrade = is_upgrade(&req);
    let client_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));
    let sticky = spec.sticky.then(|| sticky_cookie(req.headers())).flatten();
    let (parts, body) = req.into_parts();
    let idempotent = matches!(
        parts.method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE
    );
    let retryable = idempotent && body.is_end_stream();
    let mut body = Some(body.boxed());
    let mut headers = parts.headers;
    strip_hop(&mut headers, upgrade);
    forwarded_headers(&mut headers, conn, host);
    let mut tried: Vec<SocketAddr> = Vec::new();
    loop {
        let Some(b) = pool.pick(spec.balance, sticky.as_deref(), &tried) else {
            if tried.is_empty() {
                let mut r = text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!(
                        "no healthy task of {} answers; try again soon\n",
                        spec.service
                    ),
                );
                r.headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
                return (r, None);
            }
            return (
                text(
                    StatusCode::BAD_GATEWAY,
                    format!("no task of {} accepted the connection\n", spec.service),
                ),
                tried.last().copied(),
            );
        };
        tried.push(b.addr);
        let mut up = Request::new(body.take().unwrap_or_else(empty));
        *up.method_mut() = parts.method.clone();
        *up.version_mut() = Version::HTTP_11;
        // Another attempt needs the headers again; the last possible one
        // (no other backend left to try) takes them.
        let another = pool
            .backends
            .iter()
            .any(|o| o.addr != b.addr && !tried.contains(&o.addr) && o.healthy());
        *up.headers_mut() = if retryable && another {
            headers.clone()
        } else {
            std::mem::take(&mut headers)
        };
        // Origin form, as HTTP/1.1 sends it to a server.
        *up.uri_mut() = hyper::Uri::from(pq.clone());
        if !up.headers().contains_key(header::HOST) {
            if let Ok(v) = HeaderValue::from_str(host) {
                up.headers_mut().insert(header::HOST, v);
            }
        }
        let guard = b.begin();
        let sent = b.send(up, proxy.config.connect_timeout);
        match tokio::time::timeout(proxy.config.request_timeout, sent).await {
            Err(_) => {
                return (
                    text(
                        StatusCode::GATEWAY_TIMEOUT,
                        format!("{} did not answer in time\n", spec.service),
                    ),
                    Some(b.addr),
                );
            }
            Ok(Err(e)) => {
                let connect = matches!(e, crate::backend::SendError::Connect(_));
                if connect {
                    b.eject(proxy.config.eject_for.as_millis() as u64);
                    proxy.metrics.backend_errors.inc();
                    tracing::warn!(backend = %b.addr, service = %spec.service, "backend refused: {e}");
                    if retryable {
                        continue;
                    }
                }
                if !connect {
                    proxy.metrics.backend_errors.inc();
                }
                tracing::warn!(backend = %b.addr, service = %spec.service, "backend failed: {e}");
                return (
                    text(
                        StatusCode::BAD_GATEWAY,
                        format!("{} failed to answer\n", spec.service),
                    ),
                    Some(b.addr),
                );
            }
            Ok(Ok((mut resp, mut lease))) => {
                let switching = resp.status() == StatusCode::SWITCHING_PROTOCOLS;
                if switching {
                    // The connection is the tunnel's now.
                    lease.forget();
                    if let Some(client_up) = client_upgrade {
                        let backend_up = hyper::upgrade::on(&mut resp);
                        let open = proxy.metrics.tunnels.clone();
                        tokio::spawn(tunnel(client_up, backend_up, guard, b.clone(), open));
                        return (resp.map(|_| empty()), Some(b.addr));
                    }
                }
                strip_hop(resp.headers_mut(), false);
                if spec.sticky && sticky.as_deref() != Some(b.cookie.as_str()) {
                    if let Ok(v) = HeaderValue::from_str(&format!(
                        "{STICKY_COOKIE}={}; Path=/; HttpOnly; SameSite=Lax",
                        b.cookie
                    )) {
                        resp.headers_mut().append(header::SET_COOKIE, v);
                    }
                }
                let metrics = pool.metrics.clone();
                let resp = resp.map(|body| {
                    body.map_frame(move |f| {
                        let _in_flight = (&guard, &lease);
                        if let Some(d) = f.data_ref() {
                            metrics.bytes(d.len());
                        }
                        f
                    })
                    .boxed()
                });
                return (resp, Some(b.addr));
            }
        }
    }
}

/// Copies both ways between an upgraded client and backend connection.
async fn tunnel(
    client: hyper::upgrade::OnUpgrade,
    backend: hyper::upgrade::OnUpgrade,
    _in_flight: crate::backend::InFlight,
    b: Arc<Backend>,
    open: prometheus_client::metrics::gauge::Gauge<i64, std::sync::atomic::AtomicI64>,
) {
    open.inc();
    match tokio::try_join!(client, backend) {
        Ok((c, s)) => {
            let mut c = TokioIo::new(c);
            let mut s = TokioIo::new(s);
            if let Err(e) = tokio::io::copy_bidirectional(&mut c, &mut s).await {
                tracing::debug!(backend = %b.addr, "upgraded connection: {e}");
            }
        }
        Err(e) => tracing::debug!(backend = %b.addr, "upgrade failed: {e}"),
    }
    open.dec();
}

fn forwarded_headers(h: &mut HeaderMap, conn: Conn, host: &str) {
    // Values made as Strings become header values without a copy.
    let value = |s: String| HeaderValue::from_maybe_shared(Bytes::from(s)).ok();
    let ip = conn.client.ip();
    let ip_s = ip.to_string();
    let proto = if conn.tls { "https" } else { "http" };
    let xff = match h.get("x-forwarded-for").and_then(|v| v.to_str().ok()) {
        Some(prev) => format!("{prev}, {ip_s}"),
        None => ip_s.clone(),
    };
    let node = if ip.is_ipv6() {
        format!("\"[{ip_s}]\"")
    } else {
        ip_s
    };
    let quoted = if host.contains('"') {
        std::borrow::Cow::Owned(host.replace('"', ""))
    } else {
        std::borrow::Cow::Borrowed(host)
    };
    let mut fwd = match h.get(header::FORWARDED).and_then(|v| v.to_str().ok()) {
        Some(prev) => format!("{prev}, "),
        None => String::new(),
    };
    fwd.push_str(&format!("for={node};proto={proto};host=\"{quoted}\""));
    if let Some(v) = value(xff) {
        h.insert(HeaderName::from_static("x-forwarded-for"), v);
    }
    h.insert(
        HeaderName::from_static("x-forwarded-proto"),
        HeaderValue::from_static(proto),
    );
    if let Some(v) = value(gantry_route::normalize_host(host)) {
        h.insert(HeaderName::from_static("x-forwarded-host"), v);
    }
    if let Some(v) = value(fwd) {
        h.insert(header::FORWARDED, v);
    }
}

/// One active health check of one backend.
pub(crate) async fn check(proxy: &Proxy, b: Arc<Backend>, path: String) {
    let ok = async {
        let mut req = Request::new(empty());
        *req.uri_mut() = path.parse().ok()?;
        let host = HeaderValue::from_str(&b.addr.to_string()).ok()?;
        req.headers_mut().insert(header::HOST, host);
        req.headers_mut().insert(
            header::USER_AGENT,
            HeaderValue::from_static("gantry-health-check"),
        );
        let check = async {
            let (resp, lease) = b.send(req, proxy.config.connect_timeout).await.ok()?;
            let ok = resp.status().is_success() || resp.status().is_redirection();
            // Read to the end, so that the connection can serve again.
            resp.into_body().collect().await.ok()?;
            drop(lease);
            Some(ok)
        };
        tokio::time::timeout(proxy.config.check_every, check)
            .await
            .ok()?
    }
    .await
    .unwrap_or(false);
    b.set_checked(ok);
}
