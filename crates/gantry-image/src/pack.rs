//! Packing a layer directory (overlayfs upper format) into a gzip layer
//! blob: the inverse of `unpack`. Overlay whiteouts (0:0 character devices)
//! become `.wh.NAME` entries and opaque directories get `.wh..wh..opq`.
//! Entries are sorted and gzip carries no timestamp, so the same directory
//! always packs to the same digest.

use std::collections::HashMap;
use std::ffi::CString;
use std::fs::{self, File};
use std::io::{self, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;

use crate::digest::{Digest, HashingWriter};

/// A packed layer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Packed {
    /// Digest of the compressed blob.
    pub digest: Digest,
    /// Digest of the uncompressed tar (the config's diff_id).
    pub diff_id: Digest,
    /// Compressed size.
    pub size: u64,
}

fn opaque(p: &Path) -> bool {
    let Ok(c) = CString::new(p.as_os_str().as_bytes()) else {
        return false;
    };
    let mut buf = [0u8; 2];
    // SAFETY: valid C strings and a buffer of the given length.
    let n = unsafe {
        libc::lgetxattr(
            c.as_ptr(),
            c"trusted.overlay.opaque".as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    };
    n == 1 && buf[0] == b'y'
}

/// Packs `dir` into a gzip tar at `out`.
pub fn pack_dir(dir: &Path, out: &Path) -> io::Result<Packed> {
    let file = File::create(out)?;
    let blob = HashingWriter::new(io::BufWriter::new(file));
    // Level 2, not 1: zlib-rs's level 1 codes every block with fixed
    // trees, so data that does not compress grows and costs every pull a
    // slow inflate; from level 2 such blocks are stored as they are.
    let gz = flate2::write::GzEncoder::new(blob, flate2::Compression::new(2));
    let tar_hash = HashingWriter::new(gz);
    let mut builder = tar::Builder::new(tar_hash);
    builder.mode(tar::HeaderMode::Complete);
    let mut links: HashMap<(u64, u64), String> = HashMap::new();
    walk(dir, Path::new(""), &mut builder, &mut links)?;
    let tar_hash = builder.into_inner()?;
    let (diff_id, gz) = tar_hash.finish();
    let blob = gz.finish()?;
    let size = blob.written;
    let (digest, mut w) = blob.finish();
    w.flush()?;
    Ok(Packed {
        digest,
        diff_id,
        size,
    })
}

fn header_for(md: &fs::Metadata, kind: tar::EntryType) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    h.set_mode(md.mode() & 0o7777);
    h.set_uid(md.uid().into());
    h.set_gid(md.gid().into());
    h.set_mtime(md.mtime().max(0) as u64);
    h.set_size(0);
    h
}

fn walk<W: Write>(
    root: &Path,
    rel: &Path,
    b: &mut tar::Builder<W>,
    links: &mut HashMap<(u64, u64), String>,
) -> io::Result<()> {
    let dir = root.join(rel);
    let mut entries: Vec<_> = fs::read_dir(&dir)?.collect::<Result<_, _>>()?;
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let name = e.file_name();
        let path = rel.join(&name);
        let full = e.path();
        let md = fs::symlink_metadata(&full)?;
        let ft = md.file_type();
        let path_str = path.to_string_lossy().into_owned();
        if ft.is_char_device() && md.rdev() == 0 {
            let wh = rel.join(format!(".wh.{}", name.to_string_lossy()));
            let mut h = header_for(&md, tar::EntryType::Regular);
            h.set_mode(0o644);
            b.append_data(&mut h, wh, io::empty())?;
        } else if ft.is_dir() {
            let mut h = header_for(&md, tar::EntryType::Directory);
            b.append_data(&mut h, format!("{path_str}/"), io::empty())?;
            if opaque(&full) {
                let mut h = header_for(&md, tar::EntryType::Regular);
                h.set_mode(0o644);
                b.append_data(&mut h, path.join(".wh..wh..opq"), io::empty())?;
            }
            walk(root, &path, b, links)?;
        } else if ft.is_symlink() {
            let mut h = header_for(&md, tar::EntryType::Symlink);
            let target = fs::read_link(&full)?;
            b.append_link(&mut h, &path, target)?;
        } else if ft.is_file() {
            if md.nlink() > 1 {
                if let Some(first) = links.get(&(md.dev(), md.ino())) {
                    let mut h = header_for(&md, tar::EntryType::Link);
                    b.append_link(&mut h, &path, first)?;
                    continue;
                }
                links.insert((md.dev(), md.ino()), path_str.clone());
            }
            let mut h = header_for(&md, tar::EntryType::Regular);
            h.set_size(md.len());
            b.append_data(&mut h, &path, File::open(&full)?)?;
        } else if ft.is_fifo() || ft.is_char_device() || ft.is_block_device() {
            let kind = if ft.is_fifo() {
                tar::EntryType::Fifo
            } else if ft.is_char_device() {
                tar::EntryType::Char
            } else {
                tar::EntryType::Block
            };
            let mut h = header_for(&md, kind);
            let dev = md.rdev();
            h.set_device_major(libc::major(dev))?;
            h.set_device_minor(libc::minor(dev))?;
            b.append_data(&mut h, &path, io::empty())?;
        }
        // Sockets are not part of a layer.
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pack_then_unpack_round_trips() {
        let src = tempfile::tempdir().unwrap();
        fs::create_dir_all(src.path().join("a/b")).unwrap();
        fs::write(src.path().join("a/b/f"), "data").unwrap();
        fs::hard_link(src.path().join("a/b/f"), src.path().join("a/h")).unwrap();
        std::os::unix::fs::symlink("b/f", src.path().join("a/s")).unwrap();
        let out = tempfile::tempdir().unwrap();
        let p1 = pack_dir(src.path(), &out.path().join("1.tgz")).unwrap();
        let p2 = pack_dir(src.path(), &out.path().join("2.tgz")).unwrap();
        assert_eq!(p1, p2, "packing is deterministic");
        let bytes = fs::read(out.path().join("1.tgz")).unwrap();
        assert_eq!(Digest::of(&bytes), p1.digest);
        let dst = tempfile::tempdir().unwrap();
        crate::unpack::unpack(&bytes[..], dst.path()).unwrap();
        assert_eq!(fs::read_to_string(dst.path().join("a/h")).unwrap(), "data");
        assert_eq!(
            fs::read_link(dst.path().join("a/s")).unwrap(),
            Path::new("b/f")
        );
    }
}
