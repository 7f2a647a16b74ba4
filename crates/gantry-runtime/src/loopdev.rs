//! Loop devices for sized volumes: a file attached as a block device
//! (`LOOP_CONFIGURE`, kernel 5.8+), detached by the kernel once the last
//! mount of it goes (`LO_FLAGS_AUTOCLEAR`). A file already attached is
//! found again (its `backing_file` in sysfs), so that two mount namespaces
//! never attach one file twice: two block devices over one ext4 image,
//! both mounted, would corrupt it.

use std::fs;
use std::io;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

const LOOP_CTL_GET_FREE: libc::c_ulong = 0x4C82;
const LOOP_CONFIGURE: libc::c_ulong = 0x4C0A;
const LO_FLAGS_AUTOCLEAR: u32 = 4;

/// The kernel's `struct loop_info64`.
#[repr(C)]
struct LoopInfo64 {
    lo_device: u64,
    lo_inode: u64,
    lo_rdevice: u64,
    lo_offset: u64,
    lo_sizelimit: u64,
    lo_number: u32,
    lo_encrypt_type: u32,
    lo_encrypt_key_size: u32,
    lo_flags: u32,
    lo_file_name: [u8; 64],
    lo_crypt_name: [u8; 64],
    lo_encrypt_key: [u8; 32],
    lo_init: [u64; 2],
}

/// The kernel's `struct loop_config`.
#[repr(C)]
struct LoopConfig {
    fd: u32,
    block_size: u32,
    info: LoopInfo64,
    reserved: [u64; 8],
}

/// The loop device `file` is attached to, if any.
pub(crate) fn find(file: &Path) -> Option<PathBuf> {
    let file = fs::canonicalize(file).ok()?;
    for e in fs::read_dir("/sys/block").ok()?.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if !name.starts_with("loop") {
            continue;
        }
        let Ok(backing) = fs::read_to_string(e.path().join("loop/backing_file")) else {
            continue;
        };
        if Path::new(backing.trim_end_matches('\n')) == file {
            return Some(PathBuf::from("/dev").join(name));
        }
    }
    None
}

/// A loop device, held open: with autoclear, it detaches at its last
/// close, so the caller mounts it before dropping this.
pub(crate) struct Attached {
    pub(crate) dev: PathBuf,
    _held: fs::File,
}

fn hold(dev: PathBuf) -> io::Result<Attached> {
    let f = fs::OpenOptions::new().read(true).write(true).open(&dev)?;
    Ok(Attached { dev, _held: f })
}

/// Attaches `file` to a free loop device (or finds the one it is attached
/// to); the device detaches itself when its last mount goes.
pub(crate) fn attach(file: &Path) -> io::Result<Attached> {
    if let Some(d) = find(file) {
        if let Ok(a) = hold(d) {
            return Ok(a);
        }
    }
    let backing = fs::OpenOptions::new().read(true).write(true).open(file)?;
    let ctl = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/loop-control")?;
    // Another process may take the free device first: try again.
    let mut last = io::Error::other("no loop device");
    for _ in 0..8 {
        // SAFETY: an ioctl without argument on the control device.
        let n = unsafe { libc::ioctl(ctl.as_raw_fd(), LOOP_CTL_GET_FREE) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        let dev = PathBuf::from(format!("/dev/loop{n}"));
        let loop_file = match fs::OpenOptions::new().read(true).write(true).open(&dev) {
            Ok(f) => f,
            Err(e) => {
                last = e;
                continue;
            }
        };
        // SAFETY: all-zero is a valid `loop_config`.
        let mut cfg: LoopConfig = unsafe { std::mem::zeroed() };
        cfg.fd = backing.as_raw_fd() as u32;
        cfg.info.lo_flags = LO_FLAGS_AUTOCLEAR;
        let name = file.as_os_str().as_encoded_bytes();
        let n = name.len().min(63);
        cfg.info.lo_file_name[..n].copy_from_slice(&name[..n]);
        // SAFETY: `cfg` is a valid `loop_config` that outlives the call.
        let r = unsafe { libc::ioctl(loop_file.as_raw_fd(), LOOP_CONFIGURE, &cfg) };
        if r == 0 {
            return Ok(Attached {
                dev,
                _held: loop_file,
            });
        }
        last = io::Error::last_os_error();
        if last.raw_os_error() != Some(libc::EBUSY) {
            return Err(last);
        }
        if let Some(a) = find(file).and_then(|d| hold(d).ok()) {
            return Ok(a);
        }
    }
    Err(last)
}
