//! Outbox sources: an application inserts its events into a table of its own
//! PostgreSQL database in the same transaction as the change they describe, and ingest
//! publishes them.
//!
//! One replica reads each source at a time, under the lease `outbox.<source>`. It
//! reads the oldest rows (`ORDER BY id LIMIT batch`), publishes each to INGEST with
//! the message id `<source>:outbox:<id>` (or `<source>:<idempotency_key>`), and deletes
//! the rows only once JetStream has acknowledged them. There is no cursor: what was
//! published is gone, so a row that committed after a row with a higher id (two
//! concurrent transactions) is simply still there at the next read. A crash between
//! the acks and the delete re-reads the rows, and their message ids (and the delivery
//! ledger after the duplicate window) absorb the repeat.
//!
//! The table's trigger `NOTIFY`s on every insert and the reader `LISTEN`s, so a
//! commit is read at once; `poll_interval` is the fallback. A lost connection (either
//! side restarted) backs off and reconnects; a configuration fault — the DSN refused,
//! the table or a column missing, a missing grant — is logged with the fix and retried
//! more slowly, and at start-up it stops ingest.

use std::{sync::Arc, time::Duration};

use serde_json::Value;
use switchyard_core::{
    catalog::{Outbox, quote_table, validate_event_type},
    config::Settings,
    contract::Violation,
    event, headers,
    metrics::{self, SourceLabels},
    operator::SourceStatus,
    outbound::Guard,
    secrets::SecretSource,
    shutdown::Shutdown,
};
use tokio::sync::Notify;
use tokio_postgres::{Client, error::SqlState};
use tracing::Instrument;

use crate::{
    Ingest, is_valid_key,
    postgres::{Database, Fault},
    publish::{Outgoing, Pending, send},
    readers::{self, Sessions},
    sources::{self, Ready},
};

/// Room kept for an event's headers within the server's `max_payload`.
const MAX_HEADER_BYTES: usize = 8 * 1024;
/// How often the rows waiting are counted at most.
const COUNT_EVERY: Duration = Duration::from_secs(1);

/// An outbox source's settings with its database ready.
pub struct OutboxSetup {
    /// The settings.
    pub config: Outbox,
    database: Database,
}

impl OutboxSetup {
    /// Reads the DSN secret and prepares TLS; errors name the field.
    pub(crate) fn new(
        source: &str,
        outbox: &Outbox,
        secrets: &SecretSource,
        guard: &Guard,
    ) -> Result<Self, String> {
        Ok(Self {
            config: outbox.clone(),
            database: Database::new(
                source,
                "outbox",
                &outbox.dsn,
                outbox.tls.as_ref(),
                secrets,
                guard,
            )?,
        })
    }

    /// Connects, and is woken by the table's notifications.
    async fn connect(&self) -> Result<(Client, Arc<Notify>), Fault> {
        self.database.connect(&|code| self.hint(code)).await
    }

    /// Sorts a PostgreSQL error into an outage or a configuration fault with its fix.
    fn fault(&self, err: &tokio_postgres::Error, doing: &str) -> Fault {
        self.database.fault(err, doing, &|code| self.hint(code))
    }

    /// The fixes an outbox source has for PostgreSQL's errors.
    fn hint(&self, code: &SqlState) -> Option<String> {
        let table = &self.config.table;
        if *code == SqlState::UNDEFINED_TABLE || *code == SqlState::UNDEFINED_COLUMN {
            Some(format!(
                "create the table with `syctl outbox schema --table {table}` (piped to psql)"
            ))
        } else if *code == SqlState::INSUFFICIENT_PRIVILEGE {
            Some(format!("GRANT SELECT, DELETE ON {table} TO the DSN's user"))
        } else {
            None
        }
    }
}

/// Starts a reader for every outbox source and keeps the set current.
pub fn start(state: Arc<Ingest>, settings: &Settings, shutdown: &Shutdown) {
    let ttl = settings.ingest.poll_lease_ttl;
    readers::supervise(
        state,
        settings,
        shutdown,
        "outbox reader",
        |ready| ready.outbox.clone(),
        |old, new| old.config == new.config,
        move |state, source, setup, stop, instance| async move {
            let reader = Reader {
                state,
                labels: SourceLabels {
                    source: source.clone(),
                },
                source,
                setup,
                stop,
                status: std::sync::Mutex::new(SourceStatus {
                    instance: instance.clone(),
                    kind: "outbox".into(),
                    ..SourceStatus::default()
                }),
            };
            reader.run(&instance, ttl).await
        },
    );
}

/// Checks every outbox source once at start-up: a configuration fault stops ingest
/// with the fix; PostgreSQL being away does not (the reader waits for it).
pub(crate) async fn check_at_start(state: &Ingest) -> Result<(), String> {
    let sources = state.sources.borrow().clone();
    for ready in sources.ready() {
        let Some(setup) = &ready.outbox else { continue };
        let name = &ready.config.name;
        match setup.connect().await {
            Ok((client, _)) => match check(&client, setup).await {
                Ok(()) => {}
                Err(Fault::Config(why)) => return Err(format!("source {name}: {why}")),
                Err(Fault::Away(why)) => {
                    tracing::warn!(source = name, reason = why, "outbox not checked at start");
                }
            },
            Err(Fault::Config(why)) => return Err(format!("source {name}: {why}")),
            Err(Fault::Away(why)) => {
                tracing::warn!(
                    source = name,
                    reason = why,
                    "PostgreSQL is not reachable; the outbox is read once it is"
                );
            }
        }
    }
    Ok(())
}

/// The columns an outbox table needs, with their types; `true` when required.
const COLUMNS: [(&str, &str, bool); 5] = [
    ("id", "bigint", true),
    ("event_type", "text", true),
    ("idempotency_key", "text", false),
    ("payload", "jsonb", true),
    ("headers", "jsonb", false),
];

/// Checks that the table exists with the columns and grants the reader needs.
async fn check(client: &Client, setup: &OutboxSetup) -> Result<(), Fault> {
    let config = &setup.config;
    let table = quote_table(&config.table);
    let fault = |err: tokio_postgres::Error| setup.fault(&err, "checking the outbox table");
    let row = client
        .query_one("SELECT to_regclass($1)::oid", &[&table])
        .await
        .map_err(fault)?;
    let Some(oid) = row.get::<_, Option<u32>>(0) else {
        return Err(Fault::Config(format!(
            "the outbox table {} does not exist; create it with `syctl outbox schema --table {}` (piped to psql)",
            config.table, config.table
        )));
    };
    let rows = client
        .query(
            "SELECT attname::text, format_type(atttypid, atttypmod) FROM pg_attribute
             WHERE attrelid = $1 AND attnum > 0 AND NOT attisdropped",
            &[&oid],
        )
        .await
        .map_err(fault)?;
    let found: Vec<(String, String)> = rows.iter().map(|row| (row.get(0), row.get(1))).collect();
    for (column, kind, required) in COLUMNS {
        match found.iter().find(|(name, _)| name == column) {
            Some((_, actual)) if actual != kind => {
                return Err(Fault::Config(format!(
                    "the outbox table {}: column {column} is {actual}, not {kind}; see `syctl outbox schema`",
                    config.table
                )));
            }
            None if required => {
                return Err(Fault::Config(format!(
                    "the outbox table {} has no column {column} {kind}; see `syctl outbox schema`",
                    config.table
                )));
            }
            _ => {}
        }
    }
    let row = client
        .query_one(
            "SELECT has_table_privilege($1::oid, 'SELECT'), has_table_privilege($1::oid, 'DELETE')",
            &[&oid],
        )
        .await
        .map_err(fault)?;
    if !(row.get::<_, bool>(0) && row.get::<_, bool>(1)) {
        return Err(Fault::Config(format!(
            "the DSN's user may not read and delete rows of {}; GRANT SELECT, DELETE ON {} TO it",
            config.table, config.table
        )));
    }
    Ok(())
}

struct Reader {
    state: Arc<Ingest>,
    source: String,
    labels: SourceLabels,
    setup: Arc<OutboxSetup>,
    stop: Shutdown,
    /// What operators are told while this replica reads.
    status: std::sync::Mutex<SourceStatus>,
}

/// One row read from the outbox.
struct Row {
    id: i64,
    event_type: String,
    key: Option<String>,
    payload: String,
    headers: Option<String>,
}

impl readers::Sessions for Reader {
    fn source(&self) -> &str {
        &self.source
    }

    fn status(&self) -> &std::sync::Mutex<SourceStatus> {
        &self.status
    }

    fn session(
        &self,
        active: &Shutdown,
        backoff: &mut Duration,
    ) -> impl std::future::Future<Output = Result<(), Fault>> + Send {
        self.read_once(active, backoff)
    }
}

impl Reader {
    /// Holds the lease and reads while it lasts; stands by while another replica does.
    async fn run(&self, instance: &str, ttl: Duration) -> Result<(), switchyard_core::Error> {
        let key = format!("outbox.{}", self.source);
        readers::while_leased(self, &self.state, &key, (instance, ttl), &self.stop).await
    }

    /// One connection: check the table, listen, then read, publish and delete until
    /// `active` ends or something fails.
    async fn read_once(&self, active: &Shutdown, backoff: &mut Duration) -> Result<(), Fault> {
        let config = &self.setup.config;
        let (client, wake) = self.setup.connect().await?;
        check(&client, &self.setup).await?;
        let setup = &self.setup;
        let fault = |doing: &'static str| move |err| setup.fault(&err, doing);
        let table = quote_table(&config.table);
        client
            .batch_execute(&format!("LISTEN \"{}\"", config.channel()))
            .await
            .map_err(fault("listening for new rows"))?;
        let select = client
            .prepare(&format!(
                "SELECT id, event_type, idempotency_key, payload::text, headers::text
                 FROM {table} ORDER BY id LIMIT $1"
            ))
            .await
            .map_err(fault("reading the outbox"))?;
        let delete = client
            .prepare(&format!("DELETE FROM {table} WHERE id = ANY($1)"))
            .await
            .map_err(fault("deleting published rows"))?;
        let count = client
            .prepare(&format!("SELECT count(*) FROM {table}"))
            .await
            .map_err(fault("counting the outbox"))?;
        let mut counted: Option<tokio::time::Instant> = None;
        let batch = i64::from(config.batch);
        while !active.is_shutting_down() {
            let rows = client
                .query(&select, &[&batch])
                .await
                .map_err(fault("reading the outbox"))?;
            let read = rows.len();
            let rows: Vec<Row> = rows
                .into_iter()
                .map(|row| Row {
                    id: row.get(0),
                    event_type: row.get(1),
                    key: row.get(2),
                    payload: row.get(3),
                    headers: row.get(4),
                })
                .collect();
            let (stored, failed) = self.publish(rows).await;
            if !stored.is_empty() {
                client
                    .execute(&delete, &[&stored])
                    .await
                    .map_err(fault("deleting published rows"))?;
            }
            let now = time::OffsetDateTime::now_utc();
            let metrics = metrics::metrics();
            metrics
                .source_last_read
                .get_or_create(&self.labels)
                .set(now.unix_timestamp_nanos() as f64 / 1e9);
            self.note(|status| status.last_read_at = Some(event::rfc3339(now)));
            if counted.is_none_or(|at| at.elapsed() >= COUNT_EVERY) {
                let waiting: i64 = client
                    .query_one(&count, &[])
                    .await
                    .map_err(fault("counting the outbox"))?
                    .get(0);
                metrics
                    .source_rows_waiting
                    .get_or_create(&self.labels)
                    .set(waiting);
                self.note(|status| status.rows_waiting = u64::try_from(waiting).ok());
                counted = Some(tokio::time::Instant::now());
            }
            if let Some(why) = failed {
                return Err(Fault::Away(why));
            }
            readers::reset(backoff);
            self.note(|status| status.last_error = None);
            if read < config.batch as usize {
                tokio::select! {
                    () = wake.notified() => {}
                    () = tokio::time::sleep(config.poll_interval) => {}
                    () = active.cancelled() => {}
                }
                if client.is_closed() {
                    return Err(Fault::Away("the PostgreSQL connection was closed".into()));
                }
            }
        }
        Ok(())
    }

    /// Publishes the rows in order (pipelined) and returns the ids JetStream stored,
    /// and why any was not.
    async fn publish(&self, rows: Vec<Row>) -> (Vec<i64>, Option<String>) {
        let sources = self.state.sources.borrow().clone();
        let sources::Lookup::Ready(ready) = sources.get(&self.source) else {
            return (Vec::new(), Some("the source is no longer ready".into()));
        };
        let (state, revision) = (&self.state, sources.revision);
        let deadline = tokio::time::Instant::now() + state.publish_timeout;
        // Room left for the headers in the server's largest message.
        let max_body = state
            .nats
            .client
            .server_info()
            .max_payload
            .saturating_sub(MAX_HEADER_BYTES);
        let mut sent: Vec<(i64, Result<Pending, String>)> = Vec::with_capacity(rows.len());
        for row in rows {
            let event = prepare(&ready, &row, max_body);
            let key = event.key.unwrap_or_else(|| format!("outbox:{}", row.id));
            // Dead-lettered for its size, it goes without its body.
            let body = if row.payload.len() > max_body {
                bytes::Bytes::new()
            } else {
                bytes::Bytes::from(row.payload)
            };
            let outgoing = Outgoing {
                source: &self.source,
                event_type: &event.event_type,
                key: Some(&key),
                body,
                revision,
                violations: event.violations,
            };
            let handed = send(&state.nats, outgoing, None, deadline, state.publish_timeout);
            let handed = match row_span(&self.source, row.id, row.headers.as_deref()) {
                Some(span) => handed.instrument(span).await,
                None => handed.await,
            };
            sent.push((row.id, handed));
        }
        let mut stored = Vec::with_capacity(sent.len());
        let mut failed = None;
        for (id, pending) in sent {
            let confirmed = match pending {
                Ok(pending) => pending.confirm(deadline, state.publish_timeout).await,
                Err(why) => Err(why),
            };
            match confirmed {
                Ok(_) => stored.push(id),
                Err(why) => {
                    failed.get_or_insert(why);
                }
            }
        }
        (stored, failed)
    }
}

/// What a row becomes: its type and key, and why it breaks the source's rules when
/// it does (such a row is dead-lettered, not retried for ever).
struct Prepared {
    event_type: String,
    key: Option<String>,
    violations: Option<Vec<Violation>>,
}

fn prepare(ready: &Ready, row: &Row, max_body: usize) -> Prepared {
    let violation = |path: &str, message: String| {
        Some(vec![Violation {
            path: path.to_owned(),
            message,
        }])
    };
    let key = row.key.clone().filter(|key| is_valid_key(key));
    if let Err(err) = validate_event_type(&row.event_type) {
        return Prepared {
            event_type: "invalid".into(),
            key,
            violations: violation("/event_type", format!("row {}: {err}", row.id)),
        };
    }
    if row.payload.len() > max_body {
        return Prepared {
            event_type: row.event_type.clone(),
            key,
            violations: violation(
                "/payload",
                format!(
                    "row {}: {} bytes, more than the {max_body} a NATS message can carry",
                    row.id,
                    row.payload.len()
                ),
            ),
        };
    }
    if row.key.is_some() && key.is_none() {
        return Prepared {
            event_type: row.event_type.clone(),
            key: None,
            violations: violation(
                "/idempotency_key",
                format!(
                    "row {}: must be 1-{} visible ASCII characters",
                    row.id,
                    crate::MAX_IDEMPOTENCY_KEY
                ),
            ),
        };
    }
    // A row cannot be refused back to its writer: one that breaks the schema is
    // dead-lettered whatever `on_invalid` says.
    let violations = if ready.has_schema(&row.event_type) {
        match serde_json::from_str::<Value>(&row.payload) {
            Ok(document) => ready.check(&row.event_type, &document).err(),
            Err(err) => violation("", format!("row {}: {err}", row.id)),
        }
    } else {
        None
    };
    Prepared {
        event_type: row.event_type.clone(),
        key,
        violations,
    }
}

/// The span of reading a row whose `headers` carry a trace context (`traceparent`,
/// `tracestate`), so the event's trace continues the writing transaction's.
fn row_span(source: &str, id: i64, row_headers: Option<&str>) -> Option<tracing::Span> {
    let fields: serde_json::Map<String, Value> = serde_json::from_str(row_headers?).ok()?;
    let mut carried = async_nats::HeaderMap::new();
    for name in ["traceparent", "tracestate"] {
        if let Some(value) = fields.get(name).and_then(Value::as_str) {
            carried.insert(name, value);
        }
    }
    carried.get("traceparent")?;
    let span = tracing::info_span!(
        "receive",
        otel.name = format!("receive outbox {source}"),
        otel.kind = "consumer",
        messaging.system = "postgresql",
        messaging.operation.type = "receive",
        outbox.row_id = id,
        trace_id = tracing::field::Empty,
    );
    headers::set_parent_from(&span, Some(&carried));
    Some(span)
}
