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
        peer_port: None,
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

fn entry(index: u64, cmds: Vec<Command>) -> openraft::Entry<TypeConfig> {
    openraft::Entry {
        log_id: LogId::new(openraft::CommittedLeaderId::new(1, 1), index),
        payload: openraft::EntryPayload::Normal(Batch { cmds, at_ms: 0 }),
    }
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
        for (i, batch) in batches.into_iter().enumerate() {
            let old = s.state().clone();
            let mut one_by_one = old.clone();
            let whole = batch.iter().all(|c| one_by_one.apply(c).is_ok());
            let seen = std::sync::Arc::new(std::sync::Mutex::new(None));
            let keep = seen.clone();
            s.set_hook(Box::new(move |c| {
                if let Change::Batch { before, .. } = c {
                    *keep.lock().unwrap() = Some(before.state.clone());
                }
            }));
            match s.apply_entry(&entry(i as u64 + 1, batch)) {
                Ok(()) => {
                    prop_assert!(whole);
                    // The same entries; the store's state also recorded
                    // the batch's events.
                    let mut got = s.state().clone();
                    got.events.clear();
                    one_by_one.events.clear();
                    prop_assert_eq!(&got, &one_by_one);
                    let before = seen.lock().unwrap().take().expect("the hook saw the batch");
                    for (id, t) in &before.tasks {
                        prop_assert_eq!(old.tasks.get(id), Some(t));
                    }
                }
                Err(_) => {
                    prop_assert!(!whole);
                    prop_assert_eq!(s.state(), &old);
                    prop_assert!(seen.lock().unwrap().is_none(), "a rejected batch is no change");
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

/// A store changed outside the log (a migration) keeps the change and the
/// committed log's effect across a reopen; one in a group refuses.
#[test]
fn a_migration_in_place_is_kept_and_refused_in_a_group() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.redb");
    {
        let mut s = Store::open(&path).unwrap();
        s.bootstrap(7, "127.0.0.1:1").unwrap();
        s.migrate_in_place(|st| {
            st.meta.insert("k".into(), "v".into());
        })
        .unwrap();
    }
    let s = Store::open(&path).unwrap();
    assert_eq!(s.state().meta["k"], "v");
    assert_eq!(s.index(), 0);
    assert!(s.is_bootstrapped());
}

/// Formats are marked; a newer one is refused untouched.
#[test]
fn a_newer_format_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.redb");
    {
        let db = redb::Database::create(&path).unwrap();
        let w = db.begin_write().unwrap();
        w.open_table(SNAPSHOT)
            .unwrap()
            .insert("format", "99".as_bytes())
            .unwrap();
        w.commit().unwrap();
    }
    match Store::open(&path) {
        Err(StoreError::Newer(99)) => {}
        Err(e) => panic!("{e}"),
        Ok(_) => panic!("opened"),
    }
}

/// Rejected commands change nothing, and say why.
#[test]
fn rejected_commands_change_nothing_and_say_why() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = Store::open(&dir.path().join("state.redb")).unwrap();
    s.apply_entry(&entry(1, vec![Command::PutNode(node("n1"))]))
        .unwrap();
    let e = s
        .apply_entry(&entry(
            2,
            vec![Command::PutTask(task(
                "t1",
                "nope",
                None,
                TaskState::Pending,
            ))],
        ))
        .unwrap_err();
    assert_eq!(e.to_string(), "no such service: nope");
    s.apply_entry(&entry(3, vec![put_service("svc", "svc:1")]))
        .unwrap();
    let before = s.state().clone();
    let e = s
        .apply_entry(&entry(
            4,
            vec![Command::PutTask(task(
                "t1",
                "svc",
                Some("ghost"),
                TaskState::Assigned,
            ))],
        ))
        .unwrap_err();
    assert!(e.to_string().contains("unknown node ghost"));
    let e = s
        .apply_entry(&entry(5, vec![Command::RemoveNode { id: "n1".into() }]))
        .unwrap_err();
    assert!(e.to_string().contains("is up or still has tasks"));
    assert_eq!(s.state(), &before);
    // A rejected batch is still an applied log entry.
    assert_eq!(s.index(), 5);
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
