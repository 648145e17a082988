//! CDC sources against a real PostgreSQL server: every insert, update and delete of a
//! table reaches the provider once, in commit order, across a SIGKILL of ingest.

use std::time::Duration;

use serde_json::Value;
use switchyard_tests::{FakeProvider, TestPostgres, eventually, processes::Processes};

/// Source `shop` reads the changes of `orders`; route `changes` delivers them to
/// `crm` one after another (a single ordering key), so commit order holds.
fn catalog(provider_url: &str) -> String {
    format!(
        r#"
sources:
  - name: shop
    cdc: {{ dsn: {{ secret: CDC_DSN }}, publication: shop_changes, slot: shop_slot, tables: [orders] }}
providers:
  - name: crm
    url: {provider_url}/changes
    timeout: 2s
    retry:
      max_attempts: 10
      backoff: {{ initial: 50ms, factor: 2, max: 400ms }}
mappings:
  - name: pass
    version: 1
    program: ". = ."
routes:
  - name: changes
    source: shop
    event_types: ["orders.*"]
    mapping: pass@1
    provider: crm
    ordering_key: '"all"'
"#
    )
}

const TABLE: &str =
    "CREATE TABLE orders (id int PRIMARY KEY, status text, total numeric, meta jsonb)";

/// Transaction `k`: five inserts, three updates, two deletes, as (event type, id).
fn transaction(k: i32) -> Vec<(&'static str, i32)> {
    let base = k * 5;
    let mut changes: Vec<(&'static str, i32)> =
        (0..5).map(|i| ("orders.insert", base + i)).collect();
    changes.extend((0..3).map(|i| ("orders.update", base + i)));
    changes.extend((3..5).map(|i| ("orders.delete", base + i)));
    changes
}

/// Commits transactions `from..to` (see [`transaction`]), pausing between them.
async fn write(dsn: String, from: i32, to: i32, pause: Duration) {
    let (mut client, connection) = tokio_postgres::connect(&dsn, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    for k in from..to {
        let tx = client.transaction().await.unwrap();
        let base = k * 5;
        for i in 0..5 {
            tx.execute(
                "INSERT INTO orders VALUES ($1, 'new', 19.90, '{\"k\": 1}')",
                &[&(base + i)],
            )
            .await
            .unwrap();
        }
        for i in 0..3 {
            tx.execute(
                "UPDATE orders SET status = 'paid' WHERE id = $1",
                &[&(base + i)],
            )
            .await
            .unwrap();
        }
        for i in 3..5 {
            tx.execute("DELETE FROM orders WHERE id = $1", &[&(base + i)])
                .await
                .unwrap();
        }
        tx.commit().await.unwrap();
        tokio::time::sleep(pause).await;
    }
}

fn arrivals(provider: &FakeProvider) -> Vec<(String, i32, Value)> {
    provider
        .accepted()
        .iter()
        .map(|request| {
            let body = request.json();
            let row = if body["after"].is_object() {
                &body["after"]
            } else {
                &body["before"]
            };
            let id = row["id"].as_i64().unwrap() as i32;
            let kind = request
                .header("switchyard-event-type")
                .unwrap_or_default()
                .to_owned();
            (kind, id, body)
        })
        .collect()
}

/// Waits until ingest has created the slot: changes from then on are kept for it.
async fn wait_for_slot(admin: &tokio_postgres::Client) {
    eventually(Duration::from_secs(30), "the slot", || async {
        let row = admin
            .query_opt(
                "SELECT 1 FROM pg_replication_slots WHERE slot_name = 'shop_slot'",
                &[],
            )
            .await
            .ok()?;
        row.map(|_| ())
    })
    .await;
}

/// The provider got the changes of transactions `0..transactions` once each, in
/// commit order.
fn assert_once_in_commit_order(
    provider: &FakeProvider,
    transactions: i32,
) -> Vec<(String, i32, Value)> {
    let arrived = arrivals(provider);
    let expected: Vec<(String, i32)> = (0..transactions)
        .flat_map(transaction)
        .map(|(kind, id)| (kind.to_owned(), id))
        .collect();
    let got: Vec<(String, i32)> = arrived.iter().map(|(k, id, _)| (k.clone(), *id)).collect();
    assert_eq!(got.len(), expected.len(), "each change once");
    assert_eq!(got, expected, "in commit order");
    arrived
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_thousand_changes_arrive_once_in_commit_order_across_a_sigkill_of_ingest() {
    let provider = FakeProvider::start().await;
    let postgres = TestPostgres::start().await.unwrap();
    postgres
        .client()
        .await
        .unwrap()
        .batch_execute(TABLE)
        .await
        .unwrap();
    let mut stack = Processes::start_with_env(
        &catalog(provider.url()),
        &["ingest", "transform", "delivery", "control"],
        &[
            ("CDC_DSN", &postgres.dsn()),
            ("SWITCHYARD__INGEST__POLL_LEASE_TTL", "2s"),
        ],
    )
    .await
    .unwrap();
    // The slot exists once ingest has started: changes from now on are kept for it.
    let admin = postgres.client().await.unwrap();
    wait_for_slot(&admin).await;
    let writer = tokio::spawn(write(postgres.dsn(), 0, 200, Duration::from_millis(20)));
    eventually(Duration::from_secs(60), "300 changes delivered", || async {
        (provider.accepted().len() >= 300).then_some(())
    })
    .await;
    stack.kill("ingest").await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    stack.restart("ingest").unwrap();
    writer.await.unwrap();
    eventually(
        Duration::from_secs(120),
        "2,000 changes delivered",
        || async { (provider.accepted().len() >= 2_000).then_some(()) },
    )
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;

    let arrived = assert_once_in_commit_order(&provider, 200);
    let (_, _, insert) = &arrived[0];
    assert_eq!(insert["after"]["status"], "new");
    assert_eq!(insert["after"]["total"], "19.90");
    assert_eq!(insert["after"]["meta"]["k"], 1);
    assert!(insert["lsn"].as_str().unwrap().contains('/'));
    assert!(insert["committed_at"].is_string() && insert["xid"].is_u64());
    let (_, _, delete) = &arrived[8];
    assert_eq!(
        delete["before"],
        serde_json::json!({"id": 3}),
        "the key of a deleted row"
    );
    assert!(delete.get("after").is_none());

    // The slot moved past everything, and operators see it caught up.
    let status = eventually(Duration::from_secs(20), "caught up", || async {
        let status = crate::sources_status(&stack)?;
        (status[0]["active"] == true && status[0]["bytes_behind"].as_u64()? < 100_000)
            .then_some(status)
    })
    .await;
    assert_eq!(status[0]["kind"], "cdc");
    assert!(status[0]["last_read"].is_string(), "{status}");
}

/// Starts ingest alone with `dsn` and returns what it printed when it exited.
async fn ingest_refuses(dsn: &str) -> String {
    crate::ingest_refuses(&catalog("http://127.0.0.1:9"), &[("CDC_DSN", dsn)]).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_role_without_replication_or_wal_level_replica_stops_ingest_at_start_naming_the_fix() {
    let postgres = TestPostgres::start().await.unwrap();
    let admin = postgres.client().await.unwrap();
    admin.batch_execute(TABLE).await.unwrap();
    admin.batch_execute("CREATE ROLE app LOGIN").await.unwrap();
    let text = ingest_refuses(&postgres.dsn().replace("user=postgres", "user=app")).await;
    assert!(
        text.contains("source shop") && text.contains("ALTER ROLE <user> REPLICATION"),
        "{text}"
    );

    let unready = TestPostgres::start_without_logical_wal().await.unwrap();
    unready
        .client()
        .await
        .unwrap()
        .batch_execute(TABLE)
        .await
        .unwrap();
    let text = ingest_refuses(&unready.dsn()).await;
    assert!(
        text.contains("source shop") && text.contains("set wal_level = logical"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn over_tls_a_postgres_restart_mid_stream_loses_and_doubles_no_change() {
    let pki = switchyard_tests::pki::Pki::new();
    let mut postgres = TestPostgres::start_tls(&pki).await.unwrap();
    // The publication made by the tables' owner; the source's user only replicates.
    postgres
        .client()
        .await
        .unwrap()
        .batch_execute(&format!(
            "{TABLE}; CREATE PUBLICATION shop_changes FOR TABLE orders;
             ALTER ROLE tls_user REPLICATION; GRANT SELECT ON orders TO tls_user"
        ))
        .await
        .unwrap();
    let provider = FakeProvider::start().await;
    let catalog = catalog(provider.url()).replace(
        "tables: [orders] }",
        "tables: [orders], tls: { ca: { secret: PG_CA } } }",
    );
    let dsn = postgres.dsn().replace("user=postgres", "user=tls_user");
    let stack = Processes::start_with_env(
        &catalog,
        &["ingest", "transform", "delivery", "control"],
        &[
            ("CDC_DSN", &format!("{dsn} sslmode=require")),
            ("PG_CA", &pki.ca_pem),
        ],
    )
    .await
    .unwrap();
    eventually(Duration::from_secs(30), "an active reader", || async {
        let status = crate::sources_status(&stack)?;
        (status[0]["active"] == true && status[0]["last_read"].is_string()).then_some(())
    })
    .await;
    let over_tls: bool = postgres
        .client()
        .await
        .unwrap()
        .query_one(
            "SELECT bool_and(s.ssl) FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid)
             WHERE a.usename = 'tls_user'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(
        over_tls,
        "ingest's connections, replication included, use TLS"
    );

    write(postgres.dsn(), 0, 100, Duration::from_millis(10)).await;
    eventually(Duration::from_secs(60), "200 changes delivered", || async {
        (provider.accepted().len() >= 200).then_some(())
    })
    .await;
    postgres.stop().await.unwrap();
    eventually(Duration::from_secs(15), "the outage reported", || async {
        let status = crate::sources_status(&stack)?;
        let error = status[0]["last_error"].as_str()?.to_owned();
        (!error.is_empty()).then_some(())
    })
    .await;
    postgres.resume().await.unwrap();
    write(postgres.dsn(), 100, 200, Duration::from_millis(10)).await;
    eventually(
        Duration::from_secs(120),
        "2,000 changes delivered",
        || async { (provider.accepted().len() >= 2_000).then_some(()) },
    )
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_once_in_commit_order(&provider, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_sigkill_in_the_middle_of_a_transaction_stores_each_of_its_changes_once() {
    let postgres = TestPostgres::start().await.unwrap();
    let admin = postgres.client().await.unwrap();
    admin.batch_execute(TABLE).await.unwrap();
    let mut stack = Processes::start_with_env(
        &catalog("http://127.0.0.1:9"),
        &["ingest"],
        &[
            ("CDC_DSN", &postgres.dsn()),
            ("SWITCHYARD__INGEST__POLL_LEASE_TTL", "2s"),
        ],
    )
    .await
    .unwrap();
    wait_for_slot(&admin).await;
    // One transaction of 20,000 inserts; ingest is killed while it stores them.
    admin
        .batch_execute(
            "INSERT INTO orders SELECT i, 'new', 1, '{}' FROM generate_series(1, 20000) AS i",
        )
        .await
        .unwrap();
    let nats = async_nats::connect(stack.nats.url()).await.unwrap();
    let ingest = async_nats::jetstream::new(nats)
        .get_stream(switchyard_core::topology::INGEST)
        .await
        .unwrap();
    let stored = || async {
        ingest
            .get_info()
            .await
            .map(|info| info.state.messages)
            .unwrap_or(0)
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let count = stored().await;
        if count >= 2_000 {
            assert!(
                count < 20_000,
                "killed in the middle of the transaction ({count} stored)"
            );
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the changes did not start arriving"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    stack.kill("ingest").await;
    let at_kill = stored().await;
    stack.restart("ingest").unwrap();
    eventually(Duration::from_secs(90), "20,000 changes stored", || async {
        (stored().await >= 20_000).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        stored().await,
        20_000,
        "each change once (killed after {at_kill})"
    );
}
