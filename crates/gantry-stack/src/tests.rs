use super::*;

const FULL: &str = r#"
version: "3.8"
x-common: &common
  labels:
    team: core
services:
  web:
    image: localhost:5000/web:${TAG:-latest}
    command: httpd -f -p 80
    environment:
      GREETING: hello
      FROM_ENV:
    env_file: web.env
    <<: *common
    ports:
      - "8080:80"
      - target: 443
        published: 8443
        mode: host
    volumes:
      - data:/data
      - /srv/static:/static:ro
      - type: tmpfs
        target: /cache
    healthcheck:
      test: wget -q -O /dev/null http://localhost/ || exit 1
      interval: 5s
      retries: 2
    depends_on: [api]
    deploy:
      replicas: ${REPLICAS:-3}
      resources:
        limits: {cpus: "0.5", memory: 64M}
        reservations: {cpus: 0.25, memory: 32m}
      placement:
        constraints: ["node.labels.zone == east", "node.role != manager"]
        preferences:
          - spread: node.labels.rack
      restart_policy: {condition: on-failure, delay: 2s, max_attempts: 3}
      update_config: {parallelism: 2, order: start-first, failure_action: rollback, monitor: 10s}
    x-gantry:
      strategy: binpack
  api:
    image: localhost:5000/api:1
    deploy:
      mode: global
volumes:
  data:
"#;

fn env(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn no_files(name: &str) -> Result<String, String> {
    Err(format!("{name}: no such file"))
}

fn parse_ok(text: &str) -> Parsed {
    parse(
        "stack.yml",
        text,
        &env(&[]),
        &no_files,
        &ParseOptions::default(),
    )
    .unwrap()
}

fn parse_err(text: &str) -> StackError {
    parse(
        "stack.yml",
        text,
        &env(&[]),
        &no_files,
        &ParseOptions::default(),
    )
    .unwrap_err()
}

#[test]
fn a_full_compose_file_normalises() {
    let load = |n: &str| {
        if n == "web.env" {
            Ok("FROM_FILE=1\nGREETING=overridden-by-environment\n".to_owned())
        } else {
            Err("missing".into())
        }
    };
    let p = parse(
        "stack.yml",
        FULL,
        &env(&[("TAG", "2.0"), ("FROM_ENV", "host-value")]),
        &load,
        &ParseOptions::default(),
    )
    .unwrap();
    let web = &p.stack.services["web"];
    assert_eq!(web.image, "localhost:5000/web:2.0");
    assert_eq!(
        web.command.as_deref(),
        Some(&["httpd".to_owned(), "-f".into(), "-p".into(), "80".into()][..])
    );
    assert_eq!(web.environment["GREETING"], "hello");
    assert_eq!(web.environment["FROM_ENV"], "host-value");
    assert_eq!(web.environment["FROM_FILE"], "1");
    assert_eq!(web.labels["team"], "core", "YAML merge keys work");
    assert_eq!(
        web.ports[0],
        Port {
            target: 80,
            published: Some(8080),
            protocol: "tcp".into(),
            mode: PortMode::Ingress,
            host_ip: None,
        }
    );
    assert_eq!(web.ports[1].mode, PortMode::Host);
    assert_eq!(
        web.volumes.iter().map(|m| m.kind).collect::<Vec<_>>(),
        vec![MountType::Volume, MountType::Bind, MountType::Tmpfs]
    );
    assert!(web.volumes[1].read_only);
    let hc = web.healthcheck.as_ref().unwrap();
    assert_eq!(hc.test[0], "CMD-SHELL");
    assert_eq!((hc.interval_ns, hc.retries), (5_000_000_000, 2));
    assert_eq!(web.mode, Mode::Replicated { replicas: 3 });
    assert_eq!(
        web.limits,
        Amounts {
            nano_cpus: Some(500_000_000),
            memory: Some(64 << 20),
            pids: None
        }
    );
    assert_eq!(web.reservations.nano_cpus, Some(250_000_000));
    assert_eq!(
        web.constraints,
        vec!["node.labels.zone==east", "node.role!=manager"]
    );
    assert_eq!(web.spread_over, vec!["rack"]);
    assert_eq!(web.strategy, Some(Strategy::Binpack));
    assert_eq!(web.restart_policy.condition, "on-failure");
    assert_eq!(web.update_config.order, "start-first");
    assert_eq!(web.update_config.failure_action, "rollback");
    assert_eq!(p.stack.services["api"].mode, Mode::Global);
    assert_eq!(p.stack.start_order, vec!["api", "web"], "depends_on first");
    assert_eq!(
        p.warnings,
        ["version is ignored: obsolete in the Compose specification"]
    );
    // What `stack config` prints parses back to the same stack.
    let yaml = p.stack.to_yaml();
    let back = parse(
        "again.yml",
        &yaml,
        &env(&[]),
        &no_files,
        &ParseOptions::default(),
    )
    .unwrap();
    assert_eq!(back.stack, p.stack, "{yaml}");
}

#[test]
fn deploying_the_same_text_gives_the_same_stack() {
    assert_eq!(
        parse_ok(FULL.replace("env_file: web.env", "").as_str()).stack,
        parse_ok(FULL.replace("env_file: web.env", "").as_str()).stack
    );
}

#[test]
fn unknown_keys_warn_by_name() {
    let p = parse_ok("services:\n  web:\n    image: x\n    replica: 3\n    deploy:\n      replicas: 2\n      placment: {}\n");
    assert_eq!(
        p.warnings,
        vec![
            "unknown key services.web.replica is ignored",
            "unknown key services.web.deploy.placment is ignored",
        ]
    );
}

#[test]
fn invalid_values_point_at_file_line_and_column() {
    let cases: &[(&str, u64, u64, &str)] = &[
        ("services:\n  web:\n    image: x\n    deploy:\n      resources:\n        limits:\n          memory: 64q\n", 7, 19, "invalid size"),
        ("services:\n  web:\n    image: x\n    deploy:\n      resources:\n        limits: {cpus: lots}\n", 6, 24, "invalid CPU count"),
        ("services:\n  web:\n    image: x\n    deploy:\n      replicas: many\n", 5, 17, "replicas must be a whole number"),
        ("services:\n  web:\n    image: x\n    deploy:\n      placement:\n        constraints: [\"node.cpu == 2\"]\n", 6, 23, "invalid placement constraint"),
        ("services:\n  web:\n    image: x\n    ports: [\"80:http\"]\n", 4, 13, "invalid port"),
        ("services:\n  web:\n    image: x\n    volumes: [\"undeclared:/data\"]\n", 4, 15, "not declared"),
        ("services:\n  web:\n    image: x\n    depends_on: [db]\n", 4, 17, "depends on \"db\""),
        ("services:\n  web:\n    image: x\n    healthcheck:\n      test: [\"CMD\", \"true\"]\n      interval: soon\n", 6, 17, "invalid duration"),
        ("services:\n  web:\n    image: x\n    deploy:\n      mode: daemon\n", 5, 13, "invalid mode"),
        ("services:\n  web:\n    image: x\n    deploy:\n      update_config: {order: sideways}\n", 5, 30, "invalid order"),
        ("services:\n  web:\n    image: [1, 2\n", 3, 12, ""),
        ("services:\n  web:\n    image: x\n    password: ${SECRET:?set SECRET}\n", 4, 15, "required variable SECRET"),
    ];
    for (text, line, column, msg) in cases {
        let e = parse_err(text);
        assert_eq!((e.line, e.column), (*line, *column), "{text}\n=> {e}");
        assert!(e.msg.contains(msg), "{e}");
        assert!(
            e.to_string()
                .starts_with(&format!("stack.yml:{line}:{column}: ")),
            "{e}"
        );
    }
}

#[test]
fn whole_file_problems() {
    assert!(parse_err("services: {}\n").msg.contains("no services"));
    assert!(parse_err("just a string\n").msg.contains("mapping"));
    assert!(parse_err("services:\n  web:\n    command: echo\n")
        .msg
        .contains("no image"));
    assert!(parse_err("services:\n  we.b:\n    image: x\n")
        .msg
        .contains("invalid service name"));
    assert!(parse_ok("services:\n  Web:\n    image: x\n")
        .stack
        .services
        .contains_key("Web"));
    assert!(
        parse_err("services:\n  Web:\n    image: x\n  web:\n    image: x\n")
            .msg
            .contains("differ only in case")
    );
    let e = parse_err("services:\n  a:\n    image: x\n    depends_on: [b]\n  b:\n    image: x\n    depends_on: [a]\n");
    assert!(e.msg.contains("cycle among a, b"), "{e}");
    let e = parse_err("services:\n  web:\n    image: x\n    deploy: {mode: global, replicas: 2}\n");
    assert!(e.msg.contains("cannot be set with mode: global"), "{e}");
    let e = parse(
        "s.yml",
        "services:\n  web:\n    image: x\n    env_file: missing.env\n",
        &env(&[]),
        &no_files,
        &ParseOptions::default(),
    )
    .unwrap_err();
    assert!(e.msg.contains("env_file missing.env"), "{e}");
}

/// Well-formed YAML in compose's shape, with the specification's keys and
/// random values of every type at every depth.
fn compose_shaped() -> impl proptest::strategy::Strategy<Value = serde_json::Value> {
    use proptest::prelude::*;
    let keys = prop::sample::select(vec![
        "image",
        "command",
        "entrypoint",
        "environment",
        "ports",
        "volumes",
        "deploy",
        "replicas",
        "mode",
        "resources",
        "limits",
        "memory",
        "cpus",
        "placement",
        "constraints",
        "healthcheck",
        "test",
        "interval",
        "networks",
        "external",
        "name",
        "driver_opts",
        "labels",
        "depends_on",
        "condition",
        "target",
        "published",
        "source",
        "type",
        "ulimits",
        "sysctls",
        "cap_add",
        "extra_hosts",
        "dns",
        "tmpfs",
        "profiles",
        "logging",
        "options",
        "x-gantry",
        "restart",
        "scale",
        "init",
        "web",
        "db",
        "data",
        "services",
        "hostname",
        "platform",
        "max_replicas_per_node",
    ]);
    let leaf = prop_oneof![
        Just(serde_json::Value::Null),
        any::<bool>().prop_map(serde_json::Value::from),
        any::<i64>().prop_map(serde_json::Value::from),
        "[a-z0-9:/.=${}\\ *#-]{0,12}".prop_map(serde_json::Value::from),
    ];
    let node = leaf.prop_recursive(5, 64, 6, move |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(serde_json::Value::from),
            prop::collection::btree_map(keys.clone().prop_map(str::to_owned), inner, 0..5)
                .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
        ]
    });
    node.prop_map(
        |services| serde_json::json!({"services": {"web": services}, "volumes": {"data": {}}}),
    )
}

proptest::proptest! {
    #[test]
    fn arbitrary_compose_shaped_yaml_never_panics(doc in compose_shaped()) {
        let text = serde_saphyr::to_string(&doc).unwrap();
        let vars = env(&[("A", "1")]);
        if let Ok(p) = parse("fuzz.yml", &text, &vars, &no_files, &ParseOptions::default()) {
            // What it accepts, it prints and reads back the same.
            let again = parse("again.yml", &p.stack.to_yaml(), &vars, &no_files, &ParseOptions::default()).unwrap();
            proptest::prop_assert_eq!(again.stack, p.stack);
        }
    }

    #[test]
    fn arbitrary_text_never_panics(text in "(services:|  web:|    image: x|    deploy:|      replicas: [0-9a-z]{0,3}|[ :\\-\\[\\]{}\"$]|[a-z]{1,6}|\n){0,40}") {
        let _ = parse("fuzz.yml", &text, &BTreeMap::new(), &no_files, &ParseOptions::default());
    }
}

#[test]
fn http_and_tcp_health_checks_are_checked() {
    let ok = "services:\n  a:\n    image: x\n    healthcheck:\n      test: [\"HTTP\", \"80\", \"/healthz\"]\n  b:\n    image: x\n    healthcheck:\n      test: [\"TCP\", \"5432\"]\n";
    let p = gantry_stack_parse(ok).unwrap();
    assert_eq!(
        p.stack.services["a"].healthcheck.as_ref().unwrap().test,
        ["HTTP", "80", "/healthz"]
    );
    for bad in [
        "[\"HTTP\", \"http\"]",
        "[\"TCP\"]",
        "[\"HTTP\", \"80\", \"nopath\"]",
        "[\"TCP\", \"0\"]",
        "[\"PING\", \"1\"]",
    ] {
        let y = format!("services:\n  a:\n    image: x\n    healthcheck:\n      test: {bad}\n");
        let e = gantry_stack_parse(&y).unwrap_err();
        assert!(e.msg.contains("healthcheck.test"), "{bad}: {e}");
    }
}

fn gantry_stack_parse(y: &str) -> Result<Parsed, StackError> {
    parse(
        "s.yml",
        y,
        &BTreeMap::new(),
        &|_| Err("no".into()),
        &ParseOptions::default(),
    )
}

#[test]
fn the_strategy_comes_from_x_gantry_a_label_or_the_cluster() {
    let y = "services:\n  a:\n    image: x\n    deploy:\n      labels:\n        gantry.strategy: binpack\n  b:\n    image: x\n";
    let p = gantry_stack_parse(y).unwrap();
    assert_eq!(p.stack.services["a"].strategy, Some(Strategy::Binpack));
    assert_eq!(p.stack.services["b"].strategy, None, "the cluster decides");
    let bad =
        "services:\n  a:\n    image: x\n    deploy:\n      labels: [\"gantry.strategy=tightly\"]\n";
    let e = gantry_stack_parse(bad).unwrap_err();
    assert!(e.msg.contains("gantry.strategy"), "{e}");
}

/// A JSON value of any shape, with strings that carry what attackers send
/// (control characters, `..`, NULs, long runs).
fn any_json() -> impl proptest::strategy::Strategy<Value = serde_json::Value> {
    use proptest::prelude::*;
    let leaf = prop_oneof![
        Just(serde_json::Value::Null),
        any::<bool>().prop_map(serde_json::Value::Bool),
        any::<i64>().prop_map(|n| n.into()),
        any::<f64>().prop_map(|f| serde_json::json!(f)),
        "(\\PC|[\\x00-\\x1f]|\\.\\./|/|=|[a-z]){0,24}".prop_map(serde_json::Value::String),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..4).prop_map(serde_json::Value::Array),
            proptest::collection::btree_map("[a-z_=]{0,8}", inner, 0..4)
                .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
        ]
    })
}

proptest::proptest! {
    /// What a client may send as a service (a valid spec with any field
    /// replaced by any value): decoding and checking never panic, and what
    /// the checks accept is a spec that encodes back to itself.
    #[test]
    fn any_service_json_is_decoded_and_checked_without_panics(
        field in proptest::sample::select(vec![
            "image", "command", "environment", "labels", "ports", "volumes", "healthcheck",
            "networks", "mode", "constraints", "hostname", "user", "working_dir",
            "update_config", "restart_policy", "stop_signal", "depends_on", "limits",
        ]),
        value in any_json(),
        name in "(\\PC|[\\x00-\\x1f]|\\.\\./){0,12}",
    ) {
        let p = gantry_stack_parse("services:\n  web:\n    image: x\n    volumes:\n      - type: tmpfs\n        target: /t\n").unwrap();
        let mut v = serde_json::to_value(&p.stack.services["web"]).unwrap();
        v[field] = value;
        if let Ok(svc) = serde_json::from_value::<Service>(v) {
            if crate::check::deploy("s", [(name.as_str(), &svc)]).is_ok() {
                let again: Service = serde_json::from_str(&serde_json::to_string(&svc).unwrap()).unwrap();
                proptest::prop_assert_eq!(again, svc);
            }
        }
    }
}

#[test]
fn the_checks_refuse_what_an_attacker_sends() {
    let p = gantry_stack_parse("services:\n  web:\n    image: x\n").unwrap();
    let good = &p.stack.services["web"];
    assert!(crate::check::deploy("s", [("web", good)]).is_ok());
    let long = "a".repeat(70);
    for (stack, name) in [
        ("s", "../../x"),
        ("s", "a\nb"),
        ("s", "\u{1b}[2J"),
        ("s", ""),
        ("s", long.as_str()),
        ("s", &long[..62]),
        ("../x", "web"),
        ("a\nb", "web"),
    ] {
        assert!(
            crate::check::deploy(stack, [(name, good)]).is_err(),
            "{stack:?} {name:?}"
        );
    }
    let mut bad = good.clone();
    bad.hostname = Some("web\n1.2.3.4 evil".into());
    assert!(crate::check::service("web", &bad)
        .unwrap_err()
        .contains("hostname"));
    let mut bad = good.clone();
    bad.volumes
        .push(Mount::new(MountType::Bind, "relative", "/x"));
    assert!(crate::check::service("web", &bad).is_err());
    assert!(
        crate::check::deploy("s", std::iter::empty::<(&str, &Service)>()).is_err(),
        "no services"
    );
}

#[test]
fn values_are_interpolated_after_parsing_so_they_stay_whole() {
    let vars = env(&[
        ("PW", "s3cret #42"),
        ("STAR", "*not-an-alias"),
        ("COLON", "a: b"),
        ("B", "from-b"),
        ("N", "4"),
    ]);
    let text = "services:\n  db:\n    image: postgres\n    environment:\n      - POSTGRES_PASSWORD=${PW}\n      - STAR=$STAR\n      - COLON=${COLON}\n      - NESTED=${A:-${B:-x}}\n      - DEEP=${A:-${C:-x}}\n      - MULTI=${A:-one\n        two}\n      - LITERAL=$$PW\n      - EMPTY=${MISSING}\n    deploy:\n      replicas: ${N}\n";
    let p = parse(
        "stack.yml",
        text,
        &vars,
        &no_files,
        &ParseOptions::default(),
    )
    .unwrap();
    let e = &p.stack.services["db"].environment;
    assert_eq!(e["POSTGRES_PASSWORD"], "s3cret #42");
    assert_eq!(e["STAR"], "*not-an-alias");
    assert_eq!(e["COLON"], "a: b");
    assert_eq!(e["NESTED"], "from-b");
    assert_eq!(e["DEEP"], "x");
    assert_eq!(e["MULTI"], "one two");
    assert_eq!(e["LITERAL"], "$PW");
    assert_eq!(e["EMPTY"], "");
    assert_eq!(p.stack.services["db"].replicas(), Some(4));
    assert_eq!(
        p.warnings,
        vec!["the MISSING variable is not set; it is replaced by an empty string"]
    );
    // Keys are never interpolated; a value in a key's place stays literal.
    let p = parse(
        "stack.yml",
        "services:\n  web:\n    image: x\n    labels:\n      ${PW}: v\n",
        &vars,
        &no_files,
        &ParseOptions::default(),
    )
    .unwrap();
    assert!(p.stack.services["web"].labels.contains_key("${PW}"));
}

#[test]
fn yaml_bombs_and_huge_files_are_refused_quickly() {
    let mut bomb = String::from("a: &a [x, x, x, x, x, x, x, x, x, x]\n");
    for i in 0..9 {
        let prev = if i == 0 {
            "a".to_owned()
        } else {
            format!("l{}", i - 1)
        };
        bomb.push_str(&format!(
            "l{i}: &l{i} [*{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}]\n"
        ));
    }
    bomb.push_str("services: {web: {image: x, labels: {a: *l8}}}\n");
    let t = std::time::Instant::now();
    assert!(parse(
        "stack.yml",
        &bomb,
        &env(&[]),
        &no_files,
        &ParseOptions::default()
    )
    .is_err());
    let huge = format!(
        "services: {{web: {{image: x}}}}\n# {}\n",
        "x".repeat(MAX_FILE)
    );
    let e = parse(
        "stack.yml",
        &huge,
        &env(&[]),
        &no_files,
        &ParseOptions::default(),
    )
    .unwrap_err();
    assert!(e.msg.contains("at most"), "{e}");
    // Generous: a debug build on a loaded machine; the point is no blow-up.
    assert!(t.elapsed() < std::time::Duration::from_secs(10));
}

#[test]
fn string_commands_are_split_as_a_shell_splits_words() {
    let p = parse_ok("services:\n  db:\n    image: postgres\n    command: sh -c \"echo 'a b'; exec postgres\"\n    entrypoint: /bin/tini -- 'two words' a\\ b\n");
    let s = &p.stack.services["db"];
    assert_eq!(
        s.command.as_deref().unwrap(),
        ["sh", "-c", "echo 'a b'; exec postgres"]
    );
    assert_eq!(
        s.entrypoint.as_deref().unwrap(),
        ["/bin/tini", "--", "two words", "a b"]
    );
    let p = parse_ok("services:\n  db:\n    image: x\n    command: [\"sh\", \"-c\", \"a   b\"]\n");
    assert_eq!(
        p.stack.services["db"].command.as_deref().unwrap(),
        ["sh", "-c", "a   b"]
    );
    let e = parse_err("services:\n  db:\n    image: x\n    command: echo \"open\n");
    assert_eq!((e.line, e.column), (4, 14), "{e}");
    assert!(e.msg.contains("unterminated quote"), "{e}");
}

#[test]
fn ports_keep_their_address_ranges_and_protocol() {
    let p = parse_ok("services:\n  db:\n    image: x\n    ports:\n      - \"127.0.0.1:5432:5432\"\n      - \"3000-3002:4000-4002\"\n      - 53:53/udp\n      - target: 80\n        published: 8080\n        host_ip: 10.0.0.1\n        mode: host\n");
    let ports = &p.stack.services["db"].ports;
    assert_eq!(ports.len(), 6);
    assert_eq!(ports[0].host_ip, Some("127.0.0.1".parse().unwrap()));
    assert_eq!(
        ports[1..4]
            .iter()
            .map(|p| (p.published, p.target))
            .collect::<Vec<_>>(),
        [(Some(3000), 4000), (Some(3001), 4001), (Some(3002), 4002)]
    );
    assert_eq!(ports[4].protocol, "udp");
    assert_eq!(
        (ports[5].host_ip, ports[5].mode),
        (Some("10.0.0.1".parse().unwrap()), PortMode::Host)
    );
    assert!(p.warnings.is_empty(), "{:?}", p.warnings);
    let e = parse_err("services:\n  db:\n    image: x\n    ports: [\"3000-3002:80\"]\n");
    assert!(e.msg.contains("same length"), "{e}");
    let e = parse_err("services:\n  db:\n    image: x\n    ports: [{target: 80, host_ip: nope}]\n");
    assert!(e.msg.contains("invalid host_ip"), "{e}");
}

#[test]
fn volumes_keep_their_names_drivers_and_options() {
    let paths = ParseOptions {
        dir: Some("/srv/app".into()),
        home: Some("/home/ann".into()),
        ..ParseOptions::default()
    };
    let text = "services:
  db:
    image: postgres
    volumes:
      - legacy:/var/lib/postgresql/data
      - nfs:/backups:ro
      - named:/named:nocopy
      - /app/node_modules
      - ./init:/docker-entrypoint-initdb.d:ro,Z
      - ~/conf:/conf
      - type: bind
        source: ../shared
        target: /shared
        bind: {propagation: rslave}
      - type: tmpfs
        target: /cache
        tmpfs: {size: 64m}
    tmpfs: [\"/run:size=1m\"]
volumes:
  legacy:
    external: true
    name: legacy_data
  nfs:
    driver: local
    driver_opts: {type: nfs, o: \"addr=10.0.0.1,ro\", device: \":/export\"}
  named:
    name: shared_named
    labels: {team: db}
";
    let p = parse("stack.yml", text, &env(&[]), &no_files, &paths).unwrap();
    let v = &p.stack.services["db"].volumes;
    assert!(v[0].volume.external);
    assert_eq!(v[0].volume_name("s"), "legacy_data");
    assert_eq!(v[1].volume.driver_opts["type"], "nfs");
    assert_eq!(v[1].volume_name("s"), "s_nfs");
    assert!(v[1].read_only);
    assert_eq!(v[2].volume_name("s"), "shared_named");
    assert!(v[2].volume.nocopy);
    assert_eq!(v[2].volume.labels["team"], "db");
    assert_eq!((v[3].kind, v[3].source.as_str()), (MountType::Volume, ""));
    assert_eq!(
        (v[4].kind, v[4].source.as_str()),
        (MountType::Bind, "/srv/app/init")
    );
    assert_eq!(v[5].source, "/home/ann/conf");
    assert_eq!(v[6].source, "/srv/shared");
    assert_eq!(v[6].propagation.as_deref(), Some("rslave"));
    assert_eq!(v[7].tmpfs_size, Some(64 << 20));
    assert_eq!(v[8].tmpfs_size, Some(1 << 20));
    assert_eq!(
        p.warnings.len(),
        1,
        "the :Z relabelling is named: {:?}",
        p.warnings
    );
    for s in p.stack.services.values() {
        check::service("db", s).unwrap();
    }
    let bad = |vols: &str, want: &str| {
        let t = format!(
            "services:\n  db:\n    image: x\n    volumes: [\"v:/x\"]\nvolumes:\n  v: {vols}\n"
        );
        let e = parse("stack.yml", &t, &env(&[]), &no_files, &paths).unwrap_err();
        assert!(e.msg.contains(want), "{vols}: {e}");
    };
    bad("{driver: rexray}", "driver \"rexray\" is not available");
    bad("{driver_opts: {size: 1G, device: x}}", "does not go with");
    bad("{driver_opts: {size: 1k}}", "under the smallest");
    bad(
        "{driver_opts: {colour: red}}",
        "not an option of the local driver",
    );
    let t = "services:\n  db:\n    image: x\n    volumes: [\"v:/x\"]\nvolumes:\n  v: {driver_opts: {size: 10G}}\n";
    let p = parse("stack.yml", t, &env(&[]), &no_files, &paths).unwrap();
    check::service("db", &p.stack.services["db"]).unwrap();
    bad("{driver_opts: {type: nfs}}", "needs a device");
    bad(
        "{external: true, driver: local}",
        "cannot be set with external",
    );
    bad("{name: \"bad/name\"}", "invalid name");
    let e = parse_err("services:\n  db:\n    image: x\n    volumes: [\"./rel:/x\"]\n");
    assert!(e.msg.contains("relative"), "{e}");
    let e = parse_err(
        "services:\n  db:\n    image: x\n    volumes: [{type: cluster, source: v, target: /x}]\n",
    );
    assert!(e.msg.contains("CSI"), "{e}");
}

#[test]
fn compose_v2_keys_are_honoured_and_deploy_wins() {
    let p = parse_ok("services:\n  web:\n    image: x\n    read_only: true\n    mem_limit: 64m\n    mem_reservation: 32m\n    cpus: 0.5\n    pids_limit: 100\n    scale: 3\n    restart: on-failure:4\n    platform: linux/arm64\n    logging:\n      driver: json-file\n      options: {max-size: 10m, max-file: \"3\", compress: \"true\"}\n");
    let s = &p.stack.services["web"];
    assert!(s.read_only);
    assert_eq!(s.limits.memory, Some(64 << 20));
    assert_eq!(s.reservations.memory, Some(32 << 20));
    assert_eq!(s.limits.nano_cpus, Some(500_000_000));
    assert_eq!(s.limits.pids, Some(100));
    assert_eq!(s.replicas(), Some(3));
    assert_eq!(
        (
            s.restart_policy.condition.as_str(),
            s.restart_policy.max_attempts
        ),
        ("on-failure", 4)
    );
    assert_eq!(s.constraints, ["node.platform.arch==arm64"]);
    assert_eq!((s.log_max_size, s.log_max_files), (Some(10 << 20), Some(3)));
    assert!(p.warnings.iter().any(|w| w.contains("restart: \"on-failure:4\" is deployed as deploy.restart_policy.condition: on-failure, max_attempts: 4")), "{:?}", p.warnings);
    assert!(p
        .warnings
        .iter()
        .any(|w| w.contains("logging.options.compress is ignored")));
    // deploy says it too: deploy's value, and a warning for the other.
    let p = parse_ok("services:\n  web:\n    image: x\n    scale: 3\n    mem_limit: 1g\n    restart: always\n    deploy:\n      replicas: 2\n      resources: {limits: {memory: 64m}}\n      restart_policy: {condition: none}\n");
    let s = &p.stack.services["web"];
    assert_eq!(s.replicas(), Some(2));
    assert_eq!(s.limits.memory, Some(64 << 20));
    assert_eq!(s.restart_policy.condition, "none");
    assert_eq!(p.warnings.len(), 3, "{:?}", p.warnings);
    for (bad, want) in [
        ("restart: sometimes", "invalid restart"),
        ("platform: windows/amd64", "run linux"),
        (
            "logging: {driver: syslog}",
            "logging driver \"syslog\" is not available",
        ),
        ("scale: lots", "scale must be a whole number"),
        ("privileged: true", "privileged is not supported"),
    ] {
        let e = parse_err(&format!("services:\n  web:\n    image: x\n    {bad}\n"));
        assert!(e.msg.contains(want), "{bad}: {e}");
        assert_eq!(e.line, 4, "{bad}: {e}");
    }
}

#[test]
fn profiles_choose_the_optional_services() {
    let text = "services:\n  web:\n    image: x\n  debug:\n    image: x\n    profiles: [debug]\n  tools:\n    image: x\n    profiles: [tools, debug]\n";
    let with = |profiles: &[&str]| {
        let o = ParseOptions {
            profiles: profiles.iter().map(|p| p.to_string()).collect(),
            ..ParseOptions::default()
        };
        parse("stack.yml", text, &env(&[]), &no_files, &o)
    };
    let names = |p: Parsed| p.stack.services.into_keys().collect::<Vec<_>>();
    assert_eq!(names(with(&[]).unwrap()), ["web"]);
    assert_eq!(names(with(&["tools"]).unwrap()), ["tools", "web"]);
    assert_eq!(names(with(&["debug"]).unwrap()), ["debug", "tools", "web"]);
    assert_eq!(names(with(&["*"]).unwrap()).len(), 3);
    let e = parse_err("services:\n  web:\n    image: x\n    depends_on: [db]\n  db:\n    image: x\n    profiles: [db]\n");
    assert!(e.msg.contains("add --profile db"), "{e}");
}

#[test]
fn the_support_table_in_the_docs_is_current() {
    let doc = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../docs/compose.md"
    ))
    .unwrap_or_default();
    let table = support_table();
    if std::env::var_os("UPDATE_DOCS").is_some() {
        let start = doc.find("| key | Gantry | note |").unwrap_or(doc.len());
        let end = doc[start..]
            .find("\n\n")
            .map_or(doc.len(), |i| start + i + 1);
        let new = format!("{}{}{}", &doc[..start], table, &doc[end..]);
        std::fs::write(
            concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/compose.md"),
            new,
        )
        .unwrap();
        return;
    }
    assert!(
        doc.contains(&table),
        "docs/compose.md's support table differs from the parser's classes: run UPDATE_DOCS=1 cargo test -p gantry-stack the_support_table"
    );
}

#[test]
fn confinement_and_resolution_keys_are_read_and_checked() {
    let p = parse_ok("services:\n  web:\n    image: x\n    cap_drop: [ALL]\n    cap_add: [cap_net_bind_service, CHOWN]\n    security_opt: [\"no-new-privileges:true\", \"seccomp=unconfined\", \"apparmor=x\"]\n    sysctls: {net.core.somaxconn: 1024}\n    ulimits:\n      nofile: {soft: 512, hard: 1024}\n      nproc: 100\n    init: true\n    extra_hosts: [\"db.local:10.0.0.5\", \"v6=::1\"]\n    dns: 1.1.1.1\n    dns_search: [corp.example]\n    dns_opt: [\"ndots:2\"]\n");
    let s = &p.stack.services["web"];
    assert_eq!(s.security.cap_drop, ["ALL"]);
    assert_eq!(s.security.cap_add, ["NET_BIND_SERVICE", "CHOWN"]);
    assert!(s.security.seccomp_unconfined && s.security.init);
    assert_eq!(s.security.sysctls["net.core.somaxconn"], "1024");
    assert_eq!(s.security.ulimits["nofile"], (512, 1024));
    assert_eq!(s.security.ulimits["nproc"], (100, 100));
    assert_eq!(
        s.resolution.extra_hosts,
        [
            ("db.local".to_owned(), "10.0.0.5".parse().unwrap()),
            ("v6".to_owned(), "::1".parse().unwrap())
        ]
    );
    assert_eq!(
        s.resolution.dns,
        ["1.1.1.1".parse::<std::net::IpAddr>().unwrap()]
    );
    assert_eq!(
        (s.resolution.dns_search.len(), s.resolution.dns_opt.len()),
        (1, 1)
    );
    assert_eq!(p.warnings.len(), 1, "apparmor: {:?}", p.warnings);
    check::service("web", s).unwrap();
    for (bad, want) in [
        ("cap_add: [SUPERPOWER]", "unknown capability"),
        ("sysctls: [kernel.panic=1]", "not namespaced"),
        ("ulimits: {files: 1}", "unknown ulimit"),
        ("ulimits: {nofile: {soft: 10, hard: 1}}", "above hard"),
        ("extra_hosts: [\"x:nope\"]", "not an IP address"),
        ("security_opt: [\"seccomp=/p.json\"]", "profile file"),
        ("dns_search: [\"a b\"]", "invalid dns_search"),
        ("links: [db]", "links to \"db\", which is not in the stack"),
    ] {
        let e = parse_err(&format!("services:\n  web:\n    image: x\n    {bad}\n"));
        assert!(e.msg.contains(want), "{bad}: {e}");
    }
    // What the API refuses from anyone: a hand-made spec.
    let mut bad = s.clone();
    bad.resolution.dns_opt = vec!["ndots:1\nnameserver 6.6.6.6".into()];
    assert!(check::service("web", &bad).is_err());
    let mut bad = s.clone();
    bad.security
        .sysctls
        .insert("kernel.core_pattern".into(), "|/evil".into());
    assert!(check::service("web", &bad).is_err());
}

#[test]
fn errors_say_what_a_key_takes_and_images_are_references() {
    let e = parse_err("services:\n  web:\n    image: x\n    command: {a: 1}\n");
    assert!(
        e.msg.contains("expected a string or a list of strings"),
        "{e}"
    );
    assert!(!e.msg.contains("untagged"), "{e}");
    let e = parse_err("services:\n  web:\n    image: x\n    ports: [[1]]\n");
    assert!(e.msg.contains("PUBLISHED:]TARGET"), "{e}");
    for bad in ["Nginx:latest", "nginx:la@test", "nginx::1", "-x"] {
        let e = parse_err(&format!("services:\n  web:\n    image: \"{bad}\"\n"));
        assert!(e.msg.contains("invalid image"), "{bad}: {e}");
        assert_eq!((e.line, e.column), (3, 12), "{bad}: {e}");
    }
    let p = parse_ok("services:\n  web:\n    image: localhost:5000/a/b:1@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef\n    networks:\n      front: {priority: 10}\n      back:\nnetworks: {front: {}, back: {}}\n");
    assert_eq!(p.stack.services["web"].networks, ["back", "front"]);
    let e = parse_err("services:\n  web:\n    image: x\n    networks:\n      front: {link_local_ips: [w]}\nnetworks: {front: {}}\n");
    assert!(e.msg.contains("link_local_ips is not supported"), "{e}");
    assert_eq!(e.line, 5, "{e}");
}

#[test]
fn a_named_network_is_that_network_not_the_stacks() {
    let p = parse_ok("services:\n  web:\n    image: x\n    networks: [front, default]\nnetworks:\n  front: {name: shared-front, internal: true}\n");
    let web = &p.stack.services["web"];
    assert_eq!(web.network_scope("s", "front"), "shared-front");
    assert_eq!(web.network_scope("s", "default"), "s_default");
    assert!(
        web.network_names.is_empty(),
        "not a cluster network that must exist"
    );
    assert!(web.internal_networks.contains("front"));
    let again = parse_ok(&p.stack.to_yaml());
    assert_eq!(&again.stack.services["web"], web);
    let e = parse_err("services:\n  web:\n    image: x\n    networks: [front]\nnetworks:\n  front: {name: \"a b\"}\n");
    assert!(e.msg.contains("invalid network name"), "{e}");
}

#[test]
fn network_aliases_and_links_are_dns_names_on_the_networks_they_name() {
    let p = parse_ok(
        "services:
  db:
    image: postgres
    networks:
      back: {aliases: [database, pg.internal], ipv4_address: 10.0.0.9}
      front:
  app:
    image: app
    networks: [back]
    links: [db, \"db:primary\"]
  web:
    image: web
    networks: [front]
networks: {front: {}, back: {}}
",
    );
    let db = &p.stack.services["db"];
    let want: BTreeSet<String> = ["database", "pg.internal", "primary"]
        .map(String::from)
        .into();
    assert_eq!(db.network_aliases["back"], want);
    assert!(
        !db.network_aliases.contains_key("front"),
        "a link answers on the shared network only"
    );
    assert!(
        p.warnings
            .iter()
            .any(|w| w.contains("fixed address is not applied")),
        "{:?}",
        p.warnings
    );
    // Printed and read again: the same.
    let again = parse_ok(&p.stack.to_yaml());
    assert_eq!(
        again.stack.services["db"].network_aliases,
        db.network_aliases
    );
    for (bad, want) in [
        (
            "    networks: {front: {aliases: [\"a b\"]}}\n",
            "invalid alias",
        ),
        (
            "    networks: {front: {aliases: [\"-x\"]}}\n",
            "invalid alias",
        ),
        (
            "    networks: [front]\n    links: [\"other:o\"]\n",
            "shares no network",
        ),
    ] {
        let e = parse_err(&format!(
            "services:\n  web:\n    image: x\n{bad}  other:\n    image: y\n    networks: [back]\nnetworks: {{front: {{}}, back: {{}}}}\n"
        ));
        assert!(e.msg.contains(want), "{bad}: {e}");
    }
}
