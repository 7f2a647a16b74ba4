//! RUN: a command in a container of the native runtime over the stage's
//! layers, with the host's network; its overlay upper directory becomes the
//! new layer.

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use super::{BuildError, State};
use crate::store::Store;

/// Runs a RUN command in a container over the current layers; returns its
/// upper directory, which becomes the new layer.
pub(super) fn run_step(
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
