//! `image build`: runs a parsed Dockerfile step by step into a standard OCI
//! image (gzip layers, OCI manifest and config) in the store.
//!
//! RUN executes in a container of the native runtime with the host's
//! network (as `docker build --network host`); its overlay upper directory
//! *is* the new layer, moved into the store as it stands and packed into a
//! blob. COPY and ADD assemble a layer directory from the context. Every
//! step has a cache key chained from its parent, so an unchanged rebuild
//! reuses every layer and timestamp and produces the same image id.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::Read;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use chrono::Utc;
use globset::{Glob, GlobMatcher};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use crate::digest::Digest;
use crate::dockerfile::{self, Command, DockerfileError, Kind};
use crate::pack::pack_dir;
use crate::reference::ImageRef;
use crate::store::{LocalImage, Store, StoreError};
use crate::types::{Healthcheck, History, ImageConfig};

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
}

/// The base image lookup: returns a local image for a reference, pulling it
/// if the caller wants to.
pub type BaseResolver<'a> = dyn FnMut(&ImageRef) -> Result<LocalImage, String> + 'a;

#[derive(Debug, Clone, Serialize, Deserialize)]
struct CacheEntry {
    /// (blob digest, diff id, compressed size) when the step made a layer.
    layer: Option<(String, String, u64)>,
    created: String,
}

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

struct State {
    layers: Vec<(Digest, Digest, u64)>,
    config: ImageConfig,
    history: Vec<History>,
    /// ARGs declared in this stage, with their values.
    args: BTreeMap<String, String>,
    key: String,
    created: String,
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

/// The build cache file, keyed by step key.
struct Cache {
    path: PathBuf,
}

impl Cache {
    fn load(&self) -> BTreeMap<String, CacheEntry> {
        fs::read(&self.path)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default()
    }
    fn get(&self, store: &Store, key: &str) -> Option<CacheEntry> {
        let e = self.load().remove(key)?;
        if let Some((blob, _, _)) = &e.layer {
            let d = Digest::parse(blob).ok()?;
            if !store.has_blob(&d) || !store.layer_path(&d).exists() {
                return None;
            }
        }
        Some(e)
    }
    fn put(&self, key: &str, e: CacheEntry) {
        let mut all = self.load();
        all.insert(key.to_owned(), e);
        let tmp = self.path.with_extension("tmp");
        if fs::write(&tmp, serde_json::to_vec(&all).unwrap_or_default()).is_ok() {
            let _ = fs::rename(&tmp, &self.path);
        }
    }
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
    let instructions = dockerfile::parse(&text)?;
    if instructions
        .iter()
        .filter(|i| matches!(i.kind, Kind::From { .. }))
        .count()
        > 1
    {
        let line = instructions
            .iter()
            .filter(|i| matches!(i.kind, Kind::From { .. }))
            .nth(1)
            .map_or(1, |i| i.line);
        return Err(BuildError::Step {
            line,
            msg: "multi-stage builds (a second FROM) are not supported yet".into(),
        });
    }
    let ignore = DockerIgnore::load(&opts.context)?;
    let cache = Cache {
        path: store.root().join("build-cache.json"),
    };
    let total = instructions.len();
    let mut meta_args: BTreeMap<String, String> = BTreeMap::new();
    let mut st: Option<State> = None;
    let mut unused_args: BTreeSet<String> = opts.build_args.keys().cloned().collect();
    for (n, ins) in instructions.iter().enumerate() {
        log(&format!("Step {}/{} : {}", n + 1, total, ins.text));
        let err = |msg: String| BuildError::Step {
            line: ins.line,
            msg,
        };
        match (&ins.kind, st.as_mut()) {
            (Kind::Arg { name, default }, None) => {
                let v = opts
                    .build_args
                    .get(name)
                    .cloned()
                    .or_else(|| default.clone())
                    .unwrap_or_default();
                unused_args.remove(name);
                meta_args.insert(name.clone(), v);
            }
            (Kind::From { image, .. }, None) => {
                let lookup = |k: &str| meta_args.get(k).cloned();
                let image = dockerfile::process_word(image, &lookup).map_err(err)?;
                let mut state = if image == "scratch" {
                    State {
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
                    }
                } else {
                    let r = ImageRef::parse(&image).map_err(|e| err(e.to_string()))?;
                    let base =
                        resolve_base(&r).map_err(|e| err(format!("base image {image}: {e}")))?;
                    let mut layers = Vec::new();
                    for (l, diff) in base
                        .manifest
                        .layers
                        .iter()
                        .zip(&base.config.rootfs.diff_ids)
                    {
                        let d = Digest::parse(&l.digest).map_err(|e| err(e.to_string()))?;
                        let diff = Digest::parse(diff).map_err(|e| err(e.to_string()))?;
                        store.ensure_layer(&d)?;
                        layers.push((d, diff, l.size));
                    }
                    let mut config = base.config.clone();
                    config.created = None;
                    State {
                        layers,
                        history: config.history.clone(),
                        config,
                        args: BTreeMap::new(),
                        key: chain("", &[&base.record.manifest]),
                        created: base.config.created.clone().unwrap_or_default(),
                    }
                };
                state.config.config.extra.remove("Image");
                for a in BUILTIN_ARGS {
                    if let Some(v) = opts.build_args.get(a) {
                        state.args.insert(a.to_owned(), v.clone());
                        unused_args.remove(a);
                    }
                }
                log(&format!(
                    " ---> {}",
                    if image == "scratch" {
                        "scratch".to_owned()
                    } else {
                        state.key[..12].to_owned()
                    }
                ));
                st = Some(state);
            }
            (_, None) => return Err(err("the first instruction must be FROM".into())),
            (kind, Some(s)) => {
                step(
                    store,
                    runtime,
                    opts,
                    &ignore,
                    &cache,
                    s,
                    kind,
                    ins,
                    &mut unused_args,
                    log,
                )?;
            }
        }
    }
    let s = st.ok_or_else(|| BuildError::Step {
        line: 1,
        msg: "no FROM instruction".into(),
    })?;
    for a in unused_args {
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

#[allow(clippy::too_many_arguments)]
fn step(
    store: &Store,
    runtime: &gantry_runtime::Runtime,
    opts: &BuildOptions,
    ignore: &DockerIgnore,
    cache: &Cache,
    s: &mut State,
    kind: &Kind,
    ins: &dockerfile::Instruction,
    unused_args: &mut BTreeSet<String>,
    log: &mut dyn FnMut(&str),
) -> Result<(), BuildError> {
    let line = ins.line;
    let err = |msg: String| BuildError::Step { line, msg };
    let word =
        |s: &State, w: &str| dockerfile::process_word(w, &|k: &str| s.lookup(k)).map_err(err);
    let words =
        |s: &State, w: &str| dockerfile::process_words(w, &|k: &str| s.lookup(k)).map_err(err);
    let mut layer_key_extra = String::new();
    match kind {
        Kind::Arg { name, default } => {
            unused_args.remove(name);
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
                .unwrap_or_default();
            s.args.insert(name.clone(), v);
        }
        Kind::From { .. } => {
            return Err(err("multi-stage builds are not supported yet".into()));
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
        Kind::Run(c) => {
            // Build args are visible to RUN, and part of its cache key.
            let argv = s.argv(c);
            let args_env: Vec<String> = s.args.iter().map(|(k, v)| format!("{k}={v}")).collect();
            layer_key_extra = format!("{argv:?}{args_env:?}");
            return layer_step(
                store,
                cache,
                s,
                ins,
                &layer_key_extra,
                opts.no_cache,
                log,
                |s, _| run_step(store, runtime, s, &argv, &args_env, line),
            );
        }
        Kind::Copy {
            srcs,
            dest,
            chown,
            chmod,
            add,
        } => {
            let srcs: Vec<String> = srcs.iter().map(|x| word(s, x)).collect::<Result<_, _>>()?;
            let dest = word(s, dest)?;
            let chown = chown.as_ref().map(|c| word(s, c)).transpose()?;
            let files = resolve_sources(&opts.context, ignore, &srcs).map_err(err)?;
            let owner = match &chown {
                Some(c) => resolve_owner(store, s, c).map_err(err)?,
                None => (0, 0),
            };
            let mode = chmod.as_ref().and_then(|m| u32::from_str_radix(m, 8).ok());
            let mut h = Sha256::new();
            for (rel, full) in &files {
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
                |_, tmp| {
                    copy_into(
                        tmp,
                        &files,
                        &dest,
                        &workdir,
                        owner,
                        mode,
                        add,
                        srcs.len() > 1,
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
    s.created = created;
    Ok(())
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
    make: impl FnOnce(&State, &Path) -> Result<Option<PathBuf>, BuildError>,
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
            let dir = match make(s, &tmp) {
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
    s.created = created;
    s.key = key;
    Ok(())
}

/// Runs a RUN command in a container over the current layers; returns its
/// upper directory, which becomes the new layer.
fn run_step(
    store: &Store,
    runtime: &gantry_runtime::Runtime,
    s: &State,
    argv: &[String],
    args_env: &[String],
    line: usize,
) -> Result<Option<PathBuf>, BuildError> {
    if s.layers.is_empty() {
        return Err(BuildError::Step {
            line,
            msg: "RUN needs a base image with a shell or the binary to run; the image is empty (FROM scratch with nothing copied)".into(),
        });
    }
    let mut env = args_env.to_vec();
    env.extend(s.env());
    if !env.iter().any(|e| e.starts_with("PATH=")) {
        env.push("PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into());
    }
    let process = gantry_runtime::Process {
        args: argv.to_vec(),
        env,
        cwd: s.workdir(),
        user: s.config.config.user.clone().unwrap_or_default(),
        tty: false,
        stdin: false,
    };
    let layers = s
        .layers
        .iter()
        .rev()
        .map(|(d, _, _)| store.layer_path(d))
        .collect();
    let mut cfg = gantry_runtime::ContainerConfig::new("", "build", "", layers, process);
    cfg.name = format!("build_{}", &cfg.id[..12]);
    cfg.network = gantry_runtime::NetworkMode::Host;
    runtime.create(&cfg).map_err(|e| BuildError::Step {
        line,
        msg: e.to_string(),
    })?;
    let res = runtime.run_attached(&cfg.id);
    let cleanup = |keep_upper: bool| -> Option<PathBuf> {
        let dir = runtime.container_dir(&cfg.id);
        let upper = dir.join("upper");
        let moved = if keep_upper {
            let dst = dir.with_file_name(format!(".layer-{}", cfg.id));
            prune_mountpoints(&upper);
            fs::rename(&upper, &dst).ok().map(|_| dst)
        } else {
            None
        };
        let _ = runtime.remove(&cfg.id, true);
        moved
    };
    match res {
        Ok(0) => cleanup(true).map(Some).ok_or_else(|| BuildError::Step {
            line,
            msg: "could not take the RUN step's layer".into(),
        }),
        Ok(code) => {
            cleanup(false);
            Err(BuildError::RunFailed {
                line,
                cmd: format!("{argv:?}"),
                code,
            })
        }
        Err(e) => {
            cleanup(false);
            Err(BuildError::Step {
                line,
                msg: e.to_string(),
            })
        }
    }
}

/// Removes what the runtime made in the upper dir only to mount over it:
/// empty /proc, /sys, /dev, and empty /etc/hosts, hostname, resolv.conf;
/// and device nodes a RUN step made, which layers never carry (see
/// `unpack`): overlay whiteouts (character 0:0) stay.
fn prune_mountpoints(upper: &Path) {
    remove_devices(upper);
    for f in ["etc/hosts", "etc/hostname", "etc/resolv.conf"] {
        let p = upper.join(f);
        if fs::symlink_metadata(&p).is_ok_and(|m| m.is_file() && m.len() == 0) {
            let _ = fs::remove_file(&p);
        }
    }
    for d in ["proc", "sys", "dev", "etc"] {
        let _ = fs::remove_dir(upper.join(d)); // only if empty
    }
}

fn remove_devices(dir: &Path) {
    use std::os::unix::fs::FileTypeExt;
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let Ok(md) = e.metadata() else { continue };
        let t = md.file_type();
        if t.is_dir() {
            remove_devices(&e.path());
        } else if t.is_block_device() || (t.is_char_device() && md.rdev() != 0) {
            tracing::warn!(path = %e.path().display(), "a RUN step made a device node: not kept in the layer");
            let _ = fs::remove_file(e.path());
        }
    }
}

fn hash_tree(h: &mut Sha256, rel: &str, full: &Path, ignore: &DockerIgnore) -> std::io::Result<()> {
    let md = fs::symlink_metadata(full)?;
    h.update(rel.as_bytes());
    h.update(format!("{:o}{}", md.mode(), md.len()).as_bytes());
    if md.is_dir() {
        let mut names: Vec<_> = fs::read_dir(full)?
            .flatten()
            .map(|e| e.file_name())
            .collect();
        names.sort();
        for n in names {
            let child = join_rel(rel, &n.to_string_lossy());
            if !ignore.ignored(&child) {
                hash_tree(h, &child, &full.join(&n), ignore)?;
            }
        }
    } else if md.file_type().is_symlink() {
        h.update(fs::read_link(full)?.to_string_lossy().as_bytes());
    } else {
        let mut f = fs::File::open(full)?;
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = f.read(&mut buf)?;
            if n == 0 {
                break;
            }
            h.update(&buf[..n]);
        }
    }
    Ok(())
}

/// `.dockerignore` patterns: Go's `filepath.Match` with `**`, later
/// patterns win, `!` re-includes; a pattern that matches a directory
/// excludes what is under it.
pub struct DockerIgnore {
    rules: Vec<(GlobMatcher, bool)>,
}

impl DockerIgnore {
    /// Reads `<context>/.dockerignore` (none: nothing ignored).
    pub fn load(context: &Path) -> Result<Self, BuildError> {
        let text = fs::read_to_string(context.join(".dockerignore")).unwrap_or_default();
        Self::parse(&text).map_err(|msg| BuildError::Step { line: 0, msg })
    }

    /// Parses the file's text.
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut rules = Vec::new();
        for l in text.lines() {
            let l = l.trim();
            if l.is_empty() || l.starts_with('#') {
                continue;
            }
            let (neg, pat) = match l.strip_prefix('!') {
                Some(p) => (true, p.trim()),
                None => (false, l),
            };
            let pat = pat
                .trim_start_matches("./")
                .trim_start_matches('/')
                .trim_end_matches('/');
            let g = globset::GlobBuilder::new(pat)
                .literal_separator(true)
                .build()
                .map_err(|e| format!(".dockerignore: bad pattern {l:?}: {e}"))?;
            rules.push((g.compile_matcher(), neg));
        }
        Ok(Self { rules })
    }

    /// Whether a context-relative path is excluded.
    pub fn ignored(&self, rel: &str) -> bool {
        let mut out = false;
        for (g, neg) in &self.rules {
            let mut p = Path::new(rel);
            let mut hit = false;
            loop {
                if g.is_match(p) {
                    hit = true;
                    break;
                }
                match p.parent() {
                    Some(q) if !q.as_os_str().is_empty() => p = q,
                    _ => break,
                }
            }
            if hit {
                out = !neg;
            }
        }
        out
    }
}

/// Expands COPY sources (with wildcards) to context files, refusing any that
/// leave the context and skipping ignored ones.
fn resolve_sources(
    ctx: &Path,
    ignore: &DockerIgnore,
    srcs: &[String],
) -> Result<Vec<(String, PathBuf)>, String> {
    let mut out = Vec::new();
    for src in srcs {
        if src.starts_with("http://") || src.starts_with("https://") {
            return Err(format!(
                "ADD from a URL ({src}) is not supported: put the file in the build context"
            ));
        }
        let mut clean = PathBuf::new();
        for c in Path::new(src).components() {
            match c {
                std::path::Component::Normal(p) => clean.push(p),
                std::path::Component::ParentDir if !clean.pop() => {
                    return Err(format!("COPY source {src:?} is outside the build context"));
                }
                _ => {}
            }
        }
        let rel = clean.to_string_lossy().into_owned();
        let before = out.len();
        if rel.contains(['*', '?', '[']) {
            let g = Glob::new(&rel)
                .map_err(|e| format!("bad pattern {src:?}: {e}"))?
                .compile_matcher();
            let mut all = Vec::new();
            list_context(ctx, Path::new(""), &mut all);
            for f in all {
                if g.is_match(&f) && !ignore.ignored(&f) {
                    out.push((f.clone(), ctx.join(&f)));
                }
            }
        } else {
            let full = ctx.join(&clean);
            // A symlink in the context may not lead out of it.
            let real = fs::canonicalize(&full)
                .map_err(|_| format!("COPY failed: file not found in build context: {src}"))?;
            let real_ctx = fs::canonicalize(ctx).map_err(|e| e.to_string())?;
            if !real.starts_with(&real_ctx) {
                return Err(format!("COPY source {src:?} is outside the build context"));
            }
            if !rel.is_empty() && ignore.ignored(&rel) {
                return Err(format!("COPY failed: {src} is excluded by .dockerignore"));
            }
            out.push((rel, full));
        }
        if out.len() == before {
            return Err(format!(
                "COPY failed: no source files were specified by {src:?}"
            ));
        }
    }
    Ok(out)
}

fn list_context(ctx: &Path, rel: &Path, out: &mut Vec<String>) {
    for e in fs::read_dir(ctx.join(rel)).into_iter().flatten().flatten() {
        let r = rel.join(e.file_name());
        out.push(r.to_string_lossy().into_owned());
        if e.file_type().is_ok_and(|t| t.is_dir()) {
            list_context(ctx, &r, out);
        }
    }
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

#[allow(clippy::too_many_arguments)]
fn copy_into(
    layer: &Path,
    files: &[(String, PathBuf)],
    dest: &str,
    workdir: &str,
    owner: (u32, u32),
    mode: Option<u32>,
    add: bool,
    many: bool,
    ignore: &DockerIgnore,
) -> Result<Option<PathBuf>, String> {
    let dest_abs = if dest.starts_with('/') {
        dest.to_owned()
    } else {
        format!("{}/{dest}", workdir.trim_end_matches('/'))
    };
    let dest_is_dir = dest.ends_with('/') || many || dest == "." || dest.ends_with("/.");
    let dest_rel = safe_rel(&dest_abs)?;
    let io = |e: std::io::Error| format!("COPY to {dest}: {e}");
    for (rel, full) in files {
        let md = fs::metadata(full).map_err(io)?;
        if md.is_dir() {
            let target = layer.join(&dest_rel);
            mkdirs(layer, &dest_rel, owner).map_err(io)?;
            copy_dir(full, rel, &target, owner, mode, ignore).map_err(io)?;
        } else if add && is_archive(full) {
            mkdirs(layer, &dest_rel, owner).map_err(io)?;
            let f = fs::File::open(full).map_err(io)?;
            crate::unpack::unpack(f, &layer.join(&dest_rel))
                .map_err(|e| format!("ADD {rel}: {e}"))?;
        } else {
            let target_rel = if dest_is_dir || layer.join(&dest_rel).is_dir() {
                dest_rel.join(Path::new(rel).file_name().unwrap_or_default())
            } else {
                dest_rel.clone()
            };
            if let Some(parent) = target_rel.parent() {
                mkdirs(layer, parent, (0, 0)).map_err(io)?;
            }
            copy_file(full, &layer.join(&target_rel), owner, mode).map_err(io)?;
        }
    }
    Ok(None)
}

fn safe_rel(abs: &str) -> Result<PathBuf, String> {
    let mut out = PathBuf::new();
    for c in Path::new(abs).components() {
        match c {
            std::path::Component::Normal(p) => out.push(p),
            std::path::Component::ParentDir => {
                out.pop();
            }
            _ => {}
        }
    }
    Ok(out)
}

fn mkdirs(layer: &Path, rel: &Path, owner: (u32, u32)) -> std::io::Result<()> {
    let mut cur = layer.to_path_buf();
    for c in rel.components() {
        cur.push(c);
        if !cur.exists() {
            fs::create_dir(&cur)?;
            fs::set_permissions(&cur, fs::Permissions::from_mode(0o755))?;
            let _ = std::os::unix::fs::lchown(&cur, Some(owner.0), Some(owner.1));
        }
    }
    Ok(())
}

fn copy_file(src: &Path, dst: &Path, owner: (u32, u32), mode: Option<u32>) -> std::io::Result<()> {
    let md = fs::symlink_metadata(src)?;
    if md.file_type().is_symlink() {
        let _ = fs::remove_file(dst);
        std::os::unix::fs::symlink(fs::read_link(src)?, dst)?;
    } else {
        fs::copy(src, dst)?;
        fs::set_permissions(
            dst,
            fs::Permissions::from_mode(mode.unwrap_or(md.mode() & 0o7777)),
        )?;
        let t = nix::sys::time::TimeSpec::new(md.mtime(), 0);
        let _ = nix::sys::stat::utimensat(
            nix::fcntl::AT_FDCWD,
            dst,
            &t,
            &t,
            nix::sys::stat::UtimensatFlags::NoFollowSymlink,
        );
    }
    let _ = std::os::unix::fs::lchown(dst, Some(owner.0), Some(owner.1));
    Ok(())
}

fn join_rel(base: &str, name: &str) -> String {
    if base.is_empty() {
        name.to_owned()
    } else {
        format!("{base}/{name}")
    }
}

/// Copies a context directory (at context path `rel`) into the layer,
/// leaving out what `.dockerignore` excludes.
fn copy_dir(
    src: &Path,
    rel: &str,
    dst: &Path,
    owner: (u32, u32),
    mode: Option<u32>,
    ignore: &DockerIgnore,
) -> std::io::Result<()> {
    for e in fs::read_dir(src)? {
        let e = e?;
        let child_rel = join_rel(rel, &e.file_name().to_string_lossy());
        if ignore.ignored(&child_rel) {
            continue;
        }
        let s = e.path();
        let d = dst.join(e.file_name());
        if e.file_type()?.is_dir() {
            if !d.exists() {
                fs::create_dir(&d)?;
            }
            let m = e.metadata()?.mode() & 0o7777;
            fs::set_permissions(&d, fs::Permissions::from_mode(mode.unwrap_or(m)))?;
            let _ = std::os::unix::fs::lchown(&d, Some(owner.0), Some(owner.1));
            copy_dir(&s, &child_rel, &d, owner, mode, ignore)?;
        } else {
            copy_file(&s, &d, owner, mode)?;
        }
    }
    Ok(())
}

fn is_archive(p: &Path) -> bool {
    let mut head = [0u8; 512];
    let Ok(mut f) = fs::File::open(p) else {
        return false;
    };
    let n = f.read(&mut head).unwrap_or(0);
    if n >= 4 && crate::unpack::sniff(&head[..n]) != crate::unpack::Compression::None {
        return true;
    }
    n >= 262 && &head[257..262] == b"ustar"
}

/// Writes config and manifest and records the image.
fn finish(store: &Store, s: State, tag: Option<&ImageRef>) -> Result<LocalImage, BuildError> {
    let mut config = s.config;
    config.created = Some(s.created);
    config.history = s.history;
    let layers: Vec<(Digest, Digest, u64)> = s.layers;
    Ok(store.put_image(config, &layers, tag)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dockerignore_semantics() {
        let i = DockerIgnore::parse("# c\n*.log\nsecret/\n!keep.log\n**/tmp\n").unwrap();
        assert!(i.ignored("a.log"));
        assert!(!i.ignored("keep.log"));
        assert!(i.ignored("secret/x/y"));
        assert!(i.ignored("deep/er/tmp"));
        assert!(i.ignored("deep/er/tmp/file"));
        assert!(!i.ignored("dir/a.log"), "* does not cross /");
        assert!(!i.ignored("src/main.rs"));
    }

    #[test]
    fn sources_stay_in_context() {
        let t = tempfile::tempdir().unwrap();
        fs::write(t.path().join("a.txt"), "a").unwrap();
        fs::write(t.path().join("b.txt"), "b").unwrap();
        fs::write(t.path().join("c.log"), "c").unwrap();
        std::os::unix::fs::symlink("/etc/passwd", t.path().join("out")).unwrap();
        let none = DockerIgnore::parse("").unwrap();
        let got = resolve_sources(t.path(), &none, &["*.txt".into()]).unwrap();
        let names: Vec<_> = got.iter().map(|(r, _)| r.as_str()).collect();
        assert_eq!(names.len(), 2);
        assert!(resolve_sources(t.path(), &none, &["../x".into()])
            .unwrap_err()
            .contains("outside"));
        assert!(resolve_sources(t.path(), &none, &["out".into()])
            .unwrap_err()
            .contains("outside"));
        assert!(resolve_sources(t.path(), &none, &["missing".into()])
            .unwrap_err()
            .contains("not found"));
        let ign = DockerIgnore::parse("*.log").unwrap();
        assert!(resolve_sources(t.path(), &ign, &["c.log".into()])
            .unwrap_err()
            .contains(".dockerignore"));
    }
}
