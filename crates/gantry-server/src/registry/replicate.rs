//! Blobs travel between managers by digest, outside Raft: a manager that
//! lacks a blob a manifest in the state names fetches it from the others
//! (in turn, until one has it), checks its digest, and only then keeps it.
//! One fetch per digest at a time; the loop that fills in what pushes to
//! other managers left missing wakes on registry writes and retries with
//! backoff.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use tokio::sync::Notify;

use crate::Shared;

/// How many blobs the loop fetches at once.
const PARALLEL: usize = 2;
/// How often the loop looks even without a wake-up.
const SWEEP: Duration = Duration::from_secs(30);
/// The longest wait between two tries of a failing fetch.
const MAX_BACKOFF: Duration = Duration::from_secs(60);
/// How long a blob no manifest names is kept (its manifest may be on
/// its way: a client pushes the blobs first).
const UNNAMED_GRACE: Duration = Duration::from_secs(3600);
/// How often unnamed blobs are looked for.
const COLLECT_EVERY: Duration = Duration::from_secs(600);

/// Fetches blobs from the other managers.
#[derive(Default)]
pub(crate) struct Fetcher {
    /// One lock per digest being fetched.
    busy: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// A client per manager address.
    clients: Mutex<HashMap<String, gantry_api::Client>>,
    /// Wakes the loop: a manifest was put.
    pub(crate) kick: Notify,
}

impl Fetcher {
    fn client(&self, sh: &Shared, addr: &str) -> Result<gantry_api::Client, String> {
        let mut clients = self.clients.lock().expect("clients lock");
        if let Some(c) = clients.get(addr) {
            return Ok(c.clone());
        }
        let tls = sh.peers.tls().ok_or("no certificate yet")?;
        let c = gantry_api::Client::new(addr, tls).map_err(|e| e.to_string())?;
        clients.insert(addr.to_owned(), c.clone());
        Ok(c)
    }

    /// Makes sure the blob is here, fetching it from another manager if
    /// it is not; its size.
    pub(crate) async fn ensure(&self, sh: &Shared, digest: &str) -> Result<u64, String> {
        if let Some(s) = sh.blobs.size(digest) {
            return Ok(s);
        }
        let lock = self
            .busy
            .lock()
            .expect("busy lock")
            .entry(digest.to_owned())
            .or_default()
            .clone();
        let res = {
            let _one = lock.lock().await;
            match sh.blobs.size(digest) {
                // Fetched by another caller while this one waited.
                Some(s) => Ok(s),
                None => self.fetch(sh, digest).await,
            }
        };
        let mut busy = self.busy.lock().expect("busy lock");
        if Arc::strong_count(&lock) <= 2 {
            busy.remove(digest);
        }
        res
    }

    async fn fetch(&self, sh: &Shared, digest: &str) -> Result<u64, String> {
        let others = sh.other_managers();
        if others.is_empty() {
            return Err("no other manager to fetch it from".into());
        }
        let mut why = Vec::new();
        for addr in others {
            match self.fetch_from(sh, &addr, digest).await {
                Ok(size) => {
                    tracing::debug!(%digest, from = %addr, size, "blob fetched");
                    return Ok(size);
                }
                Err(e) => why.push(format!("{addr}: {e}")),
            }
        }
        Err(why.join("; "))
    }

    async fn fetch_from(&self, sh: &Shared, addr: &str, digest: &str) -> Result<u64, String> {
        let client = self.client(sh, addr)?;
        // Any repository serves any blob; this name is only a path.
        let path = format!("/v2/gantry/blobs/{digest}");
        let resp = client
            .forward(
                reqwest::Method::GET,
                &path,
                reqwest::header::HeaderMap::new(),
                reqwest::Body::from(Vec::new()),
            )
            .await
            .map_err(|e| e.to_string())?;
        if !resp.status().is_success() {
            return Err(format!("answered {}", resp.status()));
        }
        sh.blobs
            .put_stream(digest, resp.bytes_stream().boxed())
            .await
            .map_err(|e| format!("{e:?}"))
    }
}

/// Fills in the blobs the state's manifests name and this manager lacks.
pub(crate) async fn run(sh: Arc<Shared>) {
    let mut failures: HashMap<String, (u32, tokio::time::Instant)> = HashMap::new();
    let mut collected = tokio::time::Instant::now();
    loop {
        if collected.elapsed() >= COLLECT_EVERY {
            collected = tokio::time::Instant::now();
            let named: BTreeSet<String> =
                sh.read(|s| s.registry_blobs().into_iter().map(str::to_owned).collect());
            let sh2 = sh.clone();
            let gone = tokio::task::spawn_blocking(move || {
                sh2.blobs.collect(|d| named.contains(d), UNNAMED_GRACE)
            })
            .await
            .unwrap_or((0, 0));
            if gone.0 > 0 {
                tracing::info!(
                    blobs = gone.0,
                    bytes = gone.1,
                    "registry blobs no manifest names removed"
                );
            }
        }
        let wanted: BTreeSet<String> =
            sh.read(|s| s.registry_blobs().into_iter().map(str::to_owned).collect());
        let now = tokio::time::Instant::now();
        let missing: Vec<String> = wanted
            .into_iter()
            .filter(|d| sh.blobs.size(d).is_none())
            .filter(|d| failures.get(d).is_none_or(|(_, next)| *next <= now))
            .collect();
        // A blob fetched meanwhile (by a client's GET) needs no backoff.
        failures.retain(|d, _| sh.blobs.size(d).is_none());
        let results: Vec<(String, Result<u64, String>)> = futures::stream::iter(missing)
            .map(|d| {
                let sh = sh.clone();
                async move {
                    let r = sh.fetcher.ensure(&sh, &d).await;
                    (d, r)
                }
            })
            .buffer_unordered(PARALLEL)
            .collect()
            .await;
        let mut soonest = SWEEP;
        for (d, r) in results {
            match r {
                Ok(_) => {
                    failures.remove(&d);
                }
                Err(e) => {
                    let tries = failures.get(&d).map_or(0, |f| f.0) + 1;
                    let wait = (Duration::from_millis(500) * 2u32.saturating_pow(tries.min(8)))
                        .min(MAX_BACKOFF);
                    tracing::info!(digest = %d, tries, "blob not fetched yet: {e}");
                    failures.insert(d, (tries, tokio::time::Instant::now() + wait));
                    soonest = soonest.min(wait);
                }
            }
        }
        tokio::select! {
            () = sh.fetcher.kick.notified() => {}
            () = tokio::time::sleep(soonest) => {}
        }
    }
}
