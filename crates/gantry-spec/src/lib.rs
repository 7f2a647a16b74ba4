//! The service spec: what a stack file's service means once parsed and
//! normalised, as one set of types from the stack file to the container.
//! The stack parser produces it, the store keeps it in its records and
//! commands, the API carries it, the manager reconciles it and the agent
//! runs it; nobody parses it twice. Pure: types, serde and small helpers.

pub mod template;

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use gantry_sched::Strategy;

/// CPU and memory amounts of a service.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Amounts {
    /// Billionths of a CPU.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nano_cpus: Option<u64>,
    /// Bytes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub memory: Option<u64>,
    /// Processes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pids: Option<u64>,
}

/// How a published port is reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PortMode {
    /// Every node forwards the port to a task anywhere.
    Ingress,
    /// Only the node running the task listens.
    Host,
}

/// A published port.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Port {
    /// Port in the container.
    pub target: u16,
    /// Port on the nodes (none: only reachable inside the cluster).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub published: Option<u16>,
    /// `tcp` or `udp`.
    pub protocol: String,
    /// Ingress or host.
    pub mode: PortMode,
    /// The node address it listens on (none: every address of the node).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_ip: Option<std::net::IpAddr>,
}

/// A mount of a service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mount {
    /// `volume`, `bind` or `tmpfs`.
    #[serde(rename = "type")]
    pub kind: MountType,
    /// Volume name or host path (empty for tmpfs).
    #[serde(skip_serializing_if = "String::is_empty", default)]
    pub source: String,
    /// Path in the container.
    pub target: String,
    /// Mounted read-only.
    #[serde(skip_serializing_if = "std::ops::Not::not", default)]
    pub read_only: bool,
    /// How a named volume is made (compose's top-level `volumes:` entry
    /// and the mount's `volume:` options).
    #[serde(default, skip_serializing_if = "VolumeOptions::is_default")]
    pub volume: VolumeOptions,
    /// Bind propagation: `rprivate` (the default), `private`, `rshared`,
    /// `shared`, `rslave` or `slave`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub propagation: Option<String>,
    /// A tmpfs mount's size limit, bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tmpfs_size: Option<u64>,
}

impl Mount {
    /// A mount of `kind` from `source` at `target`, read-write, with no
    /// other option.
    pub fn new(kind: MountType, source: impl Into<String>, target: impl Into<String>) -> Self {
        Self {
            kind,
            source: source.into(),
            target: target.into(),
            read_only: false,
            volume: VolumeOptions::default(),
            propagation: None,
            tmpfs_size: None,
        }
    }

    /// The node-side name of a volume mount of stack `stack`: the name
    /// the stack file gave (`name:`, or an external volume's), else
    /// `STACK_SOURCE`, as Swarm names them. Anonymous volumes (no source)
    /// are named per task by the agent.
    pub fn volume_name(&self, stack: &str) -> String {
        match &self.volume.name {
            Some(n) => n.clone(),
            None => format!("{stack}_{}", self.source),
        }
    }
}

/// How a named volume is made: Docker's `local` driver and its options.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeOptions {
    /// Its name on the nodes as the stack file gave it (`name:`, or
    /// `external`), used as is; none: `STACK_SOURCE`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// It exists already: it is never created, and a task goes only to a
    /// node that has it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub external: bool,
    /// The local driver's options: `type`, `o` and `device`, mounted as
    /// `mount -t TYPE -o O DEVICE` (NFS, CIFS, a bind of a host folder).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub driver_opts: BTreeMap<String, String>,
    /// The volume's labels.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// Not filled from the image's content at the mount point.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub nocopy: bool,
    /// Its scheduled backups (`x-gantry: {backup: ...}`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backup: Option<BackupPolicy>,
    /// Copies kept (`x-gantry: {replicas: 2}`): 2 keeps a standby on a
    /// second node, brought up to date every few seconds, where its
    /// service restarts when the volume's node dies. 0 or 1: none.
    #[serde(default, skip_serializing_if = "is_zero_u8")]
    pub replicas: u8,
}

fn is_zero_u8(n: &u8) -> bool {
    *n == 0
}

/// A volume's scheduled backups: when, where, with which key, and how
/// many are kept.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackupPolicy {
    /// When: cron, five fields (minute hour day month weekday) or six
    /// (seconds first), in UTC.
    pub schedule: String,
    /// The repository: `s3://BUCKET/PREFIX[?endpoint=URL&region=R]`, or a
    /// node's absolute folder (`file:///DIR`).
    pub to: String,
    /// The secret whose value encrypts the repository (its cluster name).
    pub key: String,
    /// A secret holding S3 settings as `AWS_ACCESS_KEY_ID=...` lines.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials: Option<String>,
    /// How many of the volume's snapshots the repository keeps (the
    /// newest; 0: all of them).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub keep: u64,
    /// A command run (`sh -c`) in each running task that mounts the
    /// volume before the backup; the tasks are not frozen then.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pre: Option<String>,
    /// A command run in each of them after it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub post: Option<String>,
    /// Leave the tasks running while the volume is read (by default they
    /// are frozen, without `pre`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub no_freeze: bool,
}

impl VolumeOptions {
    /// Whether nothing is set.
    pub fn is_default(&self) -> bool {
        *self == Self::default()
    }
}

/// What a mount mounts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MountType {
    /// A named volume of the stack.
    Volume,
    /// A path of the node.
    Bind,
    /// Memory.
    Tmpfs,
}

impl MountType {
    /// From its compose name.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "volume" => Some(Self::Volume),
            "bind" => Some(Self::Bind),
            "tmpfs" => Some(Self::Tmpfs),
            _ => None,
        }
    }
}

/// A health check; durations in nanoseconds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Healthcheck {
    /// `["CMD", ...]`, `["CMD-SHELL", "..."]` or `["NONE"]`.
    pub test: Vec<String>,
    /// Between checks.
    pub interval_ns: u64,
    /// For one check.
    pub timeout_ns: u64,
    /// Grace after start.
    pub start_period_ns: u64,
    /// Between checks during the grace (0: Gantry's own pace, at most 1 s,
    /// until the first success).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub start_interval_ns: u64,
    /// Failures before unhealthy.
    pub retries: u32,
}

/// When the orchestrator restarts a task.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RestartPolicy {
    /// `none`, `on-failure` or `any`.
    pub condition: String,
    /// Wait before restarting, nanoseconds.
    pub delay_ns: u64,
    /// 0: no limit.
    pub max_attempts: u32,
    /// Window in which attempts count, nanoseconds (0: unbounded).
    pub window_ns: u64,
}

/// How an update or a rollback proceeds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UpdateConfig {
    /// Tasks updated at once (0: all).
    pub parallelism: u32,
    /// Between batches, nanoseconds.
    pub delay_ns: u64,
    /// `stop-first` or `start-first`.
    pub order: String,
    /// `pause`, `continue` or `rollback`.
    pub failure_action: String,
    /// How long a new task is watched for failure, nanoseconds.
    pub monitor_ns: u64,
    /// Failures tolerated during an update.
    pub max_failure_ratio: f64,
}

/// Replicated or global.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// A number of replicas.
    Replicated {
        /// How many.
        replicas: u32,
    },
    /// One task per eligible node.
    Global,
}

/// A secret or a config as a file in a service's tasks (compose's long
/// syntax: `source`, `target`, `uid`, `gid`, `mode`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileRef {
    /// The secret's (or config's) name in the cluster.
    pub source: String,
    /// The file: a name under `/run/secrets` for a secret, an absolute
    /// path for a config (or a secret placed elsewhere).
    pub target: String,
    /// Its owner.
    #[serde(default)]
    pub uid: u32,
    /// Its group.
    #[serde(default)]
    pub gid: u32,
    /// Its permission bits (0444 unless given).
    #[serde(default = "read_only_mode")]
    pub mode: u32,
    /// The version of the secret's (or config's) value the service's
    /// tasks get: 0 as a stack file or the CLI gives it, which the manager
    /// pins to the newest when it stores the spec (as Swarm resolves a
    /// name to an id). A new value pins the new version in the specs of
    /// the services that use it, which rolls them; a rollback goes back to
    /// the version the previous spec pinned.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub version: u64,
}

fn read_only_mode() -> u32 {
    0o444
}

impl FileRef {
    /// Where a secret's file is in the container: `/run/secrets/SOURCE`
    /// unless a target is given, a relative target under `/run/secrets`.
    pub fn secret_path(&self) -> String {
        match self.target.as_str() {
            "" => format!("/run/secrets/{}", self.source),
            t if t.starts_with('/') => t.to_owned(),
            t => format!("/run/secrets/{t}"),
        }
    }

    /// Where a config's file is: `/SOURCE` unless a target is given, a
    /// relative target under `/`, as Docker's.
    pub fn config_path(&self) -> String {
        match self.target.as_str() {
            "" => format!("/{}", self.source),
            t if t.starts_with('/') => t.to_owned(),
            t => format!("/{t}"),
        }
    }
}

/// How other tasks reach a service by its name (compose's
/// `deploy.endpoint_mode`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EndpointMode {
    /// One virtual IP, which every connection to it turns into one of the
    /// running tasks' addresses (Swarm's default, and a stack file's).
    Vip,
    /// The name answers the running tasks' addresses, in turn (what a
    /// service stored before virtual IPs existed keeps).
    #[default]
    Dnsrr,
}

/// A service of a stack, normalised.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Service {
    /// Image reference.
    pub image: String,
    /// Replaces the image's Cmd.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub command: Option<Vec<String>>,
    /// Replaces the image's Entrypoint.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub entrypoint: Option<Vec<String>>,
    /// Environment (env_file first, then `environment`).
    pub environment: BTreeMap<String, String>,
    /// Container labels (routing labels live here).
    pub labels: BTreeMap<String, String>,
    /// Published ports.
    pub ports: Vec<Port>,
    /// Mounts.
    pub volumes: Vec<Mount>,
    /// Secrets its tasks see as files (on a tmpfs, under `/run/secrets`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub secrets: Vec<FileRef>,
    /// Configs its tasks see as files.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub configs: Vec<FileRef>,
    /// Health check.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub healthcheck: Option<Healthcheck>,
    /// Services that must start first.
    pub depends_on: Vec<String>,
    /// Networks it joins, by their names in the stack file.
    pub networks: Vec<String>,
    /// Networks of the cluster (`external` in the stack file), by their
    /// names in the file: they are the cluster's, shared with other
    /// stacks, not `STACK_NETWORK`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub network_names: BTreeMap<String, String>,
    /// Its networks that are `internal: true`, by their names in the file:
    /// a task on such networks only has no way out of the overlay.
    #[serde(default, skip_serializing_if = "std::collections::BTreeSet::is_empty")]
    pub internal_networks: std::collections::BTreeSet<String>,
    /// The stack's own networks given a `name:` in the stack file, by
    /// their names in the file: they are that network, created with the
    /// first stack that names it (as Compose does on one host), not
    /// `STACK_NETWORK`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub network_own_names: BTreeMap<String, String>,
    /// More DNS names of the service on some of its networks (compose's
    /// network `aliases`, and the names other services' `links` give it),
    /// by network name in the file: they answer, as the service's own name
    /// does, only the tasks on that network.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub network_aliases: BTreeMap<String, std::collections::BTreeSet<String>>,
    /// Replicated or global.
    pub mode: Mode,
    /// A virtual IP, or DNS round robin.
    #[serde(default)]
    pub endpoint_mode: EndpointMode,
    /// Limits per task.
    pub limits: Amounts,
    /// Reservations per task (used for placement).
    pub reservations: Amounts,
    /// Placement constraints.
    pub constraints: Vec<String>,
    /// Spread over these node labels.
    pub spread_over: Vec<String>,
    /// At most this many tasks on one node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_replicas_per_node: Option<u32>,
    /// Scoring strategy (`x-gantry: {strategy: binpack}` or the service
    /// label `gantry.strategy`); none: the cluster's default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub strategy: Option<Strategy>,
    /// Even out replicas when nodes join or return (`x-gantry: {rebalance: false}` turns it off).
    #[serde(default = "yes")]
    pub rebalance: bool,
    /// May reach the cloud's instance-metadata address, 169.254.169.254
    /// (`x-gantry: {metadata: true}`); refused by default, since it hands
    /// out the host's cloud credentials.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub metadata: bool,
    /// Restart policy.
    pub restart_policy: RestartPolicy,
    /// Rolling update.
    pub update_config: UpdateConfig,
    /// Rollback.
    pub rollback_config: UpdateConfig,
    /// Service labels (deploy.labels).
    pub service_labels: BTreeMap<String, String>,
    /// Container user.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// Working directory.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub working_dir: Option<String>,
    /// Hostname.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    /// Stop signal.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stop_signal: Option<String>,
    /// Stop grace period, nanoseconds.
    pub stop_grace_period_ns: u64,
    /// The container's root filesystem is read-only.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub read_only: bool,
    /// The log file's size before it rotates, bytes (logging max-size);
    /// none: the node's default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_max_size: Option<u64>,
    /// Log files kept (logging max-file); none: the node's default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_max_files: Option<u32>,
    /// Capabilities, seccomp, sysctls, ulimits and init.
    #[serde(default, skip_serializing_if = "Security::is_default")]
    pub security: Security,
    /// `/etc/hosts` entries and resolver settings.
    #[serde(default, skip_serializing_if = "Resolution::is_default")]
    pub resolution: Resolution,
}

/// How a service's containers are confined and started beyond Docker's
/// defaults (compose's cap_add, cap_drop, security_opt, sysctls, ulimits
/// and init).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Security {
    /// Capabilities added to Docker's default set (`NET_ADMIN` or
    /// `CAP_NET_ADMIN`; `ALL`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cap_add: Vec<String>,
    /// Capabilities removed from it (`ALL` removes every one).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cap_drop: Vec<String>,
    /// No seccomp filter (`security_opt: [seccomp=unconfined]`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub seccomp_unconfined: bool,
    /// Namespaced kernel parameters, written in the container's own
    /// namespaces before the program starts.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub sysctls: BTreeMap<String, String>,
    /// Resource limits by name (`nofile`, `nproc`, ...): soft and hard.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub ulimits: BTreeMap<String, (u64, u64)>,
    /// A small init runs as PID 1: it starts the program, passes signals
    /// on and reaps orphans.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub init: bool,
}

impl Security {
    /// Whether it keeps every default.
    pub fn is_default(&self) -> bool {
        *self == Self::default()
    }
}

/// Name resolution of a service's containers (compose's extra_hosts, dns,
/// dns_search, dns_opt).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Resolution {
    /// Extra `/etc/hosts` lines: host name and address.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub extra_hosts: Vec<(String, std::net::IpAddr)>,
    /// Name servers (after the node's service discovery on the overlay).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dns: Vec<std::net::IpAddr>,
    /// Search domains.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dns_search: Vec<String>,
    /// Resolver options.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dns_opt: Vec<String>,
}

impl Resolution {
    /// Whether it keeps every default.
    pub fn is_default(&self) -> bool {
        *self == Self::default()
    }
}

impl Default for RestartPolicy {
    /// Swarm's: restart on any exit after 5 s, without a limit.
    fn default() -> Self {
        Self {
            condition: "any".into(),
            delay_ns: 5_000_000_000,
            max_attempts: 0,
            window_ns: 0,
        }
    }
}

impl Default for UpdateConfig {
    /// Swarm's: one task at a time, stop first, pause on failure, each
    /// watched for 5 s.
    fn default() -> Self {
        Self {
            parallelism: 1,
            delay_ns: 0,
            order: "stop-first".into(),
            failure_action: "pause".into(),
            monitor_ns: 5_000_000_000,
            max_failure_ratio: 0.0,
        }
    }
}

impl Service {
    /// One replica of `image` with every other setting at the default a
    /// stack file gives a service that only names its image.
    pub fn new(image: impl Into<String>) -> Self {
        Self {
            image: image.into(),
            command: None,
            entrypoint: None,
            environment: BTreeMap::new(),
            labels: BTreeMap::new(),
            ports: Vec::new(),
            volumes: Vec::new(),
            secrets: Vec::new(),
            configs: Vec::new(),
            healthcheck: None,
            depends_on: Vec::new(),
            networks: vec!["default".into()],
            network_names: BTreeMap::new(),
            internal_networks: Default::default(),
            network_aliases: BTreeMap::new(),
            network_own_names: BTreeMap::new(),
            mode: Mode::Replicated { replicas: 1 },
            endpoint_mode: EndpointMode::Dnsrr,
            limits: Amounts::default(),
            reservations: Amounts::default(),
            constraints: Vec::new(),
            spread_over: Vec::new(),
            max_replicas_per_node: None,
            strategy: None,
            rebalance: true,
            metadata: false,
            restart_policy: RestartPolicy::default(),
            update_config: UpdateConfig::default(),
            rollback_config: UpdateConfig::default(),
            service_labels: BTreeMap::new(),
            user: None,
            working_dir: None,
            hostname: None,
            stop_signal: None,
            stop_grace_period_ns: 10_000_000_000,
            read_only: false,
            log_max_size: None,
            log_max_files: None,
            security: Security::default(),
            resolution: Resolution::default(),
        }
    }

    /// Whether tasks of `other` run the same containers as tasks of this
    /// one: a change of replicas, of the update and rollback settings or
    /// of the restart policy rolls no task.
    pub fn same_tasks(&self, other: &Service) -> bool {
        let containers = |s: &Service| {
            let mut s = s.clone();
            s.mode = Mode::Global;
            s.update_config = UpdateConfig::default();
            s.rollback_config = UpdateConfig::default();
            s.restart_policy = RestartPolicy::default();
            s
        };
        containers(self) == containers(other)
    }

    /// The cluster-wide name of network `n` of the service, in stack
    /// `stack`: the cluster network an external one names, else
    /// `STACK_N`.
    pub fn network_scope(&self, stack: &str, n: &str) -> String {
        match self.network_names.get(n).or(self.network_own_names.get(n)) {
            Some(name) => name.clone(),
            None => format!("{stack}_{n}"),
        }
    }

    /// Whether its tasks are on internal networks only.
    pub fn internal_only(&self) -> bool {
        !self.networks.is_empty()
            && self
                .networks
                .iter()
                .all(|n| self.internal_networks.contains(n))
    }

    /// Its replica count (none for a global service).
    pub fn replicas(&self) -> Option<u32> {
        match self.mode {
            Mode::Replicated { replicas } => Some(replicas),
            Mode::Global => None,
        }
    }
}

fn yes() -> bool {
    true
}

fn is_zero(v: &u64) -> bool {
    *v == 0
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Replicated { replicas } => write!(f, "replicated {replicas}"),
            Self::Global => write!(f, "global"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_spec_round_trips_through_json_as_nested_objects() {
        let mut s = Service::new("web:1");
        s.environment.insert("A".into(), "1".into());
        s.healthcheck = Some(Healthcheck {
            test: vec!["CMD".into(), "true".into()],
            interval_ns: 1,
            timeout_ns: 2,
            start_period_ns: 3,
            start_interval_ns: 0,
            retries: 4,
        });
        let v = serde_json::to_value(&s).unwrap();
        assert_eq!(v["mode"]["replicated"]["replicas"], 1);
        assert_eq!(v["environment"]["A"], "1");
        let back: Service = serde_json::from_value(v).unwrap();
        assert_eq!(back, s);
        assert_eq!(back.replicas(), Some(1));
    }

    #[test]
    fn scaling_or_update_settings_keep_the_tasks_an_image_or_env_changes_them() {
        let a = Service::new("web:1");
        let mut b = a.clone();
        b.mode = Mode::Replicated { replicas: 9 };
        b.update_config.parallelism = 4;
        b.restart_policy.max_attempts = 3;
        assert!(a.same_tasks(&b));
        let mut c = a.clone();
        c.environment.insert("X".into(), "1".into());
        assert!(!a.same_tasks(&c));
        assert!(!a.same_tasks(&Service::new("web:2")));
    }
}
