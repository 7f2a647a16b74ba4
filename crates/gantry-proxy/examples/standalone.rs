//! The edge proxy alone, for benchmarks (scripts/bench-proxy.sh): one route
//! for every host to one backend, on a tokio runtime of `--threads`
//! workers; or, with `--measure-swap N`, the time from a route change to
//! the first request routed by it, N times.
//!
//! ```sh
//! cargo run --release -p gantry-proxy --example standalone -- \
//!     --listen 127.0.0.1:8001 --backend 127.0.0.1:9000 [--threads 1] \
//!     [--https 127.0.0.1:8443 --cert cert.pem --key key.pem --name bench.test]
//! ```

use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use gantry_proxy::{CertPem, Proxy, ProxyConfig, Route};
use gantry_route::{HttpsMode, RouteSpec};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

struct Args {
    listen: SocketAddr,
    backend: SocketAddr,
    threads: usize,
    https: Option<SocketAddr>,
    cert: Option<String>,
    key: Option<String>,
    name: String,
    measure_swap: Option<usize>,
}

fn args() -> Args {
    let mut a = Args {
        listen: "127.0.0.1:8001".parse().unwrap(),
        backend: "127.0.0.1:9000".parse().unwrap(),
        threads: 1,
        https: None,
        cert: None,
        key: None,
        name: "bench.test".into(),
        measure_swap: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(k) = it.next() {
        let v = it.next().unwrap_or_else(|| panic!("{k} needs a value"));
        match k.as_str() {
            "--listen" => a.listen = v.parse().expect("--listen ADDR"),
            "--backend" => a.backend = v.parse().expect("--backend IP:PORT"),
            "--threads" => a.threads = v.parse().expect("--threads N"),
            "--https" => a.https = Some(v.parse().expect("--https ADDR")),
            "--cert" => a.cert = Some(std::fs::read_to_string(v).expect("--cert FILE")),
            "--key" => a.key = Some(std::fs::read_to_string(v).expect("--key FILE")),
            "--name" => a.name = v,
            "--measure-swap" => a.measure_swap = Some(v.parse().expect("--measure-swap N")),
            _ => panic!("unknown argument {k}"),
        }
    }
    a
}

fn route(backend: SocketAddr, path: &str) -> Route {
    let mut spec = RouteSpec::new("bench", backend.port());
    spec.path = path.into();
    spec.https = HttpsMode::Off;
    let ip = match backend.ip() {
        std::net::IpAddr::V4(ip) => ip,
        _ => Ipv4Addr::LOCALHOST,
    };
    Route {
        spec,
        backends: vec![ip],
    }
}

/// One HTTP/1.1 request on a fresh connection; the status code.
async fn status(addr: SocketAddr, path: &str) -> u16 {
    let Ok(mut s) = tokio::net::TcpStream::connect(addr).await else {
        return 0;
    };
    let req = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    if s.write_all(req.as_bytes()).await.is_err() {
        return 0;
    }
    let mut buf = [0u8; 12];
    if s.read_exact(&mut buf).await.is_err() {
        return 0;
    }
    std::str::from_utf8(&buf[9..12])
        .ok()
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

fn main() {
    let a = args();
    let _ = rustls::crypto::ring::default_provider().install_default();
    // One thread: tokio's current-thread scheduler (what nginx's one
    // worker and HAProxy's nbthread 1 compare with); more: work stealing.
    let rt = if a.threads == 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(a.threads)
            .enable_all()
            .build()
            .unwrap()
    };
    rt.block_on(async move {
        let proxy = Proxy::new(ProxyConfig::default());
        proxy.set_routes(&[route(a.backend, "/")]);
        if let (Some(cert_pem), Some(key_pem)) = (a.cert.clone(), a.key.clone()) {
            let errors = proxy.set_certs(&[CertPem {
                names: vec![a.name.clone()],
                cert_pem,
                key_pem,
            }]);
            assert!(errors.is_empty(), "{errors:?}");
        }
        let l = tokio::net::TcpListener::bind(a.listen).await.unwrap();
        tokio::spawn(gantry_proxy::serve_http(proxy.clone(), l));
        if let Some(h) = a.https {
            let l = tokio::net::TcpListener::bind(h).await.unwrap();
            tokio::spawn(gantry_proxy::serve_https(proxy.clone(), l));
        }
        let Some(n) = a.measure_swap else {
            eprintln!("proxy on {} -> {}", a.listen, a.backend);
            std::future::pending::<()>().await;
            return;
        };
        // Route change to first routed request: a route that only
        // exists after the swap, asked for right after it.
        let mut spec_only = Vec::with_capacity(n);
        let mut all = Vec::with_capacity(n);
        let mut base = vec![route(a.backend, "/")];
        for i in 0..200 {
            base.push(route(a.backend, &format!("/filler{i}")));
        }
        for i in 0..n {
            let path = format!("/swap{i}");
            let mut routes = base.clone();
            let mut r = route(a.backend, &path);
            r.spec.path_type = gantry_route::PathType::Exact;
            routes.push(r);
            let t0 = Instant::now();
            proxy.set_routes(&routes);
            let swapped = t0.elapsed();
            let code = status(a.listen, &path).await;
            assert_eq!(code, 200, "routed to the backend (no route would be 404)");
            spec_only.push(swapped);
            all.push(t0.elapsed());
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        spec_only.sort();
        all.sort();
        let pct = |v: &[Duration], p: f64| v[((v.len() as f64 - 1.0) * p) as usize];
        println!(
            "swap of {} routes: p50 {:?} p99 {:?}; swap + first routed request: p50 {:?} p99 {:?}",
            base.len() + 1,
            pct(&spec_only, 0.5),
            pct(&spec_only, 0.99),
            pct(&all, 0.5),
            pct(&all, 0.99)
        );
    });
}
