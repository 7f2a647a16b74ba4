//! Container commands: `run`, `ps`, `start`, `stop`, `kill`, `rm`, `logs`,
//! `inspect`, `exec`, `wait`.

use std::collections::BTreeMap;
use std::io::Write;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use gantry_runtime::{
    ContainerConfig, ExecOptions, Listed, Mount, MountKind, NetworkMode, RestartPolicy, Status,
};

use crate::output::{self, Format};
use crate::{parse, Ctx, Exit};

#[derive(Args)]
pub(crate) struct RunArgs {
    /// Run in the background and print the container id.
    #[arg(short, long)]
    detach: bool,
    /// Remove the container when it exits.
    #[arg(long)]
    rm: bool,
    /// Name the container.
    #[arg(long)]
    name: Option<String>,
    /// Set environment variables.
    #[arg(short, long = "env", value_name = "KEY=VALUE")]
    env: Vec<String>,
    /// Read environment variables from a file.
    #[arg(long = "env-file")]
    env_file: Vec<std::path::PathBuf>,
    /// Memory limit (e.g. 64m).
    #[arg(short, long)]
    memory: Option<String>,
    /// Number of CPUs (e.g. 0.5).
    #[arg(long)]
    cpus: Option<String>,
    /// Relative CPU weight.
    #[arg(short = 'c', long = "cpu-shares")]
    cpu_shares: Option<u64>,
    /// Maximum number of processes.
    #[arg(long = "pids-limit")]
    pids_limit: Option<u64>,
    /// Bind mount or volume: SRC:DST[:ro].
    #[arg(short, long = "volume")]
    volume: Vec<String>,
    /// Mount a tmpfs.
    #[arg(long)]
    tmpfs: Vec<String>,
    /// Network: bridge (default), none or host.
    #[arg(long, default_value = "bridge")]
    network: String,
    /// Publish a port: HOST:CONTAINER.
    #[arg(short, long = "publish")]
    publish: Vec<String>,
    /// Keep stdin open.
    #[arg(short, long)]
    interactive: bool,
    /// Allocate a pseudo-terminal.
    #[arg(short, long)]
    tty: bool,
    /// Override the image's entrypoint.
    #[arg(long)]
    entrypoint: Option<String>,
    /// User (name or uid[:gid]).
    #[arg(short, long)]
    user: Option<String>,
    /// Working directory.
    #[arg(short, long)]
    workdir: Option<String>,
    /// Mount the root filesystem read-only.
    #[arg(long)]
    read_only: bool,
    /// Restart policy: no, on-failure[:N], always.
    #[arg(long, default_value = "no")]
    restart: String,
    /// Signal to stop the container.
    #[arg(long)]
    stop_signal: Option<String>,
    /// Seconds to wait for the stop signal before SIGKILL.
    #[arg(long)]
    stop_timeout: Option<u64>,
    /// Container hostname.
    #[arg(long)]
    hostname: Option<String>,
    /// Labels.
    #[arg(short, long = "label")]
    label: Vec<String>,
    /// Log options: max-size=SIZE (rotate at), max-file=N (files kept).
    #[arg(long = "log-opt", value_name = "KEY=VALUE")]
    log_opt: Vec<String>,
    /// Add a capability to Docker's default set (NET_ADMIN, ALL).
    #[arg(long = "cap-add", value_name = "CAP")]
    cap_add: Vec<String>,
    /// Drop a capability from it (ALL drops every one).
    #[arg(long = "cap-drop", value_name = "CAP")]
    cap_drop: Vec<String>,
    /// no-new-privileges (always on) or seccomp=unconfined.
    #[arg(long = "security-opt", value_name = "OPT")]
    security_opt: Vec<String>,
    /// A namespaced kernel parameter (net.core.somaxconn=1024).
    #[arg(long = "sysctl", value_name = "KEY=VALUE")]
    sysctl: Vec<String>,
    /// A resource limit: NAME=SOFT[:HARD] (nofile=1024:4096).
    #[arg(long = "ulimit", value_name = "NAME=SOFT[:HARD]")]
    ulimit: Vec<String>,
    /// Run a small init as PID 1 that passes signals on and reaps orphans.
    #[arg(long)]
    init: bool,
    /// An /etc/hosts line: HOST:IP.
    #[arg(long = "add-host", value_name = "HOST:IP")]
    add_host: Vec<String>,
    /// A name server.
    #[arg(long)]
    dns: Vec<std::net::IpAddr>,
    /// A search domain.
    #[arg(long = "dns-search")]
    dns_search: Vec<String>,
    /// A resolver option (ndots:2).
    #[arg(long = "dns-option")]
    dns_option: Vec<String>,
    /// The image, then the command and its arguments (everything after the
    /// image belongs to the command, as with Docker).
    #[arg(value_name = "IMAGE [COMMAND [ARG...]]", required = true, num_args = 1.., trailing_var_arg = true, allow_hyphen_values = true)]
    args: Vec<String>,
}

/// The confinement and resolution flags, as Docker's.
fn security(a: &RunArgs, cfg: &mut gantry_runtime::ContainerConfig) -> Result<(), String> {
    let sec = &mut cfg.security;
    for (from, to) in [
        (&a.cap_add, &mut sec.cap_add),
        (&a.cap_drop, &mut sec.cap_drop),
    ] {
        for c in from {
            to.push(gantry_units::capability(c)?);
        }
    }
    for o in &a.security_opt {
        match o.as_str() {
            "no-new-privileges" | "no-new-privileges:true" | "no-new-privileges=true" => {}
            "seccomp=unconfined" | "seccomp:unconfined" => sec.seccomp_unconfined = true,
            o => {
                return Err(format!(
                    "--security-opt {o:?}: use no-new-privileges or seccomp=unconfined"
                ))
            }
        }
    }
    for kv in &a.sysctl {
        let (k, v) = kv
            .split_once('=')
            .ok_or_else(|| format!("--sysctl {kv:?}: use KEY=VALUE"))?;
        sec.sysctls.insert(k.to_owned(), v.to_owned());
    }
    for u in &a.ulimit {
        let bad = || format!("--ulimit {u:?}: use NAME=SOFT[:HARD]");
        let (name, limits) = u.split_once('=').ok_or_else(bad)?;
        let num = |s: &str| {
            s.parse::<i64>()
                .map(|n| if n < 0 { u64::MAX } else { n as u64 })
        };
        let (soft, hard) = match limits.split_once(':') {
            Some((s, h)) => (num(s).map_err(|_| bad())?, num(h).map_err(|_| bad())?),
            None => {
                let n = num(limits).map_err(|_| bad())?;
                (n, n)
            }
        };
        sec.ulimits.insert(name.to_owned(), (soft, hard));
    }
    sec.init = a.init;
    let r = &mut cfg.resolution;
    for h in &a.add_host {
        let (host, ip) = h
            .split_once(':')
            .ok_or_else(|| format!("--add-host {h:?}: use HOST:IP"))?;
        let ip = ip
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse()
            .map_err(|_| format!("--add-host {h:?}: {ip:?} is not an IP address"))?;
        r.extra_hosts.push((host.to_owned(), ip));
    }
    r.dns.extend(a.dns.iter().copied());
    r.dns_search.extend(a.dns_search.iter().cloned());
    r.dns_opt.extend(a.dns_option.iter().cloned());
    Ok(())
}

impl RunArgs {
    fn image(&self) -> &str {
        &self.args[0]
    }
    fn cmd(&self) -> &[String] {
        &self.args[1..]
    }
}

#[derive(Args)]
pub(crate) struct PsArgs {
    /// Show all containers, not only running ones.
    #[arg(short, long)]
    all: bool,
    /// Only ids.
    #[arg(short, long)]
    quiet: bool,
    /// Output format.
    #[arg(long, value_enum, default_value_t)]
    format: Format,
}

#[derive(Args)]
pub(crate) struct StopArgs {
    /// Seconds to wait before SIGKILL (default: the container's, 10).
    #[arg(short = 't', long = "time")]
    time: Option<u64>,
    /// Containers.
    #[arg(required = true)]
    containers: Vec<String>,
}

#[derive(Args)]
pub(crate) struct KillArgs {
    /// Signal to send.
    #[arg(short, long, default_value = "KILL")]
    signal: String,
    /// Containers.
    #[arg(required = true)]
    containers: Vec<String>,
}

#[derive(Args)]
pub(crate) struct RmArgs {
    /// Kill and remove running containers.
    #[arg(short, long)]
    force: bool,
    /// Accepted for Docker compatibility (Gantry makes no anonymous volumes).
    #[arg(short, long)]
    volumes: bool,
    /// Containers.
    #[arg(required = true)]
    containers: Vec<String>,
}

#[derive(Args)]
pub(crate) struct ExecArgs {
    /// Keep stdin open.
    #[arg(short, long)]
    interactive: bool,
    /// Allocate a pseudo-terminal.
    #[arg(short, long)]
    tty: bool,
    /// Environment variables.
    #[arg(short, long = "env")]
    env: Vec<String>,
    /// User.
    #[arg(short, long)]
    user: Option<String>,
    /// Working directory.
    #[arg(short, long)]
    workdir: Option<String>,
    /// The container, then the command and its arguments.
    #[arg(value_name = "CONTAINER COMMAND [ARG...]", required = true, num_args = 2.., trailing_var_arg = true, allow_hyphen_values = true)]
    args: Vec<String>,
}

/// Fails with Docker's exit code 125 after printing the error.
fn fail125(e: impl std::fmt::Display) -> anyhow::Error {
    eprintln!("Error: {e}");
    Exit(125).into()
}

fn build_config(ctx: &Ctx, a: &RunArgs) -> anyhow::Result<ContainerConfig> {
    let store = ctx.store()?;
    let img = crate::images::local_or_pull(ctx, &store, a.image())
        .map_err(|e| fail125(format!("{e:#}")))?;
    let mut env = Vec::new();
    for f in &a.env_file {
        let text = std::fs::read_to_string(f)
            .map_err(|e| fail125(format!("env file {}: {e}", f.display())))?;
        env.extend(parse::env_file(&text));
    }
    env.extend(a.env.iter().cloned());
    let name = a.name.clone().unwrap_or_default();
    if !name.is_empty() && !gantry_runtime::valid_container_name(&name) {
        return Err(fail125(format!(
            "invalid container name {name:?}: only [a-zA-Z0-9][a-zA-Z0-9_.-] are allowed"
        )));
    }
    let overrides = gantry_image::container::Overrides {
        name,
        entrypoint: a.entrypoint.as_ref().map(|e| vec![e.clone()]),
        cmd: a.cmd().to_vec(),
        env,
        workdir: a.workdir.clone(),
        user: a.user.clone(),
        hostname: a.hostname.clone(),
        stop_signal: a.stop_signal.clone(),
        tty: a.tty,
        stdin: a.interactive,
    };
    let mut cfg = gantry_image::container::container_config(&store, a.image(), &img, &overrides)
        .map_err(|e| fail125(e.to_string()))?;
    cfg.read_only = a.read_only;
    cfg.auto_remove = a.rm;
    cfg.network = match a.network.as_str() {
        "bridge" | "default" => NetworkMode::Bridge,
        "none" => NetworkMode::None,
        "host" => NetworkMode::Host,
        other => {
            return Err(fail125(format!(
                "unknown network {other:?}: use bridge, none or host"
            )))
        }
    };
    cfg.restart = RestartPolicy::parse(&a.restart).ok_or_else(|| {
        fail125(format!(
            "invalid restart policy {:?}: use no, on-failure[:N] or always",
            a.restart
        ))
    })?;
    if a.rm && cfg.restart != RestartPolicy::No {
        return Err(fail125("conflicting options: --restart and --rm"));
    }
    if let Some(t) = a.stop_timeout {
        cfg.stop_timeout = t;
    }
    cfg.resources.memory = a
        .memory
        .as_deref()
        .map(parse::size)
        .transpose()
        .map_err(|e| fail125(format!("--memory: {e}")))?;
    cfg.resources.nano_cpus = a
        .cpus
        .as_deref()
        .map(parse::cpus)
        .transpose()
        .map_err(fail125)?;
    cfg.resources.cpu_shares = a.cpu_shares;
    cfg.resources.pids = a.pids_limit;
    security(a, &mut cfg).map_err(fail125)?;
    for o in &a.log_opt {
        match o.split_once('=') {
            Some(("max-size", v)) => {
                cfg.log_max_size =
                    parse::size(v).map_err(|e| fail125(format!("--log-opt max-size: {e}")))?
            }
            Some(("max-file", v)) => {
                let n: u32 = v.parse().ok().filter(|n| *n >= 1).ok_or_else(|| {
                    fail125(format!(
                        "--log-opt max-file: {v:?} is not a number of files >= 1"
                    ))
                })?;
                cfg.log_max_files = n - 1;
            }
            _ => {
                return Err(fail125(format!(
                    "unknown --log-opt {o:?}: use max-size=SIZE or max-file=N"
                )))
            }
        }
    }
    for l in &a.label {
        let (k, v) = parse::key_value(l).map_err(fail125)?;
        cfg.labels.insert(k, v);
    }
    let rt = ctx.runtime()?;
    for v in &a.volume {
        let mut m = parse::volume(v).map_err(fail125)?;
        if let MountKind::Volume { name } = &m.kind {
            m.source = rt
                .volumes()
                .create(name, BTreeMap::new())
                .map_err(fail125)?
                .mountpoint;
        }
        cfg.mounts.push(m);
    }
    for t in &a.tmpfs {
        let dst = t.split(':').next().unwrap_or_default();
        if !dst.starts_with('/') {
            return Err(fail125(format!(
                "invalid --tmpfs {t:?}: the path must be absolute"
            )));
        }
        cfg.mounts.push(Mount {
            kind: MountKind::Tmpfs,
            source: Default::default(),
            destination: dst.to_owned(),
            read_only: false,
            options: Default::default(),
        });
    }
    for p in &a.publish {
        if !cfg.network.has_veth() {
            return Err(fail125(
                "ports can only be published with the bridge network",
            ));
        }
        cfg.ports.extend(parse::port(p).map_err(fail125)?);
    }
    Ok(cfg)
}

pub(crate) fn run(ctx: &Ctx, a: RunArgs) -> anyhow::Result<u8> {
    let cfg = build_config(ctx, &a)?;
    let rt = ctx.runtime()?;
    rt.create(&cfg).map_err(fail125)?;
    if a.detach {
        match rt.start(&cfg.id) {
            Ok(_) => {
                println!("{}", cfg.id);
                Ok(0)
            }
            Err(gantry_runtime::RuntimeError::Start { code, msg }) => {
                eprintln!("Error: {msg}");
                Err(Exit(code as u8).into())
            }
            Err(e) => Err(fail125(e)),
        }
    } else {
        match rt.run_attached(&cfg.id) {
            Ok(code) => Ok(code.clamp(0, 255) as u8),
            Err(gantry_runtime::RuntimeError::Start { code, msg }) => {
                eprintln!("Error: {msg}");
                Err(Exit(code as u8).into())
            }
            Err(e) => Err(fail125(e)),
        }
    }
}

fn status_text(l: &Listed) -> String {
    let st = &l.state;
    match st.status {
        Status::Created => "Created".into(),
        Status::Running => st
            .started_at
            .map(|t| format!("Up {}", output::ago(t)))
            .unwrap_or_else(|| "Up".into()),
        Status::Restarting => format!("Restarting ({})", st.exit_code.unwrap_or(0)),
        Status::Exited => format!(
            "Exited ({}){}",
            st.exit_code.unwrap_or(0),
            st.finished_at
                .map(|t| format!(" {} ago", output::ago(t)))
                .unwrap_or_default()
        ),
    }
}

pub(crate) fn ps(ctx: &Ctx, a: PsArgs) -> anyhow::Result<u8> {
    let rt = ctx.runtime()?;
    let list: Vec<Listed> = rt
        .list()
        .into_iter()
        .filter(|c| a.all || matches!(c.state.status, Status::Running | Status::Restarting))
        .collect();
    if a.format == Format::Json {
        let v: Vec<_> = list.iter().map(inspect_json).collect();
        return output::json(&v).map(|()| 0);
    }
    if a.quiet {
        for c in &list {
            println!("{}", &c.config.id[..12]);
        }
        return Ok(0);
    }
    let rows = list
        .iter()
        .map(|c| {
            let mut cmd = c.config.process.args.join(" ");
            if cmd.len() > 20 {
                cmd = format!("{}…", cmd.chars().take(19).collect::<String>());
            }
            let ports = c
                .config
                .ports
                .iter()
                .map(|p| {
                    let ip = p.host_ip.map_or("0.0.0.0".to_owned(), |i| i.to_string());
                    format!("{ip}:{}->{}/tcp", p.host_port, p.container_port)
                })
                .collect::<Vec<_>>()
                .join(", ");
            vec![
                c.config.id[..12].to_owned(),
                c.config.image.clone(),
                format!("\"{cmd}\""),
                format!("{} ago", output::ago(c.config.created)),
                status_text(c),
                ports,
                c.config.name.clone(),
            ]
        })
        .collect();
    output::table(
        &[
            "CONTAINER ID",
            "IMAGE",
            "COMMAND",
            "CREATED",
            "STATUS",
            "PORTS",
            "NAMES",
        ],
        rows,
    );
    Ok(0)
}

fn each(
    ctx: &Ctx,
    names: &[String],
    mut f: impl FnMut(&gantry_runtime::Runtime, &str) -> anyhow::Result<()>,
) -> anyhow::Result<u8> {
    let rt = ctx.runtime()?;
    let mut failed = false;
    for n in names {
        let r = rt
            .find(n)
            .map_err(anyhow::Error::from)
            .and_then(|id| f(&rt, &id));
        match r {
            Ok(()) => println!("{n}"),
            Err(e) => {
                eprintln!("Error: {e:#}");
                failed = true;
            }
        }
    }
    Ok(u8::from(failed))
}

pub(crate) fn start(ctx: &Ctx, names: &[String]) -> anyhow::Result<u8> {
    each(ctx, names, |rt, id| {
        rt.start(id)?;
        Ok(())
    })
}

pub(crate) fn stop(ctx: &Ctx, a: StopArgs) -> anyhow::Result<u8> {
    each(ctx, &a.containers, |rt, id| {
        let t = a.time.unwrap_or(rt.config(id)?.stop_timeout);
        rt.stop(id, Duration::from_secs(t))?;
        Ok(())
    })
}

pub(crate) fn kill(ctx: &Ctx, a: KillArgs) -> anyhow::Result<u8> {
    let sig = parse::signal(&a.signal).map_err(anyhow::Error::msg)?;
    each(ctx, &a.containers, |rt, id| Ok(rt.kill(id, sig)?))
}

pub(crate) fn rm(ctx: &Ctx, a: RmArgs) -> anyhow::Result<u8> {
    each(ctx, &a.containers, |rt, id| Ok(rt.remove(id, a.force)?))
}

pub(crate) fn wait(ctx: &Ctx, names: &[String]) -> anyhow::Result<u8> {
    let rt = ctx.runtime()?;
    for n in names {
        let id = rt.find(n)?;
        println!("{}", rt.wait(&id)?);
    }
    Ok(0)
}

pub(crate) fn logs(ctx: &Ctx, a: &crate::logs::LogsArgs) -> anyhow::Result<u8> {
    let rt = ctx.runtime()?;
    let id = rt.find(&a.target)?;
    let dir = rt.container_dir(&id);
    let (since, until) = a.window()?;
    let in_range = |l: &gantry_runtime::logs::LogLine| {
        since.is_none_or(|s| l.time >= s) && until.is_none_or(|u| l.time < u)
    };
    let lines: Vec<_> = gantry_runtime::logs::read_all(&dir)
        .context("read logs")?
        .into_iter()
        .filter(|l| in_range(l))
        .collect();
    let skip = a.tail()?.map_or(0, |n| lines.len().saturating_sub(n));
    let print = |l: &gantry_runtime::logs::LogLine| -> std::io::Result<()> {
        if !in_range(l) {
            return Ok(());
        }
        let text = if a.format == crate::output::Format::Json {
            format!("{}\n", serde_json::to_string(l).unwrap_or_default())
        } else if a.timestamps {
            format!(
                "{} {}",
                l.time.to_rfc3339_opts(chrono::SecondsFormat::Nanos, true),
                l.log
            )
        } else {
            l.log.clone()
        };
        if l.stream == "stderr" && a.format != crate::output::Format::Json {
            let mut e = std::io::stderr().lock();
            e.write_all(text.as_bytes())?;
            e.flush()
        } else {
            let mut o = std::io::stdout().lock();
            o.write_all(text.as_bytes())?;
            o.flush()
        }
    };
    for l in &lines[skip..] {
        print(l)?;
    }
    if a.follow {
        let running = || {
            rt.state(&id)
                .map(|s| {
                    matches!(s.status, Status::Running | Status::Restarting)
                        || s.monitor_pid.is_some()
                })
                .unwrap_or(false)
        };
        if running() {
            gantry_runtime::logs::follow(&dir, print, || !running())?;
        }
    }
    Ok(0)
}

fn inspect_json(c: &Listed) -> serde_json::Value {
    serde_json::json!({
        "Id": c.config.id,
        "Name": c.config.name,
        "Created": c.config.created,
        "Image": c.config.image_id,
        "Config": {
            "Image": c.config.image,
            "Cmd": c.config.process.args,
            "Env": c.config.process.env,
            "WorkingDir": c.config.process.cwd,
            "User": c.config.process.user,
            "Tty": c.config.process.tty,
            "Hostname": c.config.hostname,
            "Labels": c.config.labels,
            "StopSignal": c.config.stop_signal,
            "StopTimeout": c.config.stop_timeout,
        },
        "HostConfig": {
            "Memory": c.config.resources.memory,
            "NanoCpus": c.config.resources.nano_cpus,
            "CpuShares": c.config.resources.cpu_shares,
            "PidsLimit": c.config.resources.pids,
            "ReadonlyRootfs": c.config.read_only,
            "AutoRemove": c.config.auto_remove,
            "RestartPolicy": c.config.restart,
            "NetworkMode": c.config.network,
            "PortBindings": c.config.ports,
        },
        "Mounts": c.config.mounts,
        "State": {
            "Status": c.state.status,
            "Running": c.state.status == Status::Running,
            "Pid": c.state.pid.unwrap_or(0),
            "ExitCode": c.state.exit_code.unwrap_or(0),
            "OOMKilled": c.state.oom_killed,
            "StartedAt": c.state.started_at,
            "FinishedAt": c.state.finished_at,
            "RestartCount": c.state.restart_count,
            "Error": c.state.error.clone().unwrap_or_default(),
        },
        "NetworkSettings": { "IPAddress": c.state.ip.map(|i| i.to_string()).unwrap_or_default() },
    })
}

pub(crate) fn inspect(ctx: &Ctx, names: &[String]) -> anyhow::Result<u8> {
    let rt = ctx.runtime()?;
    let mut out = Vec::new();
    for n in names {
        let id = rt.find(n)?;
        out.push(inspect_json(&Listed {
            config: rt.config(&id)?,
            state: rt.state(&id)?,
        }));
    }
    output::json(&out)?;
    Ok(0)
}

pub(crate) fn exec(ctx: &Ctx, a: ExecArgs) -> anyhow::Result<u8> {
    let rt = ctx.runtime()?;
    let id = rt.find(&a.args[0])?;
    let opts = ExecOptions {
        args: a.args[1..].to_vec(),
        env: a.env,
        user: a.user,
        workdir: a.workdir,
        tty: a.tty,
        stdin: a.interactive,
    };
    match rt.exec(&id, &opts) {
        Ok(code) => Ok(code.clamp(0, 255) as u8),
        Err(gantry_runtime::RuntimeError::Start { code, msg }) => {
            eprintln!("Error: {msg}");
            Err(Exit(code as u8).into())
        }
        Err(e) => Err(e.into()),
    }
}
