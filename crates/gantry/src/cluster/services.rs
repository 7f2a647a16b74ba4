//! `gantry deploy`, `stack` and `service`: stacks and services on the
//! cluster, and the progress of their rollouts.

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Subcommand};

use gantry_api::{
    Client, DeployRequest, DeployResponse, ServiceUpdate, ServiceView, StackView, TaskRecord,
    TaskState, UpdateStatus,
};

use crate::output::{self, Format};
use crate::Ctx;

use super::*;

#[derive(Args)]
pub(crate) struct DeployArgs {
    /// The stack file.
    #[arg(short = 'f', long = "file", alias = "compose-file", short_alias = 'c')]
    file: PathBuf,
    /// Variables for interpolation (default: .env beside the file, if any).
    #[arg(long = "env-file")]
    env_file: Option<PathBuf>,
    /// Deploy the services of this profile too (repeatable; also
    /// COMPOSE_PROFILES, comma-separated).
    #[arg(long = "profile")]
    profile: Vec<String>,
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
    /// Give the service a secret (or change how it sees one): NAME, or
    /// source=NAME,target=PATH,uid=N,gid=N,mode=0400.
    #[arg(long = "secret-add", value_name = "SECRET", value_parser = crate::parse::file_ref)]
    secret_add: Vec<gantry_stack::FileRef>,
    /// Take a secret from the service.
    #[arg(long = "secret-rm", value_name = "NAME")]
    secret_rm: Vec<String>,
    /// Give the service a config (as --secret-add).
    #[arg(long = "config-add", value_name = "CONFIG", value_parser = crate::parse::file_ref)]
    config_add: Vec<gantry_stack::FileRef>,
    /// Take a config from the service.
    #[arg(long = "config-rm", value_name = "NAME")]
    config_rm: Vec<String>,
    /// Return at once.
    #[arg(short, long)]
    detach: bool,
    /// The service.
    service: String,
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

pub(crate) fn deploy(ctx: &Ctx, a: DeployArgs) -> anyhow::Result<u8> {
    let (mut stack, env) =
        crate::stacks::load_with_env(&a.file, a.env_file.as_deref(), &a.profile)?;
    let (secrets, configs) = crate::stacks::file_values(&a.stack, &stack, &env)?;
    stack.resolve_files(&a.stack);
    gantry_stack::check::deploy(
        &a.stack,
        stack.services.iter().map(|(n, s)| (n.as_str(), s)),
    )
    .map_err(|e| anyhow::anyhow!(e))?;
    let c = client(ctx)?;
    // Services with build: are built and pushed first; a failed build
    // stops here, before anything is deployed.
    super::build::build_all(&c, &a.stack, &mut stack, &env)?;
    let r: DeployResponse = call(c.post(
        &format!("/v1/stacks/{}", a.stack),
        &DeployRequest {
            services: stack.services,
            prune: a.prune,
            secrets,
            configs,
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

pub(super) fn print_tasks(
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
                        .map(|(_, spec)| spec.image.clone())
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
                out.push(v);
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
                secret_add: a.secret_add.clone(),
                secret_rm: a.secret_rm.clone(),
                config_add: a.config_add.clone(),
                config_rm: a.config_rm.clone(),
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
