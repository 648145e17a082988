//! One provider: its delivery state, and pause, resume and breaker reset.

use axum::{
    Extension, Form,
    extract::{Path, State},
    response::Redirect,
};
use maud::{Markup, html};
use serde::Deserialize;

use super::{Failure, Shared, layout, request, session::Session};
use crate::proto::{
    BreakerState, GetProviderStatusRequest, ListProviderStatusRequest, PauseProviderRequest,
    ProviderStatus, ResetBreakerRequest, ResumeProviderRequest,
    provider_service_server::ProviderService,
};

/// The status of every provider in the catalog.
pub async fn all(console: &Shared, session: &Session) -> Result<Vec<ProviderStatus>, Failure> {
    Ok(console
        .apis
        .providers
        .list_provider_status(request(session, ListProviderStatusRequest {}))
        .await?
        .into_inner()
        .providers)
}

/// `GET /providers`: every provider, as on the overview.
pub async fn list(
    State(console): State<Shared>,
    Extension(session): Extension<Session>,
) -> Result<Markup, Failure> {
    let providers = all(&console, &session).await?;
    Ok(layout::page(
        &session,
        "Providers",
        html! {
            @if providers.is_empty() {
                p.none { "The catalog has no providers." }
            } @else {
                (super::overview::provider_table(&providers))
                p.hint { "Open a provider to pause or resume it, or to reset its breaker." }
            }
        },
    ))
}

/// `GET /providers/{name}`.
pub async fn page(
    State(console): State<Shared>,
    Extension(session): Extension<Session>,
    Path(name): Path<String>,
) -> Result<Markup, Failure> {
    let status = console
        .apis
        .providers
        .get_provider_status(request(
            &session,
            GetProviderStatusRequest { provider: name },
        ))
        .await?
        .into_inner();
    let limit = if status.rate_per_second > 0.0 {
        html! { (format!("{} requests/s, burst {}, {:.1} tokens now", status.rate_per_second, status.burst, status.tokens)) }
    } else {
        html! { "unlimited" }
    };
    let dead_letters = format!(
        "/dead-letters?{}",
        layout::query(&[("provider", &status.provider)])
    );
    Ok(layout::page(
        &session,
        &format!("Provider {}", status.provider),
        html! {
            (layout::facts(&[
                ("Delivery", state(&status)),
                ("Breaker", html! {
                    (breaker(&status))
                    @if status.breaker == BreakerState::Open as i32 {
                        " · next probe " (layout::when(status.breaker_retry_at.as_ref()))
                    }
                }),
                ("Rate limit", limit),
                ("Provider asked to wait until", layout::when(status.provider_pause_until.as_ref())),
                ("Backlog", html! { (status.backlog) }),
                ("In flight", html! { (status.in_flight) " (" (status.sending) " being sent)" }),
                ("Dead letters", html! { a href=(dead_letters) { (status.dead_letters) } }),
                ("Last success", layout::when(status.last_success.as_ref())),
                ("Last failure", html! {
                    (layout::when(status.last_failure.as_ref()))
                    @if !status.last_failure_reason.is_empty() { " · " (status.last_failure_reason) }
                }),
            ]))
            @if layout::can_operate(&session) {
                (actions(&session, &status))
            }
        },
    ))
}

fn actions(session: &Session, status: &ProviderStatus) -> Markup {
    let action = |what: &str| format!("/providers/{}/{what}", status.provider);
    html! {
        section.actions aria-labelledby="act" {
            h2 #act { "Actions" }
            @if status.paused {
                form method="post" action=(action("resume")) {
                    (layout::csrf(session))
                    button type="submit" { "Resume" }
                }
            } @else {
                form method="post" action=(action("pause")) {
                    (layout::csrf(session))
                    label for="reason" { "Reason for the pause" }
                    input #reason type="text" name="reason" required maxlength="500";
                    button type="submit" { "Pause" }
                }
            }
            @if status.breaker != BreakerState::Closed as i32 {
                form method="post" action=(action("reset-breaker")) {
                    (layout::csrf(session))
                    button type="submit" { "Reset the breaker" }
                }
            }
        }
    }
}

/// Whether a process delivers, and whether an operator paused it.
pub fn state(status: &ProviderStatus) -> Markup {
    html! {
        @if status.paused {
            span.bad { "paused" }
            " by " (status.paused_by) " · " (status.paused_reason)
        } @else if status.active {
            span.good { "delivering" } " on " (status.instance)
        } @else {
            span.bad { "no delivery process" }
        }
    }
}

/// The breaker's state in words.
pub fn breaker(status: &ProviderStatus) -> Markup {
    match BreakerState::try_from(status.breaker).unwrap_or(BreakerState::Unspecified) {
        BreakerState::Closed => html! { span.good { "closed" } },
        BreakerState::Open => html! { span.bad { "open" } },
        BreakerState::HalfOpen => html! { span.bad { "half open" } },
        BreakerState::Unspecified => html! { span.none { "unknown" } },
    }
}

/// A pause form.
#[derive(Deserialize)]
pub struct PauseForm {
    reason: String,
}

/// `POST /providers/{name}/pause`.
pub async fn pause(
    State(console): State<Shared>,
    Extension(session): Extension<Session>,
    Path(provider): Path<String>,
    Form(form): Form<PauseForm>,
) -> Result<Redirect, Failure> {
    if form.reason.trim().is_empty() {
        return Err(Failure::Invalid(
            "a pause needs a reason: say why, for whoever looks next".into(),
        ));
    }
    let pause = PauseProviderRequest {
        provider: provider.clone(),
        reason: form.reason,
    };
    console
        .apis
        .providers
        .pause_provider(request(&session, pause))
        .await?;
    Ok(back_to(&provider))
}

/// `POST /providers/{name}/resume`.
pub async fn resume(
    State(console): State<Shared>,
    Extension(session): Extension<Session>,
    Path(provider): Path<String>,
) -> Result<Redirect, Failure> {
    let resume = ResumeProviderRequest {
        provider: provider.clone(),
    };
    console
        .apis
        .providers
        .resume_provider(request(&session, resume))
        .await?;
    Ok(back_to(&provider))
}

/// `POST /providers/{name}/reset-breaker`.
pub async fn reset_breaker(
    State(console): State<Shared>,
    Extension(session): Extension<Session>,
    Path(provider): Path<String>,
) -> Result<Redirect, Failure> {
    let reset = ResetBreakerRequest {
        provider: provider.clone(),
    };
    console
        .apis
        .providers
        .reset_breaker(request(&session, reset))
        .await?;
    Ok(back_to(&provider))
}

fn back_to(provider: &str) -> Redirect {
    Redirect::to(&format!("/providers/{provider}"))
}
