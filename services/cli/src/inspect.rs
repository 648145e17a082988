//! `syctl describe`, `syctl events show` and `syctl stats`: reading, not changing.

use serde_json::{Value, json};
use switchyard_proto::{
    convert::struct_to_json,
    {
        GetEventRequest, GetProviderStatusRequest, GetResourceRequest, GetStatsRequest,
        ListResourcesRequest, ResourceKind, catalog_service_client::CatalogServiceClient,
        event_service_client::EventServiceClient, provider_service_client::ProviderServiceClient,
        stats_service_client::StatsServiceClient,
    },
};

use crate::{Connection, Failure, Format, Kind, kind_name, print_value, rfc3339};

/// A resource, what refers to it, and for a provider its status.
pub async fn describe(
    connection: Connection,
    kind: Kind,
    name: String,
    format: Format,
) -> Result<(), Failure> {
    let kind = ResourceKind::from(kind);
    let mut catalog = CatalogServiceClient::new(connection.clone());
    let resource = catalog
        .get_resource(GetResourceRequest {
            kind: kind as i32,
            name: name.clone(),
        })
        .await?
        .into_inner();
    let spec = resource
        .spec
        .as_ref()
        .map(struct_to_json)
        .unwrap_or_default();
    let routes = catalog
        .list_resources(ListResourcesRequest {
            kind: ResourceKind::Route as i32,
        })
        .await?
        .into_inner()
        .resources;
    let field = match kind {
        ResourceKind::Source => "source",
        ResourceKind::Provider => "provider",
        ResourceKind::Mapping => "mapping",
        _ => "",
    };
    let referred_by: Vec<String> = routes
        .iter()
        .filter(|route| {
            !field.is_empty()
                && route.spec.as_ref().map(struct_to_json).unwrap_or_default()[field]
                    == name.as_str()
        })
        .map(|route| route.name.clone())
        .collect();
    let status = match kind {
        ResourceKind::Provider => Some(crate::providers::to_json(
            &ProviderServiceClient::new(connection)
                .get_provider_status(GetProviderStatusRequest {
                    provider: name.clone(),
                })
                .await?
                .into_inner(),
        )),
        _ => None,
    };
    let described = json!({
        "kind": kind_name(kind),
        "name": name,
        "spec": spec,
        "routes": referred_by,
        "status": status,
    });
    if format != Format::Table {
        print_value(format, &described);
        return Ok(());
    }
    println!("{} {}", kind_name(kind), name);
    println!();
    print!(
        "{}",
        indent(&serde_yaml_ng::to_string(&spec).unwrap_or_default())
    );
    if !field.is_empty() {
        println!();
        match referred_by.as_slice() {
            [] => println!("used by no route"),
            routes => println!("used by routes: {}", routes.join(", ")),
        }
    }
    if let Some(status) = status {
        println!();
        println!("status:");
        let mut yaml = status.clone();
        if let Some(object) = yaml.as_object_mut() {
            object.retain(|_, value| !value.is_null() && value != "");
        }
        print!(
            "{}",
            indent(&serde_yaml_ng::to_string(&yaml).unwrap_or_default())
        );
    }
    Ok(())
}

fn indent(text: &str) -> String {
    text.lines().map(|line| format!("  {line}\n")).collect()
}

/// One event: the ingest record and, per route, where it went.
pub async fn show_event(
    connection: Connection,
    event_id: String,
    format: Format,
) -> Result<(), Failure> {
    let event = EventServiceClient::new(connection)
        .get_event(GetEventRequest { event_id })
        .await?
        .into_inner();
    let body = serde_json::from_slice::<Value>(&event.body)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&event.body).into_owned()));
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
                })).collect::<Vec<_>>(),
            })
        })
        .collect();
    if format != Format::Table {
        let mut headers: Vec<_> = event.headers.iter().collect();
        headers.sort();
        print_value(
            format,
            &json!({
                "event_id": event.event_id,
                "source": event.source,
                "event_type": event.event_type,
                "ingest_sequence": event.ingest_sequence,
                "received_at": rfc3339(event.received_at.as_ref()),
                "headers": headers.into_iter().collect::<std::collections::BTreeMap<_, _>>(),
                "body": body,
                "routes": routes,
                "complete": event.complete,
            }),
        );
        return Ok(());
    }
    println!("event {}", event.event_id);
    println!(
        "  from {} ({}), INGEST #{} at {}",
        event.source,
        event.event_type,
        event.ingest_sequence,
        rfc3339(event.received_at.as_ref()).unwrap_or_default()
    );
    for route in &event.routes {
        println!();
        println!(
            "  route {} → {} via {}: {}",
            route.route, route.provider, route.mapping, route.state
        );
        for attempt in &route.attempts {
            let status = if attempt.status == 0 {
                "-".to_owned()
            } else {
                attempt.status.to_string()
            };
            println!(
                "    #{:<2} {}  {:<9} {:>4}  {:>7.1} ms  {}",
                attempt.attempt,
                rfc3339(attempt.at.as_ref()).unwrap_or_default(),
                attempt.category,
                status,
                attempt.latency_ms,
                attempt.reason
            );
        }
        for sequence in &route.dead_letters {
            println!("    dead letter #{sequence} (syctl dlq show {sequence})");
        }
    }
    if !event.complete {
        println!();
        println!("  (a scan stopped at its time limit; attempts or dead letters may be missing)");
    }
    Ok(())
}

/// Streams, consumers and dead letters at a glance.
pub async fn stats(connection: Connection, format: Format) -> Result<(), Failure> {
    let stats = StatsServiceClient::new(connection)
        .get_stats(GetStatsRequest {})
        .await?
        .into_inner();
    if format != Format::Table {
        print_value(
            format,
            &json!({
                "catalog_revision": stats.catalog_revision,
                "streams": stats.streams.iter().map(|s| json!({
                    "name": s.name, "messages": s.messages, "bytes": s.bytes,
                    "first": rfc3339(s.first.as_ref()), "last": rfc3339(s.last.as_ref()),
                })).collect::<Vec<_>>(),
                "consumers": stats.consumers.iter().map(|c| json!({
                    "stream": c.stream, "name": c.name, "pending": c.pending,
                    "ack_pending": c.ack_pending, "redelivered": c.redelivered,
                })).collect::<Vec<_>>(),
                "dead_letters": stats.dead_letters,
            }),
        );
        return Ok(());
    }
    println!(
        "{:<10} {:>10} {:>12}  {:<20}  LAST",
        "STREAM", "MESSAGES", "BYTES", "FIRST"
    );
    for stream in &stats.streams {
        println!(
            "{:<10} {:>10} {:>12}  {:<20}  {}",
            stream.name,
            stream.messages,
            stream.bytes,
            rfc3339(stream.first.as_ref()).unwrap_or_else(|| "-".into()),
            rfc3339(stream.last.as_ref()).unwrap_or_else(|| "-".into())
        );
    }
    println!();
    println!(
        "{:<10} {:<28} {:>9} {:>11} {:>11}",
        "STREAM", "CONSUMER", "PENDING", "ACK PENDING", "REDELIVERED"
    );
    for consumer in &stats.consumers {
        println!(
            "{:<10} {:<28} {:>9} {:>11} {:>11}",
            consumer.stream,
            consumer.name,
            consumer.pending,
            consumer.ack_pending,
            consumer.redelivered
        );
    }
    if !stats.dead_letters.is_empty() {
        println!();
        let mut subjects: Vec<_> = stats.dead_letters.iter().collect();
        subjects.sort();
        for (subject, count) in subjects {
            println!("{subject:<28} {count:>9} dead letters");
        }
    }
    println!();
    println!("catalog revision {}", stats.catalog_revision);
    Ok(())
}
