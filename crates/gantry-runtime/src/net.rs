//! The `bridge` network on one host: a Linux bridge (`gantry0` by default)
//! holding the gateway address, and for each container a veth pair with one
//! end on the bridge and the other, renamed `eth0`, in the container's
//! namespace. Everything is programmed over rtnetlink; no `ip` is spawned.
//!
//! Addresses come from a lease file under the data dir, shared by every
//! Gantry process on the host and guarded by `flock`.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

use futures::TryStreamExt;
use rtnetlink::packet_route::link::{InfoData, InfoKind, InfoVeth};
use rtnetlink::{Handle, LinkBridge, LinkUnspec, LinkVeth, RouteMessageBuilder};

/// A failure setting up or tearing down a container's network.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// A netlink request failed.
    #[error("netlink: {what}: {err}")]
    Netlink {
        /// What was being done.
        what: String,
        /// The kernel's answer.
        #[source]
        err: rtnetlink::Error,
    },
    /// Local I/O (lease file, namespace file).
    #[error("{what}: {err}")]
    Io {
        /// What was being done.
        what: String,
        /// The cause.
        #[source]
        err: io::Error,
    },
    /// Every address of the subnet is leased.
    #[error("no free address left in {0}")]
    Exhausted(String),
}

fn nl(what: &str) -> impl FnOnce(rtnetlink::Error) -> NetError + '_ {
    move |err| NetError::Netlink {
        what: what.to_owned(),
        err,
    }
}

fn io_err(what: impl Into<String>) -> impl FnOnce(io::Error) -> NetError {
    let what = what.into();
    move |err| NetError::Io { what, err }
}

/// The host bridge and its subnet.
#[derive(Debug, Clone)]
pub struct BridgeNet {
    /// Interface name.
    pub name: String,
    /// The bridge's own address, the containers' default gateway.
    pub gateway: Ipv4Addr,
    /// Subnet prefix length.
    pub prefix: u8,
    /// MTU for container interfaces.
    pub mtu: u32,
    /// Where leases are kept.
    pub lease_file: PathBuf,
}

impl BridgeNet {
    /// The default local bridge: `gantry0`, 10.88.0.1/16. The bridge is a
    /// resource of the host (of its network namespace), not of one data
    /// dir, so its leases live under `/run/gantry`, shared by every Gantry
    /// process on the host and gone, like the bridge, at reboot.
    pub fn default_for(_data_dir: &Path) -> Self {
        let ns = std::fs::metadata("/proc/self/ns/net")
            .map(|m| std::os::unix::fs::MetadataExt::ino(&m))
            .unwrap_or(0);
        Self {
            name: "gantry0".into(),
            gateway: Ipv4Addr::new(10, 88, 0, 1),
            prefix: 16,
            mtu: 1500,
            lease_file: PathBuf::from(format!("/run/gantry/net/gantry0-{ns}.json")),
        }
    }

    fn network(&self) -> u32 {
        u32::from(self.gateway) & mask(self.prefix)
    }

    /// Leases a free address to `owner`: the first free one after the
    /// last address handed out, wrapping around (as Docker's IPAM does),
    /// so that an address just released is not reused at once, while
    /// neighbours may still hold the old container's MAC for it.
    pub fn lease(&self, owner: &str) -> Result<Ipv4Addr, NetError> {
        self.with_leases(|l| {
            if let Some((ip, _)) = l.leases.iter().find(|(_, o)| *o == owner) {
                return Ok(*ip);
            }
            let net = self.network();
            let size = 1u32 << (32 - self.prefix);
            let start = l
                .last
                .map(|a| u32::from(a).wrapping_sub(net))
                .filter(|i| *i < size)
                .unwrap_or(0);
            let ip = (1..size)
                .map(|k| (start + k) % size)
                .filter(|i| *i != 0 && *i != size - 1)
                .map(|i| Ipv4Addr::from(net + i))
                .find(|ip| *ip != self.gateway && !l.leases.contains_key(ip))
                .ok_or_else(|| NetError::Exhausted(format!("{}/{}", self.gateway, self.prefix)))?;
            l.leases.insert(ip, owner.to_owned());
            l.last = Some(ip);
            Ok(ip)
        })
    }

    /// Releases every address leased to `owner`.
    pub fn release(&self, owner: &str) -> Result<(), NetError> {
        self.with_leases(|l| {
            l.leases.retain(|_, o| o != owner);
            Ok(())
        })
    }

    fn with_leases<T>(
        &self,
        f: impl FnOnce(&mut Leases) -> Result<T, NetError>,
    ) -> Result<T, NetError> {
        let dir = self.lease_file.parent().unwrap_or(Path::new("/"));
        fs::create_dir_all(dir).map_err(io_err("create network state dir"))?;
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(self.lease_file.with_extension("lock"))
            .map_err(io_err("open lease lock"))?;
        let _guard = nix::fcntl::Flock::lock(lock, nix::fcntl::FlockArg::LockExclusive).map_err(
            |(_, e)| NetError::Io {
                what: "lock leases".into(),
                err: e.into(),
            },
        )?;
        let mut leases: Leases = match fs::read(&self.lease_file) {
            // Also the older form: the map alone.
            Ok(b) => serde_json::from_slice(&b)
                .or_else(|_| serde_json::from_slice(&b).map(|leases| Leases { last: None, leases }))
                .unwrap_or_default(),
            Err(_) => Leases::default(),
        };
        let out = f(&mut leases)?;
        let tmp = self.lease_file.with_extension("tmp");
        fs::write(&tmp, serde_json::to_vec(&leases).unwrap_or_default())
            .map_err(io_err("write leases"))?;
        fs::rename(&tmp, &self.lease_file).map_err(io_err("write leases"))?;
        Ok(out)
    }
}

/// The lease file: addresses by owner, and the last one handed out.
#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
struct Leases {
    #[serde(default)]
    last: Option<Ipv4Addr>,
    #[serde(default)]
    leases: BTreeMap<Ipv4Addr, String>,
}

fn mask(prefix: u8) -> u32 {
    if prefix == 0 {
        0
    } else {
        u32::MAX << (32 - prefix)
    }
}

/// The MAC of a container's `eth0` with address `ip`: Docker's scheme,
/// `02:42` (locally administered) then the four octets. Derived, so the
/// overlay's fast path knows it without asking the container, and a host
/// that cached an earlier container's MAC for the address is still right.
pub fn mac_for(ip: Ipv4Addr) -> [u8; 6] {
    let [a, b, c, d] = ip.octets();
    [0x02, 0x42, a, b, c, d]
}

/// The host-side veth name for a container.
pub fn host_veth(id: &str) -> String {
    format!("gv{}", &id[..id.len().min(11)])
}

fn block_on<F: std::future::Future>(f: F) -> Result<F::Output, NetError> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
        .map_err(io_err("start netlink runtime"))?;
    Ok(rt.block_on(f))
}

async fn connect() -> Result<Handle, NetError> {
    let (conn, handle, _) = rtnetlink::new_connection().map_err(io_err("open netlink socket"))?;
    tokio::spawn(conn);
    Ok(handle)
}

async fn link_index(handle: &Handle, name: &str) -> Result<Option<u32>, NetError> {
    let mut links = handle.link().get().match_name(name.to_owned()).execute();
    match links.try_next().await {
        Ok(Some(l)) => Ok(Some(l.header.index)),
        Ok(None) => Ok(None),
        Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::ENODEV => Ok(None),
        Err(e) => Err(nl("look up link")(e)),
    }
}

/// Connects the container whose init is `pid` to the bridge with address
/// `ip`: creates the bridge if needed, and a veth pair whose peer is born
/// as `eth0` inside the container's namespace (moving a device between
/// namespaces costs two network RCU grace periods, ~20 ms), then sets its
/// address and default route from inside.
///
/// There is no `detach` on the container's way out: the kernel destroys
/// both ends of the pair with the container's namespace, asynchronously,
/// where a delete request would wait for the same grace periods.
pub fn attach(net: &BridgeNet, id: &str, pid: i32, ip: Ipv4Addr) -> Result<(), NetError> {
    let host = host_veth(id);
    block_on(async {
        let handle = connect().await?;
        let bridge = match link_index(&handle, &net.name).await? {
            Some(i) => i,
            None => {
                let add = handle
                    .link()
                    .add(LinkBridge::new(&net.name).build())
                    .execute()
                    .await;
                match add {
                    Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::EEXIST => {}
                    other => other.map_err(nl("create bridge"))?,
                }
                link_index(&handle, &net.name)
                    .await?
                    .ok_or_else(|| NetError::Exhausted("bridge vanished".into()))?
            }
        };
        // The bridge may hold several networks' gateways (the local
        // bridge network's and a node's overlay block): ensure ours.
        let _ = handle
            .address()
            .add(bridge, IpAddr::V4(net.gateway), net.prefix)
            .execute()
            .await;
        handle
            .link()
            .set(LinkUnspec::new_with_index(bridge).up().build())
            .execute()
            .await
            .map_err(nl("bring bridge up"))?;
        let peer = LinkUnspec::new_with_name("eth0")
            .mtu(net.mtu)
            .address(mac_for(ip).to_vec())
            .setns_by_pid(pid as u32)
            .build();
        let veth = rtnetlink::LinkMessageBuilder::<LinkVeth>::new_with_info_kind(InfoKind::Veth)
            .name(host.clone())
            .mtu(net.mtu)
            .set_info_data(InfoData::Veth(InfoVeth::Peer(peer)))
            .build();
        handle
            .link()
            .add(veth)
            .execute()
            .await
            .map_err(nl("create veth"))?;
        // The host may still hold an earlier container's MAC for this
        // address: forget it, or the host's first packets (health checks)
        // go to the old MAC until the entry times out.
        let mut neigh = handle.neighbours().get().execute();
        let mut stale = Vec::new();
        while let Ok(Some(n)) = neigh.try_next().await {
            let same = n.header.ifindex == bridge
                && n.attributes.iter().any(|a| {
                    matches!(a, rtnetlink::packet_route::neighbour::NeighbourAttribute::Destination(
                        rtnetlink::packet_route::neighbour::NeighbourAddress::Inet(v),
                    ) if *v == ip)
                });
            if same {
                stale.push(n);
            }
        }
        for n in stale {
            let _ = handle.neighbours().del(n).execute().await;
        }
        let hi = link_index(&handle, &host)
            .await?
            .ok_or_else(|| NetError::Exhausted("veth vanished".into()))?;
        no_ipv6(&host)?;
        handle
            .link()
            .set(
                LinkUnspec::new_with_index(hi)
                    .controller(bridge)
                    .up()
                    .build(),
            )
            .execute()
            .await
            .map_err(nl("attach veth to bridge"))
    })??;

    // Configure the container's end from inside its namespace: a thread
    // joins the namespace and opens its own netlink socket there.
    let ns = File::open(format!("/proc/{pid}/ns/net")).map_err(io_err("open container netns"))?;
    let gateway = net.gateway;
    let prefix = net.prefix;
    std::thread::scope(|s| {
        s.spawn(|| -> Result<(), NetError> {
            nix::sched::setns(ns.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET)
                .map_err(|e| io_err("enter container netns")(e.into()))?;
            block_on(async {
                let handle = connect().await?;
                let i = link_index(&handle, "eth0")
                    .await?
                    .ok_or_else(|| NetError::Exhausted("veth missing in container".into()))?;
                handle
                    .address()
                    .add(i, IpAddr::V4(ip), prefix)
                    .execute()
                    .await
                    .map_err(nl("set container address"))?;
                no_ipv6("eth0")?;
                handle
                    .link()
                    .set(LinkUnspec::new_with_index(i).up().build())
                    .execute()
                    .await
                    .map_err(nl("bring eth0 up"))?;
                handle
                    .route()
                    .add(
                        RouteMessageBuilder::<Ipv4Addr>::new()
                            .gateway(gateway)
                            .build(),
                    )
                    .execute()
                    .await
                    .map_err(nl("add default route"))
            })?
        })
        .join()
        .unwrap_or_else(|_| Err(NetError::Exhausted("netns thread panicked".into())))
    })
}

/// Turns IPv6 off on `dev` of the calling thread's network namespace,
/// before it is up, as Docker does on networks without IPv6: the bridge
/// networks are IPv4 only, and an interface with IPv6 sends router
/// solicitations, MLD reports and duplicate address probes as it comes
/// up, which the bridge floods to every port; each start then costs
/// every container already there (measured: 100 starts took 5.7 s with
/// no container, 14 s with 400). A kernel without IPv6 has nothing to
/// turn off.
fn no_ipv6(dev: &str) -> Result<(), NetError> {
    let p = format!("/proc/sys/net/ipv6/conf/{dev}/disable_ipv6");
    match std::fs::write(&p, "1") {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        r => r.map_err(io_err("turn IPv6 off")),
    }
}

/// Removes the host end of a container's veth (the kernel removes the pair
/// with the namespace anyway; this covers a namespace kept alive elsewhere).
pub fn detach(id: &str) -> Result<(), NetError> {
    let host = host_veth(id);
    block_on(async {
        let handle = connect().await?;
        if let Some(i) = link_index(&handle, &host).await? {
            match handle.link().del(i).execute().await {
                Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::ENODEV => Ok(()),
                r => r.map_err(nl("delete veth")),
            }
        } else {
            Ok(())
        }
    })?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn container_macs_are_dockers_from_the_address() {
        let m = mac_for(Ipv4Addr::new(10, 32, 7, 200));
        assert_eq!(m, [0x02, 0x42, 10, 32, 7, 200]);
        // Locally administered, unicast.
        assert_eq!(m[0] & 0b11, 0b10);
    }

    #[test]
    fn leases_are_unique_and_released() {
        let t = tempfile::tempdir().unwrap();
        let mut net = BridgeNet::default_for(t.path());
        net.lease_file = t.path().join("leases.json");
        net.gateway = Ipv4Addr::new(10, 9, 0, 1);
        net.prefix = 29;
        let a = net.lease("a").unwrap();
        let b = net.lease("b").unwrap();
        assert_eq!(a, Ipv4Addr::new(10, 9, 0, 2));
        assert_eq!(b, Ipv4Addr::new(10, 9, 0, 3));
        assert_eq!(net.lease("a").unwrap(), a, "same owner, same address");
        for o in ["c", "d", "e"] {
            net.lease(o).unwrap();
        }
        assert!(matches!(net.lease("f"), Err(NetError::Exhausted(_))));
        net.release("b").unwrap();
        assert_eq!(net.lease("f").unwrap(), b);
    }

    #[test]
    fn a_released_address_is_not_reused_at_once() {
        let t = tempfile::tempdir().unwrap();
        let mut net = BridgeNet::default_for(t.path());
        net.lease_file = t.path().join("leases.json");
        net.gateway = Ipv4Addr::new(10, 9, 0, 1);
        net.prefix = 29; // .2 to .6 for containers
        let a = net.lease("a").unwrap();
        net.release("a").unwrap();
        let b = net.lease("b").unwrap();
        assert_ne!(a, b, "the address just released came back at once");
        assert_eq!(b, Ipv4Addr::new(10, 9, 0, 3));
        // Wrapping around past the end, skipping the gateway and broadcast.
        for o in ["c", "d", "e"] {
            net.lease(o).unwrap();
        }
        assert_eq!(net.lease("f").unwrap(), a);
        assert!(matches!(net.lease("g"), Err(NetError::Exhausted(_))));
    }
}
