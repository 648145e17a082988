//! The operator console: pages for support and operations people, served by control
//! on its own HTTP listener (`control.console.listen`).
//!
//! Every page is rendered on the server from the same service layer the gRPC API
//! serves: a handler builds the gRPC request, attaches the signed-in caller and calls
//! the service's method, so a query, an action and the scope it needs exist once. A
//! read key sees no action buttons, and a POST it crafts anyway is refused by the
//! method's own scope check (403). Pages need no JavaScript and load nothing from
//! elsewhere: the templates are compiled into the binary (maud, every value escaped)
//! and the one stylesheet is too.

mod catalog;
mod dead_letters;
mod events;
mod layout;
mod mappings;
mod overview;
mod providers;
mod session;

use std::sync::Arc;

use axum::{
    Router,
    extract::{DefaultBodyLimit, Request},
    http::{HeaderValue, StatusCode, header},
    middleware::{self, Next},
    response::{IntoResponse, Response},
    routing::{get, post},
};
use switchyard_core::{config::ConsoleSettings, shutdown::Shutdown};
use tokio::net::TcpListener;
use tonic::Code;

use self::session::{Session, Sessions};
use crate::{Apis, auth::Authenticate};

/// Largest form the console reads (a catalog document to apply is the largest).
const MAX_FORM_BYTES: usize = 1024 * 1024;

/// What every page's handler can reach.
pub struct Console {
    apis: Apis,
    authenticate: Authenticate,
    settings: ConsoleSettings,
    sessions: Sessions,
    replays: dead_letters::Replays,
}

type Shared = Arc<Console>;

impl Console {
    /// A console over `apis`, letting in the callers `authenticate` knows.
    pub fn new(apis: Apis, authenticate: Authenticate, settings: ConsoleSettings) -> Shared {
        Arc::new(Self {
            apis,
            authenticate,
            sessions: Sessions::new(settings.session_idle),
            settings,
            replays: dead_letters::Replays::default(),
        })
    }
}

/// Serves the console on `listener` until `shutdown` starts draining.
pub async fn serve(
    listener: TcpListener,
    console: Shared,
    shutdown: Shutdown,
) -> std::io::Result<()> {
    let limits = console.settings.http.clone();
    tracing::info!(address = %listener.local_addr()?, "console listening");
    switchyard_core::http::serve(listener, router(console), &limits, "console", shutdown).await
}

fn router(console: Shared) -> Router {
    Router::new()
        .route("/", get(overview::page))
        .route("/events", get(events::page))
        .route("/dead-letters", get(dead_letters::list))
        .route("/dead-letters/{sequence}", get(dead_letters::show))
        .route("/dead-letters/replay", post(dead_letters::replay))
        .route("/dead-letters/replays/{id}", get(dead_letters::progress))
        .route("/dead-letters/purge", post(dead_letters::purge))
        .route("/providers", get(providers::list))
        .route("/providers/{name}", get(providers::page))
        .route("/providers/{name}/pause", post(providers::pause))
        .route("/providers/{name}/resume", post(providers::resume))
        .route(
            "/providers/{name}/reset-breaker",
            post(providers::reset_breaker),
        )
        .route("/mappings", get(mappings::page).post(mappings::run))
        .route("/catalog", get(catalog::list))
        .route("/catalog/apply", get(catalog::form).post(catalog::apply))
        .route("/catalog/{kind}/{name}", get(catalog::show))
        .route("/sign-out", post(session::sign_out))
        .layer(middleware::from_fn_with_state(
            console.clone(),
            session::gate,
        ))
        .route(
            "/sign-in",
            get(session::sign_in_form).post(session::sign_in),
        )
        .route("/console.css", get(stylesheet))
        .fallback(|| async { Failure::NotFound("no such page".into()) })
        .layer(DefaultBodyLimit::max(MAX_FORM_BYTES))
        .layer(middleware::from_fn(protect))
        .with_state(console)
}

/// The console's one stylesheet.
async fn stylesheet() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/css; charset=utf-8")],
        include_str!("console.css"),
    )
}

/// Headers on every answer: nothing but this origin's stylesheet and forms may run,
/// no other site may frame a page, and nothing is cached or sent on as a referrer.
async fn protect(request: Request, next: Next) -> Response {
    let mut response = next.run(request).await;
    let headers = response.headers_mut();
    for (name, value) in [
        (
            header::CONTENT_SECURITY_POLICY,
            "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; \
             frame-ancestors 'none'; base-uri 'none'",
        ),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::X_FRAME_OPTIONS, "DENY"),
        (header::REFERRER_POLICY, "no-referrer"),
        (header::CACHE_CONTROL, "no-store"),
    ] {
        headers.insert(name, HeaderValue::from_static(value));
    }
    response
}

/// A gRPC request from the signed-in caller, as the interceptor would have made it.
fn request<T>(session: &Session, message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.extensions_mut().insert(session.caller.clone());
    request
}

/// Why a page could not be shown or an action not taken.
#[derive(Debug)]
pub enum Failure {
    /// The service layer refused or failed, as it would over gRPC.
    Status(tonic::Status),
    /// The form or query is not what the page takes.
    Invalid(String),
    /// No such page or thing.
    NotFound(String),
    /// A POST without this session's CSRF token.
    Csrf,
    /// A form larger than the console reads.
    TooLarge,
    /// The console itself failed.
    Internal(String),
}

impl From<tonic::Status> for Failure {
    fn from(status: tonic::Status) -> Self {
        Self::Status(status)
    }
}

impl Failure {
    /// The HTTP status for who is at fault, as control's gRPC codes decide it.
    fn status(&self) -> StatusCode {
        match self {
            Self::Status(status) => match status.code() {
                Code::InvalidArgument | Code::FailedPrecondition | Code::OutOfRange => {
                    StatusCode::BAD_REQUEST
                }
                Code::NotFound => StatusCode::NOT_FOUND,
                Code::PermissionDenied => StatusCode::FORBIDDEN,
                Code::Unauthenticated => StatusCode::UNAUTHORIZED,
                Code::Aborted | Code::AlreadyExists => StatusCode::CONFLICT,
                Code::Unavailable | Code::DeadlineExceeded => StatusCode::SERVICE_UNAVAILABLE,
                _ => StatusCode::INTERNAL_SERVER_ERROR,
            },
            Self::Invalid(_) => StatusCode::BAD_REQUEST,
            Self::NotFound(_) => StatusCode::NOT_FOUND,
            Self::Csrf => StatusCode::FORBIDDEN,
            Self::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn message(&self) -> String {
        match self {
            Self::Status(status) => status.message().to_owned(),
            Self::Invalid(message) | Self::NotFound(message) | Self::Internal(message) => {
                message.clone()
            }
            Self::Csrf => "the form's CSRF token is missing or belongs to another session: \
                           reload the page and try again"
                .into(),
            Self::TooLarge => format!("the form is larger than {MAX_FORM_BYTES} bytes"),
        }
    }
}

impl IntoResponse for Failure {
    fn into_response(self) -> Response {
        let status = self.status();
        if status.is_server_error() {
            tracing::warn!(status = status.as_u16(), error = %self.message(), "console page failed");
        }
        let title = status.canonical_reason().unwrap_or("Failed");
        (
            status,
            layout::bare(title, layout::problem(&self.message())),
        )
            .into_response()
    }
}
