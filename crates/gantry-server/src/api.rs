//! The cluster API: one TLS port, routes by the client certificate's role.

use std::collections::BTreeSet;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use serde::Deserialize;
use tokio::net::TcpListener;
use tokio::sync::mpsc;

use gantry_api::{Event, JoinRequest, JoinResponse, JoinTokenView, StatusReport};
use gantry_pki::{JoinToken, Role};
use gantry_store::{Command, Rejected, StoreError, TaskRecord, TaskState};

use crate::{files, services, stacks};

use crate::{new_id, now_ms, Shared};

/// Who is calling: the verified client certificate's name and role, or
/// nobody (a node joining).
#[derive(Clone)]
pub(crate) struct Peer(pub(crate) Option<(String, Role)>);

/// The client's address.
#[derive(Clone, Copy)]
pub(crate) struct Client(pub(crate) std::net::IpAddr);

/// How long a client has to send a request's head (and how long a
/// connection may sit idle between requests).
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// A client without a certificate may only fetch the CA and join: its
/// whole connection gets this long.
const ANONYMOUS_TIMEOUT: Duration = Duration::from_secs(30);

/// The largest log append or snapshot another manager may send (a
/// snapshot is the whole state).
const RAFT_BODY_LIMIT: usize = 1 << 30;

/// An API error: a status and a message, as `{"message": ...}`.
pub(crate) struct Fail(pub(crate) StatusCode, pub(crate) String);

impl IntoResponse for Fail {
    fn into_response(self) -> Response {
        (self.0, Json(serde_json::json!({ "message": self.1 }))).into_response()
    }
}

impl From<StoreError> for Fail {
    fn from(e: StoreError) -> Self {
        match &e {
            StoreError::Rejected(
                Rejected::NoSuchNode(_)
                | Rejected::NoSuchService(_)
                | Rejected::NoSuchTask(_)
                | Rejected::NoSuchCert(_)
                | Rejected::NoSuchNetwork(_)
                | Rejected::NoSuchFile(..)
                | Rejected::NoSuchImage(_)
                | Rejected::NoSuchRegistryUser(_),
            ) => Fail(StatusCode::NOT_FOUND, e.to_string()),
            StoreError::Rejected(_) => Fail(StatusCode::CONFLICT, e.to_string()),
            StoreError::Unavailable(_) => Fail(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
            _ => Fail(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
        }
    }
}

/// A JSON request body. A body that is not JSON, or not of the request's
/// shape, is a 400 with serde's words and the path of the bad field (as
/// every other refusal, `{"message": ...}`), where axum's own extractor
/// answers 422 in plain text.
pub(crate) struct JsonBody<T>(pub(crate) T);

impl<S: Send + Sync, T: serde::de::DeserializeOwned> axum::extract::FromRequest<S> for JsonBody<T> {
    type Rejection = Fail;

    async fn from_request(req: axum::extract::Request, state: &S) -> Result<Self, Fail> {
        match Json::<T>::from_request(req, state).await {
            Ok(Json(v)) => Ok(JsonBody(v)),
            Err(e) => {
                let status = match e.status() {
                    s @ (StatusCode::PAYLOAD_TOO_LARGE | StatusCode::UNSUPPORTED_MEDIA_TYPE) => s,
                    _ => StatusCode::BAD_REQUEST,
                };
                Err(Fail(status, format!("invalid request: {}", e.body_text())))
            }
        }
    }
}

pub(crate) fn bad(msg: impl Into<String>) -> Fail {
    Fail(StatusCode::BAD_REQUEST, msg.into())
}

pub(crate) fn not_found(msg: impl Into<String>) -> Fail {
    Fail(StatusCode::NOT_FOUND, msg.into())
}

type Sh = State<Arc<Shared>>;
type Res<T> = Result<Json<T>, Fail>;

impl Peer {
    /// A node (its id) or the admin (`None`).
    pub(crate) fn node_or_admin(&self) -> Result<Option<String>, Fail> {
        match &self.0 {
            Some((id, Role::Worker)) => Ok(Some(id.clone())),
            Some((_, Role::Admin)) => Ok(None),
            Some(_) => Err(Fail(
                StatusCode::FORBIDDEN,
                "this route needs a node or admin certificate".into(),
            )),
            None => Err(Fail(
                StatusCode::UNAUTHORIZED,
                "a client certificate of this cluster is required".into(),
            )),
        }
    }
    pub(crate) fn admin(&self) -> Result<(), Fail> {
        match &self.0 {
            Some((_, Role::Admin)) => Ok(()),
            Some(_) => Err(Fail(
                StatusCode::FORBIDDEN,
                "this route needs the admin credential".into(),
            )),
            None => Err(Fail(
                StatusCode::UNAUTHORIZED,
                "a client certificate of this cluster is required".into(),
            )),
        }
    }
    /// Another manager (Raft's calls, forwarded requests).
    pub(crate) fn manager(&self) -> Result<(), Fail> {
        match &self.0 {
            Some((_, Role::Manager)) => Ok(()),
            Some(_) => Err(Fail(
                StatusCode::FORBIDDEN,
                "this route is for the other managers".into(),
            )),
            None => Err(Fail(
                StatusCode::UNAUTHORIZED,
                "a client certificate of this cluster is required".into(),
            )),
        }
    }
    pub(crate) fn node(&self) -> Result<String, Fail> {
        match &self.0 {
            Some((id, Role::Worker)) => Ok(id.clone()),
            Some(_) => Err(Fail(
                StatusCode::FORBIDDEN,
                "this route needs a node certificate".into(),
            )),
            None => Err(Fail(
                StatusCode::UNAUTHORIZED,
                "a client certificate of this cluster is required".into(),
            )),
        }
    }
}

pub(crate) async fn serve(sh: Arc<Shared>, listener: TcpListener, tls: Arc<rustls::ServerConfig>) {
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    let app = router(sh);
    loop {
        let (tcp, from) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                tracing::warn!("accept: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        // Small answers go out at once, not after the client's delayed
        // acknowledgement of the last (Nagle's algorithm).
        let _ = tcp.set_nodelay(true);
        let acceptor = acceptor.clone();
        let app = app.clone();
        tokio::spawn(async move {
            let tls =
                match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await {
                    Ok(Ok(t)) => t,
                    Ok(Err(e)) => {
                        tracing::info!(%from, "TLS handshake refused: {e}");
                        return;
                    }
                    Err(_) => return,
                };
            let peer = Peer(
                tls.get_ref()
                    .1
                    .peer_certificates()
                    .and_then(|c| c.first())
                    .and_then(|c| gantry_pki::peer_identity(c.as_ref())),
            );
            let anonymous = peer.0.is_none();
            let authed = crate::registry::Authed::default();
            let svc = hyper_util::service::TowerToHyperService::new(
                app.layer(Extension(peer))
                    .layer(Extension(Client(from.ip())))
                    .layer(Extension(authed.clone())),
            );
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .serve_connection(hyper_util::rt::TokioIo::new(tls), svc);
            if anonymous {
                // Unless a request on it carried a registry user's
                // password: then as long as its uploads take.
                tokio::pin!(conn);
                if tokio::time::timeout(ANONYMOUS_TIMEOUT, conn.as_mut())
                    .await
                    .is_err()
                    && authed.0.load(std::sync::atomic::Ordering::Relaxed)
                {
                    let _ = conn.await;
                }
            } else {
                let _ = conn.await;
            }
        });
    }
}

fn router(sh: Arc<Shared>) -> Router {
    Router::new()
        .route("/v1/ca", get(ca))
        .route("/v1/ca/status", get(crate::ca::show))
        .route("/v1/ca/rotate", post(crate::ca::rotate))
        .route("/v1/admin/renew", post(crate::ca::admin_renew))
        .route("/v1/managers/renewed", post(crate::ca::manager_renewed))
        .route(
            "/v1/raft/append",
            post(crate::group::append).layer(axum::extract::DefaultBodyLimit::max(RAFT_BODY_LIMIT)),
        )
        .route("/v1/raft/vote", post(crate::group::vote))
        .route(
            "/v1/raft/snapshot",
            post(crate::group::snapshot)
                .layer(axum::extract::DefaultBodyLimit::max(RAFT_BODY_LIMIT)),
        )
        .route("/v1/managers", get(crate::join::ls))
        .route("/v1/managers/join", post(crate::join::manager_join))
        .route("/v1/managers/{id}", post(crate::join::set_role))
        .route("/v1/join", post(join))
        .route("/v1/agent/status", post(agent_status))
        .route("/v1/agent/renew", post(agent_renew))
        .route("/v1/agent/watch", get(agent_watch))
        .route("/v1/join-token", get(join_token))
        .route("/v1/join-token/rotate", post(rotate_token))
        .route("/v1/nodes", get(crate::nodes::nodes))
        .route("/v1/volumes", get(crate::volumes::volumes))
        .route(
            "/v1/volumes/{name}",
            axum::routing::delete(crate::volumes::volume_rm),
        )
        .route(
            "/v1/volumes/{name}/backup",
            post(crate::volume_backups::backup),
        )
        .route(
            "/v1/volumes/{name}/backups",
            post(crate::volume_backups::backups),
        )
        .route(
            "/v1/volumes/{name}/restore",
            post(crate::volume_backups::restore),
        )
        .route(
            "/v1/volumes/{name}/move",
            post(crate::volume_move::move_volume),
        )
        .route(
            "/v1/nodes/{id}",
            get(crate::nodes::node_inspect)
                .post(crate::nodes::node_update)
                .delete(crate::nodes::node_rm),
        )
        .route(
            "/v1/nodes/{id}/confirm-down",
            post(crate::nodes::node_confirm_down),
        )
        .route("/v1/stacks", get(stacks::ls))
        .route("/v1/stacks/{name}", post(stacks::deploy).delete(stacks::rm))
        .route("/v1/services", get(services::ls))
        .route(
            "/v1/services/{name}",
            get(services::inspect).delete(services::rm),
        )
        .route("/v1/services/{name}/update", post(services::update))
        .route("/v1/services/{name}/rollback", post(services::rollback))
        .route("/v1/tasks", get(tasks))
        .route("/v1/events", get(events))
        .route("/v1/logs", get(crate::logs::logs))
        .route("/v1/stats", get(stats))
        .route("/v1/agent/logs", get(crate::logs::agent_stream))
        .route("/v1/agent/logs/{id}", post(crate::logs::agent_answer))
        .route("/v1/dfp/reconfigure", post(crate::edge::dfp_reconfigure))
        .route("/v1/dfp/remove", post(crate::edge::dfp_remove))
        .route("/v1/dfp/config", get(crate::edge::dfp_config))
        .route("/v1/dfp/cert", post(crate::edge::dfp_cert))
        .route(
            "/v1/certs",
            get(crate::edge::cert_ls).post(crate::edge::cert_add),
        )
        .route(
            "/v1/certs/{name}",
            axum::routing::delete(crate::edge::cert_rm),
        )
        .route("/v1/edge-ca", get(crate::edge::edge_ca))
        .route(
            "/v1/networks",
            get(crate::networks::ls).post(crate::networks::create),
        )
        .route(
            "/v1/networks/{name}",
            get(crate::networks::inspect).delete(crate::networks::rm),
        )
        .route("/v1/unlock", axum::routing::post(crate::unlock::unlock))
        .route("/v1/backup", get(crate::backup::backup))
        .route(
            "/v1/unlock-key/rotate",
            axum::routing::post(crate::unlock::rotate),
        )
        .route(
            "/v1/secrets",
            get(files::ls::<files::Secrets>).post(files::create::<files::Secrets>),
        )
        .route(
            "/v1/secrets/{name}",
            get(files::inspect::<files::Secrets>).delete(files::rm::<files::Secrets>),
        )
        .route(
            "/v1/configs",
            get(files::ls::<files::Configs>).post(files::create::<files::Configs>),
        )
        .route(
            "/v1/configs/{name}",
            get(files::inspect::<files::Configs>).delete(files::rm::<files::Configs>),
        )
        .route("/v1/registry", get(crate::registry::users::repos))
        .route("/v1/builds", post(crate::builds::build))
        .route(
            "/v1/registry/users",
            get(crate::registry::users::ls).post(crate::registry::users::create),
        )
        .route(
            "/v1/registry/users/{name}",
            axum::routing::delete(crate::registry::users::rm),
        )
        .route("/v2/", axum::routing::any(crate::registry::serve))
        .route("/v2/{*rest}", axum::routing::any(crate::registry::serve))
        .layer(axum::middleware::from_fn_with_state(
            sh.clone(),
            crate::forward::route,
        ))
        .with_state(sh)
}

/// The roots to trust (PEM), the issuing CA first: a joining node trusts
/// the one its token names.
async fn ca(State(sh): Sh) -> Json<String> {
    Json(sh.trust_pem())
}

/// A client whose joins failed too often waits (429).
pub(crate) fn join_allowed(sh: &Shared, from: std::net::IpAddr) -> Result<(), Fail> {
    if let Some(wait) = sh.joins.wait(from, Instant::now()) {
        return Err(Fail(
            StatusCode::TOO_MANY_REQUESTS,
            format!(
                "too many failed joins from {from}: try again in {} s",
                wait.as_secs().max(1)
            ),
        ));
    }
    Ok(())
}

async fn join(
    State(sh): Sh,
    Extension(Client(from)): Extension<Client>,
    JsonBody(req): JsonBody<JoinRequest>,
) -> Res<JoinResponse> {
    join_allowed(&sh, from)?;
    let token = match JoinToken::parse(&req.token) {
        Ok(t) => t,
        Err(e) => {
            sh.joins.failed(from, Instant::now());
            return Err(bad(e.to_string()));
        }
    };
    req.info.check().map_err(bad)?;
    let stored = sh
        .meta(crate::TOKEN_HASH_KEY)
        .ok_or_else(|| Fail(StatusCode::INTERNAL_SERVER_ERROR, "no join token".into()))?;
    let fingerprint = sh
        .ca()
        .fingerprint()
        .map_err(|e| Fail(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    if token.ca_fingerprint != fingerprint || !token.matches(&stored) {
        tracing::warn!(hostname = %req.info.hostname, %from, "join refused: wrong token");
        sh.joins.failed(from, Instant::now());
        return Err(Fail(
            StatusCode::FORBIDDEN,
            "invalid join token: get the current one with `gantry join-token` on the manager"
                .into(),
        ));
    }
    sh.joins.succeeded(from);
    let id = new_id();
    let cert_pem = sh
        .ca()
        .sign_request(&req.csr_pem, &id, Role::Worker)
        .map_err(|e| bad(format!("certificate request: {e}")))?;
    let mut full = false;
    let renewed = sh.renewed(&id);
    sh.update(|s| {
        let mut rec = gantry_manager::report::node_record(&id, &req.info, false);
        rec.block = gantry_manager::network::block_for_new_node(s);
        full = rec.block.is_none();
        let mut cmds = vec![Command::PutNode(rec)];
        cmds.extend(renewed);
        cmds
    })?;
    if full {
        tracing::warn!(node = %id, "the cluster CIDR has no free block left: the node joins without an overlay");
    }
    sh.seen
        .lock()
        .expect("seen lock")
        .insert(id.clone(), Instant::now());
    tracing::info!(node = %id, hostname = %req.info.hostname, "node joined");
    Ok(Json(JoinResponse {
        node_id: id,
        cert_pem,
        ca_pem: sh.trust_pem(),
    }))
}

/// `POST /v1/agent/renew`: a node's certificate, signed again for a key
/// it made; who it is comes from the certificate it connects with.
async fn agent_renew(
    State(sh): Sh,
    Extension(peer): Extension<Peer>,
    JsonBody(req): JsonBody<gantry_api::RenewRequest>,
) -> Res<gantry_api::RenewResponse> {
    let id = peer.node()?;
    if sh.read(|s| !s.nodes.contains_key(&id)) {
        return Err(Fail(
            StatusCode::FORBIDDEN,
            format!("node {id} was removed from the cluster"),
        ));
    }
    let ca = sh.ca();
    let cert_pem = ca
        .sign_request(&req.csr_pem, &id, Role::Worker)
        .map_err(|e| bad(format!("certificate request: {e}")))?;
    if let Some(cmd) = sh.renewed(&id) {
        // A CA rotation waits for every node.
        sh.apply(vec![cmd])?;
    }
    tracing::info!(node = %id, "node certificate renewed");
    Ok(Json(gantry_api::RenewResponse {
        cert_pem,
        ca_pem: sh.trust_pem(),
    }))
}

async fn agent_status(
    State(sh): Sh,
    Extension(peer): Extension<Peer>,
    JsonBody(report): JsonBody<StatusReport>,
) -> Res<()> {
    let id = peer.node()?;
    report.info.check().map_err(bad)?;
    if let Some(v) = &report.volumes {
        v.check().map_err(bad)?;
    }
    // Liveness first, before anything that waits for the store (whose lock
    // a long orchestration step may hold): a report that queues behind it
    // still counts, and no runtime worker blocks on the lock.
    sh.seen
        .lock()
        .expect("seen lock")
        .insert(id.clone(), Instant::now());
    // The store lock is taken off the runtime's workers, which serve
    // every other request.
    let (sh2, id2) = (sh.clone(), id.clone());
    let stats = report.stats.clone();
    let measured = report.volumes.clone();
    let known = tokio::task::spawn_blocking(move || {
        let mut known = true;
        sh2.update(|s| {
            known = s.nodes.contains_key(&id2);
            if !known {
                return Vec::new();
            }
            gantry_manager::report::commands(s, &id2, &report, now_ms())
        })
        .map(|()| known)
    })
    .await
    .map_err(|e| Fail(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))??;
    if !known {
        sh.seen.lock().expect("seen lock").remove(&id);
        return Err(not_found(format!(
            "node {id} was removed from the cluster: join again with a token"
        )));
    }
    if let Some(v) = measured {
        sh.volumes
            .lock()
            .expect("volumes lock")
            .entry(id.clone())
            .or_default()
            .take(v);
    }
    if let Some(st) = stats {
        sh.stats.lock().expect("stats lock").insert(id, st);
    }
    Ok(Json(()))
}

/// A value as one line of a JSON-lines stream.
pub(crate) fn json_line(v: &impl serde::Serialize) -> Bytes {
    let mut l = serde_json::to_vec(v).unwrap_or_default();
    l.push(b'\n');
    Bytes::from(l)
}

/// A JSON-lines stream fed by `rx`.
pub(crate) fn lines(rx: mpsc::Receiver<Bytes>) -> Body {
    Body::from_stream(futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|b| (Ok::<_, Infallible>(b), rx))
    }))
}

async fn agent_watch(State(sh): Sh, Extension(peer): Extension<Peer>) -> Result<Body, Fail> {
    let id = peer.node()?;
    if !sh.read(|s| s.nodes.contains_key(&id)) {
        return Err(not_found(format!("node {id} was removed from the cluster")));
    }
    // The hub sends the assignments (`assign.rs`); this keeps the stream
    // alive while nothing changes, as long as it is the node's stream.
    let (rx, keep) = sh.hub.connect(&id);
    let sh2 = sh.clone();
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_secs(2)).await;
            if !sh2.hub.keep_alive(&keep) {
                return;
            }
        }
    });
    Ok(lines(rx))
}

/// `?role=worker` (the default) or `?role=manager`.
#[derive(Deserialize)]
struct TokenRole {
    #[serde(default)]
    role: Option<String>,
}

impl TokenRole {
    fn manager(&self) -> Result<bool, Fail> {
        match self.role.as_deref() {
            None | Some("worker") => Ok(false),
            Some("manager") => Ok(true),
            Some(r) => Err(bad(format!("role {r:?}: worker or manager"))),
        }
    }
}

async fn join_token(
    State(sh): Sh,
    Extension(peer): Extension<Peer>,
    Query(q): Query<TokenRole>,
) -> Res<JoinTokenView> {
    peer.admin()?;
    let key = if q.manager()? {
        crate::MANAGER_TOKEN_NONCE_KEY
    } else {
        crate::TOKEN_NONCE_KEY
    };
    let nonce = sh
        .meta(key)
        .ok_or_else(|| Fail(StatusCode::INTERNAL_SERVER_ERROR, "no join token".into()))?;
    let token = JoinToken::derive(&sh.ca(), &nonce)
        .map_err(|e| Fail(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    Ok(Json(JoinTokenView {
        token: token.to_string(),
        manager: manager_addr(&sh),
    }))
}

fn manager_addr(sh: &Shared) -> String {
    let port = sh.cfg.listen.port();
    if sh.cfg.advertise.is_empty() {
        sh.cfg.listen.to_string()
    } else if sh.cfg.advertise.contains(':') {
        sh.cfg.advertise.clone()
    } else {
        format!("{}:{port}", sh.cfg.advertise)
    }
}

async fn rotate_token(
    State(sh): Sh,
    Extension(peer): Extension<Peer>,
    Query(q): Query<TokenRole>,
) -> Res<JoinTokenView> {
    peer.admin()?;
    let new = if q.manager()? {
        crate::new_manager_token
    } else {
        crate::new_join_token
    };
    let (token, cmds) =
        new(&sh.ca()).map_err(|e| Fail(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    sh.apply(cmds)?;
    Ok(Json(JoinTokenView {
        token: token.to_string(),
        manager: manager_addr(&sh),
    }))
}

#[derive(Deserialize)]
struct TaskQuery {
    service: Option<String>,
    stack: Option<String>,
    node: Option<String>,
}

async fn tasks(
    State(sh): Sh,
    Extension(peer): Extension<Peer>,
    Query(q): Query<TaskQuery>,
) -> Res<Vec<TaskRecord>> {
    peer.admin()?;
    let mut out = sh.read(|s| -> Result<Vec<TaskRecord>, Fail> {
        if let Some(n) = &q.service {
            if !s.services.contains_key(n) {
                return Err(not_found(format!("no such service: {n}")));
            }
        }
        let node = match &q.node {
            Some(k) => Some(crate::nodes::find_node(s, k)?),
            None => None,
        };
        let stack_services: Option<BTreeSet<&String>> = q.stack.as_ref().map(|st| {
            s.services
                .values()
                .filter(|r| &r.stack == st)
                .map(|r| &r.name)
                .collect()
        });
        // By the state's indexes when the query names a service or node.
        let candidates: Box<dyn Iterator<Item = &TaskRecord>> = match (&q.service, &node) {
            (Some(n), _) => Box::new(s.tasks_of(n)),
            (None, Some(id)) => Box::new(s.tasks_on(id)),
            (None, None) => Box::new(s.tasks.values()),
        };
        Ok(candidates
            .filter(|t| q.service.as_ref().is_none_or(|n| &t.service == n))
            .filter(|t| node.is_none() || t.node == node)
            .filter(|t| {
                stack_services
                    .as_ref()
                    .is_none_or(|set| set.contains(&t.service))
            })
            .cloned()
            .collect())
    })?;
    // By slot (global tasks: by node), the task that should run first,
    // then its history, newest first.
    let key = |t: &TaskRecord| {
        (
            t.service.clone(),
            t.slot,
            if t.slot == 0 { t.node.clone() } else { None },
            t.desired != TaskState::Running,
            std::cmp::Reverse(t.updated_ms),
        )
    };
    out.sort_by_key(key);
    Ok(Json(out))
}

#[derive(Deserialize)]
struct EventQuery {
    since: Option<String>,
    #[serde(default)]
    follow: Option<bool>,
}

async fn events(
    State(sh): Sh,
    Extension(peer): Extension<Peer>,
    Query(q): Query<EventQuery>,
) -> Result<Body, Fail> {
    peer.admin()?;
    let since_ms = match &q.since {
        Some(s) => Some(
            chrono::DateTime::parse_from_rfc3339(s)
                .map_err(|e| {
                    bad(format!(
                        "since {s:?}: {e} (RFC 3339, as 2026-12-04T10:00:00Z)"
                    ))
                })?
                .timestamp_millis()
                .max(0) as u64,
        ),
        None => None,
    };
    let mut live = sh.events.subscribe();
    let past: Vec<Event> = match since_ms {
        Some(ms) => sh.read(|s| crate::events::since(s, ms)),
        None => Vec::new(),
    };
    let follow = q.follow.unwrap_or(true);
    let (tx, rx) = mpsc::channel::<Bytes>(64);
    tokio::spawn(async move {
        for e in &past {
            if tx.send(json_line(e)).await.is_err() {
                return;
            }
        }
        if !follow {
            return;
        }
        loop {
            tokio::select! {
                r = live.recv() => match r {
                    Ok(e) => if tx.send(json_line(&e)).await.is_err() { return },
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
                    Err(_) => return,
                },
                _ = tokio::time::sleep(Duration::from_secs(2)) => {
                    if tx.send(Bytes::from_static(b"\n")).await.is_err() {
                        return;
                    }
                }
            }
        }
    });
    Ok(lines(rx))
}

/// `GET /v1/stats`: every node's latest figures, with its tasks'.
async fn stats(
    State(sh): Sh,
    Extension(peer): Extension<Peer>,
) -> Res<Vec<gantry_api::NodeStatsView>> {
    peer.admin()?;
    let stats = sh.stats.lock().expect("stats lock").clone();
    let mut out: Vec<gantry_api::NodeStatsView> = sh.read(|s| {
        s.nodes
            .values()
            .filter(|n| n.up)
            .filter_map(|n| {
                Some(gantry_api::NodeStatsView {
                    node: n.id.clone(),
                    hostname: n.hostname.clone(),
                    stats: stats.get(&n.id)?.clone(),
                })
            })
            .collect()
    });
    out.sort_by(|a, b| a.hostname.cmp(&b.hostname));
    Ok(Json(out))
}
