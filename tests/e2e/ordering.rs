//! Events with the same ordering key reach the provider in ingest order even while
//! one of them is being retried; other keys are not held up.

use std::time::Duration;

use switchyard_tests::{FakeProvider, Pipeline, Reply};

use crate::{catalog_with, order_id, publish_events};

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
