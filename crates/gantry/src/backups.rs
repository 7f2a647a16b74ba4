//! `gantry volume backup|backups|restore` on the host that holds the
//! volume: snapshots of its folder in a repository (a folder, or an
//! S3-compatible bucket: `s3://BUCKET/PREFIX`, the `AWS_*` variables or
//! `?endpoint=URL&region=R`), deduplicated, compressed and encrypted with
//! the key in `--key-file` (a secret's value).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use clap::Args;
use gantry_backup::{Repo, Snapshot};

use crate::output::{self, Format};
use crate::Ctx;

/// Where the repository is and what opens it.
#[derive(Args, Debug, Clone)]
pub(crate) struct RepoArgs {
    /// The key: a file holding the secret that encrypts the repository
    /// (any bytes; the same for every backup of it).
    #[arg(long, value_name = "FILE")]
    key_file: PathBuf,
}

/// `gantry volume backup`.
#[derive(Args, Debug)]
pub(crate) struct BackupArgs {
    /// The repository: an absolute folder, file:///FOLDER or
    /// s3://BUCKET/PREFIX (made at the first backup).
    #[arg(long, value_name = "URL")]
    to: String,
    #[command(flatten)]
    repo: RepoArgs,
    /// Leave the containers that mount the volume running while it is
    /// read (by default they are frozen for the backup's length, so that
    /// the snapshot is one moment of the volume).
    #[arg(long)]
    no_freeze: bool,
    /// A command run (`sh -c`) in each running container that mounts the
    /// volume before the backup (a database dump, a flush); the containers
    /// are not frozen then. Its failure stops the backup.
    #[arg(long, value_name = "CMD")]
    pre: Option<String>,
    /// A command run in each of them after the backup, even a failed one.
    #[arg(long, value_name = "CMD")]
    post: Option<String>,
    /// Output format.
    #[arg(long, value_enum, default_value_t)]
    format: Format,
    /// The volume.
    name: String,
}

/// Containers frozen while a volume is read, thawed when dropped.
struct Frozen<'a> {
    rt: &'a gantry_runtime::Runtime,
    ids: Vec<String>,
}

impl Drop for Frozen<'_> {
    fn drop(&mut self) {
        for id in &self.ids {
            if let Err(e) = self.rt.freeze(id, false) {
                eprintln!("Warning: thawing container {id}: {e}");
            }
        }
    }
}

/// The running containers that mount volume `name`: (id, name).
fn users_of(rt: &gantry_runtime::Runtime, name: &str) -> Vec<(String, String)> {
    rt.volume_users(name)
        .into_iter()
        .filter(|c| c.state.status == gantry_runtime::Status::Running)
        .map(|c| (c.config.id, c.config.name))
        .collect()
}

/// Runs a hook in each container; the first failure is the error.
fn hook(
    rt: &gantry_runtime::Runtime,
    users: &[(String, String)],
    cmd: &str,
    what: &str,
) -> anyhow::Result<()> {
    for (id, name) in users {
        let code = rt.exec(
            id,
            &gantry_runtime::ExecOptions {
                args: vec!["sh".into(), "-c".into(), cmd.to_owned()],
                ..Default::default()
            },
        )?;
        anyhow::ensure!(
            code == 0,
            "the {what} command exited with {code} in container {name}"
        );
    }
    Ok(())
}

/// `gantry volume backups`.
#[derive(Args, Debug)]
pub(crate) struct BackupsArgs {
    /// The repository.
    #[arg(long, value_name = "URL")]
    repo: String,
    #[command(flatten)]
    key: RepoArgs,
    /// Output format.
    #[arg(long, value_enum, default_value_t)]
    format: Format,
    /// The volume.
    name: String,
}

/// `gantry volume restore`.
#[derive(Args, Debug)]
pub(crate) struct RestoreArgs {
    /// The snapshot: its id, a unique prefix of it, or `latest`.
    #[arg(long, value_name = "ID")]
    from: String,
    /// The repository.
    #[arg(long, value_name = "URL")]
    repo: String,
    #[command(flatten)]
    key: RepoArgs,
    /// A new volume to restore into (default: the volume itself, whose
    /// content the snapshot's replaces once it is wholly restored).
    #[arg(long, value_name = "VOLUME")]
    to: Option<String>,
    /// The volume the snapshot is of.
    name: String,
}

fn key(a: &RepoArgs) -> anyhow::Result<zeroize::Zeroizing<Vec<u8>>> {
    let k = zeroize::Zeroizing::new(
        std::fs::read(&a.key_file)
            .map_err(|e| anyhow::anyhow!("--key-file {}: {e}", a.key_file.display()))?,
    );
    anyhow::ensure!(
        k.len() >= 16,
        "--key-file {}: a key has at least 16 bytes",
        a.key_file.display()
    );
    Ok(k)
}

fn run<T>(f: impl std::future::Future<Output = anyhow::Result<T>>) -> anyhow::Result<T> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?
        .block_on(f)
}

fn host() -> String {
    nix::unistd::gethostname()
        .map(|h| h.to_string_lossy().into_owned())
        .unwrap_or_default()
}

pub(crate) fn backup(ctx: &Ctx, a: BackupArgs) -> anyhow::Result<u8> {
    let rt = ctx.runtime()?;
    let v = rt.volumes().inspect(&a.name)?;
    rt.volumes().ensure_mounted(&v)?;
    let k = key(&a.repo)?;
    // One moment of the volume: its users frozen while it is read, or
    // their own commands around it.
    let users = users_of(&rt, &a.name);
    if let Some(pre) = &a.pre {
        if let Err(e) = hook(&rt, &users, pre, "--pre") {
            if let Some(post) = &a.post {
                let _ = hook(&rt, &users, post, "--post");
            }
            return Err(e);
        }
    }
    let mut frozen = Frozen {
        rt: &rt,
        ids: Vec::new(),
    };
    if !a.no_freeze && a.pre.is_none() {
        for (id, name) in &users {
            rt.freeze(id, true)
                .map_err(|e| anyhow::anyhow!("freezing container {name}: {e}"))?;
            frozen.ids.push(id.clone());
        }
    }
    let snap = run(async {
        let repo = Arc::new(Repo::open_or_init(&a.to, &k).await?);
        Ok(gantry_backup::backup(repo, v.mountpoint.clone(), &a.name, &host()).await?)
    });
    let n_frozen = frozen.ids.len();
    drop(frozen);
    if let Some(post) = &a.post {
        hook(&rt, &users, post, "--post")?;
    }
    let snap = snap?;
    if a.format == Format::Json {
        output::json(&snap)?;
    } else {
        let s = &snap.stats;
        println!(
            "snapshot {} saved: {} files, {} ({} unchanged), {} new, {} stored, in {:.1}s{}",
            &snap.id[..8],
            s.files,
            output::size(s.bytes),
            s.unchanged_files,
            output::size(s.new_bytes),
            output::size(s.stored_bytes),
            s.millis as f64 / 1000.0,
            if n_frozen > 0 {
                format!(" ({n_frozen} container(s) frozen meanwhile)")
            } else {
                String::new()
            }
        );
    }
    Ok(0)
}

pub(crate) fn backups(a: BackupsArgs) -> anyhow::Result<u8> {
    let k = key(&a.key)?;
    let list: Vec<Snapshot> = run(async {
        let repo = Repo::open_or_init(&a.repo, &k).await?;
        Ok(gantry_backup::snapshots(&repo).await?)
    })?
    .into_iter()
    .filter(|s| s.volume == a.name)
    .collect();
    if a.format == Format::Json {
        return output::json(&list).map(|()| 0);
    }
    output::table(
        &["ID", "TIME", "HOST", "FILES", "SIZE", "STORED"],
        list.into_iter()
            .map(|s| {
                vec![
                    s.id[..8].to_owned(),
                    s.time.format("%Y-%m-%d %H:%M:%S").to_string(),
                    s.host,
                    s.stats.files.to_string(),
                    output::size(s.stats.bytes),
                    output::size(s.stats.stored_bytes),
                ]
            })
            .collect(),
    );
    Ok(0)
}

/// Moves what `from` holds into `into` (same filesystem), after removing
/// everything else `into` holds.
fn replace_contents(into: &Path, from: &Path) -> std::io::Result<()> {
    for e in std::fs::read_dir(into)? {
        let e = e?;
        if e.path() == from {
            continue;
        }
        if e.file_type()?.is_dir() {
            std::fs::remove_dir_all(e.path())?;
        } else {
            std::fs::remove_file(e.path())?;
        }
    }
    for e in std::fs::read_dir(from)? {
        let e = e?;
        std::fs::rename(e.path(), into.join(e.file_name()))?;
    }
    let md = std::fs::metadata(from)?;
    std::fs::set_permissions(into, md.permissions())?;
    std::os::unix::fs::chown(
        into,
        Some(std::os::unix::fs::MetadataExt::uid(&md)),
        Some(std::os::unix::fs::MetadataExt::gid(&md)),
    )?;
    std::fs::remove_dir(from)
}

pub(crate) fn restore(ctx: &Ctx, a: RestoreArgs) -> anyhow::Result<u8> {
    let rt = ctx.runtime()?;
    let vols = rt.volumes();
    let target = a.to.clone().unwrap_or_else(|| a.name.clone());
    let in_place = a.to.is_none();
    let v = if in_place {
        if let Some(c) = rt.volume_users(&a.name).first() {
            anyhow::bail!(
                "volume {} is in use by container {}: stop it to restore in place, or give --to NEW",
                a.name,
                c.config.name
            );
        }
        vols.inspect(&a.name)?
    } else {
        anyhow::ensure!(
            vols.inspect(&target).is_err(),
            "volume {target} exists: --to names a new volume"
        );
        let from = vols.inspect(&a.name).ok();
        vols.create_with(
            &target,
            Default::default(),
            from.map(|v| v.options).unwrap_or_default(),
        )?
    };
    vols.ensure_mounted(&v)?;
    let k = key(&a.key)?;
    // Restored beside the content, which it replaces only when whole.
    let tmp = v.mountpoint.join(".gantry-restore");
    let _ = std::fs::remove_dir_all(&tmp);
    let done = run(async {
        let repo = Arc::new(Repo::open_or_init(&a.repo, &k).await?);
        let snap = gantry_backup::find(&repo, &a.from, Some(&a.name)).await?;
        let done = gantry_backup::restore(repo, &snap, tmp.clone()).await?;
        Ok((snap, done))
    });
    let (snap, done) = match done {
        Ok(d) => d,
        Err(e) => {
            let _ = std::fs::remove_dir_all(&tmp);
            if !in_place {
                let _ = vols.remove(&target);
            }
            return Err(e);
        }
    };
    replace_contents(&v.mountpoint, &tmp)?;
    // The volume is no longer fresh: an image does not fill it.
    vols.take_fresh(&target);
    println!(
        "restored snapshot {} of {} into {target}: {} files, {}",
        &snap.id[..8],
        a.name,
        done.files,
        output::size(done.bytes)
    );
    Ok(0)
}
