//! Standby copies of replicated volumes (`x-gantry: {replicas: 2}`) kept
//! on this node for another node's volume, under `DATA/replicas/NAME`:
//! `current` is the last complete copy; a new one is built in `next` (a
//! tree of hard links to `current`, with what changed applied: tar
//! replaces a file by a new one, so `current` is never written) and then
//! swapped in. A node that stops midway keeps `current`, or `old`, which
//! [`recover`] puts back: a copy is used whole or not at all.
//!
//! When the volume's node dies the managers make this node its home; the
//! volume is then made from `current` before the first task mounts it
//! ([`promote`]).

use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use gantry_runtime::Runtime;

use crate::volume_copy::{Imported, Listing};

fn root(data_dir: &Path, name: &str) -> PathBuf {
    data_dir.join("replicas").join(name)
}

/// Puts a swap cut short back: `current` is whole, or `old` is.
fn recover(r: &Path) -> io::Result<()> {
    let (cur, old, next) = (r.join("current"), r.join("old"), r.join("next"));
    if !cur.exists() && old.exists() {
        std::fs::rename(&old, &cur)?;
    }
    for d in [old, next] {
        match std::fs::remove_dir_all(&d) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Whether this node holds a complete copy of volume `name`.
pub(crate) fn has(data_dir: &Path, name: &str) -> bool {
    let r = root(data_dir, name);
    r.join("current").is_dir() || r.join("old").is_dir()
}

/// What the last complete copy holds (nothing when there is none).
pub(crate) fn listing(data_dir: &Path, name: &str) -> io::Result<Listing> {
    let r = root(data_dir, name);
    std::fs::create_dir_all(&r)?;
    recover(&r)?;
    let cur = r.join("current");
    if cur.is_dir() {
        crate::volume_copy::listing(&cur)
    } else {
        Ok(Listing::new())
    }
}

/// `to` made a tree of `from`'s folders (same mode, owner, times) and
/// links, and hard links to its files.
fn link_tree(from: &Path, to: &Path) -> io::Result<()> {
    let copy_meta = |src: &std::fs::Metadata, dst: &Path| -> io::Result<()> {
        std::os::unix::fs::lchown(dst, Some(src.uid()), Some(src.gid()))?;
        if !src.file_type().is_symlink() {
            std::fs::set_permissions(
                dst,
                std::os::unix::fs::PermissionsExt::from_mode(src.mode() & 0o7777),
            )?;
        }
        let t = |s: i64, ns: i64| nix::sys::time::TimeSpec::new(s, ns);
        let _ = nix::sys::stat::utimensat(
            nix::fcntl::AT_FDCWD,
            dst,
            &t(src.atime(), src.atime_nsec()),
            &t(src.mtime(), src.mtime_nsec()),
            nix::sys::stat::UtimensatFlags::NoFollowSymlink,
        );
        Ok(())
    };
    std::fs::create_dir(to)?;
    let mut dirs = vec![(from.to_owned(), to.to_owned())];
    let mut done_dirs = Vec::new();
    while let Some((src, dst)) = dirs.pop() {
        for e in std::fs::read_dir(&src)? {
            let e = e?;
            let (s, d) = (e.path(), dst.join(e.file_name()));
            let md = std::fs::symlink_metadata(&s)?;
            let ft = md.file_type();
            if ft.is_dir() {
                std::fs::create_dir(&d)?;
                dirs.push((s, d));
            } else if ft.is_symlink() {
                std::os::unix::fs::symlink(std::fs::read_link(&s)?, &d)?;
                copy_meta(&md, &d)?;
            } else if ft.is_file() {
                std::fs::hard_link(&s, &d)?;
            }
        }
        done_dirs.push((std::fs::metadata(&src)?, dst));
    }
    // Folders' times once their content is in.
    for (md, d) in done_dirs.into_iter().rev() {
        copy_meta(&md, &d)?;
    }
    Ok(())
}

/// The copies being built here (one at a time per volume: two managers
/// that both believe they lead must not build one `next` together).
static BUILDING: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());

/// Holds a volume's `next` for one import.
struct Building(String);

impl Drop for Building {
    fn drop(&mut self) {
        BUILDING
            .lock()
            .expect("building lock")
            .retain(|n| *n != self.0);
    }
}

/// Builds the next complete copy from the stream and swaps it in.
pub(crate) fn import(data_dir: &Path, name: &str, input: impl io::Read) -> io::Result<Imported> {
    let _building = {
        let mut b = BUILDING.lock().expect("building lock");
        if b.iter().any(|n| n == name) {
            return Err(io::Error::other(format!(
                "a copy of {name} is being built here already"
            )));
        }
        b.push(name.to_owned());
        Building(name.to_owned())
    };
    let r = root(data_dir, name);
    std::fs::create_dir_all(&r)?;
    recover(&r)?;
    let (cur, old, next) = (r.join("current"), r.join("old"), r.join("next"));
    if cur.is_dir() {
        link_tree(&cur, &next)?;
    } else {
        std::fs::create_dir(&next)?;
    }
    let done = match crate::volume_copy::import(&next, input) {
        Ok(d) => d,
        Err(e) => {
            let _ = std::fs::remove_dir_all(&next);
            return Err(e);
        }
    };
    nix::unistd::sync();
    if cur.is_dir() {
        std::fs::rename(&cur, &old)?;
    }
    std::fs::rename(&next, &cur)?;
    let _ = std::fs::remove_dir_all(&old);
    Ok(done)
}

/// Forgets this node's copy of volume `name`.
pub(crate) fn drop_copy(data_dir: &Path, name: &str) -> io::Result<()> {
    match std::fs::remove_dir_all(root(data_dir, name)) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// Makes volume `name` from this node's last complete copy, with
/// `labels` and `options`, and forgets the copy.
pub(crate) fn promote(
    rt: &Runtime,
    name: &str,
    labels: std::collections::BTreeMap<String, String>,
    options: std::collections::BTreeMap<String, String>,
) -> Result<(), String> {
    let data_dir = rt.data_dir().to_owned();
    let r = root(&data_dir, name);
    recover(&r).map_err(|e| e.to_string())?;
    let cur = r.join("current");
    let vols = rt.volumes();
    let v = vols
        .create_with(name, labels, options)
        .map_err(|e| e.to_string())?;
    vols.ensure_mounted(&v).map_err(|e| e.to_string())?;
    // Its content through the same copy as between nodes (the volume's
    // folder may be another filesystem).
    let (reader, writer) = std::os::unix::net::UnixStream::pair().map_err(|e| e.to_string())?;
    let from = cur.clone();
    let sender = std::thread::spawn(move || {
        let sent = crate::volume_copy::export(&from, &Listing::new(), io::BufWriter::new(&writer));
        // The reader sees the end.
        let _ = writer.shutdown(std::net::Shutdown::Write);
        sent
    });
    let taken = crate::volume_copy::import(&v.mountpoint, reader);
    let sent = sender
        .join()
        .map_err(|_| "the copy's sender panicked".to_owned())?;
    sent.map_err(|e| format!("promoting the copy of {name}: {e}"))?;
    taken.map_err(|e| format!("promoting the copy of {name}: {e}"))?;
    vols.take_fresh(name);
    drop_copy(&data_dir, name).map_err(|e| e.to_string())?;
    tracing::info!(volume = name, "volume made from this node's standby copy");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copies_swap_in_whole_and_never_write_the_last_one() {
        let t = tempfile::tempdir().unwrap();
        let (src, data) = (t.path().join("src"), t.path().join("data"));
        std::fs::create_dir_all(src.join("d")).unwrap();
        std::fs::write(src.join("d/f"), b"one").unwrap();
        let send = |have: &Listing| {
            let mut out = Vec::new();
            crate::volume_copy::export(&src, have, &mut out).unwrap();
            out
        };
        import(&data, "v", &send(&listing(&data, "v").unwrap())[..]).unwrap();
        let cur = data.join("replicas/v/current");
        assert_eq!(std::fs::read(cur.join("d/f")).unwrap(), b"one");
        let inode = std::fs::metadata(cur.join("d/f")).unwrap().ino();
        // A change: the old copy's file is not written; the new copy has
        // a new file.
        std::fs::write(src.join("d/f"), b"two!").unwrap();
        std::fs::write(src.join("g"), b"new").unwrap();
        let have = listing(&data, "v").unwrap();
        import(&data, "v", &send(&have)[..]).unwrap();
        assert_eq!(std::fs::read(cur.join("d/f")).unwrap(), b"two!");
        assert_ne!(std::fs::metadata(cur.join("d/f")).unwrap().ino(), inode);
        // A broken stream leaves the last copy as it was.
        let mut bad = send(&listing(&data, "v").unwrap());
        std::fs::write(src.join("g"), b"newer").unwrap();
        bad.truncate(700);
        assert!(import(&data, "v", &bad[..]).is_err());
        assert_eq!(std::fs::read(cur.join("g")).unwrap(), b"new");
        assert!(!data.join("replicas/v/next").exists());
        // A swap cut short between its two renames.
        std::fs::rename(&cur, data.join("replicas/v/old")).unwrap();
        assert!(has(&data, "v"));
        assert_eq!(listing(&data, "v").unwrap().len(), 3);
        assert!(cur.is_dir());
    }
}
