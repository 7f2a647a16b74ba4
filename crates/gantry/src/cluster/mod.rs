//! The cluster verbs: `server`, `agent`, `join-token`, `deploy` and
//! `stack`, `service`, `node`, `events`. The processes are in
//! gantry-server and gantry-agent; the rest are calls to the manager's API
//! with the admin credential, printed as tables or JSON.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::Context;

use gantry_api::{AdminConfig, Client, NodeView, ServiceView};

use crate::Ctx;

mod build;
mod ca;
mod certs;
mod daemons;
mod events;
mod files;
mod networks;
mod nodes;
mod registry;
mod services;
pub(crate) mod volumes;

pub(crate) use ca::{ca, CaCmd};
pub(crate) use certs::{cert, CertCmd};
pub(crate) use daemons::{agent, server, AgentArgs, ServerArgs};
pub(crate) use events::{events, time_arg, EventsArgs};
pub(crate) use files::{file, unlock, unlock_key, FileCmd, Kind as FileKind};
pub(crate) use networks::{network, NetworkCmd};
pub(crate) use nodes::{join_token, manager, node, ManagerCmd, NodeCmd};
pub(crate) use registry::{registry, registry_tunnel, RegistryCmd};
pub(crate) use services::{deploy, service, stack, ClusterStackCmd, DeployArgs, ServiceCmd};

fn kv(s: &str) -> anyhow::Result<(String, String)> {
    let (k, v) = s
        .split_once('=')
        .with_context(|| format!("{s:?} is not KEY=VALUE"))?;
    anyhow::ensure!(!k.is_empty(), "{s:?} has an empty key");
    Ok((k.to_owned(), v.to_owned()))
}

pub(crate) fn duration(s: &str, what: &str) -> anyhow::Result<Duration> {
    gantry_units::duration_ns(s)
        .map(Duration::from_nanos)
        .map_err(|e| anyhow::anyhow!("{what}: {e}"))
}

/// The client the command made, to keep the managers it learned.
static USED: std::sync::Mutex<Option<(AdminConfig, Client)>> = std::sync::Mutex::new(None);

/// A client of the manager with the admin credential.
pub(crate) fn client(ctx: &Ctx) -> anyhow::Result<Client> {
    let cfg = AdminConfig::load(&ctx.config_dir).map_err(|e| anyhow::anyhow!(e))?;
    let c = Client::admin(&cfg, ctx.host.as_deref())?;
    *USED.lock().expect("client lock") = Some((cfg, c.clone()));
    Ok(c)
}

/// Keeps in the admin credential every manager the command's answers
/// listed, so that the next command finds another when its manager is
/// gone; and says so when an answer may be stale (no manager led).
pub(crate) fn remember_managers(ctx: &Ctx) {
    if let Err(e) = renew_credential(ctx) {
        eprintln!(
            "Warning: the cluster's CA changed and renewing the admin credential failed: {e}"
        );
    }
    let Some((mut cfg, c)) = USED.lock().expect("client lock").take() else {
        return;
    };
    if c.was_stale() {
        eprintln!("Warning: no manager leads the cluster now: this answer may be stale");
    }
    let mut learned = c.managers();
    learned.sort();
    let mut kept = cfg.managers.clone();
    kept.sort();
    // The next command starts with the manager that answered this one
    // (unless -H named one).
    let current = c.current();
    let moved = ctx.host.is_none() && current != cfg.manager;
    if (learned != kept && !learned.is_empty()) || moved {
        cfg.managers = learned;
        if moved {
            cfg.manager = current;
        }
        if let Err(e) = cfg.save(&ctx.config_dir) {
            tracing::debug!("keeping the managers in the credential: {e}");
        }
    }
}

/// Renews the admin credential when the managers' answers name other
/// roots than it trusts (a CA rotation): a certificate of the current CA
/// for a key made here, and the roots as the managers trust them. Returns
/// the client of the renewed credential, if it was renewed.
pub(crate) fn renew_credential(ctx: &Ctx) -> anyhow::Result<Option<Client>> {
    let mut used = USED.lock().expect("client lock");
    let Some((cfg, c)) = used.as_mut() else {
        return Ok(None);
    };
    let seen = c.trust_seen().borrow().clone();
    if seen.is_empty() || gantry_pki::trust_id(&cfg.ca_pem).ok().as_deref() == Some(&seen) {
        return Ok(None);
    }
    let (key_pem, csr_pem) = gantry_pki::new_request()?;
    let r: gantry_api::RenewResponse =
        call(c.post("/v1/admin/renew", &gantry_api::RenewRequest { csr_pem }))?;
    cfg.cert_pem = r.cert_pem;
    cfg.key_pem = key_pem;
    cfg.ca_pem = r.ca_pem;
    cfg.save(&ctx.config_dir)
        .map_err(|e| anyhow::anyhow!("{}: {e}", ctx.config_dir.display()))?;
    let renewed = Client::admin(cfg, Some(&c.current()))?;
    *c = renewed.clone();
    Ok(Some(renewed))
}

fn call<T>(
    f: impl std::future::Future<Output = Result<T, gantry_api::ApiError>>,
) -> anyhow::Result<T> {
    Ok(crate::images::block_on(f)??)
}

/// A service by its full name (`STACK_SERVICE`), or by its short name when
/// only one stack has it.
fn service_name(c: &Client, name: &str) -> anyhow::Result<String> {
    let all: Vec<ServiceView> = call(c.get("/v1/services"))?;
    if all.iter().any(|s| s.record.name == name) {
        return Ok(name.to_owned());
    }
    let suffix = format!("_{name}");
    let hits: Vec<&ServiceView> = all
        .iter()
        .filter(|s| s.record.name.ends_with(&suffix))
        .collect();
    match hits.as_slice() {
        [one] => Ok(one.record.name.clone()),
        [] => anyhow::bail!("no such service: {name}"),
        _ => anyhow::bail!("service {name:?} is in several stacks: use STACK_{name}"),
    }
}

fn hostnames(c: &Client) -> anyhow::Result<BTreeMap<String, String>> {
    let nodes: Vec<NodeView> = call(c.get("/v1/nodes"))?;
    Ok(nodes
        .into_iter()
        .map(|n| (n.record.id, n.record.hostname))
        .collect())
}

fn state_name<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_value(v)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default()
}

fn capitalised(s: &str) -> String {
    let mut c = s.chars();
    c.next()
        .map(|f| f.to_uppercase().collect::<String>() + c.as_str())
        .unwrap_or_default()
}
