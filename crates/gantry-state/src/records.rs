//! The records the state holds: nodes, services, tasks, routes,
//! certificates, networks, ACME challenges.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};

use gantry_ipam::Net;
use gantry_route::dfp::TcpRoute;
use gantry_route::RouteSpec;
use gantry_sched::{Availability, Resources};
use gantry_spec::Service;

/// A node as the manager records it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeRecord {
    /// Unique id (from its certificate).
    pub id: String,
    /// Host name.
    pub hostname: String,
    /// Address other nodes reach it at.
    pub addr: String,
    /// A manager (else a worker).
    pub manager: bool,
    /// CPU architecture.
    pub arch: String,
    /// Operator labels.
    pub labels: BTreeMap<String, String>,
    /// Active, pause or drain.
    pub availability: Availability,
    /// Up (heartbeats arrive) or down.
    pub up: bool,
    /// What it has.
    pub capacity: Resources,
    /// Free disk under its data dir when it last reported, bytes.
    #[serde(default)]
    pub disk: u64,
    /// Its block of the overlay (its gateway and its tasks' addresses).
    #[serde(default)]
    pub block: Option<Net>,
    /// The MAC address of its VXLAN endpoint, once it reported one.
    #[serde(default)]
    pub vtep_mac: Option<String>,
    /// The task address of its block handed out last (addresses go round).
    #[serde(default)]
    pub last_addr: Option<Ipv4Addr>,
    /// Down, but its tasks stay where they are: it went down together
    /// with too many others to be a host failure (the storm guard). Cleared
    /// when it comes back, or when an operator confirms it is down.
    #[serde(default)]
    pub held: bool,
    /// The names of its local volumes, as it last reported them.
    #[serde(default, skip_serializing_if = "std::collections::BTreeSet::is_empty")]
    pub volumes: std::collections::BTreeSet<String>,
    /// The port it serves its image blobs (and builds, when it is a
    /// builder) to the cluster on, if it does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer_port: Option<u16>,
}

impl NodeRecord {
    /// Whether its tasks stay on it: up, or down but held.
    pub fn keeps_tasks(&self) -> bool {
        self.up || self.held
    }
}

/// A service: its stack, name and typed spec.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServiceRecord {
    /// `STACK_SERVICE`.
    pub name: String,
    /// The stack it belongs to.
    pub stack: String,
    /// Bumped by every change of spec; tasks remember the version they run.
    pub version: u64,
    /// The spec.
    pub spec: Service,
    /// The version and spec before the last change, for rollback.
    #[serde(default)]
    pub previous: Option<(u64, Service)>,
    /// Where the rollout of the current version stands.
    #[serde(default)]
    pub update: UpdateStatus,
    /// Its virtual IP, given when a spec of it first asked for one
    /// (`endpoint_mode: vip`) and kept until it is removed, so that a
    /// rollback or a mode changed back and forth finds the same address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vip: Option<std::net::Ipv4Addr>,
    /// Held with no task, and why (its volume is being restored or
    /// moved); its spec is untouched, and it comes back as it was.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub paused: Option<String>,
}

/// The rollout of a service's current version.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum UpdateStatus {
    /// Nothing to roll out.
    #[default]
    Completed,
    /// Replacing tasks batch by batch since `since_ms`.
    Updating {
        /// When the rollout started.
        since_ms: u64,
    },
    /// Stopped after failures (failure_action pause).
    Paused {
        /// Why.
        reason: String,
    },
    /// Going back to the previous version since `since_ms`.
    RollingBack {
        /// When the rollback started.
        since_ms: u64,
        /// Why.
        reason: String,
    },
    /// Back on the previous version.
    RolledBack {
        /// Why.
        reason: String,
    },
}

/// Where a task is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TaskState {
    /// Not yet placed (the reason is kept with the task).
    Pending,
    /// On a node, being prepared (image pull).
    Assigned,
    /// Running.
    Running,
    /// Ended by itself or failed.
    Failed,
    /// Ended because it was asked to.
    Shutdown,
}

/// One task of a service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskRecord {
    /// Unique id.
    pub id: String,
    /// Its service.
    pub service: String,
    /// The service version it runs.
    pub version: u64,
    /// Replica slot (0 for global tasks).
    pub slot: u32,
    /// Its node, once placed.
    pub node: Option<String>,
    /// What the orchestrator wants.
    pub desired: TaskState,
    /// What the node last reported.
    pub state: TaskState,
    /// Why it is pending or failed.
    pub message: String,
    /// The container's exit code, once it ended.
    #[serde(default)]
    pub exit_code: Option<i32>,
    /// Restarts of this slot before this task (for max_attempts).
    #[serde(default)]
    pub attempt: u32,
    /// When `state` last changed, milliseconds since the epoch (for the
    /// restart delay).
    #[serde(default)]
    pub updated_ms: u64,
    /// Its overlay address, from its node's block, while it lives.
    #[serde(default)]
    pub addr: Option<Ipv4Addr>,
}

/// Routes given through the docker-flow-proxy API (label routes come
/// from the services themselves).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RouteRecord {
    /// DFP's `serviceName`.
    pub service: String,
    /// The only node whose proxy serves them (a reconfigure without
    /// `distribute`); `None`: every proxy.
    pub node: Option<String>,
    /// HTTP routes.
    pub routes: Vec<RouteSpec>,
    /// TCP routes.
    pub tcp: Vec<TcpRoute>,
}

impl RouteRecord {
    /// Its key in [`State::routes`].
    pub fn key(service: &str, node: Option<&str>) -> String {
        match node {
            Some(n) => format!("{service}@{n}"),
            None => service.to_owned(),
        }
    }
}

/// Where a certificate came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CertSource {
    /// The cluster's edge CA (names under .local, .test, .internal, IPs).
    Internal,
    /// An ACME CA.
    Acme,
    /// Given by an operator (`gantry cert add`, DFP's `cert`).
    User,
}

impl CertSource {
    /// Its name in views and events.
    pub fn name(self) -> &'static str {
        match self {
            CertSource::Internal => "internal",
            CertSource::Acme => "acme",
            CertSource::User => "user",
        }
    }
}

/// A cluster network (`gantry network create`): stacks that name it as
/// `external` share it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkRecord {
    /// Its name.
    pub name: String,
    /// Free-form labels.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// When it was made, milliseconds since the epoch.
    pub created_ms: u64,
}

/// A certificate the proxies serve.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CertRecord {
    /// Its key: its first name.
    pub name: String,
    /// Every name it serves.
    pub names: Vec<String>,
    /// The chain, leaf first.
    pub cert_pem: String,
    /// The private key in clear: only in a store from before keys were
    /// sealed, until the manager seals it ([`CertRecord::key`]) when it
    /// opens the store with the data key.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub key_pem: String,
    /// The private key, sealed with the cluster's data key, bound to
    /// [`CertRecord::aad`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<gantry_pki::seal::Sealed>,
    /// Expiry, milliseconds since the epoch.
    pub not_after_ms: u64,
    /// Where it came from.
    pub source: CertSource,
}

impl CertRecord {
    /// What a certificate's sealed key is bound to: its name and expiry,
    /// so that a key moved onto another certificate does not open.
    pub fn aad(name: &str, not_after_ms: u64) -> Vec<u8> {
        format!("gantry cert key {name} {not_after_ms}").into_bytes()
    }
}

/// A pending ACME challenge, answered by every proxy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChallengeRecord {
    /// The name being validated.
    pub name: String,
    /// HTTP-01: the token in the URL path; TLS-ALPN-01: empty.
    pub token: String,
    /// HTTP-01: the key authorization to answer with.
    pub key_auth: String,
    /// TLS-ALPN-01: the validation certificate (PEM) for the name.
    pub cert_pem: String,
    /// Its key.
    pub key_pem: String,
}

impl ChallengeRecord {
    /// Its key in [`State::challenges`].
    pub fn key(&self) -> String {
        if self.token.is_empty() {
            format!("tls-alpn-01/{}", self.name)
        } else {
            format!("http-01/{}", self.token)
        }
    }
}

/// How a volume's last backup went (a schedule's or one asked for).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackupRecord {
    /// The volume.
    pub volume: String,
    /// The node it ran on.
    pub node: String,
    /// The repository.
    pub repo: String,
    /// When it ended, ms since the epoch.
    pub at_ms: u64,
    /// How long it took, ms.
    pub millis: u64,
    /// Its snapshot, when it succeeded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot: Option<String>,
    /// Bytes in the snapshot.
    #[serde(default)]
    pub bytes: u64,
    /// What the repository grew by.
    #[serde(default)]
    pub stored: u64,
    /// Why it failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// When the last one that succeeded ended (this one, or an earlier).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_ok_ms: Option<u64>,
    /// Failures in a row.
    #[serde(default)]
    pub failures: u32,
}

impl BackupRecord {
    /// Its key in [`crate::State::backups`]: `NODE/VOLUME`.
    pub fn key(&self) -> String {
        Self::key_of(&self.node, &self.volume)
    }

    /// The key of node `node`'s volume `volume`.
    pub fn key_of(node: &str, volume: &str) -> String {
        format!("{node}/{volume}")
    }
}

/// A replicated volume (`x-gantry: {replicas: 2}`): where it lives, where
/// its standby copy is, and the last complete copy.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplicaRecord {
    /// The volume.
    pub volume: String,
    /// The node whose volume it is.
    pub primary: String,
    /// The node that keeps the standby copy (none: not chosen yet).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub standby: Option<String>,
    /// When the standby's last complete copy was taken on the primary
    /// (the writes it holds), ms since the epoch; 0: none yet.
    #[serde(default)]
    pub copied_ms: u64,
    /// Complete copies sent to the current standby.
    #[serde(default)]
    pub copies: u64,
    /// The last failure, if the last pass failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}
