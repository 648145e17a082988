//! Outbox sources against a real PostgreSQL server: rows an application commits reach
//! the provider once each, in order per writer, across a SIGKILL of ingest, a restart
//! of PostgreSQL and transactions that commit out of id order.

use std::{
    collections::{HashMap, HashSet},
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use serde_json::{Value, json};
use switchyard_tests::{FakeProvider, TestPostgres, eventually, processes::Processes};

/// The outbox DDL exactly as `syctl outbox schema` prints it.
fn outbox_ddl() -> String {
    let out = std::process::Command::new(switchyard_tests::binary("syctl"))
        .args(["outbox", "schema"])
        .output()
        .expect("syctl runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Source `shop` reads the outbox; route `orders` passes bodies through to `crm`,
/// in order per writer.
fn catalog(provider_url: &str) -> String {
    format!(
        r#"
sources:
  - name: shop
    outbox: {{ dsn: {{ secret: OUTBOX_DSN }}, batch: 200, poll_interval: 500ms }}
providers:
  - name: crm
    url: {provider_url}/orders
    timeout: 2s
    max_in_flight: 32
    retry:
      max_attempts: 10
      backoff: {{ initial: 50ms, factor: 2, max: 400ms }}
mappings:
  - name: pass
    version: 1
    program: ". = ."
routes:
  - name: orders
    source: shop
    event_types: ["order.*"]
    mapping: pass@1
    provider: crm
    ordering_key: .writer
"#
    )
}

/// A database with the outbox table, and the stack reading it.
async fn start(provider: &FakeProvider) -> (TestPostgres, Processes) {
    start_with(&catalog(provider.url())).await
}

/// [`start`] with another catalog.
async fn start_with(catalog: &str) -> (TestPostgres, Processes) {
    let postgres = TestPostgres::start().await.unwrap();
    postgres
        .client()
        .await
        .unwrap()
        .batch_execute(&outbox_ddl())
        .await
        .unwrap();
    let stack = Processes::start_with_env(
        catalog,
        &["ingest", "transform", "delivery", "control"],
        &[
            ("OUTBOX_DSN", &postgres.dsn()),
            ("SWITCHYARD__INGEST__POLL_LEASE_TTL", "2s"),
        ],
    )
    .await
    .unwrap();
    (postgres, stack)
}

/// Inserts `rows` rows for `writer`, one transaction each, pausing `pause` between
/// them; retries a row whose insert failed (PostgreSQL away) until it commits. With
/// `keyed`, each row carries its idempotency key, as an application that retries
/// must: an insert cut off after its commit and retried makes a second row.
async fn write(
    postgres_dsn: String,
    writer: usize,
    rows: usize,
    pause: Duration,
    keyed: bool,
    written: Arc<AtomicUsize>,
) {
    let mut client = None;
    let mut seq = 0;
    while seq < rows {
        if client.is_none() {
            match tokio_postgres::connect(&postgres_dsn, tokio_postgres::NoTls).await {
                Ok((c, connection)) => {
                    tokio::spawn(connection);
                    client = Some(c);
                }
                Err(_) => {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            }
        }
        let id = format!("w{writer}-{seq}");
        let payload = json!({"id": id, "writer": format!("w{writer}"), "seq": seq});
        let key = keyed.then_some(id);
        let inserted = client
            .as_ref()
            .unwrap()
            .execute(
                "INSERT INTO switchyard_outbox (event_type, idempotency_key, payload)
                 VALUES ('order.created', $1, $2)",
                &[&key, &payload],
            )
            .await;
        match inserted {
            Ok(_) => {
                seq += 1;
                written.fetch_add(1, Ordering::Relaxed);
            }
            Err(_) => client = None,
        }
        tokio::time::sleep(pause).await;
    }
}

/// Starts `writers` writers of `rows` rows each, 10 ms apart (see [`write`]); the
/// count of rows they committed so far comes with them.
fn spawn_writers(
    postgres: &TestPostgres,
    writers: usize,
    rows: usize,
    keyed: bool,
) -> (Vec<tokio::task::JoinHandle<()>>, Arc<AtomicUsize>) {
    let written = Arc::new(AtomicUsize::new(0));
    let writing = (0..writers)
        .map(|writer| {
            tokio::spawn(write(
                postgres.dsn(),
                writer,
                rows,
                // 400 rows/s from eight writers: tests that kill something mid-stream
                // need the writers still writing once 100 rows have arrived, however
                // slowly the pipeline starts.
                Duration::from_millis(20),
                keyed,
                written.clone(),
            ))
        })
        .collect();
    (writing, written)
}

/// What the provider accepted: per writer the sequence numbers in arrival order.
fn arrivals(provider: &FakeProvider) -> HashMap<String, Vec<u64>> {
    let mut by_writer: HashMap<String, Vec<u64>> = HashMap::new();
    for request in provider.accepted() {
        let body = request.json();
        by_writer
            .entry(body["writer"].as_str().unwrap().to_owned())
            .or_default()
            .push(body["seq"].as_u64().unwrap());
    }
    by_writer
}

/// Every writer's rows arrived once each, in the order it wrote them.
fn assert_once_in_order(provider: &FakeProvider, writers: usize, rows: usize) {
    let by_writer = arrivals(provider);
    assert_eq!(by_writer.len(), writers, "every writer's rows arrived");
    for (writer, seqs) in &by_writer {
        let expected: Vec<u64> = (0..rows as u64).collect();
        assert_eq!(
            seqs.len(),
            rows,
            "{writer}: {} arrivals for {rows} rows (lost or doubled)",
            seqs.len()
        );
        assert_eq!(seqs, &expected, "{writer}: in order, once each");
    }
}

async fn wait_for(provider: &FakeProvider, count: usize, timeout: Duration) {
    eventually(timeout, &format!("{count} rows delivered"), || async {
        (provider.accepted().len() >= count).then_some(())
    })
    .await;
}

async fn wait_until_written(written: &AtomicUsize, count: usize) {
    eventually(
        Duration::from_secs(60),
        &format!("{count} rows written"),
        || async { (written.load(Ordering::Relaxed) >= count).then_some(()) },
    )
    .await;
}

async fn rows_left(postgres: &TestPostgres) -> i64 {
    postgres
        .client()
        .await
        .unwrap()
        .query_one("SELECT count(*) FROM switchyard_outbox", &[])
        .await
        .unwrap()
        .get(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rows_from_eight_writers_arrive_once_each_in_order_across_a_sigkill_of_ingest() {
    let provider = FakeProvider::start().await;
    let (postgres, mut stack) = start(&provider).await;
    let (writers, rows) = (8, 625);
    let (writing, written) = spawn_writers(&postgres, writers, rows, false);
    wait_for(&provider, 100, Duration::from_secs(60)).await;
    wait_until_written(&written, 1_500).await;
    assert!(written.load(Ordering::Relaxed) < 3_500, "still writing");
    stack.kill("ingest").await;
    // Rows written while ingest is down wait in the table.
    let delivered_then = provider.accepted().len();
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(
        rows_left(&postgres).await > 0,
        "rows wait while ingest is down"
    );
    stack.restart("ingest").unwrap();
    for writer in writing {
        writer.await.unwrap();
    }
    wait_for(&provider, writers * rows, Duration::from_secs(120)).await;
    // Anything doubled would arrive late.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_once_in_order(&provider, writers, rows);
    assert_eq!(rows_left(&postgres).await, 0, "published rows are deleted");

    // Operators see the outbox drained and recently read.
    let ingest = stack
        .services()
        .iter()
        .find(|p| p.name == "ingest")
        .unwrap();
    let metrics = eventually(Duration::from_secs(10), "rows waiting 0", || async {
        let text = reqwest::get(format!("http://{}/metrics", ingest.admin))
            .await
            .ok()?
            .text()
            .await
            .ok()?;
        text.contains(r#"switchyard_ingest_source_rows_waiting{source="shop"} 0"#)
            .then_some(text)
    })
    .await;
    assert!(
        metrics.contains(r#"switchyard_ingest_source_last_read_timestamp_seconds{source="shop"}"#),
        "last read is a metric"
    );
    eprintln!(
        "outbox: {} rows from {writers} writers, SIGKILL of ingest after {delivered_then}: 0 lost, 0 doubled, in order per writer",
        writers * rows
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_postgres_restart_then_a_nats_restart_mid_stream_lose_and_double_nothing() {
    let provider = FakeProvider::start().await;
    // No ordering key: the order this test checks is the outbox's, in INGEST (after
    // a NATS restart, keyed delivery waits out the redelivery of unacknowledged
    // messages, which the ordering tests cover).
    let unordered = catalog(provider.url()).replace("\n    ordering_key: .writer", "");
    let (mut postgres, mut stack) = start_with(&unordered).await;
    let (writers, rows) = (4, 300);
    let (writing, written) = spawn_writers(&postgres, writers, rows, true);
    wait_for(&provider, 50, Duration::from_secs(60)).await;
    wait_until_written(&written, 300).await;
    assert!(written.load(Ordering::Relaxed) < 1_000, "still writing");
    postgres.stop().await.unwrap();
    // Operators see why the source is not being read.
    let status = eventually(Duration::from_secs(15), "the outage reported", || async {
        let status = crate::sources_status(&stack)?;
        let error = status[0]["last_error"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        (!error.is_empty()).then_some(error)
    })
    .await;
    assert!(status.contains("PostgreSQL"), "{status}");
    postgres.resume().await.unwrap();
    // Then NATS goes away while rows keep coming: they wait in the table.
    wait_until_written(&written, 700).await;
    assert!(written.load(Ordering::Relaxed) < 1_150, "still writing");
    stack.nats.restart().await.unwrap();
    for writer in writing {
        writer.await.unwrap();
    }
    wait_for(&provider, writers * rows, Duration::from_secs(90)).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    // Each row once: under one idempotency key. A delivery NATS lost the record of
    // may be sent again, under the same key, which a provider deduplicates.
    let mut keys: HashMap<(String, u64), HashSet<String>> = HashMap::new();
    for request in provider.accepted() {
        let body = request.json();
        let row = (
            body["writer"].as_str().unwrap().to_owned(),
            body["seq"].as_u64().unwrap(),
        );
        let key = request.header("idempotency-key").unwrap().to_owned();
        keys.entry(row).or_default().insert(key);
    }
    assert_eq!(keys.len(), writers * rows, "every row delivered");
    let doubled: Vec<_> = keys.iter().filter(|(_, keys)| keys.len() > 1).collect();
    assert!(doubled.is_empty(), "rows under two keys: {doubled:?}");
    assert_stored_in_order(&stack, writers, rows).await;
    assert_eq!(rows_left(&postgres).await, 0);
}

/// INGEST holds every writer's rows once each, in the order it wrote them.
async fn assert_stored_in_order(stack: &Processes, writers: usize, rows: usize) {
    let nats = async_nats::connect(stack.nats.url()).await.unwrap();
    let stream = async_nats::jetstream::new(nats)
        .get_stream(switchyard_core::topology::INGEST)
        .await
        .unwrap();
    let stored = stream.get_info().await.unwrap().state.last_sequence;
    let mut by_writer: HashMap<String, Vec<u64>> = HashMap::new();
    for sequence in 1..=stored {
        let Ok(message) = stream.get_raw_message(sequence).await else {
            continue;
        };
        let body: Value = serde_json::from_slice(&message.payload).unwrap();
        by_writer
            .entry(body["writer"].as_str().unwrap().to_owned())
            .or_default()
            .push(body["seq"].as_u64().unwrap());
    }
    assert_eq!(by_writer.len(), writers);
    for (writer, seqs) in by_writer {
        assert_eq!(
            seqs,
            (0..rows as u64).collect::<Vec<_>>(),
            "{writer} in INGEST"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_row_committed_after_a_higher_id_is_not_skipped() {
    let provider = FakeProvider::start().await;
    let (postgres, _stack) = start(&provider).await;
    let insert = "INSERT INTO switchyard_outbox (event_type, payload) VALUES ('order.created', $1) RETURNING id";
    let row = |writer: &str| json!({"id": writer, "writer": writer, "seq": 0});

    // The first transaction takes the lower id and stays open...
    let mut early = postgres.client().await.unwrap();
    let first = early.transaction().await.unwrap();
    let low: i64 = first
        .query_one(insert, &[&row("early")])
        .await
        .unwrap()
        .get(0);
    // ...while a second one takes a higher id, commits, and is delivered.
    let late = postgres.client().await.unwrap();
    let high: i64 = late
        .query_one(insert, &[&row("late")])
        .await
        .unwrap()
        .get(0);
    assert!(low < high);
    wait_for(&provider, 1, Duration::from_secs(30)).await;
    assert_eq!(provider.accepted()[0].json()["writer"], "late");

    // The lower id commits last and still arrives.
    first.commit().await.unwrap();
    wait_for(&provider, 2, Duration::from_secs(30)).await;
    let writers: Vec<Value> = provider
        .accepted()
        .iter()
        .map(|request| request.json()["writer"].clone())
        .collect();
    assert_eq!(writers, ["late", "early"]);
    assert_eq!(rows_left(&postgres).await, 0);
}

/// Starts ingest alone on `catalog` and returns what it printed when it exited.
async fn ingest_refuses(catalog: &str, dsn: &str) -> String {
    crate::ingest_refuses(catalog, &[("OUTBOX_DSN", dsn)]).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_table_database_or_grant_stops_ingest_at_start_naming_the_fix() {
    let postgres = TestPostgres::start().await.unwrap();
    let catalog = catalog("http://127.0.0.1:9");

    let text = ingest_refuses(&catalog, &postgres.dsn()).await;
    assert!(
        text.contains("source shop") && text.contains("switchyard_outbox does not exist"),
        "{text}"
    );
    assert!(
        text.contains("syctl outbox schema --table switchyard_outbox"),
        "{text}"
    );

    let wrong_db = postgres.dsn().replace("dbname=postgres", "dbname=shop");
    let text = ingest_refuses(&catalog, &wrong_db).await;
    assert!(
        text.contains("source shop")
            && text.contains("check the database name in the secret OUTBOX_DSN"),
        "{text}"
    );

    let admin = postgres.client().await.unwrap();
    admin.batch_execute(&outbox_ddl()).await.unwrap();
    admin
        .batch_execute(
            "CREATE ROLE reader LOGIN; ALTER TABLE switchyard_outbox DROP COLUMN payload",
        )
        .await
        .unwrap();
    let text = ingest_refuses(&catalog, &postgres.dsn()).await;
    assert!(text.contains("has no column payload jsonb"), "{text}");
    admin
        .batch_execute("ALTER TABLE switchyard_outbox ADD COLUMN payload jsonb NOT NULL")
        .await
        .unwrap();
    let as_reader = postgres.dsn().replace("user=postgres", "user=reader");
    let text = ingest_refuses(&catalog, &as_reader).await;
    assert!(
        text.contains("GRANT SELECT, DELETE ON switchyard_outbox"),
        "{text}"
    );
    assert!(!text.contains("password"), "no DSN in the output: {text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_row_that_breaks_the_rules_is_dead_lettered_and_blocks_nothing() {
    let provider = FakeProvider::start().await;
    let (postgres, stack) = start(&provider).await;
    let client = postgres.client().await.unwrap();
    client
        .batch_execute(
            r#"INSERT INTO switchyard_outbox (event_type, payload) VALUES ('Not A Type!', '{"writer": "bad", "seq": 0}');
               INSERT INTO switchyard_outbox (event_type, idempotency_key, payload) VALUES ('order.created', 'has space', '{"writer": "bad", "seq": 1}');
               INSERT INTO switchyard_outbox (event_type, payload, headers) VALUES ('order.created', '{"writer": "good", "seq": 0}',
                 '{"traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"}');"#,
        )
        .await
        .unwrap();
    // A payload larger than a NATS message can carry (1 MiB by default).
    let huge = json!({"writer": "bad", "seq": 2, "blob": "x".repeat(1_100_000)});
    client
        .execute(
            "INSERT INTO switchyard_outbox (event_type, payload) VALUES ('order.created', $1)",
            &[&huge],
        )
        .await
        .unwrap();
    wait_for(&provider, 1, Duration::from_secs(30)).await;
    let arrived = provider.accepted()[0].json();
    assert_eq!(arrived["writer"], "good");
    // The provider's request continues the trace the row carried.
    let traceparent = provider.accepted()[0]
        .header("traceparent")
        .unwrap()
        .to_owned();
    assert!(
        traceparent.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"),
        "{traceparent}"
    );

    let nats = async_nats::connect(stack.nats.url()).await.unwrap();
    let jetstream = async_nats::jetstream::new(nats);
    let dlq = jetstream
        .get_stream(switchyard_core::topology::DLQ)
        .await
        .unwrap();
    let subject = switchyard_core::topology::source_dlq_subject("shop");
    eventually(Duration::from_secs(10), "three dead letters", || async {
        let info = dlq.get_info().await.ok()?;
        (info.state.messages == 3).then_some(())
    })
    .await;
    let mut reasons = Vec::new();
    for sequence in 1..=3 {
        let message = dlq.get_raw_message(sequence).await.unwrap();
        assert_eq!(message.subject.as_str(), subject);
        let headers = message.headers;
        reasons.push(
            headers
                .get(switchyard_core::headers::FAILURE_REASON)
                .unwrap()
                .to_string(),
        );
    }
    assert!(
        reasons[0].contains("/event_type") && reasons[0].contains("row 1"),
        "{reasons:?}"
    );
    assert!(
        reasons[1].contains("/idempotency_key") && reasons[1].contains("row 2"),
        "{reasons:?}"
    );
    assert!(
        reasons[2].contains("/payload") && reasons[2].contains("row 4"),
        "{reasons:?}"
    );
    assert_eq!(
        rows_left(&postgres).await,
        0,
        "dead-lettered rows are deleted too"
    );

    // Operators see the reader: active, nothing waiting, a recent read, no error.
    let status = eventually(Duration::from_secs(20), "an active reader", || async {
        let status = crate::sources_status(&stack)?;
        (status[0]["active"] == true && status[0]["rows_waiting"] == 0).then_some(status)
    })
    .await;
    assert_eq!(status[0]["source"], "shop");
    assert_eq!(status[0]["kind"], "outbox");
    assert!(status[0]["last_read"].is_string(), "{status}");
    assert_eq!(status[0]["last_error"], "", "{status}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rows_arrive_over_tls_to_postgres_verified_against_the_catalog_ca() {
    let pki = switchyard_tests::pki::Pki::new();
    let postgres = TestPostgres::start_tls(&pki).await.unwrap();
    let admin = postgres.client().await.unwrap();
    admin.batch_execute(&outbox_ddl()).await.unwrap();
    admin
        .batch_execute("GRANT SELECT, DELETE ON switchyard_outbox TO tls_user")
        .await
        .unwrap();
    let provider = FakeProvider::start().await;
    let catalog = catalog(provider.url()).replace(
        "outbox: { dsn: { secret: OUTBOX_DSN }, batch: 200, poll_interval: 500ms }",
        "outbox: { dsn: { secret: OUTBOX_DSN }, tls: { ca: { secret: PG_CA } } }",
    );
    // tls_user may connect only over TLS: without it, PostgreSQL refuses.
    let dsn = postgres.dsn().replace("user=postgres", "user=tls_user");
    let plain = tokio_postgres::connect(&dsn, tokio_postgres::NoTls).await;
    assert!(plain.is_err(), "the server refuses tls_user without TLS");
    // A server certificate the catalog's CA did not issue stops ingest at start.
    let other = switchyard_tests::pki::Pki::new();
    let text = crate::ingest_refuses(
        &catalog,
        &[
            ("OUTBOX_DSN", &format!("{dsn} sslmode=require")),
            ("PG_CA", &other.ca_pem),
        ],
    )
    .await;
    assert!(
        text.contains("source shop") && text.contains("TLS failed") && text.contains("outbox.tls"),
        "{text}"
    );
    let _stack = Processes::start_with_env(
        &catalog,
        &["ingest", "transform", "delivery"],
        &[
            ("OUTBOX_DSN", &format!("{dsn} sslmode=require")),
            ("PG_CA", &pki.ca_pem),
        ],
    )
    .await
    .unwrap();
    for seq in 0..20 {
        let payload = json!({"id": format!("t-{seq}"), "writer": "tls", "seq": seq});
        admin
            .execute(
                "INSERT INTO switchyard_outbox (event_type, payload) VALUES ('order.created', $1)",
                &[&payload],
            )
            .await
            .unwrap();
    }
    wait_for(&provider, 20, Duration::from_secs(30)).await;
    assert_once_in_order(&provider, 1, 20);
    let over_tls: bool = admin
        .query_one(
            "SELECT bool_and(s.ssl) FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid)
             WHERE a.usename = 'tls_user'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(over_tls, "ingest's connection uses TLS");
}
