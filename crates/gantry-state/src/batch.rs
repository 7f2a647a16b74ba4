//! What a batch of commands can change: each command's entries of the
//! state ([`Key`]), copied before the batch ([`State::before`]) and put
//! back when it cannot be kept ([`State::restore`]).

use std::collections::BTreeMap;

use crate::{Command, RouteRecord, State};

/// An entry of the state a command can change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Key {
    Node(String),
    Service(String),
    Task(String),
    Meta(String),
    Route(String),
    Cert(String),
    Challenge(String),
    Network(String),
    Secret(String),
    Config(String),
    Repo(String),
    RegistryUser(String),
    Backup(String),
    VolumeHome(String),
    Replica(String),
}

/// The entries a batch of commands can change, as they were before it:
/// what [`State::restore`] puts back if the batch cannot be kept, and what
/// events compare the new state against. Its cost is that of the entries,
/// not of the state.
#[derive(Debug, Clone, Default)]
pub struct Before {
    /// Those entries (absent ones absent).
    pub state: State,
    keys: Vec<Key>,
}

impl State {
    pub(crate) fn keys(&self, cmd: &Command) -> Vec<Key> {
        match cmd {
            Command::PutNode(n) => vec![Key::Node(n.id.clone())],
            Command::SetNodeUp { id, .. }
            | Command::SetNodeHeld { id, .. }
            | Command::SetAvailability { id, .. }
            | Command::SetLabels { id, .. } => vec![Key::Node(id.clone())],
            Command::RemoveNode { id } => std::iter::once(Key::Node(id.clone()))
                .chain(self.tasks_on(id).map(|t| Key::Task(t.id.clone())))
                .collect(),
            Command::PutService { name, .. }
            | Command::SetUpdate { name, .. }
            | Command::PauseService { name, .. }
            | Command::RollbackService { name, .. } => vec![Key::Service(name.clone())],
            Command::RemoveService { name } => std::iter::once(Key::Service(name.clone()))
                .chain(self.tasks_of(name).map(|t| Key::Task(t.id.clone())))
                .collect(),
            Command::PutTask(t) => vec![Key::Task(t.id.clone())],
            Command::RemoveTask { id } => vec![Key::Task(id.clone())],
            Command::SetMeta { key, .. } => vec![Key::Meta(key.clone())],
            Command::PutRoutes(r) => {
                vec![Key::Route(RouteRecord::key(&r.service, r.node.as_deref()))]
            }
            Command::RemoveRoutes { key } => vec![Key::Route(key.clone())],
            Command::PutCert(c) => vec![Key::Cert(c.name.clone())],
            Command::RemoveCert { name } => vec![Key::Cert(name.clone())],
            Command::PutNetwork(n) => vec![Key::Network(n.name.clone())],
            Command::RemoveNetwork { name } => vec![Key::Network(name.clone())],
            Command::PutSecret(r) => vec![Key::Secret(r.meta.name.clone())],
            Command::RemoveSecret { name } => vec![Key::Secret(name.clone())],
            Command::PutConfig(r) => vec![Key::Config(r.meta.name.clone())],
            Command::RemoveConfig { name } => vec![Key::Config(name.clone())],
            Command::PutChallenge(c) => vec![Key::Challenge(c.key())],
            Command::RemoveChallenge { key } => vec![Key::Challenge(key.clone())],
            Command::PutManifest { repo, .. }
            | Command::RemoveManifest { repo, .. }
            | Command::RemoveTag { repo, .. } => vec![Key::Repo(repo.clone())],
            Command::PutRegistryUser(u) => vec![Key::RegistryUser(u.name.clone())],
            Command::RemoveRegistryUser { name } => vec![Key::RegistryUser(name.clone())],
            Command::PutBackup(r) => vec![Key::Backup(r.key())],
            Command::SetVolumeHome { volume, .. } => vec![Key::VolumeHome(volume.clone())],
            Command::PutReplica(r) => vec![Key::Replica(r.volume.clone())],
            Command::RemoveReplica { volume } => vec![Key::Replica(volume.clone())],
            Command::RemoveBackup { key } => vec![Key::Backup(key.clone())],
        }
    }

    /// The entries `cmds` can change, as they are now.
    pub fn before(&self, cmds: &[Command]) -> Before {
        let mut b = Before::default();
        for cmd in cmds {
            for k in self.keys(cmd) {
                if b.keys.contains(&k) {
                    continue;
                }
                let st = &mut b.state;
                match &k {
                    Key::Node(id) => copy_entry(&mut st.nodes, &self.nodes, id),
                    Key::Service(id) => copy_entry(&mut st.services, &self.services, id),
                    // Tasks are indexed by service and node.
                    Key::Task(id) => {
                        if let Some(v) = self.tasks.get(id) {
                            st.put_task(v.clone());
                        }
                    }
                    Key::Meta(id) => copy_entry(&mut st.meta, &self.meta, id),
                    Key::Route(id) => copy_entry(&mut st.routes, &self.routes, id),
                    Key::Cert(id) => copy_entry(&mut st.certs, &self.certs, id),
                    Key::Challenge(id) => copy_entry(&mut st.challenges, &self.challenges, id),
                    Key::Network(id) => copy_entry(&mut st.networks, &self.networks, id),
                    Key::Secret(id) => copy_entry(&mut st.secrets, &self.secrets, id),
                    Key::Config(id) => copy_entry(&mut st.configs, &self.configs, id),
                    Key::Repo(id) => copy_entry(&mut st.registry, &self.registry, id),
                    Key::RegistryUser(id) => {
                        copy_entry(&mut st.registry_users, &self.registry_users, id)
                    }
                    Key::Backup(id) => copy_entry(&mut st.backups, &self.backups, id),
                    Key::VolumeHome(id) => copy_entry(&mut st.volume_homes, &self.volume_homes, id),
                    Key::Replica(id) => copy_entry(&mut st.replicas, &self.replicas, id),
                }
                b.keys.push(k);
            }
        }
        b
    }

    /// Puts back the entries of `before` (the batch it was taken for is
    /// undone, whichever of its commands applied).
    pub fn restore(&mut self, before: &Before) {
        let b = &before.state;
        for k in &before.keys {
            match k {
                Key::Node(id) => copy_entry(&mut self.nodes, &b.nodes, id),
                Key::Service(id) => copy_entry(&mut self.services, &b.services, id),
                // Tasks are indexed by service and node.
                Key::Task(id) => match b.tasks.get(id) {
                    Some(v) => self.put_task(v.clone()),
                    None => self.remove_task(id),
                },
                Key::Meta(id) => copy_entry(&mut self.meta, &b.meta, id),
                Key::Route(id) => copy_entry(&mut self.routes, &b.routes, id),
                Key::Cert(id) => copy_entry(&mut self.certs, &b.certs, id),
                Key::Challenge(id) => copy_entry(&mut self.challenges, &b.challenges, id),
                Key::Network(id) => copy_entry(&mut self.networks, &b.networks, id),
                Key::Secret(id) => copy_entry(&mut self.secrets, &b.secrets, id),
                Key::Config(id) => copy_entry(&mut self.configs, &b.configs, id),
                Key::Repo(id) => copy_entry(&mut self.registry, &b.registry, id),
                Key::RegistryUser(id) => {
                    copy_entry(&mut self.registry_users, &b.registry_users, id)
                }
                Key::Backup(id) => copy_entry(&mut self.backups, &b.backups, id),
                Key::VolumeHome(id) => copy_entry(&mut self.volume_homes, &b.volume_homes, id),
                Key::Replica(id) => copy_entry(&mut self.replicas, &b.replicas, id),
            }
        }
    }
}

/// Makes `map[id]` what it is in `from` (there, or absent).
fn copy_entry<V: Clone>(map: &mut BTreeMap<String, V>, from: &BTreeMap<String, V>, id: &str) {
    match from.get(id) {
        Some(v) => {
            map.insert(id.to_owned(), v.clone());
        }
        None => {
            map.remove(id);
        }
    }
}
