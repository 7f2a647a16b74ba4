//! One blob from a registry into the store. The bytes are hashed as they
//! arrive and handed to a blocking thread that writes them to a temporary
//! file and, for a layer, unpacks them in the same pass, so the transfer,
//! the hash, the writes and the unpacking overlap instead of following
//! one another. Nothing is committed here: the caller checks the digest
//! first, and a wrong or broken blob leaves only temporary files, which
//! [`Fetch::discard`] removes.
//!
//! While a blob arrives, other nodes may already read it from this one
//! ([`arriving`]): a manager sends the nodes that ask for a blob at the
//! same moment along a chain, each reading from the one before as its
//! bytes come, so that the managers send it once.

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, LazyLock, Mutex};
use std::task::{ready, Context, Poll};

use futures::channel::mpsc;
use futures::StreamExt;
use tokio::io::AsyncWrite;
use tokio::sync::watch;

use crate::reference::ImageRef;
use crate::registry::{Progress, ProgressFn, RegistryError};
use crate::remote::Remote;
use crate::store::{Store, StoreError};
use crate::unpack::{unpack, UnpackError};

/// How many bytes the async side gathers before handing them over: large
/// enough that the hand-over costs little, small enough to keep both sides
/// busy.
const CHUNK: usize = 256 * 1024;
/// Chunks in flight between the two sides (so at most ~4 MiB per blob).
const IN_FLIGHT: usize = 16;

/// How far a blob that is arriving got.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arrived {
    /// This many bytes are in its file.
    Bytes(u64),
    /// All of it is (its digest not yet checked: the reader checks).
    Done,
    /// Its transfer failed: what was read of it is worthless.
    Failed,
}

/// A blob this process is fetching: its file and how far it got.
#[derive(Debug, Clone)]
pub struct Arriving {
    /// The file it is written to (moved into the store when complete; an
    /// open file keeps reading it).
    pub path: PathBuf,
    /// Its size, as the manifest says.
    pub size: u64,
    /// How far it got, as it changes.
    pub state: watch::Receiver<Arrived>,
}

/// Blobs being fetched in this process, by digest.
static ARRIVING: LazyLock<Mutex<HashMap<String, (u64, Arriving)>>> =
    LazyLock::new(Default::default);

/// The blob `digest`, if this process is fetching it now.
pub fn arriving(digest: &str) -> Option<Arriving> {
    ARRIVING
        .lock()
        .expect("arriving lock")
        .get(digest)
        .map(|(_, a)| a.clone())
}

/// A fetch listed in [`ARRIVING`] while it lasts; dropped before
/// [`Listed::done`], its readers learn it failed.
struct Listed {
    digest: String,
    id: u64,
    state: Arc<watch::Sender<Arrived>>,
}

impl Listed {
    fn new(digest: &str, path: &Path, size: u64) -> Self {
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let id = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let (tx, rx) = watch::channel(Arrived::Bytes(0));
        let a = Arriving {
            path: path.to_owned(),
            size,
            state: rx,
        };
        ARRIVING
            .lock()
            .expect("arriving lock")
            .insert(digest.to_owned(), (id, a));
        Listed {
            digest: digest.to_owned(),
            id,
            state: Arc::new(tx),
        }
    }

    fn done(&self) {
        self.state.send_replace(Arrived::Done);
    }
}

impl Drop for Listed {
    fn drop(&mut self) {
        self.state.send_if_modified(|s| {
            let failed = matches!(s, Arrived::Bytes(_));
            if failed {
                *s = Arrived::Failed;
            }
            failed
        });
        let mut m = ARRIVING.lock().expect("arriving lock");
        if m.get(&self.digest).is_some_and(|(id, _)| *id == self.id) {
            m.remove(&self.digest);
        }
    }
}

/// A blob fetched into temporary files.
pub(crate) struct Fetch {
    /// The digest of exactly the bytes received.
    pub(crate) actual: String,
    /// The blob's temporary file.
    pub(crate) blob: PathBuf,
    /// The layer unpacked alongside, when one was asked for: its
    /// temporary directory, or why it could not be unpacked.
    pub(crate) layer: Option<Result<PathBuf, UnpackError>>,
}

impl Fetch {
    /// Removes what was fetched.
    pub(crate) fn discard(self) {
        let _ = std::fs::remove_file(&self.blob);
        if let Some(Ok(dir)) = self.layer {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// Fetches `desc` into the store's temporary area; with `unpack`, unpacks
/// it as a layer while it arrives. `direct` asks the managers themselves
/// rather than a node that has it (see [`crate::Tunnel::blob`]).
pub(crate) async fn fetch(
    remote: &Remote<'_>,
    r: &ImageRef,
    store: &Store,
    desc: &crate::types::Descriptor,
    unpack: bool,
    progress: &ProgressFn,
    direct: bool,
) -> Result<Fetch, RegistryError> {
    let blob = store.temp_path("pull");
    let layer = if unpack {
        let dir = store.temp_path("layer");
        std::fs::create_dir(&dir).map_err(|err| StoreError::Io {
            what: "create",
            path: dir.clone(),
            err,
        })?;
        Some(dir)
    } else {
        None
    };
    let file = File::create(&blob).map_err(|err| StoreError::Io {
        what: "create",
        path: blob.clone(),
        err,
    })?;
    let listed = Listed::new(&desc.digest, &blob, desc.size);
    let (tx, rx) = mpsc::channel(IN_FLIGHT);
    let sink = {
        let layer = layer.clone();
        let state = listed.state.clone();
        tokio::task::spawn_blocking(move || write(rx, file, state, layer.as_deref()))
    };
    let mut feed = Feed {
        tx,
        pending: Vec::with_capacity(CHUNK),
        hasher: sha2::Sha256::default(),
        done: 0,
        last: 0,
        digest: desc.digest.clone(),
        progress: progress.clone(),
    };
    let sent = async {
        remote.blob(r, desc, &mut feed, direct).await?;
        tokio::io::AsyncWriteExt::shutdown(&mut feed)
            .await
            .map_err(|e| RegistryError::Protocol {
                registry: r.registry().to_owned(),
                why: format!("writing the blob: {e}"),
            })
    }
    .await;
    let actual = format!(
        "sha256:{}",
        hex::encode(sha2::Digest::finalize(feed.hasher))
    );
    // Dropping the sender ends the writer's input whatever happened.
    drop(feed.tx);
    let written = sink.await.map_err(|e| RegistryError::Protocol {
        registry: String::new(),
        why: format!("the blob writer stopped: {e}"),
    })?;
    let discard = || {
        let _ = std::fs::remove_file(&blob);
        if let Some(dir) = &layer {
            let _ = std::fs::remove_dir_all(dir);
        }
    };
    // The writer's own failure (a full disk) explains a broken transfer
    // better than the transfer's error does.
    let unpacked = match written {
        Err(err) => {
            discard();
            return Err(StoreError::Io {
                what: "write",
                path: blob.clone(),
                err,
            }
            .into());
        }
        Ok(u) => u,
    };
    if let Err(e) = sent {
        discard();
        return Err(e);
    }
    listed.done();
    let layer = match (layer, unpacked) {
        (Some(dir), Some(Ok(()))) => Some(Ok(dir)),
        (Some(dir), Some(Err(e))) => {
            let _ = std::fs::remove_dir_all(dir);
            Some(Err(e))
        }
        _ => None,
    };
    Ok(Fetch {
        actual,
        blob,
        layer,
    })
}

/// The async side: hashes what arrives, reports progress, and hands it to
/// the writer in [`CHUNK`]s.
struct Feed {
    tx: mpsc::Sender<Vec<u8>>,
    pending: Vec<u8>,
    hasher: sha2::Sha256,
    done: u64,
    last: u64,
    digest: String,
    progress: ProgressFn,
}

fn writer_gone() -> io::Error {
    io::Error::new(io::ErrorKind::BrokenPipe, "the blob writer stopped")
}

impl Feed {
    /// Hands the gathered bytes over once the writer has room.
    fn poll_hand_over(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.pending.is_empty() {
            return Poll::Ready(Ok(()));
        }
        ready!(self.tx.poll_ready(cx)).map_err(|_| writer_gone())?;
        let chunk = std::mem::replace(&mut self.pending, Vec::with_capacity(CHUNK));
        self.tx.start_send(chunk).map_err(|_| writer_gone())?;
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for Feed {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        if this.pending.len() >= CHUNK {
            ready!(this.poll_hand_over(cx))?;
        }
        let n = buf.len().min(CHUNK - this.pending.len());
        this.pending.extend_from_slice(&buf[..n]);
        sha2::Digest::update(&mut this.hasher, &buf[..n]);
        this.done += n as u64;
        if this.done - this.last >= CHUNK as u64 {
            this.last = this.done;
            (this.progress)(Progress::Bytes {
                digest: this.digest.clone(),
                done: this.done,
            });
        }
        Poll::Ready(Ok(n))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.poll_hand_over(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_hand_over(cx))?;
        self.tx.close_channel();
        Poll::Ready(Ok(()))
    }
}

/// The blocking side: writes every chunk to `blob` and, with `layer`,
/// unpacks the stream into it as it goes. The file always gets the whole
/// stream, even when unpacking stops early; a write error ends it all.
fn write(
    rx: mpsc::Receiver<Vec<u8>>,
    file: File,
    state: Arc<watch::Sender<Arrived>>,
    layer: Option<&Path>,
) -> io::Result<Option<Result<(), UnpackError>>> {
    let mut tee = Tee {
        rx,
        file,
        written: 0,
        state,
        cur: Vec::new(),
        pos: 0,
        failed: None,
    };
    let unpacked = layer.map(|dir| unpack(&mut tee, dir).map(drop));
    let drained = io::copy(&mut tee, &mut io::sink());
    if let Some(e) = tee.failed.take() {
        return Err(e);
    }
    drained?;
    Ok(unpacked)
}

/// Reads the chunks in order, writing each to the file as it is taken.
struct Tee {
    rx: mpsc::Receiver<Vec<u8>>,
    file: File,
    /// Bytes in the file, told to the readers of the arriving blob.
    written: u64,
    state: Arc<watch::Sender<Arrived>>,
    cur: Vec<u8>,
    pos: usize,
    /// The file's write error: once set, the stream ends (the receiver
    /// is closed, so the async side stops too).
    failed: Option<io::Error>,
}

impl Read for Tee {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.pos == self.cur.len() {
            if self.failed.is_some() {
                return Err(writer_gone());
            }
            match futures::executor::block_on(self.rx.next()) {
                None => return Ok(0),
                Some(chunk) => {
                    if let Err(e) = self.file.write_all(&chunk) {
                        self.rx.close();
                        let kind = e.kind();
                        self.failed = Some(e);
                        return Err(io::Error::new(kind, "writing the blob failed"));
                    }
                    self.written += chunk.len() as u64;
                    self.state.send_replace(Arrived::Bytes(self.written));
                    self.cur = chunk;
                    self.pos = 0;
                }
            }
        }
        let n = buf.len().min(self.cur.len() - self.pos);
        buf[..n].copy_from_slice(&self.cur[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}
