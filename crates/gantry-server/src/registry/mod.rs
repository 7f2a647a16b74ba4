//! The cluster's registry: the OCI distribution API on every manager's
//! port. Manifests and tags are in the replicated state (a push is one
//! Raft write, forwarded to the leader like any write); blobs are files on
//! each manager's disk, uploaded to whichever manager the client reached
//! and fetched by the others from it by digest (`replicate.rs`), checked
//! before they become visible.
//!
//! Who may use it: a client certificate of the cluster (the admin's:
//! push and pull; a node's or a manager's: pull), or a registry user's
//! password over HTTP Basic auth (`gantry registry user add`, then
//! `gantry login` or `docker login`).

mod blobs;
mod holders;
mod replicate;
pub(crate) mod route;
pub(crate) mod users;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Extension;
use gantry_pki::Role;
use gantry_store::{BlobRef, Command, ManifestRecord, Rejected, StoreError};
use sha2::Digest as _;

pub(crate) use blobs::Blobs;
pub(crate) use holders::Holders;
pub(crate) use replicate::{run, Fetcher};
use route::Route;

use crate::api::Peer;
use crate::{now_ms, Shared};

/// The largest manifest accepted on the wire (Distribution's limit).
pub(crate) const MANIFEST_WIRE_LIMIT: usize = 4 << 20;

/// Set on an anonymous connection once a request on it carried a
/// registry user's password: it may then last as long as its uploads.
#[derive(Clone, Default)]
pub(crate) struct Authed(pub(crate) Arc<AtomicBool>);

/// What the caller may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Access {
    Pull,
    Push,
}

/// Who the caller is, for the blob fetches a manager makes of the others
/// (never passed on again).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Caller {
    Manager,
    Other,
}

/// A distribution API error: `{"errors":[{"code","message"}]}`.
fn error(status: StatusCode, code: &str, message: impl Into<String>) -> Response {
    let body = serde_json::json!({
        "errors": [{ "code": code, "message": message.into(), "detail": null }]
    });
    let mut r = (status, axum::Json(body)).into_response();
    api_version(r.headers_mut());
    r
}

fn api_version(h: &mut HeaderMap) {
    h.insert(
        "docker-distribution-api-version",
        HeaderValue::from_static("registry/2.0"),
    );
}

fn internal(e: impl std::fmt::Display) -> Response {
    error(StatusCode::INTERNAL_SERVER_ERROR, "UNKNOWN", e.to_string())
}

/// The answer to a caller without a credential, or with a wrong one.
fn unauthorized(message: &str) -> Response {
    let mut r = error(StatusCode::UNAUTHORIZED, "UNAUTHORIZED", message);
    r.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static("Basic realm=\"gantry\""),
    );
    r
}

/// Checks the caller's credential: a certificate of the cluster or a
/// registry user's password.
/// A refusal is the words of a 401.
fn access(sh: &Shared, peer: &Peer, headers: &HeaderMap) -> Result<(Access, Caller), &'static str> {
    match &peer.0 {
        Some((_, Role::Admin)) => return Ok((Access::Push, Caller::Other)),
        Some((_, Role::Manager)) => return Ok((Access::Pull, Caller::Manager)),
        Some((_, Role::Worker)) => return Ok((Access::Pull, Caller::Other)),
        _ => {}
    }
    let Some(auth) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    else {
        return Err(
            "a registry user's password (gantry login) or a certificate of the cluster is required",
        );
    };
    let decoded = auth
        .strip_prefix("Basic ")
        .and_then(|b| {
            use base64::Engine;
            base64::engine::general_purpose::STANDARD
                .decode(b.trim())
                .ok()
        })
        .and_then(|b| String::from_utf8(b).ok());
    let Some((user, password)) = decoded.as_deref().and_then(|d| d.split_once(':')) else {
        return Err("only Basic authentication is supported");
    };
    let hash = hex::encode(sha2::Sha256::digest(password.as_bytes()));
    let push = sh.read(|s| {
        s.registry_users
            .get(user)
            .filter(|u| constant_time_eq(u.password_sha256.as_bytes(), hash.as_bytes()))
            .map(|u| u.push)
    });
    match push {
        Some(true) => Ok((Access::Push, Caller::Other)),
        Some(false) => Ok((Access::Pull, Caller::Other)),
        None => Err("wrong user name or password"),
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// A repository name as the distribution spec allows it.
pub(crate) fn check_name(name: &str) -> Result<(), String> {
    if route::name_ok(name) {
        Ok(())
    } else {
        Err(format!("invalid repository name {name:?}: lower-case letters, digits and . _ __ - separators, / between parts"))
    }
}

/// A tag as the distribution spec allows it.
pub(crate) fn check_tag(tag: &str) -> Result<(), String> {
    if route::tag_ok(tag) {
        Ok(())
    } else {
        Err(format!(
            "invalid tag {tag:?}: letters, digits and . _ -, at most 128"
        ))
    }
}

/// Whether a request to `path` changes the state (and so goes to the
/// leader, as every write): manifest and tag writes. Blob uploads stay
/// with the manager the client reached.
pub(crate) fn is_state_write(method: &Method, path: &str) -> bool {
    path.starts_with("/v2/")
        && path.contains("/manifests/")
        && matches!(*method, Method::PUT | Method::DELETE)
}

/// `/v2/...`: every endpoint.
pub(crate) async fn serve(
    State(sh): State<Arc<Shared>>,
    Extension(peer): Extension<Peer>,
    authed: Option<Extension<Authed>>,
    req: Request,
) -> Response {
    let (parts, body) = req.into_parts();
    let path = parts.uri.path();
    let rest = path.strip_prefix("/v2/").unwrap_or("");
    let route = match route::parse(rest) {
        Ok(r) => r,
        Err(bad) => {
            let status = if bad.code == "UNSUPPORTED" {
                StatusCode::NOT_FOUND
            } else {
                StatusCode::BAD_REQUEST
            };
            return error(status, bad.code, bad.message);
        }
    };
    let (access, caller) = match access(&sh, &peer, &parts.headers) {
        Ok(a) => a,
        Err(why) => return unauthorized(why),
    };
    if peer.0.is_none() {
        if let Some(Extension(a)) = authed {
            a.0.store(true, Ordering::Relaxed);
        }
    }
    let writes = !matches!(parts.method, Method::GET | Method::HEAD);
    if writes && access < Access::Push {
        return error(
            StatusCode::FORBIDDEN,
            "DENIED",
            "this credential may pull, not push or delete",
        );
    }
    let query = parts.uri.query().unwrap_or("");
    let q = |k: &str| query_value(query, k);
    let head = parts.method == Method::HEAD;
    let mut r = match (parts.method.clone(), route) {
        (Method::GET | Method::HEAD, Route::Base) => {
            (StatusCode::OK, axum::Json(serde_json::json!({}))).into_response()
        }
        (Method::GET, Route::Tags { name }) => tags(&sh, &name, q("n"), q("last")),
        (Method::GET | Method::HEAD, Route::Manifest { name, reference }) => {
            get_manifest(&sh, &name, &reference, head)
        }
        (Method::PUT, Route::Manifest { name, reference }) => {
            put_manifest(&sh, &name, &reference, &parts.headers, body).await
        }
        (Method::DELETE, Route::Manifest { name, reference }) => {
            delete_manifest(&sh, &name, &reference)
        }
        (Method::GET | Method::HEAD, Route::Blob { digest, .. }) => {
            get_blob(&sh, &digest, &parts.headers, head, caller, &peer).await
        }
        (Method::DELETE, Route::Blob { digest, .. }) => delete_blob(&sh, &digest),
        (Method::POST, Route::Uploads { name }) => {
            start_upload(&sh, &name, q("digest"), q("mount"), caller, body).await
        }
        (Method::GET, Route::Upload { name, id }) => upload_status(&sh, &name, &id).await,
        (Method::PATCH, Route::Upload { name, id }) => {
            patch_upload(&sh, &name, &id, &parts.headers, body).await
        }
        (Method::PUT, Route::Upload { name, id }) => {
            finish_upload(&sh, &name, &id, q("digest"), body).await
        }
        (Method::DELETE, Route::Upload { id, .. }) => {
            if sh.blobs.cancel(&id) {
                StatusCode::NO_CONTENT.into_response()
            } else {
                error(
                    StatusCode::NOT_FOUND,
                    "BLOB_UPLOAD_UNKNOWN",
                    "no such upload",
                )
            }
        }
        (m, _) => error(
            StatusCode::METHOD_NOT_ALLOWED,
            "UNSUPPORTED",
            format!("{m} is not served here"),
        ),
    };
    api_version(r.headers_mut());
    r
}

/// A query parameter, percent-decoded.
fn query_value(query: &str, key: &str) -> Option<String> {
    query.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        (k == key).then(|| percent_decode(v))
    })
}

fn percent_decode(s: &str) -> String {
    fn hex(c: u8) -> Option<u8> {
        (c as char).to_digit(16).map(|d| d as u8)
    }
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let pair = (b[i] == b'%')
            .then(|| Some(hex(*b.get(i + 1)?)? << 4 | hex(*b.get(i + 2)?)?))
            .flatten();
        match (pair, b[i]) {
            (Some(v), _) => {
                out.push(v);
                i += 3;
            }
            (None, b'+') => {
                out.push(b' ');
                i += 1;
            }
            (None, c) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn tags(sh: &Shared, name: &str, n: Option<String>, last: Option<String>) -> Response {
    let Some(mut all) = sh.read(|s| {
        s.registry
            .get(name)
            .map(|r| r.tags.keys().cloned().collect::<Vec<_>>())
    }) else {
        return error(
            StatusCode::NOT_FOUND,
            "NAME_UNKNOWN",
            format!("no repository {name}"),
        );
    };
    if let Some(last) = &last {
        all.retain(|t| t > last);
    }
    let n = match n.as_deref().map(str::parse::<usize>) {
        None => usize::MAX,
        Some(Ok(n)) => n,
        Some(Err(_)) => {
            return error(
                StatusCode::BAD_REQUEST,
                "PAGINATION_NUMBER_INVALID",
                "n must be a number",
            )
        }
    };
    let more = all.len() > n;
    all.truncate(n);
    let mut r = axum::Json(serde_json::json!({ "name": name, "tags": all })).into_response();
    if more {
        if let Some(last) = all.last() {
            if let Ok(v) = HeaderValue::from_str(&format!(
                "</v2/{name}/tags/list?n={n}&last={last}>; rel=\"next\""
            )) {
                r.headers_mut().insert(header::LINK, v);
            }
        }
    }
    r
}

fn get_manifest(sh: &Shared, name: &str, reference: &str, head: bool) -> Response {
    let found = sh.read(|s| {
        let r = s.registry.get(name)?;
        let d = r.resolve(reference)?;
        Some((d.to_owned(), r.manifests.get(d)?.clone()))
    });
    let Some((digest, m)) = found else {
        return error(
            StatusCode::NOT_FOUND,
            "MANIFEST_UNKNOWN",
            format!("no manifest {name}:{reference}"),
        );
    };
    let len = m.body.len();
    let mut r = if head {
        Response::new(Body::empty())
    } else {
        Response::new(Body::from(m.body))
    };
    let h = r.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&m.media_type) {
        h.insert(header::CONTENT_TYPE, v);
    }
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    if let Ok(v) = HeaderValue::from_str(&digest) {
        h.insert("docker-content-digest", v.clone());
        h.insert(header::ETAG, v);
    }
    r
}

/// What a manifest names: its blobs and (an index) its manifests.
#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct Parsed {
    #[serde(default)]
    media_type: Option<String>,
    #[serde(default)]
    config: Option<Desc>,
    #[serde(default)]
    layers: Vec<Desc>,
    #[serde(default)]
    manifests: Vec<Desc>,
    /// Docker schema 1 manifests have it; they are refused.
    #[serde(default)]
    schema_version: Option<u32>,
}

#[derive(serde::Deserialize)]
struct Desc {
    digest: String,
    size: u64,
}

async fn put_manifest(
    sh: &Arc<Shared>,
    name: &str,
    reference: &str,
    headers: &HeaderMap,
    body: Body,
) -> Response {
    let bytes = match axum::body::to_bytes(body, MANIFEST_WIRE_LIMIT).await {
        Ok(b) => b,
        Err(e) => {
            return error(
                StatusCode::PAYLOAD_TOO_LARGE,
                "SIZE_INVALID",
                format!("manifest: {e}"),
            )
        }
    };
    let digest = format!("sha256:{}", hex::encode(sha2::Sha256::digest(&bytes)));
    let tag = if reference.starts_with("sha256:") {
        if reference != digest {
            return error(
                StatusCode::BAD_REQUEST,
                "DIGEST_INVALID",
                format!("the manifest's digest is {digest}, not {reference}"),
            );
        }
        None
    } else {
        Some(reference.to_owned())
    };
    let Ok(text) = String::from_utf8(bytes.to_vec()) else {
        return error(
            StatusCode::BAD_REQUEST,
            "MANIFEST_INVALID",
            "not UTF-8 JSON",
        );
    };
    let parsed: Parsed = match serde_json::from_str(&text) {
        Ok(p) => p,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                "MANIFEST_INVALID",
                format!("not a manifest: {e}"),
            )
        }
    };
    if parsed.schema_version != Some(2) {
        return error(
            StatusCode::BAD_REQUEST,
            "MANIFEST_INVALID",
            "only schema version 2 manifests (OCI, Docker v2) are kept",
        );
    }
    let media_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
        .or(parsed.media_type.clone())
        .unwrap_or_else(|| "application/vnd.oci.image.manifest.v1+json".to_owned());
    if let Some(mt) = &parsed.media_type {
        if headers.contains_key(header::CONTENT_TYPE) && *mt != media_type {
            return error(
                StatusCode::BAD_REQUEST,
                "MANIFEST_INVALID",
                format!("Content-Type {media_type} but the manifest says {mt}"),
            );
        }
    }
    for d in parsed
        .config
        .iter()
        .chain(&parsed.layers)
        .chain(&parsed.manifests)
    {
        if let Err(bad) = route::check_digest(&d.digest) {
            return error(StatusCode::BAD_REQUEST, "MANIFEST_INVALID", bad.message);
        }
    }
    let blobs: Vec<BlobRef> = parsed
        .config
        .iter()
        .chain(&parsed.layers)
        .map(|d| BlobRef {
            digest: d.digest.clone(),
            size: d.size,
        })
        .collect();
    // Every blob it names must be here (fetched from the manager the
    // client uploaded them to, when that was another).
    for b in &blobs {
        match sh.fetcher.ensure(sh, &b.digest).await {
            Ok(size) if size == b.size => {}
            Ok(size) => {
                return error(
                    StatusCode::BAD_REQUEST,
                    "SIZE_INVALID",
                    format!(
                        "blob {} is {size} bytes, the manifest says {}",
                        b.digest, b.size
                    ),
                )
            }
            Err(e) => {
                return error(
                    StatusCode::BAD_REQUEST,
                    "MANIFEST_BLOB_UNKNOWN",
                    format!("blob {} is not in the registry: {e}", b.digest),
                )
            }
        }
    }
    let cmd = Command::PutManifest {
        repo: name.to_owned(),
        digest: digest.clone(),
        manifest: ManifestRecord {
            media_type,
            body: text,
            blobs,
            children: parsed.manifests.iter().map(|d| d.digest.clone()).collect(),
            pushed_ms: now_ms(),
        },
        tag,
    };
    match sh.apply(vec![cmd]) {
        Ok(()) => {}
        Err(StoreError::Rejected(Rejected::NoSuchImage(what))) => {
            return error(
                StatusCode::BAD_REQUEST,
                "MANIFEST_UNKNOWN",
                format!("the index names {what}, which is not in the repository"),
            )
        }
        Err(StoreError::Rejected(e)) => {
            return error(StatusCode::BAD_REQUEST, "MANIFEST_INVALID", e.to_string())
        }
        Err(e) => {
            return error(
                StatusCode::SERVICE_UNAVAILABLE,
                "UNAVAILABLE",
                e.to_string(),
            )
        }
    }
    let mut r = StatusCode::CREATED.into_response();
    let h = r.headers_mut();
    put_location(h, &format!("/v2/{name}/manifests/{digest}"));
    put_digest(h, &digest);
    r
}

/// Records a manifest whose blobs are in this manager's store, as if
/// `peer` had pushed it under `repo:tag`: at the leader, which fetches
/// the blobs it lacks from here (a build on a builder node ends so).
pub(crate) async fn put_manifest_as(
    sh: &Arc<Shared>,
    peer: &Peer,
    repo: &str,
    tag: &str,
    media_type: &str,
    manifest: axum::body::Bytes,
) -> Result<(), String> {
    let ct = HeaderValue::from_str(media_type).map_err(|e| e.to_string())?;
    let resp = match sh.leader() {
        crate::group::Leader::Me => {
            let mut h = HeaderMap::new();
            h.insert(header::CONTENT_TYPE, ct);
            put_manifest(sh, repo, tag, &h, Body::from(manifest)).await
        }
        crate::group::Leader::At(addr) => {
            let mut req = Request::new(Body::from(manifest));
            *req.method_mut() = Method::PUT;
            *req.uri_mut() = format!("/v2/{repo}/manifests/{tag}")
                .parse()
                .map_err(|e| format!("{e}"))?;
            req.headers_mut().insert(header::CONTENT_TYPE, ct);
            req.extensions_mut().insert(peer.clone());
            crate::forward::proxy(sh, &addr, req)
                .await
                .map_err(|(e, _)| format!("the leader at {addr}: {e}"))?
        }
        crate::group::Leader::Unknown => return Err(sh.no_leader_message()),
    };
    if resp.status() == StatusCode::CREATED {
        return Ok(());
    }
    let status = resp.status();
    let body = axum::body::to_bytes(resp.into_body(), 64 << 10)
        .await
        .unwrap_or_default();
    Err(format!(
        "the registry answered {status}: {}",
        String::from_utf8_lossy(&body).trim()
    ))
}

fn delete_manifest(sh: &Shared, name: &str, reference: &str) -> Response {
    let cmd = if reference.starts_with("sha256:") {
        Command::RemoveManifest {
            repo: name.to_owned(),
            digest: reference.to_owned(),
        }
    } else {
        Command::RemoveTag {
            repo: name.to_owned(),
            tag: reference.to_owned(),
        }
    };
    match sh.apply(vec![cmd]) {
        Ok(()) => StatusCode::ACCEPTED.into_response(),
        Err(StoreError::Rejected(Rejected::NoSuchImage(w))) => error(
            StatusCode::NOT_FOUND,
            "MANIFEST_UNKNOWN",
            format!("no manifest {w}"),
        ),
        Err(StoreError::Rejected(e)) => error(StatusCode::CONFLICT, "DENIED", e.to_string()),
        Err(e) => error(
            StatusCode::SERVICE_UNAVAILABLE,
            "UNAVAILABLE",
            e.to_string(),
        ),
    }
}

fn put_location(h: &mut HeaderMap, loc: &str) {
    if let Ok(v) = HeaderValue::from_str(loc) {
        h.insert(header::LOCATION, v);
    }
}

fn put_digest(h: &mut HeaderMap, digest: &str) {
    if let Ok(v) = HeaderValue::from_str(digest) {
        h.insert("docker-content-digest", v);
    }
}

/// `bytes=A-B`, `bytes=A-`, `bytes=-N` against a size: the first and
/// last byte served.
fn byte_range(v: &str, size: u64) -> Option<(u64, u64)> {
    let spec = v.strip_prefix("bytes=")?;
    if spec.contains(',') || size == 0 {
        return None;
    }
    let (a, b) = spec.split_once('-')?;
    let (start, end) = match (a.trim(), b.trim()) {
        ("", n) => {
            let n: u64 = n.parse().ok()?;
            (size.saturating_sub(n), size - 1)
        }
        (a, "") => (a.parse().ok()?, size - 1),
        (a, b) => (a.parse().ok()?, b.parse::<u64>().ok()?.min(size - 1)),
    };
    (start <= end && start < size).then_some((start, end))
}

/// A node asking for a whole blob: its id, and the port it serves blobs
/// on (none: it does not).
fn asking_node(peer: &Peer, headers: &HeaderMap, head: bool) -> Option<(String, Option<u16>)> {
    let Some((id, Role::Worker)) = &peer.0 else {
        return None;
    };
    if head || headers.contains_key(header::RANGE) {
        return None;
    }
    let port = headers
        .get(gantry_api::PEER_PORT_HEADER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok());
    Some((id.clone(), port))
}

/// Sends a node to another that holds the blob.
fn redirect(holder: &str, addr: std::net::SocketAddr, digest: &str) -> Response {
    let mut r = StatusCode::TEMPORARY_REDIRECT.into_response();
    let h = r.headers_mut();
    put_location(
        h,
        &format!("https://{holder}:{}/blobs/{digest}", addr.port()),
    );
    if let Ok(v) = HeaderValue::from_str(&addr.to_string()) {
        h.insert(gantry_api::PEER_ADDR_HEADER, v);
    }
    r
}

async fn get_blob(
    sh: &Arc<Shared>,
    digest: &str,
    headers: &HeaderMap,
    head: bool,
    caller: Caller,
    peer: &Peer,
) -> Response {
    let node = asking_node(peer, headers, head);
    // Where the asking node serves blobs from: once it is getting this
    // one, the next node that asks may be sent to it.
    let serves = |id: &str, port: Option<u16>| {
        let ip: std::net::IpAddr = sh.read(|s| s.nodes.get(id)?.addr.parse().ok())?;
        Some(std::net::SocketAddr::new(ip, port?))
    };
    // A node that asks does not have it (any more); one that asks the
    // managers directly was failed by the node it was sent to.
    if let Some((id, _)) = &node {
        let failed_it = headers.contains_key(gantry_api::DIRECT_HEADER);
        sh.holders.forget(digest, id, failed_it);
    }
    // Another node has it, or is getting it: that node serves it (unless
    // the asking one says that failed).
    if let Some((id, port)) = node
        .as_ref()
        .filter(|_| !headers.contains_key(gantry_api::DIRECT_HEADER))
    {
        let up = |n: &str| sh.read(|s| s.nodes.get(n).is_some_and(|r| r.up));
        if let Some((holder, addr)) = sh.holders.pick(digest, id, up) {
            if let Some(own) = serves(id, *port) {
                sh.holders.record(digest, id, own, Some(&holder));
            }
            return redirect(&holder, addr, digest);
        }
    }
    // Not here yet (pushed to another manager a moment ago): fetched from
    // the others, unless another manager asks (no chains of fetches).
    let size = match sh.blobs.size(digest) {
        Some(s) => s,
        // Only a blob a manifest names: asking for made-up digests must
        // not set off fetches from every other manager.
        None if caller == Caller::Other && sh.read(|s| s.registry_blobs().contains(digest)) => {
            match sh.fetcher.ensure(sh, digest).await {
                Ok(s) => s,
                Err(_) => return blob_unknown(digest),
            }
        }
        None => return blob_unknown(digest),
    };
    let range = headers
        .get(header::RANGE)
        .and_then(|v| v.to_str().ok())
        .map(|v| byte_range(v, size));
    let (status, start, end) = match range {
        None => (StatusCode::OK, 0, size.saturating_sub(1)),
        Some(Some((a, b))) => (StatusCode::PARTIAL_CONTENT, a, b),
        Some(None) => {
            let mut r = error(
                StatusCode::RANGE_NOT_SATISFIABLE,
                "RANGE_INVALID",
                "the range is outside the blob",
            );
            if let Ok(v) = HeaderValue::from_str(&format!("bytes */{size}")) {
                r.headers_mut().insert(header::CONTENT_RANGE, v);
            }
            return r;
        }
    };
    let len = if size == 0 { 0 } else { end - start + 1 };
    let body = if head || len == 0 {
        Body::empty()
    } else {
        // A node that serves blobs holds this one from now on (it serves
        // it while it arrives), unless its transfer breaks.
        let holder = node.and_then(|(id, port)| Some((serves(&id, port)?, id)));
        let whole = status == StatusCode::OK;
        match file_body(&sh.blobs.path(digest), start, len).await {
            Ok(b) => match holder.filter(|_| whole) {
                Some((addr, id)) => {
                    sh.holders.record(digest, &id, addr, None);
                    let sh = sh.clone();
                    let digest = digest.to_owned();
                    unless_whole(b, len, move || sh.holders.forget(&digest, &id, false))
                }
                None => b,
            },
            Err(_) => return blob_unknown(digest),
        }
    };
    let mut r = Response::new(body);
    *r.status_mut() = status;
    let h = r.headers_mut();
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    put_digest(h, digest);
    if status == StatusCode::PARTIAL_CONTENT {
        if let Ok(v) = HeaderValue::from_str(&format!("bytes {start}-{end}/{size}")) {
            h.insert(header::CONTENT_RANGE, v);
        }
    }
    r
}

async fn file_body(path: &std::path::Path, start: u64, len: u64) -> std::io::Result<Body> {
    use tokio::io::{AsyncReadExt, AsyncSeekExt};
    let mut f = tokio::fs::File::open(path).await?;
    if start > 0 {
        f.seek(std::io::SeekFrom::Start(start)).await?;
    }
    let stream = tokio_util::io::ReaderStream::with_capacity(f.take(len), 256 * 1024);
    Ok(Body::from_stream(stream))
}

/// The body, and `broke` called if it is dropped before its `len` bytes
/// were all sent (by count: with a known length, hyper stops polling a
/// body at its end).
fn unless_whole(body: Body, len: u64, broke: impl FnOnce() + Send + 'static) -> Body {
    use futures::StreamExt;
    struct Watch<F: FnOnce()> {
        sent: u64,
        len: u64,
        broke: Option<F>,
    }
    impl<F: FnOnce()> Drop for Watch<F> {
        fn drop(&mut self) {
            if self.sent < self.len {
                if let Some(f) = self.broke.take() {
                    f();
                }
            }
        }
    }
    let mut watch = Watch {
        sent: 0,
        len,
        broke: Some(broke),
    };
    let stream = body.into_data_stream().map(move |c| {
        // The whole of `watch` goes with the stream (not just its
        // field), so that it is dropped with it.
        let w = &mut watch;
        match &c {
            Ok(b) => w.sent += b.len() as u64,
            Err(_) => w.sent = 0,
        }
        c
    });
    Body::from_stream(stream)
}

fn blob_unknown(digest: &str) -> Response {
    error(
        StatusCode::NOT_FOUND,
        "BLOB_UNKNOWN",
        format!("no blob {digest}"),
    )
}

fn delete_blob(sh: &Shared, digest: &str) -> Response {
    if sh.read(|s| s.registry_blobs().contains(digest)) {
        return error(
            StatusCode::CONFLICT,
            "DENIED",
            format!(
                "blob {digest} is part of an image in the registry: delete its manifests first"
            ),
        );
    }
    match sh.blobs.remove(digest) {
        Ok(true) => StatusCode::ACCEPTED.into_response(),
        Ok(false) => blob_unknown(digest),
        Err(e) => internal(e),
    }
}

fn upload_location(name: &str, id: &str) -> String {
    format!("/v2/{name}/blobs/uploads/{id}")
}

/// 202 with where the upload is and how far it got.
fn upload_accepted(name: &str, id: &str, size: u64, status: StatusCode) -> Response {
    let mut r = status.into_response();
    let h = r.headers_mut();
    put_location(h, &upload_location(name, id));
    if let Ok(v) = HeaderValue::from_str(&format!("0-{}", size.saturating_sub(1))) {
        h.insert(header::RANGE, v);
    }
    if let Ok(v) = HeaderValue::from_str(id) {
        h.insert("docker-upload-uuid", v);
    }
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(0));
    r
}

fn blob_created(name: &str, digest: &str) -> Response {
    let mut r = StatusCode::CREATED.into_response();
    let h = r.headers_mut();
    put_location(h, &format!("/v2/{name}/blobs/{digest}"));
    put_digest(h, digest);
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(0));
    r
}

fn finish_failed(e: blobs::FinishError, digest: &str) -> Response {
    match e {
        blobs::FinishError::Unknown => error(
            StatusCode::NOT_FOUND,
            "BLOB_UPLOAD_UNKNOWN",
            "no such upload",
        ),
        blobs::FinishError::Mismatch(actual) => error(
            StatusCode::BAD_REQUEST,
            "DIGEST_INVALID",
            format!("the upload's digest is {actual}, not {digest}"),
        ),
        blobs::FinishError::Body(e) => error(StatusCode::BAD_REQUEST, "BLOB_UPLOAD_INVALID", e),
        blobs::FinishError::Io(e) => internal(e),
    }
}

async fn start_upload(
    sh: &Arc<Shared>,
    name: &str,
    digest: Option<String>,
    mount: Option<String>,
    caller: Caller,
    body: Body,
) -> Response {
    if let Some(d) = mount {
        if let Err(bad) = route::check_digest(&d) {
            return error(StatusCode::BAD_REQUEST, bad.code, bad.message);
        }
        // Every repository shares the blobs: mounting is knowing it.
        let here = sh.blobs.size(&d).is_some()
            || (caller == Caller::Other && sh.fetcher.ensure(sh, &d).await.is_ok());
        if here {
            return blob_created(name, &d);
        }
    }
    if sh.blobs.full() {
        return error(
            StatusCode::TOO_MANY_REQUESTS,
            "TOOMANYREQUESTS",
            format!(
                "{} uploads are under way on this manager: try again later",
                blobs::MAX_UPLOADS
            ),
        );
    }
    if let Some(d) = digest {
        // Monolithic: the whole blob in this request.
        if let Err(bad) = route::check_digest(&d) {
            return error(StatusCode::BAD_REQUEST, bad.code, bad.message);
        }
        return match sh.blobs.put_stream(&d, body.into_data_stream()).await {
            Ok(_) => blob_created(name, &d),
            Err(e) => finish_failed(e, &d),
        };
    }
    match sh.blobs.start().await {
        Ok(id) => upload_accepted(name, &id, 0, StatusCode::ACCEPTED),
        Err(e) => internal(e),
    }
}

async fn upload_status(sh: &Shared, name: &str, id: &str) -> Response {
    let Some(up) = sh.blobs.upload(id) else {
        return error(
            StatusCode::NOT_FOUND,
            "BLOB_UPLOAD_UNKNOWN",
            "no such upload",
        );
    };
    let size = up.lock().await.size;
    upload_accepted(name, id, size, StatusCode::NO_CONTENT)
}

/// `Content-Range: A-B` (or `bytes A-B/*`): the first byte.
fn range_start(v: &str) -> Option<u64> {
    let v = v.trim().trim_start_matches("bytes").trim();
    let (a, _) = v.split_once('-')?;
    a.trim().parse().ok()
}

async fn patch_upload(
    sh: &Shared,
    name: &str,
    id: &str,
    headers: &HeaderMap,
    body: Body,
) -> Response {
    let Some(up) = sh.blobs.upload(id) else {
        return error(
            StatusCode::NOT_FOUND,
            "BLOB_UPLOAD_UNKNOWN",
            "no such upload",
        );
    };
    let mut up = up.lock().await;
    if let Some(v) = headers
        .get(header::CONTENT_RANGE)
        .and_then(|v| v.to_str().ok())
    {
        // A chunk must start where the upload stands.
        if range_start(v) != Some(up.size) {
            let mut r = error(
                StatusCode::RANGE_NOT_SATISFIABLE,
                "BLOB_UPLOAD_INVALID",
                format!("the upload stands at {} bytes; Content-Range {v}", up.size),
            );
            let h = r.headers_mut();
            put_location(h, &upload_location(name, id));
            if let Ok(v) = HeaderValue::from_str(&format!("0-{}", up.size.saturating_sub(1))) {
                h.insert(header::RANGE, v);
            }
            return r;
        }
    }
    match blobs::append(&mut up, body.into_data_stream()).await {
        Ok(()) => upload_accepted(name, id, up.size, StatusCode::ACCEPTED),
        Err(blobs::WriteError::Body(e)) => {
            drop(up);
            sh.blobs.cancel(id);
            error(StatusCode::BAD_REQUEST, "BLOB_UPLOAD_INVALID", e)
        }
        Err(blobs::WriteError::Io(e)) => internal(e),
    }
}

async fn finish_upload(
    sh: &Shared,
    name: &str,
    id: &str,
    digest: Option<String>,
    body: Body,
) -> Response {
    let Some(d) = digest else {
        return error(
            StatusCode::BAD_REQUEST,
            "DIGEST_INVALID",
            "finishing an upload needs ?digest=",
        );
    };
    if let Err(bad) = route::check_digest(&d) {
        return error(StatusCode::BAD_REQUEST, bad.code, bad.message);
    }
    let Some(up) = sh.blobs.upload(id) else {
        return error(
            StatusCode::NOT_FOUND,
            "BLOB_UPLOAD_UNKNOWN",
            "no such upload",
        );
    };
    // The last chunk may come with the PUT.
    let appended = blobs::append(&mut *up.lock().await, body.into_data_stream()).await;
    if let Err(e) = appended {
        sh.blobs.cancel(id);
        return error(
            StatusCode::BAD_REQUEST,
            "BLOB_UPLOAD_INVALID",
            e.to_string(),
        );
    }
    match sh.blobs.finish(id, &d).await {
        Ok(_) => blob_created(name, &d),
        Err(e) => finish_failed(e, &d),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_as_http_words_them() {
        assert_eq!(byte_range("bytes=0-9", 100), Some((0, 9)));
        assert_eq!(byte_range("bytes=90-", 100), Some((90, 99)));
        assert_eq!(byte_range("bytes=-10", 100), Some((90, 99)));
        assert_eq!(byte_range("bytes=50-500", 100), Some((50, 99)));
        assert_eq!(byte_range("bytes=100-", 100), None);
        assert_eq!(byte_range("bytes=5-1", 100), None);
        assert_eq!(byte_range("bytes=0-1,5-6", 100), None);
        assert_eq!(byte_range("items=0-1", 100), None);
        assert_eq!(range_start("0-99"), Some(0));
        assert_eq!(range_start("bytes 100-199/*"), Some(100));
        assert_eq!(range_start("x"), None);
    }

    #[test]
    fn queries_are_decoded() {
        let q = "mount=sha256%3Aab&from=shop%2Fweb&n=";
        assert_eq!(query_value(q, "mount").as_deref(), Some("sha256:ab"));
        assert_eq!(query_value(q, "from").as_deref(), Some("shop/web"));
        assert_eq!(query_value(q, "n").as_deref(), Some(""));
        assert_eq!(query_value(q, "digest"), None);
        assert_eq!(percent_decode("%zz%4"), "%zz%4");
    }

    #[test]
    fn only_manifest_writes_go_to_the_leader() {
        assert!(is_state_write(&Method::PUT, "/v2/a/b/manifests/v1"));
        assert!(is_state_write(&Method::DELETE, "/v2/a/manifests/v1"));
        assert!(!is_state_write(&Method::GET, "/v2/a/manifests/v1"));
        assert!(!is_state_write(&Method::PUT, "/v2/a/blobs/uploads/x"));
        assert!(!is_state_write(&Method::PUT, "/v1/stacks/x"));
    }
}
