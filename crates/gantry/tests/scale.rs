//! The scale harness at a small size: `scripts/bench-scale.sh` (the
//! benchmark's own script, with this build's binary) starts a manager and
//! simulated nodes that join with the token and speak the real protocol
//! over mutual TLS, deploys stacks over them, waits until every task is
//! reported running, and measures what one change of one service sends.
//! The full sizes (1,000 and 5,000 nodes) are in BENCHMARKS.md.

use std::collections::BTreeMap;
use std::process::Command;

const NODES: u64 = 60;
const TASKS: u64 = 600;
/// One service per stack, 10 tasks each: a service's tasks are on about a
/// sixth of the nodes.
const STACKS: u64 = 60;

/// `key=value` pairs of a line.
fn pairs(line: &str) -> BTreeMap<String, String> {
    line.split_whitespace()
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

#[test]
fn simulated_nodes_run_a_stack_and_a_change_sends_deltas() {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../..");
    let out = Command::new("bash")
        .arg(format!("{root}/scripts/bench-scale.sh"))
        .env("GANTRY_BIN", env!("CARGO_BIN_EXE_gantry"))
        .env("NODES", NODES.to_string())
        .env("TASKS", TASKS.to_string())
        .env("SERVICES", STACKS.to_string())
        .env("STACKS", STACKS.to_string())
        .env("TIMEOUT", "120")
        .output()
        .expect("bash runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    let last = pairs(stdout.lines().last().unwrap_or_default());
    let num = |k: &str| -> f64 {
        last.get(k)
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {k} in {stdout}"))
    };
    assert_eq!(num("nodes") as u64, NODES);
    assert_eq!(num("tasks") as u64, TASKS);
    assert!(num("running_after_s") > 0.0);
    assert!(num("manager_peak_rss_mb") > 0.0);
    // One more replica of one service: the new task to one node, and the
    // service's DNS and network addresses as deltas to the nodes on its
    // stack's network (about 11 of 60): a few hundred bytes each, where
    // sending them to every node would be over 15 KB.
    let change = num("bytes_per_service_change");
    assert!(change > 0.0, "{stdout}");
    assert!(change < 12_000.0, "{change} bytes: {stdout}");
    // Every simulated node kept its stream: no line out of order.
    let sim = stderr
        .lines()
        .rfind(|l| l.starts_with("# sim:"))
        .unwrap_or_else(|| panic!("{stderr}"));
    let sim = pairs(sim);
    assert_eq!(sim["joined"], NODES.to_string(), "{stderr}");
    assert_eq!(
        sim["running"].parse::<u64>().unwrap(),
        TASKS + 1,
        "{stderr}"
    );
    assert_eq!(sim["resyncs"], "0", "{stderr}");
}
