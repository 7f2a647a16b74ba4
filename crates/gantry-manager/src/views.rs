//! What the nodes are told of the cluster, derived from the state: the
//! ports published in ingress mode here; DNS records and network members
//! in [`crate::scope`]. Pure; the server's assignment hub sends them.

use gantry_api::IngressPort;
use gantry_spec::PortMode;
use gantry_state::State;

/// Every service's ports published in ingress mode.
pub fn ingress_ports(s: &State) -> Vec<IngressPort> {
    let mut out: Vec<IngressPort> = s
        .services
        .values()
        .flat_map(|rec| {
            rec.spec
                .ports
                .iter()
                .filter(|p| p.mode == PortMode::Ingress)
                .filter_map(move |p| {
                    Some(IngressPort {
                        published: p.published?,
                        target: p.target,
                        service: rec.name.clone(),
                        udp: p.protocol == "udp",
                        host_ip: p.host_ip,
                    })
                })
        })
        .collect();
    out.sort();
    out
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::net::Ipv4Addr;

    use gantry_spec::{Port, Service};
    use gantry_state::TaskState;
    use gantry_state::{Command, TaskRecord};

    use super::*;
    use crate::report::node_record;
    use crate::scope;

    fn info(host: &str) -> gantry_api::NodeInfo {
        gantry_api::NodeInfo {
            hostname: host.into(),
            addr: "192.168.1.1".into(),
            arch: "x86_64".into(),
            nano_cpus: 1_000_000_000,
            memory: 1 << 30,
            disk: 0,
            labels: BTreeMap::new(),
            vtep_mac: None,
            volumes: None,
            peer_port: None,
        }
    }

    fn task(id: &str, service: &str, node: &str, state: TaskState, addr: u8) -> Command {
        Command::PutTask(TaskRecord {
            id: id.into(),
            service: service.into(),
            version: 1,
            slot: 1,
            node: Some(node.into()),
            desired: TaskState::Running,
            state,
            message: String::new(),
            exit_code: None,
            attempt: 0,
            updated_ms: 0,
            addr: Some(Ipv4Addr::new(10, 0, 0, addr)),
        })
    }

    /// app_web (2 running, 1 starting, 1 on a down node), app_db on the
    /// `back` network, and a published ingress port.
    fn state() -> State {
        let mut st = State::default();
        for n in ["n1", "n2"] {
            st.apply(&Command::PutNode(node_record(n, &info(n), false)))
                .unwrap();
        }
        let mut web = Service::new("web:1");
        web.networks = vec!["default".into(), "front".into()];
        web.ports = vec![
            Port {
                target: 80,
                published: Some(8080),
                protocol: "tcp".into(),
                mode: PortMode::Ingress,
                host_ip: None,
            },
            Port {
                target: 53,
                published: Some(5353),
                protocol: "udp".into(),
                mode: PortMode::Ingress,
                host_ip: Some("127.0.0.1".parse().unwrap()),
            },
            Port {
                target: 81,
                published: Some(81),
                protocol: "tcp".into(),
                mode: PortMode::Host,
                host_ip: None,
            },
        ];
        let mut db = Service::new("db:1");
        db.networks = vec!["back".into()];
        for (name, spec) in [("app_web", web), ("app_db", db)] {
            st.apply(&Command::PutService {
                name: name.into(),
                stack: "app".into(),
                spec: Box::new(spec),
                vip: None,
            })
            .unwrap();
        }
        for c in [
            task("w1", "app_web", "n1", TaskState::Running, 1),
            task("w2", "app_web", "n1", TaskState::Running, 2),
            task("w3", "app_web", "n1", TaskState::Assigned, 3),
            task("w4", "app_web", "n2", TaskState::Running, 4),
            task("d1", "app_db", "n1", TaskState::Running, 9),
            Command::SetNodeUp {
                id: "n2".into(),
                up: false,
            },
        ] {
            st.apply(&c).unwrap();
        }
        st
    }

    fn everything(
        st: &State,
    ) -> (
        std::collections::BTreeMap<String, Vec<Ipv4Addr>>,
        std::collections::BTreeMap<String, Vec<Ipv4Addr>>,
    ) {
        let sc = scope::scoped(st);
        let all = sc.keys().cloned().collect();
        let held = scope::node_records(&sc, &all);
        (
            gantry_api::addrs::dns_names(&held, false),
            gantry_api::addrs::network_members(&held),
        )
    }

    #[test]
    fn dns_names_running_tasks_and_tasks_names_live_ones_on_nodes_that_keep_them() {
        let (d, _) = everything(&state());
        let ips = |v: &[u8]| {
            v.iter()
                .map(|&x| Ipv4Addr::new(10, 0, 0, x))
                .collect::<Vec<_>>()
        };
        for name in ["web", "web.app", "app_web"] {
            assert_eq!(d[name], ips(&[1, 2]), "{name}");
        }
        for name in ["tasks.web", "tasks.app_web"] {
            assert_eq!(d[name], ips(&[1, 2, 3]), "{name}");
        }
        assert_eq!(d["db"], ips(&[9]));
    }

    #[test]
    fn networks_hold_the_live_tasks_of_the_services_that_join_them() {
        let (_, m) = everything(&state());
        let ips = |v: &[u8]| {
            v.iter()
                .map(|&x| Ipv4Addr::new(10, 0, 0, x))
                .collect::<Vec<_>>()
        };
        assert_eq!(m["app_default"], ips(&[1, 2, 3]));
        assert_eq!(m["app_front"], ips(&[1, 2, 3]));
        assert_eq!(m["app_back"], ips(&[9]));
    }

    #[test]
    fn ports_in_ingress_mode_are_ingress_ports_with_their_protocol_and_address() {
        assert_eq!(
            ingress_ports(&state()),
            [
                IngressPort {
                    published: 5353,
                    target: 53,
                    service: "app_web".into(),
                    udp: true,
                    host_ip: Some("127.0.0.1".parse().unwrap()),
                },
                IngressPort {
                    published: 8080,
                    target: 80,
                    service: "app_web".into(),
                    udp: false,
                    host_ip: None,
                }
            ]
        );
    }
}
