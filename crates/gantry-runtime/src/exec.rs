//! `exec`: a new process inside a running container. The caller forks a
//! helper that joins the container's cgroup and namespaces; since a pid
//! namespace applies only to children, the helper forks once more, and that
//! grandchild enters the container's root, drops privileges like the init
//! did and executes the command. The helper passes on its exit code.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};

use nix::fcntl::OFlag;
use nix::sched::CloneFlags;
use nix::sys::wait::waitpid;
use nix::unistd::{fork, ForkResult};

use crate::init::{exec_as, resolve_user, setup_pty, InitError};
use crate::monitor::{exit_code, recv_fd, term_size, RawMode};
use crate::{alive, Runtime, RuntimeError, Status};

/// What to run with `exec`.
#[derive(Debug, Clone, Default)]
pub struct ExecOptions {
    /// The command and its arguments.
    pub args: Vec<String>,
    /// Extra `KEY=value` pairs on top of the container's environment.
    pub env: Vec<String>,
    /// Run as this user instead of the container's.
    pub user: Option<String>,
    /// Working directory instead of the container's.
    pub workdir: Option<String>,
    /// Allocate a pseudo-terminal.
    pub tty: bool,
    /// Pass our stdin to the process (`-i`); otherwise it reads /dev/null.
    pub stdin: bool,
}

pub(crate) fn exec(rt: &Runtime, id: &str, opts: &ExecOptions) -> Result<i32, RuntimeError> {
    let cfg = rt.config(id)?;
    let st = rt.state(id)?;
    let pid = match (st.status, st.pid) {
        (Status::Running, Some(p)) if alive(p, st.pid_start) => p,
        _ => return Err(RuntimeError::NotRunning(id.to_owned())),
    };
    let open = |what: &str| -> Result<File, RuntimeError> {
        let p = format!("/proc/{pid}/{what}");
        File::open(&p).map_err(|e| RuntimeError::io("open", p.as_ref(), e))
    };
    let mut nss = Vec::new();
    for (name, flag) in [
        ("ns/ipc", CloneFlags::CLONE_NEWIPC),
        ("ns/uts", CloneFlags::CLONE_NEWUTS),
        ("ns/net", CloneFlags::CLONE_NEWNET),
        ("ns/pid", CloneFlags::CLONE_NEWPID),
        ("ns/mnt", CloneFlags::CLONE_NEWNS),
    ] {
        nss.push((open(name)?, flag));
    }
    let root = open("root")?;
    let mut env = cfg.process.env.clone();
    env.extend(opts.env.iter().cloned());
    if opts.tty && !env.iter().any(|e| e.starts_with("TERM=")) {
        env.push("TERM=xterm".into());
    }
    let path_env = env
        .iter()
        .rev()
        .find_map(|e| e.strip_prefix("PATH="))
        .unwrap_or("/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
        .to_owned();
    let user = opts
        .user
        .clone()
        .unwrap_or_else(|| cfg.process.user.clone());
    let cwd = opts
        .workdir
        .clone()
        .filter(|w| !w.is_empty())
        .unwrap_or_else(|| {
            if cfg.process.cwd.is_empty() {
                "/".into()
            } else {
                cfg.process.cwd.clone()
            }
        });
    let seccomp = crate::security::default_seccomp()
        .map_err(|e| RuntimeError::Other(format!("seccomp profile: {e}")))?;
    // An exec'd process is confined as the container's own is.
    let seccomp = (!cfg.security.seccomp_unconfined).then_some(&seccomp);
    let caps = crate::security::capabilities(&cfg.security.cap_add, &cfg.security.cap_drop)
        .map_err(RuntimeError::Other)?;
    let ulimits = cfg.security.ulimits.clone();
    let cg = rt.cgroup(id);
    // With -t the process opens its pty inside the container (so that
    // ttyname works there) and sends us the master.
    let (tty_parent, tty_child) = if opts.tty {
        let (a, b) = nix::sys::socket::socketpair(
            nix::sys::socket::AddressFamily::Unix,
            nix::sys::socket::SockType::Stream,
            None,
            nix::sys::socket::SockFlag::SOCK_CLOEXEC,
        )
        .map_err(|e| RuntimeError::Other(format!("socketpair: {e}")))?;
        (Some(a), Some(b))
    } else {
        (None, None)
    };
    let (err_r, err_w) = nix::unistd::pipe2(OFlag::O_CLOEXEC)
        .map_err(|e| RuntimeError::Other(format!("pipe: {e}")))?;

    // SAFETY: the CLI is single-threaded when it calls exec; the children
    // run only our code and end in execve or _exit.
    match unsafe { fork() }.map_err(|e| RuntimeError::Other(format!("fork: {e}")))? {
        ForkResult::Child => {
            drop(err_r);
            drop(tty_parent);
            let code = helper(
                &*cg,
                &nss,
                &root,
                tty_child.as_ref(),
                opts.stdin,
                &err_w,
                || {
                    let user = resolve_user(&user)?;
                    // The container's limits hold for what runs in it.
                    crate::init::set_ulimits(&ulimits)?;
                    exec_as(
                        &user,
                        &cwd,
                        &path_env,
                        &opts.args,
                        env.clone(),
                        &caps,
                        seccomp,
                    )
                    .map(|n| match n {})
                },
            );
            // SAFETY: leaving the forked helper without the parent's atexit handlers.
            unsafe { libc::_exit(code) }
        }
        ForkResult::Parent { child } => {
            drop(err_w);
            drop(tty_child);
            if let Some(master) = tty_parent.as_ref().and_then(recv_fd) {
                if let Ok(ws) = term_size(0) {
                    // SAFETY: TIOCSWINSZ reads a winsize we own.
                    unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCSWINSZ, &ws) };
                }
                proxy_tty(&master);
            }
            let status =
                waitpid(child, None).map_err(|e| RuntimeError::Other(format!("wait: {e}")))?;
            let mut msg = String::new();
            let _ = File::from(err_r).read_to_string(&mut msg);
            let code = exit_code(status);
            if !msg.is_empty() {
                let (c, text) = msg.split_once(' ').unwrap_or(("126", &msg));
                return Err(RuntimeError::Start {
                    code: c.parse().unwrap_or(code),
                    msg: text.to_owned(),
                });
            }
            Ok(code)
        }
    }
}

/// Runs in the forked helper: joins cgroup and namespaces, forks the process
/// that will exec, and returns its exit code.
fn helper(
    cg: &dyn crate::Cgroup,
    nss: &[(File, CloneFlags)],
    root: &File,
    tty_socket: Option<&OwnedFd>,
    stdin: bool,
    err_w: &OwnedFd,
    run: impl FnOnce() -> Result<(), InitError>,
) -> i32 {
    let report = |code: i32, msg: String| {
        let _ = nix::unistd::write(err_w, format!("{code} {msg}").as_bytes());
        code
    };
    if let Err(e) = cg.add(std::process::id() as i32) {
        return report(126, format!("join cgroup: {e}"));
    }
    for (f, flag) in nss {
        if let Err(e) = nix::sched::setns(f.as_fd(), *flag) {
            return report(126, format!("join namespace: {e}"));
        }
    }
    // SAFETY: single-threaded forked helper, as in `exec`.
    match unsafe { fork() } {
        Ok(ForkResult::Child) => {
            if let Err(e) = nix::unistd::fchdir(root.as_fd()).and_then(|_| nix::unistd::chroot("."))
            {
                // SAFETY: ending the grandchild.
                unsafe { libc::_exit(report(126, format!("enter container root: {e}"))) }
            }
            let _ = nix::unistd::setsid();
            if !stdin && tty_socket.is_none() {
                if let Ok(null) = File::open("/dev/null") {
                    // SAFETY: dup2 onto our stdin, owned by no Rust object.
                    unsafe { libc::dup2(null.as_raw_fd(), 0) };
                }
            }
            if let Some(s) = tty_socket {
                if let Err(e) = setup_pty(s.as_raw_fd()) {
                    // SAFETY: ending the grandchild.
                    unsafe { libc::_exit(report(e.code, e.msg)) }
                }
            }
            let e = match run() {
                Ok(()) => InitError {
                    code: 126,
                    msg: "exec returned".into(),
                },
                Err(e) => e,
            };
            // SAFETY: ending the grandchild.
            unsafe { libc::_exit(report(e.code, e.msg)) }
        }
        Ok(ForkResult::Parent { child }) => match waitpid(child, None) {
            Ok(st) => exit_code(st),
            Err(_) => 126,
        },
        Err(e) => report(126, format!("fork: {e}")),
    }
}

/// Copies our terminal to the pty master and back until the command ends.
fn proxy_tty(master: &OwnedFd) {
    let _raw = RawMode::enter(0);
    let done = std::sync::atomic::AtomicBool::new(false);
    let mut out_master = File::from(master.try_clone().expect("dup pty master"));
    std::thread::scope(|s| {
        s.spawn(|| {
            let mut stdin = std::io::stdin();
            let mut buf = [0u8; 4096];
            loop {
                let mut fds = [nix::poll::PollFd::new(
                    stdin.as_fd(),
                    nix::poll::PollFlags::POLLIN,
                )];
                if nix::poll::poll(&mut fds, nix::poll::PollTimeout::from(100u16)).unwrap_or(0) == 0
                {
                    if done.load(std::sync::atomic::Ordering::SeqCst) {
                        return;
                    }
                    continue;
                }
                match stdin.read(&mut buf) {
                    Ok(0) | Err(_) => return,
                    Ok(n) => {
                        if out_master.write_all(&buf[..n]).is_err() {
                            return;
                        }
                    }
                }
            }
        });
        let mut input = File::from(master.try_clone().expect("dup pty master"));
        let mut buf = [0u8; 4096];
        let mut stdout = std::io::stdout();
        loop {
            match input.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    let _ = stdout.write_all(&buf[..n]);
                    let _ = stdout.flush();
                }
            }
        }
        done.store(true, std::sync::atomic::Ordering::SeqCst);
    });
}
