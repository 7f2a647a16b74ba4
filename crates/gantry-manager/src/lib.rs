//! Gantry's manager. So far its pure core: [`reconcile`], one orchestration
//! step of a service over the cluster state. The server (API over mutual
//! TLS, agent streams, heartbeats) will wrap I/O around it.
//!
//! **Architecture invariant:** orchestration decisions are pure functions
//! of the store's [`gantry_state::State`]; the server only feeds them state
//! and time and applies the commands they return through the store.

pub mod backups;
pub mod files;
pub mod liveness;
pub mod network;
pub mod reconcile;
pub mod replicas;
pub mod report;
pub mod scope;
pub mod touch;
pub mod views;
pub mod volumes;

pub use reconcile::{
    reconcile, reconcile_in, snapshot, task_spec, ReconcileError, DEFAULT_STRATEGY_KEY,
};

#[cfg(test)]
mod tests;
