//! Which nodes are down, and whether their tasks move: a node whose
//! heartbeats stopped for the grace period is down, and its tasks are
//! rescheduled, unless too many nodes are going down at once. Then the
//! cause is more likely the network or the manager than the hosts, and
//! moving every task onto the few nodes left would only bury them (as
//! Kubernetes stops evictions when most of a zone goes unready): the storm
//! guard marks those nodes down but holds their tasks where they are,
//! until the nodes return or an operator confirms them down.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use gantry_state::{Command, State};

/// When the storm guard holds.
#[derive(Debug, Clone, Copy)]
pub struct StormGuard {
    /// Silence after which a node is down.
    pub grace: Duration,
    /// Holds when more than this share of the nodes that were up goes
    /// silent within one grace (at least two nodes); 1 or more: never.
    pub ratio: f64,
}

/// The commands that mark silent nodes down. `silent`: each node's time
/// since its last heartbeat; `recent`: nodes this function marked down
/// within the last grace (held or not: a node held a moment ago still
/// counts when the next one follows, and one not held is held with it).
pub fn nodes_down(
    state: &State,
    silent: &BTreeMap<String, Duration>,
    recent: &BTreeSet<String>,
    guard: StormGuard,
) -> Vec<Command> {
    let silence = |id: &String| silent.get(id).copied().unwrap_or_default();
    let up: Vec<&String> = state
        .nodes
        .values()
        .filter(|n| n.up)
        .map(|n| &n.id)
        .collect();
    let expired: Vec<&String> = up
        .iter()
        .copied()
        .filter(|id| silence(id) > guard.grace)
        .collect();
    if expired.is_empty() {
        return Vec::new();
    }
    // Nodes past half the grace are going down too: two hosts cut at
    // once stop a heartbeat interval apart, and the first must not be
    // rescheduled before the second is seen to follow.
    let failing = up.iter().filter(|id| silence(id) > guard.grace / 2).count();
    let recent: Vec<&String> = recent
        .iter()
        .filter(|id| state.nodes.get(*id).is_some_and(|n| !n.up))
        .collect();
    let lost = failing + recent.len();
    let base = up.len() + recent.len();
    let storm = guard.ratio < 1.0 && lost >= 2 && lost as f64 > guard.ratio * base as f64;
    let mut out = Vec::new();
    for id in &expired {
        out.push(Command::SetNodeUp {
            id: (*id).clone(),
            up: false,
        });
    }
    if storm {
        let reason = format!(
            "storm guard: {lost} of {base} nodes stopped sending heartbeats within {}s; \
             their tasks stay in place until they return or `gantry node confirm-down`",
            guard.grace.as_secs_f64()
        );
        let unheld = recent
            .into_iter()
            .filter(|id| state.nodes.get(*id).is_some_and(|n| !n.held));
        for id in expired.into_iter().chain(unheld) {
            out.push(Command::SetNodeHeld {
                id: id.clone(),
                held: true,
                reason: reason.clone(),
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use gantry_sched::{Availability, Resources};
    use gantry_state::NodeRecord;

    fn state(n: usize) -> State {
        let mut st = State::default();
        for i in 1..=n {
            st.apply(&Command::PutNode(NodeRecord {
                id: format!("n{i}"),
                hostname: format!("h{i}"),
                addr: String::new(),
                manager: false,
                arch: "x86_64".into(),
                labels: BTreeMap::new(),
                availability: Availability::Active,
                up: true,
                capacity: Resources::default(),
                disk: 0,
                block: None,
                vtep_mac: None,
                last_addr: None,
                held: false,
                volumes: Default::default(),
                peer_port: None,
            }))
            .unwrap();
        }
        st
    }

    const GUARD: StormGuard = StormGuard {
        grace: Duration::from_secs(3),
        ratio: 0.5,
    };

    fn silent(pairs: &[(&str, u64)]) -> BTreeMap<String, Duration> {
        pairs
            .iter()
            .map(|(n, ms)| ((*n).to_owned(), Duration::from_millis(*ms)))
            .collect()
    }

    fn held(cmds: &[Command]) -> Vec<&str> {
        cmds.iter()
            .filter_map(|c| match c {
                Command::SetNodeHeld { id, held: true, .. } => Some(id.as_str()),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn one_dead_node_of_three_fails_over() {
        let st = state(3);
        let cmds = nodes_down(
            &st,
            &silent(&[("n1", 3100), ("n2", 200), ("n3", 900)]),
            &BTreeSet::new(),
            GUARD,
        );
        assert_eq!(
            cmds,
            [Command::SetNodeUp {
                id: "n1".into(),
                up: false
            }]
        );
    }

    #[test]
    fn nothing_before_the_grace() {
        let st = state(3);
        let s = silent(&[("n1", 2900), ("n2", 2900), ("n3", 2900)]);
        assert!(nodes_down(&st, &s, &BTreeSet::new(), GUARD).is_empty());
    }

    #[test]
    fn two_of_three_cut_at_once_are_held_even_a_heartbeat_apart() {
        let mut st = state(3);
        // The first is past the grace, the second a second behind it.
        let cmds = nodes_down(
            &st,
            &silent(&[("n1", 3100), ("n2", 2100), ("n3", 100)]),
            &BTreeSet::new(),
            GUARD,
        );
        assert_eq!(held(&cmds), ["n1"]);
        assert!(cmds.iter().any(
            |c| matches!(c, Command::SetNodeHeld { reason, .. } if reason.contains("2 of 3"))
        ));
        for c in &cmds {
            st.apply(c).unwrap();
        }
        // The next step the second expires: the first, down and held
        // within the grace, still counts, so the second is held too (and
        // its tasks not moved onto the one node left).
        let recent: BTreeSet<String> = ["n1".to_owned()].into();
        let cmds = nodes_down(&st, &silent(&[("n2", 3050), ("n3", 100)]), &recent, GUARD);
        assert_eq!(held(&cmds), ["n2"], "{cmds:?}");
    }

    #[test]
    fn a_node_marked_down_just_before_counts_and_is_held_too() {
        let mut st = state(4);
        st.apply(&Command::SetNodeUp {
            id: "n1".into(),
            up: false,
        })
        .unwrap();
        let recent: BTreeSet<String> = ["n1".to_owned()].into();
        // n2 and n1 of 4: not more than half.
        let cmds = nodes_down(&st, &silent(&[("n2", 3100)]), &recent, GUARD);
        assert!(held(&cmds).is_empty());
        // n2, n3 and n1 of 4: more than half, all three held.
        let cmds = nodes_down(&st, &silent(&[("n2", 3100), ("n3", 1600)]), &recent, GUARD);
        assert_eq!(held(&cmds), ["n2", "n1"]);
    }

    #[test]
    fn the_guard_can_be_turned_off() {
        let st = state(3);
        let off = StormGuard {
            ratio: 1.0,
            ..GUARD
        };
        let s = silent(&[("n1", 3100), ("n2", 3100), ("n3", 3100)]);
        let cmds = nodes_down(&st, &s, &BTreeSet::new(), off);
        assert_eq!(cmds.len(), 3);
        assert!(held(&cmds).is_empty());
    }

    #[test]
    fn a_lone_node_is_never_a_storm() {
        let st = state(1);
        let cmds = nodes_down(&st, &silent(&[("n1", 5000)]), &BTreeSet::new(), GUARD);
        assert!(held(&cmds).is_empty());
    }
}
