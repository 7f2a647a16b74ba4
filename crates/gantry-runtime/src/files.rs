//! A container's secrets and configs: files whose bytes live only in
//! memory, on a tmpfs of the container's own (`DIR/files`, mounted when it
//! is created, unmounted when it is removed), each bind-mounted read-only
//! at its target. The container's recorded config names their paths,
//! never their bytes, so nothing of them reaches the disk (as Docker keeps
//! a task's secrets).

use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

use nix::mount::{mount, umount2, MntFlags, MsFlags};

use crate::{ContainerConfig, Mount, MountKind, MountOptions, Runtime, RuntimeError};

/// One file a container sees.
pub struct FileContent<'a> {
    /// Its absolute path in the container.
    pub destination: &'a str,
    /// Its owner.
    pub uid: u32,
    /// Its group.
    pub gid: u32,
    /// Its permission bits.
    pub mode: u32,
    /// Its bytes.
    pub data: &'a [u8],
}

/// The directory of a container's files, under its own.
fn files_dir(dir: &Path) -> std::path::PathBuf {
    dir.join("files")
}

fn check(f: &FileContent) -> Result<(), String> {
    let d = f.destination;
    if !d.starts_with('/') || d == "/" || d.contains('\0') || d.split('/').any(|c| c == "..") {
        return Err(format!(
            "invalid file target {d:?}: an absolute path below / without .."
        ));
    }
    if f.mode > 0o7777 {
        return Err(format!("invalid mode {:o} for {d}", f.mode));
    }
    Ok(())
}

impl Runtime {
    /// Creates a container (as [`Runtime::create`]) that sees `files`:
    /// their bytes are written to a tmpfs of the container's, never to
    /// disk. On failure nothing of it is left.
    pub fn create_with_files(
        &self,
        config: &ContainerConfig,
        files: &[FileContent],
    ) -> Result<(), RuntimeError> {
        if files.is_empty() {
            return self.create(config);
        }
        for f in files {
            check(f).map_err(RuntimeError::Other)?;
        }
        let fdir = files_dir(&self.dir(&config.id));
        let mut cfg = config.clone();
        for (i, f) in files.iter().enumerate() {
            cfg.mounts.push(Mount {
                kind: MountKind::Bind,
                source: fdir.join(i.to_string()),
                destination: f.destination.to_owned(),
                read_only: true,
                options: MountOptions::default(),
            });
        }
        self.create(&cfg)?;
        write_files(&fdir, files).map_err(|e| {
            let _ = self.remove(&cfg.id, true);
            RuntimeError::Other(format!("the container's files: {e}"))
        })
    }
}

/// Mounts the tmpfs, just big enough, and writes the files into it.
fn write_files(fdir: &Path, files: &[FileContent]) -> std::io::Result<()> {
    std::fs::DirBuilder::new().mode(0o700).create(fdir)?;
    let page = 4096u64;
    let bytes: u64 = files
        .iter()
        .map(|f| (f.data.len() as u64).div_ceil(page) * page)
        .sum::<u64>()
        + page;
    let opts = format!("mode=0700,size={bytes},nr_inodes={}", files.len() + 8);
    mount(
        Some("tmpfs"),
        fdir,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        Some(opts.as_str()),
    )
    .map_err(std::io::Error::from)?;
    for (i, f) in files.iter().enumerate() {
        let p = fdir.join(i.to_string());
        let mut out = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&p)?;
        out.write_all(f.data)?;
        std::os::unix::fs::fchown(&out, Some(f.uid), Some(f.gid))?;
        out.set_permissions(std::fs::Permissions::from_mode(f.mode))?;
    }
    Ok(())
}

/// Unmounts a container's files, if it has them here.
pub(crate) fn unmount(dir: &Path) {
    let fdir = files_dir(dir);
    if fdir.exists() {
        let _ = umount2(&fdir, MntFlags::MNT_DETACH);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_must_be_absolute_and_stay_below_the_root() {
        let f = |d: &'static str, mode: u32| FileContent {
            destination: d,
            uid: 0,
            gid: 0,
            mode,
            data: b"x",
        };
        assert!(check(&f("/run/secrets/db", 0o400)).is_ok());
        for bad in ["run/secrets/db", "/", "/run/../etc/passwd", "/a\0b"] {
            assert!(check(&f(bad, 0o444)).is_err(), "{bad}");
        }
        assert!(check(&f("/x", 0o10000)).is_err());
    }
}
