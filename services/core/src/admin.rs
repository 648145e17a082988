//! The admin HTTP listener of every service: `/metrics` (Prometheus), `/healthz`
//! (the process answers) and `/readyz` (every NATS connection of the process is up).

use std::sync::{
    Arc, Mutex, Weak,
    atomic::{AtomicBool, Ordering},
};

use axum::{
    Router,
    http::{HeaderMap, StatusCode, header},
    response::IntoResponse,
    routing::get,
};
use tokio::net::TcpListener;

use crate::{config::HttpLimits, metrics, shutdown::Shutdown};

/// Serves the admin endpoints on `listener` under `limits` until `shutdown` starts
/// draining.
pub async fn serve(
    listener: TcpListener,
    limits: HttpLimits,
    shutdown: Shutdown,
) -> Result<(), std::io::Error> {
    let app = Router::new()
        .route("/metrics", get(scrape))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(ready));
    tracing::info!(address = %listener.local_addr()?, "admin listening");
    crate::http::serve(listener, app, &limits, "admin", shutdown).await
}

/// The metrics in the format the scraper asks for, labelled with its content type.
async fn scrape(request: HeaderMap) -> impl IntoResponse {
    let accept = request
        .get(header::ACCEPT)
        .and_then(|value| value.to_str().ok())
        .unwrap_or_default();
    if metrics::prefers_openmetrics(accept) {
        (
            [(header::CONTENT_TYPE, metrics::OPENMETRICS)],
            metrics::encode(),
        )
    } else {
        (
            [(header::CONTENT_TYPE, metrics::CLASSIC)],
            metrics::encode_classic(),
        )
    }
}

/// Whether each NATS connection of the process is up, as its event callback last
/// saw; a connection whose client is gone is no longer watched.
static CONNECTIONS: Mutex<Vec<Weak<AtomicBool>>> = Mutex::new(Vec::new());

/// Makes `/readyz` answer 503 whenever `up` is false; [`crate::nats::connect`] passes
/// the flag its connection's events keep current.
pub(crate) fn watch(up: &Arc<AtomicBool>) {
    let mut connections = CONNECTIONS
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    connections.retain(|flag| flag.strong_count() > 0);
    connections.push(Arc::downgrade(up));
}

/// 200 once the process has connected to NATS and while every connection is up; 503
/// with the reason otherwise.
pub async fn ready() -> (StatusCode, &'static str) {
    let connections = CONNECTIONS
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let flags: Vec<_> = connections.iter().filter_map(Weak::upgrade).collect();
    if flags.is_empty() {
        (StatusCode::SERVICE_UNAVAILABLE, "not connected to NATS yet")
    } else if flags.iter().all(|up| up.load(Ordering::Relaxed)) {
        (StatusCode::OK, "ready")
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "NATS connection lost; reconnecting",
        )
    }
}

/// Binds `settings.admin.listen` and serves the admin endpoints as a task of
/// `shutdown`; returns the address bound, and fails at start-up when it cannot be
/// bound.
pub async fn start(
    settings: &crate::config::Settings,
    shutdown: &Shutdown,
) -> Result<std::net::SocketAddr, crate::Error> {
    let address = settings.admin.listen;
    let bind_error =
        |err: std::io::Error| crate::Error::Config(format!("admin.listen {address}: {err}"));
    let listener = crate::http::bind(address).await.map_err(bind_error)?;
    let bound = listener.local_addr().map_err(bind_error)?;
    shutdown.spawn(
        "admin",
        serve(listener, settings.admin.http.clone(), shutdown.clone()),
    );
    Ok(bound)
}
