//! The admin HTTP listener of every service: `/metrics` (Prometheus), `/healthz`.

use axum::{Router, http::header, response::IntoResponse, routing::get};
use tokio::net::TcpListener;

use crate::shutdown::Shutdown;

/// Serves the admin endpoints on `listener` until `shutdown` starts draining.
pub async fn serve(listener: TcpListener, shutdown: Shutdown) -> Result<(), std::io::Error> {
    let app = Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok" }));
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
