//! `gantry volume backup|backups|restore`: snapshots of a volume's
//! folder in a repository (a folder, or an S3-compatible bucket:
//! `s3://BUCKET/PREFIX`, with `?endpoint=URL&region=R`), deduplicated,
//! compressed and encrypted.
//!
//! On a cluster (the admin credential here, or `-H`), the manager opens
//! the secrets named by `--key-secret` and `--credentials` (or those of
//! the volume's `x-gantry` backup settings) and the node that holds the
//! volume does the work. With `--key-file` (or `--local`), this host's
//! volume, with the key in that file and S3 settings from the `AWS_*`
//! variables.

use std::path::PathBuf;
use std::sync::Arc;

use clap::Args;
use gantry_agent::backup::{Consistency, Target};
use gantry_api::{RepoRef, Snapshot};

use crate::output::{self, Format};
use crate::Ctx;

/// What opens the repository.
#[derive(Args, Debug, Clone)]
pub(crate) struct RepoArgs {
    /// This host: a file holding the key that encrypts the repository
    /// (any bytes, at least 16; the same for every backup of it).
    #[arg(long, value_name = "FILE", conflicts_with_all = ["key_secret", "credentials"])]
    key_file: Option<PathBuf>,
    /// On a cluster: the secret whose value is the key (default: the
    /// volume's x-gantry backup key).
    #[arg(long, value_name = "SECRET")]
    key_secret: Option<String>,
    /// On a cluster: the secret holding S3 settings (AWS_ACCESS_KEY_ID=...
    /// lines).
    #[arg(long, value_name = "SECRET")]
    credentials: Option<String>,
    /// This host's volume, even on a cluster's manager (needs --key-file).
    #[arg(long)]
    local: bool,
}

impl RepoArgs {
    /// Whether the cluster does it.
    fn on_cluster(&self, ctx: &Ctx) -> bool {
        !self.local && self.key_file.is_none() && crate::cluster::volumes::on_cluster(ctx)
    }

    fn cluster(&self, url: Option<&String>) -> RepoRef {
        RepoRef {
            repo: url.cloned(),
            key_secret: self.key_secret.clone(),
            credentials: self.credentials.clone(),
        }
    }
}

/// `gantry volume backup`.
#[derive(Args, Debug)]
pub(crate) struct BackupArgs {
    /// The repository: an absolute folder, file:///FOLDER or
    /// s3://BUCKET/PREFIX (made at the first backup; on a cluster, the
    /// volume's x-gantry backup target when left out).
    #[arg(long, value_name = "URL")]
    to: Option<String>,
    #[command(flatten)]
    repo: RepoArgs,
    /// On a cluster: the node whose volume (when several hold one of
    /// that name).
    #[arg(long, value_name = "NODE")]
    node: Option<String>,
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

/// `gantry volume backups`.
#[derive(Args, Debug)]
pub(crate) struct BackupsArgs {
    /// The repository (on a cluster, the volume's x-gantry backup target
    /// when left out).
    #[arg(long, value_name = "URL")]
    repo: Option<String>,
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
    /// The repository (on a cluster, the volume's x-gantry backup target
    /// when left out).
    #[arg(long, value_name = "URL")]
    repo: Option<String>,
    #[command(flatten)]
    key: RepoArgs,
    /// A new volume to restore into (default: the volume itself, whose
    /// content the snapshot's replaces once it is wholly restored; no
    /// container may use it meanwhile).
    #[arg(long, value_name = "VOLUME")]
    to: Option<String>,
    /// On a cluster: the node to restore on (default: the one that holds
    /// the volume).
    #[arg(long, value_name = "NODE")]
    node: Option<String>,
    /// The volume the snapshot is of.
    name: String,
}

fn key(a: &RepoArgs) -> anyhow::Result<zeroize::Zeroizing<Vec<u8>>> {
    let Some(file) = &a.key_file else {
        anyhow::bail!("give --key-file FILE (on a cluster: --key-secret SECRET)");
    };
    let k = zeroize::Zeroizing::new(
        std::fs::read(file).map_err(|e| anyhow::anyhow!("--key-file {}: {e}", file.display()))?,
    );
    anyhow::ensure!(
        k.len() >= 16,
        "--key-file {}: a key has at least 16 bytes",
        file.display()
    );
    Ok(k)
}

/// The repository at `url`, opened with `--key-file`; S3 settings from
/// this process's environment.
fn target(url: Option<&String>, flag: &str, a: &RepoArgs) -> anyhow::Result<Target> {
    let Some(url) = url else {
        anyhow::bail!("give {flag} URL: the repository");
    };
    Ok(Target {
        url: url.to_owned(),
        key: key(a)?,
        env: Vec::new(),
    })
}

fn run<T>(f: impl std::future::Future<Output = Result<T, String>>) -> anyhow::Result<T> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?
        .block_on(f)
        .map_err(anyhow::Error::msg)
}

fn host() -> String {
    nix::unistd::gethostname()
        .map(|h| h.to_string_lossy().into_owned())
        .unwrap_or_default()
}

pub(crate) fn backup(ctx: &Ctx, a: BackupArgs) -> anyhow::Result<u8> {
    let (snap, n_frozen) = if a.repo.on_cluster(ctx) {
        let req = gantry_api::BackupRequest {
            repo: a.repo.cluster(a.to.as_ref()),
            node: a.node.clone(),
            no_freeze: a.no_freeze,
            pre: a.pre.clone(),
            post: a.post.clone(),
        };
        let done = crate::cluster::volumes::backup(ctx, &a.name, &req)?;
        (done.snapshot, done.frozen)
    } else {
        anyhow::ensure!(
            a.node.is_none(),
            "--node is for a cluster (this host's volume: leave it out)"
        );
        let rt = Arc::new(ctx.runtime()?);
        let to = target(a.to.as_ref(), "--to", &a.repo)?;
        let how = Consistency {
            no_freeze: a.no_freeze,
            pre: a.pre.clone(),
            post: a.post.clone(),
        };
        let done = run(gantry_agent::backup::backup(
            rt,
            &a.name,
            &to,
            &how,
            &host(),
        ))?;
        (done.snapshot, done.frozen)
    };
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

pub(crate) fn backups(ctx: &Ctx, a: BackupsArgs) -> anyhow::Result<u8> {
    let list: Vec<Snapshot> = if a.key.on_cluster(ctx) {
        let req = gantry_api::BackupsRequest {
            repo: a.key.cluster(a.repo.as_ref()),
        };
        crate::cluster::volumes::backups(ctx, &a.name, &req)?
    } else {
        let repo = target(a.repo.as_ref(), "--repo", &a.key)?;
        run(gantry_agent::backup::snapshots(&a.name, &repo))?
    };
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

pub(crate) fn restore(ctx: &Ctx, a: RestoreArgs) -> anyhow::Result<u8> {
    let (snap, target, node, done) = if a.key.on_cluster(ctx) {
        let req = gantry_api::RestoreRequest {
            repo: a.key.cluster(a.repo.as_ref()),
            from: a.from.clone(),
            to: a.to.clone(),
            node: a.node.clone(),
        };
        let d = crate::cluster::volumes::restore(ctx, &a.name, &req)?;
        (d.snapshot, d.volume, format!(" on {}", d.node), d.restored)
    } else {
        anyhow::ensure!(
            a.node.is_none(),
            "--node is for a cluster (this host's volume: leave it out)"
        );
        let rt = Arc::new(ctx.runtime()?);
        let repo = target(a.repo.as_ref(), "--repo", &a.key)?;
        let (snap, done) = run(gantry_agent::backup::restore(
            rt,
            &a.name,
            &a.from,
            &repo,
            a.to.as_deref(),
        ))?;
        let target = a.to.clone().unwrap_or_else(|| a.name.clone());
        (snap, target, String::new(), done)
    };
    println!(
        "restored snapshot {} of {} into {target}{node}: {} files, {}",
        &snap.id[..8],
        a.name,
        done.files,
        output::size(done.bytes)
    );
    Ok(0)
}
