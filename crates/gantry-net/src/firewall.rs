//! The node's firewall, in an nftables table of Gantry's own (`inet gantry`),
//! programmed over netlink (rustables; no `nft` is spawned) and replaced
//! whole, atomically, on every change:
//!
//! - `post` (nat, postrouting): traffic from the overlay or the local
//!   bridge network to anywhere else is masqueraded behind the node's
//!   address; traffic between containers is not;
//! - `input` (filter): from `gantry0`, a container may reach the host only
//!   for DNS (53) and the ports the operator published, plus the replies of
//!   connections the host opened (health checks); everything else it sends
//!   to the host (the agent's and manager's APIs, sshd, ...) is dropped.
//!   VXLAN (UDP 4789) is taken only from another node's underlay address,
//!   and only when the inner packet's source is in that node's block: a
//!   packet from elsewhere, or one that claims a task of another node, is
//!   dropped before the VXLAN device decapsulates it;
//! - `guard` (filter, forward and output): containers may not send to the
//!   VXLAN port of any node, nor may the host's users other than root, so
//!   no one but the kernel's VXLAN device (and the fast path, which sends
//!   below netfilter) speaks VXLAN between nodes;
//! - `meta` (filter, forward): containers do not reach the link-local
//!   instance-metadata address (169.254.169.254), where cloud hosts hand
//!   out their credentials, but for the tasks allowed to.
//!
//! **Architecture invariant:** the table is Gantry's alone, so replacing
//! or deleting it never touches rules of anyone else.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use gantry_ipam::Net;
use ipnetwork::IpNetwork;
use rustables::expr::{
    Cmp, CmpOp, HighLevelPayload, IPv4HeaderField, Immediate, LLHeaderField, Lookup, Meta,
    MetaType, Nat, NatType, NetworkHeaderField, Register,
};
use rustables::set::SetBuilder;
use rustables::{
    Batch, Chain, ChainPolicy, ChainType, Hook, HookClass, MsgType, Protocol, ProtocolFamily, Rule,
    Set, Table,
};

use crate::{OverlayError, BRIDGE, VXLAN_PORT};

const TABLE: &str = "gantry";

/// What the firewall lets through.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Firewall {
    /// Networks of containers on this node (the cluster CIDR, the local
    /// bridge network): masqueraded when they leave them.
    pub container_nets: Vec<Net>,
    /// TCP ports published on this node, open to its containers too.
    pub open_ports: Vec<u16>,
    /// UDP ports published on this node, open to its containers too.
    pub open_udp: Vec<u16>,
    /// The overlay: task addresses within it reach each other only inside
    /// one of `networks` (none: no isolation).
    pub overlay: Option<Net>,
    /// Stack networks and their tasks' addresses.
    pub networks: BTreeMap<String, Vec<Ipv4Addr>>,
    /// The nodes' own overlay addresses (gateways and VTEPs), which reach
    /// and are reached by every task (health checks, ingress, DNS).
    pub infra: Vec<Ipv4Addr>,
    /// Host-mode published ports of this node's tasks. Traffic from other
    /// machines is DNATed in the kernel, so the task sees the client's own
    /// address.
    pub dnat: Vec<Dnat>,
    /// Who may send this node VXLAN, once the overlay is up.
    pub vxlan: Option<VxlanPeers>,
    /// Tasks that may reach [`METADATA_ADDR`]; no other container may.
    pub metadata_allowed: Vec<Ipv4Addr>,
    /// Tasks of this node on internal networks only (compose's
    /// `internal: true`): nothing of theirs leaves the overlay, nothing
    /// from outside it reaches them.
    pub internal: Vec<Ipv4Addr>,
}

/// A host-mode published port: traffic to `published` (on `dest` only,
/// when set) goes to `target` of the task at `addr`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Dnat {
    /// UDP rather than TCP.
    pub udp: bool,
    /// The node address the port is published on (none: any).
    pub dest: Option<Ipv4Addr>,
    /// The port on the node.
    pub published: u16,
    /// The task's address.
    pub addr: Ipv4Addr,
    /// The port in the task.
    pub target: u16,
}

/// The nodes VXLAN is taken from: each other node's underlay address with
/// the block its tasks' addresses are in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VxlanPeers {
    /// This node's underlay address.
    pub local: Ipv4Addr,
    /// The other nodes: underlay address and block.
    pub peers: Vec<(Ipv4Addr, Net)>,
}

/// The link-local address where cloud hosts serve instance metadata.
pub const METADATA_ADDR: Ipv4Addr = Ipv4Addr::new(169, 254, 169, 254);

/// Offsets in a VXLAN packet, from its UDP header: UDP (8) and VXLAN (8)
/// headers, then the inner Ethernet header (its type at 12) and IPv4
/// header (its source at 12).
const INNER_ETHERTYPE: u32 = 8 + 8 + 12;
const INNER_SADDR: u32 = 8 + 8 + 14 + 12;

/// Loads `len` bytes at `offset` of the transport header (`@th,...`)
/// into `reg`.
fn transport_bytes(rule: &mut Rule, offset: u32, len: u32, reg: Register) {
    rule.add_expr(
        rustables::expr::Payload::default()
            .with_base(rustables::sys::NFT_PAYLOAD_TRANSPORT_HEADER)
            .with_offset(offset)
            .with_len(len)
            .with_dreg(reg),
    );
}

/// A key of the `vxlan_peers` set: a peer's underlay address, 12 zero
/// bytes, its block's network address. The rule builds the same 20 bytes
/// from a packet in registers 1 (16 bytes: an immediate zero, then the
/// outer source over its first 4) and 2 (the inner source under the block
/// mask): rustables' expressions name only the 16-byte registers, so this
/// is how one lookup sees both addresses at once.
struct PeerKey {
    underlay: Ipv4Addr,
    block: Ipv4Addr,
}

impl rustables::data_type::DataType for PeerKey {
    // No type of nft's own: the set is Gantry's, read by this rule alone.
    const TYPE: u32 = 0;
    const LEN: u32 = 20;
    fn data(&self) -> Vec<u8> {
        let mut k = vec![0u8; 20];
        k[..4].copy_from_slice(&self.underlay.octets());
        k[16..].copy_from_slice(&self.block.octets());
        k
    }
}

/// The input rules for VXLAN: one lookup of (outer source, inner block)
/// in the set of the peers' (underlay address, block) pairs accepts; the
/// rest of UDP 4789 is dropped. One hash lookup whatever the cluster's
/// size.
fn vxlan_input(
    batch: &mut Batch,
    t: &Table,
    input: &Chain,
    v: &VxlanPeers,
) -> Result<(), OverlayError> {
    let keys = v.peers.iter().map(|(underlay, block)| PeerKey {
        underlay: *underlay,
        block: block.addr,
    });
    let set = add_set(batch, t, ProtocolFamily::Inet, "vxlan_peers", 1002, keys)?;
    if let Some((_, block)) = v.peers.first() {
        let mask = block.netmask();
        let mut r = Rule::new(input)?;
        ipv4(&mut r);
        let mut r = r.dport(VXLAN_PORT, Protocol::UDP);
        transport_bytes(&mut r, INNER_ETHERTYPE, 2, Register::Reg1);
        r.add_expr(Cmp::new(CmpOp::Eq, 0x0800u16.to_be_bytes()));
        r.add_expr(Immediate::new_data(vec![0u8; 16], Register::Reg1));
        r.add_expr(
            HighLevelPayload::Network(NetworkHeaderField::IPv4(IPv4HeaderField::Saddr)).build(),
        );
        transport_bytes(&mut r, INNER_SADDR, 4, Register::Reg2);
        r.add_expr(
            rustables::expr::Bitwise::new(mask.octets(), 0u32.to_be_bytes())?
                .with_sreg(Register::Reg2)
                .with_dreg(Register::Reg2),
        );
        r.add_expr(Lookup::new(&set)?);
        batch.add(&r.accept(), MsgType::Add);
    }
    let mut r = Rule::new(input)?;
    ipv4(&mut r);
    batch.add(&r.dport(VXLAN_PORT, Protocol::UDP).drop(), MsgType::Add);
    Ok(())
}

/// The `guard` chains: nothing but the kernel sends VXLAN to a node.
fn vxlan_guard(batch: &mut Batch, t: &Table, v: &VxlanPeers) -> Result<(), OverlayError> {
    let nodes = std::iter::once(v.local).chain(v.peers.iter().map(|(u, _)| *u));
    let set = add_set(batch, t, ProtocolFamily::Inet, "nodes", 1000, nodes)?;
    let fwd = Chain::new(t)
        .with_name("guard")
        .with_hook(Hook::new(HookClass::Forward, -10))
        .with_type(ChainType::Filter)
        .with_policy(ChainPolicy::Accept);
    batch.add(&fwd, MsgType::Add);
    let r = ip_in(Rule::new(&fwd)?, &set, false, false)?;
    batch.add(&r.dport(VXLAN_PORT, Protocol::UDP).drop(), MsgType::Add);
    let out = Chain::new(t)
        .with_name("guard_out")
        .with_hook(Hook::new(HookClass::Out, -10))
        .with_type(ChainType::Filter)
        .with_policy(ChainPolicy::Accept);
    batch.add(&out, MsgType::Add);
    // A socket of a user other than root (the kernel's VXLAN socket has no
    // owner, so `skuid` does not match it).
    let mut r = ip_in(Rule::new(&out)?, &set, false, false)?.dport(VXLAN_PORT, Protocol::UDP);
    r.add_expr(Meta::new(MetaType::SkUid));
    r.add_expr(Cmp::new(CmpOp::Neq, 0u32.to_ne_bytes()));
    batch.add(&r.drop(), MsgType::Add);
    Ok(())
}

fn net(n: Net) -> Result<IpNetwork, OverlayError> {
    IpNetwork::new(n.addr.into(), n.prefix).map_err(|e| OverlayError::Other(format!("{n}: {e}")))
}

fn built<T>(r: Result<T, rustables::error::BuilderError>) -> Result<T, OverlayError> {
    r.map_err(|e| OverlayError::Other(format!("nftables rule: {e:?}")))
}

fn table() -> Table {
    Table::new(ProtocolFamily::Inet).with_name(TABLE)
}

/// The bridge-family table: traffic between two containers of one node
/// crosses `gantry0` as frames, never the IP forward hook.
fn bridge_table() -> Table {
    Table::new(ProtocolFamily::Bridge).with_name(TABLE)
}

/// `ether type ip`: in the bridge family, the dependency of IPv4 matches
/// (as `nft` writes it, so that `nft list` reads it back).
fn ether_ip(rule: &mut Rule) {
    rule.add_expr(HighLevelPayload::LinkLayer(LLHeaderField::EtherType).build());
    rule.add_expr(Cmp::new(CmpOp::Eq, 0x0800u16.to_be_bytes()));
}

/// Loads the IPv4 source or destination address of the packet, with the
/// dependency `nft` expects in front (`ether type ip` in a bridge table,
/// `meta nfproto ipv4` in an inet one), so that `nft list` reads it back.
fn ip_field(rule: &mut Rule, source: bool, bridge: bool) {
    if bridge {
        ether_ip(rule);
    } else {
        ipv4(rule);
    }
    rule.add_expr(
        HighLevelPayload::Network(NetworkHeaderField::IPv4(if source {
            IPv4HeaderField::Saddr
        } else {
            IPv4HeaderField::Daddr
        }))
        .build(),
    );
}

/// `meta nfproto ipv4`: the family of the packet in an inet table.
fn ipv4(rule: &mut Rule) {
    rule.add_expr(Meta::new(MetaType::NfProto));
    rule.add_expr(Cmp::new(CmpOp::Eq, [libc::NFPROTO_IPV4 as u8]));
}

/// Elements per message: a set's element list is one netlink attribute,
/// whose length field holds at most 64 KiB (a 20-byte key takes about 40).
const ELEMENTS_PER_MESSAGE: usize = 1000;

/// Adds set `name` (id `id`, unique in the table's transaction) of table
/// `t` (of `family`) with `keys` to the batch: the set, then its elements
/// in messages of at most [`ELEMENTS_PER_MESSAGE`], all in the one
/// transaction.
fn add_set<K: rustables::data_type::DataType>(
    batch: &mut Batch,
    t: &Table,
    family: ProtocolFamily,
    name: &str,
    id: u32,
    keys: impl IntoIterator<Item = K>,
) -> Result<Set, OverlayError> {
    let mut set = None;
    let mut keys = keys.into_iter().peekable();
    loop {
        let mut b = SetBuilder::<K>::new(name, t)?;
        for k in keys.by_ref().take(ELEMENTS_PER_MESSAGE) {
            b.add(&k);
        }
        let (s, elems) = b.finish();
        let first = set.is_none();
        let s = set.get_or_insert_with(|| {
            let mut s = s.with_id(id);
            // (The builder leaves the set's family unset; the table's it is.)
            s.family = family;
            s
        });
        if first {
            batch.add(&*s, MsgType::Add);
        }
        if elems
            .get_elements()
            .is_some_and(|e| e.iter().next().is_some())
        {
            batch.add(&elems, MsgType::Add);
        }
        if keys.peek().is_none() {
            return Ok(set.take().expect("made in the first round"));
        }
    }
}

/// Matches an IPv4 source or destination address in `set`.
fn ip_in(mut rule: Rule, set: &Set, source: bool, bridge: bool) -> Result<Rule, OverlayError> {
    ip_field(&mut rule, source, bridge);
    rule.add_expr(Lookup::new(set)?);
    Ok(rule)
}

/// Adds the isolation chain to a table: within the overlay, a task
/// reaches another only inside a network both are on; the nodes' own
/// addresses reach and are reached by all.
fn isolation(
    batch: &mut Batch,
    t: &Table,
    fw: &Firewall,
    overlay: Net,
    bridge: bool,
) -> Result<(), OverlayError> {
    let fwd = Chain::new(t)
        .with_name("isolate")
        .with_hook(Hook::new(HookClass::Forward, 0))
        .with_type(ChainType::Filter)
        .with_policy(ChainPolicy::Accept);
    batch.add(&fwd, MsgType::Add);
    let mut next_id = 0u32;
    let mut set_of = |name: String, addrs: &[Ipv4Addr]| -> Result<Set, OverlayError> {
        // The kernel wants an id for a set made in a transaction (rules of
        // the same transaction refer to it by that id).
        next_id += 1;
        let family = if bridge {
            ProtocolFamily::Bridge
        } else {
            ProtocolFamily::Inet
        };
        add_set(batch, t, family, &name, next_id, addrs.iter().copied())
    };
    let internal = if fw.internal.is_empty() {
        None
    } else {
        Some(set_of("internal".into(), &fw.internal)?)
    };
    let infra = set_of("infra".into(), &fw.infra)?;
    let nets = fw
        .networks
        .values()
        .enumerate()
        .map(|(i, addrs)| set_of(format!("net{i}"), addrs))
        .collect::<Result<Vec<_>, _>>()?;
    // Internal networks' tasks: nothing between them and outside the
    // overlay, either way (first, before any accept).
    if let Some(internal) = &internal {
        for source in [true, false] {
            let r = ip_in(Rule::new(&fwd)?, internal, source, bridge)?;
            let r = ip_net_not(r, overlay, !source, bridge)?;
            batch.add(&r.drop(), MsgType::Add);
        }
    }
    for set in &nets {
        let r = ip_in(Rule::new(&fwd)?, set, true, bridge)?;
        batch.add(&ip_in(r, set, false, bridge)?.accept(), MsgType::Add);
    }
    batch.add(
        &ip_in(Rule::new(&fwd)?, &infra, true, bridge)?.accept(),
        MsgType::Add,
    );
    batch.add(
        &ip_in(Rule::new(&fwd)?, &infra, false, bridge)?.accept(),
        MsgType::Add,
    );
    let r = ip_net(Rule::new(&fwd)?, overlay, true, bridge)?;
    let r = ip_net(r, overlay, false, bridge)?;
    batch.add(&r.drop(), MsgType::Add);
    Ok(())
}

/// Matches an IPv4 source or destination address inside `net`.
fn ip_net(rule: Rule, net: Net, source: bool, bridge: bool) -> Result<Rule, OverlayError> {
    ip_net_cmp(rule, net, source, bridge, CmpOp::Eq)
}

/// Matches an IPv4 source or destination address outside `net`.
fn ip_net_not(rule: Rule, net: Net, source: bool, bridge: bool) -> Result<Rule, OverlayError> {
    ip_net_cmp(rule, net, source, bridge, CmpOp::Neq)
}

fn ip_net_cmp(
    mut rule: Rule,
    net: Net,
    source: bool,
    bridge: bool,
    op: CmpOp,
) -> Result<Rule, OverlayError> {
    ip_field(&mut rule, source, bridge);
    rule.add_expr(rustables::expr::Bitwise::new(
        net.netmask().octets(),
        0u32.to_be_bytes(),
    )?);
    rule.add_expr(Cmp::new(op, net.addr.octets()));
    Ok(rule)
}

impl Firewall {
    /// The `meta` chain: containers reach the instance-metadata address
    /// only from the allowed tasks' addresses.
    fn metadata_guard(&self, batch: &mut Batch, t: &Table) -> Result<(), OverlayError> {
        let chain = Chain::new(t)
            .with_name("meta")
            .with_hook(Hook::new(HookClass::Forward, -10))
            .with_type(ChainType::Filter)
            .with_policy(ChainPolicy::Accept);
        batch.add(&chain, MsgType::Add);
        let allowed = self.metadata_allowed.iter().copied();
        let set = add_set(batch, t, ProtocolFamily::Inet, "metadata_ok", 1001, allowed)?;
        let from_containers = || built(Rule::new(&chain)?.iiface(BRIDGE));
        let ok = ip_in(from_containers()?, &set, true, false)?;
        batch.add(&ok.accept(), MsgType::Add);
        let mut r = from_containers()?;
        ipv4(&mut r);
        batch.add(&r.daddr(METADATA_ADDR.into()).drop(), MsgType::Add);
        Ok(())
    }

    /// Replaces the table with this firewall, in one transaction.
    pub fn apply(&self) -> Result<(), OverlayError> {
        let mut batch = Batch::new();
        let t = table();
        // Add-then-delete makes the delete succeed whether or not the table
        // existed; the last add creates it afresh. One transaction.
        batch.add(&t, MsgType::Add);
        batch.add(&t, MsgType::Del);
        batch.add(&t, MsgType::Add);
        let post = Chain::new(&t)
            .with_name("post")
            .with_hook(Hook::new(HookClass::PostRouting, 100))
            .with_type(ChainType::Nat)
            .with_policy(ChainPolicy::Accept);
        batch.add(&post, MsgType::Add);
        for n in &self.container_nets {
            let n = net(*n)?;
            // Container to container: untouched.
            batch.add(
                &built(Rule::new(&post)?.dnetwork(n))?.accept(),
                MsgType::Add,
            );
        }
        for n in &self.container_nets {
            let n = net(*n)?;
            batch.add(
                &built(Rule::new(&post)?.snetwork(n))?.masquerade(),
                MsgType::Add,
            );
        }
        let input = Chain::new(&t)
            .with_name("input")
            .with_hook(Hook::new(HookClass::In, 0))
            .with_type(ChainType::Filter)
            .with_policy(ChainPolicy::Accept);
        batch.add(&input, MsgType::Add);
        if let Some(v) = &self.vxlan {
            vxlan_input(&mut batch, &t, &input, v)?;
            vxlan_guard(&mut batch, &t, v)?;
        }
        self.metadata_guard(&mut batch, &t)?;
        let from_containers = || built(Rule::new(&input)?.iiface(BRIDGE));
        batch.add(
            &built(from_containers()?.established())?.accept(),
            MsgType::Add,
        );
        batch.add(
            &from_containers()?.dport(53, Protocol::UDP).accept(),
            MsgType::Add,
        );
        batch.add(
            &from_containers()?.dport(53, Protocol::TCP).accept(),
            MsgType::Add,
        );
        for p in &self.open_ports {
            batch.add(
                &from_containers()?.dport(*p, Protocol::TCP).accept(),
                MsgType::Add,
            );
        }
        for p in &self.open_udp {
            batch.add(
                &from_containers()?.dport(*p, Protocol::UDP).accept(),
                MsgType::Add,
            );
        }
        batch.add(&from_containers()?.drop(), MsgType::Add);
        if !self.dnat.is_empty() {
            let pre = Chain::new(&t)
                .with_name("pre")
                .with_hook(Hook::new(HookClass::PreRouting, -100))
                .with_type(ChainType::Nat)
                .with_policy(ChainPolicy::Accept);
            batch.add(&pre, MsgType::Add);
            for d in &self.dnat {
                let mut r = Rule::new(&pre)?;
                match d.dest {
                    Some(dest) => {
                        ip_field(&mut r, false, false);
                        r.add_expr(Cmp::new(CmpOp::Eq, dest.octets()));
                    }
                    None => ipv4(&mut r),
                }
                let proto = if d.udp { Protocol::UDP } else { Protocol::TCP };
                let mut r = r.dport(d.published, proto);
                r.add_expr(Immediate::new_data(
                    d.addr.octets().to_vec(),
                    Register::Reg1,
                ));
                r.add_expr(Immediate::new_data(
                    d.target.to_be_bytes().to_vec(),
                    Register::Reg2,
                ));
                r.add_expr(
                    Nat::default()
                        .with_nat_type(NatType::DNat)
                        .with_family(ProtocolFamily::Ipv4)
                        .with_ip_register(Register::Reg1)
                        .with_port_register(Register::Reg2),
                );
                batch.add(&r, MsgType::Add);
            }
        }
        if let Some(overlay) = self.overlay {
            isolation(&mut batch, &t, self, overlay, false)?;
            let bt = bridge_table();
            batch.add(&bt, MsgType::Add);
            batch.add(&bt, MsgType::Del);
            batch.add(&bt, MsgType::Add);
            isolation(&mut batch, &bt, self, overlay, true)?;
        }
        batch
            .send()
            .map_err(|e| OverlayError::Other(format!("nftables: {e:?}")))
    }

    /// Deletes the tables, if there are any (adding first makes the
    /// delete succeed either way, in one transaction).
    pub fn remove() -> Result<(), OverlayError> {
        let mut batch = Batch::new();
        for t in [table(), bridge_table()] {
            batch.add(&t, MsgType::Add);
            batch.add(&t, MsgType::Del);
        }
        batch
            .send()
            .map_err(|e| OverlayError::Other(format!("nftables: {e:?}")))
    }
}

impl From<rustables::error::BuilderError> for OverlayError {
    fn from(e: rustables::error::BuilderError) -> Self {
        OverlayError::Other(format!("nftables rule: {e:?}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A cluster of thousands: a set's elements outgrow one netlink
    /// attribute (64 KiB), so they go in several messages of one
    /// transaction; applied in a namespace of the test's own. (The whole
    /// transaction must still fit the netlink socket's send buffer, about
    /// 208 KiB: rustables sends it on a socket of its own with the
    /// default size.)
    #[test]
    fn big_sets_apply_in_one_transaction() {
        if !gantry_testkit::require_root("big_sets_apply_in_one_transaction") {
            return;
        }
        let peers: Vec<(Ipv4Addr, Net)> = (0..3000u32)
            .map(|i| {
                (
                    Ipv4Addr::from(0x0a4e_0000 + i),
                    Net::new(Ipv4Addr::from(0x0a20_0000 + (i << 8)), 24),
                )
            })
            .collect();
        let members: Vec<Ipv4Addr> = (0..1000u32)
            .map(|i| Ipv4Addr::from(0x0a20_0000 + i))
            .collect();
        let fw = Firewall {
            container_nets: vec![Net::new(Ipv4Addr::new(10, 32, 0, 0), 12)],
            open_ports: vec![80],
            open_udp: vec![53],
            overlay: Some(Net::new(Ipv4Addr::new(10, 32, 0, 0), 12)),
            networks: [("big_default".to_owned(), members.clone())].into(),
            infra: vec![Ipv4Addr::new(10, 32, 0, 1)],
            dnat: Vec::new(),
            vxlan: Some(VxlanPeers {
                local: Ipv4Addr::new(10, 77, 0, 2),
                peers,
            }),
            // (A node's own tasks: tens, not the cluster's thousands.)
            internal: members[..20].to_vec(),
            metadata_allowed: members,
        };
        // In a network namespace of this thread's own (it goes with it).
        std::thread::spawn(move || {
            // SAFETY: unshare only changes this thread's namespaces.
            let r = unsafe { libc::unshare(libc::CLONE_NEWNET) };
            assert_eq!(r, 0, "unshare: {}", std::io::Error::last_os_error());
            fw.apply().expect("the first apply");
            fw.apply().expect("a replacement");
            Firewall::remove().expect("remove");
        })
        .join()
        .unwrap();
    }
}
