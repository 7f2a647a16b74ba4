//! The service keys of the Compose file format that Swarm's `deploy`
//! section supersedes or that say how a container runs: `scale`,
//! `restart`, `mem_limit`, `mem_reservation`, `cpus`, `pids_limit`,
//! `logging`, `platform`, `read_only`. Each is honoured: mapped onto what
//! `deploy` would say when `deploy` does not say it; when both say it,
//! `deploy` wins and a warning names the key left out.

use serde_saphyr::Spanned;

use crate::raw::{Logging, Scalar};
use crate::{Ctx, Mode, Service, StackError};

/// The keys, as written.
#[derive(Default)]
pub(crate) struct Keys {
    pub(crate) read_only: Option<bool>,
    pub(crate) mem_limit: Option<Spanned<Scalar>>,
    pub(crate) mem_reservation: Option<Spanned<Scalar>>,
    pub(crate) cpus: Option<Spanned<Scalar>>,
    pub(crate) pids_limit: Option<Spanned<Scalar>>,
    pub(crate) scale: Option<Spanned<Scalar>>,
    pub(crate) restart: Option<Spanned<String>>,
    pub(crate) logging: Option<Logging>,
    pub(crate) platform: Option<Spanned<String>>,
}

/// What `deploy` itself said.
pub(crate) struct Deployed {
    pub(crate) replicas: bool,
    pub(crate) restart_policy: bool,
}

/// Applies the keys to a service built from the rest of its entry.
pub(crate) fn apply(
    ctx: &Ctx<'_>,
    name: &str,
    k: Keys,
    deployed: &Deployed,
    svc: &mut Service,
    warnings: &mut Vec<String>,
) -> Result<(), StackError> {
    let left_out = |key: &str, deploy_key: &str| {
        format!("services.{name}.{key} is ignored: deploy.{deploy_key} is given too")
    };
    if let Some(ro) = k.read_only {
        svc.read_only = ro;
    }
    if let Some(s) = &k.scale {
        let n = match &s.value {
            Scalar::Int(i) if (0..=i64::from(u32::MAX)).contains(i) => *i as u32,
            Scalar::Str(t) if t.parse::<u32>().is_ok() => t.parse().unwrap_or(1),
            other => {
                return ctx.err(
                    &s.referenced,
                    format!(
                        "service {name}: scale must be a whole number, got {:?}",
                        other.text()
                    ),
                )
            }
        };
        match svc.mode {
            Mode::Global => {
                return ctx.err(
                    &s.referenced,
                    format!("service {name}: scale cannot be set with mode: global"),
                )
            }
            _ if deployed.replicas => warnings.push(left_out("scale", "replicas")),
            _ => svc.mode = Mode::Replicated { replicas: n },
        }
    }
    let size = |v: &Spanned<Scalar>| {
        gantry_units::size(&v.value.text())
            .or_else(|e| ctx.err(&v.referenced, format!("service {name}: {e}")))
    };
    if let Some(m) = &k.mem_limit {
        let b = size(m)?;
        match svc.limits.memory {
            Some(_) => warnings.push(left_out("mem_limit", "resources.limits.memory")),
            None => svc.limits.memory = Some(b),
        }
    }
    if let Some(m) = &k.mem_reservation {
        let b = size(m)?;
        match svc.reservations.memory {
            Some(_) => warnings.push(left_out("mem_reservation", "resources.reservations.memory")),
            None => svc.reservations.memory = Some(b),
        }
    }
    if let Some(c) = &k.cpus {
        let n = gantry_units::nano_cpus(&c.value.text())
            .or_else(|e| ctx.err(&c.referenced, format!("service {name}: {e}")))?;
        match svc.limits.nano_cpus {
            Some(_) => warnings.push(left_out("cpus", "resources.limits.cpus")),
            None => svc.limits.nano_cpus = Some(n),
        }
    }
    if let Some(p) = &k.pids_limit {
        let n = match &p.value {
            Scalar::Int(i) if *i > 0 => *i as u64,
            // -1 and 0 are Docker's "no limit".
            Scalar::Int(-1 | 0) => 0,
            other => {
                return ctx.err(
                    &p.referenced,
                    format!(
                        "service {name}: pids_limit must be a whole number, got {:?}",
                        other.text()
                    ),
                )
            }
        };
        match svc.limits.pids {
            Some(_) => warnings.push(left_out("pids_limit", "resources.limits.pids")),
            None if n > 0 => svc.limits.pids = Some(n),
            None => {}
        }
    }
    if let Some(r) = &k.restart {
        let (condition, attempts) = match r.value.split_once(':') {
            None if r.value == "no" => ("none", 0),
            None if r.value == "always" || r.value == "unless-stopped" => ("any", 0),
            None if r.value == "on-failure" => ("on-failure", 0),
            Some(("on-failure", n)) if n.parse::<u32>().is_ok() => {
                ("on-failure", n.parse().unwrap_or(0))
            }
            _ => {
                return ctx.err(
                    &r.referenced,
                    format!("service {name}: invalid restart {:?}: use no, always, unless-stopped or on-failure[:N]", r.value),
                )
            }
        };
        if deployed.restart_policy {
            warnings.push(left_out("restart", "restart_policy"));
        } else {
            svc.restart_policy.condition = condition.to_owned();
            svc.restart_policy.max_attempts = attempts;
            warnings.push(format!(
                "services.{name}.restart: {:?} is deployed as deploy.restart_policy.condition: {condition}{}",
                r.value,
                if attempts > 0 { format!(", max_attempts: {attempts}") } else { String::new() }
            ));
        }
    }
    if let Some(l) = k.logging {
        if let Some(d) = &l.driver {
            if !matches!(d.value.as_str(), "json-file" | "local") {
                return ctx.err(
                    &d.referenced,
                    format!("service {name}: logging driver {:?} is not available: Gantry keeps every task's logs itself (`gantry service logs`); use json-file or local for max-size and max-file", d.value),
                );
            }
        }
        for (k, v) in l.options.unwrap_or_default() {
            match k.as_str() {
                "max-size" => {
                    svc.log_max_size = Some(gantry_units::size(&v.text()).map_err(|e| {
                        ctx.nowhere(format!("service {name}: logging.options.max-size: {e}"))
                    })?)
                }
                "max-file" => {
                    svc.log_max_files = Some(
                        v.text()
                            .parse::<u32>()
                            .ok()
                            .filter(|n| *n > 0)
                            .ok_or_else(|| {
                                ctx.nowhere(format!(
                                    "service {name}: logging.options.max-file must be a whole number above 0, got {:?}",
                                    v.text()
                                ))
                            })?,
                    )
                }
                other => warnings.push(format!(
                    "services.{name}.logging.options.{other} is ignored: only max-size and max-file apply"
                )),
            }
        }
    }
    if let Some(p) = &k.platform {
        let mut parts = p.value.split('/');
        let os = parts.next().unwrap_or_default();
        if !os.eq_ignore_ascii_case("linux") {
            return ctx.err(
                &p.referenced,
                format!(
                    "service {name}: platform {:?}: Gantry's nodes run linux",
                    p.value
                ),
            );
        }
        if let Some(arch) = parts.next().filter(|a| !a.is_empty()) {
            let c = format!("node.platform.arch=={arch}");
            let parsed = gantry_sched::Constraint::parse(&c)
                .or_else(|e| ctx.err(&p.referenced, format!("service {name}: {e}")))?;
            svc.constraints.push(parsed.to_string());
        }
    }
    Ok(())
}
