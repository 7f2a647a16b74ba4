//! Stack files: compose-spec YAML as Docker users write it, turned into a
//! validated, normalised [`Stack`] that the manager can deploy. Pure: the
//! caller reads the files; `.env` values and `env_file` contents come in
//! through arguments and a loader.
//!
//! Steps: the YAML is parsed with variables interpolated in each value
//! after it was read, as the Compose spec has it (syntax, type and
//! interpolation errors carry file, line and column), unknown keys and
//! unset variables become warnings that name them, and every value is checked
//! and converted (sizes, CPUs, durations, constraints, ports, mounts,
//! references between services) with its position. [`Stack::to_yaml`] is
//! what `gantry stack config` prints.

mod build;
pub mod check;
mod compat;
mod confine;
mod files;
mod interpolate;
mod keys;
mod mounts;
mod raw;
mod render;
mod service;
mod tree;

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use serde_saphyr::Spanned;

pub use build::{cache_source, Build};
pub use files::{FileDecl, FileSource};
pub use interpolate::{expand, parse_env_file, MAX_FILE};
pub use keys::{support_table, Class};
pub use mounts::{ParseOptions, LOCAL_DRIVER_OPTS};

pub use gantry_spec::{
    Amounts, FileRef, Healthcheck, Mode, Mount, MountType, Port, PortMode, Resolution,
    RestartPolicy, Security, Service, UpdateConfig, VolumeOptions,
};

use gantry_sched::{Constraint, Strategy};
use raw::{ListOrDict, Scalar, StringOrList};

/// A stack file that cannot be deployed: where and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{file}:{line}:{column}: {msg}")]
pub struct StackError {
    /// The file's name as given.
    pub file: String,
    /// 1-based line (0 when the problem has no single place).
    pub line: u64,
    /// 1-based column.
    pub column: u64,
    /// What is wrong.
    pub msg: String,
}

/// A validated stack.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Stack {
    /// Services by name.
    pub services: BTreeMap<String, Service>,
    /// Named volumes it declares, with their options.
    pub volumes: BTreeMap<String, VolumeOptions>,
    /// Networks it declares (`default` always exists).
    pub networks: BTreeSet<String>,
    /// Secrets it declares, by their names in the file.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub secrets: BTreeMap<String, FileDecl>,
    /// Configs it declares.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub configs: BTreeMap<String, FileDecl>,
    /// Service names in an order that honours depends_on.
    pub start_order: Vec<String>,
    /// What `gantry deploy` builds, by service.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub builds: BTreeMap<String, Build>,
}

impl Stack {
    /// The stack as a compose document (`gantry stack config --format
    /// json`): the Compose specification's long forms, Gantry's settings
    /// under `x-gantry`; parsed again, it gives the same stack.
    pub fn to_compose(&self) -> serde_json::Value {
        render::compose(self)
    }

    /// The same as compose YAML (`gantry stack config`).
    pub fn to_yaml(&self) -> String {
        serde_saphyr::to_string(&self.to_compose())
            .unwrap_or_else(|e| format!("# cannot render: {e}\n"))
    }
}

/// A parsed stack and what was worth a warning.
#[derive(Debug, Clone)]
pub struct Parsed {
    /// The stack.
    pub stack: Stack,
    /// Unknown or ignored keys, by path.
    pub warnings: Vec<String>,
}

/// Loads an `env_file` by the name written in the stack file.
pub type EnvFileLoader<'a> = dyn Fn(&str) -> Result<String, String> + 'a;

struct Ctx<'a> {
    file: &'a str,
    /// Where the file names each service, volume and network, and the
    /// top-level keys: errors without a place of their own point there.
    places: BTreeMap<String, serde_saphyr::Location>,
}

impl Ctx<'_> {
    fn err<T>(&self, at: &serde_saphyr::Location, msg: impl Into<String>) -> Result<T, StackError> {
        Err(StackError {
            file: self.file.to_owned(),
            line: at.line(),
            column: at.column(),
            msg: msg.into(),
        })
    }
    /// An error about a whole service, volume or file: placed at the
    /// service's (or volume's) name when the message names one (`service
    /// web: ...`, `volume data: ...`), else at the `services` key, else at
    /// the file's start.
    fn nowhere(&self, msg: impl Into<String>) -> StackError {
        let msg = msg.into();
        let named = |prefix: &str| {
            msg.strip_prefix(prefix).and_then(|rest| {
                let n = rest.split([':', ' ']).next().unwrap_or_default();
                self.places.get(&format!(
                    "{}.{n}",
                    prefix.trim_end_matches(' ').to_owned() + "s"
                ))
            })
        };
        let at = named("service ")
            .or_else(|| named("volume "))
            .or_else(|| self.places.get("services"));
        let (line, column) = at.map_or((1, 1), |l| (l.line(), l.column()));
        StackError {
            file: self.file.to_owned(),
            line,
            column,
            msg,
        }
    }
    fn duration(&self, v: &Option<Spanned<String>>, default: u64) -> Result<u64, StackError> {
        match v {
            None => Ok(default),
            Some(s) => gantry_units::duration_ns(&s.value).or_else(|e| self.err(&s.referenced, e)),
        }
    }
    fn choice(
        &self,
        v: &Option<Spanned<String>>,
        allowed: &[&str],
        default: &str,
        what: &str,
    ) -> Result<String, StackError> {
        match v {
            None => Ok(default.to_owned()),
            Some(s) if allowed.contains(&s.value.as_str()) => Ok(s.value.clone()),
            Some(s) => self.err(
                &s.referenced,
                format!(
                    "invalid {what} {:?}: use one of {}",
                    s.value,
                    allowed.join(", ")
                ),
            ),
        }
    }
}

fn dict(
    v: Option<ListOrDict>,
    lookup: &dyn Fn(&str) -> Option<String>,
) -> BTreeMap<String, String> {
    match v {
        None => BTreeMap::new(),
        Some(ListOrDict::Dict(m)) => m
            .into_iter()
            .filter_map(|(k, v)| match v {
                Some(v) => Some((k, v.text())),
                None => lookup(&k).map(|v| (k, v)),
            })
            .collect(),
        Some(ListOrDict::List(l)) => l
            .into_iter()
            .filter_map(|e| match e.split_once('=') {
                Some((k, v)) => Some((k.to_owned(), v.to_owned())),
                None => lookup(&e).map(|v| (e, v)),
            })
            .collect(),
    }
}

fn list(v: Option<StringOrList>) -> Option<Vec<String>> {
    v.map(|v| match v {
        StringOrList::Many(l) => l,
        StringOrList::One(s) => vec![s],
    })
}

impl Ctx<'_> {
    /// A `command` or `entrypoint`: a list as written, a string split
    /// as a POSIX shell splits words (quotes and backslashes), as Compose
    /// does; no shell runs it.
    fn words(
        &self,
        service: &str,
        key: &str,
        v: Option<Spanned<StringOrList>>,
    ) -> Result<Option<Vec<String>>, StackError> {
        match v {
            None => Ok(None),
            Some(Spanned {
                value: StringOrList::Many(l),
                ..
            }) => Ok(Some(l)),
            Some(Spanned {
                value: StringOrList::One(s),
                referenced,
                ..
            }) => match shlex::split(&s) {
                Some(w) => Ok(Some(w)),
                None => self.err(
                    &referenced,
                    format!("service {service}: {key} has an unterminated quote or a trailing backslash: {s:?} (or write it as a list)"),
                ),
            },
        }
    }
}

/// Parses, interpolates and validates a stack file.
///
/// `file` names it in errors; `env` holds the variables (the process
/// environment with `.env` values added as `docker compose` does);
/// `load_env_file` reads a service's `env_file` entries; relative and `~`
/// bind sources resolve against `paths`.
pub fn parse(
    file: &str,
    text: &str,
    env: &BTreeMap<String, String>,
    load_env_file: &EnvFileLoader<'_>,
    paths: &ParseOptions,
) -> Result<Parsed, StackError> {
    let mut ctx = Ctx {
        file,
        places: BTreeMap::new(),
    };
    if text.len() > interpolate::MAX_FILE {
        return Err(ctx.nowhere(format!(
            "the file is {} bytes; a stack file is at most {}",
            text.len(),
            interpolate::MAX_FILE
        )));
    }
    let yaml_err = |e: serde_saphyr::Error| {
        let (line, column) = e.location().map_or((0, 0), |l| (l.line(), l.column()));
        StackError {
            file: file.to_owned(),
            line,
            column,
            msg: interpolate::yaml_message(&e),
        }
    };
    // The file as written, for the keys and the variables it names.
    let doc: tree::Tree =
        serde_saphyr::from_str_with_options(text, interpolate::yaml_options(None))
            .map_err(yaml_err)?;
    if !matches!(doc, tree::Tree::Map(_)) {
        return Err(ctx.nowhere("a stack file is a mapping with a services key"));
    }
    ctx.places = doc.places();
    let mut warnings = keys::check(&doc).or_else(|(at, msg)| ctx.err(&at, msg))?;
    let mut unset = Vec::new();
    doc.strings(&mut |s| interpolate::unset_references(s, env, &mut unset));
    unset.sort();
    unset.dedup();
    for v in unset {
        warnings.push(format!(
            "the {v} variable is not set; it is replaced by an empty string"
        ));
    }
    let raw: raw::File =
        serde_saphyr::from_str_with_options(text, interpolate::yaml_options(Some(env))).map_err(
            |e| {
                // Name the key whose value is wrong.
                let mut se = yaml_err(e);
                if let Some(k) = doc.key_at(se.line, se.column) {
                    se.msg = format!("{k}: {}", se.msg);
                }
                se
            },
        )?;
    let secrets = files::declared(&ctx, "secret", raw.secrets.unwrap_or_default(), paths)?;
    let volumes = mounts::declared(&ctx, raw.volumes.unwrap_or_default(), &secrets)?;
    let configs = files::declared(&ctx, "config", raw.configs.unwrap_or_default(), paths)?;
    // External networks are the cluster's (`gantry network create`), by
    // the name they have there.
    let mut external_networks: BTreeMap<String, String> = BTreeMap::new();
    let mut internal_networks: BTreeSet<String> = BTreeSet::new();
    let mut own_networks: BTreeMap<String, String> = BTreeMap::new();
    for (key, n) in raw.networks.clone().unwrap_or_default() {
        let n = n.unwrap_or_default();
        if let Some(i) = n.internal.as_ref().filter(|i| i.value) {
            if n.external.is_some() {
                return ctx.err(
                    &i.referenced,
                    format!("network {key}: internal is for a stack's own networks; a cluster network (external) cannot be internal yet"),
                );
            }
            internal_networks.insert(key.clone());
        }
        let external = match n.external.as_ref().map(|e| &e.value) {
            Some(raw::External::Flag(f)) => *f,
            Some(raw::External::Named { name }) => {
                external_networks.insert(key.clone(), name.clone());
                true
            }
            None => false,
        };
        match (&n.name, external) {
            (Some(name), true) => {
                external_networks.insert(key.clone(), name.value.clone());
            }
            (None, true) => {
                external_networks
                    .entry(key.clone())
                    .or_insert_with(|| key.clone());
            }
            (Some(name), false) => {
                own_networks.insert(key.clone(), name.value.clone());
            }
            (None, false) => {}
        }
    }
    for (key, name) in external_networks.iter().chain(&own_networks) {
        if !valid_volume(name) {
            return Err(ctx.nowhere(format!("network {key}: invalid network name {name:?}")));
        }
    }
    let mut networks: BTreeSet<String> = raw.networks.unwrap_or_default().into_keys().collect();
    networks.insert("default".into());
    let mut raw_services = raw
        .services
        .filter(|s| !s.is_empty())
        .ok_or_else(|| ctx.nowhere("the stack has no services"))?;
    // Profiles: a service that has some deploys only when one is active.
    let active = |p: &Vec<String>| {
        p.is_empty() || paths.profiles.contains("*") || p.iter().any(|x| paths.profiles.contains(x))
    };
    let disabled: BTreeMap<String, Vec<String>> = raw_services
        .iter()
        .filter_map(|(n, s)| {
            let p = s.profiles.clone().unwrap_or_default();
            (!active(&p)).then(|| (n.clone(), p))
        })
        .collect();
    raw_services.retain(|n, _| !disabled.contains_key(n));
    if raw_services.is_empty() {
        return Err(ctx.nowhere(format!(
            "every service is in a profile that is not active ({}): give --profile",
            disabled
                .values()
                .flatten()
                .cloned()
                .collect::<BTreeSet<_>>()
                .into_iter()
                .collect::<Vec<_>>()
                .join(", ")
        )));
    }
    for (n, s) in &raw_services {
        if let Some(d) = &s.depends_on {
            let deps: Vec<&String> = match &d.value {
                raw::DependsOn::List(l) => l.iter().collect(),
                raw::DependsOn::Map(m) => m.keys().collect(),
            };
            if let Some((dep, p)) = deps.iter().find_map(|x| disabled.get_key_value(*x)) {
                return ctx.err(
                    &d.referenced,
                    format!("service {n} depends on {dep}, whose profiles ({}) are not active: add --profile {}", p.join(", "), p[0]),
                );
            }
        }
    }
    let names: BTreeSet<String> = raw_services.keys().cloned().collect();
    let mut folded = BTreeMap::new();
    for n in &names {
        if let Some(other) = folded.insert(n.to_ascii_lowercase(), n) {
            return Err(ctx.nowhere(format!(
                "services {other} and {n} differ only in case: their DNS names would be the same"
            )));
        }
    }
    let mut services = BTreeMap::new();
    let mut builds = BTreeMap::new();
    let mut deps_at = BTreeMap::new();
    let mut links = Vec::new();
    for (name, mut s) in raw_services {
        check::service_name(&name).map_err(|e| ctx.nowhere(e))?;
        if let Some(l) = s.links.take() {
            links.push((name.clone(), l));
        }
        if let Some(b) = s.build.clone() {
            let lookup = |k: &str| env.get(k).cloned();
            builds.insert(
                name.clone(),
                build::build(&ctx, &name, b, &secrets, paths, &lookup)?,
            );
        }
        let uses_secrets = s
            .secrets
            .take()
            .map(|v| files::uses(&ctx, &name, "secret", v, &secrets))
            .transpose()?;
        let uses_configs = s
            .configs
            .take()
            .map(|v| files::uses(&ctx, &name, "config", v, &configs))
            .transpose()?;
        let svc = service::service(
            &ctx,
            &name,
            s,
            &names,
            &volumes,
            &networks,
            (&external_networks, &own_networks, &internal_networks),
            env,
            load_env_file,
            paths,
            &mut warnings,
            &mut deps_at,
        )?;
        let mut svc = svc;
        svc.secrets = uses_secrets.unwrap_or_default();
        svc.configs = uses_configs.unwrap_or_default();
        services.insert(name, svc);
    }
    for (name, l) in links {
        link(&ctx, &mut services, &name, l)?;
    }
    for (name, svc) in &services {
        check::service(name, svc).map_err(|e| ctx.nowhere(e))?;
    }
    let start_order = order(&ctx, &services, &deps_at)?;
    Ok(Parsed {
        stack: Stack {
            services,
            volumes,
            networks,
            secrets,
            configs,
            start_order,
            builds,
        },
        warnings,
    })
}

/// Compose's `links` of service `name` (`SERVICE` or `SERVICE:ALIAS`):
/// the alias becomes a DNS name of the linked service on the networks
/// the two share, so that it answers, as in Compose, on the linking
/// service's networks (and, unlike Compose, to every task on them).
fn link(
    ctx: &Ctx<'_>,
    services: &mut BTreeMap<String, Service>,
    name: &str,
    l: serde_saphyr::Spanned<Vec<String>>,
) -> Result<(), StackError> {
    let mine = services[name].networks.clone();
    for entry in &l.value {
        let (target, alias) = entry.split_once(':').unwrap_or((entry, entry));
        let Some(t) = services.get_mut(target) else {
            return ctx.err(
                &l.referenced,
                format!("service {name} links to {target:?}, which is not in the stack (or not in an active profile)"),
            );
        };
        let shared: Vec<String> = t
            .networks
            .iter()
            .filter(|n| mine.contains(n))
            .cloned()
            .collect();
        if shared.is_empty() {
            return ctx.err(
                &l.referenced,
                format!("service {name} links to {target}, with which it shares no network"),
            );
        }
        if alias == target {
            continue; // its own name answers already
        }
        for n in shared {
            t.network_aliases
                .entry(n)
                .or_default()
                .insert(alias.to_owned());
        }
    }
    Ok(())
}

/// A volume's name as Docker has it: letters, digits, `_`, `.` and `-`,
/// from a letter or digit.
fn valid_volume(n: &str) -> bool {
    n.starts_with(|c: char| c.is_ascii_alphanumeric())
        && n.len() <= 255
        && n.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}

/// A service's or network's name: letters (either case, as Compose and
/// Swarm allow; DNS reads them without case), digits, `-` and `_`, from a
/// letter or digit. (Compose's `.` would split a DNS name.)
fn valid_name(n: &str) -> bool {
    n.starts_with(|c: char| c.is_ascii_alphanumeric())
        && n.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

/// Orders services so that each comes after what it depends on; a cycle
/// is an error naming its services.
fn order(
    ctx: &Ctx<'_>,
    services: &BTreeMap<String, Service>,
    deps_at: &BTreeMap<String, serde_saphyr::Location>,
) -> Result<Vec<String>, StackError> {
    let mut done: Vec<String> = Vec::new();
    let mut left: BTreeSet<&String> = services.keys().collect();
    while !left.is_empty() {
        let ready: Vec<&String> = left
            .iter()
            .copied()
            .filter(|n| services[*n].depends_on.iter().all(|d| done.contains(d)))
            .collect();
        if ready.is_empty() {
            let cycle: Vec<&str> = left.iter().map(|s| s.as_str()).collect();
            let msg = format!("depends_on forms a cycle among {}", cycle.join(", "));
            return match left.iter().find_map(|n| deps_at.get(*n)) {
                Some(at) => ctx.err(at, msg),
                None => Err(ctx.nowhere(msg)),
            };
        }
        for r in ready {
            left.remove(r);
            done.push(r.clone());
        }
    }
    Ok(done)
}

#[cfg(test)]
mod files_tests;
#[cfg(test)]
mod tests;
