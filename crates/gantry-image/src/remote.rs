//! How a registry is reached: a registry of the world through oci-client
//! (HTTPS, token or Basic auth), or the cluster's own registry through a
//! [`Tunnel`] its caller holds (the cluster's mutual TLS, with a node's or
//! the admin's certificate, failing over between the managers). Pull and
//! push are written once against [`Remote`].

use futures::future::BoxFuture;
use futures::StreamExt;
use oci_client::secrets::RegistryAuth;
use oci_client::Client;
use reqwest::header::{HeaderMap, HeaderValue, ACCEPT, CONTENT_TYPE};
use reqwest::{Method, StatusCode};
use tokio::io::{AsyncWrite, AsyncWriteExt};

use crate::digest::Digest;
use crate::reference::ImageRef;
use crate::registry::{classify, RegistryError};
use crate::types::{Descriptor, ACCEPTED_MANIFESTS};

/// The cluster's registry, reached over a connection its owner holds.
pub trait Tunnel: Send + Sync + std::fmt::Debug {
    /// Whether `registry` (`host:port`, as image references name it) is
    /// the cluster's.
    fn serves(&self, registry: &str) -> bool;
    /// Sends a request for `path` (`/v2/...`, with its query) and answers
    /// whatever its status; an error is no answer at all.
    fn send(
        &self,
        method: Method,
        path: String,
        headers: HeaderMap,
        body: Vec<u8>,
    ) -> BoxFuture<'_, Result<reqwest::Response, String>>;
    /// `GET path` of a blob (`/v2/NAME/blobs/DIGEST`): from wherever the
    /// cluster says it is (another node that has it), or, `direct`, from
    /// the managers themselves. The caller checks the digest and asks
    /// again `direct` when it is wrong.
    fn blob(&self, path: String, direct: bool) -> BoxFuture<'_, Result<reqwest::Response, String>> {
        let _ = direct;
        self.send(Method::GET, path, HeaderMap::new(), Vec::new())
    }
}

/// A registry as pull and push use it.
pub(crate) enum Remote<'a> {
    /// Through oci-client.
    Oci { client: Client, auth: RegistryAuth },
    /// Through the cluster's tunnel.
    Cluster(&'a dyn Tunnel),
}

impl Remote<'_> {
    async fn call(
        t: &dyn Tunnel,
        r: &ImageRef,
        method: Method,
        path: String,
        headers: HeaderMap,
        body: Vec<u8>,
    ) -> Result<reqwest::Response, RegistryError> {
        t.send(method, path, headers, body)
            .await
            .map_err(|why| RegistryError::Unreachable {
                registry: r.registry().to_owned(),
                why,
            })
    }

    /// Turns a refusal into an error with the registry's words.
    async fn refused(r: &ImageRef, resp: reqwest::Response) -> RegistryError {
        let status = resp.status();
        let body = resp.text().await.unwrap_or_default();
        let why = serde_json::from_str::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| {
                v["errors"][0]["message"]
                    .as_str()
                    .or(v["message"].as_str())
                    .map(str::to_owned)
            })
            .unwrap_or(body);
        let registry = r.registry().to_owned();
        match status {
            StatusCode::NOT_FOUND => RegistryError::NotFound(format!("{r}: {why}")),
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => {
                RegistryError::AuthRefused { registry, why }
            }
            _ => RegistryError::Protocol {
                registry,
                why: format!("{status}: {why}"),
            },
        }
    }

    /// The manifest `reference` (a tag or digest) names: its bytes and
    /// the digest the registry gave.
    pub(crate) async fn manifest(&self, r: &ImageRef) -> Result<(Vec<u8>, String), RegistryError> {
        match self {
            Remote::Oci { client, auth } => client
                .pull_manifest_raw(r.inner(), auth, &ACCEPTED_MANIFESTS)
                .await
                .map(|(b, d)| (b.to_vec(), d))
                .map_err(|e| classify(r.registry(), &r.to_string(), e)),
            Remote::Cluster(t) => {
                let reference = r.digest().or(r.tag()).unwrap_or("latest");
                let mut h = HeaderMap::new();
                if let Ok(v) = HeaderValue::from_str(&ACCEPTED_MANIFESTS.join(", ")) {
                    h.insert(ACCEPT, v);
                }
                let path = format!("/v2/{}/manifests/{reference}", r.repository());
                let resp = Self::call(*t, r, Method::GET, path, h, Vec::new()).await?;
                if !resp.status().is_success() {
                    return Err(Self::refused(r, resp).await);
                }
                let digest = resp
                    .headers()
                    .get("docker-content-digest")
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_owned);
                let bytes = resp.bytes().await.map_err(|e| RegistryError::Unreachable {
                    registry: r.registry().to_owned(),
                    why: e.to_string(),
                })?;
                let digest = digest.unwrap_or_else(|| Digest::of(&bytes).to_string());
                Ok((bytes.to_vec(), digest))
            }
        }
    }

    /// Streams a blob into `out` (the caller checks its digest).
    pub(crate) async fn blob<W: AsyncWrite + Unpin + Send>(
        &self,
        r: &ImageRef,
        desc: &Descriptor,
        out: &mut W,
        direct: bool,
    ) -> Result<(), RegistryError> {
        match self {
            Remote::Oci { client, .. } => client
                .pull_blob(r.inner(), &crate::registry::to_oci(desc), out)
                .await
                .map_err(|e| classify(r.registry(), &r.to_string(), e)),
            Remote::Cluster(t) => {
                let path = format!("/v2/{}/blobs/{}", r.repository(), desc.digest);
                let resp =
                    t.blob(path, direct)
                        .await
                        .map_err(|why| RegistryError::Unreachable {
                            registry: r.registry().to_owned(),
                            why,
                        })?;
                if !resp.status().is_success() {
                    return Err(Self::refused(r, resp).await);
                }
                let mut body = resp.bytes_stream();
                while let Some(chunk) = body.next().await {
                    let chunk = chunk.map_err(|e| RegistryError::Unreachable {
                        registry: r.registry().to_owned(),
                        why: e.to_string(),
                    })?;
                    out.write_all(&chunk)
                        .await
                        .map_err(|e| RegistryError::Protocol {
                            registry: r.registry().to_owned(),
                            why: format!("writing the blob: {e}"),
                        })?;
                }
                Ok(())
            }
        }
    }

    /// Whether the registry has the blob.
    pub(crate) async fn blob_exists(
        &self,
        r: &ImageRef,
        digest: &str,
    ) -> Result<bool, RegistryError> {
        match self {
            Remote::Oci { client, .. } => client
                .blob_exists(r.inner(), digest)
                .await
                .map_err(|e| classify(r.registry(), &r.to_string(), e)),
            Remote::Cluster(t) => {
                let path = format!("/v2/{}/blobs/{digest}", r.repository());
                let resp =
                    Self::call(*t, r, Method::HEAD, path, HeaderMap::new(), Vec::new()).await?;
                match resp.status() {
                    s if s.is_success() => Ok(true),
                    StatusCode::NOT_FOUND => Ok(false),
                    _ => Err(Self::refused(r, resp).await),
                }
            }
        }
    }

    /// Whether a blob may have come from another node (and so is worth
    /// asking the managers for again when it is wrong).
    pub(crate) fn peers(&self) -> bool {
        matches!(self, Remote::Cluster(_))
    }

    /// Mounts a blob from another repository of the same registry; whether
    /// it is there now.
    pub(crate) async fn mount(&self, r: &ImageRef, from: &ImageRef, digest: &str) -> bool {
        match self {
            Remote::Oci { client, .. } => {
                client
                    .mount_blob(r.inner(), from.inner(), digest)
                    .await
                    .is_ok()
                    && self.blob_exists(r, digest).await.unwrap_or(false)
            }
            // Every repository of the cluster's registry shares its blobs:
            // `blob_exists` already said.
            Remote::Cluster(_) => false,
        }
    }

    /// Uploads a blob.
    pub(crate) async fn push_blob(
        &self,
        r: &ImageRef,
        data: Vec<u8>,
        digest: &str,
    ) -> Result<(), RegistryError> {
        match self {
            Remote::Oci { client, .. } => client
                .push_blob(r.inner(), data, digest)
                .await
                .map(|_| ())
                .map_err(|e| classify(r.registry(), &r.to_string(), e)),
            Remote::Cluster(t) => {
                // One request: the whole blob with its digest.
                let path = format!("/v2/{}/blobs/uploads/?digest={digest}", r.repository());
                let mut h = HeaderMap::new();
                h.insert(
                    CONTENT_TYPE,
                    HeaderValue::from_static("application/octet-stream"),
                );
                let resp = Self::call(*t, r, Method::POST, path, h, data).await?;
                if resp.status() != StatusCode::CREATED {
                    return Err(Self::refused(r, resp).await);
                }
                Ok(())
            }
        }
    }

    /// Uploads a manifest under the reference's tag (or digest).
    pub(crate) async fn push_manifest(
        &self,
        r: &ImageRef,
        raw: Vec<u8>,
        media_type: &str,
    ) -> Result<(), RegistryError> {
        match self {
            Remote::Oci { client, .. } => {
                let ct = media_type.parse().map_err(|_| RegistryError::Protocol {
                    registry: r.registry().to_owned(),
                    why: format!("bad media type {media_type}"),
                })?;
                client
                    .push_manifest_raw(r.inner(), raw, ct)
                    .await
                    .map(|_| ())
                    .map_err(|e| classify(r.registry(), &r.to_string(), e))
            }
            Remote::Cluster(t) => {
                let reference = r.tag().or(r.digest()).unwrap_or("latest");
                let path = format!("/v2/{}/manifests/{reference}", r.repository());
                let mut h = HeaderMap::new();
                let ct =
                    HeaderValue::from_str(media_type).map_err(|_| RegistryError::Protocol {
                        registry: r.registry().to_owned(),
                        why: format!("bad media type {media_type}"),
                    })?;
                h.insert(CONTENT_TYPE, ct);
                let resp = Self::call(*t, r, Method::PUT, path, h, raw).await?;
                if resp.status() != StatusCode::CREATED {
                    return Err(Self::refused(r, resp).await);
                }
                Ok(())
            }
        }
    }
}
