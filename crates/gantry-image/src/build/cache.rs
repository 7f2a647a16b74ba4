//! The build cache: what each step made, by its key (`chain`ed from the
//! base image's manifest digest through every step's instruction and
//! inputs, never a local path, so a key means the same on any host).
//!
//! The cache file under the store holds this host's own builds. An image
//! built here also carries its steps' keys in its config
//! ([`RECORDS`], as BuildKit's inline cache does), so `--cache-from IMAGE`
//! (compose `cache_from`) takes the image's layers for the steps whose keys
//! match, on a host that never built it.

use std::collections::BTreeMap;
use std::fs;
use std::path::PathBuf;
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

use crate::digest::Digest;
use crate::store::{LocalImage, Store};
use crate::types::ImageConfig;

/// The image config's field with the steps that made it.
pub const RECORDS: &str = "gantry.build.cache.v1";

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct CacheEntry {
    /// (blob digest, diff id, compressed size) when the step made a layer.
    pub(super) layer: Option<(String, String, u64)>,
    pub(super) created: String,
}

/// One step as an image's config records it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct Record {
    pub(super) key: String,
    /// The image's layer the step made (its index), if it made one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) layer: Option<usize>,
    pub(super) created: String,
}

/// The build cache file, keyed by step key, and the steps of the
/// `--cache-from` images.
pub(super) struct Cache {
    path: PathBuf,
    /// Stages run side by side: one read-modify-write at a time.
    writing: Mutex<()>,
    /// From `--cache-from` images, read when the file has no entry.
    from: BTreeMap<String, CacheEntry>,
}

impl Cache {
    pub(super) fn open(store: &Store) -> Self {
        Cache {
            path: store.root().join(crate::store::BUILD_CACHE),
            writing: Mutex::new(()),
            from: BTreeMap::new(),
        }
    }

    fn load(&self) -> BTreeMap<String, CacheEntry> {
        fs::read(&self.path)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default()
    }

    /// The entry for `key` whose layer the store still has unpacked. One
    /// found in a `--cache-from` image is kept in the file from then on.
    pub(super) fn get(&self, store: &Store, key: &str) -> Option<CacheEntry> {
        let (e, imported) = match self.load().remove(key) {
            Some(e) => (e, false),
            None => (self.from.get(key)?.clone(), true),
        };
        if let Some((blob, _, _)) = &e.layer {
            let d = Digest::parse(blob).ok()?;
            if !store.has_blob(&d) || !store.layer_path(&d).exists() {
                return None;
            }
        }
        if imported {
            self.put(key, e.clone());
        }
        Some(e)
    }

    pub(super) fn put(&self, key: &str, e: CacheEntry) {
        let _one = self.writing.lock().expect("cache lock");
        let mut all = self.load();
        all.insert(key.to_owned(), e);
        let tmp = self.path.with_extension("tmp");
        if fs::write(&tmp, serde_json::to_vec(&all).unwrap_or_default()).is_ok() {
            let _ = fs::rename(&tmp, &self.path);
        }
    }

    /// Takes the steps `image` records (its layers unpacked in the store
    /// by the caller) as cache entries; returns how many.
    pub(super) fn import(&mut self, image: &LocalImage) -> usize {
        let entries = entries(image);
        let n = entries.len();
        self.from.extend(entries);
        n
    }
}

/// The records an image's config carries (none for an image built
/// elsewhere, or records that do not parse).
pub(super) fn records(config: &ImageConfig) -> Vec<Record> {
    config
        .extra
        .get(RECORDS)
        .and_then(|v| serde_json::from_value(v.clone()).ok())
        .unwrap_or_default()
}

/// The cache entries an image's records give: a record naming a layer the
/// image does not have is dropped.
fn entries(image: &LocalImage) -> Vec<(String, CacheEntry)> {
    let config = &image.config;
    records(config)
        .into_iter()
        .filter_map(|r| {
            let layer = match r.layer {
                None => None,
                Some(i) => {
                    let l = image.manifest.layers.get(i)?;
                    let diff = config.rootfs.diff_ids.get(i)?;
                    Some((l.digest.clone(), diff.clone(), l.size))
                }
            };
            Some((
                r.key,
                CacheEntry {
                    layer,
                    created: r.created,
                },
            ))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::ImageRecord;
    use crate::types::{Descriptor, Manifest};

    fn image(records: serde_json::Value, layers: usize) -> LocalImage {
        let d = |i: usize| Descriptor {
            media_type: "application/vnd.oci.image.layer.v1.tar+gzip".into(),
            digest: format!("sha256:{i:064x}"),
            size: 100 + i as u64,
            platform: None,
            annotations: None,
        };
        let mut config = ImageConfig::default();
        config.rootfs.diff_ids = (0..layers)
            .map(|i| format!("sha256:{:064x}", i + 50))
            .collect();
        config.extra.insert(RECORDS.into(), records);
        LocalImage {
            record: ImageRecord {
                manifest: d(99).digest,
                config: d(98).digest,
                tags: Default::default(),
                stored: chrono::Utc::now(),
                size: 0,
            },
            manifest: Manifest {
                schema_version: 2,
                media_type: None,
                config: d(98),
                layers: (0..layers).map(d).collect(),
                annotations: None,
            },
            config,
        }
    }

    #[test]
    fn an_images_records_become_entries_naming_its_layers() {
        let img = image(
            serde_json::json!([
                {"key": "a", "layer": 0, "created": "t0"},
                {"key": "b", "created": "t1"},
                {"key": "c", "layer": 1, "created": "t2"},
                // A layer the image does not have: dropped.
                {"key": "d", "layer": 7, "created": "t3"},
            ]),
            2,
        );
        let got: BTreeMap<String, CacheEntry> = entries(&img).into_iter().collect();
        assert_eq!(got.len(), 3);
        assert_eq!(
            got["a"].layer,
            Some((
                format!("sha256:{:064x}", 0),
                format!("sha256:{:064x}", 50),
                100
            ))
        );
        assert_eq!(got["b"].layer, None);
        assert_eq!(got["b"].created, "t1");
        assert_eq!(got["c"].layer.as_ref().unwrap().2, 101);
    }

    #[test]
    fn records_that_do_not_parse_are_none() {
        for bad in [
            serde_json::json!("x"),
            serde_json::json!([{"layer": 0}]),
            serde_json::json!({"key": "a"}),
        ] {
            assert!(entries(&image(bad, 1)).is_empty());
        }
        let mut none = image(serde_json::json!([]), 1);
        none.config.extra.clear();
        assert!(records(&none.config).is_empty());
    }

    #[test]
    fn records_round_trip_through_a_config() {
        let r = vec![
            Record {
                key: "k".into(),
                layer: Some(3),
                created: "c".into(),
            },
            Record {
                key: "e".into(),
                layer: None,
                created: "d".into(),
            },
        ];
        let mut config = ImageConfig::default();
        config
            .extra
            .insert(RECORDS.into(), serde_json::to_value(&r).unwrap());
        let text = serde_json::to_string(&config).unwrap();
        let back: ImageConfig = serde_json::from_str(&text).unwrap();
        assert_eq!(records(&back), r);
    }
}
