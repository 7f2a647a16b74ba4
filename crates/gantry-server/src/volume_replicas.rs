//! Replicated volumes on the leader (`x-gantry: {replicas: 2}`, see
//! `gantry_manager::replicas`): every [`COPY_EVERY`] each volume's
//! changes go from its node to its standby's copy (the node's export,
//! with the volume's users frozen while it is read, joined to the
//! standby's `POST /volumes/NAME/replica`), and when its node dies the
//! standby becomes its home. A node that comes back with a copy the
//! volume no longer lives in has it removed once nothing there mounts it.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use gantry_api::{CopyImported, CopyListing, NodeVolumeJob};
use gantry_store::{Command, NodeRecord, ReplicaRecord};

use crate::{now_ms, Shared};

/// Between the starts of two copies of a volume.
pub(crate) const COPY_EVERY: Duration = Duration::from_secs(3);

/// Copies running at once in the cluster.
const MAX_COPIES: usize = 4;

/// The leader's loop.
pub(crate) async fn run(sh: Arc<Shared>) {
    let in_flight: Arc<Mutex<HashSet<String>>> = Arc::default();
    let mut last: HashMap<String, Instant> = HashMap::new();
    let mut removing: HashMap<(String, String), Instant> = HashMap::new();
    let mut swept = Instant::now();
    loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        if !sh.is_leader() {
            continue;
        }
        let cmds = sh.read(gantry_manager::replicas::failovers);
        if !cmds.is_empty() {
            tracing::info!("replicated volumes: the standby takes over: {cmds:?}");
            if let Err(e) = sh.apply(cmds) {
                tracing::warn!("replicated volumes: failover: {e}");
            }
        }
        let wanted = sh.read(gantry_manager::replicas::replicated);
        last.retain(|v, _| wanted.contains_key(v));
        // Leftovers are looked for every 10 s, not at every turn.
        if swept.elapsed() > Duration::from_secs(10) {
            swept = Instant::now();
            forget_unwanted(&sh, &wanted).await;
            for name in wanted.keys() {
                stale_copies(&sh, name, &mut removing).await;
            }
        }
        for name in wanted.keys() {
            if in_flight.lock().expect("flight lock").len() >= MAX_COPIES {
                continue;
            }
            if last.get(name).is_some_and(|t| t.elapsed() < COPY_EVERY) {
                continue;
            }
            let Some((primary, standby)) = pair(&sh, name) else {
                continue;
            };
            if !in_flight.lock().expect("flight lock").insert(name.clone()) {
                continue;
            }
            last.insert(name.clone(), Instant::now());
            let (sh2, flight, name) = (sh.clone(), in_flight.clone(), name.clone());
            tokio::spawn(async move {
                copy(&sh2, &name, &primary, &standby).await;
                flight.lock().expect("flight lock").remove(&name);
            });
        }
    }
}

/// Volumes replicated no more (their stack gone, or `replicas` taken
/// out): the standby's copy goes, then the record.
async fn forget_unwanted(sh: &Shared, wanted: &std::collections::BTreeMap<String, Vec<String>>) {
    let gone: Vec<(ReplicaRecord, Option<NodeRecord>)> = sh.read(|s| {
        s.replicas
            .values()
            .filter(|r| !wanted.contains_key(&r.volume))
            .map(|r| {
                (
                    r.clone(),
                    r.standby.as_ref().and_then(|n| s.nodes.get(n).cloned()),
                )
            })
            .collect()
    });
    for (r, standby) in gone {
        if let Some(n) = &standby {
            if !n.up {
                // Its copy goes when it is back.
                continue;
            }
            if let Err(e) =
                crate::volume_backups::on_node::<()>(sh, n, &r.volume, &NodeVolumeJob::DropReplica)
                    .await
            {
                tracing::warn!(
                    volume = r.volume,
                    node = n.hostname,
                    "dropping a standby copy: {e}"
                );
                continue;
            }
        }
        if let Err(e) = sh.apply(vec![Command::RemoveReplica {
            volume: r.volume.clone(),
        }]) {
            tracing::warn!(volume = r.volume, "forgetting a replica: {e}");
        }
    }
}

/// The volume's node (up) and its standby, chosen if need be.
fn pair(sh: &Shared, name: &str) -> Option<(NodeRecord, NodeRecord)> {
    let p = sh.read(|s| gantry_manager::replicas::primary(s, name))?;
    // What the volume holds, as its node last measured it.
    let used = sh
        .volumes
        .lock()
        .expect("volumes lock")
        .get(&p)
        .and_then(|h| h.volumes.get(name))
        .map_or(0, |v| v.used);
    sh.read(|s| {
        let primary = s
            .nodes
            .get(&p)
            .filter(|n| n.up && n.volumes.contains(name))?;
        let sb = match gantry_manager::replicas::standby(s, name, &p, used) {
            Ok(sb) => sb,
            Err(e) => {
                tracing::debug!(volume = name, "no standby: {e}");
                return None;
            }
        };
        Some((primary.clone(), s.nodes.get(&sb)?.clone()))
    })
}

/// One copy of the volume's changes to its standby, recorded.
async fn copy(sh: &Shared, name: &str, primary: &NodeRecord, standby: &NodeRecord) {
    let started = now_ms();
    let done = pass(sh, name, primary, standby).await;
    let r = sh.update(|s| {
        let old = s.replicas.get(name).cloned().unwrap_or_default();
        // A failover meanwhile: this copy is of the old home.
        if gantry_manager::replicas::primary(s, name).as_deref() != Some(primary.id.as_str()) {
            return Vec::new();
        }
        let same = old.primary == primary.id && old.standby.as_deref() == Some(standby.id.as_str());
        let mut rec = ReplicaRecord {
            volume: name.to_owned(),
            primary: primary.id.clone(),
            standby: Some(standby.id.clone()),
            copied_ms: if same { old.copied_ms } else { 0 },
            copies: if same { old.copies } else { 0 },
            error: None,
        };
        match &done {
            Ok(_) => {
                rec.copied_ms = started;
                rec.copies += 1;
            }
            Err(e) => rec.error = Some(e.clone()),
        }
        vec![Command::PutReplica(rec)]
    });
    match (done, r) {
        (Err(e), _) => tracing::warn!(
            volume = name,
            standby = standby.hostname,
            "copy to the standby: {e}"
        ),
        (_, Err(e)) => tracing::warn!(volume = name, "recording a copy: {e}"),
        (Ok(d), _) => tracing::debug!(volume = name, bytes = d.bytes, "copied to the standby"),
    }
}

/// The standby lists its copy, the node sends what differs (its users
/// frozen while it is read), the standby swaps the new copy in whole.
async fn pass(
    sh: &Shared,
    name: &str,
    primary: &NodeRecord,
    standby: &NodeRecord,
) -> Result<CopyImported, String> {
    let have: CopyListing =
        crate::volume_backups::on_node(sh, standby, name, &NodeVolumeJob::ReplicaListing).await?;
    crate::volume_move::relay(sh, name, primary, standby, &have, true, "replica").await
}

/// Removes the volume from up nodes that hold it but are not its home
/// (an old primary back after a failover), once no live task there
/// mounts it.
async fn stale_copies(sh: &Shared, name: &str, removing: &mut HashMap<(String, String), Instant>) {
    let stale: Vec<NodeRecord> = sh.read(|s| {
        let Some(home) = s.volume_homes.get(name) else {
            return Vec::new();
        };
        s.nodes
            .values()
            .filter(|n| n.up && &n.id != home && n.volumes.contains(name))
            .filter(|n| {
                gantry_manager::volumes::users(s, name, Some(&n.id))
                    .1
                    .is_empty()
            })
            .cloned()
            .collect()
    });
    for n in stale {
        let key = (name.to_owned(), n.id.clone());
        if removing
            .get(&key)
            .is_some_and(|t| t.elapsed() < Duration::from_secs(10))
        {
            continue;
        }
        removing.insert(key, Instant::now());
        match crate::volumes::remove_on(sh, &n, name).await {
            Ok(()) => tracing::info!(
                volume = name,
                node = n.hostname,
                "removed a replicated volume's stale copy"
            ),
            Err(e) => tracing::debug!(
                volume = name,
                node = n.hostname,
                "stale copy stays for now: {e}"
            ),
        }
    }
}
