//! The overview: how delivery to every provider is doing, and what every source sent
//! lately.

use axum::{Extension, extract::State};
use maud::{Markup, html};

use super::{Failure, Shared, layout, providers, request, session::Session};
use crate::proto::{
    ListSourceStatusRequest, ProviderStatus, SourceStatus, source_service_server::SourceService,
};

/// Minutes the rates on the overview are taken over.
const RATE_MINUTES: usize = 5;

/// `GET /`.
pub async fn page(
    State(console): State<Shared>,
    Extension(session): Extension<Session>,
) -> Result<Markup, Failure> {
    let providers = providers::all(&console, &session).await?;
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

/// Every provider's delivery at a glance, each linking to its page.
pub fn provider_table(providers: &[ProviderStatus]) -> Markup {
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
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
                    th scope="col" title=(format!("failed attempts of all attempts, over the last {RATE_MINUTES} minutes")) { "Failed attempts" }
                    th scope="col" { "Last success" }
                    th scope="col" { "Last failure" }
                }
            }
            tbody {
                @for status in providers {
                    @let (delivered, failed) = rates(status, now);
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

/// Delivered and failed attempts per minute over the last [`RATE_MINUTES`]: the
/// whole minutes before this one and the part of this one gone by.
fn rates(status: &ProviderStatus, now: i64) -> (f64, f64) {
    let Some(current) = status.recent.last() else {
        return (0.0, 0.0);
    };
    let taken = &status.recent[status.recent.len().saturating_sub(RATE_MINUTES)..];
    let started = current.minute.as_ref().map_or(now, |minute| minute.seconds);
    let seconds = 60.0 * (taken.len() - 1) as f64 + (now - started).clamp(1, 60) as f64;
    let (delivered, failed) = taken.iter().fold((0, 0), |(d, f), count| {
        (d + count.delivered, f + count.failed)
    });
    let per_minute = |count: u64| 60.0 * count as f64 / seconds;
    (per_minute(delivered), per_minute(failed))
}

fn per_minute(rate: f64) -> String {
    format!("{rate:.1}")
}

fn error_ratio(delivered: f64, failed: f64) -> String {
    if delivered + failed == 0.0 {
        return "–".into();
    }
    format!("{:.1}%", 100.0 * failed / (delivered + failed))
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
                        td.number { (per_minute(source.recent_events as f64 / RATE_MINUTES as f64)) }
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
    fn rates_count_the_minutes_gone_by() {
        let count = |minute: i64, delivered, failed| MinuteCount {
            minute: Some(prost_types::Timestamp {
                seconds: minute,
                nanos: 0,
            }),
            delivered,
            failed,
        };
        let mut status = ProviderStatus::default();
        assert_eq!(rates(&status, 0), (0.0, 0.0));
        let start = 1_800_000_000;
        status.recent = (0..10).map(|i| count(start + 60 * i, 12, 1)).collect();
        // The last five entries: four whole minutes and 30 s of the one under way.
        let (delivered, failed) = rates(&status, start + 9 * 60 + 30);
        assert!(
            (delivered - 60.0 * 60.0 / 270.0).abs() < 1e-9,
            "{delivered}"
        );
        assert!((failed - 5.0 * 60.0 / 270.0).abs() < 1e-9, "{failed}");
        // Right after the process started: one minute, one second in.
        status.recent = vec![count(start, 3, 0)];
        assert_eq!(rates(&status, start), (180.0, 0.0));
        assert_eq!(per_minute(6.04), "6.0");
        assert_eq!(error_ratio(0.0, 0.0), "–");
        assert_eq!(error_ratio(3.0, 1.0), "25.0%");
    }
}
