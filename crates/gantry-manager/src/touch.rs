//! Which services a batch of commands calls for reconciling: the work of
//! the orchestration loop follows what changed, not the cluster's size.

use std::collections::BTreeSet;

use gantry_state::{Command, State, TaskState, UpdateStatus};

use crate::DEFAULT_STRATEGY_KEY;

/// The services to reconcile after a batch.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Touched {
    /// Every service (a node changed in a way placement sees).
    pub all: bool,
    /// These services.
    pub services: BTreeSet<String>,
}

impl Touched {
    /// Adds another batch's.
    pub fn extend(&mut self, other: Touched) {
        self.all |= other.all;
        self.services.extend(other.services);
    }
}

/// What `cmds` touched; `before` holds the entries as they were (see
/// [`gantry_state::State::before`]), `after` is the state now. A task's
/// change touches its service and the services of its stack (which may
/// wait for it to run, `depends_on`); a node's change that placement sees
/// (up, held, availability, labels, capacity, a new node or a removed
/// one) touches every service.
pub fn touched(before: &State, after: &State, cmds: &[Command]) -> Touched {
    let mut out = Touched::default();
    let mut stacks = BTreeSet::new();
    for cmd in cmds {
        match cmd {
            Command::PutService { name, .. }
            | Command::SetUpdate { name, .. }
            | Command::PauseService { name, .. }
            | Command::RollbackService { name, .. }
            | Command::RemoveService { name } => {
                out.services.insert(name.clone());
            }
            Command::PutTask(t) => {
                out.services.insert(t.service.clone());
                if let Some(rec) = after.services.get(&t.service) {
                    stacks.insert(rec.stack.clone());
                }
            }
            Command::PutNode(n) => {
                let same = before.nodes.get(&n.id).is_some_and(|o| {
                    (&o.labels, o.capacity, &o.arch, o.availability, o.up, o.held)
                        == (&n.labels, n.capacity, &n.arch, n.availability, n.up, n.held)
                });
                if !same {
                    out.all = true;
                }
            }
            Command::SetNodeUp { .. }
            | Command::SetNodeHeld { .. }
            | Command::SetAvailability { .. }
            | Command::SetLabels { .. }
            | Command::RemoveNode { .. }
            | Command::SetVolumeHome { .. } => out.all = true,
            Command::SetMeta { key, .. } if key == DEFAULT_STRATEGY_KEY => out.all = true,
            _ => {}
        }
    }
    if !stacks.is_empty() {
        out.services.extend(
            after
                .services
                .values()
                .filter(|r| stacks.contains(&r.stack))
                .map(|r| r.name.clone()),
        );
    }
    out
}

/// Whether a service is at rest: no rollout under way, every task it
/// wants running runs, and no slot has two. A service not at rest is reconciled again every
/// round (restart delays, update monitors and pending placements are
/// waits on time or room, not on a command).
pub fn at_rest(state: &State, name: &str) -> bool {
    let Some(rec) = state.services.get(name) else {
        return true;
    };
    if matches!(
        rec.update,
        UpdateStatus::Updating { .. } | UpdateStatus::RollingBack { .. }
    ) {
        return false;
    }
    // Two live tasks in one slot (a start-first update or a rebalance
    // move) resolve once the newest has run for a while: a wait on time.
    let mut slots = BTreeSet::new();
    for t in state.tasks_of(name) {
        if t.desired != TaskState::Running {
            continue;
        }
        if t.state != TaskState::Running {
            return false;
        }
        let slot = (t.slot, if t.slot == 0 { t.node.as_deref() } else { None });
        if !slots.insert(slot) {
            return false;
        }
    }
    true
}
