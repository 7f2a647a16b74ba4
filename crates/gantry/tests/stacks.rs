//! `gantry stack config`: interpolation, warnings and located errors, as a
//! user sees them. Needs no root.

use std::process::Command;

fn gantry(dir: &std::path::Path, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_gantry"))
        .args(args)
        .current_dir(dir)
        .env_remove("TAG")
        .output()
        .expect("run gantry")
}

#[test]
fn stack_config_normalises_warns_and_locates_errors() {
    let d = tempfile::tempdir().unwrap();
    std::fs::write(d.path().join(".env"), "TAG=3.1\n").unwrap();
    std::fs::write(d.path().join("web.env"), "FROM_FILE=yes\n").unwrap();
    let stack = "services:\n  web:\n    image: localhost:5000/web:${TAG}\n    env_file: web.env\n    restart: always\n    deploy:\n      replicas: ${REPLICAS:-2}\n";
    std::fs::write(d.path().join("stack.yml"), stack).unwrap();
    let o = gantry(
        d.path(),
        &["stack", "config", "-f", "stack.yml", "--format", "json"],
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["services"]["web"]["image"], "localhost:5000/web:3.1");
    assert_eq!(v["services"]["web"]["environment"]["FROM_FILE"], "yes");
    assert_eq!(v["services"]["web"]["deploy"]["replicas"], 2);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("Warning: services.web.restart: \"always\" is deployed as deploy.restart_policy.condition: any"),
        "{err}"
    );
    // An --env-file replaces .env.
    std::fs::write(d.path().join("other.env"), "TAG=9\n").unwrap();
    let o = gantry(
        d.path(),
        &[
            "stack",
            "config",
            "-f",
            "stack.yml",
            "--env-file",
            "other.env",
        ],
    );
    assert!(String::from_utf8_lossy(&o.stdout).contains("localhost:5000/web:9"));
    // An invalid value: one line with file, line and column, exit 1.
    std::fs::write(
        d.path().join("bad.yml"),
        "services:\n  web:\n    image: x\n    deploy:\n      replicas: lots\n",
    )
    .unwrap();
    let o = gantry(d.path(), &["stack", "config", "-f", "bad.yml"]);
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(
        err.trim(),
        "Error: bad.yml:5:17: service web: replicas must be a whole number, got \"lots\""
    );
}

/// `gantry stack config ... | head -1`: the reader goes away early and
/// the CLI ends quietly, killed by SIGPIPE as Unix tools are, without a
/// panic on stderr.
#[test]
fn a_closed_pipe_ends_the_cli_quietly() {
    use std::io::{BufRead, BufReader};
    use std::os::unix::process::ExitStatusExt;
    let d = tempfile::tempdir().unwrap();
    let mut stack = String::from("services:\n");
    let long = "x".repeat(1000);
    for i in 0..300 {
        stack.push_str(&format!(
            "  s{i}:\n    image: busybox\n    environment: {{LONG: {long}}}\n"
        ));
    }
    std::fs::write(d.path().join("stack.yml"), stack).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_gantry"))
        .args(["stack", "config", "-f", "stack.yml"])
        .current_dir(d.path())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut first)
        .unwrap();
    // The reader is gone; 300 KB are left to write.
    let o = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!err.contains("panicked"), "{err}");
    assert_eq!(
        o.status.signal(),
        Some(libc::SIGPIPE),
        "{:?} {err}",
        o.status
    );
}
