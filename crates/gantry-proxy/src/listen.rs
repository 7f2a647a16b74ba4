//! The listeners: accept, read a PROXY header from trusted peers, do TLS,
//! and serve HTTP/1.1 and HTTP/2 on the connection.

use std::net::SocketAddr;
use std::sync::Arc;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};

use crate::forward::{self, Conn};
use crate::Proxy;

/// Serves plain HTTP on `listener` until the task is dropped.
pub async fn serve_http(proxy: Arc<Proxy>, listener: TcpListener) {
    accept(proxy, listener, None).await
}

/// Serves HTTPS on `listener`, with the certificate of each handshake's
/// server name, until the task is dropped.
pub async fn serve_https(proxy: Arc<Proxy>, listener: TcpListener) {
    let acceptor =
        tokio_rustls::TlsAcceptor::from(Arc::new(crate::tls::server_config(proxy.clone())));
    accept(proxy, listener, Some(acceptor)).await
}

/// The accept loop of both listeners: each connection gets its client
/// address (PROXY protocol), its TLS handshake when `tls` is given, and
/// then HTTP.
async fn accept(proxy: Arc<Proxy>, listener: TcpListener, tls: Option<tokio_rustls::TlsAcceptor>) {
    loop {
        let (mut stream, peer) = match listener.accept().await {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!("proxy accept: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let proxy = proxy.clone();
        let tls = tls.clone();
        tokio::spawn(async move {
            proxy.metrics.connections.inc();
            let _open = OpenConnection(proxy.clone());
            let Some(client) = client_addr(&proxy, &mut stream, peer).await else {
                return;
            };
            let Some(acceptor) = tls else {
                // HTTP/1.x: the proxy's own loop, which hands the connection
                // to hyper for what it does not serve itself.
                return crate::server::serve(proxy, stream, Conn { client, tls: false }).await;
            };
            let handshake =
                tokio::time::timeout(proxy.config.header_timeout, acceptor.accept(stream));
            let stream = match handshake.await {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    tracing::debug!(%client, "tls handshake: {e}");
                    return;
                }
                Err(_) => return,
            };
            if stream.get_ref().1.alpn_protocol() == Some(crate::tls::ACME_TLS) {
                // A TLS-ALPN-01 validation: the handshake was the answer.
                return;
            }
            let conn = Conn { client, tls: true };
            if stream.get_ref().1.alpn_protocol() == Some(b"h2") {
                return serve_hyper(proxy, stream, conn).await;
            }
            crate::server::serve(proxy, stream, conn).await;
        });
    }
}

/// Counts a client connection open until it drops.
struct OpenConnection(Arc<Proxy>);

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.metrics.connections.dec();
    }
}

/// hyper's server (HTTP/1.1 and HTTP/2, upgrades) on a connection.
pub(crate) async fn serve_hyper<S>(proxy: Arc<Proxy>, io: S, conn: Conn)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let mut b = auto::Builder::new(TokioExecutor::new());
    b.http1()
        .timer(proxy.timer.clone())
        .header_read_timeout(proxy.config.header_timeout);
    b.http2()
        .timer(proxy.timer.clone())
        .keep_alive_interval(Some(std::time::Duration::from_secs(30)));
    let p = proxy.clone();
    let svc = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
        let req = req.map(crate::body::Body::Incoming);
        let p = p.clone();
        async move {
            let mut deadline = p.timer.deadline();
            forward::handle(p, conn, req, &mut deadline).await
        }
    });
    if let Err(e) = b
        .serve_connection_with_upgrades(TokioIo::new(io), svc)
        .await
    {
        tracing::debug!(client = %conn.client, "connection: {e}");
    }
}

/// The client's address: the peer's, or the one in the PROXY protocol
/// header a trusted peer sends first. `None`: a trusted peer sent a bad
/// header, and the connection is dropped.
async fn client_addr(
    proxy: &Proxy,
    stream: &mut TcpStream,
    peer: SocketAddr,
) -> Option<SocketAddr> {
    let _ = stream.set_nodelay(true);
    if !proxy.config.trusted_proxies.contains(&peer.ip()) {
        return Some(peer);
    }
    let read = tokio::time::timeout(proxy.config.header_timeout, read_proxy_header(stream));
    match read.await {
        Ok(Ok(Some(addr))) => Some(addr),
        Ok(Ok(None)) => Some(peer),
        Ok(Err(e)) => {
            tracing::warn!(%peer, "PROXY protocol: {e}");
            None
        }
        Err(_) => None,
    }
}

/// Reads exactly one PROXY protocol header (v1 or v2) and nothing after
/// it. `None`: a header with no address (UNKNOWN, LOCAL).
pub(crate) async fn read_proxy_header<R: AsyncRead + Unpin>(
    r: &mut R,
) -> std::io::Result<Option<SocketAddr>> {
    let bad = |m: String| std::io::Error::new(std::io::ErrorKind::InvalidData, m);
    let mut head = [0u8; 5];
    r.read_exact(&mut head).await?;
    if &head == b"PROXY" {
        // v1: text up to CRLF, 107 bytes at most.
        let mut line = head.to_vec();
        while !line.ends_with(b"\r\n") {
            if line.len() >= 107 {
                return Err(bad("v1 header longer than 107 bytes".into()));
            }
            line.push(r.read_u8().await?);
        }
        let text = std::str::from_utf8(&line).map_err(|_| bad("v1 header is not text".into()))?;
        let h = ppp::v1::Header::try_from(text).map_err(|e| bad(format!("v1: {e}")))?;
        return Ok(match h.addresses {
            ppp::v1::Addresses::Tcp4(a) => {
                Some(SocketAddr::from((a.source_address, a.source_port)))
            }
            ppp::v1::Addresses::Tcp6(a) => {
                Some(SocketAddr::from((a.source_address, a.source_port)))
            }
            ppp::v1::Addresses::Unknown => None,
        });
    }
    if head[..] != ppp::v2::PROTOCOL_PREFIX[..5] {
        return Err(bad("no PROXY protocol header from a trusted proxy".into()));
    }
    let mut buf = head.to_vec();
    buf.resize(16, 0);
    r.read_exact(&mut buf[5..16]).await?;
    let len = u16::from_be_bytes([buf[14], buf[15]]) as usize;
    buf.resize(16 + len, 0);
    r.read_exact(&mut buf[16..]).await?;
    let h = ppp::v2::Header::try_from(&buf[..]).map_err(|e| bad(format!("v2: {e}")))?;
    if h.command == ppp::v2::Command::Local {
        return Ok(None);
    }
    Ok(match h.addresses {
        ppp::v2::Addresses::IPv4(a) => Some(SocketAddr::from((a.source_address, a.source_port))),
        ppp::v2::Addresses::IPv6(a) => Some(SocketAddr::from((a.source_address, a.source_port))),
        _ => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn parse(bytes: &[u8]) -> std::io::Result<Option<SocketAddr>> {
        let mut r = bytes;
        let out = read_proxy_header(&mut r).await;
        if out.is_ok() {
            assert_eq!(r, b"GET", "reads the header and nothing more");
        }
        out
    }

    #[tokio::test]
    async fn proxy_protocol_headers() {
        let v1 = b"PROXY TCP4 203.0.113.7 10.0.0.1 51234 80\r\nGET";
        assert_eq!(
            parse(v1).await.unwrap(),
            Some("203.0.113.7:51234".parse().unwrap())
        );
        let v1u = b"PROXY UNKNOWN\r\nGET";
        assert_eq!(parse(v1u).await.unwrap(), None);
        let mut v2 = ppp::v2::PROTOCOL_PREFIX.to_vec();
        v2.extend([
            0x21, 0x11, 0, 12, 198, 51, 100, 9, 10, 0, 0, 1, 0x1f, 0x90, 0, 80,
        ]);
        v2.extend(b"GET");
        assert_eq!(
            parse(&v2).await.unwrap(),
            Some("198.51.100.9:8080".parse().unwrap())
        );
        for bad in [
            &b"GET / HTTP/1.1\r\n"[..],
            b"PROXY TCP4 not-an-ip 10.0.0.1 1 2\r\nGET",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0",
            b"PROXY",
        ] {
            assert!(parse(bad).await.is_err(), "{}", String::from_utf8_lossy(bad));
        }
        let mut short = ppp::v2::PROTOCOL_PREFIX.to_vec();
        short.extend([0x21, 0x11, 0, 200, 1, 2]);
        assert!(parse(&short).await.is_err());
    }
}
