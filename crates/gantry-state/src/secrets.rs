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
    /// Its value, base64.
    pub data: String,
}

/// Secrets or configs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
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

impl State {
    /// The services that use secret (or config) `name`, comma-separated.
    pub fn file_users(&self, kind: FileKind, name: &str) -> Vec<String> {
        self.services
            .values()
            .filter(|r| {
                let refs = match kind {
                    FileKind::Secret => &r.spec.secrets,
                    FileKind::Config => &r.spec.configs,
                };
                refs.iter().any(|f| f.source == name)
            })
            .map(|r| r.name.clone())
            .collect()
    }

    /// A service may name only secrets and configs that exist.
    pub(crate) fn check_files(&self, spec: &gantry_spec::Service) -> Result<(), Rejected> {
        if let Some(f) = spec
            .secrets
            .iter()
            .find(|f| !self.secrets.contains_key(&f.source))
        {
            return Err(Rejected::NoSuchFile(FileKind::Secret, f.source.clone()));
        }
        if let Some(f) = spec
            .configs
            .iter()
            .find(|f| !self.configs.contains_key(&f.source))
        {
            return Err(Rejected::NoSuchFile(FileKind::Config, f.source.clone()));
        }
        Ok(())
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
