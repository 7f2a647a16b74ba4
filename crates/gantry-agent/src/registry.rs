//! The cluster's registry as a node and the CLI reach it: through the
//! manager connection they already hold (the cluster's mutual TLS with
//! their certificate), failing over between the managers like every
//! other request. An image whose registry is a manager's address
//! (`10.0.0.1:4243/shop/web@sha256:...`) is pulled this way.
//!
//! A node's blob requests say on which port it serves blobs to its peers
//! (`peer.rs`); a manager may answer with another node that has the blob
//! instead of the bytes, and the node fetches it from there (over the
//! same mutual TLS, the peer named by its node id, which its certificate
//! carries), or from the managers when that node fails it.

use futures::future::BoxFuture;
use gantry_api::Client;
use reqwest::header::{HeaderMap, HeaderValue, LOCATION};
use reqwest::StatusCode;

/// A [`gantry_image::Tunnel`] over a manager connection.
#[derive(Clone)]
pub struct ClusterRegistry {
    client: Client,
    /// This node's blob port and its TLS for fetching from its peers
    /// (none: the CLI, which fetches from the managers only).
    peers: Option<(u16, rustls::ClientConfig)>,
}

impl std::fmt::Debug for ClusterRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterRegistry")
            .field("managers", &self.client.managers())
            .finish()
    }
}

impl ClusterRegistry {
    /// Over `client`, from the managers only.
    pub fn new(client: Client) -> Self {
        Self {
            client,
            peers: None,
        }
    }

    /// The node's, for a program other than the agent on its host (a
    /// build a manager sent here, whose base image may be in the
    /// cluster's registry): from the identity saved under `data_dir`,
    /// pulling only, as the node may.
    pub fn of_node(data_dir: &std::path::Path) -> Result<Self, String> {
        let id = crate::Identity::load(data_dir).ok_or("this host is no node (no identity)")?;
        let me = gantry_pki::Issued {
            cert_pem: id.cert_pem.clone(),
            key_pem: id.key_pem.clone(),
        };
        let live = gantry_pki::LiveCert::new(&me).map_err(|e| e.to_string())?;
        let tls = gantry_pki::Trust::new(&id.ca_pem)
            .and_then(|t| t.client_config(live))
            .map_err(|e| e.to_string())?;
        let client =
            Client::with_managers(&id.manager, &id.managers, tls).map_err(|e| e.to_string())?;
        Ok(Self::new(client))
    }

    /// A node's: it serves blobs on `port` and fetches from its peers with
    /// `tls` (its certificate, the cluster's roots).
    pub(crate) fn with_peers(client: Client, port: u16, tls: rustls::ClientConfig) -> Self {
        Self {
            client,
            peers: Some((port, tls)),
        }
    }

    /// Fetches a blob from the node a manager named.
    async fn from_peer(
        tls: &rustls::ClientConfig,
        resp: &reqwest::Response,
    ) -> Result<reqwest::Response, String> {
        let url = resp
            .headers()
            .get(LOCATION)
            .and_then(|v| v.to_str().ok())
            .ok_or("a redirect without Location")?;
        let addr: std::net::SocketAddr = resp
            .headers()
            .get(gantry_api::PEER_ADDR_HEADER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok())
            .ok_or("a redirect without the peer's address")?;
        let host = reqwest::Url::parse(url)
            .ok()
            .and_then(|u| u.host_str().map(str::to_owned))
            .ok_or("a redirect to a bad URL")?;
        let c = reqwest::Client::builder()
            .tls_backend_preconfigured(tls.clone())
            .resolve(&host, addr)
            .http1_only()
            .no_proxy()
            .connect_timeout(std::time::Duration::from_secs(3))
            .read_timeout(std::time::Duration::from_secs(10))
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| e.to_string())?;
        let r = c.get(url).send().await.map_err(|e| e.to_string())?;
        if r.status() != StatusCode::OK {
            return Err(format!("the peer answered {}", r.status()));
        }
        Ok(r)
    }
}

impl gantry_image::Tunnel for ClusterRegistry {
    fn serves(&self, registry: &str) -> bool {
        self.client.managers().iter().any(|m| m == registry) || self.client.current() == registry
    }

    fn send(
        &self,
        method: reqwest::Method,
        path: String,
        headers: reqwest::header::HeaderMap,
        body: Vec<u8>,
    ) -> BoxFuture<'_, Result<reqwest::Response, String>> {
        Box::pin(async move {
            self.client
                .registry(method, &path, headers, body)
                .await
                .map_err(|e| e.to_string())
        })
    }

    fn blob(&self, path: String, direct: bool) -> BoxFuture<'_, Result<reqwest::Response, String>> {
        Box::pin(async move {
            let mut h = HeaderMap::new();
            if let Some((port, _)) = &self.peers {
                h.insert(gantry_api::PEER_PORT_HEADER, HeaderValue::from(*port));
            }
            if direct {
                h.insert(gantry_api::DIRECT_HEADER, HeaderValue::from_static("1"));
            }
            let get = |h: HeaderMap| {
                self.client
                    .registry(reqwest::Method::GET, &path, h, Vec::new())
            };
            let resp = get(h.clone()).await.map_err(|e| e.to_string())?;
            let Some((_, tls)) = self
                .peers
                .as_ref()
                .filter(|_| resp.status() == StatusCode::TEMPORARY_REDIRECT)
            else {
                return Ok(resp);
            };
            match Self::from_peer(tls, &resp).await {
                Ok(r) => {
                    tracing::info!(%path, peer = ?resp.headers().get(gantry_api::PEER_ADDR_HEADER), "a blob from a peer");
                    Ok(r)
                }
                Err(why) => {
                    tracing::info!(%path, "a peer failed a blob ({why}): from the managers");
                    h.insert(gantry_api::DIRECT_HEADER, HeaderValue::from_static("1"));
                    get(h).await.map_err(|e| e.to_string())
                }
            }
        })
    }
}
