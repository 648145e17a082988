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

use std::{str::FromStr, sync::Arc, time::Duration};

use futures::StreamExt;
use serde_json::Value;
use switchyard_core::{
    catalog::{ClientTls, Outbox, quote_table, validate_event_type},
    config::Settings,
    contract::Violation,
    event, headers, lease,
    metrics::{self, SourceLabels},
    operator::{self, SourceStatus},
    outbound::{Guard, Refused},
    secrets::{ExposeSecret, SecretSource},
    shutdown::Shutdown,
};
use tokio::sync::Notify;
use tokio_postgres::{AsyncMessage, Client, config::Host, error::SqlState};
use tracing::Instrument;

use crate::{
    Ingest, is_valid_key,
    publish::{Outgoing, Pending, send},
    readers,
    sources::{self, Ready},
};

/// Longest wait between attempts to reach PostgreSQL.
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// How long a connection attempt may take when the DSN sets no `connect_timeout`.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Room kept for an event's headers within the server's `max_payload`.
const MAX_HEADER_BYTES: usize = 8 * 1024;
/// How often the rows waiting are counted at most.
const COUNT_EVERY: Duration = Duration::from_secs(1);

/// An outbox source's settings with its connection settings and TLS ready.
pub struct OutboxSetup {
    /// The settings.
    pub config: Outbox,
    pg: tokio_postgres::Config,
    tls: tokio_postgres_rustls::MakeRustlsConnect,
    guard: Guard,
}

impl OutboxSetup {
    /// Reads the DSN secret and prepares TLS; errors name the source and the field.
    pub(crate) fn new(
        source: &str,
        outbox: &Outbox,
        secrets: &SecretSource,
        guard: &Guard,
    ) -> Result<Self, String> {
        let dsn = secrets
            .read(&outbox.dsn.secret)
            .map_err(|err| format!("outbox.dsn: {err}"))?;
        // The parse error may quote the DSN (and its password): say only where it is.
        let mut pg = tokio_postgres::Config::from_str(dsn.expose_secret()).map_err(|_| {
            format!(
                "outbox.dsn: the secret {} is not a PostgreSQL connection string (host=… dbname=… or postgres://user@host/db)",
                outbox.dsn.secret
            )
        })?;
        if pg.get_connect_timeout().is_none() {
            pg.connect_timeout(CONNECT_TIMEOUT);
        }
        if pg.get_application_name().is_none() {
            pg.application_name(format!("switchyard-ingest {source}"));
        }
        pg.keepalives_idle(Duration::from_secs(30));
        let tls = tls_config(outbox.tls.as_ref(), secrets)?;
        Ok(Self {
            config: outbox.clone(),
            pg,
            tls: tokio_postgres_rustls::MakeRustlsConnect::new(tls),
            guard: guard.clone(),
        })
    }

    /// The connection settings with each host resolved to an address the outbound
    /// guard permits (the connection goes to that address; TLS still checks the name).
    async fn guarded(&self) -> Result<tokio_postgres::Config, Fault> {
        let mut pg = self.pg.clone();
        if !pg.get_hostaddrs().is_empty() {
            for address in pg.get_hostaddrs() {
                self.guard.check(*address).map_err(refused)?;
            }
            return Ok(pg);
        }
        let ports = self.pg.get_ports();
        for (i, host) in self.pg.get_hosts().iter().enumerate() {
            let address = match host {
                Host::Tcp(name) => {
                    let port = ports.get(i).or(ports.first()).copied().unwrap_or(5432);
                    let found: Vec<std::net::SocketAddr> =
                        tokio::net::lookup_host((name.as_str(), port))
                            .await
                            .map_err(|err| Fault::Away(format!("resolving {name}: {err}")))?
                            .collect();
                    let mut refusal = None;
                    let permitted = found.iter().map(std::net::SocketAddr::ip).find(|ip| {
                        self.guard
                            .check(*ip)
                            .map_err(|err| refusal.get_or_insert(err).to_string())
                            .is_ok()
                    });
                    match (permitted, refusal) {
                        (Some(ip), _) => ip,
                        (None, Some(refusal)) => return Err(refused(refusal)),
                        (None, None) => {
                            return Err(Fault::Away(format!("{name} has no address")));
                        }
                    }
                }
                // A socket on this machine: allowed where loopback is.
                #[cfg(unix)]
                Host::Unix(_) => {
                    let loopback = std::net::IpAddr::from([127, 0, 0, 1]);
                    self.guard.check(loopback).map_err(refused)?;
                    continue;
                }
            };
            pg.hostaddr(address);
        }
        Ok(pg)
    }
}

fn refused(refusal: Refused) -> Fault {
    Fault::Config(format!(
        "connecting to PostgreSQL: {refusal}; add its range to outbound.allow"
    ))
}

/// TLS to PostgreSQL: the public roots and the catalog's extra ones, and a client
/// certificate when given. Used only when the DSN's `sslmode` asks for TLS.
fn tls_config(
    tls: Option<&ClientTls>,
    secrets: &SecretSource,
) -> Result<rustls::ClientConfig, String> {
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};
    let unusable = |field: &str, name: &str, what: &str| {
        format!("outbox.tls.{field}: secret {name} is not {what}")
    };
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if let Some(ca) = tls.and_then(|tls| tls.ca.as_ref()) {
        let pem = secrets
            .read(&ca.secret)
            .map_err(|err| format!("outbox.tls.ca: {err}"))?;
        let certificates: Vec<CertificateDer> =
            CertificateDer::pem_slice_iter(pem.expose_secret().as_bytes())
                .collect::<Result<_, _>>()
                .map_err(|_| unusable("ca", &ca.secret, "a PEM certificate"))?;
        if certificates.is_empty() {
            return Err(unusable("ca", &ca.secret, "a PEM certificate"));
        }
        for certificate in certificates {
            roots
                .add(certificate)
                .map_err(|_| unusable("ca", &ca.secret, "a usable CA certificate"))?;
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|err| format!("outbox.tls: {err}"))?
        .with_root_certificates(roots);
    let client_pair = tls.and_then(|tls| tls.client_cert.as_ref().zip(tls.client_key.as_ref()));
    let Some((cert, key)) = client_pair else {
        return Ok(builder.with_no_client_auth());
    };
    let chain = secrets
        .read(&cert.secret)
        .map_err(|err| format!("outbox.tls.client_cert: {err}"))?;
    let chain: Vec<CertificateDer<'static>> =
        CertificateDer::pem_slice_iter(chain.expose_secret().as_bytes())
            .collect::<Result<_, _>>()
            .ok()
            .filter(|chain: &Vec<_>| !chain.is_empty())
            .ok_or_else(|| unusable("client_cert", &cert.secret, "a PEM certificate chain"))?;
    let private = secrets
        .read(&key.secret)
        .map_err(|err| format!("outbox.tls.client_key: {err}"))?;
    let private = PrivateKeyDer::from_pem_slice(private.expose_secret().as_bytes())
        .map_err(|_| unusable("client_key", &key.secret, "a PEM private key"))?;
    builder
        .with_client_auth_cert(chain, private)
        .map_err(|_| unusable("client_key", &key.secret, "the key of client_cert"))
}

/// Why reading stopped: PostgreSQL or NATS is away (reconnect soon), or the source is
/// configured wrong (say how to fix it; try again later).
#[derive(Debug)]
pub(crate) enum Fault {
    Away(String),
    Config(String),
}

impl std::fmt::Display for Fault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Away(why) | Self::Config(why) => f.write_str(why),
        }
    }
}

impl Fault {
    /// Classifies a PostgreSQL error: refused credentials, an unknown database, a
    /// missing table or grant are configuration; everything else is an outage.
    fn of(err: &tokio_postgres::Error, doing: &str, config: &Outbox) -> Self {
        let Some(db) = err.as_db_error() else {
            // A certificate PostgreSQL's side or ours refused is configuration too.
            let mut cause = std::error::Error::source(err);
            while let Some(inner) = cause {
                if let Some(tls) = tls_error(inner) {
                    return Self::Config(format!(
                        "{doing}: TLS failed: {tls}; check outbox.tls (ca, client_cert, client_key) and the DSN's host"
                    ));
                }
                cause = inner.source();
            }
            let why = match std::error::Error::source(err) {
                _ if err.is_closed() => format!("{doing}: the connection to PostgreSQL was closed"),
                Some(cause) => format!("{doing}: PostgreSQL: {err}: {cause}"),
                None => format!("{doing}: PostgreSQL: {err}"),
            };
            return Self::Away(why);
        };
        let code = db.code();
        let fix = if *code == SqlState::INVALID_PASSWORD
            || *code == SqlState::INVALID_AUTHORIZATION_SPECIFICATION
        {
            format!(
                "check the user and password in the secret {}",
                config.dsn.secret
            )
        } else if *code == SqlState::INVALID_CATALOG_NAME {
            format!(
                "check the database name in the secret {}",
                config.dsn.secret
            )
        } else if *code == SqlState::UNDEFINED_TABLE || *code == SqlState::UNDEFINED_COLUMN {
            format!(
                "create the table with `syctl outbox schema --table {}` (piped to psql)",
                config.table
            )
        } else if *code == SqlState::INSUFFICIENT_PRIVILEGE {
            format!("GRANT SELECT, DELETE ON {} TO the DSN's user", config.table)
        } else {
            return Self::Away(format!("{doing}: {}", db.message()));
        };
        Self::Config(format!("{doing}: {}; {fix}", db.message()))
    }
}

/// The rustls error in `err`, also inside an I/O error.
fn tls_error<'a>(err: &'a (dyn std::error::Error + 'static)) -> Option<&'a rustls::Error> {
    if let Some(tls) = err.downcast_ref::<rustls::Error>() {
        return Some(tls);
    }
    err.downcast_ref::<std::io::Error>()?
        .get_ref()?
        .downcast_ref::<rustls::Error>()
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
        match connect(setup).await {
            Ok((client, _)) => match check(&client, &setup.config).await {
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

/// Connects; the connection's notifications wake the returned [`Notify`].
async fn connect(setup: &OutboxSetup) -> Result<(Client, Arc<Notify>), Fault> {
    let (client, mut connection) = setup
        .guarded()
        .await?
        .connect(setup.tls.clone())
        .await
        .map_err(|err| Fault::of(&err, "connecting to PostgreSQL", &setup.config))?;
    let wake = Arc::new(Notify::new());
    let woken = wake.clone();
    tokio::spawn(async move {
        let mut messages = futures::stream::poll_fn(move |cx| connection.poll_message(cx));
        while let Some(message) = messages.next().await {
            match message {
                Ok(AsyncMessage::Notification(_)) => woken.notify_one(),
                Ok(_) => {}
                Err(err) => {
                    tracing::debug!(error = %err, "PostgreSQL connection ended");
                    break;
                }
            }
        }
        // Wake the reader so it finds the connection closed at once.
        woken.notify_one();
    });
    Ok((client, wake))
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
async fn check(client: &Client, config: &Outbox) -> Result<(), Fault> {
    let table = quote_table(&config.table);
    let fault = |err: tokio_postgres::Error| Fault::of(&err, "checking the outbox table", config);
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

impl Reader {
    /// Holds the lease and reads while it lasts; stands by while another replica does.
    async fn run(&self, instance: &str, ttl: Duration) -> Result<(), switchyard_core::Error> {
        let jetstream = &self.state.nats.jetstream;
        let key = format!("outbox.{}", self.source);
        loop {
            let Some(mut held) = lease::acquire(jetstream, &key, instance, ttl, &self.stop).await?
            else {
                return Ok(());
            };
            tracing::info!(
                source = self.source,
                table = self.setup.config.table,
                "reading the outbox"
            );
            let active = self.stop.child();
            let keep = async {
                held.keep(&active).await;
                active.trigger();
            };
            tokio::join!(
                keep,
                self.read_while(&active),
                self.answer_operators(&active)
            );
            if self.stop.is_shutting_down() {
                held.release().await;
                return Ok(());
            }
            tracing::warn!(
                source = self.source,
                "lost the outbox lease; standing by again"
            );
        }
    }

    /// Answers the control API's status requests while this replica reads.
    async fn answer_operators(&self, active: &Shutdown) {
        let client = &self.state.nats.client;
        let mut requests = match client
            .subscribe(operator::source_subject(&self.source))
            .await
        {
            Ok(requests) => requests,
            Err(err) => {
                tracing::warn!(source = self.source, error = %err, "cannot answer operator requests");
                return;
            }
        };
        loop {
            let request = tokio::select! {
                () = active.cancelled() => break,
                request = requests.next() => request,
            };
            let Some(request) = request else { break };
            let Some(reply) = request.reply else { continue };
            let status = self.status.lock().expect("status lock").clone();
            let status = serde_json::to_vec(&status).expect("status serializes");
            if let Err(err) = client.publish(reply, status.into()).await {
                tracing::warn!(source = self.source, error = %err, "operator answer not sent");
            }
        }
        let _ = requests.unsubscribe().await;
    }

    fn note(&self, change: impl FnOnce(&mut SourceStatus)) {
        change(&mut self.status.lock().expect("status lock"));
    }

    /// Reads in sessions (one connection each) until `active` ends, backing off after
    /// each failed one.
    async fn read_while(&self, active: &Shutdown) {
        let mut backoff = Duration::from_millis(250);
        while !active.is_shutting_down() {
            let ended = self.session(active, &mut backoff).await;
            if let Err(fault) = &ended {
                self.note(|status| status.last_error = Some(fault.to_string()));
            }
            match ended {
                Ok(()) => {}
                Err(Fault::Away(why)) => {
                    tracing::warn!(
                        source = self.source,
                        reason = why,
                        retry_ms = backoff.as_millis() as u64,
                        "outbox unreachable; trying again"
                    );
                }
                Err(Fault::Config(why)) => {
                    backoff = MAX_BACKOFF;
                    tracing::error!(
                        source = self.source,
                        reason = why,
                        retry_ms = backoff.as_millis() as u64,
                        "the outbox cannot be read as configured"
                    );
                }
            }
            active.sleep(backoff).await;
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
        // Let `keep` end with this scope.
        active.trigger();
    }

    /// One connection: check the table, listen, then read, publish and delete until
    /// `active` ends or something fails.
    async fn session(&self, active: &Shutdown, backoff: &mut Duration) -> Result<(), Fault> {
        let config = &self.setup.config;
        let (client, wake) = connect(&self.setup).await?;
        check(&client, config).await?;
        let fault = |doing: &'static str| move |err| Fault::of(&err, doing, config);
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
            *backoff = Duration::from_millis(250);
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
