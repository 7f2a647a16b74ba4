//! The agent's Prometheus endpoint: `GET /metrics` in Prometheus' text
//! format 0.0.4 (what Debian's promtool checks, and every Prometheus
//! scrapes): the node's and its task containers' figures, the edge
//! proxy's metrics, DNS and the overlay's fast path.

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
    agent: Arc<crate::tasks::Agent>,
    node: String,
) {
    crate::http::serve(l, move |req| {
        let edge = edge.clone();
        let stats = stats.clone();
        let agent = agent.clone();
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
            let c = agent.dns.counts();
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
            f.counter(
                "agent_orphan_containers_removed",
                "Task containers the agent found that no task of the manager accounts for, and removed",
                &[(
                    Vec::new(),
                    agent
                        .orphans_removed
                        .load(std::sync::atomic::Ordering::Relaxed),
                )],
            );
            if let Some(c) = agent.fast_path_counters() {
                let w = |v: &str| gantry_metrics::label("way", v);
                f.counter(
                    "overlay_fast_path_packets",
                    "Packets the overlay's BPF fast path carried between tasks, by way",
                    &[
                        (w("to_task"), c.to_task),
                        (w("local"), c.local),
                        (w("remote"), c.remote),
                    ],
                );
                let d = |v: &str| gantry_metrics::label("direction", v);
                f.counter(
                    "overlay_fast_path_vxlan_packets",
                    "Of those, packets the fast path encapsulated in VXLAN itself (out) or decapsulated (in)",
                    &[(d("out"), c.encapsulated), (d("in"), c.decapsulated)],
                );
                f.counter(
                    "overlay_fast_path_spoofed_packets",
                    "VXLAN packets the fast path dropped: not from a node, or with an inner source outside the sender's block",
                    &[(Vec::new(), c.spoofed)],
                );
            }
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
