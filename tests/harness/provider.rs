//! A fake third-party provider: a real HTTP server that records every request and
//! answers as the test tells it to — succeed, fail, stall or rate-limit.

use std::{
    collections::{HashMap, HashSet},
    sync::{Arc, Mutex},
    time::Duration,
};

use axum::{Router, extract::Request, http::StatusCode, response::IntoResponse};
use bytes::Bytes;

/// One request the provider received, and what it answered.
#[derive(Debug, Clone)]
pub struct Received {
    /// HTTP method.
    pub method: String,
    /// Request path.
    pub path: String,
    /// Request headers.
    pub headers: http::HeaderMap,
    /// Request body.
    pub body: Bytes,
    /// The status the provider answered with.
    pub status: u16,
    /// Which request this was for its idempotency key (1 = first).
    pub attempt: usize,
    /// When it arrived.
    pub at: std::time::Instant,
    /// When it arrived, on the wall clock (to compare with outcome records).
    pub wall: std::time::SystemTime,
}

impl Received {
    /// A header's value as text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|value| value.to_str().ok())
    }

    /// The `Idempotency-Key` header.
    pub fn idempotency_key(&self) -> &str {
        self.header("idempotency-key").unwrap_or_default()
    }

    /// The body as JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).expect("provider received JSON")
    }

    /// Whether the provider accepted this request.
    pub fn accepted(&self) -> bool {
        (200..300).contains(&self.status)
    }
}

/// How the provider answers one request.
#[derive(Debug, Clone)]
pub struct Reply {
    /// Status to answer with.
    pub status: u16,
    /// How long to wait before answering.
    pub delay: Duration,
    /// Extra response headers.
    pub headers: Vec<(&'static str, String)>,
    /// Response body.
    pub body: String,
}

impl Reply {
    /// Answer `status` at once.
    pub fn status(status: u16) -> Self {
        Self {
            status,
            delay: Duration::ZERO,
            headers: Vec::new(),
            body: String::new(),
        }
    }

    /// 200 OK at once.
    pub fn ok() -> Self {
        Self::status(200)
    }

    /// Wait before answering.
    pub fn after(mut self, delay: Duration) -> Self {
        self.delay = delay;
        self
    }

    /// Add a response header.
    pub fn header(mut self, name: &'static str, value: impl Into<String>) -> Self {
        self.headers.push((name, value.into()));
        self
    }

    /// Answer with this body.
    pub fn body(mut self, body: impl Into<String>) -> Self {
        self.body = body.into();
        self
    }
}

type Behaviour = dyn Fn(&Received) -> Reply + Send + Sync;

struct State {
    log: Mutex<Vec<Received>>,
    attempts: Mutex<HashMap<String, usize>>,
    /// Idempotency keys answered with 2xx, kept as requests arrive so waiting on them
    /// costs nothing however long the log grows.
    accepted: Mutex<HashSet<String>>,
    behaviour: Box<Behaviour>,
}

/// A provider running on a loopback port.
#[derive(Clone)]
pub struct FakeProvider {
    url: String,
    state: Arc<State>,
}

impl FakeProvider {
    /// A provider that accepts everything.
    pub async fn start() -> Self {
        Self::with(|_| Reply::ok()).await
    }

    /// A provider that answers each request as `behaviour` decides; the request it is
    /// given carries its attempt number for its idempotency key.
    pub async fn with(behaviour: impl Fn(&Received) -> Reply + Send + Sync + 'static) -> Self {
        Self::serve(None, behaviour).await
    }

    /// Like [`FakeProvider::with`], over HTTPS with `tls` (e.g. a configuration that
    /// requires client certificates); the URL is `https://127.0.0.1:<port>`.
    pub async fn with_tls(
        tls: Arc<rustls::ServerConfig>,
        behaviour: impl Fn(&Received) -> Reply + Send + Sync + 'static,
    ) -> Self {
        Self::serve(Some(tls), behaviour).await
    }

    async fn serve(
        tls: Option<Arc<rustls::ServerConfig>>,
        behaviour: impl Fn(&Received) -> Reply + Send + Sync + 'static,
    ) -> Self {
        let state = Arc::new(State {
            log: Mutex::default(),
            attempts: Mutex::default(),
            accepted: Mutex::default(),
            behaviour: Box::new(behaviour),
        });
        let handler_state = state.clone();
        let app = Router::new().fallback(move |request: Request| {
            let state = handler_state.clone();
            async move { handle(state, request).await }
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let address = listener.local_addr().expect("address");
        let url = match tls {
            None => {
                tokio::spawn(async move {
                    axum::serve(listener, app)
                        .await
                        .expect("fake provider serves");
                });
                format!("http://{address}")
            }
            Some(tls) => {
                let listener = TlsListener::new(listener, tls);
                tokio::spawn(async move {
                    axum::serve(listener, app)
                        .await
                        .expect("fake provider serves");
                });
                format!("https://{address}")
            }
        };
        Self { url, state }
    }

    /// Base URL, e.g. `http://127.0.0.1:41234`.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Every request so far, in arrival order.
    pub fn received(&self) -> Vec<Received> {
        self.state.log.lock().expect("log").clone()
    }

    /// Requests that were accepted (2xx).
    pub fn accepted(&self) -> Vec<Received> {
        self.received()
            .into_iter()
            .filter(Received::accepted)
            .collect()
    }

    /// Idempotency keys of accepted requests, each once.
    pub fn accepted_keys(&self) -> HashSet<String> {
        self.state.accepted.lock().expect("accepted").clone()
    }

    /// Waits until `count` distinct idempotency keys have been accepted.
    pub async fn wait_for_accepted(&self, count: usize, timeout: Duration) {
        crate::eventually(timeout, &format!("{count} accepted deliveries"), || async {
            (self.state.accepted.lock().expect("accepted").len() >= count).then_some(())
        })
        .await;
    }
}

async fn handle(state: Arc<State>, request: Request) -> impl IntoResponse {
    let (parts, body) = request.into_parts();
    let body = axum::body::to_bytes(body, 16 << 20)
        .await
        .unwrap_or_default();
    let key = parts
        .headers
        .get("idempotency-key")
        .and_then(|value| value.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let attempt = {
        let mut attempts = state.attempts.lock().expect("attempts");
        let count = attempts.entry(key).or_default();
        *count += 1;
        *count
    };
    let mut received = Received {
        method: parts.method.to_string(),
        path: parts.uri.path().to_owned(),
        headers: parts.headers,
        body,
        status: 0,
        attempt,
        at: std::time::Instant::now(),
        wall: std::time::SystemTime::now(),
    };
    let reply = (state.behaviour)(&received);
    // Recorded on arrival: a provider acts on a request even if its answer is lost.
    received.status = reply.status;
    if received.accepted() {
        state
            .accepted
            .lock()
            .expect("accepted")
            .insert(received.idempotency_key().to_owned());
    }
    state.log.lock().expect("log").push(received);
    if !reply.delay.is_zero() {
        tokio::time::sleep(reply.delay).await;
    }
    let mut response = (
        StatusCode::from_u16(reply.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        reply.body,
    )
        .into_response();
    for (name, value) in reply.headers {
        if let Ok(value) = http::HeaderValue::from_str(&value) {
            response.headers_mut().insert(name, value);
        }
    }
    response
}

/// Accepts TLS connections; handshakes run concurrently, and a failed one (a client
/// without an acceptable certificate) is dropped without stopping the listener.
struct TlsListener {
    address: std::net::SocketAddr,
    accepted: tokio::sync::mpsc::Receiver<(
        tokio_rustls::server::TlsStream<tokio::net::TcpStream>,
        std::net::SocketAddr,
    )>,
}

impl TlsListener {
    fn new(listener: tokio::net::TcpListener, tls: Arc<rustls::ServerConfig>) -> Self {
        let address = listener.local_addr().expect("address");
        let acceptor = tokio_rustls::TlsAcceptor::from(tls);
        let (sender, accepted) = tokio::sync::mpsc::channel(64);
        tokio::spawn(async move {
            while let Ok((stream, peer)) = listener.accept().await {
                let (acceptor, sender) = (acceptor.clone(), sender.clone());
                tokio::spawn(async move {
                    if let Ok(stream) = acceptor.accept(stream).await {
                        let _ = sender.send((stream, peer)).await;
                    }
                });
            }
        });
        Self { address, accepted }
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = tokio_rustls::server::TlsStream<tokio::net::TcpStream>;
    type Addr = std::net::SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.accepted.recv().await {
            Some(accepted) => accepted,
            // The accept task never ends while the runtime runs.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.address)
    }
}
