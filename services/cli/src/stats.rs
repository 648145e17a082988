//! `syctl stats`: streams, consumers and dead letters at a glance.

use serde_json::json;
use switchyard_proto::{GetStatsRequest, stats_service_client::StatsServiceClient};

use crate::{
    connect::Connection,
    exit::Failure,
    output::{Output, Text, rfc3339},
};

pub async fn run(connection: Connection) -> Result<Output, Failure> {
    let stats = StatsServiceClient::new(connection)
        .get_stats(GetStatsRequest {})
        .await?
        .into_inner();
    let value = json!({
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
    });

    let mut text = Text::default();
    text.line(format_args!(
        "{:<10} {:>10} {:>12}  {:<20}  LAST",
        "STREAM", "MESSAGES", "BYTES", "FIRST"
    ));
    for stream in &stats.streams {
        text.line(format_args!(
            "{:<10} {:>10} {:>12}  {:<20}  {}",
            stream.name,
            stream.messages,
            stream.bytes,
            rfc3339(stream.first.as_ref()).unwrap_or_else(|| "-".into()),
            rfc3339(stream.last.as_ref()).unwrap_or_else(|| "-".into())
        ));
    }
    text.blank();
    text.line(format_args!(
        "{:<10} {:<28} {:>9} {:>11} {:>11}",
        "STREAM", "CONSUMER", "PENDING", "ACK PENDING", "REDELIVERED"
    ));
    for consumer in &stats.consumers {
        text.line(format_args!(
            "{:<10} {:<28} {:>9} {:>11} {:>11}",
            consumer.stream,
            consumer.name,
            consumer.pending,
            consumer.ack_pending,
            consumer.redelivered
        ));
    }
    if !stats.dead_letters.is_empty() {
        text.blank();
        let subjects: std::collections::BTreeMap<_, _> = stats.dead_letters.iter().collect();
        for (subject, count) in subjects {
            text.line(format_args!("{subject:<28} {count:>9} dead letters"));
        }
    }
    text.blank();
    text.line(format_args!("catalog revision {}", stats.catalog_revision));
    Ok(Output::with_table(value, text))
}
