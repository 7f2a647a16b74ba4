//! The agent's Prometheus endpoint: `GET /metrics` in Prometheus' text
//! format 0.0.4 (what Debian's promtool checks, and every Prometheus
//! scrapes). Today it carries the edge proxy's metrics.

use std::sync::Arc;

use hyper::StatusCode;
use tokio::net::TcpListener;

use crate::edge::Edge;
use crate::http::reply;

/// Serves `/metrics` on `l` until the task is dropped.
pub(crate) async fn serve(l: TcpListener, edge: Option<Arc<Edge>>) {
    crate::http::serve(l, move |req| {
        let edge = edge.clone();
        async move {
            if req.uri().path() != "/metrics" {
                return reply(StatusCode::NOT_FOUND, "text/plain", "not found\n");
            }
            let mut out = String::new();
            if let Some(e) = &edge {
                e.encode_metrics(&mut out);
            }
            reply(
                StatusCode::OK,
                "text/plain; version=0.0.4; charset=utf-8",
                text_format(&out),
            )
        }
    })
    .await
}

/// OpenMetrics text (prometheus-client's) to Prometheus text 0.0.4: a
/// counter's HELP and TYPE name its `_total` samples, and there is no
/// `# EOF`.
pub(crate) fn text_format(openmetrics: &str) -> String {
    let counters: std::collections::HashSet<&str> = openmetrics
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(openmetrics.len());
    for line in openmetrics.lines() {
        if line == "# EOF" {
            continue;
        }
        let meta = ["# HELP ", "# TYPE "]
            .iter()
            .find_map(|p| line.strip_prefix(p).map(|rest| (*p, rest)));
        match meta {
            Some((p, rest)) => {
                let (name, tail) = rest.split_once(' ').unwrap_or((rest, ""));
                if counters.contains(name) && !name.ends_with("_total") {
                    out.push_str(&format!("{p}{name}_total {tail}"));
                } else {
                    out.push_str(line);
                }
            }
            None => out.push_str(line),
        }
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn openmetrics_counters_become_text_format() {
        let om = "# HELP a_requests Requests.\n# TYPE a_requests counter\na_requests_total{x=\"1\"} 3\n# HELP g Open.\n# TYPE g gauge\ng 1\n# EOF\n";
        assert_eq!(
            super::text_format(om),
            "# HELP a_requests_total Requests.\n# TYPE a_requests_total counter\na_requests_total{x=\"1\"} 3\n# HELP g Open.\n# TYPE g gauge\ng 1\n"
        );
    }
}
