//! Scheduled volume backups: which volumes have a schedule, on which
//! nodes, and when each is next due. Pure; the server's loop runs the
//! jobs (`gantry-server/src/backups.rs`).

use std::collections::BTreeMap;

use gantry_spec::{BackupPolicy, MountType};
use gantry_state::{BackupRecord, State};

/// The longest pause after failures in a row, ms.
pub const RETRY_MAX_MS: u64 = 3_600_000;

/// A volume with scheduled backups on a node that holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scheduled {
    /// The volume's name on the nodes.
    pub volume: String,
    /// The node that holds it.
    pub node: String,
    /// Its backup settings (those of the first service, by name, that
    /// mounts it with some).
    pub policy: BackupPolicy,
}

impl Scheduled {
    /// Its key in [`State::backups`].
    pub fn key(&self) -> String {
        record_key(&self.node, &self.volume)
    }
}

/// The key of node `node`'s volume `volume` in [`State::backups`].
pub fn record_key(node: &str, volume: &str) -> String {
    BackupRecord::key_of(node, volume)
}

/// The volumes of the cluster's services that have backup settings, and
/// the policy of each: the first service's, by name.
pub fn policies(s: &State) -> BTreeMap<String, BackupPolicy> {
    let mut out = BTreeMap::new();
    for r in s.services.values() {
        for m in &r.spec.volumes {
            if m.kind != MountType::Volume || m.source.is_empty() {
                continue;
            }
            if let Some(p) = &m.volume.backup {
                out.entry(m.volume_name(&r.stack))
                    .or_insert_with(|| p.clone());
            }
        }
    }
    out
}

/// Every volume with backup settings on every up node that holds it.
pub fn scheduled(s: &State) -> Vec<Scheduled> {
    let policies = policies(s);
    let mut out = Vec::new();
    for n in s.nodes.values().filter(|n| n.up) {
        for v in &n.volumes {
            if let Some(p) = policies.get(v) {
                out.push(Scheduled {
                    volume: v.clone(),
                    node: n.id.clone(),
                    policy: p.clone(),
                });
            }
        }
    }
    out
}

/// The pause after `failures` failed backups in a row: 30 s, doubling,
/// at most [`RETRY_MAX_MS`].
pub fn retry_pause_ms(failures: u32) -> u64 {
    if failures == 0 {
        return 0;
    }
    30_000u64
        .saturating_mul(1 << (failures - 1).min(20))
        .min(RETRY_MAX_MS)
}

/// When a volume's next scheduled backup is due: the schedule's first
/// time after its last backup (or after `first_seen_ms`, when the
/// scheduler first saw it, if it has none), and not before the pause
/// its failures call for. A time missed while no manager led is run
/// once, not once per missed time.
pub fn next_due(
    schedule: &gantry_units::Schedule,
    last: Option<&BackupRecord>,
    first_seen_ms: u64,
) -> Option<u64> {
    let from = last.map_or(first_seen_ms, |r| r.at_ms);
    let next = schedule.next_after(from)?;
    let pause = last.map_or(0, |r| r.at_ms + retry_pause_ms(r.failures));
    Some(next.max(pause))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::volumes::tests::{node, service};
    use proptest::prelude::*;

    fn policy(schedule: &str) -> BackupPolicy {
        BackupPolicy {
            schedule: schedule.into(),
            to: "/srv/b".into(),
            key: "k".into(),
            credentials: None,
            keep: 3,
            pre: None,
            post: None,
            no_freeze: false,
        }
    }

    fn record(at_ms: u64, failures: u32) -> BackupRecord {
        BackupRecord {
            volume: "shop_data".into(),
            node: "n1".into(),
            repo: "/srv/b".into(),
            at_ms,
            millis: 10,
            snapshot: None,
            bytes: 0,
            stored: 0,
            error: (failures > 0).then(|| "down".into()),
            last_ok_ms: None,
            failures,
        }
    }

    #[test]
    fn volumes_with_settings_on_the_up_nodes_that_hold_them() {
        let mut s = State::default();
        for (id, up, vols) in [
            ("n1", true, &["shop_data", "shop_cache"][..]),
            ("n2", false, &["shop_data"]),
            ("n3", true, &["other"]),
        ] {
            let mut n = node(id, vols);
            n.up = up;
            s.nodes.insert(id.into(), n);
        }
        // The service mounts data (with settings) and a bind; another
        // mounts cache without.
        let mut db = service("shop_db", "shop", "data");
        db.spec.volumes[0].volume.backup = Some(policy("0 3 * * *"));
        s.services.insert("shop_db".into(), db);
        s.services
            .insert("shop_web".into(), service("shop_web", "shop", "cache"));
        let got = scheduled(&s);
        assert_eq!(got.len(), 1, "{got:?}");
        assert_eq!(
            (got[0].volume.as_str(), got[0].node.as_str()),
            ("shop_data", "n1")
        );
        assert_eq!(got[0].key(), "n1/shop_data");
    }

    #[test]
    fn failures_pause_longer_each_time() {
        let every_5s: gantry_units::Schedule = "*/5 * * * * *".parse().unwrap();
        let t = 1_796_342_400_000;
        assert_eq!(next_due(&every_5s, None, t), Some(t + 5_000));
        assert_eq!(next_due(&every_5s, Some(&record(t, 0)), 0), Some(t + 5_000));
        assert_eq!(
            next_due(&every_5s, Some(&record(t, 1)), 0),
            Some(t + 30_000)
        );
        assert_eq!(
            next_due(&every_5s, Some(&record(t, 3)), 0),
            Some(t + 120_000)
        );
        assert_eq!(
            next_due(&every_5s, Some(&record(t, 40)), 0),
            Some(t + RETRY_MAX_MS)
        );
        // A nightly schedule missed for days runs once, now.
        let nightly: gantry_units::Schedule = "0 3 * * *".parse().unwrap();
        let due = next_due(&nightly, Some(&record(t, 0)), 0).unwrap();
        assert_eq!(due, t + 3 * 3_600_000);
    }

    proptest! {
        #[test]
        fn the_next_run_is_after_the_last_and_the_pause(at in 0u64..4_000_000_000_000, failures in 0u32..50) {
            let s: gantry_units::Schedule = "*/7 * * * *".parse().unwrap();
            let due = next_due(&s, Some(&record(at, failures)), 0).unwrap();
            prop_assert!(due > at);
            prop_assert!(due >= at + retry_pause_ms(failures));
            prop_assert!(due <= at + retry_pause_ms(failures).max(7 * 60_000) + 60_000);
        }
    }
}
