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

use crate::{OverlayError, BRIDGE};

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
