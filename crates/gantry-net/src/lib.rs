//! A node's part of the overlay, as flannel's VXLAN backend and Weave's
//! fast datapath do it, programmed over rtnetlink (no `ip` is spawned):
//!
//! - the bridge `gantry0` holds the node's gateway (the first address of
//!   its block); task veths join it;
//! - the VXLAN device `gantry.vx` (UDP 4789, no learning) holds the block's
//!   network address, which is the node's VTEP address on the overlay;
//! - for every other node: a route to its block via its VTEP address
//!   (on-link), a permanent neighbour entry for that address with the
//!   peer's VTEP MAC, and an FDB entry sending that MAC to the peer's
//!   underlay address. Nothing is learned or flooded.
//!
//! The host routes between its bridge and the VXLAN device, so its own
//! processes reach every container by its overlay address.
//!
//! With direct routing (flannel's `DirectRouting`, Calico's cross-subnet
//! mode), a peer on the node's own underlay subnet gets instead a route to
//! its block via its underlay address on the underlay device, with the
//! VTEP address as the node's source: no encapsulation. Those routes carry
//! Gantry's own route protocol ([`ROUTE_PROTOCOL`]), by which they are
//! found again to be removed.
//!
//! **Architecture invariant:** [`Overlay::sync_peers`] makes the kernel's
//! entries on the VXLAN device exactly the given peers: stale routes,
//! neighbours and FDB entries are removed, so a node that left is
//! forgotten at the next sync.

mod fastpath;
mod firewall;
mod vip;

pub use fastpath::{
    ingress_programs, Counters, FastPath, FastPathDevices, FastPathError, TaskPort,
};

pub use firewall::{Dnat, Firewall, VxlanPeers, METADATA_ADDR};
pub use vip::{cgroup2_root, VipError, Vips, MAX_BACKENDS};

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr};

use futures::TryStreamExt;
use gantry_ipam::Net;
use rtnetlink::packet_route::link::LinkAttribute;
use rtnetlink::packet_route::neighbour::{NeighbourAddress, NeighbourAttribute};
use rtnetlink::packet_route::route::{RouteAddress, RouteAttribute, RouteProtocol};
use rtnetlink::packet_route::AddressFamily;
use rtnetlink::{Handle, LinkBridge, LinkUnspec, LinkVxlan, RouteMessageBuilder};

/// The bridge of the node's block.
pub const BRIDGE: &str = "gantry0";
/// The VXLAN device.
pub const VXLAN: &str = "gantry.vx";
/// VXLAN's IANA port.
pub const VXLAN_PORT: u16 = 4789;
/// The route protocol of the direct routes Gantry adds on the underlay
/// device (`ip route` shows `proto 103`): they are found by it to be
/// replaced or removed, since they do not go away with Gantry's devices.
pub const ROUTE_PROTOCOL: u8 = 103;

/// What VXLAN encapsulation costs: outer IPv4 (20), UDP (8), VXLAN (8)
/// and inner Ethernet (14).
pub const OVERHEAD: u32 = 50;

/// A failure programming the overlay.
#[derive(Debug, thiserror::Error)]
pub enum OverlayError {
    /// A netlink request failed.
    #[error("overlay: {what}: {err}")]
    Netlink {
        /// What was being done.
        what: String,
        /// The kernel's answer.
        #[source]
        err: rtnetlink::Error,
    },
    /// Anything else.
    #[error("overlay: {0}")]
    Other(String),
}

fn nl(what: &str) -> impl FnOnce(rtnetlink::Error) -> OverlayError + '_ {
    move |err| OverlayError::Netlink {
        what: what.to_owned(),
        err,
    }
}

fn exists(e: &rtnetlink::Error) -> bool {
    matches!(e, rtnetlink::Error::NetlinkError(m) if m.raw_code() == -libc::EEXIST)
}

/// Another node, as the overlay needs it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct PeerNode {
    /// Its underlay address.
    pub underlay: Ipv4Addr,
    /// Its block.
    pub block: Net,
    /// Its VTEP's MAC.
    pub mac: [u8; 6],
}

/// Parses `aa:bb:cc:dd:ee:ff`.
pub fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let v: Vec<u8> = s
        .split(':')
        .map(|p| u8::from_str_radix(p, 16))
        .collect::<Result<_, _>>()
        .ok()?;
    v.try_into().ok()
}

/// Formats a MAC as `aa:bb:cc:dd:ee:ff`.
pub fn format_mac(m: &[u8]) -> String {
    m.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// This node's overlay.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Overlay {
    /// The node's block.
    pub block: Net,
    /// The VXLAN network id.
    pub vni: u32,
    /// The node's underlay address (the VXLAN source).
    pub local: Ipv4Addr,
    /// Peers on the underlay subnet of `local` are reached without VXLAN.
    pub direct_routing: bool,
}

/// A link's MAC address, when it has one.
fn link_mac(l: &rtnetlink::packet_route::link::LinkMessage) -> Option<[u8; 6]> {
    l.attributes.iter().find_map(|a| match a {
        LinkAttribute::Address(m) => m.as_slice().try_into().ok(),
        _ => None,
    })
}

async fn connect() -> Result<Handle, OverlayError> {
    let (conn, handle, _) = rtnetlink::new_connection()
        .map_err(|e| OverlayError::Other(format!("open netlink socket: {e}")))?;
    tokio::spawn(conn);
    Ok(handle)
}

async fn link(
    handle: &Handle,
    name: &str,
) -> Result<Option<rtnetlink::packet_route::link::LinkMessage>, OverlayError> {
    let mut links = handle.link().get().match_name(name.to_owned()).execute();
    match links.try_next().await {
        Ok(l) => Ok(l),
        Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::ENODEV => Ok(None),
        Err(e) => Err(nl("look up link")(e)),
    }
}

/// Gives a device an address (kept if it has it) and its MTU, and brings
/// it up.
async fn address_up(
    handle: &Handle,
    dev: u32,
    addr: std::net::Ipv4Addr,
    prefix: u8,
    mtu: u32,
    what: &str,
) -> Result<(), OverlayError> {
    match handle
        .address()
        .add(dev, IpAddr::V4(addr), prefix)
        .execute()
        .await
    {
        Err(e) if exists(&e) => {}
        r => r.map_err(nl(&format!("add the {what}'s address")))?,
    }
    handle
        .link()
        .set(LinkUnspec::new_with_index(dev).mtu(mtu).up().build())
        .execute()
        .await
        .map_err(nl(&format!("bring the {what} up")))
}

async fn index(handle: &Handle, name: &str) -> Result<u32, OverlayError> {
    link(handle, name)
        .await?
        .map(|l| l.header.index)
        .ok_or_else(|| OverlayError::Other(format!("{name} does not exist")))
}

/// The interface that holds `addr`, and the prefix length `addr` has
/// there (its subnet).
async fn underlay_of(handle: &Handle, addr: Ipv4Addr) -> Result<(u32, u8), OverlayError> {
    let mut addrs = handle.address().get().execute();
    while let Some(a) = addrs.try_next().await.map_err(nl("list addresses"))? {
        let holds = a.attributes.iter().any(|at| {
            matches!(at, rtnetlink::packet_route::address::AddressAttribute::Address(IpAddr::V4(v)) if *v == addr)
        });
        if holds {
            return Ok((a.header.index, a.header.prefix_len));
        }
    }
    Err(OverlayError::Other(format!(
        "no interface of this host has the address {addr}"
    )))
}

/// The MTU of the interface that holds `addr`.
async fn mtu_of(handle: &Handle, addr: Ipv4Addr) -> Result<u32, OverlayError> {
    let (i, _) = underlay_of(handle, addr).await?;
    let mut links = handle.link().get().match_index(i).execute();
    let l = links
        .try_next()
        .await
        .map_err(nl("look up underlay link"))?
        .ok_or_else(|| OverlayError::Other("underlay link vanished".into()))?;
    Ok(l.attributes
        .iter()
        .find_map(|a| match a {
            LinkAttribute::Mtu(m) => Some(*m),
            _ => None,
        })
        .unwrap_or(1500))
}

fn block_on<F: std::future::Future>(f: F) -> Result<F::Output, OverlayError> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
        .map_err(|e| OverlayError::Other(format!("netlink runtime: {e}")))?;
    Ok(rt.block_on(f))
}

impl Overlay {
    /// Sets the node up (idempotent): forwarding on, the bridge with the
    /// gateway, the VXLAN device with the VTEP address, both with the
    /// underlay's MTU minus [`OVERHEAD`]. Returns the VTEP's MAC and the
    /// overlay MTU (what every container veth must use).
    ///
    /// Runs its own netlink connection on a thread of its own, so it can
    /// be called from any context.
    pub fn setup(&self) -> Result<([u8; 6], u32), OverlayError> {
        let me = self.clone();
        std::thread::spawn(move || block_on(me.setup_async())?)
            .join()
            .map_err(|_| OverlayError::Other("setup thread panicked".into()))?
    }

    async fn setup_async(&self) -> Result<([u8; 6], u32), OverlayError> {
        std::fs::write("/proc/sys/net/ipv4/ip_forward", "1")
            .map_err(|e| OverlayError::Other(format!("enable IPv4 forwarding: {e}")))?;
        let handle = connect().await?;
        let mtu = mtu_of(&handle, self.local).await?.saturating_sub(OVERHEAD);
        // The bridge and the gateway.
        if link(&handle, BRIDGE).await?.is_none() {
            match handle
                .link()
                .add(LinkBridge::new(BRIDGE).build())
                .execute()
                .await
            {
                Err(e) if exists(&e) => {}
                r => r.map_err(nl("create bridge"))?,
            }
        }
        let br = index(&handle, BRIDGE).await?;
        address_up(
            &handle,
            br,
            self.block.gateway(),
            self.block.prefix,
            mtu,
            "bridge",
        )
        .await?;
        // The VXLAN device: recreated if its VNI or source changed.
        if let Some(l) = link(&handle, VXLAN).await? {
            if !self.matches(&l) {
                handle
                    .link()
                    .del(l.header.index)
                    .execute()
                    .await
                    .map_err(nl("replace VXLAN device"))?;
            }
        }
        if link(&handle, VXLAN).await?.is_none() {
            let vx = LinkVxlan::new(VXLAN, self.vni)
                .local(self.local)
                .port(VXLAN_PORT)
                .learning(false)
                // The inner packets carry their own checksums; skipping the
                // outer UDP one saves a pass over every packet (IPv4 allows
                // it, as flannel and the kernel's default do).
                .udp_csum(false)
                .mtu(mtu)
                .build();
            match handle.link().add(vx).execute().await {
                Err(e) if exists(&e) => {}
                r => r.map_err(nl("create VXLAN device"))?,
            }
        }
        let vx = index(&handle, VXLAN).await?;
        address_up(&handle, vx, self.block.vtep(), 32, mtu, "VXLAN device").await?;
        let l = link(&handle, VXLAN)
            .await?
            .ok_or_else(|| OverlayError::Other("VXLAN device vanished".into()))?;
        let mac =
            link_mac(&l).ok_or_else(|| OverlayError::Other("VXLAN device has no MAC".into()))?;
        Ok((mac, mtu))
    }

    /// Whether an existing VXLAN device is ours as configured.
    fn matches(&self, l: &rtnetlink::packet_route::link::LinkMessage) -> bool {
        use rtnetlink::packet_route::link::{InfoData, InfoVxlan, LinkInfo};
        let mut vni = None;
        let mut local = None;
        for a in &l.attributes {
            if let LinkAttribute::LinkInfo(infos) = a {
                for i in infos {
                    if let LinkInfo::Data(InfoData::Vxlan(v)) = i {
                        for x in v {
                            match x {
                                InfoVxlan::Id(id) => vni = Some(*id),
                                InfoVxlan::Local(ip) => local = Some(*ip),
                                _ => {}
                            }
                        }
                    }
                }
            }
        }
        vni == Some(self.vni) && local == Some(self.local)
    }

    /// Makes the routes, neighbours and FDB entries on the VXLAN device
    /// exactly those of `peers` (see the crate's invariant).
    pub fn sync_peers(&self, peers: &[PeerNode]) -> Result<(), OverlayError> {
        let peers = peers.to_vec();
        let me = self.clone();
        std::thread::spawn(move || block_on(me.sync_async(peers))?)
            .join()
            .map_err(|_| OverlayError::Other("sync thread panicked".into()))?
    }

    /// What the fast path attaches to, once the node is set up: the bridge
    /// and the uplinks.
    pub fn fast_path_devices(&self) -> Result<FastPathDevices, OverlayError> {
        let me = self.clone();
        std::thread::spawn(move || {
            block_on(async move {
                let handle = connect().await?;
                let bridge = link(&handle, BRIDGE)
                    .await?
                    .ok_or_else(|| OverlayError::Other(format!("{BRIDGE} does not exist")))?;
                Ok(FastPathDevices {
                    bridge: bridge.header.index,
                    bridge_mac: link_mac(&bridge)
                        .ok_or_else(|| OverlayError::Other(format!("{BRIDGE} has no MAC")))?,
                    vxlan: index(&handle, VXLAN).await?,
                    underlay: underlay_of(&handle, me.local).await?.0,
                    underlay_ip: me.local,
                    vni: me.vni,
                    block_mask: me.block.netmask(),
                })
            })?
        })
        .join()
        .map_err(|_| OverlayError::Other("devices thread panicked".into()))?
    }

    /// Removes the VXLAN device (and with it every route and entry on it),
    /// the bridge, and the direct routes.
    pub fn cleanup() -> Result<(), OverlayError> {
        std::thread::spawn(|| block_on(cleanup_async())?)
            .join()
            .map_err(|_| OverlayError::Other("cleanup thread panicked".into()))?
    }
}

impl Overlay {
    async fn sync_async(self, peers: Vec<PeerNode>) -> Result<(), OverlayError> {
        let handle = connect().await?;
        let vx = index(&handle, VXLAN).await?;
        // The peers reached directly: those on this node's underlay subnet.
        let (underlay, prefix) = underlay_of(&handle, self.local).await?;
        let direct: BTreeSet<Net> = peers
            .iter()
            .filter(|p| {
                self.direct_routing && Net::new(p.underlay, prefix) == Net::new(self.local, prefix)
            })
            .map(|p| p.block)
            .collect();
        let blocks: BTreeSet<Net> = peers.iter().map(|p| p.block).collect();
        let vteps: BTreeSet<Ipv4Addr> = peers.iter().map(|p| p.block.vtep()).collect();
        let macs: BTreeSet<[u8; 6]> = peers.iter().map(|p| p.mac).collect();

        // Stale routes: direct ones to peers no longer reached directly,
        // and ours through the VXLAN device to blocks no peer holds.
        remove_routes(&handle, |r| {
            let dst = r.attributes.iter().find_map(|a| match a {
                RouteAttribute::Destination(RouteAddress::Inet(ip)) => Some(*ip),
                _ => None,
            });
            let Some(d) = dst else { return false };
            let block = Net::new(d, r.header.destination_prefix_length);
            if r.header.protocol == RouteProtocol::Other(ROUTE_PROTOCOL) {
                return !direct.contains(&block);
            }
            let on_vx = r
                .attributes
                .iter()
                .any(|a| matches!(a, RouteAttribute::Oif(i) if *i == vx));
            let keep = blocks.contains(&block) && r.header.destination_prefix_length < 32;
            // The kernel's own routes (the VTEP /32, local) are not ours.
            on_vx && !keep && r.header.protocol == RouteProtocol::Static
        })
        .await?;
        // Stale neighbours and FDB entries.
        let mut neigh = handle.neighbours().get().execute();
        let mut stale = Vec::new();
        while let Some(n) = neigh.try_next().await.map_err(nl("list neighbours"))? {
            if n.header.ifindex != vx {
                continue;
            }
            let keep = match n.header.family {
                AddressFamily::Inet => n.attributes.iter().any(|a| match a {
                    NeighbourAttribute::Destination(NeighbourAddress::Inet(ip)) => {
                        vteps.contains(ip)
                    }
                    _ => false,
                }),
                AddressFamily::Bridge => mac_of(&n).is_some_and(|m| macs.contains(&m)),
                _ => true,
            };
            if !keep {
                stale.push(n);
            }
        }
        let mut fdb = handle.neighbours().get();
        fdb.message_mut().header.family = AddressFamily::Bridge;
        let mut fdb = fdb.execute();
        while let Some(n) = fdb.try_next().await.map_err(nl("list FDB"))? {
            if n.header.ifindex != vx {
                continue;
            }
            if mac_of(&n).is_some_and(|m| !macs.contains(&m) && m != [0; 6]) {
                stale.push(n);
            }
        }
        for n in stale {
            // Already gone with another entry is fine.
            let _ = handle.neighbours().del(n).execute().await;
        }
        // What must be there.
        for p in &peers {
            handle
                .neighbours()
                .add_bridge(vx, &p.mac)
                .destination(IpAddr::V4(p.underlay))
                // On the VXLAN device itself (`bridge fdb ... self`): it has
                // no bridge above it.
                .flags(rtnetlink::packet_route::neighbour::NeighbourFlags::Own)
                .replace()
                .execute()
                .await
                .map_err(nl("add FDB entry"))?;
            handle
                .neighbours()
                .add(vx, IpAddr::V4(p.block.vtep()))
                .link_local_address(&p.mac)
                .replace()
                .execute()
                .await
                .map_err(nl("add neighbour"))?;
            let route = if direct.contains(&p.block) {
                // Straight over the underlay; the node's own traffic leaves
                // with its VTEP address, as it does over VXLAN.
                RouteMessageBuilder::<Ipv4Addr>::new()
                    .destination_prefix(p.block.addr, p.block.prefix)
                    .gateway(p.underlay)
                    .output_interface(underlay)
                    .pref_source(self.block.vtep())
                    .protocol(RouteProtocol::Other(ROUTE_PROTOCOL))
                    .build()
            } else {
                RouteMessageBuilder::<Ipv4Addr>::new()
                    .destination_prefix(p.block.addr, p.block.prefix)
                    .gateway(p.block.vtep())
                    .output_interface(vx)
                    .onlink()
                    .build()
            };
            handle
                .route()
                .add(route)
                .replace()
                .execute()
                .await
                .map_err(nl("add route"))?;
        }
        Ok(())
    }
}

/// The MAC address of a neighbour or FDB entry.
fn mac_of(n: &rtnetlink::packet_route::neighbour::NeighbourMessage) -> Option<[u8; 6]> {
    n.attributes.iter().find_map(|a| match a {
        NeighbourAttribute::LinkLocalAddress(m) => <[u8; 6]>::try_from(m.as_slice()).ok(),
        _ => None,
    })
}

/// Removes the IPv4 routes `stale` picks.
async fn remove_routes(
    handle: &Handle,
    stale: impl Fn(&rtnetlink::packet_route::route::RouteMessage) -> bool,
) -> Result<(), OverlayError> {
    let mut routes = handle
        .route()
        .get(RouteMessageBuilder::<Ipv4Addr>::new().build())
        .execute();
    let mut gone = Vec::new();
    while let Some(r) = routes.try_next().await.map_err(nl("list routes"))? {
        if stale(&r) {
            gone.push(r);
        }
    }
    for r in gone {
        handle
            .route()
            .del(r)
            .execute()
            .await
            .map_err(nl("remove route"))?;
    }
    Ok(())
}

async fn cleanup_async() -> Result<(), OverlayError> {
    Firewall::remove()?;
    let handle = connect().await?;
    remove_routes(&handle, |r| {
        r.header.protocol == RouteProtocol::Other(ROUTE_PROTOCOL)
    })
    .await?;
    for name in [VXLAN, BRIDGE] {
        if let Some(l) = link(&handle, name).await? {
            handle
                .link()
                .del(l.header.index)
                .execute()
                .await
                .map_err(nl("remove link"))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn macs_round_trip() {
        let m = parse_mac("0a:1b:2c:3d:4e:5f").unwrap();
        assert_eq!(format_mac(&m), "0a:1b:2c:3d:4e:5f");
        assert!(parse_mac("0a:1b:2c:3d:4e").is_none());
        assert!(parse_mac("zz:1b:2c:3d:4e:5f").is_none());
    }
}
