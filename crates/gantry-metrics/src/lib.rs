//! Prometheus exposition shared by agents and managers: the containers'
//! and nodes' figures (`NodeStats`, as agents read them and report them)
//! as metric families labelled by node, stack, service, task and
//! container, and the conversion of prometheus-client's OpenMetrics text
//! into Prometheus' text format 0.0.4 (what Debian's promtool checks and
//! every Prometheus scrapes).

use gantry_api::NodeStats;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// The labels of a task's container.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TaskLabels {
    node: String,
    stack: String,
    service: String,
    task: String,
    slot: String,
    container: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct NodeLabels {
    node: String,
}

fn counter(reg: &mut Registry, name: &str, help: &str) -> Family<TaskLabels, Counter> {
    let f = Family::<TaskLabels, Counter>::default();
    reg.register(name, help, f.clone());
    f
}

type FloatCounter = Counter<f64, std::sync::atomic::AtomicU64>;

fn counter_f(reg: &mut Registry, name: &str, help: &str) -> Family<TaskLabels, FloatCounter> {
    let f = Family::<TaskLabels, FloatCounter>::default();
    reg.register(name, help, f.clone());
    f
}

fn gauge(reg: &mut Registry, name: &str, help: &str) -> Family<TaskLabels, Gauge> {
    let f = Family::<TaskLabels, Gauge>::default();
    reg.register(name, help, f.clone());
    f
}

fn gauge_f(
    reg: &mut Registry,
    name: &str,
    help: &str,
) -> Family<TaskLabels, Gauge<f64, std::sync::atomic::AtomicU64>> {
    let f = Family::<TaskLabels, Gauge<f64, std::sync::atomic::AtomicU64>>::default();
    reg.register(name, help, f.clone());
    f
}

fn i(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// The containers' and nodes' families for `nodes` (node name, figures),
/// in text format 0.0.4, appended to `out`.
pub fn encode_nodes<'a>(
    out: &mut String,
    nodes: impl IntoIterator<Item = (&'a str, &'a NodeStats)>,
) {
    let mut reg = Registry::with_prefix("gantry");
    let cpu = counter_f(
        &mut reg,
        "container_cpu_usage_seconds",
        "CPU time the container used",
    );
    let cpu_pct = gauge_f(
        &mut reg,
        "container_cpu_usage_percent",
        "CPU in use over the last interval, percent of one CPU",
    );
    let throttled = counter(
        &mut reg,
        "container_cpu_throttled_periods",
        "Periods in which the CPU quota throttled the container",
    );
    let throttled_s = counter_f(
        &mut reg,
        "container_cpu_throttled_seconds",
        "Time the CPU quota throttled the container",
    );
    let mem = gauge(
        &mut reg,
        "container_memory_usage_bytes",
        "Memory in use (the cgroup's figure, page cache included)",
    );
    let working = gauge(
        &mut reg,
        "container_memory_working_set_bytes",
        "Memory in use less inactive page cache (what docker stats shows)",
    );
    let limit = gauge(
        &mut reg,
        "container_memory_limit_bytes",
        "The container's memory limit (absent when unlimited)",
    );
    let oom = counter(
        &mut reg,
        "container_oom_kills",
        "Processes the OOM killer killed in the container",
    );
    let pids = gauge(&mut reg, "container_pids", "Processes in the container");
    let blk_r = counter(
        &mut reg,
        "container_blkio_read_bytes",
        "Bytes read from block devices",
    );
    let blk_w = counter(
        &mut reg,
        "container_blkio_write_bytes",
        "Bytes written to block devices",
    );
    let net = [
        counter(
            &mut reg,
            "container_network_receive_bytes",
            "Bytes received (devices but lo)",
        ),
        counter(
            &mut reg,
            "container_network_receive_packets",
            "Packets received (devices but lo)",
        ),
        counter(
            &mut reg,
            "container_network_transmit_bytes",
            "Bytes sent (devices but lo)",
        ),
        counter(
            &mut reg,
            "container_network_transmit_packets",
            "Packets sent (devices but lo)",
        ),
    ];
    let node_cpus = Family::<NodeLabels, Gauge>::default();
    reg.register("node_cpus", "CPUs of the node", node_cpus.clone());
    let node_cpu = Family::<NodeLabels, Gauge<f64, std::sync::atomic::AtomicU64>>::default();
    reg.register(
        "node_cpu_usage_percent",
        "CPU in use over the last interval, percent of all the node's CPUs",
        node_cpu.clone(),
    );
    let node_mem = Family::<NodeLabels, Gauge>::default();
    reg.register(
        "node_memory_total_bytes",
        "Memory of the node",
        node_mem.clone(),
    );
    let node_avail = Family::<NodeLabels, Gauge>::default();
    reg.register(
        "node_memory_available_bytes",
        "Memory available to new work on the node",
        node_avail.clone(),
    );
    let node_tasks = Family::<NodeLabels, Gauge>::default();
    reg.register(
        "node_task_containers",
        "Running task containers on the node",
        node_tasks.clone(),
    );

    for (node, s) in nodes {
        let n = NodeLabels {
            node: node.to_owned(),
        };
        node_cpus.get_or_create(&n).set(i(s.cpus));
        node_cpu.get_or_create(&n).set(s.cpu_percent);
        node_mem.get_or_create(&n).set(i(s.mem_total));
        node_avail.get_or_create(&n).set(i(s.mem_available));
        node_tasks.get_or_create(&n).set(s.tasks.len() as i64);
        for t in &s.tasks {
            let l = TaskLabels {
                node: node.to_owned(),
                stack: t.stack.clone(),
                service: t.service.clone(),
                task: t.task.clone(),
                slot: t.slot.to_string(),
                container: t.container.clone(),
            };
            cpu.get_or_create(&l).inc_by(t.cpu_ns as f64 / 1e9);
            cpu_pct.get_or_create(&l).set(t.cpu_percent);
            throttled.get_or_create(&l).inc_by(t.throttled_periods);
            throttled_s
                .get_or_create(&l)
                .inc_by(t.throttled_ns as f64 / 1e9);
            mem.get_or_create(&l).set(i(t.memory_usage));
            working.get_or_create(&l).set(i(t.memory_working_set));
            if let Some(m) = t.memory_limit {
                limit.get_or_create(&l).set(i(m));
            }
            oom.get_or_create(&l).inc_by(t.oom_kills);
            pids.get_or_create(&l).set(i(t.pids));
            blk_r.get_or_create(&l).inc_by(t.blk_read);
            blk_w.get_or_create(&l).inc_by(t.blk_write);
            if let Some(v) = t.net {
                for (f, v) in net.iter().zip(v) {
                    f.get_or_create(&l).inc_by(v);
                }
            }
        }
    }
    let mut om = String::new();
    let _ = prometheus_client::encoding::text::encode_registry(&mut om, &reg);
    out.push_str(&text_format(&om));
}

/// Labels of one sample: (name, value) pairs.
pub type Labels = Vec<(String, String)>;

/// Families made from figures at hand (a scrape's snapshot), under the
/// `gantry_` prefix.
pub struct Families {
    reg: Registry,
}

impl Default for Families {
    fn default() -> Self {
        Self {
            reg: Registry::with_prefix("gantry"),
        }
    }
}

impl Families {
    /// A counter family (`name` without `_total`).
    pub fn counter(&mut self, name: &str, help: &str, samples: &[(Labels, u64)]) {
        if let [(l, v)] = samples {
            if l.is_empty() {
                let c = Counter::<u64>::default();
                c.inc_by(*v);
                self.reg.register(name, help, c);
                return;
            }
        }
        let f = Family::<Labels, Counter>::default();
        for (l, v) in samples {
            f.get_or_create(l).inc_by(*v);
        }
        self.reg.register(name, help, f);
    }

    /// A gauge family.
    pub fn gauge(&mut self, name: &str, help: &str, samples: &[(Labels, f64)]) {
        if let [(l, v)] = samples {
            if l.is_empty() {
                let g = Gauge::<f64, std::sync::atomic::AtomicU64>::default();
                g.set(*v);
                self.reg.register(name, help, g);
                return;
            }
        }
        let f = Family::<Labels, Gauge<f64, std::sync::atomic::AtomicU64>>::default();
        for (l, v) in samples {
            f.get_or_create(l).set(*v);
        }
        self.reg.register(name, help, f);
    }

    /// Appends them to `out` in text format 0.0.4.
    pub fn encode(&self, out: &mut String) {
        let mut om = String::new();
        let _ = prometheus_client::encoding::text::encode_registry(&mut om, &self.reg);
        out.push_str(&text_format(&om));
    }
}

/// One label.
pub fn label(k: &str, v: impl Into<String>) -> Labels {
    vec![(k.to_owned(), v.into())]
}

/// OpenMetrics text (prometheus-client's) to Prometheus text 0.0.4: a
/// counter's HELP and TYPE name its `_total` samples, and there is no
/// `# EOF`.
pub fn text_format(openmetrics: &str) -> String {
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
