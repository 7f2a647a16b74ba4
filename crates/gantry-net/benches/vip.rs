//! Virtual IPs, measured (`scripts/bench-vip.sh` runs it as root in a
//! network namespace of its own; see BENCHMARKS.md).
//!
//! 1. Connections per second, one after the other (connect, accept,
//!    close), to three servers on the loopback: straight to one server's
//!    address; to a Gantry virtual IP (the cgroup `connect()` hook); and to
//!    a virtual IP DNATed by nftables to `numgen random mod 3` (the peer:
//!    kube-proxy's nftables mode, the way a node-level DNAT does it).
//!    Interleaved rounds, medians.
//! 2. What a change costs: [`Vips::set`] for 100 to 10,000 virtual IPs of
//!    three tasks each, whole, then one task of one of them changed.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::process::Command;
use std::time::{Duration, Instant};

use gantry_net::Vips;

const BACKENDS: [Ipv4Addr; 3] = [
    Ipv4Addr::new(198, 18, 1, 1),
    Ipv4Addr::new(198, 18, 1, 2),
    Ipv4Addr::new(198, 18, 1, 3),
];
const GANTRY_VIP: Ipv4Addr = Ipv4Addr::new(198, 18, 255, 251);
const NFT_VIP: Ipv4Addr = Ipv4Addr::new(198, 18, 255, 250);

fn sh(cmd: &str) {
    let ok = Command::new("sh")
        .args(["-c", cmd])
        .status()
        .is_ok_and(|s| s.success());
    assert!(ok, "failed: {cmd}");
}

/// Connections per second to `to`, one after the other: to each address
/// of `to` in turn (one, for a virtual IP; the three servers, straight).
fn rate(to: &[Ipv4Addr], port: u16, n: u32) -> f64 {
    let t = Instant::now();
    for i in 0..n as usize {
        let c = TcpStream::connect(SocketAddr::from((to[i % to.len()], port))).expect("connect");
        // Closed with a reset (linger 0): no TIME_WAIT, so the run does
        // not exhaust its ephemeral ports.
        let l = libc::linger {
            l_onoff: 1,
            l_linger: 0,
        };
        // SAFETY: a valid socket and a linger struct of the size given.
        unsafe {
            libc::setsockopt(
                std::os::fd::AsRawFd::as_raw_fd(&c),
                libc::SOL_SOCKET,
                libc::SO_LINGER,
                (&raw const l).cast(),
                std::mem::size_of::<libc::linger>() as libc::socklen_t,
            );
        }
        drop(c);
    }
    f64::from(n) / t.elapsed().as_secs_f64()
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let n: u32 = std::env::var("CONNECTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20_000);
    let rounds: usize = std::env::var("ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5);
    // Three servers on the namespace's loopback, and a route for the
    // virtual IPs (a connect() needs one before the output hook's DNAT
    // runs).
    sh("ip link set lo up");
    for b in BACKENDS {
        sh(&format!("ip addr add {b}/32 dev lo"));
    }
    sh("ip route add 198.18.255.0/24 dev lo");
    let port = 18080;
    for b in BACKENDS {
        let l = TcpListener::bind((b, port)).expect("bind");
        std::thread::spawn(move || {
            for c in l.incoming() {
                drop(c);
            }
        });
    }
    let map: Vec<String> = BACKENDS
        .iter()
        .enumerate()
        .map(|(i, b)| format!("{i} : {b}"))
        .collect();
    sh(&format!(
        "nft -f - <<'EOF'
table ip vipbench {{
  chain out {{
    type nat hook output priority -100;
    ip daddr {NFT_VIP} tcp dport {port} dnat to numgen random mod 3 map {{ {} }}
  }}
}}
EOF",
        map.join(", ")
    ));
    let mut vips = Vips::load().expect("load the virtual IPs' programs (root, cgroup v2)");
    vips.set(&BTreeMap::from([(GANTRY_VIP, BACKENDS.to_vec())]))
        .unwrap();
    // Warm up each path.
    for to in [&BACKENDS[..], &[GANTRY_VIP], &[NFT_VIP]] {
        rate(to, port, 1000);
    }
    let mut direct = Vec::new();
    let mut gantry = Vec::new();
    let mut nft = Vec::new();
    for _ in 0..rounds {
        direct.push(rate(&BACKENDS, port, n));
        gantry.push(rate(&[GANTRY_VIP], port, n));
        nft.push(rate(&[NFT_VIP], port, n));
    }
    let (d, g, f) = (median(direct), median(gantry), median(nft));
    println!("| path | connections/s (median of {rounds} × {n}) | vs direct |");
    println!("|---|---|---|");
    println!("| straight to the tasks' addresses, in turn | {d:.0} | 1.00 |");
    println!(
        "| Gantry virtual IP (cgroup connect hook) | {g:.0} | {:.2} |",
        g / d
    );
    println!(
        "| nftables DNAT virtual IP (kube-proxy's way) | {f:.0} | {:.2} |",
        f / d
    );
    println!();

    println!("| virtual IPs (3 tasks each) | set whole (ms) | one task changed (ms) |");
    println!("|---|---|---|");
    vips.set(&BTreeMap::new()).unwrap();
    for count in [100u32, 1_000, 10_000] {
        let mut want: BTreeMap<Ipv4Addr, Vec<Ipv4Addr>> = (0..count)
            .map(|i| {
                let vip = Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 47, 0, 1)) + i);
                let tasks = (0..3)
                    .map(|k| Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 32, 0, 2)) + 3 * i + k))
                    .collect();
                (vip, tasks)
            })
            .collect();
        let t = Instant::now();
        vips.set(&want).unwrap();
        let whole = t.elapsed();
        let first = *want.keys().next().unwrap();
        want.get_mut(&first).unwrap()[1] = Ipv4Addr::new(10, 33, 0, 9);
        let t = Instant::now();
        vips.set(&want).unwrap();
        let one = t.elapsed();
        println!("| {count} | {:.1} | {:.2} |", ms(whole), ms(one));
        vips.set(&BTreeMap::new()).unwrap();
    }
    sh("nft delete table ip vipbench");
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}
