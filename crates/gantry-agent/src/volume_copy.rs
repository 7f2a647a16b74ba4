//! A volume copied from one node to another, in passes: the receiving
//! node lists what it has ([`listing`]); the sending node streams a tar
//! of what differs ([`export`]: its own listing first, then folders,
//! links, and the files whose size or modification time differ); the
//! receiver removes what the sender no longer has and unpacks the rest
//! ([`import`]). A first pass copies everything while the service runs;
//! a second, with it stopped, only what changed since.
//!
//! The receiver never follows a link out of the volume: what it removes
//! is checked to be inside it, removals come before the new entries, and
//! tar's own unpacking refuses paths that leave it.

use std::io::{self, Read, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// The name of the first tar entry: the sender's listing.
const MANIFEST: &str = ".gantry-copy-manifest";

pub(crate) use gantry_api::{CopyImported as Imported, CopyListing as Listing, CopyStat as Stat};

/// The first entry of a copy: the sender's folder itself (mode, owner,
/// group) and its listing.
#[derive(serde::Serialize, serde::Deserialize)]
struct Manifest {
    root: (u32, u32, u32),
    entries: Listing,
}

fn stat_of(md: &std::fs::Metadata) -> Stat {
    let ft = md.file_type();
    let kind = if ft.is_dir() {
        'd'
    } else if ft.is_file() {
        'f'
    } else if ft.is_symlink() {
        'l'
    } else {
        'o'
    };
    Stat {
        kind,
        size: if kind == 'f' { md.len() } else { 0 },
        mtime_ns: md.mtime() * 1_000_000_000 + md.mtime_nsec(),
    }
}

/// Lists `root` without following links.
pub(crate) fn listing(root: &Path) -> io::Result<Listing> {
    let mut out = Listing::new();
    let mut todo = vec![PathBuf::new()];
    while let Some(rel) = todo.pop() {
        for e in std::fs::read_dir(root.join(&rel))? {
            let e = e?;
            let name = e.file_name();
            let Some(name) = name.to_str() else {
                return Err(io::Error::other(format!(
                    "{:?}: only UTF-8 file names are copied",
                    rel.join(&name)
                )));
            };
            let path = rel.join(name);
            let md = match std::fs::symlink_metadata(root.join(&path)) {
                Ok(m) => m,
                // Gone since the folder was read: a live volume.
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e),
            };
            let st = stat_of(&md);
            if st.kind == 'd' {
                todo.push(path.clone());
            }
            out.insert(path.to_string_lossy().into_owned(), st);
        }
    }
    Ok(out)
}

/// Writes to `out` a tar of what `root` holds that `have` lacks or has
/// otherwise, after the whole listing of `root`.
pub(crate) fn export(root: &Path, have: &Listing, out: impl Write) -> io::Result<u64> {
    let mine = listing(root)?;
    let mut tar = tar::Builder::new(out);
    tar.mode(tar::HeaderMode::Complete);
    tar.follow_symlinks(false);
    let md = std::fs::metadata(root)?;
    let manifest = serde_json::to_vec(&Manifest {
        root: (md.mode() & 0o7777, md.uid(), md.gid()),
        entries: mine.clone(),
    })
    .map_err(io::Error::other)?;
    let mut h = tar::Header::new_gnu();
    h.set_size(manifest.len() as u64);
    h.set_mode(0o600);
    h.set_entry_type(tar::EntryType::Regular);
    tar.append_data(&mut h, MANIFEST, &manifest[..])?;
    let mut sent = 0;
    for (path, st) in &mine {
        // Folders and links always (their mode and times are cheap);
        // files when the quick check differs.
        let send = match st.kind {
            'd' | 'l' => true,
            'f' => have.get(path) != Some(st),
            _ => false,
        };
        if !send {
            continue;
        }
        match tar.append_path_with_name(root.join(path), path) {
            Ok(()) => sent += 1,
            // Gone since it was listed: the next pass sees it gone.
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    tar.into_inner()?.flush()?;
    Ok(sent)
}

/// Whether `p`'s parent, resolved, is `root` or inside it.
fn inside(root: &Path, p: &Path) -> bool {
    let Some(parent) = p.parent() else {
        return false;
    };
    match (parent.canonicalize(), root.canonicalize()) {
        (Ok(a), Ok(b)) => a.starts_with(b),
        _ => false,
    }
}

/// Makes `root` what the stream says: removes what the sender no longer
/// has (or has as another kind), then unpacks the entries.
pub(crate) fn import(root: &Path, input: impl Read) -> io::Result<Imported> {
    let mut ar = tar::Archive::new(input);
    ar.set_preserve_permissions(true);
    ar.set_preserve_ownerships(true);
    ar.set_preserve_mtime(true);
    ar.set_overwrite(true);
    ar.set_unpack_xattrs(false);
    let mut entries = ar.entries()?;
    let mut first = entries
        .next()
        .ok_or_else(|| io::Error::other("the copy stream is empty"))??;
    if first.path()?.to_str() != Some(MANIFEST) {
        return Err(io::Error::other("the copy stream has no manifest first"));
    }
    let mut body = Vec::new();
    first.read_to_end(&mut body)?;
    let Manifest {
        root: top,
        entries: theirs,
    } = serde_json::from_slice(&body).map_err(io::Error::other)?;
    let mine = listing(root)?;
    let mut done = Imported::default();
    // Deepest first, so that a folder is empty when its turn comes.
    for (path, st) in mine.iter().rev() {
        let keep = theirs.get(path).is_some_and(|t| t.kind == st.kind);
        if keep {
            continue;
        }
        let p = root.join(path);
        if !inside(root, &p) {
            return Err(io::Error::other(format!("{path}: outside the volume")));
        }
        let r = if st.kind == 'd' {
            std::fs::remove_dir_all(&p)
        } else {
            std::fs::remove_file(&p)
        };
        match r {
            Ok(()) => done.removed += 1,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    let mut written = Vec::new();
    for e in entries {
        let mut e = e?;
        let size = e.header().size()?;
        let is_file = e.header().entry_type().is_file();
        let path = e.path()?.into_owned();
        if !e.unpack_in(root)? {
            return Err(io::Error::other(format!(
                "{}: outside the volume",
                path.display()
            )));
        }
        if is_file {
            done.bytes += size;
        }
        done.written += 1;
        written.push(path);
    }
    // The folder itself as the sender's.
    std::os::unix::fs::chown(root, Some(top.1), Some(top.2))?;
    std::fs::set_permissions(root, std::os::unix::fs::PermissionsExt::from_mode(top.0))?;
    // Times to the nanosecond, as the sender listed them (tar has whole
    // seconds), so that the next pass's quick check matches; children
    // before their folders.
    for path in written.into_iter().rev() {
        let Some(st) = path.to_str().and_then(|p| theirs.get(p)) else {
            continue;
        };
        let p = root.join(&path);
        if !inside(root, &p) {
            continue;
        }
        let t = nix::sys::time::TimeSpec::new(
            st.mtime_ns.div_euclid(1_000_000_000),
            st.mtime_ns.rem_euclid(1_000_000_000),
        );
        let _ = nix::sys::stat::utimensat(
            nix::fcntl::AT_FDCWD,
            &p,
            &t,
            &t,
            nix::sys::stat::UtimensatFlags::NoFollowSymlink,
        );
    }
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tree(root: &Path) -> std::collections::BTreeMap<String, (char, u64, Vec<u8>)> {
        listing(root)
            .unwrap()
            .into_iter()
            .map(|(p, s)| {
                let body = match s.kind {
                    'f' => std::fs::read(root.join(&p)).unwrap(),
                    'l' => std::fs::read_link(root.join(&p))
                        .unwrap()
                        .into_os_string()
                        .into_encoded_bytes(),
                    _ => Vec::new(),
                };
                (p, (s.kind, s.size, body))
            })
            .collect()
    }

    fn pass(from: &Path, to: &Path) -> (u64, Imported) {
        let have = listing(to).unwrap();
        let mut stream = Vec::new();
        let sent = export(from, &have, &mut stream).unwrap();
        (sent, import(to, &stream[..]).unwrap())
    }

    #[test]
    fn passes_copy_what_changed_and_remove_what_went() {
        let t = tempfile::tempdir().unwrap();
        let (a, b) = (t.path().join("a"), t.path().join("b"));
        std::fs::create_dir_all(a.join("db/base")).unwrap();
        std::fs::create_dir_all(&b).unwrap();
        std::fs::set_permissions(&a, std::os::unix::fs::PermissionsExt::from_mode(0o700)).unwrap();
        std::fs::write(a.join("db/base/table"), vec![7u8; 100_000]).unwrap();
        std::fs::write(a.join("db/log"), b"one\n").unwrap();
        std::os::unix::fs::symlink("db/log", a.join("current")).unwrap();
        let (_, first) = pass(&a, &b);
        assert_eq!(tree(&a), tree(&b));
        assert_eq!(std::fs::metadata(&b).unwrap().mode() & 0o7777, 0o700);
        assert_eq!(first.bytes, 100_004);
        // A second pass with nothing changed sends no file.
        let (_, again) = pass(&a, &b);
        assert_eq!(again.bytes, 0, "{again:?}");
        // A file grows, one goes, a folder becomes a link.
        std::fs::write(a.join("db/log"), b"one\ntwo\n").unwrap();
        std::fs::remove_dir_all(a.join("db/base")).unwrap();
        std::os::unix::fs::symlink("/etc", a.join("db/base")).unwrap();
        let (_, last) = pass(&a, &b);
        assert_eq!(tree(&a), tree(&b));
        assert_eq!(last.bytes, 8, "{last:?}");
        assert!(last.removed >= 2, "{last:?}");
    }

    #[test]
    fn a_hostile_stream_writes_nothing_outside() {
        let t = tempfile::tempdir().unwrap();
        let (b, outside) = (t.path().join("b"), t.path().join("outside"));
        std::fs::create_dir_all(&b).unwrap();
        std::fs::create_dir_all(&outside).unwrap();
        // A link out of the volume, then a file through it.
        let mut stream = Vec::new();
        {
            let mut tar = tar::Builder::new(&mut stream);
            let mut listing = Listing::new();
            listing.insert(
                "x".into(),
                Stat {
                    kind: 'l',
                    size: 0,
                    mtime_ns: 0,
                },
            );
            let m = serde_json::to_vec(&listing).unwrap();
            let mut h = tar::Header::new_gnu();
            h.set_size(m.len() as u64);
            h.set_entry_type(tar::EntryType::Regular);
            tar.append_data(&mut h, MANIFEST, &m[..]).unwrap();
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(tar::EntryType::Symlink);
            h.set_size(0);
            tar.append_link(&mut h, "x", &outside).unwrap();
            let mut h = tar::Header::new_gnu();
            h.set_size(4);
            h.set_entry_type(tar::EntryType::Regular);
            tar.append_data(&mut h, "x/evil", &b"evil"[..]).unwrap();
            tar.finish().unwrap();
        }
        assert!(import(&b, &stream[..]).is_err());
        assert!(!outside.join("evil").exists());
        // No manifest: refused before anything is written.
        let mut plain = Vec::new();
        {
            let mut tar = tar::Builder::new(&mut plain);
            let mut h = tar::Header::new_gnu();
            h.set_size(1);
            h.set_entry_type(tar::EntryType::Regular);
            tar.append_data(&mut h, "f", &b"x"[..]).unwrap();
            tar.finish().unwrap();
        }
        assert!(import(&b, &plain[..]).is_err());
        assert!(!b.join("f").exists());
    }
}
