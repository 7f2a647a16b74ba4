//! Which task states a heartbeat carries. A node reports every second, and
//! nearly every task is as it was: a heartbeat carries only the tasks whose
//! status changed since the last report the manager accepted (`partial`),
//! and every [`WHOLE_EVERY`]th, or the first after a failed one, carries
//! them all, so that a task gone from the node without a trace is noticed
//! and a manager that lost a report catches up. The manager's work for a
//! quiet node is then its facts, not its tasks.

use std::collections::HashMap;

use gantry_api::TaskStatus;

/// Partial reports between two whole ones.
pub(crate) const WHOLE_EVERY: u32 = 10;

/// What the node last reported, as the manager accepted it.
#[derive(Debug, Default)]
pub(crate) struct TaskReports {
    sent: Option<HashMap<String, TaskStatus>>,
    partials: u32,
}

impl TaskReports {
    /// The tasks to report, of `all` the node has, and whether the report
    /// is partial.
    pub(crate) fn select(&self, all: &[TaskStatus]) -> (Vec<TaskStatus>, bool) {
        match &self.sent {
            Some(sent) if self.partials < WHOLE_EVERY => {
                let changed = all
                    .iter()
                    .filter(|t| sent.get(&t.id) != Some(*t))
                    .cloned()
                    .collect();
                (changed, true)
            }
            _ => (all.to_vec(), false),
        }
    }

    /// The manager accepted a report made from `all`.
    pub(crate) fn accepted(&mut self, all: Vec<TaskStatus>, partial: bool) {
        self.partials = if partial { self.partials + 1 } else { 0 };
        self.sent = Some(all.into_iter().map(|t| (t.id.clone(), t)).collect());
    }

    /// A report failed: the next is whole.
    pub(crate) fn failed(&mut self) {
        self.sent = None;
    }
}

#[cfg(test)]
mod tests {
    use gantry_api::TaskState;

    use super::*;

    fn st(id: &str, state: TaskState) -> TaskStatus {
        TaskStatus {
            id: id.into(),
            state,
            exit_code: None,
            message: String::new(),
            container: None,
        }
    }

    #[test]
    fn whole_first_then_what_changed_then_whole_again() {
        let mut r = TaskReports::default();
        let all = vec![st("a", TaskState::Assigned), st("b", TaskState::Running)];
        let (tasks, partial) = r.select(&all);
        assert!(!partial);
        assert_eq!(tasks, all);
        r.accepted(all.clone(), partial);
        // Nothing changed: an empty partial report.
        let (tasks, partial) = r.select(&all);
        assert!(partial && tasks.is_empty());
        // One changed, one new.
        let now = vec![
            st("a", TaskState::Running),
            st("b", TaskState::Running),
            st("c", TaskState::Assigned),
        ];
        let (tasks, partial) = r.select(&now);
        assert!(partial);
        assert_eq!(tasks, [now[0].clone(), now[2].clone()]);
        r.accepted(now.clone(), partial);
        // Every WHOLE_EVERY-th is whole.
        for _ in 1..WHOLE_EVERY {
            let (_, partial) = r.select(&now);
            assert!(partial);
            r.accepted(now.clone(), partial);
        }
        let (tasks, partial) = r.select(&now);
        assert!(!partial);
        assert_eq!(tasks, now);
        r.accepted(now.clone(), partial);
        // A failed report: the next is whole.
        r.failed();
        assert!(!r.select(&now).1);
    }
}
