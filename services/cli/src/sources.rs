//! `syctl sources status`: how ingest reads the sources it reads itself.

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
    /// Whether a replica reads it, rows waiting, last read, last error: of one source,
    /// or of every outbox source.
    Status {
        /// The source; every source ingest reads itself when omitted.
        source: Option<String>,
    },
}

pub async fn run(command: SourcesCommand, connection: Connection) -> Result<Output, Failure> {
    let mut client = SourceServiceClient::new(connection);
    let SourcesCommand::Status { source } = command;
    let statuses = match source {
        None => {
            client
                .list_source_status(ListSourceStatusRequest { all: false })
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
        "{:<20} {:<8} {:<8} {:>12} {:>12}  {:<20}  LAST ERROR",
        "SOURCE", "KIND", "ACTIVE", "ROWS WAITING", "BYTES BEHIND", "LAST READ"
    ));
    for status in &statuses {
        text.line(format_args!(
            "{:<20} {:<8} {:<8} {:>12}  {:<20}  {}",
            status.source,
            if status.kind.is_empty() {
                "-"
            } else {
                &status.kind
            },
            if status.active { "yes" } else { "no" },
            status.rows_waiting,
            rfc3339(status.last_read.as_ref()).unwrap_or_else(|| "-".into()),
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
    })
}
