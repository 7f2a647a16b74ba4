//! `gantry volume create|ls|inspect|rm|prune` (on a cluster, `ls`, `inspect`
//! and `rm` go to its managers), and `backup|backups|restore` (`backups.rs`).

use std::collections::{BTreeMap, BTreeSet};

use clap::Subcommand;
use gantry_runtime::MountKind;

use crate::output::{self, Format};
use crate::{parse, Ctx};

#[derive(Subcommand)]
pub(crate) enum VolumeCmd {
    /// Create a volume.
    Create {
        /// Labels.
        #[arg(short, long = "label")]
        label: Vec<String>,
        /// The local driver's options, as Docker's: type=nfs, o=addr=...,
        /// device=:/export (mounted as `mount -t TYPE -o O DEVICE`).
        #[arg(short = 'o', long = "opt")]
        opt: Vec<String>,
        /// Name.
        name: String,
    },
    /// List volumes (on a cluster: every node's, with their size, limit
    /// and users).
    #[command(alias = "list")]
    Ls {
        /// Only names.
        #[arg(short, long)]
        quiet: bool,
        /// This host's volumes only, even on a cluster's manager.
        #[arg(long)]
        local: bool,
        /// Output format.
        #[arg(long, value_enum, default_value_t)]
        format: Format,
    },
    /// Show volumes as JSON (on a cluster: each on every node that has it).
    Inspect {
        /// This host's volumes only, even on a cluster's manager.
        #[arg(long)]
        local: bool,
        /// Volumes.
        #[arg(required = true)]
        names: Vec<String>,
    },
    /// Remove volumes no container uses (on a cluster: no service or task
    /// mounts, from every node that has them).
    Rm {
        /// Also when a stopped container refers to it.
        #[arg(short, long)]
        force: bool,
        /// This host's volumes only, even on a cluster's manager.
        #[arg(long)]
        local: bool,
        /// Volumes.
        #[arg(required = true)]
        names: Vec<String>,
    },
    /// Back a volume up (on the host that holds it): a snapshot in a
    /// repository, deduplicated, compressed and encrypted.
    Backup(crate::backups::BackupArgs),
    /// List a volume's snapshots in a repository.
    Backups(crate::backups::BackupsArgs),
    /// Restore a snapshot into the volume (stopped), or into a new one.
    Restore(crate::backups::RestoreArgs),
    /// Move a volume to another node of the cluster, its services with
    /// it: copied while they run, then, with them stopped, what changed.
    Move {
        /// The node to move it to (default: one where its services may
        /// run, with the most free disk).
        #[arg(long, value_name = "NODE")]
        to: Option<String>,
        /// The node it is on, when several have a volume of that name.
        #[arg(long, value_name = "NODE")]
        node: Option<String>,
        /// Output format.
        #[arg(long, value_enum, default_value_t)]
        format: Format,
        /// The volume.
        name: String,
    },
    /// Remove all volumes no container refers to.
    Prune {
        /// Do not ask (prune never asks).
        #[arg(short, long)]
        force: bool,
    },
}

/// Volume name -> (a container that refers to it, whether it runs).
fn users(ctx: &Ctx) -> anyhow::Result<BTreeMap<String, (String, bool)>> {
    let rt = ctx.runtime()?;
    let mut m = BTreeMap::new();
    for c in rt.list() {
        let running = matches!(
            c.state.status,
            gantry_runtime::Status::Running | gantry_runtime::Status::Restarting
        );
        for mount in &c.config.mounts {
            if let MountKind::Volume { name } = &mount.kind {
                let e = m
                    .entry(name.clone())
                    .or_insert((c.config.name.clone(), running));
                if running {
                    *e = (c.config.name.clone(), true);
                }
            }
        }
    }
    Ok(m)
}

pub(crate) fn run(ctx: &Ctx, cmd: VolumeCmd) -> anyhow::Result<u8> {
    use crate::cluster::volumes as cluster;
    let cmd = match cmd {
        VolumeCmd::Backup(a) => return crate::backups::backup(ctx, a),
        VolumeCmd::Backups(a) => return crate::backups::backups(ctx, a),
        VolumeCmd::Restore(a) => return crate::backups::restore(ctx, a),
        VolumeCmd::Move {
            to,
            node,
            format,
            name,
        } => {
            let req = gantry_api::MoveRequest { to, node };
            return cluster::move_volume(ctx, &name, &req, format);
        }
        c => c,
    };
    match &cmd {
        VolumeCmd::Ls {
            quiet,
            local: false,
            format,
        } if cluster::on_cluster(ctx) => return cluster::ls(ctx, *quiet, *format),
        VolumeCmd::Inspect {
            local: false,
            names,
        } if cluster::on_cluster(ctx) => return cluster::inspect(ctx, names),
        VolumeCmd::Rm {
            local: false,
            names,
            ..
        } if cluster::on_cluster(ctx) => return cluster::rm(ctx, names),
        _ => {}
    }
    let rt = ctx.runtime()?;
    let vols = rt.volumes();
    match cmd {
        VolumeCmd::Create { label, opt, name } => {
            let pairs = |l: &[String]| -> anyhow::Result<BTreeMap<String, String>> {
                l.iter()
                    .map(|x| parse::key_value(x).map_err(anyhow::Error::msg))
                    .collect()
            };
            println!(
                "{}",
                vols.create_with(&name, pairs(&label)?, pairs(&opt)?)?.name
            );
        }
        VolumeCmd::Ls { quiet, format, .. } => {
            let list = vols.list();
            if format == Format::Json {
                return output::json(&list).map(|()| 0);
            }
            if quiet {
                list.iter().for_each(|v| println!("{}", v.name));
                return Ok(0);
            }
            output::table(
                &["DRIVER", "VOLUME NAME"],
                list.into_iter().map(|v| vec![v.driver, v.name]).collect(),
            );
        }
        VolumeCmd::Inspect { names, .. } => {
            let list = names
                .iter()
                .map(|n| vols.inspect(n))
                .collect::<Result<Vec<_>, _>>()?;
            output::json(&list)?;
        }
        VolumeCmd::Rm { force, names, .. } => {
            let users = users(ctx)?;
            let mut failed = false;
            for n in &names {
                let r = match users.get(n) {
                    Some((c, running)) if *running || !force => {
                        Err(gantry_runtime::VolumeError::InUse {
                            name: n.clone(),
                            container: c.clone(),
                        })
                    }
                    _ => vols.remove(n),
                };
                match r {
                    Ok(()) => println!("{n}"),
                    Err(e) => {
                        eprintln!("Error: {e}");
                        failed = true;
                    }
                }
            }
            return Ok(u8::from(failed));
        }
        VolumeCmd::Prune { .. } => {
            let used: BTreeSet<String> = users(ctx)?.into_keys().collect();
            let mut n = 0;
            for v in vols.list() {
                if !used.contains(&v.name) {
                    vols.remove(&v.name)?;
                    println!("Deleted: {}", v.name);
                    n += 1;
                }
            }
            println!("Total: {n} volume(s) removed");
        }
        VolumeCmd::Backup(_)
        | VolumeCmd::Backups(_)
        | VolumeCmd::Restore(_)
        | VolumeCmd::Move { .. } => {
            unreachable!("handled above")
        }
    }
    Ok(0)
}
