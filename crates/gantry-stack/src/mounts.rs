//! Volumes and mounts as compose writes them: the top-level `volumes:`
//! declarations (external, `name:`, the local driver's options) and each
//! service's mounts in the short (`SRC:DST:MODES`) and long syntax, with
//! bind sources resolved against the stack file's folder.

use std::collections::BTreeMap;
use std::path::{Component, PathBuf};

use crate::raw::{self, External, Scalar};
use crate::{Ctx, Mount, MountType, StackError, VolumeOptions};

/// The options of the local driver (Docker's, and `size`).
pub const LOCAL_DRIVER_OPTS: [&str; 4] = gantry_units::VOLUME_OPTIONS;

/// What a stack file is read against beyond its variables: where
/// relative and `~` bind sources resolve, and the active profiles.
#[derive(Debug, Clone, Default)]
pub struct ParseOptions {
    /// The stack file's folder, absolute (none: relative binds refused).
    pub dir: Option<PathBuf>,
    /// The home folder of the user running the CLI (for `~`).
    pub home: Option<PathBuf>,
    /// Active profiles (`--profile`, COMPOSE_PROFILES); `*` makes every
    /// profile active.
    pub profiles: std::collections::BTreeSet<String>,
}

/// The top-level `volumes:` key: each volume's options.
pub(crate) fn declared(
    ctx: &Ctx<'_>,
    top: BTreeMap<String, Option<raw::TopVolume>>,
    secrets: &BTreeMap<String, crate::FileDecl>,
) -> Result<BTreeMap<String, VolumeOptions>, StackError> {
    let mut out = BTreeMap::new();
    for (key, v) in top {
        let v = v.unwrap_or_default();
        let mut o = VolumeOptions::default();
        if let Some(d) = &v.driver {
            if d.value != "local" {
                return ctx.err(
                    &d.referenced,
                    format!("volume {key}: driver {:?} is not available: Gantry's volumes use the local driver (give driver_opts type, o and device to mount NFS, CIFS or a host folder)", d.value),
                );
            }
        }
        for (k, val) in v.driver_opts.unwrap_or_default() {
            o.driver_opts.insert(k, val.text());
        }
        if let Some(x) = &v.x_gantry {
            let at = &x.referenced;
            if let Some(size) = &x.value.size {
                if o.driver_opts.contains_key("size") {
                    return ctx.err(
                        at,
                        format!("volume {key}: x-gantry size and driver_opts size: give one"),
                    );
                }
                o.driver_opts.insert("size".into(), size.text());
            }
            match x.value.replicas {
                None | Some(0 | 1) => {}
                Some(2) if v.external.is_some() => {
                    return ctx.err(
                        at,
                        format!("volume {key}: x-gantry replicas is for volumes the stack makes, not external ones"),
                    );
                }
                Some(2) if !o.driver_opts.is_empty() && !o.driver_opts.contains_key("size") => {
                    return ctx.err(
                        at,
                        format!("volume {key}: x-gantry replicas copies the volume's own files; a volume mounted from a device (type, o, device) has none here"),
                    );
                }
                Some(2) => o.replicas = 2,
                Some(n) => {
                    return ctx.err(
                        at,
                        format!("volume {key}: x-gantry replicas: {n}: 2 (a standby on a second node) is the most"),
                    );
                }
            }
            if let Some(b) = &x.value.backup {
                o.backup = Some(backup_policy(&key, b, secrets).or_else(|e| ctx.err(at, e))?);
            }
        }
        gantry_units::volume_options(&o.driver_opts)
            .map_err(|e| ctx.nowhere(format!("volume {key}: driver_opts: {e}")))?;
        if let Some(n) = &v.name {
            o.name = Some(n.value.clone());
        }
        if let Some(e) = &v.external {
            let external = match &e.value {
                External::Flag(f) => *f,
                External::Named { name } => {
                    o.name = Some(name.clone());
                    true
                }
            };
            if external {
                if v.driver.is_some() || !o.driver_opts.is_empty() || v.labels.is_some() {
                    return ctx.err(
                        &e.referenced,
                        format!("volume {key}: an external volume exists already; driver, driver_opts and labels cannot be set with external"),
                    );
                }
                o.external = true;
                o.name.get_or_insert_with(|| key.clone());
            }
        }
        if let Some(n) = &o.name {
            if !crate::valid_volume(n) {
                let at = v.name.as_ref().map(|n| n.referenced);
                let msg = format!("volume {key}: invalid name {n:?}: letters, digits, '_', '.' and '-', starting with a letter or digit");
                return match at {
                    Some(at) => ctx.err(&at, msg),
                    None => Err(ctx.nowhere(msg)),
                };
            }
        }
        o.labels = crate::dict(v.labels, &|_| None);
        out.insert(key, o);
    }
    Ok(out)
}

/// A volume's `x-gantry: {backup: ...}`, checked; its secrets by their
/// keys in the stack file (named as in the cluster by
/// [`crate::Stack::resolve_files`]).
fn backup_policy(
    volume: &str,
    b: &raw::XBackup,
    secrets: &BTreeMap<String, crate::FileDecl>,
) -> Result<gantry_spec::BackupPolicy, String> {
    let at = |why: String| format!("volume {volume}: x-gantry backup: {why}");
    b.schedule.parse::<gantry_units::Schedule>().map_err(at)?;
    let to = b.to.trim();
    let folder = to.strip_prefix("file://").unwrap_or(to);
    let s3_bucket = to
        .strip_prefix("s3://")
        .map(|r| r.split(['/', '?']).next().unwrap_or(""));
    match s3_bucket {
        Some("") => return Err(at(format!("to {to:?} names no bucket"))),
        Some(_) => {}
        None if folder.starts_with('/') => {}
        None => {
            return Err(at(format!(
                "to {to:?}: give s3://BUCKET/PREFIX or a node's absolute folder (file:///DIR)"
            )))
        }
    }
    for (what, name) in [
        ("key", Some(&b.key)),
        ("credentials", b.credentials.as_ref()),
    ] {
        if let Some(n) = name {
            if !secrets.contains_key(n) {
                return Err(at(format!(
                    "{what} {n:?} is not declared under secrets: (an existing one: external: true)"
                )));
            }
        }
    }
    if b.pre.is_some() && b.no_freeze == Some(true) {
        return Err(at(
            "pre already leaves the tasks running; no_freeze goes without it".into(),
        ));
    }
    Ok(gantry_spec::BackupPolicy {
        schedule: b.schedule.trim().to_owned(),
        to: to.to_owned(),
        key: b.key.clone(),
        credentials: b.credentials.clone(),
        keep: b.keep.unwrap_or(0),
        pre: b.pre.clone(),
        post: b.post.clone(),
        no_freeze: b.no_freeze.unwrap_or(false),
    })
}

/// Resolves a bind source written relative (`./x`, `../x`) or in the home
/// folder (`~`, `~/x`) to an absolute, normalised path.
pub(crate) fn bind_source(src: &str, paths: &ParseOptions) -> Result<String, String> {
    let joined = if src.starts_with('/') {
        PathBuf::from(src)
    } else if let Some(rest) = src.strip_prefix('~') {
        if !(rest.is_empty() || rest.starts_with('/')) {
            return Err(format!(
                "bind source {src:?}: ~user is not supported; write the path"
            ));
        }
        let home = paths
            .home
            .as_ref()
            .ok_or_else(|| format!("bind source {src:?}: HOME is not set"))?;
        home.join(rest.trim_start_matches('/'))
    } else {
        let dir = paths.dir.as_ref().ok_or_else(|| {
            format!("bind source {src:?} is relative and the stack file's folder is not known")
        })?;
        dir.join(src)
    };
    let mut out = PathBuf::from("/");
    for c in joined.components() {
        match c {
            Component::Normal(p) => out.push(p),
            Component::ParentDir => {
                out.pop();
            }
            Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
        }
    }
    Ok(out.display().to_string())
}

/// One entry of a service's `volumes:`.
pub(crate) fn mount(
    v: &raw::Volume,
    declared: &BTreeMap<String, VolumeOptions>,
    paths: &ParseOptions,
    warnings: &mut Vec<String>,
) -> Result<Mount, String> {
    let named = |source: &str, nocopy: bool| -> Result<VolumeOptions, String> {
        let mut o = declared.get(source).cloned().ok_or_else(|| {
            format!("volume {source:?} is not declared under the top-level volumes key")
        })?;
        o.nocopy = nocopy;
        Ok(o)
    };
    match v {
        raw::Volume::Short(s) => {
            let v = gantry_units::volume_spec(s)?;
            if v.selinux.is_some() {
                warnings.push(format!(
                    "volume {s:?}: :z and :Z relabel for SELinux, which Gantry's nodes do not enforce; ignored"
                ));
            }
            let Some(source) = v.source else {
                // Anonymous: a fresh volume for each task.
                let mut m = Mount::new(MountType::Volume, "", v.target);
                m.read_only = v.read_only;
                m.volume.nocopy = v.nocopy;
                return Ok(m);
            };
            let mut m = if v.bind {
                let mut m = Mount::new(MountType::Bind, bind_source(&source, paths)?, v.target);
                m.propagation = v.propagation;
                m
            } else {
                let mut m = Mount::new(MountType::Volume, source.clone(), v.target);
                m.volume = named(&source, v.nocopy)?;
                m
            };
            m.read_only = v.read_only;
            Ok(m)
        }
        raw::Volume::Long(l) => {
            let kind = match l.kind.as_str() {
                "npipe" => return Err("type npipe is a Windows named pipe: not on Linux nodes".into()),
                "cluster" => return Err("type cluster (Swarm's CSI volumes) is not supported: use a volume with driver_opts, or a bind".into()),
                "image" => return Err("type image is not supported: copy the files in a build stage instead".into()),
                k => MountType::parse(k).ok_or_else(|| {
                    format!("invalid volume type {k:?}: use volume, bind or tmpfs")
                })?,
            };
            if !l.target.starts_with('/') {
                return Err(format!(
                    "invalid volume target {:?}: must be an absolute path",
                    l.target
                ));
            }
            let source = l.source.clone().unwrap_or_default();
            let mut m = match kind {
                MountType::Volume if source.is_empty() => {
                    Mount::new(MountType::Volume, "", l.target.clone())
                }
                MountType::Volume => {
                    let mut m = Mount::new(MountType::Volume, source.clone(), l.target.clone());
                    m.volume = named(&source, false)?;
                    m
                }
                MountType::Bind if source.is_empty() => {
                    return Err("a bind mount needs a source".into())
                }
                MountType::Bind => Mount::new(
                    MountType::Bind,
                    bind_source(&source, paths)?,
                    l.target.clone(),
                ),
                MountType::Tmpfs if !source.is_empty() => {
                    return Err("a tmpfs mount has no source".into())
                }
                MountType::Tmpfs => Mount::new(MountType::Tmpfs, "", l.target.clone()),
            };
            m.read_only = l.read_only.unwrap_or(false);
            if let Some(o) = &l.volume {
                if kind != MountType::Volume {
                    return Err(format!(
                        "volume options are for type volume, not {}",
                        l.kind
                    ));
                }
                m.volume.nocopy = o.nocopy.unwrap_or(false);
                if o.subpath.is_some() {
                    return Err("volume.subpath is not supported: mount the volume and point the program at the folder".into());
                }
            }
            if let Some(b) = &l.bind {
                if kind != MountType::Bind {
                    return Err(format!("bind options are for type bind, not {}", l.kind));
                }
                if let Some(p) = &b.propagation {
                    if !gantry_units::PROPAGATIONS.contains(&p.as_str()) {
                        return Err(format!(
                            "invalid bind propagation {p:?}: use {}",
                            gantry_units::PROPAGATIONS.join(", ")
                        ));
                    }
                    m.propagation = Some(p.clone());
                }
                if b.create_host_path == Some(true) {
                    return Err("bind.create_host_path is not supported: a stack's bind source must exist on the node".into());
                }
                if b.selinux.is_some() {
                    warnings.push(format!(
                        "bind {source:?}: selinux relabelling does not apply on Gantry's nodes; ignored"
                    ));
                }
            }
            if let Some(t) = &l.tmpfs {
                if kind != MountType::Tmpfs {
                    return Err(format!("tmpfs options are for type tmpfs, not {}", l.kind));
                }
                if let Some(size) = &t.size {
                    m.tmpfs_size = Some(tmpfs_size(size)?);
                }
                if let Some(mode) = &t.mode {
                    // 1777 as YAML reads it: octal, decimal or the text.
                    if !matches!(mode.text().as_str(), "1023" | "1777" | "01777" | "0o1777") {
                        warnings.push(format!(
                            "tmpfs {}: mode is ignored; tmpfs mounts are mode 1777",
                            l.target
                        ));
                    }
                }
            }
            Ok(m)
        }
    }
}

fn tmpfs_size(s: &Scalar) -> Result<u64, String> {
    match s {
        Scalar::Int(i) if *i > 0 => Ok(*i as u64),
        other => gantry_units::size(&other.text()).map_err(|e| format!("tmpfs size: {e}")),
    }
}

/// A service's `tmpfs:` entry: `PATH[:size=SIZE,mode=MODE,...]`.
pub(crate) fn tmpfs(entry: &str) -> Result<Mount, String> {
    let (target, opts) = entry.split_once(':').unwrap_or((entry, ""));
    if !target.starts_with('/') {
        return Err(format!("tmpfs {entry:?}: the path must be absolute"));
    }
    let mut m = Mount::new(MountType::Tmpfs, "", target);
    for o in opts.split(',').filter(|o| !o.is_empty()) {
        match o.split_once('=') {
            Some(("size", v)) => {
                m.tmpfs_size =
                    Some(gantry_units::size(v).map_err(|e| format!("tmpfs {entry:?}: {e}"))?)
            }
            Some(("mode" | "uid" | "gid", _)) | None => {}
            Some((k, _)) => return Err(format!("tmpfs {entry:?}: unknown option {k:?}: use size")),
        }
    }
    Ok(m)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bind_sources_resolve_against_the_folder_and_home() {
        let p = ParseOptions {
            dir: Some("/srv/app".into()),
            home: Some("/home/ann".into()),
            ..ParseOptions::default()
        };
        assert_eq!(bind_source("./init", &p).unwrap(), "/srv/app/init");
        assert_eq!(bind_source("../shared/x", &p).unwrap(), "/srv/shared/x");
        assert_eq!(bind_source("~/data", &p).unwrap(), "/home/ann/data");
        assert_eq!(bind_source("~", &p).unwrap(), "/home/ann");
        assert_eq!(bind_source("/a/./b/../c", &p).unwrap(), "/a/c");
        assert!(bind_source("~bob/x", &p).is_err());
        assert!(bind_source("./x", &ParseOptions::default()).is_err());
    }
}
