//! What a container is asked to be ([`ContainerConfig`]) and what it is now
//! ([`State`]). Both are stored as JSON in the container's directory so that
//! any later Gantry process (the CLI, the agent after a restart) can find and
//! manage containers it did not start.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::PathBuf;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::cgroup::Resources;
/// What a container may do, and how it resolves names: the service
/// spec's own types (one model from the stack file to the container).
pub use gantry_spec::{Resolution, Security};

impl ContainerConfig {
    /// A container with Docker's defaults for everything but what is given:
    /// bridge network, no restart, SIGTERM with 10 s grace, 10 MiB logs x 3.
    pub fn new(
        name: &str,
        image: &str,
        image_id: &str,
        layers: Vec<PathBuf>,
        process: Process,
    ) -> Self {
        let id = new_id();
        Self {
            hostname: id[..12].to_owned(),
            name: if name.is_empty() {
                format!("gantry_{}", &id[..8])
            } else {
                name.to_owned()
            },
            id,
            image: image.to_owned(),
            image_id: image_id.to_owned(),
            created: Utc::now(),
            layers,
            process,
            read_only: false,
            mounts: Vec::new(),
            resources: Resources::default(),
            network: NetworkMode::Bridge,
            ports: Vec::new(),
            restart: RestartPolicy::No,
            stop_signal: libc::SIGTERM,
            stop_timeout: 10,
            auto_remove: false,
            labels: BTreeMap::new(),
            log_max_size: 10 << 20,
            log_max_files: 3,
            security: Security::default(),
            resolution: Resolution::default(),
        }
    }
}

/// A fresh random 64-hex-digit container id.
pub fn new_id() -> String {
    use rand::RngCore;
    let mut b = [0u8; 32];
    rand::rng().fill_bytes(&mut b);
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Everything needed to (re)start a container, fixed at creation.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ContainerConfig {
    /// 64 hex digits.
    pub id: String,
    /// Unique human name.
    pub name: String,
    /// The image reference the user gave.
    pub image: String,
    /// The image's id (config digest).
    pub image_id: String,
    /// When the container was created.
    pub created: DateTime<Utc>,
    /// Unpacked image layers, topmost first (overlayfs `lowerdir` order).
    pub layers: Vec<PathBuf>,
    /// The process to run.
    pub process: Process,
    /// Hostname inside the container (defaults to the short id).
    pub hostname: String,
    /// Mount the root filesystem read-only.
    #[serde(default)]
    pub read_only: bool,
    /// Bind mounts, volumes and tmpfs mounts.
    #[serde(default)]
    pub mounts: Vec<Mount>,
    /// Cgroup limits.
    #[serde(default)]
    pub resources: Resources,
    /// Network namespace setup.
    #[serde(default)]
    pub network: NetworkMode,
    /// Ports published on the host (only with the bridge network).
    #[serde(default)]
    pub ports: Vec<PortMapping>,
    /// What to do when the process exits.
    #[serde(default)]
    pub restart: RestartPolicy,
    /// Signal that `stop` sends first (number).
    pub stop_signal: i32,
    /// Seconds `stop` waits before SIGKILL.
    pub stop_timeout: u64,
    /// Remove the container when it exits (`--rm`).
    #[serde(default)]
    pub auto_remove: bool,
    /// Free-form labels.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Rotate the log file when it reaches this many bytes.
    pub log_max_size: u64,
    /// Rotated log files kept besides the current one.
    pub log_max_files: u32,
    /// Capabilities, seccomp, sysctls, limits and the init beyond
    /// Docker's defaults.
    #[serde(default, skip_serializing_if = "Security::is_default")]
    pub security: Security,
    /// Name resolution beyond the defaults: `/etc/hosts` entries and
    /// `/etc/resolv.conf` servers, search domains and options.
    #[serde(default, skip_serializing_if = "Resolution::is_default")]
    pub resolution: Resolution,
}

/// The process a container runs.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Process {
    /// argv; `args[0]` is looked up in the container's `PATH`.
    pub args: Vec<String>,
    /// `KEY=value` pairs.
    pub env: Vec<String>,
    /// Working directory inside the container (created if missing).
    pub cwd: String,
    /// `user`, `uid`, `user:group` or `uid:gid`, resolved inside the container.
    pub user: String,
    /// Give the process a pseudo-terminal.
    #[serde(default)]
    pub tty: bool,
    /// Keep stdin open (`-i`).
    #[serde(default)]
    pub stdin: bool,
}

/// One mount inside the container.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mount {
    /// What kind of mount.
    pub kind: MountKind,
    /// Host path (bind, volume's data dir); unused for tmpfs.
    pub source: PathBuf,
    /// Path inside the container.
    pub destination: String,
    /// Mount read-only.
    pub read_only: bool,
    /// Options beyond Docker's `-v`: propagation, tmpfs size, nocopy.
    #[serde(default, skip_serializing_if = "MountOptions::is_default")]
    pub options: MountOptions,
}

/// What a mount may say beyond its source, destination and access.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MountOptions {
    /// A bind's propagation (`rprivate`, `shared`, `rslave`, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub propagation: Option<String>,
    /// A tmpfs's size, bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tmpfs_size: Option<u64>,
    /// A new volume is not filled from the image.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub nocopy: bool,
}

impl MountOptions {
    /// Whether nothing is set.
    pub fn is_default(&self) -> bool {
        *self == Self::default()
    }
}

/// The kinds of mount `-v` and `--tmpfs` make.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MountKind {
    /// A host path.
    Bind,
    /// A named volume; `name` is kept for `inspect` and in-use checks.
    Volume {
        /// The volume's name.
        name: String,
    },
    /// A tmpfs.
    Tmpfs,
}

/// How the container's network namespace is set up.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NetworkMode {
    /// Its own namespace with only loopback.
    None,
    /// Its own namespace with a veth onto the host bridge `gantry0`.
    #[default]
    Bridge,
    /// The host's namespace.
    Host,
    /// Its own namespace with a veth onto a node's overlay bridge and an
    /// address the cluster manager gave (a task of a service).
    Overlay(OverlayAddr),
}

/// A task's place on the cluster overlay.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OverlayAddr {
    /// The bridge to join (the node's, holding the gateway).
    pub bridge: String,
    /// The task's address.
    pub ip: std::net::Ipv4Addr,
    /// The block's prefix length.
    pub prefix: u8,
    /// The node's gateway.
    pub gateway: std::net::Ipv4Addr,
    /// The overlay's MTU (the underlay's minus the VXLAN overhead).
    pub mtu: u32,
}

impl NetworkMode {
    /// Whether the container has a veth on a host bridge (bridge or
    /// overlay), where published ports can reach it.
    pub fn has_veth(&self) -> bool {
        matches!(self, Self::Bridge | Self::Overlay(_))
    }
}

/// A published port: traffic to `host_port` on the host reaches
/// `container_port` in the container.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortMapping {
    /// The host address it listens on (none: every address).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_ip: Option<std::net::IpAddr>,
    /// Port on the host.
    pub host_port: u16,
    /// Port in the container.
    pub container_port: u16,
}

/// Docker's restart policies.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RestartPolicy {
    /// Never restart.
    #[default]
    No,
    /// Restart after a non-zero exit, at most `max` times (0: no limit).
    OnFailure {
        /// Retry limit, 0 for none.
        max: u32,
    },
    /// Restart whatever the exit status, until stopped.
    Always,
}

impl RestartPolicy {
    /// Parses `no`, `always`, `on-failure` or `on-failure:N`.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "no" => Some(Self::No),
            "always" | "unless-stopped" => Some(Self::Always),
            "on-failure" => Some(Self::OnFailure { max: 0 }),
            _ => {
                let n = s.strip_prefix("on-failure:")?;
                Some(Self::OnFailure {
                    max: n.parse().ok()?,
                })
            }
        }
    }

    /// Whether a process that exited with `code` after `restarts` earlier
    /// restarts should be started again.
    pub fn should_restart(&self, code: i32, restarts: u32) -> bool {
        match *self {
            Self::No => false,
            Self::Always => true,
            Self::OnFailure { max } => code != 0 && (max == 0 || restarts < max),
        }
    }
}

/// A container's lifecycle status, as `ps` shows it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Made but never started.
    #[default]
    Created,
    /// The process is running.
    Running,
    /// Waiting to be started again by its restart policy.
    Restarting,
    /// The process ended.
    Exited,
}

/// What a container is doing now; written by its monitor, read by everyone.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct State {
    /// Lifecycle status.
    pub status: Status,
    /// The container's init process, in the host's pid namespace.
    pub pid: Option<i32>,
    /// The init process's start time (clock ticks since boot) to tell it from
    /// a later process that reuses the pid.
    pub pid_start: Option<u64>,
    /// The monitor process that owns the container.
    pub monitor_pid: Option<i32>,
    /// Exit status, Docker-style (128+signal for a signal).
    pub exit_code: Option<i32>,
    /// The kernel's OOM killer ended the process.
    #[serde(default)]
    pub oom_killed: bool,
    /// When the process last started.
    pub started_at: Option<DateTime<Utc>>,
    /// When the process last ended.
    pub finished_at: Option<DateTime<Utc>>,
    /// How many times the restart policy restarted it.
    #[serde(default)]
    pub restart_count: u32,
    /// `stop`/`kill`/`rm` asked it to end: the restart policy must not restart it.
    #[serde(default)]
    pub stop_requested: bool,
    /// The last start error.
    pub error: Option<String>,
    /// The address on the host bridge, when it has one.
    pub ip: Option<Ipv4Addr>,
}
