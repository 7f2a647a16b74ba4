//! The pieces of `scripts/bench-vxlan-guard.sh`, run in the namespaces it
//! makes:
//!
//! - `vxlan_guard apply N SENDER`: the node firewall with `N` VXLAN peers,
//!   as an agent with `N` other nodes writes it; the last peer is `SENDER`
//!   (block 10.32.0.0/24), the others are made up;
//! - `vxlan_guard remove`: the tables deleted again;
//! - `vxlan_guard send ADDR SECS`: VXLAN frames (an IPv4 packet from
//!   10.32.0.5 inside) to `ADDR`:4789 as fast as one thread sends them;
//! - `vxlan_guard recv SECS`: counts what arrives on port 4789, prints
//!   packets a second.

use std::net::{Ipv4Addr, UdpSocket};
use std::time::{Duration, Instant};

use gantry_ipam::Net;
use gantry_net::{Firewall, VxlanPeers};

type Res = Result<(), Box<dyn std::error::Error>>;

fn apply(n: u32, sender: Ipv4Addr) -> Res {
    let mut peers: Vec<(Ipv4Addr, Net)> = (1..n)
        .map(|i| {
            (
                Ipv4Addr::from(0x0a4e_0000 + i),
                Net::new(Ipv4Addr::from(0x0a20_0000 + (i << 8)), 24),
            )
        })
        .collect();
    peers.push((sender, Net::new(Ipv4Addr::new(10, 32, 0, 0), 24)));
    Firewall {
        container_nets: Vec::new(),
        open_ports: Vec::new(),
        open_udp: Vec::new(),
        overlay: None,
        networks: Default::default(),
        infra: Vec::new(),
        dnat: Vec::new(),
        vxlan: Some(VxlanPeers {
            local: Ipv4Addr::new(10, 77, 0, 2),
            peers,
        }),
        metadata_allowed: Vec::new(),
        internal: Vec::new(),
    }
    .apply()?;
    Ok(())
}

fn send(to: &str, secs: u64) -> Res {
    let mut frame = vec![0x08, 0, 0, 0, 0, 0, 1, 0];
    frame.extend([0x02, 0x42, 0, 0, 0, 1, 0x02, 0x42, 0, 0, 0, 2, 0x08, 0x00]);
    frame.extend([0x45, 0, 0, 48, 0, 1, 0x40, 0, 64, 17, 0, 0]);
    frame.extend([10, 32, 0, 5, 10, 32, 1, 5]);
    frame.extend([0u8; 28]);
    let s = UdpSocket::bind("0.0.0.0:0")?;
    s.connect(format!("{to}:4789"))?;
    let end = Instant::now() + Duration::from_secs(secs);
    while Instant::now() < end {
        for _ in 0..256 {
            let _ = s.send(&frame);
        }
    }
    Ok(())
}

fn recv(secs: u64) -> Res {
    let s = UdpSocket::bind("0.0.0.0:4789")?;
    s.set_read_timeout(Some(Duration::from_millis(200)))?;
    let mut buf = [0u8; 2048];
    // Counting starts at the first packet.
    while s.recv(&mut buf).is_err() {}
    let (start, mut n) = (Instant::now(), 1u64);
    while start.elapsed() < Duration::from_secs(secs) {
        if s.recv(&mut buf).is_ok() {
            n += 1;
        }
    }
    println!("{}", n / secs);
    Ok(())
}

fn main() -> Res {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let a: Vec<&str> = args.iter().map(String::as_str).collect();
    match a.as_slice() {
        ["apply", n, sender] => apply(n.parse()?, sender.parse()?),
        ["remove"] => Ok(Firewall::remove()?),
        ["send", to, secs] => send(to, secs.parse()?),
        ["recv", secs] => recv(secs.parse()?),
        _ => Err("usage: vxlan_guard apply N SENDER | remove | send ADDR SECS | recv SECS".into()),
    }
}
