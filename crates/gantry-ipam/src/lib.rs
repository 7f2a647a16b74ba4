//! Overlay address management, pure. The cluster CIDR (default
//! 10.32.0.0/12, as Weave's) is cut into one block per node (default /24);
//! a node's block holds its gateway (the first address, on its bridge), its
//! VXLAN endpoint address (the network address, as flannel does) and its
//! tasks' addresses. Blocks are sized from the CIDR, so there is no
//! 255-container ceiling: a /20 block holds 4,093 tasks.
//!
//! The caller keeps what is in use (the manager's store) and asks for the
//! next free block or address; nothing here remembers anything.
//!
//! **Architecture invariant:** an address or block in the `used` set given
//! is never returned.

use std::collections::BTreeSet;
use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// A bad CIDR or block size.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IpamError {
    /// Not `A.B.C.D/N`.
    #[error("invalid CIDR {0:?}: use A.B.C.D/N, like 10.32.0.0/12")]
    BadCidr(String),
    /// The block size does not fit the CIDR.
    #[error("a /{block} block does not fit in {cidr} (use a prefix between {min} and 30)")]
    BadBlock {
        /// The CIDR.
        cidr: String,
        /// The block prefix asked for.
        block: u8,
        /// The smallest prefix allowed (the CIDR's).
        min: u8,
    },
}

/// An IPv4 network, `address/prefix`, with the host bits zero.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Net {
    /// The network address.
    pub addr: Ipv4Addr,
    /// The prefix length.
    pub prefix: u8,
}

fn mask(prefix: u8) -> u32 {
    if prefix == 0 {
        0
    } else {
        u32::MAX << (32 - prefix)
    }
}

impl Net {
    /// The network of `addr/prefix` (host bits cleared).
    pub fn new(addr: Ipv4Addr, prefix: u8) -> Self {
        let prefix = prefix.min(32);
        Self {
            addr: Ipv4Addr::from(u32::from(addr) & mask(prefix)),
            prefix,
        }
    }

    /// Its netmask (`/24`: 255.255.255.0).
    pub fn netmask(&self) -> Ipv4Addr {
        Ipv4Addr::from(mask(self.prefix))
    }

    /// How many addresses it spans.
    pub fn size(&self) -> u64 {
        1u64 << (32 - self.prefix)
    }

    /// Whether `ip` is inside.
    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        u32::from(ip) & mask(self.prefix) == u32::from(self.addr)
    }

    /// The `i`-th address.
    fn nth(&self, i: u64) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.addr).wrapping_add(i as u32))
    }

    /// The gateway: the first host address (on the node's bridge).
    pub fn gateway(&self) -> Ipv4Addr {
        self.nth(1)
    }

    /// The VXLAN endpoint's address on the overlay: the network address
    /// itself (never a host's), as flannel does.
    pub fn vtep(&self) -> Ipv4Addr {
        self.addr
    }

    /// Whether the two share an address.
    pub fn overlaps(&self, other: Net) -> bool {
        self.contains(other.addr) || other.contains(self.addr)
    }

    /// The broadcast address.
    pub fn broadcast(&self) -> Ipv4Addr {
        self.nth(self.size() - 1)
    }
}

impl fmt::Display for Net {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

impl FromStr for Net {
    type Err = IpamError;
    fn from_str(s: &str) -> Result<Self, IpamError> {
        let bad = || IpamError::BadCidr(s.to_owned());
        let (a, p) = s.trim().split_once('/').ok_or_else(bad)?;
        let addr: Ipv4Addr = a.parse().map_err(|_| bad())?;
        let prefix: u8 = p.parse().map_err(|_| bad())?;
        if prefix > 32 {
            return Err(bad());
        }
        Ok(Self::new(addr, prefix))
    }
}

impl TryFrom<String> for Net {
    type Error = IpamError;
    fn try_from(s: String) -> Result<Self, IpamError> {
        s.parse()
    }
}

impl From<Net> for String {
    fn from(n: Net) -> String {
        n.to_string()
    }
}

/// The cluster's address plan.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Plan {
    /// The cluster CIDR.
    pub cidr: Net,
    /// Prefix length of a node's block.
    pub block_prefix: u8,
}

impl Plan {
    /// A plan; the block must fit the CIDR and hold at least two tasks.
    pub fn new(cidr: Net, block_prefix: u8) -> Result<Self, IpamError> {
        if block_prefix < cidr.prefix || block_prefix > 30 {
            return Err(IpamError::BadBlock {
                cidr: cidr.to_string(),
                block: block_prefix,
                min: cidr.prefix,
            });
        }
        Ok(Self { cidr, block_prefix })
    }

    /// The default: 10.32.0.0/12 in /24 blocks (4,096 nodes of 253 tasks).
    pub fn default_plan() -> Self {
        Self {
            cidr: Net::new(Ipv4Addr::new(10, 32, 0, 0), 12),
            block_prefix: 24,
        }
    }

    /// How many blocks the CIDR holds.
    pub fn blocks(&self) -> u64 {
        1u64 << (self.block_prefix - self.cidr.prefix)
    }

    /// The lowest block not in `used` (and clear of [`Plan::vip_pool`]).
    pub fn next_block(&self, used: &BTreeSet<Net>) -> Option<Net> {
        let step = 1u64 << (32 - self.block_prefix);
        let pool = self.vip_pool();
        (0..self.blocks())
            .map(|i| Net::new(self.cidr.nth(i * step), self.block_prefix))
            .find(|b| !used.contains(b) && !b.overlaps(pool))
    }

    /// Where services' virtual IPs come from: the top sixteenth of the
    /// CIDR (10.47.0.0/16 in the default plan, 65,536 of them), which no
    /// node's block takes. Virtual IPs never appear on the wire (they are
    /// turned into task addresses at the socket), but inside the overlay
    /// they can be no one else's address.
    pub fn vip_pool(&self) -> Net {
        let prefix = (self.cidr.prefix + 4).min(30);
        Net::new(self.cidr.broadcast(), prefix)
    }
}

/// The lowest free virtual IP of `pool` (its network and broadcast
/// addresses are never given).
pub fn next_vip(pool: Net, used: &BTreeSet<Ipv4Addr>) -> Option<Ipv4Addr> {
    (1..pool.size().saturating_sub(1))
        .map(|i| pool.nth(i))
        .find(|ip| !used.contains(ip))
}

/// The next free task address of `block`: the first one after `last` (the
/// address handed out last; if none, the highest in use), wrapping around,
/// so that an address just released is not handed out again at once
/// (neighbours may still hold the old MAC for it).
pub fn next_addr(
    block: Net,
    used: &BTreeSet<Ipv4Addr>,
    last_given: Option<Ipv4Addr>,
) -> Option<Ipv4Addr> {
    let first = 2; // .0 is the VTEP, .1 the gateway
    let last = block.size().checked_sub(2)?; // before the broadcast
    if last < first {
        return None;
    }
    let offset = |ip: &Ipv4Addr| u64::from(u32::from(*ip).wrapping_sub(u32::from(block.addr)));
    let n = last - first + 1;
    // Where to start looking: just after the highest address in use.
    let start = match last_given
        .filter(|ip| block.contains(*ip))
        .map(|ip| offset(&ip))
    {
        Some(o) if (first..=last).contains(&o) => Some(o),
        _ => used
            .iter()
            .filter(|ip| block.contains(**ip))
            .map(offset)
            .filter(|o| (first..=last).contains(o))
            .max(),
    }
    .map_or(0, |o| (o - first + 1) % n);
    (0..n)
        .map(|k| block.nth(first + (start + k) % n))
        .find(|ip| !used.contains(ip))
}

#[cfg(test)]
mod tests;
