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
        /// The node.
        node: String,
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
