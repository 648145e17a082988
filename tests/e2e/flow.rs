//! Events flow from HTTP and from any NATS client to the provider exactly once, through
//! provider failures and delivery restarts.

use std::{collections::HashMap, time::Duration};

use futures::{StreamExt, stream};
use switchyard_tests::{FakeProvider, Pipeline, Reply};

use crate::{catalog, catalog_with, order, publish_events};

/// Asserts every event in `ids` was accepted exactly once with the mapped body, and
/// that nothing else was sent.
fn assert_exactly_once(provider: &FakeProvider, ids: &[String], totals: &HashMap<String, i64>) {
    let accepted = provider.accepted();
    let mut by_order: HashMap<String, usize> = HashMap::new();
    for request in &accepted {
        let body = request.json();
        let id = body["order"].as_str().expect("mapped order id").to_owned();
        assert_eq!(
            body["email"],
            format!("user-{id}@shop.example"),
            "mapped email of {id}"
        );
        assert_eq!(body["cents"], totals[&id] * 100, "mapped cents of {id}");
        assert_eq!(request.method, "POST");
        assert_eq!(request.path, "/contacts");
        assert_eq!(request.header("content-type"), Some("application/json"));
        assert_eq!(
            request.header("switchyard-mapping"),
            Some("order-to-contact@1")
        );
        *by_order.entry(id).or_default() += 1;
    }
    let doubled: Vec<_> = by_order.iter().filter(|(_, n)| **n > 1).collect();
    assert!(doubled.is_empty(), "delivered more than once: {doubled:?}");
    let missing: Vec<_> = ids
        .iter()
        .filter(|id| !by_order.contains_key(*id))
        .collect();
    assert!(missing.is_empty(), "never delivered: {missing:?}");
    assert_eq!(accepted.len(), ids.len());
    assert_eq!(
        provider.accepted_keys().len(),
        ids.len(),
        "one idempotency key per event"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_event_from_http_and_from_nats_reaches_the_provider_exactly_once_mapped() {
    let provider = FakeProvider::start().await;
    let pipeline = Pipeline::start(&catalog(provider.url())).await.unwrap();
    let mut totals = HashMap::new();
    let http_ids: Vec<String> = (0..1000).map(|i| format!("h{i}")).collect();
    let nats_ids: Vec<String> = (0..1000).map(|i| format!("n{i}")).collect();
    for (i, id) in http_ids.iter().chain(&nats_ids).enumerate() {
        totals.insert(id.clone(), i as i64);
    }

    let posted = stream::iter(&http_ids)
        .map(|id| {
            let (pipeline, totals) = (&pipeline, &totals);
            async move {
                pipeline
                    .post("shop", "order.created", &order(id, totals[id]), Some(id))
                    .await
                    .status()
            }
        })
        .buffer_unordered(32)
        .collect::<Vec<_>>()
        .await;
    assert!(
        posted.iter().all(|status| status.as_u16() == 202),
        "{posted:?}"
    );

    // A plain NATS client, as any third party would publish.
    let events = nats_ids
        .iter()
        .map(|id| (id.clone(), order(id, totals[id])));
    publish_events(&pipeline.jetstream, "order.paid", events).await;

    provider
        .wait_for_accepted(2000, Duration::from_secs(90))
        .await;
    // Once the pipeline is at rest, nothing more can arrive.
    pipeline.quiescent().await;
    let all: Vec<String> = http_ids.into_iter().chain(nats_ids).collect();
    assert_exactly_once(&provider, &all, &totals);
    assert_eq!(
        provider.received().len(),
        2000,
        "no request beyond one per event"
    );
    assert_eq!(pipeline.stream_len("DLQ").await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_provider_that_fails_the_first_attempts_still_gets_every_event() {
    // 503 to the first two attempts of every event, then success.
    let provider = FakeProvider::with(|request| {
        if request.attempt <= 2 {
            Reply::status(503)
        } else {
            Reply::ok()
        }
    })
    .await;
    // This test is about retries: a breaker would (rightly) trip on a provider that
    // fails two requests in three, so it is set not to.
    let policies = "
    max_in_flight: 32
    retry:
      max_attempts: 5
      backoff: { initial: 50ms, factor: 2, max: 400ms }
    breaker:
      consecutive_failures: 1000000
      min_requests: 1000000";
    let pipeline = Pipeline::start(&catalog_with(provider.url(), policies, ""))
        .await
        .unwrap();
    let ids: Vec<String> = (0..200).map(|i| format!("o{i}")).collect();
    let totals: HashMap<String, i64> = ids.iter().map(|id| (id.clone(), 7)).collect();
    for id in &ids {
        let response = pipeline
            .post("shop", "order.created", &order(id, 7), Some(id))
            .await;
        assert_eq!(response.status(), 202);
    }

    provider
        .wait_for_accepted(200, Duration::from_secs(60))
        .await;
    pipeline.quiescent().await;
    assert_exactly_once(&provider, &ids, &totals);
    let received = provider.received();
    assert_eq!(received.len(), 600, "three attempts per event, no more");
    let mut attempts_per_key: HashMap<&str, Vec<usize>> = HashMap::new();
    for request in &received {
        attempts_per_key
            .entry(request.idempotency_key())
            .or_default()
            .push(request.attempt);
        assert!(
            request.header("switchyard-attempt").is_some(),
            "attempt number is sent"
        );
    }
    assert!(
        attempts_per_key.values().all(|a| a.len() == 3),
        "the same key on every retry"
    );
    assert_eq!(pipeline.stream_len("DLQ").await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn restarting_the_delivery_service_mid_run_loses_nothing() {
    let provider = FakeProvider::with(|_| Reply::ok().after(Duration::from_millis(5))).await;
    let pipeline = Pipeline::start(&catalog(provider.url())).await.unwrap();
    let ids: Vec<String> = (0..600).map(|i| format!("r{i}")).collect();
    let totals: HashMap<String, i64> = ids.iter().map(|id| (id.clone(), 3)).collect();
    let posting = async {
        for id in &ids {
            let response = pipeline
                .post("shop", "order.created", &order(id, 3), Some(id))
                .await;
            assert_eq!(response.status(), 202);
        }
    };
    let restarting = async {
        provider
            .wait_for_accepted(100, Duration::from_secs(30))
            .await;
        pipeline.stop_delivery("crm").await;
        let while_stopped = provider.accepted().len();
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(
            provider.accepted().len(),
            while_stopped,
            "a stopped delivery sends nothing"
        );
        pipeline.start_delivery("crm");
    };
    tokio::join!(posting, restarting);

    provider
        .wait_for_accepted(600, Duration::from_secs(60))
        .await;
    pipeline.quiescent().await;
    assert_exactly_once(&provider, &ids, &totals);
    assert_eq!(
        provider.received().len(),
        600,
        "nothing sent twice across the restart"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_mapping_error_dead_letters_the_original_with_the_reason() {
    let provider = FakeProvider::start().await;
    let pipeline = Pipeline::start(&catalog(provider.url())).await.unwrap();
    let broken = serde_json::json!({"id": "b1", "total": 1});
    assert_eq!(
        pipeline
            .post("shop", "order.created", &broken, None)
            .await
            .status(),
        202
    );
    let fine = order("f1", 2);
    assert_eq!(
        pipeline
            .post("shop", "order.created", &fine, None)
            .await
            .status(),
        202
    );

    provider.wait_for_accepted(1, Duration::from_secs(20)).await;
    let dead = switchyard_tests::eventually(Duration::from_secs(20), "a dead letter", || async {
        pipeline.stream_messages("DLQ").await.into_iter().next()
    })
    .await;
    assert_eq!(dead.subject.as_str(), "dlq.crm");
    let header = |name: &str| dead.headers.get(name).map(|v| v.as_str().to_owned());
    assert_eq!(
        header("Switchyard-Failure-Category").as_deref(),
        Some("mapping")
    );
    assert_eq!(header("Switchyard-Route").as_deref(), Some("orders"));
    assert_eq!(
        header("Switchyard-Mapping").as_deref(),
        Some("order-to-contact@1")
    );
    let reason = header("Switchyard-Failure-Reason").unwrap();
    assert!(
        reason.contains("downcase") && reason.contains("null"),
        "{reason}"
    );
    let original: serde_json::Value = serde_json::from_slice(&dead.payload).unwrap();
    assert_eq!(original, broken, "the original body is kept intact");
    assert_eq!(provider.accepted()[0].json()["order"], "f1");
    assert_eq!(provider.received().len(), 1);
}
