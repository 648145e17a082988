//! The admin HTTP listener of every service: `/metrics` (Prometheus), `/healthz`
//! (the process answers) and `/readyz` (every NATS connection of the process is up).

use std::sync::{
    Arc, Mutex, Weak,
    atomic::{AtomicBool, Ordering},
};

use axum::{
    Router,
    http::{StatusCode, header},
    response::IntoResponse,
    routing::get,
};
use tokio::net::TcpListener;

use crate::shutdown::Shutdown;

/// Serves the admin endpoints on `listener` until `shutdown` starts draining.
pub async fn serve(listener: TcpListener, shutdown: Shutdown) -> Result<(), std::io::Error> {
    let app = Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(ready));
    tracing::info!(address = %listener.local_addr()?, "admin listening");
    axum::serve(listener, app)
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await
}

async fn metrics() -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        crate::metrics::encode(),
    )
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
/// `shutdown`; fails at start-up when the address cannot be bound.
pub async fn start(
    settings: &crate::config::Settings,
    shutdown: &Shutdown,
) -> Result<(), crate::Error> {
    let address = settings.admin.listen;
    let listener = TcpListener::bind(address)
        .await
        .map_err(|err| crate::Error::Config(format!("admin.listen {address}: {err}")))?;
    shutdown.spawn("admin", serve(listener, shutdown.clone()));
    Ok(())
}
