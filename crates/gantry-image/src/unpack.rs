//! Layer unpacking into a directory that overlayfs uses as a lower layer.
//!
//! The layer is a tar (plain, gzip or zstd, told by its magic bytes).
//! Docker whiteouts become overlayfs whiteouts: `.wh.NAME` a 0:0 character
//! device at NAME, `.wh..wh..opq` the `trusted.overlay.opaque` xattr on its
//! directory.
//!
//! **Invariant:** nothing is ever written outside the layer root. An entry
//! with an absolute path or a `..` component, a hard link whose target is
//! such a path, and an entry whose parent inside the layer is a symlink (the
//! classic "symlink then write through it" trick) are all refused with an
//! error naming the entry. Symlinks themselves may point anywhere: they are
//! only ever followed inside the container, never here.

use std::ffi::CString;
use std::fs;
use std::io::{self, BufRead, BufReader, Read};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Component, Path, PathBuf};

use nix::sys::stat::{makedev, mknod, Mode, SFlag};

/// A layer that could not be unpacked.
#[derive(Debug, thiserror::Error)]
pub enum UnpackError {
    /// An entry would land outside the layer root.
    #[error("layer entry {entry:?} is refused: {why}")]
    Unsafe {
        /// The entry's path as written in the tar.
        entry: String,
        /// Why it is unsafe.
        why: &'static str,
    },
    /// The archive itself is broken.
    #[error("layer is not a valid tar archive: {0}")]
    Corrupt(#[source] io::Error),
    /// Writing the entry failed.
    #[error("unpack {entry:?}: {err}")]
    Io {
        /// The entry.
        entry: String,
        /// The cause.
        #[source]
        err: io::Error,
    },
}

/// The compression a layer blob uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    /// A plain tar.
    None,
    /// gzip.
    Gzip,
    /// zstd.
    Zstd,
}

/// Tells the compression from the first bytes.
pub fn sniff(head: &[u8]) -> Compression {
    if head.starts_with(&[0x1f, 0x8b]) {
        Compression::Gzip
    } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        Compression::Zstd
    } else {
        Compression::None
    }
}

/// Wraps `r` in the right decompressor.
pub fn decompress<'a, R: Read + 'a>(r: R) -> io::Result<Box<dyn Read + 'a>> {
    let mut r = BufReader::new(r);
    let head = r.fill_buf()?.to_vec();
    Ok(match sniff(&head) {
        Compression::None => Box::new(r),
        Compression::Gzip => Box::new(flate2::read::MultiGzDecoder::new(r)),
        Compression::Zstd => Box::new(
            ruzstd::decoding::StreamingDecoder::new(r)
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?,
        ),
    })
}

/// Makes a tar path relative and clean, or says why it is unsafe.
fn clean(raw: &Path) -> Result<PathBuf, &'static str> {
    let mut out = PathBuf::new();
    for c in raw.components() {
        match c {
            Component::Normal(p) => out.push(p),
            Component::CurDir => {}
            Component::RootDir | Component::Prefix(_) => return Err("absolute path"),
            Component::ParentDir => return Err("path contains '..'"),
        }
    }
    Ok(out)
}

/// Checks that every existing parent of `rel` under `root` is a real
/// directory (not a symlink), creating missing ones.
fn ensure_parents(root: &Path, rel: &Path, entry: &str) -> Result<(), UnpackError> {
    let mut cur = root.to_path_buf();
    let parent = match rel.parent() {
        Some(p) => p,
        None => return Ok(()),
    };
    for c in parent.components() {
        cur.push(c);
        match fs::symlink_metadata(&cur) {
            Ok(md) if md.file_type().is_symlink() => {
                return Err(UnpackError::Unsafe {
                    entry: entry.to_owned(),
                    why: "a parent directory in the layer is a symlink",
                })
            }
            Ok(md) if md.is_dir() => {}
            Ok(_) => {
                return Err(UnpackError::Unsafe {
                    entry: entry.to_owned(),
                    why: "a parent path in the layer is not a directory",
                })
            }
            Err(_) => {
                fs::create_dir(&cur).map_err(|err| UnpackError::Io {
                    entry: entry.to_owned(),
                    err,
                })?;
            }
        }
    }
    Ok(())
}

/// Removes whatever is at `p` (file, link, or a directory when `dirs`).
fn clear(p: &Path, keep_dir: bool) -> io::Result<()> {
    match fs::symlink_metadata(p) {
        Ok(md) if md.is_dir() => {
            if keep_dir {
                Ok(())
            } else {
                fs::remove_dir_all(p)
            }
        }
        Ok(_) => fs::remove_file(p),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

fn lsetxattr(path: &Path, name: &str, value: &[u8]) -> io::Result<()> {
    let p = CString::new(path.as_os_str().as_bytes()).map_err(io::Error::other)?;
    let n = CString::new(name).map_err(io::Error::other)?;
    // SAFETY: both strings are NUL-terminated and live across the call;
    // value is a valid slice.
    let r = unsafe {
        libc::lsetxattr(
            p.as_ptr(),
            n.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Unpacks a (possibly compressed) layer into `root`, which should be empty.
/// Returns the uncompressed size.
pub fn unpack(layer: impl Read, root: &Path) -> Result<u64, UnpackError> {
    let reader = decompress(layer).map_err(UnpackError::Corrupt)?;
    let mut archive = tar::Archive::new(reader);
    let is_root = nix::unistd::geteuid().is_root();
    let mut size = 0u64;
    let mut dirs: Vec<(PathBuf, u32, u64)> = Vec::new();
    for entry in archive.entries().map_err(UnpackError::Corrupt)? {
        let mut entry = entry.map_err(UnpackError::Corrupt)?;
        let raw = entry.path().map_err(UnpackError::Corrupt)?.into_owned();
        let name = raw.display().to_string();
        let rel = clean(&raw).map_err(|why| UnpackError::Unsafe {
            entry: name.clone(),
            why,
        })?;
        if rel.as_os_str().is_empty() {
            continue; // "./" itself
        }
        ensure_parents(root, &rel, &name)?;
        let io = |err| UnpackError::Io {
            entry: name.clone(),
            err,
        };
        let file_name = rel
            .file_name()
            .map(|f| f.to_string_lossy().into_owned())
            .unwrap_or_default();
        let parent = root.join(rel.parent().unwrap_or(Path::new("")));
        if file_name == ".wh..wh..opq" {
            lsetxattr(&parent, "trusted.overlay.opaque", b"y").map_err(io)?;
            continue;
        }
        if let Some(hidden) = file_name.strip_prefix(".wh.") {
            if hidden.is_empty() || hidden == "." || hidden == ".." {
                return Err(UnpackError::Unsafe {
                    entry: name,
                    why: "malformed whiteout",
                });
            }
            let target = parent.join(hidden);
            clear(&target, false).map_err(io)?;
            mknod(&target, SFlag::S_IFCHR, Mode::empty(), makedev(0, 0))
                .map_err(|e| io(e.into()))?;
            continue;
        }
        let dst = root.join(&rel);
        let header = entry.header().clone();
        let mode = header.mode().unwrap_or(0o644) & 0o7777;
        let kind = header.entry_type();
        let mtime = header.mtime().unwrap_or(0);
        match kind {
            tar::EntryType::Directory => {
                clear(&dst, true).map_err(io)?;
                if !dst.is_dir() {
                    fs::create_dir(&dst).map_err(io)?;
                }
                dirs.push((dst.clone(), mode, mtime));
            }
            tar::EntryType::Regular | tar::EntryType::Continuous | tar::EntryType::GNUSparse => {
                clear(&dst, false).map_err(io)?;
                let mut f = fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .open(&dst)
                    .map_err(io)?;
                size += io::copy(&mut entry, &mut f).map_err(io)?;
            }
            tar::EntryType::Symlink => {
                let target = entry
                    .link_name()
                    .map_err(UnpackError::Corrupt)?
                    .ok_or_else(|| UnpackError::Unsafe {
                        entry: name.clone(),
                        why: "symlink without a target",
                    })?;
                clear(&dst, false).map_err(io)?;
                symlink(&*target, &dst).map_err(io)?;
            }
            tar::EntryType::Link => {
                let target = entry
                    .link_name()
                    .map_err(UnpackError::Corrupt)?
                    .ok_or_else(|| UnpackError::Unsafe {
                        entry: name.clone(),
                        why: "hard link without a target",
                    })?;
                let trel = clean(&target).map_err(|why| UnpackError::Unsafe {
                    entry: name.clone(),
                    why: if why == "absolute path" {
                        "hard link target is an absolute path"
                    } else {
                        "hard link target contains '..'"
                    },
                })?;
                ensure_parents(root, &trel, &name)?;
                let src = root.join(&trel);
                match fs::symlink_metadata(&src) {
                    Ok(md) if md.is_file() || md.file_type().is_symlink() => {}
                    _ => {
                        return Err(UnpackError::Unsafe {
                            entry: name,
                            why: "hard link target is not a file earlier in this layer",
                        })
                    }
                }
                clear(&dst, false).map_err(io)?;
                fs::hard_link(&src, &dst).map_err(io)?;
                continue; // shares the target's metadata
            }
            tar::EntryType::Char | tar::EntryType::Block => {
                // An image's device node is a door to whatever device has
                // its numbers on the host (a block 7:0 is the host's loop
                // 0), open to anyone who reaches the layer directory. The
                // container gets its devices from the runtime's /dev, so
                // layers carry none: the entry is skipped, as a rootless
                // unpack must skip it anyway.
                tracing::warn!(entry = %name, "device node in a layer: not created");
                continue;
            }
            tar::EntryType::Fifo => {
                clear(&dst, false).map_err(io)?;
                mknod(&dst, SFlag::S_IFIFO, Mode::from_bits_truncate(mode), 0)
                    .map_err(|e| io(e.into()))?;
            }
            // PAX and GNU long-name headers are consumed by the tar reader.
            _ => continue,
        }
        if let Some(exts) = entry.pax_extensions().ok().flatten() {
            for ext in exts.flatten() {
                if let Some(attr) = ext.key().ok().and_then(|k| k.strip_prefix("SCHILY.xattr.")) {
                    // "where possible": a filesystem without xattrs, or a
                    // namespace we may not write, is not an error.
                    let _ = lsetxattr(&dst, attr, ext.value_bytes());
                }
            }
        }
        if is_root {
            let uid = header.uid().unwrap_or(0) as u32;
            let gid = header.gid().unwrap_or(0) as u32;
            std::os::unix::fs::lchown(&dst, Some(uid), Some(gid)).map_err(io)?;
        }
        if kind != tar::EntryType::Symlink {
            fs::set_permissions(&dst, fs::Permissions::from_mode(mode)).map_err(io)?;
        }
        set_mtime(&dst, mtime);
    }
    // Directory times last: creating their entries changed them.
    for (d, mode, mtime) in dirs.into_iter().rev() {
        let _ = fs::set_permissions(&d, fs::Permissions::from_mode(mode));
        set_mtime(&d, mtime);
    }
    Ok(size)
}

fn set_mtime(p: &Path, mtime: u64) {
    let t = nix::sys::time::TimeSpec::new(mtime as i64, 0);
    let _ = nix::sys::stat::utimensat(
        nix::fcntl::AT_FDCWD,
        p,
        &t,
        &t,
        nix::sys::stat::UtimensatFlags::NoFollowSymlink,
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(path: &str, kind: tar::EntryType, size: u64) -> tar::Header {
        let mut h = tar::Header::new_gnu();
        // set_path refuses '..' and absolute paths, so write the raw bytes
        // as a hostile archive would.
        let bytes = path.as_bytes();
        let name = &mut h.as_old_mut().name;
        name[..bytes.len()].copy_from_slice(bytes);
        h.set_entry_type(kind);
        h.set_size(size);
        h.set_mode(0o644);
        h.set_cksum();
        h
    }

    fn tar_of(entries: &[(&str, tar::EntryType, &[u8], Option<&str>)]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (path, kind, data, link) in entries {
            let mut h = header(path, *kind, data.len() as u64);
            if let Some(l) = link {
                let lb = l.as_bytes();
                h.as_old_mut().linkname[..lb.len()].copy_from_slice(lb);
                h.set_cksum();
            }
            b.append(&h, *data).unwrap();
        }
        b.into_inner().unwrap()
    }

    #[test]
    fn plain_layer_unpacks() {
        let t = tempfile::tempdir().unwrap();
        let data = tar_of(&[
            ("etc/", tar::EntryType::Directory, b"", None),
            ("etc/hello", tar::EntryType::Regular, b"hi\n", None),
            ("etc/link", tar::EntryType::Symlink, b"", Some("/etc/hello")),
            ("etc/hard", tar::EntryType::Link, b"", Some("etc/hello")),
        ]);
        let n = unpack(&data[..], t.path()).unwrap();
        assert_eq!(n, 3);
        assert_eq!(
            fs::read_to_string(t.path().join("etc/hard")).unwrap(),
            "hi\n"
        );
        assert_eq!(
            fs::read_link(t.path().join("etc/link")).unwrap(),
            Path::new("/etc/hello")
        );
    }

    #[test]
    fn gzip_is_detected() {
        let t = tempfile::tempdir().unwrap();
        let data = tar_of(&[("a", tar::EntryType::Regular, b"x", None)]);
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        io::Write::write_all(&mut gz, &data).unwrap();
        let gz = gz.finish().unwrap();
        unpack(&gz[..], t.path()).unwrap();
        assert_eq!(fs::read(t.path().join("a")).unwrap(), b"x");
    }

    #[test]
    fn zstd_is_detected() {
        let t = tempfile::tempdir().unwrap();
        let data = tar_of(&[("z", tar::EntryType::Regular, b"zz", None)]);
        let compressed = ruzstd::encoding::compress_to_vec(
            &data[..],
            ruzstd::encoding::CompressionLevel::Fastest,
        );
        unpack(&compressed[..], t.path()).unwrap();
        assert_eq!(fs::read(t.path().join("z")).unwrap(), b"zz");
    }

    fn refused(entries: &[(&str, tar::EntryType, &[u8], Option<&str>)]) -> String {
        let outer = tempfile::tempdir().unwrap();
        let root = outer.path().join("layer");
        fs::create_dir(&root).unwrap();
        let err = unpack(&tar_of(entries)[..], &root).unwrap_err();
        // Nothing landed beside the layer root.
        let beside: Vec<_> = fs::read_dir(outer.path())
            .unwrap()
            .flatten()
            .map(|e| e.file_name())
            .collect();
        assert_eq!(beside, vec![std::ffi::OsString::from("layer")]);
        err.to_string()
    }

    #[test]
    fn dotdot_is_refused() {
        let e = refused(&[("../evil", tar::EntryType::Regular, b"x", None)]);
        assert!(e.contains("../evil") && e.contains(".."), "{e}");
        let e = refused(&[("a/../../evil", tar::EntryType::Regular, b"x", None)]);
        assert!(e.contains("'..'"), "{e}");
    }

    #[test]
    fn absolute_path_is_refused() {
        let e = refused(&[("/tmp/evil", tar::EntryType::Regular, b"x", None)]);
        assert!(e.contains("absolute path"), "{e}");
    }

    #[test]
    fn write_through_symlink_is_refused() {
        let e = refused(&[
            ("escape", tar::EntryType::Symlink, b"", Some("..")),
            ("escape/evil", tar::EntryType::Regular, b"x", None),
        ]);
        assert!(e.contains("symlink"), "{e}");
        let e = refused(&[
            ("abs", tar::EntryType::Symlink, b"", Some("/tmp")),
            ("abs/evil", tar::EntryType::Regular, b"x", None),
        ]);
        assert!(e.contains("symlink"), "{e}");
    }

    #[test]
    fn hardlink_out_is_refused() {
        let e = refused(&[("pw", tar::EntryType::Link, b"", Some("/etc/passwd"))]);
        assert!(e.contains("hard link target is an absolute path"), "{e}");
        let e = refused(&[("pw", tar::EntryType::Link, b"", Some("../../etc/passwd"))]);
        assert!(e.contains("'..'"), "{e}");
        let e = refused(&[
            ("l", tar::EntryType::Symlink, b"", Some("/etc")),
            ("pw", tar::EntryType::Link, b"", Some("l/passwd")),
        ]);
        assert!(e.contains("symlink"), "{e}");
    }

    #[test]
    fn xattrs_modes_and_owners_are_kept() {
        let t = tempfile::tempdir().unwrap();
        let mut b = tar::Builder::new(Vec::new());
        // A PAX header carrying an xattr, then the file it belongs to.
        let mut pax = Vec::new();
        let rec = "SCHILY.xattr.user.gantry=yes";
        let line = format!(
            "{} {rec}\n",
            rec.len() + 3 + (rec.len() + 3).to_string().len() - 1
        );
        pax.extend_from_slice(line.as_bytes());
        let mut h = tar::Header::new_ustar();
        h.set_path("././@PaxHeader").unwrap();
        h.set_entry_type(tar::EntryType::XHeader);
        h.set_size(pax.len() as u64);
        h.set_cksum();
        b.append(&h, &pax[..]).unwrap();
        let mut h = tar::Header::new_ustar();
        h.set_path("f").unwrap();
        h.set_size(1);
        h.set_mode(0o4750);
        h.set_uid(1234);
        h.set_gid(5678);
        h.set_cksum();
        b.append(&h, &b"x"[..]).unwrap();
        unpack(&b.into_inner().unwrap()[..], t.path()).unwrap();
        use std::os::unix::fs::MetadataExt;
        let md = fs::metadata(t.path().join("f")).unwrap();
        assert_eq!(md.mode() & 0o7777, 0o4750);
        if nix::unistd::geteuid().is_root() {
            assert_eq!((md.uid(), md.gid()), (1234, 5678));
        }
        let p = CString::new(t.path().join("f").as_os_str().as_bytes()).unwrap();
        let mut buf = [0u8; 8];
        // SAFETY: valid C strings and buffer.
        let n = unsafe {
            libc::lgetxattr(
                p.as_ptr(),
                c"user.gantry".as_ptr(),
                buf.as_mut_ptr().cast(),
                buf.len(),
            )
        };
        // "where possible": only a filesystem without user xattrs may lack it.
        let probe = t.path().join("probe");
        fs::write(&probe, "").unwrap();
        if lsetxattr(&probe, "user.probe", b"1").is_ok() {
            assert_eq!(n, 3, "the xattr was not restored");
            assert_eq!(&buf[..3], b"yes");
        }
    }

    #[test]
    fn garbage_is_a_clear_error() {
        let t = tempfile::tempdir().unwrap();
        let mut junk = vec![0x1f, 0x8b];
        junk.extend_from_slice(b"not really gzip at all");
        let e = unpack(&junk[..], t.path()).unwrap_err();
        assert!(e.to_string().contains("not a valid tar"), "{e}");
    }

    #[test]
    fn whiteouts_become_overlay_whiteouts() {
        if !nix::unistd::geteuid().is_root() {
            assert!(
                std::env::var_os("CI").is_none(),
                "CI runs as root: this test must not skip"
            );
            eprintln!("skipped: whiteouts need root (mknod, trusted xattrs)");
            return;
        }
        let t = tempfile::tempdir().unwrap();
        let data = tar_of(&[
            ("d/", tar::EntryType::Directory, b"", None),
            ("d/.wh..wh..opq", tar::EntryType::Regular, b"", None),
            (".wh.gone", tar::EntryType::Regular, b"", None),
        ]);
        unpack(&data[..], t.path()).unwrap();
        use std::os::unix::fs::{FileTypeExt, MetadataExt};
        let md = fs::symlink_metadata(t.path().join("gone")).unwrap();
        assert!(md.file_type().is_char_device());
        assert_eq!(md.rdev(), 0);
        let d = CString::new(t.path().join("d").as_os_str().as_bytes()).unwrap();
        let mut buf = [0u8; 4];
        // SAFETY: valid C string and buffer.
        let n = unsafe {
            libc::lgetxattr(
                d.as_ptr(),
                c"trusted.overlay.opaque".as_ptr(),
                buf.as_mut_ptr().cast(),
                buf.len(),
            )
        };
        assert_eq!(n, 1);
        assert_eq!(buf[0], b'y');
    }

    /// A layer's device nodes (a block 7:0 at mode 0666 is the host's loop
    /// device to whoever can reach the layer) are not created; FIFOs are.
    #[test]
    fn device_nodes_are_not_created() {
        let t = tempfile::tempdir().unwrap();
        let mut b = tar::Builder::new(Vec::new());
        b.append(&header("probe/", tar::EntryType::Directory, 0), &[][..])
            .unwrap();
        for (path, kind) in [
            ("probe/loop0", tar::EntryType::Block),
            ("probe/kvm", tar::EntryType::Char),
        ] {
            let mut h = header(path, kind, 0);
            h.set_mode(0o666);
            h.set_device_major(7).unwrap();
            h.set_device_minor(0).unwrap();
            h.set_cksum();
            b.append(&h, &[][..]).unwrap();
        }
        b.append(&header("probe/fifo", tar::EntryType::Fifo, 0), &[][..])
            .unwrap();
        let data = b.into_inner().unwrap();
        unpack(&data[..], t.path()).unwrap();
        assert!(fs::symlink_metadata(t.path().join("probe/loop0")).is_err());
        assert!(fs::symlink_metadata(t.path().join("probe/kvm")).is_err());
        use std::os::unix::fs::FileTypeExt;
        let md = fs::symlink_metadata(t.path().join("probe/fifo")).unwrap();
        assert!(md.file_type().is_fifo());
    }
}
