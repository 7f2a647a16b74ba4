//! The proxy's own HTTP/1.x server loop, for the requests nearly all
//! traffic is made of: no request body, no upgrade, no `Expect`, an
//! origin-form target. Their heads are parsed with `httparse` straight
//! from the connection's buffer, routed and forwarded as every request is
//! ([`crate::forward::handle`]), and the response goes out in one write
//! when its body is already there.
//!
//! Anything else (a request with a body, an upgrade, HTTP/2's preface,
//! a head `httparse` refuses or one too large) hands the connection, with
//! the bytes read and not used, to hyper's server for the rest of its
//! life: hyper does the full protocol, including the error answers. The
//! loop exists because hyper's per-request machinery cost about as much
//! CPU as the rest of the proxy's user-space work (BENCHMARKS.md).

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use futures::FutureExt;
use http_body_util::BodyExt;
use hyper::body::Body as _;
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, Response, StatusCode, Version};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};

use crate::body::Body;
use crate::forward::{self, Conn};
use crate::timer::Deadline;
use crate::{h1, Proxy};

/// A request head larger than this goes to hyper (which refuses it).
const MAX_HEAD: usize = 64 * 1024;
/// Headers in a request head on this path, at most.
const MAX_HEADERS: usize = 100;
/// Response bytes gathered before a write.
const GATHER: usize = 64 * 1024;

/// What the buffered bytes hold.
// The request is the common case: boxing it would cost an allocation a
// request.
#[allow(clippy::large_enum_variant)]
enum Next {
    /// A request for this loop, and whether the client keeps the
    /// connection open after it.
    Request(Request<Body>, bool),
    /// Something for hyper.
    Hyper,
}

/// Serves HTTP/1.x on `io` until the client leaves, or hands the
/// connection to hyper.
pub(crate) async fn serve<S>(proxy: Arc<Proxy>, mut io: S, conn: Conn)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let mut buf = BytesMut::with_capacity(8 * 1024);
    let mut out = Vec::with_capacity(4 * 1024);
    // The connection's one deadline: for each request head, then for its
    // backend's answer.
    let mut deadline = proxy.timer.deadline();
    let mut spans = Vec::with_capacity(32);
    loop {
        deadline.set(proxy.config.header_timeout);
        let read = deadline.within(read_head(&mut io, &mut buf, &mut spans));
        let (req, keep_alive) = match read.await {
            None => {
                if !buf.is_empty() {
                    let _ = io.write_all(REQUEST_TIMEOUT).await;
                }
                return;
            }
            Some(Err(_)) => return,
            Some(Ok(Next::Request(req, keep_alive))) => (req, keep_alive),
            Some(Ok(Next::Hyper)) => {
                let io = Rewind {
                    pre: buf.freeze(),
                    io,
                };
                return crate::listen::serve_hyper(proxy, io, conn).await;
            }
        };
        let version = req.version();
        let head_request = req.method() == Method::HEAD;
        let Ok(resp) = forward::handle(proxy.clone(), conn, req, &mut deadline).await;
        let mut w = Writer {
            io: &mut io,
            deadline: &mut deadline,
            limit: proxy.config.send_timeout,
        };
        let wrote = write_response(&mut w, &mut out, resp, version, head_request, keep_alive);
        match wrote.await {
            Ok(true) => {}
            Ok(false) => {
                let _ = io.shutdown().await;
                return;
            }
            Err(e) => {
                tracing::debug!(client = %conn.client, "connection: {e}");
                return;
            }
        }
    }
}

const REQUEST_TIMEOUT: &[u8] =
    b"HTTP/1.1 408 Request Timeout\r\nconnection: close\r\ncontent-length: 0\r\n\r\n";

/// Reads until `buf` holds a whole request head (or something for
/// hyper). An error: the client closed or the read failed.
async fn read_head<S: AsyncRead + Unpin>(
    io: &mut S,
    buf: &mut BytesMut,
    spans: &mut Vec<h1::Span>,
) -> io::Result<Next> {
    loop {
        if !buf.is_empty() {
            if let Some(next) = parse_request(buf, spans) {
                return Ok(next);
            }
            if buf.len() >= MAX_HEAD {
                return Ok(Next::Hyper);
            }
        }
        buf.reserve(8 * 1024);
        if io.read_buf(buf).await? == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
    }
}

/// A request head at the start of `buf`, taken out of it when this loop
/// serves it. `None`: not all of it is there yet.
fn parse_request(buf: &mut BytesMut, spans: &mut Vec<h1::Span>) -> Option<Next> {
    let mut slots = [const { std::mem::MaybeUninit::uninit() }; MAX_HEADERS];
    let mut r = httparse::Request::new(&mut []);
    let len = match r.parse_with_uninit_headers(buf, &mut slots) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return None,
        Err(_) => return Some(Next::Hyper),
    };
    let version = match r.version {
        Some(1) => Version::HTTP_11,
        Some(0) => Version::HTTP_10,
        _ => return Some(Next::Hyper),
    };
    let (Some(method), Some(path)) = (r.method, r.path) else {
        return Some(Next::Hyper);
    };
    if !path.starts_with('/') || method == "CONNECT" {
        return Some(Next::Hyper);
    }
    let Ok(method) = Method::from_bytes(method.as_bytes()) else {
        return Some(Next::Hyper);
    };
    // Bodies, upgrades and expectations are hyper's.
    let for_hyper = r.headers.iter().any(|h| {
        let is = |n: &str| h.name.eq_ignore_ascii_case(n);
        is("transfer-encoding")
            || is("upgrade")
            || is("expect")
            || (is("content-length") && h.value != b"0")
    });
    if for_hyper {
        return Some(Next::Hyper);
    }
    let base = buf.as_ptr() as usize;
    let (path_at, path_len) = (path.as_ptr() as usize - base, path.len());
    h1::header_spans(buf, r.headers, spans);
    let raw = buf.split_to(len).freeze();
    let uri = hyper::Uri::from_maybe_shared(raw.slice(path_at..path_at + path_len));
    // Room for the forwarding headers the proxy adds.
    let (Ok(uri), Ok(headers)) = (uri, h1::header_map(&raw, spans, 4)) else {
        // Given back whole, as read.
        let mut whole = BytesMut::from(&raw[..]);
        whole.unsplit(std::mem::take(buf));
        *buf = whole;
        return Some(Next::Hyper);
    };
    let keep_alive = if version == Version::HTTP_11 {
        !h1::has_token(&headers, &header::CONNECTION, "close")
    } else {
        h1::has_token(&headers, &header::CONNECTION, "keep-alive")
    };
    let mut req = Request::new(Body::Empty);
    *req.method_mut() = method;
    *req.uri_mut() = uri;
    *req.version_mut() = version;
    *req.headers_mut() = headers;
    Some(Next::Request(req, keep_alive))
}

/// How a response body goes to the client.
#[derive(PartialEq, Eq)]
enum Framing {
    /// As it is: its length is in the head, or it has none.
    Raw,
    Chunked,
    /// To the connection's close (an HTTP/1.0 client, no length known).
    Close,
}

/// The client's side of a connection as responses are written to it: the
/// client must take each piece written (the head, or one read's worth of
/// body) within `limit`.
struct Writer<'a, S> {
    io: &'a mut S,
    deadline: &'a mut Deadline,
    limit: Duration,
}

impl<S: AsyncWrite + Unpin> Writer<'_, S> {
    async fn send(&mut self, buf: &[u8]) -> io::Result<()> {
        self.deadline.set(self.limit);
        match self.deadline.within(self.io.write_all(buf)).await {
            Some(r) => r,
            None => Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "the client did not take the response within the send timeout",
            )),
        }
    }
}

/// Writes a response; whether the connection stays open after it.
async fn write_response<S: AsyncWrite + Unpin>(
    io: &mut Writer<'_, S>,
    out: &mut Vec<u8>,
    resp: Response<Body>,
    version: Version,
    head_request: bool,
    mut keep_alive: bool,
) -> io::Result<bool> {
    let (parts, mut body) = resp.into_parts();
    let status = parts.status;
    let mut h = parts.headers;
    let no_body = head_request
        || status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED;
    let framing = if no_body || h.contains_key(header::CONTENT_LENGTH) {
        Framing::Raw
    } else if let Some(n) = body.size_hint().exact() {
        h.insert(header::CONTENT_LENGTH, HeaderValue::from(n));
        Framing::Raw
    } else if version == Version::HTTP_11 {
        h.insert(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        );
        Framing::Chunked
    } else {
        keep_alive = false;
        Framing::Close
    };
    h.remove(header::CONNECTION);
    if version == Version::HTTP_11 && !keep_alive {
        h.insert(header::CONNECTION, HeaderValue::from_static("close"));
    } else if version == Version::HTTP_10 && keep_alive {
        h.insert(header::CONNECTION, HeaderValue::from_static("keep-alive"));
    }
    if !h.contains_key(header::DATE) {
        h.insert(header::DATE, date());
    }
    out.clear();
    out.extend_from_slice(if version == Version::HTTP_10 {
        b"HTTP/1.0 "
    } else {
        b"HTTP/1.1 "
    });
    out.extend_from_slice(status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
    for (name, value) in &h {
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
    if no_body {
        io.send(out).await?;
        return Ok(keep_alive);
    }
    loop {
        // What is there now joins the head; before waiting for more, what
        // was gathered goes out.
        let frame = match body.frame().now_or_never() {
            Some(f) => f,
            None => {
                if !out.is_empty() {
                    io.send(out).await?;
                    out.clear();
                }
                body.frame().await
            }
        };
        let data = match frame {
            None => break,
            Some(Err(e)) => {
                // The head and what came of the body go out first, as
                // nginx sends them: the client sees the answer cut short
                // (the connection closes), not an empty reply.
                if !out.is_empty() {
                    io.send(out).await?;
                }
                return Err(io::Error::other(format!("response body: {e}")));
            }
            Some(Ok(f)) => match f.into_data() {
                Ok(d) if !d.is_empty() => d,
                _ => continue,
            },
        };
        if framing == Framing::Chunked {
            out.extend_from_slice(format!("{:x}\r\n", data.len()).as_bytes());
        }
        if data.len() >= GATHER {
            io.send(out).await?;
            out.clear();
            io.send(&data).await?;
        } else {
            out.extend_from_slice(&data);
        }
        if framing == Framing::Chunked {
            out.extend_from_slice(b"\r\n");
        }
        if out.len() >= GATHER {
            io.send(out).await?;
            out.clear();
        }
    }
    if framing == Framing::Chunked {
        out.extend_from_slice(b"0\r\n\r\n");
    }
    if !out.is_empty() {
        io.send(out).await?;
    }
    Ok(keep_alive && framing != Framing::Close)
}

/// The `Date` header's value, made once a second.
fn date() -> HeaderValue {
    thread_local! {
        static DATE: std::cell::RefCell<(u64, HeaderValue)> =
            const { std::cell::RefCell::new((u64::MAX, HeaderValue::from_static(""))) };
    }
    let now = std::time::SystemTime::now();
    let secs = now
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    DATE.with(|d| {
        let mut d = d.borrow_mut();
        if d.0 != secs {
            let s = httpdate::fmt_http_date(now);
            d.1 = HeaderValue::from_str(&s).unwrap_or_else(|_| HeaderValue::from_static(""));
            d.0 = secs;
        }
        d.1.clone()
    })
}

/// A connection with bytes already read from it in front, for hyper.
pub(crate) struct Rewind<S> {
    pre: Bytes,
    io: S,
}

impl<S: AsyncRead + Unpin> AsyncRead for Rewind<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.pre.is_empty() {
            let n = self.pre.len().min(buf.remaining());
            buf.put_slice(&self.pre[..n]);
            self.pre.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Rewind<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(raw: &str) -> (Option<Next>, BytesMut) {
        let mut buf = BytesMut::from(raw);
        let next = parse_request(&mut buf, &mut Vec::new());
        (next, buf)
    }

    #[test]
    fn plain_requests_are_served_here() {
        let (next, rest) = parse("GET /a?b=1 HTTP/1.1\r\nHost: x.test\r\nX-A: 1\r\n\r\nGET /next");
        let Some(Next::Request(req, keep_alive)) = next else {
            panic!("served here")
        };
        assert_eq!(req.method(), Method::GET);
        assert_eq!(req.uri().path_and_query().unwrap().as_str(), "/a?b=1");
        assert_eq!(req.version(), Version::HTTP_11);
        assert_eq!(req.headers()["host"], "x.test");
        assert_eq!(req.headers()["x-a"], "1");
        assert!(keep_alive);
        assert_eq!(&rest[..], b"GET /next", "the next request stays");

        let (next, _) = parse("GET / HTTP/1.1\r\nConnection: close\r\n\r\n");
        assert!(matches!(next, Some(Next::Request(_, false))));
        let (next, _) = parse("GET / HTTP/1.0\r\n\r\n");
        assert!(matches!(next, Some(Next::Request(_, false))));
        let (next, _) = parse("GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n");
        assert!(matches!(next, Some(Next::Request(_, true))));
        let (next, _) = parse("POST / HTTP/1.1\r\nContent-Length: 0\r\n\r\n");
        assert!(matches!(next, Some(Next::Request(..))));
        let (next, rest) = parse("GET / HTTP/1.1\r\nHost: x");
        assert!(next.is_none());
        assert_eq!(rest.len(), 23, "nothing taken before the head is whole");
    }

    #[test]
    fn the_rest_goes_to_hyper_with_every_byte() {
        for raw in [
            "POST / HTTP/1.1\r\nContent-Length: 4\r\n\r\nbody",
            "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nbody\r\n0\r\n\r\n",
            "GET /ws HTTP/1.1\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
            "PUT / HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 4\r\n\r\n",
            "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
            "GET http://x.test/ HTTP/1.1\r\n\r\n",
            "CONNECT x.test:443 HTTP/1.1\r\n\r\n",
            "GET / HTTP/1.1\r\nBad Header\r\n\r\n",
            "GET / HTTP/1.1\r\nX: a\x01b\r\n\r\n",
            "\x16\x03\x01\x00",
        ] {
            let (next, rest) = parse(raw);
            assert!(matches!(next, Some(Next::Hyper)), "{raw:?}");
            assert_eq!(&rest[..], raw.as_bytes(), "{raw:?}");
        }
    }

    #[tokio::test]
    async fn responses_are_framed_for_their_client() {
        async fn write(resp: Response<Body>, version: Version, head: bool) -> (String, bool) {
            let mut out = Vec::new();
            let mut sink = Vec::new();
            let mut deadline = crate::timer::Coarse::default().deadline();
            let mut w = Writer {
                io: &mut sink,
                deadline: &mut deadline,
                limit: Duration::from_secs(5),
            };
            let keep = write_response(&mut w, &mut out, resp, version, head, true)
                .await
                .unwrap();
            (String::from_utf8(sink).unwrap(), keep)
        }
        let full = || Response::new(Body::Full(Some(Bytes::from_static(b"hello"))));
        let (s, keep) = write(full(), Version::HTTP_11, false).await;
        assert!(s.starts_with("HTTP/1.1 200 OK\r\n"), "{s}");
        assert!(
            s.contains("content-length: 5\r\n") && s.contains("date: "),
            "{s}"
        );
        assert!(s.ends_with("\r\n\r\nhello") && keep, "{s}");
        let (s, _) = write(full(), Version::HTTP_11, true).await;
        assert!(s.ends_with("\r\n\r\n"), "no body after HEAD: {s}");

        let stream = || {
            let frames = futures::stream::iter(
                [&b"ab"[..], b"", b"cde"]
                    .map(|d| Ok(hyper::body::Frame::data(Bytes::from_static(d)))),
            );
            Response::new(Body::Boxed(http_body_util::StreamBody::new(frames).boxed()))
        };
        let (s, keep) = write(stream(), Version::HTTP_11, false).await;
        assert!(s.contains("transfer-encoding: chunked\r\n"), "{s}");
        assert!(
            s.ends_with("\r\n\r\n2\r\nab\r\n3\r\ncde\r\n0\r\n\r\n") && keep,
            "{s}"
        );
        let (s, keep) = write(stream(), Version::HTTP_10, false).await;
        assert!(
            s.starts_with("HTTP/1.0 200 OK\r\n") && s.ends_with("\r\n\r\nabcde"),
            "{s}"
        );
        assert!(
            !keep,
            "an HTTP/1.0 body of unknown length ends at the close"
        );

        let mut r = full();
        *r.status_mut() = StatusCode::NOT_MODIFIED;
        let (s, _) = write(r, Version::HTTP_11, false).await;
        assert!(s.ends_with("\r\n\r\n") && !s.contains("hello"), "{s}");
    }

    #[tokio::test]
    async fn rewind_gives_the_bytes_read_first() {
        let (a, mut b) = tokio::io::duplex(64);
        let mut r = Rewind {
            pre: Bytes::from_static(b"GET "),
            io: a,
        };
        b.write_all(b"/ HTTP/1.1").await.unwrap();
        drop(b);
        let mut all = String::new();
        r.read_to_string(&mut all).await.unwrap();
        assert_eq!(all, "GET / HTTP/1.1");
    }
}
