//! Cluster trust, as Swarm does it: at init the manager makes a cluster CA;
//! a join token carries the CA's fingerprint (so a joining agent can check
//! it talks to the right cluster before it trusts anything) and a secret
//! (so the manager knows the agent may join); agents get node certificates
//! and every agent–manager connection is mutual TLS against the cluster CA
//! alone. The CLI holds an admin certificate from the same CA.

mod live;
pub mod seal;

pub use live::{trust_id, LiveCert, Trust};

use std::fmt;
use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use sha2::{Digest, Sha256};

/// The name every manager certificate carries, so that agents verify the
/// manager by cluster membership rather than by an address that may change.
pub const MANAGER_NAME: &str = "gantry-manager";

/// A PKI operation that failed.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    /// Certificate generation or parsing failed.
    #[error("certificate: {0}")]
    Cert(#[from] rcgen::Error),
    /// TLS configuration failed.
    #[error("tls: {0}")]
    Tls(#[from] rustls::Error),
    /// A PEM document does not parse.
    #[error("bad PEM: {0}")]
    Pem(String),
    /// A join token is malformed.
    #[error(
        "invalid join token: {0} (expected GTKN-1-<64 hex>-<32 hex>, from `gantry join-token`)"
    )]
    BadToken(&'static str),
}

/// What a certificate lets its holder do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The manager (serves the cluster API).
    Manager,
    /// A worker node.
    Worker,
    /// The operator's CLI.
    Admin,
}

impl Role {
    fn unit(self) -> &'static str {
        match self {
            Self::Manager => "manager",
            Self::Worker => "worker",
            Self::Admin => "admin",
        }
    }
}

/// A certificate and its private key, PEM.
#[derive(Debug, Clone)]
pub struct Issued {
    /// The certificate.
    pub cert_pem: String,
    /// Its private key.
    pub key_pem: String,
}

/// The cluster's certificate authority.
#[derive(Debug, Clone)]
pub struct ClusterCa {
    cluster: String,
    cert_pem: String,
    key_pem: String,
    /// How long the node and manager certificates it signs are valid.
    leaf_secs: u64,
    /// What follows each certificate it issues (PEM): during a rotation,
    /// this CA certified by the one before it, so that a peer trusting
    /// only the old root still verifies the new certificates.
    chain: String,
}

/// How long node and manager certificates are valid unless the cluster
/// says otherwise (Swarm's default).
pub const CERT_EXPIRY_SECS: u64 = 90 * 86_400;

/// A leaf certificate is valid from this long before it is signed (for
/// clocks a little behind).
pub const CERT_BACKDATE_SECS: u64 = 60;

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs() as i64
}

/// Sets `p`'s validity to the seconds since the epoch given.
fn validity(p: &mut CertificateParams, from: i64, to: i64) {
    let epoch = rcgen::date_time_ymd(1970, 1, 1);
    p.not_before = epoch + std::time::Duration::from_secs(from.max(0) as u64);
    p.not_after = epoch + std::time::Duration::from_secs(to.max(0) as u64);
}

fn ca_params(cluster: &str) -> CertificateParams {
    let mut p = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, format!("gantry cluster CA {cluster}"));
    dn.push(DnType::OrganizationName, format!("gantry-{cluster}"));
    p.distinguished_name = dn;
    p.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    p.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    p
}

fn certs(pem: &str) -> Result<Vec<CertificateDer<'static>>, PkiError> {
    CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| PkiError::Pem(e.to_string()))
}

fn key(pem: &str) -> Result<PrivateKeyDer<'static>, PkiError> {
    PrivateKeyDer::from_pem_slice(pem.as_bytes()).map_err(|e| PkiError::Pem(e.to_string()))
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// When a certificate (PEM) is due for renewal: once a third of its
/// lifetime is left (ms since the epoch).
pub fn renew_at_ms(cert_pem: &str) -> Result<u64, PkiError> {
    use x509_parser::prelude::{FromDer, X509Certificate};
    let chain = certs(cert_pem)?;
    let first = chain
        .first()
        .ok_or_else(|| PkiError::Pem("no certificate".into()))?;
    let (_, cert) =
        X509Certificate::from_der(first.as_ref()).map_err(|e| PkiError::Pem(e.to_string()))?;
    let from = cert.validity().not_before.timestamp() + CERT_BACKDATE_SECS as i64;
    let to = cert.validity().not_after.timestamp();
    let at = to - (to - from).max(0) / 3;
    Ok(at.max(0) as u64 * 1000)
}

impl ClusterCa {
    /// Makes a new CA for a cluster (ECDSA P-256, valid for ten years).
    pub fn generate(cluster: &str) -> Result<Self, PkiError> {
        let key = KeyPair::generate()?;
        let mut params = ca_params(cluster);
        params.not_before = rcgen::date_time_ymd(2024, 1, 1);
        params.not_after = rcgen::date_time_ymd(2036, 1, 1);
        let cert = params.self_signed(&key)?;
        Ok(Self {
            cluster: cluster.to_owned(),
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            leaf_secs: CERT_EXPIRY_SECS,
            chain: String::new(),
        })
    }

    /// A new CA to replace this one (`gantry ca rotate`): its own key and
    /// name, with its certificate signed by this CA (the cross-signed
    /// certificate, PEM) to follow the certificates it issues until every
    /// node trusts it.
    pub fn rotate(&self) -> Result<(Self, String), PkiError> {
        let key = KeyPair::generate()?;
        let mut suffix = [0u8; 4];
        rand::RngCore::fill_bytes(&mut rand::rng(), &mut suffix);
        let name = format!("{} {}", self.cluster, hex::encode(suffix));
        let mut params = ca_params(&self.cluster);
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, format!("gantry cluster CA {name}"));
        dn.push(DnType::OrganizationName, format!("gantry-{}", self.cluster));
        params.distinguished_name = dn;
        let now = unix_now();
        validity(&mut params, now - 3600, now + 10 * 365 * 86_400);
        let cert = params.self_signed(&key)?;
        let cross = params.signed_by(&key, &self.issuer()?)?;
        Ok((
            Self {
                cluster: self.cluster.clone(),
                cert_pem: cert.pem(),
                key_pem: key.serialize_pem(),
                leaf_secs: self.leaf_secs,
                chain: String::new(),
            },
            cross.pem(),
        ))
    }

    /// The same CA, with `chain` (PEM) following every certificate it
    /// issues.
    pub fn with_chain(mut self, chain: &str) -> Self {
        self.chain = chain.to_owned();
        self
    }

    /// Reloads a CA kept in the cluster store.
    pub fn from_pem(cluster: &str, cert_pem: &str, key_pem: &str) -> Self {
        Self {
            cluster: cluster.to_owned(),
            cert_pem: cert_pem.to_owned(),
            key_pem: key_pem.to_owned(),
            leaf_secs: CERT_EXPIRY_SECS,
            chain: String::new(),
        }
    }

    /// The CA certificate (PEM), the trust anchor of the cluster.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The CA's private key (PEM); kept only in the manager's store.
    pub fn key_pem(&self) -> &str {
        &self.key_pem
    }

    /// SHA-256 of the CA certificate (DER), hex: what join tokens carry.
    pub fn fingerprint(&self) -> Result<String, PkiError> {
        fingerprint(&self.cert_pem)
    }

    fn leaf_params(
        &self,
        name: &str,
        role: Role,
        extra_sans: &[String],
    ) -> Result<CertificateParams, PkiError> {
        let mut sans = vec![name.to_owned()];
        if role == Role::Manager {
            sans.push(MANAGER_NAME.to_owned());
        }
        sans.extend(extra_sans.iter().cloned());
        let mut p = CertificateParams::new(sans)?;
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, name);
        dn.push(DnType::OrganizationalUnitName, role.unit());
        dn.push(DnType::OrganizationName, format!("gantry-{}", self.cluster));
        p.distinguished_name = dn;
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        p.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        if role == Role::Admin {
            // The CLI's credential is not renewed (yet): it lasts as long
            // as the CA.
            p.not_before = rcgen::date_time_ymd(2024, 1, 1);
            p.not_after = rcgen::date_time_ymd(2031, 1, 1);
        } else {
            let now = unix_now();
            validity(
                &mut p,
                now - CERT_BACKDATE_SECS as i64,
                now + self.leaf_secs as i64,
            );
        }
        Ok(p)
    }

    /// The same CA, signing node and manager certificates valid for
    /// `secs` (the cluster's `--cert-expiry`).
    pub fn with_leaf_validity(mut self, secs: u64) -> Self {
        self.leaf_secs = secs.max(1);
        self
    }

    /// The issuer as its certificate names it (a rotated CA's name is its
    /// own).
    fn issuer(&self) -> Result<Issuer<'static, KeyPair>, PkiError> {
        let ca_key = KeyPair::from_pem(&self.key_pem)?;
        Ok(Issuer::from_ca_cert_pem(&self.cert_pem, ca_key)?)
    }

    /// A certificate as it is handed out: with the chain that follows it.
    fn chained(&self, pem: String) -> String {
        if self.chain.is_empty() {
            pem
        } else {
            format!("{}\n{}\n", pem.trim_end(), self.chain.trim())
        }
    }

    /// Issues a certificate for a node or the admin, usable as both TLS
    /// client and server, with `name` as common name and subject names.
    pub fn issue(&self, name: &str, role: Role, extra_sans: &[String]) -> Result<Issued, PkiError> {
        let key = KeyPair::generate()?;
        let cert = self
            .leaf_params(name, role, extra_sans)?
            .signed_by(&key, &self.issuer()?)?;
        Ok(Issued {
            cert_pem: self.chained(cert.pem()),
            key_pem: key.serialize_pem(),
        })
    }

    /// Issues a web server certificate for `names` (host names or IP
    /// addresses), valid from an hour ago for `days` days: what the edge
    /// CA gives names no public CA can validate (`.test`, `.local`,
    /// `.internal`, addresses). Returns it with its expiry in
    /// milliseconds since the epoch.
    pub fn issue_web(&self, names: &[String], days: i64) -> Result<(Issued, u64), PkiError> {
        let key = KeyPair::generate()?;
        let mut p = CertificateParams::new(names.to_vec())?;
        let mut dn = DistinguishedName::new();
        dn.push(
            DnType::CommonName,
            names.first().map(String::as_str).unwrap_or("gantry"),
        );
        dn.push(DnType::OrganizationName, format!("gantry-{}", self.cluster));
        p.distinguished_name = dn;
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let now = unix_now();
        let not_after = now + days * 86_400;
        validity(&mut p, now - 3600, not_after);
        let cert = p.signed_by(&key, &self.issuer()?)?;
        Ok((
            Issued {
                cert_pem: cert.pem(),
                key_pem: key.serialize_pem(),
            },
            not_after as u64 * 1000,
        ))
    }

    /// Signs a joining node's certificate request (its private key never
    /// leaves the node). Only the request's public key is used: the name
    /// and role are the manager's choice, whatever the request asks for.
    pub fn sign_request(&self, csr_pem: &str, name: &str, role: Role) -> Result<String, PkiError> {
        self.sign_request_with(csr_pem, name, role, &[])
    }

    /// The same, with names of the manager's choice added (a joining
    /// manager's address).
    pub fn sign_request_with(
        &self,
        csr_pem: &str,
        name: &str,
        role: Role,
        extra_sans: &[String],
    ) -> Result<String, PkiError> {
        let mut csr = rcgen::CertificateSigningRequestParams::from_pem(csr_pem)?;
        csr.params = self.leaf_params(name, role, extra_sans)?;
        Ok(self.chained(csr.signed_by(&self.issuer()?)?.pem()))
    }

    fn roots(&self) -> Result<rustls::RootCertStore, PkiError> {
        let mut roots = rustls::RootCertStore::empty();
        for c in certs(&self.cert_pem)? {
            roots.add(c)?;
        }
        Ok(roots)
    }

    /// A server config that accepts only clients with a certificate from
    /// this CA.
    pub fn server_config(&self, me: &Issued) -> Result<rustls::ServerConfig, PkiError> {
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
            Arc::new(self.roots()?),
            provider(),
        )
        .build()
        .map_err(|e| PkiError::Tls(rustls::Error::General(e.to_string())))?;
        Ok(rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()?
            .with_client_cert_verifier(verifier)
            .with_single_cert(certs(&me.cert_pem)?, key(&me.key_pem)?)?)
    }

    /// A server config for the manager's port: clients with a certificate
    /// from this CA are verified; clients without one are let through to
    /// the TLS layer so that they can join, and the API refuses them every
    /// route but the join.
    pub fn server_config_join(&self, me: &Issued) -> Result<rustls::ServerConfig, PkiError> {
        Trust::new(&self.cert_pem)?.server_config_join(LiveCert::new(me)?)
    }

    /// A client config that trusts only this CA and presents no certificate
    /// (a node joining).
    pub fn client_config_anonymous(&self) -> Result<rustls::ClientConfig, PkiError> {
        Ok(rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()?
            .with_root_certificates(self.roots()?)
            .with_no_client_auth())
    }

    /// A client config that trusts only this CA and presents `me`.
    pub fn client_config(&self, me: &Issued) -> Result<rustls::ClientConfig, PkiError> {
        Ok(rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()?
            .with_root_certificates(self.roots()?)
            .with_client_auth_cert(certs(&me.cert_pem)?, key(&me.key_pem)?)?)
    }
}

/// A new key and a certificate request for it, both PEM: what a joining
/// node sends (the request) and keeps (the key).
pub fn new_request() -> Result<(String, String), PkiError> {
    let key = KeyPair::generate()?;
    let csr = CertificateParams::new(Vec::<String>::new())?.serialize_request(&key)?;
    Ok((key.serialize_pem(), csr.pem()?))
}

/// Who a verified peer certificate (DER) names: its common name and role.
pub fn peer_identity(der: &[u8]) -> Option<(String, Role)> {
    use x509_parser::prelude::{FromDer, X509Certificate};
    let (_, cert) = X509Certificate::from_der(der).ok()?;
    let subject = cert.subject();
    let cn = subject.iter_common_name().next()?.as_str().ok()?.to_owned();
    let role = match subject.iter_organizational_unit().next()?.as_str().ok()? {
        "manager" => Role::Manager,
        "worker" => Role::Worker,
        "admin" => Role::Admin,
        _ => return None,
    };
    Some((cn, role))
}

/// The names (DNS and IP subject alternative names, else the common name)
/// and expiry (milliseconds since the epoch) of the first certificate of
/// a PEM chain.
pub fn cert_info(pem: &str) -> Result<(Vec<String>, u64), PkiError> {
    use x509_parser::extensions::GeneralName;
    use x509_parser::prelude::{FromDer, X509Certificate};
    let chain = certs(pem)?;
    let der = chain
        .first()
        .ok_or_else(|| PkiError::Pem("no certificate in the PEM".into()))?;
    let (_, cert) =
        X509Certificate::from_der(der.as_ref()).map_err(|e| PkiError::Pem(e.to_string()))?;
    let mut names = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for n in &san.value.general_names {
            match n {
                GeneralName::DNSName(d) => names.push(d.to_ascii_lowercase()),
                GeneralName::IPAddress(b) => match b.len() {
                    4 => names.push(std::net::Ipv4Addr::new(b[0], b[1], b[2], b[3]).to_string()),
                    16 => {
                        let mut a = [0u8; 16];
                        a.copy_from_slice(b);
                        names.push(std::net::Ipv6Addr::from(a).to_string());
                    }
                    _ => {}
                },
                _ => {}
            }
        }
    }
    if names.is_empty() {
        if let Some(cn) = cert
            .subject()
            .iter_common_name()
            .next()
            .and_then(|c| c.as_str().ok())
        {
            names.push(cn.to_ascii_lowercase());
        }
    }
    let not_after = cert.validity().not_after.timestamp().max(0) as u64 * 1000;
    Ok((names, not_after))
}

/// Checks that a PEM key matches the first certificate of a PEM chain.
pub fn check_key_pair(cert_pem: &str, key_pem: &str) -> Result<(), PkiError> {
    let chain = certs(cert_pem)?;
    let key = key(key_pem)?;
    let signer = provider()
        .key_provider
        .load_private_key(key)
        .map_err(PkiError::Tls)?;
    rustls::sign::CertifiedKey::new(chain, signer)
        .keys_match()
        .map_err(PkiError::Tls)
}

/// A client config that trusts any server certificate. Only for fetching
/// the CA certificate before a join, whose hash is then checked against
/// the join token's fingerprint: nothing else may go over it.
pub fn fetch_ca_config() -> Result<rustls::ClientConfig, PkiError> {
    Ok(rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AcceptAny(provider())))
        .with_no_client_auth())
}

#[derive(Debug)]
struct AcceptAny(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AcceptAny {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &rustls::pki_types::ServerName<'_>,
        _: &[u8],
        _: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// The certificate (PEM) of a bundle whose SHA-256 is `fingerprint`: what
/// a joining node trusts of the bundle a manager sends before it is
/// authenticated (a manager sends the old and the new root during a CA
/// rotation, and the token names one).
pub fn pick_by_fingerprint(bundle_pem: &str, fingerprint: &str) -> Option<String> {
    certs(bundle_pem)
        .ok()?
        .into_iter()
        .find(|c| hex::encode(Sha256::digest(c.as_ref())) == fingerprint)
        .map(|c| pem_of(&c))
}

/// Each certificate of a PEM bundle, PEM.
pub fn split_pem(bundle_pem: &str) -> Vec<String> {
    certs(bundle_pem)
        .unwrap_or_default()
        .iter()
        .map(|c| pem_of(c))
        .collect()
}

fn pem_of(c: &CertificateDer<'_>) -> String {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD.encode(c.as_ref());
    let mut out = String::from("-----BEGIN CERTIFICATE-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(line).unwrap_or_default());
        out.push('\n');
    }
    out.push_str("-----END CERTIFICATE-----\n");
    out
}

/// Whether the first certificate of a PEM chain was issued by the CA whose
/// certificate (PEM) is given: its issuer is the CA's subject (each CA of a
/// cluster, rotated or not, has a name of its own).
pub fn issued_by(cert_pem: &str, ca_pem: &str) -> bool {
    use x509_parser::prelude::{FromDer, X509Certificate};
    let (Ok(leaf), Ok(ca)) = (certs(cert_pem), certs(ca_pem)) else {
        return false;
    };
    let (Some(leaf), Some(ca)) = (leaf.first(), ca.first()) else {
        return false;
    };
    match (
        X509Certificate::from_der(leaf.as_ref()),
        X509Certificate::from_der(ca.as_ref()),
    ) {
        (Ok((_, l)), Ok((_, c))) => l.issuer().as_raw() == c.subject().as_raw(),
        _ => false,
    }
}

/// SHA-256 (hex) of the first certificate in a PEM document.
pub fn fingerprint(cert_pem: &str) -> Result<String, PkiError> {
    let c = certs(cert_pem)?
        .into_iter()
        .next()
        .ok_or_else(|| PkiError::Pem("no certificate".into()))?;
    Ok(hex::encode(Sha256::digest(c.as_ref())))
}

/// `GTKN-1-<CA fingerprint>-<secret>`: what an agent needs to join.
#[derive(Clone, PartialEq, Eq)]
pub struct JoinToken {
    /// The CA's fingerprint, hex.
    pub ca_fingerprint: String,
    /// 128 random bits, hex.
    pub secret: String,
}

impl JoinToken {
    /// The token of generation `nonce` for a CA, derived from the CA's key
    /// (HMAC-SHA256 keyed with it): the manager stores only the nonce and
    /// the secret's hash, never the token, and can still show it to the
    /// admin. Whoever holds the CA key could sign certificates anyway.
    pub fn derive(ca: &ClusterCa, nonce: &str) -> Result<Self, PkiError> {
        let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, ca.key_pem().as_bytes());
        let tag = ring::hmac::sign(&key, format!("gantry join token {nonce}").as_bytes());
        Ok(Self {
            ca_fingerprint: ca.fingerprint()?,
            secret: hex::encode(&tag.as_ref()[..16]),
        })
    }

    /// A fresh nonce for [`JoinToken::derive`]: 128 random bits, hex.
    pub fn new_nonce() -> String {
        use rand::RngCore;
        let mut b = [0u8; 16];
        rand::rng().fill_bytes(&mut b);
        hex::encode(b)
    }

    /// Parses a token as `gantry join-token` prints it.
    pub fn parse(s: &str) -> Result<Self, PkiError> {
        let rest = s
            .trim()
            .strip_prefix("GTKN-1-")
            .ok_or(PkiError::BadToken("wrong prefix"))?;
        let (fp, secret) = rest
            .split_once('-')
            .ok_or(PkiError::BadToken("missing secret"))?;
        let hex_of = |v: &str, n: usize| {
            v.len() == n
                && v.bytes()
                    .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
        };
        if !hex_of(fp, 64) {
            return Err(PkiError::BadToken("bad CA fingerprint"));
        }
        if !hex_of(secret, 32) {
            return Err(PkiError::BadToken("bad secret"));
        }
        Ok(Self {
            ca_fingerprint: fp.to_owned(),
            secret: secret.to_owned(),
        })
    }

    /// What the manager stores instead of the secret.
    pub fn secret_hash(&self) -> String {
        hex::encode(Sha256::digest(self.secret.as_bytes()))
    }

    /// Whether a presented token matches the stored hash, in constant time.
    pub fn matches(&self, stored_hash: &str) -> bool {
        let a = self.secret_hash();
        a.len() == stored_hash.len()
            && a.bytes()
                .zip(stored_hash.bytes())
                .fold(0u8, |acc, (x, y)| acc | (x ^ y))
                == 0
    }
}

impl fmt::Display for JoinToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "GTKN-1-{}-{}", self.ca_fingerprint, self.secret)
    }
}

impl fmt::Debug for JoinToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print the secret by accident.
        write!(f, "JoinToken(GTKN-1-{}-***)", self.ca_fingerprint)
    }
}

#[cfg(test)]
mod tests;
