//! Certificates from an ACME CA (Let's Encrypt by default), one order per
//! name for the whole cluster. The manager is the only client: it keeps
//! the account, publishes each challenge in the cluster state (so every
//! node's proxy answers it, whichever node the CA reaches), and stores the
//! certificate for every proxy. Names a route wants and no valid
//! certificate covers are ordered; a certificate is renewed 30 days before
//! it expires; a failed order is retried with exponential backoff.
//!
//! **Architecture invariant:** at most one order per name is in flight
//! (the `in_flight` set; the manager is the only one ordering), so two
//! nodes never order the same name.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use gantry_route::AcmeChallenge;
use gantry_store::{CertRecord, CertSource, ChallengeRecord, Command};
use instant_acme::{
    Account, AccountCredentials, AuthorizationStatus, ChallengeType, Identifier, NewAccount,
    NewOrder, OrderStatus, RetryPolicy,
};

use crate::{now_ms, Shared};

/// Let's Encrypt's production directory.
pub const LETS_ENCRYPT: &str = "https://acme-v02.api.letsencrypt.org/directory";

/// Where certificates come from.
#[derive(Debug, Clone)]
pub struct AcmeConfig {
    /// The directory URL; `None`: no ACME at all.
    pub directory: Option<String>,
    /// The account's contact.
    pub email: Option<String>,
    /// A root CA (PEM file) to trust for the directory's HTTPS, for a
    /// private ACME CA.
    pub ca_root: Option<PathBuf>,
}

impl Default for AcmeConfig {
    fn default() -> Self {
        Self {
            directory: Some(LETS_ENCRYPT.into()),
            email: None,
            ca_root: None,
        }
    }
}

const ACCOUNT_KEY: &str = "acme_account";
const ACCOUNT_DIR_KEY: &str = "acme_account_directory";

/// Retries of a failed name: 10 s, doubling, at most an hour.
struct Backoff {
    next: Instant,
    delay: Duration,
}

/// Runs forever: orders what is missing, one name at a time.
pub(crate) async fn run(sh: Arc<Shared>) {
    let Some(directory) = sh.cfg.acme.directory.clone() else {
        return;
    };
    let mut backoff: HashMap<String, Backoff> = HashMap::new();
    let mut account: Option<Account> = None;
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        // Certificates are ordered by the leader alone.
        if !sh.is_leader() {
            continue;
        }
        let now = now_ms();
        let wanted: BTreeMap<String, AcmeChallenge> = sh.read(|s| {
            crate::edge::wanted(s)
                .into_iter()
                .filter(|(n, _)| !crate::edge::is_internal(n) && !crate::edge::covered(s, n, now))
                .collect()
        });
        backoff.retain(|n, _| wanted.contains_key(n));
        let due = wanted
            .into_iter()
            .find(|(n, _)| backoff.get(n).is_none_or(|b| b.next <= Instant::now()));
        let Some((name, kind)) = due else { continue };
        if account.is_none() {
            match load_account(&sh, &directory).await {
                Ok(a) => account = Some(a),
                Err(e) => {
                    tracing::warn!(%directory, "ACME account: {e}");
                    tokio::time::sleep(Duration::from_secs(10)).await;
                    continue;
                }
            }
        }
        let Some(acc) = account.as_ref() else {
            continue;
        };
        tracing::info!(%name, ?kind, "ordering a certificate over ACME");
        let result = order(&sh, acc, &name, kind).await;
        // The challenges are withdrawn whatever happened.
        let _ = sh.update(|s| {
            s.challenges
                .values()
                .filter(|c| c.name == name)
                .map(|c| Command::RemoveChallenge { key: c.key() })
                .collect()
        });
        match result {
            Ok(rec) => {
                tracing::info!(%name, "certificate issued over ACME");
                sh.counters
                    .acme_issued
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                backoff.remove(&name);
                let guard = sh.data_key.read().expect("data key lock");
                match guard.as_ref() {
                    None => {
                        tracing::error!(%name, "the certificate cannot be stored: the manager is locked (gantry unlock)")
                    }
                    Some(key) => {
                        let rec = crate::edge::seal_key(key, rec);
                        if let Err(e) = sh.apply(vec![Command::PutCert(rec)]) {
                            tracing::error!(%name, "storing the certificate: {e}");
                        }
                    }
                }
            }
            Err(e) => {
                let b = backoff.entry(name.clone()).or_insert(Backoff {
                    next: Instant::now(),
                    delay: Duration::from_secs(5),
                });
                b.delay = (b.delay * 2).min(Duration::from_secs(3600));
                b.next = Instant::now() + b.delay;
                tracing::warn!(%name, retry_in = ?b.delay, "ACME order failed: {e}");
                sh.counters
                    .acme_failed
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
        }
    }
}

async fn load_account(sh: &Shared, directory: &str) -> Result<Account, String> {
    let builder = || match &sh.cfg.acme.ca_root {
        Some(p) => Account::builder_with_root(p).map_err(|e| format!("{}: {e}", p.display())),
        None => Account::builder().map_err(|e| e.to_string()),
    };
    let stored = sh.read(|s| {
        (s.meta.get(ACCOUNT_DIR_KEY).map(String::as_str) == Some(directory))
            .then(|| s.meta.get(ACCOUNT_KEY).cloned())
            .flatten()
    });
    if let Some(json) = stored {
        if let Ok(creds) = serde_json::from_str::<AccountCredentials>(&json) {
            return builder()?
                .from_credentials(creds)
                .await
                .map_err(|e| e.to_string());
        }
    }
    let contact: Vec<String> = sh
        .cfg
        .acme
        .email
        .iter()
        .map(|e| format!("mailto:{e}"))
        .collect();
    let contact: Vec<&str> = contact.iter().map(String::as_str).collect();
    let (account, creds) = builder()?
        .create(
            &NewAccount {
                contact: &contact,
                terms_of_service_agreed: true,
                only_return_existing: false,
            },
            directory.to_owned(),
            None,
        )
        .await
        .map_err(|e| e.to_string())?;
    let json = serde_json::to_string(&creds).map_err(|e| e.to_string())?;
    sh.apply(vec![
        Command::SetMeta {
            key: ACCOUNT_KEY.into(),
            value: json,
        },
        Command::SetMeta {
            key: ACCOUNT_DIR_KEY.into(),
            value: directory.to_owned(),
        },
    ])
    .map_err(|e| e.to_string())?;
    tracing::info!(%directory, "ACME account created");
    Ok(account)
}

/// One order, start to finish.
async fn order(
    sh: &Shared,
    account: &Account,
    name: &str,
    kind: AcmeChallenge,
) -> Result<CertRecord, String> {
    let e = |what: &str| {
        let what = what.to_owned();
        move |err: instant_acme::Error| format!("{what}: {err}")
    };
    let ids = [Identifier::Dns(name.to_owned())];
    let mut order = account
        .new_order(&NewOrder::new(&ids))
        .await
        .map_err(e("new order"))?;
    {
        let mut authzs = order.authorizations();
        while let Some(authz) = authzs.next().await {
            let mut authz = authz.map_err(e("authorization"))?;
            match authz.status {
                AuthorizationStatus::Pending => {}
                AuthorizationStatus::Valid => continue,
                other => return Err(format!("authorization is {other:?}")),
            }
            let ty = match kind {
                AcmeChallenge::Http01 => ChallengeType::Http01,
                AcmeChallenge::TlsAlpn01 => ChallengeType::TlsAlpn01,
            };
            let mut ch = authz
                .challenge(ty.clone())
                .ok_or_else(|| format!("the CA offers no {ty:?} challenge for {name}"))?;
            let ka = ch.key_authorization();
            let rec = match kind {
                AcmeChallenge::Http01 => ChallengeRecord {
                    name: name.to_owned(),
                    token: ch.token.clone(),
                    key_auth: ka.as_str().to_owned(),
                    cert_pem: String::new(),
                    key_pem: String::new(),
                },
                AcmeChallenge::TlsAlpn01 => {
                    let (cert_pem, key_pem) = alpn_certificate(name, ka.digest().as_ref())?;
                    ChallengeRecord {
                        name: name.to_owned(),
                        token: String::new(),
                        key_auth: String::new(),
                        cert_pem,
                        key_pem,
                    }
                }
            };
            sh.apply(vec![Command::PutChallenge(rec)])
                .map_err(|e| format!("publishing the challenge: {e}"))?;
            // Every proxy gets it in its next assignment message, within
            // milliseconds; leave them a moment before the CA looks.
            tokio::time::sleep(Duration::from_millis(500)).await;
            ch.set_ready().await.map_err(e("challenge ready"))?;
        }
    }
    let retry = RetryPolicy::new()
        .initial_delay(Duration::from_millis(250))
        .timeout(Duration::from_secs(90));
    let status = order.poll_ready(&retry).await.map_err(e("validation"))?;
    if status != OrderStatus::Ready {
        return Err(format!("the order is {status:?}, not ready"));
    }
    let key_pem = order.finalize().await.map_err(e("finalize"))?;
    let chain = order
        .poll_certificate(&retry)
        .await
        .map_err(e("certificate"))?;
    let (names, not_after_ms) =
        gantry_pki::cert_info(&chain).map_err(|e| format!("the issued certificate: {e}"))?;
    Ok(CertRecord {
        name: name.to_owned(),
        names,
        cert_pem: chain,
        key_pem,
        key: None,
        not_after_ms,
        source: CertSource::Acme,
    })
}

/// The self-signed certificate TLS-ALPN-01 wants (RFC 8737): the name as
/// its only SAN and the key authorization's digest in the critical
/// acmeIdentifier extension.
fn alpn_certificate(name: &str, digest: &[u8]) -> Result<(String, String), String> {
    let key = rcgen::KeyPair::generate().map_err(|e| e.to_string())?;
    let mut p = rcgen::CertificateParams::new(vec![name.to_owned()]).map_err(|e| e.to_string())?;
    p.custom_extensions = vec![rcgen::CustomExtension::new_acme_identifier(digest)];
    let cert = p.self_signed(&key).map_err(|e| e.to_string())?;
    Ok((cert.pem(), key.serialize_pem()))
}
