//! `syctl events show`: one event, the ingest record and where each route took it.

use clap::Subcommand;
use serde_json::{Value, json};
use switchyard_proto::{GetEventRequest, event_service_client::EventServiceClient};

use crate::{
    connect::Connection,
    exit::Failure,
    output::{Output, Text, body, rfc3339},
};

#[derive(Subcommand)]
pub enum EventsCommand {
    /// One event by id.
    Show {
        /// The event id (`Switchyard-Event-Id`, or the id ingest answered with).
        event_id: String,
    },
}

pub async fn run(command: EventsCommand, connection: Connection) -> Result<Output, Failure> {
    let EventsCommand::Show { event_id } = command;
    let event = EventServiceClient::new(connection)
        .get_event(GetEventRequest { event_id })
        .await?
        .into_inner();
    let routes: Vec<Value> = event
        .routes
        .iter()
        .map(|route| {
            json!({
                "route": route.route,
                "provider": route.provider,
                "mapping": route.mapping,
                "state": route.state,
                "idempotency_key": route.idempotency_key,
                "dead_letters": route.dead_letters,
                "attempts": route.attempts.iter().map(|a| json!({
                    "attempt": a.attempt,
                    "at": rfc3339(a.at.as_ref()),
                    "status": (a.status != 0).then_some(a.status),
                    "latency_ms": a.latency_ms,
                    "category": a.category,
                    "reason": a.reason,
                    "verdict": (!a.verdict.is_empty()).then_some(&a.verdict),
                    "explanation": (!a.explanation.is_empty()).then_some(&a.explanation),
                })).collect::<Vec<_>>(),
            })
        })
        .collect();
    let headers: std::collections::BTreeMap<_, _> = event.headers.iter().collect();
    let value = json!({
        "event_id": event.event_id,
        "source": event.source,
        "event_type": event.event_type,
        "ingest_sequence": event.ingest_sequence,
        "received_at": rfc3339(event.received_at.as_ref()),
        "headers": headers,
        "body": body(&event.body),
        "routes": routes,
        "complete": event.complete,
    });

    let mut text = Text::default();
    text.line(format_args!("event {}", event.event_id));
    text.line(format_args!(
        "  from {} ({}), INGEST #{} at {}",
        event.source,
        event.event_type,
        event.ingest_sequence,
        rfc3339(event.received_at.as_ref()).unwrap_or_default()
    ));
    for route in &event.routes {
        text.blank();
        text.line(format_args!(
            "  route {} → {} via {}: {}",
            route.route, route.provider, route.mapping, route.state
        ));
        for attempt in &route.attempts {
            let status = if attempt.status == 0 {
                "-".to_owned()
            } else {
                attempt.status.to_string()
            };
            text.line(format_args!(
                "    #{:<2} {}  {:<9} {:>4}  {:>7.1} ms  {}",
                attempt.attempt,
                rfc3339(attempt.at.as_ref()).unwrap_or_default(),
                attempt.category,
                status,
                attempt.latency_ms,
                attempt.reason
            ));
            if !attempt.verdict.is_empty() {
                text.line(format_args!(
                    "        {}: {}",
                    attempt.verdict, attempt.explanation
                ));
            }
        }
        for sequence in &route.dead_letters {
            text.line(format_args!(
                "    dead letter #{sequence} (syctl dlq show {sequence})"
            ));
        }
    }
    if !event.complete {
        text.blank();
        text.line("  (a scan stopped at its time limit; attempts or dead letters may be missing)");
    }
    Ok(Output::with_table(value, text))
}
