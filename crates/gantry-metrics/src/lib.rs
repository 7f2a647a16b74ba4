//! Prometheus exposition shared by agents and managers: the containers'
//! and nodes' figures (`NodeStats`, as agents read them and report them)
//! as metric families labelled by node, stack, service, task and
//! container, and the conversion of prometheus-client's OpenMetrics text
//! into Prometheus' text format 0.0.4 (what Debian's promtool checks and
//! every Prometheus scrapes).

use std::sync::atomic::AtomicU64;

use gantry_api::NodeStats;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// The containers' and nodes' families for `nodes` (node name, figures),
/// in text format 0.0.4, appended to `out`.
pub fn encode_nodes<'a>(
    out: &mut String,
    nodes: impl IntoIterator<Item = (&'a str, &'a NodeStats)>,
) {
    // Per family, its samples; families are registered once filled.
    let mut cpu = Vec::new();
    let mut cpu_pct = Vec::new();
    let mut throttled = Vec::new();
    let mut throttled_s = Vec::new();
    let mut mem = Vec::new();
    let mut working = Vec::new();
    let mut limit = Vec::new();
    let mut oom = Vec::new();
    let mut pids = Vec::new();
    let mut blk = [Vec::new(), Vec::new()];
    let mut net = [Vec::new(), Vec::new(), Vec::new(), Vec::new()];
    let mut node_cpus = Vec::new();
    let mut node_cpu = Vec::new();
    let mut node_mem = Vec::new();
    let mut node_avail = Vec::new();
    let mut node_tasks = Vec::new();
    for (node, s) in nodes {
        let n = label("node", node);
        node_cpus.push((n.clone(), s.cpus as f64));
        node_cpu.push((n.clone(), s.cpu_percent));
        node_mem.push((n.clone(), s.mem_total as f64));
        node_avail.push((n.clone(), s.mem_available as f64));
        node_tasks.push((n, s.tasks.len() as f64));
        for t in &s.tasks {
            let l: Labels = [
                ("node", node),
                ("stack", &t.stack),
                ("service", &t.service),
                ("task", &t.task),
                ("slot", &t.slot.to_string()),
                ("container", &t.container),
            ]
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
            cpu.push((l.clone(), t.cpu_ns as f64 / 1e9));
            cpu_pct.push((l.clone(), t.cpu_percent));
            throttled.push((l.clone(), t.throttled_periods));
            throttled_s.push((l.clone(), t.throttled_ns as f64 / 1e9));
            mem.push((l.clone(), t.memory_usage as f64));
            working.push((l.clone(), t.memory_working_set as f64));
            if let Some(m) = t.memory_limit {
                limit.push((l.clone(), m as f64));
            }
            oom.push((l.clone(), t.oom_kills));
            pids.push((l.clone(), t.pids as f64));
            blk[0].push((l.clone(), t.blk_read));
            blk[1].push((l.clone(), t.blk_write));
            if let Some(v) = t.net {
                for (f, v) in net.iter_mut().zip(v) {
                    f.push((l.clone(), v));
                }
            }
        }
    }
    let mut f = Families::default();
    f.counter_f(
        "container_cpu_usage_seconds",
        "CPU time the container used",
        &cpu,
    );
    f.gauge(
        "container_cpu_usage_percent",
        "CPU in use over the last interval, percent of one CPU",
        &cpu_pct,
    );
    f.counter(
        "container_cpu_throttled_periods",
        "Periods in which the CPU quota throttled the container",
        &throttled,
    );
    f.counter_f(
        "container_cpu_throttled_seconds",
        "Time the CPU quota throttled the container",
        &throttled_s,
    );
    f.gauge(
        "container_memory_usage_bytes",
        "Memory in use (the cgroup's figure, page cache included)",
        &mem,
    );
    f.gauge(
        "container_memory_working_set_bytes",
        "Memory in use less inactive page cache (what docker stats shows)",
        &working,
    );
    f.gauge(
        "container_memory_limit_bytes",
        "The container's memory limit (absent when unlimited)",
        &limit,
    );
    f.counter(
        "container_oom_kills",
        "Processes the OOM killer killed in the container",
        &oom,
    );
    f.gauge("container_pids", "Processes in the container", &pids);
    f.counter(
        "container_blkio_read_bytes",
        "Bytes read from block devices",
        &blk[0],
    );
    f.counter(
        "container_blkio_write_bytes",
        "Bytes written to block devices",
        &blk[1],
    );
    for (i, (name, help)) in [
        (
            "container_network_receive_bytes",
            "Bytes received (devices but lo)",
        ),
        (
            "container_network_receive_packets",
            "Packets received (devices but lo)",
        ),
        (
            "container_network_transmit_bytes",
            "Bytes sent (devices but lo)",
        ),
        (
            "container_network_transmit_packets",
            "Packets sent (devices but lo)",
        ),
    ]
    .into_iter()
    .enumerate()
    {
        f.counter(name, help, &net[i]);
    }
    f.gauge("node_cpus", "CPUs of the node", &node_cpus);
    f.gauge(
        "node_cpu_usage_percent",
        "CPU in use over the last interval, percent of all the node's CPUs",
        &node_cpu,
    );
    f.gauge("node_memory_total_bytes", "Memory of the node", &node_mem);
    f.gauge(
        "node_memory_available_bytes",
        "Memory available to new work on the node",
        &node_avail,
    );
    f.gauge(
        "node_task_containers",
        "Running task containers on the node",
        &node_tasks,
    );
    f.encode(out);
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

/// A float counter (seconds).
type FloatCounter = Counter<f64, AtomicU64>;

impl Families {
    /// A counter family (`name` without `_total`).
    pub fn counter(&mut self, name: &str, help: &str, samples: &[(Labels, u64)]) {
        self.family(name, help, samples, |c: &Counter, v| {
            c.inc_by(v);
        });
    }

    /// A counter family of fractional values (seconds).
    pub fn counter_f(&mut self, name: &str, help: &str, samples: &[(Labels, f64)]) {
        self.family(name, help, samples, |c: &FloatCounter, v| {
            c.inc_by(v);
        });
    }

    /// A gauge family.
    pub fn gauge(&mut self, name: &str, help: &str, samples: &[(Labels, f64)]) {
        self.family(name, help, samples, |g: &Gauge<f64, AtomicU64>, v| {
            g.set(v);
        });
    }

    /// Registers a family of `M` with its samples (one sample without
    /// labels is registered as a plain metric, with no `{}`).
    fn family<M, V: Copy>(
        &mut self,
        name: &str,
        help: &str,
        samples: &[(Labels, V)],
        set: impl Fn(&M, V),
    ) where
        M: prometheus_client::metrics::TypedMetric
            + prometheus_client::encoding::EncodeMetric
            + Default
            + Clone
            + std::fmt::Debug
            + Send
            + Sync
            + 'static,
    {
        if let [(l, v)] = samples {
            if l.is_empty() {
                let m = M::default();
                set(&m, *v);
                self.reg.register(name, help, m);
                return;
            }
        }
        let f = Family::<Labels, M>::default();
        for (l, v) in samples {
            set(&f.get_or_create(l), *v);
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
