//! What goes over the wire.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

pub use gantry_ipam::Net;
use gantry_sched::Availability;
pub use gantry_spec::Service;
pub use gantry_state::{NodeRecord, ServiceRecord, TaskRecord, TaskState, UpdateStatus};

/// What a node tells the manager about itself.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeInfo {
    /// Host name.
    pub hostname: String,
    /// Address other nodes and the manager reach it at.
    pub addr: String,
    /// CPU architecture (`x86_64`, `aarch64`).
    pub arch: String,
    /// Billionths of a CPU it has.
    pub nano_cpus: u64,
    /// Memory it has, bytes.
    pub memory: u64,
    /// Free disk under its data dir, bytes.
    pub disk: u64,
    /// Labels given with `--label` at start.
    pub labels: BTreeMap<String, String>,
    /// The MAC address of its VXLAN endpoint, once the overlay is up.
    #[serde(default)]
    pub vtep_mac: Option<String>,
    /// The names of its local volumes (at most [`MAX_NODE_VOLUMES`]), so
    /// that tasks that need an existing one go where it is; none: as last
    /// reported (the list travels when it changes, and now and then).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volumes: Option<Vec<String>>,
    /// The port it serves its image blobs (and builds, when labelled a
    /// builder) to the cluster on, if it does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer_port: Option<u16>,
}

/// The most volume names a node reports.
pub const MAX_NODE_VOLUMES: usize = 4096;

impl NodeInfo {
    /// What the manager takes from a node: a host name and labels without
    /// control characters, an IP address, a MAC in `aa:bb:cc:dd:ee:ff`
    /// form. A node's facts end up in tables, events and other nodes'
    /// overlay entries.
    pub fn check(&self) -> Result<(), String> {
        let clean = |what: &str, v: &str| {
            if v.chars().any(|c| c.is_control()) {
                Err(format!("node {what} {v:?} holds a control character"))
            } else {
                Ok(())
            }
        };
        if self.hostname.is_empty()
            || self.hostname.len() > 253
            || self.hostname.chars().any(char::is_whitespace)
        {
            return Err(format!("invalid node host name {:?}", self.hostname));
        }
        clean("host name", &self.hostname)?;
        if self.addr.parse::<std::net::IpAddr>().is_err() {
            return Err(format!(
                "invalid node address {:?}: an IP address",
                self.addr
            ));
        }
        clean("architecture", &self.arch)?;
        for (k, v) in &self.labels {
            if k.is_empty() {
                return Err("a node label has an empty name".into());
            }
            clean("label", k)?;
            clean("label value", v)?;
        }
        if let Some(m) = &self.vtep_mac {
            let ok = m.len() == 17
                && m.split(':')
                    .all(|b| b.len() == 2 && b.bytes().all(|c| c.is_ascii_hexdigit()));
            if !ok {
                return Err(format!("invalid VTEP MAC {m:?}"));
            }
        }
        let volumes = self.volumes.as_deref().unwrap_or_default();
        if volumes.len() > MAX_NODE_VOLUMES {
            return Err(format!(
                "{} volume names: at most {MAX_NODE_VOLUMES}",
                volumes.len()
            ));
        }
        if let Some(v) = volumes.iter().find(|v| !crate::valid_volume_name(v)) {
            return Err(format!("invalid volume name {v:?}"));
        }
        Ok(())
    }
}

/// `POST /v1/join`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JoinRequest {
    /// The join token (`gantry join-token`).
    pub token: String,
    /// A certificate request for the node's own key.
    pub csr_pem: String,
    /// The node.
    pub info: NodeInfo,
}

/// `POST /v1/agent/renew`: a node's request for a new certificate, for a
/// key it made (its current certificate says who it is).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RenewRequest {
    /// The certificate request (PEM).
    pub csr_pem: String,
}

/// The renewed certificate, and the roots to trust.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RenewResponse {
    /// The certificate (PEM), followed by the cross-signed CA during a
    /// rotation.
    pub cert_pem: String,
    /// The cluster's roots (PEM): the CA, and the one it replaces while a
    /// rotation is under way.
    pub ca_pem: String,
}

/// `GET /v1/ca`, `POST /v1/ca/rotate`: the cluster CA and its rotation.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CaStatus {
    /// SHA-256 of the CA that issues certificates (what join tokens name).
    pub fingerprint: String,
    /// SHA-256 of every root trusted (the old one too while a rotation is
    /// under way).
    pub trusted: Vec<String>,
    /// The rotation under way, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rotation: Option<CaRotation>,
}

/// How a CA rotation stands: it ends once every node and manager holds a
/// certificate of the new CA (the old root is then trusted no more).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CaRotation {
    /// When it started (ms since the epoch).
    pub started_ms: u64,
    /// SHA-256 of the CA it replaces.
    pub from: String,
    /// Nodes and managers in all.
    pub total: usize,
    /// Those that hold a certificate of the new CA.
    pub renewed: usize,
    /// Those it waits for (`node HOST`, `manager HOST`; `(down)` when
    /// the node is down: the rotation ends when it comes back, or is
    /// removed).
    pub waiting: Vec<String>,
}

/// The answer to a join.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JoinResponse {
    /// The id the manager gave the node.
    pub node_id: String,
    /// Its certificate.
    pub cert_pem: String,
    /// The cluster CA.
    pub ca_pem: String,
}

/// How a task's container is doing, as its node sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskStatus {
    /// The task.
    pub id: String,
    /// Assigned (preparing, or running but not yet healthy), running,
    /// failed or shut down.
    pub state: TaskState,
    /// The exit code once it ended.
    pub exit_code: Option<i32>,
    /// What happened (pull progress, health, start error).
    pub message: String,
    /// The container's id.
    pub container: Option<String>,
}

/// `POST /v1/agent/status`: a heartbeat with the node's facts and its
/// tasks' states: every task container it has, or, between whole reports,
/// those that changed ([`StatusReport::partial`]).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StatusReport {
    /// The node's facts.
    pub info: NodeInfo,
    /// Every task container the node has.
    pub tasks: Vec<TaskStatus>,
    /// Its figures, when it has read them.
    #[serde(default)]
    pub stats: Option<NodeStats>,
    /// Whether `tasks` holds only the tasks whose status changed since the
    /// node's last report the manager accepted (a task it does not list is
    /// as it was); a whole report lists every task container, and a task
    /// it does not list is gone from the node.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub partial: bool,
    /// Its volumes, when it measured them since its last report the
    /// manager accepted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volumes: Option<crate::VolumeReport>,
}

/// One task a node must run (or stop).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Assignment {
    /// The task.
    pub task: TaskRecord,
    /// Its stack.
    pub stack: String,
    /// The service spec of the task's version.
    pub spec: Service,
    /// Its secrets and configs as files, in the order of the spec's
    /// secrets then configs: sent only to the task's node, kept there only
    /// in memory.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub files: Vec<TaskFile>,
    /// Why the task cannot have its files (a locked manager, a template
    /// that fails): the node fails the task saying so.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub blocked: Option<String>,
}

/// A secret or config as a file in a task's container.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskFile {
    /// The file's absolute path in the container.
    pub target: String,
    /// Its owner.
    pub uid: u32,
    /// Its group.
    pub gid: u32,
    /// Its permission bits.
    pub mode: u32,
    /// Its bytes.
    pub data: FileData,
}

/// A file's bytes: base64 on the wire, never printed (`Debug` shows the
/// length only), zeroed when dropped.
#[derive(Clone, PartialEq, Eq)]
pub struct FileData(pub zeroize::Zeroizing<Vec<u8>>);

impl std::fmt::Debug for FileData {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "<{} bytes>", self.0.len())
    }
}

impl Serialize for FileData {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use base64::Engine;
        let text =
            zeroize::Zeroizing::new(base64::engine::general_purpose::STANDARD.encode(&self.0[..]));
        s.serialize_str(&text)
    }
}

impl<'de> Deserialize<'de> for FileData {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use base64::Engine;
        let text = zeroize::Zeroizing::new(String::deserialize(d)?);
        base64::engine::general_purpose::STANDARD
            .decode(text.as_bytes())
            .map(|v| FileData(zeroize::Zeroizing::new(v)))
            .map_err(|_| serde::de::Error::custom("a file's data is not base64"))
    }
}

/// A line of `GET /v1/agent/watch`: the node's whole assignment set,
/// sent at once and again whenever it changes. A task missing from it must
/// not run on the node.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Assignments {
    /// The tasks.
    pub tasks: Vec<Assignment>,
    /// The node's part of the overlay (none until it has a block).
    #[serde(default)]
    pub network: Option<NodeNetwork>,
    /// The other nodes that are up, with what the overlay needs to reach
    /// them.
    #[serde(default)]
    pub peers: Vec<Peer>,
    /// Task addresses by scope and service, from which the node derives
    /// its DNS names and its networks' members ([`crate::addrs`]).
    #[serde(default)]
    pub addrs: crate::ScopedAddrs,
    /// Ingress-mode published ports of the cluster: every node forwards
    /// them to a running task of their service, wherever it runs.
    #[serde(default)]
    pub ingress: Vec<IngressPort>,
    /// The edge proxy's HTTP routes on this node, with their healthy
    /// tasks.
    #[serde(default)]
    pub routes: Vec<gantry_route::Route>,
    /// The certificates the proxy serves.
    #[serde(default)]
    pub certs: Vec<Cert>,
    /// Pending ACME HTTP-01 challenges: token to key authorization.
    #[serde(default)]
    pub http01: BTreeMap<String, String>,
    /// Pending ACME TLS-ALPN-01 challenge certificates.
    #[serde(default)]
    pub alpn01: Vec<Cert>,
    /// Whether this node runs the edge proxy: all nodes, unless some carry
    /// the label `gantry.edge=true`, then only those. Only an edge node is
    /// sent the certificates (and their keys).
    #[serde(default = "yes")]
    pub edge: bool,
    /// The manager cannot open the certificates' keys (it is locked, see
    /// `gantry unlock`): `certs` is not what the proxies should serve, and
    /// the node keeps the certificates it holds.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub certs_withheld: bool,
}

fn yes() -> bool {
    true
}

/// A certificate and its key, for these names.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cert {
    /// The names.
    pub names: Vec<String>,
    /// The chain, leaf first.
    pub cert_pem: String,
    /// The key.
    pub key_pem: String,
}

/// A docker-flow-proxy reconfigure or remove, passed on by an agent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DfpRequest {
    /// The query parameters.
    pub query: BTreeMap<String, String>,
}

/// `gantry network create`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkCreate {
    /// Its name.
    pub name: String,
    /// Labels.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

/// `POST /v1/secrets` and `POST /v1/configs`: create one, or give it a
/// new value (its version goes up) or new labels.
#[derive(Clone, Default, Serialize, Deserialize)]
pub struct FileCreate {
    /// Its name.
    pub name: String,
    /// Labels.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Its value, base64.
    pub data: String,
    /// A config that is a file template, filled for each task (compose's
    /// `template_driver: golang`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub template: bool,
}

impl std::fmt::Debug for FileCreate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the value.
        f.debug_struct("FileCreate")
            .field("name", &self.name)
            .field("labels", &self.labels)
            .field("template", &self.template)
            .finish_non_exhaustive()
    }
}

/// A secret or a config as `ls` and `inspect` show it. A secret's value is
/// never shown; a config's is, with `inspect`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileView {
    /// Its name.
    pub name: String,
    /// Labels.
    pub labels: BTreeMap<String, String>,
    /// Its value's version (from 1).
    pub version: u64,
    /// When it was made (RFC 3339).
    pub created: String,
    /// When its value last changed.
    pub updated: String,
    /// The services that use it.
    pub services: Vec<String>,
    /// A config's value, base64 (`inspect` only; never a secret's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<String>,
}

/// A cluster network as `gantry network ls/inspect` show it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkView {
    /// Its name.
    pub name: String,
    /// Labels.
    pub labels: BTreeMap<String, String>,
    /// When it was made (RFC 3339).
    pub created: String,
    /// The services on it.
    pub services: Vec<String>,
}

/// A certificate as `gantry cert ls` shows it (no key).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CertView {
    /// Its key: the first name.
    pub name: String,
    /// Every name.
    pub names: Vec<String>,
    /// `internal`, `acme` or `user`.
    pub source: String,
    /// Expiry (RFC 3339).
    pub not_after: String,
    /// The chain.
    pub cert_pem: String,
}

/// `gantry cert add`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CertAdd {
    /// The chain, leaf first.
    pub cert_pem: String,
    /// The key.
    pub key_pem: String,
}

/// A port published in ingress mode.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct IngressPort {
    /// The port on every node.
    pub published: u16,
    /// The port in the tasks.
    pub target: u16,
    /// The service (`STACK_SERVICE`, a DNS name of its running tasks).
    pub service: String,
    /// UDP rather than TCP.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub udp: bool,
    /// The node address it listens on (none: every address).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_ip: Option<std::net::IpAddr>,
}

impl IngressPort {
    /// What a listener is known by: two ports with the same key cannot
    /// both be open.
    pub fn key(&self) -> (bool, u16, Option<std::net::IpAddr>) {
        (self.udp, self.published, self.host_ip)
    }
}

/// A node's part of the overlay.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeNetwork {
    /// Its block: the gateway (first address) goes on its bridge, the
    /// network address on its VXLAN device.
    pub block: Net,
    /// The cluster's VXLAN network id.
    pub vni: u32,
    /// The cluster's whole overlay range.
    pub cidr: Net,
    /// Nodes on one subnet send each other's overlay traffic straight
    /// over the underlay, without VXLAN (`gantry server --direct-routing`).
    #[serde(default)]
    pub direct_routing: bool,
}

/// Another node as the overlay sees it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Peer {
    /// Its id.
    pub id: String,
    /// Its underlay address.
    pub addr: String,
    /// Its block.
    pub block: Net,
    /// Its VXLAN endpoint's MAC.
    pub vtep_mac: String,
}

/// `POST /v1/stacks/{name}`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DeployRequest {
    /// Services by short name.
    pub services: BTreeMap<String, Service>,
    /// Remove the stack's services that the file no longer has.
    pub prune: bool,
    /// Secrets the stack makes (or gives new values), before its services.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub secrets: Vec<FileCreate>,
    /// Configs the stack makes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub configs: Vec<FileCreate>,
}

/// What a deploy changed.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct DeployResponse {
    /// Services created.
    pub created: Vec<String>,
    /// Services whose spec changed (rolled out).
    pub updated: Vec<String>,
    /// Services left as they were.
    pub unchanged: Vec<String>,
    /// Services removed (with prune).
    pub removed: Vec<String>,
}

/// A stack in `stack ls`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StackView {
    /// Its name.
    pub name: String,
    /// How many services.
    pub services: usize,
}

/// A service with its counts, for `service ls` and `inspect`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ServiceView {
    /// The record (name, stack, version, spec, rollout).
    #[serde(flatten)]
    pub record: ServiceRecord,
    /// `replicated` or `global`.
    pub mode: String,
    /// Tasks running (and healthy).
    pub running: u32,
    /// Tasks wanted.
    pub desired: u32,
    /// The image of the current version.
    pub image: String,
}

/// `POST /v1/nodes/{id}`: `node update`, `drain`, `activate`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct NodeUpdate {
    /// New availability.
    pub availability: Option<Availability>,
    /// Labels to add or change.
    #[serde(default)]
    pub label_add: BTreeMap<String, String>,
    /// Labels to remove.
    #[serde(default)]
    pub label_rm: Vec<String>,
}

/// A node in `node ls` and `inspect`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NodeView {
    /// The record.
    #[serde(flatten)]
    pub record: NodeRecord,
    /// Tasks it runs now (assigned or running, wanted or being stopped).
    pub tasks: usize,
    /// Milliseconds since its last heartbeat (none: not seen since the
    /// manager started).
    pub last_seen_ms: Option<u64>,
    /// The manager on its host: `Leader`, `Reachable`, `Unreachable` or
    /// `Learner` (none: no manager there).
    #[serde(default)]
    pub manager_status: Option<String>,
    /// CPU in use, percent of all its CPUs (from its last report).
    #[serde(default)]
    pub cpu_percent: Option<f64>,
    /// Memory in use, bytes (from its last report).
    #[serde(default)]
    pub mem_used: Option<u64>,
}

/// One manager as `gantry node ls` and `gantry manager ls` show it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ManagerView {
    /// Its id in the group.
    pub id: String,
    /// Where the others reach it.
    pub addr: String,
    /// Its host's name.
    pub hostname: String,
    /// `Leader`, `Reachable` or `Unreachable`; a learner (demoted, or
    /// catching up) shows `Learner`.
    pub status: String,
}

/// `POST /v1/services/{name}/update`: `service update` and `scale`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ServiceUpdate {
    /// New image.
    pub image: Option<String>,
    /// Environment variables to set.
    #[serde(default)]
    pub env_add: BTreeMap<String, String>,
    /// Environment variables to remove.
    #[serde(default)]
    pub env_rm: Vec<String>,
    /// Container labels to set.
    #[serde(default)]
    pub label_add: BTreeMap<String, String>,
    /// Container labels to remove.
    #[serde(default)]
    pub label_rm: Vec<String>,
    /// New replica count (replicated services only).
    pub replicas: Option<u32>,
    /// New command.
    pub command: Option<Vec<String>>,
    /// Secrets to add (or change, by source).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub secret_add: Vec<gantry_spec::FileRef>,
    /// Secrets to remove, by name.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub secret_rm: Vec<String>,
    /// Configs to add (or change, by source).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub config_add: Vec<gantry_spec::FileRef>,
    /// Configs to remove, by name.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub config_rm: Vec<String>,
}

/// A cluster event (`gantry events`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// When, RFC 3339.
    pub time: String,
    /// `node`, `task` or `service`.
    #[serde(rename = "type")]
    pub kind: String,
    /// What happened (`up`, `down`, `running`, `failed`, `update`, ...).
    pub action: String,
    /// The node, task or service.
    pub id: String,
    /// More about it (`service`, `node`, `state`, `message`, ...).
    pub attributes: BTreeMap<String, String>,
}

/// `GET /v1/join-token`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JoinTokenView {
    /// The token.
    pub token: String,
    /// The addresses the manager advertises.
    pub manager: String,
}

/// `GET /v1/logs`: which logs, and how many.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogQuery {
    /// A service, by full (`STACK_NAME`) or short name.
    #[serde(default)]
    pub service: Option<String>,
    /// A task, by id or a unique prefix of one.
    #[serde(default)]
    pub task: Option<String>,
    /// Only the last N lines of each task.
    #[serde(default)]
    pub tail: Option<usize>,
    /// Only lines from this time on (RFC 3339).
    #[serde(default)]
    pub since: Option<chrono::DateTime<chrono::Utc>>,
    /// Only lines before this time (RFC 3339).
    #[serde(default)]
    pub until: Option<chrono::DateTime<chrono::Utc>>,
    /// Keep following new lines, and tasks that start later.
    #[serde(default)]
    pub follow: bool,
}

/// A line of `GET /v1/agent/logs`: the manager asks the agent for the logs
/// of some tasks, to be sent as `POST /v1/agent/logs/ID`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogSubscription {
    /// The subscription, for the agent's `POST`.
    pub id: u64,
    /// Tasks of these services (full names)...
    pub services: Vec<String>,
    /// ...or these tasks.
    pub tasks: Vec<String>,
    /// What the client asked for.
    pub query: LogQuery,
}

/// One line of a task's output, as it travels to the client.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogEntry {
    /// When the container wrote it.
    pub time: chrono::DateTime<chrono::Utc>,
    /// The node's host name.
    pub node: String,
    /// The task.
    pub task: String,
    /// Its service (full name).
    pub service: String,
    /// Its replica slot.
    pub slot: u32,
    /// `stdout` or `stderr`.
    pub stream: String,
    /// The text, with its newline when it had one.
    pub line: String,
}

/// What travels in a log stream, agent to manager and manager to client.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LogFrame {
    /// A line.
    Entry(LogEntry),
    /// The sender has sent every line it had when asked (in time order);
    /// what follows is new.
    CaughtUp,
    /// Something the client should know (a node that did not answer).
    Warning(String),
}

/// One task's container figures, as its node last read them.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TaskStats {
    /// The task.
    pub task: String,
    /// Its service (full name).
    pub service: String,
    /// Its stack.
    pub stack: String,
    /// Its replica slot.
    pub slot: u32,
    /// The container's name.
    pub container: String,
    /// CPU in use over the last interval, in percent of one CPU (as
    /// `docker stats`).
    pub cpu_percent: f64,
    /// CPU time used, nanoseconds.
    pub cpu_ns: u64,
    /// Periods in which the CPU quota throttled it.
    pub throttled_periods: u64,
    /// Time spent throttled, nanoseconds.
    pub throttled_ns: u64,
    /// Memory in use (the cgroup's figure, page cache included), bytes.
    pub memory_usage: u64,
    /// The working set: the usage less inactive page cache (what
    /// `docker stats` shows), bytes.
    #[serde(default)]
    pub memory_working_set: u64,
    /// The memory limit, bytes (`None`: unlimited).
    pub memory_limit: Option<u64>,
    /// Processes the OOM killer killed.
    pub oom_kills: u64,
    /// Processes.
    pub pids: u64,
    /// Bytes read from block devices.
    pub blk_read: u64,
    /// Bytes written to block devices.
    pub blk_write: u64,
    /// Network counters of its namespace, devices but `lo` (none when it
    /// shares the host's network): bytes and packets received and sent.
    pub net: Option<[u64; 4]>,
}

/// A node's figures, sent with its status reports.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct NodeStats {
    /// When they were read, milliseconds since the epoch.
    pub time_ms: u64,
    /// CPUs.
    pub cpus: u64,
    /// CPU in use over the last interval, percent of all CPUs.
    pub cpu_percent: f64,
    /// Memory, bytes.
    pub mem_total: u64,
    /// Memory available to new work, bytes.
    pub mem_available: u64,
    /// The running task containers.
    pub tasks: Vec<TaskStats>,
}

/// `GET /v1/stats`: a node's latest figures.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeStatsView {
    /// The node's id.
    pub node: String,
    /// Its host name.
    pub hostname: String,
    /// Its figures.
    pub stats: NodeStats,
}

#[cfg(test)]
mod tests {
    use super::*;

    proptest::proptest! {
        /// Whatever JSON a client sends to a route, decoding its request
        /// type never panics, nor does checking a node's facts.
        #[test]
        fn any_request_body_decodes_or_fails_cleanly(
            text in "([{}\\[\\],:]|\"(hostname|addr|labels|info|token|services|prune|env_add|replicas|query|cert_pem|tasks|state|\\PC{0,6})\"|-?[0-9]{1,20}(\\.[0-9]+)?(e[0-9]{1,3})?|true|null| ){0,60}"
        ) {
            if let Ok(v) = serde_json::from_str::<serde_json::Value>(&text) {
                let _ = serde_json::from_value::<JoinRequest>(v.clone());
                let _ = serde_json::from_value::<StatusReport>(v.clone());
                let _ = serde_json::from_value::<DeployRequest>(v.clone());
                let _ = serde_json::from_value::<ServiceUpdate>(v.clone());
                let _ = serde_json::from_value::<NodeUpdate>(v.clone());
                let _ = serde_json::from_value::<DfpRequest>(v.clone());
                let _ = serde_json::from_value::<CertAdd>(v.clone());
                let _ = serde_json::from_value::<LogQuery>(v.clone());
                if let Ok(info) = serde_json::from_value::<NodeInfo>(v) {
                    let _ = info.check();
                }
            }
        }
    }

    #[test]
    fn node_facts_are_checked() {
        let good = NodeInfo {
            hostname: "node-1".into(),
            addr: "192.168.1.10".into(),
            arch: "x86_64".into(),
            vtep_mac: Some("02:42:0a:20:01:00".into()),
            ..Default::default()
        };
        assert_eq!(good.check(), Ok(()));
        for bad in [
            NodeInfo {
                hostname: "a\u{1b}[2J".into(),
                ..good.clone()
            },
            NodeInfo {
                hostname: "".into(),
                ..good.clone()
            },
            NodeInfo {
                addr: "not-an-ip".into(),
                ..good.clone()
            },
            NodeInfo {
                vtep_mac: Some("zz".into()),
                ..good.clone()
            },
            NodeInfo {
                labels: [("k\n".to_owned(), "v".to_owned())].into(),
                ..good.clone()
            },
        ] {
            assert!(bad.check().is_err(), "{bad:?}");
        }
    }
}

/// `POST /v1/registry/users`: a registry user to make (or give a new
/// password).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RegistryUserCreate {
    /// The user name.
    pub name: String,
    /// May push and delete, not only pull.
    pub push: bool,
}

/// A registry user as listed, and (once, when made) its password.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RegistryUserView {
    /// The user name.
    pub name: String,
    /// May push.
    pub push: bool,
    /// When it was made (RFC 3339).
    pub created: String,
    /// The password, only in the answer that made it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<String>,
}

/// A repository of the cluster's registry, as `gantry registry ls` shows
/// it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RepoView {
    /// Its name.
    pub name: String,
    /// Tag to manifest digest.
    pub tags: std::collections::BTreeMap<String, String>,
    /// How many manifests it holds.
    pub manifests: usize,
    /// The bytes of the blobs its manifests name (each counted once).
    pub size: u64,
    /// The newest push (RFC 3339).
    pub pushed: String,
}
