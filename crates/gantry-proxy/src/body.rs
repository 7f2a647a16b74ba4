//! The one body type of the proxy, both ways: the common bodies (none, the
//! proxy's own short answers, a client's request body as hyper reads it, a
//! backend's response) are variants, so that passing them costs no box.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use hyper::body::{Frame, Incoming, SizeHint};

use crate::backend::{InFlight, UpBody};
use crate::metrics::RouteMetrics;

/// Errors of bodies, either way.
pub(crate) type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A body, either way.
pub(crate) enum Body {
    /// Nothing.
    Empty,
    /// One piece, then the end (the proxy's own answers).
    Full(Option<Bytes>),
    /// A client's request body, as hyper reads it.
    Incoming(Incoming),
    /// A backend's response body, counted in its route's metrics, its
    /// request in flight until it is dropped.
    Backend(Counted),
    /// Any other (streamed test bodies).
    #[cfg(test)]
    Boxed(http_body_util::combinators::BoxBody<Bytes, BoxError>),
}

/// A backend's response body as it goes to the client.
pub(crate) struct Counted {
    pub(crate) body: UpBody,
    pub(crate) _in_flight: InFlight,
    pub(crate) metrics: Arc<RouteMetrics>,
}

impl hyper::body::Body for Body {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            Body::Empty => Poll::Ready(None),
            Body::Full(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
            Body::Incoming(b) => Pin::new(b).poll_frame(cx).map_err(Into::into),
            Body::Backend(c) => {
                let f = Pin::new(&mut c.body).poll_frame(cx);
                if let Poll::Ready(Some(Ok(f))) = &f {
                    if let Some(d) = f.data_ref() {
                        c.metrics.bytes(d.len());
                    }
                }
                f
            }
            #[cfg(test)]
            Body::Boxed(b) => Pin::new(b).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Body::Empty => true,
            Body::Full(b) => b.is_none(),
            Body::Incoming(b) => b.is_end_stream(),
            Body::Backend(c) => c.body.is_end_stream(),
            #[cfg(test)]
            Body::Boxed(b) => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Body::Empty => SizeHint::with_exact(0),
            Body::Full(b) => SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64)),
            Body::Incoming(b) => b.size_hint(),
            Body::Backend(c) => c.body.size_hint(),
            #[cfg(test)]
            Body::Boxed(b) => b.size_hint(),
        }
    }
}
