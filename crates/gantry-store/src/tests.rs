use std::collections::BTreeMap;

use gantry_sched::{Availability, Resources};
use proptest::prelude::*;

use super::*;

fn node(id: &str) -> NodeRecord {
    NodeRecord {
        id: id.into(),
        hostname: format!("h-{id}"),
        addr: "192.168.1.10".into(),
        manager: false,
        arch: "x86_64".into(),
        labels: BTreeMap::new(),
        availability: Availability::Active,
        up: true,
        capacity: Resources {
            nano_cpus: 2_000_000_000,
            memory: 4 << 30,
        },
        disk: 0,
        block: None,
        vtep_mac: None,
        last_addr: None,
        held: false,
        volumes: Default::default(),
    }
}

fn task(id: &str, service: &str, node: Option<&str>, state: TaskState) -> TaskRecord {
    TaskRecord {
        id: id.into(),
        service: service.into(),
        version: 1,
        slot: 1,
        node: node.map(str::to_owned),
        desired: TaskState::Running,
        state,
        message: String::new(),
        exit_code: None,
        attempt: 0,
        updated_ms: 0,
        addr: None,
    }
}

/// A service whose spec differs by its image.
fn put_service(name: &str, image: &str) -> Command {
    Command::PutService {
        name: name.into(),
        stack: "app".into(),
        spec: Box::new(gantry_spec::Service::new(image)),
        vip: None,
    }
}

#[test]
fn state_survives_reopen_with_nothing_lost() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.redb");
    let before = {
        let mut s = Store::open(&path).unwrap();
        s.apply(Command::PutNode(node("n1"))).unwrap();
        s.apply(put_service("app_web", "web:1")).unwrap();
        s.apply(Command::PutTask(task(
            "t1",
            "app_web",
            Some("n1"),
            TaskState::Running,
        )))
        .unwrap();
        s.apply(Command::SetMeta {
            key: "join_token_sha256".into(),
            value: "abc".into(),
        })
        .unwrap();
        assert_eq!(s.index(), 4);
        s.state().clone()
    };
    let s = Store::open(&path).unwrap();
    assert_eq!(s.state(), &before);
    assert_eq!(s.index(), 4);
}

#[test]
fn rejected_commands_change_and_log_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.redb");
    let mut s = Store::open(&path).unwrap();
    s.apply(Command::PutNode(node("n1"))).unwrap();
    let e = s
        .apply(Command::PutTask(task(
            "t1",
            "nope",
            None,
            TaskState::Pending,
        )))
        .unwrap_err();
    assert_eq!(e.to_string(), "no such service: nope");
    s.apply(put_service("svc", "svc:1")).unwrap();
    let e = s
        .apply(Command::PutTask(task(
            "t1",
            "svc",
            Some("ghost"),
            TaskState::Assigned,
        )))
        .unwrap_err();
    assert!(e.to_string().contains("unknown node ghost"));
    let e = s
        .apply(Command::RemoveNode { id: "n1".into() })
        .unwrap_err();
    assert!(e.to_string().contains("is up or still has tasks"));
    assert_eq!(s.index(), 2);
    assert_eq!(s.log_len().unwrap(), 2);
    drop(s);
    assert_eq!(Store::open(&path).unwrap().index(), 2);
}

#[test]
fn same_spec_keeps_the_version_a_change_bumps_it() {
    let mut st = State::default();
    st.apply(&put_service("web", "a")).unwrap();
    st.apply(&put_service("web", "a")).unwrap();
    assert_eq!(
        st.services["web"].version, 1,
        "deploying the same file twice changes nothing"
    );
    st.apply(&put_service("web", "b")).unwrap();
    assert_eq!(st.services["web"].version, 2);
}

#[test]
fn removing_a_service_removes_its_tasks() {
    let mut st = State::default();
    st.apply(&put_service("web", "a")).unwrap();
    st.apply(&put_service("db", "a")).unwrap();
    st.apply(&Command::PutTask(task(
        "t1",
        "web",
        None,
        TaskState::Pending,
    )))
    .unwrap();
    st.apply(&Command::PutTask(task(
        "t2",
        "db",
        None,
        TaskState::Pending,
    )))
    .unwrap();
    st.apply(&Command::RemoveService { name: "web".into() })
        .unwrap();
    assert_eq!(st.tasks.keys().collect::<Vec<_>>(), vec!["t2"]);
}

#[test]
fn snapshots_trim_the_log_and_keep_the_state() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.redb");
    let mut s = Store::open(&path).unwrap().snapshot_every(5);
    for i in 0..12 {
        s.apply(Command::SetMeta {
            key: format!("k{i}"),
            value: i.to_string(),
        })
        .unwrap();
        // Snapshots are written on a thread of their own, and one that is
        // due while another is being written waits for a later command;
        // `log_len` waits for the writer, so each one lands where due.
        assert!(s.log_len().unwrap() <= 5);
    }
    assert_eq!(
        s.log_len().unwrap(),
        2,
        "snapshots at 5 and 10 trimmed the log"
    );
    let before = s.state().clone();
    drop(s);
    let s = Store::open(&path).unwrap();
    assert_eq!(s.state(), &before);
    assert_eq!(s.index(), 12);
}

fn arb_command() -> impl Strategy<Value = Command> {
    let id = prop::sample::select(vec!["a", "b", "c"]);
    prop_oneof![
        id.clone().prop_map(|i| Command::PutNode(node(i))),
        (id.clone(), any::<bool>()).prop_map(|(i, up)| Command::SetNodeUp { id: i.into(), up }),
        id.clone()
            .prop_map(|i| Command::RemoveNode { id: i.into() }),
        (id.clone(), 0u8..3).prop_map(|(i, s)| put_service(i, &s.to_string())),
        id.clone()
            .prop_map(|i| Command::RemoveService { name: i.into() }),
        (
            id.clone(),
            id.clone(),
            proptest::option::of(id.clone()),
            0u8..3
        )
            .prop_map(|(t, s, n, st)| {
                let state =
                    [TaskState::Pending, TaskState::Running, TaskState::Failed][st as usize];
                Command::PutTask(task(t, s, n, state))
            }),
        id.prop_map(|i| Command::RemoveTask { id: i.into() }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn reopening_gives_back_the_same_state(cmds in proptest::collection::vec(arb_command(), 0..40), every in 1u64..8) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.redb");
        let mut s = Store::open(&path).unwrap().snapshot_every(every);
        let mut mirror = State::default();
        for c in cmds {
            let stored = s.apply(c.clone()).is_ok();
            let pure = mirror.apply(&c).is_ok();
            prop_assert_eq!(stored, pure, "store and pure state machine disagree on {:?}", c);
        }
        prop_assert_eq!(s.state(), &mirror);
        let index = s.index();
        drop(s);
        let s = Store::open(&path).unwrap();
        prop_assert_eq!(s.state(), &mirror);
        prop_assert_eq!(s.index(), index);
    }

    /// Batches apply in place: a rejected one leaves the state exactly as
    /// it was (entries and the index of tasks by node), an accepted one
    /// gives what applying its commands one by one gives, and `before`
    /// holds the entries as they were.
    #[test]
    fn batches_apply_in_place_or_not_at_all(
        batches in proptest::collection::vec(proptest::collection::vec(arb_command(), 1..6), 0..12),
    ) {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Store::open(&dir.path().join("state.redb")).unwrap();
        for batch in batches {
            let old = s.state().clone();
            let mut one_by_one = old.clone();
            let whole = batch.iter().all(|c| one_by_one.apply(c).is_ok());
            match s.apply_batch_before(&batch) {
                Ok((_, before)) => {
                    prop_assert!(whole);
                    prop_assert_eq!(s.state(), &one_by_one);
                    for (id, t) in &before.state.tasks {
                        prop_assert_eq!(old.tasks.get(id), Some(t));
                    }
                }
                Err(_) => {
                    prop_assert!(!whole);
                    prop_assert_eq!(s.state(), &old);
                }
            }
            let mut rebuilt = s.state().clone();
            rebuilt.reindex();
            prop_assert_eq!(s.state(), &rebuilt);
            for n in ["a", "b", "c"] {
                let on: Vec<&str> = s.state().tasks_on(n).map(|t| t.id.as_str()).collect();
                let scan: Vec<&str> = s.state().tasks.values().filter(|t| t.node.as_deref() == Some(n)).map(|t| t.id.as_str()).collect();
                prop_assert_eq!(on, scan);
                let of: Vec<&str> = s.state().tasks_of(n).map(|t| t.id.as_str()).collect();
                let scan: Vec<&str> = s.state().tasks.values().filter(|t| t.service == n).map(|t| t.id.as_str()).collect();
                prop_assert_eq!(of, scan);
            }
        }
    }
}

#[test]
fn a_batch_is_written_whole_or_not_at_all() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.redb");
    {
        let mut s = Store::open(&path).unwrap();
        s.apply_batch(&[
            Command::PutNode(node("n1")),
            put_service("web", "web:1"),
            Command::PutTask(task("t1", "web", Some("n1"), TaskState::Running)),
        ])
        .unwrap();
        assert_eq!(s.index(), 3);
        // The second command names a node that does not exist: nothing of
        // the batch may stay, not even the first.
        let err = s
            .apply_batch(&[
                Command::PutTask(task("t2", "web", Some("n1"), TaskState::Running)),
                Command::PutTask(task("t3", "web", Some("ghost"), TaskState::Running)),
            ])
            .unwrap_err();
        assert!(matches!(err, StoreError::Rejected(_)), "{err}");
        assert_eq!(s.index(), 3);
        assert!(!s.state().tasks.contains_key("t2"));
    }
    let s = Store::open(&path).unwrap();
    assert_eq!(s.index(), 3);
    assert_eq!(s.state().tasks.len(), 1);
}

#[test]
fn snapshots_come_less_often_as_the_state_grows() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = Store::open(&dir.path().join("state.redb"))
        .unwrap()
        .snapshot_every(2);
    for i in 0..6 {
        s.apply(Command::PutNode(node(&format!("n{i}")))).unwrap();
    }
    // A snapshot at 2 commands (2 entries); then the state has more
    // entries than 2, so the next waits for as many commands as entries.
    assert_eq!(s.log_len().unwrap(), 4);
    drop(s);
    let s = Store::open(&dir.path().join("state.redb")).unwrap();
    assert_eq!(s.state().nodes.len(), 6);
}
