//! Delivery dead-letters what can never succeed and what ran out of attempts, with the
//! original and the reason, and acks only after the dead letter is stored.

use std::time::Duration;

use switchyard_tests::{FakeProvider, Pipeline, Reply, eventually};

use crate::{POLICIES, catalog_with, order};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rejections_and_exhausted_retries_go_to_the_dlq_with_the_original() {
    // Order "bad" is refused for good; order "down" always meets a server error.
    let provider = FakeProvider::with(|request| {
        let body = String::from_utf8_lossy(&request.body).into_owned();
        if body.contains("\"bad\"") {
            Reply::status(422)
        } else if body.contains("\"down\"") {
            Reply::status(500)
        } else {
            Reply::ok()
        }
    })
    .await;
    let policies = POLICIES.replace("max_attempts: 5", "max_attempts: 3");
    let pipeline = Pipeline::start(&catalog_with(provider.url(), &policies, ""))
        .await
        .unwrap();
    for id in ["bad", "down", "good"] {
        let response = pipeline
            .post("shop", "order.created", &order(id, 1), Some(id))
            .await;
        assert_eq!(response.status(), 202);
    }

    let dead = eventually(Duration::from_secs(30), "two dead letters", || async {
        let dead = pipeline.stream_messages("DLQ").await;
        (dead.len() >= 2).then_some(dead)
    })
    .await;
    let find = |category: &str| {
        dead.iter()
            .find(|m| {
                m.headers
                    .get("Switchyard-Failure-Category")
                    .map(|v| v.as_str())
                    == Some(category)
            })
            .unwrap_or_else(|| panic!("a {category} dead letter"))
    };
    let header = |m: &async_nats::jetstream::message::StreamMessage, name: &str| {
        m.headers
            .get(name)
            .map(|v| v.as_str().to_owned())
            .unwrap_or_default()
    };

    let rejected = find("rejected");
    assert_eq!(rejected.subject.as_str(), "dlq.crm");
    assert_eq!(header(rejected, "Switchyard-Last-Status"), "422");
    assert_eq!(
        header(rejected, "Switchyard-Attempts"),
        "1",
        "a 4xx is not retried"
    );
    assert!(header(rejected, "Switchyard-Failure-Reason").contains("HTTP 422"));
    let body: serde_json::Value = serde_json::from_slice(&rejected.payload).unwrap();
    assert_eq!(
        body["order"], "bad",
        "the dead letter keeps the body that was sent"
    );

    let exhausted = find("exhausted");
    assert_eq!(header(exhausted, "Switchyard-Last-Status"), "500");
    assert_eq!(header(exhausted, "Switchyard-Attempts"), "3");

    let received = provider.received();
    let count = |id: &str| received.iter().filter(|r| r.json()["order"] == id).count();
    assert_eq!(count("bad"), 1);
    assert_eq!(count("down"), 3, "every attempt, and no more");
    assert_eq!(count("good"), 1);

    // Dead-lettered messages were acked: nothing is left owed to the provider.
    eventually(
        Duration::from_secs(10),
        "an empty DELIVER stream",
        || async { (pipeline.stream_len("DELIVER").await == 0).then_some(()) },
    )
    .await;
    assert_eq!(pipeline.stream_len("DLQ").await, 2);
    let outcomes = pipeline.stream_len("OUTCOMES").await;
    assert_eq!(outcomes, 5, "one outcome record per attempt");
}
