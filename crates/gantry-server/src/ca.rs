//! The cluster CA's rotation (`gantry ca rotate`), as Swarm's, and the
//! renewal of this manager's own certificate.
//!
//! A rotation makes a new root and has the old one sign it (the cross
//! certificate). From then on every certificate is issued by the new CA
//! and handed out followed by the cross certificate, so that a peer that
//! still trusts only the old root verifies it; every manager trusts both
//! roots. Managers renew their own certificates as soon as they apply the
//! rotation; nodes and the CLI see the cluster's trust change in the
//! answers' `X-Gantry-Trust` and renew theirs. Once every node and manager
//! holds a certificate of the new CA, the leader drops the old root: from
//! the next handshake on, a certificate of the old CA is refused
//! everywhere. Nothing restarts and no connection is cut.
//!
//! The state keeps it all as cluster metadata, replicated as every write:
//! `ca_cert`/`ca_key` (the issuing CA), [`CROSS_KEY`], [`TRUST_KEY`] (the
//! roots, new first), [`ROTATION_KEY`] and one [`RENEWED_PREFIX`] key per
//! node or manager that renewed.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::{Extension, Json};
use gantry_api::{CaRotation, CaStatus, ManagerView, RenewRequest, RenewResponse};
use gantry_pki::Role;
use gantry_store::Command;
use serde::{Deserialize, Serialize};

use crate::api::{bad, Fail, JsonBody, Peer};
use crate::group::Leader;
use crate::{join, now_ms, setup, Shared};

/// The cross certificate (PEM) that follows every certificate issued
/// during a rotation.
pub(crate) const CROSS_KEY: &str = "ca_cross";
/// The roots trusted (PEM) while a rotation is under way; absent, the
/// issuing CA alone.
pub(crate) const TRUST_KEY: &str = "ca_trust";
/// When the rotation under way started (ms since the epoch).
const ROTATION_KEY: &str = "ca_rotation";
/// The CA a rotation replaces (its fingerprint).
const FROM_KEY: &str = "ca_rotation_from";
/// `ca_renewed.<node id>` and `ca_renewed.manager.<member>`: who holds a
/// certificate of the new CA (the CA's fingerprint).
const RENEWED_PREFIX: &str = "ca_renewed.";

fn manager_key(member: u64) -> String {
    format!("{RENEWED_PREFIX}manager.{member}")
}

fn node_key(id: &str) -> String {
    format!("{RENEWED_PREFIX}{id}")
}

fn set(key: impl Into<String>, value: impl Into<String>) -> Command {
    Command::SetMeta {
        key: key.into(),
        value: value.into(),
    }
}

impl Shared {
    /// The roots every peer of the cluster is to trust (PEM).
    pub(crate) fn trust_pem(&self) -> String {
        self.read(|s| {
            s.meta
                .get(TRUST_KEY)
                .or_else(|| s.meta.get("ca_cert"))
                .cloned()
                .unwrap_or_default()
        })
    }

    /// The command that records that a node (or, with `manager:`, a
    /// manager) holds a certificate of the issuing CA, while a rotation is
    /// under way and it is not recorded yet.
    pub(crate) fn renewed(&self, who: &str) -> Option<Command> {
        self.read(|s| {
            s.meta.get(ROTATION_KEY)?;
            let fp = gantry_pki::fingerprint(s.meta.get("ca_cert")?).ok()?;
            let key = node_key(who);
            (s.meta.get(&key) != Some(&fp)).then(|| set(key, fp))
        })
    }
}

/// How the rotation stands, if one is under way.
fn rotation(sh: &Shared, managers: &[ManagerView]) -> Option<CaRotation> {
    sh.read(|s| {
        let started_ms = s.meta.get(ROTATION_KEY)?.parse().ok()?;
        let fp = gantry_pki::fingerprint(s.meta.get("ca_cert")?).ok()?;
        let done = |key: &str| s.meta.get(key) == Some(&fp);
        let mut waiting = Vec::new();
        for n in s.nodes.values() {
            if !done(&node_key(&n.id)) {
                let down = if n.up { "" } else { " (down)" };
                waiting.push(format!("node {}{down}", n.hostname));
            }
        }
        for m in managers {
            let renewed = m.id.parse().is_ok_and(|id| done(&manager_key(id)));
            if !renewed {
                let away = if m.status == "Unreachable" {
                    " (unreachable)"
                } else {
                    ""
                };
                waiting.push(format!("manager {}{away}", m.hostname));
            }
        }
        let total = s.nodes.len() + managers.len();
        Some(CaRotation {
            started_ms,
            from: s.meta.get(FROM_KEY).cloned().unwrap_or_default(),
            total,
            renewed: total - waiting.len(),
            waiting,
        })
    })
}

fn status(sh: &Shared) -> Result<CaStatus, Fail> {
    let internal = |e: gantry_pki::PkiError| Fail(StatusCode::INTERNAL_SERVER_ERROR, e.to_string());
    let trusted = gantry_pki::split_pem(&sh.trust_pem())
        .iter()
        .map(|c| gantry_pki::fingerprint(c))
        .collect::<Result<_, _>>()
        .map_err(internal)?;
    Ok(CaStatus {
        fingerprint: sh.ca().fingerprint().map_err(internal)?,
        trusted,
        rotation: rotation(sh, &sh.managers()),
    })
}

/// `GET /v1/ca/status`.
pub(crate) async fn show(
    State(sh): State<Arc<Shared>>,
    Extension(peer): Extension<Peer>,
) -> Result<Json<CaStatus>, Fail> {
    peer.admin()?;
    Ok(Json(status(&sh)?))
}

/// `POST /v1/ca/rotate`: starts a rotation. The join tokens change with
/// the CA (they name it), as Swarm's do.
pub(crate) async fn rotate(
    State(sh): State<Arc<Shared>>,
    Extension(peer): Extension<Peer>,
) -> Result<Json<CaStatus>, Fail> {
    peer.admin()?;
    if let Some(r) = rotation(&sh, &sh.managers()) {
        return Err(Fail(
            StatusCode::CONFLICT,
            format!(
                "a CA rotation is under way ({} of {} renewed; waiting for {}): `gantry ca inspect` shows it",
                r.renewed,
                r.total,
                r.waiting.join(", ")
            ),
        ));
    }
    let internal = |e: gantry_pki::PkiError| Fail(StatusCode::INTERNAL_SERVER_ERROR, e.to_string());
    let old = sh.ca();
    let (new, cross) = old.rotate().map_err(internal)?;
    let from = old.fingerprint().map_err(internal)?;
    let mut cmds = vec![
        set("ca_cert", new.cert_pem()),
        set("ca_key", new.key_pem()),
        set(CROSS_KEY, cross),
        set(
            TRUST_KEY,
            format!("{}\n{}\n", new.cert_pem().trim(), old.cert_pem().trim()),
        ),
        set(ROTATION_KEY, now_ms().to_string()),
        set(FROM_KEY, from.clone()),
    ];
    cmds.extend(crate::new_join_token(&new).map_err(internal)?.1);
    cmds.extend(crate::new_manager_token(&new).map_err(internal)?.1);
    sh.apply(cmds)?;
    tracing::info!(%from, to = %new.fingerprint().unwrap_or_default(), "the cluster CA rotates");
    Ok(Json(status(&sh)?))
}

/// `POST /v1/admin/renew`: the admin credential, issued again by the
/// current CA for a key the CLI made.
pub(crate) async fn admin_renew(
    State(sh): State<Arc<Shared>>,
    Extension(peer): Extension<Peer>,
    JsonBody(req): JsonBody<RenewRequest>,
) -> Result<Json<RenewResponse>, Fail> {
    peer.admin()?;
    let cert_pem = sh
        .ca()
        .sign_request(&req.csr_pem, "admin", Role::Admin)
        .map_err(|e| bad(format!("certificate request: {e}")))?;
    Ok(Json(RenewResponse {
        cert_pem,
        ca_pem: sh.trust_pem(),
    }))
}

/// A manager's word that it holds a certificate of the CA named.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct ManagerRenewed {
    member: u64,
    fingerprint: String,
}

/// `POST /v1/managers/renewed`, from another manager (to the leader).
pub(crate) async fn manager_renewed(
    State(sh): State<Arc<Shared>>,
    Extension(peer): Extension<Peer>,
    JsonBody(req): JsonBody<ManagerRenewed>,
) -> Result<Json<()>, Fail> {
    peer.manager()?;
    record_manager(&sh, req.member, &req.fingerprint)?;
    Ok(Json(()))
}

fn record_manager(sh: &Shared, member: u64, fp: &str) -> Result<(), Fail> {
    let issuing = sh.ca().fingerprint().unwrap_or_default();
    if fp != issuing {
        return Err(bad(format!(
            "the cluster's CA is {issuing}, not {fp}: renew again"
        )));
    }
    sh.update(|s| {
        let key = manager_key(member);
        if s.meta.contains_key(ROTATION_KEY) && s.meta.get(&key).map(String::as_str) != Some(fp) {
            vec![set(key, fp)]
        } else {
            Vec::new()
        }
    })?;
    Ok(())
}

/// Once every node and manager renewed: the old root goes.
fn finish(sh: &Shared) -> Result<(), Fail> {
    let managers = sh.managers();
    let Some(r) = rotation(sh, &managers) else {
        return Ok(());
    };
    if !r.waiting.is_empty() {
        return Ok(());
    }
    sh.update(|s| {
        if !s.meta.contains_key(ROTATION_KEY) {
            return Vec::new();
        }
        let mut cmds: Vec<Command> = [TRUST_KEY, CROSS_KEY, ROTATION_KEY, FROM_KEY]
            .into_iter()
            .map(|k| set(k, ""))
            .collect();
        cmds.extend(
            s.meta
                .keys()
                .filter(|k| k.starts_with(RENEWED_PREFIX))
                .map(|k| set(k.clone(), "")),
        );
        cmds
    })?;
    tracing::info!(from = %r.from, "the CA rotation is complete: the old root is trusted no more");
    Ok(())
}

/// Follows the state's CA for as long as the manager runs: trusts the
/// roots it names, renews this manager's certificate when a third of its
/// life is left or when another CA issues now, records that renewal during
/// a rotation, keeps this host's credentials current, and, leading, ends a
/// rotation once everyone renewed.
pub(crate) async fn follow(sh: Arc<Shared>, reach: String) {
    let mut changed = sh.changed.subscribe();
    let mut recorded = String::new();
    loop {
        let wait = match step(&sh, &reach, &mut recorded).await {
            Ok(wait) => wait,
            Err(e) => {
                tracing::warn!("the cluster CA: {e}");
                Duration::from_secs(2)
            }
        };
        // Woken by the state (coalesced: a busy cluster writes often) or
        // by the renewal's time.
        tokio::select! {
            r = changed.changed() => if r.is_err() { return },
            _ = tokio::time::sleep(wait) => {}
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// One look at the state's CA; returns how long to sleep unless the state
/// changes.
async fn step(sh: &Arc<Shared>, reach: &str, recorded: &mut String) -> Result<Duration, String> {
    let e = |e: &dyn std::fmt::Display| e.to_string();
    let trust = sh.trust_pem();
    let dir = sh.cfg.data_dir.join("manager");
    let ca = sh.ca();
    if ca.key_pem().is_empty() {
        return Ok(Duration::from_secs(5));
    }
    let trust_changed = gantry_pki::trust_id(&trust).map_err(|x| e(&x))? != sh.trust.id();
    if trust_changed {
        sh.trust.set(&trust).map_err(|x| e(&x))?;
        tracing::info!("this manager trusts the cluster's roots as they are now");
    }
    let mine = sh.my_cert.1.lock().expect("cert lock").cert_pem.clone();
    let renew_at = gantry_pki::renew_at_ms(&mine).unwrap_or(0);
    let other_ca = !gantry_pki::issued_by(&mine, ca.cert_pem());
    if renew_at <= now_ms() || other_ca {
        let c = ca
            .issue("manager", Role::Manager, &sh.my_cert.2)
            .map_err(|x| e(&x))?;
        sh.my_cert.0.replace(&c).map_err(|x| e(&x))?;
        join::save_credential(&dir, &trust, &c).map_err(|x| e(&x))?;
        *sh.my_cert.1.lock().expect("cert lock") = c;
        tracing::info!(
            rotation = other_ca,
            "this manager's certificate was renewed"
        );
    } else if trust_changed {
        join::save_credential(&dir, &trust, &sh.my_cert.1.lock().expect("cert lock"))
            .map_err(|x| e(&x))?;
    }
    if trust_changed || other_ca {
        // The CLI on this host keeps working across the rotation.
        setup::write_admin(sh, reach).map_err(|x| e(&x))?;
    }
    let fp = ca.fingerprint().map_err(|x| e(&x))?;
    let rotating = sh.meta(ROTATION_KEY).is_some();
    let mut retry = false;
    if rotating && *recorded != fp {
        let key = manager_key(sh.me);
        if sh.meta(&key).as_deref() == Some(fp.as_str()) {
            *recorded = fp.clone();
        } else {
            match report(sh, &fp).await {
                Ok(()) => *recorded = fp.clone(),
                Err(x) => {
                    tracing::debug!("recording this manager's renewal: {x}");
                    retry = true;
                }
            }
        }
    }
    if rotating && matches!(sh.leader(), Leader::Me) {
        let sh2 = sh.clone();
        tokio::task::spawn_blocking(move || finish(&sh2))
            .await
            .map_err(|x| e(&x))?
            .map_err(|f| f.1)?;
    }
    let until_due = Duration::from_millis(renew_at.saturating_sub(now_ms()));
    Ok(if retry || rotating {
        // Nodes renew without writing to this manager's state watch: look
        // again soon while a rotation is under way.
        Duration::from_secs(1)
    } else {
        until_due.clamp(Duration::from_secs(1), Duration::from_secs(3600))
    })
}

/// Records this manager's renewal: in the state when it leads, else
/// through the leader.
async fn report(sh: &Arc<Shared>, fp: &str) -> Result<(), String> {
    match sh.leader() {
        Leader::Me => {
            let (sh2, fp) = (sh.clone(), fp.to_owned());
            tokio::task::spawn_blocking(move || record_manager(&sh2, sh2.me, &fp))
                .await
                .map_err(|e| e.to_string())?
                .map_err(|f| f.1)
        }
        Leader::At(addr) => {
            let c = sh.to_leader.client(sh, &addr)?;
            c.post::<_, ()>(
                "/v1/managers/renewed",
                &ManagerRenewed {
                    member: sh.me,
                    fingerprint: fp.to_owned(),
                },
            )
            .await
            .map_err(|e| e.to_string())
        }
        Leader::Unknown => Err("no manager leads".into()),
    }
}
