//! The node's part of the overlay, as the assignment set gives it: its
//! network and peers, the fast path's programs and maps, the firewall
//! (which networks reach which tasks), and how a task's container joins
//! the network.

use super::*;

impl Agent {
    /// The VTEP's MAC, once the overlay is up.
    pub(crate) fn vtep_mac(&self) -> Option<String> {
        self.net
            .lock()
            .expect("net lock")
            .as_ref()
            .map(|n| gantry_net::format_mac(&n.mac))
    }

    /// Sets up the node's overlay when its block arrives (or changes) and
    /// programs the peers when they change.
    pub(super) fn network(&self, set: &Assignments) {
        let (Some(nn), Some(local)) = (&set.network, self.underlay) else {
            return;
        };
        let wanted = gantry_net::Overlay {
            block: nn.block,
            vni: nn.vni,
            local,
            direct_routing: nn.direct_routing,
        };
        let mut net = self.net.lock().expect("net lock");
        if net.as_ref().map(|n| &n.overlay) != Some(&wanted) {
            match wanted.setup() {
                Ok((mac, mtu)) => {
                    tracing::info!(block = %nn.block, vni = nn.vni, mac = %gantry_net::format_mac(&mac), mtu, "overlay up");
                    // The containers' resolver, on the gateway.
                    let at = std::net::SocketAddr::from((nn.block.gateway(), 53));
                    let table = self.dns.clone();
                    tokio::spawn(async move {
                        if let Err(e) =
                            gantry_dns::serve(at, table, gantry_dns::host_resolvers()).await
                        {
                            tracing::error!("DNS server on {at}: {e}");
                        }
                    });
                    self.load_fast_path(&wanted);
                    *net = Some(Net {
                        overlay: wanted,
                        mac,
                        mtu,
                        peers: Vec::new(),
                    });
                    self.changed.notify_one();
                }
                Err(e) => {
                    tracing::error!("overlay setup: {e}");
                    return;
                }
            }
        }
        let Some(n) = net.as_mut() else { return };
        let mut peers: Vec<gantry_net::PeerNode> = set
            .peers
            .iter()
            .filter_map(|p| {
                Some(gantry_net::PeerNode {
                    underlay: p.addr.parse().ok()?,
                    block: p.block,
                    mac: gantry_net::parse_mac(&p.vtep_mac)?,
                })
            })
            .collect();
        peers.sort();
        if peers != n.peers {
            match n.overlay.sync_peers(&peers) {
                Ok(()) => {
                    tracing::info!(peers = peers.len(), "overlay peers programmed");
                    if let Some(f) = self.fast.lock().expect("fast path lock").as_mut() {
                        if let Err(e) = f.set_peers(&peers) {
                            tracing::warn!("{e}");
                        }
                    }
                    n.peers = peers;
                }
                Err(e) => tracing::error!("overlay peers: {e}"),
            }
        }
    }

    /// Loads the fast path for a newly set up overlay (replacing one loaded
    /// for an earlier setup), unless disabled. Without it (an old kernel,
    /// no BPF) all traffic takes the stack's path, which is complete.
    pub(super) fn load_fast_path(&self, overlay: &gantry_net::Overlay) {
        let mut fast = self.fast.lock().expect("fast path lock");
        *fast = None;
        if !self.cfg.fast_path {
            return;
        }
        let loaded = overlay
            .fast_path_devices()
            .map_err(|e| e.to_string())
            .and_then(|d| gantry_net::FastPath::load(&d).map_err(|e| e.to_string()));
        match loaded {
            Ok(f) => {
                tracing::info!("overlay fast path loaded");
                *fast = Some(f);
            }
            Err(e) => tracing::warn!("overlay fast path not available, the stack carries all: {e}"),
        }
    }

    /// Puts the node's running tasks on the fast path (and takes ended
    /// ones off).
    pub(super) fn sync_fast_path(&self) {
        // Lock order: `net` and the tasks before `fast` (`network` holds
        // `net` while it loads the fast path).
        let block = match self.net.lock().expect("net lock").as_ref() {
            Some(n) => n.overlay.block,
            None => return,
        };
        let ports: Vec<gantry_net::TaskPort> = self
            .lock()
            .values()
            .filter(|l| l.phase == Phase::Up)
            .filter_map(|l| {
                let cid = l.container.as_ref()?;
                let addr = l.assignment.as_ref()?.task.addr?;
                block.contains(addr).then(|| gantry_net::TaskPort {
                    addr,
                    veth: gantry_runtime::net::host_veth(cid),
                    mac: gantry_runtime::net::mac_for(addr),
                })
            })
            .collect();
        let mut fast = self.fast.lock().expect("fast path lock");
        let Some(f) = fast.as_mut() else { return };
        if let Err(e) = f.set_tasks(&ports) {
            tracing::warn!("{e}");
        }
    }

    /// The fast path's packet counters, when it is loaded.
    pub(crate) fn fast_path_counters(&self) -> Option<gantry_net::Counters> {
        let fast = self.fast.lock().expect("fast path lock");
        fast.as_ref().and_then(|f| f.counters().ok())
    }

    /// Masquerade and host protection, once the overlay is up: open to
    /// containers are DNS and the ports published on this node (ingress
    /// ports, and host-mode ports of its tasks).
    pub(super) fn firewall(
        &self,
        set: &Assignments,
        members: &BTreeMap<String, Vec<std::net::Ipv4Addr>>,
    ) {
        let Some(nn) = &set.network else { return };
        let mut open: Vec<u16> = set
            .ingress
            .iter()
            .filter(|p| !p.udp)
            .map(|p| p.published)
            .collect();
        let mut open_udp: Vec<u16> = set
            .ingress
            .iter()
            .filter(|p| p.udp)
            .map(|p| p.published)
            .collect();
        // The edge proxy is public: containers reach it too (a task
        // calling a routed name that points at its own node).
        open.extend(self.edge.get().map(|e| e.ports()).unwrap_or_default());
        let mut dnat = Vec::new();
        let mut metadata_allowed = Vec::new();
        let mut internal = Vec::new();
        for a in &set.tasks {
            {
                let svc = &a.spec;
                if svc.metadata {
                    metadata_allowed.extend(a.task.addr);
                }
                if svc.internal_only() {
                    internal.extend(a.task.addr);
                }
                for p in svc.ports.iter().filter(|p| p.mode == PortMode::Host) {
                    let Some(published) = p.published else {
                        continue;
                    };
                    let udp = p.protocol == "udp";
                    if udp {
                        open_udp.push(published);
                    } else {
                        open.push(published);
                    }
                    let dest = match p.host_ip {
                        None => Some(None),
                        // Only traffic from other machines is DNATed; on
                        // loopback the runtime's forwarder answers.
                        Some(std::net::IpAddr::V4(d)) if !d.is_loopback() => Some(Some(d)),
                        Some(_) => None,
                    };
                    if let (Some(addr), Some(dest)) = (a.task.addr, dest) {
                        dnat.push(gantry_net::Dnat {
                            udp,
                            dest,
                            published,
                            addr,
                            target: p.target,
                        });
                    }
                }
            }
        }
        dnat.sort();
        open.sort();
        open.dedup();
        open_udp.sort();
        open_udp.dedup();
        metadata_allowed.sort();
        internal.sort();
        let vxlan = self
            .net
            .lock()
            .expect("net lock")
            .as_ref()
            .map(|n| gantry_net::VxlanPeers {
                local: n.overlay.local,
                peers: n.peers.iter().map(|p| (p.underlay, p.block)).collect(),
            });
        let bridge_net = gantry_runtime::net::BridgeNet::default_for(&self.cfg.data_dir);
        let wanted = gantry_net::Firewall {
            container_nets: vec![
                nn.cidr,
                gantry_ipam::Net::new(bridge_net.gateway, bridge_net.prefix),
            ],
            open_ports: open,
            open_udp,
            overlay: Some(nn.cidr),
            networks: members.clone(),
            infra: std::iter::once(nn.block)
                .chain(set.peers.iter().map(|p| p.block))
                .flat_map(|b| [b.vtep(), b.gateway()])
                .collect(),
            dnat,
            vxlan,
            metadata_allowed,
            internal,
        };
        let mut fw = self.firewall.lock().expect("firewall lock");
        if fw.as_ref() == Some(&wanted) {
            return;
        }
        match wanted.apply() {
            Ok(()) => {
                tracing::info!(open = ?wanted.open_ports, "firewall applied");
                *fw = Some(wanted);
            }
            Err(e) => tracing::error!("firewall: {e}"),
        }
    }

    /// Where a task joins the network: the overlay with its address when
    /// both are there, else the node's local bridge.
    pub(super) fn network_mode(&self, a: &Assignment) -> gantry_runtime::NetworkMode {
        let net = self.net.lock().expect("net lock");
        match (a.task.addr, net.as_ref()) {
            (Some(ip), Some(n)) if n.overlay.block.contains(ip) => {
                gantry_runtime::NetworkMode::Overlay(gantry_runtime::OverlayAddr {
                    bridge: gantry_net::BRIDGE.into(),
                    ip,
                    prefix: n.overlay.block.prefix,
                    gateway: n.overlay.block.gateway(),
                    mtu: n.mtu,
                })
            }
            _ => gantry_runtime::NetworkMode::Bridge,
        }
    }
}
