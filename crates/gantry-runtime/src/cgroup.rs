//! Control groups: one per container under a parent Gantry owns, on cgroup v1
//! (one hierarchy per controller) or v2 (the unified hierarchy).
//!
//! The two versions differ only in file names and layout, so both implement
//! [`Cgroup`]; [`CgroupVersion::detect`] picks the one the host uses. The file
//! logic is plain path arithmetic over a root directory, so the v2 layout is
//! tested here on a temp dir even though this machine's v2 mount has no
//! limit controllers.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// Resource limits applied to a container's cgroup.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Resources {
    /// Memory limit in bytes.
    pub memory: Option<u64>,
    /// CPU quota in billionths of a CPU, Docker's NanoCPUs (`--cpus 0.5` is 500_000_000).
    pub nano_cpus: Option<u64>,
    /// Relative CPU weight, Docker's `--cpu-shares` (2..=262144, default 1024).
    pub cpu_shares: Option<u64>,
    /// Maximum number of processes.
    pub pids: Option<u64>,
}

/// The CFS period Docker uses for `--cpus`.
const CPU_PERIOD_US: u64 = 100_000;

/// A failure while creating, filling or removing a cgroup.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    /// A cgroup file could not be read or written.
    #[error("cgroup file {path}: {err}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The cause.
        #[source]
        err: io::Error,
    },
    /// No usable cgroup hierarchy was found.
    #[error("no cgroup hierarchy with the memory controller under {0}")]
    NotFound(PathBuf),
    /// A v1 host without the devices controller: containers could use
    /// every device of the host.
    #[error("no devices controller at {0}: refusing to run a container that could use the host's devices")]
    NoDevices(PathBuf),
    /// Processes were still in the cgroup after killing them.
    #[error("cgroup {0} still has processes after SIGKILL")]
    Busy(PathBuf),
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> CgroupError + '_ {
    move |err| CgroupError::Io {
        path: path.to_owned(),
        err,
    }
}

fn write(path: &Path, value: &str) -> Result<(), CgroupError> {
    fs::write(path, value).map_err(io_err(path))
}

/// Waits (10 s at most) until `done` says a freeze or thaw took.
fn wait_for_state(
    done: impl Fn() -> Result<bool, CgroupError>,
    path: &Path,
) -> Result<(), CgroupError> {
    let until = std::time::Instant::now() + Duration::from_secs(10);
    while !done()? {
        if std::time::Instant::now() > until {
            return Err(CgroupError::Io {
                path: path.to_owned(),
                err: io::Error::new(io::ErrorKind::TimedOut, "the freezer did not settle"),
            });
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    Ok(())
}

/// Which cgroup layout the host uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CgroupVersion {
    /// One hierarchy per controller: `<root>/<controller>/<path>`.
    V1 {
        /// Usually `/sys/fs/cgroup`.
        root: PathBuf,
    },
    /// The unified hierarchy: `<root>/<path>`.
    V2 {
        /// Usually `/sys/fs/cgroup`.
        root: PathBuf,
    },
}

/// The v1 controllers a container is placed in.
const V1_CONTROLLERS: [&str; 7] = [
    "memory", "cpu", "cpuacct", "pids", "freezer", "blkio", "devices",
];

impl CgroupVersion {
    /// Looks at `root` (normally `/sys/fs/cgroup`) and says which layout has
    /// the limit controllers. A hybrid host (v1 controllers plus a v2 mount
    /// without them, as here) is v1.
    pub fn detect(root: &Path) -> Result<Self, CgroupError> {
        let controllers = root.join("cgroup.controllers");
        if let Ok(list) = fs::read_to_string(&controllers) {
            if list.split_whitespace().any(|c| c == "memory") {
                return Ok(Self::V2 {
                    root: root.to_owned(),
                });
            }
        }
        if root.join("memory").join("memory.limit_in_bytes").exists() {
            return Ok(Self::V1 {
                root: root.to_owned(),
            });
        }
        Err(CgroupError::NotFound(root.to_owned()))
    }

    /// The cgroup of one container, `<parent>/<name>`, not yet created.
    pub fn cgroup(&self, parent: &str, name: &str) -> Box<dyn Cgroup> {
        let rel = PathBuf::from(parent).join(name);
        match self {
            Self::V1 { root } => Box::new(V1 {
                root: root.clone(),
                parent: PathBuf::from(parent),
                rel,
            }),
            Self::V2 { root } => Box::new(V2 {
                root: root.clone(),
                parent: PathBuf::from(parent),
                rel,
            }),
        }
    }
}

/// Figures read from a container's cgroup.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CgroupStats {
    /// Memory in use, bytes.
    pub memory_usage: u64,
    /// The memory limit in force, bytes (`None` when unlimited).
    pub memory_limit: Option<u64>,
    /// How many times the OOM killer killed a process here.
    pub oom_kills: u64,
    /// CPU time used, nanoseconds.
    pub cpu_usage_ns: u64,
    /// Periods in which the quota throttled the group.
    pub nr_throttled: u64,
    /// Time spent throttled, nanoseconds.
    pub throttled_ns: u64,
    /// Processes in the group.
    pub pids: u64,
    /// Bytes read from block devices.
    #[serde(default)]
    pub blk_read: u64,
    /// Bytes written to block devices.
    #[serde(default)]
    pub blk_write: u64,
    /// Page cache not recently used (reclaimable first): `docker stats`
    /// and cAdvisor's working set is the usage without it.
    #[serde(default)]
    pub inactive_file: u64,
}

/// Sums `MAJ:MIN Read N` / `MAJ:MIN Write N` lines (v1's
/// `blkio.throttle.io_service_bytes`).
fn blkio_v1(text: &str) -> (u64, u64) {
    let (mut r, mut w) = (0, 0);
    for l in text.lines() {
        let mut f = l.split_whitespace();
        let (Some(_dev), Some(op), Some(n)) = (f.next(), f.next(), f.next()) else {
            continue;
        };
        let n: u64 = n.parse().unwrap_or(0);
        match op {
            "Read" => r += n,
            "Write" => w += n,
            _ => {}
        }
    }
    (r, w)
}

/// Sums `rbytes=` and `wbytes=` of v2's `io.stat`.
fn io_stat_v2(text: &str) -> (u64, u64) {
    let (mut r, mut w) = (0, 0);
    for kv in text.split_whitespace() {
        if let Some(n) = kv.strip_prefix("rbytes=") {
            r += n.parse().unwrap_or(0);
        } else if let Some(n) = kv.strip_prefix("wbytes=") {
            w += n.parse().unwrap_or(0);
        }
    }
    (r, w)
}

/// One container's cgroup, on whichever version the host runs.
pub trait Cgroup: Send + Sync {
    /// Creates the cgroup (and Gantry's parent) and applies the limits.
    fn create(&self, res: &Resources) -> Result<(), CgroupError>;
    /// Moves a process into the cgroup.
    fn add(&self, pid: i32) -> Result<(), CgroupError>;
    /// Processes now in the cgroup.
    fn pids(&self) -> Result<Vec<i32>, CgroupError>;
    /// SIGKILLs every process in the cgroup and waits until it is empty.
    fn kill_all(&self, timeout: Duration) -> Result<(), CgroupError>;
    /// Freezes every process in the cgroup (`true`) and waits until they
    /// are, or thaws them.
    fn freeze(&self, frozen: bool) -> Result<(), CgroupError>;
    /// Removes the cgroup; it must be empty.
    fn remove(&self) -> Result<(), CgroupError>;
    /// Reads usage figures.
    fn stats(&self) -> Result<CgroupStats, CgroupError>;
    /// How many OOM kills happened here (a cheap subset of `stats`).
    fn oom_kills(&self) -> u64;
    /// The directories that make up this cgroup (one per v1 controller).
    fn dirs(&self) -> Vec<PathBuf>;
}

struct V1 {
    root: PathBuf,
    parent: PathBuf,
    rel: PathBuf,
}

impl V1 {
    fn dir(&self, ctrl: &str) -> PathBuf {
        self.root.join(ctrl).join(&self.rel)
    }
    fn present(&self) -> impl Iterator<Item = &'static str> + '_ {
        V1_CONTROLLERS
            .into_iter()
            .filter(|c| self.root.join(c).is_dir())
    }
}

fn read_u64(path: &Path) -> Result<u64, CgroupError> {
    let s = fs::read_to_string(path).map_err(io_err(path))?;
    Ok(s.trim().parse().unwrap_or(0))
}

fn read_keyed(path: &Path, key: &str) -> Result<u64, CgroupError> {
    let s = fs::read_to_string(path).map_err(io_err(path))?;
    Ok(s.lines()
        .filter_map(|l| l.split_once(' '))
        .find(|(k, _)| *k == key)
        .and_then(|(_, v)| v.trim().parse().ok())
        .unwrap_or(0))
}

fn read_pids(path: &Path) -> Result<Vec<i32>, CgroupError> {
    match fs::read_to_string(path) {
        Ok(s) => Ok(s.lines().filter_map(|l| l.trim().parse().ok()).collect()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(CgroupError::Io {
            path: path.to_owned(),
            err: e,
        }),
    }
}

fn mkdir(path: &Path) -> Result<(), CgroupError> {
    fs::create_dir_all(path).map_err(io_err(path))
}

fn rmdir(path: &Path) -> Result<(), CgroupError> {
    match fs::remove_dir(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(CgroupError::Io {
            path: path.to_owned(),
            err: e,
        }),
        _ => Ok(()),
    }
}

/// SIGKILLs what `list` returns until it is empty or the time is up.
fn kill_loop(
    list: impl Fn() -> Result<Vec<i32>, CgroupError>,
    dir: &Path,
    timeout: Duration,
) -> Result<(), CgroupError> {
    let deadline = Instant::now() + timeout;
    loop {
        let pids = list()?;
        if pids.is_empty() {
            return Ok(());
        }
        for pid in pids {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        if Instant::now() > deadline {
            return Err(CgroupError::Busy(dir.to_owned()));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

impl Cgroup for V1 {
    fn create(&self, res: &Resources) -> Result<(), CgroupError> {
        for ctrl in self.present() {
            mkdir(&self.dir(ctrl))?;
        }
        let mem = self.dir("memory");
        if let Some(limit) = res.memory {
            write(&mem.join("memory.limit_in_bytes"), &limit.to_string())?;
            // Without swap accounting the file is absent; with it, no swap
            // beyond the limit (Docker's default is twice, which with no swap
            // on the host amounts to the same).
            let memsw = mem.join("memory.memsw.limit_in_bytes");
            if memsw.exists() {
                write(&memsw, &limit.to_string())?;
            }
        }
        let cpu = self.dir("cpu");
        if let Some(nano) = res.nano_cpus {
            write(&cpu.join("cpu.cfs_period_us"), &CPU_PERIOD_US.to_string())?;
            let quota = (nano * CPU_PERIOD_US / 1_000_000_000).max(1000);
            write(&cpu.join("cpu.cfs_quota_us"), &quota.to_string())?;
        }
        if let Some(shares) = res.cpu_shares {
            write(&cpu.join("cpu.shares"), &shares.to_string())?;
        }
        if let Some(pids) = res.pids {
            write(&self.dir("pids").join("pids.max"), &pids.to_string())?;
        }
        // Deny every device, then allow Docker's defaults, one rule a write.
        let devices = self.dir("devices");
        if !devices.is_dir() {
            return Err(CgroupError::NoDevices(self.root.join("devices")));
        }
        write(&devices.join("devices.deny"), "a")?;
        for rule in crate::devices::DEFAULT_ALLOWED {
            write(&devices.join("devices.allow"), &rule.v1_line())?;
        }
        Ok(())
    }

    fn add(&self, pid: i32) -> Result<(), CgroupError> {
        for ctrl in self.present() {
            write(&self.dir(ctrl).join("cgroup.procs"), &pid.to_string())?;
        }
        Ok(())
    }

    fn pids(&self) -> Result<Vec<i32>, CgroupError> {
        read_pids(&self.dir("pids").join("cgroup.procs"))
    }

    fn kill_all(&self, timeout: Duration) -> Result<(), CgroupError> {
        let procs = self.dir("pids").join("cgroup.procs");
        if read_pids(&procs)?.is_empty() {
            return Ok(());
        }
        // Freeze first so that nothing forks between reading the list and
        // killing it; frozen tasks still die of SIGKILL once thawed.
        let freezer = self.dir("freezer").join("freezer.state");
        let frozen = freezer.exists() && write(&freezer, "FROZEN").is_ok();
        for pid in read_pids(&procs)? {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        if frozen {
            write(&freezer, "THAWED")?;
        }
        kill_loop(|| read_pids(&procs), &procs, timeout)
    }

    fn freeze(&self, frozen: bool) -> Result<(), CgroupError> {
        let f = self.dir("freezer").join("freezer.state");
        let want = if frozen { "FROZEN" } else { "THAWED" };
        write(&f, want)?;
        wait_for_state(
            || Ok(fs::read_to_string(&f).map_err(io_err(&f))?.trim() == want),
            &f,
        )
    }

    fn remove(&self) -> Result<(), CgroupError> {
        let mut first = None;
        for ctrl in self.present() {
            if let Err(e) = rmdir(&self.dir(ctrl)) {
                first.get_or_insert(e);
            }
        }
        first.map_or(Ok(()), Err)
    }

    fn stats(&self) -> Result<CgroupStats, CgroupError> {
        let mem = self.dir("memory");
        let limit = read_u64(&mem.join("memory.limit_in_bytes"))?;
        let cpu = self.dir("cpu");
        let (blk_read, blk_write) = blkio_v1(
            &fs::read_to_string(self.dir("blkio").join("blkio.throttle.io_service_bytes"))
                .unwrap_or_default(),
        );
        Ok(CgroupStats {
            blk_read,
            blk_write,
            inactive_file: read_keyed(&mem.join("memory.stat"), "total_inactive_file").unwrap_or(0),
            memory_usage: read_u64(&mem.join("memory.usage_in_bytes"))?,
            // v1 reports "unlimited" as the largest page-aligned i64.
            memory_limit: (limit < (1 << 62)).then_some(limit),
            oom_kills: read_keyed(&mem.join("memory.oom_control"), "oom_kill")?,
            cpu_usage_ns: read_u64(&self.dir("cpuacct").join("cpuacct.usage")).unwrap_or(0),
            nr_throttled: read_keyed(&cpu.join("cpu.stat"), "nr_throttled")?,
            throttled_ns: read_keyed(&cpu.join("cpu.stat"), "throttled_time")?,
            pids: read_pids(&self.dir("pids").join("cgroup.procs"))?.len() as u64,
        })
    }

    fn oom_kills(&self) -> u64 {
        read_keyed(&self.dir("memory").join("memory.oom_control"), "oom_kill").unwrap_or(0)
    }

    fn dirs(&self) -> Vec<PathBuf> {
        let _ = &self.parent;
        self.present().map(|c| self.dir(c)).collect()
    }
}

struct V2 {
    root: PathBuf,
    parent: PathBuf,
    rel: PathBuf,
}

impl V2 {
    fn dir(&self) -> PathBuf {
        self.root.join(&self.rel)
    }
}

/// Docker's conversion of `--cpu-shares` (2..262144) to `cpu.weight` (1..10000).
pub fn shares_to_weight(shares: u64) -> u64 {
    let shares = shares.clamp(2, 262_144);
    1 + ((shares - 2) * 9999) / 262_142
}

impl Cgroup for V2 {
    fn create(&self, res: &Resources) -> Result<(), CgroupError> {
        // Each level from the root to Gantry's parent must delegate the
        // controllers to its children.
        let mut dir = self.root.clone();
        for part in self.parent.components() {
            let control = dir.join("cgroup.subtree_control");
            if control.exists() {
                write(&control, "+memory +cpu +pids")?;
            }
            dir.push(part);
            mkdir(&dir)?;
        }
        let control = dir.join("cgroup.subtree_control");
        if control.exists() {
            write(&control, "+memory +cpu +pids")?;
        }
        let cg = self.dir();
        mkdir(&cg)?;
        if let Some(limit) = res.memory {
            write(&cg.join("memory.max"), &limit.to_string())?;
            let swap = cg.join("memory.swap.max");
            if swap.exists() {
                write(&swap, "0")?;
            }
        }
        if let Some(nano) = res.nano_cpus {
            let quota = (nano * CPU_PERIOD_US / 1_000_000_000).max(1000);
            write(&cg.join("cpu.max"), &format!("{quota} {CPU_PERIOD_US}"))?;
        }
        if let Some(shares) = res.cpu_shares {
            write(
                &cg.join("cpu.weight"),
                &shares_to_weight(shares).to_string(),
            )?;
        }
        if let Some(pids) = res.pids {
            write(&cg.join("pids.max"), &pids.to_string())?;
        }
        crate::devices::attach(&cg, crate::devices::DEFAULT_ALLOWED).map_err(io_err(&cg))
    }

    fn add(&self, pid: i32) -> Result<(), CgroupError> {
        write(&self.dir().join("cgroup.procs"), &pid.to_string())
    }

    fn pids(&self) -> Result<Vec<i32>, CgroupError> {
        read_pids(&self.dir().join("cgroup.procs"))
    }

    fn kill_all(&self, timeout: Duration) -> Result<(), CgroupError> {
        let kill = self.dir().join("cgroup.kill");
        if kill.exists() {
            write(&kill, "1")?;
        }
        let procs = self.dir().join("cgroup.procs");
        kill_loop(|| read_pids(&procs), &procs, timeout)
    }

    fn freeze(&self, frozen: bool) -> Result<(), CgroupError> {
        let f = self.dir().join("cgroup.freeze");
        write(&f, if frozen { "1" } else { "0" })?;
        let events = self.dir().join("cgroup.events");
        let want = if frozen { "frozen 1" } else { "frozen 0" };
        wait_for_state(
            || {
                Ok(fs::read_to_string(&events)
                    .map_err(io_err(&events))?
                    .lines()
                    .any(|l| l == want))
            },
            &events,
        )
    }

    fn remove(&self) -> Result<(), CgroupError> {
        rmdir(&self.dir())
    }

    fn stats(&self) -> Result<CgroupStats, CgroupError> {
        let cg = self.dir();
        let max = fs::read_to_string(cg.join("memory.max")).unwrap_or_default();
        let (blk_read, blk_write) =
            io_stat_v2(&fs::read_to_string(cg.join("io.stat")).unwrap_or_default());
        Ok(CgroupStats {
            blk_read,
            blk_write,
            inactive_file: read_keyed(&cg.join("memory.stat"), "inactive_file").unwrap_or(0),
            memory_usage: read_u64(&cg.join("memory.current"))?,
            memory_limit: max.trim().parse().ok(),
            oom_kills: read_keyed(&cg.join("memory.events"), "oom_kill")?,
            cpu_usage_ns: read_keyed(&cg.join("cpu.stat"), "usage_usec")? * 1000,
            nr_throttled: read_keyed(&cg.join("cpu.stat"), "nr_throttled")?,
            throttled_ns: read_keyed(&cg.join("cpu.stat"), "throttled_usec")? * 1000,
            pids: read_pids(&cg.join("cgroup.procs"))?.len() as u64,
        })
    }

    fn oom_kills(&self) -> u64 {
        read_keyed(&self.dir().join("memory.events"), "oom_kill").unwrap_or(0)
    }

    fn dirs(&self) -> Vec<PathBuf> {
        vec![self.dir()]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn block_io_sums_every_device() {
        let v1 = "8:0 Read 4096\n8:0 Write 8192\n8:0 Sync 1\n8:0 Total 12288\n8:16 Read 10\nTotal 12298\n";
        assert_eq!(blkio_v1(v1), (4106, 8192));
        let v2 =
            "8:0 rbytes=100 wbytes=200 rios=1 wios=2 dbytes=0 dios=0\n8:16 rbytes=1 wbytes=2\n";
        assert_eq!(io_stat_v2(v2), (101, 202));
    }

    fn fake_v2(root: &Path) {
        fs::write(
            root.join("cgroup.controllers"),
            "cpuset cpu io memory pids\n",
        )
        .unwrap();
        fs::write(root.join("cgroup.subtree_control"), "").unwrap();
    }

    #[test]
    fn detects_v2_when_unified_root_has_memory() {
        let t = tempfile::tempdir().unwrap();
        fake_v2(t.path());
        assert_eq!(
            CgroupVersion::detect(t.path()).unwrap(),
            CgroupVersion::V2 {
                root: t.path().to_owned()
            }
        );
    }

    #[test]
    fn detects_v1_on_hybrid_layout() {
        let t = tempfile::tempdir().unwrap();
        fs::create_dir_all(t.path().join("memory")).unwrap();
        fs::write(
            t.path().join("memory/memory.limit_in_bytes"),
            "9223372036854771712",
        )
        .unwrap();
        fs::create_dir_all(t.path().join("unified")).unwrap();
        fs::write(t.path().join("cgroup.controllers"), "").unwrap();
        assert!(matches!(
            CgroupVersion::detect(t.path()).unwrap(),
            CgroupVersion::V1 { .. }
        ));
        assert!(CgroupVersion::detect(&t.path().join("unified")).is_err());
    }

    #[test]
    fn v2_writes_limits_in_its_own_files() {
        let t = tempfile::tempdir().unwrap();
        fake_v2(t.path());
        let v = CgroupVersion::detect(t.path()).unwrap();
        let cg = v.cgroup("gantry", "c1");
        cg.create(&Resources {
            memory: Some(64 << 20),
            nano_cpus: Some(500_000_000),
            cpu_shares: Some(512),
            pids: Some(20),
        })
        .expect_err("a temp dir takes no device program");
        let dir = t.path().join("gantry/c1");
        let read = |f: &str| fs::read_to_string(dir.join(f)).unwrap();
        assert_eq!(read("memory.max"), "67108864");
        assert_eq!(read("cpu.max"), "50000 100000");
        assert_eq!(read("cpu.weight"), shares_to_weight(512).to_string());
        assert_eq!(read("pids.max"), "20");
        // The root delegated the controllers to Gantry's parent.
        assert_eq!(
            fs::read_to_string(t.path().join("cgroup.subtree_control")).unwrap(),
            "+memory +cpu +pids"
        );
        cg.add(42).unwrap();
        assert_eq!(read("cgroup.procs"), "42");
        assert_eq!(cg.dirs(), vec![dir]);
    }

    #[test]
    fn v2_stats_read_keyed_files() {
        let t = tempfile::tempdir().unwrap();
        fake_v2(t.path());
        let cg = CgroupVersion::detect(t.path())
            .unwrap()
            .cgroup("gantry", "c2");
        cg.create(&Resources::default())
            .expect_err("a temp dir takes no device program");
        let dir = t.path().join("gantry/c2");
        fs::write(dir.join("memory.current"), "1000\n").unwrap();
        fs::write(dir.join("memory.max"), "max\n").unwrap();
        fs::write(
            dir.join("memory.events"),
            "low 0\nhigh 0\nmax 3\noom 1\noom_kill 1\n",
        )
        .unwrap();
        fs::write(
            dir.join("cpu.stat"),
            "usage_usec 250\nuser_usec 200\nsystem_usec 50\nnr_periods 4\nnr_throttled 2\nthrottled_usec 70\n",
        )
        .unwrap();
        fs::write(dir.join("cgroup.procs"), "7\n8\n").unwrap();
        fs::write(dir.join("io.stat"), "8:0 rbytes=5 wbytes=6 rios=1\n").unwrap();
        fs::write(
            dir.join("memory.stat"),
            "anon 10\ninactive_file 300\nactive_file 7\n",
        )
        .unwrap();
        let s = cg.stats().unwrap();
        assert_eq!(
            s,
            CgroupStats {
                memory_usage: 1000,
                memory_limit: None,
                oom_kills: 1,
                cpu_usage_ns: 250_000,
                nr_throttled: 2,
                throttled_ns: 70_000,
                pids: 2,
                blk_read: 5,
                blk_write: 6,
                inactive_file: 300,
            }
        );
    }

    #[test]
    fn weight_conversion_matches_docker() {
        assert_eq!(shares_to_weight(2), 1);
        assert_eq!(shares_to_weight(1024), 39);
        assert_eq!(shares_to_weight(262_144), 10_000);
    }
}
