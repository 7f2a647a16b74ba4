//! The cluster's volumes, derived from the state (which node holds which
//! volume, which services and tasks mount it) and the nodes' latest
//! measurements (size, limit). Pure; the server answers `GET /v1/volumes`
//! and refuses `DELETE` of a volume in use with it.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use gantry_api::{HeldVolumes, VolumeStat, VolumeView};
use gantry_spec::{MountType, Service};
use gantry_state::{State, TaskRecord, TaskState};

/// The named volumes a service's spec mounts (their names on the nodes).
fn mounted(spec: &Service, stack: &str) -> BTreeSet<String> {
    spec.volumes
        .iter()
        .filter(|m| m.kind == MountType::Volume && !m.source.is_empty())
        .map(|m| m.volume_name(stack))
        .collect()
}

/// The spec a task runs: its service's current one, or the one before.
fn spec_of<'a>(s: &'a State, t: &TaskRecord) -> Option<(&'a Service, &'a str)> {
    let rec = s.services.get(&t.service)?;
    if rec.version == t.version {
        return Some((&rec.spec, &rec.stack));
    }
    rec.previous
        .as_ref()
        .filter(|(v, _)| *v == t.version)
        .map(|(_, spec)| (spec, rec.stack.as_str()))
}

/// A task as the views name it: `SERVICE.SLOT`, or for a global service's
/// task `SERVICE.NODE` (the node's id, short).
pub fn task_name(t: &TaskRecord) -> String {
    match (t.slot, &t.node) {
        (0, Some(n)) => format!("{}.{}", t.service, &n[..n.len().min(12)]),
        (slot, _) => format!("{}.{slot}", t.service),
    }
}

/// Who uses a volume: the services whose spec mounts it, and the tasks
/// (on `node`, or anywhere) that mount it and run or are to run.
pub fn users(s: &State, name: &str, node: Option<&str>) -> (Vec<String>, Vec<String>) {
    let services = s
        .services
        .values()
        .filter(|r| mounted(&r.spec, &r.stack).contains(name))
        .map(|r| r.name.clone())
        .collect();
    let mut tasks: Vec<String> = s
        .tasks
        .values()
        .filter(|t| node.is_none_or(|n| t.node.as_deref() == Some(n)))
        .filter(|t| t.desired == TaskState::Running || t.state == TaskState::Running)
        .filter(|t| spec_of(s, t).is_some_and(|(spec, stack)| mounted(spec, stack).contains(name)))
        .map(task_name)
        .collect();
    tasks.sort();
    (services, tasks)
}

/// Every volume on every node, as the node's list has them, with the
/// figures of its latest measurement.
pub fn views(s: &State, reports: &HashMap<String, HeldVolumes>) -> Vec<VolumeView> {
    // name -> services that mount it.
    let mut by_name: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for r in s.services.values() {
        for v in mounted(&r.spec, &r.stack) {
            by_name.entry(v).or_default().push(r.name.clone());
        }
    }
    // (node, name) -> tasks there that mount it.
    let mut running: BTreeMap<(&str, String), Vec<String>> = BTreeMap::new();
    for t in s.tasks.values() {
        let Some(node) = t.node.as_deref() else {
            continue;
        };
        if t.desired != TaskState::Running && t.state != TaskState::Running {
            continue;
        }
        if let Some((spec, stack)) = spec_of(s, t) {
            for v in mounted(spec, stack) {
                running.entry((node, v)).or_default().push(task_name(t));
            }
        }
    }
    let policies = crate::backups::policies(s);
    let mut out = Vec::new();
    for n in s.nodes.values() {
        let report = reports.get(&n.id);
        let stats: BTreeMap<&str, &VolumeStat> = report
            .map(|r| r.volumes.values().map(|v| (v.name.as_str(), v)).collect())
            .unwrap_or_default();
        // The node's list says which it has (it sends it as soon as it
        // changes); a measurement only adds figures, and may be older.
        let names: BTreeSet<&str> = n.volumes.iter().map(String::as_str).collect();
        for name in names {
            let st = stats.get(name);
            let mut tasks = running
                .get(&(n.id.as_str(), name.to_owned()))
                .cloned()
                .unwrap_or_default();
            tasks.sort();
            out.push(VolumeView {
                name: name.to_owned(),
                node: n.id.clone(),
                hostname: n.hostname.clone(),
                node_up: n.up,
                mountpoint: st.map(|v| v.mountpoint.clone()),
                used: st.map(|v| v.used),
                limit: st.and_then(|v| v.limit),
                free: st.and_then(|v| v.free),
                created: st.map(|v| v.created.clone()),
                labels: st.map(|v| v.labels.clone()).unwrap_or_default(),
                options: st.map(|v| v.options.clone()).unwrap_or_default(),
                measured_ms: st.and(report.map(|r| r.time_ms)),
                services: by_name.get(name).cloned().unwrap_or_default(),
                tasks,
                backup_schedule: policies.get(name).map(|p| p.schedule.clone()),
                last_backup: s
                    .backups
                    .get(&crate::backups::record_key(&n.id, name))
                    .cloned(),
                replica: s.replicas.get(name).filter(|r| r.primary == n.id).cloned(),
            });
        }
    }
    out.sort_by(|a, b| (&a.name, &a.hostname).cmp(&(&b.name, &b.hostname)));
    out
}

/// Where node `from`'s volume `name` can move (`gantry volume move`
/// without a node, `node drain --with-volumes`): an up, active node other
/// than `from` where every service that mounts it may run (constraints,
/// room) and whose disk has room for `used` bytes and a tenth more; of
/// those, the one with the most free disk. A node that runs another of
/// the services' tasks is no target (it has its own volume of that name).
pub fn move_target(s: &State, name: &str, from: &str, used: u64) -> Result<String, String> {
    let mut ok: BTreeSet<String> = s
        .nodes
        .values()
        .filter(|n| n.id != from && n.up && n.availability == gantry_sched::Availability::Active)
        .map(|n| n.id.clone())
        .collect();
    for r in s.services.values() {
        if !mounted(&r.spec, &r.stack).contains(name) {
            continue;
        }
        let mut spec =
            crate::reconcile::task_spec(&r.name, &r.stack, &r.spec, gantry_sched::Strategy::Spread);
        // The volume goes with it.
        spec.volumes.clear();
        let (targets, _) = crate::reconcile::snapshot(s).global_targets(&spec);
        let here: BTreeSet<String> = targets.into_iter().collect();
        ok.retain(|n| here.contains(n));
    }
    let room = used.saturating_add(used / 10);
    ok.into_iter()
        .filter_map(|id| s.nodes.get(&id))
        .filter(|n| n.disk == 0 || n.disk > room)
        .max_by_key(|n| (n.disk, std::cmp::Reverse(n.id.clone())))
        .map(|n| n.id.clone())
        .ok_or_else(|| {
            format!("volume {name}: no other node can take it and run its services (constraints, room, disk)")
        })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use gantry_spec::Mount;
    use gantry_state::{NodeRecord, ServiceRecord};

    pub(crate) fn node(id: &str, vols: &[&str]) -> NodeRecord {
        NodeRecord {
            id: id.into(),
            hostname: format!("host-{id}"),
            addr: String::new(),
            manager: false,
            arch: "x86_64".into(),
            labels: BTreeMap::new(),
            availability: gantry_sched::Availability::Active,
            up: true,
            capacity: gantry_sched::Resources {
                nano_cpus: 1_000_000_000,
                memory: 1 << 30,
            },
            disk: 0,
            block: None,
            vtep_mac: None,
            last_addr: None,
            held: false,
            volumes: vols.iter().map(|v| v.to_string()).collect(),
            peer_port: None,
        }
    }

    pub(crate) fn service(name: &str, stack: &str, vol: &str) -> ServiceRecord {
        let mut spec = Service::new("db:1");
        spec.volumes
            .push(Mount::new(MountType::Volume, vol, "/data"));
        spec.volumes
            .push(Mount::new(MountType::Bind, "/srv", "/srv"));
        ServiceRecord {
            name: name.into(),
            stack: stack.into(),
            version: 2,
            spec,
            previous: None,
            update: Default::default(),
            vip: None,
            paused: None,
        }
    }

    fn task(id: &str, service: &str, node: &str, slot: u32, desired: TaskState) -> TaskRecord {
        TaskRecord {
            id: id.into(),
            service: service.into(),
            version: 2,
            slot,
            node: Some(node.into()),
            desired,
            state: desired,
            message: String::new(),
            exit_code: None,
            attempt: 0,
            updated_ms: 0,
            addr: None,
        }
    }

    fn state() -> State {
        let mut s = State::default();
        s.nodes
            .insert("n1".into(), node("n1", &["shop_db", "loose"]));
        s.nodes.insert("n2".into(), node("n2", &[]));
        s.services
            .insert("shop_db".into(), service("shop_db", "shop", "db"));
        s.tasks.insert(
            "t1".into(),
            task("t1", "shop_db", "n1", 1, TaskState::Running),
        );
        s.tasks.insert(
            "t0".into(),
            task("t0", "shop_db", "n1", 1, TaskState::Shutdown),
        );
        s
    }

    #[test]
    fn a_volume_moves_where_its_services_may_run_and_there_is_room() {
        let mut s = state();
        s.nodes.insert("n3".into(), node("n3", &[]));
        s.nodes.get_mut("n2").unwrap().disk = 10 << 30;
        s.nodes.get_mut("n3").unwrap().disk = 50 << 30;
        assert_eq!(move_target(&s, "shop_db", "n1", 1 << 30).unwrap(), "n3");
        // Too big for n3's disk: n2 cannot hold it either.
        assert!(move_target(&s, "shop_db", "n1", 48 << 30)
            .unwrap_err()
            .contains("no other node"));
        // The service may not run on n3.
        let db = s.services.get_mut("shop_db").unwrap();
        db.spec.constraints = vec!["node.hostname != host-n3".into()];
        assert_eq!(move_target(&s, "shop_db", "n1", 1 << 30).unwrap(), "n2");
        s.nodes.get_mut("n2").unwrap().up = false;
        assert!(move_target(&s, "shop_db", "n1", 1 << 30).is_err());
    }

    #[test]
    fn views_join_the_nodes_volumes_users_and_figures() {
        let mut s = state();
        // n2 lists "fresh"; a measurement of "gone", no longer listed
        // (removed since), is left out.
        s.nodes.get_mut("n2").unwrap().volumes = ["fresh".to_owned()].into();
        let mut reports = HashMap::new();
        let mut held = HeldVolumes::default();
        held.take(gantry_api::VolumeReport {
            time_ms: 7,
            partial: false,
            gone: vec![],
            volumes: ["fresh", "gone"]
                .into_iter()
                .map(|n| VolumeStat {
                    name: n.into(),
                    mountpoint: format!("/d/{n}/_data"),
                    used: 4096,
                    limit: Some(1 << 30),
                    free: Some(1 << 29),
                    created: "t".into(),
                    labels: BTreeMap::new(),
                    options: BTreeMap::new(),
                })
                .collect(),
        });
        reports.insert("n2".to_owned(), held);
        let v = views(&s, &reports);
        let names: Vec<(&str, &str)> = v
            .iter()
            .map(|v| (v.name.as_str(), v.hostname.as_str()))
            .collect();
        assert_eq!(
            names,
            [
                ("fresh", "host-n2"),
                ("loose", "host-n1"),
                ("shop_db", "host-n1")
            ]
        );
        assert_eq!(v[0].used, Some(4096));
        assert_eq!(v[0].limit, Some(1 << 30));
        assert_eq!(v[0].measured_ms, Some(7));
        assert_eq!(v[1].used, None, "not measured yet");
        assert_eq!(v[2].services, ["shop_db"]);
        assert_eq!(v[2].tasks, ["shop_db.1"], "the shut down task is no user");
        assert!(v[1].services.is_empty() && v[1].tasks.is_empty());
    }

    #[test]
    fn users_are_the_services_and_live_tasks_that_mount_it() {
        let s = state();
        assert_eq!(
            users(&s, "shop_db", None),
            (vec!["shop_db".to_owned()], vec!["shop_db.1".to_owned()])
        );
        assert_eq!(
            users(&s, "shop_db", Some("n2")),
            (vec!["shop_db".to_owned()], vec![])
        );
        assert_eq!(users(&s, "loose", None), (vec![], vec![]));
        let mut g = task("t9", "shop_db", "abcdef0123456789", 0, TaskState::Running);
        g.slot = 0;
        assert_eq!(task_name(&g), "shop_db.abcdef012345");
    }
}
