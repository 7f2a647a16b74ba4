//! Named volumes with the local driver: a directory under
//! `<data>/volumes/<name>/_data`, created on first use and filled from the
//! image's content at the mount point the first time a container mounts it.
//!
//! A volume with a `size` option has a hard limit: its `_data` is an ext4
//! filesystem in a sparse file beside it (`disk.img`), on a loop device,
//! mounted there (in the mount namespace that uses it) before a container
//! mounts the volume. A write beyond the size fails with ENOSPC inside the
//! volume only; the node's disk holds at most the size.

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// The label of an anonymous volume: the container it was made for, which
/// takes it along when it is removed.
pub const ANONYMOUS_LABEL: &str = "gantry.anonymous";

/// A volume as `volume inspect` shows it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Volume {
    /// The volume's name.
    pub name: String,
    /// Always `local`.
    pub driver: String,
    /// Where its data lives on the host.
    pub mountpoint: PathBuf,
    /// When it was made.
    pub created: DateTime<Utc>,
    /// Free-form labels.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// The local driver's options (`type`, `o`, `device`): what is
    /// mounted in place of the volume's own folder, as `mount -t TYPE -o O
    /// DEVICE`; none: the folder.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub options: BTreeMap<String, String>,
}

/// A device mounted for a volume with driver options.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolumeDevice {
    /// Filesystem type (`nfs`, `cifs`, `tmpfs`, ...); none for a bind.
    pub fstype: Option<String>,
    /// What is mounted.
    pub device: String,
    /// Mount flags read from `o` (`ro`, `nosuid`, `bind`, ...).
    pub flags: nix::mount::MsFlags,
    /// The rest of `o`, passed to the filesystem.
    pub data: String,
}

impl Volume {
    /// What its driver options mount, if it has any.
    pub fn device(&self) -> Option<VolumeDevice> {
        use nix::mount::MsFlags;
        let device = self.options.get("device")?.clone();
        let mut flags = MsFlags::empty();
        let mut data = Vec::new();
        for o in self
            .options
            .get("o")
            .map(String::as_str)
            .unwrap_or("")
            .split(',')
        {
            match o {
                "" | "rw" | "defaults" => {}
                "ro" => flags |= MsFlags::MS_RDONLY,
                "bind" => flags |= MsFlags::MS_BIND,
                "rbind" => flags |= MsFlags::MS_BIND | MsFlags::MS_REC,
                "nosuid" => flags |= MsFlags::MS_NOSUID,
                "nodev" => flags |= MsFlags::MS_NODEV,
                "noexec" => flags |= MsFlags::MS_NOEXEC,
                "noatime" => flags |= MsFlags::MS_NOATIME,
                o => data.push(o),
            }
        }
        let fstype = match self.options.get("type").map(String::as_str) {
            None | Some("none") | Some("") => None,
            Some(t) => Some(t.to_owned()),
        };
        if fstype.is_none() {
            flags |= MsFlags::MS_BIND;
        }
        Some(VolumeDevice {
            fstype,
            device,
            flags,
            data: data.join(","),
        })
    }
}

impl Volume {
    /// Its hard limit in bytes, when it has one.
    pub fn limit(&self) -> Option<u64> {
        self.options
            .get("size")
            .and_then(|s| gantry_units::size(s).ok())
    }

    fn disk(&self) -> PathBuf {
        self.mountpoint.with_file_name("disk.img")
    }
}

/// A volume operation that failed.
#[derive(Debug, thiserror::Error)]
pub enum VolumeError {
    /// The name is not one Docker would accept.
    #[error("invalid volume name {0:?}: use letters, digits, '_', '.' and '-', starting with a letter or digit")]
    BadName(String),
    /// No such volume.
    #[error("no such volume: {0}")]
    NotFound(String),
    /// A container still uses it.
    #[error("volume {name} is in use by container {container}")]
    InUse {
        /// The volume.
        name: String,
        /// One container that mounts it.
        container: String,
    },
    /// Filesystem trouble.
    #[error("volume {name}: {err}")]
    Io {
        /// The volume.
        name: String,
        /// The cause.
        #[source]
        err: io::Error,
    },
}

/// The volumes of one data dir.
pub struct Volumes {
    root: PathBuf,
}

/// Whether `name` is a valid volume name (Docker's rule).
pub use gantry_units::valid_volume_name as valid_name;

impl Volumes {
    /// Volumes under `<data_dir>/volumes`.
    pub fn new(data_dir: &Path) -> Self {
        Self {
            root: data_dir.join("volumes"),
        }
    }

    fn meta(&self, name: &str) -> PathBuf {
        self.root.join(name).join("volume.json")
    }

    /// Creates a volume without options, or returns the existing one of
    /// that name.
    pub fn create(
        &self,
        name: &str,
        labels: BTreeMap<String, String>,
    ) -> Result<Volume, VolumeError> {
        // An existing volume is used as it is (`-v NAME:/path`), whatever
        // options it was made with.
        if let Ok(v) = self.inspect(name) {
            return Ok(v);
        }
        self.create_with(name, labels, BTreeMap::new())
    }

    /// Creates a volume with the local driver's options (`type`, `o`,
    /// `device`), or returns the existing one of that name when its
    /// options are the same.
    pub fn create_with(
        &self,
        name: &str,
        labels: BTreeMap<String, String>,
        options: BTreeMap<String, String>,
    ) -> Result<Volume, VolumeError> {
        if !valid_name(name) {
            return Err(VolumeError::BadName(name.to_owned()));
        }
        let size = gantry_units::volume_options(&options).map_err(|msg| VolumeError::Io {
            name: name.to_owned(),
            err: io::Error::other(msg),
        })?;
        if let Ok(v) = self.inspect(name) {
            if v.options != options {
                return Err(VolumeError::Io {
                    name: name.to_owned(),
                    err: io::Error::other("it exists already with other driver options"),
                });
            }
            return Ok(v);
        }
        let io = |err| VolumeError::Io {
            name: name.to_owned(),
            err,
        };
        crate::fs::private_dir(&self.root).map_err(io)?;
        let dir = self.root.join(name);
        let data = dir.join("_data");
        fs::create_dir_all(&data).map_err(io)?;
        let v = Volume {
            name: name.to_owned(),
            driver: "local".into(),
            mountpoint: data,
            created: Utc::now(),
            labels,
            options,
        };
        // Marks the volume as not yet filled from an image.
        fs::write(dir.join("fresh"), b"").map_err(io)?;
        if let Some(size) = size {
            if let Err(e) = make_disk(&v.disk(), size).and_then(|()| mount_disk(&v)) {
                let _ = fs::remove_dir_all(&dir);
                return Err(io(e));
            }
            // A new volume is empty, as a folder's is.
            let _ = fs::remove_dir(v.mountpoint.join("lost+found"));
        }
        let tmp = dir.join("volume.json.tmp");
        fs::write(&tmp, serde_json::to_vec_pretty(&v).unwrap_or_default()).map_err(io)?;
        fs::rename(&tmp, self.meta(name)).map_err(io)?;
        Ok(v)
    }

    /// One volume.
    pub fn inspect(&self, name: &str) -> Result<Volume, VolumeError> {
        let b = fs::read(self.meta(name)).map_err(|_| VolumeError::NotFound(name.to_owned()))?;
        serde_json::from_slice(&b).map_err(|e| VolumeError::Io {
            name: name.to_owned(),
            err: io::Error::other(e),
        })
    }

    /// The volumes' names, sorted, without reading them (a name whose
    /// metadata is there).
    pub fn names(&self) -> Vec<String> {
        let mut out: Vec<String> = fs::read_dir(&self.root)
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|n| self.meta(n).exists())
            .collect();
        out.sort();
        out
    }

    /// All volumes, by name.
    pub fn list(&self) -> Vec<Volume> {
        let mut out: Vec<Volume> = fs::read_dir(&self.root)
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| self.inspect(&e.file_name().to_string_lossy()).ok())
            .collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out
    }

    /// Mounts a sized volume's filesystem at its folder, unless it is
    /// mounted there already (a volume without a size: nothing to do).
    pub fn ensure_mounted(&self, v: &Volume) -> Result<(), VolumeError> {
        if v.limit().is_none() || is_mountpoint(&v.mountpoint) {
            return Ok(());
        }
        mount_disk(v).map_err(|err| VolumeError::Io {
            name: v.name.clone(),
            err,
        })
    }

    /// Unmounts every sized volume's filesystem mounted in this mount
    /// namespace (their data stays in their files); returns how many.
    pub fn unmount_all(&self) -> usize {
        self.list()
            .iter()
            .filter(|v| v.limit().is_some() && is_mountpoint(&v.mountpoint))
            .filter(|v| {
                nix::mount::umount2(&v.mountpoint, nix::mount::MntFlags::MNT_DETACH).is_ok()
            })
            .count()
    }

    /// What can still be written to a sized volume (mounted here).
    pub fn free(&self, v: &Volume) -> Option<u64> {
        if v.limit().is_none() || !is_mountpoint(&v.mountpoint) {
            return None;
        }
        let s = nix::sys::statvfs::statvfs(&v.mountpoint).ok()?;
        Some(s.blocks_available() * s.fragment_size())
    }

    /// The bytes a volume holds: its filesystem's use for a sized volume,
    /// else what its files take on disk (a walk, as `du`; the caller keeps
    /// it off hot paths).
    pub fn used(&self, v: &Volume) -> u64 {
        if v.limit().is_some() && is_mountpoint(&v.mountpoint) {
            if let Ok(s) = nix::sys::statvfs::statvfs(&v.mountpoint) {
                return (s.blocks() - s.blocks_free()) * s.fragment_size();
            }
        }
        crate::fs::disk_usage(&v.mountpoint)
    }

    /// Removes a volume and its data (the caller checks it is unused).
    pub fn remove(&self, name: &str) -> Result<(), VolumeError> {
        let v = self.inspect(name)?;
        if v.limit().is_some() && is_mountpoint(&v.mountpoint) {
            // The loop device goes with its last mount.
            let _ = nix::mount::umount2(&v.mountpoint, nix::mount::MntFlags::MNT_DETACH);
        }
        fs::remove_dir_all(self.root.join(name)).map_err(|err| VolumeError::Io {
            name: name.to_owned(),
            err,
        })
    }

    /// True once for a volume that has never been mounted: the caller
    /// then fills it from the image.
    pub fn take_fresh(&self, name: &str) -> bool {
        fs::remove_file(self.root.join(name).join("fresh")).is_ok()
    }
}

/// Whether `p` is the root of a mount (its device differs from its
/// parent's).
fn is_mountpoint(p: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (fs::metadata(p), p.parent().map(fs::metadata)) {
        (Ok(a), Some(Ok(b))) => a.dev() != b.dev(),
        _ => false,
    }
}

/// A sparse file of `size` bytes with an empty ext4 filesystem on it (no
/// blocks kept for root: the size is the volume's).
fn make_disk(path: &Path, size: u64) -> io::Result<()> {
    let f = fs::OpenOptions::new()
        .create_new(true)
        .write(true)
        .open(path)?;
    f.set_len(size)?;
    drop(f);
    let out = std::process::Command::new("mkfs.ext4")
        .args([
            "-q",
            "-F",
            "-m",
            "0",
            "-E",
            "nodiscard,root_owner=0:0",
            "-L",
        ])
        .arg("gantry-volume")
        .arg(path)
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|e| io::Error::other(format!("mkfs.ext4 (e2fsprogs): {e}")))?;
    if !out.status.success() {
        return Err(io::Error::other(format!(
            "mkfs.ext4: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(())
}

/// Mounts a sized volume's filesystem at its folder.
fn mount_disk(v: &Volume) -> io::Result<()> {
    use nix::mount::MsFlags;
    let a = crate::loopdev::attach(&v.disk())
        .map_err(|e| io::Error::other(format!("attach {}: {e}", v.disk().display())))?;
    nix::mount::mount(
        Some(&a.dev),
        &v.mountpoint,
        Some("ext4"),
        MsFlags::MS_NODEV | MsFlags::MS_NOSUID,
        None::<&str>,
    )
    .map_err(|e| io::Error::other(format!("mount {}: {e}", a.dev.display())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_docker() {
        for ok in ["data", "my_vol.1", "a-b", "9x"] {
            assert!(valid_name(ok), "{ok}");
        }
        for bad in ["", "a", "-x", "a/b", "../x", "a b", ".hidden"] {
            assert!(!valid_name(bad), "{bad}");
        }
    }

    #[test]
    fn create_list_remove() {
        let t = tempfile::tempdir().unwrap();
        let v = Volumes::new(t.path());
        let a = v.create("data", BTreeMap::new()).unwrap();
        assert!(a.mountpoint.is_dir());
        assert_eq!(
            v.create("data", BTreeMap::new()).unwrap().created,
            a.created
        );
        assert!(matches!(
            v.create("../x", BTreeMap::new()),
            Err(VolumeError::BadName(_))
        ));
        assert_eq!(v.list().len(), 1);
        assert!(v.take_fresh("data"));
        assert!(!v.take_fresh("data"));
        v.remove("data").unwrap();
        assert!(matches!(v.inspect("data"), Err(VolumeError::NotFound(_))));
    }

    #[test]
    fn driver_options_say_what_is_mounted() {
        let t = tempfile::tempdir().unwrap();
        let v = Volumes::new(t.path());
        let opts = |kv: &[(&str, &str)]| -> BTreeMap<String, String> {
            kv.iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        let nfs = v
            .create_with(
                "nfs",
                BTreeMap::new(),
                opts(&[
                    ("type", "nfs"),
                    ("o", "addr=10.0.0.1,ro,nolock"),
                    ("device", ":/export"),
                ]),
            )
            .unwrap();
        let d = nfs.device().unwrap();
        assert_eq!(d.fstype.as_deref(), Some("nfs"));
        assert_eq!(d.data, "addr=10.0.0.1,nolock");
        assert!(d.flags.contains(nix::mount::MsFlags::MS_RDONLY));
        let b = v
            .create_with(
                "bound",
                BTreeMap::new(),
                opts(&[("type", "none"), ("o", "bind"), ("device", "/srv")]),
            )
            .unwrap();
        assert_eq!(b.device().unwrap().fstype, None);
        assert!(v
            .create("plain", BTreeMap::new())
            .unwrap()
            .device()
            .is_none());
        // The same name with other options is refused; with the same, found.
        assert!(v
            .create_with("bound", BTreeMap::new(), BTreeMap::new())
            .is_err());
        assert!(v
            .create_with(
                "bound",
                BTreeMap::new(),
                opts(&[("type", "none"), ("o", "bind"), ("device", "/srv")])
            )
            .is_ok());
        assert!(v
            .create_with("x", BTreeMap::new(), opts(&[("colour", "red")]))
            .is_err());
        for bad in [
            opts(&[("size", "1G"), ("device", "/srv")]),
            opts(&[("size", "1m")]),
            opts(&[("size", "lots")]),
        ] {
            assert!(v.create_with("x", BTreeMap::new(), bad).is_err());
            assert!(v.inspect("x").is_err(), "nothing was left");
        }
    }
}
