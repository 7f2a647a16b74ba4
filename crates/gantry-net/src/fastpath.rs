//! The overlay's fast path: the tc programs of `bpf/fastpath.c` (built by
//! build.rs), loaded and fed with aya. Between two tasks that share a stack
//! network they carry packets from one task's veth straight to the other's
//! namespace on the same node, or out of the underlay device to another
//! node (encapsulated in VXLAN by the program itself, unless routed
//! directly), where the packet goes straight from the underlay into the
//! task's namespace: the host's bridge, IP forwarding, nftables and the
//! VXLAN device are skipped for traffic they would have accepted anyway.
//! Everything else is passed to the stack unchanged.
//!
//! Programs are attached with TCX links (kernel 6.6 and later), which
//! belong to this process: when the agent exits, the kernel detaches them
//! and traffic takes the stack's path again, so nothing is left on the host
//! and nothing needs cleaning up. On an older kernel [`FastPath::load`]
//! fails and the agent goes on without it.
//!
//! **Invariant:** the maps only ever make the fast path take *less*
//! traffic than the nftables rules accept: a pair of addresses gets through
//! only when one stack network holds both, as the forward chain checks; a
//! task on more than [`NETS`] networks is left out of the maps.

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::CString;
use std::net::Ipv4Addr;

use aya::maps::{Array, HashMap, MapData, PerCpuArray};
use aya::programs::links::LinkOrder;
use aya::programs::tc::{SchedClassifierLink, TcAttachOptions};
use aya::programs::{SchedClassifier, TcAttachType};
use aya::Ebpf;

static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/fastpath.o"));

/// How many stack networks a task may be on and still take the fast path
/// (`NETS` in `fastpath.c`).
pub(crate) const NETS: usize = 4;

/// A failure loading or feeding the fast path.
#[derive(Debug, thiserror::Error)]
#[error("fast path: {what}: {err}")]
pub struct FastPathError {
    what: String,
    err: String,
}

fn err<E: std::fmt::Display>(what: impl Into<String>) -> impl FnOnce(E) -> FastPathError {
    let what = what.into();
    move |e| FastPathError {
        what,
        err: e.to_string(),
    }
}

/// `struct endpoint` in `fastpath.c`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Endpoint {
    ifindex: u32,
    mac: [u8; 6],
    gw_mac: [u8; 6],
}
// SAFETY: plain data, no padding (4 + 6 + 6 bytes, alignment 4).
unsafe impl aya::Pod for Endpoint {}

/// `struct member` in `fastpath.c`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Member {
    nets: [u32; NETS],
}
// SAFETY: plain data, no padding.
unsafe impl aya::Pod for Member {}

/// `struct config` in `fastpath.c`.
#[repr(C)]
#[derive(Clone, Copy)]
struct Config {
    bridge_ifindex: u32,
    vxlan_ifindex: u32,
    /// Network byte order, as in the packet.
    underlay_ip: u32,
    vni: u32,
    /// Network byte order.
    block_mask: u32,
}
// SAFETY: plain data, no padding.
unsafe impl aya::Pod for Config {}

/// `struct peer` in `fastpath.c`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Peer {
    underlay_ip: u32,
}
// SAFETY: plain data, no padding.
unsafe impl aya::Pod for Peer {}

/// The per-CPU `counters` map's slots, numbered as `enum counter` in
/// `fastpath.c` numbers them (a unit test reads the C to check).
#[derive(Clone, Copy, Debug)]
enum Counter {
    ToTask,
    Local,
    Remote,
    Encapsulated,
    Decapsulated,
    Spoofed,
}

/// An IPv4 address as the programs hold it: its octets in memory order
/// (network byte order).
fn be(a: Ipv4Addr) -> u32 {
    u32::from_ne_bytes(a.octets())
}

/// The node's devices the fast path works with (from
/// [`crate::Overlay::fast_path_devices`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FastPathDevices {
    /// The bridge's interface index: a route to it means "a task of this
    /// node", which the fast path leaves to the stack when it has no
    /// endpoint for it.
    pub bridge: u32,
    /// The bridge's MAC: the source of frames delivered to tasks, as the
    /// stack's path (across the bridge) gives them.
    pub bridge_mac: [u8; 6],
    /// The VXLAN device: a route to it means "encapsulate".
    pub vxlan: u32,
    /// The device holding the node's underlay address.
    pub underlay: u32,
    /// The node's underlay address (the outer source of VXLAN packets).
    pub underlay_ip: Ipv4Addr,
    /// The overlay's VNI.
    pub vni: u32,
    /// The netmask of the nodes' blocks: an inner source's block is its
    /// address under it.
    pub block_mask: Ipv4Addr,
}

/// A task of this node, as the fast path needs it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct TaskPort {
    /// Its overlay address.
    pub addr: Ipv4Addr,
    /// The host end of its veth.
    pub veth: String,
    /// Its `eth0`'s MAC.
    pub mac: [u8; 6],
}

/// Packets the fast path carried, by way (counted per CPU, summed).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counters {
    /// From an uplink into a task of this node.
    pub to_task: u64,
    /// From a task to another task of this node.
    pub local: u64,
    /// From a task out to another node.
    pub remote: u64,
    /// Of `remote`, encapsulated in VXLAN by the fast path itself.
    pub encapsulated: u64,
    /// Of `to_task`, decapsulated from VXLAN by the fast path itself.
    pub decapsulated: u64,
    /// VXLAN packets dropped: not from another node, or with an inner
    /// source outside the sending node's block.
    pub spoofed: u64,
}

struct Attached {
    port: TaskPort,
    ifindex: u32,
    _link: SchedClassifierLink,
}

/// The loaded programs, their maps and links.
pub struct FastPath {
    ebpf: Ebpf,
    gw_mac: [u8; 6],
    _uplinks: Vec<SchedClassifierLink>,
    tasks: BTreeMap<Ipv4Addr, Attached>,
    /// Stack network names to the ids in `members`; never reused, so an
    /// id never means two networks while the map is being rewritten.
    net_ids: BTreeMap<String, u32>,
    members: BTreeMap<Ipv4Addr, Member>,
    /// By VTEP address.
    peers: BTreeMap<Ipv4Addr, Peer>,
}

impl std::fmt::Debug for FastPath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FastPath")
            .field("tasks", &self.tasks.len())
            .field("members", &self.members.len())
            .finish()
    }
}

fn ifname(index: u32) -> Result<String, FastPathError> {
    let mut buf = [0 as libc::c_char; libc::IF_NAMESIZE];
    // SAFETY: buf has IF_NAMESIZE bytes, as if_indextoname requires.
    let p = unsafe { libc::if_indextoname(index, buf.as_mut_ptr()) };
    if p.is_null() {
        return Err(err(format!("interface {index}"))(
            std::io::Error::last_os_error(),
        ));
    }
    // SAFETY: if_indextoname wrote a NUL-terminated name into buf.
    let name = unsafe { std::ffi::CStr::from_ptr(buf.as_ptr()) };
    Ok(name.to_string_lossy().into_owned())
}

fn ifindex(name: &str) -> Result<u32, FastPathError> {
    let c = CString::new(name).map_err(err(format!("interface {name}")))?;
    // SAFETY: c is a valid NUL-terminated string.
    match unsafe { libc::if_nametoindex(c.as_ptr()) } {
        0 => Err(err(format!("interface {name}"))(
            std::io::Error::last_os_error(),
        )),
        i => Ok(i),
    }
}

impl FastPath {
    /// Loads the programs and attaches `to_task` to the uplinks (the
    /// VXLAN and underlay devices). Tasks, networks and peers come with
    /// [`FastPath::set_tasks`], [`FastPath::set_networks`] and
    /// [`FastPath::set_peers`].
    pub fn load(devices: &FastPathDevices) -> Result<Self, FastPathError> {
        let mut ebpf = Ebpf::load(OBJECT).map_err(err("load object"))?;
        for name in ["from_task", "to_task"] {
            classifier(&mut ebpf, name)?
                .load()
                .map_err(err(format!("load {name}")))?;
        }
        let mut config: Array<&mut MapData, Config> = Array::try_from(
            ebpf.map_mut("config")
                .ok_or_else(|| err("config")("no map"))?,
        )
        .map_err(err("config"))?;
        config
            .set(
                0,
                Config {
                    bridge_ifindex: devices.bridge,
                    vxlan_ifindex: devices.vxlan,
                    underlay_ip: be(devices.underlay_ip),
                    vni: devices.vni,
                    block_mask: be(devices.block_mask),
                },
                0,
            )
            .map_err(err("config"))?;
        let mut links = Vec::new();
        for u in [devices.vxlan, devices.underlay] {
            let name = ifname(u)?;
            links.push(attach(&mut ebpf, "to_task", &name)?);
        }
        Ok(FastPath {
            ebpf,
            gw_mac: devices.bridge_mac,
            _uplinks: links,
            tasks: BTreeMap::new(),
            net_ids: BTreeMap::new(),
            members: BTreeMap::new(),
            peers: BTreeMap::new(),
        })
    }

    fn endpoints(&mut self) -> Result<HashMap<&mut MapData, u32, Endpoint>, FastPathError> {
        hash_map(&mut self.ebpf, "endpoints")
    }

    /// Makes the node's tasks on the fast path exactly `ports`: a new one's
    /// veth gets `from_task` and its address an endpoint; one gone loses
    /// both; one whose veth was replaced is attached again. A task whose
    /// veth is not there (yet) is skipped and tried again at the next
    /// call; an error on one task does not stop the others and is
    /// returned at the end.
    pub fn set_tasks(&mut self, ports: &[TaskPort]) -> Result<(), FastPathError> {
        let wanted: BTreeMap<Ipv4Addr, &TaskPort> = ports.iter().map(|p| (p.addr, p)).collect();
        let mut first_err = None;
        let gone: Vec<Ipv4Addr> = self
            .tasks
            .iter()
            // Gone, changed, or its veth replaced (a new device under the
            // same name has a new index; the old endpoint would send
            // packets nowhere).
            .filter(|(a, t)| {
                wanted.get(a).is_none_or(|p| **p != t.port)
                    || ifindex(&t.port.veth).ok() != Some(t.ifindex)
            })
            .map(|(a, _)| *a)
            .collect();
        for a in gone {
            // The endpoint first, then the link (dropped with the entry).
            if let Err(e) = self.endpoints().and_then(|mut m| {
                m.remove(&be(a))
                    .map_err(err(format!("remove endpoint {a}")))
            }) {
                first_err.get_or_insert(e);
            }
            self.tasks.remove(&a);
        }
        for (a, p) in wanted {
            if self.tasks.contains_key(&a) {
                continue;
            }
            let Ok(index) = ifindex(&p.veth) else {
                continue;
            };
            let r = attach(&mut self.ebpf, "from_task", &p.veth).and_then(|link| {
                let ep = Endpoint {
                    ifindex: index,
                    mac: p.mac,
                    gw_mac: self.gw_mac,
                };
                self.endpoints()?
                    .insert(be(a), ep, 0)
                    .map_err(err(format!("endpoint {a}")))?;
                Ok(link)
            });
            match r {
                Ok(link) => {
                    self.tasks.insert(
                        a,
                        Attached {
                            port: p.clone(),
                            ifindex: index,
                            _link: link,
                        },
                    );
                }
                Err(e) => {
                    first_err.get_or_insert(e);
                }
            }
        }
        first_err.map_or(Ok(()), Err)
    }

    /// Makes `peers` exactly the other nodes, by VTEP address: where the
    /// FIB sends a packet to the VXLAN device, the fast path encapsulates
    /// it for that VTEP's underlay address itself.
    pub fn set_peers(&mut self, peers: &[crate::PeerNode]) -> Result<(), FastPathError> {
        let wanted = peers
            .iter()
            .map(|p| {
                let peer = Peer {
                    underlay_ip: be(p.underlay),
                };
                (p.block.vtep(), peer)
            })
            .collect();
        sync(&mut self.ebpf, "peers", &mut self.peers, wanted)
    }

    /// Makes `members` hold exactly the stack networks' task addresses
    /// (`STACK_NETWORK` to addresses, as the firewall's sets).
    pub fn set_networks(
        &mut self,
        networks: &BTreeMap<String, Vec<Ipv4Addr>>,
    ) -> Result<(), FastPathError> {
        let wanted = members(networks, &mut self.net_ids);
        sync(&mut self.ebpf, "members", &mut self.members, wanted)
    }

    /// The packets carried so far.
    pub fn counters(&self) -> Result<Counters, FastPathError> {
        let map: PerCpuArray<&MapData, u64> = PerCpuArray::try_from(
            self.ebpf
                .map("counters")
                .ok_or_else(|| err("counters")("no map"))?,
        )
        .map_err(err("counters"))?;
        let sum = |c: Counter| -> Result<u64, FastPathError> {
            let values = map.get(&(c as u32), 0).map_err(err("counters"))?;
            Ok(values.iter().sum::<u64>())
        };
        Ok(Counters {
            to_task: sum(Counter::ToTask)?,
            local: sum(Counter::Local)?,
            remote: sum(Counter::Remote)?,
            encapsulated: sum(Counter::Encapsulated)?,
            decapsulated: sum(Counter::Decapsulated)?,
            spoofed: sum(Counter::Spoofed)?,
        })
    }
}

/// What `members` must hold for `networks` (`STACK_NETWORK` to task
/// addresses): each address's network ids, from `ids` (names to ids,
/// extended with new names; an id is never reused). An address on more
/// than [`NETS`] networks is left out: the stack's path decides for it.
fn members(
    networks: &BTreeMap<String, Vec<Ipv4Addr>>,
    ids: &mut BTreeMap<String, u32>,
) -> BTreeMap<Ipv4Addr, Member> {
    let mut by_addr: BTreeMap<Ipv4Addr, BTreeSet<u32>> = BTreeMap::new();
    for (name, addrs) in networks {
        let next = ids.len() as u32 + 1;
        let id = *ids.entry(name.clone()).or_insert(next);
        for a in addrs {
            by_addr.entry(*a).or_default().insert(id);
        }
    }
    by_addr
        .into_iter()
        .filter(|(_, ids)| ids.len() <= NETS)
        .map(|(a, ids)| {
            let mut nets = [0; NETS];
            for (n, id) in nets.iter_mut().zip(ids) {
                *n = id;
            }
            (a, Member { nets })
        })
        .collect()
}

/// The names of the TCX programs on `iface`'s ingress (in this thread's
/// network namespace): what the fast path, or anyone else, has attached.
pub fn ingress_programs(iface: &str) -> Result<Vec<String>, FastPathError> {
    let (_, progs) = SchedClassifier::query_tcx(iface, TcAttachType::Ingress)
        .map_err(err(format!("query {iface}")))?;
    Ok(progs
        .iter()
        .map(|p| p.name_as_str().unwrap_or_default().to_owned())
        .collect())
}

/// Program `name` of the object.
fn classifier<'a>(
    ebpf: &'a mut Ebpf,
    name: &str,
) -> Result<&'a mut SchedClassifier, FastPathError> {
    ebpf.program_mut(name)
        .ok_or_else(|| err(name)("not in object"))?
        .try_into()
        .map_err(err(name))
}

/// Hash map `name` of the object, keyed by IPv4 address.
fn hash_map<'a, V: aya::Pod>(
    ebpf: &'a mut Ebpf,
    name: &str,
) -> Result<HashMap<&'a mut MapData, u32, V>, FastPathError> {
    HashMap::try_from(ebpf.map_mut(name).ok_or_else(|| err(name)("no map"))?).map_err(err(name))
}

/// Makes hash map `name`, whose entries are `held`, hold `wanted`
/// instead, touching only what differs. Removals go first: for a moment an
/// address may be missing (the stack's path), never present where it no
/// longer belongs.
fn sync<V: aya::Pod + PartialEq>(
    ebpf: &mut Ebpf,
    name: &str,
    held: &mut BTreeMap<Ipv4Addr, V>,
    wanted: BTreeMap<Ipv4Addr, V>,
) -> Result<(), FastPathError> {
    let mut map = hash_map::<V>(ebpf, name)?;
    for a in held.keys().filter(|a| !wanted.contains_key(a)) {
        map.remove(&be(*a))
            .map_err(err(format!("{name}: remove {a}")))?;
    }
    for (a, v) in &wanted {
        if held.get(a) != Some(v) {
            map.insert(be(*a), *v, 0)
                .map_err(err(format!("{name}: {a}")))?;
        }
    }
    *held = wanted;
    Ok(())
}

/// Attaches program `name` to `iface`'s ingress as a TCX link (after any
/// programs already there), owned by the caller.
fn attach(ebpf: &mut Ebpf, name: &str, iface: &str) -> Result<SchedClassifierLink, FastPathError> {
    let p = classifier(ebpf, name)?;
    let id = p
        .attach_with_options(
            iface,
            TcAttachType::Ingress,
            TcAttachOptions::TcxOrder(LinkOrder::default()),
        )
        .map_err(err(format!("attach {name} to {iface}")))?;
    p.take_link(id).map_err(err(format!("attach {name}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nets(list: &[(&str, &[u8])]) -> BTreeMap<String, Vec<Ipv4Addr>> {
        list.iter()
            .map(|(n, a)| {
                let addrs = a.iter().map(|x| Ipv4Addr::new(10, 32, 1, *x)).collect();
                (n.to_string(), addrs)
            })
            .collect()
    }

    fn ids_of(m: &BTreeMap<Ipv4Addr, Member>, last: u8) -> Vec<u32> {
        let m = m[&Ipv4Addr::new(10, 32, 1, last)];
        m.nets.iter().copied().filter(|&n| n != 0).collect()
    }

    #[test]
    fn members_share_ids_exactly_where_networks_are_shared() {
        let mut ids = BTreeMap::new();
        let m = members(
            &nets(&[
                ("a_default", &[2, 3]),
                ("b_default", &[4]),
                ("b_back", &[3, 4]),
            ]),
            &mut ids,
        );
        // Ids in name order: a_default 1, b_back 2, b_default 3.
        assert_eq!(ids_of(&m, 2), [1]);
        assert_eq!(ids_of(&m, 3), [1, 2]);
        assert_eq!(ids_of(&m, 4), [2, 3]);
        assert_eq!(m.len(), 3);
    }

    #[test]
    fn network_ids_stay_and_are_never_reused() {
        let mut ids = BTreeMap::new();
        members(&nets(&[("a", &[2]), ("b", &[3])]), &mut ids);
        // "a" goes, "0" comes and sorts first: b keeps 2, the new one gets 3.
        let m = members(&nets(&[("0", &[5]), ("b", &[3])]), &mut ids);
        assert_eq!(ids_of(&m, 3), [2]);
        assert_eq!(ids_of(&m, 5), [3]);
        assert!(!m.contains_key(&Ipv4Addr::new(10, 32, 1, 2)));
    }

    #[test]
    fn a_task_on_too_many_networks_is_left_to_the_stack() {
        let mut ids = BTreeMap::new();
        let five: Vec<(String, &[u8])> = (0..5).map(|i| (format!("n{i}"), &[9u8][..])).collect();
        let list: Vec<(&str, &[u8])> = five.iter().map(|(n, a)| (n.as_str(), *a)).collect();
        let m = members(&nets(&list), &mut ids);
        assert!(m.is_empty());
        let m = members(&nets(&list[..4]), &mut ids);
        assert_eq!(ids_of(&m, 9).len(), NETS);
    }

    #[test]
    fn counters_are_numbered_as_in_the_c() {
        let c = include_str!("../bpf/fastpath.c");
        let start = c.find("enum counter {").expect("enum counter") + "enum counter {".len();
        let body = &c[start..start + c[start..].find('}').expect("its end")];
        let names: Vec<&str> = body.split(',').map(str::trim).collect();
        let rust = [
            ("TO_TASK", Counter::ToTask),
            ("LOCAL", Counter::Local),
            ("REMOTE", Counter::Remote),
            ("ENCAPSULATED", Counter::Encapsulated),
            ("DECAPSULATED", Counter::Decapsulated),
            ("SPOOFED", Counter::Spoofed),
        ];
        for (name, counter) in rust {
            let at = names.iter().position(|n| *n == name);
            assert_eq!(at, Some(counter as usize), "{name} in {names:?}");
        }
        // And nothing counted in C that Rust does not read.
        assert_eq!(names.last(), Some(&"COUNTERS"));
        assert_eq!(names.len(), rust.len() + 1, "{names:?}");
    }

    #[test]
    fn structs_match_the_c_layout() {
        assert_eq!(std::mem::size_of::<Endpoint>(), 16);
        assert_eq!(std::mem::size_of::<Member>(), 4 * NETS);
        assert_eq!(std::mem::size_of::<Config>(), 20);
        assert_eq!(std::mem::size_of::<Peer>(), 4);
    }
}
