//! CDC sources: every insert, update and delete of some tables, read from a logical
//! replication slot (`pgoutput`), becomes an event `<table>.<insert|update|delete>`
//! with the body `{"before"?, "after"?, "lsn", "committed_at", "xid"}`.
//!
//! One replica reads each source at a time (lease `cdc.<source>`). PostgreSQL sends
//! each transaction once it has committed, in commit order. Each change is published
//! as it arrives (pipelined, in order) with the idempotency key
//! `cdc:<slot>:<commit LSN>:<position in the transaction>`, and the slot's confirmed
//! position moves past a transaction only once every one of its events is stored. A
//! crash anywhere re-reads the transactions after that position; their keys are the
//! same, so the repeats are absorbed (by JetStream's duplicate window, and after it
//! by the delivery ledger, which knows the same event ids).
//!
//! Before reading, the reader checks `wal_level`, the role's `REPLICATION` attribute
//! and the tables, and creates the publication and the slot when they are missing.

use std::{sync::Arc, time::Duration};

use serde_json::{Value, json};
use switchyard_core::{
    catalog::{Cdc, quote_table},
    config::Settings,
    contract::Violation,
    event,
    metrics::{self, SourceLabels},
    operator::SourceStatus,
    outbound::Guard,
    secrets::SecretSource,
    shutdown::Shutdown,
};
use tokio_postgres::{Client, error::SqlState};

use crate::{
    Ingest,
    pgoutput::{self, Message, Relations},
    postgres::{Database, Fault},
    publish::{Outgoing, Pending, send},
    readers::{self, Sessions},
    replication::{self, Connection, Frame},
    sources,
};

/// How often the slot's distance behind the WAL is measured at most.
const MEASURE_EVERY: Duration = Duration::from_secs(1);
/// Events of one transaction awaited together before more are sent.
const MAX_PENDING: usize = 1_000;

/// A CDC source's settings with its database ready.
pub struct CdcSetup {
    /// The settings.
    pub config: Cdc,
    database: Database,
}

impl CdcSetup {
    /// Reads the DSN secret and prepares TLS; errors name the field.
    pub(crate) fn new(
        source: &str,
        cdc: &Cdc,
        secrets: &SecretSource,
        guard: &Guard,
    ) -> Result<Self, String> {
        Ok(Self {
            config: cdc.clone(),
            database: Database::new(source, "cdc", &cdc.dsn, cdc.tls.as_ref(), secrets, guard)?,
        })
    }

    fn fault(&self, err: &tokio_postgres::Error, doing: &str) -> Fault {
        self.database.fault(err, doing, &|code| self.hint(code))
    }

    /// The fixes a CDC source has for PostgreSQL's errors.
    fn hint(&self, code: &SqlState) -> Option<String> {
        if *code == SqlState::INSUFFICIENT_PRIVILEGE {
            Some(format!(
                "the DSN's user needs REPLICATION (ALTER ROLE … REPLICATION) and to own the tables to create the publication — or create it yourself: CREATE PUBLICATION {} FOR TABLE {}",
                self.config.publication,
                self.config.tables.join(", ")
            ))
        } else if *code == SqlState::UNDEFINED_TABLE {
            Some(format!(
                "check cdc.tables: {}",
                self.config.tables.join(", ")
            ))
        } else if *code == SqlState::OBJECT_NOT_IN_PREREQUISITE_STATE {
            Some("set wal_level = logical in postgresql.conf and restart PostgreSQL".into())
        } else {
            None
        }
    }

    /// Checks the server and the tables, and creates the publication and the slot
    /// when they are missing.
    async fn prepare(&self, client: &Client) -> Result<(), Fault> {
        let config = &self.config;
        let fault = |doing: &'static str| move |err| self.fault(&err, doing);
        let wal_level: String = client
            .query_one("SHOW wal_level", &[])
            .await
            .map_err(fault("reading wal_level"))?
            .get(0);
        if wal_level != "logical" {
            return Err(Fault::Config(format!(
                "wal_level is {wal_level}; set wal_level = logical in postgresql.conf and restart PostgreSQL"
            )));
        }
        let may_replicate: bool = client
            .query_one(
                "SELECT rolreplication OR rolsuper FROM pg_roles WHERE rolname = current_user",
                &[],
            )
            .await
            .map_err(fault("reading the role"))?
            .get(0);
        if !may_replicate {
            return Err(Fault::Config(
                "the DSN's user may not replicate; ALTER ROLE <user> REPLICATION".into(),
            ));
        }
        for table in &config.tables {
            let row = client
                .query_one("SELECT to_regclass($1)::oid", &[&quote_table(table)])
                .await
                .map_err(fault("checking the tables"))?;
            if row.get::<_, Option<u32>>(0).is_none() {
                return Err(Fault::Config(format!(
                    "the table {table} of cdc.tables does not exist"
                )));
            }
        }
        let published = client
            .query_opt(
                "SELECT 1 FROM pg_publication WHERE pubname = $1",
                &[&config.publication],
            )
            .await
            .map_err(fault("reading the publication"))?;
        if published.is_none() {
            let tables: Vec<String> = config.tables.iter().map(|t| quote_table(t)).collect();
            client
                .batch_execute(&format!(
                    "CREATE PUBLICATION \"{}\" FOR TABLE {}",
                    config.publication,
                    tables.join(", ")
                ))
                .await
                .map_err(fault("creating the publication"))?;
            tracing::info!(publication = config.publication, "created the publication");
        }
        let slot = client
            .query_opt(
                "SELECT plugin FROM pg_replication_slots WHERE slot_name = $1",
                &[&config.slot],
            )
            .await
            .map_err(fault("reading the slot"))?;
        match slot.map(|row| row.get::<_, Option<String>>(0)) {
            Some(Some(plugin)) if plugin == "pgoutput" => {}
            Some(plugin) => {
                return Err(Fault::Config(format!(
                    "the slot {} exists with plugin {}; give cdc.slot a new name (Switchyard reads pgoutput slots)",
                    config.slot,
                    plugin.unwrap_or_else(|| "none (a physical slot)".into())
                )));
            }
            None => {
                client
                    .query_one(
                        "SELECT pg_create_logical_replication_slot($1, 'pgoutput')",
                        &[&config.slot],
                    )
                    .await
                    .map_err(fault("creating the slot"))?;
                tracing::info!(slot = config.slot, "created the replication slot");
            }
        }
        Ok(())
    }

    /// The replication connection, to the address the guard permitted.
    async fn replicate(&self) -> Result<Connection, Fault> {
        let guarded = self.database.guarded().await?;
        let pg = self.database.config();
        let host = match pg.get_hosts().first() {
            Some(tokio_postgres::config::Host::Tcp(name)) => name.clone(),
            _ => {
                return Err(Fault::Config(
                    "cdc.dsn: replication needs a TCP host (host=…)".into(),
                ));
            }
        };
        let port = pg.get_ports().first().copied().unwrap_or(5432);
        let address = *guarded
            .get_hostaddrs()
            .first()
            .ok_or_else(|| Fault::Away(format!("{host} has no permitted address")))?;
        use tokio_postgres::config::SslMode;
        let tls = (pg.get_ssl_mode() != SslMode::Disable).then(|| self.database.tls());
        let tls_required = pg.get_ssl_mode() == SslMode::Require;
        let user = pg.get_user().unwrap_or("postgres");
        let database = pg.get_dbname().unwrap_or(user);
        let connect_timeout = pg
            .get_connect_timeout()
            .copied()
            .unwrap_or(Duration::from_secs(10));
        Connection::open(replication::Target {
            address: std::net::SocketAddr::new(address, port),
            host: &host,
            user,
            password: pg.get_password(),
            database,
            tls,
            tls_required,
            connect_timeout,
        })
        .await
        .map_err(|err| self.replication_fault(err, "opening the replication connection"))
    }

    fn replication_fault(&self, err: replication::Error, doing: &str) -> Fault {
        match err {
            replication::Error::Server { code, message } => {
                match self
                    .database
                    .fix(&SqlState::from_code(&code), &|code| self.hint(code))
                {
                    Some(fix) => Fault::Config(format!("{doing}: {message}; {fix}")),
                    None => Fault::Away(format!("{doing}: {message}")),
                }
            }
            replication::Error::Io(io) => {
                match crate::postgres::tls_error(&io as &(dyn std::error::Error + 'static)) {
                    Some(tls) => self.database.tls_fault(doing, tls),
                    None => Fault::Away(format!("{doing}: PostgreSQL: {io}")),
                }
            }
            replication::Error::Protocol(why) => Fault::Away(format!("{doing}: {why}")),
        }
    }
}

/// Starts a reader for every CDC source and keeps the set current.
pub fn start(state: Arc<Ingest>, settings: &Settings, shutdown: &Shutdown) {
    let ttl = settings.ingest.poll_lease_ttl;
    readers::supervise(
        state,
        settings,
        shutdown,
        "cdc reader",
        |ready| ready.cdc.clone(),
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
                    kind: "cdc".into(),
                    ..SourceStatus::default()
                }),
            };
            reader.run(&instance, ttl).await
        },
    );
}

/// Checks every CDC source once at start-up (and creates its publication and slot):
/// a configuration fault stops ingest with the fix; PostgreSQL being away does not.
pub(crate) async fn check_at_start(state: &Ingest) -> Result<(), String> {
    let sources = state.sources.borrow().clone();
    for ready in sources.ready() {
        let Some(setup) = &ready.cdc else { continue };
        let name = &ready.config.name;
        let checked = match setup.database.connect(&|code| setup.hint(code)).await {
            Ok((client, _)) => setup.prepare(&client).await,
            Err(fault) => Err(fault),
        };
        match checked {
            Ok(()) => {}
            Err(Fault::Config(why)) => return Err(format!("source {name}: {why}")),
            Err(Fault::Away(why)) => {
                tracing::warn!(
                    source = name,
                    reason = why,
                    "CDC source not checked at start"
                );
            }
        }
    }
    Ok(())
}

struct Reader {
    state: Arc<Ingest>,
    source: String,
    labels: SourceLabels,
    setup: Arc<CdcSetup>,
    stop: Shutdown,
    status: std::sync::Mutex<SourceStatus>,
}

/// The transaction being read.
struct Transaction {
    /// Its commit's LSN, as text.
    lsn: String,
    committed_at: String,
    xid: u32,
    /// Changes seen so far (of every table of the publication).
    position: u32,
    pending: Vec<Pending>,
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
    async fn run(&self, instance: &str, ttl: Duration) -> Result<(), switchyard_core::Error> {
        let key = format!("cdc.{}", self.source);
        readers::while_leased(self, &self.state, &key, (instance, ttl), &self.stop).await
    }

    /// One replication connection (and one ordinary one to measure the lag).
    async fn read_once(&self, active: &Shutdown, backoff: &mut Duration) -> Result<(), Fault> {
        let setup = &self.setup;
        let config = &setup.config;
        let (client, _) = setup.database.connect(&|code| setup.hint(code)).await?;
        setup.prepare(&client).await?;
        let mut stream = setup.replicate().await?;
        stream
            .start(&config.slot, &config.publication, 0)
            .await
            .map_err(|err| setup.replication_fault(err, "starting replication"))?;
        let lag = client
            .prepare(
                "SELECT (pg_current_wal_lsn() - confirmed_flush_lsn)::bigint
                 FROM pg_replication_slots WHERE slot_name = $1",
            )
            .await
            .map_err(|err| setup.fault(&err, "measuring the slot"))?;
        let mut relations = Relations::default();
        let mut transaction: Option<Transaction> = None;
        let mut confirmed = 0u64;
        let mut measured: Option<tokio::time::Instant> = None;
        let away = |doing: &'static str| move |err| setup.replication_fault(err, doing);
        loop {
            let frame = tokio::select! {
                () = active.cancelled() => return Ok(()),
                frame = tokio::time::timeout(MEASURE_EVERY, stream.next()) => frame,
            };
            match frame {
                Err(_) => {}
                Ok(Err(err)) => return Err(away("reading changes")(err)),
                Ok(Ok(Frame::KeepAlive { reply, end })) => {
                    // Between transactions everything up to the server's end is done.
                    if transaction.is_none() && end > confirmed {
                        confirmed = end;
                    }
                    self.read_now();
                    if reply {
                        stream
                            .confirm(confirmed)
                            .await
                            .map_err(away("confirming"))?;
                    }
                }
                Ok(Ok(Frame::XLogData { data, .. })) => {
                    let message = pgoutput::decode(&data)
                        .map_err(|err| Fault::Away(format!("reading changes: {err}")))?;
                    match message {
                        Message::Begin {
                            final_lsn,
                            committed_at,
                            xid,
                        } => {
                            transaction = Some(Transaction {
                                lsn: pgoutput::lsn_text(final_lsn),
                                committed_at: pg_time(committed_at),
                                xid,
                                position: 0,
                                pending: Vec::new(),
                            });
                        }
                        Message::Relation(relation) => relations.remember(relation),
                        Message::Change {
                            relation,
                            operation,
                            before,
                            key_only,
                            after,
                        } => {
                            let Some(open) = transaction.as_mut() else {
                                return Err(Fault::Away("a change outside a transaction".into()));
                            };
                            let position = open.position;
                            open.position += 1;
                            let Some(relation) = relations.get(relation) else {
                                return Err(Fault::Away("a change of an unknown relation".into()));
                            };
                            let Some(table) = self.table_of(relation) else {
                                continue;
                            };
                            let mut body = serde_json::Map::new();
                            if let Some(before) = before {
                                body.insert(
                                    "before".into(),
                                    Value::Object(pgoutput::row(relation, &before, key_only)),
                                );
                            }
                            if let Some(after) = after {
                                body.insert(
                                    "after".into(),
                                    Value::Object(pgoutput::row(relation, &after, false)),
                                );
                            }
                            body.insert("lsn".into(), json!(open.lsn));
                            body.insert("committed_at".into(), json!(open.committed_at));
                            body.insert("xid".into(), json!(open.xid));
                            let event_type = format!("{table}.{}", operation.as_str());
                            let key = format!("cdc:{}:{}:{position}", config.slot, open.lsn);
                            let pending = self.send(&event_type, &key, Value::Object(body)).await?;
                            open.pending.push(pending);
                            if open.pending.len() >= MAX_PENDING {
                                self.confirm(std::mem::take(&mut open.pending)).await?;
                            }
                        }
                        Message::Commit { end_lsn, .. } => {
                            if let Some(done) = transaction.take() {
                                self.confirm(done.pending).await?;
                            }
                            // Only now may the slot move past this transaction.
                            confirmed = end_lsn;
                            stream
                                .confirm(confirmed)
                                .await
                                .map_err(away("confirming"))?;
                            readers::reset(backoff);
                            self.read_now();
                        }
                        Message::Other(_) => {}
                    }
                }
            }
            if measured.is_none_or(|at| at.elapsed() >= MEASURE_EVERY) {
                measured = Some(tokio::time::Instant::now());
                let behind: Option<i64> = client
                    .query_opt(&lag, &[&config.slot])
                    .await
                    .map_err(|err| setup.fault(&err, "measuring the slot"))?
                    .and_then(|row| row.get(0));
                let behind = behind.unwrap_or_default().max(0);
                metrics::metrics()
                    .source_bytes_behind
                    .get_or_create(&self.labels)
                    .set(behind);
                self.note(|status| status.bytes_behind = u64::try_from(behind).ok());
            }
        }
    }

    /// Notes that the slot was just heard from and reading works.
    fn read_now(&self) {
        let now = time::OffsetDateTime::now_utc();
        metrics::metrics()
            .source_last_read
            .get_or_create(&self.labels)
            .set(now.unix_timestamp_nanos() as f64 / 1e9);
        self.note(|status| {
            status.last_read_at = Some(event::rfc3339(now));
            status.last_error = None;
        });
    }

    /// The configured name of `relation`'s table, when it is one of `tables`.
    fn table_of(&self, relation: &pgoutput::Relation) -> Option<String> {
        let qualified = format!("{}.{}", relation.namespace, relation.name);
        self.setup.config.tables.iter().find_map(|table| {
            let matches =
                *table == qualified || (*table == relation.name && relation.namespace == "public");
            matches.then(|| table.clone())
        })
    }

    /// Hands one event to JetStream (its ack is awaited with its transaction's).
    async fn send(&self, event_type: &str, key: &str, body: Value) -> Result<Pending, Fault> {
        let sources = self.state.sources.borrow().clone();
        let sources::Lookup::Ready(ready) = sources.get(&self.source) else {
            return Err(Fault::Away("the source is no longer ready".into()));
        };
        // A change cannot be refused back to its writer: one that breaks the source's
        // schema is dead-lettered whatever `on_invalid` says.
        let violations: Option<Vec<Violation>> = ready.check(event_type, &body).err();
        let state = &self.state;
        let deadline = tokio::time::Instant::now() + state.publish_timeout;
        let outgoing = Outgoing {
            source: &self.source,
            event_type,
            key: Some(key),
            body: serde_json::to_vec(&body).expect("JSON serializes").into(),
            revision: sources.revision,
            violations,
        };
        send(&state.nats, outgoing, None, deadline, state.publish_timeout)
            .await
            .map_err(Fault::Away)
    }

    /// Waits until JetStream stored every one of `pending`.
    async fn confirm(&self, pending: Vec<Pending>) -> Result<(), Fault> {
        let state = &self.state;
        let deadline = tokio::time::Instant::now() + state.publish_timeout;
        for pending in pending {
            pending
                .confirm(deadline, state.publish_timeout)
                .await
                .map_err(Fault::Away)?;
        }
        Ok(())
    }
}

/// A commit time (microseconds since 2000-01-01) as RFC 3339.
fn pg_time(micros: i64) -> String {
    let unix = i128::from(micros + replication::PG_EPOCH_MICROS) * 1_000;
    time::OffsetDateTime::from_unix_timestamp_nanos(unix)
        .map(event::rfc3339)
        .unwrap_or_default()
}
