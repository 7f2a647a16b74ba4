//! The node's edge proxy (`gantry-proxy`) fed from the assignment stream,
//! and the docker-flow-proxy API beside it, passed on to the manager so
//! that its routes live in the cluster state.

use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use bytes::Bytes;
use gantry_api::{Assignments, CertAdd, CertView, Client, DfpRequest};
use gantry_proxy::{CertPem, Proxy, ProxyConfig, Route};
use gantry_route::dfp;
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;

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
    /// Peers whose connections start with a PROXY protocol header.
    pub trusted_proxies: Vec<IpAddr>,
}

/// The running proxy.
pub(crate) struct Edge {
    proxy: Arc<Proxy>,
    cfg: EdgeConfig,
    client: Client,
    /// The listening tasks, while this node is an edge node.
    serving: std::sync::Mutex<Option<Vec<tokio::task::JoinHandle<()>>>>,
    /// The ports it listens on, open to containers too.
    ports: Vec<u16>,
    last: std::sync::Mutex<(Vec<Route>, Vec<CertPem>)>,
}

async fn bind(what: &str, addr: SocketAddr) -> Result<TcpListener, AgentError> {
    TcpListener::bind(addr).await.map_err(|e| {
        AgentError::Io(
            format!("edge proxy: listen for {what} on {addr} (change it with --{what} ADDR, or run with --no-proxy)"),
            e,
        )
    })
}

impl Edge {
    /// Binds the listeners and starts serving (with no routes yet); a
    /// port that cannot be had fails the start.
    pub(crate) async fn start(cfg: &EdgeConfig, client: Client) -> Result<Arc<Self>, AgentError> {
        let http = match cfg.http {
            Some(a) => Some(bind("http", a).await?),
            None => None,
        };
        let https = match cfg.https {
            Some(a) => Some(bind("https", a).await?),
            None => None,
        };
        let dfp = match cfg.dfp {
            Some(a) => Some(bind("dfp", a).await?),
            None => None,
        };
        let port = |l: &Option<TcpListener>| {
            l.as_ref()
                .and_then(|l| l.local_addr().ok())
                .map(|a| a.port())
        };
        let https_port = port(&https).unwrap_or(443);
        let ports: Vec<u16> = [port(&http), port(&https)].into_iter().flatten().collect();
        let proxy = Proxy::new(ProxyConfig {
            trusted_proxies: cfg.trusted_proxies.clone(),
            https_port,
            ..ProxyConfig::default()
        });
        tokio::spawn(proxy.clone().check_health());
        let edge = Arc::new(Self {
            proxy,
            cfg: cfg.clone(),
            client,
            serving: std::sync::Mutex::new(None),
            ports,
            last: Default::default(),
        });
        let tasks = edge.serve(http, https, dfp);
        *edge.serving.lock().expect("edge lock") = Some(tasks);
        Ok(edge)
    }

    fn serve(
        &self,
        http: Option<TcpListener>,
        https: Option<TcpListener>,
        dfp: Option<TcpListener>,
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
            tasks.push(tokio::spawn(serve_dfp(l, self.client.clone())));
        }
        tasks
    }

    /// The ports it listens on now (none while not an edge node).
    pub(crate) fn ports(&self) -> Vec<u16> {
        if self.serving.lock().expect("edge lock").is_some() {
            self.ports.clone()
        } else {
            Vec::new()
        }
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
            (true, false) => {
                let bind = |a: Option<SocketAddr>| -> Option<TcpListener> {
                    let a = a?;
                    std::net::TcpListener::bind(a)
                        .and_then(|l| {
                            l.set_nonblocking(true)?;
                            TcpListener::from_std(l)
                        })
                        .map_err(|e| tracing::error!(addr = %a, "edge proxy: listen: {e}"))
                        .ok()
                };
                let (h, s, d) = (
                    bind(self.cfg.http),
                    bind(self.cfg.https),
                    bind(self.cfg.dfp),
                );
                *serving = Some(self.serve(h, s, d));
            }
            _ => {}
        }
    }

    /// The proxy's metrics (Prometheus text, no `# EOF`).
    pub(crate) fn encode_metrics(&self, out: &mut String) {
        self.proxy.encode_metrics(out);
    }

    /// Takes the routes, certificates and challenges of an assignment set.
    pub(crate) fn apply(&self, set: &Assignments) {
        self.set_serving(set.edge);
        let routes: Vec<Route> = set
            .routes
            .iter()
            .map(|r| Route {
                spec: r.spec.clone(),
                backends: r.backends.clone(),
            })
            .collect();
        let certs: Vec<CertPem> = set.certs.iter().map(pem).collect();
        let mut last = self.last.lock().expect("edge lock");
        if last.0 != routes {
            self.proxy.set_routes(&routes);
            tracing::info!(routes = routes.len(), "edge proxy: routes swapped");
        }
        if last.1 != certs {
            for e in self.proxy.set_certs(&certs) {
                tracing::warn!("edge proxy: {e}");
            }
        }
        let alpn: Vec<CertPem> = set.alpn01.iter().map(pem).collect();
        let http01: HashMap<String, String> = set.http01.clone().into_iter().collect();
        self.proxy.set_challenges(http01, &alpn);
        *last = (routes, certs);
    }
}

fn pem(c: &gantry_api::Cert) -> CertPem {
    CertPem {
        names: c.names.clone(),
        cert_pem: c.cert_pem.clone(),
        key_pem: c.key_pem.clone(),
    }
}

type Body = http_body_util::combinators::BoxBody<Bytes, Infallible>;

fn reply(status: StatusCode, ctype: &str, body: impl Into<Bytes>) -> Response<Body> {
    let mut r = Response::new(Full::new(body.into()).boxed());
    *r.status_mut() = status;
    if let Ok(v) = ctype.parse() {
        r.headers_mut().insert(hyper::header::CONTENT_TYPE, v);
    }
    r
}

fn json(status: StatusCode, v: &impl serde::Serialize) -> Response<Body> {
    reply(
        status,
        "application/json",
        serde_json::to_vec(v).unwrap_or_default(),
    )
}

async fn serve_dfp(l: TcpListener, client: Client) {
    loop {
        let Ok((s, _)) = l.accept().await else {
            continue;
        };
        let client = client.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req| {
                let client = client.clone();
                async move { Ok::<_, Infallible>(dfp_request(client, req).await) }
            });
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(s), svc)
                .await;
        });
    }
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
                .post::<_, CertView>("/v1/certs", &CertAdd { cert_pem, key_pem })
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
