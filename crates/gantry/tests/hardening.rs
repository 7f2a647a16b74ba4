//! The attacks of the security review, each tried again against the real
//! binary: a hostile image, a local user of a node, a task, a worker node,
//! and requests sent straight to the APIs.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::cluster::*;
use common::*;

/// Every file below `dir` (not following links).
fn files_under(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    for e in rd.flatten() {
        let Ok(t) = e.file_type() else { continue };
        if t.is_dir() {
            files_under(&e.path(), out);
        } else {
            out.push(e.path());
        }
    }
}

/// The paths of `paths` that uid/gid 65534 (`nobody`) can open for reading.
fn readable_by_nobody(paths: &[std::path::PathBuf]) -> Vec<String> {
    use std::io::Write;
    let mut c = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "sh", "-c"])
        .arg("while IFS= read -r f; do cat -- \"$f\" >/dev/null 2>&1 </dev/null && echo \"$f\"; done")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("setpriv");
    let mut list = String::new();
    for p in paths {
        list.push_str(&p.to_string_lossy());
        list.push('\n');
    }
    c.stdin.take().unwrap().write_all(list.as_bytes()).unwrap();
    let o = c.wait_with_output().unwrap();
    text(&o).lines().map(str::to_owned).collect()
}

/// A data dir under a directory every user can enter, as `/var/lib` is:
/// Gantry's own directories must close themselves.
fn open_parent() -> tempfile::TempDir {
    use std::os::unix::fs::PermissionsExt;
    let d = tempfile::Builder::new()
        .prefix("gantry-open")
        .tempdir()
        .unwrap();
    std::fs::set_permissions(d.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    d
}

/// A RUN step that makes a block device node (the host's loop 0, mode
/// 0666) gives an image without it: neither a user of the host (through
/// the layer directory) nor a task (in its root) gets the node.
#[test]
fn device_nodes_from_layers_reach_no_one() {
    let Some(g) = G::new("device_nodes_from_layers_reach_no_one") else {
        return;
    };
    let parent = open_parent();
    let data = parent.path().join("gantry");
    let run = |args: &[&str]| {
        let o = g
            .cmd()
            .env("GANTRY_DATA_DIR", &data)
            .args(args)
            .output()
            .unwrap();
        assert!(o.status.success(), "{args:?}: {}", errtext(&o));
        text(&o)
    };
    let ctx = g.context(&format!(
        "{BUSYBOX_DOCKERFILE}RUN mknod /probe b 7 0 && chmod 666 /probe && mkfifo /pipe\n"
    ));
    run(&["build", "-q", "-t", "probe", ctx.path().to_str().unwrap()]);
    let out = run(&[
        "run",
        "--rm",
        "--network",
        "none",
        "probe",
        "sh",
        "-c",
        "ls -l /probe 2>&1; test -p /pipe && echo fifo",
    ]);
    assert!(out.contains("No such file"), "{out}");
    assert!(out.contains("fifo"), "other special files stay: {out}");
    let mut files = Vec::new();
    files_under(&data, &mut files);
    use std::os::unix::fs::FileTypeExt;
    let devices: Vec<_> = files
        .iter()
        .filter(|f| {
            std::fs::symlink_metadata(f).is_ok_and(|m| {
                use std::os::unix::fs::MetadataExt;
                m.file_type().is_block_device() || (m.file_type().is_char_device() && m.rdev() != 0)
            })
        })
        .collect();
    assert!(
        devices.is_empty(),
        "device nodes in the data dir: {devices:?}"
    );
    assert!(files.len() > 5, "the walk saw the store: {files:?}");
    assert_eq!(readable_by_nobody(&files), Vec::<String>::new());
}

/// A local user of the manager's host and of a node (uid 65534) reads
/// nothing of Gantry's data: not the store with the CA keys, not a node's
/// key, not a task's environment or log; the store keeps only the join
/// token's hash; and `ps` shows no token, even for an agent started with
/// `--token`.
#[test]
fn local_users_read_no_keys_tokens_or_environments() {
    let Some(mut cl) = Cluster::new("local_users_read_no_keys_tokens_or_environments", 1) else {
        return;
    };
    // The data dirs' parents are open to all, as /var/lib is.
    use std::os::unix::fs::PermissionsExt;
    for d in [cl.g.data.path(), cl.agents[0].data.path()] {
        std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    cl.start_agent(0);
    let yaml = web(1, "").replace("IMAGE", &cl.image).replace(
        "    stop_grace_period",
        "    environment:\n      DB_PASSWORD: hunter2-secret\n    stop_grace_period",
    );
    let o = cl.deploy("s", &yaml);
    assert!(o.status.success(), "{}", errtext(&o));
    cl.wait_running("s_web", &[("node-1", 1)], Duration::from_secs(30));
    let token = cl.token();
    let secret = token.rsplit('-').next().unwrap().to_owned();
    // The token is nowhere on disk: the store holds its hash.
    let store = std::fs::read(cl.g.data.path().join("manager/state.redb")).unwrap();
    let find = |hay: &[u8], needle: &str| hay.windows(needle.len()).any(|w| w == needle.as_bytes());
    assert!(
        !find(&store, &secret),
        "the join token's secret is in the store"
    );
    let mut files = Vec::new();
    for d in [cl.g.data.path(), cl.agents[0].data.path()] {
        files_under(d, &mut files);
    }
    let env_files: Vec<_> = files
        .iter()
        .filter(|f| std::fs::read(f).is_ok_and(|b| find(&b, "hunter2-secret")))
        .collect();
    assert!(!env_files.is_empty(), "the walk found the task's config");
    assert!(files.iter().any(|f| f.ends_with("state.redb")));
    assert!(files.iter().any(|f| f.ends_with("identity.json")));
    assert_eq!(readable_by_nobody(&files), Vec::<String>::new());
    // No process shows a token on its command line (the agent was started
    // with `--token`).
    let mut shown = Vec::new();
    for p in std::fs::read_dir("/proc").unwrap().flatten() {
        if let Ok(c) = std::fs::read(p.path().join("cmdline")) {
            if find(&c, "GTKN-") {
                shown.push(String::from_utf8_lossy(&c).replace('\0', " "));
            }
        }
    }
    assert_eq!(shown, Vec::<String>::new());
    // A token in a file joins too.
    let f = cl.logs.path().join("token");
    std::fs::write(&f, format!("{token}\n")).unwrap();
    cl.kill_agent(0);
    std::fs::remove_file(cl.agents[0].data.path().join("agent/identity.json")).unwrap();
    let child = cl
        .agent_command(0, "")
        .args(["--token-file", f.to_str().unwrap()])
        .stdout(Stdio::null())
        .stderr(cl.log("agent0-file.log"))
        .spawn()
        .unwrap();
    cl.agents[0].child = Some(child);
    wait_for(
        "a second node-1 joined with the file",
        Duration::from_secs(15),
        || {
            let n = cl.json(&["node", "ls", "--format", "json"]);
            let count = n
                .as_array()
                .unwrap()
                .iter()
                .filter(|n| n["hostname"] == "node-1")
                .count();
            if count == 2 {
                Ok(())
            } else {
                Err(n.to_string())
            }
        },
    );
}
