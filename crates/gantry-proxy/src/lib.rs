//! Gantry's edge proxy: virtual hosting on every node (or on the edge
//! nodes), forwarding to the tasks' overlay addresses.
//!
//! - Clients: HTTP/1.1 and HTTP/2 (ALPN on TLS, prior knowledge on plain
//!   ports), WebSocket and other upgrades, PROXY protocol v1 and v2 from
//!   trusted addresses.
//! - Backends: HTTP/1.1 over pooled connections; round robin or least
//!   connections; sticky sessions by cookie; a backend that refuses
//!   connections is left out for a while (passive checks) and a route's
//!   health path is polled (active checks); an idempotent request that
//!   cannot connect is retried on another backend.
//! - Answers of its own: 404 with no route, 503 with `Retry-After` when
//!   the route exists but no backend is healthy, 502 when the backend
//!   fails, 504 when it is too slow; redirects to HTTPS.
//!
//! **Architecture invariant:** the request path reads the routes,
//! certificates and challenges through [`arc_swap::ArcSwap`] snapshots and
//! takes no lock shared with the control plane: [`Proxy::set_routes`]
//! builds a whole new table and swaps it in, so a change never drops a
//! connection or half-applies, and open WebSockets are never touched.

mod backend;
mod body;
mod forward;
mod h1;
mod listen;
mod metrics;
mod server;
mod timer;
mod tls;

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
pub use gantry_route::Route;
use gantry_route::Table;

pub use backend::Backend;
pub use listen::{serve_http, serve_https};
pub use tls::{CertError, CertPem};

/// The cookie of sticky sessions.
pub const STICKY_COOKIE: &str = forward::STICKY_COOKIE;

/// How the proxy behaves.
#[derive(Debug, Clone)]
pub struct ProxyConfig {
    /// Connecting to a backend.
    pub connect_timeout: Duration,
    /// From sending a request to the backend's response head.
    pub request_timeout: Duration,
    /// A client connection may take this long to send a request head.
    pub header_timeout: Duration,
    /// A client must take each piece of a response written to it (the
    /// head, or one read's worth of body) within this, or its connection
    /// is closed (nginx's `send_timeout`, which counts between writes): a
    /// client that stops reading does not hold its connection and its
    /// backend's. Connections handed to hyper do not have it.
    pub send_timeout: Duration,
    /// A backend that refused a connection is left out this long.
    pub eject_for: Duration,
    /// Between active health checks.
    pub check_every: Duration,
    /// Addresses whose connections start with a PROXY protocol header.
    pub trusted_proxies: Vec<IpAddr>,
    /// The port the HTTPS listener has, for redirects (443: left out).
    pub https_port: u16,
}

impl Default for ProxyConfig {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(3),
            request_timeout: Duration::from_secs(60),
            header_timeout: Duration::from_secs(30),
            send_timeout: Duration::from_secs(60),
            eject_for: Duration::from_secs(10),
            check_every: Duration::from_secs(2),
            trusted_proxies: Vec::new(),
            https_port: 443,
        }
    }
}

/// A route as the table holds it: its backends, with their state.
pub(crate) struct Pool {
    pub(crate) backends: Vec<Arc<Backend>>,
    pub(crate) next: std::sync::atomic::AtomicUsize,
    pub(crate) metrics: Arc<metrics::RouteMetrics>,
}

/// The proxy: shared by its listeners.
pub struct Proxy {
    pub(crate) config: ProxyConfig,
    pub(crate) table: ArcSwap<Table<Pool>>,
    pub(crate) certs: ArcSwap<tls::Certs>,
    /// Pending ACME challenges.
    pub(crate) challenges: ArcSwap<tls::Challenges>,
    /// Backends by address, so their state survives a route change.
    /// Only the control plane locks it.
    known: Mutex<HashMap<SocketAddr, std::sync::Weak<Backend>>>,
    pub(crate) metrics: metrics::Metrics,
    /// The deadlines of requests and request heads.
    pub(crate) timer: timer::Coarse,
}

impl Proxy {
    /// A proxy with no routes yet; call [`Proxy::check_health`] in a task
    /// to run the active checks.
    pub fn new(config: ProxyConfig) -> Arc<Self> {
        Arc::new(Self {
            config,
            table: ArcSwap::from_pointee(Table::default()),
            certs: ArcSwap::from_pointee(tls::Certs::default()),
            challenges: ArcSwap::from_pointee(tls::Challenges::default()),
            known: Mutex::new(HashMap::new()),
            metrics: metrics::Metrics::new(),
            timer: timer::Coarse::default(),
        })
    }

    /// Replaces every route at once.
    pub fn set_routes(&self, routes: &[Route]) {
        let mut known = self.known.lock().expect("backend registry lock");
        let table = Table::new(
            routes
                .iter()
                .map(|r| {
                    let backends = r
                        .backends
                        .iter()
                        .map(|ip| {
                            let addr = SocketAddr::new(IpAddr::V4(*ip), r.spec.port);
                            match known.get(&addr).and_then(std::sync::Weak::upgrade) {
                                Some(b) => b,
                                None => {
                                    let b = Arc::new(Backend::new(addr));
                                    known.insert(addr, Arc::downgrade(&b));
                                    b
                                }
                            }
                        })
                        .collect();
                    (
                        r.spec.clone(),
                        Pool {
                            backends,
                            next: Default::default(),
                            metrics: self.metrics.route(&r.spec),
                        },
                    )
                })
                .collect(),
        );
        self.metrics
            .retain(&routes.iter().map(|r| &r.spec).collect::<Vec<_>>());
        self.table.store(Arc::new(table));
        known.retain(|_, w| w.strong_count() > 0);
    }

    /// Replaces every certificate at once. A certificate that does not
    /// parse is left out and reported.
    pub fn set_certs(&self, certs: &[CertPem]) -> Vec<CertError> {
        let (store, errors) = tls::Certs::build(certs);
        self.certs.store(Arc::new(store));
        errors
    }

    /// Replaces the pending ACME challenges: HTTP-01 tokens with their key
    /// authorizations, and TLS-ALPN-01 certificates by name.
    pub fn set_challenges(&self, http01: HashMap<String, String>, alpn: &[CertPem]) {
        self.challenges
            .store(Arc::new(tls::Challenges::new(http01, alpn)));
    }

    /// Whether a certificate covers `host`.
    pub fn has_cert(&self, host: &str) -> bool {
        self.certs.load().get(host).is_some()
    }

    /// The proxy's metrics, in the Prometheus text format (without the
    /// final `# EOF`, so that a caller can add its own after).
    pub fn encode_metrics(&self, out: &mut String) {
        self.metrics.encode(out);
    }

    /// The number of routes now.
    pub fn route_count(&self) -> usize {
        self.table.load().len()
    }

    /// Polls every route's health path on each of its backends, forever.
    pub async fn check_health(self: Arc<Self>) {
        loop {
            tokio::time::sleep(self.config.check_every).await;
            let table = self.table.load_full();
            let mut checks = Vec::new();
            for (spec, pool) in table.routes() {
                let Some(path) = &spec.health_path else {
                    continue;
                };
                for b in &pool.backends {
                    checks.push(forward::check(&self, b.clone(), path.clone()));
                }
            }
            futures::future::join_all(checks).await;
        }
    }
}
