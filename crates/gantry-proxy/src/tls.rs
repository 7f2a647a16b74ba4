//! Certificates by server name, chosen per handshake from the current set.

use std::collections::HashMap;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

use crate::Proxy;

/// A certificate chain and its key, for these names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertPem {
    /// The names it serves: exact, or `*.example.com`.
    pub names: Vec<String>,
    /// The chain, leaf first.
    pub cert_pem: String,
    /// The private key.
    pub key_pem: String,
}

/// A certificate that could not be loaded.
#[derive(Debug, thiserror::Error)]
#[error("certificate for {names}: {reason}")]
pub struct CertError {
    /// Its names.
    pub names: String,
    /// What is wrong.
    pub reason: String,
}

/// The certificates in force.
#[derive(Default)]
pub(crate) struct Certs {
    exact: HashMap<String, Arc<CertifiedKey>>,
    /// (suffix with its dot, key)
    wildcard: Vec<(String, Arc<CertifiedKey>)>,
}

/// The pending ACME challenges, swapped apart from the certificates.
#[derive(Default)]
pub(crate) struct Challenges {
    /// HTTP-01 tokens to key authorizations.
    pub(crate) http01: HashMap<String, String>,
    /// TLS-ALPN-01 challenge certificates by name.
    alpn: HashMap<String, Arc<CertifiedKey>>,
}

impl Challenges {
    pub(crate) fn new(http01: HashMap<String, String>, alpn: &[CertPem]) -> Self {
        let alpn = alpn
            .iter()
            .filter_map(|c| {
                // Its critical acmeIdentifier extension is unknown to
                // webpki, so the key check (which parses it) is skipped.
                let k = load(c, false)
                    .map_err(|e| tracing::warn!("tls-alpn-01 challenge: {e}"))
                    .ok()?;
                Some(
                    c.names
                        .iter()
                        .map(move |n| (n.to_ascii_lowercase(), k.clone())),
                )
            })
            .flatten()
            .collect();
        Self { http01, alpn }
    }
}

fn load(c: &CertPem, check: bool) -> Result<Arc<CertifiedKey>, CertError> {
    let err = |reason: String| CertError {
        names: c.names.join(","),
        reason,
    };
    let chain = CertificateDer::pem_slice_iter(c.cert_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| err(format!("bad certificate PEM: {e}")))?;
    if chain.is_empty() {
        return Err(err("no certificate in the PEM".into()));
    }
    let key = PrivateKeyDer::from_pem_slice(c.key_pem.as_bytes())
        .map_err(|e| err(format!("bad key PEM: {e}")))?;
    let key = rustls::crypto::ring::sign::any_supported_type(&key)
        .map_err(|e| err(format!("unusable key: {e}")))?;
    let ck = CertifiedKey::new(chain, key);
    if check {
        ck.keys_match()
            .map_err(|e| err(format!("the key does not match: {e}")))?;
    }
    Ok(Arc::new(ck))
}

impl Certs {
    pub(crate) fn build(certs: &[CertPem]) -> (Self, Vec<CertError>) {
        let mut out = Self::default();
        let mut errors = Vec::new();
        for c in certs {
            match load(c, true) {
                Ok(k) => {
                    for n in &c.names {
                        let n = n.to_ascii_lowercase();
                        match n.strip_prefix('*') {
                            Some(suffix) => out.wildcard.push((suffix.to_owned(), k.clone())),
                            None => {
                                out.exact.insert(n, k.clone());
                            }
                        }
                    }
                }
                Err(e) => errors.push(e),
            }
        }
        out.wildcard.sort_by_key(|w| std::cmp::Reverse(w.0.len()));
        (out, errors)
    }

    /// The certificate for a name: exact, else the longest wildcard (one
    /// label deep, as TLS wildcards are).
    pub(crate) fn get(&self, name: &str) -> Option<Arc<CertifiedKey>> {
        let name = name.to_ascii_lowercase();
        if let Some(k) = self.exact.get(&name) {
            return Some(k.clone());
        }
        self.wildcard
            .iter()
            .find(|(suffix, _)| {
                name.strip_suffix(suffix.as_str())
                    .is_some_and(|label| !label.is_empty() && !label.contains('.'))
            })
            .map(|(_, k)| k.clone())
    }
}

/// Picks the certificate of each handshake from the proxy's current set.
pub(crate) struct Resolver(pub(crate) Arc<Proxy>);

impl std::fmt::Debug for Resolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Resolver")
    }
}

/// The ALPN protocol of TLS-ALPN-01 (RFC 8737).
pub(crate) const ACME_TLS: &[u8] = b"acme-tls/1";

impl ResolvesServerCert for Resolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let name = hello.server_name()?.to_owned();
        let acme = hello
            .alpn()
            .is_some_and(|mut protos| protos.any(|p| p == ACME_TLS));
        if acme {
            return self
                .0
                .challenges
                .load()
                .alpn
                .get(&name.to_ascii_lowercase())
                .cloned();
        }
        self.0.certs.load().get(&name)
    }
}

/// The TLS configuration of the HTTPS listener.
pub(crate) fn server_config(proxy: Arc<Proxy>) -> rustls::ServerConfig {
    let mut c = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(Resolver(proxy)));
    c.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec(), ACME_TLS.to_vec()];
    c
}
