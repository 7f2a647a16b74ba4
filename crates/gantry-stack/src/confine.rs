//! The service keys that say how a container's process is confined and
//! what it resolves: `cap_add`, `cap_drop`, `security_opt`, `sysctls`,
//! `ulimits`, `init`, `extra_hosts`, `dns`, `dns_search`, `dns_opt`.

use std::collections::BTreeMap;
use std::net::IpAddr;

use serde_saphyr::Spanned;

use crate::raw::{ListOrDict, StringOrList, Ulimit};
use crate::{Ctx, Resolution, Security, StackError};

/// The keys, as written.
#[derive(Default)]
pub(crate) struct Keys {
    pub(crate) cap_add: Option<Spanned<Vec<String>>>,
    pub(crate) cap_drop: Option<Spanned<Vec<String>>>,
    pub(crate) security_opt: Option<Spanned<Vec<String>>>,
    pub(crate) sysctls: Option<Spanned<ListOrDict>>,
    pub(crate) ulimits: Option<Spanned<BTreeMap<String, Ulimit>>>,
    pub(crate) init: Option<bool>,
    pub(crate) extra_hosts: Option<Spanned<ListOrDict>>,
    pub(crate) dns: Option<Spanned<StringOrList>>,
    pub(crate) dns_search: Option<Spanned<StringOrList>>,
    pub(crate) dns_opt: Option<Spanned<Vec<String>>>,
}

fn words(v: StringOrList) -> Vec<String> {
    match v {
        StringOrList::One(s) => vec![s],
        StringOrList::Many(l) => l,
    }
}

/// A word that becomes part of a line of `/etc/hosts` or
/// `/etc/resolv.conf`: no blank, no control character.
fn word(w: &str) -> bool {
    !w.is_empty() && !w.chars().any(|c| c.is_whitespace() || c.is_control())
}

/// Reads the keys into the service's security and resolution settings.
pub(crate) fn read(
    ctx: &Ctx<'_>,
    name: &str,
    k: Keys,
    warnings: &mut Vec<String>,
) -> Result<(Security, Resolution), StackError> {
    let mut sec = Security::default();
    let mut res = Resolution::default();
    for (list, out) in [
        (k.cap_add, &mut sec.cap_add),
        (k.cap_drop, &mut sec.cap_drop),
    ] {
        let Some(l) = list else { continue };
        for c in &l.value {
            let c = gantry_units::capability(c)
                .or_else(|e| ctx.err(&l.referenced, format!("service {name}: {e}")))?;
            out.push(c);
        }
    }
    if let Some(opts) = k.security_opt {
        for o in &opts.value {
            // Docker writes `key=value` and, formerly, `key:value`.
            let (key, value) = o
                .split_once('=')
                .or_else(|| o.split_once(':'))
                .unwrap_or((o.as_str(), ""));
            match (key, value) {
                ("no-new-privileges", "" | "true") => {}
                ("no-new-privileges", "false") => warnings.push(format!(
                    "services.{name}.security_opt: no-new-privileges:false is ignored: Gantry's tasks always run with no-new-privileges"
                )),
                ("seccomp", "unconfined") => sec.seccomp_unconfined = true,
                ("seccomp", _) => {
                    return ctx.err(
                        &opts.referenced,
                        format!("service {name}: security_opt {o:?}: a seccomp profile file is not supported: use the default, or seccomp=unconfined"),
                    )
                }
                ("apparmor" | "label", _) => warnings.push(format!(
                    "services.{name}.security_opt: {o:?} is ignored: Gantry's nodes apply no AppArmor or SELinux profile"
                )),
                _ => {
                    return ctx.err(
                        &opts.referenced,
                        format!("service {name}: unknown security_opt {o:?}: use no-new-privileges, seccomp=unconfined, apparmor=... or label=..."),
                    )
                }
            }
        }
    }
    if let Some(s) = k.sysctls {
        for (key, v) in crate::dict(Some(s.value), &|_| None) {
            gantry_units::namespaced_sysctl(&key, false)
                .or_else(|e| ctx.err(&s.referenced, format!("service {name}: {e}")))?;
            if v.chars().any(char::is_control) {
                return ctx.err(
                    &s.referenced,
                    format!("service {name}: sysctl {key}: the value holds a control character"),
                );
            }
            sec.sysctls.insert(key, v);
        }
    }
    if let Some(u) = k.ulimits {
        for (key, v) in u.value {
            if !gantry_units::ULIMITS.contains(&key.as_str()) {
                return ctx.err(
                    &u.referenced,
                    format!(
                        "service {name}: unknown ulimit {key:?}: use {}",
                        gantry_units::ULIMITS.join(", ")
                    ),
                );
            }
            let (soft, hard) = match v {
                Ulimit::One(n) => (n, n),
                Ulimit::Pair { soft, hard } => (soft, hard),
            };
            // -1 is "unlimited", as Docker reads it.
            let lim = |n: i64| if n < 0 { u64::MAX } else { n as u64 };
            let (soft, hard) = (lim(soft), lim(hard));
            if soft > hard {
                return ctx.err(
                    &u.referenced,
                    format!("service {name}: ulimit {key}: soft {soft} is above hard {hard}"),
                );
            }
            sec.ulimits.insert(key, (soft, hard));
        }
    }
    sec.init = k.init.unwrap_or(false);
    if let Some(h) = k.extra_hosts {
        let pairs: Vec<(String, String)> = match h.value {
            ListOrDict::Dict(m) => m
                .into_iter()
                .map(|(k, v)| (k, v.map(|v| v.text()).unwrap_or_default()))
                .collect(),
            ListOrDict::List(l) => l
                .into_iter()
                .map(|e| {
                    // HOST=IP, or HOST:IP (an IPv6 address keeps its colons).
                    let (h, a) = e
                        .split_once('=')
                        .or_else(|| e.split_once(':'))
                        .unwrap_or((e.as_str(), ""));
                    (h.to_owned(), a.to_owned())
                })
                .collect(),
        };
        for (host, addr) in pairs {
            let a = addr.trim_start_matches('[').trim_end_matches(']');
            let ip = if a == "host-gateway" {
                return ctx.err(
                    &h.referenced,
                    format!("service {name}: extra_hosts {host}: host-gateway is not supported: give the node's address"),
                );
            } else {
                a.parse::<IpAddr>().or_else(|_| {
                    ctx.err(
                        &h.referenced,
                        format!(
                            "service {name}: extra_hosts {host}: {addr:?} is not an IP address"
                        ),
                    )
                })?
            };
            if !word(&host) {
                return ctx.err(
                    &h.referenced,
                    format!("service {name}: extra_hosts: invalid host name {host:?}"),
                );
            }
            res.extra_hosts.push((host, ip));
        }
    }
    if let Some(d) = k.dns {
        for a in words(d.value) {
            let ip = a.parse::<IpAddr>().or_else(|_| {
                ctx.err(
                    &d.referenced,
                    format!("service {name}: dns {a:?} is not an IP address"),
                )
            })?;
            res.dns.push(ip);
        }
    }
    if let Some(d) = k.dns_search {
        for s in words(d.value) {
            if !word(&s) {
                return ctx.err(
                    &d.referenced,
                    format!("service {name}: invalid dns_search domain {s:?}"),
                );
            }
            res.dns_search.push(s);
        }
    }
    if let Some(d) = k.dns_opt {
        for s in d.value {
            if !word(&s) {
                return ctx.err(
                    &d.referenced,
                    format!("service {name}: invalid dns_opt {s:?}"),
                );
            }
            res.dns_opt.push(s);
        }
    }
    Ok((sec, res))
}
