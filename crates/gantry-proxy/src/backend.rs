//! Backends and how one is picked.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use gantry_route::Balance;
use hyper::body::{Body as _, Frame, Incoming, SizeHint};
use hyper::header;
use hyper::{Method, Request, Response};
use hyper_util::rt::TokioIo;

use crate::body::{Body, BoxError};
use crate::h1::{self, H1Body};
use crate::Pool;

/// Idle keep-alive connections kept per backend.
const MAX_IDLE: usize = 256;

/// Why a request did not get an answer from a backend.
#[derive(Debug)]
pub(crate) enum SendError {
    /// No connection: refused, unreachable or timed out. Nothing was sent.
    Connect(std::io::Error),
    /// The connection failed during the exchange, or the answer was not
    /// HTTP.
    Exchange(std::io::Error),
}

impl std::fmt::Display for SendError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Connect(e) => write!(f, "connect: {e}"),
            Self::Exchange(e) => write!(f, "{e}"),
        }
    }
}

/// A task behind a route: its address and what the proxy knows of it.
pub struct Backend {
    /// Its address and port.
    pub addr: SocketAddr,
    /// Requests in flight.
    active: AtomicUsize,
    /// Left out until then (milliseconds since the epoch), after it refused
    /// a connection.
    ejected_until: AtomicU64,
    /// The last active check failed.
    unhealthy: AtomicBool,
    /// The sticky-session cookie value that picks it.
    pub(crate) cookie: String,
    /// Idle HTTP/1.1 keep-alive connections to it: a request takes one,
    /// its response body's end gives it back.
    /// (Boxed once per connection, so that moving one is cheap: a request's
    /// futures and its response body hold one.)
    #[allow(clippy::vec_box)]
    idle: Mutex<Vec<Box<h1::Conn>>>,
}

/// How a request goes out, besides its head.
struct Exchange {
    body: Option<Body>,
    chunked: bool,
    head_request: bool,
    /// It may be sent again on another connection if the first fails
    /// before any answer (no body, an idempotent method).
    retry: bool,
    has_body: bool,
}

/// The connection a request is first sent on.
enum First {
    /// An idle one, with the request head encoded in its buffer.
    Pooled(Box<h1::Conn>),
    /// A new one, with this head.
    Connect(Vec<u8>),
}

/// A backend's response body: read by Gantry's own HTTP/1.1 client, or by
/// hyper's on a connection that asked for an upgrade.
pub(crate) enum UpBody {
    H1(H1Body),
    Upgrade(Incoming),
}

impl hyper::body::Body for UpBody {
    type Data = bytes::Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<Frame<bytes::Bytes>, BoxError>>> {
        match self.get_mut() {
            UpBody::H1(b) => std::pin::Pin::new(b).poll_frame(cx).map_err(Into::into),
            UpBody::Upgrade(b) => std::pin::Pin::new(b).poll_frame(cx).map_err(Into::into),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            UpBody::H1(b) => b.is_end_stream(),
            UpBody::Upgrade(b) => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            UpBody::H1(b) => b.size_hint(),
            UpBody::Upgrade(b) => b.size_hint(),
        }
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl std::fmt::Debug for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Backend")
            .field("addr", &self.addr)
            .field("active", &self.active())
            .field("healthy", &self.healthy())
            .finish()
    }
}

impl Backend {
    pub(crate) fn new(addr: SocketAddr) -> Self {
        // FNV-1a of the address: the same on every proxy of the cluster,
        // so a sticky client stays put whichever node it reaches, and the
        // cookie does not show the task's address.
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in addr.to_string().bytes() {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        Self {
            addr,
            active: AtomicUsize::new(0),
            ejected_until: AtomicU64::new(0),
            unhealthy: AtomicBool::new(false),
            cookie: format!("{h:016x}"),
            idle: Mutex::new(Vec::new()),
        }
    }

    /// Sends a request (origin-form URI) over an idle connection, or a new
    /// one, and gives the response once its head is in. A pooled
    /// connection that fails before any answer (the backend closed it
    /// while idle) is dropped and the request sent on the next, when the
    /// request has no body and either nothing reached that connection or
    /// the method is idempotent.
    ///
    /// What can be done at once is done before the future is made (the
    /// request head is encoded into an idle connection's buffer), so that
    /// the future holds no copy of the request: futures are copied whole
    /// as they nest.
    pub(crate) fn send(
        self: &Arc<Self>,
        req: Request<Body>,
        connect_timeout: Duration,
    ) -> impl Future<Output = Result<Response<UpBody>, SendError>> + Send + 'static {
        let (parts, body) = req.into_parts();
        if h1::asks_upgrade(&parts.headers) {
            // Boxed, as is connecting: rare paths.
            let req = Request::from_parts(parts, body);
            let this = self.clone();
            return futures::future::Either::Left(Box::pin(async move {
                this.send_upgrade(req, connect_timeout).await
            }));
        }
        let has_body = !body.is_end_stream();
        let chunked = has_body && !parts.headers.contains_key(header::CONTENT_LENGTH);
        let idempotent = h1::idempotent(&parts.method);
        let ex = Exchange {
            body: has_body.then_some(body),
            chunked,
            head_request: parts.method == Method::HEAD,
            retry: !has_body && idempotent,
            has_body,
        };
        let encode = |out: &mut Vec<u8>| {
            out.clear();
            let pq = parts.uri.path_and_query().map_or("/", |p| p.as_str());
            h1::encode_head(&parts.method, pq, &parts.headers, chunked, out);
        };
        let first = match self.take_idle() {
            Some(mut c) => {
                encode(&mut c.head);
                First::Pooled(c)
            }
            None => {
                let mut head = Vec::with_capacity(1024);
                encode(&mut head);
                First::Connect(head)
            }
        };
        futures::future::Either::Right(self.clone().exchange(first, ex, connect_timeout))
    }

    /// The exchange of [`Backend::send`], from its first connection on.
    async fn exchange(
        self: Arc<Self>,
        first: First,
        mut ex: Exchange,
        connect_timeout: Duration,
    ) -> Result<Response<UpBody>, SendError> {
        let (mut conn, mut pooled) = match first {
            First::Pooled(c) => (c, true),
            First::Connect(head) => {
                let io = Box::pin(self.connect(connect_timeout)).await?;
                let mut c = Box::new(h1::Conn::new(io));
                c.head = head;
                (c, false)
            }
        };
        loop {
            match conn
                .exchange(ex.body.take(), ex.chunked, ex.head_request)
                .await
            {
                Ok(h) => {
                    let resp_body = H1Body::new(conn, self.clone(), &h);
                    let mut resp = Response::new(UpBody::H1(resp_body));
                    *resp.status_mut() = h.status;
                    *resp.headers_mut() = h.headers;
                    return Ok(resp);
                }
                Err(f) => {
                    // A request without a body, which the backend did not
                    // get or, being idempotent, may get twice.
                    let again =
                        pooled && !ex.has_body && f.got_nothing && (f.sent_nothing || ex.retry);
                    if !again {
                        return Err(SendError::Exchange(f.error));
                    }
                    tracing::debug!(backend = %self.addr, "pooled connection gone: {}", f.error);
                    let head = std::mem::take(&mut conn.head);
                    conn = match self.take_idle() {
                        Some(c) => c,
                        None => {
                            pooled = false;
                            Box::new(h1::Conn::new(
                                Box::pin(self.connect(connect_timeout)).await?,
                            ))
                        }
                    };
                    conn.head = head;
                }
            }
        }
    }

    /// An upgrade request, on a hyper connection of its own (the tunnel
    /// takes it over).
    async fn send_upgrade(
        &self,
        req: Request<Body>,
        timeout: Duration,
    ) -> Result<Response<UpBody>, SendError> {
        let stream = self.connect(timeout).await?;
        let exchange = |e: hyper::Error| SendError::Exchange(std::io::Error::other(e));
        let (mut s, conn) = hyper::client::conn::http1::Builder::new()
            .handshake(TokioIo::new(stream))
            .await
            .map_err(exchange)?;
        tokio::spawn(async move {
            if let Err(e) = conn.with_upgrades().await {
                tracing::debug!("backend connection: {e}");
            }
        });
        let resp = s.send_request(req).await.map_err(exchange)?;
        Ok(resp.map(UpBody::Upgrade))
    }

    /// Back among the idle ones.
    pub(crate) fn put_idle(&self, conn: Box<h1::Conn>) {
        let mut idle = self.idle.lock().expect("idle lock");
        if idle.len() < MAX_IDLE {
            idle.push(conn);
        }
    }

    fn take_idle(&self) -> Option<Box<h1::Conn>> {
        let mut idle = self.idle.lock().expect("idle lock");
        while let Some(mut c) = idle.pop() {
            if c.alive() {
                return Some(c);
            }
        }
        None
    }

    pub(crate) async fn connect(
        &self,
        timeout: Duration,
    ) -> Result<tokio::net::TcpStream, SendError> {
        let stream =
            match tokio::time::timeout(timeout, tokio::net::TcpStream::connect(self.addr)).await {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => return Err(SendError::Connect(e)),
                Err(_) => {
                    return Err(SendError::Connect(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        "connect timed out",
                    )))
                }
            };
        let _ = stream.set_nodelay(true);
        Ok(stream)
    }

    /// Whether requests may go to it now.
    pub fn healthy(&self) -> bool {
        !self.unhealthy.load(Ordering::Relaxed)
            && self.ejected_until.load(Ordering::Relaxed) <= now_ms()
    }

    /// Requests in flight.
    pub fn active(&self) -> usize {
        self.active.load(Ordering::Relaxed)
    }

    /// Leaves it out for `ms` (it refused a connection).
    pub(crate) fn eject(&self, ms: u64) {
        self.ejected_until.store(now_ms() + ms, Ordering::Relaxed);
    }

    /// The result of an active check.
    pub(crate) fn set_checked(&self, ok: bool) {
        let was = !self.unhealthy.swap(!ok, Ordering::Relaxed);
        if was != ok {
            tracing::info!(backend = %self.addr, healthy = ok, "health check changed");
        }
    }

    /// Counts a request in flight until the guard drops.
    pub(crate) fn begin(self: &Arc<Self>) -> InFlight {
        self.active.fetch_add(1, Ordering::Relaxed);
        InFlight(self.clone())
    }
}

/// A request in flight on a backend.
pub(crate) struct InFlight(Arc<Backend>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Pool {
    /// The backend for a request: the sticky one if its cookie names a
    /// healthy one, else by the route's balancing, skipping `tried`.
    pub(crate) fn pick(
        &self,
        balance: Balance,
        sticky: Option<&str>,
        tried: &[SocketAddr],
    ) -> Option<Arc<Backend>> {
        let ok = |b: &&Arc<Backend>| b.healthy() && !tried.contains(&b.addr);
        if let Some(c) = sticky {
            if let Some(b) = self.backends.iter().filter(ok).find(|b| b.cookie == c) {
                return Some(b.clone());
            }
        }
        match balance {
            Balance::RoundRobin => {
                let n = self.backends.len();
                let start = self.next.fetch_add(1, Ordering::Relaxed);
                (0..n)
                    .map(|i| &self.backends[(start + i) % n])
                    .find(|b| ok(b))
                    .cloned()
            }
            Balance::LeastConn => {
                let n = self.backends.len().max(1);
                // Ties go round, so equal backends share the load.
                let start = self.next.fetch_add(1, Ordering::Relaxed) % n;
                self.backends
                    .iter()
                    .cycle()
                    .skip(start)
                    .take(self.backends.len())
                    .filter(ok)
                    .min_by_key(|b| b.active())
                    .cloned()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(n: u8) -> Pool {
        Pool {
            backends: (1..=n)
                .map(|i| Arc::new(Backend::new(SocketAddr::from(([10, 0, 0, i], 80)))))
                .collect(),
            next: AtomicUsize::new(0),
            metrics: crate::metrics::Metrics::new().route(&gantry_route::RouteSpec::new("s", 80)),
        }
    }

    #[test]
    fn round_robin_skips_the_ejected_and_the_tried() {
        let p = pool(3);
        let picks: Vec<u8> = (0..6)
            .map(
                |_| match p.pick(Balance::RoundRobin, None, &[]).unwrap().addr.ip() {
                    std::net::IpAddr::V4(a) => a.octets()[3],
                    _ => 0,
                },
            )
            .collect();
        assert_eq!(picks, [1, 2, 3, 1, 2, 3]);
        p.backends[1].eject(60_000);
        let tried = [p.backends[0].addr];
        for _ in 0..4 {
            assert_eq!(
                p.pick(Balance::RoundRobin, None, &tried).unwrap().addr,
                p.backends[2].addr
            );
        }
        p.backends[2].set_checked(false);
        assert!(p.pick(Balance::RoundRobin, None, &tried).is_none());
        assert!(pool(0).pick(Balance::RoundRobin, None, &[]).is_none());
    }

    #[test]
    fn least_connections_and_sticky() {
        let p = pool(3);
        let _a = p.backends[0].begin();
        let _b = p.backends[1].begin();
        let _c = p.backends[1].begin();
        for _ in 0..3 {
            assert_eq!(
                p.pick(Balance::LeastConn, None, &[]).unwrap().addr,
                p.backends[2].addr
            );
        }
        let cookie = p.backends[1].cookie.clone();
        assert_eq!(
            p.pick(Balance::LeastConn, Some(&cookie), &[]).unwrap().addr,
            p.backends[1].addr
        );
        drop((_a, _b, _c));
        assert_eq!(p.backends.iter().map(|b| b.active()).sum::<usize>(), 0);
        // The cookie is the same on every proxy.
        assert_eq!(Backend::new(p.backends[1].addr).cookie, cookie);
    }
}
