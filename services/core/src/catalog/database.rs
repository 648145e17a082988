//! Sources that read the company's own PostgreSQL database: a transactional outbox
//! table, or its changes by logical replication (CDC). Checked here for what can be known without the database; what needs it
//! (the DSN works, the table exists with its columns) is checked when ingest starts
//! the source.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{ClientTls, SecretName};

/// The outbox table's default name.
pub const DEFAULT_OUTBOX_TABLE: &str = "switchyard_outbox";
/// Most rows read (and published) at a time.
pub const MAX_OUTBOX_BATCH: u32 = 10_000;

/// Events an application writes into a table in the same transaction as its own
/// change; ingest publishes and then deletes them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Outbox {
    /// The libpq connection string or URL (`postgres://user@host/db?sslmode=require`),
    /// read from a secret because it may hold a password.
    pub dsn: SecretName,
    /// The table, optionally schema-qualified (`app.switchyard_outbox`).
    #[serde(default = "default_table")]
    pub table: String,
    /// Most rows read and published at a time.
    #[serde(default = "default_batch")]
    pub batch: u32,
    /// How often the table is read when no notification woke the reader.
    #[serde(default = "one_second", with = "humantime_serde")]
    pub poll_interval: Duration,
    /// Extra trust roots and a client certificate for TLS to PostgreSQL (used when the
    /// DSN's `sslmode` asks for TLS).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<ClientTls>,
}

fn default_table() -> String {
    DEFAULT_OUTBOX_TABLE.to_owned()
}

fn default_batch() -> u32 {
    500
}

fn one_second() -> Duration {
    Duration::from_secs(1)
}

/// Whether `name` is a table name Switchyard quotes safely: `table` or
/// `schema.table`, each part a lower-case SQL identifier of at most 63 bytes.
pub fn is_table_name(name: &str) -> bool {
    let parts: Vec<&str> = name.split('.').collect();
    parts.len() <= 2
        && parts.iter().all(|part| {
            !part.is_empty()
                && part.len() <= 63
                && part.starts_with(|c: char| c.is_ascii_lowercase() || c == '_')
                && part
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        })
}

/// `name` quoted for SQL: `"schema"."table"`. Only for names [`is_table_name`] accepts.
pub fn quote_table(name: &str) -> String {
    name.split('.')
        .map(|part| format!("\"{part}\""))
        .collect::<Vec<_>>()
        .join(".")
}

/// The NOTIFY channel of `table`: `switchyard_outbox_` and the name, `.` as `_`
/// (`syctl outbox schema` writes the same into its trigger; its tests check).
pub fn channel_of(table: &str) -> String {
    format!("switchyard_outbox_{}", table.replace('.', "_"))
}

impl Outbox {
    /// The NOTIFY channel the table's trigger signals.
    pub fn channel(&self) -> String {
        channel_of(&self.table)
    }

    pub(super) fn validate(&self, at: &str, fail: &mut impl FnMut(String, String)) {
        if !crate::secrets::is_valid_name(&self.dsn.secret) {
            fail(
                format!("{at}.dsn.secret"),
                format!("{:?} is not a valid secret name", self.dsn.secret),
            );
        }
        if !is_table_name(&self.table) {
            fail(
                format!("{at}.table"),
                format!(
                    "{:?} is not a table name: use lower-case letters, digits and _ (at most 63), optionally schema.table",
                    self.table
                ),
            );
        }
        if !(1..=MAX_OUTBOX_BATCH).contains(&self.batch) {
            fail(
                format!("{at}.batch"),
                format!("must be 1-{MAX_OUTBOX_BATCH}, not {}", self.batch),
            );
        }
        if self.poll_interval < Duration::from_millis(10)
            || self.poll_interval > Duration::from_secs(3600)
        {
            fail(
                format!("{at}.poll_interval"),
                "must be between 10ms and 1h".into(),
            );
        }
        if let Some(tls) = &self.tls {
            tls.validate(&format!("{at}.tls"), fail);
        }
    }
}

/// Every row change of some tables, read from a logical replication slot with the
/// `pgoutput` plugin.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Cdc {
    /// The connection string (as for [`Outbox::dsn`]); its user needs the
    /// `REPLICATION` attribute.
    pub dsn: SecretName,
    /// The publication naming the tables; created `FOR TABLE` the tables when missing.
    pub publication: String,
    /// The replication slot; created with `pgoutput` when missing. Its confirmed
    /// position advances only after the events are stored.
    pub slot: String,
    /// The tables whose changes become events, optionally schema-qualified.
    pub tables: Vec<String>,
    /// Extra trust roots and a client certificate for TLS to PostgreSQL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<ClientTls>,
}

/// Whether `name` can name a publication or a replication slot: lower-case letters,
/// digits and `_`, at most 63 (PostgreSQL's own rule for slots).
pub fn is_slot_name(name: &str) -> bool {
    (1..=63).contains(&name.len())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
}

impl Cdc {
    pub(super) fn validate(&self, at: &str, fail: &mut impl FnMut(String, String)) {
        if !crate::secrets::is_valid_name(&self.dsn.secret) {
            fail(
                format!("{at}.dsn.secret"),
                format!("{:?} is not a valid secret name", self.dsn.secret),
            );
        }
        for (field, name) in [("publication", &self.publication), ("slot", &self.slot)] {
            if !is_slot_name(name) {
                fail(
                    format!("{at}.{field}"),
                    format!("{name:?} must be lower-case letters, digits and _ (at most 63)"),
                );
            }
        }
        if self.tables.is_empty() {
            fail(format!("{at}.tables"), "needs at least one table".into());
        }
        for (i, table) in self.tables.iter().enumerate() {
            if !is_table_name(table) {
                fail(
                    format!("{at}.tables[{i}]"),
                    format!("{table:?} is not a table name (lower-case, optionally schema.table)"),
                );
            }
        }
        if let Some(tls) = &self.tls {
            tls.validate(&format!("{at}.tls"), fail);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_names_are_plain_identifiers() {
        for good in ["switchyard_outbox", "app.outbox", "_x1"] {
            assert!(is_table_name(good), "{good}");
        }
        for bad in [
            "",
            "Outbox",
            "a.b.c",
            "outbox; drop table x",
            "\"x\"",
            "1outbox",
            ".x",
            &"a".repeat(64),
        ] {
            assert!(!is_table_name(bad), "{bad}");
        }
        assert_eq!(quote_table("app.outbox"), "\"app\".\"outbox\"");
    }

    #[test]
    fn settings_have_defaults_and_a_channel_per_table() {
        let outbox: Outbox =
            serde_yaml_ng::from_str("{dsn: {secret: PG}, table: app.orders_outbox}").unwrap();
        assert_eq!(outbox.channel(), "switchyard_outbox_app_orders_outbox");
        assert_eq!(outbox.batch, 500);
        assert_eq!(outbox.poll_interval, Duration::from_secs(1));
    }
}
