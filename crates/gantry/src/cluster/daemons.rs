//! `gantry server` and `gantry agent`: the long-running processes, whose
//! work is in gantry-server and gantry-agent.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Args;

use crate::Ctx;

use super::*;

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
    /// The storm guard: when more than this share of the nodes stops
    /// sending heartbeats within one grace, they are marked down but their
    /// tasks stay in place until they return or `gantry node confirm-down`
    /// (1 turns it off).
    #[arg(long, default_value_t = 0.5, value_parser = ratio)]
    storm_guard: f64,
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
    /// Keep the key that seals secrets only sealed with an unlock key,
    /// shown once now, which `gantry unlock` must give after every start
    /// of the manager (Swarm's autolock). Once on, it stays on.
    #[arg(long)]
    autolock: bool,
    /// Where the cluster's Prometheus metrics are served (`/metrics`):
    /// every node's and task's figures, and the manager's own.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:9324")]
    manager_metrics: SocketAddr,
    /// Start a new cluster from a backup (`gantry server backup`): its
    /// CAs, services, secrets, configs, networks and routes. The data dir
    /// must hold no cluster yet.
    #[arg(long, value_name = "FILE")]
    restore: Option<PathBuf>,
    /// Join the managers of an existing cluster, at ADDR (any of them),
    /// with the manager join token (`gantry join-token manager`).
    #[arg(long, value_name = "ADDR", requires = "token", conflicts_with_all = ["restore", "force_new_cluster"])]
    join: Option<String>,
    /// The manager join token, for --join.
    #[arg(
        long,
        value_name = "TOKEN",
        env = "GANTRY_MANAGER_TOKEN",
        requires = "join"
    )]
    token: Option<String>,
    /// Start a group of one manager from this manager's state, dropping
    /// the others: after a quorum was lost for good (Swarm's
    /// --force-new-cluster). Join new managers to it afterwards.
    #[arg(long)]
    force_new_cluster: bool,
    /// This host's name (default: the system's); with --dev also the
    /// node's.
    #[arg(long)]
    hostname: Option<String>,
    /// How long node and manager certificates are valid (Swarm's
    /// --cert-expiry; default 90 days, as recorded once set); each is
    /// renewed when a third of its life is left.
    #[arg(long, value_name = "DURATION")]
    cert_expiry: Option<String>,
    #[command(flatten)]
    edge: EdgeArgs,
    #[command(flatten)]
    logs: LogArgs,
    #[command(subcommand)]
    cmd: Option<ServerCmd>,
}

/// What `gantry server` does besides running a manager.
#[derive(clap::Subcommand)]
pub(crate) enum ServerCmd {
    /// Write a consistent copy of the running manager's state to FILE
    /// (0600): secrets and certificate keys stay sealed in it, with the
    /// data key as the manager keeps it (under autolock, sealed with the
    /// unlock key). As sensitive as the manager's data dir.
    Backup {
        /// The backup file.
        file: PathBuf,
    },
}

/// `gantry server backup FILE`.
fn backup(ctx: &Ctx, file: &std::path::Path) -> anyhow::Result<u8> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let c = client(ctx)?;
    let b: gantry_server::Backup = call(c.get("/v1/backup"))?;
    let bytes = serde_json::to_vec(&b)?;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(file)
        .with_context(|| format!("create {}", file.display()))?;
    f.write_all(&bytes)
        .and_then(|()| f.sync_all())
        .with_context(|| format!("write {}", file.display()))?;
    let s = &b.state;
    println!(
        "Backup of the state at index {} ({} services, {} secrets, {} configs, {} networks, {} nodes) written to {}",
        b.index,
        s.services.len(),
        s.secrets.len(),
        s.configs.len(),
        s.networks.len(),
        s.nodes.len(),
        file.display()
    );
    Ok(0)
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
    /// The port this node serves the image blobs it holds to the other
    /// nodes on (mutual TLS, node certificates), so that a deploy does not
    /// take every byte from the managers; 0: none.
    #[arg(long, default_value_t = gantry_api::DEFAULT_PEER_PORT)]
    peer_port: u16,
    #[command(flatten)]
    edge: EdgeArgs,
    #[command(flatten)]
    logs: LogArgs,
}

fn multi_thread<F: std::future::Future>(f: F) -> anyhow::Result<F::Output> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let out = rt.block_on(f);
    // A daemon that was told to stop does not wait for blocking tasks that
    // never end by themselves (the agent's wait on its heartbeat thread):
    // dropping the runtime would wait for them for ever, and the process
    // would hang on SIGTERM. What must last is on disk already.
    rt.shutdown_timeout(Duration::from_secs(2));
    Ok(out)
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

/// A share between 0 and 1.
fn ratio(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(r) if (0.0..=1.0).contains(&r) => Ok(r),
        _ => Err(format!("{s:?} is not a share between 0 and 1 (like 0.5)")),
    }
}

pub(crate) fn server(ctx: &Ctx, a: ServerArgs) -> anyhow::Result<u8> {
    if let Some(ServerCmd::Backup { file }) = &a.cmd {
        return backup(ctx, file);
    }
    if let Some(f) = &a.restore {
        let bytes = std::fs::read(f).with_context(|| format!("read {}", f.display()))?;
        gantry_server::restore(&ctx.data_dir, &bytes)?;
        eprintln!("Restored the cluster from {}", f.display());
    }
    let grace = duration(&a.heartbeat_grace, "--heartbeat-grace")?;
    let labels = a
        .label
        .iter()
        .map(|l| kv(l))
        .collect::<anyhow::Result<BTreeMap<_, _>>>()?;
    let cfg = gantry_server::ServerConfig {
        insecure_registries: ctx.registry.insecure.clone(),
        data_dir: ctx.data_dir.clone(),
        listen: a.listen,
        advertise: a.advertise.clone().unwrap_or_default(),
        grace,
        storm_ratio: a.storm_guard,
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
        autolock: a.autolock,
        join: a.join.clone().zip(a.token.clone()),
        force_new_cluster: a.force_new_cluster,
        cert_expiry: a
            .cert_expiry
            .as_deref()
            .map(|d| duration(d, "--cert-expiry"))
            .transpose()?,
        hostname: a.hostname.clone().unwrap_or_else(|| {
            nix::unistd::gethostname()
                .map(|h| h.to_string_lossy().into_owned())
                .unwrap_or_default()
        }),
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
        if let Some(key) = m.take_new_unlock_key() {
            // Shown once: Gantry keeps it nowhere.
            println!("Autolock is on. The unlock key, shown this once (keep it safe; after every restart give it with `gantry unlock`):\n{}", &*key);
        }
        if a.dev {
            let acfg = gantry_agent::AgentConfig {
                data_dir,
                manager: Some(format!("127.0.0.1:{}", m.addr().port())),
                token: None,
                advertise: a.advertise.clone(),
                labels,
                hostname: a.hostname.clone(),
                heartbeat: Duration::from_secs(1),
                helper,
                registry,
                edge: a.edge.config(),
                metrics: Some(a.edge.metrics),
                log_retention: a.logs.retention()?,
                fast_path: true,
                // One node: no peers to serve.
                peer_port: None,
            };
            let info = gantry_agent::node_info(&acfg, acfg.manager.as_deref().unwrap_or_default());
            let (node_id, cred) = m.local_node(&info)?;
            let id = gantry_agent::Identity {
                node_id: node_id.clone(),
                manager: acfg.manager.clone().unwrap_or_default(),
                managers: Vec::new(),
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
        m.stop().await;
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
        peer_port: (a.peer_port != 0).then_some(a.peer_port),
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
