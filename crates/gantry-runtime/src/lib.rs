//! Gantry's native container runtime.
//!
//! A container is a directory under `<data>/containers/<id>` holding its
//! [`ContainerConfig`], its [`State`], its log and its overlay upper layer.
//! [`Runtime::start`] forks a monitor (see `monitor`) that clones the
//! container's init into new mount, pid, uts, ipc and net namespaces, joins
//! it to a cgroup under Gantry's parent, mounts an overlayfs root over the
//! image layers inside the container's own mount namespace (so a dead
//! container leaves no mount behind), pivots into it, drops capabilities,
//! applies seccomp and executes the process.
//!
//! Any Gantry process can find and manage the containers later from the
//! files alone: nothing is held in memory across calls.

mod cgroup;
pub mod devices;
mod exec;
mod files;
mod fs;
mod init;
pub mod logs;
mod loopdev;
mod monitor;
pub mod net;
mod proxy;
mod reaper;
mod security;
mod spec;
pub mod stats;
mod volume;

use std::fs as stdfs;
use std::io::Read;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::sys::signal::{self, Signal};
use nix::unistd::{fork, ForkResult, Pid};

pub use cgroup::{shares_to_weight, Cgroup, CgroupError, CgroupStats, CgroupVersion, Resources};
pub use exec::ExecOptions;
pub use files::FileContent;
pub use fs::{disk_usage, overlay_lowerdirs, private_dir, secure_join};
pub use security::{capabilities, check as check_security, namespaced_sysctl, ulimit_resource};
pub use spec::{
    new_id, ContainerConfig, Mount, MountKind, MountOptions, NetworkMode, OverlayAddr, PortMapping,
    Process, Resolution, RestartPolicy, Security, State, Status,
};
pub use volume::{
    valid_name as valid_volume_name, Volume, VolumeDevice, VolumeError, Volumes, ANONYMOUS_LABEL,
};

/// A runtime operation that failed.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// No container matches the name or id.
    #[error("no such container: {0}")]
    NotFound(String),
    /// An id prefix matches more than one container.
    #[error("{0} matches more than one container: give more of the id")]
    Ambiguous(String),
    /// The name is taken.
    #[error("the container name {0:?} is already in use")]
    NameInUse(String),
    /// The operation needs a stopped container.
    #[error("container {0} is running: stop it first or use --force")]
    Running(String),
    /// The operation needs a running container.
    #[error("container {0} is not running")]
    NotRunning(String),
    /// The process could not be started; `code` is Docker's exit code.
    #[error("{msg}")]
    Start {
        /// 125 (runtime), 126 (not executable) or 127 (not found).
        code: i32,
        /// What went wrong.
        msg: String,
    },
    /// Filesystem trouble at a path.
    #[error("{what} {path}: {err}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// Where.
        path: PathBuf,
        /// The cause.
        #[source]
        err: std::io::Error,
    },
    /// A cgroup problem.
    #[error(transparent)]
    Cgroup(#[from] CgroupError),
    /// Anything else, with its own message.
    #[error("{0}")]
    Other(String),
}

impl RuntimeError {
    fn io(what: &'static str, path: &Path, err: std::io::Error) -> Self {
        Self::Io {
            what,
            path: path.to_owned(),
            err,
        }
    }
}

/// The containers of one data dir.
pub struct Runtime {
    data_dir: PathBuf,
    root: PathBuf,
    cgroups: CgroupVersion,
    cgroup_parent: String,
}

/// A container as listed: what it is and what it is doing.
#[derive(Debug, Clone)]
pub struct Listed {
    /// Its configuration.
    pub config: ContainerConfig,
    /// Its current state.
    pub state: State,
}

/// The start time of a process, to tell it from a later one with its pid.
pub(crate) fn proc_start_time(pid: i32) -> Option<u64> {
    let stat = stdfs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command may contain spaces and parentheses: fields follow the last ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    rest.split(' ').nth(19)?.parse().ok()
}

/// Docker's rule for container names: `[a-zA-Z0-9][a-zA-Z0-9_.-]*` (a
/// name is a file name in the name index, so nothing else may pass).
pub fn valid_container_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
        && name.len() <= 255
}

fn alive(pid: i32, start: Option<u64>) -> bool {
    match proc_start_time(pid) {
        Some(t) => start.is_none_or(|s| s == t) && !is_zombie(pid),
        None => false,
    }
}

fn is_zombie(pid: i32) -> bool {
    stdfs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| s.rfind(')').map(|i| s[i + 2..].starts_with('Z')))
        .unwrap_or(false)
}

impl Runtime {
    /// The runtime for `data_dir`, using the host's cgroup hierarchy under
    /// `/sys/fs/cgroup` and the parent cgroup `gantry`.
    pub fn new(data_dir: &Path) -> Result<Self, RuntimeError> {
        Self::with_cgroups(data_dir, Path::new("/sys/fs/cgroup"), "gantry")
    }

    /// As [`Runtime::new`] with another cgroup root and parent.
    pub fn with_cgroups(
        data_dir: &Path,
        cgroup_root: &Path,
        parent: &str,
    ) -> Result<Self, RuntimeError> {
        let root = data_dir.join("containers");
        private_dir(&root).map_err(|e| RuntimeError::io("create", &root, e))?;
        Ok(Self {
            data_dir: data_dir.to_owned(),
            root,
            cgroups: CgroupVersion::detect(cgroup_root)?,
            cgroup_parent: parent.to_owned(),
        })
    }

    /// Its data dir.
    pub fn data_dir(&self) -> &std::path::Path {
        &self.data_dir
    }

    /// The volumes of this data dir.
    pub fn volumes(&self) -> Volumes {
        Volumes::new(&self.data_dir)
    }

    fn dir(&self, id: &str) -> PathBuf {
        self.root.join(id)
    }

    /// The container's directory (logs live here).
    pub fn container_dir(&self, id: &str) -> PathBuf {
        self.dir(id)
    }

    /// The cgroup of a container.
    pub fn cgroup(&self, id: &str) -> Box<dyn Cgroup> {
        self.cgroups.cgroup(&self.cgroup_parent, id)
    }

    /// Reads a container's configuration.
    pub fn config(&self, id: &str) -> Result<ContainerConfig, RuntimeError> {
        let p = self.dir(id).join("config.json");
        let b = stdfs::read(&p).map_err(|_| RuntimeError::NotFound(id.to_owned()))?;
        serde_json::from_slice(&b).map_err(|e| RuntimeError::Other(format!("{}: {e}", p.display())))
    }

    /// Reads a container's state, correcting it if its monitor died without
    /// recording the end.
    pub fn state(&self, id: &str) -> Result<State, RuntimeError> {
        let p = self.dir(id).join("state.json");
        let b = stdfs::read(&p).map_err(|_| RuntimeError::NotFound(id.to_owned()))?;
        let mut st: State = serde_json::from_slice(&b)
            .map_err(|e| RuntimeError::Other(format!("{}: {e}", p.display())))?;
        if matches!(st.status, Status::Running | Status::Restarting) {
            let monitor_alive = st.monitor_pid.is_some_and(|p| alive(p, None));
            let init_alive = st.pid.is_some_and(|p| alive(p, st.pid_start));
            if !monitor_alive && !init_alive {
                st.status = Status::Exited;
                st.exit_code.get_or_insert(255);
                st.pid = None;
            }
        }
        Ok(st)
    }

    /// Read-modify-write of `state.json` under a lock; returns the new state.
    pub(crate) fn update_state(
        &self,
        id: &str,
        f: impl FnOnce(&mut State),
    ) -> Result<State, RuntimeError> {
        let dir = self.dir(id);
        let lock = stdfs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(dir.join("state.lock"))
            .map_err(|e| RuntimeError::io("open", &dir, e))?;
        let _guard = nix::fcntl::Flock::lock(lock, nix::fcntl::FlockArg::LockExclusive)
            .map_err(|(_, e)| RuntimeError::io("lock", &dir, e.into()))?;
        let p = dir.join("state.json");
        let mut st: State = stdfs::read(&p)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default();
        f(&mut st);
        let tmp = dir.join("state.json.tmp");
        stdfs::write(&tmp, serde_json::to_vec_pretty(&st).unwrap_or_default())
            .map_err(|e| RuntimeError::io("write", &tmp, e))?;
        stdfs::rename(&tmp, &p).map_err(|e| RuntimeError::io("write", &p, e))?;
        Ok(st)
    }

    /// Every container, newest first.
    pub fn list(&self) -> Vec<Listed> {
        let mut out: Vec<Listed> = stdfs::read_dir(&self.root)
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| {
                let id = e.file_name().to_string_lossy().into_owned();
                Some(Listed {
                    config: self.config(&id).ok()?,
                    state: self.state(&id).ok()?,
                })
            })
            .collect();
        out.sort_by_key(|c| std::cmp::Reverse(c.config.created));
        out
    }

    /// The containers (in any state) that mount volume `name`.
    pub fn volume_users(&self, name: &str) -> Vec<Listed> {
        self.list()
            .into_iter()
            .filter(|c| {
                c.config
                    .mounts
                    .iter()
                    .any(|m| matches!(&m.kind, MountKind::Volume { name: n } if n == name))
            })
            .collect()
    }

    /// Finds a container by name, full id or unique id prefix.
    pub fn find(&self, key: &str) -> Result<String, RuntimeError> {
        let all = self.list();
        if let Some(c) = all
            .iter()
            .find(|c| c.config.name == key || c.config.id == key)
        {
            return Ok(c.config.id.clone());
        }
        let hits: Vec<_> = all
            .iter()
            .filter(|c| c.config.id.starts_with(key))
            .collect();
        match hits.len() {
            1 if !key.is_empty() => Ok(hits[0].config.id.clone()),
            0 | 1 => Err(RuntimeError::NotFound(key.to_owned())),
            _ => Err(RuntimeError::Ambiguous(key.to_owned())),
        }
    }

    /// The index of names: `.names/NAME` is a link to the directory of
    /// the container that holds NAME (`../ID`). Taking a name costs one link, not a read
    /// of every container (which made each start slower the more
    /// containers a node ran). A store from before the index gets it from
    /// its containers once.
    fn names(&self) -> Result<PathBuf, RuntimeError> {
        let names = self.root.join(".names");
        if names.is_dir() {
            return Ok(names);
        }
        let tmp = self.root.join(".names.new");
        let _ = stdfs::remove_dir_all(&tmp);
        stdfs::create_dir_all(&tmp).map_err(|e| RuntimeError::io("create", &tmp, e))?;
        for c in self.list() {
            if valid_container_name(&c.config.name) {
                let _ = std::os::unix::fs::symlink(
                    Path::new("..").join(&c.config.id),
                    tmp.join(&c.config.name),
                );
            }
        }
        stdfs::rename(&tmp, &names).map_err(|e| RuntimeError::io("rename", &tmp, e))?;
        Ok(names)
    }

    /// Takes `name` for container `id` (under the creation lock); a name
    /// whose container is gone is free again.
    fn reserve_name(&self, name: &str, id: &str) -> Result<(), RuntimeError> {
        let link = self.names()?.join(name);
        if stdfs::symlink_metadata(&link).is_ok() {
            // Held while the container it leads to is there.
            if link.join("config.json").exists() {
                return Err(RuntimeError::NameInUse(name.to_owned()));
            }
            let _ = stdfs::remove_file(&link);
        }
        std::os::unix::fs::symlink(Path::new("..").join(id), &link)
            .map_err(|e| RuntimeError::io("link", &link, e))
    }

    /// Gives `name` back, if container `id` holds it.
    fn release_name(&self, name: &str, id: &str) {
        if !valid_container_name(name) {
            return;
        }
        let link = self.root.join(".names").join(name);
        if stdfs::read_link(&link).is_ok_and(|h| h.file_name() == Some(id.as_ref())) {
            let _ = stdfs::remove_file(&link);
        }
    }

    /// Records a new container. The name must be unique.
    pub fn create(&self, config: &ContainerConfig) -> Result<(), RuntimeError> {
        // Serialise creations so that two calls cannot take the same name.
        let lock = stdfs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(self.root.join(".create.lock"))
            .map_err(|e| RuntimeError::io("open", &self.root, e))?;
        let _guard = nix::fcntl::Flock::lock(lock, nix::fcntl::FlockArg::LockExclusive)
            .map_err(|(_, e)| RuntimeError::io("lock", &self.root, e.into()))?;
        if !valid_container_name(&config.name) {
            return Err(RuntimeError::Other(format!(
                "invalid container name {:?}: only [a-zA-Z0-9][a-zA-Z0-9_.-] are allowed",
                config.name
            )));
        }
        self.reserve_name(&config.name, &config.id)?;
        // It is written into the container's /etc/hosts and hostname.
        let h = &config.hostname;
        if h.is_empty() || h.len() > 253 || h.chars().any(|c| c.is_control() || c.is_whitespace()) {
            return Err(RuntimeError::Other(format!("invalid hostname {h:?}")));
        }
        check_security(&config.security, config.network == NetworkMode::Host)
            .map_err(RuntimeError::Other)?;
        // These become lines of /etc/hosts and /etc/resolv.conf.
        let r = &config.resolution;
        let word =
            |w: &String| !w.is_empty() && !w.chars().any(|c| c.is_whitespace() || c.is_control());
        if let Some(bad) = r
            .extra_hosts
            .iter()
            .map(|(h, _)| h)
            .chain(&r.dns_search)
            .chain(&r.dns_opt)
            .find(|w| !word(w))
        {
            return Err(RuntimeError::Other(format!(
                "invalid host name, search domain or resolver option {bad:?}"
            )));
        }
        let dir = self.dir(&config.id);
        stdfs::create_dir_all(&dir).map_err(|e| RuntimeError::io("create", &dir, e))?;
        let p = dir.join("config.json");
        stdfs::write(&p, serde_json::to_vec_pretty(config).unwrap_or_default())
            .map_err(|e| RuntimeError::io("write", &p, e))?;
        self.update_state(&config.id, |_| {})?;
        Ok(())
    }

    /// Starts a created or exited container in the background under a
    /// monitor of its own; returns the init's pid once it has executed the
    /// program (or the start error, with Docker's exit code).
    ///
    /// The calling process must be single-threaded: the monitor is forked
    /// from it.
    pub fn start(&self, id: &str) -> Result<i32, RuntimeError> {
        let st = self.state(id)?;
        if st.status == Status::Running {
            return Err(RuntimeError::Other(format!(
                "container {id} is already running"
            )));
        }
        let (ready_r, ready_w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
            .map_err(|e| RuntimeError::Other(format!("pipe: {e}")))?;
        // Double fork: the monitor is reparented to init at once and the
        // caller has no child to reap.
        // SAFETY: the caller is single-threaded (documented above); both
        // children only run our own code and end in _exit.
        match unsafe { fork() }.map_err(|e| RuntimeError::Other(format!("fork: {e}")))? {
            ForkResult::Child => {
                drop(ready_r);
                let _ = nix::unistd::setsid();
                // SAFETY: as above.
                match unsafe { fork() } {
                    Ok(ForkResult::Child) => {
                        detach_stdio(&self.dir(id));
                        // A daemon: a pipe closed under it is an error to
                        // handle, never a signal to die of, whatever the
                        // CLI that forked it chose for itself.
                        // SAFETY: setting a disposition, no handler.
                        unsafe { libc::signal(libc::SIGPIPE, libc::SIG_IGN) };
                        let code =
                            match self.monitor(id, Some(monitor::Report::Pipe(ready_w)), false) {
                                Ok(c) => c,
                                Err(e) => {
                                    tracing::error!(container = id, "monitor: {e}");
                                    125
                                }
                            };
                        // SAFETY: ending the forked monitor without running
                        // the parent's atexit handlers.
                        unsafe { libc::_exit(code.clamp(0, 255)) }
                    }
                    // SAFETY: as above.
                    _ => unsafe { libc::_exit(0) },
                }
            }
            ForkResult::Parent { child } => {
                drop(ready_w);
                let _ = nix::sys::wait::waitpid(child, None);
                let mut msg = String::new();
                let _ = stdfs::File::from(ready_r).read_to_string(&mut msg);
                parse_report(&msg)
            }
        }
    }

    /// Runs a created container in this process, copying its output to our
    /// stdout and stderr (and our stdin to it with `-i`) until it ends for
    /// good; returns its exit code. Signals sent to us are passed on.
    pub fn run_attached(&self, id: &str) -> Result<i32, RuntimeError> {
        self.monitor(id, Some(monitor::Report::Caller), true)
    }

    /// Sends a signal to the container's init.
    pub fn kill(&self, id: &str, sig: Signal) -> Result<(), RuntimeError> {
        let st = self.state(id)?;
        let pid = match (st.status, st.pid) {
            (Status::Running, Some(p)) if alive(p, st.pid_start) => p,
            _ => return Err(RuntimeError::NotRunning(id.to_owned())),
        };
        if matches!(sig, Signal::SIGKILL | Signal::SIGTERM | Signal::SIGINT) {
            self.update_state(id, |s| s.stop_requested = true)?;
        }
        signal::kill(Pid::from_raw(pid), sig).map_err(|e| RuntimeError::Other(format!("kill: {e}")))
    }

    /// Stops a container: its stop signal, then after `timeout` SIGKILL to
    /// every process in its cgroup. Waits until the monitor has recorded the
    /// end. Stopping a stopped container does nothing.
    pub fn stop(&self, id: &str, timeout: Duration) -> Result<(), RuntimeError> {
        let cfg = self.config(id)?;
        let st = self.update_state(id, |s| s.stop_requested = true)?;
        if let (Status::Running, Some(pid)) = (st.status, st.pid) {
            if alive(pid, st.pid_start) {
                let sig = Signal::try_from(cfg.stop_signal).unwrap_or(Signal::SIGTERM);
                let _ = signal::kill(Pid::from_raw(pid), sig);
                if !wait_gone(pid, st.pid_start, timeout) {
                    self.cgroup(id).kill_all(Duration::from_secs(10))?;
                }
            }
        }
        self.wait_ended(id, Duration::from_secs(10))?;
        Ok(())
    }

    /// Freezes every process of a running container (`frozen`, as `docker
    /// pause`), waiting until they are, or thaws them.
    pub fn freeze(&self, id: &str, frozen: bool) -> Result<(), RuntimeError> {
        let st = self.state(id)?;
        match (st.status, st.pid) {
            (Status::Running, Some(pid)) if alive(pid, st.pid_start) => {
                Ok(self.cgroup(id).freeze(frozen)?)
            }
            _ => Err(RuntimeError::NotRunning(id.to_owned())),
        }
    }

    /// Waits until the monitor has recorded the container's end (or gone
    /// away); returns the state.
    fn wait_ended(&self, id: &str, timeout: Duration) -> Result<State, RuntimeError> {
        let deadline = Instant::now() + timeout;
        loop {
            let st = self.state(id)?;
            let monitor_alive = st.monitor_pid.is_some_and(|p| alive(p, None));
            if st.status != Status::Running && st.status != Status::Restarting && !monitor_alive {
                return Ok(st);
            }
            if st.status == Status::Exited && Instant::now() > deadline {
                return Ok(st);
            }
            if Instant::now() > deadline {
                return Err(RuntimeError::Other(format!(
                    "container {id} did not finish stopping within {timeout:?} (state {:?})",
                    st.status
                )));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Blocks until the container has stopped for good; returns its exit code.
    pub fn wait(&self, id: &str) -> Result<i32, RuntimeError> {
        loop {
            let st = self.state(id)?;
            let monitor_alive = st.monitor_pid.is_some_and(|p| alive(p, None));
            match st.status {
                Status::Exited if !monitor_alive => return Ok(st.exit_code.unwrap_or(0)),
                Status::Created => return Err(RuntimeError::NotRunning(id.to_owned())),
                _ => std::thread::sleep(Duration::from_millis(20)),
            }
        }
    }

    /// Removes a container; a running one only with `force` (it is killed).
    pub fn remove(&self, id: &str, force: bool) -> Result<(), RuntimeError> {
        let st = self.state(id)?;
        if matches!(st.status, Status::Running | Status::Restarting) {
            if !force {
                return Err(RuntimeError::Running(id.to_owned()));
            }
            self.update_state(id, |s| s.stop_requested = true)?;
            self.cgroup(id).kill_all(Duration::from_secs(10))?;
            self.wait_ended(id, Duration::from_secs(10))?;
        }
        // The monitor cleans up after itself; this covers one that died.
        let cfg = self.config(id).ok();
        let _ = self.cgroup(id).remove();
        if cfg
            .as_ref()
            .is_some_and(|c| c.network == NetworkMode::Bridge)
        {
            let _ = net::detach(id);
            let _ = net::BridgeNet::default_for(&self.data_dir).release(id);
        }
        if let Some(c) = &cfg {
            self.release_name(&c.name, id);
        }
        // Its anonymous volumes go with it.
        for v in self.volumes().list() {
            if v.labels.get(ANONYMOUS_LABEL).is_some_and(|c| c == id) {
                let _ = self.volumes().remove(&v.name);
            }
        }
        let dir = self.dir(id);
        files::unmount(&dir);
        // A process that is letting go of the container (its monitor's
        // last state write, a helper finishing a stop) may add a file while
        // the tree goes: try again briefly.
        let mut tries = 0;
        loop {
            match stdfs::remove_dir_all(&dir) {
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
                Err(e) if e.kind() == std::io::ErrorKind::DirectoryNotEmpty && tries < 20 => {
                    tries += 1;
                    std::thread::sleep(Duration::from_millis(50));
                }
                Err(e) => return Err(RuntimeError::io("remove", &dir, e)),
                Ok(()) => return Ok(()),
            }
        }
    }

    /// Runs a command in a running container; see [`ExecOptions`].
    pub fn exec(&self, id: &str, opts: &ExecOptions) -> Result<i32, RuntimeError> {
        exec::exec(self, id, opts)
    }
}

/// A signal by number or name, with or without `SIG` (`TERM`, `SIGKILL`,
/// `9`), as Docker's `--stop-signal` and `kill -s` take it.
pub fn parse_signal(s: &str) -> Result<Signal, String> {
    use std::str::FromStr;
    if let Ok(n) = s.parse::<i32>() {
        return Signal::try_from(n).map_err(|_| format!("invalid signal {s:?}"));
    }
    let up = s.to_ascii_uppercase();
    let name = if up.starts_with("SIG") {
        up
    } else {
        format!("SIG{up}")
    };
    Signal::from_str(&name).map_err(|_| format!("invalid signal {s:?}"))
}

fn parse_report(msg: &str) -> Result<i32, RuntimeError> {
    if let Some(pid) = msg.strip_prefix("ok ") {
        return pid
            .trim()
            .parse()
            .map_err(|_| RuntimeError::Other(format!("bad monitor report {msg:?}")));
    }
    if let Some(rest) = msg.strip_prefix("err ") {
        let (code, text) = rest.split_once(' ').unwrap_or(("125", rest));
        return Err(RuntimeError::Start {
            code: code.parse().unwrap_or(125),
            msg: text.to_owned(),
        });
    }
    Err(RuntimeError::Start {
        code: 125,
        msg: "the container monitor exited before reporting (see monitor.log in the container's directory)".into(),
    })
}

fn wait_gone(pid: i32, start: Option<u64>, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if !alive(pid, start) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    !alive(pid, start)
}

/// Points a daemonised monitor's stdio away from the terminal: stdin from
/// /dev/null, stdout and stderr to `monitor.log` for its own diagnostics.
fn detach_stdio(dir: &Path) {
    if let Ok(null) = stdfs::File::open("/dev/null") {
        // SAFETY: dup2 onto fd 0, which no Rust object owns.
        unsafe { libc::dup2(null.as_raw_fd(), 0) };
    }
    if let Ok(log) = stdfs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("monitor.log"))
    {
        // SAFETY: as above, for fds 1 and 2.
        unsafe {
            libc::dup2(log.as_raw_fd(), 1);
            libc::dup2(log.as_raw_fd(), 2);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn container_names() {
        assert!(valid_container_name("web-1.a_b"));
        assert!(valid_container_name("x"));
        for bad in ["", "-x", "a/b", "../x", "a b", "é", ".names"] {
            assert!(!valid_container_name(bad), "{bad}");
        }
        assert!(!valid_container_name(&"x".repeat(256)));
    }

    #[test]
    fn reports_parse() {
        assert_eq!(parse_report("ok 42").unwrap(), 42);
        match parse_report("err 127 exec \"nope\": not found") {
            Err(RuntimeError::Start { code, msg }) => {
                assert_eq!(code, 127);
                assert_eq!(msg, "exec \"nope\": not found");
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            parse_report(""),
            Err(RuntimeError::Start { code: 125, .. })
        ));
    }

    #[test]
    fn restart_policies() {
        assert_eq!(
            RestartPolicy::parse("on-failure:3"),
            Some(RestartPolicy::OnFailure { max: 3 })
        );
        assert_eq!(RestartPolicy::parse("bogus"), None);
        let p = RestartPolicy::OnFailure { max: 2 };
        assert!(p.should_restart(1, 0));
        assert!(p.should_restart(1, 1));
        assert!(!p.should_restart(1, 2));
        assert!(!p.should_restart(0, 0));
        assert!(RestartPolicy::Always.should_restart(0, 100));
        assert!(!RestartPolicy::No.should_restart(1, 0));
    }

    #[test]
    fn own_start_time_is_readable() {
        let me = std::process::id() as i32;
        let t = proc_start_time(me).unwrap();
        assert!(alive(me, Some(t)));
        assert!(!alive(me, Some(t + 1)));
    }
}
