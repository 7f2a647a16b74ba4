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
mod builds;
mod ca;
pub use backup::{restore, Backup};
mod edge;
mod events;
mod files;
mod forward;
mod group;
mod join;
mod limits;
mod logs;
mod metrics;
mod networks;
mod nodes;
mod orchestrate;
mod registry;
mod services;
mod setup;
mod stacks;
mod unlock;
mod volume_backups;
mod volume_move;
mod volume_replicas;
mod volumes;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use gantry_api::NodeInfo;
use gantry_pki::{ClusterCa, Issued, JoinToken, Role};
use gantry_store::{Batch, Change, Command, MemberId, State, Store, StoreError};
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
    /// Join the managers of an existing cluster (an address of one of
    /// them, and the manager join token) instead of starting one.
    pub join: Option<(String, String)>,
    /// Start a group of one from this manager's state, dropping the other
    /// managers (after a quorum was lost for good).
    pub force_new_cluster: bool,
    /// This manager's host name (`node ls` shows a manager on the node of
    /// the same name).
    pub hostname: String,
    /// How long node and manager certificates are valid (none: as
    /// recorded, else 90 days); they are renewed when a third is left.
    pub cert_expiry: Option<Duration>,
    /// Registries the builds on this manager reach over plain HTTP
    /// (`--insecure-registry`).
    pub insecure_registries: Vec<String>,
}

/// Metadata key of the overlay's VXLAN network id.
pub(crate) const VNI_KEY: &str = "vni";
/// Metadata key of the overlay's direct routing (`true` or `false`).
pub(crate) const DIRECT_ROUTING_KEY: &str = "direct_routing";
/// Metadata key of how long node and manager certificates are valid
/// (seconds).
pub(crate) const CERT_EXPIRY_KEY: &str = "cert_expiry_secs";
/// Metadata key of the join token's generation (from which the manager
/// derives the token with the CA key).
pub(crate) const TOKEN_NONCE_KEY: &str = "join_token_nonce";
/// Metadata key of the SHA-256 of the join token's secret.
pub(crate) const TOKEN_HASH_KEY: &str = "join_token_sha256";

/// Metadata key of the manager join token's generation.
pub(crate) const MANAGER_TOKEN_NONCE_KEY: &str = "manager_token_nonce";
/// Metadata key of the SHA-256 of the manager join token's secret.
pub(crate) const MANAGER_TOKEN_HASH_KEY: &str = "manager_token_sha256";

/// A new manager join token (a token of its own, as Swarm's: a worker's
/// token does not make a manager) and the commands that make it the
/// cluster's.
pub(crate) fn new_manager_token(
    ca: &ClusterCa,
) -> Result<(JoinToken, Vec<Command>), gantry_pki::PkiError> {
    let nonce = format!("manager {}", JoinToken::new_nonce());
    let token = JoinToken::derive(ca, &nonce)?;
    let cmds = vec![
        Command::SetMeta {
            key: MANAGER_TOKEN_NONCE_KEY.into(),
            value: nonce,
        },
        Command::SetMeta {
            key: MANAGER_TOKEN_HASH_KEY.into(),
            value: token.secret_hash(),
        },
    ];
    Ok((token, cmds))
}

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

/// How long a write waits for a quorum of managers.
const WRITE_WAIT: Duration = Duration::from_secs(10);

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
    /// Raft would not start, or the group did not form.
    #[error("managers: {0}")]
    Group(String),
}

/// What every part of the manager shares.
pub(crate) struct Shared {
    pub(crate) cfg: ServerConfig,
    /// The state machine, which Raft applies the log to; read it here.
    pub(crate) store: Arc<Mutex<Store>>,
    pub(crate) raft: group::Raft,
    /// This manager's id in the group.
    pub(crate) me: MemberId,
    /// Held from reading the state a write is decided on until its batch
    /// is applied (see [`Shared::update`]).
    pub(crate) propose: Mutex<()>,
    /// The runtime, for waiting on Raft from the synchronous write path.
    pub(crate) rt: tokio::runtime::Handle,
    /// The other managers.
    pub(crate) peers: group::Peers,
    /// This manager's certificate as it presents it, its PEM (for its
    /// expiry) and the names it carries.
    pub(crate) my_cert: (Arc<gantry_pki::LiveCert>, Mutex<Issued>, Vec<String>),
    /// The roots this manager trusts, as the state names them (two
    /// during a CA rotation).
    pub(crate) trust: Arc<gantry_pki::Trust>,
    /// The connection requests are forwarded on to the leader over.
    pub(crate) to_leader: forward::ToLeader,
    /// Seals secret values in the store (`DATA_DIR/manager/data.key`,
    /// apart from the store file); none while locked (`unlock.rs`).
    pub(crate) data_key: std::sync::RwLock<Option<gantry_pki::seal::DataKey>>,
    /// The unlock key made at this start (autolock turned on), shown once.
    pub(crate) new_unlock_key: Mutex<Option<gantry_pki::seal::UnlockKey>>,
    /// When each node last sent a heartbeat.
    pub(crate) seen: Mutex<HashMap<String, Instant>>,
    /// Nodes marked down lately (held or not), for the storm guard.
    pub(crate) downs: Mutex<Vec<(Instant, String)>>,
    pub(crate) started: Instant,
    /// Held while the group's membership changes (one change at a time).
    pub(crate) membership: tokio::sync::Mutex<()>,
    /// This manager, removed from the voters while leading, is making
    /// way for another leader (see `group::step_down`).
    pub(crate) stepping_down: std::sync::atomic::AtomicBool,
    /// Since when this manager leads (none: it does not).
    pub(crate) leading_since: Mutex<Option<Instant>>,
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
    /// Each node's latest measurement of its volumes, from its reports.
    pub(crate) volumes: Mutex<HashMap<String, gantry_api::HeldVolumes>>,
    /// The backup repositories a job is using.
    pub(crate) backup_jobs: volume_backups::Jobs,
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
    /// The registry's blobs on this manager's disk.
    pub(crate) blobs: registry::Blobs,
    /// Fetches the blobs this manager lacks from the others.
    pub(crate) fetcher: registry::Fetcher,
    /// The nodes that fetched blobs whole from this manager.
    pub(crate) holders: registry::Holders,
    /// The address nodes and clients reach this manager at (`HOST:PORT`,
    /// and so the name of the cluster's registry on it).
    pub(crate) reach: String,
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
        let _turn = self.propose.lock().expect("propose lock");
        let cmds = {
            let store = self.store.lock().expect("store lock");
            let mut cmds = f(store.state());
            // The secrets and configs the services it puts use are pinned
            // to their newest versions, and a new value rolls its users.
            gantry_manager::files::pin_versions(store.state(), &mut cmds);
            // Every write passes here: the services it puts that need a
            // virtual IP get one (the same for a service created by a
            // deploy, changed by an update, or put by anything else).
            gantry_manager::network::assign_vips(store.state(), &mut cmds);
            cmds
        };
        if cmds.is_empty() {
            return Ok(());
        }
        self.propose_now(cmds)
    }

    /// Proposes a batch and waits until it is applied here (or refused).
    fn propose_now(&self, cmds: Vec<Command>) -> Result<(), StoreError> {
        use openraft::error::{ClientWriteError, RaftError};
        let batch = Batch {
            cmds,
            at_ms: now_ms(),
        };
        if !self.is_leader() {
            // Not proposed: the client may send it again.
            return Err(StoreError::Unavailable(self.no_leader_message()));
        }
        let write = tokio::time::timeout(WRITE_WAIT, self.raft.client_write(batch));
        match self.rt.block_on(write) {
            Ok(Ok(r)) => r.data.map_err(StoreError::Rejected),
            Ok(Err(RaftError::APIError(ClientWriteError::ForwardToLeader(_)))) => {
                Err(StoreError::Unavailable(self.no_leader_message()))
            }
            Ok(Err(e)) => Err(StoreError::Unavailable(format!(
                "the write may not have been applied: {e}"
            ))),
            Err(_) => Err(StoreError::Unavailable(format!(
                "a quorum of managers did not confirm the write within {} s: it is applied only if they do once they are back",
                WRITE_WAIT.as_secs()
            ))),
        }
    }

    /// What every applied batch sets off, on every manager: its events,
    /// the services it touched, the streams' and the loop's wake-ups.
    fn on_change(&self, c: Change<'_>) {
        match c {
            Change::Batch {
                index,
                before,
                state,
                cmds,
                events,
            } => {
                if cmds
                    .iter()
                    .any(|c| matches!(c, Command::PutManifest { .. }))
                {
                    self.fetcher.kick.notify_one();
                }
                self.events.publish(events);
                self.dirty
                    .lock()
                    .expect("dirty lock")
                    .extend(gantry_manager::touch::touched(&before.state, state, cmds));
                self.changed.send_replace(index);
            }
            Change::Replaced { index } => {
                self.fetcher.kick.notify_one();
                self.dirty.lock().expect("dirty lock").all = true;
                self.changed.send_replace(index);
            }
        }
        self.kick.notify_one();
    }

    /// The cluster CA, as the state holds it, signing certificates valid
    /// for the cluster's `--cert-expiry`.
    pub(crate) fn ca(&self) -> ClusterCa {
        self.read(|s| {
            let m = |k: &str| s.meta.get(k).cloned().unwrap_or_default();
            let expiry = m(CERT_EXPIRY_KEY)
                .parse()
                .unwrap_or(gantry_pki::CERT_EXPIRY_SECS);
            ClusterCa::from_pem(&m("cluster_id"), &m("ca_cert"), &m("ca_key"))
                .with_leaf_validity(expiry)
                .with_chain(&m(ca::CROSS_KEY))
        })
    }

    /// The CA of the edge proxies' certificates for internal names.
    pub(crate) fn edge_ca(&self) -> ClusterCa {
        self.read(|s| {
            let m = |k: &str| s.meta.get(k).cloned().unwrap_or_default();
            ClusterCa::from_pem(
                &format!("{}-edge", m("cluster_id")),
                &m("edge_ca_cert"),
                &m("edge_ca_key"),
            )
        })
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

    /// The other managers' addresses.
    pub(crate) fn other_managers(&self) -> Vec<String> {
        let m = self.raft.metrics().borrow().membership_config.clone();
        m.membership()
            .nodes()
            .filter(|(id, _)| **id != self.me)
            .map(|(_, n)| n.addr.clone())
            .collect()
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
    /// Opens (or initialises) the cluster state, joins or forms the
    /// managers' group, writes the admin credential, and starts serving.
    pub async fn start(cfg: ServerConfig) -> Result<Self, ServerError> {
        let dir = cfg.data_dir.join("manager");
        private_dir(&dir).map_err(|e| ServerError::Io(format!("create {}", dir.display()), e))?;
        let listener = TcpListener::bind(cfg.listen)
            .await
            .map_err(|e| ServerError::Io(format!("listen on {}", cfg.listen), e))?;
        let addr = listener
            .local_addr()
            .map_err(|e| ServerError::Io("local address".into(), e))?;
        let reach = setup::reach_of(&cfg.advertise, addr);
        let me = join::member_id(&dir)?;
        let path = dir.join("state.redb");
        let mut store = Store::open(&path)?;
        // The store holds the CAs' keys: root's alone (redb creates 0644).
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
            .map_err(|e| ServerError::Io(format!("chmod {}", path.display()), e))?;
        if cfg.force_new_cluster {
            if !store.state().meta.contains_key("ca_key") {
                return Err(ServerError::Config(
                    "--force-new-cluster needs this manager's state: its data dir holds none"
                        .into(),
                ));
            }
            store.bootstrap(me, &reach)?;
            tracing::warn!(member = me, "a new group of one manager from this manager's state: the other managers are dropped (join new ones with gantry join-token manager)");
        } else if !store.is_bootstrapped() {
            match &cfg.join {
                None => store.bootstrap(me, &reach)?,
                Some((to, token)) if !dir.join(join::CREDENTIAL_FILE).exists() => {
                    join::join(&dir, to, token, me, &reach, &cfg.hostname).await?;
                }
                Some(_) => {}
            }
        }
        let (data_key, new_unlock_key) = unlock::open(&dir, cfg.autolock)?;
        // What an older release stored in clear leaves the disk now: a
        // join token stored whole, certificate keys.
        if store
            .state()
            .meta
            .get("join_token")
            .is_some_and(|t| !t.is_empty())
        {
            store.migrate_in_place(|s| {
                s.meta.remove("join_token");
                s.meta.remove(TOKEN_HASH_KEY);
            })?;
            store.rewrite()?;
            tracing::warn!("the join token was stored in plain text: it is replaced by a new one (`gantry join-token` shows it)");
        }
        if let Some(key) = &data_key {
            edge::seal_stored_keys(&mut store, key)?;
        }
        // Who this manager is to the others and to its clients: a
        // certificate from the cluster CA it holds, or, joining, the one
        // the leader signed.
        let meta = |s: &Store, k: &str| s.state().meta.get(k).cloned();
        let mut new_ca = None;
        let (ca, trust, cert) = match (meta(&store, "ca_cert"), meta(&store, "ca_key")) {
            (Some(c), Some(k)) => {
                let ca =
                    ClusterCa::from_pem(&meta(&store, "cluster_id").unwrap_or_default(), &c, &k)
                        .with_chain(&meta(&store, ca::CROSS_KEY).unwrap_or_default());
                let cert =
                    ca.issue("manager", Role::Manager, &setup::sans(&cfg.advertise, addr))?;
                (ca, meta(&store, ca::TRUST_KEY).unwrap_or(c), cert)
            }
            _ if store.is_bootstrapped() => {
                let cluster = new_id();
                let ca = ClusterCa::generate(&cluster)?;
                let cert =
                    ca.issue("manager", Role::Manager, &setup::sans(&cfg.advertise, addr))?;
                new_ca = Some(cluster);
                let trust = ca.cert_pem().to_owned();
                (ca, trust, cert)
            }
            _ => {
                let (trust, cert) = join::credential(&dir)?;
                (ClusterCa::from_pem("", &trust, ""), trust, cert)
            }
        };
        // Presented and trusted live: renewed and rotated in place
        // (`ca::follow`).
        let live = gantry_pki::LiveCert::new(&cert)?;
        let trust = gantry_pki::Trust::new(&trust)?;
        let peers = group::Peers::default();
        peers.set_tls(trust.client_config(live.clone())?);
        let tls = Arc::new(trust.server_config_join(live.clone())?);
        let my_sans = setup::sans(&cfg.advertise, addr);
        let single = store.is_bootstrapped() && gantry_store::voters(store.members()).len() == 1;
        let log = store.log_store();
        let store = Arc::new(Mutex::new(store));
        let raft = group::Raft::new(
            me,
            Arc::new(
                group::config()
                    .validate()
                    .map_err(|e| ServerError::Group(e.to_string()))?,
            ),
            group::Network(peers.clone()),
            log,
            gantry_store::Machine(store.clone()),
        )
        .await
        .map_err(|e| ServerError::Group(e.to_string()))?;
        // Builds a crash cut short leave their contexts and secrets: gone.
        let _ = std::fs::remove_dir_all(dir.join("builds"));
        let blobs = registry::Blobs::open(&dir)
            .map_err(|e| ServerError::Io(format!("registry in {}", dir.display()), e))?;
        let index = store.lock().expect("store lock").index();
        let (changed, _) = watch::channel(index);
        let shared = Arc::new(Shared {
            cfg,
            store,
            raft,
            me,
            propose: Mutex::new(()),
            rt: tokio::runtime::Handle::current(),
            peers,
            my_cert: (live, Mutex::new(cert.clone()), my_sans),
            trust,
            to_leader: Default::default(),
            data_key: std::sync::RwLock::new(data_key),
            new_unlock_key: Mutex::new(new_unlock_key),
            certs_checked: Mutex::new((u64::MAX, Instant::now())),
            seen: Mutex::new(HashMap::new()),
            downs: Mutex::new(Vec::new()),
            started: Instant::now(),
            leading_since: Mutex::new(None),
            stepping_down: Default::default(),
            membership: Default::default(),
            changed,
            kick: Notify::new(),
            events: events::Events::new(),
            logs: logs::Broker::default(),
            stats: Mutex::new(HashMap::new()),
            volumes: Mutex::new(HashMap::new()),
            backup_jobs: Default::default(),
            counters: metrics::Counters::default(),
            hub: assign::Hub::default(),
            restless: Mutex::new(Default::default()),
            swept: Mutex::new(Instant::now()),
            dirty: Mutex::new(gantry_manager::touch::Touched {
                all: true,
                ..Default::default()
            }),
            joins: limits::JoinLimiter::default(),
            blobs,
            fetcher: registry::Fetcher::default(),
            holders: registry::Holders::default(),
            reach: reach.clone(),
        });
        let weak = Arc::downgrade(&shared);
        shared
            .store
            .lock()
            .expect("store lock")
            .set_hook(Box::new(move |c| {
                if let Some(sh) = weak.upgrade() {
                    sh.on_change(c);
                }
            }));
        let mut tasks = vec![tokio::spawn(api::serve(shared.clone(), listener, tls))];
        if single {
            // A group of one: this manager leads once its election is
            // over, and applies what its flags set.
            group::wait_leader(&shared, Duration::from_secs(10)).await?;
            setup::init_cluster(&shared, &ca, new_ca)?;
        } else {
            // Joining, or one of several: the state (and its CA) comes
            // from the leader.
            group::wait_state(&shared, Duration::from_secs(120)).await?;
        }
        let ca = shared.ca();
        if ca.key_pem().is_empty() {
            return Err(ServerError::Config(
                "the cluster state holds no CA: this data dir is not a manager's".into(),
            ));
        }
        // Issued again now that the state is whole (the cluster's
        // certificate lifetime included), and kept for the next start.
        let cert = ca.issue("manager", Role::Manager, &shared.my_cert.2)?;
        shared.my_cert.0.replace(&cert)?;
        *shared.my_cert.1.lock().expect("cert lock") = cert.clone();
        shared.trust.set(&shared.trust_pem())?;
        join::save_credential(&dir, &shared.trust_pem(), &cert)?;
        setup::write_admin(&shared, &reach)?;
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
            tokio::spawn(ca::follow(shared.clone(), reach.clone())),
            tokio::spawn(orchestrate::run(shared.clone())),
            tokio::spawn(assign::run(shared.clone())),
            tokio::spawn(acme::run(shared.clone())),
            tokio::spawn(volume_backups::run(shared.clone())),
            tokio::spawn(volume_replicas::run(shared.clone())),
            tokio::spawn(registry::run(shared.clone())),
        ]);
        tracing::info!(%addr, member = me, "manager listening");
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
        let cred = self.shared.ca().issue(&id, Role::Worker, &[])?;
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
        self.shared.ca().cert_pem().to_owned()
    }

    /// Stops serving (the state is already durable).
    pub async fn stop(self) {
        for t in &self.tasks {
            t.abort();
        }
        if let Err(e) = self.shared.raft.shutdown().await {
            tracing::warn!("stopping Raft: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(dir: &std::path::Path) -> ServerConfig {
        ServerConfig {
            insecure_registries: Vec::new(),
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
            join: None,
            force_new_cluster: false,
            hostname: "test".into(),
            cert_expiry: None,
        }
    }

    /// A data dir from before certificate keys were sealed (part 6) keeps
    /// them in clear in its store: the manager seals them when it opens
    /// it, and the store's file no longer holds them anywhere.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn certificate_keys_stored_in_clear_are_sealed_in_place() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("manager")).unwrap();
        let path = dir.path().join("manager/state.redb");
        let ca = ClusterCa::generate("old-edge").unwrap();
        let (issued, not_after_ms) = ca.issue_web(&["shop.test".into()], 90).unwrap();
        let key_pem = issued.key_pem.clone();
        {
            // As a single manager of part 6 left it (migrated, so its
            // state is the snapshot).
            let mut state = State::default();
            state
                .apply(&Command::PutCert(gantry_store::CertRecord {
                    name: "shop.test".into(),
                    names: vec!["shop.test".into()],
                    cert_pem: issued.cert_pem.clone(),
                    key_pem: key_pem.clone(),
                    key: None,
                    not_after_ms,
                    source: gantry_store::CertSource::User,
                }))
                .unwrap();
            Store::create_from(&path, state).unwrap();
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
        m.stop().await;
        assert!(!holds(&path), "the key is still in the store's file");
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    /// A store from before only the hash was kept holds the token whole:
    /// the manager replaces it at start, and the log that held it is
    /// trimmed.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_join_token_stored_whole_is_replaced_and_forgotten() {
        let dir = tempfile::tempdir().unwrap();
        let ca = ClusterCa::generate("old").unwrap();
        let old = JoinToken::derive(&ca, "older").unwrap();
        std::fs::create_dir_all(dir.path().join("manager")).unwrap();
        let path = dir.path().join("manager/state.redb");
        {
            let mut state = State::default();
            for (k, v) in [
                ("cluster_id", "old".to_owned()),
                ("ca_cert", ca.cert_pem().into()),
                ("ca_key", ca.key_pem().into()),
                ("join_token", old.to_string()),
            ] {
                state.meta.insert(k.into(), v);
            }
            Store::create_from(&path, state).unwrap();
        }
        let m = Manager::start(config(dir.path())).await.unwrap();
        let meta = m.shared.read(|s| s.meta.clone());
        assert!(!meta.contains_key("join_token"));
        let nonce = &meta[TOKEN_NONCE_KEY];
        let new = JoinToken::derive(&ca, nonce).unwrap();
        assert_eq!(meta[TOKEN_HASH_KEY], new.secret_hash());
        assert!(!new.matches(&old.secret_hash()));
        m.stop().await;
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
