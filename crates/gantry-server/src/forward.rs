//! Any manager answers any client: a request to a manager that does not
//! lead is sent on to the leader as it came (its body and answer
//! streamed), with the caller's identity in headers that the leader
//! believes only from another manager's certificate. The leader serves
//! reads only once it has confirmed with a quorum that it still leads, so
//! a read never goes back in time; with no leader, a manager still
//! answers reads from its own state, marked `X-Gantry-Stale: true`, and
//! refuses writes naming the managers it cannot reach.

use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderName, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use gantry_pki::Role;

use crate::api::{Client, Fail, Peer};
use crate::group::Leader;
use crate::Shared;

/// Who sent a forwarded request: `admin:NAME`, `worker:ID` or `anonymous`.
const PEER: HeaderName = HeaderName::from_static("x-gantry-peer");
/// The address it came from.
const CLIENT: HeaderName = HeaderName::from_static("x-gantry-client");
/// Set on an answer from a manager that could not confirm it is current.
const STALE: HeaderName = HeaderName::from_static(gantry_api::STALE_HEADER);

/// Routes every manager serves itself: the CA, Raft's calls, and what
/// belongs to one manager (its data key's lock, its backup file, the
/// builds sent to it).
fn local(path: &str) -> bool {
    path == "/v1/ca"
        || path.starts_with("/v1/raft/")
        || path == "/v1/unlock"
        || path == "/v1/unlock-key/rotate"
        || path == "/v1/backup"
        || path == "/v1/builds"
}

/// Streams whose answers are not state at one index (no quorum check).
fn stream(path: &str) -> bool {
    path == "/v1/agent/watch"
        || path.starts_with("/v1/agent/logs")
        || path == "/v1/events"
        || path == "/v1/logs"
}

/// The connection to the leader, kept while it leads.
#[derive(Default)]
pub(crate) struct ToLeader(Mutex<Option<(String, gantry_api::Client)>>);

impl ToLeader {
    /// Drops the connection to `addr` (a leader that stopped answering).
    fn forget(&self, addr: &str) {
        let mut cur = self.0.lock().expect("leader client lock");
        if cur.as_ref().is_some_and(|(a, _)| a == addr) {
            *cur = None;
        }
    }

    pub(crate) fn client(&self, sh: &Shared, addr: &str) -> Result<gantry_api::Client, String> {
        let mut cur = self.0.lock().expect("leader client lock");
        if let Some((a, c)) = &*cur {
            if a == addr {
                return Ok(c.clone());
            }
        }
        let tls = sh.peers.tls().ok_or("no certificate yet")?;
        let c = gantry_api::Client::new(addr, tls).map_err(|e| e.to_string())?;
        *cur = Some((addr.to_owned(), c.clone()));
        Ok(c)
    }
}

/// The middleware: every answer lists the managers, for clients to fail
/// over to.
pub(crate) async fn route(State(sh): State<Arc<Shared>>, req: Request, next: Next) -> Response {
    let mut r = dispatch(&sh, req, next).await;
    let addrs: Vec<String> = {
        let m = sh.raft.metrics().borrow().membership_config.clone();
        m.membership()
            .nodes()
            .map(|(_, n)| n.addr.clone())
            .collect()
    };
    if let Ok(v) = HeaderValue::from_str(&addrs.join(",")) {
        r.headers_mut()
            .insert(HeaderName::from_static(gantry_api::MANAGERS_HEADER), v);
    }
    // The roots this manager trusts: a client that trusts others renews
    // its credential (a CA rotation).
    if let Ok(v) = HeaderValue::from_str(&sh.trust.id()) {
        r.headers_mut()
            .insert(HeaderName::from_static(gantry_api::TRUST_HEADER), v);
    }
    r
}

/// A 503 for a request that was not proposed: the client may send it
/// again (to this or another manager) once a leader is elected.
fn no_leader(sh: &Shared) -> Response {
    let mut r = Fail(StatusCode::SERVICE_UNAVAILABLE, sh.no_leader_message()).into_response();
    r.headers_mut().insert(
        HeaderName::from_static(gantry_api::RETRY_HEADER),
        HeaderValue::from_static("true"),
    );
    r
}

async fn dispatch(sh: &Arc<Shared>, mut req: Request, next: Next) -> Response {
    let from_manager = matches!(
        req.extensions().get::<Peer>(),
        Some(Peer(Some((_, Role::Manager))))
    );
    let forwarded = from_manager && req.headers().contains_key(&PEER);
    if forwarded {
        // Another manager sent on a client's request: the client's
        // identity is what counts.
        let peer = req
            .headers()
            .get(&PEER)
            .and_then(|v| v.to_str().ok())
            .map(parse_peer)
            .unwrap_or(Peer(None));
        req.extensions_mut().insert(peer);
        if let Some(ip) = req
            .headers()
            .get(&CLIENT)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<IpAddr>().ok())
        {
            req.extensions_mut().insert(Client(ip));
        }
    }
    let path = req.uri().path().to_owned();
    // The registry's blobs and uploads live on the manager the client
    // reached; its manifest writes are state, and go to the leader.
    if local(&path)
        || (path.starts_with("/v2/") && !crate::registry::is_state_write(req.method(), &path))
    {
        return next.run(req).await;
    }
    let read = req.method() == Method::GET;
    match sh.leader() {
        Leader::Me => {
            if read && !stream(&path) && sh.raft.ensure_linearizable().await.is_err() {
                // Deposed while the read waited: as with no leader.
                return stale(next, req).await;
            }
            next.run(req).await
        }
        // A request another manager sent on is not sent on again (no
        // loops while the managers disagree on who leads).
        Leader::At(_) | Leader::Unknown if forwarded => no_leader(sh),
        Leader::At(addr) => match proxy(sh, &addr, req).await {
            Ok(r) => r,
            // The leader could not be reached: nothing was sent.
            Err((_, true)) => no_leader(sh),
            Err((e, false)) => Fail(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("the leading manager at {addr} stopped answering: {e} (the request may or may not have been carried out)"),
            )
            .into_response(),
        },
        Leader::Unknown if read => stale(next, req).await,
        Leader::Unknown => no_leader(sh),
    }
}

/// Serves a read from this manager's state, marked possibly stale.
async fn stale(next: Next, req: Request) -> Response {
    let mut r = next.run(req).await;
    r.headers_mut()
        .insert(STALE, HeaderValue::from_static("true"));
    r
}

fn parse_peer(v: &str) -> Peer {
    match v.split_once(':') {
        Some(("admin", name)) => Peer(Some((name.to_owned(), Role::Admin))),
        Some(("worker", id)) => Peer(Some((id.to_owned(), Role::Worker))),
        _ => Peer(None),
    }
}

/// Sends `req` on to the leader at `addr` and its answer back; an error
/// says whether nothing was sent.
pub(crate) async fn proxy(
    sh: &Shared,
    addr: &str,
    req: Request,
) -> Result<Response, (String, bool)> {
    let client = sh.to_leader.client(sh, addr).map_err(|e| (e, true))?;
    let (parts, body) = req.into_parts();
    let mut headers = parts.headers.clone();
    headers.remove(axum::http::header::HOST);
    headers.remove(axum::http::header::CONNECTION);
    let who = match parts.extensions.get::<Peer>() {
        Some(Peer(Some((name, Role::Admin)))) => format!("admin:{name}"),
        Some(Peer(Some((id, Role::Worker)))) => format!("worker:{id}"),
        _ => "anonymous".to_owned(),
    };
    headers.insert(
        PEER,
        HeaderValue::from_str(&who).map_err(|e| (e.to_string(), true))?,
    );
    if let Some(Client(ip)) = parts.extensions.get::<Client>() {
        if let Ok(v) = HeaderValue::from_str(&ip.to_string()) {
            headers.insert(CLIENT, v);
        }
    }
    let path = parts
        .uri
        .path_and_query()
        .map_or(parts.uri.path(), |p| p.as_str())
        .to_owned();
    let body = reqwest::Body::wrap_stream(body.into_data_stream());
    // A leader that dies with the request (its host cut off) does not
    // answer, and its connection may not say so for minutes: once another
    // leads, the request is given up (its outcome unknown).
    let mut metrics = sh.raft.metrics();
    let was = metrics.borrow().current_leader;
    let changed = async move {
        loop {
            if metrics.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
            // Another leader known (not none: a follower may lose sight
            // of the leader for a moment, as when it leaves the voters).
            let now = metrics.borrow().current_leader;
            if now.is_some() && now != was {
                return;
            }
        }
    };
    let resp = tokio::select! {
        r = client.forward(parts.method, &path, headers, body) => r.map_err(|e| {
            let unsent = matches!(e, gantry_api::ApiError::Unreachable { .. });
            (e.to_string(), unsent)
        })?,
        () = changed => {
            sh.to_leader.forget(addr);
            return Err(("another manager leads now".into(), false));
        }
    };
    let mut out = Response::builder().status(resp.status());
    for (k, v) in resp.headers() {
        if k != axum::http::header::TRANSFER_ENCODING && k != axum::http::header::CONNECTION {
            out = out.header(k, v);
        }
    }
    out.body(Body::from_stream(resp.bytes_stream()))
        .map_err(|e| (e.to_string(), false))
}
