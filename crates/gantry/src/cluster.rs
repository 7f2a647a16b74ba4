//! The cluster verbs: `server`, `agent`, `join-token`, `deploy` and
//! `stack`, `service`, `node`, `events`. The processes are in
//! gantry-server and gantry-agent; the rest are calls to the manager's API
//! with the admin credential, printed as tables or JSON.

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Subcommand};

use gantry_api::{
    AdminConfig, Client, DeployRequest, DeployResponse, Event, JoinTokenView, NodeUpdate, NodeView,
    ServiceUpdate, ServiceView, StackView, TaskRecord, TaskState, UpdateStatus,
};
use gantry_sched::Availability;

use crate::output::{self, Format};
use crate::Ctx;

#[derive(Args)]
pub(crate) struct ServerArgs {
    /// Where the API listens.
    #[arg(long, default_value = "0.0.0.0:4243")]
    listen: SocketAddr,
    /// The address nodes and the CLI reach this manager at.
    #[arg(long)]
    advertise: Option<String>,
    /// Also run an agent in this process: a one-host cluster.
    #[arg(long)]
    dev: bool,
    /// A node is down after this long without a heartbeat.
    #[arg(long, default_value = "3s")]
    heartbeat_grace: String,
    /// How services that name no strategy are placed: spread or binpack.
    #[arg(long, default_value = "spread", value_parser = ["spread", "binpack"])]
    default_strategy: String,
    /// The overlay's address range (default 10.32.0.0/12); fixed once
    /// nodes have joined.
    #[arg(long)]
    cluster_cidr: Option<String>,
    /// The size of each node's block of it, as a prefix length.
    #[arg(long, default_value_t = 24)]
    block_prefix: u8,
    /// The overlay's VXLAN network id.
    #[arg(long, default_value_t = gantry_server::DEFAULT_VNI)]
    vni: u32,
    /// Nodes on one subnet send each other's overlay traffic straight over
    /// the underlay, without VXLAN (flannel's DirectRouting): faster, but
    /// the network between them must carry overlay addresses (cloud
    /// networks with source/destination checks drop them). Nodes on other
    /// subnets still use VXLAN.
    #[arg(long)]
    direct_routing: bool,
    /// Let routes sent to docker-flow-proxy's API take hosts and paths
    /// that services' labels route (refused by default: any node's DFP
    /// API could otherwise take a site's traffic).
    #[arg(long)]
    dfp_override_labels: bool,
    /// With --dev: labels of this node.
    #[arg(long = "label", value_name = "KEY=VALUE")]
    label: Vec<String>,
    /// The ACME directory certificates for public names come from.
    #[arg(long, value_name = "URL", default_value = gantry_server::LETS_ENCRYPT)]
    acme_directory: String,
    /// The ACME account's contact e-mail.
    #[arg(long, value_name = "EMAIL")]
    acme_email: Option<String>,
    /// A root CA (PEM) to trust for a private ACME directory's HTTPS.
    #[arg(long, value_name = "FILE")]
    acme_ca_root: Option<PathBuf>,
    /// Order no certificates over ACME (internal names still get the edge
    /// CA's, and `gantry cert add` still works).
    #[arg(long)]
    no_acme: bool,
    /// Where the cluster's Prometheus metrics are served (`/metrics`):
    /// every node's and task's figures, and the manager's own.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:9324")]
    manager_metrics: SocketAddr,
    #[command(flatten)]
    edge: EdgeArgs,
    #[command(flatten)]
    logs: LogArgs,
}

/// The node's edge proxy.
#[derive(Args, Clone)]
pub(crate) struct EdgeArgs {
    /// The edge proxy's HTTP listener.
    #[arg(long = "http", value_name = "ADDR", default_value = "0.0.0.0:80")]
    http: SocketAddr,
    /// The edge proxy's HTTPS listener.
    #[arg(long = "https", value_name = "ADDR", default_value = "0.0.0.0:443")]
    https: SocketAddr,
    /// The docker-flow-proxy API (reconfigure, remove, ...); loopback by
    /// default, as anyone who reaches it can change the routes.
    #[arg(long = "dfp", value_name = "ADDR", default_value = "127.0.0.1:8080")]
    dfp: SocketAddr,
    /// Requests to the DFP API must carry `Authorization: Bearer TOKEN`
    /// (moved out of the command line at start, as `--token`).
    #[arg(
        long,
        value_name = "TOKEN",
        env = "GANTRY_DFP_TOKEN",
        hide_env_values = true
    )]
    dfp_token: Option<String>,
    /// An address (a load balancer in front) whose connections start with
    /// a PROXY protocol header; repeat for several.
    #[arg(long = "trusted-proxy", value_name = "IP")]
    trusted_proxy: Vec<std::net::IpAddr>,
    /// Run no edge proxy (and no DFP API) on this node.
    #[arg(long)]
    no_proxy: bool,
    /// Where the node's Prometheus metrics are served (`/metrics`);
    /// loopback by default, `0.0.0.0:9323` for a Prometheus elsewhere.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:9323")]
    metrics: SocketAddr,
}

/// How long the node keeps ended tasks' logs.
#[derive(Args, Clone)]
pub(crate) struct LogArgs {
    /// Logs of tasks that ended longer ago are removed (e.g. 168h).
    #[arg(long, value_name = "DURATION", default_value = "168h")]
    log_max_age: String,
    /// The oldest ended tasks' logs are removed while all of them are
    /// bigger (e.g. 1GB).
    #[arg(long, value_name = "SIZE", default_value = "1GB")]
    log_max_size: String,
}

impl LogArgs {
    fn retention(&self) -> anyhow::Result<gantry_agent::Retention> {
        Ok(gantry_agent::Retention {
            max_age: duration(&self.log_max_age, "--log-max-age")?,
            max_size: crate::parse::size(&self.log_max_size)
                .map_err(|e| anyhow::anyhow!("--log-max-size: {e}"))?,
        })
    }
}

impl EdgeArgs {
    fn config(&self) -> Option<gantry_agent::EdgeConfig> {
        (!self.no_proxy).then(|| gantry_agent::EdgeConfig {
            http: Some(self.http),
            https: Some(self.https),
            dfp: Some(self.dfp),
            dfp_token: self.dfp_token.clone(),
            trusted_proxies: self.trusted_proxy.clone(),
        })
    }
}

#[derive(Args)]
pub(crate) struct AgentArgs {
    /// The manager (HOST[:PORT]); needed to join, remembered after.
    #[arg(long, env = "GANTRY_MANAGER")]
    manager: Option<String>,
    /// The join token (from `gantry join-token` on the manager). Given
    /// here, the agent moves it out of its command line at once (`ps` shows
    /// every user the command line); `--token-file` or the environment
    /// never put it there.
    #[arg(long, env = "GANTRY_JOIN_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// A file holding the join token.
    #[arg(long, value_name = "FILE", conflicts_with = "token")]
    token_file: Option<PathBuf>,
    /// The address other nodes reach this one at.
    #[arg(long)]
    advertise: Option<String>,
    /// Node labels.
    #[arg(long = "label", value_name = "KEY=VALUE")]
    label: Vec<String>,
    /// The host name to register (default: the system's).
    #[arg(long)]
    hostname: Option<String>,
    /// Between heartbeats.
    #[arg(long, default_value = "1s")]
    heartbeat: String,
    /// Remove everything the agent made on this host (task containers, the
    /// overlay's devices and routes) and exit.
    #[arg(long)]
    cleanup: bool,
    /// Route all overlay traffic through the host's bridge, IP forwarding
    /// and nftables, without the BPF fast path between tasks.
    #[arg(long)]
    no_fast_path: bool,
    #[command(flatten)]
    edge: EdgeArgs,
    #[command(flatten)]
    logs: LogArgs,
}

#[derive(Args)]
pub(crate) struct DeployArgs {
    /// The stack file.
    #[arg(short = 'f', long = "file", alias = "compose-file", short_alias = 'c')]
    file: PathBuf,
    /// Variables for interpolation (default: .env beside the file, if any).
    #[arg(long = "env-file")]
    env_file: Option<PathBuf>,
    /// Remove services the file no longer has.
    #[arg(long)]
    prune: bool,
    /// Return at once instead of following the rollout.
    #[arg(short, long)]
    detach: bool,
    /// The stack's name.
    stack: String,
}

#[derive(Subcommand)]
pub(crate) enum ServiceCmd {
    /// List services.
    Ls {
        /// Output format.
        #[arg(long, value_enum, default_value_t)]
        format: Format,
    },
    /// Every replica's output from every node, merged in time order.
    Logs(crate::logs::LogsArgs),
    /// List a service's tasks.
    Ps {
        /// The service.
        service: String,
        /// Output format.
        #[arg(long, value_enum, default_value_t)]
        format: Format,
        /// Only tasks that should be running.
        #[arg(long)]
        no_history: bool,
    },
    /// Show services as JSON.
    Inspect {
        /// Services.
        #[arg(required = true)]
        services: Vec<String>,
    },
    /// Set replica counts: SERVICE=N ...
    Scale {
        /// SERVICE=REPLICAS pairs.
        #[arg(required = true)]
        pairs: Vec<String>,
        /// Return at once.
        #[arg(short, long)]
        detach: bool,
    },
    /// Change a service (rolled out per its update_config).
    Update(Box<UpdateArgs>),
    /// Go back to the previous version.
    Rollback {
        /// The service.
        service: String,
        /// Return at once.
        #[arg(short, long)]
        detach: bool,
    },
    /// Remove services.
    Rm {
        /// Services.
        #[arg(required = true)]
        services: Vec<String>,
    },
}

#[derive(Args)]
pub(crate) struct UpdateArgs {
    /// New image.
    #[arg(long)]
    image: Option<String>,
    /// Add or change environment variables.
    #[arg(long = "env-add", value_name = "KEY=VALUE")]
    env_add: Vec<String>,
    /// Remove environment variables.
    #[arg(long = "env-rm", value_name = "KEY")]
    env_rm: Vec<String>,
    /// Add or change container labels.
    #[arg(long = "container-label-add", value_name = "KEY=VALUE")]
    label_add: Vec<String>,
    /// Remove container labels.
    #[arg(long = "container-label-rm", value_name = "KEY")]
    label_rm: Vec<String>,
    /// Replica count.
    #[arg(long)]
    replicas: Option<u32>,
    /// Return at once.
    #[arg(short, long)]
    detach: bool,
    /// The service.
    service: String,
}

#[derive(Subcommand)]
pub(crate) enum NodeCmd {
    /// List nodes.
    Ls {
        /// Output format.
        #[arg(long, value_enum, default_value_t)]
        format: Format,
    },
    /// Show nodes as JSON.
    Inspect {
        /// Nodes (id, id prefix or hostname).
        #[arg(required = true)]
        nodes: Vec<String>,
    },
    /// Change a node's availability or labels.
    Update {
        /// active, pause or drain.
        #[arg(long)]
        availability: Option<String>,
        /// Add or change labels.
        #[arg(long = "label-add", value_name = "KEY=VALUE")]
        label_add: Vec<String>,
        /// Remove labels.
        #[arg(long = "label-rm", value_name = "KEY")]
        label_rm: Vec<String>,
        /// The node.
        node: String,
    },
    /// Move every task off a node and take no new ones; waits until it is empty.
    Drain {
        /// Return at once.
        #[arg(short, long)]
        detach: bool,
        /// The node.
        node: String,
    },
    /// Let a node take tasks again.
    Activate {
        /// The node.
        node: String,
    },
    /// Remove a node that is down.
    Rm {
        /// Remove it even if it is up (its tasks are forgotten).
        #[arg(short, long)]
        force: bool,
        /// Nodes.
        #[arg(required = true)]
        nodes: Vec<String>,
    },
}

#[derive(Subcommand)]
pub(crate) enum ClusterStackCmd {
    /// Deploy or update a stack (same as `gantry deploy`).
    Deploy(DeployArgs),
    /// List stacks.
    Ls {
        /// Output format.
        #[arg(long, value_enum, default_value_t)]
        format: Format,
    },
    /// List a stack's tasks.
    Ps {
        /// The stack.
        stack: String,
        /// Output format.
        #[arg(long, value_enum, default_value_t)]
        format: Format,
        /// Only tasks that should be running.
        #[arg(long)]
        no_history: bool,
    },
    /// Remove stacks.
    Rm {
        /// Stacks.
        #[arg(required = true)]
        stacks: Vec<String>,
    },
}

#[derive(Args)]
pub(crate) struct EventsArgs {
    /// Only events matching KEY=VALUE (type, id, service, node, action).
    #[arg(short, long, value_name = "KEY=VALUE")]
    filter: Vec<String>,
    /// Replay kept events from this long ago (10m) or this time (RFC 3339).
    #[arg(long)]
    since: Option<String>,
    /// Stop after the replay instead of following.
    #[arg(long)]
    no_follow: bool,
    /// Output: lines, or one JSON object a line.
    #[arg(long, value_enum, default_value_t)]
    format: Format,
}

fn kv(s: &str) -> anyhow::Result<(String, String)> {
    let (k, v) = s
        .split_once('=')
        .with_context(|| format!("{s:?} is not KEY=VALUE"))?;
    anyhow::ensure!(!k.is_empty(), "{s:?} has an empty key");
    Ok((k.to_owned(), v.to_owned()))
}

fn duration(s: &str, what: &str) -> anyhow::Result<Duration> {
    gantry_units::duration_ns(s)
        .map(Duration::from_nanos)
        .map_err(|e| anyhow::anyhow!("{what}: {e}"))
}

fn multi_thread<F: std::future::Future>(f: F) -> anyhow::Result<F::Output> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    Ok(rt.block_on(f))
}

fn helper_binary() -> anyhow::Result<PathBuf> {
    std::env::current_exe().context("find the gantry binary for the runtime helper")
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}

pub(crate) fn server(ctx: &Ctx, a: ServerArgs) -> anyhow::Result<u8> {
    let grace = duration(&a.heartbeat_grace, "--heartbeat-grace")?;
    let labels = a
        .label
        .iter()
        .map(|l| kv(l))
        .collect::<anyhow::Result<BTreeMap<_, _>>>()?;
    let cfg = gantry_server::ServerConfig {
        data_dir: ctx.data_dir.clone(),
        listen: a.listen,
        advertise: a.advertise.clone().unwrap_or_default(),
        grace,
        config_dir: ctx.config_dir.clone(),
        network: match &a.cluster_cidr {
            Some(c) => Some(gantry_ipam::Plan::new(c.parse()?, a.block_prefix)?),
            None if a.block_prefix != 24 => Some(gantry_ipam::Plan::new(
                gantry_ipam::Plan::default_plan().cidr,
                a.block_prefix,
            )?),
            None => None,
        },
        vni: a.vni,
        direct_routing: a.direct_routing,
        dfp_override_labels: a.dfp_override_labels,
        acme: gantry_server::AcmeConfig {
            directory: (!a.no_acme).then(|| a.acme_directory.clone()),
            email: a.acme_email.clone(),
            ca_root: a.acme_ca_root.clone(),
        },
        metrics: Some(a.manager_metrics),
        default_strategy: if a.default_strategy == "binpack" {
            gantry_sched::Strategy::Binpack
        } else {
            gantry_sched::Strategy::Spread
        },
    };
    let helper = helper_binary()?;
    let registry = ctx.registry.clone();
    let data_dir = ctx.data_dir.clone();
    multi_thread(async move {
        let m = gantry_server::Manager::start(cfg).await?;
        eprintln!(
            "Manager listening on {}; admin credential in {}",
            m.addr(),
            gantry_api::AdminConfig::path_in(&ctx.config_dir).display()
        );
        if a.dev {
            let acfg = gantry_agent::AgentConfig {
                data_dir,
                manager: Some(format!("127.0.0.1:{}", m.addr().port())),
                token: None,
                advertise: a.advertise.clone(),
                labels,
                hostname: None,
                heartbeat: Duration::from_secs(1),
                helper,
                registry,
                edge: a.edge.config(),
                metrics: Some(a.edge.metrics),
                log_retention: a.logs.retention()?,
                fast_path: true,
            };
            let info = gantry_agent::node_info(&acfg, acfg.manager.as_deref().unwrap_or_default());
            let (node_id, cred) = m.local_node(&info)?;
            let id = gantry_agent::Identity {
                node_id: node_id.clone(),
                manager: acfg.manager.clone().unwrap_or_default(),
                ca_pem: m.ca_pem(),
                cert_pem: cred.cert_pem,
                key_pem: cred.key_pem,
            };
            eprintln!("This host is node {node_id} of its own cluster (--dev)");
            tokio::spawn(async move {
                if let Err(e) = gantry_agent::run(acfg, id).await {
                    tracing::error!("agent: {e}");
                }
            });
        }
        shutdown_signal().await;
        m.stop();
        Ok::<_, anyhow::Error>(())
    })??;
    Ok(0)
}

/// Flags whose values are secrets, and the variables that carry them
/// instead.
const SECRET_FLAGS: [(&str, &str); 2] = [
    ("--token", "GANTRY_JOIN_TOKEN"),
    ("--dfp-token", "GANTRY_DFP_TOKEN"),
];

/// When a secret is on the command line, starts this program again at
/// once with it in the environment instead: `/proc/PID/cmdline` is
/// readable by every user of the host, `/proc/PID/environ` by root only.
/// Returns only when there is nothing to hide (or the exec failed).
fn hide_secrets_from_argv() -> anyhow::Result<()> {
    use std::os::unix::process::CommandExt;
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    let mut kept = Vec::with_capacity(args.len());
    let mut moved = Vec::new();
    let mut it = args.iter().skip(1);
    while let Some(a) = it.next() {
        let s = a.to_string_lossy();
        let hit = SECRET_FLAGS.iter().find_map(|(flag, var)| {
            if s == *flag {
                Some((*var, it.next().cloned().unwrap_or_default()))
            } else {
                s.strip_prefix(flag)
                    .and_then(|r| r.strip_prefix('='))
                    .map(|v| (*var, v.into()))
            }
        });
        match hit {
            Some(m) => moved.push(m),
            None => kept.push(a.clone()),
        }
    }
    if moved.is_empty() {
        return Ok(());
    }
    let e = std::process::Command::new("/proc/self/exe")
        .arg0(&args[0])
        .args(kept)
        .envs(moved)
        .exec();
    Err(anyhow::anyhow!("restart without secrets in argv: {e}"))
}

pub(crate) fn agent(ctx: &Ctx, a: AgentArgs) -> anyhow::Result<u8> {
    hide_secrets_from_argv()?;
    let token = match &a.token_file {
        Some(f) => Some(
            std::fs::read_to_string(f)
                .with_context(|| format!("read the join token from {}", f.display()))?
                .trim()
                .to_owned(),
        ),
        None => a.token.clone(),
    };
    // Nothing this process starts (helpers, monitors) needs them.
    for (_, var) in SECRET_FLAGS {
        std::env::remove_var(var);
    }
    if a.cleanup {
        // Before any thread exists: removing containers may wait on them.
        let n = gantry_agent::cleanup(&ctx.data_dir)?;
        println!("Removed {n} task container(s) and the overlay's devices");
        return Ok(0);
    }
    let labels = a
        .label
        .iter()
        .map(|l| kv(l))
        .collect::<anyhow::Result<BTreeMap<_, _>>>()?;
    let cfg = gantry_agent::AgentConfig {
        data_dir: ctx.data_dir.clone(),
        manager: a.manager.clone(),
        token,
        advertise: a.advertise.clone(),
        labels,
        hostname: a.hostname.clone(),
        heartbeat: duration(&a.heartbeat, "--heartbeat")?,
        helper: helper_binary()?,
        registry: ctx.registry.clone(),
        edge: a.edge.config(),
        metrics: Some(a.edge.metrics),
        log_retention: a.logs.retention()?,
        fast_path: !a.no_fast_path,
    };
    multi_thread(async move {
        let id = gantry_agent::identity(&cfg).await?;
        eprintln!("Node {} of the cluster at {}", id.node_id, id.manager);
        tokio::select! {
            r = gantry_agent::run(cfg, id) => r?,
            _ = shutdown_signal() => {}
        }
        Ok::<_, anyhow::Error>(())
    })??;
    Ok(0)
}

/// A client of the manager with the admin credential.
pub(crate) fn client(ctx: &Ctx) -> anyhow::Result<Client> {
    let cfg = AdminConfig::load(&ctx.config_dir).map_err(|e| anyhow::anyhow!(e))?;
    Ok(Client::admin(&cfg, ctx.host.as_deref())?)
}

fn call<T>(
    f: impl std::future::Future<Output = Result<T, gantry_api::ApiError>>,
) -> anyhow::Result<T> {
    Ok(crate::images::block_on(f)??)
}

pub(crate) fn join_token(ctx: &Ctx, rotate: bool, quiet: bool) -> anyhow::Result<u8> {
    let c = client(ctx)?;
    let v: JoinTokenView = if rotate {
        call(c.post("/v1/join-token/rotate", &()))?
    } else {
        call(c.get("/v1/join-token"))?
    };
    if quiet {
        println!("{}", v.token);
    } else {
        if rotate {
            println!("Join token rotated; the old one no longer joins new nodes.\n");
        }
        println!(
            "To add a node to this cluster, run on it:\n\n    gantry agent --manager {} --token {}\n",
            v.manager, v.token
        );
    }
    Ok(0)
}

/// A service by its full name (`STACK_SERVICE`), or by its short name when
/// only one stack has it.
fn service_name(c: &Client, name: &str) -> anyhow::Result<String> {
    let all: Vec<ServiceView> = call(c.get("/v1/services"))?;
    if all.iter().any(|s| s.record.name == name) {
        return Ok(name.to_owned());
    }
    let suffix = format!("_{name}");
    let hits: Vec<&ServiceView> = all
        .iter()
        .filter(|s| s.record.name.ends_with(&suffix))
        .collect();
    match hits.as_slice() {
        [one] => Ok(one.record.name.clone()),
        [] => anyhow::bail!("no such service: {name}"),
        _ => anyhow::bail!("service {name:?} is in several stacks: use STACK_{name}"),
    }
}

pub(crate) fn deploy(ctx: &Ctx, a: DeployArgs) -> anyhow::Result<u8> {
    let stack = crate::stacks::load(&a.file, a.env_file.as_deref())?;
    gantry_stack::check::deploy(
        &a.stack,
        stack.services.iter().map(|(n, s)| (n.as_str(), s)),
    )
    .map_err(|e| anyhow::anyhow!(e))?;
    let c = client(ctx)?;
    let services = stack
        .services
        .iter()
        .map(|(k, v)| Ok((k.clone(), serde_json::to_string(v)?)))
        .collect::<anyhow::Result<BTreeMap<_, _>>>()?;
    let r: DeployResponse = call(c.post(
        &format!("/v1/stacks/{}", a.stack),
        &DeployRequest {
            services,
            prune: a.prune,
        },
    ))?;
    for s in &r.created {
        println!("Creating service {s}");
    }
    for s in &r.updated {
        println!("Updating service {s}");
    }
    for s in &r.removed {
        println!("Removing service {s}");
    }
    if !r.unchanged.is_empty() && r.created.is_empty() && r.updated.is_empty() {
        println!("Stack {} is up to date", a.stack);
    }
    if a.detach {
        return Ok(0);
    }
    let watch: Vec<String> = r.created.iter().chain(&r.updated).cloned().collect();
    converge(&c, &watch)
}

/// Follows services until they run as wanted or their rollout ends badly.
fn converge(c: &Client, names: &[String]) -> anyhow::Result<u8> {
    if names.is_empty() {
        return Ok(0);
    }
    let tty = std::io::stdout().is_terminal();
    let mut last: BTreeMap<String, String> = BTreeMap::new();
    loop {
        let all: Vec<ServiceView> = call(c.get("/v1/services"))?;
        let mut done = true;
        let mut failed = false;
        for n in names {
            let Some(s) = all.iter().find(|s| &s.record.name == n) else {
                continue;
            };
            let (line, finished, bad) = match &s.record.update {
                UpdateStatus::Paused { reason } => (format!("update paused: {reason}"), true, true),
                UpdateStatus::RolledBack { reason } => (
                    format!("rolled back: {reason}"),
                    s.running == s.desired,
                    true,
                ),
                UpdateStatus::RollingBack { reason, .. } => (
                    format!(
                        "rolling back ({reason}): {}/{} running",
                        s.running, s.desired
                    ),
                    false,
                    true,
                ),
                UpdateStatus::Updating { .. } => (
                    format!("updating: {}/{} running", s.running, s.desired),
                    false,
                    false,
                ),
                UpdateStatus::Completed => (
                    format!("{}/{} running", s.running, s.desired),
                    s.running == s.desired,
                    false,
                ),
            };
            done &= finished;
            failed |= bad && finished;
            // On a terminal every change; otherwise only where it ended.
            if tty && last.get(n) != Some(&line) {
                println!("{n}: {line}");
            }
            last.insert(n.clone(), line);
        }
        if done {
            if !tty {
                for (n, line) in &last {
                    println!("{n}: {line}");
                }
            }
            return Ok(u8::from(failed));
        }
        std::thread::sleep(Duration::from_millis(300));
    }
}

fn hostnames(c: &Client) -> anyhow::Result<BTreeMap<String, String>> {
    let nodes: Vec<NodeView> = call(c.get("/v1/nodes"))?;
    Ok(nodes
        .into_iter()
        .map(|n| (n.record.id, n.record.hostname))
        .collect())
}

fn state_name<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_value(v)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default()
}

fn capitalised(s: &str) -> String {
    let mut c = s.chars();
    c.next()
        .map(|f| f.to_uppercase().collect::<String>() + c.as_str())
        .unwrap_or_default()
}

fn print_tasks(
    c: &Client,
    tasks: Vec<TaskRecord>,
    format: Format,
    no_history: bool,
) -> anyhow::Result<u8> {
    let tasks: Vec<TaskRecord> = tasks
        .into_iter()
        .filter(|t| !no_history || t.desired == TaskState::Running)
        .collect();
    if format == Format::Json {
        output::json(&tasks)?;
        return Ok(0);
    }
    let hosts = hostnames(c)?;
    let services: Vec<ServiceView> = call(c.get("/v1/services"))?;
    let image = |t: &TaskRecord| {
        services
            .iter()
            .find(|s| s.record.name == t.service)
            .map(|s| {
                if s.record.version == t.version {
                    s.image.clone()
                } else {
                    s.record
                        .previous
                        .as_ref()
                        .and_then(|(_, spec)| serde_json::from_str::<serde_json::Value>(spec).ok())
                        .and_then(|v| v["image"].as_str().map(str::to_owned))
                        .unwrap_or_default()
                }
            })
            .unwrap_or_default()
    };
    let mut rows = Vec::new();
    let mut last_slot = None;
    for t in &tasks {
        let slot = (t.service.clone(), t.slot, t.node.clone());
        let slot_key = if t.slot == 0 {
            slot.clone()
        } else {
            (slot.0.clone(), slot.1, None)
        };
        let history = last_slot.as_ref() == Some(&slot_key);
        last_slot = Some(slot_key);
        let name = if t.slot == 0 {
            format!("{}.{}", t.service, t.node.clone().unwrap_or_default())
        } else {
            format!("{}.{}", t.service, t.slot)
        };
        let when = chrono::DateTime::from_timestamp_millis(t.updated_ms as i64)
            .map(|d| format!(" {} ago", output::ago(d)))
            .unwrap_or_default();
        let err = match t.state {
            TaskState::Pending | TaskState::Failed => t.message.clone(),
            _ if t.desired != TaskState::Running => t.message.clone(),
            _ => String::new(),
        };
        rows.push(vec![
            t.id.chars().take(12).collect(),
            if history {
                format!(" \\_ {name}")
            } else {
                name
            },
            image(t),
            t.node
                .as_ref()
                .map(|n| hosts.get(n).cloned().unwrap_or_else(|| n.clone()))
                .unwrap_or_default(),
            capitalised(&state_name(&t.desired)),
            format!("{}{when}", capitalised(&state_name(&t.state))),
            err,
        ]);
    }
    output::table(
        &[
            "ID",
            "NAME",
            "IMAGE",
            "NODE",
            "DESIRED STATE",
            "CURRENT STATE",
            "ERROR",
        ],
        rows,
    );
    Ok(0)
}

pub(crate) fn stack(ctx: &Ctx, cmd: ClusterStackCmd) -> anyhow::Result<u8> {
    if let ClusterStackCmd::Deploy(a) = cmd {
        return deploy(ctx, a);
    }
    let c = client(ctx)?;
    match cmd {
        ClusterStackCmd::Deploy(_) => unreachable!("handled above"),
        ClusterStackCmd::Ls { format } => {
            let v: Vec<StackView> = call(c.get("/v1/stacks"))?;
            if format == Format::Json {
                output::json(&v)?;
            } else {
                output::table(
                    &["NAME", "SERVICES"],
                    v.into_iter()
                        .map(|s| vec![s.name, s.services.to_string()])
                        .collect(),
                );
            }
        }
        ClusterStackCmd::Ps {
            stack,
            format,
            no_history,
        } => {
            let stacks: Vec<StackView> = call(c.get("/v1/stacks"))?;
            anyhow::ensure!(
                stacks.iter().any(|s| s.name == stack),
                "no such stack: {stack}"
            );
            let tasks: Vec<TaskRecord> = call(c.get(&format!("/v1/tasks?stack={stack}")))?;
            return print_tasks(&c, tasks, format, no_history);
        }
        ClusterStackCmd::Rm { stacks } => {
            let mut code = 0;
            for s in stacks {
                match call(c.delete::<Vec<String>>(&format!("/v1/stacks/{s}"))) {
                    Ok(removed) => {
                        for r in removed {
                            println!("Removing service {r}");
                        }
                    }
                    Err(e) => {
                        eprintln!("Error: {e}");
                        code = 1;
                    }
                }
            }
            return Ok(code);
        }
    }
    Ok(0)
}

pub(crate) fn service(ctx: &Ctx, cmd: ServiceCmd) -> anyhow::Result<u8> {
    let c = client(ctx)?;
    match cmd {
        ServiceCmd::Logs(a) => return crate::logs::service_logs(ctx, a),
        ServiceCmd::Ls { format } => {
            let v: Vec<ServiceView> = call(c.get("/v1/services"))?;
            if format == Format::Json {
                output::json(&v)?;
            } else {
                output::table(
                    &["NAME", "MODE", "REPLICAS", "IMAGE", "UPDATE"],
                    v.into_iter()
                        .map(|s| {
                            vec![
                                s.record.name.clone(),
                                s.mode.clone(),
                                format!("{}/{}", s.running, s.desired),
                                s.image.clone(),
                                match &s.record.update {
                                    UpdateStatus::Completed => String::new(),
                                    u => serde_json::to_value(u)
                                        .ok()
                                        .and_then(|v| v["state"].as_str().map(str::to_owned))
                                        .unwrap_or_default(),
                                },
                            ]
                        })
                        .collect(),
                );
            }
        }
        ServiceCmd::Ps {
            service,
            format,
            no_history,
        } => {
            let name = service_name(&c, &service)?;
            let tasks: Vec<TaskRecord> = call(c.get(&format!("/v1/tasks?service={name}")))?;
            return print_tasks(&c, tasks, format, no_history);
        }
        ServiceCmd::Inspect { services } => {
            let mut out = Vec::new();
            for s in services {
                let name = service_name(&c, &s)?;
                let v: ServiceView = call(c.get(&format!("/v1/services/{name}")))?;
                let mut j = serde_json::to_value(&v)?;
                // The spec as an object, not a string inside JSON.
                if let Some(spec) = j.get("spec").and_then(|s| s.as_str()) {
                    j["spec"] = serde_json::from_str(spec)?;
                }
                out.push(j);
            }
            output::json(&out)?;
        }
        ServiceCmd::Scale { pairs, detach } => {
            let mut names = Vec::new();
            for p in pairs {
                let (svc, n) = kv(&p)?;
                let n: u32 = n
                    .parse()
                    .with_context(|| format!("{p:?}: the replica count must be a number"))?;
                let name = service_name(&c, &svc)?;
                let _: ServiceView = call(c.post(
                    &format!("/v1/services/{name}/update"),
                    &ServiceUpdate {
                        replicas: Some(n),
                        ..Default::default()
                    },
                ))?;
                println!("{name} scaled to {n}");
                names.push(name);
            }
            if !detach {
                return converge(&c, &names);
            }
        }
        ServiceCmd::Update(a) => {
            let name = service_name(&c, &a.service)?;
            let pairs = |v: &[String]| {
                v.iter()
                    .map(|s| kv(s))
                    .collect::<anyhow::Result<BTreeMap<_, _>>>()
            };
            let u = ServiceUpdate {
                image: a.image.clone(),
                env_add: pairs(&a.env_add)?,
                env_rm: a.env_rm.clone(),
                label_add: pairs(&a.label_add)?,
                label_rm: a.label_rm.clone(),
                replicas: a.replicas,
                command: None,
            };
            let _: ServiceView = call(c.post(&format!("/v1/services/{name}/update"), &u))?;
            println!("{name}");
            if !a.detach {
                return converge(&c, &[name]);
            }
        }
        ServiceCmd::Rollback { service, detach } => {
            let name = service_name(&c, &service)?;
            let _: ServiceView = call(c.post(&format!("/v1/services/{name}/rollback"), &()))?;
            println!("{name}: rollback requested");
            if !detach {
                let code = converge(&c, std::slice::from_ref(&name))?;
                // Rolled back is what was asked for here.
                let v: ServiceView = call(c.get(&format!("/v1/services/{name}")))?;
                return Ok(
                    if matches!(v.record.update, UpdateStatus::RolledBack { .. }) {
                        0
                    } else {
                        code
                    },
                );
            }
        }
        ServiceCmd::Rm { services } => {
            let mut code = 0;
            for s in services {
                let r = service_name(&c, &s)
                    .and_then(|n| call(c.delete::<String>(&format!("/v1/services/{n}"))));
                match r {
                    Ok(n) => println!("{n}"),
                    Err(e) => {
                        eprintln!("Error: {e}");
                        code = 1;
                    }
                }
            }
            return Ok(code);
        }
    }
    Ok(0)
}

fn availability(s: &str) -> anyhow::Result<Availability> {
    match s {
        "active" => Ok(Availability::Active),
        "pause" => Ok(Availability::Pause),
        "drain" => Ok(Availability::Drain),
        _ => anyhow::bail!("invalid availability {s:?}: use active, pause or drain"),
    }
}

fn update_node(c: &Client, node: &str, u: &NodeUpdate) -> anyhow::Result<NodeView> {
    call(c.post(&format!("/v1/nodes/{node}"), u))
}

/// `gantry cert`: the edge proxies' certificates.
#[derive(Subcommand)]
pub(crate) enum CertCmd {
    /// List certificates (internal, ACME and operators').
    Ls {
        /// Output format.
        #[arg(long, value_enum, default_value_t)]
        format: Format,
    },
    /// Add a certificate for the names it carries: a chain and its key,
    /// in one PEM file or two.
    Add {
        /// The certificate chain (PEM), with the key or without.
        cert: PathBuf,
        /// The private key (PEM), if not in the first file.
        key: Option<PathBuf>,
    },
    /// Remove a certificate.
    Rm {
        /// Its name (the first it carries).
        #[arg(required = true)]
        names: Vec<String>,
    },
    /// Print the edge CA certificate, which signs names under .test,
    /// .local and .internal: give it to clients to trust.
    Ca,
}

pub(crate) fn cert(ctx: &Ctx, cmd: CertCmd) -> anyhow::Result<u8> {
    let c = client(ctx)?;
    match cmd {
        CertCmd::Ls { format } => {
            let v: Vec<gantry_api::CertView> = call(c.get("/v1/certs"))?;
            if format == Format::Json {
                output::json(&v)?;
            } else {
                output::table(
                    &["NAME", "NAMES", "SOURCE", "EXPIRES"],
                    v.into_iter()
                        .map(|c| vec![c.name, c.names.join(","), c.source, c.not_after])
                        .collect(),
                );
            }
        }
        CertCmd::Add { cert, key } => {
            let read = |p: &PathBuf| {
                std::fs::read_to_string(p).with_context(|| format!("read {}", p.display()))
            };
            let first = read(&cert)?;
            let key_pem = match &key {
                Some(k) => read(k)?,
                None => first.clone(),
            };
            let pick = |pem: &str, want_key: bool| {
                let mut out = String::new();
                let mut on = false;
                for line in pem.lines() {
                    if line.starts_with("-----BEGIN ") {
                        on = line.contains("PRIVATE KEY") == want_key;
                    }
                    if on {
                        out.push_str(line);
                        out.push('\n');
                    }
                    if line.starts_with("-----END ") {
                        on = false;
                    }
                }
                out
            };
            let add = gantry_api::CertAdd {
                cert_pem: pick(&first, false),
                key_pem: pick(&key_pem, true),
            };
            if add.key_pem.is_empty() {
                anyhow::bail!("no private key: give it in the file or as a second file");
            }
            let v: gantry_api::CertView = call(c.post("/v1/certs", &add))?;
            println!("{} ({}), until {}", v.name, v.names.join(", "), v.not_after);
        }
        CertCmd::Rm { names } => {
            for n in names {
                let () = call(c.delete(&format!("/v1/certs/{n}")))?;
                println!("{n}");
            }
        }
        CertCmd::Ca => {
            let pem: String = call(c.get("/v1/edge-ca"))?;
            print!("{pem}");
        }
    }
    Ok(0)
}

pub(crate) fn node(ctx: &Ctx, cmd: NodeCmd) -> anyhow::Result<u8> {
    let c = client(ctx)?;
    match cmd {
        NodeCmd::Ls { format } => {
            let v: Vec<NodeView> = call(c.get("/v1/nodes"))?;
            if format == Format::Json {
                output::json(&v)?;
            } else {
                output::table(
                    &[
                        "ID",
                        "HOSTNAME",
                        "STATUS",
                        "AVAILABILITY",
                        "MANAGER STATUS",
                        "ADDRESS",
                        "BLOCK",
                        "TASKS",
                        "CPU %",
                        "MEMORY",
                    ],
                    v.into_iter()
                        .map(|n| {
                            vec![
                                n.record.id.clone(),
                                n.record.hostname.clone(),
                                if n.record.up { "Ready" } else { "Down" }.into(),
                                capitalised(&state_name(&n.record.availability)),
                                if n.record.manager { "Leader" } else { "" }.into(),
                                n.record.addr.clone(),
                                n.record.block.map(|b| b.to_string()).unwrap_or_default(),
                                n.tasks.to_string(),
                                n.cpu_percent
                                    .map(|c| format!("{c:.1}%"))
                                    .unwrap_or_else(|| "-".into()),
                                match (n.mem_used, n.record.capacity.memory) {
                                    (Some(u), t) if t > 0 => {
                                        format!("{} / {}", output::size(u), output::size(t))
                                    }
                                    _ => "-".into(),
                                },
                            ]
                        })
                        .collect(),
                );
            }
        }
        NodeCmd::Inspect { nodes } => {
            let mut out = Vec::new();
            for n in nodes {
                let v: NodeView = call(c.get(&format!("/v1/nodes/{n}")))?;
                out.push(v);
            }
            output::json(&out)?;
        }
        NodeCmd::Update {
            availability: av,
            label_add,
            label_rm,
            node,
        } => {
            let u = NodeUpdate {
                availability: av.as_deref().map(availability).transpose()?,
                label_add: label_add
                    .iter()
                    .map(|s| kv(s))
                    .collect::<anyhow::Result<_>>()?,
                label_rm,
            };
            let v = update_node(&c, &node, &u)?;
            println!("{}", v.record.id);
        }
        NodeCmd::Drain { detach, node } => {
            let v = update_node(
                &c,
                &node,
                &NodeUpdate {
                    availability: Some(Availability::Drain),
                    ..Default::default()
                },
            )?;
            println!("{}", v.record.id);
            if !detach {
                // Drained once no task of it is left running.
                loop {
                    let v: NodeView = call(c.get(&format!("/v1/nodes/{}", v.record.id)))?;
                    if v.tasks == 0 {
                        println!("{}: drained", v.record.hostname);
                        break;
                    }
                    if !v.record.up {
                        println!(
                            "{}: down; its {} task(s) were moved and will stop when it is back",
                            v.record.hostname, v.tasks
                        );
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(200));
                }
            }
        }
        NodeCmd::Activate { node } => {
            let v = update_node(
                &c,
                &node,
                &NodeUpdate {
                    availability: Some(Availability::Active),
                    ..Default::default()
                },
            )?;
            println!("{}", v.record.id);
        }
        NodeCmd::Rm { force, nodes } => {
            let mut code = 0;
            for n in nodes {
                let q = if force { "?force=true" } else { "" };
                match call(c.delete::<String>(&format!("/v1/nodes/{n}{q}"))) {
                    Ok(id) => println!("{id}"),
                    Err(e) => {
                        eprintln!("Error: {e}");
                        code = 1;
                    }
                }
            }
            return Ok(code);
        }
    }
    Ok(0)
}

/// A point in time given as RFC 3339 or as a duration ago (`10m`), for
/// the flag `what`.
pub(crate) fn time_arg(s: &str, what: &str) -> anyhow::Result<chrono::DateTime<chrono::Utc>> {
    if let Ok(t) = chrono::DateTime::parse_from_rfc3339(s) {
        return Ok(t.with_timezone(&chrono::Utc));
    }
    let d = duration(s, what)?;
    Ok(chrono::Utc::now() - chrono::Duration::from_std(d)?)
}

fn matches(e: &Event, filters: &[(String, String)]) -> bool {
    filters.iter().all(|(k, v)| match k.as_str() {
        "type" => &e.kind == v,
        "id" => e.id.starts_with(v.as_str()),
        "action" => &e.action == v,
        other => e.attributes.get(other) == Some(v),
    })
}

pub(crate) fn events(ctx: &Ctx, a: EventsArgs) -> anyhow::Result<u8> {
    let c = client(ctx)?;
    let filters = a
        .filter
        .iter()
        .map(|f| kv(f))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let mut q = format!("/v1/events?follow={}", !a.no_follow);
    if let Some(s) = &a.since {
        let t = time_arg(s, "--since")?.to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
        q.push_str(&format!("&since={t}"));
    }
    let json = a.format == Format::Json;
    call(c.watch(&q, |e: Event| {
        if matches(&e, &filters) {
            if json {
                println!("{}", serde_json::to_string(&e).unwrap_or_default());
            } else {
                let attrs: Vec<String> = e
                    .attributes
                    .iter()
                    .filter(|(_, v)| !v.is_empty())
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect();
                println!(
                    "{} {} {} {} ({})",
                    e.time,
                    e.kind,
                    e.action,
                    e.id,
                    attrs.join(", ")
                );
            }
            use std::io::Write;
            let _ = std::io::stdout().flush();
        }
        true
    }))?;
    Ok(0)
}
