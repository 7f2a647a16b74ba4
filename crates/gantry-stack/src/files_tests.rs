//! Compose's secrets and configs in stack files.

use super::*;

fn parse_in(text: &str, dir: Option<&str>) -> Result<Parsed, StackError> {
    let env: BTreeMap<String, String> = [("DB_PW_VAR".to_owned(), "x".to_owned())].into();
    parse(
        "stack.yml",
        text,
        &env,
        &|n| Err(format!("{n}: no such file")),
        &ParseOptions {
            dir: dir.map(std::path::PathBuf::from),
            ..Default::default()
        },
    )
}

const STACK: &str = r#"
services:
  db:
    image: postgres:16
    secrets:
      - db_password
      - source: api_key
        target: /etc/keys/api
        uid: "999"
        gid: "998"
        mode: 0400
    configs:
      - source: app
        target: /etc/app.conf
        mode: 0440
      - motd
secrets:
  db_password:
    file: ./db_password.txt
  api_key:
    environment: DB_PW_VAR
    labels: {team: data}
  shared:
    external: true
    name: cluster_shared
configs:
  app:
    content: "port={{ env \"PORT\" }} slot={{ .Task.Slot }}"
    template_driver: golang
  motd:
    file: /etc/motd
    name: motd_v1
"#;

#[test]
fn declarations_and_uses_read_in_both_syntaxes() {
    let p = parse_in(STACK, Some("/srv/stack")).unwrap();
    assert!(p.warnings.is_empty(), "{:?}", p.warnings);
    let s = &p.stack;
    assert_eq!(
        s.secrets["db_password"].source,
        FileSource::File("/srv/stack/./db_password.txt".into())
    );
    assert_eq!(
        s.secrets["api_key"].source,
        FileSource::Environment("DB_PW_VAR".into())
    );
    assert_eq!(s.secrets["api_key"].labels["team"], "data");
    assert_eq!(s.secrets["shared"].source, FileSource::External);
    assert!(s.configs["app"].template);
    let db = &s.services["db"];
    let pw = &db.secrets[0];
    assert_eq!(
        (pw.source.as_str(), pw.secret_path(), pw.mode),
        ("db_password", "/run/secrets/db_password".into(), 0o444)
    );
    let key = &db.secrets[1];
    assert_eq!(
        (key.secret_path(), key.uid, key.gid, key.mode),
        ("/etc/keys/api".into(), 999, 998, 0o400)
    );
    assert_eq!(db.configs[0].config_path(), "/etc/app.conf");
    assert_eq!(db.configs[0].mode, 0o440);
    assert_eq!(db.configs[1].config_path(), "/motd");
    // Deployed as stack "shop": the cluster's names, targets unchanged.
    let mut d = s.clone();
    d.resolve_files("shop");
    let db = &d.services["db"];
    assert_eq!(db.secrets[0].source, "shop_db_password");
    assert_eq!(db.secrets[0].secret_path(), "/run/secrets/db_password");
    assert_eq!(db.configs[1].source, "motd_v1");
    assert_eq!(
        s.secrets["shared"].cluster_name("shop", "shared"),
        "cluster_shared"
    );
    // `stack config` gives a file that reads back as the same stack.
    let again = parse_in(&s.to_yaml(), Some("/srv/stack")).unwrap();
    assert_eq!(&again.stack, s);
}

#[test]
fn wrong_declarations_and_uses_are_refused_where_they_are() {
    let cases: &[(&str, &str)] = &[
        (
            "services: {a: {image: x, secrets: [nope]}}\n",
            "service a uses secret \"nope\", which the file does not declare",
        ),
        (
            "services: {a: {image: x}}\nsecrets: {s: {}}\n",
            "secret s: give one of file, environment, external",
        ),
        (
            "services: {a: {image: x}}\nsecrets: {s: {file: a, environment: B}}\n",
            "secret s: give only one of",
        ),
        (
            "services: {a: {image: x}}\nsecrets: {s: {content: hi}}\n",
            "content is for configs",
        ),
        (
            "services: {a: {image: x}}\nsecrets: {s: {file: a, driver: vault}}\n",
            "secrets.s.driver",
        ),
        (
            "services: {a: {image: x}}\nconfigs: {c: {content: hi, template_driver: jinja}}\n",
            "template_driver \"jinja\" is not available",
        ),
        (
            "services: {a: {image: x}}\nconfigs: {c: {content: \"{{ exec \\\"rm\\\" }}\", template_driver: golang}}\n",
            "is not supported in a file template",
        ),
        (
            "services: {a: {image: x, secrets: [{source: s, mode: \"0999\"}]}}\nsecrets: {s: {file: /a}}\n",
            "invalid mode",
        ),
        (
            "services: {a: {image: x, secrets: [{source: s, uid: root}]}}\nsecrets: {s: {file: /a}}\n",
            "uid must be a number",
        ),
        (
            "services: {a: {image: x, secrets: [{source: s, target: /x}], configs: [{source: c, target: /x}]}}\nsecrets: {s: {file: /a}}\nconfigs: {c: {content: y}}\n",
            "two secrets or configs are at /x",
        ),
        (
            "services: {a: {image: x, secrets: [{source: s, target: ../../etc/shadow}]}}\nsecrets: {s: {file: /a}}\n",
            "invalid target",
        ),
        (
            "services: {a: {image: x}}\nsecrets: {\"bad name\": {file: /a}}\n",
            "invalid name",
        ),
        (
            "services: {a: {image: x}}\nsecrets: {s: {file: rel}}\n",
            "the stack file's folder is not known",
        ),
    ];
    for (text, want) in cases {
        let e = parse_in(text, None).unwrap_err();
        assert!(e.to_string().contains(want), "{text}: {e}");
        assert!(e.line > 0, "{text}: {e}");
    }
}

#[test]
fn volume_backups_and_sizes_come_from_x_gantry() {
    let text = r#"
services:
  db:
    image: postgres:16
    volumes: ["data:/var/lib/postgresql/data"]
volumes:
  data:
    x-gantry:
      size: 10G
      replicas: 2
      backup:
        schedule: "0 3 * * *"
        keep: 7
        to: s3://backups/shop?endpoint=http://10.0.0.5:9000
        key: backup_key
        credentials: s3
        pre: pg_dump -U postgres -f /var/lib/postgresql/data/dump.sql
secrets:
  backup_key: {external: true}
  s3: {file: /srv/s3.env}
"#;
    let p = parse_in(text, None).unwrap();
    let s = &p.stack;
    let m = &s.services["db"].volumes[0];
    assert_eq!(m.volume.driver_opts["size"], "10G");
    assert_eq!(m.volume.replicas, 2);
    let b = m.volume.backup.as_ref().unwrap();
    assert_eq!((b.schedule.as_str(), b.keep), ("0 3 * * *", 7));
    assert_eq!(b.key, "backup_key");
    assert!(!b.no_freeze && b.pre.is_some());
    // Deployed: the secrets by their cluster names.
    let mut d = s.clone();
    d.resolve_files("shop");
    let b = d.services["db"].volumes[0].volume.backup.as_ref().unwrap();
    assert_eq!(
        (b.key.as_str(), b.credentials.as_deref()),
        ("backup_key", Some("shop_s3"))
    );
    // `stack config` reads back as the same stack.
    let again = parse_in(&s.to_yaml(), None).unwrap();
    assert_eq!(&again.stack, s);

    let bad = |x: &str, want: &str| {
        let t = format!(
            "services:\n  db:\n    image: x\n    volumes: [\"v:/x\"]\nvolumes:\n  v:\n    x-gantry: {x}\nsecrets:\n  k: {{external: true}}\n"
        );
        let e = parse_in(&t, None).unwrap_err();
        assert!(e.msg.contains(want), "{x}: {e}");
    };
    let ok = "schedule: '0 3 * * *', to: /srv/backups, key: k";
    bad("{size: 1k}", "under the smallest");
    bad(&format!("{{backup: {{{ok}, colour: red}}}}"), "colour");
    bad(
        "{replicas: 3}",
        "2 (a standby on a second node) is the most",
    );
    bad("{colour: red}", "colour");
    bad(
        "{backup: {schedule: nightly, to: /srv/b, key: k}}",
        "five fields",
    );
    bad(
        "{backup: {schedule: '0 3 * * *', to: srv/b, key: k}}",
        "absolute folder",
    );
    bad(
        "{backup: {schedule: '0 3 * * *', to: 's3:///x', key: k}}",
        "no bucket",
    );
    bad(
        "{backup: {schedule: '0 3 * * *', to: /srv/b, key: nope}}",
        "key \"nope\" is not declared under secrets",
    );
    bad(
        &format!("{{backup: {{{ok}, pre: 'sync', no_freeze: true}}}}"),
        "no_freeze goes without it",
    );
    let e = parse_in(
        "services:\n  db:\n    image: x\n    volumes: [\"v:/x\"]\nvolumes:\n  v:\n    driver_opts: {size: 1g}\n    x-gantry: {size: 2g}\n",
        None,
    )
    .unwrap_err();
    assert!(e.msg.contains("give one"), "{e}");
}
