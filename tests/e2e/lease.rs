//! One active delivery process per provider: a standby takes over within 15 s after
//! the active one is killed with SIGKILL, losing nothing.

use std::time::{Duration, Instant};

use switchyard_tests::{FakeProvider, Pipeline, Reply, eventually, service};
use tokio::process::Child;

use crate::{catalog, publish_orders};

fn spawn_delivery(pipeline: &Pipeline, instance: &str) -> Child {
    service("switchyard-delivery", &pipeline.settings)
        .args(["--provider", "crm"])
        .env("SWITCHYARD__DELIVERY__INSTANCE", instance)
        .spawn()
        .expect("switchyard-delivery starts")
}

async fn holder(pipeline: &Pipeline) -> Option<String> {
    let lease = pipeline
        .kv_json("switchyard-leases", "delivery.crm")
        .await?;
    lease["holder"].as_str().map(str::to_owned)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_standby_takes_over_within_15s_after_the_active_replica_is_killed() {
    let provider = FakeProvider::with(|_| Reply::ok().after(Duration::from_millis(20))).await;
    let pipeline = Pipeline::start_without_delivery(&catalog(provider.url()))
        .await
        .unwrap();
    let mut active = spawn_delivery(&pipeline, "replica-a");
    eventually(
        Duration::from_secs(20),
        "replica-a to hold the lease",
        || async { (holder(&pipeline).await.as_deref() == Some("replica-a")).then_some(()) },
    )
    .await;
    let _standby = spawn_delivery(&pipeline, "replica-b");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        holder(&pipeline).await.as_deref(),
        Some("replica-a"),
        "the standby waits"
    );

    let ids: Vec<String> = (0..400).map(|i| format!("k{i}")).collect();
    publish_orders(&pipeline, "order.created", &ids).await;
    provider
        .wait_for_accepted(100, Duration::from_secs(30))
        .await;

    active.start_kill().expect("SIGKILL");
    active.wait().await.unwrap();
    let killed = Instant::now();
    let before = provider.received().len();
    eventually(Duration::from_secs(15), "the standby to send", || async {
        (provider.received().len() > before).then_some(())
    })
    .await;
    let takeover = killed.elapsed();
    eprintln!("takeover after SIGKILL: {takeover:?}");
    assert!(takeover < Duration::from_secs(15), "{takeover:?}");
    assert_eq!(holder(&pipeline).await.as_deref(), Some("replica-b"));

    provider
        .wait_for_accepted(400, Duration::from_secs(60))
        .await;
    pipeline.quiescent().await;
    let received = provider.received();
    let keys = provider.accepted_keys();
    assert_eq!(keys.len(), 400, "every event reached the provider");
    // A provider that honours Idempotency-Key acts on each key once; only the requests
    // the killed replica had in flight may be repeated, with the same key.
    let repeats = received.len() - 400;
    assert!(
        repeats <= 32,
        "{repeats} repeated requests (max_in_flight is 32)"
    );
    eprintln!("requests repeated after the kill: {repeats}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn taking_a_lease_waits_out_nats_being_unavailable() {
    let provider = FakeProvider::start().await;
    let pipeline = Pipeline::start_without_delivery(&catalog(provider.url()))
        .await
        .unwrap();
    // Requests time out long before the server answers again, as while a cluster
    // elects a new leader; a replica standing by must keep trying, not stop.
    let mut jetstream = async_nats::jetstream::new(pipeline.client.clone());
    jetstream.set_timeout(Duration::from_millis(300));
    let shutdown = switchyard_core::shutdown::Shutdown::new();
    let started = Instant::now();
    let stall = pipeline.nats.stall(Duration::from_secs(2));
    let take = async {
        tokio::time::sleep(Duration::from_millis(100)).await;
        switchyard_core::lease::acquire(
            &jetstream,
            "test.unavailable",
            "replica-x",
            Duration::from_secs(10),
            &shutdown,
        )
        .await
    };
    let (stalled, lease) = tokio::join!(stall, take);
    stalled.unwrap();
    assert!(lease.is_some(), "the lease is taken once NATS answers");
    assert!(started.elapsed() >= Duration::from_secs(2));
    let held = pipeline
        .kv_json("switchyard-leases", "test.unavailable")
        .await
        .expect("the lease is stored");
    assert_eq!(held["holder"], "replica-x");
}
