use std::collections::BTreeMap;

use gantry_sched::{Availability, Resources};
use gantry_state::{Command, NodeRecord, State, TaskRecord, TaskState};

use super::*;

const GB: u64 = 1 << 30;

fn node(id: &str) -> NodeRecord {
    NodeRecord {
        id: id.into(),
        hostname: id.into(),
        addr: String::new(),
        manager: false,
        arch: "x86_64".into(),
        labels: BTreeMap::new(),
        availability: Availability::Active,
        up: true,
        capacity: Resources {
            nano_cpus: 2_000_000_000,
            memory: 4 * GB,
        },
        disk: 0,
        block: None,
        vtep_mac: None,
        last_addr: None,
        held: false,
        volumes: Default::default(),
        peer_port: None,
    }
}

fn cluster(n: usize, yaml: &str) -> State {
    let mut st = State::default();
    for i in 1..=n {
        st.apply(&Command::PutNode(node(&format!("n{i}")))).unwrap();
    }
    put_stack(&mut st, yaml);
    st
}

fn put_stack(st: &mut State, yaml: &str) {
    let parsed = gantry_stack::parse(
        "s.yml",
        yaml,
        &BTreeMap::new(),
        &|_| Err("no files".into()),
        &Default::default(),
    )
    .unwrap();
    for (name, svc) in parsed.stack.services {
        st.apply(&Command::PutService {
            name,
            stack: "app".into(),
            spec: Box::new(svc),
            vip: None,
        })
        .unwrap();
    }
}

/// What the agents would do: start assigned tasks (those whose image is
/// `broken` fail at once) and stop what is asked to stop.
fn agents(st: &mut State, now: u64, broken: Option<&str>) {
    let changed: Vec<TaskRecord> = st
        .tasks
        .values()
        .filter_map(|t| {
            let mut t = t.clone();
            match (t.desired, t.state) {
                (TaskState::Running, TaskState::Assigned) => {
                    let fails = broken.is_some() && Some(image_of(st, &t).as_str()) == broken;
                    t.state = if fails {
                        TaskState::Failed
                    } else {
                        TaskState::Running
                    };
                    t.exit_code = fails.then_some(1);
                    t.updated_ms = now;
                }
                (TaskState::Shutdown, TaskState::Running) => t.state = TaskState::Shutdown,
                _ => return None,
            }
            Some(t)
        })
        .collect();
    for t in changed {
        st.apply(&Command::PutTask(t)).unwrap();
    }
}

/// The image a task runs: its version's spec, current or previous.
fn image_of(st: &State, t: &TaskRecord) -> String {
    let svc = &st.services[&t.service];
    if t.version == svc.version {
        svc.spec.image.clone()
    } else {
        svc.previous
            .as_ref()
            .map(|p| p.1.image.clone())
            .unwrap_or_default()
    }
}

/// Reconciles until nothing changes, acting as the agents too.
fn converge(st: &mut State, svc: &str, now: u64) -> usize {
    let mut n = 0;
    let mut changes = 0;
    for _ in 0..20 {
        let cmds = reconcile(st, svc, now, &mut || {
            n += 1;
            format!("t{n}-{now}")
        })
        .unwrap();
        if cmds.is_empty() {
            return changes;
        }
        changes += cmds.len();
        for c in cmds {
            st.apply(&c).unwrap();
        }
        agents(st, now, None);
    }
    panic!("did not converge");
}

fn running_per_node(st: &State, svc: &str) -> BTreeMap<String, usize> {
    let mut m = BTreeMap::new();
    for t in st.tasks.values().filter(|t| {
        t.service == svc && t.desired == TaskState::Running && t.state == TaskState::Running
    }) {
        *m.entry(t.node.clone().unwrap()).or_default() += 1;
    }
    m
}

const WEB6: &str = "services:\n  web:\n    image: web:1\n    deploy:\n      replicas: 6\n";

#[test]
fn six_replicas_land_two_two_two_and_a_converged_service_yields_nothing() {
    let mut st = cluster(3, WEB6);
    converge(&mut st, "web", 0);
    assert_eq!(
        running_per_node(&st, "web")
            .into_values()
            .collect::<Vec<_>>(),
        vec![2, 2, 2]
    );
    assert!(reconcile(&st, "web", 1, &mut || "x".into())
        .unwrap()
        .is_empty());
}

#[test]
fn a_dead_host_s_replicas_move_and_do_not_come_back_twice() {
    let mut st = cluster(3, WEB6);
    converge(&mut st, "web", 0);
    st.apply(&Command::SetNodeUp {
        id: "n3".into(),
        up: false,
    })
    .unwrap();
    converge(&mut st, "web", 1000);
    assert_eq!(
        running_per_node(&st, "web")
            .into_values()
            .collect::<Vec<_>>(),
        vec![3, 3],
        "6 again on the living hosts"
    );
    let stale: Vec<_> = st
        .tasks
        .values()
        .filter(|t| t.node.as_deref() == Some("n3"))
        .collect();
    assert!(stale
        .iter()
        .all(|t| t.desired == TaskState::Shutdown && t.message == "node down; rescheduled"));
    // The host returns: its agent stops the stale tasks; nothing new runs.
    st.apply(&Command::SetNodeUp {
        id: "n3".into(),
        up: true,
    })
    .unwrap();
    assert_eq!(converge(&mut st, "web", 2000), 0);
    let live = st
        .tasks
        .values()
        .filter(|t| t.service == "web" && t.desired == TaskState::Running)
        .count();
    assert_eq!(live, 6, "never more replicas than desired");
}

#[test]
fn tasks_of_held_nodes_stay_until_an_operator_lets_them_go() {
    let mut st = cluster(3, WEB6);
    converge(&mut st, "web", 0);
    let before = running_per_node(&st, "web");
    for id in ["n2", "n3"] {
        for cmd in [
            Command::SetNodeUp {
                id: id.into(),
                up: false,
            },
            Command::SetNodeHeld {
                id: id.into(),
                held: true,
                reason: "storm".into(),
            },
        ] {
            st.apply(&cmd).unwrap();
        }
    }
    assert_eq!(converge(&mut st, "web", 1000), 0, "nothing moves");
    assert_eq!(running_per_node(&st, "web"), before);
    // The operator confirms one of them down: its tasks go to the living
    // node; the other stays held.
    st.apply(&Command::SetNodeHeld {
        id: "n2".into(),
        held: false,
        reason: "confirmed".into(),
    })
    .unwrap();
    converge(&mut st, "web", 2000);
    let now = running_per_node(&st, "web");
    assert_eq!(now.get("n1"), Some(&4), "{now:?}");
    assert_eq!(now.get("n3"), Some(&2), "{now:?}");
    assert_eq!(now.get("n2"), None, "{now:?}");
    // A held node that comes back is no longer held, and the service
    // rebalances again.
    st.apply(&Command::SetNodeUp {
        id: "n3".into(),
        up: true,
    })
    .unwrap();
    assert!(!st.nodes["n3"].held);
    // Held is for down nodes only.
    st.apply(&Command::SetNodeHeld {
        id: "n3".into(),
        held: true,
        reason: "x".into(),
    })
    .unwrap();
    assert!(!st.nodes["n3"].held);
}

#[test]
fn drain_moves_tasks_off_a_node() {
    let mut st = cluster(3, WEB6);
    converge(&mut st, "web", 0);
    st.apply(&Command::SetAvailability {
        id: "n1".into(),
        availability: Availability::Drain,
    })
    .unwrap();
    converge(&mut st, "web", 10);
    let per = running_per_node(&st, "web");
    assert!(!per.contains_key("n1"), "{per:?}");
    assert_eq!(per.values().sum::<usize>(), 6);
}

#[test]
fn a_paused_service_has_no_task_and_comes_back_as_it_was() {
    let mut st = cluster(3, WEB6);
    converge(&mut st, "web", 0);
    let version = st.services["web"].version;
    st.apply(&Command::PauseService {
        name: "web".into(),
        reason: Some("volume web_data is being restored".into()),
    })
    .unwrap();
    converge(&mut st, "web", 10);
    assert!(running_per_node(&st, "web").is_empty());
    assert!(st
        .tasks
        .values()
        .all(|t| t.message == "paused: volume web_data is being restored"));
    // A deploy meanwhile keeps it paused.
    put_stack(
        &mut st,
        "services:\n  web:\n    image: web:2\n    deploy:\n      replicas: 6\n",
    );
    converge(&mut st, "web", 15);
    assert!(running_per_node(&st, "web").is_empty());
    st.apply(&Command::PauseService {
        name: "web".into(),
        reason: None,
    })
    .unwrap();
    converge(&mut st, "web", 20);
    assert_eq!(running_per_node(&st, "web").values().sum::<usize>(), 6);
    assert_eq!(st.services["web"].version, version + 1);
    assert_eq!(images(&st).get("web:2"), Some(&6), "{:?}", images(&st));
}

#[test]
fn a_moved_volume_takes_its_service_with_it() {
    let mut st = cluster(
        3,
        "services:\n  db:\n    image: db:1\n    volumes: [\"data:/data\"]\nvolumes:\n  data: {}\n",
    );
    converge(&mut st, "db", 0);
    let before: Vec<String> = running_per_node(&st, "db").into_keys().collect();
    assert_eq!(before.len(), 1);
    let to = if before[0] == "n3" { "n2" } else { "n3" };
    // Stopped, the volume's home set elsewhere, and resumed: the task
    // follows the volume, not where the last one ran.
    st.apply(&Command::PauseService {
        name: "db".into(),
        reason: Some("volume app_data is moving".into()),
    })
    .unwrap();
    converge(&mut st, "db", 10);
    st.apply(&Command::SetVolumeHome {
        volume: "app_data".into(),
        node: Some(to.into()),
    })
    .unwrap();
    st.apply(&Command::PauseService {
        name: "db".into(),
        reason: None,
    })
    .unwrap();
    converge(&mut st, "db", 20);
    let after: Vec<String> = running_per_node(&st, "db").into_keys().collect();
    assert_eq!(after, vec![to.to_owned()]);
    assert_eq!(
        st.apply(&Command::SetVolumeHome {
            volume: "app_data".into(),
            node: Some("n9".into()),
        })
        .unwrap_err(),
        gantry_state::Rejected::NoSuchNode("n9".into())
    );
}

#[test]
fn scaling_down_and_up() {
    let mut st = cluster(3, WEB6);
    converge(&mut st, "web", 0);
    put_stack(
        &mut st,
        "services:\n  web:\n    image: web:1\n    deploy:\n      replicas: 2\n",
    );
    converge(&mut st, "web", 10);
    assert_eq!(running_per_node(&st, "web").values().sum::<usize>(), 2);
    put_stack(
        &mut st,
        "services:\n  web:\n    image: web:1\n    deploy:\n      replicas: 5\n",
    );
    converge(&mut st, "web", 20);
    assert_eq!(running_per_node(&st, "web").values().sum::<usize>(), 5);
}

fn fail(st: &mut State, svc: &str, code: i32, at: u64) -> TaskRecord {
    let mut t = st
        .tasks
        .values()
        .find(|t| t.service == svc && t.state == TaskState::Running)
        .unwrap()
        .clone();
    t.state = TaskState::Failed;
    t.exit_code = Some(code);
    t.updated_ms = at;
    st.apply(&Command::PutTask(t.clone())).unwrap();
    t
}

#[test]
fn failed_tasks_restart_after_the_delay_until_attempts_run_out() {
    let yaml = "services:\n  job:\n    image: j:1\n    deploy:\n      replicas: 1\n      restart_policy: {condition: on-failure, delay: 5s, max_attempts: 2}\n";
    let mut st = cluster(1, yaml);
    converge(&mut st, "job", 0);
    fail(&mut st, "job", 1, 1_000);
    assert!(
        reconcile(&st, "job", 3_000, &mut || "x".into())
            .unwrap()
            .is_empty(),
        "within the delay: wait"
    );
    converge(&mut st, "job", 6_001);
    let t = st
        .tasks
        .values()
        .find(|t| t.desired == TaskState::Running)
        .unwrap()
        .clone();
    assert_eq!((t.attempt, t.slot), (1, 1));
    fail(&mut st, "job", 1, 7_000);
    converge(&mut st, "job", 13_000);
    assert_eq!(
        st.tasks
            .values()
            .find(|t| t.desired == TaskState::Running)
            .unwrap()
            .attempt,
        2
    );
    fail(&mut st, "job", 1, 14_000);
    converge(&mut st, "job", 30_000);
    assert!(
        st.tasks.values().all(|t| t.desired == TaskState::Shutdown),
        "attempts exhausted"
    );
    // A clean exit is not restarted under on-failure.
    let mut st = cluster(1, yaml);
    converge(&mut st, "job", 0);
    fail(&mut st, "job", 0, 10);
    converge(&mut st, "job", 100_000);
    assert!(st.tasks.values().all(|t| t.desired == TaskState::Shutdown));
}

#[test]
fn global_services_follow_nodes_that_join() {
    let mut st = cluster(
        3,
        "services:\n  agent:\n    image: a:1\n    deploy:\n      mode: global\n",
    );
    converge(&mut st, "agent", 0);
    assert_eq!(running_per_node(&st, "agent").len(), 3);
    st.apply(&Command::PutNode(node("n4"))).unwrap();
    converge(&mut st, "agent", 10);
    assert_eq!(
        running_per_node(&st, "agent")
            .into_values()
            .collect::<Vec<_>>(),
        vec![1, 1, 1, 1]
    );
}

fn global(image: &str, extra: &str) -> String {
    format!("services:\n  web:\n    image: {image}\n    deploy:\n      mode: global\n      update_config: {{parallelism: 1, monitor: 1s{extra}}}\n")
}

#[test]
fn a_global_service_rolls_node_by_node_and_completes() {
    let mut st = cluster(3, &global("web:1", ""));
    roll(&mut st, "web", 0, None, 4);
    assert_eq!(images(&st), BTreeMap::from([("web:1".to_string(), 3)]));
    put_stack(&mut st, &global("web:2", ""));
    let (max_new, min_running) = roll(&mut st, "web", 10_000, None, 40);
    assert_eq!(max_new, 1, "parallelism 1: one node at a time");
    assert!(min_running >= 2, "stop-first: one node down at a time");
    assert_eq!(images(&st), BTreeMap::from([("web:2".to_string(), 3)]));
    assert_eq!(running_per_node(&st, "web").len(), 3, "one per node");
    assert_eq!(
        st.services["web"].update,
        gantry_state::UpdateStatus::Completed
    );
    // Start-first: a node runs both until the new task has settled.
    put_stack(&mut st, &global("web:3", ", order: start-first"));
    let (_, min_running) = roll(&mut st, "web", 40_000, None, 40);
    assert!(min_running >= 3, "start-first dipped to {min_running}");
    assert_eq!(images(&st), BTreeMap::from([("web:3".to_string(), 3)]));
    // A broken image: the update pauses after the first node.
    put_stack(&mut st, &global("web:4", ""));
    roll(&mut st, "web", 70_000, Some("web:4"), 20);
    assert!(matches!(
        st.services["web"].update,
        gantry_state::UpdateStatus::Paused { .. }
    ));
    assert_eq!(images(&st), BTreeMap::from([("web:3".to_string(), 2)]));
}

#[test]
fn what_fits_nowhere_waits_with_the_reason_and_runs_when_room_appears() {
    let yaml = "services:\n  big:\n    image: b:1\n    deploy:\n      replicas: 2\n      resources: {reservations: {memory: 3G}}\n";
    let mut st = cluster(1, yaml);
    converge(&mut st, "big", 0);
    let pending: Vec<_> = st
        .tasks
        .values()
        .filter(|t| t.state == TaskState::Pending)
        .collect();
    assert_eq!(pending.len(), 1);
    assert_eq!(
        pending[0].message,
        "no suitable node (insufficient memory on 1 node)"
    );
    st.apply(&Command::PutNode(node("n2"))).unwrap();
    converge(&mut st, "big", 10);
    assert_eq!(
        running_per_node(&st, "big")
            .into_values()
            .collect::<Vec<_>>(),
        vec![1, 1]
    );
}

#[test]
fn unknown_services_are_an_error() {
    assert_eq!(
        reconcile(&State::default(), "ghost", 0, &mut || "x".into()).unwrap_err(),
        ReconcileError::NoSuchService("ghost".into())
    );
}

#[derive(Debug, Clone)]
enum Event {
    Down(usize),
    Up(usize),
    Drain(usize),
    Activate(usize),
    Join,
    Fail,
}

fn arb_event() -> impl proptest::strategy::Strategy<Value = Event> {
    use proptest::prelude::*;
    prop_oneof![
        (1usize..5).prop_map(Event::Down),
        (1usize..5).prop_map(Event::Up),
        (1usize..5).prop_map(Event::Drain),
        (1usize..5).prop_map(Event::Activate),
        Just(Event::Join),
        Just(Event::Fail),
    ]
}

proptest::proptest! {
    #[test]
    fn replicas_stay_at_the_desired_count_through_any_events(
        events in proptest::collection::vec(arb_event(), 0..25),
        replicas in 1u32..8,
    ) {
        let yaml = format!("services:\n  web:\n    image: w:1\n    deploy:\n      replicas: {replicas}\n      restart_policy: {{delay: 0s}}\n      update_config: {{monitor: 0s}}\n");
        let mut st = cluster(3, &yaml);
        let mut now = 0;
        converge(&mut st, "web", now);
        let mut nodes = 3;
        for e in events {
            now += 1000;
            let id = |i: usize| format!("n{}", (i - 1) % nodes + 1);
            match e {
                Event::Down(i) => { st.apply(&Command::SetNodeUp { id: id(i), up: false }).unwrap(); }
                Event::Up(i) => { st.apply(&Command::SetNodeUp { id: id(i), up: true }).unwrap(); }
                Event::Drain(i) => { st.apply(&Command::SetAvailability { id: id(i), availability: Availability::Drain }).unwrap(); }
                Event::Activate(i) => { st.apply(&Command::SetAvailability { id: id(i), availability: Availability::Active }).unwrap(); }
                Event::Join => { nodes += 1; st.apply(&Command::PutNode(node(&format!("n{nodes}")))).unwrap(); }
                Event::Fail => {
                    if st.tasks.values().any(|t| t.state == TaskState::Running && t.desired == TaskState::Running) {
                        fail(&mut st, "web", 1, now);
                    }
                }
            }
            roll(&mut st, "web", now, None, 12);
            now += 6_000;
            let live = st.tasks.values().filter(|t| t.service == "web" && t.desired == TaskState::Running).count();
            let any_usable = st.nodes.values().any(|n| n.up && n.availability == Availability::Active);
            // Start-first moves overlap by one task, never more.
            proptest::prop_assert!(live <= replicas as usize + 1, "{live} live tasks for {replicas} replicas");
            if any_usable {
                let served: std::collections::BTreeSet<u32> = st
                    .tasks
                    .values()
                    .filter(|t| t.service == "web" && t.desired == TaskState::Running && t.state == TaskState::Running)
                    .map(|t| t.slot)
                    .collect();
                proptest::prop_assert_eq!(served.len(), replicas as usize, "every slot is served");
            }
        }
    }
}

/// Like `converge`, stepping the clock, with agents that start tasks of
/// every version except `broken`, whose tasks fail at once. Returns the
/// most tasks handed to agents in one step and the fewest running.
fn roll(
    st: &mut State,
    svc: &str,
    start: u64,
    broken: Option<&str>,
    steps: usize,
) -> (usize, usize) {
    let mut now = start;
    let mut n = 0;
    let mut min_running = usize::MAX;
    let mut max_new = 0;
    for _ in 0..steps {
        now += 500;
        let cmds = reconcile(st, svc, now, &mut || {
            n += 1;
            format!("r{n}-{now}")
        })
        .unwrap();
        for c in cmds {
            st.apply(&c).unwrap();
        }
        max_new = max_new.max(
            st.tasks
                .values()
                .filter(|t| t.state == TaskState::Assigned && t.desired == TaskState::Running)
                .count(),
        );
        agents(st, now, broken);
        let running = st
            .tasks
            .values()
            .filter(|t| t.service == svc && t.state == TaskState::Running)
            .count();
        min_running = min_running.min(running);
    }
    (max_new, min_running)
}

fn web(image: &str, replicas: u32, extra: &str) -> String {
    format!("services:\n  web:\n    image: {image}\n    deploy:\n      replicas: {replicas}\n      update_config: {{parallelism: 1, monitor: 1s{extra}}}\n")
}

fn images(st: &State) -> BTreeMap<String, usize> {
    let mut m = BTreeMap::new();
    for t in st.tasks.values().filter(|t| t.state == TaskState::Running) {
        *m.entry(image_of(st, t)).or_default() += 1;
    }
    m
}

#[test]
fn a_rolling_update_replaces_tasks_one_by_one_and_completes() {
    let mut st = cluster(3, &web("web:1", 4, ""));
    roll(&mut st, "web", 0, None, 4);
    put_stack(&mut st, &web("web:2", 4, ""));
    let (max_new, min_running) = roll(&mut st, "web", 10_000, None, 40);
    assert_eq!(max_new, 1, "parallelism 1: one task at a time");
    assert!(
        min_running >= 3,
        "stop-first takes down one at a time: {min_running}"
    );
    assert_eq!(images(&st), BTreeMap::from([("web:2".to_string(), 4)]));
    assert_eq!(
        st.services["web"].update,
        gantry_state::UpdateStatus::Completed
    );
}

#[test]
fn start_first_never_runs_fewer_than_desired() {
    let mut st = cluster(3, &web("web:1", 3, ", order: start-first"));
    roll(&mut st, "web", 0, None, 4);
    put_stack(&mut st, &web("web:2", 3, ", order: start-first"));
    let (_, min_running) = roll(&mut st, "web", 10_000, None, 40);
    assert!(
        min_running >= 3,
        "start-first dipped to {min_running} running"
    );
    assert_eq!(images(&st), BTreeMap::from([("web:2".to_string(), 3)]));
}

#[test]
fn scaling_rolls_no_task() {
    let mut st = cluster(3, &web("web:1", 3, ""));
    roll(&mut st, "web", 0, None, 4);
    let before: Vec<String> = st.tasks.keys().cloned().collect();
    put_stack(&mut st, &web("web:1", 4, ""));
    roll(&mut st, "web", 10_000, None, 10);
    let kept = before
        .iter()
        .filter(|id| st.tasks[*id].state == TaskState::Running)
        .count();
    assert_eq!(kept, 3, "the three old tasks keep running; one is added");
    assert_eq!(images(&st), BTreeMap::from([("web:1".to_string(), 4)]));
    // Again and again: tasks two changes old are not outdated either.
    put_stack(&mut st, &web("web:1", 2, ""));
    roll(&mut st, "web", 20_000, None, 10);
    put_stack(&mut st, &web("web:1", 5, ""));
    roll(&mut st, "web", 30_000, None, 10);
    let kept = before
        .iter()
        .filter(|id| {
            st.tasks
                .get(*id)
                .is_some_and(|t| t.state == TaskState::Running)
        })
        .count();
    assert_eq!(
        kept, 2,
        "slots 1 and 2 kept their first tasks through three scalings"
    );
}

#[test]
fn a_broken_image_rolls_back_by_itself() {
    let mut st = cluster(3, &web("web:1", 3, ", failure_action: rollback"));
    roll(&mut st, "web", 0, None, 4);
    put_stack(&mut st, &web("web:broken", 3, ", failure_action: rollback"));
    roll(&mut st, "web", 10_000, Some("web:broken"), 40);
    let svc = &st.services["web"];
    assert!(
        matches!(svc.update, gantry_state::UpdateStatus::RolledBack { .. }),
        "{:?}",
        svc.update
    );
    assert!(svc.spec.image == "web:1");
    assert_eq!(images(&st), BTreeMap::from([("web:1".to_string(), 3)]));
}

#[test]
fn a_single_replica_rolls_back_after_its_old_task_is_gone() {
    // Stop-first with one replica: the old task goes before its
    // replacement is known to work; the update is not done until the
    // replacement has run for `monitor`, so its failure still rolls back.
    let mut st = cluster(2, &web("web:1", 1, ", failure_action: rollback"));
    roll(&mut st, "web", 0, None, 4);
    put_stack(&mut st, &web("web:broken", 1, ", failure_action: rollback"));
    roll(&mut st, "web", 10_000, Some("web:broken"), 40);
    let svc = &st.services["web"];
    assert!(
        matches!(svc.update, gantry_state::UpdateStatus::RolledBack { .. }),
        "{:?}",
        svc.update
    );
    assert_eq!(images(&st), BTreeMap::from([("web:1".to_string(), 1)]));
}

#[test]
fn a_failing_update_can_pause_instead() {
    let mut st = cluster(3, &web("web:1", 3, ", failure_action: pause"));
    roll(&mut st, "web", 0, None, 4);
    put_stack(&mut st, &web("web:broken", 3, ", failure_action: pause"));
    roll(&mut st, "web", 10_000, Some("web:broken"), 40);
    assert!(matches!(
        st.services["web"].update,
        gantry_state::UpdateStatus::Paused { .. }
    ));
    assert_eq!(
        images(&st).get("web:1"),
        Some(&2),
        "the update stopped after its first failed task"
    );
}

#[test]
fn a_returning_node_gets_its_share_back_gradually_and_start_first() {
    let yaml = "services:\n  web:\n    image: w:1\n    deploy:\n      replicas: 6\n      update_config: {monitor: 1s}\n";
    let mut st = cluster(3, yaml);
    roll(&mut st, "web", 0, None, 4);
    st.apply(&Command::SetNodeUp {
        id: "n3".into(),
        up: false,
    })
    .unwrap();
    roll(&mut st, "web", 10_000, None, 4);
    assert_eq!(
        running_per_node(&st, "web")
            .into_values()
            .collect::<Vec<_>>(),
        vec![3, 3]
    );
    st.apply(&Command::SetNodeUp {
        id: "n3".into(),
        up: true,
    })
    .unwrap();
    let (max_new, min_running) = roll(&mut st, "web", 20_000, None, 40);
    assert_eq!(max_new, 1, "one move at a time");
    assert!(
        min_running >= 6,
        "never below the desired count while moving: {min_running}"
    );
    assert_eq!(
        running_per_node(&st, "web")
            .into_values()
            .collect::<Vec<_>>(),
        vec![2, 2, 2]
    );
    // Turned off, nothing moves.
    let off = "services:\n  web:\n    image: w:1\n    deploy:\n      replicas: 6\n    x-gantry: {rebalance: false}\n";
    let mut st = cluster(2, off);
    roll(&mut st, "web", 0, None, 4);
    st.apply(&Command::PutNode(node("n3"))).unwrap();
    roll(&mut st, "web", 10_000, None, 20);
    assert_eq!(
        running_per_node(&st, "web")
            .into_values()
            .collect::<Vec<_>>(),
        vec![3, 3]
    );
}

#[test]
fn a_service_starts_after_what_it_depends_on_runs() {
    let mut st = cluster(
        2,
        "services:\n  db:\n    image: db\n  app:\n    image: app\n    depends_on: [db]\n    deploy:\n      replicas: 2\n",
    );
    // Nothing of app while db does not run yet.
    assert_eq!(converge(&mut st, "app", 0), 0);
    let mut n = 0;
    for c in reconcile(&st, "db", 0, &mut || {
        n += 1;
        format!("db{n}")
    })
    .unwrap()
    {
        st.apply(&c).unwrap();
    }
    let app = reconcile(&st, "app", 0, &mut || "x".into()).unwrap();
    assert!(app.is_empty(), "db is only assigned: {app:?}");
    agents(&mut st, 10, None);
    assert!(converge(&mut st, "app", 20) > 0);
    agents(&mut st, 30, None);
    assert_eq!(running_per_node(&st, "app").values().sum::<usize>(), 2);
    // Once started, app lives on its own: db failing does not stop it.
    fail(&mut st, "db", 1, 40);
    assert_eq!(converge(&mut st, "app", 50), 0);
}

#[test]
fn a_single_replica_goes_back_to_the_node_with_its_volume() {
    let mut st = cluster(
        3,
        "services:\n  db:\n    image: db\n    volumes: [\"data:/var/lib/db\"]\nvolumes:\n  data: {}\n",
    );
    converge(&mut st, "db", 0);
    agents(&mut st, 10, None);
    let home = running_per_node(&st, "db").into_keys().next().unwrap();
    // Its node goes down: the task cannot follow its data elsewhere.
    st.apply(&Command::SetNodeUp {
        id: home.clone(),
        up: false,
    })
    .unwrap();
    converge(&mut st, "db", 100);
    let pending: Vec<&TaskRecord> = st
        .tasks
        .values()
        .filter(|t| t.desired == TaskState::Running && t.state == TaskState::Pending)
        .collect();
    assert_eq!(pending.len(), 1, "{:?}", st.tasks);
    assert!(
        pending[0]
            .message
            .contains("volume app_data lives on another node"),
        "{}",
        pending[0].message
    );
    // It comes back: the task goes home.
    st.apply(&Command::SetNodeUp {
        id: home.clone(),
        up: true,
    })
    .unwrap();
    converge(&mut st, "db", 200);
    agents(&mut st, 210, None);
    assert_eq!(
        running_per_node(&st, "db").into_keys().collect::<Vec<_>>(),
        vec![home]
    );
    // A replicated service of several uses each node's own volume.
    put_stack(
        &mut st,
        "services:\n  db:\n    image: db\n    volumes: [\"data:/var/lib/db\"]\n    deploy:\n      replicas: 3\nvolumes:\n  data: {}\n",
    );
    converge(&mut st, "db", 300);
    agents(&mut st, 310, None);
    assert_eq!(running_per_node(&st, "db").len(), 3);
}

#[test]
fn services_without_a_strategy_take_the_cluster_default() {
    let mut st = cluster(
        3,
        "services:\n  web:\n    image: web\n    deploy:\n      replicas: 6\n      resources:\n        reservations:\n          memory: 1G\n",
    );
    st.apply(&Command::SetMeta {
        key: crate::DEFAULT_STRATEGY_KEY.into(),
        value: "binpack".into(),
    })
    .unwrap();
    converge(&mut st, "web", 0);
    // Binpack fills a node (4 GB: four tasks) before the next, instead of
    // spreading 2/2/2.
    let mut counts: Vec<usize> = running_per_node(&st, "web").into_values().collect();
    counts.sort();
    assert_eq!(counts, vec![2, 4]);
    // A service that names its strategy keeps it.
    put_stack(
        &mut st,
        "services:\n  api:\n    image: api\n    deploy:\n      replicas: 3\n    x-gantry:\n      strategy: spread\n",
    );
    converge(&mut st, "api", 10);
    assert_eq!(running_per_node(&st, "api").len(), 3);
}

#[test]
fn placed_tasks_get_addresses_of_their_node_s_block_released_when_they_end() {
    let mut st = cluster(2, WEB6);
    for (i, n) in ["n1", "n2"].iter().enumerate() {
        let mut rec = st.nodes[*n].clone();
        rec.block = Some(format!("10.32.{i}.0/24").parse().unwrap());
        st.apply(&Command::PutNode(rec)).unwrap();
    }
    assert_eq!(
        crate::network::block_for_new_node(&st).unwrap().to_string(),
        "10.32.2.0/24"
    );
    let mut cmds = reconcile(&st, "web", 0, &mut || format!("t{}", st.tasks.len())).unwrap();
    // Ids must differ; give each its own.
    for (i, c) in cmds.iter_mut().enumerate() {
        if let Command::PutTask(t) = c {
            t.id = format!("task{i}");
        }
    }
    crate::network::assign_addresses(&st, &mut cmds);
    for c in &cmds {
        st.apply(c).unwrap();
    }
    let mut seen = std::collections::BTreeSet::new();
    for t in st.tasks.values() {
        let a = t.addr.expect("an address");
        let block = st.nodes[t.node.as_deref().unwrap()].block.unwrap();
        assert!(block.contains(a) && a != block.gateway(), "{a} in {block}");
        assert!(seen.insert(a), "{a} twice");
    }
    // A task ends: its address is free again, but the next task of that
    // node gets a new one first.
    let mut ended = st.tasks["task0"].clone();
    let freed = ended.addr.unwrap();
    ended.state = TaskState::Failed;
    st.apply(&Command::PutTask(ended.clone())).unwrap();
    let mut again = vec![Command::PutTask(TaskRecord {
        id: "next".into(),
        addr: None,
        state: TaskState::Assigned,
        ..ended
    })];
    crate::network::assign_addresses(&st, &mut again);
    let Command::PutTask(t) = &again[0] else {
        unreachable!()
    };
    assert_ne!(t.addr, Some(freed));
    assert!(t.addr.is_some());
}

#[test]
fn a_batch_touches_what_it_changed_and_nodes_touch_everything() {
    use crate::touch::{at_rest, touched};
    let mut st = cluster(
        2,
        "services:\n  web:\n    image: web:1\n  db:\n    image: db:1\n",
    );
    st.apply(&Command::PutService {
        name: "other".into(),
        stack: "elsewhere".into(),
        spec: Box::new(st.services["web"].spec.clone()),
        vip: None,
    })
    .unwrap();
    converge(&mut st, "web", 0);
    let t = st.tasks_of("web").next().unwrap().clone();
    let mut running = t.clone();
    running.state = TaskState::Running;
    let cmds = [Command::PutTask(running)];
    let before = st.before(&cmds);
    st.apply(&cmds[0]).unwrap();
    let got = touched(&before.state, &st, &cmds);
    // Its service and its stack mates (depends_on), not another stack's.
    assert!(!got.all);
    assert_eq!(
        got.services.iter().map(String::as_str).collect::<Vec<_>>(),
        ["db", "web"]
    );
    // A heartbeat that changes nothing placement sees touches nothing; a
    // node that goes down touches every service.
    let mut n = st.nodes["n1"].clone();
    n.disk += 1;
    let cmds = [Command::PutNode(n)];
    let before = st.before(&cmds);
    st.apply(&cmds[0]).unwrap();
    assert_eq!(touched(&before.state, &st, &cmds), Default::default());
    let cmds = [Command::SetNodeUp {
        id: "n1".into(),
        up: false,
    }];
    let before = st.before(&cmds);
    st.apply(&cmds[0]).unwrap();
    assert!(touched(&before.state, &st, &cmds).all);
    // At rest once every wanted task runs.
    assert!(at_rest(&st, "web"));
    for c in reconcile(&st, "db", 0, &mut || "db-1".into()).unwrap() {
        st.apply(&c).unwrap();
    }
    assert!(!at_rest(&st, "db"), "db's task is only assigned");
}

#[test]
fn a_lopsided_service_rebalances_in_rounds_and_never_drops_below_its_replicas() {
    // 30 replicas on one node, as after a storm: the two others return.
    let yaml = "services:\n  web:\n    image: web:1\n    deploy:\n      replicas: 30\n";
    let mut st = cluster(3, yaml);
    for id in ["n2", "n3"] {
        st.apply(&Command::SetNodeUp {
            id: id.into(),
            up: false,
        })
        .unwrap();
    }
    converge(&mut st, "web", 0);
    assert_eq!(running_per_node(&st, "web")["n1"], 30);
    for id in ["n2", "n3"] {
        st.apply(&Command::SetNodeUp {
            id: id.into(),
            up: true,
        })
        .unwrap();
    }
    let mut n = 0;
    let mut rounds = 0;
    for step in 1..=40u64 {
        let now = step * 6_000;
        let cmds = reconcile(&st, "web", now, &mut || {
            n += 1;
            format!("r{n}")
        })
        .unwrap();
        for c in cmds {
            st.apply(&c).unwrap();
        }
        // Between the orchestrator's shutdown and the agents' start, the
        // running count is what a user sees: never below 30.
        let running: usize = running_per_node(&st, "web").values().sum();
        assert!(running >= 30, "step {step}: {running} running");
        agents(&mut st, now, None);
        let per: Vec<usize> = running_per_node(&st, "web").into_values().collect();
        if per == [10, 10, 10] {
            rounds = step;
            break;
        }
    }
    assert!(
        rounds > 0,
        "did not converge: {:?}",
        running_per_node(&st, "web")
    );
    // 20 moves, 3 at a time, each a start and a settle: well under the 40
    // rounds one move at a time would take.
    assert!((4..=20).contains(&rounds), "{rounds} rounds");
    let live = st
        .tasks_of("web")
        .filter(|t| t.desired == TaskState::Running)
        .count();
    assert_eq!(live, 30);
}

proptest::proptest! {
    /// One scheduler view for a whole pass (the orchestrator's way) places
    /// exactly as building a fresh view for each service after applying
    /// the one before would: same nodes, same spread, no host port taken
    /// twice, no node over its memory.
    #[test]
    fn a_pass_on_one_view_places_as_one_service_at_a_time_does(
        nodes in 1usize..7,
        services in proptest::collection::vec((1u32..9, proptest::option::of(80u16..83), 0u64..3), 1..8),
    ) {
        let mut yaml = String::from("services:\n");
        for (i, (replicas, port, gb)) in services.iter().enumerate() {
            yaml += &format!("  s{i}:\n    image: w:1\n    deploy:\n      replicas: {replicas}\n");
            if *gb > 0 {
                yaml += &format!("      resources: {{reservations: {{memory: {gb}G}}}}\n");
            }
            if let Some(p) = port {
                yaml += &format!("    ports: [{{target: 80, published: {p}, mode: host}}]\n");
            }
        }
        let names: Vec<String> = (0..services.len()).map(|i| format!("s{i}")).collect();
        let start = cluster(nodes, &yaml);

        let mut one_view = start.clone();
        let mut n = 0;
        let mut view = snapshot(&one_view);
        let mut cmds = Vec::new();
        for name in &names {
            cmds.extend(reconcile_in(&one_view, &mut view, name, 0, &mut || { n += 1; format!("t{n}") }).unwrap());
        }
        for c in &cmds {
            one_view.apply(c).unwrap();
        }

        let mut each = start;
        let mut n = 0;
        for name in &names {
            for c in reconcile(&each, name, 0, &mut || { n += 1; format!("t{n}") }).unwrap() {
                each.apply(&c).unwrap();
            }
        }

        let placed = |st: &State| -> BTreeMap<String, Option<String>> {
            st.tasks.values().map(|t| (t.id.clone(), t.node.clone())).collect()
        };
        proptest::prop_assert_eq!(placed(&one_view), placed(&each));
        let mut ports: std::collections::BTreeSet<(String, u16)> = Default::default();
        let mut memory: BTreeMap<String, u64> = BTreeMap::new();
        for t in one_view.tasks.values() {
            let Some(node) = &t.node else { continue };
            let (_, port, gb) = services[t.service[1..].parse::<usize>().unwrap()];
            if let Some(p) = port {
                proptest::prop_assert!(ports.insert((node.clone(), p)), "port {} twice on {}", p, node);
            }
            *memory.entry(node.clone()).or_default() += gb * GB;
        }
        proptest::prop_assert!(memory.values().all(|m| *m <= 4 * GB));
    }
}

#[test]
fn nodes_without_a_block_get_distinct_free_ones_and_the_others_keep_theirs() {
    let mut st = cluster(3, WEB6);
    let mut rec = st.nodes["n2"].clone();
    rec.block = Some("10.32.0.0/24".parse().unwrap());
    st.apply(&Command::PutNode(rec)).unwrap();
    let cmds = crate::network::blocks_for_nodes_without(&st);
    let mut given: Vec<(String, String)> = cmds
        .iter()
        .map(|c| match c {
            Command::PutNode(n) => (n.id.clone(), n.block.unwrap().to_string()),
            other => panic!("{other:?}"),
        })
        .collect();
    given.sort();
    assert_eq!(
        given,
        [
            ("n1".to_owned(), "10.32.1.0/24".to_owned()),
            ("n3".to_owned(), "10.32.2.0/24".to_owned())
        ]
    );
    for c in &cmds {
        st.apply(c).unwrap();
    }
    assert!(crate::network::blocks_for_nodes_without(&st).is_empty());
}

#[test]
fn services_get_a_virtual_ip_once_and_keep_it() {
    let mut st = cluster(
        1,
        "services:\n  web:\n    image: web:1\n  db:\n    image: db:1\n    deploy: {endpoint_mode: dnsrr}\n",
    );
    let put = |st: &State, name: &str, spec: &str| Command::PutService {
        name: name.into(),
        stack: "app".into(),
        spec: Box::new(st.services[spec].spec.clone()),
        vip: None,
    };
    let apply = |st: &mut State, mut cmds: Vec<Command>| {
        crate::network::assign_vips(st, &mut cmds);
        for c in &cmds {
            st.apply(c).unwrap();
        }
    };
    // Put as they were (the test's cluster bypassed the server): web and
    // a new service in one batch get the pool's first two, db none.
    let batch = vec![
        put(&st, "web", "web"),
        put(&st, "db", "db"),
        put(&st, "other", "web"),
    ];
    apply(&mut st, batch);
    let vip = |st: &State, n: &str| st.services[n].vip;
    assert_eq!(vip(&st, "web"), Some("10.47.0.1".parse().unwrap()));
    assert_eq!(vip(&st, "other"), Some("10.47.0.2".parse().unwrap()));
    assert_eq!(vip(&st, "db"), None);
    // Changed to dnsrr and back, or rolled back: the same address.
    let mut spec = st.services["web"].spec.clone();
    spec.endpoint_mode = gantry_spec::EndpointMode::Dnsrr;
    spec.image = "web:2".into();
    let cmds = vec![Command::PutService {
        name: "web".into(),
        stack: "app".into(),
        spec: Box::new(spec),
        vip: None,
    }];
    apply(&mut st, cmds);
    apply(
        &mut st,
        vec![Command::RollbackService {
            name: "web".into(),
            reason: "test".into(),
            at_ms: 1,
        }],
    );
    assert_eq!(
        st.services["web"].spec.endpoint_mode,
        gantry_spec::EndpointMode::Vip
    );
    assert_eq!(vip(&st, "web"), Some("10.47.0.1".parse().unwrap()));
    // Removed: its address is free for the next.
    apply(&mut st, vec![Command::RemoveService { name: "web".into() }]);
    let third = put(&st, "third", "other");
    apply(&mut st, vec![third]);
    assert_eq!(vip(&st, "third"), Some("10.47.0.1".parse().unwrap()));
}
