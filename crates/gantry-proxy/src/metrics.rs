//! The proxy's Prometheus metrics. Each route holds its own counter and
//! histogram handles, taken when the table is built, so a request only
//! does atomic adds.

use std::collections::HashSet;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};

use gantry_route::RouteSpec;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    route: String,
    service: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CodeLabels {
    route: String,
    service: String,
    code: String,
}

fn histogram() -> Histogram {
    // 100 µs to ~6.5 s.
    Histogram::new(exponential_buckets(0.0001, 2.0, 17))
}

/// One route's handles.
pub(crate) struct RouteMetrics {
    /// Responses by class: 1xx..5xx.
    codes: [Counter; 5],
    duration: Histogram,
    bytes: Counter,
}

impl RouteMetrics {
    /// A response went out after `secs`.
    pub(crate) fn observe(&self, status: u16, secs: f64) {
        let class = usize::from(status / 100).clamp(1, 5) - 1;
        self.codes[class].inc();
        self.duration.observe(secs);
    }

    /// Response body bytes sent.
    pub(crate) fn bytes(&self, n: usize) {
        self.bytes.inc_by(n as u64);
    }
}

/// Every metric of one proxy.
pub(crate) struct Metrics {
    registry: Registry,
    requests: Family<CodeLabels, Counter>,
    duration: Family<RouteLabels, Histogram, fn() -> Histogram>,
    bytes: Family<RouteLabels, Counter>,
    pub(crate) unrouted: Counter,
    pub(crate) connections: Gauge<i64, std::sync::atomic::AtomicI64>,
    pub(crate) tunnels: Gauge<i64, std::sync::atomic::AtomicI64>,
    pub(crate) routes: Gauge<i64, std::sync::atomic::AtomicI64>,
    pub(crate) backend_errors: Counter<u64, AtomicU64>,
    /// The label sets in the families now, to drop those of removed routes.
    live: Mutex<HashSet<RouteLabels>>,
}

impl Metrics {
    pub(crate) fn new() -> Self {
        let mut m = Self {
            registry: Registry::with_prefix("gantry_proxy"),
            requests: Family::default(),
            duration: Family::new_with_constructor(histogram),
            bytes: Family::default(),
            unrouted: Counter::default(),
            connections: Gauge::default(),
            tunnels: Gauge::default(),
            routes: Gauge::default(),
            backend_errors: Counter::default(),
            live: Mutex::new(HashSet::new()),
        };
        let r = &mut m.registry;
        r.register(
            "requests",
            "Responses by route, service and status class",
            m.requests.clone(),
        );
        r.register(
            "request_duration_seconds",
            "From a request's head to its response's head",
            m.duration.clone(),
        );
        r.register(
            "response_bytes",
            "Response body bytes sent",
            m.bytes.clone(),
        );
        r.register(
            "unrouted_requests",
            "Requests no route matched (404)",
            m.unrouted.clone(),
        );
        r.register(
            "open_connections",
            "Client connections open",
            m.connections.clone(),
        );
        r.register(
            "open_tunnels",
            "Upgraded connections (WebSocket...) open",
            m.tunnels.clone(),
        );
        r.register("routes", "Routes in the table", m.routes.clone());
        r.register(
            "backend_errors",
            "Backends that refused a connection or failed to answer",
            m.backend_errors.clone(),
        );
        m
    }

    /// The handles of a route, creating its series.
    pub(crate) fn route(&self, spec: &RouteSpec) -> Arc<RouteMetrics> {
        let labels = RouteLabels {
            route: route_name(spec),
            service: spec.service.clone(),
        };
        let code = |c: &str| {
            self.requests
                .get_or_create(&CodeLabels {
                    route: labels.route.clone(),
                    service: labels.service.clone(),
                    code: c.to_owned(),
                })
                .clone()
        };
        let m = RouteMetrics {
            codes: [
                code("1xx"),
                code("2xx"),
                code("3xx"),
                code("4xx"),
                code("5xx"),
            ],
            duration: self.duration.get_or_create(&labels).clone(),
            bytes: self.bytes.get_or_create(&labels).clone(),
        };
        Arc::new(m)
    }

    /// Drops the series of routes that are gone.
    pub(crate) fn retain(&self, specs: &[&RouteSpec]) {
        let now: HashSet<RouteLabels> = specs
            .iter()
            .map(|s| RouteLabels {
                route: route_name(s),
                service: s.service.clone(),
            })
            .collect();
        let mut live = self.live.lock().expect("metrics lock");
        for gone in live.difference(&now) {
            self.duration.remove(gone);
            self.bytes.remove(gone);
            for c in ["1xx", "2xx", "3xx", "4xx", "5xx"] {
                self.requests.remove(&CodeLabels {
                    route: gone.route.clone(),
                    service: gone.service.clone(),
                    code: c.into(),
                });
            }
        }
        *live = now;
        self.routes.set(specs.len() as i64);
    }

    /// The OpenMetrics text.
    pub(crate) fn encode(&self, out: &mut String) {
        let _ = prometheus_client::encoding::text::encode_registry(out, &self.registry);
    }
}

/// A route's name in labels: its hosts and path.
fn route_name(s: &RouteSpec) -> String {
    let hosts = if s.hosts.is_empty() {
        "*".to_owned()
    } else {
        s.hosts.join(",")
    };
    format!("{hosts}{}", s.path)
}
