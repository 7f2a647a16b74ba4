//! The content-addressed image store under `<data>/images`:
//!
//! ```text
//! blobs/sha256/<hex>     manifests, configs, compressed layers (immutable)
//! layers/<hex>/          a layer blob unpacked once, shared by every image
//! tmp/                   downloads and unpacks in progress
//! index.json             images (by manifest digest) and their tags
//! ```
//!
//! **Invariants:** a blob appears under its name only once its digest has
//! been checked (written to `tmp/`, verified, then renamed); a layer
//! directory appears only once fully unpacked (unpacked in `tmp/`, then
//! renamed); a tag points at an image only once every blob and layer of it
//! is present. So neither a crash mid-pull nor two concurrent pulls ever
//! leave a half-written blob in use. `index.json` is rewritten atomically
//! under an exclusive `flock`.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::digest::{Digest, HashingWriter};
use crate::reference::ImageRef;
use crate::types::{
    Descriptor, ImageConfig, Manifest, RootFs, OCI_CONFIG, OCI_LAYER_GZIP, OCI_MANIFEST,
};

fn to_json<T: Serialize>(what: &'static str, v: &T) -> Result<Vec<u8>, StoreError> {
    serde_json::to_vec(v).map_err(|err| StoreError::BadJson {
        what,
        digest: String::new(),
        err,
    })
}
use crate::unpack::{unpack, UnpackError};

/// The build cache, by step key (written by `build`): the layers it names
/// stay through [`Store::gc`] until [`Store::prune_build_cache`].
pub(crate) const BUILD_CACHE: &str = "build-cache.json";
/// `RUN --mount=type=cache` directories.
pub(crate) const BUILD_CACHE_MOUNTS: &str = "build-cache-mounts";

/// A store operation that failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Content did not match its digest.
    #[error("digest mismatch for {expected}: the content hashes to {actual}")]
    DigestMismatch {
        /// What it should be.
        expected: String,
        /// What it is.
        actual: String,
    },
    /// No such image.
    #[error("no such image: {0}")]
    NotFound(String),
    /// An id prefix matches several images.
    #[error("{0} matches more than one image: give more of the id")]
    Ambiguous(String),
    /// A container uses the image.
    #[error("image {image} is in use by container {container}: remove the container first or use --force")]
    InUse {
        /// The image.
        image: String,
        /// A container that uses it.
        container: String,
    },
    /// The image has several tags and was named by id.
    #[error("image {0} is tagged in several repositories: remove the tags by name or use --force")]
    MultipleTags(String),
    /// A blob that should be here is not.
    #[error("blob {0} is missing from the store")]
    MissingBlob(String),
    /// A stored document is not what it should be.
    #[error("{what} {digest}: {err}")]
    BadJson {
        /// manifest or config.
        what: &'static str,
        /// Which.
        digest: String,
        /// The parse error.
        #[source]
        err: serde_json::Error,
    },
    /// A layer failed to unpack.
    #[error("layer {digest}: {err}")]
    Unpack {
        /// The layer.
        digest: String,
        /// Why.
        #[source]
        err: UnpackError,
    },
    /// Filesystem trouble.
    #[error("{what} {path}: {err}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// Where.
        path: PathBuf,
        /// The cause.
        #[source]
        err: io::Error,
    },
}

fn io_at<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> StoreError + 'a {
    move |err| StoreError::Io {
        what,
        path: path.to_owned(),
        err,
    }
}

/// One image in the index.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ImageRecord {
    /// The manifest's digest.
    pub manifest: String,
    /// The config's digest: the image id.
    pub config: String,
    /// Tags (`registry/repo:tag`) pointing at it.
    pub tags: BTreeSet<String>,
    /// When it was stored here.
    pub stored: DateTime<Utc>,
    /// Total compressed size of its blobs.
    pub size: u64,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct IndexFile {
    images: BTreeMap<String, ImageRecord>,
    /// Blob digest -> repositories it was pulled from or pushed to, for
    /// cross-repository mounts.
    #[serde(default)]
    sources: BTreeMap<String, BTreeSet<String>>,
}

/// A resolved local image.
#[derive(Debug, Clone)]
pub struct LocalImage {
    /// The index record.
    pub record: ImageRecord,
    /// Its manifest.
    pub manifest: Manifest,
    /// Its config.
    pub config: ImageConfig,
}

impl LocalImage {
    /// The image id (config digest).
    pub fn id(&self) -> Digest {
        Digest::parse(&self.record.config).expect("store only holds valid digests")
    }
}

/// The image store of one data dir.
#[derive(Debug, Clone)]
pub struct Store {
    root: PathBuf,
}

impl Store {
    /// Opens (creating) the store under `<data_dir>/images`.
    pub fn open(data_dir: &Path) -> Result<Self, StoreError> {
        let root = data_dir.join("images");
        gantry_runtime::private_dir(&root).map_err(io_at("create", &root))?;
        for d in ["blobs/sha256", "layers", "tmp"] {
            let p = root.join(d);
            fs::create_dir_all(&p).map_err(io_at("create", &p))?;
        }
        Ok(Self { root })
    }

    /// The store's directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Where a blob lives.
    pub fn blob_path(&self, d: &Digest) -> PathBuf {
        self.root.join("blobs/sha256").join(d.hex())
    }

    /// Where a layer blob is unpacked.
    pub fn layer_path(&self, d: &Digest) -> PathBuf {
        self.root.join("layers").join(d.hex())
    }

    /// Whether a blob is present.
    pub fn has_blob(&self, d: &Digest) -> bool {
        self.blob_path(d).exists()
    }

    /// Reads a whole blob.
    pub fn read_blob(&self, d: &Digest) -> Result<Vec<u8>, StoreError> {
        fs::read(self.blob_path(d)).map_err(|_| StoreError::MissingBlob(d.to_string()))
    }

    /// A fresh temporary path inside the store (same filesystem, so
    /// renames out of it are atomic).
    pub fn temp_path(&self, prefix: &str) -> PathBuf {
        self.root
            .join("tmp")
            .join(format!("{prefix}-{}-{}", std::process::id(), rand_suffix()))
    }

    /// Stores bytes, checking them against `expected` when given.
    pub fn put_blob(&self, data: &[u8], expected: Option<&Digest>) -> Result<Digest, StoreError> {
        let actual = Digest::of(data);
        if let Some(e) = expected {
            if *e != actual {
                return Err(StoreError::DigestMismatch {
                    expected: e.to_string(),
                    actual: actual.to_string(),
                });
            }
        }
        if !self.has_blob(&actual) {
            let tmp = self.temp_path("blob");
            fs::write(&tmp, data).map_err(io_at("write", &tmp))?;
            self.commit_blob(&tmp, &actual)?;
        }
        Ok(actual)
    }

    /// Moves a verified temp file into place (a no-op if another writer got
    /// there first: the content is the same by definition).
    pub fn commit_blob(&self, tmp: &Path, d: &Digest) -> Result<(), StoreError> {
        let dst = self.blob_path(d);
        fs::rename(tmp, &dst).map_err(io_at("store blob", &dst))
    }

    /// Copies a reader into a temp file, hashing it; checks the digest when
    /// `expected` is given and commits it. Returns the digest and size.
    pub fn put_blob_from(
        &self,
        mut r: impl Read,
        expected: Option<&Digest>,
    ) -> Result<(Digest, u64), StoreError> {
        let tmp = self.temp_path("blob");
        let f = File::create(&tmp).map_err(io_at("create", &tmp))?;
        let mut w = HashingWriter::new(f);
        let res = io::copy(&mut r, &mut w);
        let size = w.written;
        let (actual, f) = w.finish();
        drop(f);
        if let Err(e) = res {
            let _ = fs::remove_file(&tmp);
            return Err(StoreError::Io {
                what: "write",
                path: tmp,
                err: e,
            });
        }
        if let Some(e) = expected {
            if *e != actual {
                let _ = fs::remove_file(&tmp);
                return Err(StoreError::DigestMismatch {
                    expected: e.to_string(),
                    actual: actual.to_string(),
                });
            }
        }
        self.commit_blob(&tmp, &actual)?;
        Ok((actual, size))
    }

    /// Unpacks a stored layer blob once; later calls find it done.
    pub fn ensure_layer(&self, d: &Digest) -> Result<PathBuf, StoreError> {
        let dst = self.layer_path(d);
        if dst.exists() {
            return Ok(dst);
        }
        let src = self.blob_path(d);
        let f = File::open(&src).map_err(|_| StoreError::MissingBlob(d.to_string()))?;
        let tmp = self.temp_path("layer");
        fs::create_dir(&tmp).map_err(io_at("create", &tmp))?;
        if let Err(err) = unpack(io::BufReader::new(f), &tmp) {
            let _ = fs::remove_dir_all(&tmp);
            return Err(StoreError::Unpack {
                digest: d.to_string(),
                err,
            });
        }
        self.commit_layer(&tmp, d)
    }

    /// Moves an unpacked layer directory into place; if a concurrent writer
    /// won, its copy is kept and ours dropped.
    pub fn commit_layer(&self, tmp: &Path, d: &Digest) -> Result<PathBuf, StoreError> {
        let dst = self.layer_path(d);
        match fs::rename(tmp, &dst) {
            Ok(()) => Ok(dst),
            Err(_) if dst.exists() => {
                let _ = fs::remove_dir_all(tmp);
                Ok(dst)
            }
            Err(e) => Err(StoreError::Io {
                what: "store layer",
                path: dst,
                err: e,
            }),
        }
    }

    fn with_index<T>(
        &self,
        f: impl FnOnce(&mut IndexFile) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let lock_path = self.root.join("index.lock");
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(io_at("open", &lock_path))?;
        let _guard = nix::fcntl::Flock::lock(lock, nix::fcntl::FlockArg::LockExclusive).map_err(
            |(_, e)| StoreError::Io {
                what: "lock",
                path: lock_path.clone(),
                err: e.into(),
            },
        )?;
        let p = self.root.join("index.json");
        let mut idx: IndexFile = match fs::read(&p) {
            Ok(b) => serde_json::from_slice(&b).map_err(|err| StoreError::BadJson {
                what: "index",
                digest: p.display().to_string(),
                err,
            })?,
            Err(_) => IndexFile::default(),
        };
        let out = f(&mut idx)?;
        let tmp = self.temp_path("index");
        fs::write(&tmp, serde_json::to_vec_pretty(&idx).unwrap_or_default())
            .map_err(io_at("write", &tmp))?;
        fs::rename(&tmp, &p).map_err(io_at("write", &p))?;
        Ok(out)
    }

    fn read_index(&self) -> IndexFile {
        fs::read(self.root.join("index.json"))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default()
    }

    /// Records an image whose blobs and layers are all present, and points
    /// `tag` (if any) at it, moving the tag off any other image.
    pub fn add_image(
        &self,
        manifest: &Digest,
        tag: Option<&ImageRef>,
    ) -> Result<LocalImage, StoreError> {
        let m = self.manifest(manifest)?;
        let config = Digest::parse(&m.config.digest).map_err(|e| StoreError::MissingBlob(e.0))?;
        for l in &m.layers {
            let d = Digest::parse(&l.digest).map_err(|e| StoreError::MissingBlob(e.0))?;
            if !self.layer_path(&d).exists() {
                return Err(StoreError::MissingBlob(l.digest.clone()));
            }
        }
        if !self.has_blob(&config) {
            return Err(StoreError::MissingBlob(config.to_string()));
        }
        let size = m.config.size + m.layers.iter().map(|l| l.size).sum::<u64>();
        self.with_index(|idx| {
            if let Some(t) = tag {
                for r in idx.images.values_mut() {
                    r.tags.remove(&t.to_string());
                }
            }
            let rec = idx
                .images
                .entry(manifest.to_string())
                .or_insert_with(|| ImageRecord {
                    manifest: manifest.to_string(),
                    config: config.to_string(),
                    tags: BTreeSet::new(),
                    stored: Utc::now(),
                    size,
                });
            if let Some(t) = tag {
                rec.tags.insert(t.to_string());
            }
            Ok(())
        })?;
        self.resolve(&manifest.to_string())
    }

    /// Writes an OCI image whose gzip layers are already stored: sets the
    /// config's diff ids from `layers` (blob digest, diff id, size, bottom
    /// first), stores config and manifest, and records the image.
    pub fn put_image(
        &self,
        mut config: ImageConfig,
        layers: &[(Digest, Digest, u64)],
        tag: Option<&ImageRef>,
    ) -> Result<LocalImage, StoreError> {
        config.rootfs = RootFs {
            kind: "layers".into(),
            diff_ids: layers.iter().map(|(_, d, _)| d.to_string()).collect(),
        };
        let config_bytes = to_json("config", &config)?;
        let config_digest = self.put_blob(&config_bytes, None)?;
        let descriptor = |media_type: &str, digest: &Digest, size: u64| Descriptor {
            media_type: media_type.into(),
            digest: digest.to_string(),
            size,
            platform: None,
            annotations: None,
        };
        let manifest = Manifest {
            schema_version: 2,
            media_type: Some(OCI_MANIFEST.into()),
            config: descriptor(OCI_CONFIG, &config_digest, config_bytes.len() as u64),
            layers: layers
                .iter()
                .map(|(d, _, size)| descriptor(OCI_LAYER_GZIP, d, *size))
                .collect(),
            annotations: None,
        };
        let manifest_digest = self.put_blob(&to_json("manifest", &manifest)?, None)?;
        self.add_image(&manifest_digest, tag)
    }

    /// Remembers that `blob` exists in `repository` on a registry.
    pub fn add_source(&self, blob: &Digest, repository: &str) -> Result<(), StoreError> {
        self.with_index(|idx| {
            idx.sources
                .entry(blob.to_string())
                .or_default()
                .insert(repository.to_owned());
            Ok(())
        })
    }

    /// Repositories known to hold `blob`.
    pub fn sources(&self, blob: &Digest) -> BTreeSet<String> {
        self.read_index()
            .sources
            .get(blob.as_str())
            .cloned()
            .unwrap_or_default()
    }

    /// Parses a stored manifest.
    pub fn manifest(&self, d: &Digest) -> Result<Manifest, StoreError> {
        let b = self.read_blob(d)?;
        serde_json::from_slice(&b).map_err(|err| StoreError::BadJson {
            what: "manifest",
            digest: d.to_string(),
            err,
        })
    }

    /// Parses a stored config.
    pub fn config(&self, d: &Digest) -> Result<ImageConfig, StoreError> {
        let b = self.read_blob(d)?;
        serde_json::from_slice(&b).map_err(|err| StoreError::BadJson {
            what: "config",
            digest: d.to_string(),
            err,
        })
    }

    /// All images, newest first.
    pub fn list(&self) -> Vec<ImageRecord> {
        let mut v: Vec<ImageRecord> = self.read_index().images.into_values().collect();
        v.sort_by_key(|i| std::cmp::Reverse(i.stored));
        v
    }

    /// Finds an image by tag (normalised), manifest digest, id or id prefix.
    pub fn resolve(&self, key: &str) -> Result<LocalImage, StoreError> {
        let idx = self.read_index();
        let by_tag = ImageRef::parse(key).ok().and_then(|r| {
            idx.images
                .values()
                .find(|i| i.tags.contains(&r.to_string()))
        });
        let rec = match by_tag {
            Some(r) => r.clone(),
            None => {
                let k = key.strip_prefix("sha256:").unwrap_or(key);
                let hits: Vec<&ImageRecord> = idx
                    .images
                    .values()
                    .filter(|i| {
                        !k.is_empty()
                            && (i.config[7..].starts_with(k)
                                || i.manifest[7..] == *k
                                || i.manifest == key)
                    })
                    .collect();
                let distinct: BTreeSet<&str> = hits.iter().map(|i| i.config.as_str()).collect();
                match distinct.len() {
                    0 => return Err(StoreError::NotFound(key.to_owned())),
                    1 => hits[0].clone(),
                    _ => return Err(StoreError::Ambiguous(key.to_owned())),
                }
            }
        };
        let manifest = self
            .manifest(&Digest::parse(&rec.manifest).map_err(|e| StoreError::MissingBlob(e.0))?)?;
        let config =
            self.config(&Digest::parse(&rec.config).map_err(|e| StoreError::MissingBlob(e.0))?)?;
        Ok(LocalImage {
            record: rec,
            manifest,
            config,
        })
    }

    /// The unpacked layer directories of an image, topmost first (the order
    /// overlayfs wants for `lowerdir`).
    pub fn lowerdirs(&self, img: &LocalImage) -> Result<Vec<PathBuf>, StoreError> {
        img.manifest
            .layers
            .iter()
            .rev()
            .map(|l| {
                let d = Digest::parse(&l.digest).map_err(|e| StoreError::MissingBlob(e.0))?;
                self.ensure_layer(&d)
            })
            .collect()
    }

    /// Adds a tag to an existing image.
    pub fn tag(&self, source: &str, target: &ImageRef) -> Result<(), StoreError> {
        let img = self.resolve(source)?;
        self.with_index(|idx| {
            for r in idx.images.values_mut() {
                r.tags.remove(&target.to_string());
            }
            if let Some(r) = idx.images.get_mut(&img.record.manifest) {
                r.tags.insert(target.to_string());
            }
            Ok(())
        })
    }

    /// Removes a tag, or (named by id) the image. `in_use` maps image ids to
    /// a container using them. Returns what was untagged and deleted.
    pub fn remove(
        &self,
        key: &str,
        force: bool,
        in_use: &BTreeMap<String, String>,
    ) -> Result<Vec<String>, StoreError> {
        let img = self.resolve(key)?;
        let by_tag = ImageRef::parse(key)
            .ok()
            .map(|r| r.to_string())
            .filter(|t| img.record.tags.contains(t));
        let last_tag = by_tag.is_some() && img.record.tags.len() == 1;
        let deleting = by_tag.is_none() || last_tag;
        if deleting && !force {
            if let Some(c) = in_use.get(&img.record.config) {
                return Err(StoreError::InUse {
                    image: key.to_owned(),
                    container: c.clone(),
                });
            }
            if by_tag.is_none() && img.record.tags.len() > 1 {
                return Err(StoreError::MultipleTags(key.to_owned()));
            }
        }
        let mut out = Vec::new();
        self.with_index(|idx| {
            let Some(rec) = idx.images.get_mut(&img.record.manifest) else {
                return Ok(());
            };
            match &by_tag {
                Some(t) if !last_tag => {
                    rec.tags.remove(t);
                    out.push(format!("Untagged: {t}"));
                }
                _ => {
                    for t in std::mem::take(&mut rec.tags) {
                        out.push(format!("Untagged: {t}"));
                    }
                    // An image a container still uses stays, untagged.
                    if !in_use.contains_key(&img.record.config) {
                        idx.images.remove(&img.record.manifest);
                        out.push(format!("Deleted: {}", img.record.config));
                    }
                }
            }
            Ok(())
        })?;
        self.gc()?;
        Ok(out)
    }

    /// Removes untagged images no container uses; returns their ids.
    pub fn prune(&self, in_use: &BTreeMap<String, String>) -> Result<Vec<String>, StoreError> {
        let removed = self.with_index(|idx| {
            let gone: Vec<String> = idx
                .images
                .iter()
                .filter(|(_, r)| r.tags.is_empty() && !in_use.contains_key(&r.config))
                .map(|(k, _)| k.clone())
                .collect();
            Ok(gone
                .into_iter()
                .filter_map(|k| idx.images.remove(&k).map(|r| r.config))
                .collect::<Vec<_>>())
        })?;
        self.gc()?;
        Ok(removed)
    }

    /// `builder prune`: forgets the build cache and empties the cache
    /// mounts, then deletes what no image needs any more; returns the bytes
    /// freed.
    pub fn prune_build_cache(&self) -> Result<u64, StoreError> {
        let before = gantry_runtime::disk_usage(&self.root);
        self.with_index(|_| {
            let _ = fs::remove_file(self.root.join(BUILD_CACHE));
            let _ = fs::remove_dir_all(self.root.join(BUILD_CACHE_MOUNTS));
            Ok(())
        })?;
        self.gc()?;
        Ok(before.saturating_sub(gantry_runtime::disk_usage(&self.root)))
    }

    /// Deletes blobs and unpacked layers no image in the index refers to,
    /// and leftovers in `tmp/` from crashed operations of dead processes.
    pub fn gc(&self) -> Result<(), StoreError> {
        self.with_index(|idx| {
            let mut keep = BTreeSet::new();
            for r in idx.images.values() {
                keep.insert(r.manifest[7..].to_owned());
                keep.insert(r.config[7..].to_owned());
                if let Ok(m) = Digest::parse(&r.manifest)
                    .map_err(|_| ())
                    .and_then(|d| self.manifest(&d).map_err(|_| ()))
                {
                    for l in m.layers {
                        keep.insert(l.digest.trim_start_matches("sha256:").to_owned());
                    }
                }
            }
            // Layers the build cache names stay (an intermediate stage's
            // are in no image).
            if let Ok(m) = fs::read(self.root.join(BUILD_CACHE))
                .map_err(|_| ())
                .and_then(|b| {
                    serde_json::from_slice::<BTreeMap<String, serde_json::Value>>(&b)
                        .map_err(|_| ())
                })
            {
                for e in m.values() {
                    if let Some(blob) = e["layer"][0].as_str() {
                        keep.insert(blob.trim_start_matches("sha256:").to_owned());
                    }
                }
            }
            for dir in ["blobs/sha256", "layers"] {
                let d = self.root.join(dir);
                for e in fs::read_dir(&d).into_iter().flatten().flatten() {
                    let name = e.file_name().to_string_lossy().into_owned();
                    if !keep.contains(&name) {
                        let p = e.path();
                        let _ = if p.is_dir() {
                            fs::remove_dir_all(&p)
                        } else {
                            fs::remove_file(&p)
                        };
                    }
                }
            }
            idx.sources
                .retain(|k, _| keep.contains(k.trim_start_matches("sha256:")));
            Ok(())
        })?;
        self.clean_tmp();
        Ok(())
    }

    /// Removes this process's temp entries (after a failed operation whose
    /// tasks have all ended).
    pub fn discard_own_tmp(&self) {
        let mine = format!("-{}-", std::process::id());
        for e in fs::read_dir(self.root.join("tmp"))
            .into_iter()
            .flatten()
            .flatten()
        {
            if e.file_name().to_string_lossy().contains(&mine) {
                let p = e.path();
                let _ = if p.is_dir() {
                    fs::remove_dir_all(&p)
                } else {
                    fs::remove_file(&p)
                };
            }
        }
    }

    /// Removes temp entries whose owning process is gone.
    pub fn clean_tmp(&self) {
        let tmp = self.root.join("tmp");
        for e in fs::read_dir(&tmp).into_iter().flatten().flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let pid = name.split('-').nth(1).and_then(|p| p.parse::<i32>().ok());
            let alive = pid.is_some_and(|p| Path::new(&format!("/proc/{p}")).exists());
            if !alive {
                let p = e.path();
                let _ = if p.is_dir() {
                    fs::remove_dir_all(&p)
                } else {
                    fs::remove_file(&p)
                };
            }
        }
    }
}

fn rand_suffix() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!("{t:x}{:x}", N.fetch_add(1, Ordering::Relaxed))
}

/// Bytes of the files under `dir` (symlinks not followed).
#[cfg(test)]
mod tests {
    use super::*;

    fn layer_blob(name: &str) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_path(name).unwrap();
        h.set_size(2);
        h.set_mode(0o644);
        h.set_cksum();
        b.append(&h, &b"hi"[..]).unwrap();
        b.into_inner().unwrap()
    }

    fn put_image(s: &Store, tag: &str, file: &str) -> Digest {
        let layer = s.put_blob(&layer_blob(file), None).unwrap();
        s.ensure_layer(&layer).unwrap();
        let cfg = ImageConfig {
            architecture: "amd64".into(),
            os: "linux".into(),
            ..Default::default()
        };
        let img = s
            .put_image(
                cfg,
                &[(layer.clone(), layer, 10)],
                Some(&ImageRef::parse(tag).unwrap()),
            )
            .unwrap();
        Digest::parse(&img.record.manifest).unwrap()
    }

    #[test]
    fn mismatched_blob_is_not_stored() {
        let t = tempfile::tempdir().unwrap();
        let s = Store::open(t.path()).unwrap();
        let wrong = Digest::of(b"other");
        assert!(matches!(
            s.put_blob(b"data", Some(&wrong)),
            Err(StoreError::DigestMismatch { .. })
        ));
        assert!(!s.has_blob(&Digest::of(b"data")));
        assert!(!s.has_blob(&wrong));
        let (d, n) = s
            .put_blob_from(&b"data"[..], Some(&Digest::of(b"data")))
            .unwrap();
        assert_eq!((d, n), (Digest::of(b"data"), 4));
        assert!(matches!(
            s.put_blob_from(&b"data"[..], Some(&wrong)),
            Err(StoreError::DigestMismatch { .. })
        ));
        assert_eq!(
            fs::read_dir(t.path().join("images/tmp")).unwrap().count(),
            0,
            "no temp left"
        );
    }

    #[test]
    fn tags_resolve_and_removal_collects_garbage() {
        let t = tempfile::tempdir().unwrap();
        let s = Store::open(t.path()).unwrap();
        put_image(&s, "demo:1", "a");
        let b = put_image(&s, "other", "b");
        let img = s.resolve("demo:1").unwrap();
        assert_eq!(
            s.resolve("docker.io/library/demo:1")
                .unwrap()
                .record
                .manifest,
            img.record.manifest
        );
        assert_eq!(
            s.resolve(img.id().short()).unwrap().record.config,
            img.record.config
        );
        assert!(matches!(s.resolve("nope"), Err(StoreError::NotFound(_))));
        s.tag("demo:1", &ImageRef::parse("demo:2").unwrap())
            .unwrap();

        let mut in_use = BTreeMap::new();
        in_use.insert(img.record.config.clone(), "ctr1".to_owned());
        // Untagging one of two tags is fine even while in use.
        assert_eq!(
            s.remove("demo:2", false, &in_use).unwrap(),
            vec!["Untagged: docker.io/library/demo:2"]
        );
        assert!(matches!(
            s.remove("demo:1", false, &in_use),
            Err(StoreError::InUse { .. })
        ));
        // Forced: untagged, but kept for the container.
        s.remove("demo:1", true, &in_use).unwrap();
        assert!(s.resolve(&img.record.config).is_ok());
        assert!(s.lowerdirs(&img).unwrap()[0].exists());
        // Once unused, prune deletes it and its layer; the other image stays.
        let pruned = s.prune(&BTreeMap::new()).unwrap();
        assert_eq!(pruned, vec![img.record.config.clone()]);
        assert!(!s
            .layer_path(&Digest::parse(&img.manifest.layers[0].digest).unwrap())
            .exists());
        assert!(s.resolve("other").is_ok());
        assert!(s.has_blob(&b));
    }

    #[test]
    fn shared_layer_is_unpacked_once() {
        let t = tempfile::tempdir().unwrap();
        let s = Store::open(t.path()).unwrap();
        put_image(&s, "x", "same");
        put_image(&s, "y", "same");
        assert_eq!(
            fs::read_dir(t.path().join("images/layers"))
                .unwrap()
                .count(),
            1
        );
    }
}
