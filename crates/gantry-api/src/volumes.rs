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

/// A node's volumes, measured at one time.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeReport {
    /// When they were measured, milliseconds since the epoch.
    pub time_ms: u64,
    /// Every volume the node has.
    pub volumes: Vec<VolumeStat>,
}

impl VolumeReport {
    /// What the manager takes from a node: at most
    /// [`MAX_NODE_VOLUMES`] volumes, valid names, labels and options
    /// without control characters.
    pub fn check(&self) -> Result<(), String> {
        if self.volumes.len() > MAX_NODE_VOLUMES {
            return Err(format!(
                "{} volumes: at most {MAX_NODE_VOLUMES}",
                self.volumes.len()
            ));
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

/// Docker's volume names: `[a-zA-Z0-9][a-zA-Z0-9_.-]+`, at most 255.
pub fn valid_volume_name(v: &str) -> bool {
    v.len() >= 2
        && v.len() <= 255
        && v.starts_with(|c: char| c.is_ascii_alphanumeric())
        && v.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}

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
        };
        assert!(ok.check().is_ok());
        for bad in ["", "a", "../x", "a b", "x\n"] {
            let r = VolumeReport {
                time_ms: 1,
                volumes: vec![stat(bad)],
            };
            assert!(r.check().is_err(), "{bad:?}");
        }
        let mut s = stat("data");
        s.labels.insert("k".into(), "a\u{1b}[31m".into());
        let r = VolumeReport {
            time_ms: 1,
            volumes: vec![s],
        };
        assert!(r.check().is_err());
        let many = VolumeReport {
            time_ms: 1,
            volumes: (0..=MAX_NODE_VOLUMES)
                .map(|i| stat(&format!("v{i}")))
                .collect(),
        };
        assert!(many.check().is_err());
    }
}
