//! The checks every stack and service passes wherever it comes from: the
//! parser runs them on what it normalised from a stack file, and the
//! manager on what a client sent (the CLI, or anything else that reached
//! the API). One place, so that nothing the CLI would refuse can be stored
//! by sending it straight to the API.

use crate::{MountType, Service};

/// The longest stack or service name, and the longest `STACK_SERVICE`
/// (a DNS label, as Docker's service names).
pub const MAX_NAME: usize = 63;

/// The most DNS aliases a service has on one network.
pub const MAX_ALIASES: usize = 64;

/// A stack's name: letters, digits, `-` and `.`, from a letter or digit.
pub fn stack_name(n: &str) -> Result<(), String> {
    let mut b = n.bytes();
    let ok = b.next().is_some_and(|c| c.is_ascii_alphanumeric())
        && b.all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'.')
        && n.len() <= MAX_NAME;
    if ok {
        Ok(())
    } else {
        Err(format!(
            "invalid stack name {}: letters, digits, '-' and '.', starting with a letter or digit, at most {MAX_NAME}",
            shown(n)
        ))
    }
}

/// A service's (or network's) name in a stack: letters, digits, `-` and
/// `_`, from a letter or digit.
pub fn service_name(n: &str) -> Result<(), String> {
    if crate::valid_name(n) && n.len() <= MAX_NAME {
        Ok(())
    } else {
        Err(format!(
            "invalid service name {}: use letters, digits, '-' and '_', starting with a letter or digit, at most {MAX_NAME}",
            shown(n)
        ))
    }
}

/// A secret's or config's name as Docker allows one: letters, digits,
/// `_`, `.` and `-`, from a letter or digit, at most 64.
pub fn file_name(n: &str) -> bool {
    n.starts_with(|c: char| c.is_ascii_alphanumeric())
        && n.len() <= 64
        && n.chars()
            .all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c))
}

/// A value as an error shows it: quoted, control characters escaped, cut
/// short when long.
fn shown(v: &str) -> String {
    let cut: String = v.chars().take(80).collect();
    let more = if cut.len() < v.len() { "..." } else { "" };
    format!("{:?}{more}", cut)
}

fn no_control(what: &str, v: &str) -> Result<(), String> {
    if v.chars().any(char::is_control) {
        Err(format!("{what} {} holds a control character", shown(v)))
    } else {
        Ok(())
    }
}

fn no_nul(what: &str, v: &str) -> Result<(), String> {
    if v.contains('\0') {
        Err(format!("{what} {} holds a NUL byte", shown(v)))
    } else {
        Ok(())
    }
}

/// A host name as RFC 1123 has it, with `_` as Docker allows (Swarm's
/// `{{.Service.Name}}` holds one): dot-separated labels of letters,
/// digits, `-` and `_`, each 1 to 63 long and not starting or ending with
/// `-`.
fn hostname(h: &str) -> Result<(), String> {
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && !l.starts_with('-')
            && !l.ends_with('-')
            && l.bytes()
                .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_')
    };
    if h.len() <= 253 && h.split('.').all(label_ok) {
        Ok(())
    } else {
        Err(format!(
            "invalid hostname {}: dot-separated labels of letters, digits, '-' and '_'",
            shown(h)
        ))
    }
}

/// The checks of a stack's services before a deploy: the stack's name,
/// and each service (with its name in the stack) as [`service`] has it.
pub fn deploy<'a>(
    stack: &str,
    services: impl IntoIterator<Item = (&'a str, &'a Service)>,
) -> Result<(), String> {
    stack_name(stack)?;
    let mut any = false;
    let mut folded = std::collections::BTreeSet::new();
    for (name, s) in services {
        any = true;
        if !folded.insert(name.to_ascii_lowercase()) {
            return Err(format!(
                "service {name}: another service's name differs only in case (their DNS names would be the same)"
            ));
        }
        service(name, s)?;
        let full = format!("{stack}_{name}");
        if full.len() > MAX_NAME {
            return Err(format!(
                "service {full}: the stack's and the service's names together are longer than {MAX_NAME}"
            ));
        }
    }
    if any {
        Ok(())
    } else {
        Err("the stack has no services".into())
    }
}

/// A service's secrets and configs: names as Docker allows them, files at
/// distinct absolute paths, permission bits only.
fn files(s: &Service) -> Result<(), String> {
    let mut targets = std::collections::BTreeSet::new();
    let secrets = s.secrets.iter().map(|f| ("secret", f, f.secret_path()));
    let configs = s.configs.iter().map(|f| ("config", f, f.config_path()));
    for (kind, f, path) in secrets.chain(configs) {
        if !file_name(&f.source) {
            return Err(format!("invalid {kind} name {}", shown(&f.source)));
        }
        if path.contains('\0')
            || path.len() > 4096
            || path.split('/').any(|c| c == "..")
            || path.ends_with('/')
        {
            return Err(format!(
                "{kind} {}: invalid target {}",
                f.source,
                shown(&f.target)
            ));
        }
        if f.mode > 0o7777 {
            return Err(format!("{kind} {}: invalid mode {:o}", f.source, f.mode));
        }
        if !targets.insert(path.clone()) {
            return Err(format!(
                "two secrets or configs are at {path}: give them distinct targets"
            ));
        }
    }
    Ok(())
}

/// The checks of one service, named `name` in its stack.
pub fn service(name: &str, s: &Service) -> Result<(), String> {
    service_name(name)?;
    let at = |e: String| format!("service {name}: {e}");
    // Swarm's templates: known fields only, and what they give must
    // pass the checks.
    use gantry_spec::template;
    let filled = |v: &str| -> Result<String, String> {
        template::check(v)?;
        Ok(template::expand(v, &template::sample()))
    };

    if let Err(why) = gantry_units::image_reference(&s.image) {
        return Err(at(format!("invalid image {}: {why}", shown(&s.image))));
    }
    for arg in s.command.iter().chain(&s.entrypoint).flatten() {
        no_nul("argument", arg).map_err(at)?;
    }
    files(s).map_err(at)?;
    for (k, v) in &s.environment {
        if k.is_empty() || k.contains('=') {
            return Err(at(format!(
                "invalid environment variable name {}",
                shown(k)
            )));
        }
        no_nul("environment variable", k).map_err(at)?;
        no_nul("environment value", v).map_err(at)?;
    }
    for (k, v) in s.labels.iter().chain(&s.service_labels) {
        if k.is_empty() {
            return Err(at("a label has an empty name".into()));
        }
        no_control("label", k).map_err(at)?;
        no_nul("label value", v).map_err(at)?;
    }
    for p in &s.ports {
        if p.target == 0 || p.published == Some(0) {
            return Err(at("port 0 cannot be published".into()));
        }
        if !matches!(p.protocol.as_str(), "tcp" | "udp") {
            return Err(at(format!(
                "invalid protocol {}: tcp or udp",
                shown(&p.protocol)
            )));
        }
    }
    for m in &s.volumes {
        no_control("mount target", &m.target).map_err(at)?;
        if !m.target.starts_with('/') || m.target.split('/').any(|c| c == "..") {
            return Err(at(format!(
                "invalid mount target {}: an absolute path without '..'",
                shown(&m.target)
            )));
        }
        no_control("mount source", &m.source).map_err(at)?;
        let source = filled(&m.source).map_err(at)?;
        let m = &crate::Mount {
            source,
            ..m.clone()
        };
        match m.kind {
            // (An empty source is an anonymous volume, one per task.)
            MountType::Volume if !m.source.is_empty() && !crate::valid_volume(&m.source) => {
                return Err(at(format!("invalid volume name {}", shown(&m.source))))
            }
            MountType::Bind if !m.source.starts_with('/') => {
                return Err(at(format!(
                    "invalid bind source {}: an absolute path",
                    shown(&m.source)
                )))
            }
            MountType::Tmpfs if !m.source.is_empty() => {
                return Err(at("a tmpfs mount has no source".into()))
            }
            _ => {}
        }
        let v = &m.volume;
        if m.kind != MountType::Volume && !v.is_default() {
            return Err(at(format!(
                "mount {}: volume options on a {:?} mount",
                shown(&m.target),
                m.kind
            )));
        }
        if m.kind == MountType::Volume && m.source.is_empty() && (v.name.is_some() || v.external) {
            return Err(at("an anonymous volume has no name".into()));
        }
        if let Some(n) = &v.name {
            if !crate::valid_volume(n) {
                return Err(at(format!("invalid volume name {}", shown(n))));
            }
        }
        for (k, val) in v.driver_opts.iter().chain(&v.labels) {
            no_control("volume option", k).map_err(at)?;
            no_nul("volume option value", val).map_err(at)?;
        }
        gantry_units::volume_options(&v.driver_opts)
            .map_err(|e| at(format!("driver_opts: {e}")))?;
        if v.external && !v.driver_opts.is_empty() {
            return Err(at("an external volume has no driver_opts".into()));
        }
        match &m.propagation {
            Some(p)
                if m.kind != MountType::Bind
                    || !gantry_units::PROPAGATIONS.contains(&p.as_str()) =>
            {
                return Err(at(format!(
                    "invalid propagation {} on {}",
                    shown(p),
                    shown(&m.target)
                )))
            }
            _ => {}
        }
        if m.tmpfs_size.is_some() && m.kind != MountType::Tmpfs {
            return Err(at("a size is for tmpfs mounts".into()));
        }
    }
    if let Some(h) = &s.healthcheck {
        let known = matches!(
            h.test.first().map(String::as_str),
            Some("CMD" | "CMD-SHELL" | "NONE" | "HTTP" | "TCP")
        );
        if !known {
            return Err(at(
                "invalid healthcheck test: CMD, CMD-SHELL, NONE, HTTP or TCP first".into(),
            ));
        }
        for arg in &h.test {
            no_nul("healthcheck argument", arg).map_err(at)?;
        }
    }
    for n in s.networks.iter().chain(&s.depends_on) {
        service_name(n).map_err(at)?;
    }
    if let Some(n) = s.internal_networks.iter().find(|n| !s.networks.contains(n)) {
        return Err(at(format!(
            "internal network {} is not one of its networks",
            shown(n)
        )));
    }
    for (net, aliases) in &s.network_aliases {
        if !s.networks.contains(net) {
            return Err(at(format!(
                "aliases on {}, which is not one of its networks",
                shown(net)
            )));
        }
        if aliases.len() > MAX_ALIASES {
            return Err(at(format!(
                "{} aliases on network {net}: at most {MAX_ALIASES}",
                aliases.len()
            )));
        }
        for a in aliases {
            hostname(a).map_err(|_| {
                at(format!(
                    "invalid alias {} on network {net}: a DNS name, dot-separated labels of letters, digits, '-' and '_'",
                    shown(a)
                ))
            })?;
        }
    }
    for (short, name) in s.network_names.iter().chain(&s.network_own_names) {
        if !s.networks.contains(short)
            || !crate::valid_volume(name)
            || (s.network_names.contains_key(short) && s.network_own_names.contains_key(short))
        {
            return Err(at(format!(
                "invalid cluster network {} for {}",
                shown(name),
                shown(short)
            )));
        }
    }
    for c in &s.constraints {
        gantry_sched::Constraint::parse(c)
            .map_err(|e| at(format!("constraint {}: {e}", shown(c))))?;
    }
    for l in &s.spread_over {
        no_control("spread label", l).map_err(at)?;
    }
    if let Some(h) = &s.hostname {
        hostname(&filled(h).map_err(at)?).map_err(at)?;
    }
    for v in s.environment.values().filter(|v| template::has_template(v)) {
        template::check(v).map_err(at)?;
    }
    if let Some(u) = &s.user {
        no_control("user", u).map_err(at)?;
    }
    if let Some(w) = &s.working_dir {
        no_control("working_dir", w).map_err(at)?;
        if !w.starts_with('/') {
            return Err(at(format!(
                "working_dir {} is not an absolute path",
                shown(w)
            )));
        }
    }
    let sec = &s.security;
    for c in sec.cap_add.iter().chain(&sec.cap_drop) {
        gantry_units::capability(c).map_err(at)?;
    }
    for (k, v) in &sec.sysctls {
        gantry_units::namespaced_sysctl(k, false).map_err(at)?;
        no_control("sysctl value", v).map_err(at)?;
    }
    for (k, (soft, hard)) in &sec.ulimits {
        if !gantry_units::ULIMITS.contains(&k.as_str()) || soft > hard {
            return Err(at(format!("invalid ulimit {}", shown(k))));
        }
    }
    let r = &s.resolution;
    for w in r
        .extra_hosts
        .iter()
        .map(|(h, _)| h)
        .chain(&r.dns_search)
        .chain(&r.dns_opt)
    {
        if w.is_empty() || w.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(at(format!(
                "invalid host name, search domain or resolver option {}",
                shown(w)
            )));
        }
    }
    if let Some(sig) = &s.stop_signal {
        no_control("stop_signal", sig).map_err(at)?;
    }
    if !matches!(
        s.restart_policy.condition.as_str(),
        "none" | "on-failure" | "any"
    ) {
        return Err(at(
            "invalid restart condition: none, on-failure or any".into()
        ));
    }
    for u in [&s.update_config, &s.rollback_config] {
        let ok = matches!(u.order.as_str(), "stop-first" | "start-first")
            && matches!(u.failure_action.as_str(), "pause" | "continue" | "rollback")
            && u.max_failure_ratio.is_finite()
            && u.max_failure_ratio >= 0.0;
        if !ok {
            return Err(at(
                "invalid update or rollback settings (order, failure_action, max_failure_ratio)"
                    .into(),
            ));
        }
    }
    Ok(())
}
