//! Task addresses as nodes hold them: one record per service and scope,
//! from which a node derives its DNS names and its networks' members.
//!
//! A scope is a stack network (`STACK_NET`), which a node holds when it
//! runs a task on it, or [`INGRESS`], which every node holds (the
//! services that publish ingress ports). In a network scope a service's
//! record gives the five DNS names (`SERVICE`, `SERVICE.STACK`,
//! `STACK_SERVICE` to its running tasks, `tasks.SERVICE`,
//! `tasks.STACK_SERVICE` to its live ones) and the network's members (the
//! live tasks of every service on it); in [`INGRESS`] only the long name,
//! to its running tasks. An address thus travels once per scope and state,
//! not once per name, and a change to one service is that service's
//! addresses gained and lost.
//!
//! Address lists travel packed (see [`packed`]): 4 bytes an address,
//! base64, about 5.3 characters instead of about 13 for a JSON string, and
//! no text to format or parse. At scale these lists are nearly all a
//! node's stream carries.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};

/// The scope every node holds: the services that publish ingress ports,
/// which every node forwards.
pub const INGRESS: &str = "*ingress";

/// A service's task addresses in one scope.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceAddrs {
    /// The service's stack (its long name is `STACK_SERVICE`).
    pub stack: String,
    /// Its running tasks.
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty", with = "packed")]
    pub running: BTreeSet<Ipv4Addr>,
    /// Its live tasks: running or starting (a superset of `running`).
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty", with = "packed")]
    pub live: BTreeSet<Ipv4Addr>,
    /// More names of the service in this scope (network aliases), which
    /// answer its running tasks to the tasks of this network only.
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    pub aliases: BTreeSet<String>,
    /// Its virtual IP (`endpoint_mode: vip`), which its names answer
    /// instead of its tasks' addresses on nodes that can translate it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vip: Option<Ipv4Addr>,
}

/// Scope to service long name to its addresses.
pub type ScopedAddrs = BTreeMap<String, BTreeMap<String, ServiceAddrs>>;

/// The addresses a set gained and lost (lists sorted).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AddrChange {
    /// Gained.
    #[serde(default, skip_serializing_if = "Vec::is_empty", with = "packed")]
    pub add: Vec<Ipv4Addr>,
    /// Lost.
    #[serde(default, skip_serializing_if = "Vec::is_empty", with = "packed")]
    pub remove: Vec<Ipv4Addr>,
}

impl AddrChange {
    /// From `old` to `new`.
    pub fn between(old: &BTreeSet<Ipv4Addr>, new: &BTreeSet<Ipv4Addr>) -> Self {
        Self {
            add: new.difference(old).copied().collect(),
            remove: old.difference(new).copied().collect(),
        }
    }

    /// All of `new`.
    pub fn all(new: &BTreeSet<Ipv4Addr>) -> Self {
        Self {
            add: new.iter().copied().collect(),
            remove: Vec::new(),
        }
    }

    /// Whether nothing changed.
    pub fn is_empty(&self) -> bool {
        self.add.is_empty() && self.remove.is_empty()
    }

    fn apply(&self, set: &mut BTreeSet<Ipv4Addr>) {
        for a in &self.remove {
            set.remove(a);
        }
        set.extend(&self.add);
    }
}

/// A service's record changed in a scope: put (whole, for a service new to
/// the scope) or changed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceChange {
    /// The service's stack.
    pub stack: String,
    /// Running tasks gained and lost.
    #[serde(default, skip_serializing_if = "AddrChange::is_empty")]
    pub running: AddrChange,
    /// Live tasks gained and lost.
    #[serde(default, skip_serializing_if = "AddrChange::is_empty")]
    pub live: AddrChange,
    /// Its aliases, whole, when they changed (or the service is new).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aliases: Option<BTreeSet<String>>,
    /// Its virtual IP when it changed (or the service is new): 0.0.0.0
    /// when it no longer has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vip: Option<Ipv4Addr>,
}

/// What changed in one scope.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScopeChange {
    /// Services new or changed.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub put: BTreeMap<String, ServiceChange>,
    /// Services gone from the scope.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub gone: Vec<String>,
}

impl ScopeChange {
    /// A whole scope, as a change to nothing.
    pub fn whole(scope: &BTreeMap<String, ServiceAddrs>) -> Self {
        Self {
            put: scope
                .iter()
                .map(|(name, s)| {
                    let c = ServiceChange {
                        stack: s.stack.clone(),
                        running: AddrChange::all(&s.running),
                        live: AddrChange::all(&s.live),
                        aliases: (!s.aliases.is_empty()).then(|| s.aliases.clone()),
                        vip: s.vip,
                    };
                    (name.clone(), c)
                })
                .collect(),
            gone: Vec::new(),
        }
    }

    /// From `old` to `new` (None: the same).
    pub fn between(
        old: &BTreeMap<String, ServiceAddrs>,
        new: &BTreeMap<String, ServiceAddrs>,
    ) -> Option<Self> {
        if old == new {
            return None;
        }
        let empty = ServiceAddrs::default();
        let put = new
            .iter()
            .filter(|(name, s)| old.get(*name) != Some(s))
            .map(|(name, s)| {
                let o = old.get(name).unwrap_or(&empty);
                let c = ServiceChange {
                    stack: s.stack.clone(),
                    running: AddrChange::between(&o.running, &s.running),
                    live: AddrChange::between(&o.live, &s.live),
                    aliases: (o.aliases != s.aliases).then(|| s.aliases.clone()),
                    vip: (o.vip != s.vip).then_some(s.vip.unwrap_or(Ipv4Addr::UNSPECIFIED)),
                };
                (name.clone(), c)
            })
            .collect();
        let gone = crate::delta::keys_gone(old, new);
        Some(Self { put, gone })
    }

    /// Applies the change to a scope's records.
    pub fn apply(&self, scope: &mut BTreeMap<String, ServiceAddrs>) {
        for name in &self.gone {
            scope.remove(name);
        }
        for (name, c) in &self.put {
            let s = scope.entry(name.clone()).or_default();
            s.stack.clone_from(&c.stack);
            c.running.apply(&mut s.running);
            c.live.apply(&mut s.live);
            if let Some(a) = &c.aliases {
                s.aliases.clone_from(a);
            }
            if let Some(v) = c.vip {
                s.vip = (!v.is_unspecified()).then_some(v);
            }
        }
    }
}

/// Per scope, what turns `old` into `new`, and the scopes gone.
pub fn diff_scoped(
    old: &ScopedAddrs,
    new: &ScopedAddrs,
) -> (BTreeMap<String, ScopeChange>, Vec<String>) {
    let put = new
        .iter()
        .filter_map(|(k, n)| {
            let c = match old.get(k) {
                Some(o) => ScopeChange::between(o, n)?,
                None => ScopeChange::whole(n),
            };
            Some((k.clone(), c))
        })
        .collect();
    (put, crate::delta::keys_gone(old, new))
}

/// Applies per-scope changes and removes the scopes gone.
pub fn apply_scoped(held: &mut ScopedAddrs, put: &BTreeMap<String, ScopeChange>, gone: &[String]) {
    for k in gone {
        held.remove(k);
    }
    for (k, c) in put {
        c.apply(held.entry(k.clone()).or_default());
    }
}

/// The DNS names a node answers, from the records it holds: each name to
/// its addresses (sorted, none empty). With `vips` (the node translates
/// virtual IPs), a service that has one answers it by its names, while it
/// has a running task; `tasks.` names always answer the tasks.
pub fn dns_names(held: &ScopedAddrs, vips: bool) -> BTreeMap<String, Vec<Ipv4Addr>> {
    let mut out: BTreeMap<String, BTreeSet<Ipv4Addr>> = BTreeMap::new();
    let mut put = |name: String, addrs: &BTreeSet<Ipv4Addr>| {
        if !addrs.is_empty() {
            out.entry(name).or_default().extend(addrs);
        }
    };
    for (scope, services) in held {
        for (long, s) in services {
            if scope == INGRESS {
                put(ingress_name(long), &s.running);
                continue;
            }
            let short = long.strip_prefix(&format!("{}_", s.stack)).unwrap_or(long);
            let vip;
            let named = match s.vip.filter(|_| vips && !s.running.is_empty()) {
                Some(v) => {
                    vip = BTreeSet::from([v]);
                    &vip
                }
                None => &s.running,
            };
            put(short.to_owned(), named);
            put(format!("{short}.{}", s.stack), named);
            put(long.clone(), named);
            put(format!("tasks.{short}"), &s.live);
            put(format!("tasks.{long}"), &s.live);
        }
    }
    out.into_iter()
        .map(|(k, v)| (k, v.into_iter().collect()))
        .collect()
}

/// The network aliases a node answers: each alias to the networks it is
/// a name on, each with the running tasks it answers there.
pub fn dns_aliases(
    held: &ScopedAddrs,
    vips: bool,
) -> BTreeMap<String, BTreeMap<String, Vec<Ipv4Addr>>> {
    let mut out: BTreeMap<String, BTreeMap<String, BTreeSet<Ipv4Addr>>> = BTreeMap::new();
    for (scope, services) in held.iter().filter(|(k, _)| *k != INGRESS) {
        for s in services.values().filter(|s| !s.running.is_empty()) {
            let vip = s.vip.filter(|_| vips).map(|v| BTreeSet::from([v]));
            for a in &s.aliases {
                out.entry(a.clone())
                    .or_default()
                    .entry(scope.clone())
                    .or_default()
                    .extend(vip.as_ref().unwrap_or(&s.running));
            }
        }
    }
    out.into_iter()
        .map(|(a, nets)| {
            let nets = nets
                .into_iter()
                .map(|(n, v)| (n, v.into_iter().collect()))
                .collect();
            (a, nets)
        })
        .collect()
}

/// The name under which the ingress forwarder finds a service's running
/// tasks (not one a task would ask for, and never a virtual IP).
pub fn ingress_name(long: &str) -> String {
    format!("{INGRESS}/{long}")
}

/// Each stack network's members as the node's DNS sees them: its tasks
/// and the virtual IPs of its services, which a task of the network may
/// be answered.
pub fn dns_members(held: &ScopedAddrs) -> BTreeMap<String, Vec<Ipv4Addr>> {
    held.iter()
        .filter(|(k, _)| *k != INGRESS)
        .map(|(k, services)| {
            let all: BTreeSet<Ipv4Addr> = services
                .values()
                .flat_map(|s| s.live.iter().chain(&s.vip))
                .copied()
                .collect();
            (k.clone(), all.into_iter().collect())
        })
        .collect()
}

/// The virtual IPs a node translates, each with its service's running
/// tasks (sorted).
pub fn vip_backends(held: &ScopedAddrs) -> BTreeMap<Ipv4Addr, Vec<Ipv4Addr>> {
    let mut out: BTreeMap<Ipv4Addr, BTreeSet<Ipv4Addr>> = BTreeMap::new();
    for services in held.values() {
        for s in services.values() {
            if let Some(v) = s.vip {
                out.entry(v).or_default().extend(&s.running);
            }
        }
    }
    out.into_iter()
        .map(|(v, t)| (v, t.into_iter().collect()))
        .collect()
}

/// Each stack network a node holds, with its members: the live tasks of
/// every service on it (a network may have none).
pub fn network_members(held: &ScopedAddrs) -> BTreeMap<String, Vec<Ipv4Addr>> {
    held.iter()
        .filter(|(k, _)| *k != INGRESS)
        .map(|(k, services)| {
            let all: BTreeSet<Ipv4Addr> =
                services.values().flat_map(|s| &s.live).copied().collect();
            (k.clone(), all.into_iter().collect())
        })
        .collect()
}

/// Address lists on the wire: the addresses' 4 bytes each (big-endian,
/// in the list's order), base64 with padding; `""` is no address. Reading
/// refuses anything else with a clear error.
pub mod packed {
    use std::net::Ipv4Addr;

    use base64::Engine;
    use serde::{Deserialize, Deserializer, Serializer};

    const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

    /// Packs addresses.
    pub fn encode<'a>(addrs: impl IntoIterator<Item = &'a Ipv4Addr>) -> String {
        let bytes: Vec<u8> = addrs.into_iter().flat_map(|a| a.octets()).collect();
        B64.encode(bytes)
    }

    /// Unpacks addresses.
    pub fn decode(s: &str) -> Result<Vec<Ipv4Addr>, String> {
        let bytes = B64
            .decode(s)
            .map_err(|e| format!("a packed address list is not base64: {e}"))?;
        if bytes.len() % 4 != 0 {
            return Err(format!(
                "a packed address list has {} bytes, not 4 an address",
                bytes.len()
            ));
        }
        Ok(bytes
            .chunks_exact(4)
            .map(|c| Ipv4Addr::new(c[0], c[1], c[2], c[3]))
            .collect())
    }

    /// For `#[serde(with = "packed")]` on a list or a set of addresses.
    pub fn serialize<'a, T, S>(addrs: &'a T, s: S) -> Result<S::Ok, S::Error>
    where
        &'a T: IntoIterator<Item = &'a Ipv4Addr>,
        S: Serializer,
    {
        s.serialize_str(&encode(addrs))
    }

    /// See [`serialize`].
    pub fn deserialize<'de, T, D>(d: D) -> Result<T, D::Error>
    where
        T: FromIterator<Ipv4Addr>,
        D: Deserializer<'de>,
    {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        decode(&s)
            .map(|v| v.into_iter().collect())
            .map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ips(v: &[u8]) -> BTreeSet<Ipv4Addr> {
        v.iter().map(|&o| Ipv4Addr::new(10, 0, 0, o)).collect()
    }

    fn svc(stack: &str, running: &[u8], live: &[u8]) -> ServiceAddrs {
        ServiceAddrs {
            stack: stack.into(),
            running: ips(running),
            live: ips(live),
            aliases: BTreeSet::new(),
            vip: None,
        }
    }

    #[test]
    fn a_virtual_ip_answers_for_the_names_where_the_node_translates_it() {
        let mut web = svc("app", &[1, 2], &[1, 2, 3]);
        web.vip = Some(Ipv4Addr::new(10, 47, 0, 1));
        web.aliases = ["www".to_owned()].into();
        let mut held = ScopedAddrs::new();
        held.insert(
            "app_default".into(),
            [("app_web".to_owned(), web.clone())].into(),
        );
        let vip = vec![Ipv4Addr::new(10, 47, 0, 1)];
        let d = dns_names(&held, true);
        for name in ["web", "web.app", "app_web"] {
            assert_eq!(d[name], vip, "{name}");
        }
        assert_eq!(d["tasks.web"].len(), 3);
        assert_eq!(dns_aliases(&held, true)["www"]["app_default"], vip);
        // A node that cannot translate answers the tasks.
        assert_eq!(dns_names(&held, false)["web"].len(), 2);
        assert_eq!(dns_aliases(&held, false)["www"]["app_default"].len(), 2);
        assert_eq!(vip_backends(&held)[&vip[0]].len(), 2);
        assert_eq!(dns_members(&held)["app_default"].last(), vip.first());
        // No running task: no answer rather than an address nothing is behind.
        let mut idle = web.clone();
        idle.running.clear();
        held.insert(
            "app_default".into(),
            [("app_web".to_owned(), idle.clone())].into(),
        );
        assert!(!dns_names(&held, true).contains_key("web"));
        // The address travels as a change, and goes.
        let a: BTreeMap<String, ServiceAddrs> = [("app_web".to_owned(), web.clone())].into();
        let mut none = web.clone();
        none.vip = None;
        let b: BTreeMap<String, ServiceAddrs> = [("app_web".to_owned(), none)].into();
        for (from, to) in [(&a, &b), (&b, &a)] {
            let c = ScopeChange::between(from, to).unwrap();
            let line = serde_json::to_string(&c).unwrap();
            let c: ScopeChange = serde_json::from_str(&line).unwrap();
            let mut held = from.clone();
            c.apply(&mut held);
            assert_eq!(&held, to, "{line}");
        }
    }

    #[test]
    fn aliases_are_names_on_their_network_only_and_travel_as_changes() {
        let mut db = svc("app", &[9], &[9, 10]);
        db.aliases = ["database".to_owned()].into();
        let old: BTreeMap<String, ServiceAddrs> =
            [("app_db".to_owned(), svc("app", &[9], &[9]))].into();
        let new: BTreeMap<String, ServiceAddrs> = [("app_db".to_owned(), db.clone())].into();
        let c = ScopeChange::between(&old, &new).unwrap();
        assert_eq!(c.put["app_db"].aliases, Some(db.aliases.clone()));
        let mut held = old.clone();
        c.apply(&mut held);
        assert_eq!(held, new);
        // Unchanged aliases do not travel again.
        let mut moved = new.clone();
        moved
            .get_mut("app_db")
            .unwrap()
            .running
            .insert(Ipv4Addr::new(10, 0, 0, 10));
        let c = ScopeChange::between(&new, &moved).unwrap();
        assert_eq!(c.put["app_db"].aliases, None);
        // And they go when removed.
        let c = ScopeChange::between(&new, &old).unwrap();
        let mut held = new.clone();
        c.apply(&mut held);
        assert_eq!(held, old);

        let mut scoped = ScopedAddrs::new();
        scoped.insert("app_back".into(), new.clone());
        scoped.insert(
            "app_front".into(),
            [("app_db".to_owned(), svc("app", &[9], &[9]))].into(),
        );
        let a = dns_aliases(&scoped, false);
        assert_eq!(a.keys().collect::<Vec<_>>(), ["database"]);
        assert_eq!(a["database"].keys().collect::<Vec<_>>(), ["app_back"]);
        assert_eq!(a["database"]["app_back"], [Ipv4Addr::new(10, 0, 0, 9)]);
        assert!(!dns_names(&scoped, false).contains_key("database"));
    }

    #[test]
    fn names_and_members_come_from_one_record_per_service() {
        let mut held = ScopedAddrs::new();
        held.insert(
            "app_default".into(),
            [
                ("app_web".to_owned(), svc("app", &[1, 2], &[1, 2, 3])),
                ("app_db".to_owned(), svc("app", &[9], &[9])),
            ]
            .into(),
        );
        held.insert(
            INGRESS.into(),
            [("site_front".to_owned(), svc("site", &[7], &[7, 8]))].into(),
        );
        let d = dns_names(&held, false);
        let v = |o: &[u8]| ips(o).into_iter().collect::<Vec<_>>();
        for name in ["web", "web.app", "app_web"] {
            assert_eq!(d[name], v(&[1, 2]), "{name}");
        }
        for name in ["tasks.web", "tasks.app_web"] {
            assert_eq!(d[name], v(&[1, 2, 3]), "{name}");
        }
        assert_eq!(d[&ingress_name("site_front")], v(&[7]));
        assert!(
            !d.contains_key("site_front")
                && !d.contains_key("front")
                && !d.contains_key("tasks.site_front")
        );
        let m = network_members(&held);
        assert_eq!(m.keys().collect::<Vec<_>>(), ["app_default"]);
        assert_eq!(m["app_default"], v(&[1, 2, 3, 9]));
    }

    #[test]
    fn address_lists_travel_packed_and_bad_packing_is_refused() {
        let c = AddrChange {
            add: ips(&[1, 2]).into_iter().collect(),
            remove: Vec::new(),
        };
        let json = serde_json::to_string(&c).unwrap();
        assert_eq!(json, r#"{"add":"CgAAAQoAAAI="}"#);
        assert_eq!(serde_json::from_str::<AddrChange>(&json).unwrap(), c);
        for bad in [
            r#"{"add":"CgAA"}"#,
            r#"{"add":"not base64!"}"#,
            r#"{"add":["10.0.0.1"]}"#,
        ] {
            let e = serde_json::from_str::<AddrChange>(bad)
                .unwrap_err()
                .to_string();
            assert!(
                e.contains("packed address list") || e.contains("invalid type"),
                "{bad}: {e}"
            );
        }
        let s = svc("app", &[3], &[3, 4]);
        let back: ServiceAddrs = serde_json::from_str(&serde_json::to_string(&s).unwrap()).unwrap();
        assert_eq!(back, s);
    }

    #[test]
    fn a_stack_whose_name_has_an_underscore_keeps_its_short_names() {
        let mut held = ScopedAddrs::new();
        held.insert(
            "my_app_default".into(),
            [("my_app_web".to_owned(), svc("my_app", &[1], &[1]))].into(),
        );
        let d = dns_names(&held, false);
        assert!(
            d.contains_key("web") && d.contains_key("web.my_app"),
            "{d:?}"
        );
    }
}
