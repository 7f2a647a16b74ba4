//! One service of a stack file, read into the spec: its keys, checked
//! and normalised (the compat and confine keys, mounts, networks and
//! their aliases, ports, deploy settings), at their line and column.

use super::*;

#[allow(clippy::too_many_arguments)]
pub(crate) fn service(
    ctx: &Ctx<'_>,
    name: &str,
    s: raw::Service,
    names: &BTreeSet<String>,
    volumes: &BTreeMap<String, VolumeOptions>,
    networks: &BTreeSet<String>,
    (external_networks, own_networks, internal_networks): (
        &BTreeMap<String, String>,
        &BTreeMap<String, String>,
        &BTreeSet<String>,
    ),
    env: &BTreeMap<String, String>,
    load_env_file: &EnvFileLoader<'_>,
    paths: &ParseOptions,
    warnings: &mut Vec<String>,
    deps_at: &mut BTreeMap<String, serde_saphyr::Location>,
) -> Result<Service, StackError> {
    let image = match s.image {
        Some(i) if !i.value.trim().is_empty() => {
            if let Err(why) = gantry_units::image_reference(&i.value) {
                return ctx.err(
                    &i.referenced,
                    format!("service {name}: invalid image {:?}: {why} (expected [registry/]repository[:tag][@digest], lowercase)", i.value),
                );
            }
            i.value
        }
        Some(i) => return ctx.err(&i.referenced, format!("service {name}: image is empty")),
        // Built by the deploy, which names the image it pushed.
        None if s.build.is_some() => name.to_owned(),
        None => {
            return Err(ctx.nowhere(format!(
                "service {name} has no image (give image, or build to build one)"
            )))
        }
    };
    let lookup = &|k: &str| env.get(k).cloned();
    let mut environment = BTreeMap::new();
    if let Some(files) = s.env_file {
        let at = files.referenced;
        for f in list(Some(files.value)).unwrap_or_default() {
            let text = load_env_file(&f)
                .or_else(|e| ctx.err(&at, format!("service {name}: env_file {f}: {e}")))?;
            let pairs = parse_env_file(&text, env).or_else(|(line, e)| {
                ctx.err(
                    &at,
                    format!("service {name}: env_file {f} line {line}: {e}"),
                )
            })?;
            environment.extend(pairs);
        }
    }
    environment.extend(dict(s.environment, lookup));
    let mut ports = Vec::new();
    for p in s.ports.unwrap_or_default() {
        ports.extend(
            port(&p.value).or_else(|e| ctx.err(&p.referenced, format!("service {name}: {e}")))?,
        );
    }
    let mut mounts = Vec::new();
    for v in s.volumes.unwrap_or_default() {
        let m = mounts::mount(&v.value, volumes, paths, warnings)
            .or_else(|e| ctx.err(&v.referenced, format!("service {name}: {e}")))?;
        mounts.push(m);
    }
    for t in list(s.tmpfs).unwrap_or_default() {
        mounts.push(mounts::tmpfs(&t).map_err(|e| ctx.nowhere(format!("service {name}: {e}")))?);
    }
    let healthcheck = match s.healthcheck {
        None => None,
        Some(h) if h.disable == Some(true) => Some(Healthcheck {
            test: vec!["NONE".into()],
            interval_ns: 0,
            timeout_ns: 0,
            start_period_ns: 0,
            start_interval_ns: 0,
            retries: 0,
        }),
        Some(h) => Some(Healthcheck {
            test: match h.test {
                Some(StringOrList::One(s)) => vec!["CMD-SHELL".into(), s],
                Some(StringOrList::Many(v))
                    if matches!(
                        v.first().map(String::as_str),
                        Some("CMD" | "CMD-SHELL" | "NONE")
                    ) =>
                {
                    v
                }
                // Gantry's extensions: ["HTTP", PORT, PATH] (a 2xx or 3xx
                // answer is healthy) and ["TCP", PORT] (a connection is).
                Some(StringOrList::Many(v))
                    if matches!(v.first().map(String::as_str), Some("HTTP" | "TCP")) =>
                {
                    let port_ok = v.get(1).is_some_and(|p| p.parse::<u16>().is_ok_and(|p| p > 0));
                    let arity_ok = if v[0] == "HTTP" {
                        (2..=3).contains(&v.len())
                            && v.get(2).is_none_or(|p| p.starts_with('/'))
                    } else {
                        v.len() == 2
                    };
                    if !port_ok || !arity_ok {
                        return Err(ctx.nowhere(format!(
                            "service {name}: healthcheck.test {v:?}: use [\"HTTP\", PORT, \"/path\"] or [\"TCP\", PORT]"
                        )));
                    }
                    v
                }
                Some(StringOrList::Many(_)) => {
                    return Err(ctx.nowhere(format!(
                        "service {name}: healthcheck.test must start with CMD, CMD-SHELL, NONE, HTTP or TCP"
                    )))
                }
                None => return Err(ctx.nowhere(format!("service {name}: healthcheck has no test"))),
            },
            interval_ns: ctx.duration(&h.interval, 30_000_000_000)?,
            timeout_ns: ctx.duration(&h.timeout, 30_000_000_000)?,
            start_period_ns: ctx.duration(&h.start_period, 0)?,
            start_interval_ns: ctx.duration(&h.start_interval, 0)?,
            retries: h.retries.unwrap_or(3),
        }),
    };
    let depends_on = match s.depends_on {
        None => Vec::new(),
        Some(d) => {
            let list: Vec<String> = match d.value {
                raw::DependsOn::List(l) => l,
                raw::DependsOn::Map(m) => m.into_keys().collect(),
            };
            for dep in &list {
                if !names.contains(dep) {
                    return ctx.err(
                        &d.referenced,
                        format!("service {name} depends on {dep:?}, which is not in the stack"),
                    );
                }
            }
            deps_at.insert(name.to_owned(), d.referenced);
            list
        }
    };
    let mut network_aliases: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let nets = match s.networks {
        None => vec!["default".to_owned()],
        Some(n) => {
            let l: Vec<String> = match n.value {
                raw::Networks::List(l) => l,
                raw::Networks::Map(m) => {
                    for (net, opts) in &m {
                        let o = opts.clone().unwrap_or_default();
                        if o.ipv4_address.is_some() || o.ipv6_address.is_some() {
                            warnings.push(format!("service {name}: network {net}: a fixed address is not applied (as in Swarm): tasks get addresses from the cluster's plan; reach them by name"));
                        }
                        let aliases: BTreeSet<String> =
                            o.aliases.unwrap_or_default().into_iter().collect();
                        if !aliases.is_empty() {
                            network_aliases.insert(net.clone(), aliases);
                        }
                    }
                    m.into_keys().collect()
                }
            };
            for x in &l {
                if !networks.contains(x) {
                    return ctx.err(&n.referenced, format!("service {name} uses network {x:?}, which is not declared under the top-level networks key"));
                }
            }
            l
        }
    };
    let d = s.deploy.unwrap_or_default();
    let deployed = compat::Deployed {
        replicas: d.replicas.is_some(),
        restart_policy: d.restart_policy.is_some(),
    };
    let compat_keys = compat::Keys {
        read_only: s.read_only,
        mem_limit: s.mem_limit,
        mem_reservation: s.mem_reservation,
        cpus: s.cpus,
        pids_limit: s.pids_limit,
        scale: s.scale,
        restart: s.restart,
        logging: s.logging,
        platform: s.platform,
    };
    let confine_keys = confine::Keys {
        cap_add: s.cap_add,
        cap_drop: s.cap_drop,
        security_opt: s.security_opt,
        sysctls: s.sysctls,
        ulimits: s.ulimits,
        init: s.init,
        extra_hosts: s.extra_hosts,
        dns: s.dns,
        dns_search: s.dns_search,
        dns_opt: s.dns_opt,
    };
    let (security, resolution) = confine::read(ctx, name, confine_keys, warnings)?;
    let endpoint_mode = match d
        .endpoint_mode
        .as_ref()
        .map(|m| (m.value.as_str(), m.referenced))
    {
        None | Some(("vip", _)) => gantry_spec::EndpointMode::Vip,
        Some(("dnsrr", _)) => gantry_spec::EndpointMode::Dnsrr,
        Some((other, at)) => {
            return ctx.err(
                &at,
                format!("service {name}: deploy.endpoint_mode is vip or dnsrr, not {other:?}"),
            )
        }
    };
    let mode = match d.mode.as_ref().map(|m| (m.value.as_str(), m.referenced)) {
        None | Some(("replicated", _)) => {
            let replicas = match &d.replicas {
                None => 1,
                Some(r) => match &r.value {
                    Scalar::Int(i) if *i >= 0 && *i <= i64::from(u32::MAX) => *i as u32,
                    Scalar::Str(t) if t.parse::<u32>().is_ok() => t.parse().unwrap_or(1),
                    other => {
                        return ctx.err(
                            &r.referenced,
                            format!(
                                "service {name}: replicas must be a whole number, got {:?}",
                                other.text()
                            ),
                        )
                    }
                },
            };
            Mode::Replicated { replicas }
        }
        Some(("global", _)) => {
            if let Some(r) = &d.replicas {
                return ctx.err(
                    &r.referenced,
                    format!("service {name}: replicas cannot be set with mode: global"),
                );
            }
            Mode::Global
        }
        Some((other, at)) => {
            return ctx.err(
                &at,
                format!("service {name}: invalid mode {other:?}: use replicated or global"),
            );
        }
    };
    let res = d.resources.unwrap_or_default();
    let limits = amounts(ctx, name, res.limits)?;
    let reservations = amounts(ctx, name, res.reservations)?;
    let placement = d.placement.unwrap_or_default();
    let max_replicas_per_node = match &placement.max_replicas_per_node {
        Some(m) if mode == Mode::Global => {
            return ctx.err(
                &m.referenced,
                format!("service {name}: max_replicas_per_node cannot be set with mode: global"),
            )
        }
        Some(m) => Some(m.value).filter(|n| *n > 0),
        None => None,
    };
    let mut constraints = Vec::new();
    for c in placement.constraints.unwrap_or_default() {
        let parsed = Constraint::parse(&c.value)
            .or_else(|e| ctx.err(&c.referenced, format!("service {name}: {e}")))?;
        constraints.push(parsed.to_string());
    }
    let mut spread_over = Vec::new();
    for p in placement.preferences.unwrap_or_default() {
        match p.value.spread.strip_prefix("node.labels.") {
            Some(l) if !l.is_empty() => spread_over.push(l.to_owned()),
            _ => {
                return ctx.err(
                    &p.referenced,
                    format!(
                        "service {name}: spread preference must be node.labels.KEY, got {:?}",
                        p.value.spread
                    ),
                )
            }
        }
    }
    let rp = d.restart_policy.unwrap_or_default();
    let restart_policy = RestartPolicy {
        condition: ctx.choice(
            &rp.condition,
            &["none", "on-failure", "any"],
            "any",
            "restart condition",
        )?,
        delay_ns: ctx.duration(&rp.delay, 5_000_000_000)?,
        max_attempts: rp.max_attempts.unwrap_or(0),
        window_ns: ctx.duration(&rp.window, 0)?,
    };
    let update_config = update(ctx, d.update_config.unwrap_or_default(), "pause")?;
    let rollback_config = update(ctx, d.rollback_config.unwrap_or_default(), "pause")?;
    let rebalance = s
        .x_gantry
        .as_ref()
        .and_then(|x| x.rebalance)
        .unwrap_or(true);
    let metadata = s
        .x_gantry
        .as_ref()
        .and_then(|x| x.metadata)
        .unwrap_or(false);
    let service_labels = dict(d.labels, lookup);
    let strategy_of = |v: &str| match v {
        "spread" => Some(Strategy::Spread),
        "binpack" => Some(Strategy::Binpack),
        _ => None,
    };
    let strategy = match s.x_gantry.and_then(|x| x.strategy) {
        Some(st) => match strategy_of(&st.value) {
            Some(v) => Some(v),
            None => {
                return ctx.err(
                    &st.referenced,
                    format!(
                        "service {name}: invalid x-gantry.strategy {:?}: use spread or binpack",
                        st.value
                    ),
                )
            }
        },
        None => match service_labels.get("gantry.strategy") {
            None => None,
            Some(v) => Some(strategy_of(v).ok_or_else(|| {
                ctx.nowhere(format!(
                    "service {name}: invalid label gantry.strategy={v:?}: use spread or binpack"
                ))
            })?),
        },
    };
    let network_own_names: BTreeMap<String, String> = nets
        .iter()
        .filter_map(|n| Some((n.clone(), own_networks.get(n)?.clone())))
        .collect();
    let network_names: BTreeMap<String, String> = nets
        .iter()
        .filter_map(|n| Some((n.clone(), external_networks.get(n)?.clone())))
        .collect();
    let mut svc = Service {
        image,
        command: ctx.words(name, "command", s.command)?,
        entrypoint: ctx.words(name, "entrypoint", s.entrypoint)?,
        environment,
        labels: dict(s.labels, lookup),
        ports,
        volumes: mounts,
        // Not yet read from a stack file: refused by the key check.
        secrets: Vec::new(),
        configs: Vec::new(),
        healthcheck,
        depends_on,
        internal_networks: nets
            .iter()
            .filter(|n| internal_networks.contains(*n))
            .cloned()
            .collect(),
        networks: nets,
        network_names,
        network_aliases,
        network_own_names,
        mode,
        endpoint_mode,
        limits,
        reservations,
        constraints,
        spread_over,
        max_replicas_per_node,
        strategy,
        rebalance,
        metadata,
        restart_policy,
        update_config,
        rollback_config,
        service_labels,
        user: s.user.map(|u| u.text()),
        working_dir: s.working_dir,
        hostname: s.hostname,
        stop_signal: s.stop_signal,
        stop_grace_period_ns: ctx.duration(&s.stop_grace_period, 10_000_000_000)?,
        read_only: false,
        log_max_size: None,
        log_max_files: None,
        security,
        resolution,
    };
    compat::apply(ctx, name, compat_keys, &deployed, &mut svc, warnings)?;
    Ok(svc)
}

fn amounts(ctx: &Ctx<'_>, name: &str, a: Option<raw::Amounts>) -> Result<Amounts, StackError> {
    let Some(a) = a else {
        return Ok(Amounts::default());
    };
    let nano_cpus = match a.cpus {
        None => None,
        Some(c) => Some(
            gantry_units::nano_cpus(&c.value.text())
                .or_else(|e| ctx.err(&c.referenced, format!("service {name}: {e}")))?,
        ),
    };
    let memory = match a.memory {
        None => None,
        Some(m) => Some(
            gantry_units::size(&m.value.text())
                .or_else(|e| ctx.err(&m.referenced, format!("service {name}: {e}")))?,
        ),
    };
    Ok(Amounts {
        nano_cpus,
        memory,
        pids: a.pids,
    })
}

fn update(
    ctx: &Ctx<'_>,
    u: raw::UpdateConfig,
    default_action: &str,
) -> Result<UpdateConfig, StackError> {
    Ok(UpdateConfig {
        parallelism: u.parallelism.unwrap_or(1),
        delay_ns: ctx.duration(&u.delay, 0)?,
        order: ctx.choice(
            &u.order,
            &["stop-first", "start-first"],
            "stop-first",
            "order",
        )?,
        failure_action: ctx.choice(
            &u.failure_action,
            &["pause", "continue", "rollback"],
            default_action,
            "failure_action",
        )?,
        monitor_ns: ctx.duration(&u.monitor, 5_000_000_000)?,
        max_failure_ratio: u.max_failure_ratio.unwrap_or(0.0),
    })
}

fn port(p: &raw::Port) -> Result<Vec<Port>, String> {
    match p {
        raw::Port::Short(s) => Ok(gantry_units::port_spec(&s.text())?
            .into_iter()
            .map(|p| Port {
                target: p.target,
                published: p.published,
                protocol: if p.udp { "udp" } else { "tcp" }.to_owned(),
                mode: PortMode::Ingress,
                host_ip: p.host_ip,
            })
            .collect()),
        raw::Port::Long {
            target,
            published,
            protocol,
            mode,
            host_ip,
        } => {
            if *target == 0 {
                return Err("invalid port: target must be 1-65535".into());
            }
            let published = match published {
                None => None,
                Some(p) => Some(p.text().parse::<u16>().ok().filter(|p| *p > 0).ok_or_else(
                    || format!("invalid published port {:?}: one port, 1-65535", p.text()),
                )?),
            };
            let protocol = protocol.clone().unwrap_or_else(|| "tcp".into());
            if protocol != "tcp" && protocol != "udp" {
                return Err(format!("invalid protocol {protocol:?}: use tcp or udp"));
            }
            let mode = match mode.as_deref() {
                None | Some("ingress") => PortMode::Ingress,
                Some("host") => PortMode::Host,
                Some(m) => return Err(format!("invalid port mode {m:?}: use ingress or host")),
            };
            let host_ip = match host_ip.as_deref() {
                None | Some("") => None,
                Some(ip) => Some(
                    ip.parse()
                        .map_err(|_| format!("invalid host_ip {ip:?}: an IPv4 or IPv6 address"))?,
                ),
            };
            Ok(vec![Port {
                target: *target,
                published,
                protocol,
                mode,
                host_ip,
            }])
        }
    }
}
