//! Secrets and configs in the state machine.

use std::collections::BTreeMap;

use gantry_pki::seal::DataKey;
use gantry_spec::FileRef;

use super::*;

fn secret(key: &DataKey, name: &str, value: &[u8]) -> SecretRecord {
    SecretRecord {
        meta: FileMeta::after_put(None, name, &BTreeMap::new(), false, 1).unwrap(),
        value: key.seal(value, &SecretRecord::aad(name, 1)),
        older: BTreeMap::new(),
    }
}

fn file(source: &str, target: &str) -> FileRef {
    FileRef {
        source: source.into(),
        target: target.into(),
        uid: 0,
        gid: 0,
        mode: 0o444,
        version: 0,
    }
}

#[test]
fn services_use_only_secrets_that_exist_and_those_in_use_stay() {
    let key = DataKey::generate();
    let mut s = State::default();
    let mut spec = gantry_spec::Service::new("db:1");
    spec.secrets = vec![file("db_password", "db_password")];
    let put = Command::PutService {
        name: "a_db".into(),
        stack: "a".into(),
        spec: Box::new(spec),
        vip: None,
    };
    assert_eq!(
        s.apply(&put),
        Err(Rejected::NoSuchFile(FileKind::Secret, "db_password".into()))
    );
    assert_eq!(
        s.apply(&put).unwrap_err().to_string(),
        "no such secret: db_password"
    );
    assert!(s.services.is_empty());
    let canary = b"canary-7f3a9c s3cret #42";
    s.apply(&Command::PutSecret(secret(&key, "db_password", canary)))
        .unwrap();
    s.apply(&put).unwrap();
    let e = s
        .apply(&Command::RemoveSecret {
            name: "db_password".into(),
        })
        .unwrap_err();
    assert_eq!(e.to_string(), "secret db_password is in use by a_db");
    // The state as the store writes it holds the value sealed only.
    let json = serde_json::to_string(&s).unwrap();
    assert!(!json.contains("canary-7f3a9c"), "{json}");
    let rec = &s.secrets["db_password"];
    assert_eq!(
        &key.open(&rec.value, &SecretRecord::aad("db_password", 1))
            .unwrap()[..],
        canary
    );
    s.apply(&Command::RemoveService {
        name: "a_db".into(),
    })
    .unwrap();
    s.apply(&Command::RemoveSecret {
        name: "db_password".into(),
    })
    .unwrap();
    assert!(s.secrets.is_empty());
    assert_eq!(
        s.apply(&Command::RemoveConfig { name: "x".into() })
            .unwrap_err()
            .to_string(),
        "no such config: x"
    );
}

#[test]
fn a_put_bumps_the_version_only_for_a_new_value() {
    let none = BTreeMap::new();
    let labels = BTreeMap::from([("a".to_owned(), "b".to_owned())]);
    let first = FileMeta::after_put(None, "x", &none, false, 10).unwrap();
    assert_eq!(
        (first.version, first.created_ms, first.updated_ms),
        (1, 10, 10)
    );
    assert_eq!(
        FileMeta::after_put(Some(&first), "x", &none, true, 20),
        None
    );
    let relabelled = FileMeta::after_put(Some(&first), "x", &labels, true, 20).unwrap();
    assert_eq!((relabelled.version, relabelled.updated_ms), (1, 10));
    let changed = FileMeta::after_put(Some(&first), "x", &none, false, 30).unwrap();
    assert_eq!(
        (changed.version, changed.created_ms, changed.updated_ms),
        (2, 10, 30)
    );
}

#[test]
fn a_volume_backup_key_is_a_secret_in_use() {
    let key = DataKey::generate();
    let mut s = State::default();
    let mut spec = gantry_spec::Service::new("db:1");
    let mut m = gantry_spec::Mount::new(gantry_spec::MountType::Volume, "data", "/data");
    m.volume.backup = Some(gantry_spec::BackupPolicy {
        schedule: "0 3 * * *".into(),
        to: "/srv/backups".into(),
        key: "shop_backup_key".into(),
        credentials: Some("shop_s3".into()),
        keep: 7,
        pre: None,
        post: None,
        no_freeze: false,
    });
    spec.volumes = vec![m];
    let put = Command::PutService {
        name: "shop_db".into(),
        stack: "shop".into(),
        spec: Box::new(spec),
        vip: None,
    };
    assert_eq!(
        s.apply(&put).unwrap_err().to_string(),
        "no such secret: shop_backup_key"
    );
    s.apply(&Command::PutSecret(secret(&key, "shop_backup_key", b"k")))
        .unwrap();
    assert_eq!(
        s.apply(&put).unwrap_err().to_string(),
        "no such secret: shop_s3"
    );
    s.apply(&Command::PutSecret(secret(
        &key,
        "shop_s3",
        b"AWS_REGION=x",
    )))
    .unwrap();
    s.apply(&put).unwrap();
    for name in ["shop_backup_key", "shop_s3"] {
        let e = s
            .apply(&Command::RemoveSecret { name: name.into() })
            .unwrap_err();
        assert_eq!(e.to_string(), format!("secret {name} is in use by shop_db"));
    }
}
