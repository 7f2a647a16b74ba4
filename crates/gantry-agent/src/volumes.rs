//! The node's volumes as the cluster sees them: measured every
//! [`VOLUME_MEASURE_SECS`] on a blocking thread (a sized volume's use is
//! its filesystem's; a folder's, a walk), the latest sent with the next
//! heartbeat once; and removed at a manager's request (the peer port).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use gantry_api::{VolumeReport, VolumeStat, MAX_NODE_VOLUMES, VOLUME_MEASURE_SECS};
use gantry_runtime::Runtime;

#[derive(Default)]
pub(crate) struct Measured {
    latest: Mutex<Option<VolumeReport>>,
    /// Measures again at once (the node's volumes changed).
    again: tokio::sync::Notify,
}

impl Measured {
    /// The last measurement, if it is not the one taken at `sent_ms`
    /// (copied only then: heartbeats come far more often).
    pub(crate) fn newer_than(&self, sent_ms: u64) -> Option<VolumeReport> {
        self.latest
            .lock()
            .expect("volumes lock")
            .as_ref()
            .filter(|r| r.time_ms != sent_ms)
            .cloned()
    }

    /// Has the volumes measured again soon (one was made or removed).
    pub(crate) fn changed(&self) {
        self.again.notify_one();
    }

    /// Measures now, then every [`VOLUME_MEASURE_SECS`] or when told of a
    /// change (at most once a second), until dropped. Walking big folders
    /// takes time and disk reads: the pause after a measurement is at
    /// least 20 times what it took, so that it is at most 5 % of the time.
    pub(crate) async fn run(self: Arc<Self>, rt: Arc<Runtime>) {
        loop {
            let rt2 = rt.clone();
            let started = std::time::Instant::now();
            if let Ok(r) = tokio::task::spawn_blocking(move || measure(&rt2)).await {
                *self.latest.lock().expect("volumes lock") = Some(r);
            }
            let took = started.elapsed();
            tokio::time::sleep(Duration::from_secs(1).max(took * 20)).await;
            let _ = tokio::time::timeout(
                Duration::from_secs(VOLUME_MEASURE_SECS - 1).saturating_sub(took * 20),
                self.again.notified(),
            )
            .await;
        }
    }
}

fn measure(rt: &Runtime) -> VolumeReport {
    let vols = rt.volumes();
    let mut list = vols.list();
    list.truncate(MAX_NODE_VOLUMES);
    VolumeReport {
        time_ms: crate::stats::now_ms(),
        partial: false,
        gone: Vec::new(),
        volumes: list
            .into_iter()
            .map(|v| VolumeStat {
                mountpoint: v.mountpoint.display().to_string(),
                used: vols.used(&v),
                limit: v.limit(),
                free: vols.free(&v),
                created: v.created.to_rfc3339(),
                name: v.name,
                labels: v.labels,
                options: v.options,
            })
            .collect(),
    }
}

/// Removes a volume no container on this node uses.
pub(crate) fn remove(rt: &Runtime, name: &str) -> Result<(), String> {
    if let Some(c) = rt.volume_users(name).first() {
        return Err(format!(
            "volume {name} is in use by container {}",
            c.config.name
        ));
    }
    rt.volumes().remove(name).map_err(|e| e.to_string())
}
