//! The cluster's registry as a node and the CLI reach it: through the
//! manager connection they already hold (the cluster's mutual TLS with
//! their certificate), failing over between the managers like every
//! other request. An image whose registry is a manager's address
//! (`10.0.0.1:4243/shop/web@sha256:...`) is pulled this way.

use futures::future::BoxFuture;
use gantry_api::Client;

/// A [`gantry_image::Tunnel`] over a manager connection.
#[derive(Clone)]
pub struct ClusterRegistry {
    client: Client,
}

impl std::fmt::Debug for ClusterRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterRegistry")
            .field("managers", &self.client.managers())
            .finish()
    }
}

impl ClusterRegistry {
    /// Over `client`.
    pub fn new(client: Client) -> Self {
        Self { client }
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
}
