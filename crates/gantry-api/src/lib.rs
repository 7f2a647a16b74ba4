//! The cluster API between the manager, its agents and the CLI: the wire
//! types (JSON over HTTP/1.1) and a client that speaks mutual TLS against
//! the cluster CA, verifying the manager by the name every manager
//! certificate carries ([`gantry_pki::MANAGER_NAME`]) rather than by an
//! address that may change.
//!
//! Routes (all under `/v1`):
//! - `GET /ca`, `POST /join`: without a client certificate (a joining node);
//! - `POST /agent/status` (heartbeat and task reports), `GET /agent/watch`
//!   (assignments, a stream of JSON lines): node certificates;
//! - everything else: the admin certificate.

pub mod addrs;
mod backups;
mod build;
mod client;
mod delta;
mod types;
mod volumes;

pub use addrs::{AddrChange, ScopeChange, ScopedAddrs, ServiceAddrs, ServiceChange, INGRESS};
pub use backups::*;
pub use build::*;
pub use client::{
    has_port, resolve, write_secret, AdminConfig, ApiError, Client, JoinError, DEFAULT_PEER_PORT,
    DIRECT_HEADER, ELECTION_WAIT, MANAGERS_HEADER, PEER_ADDR_HEADER, PEER_PORT_HEADER,
    RETRY_HEADER, STALE_HEADER, TRUST_HEADER,
};
pub use delta::{AssignmentDelta, AssignmentUpdate, Change};
pub use types::*;
pub use volumes::*;

/// The manager's port when none is given.
pub const DEFAULT_PORT: u16 = 4243;
