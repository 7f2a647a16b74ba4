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
    /// The overlay: task addresses within it reach each other only inside
    /// one of `networks` (none: no isolation).
    pub overlay: Option<Net>,
    /// Stack networks and their tasks' addresses.
    pub networks: BTreeMap<String, Vec<Ipv4Addr>>,
    /// The nodes' own overlay addresses (gateways and VTEPs), which reach
    /// and are reached by every task (health checks, ingress, DNS).
    pub infra: Vec<Ipv4Addr>,
    /// Host-mode published ports of this node's tasks: (published, task
    /// address, target). Traffic from other machines is DNATed in the
    /// kernel, so the task sees the client's own address.
    pub dnat: Vec<(u16, Ipv4Addr, u16)>,
    /// Who may send this node VXLAN, once the overlay is up.
    pub vxlan: Option<VxlanPeers>,
    /// Tasks that may reach [`METADATA_ADDR`]; no other container may.
    pub metadata_allowed: Vec<Ipv4Addr>,
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
    let mut peers = SetBuilder::<PeerKey>::new("vxlan_peers", t)?;
    let mut mask = None;
    for (underlay, block) in &v.peers {
        peers.add(&PeerKey {
            underlay: *underlay,
            block: block.addr,
        });
        mask = Some(block.netmask());
    }
    let (set, elems) = peers.finish();
    let mut set = set.with_id(1002u32);
    set.family = ProtocolFamily::Inet;
    batch.add(&set, MsgType::Add);
    if let Some(mask) = mask {
        batch.add(&elems, MsgType::Add);
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
    let mut nodes = SetBuilder::<Ipv4Addr>::new("nodes", t)?;
    nodes.add(&v.local);
    for (u, _) in &v.peers {
        nodes.add(u);
    }
    let (set, elems) = nodes.finish();
    let mut set = set.with_id(1000u32);
    set.family = ProtocolFamily::Inet;
    batch.add(&set, MsgType::Add);
    batch.add(&elems, MsgType::Add);
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
        let mut b = SetBuilder::<Ipv4Addr>::new(name, t)?;
        for a in addrs {
            b.add(a);
        }
        let (set, elems) = b.finish();
        // The kernel wants an id for a set made in a transaction (rules of
        // the same transaction refer to it by that id).
        next_id += 1;
        let mut set = set.with_id(next_id);
        // (The builder leaves the set's family unset; the table's it is.)
        set.family = if bridge {
            ProtocolFamily::Bridge
        } else {
            ProtocolFamily::Inet
        };
        batch.add(&set, MsgType::Add);
        if !addrs.is_empty() {
            batch.add(&elems, MsgType::Add);
        }
        Ok(set)
    };
    let infra = set_of("infra".into(), &fw.infra)?;
    let nets = fw
        .networks
        .values()
        .enumerate()
        .map(|(i, addrs)| set_of(format!("net{i}"), addrs))
        .collect::<Result<Vec<_>, _>>()?;
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
fn ip_net(mut rule: Rule, net: Net, source: bool, bridge: bool) -> Result<Rule, OverlayError> {
    ip_field(&mut rule, source, bridge);
    rule.add_expr(rustables::expr::Bitwise::new(
        net.netmask().octets(),
        0u32.to_be_bytes(),
    )?);
    rule.add_expr(Cmp::new(CmpOp::Eq, net.addr.octets()));
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
        let mut allowed = SetBuilder::<Ipv4Addr>::new("metadata_ok", t)?;
        for a in &self.metadata_allowed {
            allowed.add(a);
        }
        let (set, elems) = allowed.finish();
        let mut set = set.with_id(1001u32);
        set.family = ProtocolFamily::Inet;
        batch.add(&set, MsgType::Add);
        if !self.metadata_allowed.is_empty() {
            batch.add(&elems, MsgType::Add);
        }
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
        batch.add(&from_containers()?.drop(), MsgType::Add);
        if !self.dnat.is_empty() {
            let pre = Chain::new(&t)
                .with_name("pre")
                .with_hook(Hook::new(HookClass::PreRouting, -100))
                .with_type(ChainType::Nat)
                .with_policy(ChainPolicy::Accept);
            batch.add(&pre, MsgType::Add);
            for (published, ip, target) in &self.dnat {
                let mut r = Rule::new(&pre)?;
                ipv4(&mut r);
                let mut r = r.dport(*published, Protocol::TCP);
                r.add_expr(Immediate::new_data(ip.octets().to_vec(), Register::Reg1));
                r.add_expr(Immediate::new_data(
                    target.to_be_bytes().to_vec(),
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
