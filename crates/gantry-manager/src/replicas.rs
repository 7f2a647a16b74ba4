//! Replicated volumes (`x-gantry: {replicas: 2}`): which volumes are,
//! where each lives, where its standby copy goes, and when the standby
//! takes over. Pure; the server's loop copies
//! (`gantry-server/src/volume_replicas.rs`).
//!
//! The copy is asynchronous: the standby holds the volume as it was at
//! its last complete copy. When the primary's node is down (and the
//! storm guard does not hold it), the volume's home becomes the standby,
//! so its service's task is placed there and its agent makes the volume
//! from that copy.

use std::collections::BTreeMap;

use gantry_spec::MountType;
use gantry_state::{Command, ReplicaRecord, State};

/// The replicated volumes and the services that mount them.
pub fn replicated(s: &State) -> BTreeMap<String, Vec<String>> {
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for r in s.services.values() {
        for m in &r.spec.volumes {
            if m.kind == MountType::Volume && !m.source.is_empty() && m.volume.replicas >= 2 {
                out.entry(m.volume_name(&r.stack))
                    .or_default()
                    .push(r.name.clone());
            }
        }
    }
    out
}

/// The node whose volume `name` is: its home (set by a move or a
/// failover), else the one node that lists it, else the record's.
pub fn primary(s: &State, name: &str) -> Option<String> {
    if let Some(h) = s.volume_homes.get(name) {
        return Some(h.clone());
    }
    let holders: Vec<&String> = s
        .nodes
        .values()
        .filter(|n| n.volumes.contains(name))
        .map(|n| &n.id)
        .collect();
    match holders[..] {
        [one] => Some(one.clone()),
        _ => s.replicas.get(name).map(|r| r.primary.clone()),
    }
}

/// The standby takes over the volumes whose primary's node is down (and
/// not held by the storm guard) and whose standby is up with a complete
/// copy.
pub fn failovers(s: &State) -> Vec<Command> {
    let wanted = replicated(s);
    let mut out = Vec::new();
    for (name, r) in &s.replicas {
        if !wanted.contains_key(name) || r.copied_ms == 0 {
            continue;
        }
        let Some(sb) = &r.standby else { continue };
        let down = s.nodes.get(&r.primary).is_none_or(|n| !n.up && !n.held);
        let ready = s.nodes.get(sb).is_some_and(|n| n.up);
        if down && ready && primary(s, name).as_deref() == Some(r.primary.as_str()) {
            out.push(Command::SetVolumeHome {
                volume: name.clone(),
                node: Some(sb.clone()),
            });
            out.push(Command::PutReplica(ReplicaRecord {
                volume: name.clone(),
                primary: sb.clone(),
                standby: None,
                copied_ms: 0,
                copies: 0,
                error: None,
            }));
        }
    }
    out
}

/// Where volume `name` (on `primary`) keeps its standby copy: the one it
/// has if that node is up, else a node where its services may run that
/// does not hold the volume.
pub fn standby(s: &State, name: &str, primary: &str, used: u64) -> Result<String, String> {
    if let Some(sb) = s.replicas.get(name).and_then(|r| r.standby.as_ref()) {
        let same_primary = s.replicas.get(name).is_some_and(|r| r.primary == primary);
        if same_primary && sb != primary && s.nodes.get(sb).is_some_and(|n| n.up) {
            return Ok(sb.clone());
        }
    }
    crate::volumes::move_target(s, name, primary, used)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::volumes::tests::{node, service};

    fn state() -> State {
        let mut s = State::default();
        s.nodes.insert("n1".into(), node("n1", &["shop_db"]));
        s.nodes.insert("n2".into(), node("n2", &[]));
        s.nodes.insert("n3".into(), node("n3", &[]));
        let mut db = service("shop_db", "shop", "db");
        db.spec.volumes[0].volume.replicas = 2;
        s.services.insert("shop_db".into(), db);
        s
    }

    #[test]
    fn the_standby_takes_over_only_with_a_whole_copy_and_its_primary_down() {
        let mut s = state();
        assert_eq!(replicated(&s).keys().collect::<Vec<_>>(), ["shop_db"]);
        assert_eq!(primary(&s, "shop_db").as_deref(), Some("n1"));
        let sb = standby(&s, "shop_db", "n1", 0).unwrap();
        assert_ne!(sb, "n1");
        let mut rec = ReplicaRecord {
            volume: "shop_db".into(),
            primary: "n1".into(),
            standby: Some(sb.clone()),
            ..Default::default()
        };
        s.replicas.insert("shop_db".into(), rec.clone());
        assert_eq!(standby(&s, "shop_db", "n1", 0).unwrap(), sb, "kept");
        // No copy yet: nothing to fail over to.
        s.nodes.get_mut("n1").unwrap().up = false;
        assert!(failovers(&s).is_empty());
        rec.copied_ms = 5;
        s.replicas.insert("shop_db".into(), rec.clone());
        // Held by the storm guard: stays.
        s.nodes.get_mut("n1").unwrap().held = true;
        assert!(failovers(&s).is_empty());
        s.nodes.get_mut("n1").unwrap().held = false;
        let cmds = failovers(&s);
        assert_eq!(cmds.len(), 2, "{cmds:?}");
        for c in &cmds {
            s.apply(c).unwrap();
        }
        assert_eq!(primary(&s, "shop_db"), Some(sb.clone()));
        assert!(failovers(&s).is_empty(), "once");
        // The new primary gets a new standby, never itself or the dead node.
        let next = standby(&s, "shop_db", &sb, 0).unwrap();
        assert!(next != sb && next != "n1", "{next}");
    }
}
