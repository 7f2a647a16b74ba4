//! The node's edge proxy (`gantry-proxy`) fed from the assignment stream,
//! and the docker-flow-proxy API beside it, passed on to the manager so
//! that its routes live in the cluster state.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};

use gantry_api::{Assignments, Cert, CertAdd, CertView, Client, DfpRequest};
use gantry_proxy::{CertPem, Proxy, ProxyConfig, Route};
use gantry_route::dfp;
use http_body_util::BodyExt;
use hyper::{Method, Request, Response, StatusCode};
use tokio::net::TcpListener;

use crate::http::{reply, Body};
use crate::AgentError;

/// Where the proxy listens; `None` turns a listener off.
#[derive(Debug, Clone, Default)]
pub struct EdgeConfig {
    /// Plain HTTP (default `0.0.0.0:80`).
    pub http: Option<SocketAddr>,
    /// HTTPS (default `0.0.0.0:443`).
    pub https: Option<SocketAddr>,
    /// The docker-flow-proxy API (default `127.0.0.1:8080`).
    pub dfp: Option<SocketAddr>,
    /// A bearer token the DFP API requires, when set.
    pub dfp_token: Option<String>,
    /// Peers whose connections start with a PROXY protocol header.
    pub trusted_proxies: Vec<IpAddr>,
}

/// The running proxy.
pub(crate) struct Edge {
    proxy: Arc<Proxy>,
    client: Client,
    /// Where it listens, as bound at start: HTTP, HTTPS, the DFP API.
    addrs: [Option<SocketAddr>; 3],
    /// The listening tasks, while this node is an edge node.
    serving: Mutex<Option<Vec<tokio::task::JoinHandle<()>>>>,
    /// What the last assignment set held, so only changes are applied.
    last: Mutex<Last>,
    /// The bearer token the DFP API requires, if any.
    dfp_token: Option<Arc<str>>,
}

#[derive(Default)]
struct Last {
    routes: Vec<Route>,
    certs: Vec<Cert>,
    http01: BTreeMap<String, String>,
    alpn01: Vec<Cert>,
}

/// The listeners' flags, in `addrs`' order.
const FLAGS: [&str; 3] = ["http", "https", "dfp"];

/// Binds the listeners that have an address; fails on the first that
/// cannot be had, naming its flag.
fn bind(
    addrs: [Option<SocketAddr>; 3],
) -> Result<[Option<TcpListener>; 3], (&'static str, SocketAddr, std::io::Error)> {
    let mut out: [Option<TcpListener>; 3] = Default::default();
    for (i, a) in addrs.iter().enumerate() {
        if let Some(a) = *a {
            let l = std::net::TcpListener::bind(a)
                .and_then(|l| {
                    l.set_nonblocking(true)?;
                    TcpListener::from_std(l)
                })
                .map_err(|e| (FLAGS[i], a, e))?;
            out[i] = Some(l);
        }
    }
    Ok(out)
}

impl Edge {
    /// Binds the listeners and starts serving (with no routes yet); a
    /// port that cannot be had fails the start.
    pub(crate) async fn start(cfg: &EdgeConfig, client: Client) -> Result<Arc<Self>, AgentError> {
        let listeners = bind([cfg.http, cfg.https, cfg.dfp]).map_err(|(flag, a, e)| {
            AgentError::Io(
                format!("edge proxy: listen on {a} (change it with --{flag} ADDR, or run with --no-proxy)"),
                e,
            )
        })?;
        let addrs = listeners
            .each_ref()
            .map(|l| l.as_ref().and_then(|l| l.local_addr().ok()));
        let proxy = Proxy::new(ProxyConfig {
            trusted_proxies: cfg.trusted_proxies.clone(),
            https_port: addrs[1].map_or(443, |a| a.port()),
            ..ProxyConfig::default()
        });
        tokio::spawn(proxy.clone().check_health());
        let edge = Arc::new(Self {
            proxy,
            client,
            addrs,
            serving: Mutex::new(None),
            last: Default::default(),
            dfp_token: cfg.dfp_token.as_deref().map(Arc::from),
        });
        *edge.serving.lock().expect("edge lock") = Some(edge.serve(listeners));
        Ok(edge)
    }

    fn serve(
        &self,
        [http, https, dfp]: [Option<TcpListener>; 3],
    ) -> Vec<tokio::task::JoinHandle<()>> {
        let mut tasks = Vec::new();
        if let Some(l) = http {
            tracing::info!(addr = ?l.local_addr().ok(), "edge proxy: http");
            tasks.push(tokio::spawn(gantry_proxy::serve_http(
                self.proxy.clone(),
                l,
            )));
        }
        if let Some(l) = https {
            tracing::info!(addr = ?l.local_addr().ok(), "edge proxy: https");
            tasks.push(tokio::spawn(gantry_proxy::serve_https(
                self.proxy.clone(),
                l,
            )));
        }
        if let Some(l) = dfp {
            tracing::info!(addr = ?l.local_addr().ok(), "docker-flow-proxy API");
            let client = self.client.clone();
            let token = self.dfp_token.clone();
            tasks.push(tokio::spawn(crate::http::serve(l, move |req| {
                let client = client.clone();
                let token = token.clone();
                async move {
                    if !bearer_ok(&req, token.as_deref()) {
                        return json(
                            StatusCode::UNAUTHORIZED,
                            &dfp::Reply::nok("", "this DFP API needs Authorization: Bearer TOKEN (gantry agent --dfp-token)"),
                        );
                    }
                    dfp_request(client, req).await
                }
            })));
        }
        tasks
    }

    /// The proxy's ports while it listens (none while not an edge node):
    /// open to containers too.
    pub(crate) fn ports(&self) -> Vec<u16> {
        if self.serving.lock().expect("edge lock").is_none() {
            return Vec::new();
        }
        self.addrs[..2].iter().flatten().map(|a| a.port()).collect()
    }

    /// Starts or stops listening: when some nodes carry the label
    /// `gantry.edge=true`, only those are edge nodes. Open connections
    /// are left to finish.
    fn set_serving(&self, edge: bool) {
        let mut serving = self.serving.lock().expect("edge lock");
        match (edge, serving.is_some()) {
            (false, true) => {
                for t in serving.take().unwrap_or_default() {
                    t.abort();
                }
                tracing::info!("not an edge node: the proxy stopped listening");
            }
            (true, false) => match bind(self.addrs) {
                Ok(listeners) => *serving = Some(self.serve(listeners)),
                Err((flag, a, e)) => {
                    tracing::error!(addr = %a, "edge proxy: listen for {flag}: {e}")
                }
            },
            _ => {}
        }
    }

    /// The proxy's metrics (Prometheus text, no `# EOF`).
    pub(crate) fn encode_metrics(&self, out: &mut String) {
        self.proxy.encode_metrics(out);
    }

    /// Takes the routes, certificates and challenges of an assignment
    /// set, each only when it changed.
    pub(crate) fn apply(&self, set: &Assignments) {
        self.set_serving(set.edge);
        let mut last = self.last.lock().expect("edge lock");
        if last.routes != set.routes {
            self.proxy.set_routes(&set.routes);
            tracing::info!(routes = set.routes.len(), "edge proxy: routes swapped");
            last.routes = set.routes.clone();
        }
        if last.certs != set.certs {
            let certs: Vec<CertPem> = set.certs.iter().map(pem).collect();
            for e in self.proxy.set_certs(&certs) {
                tracing::warn!("edge proxy: {e}");
            }
            last.certs = set.certs.clone();
        }
        if last.http01 != set.http01 || last.alpn01 != set.alpn01 {
            let alpn: Vec<CertPem> = set.alpn01.iter().map(pem).collect();
            self.proxy
                .set_challenges(set.http01.clone().into_iter().collect(), &alpn);
            last.http01 = set.http01.clone();
            last.alpn01 = set.alpn01.clone();
        }
    }
}

fn pem(c: &Cert) -> CertPem {
    CertPem {
        names: c.names.clone(),
        cert_pem: c.cert_pem.clone(),
        key_pem: c.key_pem.clone(),
    }
}

fn json(status: StatusCode, v: &impl serde::Serialize) -> Response<Body> {
    reply(
        status,
        "application/json",
        serde_json::to_vec(v).unwrap_or_default(),
    )
}

/// Whether a request carries the bearer token (in constant time), or none
/// is required.
fn bearer_ok<B>(req: &Request<B>, token: Option<&str>) -> bool {
    let Some(token) = token else { return true };
    let Some(given) = req
        .headers()
        .get(hyper::header::AUTHORIZATION)
        .and_then(|v| v.as_bytes().strip_prefix(b"Bearer "))
    else {
        return false;
    };
    given.len() == token.len()
        && given
            .iter()
            .zip(token.as_bytes())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
}

/// One request to the docker-flow-proxy API.
async fn dfp_request(client: Client, req: Request<hyper::body::Incoming>) -> Response<Body> {
    let query: BTreeMap<String, String> = req
        .uri()
        .query()
        .map(|q| {
            url::form_urlencoded::parse(q.as_bytes())
                .map(|(k, v)| (k.into_owned(), v.into_owned()))
                .collect()
        })
        .unwrap_or_default();
    let path = req.uri().path().trim_end_matches('/').to_owned();
    let Some(verb) = path.strip_prefix("/v1/docker-flow-proxy/") else {
        return reply(StatusCode::NOT_FOUND, "text/plain", "not found\n");
    };
    let manager_err = |e: gantry_api::ApiError| {
        let status = match &e {
            gantry_api::ApiError::Status { status, .. } => {
                StatusCode::from_u16(*status).unwrap_or(StatusCode::BAD_GATEWAY)
            }
            _ => StatusCode::BAD_GATEWAY,
        };
        let name = query.get("serviceName").cloned().unwrap_or_default();
        json(status, &dfp::Reply::nok(&name, &e.to_string()))
    };
    match verb {
        "ping" => json(StatusCode::OK, &serde_json::json!({"Status": "OK"})),
        "reconfigure" | "remove" => {
            // DFP's validation and status codes answer here; the manager
            // checks again and stores.
            let checked = if verb == "reconfigure" {
                dfp::reconfigure(&query).map(|_| ())
            } else {
                dfp::remove(&query).map(|_| ())
            };
            if let Err(e) = checked {
                let name = query.get("serviceName").cloned().unwrap_or_default();
                return json(
                    StatusCode::from_u16(e.status).unwrap_or(StatusCode::BAD_REQUEST),
                    &dfp::Reply::nok(&name, &e.message),
                );
            }
            let req = DfpRequest {
                query: query.clone(),
            };
            match client
                .post::<_, serde_json::Value>(&format!("/v1/dfp/{verb}"), &req)
                .await
            {
                Ok(v) => json(StatusCode::OK, &v),
                Err(e) => manager_err(e),
            }
        }
        "config" => match client.get::<String>("/v1/dfp/config").await {
            Ok(text) => reply(StatusCode::OK, "text/plain; charset=utf-8", text),
            Err(e) => manager_err(e),
        },
        "certs" => match client.get::<Vec<CertView>>("/v1/certs").await {
            Ok(certs) => {
                let list: Vec<serde_json::Value> = certs
                    .iter()
                    .map(|c| {
                        serde_json::json!({
                            "ProxyServiceName": c.name,
                            "Names": c.names,
                            "Source": c.source,
                            "NotAfter": c.not_after,
                            "CertContent": c.cert_pem,
                        })
                    })
                    .collect();
                json(
                    StatusCode::OK,
                    &serde_json::json!({"Status": "OK", "Certs": list}),
                )
            }
            Err(e) => manager_err(e),
        },
        "cert" if req.method() == Method::PUT || req.method() == Method::POST => {
            let body = match http_body_util::Limited::new(req.into_body(), 1 << 20)
                .collect()
                .await
            {
                Ok(b) => b.to_bytes(),
                Err(e) => {
                    return json(
                        StatusCode::BAD_REQUEST,
                        &dfp::Reply::nok("", &format!("the body: {e}")),
                    );
                }
            };
            let pem = String::from_utf8_lossy(&body);
            let (cert_pem, key_pem) = split_pem(&pem);
            if cert_pem.is_empty() || key_pem.is_empty() {
                return json(
                    StatusCode::BAD_REQUEST,
                    &dfp::Reply::nok(
                        "",
                        "the body must hold the certificate chain and its private key, PEM",
                    ),
                );
            }
            match client
                .post::<_, CertView>("/v1/dfp/cert", &CertAdd { cert_pem, key_pem })
                .await
            {
                Ok(v) => json(
                    StatusCode::OK,
                    &serde_json::json!({"Status": "OK", "Message": "", "Names": v.names}),
                ),
                Err(e) => manager_err(e),
            }
        }
        "cert" => reply(StatusCode::METHOD_NOT_ALLOWED, "text/plain", "PUT a PEM\n"),
        _ => reply(StatusCode::NOT_FOUND, "text/plain", "not found\n"),
    }
}

/// Splits a PEM bundle into its certificates and its private key.
fn split_pem(pem: &str) -> (String, String) {
    let mut certs = String::new();
    let mut key = String::new();
    let mut cur: Option<&mut String> = None;
    for line in pem.lines() {
        let l = line.trim();
        if l.starts_with("-----BEGIN ") {
            cur = if l.contains("PRIVATE KEY") {
                Some(&mut key)
            } else if l.contains("CERTIFICATE") {
                Some(&mut certs)
            } else {
                None
            };
        }
        if let Some(buf) = cur.as_deref_mut() {
            buf.push_str(l);
            buf.push('\n');
        }
        if l.starts_with("-----END ") {
            cur = None;
        }
    }
    (certs, key)
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_pem_bundle_splits() {
        let pem = "junk\n-----BEGIN CERTIFICATE-----\nAAA\n-----END CERTIFICATE-----\n-----BEGIN PRIVATE KEY-----\nBBB\n-----END PRIVATE KEY-----\n-----BEGIN CERTIFICATE-----\nCCC\n-----END CERTIFICATE-----\n";
        let (c, k) = super::split_pem(pem);
        assert_eq!(c.matches("BEGIN CERTIFICATE").count(), 2);
        assert!(c.contains("AAA") && c.contains("CCC") && !c.contains("BBB"));
        assert_eq!(
            k,
            "-----BEGIN PRIVATE KEY-----\nBBB\n-----END PRIVATE KEY-----\n"
        );
    }
}
