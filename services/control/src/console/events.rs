//! One event by id: what ingest stored, and for each route the mapping, where the
//! event is now and every attempt, with a link to its trace.

use axum::{
    Extension,
    extract::{Query, State},
};
use maud::{Markup, html};
use serde::Deserialize;

use super::{Failure, Shared, layout, request, session::Session};
use crate::proto::{Event, GetEventRequest, RouteLineage, event_service_server::EventService};

/// The lookup form's query.
#[derive(Deserialize)]
pub struct Lookup {
    #[serde(default)]
    id: String,
}

/// `GET /events?id=…`: the lookup form, and the event when an id is given.
pub async fn page(
    State(console): State<Shared>,
    Extension(session): Extension<Session>,
    Query(lookup): Query<Lookup>,
) -> Result<Markup, Failure> {
    let id = lookup.id.trim();
    let form = html! {
        form.lookup method="get" action="/events" role="search" {
            label for="id" { "Event id" }
            input #id type="search" name="id" value=(id) required autocomplete="off" spellcheck="false";
            button type="submit" { "Look up" }
        }
    };
    if id.is_empty() {
        return Ok(layout::page(&session, "Events", form));
    }
    let event = console
        .apis
        .events
        .get_event(request(
            &session,
            GetEventRequest {
                event_id: id.to_owned(),
            },
        ))
        .await?
        .into_inner();
    let trace = console
        .settings
        .jaeger_url
        .as_deref()
        .zip(trace_id(&event))
        .map(|(jaeger, trace)| format!("{}/trace/{trace}", jaeger.trim_end_matches('/')));
    Ok(layout::page(
        &session,
        &format!("Event {}", event.event_id),
        html! {
            (form)
            @if !event.complete {
                p.problem role="status" { "A scan stopped at its time limit: attempts or dead letters may be missing." }
            }
            (layout::facts(&[
                ("Source", html! { (event.source) }),
                ("Type", html! { (event.event_type) }),
                ("Received", layout::when(event.received_at.as_ref())),
                ("INGEST sequence", html! { (event.ingest_sequence) }),
                ("Trace", match &trace {
                    Some(url) => html! { a href=(url) rel="noreferrer" { "open in Jaeger" } },
                    None => html! { span.none { "–" } },
                }),
            ]))
            section aria-labelledby="routes" {
                h2 #routes { "Routes" }
                @if event.routes.is_empty() {
                    p.none { "No route took this event." }
                }
                @for route in &event.routes {
                    (lineage(route))
                }
            }
            section aria-labelledby="record" {
                h2 #record { "As ingest stored it" }
                (layout::body(&event.body))
                details {
                    summary { "Headers (" (event.headers.len()) ")" }
                    (layout::headers(&event.headers))
                }
            }
        },
    ))
}

fn lineage(route: &RouteLineage) -> Markup {
    html! {
        article.route {
            h3 { "Route " (route.route) " → " (route.provider) }
            (layout::facts(&[
                ("Mapping", if route.mapping.is_empty() { html! { span.none { "–" } } } else { html! { code { (route.mapping) } } }),
                ("State", html! { (route.state) }),
                ("Idempotency key", if route.idempotency_key.is_empty() { html! { span.none { "–" } } } else { html! { code { (route.idempotency_key) } } }),
                ("Dead letters", html! {
                    @if route.dead_letters.is_empty() { span.none { "none" } }
                    @for sequence in &route.dead_letters {
                        a href=(format!("/dead-letters/{sequence}")) { "#" (sequence) } " "
                    }
                }),
            ]))
            @if !route.attempts.is_empty() {
                table {
                    thead {
                        tr {
                            th scope="col" { "Attempt" }
                            th scope="col" { "At" }
                            th scope="col" { "Status" }
                            th scope="col" { "Latency" }
                            th scope="col" { "Outcome" }
                            th scope="col" { "Reason" }
                        }
                    }
                    tbody {
                        @for attempt in &route.attempts {
                            tr {
                                td.number { (attempt.attempt) }
                                td { (layout::when(attempt.at.as_ref())) }
                                td.number { @if attempt.status == 0 { "no answer" } @else { (attempt.status) } }
                                td.number { (format!("{:.1} ms", attempt.latency_ms)) }
                                td { (attempt.category) }
                                td {
                                    (attempt.reason)
                                    @if !attempt.batch.is_empty() { " (batch " code { (attempt.batch) } ")" }
                                    (layout::verdict(&attempt.verdict, &attempt.explanation))
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

/// The trace id in the stored record's `traceparent`, when it has a valid one.
fn trace_id(event: &Event) -> Option<String> {
    let parent = event.headers.get("traceparent")?;
    let trace = parent.split('-').nth(1)?;
    (trace.len() == 32 && trace.bytes().all(|b| b.is_ascii_hexdigit()) && trace != "0".repeat(32))
        .then(|| trace.to_ascii_lowercase())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_trace_comes_from_a_valid_traceparent() {
        let mut event = Event::default();
        assert_eq!(trace_id(&event), None);
        event.headers.insert(
            "traceparent".into(),
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01".into(),
        );
        assert_eq!(
            trace_id(&event).as_deref(),
            Some("4bf92f3577b34da6a3ce929d0e0e4736")
        );
        event.headers.insert(
            "traceparent".into(),
            "00-<script>-00f067aa0ba902b7-01".into(),
        );
        assert_eq!(trace_id(&event), None);
    }
}
