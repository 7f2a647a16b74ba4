//! Gantry's manager process. It owns the cluster store, serves the cluster
//! API over mutual TLS (one port: nodes join on it without a certificate,
//! everything else needs one from the cluster CA), tracks node heartbeats,
//! streams each node its assignments, and runs the orchestration loop that
//! feeds the store's state to [`gantry_manager::reconcile`] and applies what
//! it returns.
//!
//! **Architecture invariant:** every change of cluster state goes through
//! [`Shared::apply`], one store batch at a time; events and the wake-up of
//! assignment streams follow from the commands applied, nowhere else.

mod acme;
pub use acme::{AcmeConfig, LETS_ENCRYPT};
mod api;
mod assign;
mod backup;
pub use backup::{restore, Backup};
mod edge;
mod events;
mod files;
mod limits;
mod logs;
mod metrics;
mod networks;
mod orchestrate;
mod services;
mod stacks;
mod unlock;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use gantry_api::{AdminConfig, NodeInfo};
use gantry_pki::{ClusterCa, Issued, JoinToken, Role};
use gantry_store::{Command, State, Store, StoreError};
use tokio::net::TcpListener;
use tokio::sync::{watch, Notify};

/// How the manager runs.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// The state lives in `DATA_DIR/manager`.
    pub data_dir: PathBuf,
    /// Where the API listens.
    pub listen: SocketAddr,
    /// The address nodes and the CLI reach the manager at (put in its
    /// certificate and in `join-token`'s hint).
    pub advertise: String,
    /// A node is down after this long without a heartbeat.
    pub grace: Duration,
    /// The storm guard: when more than this share of the nodes goes
    /// silent within one grace, their tasks are held in place instead of
    /// rescheduled (1: never).
    pub storm_ratio: f64,
    /// Where the admin credential is written (the user's config dir).
    pub config_dir: PathBuf,
    /// The scoring strategy of services that name none.
    pub default_strategy: gantry_sched::Strategy,
    /// The overlay's CIDR and block size (none: as recorded, else the
    /// default 10.32.0.0/12 in /24 blocks). Fixed once nodes have blocks.
    pub network: Option<gantry_ipam::Plan>,
    /// The overlay's VXLAN network id.
    pub vni: u32,
    /// Nodes on one subnet route the overlay to each other over the
    /// underlay, without VXLAN.
    pub direct_routing: bool,
    /// DFP routes may take hosts and paths that services' labels route.
    pub dfp_override_labels: bool,
    /// Certificates for public names.
    pub acme: AcmeConfig,
    /// Where the cluster's Prometheus metrics are served, unless `None`.
    pub metrics: Option<SocketAddr>,
    /// Keep the data key at rest only sealed with an unlock key the
    /// operator gives at each start (`gantry unlock`).
    pub autolock: bool,
}

/// Metadata key of the overlay's VXLAN network id.
pub(crate) const VNI_KEY: &str = "vni";
/// Metadata key of the overlay's direct routing (`true` or `false`).
pub(crate) const DIRECT_ROUTING_KEY: &str = "direct_routing";
/// Metadata key of the join token's generation (from which the manager
/// derives the token with the CA key).
pub(crate) const TOKEN_NONCE_KEY: &str = "join_token_nonce";
/// Metadata key of the SHA-256 of the join token's secret.
pub(crate) const TOKEN_HASH_KEY: &str = "join_token_sha256";

/// A new join token and the commands that make it the cluster's: its
/// generation and its secret's hash are stored, never the token itself.
pub(crate) fn new_join_token(
    ca: &ClusterCa,
) -> Result<(JoinToken, Vec<Command>), gantry_pki::PkiError> {
    let nonce = JoinToken::new_nonce();
    let token = JoinToken::derive(ca, &nonce)?;
    let cmds = vec![
        Command::SetMeta {
            key: TOKEN_NONCE_KEY.into(),
            value: nonce,
        },
        Command::SetMeta {
            key: TOKEN_HASH_KEY.into(),
            value: token.secret_hash(),
        },
    ];
    Ok((token, cmds))
}

/// The VXLAN network id when none is given.
pub const DEFAULT_VNI: u32 = 1;

/// A manager-side failure.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Certificates failed.
    #[error(transparent)]
    Pki(#[from] gantry_pki::PkiError),
    /// A setting that cannot be.
    #[error("{0}")]
    Config(String),
    /// I/O (listening, writing the credential).
    #[error("{0}: {1}")]
    Io(String, std::io::Error),
}

/// What every part of the manager shares.
pub(crate) struct Shared {
    pub(crate) cfg: ServerConfig,
    pub(crate) store: Mutex<Store>,
    pub(crate) ca: ClusterCa,
    /// Seals secret values in the store (`DATA_DIR/manager/data.key`,
    /// apart from the store file); none while locked (`unlock.rs`).
    pub(crate) data_key: std::sync::RwLock<Option<gantry_pki::seal::DataKey>>,
    /// The unlock key made at this start (autolock turned on), shown once.
    pub(crate) new_unlock_key: Mutex<Option<gantry_pki::seal::UnlockKey>>,
    /// Signs the edge proxies' certificates for internal names.
    pub(crate) edge_ca: ClusterCa,
    /// When each node last sent a heartbeat.
    pub(crate) seen: Mutex<HashMap<String, Instant>>,
    /// Nodes marked down lately (held or not), for the storm guard.
    pub(crate) downs: Mutex<Vec<(Instant, String)>>,
    pub(crate) started: Instant,
    /// The store index after each applied batch: assignment streams wait
    /// on it.
    pub(crate) changed: watch::Sender<u64>,
    /// The store index and time the internal certificates were last
    /// checked at.
    pub(crate) certs_checked: Mutex<(u64, Instant)>,
    /// Wakes the orchestration loop.
    pub(crate) kick: Notify,
    pub(crate) events: events::Events,
    /// Log subscriptions between clients and agents.
    pub(crate) logs: logs::Broker,
    /// Each node's latest figures, from its reports.
    pub(crate) stats: Mutex<HashMap<String, gantry_api::NodeStats>>,
    pub(crate) counters: metrics::Counters,
    /// The nodes' assignment streams.
    pub(crate) hub: assign::Hub,
    /// Services that changes since the last orchestration step touched
    /// (every one at start).
    pub(crate) dirty: Mutex<gantry_manager::touch::Touched>,
    /// Services not at rest after their last reconcile.
    pub(crate) restless: Mutex<std::collections::BTreeSet<String>>,
    /// When every service was last reconciled.
    pub(crate) swept: Mutex<Instant>,
    /// Failed joins by client address.
    pub(crate) joins: limits::JoinLimiter,
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// A random id like Swarm's: 25 characters of `[a-z0-9]`.
pub(crate) fn new_id() -> String {
    use rand::Rng;
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    let mut r = rand::rng();
    (0..25)
        .map(|_| ALPHABET[r.random_range(0..ALPHABET.len())] as char)
        .collect()
}

impl Shared {
    /// Applies commands as one store batch, then records their events and
    /// wakes the streams.
    pub(crate) fn apply(&self, cmds: Vec<Command>) -> Result<(), StoreError> {
        self.update(|_| cmds)
    }

    /// Read-modify-write: decides commands from the state and applies them
    /// under one lock, so that no report can slip in between and be lost.
    pub(crate) fn update(&self, f: impl FnOnce(&State) -> Vec<Command>) -> Result<(), StoreError> {
        off_the_workers(|| self.update_now(f))
    }

    fn update_now(&self, f: impl FnOnce(&State) -> Vec<Command>) -> Result<(), StoreError> {
        let mut store = self.store.lock().expect("store lock");
        let mut cmds = f(store.state());
        // The secrets and configs the services it puts use are pinned to
        // their newest versions, and a new value rolls its users.
        gantry_manager::files::pin_versions(store.state(), &mut cmds);
        // Every write passes here: the services it puts that need a
        // virtual IP get one (the same for a service created by a deploy,
        // changed by an update, or put by anything else).
        gantry_manager::network::assign_vips(store.state(), &mut cmds);
        if cmds.is_empty() {
            return Ok(());
        }
        let (index, before) = store.apply_batch_before(&cmds)?;
        let evs = events::of(&before.state, store.state(), &cmds);
        self.dirty
            .lock()
            .expect("dirty lock")
            .extend(gantry_manager::touch::touched(
                &before.state,
                store.state(),
                &cmds,
            ));
        drop(store);
        self.events.publish(evs);
        self.changed.send_replace(index);
        self.kick.notify_one();
        Ok(())
    }

    /// Reads the state, with the index of the last command it holds.
    pub(crate) fn read_with_index<T>(&self, f: impl FnOnce(&State) -> T) -> (u64, T) {
        off_the_workers(|| {
            let store = self.store.lock().expect("store lock");
            (store.index(), f(store.state()))
        })
    }

    /// Reads the state without copying it.
    pub(crate) fn read<T>(&self, f: impl FnOnce(&State) -> T) -> T {
        off_the_workers(|| f(self.store.lock().expect("store lock").state()))
    }

    pub(crate) fn meta(&self, key: &str) -> Option<String> {
        self.read(|s| s.meta.get(key).cloned())
    }
}

/// Runs `f`, which waits for the store lock, so that a runtime worker
/// waiting does not hold up the other requests: on a worker of the
/// multi-threaded runtime its other tasks move to another worker first
/// (`block_in_place`). Without this, two handlers waiting for a lock that
/// a long orchestration step or assignment round holds stalled the whole
/// API on two cores, heartbeats included, and every node was marked down
/// at once.
fn off_the_workers<T>(f: impl FnOnce() -> T) -> T {
    use tokio::runtime::{Handle, RuntimeFlavor};
    match Handle::try_current().map(|h| h.runtime_flavor()) {
        Ok(RuntimeFlavor::MultiThread) => tokio::task::block_in_place(f),
        _ => f(),
    }
}

/// Creates `dir` as 0700, and makes it so if it was there.
fn private_dir(dir: &std::path::Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
}

/// A running manager.
pub struct Manager {
    shared: Arc<Shared>,
    addr: SocketAddr,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Manager {
    /// Opens (or initialises) the cluster state, writes the admin
    /// credential, and starts serving.
    pub async fn start(cfg: ServerConfig) -> Result<Self, ServerError> {
        let dir = cfg.data_dir.join("manager");
        private_dir(&dir).map_err(|e| ServerError::Io(format!("create {}", dir.display()), e))?;
        let path = dir.join("state.redb");
        let mut store = Store::open(&path)?;
        // The store holds the CAs' keys: root's alone (redb creates 0644).
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
            .map_err(|e| ServerError::Io(format!("chmod {}", path.display()), e))?;
        let (data_key, new_unlock_key) = unlock::open(&dir, cfg.autolock)?;
        if let Some(key) = &data_key {
            // Keys an older release stored in clear are sealed now.
            edge::seal_stored_keys(&mut store, key)?;
        }
        let meta = |s: &Store, k: &str| s.state().meta.get(k).cloned();
        let ca = match (meta(&store, "ca_cert"), meta(&store, "ca_key")) {
            (Some(c), Some(k)) => {
                ClusterCa::from_pem(&meta(&store, "cluster_id").unwrap_or_default(), &c, &k)
            }
            _ => {
                let cluster = new_id();
                let ca = ClusterCa::generate(&cluster)?;
                store.apply_batch(&[
                    Command::SetMeta {
                        key: "cluster_id".into(),
                        value: cluster,
                    },
                    Command::SetMeta {
                        key: "ca_cert".into(),
                        value: ca.cert_pem().to_owned(),
                    },
                    Command::SetMeta {
                        key: "ca_key".into(),
                        value: ca.key_pem().to_owned(),
                    },
                ])?;
                ca
            }
        };
        if meta(&store, TOKEN_HASH_KEY).is_none() {
            // A new cluster, or one from before only the hash was kept: its
            // token was stored whole, so it is replaced (and removed).
            let plain = meta(&store, "join_token").is_some();
            let (_, mut cmds) = new_join_token(&ca)?;
            cmds.push(Command::SetMeta {
                key: "join_token".into(),
                value: String::new(),
            });
            store.apply_batch(&cmds)?;
            if plain {
                tracing::warn!("the join token was stored in plain text: it is replaced by a new one (`gantry join-token` shows it)");
                // A snapshot now trims the log entries that held it.
                store.snapshot()?;
            }
        }
        let edge_ca = match (meta(&store, "edge_ca_cert"), meta(&store, "edge_ca_key")) {
            (Some(c), Some(k)) => ClusterCa::from_pem(
                &format!("{}-edge", meta(&store, "cluster_id").unwrap_or_default()),
                &c,
                &k,
            ),
            _ => {
                let edge = ClusterCa::generate(&format!(
                    "{}-edge",
                    meta(&store, "cluster_id").unwrap_or_default()
                ))?;
                store.apply_batch(&[
                    Command::SetMeta {
                        key: "edge_ca_cert".into(),
                        value: edge.cert_pem().to_owned(),
                    },
                    Command::SetMeta {
                        key: "edge_ca_key".into(),
                        value: edge.key_pem().to_owned(),
                    },
                ])?;
                edge
            }
        };
        let strategy = match cfg.default_strategy {
            gantry_sched::Strategy::Spread => "spread",
            gantry_sched::Strategy::Binpack => "binpack",
        };
        if meta(&store, gantry_manager::DEFAULT_STRATEGY_KEY).as_deref() != Some(strategy) {
            store.apply(Command::SetMeta {
                key: gantry_manager::DEFAULT_STRATEGY_KEY.into(),
                value: strategy.into(),
            })?;
        }
        use gantry_manager::network::{BLOCK_PREFIX_KEY, CIDR_KEY};
        let recorded = gantry_manager::network::plan(store.state());
        let has_blocks = store.state().nodes.values().any(|n| n.block.is_some());
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
        let mut net_meta = Vec::new();
        for (k, v) in [
            (CIDR_KEY, plan.cidr.to_string()),
            (BLOCK_PREFIX_KEY, plan.block_prefix.to_string()),
            (VNI_KEY, cfg.vni.to_string()),
            (DIRECT_ROUTING_KEY, cfg.direct_routing.to_string()),
        ] {
            if meta(&store, k).as_deref() != Some(v.as_str()) {
                net_meta.push(Command::SetMeta {
                    key: k.into(),
                    value: v,
                });
            }
        }
        store.apply_batch(&net_meta)?;
        let listener = TcpListener::bind(cfg.listen)
            .await
            .map_err(|e| ServerError::Io(format!("listen on {}", cfg.listen), e))?;
        let addr = listener
            .local_addr()
            .map_err(|e| ServerError::Io("local address".into(), e))?;
        let mut sans = vec![cfg.advertise.clone(), addr.ip().to_string()];
        sans.retain(|s| !s.is_empty());
        sans.dedup();
        let me = ca.issue("manager", Role::Manager, &sans)?;
        // The admin credential for the CLI on this host.
        let admin = ca.issue("admin", Role::Admin, &[])?;
        let reach = if addr.ip().is_unspecified() {
            format!("127.0.0.1:{}", addr.port())
        } else {
            addr.to_string()
        };
        AdminConfig {
            manager: reach,
            ca_pem: ca.cert_pem().to_owned(),
            cert_pem: admin.cert_pem,
            key_pem: admin.key_pem,
        }
        .save(&cfg.config_dir)
        .map_err(|e| ServerError::Io(format!("write {}", cfg.config_dir.display()), e))?;
        let (changed, _) = watch::channel(store.index());
        let shared = Arc::new(Shared {
            cfg,
            store: Mutex::new(store),
            ca: ca.clone(),
            data_key: std::sync::RwLock::new(data_key),
            new_unlock_key: Mutex::new(new_unlock_key),
            edge_ca,
            certs_checked: Mutex::new((u64::MAX, Instant::now())),
            seen: Mutex::new(HashMap::new()),
            downs: Mutex::new(Vec::new()),
            started: Instant::now(),
            changed,
            kick: Notify::new(),
            events: events::Events::new(),
            logs: logs::Broker::default(),
            stats: Mutex::new(HashMap::new()),
            counters: metrics::Counters::default(),
            hub: assign::Hub::default(),
            restless: Mutex::new(Default::default()),
            swept: Mutex::new(Instant::now()),
            dirty: Mutex::new(gantry_manager::touch::Touched {
                all: true,
                ..Default::default()
            }),
            joins: limits::JoinLimiter::default(),
        });
        let tls = Arc::new(ca.server_config_join(&me)?);
        let mut tasks = Vec::new();
        if let Some(addr) = shared.cfg.metrics {
            let l = TcpListener::bind(addr).await.map_err(|e| {
                ServerError::Io(
                    format!("metrics: listen on {addr} (change it with --manager-metrics ADDR)"),
                    e,
                )
            })?;
            tracing::info!(addr = ?l.local_addr().ok(), "cluster metrics on /metrics");
            tasks.push(tokio::spawn(metrics::serve(shared.clone(), l)));
        }
        tasks.extend([
            tokio::spawn(api::serve(shared.clone(), listener, tls)),
            tokio::spawn(orchestrate::run(shared.clone())),
            tokio::spawn(assign::run(shared.clone())),
            tokio::spawn(acme::run(shared.clone())),
        ]);
        tracing::info!(%addr, "manager listening");
        Ok(Self {
            shared,
            addr,
            tasks,
        })
    }

    /// Where the API listens.
    /// The unlock key made when autolock was turned on at this start: to
    /// be shown to the operator, once (taken, so a second call gets none).
    pub fn take_new_unlock_key(&self) -> Option<zeroize::Zeroizing<String>> {
        self.shared
            .new_unlock_key
            .lock()
            .expect("unlock key lock")
            .take()
            .map(|k| k.reveal())
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Adds this host as a node of its own cluster (`gantry server --dev`):
    /// a node record and a node certificate, without a token. Returns the
    /// node id and its credential.
    pub fn local_node(&self, info: &NodeInfo) -> Result<(String, Issued), ServerError> {
        let existing = self.shared.read(|s| {
            s.nodes
                .values()
                .find(|n| n.manager && n.hostname == info.hostname)
                .map(|n| n.id.clone())
        });
        let id = existing.unwrap_or_else(new_id);
        let cred = self.shared.ca.issue(&id, Role::Worker, &[])?;
        let mut rec = gantry_manager::report::node_record(&id, info, true);
        self.shared.update(|s| {
            match s.nodes.get(&id) {
                Some(old) => {
                    rec.availability = old.availability;
                    rec.labels = old.labels.clone();
                    rec.block = old.block;
                    rec.last_addr = old.last_addr;
                    rec.vtep_mac = old.vtep_mac.clone();
                }
                None => rec.block = gantry_manager::network::block_for_new_node(s),
            }
            vec![Command::PutNode(rec)]
        })?;
        Ok((id, cred))
    }

    /// The cluster CA certificate.
    pub fn ca_pem(&self) -> String {
        self.shared.ca.cert_pem().to_owned()
    }

    /// Stops serving (the state is already durable).
    pub fn stop(self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(dir: &std::path::Path) -> ServerConfig {
        ServerConfig {
            data_dir: dir.to_owned(),
            listen: "127.0.0.1:0".parse().unwrap(),
            advertise: String::new(),
            grace: Duration::from_secs(3),
            storm_ratio: 0.5,
            config_dir: dir.join("cfg"),
            default_strategy: gantry_sched::Strategy::Spread,
            network: None,
            vni: DEFAULT_VNI,
            direct_routing: false,
            dfp_override_labels: false,
            acme: AcmeConfig {
                directory: None,
                ..AcmeConfig::default()
            },
            metrics: None,
            autolock: false,
        }
    }

    /// A data dir from before certificate keys were sealed (part 6) keeps
    /// them in clear in its store: the manager seals them when it opens
    /// it, and the store's file no longer holds them anywhere.
    #[tokio::test]
    async fn certificate_keys_stored_in_clear_are_sealed_in_place() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("manager")).unwrap();
        let path = dir.path().join("manager/state.redb");
        let ca = ClusterCa::generate("old-edge").unwrap();
        let (issued, not_after_ms) = ca.issue_web(&["shop.test".into()], 90).unwrap();
        let key_pem = issued.key_pem.clone();
        {
            let mut store = Store::open(&path).unwrap();
            store
                .apply(Command::PutCert(gantry_store::CertRecord {
                    name: "shop.test".into(),
                    names: vec!["shop.test".into()],
                    cert_pem: issued.cert_pem.clone(),
                    key_pem: key_pem.clone(),
                    key: None,
                    not_after_ms,
                    source: gantry_store::CertSource::User,
                }))
                .unwrap();
            store.snapshot().unwrap();
        }
        let body = key_pem.lines().nth(1).unwrap().to_owned();
        let holds = |p: &std::path::Path| {
            let b = std::fs::read(p).unwrap();
            b.windows(body.len()).any(|w| w == body.as_bytes())
        };
        assert!(holds(&path), "the old store holds the key in clear");
        let m = Manager::start(config(dir.path())).await.unwrap();
        let rec = m.shared.read(|s| s.certs["shop.test"].clone());
        assert!(rec.key_pem.is_empty() && rec.key.is_some());
        // Still served, with the same key, to an edge node.
        let (certs, withheld) = {
            let key = m.shared.data_key.read().unwrap();
            m.shared.read(|s| edge::certs(s, key.as_ref()))
        };
        assert!(!withheld);
        assert_eq!(certs[0].key_pem, key_pem);
        // Locked, the manager withholds them rather than send none.
        let (none, withheld) = m.shared.read(|s| edge::certs(s, None));
        assert!(none.is_empty() && withheld);
        m.stop();
        assert!(!holds(&path), "the key is still in the store's file");
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    /// A store from before only the hash was kept holds the token whole:
    /// the manager replaces it at start, and the log that held it is
    /// trimmed.
    #[tokio::test]
    async fn a_join_token_stored_whole_is_replaced_and_forgotten() {
        let dir = tempfile::tempdir().unwrap();
        let ca = ClusterCa::generate("old").unwrap();
        let old = JoinToken::derive(&ca, "older").unwrap();
        std::fs::create_dir_all(dir.path().join("manager")).unwrap();
        let path = dir.path().join("manager/state.redb");
        {
            let mut store = Store::open(&path).unwrap();
            let meta = |k: &str, v: String| Command::SetMeta {
                key: k.into(),
                value: v,
            };
            store
                .apply_batch(&[
                    meta("cluster_id", "old".into()),
                    meta("ca_cert", ca.cert_pem().into()),
                    meta("ca_key", ca.key_pem().into()),
                    meta("join_token", old.to_string()),
                ])
                .unwrap();
        }
        let m = Manager::start(config(dir.path())).await.unwrap();
        let meta = m.shared.read(|s| s.meta.clone());
        assert!(!meta.contains_key("join_token"));
        let nonce = &meta[TOKEN_NONCE_KEY];
        let new = JoinToken::derive(&ca, nonce).unwrap();
        assert_eq!(meta[TOKEN_HASH_KEY], new.secret_hash());
        assert!(!new.matches(&old.secret_hash()));
        m.stop();
        let bytes = std::fs::read(&path).unwrap();
        for secret in [&old.secret, &new.secret] {
            assert!(
                !bytes.windows(secret.len()).any(|w| w == secret.as_bytes()),
                "a token's secret is in the store"
            );
        }
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
}
