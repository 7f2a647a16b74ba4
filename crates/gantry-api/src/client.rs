//! The mutual-TLS client of the cluster API, and the admin credential the
//! CLI keeps in the user's config dir.

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use gantry_pki::{ClusterCa, Issued, JoinToken, MANAGER_NAME};

use crate::{JoinRequest, JoinResponse, NodeInfo, DEFAULT_PORT};

/// A request to the manager that failed.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The manager could not be reached or the connection broke.
    #[error("cannot reach the manager at {addr}: {msg}")]
    Unreachable {
        /// The address tried.
        addr: String,
        /// Why.
        msg: String,
    },
    /// The manager answered with an error.
    #[error("{message}")]
    Status {
        /// The HTTP status.
        status: u16,
        /// The manager's message.
        message: String,
    },
    /// Anything else (bad address, bad answer, TLS setup).
    #[error("{0}")]
    Other(String),
}

/// A join that could not be done.
#[derive(Debug, thiserror::Error)]
pub enum JoinError {
    /// The token does not parse.
    #[error(transparent)]
    Token(#[from] gantry_pki::PkiError),
    /// The manager's CA is not the one the token names.
    #[error("the manager at {0} belongs to another cluster: its CA does not match the join token's fingerprint")]
    WrongCluster(String),
    /// The API failed (the manager refused the token, ...).
    #[error(transparent)]
    Api(#[from] ApiError),
}

/// Whether `hostport` names a port (`HOST:PORT`, `[V6]:PORT`, `V4:PORT`).
pub fn has_port(hostport: &str) -> bool {
    hostport.parse::<SocketAddr>().is_ok()
        || hostport.rsplit_once(':').is_some_and(|(h, p)| {
            !h.is_empty() && !h.ends_with(':') && p.parse::<u16>().is_ok() && !h.contains(':')
        })
}

/// Parses `https://HOST:PORT`, `HOST:PORT` or `HOST` (default port).
pub fn resolve(manager: &str) -> Result<SocketAddr, ApiError> {
    let hostport = manager
        .trim()
        .trim_start_matches("https://")
        .trim_end_matches('/');
    let with_port = if has_port(hostport) {
        hostport.to_owned()
    } else if hostport.contains(':') && !hostport.starts_with('[') {
        format!("[{hostport}]:{DEFAULT_PORT}")
    } else {
        format!("{hostport}:{DEFAULT_PORT}")
    };
    with_port
        .to_socket_addrs()
        .map_err(|e| ApiError::Other(format!("manager address {manager:?}: {e}")))?
        .next()
        .ok_or_else(|| ApiError::Other(format!("manager address {manager:?} resolves to nothing")))
}

/// A client of the managers: it talks to one, and when that one cannot
/// be reached (nothing was sent) to the next it knows. It learns every
/// manager's address from their answers (`X-Gantry-Managers`), and waits
/// out an election (a 503 marked `X-Gantry-Retry`: nothing was proposed)
/// for up to [`ELECTION_WAIT`].
#[derive(Clone)]
pub struct Client {
    tls: rustls::ClientConfig,
    targets: Arc<Mutex<Vec<Target>>>,
    /// Every manager's address as learned, shared with [`Client::fork`]s.
    known: Arc<Mutex<Vec<String>>>,
    /// Whether it learns other managers and fails over to them (a client
    /// of one given manager, such as a manager's link to another, never
    /// does).
    roams: bool,
    /// Whether an answer came from a manager that could not confirm it
    /// was current (no leader: `X-Gantry-Stale`).
    stale: Arc<std::sync::atomic::AtomicBool>,
    /// The cluster's trust as the last answer named it
    /// (`X-Gantry-Trust`), shared with [`Client::fork`]s.
    trust_seen: Arc<tokio::sync::watch::Sender<String>>,
}

/// The header that marks an answer as possibly stale.
pub const STALE_HEADER: &str = "x-gantry-stale";

/// How long a connection to a manager may take before the next one is
/// tried.
const CONNECT_WAIT: Duration = Duration::from_millis(1500);

/// How long a request waits for the managers to elect a leader.
pub const ELECTION_WAIT: Duration = Duration::from_secs(10);

/// The header a manager names the roots it trusts in
/// ([`gantry_pki::trust_id`]): a client whose credential trusts others
/// renews it (a CA rotation).
pub const TRUST_HEADER: &str = "x-gantry-trust";

/// Sent by a node with its registry blob requests: the port its peers
/// fetch blobs from it on (it serves what it pulls).
pub const PEER_PORT_HEADER: &str = "x-gantry-peer-port";
/// Asks a manager for a blob itself, not another node's address.
pub const DIRECT_HEADER: &str = "x-gantry-direct";
/// On a manager's redirect to another node: the `IP:PORT` to connect to
/// (the URL names the node by its id, which its certificate carries).
pub const PEER_ADDR_HEADER: &str = "x-gantry-peer-addr";
/// The port a node serves its blobs to the others on, by default.
pub const DEFAULT_PEER_PORT: u16 = 4244;

/// The header a manager lists every manager's address in.
pub const MANAGERS_HEADER: &str = "x-gantry-managers";
/// The header that marks a 503 as safe to send again.
pub const RETRY_HEADER: &str = "x-gantry-retry";

/// One manager's connections.
#[derive(Clone)]
struct Target {
    name: String,
    addr: SocketAddr,
    http: reqwest::Client,
    stream: reqwest::Client,
    upload: reqwest::Client,
}

#[derive(Clone, Copy)]
enum Kind {
    Http,
    Stream,
    /// No time limit: the manager answers at the end of the work.
    Upload,
}

impl Target {
    fn new(name: &str, tls: &rustls::ClientConfig) -> Result<Self, ApiError> {
        let addr = resolve(name)?;
        let build = |timeout: Option<Option<Duration>>| {
            let mut b = reqwest::Client::builder()
                .tls_backend_preconfigured(tls.clone())
                .resolve(MANAGER_NAME, addr)
                // A manager's 307 (another node has a blob) is for the
                // caller to follow, with its own TLS to that node.
                .redirect(reqwest::redirect::Policy::none())
                .http1_only()
                .no_proxy()
                .connect_timeout(CONNECT_WAIT);
            b = match timeout {
                Some(Some(t)) => b.timeout(t),
                // Uploads: the manager answers only at their end.
                Some(None) => b,
                // Streams: the manager sends a line at least every 2 s.
                None => b.read_timeout(Duration::from_secs(6)),
            };
            b.build()
                .map_err(|e| ApiError::Other(format!("http client: {e}")))
        };
        Ok(Self {
            name: name.to_owned(),
            addr,
            http: build(Some(Some(Duration::from_secs(30))))?,
            stream: build(None)?,
            upload: build(Some(None))?,
        })
    }

    fn client(&self, kind: Kind) -> &reqwest::Client {
        match kind {
            Kind::Http => &self.http,
            Kind::Stream => &self.stream,
            Kind::Upload => &self.upload,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("https://{MANAGER_NAME}:{}{path}", self.addr.port())
    }

    fn unreachable(&self, e: reqwest::Error) -> ApiError {
        let mut msg = e.to_string();
        let mut src = std::error::Error::source(&e);
        while let Some(s) = src {
            msg = format!("{msg}: {s}");
            src = s.source();
        }
        if msg.contains("UnknownCA") || msg.contains("BadCertificate") {
            // Reached, and refused: every manager would say the same.
            return ApiError::Other(format!(
                "the manager at {} refused this credential (its CA is not the cluster's: after `gantry ca rotate`, take a current admin.json from a manager's host): {msg}",
                self.addr
            ));
        }
        ApiError::Unreachable {
            addr: self.addr.to_string(),
            msg,
        }
    }
}

#[derive(Deserialize)]
struct ErrorBody {
    message: String,
}

impl Client {
    /// A client of the manager at `manager` and of no other, over `tls`
    /// (which decides what this side presents and trusts).
    pub fn new(manager: &str, tls: rustls::ClientConfig) -> Result<Self, ApiError> {
        let mut c = Self::with_managers(manager, &[], tls)?;
        c.roams = false;
        Ok(c)
    }

    /// A client of `first`, then of `others` when it cannot be reached
    /// (addresses that do not resolve are left out).
    pub fn with_managers(
        first: &str,
        others: &[String],
        tls: rustls::ClientConfig,
    ) -> Result<Self, ApiError> {
        let mut targets = vec![Target::new(first, &tls)?];
        for o in others {
            if targets.iter().any(|t| &t.name == o) {
                continue;
            }
            if let Ok(t) = Target::new(o, &tls) {
                targets.push(t);
            }
        }
        let known = targets.iter().map(|t| t.name.clone()).collect();
        Ok(Self {
            tls,
            targets: Arc::new(Mutex::new(targets)),
            known: Arc::new(Mutex::new(known)),
            roams: true,
            stale: Arc::default(),
            trust_seen: Arc::new(tokio::sync::watch::channel(String::new()).0),
        })
    }

    /// A client with connections of its own (for another runtime, such as
    /// the agent's heartbeat thread) that shares what this one learns of
    /// the managers.
    pub fn fork(&self) -> Result<Self, ApiError> {
        let names = self.managers();
        let mut targets = Vec::new();
        for n in &names {
            if let Ok(t) = Target::new(n, &self.tls) {
                targets.push(t);
            }
        }
        if targets.is_empty() {
            return Err(ApiError::Other("no manager address resolves".into()));
        }
        Ok(Self {
            tls: self.tls.clone(),
            targets: Arc::new(Mutex::new(targets)),
            known: self.known.clone(),
            roams: self.roams,
            stale: Arc::default(),
            trust_seen: self.trust_seen.clone(),
        })
    }

    /// A client with the admin credential (of `manager` if given, else of
    /// the credential's managers).
    pub fn admin(cfg: &AdminConfig, manager: Option<&str>) -> Result<Self, ApiError> {
        let ca = ClusterCa::from_pem("", &cfg.ca_pem, "");
        let me = Issued {
            cert_pem: cfg.cert_pem.clone(),
            key_pem: cfg.key_pem.clone(),
        };
        let tls = ca
            .client_config(&me)
            .map_err(|e| ApiError::Other(format!("admin credential: {e}")))?;
        Self::with_managers(manager.unwrap_or(&cfg.manager), &cfg.managers, tls)
    }

    /// Every manager this client (or a fork of it) knows.
    pub fn managers(&self) -> Vec<String> {
        self.known.lock().expect("known lock").clone()
    }

    /// Whether an answer so far came from a manager that could not confirm
    /// it was current (no manager led then).
    pub fn was_stale(&self) -> bool {
        self.stale.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The cluster's trust as the managers' answers name it (empty before
    /// the first answer): it changes when the cluster's CA rotates.
    pub fn trust_seen(&self) -> tokio::sync::watch::Receiver<String> {
        self.trust_seen.subscribe()
    }

    /// The manager it talks to first (the last that answered).
    pub fn current(&self) -> String {
        self.targets.lock().expect("targets lock")[0].name.clone()
    }

    /// The address of the manager it talks to.
    pub fn addr(&self) -> SocketAddr {
        self.targets.lock().expect("targets lock")[0].addr
    }

    /// Takes in the managers an answer lists.
    fn learn(&self, resp: &reqwest::Response) {
        if resp.headers().contains_key(STALE_HEADER) {
            self.stale.store(true, std::sync::atomic::Ordering::Relaxed);
        }
        if let Some(t) = resp
            .headers()
            .get(TRUST_HEADER)
            .and_then(|v| v.to_str().ok())
        {
            self.trust_seen.send_if_modified(|cur| {
                let changed = cur != t;
                if changed {
                    t.clone_into(cur);
                }
                changed
            });
        }
        if !self.roams {
            return;
        }
        let Some(list) = resp
            .headers()
            .get(MANAGERS_HEADER)
            .and_then(|v| v.to_str().ok())
        else {
            return;
        };
        let mut known = self.known.lock().expect("known lock");
        for name in list.split(',').map(str::trim).filter(|n| !n.is_empty()) {
            if !known.iter().any(|k| k == name) {
                known.push(name.to_owned());
            }
        }
    }

    /// The targets to try, the ones learned (here or by a fork) added.
    fn targets(&self) -> Vec<Target> {
        let known = self.managers();
        let mut targets = self.targets.lock().expect("targets lock");
        for name in known {
            if !targets.iter().any(|t| t.name == name) {
                if let Ok(t) = Target::new(&name, &self.tls) {
                    targets.push(t);
                }
            }
        }
        targets.clone()
    }

    /// Sends a request built by `build` to the managers in turn until one
    /// is reached; the one that answered is tried first next time.
    async fn send(
        &self,
        kind: Kind,
        path: &str,
        build: impl Fn(&reqwest::Client, String) -> reqwest::RequestBuilder,
    ) -> Result<reqwest::Response, ApiError> {
        let deadline = std::time::Instant::now() + ELECTION_WAIT;
        let mut pause = Duration::from_millis(100);
        loop {
            let targets = self.targets();
            let mut last = None;
            let mut answered = None;
            for (i, t) in targets.iter().enumerate() {
                match build(t.client(kind), t.url(path)).send().await {
                    Ok(resp) => {
                        answered = Some((i, resp));
                        break;
                    }
                    // Not connected: nothing was sent, the next may answer.
                    Err(e) if e.is_connect() => last = Some(t.unreachable(e)),
                    Err(e) => return Err(t.unreachable(e)),
                }
            }
            let Some((i, resp)) = answered else {
                return Err(last.expect("at least one manager"));
            };
            if i > 0 {
                let mut ts = self.targets.lock().expect("targets lock");
                if let Some(pos) = ts.iter().position(|t| t.name == targets[i].name) {
                    let t = ts.remove(pos);
                    ts.insert(0, t);
                }
            }
            self.learn(&resp);
            let retry = resp.status() == reqwest::StatusCode::SERVICE_UNAVAILABLE
                && resp.headers().contains_key(RETRY_HEADER);
            if retry && std::time::Instant::now() + pause < deadline {
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_millis(400));
                continue;
            }
            return Ok(resp);
        }
    }

    fn unreachable(&self, e: reqwest::Error) -> ApiError {
        let t = self.targets.lock().expect("targets lock")[0].clone();
        t.unreachable(e)
    }

    async fn check(&self, resp: reqwest::Response) -> Result<reqwest::Response, ApiError> {
        let status = resp.status();
        if status.is_success() {
            return Ok(resp);
        }
        let body = resp.bytes().await.unwrap_or_default();
        let message = serde_json::from_slice::<ErrorBody>(&body)
            .map(|b| b.message)
            .unwrap_or_else(|_| {
                format!(
                    "manager answered {status}: {}",
                    String::from_utf8_lossy(&body).trim()
                )
            });
        Err(ApiError::Status {
            status: status.as_u16(),
            message,
        })
    }

    async fn json<T: DeserializeOwned>(&self, resp: reqwest::Response) -> Result<T, ApiError> {
        let resp = self.check(resp).await?;
        let body = resp.bytes().await.map_err(|e| self.unreachable(e))?;
        serde_json::from_slice(&body)
            .map_err(|e| ApiError::Other(format!("the manager's answer does not parse: {e}")))
    }

    /// `GET path`.
    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, ApiError> {
        let resp = self.send(Kind::Http, path, |c, u| c.get(u)).await?;
        self.json(resp).await
    }

    /// `POST path` with a JSON body.
    pub async fn post<B: Serialize + ?Sized, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> Result<T, ApiError> {
        let resp = self
            .send(Kind::Http, path, |c, u| c.post(u).json(body))
            .await?;
        self.json(resp).await
    }

    /// `POST path` for work that takes as long as it takes (a backup, a
    /// restore): no time limit on the answer.
    pub async fn post_long<B: Serialize + ?Sized, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> Result<T, ApiError> {
        let resp = self
            .send(Kind::Upload, path, |c, u| c.post(u).json(body))
            .await?;
        self.json(resp).await
    }

    /// `DELETE path`.
    pub async fn delete<T: DeserializeOwned>(&self, path: &str) -> Result<T, ApiError> {
        let resp = self.send(Kind::Http, path, |c, u| c.delete(u)).await?;
        self.json(resp).await
    }

    /// `GET path` as a stream of JSON lines: `f` gets each value (blank
    /// keep-alive lines are skipped) and returns false to stop. Returns
    /// when the stream ends or breaks.
    pub async fn watch<T: DeserializeOwned>(
        &self,
        path: &str,
        mut f: impl FnMut(T) -> bool,
    ) -> Result<(), ApiError> {
        let mut bad = None;
        self.watch_raw(path, |lines| {
            for line in lines.split(|b| *b == b'\n') {
                if line.iter().all(u8::is_ascii_whitespace) {
                    continue;
                }
                match serde_json::from_slice(line) {
                    Ok(v) => {
                        if !f(v) {
                            return false;
                        }
                    }
                    Err(e) => {
                        bad = Some(ApiError::Other(format!(
                            "the manager's stream does not parse: {e}"
                        )));
                        return false;
                    }
                }
            }
            true
        })
        .await?;
        bad.map_or(Ok(()), Err)
    }

    /// `GET path` as a stream of lines: `f` gets the complete lines of
    /// each chunk received, newlines included (so that a fast stream is
    /// parsed in place and written out in batches), and returns false to
    /// stop.
    pub async fn watch_raw(
        &self,
        path: &str,
        mut f: impl FnMut(&[u8]) -> bool,
    ) -> Result<(), ApiError> {
        let resp = self.send(Kind::Stream, path, |c, u| c.get(u)).await?;
        let mut resp = self.check(resp).await?;
        let mut buf: Vec<u8> = Vec::new();
        while let Some(chunk) = resp.chunk().await.map_err(|e| self.unreachable(e))? {
            // Only the new bytes are searched for the end of a line: a
            // long line (a whole set) is not scanned again for each chunk.
            let Some(end) = chunk.iter().rposition(|b| *b == b'\n') else {
                buf.extend_from_slice(&chunk);
                continue;
            };
            let last = buf.len() + end;
            buf.extend_from_slice(&chunk);
            let go_on = f(&buf[..=last]);
            buf.drain(..=last);
            if !go_on {
                return Ok(());
            }
        }
        Ok(())
    }

    /// `POST path` with a body streamed from `body` (until its senders are
    /// gone); returns when the manager has answered.
    pub async fn post_stream(
        &self,
        path: &str,
        body: tokio::sync::mpsc::Receiver<Vec<u8>>,
    ) -> Result<(), ApiError> {
        let chunks = futures::stream::unfold(body, |mut rx| async move {
            rx.recv().await.map(|b| (Ok::<_, std::io::Error>(b), rx))
        });
        // The body goes once: to the manager the client talks to.
        let t = self.targets.lock().expect("targets lock")[0].clone();
        let resp = t
            .upload
            .post(t.url(path))
            .body(reqwest::Body::wrap_stream(chunks))
            .send()
            .await
            .map_err(|e| t.unreachable(e))?;
        self.check(resp).await?;
        Ok(())
    }

    /// `POST path` with `body` (sent once, to the manager the client
    /// talks to, with no time limit: a build), its answer read as lines:
    /// `f` gets the complete lines of each chunk, and returns false to
    /// stop.
    pub async fn post_lines(
        &self,
        path: &str,
        headers: reqwest::header::HeaderMap,
        body: reqwest::Body,
        mut f: impl FnMut(&[u8]) -> bool,
    ) -> Result<(), ApiError> {
        let t = self.targets.lock().expect("targets lock")[0].clone();
        let resp = t
            .upload
            .post(t.url(path))
            .headers(headers)
            .body(body)
            .send()
            .await
            .map_err(|e| t.unreachable(e))?;
        self.learn(&resp);
        let mut resp = self.check(resp).await?;
        let mut buf: Vec<u8> = Vec::new();
        while let Some(chunk) = resp.chunk().await.map_err(|e| t.unreachable(e))? {
            buf.extend_from_slice(&chunk);
            let Some(end) = buf.iter().rposition(|b| *b == b'\n') else {
                continue;
            };
            let go_on = f(&buf[..=end]);
            buf.drain(..=end);
            if !go_on {
                return Ok(());
            }
        }
        Ok(())
    }

    /// A request to the cluster's registry (`/v2/...`), sent to the
    /// managers in turn until one is reached; the answer whatever its
    /// status, its body unread. Reads wait at most 6 s between reads;
    /// uploads as long as the manager takes to store them (a big blob is
    /// hashed and synced before the answer).
    pub async fn registry(
        &self,
        method: reqwest::Method,
        path: &str,
        headers: reqwest::header::HeaderMap,
        body: Vec<u8>,
    ) -> Result<reqwest::Response, ApiError> {
        let body = bytes::Bytes::from(body);
        let kind = if matches!(method, reqwest::Method::GET | reqwest::Method::HEAD) {
            Kind::Stream
        } else {
            Kind::Upload
        };
        self.send(kind, path, |c, u| {
            c.request(method.clone(), u)
                .headers(headers.clone())
                .body(body.clone())
        })
        .await
    }

    /// Sends a request on as it came (another manager's, to the leader):
    /// `path` with its query, the headers given, the body streamed; the
    /// answer comes back whatever its status, its body unread. A request
    /// that could not be sent (no connection) is `Unreachable`; one that
    /// failed after is `Other`.
    pub async fn forward(
        &self,
        method: reqwest::Method,
        path: &str,
        headers: reqwest::header::HeaderMap,
        body: reqwest::Body,
    ) -> Result<reqwest::Response, ApiError> {
        let t = self.targets.lock().expect("targets lock")[0].clone();
        t.upload
            .request(method, t.url(path))
            .headers(headers)
            .body(body)
            .send()
            .await
            .map_err(|e| {
                if e.is_connect() {
                    t.unreachable(e)
                } else {
                    ApiError::Other(t.unreachable(e).to_string())
                }
            })
    }

    /// Joins the cluster of `token` at `manager`: fetches the manager's CA
    /// and checks it against the token's fingerprint before trusting
    /// anything, then sends a certificate request for a key made here.
    /// Returns the manager's answer and the node's private key (PEM).
    pub async fn join(
        manager: &str,
        token: &str,
        info: NodeInfo,
    ) -> Result<(JoinResponse, String), JoinError> {
        let parsed = JoinToken::parse(token)?;
        let fetch = Self::new(manager, gantry_pki::fetch_ca_config()?)?;
        let bundle: String = fetch.get("/v1/ca").await?;
        // Only the root the token names is trusted (the bundle came over
        // a connection nothing verified).
        let ca_pem = gantry_pki::pick_by_fingerprint(&bundle, &parsed.ca_fingerprint)
            .ok_or_else(|| JoinError::WrongCluster(fetch.addr().to_string()))?;
        let ca = ClusterCa::from_pem("", &ca_pem, "");
        let anon = Self::new(manager, ca.client_config_anonymous()?)?;
        let (key_pem, csr_pem) = gantry_pki::new_request()?;
        let resp: JoinResponse = anon
            .post(
                "/v1/join",
                &JoinRequest {
                    token: token.trim().to_owned(),
                    csr_pem,
                    info,
                },
            )
            .await?;
        Ok((resp, key_pem))
    }
}

/// The CLI's credential: the manager's address, the cluster CA and an
/// admin certificate. Made by the manager at init; kept 0600 in
/// `$GANTRY_CONFIG_DIR` or `$XDG_CONFIG_HOME/gantry` or `~/.config/gantry`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AdminConfig {
    /// `HOST:PORT` of the manager.
    pub manager: String,
    /// Every manager's `HOST:PORT`, tried in turn when `manager` cannot be
    /// reached (kept current from the managers' answers).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub managers: Vec<String>,
    /// The cluster CA certificate.
    pub ca_pem: String,
    /// The admin certificate.
    pub cert_pem: String,
    /// Its key.
    pub key_pem: String,
}

impl AdminConfig {
    /// The user's config dir for Gantry.
    pub fn dir() -> PathBuf {
        if let Some(d) = std::env::var_os("GANTRY_CONFIG_DIR") {
            return PathBuf::from(d);
        }
        if let Some(d) = std::env::var_os("XDG_CONFIG_HOME") {
            return PathBuf::from(d).join("gantry");
        }
        let home = std::env::var_os("HOME").unwrap_or_else(|| "/root".into());
        PathBuf::from(home).join(".config/gantry")
    }

    /// The credential file in `dir`.
    pub fn path_in(dir: &Path) -> PathBuf {
        dir.join("admin.json")
    }

    /// Loads the credential from `dir`.
    pub fn load(dir: &Path) -> Result<Self, String> {
        let p = Self::path_in(dir);
        let text = std::fs::read(&p).map_err(|e| {
            format!(
                "no admin credential at {} ({e}): start a manager with `gantry server` on this host, \
                 or copy its admin.json here",
                p.display()
            )
        })?;
        serde_json::from_slice(&text).map_err(|e| format!("{}: {e}", p.display()))
    }

    /// Saves the credential in `dir`, readable by its owner only.
    pub fn save(&self, dir: &Path) -> std::io::Result<()> {
        write_secret(&Self::path_in(dir), self)
    }
}

/// Writes `value` as JSON to `path`, readable by its owner only, whole or
/// not at all (temp file, fsync, rename): credentials and keys.
pub fn write_secret<T: Serialize>(path: &Path, value: &T) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    if let Some(d) = path.parent() {
        use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(d)?;
        std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o700))?;
    }
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .mode(0o600)
        .open(&tmp)?;
    f.write_all(&serde_json::to_vec_pretty(value).map_err(std::io::Error::other)?)?;
    f.sync_all()?;
    std::fs::rename(tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manager_addresses_take_the_default_port() {
        assert_eq!(
            resolve("127.0.0.1").unwrap(),
            "127.0.0.1:4243".parse().unwrap()
        );
        assert_eq!(
            resolve("https://10.1.2.3:99/").unwrap(),
            "10.1.2.3:99".parse().unwrap()
        );
        assert_eq!(resolve("[::1]:5").unwrap(), "[::1]:5".parse().unwrap());
        assert_eq!(resolve("::1").unwrap(), "[::1]:4243".parse().unwrap());
        assert!(resolve("no such host.invalid:1").is_err());
    }
}
