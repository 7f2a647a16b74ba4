//! The proxy against real backends (small hyper servers on loopback
//! addresses) and real clients (curl, raw sockets). No root needed.

use std::convert::Infallible;
use std::net::{Ipv4Addr, SocketAddr};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use gantry_proxy::{CertPem, Proxy, ProxyConfig, Route};
use gantry_route::{Balance, HttpsMode, RouteSpec};
use http_body_util::Full;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// A backend on `ip:port` that answers `ID METHOD PATH` and the request's
/// forwarding headers, and echoes bytes after an Upgrade.
async fn backend(ip: Ipv4Addr, port: u16, id: &'static str) {
    let l = TcpListener::bind((ip, port)).await.unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((s, _)) = l.accept().await else { return };
            tokio::spawn(async move {
                let svc = service_fn(move |mut req: Request<hyper::body::Incoming>| async move {
                    if req.headers().contains_key("upgrade") {
                        let up = hyper::upgrade::on(&mut req);
                        tokio::spawn(async move {
                            let Ok(up) = up.await else { return };
                            let mut io = TokioIo::new(up);
                            let mut buf = [0u8; 1024];
                            loop {
                                match io.read(&mut buf).await {
                                    Ok(0) | Err(_) => return,
                                    Ok(n) => {
                                        let mut out = id.as_bytes().to_vec();
                                        out.push(b':');
                                        out.extend(&buf[..n]);
                                        if io.write_all(&out).await.is_err() {
                                            return;
                                        }
                                    }
                                }
                            }
                        });
                        let r = Response::builder()
                            .status(101)
                            .header("connection", "upgrade")
                            .header("upgrade", "echo")
                            .body(Full::new(Bytes::new()))
                            .unwrap();
                        return Ok::<_, Infallible>(r);
                    }
                    let h = |k: &str| {
                        req.headers()
                            .get(k)
                            .and_then(|v| v.to_str().ok())
                            .unwrap_or("-")
                            .to_owned()
                    };
                    let body = format!(
                        "{id} {} {}\nxff={}\nproto={}\nxhost={}\nforwarded={}\nhost={}\n",
                        req.method(),
                        req.uri(),
                        h("x-forwarded-for"),
                        h("x-forwarded-proto"),
                        h("x-forwarded-host"),
                        h("forwarded"),
                        h("host"),
                    );
                    let mut r = Response::new(Full::new(Bytes::from(body)));
                    if req.uri().path() == "/unhealthy" {
                        *r.status_mut() = hyper::StatusCode::INTERNAL_SERVER_ERROR;
                    }
                    Ok(r)
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection_with_upgrades(TokioIo::new(s), svc)
                    .await;
            });
        }
    });
}

async fn echo(s: &mut TcpStream, msg: &[u8]) -> String {
    let mut buf = vec![0u8; 64];
    s.write_all(msg).await.unwrap();
    let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
        .await
        .unwrap()
        .unwrap();
    String::from_utf8_lossy(&buf[..n]).to_string()
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

struct Fixture {
    proxy: Arc<Proxy>,
    http: SocketAddr,
    https: SocketAddr,
    port: u16,
}

async fn fixture(config: ProxyConfig) -> Fixture {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let port = free_port();
    for (i, id) in [(2, "b2"), (3, "b3"), (4, "b4")] {
        backend(Ipv4Addr::new(127, 0, 0, i), port, id).await;
    }
    let http_l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let https_l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let (http, https) = (http_l.local_addr().unwrap(), https_l.local_addr().unwrap());
    let proxy = Proxy::new(ProxyConfig {
        https_port: https.port(),
        ..config
    });
    tokio::spawn(gantry_proxy::serve_http(proxy.clone(), http_l));
    tokio::spawn(gantry_proxy::serve_https(proxy.clone(), https_l));
    tokio::spawn(proxy.clone().check_health());
    Fixture {
        proxy,
        http,
        https,
        port,
    }
}

fn route(service: &str, hosts: &[&str], path: &str, port: u16, backends: &[u8]) -> Route {
    let mut spec = RouteSpec::new(service, port);
    spec.hosts = hosts.iter().map(|h| (*h).to_owned()).collect();
    spec.path = path.into();
    Route {
        spec,
        backends: backends
            .iter()
            .map(|i| Ipv4Addr::new(127, 0, 0, *i))
            .collect(),
    }
}

/// curl, returning (status, headers+body).
async fn curl(args: &[&str]) -> (u16, String) {
    let args: Vec<String> = args.iter().map(|s| (*s).to_owned()).collect();
    tokio::task::spawn_blocking(move || {
        let out = Command::new("curl")
            .args(["-sS", "-i", "--max-time", "10"])
            .args(&args)
            .output()
            .expect("curl runs");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let status = text
            .lines()
            .rev()
            .find(|l| l.starts_with("HTTP/"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        (status, text)
    })
    .await
    .unwrap()
}

fn host_url(f: &Fixture, host: &str, path: &str) -> [String; 3] {
    [
        "-H".into(),
        format!("Host: {host}"),
        format!("http://{}{path}", f.http),
    ]
}

async fn get(f: &Fixture, host: &str, path: &str) -> (u16, String) {
    let a = host_url(f, host, path);
    curl(&a.iter().map(String::as_str).collect::<Vec<_>>()).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_balance_forward_and_answer_for_themselves() {
    let f = fixture(ProxyConfig::default()).await;
    let mut api = route("api", &["shop.test"], "/api", f.port, &[4]);
    api.spec.strip_prefix = true;
    f.proxy.set_routes(&[
        route("web", &["shop.test", "*.shop.test"], "/", f.port, &[2, 3]),
        api,
        route("empty", &["empty.test"], "/", f.port, &[]),
    ]);
    // Round robin over two backends.
    let mut seen = Vec::new();
    for _ in 0..4 {
        let (s, body) = get(&f, "shop.test", "/x?q=1").await;
        assert_eq!(s, 200, "{body}");
        let line = body
            .lines()
            .find(|l| l.starts_with('b'))
            .unwrap()
            .to_owned();
        assert!(line.ends_with("GET /x?q=1"), "{line}");
        seen.push(line[..2].to_owned());
    }
    seen.sort();
    assert_eq!(seen, ["b2", "b2", "b3", "b3"]);
    // Path prefix stripped; forwarding headers set.
    let (s, body) = get(&f, "SHOP.test:80", "/api/users").await;
    assert_eq!(s, 200);
    assert!(body.contains("b4 GET /users"), "{body}");
    assert!(body.contains("xff=127.0.0.1\n"), "{body}");
    assert!(body.contains("proto=http\n"), "{body}");
    assert!(body.contains("xhost=shop.test\n"), "{body}");
    assert!(
        body.contains("forwarded=for=127.0.0.1;proto=http;host=\"SHOP.test:80\""),
        "{body}"
    );
    // A wildcard.
    assert_eq!(get(&f, "a.shop.test", "/").await.0, 200);
    // No route: 404. A route with no healthy task: 503 and Retry-After.
    let (s, body) = get(&f, "nowhere.test", "/").await;
    assert_eq!(s, 404, "{body}");
    let (s, body) = get(&f, "empty.test", "/").await;
    assert_eq!(s, 503, "{body}");
    assert!(
        body.to_ascii_lowercase().contains("retry-after: 5"),
        "{body}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_backend_is_retried_ejected_and_checked() {
    let f = fixture(ProxyConfig {
        check_every: Duration::from_millis(200),
        ..ProxyConfig::default()
    })
    .await;
    // 127.0.0.9 listens on nothing: connections are refused.
    f.proxy
        .set_routes(&[route("web", &["r.test"], "/", f.port, &[9, 2])]);
    for _ in 0..6 {
        let (s, body) = get(&f, "r.test", "/").await;
        assert_eq!(s, 200, "GETs are retried on another backend: {body}");
    }
    // A POST with a body is not retried, but the dead one is ejected now.
    for _ in 0..4 {
        let a = host_url(&f, "r.test", "/");
        let (s, _) = curl(&["-d", "x=1", &a[0], &a[1], &a[2]]).await;
        assert_eq!(s, 200);
    }
    // Only dead backends: 502 after trying them (they are ejected now,
    // so a new route with only them answers 503).
    f.proxy
        .set_routes(&[route("dead", &["d.test"], "/", 1, &[2])]);
    let (s, body) = get(&f, "d.test", "/").await;
    assert_eq!(s, 502, "{body}");
    let (s, _) = get(&f, "d.test", "/").await;
    assert_eq!(s, 503);
    // Active checks: a health path that fails takes the backend out.
    let mut r = route("web", &["h.test"], "/", f.port, &[2]);
    r.spec.health_path = Some("/health".into());
    let mut sick = route("sick", &["s.test"], "/", f.port, &[3]);
    sick.spec.health_path = Some("/unhealthy".into());
    f.proxy.set_routes(&[r, sick]);
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(
        get(&f, "h.test", "/").await.0,
        200,
        "its health path answers 200"
    );
    assert_eq!(
        get(&f, "s.test", "/").await.0,
        503,
        "its health path answers 500"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upgrades_survive_route_changes() {
    let f = fixture(ProxyConfig::default()).await;
    f.proxy
        .set_routes(&[route("ws", &["ws.test"], "/", f.port, &[3])]);
    let mut s = TcpStream::connect(f.http).await.unwrap();
    s.write_all(
        b"GET /chat HTTP/1.1\r\nHost: ws.test\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n",
    )
    .await
    .unwrap();
    let mut buf = vec![0u8; 1024];
    let n = s.read(&mut buf).await.unwrap();
    let head = String::from_utf8_lossy(&buf[..n]).to_string();
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    assert_eq!(echo(&mut s, b"hello").await, "b3:hello");
    // Routes change (even the WebSocket's own route goes away): the open
    // connection is untouched.
    f.proxy
        .set_routes(&[route("other", &["o.test"], "/", f.port, &[2])]);
    assert_eq!(echo(&mut s, b"still").await, "b3:still");
    assert_eq!(get(&f, "ws.test", "/").await.0, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_http2_redirects_and_sticky_sessions() {
    let f = fixture(ProxyConfig::default()).await;
    let ca = rcgen::CertifiedIssuer::self_signed(
        {
            let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
            p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
            p.distinguished_name
                .push(rcgen::DnType::CommonName, "gantry proxy test CA");
            p
        },
        rcgen::KeyPair::generate().unwrap(),
    )
    .unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["secure.test".to_owned()])
        .unwrap()
        .signed_by(&key, &ca)
        .unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_string_lossy().into_owned();
    let ca_path = format!("{dir}/ca.pem");
    std::fs::write(&ca_path, ca.pem()).unwrap();
    let errors = f.proxy.set_certs(&[
        CertPem {
            names: vec!["secure.test".into()],
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        },
        CertPem {
            names: vec!["broken.test".into()],
            cert_pem: "not a pem".into(),
            key_pem: String::new(),
        },
    ]);
    assert_eq!(errors.len(), 1, "the broken one is reported");
    let mut sticky = route("web", &["secure.test"], "/", f.port, &[2, 3, 4]);
    sticky.spec.sticky = true;
    sticky.spec.balance = Balance::LeastConn;
    let mut plain = route("plain", &["plain.test"], "/", f.port, &[2]);
    plain.spec.https = HttpsMode::Off;
    let mut forced = route("forced", &["forced.test"], "/", f.port, &[2]);
    forced.spec.https = HttpsMode::Redirect;
    forced.spec.redirect_from = vec!["old.test".into()];
    f.proxy.set_routes(&[sticky, plain, forced]);

    // HTTP with a certificate redirects to HTTPS.
    let (s, body) = get(&f, "secure.test", "/p?x=1").await;
    assert_eq!(s, 301, "{body}");
    assert!(
        body.contains(&format!(
            "location: https://secure.test:{}/p?x=1",
            f.https.port()
        )),
        "{body}"
    );
    assert_eq!(get(&f, "plain.test", "/").await.0, 200, "https off: served");
    assert_eq!(
        get(&f, "forced.test", "/").await.0,
        301,
        "httpsOnly: redirected"
    );
    let (s, body) = get(&f, "old.test", "/a").await;
    assert_eq!(s, 301);
    assert!(body.contains("location: https://forced.test:"), "{body}");

    // HTTPS over HTTP/2, the certificate verified by curl.
    let resolve = format!("secure.test:{}:127.0.0.1", f.https.port());
    let url = format!("https://secure.test:{}/h2", f.https.port());
    let (s, body) = curl(&["--http2", "--cacert", &ca_path, "--resolve", &resolve, &url]).await;
    assert_eq!(s, 200, "{body}");
    assert!(body.starts_with("HTTP/2 200"), "{body}");
    assert!(body.contains("proto=https"), "{body}");
    let cookie = body
        .lines()
        .find_map(|l| l.strip_prefix("set-cookie: gantry_sticky="))
        .and_then(|c| c.split(';').next())
        .expect("a sticky cookie")
        .to_owned();
    let id = body.lines().find(|l| l.starts_with('b')).unwrap()[..2].to_owned();
    for _ in 0..4 {
        let (s, body) = curl(&[
            "--http2",
            "--cacert",
            &ca_path,
            "--resolve",
            &resolve,
            "-b",
            &format!("gantry_sticky={cookie}"),
            &url,
        ])
        .await;
        assert_eq!(s, 200);
        assert!(
            body.contains(&format!("{id} GET /h2")),
            "sticky to {id}: {body}"
        );
        assert!(!body.contains("set-cookie"), "{body}");
    }
    // No certificate for the name: the handshake fails.
    let resolve = format!("plain.test:{}:127.0.0.1", f.https.port());
    let url = format!("https://plain.test:{}/", f.https.port());
    let (s, _) = curl(&["--cacert", &ca_path, "--resolve", &resolve, &url]).await;
    assert_eq!(s, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_address_comes_through_proxy_protocol() {
    let f = fixture(ProxyConfig {
        trusted_proxies: vec!["127.0.0.1".parse().unwrap()],
        ..ProxyConfig::default()
    })
    .await;
    f.proxy
        .set_routes(&[route("web", &["pp.test"], "/", f.port, &[2])]);
    let (s, body) = curl(&[
        "--haproxy-protocol",
        "-H",
        "Host: pp.test",
        &format!("http://{}/", f.http),
    ])
    .await;
    assert_eq!(s, 200, "{body}");
    // curl sends its own connection's addresses; a v1 header by hand
    // carries another client.
    let mut c = TcpStream::connect(f.http).await.unwrap();
    c.write_all(b"PROXY TCP4 203.0.113.7 127.0.0.1 40000 80\r\nGET / HTTP/1.1\r\nHost: pp.test\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut out = String::new();
    c.read_to_string(&mut out).await.unwrap();
    assert!(out.contains("xff=203.0.113.7\n"), "{out}");
    // A trusted peer without a header is dropped.
    let (s, _) = get(&f, "pp.test", "/").await;
    assert_eq!(s, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acme_challenges_are_answered() {
    let f = fixture(ProxyConfig::default()).await;
    // HTTP-01: the token's key authorization, on plain HTTP, for any host.
    let mut http01 = std::collections::HashMap::new();
    http01.insert("tok123".to_owned(), "tok123.thumb".to_owned());
    // TLS-ALPN-01: a certificate with the acmeIdentifier extension, only
    // to clients that ask for acme-tls/1.
    let key = rcgen::KeyPair::generate().unwrap();
    let mut p = rcgen::CertificateParams::new(vec!["alpn.test".to_owned()]).unwrap();
    p.custom_extensions = vec![rcgen::CustomExtension::new_acme_identifier(&[7u8; 32])];
    let cert = p.self_signed(&key).unwrap();
    f.proxy.set_challenges(
        http01,
        &[CertPem {
            names: vec!["alpn.test".into()],
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        }],
    );
    let (s, body) = get(&f, "any.test", "/.well-known/acme-challenge/tok123").await;
    assert_eq!(s, 200);
    assert!(body.ends_with("tok123.thumb"), "{body}");
    assert_eq!(
        get(&f, "any.test", "/.well-known/acme-challenge/other")
            .await
            .0,
        404
    );
    let addr = f.https.to_string();
    let out = tokio::task::spawn_blocking(move || {
        Command::new("openssl")
            .args([
                "s_client",
                "-alpn",
                "acme-tls/1",
                "-servername",
                "alpn.test",
                "-connect",
                &addr,
            ])
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("ALPN protocol: acme-tls/1"), "{text}");
    assert!(
        text.contains("unhandled critical extension"),
        "the challenge certificate: {text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_and_slow_clients_are_closed() {
    let f = fixture(ProxyConfig {
        header_timeout: Duration::from_millis(500),
        ..ProxyConfig::default()
    })
    .await;
    f.proxy.set_routes(&[route("web", &[], "/", f.port, &[2])]);
    // A keep-alive connection left idle after its request is closed.
    let mut s = TcpStream::connect(f.http).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: a.test\r\n\r\n")
        .await
        .unwrap();
    let mut buf = vec![0u8; 4096];
    let n = s.read(&mut buf).await.unwrap();
    assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
    let t0 = std::time::Instant::now();
    let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
        .await
        .expect("closed within the timeout")
        .unwrap_or(0);
    assert_eq!(n, 0, "the idle connection is closed");
    assert!(t0.elapsed() < Duration::from_secs(3));
    // A client that never finishes its request head is closed too.
    let mut s = TcpStream::connect(f.http).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: a.te").await.unwrap();
    let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
        .await
        .expect("closed within the timeout")
        .unwrap_or(0);
    let head = String::from_utf8_lossy(&buf[..n]).to_string();
    assert!(n == 0 || head.starts_with("HTTP/1.1 408"), "{head}");
}

/// A backend on `ip:port` written by hand, answering by path in the ways
/// real servers frame their responses (and some in ways they must not).
/// Every answer names the connection it came on (`conn=N`, counted from
/// 1), so reuse shows.
async fn raw_backend(ip: Ipv4Addr, port: u16) -> Arc<std::sync::atomic::AtomicUsize> {
    let l = TcpListener::bind((ip, port)).await.unwrap();
    let accepted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = l.accept().await else {
                return;
            };
            let id = count.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
            tokio::spawn(async move {
                let mut buf = Vec::new();
                loop {
                    // One request head, and its body by Content-Length.
                    let end = loop {
                        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                            break i + 4;
                        }
                        let mut chunk = [0u8; 4096];
                        match s.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    };
                    let head = String::from_utf8_lossy(&buf[..end]).to_string();
                    let len: usize = head
                        .lines()
                        .find_map(|l| {
                            let (k, v) = l.split_once(':')?;
                            k.eq_ignore_ascii_case("content-length")
                                .then(|| v.trim().parse().ok())?
                        })
                        .unwrap_or(0);
                    while buf.len() < end + len {
                        let mut chunk = [0u8; 4096];
                        match s.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                    let body = String::from_utf8_lossy(&buf[end..end + len]).to_string();
                    buf.drain(..end + len);
                    let mut words = head.split_whitespace();
                    let (method, path) = (words.next().unwrap_or(""), words.next().unwrap_or(""));
                    let ok = |b: String| {
                        format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{b}", b.len())
                            .into_bytes()
                    };
                    let (out, close): (Vec<u8>, bool) = match path {
                        "/chunked" => (
                            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6;x=y\r\n world\r\n0\r\nX-T: 1\r\n\r\n".to_vec(),
                            false,
                        ),
                        "/close" => (b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nto the end".to_vec(), true),
                        "/http10" => (b"HTTP/1.0 200 OK\r\nContent-Length: 4\r\n\r\nold!".to_vec(), true),
                        "/nocontent" => (b"HTTP/1.1 204 No Content\r\n\r\n".to_vec(), false),
                        "/continue" => (
                            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nafter".to_vec(),
                            false,
                        ),
                        "/big" => {
                            let mut v = b"HTTP/1.1 200 OK\r\nContent-Length: 1048576\r\n\r\n".to_vec();
                            v.extend(std::iter::repeat_n(b'x', 1 << 20));
                            (v, false)
                        }
                        "/huge" => {
                            let mut v = format!("HTTP/1.1 200 OK\r\nContent-Length: {HUGE}\r\n\r\n").into_bytes();
                            v.extend(std::iter::repeat_n(b'x', HUGE));
                            (v, false)
                        }
                        "/bad-length" => (
                            b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd".to_vec(),
                            true,
                        ),
                        "/garbage" => (b"SSH-2.0-OpenSSH\r\n\r\n".to_vec(), true),
                        "/short" => (b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly this".to_vec(), true),
                        // Answers, then closes the idle connection as a
                        // keep-alive timeout would, without saying so.
                        "/then-close" => (ok(format!("conn={id}")), true),
                        _ => (ok(format!("{method} {path} conn={id} body={body}")), false),
                    };
                    if s.write_all(&out).await.is_err() {
                        return;
                    }
                    if close {
                        return;
                    }
                }
            });
        }
    });
    accepted
}

/// The body `/huge` has: more than the sockets between proxy and client
/// hold, so a client that stops reading stops the proxy's writes.
const HUGE: usize = 64 << 20;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_is_let_go() {
    let f = fixture(ProxyConfig {
        send_timeout: Duration::from_secs(1),
        ..ProxyConfig::default()
    })
    .await;
    raw_backend(Ipv4Addr::new(127, 0, 0, 6), f.port).await;
    f.proxy
        .set_routes(&[route("raw", &["raw.test"], "/", f.port, &[6])]);
    let mut s = TcpStream::connect(f.http).await.unwrap();
    s.write_all(b"GET /huge HTTP/1.1\r\nHost: raw.test\r\n\r\n")
        .await
        .unwrap();
    // Not a byte read for well over the send timeout: the proxy closes.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let mut got = 0usize;
    let mut buf = vec![0u8; 1 << 16];
    let ended = loop {
        match tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break true,
            Ok(Ok(n)) => got += n,
            Err(_) => break false,
        }
    };
    assert!(ended, "the proxy kept the connection open");
    assert!(
        got > 0 && got < HUGE,
        "the answer was cut at the timeout: {got} bytes of {HUGE}"
    );
    // The proxy goes on serving others.
    assert_eq!(get(&f, "raw.test", "/after").await.0, 200);
}

/// Requests written on one raw connection; what comes back until the
/// proxy closes it or stays quiet for 300 ms.
async fn raw_exchange(addr: SocketAddr, requests: &[u8]) -> String {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(requests).await.unwrap();
    let mut got = Vec::new();
    let mut buf = vec![0u8; 65536];
    while let Ok(Ok(n)) = tokio::time::timeout(Duration::from_millis(300), s.read(&mut buf)).await {
        if n == 0 {
            break;
        }
        got.extend_from_slice(&buf[..n]);
    }
    String::from_utf8_lossy(&got).to_string()
}

/// The value of the proxy's open connections gauge.
fn open_connections(p: &Proxy) -> String {
    let mut out = String::new();
    p.encode_metrics(&mut out);
    out.lines()
        .find(|l| l.starts_with("gantry_proxy_open_connections "))
        .unwrap_or_default()
        .rsplit(' ')
        .next()
        .unwrap_or_default()
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backend_framing_reuse_and_broken_answers() {
    let f = fixture(ProxyConfig::default()).await;
    let accepted = raw_backend(Ipv4Addr::new(127, 0, 0, 5), f.port).await;
    f.proxy
        .set_routes(&[route("raw", &["raw.test"], "/", f.port, &[5])]);

    // Keep-alive to the backend: sequential requests share one connection.
    for i in 0..5 {
        let (s, body) = get(&f, "raw.test", &format!("/n{i}")).await;
        assert_eq!(s, 200, "{body}");
        assert!(body.ends_with(&format!("GET /n{i} conn=1 body=")), "{body}");
    }
    assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 1);

    // Chunked, close-delimited, HTTP/1.0, 204, 100 Continue, 1 MiB.
    let (s, body) = get(&f, "raw.test", "/chunked").await;
    assert_eq!(s, 200);
    assert!(body.ends_with("\r\n\r\nhello world"), "{body}");
    let (s, body) = get(&f, "raw.test", "/close").await;
    assert_eq!(s, 200);
    assert!(body.ends_with("\r\n\r\nto the end"), "{body}");
    let (s, body) = get(&f, "raw.test", "/http10").await;
    assert_eq!(s, 200);
    assert!(body.ends_with("\r\n\r\nold!"), "{body}");
    let (s, _) = get(&f, "raw.test", "/nocontent").await;
    assert_eq!(s, 204);
    let (s, body) = get(&f, "raw.test", "/continue").await;
    assert_eq!(s, 200, "{body}");
    assert!(body.ends_with("\r\n\r\nafter"), "{body}");
    let a = host_url(&f, "raw.test", "/big");
    let mut args: Vec<&str> = a.iter().map(String::as_str).collect();
    args.extend(["-o", "/dev/null", "-w", "%{size_download}"]);
    let (_, out) = curl(&args).await;
    assert!(out.ends_with("1048576"), "{out}");
    // HEAD: the head only.
    let (s, body) = curl(&[
        "-I",
        "-H",
        "Host: raw.test",
        &format!("http://{}/x", f.http),
    ])
    .await;
    assert_eq!(s, 200);
    assert!(!body.contains("conn="), "{body}");

    // A backend that closes its idle connections without a word: the
    // next request on the pooled connection is sent again on a new one.
    for _ in 0..3 {
        let (s, body) = get(&f, "raw.test", "/then-close").await;
        assert_eq!(s, 200, "{body}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Broken answers: 502, and the proxy goes on.
    for path in ["/bad-length", "/garbage"] {
        let (s, body) = get(&f, "raw.test", path).await;
        assert_eq!(s, 502, "{path}: {body}");
    }
    // A body cut short: the client gets the head and the bytes that came,
    // then the connection ends before the length the head promised.
    let (s, out) = get(&f, "raw.test", "/short").await;
    assert_eq!(s, 200, "{out}");
    assert!(
        out.contains("only this") && out.contains("curl: (18)"),
        "a body cut short ends the client's answer short too: {out}"
    );
    assert_eq!(get(&f, "raw.test", "/after").await.0, 200);

    // One client connection: a plain GET (the proxy's own HTTP/1 loop),
    // then a POST with a body (handed to hyper with the bytes read), then
    // a pipelined GET that hyper serves; all answered, in order.
    let reqs = b"GET /one HTTP/1.1\r\nHost: raw.test\r\n\r\n\
POST /two HTTP/1.1\r\nHost: raw.test\r\nContent-Length: 5\r\n\r\nhello\
GET /three HTTP/1.1\r\nHost: raw.test\r\n\r\n";
    let got = raw_exchange(f.http, reqs).await;
    let one = got.find("GET /one").expect(&got);
    let two = got.find("POST /two conn=").expect(&got);
    let three = got.find("GET /three").expect(&got);
    assert!(one < two && two < three, "{got}");
    assert!(got.contains("body=hello"), "{got}");
    // HTTP/1.0 without keep-alive: answered, then closed.
    let got = raw_exchange(f.http, b"GET /old HTTP/1.0\r\nHost: raw.test\r\n\r\n").await;
    assert!(got.starts_with("HTTP/1.0 200 OK\r\n"), "{got}");
    assert!(
        got.to_ascii_lowercase().contains("content-length:"),
        "{got}"
    );

    // HTTP/2 with prior knowledge on the plain port (the preface goes to
    // hyper), and a body sent after `Expect: 100-continue`.
    let (s, body) = curl(&[
        "--http2-prior-knowledge",
        "-H",
        "Host: raw.test",
        &format!("http://{}/h2", f.http),
    ])
    .await;
    assert_eq!(s, 200, "{body}");
    assert!(body.starts_with("HTTP/2 200"), "{body}");
    let (s, body) = curl(&[
        "-H",
        "Host: raw.test",
        "-H",
        "Expect: 100-continue",
        "--data-binary",
        "expected",
        &format!("http://{}/expect", f.http),
    ])
    .await;
    assert_eq!(s, 200, "{body}");
    assert!(
        body.contains("POST /expect conn=") && body.ends_with("body=expected"),
        "{body}"
    );

    // The open connections gauge follows a client connection.
    let mut s = TcpStream::connect(f.http).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: raw.test\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 1024];
    assert!(s.read(&mut buf).await.unwrap() > 0);
    let settled = |want: &'static str| {
        let p = f.proxy.clone();
        async move {
            for _ in 0..50 {
                if open_connections(&p) == want {
                    return true;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            false
        }
    };
    assert!(settled("1").await, "{}", open_connections(&f.proxy));
    drop(s);
    assert!(settled("0").await, "{}", open_connections(&f.proxy));
}

/// RFC 9112 3.2: two Host headers (the route would follow one, the
/// backend might read the other) or an HTTP/1.1 request without one get
/// 400, on the proxy's own HTTP/1 loop and on hyper's path (a body);
/// HTTP/1.0 needs no Host.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_with_two_hosts_or_none_get_400() {
    let f = fixture(ProxyConfig::default()).await;
    f.proxy.set_routes(&[
        route("a", &["a.test"], "/", f.port, &[2]),
        route("any", &[], "/", f.port, &[3]),
    ]);
    for req in [
        &b"GET / HTTP/1.1\r\nHost: a.test\r\nHost: b.test\r\n\r\n"[..],
        b"GET / HTTP/1.1\r\nHost: b.test\r\nHost: a.test\r\n\r\n",
        b"GET / HTTP/1.1\r\n\r\n",
        b"GET / HTTP/1.1\r\nX-A: 1\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: a.test\r\nHost: b.test\r\nContent-Length: 2\r\n\r\nhi",
        b"POST / HTTP/1.1\r\nContent-Length: 2\r\n\r\nhi",
    ] {
        let got = raw_exchange(f.http, req).await;
        assert!(
            got.starts_with("HTTP/1.1 400"),
            "{:?}: {got}",
            String::from_utf8_lossy(req)
        );
        assert!(!got.contains("b2") && !got.contains("b3"), "{got}");
    }
    let got = raw_exchange(f.http, b"GET / HTTP/1.0\r\n\r\n").await;
    assert!(got.starts_with("HTTP/1.0 200"), "{got}");
    let got = raw_exchange(f.http, b"GET / HTTP/1.1\r\nHost: a.test\r\n\r\n").await;
    assert!(
        got.starts_with("HTTP/1.1 200") && got.contains("b2"),
        "{got}"
    );
}
