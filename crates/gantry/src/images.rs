//! `gantry image ...`, `pull`, `push`, `build`, `login`.

use std::collections::{BTreeMap, HashMap};
use std::io::{IsTerminal, Read};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use anyhow::Context;
use clap::{Args, Subcommand};
use gantry_image::{ImageRef, LocalImage, Progress, ProgressFn, Store};
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};

use crate::output::{self, Format};
use crate::Ctx;

#[derive(Subcommand)]
pub(crate) enum ImageCmd {
    /// Download an image from a registry.
    Pull(PullArgs),
    /// Upload an image to a registry.
    Push(PushArgs),
    /// Build an image from a Dockerfile.
    Build(BuildArgs),
    /// List images.
    #[command(alias = "list")]
    Ls(LsArgs),
    /// Show images' manifest and config as JSON.
    Inspect {
        /// Images.
        #[arg(required = true)]
        images: Vec<String>,
    },
    /// Give an image another name.
    Tag {
        /// Existing image.
        source: String,
        /// New reference.
        target: String,
    },
    /// Remove images.
    #[command(alias = "rmi")]
    Rm(RmArgs),
    /// Remove untagged images no container uses.
    Prune {
        /// Do not ask (kept for Docker compatibility; prune never asks).
        #[arg(short, long)]
        force: bool,
    },
}

/// `gantry builder`.
#[derive(Subcommand)]
pub(crate) enum BuilderCmd {
    /// Remove the build cache: the cached steps, the layers only they
    /// use, and the contents of `RUN --mount=type=cache` directories.
    Prune {
        /// Do not ask (kept for Docker compatibility; prune never asks).
        #[arg(short, long)]
        force: bool,
        /// All of the cache (the only kind of prune here; for Docker
        /// compatibility).
        #[arg(short, long)]
        all: bool,
    },
}

pub(crate) fn builder(ctx: &Ctx, cmd: BuilderCmd) -> anyhow::Result<u8> {
    match cmd {
        BuilderCmd::Prune { .. } => {
            let freed = ctx.store()?.prune_build_cache()?;
            println!("Total reclaimed space: {}", crate::output::size(freed));
        }
    }
    Ok(0)
}

#[derive(Args)]
pub(crate) struct PullArgs {
    /// Image reference.
    image: String,
    /// Print only the image id.
    #[arg(short, long)]
    quiet: bool,
}

#[derive(Args)]
pub(crate) struct PushArgs {
    /// Image reference (its registry is the destination).
    image: String,
    /// Print only the manifest digest.
    #[arg(short, long)]
    quiet: bool,
}

#[derive(Args)]
pub(crate) struct BuildArgs {
    /// Name and tag for the result.
    #[arg(short, long)]
    tag: Option<String>,
    /// Dockerfile (default CONTEXT/Dockerfile).
    #[arg(short, long)]
    file: Option<PathBuf>,
    /// Build-time variables.
    #[arg(long = "build-arg", value_name = "KEY=VALUE")]
    build_args: Vec<String>,
    /// Do not use the layer cache.
    #[arg(long)]
    no_cache: bool,
    /// An image built by Gantry whose recorded steps serve as cache
    /// (found locally or pulled; one that cannot be had is a warning).
    #[arg(long = "cache-from", value_name = "IMAGE")]
    cache_from: Vec<String>,
    /// The stage to build (its name, `FROM ... AS name`); the last one
    /// by default. Stages it does not need are not built.
    #[arg(long)]
    target: Option<String>,
    /// A secret RUN may mount (`--mount=type=secret,id=ID`):
    /// `id=ID,src=FILE` or `id=ID,env=VAR`. Never stored in the image.
    #[arg(long = "secret", value_name = "id=ID,src=FILE")]
    secrets: Vec<String>,
    /// Push the image to its tag's registry once it is built.
    #[arg(long)]
    push: bool,
    /// Print only the image id.
    #[arg(short, long)]
    quiet: bool,
    /// The build context directory.
    context: PathBuf,
}

#[derive(Args)]
pub(crate) struct LsArgs {
    /// Only ids.
    #[arg(short, long)]
    quiet: bool,
    /// Output format.
    #[arg(long, value_enum, default_value_t)]
    format: Format,
}

#[derive(Args)]
pub(crate) struct RmArgs {
    /// Remove even if a container uses it, or it has several tags.
    #[arg(short, long)]
    force: bool,
    /// Images.
    #[arg(required = true)]
    images: Vec<String>,
}

#[derive(Args)]
pub(crate) struct LoginArgs {
    /// Registry host (default docker.io).
    registry: Option<String>,
    /// User name.
    #[arg(short, long)]
    username: Option<String>,
    /// Password (prefer --password-stdin).
    #[arg(short, long)]
    password: Option<String>,
    /// Read the password from stdin.
    #[arg(long)]
    password_stdin: bool,
}

/// Runs a future on a runtime that is gone, with all its threads, when this
/// returns: container starts fork and need a single-threaded process.
pub(crate) fn block_on<F: std::future::Future>(f: F) -> anyhow::Result<F::Output> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let out = rt.block_on(f);
    drop(rt);
    Ok(out)
}

/// Containers' image ids mapped to one container name, for in-use checks.
pub(crate) fn images_in_use(ctx: &Ctx) -> BTreeMap<String, String> {
    let mut m = BTreeMap::new();
    if let Ok(rt) = ctx.runtime() {
        for c in rt.list() {
            m.entry(c.config.image_id.clone())
                .or_insert(c.config.name.clone());
        }
    }
    m
}

/// Shows pull/push progress: bars on a terminal, plain lines otherwise.
pub(crate) fn progress(action: &'static str) -> ProgressFn {
    let tty = std::io::stderr().is_terminal();
    let multi = MultiProgress::new();
    let bars: Arc<Mutex<HashMap<String, ProgressBar>>> = Arc::default();
    Arc::new(move |p: Progress| {
        let short = |d: &str| {
            d.trim_start_matches("sha256:")
                .chars()
                .take(12)
                .collect::<String>()
        };
        if !tty {
            match &p {
                Progress::Resolved { digest } => eprintln!("Digest: {digest}"),
                Progress::Start { digest, size } => {
                    eprintln!("{}: {action} {}", short(digest), output::size(*size))
                }
                Progress::Exists { digest, how } => eprintln!("{}: {how}", short(digest)),
                Progress::Extracting { digest } => eprintln!("{}: extracting", short(digest)),
                Progress::Done { digest } => eprintln!("{}: {action} complete", short(digest)),
                Progress::Bytes { .. } => {}
            }
            return;
        }
        let mut bars = bars.lock().unwrap_or_else(|e| e.into_inner());
        match p {
            Progress::Resolved { digest } => {
                let _ = multi.println(format!("Digest: {digest}"));
            }
            Progress::Start { digest, size } => {
                let b = multi.add(ProgressBar::new(size));
                b.set_style(
                    ProgressStyle::with_template(
                        "{prefix}: {msg:12} [{bar:30}] {bytes}/{total_bytes}",
                    )
                    .unwrap_or_else(|_| ProgressStyle::default_bar())
                    .progress_chars("=> "),
                );
                b.set_prefix(short(&digest));
                b.set_message(action);
                bars.insert(digest, b);
            }
            Progress::Bytes { digest, done } => {
                if let Some(b) = bars.get(&digest) {
                    b.set_position(done);
                }
            }
            Progress::Exists { digest, how } => {
                let _ = multi.println(format!("{}: {how}", short(&digest)));
            }
            Progress::Extracting { digest } => {
                if let Some(b) = bars.get(&digest) {
                    b.set_position(b.length().unwrap_or(0));
                    b.set_message("extracting");
                }
            }
            Progress::Done { digest } => {
                if let Some(b) = bars.remove(&digest) {
                    b.finish_with_message("complete");
                }
            }
        }
    })
}

fn quiet_progress() -> ProgressFn {
    Arc::new(|_| {})
}

/// Pulls `r` into the store.
pub(crate) fn pull_image(
    ctx: &Ctx,
    store: &Store,
    r: &ImageRef,
    quiet: bool,
) -> anyhow::Result<LocalImage> {
    let prog = if quiet {
        quiet_progress()
    } else {
        progress("downloading")
    };
    // Leftovers of pulls that crashed (their process is gone) go first.
    store.clean_tmp();
    // The runtime is gone when block_on returns, so no task of the pull
    // still writes: what it left in the store's temp dir can go.
    let res = block_on(gantry_image::pull(store, r, &ctx.registry, prog))?;
    if res.is_err() {
        store.discard_own_tmp();
    }
    res.with_context(|| format!("pull {r}"))
}

/// The local image for `name`, pulled first if it is not here (as `docker run`).
pub(crate) fn local_or_pull(ctx: &Ctx, store: &Store, name: &str) -> anyhow::Result<LocalImage> {
    match store.resolve(name) {
        Ok(i) => Ok(i),
        Err(gantry_image::StoreError::NotFound(_)) => {
            let r = ImageRef::parse(name)?;
            eprintln!("Unable to find image '{r}' locally");
            pull_image(ctx, store, &r, false)
        }
        Err(e) => Err(e.into()),
    }
}

pub(crate) fn run(ctx: &Ctx, cmd: ImageCmd) -> anyhow::Result<u8> {
    let store = ctx.store()?;
    match cmd {
        ImageCmd::Pull(a) => {
            let r = ImageRef::parse(&a.image)?;
            let img = pull_image(ctx, &store, &r, a.quiet)?;
            if a.quiet {
                println!("{}", img.record.config);
            } else {
                println!("Status: downloaded {r}\nImage id: {}", img.record.config);
            }
        }
        ImageCmd::Push(a) => {
            let r = ImageRef::parse(&a.image)?;
            let img = store.resolve(&a.image)?;
            let prog = if a.quiet {
                quiet_progress()
            } else {
                progress("pushing")
            };
            let digest = block_on(gantry_image::push(&store, &img, &r, &ctx.registry, prog))?
                .with_context(|| format!("push {r}"))?;
            if a.quiet {
                println!("{digest}");
            } else {
                println!("{}: digest: {digest}", r.tag().unwrap_or("latest"));
            }
        }
        ImageCmd::Build(a) => return build(ctx, &store, a),
        ImageCmd::Ls(a) => {
            let list = store.list();
            if a.format == Format::Json {
                return output::json(&list).map(|()| 0);
            }
            if a.quiet {
                let mut seen = std::collections::BTreeSet::new();
                for i in &list {
                    if seen.insert(i.config.clone()) {
                        println!("{}", &i.config[7..19]);
                    }
                }
                return Ok(0);
            }
            let mut rows = Vec::new();
            for i in list {
                let created = store
                    .config(&gantry_image::Digest::parse(&i.config)?)
                    .ok()
                    .and_then(|c| c.created)
                    .and_then(|c| chrono::DateTime::parse_from_rfc3339(&c).ok())
                    .map(|t| format!("{} ago", output::ago(t.with_timezone(&chrono::Utc))))
                    .unwrap_or_else(|| "N/A".into());
                let id = i.config[7..19].to_owned();
                let tags: Vec<(String, String)> = if i.tags.is_empty() {
                    vec![("<none>".into(), "<none>".into())]
                } else {
                    i.tags
                        .iter()
                        .filter_map(|t| ImageRef::parse(t).ok())
                        .map(|r| (r.short_repository(), r.tag().unwrap_or("<none>").to_owned()))
                        .collect()
                };
                for (repo, tag) in tags {
                    rows.push(vec![
                        repo,
                        tag,
                        id.clone(),
                        created.clone(),
                        output::size(i.size),
                    ]);
                }
            }
            output::table(&["REPOSITORY", "TAG", "IMAGE ID", "CREATED", "SIZE"], rows);
        }
        ImageCmd::Inspect { images } => {
            let mut out = Vec::new();
            for name in &images {
                let i = store
                    .resolve(name)
                    .with_context(|| format!("inspect {name}"))?;
                out.push(serde_json::json!({
                    "Id": i.record.config,
                    "ManifestDigest": i.record.manifest,
                    "RepoTags": i.record.tags,
                    "Size": i.record.size,
                    "Manifest": i.manifest,
                    "Config": i.config,
                }));
            }
            output::json(&out)?;
        }
        ImageCmd::Tag { source, target } => {
            let t = ImageRef::parse(&target)?;
            store.tag(&source, &t)?;
        }
        ImageCmd::Rm(a) => {
            let in_use = images_in_use(ctx);
            let mut failed = false;
            for name in &a.images {
                match store.remove(name, a.force, &in_use) {
                    Ok(lines) => lines.iter().for_each(|l| println!("{l}")),
                    Err(e) => {
                        eprintln!("Error: {e}");
                        failed = true;
                    }
                }
            }
            return Ok(u8::from(failed));
        }
        ImageCmd::Prune { .. } => {
            let removed = store.prune(&images_in_use(ctx))?;
            for r in &removed {
                println!("Deleted: {r}");
            }
            println!("Total: {} image(s) removed", removed.len());
        }
    }
    Ok(0)
}

/// A `--cache-from` value: an image reference, or BuildKit's
/// `type=registry,ref=IMAGE`.
fn cache_source(v: &str) -> anyhow::Result<ImageRef> {
    let r = gantry_stack::cache_source(v).map_err(anyhow::Error::msg)?;
    Ok(ImageRef::parse(&r)?)
}

fn build(ctx: &Ctx, store: &Store, a: BuildArgs) -> anyhow::Result<u8> {
    anyhow::ensure!(
        !a.push || a.tag.is_some(),
        "--push needs a name to push to: give -t REGISTRY/NAME:TAG"
    );
    let rt = ctx.runtime()?;
    let tag = a.tag.as_deref().map(ImageRef::parse).transpose()?;
    let mut build_args = BTreeMap::new();
    for kv in &a.build_args {
        let (k, v) = crate::parse::key_value(kv).map_err(anyhow::Error::msg)?;
        build_args.insert(k, v);
    }
    let opts = gantry_image::build::BuildOptions {
        context: a.context.clone(),
        dockerfile: a.file.clone(),
        tag,
        build_args,
        no_cache: a.no_cache,
        target: a.target.clone(),
        cache_from: a
            .cache_from
            .iter()
            .map(|r| cache_source(r))
            .collect::<anyhow::Result<_>>()?,
        secrets: a
            .secrets
            .iter()
            .map(|s| build_secret(s))
            .collect::<anyhow::Result<_>>()?,
        // RUN in the single-threaded helper: stages build side by side.
        helper: std::env::current_exe()
            .ok()
            .map(|exe| (exe, ctx.data_dir.clone())),
    };
    let quiet = a.quiet;
    let mut resolve = |r: &ImageRef| -> Result<LocalImage, String> {
        match store.resolve(&r.to_string()) {
            Ok(i) => Ok(i),
            Err(_) => pull_image(ctx, store, r, quiet).map_err(|e| format!("{e:#}")),
        }
    };
    let mut log = |l: &str| {
        if !quiet {
            println!("{l}");
        }
    };
    let img = gantry_image::build::build(store, &rt, &opts, &mut resolve, &mut log)?;
    if let (true, Some(r)) = (a.push, &opts.tag) {
        let prog = if quiet {
            quiet_progress()
        } else {
            progress("pushing")
        };
        let digest = block_on(gantry_image::push(store, &img, r, &ctx.registry, prog))?
            .with_context(|| format!("push {r}"))?;
        if !quiet {
            println!("{}: digest: {digest}", r.tag().unwrap_or("latest"));
        }
    }
    if quiet {
        println!("{}", img.record.config);
    }
    Ok(0)
}

/// `--secret id=ID,src=FILE` (or `env=VAR`), as `docker build` takes it.
fn build_secret(spec: &str) -> anyhow::Result<(String, Vec<u8>)> {
    let mut id = None;
    let mut src = None;
    let mut env = None;
    for f in spec.split(',') {
        let (k, v) = f
            .split_once('=')
            .with_context(|| format!("--secret {spec:?}: {f:?} is not KEY=VALUE"))?;
        match k {
            "id" => id = Some(v.to_owned()),
            "src" | "source" => src = Some(v.to_owned()),
            "env" => env = Some(v.to_owned()),
            "type" if v == "file" || v == "env" => {}
            _ => anyhow::bail!("--secret {spec:?}: unknown {k:?} (id, src, env)"),
        }
    }
    let id = id.with_context(|| format!("--secret {spec:?} needs id=ID"))?;
    let value = match (src, env) {
        (Some(p), None) => std::fs::read(&p).with_context(|| format!("--secret {id}: read {p}"))?,
        (None, Some(v)) => std::env::var(&v)
            .with_context(|| format!("--secret {id}: no environment variable {v}"))?
            .into_bytes(),
        (None, None) => std::env::var(&id)
            .with_context(|| format!("--secret {id}: give src=FILE or env=VAR"))?
            .into_bytes(),
        (Some(_), Some(_)) => anyhow::bail!("--secret {id}: give src or env, not both"),
    };
    Ok((id, value))
}

pub(crate) fn login(ctx: &Ctx, a: LoginArgs) -> anyhow::Result<u8> {
    let registry = a.registry.unwrap_or_else(|| "docker.io".into());
    let user = match a.username {
        Some(u) => u,
        None => anyhow::bail!("give a user name with -u"),
    };
    let password = if a.password_stdin {
        let mut s = String::new();
        std::io::stdin().read_to_string(&mut s)?;
        s.trim_end_matches(['\n', '\r']).to_owned()
    } else {
        a.password
            .context("give a password with -p or --password-stdin")?
    };
    block_on(ctx.registry.login(&registry, &user, &password))??;
    println!("Login Succeeded");
    Ok(0)
}

pub(crate) fn logout(ctx: &Ctx, registry: &str) -> anyhow::Result<u8> {
    if ctx.registry.logout(registry)? {
        println!("Removing login credentials for {registry}");
    } else {
        println!("Not logged in to {registry}");
    }
    Ok(0)
}
