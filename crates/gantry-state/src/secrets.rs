//! Secrets and configs (compose's top-level `secrets:` and `configs:`):
//! named values that services' tasks see as files. A secret's value is
//! kept sealed with the cluster's data key ([`gantry_pki::seal`]): the
//! state, its log and its snapshots never hold it in clear. A config's is
//! kept as it is (Docker's `config inspect` shows it too).
//!
//! One is removed only when no service uses it; a service is put only with
//! the secrets and configs it names.

use std::collections::BTreeMap;

use gantry_pki::seal::Sealed;
use serde::{Deserialize, Serialize};

use crate::{Rejected, State};

/// What a secret and a config both have besides their value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileMeta {
    /// Its name.
    pub name: String,
    /// Its labels.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Bumped when its value changes (from 1).
    pub version: u64,
    /// When it was made, ms since the epoch.
    pub created_ms: u64,
    /// When its value last changed.
    pub updated_ms: u64,
}

impl FileMeta {
    /// What one named `name` is after a put at `now` of a value that is
    /// `same` as `old`'s (or new) with `labels`: none when nothing changes;
    /// a new value bumps the version.
    pub fn after_put(
        old: Option<&FileMeta>,
        name: &str,
        labels: &BTreeMap<String, String>,
        same: bool,
        now: u64,
    ) -> Option<FileMeta> {
        let (version, created_ms, updated_ms) = match old {
            Some(o) if same && &o.labels == labels => return None,
            Some(o) if same => (o.version, o.created_ms, o.updated_ms),
            Some(o) => (o.version + 1, o.created_ms, now),
            None => (1, now, now),
        };
        Some(FileMeta {
            name: name.to_owned(),
            labels: labels.clone(),
            version,
            created_ms,
            updated_ms,
        })
    }
}

/// A secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SecretRecord {
    /// Name, labels, version.
    #[serde(flatten)]
    pub meta: FileMeta,
    /// Its value, sealed, bound to [`SecretRecord::aad`].
    pub value: Sealed,
    /// Older values that services' specs (current or previous, for
    /// rollback) pin, by version: when a new value is put, those no spec
    /// pins go (the users still pin the one it replaces, until they roll
    /// to it; it goes with the next value).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub older: BTreeMap<u64, Sealed>,
}

impl SecretRecord {
    /// What a secret's value is bound to when sealed: its name and
    /// version, so that a sealed value moved onto another secret, or an
    /// older one put back, does not open.
    pub fn aad(name: &str, version: u64) -> Vec<u8> {
        format!("gantry secret {name} v{version}").into_bytes()
    }
}

/// A config.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConfigRecord {
    /// Name, labels, version.
    #[serde(flatten)]
    pub meta: FileMeta,
    /// Its value.
    #[serde(flatten)]
    pub value: ConfigValue,
    /// Older values still pinned (as a secret's).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub older: BTreeMap<u64, ConfigValue>,
}

/// A config's value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConfigValue {
    /// The bytes, base64.
    pub data: String,
    /// A file template filled for each task
    /// ([`gantry_spec::template::render_file`]; compose's
    /// `template_driver: golang`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub template: bool,
}

impl SecretRecord {
    /// Its current value, opened with the cluster's data key.
    pub fn open(
        &self,
        key: &gantry_pki::seal::DataKey,
    ) -> Result<zeroize::Zeroizing<Vec<u8>>, gantry_pki::seal::SealError> {
        key.open(&self.value, &Self::aad(&self.meta.name, self.meta.version))
    }

    /// The sealed value of `version`, if kept.
    pub fn at(&self, version: u64) -> Option<&Sealed> {
        if version == self.meta.version {
            Some(&self.value)
        } else {
            self.older.get(&version)
        }
    }
}

impl ConfigRecord {
    /// The value of `version`, if kept.
    pub fn at(&self, version: u64) -> Option<&ConfigValue> {
        if version == self.meta.version {
            Some(&self.value)
        } else {
            self.older.get(&version)
        }
    }
}

/// Secrets or configs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FileKind {
    /// `secret`.
    Secret,
    /// `config`.
    Config,
}

impl std::fmt::Display for FileKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Secret => "secret",
            Self::Config => "config",
        })
    }
}

/// The secrets a service's volume backups name (their keys and S3
/// settings).
fn backup_secrets(spec: &gantry_spec::Service) -> impl Iterator<Item = &String> {
    spec.volumes
        .iter()
        .filter_map(|m| m.volume.backup.as_ref())
        .flat_map(|b| std::iter::once(&b.key).chain(b.credentials.as_ref()))
}

impl State {
    /// The services that use secret (or config) `name`, comma-separated.
    pub fn file_users(&self, kind: FileKind, name: &str) -> Vec<String> {
        self.services
            .values()
            .filter(|r| match kind {
                FileKind::Secret => {
                    r.spec.secrets.iter().any(|f| f.source == name)
                        || backup_secrets(&r.spec).any(|n| n == name)
                }
                FileKind::Config => r.spec.configs.iter().any(|f| f.source == name),
            })
            .map(|r| r.name.clone())
            .collect()
    }

    /// A service may name only secrets and configs that exist, in a
    /// version that is kept (0: the newest, pinned when it is stored).
    pub(crate) fn check_files(&self, spec: &gantry_spec::Service) -> Result<(), Rejected> {
        if let Some(f) = spec.secrets.iter().find(|f| {
            self.secrets
                .get(&f.source)
                .is_none_or(|r| f.version != 0 && r.at(f.version).is_none())
        }) {
            return Err(Rejected::NoSuchFile(FileKind::Secret, f.source.clone()));
        }
        if let Some(n) = backup_secrets(spec).find(|n| !self.secrets.contains_key(*n)) {
            return Err(Rejected::NoSuchFile(FileKind::Secret, n.clone()));
        }
        if let Some(f) = spec.configs.iter().find(|f| {
            self.configs
                .get(&f.source)
                .is_none_or(|r| f.version != 0 && r.at(f.version).is_none())
        }) {
            return Err(Rejected::NoSuchFile(FileKind::Config, f.source.clone()));
        }
        Ok(())
    }

    /// The versions of secret (or config) `name` that services' specs,
    /// current and previous, pin.
    fn pinned_versions(&self, kind: FileKind, name: &str) -> std::collections::BTreeSet<u64> {
        let refs = |s: &gantry_spec::Service| match kind {
            FileKind::Secret => s.secrets.clone(),
            FileKind::Config => s.configs.clone(),
        };
        self.services
            .values()
            .flat_map(|r| {
                std::iter::once(&r.spec)
                    .chain(r.previous.as_ref().map(|p| &p.1))
                    .flat_map(refs)
            })
            .filter(|f| f.source == name)
            .map(|f| f.version)
            .collect()
    }

    /// Puts a secret: the value it replaces joins the older ones, and of
    /// those only the versions a spec pins stay.
    pub(crate) fn put_secret(&mut self, mut r: SecretRecord) {
        let name = r.meta.name.clone();
        let old = self
            .secrets
            .remove(&name)
            .map(|o| (o.meta.version, o.value, o.older));
        let pinned = self.pinned_versions(FileKind::Secret, &name);
        keep_pinned(&mut r.older, r.meta.version, old, &pinned);
        self.secrets.insert(name, r);
    }

    /// Puts a config, as [`State::put_secret`].
    pub(crate) fn put_config(&mut self, mut r: ConfigRecord) {
        let name = r.meta.name.clone();
        let old = self
            .configs
            .remove(&name)
            .map(|o| (o.meta.version, o.value, o.older));
        let pinned = self.pinned_versions(FileKind::Config, &name);
        keep_pinned(&mut r.older, r.meta.version, old, &pinned);
        self.configs.insert(name, r);
    }

    /// One is removed only when it exists and no service uses it.
    pub(crate) fn check_remove_file(&self, kind: FileKind, name: &str) -> Result<(), Rejected> {
        let exists = match kind {
            FileKind::Secret => self.secrets.contains_key(name),
            FileKind::Config => self.configs.contains_key(name),
        };
        if !exists {
            return Err(Rejected::NoSuchFile(kind, name.to_owned()));
        }
        let users = self.file_users(kind, name);
        if users.is_empty() {
            Ok(())
        } else {
            Err(Rejected::FileInUse {
                kind,
                name: name.to_owned(),
                services: users.join(", "),
            })
        }
    }
}

/// The older values of one put at `version`: those it had, and the one it
/// replaces (`old`: version, value, older values), of which only the
/// `pinned` versions stay.
fn keep_pinned<V>(
    older: &mut BTreeMap<u64, V>,
    version: u64,
    old: Option<(u64, V, BTreeMap<u64, V>)>,
    pinned: &std::collections::BTreeSet<u64>,
) {
    if let Some((v, value, o)) = old {
        older.extend(o);
        if v != version {
            older.insert(v, value);
        }
    }
    older.retain(|v, _| pinned.contains(v) && *v != version);
}
