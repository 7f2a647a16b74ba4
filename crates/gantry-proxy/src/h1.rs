//! The proxy's HTTP/1.1 client to backends. A connection is driven inside
//! the task of the request that uses it: the request head goes out in one
//! write, the response head is parsed with `httparse`, and the response
//! body is read from the socket as the client side polls it. No task, no
//! channel and no wake-up sit between a client's request and its backend,
//! which is what hyper's client connections cost (a spawned task per
//! connection, fed through channels).
//!
//! Framing follows RFC 9112 section 6.3: no body for HEAD, 1xx, 204 and
//! 304; chunked when the last transfer coding is chunked; else the
//! Content-Length (differing values are an error); else the body runs to
//! the connection's close, and the connection is not reused.
//!
//! Upgrades do not come here: they take a hyper connection of their own
//! (see `backend.rs`).

use std::io::{self, ErrorKind};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use bytes::{Bytes, BytesMut};
use http_body_util::BodyExt;
use hyper::body::{Frame, SizeHint};
use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};
use hyper::{Method, StatusCode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::backend::Backend;
use crate::body::Body;

/// A response head larger than this is refused.
const MAX_HEAD: usize = 64 * 1024;
/// Headers in a response head, at most.
const MAX_HEADERS: usize = 128;
/// A chunk-size line (with extensions) longer than this is refused.
const MAX_CHUNK_LINE: usize = 4096;
/// Trailer bytes after the last chunk, at most (they are dropped).
const MAX_TRAILERS: usize = 64 * 1024;
/// Read buffer room asked for before each read.
const READ_ROOM: usize = 16 * 1024;

fn invalid(msg: &str) -> io::Error {
    io::Error::new(ErrorKind::InvalidData, format!("backend response: {msg}"))
}

/// An open connection to a backend, with what it has read and not used.
pub(crate) struct Conn {
    io: TcpStream,
    buf: BytesMut,
    /// The request head being sent (kept for the next request's).
    pub(crate) head: Vec<u8>,
    /// Where the response head's headers are (kept likewise).
    spans: Vec<Span>,
}

/// Why an exchange failed, and whether it may be tried again on another
/// connection.
pub(crate) struct Failed {
    pub(crate) error: io::Error,
    /// Nothing of the request reached the connection.
    pub(crate) sent_nothing: bool,
    /// Not a byte of a response came back.
    pub(crate) got_nothing: bool,
}

/// A parsed response head and how its body is framed.
#[derive(Debug)]
pub(crate) struct Head {
    pub(crate) status: StatusCode,
    pub(crate) headers: HeaderMap,
    pub(crate) framing: Framing,
    /// The connection may serve another request after this body.
    pub(crate) keep_alive: bool,
}

impl Conn {
    pub(crate) fn new(io: TcpStream) -> Self {
        Self {
            io,
            buf: BytesMut::with_capacity(READ_ROOM),
            head: Vec::with_capacity(1024),
            spans: Vec::with_capacity(32),
        }
    }

    /// Whether an idle connection still looks usable: the backend has not
    /// closed it, nor sent anything unasked. Costs a system call only when
    /// the socket was seen readable.
    pub(crate) fn alive(&mut self) -> bool {
        if !self.buf.is_empty() {
            return false;
        }
        let mut cx = Context::from_waker(std::task::Waker::noop());
        match self.io.poll_read_ready(&mut cx) {
            Poll::Pending => true,
            Poll::Ready(Err(_)) => false,
            Poll::Ready(Ok(())) => {
                let mut probe = [0u8; 1];
                matches!(self.io.try_read(&mut probe), Err(e) if e.kind() == ErrorKind::WouldBlock)
            }
        }
    }

    /// Sends a request (its head, encoded in [`Conn::head`], then its
    /// body) and reads the response head. Informational responses other
    /// than 101 are skipped.
    pub(crate) async fn exchange(
        &mut self,
        body: Option<Body>,
        chunked: bool,
        head_request: bool,
    ) -> Result<Head, Failed> {
        let fail = |error, sent_nothing, got_nothing| Failed {
            error,
            sent_nothing,
            got_nothing,
        };
        if let Err(e) = self.io.write_all(&self.head).await {
            return Err(fail(e, true, true));
        }
        if let Some(body) = body {
            // Boxed: only requests with a body (through hyper) come here, and
            // its future would otherwise weigh on every request's.
            if let Err(e) = Box::pin(self.write_body(body, chunked)).await {
                return Err(fail(e, false, true));
            }
        }
        let mut got = false;
        loop {
            match parse_head(&mut self.buf, head_request, &mut self.spans) {
                Ok(Some(h)) if h.status.is_informational() && h.status.as_u16() != 101 => {
                    got = true;
                    continue;
                }
                Ok(Some(h)) => return Ok(h),
                Ok(None) if self.buf.len() >= MAX_HEAD => {
                    return Err(fail(invalid("head too large"), false, false));
                }
                Ok(None) => {}
                Err(e) => return Err(fail(e, false, false)),
            }
            self.buf.reserve(READ_ROOM);
            match self.io.read_buf(&mut self.buf).await {
                Ok(0) => {
                    let nothing = !got && self.buf.is_empty();
                    let e = io::Error::new(
                        ErrorKind::UnexpectedEof,
                        "backend closed the connection before answering",
                    );
                    return Err(fail(e, false, nothing));
                }
                Ok(_) => {}
                Err(e) => {
                    let nothing = !got && self.buf.is_empty();
                    return Err(fail(e, false, nothing));
                }
            }
        }
    }

    async fn write_body(&mut self, mut body: Body, chunked: bool) -> io::Result<()> {
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| io::Error::other(format!("request body: {e}")))?;
            let Ok(data) = frame.into_data() else {
                continue; // trailers are not forwarded
            };
            if data.is_empty() {
                continue;
            }
            if chunked {
                let size = format!("{:x}\r\n", data.len());
                self.io.write_all(size.as_bytes()).await?;
                self.io.write_all(&data).await?;
                self.io.write_all(b"\r\n").await?;
            } else {
                self.io.write_all(&data).await?;
            }
        }
        if chunked {
            self.io.write_all(b"0\r\n\r\n").await?;
        }
        Ok(())
    }
}

/// Encodes a request head in HTTP/1.1: the headers as given, and
/// `transfer-encoding: chunked` when the body is sent so.
pub(crate) fn encode_head(
    method: &Method,
    path_and_query: &str,
    headers: &HeaderMap,
    chunked: bool,
    out: &mut Vec<u8>,
) {
    out.extend_from_slice(method.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(path_and_query.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    for (name, value) in headers {
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    if chunked {
        out.extend_from_slice(b"transfer-encoding: chunked\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

/// Whether a request asks for a protocol upgrade (an `Upgrade` header,
/// and `Connection` naming it).
pub(crate) fn asks_upgrade(h: &HeaderMap) -> bool {
    h.contains_key(header::UPGRADE) && has_token(h, &header::CONNECTION, "upgrade")
}

/// Methods that may be sent twice (RFC 9110 9.2.2).
pub(crate) fn idempotent(m: &Method) -> bool {
    matches!(
        *m,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE
    )
}

pub(crate) fn has_token(headers: &HeaderMap, name: &HeaderName, token: &str) -> bool {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

/// Where a parsed header's name and value are in the buffer it was
/// parsed from: offsets, so that once the head is taken out of the buffer
/// the values are kept as slices of it, without copies.
pub(crate) type Span = (u32, u32, u32, u32);

/// The [`Span`]s of `parsed`, parsed from `buf`, into `out` (cleared
/// first; a buffer kept per connection).
pub(crate) fn header_spans(buf: &[u8], parsed: &[httparse::Header<'_>], out: &mut Vec<Span>) {
    let base = buf.as_ptr() as usize;
    out.clear();
    out.extend(parsed.iter().map(|h| {
        let name = h.name.as_ptr() as usize - base;
        let value = h.value.as_ptr() as usize - base;
        (
            name as u32,
            h.name.len() as u32,
            value as u32,
            h.value.len() as u32,
        )
    }));
}

/// The headers at `spans` in `head`, with room for `extra` more.
pub(crate) fn header_map(head: &Bytes, spans: &[Span], extra: usize) -> io::Result<HeaderMap> {
    let mut headers = HeaderMap::with_capacity(spans.len() + extra);
    for &(n_at, n_len, v_at, v_len) in spans {
        let (n_at, v_at) = (n_at as usize, v_at as usize);
        let name = HeaderName::from_bytes(&head[n_at..n_at + n_len as usize])
            .map_err(|_| invalid("bad header name"))?;
        let v = HeaderValue::from_maybe_shared(head.slice(v_at..v_at + v_len as usize))
            .map_err(|_| invalid("bad header value"))?;
        headers.append(name, v);
    }
    Ok(headers)
}

/// Parses a response head at the start of `buf`, taking it out of `buf`
/// when complete. `None`: not all of it is there yet.
pub(crate) fn parse_head(
    buf: &mut BytesMut,
    head_request: bool,
    spans: &mut Vec<Span>,
) -> io::Result<Option<Head>> {
    let mut slots = [const { std::mem::MaybeUninit::uninit() }; MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut []);
    let parsed = httparse::ParserConfig::default()
        .parse_response_with_uninit_headers(&mut resp, buf, &mut slots);
    let len = match parsed {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(e) => return Err(invalid(&e.to_string())),
    };
    let code = resp.code.unwrap_or(0);
    let status = StatusCode::from_u16(code).map_err(|_| invalid("bad status code"))?;
    let http11 = resp.version == Some(1);
    header_spans(buf, resp.headers, spans);
    let raw = buf.split_to(len).freeze();
    let mut headers = header_map(&raw, spans, 2)?;
    let keep_alive = if http11 {
        !has_token(&headers, &header::CONNECTION, "close")
    } else {
        has_token(&headers, &header::CONNECTION, "keep-alive")
    };
    let no_body = head_request
        || status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED;
    let framing = if no_body {
        Framing::Length(0)
    } else if headers.contains_key(header::TRANSFER_ENCODING) {
        let chunked = headers
            .get_all(header::TRANSFER_ENCODING)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .rfind(|t| !t.is_empty())
            .is_some_and(|t| t.eq_ignore_ascii_case("chunked"));
        // A length next to a transfer coding is ignored (and not passed on).
        headers.remove(header::CONTENT_LENGTH);
        if chunked {
            Framing::Chunked(Chunk::Size, 0)
        } else {
            Framing::Close
        }
    } else if headers.contains_key(header::CONTENT_LENGTH) {
        let mut n: Option<u64> = None;
        for v in headers.get_all(header::CONTENT_LENGTH) {
            for part in v
                .to_str()
                .map_err(|_| invalid("bad content-length"))?
                .split(',')
            {
                let part = part.trim();
                if part.is_empty() || !part.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(invalid("bad content-length"));
                }
                let this: u64 = part.parse().map_err(|_| invalid("bad content-length"))?;
                if n.is_some_and(|n| n != this) {
                    return Err(invalid("differing content-lengths"));
                }
                n = Some(this);
            }
        }
        Framing::Length(n.unwrap_or(0))
    } else {
        Framing::Close
    };
    let keep_alive = keep_alive && !matches!(framing, Framing::Close);
    Ok(Some(Head {
        status,
        headers,
        framing,
        keep_alive,
    }))
}

/// How much of a body is left to read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Framing {
    /// This many bytes.
    Length(u64),
    /// Chunked: where in it, and trailer bytes seen.
    Chunked(Chunk, usize),
    /// To the connection's close.
    Close,
    /// Read to its end.
    Done,
}

/// Where a chunked body is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Chunk {
    /// At a chunk-size line.
    Size,
    /// In a chunk's data, with this much left.
    Data(u64),
    /// At the CRLF after a chunk's data.
    DataEnd,
    /// In the trailers after the last chunk.
    Trailers,
}

/// What the buffered bytes gave.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Step {
    Data(Bytes),
    /// More bytes are needed.
    More,
    /// The body is complete.
    End,
}

fn line_end(buf: &[u8]) -> Option<usize> {
    buf.windows(2).position(|w| w == b"\r\n")
}

impl Framing {
    /// Takes what it can from `buf`.
    pub(crate) fn decode(&mut self, buf: &mut BytesMut) -> io::Result<Step> {
        loop {
            match *self {
                Framing::Done | Framing::Length(0) => {
                    *self = Framing::Done;
                    return Ok(Step::End);
                }
                Framing::Length(left) => {
                    if buf.is_empty() {
                        return Ok(Step::More);
                    }
                    let n = (buf.len() as u64).min(left) as usize;
                    *self = Framing::Length(left - n as u64);
                    return Ok(Step::Data(buf.split_to(n).freeze()));
                }
                Framing::Close => {
                    if buf.is_empty() {
                        return Ok(Step::More);
                    }
                    return Ok(Step::Data(buf.split().freeze()));
                }
                Framing::Chunked(Chunk::Size, t) => {
                    let Some(end) = line_end(buf) else {
                        if buf.len() > MAX_CHUNK_LINE {
                            return Err(invalid("chunk-size line too long"));
                        }
                        return Ok(Step::More);
                    };
                    if end > MAX_CHUNK_LINE {
                        return Err(invalid("chunk-size line too long"));
                    }
                    let line = &buf[..end];
                    let digits = line
                        .iter()
                        .position(|b| matches!(b, b';' | b' ' | b'\t'))
                        .map_or(line, |i| &line[..i]);
                    if digits.is_empty() || digits.len() > 15 {
                        return Err(invalid("bad chunk size"));
                    }
                    let mut size: u64 = 0;
                    for &d in digits {
                        let v = (d as char)
                            .to_digit(16)
                            .ok_or_else(|| invalid("bad chunk size"))?;
                        size = size * 16 + u64::from(v);
                    }
                    let _ = buf.split_to(end + 2);
                    *self = if size == 0 {
                        Framing::Chunked(Chunk::Trailers, t)
                    } else {
                        Framing::Chunked(Chunk::Data(size), t)
                    };
                }
                Framing::Chunked(Chunk::Data(left), t) => {
                    if buf.is_empty() {
                        return Ok(Step::More);
                    }
                    let n = (buf.len() as u64).min(left) as usize;
                    let rest = left - n as u64;
                    *self = Framing::Chunked(
                        if rest == 0 {
                            Chunk::DataEnd
                        } else {
                            Chunk::Data(rest)
                        },
                        t,
                    );
                    return Ok(Step::Data(buf.split_to(n).freeze()));
                }
                Framing::Chunked(Chunk::DataEnd, t) => {
                    if buf.len() < 2 {
                        return Ok(Step::More);
                    }
                    if &buf[..2] != b"\r\n" {
                        return Err(invalid("no CRLF after chunk data"));
                    }
                    let _ = buf.split_to(2);
                    *self = Framing::Chunked(Chunk::Size, t);
                }
                Framing::Chunked(Chunk::Trailers, t) => {
                    let Some(end) = line_end(buf) else {
                        if t + buf.len() > MAX_TRAILERS {
                            return Err(invalid("trailers too large"));
                        }
                        return Ok(Step::More);
                    };
                    let _ = buf.split_to(end + 2);
                    if end == 0 {
                        *self = Framing::Done;
                        return Ok(Step::End);
                    }
                    if t + end + 2 > MAX_TRAILERS {
                        return Err(invalid("trailers too large"));
                    }
                    *self = Framing::Chunked(Chunk::Trailers, t + end + 2);
                }
            }
        }
    }

    fn complete(&self) -> bool {
        matches!(self, Framing::Done | Framing::Length(0))
    }
}

/// A response body read from a backend connection, which goes back to
/// its backend's idle connections once the body is read to its end.
pub(crate) struct H1Body {
    framing: Framing,
    /// The connection, while the body is read from it.
    conn: Option<(Box<Conn>, Arc<Backend>, bool)>,
}

impl H1Body {
    /// The body after `head` on `conn`; a body with nothing to read gives
    /// the connection back at once.
    pub(crate) fn new(conn: Box<Conn>, backend: Arc<Backend>, head: &Head) -> Self {
        let mut b = Self {
            framing: head.framing,
            conn: Some((conn, backend, head.keep_alive)),
        };
        b.release_if_done();
        b
    }

    fn release_if_done(&mut self) {
        if !self.framing.complete() {
            return;
        }
        self.framing = Framing::Done;
        if let Some((conn, backend, keep_alive)) = self.conn.take() {
            if keep_alive && conn.buf.is_empty() {
                backend.put_idle(conn);
            }
        }
    }
}

impl hyper::body::Body for H1Body {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        let this = &mut *self;
        loop {
            let Some((conn, _, _)) = this.conn.as_mut() else {
                return Poll::Ready(None);
            };
            let step = match this.framing.decode(&mut conn.buf) {
                Ok(s) => s,
                Err(e) => {
                    this.conn = None;
                    return Poll::Ready(Some(Err(e)));
                }
            };
            match step {
                Step::Data(d) => {
                    // The last bytes hand the connection back now: the
                    // client side may not poll again after an exact size.
                    this.release_if_done();
                    return Poll::Ready(Some(Ok(Frame::data(d))));
                }
                Step::End => {
                    this.release_if_done();
                    return Poll::Ready(None);
                }
                Step::More => {}
            }
            conn.buf.reserve(READ_ROOM);
            let n = loop {
                if let Err(e) = ready!(conn.io.poll_read_ready(cx)) {
                    this.conn = None;
                    return Poll::Ready(Some(Err(e)));
                }
                match conn.io.try_read_buf(&mut conn.buf) {
                    Ok(n) => break n,
                    Err(e) if e.kind() == ErrorKind::WouldBlock => continue,
                    Err(e) => {
                        this.conn = None;
                        return Poll::Ready(Some(Err(e)));
                    }
                }
            };
            if n == 0 {
                this.conn = None;
                if this.framing == Framing::Close {
                    this.framing = Framing::Done;
                    return Poll::Ready(None);
                }
                return Poll::Ready(Some(Err(io::Error::new(
                    ErrorKind::UnexpectedEof,
                    "backend closed the connection within a body",
                ))));
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.framing == Framing::Done
    }

    fn size_hint(&self) -> SizeHint {
        match self.framing {
            Framing::Length(n) => SizeHint::with_exact(n),
            Framing::Done => SizeHint::with_exact(0),
            _ => SizeHint::default(),
        }
    }
}

impl Drop for H1Body {
    fn drop(&mut self) {
        // Read to its end but not polled once more: still reusable.
        self.release_if_done();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(raw: &str) -> io::Result<Option<Head>> {
        parse_head(&mut BytesMut::from(raw), false, &mut Vec::new())
    }

    fn body(framing: Framing, chunks: &[&[u8]]) -> io::Result<(Vec<u8>, bool)> {
        let mut f = framing;
        let mut buf = BytesMut::new();
        let mut out = Vec::new();
        for c in chunks {
            buf.extend_from_slice(c);
            loop {
                match f.decode(&mut buf)? {
                    Step::Data(d) => out.extend_from_slice(&d),
                    Step::More => break,
                    Step::End => return Ok((out, true)),
                }
            }
        }
        Ok((out, false))
    }

    #[test]
    fn heads_and_their_framing() {
        let h = head("HTTP/1.1 200 OK\r\nContent-Length: 3\r\nX-A: b\r\n\r\nok\n")
            .unwrap()
            .unwrap();
        assert_eq!(h.status, 200);
        assert_eq!(h.framing, Framing::Length(3));
        assert!(h.keep_alive);
        assert_eq!(h.headers["x-a"], "b");
        let mut buf = BytesMut::from("HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nok\n");
        parse_head(&mut buf, false, &mut Vec::new())
            .unwrap()
            .unwrap();
        assert_eq!(&buf[..], b"ok\n", "the head is taken out, the body left");

        assert!(head("HTTP/1.1 200 OK\r\nContent-Le").unwrap().is_none());
        let h = head(
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\nContent-Length: 9\r\n\r\n",
        )
        .unwrap()
        .unwrap();
        assert_eq!(h.framing, Framing::Chunked(Chunk::Size, 0));
        assert!(!h.headers.contains_key("content-length"));
        let h = head("HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n")
            .unwrap()
            .unwrap();
        assert_eq!(h.framing, Framing::Close);
        assert!(!h.keep_alive, "a body to the close ends the connection");
        let h = head("HTTP/1.1 200 OK\r\n\r\n").unwrap().unwrap();
        assert_eq!((h.framing, h.keep_alive), (Framing::Close, false));
        let h = head("HTTP/1.1 204 No Content\r\nContent-Length: 5\r\n\r\n")
            .unwrap()
            .unwrap();
        assert_eq!(h.framing, Framing::Length(0));
        let h = parse_head(
            &mut BytesMut::from("HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n"),
            true,
            &mut Vec::new(),
        )
        .unwrap()
        .unwrap();
        assert_eq!(h.framing, Framing::Length(0), "no body after HEAD");
        let h = head("HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: close\r\n\r\n")
            .unwrap()
            .unwrap();
        assert!(!h.keep_alive);
        let h = head("HTTP/1.0 200 OK\r\nContent-Length: 5\r\n\r\n")
            .unwrap()
            .unwrap();
        assert!(!h.keep_alive, "HTTP/1.0 closes unless it says keep-alive");
        let h = head("HTTP/1.0 200 OK\r\nContent-Length: 5\r\nConnection: Keep-Alive\r\n\r\n")
            .unwrap()
            .unwrap();
        assert!(h.keep_alive);
        let h = head("HTTP/1.1 200 OK\r\nContent-Length: 4, 4\r\n\r\n")
            .unwrap()
            .unwrap();
        assert_eq!(h.framing, Framing::Length(4));
    }

    #[test]
    fn malformed_heads_are_refused() {
        for bad in [
            "HTTP/1.1 200 OK\r\nContent-Length: 4\r\nContent-Length: 5\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: +4\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: 99999999999999999999999\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: \r\n\r\n",
            "HTTP/1.1 2000 OK\r\n\r\n",
            "HTTP/1.1 099 OK\r\n\r\n",
            "SMTP ready\r\n\r\n",
            "HTTP/1.1 200 OK\r\nBad Name: x\r\n\r\n",
            "HTTP/1.1 200 OK\r\nX: a\rb\r\n\r\n",
        ] {
            assert!(head(bad).is_err(), "{bad:?}");
        }
        let many: String = (0..MAX_HEADERS + 1)
            .map(|i| format!("x-{i}: v\r\n"))
            .collect();
        assert!(head(&format!("HTTP/1.1 200 OK\r\n{many}\r\n")).is_err());
    }

    #[test]
    fn request_heads() {
        let mut h = HeaderMap::new();
        h.insert(header::HOST, HeaderValue::from_static("a.test"));
        h.append("x-a", HeaderValue::from_static("1"));
        h.append("x-a", HeaderValue::from_static("2"));
        let mut out = Vec::new();
        encode_head(&Method::POST, "/p?q=1", &h, true, &mut out);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "POST /p?q=1 HTTP/1.1\r\nhost: a.test\r\nx-a: 1\r\nx-a: 2\r\ntransfer-encoding: chunked\r\n\r\n"
        );
    }

    #[test]
    fn bodies_by_length_chunks_and_close() {
        assert_eq!(
            body(Framing::Length(3), &[b"o", b"kXX"]).unwrap(),
            (b"ok".to_vec().into_iter().chain([b'X']).collect(), true)
        );
        let chunked =
            b"4\r\nWiki\r\n5;ext=1\r\npedia\r\nE\r\n in\r\n\r\nchunks.\r\n0\r\nT: v\r\n\r\n";
        let want = b"Wikipedia in\r\n\r\nchunks.".to_vec();
        assert_eq!(
            body(Framing::Chunked(Chunk::Size, 0), &[chunked]).unwrap(),
            (want.clone(), true)
        );
        // Byte by byte, as a slow backend sends it.
        let bytes: Vec<&[u8]> = chunked.chunks(1).collect();
        assert_eq!(
            body(Framing::Chunked(Chunk::Size, 0), &bytes).unwrap(),
            (want, true)
        );
        assert_eq!(
            body(Framing::Close, &[b"a", b"b"]).unwrap(),
            (b"ab".to_vec(), false)
        );
        assert_eq!(body(Framing::Length(0), &[]).unwrap(), (vec![], false));
        let mut f = Framing::Length(0);
        assert_eq!(f.decode(&mut BytesMut::new()).unwrap(), Step::End);
    }

    #[test]
    fn malformed_chunks_are_refused() {
        let size = || Framing::Chunked(Chunk::Size, 0);
        for bad in [
            &b"zz\r\n"[..],
            b"\r\n",
            b"4\r\nWikiXX",
            b"10000000000000000\r\n",
            b";ext\r\n",
        ] {
            assert!(
                body(size(), &[bad]).is_err(),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
        assert!(body(size(), &[&vec![b'1'; MAX_CHUNK_LINE + 2]]).is_err());
        let mut trailers = b"0\r\n".to_vec();
        while trailers.len() < MAX_TRAILERS + 100 {
            trailers.extend_from_slice(b"x-t: vvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvv\r\n");
        }
        assert!(body(size(), &[&trailers]).is_err());
    }
}
