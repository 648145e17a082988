//! 10,000 events to a provider that fails 30% of requests with 500 and 5% with 429:
//! each event is accepted exactly once.

use std::{collections::HashMap, time::Duration};

use switchyard_tests::{FakeProvider, Pipeline, Reply};

use crate::{catalog_with, order_id, publish_orders};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ten_thousand_events_through_failures_and_rate_limits_exactly_once() {
    let provider = FakeProvider::with(|_| {
        let roll = fastrand::u32(0..100);
        match roll {
            0..30 => Reply::status(500),
            30..33 => Reply::status(429),
            33..35 => Reply::status(429).header("Retry-After", "0"),
            _ => Reply::ok(),
        }
    })
    .await;
    // Quick retries and enough of them; the breaker is set not to trip, since this test
    // is about exactly-once delivery through failures.
    let policies = "
    max_in_flight: 64
    retry:
      max_attempts: 40
      backoff: { initial: 5ms, factor: 2, max: 50ms }
    breaker:
      consecutive_failures: 1000
      min_requests: 1000000";
    let pipeline = Pipeline::start(&catalog_with(provider.url(), policies, ""))
        .await
        .unwrap();
    let ids: Vec<String> = (0..10_000).map(|i| format!("c{i}")).collect();
    publish_orders(&pipeline, "order.created", &ids).await;

    provider
        .wait_for_accepted(10_000, Duration::from_secs(240))
        .await;
    pipeline.quiescent().await;
    let received = provider.received();
    let mut accepted_per_key: HashMap<&str, usize> = HashMap::new();
    for request in received.iter().filter(|r| r.accepted()) {
        *accepted_per_key
            .entry(request.idempotency_key())
            .or_default() += 1;
    }
    let twice: Vec<_> = accepted_per_key.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "accepted more than once: {twice:?}");
    assert_eq!(accepted_per_key.len(), 10_000);
    let ids_seen: std::collections::HashSet<String> = received
        .iter()
        .filter(|r| r.accepted())
        .map(order_id)
        .collect();
    assert_eq!(ids_seen.len(), 10_000);
    assert_eq!(pipeline.stream_len("DLQ").await, 0);
    let failed = received.iter().filter(|r| !r.accepted()).count();
    eprintln!(
        "chaos: sent 10000, delivered {}, duplicates 0, lost 0; {} requests, {failed} failed",
        accepted_per_key.len(),
        received.len()
    );
}
