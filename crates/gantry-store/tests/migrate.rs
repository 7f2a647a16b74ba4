//! Stores written by earlier releases open, migrate and lose nothing.
//!
//! `fixtures/format-0-demo/state.redb` is the manager's store of
//! `scripts/demo.sh` as the release before format 1 wrote it (3 nodes, the
//! demo's stack, one service updated and scaled, a node label, a DFP
//! route, an internal certificate), kept as it was: never regenerate it.

use std::path::PathBuf;

use gantry_store::{CertSource, Store, TaskState, FORMAT};

fn fixture(name: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let to = dir.path().join("state.redb");
    let from = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name);
    std::fs::copy(from.join("state.redb"), &to).unwrap();
    (dir, to)
}

#[test]
fn a_format_0_store_opens_migrates_and_keeps_everything() {
    let (_dir, path) = fixture("format-0-demo");
    let store = Store::open(&path).unwrap();
    assert_eq!(store.format().unwrap(), FORMAT);
    let s = store.state().clone();
    // In no group of managers yet: the manager bootstraps it at start.
    assert!(!store.is_bootstrapped());
    assert_eq!(store.index(), 0);

    let mut hosts: Vec<&str> = s.nodes.values().map(|n| n.hostname.as_str()).collect();
    hosts.sort();
    assert_eq!(hosts, ["h1", "h2", "h3"]);
    let h1 = s.nodes.values().find(|n| n.hostname == "h1").unwrap();
    assert_eq!(h1.labels.get("zone").map(String::as_str), Some("a"));
    assert!(s
        .nodes
        .values()
        .all(|n| n.block.is_some() && n.vtep_mac.is_some()));

    let names: Vec<&str> = s.services.keys().map(String::as_str).collect();
    assert_eq!(names, ["jfc_api", "jfc_orders", "jfc_web"]);
    let orders = &s.services["jfc_orders"];
    assert_eq!(orders.stack, "jfc");
    // The spec was JSON inside a string: now it is the typed spec.
    assert_eq!(orders.spec.environment["FIXTURE"], "1");
    assert!(orders.spec.image.contains("jfc"), "{}", orders.spec.image);
    // Updated (FIXTURE=1), then scaled to 2: the previous spec is the
    // updated one with one replica.
    let (prev_version, prev) = orders.previous.clone().expect("the update's previous spec");
    assert!(prev_version < orders.version);
    assert_eq!(prev.environment["FIXTURE"], "1");
    assert_eq!(prev.replicas(), Some(1));
    assert_eq!(orders.spec.replicas(), Some(2));
    let web = &s.services["jfc_web"].spec;
    assert_eq!(web.replicas(), Some(3));
    assert_eq!(
        web.service_labels["gantry.http.port"], "80",
        "the web's routing labels"
    );
    assert_eq!(web.healthcheck.as_ref().unwrap().test[0], "HTTP");
    let orders_mount = &orders.spec.volumes[0];
    assert_eq!(
        (orders_mount.source.as_str(), orders_mount.target.as_str()),
        ("orders", "/data")
    );
    let running = |svc: &str| {
        s.tasks
            .values()
            .filter(|t| t.service == svc && t.desired == TaskState::Running)
            .count()
    };
    assert_eq!(
        (
            running("jfc_web"),
            running("jfc_api"),
            running("jfc_orders")
        ),
        (3, 2, 2)
    );
    assert!(s
        .tasks
        .values()
        .any(|t| t.service == "jfc_orders" && t.desired == TaskState::Shutdown));

    let route = &s.routes["jfc_web"];
    assert!(route.node.is_none());
    assert_eq!(route.routes.len(), 1);
    let cert = &s.certs["www.jimmysfriedchicken.test"];
    assert_eq!(cert.source, CertSource::Internal);
    assert!(cert.key_pem.contains("PRIVATE KEY"));
    for key in [
        "ca_cert",
        "ca_key",
        "edge_ca_key",
        "join_token_nonce",
        "join_token_sha256",
    ] {
        assert!(s.meta.contains_key(key), "meta {key}: {:?}", s.meta.keys());
    }
    drop(store);

    // Migrated once: the state is now a snapshot of this format, and
    // opening again reads the same state without the old log.
    assert!(old_log_gone(&path));
    let mut store = Store::open(&path).unwrap();
    assert_eq!(store.state(), &s);
    // And it goes on: bootstrapped as a group of one, it keeps the state.
    store.bootstrap(1, "127.0.0.1:4647").unwrap();
    drop(store);
    let store = Store::open(&path).unwrap();
    assert!(store.is_bootstrapped());
    assert_eq!(store.state(), &s);
}

/// The single-command log of formats 0 to 2 is gone after a migration.
fn old_log_gone(path: &std::path::Path) -> bool {
    use redb::ReadableDatabase;
    let db = redb::Database::create(path).unwrap();
    let r = db.begin_read().unwrap();
    matches!(
        r.open_table(redb::TableDefinition::<u64, &[u8]>::new("log")),
        Err(redb::TableError::TableDoesNotExist(_))
    )
}

#[test]
fn a_store_of_a_newer_format_is_refused_untouched() {
    let (_dir, path) = fixture("format-0-demo");
    {
        let db = redb::Database::create(&path).unwrap();
        let w = db.begin_write().unwrap();
        {
            let mut t = w
                .open_table(redb::TableDefinition::<&str, &[u8]>::new("snapshot"))
                .unwrap();
            t.insert("format", b"99".as_slice()).unwrap();
        }
        w.commit().unwrap();
    }
    let before = contents(&path);
    let err = Store::open(&path).err().expect("refused");
    assert!(err.to_string().contains("newer"), "{err}");
    assert!(contents(&path) == before, "the store was changed");
}

/// Every entry of the store's tables (redb rewrites its header on open,
/// so the bytes of the file are not the measure).
fn contents(path: &std::path::Path) -> Vec<(String, Vec<u8>)> {
    use redb::{ReadableDatabase, ReadableTable};
    let db = redb::Database::create(path).unwrap();
    let r = db.begin_read().unwrap();
    let mut out = Vec::new();
    let log = r
        .open_table(redb::TableDefinition::<u64, &[u8]>::new("log"))
        .unwrap();
    for e in log.iter().unwrap() {
        let (k, v) = e.unwrap();
        out.push((k.value().to_string(), v.value().to_vec()));
    }
    let snap = r
        .open_table(redb::TableDefinition::<&str, &[u8]>::new("snapshot"))
        .unwrap();
    for e in snap.iter().unwrap() {
        let (k, v) = e.unwrap();
        out.push((k.value().to_owned(), v.value().to_vec()));
    }
    out
}

/// A format-1 store, written as that format did: the spec as JSON inside
/// a string, in the snapshot and in a command of the log after it.
fn format_1_store(path: &std::path::Path, logged_spec: &str) {
    let spec = |image: &str| {
        let mut v = serde_json::to_value(gantry_spec::Service::new(image)).unwrap();
        v["environment"] = serde_json::json!({"A": "1"});
        v.to_string()
    };
    let snapshot = serde_json::json!({
        "index": 1,
        "state": {
            "nodes": {}, "tasks": {}, "meta": {},
            "services": {"app_web": {
                "name": "app_web", "stack": "app", "version": 2,
                "spec": spec("web:2"),
                "previous": [1, spec("web:1")],
                "update": {"state": "completed"},
            }},
        },
    });
    let logged = serde_json::json!({
        "op": "put_service", "name": "app_db", "stack": "app", "spec": logged_spec,
    });
    let db = redb::Database::create(path).unwrap();
    let w = db.begin_write().unwrap();
    {
        let mut t = w
            .open_table(redb::TableDefinition::<&str, &[u8]>::new("snapshot"))
            .unwrap();
        t.insert("state", snapshot.to_string().as_bytes()).unwrap();
        t.insert("format", b"1".as_slice()).unwrap();
        let mut log = w
            .open_table(redb::TableDefinition::<u64, &[u8]>::new("log"))
            .unwrap();
        log.insert(2, logged.to_string().as_bytes()).unwrap();
    }
    w.commit().unwrap();
}

#[test]
fn a_format_1_store_gets_typed_specs_from_its_snapshot_and_its_log() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.redb");
    let db_spec = serde_json::to_string(&gantry_spec::Service::new("db:1")).unwrap();
    format_1_store(&path, &db_spec);
    let store = Store::open(&path).unwrap();
    assert_eq!(store.format().unwrap(), FORMAT);
    let web = &store.state().services["app_web"];
    assert_eq!(web.spec.image, "web:2");
    assert_eq!(web.spec.environment["A"], "1");
    let (v, prev) = web.previous.clone().unwrap();
    assert_eq!((v, prev.image.as_str()), (1, "web:1"));
    assert_eq!(store.state().services["app_db"].spec.image, "db:1");
    drop(store);
    assert!(old_log_gone(&path));
}

#[test]
fn a_format_1_store_with_a_spec_that_is_not_json_is_refused_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.redb");
    format_1_store(&path, "{not json");
    let before = contents(&path);
    let err = Store::open(&path).err().expect("refused");
    assert!(err.to_string().contains("log entry 2"), "{err}");
    assert!(err.to_string().contains("not JSON"), "{err}");
    assert!(contents(&path) == before, "the store was changed");
}

#[test]
fn a_new_store_starts_in_this_format() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.redb");
    let store = Store::open(&path).unwrap();
    assert_eq!(store.format().unwrap(), FORMAT);
}
