//! How many requests ingest serves at once: at most `ingest.max_in_flight`, counted
//! from the moment a request's body has arrived. A request beyond the bound waits, on
//! its open connection, for a place; none is refused for it.
//!
//! While NATS is slow, every request waits for its publish ack, so without a bound the
//! number being served grows with the rate times the stall: 750 for a 1.5 s stall at
//! 500 events/s. Each holds a tracing span, and the span registry keeps the slots its
//! busiest moment needed for the rest of the process's life. The bound caps that.
//! The body is read before a place is taken, so a client trickling its body in (cut
//! off by `body_timeout`) holds a connection, not one of the places.

use axum::{
    body::{Body, Bytes, HttpBody},
    extract::{Request, State},
    middleware::Next,
    response::Response,
};
use futures::{StreamExt, stream};
use http_body_util::BodyExt;
use std::sync::Arc;
use switchyard_core::metrics;

use crate::Ingest;

/// Waits for the request's body and a free place, then serves the request.
pub(crate) async fn admit(
    State(state): State<Arc<Ingest>>,
    request: Request,
    next: Next,
) -> Response {
    let (parts, body) = request.into_parts();
    let body = arrived(body, state.max_body_bytes).await;
    let _place = match state.in_flight.try_acquire() {
        Ok(place) => place,
        Err(_) => {
            let _waiting = Waiting::counted();
            state.in_flight.acquire().await.expect("never closed")
        }
    };
    next.run(Request::from_parts(parts, body)).await
}

/// One request counted in `switchyard_ingest_requests_waiting` while it lives, also
/// when its client goes away while it waits.
struct Waiting;

impl Waiting {
    fn counted() -> Self {
        metrics::metrics().ingest_requests_waiting.inc();
        Self
    }
}

impl Drop for Waiting {
    fn drop(&mut self) {
        metrics::metrics().ingest_requests_waiting.dec();
    }
}

/// Reads `body` until it ends, fails, or passes `limit` bytes, and returns a body that
/// yields the same: what was read, then the failure or the unread rest. The handler
/// reads it as it would have read the original, and answers 408, 413 or 400 alike. A
/// body whose declared length is over `limit` is not read: the handler refuses it at
/// once.
async fn arrived(mut body: Body, limit: usize) -> Body {
    if body.size_hint().lower() > limit as u64 {
        return body;
    }
    let mut chunks: Vec<Bytes> = Vec::new();
    let mut size = 0;
    loop {
        match body.frame().await {
            None if chunks.len() <= 1 => return chunks.pop().map_or_else(Body::empty, Body::from),
            None => return Body::from(chunks.concat()),
            Some(Ok(frame)) => {
                // Trailers carry nothing ingest reads.
                if let Ok(data) = frame.into_data() {
                    size += data.len();
                    chunks.push(data);
                }
                if size > limit {
                    break;
                }
            }
            Some(Err(err)) => {
                let read = chunks.into_iter().map(Ok);
                return Body::from_stream(stream::iter(read.chain(std::iter::once(Err(err)))));
            }
        }
    }
    let read = stream::iter(chunks.into_iter().map(Ok::<_, axum::Error>));
    Body::from_stream(read.chain(body.into_data_stream()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunked(parts: Vec<Result<&'static str, &'static str>>) -> Body {
        Body::from_stream(stream::iter(parts.into_iter().map(|part| {
            part.map(|text| Bytes::from_static(text.as_bytes()))
                .map_err(std::io::Error::other)
        })))
    }

    #[tokio::test]
    async fn a_body_that_arrived_reads_the_same() {
        for parts in [vec![], vec![Ok("{\"a\":1}")], vec![Ok("{\"a\""), Ok(":1}")]] {
            let expected: String = parts.iter().map(|p| p.unwrap()).collect();
            let body = arrived(chunked(parts), 100).await;
            let read = axum::body::to_bytes(body, 100).await.unwrap();
            assert_eq!(read, expected.as_bytes());
        }
    }

    #[tokio::test]
    async fn a_body_over_the_limit_still_fails_the_handlers_limit() {
        let body = arrived(chunked(vec![Ok("12345"), Ok("67890"), Ok("abc")]), 8).await;
        let err = axum::body::to_bytes(body, 8)
            .await
            .unwrap_err()
            .into_inner();
        assert!(err.is::<http_body_util::LengthLimitError>(), "{err}");
    }

    /// A body that declares 1,000 bytes and never sends them.
    struct Declared;

    impl http_body::Body for Declared {
        type Data = Bytes;
        type Error = std::io::Error;

        fn poll_frame(
            self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, std::io::Error>>> {
            std::task::Poll::Pending
        }

        fn size_hint(&self) -> http_body::SizeHint {
            http_body::SizeHint::with_exact(1_000)
        }
    }

    #[tokio::test]
    async fn a_body_declared_over_the_limit_is_not_read() {
        let waited = std::time::Duration::from_secs(1);
        let body = tokio::time::timeout(waited, arrived(Body::new(Declared), 100))
            .await
            .expect("the body is not waited for");
        assert_eq!(body.size_hint().exact(), Some(1_000));
    }

    #[tokio::test]
    async fn a_failed_body_fails_with_the_same_error_after_what_was_read() {
        let body = arrived(chunked(vec![Ok("{\"a\""), Err("reset by peer")]), 100).await;
        let mut stream = body.into_data_stream();
        assert_eq!(stream.next().await.unwrap().unwrap(), "{\"a\"");
        let err = stream.next().await.unwrap().unwrap_err();
        assert!(err.to_string().contains("reset by peer"), "{err}");
        assert!(stream.next().await.is_none());
    }
}
