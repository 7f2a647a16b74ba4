//! Talking to registries over the OCI distribution protocol (oci-client):
//! pull into the [`Store`], push from it, and credentials kept in Docker's
//! `config.json` format so `docker login` and `gantry login` share them.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use base64::Engine;
use futures::{StreamExt, TryStreamExt};
use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::errors::OciDistributionError;
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, RegistryOperation};
use serde::{Deserialize, Serialize};

use crate::digest::Digest;
use crate::fetch;
use crate::reference::ImageRef;
use crate::remote::Remote;
pub use crate::remote::Tunnel;
use crate::store::{LocalImage, Store, StoreError};
use crate::types::{Index, Manifest, DOCKER_LIST, OCI_INDEX};

/// A pull, push or login that failed.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// Could not connect.
    #[error("registry {registry} is unreachable: {why}")]
    Unreachable {
        /// The registry.
        registry: String,
        /// The transport's reason.
        why: String,
    },
    /// Credentials were refused or missing.
    #[error("registry {registry} refused the credentials (run `gantry login {registry}`): {why}")]
    AuthRefused {
        /// The registry.
        registry: String,
        /// The registry's reason.
        why: String,
    },
    /// The image or tag does not exist there.
    #[error("image {0} not found in its registry")]
    NotFound(String),
    /// The index has no linux/amd64 image.
    #[error("image {0} has no linux/amd64 variant")]
    NoPlatform(String),
    /// Content did not match its digest.
    #[error("digest mismatch for {reference}: expected {expected}, got {actual}")]
    DigestMismatch {
        /// What was pulled.
        reference: String,
        /// The digest asked for.
        expected: String,
        /// What the content hashes to.
        actual: String,
    },
    /// The registry answered with something we cannot use.
    #[error("registry {registry}: {why}")]
    Protocol {
        /// The registry.
        registry: String,
        /// What went wrong.
        why: String,
    },
    /// The local store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The credentials file.
    #[error("credentials file {path}: {why}")]
    Credentials {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        why: String,
    },
}

pub(crate) fn classify(registry: &str, reference: &str, e: OciDistributionError) -> RegistryError {
    use OciDistributionError as E;
    let registry = registry.to_owned();
    match e {
        E::AuthenticationFailure(why) => RegistryError::AuthRefused { registry, why },
        E::UnauthorizedError { url } => RegistryError::AuthRefused {
            registry,
            why: format!("unauthorized at {url}"),
        },
        E::ImageManifestNotFoundError(_) => RegistryError::NotFound(reference.to_owned()),
        E::DigestError(d) => RegistryError::DigestMismatch {
            reference: reference.to_owned(),
            expected: String::new(),
            actual: d.to_string(),
        },
        E::RequestError(r) if r.is_connect() || r.is_timeout() => RegistryError::Unreachable {
            registry,
            why: error_chain(&r),
        },
        E::RequestError(r) if matches!(r.status().map(|s| s.as_u16()), Some(401 | 403)) => {
            RegistryError::AuthRefused {
                registry,
                why: error_chain(&r),
            }
        }
        E::RequestError(r) if r.status().map(|s| s.as_u16()) == Some(404) => {
            RegistryError::NotFound(reference.to_owned())
        }
        E::RequestError(r) => RegistryError::Protocol {
            registry,
            why: error_chain(&r),
        },
        E::RegistryError { envelope, url } => {
            let text = envelope
                .errors
                .iter()
                .map(|e| format!("{:?}: {}", e.code, e.message))
                .collect::<Vec<_>>()
                .join("; ");
            let denied = envelope.errors.iter().any(|e| {
                matches!(
                    e.code,
                    oci_client::errors::OciErrorCode::Unauthorized
                        | oci_client::errors::OciErrorCode::Denied
                )
            });
            let unknown = envelope.errors.iter().any(|e| {
                matches!(
                    e.code,
                    oci_client::errors::OciErrorCode::ManifestUnknown
                        | oci_client::errors::OciErrorCode::NameUnknown
                        | oci_client::errors::OciErrorCode::NotFound
                )
            });
            if denied {
                RegistryError::AuthRefused {
                    registry,
                    why: text,
                }
            } else if unknown {
                RegistryError::NotFound(reference.to_owned())
            } else {
                RegistryError::Protocol {
                    registry,
                    why: format!("{text} ({url})"),
                }
            }
        }
        E::ServerError {
            code: 401 | 403,
            message,
            ..
        } => RegistryError::AuthRefused {
            registry,
            why: message,
        },
        E::ServerError { code: 404, .. } => RegistryError::NotFound(reference.to_owned()),
        other => RegistryError::Protocol {
            registry,
            why: other.to_string(),
        },
    }
}

/// An error and its causes, on one line.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

/// How to reach registries.
#[derive(Debug, Clone, Default)]
pub struct RegistryOptions {
    /// Registries (`host:port`) reached over plain HTTP besides loopback ones.
    pub insecure: Vec<String>,
    /// Docker-format credentials file; default `$DOCKER_CONFIG/config.json`
    /// or `~/.docker/config.json`.
    pub credentials: Option<PathBuf>,
    /// The cluster's own registry, reached over the cluster's mutual TLS
    /// (an agent's node certificate, the CLI's admin credential).
    pub cluster: Option<Arc<dyn Tunnel>>,
    /// CAs to trust per registry, as Docker keeps them:
    /// `DIR/HOST:PORT/*.crt` (default `/etc/docker/certs.d`). A registry
    /// with one is reached over HTTPS, loopback or not.
    pub certs_dir: Option<PathBuf>,
}

impl RegistryOptions {
    fn plain_http(&self, r: &ImageRef) -> bool {
        if !self.cas_for(r.registry()).is_empty() {
            return false;
        }
        r.is_loopback() || self.insecure.iter().any(|i| i == r.registry())
    }

    /// The CAs given for a registry (`certs.d/HOST:PORT/*.crt`).
    fn cas_for(&self, registry: &str) -> Vec<oci_client::client::Certificate> {
        let dir = self
            .certs_dir
            .clone()
            .unwrap_or_else(|| PathBuf::from("/etc/docker/certs.d"));
        if registry.contains('/') || registry.starts_with('.') {
            return Vec::new();
        }
        let Ok(entries) = std::fs::read_dir(dir.join(registry)) else {
            return Vec::new();
        };
        let mut files: Vec<PathBuf> = entries
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "crt"))
            .collect();
        files.sort();
        files
            .into_iter()
            .filter_map(|p| std::fs::read(p).ok())
            .map(|data| oci_client::client::Certificate {
                encoding: oci_client::client::CertificateEncoding::Pem,
                data,
            })
            .collect()
    }

    /// Adds what to do when HTTPS to a registry failed at the transport:
    /// it may speak plain HTTP, which Gantry (like Docker) only uses when
    /// told to.
    fn hint(&self, r: &ImageRef, e: RegistryError) -> RegistryError {
        match e {
            RegistryError::Protocol { registry, why } | RegistryError::Unreachable { registry, why }
                if !self.plain_http(r) =>
            {
                RegistryError::Unreachable {
                    why: format!("{why} (over HTTPS; if it serves plain HTTP, pass --insecure-registry {registry})"),
                    registry,
                }
            }
            other => other,
        }
    }

    /// How to reach the registry of `r`.
    fn remote(&self, r: &ImageRef) -> Result<Remote<'_>, RegistryError> {
        if let Some(t) = self.cluster.as_deref().filter(|t| t.serves(r.registry())) {
            return Ok(Remote::Cluster(t));
        }
        Ok(Remote::Oci {
            client: self.client(r),
            auth: self.auth_for(r.registry())?,
        })
    }

    fn client(&self, r: &ImageRef) -> Client {
        let plain = self.plain_http(r);
        let protocol = if plain {
            ClientProtocol::HttpsExcept(vec![r.registry().to_owned()])
        } else {
            ClientProtocol::Https
        };
        Client::new(ClientConfig {
            protocol,
            extra_root_certificates: self.cas_for(r.registry()),
            platform_resolver: None,
            max_concurrent_download: 4,
            connect_timeout: Some(std::time::Duration::from_secs(10)),
            ..Default::default()
        })
    }

    fn credentials_path(&self) -> PathBuf {
        if let Some(p) = &self.credentials {
            return p.clone();
        }
        if let Some(d) = std::env::var_os("DOCKER_CONFIG") {
            return Path::new(&d).join("config.json");
        }
        let home = std::env::var_os("HOME").unwrap_or_else(|| "/root".into());
        Path::new(&home).join(".docker/config.json")
    }

    /// The credentials stored for a registry, or anonymous.
    pub fn auth_for(&self, registry: &str) -> Result<RegistryAuth, RegistryError> {
        let path = self.credentials_path();
        let file = match CredentialsFile::load(&path)? {
            Some(f) => f,
            None => return Ok(RegistryAuth::Anonymous),
        };
        Ok(match file.find(registry) {
            Some((u, p)) => RegistryAuth::Basic(u, p),
            None => RegistryAuth::Anonymous,
        })
    }

    /// Checks the credentials against the registry and stores them.
    pub async fn login(
        &self,
        registry: &str,
        user: &str,
        password: &str,
    ) -> Result<(), RegistryError> {
        let probe = ImageRef::parse(&format!("{registry}/gantry-login-probe")).map_err(|e| {
            RegistryError::Protocol {
                registry: registry.to_owned(),
                why: e.to_string(),
            }
        })?;
        let client = self.client(&probe);
        let auth = RegistryAuth::Basic(user.to_owned(), password.to_owned());
        client
            .auth(probe.inner(), &auth, RegistryOperation::Pull)
            .await
            .map_err(|e| classify(registry, registry, e))?;
        // A registry with plain basic auth hands out no token, so the step
        // above proves nothing: make one authenticated request. "Not found"
        // for the probe repository means the credentials were accepted.
        match client.list_tags(probe.inner(), &auth, Some(1), None).await {
            Ok(_) => {}
            Err(e) => match classify(registry, registry, e) {
                RegistryError::NotFound(_) => {}
                RegistryError::Protocol { why, .. }
                    if why.contains("NameUnknown") || why.contains("404") => {}
                other => return Err(other),
            },
        }
        let path = self.credentials_path();
        let mut file = CredentialsFile::load(&path)?.unwrap_or_default();
        file.set(registry, user, password);
        file.save(&path)
    }

    /// Forgets a registry's credentials.
    pub fn logout(&self, registry: &str) -> Result<bool, RegistryError> {
        let path = self.credentials_path();
        let Some(mut file) = CredentialsFile::load(&path)? else {
            return Ok(false);
        };
        let had = file.remove(registry);
        file.save(&path)?;
        Ok(had)
    }
}

/// Docker's `config.json`, of which we use `auths` and keep the rest.
#[derive(Debug, Default, Serialize, Deserialize)]
struct CredentialsFile {
    #[serde(default)]
    auths: BTreeMap<String, AuthEntry>,
    #[serde(flatten)]
    rest: BTreeMap<String, serde_json::Value>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct AuthEntry {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    auth: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    username: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    password: Option<String>,
    #[serde(flatten)]
    rest: BTreeMap<String, serde_json::Value>,
}

fn auth_keys(registry: &str) -> Vec<String> {
    let mut keys = vec![
        registry.to_owned(),
        format!("https://{registry}"),
        format!("http://{registry}"),
    ];
    if registry == "docker.io" || registry == "index.docker.io" {
        keys.insert(0, "https://index.docker.io/v1/".into());
        keys.push("index.docker.io".into());
        keys.push("docker.io".into());
    }
    keys
}

impl CredentialsFile {
    fn load(path: &Path) -> Result<Option<Self>, RegistryError> {
        match std::fs::read(path) {
            Ok(b) => serde_json::from_slice(&b)
                .map(Some)
                .map_err(|e| RegistryError::Credentials {
                    path: path.to_owned(),
                    why: e.to_string(),
                }),
            Err(_) => Ok(None),
        }
    }

    fn save(&self, path: &Path) -> Result<(), RegistryError> {
        let err = |e: std::io::Error| RegistryError::Credentials {
            path: path.to_owned(),
            why: e.to_string(),
        };
        if let Some(d) = path.parent() {
            std::fs::create_dir_all(d).map_err(err)?;
        }
        let tmp = path.with_extension("json.tmp");
        std::fs::write(&tmp, serde_json::to_vec_pretty(self).unwrap_or_default()).map_err(err)?;
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600)).map_err(err)?;
        std::fs::rename(&tmp, path).map_err(err)
    }

    fn find(&self, registry: &str) -> Option<(String, String)> {
        let e = auth_keys(registry).iter().find_map(|k| self.auths.get(k))?;
        if let (Some(u), Some(p)) = (&e.username, &e.password) {
            return Some((u.clone(), p.clone()));
        }
        let raw = base64::engine::general_purpose::STANDARD
            .decode(e.auth.as_ref()?)
            .ok()?;
        let s = String::from_utf8(raw).ok()?;
        let (u, p) = s.split_once(':')?;
        Some((u.to_owned(), p.to_owned()))
    }

    fn set(&mut self, registry: &str, user: &str, password: &str) {
        let key = auth_keys(registry).remove(0);
        let entry = self.auths.entry(key).or_default();
        entry.auth =
            Some(base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}")));
        entry.username = None;
        entry.password = None;
    }

    fn remove(&mut self, registry: &str) -> bool {
        let mut had = false;
        for k in auth_keys(registry) {
            had |= self.auths.remove(&k).is_some();
        }
        had
    }
}

/// Progress of a pull or push, one event at a time.
#[derive(Debug, Clone)]
pub enum Progress {
    /// The manifest was resolved to this digest.
    Resolved {
        /// The manifest digest.
        digest: String,
    },
    /// A blob transfer started (`size` bytes).
    Start {
        /// The blob.
        digest: String,
        /// Its size.
        size: u64,
    },
    /// More bytes of a blob moved.
    Bytes {
        /// The blob.
        digest: String,
        /// Bytes so far.
        done: u64,
    },
    /// A blob was already there (locally or remotely, or mounted).
    Exists {
        /// The blob.
        digest: String,
        /// How it came to be there.
        how: &'static str,
    },
    /// A layer is being unpacked.
    Extracting {
        /// The blob.
        digest: String,
    },
    /// A blob is complete.
    Done {
        /// The blob.
        digest: String,
    },
}

/// Where progress goes.
pub type ProgressFn = Arc<dyn Fn(Progress) + Send + Sync>;

/// Pulls an image into the store and tags it with `r`. Every blob's digest
/// is checked; layers download up to four at a time, each unpacked while
/// it arrives and kept only once its digest is right.
pub async fn pull(
    store: &Store,
    r: &ImageRef,
    opts: &RegistryOptions,
    progress: ProgressFn,
) -> Result<LocalImage, RegistryError> {
    pull_inner(store, r, opts, progress)
        .await
        .map_err(|e| opts.hint(r, e))
}

async fn pull_inner(
    store: &Store,
    r: &ImageRef,
    opts: &RegistryOptions,
    progress: ProgressFn,
) -> Result<LocalImage, RegistryError> {
    let remote = opts.remote(r)?;
    let name = r.to_string();
    let reg = r.registry().to_owned();
    let (mut bytes, mut digest) = remote.manifest(r).await?;
    let check = |bytes: &[u8], expected: &str| -> Result<Digest, RegistryError> {
        let actual = Digest::of(bytes);
        if actual.as_str() != expected {
            return Err(RegistryError::DigestMismatch {
                reference: name.clone(),
                expected: expected.to_owned(),
                actual: actual.to_string(),
            });
        }
        Ok(actual)
    };
    if let Some(d) = r.digest() {
        check(&bytes, d)?;
    }
    let media: serde_json::Value =
        serde_json::from_slice(&bytes).map_err(|e| RegistryError::Protocol {
            registry: reg.clone(),
            why: format!("manifest is not JSON: {e}"),
        })?;
    let mt = media
        .get("mediaType")
        .and_then(|v| v.as_str())
        .unwrap_or("");
    if mt == OCI_INDEX || mt == DOCKER_LIST || (mt.is_empty() && media.get("manifests").is_some()) {
        let index: Index = serde_json::from_slice(&bytes).map_err(|e| RegistryError::Protocol {
            registry: reg.clone(),
            why: format!("bad image index: {e}"),
        })?;
        let pick = index
            .linux_amd64()
            .ok_or_else(|| RegistryError::NoPlatform(name.clone()))?;
        let per_platform = r.with_digest(&pick.digest);
        let (b, _) = remote.manifest(&per_platform).await?;
        check(&b, &pick.digest)?;
        bytes = b;
        digest = pick.digest.clone();
    }
    let manifest_digest = check(&bytes, &digest).or_else(|_| -> Result<Digest, RegistryError> {
        // Some registries omit Docker-Content-Digest; then the content names itself.
        Ok(Digest::of(&bytes))
    })?;
    progress(Progress::Resolved {
        digest: manifest_digest.to_string(),
    });
    let manifest: Manifest =
        serde_json::from_slice(&bytes).map_err(|e| RegistryError::Protocol {
            registry: reg.clone(),
            why: format!("unsupported manifest (only OCI and Docker schema 2 images): {e}"),
        })?;

    // A blob (and, for a layer, its unpacked directory) into the store,
    // from another node first when the cluster says one has it; its bytes
    // wrong or its transfer broken, once more from the managers themselves.
    let fetch = |desc: crate::types::Descriptor, layer: bool| {
        let remote = &remote;
        let store = store.clone();
        let progress = progress.clone();
        let reg = reg.clone();
        let name = name.clone();
        let repo = format!("{}/{}", r.registry(), r.repository());
        async move {
            let d = Digest::parse(&desc.digest).map_err(|e| RegistryError::Protocol {
                registry: reg.clone(),
                why: e.to_string(),
            })?;
            if store.has_blob(&d) {
                progress(Progress::Exists {
                    digest: desc.digest.clone(),
                    how: "already here",
                });
                if layer && !store.layer_path(&d).exists() {
                    progress(Progress::Extracting {
                        digest: d.to_string(),
                    });
                    let (store, d) = (store.clone(), d.clone());
                    tokio::task::spawn_blocking(move || store.ensure_layer(&d))
                        .await
                        .map_err(|e| RegistryError::Protocol {
                            registry: String::new(),
                            why: e.to_string(),
                        })??;
                }
                return Ok(d);
            }
            progress(Progress::Start {
                digest: desc.digest.clone(),
                size: desc.size,
            });
            let unpack = layer && !store.layer_path(&d).exists();
            let mut direct = false;
            let got = loop {
                let why =
                    match fetch::fetch(remote, r, &store, &desc, unpack, &progress, direct).await {
                        Ok(got) if got.actual == d.as_str() => break got,
                        Ok(got) => {
                            let actual = got.actual.clone();
                            got.discard();
                            RegistryError::DigestMismatch {
                                reference: name.clone(),
                                expected: d.to_string(),
                                actual,
                            }
                        }
                        Err(e) => e,
                    };
                if direct || !remote.peers() {
                    return Err(why);
                }
                direct = true;
            };
            if let Err(e) = store.commit_blob(&got.blob, &d) {
                got.discard();
                return Err(e.into());
            }
            match got.layer {
                Some(Ok(dir)) => {
                    store.commit_layer(&dir, &d)?;
                }
                Some(Err(err)) => {
                    return Err(StoreError::Unpack {
                        digest: d.to_string(),
                        err,
                    }
                    .into())
                }
                None => {}
            }
            store.add_source(&d, &repo)?;
            Ok::<Digest, RegistryError>(d)
        }
    };

    // The config first: it is small and says what the layers must be.
    let config_digest = fetch(manifest.config.clone(), false).await?;
    progress(Progress::Done {
        digest: config_digest.to_string(),
    });
    let config_bytes = store.read_blob(&config_digest)?;
    let _: crate::types::ImageConfig =
        serde_json::from_slice(&config_bytes).map_err(|e| RegistryError::Protocol {
            registry: reg.clone(),
            why: format!("bad image config: {e}"),
        })?;
    futures::stream::iter(manifest.layers.clone())
        .map(|desc| {
            let fetch = &fetch;
            let progress = progress.clone();
            async move {
                let d = fetch(desc, true).await?;
                progress(Progress::Done {
                    digest: d.to_string(),
                });
                Ok::<(), RegistryError>(())
            }
        })
        .buffer_unordered(4)
        .try_collect::<Vec<()>>()
        .await?;
    let stored = store.put_blob(&bytes, Some(&manifest_digest))?;
    Ok(store.add_image(&stored, Some(r))?)
}

pub(crate) fn to_oci(d: &crate::types::Descriptor) -> oci_client::manifest::OciDescriptor {
    oci_client::manifest::OciDescriptor {
        media_type: d.media_type.clone(),
        digest: d.digest.clone(),
        size: d.size as i64,
        ..Default::default()
    }
}

/// Pushes a local image to `target`. Blobs the registry has are skipped; a
/// blob known to live in another repository of the same registry is
/// mounted from there instead of uploaded. Returns the manifest digest.
pub async fn push(
    store: &Store,
    image: &LocalImage,
    target: &ImageRef,
    opts: &RegistryOptions,
    progress: ProgressFn,
) -> Result<String, RegistryError> {
    push_inner(store, image, target, opts, progress)
        .await
        .map_err(|e| opts.hint(target, e))
}

async fn push_inner(
    store: &Store,
    image: &LocalImage,
    target: &ImageRef,
    opts: &RegistryOptions,
    progress: ProgressFn,
) -> Result<String, RegistryError> {
    let remote = opts.remote(target)?;
    let reg = target.registry().to_owned();
    let name = target.to_string();
    if let Remote::Oci { client, auth } = &remote {
        // Push needs both scopes: blob existence checks are pull requests.
        for op in [RegistryOperation::Push, RegistryOperation::Pull] {
            client
                .auth(target.inner(), auth, op)
                .await
                .map_err(|e| classify(&reg, &name, e))?;
        }
        client
            .store_auth_if_needed(target.inner().resolve_registry(), auth)
            .await;
    }
    let repo = format!("{}/{}", target.registry(), target.repository());
    let mut blobs = image.manifest.layers.clone();
    blobs.push(image.manifest.config.clone());
    futures::stream::iter(blobs)
        .map(|desc| {
            let remote = &remote;
            let progress = progress.clone();
            let reg = reg.clone();
            let repo = repo.clone();
            async move {
                let d = Digest::parse(&desc.digest).map_err(|e| RegistryError::Protocol {
                    registry: reg.clone(),
                    why: e.to_string(),
                })?;
                if remote.blob_exists(target, &desc.digest).await? {
                    progress(Progress::Exists {
                        digest: desc.digest.clone(),
                        how: "layer already exists",
                    });
                    return Ok(());
                }
                for src in store.sources(&d) {
                    let Some(other) = src.strip_prefix(&format!("{}/", target.registry())) else {
                        continue;
                    };
                    if other == target.repository() {
                        continue;
                    }
                    let from = ImageRef::parse(&format!("{src}:latest")).ok();
                    if let Some(from) = from {
                        if remote.mount(target, &from, &desc.digest).await {
                            progress(Progress::Exists {
                                digest: desc.digest.clone(),
                                how: "mounted from another repository",
                            });
                            store.add_source(&d, &repo)?;
                            return Ok(());
                        }
                    }
                }
                progress(Progress::Start {
                    digest: desc.digest.clone(),
                    size: desc.size,
                });
                let data = store.read_blob(&d)?;
                remote.push_blob(target, data, &desc.digest).await?;
                store.add_source(&d, &repo)?;
                progress(Progress::Done {
                    digest: desc.digest.clone(),
                });
                Ok::<(), RegistryError>(())
            }
        })
        .buffer_unordered(3)
        .try_collect::<Vec<()>>()
        .await?;
    let manifest_digest =
        Digest::parse(&image.record.manifest).map_err(|e| RegistryError::Protocol {
            registry: reg.clone(),
            why: e.to_string(),
        })?;
    let raw = store.read_blob(&manifest_digest)?;
    let media = image
        .manifest
        .media_type
        .clone()
        .unwrap_or_else(|| crate::types::OCI_MANIFEST.to_owned());
    remote.push_manifest(target, raw, &media).await?;
    store.add_image(&manifest_digest, Some(target))?;
    Ok(manifest_digest.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_round_trip_in_docker_format() {
        let t = tempfile::tempdir().unwrap();
        let path = t.path().join("config.json");
        std::fs::write(
            &path,
            r#"{"auths":{"other.example":{"auth":"dTpw"}},"credsStore":"desktop"}"#,
        )
        .unwrap();
        let opts = RegistryOptions {
            credentials: Some(path.clone()),
            ..Default::default()
        };
        assert!(
            matches!(opts.auth_for("other.example").unwrap(), RegistryAuth::Basic(u, p) if u == "u" && p == "p")
        );
        assert!(matches!(
            opts.auth_for("nowhere").unwrap(),
            RegistryAuth::Anonymous
        ));
        let mut f = CredentialsFile::load(&path).unwrap().unwrap();
        f.set("docker.io", "me", "secret:with:colons");
        f.save(&path).unwrap();
        let raw: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        assert_eq!(raw["credsStore"], "desktop", "unknown keys are kept");
        assert!(raw["auths"]["https://index.docker.io/v1/"]["auth"].is_string());
        assert!(
            matches!(opts.auth_for("docker.io").unwrap(), RegistryAuth::Basic(u, p) if u == "me" && p == "secret:with:colons")
        );
        assert!(opts.logout("docker.io").unwrap());
        assert!(matches!(
            opts.auth_for("docker.io").unwrap(),
            RegistryAuth::Anonymous
        ));
    }
}
