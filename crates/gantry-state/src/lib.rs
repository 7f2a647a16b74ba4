//! The cluster state and the commands that change it. Pure: `apply`
//! either changes the state or rejects the command and changes nothing, so
//! replaying the same log always gives the same state (what a Raft state
//! machine needs).

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use gantry_sched::Availability;
use gantry_spec::Service;

mod batch;
mod events;
mod records;
mod registry;
mod secrets;

pub use batch::Before;
pub use events::{EventRecord, EVENTS_KEPT};
pub use records::*;
pub use registry::{BlobRef, ManifestRecord, RegistryUser, RepoRecord, MANIFEST_LIMIT};
pub use secrets::{ConfigRecord, ConfigValue, FileKind, FileMeta, SecretRecord};

/// A change to the cluster state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Command {
    /// A node joined, or re-registered with new facts.
    PutNode(NodeRecord),
    /// A node went up or down.
    SetNodeUp {
        /// The node.
        id: String,
        /// Up or down.
        up: bool,
    },
    /// The storm guard holds a down node's tasks in place, or lets them go
    /// (an operator confirmed the node down). A node coming up is no
    /// longer held.
    SetNodeHeld {
        /// The node.
        id: String,
        /// Held or not.
        held: bool,
        /// Why (for events).
        reason: String,
    },
    /// `node update --availability`, `drain`, `activate`.
    SetAvailability {
        /// The node.
        id: String,
        /// The new availability.
        availability: Availability,
    },
    /// `node update --label-add/--label-rm`.
    SetLabels {
        /// The node.
        id: String,
        /// The labels, whole.
        labels: BTreeMap<String, String>,
    },
    /// `node rm`: only a down node without live tasks.
    RemoveNode {
        /// The node.
        id: String,
    },
    /// Create or change a service (the version is bumped by the store).
    PutService {
        /// `STACK_SERVICE`.
        name: String,
        /// Its stack.
        stack: String,
        /// The spec (boxed: it is much bigger than the other commands).
        spec: Box<Service>,
        /// Its virtual IP, when it gets one now (a service keeps the one
        /// it has).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        vip: Option<std::net::Ipv4Addr>,
    },
    /// Record how the rollout stands.
    SetUpdate {
        /// The service.
        name: String,
        /// The new status.
        status: UpdateStatus,
    },
    /// Go back to the previous version (`gantry service rollback`, or an
    /// update whose failure_action is rollback).
    RollbackService {
        /// The service.
        name: String,
        /// Why.
        reason: String,
        /// Now, milliseconds since the epoch.
        at_ms: u64,
    },
    /// Hold a service with no task, or let it run again (`reason` none).
    PauseService {
        /// The service.
        name: String,
        /// Why it is held.
        reason: Option<String>,
    },
    /// Remove a service and its tasks.
    RemoveService {
        /// The service.
        name: String,
    },
    /// Create or change a task.
    PutTask(TaskRecord),
    /// Forget an ended task.
    RemoveTask {
        /// The task.
        id: String,
    },
    /// Set the DFP routes of a service (on one node or all).
    PutRoutes(RouteRecord),
    /// Remove DFP routes (no-op when absent, as DFP's remove).
    RemoveRoutes {
        /// [`RouteRecord::key`].
        key: String,
    },
    /// Add or replace a certificate.
    PutCert(CertRecord),
    /// Remove a certificate.
    RemoveCert {
        /// Its name.
        name: String,
    },
    /// Create a cluster network.
    PutNetwork(NetworkRecord),
    /// Remove one no service uses.
    RemoveNetwork {
        /// Its name.
        name: String,
    },
    /// Create a secret, or give it a new value or labels.
    PutSecret(SecretRecord),
    /// Remove a secret no service uses.
    RemoveSecret {
        /// Its name.
        name: String,
    },
    /// Create a config, or give it a new value or labels.
    PutConfig(ConfigRecord),
    /// Remove a config no service uses.
    RemoveConfig {
        /// Its name.
        name: String,
    },
    /// Publish an ACME challenge to every proxy.
    PutChallenge(ChallengeRecord),
    /// Withdraw one.
    RemoveChallenge {
        /// [`ChallengeRecord::key`].
        key: String,
    },
    /// Put a manifest in a repository of the cluster's registry, and
    /// point a tag at it.
    PutManifest {
        /// The repository.
        repo: String,
        /// The manifest's digest.
        digest: String,
        /// The manifest.
        manifest: ManifestRecord,
        /// The tag to point at it, if pushed by tag.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        tag: Option<String>,
    },
    /// Delete a manifest and the tags that name it.
    RemoveManifest {
        /// The repository.
        repo: String,
        /// The manifest's digest.
        digest: String,
    },
    /// Delete a tag (not its manifest).
    RemoveTag {
        /// The repository.
        repo: String,
        /// The tag.
        tag: String,
    },
    /// Add a registry user, or give one a new password or access.
    PutRegistryUser(RegistryUser),
    /// Remove a registry user.
    RemoveRegistryUser {
        /// The user.
        name: String,
    },
    /// Where a volume lives now (`gantry volume move`), over where its
    /// service's tasks last ran; none forgets it.
    SetVolumeHome {
        /// The volume.
        volume: String,
        /// The node.
        node: Option<String>,
    },
    /// Where a replicated volume and its standby are.
    PutReplica(ReplicaRecord),
    /// Forget a volume that is replicated no more.
    RemoveReplica {
        /// The volume.
        volume: String,
    },
    /// How a volume's last backup went.
    PutBackup(BackupRecord),
    /// Forget a removed volume's backups record.
    RemoveBackup {
        /// Its key in [`State::backups`] (`NODE/VOLUME`).
        key: String,
    },
    /// A piece of cluster metadata (join token hash, CA certificate, ...).
    SetMeta {
        /// The key.
        key: String,
        /// The value.
        value: String,
    },
}

/// A command that would break the state's rules. It travels in the
/// replicated log's answers, so it serialises.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Rejected {
    /// The node does not exist.
    #[error("no such node: {0}")]
    NoSuchNode(String),
    /// The service does not exist.
    #[error("no such service: {0}")]
    NoSuchService(String),
    /// The task does not exist.
    #[error("no such task: {0}")]
    NoSuchTask(String),
    /// The certificate does not exist.
    #[error("no such certificate: {0}")]
    NoSuchCert(String),
    /// The network does not exist.
    #[error("no such network: {0} (create it with gantry network create {0})")]
    NoSuchNetwork(String),
    /// Services use the network.
    #[error("network {network} is in use by {services}")]
    NetworkInUse {
        /// The network.
        network: String,
        /// The services that use it, comma-separated.
        services: String,
    },
    /// The secret or config does not exist.
    #[error("no such {0}: {1}")]
    NoSuchFile(FileKind, String),
    /// Services use the secret or config.
    #[error("{kind} {name} is in use by {services}")]
    FileInUse {
        /// Secret or config.
        kind: FileKind,
        /// Its name.
        name: String,
        /// The services that use it, comma-separated.
        services: String,
    },
    /// The node is up or still runs tasks.
    #[error("node {0} is up or still has tasks: drain it and stop its agent first")]
    NodeBusy(String),
    /// The service has no previous version.
    #[error("service {0} has no previous version to roll back to")]
    NothingToRollBack(String),
    /// The image (repository, tag or manifest) is not in the registry.
    #[error("no such image in the cluster's registry: {0}")]
    NoSuchImage(String),
    /// The registry user does not exist.
    #[error("no such registry user: {0}")]
    NoSuchRegistryUser(String),
    /// A value the state does not take.
    #[error("{0}")]
    Invalid(String),
    /// The task names a node that does not exist.
    #[error("task {task} names unknown node {node}")]
    UnknownNode {
        /// The task.
        task: String,
        /// The node.
        node: String,
    },
}

/// The whole cluster state.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct State {
    /// Nodes by id.
    pub nodes: BTreeMap<String, NodeRecord>,
    /// Services by name.
    pub services: BTreeMap<String, ServiceRecord>,
    /// Tasks by id.
    pub tasks: BTreeMap<String, TaskRecord>,
    /// Cluster metadata.
    pub meta: BTreeMap<String, String>,
    /// Routes given through the DFP API, by [`RouteRecord::key`].
    #[serde(default)]
    pub routes: BTreeMap<String, RouteRecord>,
    /// Certificates by name.
    #[serde(default)]
    pub certs: BTreeMap<String, CertRecord>,
    /// Pending ACME challenges by [`ChallengeRecord::key`].
    #[serde(default)]
    pub challenges: BTreeMap<String, ChallengeRecord>,
    /// Cluster networks by name.
    #[serde(default)]
    pub networks: BTreeMap<String, NetworkRecord>,
    /// Secrets by name (values sealed).
    #[serde(default)]
    pub secrets: BTreeMap<String, SecretRecord>,
    /// Configs by name.
    #[serde(default)]
    pub configs: BTreeMap<String, ConfigRecord>,
    /// The repositories of the cluster's registry, by name.
    #[serde(default)]
    pub registry: BTreeMap<String, RepoRecord>,
    /// Its password users, by name.
    #[serde(default)]
    pub registry_users: BTreeMap<String, RegistryUser>,
    /// Replicated volumes, by name.
    #[serde(default)]
    pub replicas: BTreeMap<String, ReplicaRecord>,
    /// Where volumes moved to live, by volume name (node ids).
    #[serde(default)]
    pub volume_homes: BTreeMap<String, String>,
    /// The volumes' last backups, by [`BackupRecord::key`].
    #[serde(default)]
    pub backups: BTreeMap<String, BackupRecord>,
    /// The last events, oldest first (see [`State::record_events`]).
    #[serde(default)]
    pub events: std::collections::VecDeque<EventRecord>,
    /// Task ids by node (kept by `apply`; rebuilt by [`State::reindex`]
    /// after decoding).
    #[serde(skip)]
    by_node: BTreeMap<String, BTreeSet<String>>,
    /// Task ids by service (the same).
    #[serde(skip)]
    by_service: BTreeMap<String, BTreeSet<String>>,
}

impl State {
    /// Rebuilds the index of tasks by node (after decoding a state).
    pub fn reindex(&mut self) {
        self.by_node.clear();
        self.by_service.clear();
        for t in self.tasks.values() {
            if let Some(n) = &t.node {
                self.by_node
                    .entry(n.clone())
                    .or_default()
                    .insert(t.id.clone());
            }
            self.by_service
                .entry(t.service.clone())
                .or_default()
                .insert(t.id.clone());
        }
    }

    /// The tasks of a service, ended ones included.
    pub fn tasks_of<'a>(&'a self, service: &str) -> impl Iterator<Item = &'a TaskRecord> + 'a {
        self.by_service
            .get(service)
            .into_iter()
            .flatten()
            .filter_map(|id| self.tasks.get(id))
    }

    /// The tasks placed on a node, ended ones included.
    pub fn tasks_on<'a>(&'a self, node: &str) -> impl Iterator<Item = &'a TaskRecord> + 'a {
        self.by_node
            .get(node)
            .into_iter()
            .flatten()
            .filter_map(|id| self.tasks.get(id))
    }

    fn unindex(&mut self, id: &str) {
        fn out(map: &mut BTreeMap<String, BTreeSet<String>>, key: &str, id: &str) {
            if let Some(set) = map.get_mut(key) {
                set.remove(id);
                if set.is_empty() {
                    map.remove(key);
                }
            }
        }
        let Some(t) = self.tasks.get(id) else { return };
        let (node, service) = (t.node.clone(), t.service.clone());
        if let Some(n) = node {
            out(&mut self.by_node, &n, id);
        }
        out(&mut self.by_service, &service, id);
    }

    fn put_task(&mut self, t: TaskRecord) {
        self.unindex(&t.id);
        if let Some(n) = &t.node {
            self.by_node
                .entry(n.clone())
                .or_default()
                .insert(t.id.clone());
        }
        self.by_service
            .entry(t.service.clone())
            .or_default()
            .insert(t.id.clone());
        self.tasks.insert(t.id.clone(), t);
    }

    fn remove_task(&mut self, id: &str) {
        self.unindex(id);
        self.tasks.remove(id);
    }

    /// Whether a task's node is up, so that traffic can reach it (a task
    /// the storm guard holds on a down node keeps its place, not its
    /// traffic).
    pub fn reachable(&self, t: &TaskRecord) -> bool {
        t.node
            .as_ref()
            .and_then(|n| self.nodes.get(n))
            .is_some_and(|n| n.up)
    }

    /// Checks a command without applying it.
    pub fn check(&self, cmd: &Command) -> Result<(), Rejected> {
        let node = |id: &String| {
            if self.nodes.contains_key(id) {
                Ok(())
            } else {
                Err(Rejected::NoSuchNode(id.clone()))
            }
        };
        match cmd {
            // A service joins only networks that exist.
            Command::PutService { spec, .. } => match spec
                .network_names
                .values()
                .find(|n| !self.networks.contains_key(*n))
            {
                Some(n) => Err(Rejected::NoSuchNetwork(n.clone())),
                None => self.check_files(spec),
            },
            Command::PutSecret(_) | Command::PutConfig(_) => Ok(()),
            Command::PutManifest {
                repo,
                digest,
                manifest,
                ..
            } => self.check_put_manifest(repo, digest, manifest),
            Command::RemoveManifest { repo, digest } => self.check_remove_manifest(repo, digest),
            Command::RemoveTag { repo, tag } => {
                if self
                    .registry
                    .get(repo)
                    .is_some_and(|r| r.tags.contains_key(tag))
                {
                    Ok(())
                } else {
                    Err(Rejected::NoSuchImage(format!("{repo}:{tag}")))
                }
            }
            Command::PutRegistryUser(_)
            | Command::PutBackup(_)
            | Command::RemoveBackup { .. }
            | Command::PutReplica(_)
            | Command::RemoveReplica { .. } => Ok(()),
            Command::SetVolumeHome { node: None, .. } => Ok(()),
            Command::SetVolumeHome {
                node: Some(node), ..
            } => {
                if self.nodes.contains_key(node) {
                    Ok(())
                } else {
                    Err(Rejected::NoSuchNode(node.clone()))
                }
            }
            Command::RemoveRegistryUser { name } => {
                if self.registry_users.contains_key(name) {
                    Ok(())
                } else {
                    Err(Rejected::NoSuchRegistryUser(name.clone()))
                }
            }
            Command::RemoveSecret { name } => self.check_remove_file(FileKind::Secret, name),
            Command::RemoveConfig { name } => self.check_remove_file(FileKind::Config, name),
            Command::PutNetwork(_) => Ok(()),
            Command::RemoveNetwork { name } => {
                if !self.networks.contains_key(name) {
                    return Err(Rejected::NoSuchNetwork(name.clone()));
                }
                let users: Vec<&str> = self
                    .services
                    .values()
                    .filter(|r| r.spec.network_names.values().any(|n| n == name))
                    .map(|r| r.name.as_str())
                    .collect();
                if users.is_empty() {
                    Ok(())
                } else {
                    Err(Rejected::NetworkInUse {
                        network: name.clone(),
                        services: users.join(", "),
                    })
                }
            }
            Command::PutNode(_)
            | Command::SetMeta { .. }
            | Command::PutRoutes(_)
            | Command::RemoveRoutes { .. }
            | Command::PutCert(_)
            | Command::PutChallenge(_)
            | Command::RemoveChallenge { .. } => Ok(()),
            Command::RemoveCert { name } => {
                if self.certs.contains_key(name) {
                    Ok(())
                } else {
                    Err(Rejected::NoSuchCert(name.clone()))
                }
            }
            Command::SetNodeUp { id, .. }
            | Command::SetNodeHeld { id, .. }
            | Command::SetAvailability { id, .. }
            | Command::SetLabels { id, .. } => node(id),
            Command::RemoveNode { id } => {
                node(id)?;
                let live = self.tasks.values().any(|t| {
                    t.node.as_ref() == Some(id)
                        && matches!(t.state, TaskState::Assigned | TaskState::Running)
                });
                if self.nodes[id].up || live {
                    return Err(Rejected::NodeBusy(id.clone()));
                }
                Ok(())
            }
            Command::RemoveService { name }
            | Command::SetUpdate { name, .. }
            | Command::PauseService { name, .. } => {
                if self.services.contains_key(name) {
                    Ok(())
                } else {
                    Err(Rejected::NoSuchService(name.clone()))
                }
            }
            Command::RollbackService { name, .. } => match self.services.get(name) {
                None => Err(Rejected::NoSuchService(name.clone())),
                Some(s) if s.previous.is_none() => Err(Rejected::NothingToRollBack(name.clone())),
                Some(_) => Ok(()),
            },
            Command::PutTask(t) => {
                if !self.services.contains_key(&t.service) {
                    return Err(Rejected::NoSuchService(t.service.clone()));
                }
                match &t.node {
                    Some(n) if !self.nodes.contains_key(n) => Err(Rejected::UnknownNode {
                        task: t.id.clone(),
                        node: n.clone(),
                    }),
                    _ => Ok(()),
                }
            }
            Command::RemoveTask { id } => {
                if self.tasks.contains_key(id) {
                    Ok(())
                } else {
                    Err(Rejected::NoSuchTask(id.clone()))
                }
            }
        }
    }

    /// Applies a command, or rejects it and changes nothing.
    pub fn apply(&mut self, cmd: &Command) -> Result<(), Rejected> {
        self.check(cmd)?;
        match cmd.clone() {
            Command::PutNode(n) => {
                self.nodes.insert(n.id.clone(), n);
            }
            Command::SetNodeUp { id, up } => {
                if let Some(n) = self.nodes.get_mut(&id) {
                    n.up = up;
                    if up {
                        n.held = false;
                    }
                }
            }
            Command::SetNodeHeld { id, held, .. } => {
                if let Some(n) = self.nodes.get_mut(&id) {
                    n.held = held && !n.up;
                }
            }
            Command::SetAvailability { id, availability } => {
                if let Some(n) = self.nodes.get_mut(&id) {
                    n.availability = availability;
                }
            }
            Command::SetLabels { id, labels } => {
                if let Some(n) = self.nodes.get_mut(&id) {
                    n.labels = labels;
                }
            }
            Command::RemoveNode { id } => {
                self.nodes.remove(&id);
                // Ended tasks that pointed at it keep their history, unplaced.
                for tid in self.by_node.remove(&id).unwrap_or_default() {
                    if let Some(t) = self.tasks.get_mut(&tid) {
                        t.node = None;
                    }
                }
            }
            Command::PutService {
                name,
                stack,
                spec,
                vip,
            } => {
                let mut rec = match self.services.get(&name) {
                    // The same spec again changes nothing.
                    Some(old) if old.spec == *spec => old.clone(),
                    Some(old) => {
                        // Version numbers are never reused, across rollbacks too.
                        let newest = old
                            .previous
                            .as_ref()
                            .map_or(old.version, |p| p.0.max(old.version));
                        ServiceRecord {
                            name: name.clone(),
                            stack,
                            version: newest + 1,
                            spec: *spec,
                            previous: Some((old.version, old.spec.clone())),
                            update: UpdateStatus::Updating { since_ms: 0 },
                            vip: old.vip,
                            paused: old.paused.clone(),
                        }
                    }
                    None => ServiceRecord {
                        name: name.clone(),
                        stack,
                        version: 1,
                        spec: *spec,
                        previous: None,
                        update: UpdateStatus::Completed,
                        vip: None,
                        paused: None,
                    },
                };
                if rec.vip.is_none() {
                    rec.vip = vip;
                }
                self.services.insert(name, rec);
            }
            Command::SetUpdate { name, status } => {
                if let Some(s) = self.services.get_mut(&name) {
                    s.update = status;
                }
            }
            Command::PauseService { name, reason } => {
                if let Some(s) = self.services.get_mut(&name) {
                    s.paused = reason;
                }
            }
            Command::RollbackService {
                name,
                reason,
                at_ms,
            } => {
                if let Some(s) = self.services.get_mut(&name) {
                    if let Some((v, spec)) = s.previous.take() {
                        s.previous = Some((s.version, std::mem::replace(&mut s.spec, spec)));
                        s.version = v;
                        s.update = UpdateStatus::RollingBack {
                            since_ms: at_ms,
                            reason,
                        };
                    }
                }
            }
            Command::RemoveService { name } => {
                self.services.remove(&name);
                let gone: Vec<String> = self.tasks_of(&name).map(|t| t.id.clone()).collect();
                for id in gone {
                    self.remove_task(&id);
                }
            }
            Command::PutTask(t) => self.put_task(t),
            Command::RemoveTask { id } => self.remove_task(&id),
            Command::SetMeta { key, value } if value.is_empty() => {
                self.meta.remove(&key);
            }
            Command::SetMeta { key, value } => {
                self.meta.insert(key, value);
            }
            Command::PutRoutes(r) => {
                self.routes
                    .insert(RouteRecord::key(&r.service, r.node.as_deref()), r);
            }
            Command::RemoveRoutes { key } => {
                self.routes.remove(&key);
            }
            Command::PutCert(c) => {
                self.certs.insert(c.name.clone(), c);
            }
            Command::RemoveCert { name } => {
                self.certs.remove(&name);
            }
            Command::PutNetwork(n) => {
                self.networks.insert(n.name.clone(), n);
            }
            Command::RemoveNetwork { name } => {
                self.networks.remove(&name);
            }
            Command::PutSecret(r) => self.put_secret(r),
            Command::RemoveSecret { name } => {
                self.secrets.remove(&name);
            }
            Command::PutConfig(r) => self.put_config(r),
            Command::RemoveConfig { name } => {
                self.configs.remove(&name);
            }
            Command::PutChallenge(c) => {
                self.challenges.insert(c.key(), c);
            }
            Command::RemoveChallenge { key } => {
                self.challenges.remove(&key);
            }
            Command::PutManifest {
                repo,
                digest,
                manifest,
                tag,
            } => self.put_manifest(repo, digest, manifest, tag),
            Command::RemoveManifest { repo, digest } => self.remove_manifest(&repo, &digest),
            Command::RemoveTag { repo, tag } => {
                if let Some(r) = self.registry.get_mut(&repo) {
                    r.tags.remove(&tag);
                }
            }
            Command::PutRegistryUser(u) => {
                self.registry_users.insert(u.name.clone(), u);
            }
            Command::RemoveRegistryUser { name } => {
                self.registry_users.remove(&name);
            }
            Command::PutBackup(r) => {
                self.backups.insert(r.key(), r);
            }
            Command::PutReplica(r) => {
                self.replicas.insert(r.volume.clone(), r);
            }
            Command::RemoveReplica { volume } => {
                self.replicas.remove(&volume);
            }
            Command::SetVolumeHome { volume, node } => match node {
                Some(n) => {
                    self.volume_homes.insert(volume, n);
                }
                None => {
                    self.volume_homes.remove(&volume);
                }
            },
            Command::RemoveBackup { key } => {
                self.backups.remove(&key);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod network_tests;
#[cfg(test)]
mod secret_tests;
