//! Backup and restore: a walk of the folder (or the snapshot's trees) on
//! a blocking thread; packs go to the storage from an async task while
//! the walk goes on (two in flight at most).

use std::collections::{HashMap, HashSet};
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use tokio::runtime::Handle;
use tokio::sync::mpsc;

use crate::repo::{Index, IndexFile, PackEntry};
use crate::snapshot::{Snapshot, Stats};
use crate::tree::{Kind, Node, Tree};
use crate::{blob, chunk, BackupError, Repo};

/// A pack is sent once it holds this much.
const PACK_SIZE: usize = 16 << 20;

/// Backs up the folder `root` as a snapshot of `volume` taken on `host`,
/// compared with the volume's latest snapshot.
pub async fn backup(
    repo: Arc<Repo>,
    root: PathBuf,
    volume: &str,
    host: &str,
) -> Result<Snapshot, BackupError> {
    let started = Instant::now();
    let index = Arc::new(repo.index().await?);
    let parent = crate::snapshot::snapshots(&repo)
        .await?
        .into_iter()
        .rev()
        .find(|s| s.volume == volume);
    let (tx, mut rx) = mpsc::channel::<(String, Bytes)>(2);
    let up = repo.clone();
    let uploader = tokio::spawn(async move {
        while let Some((id, body)) = rx.recv().await {
            up.put("packs", &id, body).await?;
        }
        Ok::<(), BackupError>(())
    });
    let parent_tree = parent.as_ref().map(|p| p.tree.clone());
    let md = fs::metadata(&root)?;
    let root_meta = (md.mode() & 0o7777, md.uid(), md.gid());
    let (r, i) = (repo.clone(), index.clone());
    let walked = tokio::task::spawn_blocking(move || {
        let mut w = Writer {
            repo: &r,
            index: &i,
            handle: Handle::current(),
            known: HashSet::new(),
            buf: Vec::new(),
            blobs: Vec::new(),
            written: IndexFile::default(),
            tx,
            stats: Stats::default(),
        };
        let tree = w.dir(&root, parent_tree.as_deref())?;
        w.flush()?;
        Ok::<_, BackupError>((tree, w.written, w.stats))
    })
    .await
    .map_err(|e| BackupError::Io(std::io::Error::other(e.to_string())))?;
    // The uploader's error says more than the walk's "it stopped".
    uploader
        .await
        .map_err(|e| BackupError::Io(std::io::Error::other(e.to_string())))??;
    let (tree, written, mut stats) = walked?;
    if !written.packs.is_empty() {
        repo.write_sealed("index", &hex::encode(rand::random::<[u8; 16]>()), &written)
            .await?;
    }
    stats.millis = started.elapsed().as_millis() as u64;
    let snap = Snapshot {
        id: hex::encode(rand::random::<[u8; 16]>()),
        time: chrono::Utc::now(),
        volume: volume.to_owned(),
        host: host.to_owned(),
        tree,
        root: root_meta,
        parent: parent.map(|p| p.id),
        stats,
    };
    repo.write_sealed("snapshots", &snap.id, &snap).await?;
    Ok(snap)
}

/// What a backup's walk keeps.
struct Writer<'a> {
    repo: &'a Repo,
    index: &'a Index,
    handle: Handle,
    /// Blobs stored by this backup.
    known: HashSet<String>,
    /// The pack being filled, and its blobs.
    buf: Vec<u8>,
    blobs: Vec<(String, u64, u32)>,
    written: IndexFile,
    tx: mpsc::Sender<(String, Bytes)>,
    stats: Stats,
}

fn node_of(name: &[u8], md: &fs::Metadata, kind: Kind) -> Node {
    Node {
        name: hex::encode(name),
        kind,
        mode: md.mode() & 0o7777,
        uid: md.uid(),
        gid: md.gid(),
        size: if md.is_file() { md.size() } else { 0 },
        mtime_ns: md.mtime() * 1_000_000_000 + md.mtime_nsec(),
        ctime_ns: md.ctime() * 1_000_000_000 + md.ctime_nsec(),
        inode: md.ino(),
    }
}

impl Writer<'_> {
    fn has(&self, id: &str) -> bool {
        self.known.contains(id) || self.index.blobs.contains_key(id)
    }

    /// Stores a blob unless the repository has it.
    fn add(&mut self, id: String, plain: &[u8]) -> Result<(), BackupError> {
        if self.has(&id) {
            return Ok(());
        }
        let sealed = self.repo.keys.seal(&blob::encode(plain));
        self.blobs
            .push((id.clone(), self.buf.len() as u64, sealed.len() as u32));
        self.buf.extend_from_slice(&sealed);
        self.known.insert(id);
        self.stats.new_blobs += 1;
        self.stats.new_bytes += plain.len() as u64;
        self.stats.stored_bytes += sealed.len() as u64;
        if self.buf.len() >= PACK_SIZE {
            self.flush()?;
        }
        Ok(())
    }

    /// Sends the pack being filled.
    fn flush(&mut self) -> Result<(), BackupError> {
        if self.blobs.is_empty() {
            return Ok(());
        }
        let id = self.repo.keys.id(&self.buf);
        let body = Bytes::from(std::mem::take(&mut self.buf));
        self.written.packs.push(PackEntry {
            id: id.clone(),
            blobs: std::mem::take(&mut self.blobs),
        });
        self.tx
            .blocking_send((id, body))
            .map_err(|_| BackupError::Io(std::io::Error::other("the upload stopped")))
    }

    /// The previous snapshot's tree `id`.
    fn old_tree(&self, id: &str) -> Result<Tree, BackupError> {
        let plain = self.handle.block_on(self.repo.blob(self.index, id))?;
        serde_json::from_slice(&plain).map_err(|e| BackupError::Corrupt(format!("tree {id}: {e}")))
    }

    /// Backs up folder `dir` (its previous tree `old`), returning its
    /// tree's id.
    fn dir(&mut self, dir: &Path, old: Option<&str>) -> Result<String, BackupError> {
        let old = match old {
            Some(id) => self.old_tree(id)?,
            None => Tree::default(),
        };
        let before: HashMap<&str, &Node> = old.nodes.iter().map(|n| (n.name.as_str(), n)).collect();
        let mut entries: Vec<(Vec<u8>, PathBuf)> = fs::read_dir(dir)?
            .map(|e| e.map(|e| (e.file_name().as_bytes().to_vec(), e.path())))
            .collect::<Result<_, _>>()?;
        entries.sort();
        let mut nodes = Vec::with_capacity(entries.len());
        // An entry that goes between the listing and its reading (a live
        // volume's temporary file) is left out, as if listed a moment later.
        let gone = |e: &std::io::Error| e.kind() == std::io::ErrorKind::NotFound;
        for (name, path) in entries {
            let md = match fs::symlink_metadata(&path) {
                Err(e) if gone(&e) => {
                    self.stats.vanished += 1;
                    continue;
                }
                r => r?,
            };
            let hexname = hex::encode(&name);
            let prev = before.get(hexname.as_str()).copied();
            let ft = md.file_type();
            let node = if ft.is_dir() {
                let prev_tree = match prev.map(|p| &p.kind) {
                    Some(Kind::Dir { tree }) => Some(tree.as_str()),
                    _ => None,
                };
                let tree = match self.dir(&path, prev_tree) {
                    Err(BackupError::Io(e)) if gone(&e) => {
                        self.stats.vanished += 1;
                        continue;
                    }
                    r => r?,
                };
                self.stats.dirs += 1;
                node_of(&name, &md, Kind::Dir { tree })
            } else if ft.is_file() {
                let mut node = node_of(&name, &md, Kind::File { chunks: Vec::new() });
                let reuse = prev
                    .filter(|p| node.unchanged(p))
                    .and_then(|p| match &p.kind {
                        Kind::File { chunks } if chunks.iter().all(|c| self.has(c)) => {
                            Some(chunks.clone())
                        }
                        _ => None,
                    });
                let chunks = match reuse {
                    Some(c) => {
                        self.stats.unchanged_files += 1;
                        c
                    }
                    None => match self.file(&path) {
                        Err(BackupError::Io(e)) if gone(&e) => {
                            self.stats.vanished += 1;
                            continue;
                        }
                        r => r?,
                    },
                };
                self.stats.files += 1;
                self.stats.bytes += md.size();
                node.kind = Kind::File { chunks };
                node
            } else if ft.is_symlink() {
                let target = match fs::read_link(&path) {
                    Err(e) if gone(&e) => {
                        self.stats.vanished += 1;
                        continue;
                    }
                    r => r?,
                };
                node_of(
                    &name,
                    &md,
                    Kind::Symlink {
                        target: hex::encode(target.as_os_str().as_bytes()),
                    },
                )
            } else {
                self.stats.skipped += 1;
                continue;
            };
            nodes.push(node);
        }
        let body = serde_json::to_vec(&Tree { nodes }).expect("a tree serialises");
        let id = self.repo.keys.id(&body);
        self.add(id.clone(), &body)?;
        Ok(id)
    }

    /// A file's chunks, stored when new.
    fn file(&mut self, path: &Path) -> Result<Vec<String>, BackupError> {
        let f = fs::File::open(path)?;
        let sizes = self.repo.config.chunks;
        let mut ids = Vec::new();
        chunk::chunks(std::io::BufReader::with_capacity(1 << 20, f), sizes, |c| {
            self.stats.read_bytes += c.len() as u64;
            let id = self.repo.keys.id(c);
            self.add(id.clone(), c)?;
            ids.push(id);
            Ok(())
        })?;
        Ok(ids)
    }
}

/// What a restore wrote.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Restored {
    /// Files.
    pub files: u64,
    /// Folders (the top one not counted).
    pub dirs: u64,
    /// Bytes of the files.
    pub bytes: u64,
}

/// Restores `snap` into the folder `to`, which must be empty or absent:
/// every file, folder and link with its mode, owner and modification
/// time; every chunk checked against its name.
pub async fn restore(
    repo: Arc<Repo>,
    snap: &Snapshot,
    to: PathBuf,
) -> Result<Restored, BackupError> {
    if fs::read_dir(&to).is_ok_and(|mut d| d.next().is_some()) {
        return Err(BackupError::Io(std::io::Error::other(format!(
            "{} is not empty",
            to.display()
        ))));
    }
    let index = Arc::new(repo.index().await?);
    let tree = snap.tree.clone();
    let (mode, uid, gid) = snap.root;
    tokio::task::spawn_blocking(move || {
        let mut r = Reader {
            repo: &repo,
            index: &index,
            handle: Handle::current(),
            done: Restored::default(),
        };
        fs::create_dir_all(&to)?;
        r.dir(&tree, &to)?;
        std::os::unix::fs::lchown(&to, Some(uid), Some(gid))?;
        fs::set_permissions(&to, fs::Permissions::from_mode(mode))?;
        Ok(r.done)
    })
    .await
    .map_err(|e| BackupError::Io(std::io::Error::other(e.to_string())))?
}

struct Reader<'a> {
    repo: &'a Repo,
    index: &'a Index,
    handle: Handle,
    done: Restored,
}

fn set_times(path: &Path, mtime_ns: i64) -> std::io::Result<()> {
    let t = nix::sys::time::TimeSpec::new(
        mtime_ns.div_euclid(1_000_000_000),
        mtime_ns.rem_euclid(1_000_000_000),
    );
    nix::sys::stat::utimensat(
        nix::fcntl::AT_FDCWD,
        path,
        &t,
        &t,
        nix::sys::stat::UtimensatFlags::NoFollowSymlink,
    )
    .map_err(std::io::Error::from)
}

impl Reader<'_> {
    fn blob(&self, id: &str) -> Result<Vec<u8>, BackupError> {
        self.handle.block_on(self.repo.blob(self.index, id))
    }

    fn dir(&mut self, id: &str, dir: &Path) -> Result<(), BackupError> {
        let plain = self.blob(id)?;
        let tree: Tree = serde_json::from_slice(&plain)
            .map_err(|e| BackupError::Corrupt(format!("tree {id}: {e}")))?;
        let mut seen = HashSet::new();
        for n in &tree.nodes {
            let name = n
                .safe_name()
                .filter(|name| seen.insert(name.clone()))
                .ok_or_else(|| {
                    BackupError::Corrupt(format!("tree {id}: a bad or repeated name"))
                })?;
            let path = dir.join(std::ffi::OsStr::from_bytes(&name));
            match &n.kind {
                Kind::Dir { tree } => {
                    fs::create_dir(&path)?;
                    self.dir(tree, &path)?;
                    self.done.dirs += 1;
                }
                Kind::File { chunks } => {
                    use std::io::Write;
                    let mut f = fs::OpenOptions::new()
                        .write(true)
                        .create_new(true)
                        .open(&path)?;
                    for c in chunks {
                        let data = self.blob(c)?;
                        f.write_all(&data)?;
                        self.done.bytes += data.len() as u64;
                    }
                    self.done.files += 1;
                }
                Kind::Symlink { target } => {
                    let t = hex::decode(target)
                        .map_err(|_| BackupError::Corrupt(format!("tree {id}: a bad link")))?;
                    std::os::unix::fs::symlink(std::ffi::OsStr::from_bytes(&t), &path)?;
                }
            }
            std::os::unix::fs::lchown(&path, Some(n.uid), Some(n.gid))?;
            if !matches!(n.kind, Kind::Symlink { .. }) {
                fs::set_permissions(&path, fs::Permissions::from_mode(n.mode & 0o7777))?;
            }
            set_times(&path, n.mtime_ns)?;
        }
        Ok(())
    }
}
