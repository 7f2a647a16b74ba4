//! The cluster's registry as the state holds it: repositories, their
//! manifests (small, byte for byte as pushed) and tags, and the users that
//! may push and pull with a password. The blobs the manifests name are not
//! here: each manager keeps them on its disk, content-addressed, and
//! fetches the ones it lacks from the others by digest.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::{Rejected, State};

/// The largest manifest the state keeps (Distribution's limit is 4 MiB;
/// an image manifest is a few KiB, an index of many platforms tens).
pub const MANIFEST_LIMIT: usize = 256 * 1024;

/// A repository: its manifests by digest and its tags.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RepoRecord {
    /// Its name (`shop/web`).
    pub name: String,
    /// Manifests by digest.
    #[serde(default)]
    pub manifests: BTreeMap<String, ManifestRecord>,
    /// Tag to manifest digest.
    #[serde(default)]
    pub tags: BTreeMap<String, String>,
}

/// A manifest pushed to a repository.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManifestRecord {
    /// Its media type (the `Content-Type` it was pushed with).
    pub media_type: String,
    /// The manifest, exactly the bytes pushed (JSON, so UTF-8): its digest
    /// names them.
    pub body: String,
    /// The blobs it names (config and layers): digest and size.
    #[serde(default)]
    pub blobs: Vec<BlobRef>,
    /// The manifests it names (an index's), by digest.
    #[serde(default)]
    pub children: Vec<String>,
    /// When it was pushed, ms since the epoch.
    pub pushed_ms: u64,
}

/// A blob a manifest names.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlobRef {
    /// `sha256:...`.
    pub digest: String,
    /// Its size in bytes.
    pub size: u64,
}

/// Someone who may use the registry with a password (`gantry login`,
/// `docker login`); clients with a certificate of the cluster need none.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegistryUser {
    /// The user name.
    pub name: String,
    /// SHA-256 (hex) of the password, which the manager made (32 random
    /// bytes: a plain hash is enough, there is nothing to guess).
    pub password_sha256: String,
    /// May push and delete, not only pull.
    pub push: bool,
    /// When it was made, ms since the epoch.
    pub created_ms: u64,
}

impl RepoRecord {
    /// The digest a reference (tag or digest) names here.
    pub fn resolve(&self, reference: &str) -> Option<&str> {
        if reference.starts_with("sha256:") {
            self.manifests
                .get_key_value(reference)
                .map(|(k, _)| k.as_str())
        } else {
            self.tags.get(reference).map(String::as_str)
        }
    }
}

impl State {
    /// Every blob digest some manifest of the registry names.
    pub fn registry_blobs(&self) -> std::collections::BTreeSet<&str> {
        self.registry
            .values()
            .flat_map(|r| r.manifests.values())
            .flat_map(|m| m.blobs.iter().map(|b| b.digest.as_str()))
            .collect()
    }

    pub(crate) fn check_put_manifest(
        &self,
        repo: &str,
        digest: &str,
        m: &ManifestRecord,
    ) -> Result<(), Rejected> {
        if m.body.len() > MANIFEST_LIMIT {
            return Err(Rejected::Invalid(format!(
                "manifest {digest} is {} bytes, over the {MANIFEST_LIMIT} the registry keeps",
                m.body.len()
            )));
        }
        let known = self.registry.get(repo);
        for child in &m.children {
            if known.is_none_or(|r| !r.manifests.contains_key(child)) {
                return Err(Rejected::NoSuchImage(format!("{repo}@{child}")));
            }
        }
        Ok(())
    }

    pub(crate) fn check_remove_manifest(&self, repo: &str, digest: &str) -> Result<(), Rejected> {
        let Some(r) = self.registry.get(repo) else {
            return Err(Rejected::NoSuchImage(format!("{repo}@{digest}")));
        };
        if !r.manifests.contains_key(digest) {
            return Err(Rejected::NoSuchImage(format!("{repo}@{digest}")));
        }
        if let Some(parent) = r
            .manifests
            .iter()
            .find(|(_, m)| m.children.iter().any(|c| c == digest))
        {
            return Err(Rejected::Invalid(format!(
                "{repo}@{digest} is part of index {}: delete that first",
                parent.0
            )));
        }
        Ok(())
    }

    pub(crate) fn put_manifest(
        &mut self,
        repo: String,
        digest: String,
        m: ManifestRecord,
        tag: Option<String>,
    ) {
        let r = self
            .registry
            .entry(repo.clone())
            .or_insert_with(|| RepoRecord {
                name: repo,
                ..RepoRecord::default()
            });
        // A digest pushed again keeps the first push's record.
        r.manifests.entry(digest.clone()).or_insert(m);
        if let Some(tag) = tag {
            r.tags.insert(tag, digest);
        }
    }

    pub(crate) fn remove_manifest(&mut self, repo: &str, digest: &str) {
        if let Some(r) = self.registry.get_mut(repo) {
            r.manifests.remove(digest);
            r.tags.retain(|_, d| d != digest);
            if r.manifests.is_empty() {
                self.registry.remove(repo);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Command;

    fn manifest(body: &str, children: &[&str]) -> ManifestRecord {
        ManifestRecord {
            media_type: "application/vnd.oci.image.manifest.v1+json".into(),
            body: body.into(),
            blobs: vec![BlobRef {
                digest: "sha256:aa".into(),
                size: 2,
            }],
            children: children.iter().map(|c| (*c).to_owned()).collect(),
            pushed_ms: 1,
        }
    }

    fn put(repo: &str, digest: &str, tag: Option<&str>, children: &[&str]) -> Command {
        Command::PutManifest {
            repo: repo.into(),
            digest: digest.into(),
            manifest: manifest("{}", children),
            tag: tag.map(str::to_owned),
        }
    }

    #[test]
    fn tags_follow_pushes_and_deletes_take_their_tags() {
        let mut s = State::default();
        s.apply(&put("shop/web", "sha256:1", Some("v1"), &[]))
            .unwrap();
        s.apply(&put("shop/web", "sha256:2", Some("v1"), &[]))
            .unwrap();
        s.apply(&put("shop/web", "sha256:2", Some("latest"), &[]))
            .unwrap();
        let r = &s.registry["shop/web"];
        assert_eq!(r.resolve("v1"), Some("sha256:2"));
        assert_eq!(r.resolve("sha256:1"), Some("sha256:1"));
        assert_eq!(r.resolve("sha256:9"), None);
        s.apply(&Command::RemoveManifest {
            repo: "shop/web".into(),
            digest: "sha256:2".into(),
        })
        .unwrap();
        let r = &s.registry["shop/web"];
        assert!(r.tags.is_empty(), "{:?}", r.tags);
        s.apply(&Command::RemoveManifest {
            repo: "shop/web".into(),
            digest: "sha256:1".into(),
        })
        .unwrap();
        assert!(s.registry.is_empty(), "an empty repository goes");
    }

    #[test]
    fn an_index_needs_its_manifests_and_holds_them() {
        let mut s = State::default();
        let err = s
            .apply(&put("a", "sha256:i", Some("x"), &["sha256:1"]))
            .unwrap_err();
        assert!(matches!(err, Rejected::NoSuchImage(_)), "{err}");
        s.apply(&put("a", "sha256:1", None, &[])).unwrap();
        s.apply(&put("a", "sha256:i", Some("x"), &["sha256:1"]))
            .unwrap();
        let err = s
            .apply(&Command::RemoveManifest {
                repo: "a".into(),
                digest: "sha256:1".into(),
            })
            .unwrap_err();
        assert!(err.to_string().contains("index sha256:i"), "{err}");
        assert!(matches!(
            s.apply(&Command::RemoveManifest {
                repo: "b".into(),
                digest: "sha256:1".into(),
            }),
            Err(Rejected::NoSuchImage(_))
        ));
    }

    #[test]
    fn a_rejected_batch_leaves_the_registry_as_it_was() {
        let mut s = State::default();
        s.apply(&put("a", "sha256:1", Some("v1"), &[])).unwrap();
        let cmds = [
            put("a", "sha256:2", Some("v1"), &[]),
            put("a", "sha256:3", None, &["sha256:nope"]),
        ];
        let before = s.before(&cmds);
        let mut failed = false;
        for c in &cmds {
            if s.apply(c).is_err() {
                failed = true;
            }
        }
        assert!(failed);
        s.restore(&before);
        assert_eq!(s.registry["a"].resolve("v1"), Some("sha256:1"));
        assert!(!s.registry["a"].manifests.contains_key("sha256:2"));
    }

    #[test]
    fn oversized_manifests_are_refused() {
        let mut s = State::default();
        let mut m = manifest("", &[]);
        m.body = "x".repeat(MANIFEST_LIMIT + 1);
        let err = s
            .apply(&Command::PutManifest {
                repo: "a".into(),
                digest: "sha256:1".into(),
                manifest: m,
                tag: None,
            })
            .unwrap_err();
        assert!(err.to_string().contains("over the"), "{err}");
    }
}
