//! `gantry volume create|ls|inspect|rm|prune`.

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
    /// List volumes.
    #[command(alias = "list")]
    Ls {
        /// Only names.
        #[arg(short, long)]
        quiet: bool,
        /// Output format.
        #[arg(long, value_enum, default_value_t)]
        format: Format,
    },
    /// Show volumes as JSON.
    Inspect {
        /// Volumes.
        #[arg(required = true)]
        names: Vec<String>,
    },
    /// Remove volumes no container uses.
    Rm {
        /// Also when a stopped container refers to it.
        #[arg(short, long)]
        force: bool,
        /// Volumes.
        #[arg(required = true)]
        names: Vec<String>,
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
        VolumeCmd::Ls { quiet, format } => {
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
        VolumeCmd::Inspect { names } => {
            let list = names
                .iter()
                .map(|n| vols.inspect(n))
                .collect::<Result<Vec<_>, _>>()?;
            output::json(&list)?;
        }
        VolumeCmd::Rm { force, names } => {
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
    }
    Ok(0)
}
