//! The registry's blobs on this manager's disk: content-addressed files
//! (`registry/blobs/sha256/HEX`), written whole or not at all, and the
//! uploads under way (`registry/uploads/ID`), each hashed as its bytes
//! arrive so that finishing one reads nothing again.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::{Stream, StreamExt};
use sha2::Digest as _;
use tokio::io::AsyncWriteExt;

/// An upload idle this long is dropped.
const UPLOAD_IDLE: Duration = Duration::from_secs(3600);
/// Uploads under way at once on one manager (each holds a file open).
pub(crate) const MAX_UPLOADS: usize = 512;

/// One upload under way.
pub(crate) struct Upload {
    /// Buffered: a body arrives in small chunks, and each write to a
    /// tokio file is a trip to the blocking pool.
    file: tokio::io::BufWriter<tokio::fs::File>,
    hasher: sha2::Sha256,
    /// Bytes received.
    pub(crate) size: u64,
    touched: Instant,
}

/// The blob directory and the uploads under way.
pub(crate) struct Blobs {
    dir: PathBuf,
    uploads: Mutex<HashMap<String, Arc<tokio::sync::Mutex<Upload>>>>,
}

/// A failed write: the client's fault (its bytes) or ours (the disk).
#[derive(Debug)]
pub(crate) enum WriteError {
    /// The body broke off.
    Body(String),
    /// The disk failed.
    Io(std::io::Error),
}

impl std::fmt::Display for WriteError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Body(e) => write!(f, "the upload broke off: {e}"),
            Self::Io(e) => write!(f, "writing the blob: {e}"),
        }
    }
}

impl Blobs {
    /// Opens (or makes) the directories; uploads left by an earlier run
    /// are gone (their clients start again).
    pub(crate) fn open(dir: &Path) -> std::io::Result<Self> {
        let dir = dir.join("registry");
        std::fs::create_dir_all(dir.join("blobs/sha256"))?;
        let _ = std::fs::remove_dir_all(dir.join("uploads"));
        std::fs::create_dir_all(dir.join("uploads"))?;
        Ok(Self {
            dir,
            uploads: Mutex::new(HashMap::new()),
        })
    }

    /// Where a blob lives (its digest checked by the caller).
    pub(crate) fn path(&self, digest: &str) -> PathBuf {
        let hex = digest.strip_prefix("sha256:").unwrap_or(digest);
        self.dir.join("blobs/sha256").join(hex)
    }

    /// The blob's size, if it is here.
    pub(crate) fn size(&self, digest: &str) -> Option<u64> {
        std::fs::metadata(self.path(digest)).ok().map(|m| m.len())
    }

    /// Removes a blob from this manager.
    pub(crate) fn remove(&self, digest: &str) -> std::io::Result<bool> {
        match std::fs::remove_file(self.path(digest)) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Removes the blobs no manifest names (`named` says which are) that
    /// were written longer than `grace` ago: what deleted manifests left,
    /// and uploads no manifest followed. A blob younger than that may be
    /// one whose manifest is on its way. Returns how many went and their
    /// bytes.
    pub(crate) fn collect(&self, named: impl Fn(&str) -> bool, grace: Duration) -> (usize, u64) {
        let mut gone = (0, 0);
        let Ok(dir) = std::fs::read_dir(self.dir.join("blobs/sha256")) else {
            return gone;
        };
        for e in dir.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if named(&format!("sha256:{name}")) {
                continue;
            }
            let Ok(meta) = e.metadata() else { continue };
            let old = meta
                .modified()
                .ok()
                .and_then(|m| m.elapsed().ok())
                .is_some_and(|age| age > grace);
            if old && std::fs::remove_file(e.path()).is_ok() {
                gone.0 += 1;
                gone.1 += meta.len();
            }
        }
        gone
    }

    /// A new temp file in the uploads directory.
    fn temp(&self) -> (String, PathBuf) {
        let id = new_upload_id();
        let p = self.dir.join("uploads").join(&id);
        (id, p)
    }

    /// Starts an upload; its id.
    pub(crate) async fn start(&self) -> std::io::Result<String> {
        self.drop_idle();
        if self.full() {
            return Err(std::io::Error::other(format!(
                "{MAX_UPLOADS} uploads are under way on this manager"
            )));
        }
        let (id, path) = self.temp();
        let file =
            tokio::io::BufWriter::with_capacity(1 << 20, tokio::fs::File::create(&path).await?);
        self.uploads.lock().expect("uploads lock").insert(
            id.clone(),
            Arc::new(tokio::sync::Mutex::new(Upload {
                file,
                hasher: sha2::Sha256::new(),
                size: 0,
                touched: Instant::now(),
            })),
        );
        Ok(id)
    }

    /// Whether no more uploads may start now.
    pub(crate) fn full(&self) -> bool {
        self.uploads.lock().expect("uploads lock").len() >= MAX_UPLOADS
    }

    /// An upload under way.
    pub(crate) fn upload(&self, id: &str) -> Option<Arc<tokio::sync::Mutex<Upload>>> {
        self.uploads.lock().expect("uploads lock").get(id).cloned()
    }

    /// Drops an upload and its bytes.
    pub(crate) fn cancel(&self, id: &str) -> bool {
        let had = self.uploads.lock().expect("uploads lock").remove(id);
        let _ = std::fs::remove_file(self.dir.join("uploads").join(id));
        had.is_some()
    }

    fn drop_idle(&self) {
        let idle: Vec<String> = self
            .uploads
            .lock()
            .expect("uploads lock")
            .iter()
            .filter(|(_, u)| {
                u.try_lock()
                    .is_ok_and(|u| u.touched.elapsed() > UPLOAD_IDLE)
            })
            .map(|(id, _)| id.clone())
            .collect();
        for id in idle {
            self.cancel(&id);
        }
    }

    /// Finishes an upload: its bytes become the blob `digest` if they hash
    /// to it (else the upload is dropped and the digest they have is
    /// returned as the error).
    pub(crate) async fn finish(&self, id: &str, digest: &str) -> Result<u64, FinishError> {
        let Some(up) = self.uploads.lock().expect("uploads lock").remove(id) else {
            return Err(FinishError::Unknown);
        };
        let mut up = up.lock().await;
        up.file.flush().await.map_err(FinishError::Io)?;
        up.file
            .get_ref()
            .sync_data()
            .await
            .map_err(FinishError::Io)?;
        let actual = format!("sha256:{}", hex::encode(up.hasher.clone().finalize()));
        let tmp = self.dir.join("uploads").join(id);
        if actual != digest {
            let _ = tokio::fs::remove_file(&tmp).await;
            return Err(FinishError::Mismatch(actual));
        }
        tokio::fs::rename(&tmp, self.path(digest))
            .await
            .map_err(FinishError::Io)?;
        Ok(up.size)
    }

    /// Writes a whole blob from a stream (a monolithic upload, or a blob
    /// fetched from another manager), kept only if it hashes to `digest`.
    pub(crate) async fn put_stream<S, B, E>(
        &self,
        digest: &str,
        body: S,
    ) -> Result<u64, FinishError>
    where
        S: Stream<Item = Result<B, E>> + Unpin,
        B: AsRef<[u8]>,
        E: std::fmt::Display,
    {
        let id = self.start().await.map_err(FinishError::Io)?;
        let up = self.upload(&id).ok_or(FinishError::Unknown)?;
        let res = append(&mut *up.lock().await, body).await;
        if let Err(e) = res {
            self.cancel(&id);
            return Err(match e {
                WriteError::Body(e) => FinishError::Body(e),
                WriteError::Io(e) => FinishError::Io(e),
            });
        }
        self.finish(&id, digest).await
    }
}

/// Why an upload did not become a blob.
#[derive(Debug)]
pub(crate) enum FinishError {
    /// No such upload.
    Unknown,
    /// Its bytes hash to this digest instead.
    Mismatch(String),
    /// The body broke off.
    Body(String),
    /// The disk failed.
    Io(std::io::Error),
}

/// Appends a body to an upload, hashing it as it goes.
pub(crate) async fn append<S, B, E>(up: &mut Upload, mut body: S) -> Result<(), WriteError>
where
    S: Stream<Item = Result<B, E>> + Unpin,
    B: AsRef<[u8]>,
    E: std::fmt::Display,
{
    up.touched = Instant::now();
    while let Some(chunk) = body.next().await {
        let chunk = chunk.map_err(|e| WriteError::Body(e.to_string()))?;
        let b = chunk.as_ref();
        up.file.write_all(b).await.map_err(WriteError::Io)?;
        up.hasher.update(b);
        up.size += b.len() as u64;
    }
    up.touched = Instant::now();
    Ok(())
}

fn new_upload_id() -> String {
    use rand::Rng;
    let b: [u8; 16] = rand::rng().random();
    let h = hex::encode(b);
    format!(
        "{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..]
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunks(
        parts: &[&'static [u8]],
    ) -> impl Stream<Item = Result<&'static [u8], String>> + Unpin {
        futures::stream::iter(parts.iter().map(|p| Ok(*p)).collect::<Vec<_>>())
    }

    #[tokio::test]
    async fn uploads_become_blobs_only_with_their_digest() {
        let dir = tempfile::tempdir().unwrap();
        let b = Blobs::open(dir.path()).unwrap();
        let good = format!(
            "sha256:{}",
            hex::encode(sha2::Sha256::digest(b"hello world"))
        );
        let id = b.start().await.unwrap();
        {
            let up = b.upload(&id).unwrap();
            append(&mut *up.lock().await, chunks(&[b"hello ", b"world"]))
                .await
                .unwrap();
        }
        assert_eq!(b.finish(&id, &good).await.unwrap(), 11);
        assert_eq!(b.size(&good), Some(11));
        assert!(b.upload(&id).is_none(), "a finished upload is gone");

        let wrong = format!("sha256:{}", "0".repeat(64));
        let err = b.put_stream(&wrong, chunks(&[b"other"])).await.unwrap_err();
        assert!(matches!(err, FinishError::Mismatch(_)), "{err:?}");
        assert_eq!(b.size(&wrong), None, "nothing kept under a wrong digest");
        let left: Vec<_> = std::fs::read_dir(dir.path().join("registry/uploads"))
            .unwrap()
            .collect();
        assert!(left.is_empty(), "no upload file left: {left:?}");

        // Collection: a named blob stays, an unnamed one goes once old.
        let other = format!("sha256:{}", hex::encode(sha2::Sha256::digest(b"other")));
        b.put_stream(&other, chunks(&[b"other"])).await.unwrap();
        assert_eq!(
            b.collect(|d| d == good, Duration::from_secs(60)),
            (0, 0),
            "young"
        );
        assert_eq!(b.collect(|d| d == good, Duration::ZERO), (1, 5));
        assert_eq!(b.size(&other), None);
        assert_eq!(b.size(&good), Some(11));

        let broken = futures::stream::iter(vec![Ok(&b"part"[..]), Err("reset".to_owned())]);
        let err = b.put_stream(&good, broken).await.unwrap_err();
        assert!(matches!(err, FinishError::Body(_)), "{err:?}");
        assert_eq!(b.size(&good), Some(11), "the blob that was there stays");
    }
}
