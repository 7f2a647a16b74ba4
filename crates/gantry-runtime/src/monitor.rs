//! The monitor: the process that owns one running container, as conmon does
//! for Podman. It clones the container's init into new namespaces, puts it
//! in its cgroup and network, pumps its output into the log, records its exit
//! in `state.json` and applies the restart policy. A detached container's
//! monitor is a daemon of its own, so the container outlives the CLI call
//! that started it; a foreground `run` is its own monitor and also copies
//! output to the terminal and signals to the container.

use std::fs;
use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::path::Path;
use std::sync::atomic::{AtomicI32, Ordering};
use std::time::{Duration, Instant};

use chrono::Utc;
use nix::fcntl::OFlag;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sched::CloneFlags;
use nix::sys::signal::{self, SigHandler, Signal};
use nix::sys::wait::{waitpid, WaitStatus};
use nix::unistd::{pipe2, Pid};

use crate::init::{child_main, ChildArgs};
use crate::spec::{ContainerConfig, NetworkMode, Status};
use crate::{net, Runtime, RuntimeError};

/// How a start ended before the process ran: Docker's exit code and why.
#[derive(Debug, Clone)]
pub(crate) struct StartFailure {
    pub(crate) code: i32,
    pub(crate) msg: String,
}

/// The parent's ends of a running container.
struct Running {
    pid: Pid,
    stdout: Option<OwnedFd>,
    stderr: Option<OwnedFd>,
    stdin: Option<OwnedFd>,
}

static PENDING_SIGNAL: AtomicI32 = AtomicI32::new(0);

extern "C" fn remember_signal(sig: libc::c_int) {
    PENDING_SIGNAL.store(sig, Ordering::SeqCst);
}

/// Where the monitor reports the first start: the CLI waiting for `-d`.
pub(crate) enum Report {
    /// Write `ok PID` or `err CODE MSG` to this pipe.
    Pipe(OwnedFd),
    /// Foreground: the caller gets the result as a return value.
    Caller,
}

impl Runtime {
    /// Runs the monitor loop for container `id` in this process until the
    /// container has ended for good. Returns the last exit code.
    pub(crate) fn monitor(
        &self,
        id: &str,
        mut report: Option<Report>,
        foreground: bool,
    ) -> Result<i32, RuntimeError> {
        let dir = self.dir(id);
        let config = self.config(id)?;
        let cg = self.cgroups.cgroup(&self.cgroup_parent, id);
        let bridge = net::BridgeNet::default_for(&self.data_dir);
        self.update_state(id, |s| {
            s.monitor_pid = Some(std::process::id() as i32);
            s.stop_requested = false;
            s.error = None;
        })?;
        if foreground {
            for sig in [
                Signal::SIGINT,
                Signal::SIGTERM,
                Signal::SIGHUP,
                Signal::SIGQUIT,
            ] {
                // SAFETY: the handler only stores into an atomic.
                unsafe {
                    let _ = signal::signal(sig, SigHandler::Handler(remember_signal));
                }
            }
        }
        let seccomp = crate::security::default_seccomp()
            .map_err(|e| RuntimeError::Other(format!("seccomp profile: {e}")))?;
        let mut log = crate::logs::LogWriter::open(&dir, config.log_max_size, config.log_max_files)
            .map_err(|e| RuntimeError::io("open log", &dir, e))?;
        // Sized volumes' filesystems, mounted at their folders first.
        for m in &config.mounts {
            if let crate::spec::MountKind::Volume { name } = &m.kind {
                if let Ok(v) = self.volumes().inspect(name) {
                    self.volumes()
                        .ensure_mounted(&v)
                        .map_err(|e| RuntimeError::Other(e.to_string()))?;
                }
            }
        }
        let mut fill = config
            .mounts
            .iter()
            .filter_map(|m| match &m.kind {
                // (A volume with driver options mounts a device, which is
                // never filled; nocopy asks for no filling.)
                crate::spec::MountKind::Volume { name }
                    if self.volumes().take_fresh(name)
                        && !m.options.nocopy
                        && self
                            .volumes()
                            .inspect(name)
                            .is_ok_and(|v| v.device().is_none()) =>
                {
                    Some(name.clone())
                }
                _ => None,
            })
            .collect::<Vec<_>>();
        let devices: Vec<Option<crate::volume::VolumeDevice>> = config
            .mounts
            .iter()
            .map(|m| match &m.kind {
                crate::spec::MountKind::Volume { name } => {
                    self.volumes().inspect(name).ok().and_then(|v| v.device())
                }
                _ => None,
            })
            .collect();
        let mut backoff = Duration::from_millis(100);
        let mut forwarder: Option<crate::proxy::Forwarder> = None;
        let code = loop {
            let oom_before = cg.oom_kills();
            let started = Instant::now();
            let spawned = cg
                .create(&config.resources)
                .map_err(|e| StartFailure {
                    code: 125,
                    msg: e.to_string(),
                })
                .and_then(|()| {
                    self.spawn(&config, &dir, &*cg, &bridge, (&fill, &devices), &seccomp)
                })
                .and_then(|running| {
                    // Published ports are bound once, at the first start.
                    if forwarder.is_some() || config.ports.is_empty() {
                        return Ok(running);
                    }
                    let ip = self
                        .state(id)
                        .ok()
                        .and_then(|s| s.ip)
                        .unwrap_or(std::net::Ipv4Addr::LOCALHOST);
                    match crate::proxy::Forwarder::start(&config.ports, ip) {
                        Ok(f) => {
                            forwarder = f;
                            Ok(running)
                        }
                        Err(msg) => {
                            let _ = signal::kill(running.pid, Signal::SIGKILL);
                            let _ = waitpid(running.pid, None);
                            Err(StartFailure { code: 125, msg })
                        }
                    }
                });
            fill.clear();
            let running = match spawned {
                Ok(r) => r,
                Err(f) => {
                    self.update_state(id, |s| {
                        s.status = Status::Exited;
                        s.exit_code = Some(f.code);
                        s.error = Some(f.msg.clone());
                        s.finished_at = Some(Utc::now());
                        s.pid = None;
                    })?;
                    match report.take() {
                        Some(Report::Pipe(fd)) => send(&fd, &format!("err {} {}", f.code, f.msg)),
                        Some(Report::Caller) => {
                            self.finish(id, &config, &*cg, &bridge);
                            return Err(RuntimeError::Start {
                                code: f.code,
                                msg: f.msg,
                            });
                        }
                        None => {}
                    }
                    break f.code;
                }
            };
            let pid = running.pid.as_raw();
            self.update_state(id, |s| {
                s.status = Status::Running;
                s.pid = Some(pid);
                s.pid_start = crate::proc_start_time(pid);
                s.started_at = Some(Utc::now());
                s.exit_code = None;
                s.oom_killed = false;
            })?;
            if let Some(Report::Pipe(fd)) = report.take() {
                send(&fd, &format!("ok {pid}"));
            }
            report = None;
            let status = pump(running, &mut log, foreground, config.process.tty);
            let _ = log.flush();
            // The init died; the pid namespace is torn down with it, but make
            // sure nothing escaped into the cgroup.
            let _ = cg.kill_all(Duration::from_secs(5));
            let oom = cg.oom_kills() > oom_before;
            let code = status;
            let st = self.update_state(id, |s| {
                s.status = Status::Exited;
                s.exit_code = Some(code);
                s.oom_killed = oom;
                s.finished_at = Some(Utc::now());
                s.pid = None;
            })?;
            if st.stop_requested || !config.restart.should_restart(code, st.restart_count) {
                break code;
            }
            // A process that ran for a while resets the backoff, as Docker.
            if started.elapsed() > Duration::from_secs(10) {
                backoff = Duration::from_millis(100);
            }
            self.update_state(id, |s| {
                s.status = Status::Restarting;
                s.restart_count += 1;
            })?;
            let until = Instant::now() + backoff;
            while Instant::now() < until {
                std::thread::sleep(Duration::from_millis(20));
                if self.state(id).map(|s| s.stop_requested).unwrap_or(true) {
                    break;
                }
            }
            if self.state(id).map(|s| s.stop_requested).unwrap_or(true) {
                self.update_state(id, |s| s.status = Status::Exited)?;
                break code;
            }
            backoff = (backoff * 2).min(Duration::from_secs(60));
        };
        drop(forwarder);
        self.finish(id, &config, &*cg, &bridge);
        Ok(code)
    }

    /// Releases what a stopped container holds; removes it for `--rm`.
    fn finish(
        &self,
        id: &str,
        config: &ContainerConfig,
        cg: &dyn crate::cgroup::Cgroup,
        bridge: &net::BridgeNet,
    ) {
        let _ = cg.kill_all(Duration::from_secs(5));
        if let Err(e) = cg.remove() {
            tracing::warn!(container = id, "remove cgroup: {e}");
        }
        if config.network == NetworkMode::Bridge {
            // The veth goes with the container's namespace (see net::attach).
            let _ = bridge.release(id);
        }
        let _ = self.update_state(id, |s| {
            s.monitor_pid = None;
            s.ip = None;
        });
        if config.auto_remove {
            let _ = fs::remove_dir_all(self.dir(id));
        }
    }

    fn spawn(
        &self,
        config: &ContainerConfig,
        dir: &Path,
        cg: &dyn crate::cgroup::Cgroup,
        bridge: &net::BridgeNet,
        (fill, devices): (&[String], &[Option<crate::volume::VolumeDevice>]),
        seccomp: &seccompiler::BpfProgram,
    ) -> Result<Running, StartFailure> {
        let sys = |what: &str| {
            let what = what.to_owned();
            move |e: nix::Error| StartFailure {
                code: 125,
                msg: format!("{what}: {e}"),
            }
        };
        // clone() copies only the calling thread; a lock held by another
        // thread would stay locked forever in the child.
        let threads = fs::read_dir("/proc/self/task")
            .map(|d| d.count())
            .unwrap_or(1);
        if threads > 1 {
            return Err(StartFailure {
                code: 125,
                msg: format!(
                    "internal error: the monitor has {threads} threads and cannot fork safely"
                ),
            });
        }
        for sub in ["rootfs", "upper", "work"] {
            fs::create_dir_all(dir.join(sub)).map_err(|e| StartFailure {
                code: 125,
                msg: format!("create {sub}: {e}"),
            })?;
        }
        // The overlay's address is the manager's; the bridge's is leased here.
        let overlay = match &config.network {
            NetworkMode::Overlay(o) => Some(net::BridgeNet {
                name: o.bridge.clone(),
                gateway: o.gateway,
                prefix: o.prefix,
                mtu: o.mtu,
                lease_file: bridge.lease_file.clone(),
            }),
            _ => None,
        };
        let ip = match &config.network {
            NetworkMode::Bridge => Some(bridge.lease(&config.id).map_err(|e| StartFailure {
                code: 125,
                msg: e.to_string(),
            })?),
            NetworkMode::Overlay(o) => Some(o.ip),
            _ => None,
        };
        let bridge = overlay.as_ref().unwrap_or(bridge);
        write_etc_files(config, dir, ip).map_err(|e| StartFailure {
            code: 125,
            msg: format!("write /etc files: {e}"),
        })?;

        let (sync_r, sync_w) = pipe2(OFlag::O_CLOEXEC).map_err(sys("pipe"))?;
        let (err_r, err_w) = pipe2(OFlag::O_CLOEXEC).map_err(sys("pipe"))?;
        // The child's stdio, and the ends we keep. With -t the child opens
        // the pty itself, inside its devpts, and sends us the master.
        let (tty_parent, tty_child) = if config.process.tty {
            let (a, b) = nix::sys::socket::socketpair(
                nix::sys::socket::AddressFamily::Unix,
                nix::sys::socket::SockType::Stream,
                None,
                nix::sys::socket::SockFlag::SOCK_CLOEXEC,
            )
            .map_err(sys("socketpair"))?;
            (Some(a), Some(b))
        } else {
            (None, None)
        };
        let null = || -> Result<OwnedFd, StartFailure> {
            fs::File::open("/dev/null").map(OwnedFd::from).map_err(|e| {
                sys("open /dev/null")(nix::errno::Errno::from_raw(e.raw_os_error().unwrap_or(0)))
            })
        };
        let (child_io, keep): ([OwnedFd; 3], [Option<OwnedFd>; 3]) = if config.process.tty {
            ([null()?, null()?, null()?], [None, None, None])
        } else {
            let (out_r, out_w) = pipe2(OFlag::O_CLOEXEC).map_err(sys("pipe"))?;
            let (errs_r, errs_w) = pipe2(OFlag::O_CLOEXEC).map_err(sys("pipe"))?;
            let (in_child, in_keep) = if config.process.stdin {
                let (r, w) = pipe2(OFlag::O_CLOEXEC).map_err(sys("pipe"))?;
                (r, Some(w))
            } else {
                (null()?, None)
            };
            (
                [in_child, out_w, errs_w],
                [in_keep, Some(out_r), Some(errs_r)],
            )
        };
        let args = ChildArgs {
            config,
            dir,
            sync_read: sync_r.as_raw_fd(),
            err_write: err_w.as_raw_fd(),
            stdio: [
                child_io[0].as_raw_fd(),
                child_io[1].as_raw_fd(),
                child_io[2].as_raw_fd(),
            ],
            tty_socket: tty_child.as_ref().map(|s| s.as_raw_fd()),
            close: [sync_w.as_raw_fd(), err_r.as_raw_fd()]
                .into_iter()
                .chain(keep.iter().flatten().map(|f| f.as_raw_fd()))
                .chain(tty_parent.iter().map(|f| f.as_raw_fd()))
                .collect(),
            fill_volumes: fill,
            devices,
            seccomp,
        };
        let mut flags = CloneFlags::CLONE_NEWNS
            | CloneFlags::CLONE_NEWPID
            | CloneFlags::CLONE_NEWUTS
            | CloneFlags::CLONE_NEWIPC;
        if config.network != NetworkMode::Host {
            flags |= CloneFlags::CLONE_NEWNET;
        }
        let mut stack = vec![0u8; 512 * 1024];
        // SAFETY: the monitor is single-threaded here (the CLI forks it
        // before starting any thread, and the netlink runtime is gone), so
        // the child, a copy of this process, runs `child_main` without locks
        // held by threads that do not exist in it; it ends in execve or _exit.
        let pid = unsafe {
            nix::sched::clone(
                Box::new(|| child_main(&args)),
                &mut stack,
                flags,
                Some(libc::SIGCHLD),
            )
        }
        .map_err(sys("clone"))?;
        drop(child_io);
        drop(tty_child);
        drop(sync_r);
        drop(err_w);
        let abort = |f: StartFailure| {
            let _ = signal::kill(pid, Signal::SIGKILL);
            let _ = waitpid(pid, None);
            f
        };
        if let Err(e) = cg.add(pid.as_raw()) {
            return Err(abort(StartFailure {
                code: 125,
                msg: e.to_string(),
            }));
        }
        if let Some(ip) = ip {
            if let Err(e) = net::attach(bridge, &config.id, pid.as_raw(), ip) {
                return Err(abort(StartFailure {
                    code: 125,
                    msg: format!("network: {e}"),
                }));
            }
            let _ = self.update_state(&config.id, |s| s.ip = Some(ip));
        }
        let mut sync_w = fs::File::from(sync_w);
        let _ = sync_w.write_all(b"1");
        drop(sync_w);
        let mut keep = keep;
        if let Some(sock) = &tty_parent {
            // The child sends the master once its devpts is mounted, or
            // closes the socket by failing first.
            if let Some(master) = recv_fd(sock) {
                set_cloexec(master.as_raw_fd());
                if let Ok(ws) = term_size(0) {
                    // SAFETY: TIOCSWINSZ reads a winsize we own.
                    unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCSWINSZ, &ws) };
                }
                let m2 = master.try_clone().ok();
                keep = [
                    config.process.stdin.then_some(m2).flatten(),
                    Some(master),
                    None,
                ];
            }
        }
        drop(tty_parent);
        let mut msg = String::new();
        let _ = fs::File::from(err_r).read_to_string(&mut msg);
        if !msg.is_empty() {
            let _ = waitpid(pid, None);
            let (code, text) = msg.split_once(' ').unwrap_or(("125", &msg));
            return Err(StartFailure {
                code: code.parse().unwrap_or(125),
                msg: text.to_owned(),
            });
        }
        let [stdin, stdout, stderr] = keep;
        Ok(Running {
            pid,
            stdout,
            stderr,
            stdin,
        })
    }
}

/// Receives one fd sent with SCM_RIGHTS; None if the peer closed first.
pub(crate) fn recv_fd(sock: &OwnedFd) -> Option<OwnedFd> {
    use std::os::fd::FromRawFd;
    let mut buf = [0u8; 1];
    let mut iov = [std::io::IoSliceMut::new(&mut buf)];
    let mut space = nix::cmsg_space!([RawFd; 1]);
    let msg = nix::sys::socket::recvmsg::<()>(
        sock.as_raw_fd(),
        &mut iov,
        Some(&mut space),
        nix::sys::socket::MsgFlags::MSG_CMSG_CLOEXEC,
    )
    .ok()?;
    for c in msg.cmsgs().ok()? {
        if let nix::sys::socket::ControlMessageOwned::ScmRights(fds) = c {
            // SAFETY: the kernel just gave us this fd; nobody else owns it.
            return fds.first().map(|&fd| unsafe { OwnedFd::from_raw_fd(fd) });
        }
    }
    None
}

fn set_cloexec(fd: RawFd) {
    // SAFETY: F_SETFD on an fd we own.
    unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) };
}

pub(crate) fn term_size(fd: RawFd) -> std::io::Result<libc::winsize> {
    // SAFETY: winsize is plain data; TIOCGWINSZ fills it.
    let mut ws: libc::winsize = unsafe { std::mem::zeroed() };
    // SAFETY: see above.
    if unsafe { libc::ioctl(fd, libc::TIOCGWINSZ, &mut ws) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(ws)
}

fn send(fd: &OwnedFd, msg: &str) {
    let _ = nix::unistd::write(fd, msg.as_bytes());
}

/// Docker's exit code for a wait status.
pub(crate) fn exit_code(status: WaitStatus) -> i32 {
    match status {
        WaitStatus::Exited(_, c) => c,
        WaitStatus::Signaled(_, sig, _) => 128 + sig as i32,
        _ => 255,
    }
}

/// Copies the container's output to the log (and, in the foreground, to our
/// own stdout/stderr; our stdin to it) until it closes, then reaps the init.
fn pump(mut r: Running, log: &mut crate::logs::LogWriter, foreground: bool, tty: bool) -> i32 {
    let mut buf = vec![0u8; 64 * 1024];
    let mut raw_guard = None;
    let mut forward_stdin = foreground && r.stdin.is_some();
    if foreground && tty {
        raw_guard = RawMode::enter(0);
    }
    loop {
        if r.stdout.is_none() && r.stderr.is_none() {
            break;
        }
        let sig = PENDING_SIGNAL.swap(0, Ordering::SeqCst);
        if sig != 0 {
            if let Ok(s) = Signal::try_from(sig) {
                let _ = signal::kill(r.pid, s);
            }
        }
        // SAFETY: fd 0 is our stdin and outlives this loop iteration.
        let our_stdin = unsafe { BorrowedFd::borrow_raw(0) };
        let mut fds = Vec::with_capacity(3);
        let mut which = Vec::with_capacity(3);
        for (i, f) in [&r.stdout, &r.stderr].into_iter().enumerate() {
            if let Some(f) = f {
                fds.push(PollFd::new(f.as_fd(), PollFlags::POLLIN));
                which.push(i);
            }
        }
        if forward_stdin {
            fds.push(PollFd::new(our_stdin, PollFlags::POLLIN));
            which.push(2);
        }
        // In the foreground, signals to pass on arrive between polls too:
        // look every half second. A detached monitor has nothing to look
        // for and sleeps until output comes (hundreds of monitors waking
        // twice a second cost a node's every start).
        let timeout = if foreground {
            PollTimeout::from(500u16)
        } else {
            PollTimeout::NONE
        };
        match poll(&mut fds, timeout) {
            Ok(0) => continue,
            Ok(_) => {}
            Err(nix::errno::Errno::EINTR) => continue,
            Err(_) => break,
        }
        let ready: Vec<(usize, PollFlags)> = fds
            .iter()
            .zip(&which)
            .map(|(f, &w)| (w, f.revents().unwrap_or(PollFlags::empty())))
            .collect();
        drop(fds);
        for (w, ev) in ready {
            if ev.is_empty() {
                continue;
            }
            if w == 2 {
                let n = nix::unistd::read(our_stdin, &mut buf).unwrap_or(0);
                if n == 0 {
                    forward_stdin = false;
                    if !tty {
                        r.stdin = None; // EOF to the container
                    }
                } else if let Some(i) = &r.stdin {
                    let _ = nix::unistd::write(i, &buf[..n]);
                }
                continue;
            }
            let slot = if w == 0 { &mut r.stdout } else { &mut r.stderr };
            let n = match slot.as_ref().map(|f| nix::unistd::read(f, &mut buf)) {
                Some(Ok(n)) => n,
                Some(Err(nix::errno::Errno::EINTR | nix::errno::Errno::EAGAIN)) => continue,
                _ => 0, // EOF, or EIO from a pty whose slave closed
            };
            if n == 0 {
                *slot = None;
                continue;
            }
            let _ = log.write(w, &buf[..n]);
            if foreground {
                let mut out: Box<dyn Write> = if w == 0 {
                    Box::new(std::io::stdout())
                } else {
                    Box::new(std::io::stderr())
                };
                let _ = out.write_all(&buf[..n]);
                let _ = out.flush();
            }
        }
    }
    drop(raw_guard);
    loop {
        match waitpid(r.pid, None) {
            Err(nix::errno::Errno::EINTR) => {
                let sig = PENDING_SIGNAL.swap(0, Ordering::SeqCst);
                if let Ok(s) = Signal::try_from(sig) {
                    let _ = signal::kill(r.pid, s);
                }
            }
            Ok(st) => return exit_code(st),
            Err(_) => return 255,
        }
    }
}

/// Puts a terminal in raw mode and restores it on drop.
pub(crate) struct RawMode {
    fd: RawFd,
    saved: nix::sys::termios::Termios,
}

impl RawMode {
    /// Enters raw mode on `fd` if it is a terminal.
    pub(crate) fn enter(fd: RawFd) -> Option<Self> {
        // SAFETY: fd is one of our standard fds, open for our lifetime.
        let b = unsafe { BorrowedFd::borrow_raw(fd) };
        let saved = nix::sys::termios::tcgetattr(b).ok()?;
        let mut raw = saved.clone();
        nix::sys::termios::cfmakeraw(&mut raw);
        nix::sys::termios::tcsetattr(b, nix::sys::termios::SetArg::TCSANOW, &raw).ok()?;
        Some(Self { fd, saved })
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        // SAFETY: as in `enter`.
        let b = unsafe { BorrowedFd::borrow_raw(self.fd) };
        let _ = nix::sys::termios::tcsetattr(b, nix::sys::termios::SetArg::TCSANOW, &self.saved);
    }
}

fn write_etc_files(
    config: &ContainerConfig,
    dir: &Path,
    ip: Option<std::net::Ipv4Addr>,
) -> std::io::Result<()> {
    let mut hosts = String::from(
        "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\nfe00::0\tip6-localnet\nff00::0\tip6-mcastprefix\nff02::1\tip6-allnodes\nff02::2\tip6-allrouters\n",
    );
    if let Some(ip) = ip {
        hosts.push_str(&format!("{ip}\t{}\n", config.hostname));
    }
    let r = &config.resolution;
    for (host, addr) in &r.extra_hosts {
        hosts.push_str(&format!("{addr}\t{host}\n"));
    }
    fs::write(dir.join("hosts"), hosts)?;
    fs::write(dir.join("hostname"), format!("{}\n", config.hostname))?;
    let mut servers: Vec<String> = Vec::new();
    let mut options: Vec<String> = Vec::new();
    let mut search: Vec<String> = Vec::new();
    if let NetworkMode::Overlay(o) = &config.network {
        // A task on the overlay asks its node's DNS server first (service
        // discovery, which forwards the rest); servers it was given follow.
        servers.push(o.gateway.to_string());
        options.push("ndots:0".into());
    } else if r.dns.is_empty() {
        // The host's resolvers, minus loopback ones a container cannot reach.
        let host = fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
        for l in host.lines() {
            let mut w = l.split_whitespace();
            match (w.next(), w.next()) {
                (Some("nameserver"), Some(a))
                    if config.network == NetworkMode::Host
                        || !(a.starts_with("127.") || a == "::1") =>
                {
                    servers.push(a.to_owned())
                }
                (Some("search" | "domain"), _) if r.dns_search.is_empty() => {
                    search.extend(l.split_whitespace().skip(1).map(str::to_owned))
                }
                (Some("options"), _) if r.dns_opt.is_empty() => {
                    options.extend(l.split_whitespace().skip(1).map(str::to_owned))
                }
                _ => {}
            }
        }
        if servers.is_empty() {
            servers = vec!["8.8.8.8".into(), "8.8.4.4".into()];
        }
    }
    servers.extend(r.dns.iter().map(|a| a.to_string()));
    search.extend(r.dns_search.iter().cloned());
    for o in &r.dns_opt {
        // A given option replaces the default of the same name.
        let name = o.split(':').next().unwrap_or_default();
        options.retain(|x| x.split(':').next() != Some(name));
        options.push(o.clone());
    }
    let mut resolv = String::new();
    if !search.is_empty() {
        resolv.push_str(&format!("search {}\n", search.join(" ")));
    }
    for s in &servers {
        resolv.push_str(&format!("nameserver {s}\n"));
    }
    if !options.is_empty() {
        resolv.push_str(&format!("options {}\n", options.join(" ")));
    }
    fs::write(dir.join("resolv.conf"), resolv)
}
