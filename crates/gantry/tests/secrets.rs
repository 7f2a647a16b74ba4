//! Secrets and configs on the dev server (a manager and an agent in one
//! process on this host): created from a file or standard input, listed
//! and inspected without a secret's value, changed with a new version,
//! refused when in use or malformed, and sealed in the store: a canary
//! value is nowhere in the manager's data dir, its events or its answers.

mod common;

use common::cluster::*;
use common::*;
use serde_json::Value;

const CANARY: &str = "canary-5e1f0c2d9b s3cret #42";

/// Every file under `dir` that holds `needle`.
fn holding(dir: &std::path::Path, needle: &[u8]) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if let Ok(b) = std::fs::read(&p) {
                if b.windows(needle.len()).any(|w| w == needle) {
                    out.push(p.display().to_string());
                }
            }
        }
    }
    out
}

#[test]
fn secrets_are_sealed_and_never_answered_back() {
    let Some(d) = Dev::start("secrets_are_sealed_and_never_answered_back") else {
        return;
    };
    // From standard input.
    let o = d.cli_with_input(
        &["secret", "create", "--label", "team=db", "db_password", "-"],
        CANARY.as_bytes(),
    );
    assert!(o.status.success(), "{}", errtext(&o));
    assert_eq!(text(&o).trim(), "db_password");
    // From a file: a config, whose value inspect shows.
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("app.conf");
    std::fs::write(&conf, "listen 8080\n").unwrap();
    let o = d.cli(&["config", "create", "app_conf", conf.to_str().unwrap()]);
    assert!(o.status.success(), "{}", errtext(&o));

    let ls = d.cli(&["secret", "ls"]);
    assert!(text(&ls).contains("db_password"), "{}", text(&ls));
    let v: Value =
        serde_json::from_slice(&d.cli(&["secret", "inspect", "db_password"]).stdout).unwrap();
    assert_eq!(v[0]["version"], 1);
    assert_eq!(v[0]["labels"]["team"], "db");
    assert!(v[0].get("data").is_none(), "{v}");
    let v: Value =
        serde_json::from_slice(&d.cli(&["config", "inspect", "app_conf"]).stdout).unwrap();
    assert_eq!(v[0]["data"], "bGlzdGVuIDgwODAK");

    // The same value again: nothing changes; a new one: version 2.
    let secret_file = dir.path().join("pw");
    std::fs::write(&secret_file, CANARY).unwrap();
    assert!(d
        .cli(&[
            "secret",
            "create",
            "--label",
            "team=db",
            "db_password",
            secret_file.to_str().unwrap()
        ])
        .status
        .success());
    let v: Value =
        serde_json::from_slice(&d.cli(&["secret", "inspect", "db_password"]).stdout).unwrap();
    assert_eq!(v[0]["version"], 1);
    std::fs::write(&secret_file, format!("{CANARY} two")).unwrap();
    assert!(d
        .cli(&[
            "secret",
            "create",
            "db_password",
            secret_file.to_str().unwrap()
        ])
        .status
        .success());
    let v: Value =
        serde_json::from_slice(&d.cli(&["secret", "inspect", "db_password"]).stdout).unwrap();
    assert_eq!(v[0]["version"], 2);

    // Bad input: a clear error, nothing stored.
    let empty = dir.path().join("empty");
    std::fs::write(&empty, "").unwrap();
    let big = dir.path().join("big");
    std::fs::write(&big, vec![b'x'; 600 * 1024]).unwrap();
    for (args, want) in [
        (
            vec![
                "secret",
                "create",
                "bad/name",
                secret_file.to_str().unwrap(),
            ],
            "invalid secret name",
        ),
        (
            vec!["secret", "create", "e", empty.to_str().unwrap()],
            "value is empty",
        ),
        (
            vec!["secret", "create", "b", big.to_str().unwrap()],
            "larger than",
        ),
        (
            vec!["secret", "create", "n", "/nonexistent/file"],
            "/nonexistent/file",
        ),
        (
            vec!["secret", "inspect", "nothere"],
            "no such secret: nothere",
        ),
        (vec!["config", "rm", "nothere"], "no such config: nothere"),
    ] {
        let o = d.cli(&args);
        assert!(!o.status.success(), "{args:?}");
        assert!(errtext(&o).contains(want), "{args:?}: {}", errtext(&o));
    }
    let names = text(&d.cli(&["secret", "ls", "-q"]));
    assert_eq!(names.trim(), "db_password");

    // The canary is nowhere in clear: not in the manager's data dir (the
    // store, its log), not in events, not in any answer.
    let found = holding(d.g.data.path(), CANARY.as_bytes());
    assert!(found.is_empty(), "in clear in {found:?}");
    // (The search does find what the store holds in clear: the name.)
    let named = holding(d.g.data.path(), b"\"db_password\"");
    assert!(named.iter().any(|p| p.ends_with("state.redb")), "{named:?}");
    let ev = text(&d.cli(&["events", "--since", "10m", "--no-follow"]));
    assert!(ev.contains("secret") && !ev.contains("canary"), "{ev}");
    let all = format!(
        "{}{}",
        text(&d.cli(&["secret", "ls", "--format", "json"])),
        text(&d.cli(&["secret", "inspect", "db_password"]))
    );
    assert!(!all.contains("canary"), "{all}");
    // The data key is its own file, private.
    let key = d.g.data.path().join("manager/data.key");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&key).unwrap().permissions().mode() & 0o777,
        0o600
    );

    // Removed: gone.
    for kind in ["secret", "config"] {
        let name = if kind == "secret" {
            "db_password"
        } else {
            "app_conf"
        };
        let o = d.cli(&[kind, "rm", name]);
        assert!(o.status.success(), "{}", errtext(&o));
    }
    assert_eq!(text(&d.cli(&["secret", "ls", "-q"])).trim(), "");
}

/// `gantry unlock` with `key` on standard input.
fn unlock(d: &Dev, key: &str) -> std::process::Output {
    d.cli_with_input(&["unlock"], format!("{key}\n").as_bytes())
}

#[test]
fn an_autolocked_manager_serves_secrets_only_once_unlocked() {
    let Some(mut d) = Dev::start_with(
        "an_autolocked_manager_serves_secrets_only_once_unlocked",
        &["--autolock"],
    ) else {
        return;
    };
    // The unlock key is shown once, at the start that turned autolock on.
    let out = d.stdout();
    let key = out
        .lines()
        .find(|l| l.starts_with("GKEY-1-"))
        .unwrap_or_else(|| panic!("no unlock key shown: {out}"))
        .to_owned();
    let dir = tempfile::tempdir().unwrap();
    let value = dir.path().join("v");
    std::fs::write(&value, CANARY).unwrap();
    let create = |d: &Dev| d.cli(&["secret", "create", "api_key", value.to_str().unwrap()]);
    assert!(create(&d).status.success());
    // At rest the data key is only sealed; nothing holds the unlock key.
    let manager = d.g.data.path().join("manager");
    assert!(!manager.join("data.key").exists());
    assert!(manager.join("data.key.locked").exists());
    assert!(holding(d.g.data.path(), key.as_bytes()).is_empty());

    // Restarted (autolock stays on without the flag): locked.
    d.restart(&[]);
    assert_eq!(
        d.stdout().matches("GKEY-1-").count(),
        1,
        "a key shown again"
    );
    let o = create(&d);
    assert!(!o.status.success());
    assert!(
        errtext(&o).contains(
            "the manager is locked (autolock): give it its unlock key with gantry unlock"
        ),
        "{}",
        errtext(&o)
    );
    // What needs no key still answers.
    assert!(text(&d.cli(&["secret", "ls", "-q"])).contains("api_key"));
    for (bad, want) in [
        (
            "GKEY-1-AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
            "wrong unlock key",
        ),
        ("not a key", "unlock key (GKEY-1-...)"),
    ] {
        let o = unlock(&d, bad);
        assert!(!o.status.success(), "{bad}");
        assert!(errtext(&o).contains(want), "{bad}: {}", errtext(&o));
    }
    let o = unlock(&d, &key);
    assert!(o.status.success(), "{}", errtext(&o));
    // Unlocked: the same value again opens the old one and changes nothing.
    assert!(create(&d).status.success());
    let v: Value =
        serde_json::from_slice(&d.cli(&["secret", "inspect", "api_key"]).stdout).unwrap();
    assert_eq!(v[0]["version"], 1, "{v}");
    assert!(holding(d.g.data.path(), CANARY.as_bytes()).is_empty());
}
