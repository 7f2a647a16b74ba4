//! Containers on the native runtime, as root, against the real kernel.

mod common;

use std::time::{Duration, Instant};

use common::*;

#[test]
fn run_captures_output_and_exit_codes() {
    let Some(g) = G::new("run_captures_output_and_exit_codes") else {
        return;
    };
    g.busybox_image("bb");
    let out = g.ok(&[
        "run",
        "--rm",
        "--network",
        "none",
        "bb",
        "sh",
        "-c",
        "echo out; echo err >&2; hostname; cat /proc/1/cmdline | tr '\\0' ' '",
    ]);
    assert!(out.starts_with("out\n"), "{out}");
    assert!(
        out.contains("sh -c"),
        "pid 1 in its own pid namespace: {out}"
    );
    g.fails(&["run", "--rm", "bb", "sh", "-c", "exit 42"], 42);
    // A fresh process's signals: nothing ignored or blocked (Rust ignores
    // SIGPIPE, which must not leak in: `yes | head` has to end).
    let sig = g.ok(&[
        "run",
        "--rm",
        "bb",
        "sh",
        "-c",
        "grep -E '^Sig(Ign|Blk)' /proc/self/status; yes | head -n 1",
    ]);
    assert_eq!(
        sig,
        "SigBlk:\t0000000000000000\nSigIgn:\t0000000000000000\ny\n"
    );
    let e = g.fails(&["run", "--rm", "bb", "no-such-binary"], 127);
    assert!(e.contains("executable file not found"), "{e}");
    let e = g.fails(&["run", "--rm", "bb", "/etc"], 126);
    assert!(e.contains("permission denied"), "{e}");
    // 137 after SIGKILL from outside (pid 1 cannot be killed from inside).
    g.ok(&["run", "-d", "--name", "victim", "bb", "sleep", "100"]);
    g.ok(&["kill", "victim"]);
    assert_eq!(g.ok(&["wait", "victim"]), "137\n");
    g.ok(&["rm", "victim"]);
    assert_eq!(
        g.ok(&["ps", "-aq"]).trim(),
        "",
        "--rm removed every container"
    );
}

#[test]
fn entrypoint_cmd_and_env_follow_docker() {
    let Some(g) = G::new("entrypoint_cmd_and_env_follow_docker") else {
        return;
    };
    let ctx = g.context(
        "FROM scratch\nCOPY busybox /bin/busybox\nRUN [\"/bin/busybox\", \"--install\", \"-s\", \"/bin\"]\nENV A=from-image B=keep\nWORKDIR /srv/app\nENTRYPOINT [\"echo\", \"ep\"]\nCMD [\"default\"]\n",
    );
    g.ok(&["build", "-q", "-t", "ep", ctx.path().to_str().unwrap()]);
    assert_eq!(g.ok(&["run", "--rm", "ep"]), "ep default\n");
    assert_eq!(g.ok(&["run", "--rm", "ep", "mine", "too"]), "ep mine too\n");
    assert_eq!(
        g.ok(&["run", "--rm", "--entrypoint", "pwd", "ep"]),
        "/srv/app\n"
    );
    let env_file = ctx.path().join("env");
    std::fs::write(&env_file, "# comment\nC=from-file\nA=file-loses\n").unwrap();
    let out = g.ok(&[
        "run",
        "--rm",
        "--env-file",
        env_file.to_str().unwrap(),
        "-e",
        "A=from-cli",
        "--entrypoint",
        "sh",
        "ep",
        "-c",
        "echo $A $B $C",
    ]);
    assert_eq!(out, "from-cli keep from-file\n");
    assert_eq!(
        g.ok(&["run", "--rm", "-w", "/tmp", "--entrypoint", "pwd", "ep"]),
        "/tmp\n"
    );
    assert_eq!(
        g.ok(&["run", "--rm", "-u", "1000:1000", "--entrypoint", "id", "ep"])
            .trim(),
        "uid=1000 gid=1000 groups=1000"
    );
}

#[test]
fn memory_limit_kills_with_137() {
    let Some(g) = G::new("memory_limit_kills_with_137") else {
        return;
    };
    g.busybox_image("bb");
    // tail keeps the whole newline-free stream in memory.
    g.fails(
        &[
            "run",
            "--name",
            "oom",
            "-m",
            "16m",
            "bb",
            "sh",
            "-c",
            "head -c 200m /dev/zero | tail",
        ],
        137,
    );
    let st = g.inspect("oom");
    assert_eq!(st["State"]["OOMKilled"], true, "{st}");
    assert_eq!(st["HostConfig"]["Memory"], 16 << 20);
    // Under the limit, fine.
    g.ok(&[
        "run",
        "--rm",
        "-m",
        "64m",
        "bb",
        "sh",
        "-c",
        "head -c 8m /dev/zero | tail > /dev/null",
    ]);
    let e = g.fails(&["run", "--rm", "-m", "lots", "bb", "true"], 125);
    assert!(e.contains("invalid size"), "{e}");
}

#[test]
fn cpu_quota_throttles() {
    let Some(g) = G::new("cpu_quota_throttles") else {
        return;
    };
    g.busybox_image("bb");
    let id = g
        .ok(&[
            "run",
            "-d",
            "--cpus",
            "0.2",
            "bb",
            "sh",
            "-c",
            "while :; do :; done",
        ])
        .trim()
        .to_owned();
    let cg = format!("/sys/fs/cgroup/cpu/gantry/{id}");
    assert_eq!(
        std::fs::read_to_string(format!("{cg}/cpu.cfs_quota_us"))
            .unwrap()
            .trim(),
        "20000"
    );
    let usage = || -> u64 {
        std::fs::read_to_string(format!("/sys/fs/cgroup/cpuacct/gantry/{id}/cpuacct.usage"))
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    };
    let u0 = usage();
    let t0 = Instant::now();
    std::thread::sleep(Duration::from_millis(1500));
    let used = (usage() - u0) as f64 / t0.elapsed().as_nanos() as f64;
    let stat = std::fs::read_to_string(format!("{cg}/cpu.stat")).unwrap();
    let throttled: u64 = stat
        .lines()
        .find_map(|l| l.strip_prefix("nr_throttled "))
        .unwrap()
        .parse()
        .unwrap();
    assert!(throttled > 0, "{stat}");
    assert!(
        used < 0.35,
        "a busy loop under --cpus 0.2 used {used:.2} of a CPU"
    );
    g.ok(&["rm", "-f", &id]);
}

#[test]
fn pids_limit_holds() {
    let Some(g) = G::new("pids_limit_holds") else {
        return;
    };
    g.busybox_image("bb");
    let id = g.ok(&["run", "-d", "--pids-limit", "8", "bb", "sleep", "60"]);
    let id = id.trim();
    let dir = format!("/sys/fs/cgroup/pids/gantry/{id}");
    assert_eq!(
        std::fs::read_to_string(format!("{dir}/pids.max"))
            .unwrap()
            .trim(),
        "8"
    );
    // exec joins the container's cgroup, so its children count too.
    let o = g.out(&[
        "exec",
        id,
        "sh",
        "-c",
        "for i in $(seq 20); do sleep 30 & done; echo started",
    ]);
    let err = errtext(&o);
    assert!(err.contains("fork"), "forks beyond the limit fail: {err}");
    let current: u64 = std::fs::read_to_string(format!("{dir}/pids.current"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(current <= 8, "{current} processes ran under --pids-limit 8");
    let events = std::fs::read_to_string(format!("{dir}/pids.events")).unwrap();
    assert_ne!(events.trim(), "max 0", "{events}");
}

#[test]
fn stop_waits_the_grace_period_then_kills() {
    let Some(g) = G::new("stop_waits_the_grace_period_then_kills") else {
        return;
    };
    g.busybox_image("bb");
    // sleep as pid 1 has no SIGTERM handler, so the kernel ignores SIGTERM.
    g.ok(&["run", "-d", "--name", "stubborn", "bb", "sleep", "100"]);
    let t = Instant::now();
    g.ok(&["stop", "-t", "1", "stubborn"]);
    let took = t.elapsed();
    assert!(
        took >= Duration::from_millis(950),
        "stop returned after {took:?}, before the grace period"
    );
    assert!(took < Duration::from_secs(6), "stop took {took:?}");
    assert_eq!(g.inspect("stubborn")["State"]["ExitCode"], 137);
    // A process that handles SIGTERM ends at once with its own code.
    g.ok(&[
        "run",
        "-d",
        "--name",
        "polite",
        "bb",
        "sh",
        "-c",
        "trap 'exit 3' TERM; while :; do sleep 0.1; done",
    ]);
    std::thread::sleep(Duration::from_millis(300));
    let t = Instant::now();
    g.ok(&["stop", "-t", "10", "polite"]);
    assert!(t.elapsed() < Duration::from_secs(3));
    assert_eq!(g.inspect("polite")["State"]["ExitCode"], 3);
    // --stop-signal is honoured.
    g.ok(&[
        "run",
        "-d",
        "--name",
        "usr1",
        "--stop-signal",
        "USR1",
        "bb",
        "sh",
        "-c",
        "trap 'exit 7' USR1; while :; do sleep 0.1; done",
    ]);
    std::thread::sleep(Duration::from_millis(300));
    g.ok(&["stop", "usr1"]);
    assert_eq!(g.inspect("usr1")["State"]["ExitCode"], 7);
    // Stopped containers start again.
    g.ok(&["start", "polite"]);
    assert_eq!(g.inspect("polite")["State"]["Status"], "running");
}

#[test]
fn exec_runs_inside_the_container() {
    let Some(g) = G::new("exec_runs_inside_the_container") else {
        return;
    };
    g.busybox_image("bb");
    g.ok(&[
        "run",
        "-d",
        "--name",
        "box",
        "-e",
        "X=ctr",
        "bb",
        "sh",
        "-c",
        "echo hi > /marker; sleep 100",
    ]);
    wait_for("marker", Duration::from_secs(5), || {
        let o = g.out(&["exec", "box", "cat", "/marker"]);
        if o.status.success() {
            Ok(())
        } else {
            Err(errtext(&o))
        }
    });
    assert_eq!(g.ok(&["exec", "box", "sh", "-c", "echo $X $Y"]), "ctr\n");
    assert_eq!(
        g.ok(&["exec", "-e", "Y=mine", "box", "sh", "-c", "echo $X $Y"]),
        "ctr mine\n"
    );
    assert_eq!(g.ok(&["exec", "-w", "/bin", "box", "pwd"]), "/bin\n");
    assert_eq!(g.ok(&["exec", "-u", "123", "box", "id", "-u"]), "123\n");
    // Same pid namespace: pid 1 is the container's init.
    let init = g.ok(&["exec", "box", "cat", "/proc/1/cmdline"]);
    assert!(init.contains("sleep"), "{init}");
    // -i passes stdin; without it the process reads /dev/null.
    assert_eq!(
        text(&g.with_stdin(&["exec", "-i", "box", "cat"], b"piped\n")),
        "piped\n"
    );
    assert_eq!(text(&g.with_stdin(&["exec", "box", "cat"], b"piped\n")), "");
    let tty = g.ok(&["exec", "-t", "box", "tty"]);
    assert!(
        tty.trim().starts_with("/dev/pts/"),
        "exec -t gives a pty of the container's own: {tty}"
    );
    g.fails(&["exec", "box", "sh", "-c", "exit 5"], 5);
    g.fails(&["exec", "box", "nope"], 127);
    g.ok(&["kill", "box"]);
    g.ok(&["wait", "box"]);
    let e = g.fails(&["exec", "box", "true"], 1);
    assert!(e.contains("not running"), "{e}");
}

#[test]
fn logs_are_captured_and_followed() {
    let Some(g) = G::new("logs_are_captured_and_followed") else {
        return;
    };
    g.busybox_image("bb");
    g.ok(&[
        "run",
        "-d",
        "--name",
        "talker",
        "bb",
        "sh",
        "-c",
        "echo first; echo oops >&2; sleep 1; echo second; sleep 1; echo third",
    ]);
    let follow = g.cmd().args(["logs", "-f", "talker"]).output().unwrap();
    assert_eq!(
        text(&follow),
        "first\nsecond\nthird\n",
        "logs -f ends when the container does"
    );
    assert_eq!(errtext(&follow), "oops\n");
    assert_eq!(g.ok(&["logs", "--tail", "1", "talker"]), "third\n");
    let ts = g.ok(&["logs", "-t", "talker"]);
    assert!(
        ts.lines().all(|l| l.len() > 30 && l.as_bytes()[4] == b'-'),
        "{ts}"
    );
    let id = g.id_of("talker");
    let raw = std::fs::read_to_string(
        g.data
            .path()
            .join("containers")
            .join(&id)
            .join("container.log"),
    )
    .unwrap();
    let first: serde_json::Value = serde_json::from_str(raw.lines().next().unwrap()).unwrap();
    assert_eq!(first["log"], "first\n");
    // Rotation by size: Docker's --log-opt max-size and max-file.
    g.ok(&[
        "run",
        "--name",
        "chatty",
        "--log-opt",
        "max-size=2k",
        "--log-opt",
        "max-file=3",
        "bb",
        "sh",
        "-c",
        "for i in $(seq 200); do echo line-$i; done",
    ]);
    let dir = g.data.path().join("containers").join(g.id_of("chatty"));
    assert!(dir.join("container.log.1").exists() && dir.join("container.log.2").exists());
    assert!(
        !dir.join("container.log.3").exists(),
        "max-file=3 keeps three files"
    );
    let kept = g.ok(&["logs", "chatty"]);
    assert!(
        kept.ends_with("line-200\n") && !kept.contains("line-1\n"),
        "{kept}"
    );
    let e = g.fails(
        &["run", "--rm", "--log-opt", "colour=red", "bb", "true"],
        125,
    );
    assert!(e.contains("unknown --log-opt"), "{e}");
    assert_eq!(first["stream"], "stdout");
    assert!(first["time"].is_string());
}

#[test]
fn detached_containers_outlive_the_cli_and_restart_by_policy() {
    let Some(g) = G::new("detached_containers_outlive_the_cli_and_restart_by_policy") else {
        return;
    };
    g.busybox_image("bb");
    g.ok(&[
        "run",
        "-d",
        "--name",
        "flaky",
        "--restart",
        "on-failure:2",
        "bb",
        "sh",
        "-c",
        "echo run; exit 1",
    ]);
    wait_for("two restarts", Duration::from_secs(10), || {
        let s = g.inspect("flaky");
        if s["State"]["Status"] == "exited" && s["State"]["RestartCount"] == 2 {
            Ok(())
        } else {
            Err(s["State"].to_string())
        }
    });
    assert_eq!(g.ok(&["logs", "flaky"]), "run\nrun\nrun\n");
    g.ok(&[
        "run",
        "-d",
        "--name",
        "always",
        "--restart",
        "always",
        "bb",
        "sh",
        "-c",
        "exit 0",
    ]);
    wait_for("a restart", Duration::from_secs(5), || {
        let s = g.inspect("always");
        if s["State"]["RestartCount"].as_u64().unwrap_or(0) >= 1 {
            Ok(())
        } else {
            Err(s["State"].to_string())
        }
    });
    g.ok(&["stop", "always"]);
    let count = g.inspect("always")["State"]["RestartCount"]
        .as_u64()
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let s = g.inspect("always");
    assert_eq!(
        s["State"]["Status"], "exited",
        "stop ends an always-restarting container"
    );
    assert_eq!(s["State"]["RestartCount"].as_u64().unwrap(), count);
}

/// Whether a loop device is attached to `file`.
fn loop_backs(file: &std::path::Path) -> bool {
    std::fs::read_dir("/sys/block")
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("loop"))
        .filter_map(|e| std::fs::read_to_string(e.path().join("loop/backing_file")).ok())
        .any(|b| std::path::Path::new(b.trim_end()) == file)
}

#[test]
fn a_sized_volume_fills_up_inside_and_nowhere_else() {
    let Some(g) = G::new("a_sized_volume_fills_up_inside") else {
        return;
    };
    let ctx = g.context("FROM scratch\nCOPY busybox /bin/busybox\nRUN [\"/bin/busybox\", \"--install\", \"-s\", \"/bin\"]\nRUN mkdir -p /seed && echo seeded > /seed/file\n");
    g.ok(&["build", "-q", "-t", "bb", ctx.path().to_str().unwrap()]);
    let e = g.fails(&["volume", "create", "-o", "size=1m", "tiny"], 1);
    assert!(e.contains("under the smallest"), "{e}");
    let e = g.fails(
        &[
            "volume",
            "create",
            "-o",
            "size=1g",
            "-o",
            "device=/srv",
            "both",
        ],
        1,
    );
    assert!(e.contains("does not go with"), "{e}");
    assert_eq!(g.ok(&["volume", "ls", "-q"]), "", "nothing was left");
    g.ok(&["volume", "create", "-o", "size=16m", "capped"]);
    let v: serde_json::Value =
        serde_json::from_str(&g.ok(&["volume", "inspect", "capped"])).unwrap();
    assert_eq!(v[0]["options"]["size"], "16m", "{v}");
    // Writing past the size fails in the container, with ENOSPC.
    let o = g.out(&[
        "run",
        "--rm",
        "-v",
        "capped:/data",
        "bb",
        "sh",
        "-c",
        "echo kept > /data/small && dd if=/dev/zero of=/data/big bs=1M count=40",
    ]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("No space left on device"), "{err}");
    // What fitted is kept; the file on the node's disk holds at most the
    // size (it is sparse).
    assert_eq!(
        g.ok(&[
            "run",
            "--rm",
            "-v",
            "capped:/data",
            "bb",
            "cat",
            "/data/small"
        ]),
        "kept\n"
    );
    let disk = g.data.path().join("volumes/capped/disk.img");
    let used = std::os::unix::fs::MetadataExt::blocks(&std::fs::metadata(&disk).unwrap()) * 512;
    assert!(used <= 16 << 20, "{used} bytes on the node's disk");
    // A new sized volume is empty, then filled from the image, as a
    // folder is.
    g.ok(&["volume", "create", "-o", "size=16m", "seeded"]);
    assert_eq!(
        g.ok(&[
            "run",
            "--rm",
            "-v",
            "seeded:/seed",
            "bb",
            "ls",
            "-A",
            "/seed"
        ]),
        "file\n"
    );
    // Removed: its loop device goes with it.
    assert!(loop_backs(&disk));
    g.ok(&["volume", "rm", "capped", "seeded"]);
    assert!(!disk.exists());
    assert!(!loop_backs(&disk), "the loop device was left attached");
}

#[test]
fn volumes_outlive_containers_and_binds_and_tmpfs_work() {
    let Some(g) = G::new("volumes_outlive_containers_and_binds_and_tmpfs_work") else {
        return;
    };
    let ctx = g.context("FROM scratch\nCOPY busybox /bin/busybox\nRUN [\"/bin/busybox\", \"--install\", \"-s\", \"/bin\"]\nRUN mkdir -p /seed && echo seeded > /seed/file\n");
    g.ok(&["build", "-q", "-t", "bb", ctx.path().to_str().unwrap()]);
    g.ok(&[
        "run",
        "--rm",
        "-v",
        "data:/data",
        "bb",
        "sh",
        "-c",
        "echo kept > /data/f",
    ]);
    assert_eq!(
        g.ok(&["run", "--rm", "-v", "data:/data:ro", "bb", "cat", "/data/f"]),
        "kept\n"
    );
    let e = g.fails(
        &[
            "run",
            "--rm",
            "-v",
            "data:/data:ro",
            "bb",
            "touch",
            "/data/x",
        ],
        1,
    );
    assert!(e.contains("Read-only"), "{e}");
    // A new volume is filled from the image at its mount point.
    assert_eq!(
        g.ok(&[
            "run",
            "--rm",
            "-v",
            "seedvol:/seed",
            "bb",
            "cat",
            "/seed/file"
        ]),
        "seeded\n"
    );
    let ls = g.ok(&["volume", "ls", "-q"]);
    assert_eq!(ls, "data\nseedvol\n");
    let v: serde_json::Value = serde_json::from_str(&g.ok(&["volume", "inspect", "data"])).unwrap();
    assert!(v[0]["mountpoint"]
        .as_str()
        .unwrap()
        .starts_with(g.data.path().to_str().unwrap()));
    // In use by a running container: refused.
    g.ok(&[
        "run",
        "-d",
        "--name",
        "user",
        "-v",
        "data:/data",
        "bb",
        "sleep",
        "100",
    ]);
    let e = g.fails(&["volume", "rm", "data"], 1);
    assert!(e.contains("in use"), "{e}");
    g.ok(&["rm", "-f", "user"]);
    g.ok(&["volume", "rm", "data"]);
    // Bind mount and tmpfs.
    let host = tempfile::tempdir().unwrap();
    std::fs::write(host.path().join("h"), "from host").unwrap();
    let bind = format!("{}:/host", host.path().display());
    assert_eq!(
        g.ok(&["run", "--rm", "-v", &bind, "bb", "cat", "/host/h"]),
        "from host"
    );
    g.ok(&[
        "run",
        "--rm",
        "-v",
        &bind,
        "bb",
        "sh",
        "-c",
        "echo back > /host/back",
    ]);
    assert_eq!(
        std::fs::read_to_string(host.path().join("back")).unwrap(),
        "back\n"
    );
    let mounts = g.ok(&[
        "run",
        "--rm",
        "--tmpfs",
        "/scratch",
        "bb",
        "grep",
        " /scratch ",
        "/proc/mounts",
    ]);
    assert!(mounts.starts_with("tmpfs /scratch tmpfs"), "{mounts}");
    let e = g.fails(&["run", "--rm", "-v", "bad/name:/x", "bb", "true"], 125);
    assert!(e.contains("invalid volume name"), "{e}");
}

#[test]
fn isolation_read_only_and_capabilities() {
    let Some(g) = G::new("isolation_read_only_and_capabilities") else {
        return;
    };
    g.busybox_image("bb");
    let e = g.fails(&["run", "--rm", "--read-only", "bb", "touch", "/x"], 1);
    assert!(e.contains("Read-only file system"), "{e}");
    // /sys is read-only, /proc/kcore hidden, no CAP_SYS_ADMIN: mount is refused.
    g.fails(&["run", "--rm", "bb", "touch", "/sys/x"], 1);
    for masked in [
        "/proc/kcore",
        "/proc/keys",
        "/proc/timer_list",
        "/proc/sched_debug",
    ] {
        if std::path::Path::new(masked).exists() {
            let n = g.ok(&[
                "run",
                "--rm",
                "bb",
                "sh",
                "-c",
                &format!("cat {masked} | wc -c"),
            ]);
            assert_eq!(n.trim(), "0", "{masked} is masked");
        }
    }
    let o = g.out(&["run", "--rm", "bb", "mount", "-t", "tmpfs", "t", "/mnt"]);
    assert!(!o.status.success());
    let e = errtext(&o);
    assert!(
        e.contains("ermission denied") || e.contains("not permitted"),
        "{e}"
    );
    let caps = g.ok(&["run", "--rm", "bb", "grep", "CapEff", "/proc/self/status"]);
    assert_eq!(
        caps.split_whitespace().nth(1),
        Some("00000000a80425fb"),
        "Docker's default set: {caps}"
    );
    let caps = g.ok(&[
        "run",
        "--rm",
        "-u",
        "1000",
        "bb",
        "grep",
        "CapEff",
        "/proc/self/status",
    ]);
    assert_eq!(caps.split_whitespace().nth(1), Some("0000000000000000"));
    let nnp = g.ok(&[
        "run",
        "--rm",
        "bb",
        "grep",
        "NoNewPrivs",
        "/proc/self/status",
    ]);
    assert!(nnp.contains('1'), "{nnp}");
    let sec = g.ok(&["run", "--rm", "bb", "grep", "Seccomp:", "/proc/self/status"]);
    assert!(sec.contains('2'), "seccomp filter mode: {sec}");
    // The host's files are not visible.
    g.fails(&["run", "--rm", "bb", "ls", "/work"], 1);
    // -t gives a real pty.
    let tty = g.ok(&["run", "--rm", "-t", "bb", "tty"]);
    assert!(tty.trim().starts_with("/dev/pts/"), "{tty}");
}

#[test]
fn bridge_network_and_published_ports() {
    let Some(g) = G::new("bridge_network_and_published_ports") else {
        return;
    };
    let ctx = g.context(
        "FROM scratch\nCOPY busybox /bin/busybox\nRUN [\"/bin/busybox\", \"--install\", \"-s\", \"/bin\"]\nRUN mkdir /www && echo served > /www/index.html\nCMD [\"httpd\", \"-f\", \"-p\", \"80\", \"-h\", \"/www\"]\n",
    );
    g.ok(&["build", "-q", "-t", "web", ctx.path().to_str().unwrap()]);
    let port = gantry_testkit::free_port().to_string();
    g.ok(&[
        "run",
        "-d",
        "--name",
        "web",
        "-p",
        &format!("{port}:80"),
        "web",
    ]);
    let ip = g.inspect("web")["NetworkSettings"]["IPAddress"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(ip.starts_with("10.88."), "{ip}");
    let get = |url: String| {
        wait_for(&url.clone(), Duration::from_secs(5), move || {
            let o = std::process::Command::new("curl")
                .args(["-sf", "-m", "2", &url])
                .output()
                .map_err(|e| e.to_string())?;
            if o.status.success() {
                Ok(text(&o))
            } else {
                Err(errtext(&o))
            }
        })
    };
    assert_eq!(
        get(format!("http://{ip}/")),
        "served\n",
        "the host reaches the container by its address"
    );
    assert_eq!(
        get(format!("http://127.0.0.1:{port}/")),
        "served\n",
        "the published port answers"
    );
    // A second container reaches the first over the bridge.
    let out = g.ok(&[
        "run",
        "--rm",
        "web",
        "wget",
        "-q",
        "-O",
        "-",
        &format!("http://{ip}/"),
    ]);
    assert_eq!(out, "served\n");
    // The same port twice: a clear error, and the container is not left running.
    let e = g.fails(
        &[
            "run",
            "-d",
            "--name",
            "web2",
            "-p",
            &format!("{port}:80"),
            "web",
        ],
        125,
    );
    assert!(
        e.contains("already allocated") || e.contains("in use"),
        "{e}"
    );
    assert_eq!(g.inspect("web2")["State"]["Status"], "exited");
    // --network none: loopback only.
    let links = g.ok(&[
        "run",
        "--rm",
        "--network",
        "none",
        "web",
        "ls",
        "/sys/class/net",
    ]);
    assert_eq!(links, "lo\n");
    g.ok(&["rm", "-f", "web"]);
    assert!(std::process::Command::new("curl")
        .args(["-sf", "-m", "1", &format!("http://127.0.0.1:{port}/")])
        .status()
        .map(|s| !s.success())
        .unwrap());
}

#[test]
fn containers_are_found_by_name_and_prefix_and_ps_formats() {
    let Some(g) = G::new("containers_are_found_by_name_and_prefix_and_ps_formats") else {
        return;
    };
    g.busybox_image("bb");
    let id = g
        .ok(&["run", "-d", "--name", "named", "bb", "sleep", "100"])
        .trim()
        .to_owned();
    assert_eq!(id.len(), 64);
    g.ok(&["inspect", &id[..6]]);
    let e = g.fails(&["run", "-d", "--name", "named", "bb", "true"], 125);
    assert!(e.contains("already in use"), "{e}");
    let ps: serde_json::Value = serde_json::from_str(&g.ok(&["ps", "--format", "json"])).unwrap();
    assert_eq!(ps.as_array().unwrap().len(), 1);
    assert_eq!(ps[0]["Name"], "named");
    let table = g.ok(&["ps"]);
    assert!(
        table.contains("CONTAINER ID") && table.contains("named") && table.contains("Up "),
        "{table}"
    );
    let e = g.fails(&["rm", "named"], 1);
    assert!(e.contains("is running"), "{e}");
    let e = g.fails(&["stop", "ghost"], 1);
    assert!(e.contains("no such container: ghost"), "{e}");
    g.ok(&["rm", "-f", "named"]);
    assert_nothing_left(&id);
}

#[test]
fn stdin_hostname_generated_files_and_shares() {
    let Some(g) = G::new("stdin_hostname_generated_files_and_shares") else {
        return;
    };
    let ctx = g.context(&format!("{BUSYBOX_DOCKERFILE}STOPSIGNAL SIGUSR2\n"));
    g.ok(&["build", "-q", "-t", "bb", ctx.path().to_str().unwrap()]);
    // -i passes our stdin through and closes it at its end.
    let out = g.with_stdin(
        &[
            "run",
            "--rm",
            "-i",
            "bb",
            "sh",
            "-c",
            "tr a-z A-Z; echo done",
        ],
        b"hello\n",
    );
    assert_eq!(text(&out), "HELLO\ndone\n");
    // Generated /etc files.
    let out = g.ok(&[
        "run",
        "--rm",
        "--hostname",
        "box1",
        "bb",
        "sh",
        "-c",
        "hostname; cat /etc/hostname; grep -c box1 /etc/hosts; grep -c nameserver /etc/resolv.conf",
    ]);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(&lines[..3], ["box1", "box1", "1"], "{out}");
    assert_ne!(lines[3], "0", "a resolver is configured: {out}");
    // CPU shares reach the cgroup; the image's STOPSIGNAL is the default.
    let id = g.ok(&[
        "run",
        "-d",
        "-c",
        "512",
        "bb",
        "sh",
        "-c",
        "trap 'exit 12' USR2; while :; do sleep 0.1; done",
    ]);
    let id = id.trim();
    assert_eq!(
        std::fs::read_to_string(format!("/sys/fs/cgroup/cpu/gantry/{id}/cpu.shares"))
            .unwrap()
            .trim(),
        "512"
    );
    std::thread::sleep(Duration::from_millis(300));
    g.ok(&["stop", id]);
    assert_eq!(
        g.ok(&["wait", id]),
        "12\n",
        "stopped with the image's STOPSIGNAL"
    );
    // volume prune removes what no container refers to.
    g.ok(&["volume", "create", "unused"]);
    g.ok(&["run", "--name", "keeper", "-v", "used:/u", "bb", "true"]);
    let pruned = g.ok(&["volume", "prune"]);
    assert!(
        pruned.contains("Deleted: unused") && !pruned.contains("Deleted: used"),
        "{pruned}"
    );
    assert_eq!(g.ok(&["volume", "ls", "-q"]), "used\n");
}

/// A task may create device nodes (Docker allows `mknod`) but use only the
/// pseudo-devices: a block device made by its numbers (the host's loop 0)
/// or `/dev/kvm` cannot be opened, for reading or writing.
#[test]
fn devices_are_denied_but_dockers_defaults() {
    let Some(g) = G::new("devices_are_denied_but_dockers_defaults") else {
        return;
    };
    g.busybox_image("bb");
    let out = g.ok(&[
        "run",
        "--rm",
        "--network",
        "none",
        "bb",
        "sh",
        "-c",
        "exec 2>&1; mknod /loop b 7 0 && echo made; \
         dd if=/loop of=/dev/null bs=512 count=1; \
         echo x > /loop; \
         mknod /kvm c 10 232 && head -c 1 /kvm; \
         head -c 3 /dev/zero | wc -c; head -c 3 /dev/urandom | wc -c; \
         echo ok > /dev/null && echo null-ok; true",
    ]);
    assert!(out.contains("made"), "mknod is allowed: {out}");
    assert_eq!(
        out.matches("Operation not permitted").count(),
        3,
        "reading and writing a block device and opening kvm are refused: {out}"
    );
    assert!(out.contains("null-ok"), "{out}");
    assert_eq!(
        out.matches("3\n").count(),
        2,
        "zero and urandom read: {out}"
    );
}

/// On cgroup v2 the same rules are a BPF device program; this machine's
/// limit controllers are v1, but its unified hierarchy runs device programs
/// all the same, so the program is checked there against the real kernel.
#[test]
fn cgroup_v2_device_program_enforces_the_rules() {
    if !require_root("cgroup_v2_device_program_enforces_the_rules") {
        return;
    }
    let root = std::path::Path::new("/sys/fs/cgroup/unified");
    let root = if root.join("cgroup.procs").exists() {
        root
    } else {
        std::path::Path::new("/sys/fs/cgroup")
    };
    let dir = root.join(unique("gantry-devtest"));
    std::fs::create_dir(&dir).expect("make a cgroup");
    struct Rm(std::path::PathBuf);
    impl Drop for Rm {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir(&self.0);
        }
    }
    let _rm = Rm(dir.clone());
    gantry_runtime::devices::attach(&dir, gantry_runtime::devices::DEFAULT_ALLOWED)
        .expect("attach the device program");
    let tmp = tempfile::tempdir().expect("tmp");
    let node = tmp.path().join("loop");
    let sh = |script: &str| {
        std::process::Command::new("sh")
            .arg("-c")
            .arg(format!(
                "echo $$ > {}/cgroup.procs && {script}",
                dir.display()
            ))
            .output()
            .expect("run sh")
    };
    let o = sh(&format!(
        "mknod {n} b 7 0 && dd if={n} of=/dev/null bs=512 count=1",
        n = node.display()
    ));
    assert!(!o.status.success());
    let e = errtext(&o);
    assert!(e.contains("Operation not permitted"), "{e}");
    assert!(node.exists(), "mknod itself is allowed");
    let o = sh("head -c 5 /dev/zero | wc -c");
    assert!(o.status.success(), "{}", errtext(&o));
    assert_eq!(text(&o).trim(), "5");
    // Outside the cgroup the same node opens (so the test can fail).
    let o = std::process::Command::new("dd")
        .arg(format!("if={}", node.display()))
        .args(["of=/dev/null", "bs=512", "count=1"])
        .output()
        .expect("dd");
    assert!(
        !errtext(&o).contains("Operation not permitted"),
        "{}",
        errtext(&o)
    );
}

#[test]
fn a_name_is_held_once_and_freed_with_its_container() {
    let Some(g) = G::new("a_name_is_held_once_and_freed_with_its_container") else {
        return;
    };
    g.busybox_image("bb");
    let run = [
        "run",
        "-d",
        "--network",
        "none",
        "--name",
        "twin",
        "bb",
        "sleep",
        "100",
    ];
    g.ok(&run);
    let e = g.fails(&run, 125);
    assert!(e.contains("already in use"), "{e}");
    g.ok(&["rm", "-f", "twin"]);
    g.ok(&run);
    // A store from before the name index gets it from its containers.
    std::fs::remove_dir_all(g.data.path().join("containers/.names")).unwrap();
    let e = g.fails(&run, 125);
    assert!(e.contains("already in use"), "{e}");
    assert!(g.data.path().join("containers/.names/twin").exists());
    // Names that are not file names never reach the index.
    let e = g.fails(&["run", "--rm", "--name", "../x", "bb", "true"], 125);
    assert!(e.contains("invalid container name"), "{e}");
    g.ok(&["rm", "-f", "twin"]);
    assert!(!g.data.path().join("containers/.names/twin").exists());
}

/// Docker's confinement and resolution flags on `gantry run`.
#[test]
fn run_takes_capabilities_sysctls_ulimits_init_and_resolver_flags() {
    let Some(g) = G::new("run_takes_capabilities_sysctls_ulimits_init_and_resolver_flags") else {
        return;
    };
    g.busybox_image("bb");
    let out = g.ok(&[
        "run",
        "--rm",
        "--cap-drop",
        "ALL",
        "--cap-add",
        "net_bind_service",
        "--sysctl",
        "net.core.somaxconn=1234",
        "--ulimit",
        "nofile=512:1024",
        "--init",
        "--add-host",
        "db.local:10.9.8.7",
        "--dns",
        "10.9.8.53",
        "--dns-search",
        "corp.example",
        "--dns-option",
        "ndots:3",
        "bb",
        "sh",
        "-c",
        "grep CapBnd /proc/self/status; cat /proc/sys/net/core/somaxconn; ulimit -n; cat /proc/1/comm; echo $$; cat /etc/hosts /etc/resolv.conf",
    ]);
    assert!(
        out.contains("0000000000000400"),
        "NET_BIND_SERVICE alone: {out}"
    );
    assert!(out.contains("\n1234\n512\n"), "{out}");
    assert!(!out.contains("\nsh\n1\n"), "the init is PID 1: {out}");
    assert!(out.contains("10.9.8.7\tdb.local"), "{out}");
    assert!(
        out.contains("search corp.example")
            && out.contains("nameserver 10.9.8.53")
            && out.contains("options ndots:3"),
        "{out}"
    );
    // What a container may not set, or a bad name, is refused.
    let o = g
        .cmd()
        .args(["run", "--rm", "--sysctl", "kernel.panic=1", "bb", "true"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(125), "{}", errtext(&o));
    assert!(errtext(&o).contains("not namespaced"), "{}", errtext(&o));
    let o = g
        .cmd()
        .args(["run", "--rm", "--cap-add", "SUPERPOWER", "bb", "true"])
        .output()
        .unwrap();
    assert!(
        errtext(&o).contains("unknown capability"),
        "{}",
        errtext(&o)
    );
}
