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

use gantry_ipam::Net;
use ipnetwork::IpNetwork;
use rustables::{
    Batch, Chain, ChainPolicy, ChainType, Hook, HookClass, MsgType, Protocol, ProtocolFamily, Rule,
    Table,
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
        batch
            .send()
            .map_err(|e| OverlayError::Other(format!("nftables: {e:?}")))
    }

    /// Deletes the table, if there is one.
    pub fn remove() -> Result<(), OverlayError> {
        let exists = rustables::list_tables()
            .map_err(|e| OverlayError::Other(format!("nftables: {e:?}")))?
            .iter()
            .any(|t| t.get_name().map(String::as_str) == Some(TABLE));
        if !exists {
            return Ok(());
        }
        let mut batch = Batch::new();
        batch.add(&table(), MsgType::Del);
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
