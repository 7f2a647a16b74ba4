//! Usage figures outside the cgroup: a container's network counters (read
//! in its network namespace through its init's `/proc/PID/net/dev`) and
//! the node's CPU and memory. The parsers are pure.

use std::path::Path;

use serde::{Deserialize, Serialize};

/// Network counters of a namespace, summed over its devices but `lo`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetStats {
    /// Bytes received.
    pub rx_bytes: u64,
    /// Packets received.
    pub rx_packets: u64,
    /// Bytes sent.
    pub tx_bytes: u64,
    /// Packets sent.
    pub tx_packets: u64,
}

/// Parses `/proc/net/dev`.
pub fn parse_net_dev(text: &str) -> NetStats {
    let mut s = NetStats::default();
    for l in text.lines().skip(2) {
        let Some((dev, rest)) = l.split_once(':') else {
            continue;
        };
        if dev.trim() == "lo" {
            continue;
        }
        let f: Vec<u64> = rest
            .split_whitespace()
            .map(|v| v.parse().unwrap_or(0))
            .collect();
        if f.len() >= 10 {
            s.rx_bytes += f[0];
            s.rx_packets += f[1];
            s.tx_bytes += f[8];
            s.tx_packets += f[9];
        }
    }
    s
}

/// The network counters of process `pid`'s network namespace.
pub fn net_of(pid: i32) -> std::io::Result<NetStats> {
    let t = std::fs::read_to_string(Path::new("/proc").join(pid.to_string()).join("net/dev"))?;
    Ok(parse_net_dev(&t))
}

/// The node's CPU time (all CPUs, in clock ticks) and memory.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeSample {
    /// CPU time spent busy, ticks.
    pub busy: u64,
    /// CPU time in total, ticks.
    pub total: u64,
    /// Memory, bytes.
    pub mem_total: u64,
    /// Memory available to new work (MemAvailable), bytes.
    pub mem_available: u64,
}

/// Parses the `cpu` line of `/proc/stat` and `/proc/meminfo`.
pub fn parse_node(stat: &str, meminfo: &str) -> NodeSample {
    let mut n = NodeSample::default();
    if let Some(l) = stat.lines().find(|l| l.starts_with("cpu ")) {
        // user nice system idle iowait irq softirq steal (guest counted
        // in user already).
        let f: Vec<u64> = l
            .split_whitespace()
            .skip(1)
            .take(8)
            .map(|v| v.parse().unwrap_or(0))
            .collect();
        n.total = f.iter().sum();
        let idle = f.get(3).copied().unwrap_or(0) + f.get(4).copied().unwrap_or(0);
        n.busy = n.total.saturating_sub(idle);
    }
    let kb = |key: &str| {
        meminfo
            .lines()
            .find(|l| l.starts_with(key))
            .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
            .unwrap_or(0)
            * 1024
    };
    n.mem_total = kb("MemTotal:");
    n.mem_available = kb("MemAvailable:");
    n
}

/// Reads the node's figures now.
pub fn node() -> std::io::Result<NodeSample> {
    Ok(parse_node(
        &std::fs::read_to_string("/proc/stat")?,
        &std::fs::read_to_string("/proc/meminfo")?,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn net_dev_sums_all_but_loopback() {
        let t = "Inter-|   Receive                                                |  Transmit\n face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed\n    lo:  1000      10    0    0    0     0          0         0     1000      10    0    0    0     0       0          0\n  eth0: 5000      50    0    0    0     0          0         0     7000      70    0    0    0     0       0          0\n  eth1:5 1 0 0 0 0 0 0 7 2 0 0 0 0 0 0\n";
        assert_eq!(
            parse_net_dev(t),
            NetStats {
                rx_bytes: 5005,
                rx_packets: 51,
                tx_bytes: 7007,
                tx_packets: 72
            }
        );
    }

    #[test]
    fn node_cpu_and_memory() {
        let stat = "cpu  100 0 50 800 50 0 0 0 0 0\ncpu0 1 2 3\n";
        let mem = "MemTotal:       2048 kB\nMemFree:        512 kB\nMemAvailable:   1024 kB\n";
        let n = parse_node(stat, mem);
        assert_eq!((n.busy, n.total), (150, 1000));
        assert_eq!((n.mem_total, n.mem_available), (2048 * 1024, 1024 * 1024));
    }
}
