//! `syctl sources status`: how ingest reads the sources it reads itself, and with
//! `--all` what every source sent lately.

use clap::Subcommand;
use serde_json::{Value, json};
use switchyard_proto::{
    GetSourceStatusRequest, ListSourceStatusRequest, SourceStatus,
    source_service_client::SourceServiceClient,
};

use crate::{
    connect::Connection,
    exit::Failure,
    output::{Output, Text, rfc3339},
};

#[derive(Subcommand)]
pub enum SourcesCommand {
    /// Whether a replica reads it, rows waiting, last read, last error, last event and
    /// events in the last five minutes: of one source, or of every outbox and CDC source.
    Status {
        /// The source; every source ingest reads itself when omitted.
        source: Option<String>,
        /// Every source, also those that send their events themselves.
        #[arg(long, conflicts_with = "source")]
        all: bool,
    },
}

pub async fn run(command: SourcesCommand, connection: Connection) -> Result<Output, Failure> {
    let mut client = SourceServiceClient::new(connection);
    let SourcesCommand::Status { source, all } = command;
    let statuses = match source {
        None => {
            client
                .list_source_status(ListSourceStatusRequest { all })
                .await?
                .into_inner()
                .sources
        }
        Some(source) => vec![
            client
                .get_source_status(GetSourceStatusRequest { source })
                .await?
                .into_inner(),
        ],
    };
    let mut text = Text::default();
    text.line(format_args!(
        "{:<20} {:<8} {:<8} {:>12} {:>12}  {:<20}  {:<20}  {:>9}  LAST ERROR",
        "SOURCE",
        "KIND",
        "ACTIVE",
        "ROWS WAITING",
        "BYTES BEHIND",
        "LAST READ",
        "LAST EVENT",
        "LAST 5 MIN"
    ));
    for status in &statuses {
        let sends = status.kind.is_empty();
        text.line(format_args!(
            "{:<20} {:<8} {:<8} {:>12} {:>12}  {:<20}  {:<20}  {:>9}  {}",
            status.source,
            if sends { "-" } else { &status.kind },
            if sends {
                "-"
            } else if status.active {
                "yes"
            } else {
                "no"
            },
            status.rows_waiting,
            status.bytes_behind,
            rfc3339(status.last_read.as_ref()).unwrap_or_else(|| "-".into()),
            rfc3339(status.last_event.as_ref()).unwrap_or_else(|| "-".into()),
            status.recent_events,
            if status.last_error.is_empty() {
                "-"
            } else {
                &status.last_error
            },
        ));
    }
    Ok(Output::with_table(
        Value::Array(statuses.iter().map(to_json).collect()),
        text,
    ))
}

fn to_json(status: &SourceStatus) -> Value {
    json!({
        "source": status.source,
        "kind": status.kind,
        "active": status.active,
        "instance": status.instance,
        "rows_waiting": status.rows_waiting,
        "bytes_behind": status.bytes_behind,
        "last_read": rfc3339(status.last_read.as_ref()),
        "last_error": status.last_error,
        "last_event": rfc3339(status.last_event.as_ref()),
        "recent_events": status.recent_events,
    })
}
