//! Volume backups through the cluster. The CLI names a volume, a
//! repository and the secrets that open it (or nothing, and the volume's
//! `x-gantry` backup settings are taken); this manager opens the secrets
//! and asks the node that holds the volume to do the work on its peer
//! port (`POST /volumes/NAME/job`). The leader also runs the schedules:
//! each volume with settings, on each up node that holds it, at its
//! cron times; then it keeps the newest `keep` snapshots and prunes.
//!
//! One job at a time per repository (a prune must not remove what a
//! backup beside it reuses), and at most [`MAX_RUNNING`] scheduled ones
//! at a time in the cluster. A failed scheduled backup is tried again
//! only after a pause that doubles with each failure in a row.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::{Extension, Json};
use base64::Engine;
use gantry_api::{
    BackupDone, BackupRequest, BackupsRequest, NodeRepo, NodeVolumeJob, PruneDone, RepoRef,
    RestoreDone, RestoreRequest, Snapshot,
};
use gantry_store::{BackupRecord, Command, NodeRecord};

use crate::api::{bad, not_found, Fail, Peer};
use crate::{now_ms, Shared};

/// Scheduled backups running at once in the cluster.
pub(crate) const MAX_RUNNING: usize = 2;

/// How long a node may take over one job.
const JOB_TIMEOUT: Duration = Duration::from_secs(6 * 3600);

/// The repositories in use by jobs: backups, listings and restores share
/// one (each writes only its own packs, index and snapshot); a prune has
/// it alone (it removes what a backup beside it could reuse).
#[derive(Default)]
pub(crate) struct Jobs {
    /// URL to the jobs sharing it, or `usize::MAX` for a prune.
    busy: Arc<Mutex<HashMap<String, usize>>>,
    /// Scheduled backups running.
    running: Arc<std::sync::atomic::AtomicUsize>,
}

/// A repository held for one job; freed when dropped.
struct Held {
    busy: Arc<Mutex<HashMap<String, usize>>>,
    url: String,
}

impl Drop for Held {
    fn drop(&mut self) {
        let mut busy = self.busy.lock().expect("jobs lock");
        match busy.get_mut(&self.url) {
            Some(n) if *n > 1 && *n != usize::MAX => *n -= 1,
            _ => {
                busy.remove(&self.url);
            }
        }
    }
}

impl Jobs {
    /// Shares the repository with other backups (not with a prune).
    fn try_hold(&self, url: &str) -> Option<Held> {
        let mut busy = self.busy.lock().expect("jobs lock");
        let n = busy.entry(url.to_owned()).or_insert(0);
        if *n == usize::MAX {
            return None;
        }
        *n += 1;
        Some(Held {
            busy: self.busy.clone(),
            url: url.to_owned(),
        })
    }

    /// The repository alone, for a prune.
    fn try_hold_alone(&self, url: &str) -> Option<Held> {
        let mut busy = self.busy.lock().expect("jobs lock");
        if busy.contains_key(url) {
            return None;
        }
        busy.insert(url.to_owned(), usize::MAX);
        Some(Held {
            busy: self.busy.clone(),
            url: url.to_owned(),
        })
    }
}

/// A scheduled backup counted while it runs.
struct Running(Arc<std::sync::atomic::AtomicUsize>);

impl Drop for Running {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}

/// A repository and the names of the secrets that open it, resolved.
#[derive(Debug, Clone)]
struct Resolved {
    url: String,
    key: String,
    credentials: Option<String>,
}

/// What the request gives, else the volume's settings.
fn resolve(sh: &Shared, volume: &str, r: &RepoRef) -> Result<Resolved, Fail> {
    let policy = sh.read(|s| gantry_manager::backups::policies(s).remove(volume));
    let url = r
        .repo
        .clone()
        .or_else(|| policy.as_ref().map(|p| p.to.clone()));
    let key = r
        .key_secret
        .clone()
        .or_else(|| policy.as_ref().map(|p| p.key.clone()));
    let credentials = r
        .credentials
        .clone()
        .or_else(|| policy.as_ref().and_then(|p| p.credentials.clone()));
    match (url, key) {
        (Some(url), Some(key)) => Ok(Resolved {
            url,
            key,
            credentials,
        }),
        _ => Err(bad(format!(
            "volume {volume} has no backup settings: give the repository and the key's secret"
        ))),
    }
}

/// A secret's value, opened.
fn secret_value(sh: &Shared, name: &str) -> Result<zeroize::Zeroizing<Vec<u8>>, Fail> {
    let rec = sh
        .read(|s| s.secrets.get(name).cloned())
        .ok_or_else(|| not_found(format!("no such secret: {name}")))?;
    let guard = sh.data_key.read().expect("data key lock");
    let key = guard.as_ref().ok_or_else(crate::unlock::locked)?;
    rec.open(key).map_err(|_| {
        Fail(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("secret {name} does not open"),
        )
    })
}

/// The repository as a node gets it.
fn node_repo(sh: &Shared, r: &Resolved) -> Result<NodeRepo, Fail> {
    let key = secret_value(sh, &r.key)?;
    if key.len() < 16 {
        return Err(bad(format!(
            "secret {}: a backup key has at least 16 bytes",
            r.key
        )));
    }
    let env = match &r.credentials {
        Some(c) => gantry_api::parse_s3_settings(&secret_value(sh, c)?)
            .map_err(|e| bad(format!("secret {c}: {e}")))?,
        None => Vec::new(),
    };
    Ok(NodeRepo {
        url: r.url.clone(),
        key: base64::engine::general_purpose::STANDARD.encode(&key[..]),
        env,
    })
}

/// Asks `node`'s agent to do `job` on its volume `volume`.
pub(crate) async fn on_node<T: serde::de::DeserializeOwned>(
    sh: &Shared,
    node: &NodeRecord,
    volume: &str,
    job: &NodeVolumeJob,
) -> Result<T, String> {
    if !node.up {
        return Err(format!("node {} is down", node.hostname));
    }
    let (client, base) = crate::builds::node_client(sh, node)?;
    let resp = client
        .post(format!("{base}/volumes/{volume}/job"))
        .json(job)
        .timeout(JOB_TIMEOUT)
        .send()
        .await
        .map_err(|e| {
            format!(
                "{}: {}",
                node.hostname,
                gantry_image::registry::error_chain(&e)
            )
        })?;
    let status = resp.status();
    if !status.is_success() {
        let text = resp.text().await.unwrap_or_default();
        return Err(if text.is_empty() {
            format!("{}: its agent answered {status}", node.hostname)
        } else {
            text
        });
    }
    resp.json()
        .await
        .map_err(|e| format!("{}: {e}", node.hostname))
}

/// The nodes that hold `volume`, or `want` (an id, a prefix of one, or
/// a host name) among all nodes.
fn nodes_for(sh: &Shared, volume: &str, want: Option<&str>) -> Result<Vec<NodeRecord>, Fail> {
    sh.read(|s| match want {
        Some(w) => {
            let found: Vec<&NodeRecord> = s
                .nodes
                .values()
                .filter(|n| n.id == w || n.hostname == w)
                .collect();
            let found = if found.is_empty() {
                s.nodes.values().filter(|n| n.id.starts_with(w)).collect()
            } else {
                found
            };
            match found[..] {
                [one] => Ok(vec![one.clone()]),
                [] => Err(not_found(format!("no such node: {w}"))),
                _ => Err(bad(format!("node {w} is ambiguous"))),
            }
        }
        None => Ok(Vec::new()),
    })
    .map(|named| {
        if want.is_some() {
            named
        } else {
            crate::volumes::holders(sh, volume)
        }
    })
}

/// The one node that holds `volume` (or the one named).
pub(crate) fn holder(sh: &Shared, volume: &str, want: Option<&str>) -> Result<NodeRecord, Fail> {
    let mut nodes = nodes_for(sh, volume, want)?;
    // Several: where the volume lives (moved, or failed over; the node it
    // left may still list its old copy), else the one that is up.
    if nodes.len() > 1 {
        if let Some(home) = sh.read(|s| s.volume_homes.get(volume).cloned()) {
            nodes.retain(|n| n.id == home);
        } else if nodes.iter().filter(|n| n.up).count() == 1 {
            nodes.retain(|n| n.up);
        }
    }
    match nodes.len() {
        1 => Ok(nodes.remove(0)),
        0 => Err(not_found(format!("no such volume: {volume}"))),
        _ => Err(bad(format!(
            "volume {volume} is on several nodes ({}): name one",
            nodes
                .iter()
                .map(|n| n.hostname.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ))),
    }
}

/// Records how a backup went (the last success is kept through
/// failures).
fn record(
    sh: &Shared,
    node: &NodeRecord,
    volume: &str,
    url: &str,
    started_ms: u64,
    r: &Result<BackupDone, String>,
) {
    let key = gantry_manager::backups::record_key(&node.id, volume);
    let now = now_ms();
    let mut rec = BackupRecord {
        volume: volume.to_owned(),
        node: node.id.clone(),
        repo: url.to_owned(),
        at_ms: now,
        millis: now.saturating_sub(started_ms),
        snapshot: None,
        bytes: 0,
        stored: 0,
        error: None,
        last_ok_ms: Some(now),
        failures: 0,
    };
    match r {
        Ok(d) => {
            rec.millis = d.snapshot.stats.millis;
            rec.snapshot = Some(d.snapshot.id.clone());
            rec.bytes = d.snapshot.stats.bytes;
            rec.stored = d.snapshot.stats.stored_bytes;
        }
        Err(e) => rec.error = Some(e.clone()),
    }
    let failed = r.is_err();
    let done = sh.update(|s| {
        if failed {
            let prev = s.backups.get(&key);
            rec.last_ok_ms = prev.and_then(|p| p.last_ok_ms);
            rec.failures = prev.map_or(1, |p| p.failures + 1);
        }
        vec![Command::PutBackup(rec)]
    });
    if let Err(e) = done {
        tracing::warn!(volume, "recording a backup: {e}");
    }
}

/// One backup of `volume` on `node`, recorded.
async fn backup_on(
    sh: &Shared,
    node: &NodeRecord,
    volume: &str,
    r: &Resolved,
    repo: NodeRepo,
    how: (bool, Option<String>, Option<String>),
) -> Result<BackupDone, String> {
    let started = now_ms();
    let job = NodeVolumeJob::Backup {
        repo,
        host: node.hostname.clone(),
        no_freeze: how.0,
        pre: how.1,
        post: how.2,
    };
    let done = on_node::<BackupDone>(sh, node, volume, &job).await;
    record(sh, node, volume, &r.url, started, &done);
    done
}

fn busy(url: &str) -> Fail {
    Fail(
        StatusCode::CONFLICT,
        format!("repository {url} is busy with another backup job; try again when it ends"),
    )
}

/// `POST /v1/volumes/{name}/backup`.
pub(crate) async fn backup(
    State(sh): State<Arc<Shared>>,
    Extension(peer): Extension<Peer>,
    Path(name): Path<String>,
    Json(req): Json<BackupRequest>,
) -> Result<Json<BackupDone>, Fail> {
    peer.admin()?;
    let node = holder(&sh, &name, req.node.as_deref())?;
    let r = resolve(&sh, &name, &req.repo)?;
    let repo = node_repo(&sh, &r)?;
    let _held = sh
        .backup_jobs
        .try_hold(&r.url)
        .ok_or_else(|| busy(&r.url))?;
    backup_on(
        &sh,
        &node,
        &name,
        &r,
        repo,
        (req.no_freeze, req.pre, req.post),
    )
    .await
    .map(Json)
    .map_err(|e| Fail(StatusCode::CONFLICT, e))
}

/// `POST /v1/volumes/{name}/backups`.
pub(crate) async fn backups(
    State(sh): State<Arc<Shared>>,
    Extension(peer): Extension<Peer>,
    Path(name): Path<String>,
    Json(req): Json<BackupsRequest>,
) -> Result<Json<Vec<Snapshot>>, Fail> {
    peer.admin()?;
    let r = resolve(&sh, &name, &req.repo)?;
    let repo = node_repo(&sh, &r)?;
    // A node that holds the volume reads the repository (a folder is on
    // it); with none, any up node.
    let mut nodes = nodes_for(&sh, &name, None)?;
    if nodes.iter().all(|n| !n.up) {
        nodes = sh.read(|s| s.nodes.values().filter(|n| n.up).cloned().collect());
    }
    let node = nodes
        .into_iter()
        .find(|n| n.up)
        .ok_or_else(|| Fail(StatusCode::SERVICE_UNAVAILABLE, "no node is up".into()))?;
    on_node(&sh, &node, &name, &NodeVolumeJob::Snapshots { repo })
        .await
        .map(Json)
        .map_err(|e| Fail(StatusCode::CONFLICT, e))
}

/// `POST /v1/volumes/{name}/restore`: on the node named, or the one that
/// holds the volume; in place, the services whose tasks there mount it
/// are paused meanwhile.
pub(crate) async fn restore(
    State(sh): State<Arc<Shared>>,
    Extension(peer): Extension<Peer>,
    Path(name): Path<String>,
    Json(req): Json<RestoreRequest>,
) -> Result<Json<RestoreDone>, Fail> {
    peer.admin()?;
    if let Some(to) = &req.to {
        if !gantry_api::valid_volume_name(to) {
            return Err(bad(format!("invalid volume name {to:?}")));
        }
    }
    let node = holder(&sh, &name, req.node.as_deref())?;
    let mut to = req.to.clone();
    let r = resolve(&sh, &name, &req.repo)?;
    let repo = node_repo(&sh, &r)?;
    let _held = sh
        .backup_jobs
        .try_hold(&r.url)
        .ok_or_else(|| busy(&r.url))?;
    // In place: the services whose tasks there mount it stop meanwhile,
    // and start again after.
    let mut _paused = None;
    if to.is_none() {
        _paused = Some(
            crate::volume_move::pause_users(
                &sh,
                &name,
                &node,
                &format!("volume {name} is being restored"),
            )
            .await?,
        );
        // A node without the volume gets it made.
        if !crate::volumes::holders(&sh, &name)
            .iter()
            .any(|n| n.id == node.id)
        {
            to = Some(name.clone());
        }
    }
    let job = NodeVolumeJob::Restore {
        repo,
        from: req.from.clone(),
        to,
    };
    let mut done: RestoreDone = on_node(&sh, &node, &name, &job)
        .await
        .map_err(|e| Fail(StatusCode::CONFLICT, e))?;
    done.node = node.hostname.clone();
    Ok(Json(done))
}

/// The leader's loop: runs each volume's scheduled backups when due.
pub(crate) async fn run(sh: Arc<Shared>) {
    // When the loop first saw each scheduled volume (its first run is the
    // schedule's first time after that).
    let mut first_seen: HashMap<String, u64> = HashMap::new();
    let in_flight: Arc<Mutex<HashSet<String>>> = Arc::default();
    let mut schedules: HashMap<String, gantry_units::Schedule> = HashMap::new();
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        if !sh.is_leader() {
            first_seen.clear();
            continue;
        }
        let (scheduled, records) = sh.read(|s| {
            let sch = gantry_manager::backups::scheduled(s);
            let recs: HashMap<String, BackupRecord> = sch
                .iter()
                .filter_map(|j| s.backups.get(&j.key()).map(|r| (j.key(), r.clone())))
                .collect();
            (sch, recs)
        });
        let now = now_ms();
        let live: HashSet<String> = scheduled.iter().map(|j| j.key()).collect();
        first_seen.retain(|k, _| live.contains(k));
        for job in scheduled {
            let running = &sh.backup_jobs.running;
            if running.load(std::sync::atomic::Ordering::Relaxed) >= MAX_RUNNING {
                break;
            }
            let key = job.key();
            let seen = *first_seen.entry(key.clone()).or_insert(now);
            let schedule = match schedules.get(&job.policy.schedule) {
                Some(s) => s.clone(),
                None => match job.policy.schedule.parse::<gantry_units::Schedule>() {
                    Ok(s) => {
                        schedules.insert(job.policy.schedule.clone(), s.clone());
                        s
                    }
                    Err(_) => continue,
                },
            };
            let due = gantry_manager::backups::next_due(&schedule, records.get(&key), seen);
            if due.is_none_or(|d| d > now) {
                continue;
            }
            // Held before the spawn: no prune starts under it.
            let Some(held) = sh.backup_jobs.try_hold(&job.policy.to) else {
                continue;
            };
            // The same volume on the same node is not backed up twice
            // at once.
            if !in_flight
                .lock()
                .expect("in flight lock")
                .insert(key.clone())
            {
                continue;
            }
            running.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let counted = Running(running.clone());
            let (sh2, flight) = (sh.clone(), in_flight.clone());
            tokio::spawn(async move {
                scheduled_backup(&sh2, &job, held).await;
                flight.lock().expect("in flight lock").remove(&key);
                drop(counted);
            });
        }
    }
}

/// One scheduled backup, then the repository's forget and prune.
async fn scheduled_backup(sh: &Shared, job: &gantry_manager::backups::Scheduled, held: Held) {
    let p = &job.policy;
    let Some(node) = sh.read(|s| s.nodes.get(&job.node).cloned()) else {
        return;
    };
    let r = Resolved {
        url: p.to.clone(),
        key: p.key.clone(),
        credentials: p.credentials.clone(),
    };
    let repo = match node_repo(sh, &r) {
        Ok(x) => x,
        Err(Fail(_, e)) => {
            record(sh, &node, &job.volume, &p.to, now_ms(), &Err(e));
            return;
        }
    };
    let how = (p.no_freeze, p.pre.clone(), p.post.clone());
    match backup_on(sh, &node, &job.volume, &r, repo.clone(), how).await {
        Ok(d) => tracing::info!(
            volume = job.volume,
            node = node.hostname,
            snapshot = &d.snapshot.id[..8],
            "scheduled backup"
        ),
        Err(e) => {
            tracing::warn!(
                volume = job.volume,
                node = node.hostname,
                "scheduled backup failed: {e}"
            );
            return;
        }
    }
    drop(held);
    if p.keep > 0 {
        // Alone in the repository; when another job uses it, the prune
        // waits for the next backup.
        let Some(_alone) = sh.backup_jobs.try_hold_alone(&p.to) else {
            return;
        };
        let prune = NodeVolumeJob::Prune { repo, keep: p.keep };
        match on_node::<PruneDone>(sh, &node, &job.volume, &prune).await {
            Ok(d) if d.forgotten > 0 => tracing::info!(
                volume = job.volume,
                forgotten = d.forgotten,
                packs = d.pruned.packs,
                bytes = d.pruned.bytes,
                "pruned old backups"
            ),
            Ok(_) => {}
            Err(e) => tracing::warn!(volume = job.volume, "pruning old backups: {e}"),
        }
    }
}
