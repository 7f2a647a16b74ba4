//! A repository: a folder or an S3-compatible bucket (through
//! `object_store`) holding
//!
//! - `config`: plain JSON: the format's version, the repository's id and
//!   salt, the chunker's sizes, and a sealed known text that tells a wrong
//!   key at once;
//! - `packs/XX/ID`: sealed blobs (file chunks and directory trees, each
//!   compressed when that helps), about 16 MiB per pack;
//! - `index/ID`: sealed, which blob is where (pack, offset, length), one
//!   file per backup;
//! - `snapshots/ID`: sealed, one per backup, written last: a backup cut
//!   short leaves packs no snapshot names, and every earlier snapshot
//!   whole.

use std::collections::HashMap;
use std::ops::Range;
use std::sync::Arc;

use bytes::Bytes;
use futures::TryStreamExt;
use object_store::path::Path as StorePath;
use object_store::{ObjectStore, PutPayload};
use serde::{Deserialize, Serialize};

use crate::crypto::Keys;
use crate::BackupError;

/// The format this code writes and reads.
pub(crate) const VERSION: u32 = 1;

const CHECK_TEXT: &[u8] = b"gantry-backup repository";

/// A repository's `config`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Config {
    /// The format's version.
    pub version: u32,
    /// The repository's id.
    pub id: String,
    /// The salt of its key derivation, hex.
    pub salt: String,
    /// [`CHECK_TEXT`] sealed with its keys, base64.
    pub check: String,
    /// The chunker's minimum, average and maximum chunk sizes.
    pub chunks: (u32, u32, u32),
}

/// Where a blob is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Location {
    /// Its pack (an index into the index file's pack list when stored;
    /// here, into [`Index::packs`]).
    pub pack: u32,
    /// Its offset in the pack.
    pub offset: u64,
    /// Its sealed length.
    pub length: u32,
}

/// Which blobs are in which packs: every index file of the repository.
#[derive(Debug, Default)]
pub struct Index {
    /// Pack ids.
    pub packs: Vec<String>,
    /// Blob id to location.
    pub blobs: HashMap<String, Location>,
}

/// One index file: the packs one backup wrote and their blobs.
#[derive(Debug, Default, Serialize, Deserialize)]
pub(crate) struct IndexFile {
    pub(crate) packs: Vec<PackEntry>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
pub(crate) struct PackEntry {
    pub(crate) id: String,
    /// (blob id, offset, sealed length).
    pub(crate) blobs: Vec<(String, u64, u32)>,
}

/// An open repository.
pub struct Repo {
    store: Arc<dyn ObjectStore>,
    root: StorePath,
    pub(crate) keys: Keys,
    /// Its config.
    pub config: Config,
}

impl std::fmt::Debug for Repo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Repo")
            .field("store", &self.store.to_string())
            .field("root", &self.root)
            .finish()
    }
}

/// The store and folder a target names: `s3://BUCKET[/PREFIX]` (the
/// credentials, region and endpoint from the environment's `AWS_*`
/// variables, or from `?endpoint=URL&region=R` after it), `file:///DIR`,
/// or an absolute folder.
pub fn target(url: &str) -> Result<(Arc<dyn ObjectStore>, StorePath), BackupError> {
    target_with(url, &[])
}

/// [`target`], with S3 settings given as environment variables
/// (`AWS_ACCESS_KEY_ID=...`: an agent takes them from a secret, not from
/// its own environment); they win over the process's own.
pub fn target_with(
    url: &str,
    env: &[(String, String)],
) -> Result<(Arc<dyn ObjectStore>, StorePath), BackupError> {
    let bad = |why: &str| BackupError::Target(format!("{url}: {why}"));
    if let Some(rest) = url.strip_prefix("s3://") {
        let (path, query) = rest.split_once('?').unwrap_or((rest, ""));
        let (bucket, prefix) = path.split_once('/').unwrap_or((path, ""));
        if bucket.is_empty() {
            return Err(bad("no bucket"));
        }
        let mut b = object_store::aws::AmazonS3Builder::from_env().with_bucket_name(bucket);
        for (k, v) in env {
            let key: object_store::aws::AmazonS3ConfigKey = k
                .to_ascii_lowercase()
                .parse()
                .map_err(|_| bad(&format!("{k} is not an S3 setting")))?;
            b = b.with_config(key, v);
        }
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            match pair.split_once('=') {
                Some(("endpoint", e)) => {
                    b = b
                        .with_endpoint(e)
                        .with_allow_http(e.starts_with("http://"))
                        .with_virtual_hosted_style_request(false);
                }
                Some(("region", r)) => b = b.with_region(r),
                _ => return Err(bad("the query takes endpoint= and region= only")),
            }
        }
        let store = b.build().map_err(|e| bad(&e.to_string()))?;
        return Ok((Arc::new(store), StorePath::from(prefix)));
    }
    let dir = url.strip_prefix("file://").unwrap_or(url);
    if !dir.starts_with('/') {
        return Err(bad(
            "give an absolute folder, file:///FOLDER or s3://BUCKET/PREFIX",
        ));
    }
    std::fs::create_dir_all(dir).map_err(|e| bad(&e.to_string()))?;
    let store = object_store::local::LocalFileSystem::new_with_prefix(dir)
        .map_err(|e| bad(&e.to_string()))?;
    Ok((Arc::new(store), StorePath::from("")))
}

impl Repo {
    /// Opens the repository at `url` with `secret`, making it first if
    /// there is none. A wrong secret is [`BackupError::WrongKeyOrCorrupt`].
    pub async fn open_or_init(url: &str, secret: &[u8]) -> Result<Self, BackupError> {
        Self::open_or_init_with(url, secret, &[]).await
    }

    /// [`Repo::open_or_init`] with S3 settings ([`target_with`]).
    pub async fn open_or_init_with(
        url: &str,
        secret: &[u8],
        env: &[(String, String)],
    ) -> Result<Self, BackupError> {
        let (store, root) = target_with(url, env)?;
        let path = root.child("config");
        let config: Config = match store.get(&path).await {
            Ok(g) => serde_json::from_slice(&g.bytes().await?)
                .map_err(|e| BackupError::Corrupt(format!("config: {e}")))?,
            Err(object_store::Error::NotFound { .. }) => {
                let salt: [u8; 32] = rand::random();
                let keys = Keys::derive(secret, &salt);
                use base64::Engine;
                let c = Config {
                    version: VERSION,
                    id: hex::encode(rand::random::<[u8; 16]>()),
                    salt: hex::encode(salt),
                    check: base64::engine::general_purpose::STANDARD.encode(keys.seal(CHECK_TEXT)),
                    chunks: crate::chunk::SIZES,
                };
                let body = serde_json::to_vec_pretty(&c).expect("a config serialises");
                store
                    .put_opts(
                        &path,
                        PutPayload::from(body),
                        object_store::PutMode::Create.into(),
                    )
                    .await?;
                c
            }
            Err(e) => return Err(e.into()),
        };
        if config.version != VERSION {
            return Err(BackupError::Corrupt(format!(
                "format version {} (this Gantry reads {VERSION})",
                config.version
            )));
        }
        let salt = hex::decode(&config.salt)
            .map_err(|_| BackupError::Corrupt("config: the salt is not hex".into()))?;
        let keys = Keys::derive(secret, &salt);
        use base64::Engine;
        let check = base64::engine::general_purpose::STANDARD
            .decode(&config.check)
            .map_err(|_| BackupError::Corrupt("config: the check is not base64".into()))?;
        if keys.open(&check)? != CHECK_TEXT {
            return Err(BackupError::WrongKeyOrCorrupt);
        }
        Ok(Repo {
            store,
            root,
            keys,
            config,
        })
    }

    fn path(&self, kind: &str, id: &str) -> StorePath {
        let p = self.root.child(kind);
        if kind == "packs" {
            p.child(&id[..2]).child(id)
        } else {
            p.child(id)
        }
    }

    /// Stores an object.
    pub(crate) async fn put(&self, kind: &str, id: &str, body: Bytes) -> Result<(), BackupError> {
        self.store
            .put(&self.path(kind, id), PutPayload::from(body))
            .await?;
        Ok(())
    }

    /// Removes an object (gone already is fine).
    pub(crate) async fn delete(&self, kind: &str, id: &str) -> Result<(), BackupError> {
        match self.store.delete(&self.path(kind, id)).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Reads an object whole.
    pub(crate) async fn get(&self, kind: &str, id: &str) -> Result<Bytes, BackupError> {
        Ok(self.store.get(&self.path(kind, id)).await?.bytes().await?)
    }

    /// Reads part of a pack.
    pub(crate) async fn get_range(&self, pack: &str, r: Range<u64>) -> Result<Bytes, BackupError> {
        Ok(self.store.get_range(&self.path("packs", pack), r).await?)
    }

    /// The ids of a kind's objects.
    pub(crate) async fn list(&self, kind: &str) -> Result<Vec<String>, BackupError> {
        let prefix = self.root.child(kind);
        let metas: Vec<object_store::ObjectMeta> =
            self.store.list(Some(&prefix)).try_collect().await?;
        Ok(metas
            .into_iter()
            .filter_map(|m| m.location.filename().map(str::to_owned))
            .collect())
    }

    /// Every index file, merged.
    pub async fn index(&self) -> Result<Index, BackupError> {
        let mut idx = Index::default();
        for id in self.list("index").await? {
            let f: IndexFile = self.read_sealed("index", &id).await?;
            for p in f.packs {
                let n = idx.packs.len() as u32;
                idx.packs.push(p.id);
                for (blob, offset, length) in p.blobs {
                    idx.blobs.insert(
                        blob,
                        Location {
                            pack: n,
                            offset,
                            length,
                        },
                    );
                }
            }
        }
        Ok(idx)
    }

    /// A sealed JSON object.
    pub(crate) async fn read_sealed<T: serde::de::DeserializeOwned>(
        &self,
        kind: &str,
        id: &str,
    ) -> Result<T, BackupError> {
        let plain = self.keys.open(&self.get(kind, id).await?)?;
        serde_json::from_slice(&plain)
            .map_err(|e| BackupError::Corrupt(format!("{kind}/{id}: {e}")))
    }

    /// Writes a sealed JSON object.
    pub(crate) async fn write_sealed<T: Serialize>(
        &self,
        kind: &str,
        id: &str,
        v: &T,
    ) -> Result<(), BackupError> {
        let plain = serde_json::to_vec(v).expect("repository objects serialise");
        self.put(kind, id, Bytes::from(self.keys.seal(&plain)))
            .await
    }

    /// A blob's plaintext, checked against its id.
    pub async fn blob(&self, idx: &Index, id: &str) -> Result<Vec<u8>, BackupError> {
        let at = idx
            .blobs
            .get(id)
            .ok_or_else(|| BackupError::Corrupt(format!("blob {id} is in no index")))?;
        let pack = &idx.packs[at.pack as usize];
        let sealed = self
            .get_range(pack, at.offset..at.offset + u64::from(at.length))
            .await?;
        let plain = crate::blob::decode(&self.keys.open(&sealed)?)?;
        if self.keys.id(&plain) != id {
            return Err(BackupError::Corrupt(format!(
                "blob {id} does not match its id"
            )));
        }
        Ok(plain)
    }
}
