//! What every ingest request leaves behind: its server span (joined to the caller's
//! trace context) and its count by source, endpoint and status.

use axum::{
    extract::MatchedPath,
    http::{StatusCode, header},
    middleware::Next,
    response::Response,
};
use switchyard_core::{
    headers,
    metrics::{self, IngestLabels},
    telemetry,
};
use tracing::Instrument;

/// Traces and counts each request. Its server span follows the OpenTelemetry HTTP
/// conventions (`POST /v1/events/{source}`) and continues the caller's trace when the
/// request carries a `traceparent`. A source the catalog does not have is counted as
/// `unknown`, so made-up names cannot grow the label set.
pub(crate) async fn observe_request(request: axum::extract::Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|path| path.as_str().to_owned())
        .unwrap_or_default();
    let path = request.uri().path().to_owned();
    let (endpoint, source) = match path.strip_prefix("/v1/events/") {
        Some(source) => ("events", source),
        None => (
            "webhooks",
            path.strip_prefix("/webhooks/").unwrap_or_default(),
        ),
    };
    let span = server_span(&request, &route, &path, source);
    headers::set_parent_from_http(&span, request.headers());
    let source = source.to_owned();
    let response = next.run(request).instrument(span.clone()).await;
    let status = response.status();
    span.record("http.response.status_code", i64::from(status.as_u16()));
    if status.is_server_error() {
        telemetry::record_error(&span, status.as_str());
    }
    let source = if status == StatusCode::NOT_FOUND {
        "unknown".to_owned()
    } else {
        source
    };
    metrics::metrics()
        .ingest_requests
        .get_or_create(&IngestLabels {
            source,
            endpoint: endpoint.to_owned(),
            status: status.as_u16().to_string(),
        })
        .inc();
    response
}

/// The server span of one request, by the OpenTelemetry HTTP conventions.
fn server_span(
    request: &axum::extract::Request,
    route: &str,
    path: &str,
    source: &str,
) -> tracing::Span {
    let text = |name| {
        request
            .headers()
            .get(name)
            .and_then(|value| value.to_str().ok())
    };
    tracing::info_span!(
        "receive",
        otel.name = format!("{} {route}", request.method()),
        otel.kind = "server",
        otel.status_code = tracing::field::Empty,
        error.type = tracing::field::Empty,
        http.request.method = %request.method(),
        http.route = route,
        http.response.status_code = tracing::field::Empty,
        url.scheme = "http",
        url.path = path,
        server.address = text(header::HOST),
        user_agent.original = text(header::USER_AGENT),
        network.protocol.version = protocol_version(request.version()),
        source = %source,
        event_type = tracing::field::Empty,
        event_id = tracing::field::Empty,
        trace_id = tracing::field::Empty,
    )
}

/// `network.protocol.version` of a request: `1.1`, `2`, …
fn protocol_version(version: axum::http::Version) -> &'static str {
    match version {
        axum::http::Version::HTTP_09 => "0.9",
        axum::http::Version::HTTP_10 => "1.0",
        axum::http::Version::HTTP_2 => "2",
        axum::http::Version::HTTP_3 => "3",
        _ => "1.1",
    }
}
