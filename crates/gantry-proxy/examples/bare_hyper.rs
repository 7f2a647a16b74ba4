//! A reference for scripts/bench-proxy.sh: the least a hyper 1 proxy can
//! do (HTTP/1.1 server, hyper-util's pooled client, no routing, no
//! headers, one current-thread runtime), so the benchmark shows how much
//! of Gantry's cost is hyper's own.
//!
//! ```sh
//! cargo run --release -p gantry-proxy --example bare_hyper -- 127.0.0.1:8009 127.0.0.1:9000
//! ```

use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::{TokioExecutor, TokioIo};

fn main() {
    let mut args = std::env::args().skip(1);
    let listen = args.next().unwrap_or_else(|| "127.0.0.1:8009".into());
    let backend = args.next().unwrap_or_else(|| "127.0.0.1:9000".into());
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let mut c = HttpConnector::new();
        c.set_nodelay(true);
        let client: Client<HttpConnector, Incoming> =
            Client::builder(TokioExecutor::new()).build(c);
        let l = tokio::net::TcpListener::bind(&listen).await.unwrap();
        loop {
            let Ok((s, _)) = l.accept().await else {
                continue;
            };
            let _ = s.set_nodelay(true);
            let client = client.clone();
            let backend = backend.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |mut req: hyper::Request<Incoming>| {
                    let client = client.clone();
                    let uri = format!(
                        "http://{backend}{}",
                        req.uri().path_and_query().map_or("/", |p| p.as_str())
                    );
                    async move {
                        *req.uri_mut() = uri.parse().expect("a URI");
                        client.request(req).await
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(s), svc)
                    .await;
            });
        }
    });
}
