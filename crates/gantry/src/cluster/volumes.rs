//! `gantry volume ls|inspect|rm` on a cluster (this host holds the admin
//! credential, or `-H` names a manager): every volume on every node, its
//! size and limit as its node last measured them, and the services and
//! tasks that mount it; `rm` is refused while any mounts it.

use gantry_api::{VolumeRemoved, VolumeView};

use crate::output::{self, Format};
use crate::Ctx;

use super::{call, client};

/// Whether volume commands go to the cluster: a manager named with `-H`,
/// or the admin credential here.
pub(crate) fn on_cluster(ctx: &Ctx) -> bool {
    ctx.host.is_some() || gantry_api::AdminConfig::path_in(&ctx.config_dir).exists()
}

pub(crate) fn ls(ctx: &Ctx, quiet: bool, format: Format) -> anyhow::Result<u8> {
    let c = client(ctx)?;
    let list: Vec<VolumeView> = call(c.get("/v1/volumes"))?;
    if format == Format::Json {
        return output::json(&list).map(|()| 0);
    }
    if quiet {
        let mut names: Vec<&str> = list.iter().map(|v| v.name.as_str()).collect();
        names.dedup();
        names.iter().for_each(|n| println!("{n}"));
        return Ok(0);
    }
    output::table(
        &[
            "VOLUME NAME",
            "NODE",
            "USED",
            "LIMIT",
            "FREE",
            "SERVICES",
            "TASKS",
        ],
        list.into_iter()
            .map(|v| {
                vec![
                    v.name,
                    if v.node_up {
                        v.hostname
                    } else {
                        format!("{} (down)", v.hostname)
                    },
                    v.used.map_or_else(|| "-".into(), output::size),
                    v.limit.map_or_else(|| "-".into(), output::size),
                    v.free.map_or_else(|| "-".into(), output::size),
                    if v.services.is_empty() {
                        "-".into()
                    } else {
                        v.services.join(",")
                    },
                    v.tasks.len().to_string(),
                ]
            })
            .collect(),
    );
    Ok(0)
}

pub(crate) fn inspect(ctx: &Ctx, names: &[String]) -> anyhow::Result<u8> {
    let c = client(ctx)?;
    let list: Vec<VolumeView> = call(c.get("/v1/volumes"))?;
    let mut out = Vec::new();
    for n in names {
        let found: Vec<&VolumeView> = list.iter().filter(|v| &v.name == n).collect();
        anyhow::ensure!(!found.is_empty(), "no such volume: {n}");
        out.extend(found);
    }
    output::json(&out)?;
    Ok(0)
}

pub(crate) fn rm(ctx: &Ctx, names: &[String]) -> anyhow::Result<u8> {
    let c = client(ctx)?;
    let mut failed = false;
    for n in names {
        match call(c.delete::<VolumeRemoved>(&format!("/v1/volumes/{n}"))) {
            Ok(_) => println!("{n}"),
            Err(e) => {
                eprintln!("Error: {e:#}");
                failed = true;
            }
        }
    }
    Ok(u8::from(failed))
}
