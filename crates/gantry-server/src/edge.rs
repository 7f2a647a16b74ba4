//! The edge proxy's side of the manager: routes (from service labels and
//! from the docker-flow-proxy API) resolved to healthy task addresses for
//! each node, certificates (the edge CA's for internal names, operators'
//! own), and the DFP and certificate routes of the API.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};

use gantry_api::{Cert, CertAdd, CertView, DfpRequest, IngressPort};
use gantry_route::dfp::{self, TcpRoute};
use gantry_route::{Route, RouteError, RouteSpec};
use gantry_spec::Service;
use gantry_store::{
    CertRecord, CertSource, Command, RouteRecord, ServiceRecord, State as Cluster, TaskState,
};

use gantry_pki::seal::DataKey;

use crate::api::{Fail, JsonBody, Peer};
use crate::{now_ms, Shared};

/// Internal certificates last this long, and are renewed when a third of
/// it is left (as ACME ones are 30 days before expiry).
const INTERNAL_DAYS: i64 = 90;
const RENEW_BEFORE_MS: u64 = 30 * 86_400_000;

/// A service's routes from its labels (container labels, overridden by
/// service labels).
pub(crate) fn label_routes(
    name: &str,
    svc: &Service,
) -> Result<(Vec<RouteSpec>, Vec<TcpRoute>), RouteError> {
    let mut labels = svc.labels.clone();
    labels.extend(svc.service_labels.clone());
    gantry_route::labels::routes(name, &labels)
}

/// The overlay addresses of every service's running tasks, in one pass.
fn running(s: &Cluster) -> BTreeMap<&str, Vec<Ipv4Addr>> {
    let mut out: BTreeMap<&str, Vec<Ipv4Addr>> = BTreeMap::new();
    for t in s.tasks.values() {
        if t.desired == TaskState::Running && t.state == TaskState::Running && s.reachable(t) {
            if let Some(a) = t.addr {
                out.entry(t.service.as_str()).or_default().push(a);
            }
        }
    }
    for v in out.values_mut() {
        v.sort();
    }
    out
}

/// The services a DFP `serviceName` means: the service of that full name,
/// else every service of that short name.
pub(crate) fn resolve<'a>(s: &'a Cluster, name: &str) -> Vec<&'a ServiceRecord> {
    if let Some(rec) = s.services.get(name) {
        return vec![rec];
    }
    s.services
        .values()
        .filter(|r| r.name.strip_prefix(&format!("{}_", r.stack)) == Some(name))
        .collect()
}

/// The node label that makes edge nodes.
pub(crate) const EDGE_LABEL: &str = "gantry.edge";

fn marked(n: &gantry_store::NodeRecord) -> bool {
    n.labels.get(EDGE_LABEL).map(String::as_str) == Some("true")
}

/// Whether some node is marked as an edge node (then only those are).
pub(crate) fn any_marked(s: &Cluster) -> bool {
    s.nodes.values().any(marked)
}

/// Whether a node runs the edge proxy: every node, unless some nodes
/// carry `gantry.edge=true` (`any_marked`, computed once for many nodes);
/// then only those.
pub(crate) fn is_edge_given(s: &Cluster, node: &str, any_marked: bool) -> bool {
    !any_marked || s.nodes.get(node).is_some_and(marked)
}

/// The HTTP routes a node's proxy serves, and the TCP routes it forwards.
pub(crate) fn routes_for(s: &Cluster, node: &str) -> (Vec<Route>, Vec<IngressPort>) {
    let mut http = Vec::new();
    let mut tcp = Vec::new();
    let running = running(s);
    let running = |name: &str| running.get(name).cloned().unwrap_or_default();
    for rec in s.services.values() {
        let Ok((routes, tcps)) = label_routes(&rec.name, &rec.spec) else {
            continue;
        };
        let backends = running(&rec.name);
        http.extend(routes.into_iter().map(|spec| Route {
            spec,
            backends: backends.clone(),
        }));
        tcp.extend(tcps.into_iter().map(|t| IngressPort {
            published: t.src_port,
            target: t.port,
            service: rec.name.clone(),
            udp: false,
            host_ip: None,
        }));
    }
    for r in s.routes.values() {
        if r.node.as_deref().is_some_and(|n| n != node) {
            continue;
        }
        let recs = resolve(s, &r.service);
        let mut backends: Vec<Ipv4Addr> = recs.iter().flat_map(|rec| running(&rec.name)).collect();
        backends.sort();
        backends.dedup();
        http.extend(r.routes.iter().map(|spec| Route {
            spec: spec.clone(),
            backends: backends.clone(),
        }));
        if let Some(rec) = recs.first() {
            tcp.extend(r.tcp.iter().map(|t| IngressPort {
                published: t.src_port,
                target: t.port,
                service: rec.name.clone(),
                udp: false,
                host_ip: None,
            }));
        }
    }
    (http, tcp)
}

/// The certificates every edge proxy serves, their keys opened with the
/// data key; none when the manager is locked (the second value: withheld).
pub(crate) fn certs(s: &Cluster, key: Option<&DataKey>) -> (Vec<Cert>, bool) {
    let Some(key) = key else {
        return (Vec::new(), !s.certs.is_empty());
    };
    let certs = s
        .certs
        .values()
        .filter_map(|c| match open_key(key, c) {
            Ok(key_pem) => Some(Cert {
                names: c.names.clone(),
                cert_pem: c.cert_pem.clone(),
                key_pem,
            }),
            Err(e) => {
                tracing::error!(cert = %c.name, "{e}");
                None
            }
        })
        .collect();
    (certs, false)
}

/// A certificate's private key: sealed (or, in a store from before keys
/// were sealed, not yet).
fn open_key(key: &DataKey, c: &CertRecord) -> Result<String, String> {
    match &c.key {
        None if !c.key_pem.is_empty() => Ok(c.key_pem.clone()),
        None => Err("the certificate has no key".into()),
        Some(sealed) => key
            .open(sealed, &CertRecord::aad(&c.name, c.not_after_ms))
            .ok()
            .and_then(|k| String::from_utf8(k.to_vec()).ok())
            .ok_or_else(|| "the certificate's key does not open with the data key".into()),
    }
}

/// `rec` with its key sealed (and no longer in clear).
pub(crate) fn seal_key(key: &DataKey, mut rec: CertRecord) -> CertRecord {
    if !rec.key_pem.is_empty() {
        let pem = zeroize::Zeroizing::new(std::mem::take(&mut rec.key_pem));
        rec.key = Some(key.seal(
            pem.as_bytes(),
            &CertRecord::aad(&rec.name, rec.not_after_ms),
        ));
    }
    rec
}

/// The commands that seal the keys an older release stored in clear.
pub(crate) fn seal_commands(s: &Cluster, key: &DataKey) -> Vec<Command> {
    s.certs
        .values()
        .filter(|c| !c.key_pem.is_empty())
        .map(|c| Command::PutCert(seal_key(key, c.clone())))
        .collect()
}

/// Seals the keys a store from before keys were sealed holds in clear,
/// then rewrites the store's file so that no page of it holds them.
/// Before Raft runs (a store that held keys in clear was a single
/// manager's); a manager locked at its start seals them through the log
/// when it is unlocked (`unlock.rs`).
pub(crate) fn seal_stored_keys(
    store: &mut gantry_store::Store,
    key: &DataKey,
) -> Result<(), gantry_store::StoreError> {
    let cmds = seal_commands(store.state(), key);
    if cmds.is_empty() {
        return Ok(());
    }
    let n = cmds.len();
    store.migrate_in_place(|s| {
        for c in &cmds {
            s.apply(c)
                .expect("a certificate replaced by itself, sealed");
        }
    })?;
    store.rewrite()?;
    tracing::info!(
        certificates = n,
        "certificate keys stored in clear are now sealed"
    );
    Ok(())
}

/// Names no public CA validates: the edge CA signs them at once.
pub(crate) fn is_internal(name: &str) -> bool {
    name.parse::<std::net::IpAddr>().is_ok()
        || name == "localhost"
        || [".local", ".test", ".internal", ".localhost"]
            .iter()
            .any(|s| name.ends_with(s))
}

/// Every name some route wants a certificate for, with the ACME
/// challenge its route asks for.
pub(crate) fn wanted(s: &Cluster) -> BTreeMap<String, gantry_route::AcmeChallenge> {
    let mut out = BTreeMap::new();
    let mut add = |r: &RouteSpec| {
        for n in r.tls_names() {
            out.entry(n).or_insert(r.acme);
        }
    };
    for rec in s.services.values() {
        if let Ok((routes, _)) = label_routes(&rec.name, &rec.spec) {
            routes.iter().for_each(&mut add);
        }
    }
    s.routes.values().flat_map(|r| &r.routes).for_each(add);
    out
}

/// Whether a certificate that is not about to expire serves `name`.
pub(crate) fn covered(s: &Cluster, name: &str, now: u64) -> bool {
    s.certs.values().any(|c| {
        c.not_after_ms > now + RENEW_BEFORE_MS
            && c.names.iter().any(|n| {
                n == name
                    || n.strip_prefix('*').is_some_and(|suffix| {
                        name.strip_suffix(suffix)
                            .is_some_and(|l| !l.is_empty() && !l.contains('.'))
                    })
            })
    })
}

/// Issues edge-CA certificates for internal names that have none (or
/// whose certificate expires within 30 days), and drops internal ones no
/// route wants any more.
pub(crate) fn internal_certs(sh: &Shared) -> Result<(), gantry_store::StoreError> {
    // Only after a change of state, or once a minute for renewals: this
    // reads every service's routes.
    {
        let index = *sh.changed.borrow();
        let mut last = sh.certs_checked.lock().expect("certs lock");
        if last.0 == index && last.1.elapsed() < std::time::Duration::from_secs(60) {
            return Ok(());
        }
        *last = (index, std::time::Instant::now());
    }
    let now = now_ms();
    let (missing, stale) = sh.read(|s| {
        let wanted: Vec<String> = wanted(s).into_keys().collect();
        let missing: Vec<String> = wanted
            .iter()
            .filter(|n| is_internal(n) && !covered(s, n, now))
            .cloned()
            .collect();
        let stale: Vec<String> = s
            .certs
            .values()
            .filter(|c| c.source == CertSource::Internal)
            .filter(|c| !c.names.iter().any(|n| wanted.contains(n)))
            .map(|c| c.name.clone())
            .collect();
        (missing, stale)
    });
    if missing.is_empty() && stale.is_empty() {
        return Ok(());
    }
    let mut cmds: Vec<Command> = stale
        .into_iter()
        .map(|name| Command::RemoveCert { name })
        .collect();
    let guard = sh.data_key.read().expect("data key lock");
    let Some(key) = guard.as_ref() else {
        tracing::warn!("internal certificates wait: the manager is locked (gantry unlock)");
        return sh.apply(cmds);
    };
    for name in missing {
        match sh
            .edge_ca()
            .issue_web(std::slice::from_ref(&name), INTERNAL_DAYS)
        {
            Ok((issued, not_after_ms)) => {
                tracing::info!(%name, "certificate issued by the edge CA");
                let rec = CertRecord {
                    name: name.clone(),
                    names: vec![name],
                    cert_pem: issued.cert_pem,
                    key_pem: issued.key_pem,
                    key: None,
                    not_after_ms,
                    source: CertSource::Internal,
                };
                cmds.push(Command::PutCert(seal_key(key, rec)));
            }
            Err(e) => tracing::warn!(%name, "edge CA: {e}"),
        }
    }
    sh.apply(cmds)
}

/// A DFP reply with its status.
fn dfp_reply(status: StatusCode, reply: dfp::Reply) -> Response {
    (status, Json(reply)).into_response()
}

/// `POST /v1/dfp/reconfigure`: from an agent's DFP API (or the CLI). The
/// node of the caller is the one a non-distributed change applies to.
pub(crate) async fn dfp_reconfigure(
    State(sh): State<Arc<Shared>>,
    Extension(peer): Extension<Peer>,
    JsonBody(req): JsonBody<DfpRequest>,
) -> Result<Response, Fail> {
    let node = peer.node_or_admin()?;
    let r = match dfp::reconfigure(&req.query) {
        Ok(r) => r,
        Err(e) => {
            let name = req.query.get("serviceName").cloned().unwrap_or_default();
            return Ok(dfp_reply(
                StatusCode::from_u16(e.status).unwrap_or(StatusCode::BAD_REQUEST),
                dfp::Reply::nok(&name, &e.message),
            ));
        }
    };
    if !sh.cfg.dfp_override_labels {
        if let Some(owner) = sh.read(|s| label_owner(s, &r.service, &r.routes)) {
            return Ok(dfp_reply(
                StatusCode::FORBIDDEN,
                dfp::Reply::nok(&r.service, &format!("{owner}: routes from DFP's API cannot take them (gantry server --dfp-override-labels allows it)")),
            ));
        }
    }
    let scope = if r.distribute { None } else { node };
    let rec = RouteRecord {
        service: r.service.clone(),
        node: scope,
        routes: r.routes.clone(),
        tcp: r.tcp.clone(),
    };
    sh.apply(vec![Command::PutRoutes(rec)])?;
    Ok(dfp_reply(StatusCode::OK, dfp::Reply::ok(&r)))
}

/// What the labels of a service other than `service` (a DFP service
/// name) route that one of `routes` would take: `None` when nothing.
fn label_owner(s: &Cluster, service: &str, routes: &[RouteSpec]) -> Option<String> {
    let own: Vec<&str> = resolve(s, service)
        .iter()
        .map(|r| r.name.as_str())
        .collect();
    labelled(s)
        .filter(|(name, _)| !own.contains(&name.as_str()))
        .find_map(|(name, theirs)| {
            let hit = theirs
                .iter()
                .find(|t| routes.iter().any(|r| r.takes_from(t)))?;
            Some(format!(
                "{}{} is routed by the labels of service {name}",
                hit.hosts.first().map_or("any host", String::as_str),
                hit.path
            ))
        })
}

/// Every service's label routes, by service name.
fn labelled(s: &Cluster) -> impl Iterator<Item = (String, Vec<RouteSpec>)> + '_ {
    s.services.values().filter_map(|rec| {
        let (routes, _) = label_routes(&rec.name, &rec.spec).ok()?;
        Some((rec.name.clone(), routes))
    })
}

/// `POST /v1/dfp/remove`.
pub(crate) async fn dfp_remove(
    State(sh): State<Arc<Shared>>,
    Extension(peer): Extension<Peer>,
    JsonBody(req): JsonBody<DfpRequest>,
) -> Result<Response, Fail> {
    let node = peer.node_or_admin()?;
    let (service, distribute) = match dfp::remove(&req.query) {
        Ok(x) => x,
        Err(e) => {
            return Ok(dfp_reply(
                StatusCode::from_u16(e.status).unwrap_or(StatusCode::BAD_REQUEST),
                dfp::Reply::nok("", &e.message),
            ));
        }
    };
    // A distributed remove takes the service off every proxy; a local one
    // off this node's (its own routes and the cluster-wide ones it sees).
    let keys: Vec<String> = sh.read(|s| {
        s.routes
            .values()
            .filter(|r| r.service == service)
            .filter(|r| distribute || r.node.is_none() || r.node == node)
            .map(|r| RouteRecord::key(&r.service, r.node.as_deref()))
            .collect()
    });
    sh.apply(
        keys.into_iter()
            .map(|key| Command::RemoveRoutes { key })
            .collect(),
    )?;
    Ok(dfp_reply(
        StatusCode::OK,
        dfp::Reply::removed(&service, distribute),
    ))
}

/// `GET /v1/dfp/config`: the routes a node's proxy serves, as text.
pub(crate) async fn dfp_config(
    State(sh): State<Arc<Shared>>,
    Extension(peer): Extension<Peer>,
) -> Result<Json<String>, Fail> {
    let node = peer.node_or_admin()?.unwrap_or_default();
    let (http, tcp) = sh.read(|s| routes_for(s, &node));
    let mut out = String::new();
    for r in http {
        let s = &r.spec;
        let hosts = if s.hosts.is_empty() {
            "*".to_owned()
        } else {
            s.hosts.join(",")
        };
        let backends: Vec<String> = r
            .backends
            .iter()
            .map(|b| format!("{b}:{}", s.port))
            .collect();
        out.push_str(&format!(
            "http {hosts}{} ({:?}) -> {} [{}] https={:?} balance={:?}{}\n",
            s.path,
            s.path_type,
            s.service,
            backends.join(" "),
            s.https,
            s.balance,
            if s.sticky { " sticky" } else { "" },
        ));
    }
    for t in tcp {
        out.push_str(&format!(
            "tcp :{} -> {}:{}\n",
            t.published, t.service, t.target
        ));
    }
    Ok(Json(out))
}

/// `GET /v1/certs`.
pub(crate) async fn cert_ls(
    State(sh): State<Arc<Shared>>,
    Extension(peer): Extension<Peer>,
) -> Result<Json<Vec<CertView>>, Fail> {
    peer.node_or_admin()?;
    Ok(Json(sh.read(|s| s.certs.values().map(view).collect())))
}

/// `POST /v1/certs`: an operator's certificate, checked, for the names
/// it carries. The admin's alone: a node's certificate gets 403.
pub(crate) async fn cert_add(
    State(sh): State<Arc<Shared>>,
    Extension(peer): Extension<Peer>,
    JsonBody(req): JsonBody<CertAdd>,
) -> Result<Json<CertView>, Fail> {
    peer.admin()?;
    put_cert(&sh, req)
}

/// `POST /v1/dfp/cert`: a certificate sent to a node's DFP API. It may
/// not be for a name services' labels route (unless
/// `--dfp-override-labels`): those are the operator's or ACME's.
pub(crate) async fn dfp_cert(
    State(sh): State<Arc<Shared>>,
    Extension(peer): Extension<Peer>,
    JsonBody(req): JsonBody<CertAdd>,
) -> Result<Json<CertView>, Fail> {
    peer.node_or_admin()?;
    if !sh.cfg.dfp_override_labels {
        let (names, _) = gantry_pki::cert_info(&req.cert_pem)
            .map_err(|e| Fail(StatusCode::BAD_REQUEST, format!("certificate: {e}")))?;
        let owner = sh.read(|s| {
            labelled(s).find_map(|(svc, routes)| {
                let name = names
                    .iter()
                    .find(|n| routes.iter().any(|r| r.names_host(n)))?;
                Some(format!("{name} is routed by the labels of service {svc}"))
            })
        });
        if let Some(owner) = owner {
            return Err(Fail(
                StatusCode::FORBIDDEN,
                format!("{owner}: its certificate is not DFP's to set (gantry cert add is)"),
            ));
        }
    }
    put_cert(&sh, req)
}

fn put_cert(sh: &Shared, req: CertAdd) -> Result<Json<CertView>, Fail> {
    let bad = |m: String| Fail(StatusCode::BAD_REQUEST, m);
    let (names, not_after_ms) =
        gantry_pki::cert_info(&req.cert_pem).map_err(|e| bad(format!("certificate: {e}")))?;
    gantry_pki::check_key_pair(&req.cert_pem, &req.key_pem)
        .map_err(|e| bad(format!("key: {e}")))?;
    let name = names
        .first()
        .cloned()
        .ok_or_else(|| bad("the certificate names no host".into()))?;
    if not_after_ms <= now_ms() {
        return Err(bad(format!("the certificate for {name} has expired")));
    }
    let rec = CertRecord {
        name,
        names,
        cert_pem: req.cert_pem,
        key_pem: req.key_pem,
        key: None,
        not_after_ms,
        source: CertSource::User,
    };
    let out = view(&rec);
    let guard = sh.data_key.read().expect("data key lock");
    let key = guard.as_ref().ok_or_else(crate::unlock::locked)?;
    sh.apply(vec![Command::PutCert(seal_key(key, rec))])?;
    Ok(Json(out))
}

/// A certificate as the API shows it (without its key).
fn view(c: &CertRecord) -> CertView {
    CertView {
        name: c.name.clone(),
        names: c.names.clone(),
        source: c.source.name().into(),
        not_after: chrono::DateTime::from_timestamp_millis(c.not_after_ms as i64)
            .map(|t| t.to_rfc3339())
            .unwrap_or_default(),
        cert_pem: c.cert_pem.clone(),
    }
}

/// `DELETE /v1/certs/{name}`.
pub(crate) async fn cert_rm(
    State(sh): State<Arc<Shared>>,
    Extension(peer): Extension<Peer>,
    Path(name): Path<String>,
) -> Result<Json<()>, Fail> {
    peer.admin()?;
    sh.apply(vec![Command::RemoveCert { name }])?;
    Ok(Json(()))
}

/// The edge CA certificate, for clients to trust internal names.
pub(crate) async fn edge_ca(State(sh): State<Arc<Shared>>) -> Json<String> {
    Json(sh.edge_ca().cert_pem().to_owned())
}

/// Checks the routes of the services of a deploy or update.
pub(crate) fn check_labels<'a>(
    specs: impl IntoIterator<Item = (&'a str, &'a Service)>,
) -> Result<(), String> {
    for (name, svc) in specs {
        label_routes(name, svc).map_err(|e| format!("service {name}: {e}"))?;
    }
    Ok(())
}
