//! What a manager sets up at its start besides its store: the address
//! and names it is known by, what a new cluster's first manager stores
//! (the CAs, the join tokens, the settings its flags give), and the
//! renewal of its own certificate.

use std::net::SocketAddr;

use gantry_api::AdminConfig;
use gantry_pki::{ClusterCa, Role};
use gantry_store::Command;

use crate::{
    join, new_join_token, new_manager_token, ServerError, Shared, CERT_EXPIRY_KEY,
    DIRECT_ROUTING_KEY, MANAGER_TOKEN_HASH_KEY, TOKEN_HASH_KEY, VNI_KEY,
};

/// The address the other managers and the clients reach this one at:
/// `advertise` (with the listening port unless it names one), else the
/// listening address (loopback if it listens on every address).
pub(crate) fn reach_of(advertise: &str, addr: SocketAddr) -> String {
    if advertise.is_empty() {
        if addr.ip().is_unspecified() {
            format!("127.0.0.1:{}", addr.port())
        } else {
            addr.to_string()
        }
    } else if gantry_api::has_port(advertise) {
        advertise.to_owned()
    } else if advertise.contains(':') {
        format!("[{advertise}]:{}", addr.port())
    } else {
        format!("{advertise}:{}", addr.port())
    }
}

/// The names a manager's certificate carries besides `gantry-manager`.
pub(crate) fn sans(advertise: &str, addr: SocketAddr) -> Vec<String> {
    let host = advertise
        .rsplit_once(':')
        .filter(|_| gantry_api::has_port(advertise))
        .map_or(advertise, |(h, _)| h)
        .trim_matches(|c| c == '[' || c == ']');
    let mut sans = vec![host.to_owned(), addr.ip().to_string()];
    sans.retain(|s| !s.is_empty());
    sans.dedup();
    sans
}

/// What a new cluster's first manager stores, and what its flags change:
/// the CAs, the join tokens, the default strategy and the overlay's
/// settings. Through the log, as every write.
pub(crate) fn init_cluster(
    sh: &Shared,
    ca: &ClusterCa,
    new_ca: Option<String>,
) -> Result<(), ServerError> {
    let meta = |k: &str| sh.meta(k);
    let set = |k: &str, v: String| Command::SetMeta {
        key: k.into(),
        value: v,
    };
    if let Some(cluster) = new_ca {
        sh.apply(vec![
            set("cluster_id", cluster),
            set("ca_cert", ca.cert_pem().to_owned()),
            set("ca_key", ca.key_pem().to_owned()),
        ])?;
    }
    if meta(TOKEN_HASH_KEY).is_none() {
        let (_, cmds) = new_join_token(ca)?;
        sh.apply(cmds)?;
    }
    if meta(MANAGER_TOKEN_HASH_KEY).is_none() {
        let (_, cmds) = new_manager_token(ca)?;
        sh.apply(cmds)?;
    }
    if meta("edge_ca_key").is_none() {
        let edge =
            ClusterCa::generate(&format!("{}-edge", meta("cluster_id").unwrap_or_default()))?;
        sh.apply(vec![
            set("edge_ca_cert", edge.cert_pem().to_owned()),
            set("edge_ca_key", edge.key_pem().to_owned()),
        ])?;
    }
    let cfg = &sh.cfg;
    if let Some(d) = cfg.cert_expiry {
        let v = d.as_secs().max(1).to_string();
        if meta(CERT_EXPIRY_KEY).as_deref() != Some(v.as_str()) {
            sh.apply(vec![set(CERT_EXPIRY_KEY, v)])?;
        }
    }
    let host_key = join::hostname_key(sh.me);
    if meta(&host_key).as_deref() != Some(cfg.hostname.as_str()) {
        sh.apply(vec![set(&host_key, cfg.hostname.clone())])?;
    }
    let strategy = match cfg.default_strategy {
        gantry_sched::Strategy::Spread => "spread",
        gantry_sched::Strategy::Binpack => "binpack",
    };
    use gantry_manager::network::{BLOCK_PREFIX_KEY, CIDR_KEY};
    let (recorded, has_blocks) = sh.read(|s| {
        (
            gantry_manager::network::plan(s),
            s.nodes.values().any(|n| n.block.is_some()),
        )
    });
    let plan = match cfg.network {
        Some(p) if p != recorded && has_blocks => {
            return Err(ServerError::Config(format!(
                "the cluster's overlay is {} in /{} blocks and nodes hold blocks of it: it cannot change to {} in /{}",
                recorded.cidr, recorded.block_prefix, p.cidr, p.block_prefix
            )))
        }
        Some(p) => p,
        None => recorded,
    };
    let mut cmds = Vec::new();
    for (k, v) in [
        (gantry_manager::DEFAULT_STRATEGY_KEY, strategy.to_owned()),
        (CIDR_KEY, plan.cidr.to_string()),
        (BLOCK_PREFIX_KEY, plan.block_prefix.to_string()),
        (VNI_KEY, cfg.vni.to_string()),
        (DIRECT_ROUTING_KEY, cfg.direct_routing.to_string()),
    ] {
        if meta(k).as_deref() != Some(v.as_str()) {
            cmds.push(set(k, v));
        }
    }
    sh.apply(cmds)?;
    Ok(())
}

/// Writes the admin credential for the CLI on this host, from the CA
/// that issues now and with the roots trusted now.
pub(crate) fn write_admin(sh: &Shared, reach: &str) -> Result<(), ServerError> {
    let admin = sh.ca().issue("admin", Role::Admin, &[])?;
    AdminConfig {
        manager: reach.to_owned(),
        managers: sh.managers().into_iter().map(|m| m.addr).collect(),
        ca_pem: sh.trust_pem(),
        cert_pem: admin.cert_pem,
        key_pem: admin.key_pem,
    }
    .save(&sh.cfg.config_dir)
    .map_err(|e| ServerError::Io(format!("write {}", sh.cfg.config_dir.display()), e))
}
