//! The overview: how delivery to every provider is doing, and what every source sent
//! lately.

use axum::{Extension, extract::State};
use maud::{Markup, html};

use super::{Failure, Shared, layout, providers, request, session::Session};
use crate::proto::{
    ListProviderStatusRequest, ListSourceStatusRequest, ProviderStatus, SourceStatus,
    provider_service_server::ProviderService, source_service_server::SourceService,
};

/// Minutes the rates on the overview are taken over.
const RATE_MINUTES: usize = 5;

/// `GET /`.
pub async fn page(
    State(console): State<Shared>,
    Extension(session): Extension<Session>,
) -> Result<Markup, Failure> {
    let providers = console
        .apis
        .providers
        .list_provider_status(request(&session, ListProviderStatusRequest {}))
        .await?
        .into_inner()
        .providers;
    let sources = console
        .apis
        .sources
        .list_source_status(request(&session, ListSourceStatusRequest { all: true }))
        .await?
        .into_inner()
        .sources;
    Ok(layout::page(
        &session,
        "Overview",
        html! {
            section aria-labelledby="providers" {
                h2 #providers { "Providers" }
                @if providers.is_empty() {
                    p.none { "The catalog has no providers." }
                } @else {
                    (provider_table(&providers))
                }
            }
            section aria-labelledby="sources" {
                h2 #sources { "Sources" }
                @if sources.is_empty() {
                    p.none { "The catalog has no sources." }
                } @else {
                    (source_table(&sources))
                }
            }
        },
    ))
}

fn provider_table(providers: &[ProviderStatus]) -> Markup {
    html! {
        table {
            thead {
                tr {
                    th scope="col" { "Provider" }
                    th scope="col" { "Delivery" }
                    th scope="col" { "Breaker" }
                    th scope="col" { "Backlog" }
                    th scope="col" { "In flight" }
                    th scope="col" { "Dead letters" }
                    th scope="col" title=(format!("over the last {RATE_MINUTES} minutes")) { "Delivered / min" }
                    th scope="col" title=(format!("failed attempts of all attempts, over the last {RATE_MINUTES} minutes")) { "Errors" }
                    th scope="col" { "Last success" }
                    th scope="col" { "Last failure" }
                }
            }
            tbody {
                @for status in providers {
                    @let (delivered, failed) = recent(status);
                    tr {
                        th scope="row" { a href=(format!("/providers/{}", status.provider)) { (status.provider) } }
                        td { (providers::state(status)) }
                        td { (providers::breaker(status)) }
                        td.number { (status.backlog) }
                        td.number { (status.in_flight) }
                        td.number {
                            @if status.dead_letters > 0 {
                                a href=(format!("/dead-letters?{}", layout::query(&[("provider", &status.provider)]))) { (status.dead_letters) }
                            } @else { "0" }
                        }
                        td.number { (per_minute(delivered)) }
                        td.number { (error_ratio(delivered, failed)) }
                        td { (layout::when(status.last_success.as_ref())) }
                        td {
                            (layout::when(status.last_failure.as_ref()))
                            @if !status.last_failure_reason.is_empty() {
                                br; span.reason { (status.last_failure_reason) }
                            }
                        }
                    }
                }
            }
        }
    }
}

/// Delivered and failed attempts over the last [`RATE_MINUTES`] whole minutes.
fn recent(status: &ProviderStatus) -> (u64, u64) {
    let whole = status.recent.len().saturating_sub(1);
    status.recent[whole.saturating_sub(RATE_MINUTES)..whole]
        .iter()
        .fold((0, 0), |(d, f), count| {
            (d + count.delivered, f + count.failed)
        })
}

fn per_minute(count: u64) -> String {
    format!("{:.1}", count as f64 / RATE_MINUTES as f64)
}

fn error_ratio(delivered: u64, failed: u64) -> String {
    match delivered + failed {
        0 => "–".into(),
        all => format!("{:.1}%", 100.0 * failed as f64 / all as f64),
    }
}

fn source_table(sources: &[SourceStatus]) -> Markup {
    html! {
        table {
            thead {
                tr {
                    th scope="col" { "Source" }
                    th scope="col" { "Kind" }
                    th scope="col" { "Last event" }
                    th scope="col" title="over the last five minutes" { "Events / min" }
                    th scope="col" { "Reader" }
                }
            }
            tbody {
                @for source in sources {
                    tr {
                        th scope="row" { (source.source) }
                        td { @if source.kind.is_empty() { "sends" } @else { (source.kind) } }
                        td { (layout::when(source.last_event.as_ref())) }
                        td.number { (per_minute(source.recent_events)) }
                        td {
                            @if source.kind.is_empty() {
                                span.none { "–" }
                            } @else if !source.last_error.is_empty() {
                                span.bad { (source.last_error) }
                            } @else if source.active {
                                "reading on " (source.instance)
                            } @else {
                                span.bad { "no replica reading" }
                            }
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::MinuteCount;

    #[test]
    fn rates_leave_out_the_minute_under_way() {
        let count = |delivered, failed| MinuteCount {
            minute: None,
            delivered,
            failed,
        };
        let mut status = ProviderStatus::default();
        assert_eq!(recent(&status), (0, 0));
        status.recent = (0..10).map(|i| count(i, 1)).collect();
        // Minutes 4..=8; minute 9 is under way.
        assert_eq!(recent(&status), (4 + 5 + 6 + 7 + 8, 5));
        assert_eq!(per_minute(30), "6.0");
        assert_eq!(error_ratio(0, 0), "–");
        assert_eq!(error_ratio(3, 1), "25.0%");
    }
}
