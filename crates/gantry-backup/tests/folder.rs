//! Backups into a folder repository: what is restored is what was backed
//! up (bytes, modes, owners, times, links, odd names); a second backup
//! reads and stores only what changed; a wrong key reads nothing; a
//! damaged pack is found, not restored.

use std::collections::BTreeMap;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::sync::Arc;

use gantry_backup::{BackupError, Repo};

/// Everything a restore must give back, by relative path.
fn describe(root: &Path) -> BTreeMap<Vec<u8>, String> {
    let mut out = BTreeMap::new();
    let mut todo = vec![root.to_owned()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            let p = e.path();
            let md = std::fs::symlink_metadata(&p).unwrap();
            let rel = p
                .strip_prefix(root)
                .unwrap()
                .as_os_str()
                .as_bytes()
                .to_vec();
            let what = if md.is_dir() {
                todo.push(p.clone());
                "dir".to_owned()
            } else if md.file_type().is_symlink() {
                format!("link {:?}", std::fs::read_link(&p).unwrap())
            } else {
                let b = std::fs::read(&p).unwrap();
                format!("file {} {}", b.len(), blake3::hash(&b).to_hex())
            };
            let mtime = if md.is_dir() { 0 } else { md.mtime() };
            out.insert(
                rel,
                format!(
                    "{what} mode={:o} owner={}:{} mtime={mtime}",
                    if md.file_type().is_symlink() {
                        0
                    } else {
                        md.mode() & 0o7777
                    },
                    md.uid(),
                    md.gid()
                ),
            );
        }
    }
    out
}

fn noise(n: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(6364136223846793005).wrapping_add(1);
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn make_volume(root: &Path) {
    std::fs::create_dir_all(root.join("db/base")).unwrap();
    std::fs::write(root.join("db/base/big.bin"), noise(6 << 20, 1)).unwrap();
    std::fs::write(root.join("db/log.txt"), "line\n".repeat(50_000)).unwrap();
    std::fs::write(root.join("empty"), b"").unwrap();
    std::fs::write(root.join(std::ffi::OsStr::from_bytes(b"odd\xffname")), b"x").unwrap();
    std::os::unix::fs::symlink("db/log.txt", root.join("link")).unwrap();
    std::fs::write(root.join("private"), b"mine").unwrap();
    std::fs::set_permissions(root.join("private"), std::fs::Permissions::from_mode(0o600)).unwrap();
    std::os::unix::fs::chown(root.join("private"), Some(1000), Some(1001)).unwrap();
    std::fs::set_permissions(root.join("db"), std::fs::Permissions::from_mode(0o700)).unwrap();
    std::os::unix::fs::chown(root.join("db"), Some(999), Some(999)).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backups_restore_exactly_and_store_only_changes() {
    if !nix::unistd::Uid::effective().is_root() {
        eprintln!("skipped: needs root (owners)");
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let vol = t.path().join("vol");
    make_volume(&vol);
    let url = format!("file://{}", t.path().join("repo").display());
    let key = b"a secret of the cluster, 32 bytes";
    let repo = Arc::new(Repo::open_or_init(&url, key).await.unwrap());

    let first = gantry_backup::backup(repo.clone(), vol.clone(), "shop_db", "node-1")
        .await
        .unwrap();
    assert_eq!(first.stats.files, 5, "{:?}", first.stats);
    assert_eq!(first.stats.unchanged_files, 0);
    // Text compresses; noise is stored as it is (plus sealing).
    assert!(
        first.stats.stored_bytes < first.stats.bytes,
        "{:?}",
        first.stats
    );

    let out = t.path().join("restored");
    let done = gantry_backup::restore(repo.clone(), &first, out.clone())
        .await
        .unwrap();
    assert_eq!(done.files, 5);
    assert_eq!(describe(&vol), describe(&out));
    assert_eq!(
        std::fs::metadata(&out).unwrap().mode() & 0o7777,
        std::fs::metadata(&vol).unwrap().mode() & 0o7777
    );

    // 1 % of the big file changes, a file comes, a file goes.
    let mut big = std::fs::read(vol.join("db/base/big.bin")).unwrap();
    big[3_000_000..3_060_000].copy_from_slice(&noise(60_000, 2));
    std::fs::write(vol.join("db/base/big.bin"), &big).unwrap();
    std::fs::write(vol.join("new.txt"), b"new").unwrap();
    std::fs::remove_file(vol.join("empty")).unwrap();
    let second = gantry_backup::backup(repo.clone(), vol.clone(), "shop_db", "node-1")
        .await
        .unwrap();
    assert_eq!(second.parent.as_deref(), Some(first.id.as_str()));
    let s = &second.stats;
    assert_eq!(s.files, 5);
    assert_eq!(s.unchanged_files, 3, "{s:?}");
    assert_eq!(
        s.read_bytes,
        (6 << 20) + 3,
        "only the changed files are read: {s:?}"
    );
    assert!(
        s.stored_bytes < 3 << 20,
        "only the chunks around the change: {s:?}"
    );

    let out2 = t.path().join("restored2");
    gantry_backup::restore(repo.clone(), &second, out2.clone())
        .await
        .unwrap();
    assert_eq!(describe(&vol), describe(&out2));
    // The first snapshot is still whole.
    let out1 = t.path().join("restored1");
    gantry_backup::restore(repo.clone(), &first, out1.clone())
        .await
        .unwrap();
    assert_eq!(describe(&out), describe(&out1));

    let all = gantry_backup::snapshots(&repo).await.unwrap();
    assert_eq!(all.len(), 2);
    let latest = gantry_backup::find(&repo, "latest", Some("shop_db"))
        .await
        .unwrap();
    assert_eq!(latest.id, second.id);
    assert!(gantry_backup::find(&repo, &first.id[..6], None)
        .await
        .is_ok());
    assert!(gantry_backup::find(&repo, "latest", Some("other"))
        .await
        .is_err());
    // Not into a folder that holds something.
    assert!(gantry_backup::restore(repo.clone(), &first, out.clone())
        .await
        .is_err());

    // A wrong key opens nothing.
    let e = Repo::open_or_init(&url, b"another secret, also long enough")
        .await
        .unwrap_err();
    assert!(matches!(e, BackupError::WrongKeyOrCorrupt), "{e}");

    // A damaged pack: the restore says so and stops.
    let packs = t.path().join("repo/packs");
    let sub = std::fs::read_dir(&packs)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    for p in std::fs::read_dir(&sub).unwrap() {
        let p = p.unwrap().path();
        let mut b = std::fs::read(&p).unwrap();
        let mid = b.len() / 2;
        b[mid] ^= 0xff;
        std::fs::write(&p, b).unwrap();
    }
    let mut failed = 0;
    for s in [&first, &second] {
        let dir = t.path().join(format!("damaged-{}", &s.id[..6]));
        if gantry_backup::restore(repo.clone(), s, dir).await.is_err() {
            failed += 1;
        }
    }
    assert!(failed > 0, "a damaged pack went unnoticed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_data_in_another_volume_is_stored_once() {
    let t = tempfile::tempdir().unwrap();
    let a = t.path().join("a");
    let b = t.path().join("b");
    for d in [&a, &b] {
        std::fs::create_dir_all(d).unwrap();
        std::fs::write(d.join("data.bin"), noise(3 << 20, 9)).unwrap();
    }
    let url = t.path().join("repo").display().to_string();
    let repo = Arc::new(Repo::open_or_init(&url, b"0123456789abcdef").await.unwrap());
    let one = gantry_backup::backup(repo.clone(), a, "a", "h")
        .await
        .unwrap();
    let two = gantry_backup::backup(repo.clone(), b, "b", "h")
        .await
        .unwrap();
    assert!(one.stats.stored_bytes > 3 << 20);
    assert!(two.stats.stored_bytes < 4096, "{:?}", two.stats);
    assert!(Repo::open_or_init("relative/dir", b"0123456789abcdef")
        .await
        .is_err());
}

/// Counts the files under `dir` and their bytes.
fn files_under(dir: &Path) -> (usize, u64) {
    let mut out = (0, 0);
    let mut todo = vec![dir.to_owned()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            let md = e.metadata().unwrap();
            if md.is_dir() {
                todo.push(e.path());
            } else {
                out.0 += 1;
                out.1 += md.len();
            }
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forget_keeps_the_newest_and_prune_gives_space_back() {
    let t = tempfile::tempdir().unwrap();
    let vol = t.path().join("vol");
    std::fs::create_dir(&vol).unwrap();
    let repo_dir = t.path().join("repo");
    let url = format!("file://{}", repo_dir.display());
    let key = b"a secret of the cluster, 32 bytes";
    let repo = Arc::new(Repo::open_or_init(&url, key).await.unwrap());
    // Three backups whose content shares nothing, and one of another
    // volume, which the forgetting of this one leaves alone.
    let mut snaps = Vec::new();
    for round in 0..3u64 {
        std::fs::write(vol.join("data"), noise(3_000_000, 10 + round)).unwrap();
        snaps.push(
            gantry_backup::backup(repo.clone(), vol.clone(), "shop_db", "node-1")
                .await
                .unwrap(),
        );
    }
    let other = t.path().join("other");
    std::fs::create_dir(&other).unwrap();
    std::fs::write(other.join("o"), noise(1_000_000, 99)).unwrap();
    gantry_backup::backup(repo.clone(), other.clone(), "shop_other", "node-1")
        .await
        .unwrap();
    let (packs_before, bytes_before) = files_under(&repo_dir.join("packs"));
    assert_eq!(packs_before, 4);

    let gone = gantry_backup::forget(&repo, "shop_db", 1).await.unwrap();
    assert_eq!(
        gone.iter().map(|s| &s.id).collect::<Vec<_>>(),
        vec![&snaps[0].id, &snaps[1].id]
    );
    // keep 0 still keeps one: a schedule never empties its repository.
    assert!(gantry_backup::forget(&repo, "shop_db", 0)
        .await
        .unwrap()
        .is_empty());
    let pruned = gantry_backup::prune(&repo).await.unwrap();
    assert_eq!(pruned.packs, 2, "{pruned:?}");
    let (packs_after, bytes_after) = files_under(&repo_dir.join("packs"));
    assert_eq!(packs_after, 2);
    assert!(
        bytes_after < bytes_before / 2 + 500_000,
        "{bytes_before} -> {bytes_after}"
    );
    assert_eq!(bytes_before - bytes_after, pruned.bytes);
    // What stays restores whole; a second prune finds nothing.
    let out = t.path().join("restored");
    gantry_backup::restore(repo.clone(), &snaps[2], out.clone())
        .await
        .unwrap();
    assert_eq!(describe(&vol), describe(&out));
    let latest = gantry_backup::find(&repo, "latest", Some("shop_other"))
        .await
        .unwrap();
    let out = t.path().join("restored-other");
    gantry_backup::restore(repo.clone(), &latest, out.clone())
        .await
        .unwrap();
    assert_eq!(describe(&other), describe(&out));
    assert_eq!(
        gantry_backup::prune(&repo).await.unwrap(),
        gantry_backup::Pruned::default()
    );
}
