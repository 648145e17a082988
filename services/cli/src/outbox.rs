//! `syctl outbox`: the application side of an outbox source (offline).
//!
//! The table-name rule and the NOTIFY channel are the ones ingest uses
//! (`switchyard_core::catalog`); the tests check that the two agree.

use clap::Subcommand;
use serde_json::json;

use crate::{
    exit::{Exit, Failure},
    output::{Output, Text},
};

#[derive(Subcommand)]
pub enum OutboxCommand {
    /// Print the DDL of an outbox table and the trigger that wakes ingest at once;
    /// pipe it to psql.
    Schema {
        /// The table, optionally schema-qualified (the source's `outbox.table`).
        #[arg(long, default_value = "switchyard_outbox")]
        table: String,
    },
}

pub fn run(command: OutboxCommand) -> Result<Output, Failure> {
    let OutboxCommand::Schema { table } = command;
    if !is_table_name(&table) {
        return Err(Failure::new(
            Exit::Usage,
            format!(
                "--table {table:?} is not a table name: use lower-case letters, digits and _ (at most 63), optionally schema.table"
            ),
        ));
    }
    let ddl = schema(&table);
    let mut text = Text::default();
    text.line(ddl.trim_end());
    Ok(Output::with_table(
        json!({"table": table, "ddl": ddl}),
        text,
    ))
}

/// `table` or `schema.table`, each part a lower-case SQL identifier of at most 63 bytes.
fn is_table_name(name: &str) -> bool {
    let parts: Vec<&str> = name.split('.').collect();
    parts.len() <= 2
        && parts.iter().all(|part| {
            (1..=63).contains(&part.len())
                && part.starts_with(|c: char| c.is_ascii_lowercase() || c == '_')
                && part
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        })
}

/// The table's DDL, with the trigger that wakes the reader at once.
fn schema(table: &str) -> String {
    let quoted = table
        .split('.')
        .map(|part| format!("\"{part}\""))
        .collect::<Vec<_>>()
        .join(".");
    let channel = format!("switchyard_outbox_{}", table.replace('.', "_"));
    format!(
        "-- The outbox of the Switchyard source that reads {table}. Insert into it in the
-- same transaction as the change the event describes; Switchyard publishes each
-- committed row to NATS JetStream and then deletes it.
CREATE TABLE IF NOT EXISTS {quoted} (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    event_type      text        NOT NULL,
    idempotency_key text,
    payload         jsonb       NOT NULL,
    headers         jsonb,
    created_at      timestamptz NOT NULL DEFAULT now()
);

-- Wakes the reader as soon as a transaction that inserted rows commits (it also reads
-- every poll_interval, so events arrive without this, only later).
CREATE OR REPLACE FUNCTION \"{channel}_notify\"() RETURNS trigger
    LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('{channel}', '');
    RETURN NULL;
END $$;

DROP TRIGGER IF EXISTS switchyard_outbox_notify ON {quoted};
CREATE TRIGGER switchyard_outbox_notify
    AFTER INSERT ON {quoted}
    FOR EACH STATEMENT EXECUTE FUNCTION \"{channel}_notify\"();
"
    )
}

#[cfg(test)]
mod tests {
    use switchyard_core::catalog;

    use super::*;

    #[test]
    fn table_names_and_channels_agree_with_ingest() {
        for name in [
            "switchyard_outbox",
            "app.orders_outbox",
            "_x1",
            "",
            "Outbox",
            "a.b.c",
            "outbox; drop table x",
            "1outbox",
            ".x",
            &"a".repeat(63),
            &"a".repeat(64),
        ] {
            assert_eq!(
                is_table_name(name),
                catalog::is_table_name(name),
                "{name:?}"
            );
        }
        let ddl = schema("app.orders_outbox");
        assert!(ddl.contains(&format!(
            "CREATE TABLE IF NOT EXISTS {}",
            catalog::quote_table("app.orders_outbox")
        )));
        let channel = catalog::channel_of("app.orders_outbox");
        assert!(
            ddl.contains(&format!("pg_notify('{channel}', '')")),
            "{ddl}"
        );
        assert_eq!(catalog::DEFAULT_OUTBOX_TABLE, "switchyard_outbox");
    }
}
