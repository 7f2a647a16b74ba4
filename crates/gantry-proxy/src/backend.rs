//! Backends and how one is picked.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use gantry_route::Balance;
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;

use crate::forward::Body;
use crate::Pool;

/// Idle keep-alive connections kept per backend.
const MAX_IDLE: usize = 256;

/// Why a request did not get an answer from a backend.
#[derive(Debug)]
pub(crate) enum SendError {
    /// No connection: refused, unreachable or timed out. Nothing was sent.
    Connect(std::io::Error),
    /// The connection failed during the exchange.
    Http(hyper::Error),
}

impl std::fmt::Display for SendError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Connect(e) => write!(f, "connect: {e}"),
            Self::Http(e) => write!(f, "{e}"),
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
    /// Idle HTTP/1.1 keep-alive connections to it (hyper's connection
    /// handles: a request takes one, its response's end gives it back).
    idle: Mutex<Vec<SendRequest<Body>>>,
}

impl std::fmt::Debug for Lease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lease")
            .field("backend", &self.backend.addr)
            .finish()
    }
}

/// A backend connection in use; back to the idle ones when the response
/// is done with (dropped), unless it closed or was taken over (upgrades).
pub(crate) struct Lease {
    backend: Arc<Backend>,
    sender: Option<SendRequest<Body>>,
}

impl Lease {
    /// The connection is not coming back (an upgrade took it over).
    pub(crate) fn forget(&mut self) {
        self.sender = None;
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if let Some(s) = self.sender.take() {
            if !s.is_closed() {
                let mut idle = self.backend.idle.lock().expect("idle lock");
                if idle.len() < MAX_IDLE {
                    idle.push(s);
                }
            }
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
    /// one. A pooled connection that turns out closed before the request
    /// went out gives it back, and the next is tried.
    pub(crate) async fn send(
        self: &Arc<Self>,
        mut req: Request<Body>,
        connect_timeout: Duration,
    ) -> Result<(Response<Incoming>, Lease), SendError> {
        loop {
            let Some(mut s) = self.take_idle() else {
                break;
            };
            if s.ready().await.is_err() {
                continue;
            }
            match s.try_send_request(req).await {
                Ok(resp) => return Ok((resp, self.lease(s))),
                Err(mut e) => match e.take_message() {
                    Some(r) => req = r,
                    None => return Err(SendError::Http(e.into_error())),
                },
            }
        }
        let mut s = self.connect(connect_timeout).await?;
        match s.send_request(req).await {
            Ok(resp) => Ok((resp, self.lease(s))),
            Err(e) => Err(SendError::Http(e)),
        }
    }

    fn lease(self: &Arc<Self>, s: SendRequest<Body>) -> Lease {
        Lease {
            backend: self.clone(),
            sender: Some(s),
        }
    }

    fn take_idle(&self) -> Option<SendRequest<Body>> {
        let mut idle = self.idle.lock().expect("idle lock");
        while let Some(s) = idle.pop() {
            if !s.is_closed() {
                return Some(s);
            }
        }
        None
    }

    async fn connect(&self, timeout: Duration) -> Result<SendRequest<Body>, SendError> {
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
        let (s, conn) = hyper::client::conn::http1::Builder::new()
            .handshake(TokioIo::new(stream))
            .await
            .map_err(SendError::Http)?;
        tokio::spawn(async move {
            if let Err(e) = conn.with_upgrades().await {
                tracing::debug!("backend connection: {e}");
            }
        });
        Ok(s)
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
