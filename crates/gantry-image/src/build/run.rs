//! RUN: a command in a container of the native runtime over the stage's
//! layers, with the host's network; its overlay upper directory becomes the
//! new layer.

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use sha2::{Digest as _, Sha256};

use super::copy::{resolve_in_root, RootView};
use super::{BuildError, Layer, State, StepContext};
use crate::dockerfile::{CacheSharing, RunMount};
use crate::stages::Source;
use crate::store::Store;

/// A RUN mount, resolved before the step (its part of the cache key is
/// known then) and set up only when the step runs.
#[derive(Debug)]
pub(super) enum Planned {
    /// A directory of the build cache's mounts.
    Cache {
        dir: PathBuf,
        target: String,
        read_only: bool,
        mode: u32,
        owner: (u32, u32),
        sharing: CacheSharing,
    },
    /// A secret's value, written to a file only while the step runs.
    Secret {
        value: Vec<u8>,
        target: String,
        mode: u32,
        owner: (u32, u32),
    },
    /// A path of the context.
    Context {
        path: PathBuf,
        target: String,
        rw: bool,
    },
    /// A path of a stage's or an image's filesystem.
    Layers {
        layers: Vec<Layer>,
        source: String,
        target: String,
        rw: bool,
    },
    Tmpfs {
        target: String,
        size: Option<u64>,
    },
}

impl Planned {
    fn target(&self) -> &str {
        match self {
            Self::Cache { target, .. }
            | Self::Secret { target, .. }
            | Self::Context { target, .. }
            | Self::Layers { target, .. }
            | Self::Tmpfs { target, .. } => target,
        }
    }
}

/// Resolves a RUN's mounts (`word` expands build args in their values);
/// returns them with their part of the step's cache key: what a bind
/// mount shows (the context's files hashed, a stage's or an image's own
/// key), the other mounts' settings. A secret's value is never part of it.
pub(super) fn plan_mounts(
    c: &StepContext<'_>,
    line: usize,
    mounts: &[RunMount],
    word: &dyn Fn(&str) -> Result<String, BuildError>,
) -> Result<(Vec<Planned>, String), BuildError> {
    let mut out = Vec::new();
    let mut key = String::new();
    let err = |msg: String| BuildError::Step { line, msg };
    for m in mounts {
        let target = word(m.target())?;
        if !target.starts_with('/') {
            return Err(err(format!(
                "--mount target {target:?} must be an absolute path"
            )));
        }
        match m {
            RunMount::Cache {
                id,
                read_only,
                mode,
                uid,
                gid,
                sharing,
                ..
            } => {
                let id = match id {
                    Some(i) => word(i)?,
                    None => target.clone(),
                };
                let dir = c
                    .run
                    .store
                    .root()
                    .join(crate::store::BUILD_CACHE_MOUNTS)
                    .join(hex::encode(Sha256::digest(id.as_bytes())));
                key.push_str(&format!("cache {id} {target} {read_only};"));
                out.push(Planned::Cache {
                    dir,
                    target,
                    read_only: *read_only,
                    mode: mode.unwrap_or(0o755),
                    owner: (*uid, *gid),
                    sharing: *sharing,
                });
            }
            RunMount::Secret {
                id,
                required,
                mode,
                uid,
                gid,
                ..
            } => {
                let id = word(id)?;
                match c.run.opts.secrets.get(&id) {
                    Some(value) => out.push(Planned::Secret {
                        value: value.clone(),
                        target: target.clone(),
                        mode: *mode,
                        owner: (*uid, *gid),
                    }),
                    None if *required => {
                        return Err(err(format!(
                            "secret {id} is required: give it with --secret id={id},src=FILE"
                        )))
                    }
                    None => {}
                }
                key.push_str(&format!("secret {id} {target};"));
            }
            RunMount::Bind {
                source, from, rw, ..
            } => {
                let rw = *rw;
                if rw {
                    key.push_str("rw ");
                }
                let source = word(source)?;
                match from {
                    None => {
                        let files = super::copy::resolve_sources(
                            &c.run.opts.context,
                            &super::DockerIgnore::default(),
                            &[if source.is_empty() {
                                ".".into()
                            } else {
                                source.clone()
                            }],
                        )
                        .map_err(err)?;
                        let (rel, path) = files
                            .into_iter()
                            .next()
                            .ok_or_else(|| err(format!("--mount source {source:?} not found")))?;
                        let mut h = Sha256::new();
                        super::copy::hash_tree(&mut h, &rel, &path, c.run.ignore)
                            .map_err(|e| err(format!("read {}: {e}", path.display())))?;
                        key.push_str(&format!("bind {} {target};", hex::encode(h.finalize())));
                        out.push(Planned::Context { path, target, rw });
                    }
                    Some(from) => {
                        let from = dockerfile_word(c, from).map_err(err)?;
                        let (layers, source_key) = match c.run.plan.resolve(c.stage, &from, line)? {
                            Source::Stage(j) => {
                                let st = c
                                    .built
                                    .get(&j)
                                    .ok_or_else(|| err(format!("stage {from} is not built")))?;
                                (st.layers.clone(), st.key.clone())
                            }
                            Source::Image(image) => {
                                let (img, layers) = c.run.images.get(&image).map_err(err)?;
                                (layers, img.record.manifest.clone())
                            }
                        };
                        key.push_str(&format!("bind {source_key} {source} {target};"));
                        out.push(Planned::Layers {
                            layers,
                            source,
                            target,
                            rw,
                        });
                    }
                }
            }
            RunMount::Tmpfs { size, .. } => {
                key.push_str(&format!("tmpfs {target} {size:?};"));
                out.push(Planned::Tmpfs {
                    target,
                    size: *size,
                });
            }
        }
    }
    Ok((out, key))
}

/// A `from=` expanded with the global args, as `COPY --from`.
fn dockerfile_word(c: &StepContext<'_>, w: &str) -> Result<String, String> {
    crate::dockerfile::process_word(w, &|k: &str| c.run.meta_args.get(k).cloned())
}

/// The mounts set up for one run, undone when dropped: the stage
/// filesystems unmounted, the secrets' files removed.
struct Mounted {
    mounts: Vec<gantry_runtime::Mount>,
    _roots: Vec<RootView>,
    secrets: Option<PathBuf>,
    /// Cache mounts held (`sharing=locked|private`).
    _locks: Vec<nix::fcntl::Flock<fs::File>>,
    /// Empty cache directories given to a private user of a busy cache.
    spare: Vec<PathBuf>,
    /// Scratch copies of `rw` bind mounts: an overlay over a directory
    /// (its upper and work directories beside it), or a file's copy.
    scratch: Vec<(PathBuf, bool)>,
}

impl Mounted {
    /// `path` as a `rw` bind mount shows it: a directory through an
    /// overlay whose writes land in a scratch directory, a file as a copy;
    /// both go when the step ends. As it is when not `rw`.
    fn writable(&mut self, store: &Store, path: PathBuf, rw: bool) -> Result<PathBuf, String> {
        if !rw {
            return Ok(path);
        }
        if path.to_string_lossy().contains([',', ':']) {
            return Err(format!(
                "--mount rw: the path {} has a ',' or ':', which an overlay cannot name",
                path.display()
            ));
        }
        let base = store.temp_path("bind-rw");
        fs::create_dir_all(&base).map_err(|e| format!("create {}: {e}", base.display()))?;
        if !path.is_dir() {
            self.scratch.push((base.clone(), false));
            let copy = base.join("file");
            fs::copy(&path, &copy).map_err(|e| format!("copy {}: {e}", path.display()))?;
            return Ok(copy);
        }
        let (upper, work, merged) = (base.join("upper"), base.join("work"), base.join("merged"));
        for d in [&upper, &work, &merged] {
            fs::create_dir(d).map_err(|e| format!("create {}: {e}", d.display()))?;
        }
        // The upper directory takes the lower's owner and mode, as the
        // mounted root shows them.
        if let Ok(meta) = fs::metadata(&path) {
            let _ = fs::set_permissions(&upper, fs::Permissions::from_mode(meta.mode() & 0o7777));
            let _ = std::os::unix::fs::chown(&upper, Some(meta.uid()), Some(meta.gid()));
        }
        let opts = format!(
            "lowerdir={},upperdir={},workdir={}",
            path.display(),
            upper.display(),
            work.display()
        );
        if let Err(e) = nix::mount::mount(
            Some("overlay"),
            &merged,
            Some("overlay"),
            nix::mount::MsFlags::MS_NODEV | nix::mount::MsFlags::MS_NOSUID,
            Some(opts.as_str()),
        ) {
            let _ = fs::remove_dir_all(&base);
            return Err(format!("mount a writable view of {}: {e}", path.display()));
        }
        self.scratch.push((base, true));
        Ok(merged)
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        if let Some(d) = &self.secrets {
            let _ = fs::remove_dir_all(d);
        }
        for d in &self.spare {
            let _ = fs::remove_dir_all(d);
        }
        for (d, mounted) in &self.scratch {
            if *mounted {
                let _ = nix::mount::umount2(&d.join("merged"), nix::mount::MntFlags::MNT_DETACH);
            }
            let _ = fs::remove_dir_all(d);
        }
    }
}

fn set_up(store: &Store, planned: &[Planned]) -> Result<Mounted, String> {
    let mut m = Mounted {
        mounts: Vec::new(),
        _roots: Vec::new(),
        secrets: None,
        _locks: Vec::new(),
        spare: Vec::new(),
        scratch: Vec::new(),
    };
    let bind = |source: PathBuf, target: &str, read_only: bool| gantry_runtime::Mount {
        kind: gantry_runtime::MountKind::Bind,
        source,
        destination: target.to_owned(),
        read_only,
        options: Default::default(),
    };
    for p in planned {
        match p {
            Planned::Cache {
                dir,
                target,
                read_only,
                mode,
                owner,
                sharing,
            } => {
                let make = |dir: &Path| -> Result<(), String> {
                    fs::create_dir_all(dir)
                        .map_err(|e| format!("create {}: {e}", dir.display()))?;
                    fs::set_permissions(dir, fs::Permissions::from_mode(*mode))
                        .map_err(|e| e.to_string())?;
                    std::os::unix::fs::chown(dir, Some(owner.0), Some(owner.1))
                        .map_err(|e| e.to_string())
                };
                if !dir.exists() {
                    make(dir)?;
                }
                let mut source = dir.clone();
                if *sharing != CacheSharing::Shared {
                    use nix::fcntl::{Flock, FlockArg};
                    let lock = fs::OpenOptions::new()
                        .create(true)
                        .truncate(false)
                        .write(true)
                        .open(dir.with_extension("lock"))
                        .map_err(|e| format!("cache lock: {e}"))?;
                    let how = if *sharing == CacheSharing::Locked {
                        FlockArg::LockExclusive
                    } else {
                        FlockArg::LockExclusiveNonblock
                    };
                    match Flock::lock(lock, how) {
                        Ok(held) => m._locks.push(held),
                        Err((_, e)) if *sharing == CacheSharing::Locked => {
                            return Err(format!("cache lock: {e}"))
                        }
                        Err(_) => {
                            // Private and in use: an empty one of its own.
                            source = store.temp_path("cache-private");
                            make(&source)?;
                            m.spare.push(source.clone());
                        }
                    }
                }
                m.mounts.push(bind(source, target, *read_only));
            }
            Planned::Secret {
                value,
                target,
                mode,
                owner,
            } => {
                let dir = match &m.secrets {
                    Some(d) => d.clone(),
                    None => {
                        let d = store.temp_path("secrets");
                        fs::create_dir_all(&d).map_err(|e| e.to_string())?;
                        fs::set_permissions(&d, fs::Permissions::from_mode(0o700))
                            .map_err(|e| e.to_string())?;
                        m.secrets = Some(d.clone());
                        d
                    }
                };
                let f = dir.join(m.mounts.len().to_string());
                fs::write(&f, value).map_err(|e| e.to_string())?;
                fs::set_permissions(&f, fs::Permissions::from_mode(*mode))
                    .map_err(|e| e.to_string())?;
                std::os::unix::fs::chown(&f, Some(owner.0), Some(owner.1))
                    .map_err(|e| e.to_string())?;
                m.mounts.push(bind(f, target, true));
            }
            Planned::Context { path, target, rw } => {
                let path = m.writable(store, path.clone(), *rw)?;
                m.mounts.push(bind(path, target, !*rw));
            }
            Planned::Layers {
                layers,
                source,
                target,
                rw,
            } => {
                let root = RootView::open(store, layers)?;
                let path = resolve_in_root(root.path(), source)?;
                let path = m.writable(store, path, *rw)?;
                m.mounts.push(bind(path, target, !*rw));
                m._roots.push(root);
            }
            Planned::Tmpfs { target, size } => m.mounts.push(gantry_runtime::Mount {
                kind: gantry_runtime::MountKind::Tmpfs,
                source: PathBuf::new(),
                destination: target.clone(),
                read_only: false,
                options: gantry_runtime::MountOptions {
                    tmpfs_size: *size,
                    ..Default::default()
                },
            }),
        }
    }
    Ok(m)
}

/// Removes from a RUN's layer what was made only to mount over (a mount's
/// target, and the directories made for it) when the layers below do not
/// have it: nothing of a mount is left in the image.
fn remove_stubs(layer: &Path, below: &[PathBuf], target: &str) {
    let mut rel = PathBuf::from(target.trim_start_matches('/'));
    loop {
        if rel.as_os_str().is_empty()
            || below
                .iter()
                .any(|l| fs::symlink_metadata(l.join(&rel)).is_ok())
        {
            return;
        }
        let p = layer.join(&rel);
        match fs::symlink_metadata(&p) {
            Ok(md) if md.is_dir() => {
                if fs::remove_dir(&p).is_err() {
                    return; // not empty: the step wrote there
                }
            }
            Ok(md) if md.is_file() && md.len() == 0 => {
                let _ = fs::remove_file(&p);
            }
            _ => return,
        }
        if !rel.pop() {
            return;
        }
    }
}

/// Runs a RUN command in a container over the current layers; returns its
/// upper directory, which becomes the new layer.
#[allow(clippy::too_many_arguments)]
pub(super) fn run_step(
    store: &Store,
    runtime: &gantry_runtime::Runtime,
    s: &State,
    argv: &[String],
    args_env: &[String],
    line: usize,
    planned: &[Planned],
    no_network: bool,
    helper: Option<&(PathBuf, PathBuf)>,
    log: &mut dyn FnMut(&str),
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
    let layers: Vec<PathBuf> = s
        .layers
        .iter()
        .rev()
        .map(|(d, _, _)| store.layer_path(d))
        .collect();
    let mounted = set_up(store, planned).map_err(|msg| BuildError::Step { line, msg })?;
    let mut cfg = gantry_runtime::ContainerConfig::new("", "build", "", layers.clone(), process);
    cfg.name = format!("build_{}", &cfg.id[..12]);
    cfg.network = if no_network {
        gantry_runtime::NetworkMode::None
    } else {
        gantry_runtime::NetworkMode::Host
    };
    cfg.mounts = mounted.mounts.clone();
    runtime.create(&cfg).map_err(|e| BuildError::Step {
        line,
        msg: e.to_string(),
    })?;
    let res = match helper {
        None => runtime.run_attached(&cfg.id),
        Some((bin, data_dir)) => run_in_helper(bin, data_dir, &cfg.id, log),
    };
    let cleanup = |keep_upper: bool| -> Option<PathBuf> {
        let dir = runtime.container_dir(&cfg.id);
        let upper = dir.join("upper");
        let moved = if keep_upper {
            let dst = dir.with_file_name(format!(".layer-{}", cfg.id));
            prune_mountpoints(&upper);
            for p in planned {
                remove_stubs(&upper, &layers, p.target());
            }
            fs::rename(&upper, &dst).ok().map(|_| dst)
        } else {
            None
        };
        let _ = runtime.remove(&cfg.id, true);
        moved
    };
    let _keep_until_the_run_ends = &mounted;
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

/// Runs a created container in the single-threaded helper; its output
/// (stdout and stderr, merged) goes to `log` line by line.
fn run_in_helper(
    bin: &Path,
    data_dir: &Path,
    id: &str,
    log: &mut dyn FnMut(&str),
) -> Result<i32, gantry_runtime::RuntimeError> {
    use std::io::BufRead;
    let other = |e: String| gantry_runtime::RuntimeError::Other(e);
    // Close-on-exec: a RUN of another stage started meanwhile must not
    // hold this pipe open.
    let (reader, writer) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
        .map_err(|e| other(format!("pipe: {e}")))?;
    let writer2 = writer
        .try_clone()
        .map_err(|e| other(format!("pipe: {e}")))?;
    let reader = fs::File::from(reader);
    let mut child = std::process::Command::new(bin)
        .arg("--data-dir")
        .arg(data_dir)
        .args(["agent-helper", "run", id])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::from(writer))
        .stderr(std::process::Stdio::from(writer2))
        .spawn()
        .map_err(|e| other(format!("start {}: {e}", bin.display())))?;
    let mut failed = None;
    for line in std::io::BufReader::new(reader).lines() {
        let Ok(line) = line else { break };
        match line.strip_prefix(super::RUN_FAILED) {
            Some(why) => failed = Some(why.to_owned()),
            None => log(&line),
        }
    }
    let status = child.wait().map_err(|e| other(format!("wait: {e}")))?;
    match failed {
        Some(why) => Err(other(why)),
        None => Ok(status.code().unwrap_or(128 + 9)),
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
