//! Events with the same ordering key reach the provider in ingest order even while
//! one of them is being retried, and with any number of transform replicas; other keys
//! are not held up.

use std::collections::{BTreeMap, HashSet};

use std::time::Duration;

use switchyard_tests::{FakeProvider, Pipeline, Reply};

use crate::{catalog_with, order_id, publish_events};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn per_key_order_holds_with_three_transform_replicas_and_failing_attempts() {
    const KEYS: usize = 50;
    const PER_KEY: usize = 100;
    // One attempt in ten fails, whichever event it is.
    let provider = FakeProvider::with(|_| {
        if fastrand::u8(..10) == 0 {
            Reply::status(503)
        } else {
            Reply::ok()
        }
    })
    .await;
    let policies = "
    max_in_flight: 64
    retry:
      schedule: [50ms]
      max_attempts: 30";
    let route = "
    ordering_key: .customer";
    let pipeline = Pipeline::start(&catalog_with(provider.url(), policies, route))
        .await
        .unwrap();
    // Three replicas share the INGEST consumer, each publishing what it pulled as soon
    // as it is mapped: same-key events reach DELIVER in either order.
    pipeline.start_transform();
    pipeline.start_transform();

    // What transform stored in DELIVER, in the order it was stored.
    let mut stored = pipeline.client.subscribe("deliver.crm.>").await.unwrap();
    let stored_order = tokio::spawn(async move {
        let mut order = Vec::new();
        while let Ok(Some(message)) = tokio::time::timeout(
            Duration::from_secs(10),
            futures::StreamExt::next(&mut stored),
        )
        .await
        {
            let body: serde_json::Value = serde_json::from_slice(&message.payload).unwrap();
            order.push(body["order"].as_str().unwrap().to_owned());
        }
        order
    });

    // Keys interleaved, each key's events in order: k0-1, k1-1, …, k49-1, k0-2, …
    let events = (1..=PER_KEY).flat_map(|n| {
        (0..KEYS).map(move |key| {
            let id = format!("k{key}-{n}");
            let body = serde_json::json!({"id": id, "email": "x@y.z", "total": n, "customer": format!("k{key}")});
            (id, body)
        })
    });
    publish_events(&pipeline.jetstream, "order.created", events).await;
    provider
        .wait_for_accepted(KEYS * PER_KEY, Duration::from_secs(240))
        .await;
    pipeline.quiescent().await;

    let accepted = provider.accepted();
    let distinct: HashSet<String> = accepted.iter().map(order_id).collect();
    assert_eq!(distinct.len(), KEYS * PER_KEY, "every event arrived");
    assert_eq!(accepted.len(), KEYS * PER_KEY, "none arrived twice");
    let failed = provider.received().len() - accepted.len();
    assert!(failed > 0, "some attempts failed");
    let mut per_key: BTreeMap<String, Vec<usize>> = BTreeMap::new();
    for request in &accepted {
        let id = order_id(request);
        let (key, n) = id.split_once('-').unwrap();
        per_key
            .entry(key.to_owned())
            .or_default()
            .push(n.parse().unwrap());
    }
    let in_order: Vec<usize> = (1..=PER_KEY).collect();
    for (key, arrived) in &per_key {
        assert_eq!(arrived, &in_order, "key {key} kept its order");
    }
    assert_eq!(per_key.len(), KEYS);
    assert_eq!(pipeline.stream_len("DLQ").await, 0);

    // The replicas did store some key's events out of order, or this proves nothing.
    let stored = stored_order.await.unwrap();
    let mut last: BTreeMap<&str, usize> = BTreeMap::new();
    let mut inversions = 0;
    for id in &stored {
        let (key, n) = id.split_once('-').unwrap();
        let n: usize = n.parse().unwrap();
        let before = last.entry(key).or_default();
        if n < *before {
            inversions += 1;
        }
        *before = (*before).max(n);
    }
    eprintln!(
        "{failed} failed attempts; {inversions} of {} events stored in DELIVER after a later one of their key",
        stored.len()
    );
    assert!(
        inversions > 0,
        "the three replicas stored every key in order"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn same_key_in_order_through_retries_and_other_keys_not_held_up() {
    // a1 fails three times before it is accepted.
    let provider = FakeProvider::with(|r| {
        if order_id(r) == "a1" && r.attempt <= 3 {
            Reply::status(500)
        } else {
            Reply::ok()
        }
    })
    .await;
    let policies = "
    max_in_flight: 16
    retry:
      schedule: [700ms]
      max_attempts: 6";
    let route = "
    ordering_key: .customer";
    let pipeline = Pipeline::start(&catalog_with(provider.url(), policies, route))
        .await
        .unwrap();

    let events = (1..=5).flat_map(|i| {
        ["a", "b"].map(|customer| {
            let id = format!("{customer}{i}");
            let body =
                serde_json::json!({"id": id, "email": "x@y.z", "total": i, "customer": customer});
            (id, body)
        })
    });
    publish_events(&pipeline.jetstream, "order.created", events).await;
    provider
        .wait_for_accepted(10, Duration::from_secs(30))
        .await;
    pipeline.quiescent().await;

    let accepted = provider.accepted();
    let order_of = |customer: &str| -> Vec<String> {
        accepted
            .iter()
            .map(order_id)
            .filter(|id| id.starts_with(customer))
            .collect()
    };
    assert_eq!(
        order_of("a"),
        ["a1", "a2", "a3", "a4", "a5"],
        "a's events kept their order"
    );
    assert_eq!(order_of("b"), ["b1", "b2", "b3", "b4", "b5"]);
    let at = |id: &str| accepted.iter().find(|r| order_id(r) == id).unwrap().at;
    assert!(at("b5") < at("a1"), "b was not held up by a1's retries");
    assert_eq!(accepted.len(), 10);
    let key = accepted[0].header("switchyard-event-id").map(|_| ());
    assert!(key.is_some());
    assert_eq!(pipeline.stream_len("DLQ").await, 0);
}
