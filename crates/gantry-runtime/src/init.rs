//! The container side of a start: runs in the freshly cloned child, already
//! in its new namespaces, and ends in `execve` of the user's program.
//!
//! Every failure is written to the error pipe as `CODE message` and the
//! child exits with that code (Docker's 125, 126, 127); success closes the
//! pipe through `O_CLOEXEC` at `execve`.

use std::ffi::CString;
use std::fs;
use std::io::Write;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Path, PathBuf};

use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sys::stat::{makedev, mknod, Mode, SFlag};
use nix::unistd::{chdir, pivot_root, sethostname, Gid, Uid};

use crate::fs::secure_join;
use crate::spec::{ContainerConfig, MountKind};

/// An init failure: the exit code to report and why.
pub(crate) struct InitError {
    pub(crate) code: i32,
    pub(crate) msg: String,
}

pub(crate) fn fail(msg: impl Into<String>) -> InitError {
    InitError {
        code: 125,
        msg: msg.into(),
    }
}

trait Ctx<T> {
    fn ctx(self, what: impl FnOnce() -> String) -> Result<T, InitError>;
}

impl<T, E: std::fmt::Display> Ctx<T> for Result<T, E> {
    fn ctx(self, what: impl FnOnce() -> String) -> Result<T, InitError> {
        self.map_err(|e| fail(format!("{}: {e}", what())))
    }
}

/// What the child needs, prepared by the monitor before `clone`.
pub(crate) struct ChildArgs<'a> {
    pub(crate) config: &'a ContainerConfig,
    /// The container's directory (holds rootfs/, upper/, work/, hosts...).
    pub(crate) dir: &'a Path,
    /// Read end of the "go" pipe: the monitor writes once cgroup and network
    /// are ready.
    pub(crate) sync_read: RawFd,
    /// Write end of the error pipe (close-on-exec).
    pub(crate) err_write: RawFd,
    /// stdin, stdout, stderr for the process (replaced by a pty for -t).
    pub(crate) stdio: [RawFd; 3],
    /// For -t: the socket on which the child sends the pty master it opens
    /// inside the container's own devpts.
    pub(crate) tty_socket: Option<RawFd>,
    /// All other fds the child inherits and must not pass on.
    pub(crate) close: Vec<RawFd>,
    /// Volumes created for this container that should be filled from the
    /// image at their mount point.
    pub(crate) fill_volumes: &'a [String],
    /// For each of the config's mounts, the device a volume with driver
    /// options mounts in place of its folder.
    pub(crate) devices: &'a [Option<crate::volume::VolumeDevice>],
    /// Seccomp filter, compiled by the monitor (allocation-free in the child).
    pub(crate) seccomp: &'a seccompiler::BpfProgram,
}

/// Runs in the cloned child. Never returns on success.
/// Gives the program the signal dispositions and mask a fresh process has:
/// an ignored signal stays ignored across `execve` (Rust ignores SIGPIPE),
/// and `yes | head` in a container must end when `head` does.
pub(crate) fn reset_signals() {
    use nix::sys::signal::{SigSet, SigmaskHow};
    // The kernel's `struct sigaction`, zeroed: SIG_DFL, no flags, empty
    // mask. The raw call, because libc refuses the real-time signals it
    // keeps for itself (32 and 33), which are ignored here too.
    let dfl = [0u64; 4];
    for sig in 1..=64 {
        if sig == libc::SIGKILL || sig == libc::SIGSTOP {
            continue;
        }
        // SAFETY: a valid, zeroed kernel sigaction; no handler of ours.
        unsafe {
            libc::syscall(
                libc::SYS_rt_sigaction,
                sig,
                dfl.as_ptr(),
                std::ptr::null_mut::<u64>(),
                8usize,
            );
        }
    }
    let _ = nix::sys::signal::sigprocmask(SigmaskHow::SIG_SETMASK, Some(&SigSet::empty()), None);
}

pub(crate) fn child_main(args: &ChildArgs<'_>) -> isize {
    let err = match run(args) {
        Ok(never) => match never {},
        Err(e) => e,
    };
    let mut f = unsafe_file(args.err_write);
    let _ = write!(f, "{} {}", err.code, err.msg);
    std::mem::forget(f);
    err.code as isize
}

fn unsafe_file(fd: RawFd) -> fs::File {
    use std::os::fd::FromRawFd;
    // SAFETY: the fd is a pipe end the monitor created and left open for the
    // child; the caller forgets the File so that it is never closed twice.
    unsafe { fs::File::from_raw_fd(fd) }
}

pub(crate) enum Never {}

fn run(a: &ChildArgs<'_>) -> Result<Never, InitError> {
    let cfg = a.config;
    // Wait until the monitor has put us in our cgroup and set up the network.
    let mut buf = [0u8; 1];
    let n = nix::unistd::read(borrow(a.sync_read), &mut buf).ctx(|| "wait for monitor".into())?;
    if n != 1 {
        return Err(fail("monitor went away before the container started"));
    }
    for &fd in &a.close {
        let _ = nix::unistd::close(fd);
    }

    nix::unistd::setsid().ctx(|| "setsid".into())?;
    for (i, &fd) in a.stdio.iter().enumerate() {
        // SAFETY: dup2 onto 0..2 of fds we own; no Rust object owns 0..2.
        if unsafe { libc::dup2(fd, i as i32) } < 0 {
            return Err(fail(format!("dup2: {}", std::io::Error::last_os_error())));
        }
    }
    if cfg.network != crate::spec::NetworkMode::Host {
        sethostname(&cfg.hostname).ctx(|| "sethostname".into())?;
        loopback_up().ctx(|| "bring up loopback".into())?;
    }

    let rootfs = a.dir.join("rootfs");
    setup_rootfs(a, &rootfs)?;

    // Enter the new root and let go of the old one.
    chdir(&rootfs).ctx(|| "chdir rootfs".into())?;
    pivot_root(".", ".").ctx(|| "pivot_root".into())?;
    umount2(".", MntFlags::MNT_DETACH).ctx(|| "detach old root".into())?;
    chdir("/").ctx(|| "chdir /".into())?;
    set_sysctls(
        &cfg.security.sysctls,
        cfg.network == crate::spec::NetworkMode::Host,
    )?;
    mask_paths();
    if let Some(sock) = a.tty_socket {
        setup_pty(sock)?;
    }
    if cfg.read_only {
        mount(
            None::<&str>,
            "/",
            None::<&str>,
            MsFlags::MS_REMOUNT | MsFlags::MS_BIND | MsFlags::MS_RDONLY,
            None::<&str>,
        )
        .ctx(|| "remount / read-only".into())?;
    }

    let user = resolve_user(&cfg.process.user)?;
    let cwd = if cfg.process.cwd.is_empty() {
        "/"
    } else {
        &cfg.process.cwd
    };
    if !cfg.read_only {
        let _ = fs::create_dir_all(cwd);
    }
    let path_env = cfg
        .process
        .env
        .iter()
        .find_map(|e| e.strip_prefix("PATH="))
        .unwrap_or("/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
        .to_owned();

    let mut env = cfg.process.env.clone();
    if !env.iter().any(|e| e.starts_with("HOSTNAME=")) {
        env.push(format!("HOSTNAME={}", cfg.hostname));
    }
    if cfg.process.tty && !env.iter().any(|e| e.starts_with("TERM=")) {
        env.push("TERM=xterm".into());
    }
    let caps = crate::security::capabilities(&cfg.security.cap_add, &cfg.security.cap_drop)
        .map_err(fail)?;
    set_ulimits(&cfg.security.ulimits)?;
    let seccomp = (!cfg.security.seccomp_unconfined).then_some(a.seccomp);
    if cfg.security.init {
        return crate::reaper::run(
            &user,
            cwd,
            &path_env,
            &cfg.process.args,
            env,
            &caps,
            seccomp,
            a.err_write,
        );
    }
    exec_as(
        &user,
        cwd,
        &path_env,
        &cfg.process.args,
        env,
        &caps,
        seccomp,
    )
}

/// Sets the container's resource limits (before privileges are dropped, so
/// that a hard limit may be raised).
pub(crate) fn set_ulimits(
    limits: &std::collections::BTreeMap<String, (u64, u64)>,
) -> Result<(), InitError> {
    for (name, (soft, hard)) in limits {
        let r = crate::security::ulimit_resource(name).map_err(fail)?;
        nix::sys::resource::setrlimit(r, *soft, *hard)
            .map_err(|e| fail(format!("ulimit {name}={soft}:{hard}: {e}")))?;
    }
    Ok(())
}

/// Writes the container's kernel parameters in its own namespaces (after
/// the pivot, so `/proc/sys` is the container's).
fn set_sysctls(
    sysctls: &std::collections::BTreeMap<String, String>,
    host_network: bool,
) -> Result<(), InitError> {
    for (k, v) in sysctls {
        crate::security::namespaced_sysctl(k, host_network).map_err(fail)?;
        let path = format!("/proc/sys/{}", k.replace('.', "/"));
        fs::write(&path, v).map_err(|e| fail(format!("sysctl {k}={v}: {e}")))?;
    }
    Ok(())
}

/// The last steps of both a container's init and `exec`: drop privileges to
/// `user`, enter `cwd`, apply seccomp and execute `args`.
pub(crate) fn exec_as(
    user: &User,
    cwd: &str,
    path_env: &str,
    args: &[String],
    mut env: Vec<String>,
    caps: &caps::CapsHashSet,
    seccomp: Option<&seccompiler::BpfProgram>,
) -> Result<Never, InitError> {
    if args.is_empty() {
        return Err(fail("no command given: the image has no Cmd or Entrypoint"));
    }
    drop_privileges(user, caps)?;
    chdir(cwd).map_err(|e| fail(format!("chdir to working directory {cwd}: {e}")))?;

    let exe = find_exe(&args[0], path_env)?;
    let argv = cstrings(args)?;
    if !env.iter().any(|e| e.starts_with("HOME=")) {
        env.push(format!("HOME={}", user.home));
    }
    let envp = cstrings(&env)?;
    reset_signals();
    // Last: after this, the filter refuses mount/setns/... to us too.
    if let Some(f) = seccomp {
        seccompiler::apply_filter(f).ctx(|| "seccomp".into())?;
    }
    let e = nix::unistd::execve(&exe, &argv, &envp).unwrap_err();
    let code = match e {
        nix::errno::Errno::ENOENT => 127,
        _ => 126,
    };
    Err(InitError {
        code,
        msg: format!("exec {:?}: {e}", args[0]),
    })
}

/// Drops to `user` keeping `caps` (all of them for root; a user other
/// than root keeps none, as in Docker).
pub(crate) fn drop_privileges(user: &User, caps: &caps::CapsHashSet) -> Result<(), InitError> {
    // Privileges: bounding set first (needs CAP_SETPCAP), then the ids,
    // which clear the other sets for a non-root user.
    crate::security::drop_bounding(caps).ctx(|| "drop capabilities".into())?;
    nix::sys::prctl::set_no_new_privs().ctx(|| "no_new_privs".into())?;
    nix::unistd::setgroups(&user.groups).ctx(|| "setgroups".into())?;
    nix::unistd::setresgid(user.gid, user.gid, user.gid).ctx(|| "setgid".into())?;
    nix::unistd::setresuid(user.uid, user.uid, user.uid).ctx(|| "setuid".into())?;
    if user.uid.is_root() {
        crate::security::set_caps(caps).ctx(|| "set capabilities".into())?;
    }
    Ok(())
}

/// Opens a pty in the container's devpts (so `ttyname` works inside), makes
/// its slave our stdio and controlling terminal, and sends the master to
/// the monitor.
pub(crate) fn setup_pty(sock: RawFd) -> Result<(), InitError> {
    use nix::fcntl::OFlag;
    let master =
        nix::pty::posix_openpt(OFlag::O_RDWR | OFlag::O_NOCTTY).ctx(|| "open /dev/ptmx".into())?;
    nix::pty::grantpt(&master).ctx(|| "grantpt".into())?;
    nix::pty::unlockpt(&master).ctx(|| "unlockpt".into())?;
    let name = nix::pty::ptsname_r(&master).ctx(|| "ptsname".into())?;
    let slave = nix::fcntl::open(name.as_str(), OFlag::O_RDWR, nix::sys::stat::Mode::empty())
        .ctx(|| format!("open {name}"))?;
    for i in 0..3 {
        // SAFETY: dup2 onto our standard fds.
        unsafe { libc::dup2(slave.as_raw_fd(), i) };
    }
    // SAFETY: TIOCSCTTY on our stdin, the pty slave, in our new session.
    unsafe { libc::ioctl(0, libc::TIOCSCTTY, 0) };
    let fds = [master.as_raw_fd()];
    let cmsg = [nix::sys::socket::ControlMessage::ScmRights(&fds)];
    let iov = [std::io::IoSlice::new(b"t")];
    nix::sys::socket::sendmsg::<()>(sock, &iov, &cmsg, nix::sys::socket::MsgFlags::empty(), None)
        .ctx(|| "send pty to monitor".into())?;
    Ok(())
}

fn borrow(fd: RawFd) -> std::os::fd::BorrowedFd<'static> {
    // SAFETY: the fd stays open for the life of the child.
    unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) }
}

fn cstrings(v: &[String]) -> Result<Vec<CString>, InitError> {
    v.iter()
        .map(|s| CString::new(s.as_bytes()).map_err(|_| fail(format!("NUL byte in {s:?}"))))
        .collect()
}

fn find_exe(name: &str, path: &str) -> Result<CString, InitError> {
    let found = if name.contains('/') {
        Some(PathBuf::from(name))
    } else {
        path.split(':')
            .map(|d| Path::new(d).join(name))
            .find(|p| p.metadata().map(|m| m.is_file()).unwrap_or(false))
    };
    match found {
        Some(p) if p.exists() => {
            let md = p.metadata().ctx(|| format!("stat {}", p.display()))?;
            if md.is_dir() || md.permissions().mode() & 0o111 == 0 {
                return Err(InitError {
                    code: 126,
                    msg: format!("exec {name:?}: permission denied"),
                });
            }
            CString::new(p.into_os_string().into_encoded_bytes())
                .map_err(|_| fail("NUL byte in path"))
        }
        _ => Err(InitError {
            code: 127,
            msg: format!("exec {name:?}: executable file not found in $PATH"),
        }),
    }
}

fn mnt(
    src: Option<&str>,
    target: &Path,
    fstype: Option<&str>,
    flags: MsFlags,
    data: Option<&str>,
) -> Result<(), InitError> {
    mount(src, target, fstype, flags, data).map_err(|e| {
        fail(format!(
            "mount {} on {}: {e}",
            fstype.or(src).unwrap_or("?"),
            target.display()
        ))
    })
}

fn setup_rootfs(a: &ChildArgs<'_>, rootfs: &Path) -> Result<(), InitError> {
    let cfg = a.config;
    // Nothing we mount may propagate back to the host.
    mnt(
        None,
        Path::new("/"),
        None,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None,
    )?;

    let lower = crate::fs::overlay_lowerdirs(&cfg.layers);
    let upper = a.dir.join("upper");
    let work = a.dir.join("work");
    if cfg.layers.is_empty() {
        // FROM scratch with nothing added: an empty root.
        mnt(
            Some(&upper.display().to_string()),
            rootfs,
            None,
            MsFlags::MS_BIND,
            None,
        )?;
    } else {
        let opts = format!(
            "lowerdir={lower},upperdir={},workdir={}",
            upper.display(),
            work.display()
        );
        mnt(
            Some("overlay"),
            rootfs,
            Some("overlay"),
            MsFlags::empty(),
            Some(&opts),
        )?;
    }

    let nosuid = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    let proc_ = secure_mkdir(rootfs, "/proc")?;
    mnt(Some("proc"), &proc_, Some("proc"), nosuid, None)?;
    let sys = secure_mkdir(rootfs, "/sys")?;
    if cfg.network == crate::spec::NetworkMode::Host {
        mnt(
            Some("/sys"),
            &sys,
            None,
            MsFlags::MS_BIND | MsFlags::MS_REC,
            None,
        )?;
        mnt(
            None,
            &sys,
            None,
            MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY | nosuid,
            None,
        )?;
    } else {
        mnt(
            Some("sysfs"),
            &sys,
            Some("sysfs"),
            nosuid | MsFlags::MS_RDONLY,
            None,
        )?;
    }
    setup_dev(rootfs)?;

    // Generated files: /etc/hosts, /etc/resolv.conf, /etc/hostname.
    for name in ["hosts", "resolv.conf", "hostname"] {
        let target = secure_touch(rootfs, &format!("/etc/{name}"))?;
        let src = a.dir.join(name);
        mnt(
            Some(&src.display().to_string()),
            &target,
            None,
            MsFlags::MS_BIND,
            None,
        )?;
    }

    for (i, m) in cfg.mounts.iter().enumerate() {
        let device = a.devices.get(i).and_then(Option::as_ref);
        match &m.kind {
            MountKind::Tmpfs => {
                let t = secure_mkdir(rootfs, &m.destination)?;
                let data = match m.options.tmpfs_size {
                    Some(size) => format!("mode=1777,size={size}"),
                    None => "mode=1777".to_owned(),
                };
                mnt(
                    Some("tmpfs"),
                    &t,
                    Some("tmpfs"),
                    MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
                    Some(&data),
                )?;
            }
            MountKind::Volume { .. } if device.is_some() => {
                // A volume with driver options: its device, mounted here
                // in the container's own mount namespace.
                let Some(d) = device else { continue };
                let t = secure_mkdir(rootfs, &m.destination)?;
                let data = (!d.data.is_empty()).then_some(d.data.as_str());
                mnt(Some(&d.device), &t, d.fstype.as_deref(), d.flags, data)?;
                if m.read_only {
                    remount_read_only(&t)?;
                }
            }
            MountKind::Bind | MountKind::Volume { .. } => {
                let is_dir = m.source.is_dir();
                let t = if is_dir {
                    secure_mkdir(rootfs, &m.destination)?
                } else {
                    secure_touch(rootfs, &m.destination)?
                };
                if let MountKind::Volume { name } = &m.kind {
                    if a.fill_volumes.contains(name) {
                        copy_tree(&t, &m.source).ctx(|| format!("fill volume {name}"))?;
                    }
                }
                let src = m.source.display().to_string();
                mnt(
                    Some(&src),
                    &t,
                    None,
                    MsFlags::MS_BIND | MsFlags::MS_REC,
                    None,
                )?;
                if let Some(p) = &m.options.propagation {
                    let flag = match p.as_str() {
                        "shared" => MsFlags::MS_SHARED,
                        "rshared" => MsFlags::MS_SHARED | MsFlags::MS_REC,
                        "slave" => MsFlags::MS_SLAVE,
                        "rslave" => MsFlags::MS_SLAVE | MsFlags::MS_REC,
                        "private" => MsFlags::MS_PRIVATE,
                        _ => MsFlags::MS_PRIVATE | MsFlags::MS_REC,
                    };
                    mnt(None, &t, None, flag, None)?;
                }
                if m.read_only {
                    remount_read_only(&t)?;
                }
            }
        }
    }
    Ok(())
}

/// Makes the bind mount at `t` read-only.
fn remount_read_only(t: &Path) -> Result<(), InitError> {
    mnt(
        None,
        t,
        None,
        MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY,
        None,
    )
}

fn setup_dev(rootfs: &Path) -> Result<(), InitError> {
    let dev = secure_mkdir(rootfs, "/dev")?;
    mnt(
        Some("tmpfs"),
        &dev,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_STRICTATIME,
        Some("mode=755,size=65536k"),
    )?;
    for (name, major, minor) in [
        ("null", 1, 3),
        ("zero", 1, 5),
        ("full", 1, 7),
        ("random", 1, 8),
        ("urandom", 1, 9),
        ("tty", 5, 0),
    ] {
        let p = dev.join(name);
        mknod(
            &p,
            SFlag::S_IFCHR,
            Mode::from_bits_truncate(0o666),
            makedev(major, minor),
        )
        .ctx(|| format!("mknod {}", p.display()))?;
        // The umask may have narrowed the mode.
        let _ = fs::set_permissions(&p, fs::Permissions::from_mode(0o666));
    }
    let pts = dev.join("pts");
    fs::create_dir(&pts).ctx(|| "mkdir /dev/pts".into())?;
    mnt(
        Some("devpts"),
        &pts,
        Some("devpts"),
        MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
        Some("newinstance,ptmxmode=0666,mode=0620"),
    )?;
    let shm = dev.join("shm");
    fs::create_dir(&shm).ctx(|| "mkdir /dev/shm".into())?;
    mnt(
        Some("shm"),
        &shm,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        Some("mode=1777,size=65536k"),
    )?;
    for (link, target) in [
        ("ptmx", "pts/ptmx"),
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
    ] {
        symlink(target, dev.join(link)).ctx(|| format!("symlink /dev/{link}"))?;
    }
    Ok(())
}

/// Hides kernel files a container has no business reading, as Docker does.
fn mask_paths() {
    for p in [
        "/proc/kcore",
        "/proc/keys",
        "/proc/timer_list",
        "/proc/sched_debug",
        "/sys/firmware",
    ] {
        let path = Path::new(p);
        if path.is_dir() {
            let _ = mount(
                Some("tmpfs"),
                path,
                Some("tmpfs"),
                MsFlags::MS_RDONLY,
                None::<&str>,
            );
        } else if path.exists() {
            let _ = mount(
                Some("/dev/null"),
                path,
                None::<&str>,
                MsFlags::MS_BIND,
                None::<&str>,
            );
        }
    }
    for p in ["/proc/sys", "/proc/sysrq-trigger", "/proc/irq", "/proc/bus"] {
        let path = Path::new(p);
        if path.exists()
            && mount(
                Some(path),
                path,
                None::<&str>,
                MsFlags::MS_BIND | MsFlags::MS_REC,
                None::<&str>,
            )
            .is_ok()
        {
            let _ = mount(
                None::<&str>,
                path,
                None::<&str>,
                MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY,
                None::<&str>,
            );
        }
    }
}

fn secure_mkdir(rootfs: &Path, p: &str) -> Result<PathBuf, InitError> {
    let t = secure_join(rootfs, p).ctx(|| format!("resolve {p}"))?;
    fs::create_dir_all(&t).ctx(|| format!("mkdir {p}"))?;
    Ok(t)
}

fn secure_touch(rootfs: &Path, p: &str) -> Result<PathBuf, InitError> {
    let t = secure_join(rootfs, p).ctx(|| format!("resolve {p}"))?;
    if let Some(parent) = t.parent() {
        fs::create_dir_all(parent).ctx(|| format!("mkdir for {p}"))?;
    }
    if !t.exists() {
        fs::File::create(&t).ctx(|| format!("create {p}"))?;
    }
    Ok(t)
}

/// Copies what the image has at a volume's mount point into the new volume.
fn copy_tree(from: &Path, to: &Path) -> std::io::Result<()> {
    if !from.is_dir() {
        return Ok(());
    }
    for entry in fs::read_dir(from)? {
        let entry = entry?;
        let ft = entry.file_type()?;
        let dst = to.join(entry.file_name());
        let md = entry.metadata()?;
        if ft.is_dir() {
            fs::create_dir_all(&dst)?;
            copy_tree(&entry.path(), &dst)?;
        } else if ft.is_symlink() {
            symlink(fs::read_link(entry.path())?, &dst)?;
        } else if ft.is_file() {
            fs::copy(entry.path(), &dst)?;
        } else {
            continue;
        }
        use std::os::unix::fs::MetadataExt;
        let _ = std::os::unix::fs::lchown(&dst, Some(md.uid()), Some(md.gid()));
        if !ft.is_symlink() {
            fs::set_permissions(&dst, fs::Permissions::from_mode(md.mode() & 0o7777))?;
        }
    }
    Ok(())
}

fn loopback_up() -> std::io::Result<()> {
    // SAFETY: a plain datagram socket; closed by OwnedFd.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: fd is a fresh socket we own.
    let sock = unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    // SAFETY: ifreq is plain old data; all-zero is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (i, b) in b"lo\0".iter().enumerate() {
        req.ifr_name[i] = *b as libc::c_char;
    }
    // SAFETY: SIOCGIFFLAGS/SIOCSIFFLAGS read and write req, which lives
    // across both calls.
    unsafe {
        if libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut req) < 0 {
            return Err(std::io::Error::last_os_error());
        }
        req.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
        if libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &req) < 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

#[derive(Debug)]
pub(crate) struct User {
    uid: Uid,
    gid: Gid,
    groups: Vec<Gid>,
    home: String,
}

/// Resolves `user[:group]` against the container's /etc/passwd and
/// /etc/group, as Docker does: numeric ids need no entry.
pub(crate) fn resolve_user(spec: &str) -> Result<User, InitError> {
    let passwd = fs::read_to_string("/etc/passwd").unwrap_or_default();
    let group = fs::read_to_string("/etc/group").unwrap_or_default();
    resolve_user_in(spec, &passwd, &group).map_err(fail)
}

fn resolve_user_in(spec: &str, passwd: &str, group: &str) -> Result<User, String> {
    let (u, g) = match spec.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (spec, None),
    };
    let u = if u.is_empty() { "0" } else { u };
    let entries: Vec<Vec<&str>> = passwd
        .lines()
        .map(|l| l.split(':').collect::<Vec<_>>())
        .filter(|f| f.len() >= 7)
        .collect();
    let by_name = entries.iter().find(|f| f[0] == u);
    let by_id = u.parse::<u32>().ok();
    let (uid, mut gid, home, name) = match (by_name, by_id) {
        (Some(f), _) => (
            f[2].parse::<u32>()
                .map_err(|_| format!("bad uid for {u} in /etc/passwd"))?,
            f[3].parse::<u32>().unwrap_or(0),
            f[5].to_owned(),
            f[0].to_owned(),
        ),
        (None, Some(id)) => {
            let e = entries.iter().find(|f| f[2] == id.to_string());
            (
                id,
                e.and_then(|f| f[3].parse().ok()).unwrap_or(0),
                e.map(|f| f[5].to_owned()).unwrap_or_else(|| "/".into()),
                e.map(|f| f[0].to_owned()).unwrap_or_default(),
            )
        }
        (None, None) => {
            return Err(format!(
                "unable to find user {u}: no matching entries in passwd file"
            ))
        }
    };
    let groups_file: Vec<Vec<&str>> = group
        .lines()
        .map(|l| l.split(':').collect::<Vec<_>>())
        .filter(|f| f.len() >= 4)
        .collect();
    if let Some(g) = g {
        gid = match g.parse::<u32>() {
            Ok(id) => id,
            Err(_) => groups_file
                .iter()
                .find(|f| f[0] == g)
                .and_then(|f| f[2].parse().ok())
                .ok_or_else(|| {
                    format!("unable to find group {g}: no matching entries in group file")
                })?,
        };
    }
    let mut groups = vec![Gid::from_raw(gid)];
    if !name.is_empty() {
        for f in &groups_file {
            if f[3].split(',').any(|m| m == name) {
                if let Ok(id) = f[2].parse::<u32>() {
                    if id != gid {
                        groups.push(Gid::from_raw(id));
                    }
                }
            }
        }
    }
    Ok(User {
        uid: Uid::from_raw(uid),
        gid: Gid::from_raw(gid),
        groups,
        home,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASSWD: &str = "root:x:0:0:root:/root:/bin/sh\nwww:x:33:33:www:/var/www:/bin/false\n";
    const GROUP: &str = "root:x:0:\nwww:x:33:\nstaff:x:50:www\n";

    #[test]
    fn users_resolve_like_docker() {
        let u = resolve_user_in("", PASSWD, GROUP).unwrap();
        assert_eq!(
            (u.uid.as_raw(), u.gid.as_raw(), u.home.as_str()),
            (0, 0, "/root")
        );
        let u = resolve_user_in("www", PASSWD, GROUP).unwrap();
        assert_eq!((u.uid.as_raw(), u.gid.as_raw()), (33, 33));
        assert_eq!(u.groups, vec![Gid::from_raw(33), Gid::from_raw(50)]);
        let u = resolve_user_in("1000:1000", PASSWD, GROUP).unwrap();
        assert_eq!(
            (u.uid.as_raw(), u.gid.as_raw(), u.home.as_str()),
            (1000, 1000, "/")
        );
        let u = resolve_user_in("www:staff", PASSWD, GROUP).unwrap();
        assert_eq!(u.gid.as_raw(), 50);
        assert!(resolve_user_in("nobody", PASSWD, GROUP)
            .unwrap_err()
            .contains("unable to find user nobody"));
        assert!(resolve_user_in("www:nogroup", PASSWD, GROUP).is_err());
    }
}
