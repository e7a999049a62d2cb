//! The response body: empty, one buffer (cache hits: a `Bytes` clone, no copy; on HTTP/2 in
//! frames that fill TLS records), a range of a cached object's memory file, or a stream
//! (pass-through from S3) that fails loudly instead of ending short.

use std::ops::Range;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use futures_util::Stream;
use http_body::{Frame, SizeHint};

use super::sendfile::{FileBody, HTTP2_FRAME, Http2};
use crate::memfile::StoredFile;

/// Errors a streamed body can end with; they abort the client connection.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A stream of body chunks.
pub type ByteStream = Pin<Box<dyn Stream<Item = Result<Bytes, BoxError>> + Send>>;

/// A response body.
pub enum Body {
    /// No body.
    Empty,
    /// One buffer, sent as one frame.
    Full(Option<Bytes>),
    /// One buffer, sent in frames of [`HTTP2_FRAME`] bytes (what is left of it).
    Split(Bytes),
    /// A range of a cached object's memory file.
    File(FileBody),
    /// Chunks from elsewhere; `len` is the exact length when known.
    Stream {
        /// The chunks.
        stream: ByteStream,
        /// Bytes still expected.
        remaining: Option<u64>,
    },
}

impl Body {
    /// A body holding `bytes`.
    pub fn full(bytes: impl Into<Bytes>) -> Body {
        let bytes = bytes.into();
        if bytes.is_empty() {
            Body::Empty
        } else {
            Body::Full(Some(bytes))
        }
    }

    /// A streamed body of exactly `len` bytes (when known): a stream that ends early or runs
    /// long becomes an error, so the client never takes a short body for a whole one.
    pub fn stream(stream: ByteStream, len: Option<u64>) -> Body {
        Body::Stream {
            stream,
            remaining: len,
        }
    }
}

impl Body {
    /// A cached body (or a slice of one) from the heap, for a request with these `extensions`:
    /// on HTTP/2 in frames that each fill one TLS record with their head, as copied frames do
    /// (hyper would cut one buffer into frames of 16 KiB, each spilling 9 bytes into a record of
    /// their own).
    pub fn from_memory(bytes: Bytes, extensions: &http::Extensions) -> Body {
        if bytes.len() > HTTP2_FRAME && extensions.get::<Http2>().is_some() {
            Body::Split(bytes)
        } else {
            Body::full(bytes)
        }
    }

    /// Bytes `range` of a cached object's memory file. On a plain HTTP/1 connection the kernel
    /// sends them with `sendfile` (the connection left its queue in the request's
    /// `extensions`; `sent` counts those bytes); elsewhere they are copied out in small frames.
    pub fn from_file(
        file: Arc<StoredFile>,
        range: Range<u64>,
        extensions: &http::Extensions,
        sent: prometheus_client::metrics::counter::Counter,
    ) -> Body {
        Body::File(FileBody::new(file, range, extensions, sent))
    }
}

/// A streamed body ended before its announced length.
#[derive(Debug, thiserror::Error)]
#[error("body ended {0} bytes short")]
pub struct ShortBody(pub u64);

/// A streamed body went past its announced length.
#[derive(Debug, thiserror::Error)]
#[error("body longer than announced")]
pub struct LongBody;

impl http_body::Body for Body {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            Body::Empty => Poll::Ready(None),
            Body::Full(bytes) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
            Body::Split(rest) if rest.is_empty() => Poll::Ready(None),
            Body::Split(rest) => {
                let frame = rest.split_to(rest.len().min(HTTP2_FRAME));
                Poll::Ready(Some(Ok(Frame::data(frame))))
            }
            Body::File(file) => Poll::Ready(
                file.next_frame()
                    .map(|frame| frame.map(Frame::data).map_err(Into::into)),
            ),
            Body::Stream { stream, remaining } => match stream.as_mut().poll_next(cx) {
                Poll::Pending => Poll::Pending,
                Poll::Ready(Some(Ok(chunk))) => {
                    if let Some(left) = remaining {
                        let n = chunk.len() as u64;
                        if n > *left {
                            return Poll::Ready(Some(Err(LongBody.into())));
                        }
                        *left -= n;
                    }
                    Poll::Ready(Some(Ok(Frame::data(chunk))))
                }
                Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(e))),
                Poll::Ready(None) => match remaining {
                    Some(left) if *left > 0 => {
                        let short = *left;
                        *remaining = Some(0);
                        Poll::Ready(Some(Err(ShortBody(short).into())))
                    }
                    _ => Poll::Ready(None),
                },
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Body::Empty => true,
            Body::Full(bytes) => bytes.is_none(),
            Body::Split(rest) => rest.is_empty(),
            Body::File(file) => file.remaining() == 0,
            Body::Stream { .. } => false,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Body::Empty => SizeHint::with_exact(0),
            Body::Full(bytes) => SizeHint::with_exact(bytes.as_ref().map_or(0, |b| b.len() as u64)),
            Body::Split(rest) => SizeHint::with_exact(rest.len() as u64),
            Body::File(file) => SizeHint::with_exact(file.remaining()),
            Body::Stream {
                remaining: Some(n), ..
            } => SizeHint::with_exact(*n),
            Body::Stream { .. } => SizeHint::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    #[tokio::test]
    async fn a_short_stream_is_an_error_not_an_end() {
        let chunks = futures_util::stream::iter([Ok::<_, BoxError>(Bytes::from_static(b"abc"))]);
        let body = Body::stream(Box::pin(chunks), Some(10));
        assert!(body.collect().await.is_err());
        let chunks = futures_util::stream::iter([Ok::<_, BoxError>(Bytes::from_static(b"abc"))]);
        let body = Body::stream(Box::pin(chunks), Some(3));
        assert_eq!(body.collect().await.unwrap().to_bytes(), "abc");
    }
}
