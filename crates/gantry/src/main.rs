//! `gantry`: the one binary. Docker's verbs and flags over Gantry's image
//! store and native runtime. This crate only parses arguments, wires the
//! libraries together and prints; the work is in the library crates.

mod backups;
mod cluster;
mod containers;
mod demo;
mod images;
mod logs;
mod output;
mod parse;
mod sim;
mod stacks;
mod stats;
mod volumes;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Gantry: a self-hosted container platform in one binary.
#[derive(Parser)]
#[command(name = "gantry", version, about, propagate_version = true)]
struct Cli {
    /// Where images, containers and volumes live.
    #[arg(
        long,
        global = true,
        env = "GANTRY_DATA_DIR",
        default_value = "/var/lib/gantry"
    )]
    data_dir: PathBuf,
    /// Registries (host:port) to reach over plain HTTP; loopback ones always are.
    #[arg(
        long = "insecure-registry",
        global = true,
        env = "GANTRY_INSECURE_REGISTRIES",
        value_delimiter = ','
    )]
    insecure_registries: Vec<String>,
    /// CAs to trust per registry: DIR/HOST:PORT/*.crt, as Docker's
    /// certs.d (a registry with one is reached over HTTPS, loopback or not).
    #[arg(
        long = "registry-certs",
        global = true,
        env = "GANTRY_REGISTRY_CERTS",
        default_value = "/etc/docker/certs.d"
    )]
    registry_certs: PathBuf,
    /// The manager to talk to (HOST[:PORT]); default: the one in the admin credential.
    #[arg(short = 'H', long, global = true, env = "GANTRY_HOST")]
    host: Option<String>,
    /// Where the admin credential lives (default: ~/.config/gantry).
    #[arg(long, global = true, env = "GANTRY_CONFIG_DIR")]
    config_dir: Option<PathBuf>,
    /// Print the whole error chain and debug logs.
    #[arg(long, global = true)]
    debug: bool,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Manage images.
    #[command(subcommand)]
    Image(images::ImageCmd),
    /// The build cache.
    #[command(subcommand)]
    Builder(images::BuilderCmd),
    /// Pull an image (same as `image pull`).
    Pull(images::PullArgs),
    /// Push an image (same as `image push`).
    Push(images::PushArgs),
    /// Build an image from a Dockerfile (same as `image build`).
    Build(images::BuildArgs),
    /// List images (same as `image ls`).
    Images(images::LsArgs),
    /// Remove images (same as `image rm`).
    Rmi(images::RmArgs),
    /// Give an image another name (same as `image tag`).
    Tag {
        /// Existing image.
        source: String,
        /// New reference.
        target: String,
    },
    /// Log in to a registry.
    Login(images::LoginArgs),
    /// Log out of a registry.
    Logout {
        /// The registry.
        registry: String,
    },
    /// Create and start a container.
    Run(Box<containers::RunArgs>),
    /// List containers.
    Ps(containers::PsArgs),
    /// Start stopped containers.
    Start {
        /// Containers.
        #[arg(required = true)]
        containers: Vec<String>,
    },
    /// Stop running containers: the stop signal, then SIGKILL after the grace period.
    Stop(containers::StopArgs),
    /// Send a signal to running containers.
    Kill(containers::KillArgs),
    /// Remove containers.
    Rm(containers::RmArgs),
    /// Show a container's output.
    Logs(logs::LogsArgs),
    /// Show containers' configuration and state as JSON.
    Inspect {
        /// Containers.
        #[arg(required = true)]
        containers: Vec<String>,
    },
    /// Run a command in a running container.
    Exec(containers::ExecArgs),
    /// Block until containers stop; print their exit codes.
    Wait {
        /// Containers.
        #[arg(required = true)]
        containers: Vec<String>,
    },
    /// Manage volumes.
    #[command(subcommand)]
    Volume(volumes::VolumeCmd),
    /// Stacks: compose files of services.
    #[command(subcommand)]
    Stack(stacks::StackCmd),
    /// Run the manager (with --dev, also this host as a node).
    Server(Box<cluster::ServerArgs>),
    /// Run a node agent.
    Agent(Box<cluster::AgentArgs>),
    /// The single-threaded runtime helper of the agent.
    #[command(hide = true)]
    AgentHelper {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Simulated nodes for the scale harness (scripts/bench-scale.sh).
    #[command(hide = true)]
    SimNodes(sim::SimArgs),
    /// Print (or rotate) the token nodes (worker, the default) or
    /// managers join with.
    JoinToken {
        /// worker or manager.
        #[arg(value_name = "worker|manager")]
        role: Option<String>,
        /// Make a new token; the old one stops working.
        #[arg(long)]
        rotate: bool,
        /// Only the token.
        #[arg(short, long)]
        quiet: bool,
    },
    /// Deploy or update a stack (same as `stack deploy`).
    Deploy(cluster::DeployArgs),
    /// Manage services.
    #[command(subcommand)]
    Service(cluster::ServiceCmd),
    /// Manage nodes.
    #[command(subcommand)]
    Node(cluster::NodeCmd),
    /// The managers' group: who leads, who is reachable.
    #[command(subcommand)]
    Manager(cluster::ManagerCmd),
    /// The cluster CA: inspect it, rotate it.
    #[command(subcommand)]
    Ca(cluster::CaCmd),
    /// Follow cluster events.
    Events(cluster::EventsArgs),
    /// A live table of the cluster's task containers' CPU, memory, network
    /// and disk use.
    Stats(stats::StatsArgs),
    /// The whole platform on this machine: 3 simulated hosts, a manager,
    /// agents, a registry and a stack behind the edge proxy (`down`
    /// removes it).
    Demo(demo::DemoArgs),
    /// The edge proxies' certificates.
    #[command(subcommand)]
    Cert(cluster::CertCmd),
    /// The cluster's networks, which stacks share (`external: true`).
    #[command(subcommand)]
    Network(cluster::NetworkCmd),
    /// Secrets: values services' tasks see as files under /run/secrets,
    /// sealed in the cluster's store.
    #[command(subcommand)]
    Secret(cluster::FileCmd),
    /// Configs: files services' tasks see.
    #[command(subcommand)]
    Config(cluster::FileCmd),
    /// The cluster's own registry (every manager serves it on its port).
    #[command(subcommand)]
    Registry(cluster::RegistryCmd),
    /// Give a locked manager (server --autolock) its unlock key, from
    /// standard input.
    Unlock,
    /// The unlock key of an autolocked manager: kept nowhere, so only
    /// `--rotate` (a new one, shown once; the old one stops working).
    UnlockKey {
        /// Make a new unlock key.
        #[arg(long)]
        rotate: bool,
        /// Print the key only.
        #[arg(short, long)]
        quiet: bool,
    },
}

/// Everything a command needs from the global flags.
pub(crate) struct Ctx {
    pub(crate) data_dir: PathBuf,
    pub(crate) host: Option<String>,
    pub(crate) config_dir: PathBuf,
    pub(crate) registry: gantry_image::RegistryOptions,
}

impl Ctx {
    pub(crate) fn store(&self) -> anyhow::Result<gantry_image::Store> {
        Ok(gantry_image::Store::open(&self.data_dir)?)
    }
    pub(crate) fn runtime(&self) -> anyhow::Result<gantry_runtime::Runtime> {
        Ok(gantry_runtime::Runtime::new(&self.data_dir)?)
    }
}

/// An error that carries the exit code to end with (Docker's 125/126/127,
/// or a container's own code).
#[derive(Debug)]
pub(crate) struct Exit(pub(crate) u8);

impl std::fmt::Display for Exit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "exit {}", self.0)
    }
}

impl std::error::Error for Exit {}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // The long-running processes say what they do; commands only warn.
    let filter = match (&cli.cmd, cli.debug) {
        (_, true) => "debug",
        (Cmd::Server(_) | Cmd::Agent(_), false) => "info",
        _ => "warn",
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("GANTRY_LOG")
                .unwrap_or_else(|_| filter.into()),
        )
        .with_writer(std::io::stderr)
        .init();
    gantry_image::install_crypto_provider();
    // A command whose reader goes away (`| head`, `| grep -q`) ends quietly,
    // as Unix tools do, by SIGPIPE; the long-running processes keep
    // ignoring it and handle a closed pipe or socket as an error. (The
    // container monitors a command forks ignore it again themselves.)
    if !matches!(
        cli.cmd,
        Cmd::Server(_) | Cmd::Agent(_) | Cmd::AgentHelper { .. } | Cmd::SimNodes(_) | Cmd::Demo(_)
    ) {
        // SAFETY: setting a disposition before any thread starts.
        unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    }
    if let Cmd::AgentHelper { args } = &cli.cmd {
        return ExitCode::from(gantry_agent::helper_main(&cli.data_dir, args).clamp(0, 255) as u8);
    }
    let ctx = Ctx {
        data_dir: cli.data_dir.clone(),
        host: cli.host.clone(),
        config_dir: cli
            .config_dir
            .clone()
            .unwrap_or_else(gantry_api::AdminConfig::dir),
        registry: gantry_image::RegistryOptions {
            insecure: cli.insecure_registries.clone(),
            credentials: None,
            cluster: cluster::registry_tunnel(
                cli.config_dir.as_deref(),
                cli.host.as_deref(),
                &cli.data_dir,
            ),
            certs_dir: Some(cli.registry_certs.clone()),
        },
    };
    match dispatch(&ctx, cli.cmd) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            if let Some(Exit(code)) = e.downcast_ref::<Exit>() {
                return ExitCode::from(*code);
            }
            if cli.debug {
                eprintln!("Error: {e:?}");
            } else {
                let mut msg = e.to_string();
                // One line: the outermost context and the root cause.
                if let Some(root) = e.chain().last() {
                    let root = root.to_string();
                    if !msg.contains(&root) {
                        msg = format!("{msg}: {root}");
                    }
                }
                eprintln!("Error: {msg}");
            }
            let code = e
                .chain()
                .find_map(|c| match c.downcast_ref::<gantry_runtime::RuntimeError>() {
                    Some(gantry_runtime::RuntimeError::Start { code, .. }) => Some(*code as u8),
                    _ => None,
                })
                .unwrap_or(1);
            ExitCode::from(code)
        }
    }
}

fn dispatch(ctx: &Ctx, cmd: Cmd) -> anyhow::Result<u8> {
    let r = dispatch_cmd(ctx, cmd);
    cluster::remember_managers(ctx);
    r
}

fn dispatch_cmd(ctx: &Ctx, cmd: Cmd) -> anyhow::Result<u8> {
    match cmd {
        Cmd::Image(c) => images::run(ctx, c),
        Cmd::Builder(c) => images::builder(ctx, c),
        Cmd::Pull(a) => images::run(ctx, images::ImageCmd::Pull(a)),
        Cmd::Push(a) => images::run(ctx, images::ImageCmd::Push(a)),
        Cmd::Build(a) => images::run(ctx, images::ImageCmd::Build(a)),
        Cmd::Images(a) => images::run(ctx, images::ImageCmd::Ls(a)),
        Cmd::Rmi(a) => images::run(ctx, images::ImageCmd::Rm(a)),
        Cmd::Tag { source, target } => images::run(ctx, images::ImageCmd::Tag { source, target }),
        Cmd::Login(a) => images::login(ctx, a),
        Cmd::Logout { registry } => images::logout(ctx, &registry),
        Cmd::Run(a) => containers::run(ctx, *a),
        Cmd::Ps(a) => containers::ps(ctx, a),
        Cmd::Start { containers: c } => containers::start(ctx, &c),
        Cmd::Stop(a) => containers::stop(ctx, a),
        Cmd::Kill(a) => containers::kill(ctx, a),
        Cmd::Rm(a) => containers::rm(ctx, a),
        Cmd::Logs(a) => logs::logs(ctx, a),
        Cmd::Inspect { containers: c } => containers::inspect(ctx, &c),
        Cmd::Exec(a) => containers::exec(ctx, a),
        Cmd::Wait { containers: c } => containers::wait(ctx, &c),
        Cmd::Volume(c) => volumes::run(ctx, c),
        Cmd::Stack(stacks::StackCmd::Cluster(c)) => cluster::stack(ctx, c),
        Cmd::Stack(c) => stacks::run(c),
        Cmd::Server(a) => cluster::server(ctx, *a),
        Cmd::Agent(a) => cluster::agent(ctx, *a),
        Cmd::AgentHelper { .. } => unreachable!("handled before the context is made"),
        Cmd::SimNodes(a) => sim::run(a),
        Cmd::JoinToken {
            role,
            rotate,
            quiet,
        } => cluster::join_token(ctx, role, rotate, quiet),
        Cmd::Deploy(a) => cluster::deploy(ctx, a),
        Cmd::Service(c) => cluster::service(ctx, c),
        Cmd::Node(c) => cluster::node(ctx, c),
        Cmd::Manager(c) => cluster::manager(ctx, c),
        Cmd::Ca(c) => cluster::ca(ctx, c),
        Cmd::Events(a) => cluster::events(ctx, a),
        Cmd::Stats(a) => stats::stats(ctx, a),
        Cmd::Demo(a) => demo::demo(a),
        Cmd::Cert(c) => cluster::cert(ctx, c),
        Cmd::Network(c) => cluster::network(ctx, c),
        Cmd::Secret(c) => cluster::file(ctx, cluster::FileKind::Secret, c),
        Cmd::Config(c) => cluster::file(ctx, cluster::FileKind::Config, c),
        Cmd::Registry(c) => cluster::registry(ctx, c),
        Cmd::Unlock => cluster::unlock(ctx),
        Cmd::UnlockKey { rotate, quiet } => cluster::unlock_key(ctx, rotate, quiet),
    }
}
