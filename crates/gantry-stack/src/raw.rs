//! The compose file as written: loose types (string or list, string or
//! number), with the positions of values that are validated later.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_saphyr::Spanned;

/// A YAML scalar as compose allows it in most places.
#[derive(Debug, Clone)]
pub(crate) enum Scalar {
    Str(String),
    Int(i64),
    Float(f64),
    Bool(bool),
}

impl Scalar {
    pub(crate) fn text(&self) -> String {
        match self {
            Self::Str(s) => s.clone(),
            Self::Int(i) => i.to_string(),
            Self::Float(f) => f.to_string(),
            Self::Bool(b) => b.to_string(),
        }
    }
}

#[derive(Debug, Clone)]
pub(crate) enum StringOrList {
    One(String),
    Many(Vec<String>),
}

#[derive(Debug, Clone)]
pub(crate) enum ListOrDict {
    List(Vec<String>),
    Dict(BTreeMap<String, Option<Scalar>>),
}

// The loose shapes are read by visitors that take whichever shape comes,
// not as untagged enums: those try each variant in turn, and every failed
// try builds an error, which serde-saphyr checks against every value
// interpolated so far (quadratic in a big file).

use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};
use std::fmt;

impl<'de> Deserialize<'de> for Scalar {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Scalar;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string, a number or true/false")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Scalar, E> {
                Ok(Scalar::Str(v.to_owned()))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<Scalar, E> {
                Ok(Scalar::Str(v))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Scalar, E> {
                Ok(Scalar::Int(v))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Scalar, E> {
                Ok(i64::try_from(v).map_or(Scalar::Float(v as f64), Scalar::Int))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Scalar, E> {
                Ok(Scalar::Float(v))
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<Scalar, E> {
                Ok(Scalar::Bool(v))
            }
        }
        d.deserialize_any(V)
    }
}

impl<'de> Deserialize<'de> for StringOrList {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = StringOrList;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string or a list of strings")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<StringOrList, E> {
                Ok(StringOrList::One(v.to_owned()))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<StringOrList, E> {
                Ok(StringOrList::One(v))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<StringOrList, A::Error> {
                let mut out = Vec::new();
                while let Some(s) = seq.next_element::<Scalar>()? {
                    out.push(s.text());
                }
                Ok(StringOrList::Many(out))
            }
        }
        d.deserialize_any(V)
    }
}

impl<'de> Deserialize<'de> for ListOrDict {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = ListOrDict;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a list of KEY=VALUE strings or a mapping of KEY: VALUE")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<ListOrDict, A::Error> {
                let mut out = Vec::new();
                while let Some(s) = seq.next_element::<Scalar>()? {
                    out.push(s.text());
                }
                Ok(ListOrDict::List(out))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<ListOrDict, A::Error> {
                let mut out = BTreeMap::new();
                while let Some((k, v)) = map.next_entry::<String, Option<Scalar>>()? {
                    out.insert(k, v);
                }
                Ok(ListOrDict::Dict(out))
            }
        }
        d.deserialize_any(V)
    }
}

#[derive(Debug, Default, Deserialize)]
pub(crate) struct File {
    pub(crate) services: Option<BTreeMap<String, Service>>,
    pub(crate) volumes: Option<BTreeMap<String, Option<TopVolume>>>,
    pub(crate) networks: Option<BTreeMap<String, Option<TopNetwork>>>,
    pub(crate) secrets: Option<BTreeMap<String, Option<TopFile>>>,
    pub(crate) configs: Option<BTreeMap<String, Option<TopFile>>>,
}

/// A top-level `secrets:` or `configs:` entry.
#[derive(Debug, Clone, Default, Deserialize)]
pub(crate) struct TopFile {
    pub(crate) file: Option<Spanned<String>>,
    pub(crate) environment: Option<Spanned<String>>,
    pub(crate) content: Option<Spanned<String>>,
    pub(crate) external: Option<Spanned<External>>,
    pub(crate) name: Option<Spanned<String>>,
    pub(crate) labels: Option<ListOrDict>,
    pub(crate) template_driver: Option<Spanned<String>>,
}

/// A service's use of a secret or config: `- NAME` or the long syntax.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub(crate) enum FileUse {
    Short(String),
    Long(LongFileUse),
}

#[derive(Debug, Clone, Deserialize)]
pub(crate) struct LongFileUse {
    pub(crate) source: String,
    pub(crate) target: Option<String>,
    pub(crate) uid: Option<Scalar>,
    pub(crate) gid: Option<Scalar>,
    pub(crate) mode: Option<Scalar>,
}

#[derive(Debug, Default, Deserialize)]
pub(crate) struct Service {
    pub(crate) image: Option<Spanned<String>>,
    pub(crate) build: Option<Spanned<crate::build::RawBuild>>,
    pub(crate) command: Option<Spanned<StringOrList>>,
    pub(crate) entrypoint: Option<Spanned<StringOrList>>,
    pub(crate) environment: Option<ListOrDict>,
    pub(crate) env_file: Option<Spanned<StringOrList>>,
    pub(crate) labels: Option<ListOrDict>,
    pub(crate) ports: Option<Vec<Spanned<Port>>>,
    pub(crate) volumes: Option<Vec<Spanned<Volume>>>,
    pub(crate) tmpfs: Option<StringOrList>,
    pub(crate) healthcheck: Option<Healthcheck>,
    pub(crate) depends_on: Option<Spanned<DependsOn>>,
    pub(crate) deploy: Option<Deploy>,
    pub(crate) networks: Option<Spanned<Networks>>,
    pub(crate) links: Option<Spanned<Vec<String>>>,
    pub(crate) secrets: Option<Spanned<Vec<Spanned<FileUse>>>>,
    pub(crate) configs: Option<Spanned<Vec<Spanned<FileUse>>>>,
    pub(crate) hostname: Option<String>,
    pub(crate) user: Option<Scalar>,
    pub(crate) working_dir: Option<String>,
    pub(crate) stop_signal: Option<String>,
    pub(crate) stop_grace_period: Option<Spanned<String>>,
    pub(crate) read_only: Option<bool>,
    pub(crate) mem_limit: Option<Spanned<Scalar>>,
    pub(crate) mem_reservation: Option<Spanned<Scalar>>,
    pub(crate) cpus: Option<Spanned<Scalar>>,
    pub(crate) pids_limit: Option<Spanned<Scalar>>,
    pub(crate) scale: Option<Spanned<Scalar>>,
    pub(crate) restart: Option<Spanned<String>>,
    pub(crate) profiles: Option<Vec<String>>,
    pub(crate) logging: Option<Logging>,
    pub(crate) platform: Option<Spanned<String>>,
    pub(crate) cap_add: Option<Spanned<Vec<String>>>,
    pub(crate) cap_drop: Option<Spanned<Vec<String>>>,
    pub(crate) security_opt: Option<Spanned<Vec<String>>>,
    pub(crate) sysctls: Option<Spanned<ListOrDict>>,
    pub(crate) ulimits: Option<Spanned<BTreeMap<String, Ulimit>>>,
    pub(crate) init: Option<bool>,
    pub(crate) extra_hosts: Option<Spanned<ListOrDict>>,
    pub(crate) dns: Option<Spanned<StringOrList>>,
    pub(crate) dns_search: Option<Spanned<StringOrList>>,
    pub(crate) dns_opt: Option<Spanned<Vec<String>>>,
    #[serde(rename = "x-gantry")]
    pub(crate) x_gantry: Option<XGantry>,
}

/// `nofile: 1024` or `nofile: {soft: 1024, hard: 4096}`.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub(crate) enum Ulimit {
    One(i64),
    Pair { soft: i64, hard: i64 },
}

#[derive(Debug, Default, Deserialize)]
pub(crate) struct Logging {
    pub(crate) driver: Option<Spanned<String>>,
    pub(crate) options: Option<BTreeMap<String, Scalar>>,
}

/// A service's `networks`: names, or names with settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub(crate) enum Networks {
    List(Vec<String>),
    Map(BTreeMap<String, Option<ServiceNetwork>>),
}

#[derive(Debug, Clone, Default, Deserialize)]
pub(crate) struct ServiceNetwork {
    pub(crate) aliases: Option<Vec<String>>,
    pub(crate) ipv4_address: Option<String>,
    pub(crate) ipv6_address: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
pub(crate) struct XGantry {
    pub(crate) strategy: Option<Spanned<String>>,
    pub(crate) rebalance: Option<bool>,
    pub(crate) metadata: Option<bool>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub(crate) enum Port {
    Short(Scalar),
    Long {
        target: u16,
        published: Option<Scalar>,
        protocol: Option<String>,
        mode: Option<String>,
        host_ip: Option<String>,
    },
}

/// A top-level `volumes:` entry.
#[derive(Debug, Clone, Default, Deserialize)]
pub(crate) struct TopVolume {
    pub(crate) driver: Option<Spanned<String>>,
    pub(crate) driver_opts: Option<BTreeMap<String, Scalar>>,
    pub(crate) external: Option<Spanned<External>>,
    pub(crate) name: Option<Spanned<String>>,
    pub(crate) labels: Option<ListOrDict>,
    #[serde(rename = "x-gantry")]
    pub(crate) x_gantry: Option<Spanned<XVolume>>,
}

/// A top-level volume's `x-gantry`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct XVolume {
    pub(crate) size: Option<Scalar>,
    pub(crate) backup: Option<XBackup>,
    pub(crate) replicas: Option<u64>,
}

/// `x-gantry: {backup: ...}`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct XBackup {
    pub(crate) schedule: String,
    pub(crate) to: String,
    pub(crate) key: String,
    pub(crate) credentials: Option<String>,
    pub(crate) keep: Option<u64>,
    pub(crate) pre: Option<String>,
    pub(crate) post: Option<String>,
    pub(crate) no_freeze: Option<bool>,
}

/// A top-level `networks:` entry (what Gantry reads of it).
#[derive(Debug, Clone, Default, Deserialize)]
pub(crate) struct TopNetwork {
    pub(crate) external: Option<Spanned<External>>,
    pub(crate) name: Option<Spanned<String>>,
    pub(crate) internal: Option<Spanned<bool>>,
}

/// `external: true`, or the old `external: {name: x}`.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub(crate) enum External {
    Flag(bool),
    Named { name: String },
}

#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub(crate) enum Volume {
    Short(String),
    Long(LongVolume),
}

#[derive(Debug, Clone, Deserialize)]
pub(crate) struct LongVolume {
    #[serde(rename = "type")]
    pub(crate) kind: String,
    pub(crate) source: Option<String>,
    pub(crate) target: String,
    pub(crate) read_only: Option<bool>,
    pub(crate) volume: Option<VolumeOpts>,
    pub(crate) bind: Option<BindOpts>,
    pub(crate) tmpfs: Option<TmpfsOpts>,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub(crate) struct VolumeOpts {
    pub(crate) nocopy: Option<bool>,
    pub(crate) subpath: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub(crate) struct BindOpts {
    pub(crate) propagation: Option<String>,
    pub(crate) create_host_path: Option<bool>,
    pub(crate) selinux: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub(crate) struct TmpfsOpts {
    pub(crate) size: Option<Scalar>,
    pub(crate) mode: Option<Scalar>,
}

#[derive(Debug, Default, Deserialize)]
pub(crate) struct Healthcheck {
    pub(crate) test: Option<StringOrList>,
    pub(crate) interval: Option<Spanned<String>>,
    pub(crate) timeout: Option<Spanned<String>>,
    pub(crate) start_period: Option<Spanned<String>>,
    pub(crate) start_interval: Option<Spanned<String>>,
    pub(crate) retries: Option<u32>,
    pub(crate) disable: Option<bool>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub(crate) enum DependsOn {
    List(Vec<String>),
    Map(BTreeMap<String, Option<DependsOnCondition>>),
}

#[derive(Debug, Clone, Deserialize)]
pub(crate) struct DependsOnCondition {
    #[allow(dead_code)]
    pub(crate) condition: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
pub(crate) struct Deploy {
    pub(crate) mode: Option<Spanned<String>>,
    pub(crate) endpoint_mode: Option<Spanned<String>>,
    pub(crate) replicas: Option<Spanned<Scalar>>,
    pub(crate) resources: Option<Resources>,
    pub(crate) placement: Option<Placement>,
    pub(crate) restart_policy: Option<RestartPolicy>,
    pub(crate) update_config: Option<UpdateConfig>,
    pub(crate) rollback_config: Option<UpdateConfig>,
    pub(crate) labels: Option<ListOrDict>,
}

#[derive(Debug, Default, Deserialize)]
pub(crate) struct Resources {
    pub(crate) limits: Option<Amounts>,
    pub(crate) reservations: Option<Amounts>,
}

#[derive(Debug, Default, Deserialize)]
pub(crate) struct Amounts {
    pub(crate) cpus: Option<Spanned<Scalar>>,
    pub(crate) memory: Option<Spanned<Scalar>>,
    pub(crate) pids: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
pub(crate) struct Placement {
    pub(crate) constraints: Option<Vec<Spanned<String>>>,
    pub(crate) max_replicas_per_node: Option<Spanned<u32>>,
    pub(crate) preferences: Option<Vec<Spanned<Preference>>>,
}

#[derive(Debug, Clone, Deserialize)]
pub(crate) struct Preference {
    pub(crate) spread: String,
}

#[derive(Debug, Default, Deserialize)]
pub(crate) struct RestartPolicy {
    pub(crate) condition: Option<Spanned<String>>,
    pub(crate) delay: Option<Spanned<String>>,
    pub(crate) max_attempts: Option<u32>,
    pub(crate) window: Option<Spanned<String>>,
}

#[derive(Debug, Default, Deserialize)]
pub(crate) struct UpdateConfig {
    pub(crate) parallelism: Option<u32>,
    pub(crate) delay: Option<Spanned<String>>,
    pub(crate) order: Option<Spanned<String>>,
    pub(crate) failure_action: Option<Spanned<String>>,
    pub(crate) monitor: Option<Spanned<String>>,
    pub(crate) max_failure_ratio: Option<f64>,
}
