//! Managers joining the group, and its membership: `gantry server --join`
//! on the new manager's side; the leader's side signs it a manager
//! certificate, gives it the data key, and adds it as a learner, then as
//! a voter once it has caught up (one change at a time, through the log).

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{Path as UrlPath, State};
use axum::http::StatusCode;
use axum::{Extension, Json};
use openraft::{BasicNode, ChangeMembers};
use serde::{Deserialize, Serialize};

use gantry_api::{ApiError, Client, ManagerView};
use gantry_pki::{ClusterCa, Issued, JoinToken, Role};
use gantry_store::{Command, MemberId};

use crate::api::{bad, Client as From, Fail, JsonBody, Peer};
use crate::{ServerError, Shared};

/// A manager's credential: the CA's certificate, its own certificate and
/// key. Written by a join (before the state, and the cluster CA, reach
/// it) and at every start; used when the state at start does not hold
/// the CA yet (it comes with the log's replay).
pub(crate) const CREDENTIAL_FILE: &str = "credential.json";
/// This manager's id in the group.
const MEMBER_FILE: &str = "member-id";
/// Metadata key of a member's hostname (`manager.ID.hostname`).
pub(crate) fn hostname_key(id: MemberId) -> String {
    format!("manager.{id}.hostname")
}

/// This manager's id in the group: made once, kept in the data dir (a
/// manager whose disk was lost comes back as a new member).
pub(crate) fn member_id(dir: &Path) -> Result<MemberId, ServerError> {
    let path = dir.join(MEMBER_FILE);
    match std::fs::read_to_string(&path) {
        Ok(s) => s
            .trim()
            .parse()
            .map_err(|_| ServerError::Config(format!("{}: not a member id", path.display()))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let id = loop {
                let id: u64 = rand::random();
                if id != 0 {
                    break id;
                }
            };
            std::fs::write(&path, format!("{id}\n"))
                .map_err(|e| ServerError::Io(format!("write {}", path.display()), e))?;
            Ok(id)
        }
        Err(e) => Err(ServerError::Io(format!("read {}", path.display()), e)),
    }
}

/// A manager's join request.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct ManagerJoin {
    token: String,
    csr_pem: String,
    member: MemberId,
    /// Where the others reach it (`HOST:PORT`).
    addr: String,
    hostname: String,
}

/// The answer: its credential, and the data key's file as it is at rest
/// on the leader (sealed under autolock: the new manager is then locked
/// until `gantry unlock`).
#[derive(Serialize, Deserialize)]
pub(crate) struct ManagerJoined {
    ca_pem: String,
    cert_pem: String,
    key_file: String,
    key: String,
}

#[derive(Serialize, Deserialize)]
struct Credential {
    ca_pem: String,
    cert_pem: String,
    key_pem: String,
}

/// Joins the managers at `to` with a manager token: checks the CA against
/// the token before trusting anything, then asks for a certificate for a
/// key made here. Writes the credential and the data key into `dir`.
pub(crate) async fn join(
    dir: &Path,
    to: &str,
    token: &str,
    me: MemberId,
    reach: &str,
    hostname: &str,
) -> Result<(), ServerError> {
    let err = |e: String| ServerError::Config(format!("joining the managers at {to}: {e}"));
    let parsed = JoinToken::parse(token).map_err(|e| err(e.to_string()))?;
    let fetch = Client::new(to, gantry_pki::fetch_ca_config()?).map_err(|e| err(e.to_string()))?;
    let bundle: String = fetch.get("/v1/ca").await.map_err(|e| err(e.to_string()))?;
    // Only the root the token names is trusted (the bundle came over a
    // connection nothing verified).
    let ca_pem =
        gantry_pki::pick_by_fingerprint(&bundle, &parsed.ca_fingerprint).ok_or_else(|| {
            err("its CA does not match the token's fingerprint: another cluster".into())
        })?;
    let ca = ClusterCa::from_pem("", &ca_pem, "");
    let anon = Client::new(to, ca.client_config_anonymous()?).map_err(|e| err(e.to_string()))?;
    let (key_pem, csr_pem) = gantry_pki::new_request()?;
    let resp: ManagerJoined = anon
        .post(
            "/v1/managers/join",
            &ManagerJoin {
                token: token.trim().to_owned(),
                csr_pem,
                member: me,
                addr: reach.to_owned(),
                hostname: hostname.to_owned(),
            },
        )
        .await
        .map_err(|e| match e {
            ApiError::Status { message, .. } => err(message),
            e => err(e.to_string()),
        })?;
    if ![crate::unlock::PLAIN, crate::unlock::LOCKED].contains(&resp.key_file.as_str()) {
        return Err(err(format!("unknown data key file {:?}", resp.key_file)));
    }
    crate::unlock::write_private(&dir.join(&resp.key_file), resp.key.as_bytes())?;
    save_credential(
        dir,
        &resp.ca_pem,
        &Issued {
            cert_pem: resp.cert_pem,
            key_pem,
        },
    )?;
    tracing::info!(%to, member = me, "joined the managers: waiting for the state");
    Ok(())
}

/// Keeps this manager's credential (0600): what it trusts (PEM roots) and
/// presents.
pub(crate) fn save_credential(dir: &Path, trust_pem: &str, me: &Issued) -> Result<(), ServerError> {
    let path = dir.join(CREDENTIAL_FILE);
    gantry_api::write_secret(
        &path,
        &Credential {
            ca_pem: trust_pem.to_owned(),
            cert_pem: me.cert_pem.clone(),
            key_pem: me.key_pem.clone(),
        },
    )
    .map_err(|e| ServerError::Io(format!("write {}", path.display()), e))
}

/// The credential kept last (by a join or a start): the roots trusted
/// (PEM) and the certificate.
pub(crate) fn credential(dir: &Path) -> Result<(String, Issued), ServerError> {
    let path = dir.join(CREDENTIAL_FILE);
    let text = std::fs::read(&path).map_err(|e| {
        ServerError::Io(
            format!(
                "{} (this manager neither holds a cluster nor joined one: give --join ADDR --token TOKEN)",
                path.display()
            ),
            e,
        )
    })?;
    let c: Credential = serde_json::from_slice(&text)
        .map_err(|e| ServerError::Config(format!("{}: {e}", path.display())))?;
    Ok((
        c.ca_pem,
        Issued {
            cert_pem: c.cert_pem,
            key_pem: c.key_pem,
        },
    ))
}

/// `POST /v1/managers/join` (anonymous, on the leader: followers forward).
pub(crate) async fn manager_join(
    State(sh): State<Arc<Shared>>,
    Extension(From(from)): Extension<From>,
    JsonBody(req): JsonBody<ManagerJoin>,
) -> Result<Json<ManagerJoined>, Fail> {
    crate::api::join_allowed(&sh, from)?;
    let refuse = |sh: &Shared| {
        sh.joins.failed(from, Instant::now());
        Fail(
            StatusCode::FORBIDDEN,
            "invalid manager join token: get the current one with `gantry join-token manager`"
                .into(),
        )
    };
    let Ok(token) = JoinToken::parse(&req.token) else {
        return Err(refuse(&sh));
    };
    let ca = sh.ca();
    let stored = sh.meta(crate::MANAGER_TOKEN_HASH_KEY).unwrap_or_default();
    if token.ca_fingerprint != ca.fingerprint().unwrap_or_default() || !token.matches(&stored) {
        tracing::warn!(%from, hostname = %req.hostname, "manager join refused: wrong token");
        return Err(refuse(&sh));
    }
    sh.joins.succeeded(from);
    if req.member == 0 || !gantry_api::has_port(&req.addr) {
        return Err(bad("a manager joins with its member id and HOST:PORT"));
    }
    let host = req
        .addr
        .rsplit_once(':')
        .map_or(req.addr.as_str(), |(h, _)| h)
        .trim_matches(|c| c == '[' || c == ']')
        .to_owned();
    let cert_pem = ca
        .sign_request_with(&req.csr_pem, "manager", Role::Manager, &[host])
        .map_err(|e| bad(format!("certificate request: {e}")))?;
    let dir = sh.cfg.data_dir.join("manager");
    let (key_file, key) = [crate::unlock::LOCKED, crate::unlock::PLAIN]
        .into_iter()
        .find_map(|f| Some((f.to_owned(), std::fs::read_to_string(dir.join(f)).ok()?)))
        .ok_or_else(|| Fail(StatusCode::INTERNAL_SERVER_ERROR, "no data key".into()))?;
    sh.apply(vec![Command::SetMeta {
        key: hostname_key(req.member),
        value: req.hostname.clone(),
    }])?;
    // Added once it answers and has caught up, in the background: the new
    // manager starts serving only after this answer.
    let member = req.member;
    let node = BasicNode::new(&req.addr);
    let raft = sh.raft.clone();
    let sh2 = sh.clone();
    tokio::spawn(async move {
        // One change of membership at a time (openraft refuses a second
        // while one is under way).
        let _turn = sh2.membership.lock().await;
        if let Err(e) = raft.add_learner(member, node, false).await {
            tracing::warn!(member, "adding the manager failed: {e}");
            return;
        }
        // A voter that cannot keep up would cost the group its quorum:
        // it votes only once it holds the log.
        if !caught_up(&raft, member, Duration::from_secs(120)).await {
            tracing::warn!(member, "the joining manager did not catch up within 120 s: it is removed (start it again with --join)");
            let _ = raft
                .change_membership(ChangeMembers::RemoveNodes(BTreeSet::from([member])), false)
                .await;
            return;
        }
        match raft
            .change_membership(ChangeMembers::AddVoterIds(BTreeSet::from([member])), false)
            .await
        {
            Ok(_) => tracing::info!(member, "a manager joined"),
            Err(e) => tracing::warn!(member, "making the manager a voter failed: {e}"),
        }
    });
    tracing::info!(member, addr = %req.addr, hostname = %req.hostname, "a manager is joining");
    Ok(Json(ManagerJoined {
        ca_pem: sh.trust_pem(),
        cert_pem,
        key_file,
        key,
    }))
}

/// Whether `member` holds the leader's log (within 10 entries) before
/// `within` is out.
async fn caught_up(raft: &crate::group::Raft, member: MemberId, within: Duration) -> bool {
    let mut m = raft.metrics();
    let deadline = tokio::time::Instant::now() + within;
    loop {
        {
            let now = m.borrow();
            let last = now.last_log_index.unwrap_or(0);
            let matched = now
                .replication
                .as_ref()
                .and_then(|r| r.get(&member).cloned().flatten())
                .map(|l| l.index);
            if matched.is_some_and(|i| i + 10 >= last) {
                return true;
            }
        }
        if tokio::time::timeout_at(deadline, m.changed())
            .await
            .is_err()
        {
            return false;
        }
    }
}

/// `GET /v1/managers`.
pub(crate) async fn ls(
    State(sh): State<Arc<Shared>>,
    Extension(peer): Extension<Peer>,
) -> Result<Json<Vec<ManagerView>>, Fail> {
    peer.node_or_admin()?;
    Ok(Json(sh.managers()))
}

#[derive(Deserialize)]
pub(crate) struct RoleChange {
    /// `voter` (promote), `learner` (demote) or `none` (remove).
    role: String,
}

/// `POST /v1/managers/{id}` `{"role": ...}`: promote, demote, remove. One
/// change at a time; demoting the leader makes the others elect one.
pub(crate) async fn set_role(
    State(sh): State<Arc<Shared>>,
    Extension(peer): Extension<Peer>,
    UrlPath(id): UrlPath<String>,
    JsonBody(req): JsonBody<RoleChange>,
) -> Result<Json<()>, Fail> {
    peer.admin()?;
    let id = sh
        .member_named(&id)
        .ok_or_else(|| Fail(StatusCode::NOT_FOUND, format!("no such manager: {id}")))?;
    let voters: BTreeSet<MemberId> = sh
        .raft
        .metrics()
        .borrow()
        .membership_config
        .membership()
        .voter_ids()
        .collect();
    let change = match req.role.as_str() {
        "voter" => ChangeMembers::AddVoterIds(BTreeSet::from([id])),
        "learner" | "none" => {
            if voters.contains(&id) && voters.len() == 1 {
                return Err(bad("the last manager cannot be demoted or removed"));
            }
            if req.role == "none" && !voters.contains(&id) {
                ChangeMembers::RemoveNodes(BTreeSet::from([id]))
            } else {
                ChangeMembers::RemoveVoters(BTreeSet::from([id]))
            }
        }
        r => return Err(bad(format!("role {r:?}: voter, learner or none"))),
    };
    let remove = req.role == "none";
    let _turn = sh.membership.lock().await;
    let r = sh.raft.change_membership(change, !remove).await;
    r.map_err(|e| Fail(StatusCode::SERVICE_UNAVAILABLE, e.to_string()))?;
    if remove && voters.contains(&id) {
        // Out of the voters, then out of the group.
        sh.raft
            .change_membership(ChangeMembers::RemoveNodes(BTreeSet::from([id])), false)
            .await
            .map_err(|e| Fail(StatusCode::SERVICE_UNAVAILABLE, e.to_string()))?;
    }
    drop(_turn);
    if id == sh.me && req.role != "voter" {
        // After the answer: the caller's request may have come through
        // another manager, which gives up on a leader that changes
        // before it answers.
        let sh = sh.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(200)).await;
            crate::group::step_down(&sh).await;
        });
    }
    Ok(Json(()))
}

impl Shared {
    /// Every member with its status, as this manager sees it.
    pub(crate) fn managers(&self) -> Vec<ManagerView> {
        let m = self.raft.metrics().borrow().clone();
        let members = m.membership_config.membership();
        let voters: BTreeSet<MemberId> = members.voter_ids().collect();
        let now = Instant::now();
        let seen = self.peers.seen();
        // The leader as `leader()` counts one (this manager only while a
        // quorum answers it).
        let leader = match self.leader() {
            crate::group::Leader::Me => Some(self.me),
            crate::group::Leader::At(_) => m.current_leader,
            crate::group::Leader::Unknown => None,
        };
        members
            .nodes()
            .map(|(id, n)| {
                let status = if leader == Some(*id) {
                    "Leader"
                } else if !voters.contains(id) {
                    "Learner"
                } else if *id == self.me
                    || seen
                        .get(id)
                        .is_some_and(|t| now.duration_since(*t) < std::time::Duration::from_secs(3))
                {
                    "Reachable"
                } else {
                    "Unreachable"
                };
                ManagerView {
                    id: id.to_string(),
                    addr: n.addr.clone(),
                    hostname: self.meta(&hostname_key(*id)).unwrap_or_default(),
                    status: status.into(),
                }
            })
            .collect()
    }

    /// The member `name` names: its id, or its host's name.
    fn member_named(&self, name: &str) -> Option<MemberId> {
        self.managers()
            .into_iter()
            .find(|m| m.id == name || m.hostname == name)
            .and_then(|m| m.id.parse().ok())
    }
}
