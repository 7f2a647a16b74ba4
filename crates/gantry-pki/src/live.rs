//! What a long-running process presents and trusts, replaceable while the
//! TLS configs built on them are in use: a renewed certificate is
//! presented at the next handshake, and a CA rotation changes the roots
//! verified against at the next handshake, with no restart.

use std::sync::{Arc, RwLock};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName, SignatureScheme};
use sha2::{Digest, Sha256};

use crate::{certs, key, provider, Issued, PkiError};

/// A certificate and key that can be replaced while the TLS configs built
/// on it are in use: the next handshake presents the new one (a renewed
/// node or manager certificate).
#[derive(Debug)]
pub struct LiveCert(std::sync::RwLock<Arc<rustls::sign::CertifiedKey>>);

impl LiveCert {
    /// Holds `me`.
    pub fn new(me: &Issued) -> Result<Arc<Self>, PkiError> {
        Ok(Arc::new(Self(std::sync::RwLock::new(certified(me)?))))
    }

    /// Presents `me` from now on.
    pub fn replace(&self, me: &Issued) -> Result<(), PkiError> {
        *self.0.write().expect("live cert lock") = certified(me)?;
        Ok(())
    }

    fn current(&self) -> Arc<rustls::sign::CertifiedKey> {
        self.0.read().expect("live cert lock").clone()
    }
}

fn certified(me: &Issued) -> Result<Arc<rustls::sign::CertifiedKey>, PkiError> {
    let key = provider()
        .key_provider
        .load_private_key(key(&me.key_pem)?)?;
    Ok(Arc::new(rustls::sign::CertifiedKey::new(
        certs(&me.cert_pem)?,
        key,
    )))
}

impl rustls::client::ResolvesClientCert for LiveCert {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[rustls::SignatureScheme],
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        Some(self.current())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

impl rustls::server::ResolvesServerCert for LiveCert {
    fn resolve(
        &self,
        _hello: rustls::server::ClientHello<'_>,
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        Some(self.current())
    }
}

/// The roots a process trusts (a PEM bundle of CA certificates). A CA
/// rotation trusts the new root beside the old one until every node holds
/// a certificate from the new one, then the new one alone.
#[derive(Debug)]
pub struct Trust(RwLock<Verifiers>);

#[derive(Debug)]
struct Verifiers {
    pem: String,
    id: String,
    client: Arc<dyn ClientCertVerifier>,
    server: Arc<dyn ServerCertVerifier>,
}

impl Verifiers {
    fn new(pem: &str) -> Result<Self, PkiError> {
        let mut roots = rustls::RootCertStore::empty();
        for c in certs(pem)? {
            roots.add(c)?;
        }
        if roots.is_empty() {
            return Err(PkiError::Pem("no CA certificate to trust".into()));
        }
        let roots = Arc::new(roots);
        let general = |e: String| PkiError::Tls(rustls::Error::General(e));
        let client =
            rustls::server::WebPkiClientVerifier::builder_with_provider(roots.clone(), provider())
                .allow_unauthenticated()
                .build()
                .map_err(|e| general(e.to_string()))?;
        let server = rustls::client::WebPkiServerVerifier::builder_with_provider(roots, provider())
            .build()
            .map_err(|e| general(e.to_string()))?;
        Ok(Self {
            pem: pem.to_owned(),
            id: trust_id(pem)?,
            client,
            server,
        })
    }
}

/// What identifies a bundle of roots whatever its order and encoding: the
/// SHA-256 (hex) of its certificates' sorted SHA-256 digests. Managers
/// send it with every answer, so that a node or the CLI sees when the
/// cluster's trust changed.
pub fn trust_id(pem: &str) -> Result<String, PkiError> {
    let mut digests: Vec<[u8; 32]> = certs(pem)?
        .iter()
        .map(|c| Sha256::digest(c.as_ref()).into())
        .collect();
    digests.sort_unstable();
    digests.dedup();
    let mut h = Sha256::new();
    for d in &digests {
        h.update(d);
    }
    Ok(hex::encode(h.finalize()))
}

impl Trust {
    /// Trusts the CA certificates of a PEM bundle.
    pub fn new(pem: &str) -> Result<Arc<Self>, PkiError> {
        Ok(Arc::new(Self(RwLock::new(Verifiers::new(pem)?))))
    }

    /// Trusts these instead from the next handshake on (the same bundle
    /// changes nothing).
    pub fn set(&self, pem: &str) -> Result<(), PkiError> {
        if trust_id(pem)? == self.id() {
            return Ok(());
        }
        let v = Verifiers::new(pem)?;
        *self.0.write().expect("trust lock") = v;
        Ok(())
    }

    /// The bundle trusted, PEM.
    pub fn pem(&self) -> String {
        self.0.read().expect("trust lock").pem.clone()
    }

    /// Its [`trust_id`].
    pub fn id(&self) -> String {
        self.0.read().expect("trust lock").id.clone()
    }

    fn client(&self) -> Arc<dyn ClientCertVerifier> {
        self.0.read().expect("trust lock").client.clone()
    }

    fn server(&self) -> Arc<dyn ServerCertVerifier> {
        self.0.read().expect("trust lock").server.clone()
    }

    /// A client config that trusts these roots and presents whatever `me`
    /// holds, both as they are at each connection.
    pub fn client_config(
        self: &Arc<Self>,
        me: Arc<LiveCert>,
    ) -> Result<rustls::ClientConfig, PkiError> {
        Ok(rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()?
            .dangerous()
            .with_custom_certificate_verifier(self.clone())
            .with_client_cert_resolver(me))
    }

    /// A server config for the manager's port that presents whatever `me`
    /// holds: clients with a certificate from these roots are verified;
    /// clients without one are let through to the TLS layer so that they
    /// can join, and the API refuses them every route but the join.
    pub fn server_config_join(
        self: &Arc<Self>,
        me: Arc<LiveCert>,
    ) -> Result<rustls::ServerConfig, PkiError> {
        Ok(rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()?
            .with_client_cert_verifier(self.clone())
            .with_cert_resolver(me))
    }
}

impl ClientCertVerifier for Trust {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        false
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        // The roots change: no hints (our clients present their one
        // certificate whatever the hints).
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.client()
            .verify_client_cert(end_entity, intermediates, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        ClientCertVerifier::verify_tls12_signature(&*self.client(), message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        ClientCertVerifier::verify_tls13_signature(&*self.client(), message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        ClientCertVerifier::supported_verify_schemes(&*self.client())
    }
}

impl ServerCertVerifier for Trust {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.server()
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        ServerCertVerifier::verify_tls12_signature(&*self.server(), message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        ServerCertVerifier::verify_tls13_signature(&*self.server(), message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        ServerCertVerifier::supported_verify_schemes(&*self.server())
    }
}
