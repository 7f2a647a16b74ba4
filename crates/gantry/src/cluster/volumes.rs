//! `gantry volume ls|inspect|rm|backup|backups|restore|move` on a cluster (this host holds the admin
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
            "LAST BACKUP",
        ],
        list.into_iter()
            .map(|v| {
                let backup = last_backup(&v);
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
                    backup,
                ]
            })
            .collect(),
    );
    Ok(0)
}

/// `5 minutes ago`, `failed (2 in a row)`, `none yet` (scheduled) or
/// `-`.
fn last_backup(v: &VolumeView) -> String {
    let at = |ms: u64| {
        chrono::DateTime::from_timestamp_millis(i64::try_from(ms).unwrap_or(i64::MAX))
            .map_or_else(|| "-".into(), |t| format!("{} ago", output::ago(t)))
    };
    match (&v.last_backup, &v.backup_schedule) {
        (Some(b), _) if b.error.is_none() => at(b.at_ms),
        (Some(b), _) => format!("failed ({} in a row)", b.failures),
        (None, Some(_)) => "none yet".into(),
        (None, None) => "-".into(),
    }
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

/// `POST /v1/volumes/{name}/backup`.
pub(crate) fn backup(
    ctx: &Ctx,
    name: &str,
    req: &gantry_api::BackupRequest,
) -> anyhow::Result<gantry_api::BackupDone> {
    let c = client(ctx)?;
    call(c.post_long(&format!("/v1/volumes/{name}/backup"), req))
}

/// `POST /v1/volumes/{name}/backups`.
pub(crate) fn backups(
    ctx: &Ctx,
    name: &str,
    req: &gantry_api::BackupsRequest,
) -> anyhow::Result<Vec<gantry_api::Snapshot>> {
    let c = client(ctx)?;
    call(c.post_long(&format!("/v1/volumes/{name}/backups"), req))
}

/// `POST /v1/volumes/{name}/restore`.
pub(crate) fn restore(
    ctx: &Ctx,
    name: &str,
    req: &gantry_api::RestoreRequest,
) -> anyhow::Result<gantry_api::RestoreDone> {
    let c = client(ctx)?;
    call(c.post_long(&format!("/v1/volumes/{name}/restore"), req))
}

/// `POST /v1/volumes/{name}/move`.
pub(crate) fn move_volume(
    ctx: &Ctx,
    name: &str,
    req: &gantry_api::MoveRequest,
    format: Format,
) -> anyhow::Result<u8> {
    anyhow::ensure!(
        on_cluster(ctx),
        "volume move is for a cluster: run it where the admin credential is, or give -H"
    );
    let c = client(ctx)?;
    let d: gantry_api::MoveDone = call(c.post_long(&format!("/v1/volumes/{name}/move"), req))?;
    if format == Format::Json {
        return output::json(&d).map(|()| 0);
    }
    print_moved(&d);
    Ok(0)
}

/// One line for a move done.
pub(crate) fn print_moved(d: &gantry_api::MoveDone) {
    let stopped = if d.stopped.is_empty() {
        String::new()
    } else {
        format!(
            "; {} stopped for {:.1}s",
            d.stopped.join(", "),
            d.stopped_ms as f64 / 1000.0
        )
    };
    println!(
        "volume {} moved from {} to {}: {} copied while running, {} at the end{stopped}",
        d.volume,
        d.from,
        d.to,
        output::size(d.first.bytes),
        output::size(d.last.bytes),
    );
}
