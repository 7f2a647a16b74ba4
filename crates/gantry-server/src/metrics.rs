//! The manager's Prometheus endpoint (`--manager-metrics`, text format
//! 0.0.4): the cluster view (every node's and task container's figures
//! from the agents' reports, labelled by node, stack, service and task),
//! volumes' use and limits, and the manager's own: nodes, services and
//! tasks by state (pending
//! tasks are the scheduler's backlog), the store, certificates and ACME
//! orders.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use axum::extract::State;
use axum::routing::get;
use axum::Router;
use gantry_metrics::{label, Families, Labels};
use gantry_store::TaskState;
use tokio::net::TcpListener;

use crate::Shared;

/// Counters the manager keeps as it works.
#[derive(Default)]
pub(crate) struct Counters {
    /// ACME orders that gave a certificate.
    pub(crate) acme_issued: AtomicU64,
    /// ACME orders that failed.
    pub(crate) acme_failed: AtomicU64,
    /// Tasks the scheduler placed on a node.
    pub(crate) placed: AtomicU64,
    /// Bytes of assignment lines queued to nodes.
    pub(crate) assign_bytes: AtomicU64,
    /// Assignment lines queued to nodes.
    pub(crate) assign_lines: AtomicU64,
}

pub(crate) async fn serve(sh: Arc<Shared>, l: TcpListener) {
    let app = Router::new().route("/metrics", get(metrics)).with_state(sh);
    if let Err(e) = axum::serve(l, app).await {
        tracing::error!("metrics endpoint: {e}");
    }
}

async fn metrics(State(sh): State<Arc<Shared>>) -> impl axum::response::IntoResponse {
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        encode(&sh),
    )
}

pub(crate) fn encode(sh: &Shared) -> String {
    let mut out = String::new();
    let stats = sh.stats.lock().expect("stats lock").clone();
    let (names, mut f) = sh.read(|s| {
        let mut f = Families::default();
        let up = s.nodes.values().filter(|n| n.up).count() as f64;
        f.gauge(
            "cluster_nodes",
            "Nodes by state",
            &[
                (label("state", "up"), up),
                (label("state", "down"), s.nodes.len() as f64 - up),
            ],
        );
        f.gauge(
            "cluster_services",
            "Services",
            &[(vec![], s.services.len() as f64)],
        );
        let mut by_state: Vec<(Labels, f64)> = Vec::new();
        for st in [
            TaskState::Pending,
            TaskState::Assigned,
            TaskState::Running,
            TaskState::Failed,
            TaskState::Shutdown,
        ] {
            let n = s
                .tasks
                .values()
                .filter(|t| t.desired == TaskState::Running && t.state == st)
                .count();
            let name = serde_json::to_value(st)
                .ok()
                .and_then(|v| v.as_str().map(str::to_owned))
                .unwrap_or_default();
            by_state.push((label("state", name), n as f64));
        }
        f.gauge(
            "cluster_tasks",
            "Tasks meant to run, by their state (pending: the scheduler found no node yet)",
            &by_state,
        );
        let certs: Vec<(Labels, f64)> = s
            .certs
            .values()
            .map(|c| {
                (
                    vec![
                        ("name".to_owned(), c.name.clone()),
                        ("source".to_owned(), c.source.name().to_owned()),
                    ],
                    c.not_after_ms as f64 / 1000.0,
                )
            })
            .collect();
        f.gauge(
            "certificate_expiry_timestamp_seconds",
            "When each edge certificate expires",
            &certs,
        );
        let names: std::collections::HashMap<String, String> = s
            .nodes
            .values()
            .map(|n| (n.id.clone(), n.hostname.clone()))
            .collect();
        (names, f)
    });
    let idx = sh.store.lock().expect("store lock").index();
    f.gauge(
        "store_index",
        "The index of the last command the store applied",
        &[(vec![], idx as f64)],
    );
    let c = &sh.counters;
    f.counter(
        "acme_orders",
        "ACME orders, by result",
        &[
            (
                label("result", "issued"),
                c.acme_issued.load(Ordering::Relaxed),
            ),
            (
                label("result", "failed"),
                c.acme_failed.load(Ordering::Relaxed),
            ),
        ],
    );
    f.counter(
        "scheduler_placements",
        "Tasks the scheduler placed on a node",
        &[(vec![], c.placed.load(Ordering::Relaxed))],
    );
    f.counter(
        "manager_assignment_bytes",
        "Bytes of assignment lines (whole sets and changes) sent to nodes",
        &[(vec![], c.assign_bytes.load(Ordering::Relaxed))],
    );
    f.counter(
        "manager_assignment_lines",
        "Assignment lines (whole sets and changes) sent to nodes",
        &[(vec![], c.assign_lines.load(Ordering::Relaxed))],
    );
    // Volumes, as their nodes last measured them.
    let (mut used, mut limit) = (Vec::new(), Vec::new());
    for (id, r) in sh.volumes.lock().expect("volumes lock").iter() {
        let Some(node) = names.get(id) else {
            continue;
        };
        for v in r.volumes.values() {
            let l: Labels = vec![
                ("node".into(), node.clone()),
                ("volume".into(), v.name.clone()),
            ];
            used.push((l.clone(), v.used as f64));
            if let Some(n) = v.limit {
                limit.push((l, n as f64));
            }
        }
    }
    used.sort_by(|a, b| a.0.cmp(&b.0));
    limit.sort_by(|a, b| a.0.cmp(&b.0));
    f.gauge(
        "volume_used_bytes",
        "Bytes a volume holds, as its node last measured them",
        &used,
    );
    f.gauge(
        "volume_limit_bytes",
        "A sized volume's hard limit, bytes",
        &limit,
    );
    // Backups, as the state records them.
    let now = crate::now_ms();
    let (mut age, mut took, mut failing) = (Vec::new(), Vec::new(), Vec::new());
    for r in sh.read(|s| s.backups.values().cloned().collect::<Vec<_>>()) {
        let Some(node) = names.get(&r.node) else {
            continue;
        };
        let l: Labels = vec![("node".into(), node.clone()), ("volume".into(), r.volume)];
        if let Some(ok) = r.last_ok_ms {
            age.push((l.clone(), now.saturating_sub(ok) as f64 / 1000.0));
        }
        took.push((l.clone(), r.millis as f64 / 1000.0));
        failing.push((l, f64::from(r.failures)));
    }
    for v in [&mut age, &mut took, &mut failing] {
        v.sort_by(|a, b| a.0.cmp(&b.0));
    }
    f.gauge(
        "volume_backup_age_seconds",
        "Seconds since the volume's last successful backup",
        &age,
    );
    f.gauge(
        "volume_backup_duration_seconds",
        "How long the volume's last backup took",
        &took,
    );
    f.gauge(
        "volume_backup_failures",
        "The volume's failed backups in a row",
        &failing,
    );
    f.encode(&mut out);
    let mut nodes: Vec<(&str, &gantry_api::NodeStats)> = stats
        .iter()
        .map(|(id, s)| (names.get(id).map_or(id.as_str(), String::as_str), s))
        .collect();
    nodes.sort_by_key(|(n, _)| *n);
    gantry_metrics::encode_nodes(&mut out, nodes);
    out
}
