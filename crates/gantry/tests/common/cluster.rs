//! The cluster fixture: a manager, agents and a registry on simulated
//! hosts, shared by the cluster and edge tests.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use serde_json::Value;

use super::*;

pub const GRACE: &str = "3s";

/// A manager, agents and a registry on a simulated LAN. Dropping it kills
/// the processes and removes every container the agents made.
pub struct Cluster {
    pub g: G,
    pub lan: Lan,
    pub reg: Registry,
    pub port: u16,
    pub cfg: tempfile::TempDir,
    pub logs: tempfile::TempDir,
    pub manager: Option<Child>,
    pub agents: Vec<Agent>,
    /// `REGISTRY/bb:1`: busybox that serves a page on 8080.
    pub image: String,
    /// More arguments for `gantry server`.
    pub manager_args: Vec<String>,
    /// An ACME CA, when the test has one.
    pub pebble: Option<Pebble>,
    /// `GANTRY_LOG` of the manager and agents started from now on (none:
    /// debug for the server and the agent crates).
    pub log_filter: Option<&'static str>,
}

pub struct Agent {
    pub host: usize,
    pub data: tempfile::TempDir,
    pub child: Option<Child>,
}

impl Cluster {
    /// A manager on host 0 and `agents` hosts for agents (not started).
    pub fn new(test: &str, hosts: usize) -> Option<Self> {
        Self::new_with(test, hosts, |_| (Vec::new(), None))
    }

    /// The same, with more `gantry server` arguments (and an ACME CA)
    /// made from the LAN.
    pub fn new_with(
        test: &str,
        hosts: usize,
        extra: impl FnOnce(&Lan) -> (Vec<String>, Option<Pebble>),
    ) -> Option<Self> {
        let g = G::new(test)?;
        let lan = Lan::new(hosts + 1);
        let (manager_args, pebble) = extra(&lan);
        let reg = Registry::start_on(&lan.hosts[0]);
        let image = format!("{}/test/bb:1", reg.addr);
        g.busybox_image(&image);
        let mut cl = Self {
            g,
            reg,
            port: free_port(),
            cfg: tempfile::tempdir().unwrap(),
            logs: tempfile::tempdir().unwrap(),
            manager: None,
            agents: (1..=hosts)
                .map(|host| Agent {
                    host,
                    data: tempfile::Builder::new()
                        .prefix("gantry-agent")
                        .tempdir()
                        .unwrap(),
                    child: None,
                })
                .collect(),
            image,
            lan,
            manager_args,
            pebble,
            log_filter: None,
        };
        cl.push(&cl.image.clone());
        cl.start_manager();
        Some(cl)
    }

    pub fn push(&self, image: &str) {
        let o = self
            .g
            .cmd_on(&self.lan.hosts[0])
            .args(["--insecure-registry", &self.reg.addr, "push", "-q", image])
            .output()
            .unwrap();
        assert!(o.status.success(), "push {image}: {}", errtext(&o));
    }

    pub fn manager_addr(&self) -> String {
        format!("{}:{}", self.lan.hosts[0].addr, self.port)
    }

    pub fn log(&self, name: &str) -> std::fs::File {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.logs.path().join(name))
            .unwrap()
    }

    pub fn start_manager(&mut self) {
        let child = self.lan.hosts[0]
            .command(env!("CARGO_BIN_EXE_gantry"))
            .args(["--data-dir"])
            .arg(self.g.data.path())
            // Builds on the manager pull their bases from the test's
            // registry.
            .args(["--insecure-registry", &self.reg.addr])
            .args([
                "server",
                "--listen",
                &format!("0.0.0.0:{}", self.port),
                "--advertise",
                &self.lan.hosts[0].addr,
                "--heartbeat-grace",
                GRACE,
                "--cluster-cidr",
                &gantry_testkit::cluster_cidr(),
            ])
            .args(&self.manager_args)
            .env("GANTRY_CONFIG_DIR", self.cfg.path())
            .env(
                "GANTRY_LOG",
                self.log_filter.unwrap_or("info,gantry_server=debug"),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(self.log("manager.log"))
            .spawn()
            .unwrap();
        self.manager = Some(child);
        wait_for("the manager to answer", Duration::from_secs(10), || {
            let o = self.admin(&["node", "ls", "--format", "json"]);
            if o.status.success() {
                Ok(())
            } else {
                Err(errtext(&o))
            }
        });
    }

    pub fn kill_manager(&mut self) {
        if let Some(mut c) = self.manager.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Runs the CLI against the manager (from host 0, with the admin
    /// credential).
    pub fn admin(&self, args: &[&str]) -> Output {
        self.g
            .cmd_on(&self.lan.hosts[0])
            .env("GANTRY_CONFIG_DIR", self.cfg.path())
            .args(args)
            .output()
            .unwrap()
    }

    pub fn admin_ok(&self, args: &[&str]) -> String {
        let o = self.admin(args);
        assert!(
            o.status.success(),
            "gantry {args:?}: {:?}\n{}{}\nmanager log:\n{}",
            o.status.code(),
            text(&o),
            errtext(&o),
            self.tail("manager.log")
        );
        text(&o)
    }

    pub fn json(&self, args: &[&str]) -> Value {
        serde_json::from_str(&self.admin_ok(args)).unwrap()
    }

    /// The last 40 lines of a log (all of it with GANTRY_TEST_FULL_LOGS
    /// set).
    pub fn tail(&self, name: &str) -> String {
        let t = std::fs::read_to_string(self.logs.path().join(name)).unwrap_or_default();
        let lines: Vec<&str> = t.lines().collect();
        let keep = if std::env::var_os("GANTRY_TEST_FULL_LOGS").is_some() {
            lines.len()
        } else {
            40
        };
        lines[lines.len().saturating_sub(keep)..].join("\n")
    }

    pub fn token(&self) -> String {
        self.admin_ok(&["join-token", "-q"]).trim().to_owned()
    }

    pub fn agent_command(&self, i: usize, token: &str) -> Command {
        let a = &self.agents[i];
        let mut c = self.lan.hosts[a.host].command(env!("CARGO_BIN_EXE_gantry"));
        c.arg("--data-dir")
            .arg(a.data.path())
            .args(["--insecure-registry", &self.reg.addr, "agent"])
            .args(["--manager", &self.manager_addr()])
            .args(["--hostname", &format!("node-{}", a.host)])
            .args(["--label", &format!("zone=z{}", a.host)]);
        if !token.is_empty() {
            c.args(["--token", token]);
        }
        c.env(
            "GANTRY_LOG",
            self.log_filter.unwrap_or("info,gantry_agent=debug"),
        )
        .stdin(Stdio::null());
        c
    }

    /// Starts agent `i` (joining with the current token the first time)
    /// and waits until its node is ready.
    pub fn start_agent(&mut self, i: usize) {
        self.start_agent_with(i, &[]);
    }

    /// The same, with more `gantry agent` arguments.
    pub fn start_agent_with(&mut self, i: usize, extra: &[&str]) {
        let token = self.token();
        let log = self.log(&format!("agent{i}.log"));
        let child = self
            .agent_command(i, &token)
            .args(extra)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.agents[i].child = Some(child);
        let name = format!("node-{}", self.agents[i].host);
        wait_for(
            &format!("{name} to be ready"),
            Duration::from_secs(15),
            || {
                let nodes = self.json(&["node", "ls", "--format", "json"]);
                let up = nodes
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|n| n["hostname"] == name.as_str() && n["up"] == true);
                if up {
                    Ok(())
                } else {
                    Err(format!("{nodes}"))
                }
            },
        );
    }

    pub fn kill_agent(&mut self, i: usize) {
        if let Some(mut c) = self.agents[i].child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// The gantry CLI on agent `i`'s host with its data dir.
    pub fn on_agent(&self, i: usize, args: &[&str]) -> Output {
        let a = &self.agents[i];
        self.lan.hosts[a.host]
            .command(env!("CARGO_BIN_EXE_gantry"))
            .arg("--data-dir")
            .arg(a.data.path())
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap()
    }

    /// Running container ids on agent `i`.
    pub fn containers(&self, i: usize) -> Vec<String> {
        let o = self.on_agent(i, &["ps", "-q"]);
        assert!(o.status.success(), "ps: {}", errtext(&o));
        text(&o).split_whitespace().map(str::to_owned).collect()
    }

    /// Kills every container of agent `i` (a host that died with them).
    pub fn kill_containers(&self, i: usize) {
        let ids = text(&self.on_agent(i, &["ps", "-aq"]));
        let ids: Vec<&str> = ids.split_whitespace().collect();
        if !ids.is_empty() {
            let mut args = vec!["rm", "-f"];
            args.extend(ids);
            self.on_agent(i, &args);
        }
    }

    pub fn deploy(&self, stack: &str, yaml: &str) -> Output {
        let f = self.logs.path().join(format!("{stack}.yml"));
        std::fs::write(&f, yaml).unwrap();
        self.admin(&["deploy", "-d", "-f", f.to_str().unwrap(), stack])
    }

    /// A JSON array the CLI prints, as `key` to `value` of each object.
    pub fn json_map(&self, args: &[&str], key: &str, value: &str) -> BTreeMap<String, String> {
        self.json(args)
            .as_array()
            .unwrap()
            .iter()
            .map(|n| {
                (
                    n[key].as_str().unwrap().to_owned(),
                    n[value].as_str().unwrap().to_owned(),
                )
            })
            .collect()
    }

    pub fn hostnames(&self) -> BTreeMap<String, String> {
        self.json_map(&["node", "ls", "--format", "json"], "id", "hostname")
    }

    pub fn tasks(&self, service: &str) -> Vec<Value> {
        self.json(&["service", "ps", service, "--format", "json"])
            .as_array()
            .unwrap()
            .clone()
    }

    /// The overlay address of `service`'s running task on node `host`
    /// (a host name).
    pub fn task_addr(&self, service: &str, host: &str) -> String {
        let names = self.hostnames();
        self.tasks(service)
            .iter()
            .find(|t| t["state"] == "running" && names[t["node"].as_str().unwrap()] == host)
            .and_then(|t| t["addr"].as_str().map(str::to_owned))
            .unwrap_or_else(|| panic!("no running task of {service} on {host}"))
    }

    /// The id of a running container of `service` on agent `i`.
    pub fn container_of(&self, i: usize, service: &str) -> String {
        self.containers(i)
            .into_iter()
            .find(|id| text(&self.on_agent(i, &["inspect", id])).contains(service))
            .unwrap_or_else(|| panic!("no container of {service} on agent {i}"))
    }

    /// `GET /index.html` on port 8080 of `to`, with nc inside container
    /// `id` of agent `i`: what came back.
    pub fn get_from(&self, i: usize, id: &str, to: &str) -> String {
        let script = format!("printf 'GET /index.html HTTP/1.0\\r\\n\\r\\n' | nc -w 2 {to} 8080");
        text(&self.on_agent(i, &["exec", id, "sh", "-c", &script]))
    }

    /// Running tasks of a service per host name.
    pub fn running(&self, service: &str) -> BTreeMap<String, usize> {
        let names = self.hostnames();
        let mut out = BTreeMap::new();
        for t in self.tasks(service) {
            if t["desired"] == "running" && t["state"] == "running" {
                let n = t["node"].as_str().unwrap_or_default();
                *out.entry(names.get(n).cloned().unwrap_or_default())
                    .or_default() += 1;
            }
        }
        out
    }

    /// Waits until `n` tasks of `service` run, wherever they are.
    pub fn wait_total(&self, service: &str, n: usize, within: Duration) {
        wait_for(&format!("{n} of {service} to run"), within, || {
            let r = self.running(service);
            if r.values().sum::<usize>() == n {
                Ok(())
            } else {
                Err(format!("{r:?}"))
            }
        });
    }

    pub fn wait_running(&self, service: &str, want: &[(&str, usize)], within: Duration) {
        let want: BTreeMap<String, usize> =
            want.iter().map(|(h, n)| ((*h).to_owned(), *n)).collect();
        wait_for(&format!("{service} to run as {want:?}"), within, || {
            let r = self.running(service);
            if r == want {
                Ok(())
            } else {
                Err(format!("{r:?}; tasks: {:?}", self.tasks(service)))
            }
        });
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for i in 0..self.agents.len() {
            self.kill_agent(i);
        }
        self.kill_manager();
        for i in 0..self.agents.len() {
            self.kill_containers(i);
            unmount_under(self.agents[i].data.path());
        }
        if std::thread::panicking() {
            for f in std::fs::read_dir(self.logs.path()).unwrap().flatten() {
                let name = f.file_name().to_string_lossy().into_owned();
                if name.ends_with(".log") {
                    eprintln!("--- {name}:\n{}", self.tail(&name));
                }
            }
        }
    }
}

pub fn web(replicas: u32, extra: &str) -> String {
    format!(
        r#"services:
  web:
    image: IMAGE
    command: ["sh", "-c", "echo $$HOSTNAME > /index.html && exec httpd -f -p 8080 -h /"]
    stop_grace_period: 1s
    healthcheck:
      test: ["HTTP", "8080", "/index.html"]
      interval: 1s
      retries: 2
    deploy:
      replicas: {replicas}
{extra}"#
    )
}

/// curl on a simulated host; returns (HTTP status, headers and body).
pub fn curl_on(host: &Host, args: &[&str]) -> (u16, String) {
    let o = host
        .command("curl")
        .args(["-sS", "-i", "--max-time", "10"])
        .args(args)
        .output()
        .unwrap();
    let out = format!("{}{}", text(&o), errtext(&o));
    let status = out
        .lines()
        .rfind(|l| l.starts_with("HTTP/"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, out)
}

/// The body's first line: which task answered.
pub fn who(out: &str) -> String {
    out.split("\r\n\r\n")
        .nth(1)
        .unwrap_or_default()
        .lines()
        .next()
        .unwrap_or_default()
        .to_owned()
}

/// `/metrics` of a simulated host's endpoint: the body.
pub fn metrics_on(host: &Host, addr: &str) -> String {
    let (s, out) = curl_on(host, &[&format!("http://{addr}/metrics")]);
    assert_eq!(s, 200, "{out}");
    out.split("\r\n\r\n").nth(1).unwrap_or_default().to_owned()
}

/// The value of the first sample of `name` whose labels include every
/// `key="value"` of `labels`.
pub fn sample(body: &str, name: &str, labels: &[&str]) -> Option<f64> {
    body.lines()
        .find(|l| l.starts_with(&format!("{name}{{")) && labels.iter().all(|x| l.contains(x)))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// Debian's promtool finds nothing wrong with an exposition.
pub fn promtool_ok(body: &str) {
    let mut promtool = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool (apt install prometheus)");
    std::io::Write::write_all(&mut promtool.stdin.take().unwrap(), body.as_bytes()).unwrap();
    let o = promtool.wait_with_output().unwrap();
    assert!(
        o.status.success() && text(&o).trim().is_empty() && errtext(&o).trim().is_empty(),
        "promtool: {}{}\n{body}",
        text(&o),
        errtext(&o)
    );
}

/// Packets the overlay's fast path carried on a simulated host (its
/// programs' counters, from the agent's `/metrics`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FastPathCounts {
    pub to_task: f64,
    pub local: f64,
    pub remote: f64,
    /// Encapsulated in VXLAN by the fast path itself.
    pub vxlan_out: f64,
    /// Decapsulated from VXLAN by the fast path itself.
    pub vxlan_in: f64,
}

/// The fast path's counters on a simulated host; `None` without it.
pub fn fast_path_on(host: &Host) -> Option<FastPathCounts> {
    let body = metrics_on(host, "127.0.0.1:9323");
    let get = |family: &str, label: &str| {
        sample(
            &body,
            &format!("gantry_overlay_fast_path_{family}_total"),
            &[label],
        )
    };
    Some(FastPathCounts {
        to_task: get("packets", "way=\"to_task\"")?,
        local: get("packets", "way=\"local\"")?,
        remote: get("packets", "way=\"remote\"")?,
        vxlan_out: get("vxlan_packets", "direction=\"out\"")?,
        vxlan_in: get("vxlan_packets", "direction=\"in\"")?,
    })
}

/// The names of the BPF programs attached (TCX) to `iface`'s ingress on a
/// simulated host; empty when there are none or no such interface.
pub fn ingress_programs(host: &Host, iface: &str) -> Vec<String> {
    let ns = std::fs::File::open(host.netns_path()).unwrap();
    let iface = iface.to_owned();
    std::thread::spawn(move || {
        nix::sched::setns(ns, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
        gantry_net::ingress_programs(&iface).unwrap_or_default()
    })
    .join()
    .unwrap()
}

/// The dev node's gateway on the host's `gantry0` (the first block of
/// [`gantry_testkit::DEV_CIDR`]).
const DEV_GATEWAY: &str = "10.48.0.1/24";

/// The dev server: manager and agent in one process on this host.
pub struct Dev {
    pub g: G,
    cfg: tempfile::TempDir,
    child: Child,
    log: PathBuf,
    port: u16,
}

impl Dev {
    /// Starts it for `test` (none when the test cannot run here).
    pub fn start(test: &str) -> Option<Self> {
        Self::start_with(test, &[])
    }

    /// The same, with more `gantry server` arguments.
    pub fn start_with(test: &str, extra: &[&str]) -> Option<Self> {
        let g = G::new(test)?;
        let cfg = tempfile::tempdir().unwrap();
        let log = cfg.path().join("server.log");
        let port = free_port();
        let child = Self::spawn(&g, cfg.path(), port, extra);
        let d = Self {
            g,
            cfg,
            child,
            log,
            port,
        };
        d.wait_ready();
        Some(d)
    }

    fn spawn(g: &G, cfg: &std::path::Path, port: u16, extra: &[&str]) -> Child {
        let open = |name: &str| {
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(cfg.join(name))
                .unwrap()
        };
        g.cmd()
            .env("GANTRY_CONFIG_DIR", cfg)
            .env("GANTRY_LOG", "info")
            .args([
                "server",
                "--dev",
                "--no-proxy",
                "--metrics",
                "127.0.0.1:0",
                "--manager-metrics",
                "127.0.0.1:0",
                "--listen",
                &format!("127.0.0.1:{port}"),
                "--cluster-cidr",
                gantry_testkit::DEV_CIDR,
            ])
            .args(extra)
            .stdout(open("server.out"))
            .stderr(open("server.log"))
            .spawn()
            .unwrap()
    }

    fn wait_ready(&self) {
        wait_for("the dev server", Duration::from_secs(10), || {
            let o = self.cli(&["node", "ls", "--format", "json"]);
            let v: Value = serde_json::from_slice(&o.stdout).map_err(|e| e.to_string())?;
            if v.as_array()
                .is_some_and(|a| a.len() == 1 && a[0]["up"] == true)
            {
                Ok(())
            } else {
                Err(format!("{v}"))
            }
        });
    }

    /// Stops it and starts it again on the same data, with `extra`
    /// arguments.
    #[allow(dead_code)]
    pub fn restart(&mut self, extra: &[&str]) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let _ = self.child.wait();
        self.child = Self::spawn(&self.g, self.cfg.path(), self.port, extra);
        self.wait_ready();
    }

    /// What it printed on standard output.
    #[allow(dead_code)]
    pub fn stdout(&self) -> String {
        std::fs::read_to_string(self.cfg.path().join("server.out")).unwrap_or_default()
    }

    /// The CLI's config dir (its credential for this server).
    #[allow(dead_code)]
    pub fn config_dir(&self) -> &std::path::Path {
        self.cfg.path()
    }

    /// The CLI, talking to it, with `input` on its standard input.
    #[allow(dead_code)]
    pub fn cli_with_input(&self, args: &[&str], input: &[u8]) -> Output {
        use std::io::Write;
        let mut child = self
            .g
            .cmd()
            .env("GANTRY_CONFIG_DIR", self.cfg.path())
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(input).unwrap();
        child.wait_with_output().unwrap()
    }

    /// The CLI, talking to it.
    pub fn cli(&self, args: &[&str]) -> Output {
        self.g
            .cmd()
            .env("GANTRY_CONFIG_DIR", self.cfg.path())
            .args(args)
            .output()
            .unwrap()
    }

    /// Its services and nodes, without the figures that move.
    pub fn state(&self) -> (String, String) {
        let o = self.cli(&["service", "ls", "--format", "json"]);
        let n = self.cli(&["node", "ls", "--format", "json"]);
        // Node heartbeats and their live figures move; compare what
        // matters.
        let mut nodes: Value = serde_json::from_slice(&n.stdout).unwrap();
        for n in nodes.as_array_mut().unwrap() {
            let n = n.as_object_mut().unwrap();
            for live in ["last_seen_ms", "cpu_percent", "mem_used", "disk"] {
                n.remove(live);
            }
        }
        (text(&o), nodes.to_string())
    }
}

impl Drop for Dev {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        // The dev node's overlay lives in this host's own namespace: take
        // it down, but not the bridge, which other tests' containers share.
        let _ = Command::new("ip")
            .args(["link", "del", "gantry.vx"])
            .output();
        let _ = Command::new("ip")
            .args(["addr", "del", DEV_GATEWAY, "dev", "gantry0"])
            .output();
        for family in ["inet", "bridge"] {
            let _ = Command::new("nft")
                .args(["delete", "table", family, "gantry"])
                .output();
        }
        if std::thread::panicking() {
            eprintln!(
                "--- server.log:\n{}",
                std::fs::read_to_string(&self.log).unwrap_or_default()
            );
        }
    }
}
