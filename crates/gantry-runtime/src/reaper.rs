//! The small init a container gets with `init: true` (Docker's `--init`,
//! which runs tini): PID 1 starts the program as its child, passes the
//! signals a process manager sends on to it, reaps every orphan that the
//! kernel re-parents to it, and exits with the program's status when the
//! program ends. PID 1 holds no more privilege than the program: the same
//! user, capabilities and seccomp filter.

use std::io::{Read, Write};

use nix::sys::signal::{kill, SigSet, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::{fork, ForkResult, Pid};

use crate::init::{drop_privileges, exec_as, fail, InitError, Never, User};

/// The signals passed on to the program.
const FORWARDED: [Signal; 8] = [
    Signal::SIGTERM,
    Signal::SIGINT,
    Signal::SIGHUP,
    Signal::SIGQUIT,
    Signal::SIGUSR1,
    Signal::SIGUSR2,
    Signal::SIGWINCH,
    Signal::SIGCONT,
];

/// Runs the program under PID 1; returns only if it cannot be started.
/// `err_write` is the monitor's start-error pipe: it is closed once the
/// program has been executed, as the program's own `execve` would.
#[allow(clippy::too_many_arguments)]
pub(crate) fn run(
    user: &User,
    cwd: &str,
    path_env: &str,
    args: &[String],
    env: Vec<String>,
    caps: &caps::CapsHashSet,
    seccomp: Option<&seccompiler::BpfProgram>,
    err_write: i32,
) -> Result<Never, InitError> {
    let mut set = SigSet::empty();
    set.add(Signal::SIGCHLD);
    for s in FORWARDED {
        set.add(s);
    }
    // Blocked, they wait for `sigwait` below; the child's exec resets its
    // mask and dispositions.
    set.thread_block()
        .map_err(|e| fail(format!("block signals: {e}")))?;
    let (started_r, started_w) =
        nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| fail(format!("pipe: {e}")))?;
    // SAFETY: the container's init is single-threaded.
    let child = match unsafe { fork() }.map_err(|e| fail(format!("fork: {e}")))? {
        ForkResult::Child => {
            drop(started_r);
            let e = match exec_as(user, cwd, path_env, args, env, caps, seccomp) {
                Ok(never) => match never {},
                Err(e) => e,
            };
            let mut f = std::fs::File::from(started_w);
            let _ = write!(f, "{} {}", e.code, e.msg);
            // SAFETY: leaving the forked child.
            unsafe { libc::_exit(e.code) }
        }
        ForkResult::Parent { child } => child,
    };
    drop(started_w);
    // EOF: the program was executed. Anything else: why it was not.
    let mut msg = String::new();
    let _ = std::fs::File::from(started_r).read_to_string(&mut msg);
    if let Some((code, why)) = msg.split_once(' ') {
        let _ = waitpid(child, None);
        return Err(InitError {
            code: code.parse().unwrap_or(126),
            msg: why.to_owned(),
        });
    }
    let _ = nix::unistd::close(err_write);
    drop_privileges(user, caps)?;
    if let Some(f) = seccomp {
        seccompiler::apply_filter(f).map_err(|e| fail(format!("seccomp: {e}")))?;
    }
    close_other_fds();
    loop {
        let Ok(sig) = set.wait() else { continue };
        if sig != Signal::SIGCHLD {
            let _ = kill(child, sig);
            continue;
        }
        if let Some(code) = reap(child) {
            // SAFETY: PID 1 ends; the kernel kills what is left.
            unsafe { libc::_exit(code) }
        }
    }
}

/// Reaps every ended child; the program's exit status once it has ended.
fn reap(program: Pid) -> Option<i32> {
    let mut status = None;
    loop {
        match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::Exited(pid, code)) if pid == program => status = Some(code),
            Ok(WaitStatus::Signaled(pid, sig, _)) if pid == program => {
                status = Some(128 + sig as i32)
            }
            Ok(WaitStatus::StillAlive) | Err(_) => return status,
            Ok(_) => {}
        }
    }
}

/// PID 1 keeps only its standard streams.
fn close_other_fds() {
    let fds: Vec<i32> = std::fs::read_dir("/proc/self/fd")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .collect();
    for fd in fds.into_iter().filter(|fd| *fd > 2) {
        let _ = nix::unistd::close(fd);
    }
}
