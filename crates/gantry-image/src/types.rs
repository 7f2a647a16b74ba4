//! The wire types of images: manifests, indexes and the image config, as the
//! OCI image spec and Docker's schema 2 define them (the JSON shapes agree;
//! only media types differ). Unknown fields are kept, so a config read and
//! written back loses nothing.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// OCI image manifest.
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
/// OCI image index.
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
/// OCI image config.
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
/// OCI gzip layer.
pub const OCI_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
/// Docker schema 2 manifest.
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
/// Docker manifest list.
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";

/// Every manifest type a pull accepts.
pub const ACCEPTED_MANIFESTS: [&str; 4] = [OCI_MANIFEST, OCI_INDEX, DOCKER_MANIFEST, DOCKER_LIST];

/// A content descriptor.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    /// What the content is.
    pub media_type: String,
    /// `sha256:...`.
    pub digest: String,
    /// Bytes.
    pub size: u64,
    /// For index entries.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<Platform>,
    /// Free-form annotations.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotations: Option<BTreeMap<String, String>>,
}

/// An index entry's platform.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Platform {
    /// e.g. `amd64`.
    pub architecture: String,
    /// e.g. `linux`.
    pub os: String,
    /// e.g. `v8` for arm64.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
}

/// An image manifest (OCI or Docker schema 2).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Manifest {
    /// Always 2.
    pub schema_version: u32,
    /// Present in Docker's and recent OCI manifests.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    /// The image config blob.
    pub config: Descriptor,
    /// Layer blobs, bottom first.
    pub layers: Vec<Descriptor>,
    /// Free-form annotations.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotations: Option<BTreeMap<String, String>>,
}

/// An image index or manifest list.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Index {
    /// Always 2.
    pub schema_version: u32,
    /// The index's media type, when given.
    #[serde(default)]
    pub media_type: Option<String>,
    /// One entry per platform.
    pub manifests: Vec<Descriptor>,
}

impl Index {
    /// The linux/amd64 entry, as Docker picks on this architecture.
    pub fn linux_amd64(&self) -> Option<&Descriptor> {
        self.manifests.iter().find(|d| {
            d.platform
                .as_ref()
                .is_some_and(|p| p.os == "linux" && p.architecture == "amd64")
        })
    }
}

/// The image config: what runs, and the layers' uncompressed digests.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ImageConfig {
    /// When the image was built (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created: Option<String>,
    /// e.g. `amd64`.
    #[serde(default)]
    pub architecture: String,
    /// e.g. `linux`.
    #[serde(default)]
    pub os: String,
    /// The container defaults.
    #[serde(default)]
    pub config: RunConfig,
    /// Uncompressed layer digests.
    pub rootfs: RootFs,
    /// One entry per build step.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub history: Vec<History>,
    /// Fields this type does not name.
    #[serde(flatten)]
    pub extra: BTreeMap<String, Value>,
}

/// `rootfs` of an image config.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RootFs {
    /// Always `layers`.
    #[serde(rename = "type")]
    pub kind: String,
    /// `sha256:` of each uncompressed layer, bottom first.
    pub diff_ids: Vec<String>,
}

impl Default for RootFs {
    fn default() -> Self {
        Self {
            kind: "layers".into(),
            diff_ids: Vec::new(),
        }
    }
}

/// One history entry.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct History {
    /// When.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created: Option<String>,
    /// The instruction.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_by: Option<String>,
    /// True when the step added no layer.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub empty_layer: bool,
}

/// The `config` part of an image config (Docker's field names).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct RunConfig {
    /// Default user.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// `port/proto` keys.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exposed_ports: Option<BTreeMap<String, Value>>,
    /// `KEY=value` pairs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env: Option<Vec<String>>,
    /// Entrypoint argv.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entrypoint: Option<Vec<String>>,
    /// Default arguments.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cmd: Option<Vec<String>>,
    /// Declared volumes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volumes: Option<BTreeMap<String, Value>>,
    /// Working directory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub working_dir: Option<String>,
    /// Labels.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub labels: Option<BTreeMap<String, String>>,
    /// Signal that stops the container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop_signal: Option<String>,
    /// Docker's health check (not in the OCI spec; kept as Docker writes it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub healthcheck: Option<Healthcheck>,
    /// Shell for shell-form instructions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shell: Option<Vec<String>>,
    /// `ONBUILD` triggers: instructions a build that starts FROM this
    /// image runs first.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_build: Option<Vec<String>>,
    /// Fields this type does not name.
    #[serde(flatten)]
    pub extra: BTreeMap<String, Value>,
}

/// Docker's `Healthcheck` config; durations in nanoseconds.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Healthcheck {
    /// `["NONE"]`, `["CMD", ...]` or `["CMD-SHELL", "..."]`.
    pub test: Vec<String>,
    /// Between checks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval: Option<u64>,
    /// For one check.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<u64>,
    /// Grace after start.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_period: Option<u64>,
    /// Failures before unhealthy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retries: Option<u64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docker_config_round_trips_unknown_fields() {
        let raw = r#"{"architecture":"amd64","os":"linux","config":{"Env":["PATH=/bin"],"Cmd":["sh"],"Healthcheck":{"Test":["CMD","true"],"Interval":1000000000},"ArgsEscaped":true},"rootfs":{"type":"layers","diff_ids":["sha256:aa"]},"container":"abc"}"#;
        let c: ImageConfig = serde_json::from_str(raw).unwrap();
        assert_eq!(c.config.cmd.as_deref(), Some(&["sh".to_owned()][..]));
        assert_eq!(
            c.config.healthcheck.as_ref().unwrap().interval,
            Some(1_000_000_000)
        );
        let back = serde_json::to_value(&c).unwrap();
        assert_eq!(back["container"], "abc");
        assert_eq!(back["config"]["ArgsEscaped"], true);
    }

    #[test]
    fn index_picks_linux_amd64() {
        let raw = r#"{"schemaVersion":2,"manifests":[
          {"mediaType":"x","digest":"sha256:1","size":1,"platform":{"architecture":"arm64","os":"linux"}},
          {"mediaType":"x","digest":"sha256:2","size":1,"platform":{"architecture":"amd64","os":"linux"}}]}"#;
        let i: Index = serde_json::from_str(raw).unwrap();
        assert_eq!(i.linux_amd64().unwrap().digest, "sha256:2");
    }
}

impl RunConfig {
    /// The argv a container runs, by Docker's rules: `--entrypoint`
    /// replaces the image's entrypoint and drops its Cmd; otherwise user
    /// arguments replace the image's Cmd and follow its Entrypoint.
    pub fn argv(&self, entrypoint: Option<&[String]>, cmd: &[String]) -> Vec<String> {
        let (ep, default_cmd) = match entrypoint {
            Some(e) => (
                e.iter().filter(|s| !s.is_empty()).cloned().collect(),
                Vec::new(),
            ),
            None => (
                self.entrypoint.clone().unwrap_or_default(),
                self.cmd.clone().unwrap_or_default(),
            ),
        };
        let cmd = if cmd.is_empty() {
            default_cmd
        } else {
            cmd.to_vec()
        };
        ep.into_iter().chain(cmd).collect()
    }

    /// The image's environment with `overrides` (`K=V`, or `K` alone to take
    /// the caller's value) applied by key, in order.
    pub fn env_with(&self, overrides: &[String]) -> Vec<String> {
        let mut env = self.env.clone().unwrap_or_default();
        if !env.iter().any(|e| e.starts_with("PATH=")) {
            env.insert(
                0,
                "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into(),
            );
        }
        for o in overrides {
            let kv = if o.contains('=') {
                o.clone()
            } else {
                match std::env::var(o) {
                    Ok(v) => format!("{o}={v}"),
                    Err(_) => continue,
                }
            };
            let key = kv.split('=').next().unwrap_or_default().to_owned();
            env.retain(|e| e.split('=').next() != Some(key.as_str()));
            env.push(kv);
        }
        env
    }
}

#[cfg(test)]
mod run_tests {
    use super::*;

    fn v(s: &[&str]) -> Vec<String> {
        s.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn entrypoint_and_cmd_merge_like_docker() {
        let c = RunConfig {
            entrypoint: Some(v(&["/bin/ep"])),
            cmd: Some(v(&["default"])),
            ..Default::default()
        };
        assert_eq!(c.argv(None, &[]), v(&["/bin/ep", "default"]));
        assert_eq!(c.argv(None, &v(&["mine"])), v(&["/bin/ep", "mine"]));
        assert_eq!(c.argv(Some(&v(&["/bin/other"])), &[]), v(&["/bin/other"]));
        assert_eq!(c.argv(Some(&v(&[""])), &v(&["sh"])), v(&["sh"]));
        let c = RunConfig {
            cmd: Some(v(&["sh"])),
            ..Default::default()
        };
        assert_eq!(c.argv(None, &v(&["echo", "x"])), v(&["echo", "x"]));
        assert_eq!(RunConfig::default().argv(None, &[]), Vec::<String>::new());
    }

    #[test]
    fn env_overrides_by_key() {
        let c = RunConfig {
            env: Some(v(&["PATH=/bin", "A=1", "B=2"])),
            ..Default::default()
        };
        assert_eq!(
            c.env_with(&v(&["A=9", "C=3"])),
            v(&["PATH=/bin", "B=2", "A=9", "C=3"])
        );
        assert!(RunConfig::default().env_with(&[])[0].starts_with("PATH="));
    }
}
