//! Cluster networks in the state machine.

use super::*;

#[test]
fn services_join_only_networks_that_exist_and_those_in_use_stay() {
    let mut s = State::default();
    let mut spec = gantry_spec::Service::new("web:1");
    spec.networks = vec!["shared".into()];
    spec.network_names.insert("shared".into(), "proxy".into());
    let put = Command::PutService {
        name: "a_web".into(),
        stack: "a".into(),
        spec: Box::new(spec),
        vip: None,
    };
    assert_eq!(s.apply(&put), Err(Rejected::NoSuchNetwork("proxy".into())));
    assert!(s.services.is_empty());
    s.apply(&Command::PutNetwork(NetworkRecord {
        name: "proxy".into(),
        labels: BTreeMap::new(),
        created_ms: 1,
    }))
    .unwrap();
    s.apply(&put).unwrap();
    let rm = Command::RemoveNetwork {
        name: "proxy".into(),
    };
    assert!(matches!(s.apply(&rm), Err(Rejected::NetworkInUse { .. })));
    s.apply(&Command::RemoveService {
        name: "a_web".into(),
    })
    .unwrap();
    s.apply(&rm).unwrap();
    assert!(s.networks.is_empty());
    assert_eq!(s.apply(&rm), Err(Rejected::NoSuchNetwork("proxy".into())));
}
