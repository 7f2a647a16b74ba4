//! `gantry node` and `join-token`.

use std::time::Duration;

use clap::Subcommand;

use gantry_api::{Client, JoinTokenView, NodeUpdate, NodeView};
use gantry_sched::Availability;

use crate::output::{self, Format};
use crate::Ctx;

use super::*;

#[derive(Subcommand)]
pub(crate) enum NodeCmd {
    /// List nodes.
    Ls {
        /// Output format.
        #[arg(long, value_enum, default_value_t)]
        format: Format,
    },
    /// List the tasks placed on nodes (as `docker node ps`).
    Ps {
        /// Nodes (id, id prefix or hostname).
        #[arg(required = true)]
        nodes: Vec<String>,
        /// Output format.
        #[arg(long, value_enum, default_value_t)]
        format: Format,
        /// Only tasks that should be running.
        #[arg(long)]
        no_history: bool,
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
        /// First move the volumes there that services mount to other
        /// nodes, the services with them (gantry volume move).
        #[arg(long)]
        with_volumes: bool,
        /// The node.
        node: String,
    },
    /// Make the managers on these nodes' hosts voting members of the
    /// managers' group (as `docker node promote`).
    Promote {
        /// Nodes (id, id prefix or hostname), or managers (member id).
        #[arg(required = true)]
        nodes: Vec<String>,
    },
    /// Make them non-voting members: they keep a copy of the state and
    /// answer clients, but no longer count for a quorum. Demoting the
    /// leader makes the others elect one.
    Demote {
        /// Nodes (id, id prefix or hostname), or managers (member id).
        #[arg(required = true)]
        nodes: Vec<String>,
    },
    /// Let a node take tasks again.
    Activate {
        /// The node.
        node: String,
    },
    /// Confirm that nodes the storm guard holds are down: their tasks are
    /// rescheduled on the nodes that are up.
    #[command(name = "confirm-down")]
    ConfirmDown {
        /// Nodes.
        #[arg(required = true)]
        nodes: Vec<String>,
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

pub(crate) fn join_token(
    ctx: &Ctx,
    role: Option<String>,
    rotate: bool,
    quiet: bool,
) -> anyhow::Result<u8> {
    let manager = match role.as_deref() {
        None | Some("worker") => false,
        Some("manager") => true,
        Some(r) => anyhow::bail!("{r:?}: worker or manager"),
    };
    let q = if manager { "?role=manager" } else { "" };
    let c = client(ctx)?;
    let v: JoinTokenView = if rotate {
        call(c.post(&format!("/v1/join-token/rotate{q}"), &()))?
    } else {
        call(c.get(&format!("/v1/join-token{q}")))?
    };
    if quiet {
        println!("{}", v.token);
    } else {
        if rotate {
            println!("Join token rotated; the old one no longer joins new nodes.\n");
        }
        if manager {
            println!(
                "To add a manager to this cluster, run on its host:\n\n    gantry server --join {} --token {}\n",
                v.manager, v.token
            );
        } else {
            println!(
                "To add a node to this cluster, run on it:\n\n    gantry agent --manager {} --token {}\n",
                v.manager, v.token
            );
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

/// Promotes or demotes the managers on `nodes`' hosts (a node names its
/// host's manager; a member id names itself).
fn set_role(c: &Client, nodes: &[String], role: &str) -> anyhow::Result<()> {
    for n in nodes {
        let name = match call(c.get::<NodeView>(&format!("/v1/nodes/{n}"))) {
            Ok(v) => v.record.hostname,
            Err(_) => n.clone(),
        };
        call(c.post::<_, ()>(
            &format!("/v1/managers/{name}"),
            &serde_json::json!({ "role": role }),
        ))?;
        println!("{n}");
    }
    Ok(())
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
                                match (n.record.up, n.record.held) {
                                    (true, _) => "Ready",
                                    (false, true) => "Down (held)",
                                    (false, false) => "Down",
                                }
                                .into(),
                                capitalised(&state_name(&n.record.availability)),
                                n.manager_status.clone().unwrap_or_default(),
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
        NodeCmd::Ps {
            nodes,
            format,
            no_history,
        } => {
            let mut tasks = Vec::new();
            for n in nodes {
                let mut v: Vec<gantry_api::TaskRecord> =
                    call(c.get(&format!("/v1/tasks?node={n}")))?;
                tasks.append(&mut v);
            }
            return super::services::print_tasks(&c, tasks, format, no_history);
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
        NodeCmd::Promote { nodes } => set_role(&c, &nodes, "voter")?,
        NodeCmd::Demote { nodes } => set_role(&c, &nodes, "learner")?,
        NodeCmd::Drain {
            detach,
            with_volumes,
            node,
        } => {
            if with_volumes {
                move_volumes_off(&c, &node)?;
            }
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
        NodeCmd::ConfirmDown { nodes } => {
            let mut code = 0;
            for n in nodes {
                match call(c.post::<_, NodeView>(&format!("/v1/nodes/{n}/confirm-down"), &())) {
                    Ok(v) => println!("{}", v.record.id),
                    Err(e) => {
                        eprintln!("Error: {e}");
                        code = 1;
                    }
                }
            }
            return Ok(code);
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

/// `gantry manager`.
#[derive(clap::Subcommand)]
pub(crate) enum ManagerCmd {
    /// List the managers: their address, host and status (Leader,
    /// Reachable, Unreachable, or Learner for one that does not vote).
    Ls {
        /// Output format.
        #[arg(long, value_enum, default_value_t)]
        format: Format,
    },
    /// Remove a manager from the group (it stops getting the state; stop
    /// its process, and start it again with --join to bring it back).
    Rm {
        /// Managers (member id or host name).
        #[arg(required = true)]
        managers: Vec<String>,
    },
}

pub(crate) fn manager(ctx: &Ctx, cmd: ManagerCmd) -> anyhow::Result<u8> {
    let c = client(ctx)?;
    match cmd {
        ManagerCmd::Ls { format } => {
            let v: Vec<gantry_api::ManagerView> = call(c.get("/v1/managers"))?;
            if format == Format::Json {
                output::json(&v)?;
            } else {
                output::table(
                    &["ID", "HOSTNAME", "ADDRESS", "MANAGER STATUS"],
                    v.into_iter()
                        .map(|m| vec![m.id, m.hostname, m.addr, m.status])
                        .collect(),
                );
            }
        }
        ManagerCmd::Rm { managers } => {
            for m in managers {
                call(c.post::<_, ()>(
                    &format!("/v1/managers/{m}"),
                    &serde_json::json!({ "role": "none" }),
                ))?;
                println!("{m}");
            }
        }
    }
    Ok(0)
}

/// Moves the volumes on `node` that services mount to other nodes.
fn move_volumes_off(c: &Client, node: &str) -> anyhow::Result<()> {
    let n: NodeView = call(c.get(&format!("/v1/nodes/{node}")))?;
    let vols: Vec<gantry_api::VolumeView> = call(c.get("/v1/volumes"))?;
    for v in vols
        .iter()
        .filter(|v| v.node == n.record.id && !v.services.is_empty())
    {
        let req = gantry_api::MoveRequest {
            to: None,
            node: Some(n.record.id.clone()),
        };
        let d: gantry_api::MoveDone =
            call(c.post_long(&format!("/v1/volumes/{}/move", v.name), &req))?;
        super::volumes::print_moved(&d);
    }
    Ok(())
}
