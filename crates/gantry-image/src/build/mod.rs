//! `image build`: runs a parsed Dockerfile step by step into a standard OCI
//! image (gzip layers, OCI manifest and config) in the store.
//!
//! RUN executes in a container of the native runtime with the host's
//! network (as `docker build --network host`); its overlay upper directory
//! *is* the new layer, moved into the store as it stands and packed into a
//! blob. COPY and ADD assemble a layer directory from the context
//! (`copy.rs`). Every step has a cache key chained from its parent, so an
//! unchanged rebuild reuses every layer and timestamp and produces the same
//! image id.
//!
//! Multi-stage Dockerfiles (`stages.rs` plans them): only the target stage
//! (`--target`, or the last) and the stages it reads are built, in order;
//! a stage whose FROM names an earlier one starts from its layers, config
//! and cache key; `COPY --from=stage|index|image` reads that filesystem
//! (its layers mounted read-only as one overlay), with the source's own
//! cache key standing for its content.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use chrono::Utc;
use sha2::{Digest as _, Sha256};

mod cache;
mod copy;
mod run;

use crate::digest::Digest;
use crate::dockerfile::{self, Command, DockerfileError, Kind};
use crate::pack::pack_dir;
use crate::reference::ImageRef;
use crate::stages;
use crate::store::{LocalImage, Store, StoreError};
use crate::types::{Healthcheck, History, ImageConfig};
pub use cache::RECORDS;
use cache::{Cache, CacheEntry, Record};
pub use copy::DockerIgnore;
use copy::{copy_into, hash_tree, resolve_sources};
use run::run_step;

/// A build that failed.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// The Dockerfile is malformed.
    #[error(transparent)]
    Dockerfile(#[from] DockerfileError),
    /// A step failed; the message names the line.
    #[error("Dockerfile line {line}: {msg}")]
    Step {
        /// The instruction's line.
        line: usize,
        /// What went wrong.
        msg: String,
    },
    /// A RUN command exited non-zero.
    #[error("Dockerfile line {line}: RUN {cmd} returned a non-zero code: {code}")]
    RunFailed {
        /// The instruction's line.
        line: usize,
        /// The command.
        cmd: String,
        /// Its exit code.
        code: i32,
    },
    /// Reading the context or Dockerfile.
    #[error("{what} {path}: {err}")]
    Io {
        /// What was being read.
        what: &'static str,
        /// Where.
        path: PathBuf,
        /// The cause.
        #[source]
        err: std::io::Error,
    },
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// What to build.
#[derive(Debug, Clone, Default)]
pub struct BuildOptions {
    /// The context directory.
    pub context: PathBuf,
    /// The Dockerfile (default `<context>/Dockerfile`).
    pub dockerfile: Option<PathBuf>,
    /// Tag for the result.
    pub tag: Option<ImageRef>,
    /// `--build-arg` values.
    pub build_args: BTreeMap<String, String>,
    /// Ignore the layer cache.
    pub no_cache: bool,
    /// `--target`: the stage to build (the last one without it).
    pub target: Option<String>,
    /// `--cache-from`: images built by Gantry whose recorded steps serve
    /// as cache (found or pulled as FROM images are; one that cannot be
    /// had is a warning, as in Docker).
    pub cache_from: Vec<ImageRef>,
    /// `--secret id=...`: values RUN may mount (`--mount=type=secret`),
    /// never written to a layer or the cache.
    pub secrets: BTreeMap<String, Vec<u8>>,
    /// The single-threaded helper that runs RUN containers
    /// (`BINARY --data-dir DIR agent-helper run ID`): with it, stages that
    /// do not read each other build side by side (the runtime forks its
    /// monitor, which a process with several threads may not do). Without
    /// it, stages build one at a time in this process.
    pub helper: Option<(PathBuf, PathBuf)>,
}

/// How the helper's stderr says the runtime failed (not the command).
pub const RUN_FAILED: &str = "gantry-run-failed: ";

/// The base image lookup: returns a local image for a reference, pulling it
/// if the caller wants to.
pub type BaseResolver<'a> = dyn FnMut(&ImageRef) -> Result<LocalImage, String> + 'a;

/// Docker's predefined proxy args, usable without an ARG line.
const BUILTIN_ARGS: [&str; 8] = [
    "HTTP_PROXY",
    "http_proxy",
    "HTTPS_PROXY",
    "https_proxy",
    "FTP_PROXY",
    "ftp_proxy",
    "NO_PROXY",
    "no_proxy",
];

/// A layer: its blob's digest, its diff id and its compressed size.
type Layer = (Digest, Digest, u64);

struct State {
    layers: Vec<Layer>,
    config: ImageConfig,
    history: Vec<History>,
    /// ARGs declared in this stage, with their values.
    args: BTreeMap<String, String>,
    key: String,
    created: String,
    /// The steps that made it, recorded in the image's config.
    steps: Vec<Record>,
}

impl State {
    fn env(&self) -> Vec<String> {
        self.config.config.env.clone().unwrap_or_default()
    }
    fn lookup(&self, name: &str) -> Option<String> {
        // ENV wins over ARG, as in Docker.
        let prefix = format!("{name}=");
        self.env()
            .iter()
            .rev()
            .find_map(|e| e.strip_prefix(&prefix).map(str::to_owned))
            .or_else(|| self.args.get(name).cloned())
    }
    fn set_env(&mut self, k: &str, v: &str) {
        let mut env = self.env();
        env.retain(|e| e.split('=').next() != Some(k));
        env.push(format!("{k}={v}"));
        self.config.config.env = Some(env);
    }
    fn shell(&self) -> Vec<String> {
        self.config
            .config
            .shell
            .clone()
            .unwrap_or_else(|| vec!["/bin/sh".into(), "-c".into()])
    }
    fn argv(&self, c: &Command) -> Vec<String> {
        match c {
            Command::Exec(v) => v.clone(),
            Command::Shell(s) => {
                let mut v = self.shell();
                v.push(s.clone());
                v
            }
        }
    }
    fn workdir(&self) -> String {
        self.config
            .config
            .working_dir
            .clone()
            .filter(|w| !w.is_empty())
            .unwrap_or_else(|| "/".into())
    }
}

fn chain(parent: &str, parts: &[&str]) -> String {
    let mut h = Sha256::new();
    h.update(parent.as_bytes());
    for p in parts {
        h.update([0u8]);
        h.update(p.as_bytes());
    }
    hex::encode(h.finalize())
}

/// Builds an image. `log` receives progress lines; `resolve_base` finds (or
/// pulls) FROM images; `runtime` runs RUN steps.
pub fn build(
    store: &Store,
    runtime: &gantry_runtime::Runtime,
    opts: &BuildOptions,
    resolve_base: &mut BaseResolver<'_>,
    log: &mut dyn FnMut(&str),
) -> Result<LocalImage, BuildError> {
    let df_path = opts
        .dockerfile
        .clone()
        .unwrap_or_else(|| opts.context.join("Dockerfile"));
    let text = fs::read_to_string(&df_path).map_err(|err| BuildError::Io {
        what: "read Dockerfile",
        path: df_path.clone(),
        err,
    })?;
    if !opts.context.is_dir() {
        return Err(BuildError::Io {
            what: "build context",
            path: opts.context.clone(),
            err: std::io::Error::new(std::io::ErrorKind::NotFound, "not a directory"),
        });
    }
    let plan = stages::split(dockerfile::parse(&text)?)?;
    let ignore = DockerIgnore::load(&opts.context)?;
    let mut cache = Cache::open(store);
    let mut unused_args: BTreeSet<String> = opts.build_args.keys().cloned().collect();
    // The global args: usable in FROM lines and `COPY --from`, and as the
    // value of an ARG a stage declares again without a default.
    let mut meta_args: BTreeMap<String, String> = BTreeMap::new();
    for ins in &plan.meta_args {
        if let Kind::Arg { name, default } = &ins.kind {
            let lookup = |k: &str| meta_args.get(k).cloned();
            let v = match opts.build_args.get(name) {
                Some(v) => v.clone(),
                None => default
                    .as_deref()
                    .map(|d| dockerfile::process_word(d, &lookup))
                    .transpose()
                    .map_err(|msg| BuildError::Step {
                        line: ins.line,
                        msg,
                    })?
                    .unwrap_or_default(),
            };
            unused_args.remove(name);
            meta_args.insert(name.clone(), v);
        }
    }
    let expand = |w: &str| dockerfile::process_word(w, &|k: &str| meta_args.get(k).cloned());
    let target = plan.target(opts.target.as_deref())?;
    let needed = plan.needed(target, &expand)?;
    // What each stage waits for, and the images the stages read, found or
    // pulled before any stage runs.
    let mut images = Images(BTreeMap::new());
    let mut waits: BTreeMap<usize, BTreeSet<usize>> = BTreeMap::new();
    for &i in &needed {
        let line = plan.stages[i].from.line;
        let mut sources = plan.reads(i, &expand)?;
        // The FROM image first: its ONBUILD triggers may read more.
        if let Some(stages::Source::Image(base)) = sources.first().cloned() {
            if base != "scratch" {
                images.resolve(store, &base, resolve_base, line)?;
                if let Some(t) = images.0[&base].0.config.config.on_build.clone() {
                    sources.extend(plan.trigger_reads(i, &t, &expand)?);
                }
            }
        }
        for src in sources {
            match src {
                stages::Source::Stage(j) if needed.contains(&j) => {
                    waits.entry(i).or_default().insert(j);
                }
                // (Only a trigger can read a stage the target does not need.)
                stages::Source::Stage(j) => {
                    return Err(BuildError::Step {
                        line,
                        msg: format!(
                            "an ONBUILD trigger reads stage {}, which this build does not build",
                            stage_label(&plan, j)
                        ),
                    })
                }
                stages::Source::Image(image) if image == "scratch" => {}
                stages::Source::Image(image) => {
                    images.resolve(store, &image, resolve_base, line)?;
                }
            }
        }
    }
    for r in &opts.cache_from {
        let name = r.to_string();
        match base_image(store, &name, resolve_base) {
            Ok((img, _)) => {
                let n = cache.import(&img);
                log(&format!("Cache from {name}: {n} step(s) recorded"));
            }
            Err(e) => log(&format!("[Warning] cache source {name} is not used: {e}")),
        }
    }
    let run = Run {
        store,
        runtime,
        opts,
        ignore: &ignore,
        cache: &cache,
        meta_args: &meta_args,
        plan: &plan,
        images: &images,
        unused_args: Mutex::new(unused_args),
        step: std::sync::atomic::AtomicUsize::new(0),
        total: needed.iter().map(|&i| plan.stages[i].body.len() + 1).sum(),
        labelled: needed.len() > 1,
    };
    // A stage reads only stages before it. With the helper, in waves:
    // every stage whose stages are built runs, those of one wave side by
    // side; without it, one at a time.
    let mut built: BTreeMap<usize, State> = BTreeMap::new();
    let mut left: Vec<usize> = needed.iter().copied().collect();
    while !left.is_empty() {
        let ready: Vec<usize> = if opts.helper.is_some() {
            let (ready, rest): (Vec<usize>, Vec<usize>) = left.iter().partition(|i| {
                waits
                    .get(i)
                    .is_none_or(|w| w.iter().all(|j| built.contains_key(j)))
            });
            left = rest;
            ready
        } else {
            vec![left.remove(0)]
        };
        let results: Vec<(usize, Result<State, BuildError>)> = if ready.len() == 1 {
            vec![(ready[0], build_stage(&run, ready[0], &built, log))]
        } else {
            let (tx, rx) = std::sync::mpsc::channel::<String>();
            std::thread::scope(|sc| {
                let handles: Vec<_> = ready
                    .iter()
                    .map(|&i| {
                        let tx = tx.clone();
                        let (run, built) = (&run, &built);
                        sc.spawn(move || {
                            let mut log = |l: &str| {
                                let _ = tx.send(l.to_owned());
                            };
                            (i, build_stage(run, i, built, &mut log))
                        })
                    })
                    .collect();
                drop(tx);
                for line in rx {
                    log(&line);
                }
                handles
                    .into_iter()
                    .map(|h| h.join().expect("a stage's thread panicked"))
                    .collect()
            })
        };
        for (i, r) in results {
            built.insert(i, r?);
        }
    }
    let s = built.remove(&target).expect("the target is built");
    for a in run.unused_args.into_inner().expect("args lock") {
        log(&format!(
            "[Warning] One or more build-args [{a}] were not consumed"
        ));
    }
    let image = finish(store, s, opts.tag.as_ref())?;
    log(&format!("Successfully built {}", image.id().short()));
    if let Some(t) = &opts.tag {
        log(&format!("Successfully tagged {t}"));
    }
    Ok(image)
}

/// What every stage of one build shares.
struct Run<'a> {
    store: &'a Store,
    runtime: &'a gantry_runtime::Runtime,
    opts: &'a BuildOptions,
    ignore: &'a DockerIgnore,
    cache: &'a Cache,
    meta_args: &'a BTreeMap<String, String>,
    plan: &'a stages::Plan,
    images: &'a Images,
    /// `--build-arg`s no ARG took yet.
    unused_args: Mutex<BTreeSet<String>>,
    /// Steps logged so far, of `total`.
    step: std::sync::atomic::AtomicUsize,
    total: usize,
    /// Whether log lines name their stage (more than one is built).
    labelled: bool,
}

/// Builds stage `i` over the stages built before it.
fn build_stage(
    run: &Run<'_>,
    i: usize,
    built: &BTreeMap<usize, State>,
    log: &mut dyn FnMut(&str),
) -> Result<State, BuildError> {
    let plan = run.plan;
    let stage = &plan.stages[i];
    let label = stage_label(plan, i);
    let mut log = |l: &str| {
        if run.labelled {
            log(&format!("[{label}] {l}"))
        } else {
            log(l)
        }
    };
    let next = || run.step.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
    log(&format!(
        "Step {}/{} : {}",
        next(),
        run.total,
        stage.from.text
    ));
    let Kind::From { image, .. } = &stage.from.kind else {
        unreachable!("a stage starts with FROM");
    };
    let err = |msg: String| BuildError::Step {
        line: stage.from.line,
        msg,
    };
    let image =
        dockerfile::process_word(image, &|k: &str| run.meta_args.get(k).cloned()).map_err(err)?;
    let mut state = match plan.resolve(i, &image, stage.from.line)? {
        stages::Source::Stage(j) => {
            let parent = &built[&j];
            log(&format!(" ---> stage {}", stage_label(plan, j)));
            State {
                layers: parent.layers.clone(),
                config: parent.config.clone(),
                history: parent.history.clone(),
                args: BTreeMap::new(),
                key: parent.key.clone(),
                created: parent.created.clone(),
                steps: parent.steps.clone(),
            }
        }
        stages::Source::Image(image) => {
            let state = base_state(run.images, &image).map_err(err)?;
            log(&format!(
                " ---> {}",
                if image == "scratch" {
                    "scratch".to_owned()
                } else {
                    state.key[..12].to_owned()
                }
            ));
            state
        }
    };
    for a in BUILTIN_ARGS {
        if let Some(v) = run.opts.build_args.get(a) {
            state.args.insert(a.to_owned(), v.clone());
            run.unused_args.lock().expect("args lock").remove(a);
        }
    }
    // The base's ONBUILD triggers run first, in this build's context; the
    // new image does not keep them.
    let triggers: Vec<dockerfile::Instruction> = state
        .config
        .config
        .on_build
        .take()
        .unwrap_or_default()
        .iter()
        .map(|t| {
            dockerfile::trigger(t).map(|mut i| {
                i.line = stage.from.line;
                i
            })
        })
        .collect::<Result<_, _>>()?;
    let ctx = StepContext {
        run,
        stage: i,
        built,
    };
    for ins in triggers.iter().chain(&stage.body) {
        if ins.line == stage.from.line {
            log(&format!("Executing ONBUILD trigger: {}", ins.text));
        } else {
            log(&format!("Step {}/{} : {}", next(), run.total, ins.text));
        }
        step(&ctx, &mut state, &ins.kind, ins, &mut log)?;
    }
    Ok(state)
}

/// A stage's name as the log shows it.
fn stage_label(plan: &stages::Plan, i: usize) -> String {
    plan.stages[i].name.clone().unwrap_or_else(|| i.to_string())
}

/// The state a stage starts from when its FROM names an image (or
/// `scratch`).
fn base_state(images: &Images, image: &str) -> Result<State, String> {
    if image == "scratch" {
        return Ok(State {
            layers: Vec::new(),
            config: ImageConfig {
                architecture: "amd64".into(),
                os: "linux".into(),
                ..Default::default()
            },
            history: Vec::new(),
            args: BTreeMap::new(),
            key: chain("", &["scratch"]),
            created: Utc::now().to_rfc3339(),
            steps: Vec::new(),
        });
    }
    let base = images.get(image)?;
    let mut config = base.0.config.clone();
    config.created = None;
    config.config.extra.remove("Image");
    config.extra.remove(RECORDS);
    Ok(State {
        layers: base.1,
        history: config.history.clone(),
        config,
        args: BTreeMap::new(),
        key: chain("", &[&base.0.record.manifest]),
        created: base.0.config.created.clone().unwrap_or_default(),
        steps: Vec::new(),
    })
}

/// The images a build reads (FROM, `COPY --from`, `RUN --mount=from=`),
/// found or pulled before any stage runs, with their layers unpacked.
struct Images(BTreeMap<String, (LocalImage, Vec<Layer>)>);

impl Images {
    /// Finds or pulls `image` (once), its layers unpacked.
    fn resolve(
        &mut self,
        store: &Store,
        image: &str,
        resolve_base: &mut BaseResolver<'_>,
        line: usize,
    ) -> Result<(), BuildError> {
        if !self.0.contains_key(image) {
            let got = base_image(store, image, resolve_base)
                .map_err(|msg| BuildError::Step { line, msg })?;
            self.0.insert(image.to_owned(), got);
        }
        Ok(())
    }

    fn get(&self, image: &str) -> Result<(LocalImage, Vec<Layer>), String> {
        self.0
            .get(image)
            .cloned()
            .ok_or_else(|| format!("image {image} was not resolved before the build"))
    }
}

/// An image, found or pulled, with its layers unpacked in the store.
fn base_image(
    store: &Store,
    image: &str,
    resolve_base: &mut BaseResolver<'_>,
) -> Result<(LocalImage, Vec<Layer>), String> {
    let r = ImageRef::parse(image).map_err(|e| e.to_string())?;
    let base = resolve_base(&r).map_err(|e| format!("image {image}: {e}"))?;
    let mut layers = Vec::new();
    for (l, diff) in base
        .manifest
        .layers
        .iter()
        .zip(&base.config.rootfs.diff_ids)
    {
        let d = Digest::parse(&l.digest).map_err(|e| e.to_string())?;
        let diff = Digest::parse(diff).map_err(|e| e.to_string())?;
        store.ensure_layer(&d).map_err(|e| e.to_string())?;
        layers.push((d, diff, l.size));
    }
    Ok((base, layers))
}

/// What every step of a build reads.
struct StepContext<'a> {
    /// What the whole build shares.
    run: &'a Run<'a>,
    /// The stage the step belongs to.
    stage: usize,
    /// The stages built so far.
    built: &'a BTreeMap<usize, State>,
}

fn step(
    c: &StepContext<'_>,
    s: &mut State,
    kind: &Kind,
    ins: &dockerfile::Instruction,
    log: &mut dyn FnMut(&str),
) -> Result<(), BuildError> {
    let &Run {
        store,
        runtime,
        opts,
        ignore,
        cache,
        ref unused_args,
        ..
    } = c.run;
    let line = ins.line;
    let err = |msg: String| BuildError::Step { line, msg };
    let word =
        |s: &State, w: &str| dockerfile::process_word(w, &|k: &str| s.lookup(k)).map_err(err);
    let words =
        |s: &State, w: &str| dockerfile::process_words(w, &|k: &str| s.lookup(k)).map_err(err);
    let mut layer_key_extra = String::new();
    match kind {
        Kind::Arg { name, default } => {
            unused_args.lock().expect("args lock").remove(name);
            let v = opts
                .build_args
                .get(name)
                .cloned()
                .or_else(|| {
                    default
                        .as_ref()
                        .map(|d| word(s, d))
                        .transpose()
                        .ok()
                        .flatten()
                })
                // Declared again without a default: the global value.
                .or_else(|| c.run.meta_args.get(name).cloned())
                .unwrap_or_default();
            s.args.insert(name.clone(), v);
        }
        Kind::From { .. } => unreachable!("FROM starts a stage"),
        Kind::Copy {
            srcs,
            dest,
            chown,
            chmod,
            from: Some(from),
            ..
        } => {
            return copy_from(c, s, ins, (srcs, dest, chown, chmod, from), log);
        }
        Kind::Env(pairs) => {
            for (k, v) in pairs {
                let v = word(s, v)?;
                s.set_env(k, &v);
            }
        }
        Kind::Label(pairs) => {
            let mut labels = s.config.config.labels.clone().unwrap_or_default();
            for (k, v) in pairs {
                labels.insert(word(s, k)?, word(s, v)?);
            }
            s.config.config.labels = Some(labels);
        }
        Kind::Onbuild(t) => {
            let mut v = s.config.config.on_build.take().unwrap_or_default();
            v.push(t.clone());
            s.config.config.on_build = Some(v);
        }
        Kind::Maintainer(m) => {
            s.config
                .extra
                .insert("author".into(), serde_json::Value::String(m.clone()));
        }
        Kind::Workdir(w) => {
            let w = word(s, w)?;
            let path = if w.starts_with('/') {
                w
            } else {
                format!("{}/{}", s.workdir().trim_end_matches('/'), w)
            };
            s.config.config.working_dir = Some(path);
        }
        Kind::User(u) => s.config.config.user = Some(word(s, u)?),
        Kind::Expose(ports) => {
            let mut map = s.config.config.exposed_ports.clone().unwrap_or_default();
            for p in ports {
                for p in words(s, p)? {
                    let (num, proto) = p.split_once('/').unwrap_or((&p, "tcp"));
                    if num.parse::<u16>().is_err() || !matches!(proto, "tcp" | "udp" | "sctp") {
                        return Err(err(format!("invalid port {p:?} in EXPOSE")));
                    }
                    map.insert(format!("{num}/{proto}"), serde_json::json!({}));
                }
            }
            s.config.config.exposed_ports = Some(map);
        }
        Kind::Volume(v) => {
            let mut map = s.config.config.volumes.clone().unwrap_or_default();
            for p in v {
                map.insert(word(s, p)?, serde_json::json!({}));
            }
            s.config.config.volumes = Some(map);
        }
        Kind::StopSignal(sig) => s.config.config.stop_signal = Some(word(s, sig)?),
        Kind::Shell(v) => s.config.config.shell = Some(v.clone()),
        Kind::Cmd(c) => s.config.config.cmd = Some(s.argv(c)),
        Kind::Entrypoint(c) => {
            s.config.config.entrypoint = Some(s.argv(c));
            // A new ENTRYPOINT drops a CMD inherited from the base image.
            if !s.history.iter().any(|h| {
                h.created_by
                    .as_deref()
                    .is_some_and(|c| c.starts_with("CMD"))
            }) {
                s.config.config.cmd = None;
            }
        }
        Kind::Healthcheck(h) => {
            s.config.config.healthcheck = Some(match h {
                None => Healthcheck {
                    test: vec!["NONE".into()],
                    ..Default::default()
                },
                Some(h) => Healthcheck {
                    test: match &h.cmd {
                        Command::Exec(v) => std::iter::once("CMD".to_owned())
                            .chain(v.iter().cloned())
                            .collect(),
                        Command::Shell(sh) => vec!["CMD-SHELL".into(), sh.clone()],
                    },
                    interval: h.interval,
                    timeout: h.timeout,
                    start_period: h.start_period,
                    retries: h.retries,
                },
            })
        }
        Kind::Run(cmd, run_opts) => {
            // Build args are visible to RUN, and part of its cache key.
            let argv = s.argv(cmd);
            let args_env: Vec<String> = s.args.iter().map(|(k, v)| format!("{k}={v}")).collect();
            let (planned, mounts_key) =
                run::plan_mounts(c, line, &run_opts.mounts, &|w| word(s, w))?;
            let no_network = run_opts.no_network;
            layer_key_extra = format!("{argv:?}{args_env:?}{mounts_key}{no_network}");
            return layer_step(
                store,
                cache,
                s,
                ins,
                &layer_key_extra,
                opts.no_cache,
                log,
                |s, _, log| {
                    run_step(
                        store,
                        runtime,
                        s,
                        &argv,
                        &args_env,
                        line,
                        &planned,
                        no_network,
                        opts.helper.as_ref(),
                        log,
                    )
                },
            );
        }
        Kind::Copy {
            srcs,
            dest,
            chown,
            chmod,
            add,
            from: None,
            inline,
            checksum,
        } => {
            let named: Vec<String> = srcs
                .iter()
                .filter(|x| !inline.iter().any(|(src, _, _)| src == *x))
                .map(|x| word(s, x))
                .collect::<Result<_, _>>()?;
            let (urls, from_context): (Vec<String>, Vec<String>) =
                named.into_iter().partition(|x| copy::is_url(x));
            if !urls.is_empty() && !add {
                return Err(err(format!(
                    "COPY cannot take a URL ({}): use ADD",
                    urls[0]
                )));
            }
            if checksum.is_some() && (urls.len() != 1 || srcs.len() != 1) {
                return Err(err("ADD --checksum needs a single URL source".into()));
            }
            let dest = word(s, dest)?;
            let (owner, mode) = copy_owner_mode(store, s, line, chown, chmod)?;
            let files = if from_context.is_empty() {
                Vec::new()
            } else {
                resolve_sources(&opts.context, ignore, &from_context).map_err(err)?
            };
            // Here-documents and downloads are files of their own, made
            // for the step (never extracted); their content is in the key.
            let mut made = copy::Made::new(store);
            made.heredocs(inline).map_err(err)?;
            for u in &urls {
                log(&format!(" ---> downloading {u}"));
                made.download(u, checksum.as_deref()).map_err(err)?;
            }
            let srcs = srcs.clone();
            let mut h = Sha256::new();
            for (rel, full) in files.iter().chain(made.files()) {
                hash_tree(&mut h, rel, full, ignore)
                    .map_err(|e| err(format!("read {}: {e}", full.display())))?;
            }
            layer_key_extra = format!(
                "{}{:?}{:?}{dest}{}",
                hex::encode(h.finalize()),
                owner,
                mode,
                s.workdir()
            );
            let workdir = s.workdir();
            let add = *add;
            return layer_step(
                store,
                cache,
                s,
                ins,
                &layer_key_extra,
                opts.no_cache,
                log,
                |_, tmp, _| {
                    let many = srcs.len() > 1;
                    copy_into(tmp, &files, &dest, &workdir, owner, mode, add, many, ignore)
                        .map_err(err)?;
                    copy_into(
                        tmp,
                        made.files(),
                        &dest,
                        &workdir,
                        owner,
                        mode,
                        false,
                        many,
                        ignore,
                    )
                    .map_err(err)
                },
            );
        }
    }
    // A step that changed only the config.
    s.key = chain(
        &s.key,
        &[
            &ins.text,
            &layer_key_extra,
            &format!("{:?}", s.config.config),
        ],
    );
    let created = match cache.get(store, &s.key) {
        Some(e) if !opts.no_cache => e.created,
        _ => {
            let c = Utc::now().to_rfc3339();
            cache.put(
                &s.key,
                CacheEntry {
                    layer: None,
                    created: c.clone(),
                },
            );
            c
        }
    };
    s.history.push(History {
        created: Some(created.clone()),
        created_by: Some(ins.text.clone()),
        empty_layer: true,
    });
    s.steps.push(Record {
        key: s.key.clone(),
        layer: None,
        created: created.clone(),
    });
    s.created = created;
    Ok(())
}

/// The owner (`--chown`, expanded, names looked up in the image) and mode
/// (`--chmod`) of what a COPY or ADD writes.
fn copy_owner_mode(
    store: &Store,
    s: &State,
    line: usize,
    chown: &Option<String>,
    chmod: &Option<String>,
) -> Result<((u32, u32), Option<u32>), BuildError> {
    let err = |msg: String| BuildError::Step { line, msg };
    let owner = match chown {
        Some(c) => {
            let c = dockerfile::process_word(c, &|k: &str| s.lookup(k)).map_err(err)?;
            resolve_owner(store, s, &c).map_err(err)?
        }
        None => (0, 0),
    };
    Ok((
        owner,
        chmod.as_ref().and_then(|m| u32::from_str_radix(m, 8).ok()),
    ))
}

/// `COPY --from=stage|image`: the sources come from that filesystem (a
/// stage built before, or an image), resolved inside it; the step's cache
/// key is the source's own key (a stage's chain of steps, an image's
/// manifest), so nothing is hashed again.
fn copy_from(
    c: &StepContext<'_>,
    s: &mut State,
    ins: &dockerfile::Instruction,
    (srcs, dest, chown, chmod, from): (&[String], &str, &Option<String>, &Option<String>, &str),
    log: &mut dyn FnMut(&str),
) -> Result<(), BuildError> {
    let line = ins.line;
    let err = |msg: String| BuildError::Step { line, msg };
    let word =
        |s: &State, w: &str| dockerfile::process_word(w, &|k: &str| s.lookup(k)).map_err(err);
    let from =
        dockerfile::process_word(from, &|k: &str| c.run.meta_args.get(k).cloned()).map_err(err)?;
    let (layers, source_key) = match c.run.plan.resolve(c.stage, &from, line)? {
        stages::Source::Stage(j) => {
            let st = c
                .built
                .get(&j)
                .ok_or_else(|| err(format!("stage {from} is not built")))?;
            (st.layers.clone(), st.key.clone())
        }
        stages::Source::Image(image) => {
            let (img, layers) = c.run.images.get(&image).map_err(err)?;
            (layers, img.record.manifest.clone())
        }
    };
    let srcs: Vec<String> = srcs.iter().map(|x| word(s, x)).collect::<Result<_, _>>()?;
    let dest = word(s, dest)?;
    let (owner, mode) = copy_owner_mode(c.run.store, s, line, chown, chmod)?;
    let extra = format!(
        "from {source_key} {srcs:?} {owner:?} {mode:?} {dest} {}",
        s.workdir()
    );
    let workdir = s.workdir();
    let store = c.run.store;
    layer_step(
        store,
        c.run.cache,
        s,
        ins,
        &extra,
        c.run.opts.no_cache,
        log,
        |_, tmp, _| {
            let root = copy::RootView::open(store, &layers).map_err(err)?;
            let files = copy::sources_in_root(root.path(), &srcs).map_err(err)?;
            copy_into(
                tmp,
                &files,
                &dest,
                &workdir,
                owner,
                mode,
                false,
                srcs.len() > 1,
                &DockerIgnore::default(),
            )
            .map_err(err)
        },
    )
}

/// Runs a step that adds a layer, or takes it from the cache. `make` fills
/// the given empty directory with the layer's content.
#[allow(clippy::too_many_arguments)]
fn layer_step(
    store: &Store,
    cache: &Cache,
    s: &mut State,
    ins: &dockerfile::Instruction,
    extra: &str,
    no_cache: bool,
    log: &mut dyn FnMut(&str),
    make: impl FnOnce(&State, &Path, &mut dyn FnMut(&str)) -> Result<Option<PathBuf>, BuildError>,
) -> Result<(), BuildError> {
    let key = chain(
        &s.key,
        &[&ins.text, extra, &format!("{:?}", s.config.config.user)],
    );
    let hit = if no_cache {
        None
    } else {
        cache.get(store, &key)
    };
    let (blob, diff, size, created) = match hit {
        Some(CacheEntry {
            layer: Some((b, d, z)),
            created,
        }) => {
            log(" ---> Using cache");
            let b = Digest::parse(&b).map_err(|e| StoreError::MissingBlob(e.0))?;
            let d = Digest::parse(&d).map_err(|e| StoreError::MissingBlob(e.0))?;
            (b, d, z, created)
        }
        _ => {
            let tmp = store.temp_path("build");
            fs::create_dir_all(&tmp).map_err(|e| BuildError::Io {
                what: "create",
                path: tmp.clone(),
                err: e,
            })?;
            // `make` may hand back another directory (RUN's upper dir).
            let dir = match make(s, &tmp, log) {
                Ok(Some(d)) => {
                    let _ = fs::remove_dir_all(&tmp);
                    d
                }
                Ok(None) => tmp.clone(),
                Err(e) => {
                    let _ = fs::remove_dir_all(&tmp);
                    return Err(e);
                }
            };
            let blob_tmp = store.temp_path("blob");
            let packed = pack_dir(&dir, &blob_tmp).map_err(|e| BuildError::Io {
                what: "pack layer",
                path: dir.clone(),
                err: e,
            });
            let packed = match packed {
                Ok(p) => p,
                Err(e) => {
                    let _ = fs::remove_dir_all(&dir);
                    let _ = fs::remove_file(&blob_tmp);
                    return Err(e);
                }
            };
            store.commit_blob(&blob_tmp, &packed.digest)?;
            store.commit_layer(&dir, &packed.digest)?;
            let created = Utc::now().to_rfc3339();
            cache.put(
                &key,
                CacheEntry {
                    layer: Some((
                        packed.digest.to_string(),
                        packed.diff_id.to_string(),
                        packed.size,
                    )),
                    created: created.clone(),
                },
            );
            (packed.digest, packed.diff_id, packed.size, created)
        }
    };
    log(&format!(" ---> {}", blob.short()));
    s.layers.push((blob, diff, size));
    s.history.push(History {
        created: Some(created.clone()),
        created_by: Some(ins.text.clone()),
        empty_layer: false,
    });
    s.steps.push(Record {
        key: key.clone(),
        layer: Some(s.layers.len() - 1),
        created: created.clone(),
    });
    s.created = created;
    s.key = key;
    Ok(())
}

/// `--chown` user and group to ids, looked up in the image's /etc/passwd
/// and /etc/group when they are names.
fn resolve_owner(store: &Store, s: &State, spec: &str) -> Result<(u32, u32), String> {
    let find_file = |name: &str| -> String {
        for (d, _, _) in s.layers.iter().rev() {
            let p = store.layer_path(d).join(name);
            if let Ok(t) = fs::read_to_string(&p) {
                return t;
            }
        }
        String::new()
    };
    let (u, g) = spec.split_once(':').unwrap_or((spec, ""));
    let lookup = |file: &str, name: &str| -> Result<u32, String> {
        if let Ok(n) = name.parse() {
            return Ok(n);
        }
        find_file(file)
            .lines()
            .map(|l| l.split(':').collect::<Vec<_>>())
            .find(|f| f.len() > 2 && f[0] == name)
            .and_then(|f| f[2].parse().ok())
            .ok_or_else(|| format!("--chown: no {name} in the image's /{file}"))
    };
    let uid = lookup("etc/passwd", u)?;
    let gid = if g.is_empty() {
        uid
    } else {
        lookup("etc/group", g)?
    };
    Ok((uid, gid))
}

/// Writes config and manifest and records the image.
fn finish(store: &Store, s: State, tag: Option<&ImageRef>) -> Result<LocalImage, BuildError> {
    let mut config = s.config;
    config.created = Some(s.created);
    config.history = s.history;
    config.extra.insert(
        RECORDS.to_owned(),
        serde_json::to_value(&s.steps).unwrap_or_default(),
    );
    let layers: Vec<(Digest, Digest, u64)> = s.layers;
    Ok(store.put_image(config, &layers, tag)?)
}
