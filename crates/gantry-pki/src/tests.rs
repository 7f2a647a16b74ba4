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
    let config = Arc::new(ca.server_config(me).unwrap());
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
