//! The README's main command: `gantry demo` (`scripts/demo.sh`, built
//! into the binary) brings the whole platform up on simulated hosts, it
//! serves through the edge proxy, and `gantry demo down` leaves nothing
//! behind.

use std::path::Path;
use std::process::{Command, Output};

const ROOT: &str = "/var/lib/gantry-demo";
const DOMAIN: &str = "www.jimmysfriedchicken.test";

/// `gantry demo ARG` (the script, built into the binary), from a shell
/// whose environment points at another cluster: the demo talks to its own.
fn demo(arg: &str) -> Output {
    Command::new(env!("CARGO_BIN_EXE_gantry"))
        .args(["demo", arg])
        .env("GANTRY_HOST", "127.0.0.1:1")
        .output()
        .unwrap()
}

/// Takes the demo down even when the test fails.
struct Down;

impl Drop for Down {
    fn drop(&mut self) {
        let _ = demo("down");
    }
}

fn curl(host: u8, path: &str) -> String {
    let o = Command::new("curl")
        .args(["-sS", "--max-time", "10", "--cacert"])
        .arg(format!("{ROOT}/edge-ca.pem"))
        .args(["--resolve", &format!("{DOMAIN}:443:10.199.0.1{host}")])
        .arg(format!("https://{DOMAIN}{path}"))
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "curl {path} on h{host}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn left_behind(ids: &[String]) -> Vec<String> {
    let mut left = Vec::new();
    for e in std::fs::read_dir("/run/netns")
        .into_iter()
        .flatten()
        .flatten()
    {
        let n = e.file_name().to_string_lossy().into_owned();
        if n.starts_with("gdemo-") {
            left.push(format!("netns {n}"));
        }
    }
    if Path::new("/sys/class/net/gdemo0").exists() {
        left.push("link gdemo0".into());
    }
    let me = std::process::id().to_string();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let pid = e.file_name().to_string_lossy().into_owned();
        if pid == me || !pid.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        let cmd = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
        let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
        if cmd.contains(ROOT) {
            left.push(format!("process {pid}: {cmd}"));
        }
    }
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap();
    for m in mounts.lines().filter(|l| l.contains(ROOT)) {
        left.push(format!("mount {m}"));
    }
    for ctrl in ["memory", "pids", "cpu", "freezer"] {
        let dir = Path::new("/sys/fs/cgroup").join(ctrl).join("gantry");
        for e in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let n = e.file_name().to_string_lossy().into_owned();
            if ids.iter().any(|id| n.starts_with(id.as_str())) {
                left.push(format!("cgroup {}", e.path().display()));
            }
        }
    }
    if Path::new(ROOT).exists() {
        left.push(format!("directory {ROOT}"));
    }
    left
}

#[test]
fn the_demo_comes_up_serves_https_and_goes_away_without_a_trace() {
    if !gantry_testkit::require_root("the_demo_comes_up_serves_https_and_goes_away_without_a_trace")
    {
        return;
    }
    let _down = Down;
    let o = demo("up");
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(
        o.status.success(),
        "demo up: {out}\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(out.contains("Served by task jfc_web."), "{out}");

    // Every host's proxy serves the site, the API path and the counter on
    // its volume; the three replicas answer in turn (a replica that turned
    // healthy as the deploy ended reaches the proxies' routes a moment
    // later: within 10 s).
    let mut tasks = std::collections::BTreeSet::new();
    let until = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let mut i = 0;
    while tasks.len() < 3 && std::time::Instant::now() < until {
        let page = curl(1 + (i % 3), "/");
        assert!(page.contains("Jimmy's Fried Chicken"), "{page}");
        let who = page.split("Served by task ").nth(1).unwrap_or_default();
        tasks.insert(who.split(' ').next().unwrap_or_default().to_owned());
        i += 1;
    }
    assert_eq!(tasks.len(), 3, "{tasks:?}");
    let api = curl(2, "/api/");
    assert!(
        api.contains("\"menu\"") && api.contains("jfc_api."),
        "{api}"
    );
    let a = curl(3, "/cgi-bin/count");
    let b = curl(1, "/cgi-bin/count");
    assert!(
        a.contains("orders so far: 1") && b.contains("orders so far: 2"),
        "{a} {b}"
    );

    let mut ids = Vec::new();
    for i in 1..=3 {
        let o = Command::new(env!("CARGO_BIN_EXE_gantry"))
            .args(["--data-dir", &format!("{ROOT}/h{i}"), "ps", "-q"])
            .output()
            .unwrap();
        ids.extend(
            String::from_utf8_lossy(&o.stdout)
                .split_whitespace()
                .map(str::to_owned),
        );
    }
    assert_eq!(ids.len(), 6, "{ids:?}");
    let o = demo("down");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let left = left_behind(&ids);
    assert!(left.is_empty(), "left behind: {left:#?}");
}
