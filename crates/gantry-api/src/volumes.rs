//! Volumes the cluster knows: what each node measures of its volumes and
//! reports (now and then, not with every heartbeat: a folder's size is a
//! walk), and what `GET /v1/volumes` answers.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::MAX_NODE_VOLUMES;

/// How often a node measures its volumes, seconds.
pub const VOLUME_MEASURE_SECS: u64 = 30;

/// One volume on a node, as its agent last measured it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeStat {
    /// Its name.
    pub name: String,
    /// Where its data is on the node.
    #[serde(default)]
    pub mountpoint: String,
    /// Bytes it holds.
    pub used: u64,
    /// Its hard limit (`driver_opts: {size: ...}`), bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<u64>,
    /// What can still be written to a sized volume, bytes (its
    /// filesystem's own structures take part of the limit).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub free: Option<u64>,
    /// When it was made (RFC 3339).
    pub created: String,
    /// Its labels.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// Its driver options.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub options: BTreeMap<String, String>,
}

/// A node's volumes, measured at one time: all of them, or (`partial`)
/// those whose figures changed since its last report the manager took,
/// and the names of those that went.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeReport {
    /// When they were measured, milliseconds since the epoch.
    pub time_ms: u64,
    /// Every volume the node has, or those that changed.
    pub volumes: Vec<VolumeStat>,
    /// Whether `volumes` holds only the changed ones.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub partial: bool,
    /// In a partial report: the volumes that are gone.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub gone: Vec<String>,
}

/// How often a node sends all its volumes' figures, not only the changed
/// ones (a manager that restarted learns the rest by then), seconds.
pub const VOLUME_FULL_REPORT_SECS: u64 = 300;

impl VolumeReport {
    /// A report of `now` for a manager that holds `before`: the volumes
    /// whose figures differ, and those gone.
    pub fn delta(before: &BTreeMap<String, VolumeStat>, now: &[VolumeStat], time_ms: u64) -> Self {
        let names: std::collections::BTreeSet<&str> = now.iter().map(|v| v.name.as_str()).collect();
        VolumeReport {
            time_ms,
            volumes: now
                .iter()
                .filter(|v| before.get(&v.name) != Some(v))
                .cloned()
                .collect(),
            partial: true,
            gone: before
                .keys()
                .filter(|n| !names.contains(n.as_str()))
                .cloned()
                .collect(),
        }
    }

    /// Takes a report into what a manager holds of a node's volumes (a
    /// whole report replaces it).
    pub fn apply(self, held: &mut BTreeMap<String, VolumeStat>) {
        if !self.partial {
            held.clear();
        }
        for g in &self.gone {
            held.remove(g);
        }
        for v in self.volumes {
            held.insert(v.name.clone(), v);
        }
    }

    /// What the manager takes from a node: at most
    /// [`MAX_NODE_VOLUMES`] volumes, valid names, labels and options
    /// without control characters.
    pub fn check(&self) -> Result<(), String> {
        if self.volumes.len() > MAX_NODE_VOLUMES || self.gone.len() > MAX_NODE_VOLUMES {
            return Err(format!(
                "{} volumes: at most {MAX_NODE_VOLUMES}",
                self.volumes.len().max(self.gone.len())
            ));
        }
        if let Some(g) = self.gone.iter().find(|g| !valid_volume_name(g)) {
            return Err(format!("invalid volume name {g:?}"));
        }
        for v in &self.volumes {
            if !valid_volume_name(&v.name) {
                return Err(format!("invalid volume name {:?}", v.name));
            }
            if v.labels
                .iter()
                .chain(&v.options)
                .chain([(&v.name, &v.created), (&v.name, &v.mountpoint)])
                .any(|(k, val)| {
                    k.len() > 4096
                        || val.len() > 4096
                        || format!("{k}{val}").chars().any(char::is_control)
                })
            {
                return Err(format!(
                    "volume {}: a label or option too long or with a control character",
                    v.name
                ));
            }
        }
        Ok(())
    }
}

/// What a manager holds of a node's volumes: each one's latest figures.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HeldVolumes {
    /// When the latest report was measured.
    pub time_ms: u64,
    /// By name.
    pub volumes: BTreeMap<String, VolumeStat>,
}

impl HeldVolumes {
    /// Takes a node's report in.
    pub fn take(&mut self, r: VolumeReport) {
        self.time_ms = r.time_ms;
        r.apply(&mut self.volumes);
    }
}

pub use gantry_units::valid_volume_name;

/// `GET /v1/volumes`: a volume on a node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeView {
    /// Its name.
    pub name: String,
    /// The node that holds it.
    pub node: String,
    /// That node's host name.
    pub hostname: String,
    /// Whether that node is up.
    pub node_up: bool,
    /// Where its data is on its node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mountpoint: Option<String>,
    /// Bytes it holds, as last measured (none: not measured yet).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub used: Option<u64>,
    /// Its hard limit, bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<u64>,
    /// What can still be written to a sized volume, bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub free: Option<u64>,
    /// When it was made.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created: Option<String>,
    /// Its labels.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// Its driver options.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub options: BTreeMap<String, String>,
    /// When it was measured, milliseconds since the epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub measured_ms: Option<u64>,
    /// The services whose spec mounts it (full names).
    #[serde(default)]
    pub services: Vec<String>,
    /// The tasks on its node that mount it and run or are to run
    /// (`SERVICE.SLOT` names, or the task id of a global service).
    #[serde(default)]
    pub tasks: Vec<String>,
    /// Its backup schedule (`x-gantry` backup of a service's volume).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backup_schedule: Option<String>,
    /// Its last backup on this node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_backup: Option<gantry_state::BackupRecord>,
    /// A replicated volume's standby and last complete copy (on the
    /// volume's node).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replica: Option<gantry_state::ReplicaRecord>,
}

/// `DELETE /v1/volumes/{name}`: what was removed where.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeRemoved {
    /// The volume.
    pub name: String,
    /// The host names of the nodes it was removed from.
    pub nodes: Vec<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stat(name: &str) -> VolumeStat {
        VolumeStat {
            name: name.into(),
            mountpoint: "/var/lib/gantry/volumes/x/_data".into(),
            used: 1,
            limit: None,
            free: None,
            created: "2026-12-04T00:00:00Z".into(),
            labels: BTreeMap::new(),
            options: BTreeMap::new(),
        }
    }

    #[test]
    fn a_volume_report_is_checked() {
        let ok = VolumeReport {
            time_ms: 1,
            volumes: vec![stat("data"), stat("shop_db.1")],
            partial: false,
            gone: vec![],
        };
        assert!(ok.check().is_ok());
        for bad in ["", "a", "../x", "a b", "x\n"] {
            let r = VolumeReport {
                time_ms: 1,
                volumes: vec![stat(bad)],
                partial: false,
                gone: vec![],
            };
            assert!(r.check().is_err(), "{bad:?}");
            let r = VolumeReport {
                time_ms: 1,
                volumes: vec![],
                partial: true,
                gone: vec![bad.to_owned()],
            };
            assert!(r.check().is_err(), "{bad:?}");
        }
        let mut s = stat("data");
        s.labels.insert("k".into(), "a\u{1b}[31m".into());
        let r = VolumeReport {
            time_ms: 1,
            volumes: vec![s],
            partial: false,
            gone: vec![],
        };
        assert!(r.check().is_err());
        let many = VolumeReport {
            time_ms: 1,
            volumes: (0..=MAX_NODE_VOLUMES)
                .map(|i| stat(&format!("v{i}")))
                .collect(),
            partial: false,
            gone: vec![],
        };
        assert!(many.check().is_err());
    }

    proptest::proptest! {
        /// What a manager holds, with a delta of a new measurement
        /// applied, is that measurement; the delta carries only changes.
        #[test]
        fn a_delta_applied_gives_the_measurement(
            before in proptest::collection::btree_map("[a-d][a-d]", 0u64..4, 0..6),
            now in proptest::collection::btree_map("[a-d][a-d]", 0u64..4, 0..6),
        ) {
            let to = |m: &BTreeMap<String, u64>| -> Vec<VolumeStat> {
                m.iter().map(|(n, u)| VolumeStat { used: *u, ..stat(n) }).collect()
            };
            let mut held: BTreeMap<String, VolumeStat> =
                to(&before).into_iter().map(|v| (v.name.clone(), v)).collect();
            let now_v = to(&now);
            let d = VolumeReport::delta(&held, &now_v, 5);
            let changed = now.iter().filter(|(n, u)| before.get(*n) != Some(u)).count();
            proptest::prop_assert_eq!(d.volumes.len(), changed);
            d.apply(&mut held);
            proptest::prop_assert_eq!(held.into_values().collect::<Vec<_>>(), now_v);
        }
    }
}
