//! What a node's report means for the state: its facts, its liveness and
//! its tasks' states, as the commands that record them. Pure: the server
//! passes the report, the state and the time.

use std::collections::BTreeMap;

use gantry_api::{NodeInfo, StatusReport, TaskStatus};
use gantry_sched::{Availability, Resources};
use gantry_state::{Command, NodeRecord, State, TaskRecord, TaskState};

/// The commands a node's report implies, at `now` (ms since the epoch).
pub fn commands(s: &State, id: &str, r: &StatusReport, now: u64) -> Vec<Command> {
    let Some(n) = s.nodes.get(id) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    let mut facts = node_record(id, &r.info, n.manager);
    facts.block = n.block;
    facts.last_addr = n.last_addr;
    facts.vtep_mac = r.info.vtep_mac.clone().or_else(|| n.vtep_mac.clone());
    facts.labels = n.labels.clone();
    facts.availability = n.availability;
    facts.up = n.up;
    facts.held = n.held;
    if r.info.volumes.is_none() {
        facts.volumes.clone_from(&n.volumes);
    }
    // Free disk moves all the time; record it when it moved by 5 %.
    if facts.disk.abs_diff(n.disk) <= n.disk / 20 {
        facts.disk = n.disk;
    }
    if &facts != n {
        out.push(Command::PutNode(facts));
    }
    if !n.up {
        out.push(Command::SetNodeUp {
            id: id.to_owned(),
            up: true,
        });
    }
    if r.partial {
        // Only the tasks whose status changed since the node's last
        // accepted report; the others are as they were. Only the node's
        // own tasks: a node reports on nothing else.
        for st in &r.tasks {
            let Some(t) = s
                .tasks
                .get(&st.id)
                .filter(|t| t.node.as_deref() == Some(id))
            else {
                continue;
            };
            out.extend(task_change(t, Some(st), now).map(Command::PutTask));
        }
        return out;
    }
    let reported: BTreeMap<&str, &TaskStatus> =
        r.tasks.iter().map(|t| (t.id.as_str(), t)).collect();
    for t in s.tasks_on(id) {
        let st = reported.get(t.id.as_str()).copied();
        out.extend(task_change(t, st, now).map(Command::PutTask));
    }
    out
}

/// A task as its node's report leaves it (`reported`: its status, or none
/// in a whole report that does not list it), if that changes it. Copied
/// only when it changes: nearly every task reported is as it was.
fn task_change(t: &TaskRecord, reported: Option<&TaskStatus>, now: u64) -> Option<TaskRecord> {
    let terminal = matches!(t.state, TaskState::Failed | TaskState::Shutdown);
    let mut next;
    match reported {
        Some(st) if !terminal => {
            if st.state == t.state && st.exit_code == t.exit_code {
                return None;
            }
            next = t.clone();
            next.state = st.state;
            next.exit_code = st.exit_code;
            if !st.message.is_empty() {
                next.message = st.message.clone();
            }
        }
        Some(_) => return None,
        None if terminal => return None,
        None if t.desired != TaskState::Running => {
            next = t.clone();
            next.state = TaskState::Shutdown;
        }
        None if t.state == TaskState::Running => {
            next = t.clone();
            next.state = TaskState::Failed;
            next.message = "container vanished from its node".into();
        }
        None => return None,
    }
    if next.state != t.state {
        next.updated_ms = now;
    }
    Some(next)
}

/// A node's record from what it says of itself: active, up, no block
/// yet (the manager's own facts are kept by [`commands`]).
pub fn node_record(id: &str, info: &NodeInfo, manager: bool) -> NodeRecord {
    NodeRecord {
        id: id.to_owned(),
        hostname: info.hostname.clone(),
        addr: info.addr.clone(),
        manager,
        arch: info.arch.clone(),
        labels: info.labels.clone(),
        availability: Availability::Active,
        up: true,
        capacity: Resources {
            nano_cpus: info.nano_cpus,
            memory: info.memory,
        },
        disk: info.disk,
        block: None,
        vtep_mac: None,
        last_addr: None,
        held: false,
        volumes: info.volumes.iter().flatten().cloned().collect(),
        peer_port: info.peer_port,
    }
}

#[cfg(test)]
mod tests {
    use gantry_spec::Service;

    use super::*;

    fn info() -> NodeInfo {
        NodeInfo {
            hostname: "h1".into(),
            addr: "192.168.1.1".into(),
            arch: "x86_64".into(),
            nano_cpus: 1_000_000_000,
            memory: 1 << 30,
            disk: 1000,
            labels: BTreeMap::new(),
            vtep_mac: Some("02:00:00:00:00:01".into()),
            volumes: None,
            peer_port: None,
        }
    }

    fn task(id: &str, desired: TaskState, state: TaskState) -> TaskRecord {
        TaskRecord {
            id: id.into(),
            service: "app_web".into(),
            version: 1,
            slot: 1,
            node: Some("n1".into()),
            desired,
            state,
            message: String::new(),
            exit_code: None,
            attempt: 0,
            updated_ms: 5,
            addr: None,
        }
    }

    fn state() -> State {
        let mut st = State::default();
        let mut n = node_record("n1", &info(), false);
        n.vtep_mac = info().vtep_mac;
        st.apply(&Command::PutNode(n)).unwrap();
        st.apply(&Command::PutService {
            name: "app_web".into(),
            stack: "app".into(),
            spec: Box::new(Service::new("web:1")),
            vip: None,
        })
        .unwrap();
        use TaskState::*;
        for t in [
            task("starting", Running, Assigned),
            task("steady", Running, Running),
            task("vanished", Running, Running),
            task("stopping", Shutdown, Running),
            task("ended", Running, Failed),
        ] {
            st.apply(&Command::PutTask(t)).unwrap();
        }
        st
    }

    fn status(id: &str, state: TaskState) -> TaskStatus {
        TaskStatus {
            id: id.into(),
            state,
            exit_code: None,
            message: String::new(),
            container: None,
        }
    }

    #[test]
    fn a_report_records_only_what_changed() {
        let st = state();
        let r = StatusReport {
            info: info(),
            tasks: vec![
                status("starting", TaskState::Running),
                status("steady", TaskState::Running),
                status("ended", TaskState::Running),
            ],
            stats: None,
            partial: false,
            volumes: None,
        };
        let cmds = commands(&st, "n1", &r, 99);
        let tasks: BTreeMap<&str, &TaskRecord> = cmds
            .iter()
            .filter_map(|c| match c {
                Command::PutTask(t) => Some((t.id.as_str(), t)),
                _ => None,
            })
            .collect();
        assert_eq!(tasks.len(), 3, "{cmds:?}");
        assert_eq!(tasks["starting"].state, TaskState::Running);
        assert_eq!(tasks["starting"].updated_ms, 99);
        // Gone from the node while it should run: failed, and said why.
        assert_eq!(tasks["vanished"].state, TaskState::Failed);
        assert!(tasks["vanished"].message.contains("vanished"));
        // Gone while it should stop: shut down.
        assert_eq!(tasks["stopping"].state, TaskState::Shutdown);
        // A task that ended stays ended whatever the node says.
        assert!(!tasks.contains_key("ended"));
        // Same facts: no PutNode; up: no SetNodeUp.
        assert!(!cmds
            .iter()
            .any(|c| matches!(c, Command::PutNode(_) | Command::SetNodeUp { .. })));
    }

    #[test]
    fn a_partial_report_changes_the_tasks_it_names_and_only_the_node_s_own() {
        let mut st = state();
        let mut other = task("elsewhere", TaskState::Running, TaskState::Assigned);
        other.node = None;
        st.apply(&Command::PutTask(other)).unwrap();
        let r = StatusReport {
            info: info(),
            tasks: vec![
                status("starting", TaskState::Running),
                status("elsewhere", TaskState::Running),
                status("no-such-task", TaskState::Running),
            ],
            stats: None,
            partial: true,
            volumes: None,
        };
        let cmds = commands(&st, "n1", &r, 99);
        let put: Vec<(&str, TaskState)> = cmds
            .iter()
            .filter_map(|c| match c {
                Command::PutTask(t) => Some((t.id.as_str(), t.state)),
                _ => None,
            })
            .collect();
        // "vanished" and "stopping" are not listed: as they were (a whole
        // report would fail and shut them down); "elsewhere" is not n1's.
        assert_eq!(put, [("starting", TaskState::Running)], "{cmds:?}");
    }

    #[test]
    fn a_down_node_that_reports_comes_up_and_small_disk_moves_are_not_written() {
        let mut st = state();
        st.apply(&Command::SetNodeUp {
            id: "n1".into(),
            up: false,
        })
        .unwrap();
        let mut i = info();
        i.disk = 1040;
        let r = StatusReport {
            info: i.clone(),
            tasks: Vec::new(),
            stats: None,
            partial: false,
            volumes: None,
        };
        let cmds = commands(&st, "n1", &r, 1);
        assert!(cmds
            .iter()
            .any(|c| matches!(c, Command::SetNodeUp { up: true, .. })));
        assert!(!cmds.iter().any(|c| matches!(c, Command::PutNode(_))));
        i.disk = 2000;
        let r = StatusReport {
            info: i,
            tasks: Vec::new(),
            stats: None,
            partial: false,
            volumes: None,
        };
        let cmds = commands(&st, "n1", &r, 1);
        assert!(cmds
            .iter()
            .any(|c| matches!(c, Command::PutNode(n) if n.disk == 2000)));
        // An unknown node's report changes nothing.
        assert!(commands(&st, "nope", &r, 1).is_empty());
    }

    #[test]
    fn a_node_s_volumes_change_when_it_sends_them_and_stay_when_it_does_not() {
        let mut st = state();
        let report = |volumes: Option<Vec<String>>| StatusReport {
            info: NodeInfo { volumes, ..info() },
            tasks: Vec::new(),
            stats: None,
            partial: false,
            volumes: None,
        };
        for c in commands(&st, "n1", &report(Some(vec!["data".into()])), 1) {
            st.apply(&c).unwrap();
        }
        assert_eq!(st.nodes["n1"].volumes, ["data".to_owned()].into());
        // Not sent: as it was, and nothing to write.
        assert!(!commands(&st, "n1", &report(None), 2)
            .iter()
            .any(|c| matches!(c, Command::PutNode(_))));
        // Sent empty: gone.
        for c in commands(&st, "n1", &report(Some(Vec::new())), 3) {
            st.apply(&c).unwrap();
        }
        assert!(st.nodes["n1"].volumes.is_empty());
    }
}
