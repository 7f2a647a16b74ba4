//! Volume backups on one host, to a real S3-compatible server (moto's,
//! started here) and to a folder: what a restore gives back is byte for
//! byte what was backed up; a second backup stores only changes; a wrong
//! key reads nothing; a backup cut short leaves the earlier ones whole.

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;

/// moto's S3 server on loopback, stopped when dropped.
/// The volume's files as `find | md5sum` sees them inside a container.
/// `len` bytes that look random and are the same for the same `seed`
/// (xorshift64*).
fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        out.extend_from_slice(&x.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
    }
    out.truncate(len);
    out
}

fn digest(g: &G, volume: &str) -> String {
    g.ok(&[
        "run",
        "--rm",
        "-v",
        &format!("{volume}:/v"),
        "bb",
        "sh",
        "-c",
        "cd /v && find . -type f | sort | xargs md5sum; find . -mindepth 1 | sort | xargs stat -c '%a %u %g %s %Y %N'",
    ])
}

#[test]
fn volume_backups_restore_byte_identical_from_s3_and_a_folder() {
    let Some(g) = G::new("volume_backups_restore_byte_identical") else {
        return;
    };
    // The table and its change are fixed pseudo-random bytes, not
    // /dev/urandom: content-defined chunks then fall in the same places
    // on every run, and what the second backup stores is the same.
    let ctx = g.context("FROM scratch\nCOPY busybox /bin/busybox\nRUN [\"/bin/busybox\", \"--install\", \"-s\", \"/bin\"]\nCOPY table patch /seed/\n");
    std::fs::write(ctx.path().join("table"), noise(1, 8_000_000)).unwrap();
    std::fs::write(ctx.path().join("patch"), noise(2, 80_000)).unwrap();
    g.ok(&["build", "-q", "-t", "bb", ctx.path().to_str().unwrap()]);
    let moto = Moto::start(
        Command::new("python3"),
        || Command::new("curl"),
        "127.0.0.1",
    );
    let keys = tempfile::tempdir().unwrap();
    let key = keys.path().join("key");
    std::fs::write(&key, "a backup key from the cluster's secrets").unwrap();
    let wrong = keys.path().join("wrong");
    std::fs::write(&wrong, "not the key that made the repository").unwrap();
    let (key, wrong) = (key.to_str().unwrap(), wrong.to_str().unwrap());
    let folder = tempfile::tempdir().unwrap();
    let targets = [
        format!(
            "s3://backups/vols?endpoint=http://127.0.0.1:{}&region=us-east-1",
            moto.port
        ),
        format!("file://{}", folder.path().join("repo").display()),
    ];
    g.ok(&["volume", "create", "-o", "size=64m", "db"]);
    g.ok(&[
        "run",
        "--rm",
        "-v",
        "db:/v",
        "bb",
        "sh",
        "-c",
        "mkdir -p /v/base /v/wal && cp /seed/table /v/base/table && seq 1 200000 > /v/wal/log && echo x > /v/wal/small && chown -R 999:999 /v/base && chmod 700 /v/base && ln -s wal/log /v/current",
    ]);
    let first_state = digest(&g, "db");
    for (i, to) in targets.iter().enumerate() {
        let backup = |g: &G| {
            let o = g
                .cmd()
                .env("AWS_ACCESS_KEY_ID", "test")
                .env("AWS_SECRET_ACCESS_KEY", "test")
                .args(["volume", "backup", "--to", to, "--key-file", key, "db"])
                .output()
                .unwrap();
            assert!(o.status.success(), "{}", errtext(&o));
            text(&o)
        };
        let with_env = |args: &[&str]| {
            g.cmd()
                .env("AWS_ACCESS_KEY_ID", "test")
                .env("AWS_SECRET_ACCESS_KEY", "test")
                .args(args)
                .output()
                .unwrap()
        };
        let one = backup(&g);
        assert!(one.starts_with("snapshot "), "{one}");
        // 1 % of the table changes: the second backup reads the table
        // only, and stores little of it.
        g.ok(&[
            "run",
            "--rm",
            "-v",
            "db:/v",
            "bb",
            "sh",
            "-c",
            "dd if=/seed/patch of=/v/base/table bs=80000 seek=50 conv=notrunc 2>/dev/null",
        ]);
        let two = backup(&g);
        assert!(two.contains("(2 unchanged)"), "{two}");
        let o = with_env(&[
            "volume",
            "backups",
            "--repo",
            to,
            "--key-file",
            key,
            "--format",
            "json",
            "db",
        ]);
        assert!(o.status.success(), "{}", errtext(&o));
        let snaps: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        let snaps = snaps.as_array().unwrap();
        assert_eq!(snaps.len(), 2, "{snaps:?}");
        let first = snaps[0]["stats"]["stored_bytes"].as_u64().unwrap();
        let stored = snaps[1]["stats"]["stored_bytes"].as_u64().unwrap();
        eprintln!("BACKUP to {to}: the first stored {first} bytes, the second {stored}");
        assert!(
            stored < first / 3,
            "the second stored {stored} bytes, the first {first}"
        );
        // Restored into a new volume: byte for byte, owners and modes.
        let copy = format!("copy{i}");
        let o = with_env(&[
            "volume",
            "restore",
            "--from",
            "latest",
            "--repo",
            to,
            "--key-file",
            key,
            "--to",
            &copy,
            "db",
        ]);
        assert!(o.status.success(), "{}", errtext(&o));
        assert_eq!(digest(&g, &copy), digest(&g, "db"));
        // A wrong key reads nothing, and says why.
        let o = with_env(&["volume", "backups", "--repo", to, "--key-file", wrong, "db"]);
        assert!(!o.status.success());
        assert!(
            errtext(&o).contains("the key does not open this repository"),
            "{}",
            errtext(&o)
        );
        // The first snapshot, in place: refused while a container uses
        // the volume; then the volume is as it was at the first backup.
        let first = snaps[0]["id"].as_str().unwrap();
        g.ok(&[
            "run", "-d", "--name", "user", "-v", "db:/v", "bb", "sleep", "100",
        ]);
        let o = with_env(&[
            "volume",
            "restore",
            "--from",
            first,
            "--repo",
            to,
            "--key-file",
            key,
            "db",
        ]);
        assert!(
            errtext(&o).contains("in use by container user"),
            "{}",
            errtext(&o)
        );
        g.ok(&["rm", "-f", "user"]);
        let o = with_env(&[
            "volume",
            "restore",
            "--from",
            first,
            "--repo",
            to,
            "--key-file",
            key,
            "db",
        ]);
        assert!(o.status.success(), "{}", errtext(&o));
        assert_eq!(digest(&g, "db"), first_state);
    }

    // A running user of the volume is frozen while it is read, and runs on
    // after; or its own commands run around the backup instead.
    let to = &targets[1];
    g.ok(&[
        "run",
        "-d",
        "--name",
        "writer",
        "-v",
        "db:/v",
        "bb",
        "sh",
        "-c",
        "i=0; while true; do i=$((i+1)); echo $i > /v/n.tmp; mv /v/n.tmp /v/n; sleep 0.05; done",
    ]);
    let out = g.ok(&["volume", "backup", "--to", to, "--key-file", key, "db"]);
    assert!(out.contains("(1 container(s) frozen meanwhile)"), "{out}");
    let n = || g.ok(&["exec", "writer", "cat", "/v/n"]);
    let before = n();
    std::thread::sleep(Duration::from_millis(500));
    assert_ne!(n(), before, "the writer runs again after the backup");
    let out = g.ok(&[
        "volume",
        "backup",
        "--to",
        to,
        "--key-file",
        key,
        "--pre",
        "echo dumped > /v/dump.sql",
        "--post",
        "rm /v/dump.sql",
        "db",
    ]);
    assert!(!out.contains("frozen"), "{out}");
    assert_eq!(
        g.out(&["exec", "writer", "test", "-e", "/v/dump.sql"])
            .status
            .code(),
        Some(1),
        "--post ran"
    );
    let e = g.fails(
        &[
            "volume",
            "backup",
            "--to",
            to,
            "--key-file",
            key,
            "--pre",
            "exit 4",
            "db",
        ],
        1,
    );
    assert!(
        e.contains("the pre command exited with 4 in container writer"),
        "{e}"
    );
    g.ok(&["rm", "-f", "writer"]);
    g.ok(&[
        "volume",
        "restore",
        "--from",
        "latest",
        "--repo",
        to,
        "--key-file",
        key,
        "--to",
        "hooked",
        "db",
    ]);
    assert_eq!(
        g.ok(&["run", "--rm", "-v", "hooked:/v", "bb", "cat", "/v/dump.sql"]),
        "dumped\n",
        "the snapshot holds what --pre wrote"
    );

    // A backup cut short (killed while it sends packs) leaves the
    // repository's snapshots as they were, and they restore.
    g.ok(&[
        "run",
        "--rm",
        "-v",
        "big:/v",
        "bb",
        "sh",
        "-c",
        "head -c 300000000 /dev/urandom > /v/blob",
    ]);
    let before = g.ok(&["volume", "backups", "--repo", to, "--key-file", key, "db"]);
    let mut child = g
        .cmd()
        .args(["volume", "backup", "--to", to, "--key-file", key, "big"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let packs = folder.path().join("repo/packs");
    let count = || walk_files(&packs);
    let at_start = count();
    wait_for("the backup to send packs", Duration::from_secs(60), || {
        if count() >= at_start + 2 {
            Ok(())
        } else {
            Err(format!("{} packs", count()))
        }
    });
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(
        g.ok(&["volume", "backups", "--repo", to, "--key-file", key, "db"]),
        before
    );
    let o = g.out(&[
        "volume",
        "backups",
        "--repo",
        to,
        "--key-file",
        key,
        "--format",
        "json",
        "big",
    ]);
    assert_eq!(text(&o).trim(), "[]", "{}", errtext(&o));
    g.ok(&[
        "volume",
        "restore",
        "--from",
        "latest",
        "--repo",
        to,
        "--key-file",
        key,
        "--to",
        "after_cut",
        "db",
    ]);
    assert_eq!(digest(&g, "after_cut"), digest(&g, "hooked"));
}

/// Files under `dir`, at any depth.
fn walk_files(dir: &std::path::Path) -> usize {
    let mut n = 0;
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        if e.file_type().is_ok_and(|t| t.is_dir()) {
            n += walk_files(&e.path());
        } else {
            n += 1;
        }
    }
    n
}
