//! One request: find its route, answer it ourselves or forward it.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use gantry_route::{Hit, HttpsMode, RouteSpec, Table};
use http_body_util::BodyExt;
use hyper::body::Body as _;
use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};
use hyper::{Method, Request, Response, StatusCode, Version};
use hyper_util::rt::TokioIo;

use crate::backend::Backend;
use crate::body::Body;
use crate::h1;
use crate::timer::Deadline;
use crate::{Pool, Proxy};

/// Backends a request is tried on, at most.
const MAX_TRIES: usize = 4;

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

fn text(status: StatusCode, msg: impl Into<Bytes>) -> Response<Body> {
    let mut r = Response::new(Body::Full(Some(msg.into())));
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
    // One pass over the names finds the hop-by-hop headers there are
    // (often none, or only Connection), so only those are looked up.
    let mut present = [false; 7];
    for name in h.keys() {
        if let Some(i) = HOP.iter().position(|n| n == name) {
            present[i] = true;
        }
    }
    // Headers the Connection header names, besides the hop-by-hop ones
    // (nearly always none: `keep-alive`, `close` and `upgrade` are the
    // usual tokens).
    let named: Vec<HeaderName> = if present[0] {
        h.get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .filter(|n| {
                !n.eq_ignore_ascii_case("close")
                    && !HOP.iter().any(|h| n.eq_ignore_ascii_case(h.as_str()))
            })
            .filter_map(|n| HeaderName::from_bytes(n.as_bytes()).ok())
            .collect()
    } else {
        Vec::new()
    };
    for (n, _) in HOP.iter().zip(present).filter(|(_, p)| *p) {
        if keep_upgrade && (n == header::CONNECTION || n == header::UPGRADE) {
            continue;
        }
        h.remove(n);
    }
    for n in &named {
        h.remove(n);
    }
    if keep_upgrade {
        h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    }
}

fn is_upgrade(req: &Request<Body>) -> bool {
    req.version() == Version::HTTP_11 && h1::asks_upgrade(req.headers())
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
/// form) or the Host header. A header value, so that it is kept without
/// a copy.
fn request_host(req: &Request<Body>) -> HeaderValue {
    if let Some(a) = req.uri().authority() {
        if let Ok(v) = HeaderValue::from_str(a.as_str()) {
            return v;
        }
    }
    req.headers()
        .get(header::HOST)
        .cloned()
        .unwrap_or_else(|| HeaderValue::from_static(""))
}

/// What the proxy does with a request.
// A local of one function, never moved far: not worth a box.
#[allow(clippy::large_enum_variant)]
enum Answer<'a> {
    /// Answers it itself; the route's metrics when one matched.
    Now(Response<Body>, Option<&'a crate::metrics::RouteMetrics>),
    /// Forwards it on a route, with this path and query.
    Forward(&'a RouteSpec, &'a Pool, hyper::http::uri::PathAndQuery),
}

/// Answers one request. One `async fn` holds the whole of a request's
/// work (what can be decided at once is plain functions), because every
/// nested future is copied whole as it is made.
pub(crate) async fn handle(
    proxy: Arc<Proxy>,
    conn: Conn,
    req: Request<Body>,
    deadline: &mut Deadline,
) -> Result<Response<Body>, Infallible> {
    let started = Instant::now();
    let method = req.method().clone();
    let host_value = request_host(&req);
    let host = host_value.to_str().unwrap_or("");
    let path = tracing::enabled!(target: "gantry::access", tracing::Level::INFO)
        .then(|| req.uri().path().to_owned())
        .unwrap_or_default();
    let table = proxy.table.load_full();
    let (resp, backend, metrics) = match answer(&proxy, conn, &req, host, &table) {
        Answer::Now(resp, metrics) => (resp, None, metrics),
        Answer::Forward(spec, pool, pq) => {
            let out = Outgoing::new(conn, req, &host_value, spec);
            let (resp, b) = forward(&proxy, out, &host_value, spec, pool, pq, deadline).await;
            (resp, b, Some(&*pool.metrics))
        }
    };
    let took = started.elapsed();
    match metrics {
        Some(m) => m.observe(resp.status().as_u16(), took.as_secs_f64()),
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
        us = took.as_micros() as u64,
    );
    Ok(resp)
}

/// What to do with a request: the proxy's own answers (ACME challenges,
/// 404, redirects) or the route to forward it on.
fn answer<'a>(
    proxy: &Proxy,
    conn: Conn,
    req: &Request<Body>,
    host: &str,
    table: &'a Table<Pool>,
) -> Answer<'a> {
    if let Some(why) = bad_host(req) {
        return Answer::Now(text(StatusCode::BAD_REQUEST, why), None);
    }
    let path = req.uri().path();
    if !conn.tls {
        if let Some(token) = path.strip_prefix("/.well-known/acme-challenge/") {
            if let Some(ka) = proxy.challenges.load().http01.get(token) {
                return Answer::Now(text(StatusCode::OK, ka.clone()), None);
            }
        }
    }
    let pq = req.uri().path_and_query().map_or("/", |p| p.as_str());
    match table.lookup(host, path) {
        None => Answer::Now(
            text(
                StatusCode::NOT_FOUND,
                format!(
                    "no route for {}{}\n",
                    gantry_route::normalize_host(host),
                    path
                ),
            ),
            None,
        ),
        Some(Hit::Redirect { host: to, spec }) => {
            let scheme = if spec.https == HttpsMode::Off && !conn.tls {
                "http"
            } else {
                "https"
            };
            let loc = format!("{scheme}://{}{pq}", with_port(proxy, to, scheme));
            Answer::Now(redirect(StatusCode::MOVED_PERMANENTLY, &loc), None)
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
                return Answer::Now(redirect(status, &loc), Some(&value.metrics));
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
                        Err(_) => {
                            return Answer::Now(text(StatusCode::BAD_REQUEST, "bad path\n"), None)
                        }
                    }
                }
            };
            Answer::Forward(spec, value, pq)
        }
    }
}

/// RFC 9112 3.2: a request with two Host fields, or an HTTP/1.1 request
/// with none, gets 400 (which Host the route and the backend would see
/// could differ).
fn bad_host(req: &Request<Body>) -> Option<&'static str> {
    let mut hosts = req.headers().get_all(header::HOST).iter();
    match (hosts.next(), hosts.next()) {
        (Some(_), Some(_)) => Some("more than one Host header\n"),
        (None, _) if req.version() == hyper::Version::HTTP_11 => {
            Some("an HTTP/1.1 request needs a Host header\n")
        }
        _ => None,
    }
}

fn with_port(proxy: &Proxy, host: &str, scheme: &str) -> String {
    if scheme == "https" && proxy.config.https_port != 443 {
        format!("{host}:{}", proxy.config.https_port)
    } else {
        host.to_owned()
    }
}

/// A request made ready to forward: its head as the backend gets it.
struct Outgoing {
    method: Method,
    headers: HeaderMap,
    body: Option<Body>,
    /// The client's side of an upgrade it asked for.
    client_upgrade: Option<hyper::upgrade::OnUpgrade>,
    /// The sticky-session cookie it carries.
    sticky: Option<String>,
    /// It may be sent to another backend when one refuses it.
    retryable: bool,
}

impl Outgoing {
    fn new(conn: Conn, mut req: Request<Body>, host_value: &HeaderValue, spec: &RouteSpec) -> Self {
        let upgrade = is_upgrade(&req);
        let client_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));
        let sticky = spec.sticky.then(|| sticky_cookie(req.headers())).flatten();
        let (parts, body) = req.into_parts();
        let idempotent = h1::idempotent(&parts.method);
        let mut headers = parts.headers;
        strip_hop(&mut headers, upgrade);
        forwarded_headers(&mut headers, conn, host_value);
        Self {
            method: parts.method,
            headers,
            retryable: idempotent && body.is_end_stream(),
            body: Some(body),
            client_upgrade,
            sticky,
        }
    }
}

async fn forward(
    proxy: &Arc<Proxy>,
    out: Outgoing,
    host_value: &HeaderValue,
    spec: &RouteSpec,
    pool: &Pool,
    pq: hyper::http::uri::PathAndQuery,
    deadline: &mut Deadline,
) -> (Response<Body>, Option<SocketAddr>) {
    // (Its fields are used in place: destructured, they would be a second
    // copy in this function's future.)
    let mut out = out;
    // The backends tried, without an allocation.
    let mut tried_at = [SocketAddr::from(([0, 0, 0, 0], 0)); MAX_TRIES];
    let mut n_tried = 0;
    loop {
        let tried = &tried_at[..n_tried];
        let picked = (n_tried < MAX_TRIES)
            .then(|| pool.pick(spec.balance, out.sticky.as_deref(), tried))
            .flatten();
        let Some(b) = picked else {
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
        tried_at[n_tried] = b.addr;
        n_tried += 1;
        let tried = &tried_at[..n_tried];
        let mut up = Request::new(out.body.take().unwrap_or(Body::Empty));
        *up.method_mut() = out.method.clone();
        *up.version_mut() = Version::HTTP_11;
        // Another attempt needs the headers again; the last possible one
        // (no other backend left to try) takes them.
        let another = pool
            .backends
            .iter()
            .any(|o| o.addr != b.addr && !tried.contains(&o.addr) && o.healthy());
        *up.headers_mut() = if out.retryable && another {
            out.headers.clone()
        } else {
            std::mem::take(&mut out.headers)
        };
        // Origin form, as HTTP/1.1 sends it to a server.
        *up.uri_mut() = hyper::Uri::from(pq.clone());
        if !up.headers().contains_key(header::HOST) {
            up.headers_mut().insert(header::HOST, host_value.clone());
        }
        let guard = b.begin();
        let sent = b.send(up, proxy.config.connect_timeout);
        deadline.set(proxy.config.request_timeout);
        match deadline.within(sent).await {
            None => {
                return (
                    text(
                        StatusCode::GATEWAY_TIMEOUT,
                        format!("{} did not answer in time\n", spec.service),
                    ),
                    Some(b.addr),
                );
            }
            Some(Err(e)) => {
                let connect = matches!(e, crate::backend::SendError::Connect(_));
                if connect {
                    b.eject(proxy.config.eject_for.as_millis() as u64);
                    proxy.metrics.backend_errors.inc();
                    tracing::warn!(backend = %b.addr, service = %spec.service, "backend refused: {e}");
                    if out.retryable {
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
            Some(Ok(mut resp)) => {
                let switching = resp.status() == StatusCode::SWITCHING_PROTOCOLS;
                if switching {
                    // The connection is the tunnel's now.
                    if let Some(client_up) = out.client_upgrade.take() {
                        let backend_up = hyper::upgrade::on(&mut resp);
                        let open = proxy.metrics.tunnels.clone();
                        tokio::spawn(tunnel(client_up, backend_up, guard, b.clone(), open));
                        return (resp.map(|_| Body::Empty), Some(b.addr));
                    }
                }
                strip_hop(resp.headers_mut(), false);
                if spec.sticky && out.sticky.as_deref() != Some(b.cookie.as_str()) {
                    if let Ok(v) = HeaderValue::from_str(&format!(
                        "{STICKY_COOKIE}={}; Path=/; HttpOnly; SameSite=Lax",
                        b.cookie
                    )) {
                        resp.headers_mut().append(header::SET_COOKIE, v);
                    }
                }
                let resp = resp.map(|body| {
                    Body::Backend(crate::body::Counted {
                        body,
                        _in_flight: guard,
                        metrics: pool.metrics.clone(),
                    })
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

/// Writes an address as `Display` does; IPv4 without the formatting
/// machinery, which costs more than the rest of the forwarding headers.
fn push_ip(s: &mut String, ip: std::net::IpAddr) {
    match ip {
        std::net::IpAddr::V4(v4) => {
            for (i, o) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    s.push('.');
                }
                if o >= 100 {
                    s.push(char::from(b'0' + o / 100));
                }
                if o >= 10 {
                    s.push(char::from(b'0' + o / 10 % 10));
                }
                s.push(char::from(b'0' + o % 10));
            }
        }
        std::net::IpAddr::V6(v6) => {
            use std::fmt::Write as _;
            let _ = write!(s, "{v6}");
        }
    }
}

fn forwarded_headers(h: &mut HeaderMap, conn: Conn, host_value: &HeaderValue) {
    thread_local! {
        static SCRATCH: std::cell::RefCell<String> = const { std::cell::RefCell::new(String::new()) };
    }
    let host = host_value.to_str().unwrap_or("");
    let ip = conn.client.ip();
    let proto = if conn.tls { "https" } else { "http" };
    // X-Forwarded-For and Forwarded are written one after the other in a
    // scratch buffer of the thread's, copied out in one allocation, and
    // become header values as slices of it.
    let (all, split) = SCRATCH.with(|s| {
        let mut s = s.borrow_mut();
        s.clear();
        if let Some(prev) = h.get("x-forwarded-for").and_then(|v| v.to_str().ok()) {
            s.push_str(prev);
            s.push_str(", ");
        }
        push_ip(&mut s, ip);
        let split = s.len();
        if let Some(prev) = h.get(header::FORWARDED).and_then(|v| v.to_str().ok()) {
            s.push_str(prev);
            s.push_str(", ");
        }
        match ip {
            std::net::IpAddr::V6(_) => {
                s.push_str("for=\"[");
                push_ip(&mut s, ip);
                s.push_str("]\"");
            }
            std::net::IpAddr::V4(_) => {
                s.push_str("for=");
                push_ip(&mut s, ip);
            }
        }
        s.push_str(";proto=");
        s.push_str(proto);
        s.push_str(";host=\"");
        if host.contains('"') {
            s.extend(host.chars().filter(|&c| c != '"'));
        } else {
            s.push_str(host);
        }
        s.push('"');
        (Bytes::copy_from_slice(s.as_bytes()), split)
    });
    if let Ok(v) = HeaderValue::from_maybe_shared(all.slice(..split)) {
        h.insert(HeaderName::from_static("x-forwarded-for"), v);
    }
    if let Ok(v) = HeaderValue::from_maybe_shared(all.slice(split..)) {
        h.insert(header::FORWARDED, v);
    }
    h.insert(
        HeaderName::from_static("x-forwarded-proto"),
        HeaderValue::from_static(proto),
    );
    // The request's own value when it is already in normal form.
    let normal = match gantry_route::normalize_host(host) {
        std::borrow::Cow::Borrowed(n) if n.len() == host.len() => Some(host_value.clone()),
        n => HeaderValue::from_str(&n).ok(),
    };
    if let Some(v) = normal {
        h.insert(HeaderName::from_static("x-forwarded-host"), v);
    }
}

/// One active health check of one backend.
pub(crate) async fn check(proxy: &Proxy, b: Arc<Backend>, path: String) {
    let ok = async {
        let mut req = Request::new(Body::Empty);
        *req.uri_mut() = path.parse().ok()?;
        let host = HeaderValue::from_str(&b.addr.to_string()).ok()?;
        req.headers_mut().insert(header::HOST, host);
        req.headers_mut().insert(
            header::USER_AGENT,
            HeaderValue::from_static("gantry-health-check"),
        );
        let check = async {
            let resp = b.send(req, proxy.config.connect_timeout).await.ok()?;
            let ok = resp.status().is_success() || resp.status().is_redirection();
            // Read to the end, so that the connection can serve again.
            resp.into_body().collect().await.ok()?;
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

#[cfg(test)]
mod tests {
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

    use super::push_ip;

    #[test]
    fn push_ip_writes_what_display_writes() {
        let mut s = String::new();
        for o in 0..=255u8 {
            for ip in [
                IpAddr::V4(Ipv4Addr::new(o, 0, o, 255)),
                IpAddr::V4(Ipv4Addr::new(255, o, 9, o)),
                IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, u16::from(o))),
                IpAddr::V6(Ipv4Addr::new(10, o, 0, 1).to_ipv6_mapped()),
            ] {
                s.clear();
                push_ip(&mut s, ip);
                assert_eq!(s, ip.to_string());
            }
        }
    }
}
