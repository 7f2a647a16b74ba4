//! Path handling inside a container's root: every path an image supplies is
//! resolved as if the root were `/`, so a symlink in the image can never
//! lead a mount or a file Gantry makes onto the host.

use std::io;
use std::path::{Component, Path, PathBuf};

/// Creates `dir` (and missing parents, 0700 too) and makes it 0700: a
/// directory of Gantry's data that holds keys, environments, logs or image
/// layers (whose device nodes and setuid files must not be reachable by the
/// host's other users).
pub fn private_dir(dir: &Path) -> io::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
}

/// How many symlinks one resolution may follow before it is refused, as the
/// kernel's ELOOP limit.
const MAX_LINKS: u32 = 40;

/// Joins `unsafe_path` onto `root`, resolving `..` and symlinks as if `root`
/// were the filesystem root (Go's `securejoin`). Components that do not exist
/// are appended as they are. The result is always under `root`.
pub fn secure_join(root: &Path, unsafe_path: &str) -> io::Result<PathBuf> {
    let mut resolved: Vec<String> = Vec::new();
    let mut pending: Vec<String> = split(unsafe_path);
    pending.reverse();
    let mut links = 0;
    while let Some(part) = pending.pop() {
        match part.as_str() {
            "" | "." => continue,
            ".." => {
                resolved.pop();
                continue;
            }
            _ => {}
        }
        let mut candidate = root.to_path_buf();
        candidate.extend(&resolved);
        candidate.push(&part);
        match std::fs::symlink_metadata(&candidate) {
            Ok(md) if md.file_type().is_symlink() => {
                links += 1;
                if links > MAX_LINKS {
                    return Err(io::Error::other(format!(
                        "too many levels of symbolic links in {unsafe_path}"
                    )));
                }
                let target = std::fs::read_link(&candidate)?;
                let target = target.to_string_lossy().into_owned();
                if target.starts_with('/') {
                    resolved.clear();
                }
                let mut more = split(&target);
                more.reverse();
                pending.extend(more);
            }
            _ => resolved.push(part),
        }
    }
    let mut out = root.to_path_buf();
    out.extend(&resolved);
    Ok(out)
}

/// overlayfs's `lowerdir` value for layer directories given topmost
/// first. A directory that appears again below its topmost use is left out
/// there (overlayfs refuses a mount that names one twice, and images have
/// identical layers, such as two steps that changed nothing): every path,
/// whiteout and opaque directory of the lower copy is in the upper one,
/// which hides all below it, so the view is the same.
pub fn overlay_lowerdirs(layers: &[PathBuf]) -> String {
    let mut seen = std::collections::HashSet::new();
    layers
        .iter()
        .filter(|p| seen.insert(p.as_path()))
        .map(|p| p.display().to_string())
        .collect::<Vec<_>>()
        .join(":")
}

/// The bytes the files under `p` take on disk (hard links once).
pub fn disk_usage(p: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let mut seen = std::collections::HashSet::new();
    let mut total = 0;
    let mut todo = vec![p.to_owned()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let Ok(m) = e.metadata() else { continue };
            if m.nlink() > 1 && !m.is_dir() && !seen.insert((m.dev(), m.ino())) {
                continue;
            }
            total += m.blocks() * 512;
            if m.is_dir() {
                todo.push(e.path());
            }
        }
    }
    total
}

fn split(p: &str) -> Vec<String> {
    Path::new(p)
        .components()
        .filter_map(|c| match c {
            Component::Normal(s) => Some(s.to_string_lossy().into_owned()),
            Component::ParentDir => Some("..".to_owned()),
            _ => None,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn lowerdirs_name_each_layer_once_at_its_topmost_place() {
        let p = |v: &[&str]| v.iter().map(PathBuf::from).collect::<Vec<_>>();
        assert_eq!(
            super::overlay_lowerdirs(&p(&["/a", "/b", "/c"])),
            "/a:/b:/c"
        );
        assert_eq!(
            super::overlay_lowerdirs(&p(&["/e", "/b", "/e", "/a", "/e"])),
            "/e:/b:/a"
        );
        assert_eq!(super::overlay_lowerdirs(&[]), "");
    }

    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn plain_and_dotdot_stay_inside() {
        let t = tempfile::tempdir().unwrap();
        let r = t.path();
        assert_eq!(secure_join(r, "/a/b").unwrap(), r.join("a/b"));
        assert_eq!(
            secure_join(r, "../../etc/passwd").unwrap(),
            r.join("etc/passwd")
        );
        assert_eq!(secure_join(r, "a/../../x").unwrap(), r.join("x"));
    }

    #[test]
    fn symlinks_resolve_within_root() {
        let t = tempfile::tempdir().unwrap();
        let r = t.path();
        std::fs::create_dir(r.join("real")).unwrap();
        symlink("/real", r.join("etc")).unwrap();
        symlink("../../../../real", r.join("up")).unwrap();
        symlink("loop2", r.join("loop1")).unwrap();
        symlink("loop1", r.join("loop2")).unwrap();
        assert_eq!(secure_join(r, "/etc/hosts").unwrap(), r.join("real/hosts"));
        assert_eq!(secure_join(r, "up/x").unwrap(), r.join("real/x"));
        assert!(secure_join(r, "loop1/x").is_err());
    }
}
