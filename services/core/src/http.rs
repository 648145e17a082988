//! The HTTP server under every HTTP listener (ingest, admin), with the timeouts and
//! limits a listener facing the internet needs.
//!
//! - Headers must arrive within `header_read_timeout`, counted from the moment the
//!   server starts waiting for a request, so a kept-alive connection that stays idle
//!   that long is closed too (hyper's header timer covers both).
//! - A body must arrive within `body_timeout` of its headers: reading it then fails
//!   with [`BodyTimeout`] (ingest answers 408) and the connection is closed after the
//!   answer.
//! - A head larger than `max_header_bytes`, more than `max_headers` headers, or one
//!   header line longer than `max_header_line_bytes` is answered 431 before any
//!   handler runs.
//! - At most `max_connections` connections are open at once; the next waits in the
//!   kernel's accept queue until one closes. The process's soft file limit is raised
//!   to its hard limit and the cap kept below it, so a flood of connections can never
//!   leave the process without file descriptors.

use std::{
    convert::Infallible,
    future::Future,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    task::{Context, Poll},
    time::Duration,
};

use axum::{
    Router,
    body::Body,
    http::{HeaderValue, Request, Response, StatusCode, header},
};
use bytes::Bytes;
use http_body::{Frame, SizeHint};
use hyper::body::Incoming;
use hyper_util::{
    rt::{TokioIo, TokioTimer},
    server::graceful::GracefulShutdown,
};
use tokio::{net::TcpListener, sync::Semaphore, time::Instant};
use tower::ServiceExt;

use crate::{
    config::HttpLimits,
    metrics::{self, ListenerLabels},
    shutdown::Shutdown,
};

/// File descriptors kept free for everything but this listener's connections (NATS,
/// outbound calls, files, the other listeners of the process).
const RESERVED_FILES: u64 = 256;

/// The number of headers hyper accepts unless told otherwise.
const HYPER_MAX_HEADERS: usize = 100;

/// Connections the kernel queues for a listener before it accepts them (capped by
/// `net.core.somaxconn`). The default of 128 drops the SYNs of a burst of clients,
/// which then wait a second for their retransmission.
const ACCEPT_BACKLOG: u32 = 4096;

/// Binds a listener for [`serve`] (or the gRPC server) with a backlog that absorbs a
/// burst of connections.
pub async fn bind(address: std::net::SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if address.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(address)?;
    socket.listen(ACCEPT_BACKLOG)
}

/// A request body that did not arrive within the body timeout.
#[derive(Debug, thiserror::Error)]
#[error("the request body did not arrive within {}s", .0.as_secs_f64())]
pub struct BodyTimeout(pub Duration);

/// Whether `err`, or an error it wraps, is a [`BodyTimeout`].
pub fn is_body_timeout(err: &(dyn std::error::Error + 'static)) -> bool {
    std::iter::successors(Some(err), |err| err.source()).any(|err| err.is::<BodyTimeout>())
}

/// Serves `app` on `listener` under `limits` until `shutdown` starts draining, then
/// lets requests in flight finish. `name` labels the connection gauge and logs.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: &HttpLimits,
    name: &'static str,
    shutdown: Shutdown,
) -> std::io::Result<()> {
    let cap = connection_cap(limits.max_connections, name);
    let permits = Arc::new(Semaphore::new(cap));
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_header_size(limits.max_header_bytes);
    // hyper keeps up to 100 headers on the stack and allocates per request once a
    // count is set, so only a different count is set.
    if limits.max_headers != HYPER_MAX_HEADERS {
        builder.max_headers(limits.max_headers);
    }
    let handler = Handler {
        app,
        body_timeout: limits.body_timeout,
        max_line: limits.max_header_line_bytes,
    };
    let open = metrics::metrics()
        .http_connections
        .get_or_create(&ListenerLabels {
            listener: name.to_owned(),
        })
        .clone();
    let graceful = GracefulShutdown::new();
    loop {
        let permit = tokio::select! {
            () = shutdown.cancelled() => break,
            permit = permits.clone().acquire_owned() => permit.expect("the semaphore is never closed"),
        };
        let stream = tokio::select! {
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(err) => {
                    // Out of descriptors or a connection reset before accept: wait a
                    // little instead of spinning.
                    tracing::warn!(listener = name, error = %err, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let connection =
            graceful.watch(builder.serve_connection(TokioIo::new(stream), handler.clone()));
        let open = open.clone();
        open.inc();
        tokio::spawn(async move {
            if let Err(err) = connection.await {
                tracing::debug!(listener = name, error = %err, "connection ended");
            }
            open.dec();
            drop(permit);
        });
    }
    drop(listener);
    graceful.shutdown().await;
    Ok(())
}

/// `configured`, lowered to what the process's file limit leaves room for after the
/// soft limit is raised as far as the hard limit allows.
fn connection_cap(configured: usize, name: &str) -> usize {
    let files = rlimit::increase_nofile_limit(u64::MAX).unwrap_or(1024);
    let room = usize::try_from(files.saturating_sub(RESERVED_FILES).max(1)).unwrap_or(usize::MAX);
    if configured > room {
        tracing::warn!(
            listener = name,
            configured,
            cap = room,
            file_limit = files,
            "max_connections is above what the file limit leaves room for; lowered"
        );
        room
    } else {
        configured
    }
}

/// Checks the header lines, puts the body under its deadline and runs the router.
#[derive(Clone)]
struct Handler {
    app: Router,
    body_timeout: Duration,
    max_line: usize,
}

impl hyper::service::Service<Request<Incoming>> for Handler {
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response<Body>, Infallible>> + Send>>;

    fn call(&self, request: Request<Incoming>) -> Self::Future {
        if let Some((name, length)) = request
            .headers()
            .iter()
            .map(|(name, value)| (name, name.as_str().len() + 2 + value.len()))
            .find(|(_, length)| *length > self.max_line)
        {
            let detail = format!(
                "the header line {name} is {length} bytes; at most {} are accepted",
                self.max_line
            );
            return Box::pin(std::future::ready(Ok(header_too_large(&detail))));
        }
        let expired = Arc::new(AtomicBool::new(false));
        let request = request.map(|body| {
            Body::new(Deadline {
                inner: Some(body),
                at: Instant::now() + self.body_timeout,
                timeout: self.body_timeout,
                sleep: None,
                expired: expired.clone(),
            })
        });
        let app = self.app.clone();
        Box::pin(async move {
            let Ok(mut response) = app.oneshot(request).await;
            if expired.load(Ordering::Relaxed) {
                // The rest of the body may still be trickling in: do not wait for it.
                response
                    .headers_mut()
                    .insert(header::CONNECTION, HeaderValue::from_static("close"));
            }
            Ok(response)
        })
    }
}

/// 431 as a problem document, closing the connection.
fn header_too_large(detail: &str) -> Response<Body> {
    let body = serde_json::json!({
        "type": "https://switchyard.dev/problems/header-too-large",
        "title": "Request header fields too large",
        "status": 431,
        "detail": detail,
    });
    Response::builder()
        .status(StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE)
        .header(header::CONTENT_TYPE, "application/problem+json")
        .header(header::CONNECTION, "close")
        .body(Body::from(body.to_string()))
        .expect("a valid response")
}

/// A request body that fails with [`BodyTimeout`] once its deadline passes. The timer
/// is only created when the body is not already there, so a body that came with its
/// headers costs none.
struct Deadline {
    inner: Option<Incoming>,
    at: Instant,
    timeout: Duration,
    sleep: Option<Pin<Box<tokio::time::Sleep>>>,
    expired: Arc<AtomicBool>,
}

impl http_body::Body for Deadline {
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = self.get_mut();
        let Some(inner) = this.inner.as_mut() else {
            return Poll::Ready(None);
        };
        if let Poll::Ready(frame) = Pin::new(inner).poll_frame(cx) {
            return Poll::Ready(frame.map(|frame| frame.map_err(Into::into)));
        }
        let at = this.at;
        let sleep = this
            .sleep
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(at)));
        if sleep.as_mut().poll(cx).is_ready() {
            this.expired.store(true, Ordering::Relaxed);
            this.inner = None;
            return Poll::Ready(Some(Err(Box::new(BodyTimeout(this.timeout)))));
        }
        Poll::Pending
    }

    fn is_end_stream(&self) -> bool {
        self.inner
            .as_ref()
            .is_none_or(http_body::Body::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        self.inner
            .as_ref()
            .map_or_else(|| SizeHint::with_exact(0), http_body::Body::size_hint)
    }
}
