//! The agent's Prometheus endpoint: `GET /metrics` in Prometheus' text
//! format 0.0.4 (what Debian's promtool checks, and every Prometheus
//! scrapes): the node's and its task containers' figures, and the edge
//! proxy's metrics.

use std::sync::Arc;

use hyper::StatusCode;
use tokio::net::TcpListener;

use crate::edge::Edge;
use crate::http::reply;

/// Serves `/metrics` on `l` until the task is dropped.
pub(crate) async fn serve(
    l: TcpListener,
    edge: Option<Arc<Edge>>,
    stats: Arc<crate::stats::Stats>,
    dns: Arc<gantry_dns::Table>,
    node: String,
) {
    crate::http::serve(l, move |req| {
        let edge = edge.clone();
        let stats = stats.clone();
        let dns = dns.clone();
        let node = node.clone();
        async move {
            if req.uri().path() != "/metrics" {
                return reply(StatusCode::NOT_FOUND, "text/plain", "not found\n");
            }
            let mut out = String::new();
            if let Some(e) = &edge {
                let mut om = String::new();
                e.encode_metrics(&mut om);
                out.push_str(&gantry_metrics::text_format(&om));
            }
            if let Some(s) = stats.latest() {
                gantry_metrics::encode_nodes(&mut out, [(node.as_str(), &s)]);
            }
            let c = dns.counts();
            let mut f = gantry_metrics::Families::default();
            let r = |v: &str| gantry_metrics::label("result", v);
            f.counter(
                "dns_queries",
                "DNS queries from containers, by what became of them",
                &[
                    (r("answered"), c.answered),
                    (r("forwarded"), c.forwarded),
                    (r("failed"), c.failed),
                    (r("dropped"), c.dropped),
                ],
            );
            f.encode(&mut out);
            reply(
                StatusCode::OK,
                "text/plain; version=0.0.4; charset=utf-8",
                out,
            )
        }
    })
    .await
}
