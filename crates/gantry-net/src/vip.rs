//! Services' virtual IPs (compose's `endpoint_mode: vip`): the cgroup
//! programs of `bpf/vip.c`, loaded and fed with aya. A process that
//! connects to a service's virtual IP (or sends it a UDP datagram) is
//! connected to one of the service's running tasks, chosen at random when
//! the socket connects; nothing is translated per packet, so the overlay's
//! fast path, its firewall and its isolation see the task's own address.
//!
//! The programs are attached to the root of the cgroup v2 hierarchy
//! (mounted at `/sys/fs/cgroup` on a v2 host, `/sys/fs/cgroup/unified` on
//! a hybrid one), so every process on the node reaches virtual IPs, and
//! with links that belong to this process: when the agent exits they are
//! detached and virtual IPs stop answering (tasks' own addresses and
//! `tasks.SERVICE` still do). Several agents on one machine (simulated
//! nodes) each attach their own; a virtual IP means the same to all.
//!
//! **Invariant:** a virtual IP's count is written after the slots it
//! covers and lowered before the slots above it go, so a lookup never finds
//! a slot missing; at worst, during a change, a task just removed.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::PathBuf;

use aya::maps::{HashMap, MapData};
use aya::programs::{CgroupAttachMode, CgroupSockAddr};
use aya::Ebpf;

/// A failure loading or feeding the virtual IPs' programs.
#[derive(Debug, thiserror::Error)]
#[error("virtual IPs: {what}: {err}")]
pub struct VipError {
    what: String,
    err: String,
}

static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/vip.o"));

/// The programs of `vip.c`, one per hook.
const PROGRAMS: [&str; 4] = [
    "vip_connect4",
    "vip_sendmsg4",
    "vip_recvmsg4",
    "vip_getpeername4",
];

/// The most tasks a virtual IP spreads over (more are left out).
pub const MAX_BACKENDS: usize = 4096;

/// `struct service` in `vip.c`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Service {
    count: u32,
}

// SAFETY: plain integers, no padding.
unsafe impl aya::Pod for Service {}

/// `struct slot` in `vip.c`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Slot {
    vip: u32,
    slot: u32,
}

// SAFETY: plain integers, no padding.
unsafe impl aya::Pod for Slot {}

fn be(a: Ipv4Addr) -> u32 {
    u32::from_ne_bytes(a.octets())
}

fn missing(what: &str, err: &str) -> VipError {
    VipError {
        what: what.to_owned(),
        err: err.to_owned(),
    }
}

fn err<E: std::error::Error>(what: impl Into<String>) -> impl FnOnce(E) -> VipError {
    let what = what.into();
    move |e| {
        // The system call's own error is the source.
        let mut err = e.to_string();
        let mut src = e.source();
        while let Some(s) = src {
            err = format!("{err}: {s}");
            src = s.source();
        }
        VipError { what, err }
    }
}

/// The node's virtual IPs, loaded in the kernel.
pub struct Vips {
    ebpf: Ebpf,
    /// What the maps hold: each virtual IP's tasks, in slot order.
    held: BTreeMap<Ipv4Addr, Vec<Ipv4Addr>>,
}

impl std::fmt::Debug for Vips {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vips").field("held", &self.held).finish()
    }
}

/// Where the cgroup v2 hierarchy is mounted, from `/proc/self/mountinfo`.
pub fn cgroup2_root() -> Option<PathBuf> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    info.lines().find_map(|l| {
        // ID PARENT MAJ:MIN ROOT MOUNTPOINT OPTIONS [TAGS...] - FSTYPE ...
        let (left, right) = l.split_once(" - ")?;
        let fstype = right.split_whitespace().next()?;
        let mut f = left.split_whitespace();
        let root = f.nth(3)?;
        let point = f.next()?;
        (fstype == "cgroup2" && root == "/").then(|| PathBuf::from(point))
    })
}

impl Vips {
    /// Loads the programs and attaches them to the root of the cgroup v2
    /// hierarchy. Virtual IPs come with [`Vips::set`].
    pub fn load() -> Result<Self, VipError> {
        let root = cgroup2_root()
            .ok_or_else(|| missing("cgroup v2", "no cgroup2 hierarchy is mounted"))?;
        let mut ebpf = Ebpf::load(OBJECT).map_err(err("load object"))?;
        for name in PROGRAMS {
            let cgroup = std::fs::File::open(&root).map_err(err(root.display().to_string()))?;
            let p: &mut CgroupSockAddr = ebpf
                .program_mut(name)
                .ok_or_else(|| missing(name, "no program"))?
                .try_into()
                .map_err(err(name))?;
            p.load().map_err(err(format!("load {name}")))?;
            // A link (kernel 5.7+) always lets other programs run too; the
            // kernel refuses attach flags with one.
            p.attach(cgroup, CgroupAttachMode::Single)
                .map_err(err(format!("attach {name}")))?;
        }
        Ok(Self {
            ebpf,
            held: BTreeMap::new(),
        })
    }

    fn map<K: aya::Pod, V: aya::Pod>(
        &mut self,
        name: &str,
    ) -> Result<HashMap<&mut MapData, K, V>, VipError> {
        HashMap::try_from(
            self.ebpf
                .map_mut(name)
                .ok_or_else(|| missing(name, "no map"))?,
        )
        .map_err(err(name))
    }

    /// Makes the virtual IPs exactly `wanted` (each with its running
    /// tasks), touching only those that changed.
    pub fn set(&mut self, wanted: &BTreeMap<Ipv4Addr, Vec<Ipv4Addr>>) -> Result<(), VipError> {
        let gone: Vec<Ipv4Addr> = self
            .held
            .keys()
            .filter(|v| !wanted.contains_key(v))
            .copied()
            .collect();
        for vip in gone {
            self.put(vip, &[])?;
            self.map::<u32, Service>("vips")?
                .remove(&be(vip))
                .map_err(err(format!("remove {vip}")))?;
            self.held.remove(&vip);
        }
        for (vip, tasks) in wanted {
            let tasks = &tasks[..tasks.len().min(MAX_BACKENDS)];
            if self.held.get(vip).map(Vec::as_slice) != Some(tasks) {
                self.put(*vip, tasks)?;
            }
        }
        Ok(())
    }

    /// Gives `vip` these tasks (none: it refuses connections).
    fn put(&mut self, vip: Ipv4Addr, tasks: &[Ipv4Addr]) -> Result<(), VipError> {
        let old = self.held.get(&vip).cloned().unwrap_or_default();
        let key = |slot: usize| Slot {
            vip: be(vip),
            slot: slot as u32,
        };
        let count = |n: usize| Service { count: n as u32 };
        // Lower the count first when shrinking, so that no lookup reaches
        // a slot about to go.
        if tasks.len() < old.len() {
            self.map::<u32, Service>("vips")?
                .insert(be(vip), count(tasks.len()), 0)
                .map_err(err(format!("{vip}")))?;
        }
        {
            let mut slots = self.map::<Slot, u32>("backends")?;
            for (i, t) in tasks.iter().enumerate() {
                if old.get(i) != Some(t) {
                    slots
                        .insert(key(i), be(*t), 0)
                        .map_err(err(format!("{vip} slot {i}")))?;
                }
            }
            for i in tasks.len()..old.len() {
                // Gone already is as good as removed.
                let _ = slots.remove(&key(i));
            }
        }
        if tasks.len() >= old.len() {
            self.map::<u32, Service>("vips")?
                .insert(be(vip), count(tasks.len()), 0)
                .map_err(err(format!("{vip}")))?;
        }
        self.held.insert(vip, tasks.to_vec());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};

    /// A virtual IP no real test uses (RFC 2544's benchmark range).
    const VIP: Ipv4Addr = Ipv4Addr::new(198, 18, 255, 254);

    #[test]
    fn a_virtual_ip_connects_to_its_tasks_and_answers_as_itself() {
        if !gantry_testkit::require_root("a_virtual_ip_connects_to_its_tasks") {
            return;
        }
        let mut v = Vips::load().expect("load");
        let tcp = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = tcp.local_addr().unwrap().port();
        v.set(&[(VIP, vec![Ipv4Addr::LOCALHOST])].into()).unwrap();
        let mut c = TcpStream::connect(SocketAddr::from((VIP, port))).expect("connect to the VIP");
        // The peer is the virtual IP, as the program was asked for it.
        assert_eq!(c.peer_addr().unwrap(), SocketAddr::from((VIP, port)));
        let (mut s, _) = tcp.accept().unwrap();
        c.write_all(b"ping").unwrap();
        let mut b = [0u8; 4];
        s.read_exact(&mut b).unwrap();
        assert_eq!(&b, b"ping");
        // UDP, unconnected: the reply comes from the virtual IP.
        let udp = UdpSocket::bind("127.0.0.1:0").unwrap();
        let uport = udp.local_addr().unwrap().port();
        let client = UdpSocket::bind("0.0.0.0:0").unwrap();
        client
            .set_read_timeout(Some(std::time::Duration::from_secs(5)))
            .unwrap();
        client
            .send_to(b"q", SocketAddr::from((VIP, uport)))
            .unwrap();
        let mut b = [0u8; 8];
        let (_, from) = udp.recv_from(&mut b).unwrap();
        udp.send_to(b"a", from).unwrap();
        let (_, back) = client.recv_from(&mut b).unwrap();
        assert_eq!(back, SocketAddr::from((VIP, uport)));
        // No task: refused at once, not a timeout.
        v.set(&[(VIP, vec![])].into()).unwrap();
        let e = TcpStream::connect(SocketAddr::from((VIP, port))).unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::PermissionDenied, "{e}");
        // Gone, and the other addresses untouched throughout.
        v.set(&BTreeMap::new()).unwrap();
        assert!(v.held.is_empty());
        TcpStream::connect(SocketAddr::from((Ipv4Addr::LOCALHOST, port))).unwrap();
    }

    #[test]
    fn a_changed_set_of_tasks_is_rewritten_slot_by_slot() {
        if !gantry_testkit::require_root("a_changed_set_of_tasks_is_rewritten") {
            return;
        }
        let mut v = Vips::load().expect("load");
        let a = |o: u8| Ipv4Addr::new(10, 0, 0, o);
        let vip = Ipv4Addr::new(198, 18, 255, 253);
        v.set(&[(vip, vec![a(1), a(2), a(3)])].into()).unwrap();
        v.set(&[(vip, vec![a(1), a(4)])].into()).unwrap();
        let slots: HashMap<_, Slot, u32> = v.map("backends").unwrap();
        let mut held: Vec<(u32, u32)> = slots
            .iter()
            .filter_map(Result::ok)
            .filter(|(k, _)| k.vip == be(vip))
            .map(|(k, addr)| (k.slot, addr))
            .collect();
        held.sort();
        assert_eq!(held, [(0, be(a(1))), (1, be(a(4)))]);
        let vips: HashMap<_, u32, Service> = v.map("vips").unwrap();
        assert_eq!(vips.get(&be(vip), 0).unwrap(), Service { count: 2 });
    }

    #[test]
    fn the_cgroup2_hierarchy_is_found() {
        // Every machine Gantry runs on mounts one (v2, or hybrid's
        // unified), and BPF cgroup programs need it.
        let root = cgroup2_root().expect("a cgroup2 mount");
        assert!(root.join("cgroup.procs").exists(), "{}", root.display());
    }
}
