use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::Arc;

use super::*;

/// Serves one mTLS connection that echoes a line; returns the port and a
/// handle that yields the client's common name (or the handshake error).
fn echo_server(
    ca: &ClusterCa,
    me: &Issued,
) -> (u16, std::thread::JoinHandle<Result<String, String>>) {
    echo_with(Arc::new(ca.server_config(me).unwrap()))
}

/// [`echo_server`] with a server config of the caller's.
fn echo_with(
    config: Arc<rustls::ServerConfig>,
) -> (u16, std::thread::JoinHandle<Result<String, String>>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let h = std::thread::spawn(move || {
        let (sock, _) = l.accept().map_err(|e| e.to_string())?;
        let conn = rustls::ServerConnection::new(config).map_err(|e| e.to_string())?;
        let mut tls = rustls::StreamOwned::new(conn, sock);
        let mut line = String::new();
        BufReader::new(&mut tls)
            .read_line(&mut line)
            .map_err(|e| e.to_string())?;
        tls.write_all(line.as_bytes()).map_err(|e| e.to_string())?;
        tls.flush().map_err(|e| e.to_string())?;
        let peer = tls.conn.peer_certificates().map(|c| c.len()).unwrap_or(0);
        Ok(format!("{peer} client cert(s), said {}", line.trim()))
    });
    (port, h)
}

fn talk(port: u16, config: rustls::ClientConfig) -> Result<String, String> {
    let name = rustls::pki_types::ServerName::try_from(MANAGER_NAME).unwrap();
    let conn = rustls::ClientConnection::new(Arc::new(config), name).map_err(|e| e.to_string())?;
    let sock = TcpStream::connect(("127.0.0.1", port)).map_err(|e| e.to_string())?;
    let mut tls = rustls::StreamOwned::new(conn, sock);
    tls.write_all(b"hello\n").map_err(|e| e.to_string())?;
    let mut line = String::new();
    BufReader::new(&mut tls)
        .read_line(&mut line)
        .map_err(|e| e.to_string())?;
    Ok(line)
}

#[test]
fn nodes_of_the_cluster_talk_mutual_tls() {
    let ca = ClusterCa::generate("prod").unwrap();
    let manager = ca
        .issue("mgr-1", Role::Manager, &["192.168.77.10".into()])
        .unwrap();
    let worker = ca.issue("node-abc", Role::Worker, &[]).unwrap();
    let (port, server) = echo_server(&ca, &manager);
    assert_eq!(
        talk(port, ca.client_config(&worker).unwrap()).unwrap(),
        "hello\n"
    );
    assert_eq!(
        server.join().unwrap().unwrap(),
        "1 client cert(s), said hello"
    );
}

#[test]
fn a_certificate_from_another_cluster_is_refused() {
    let ca = ClusterCa::generate("prod").unwrap();
    let other = ClusterCa::generate("prod").unwrap(); // same name, other keys
    let manager = ca.issue("mgr-1", Role::Manager, &[]).unwrap();
    let intruder = other.issue("node-x", Role::Worker, &[]).unwrap();
    let (port, server) = echo_server(&ca, &manager);
    // The intruder trusts the real CA but presents a foreign certificate.
    let mut roots = rustls::RootCertStore::empty();
    roots.add(certs(ca.cert_pem()).unwrap().remove(0)).unwrap();
    let cfg = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_client_auth_cert(
            certs(&intruder.cert_pem).unwrap(),
            key(&intruder.key_pem).unwrap(),
        )
        .unwrap();
    assert!(
        talk(port, cfg).is_err(),
        "a foreign client certificate must not get through"
    );
    assert!(server.join().unwrap().is_err());
}

#[test]
fn an_agent_refuses_a_manager_of_another_cluster() {
    let ca = ClusterCa::generate("prod").unwrap();
    let impostor_ca = ClusterCa::generate("prod").unwrap();
    let impostor = impostor_ca.issue("mgr-evil", Role::Manager, &[]).unwrap();
    let worker = ca.issue("node-abc", Role::Worker, &[]).unwrap();
    let (port, _server) = echo_server(&impostor_ca, &impostor);
    let e = talk(port, ca.client_config(&worker).unwrap()).unwrap_err();
    assert!(
        e.contains("certificate") || e.contains("UnknownIssuer"),
        "{e}"
    );
}

#[test]
fn a_client_without_a_certificate_is_refused() {
    let ca = ClusterCa::generate("prod").unwrap();
    let manager = ca.issue("mgr-1", Role::Manager, &[]).unwrap();
    let (port, server) = echo_server(&ca, &manager);
    let mut roots = rustls::RootCertStore::empty();
    roots.add(certs(ca.cert_pem()).unwrap().remove(0)).unwrap();
    let anonymous = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    assert!(talk(port, anonymous).is_err());
    assert!(server.join().unwrap().is_err());
}

#[test]
fn a_reloaded_ca_keeps_issuing_trusted_certificates() {
    let ca = ClusterCa::generate("prod").unwrap();
    let again = ClusterCa::from_pem("prod", ca.cert_pem(), ca.key_pem());
    assert_eq!(again.fingerprint().unwrap(), ca.fingerprint().unwrap());
    let manager = ca.issue("mgr-1", Role::Manager, &[]).unwrap();
    let later = again.issue("node-late", Role::Worker, &[]).unwrap();
    let (port, server) = echo_server(&ca, &manager);
    assert_eq!(
        talk(port, ca.client_config(&later).unwrap()).unwrap(),
        "hello\n"
    );
    server.join().unwrap().unwrap();
}

#[test]
fn join_tokens_carry_the_fingerprint_and_hide_the_secret() {
    let ca = ClusterCa::generate("prod").unwrap();
    let nonce = JoinToken::new_nonce();
    let t = JoinToken::derive(&ca, &nonce).unwrap();
    assert_eq!(
        t,
        JoinToken::derive(&ca, &nonce).unwrap(),
        "derived again alike"
    );
    let other = ClusterCa::generate("prod").unwrap();
    assert_ne!(
        t.secret,
        JoinToken::derive(&other, &nonce).unwrap().secret,
        "another CA key derives another secret"
    );
    let s = t.to_string();
    assert!(s.starts_with("GTKN-1-"));
    let back = JoinToken::parse(&s).unwrap();
    assert_eq!(back, t);
    assert_eq!(back.ca_fingerprint, ca.fingerprint().unwrap());
    assert!(back.matches(&t.secret_hash()));
    let rotated = JoinToken::derive(&ca, &JoinToken::new_nonce()).unwrap();
    assert!(
        !rotated.matches(&t.secret_hash()),
        "a rotated token replaces the old one"
    );
    assert!(!format!("{t:?}").contains(&t.secret));
    for bad in [
        "",
        "GTKN-2-aa-bb",
        "GTKN-1-zz-00",
        &s[..s.len() - 1],
        &s.to_uppercase(),
    ] {
        assert!(JoinToken::parse(bad).is_err(), "{bad}");
    }
}

#[test]
fn a_signed_request_gives_the_managers_name_and_role_whatever_it_asked() {
    let ca = ClusterCa::generate("prod").unwrap();
    let manager = ca.issue("mgr-1", Role::Manager, &[]).unwrap();
    // The node asks for nothing in particular; even a request naming the
    // manager would get the name and role the manager chooses.
    let (key_pem, csr_pem) = new_request().unwrap();
    let cert_pem = ca.sign_request(&csr_pem, "node-7", Role::Worker).unwrap();
    let worker = Issued { cert_pem, key_pem };
    let der = certs(&worker.cert_pem).unwrap().remove(0);
    assert_eq!(
        peer_identity(der.as_ref()),
        Some(("node-7".to_owned(), Role::Worker))
    );
    let (port, server) = echo_server(&ca, &manager);
    assert_eq!(
        talk(port, ca.client_config(&worker).unwrap()).unwrap(),
        "hello\n"
    );
    server.join().unwrap().unwrap();
    assert!(ca.sign_request("not a request", "x", Role::Worker).is_err());
}

#[test]
fn the_fetched_ca_is_only_trusted_by_its_fingerprint() {
    let ca = ClusterCa::generate("prod").unwrap();
    let other = ClusterCa::generate("prod").unwrap();
    let token = JoinToken::derive(&ca, "1").unwrap();
    assert_eq!(fingerprint(ca.cert_pem()).unwrap(), token.ca_fingerprint);
    assert_ne!(fingerprint(other.cert_pem()).unwrap(), token.ca_fingerprint);
    // The join port lets a client without a certificate complete TLS.
    let manager = ca.issue("mgr-1", Role::Manager, &[]).unwrap();
    let config = Arc::new(ca.server_config_join(&manager).unwrap());
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let h = std::thread::spawn(move || {
        let (sock, _) = l.accept().unwrap();
        let conn = rustls::ServerConnection::new(config).unwrap();
        let mut tls = rustls::StreamOwned::new(conn, sock);
        let mut line = String::new();
        BufReader::new(&mut tls).read_line(&mut line).unwrap();
        tls.write_all(line.as_bytes()).unwrap();
        tls.flush().unwrap();
        tls.conn.peer_certificates().map(|c| c.len()).unwrap_or(0)
    });
    assert_eq!(
        talk(port, ca.client_config_anonymous().unwrap()).unwrap(),
        "hello\n"
    );
    assert_eq!(h.join().unwrap(), 0);
}

#[test]
fn web_certificates_carry_their_names_and_expiry() {
    let ca = ClusterCa::generate("c1-edge").unwrap();
    let names = vec!["www.shop.test".to_owned(), "10.1.2.3".to_owned()];
    let (issued, not_after) = ca.issue_web(&names, 90).unwrap();
    let (got, exp) = cert_info(&issued.cert_pem).unwrap();
    assert_eq!(got, names);
    assert_eq!(exp, not_after);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    assert!(exp > now + 89 * 86_400_000 && exp < now + 91 * 86_400_000);
    check_key_pair(&issued.cert_pem, &issued.key_pem).unwrap();
    let other = ca.issue_web(&names, 1).unwrap().0;
    assert!(check_key_pair(&issued.cert_pem, &other.key_pem).is_err());
    assert!(cert_info("junk").is_err());
    assert!(cert_info("").is_err());
}

#[test]
fn a_rotated_ca_is_trusted_through_its_cross_certificate_until_the_old_root_goes() {
    let old = ClusterCa::generate("prod").unwrap();
    let (new, cross) = old.rotate().unwrap();
    assert_ne!(new.fingerprint().unwrap(), old.fingerprint().unwrap());
    let issuing = new.clone().with_chain(&cross);
    let worker_old = old.issue("node-old", Role::Worker, &[]).unwrap();
    let worker_new = issuing.issue("node-new", Role::Worker, &[]).unwrap();
    let (key_pem, csr) = new_request().unwrap();
    let signed = Issued {
        cert_pem: issuing
            .sign_request(&csr, "node-csr", Role::Worker)
            .unwrap(),
        key_pem,
    };
    let manager_new = issuing.issue("manager", Role::Manager, &[]).unwrap();
    assert!(issued_by(&worker_new.cert_pem, new.cert_pem()));
    assert!(!issued_by(&worker_new.cert_pem, old.cert_pem()));
    assert!(issued_by(&worker_old.cert_pem, old.cert_pem()));
    // A joining node trusts the root its token names, of the two.
    let bundle = format!("{}{}", new.cert_pem(), old.cert_pem());
    let picked = pick_by_fingerprint(&bundle, &old.fingerprint().unwrap()).unwrap();
    assert_eq!(fingerprint(&picked).unwrap(), old.fingerprint().unwrap());
    assert_eq!(
        trust_id(&picked).unwrap(),
        trust_id(old.cert_pem()).unwrap()
    );
    assert!(pick_by_fingerprint(&bundle, &"0".repeat(64)).is_none());
    // A renewed certificate is the leaf, then the cross-signed CA.
    assert_eq!(certs(&worker_new.cert_pem).unwrap().len(), 2);
    assert_eq!(certs(&signed.cert_pem).unwrap().len(), 2);
    check_key_pair(&signed.cert_pem, &signed.key_pem).unwrap();
    assert_eq!(
        peer_identity(certs(&signed.cert_pem).unwrap()[0].as_ref()),
        Some(("node-csr".into(), Role::Worker))
    );

    // While the rotation goes on, the manager trusts both roots and
    // presents a certificate of the new CA; a node that still trusts only
    // the old root verifies it through the cross certificate.
    let both = format!("{}{}", new.cert_pem(), old.cert_pem());
    let trust = Trust::new(&both).unwrap();
    let server = Arc::new(
        trust
            .server_config_join(LiveCert::new(&manager_new).unwrap())
            .unwrap(),
    );
    let client = |me: &Issued, roots: &str| {
        Trust::new(roots)
            .unwrap()
            .client_config(LiveCert::new(me).unwrap())
            .unwrap()
    };
    for (me, roots) in [
        (&worker_old, old.cert_pem()),
        (&worker_new, old.cert_pem()),
        (&signed, old.cert_pem()),
        (&worker_new, new.cert_pem()),
        (&worker_old, both.as_str()),
    ] {
        let (port, h) = echo_with(server.clone());
        assert_eq!(talk(port, client(me, roots)).unwrap(), "hello\n");
        assert!(h.join().unwrap().unwrap().ends_with("said hello"));
    }

    // The rotation ends: the same server config, whose trust now holds the
    // new root alone, refuses a certificate of the old CA and still takes
    // the new ones.
    trust.set(new.cert_pem()).unwrap();
    assert_eq!(trust.id(), trust_id(new.cert_pem()).unwrap());
    let (port, h) = echo_with(server.clone());
    let _ = talk(port, client(&worker_old, &both));
    let refused = h.join().unwrap().unwrap_err();
    assert!(
        refused.contains("UnknownIssuer") || refused.contains("certificate"),
        "{refused}"
    );
    let (port, h) = echo_with(server.clone());
    assert_eq!(
        talk(port, client(&worker_new, new.cert_pem())).unwrap(),
        "hello\n"
    );
    h.join().unwrap().unwrap();
    // A peer that trusts only the new root refuses the old CA's server.
    let old_server = Arc::new(
        Trust::new(&both)
            .unwrap()
            .server_config_join(
                LiveCert::new(&old.issue("manager", Role::Manager, &[]).unwrap()).unwrap(),
            )
            .unwrap(),
    );
    let (port, _h) = echo_with(old_server);
    assert!(talk(port, client(&worker_new, new.cert_pem())).is_err());
}

#[test]
fn a_bundle_is_identified_whatever_its_order() {
    let a = ClusterCa::generate("a").unwrap();
    let b = ClusterCa::generate("b").unwrap();
    let ab = trust_id(&format!("{}{}", a.cert_pem(), b.cert_pem())).unwrap();
    let ba = trust_id(&format!("{}\n{}", b.cert_pem(), a.cert_pem())).unwrap();
    assert_eq!(ab, ba);
    assert_ne!(ab, trust_id(a.cert_pem()).unwrap());
    assert!(Trust::new("not a certificate").is_err());
}
