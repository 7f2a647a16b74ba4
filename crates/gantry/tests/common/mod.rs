//! Shared fixture for the end-to-end tests: a throwaway data dir and the
//! real `gantry` binary. Dropping it force-removes every container it made
//! and checks that nothing stayed behind in the kernel.

#![allow(dead_code, unreachable_pub, unused_imports)]

pub mod cluster;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

pub use gantry_testkit::{
    free_port, require_root, self_signed_cert, unique, unmount_under, wait_for, DockerEngine, Host,
    Lan, Pebble, Registry,
};

pub struct G {
    pub data: tempfile::TempDir,
    pub home: tempfile::TempDir,
}

/// The distinct non-empty lines a command printed (which tasks answered a
/// run of requests, each printing its host name).
#[allow(dead_code)]
pub fn distinct_lines(o: &Output) -> std::collections::BTreeSet<String> {
    text(o)
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_owned)
        .collect()
}

/// The addresses busybox's `nslookup` printed for the name (sorted; none
/// when it did not resolve).
#[allow(dead_code)]
pub fn resolved(nslookup: &Output) -> Vec<String> {
    let mut v: Vec<String> = text(nslookup)
        .lines()
        .skip_while(|l| !l.starts_with("Name:"))
        .filter_map(|l| l.strip_prefix("Address:"))
        .map(|a| a.trim().to_owned())
        .collect();
    v.sort();
    v
}

/// The ids of the containers `ps --format json` printed whose names start
/// with `prefix` (task containers are named `STACK_SERVICE.SLOT.TASK`).
#[allow(dead_code)]
pub fn ids_named(ps_json: &Output, prefix: &str) -> Vec<String> {
    let v: serde_json::Value = serde_json::from_str(&text(ps_json)).unwrap_or_default();
    v.as_array()
        .into_iter()
        .flatten()
        .filter(|c| {
            c["Name"]
                .as_str()
                .is_some_and(|n| n.trim_start_matches('/').starts_with(prefix))
        })
        .filter_map(|c| c["Id"].as_str().map(str::to_owned))
        .collect()
}

pub fn text(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn errtext(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

impl G {
    /// A fresh Gantry, or None when the test must be skipped (not root, not CI).
    pub fn new(test: &str) -> Option<Self> {
        if !require_root(test) {
            return None;
        }
        Some(Self {
            data: tempfile::Builder::new()
                .prefix("gantry-test")
                .tempdir()
                .expect("data dir"),
            home: tempfile::tempdir().expect("home dir"),
        })
    }

    pub fn cmd(&self) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_gantry"));
        c.env("GANTRY_DATA_DIR", self.data.path())
            .env("HOME", self.home.path())
            .env_remove("DOCKER_CONFIG")
            .stdin(Stdio::null());
        c
    }

    /// gantry run inside a simulated host's network namespace.
    pub fn cmd_on(&self, host: &Host) -> Command {
        let mut c = host.command(env!("CARGO_BIN_EXE_gantry"));
        c.env("GANTRY_DATA_DIR", self.data.path())
            .env("HOME", self.home.path())
            .env_remove("DOCKER_CONFIG")
            .stdin(Stdio::null());
        c
    }

    /// Runs gantry and returns its output, whatever the status.
    pub fn out(&self, args: &[&str]) -> Output {
        self.cmd().args(args).output().expect("run gantry")
    }

    /// Runs gantry with `input` on its stdin; returns its output.
    pub fn with_stdin(&self, args: &[&str], input: &[u8]) -> Output {
        use std::io::Write;
        let mut c = self
            .cmd()
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run gantry");
        c.stdin
            .take()
            .expect("stdin")
            .write_all(input)
            .expect("write stdin");
        c.wait_with_output().expect("wait for gantry")
    }

    /// Runs gantry, asserts success, returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let o = self.out(args);
        assert!(
            o.status.success(),
            "gantry {args:?} failed with {:?}\nstdout: {}\nstderr: {}",
            o.status.code(),
            text(&o),
            errtext(&o)
        );
        text(&o)
    }

    /// Runs gantry, asserts it fails with `code`, returns stderr.
    pub fn fails(&self, args: &[&str], code: i32) -> String {
        let o = self.out(args);
        assert_eq!(
            o.status.code(),
            Some(code),
            "gantry {args:?}: wanted exit {code}\nstdout: {}\nstderr: {}",
            text(&o),
            errtext(&o)
        );
        errtext(&o)
    }

    /// A build context with busybox-static and a Dockerfile.
    pub fn context(&self, dockerfile: &str) -> tempfile::TempDir {
        let ctx = tempfile::tempdir().expect("context");
        std::fs::copy(busybox(), ctx.path().join("busybox")).expect("copy busybox");
        std::fs::write(ctx.path().join("Dockerfile"), dockerfile).expect("write Dockerfile");
        ctx
    }

    /// Builds the basic busybox image as `tag`.
    pub fn busybox_image(&self, tag: &str) {
        let ctx = self.context(BUSYBOX_DOCKERFILE);
        self.ok(&["build", "-q", "-t", tag, ctx.path().to_str().unwrap()]);
    }

    pub fn id_of(&self, name: &str) -> String {
        let v: serde_json::Value = serde_json::from_str(&self.ok(&["inspect", name])).unwrap();
        v[0]["Id"].as_str().unwrap().to_owned()
    }

    pub fn inspect(&self, name: &str) -> serde_json::Value {
        let v: serde_json::Value = serde_json::from_str(&self.ok(&["inspect", name])).unwrap();
        v[0].clone()
    }

    pub fn store_tmp_is_empty(&self) -> bool {
        std::fs::read_dir(self.data.path().join("images/tmp"))
            .map(|d| d.count() == 0)
            .unwrap_or(true)
    }
}

pub const BUSYBOX_DOCKERFILE: &str = "FROM scratch\nCOPY busybox /bin/busybox\nRUN [\"/bin/busybox\", \"--install\", \"-s\", \"/bin\"]\nCMD [\"sh\"]\n";

pub fn busybox() -> PathBuf {
    PathBuf::from("/bin/busybox")
}

/// Cgroup directories, mounts and veths that mention a container id.
pub fn leftovers(id: &str) -> Vec<String> {
    let mut out = Vec::new();
    for ctrl in ["memory", "cpu", "pids", "freezer", "cpuacct", "blkio"] {
        let p = Path::new("/sys/fs/cgroup")
            .join(ctrl)
            .join("gantry")
            .join(id);
        if p.exists() {
            out.push(p.display().to_string());
        }
    }
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    for l in mounts.lines().filter(|l| l.contains(id)) {
        out.push(format!("mount: {l}"));
    }
    let links = Command::new("ip")
        .args(["-o", "link"])
        .output()
        .map(|o| text(&o))
        .unwrap_or_default();
    let veth = format!("gv{}", &id[..11.min(id.len())]);
    for l in links.lines().filter(|l| l.contains(&veth)) {
        out.push(format!("link: {l}"));
    }
    out
}

/// Waits (briefly) until nothing of container `id` is left: the kernel
/// removes a veth pair with its namespace asynchronously, within
/// milliseconds of the container's end.
pub fn assert_nothing_left(id: &str) {
    wait_for(
        &format!("container {id} to leave nothing behind"),
        std::time::Duration::from_secs(3),
        || {
            let left = leftovers(id);
            if left.is_empty() {
                Ok(())
            } else {
                Err(format!("{left:?}"))
            }
        },
    );
}

impl Drop for G {
    fn drop(&mut self) {
        let ids = self.out(&["ps", "-aq"]);
        let full: Vec<String> = std::fs::read_dir(self.data.path().join("containers"))
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.len() == 64)
            .collect();
        for id in text(&ids).split_whitespace() {
            let _ = self.out(&["rm", "-f", id]);
        }
        unmount_under(self.data.path());
        if !std::thread::panicking() {
            for id in full {
                assert_nothing_left(&id);
            }
        }
    }
}

/// moto's S3 server (PyPI, `scripts/install-deps.sh`), with a bucket
/// `backups`; stopped when dropped.
pub struct Moto {
    child: std::process::Child,
    /// Its port.
    pub port: u16,
}

impl Moto {
    /// Starts it with `python3` and checks it with `curl` (commands, so
    /// that it may run on a simulated host), listening on `addr`.
    pub fn start(mut python3: Command, curl: impl Fn() -> Command, addr: &str) -> Self {
        let port = free_port();
        let child = python3
            .args(["-m", "moto.server", "-H", addr, "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("python3 -m moto.server (scripts/install-deps.sh installs moto)");
        let m = Moto { child, port };
        let url = format!("http://{addr}:{port}/backups");
        wait_for("moto to answer", std::time::Duration::from_secs(30), || {
            let o = curl().args(["-sf", "-X", "PUT", &url]).output().unwrap();
            if o.status.success() {
                Ok(())
            } else {
                Err(format!("{o:?}"))
            }
        });
        m
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
