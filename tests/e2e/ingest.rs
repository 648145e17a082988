//! Ingest accepts only what it has stored, recognises repeats, and rejects bad input
//! with a clear problem body without publishing anything.

use std::time::Duration;

use switchyard_tests::{FakeProvider, Pipeline};

use crate::{catalog, order};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repeated_idempotency_key_answers_with_the_first_event_and_is_delivered_once() {
    let provider = FakeProvider::start().await;
    let pipeline = Pipeline::start(&catalog(provider.url())).await.unwrap();

    let first = pipeline
        .post("shop", "order.created", &order("d1", 5), Some("key-1"))
        .await;
    assert_eq!(first.status(), 202);
    let first: serde_json::Value = first.json().await.unwrap();
    assert_eq!(first["duplicate"], false);
    let event_id = first["event_id"].as_str().unwrap().to_owned();

    // Same key, even with another body: the first event stands.
    let again = pipeline
        .post("shop", "order.created", &order("d2", 9), Some("key-1"))
        .await;
    assert_eq!(again.status(), 200);
    let again: serde_json::Value = again.json().await.unwrap();
    assert_eq!(again["duplicate"], true);
    assert_eq!(again["event_id"], event_id.as_str());

    // Keys are scoped by source: another event with a new key is not a duplicate.
    let other = pipeline
        .post("shop", "order.created", &order("d3", 1), Some("key-2"))
        .await;
    assert_eq!(other.status(), 202);

    provider.wait_for_accepted(2, Duration::from_secs(20)).await;
    pipeline.quiescent().await;
    assert_eq!(pipeline.stream_len("INGEST").await, 2);
    let received = provider.received();
    assert_eq!(received.len(), 2);
    let delivered = received
        .iter()
        .find(|r| r.header("switchyard-event-id") == Some(event_id.as_str()))
        .expect("the first event is delivered under its id");
    assert_eq!(delivered.json()["order"], "d1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_rejected_with_a_problem_body_and_publishes_nothing() {
    let provider = FakeProvider::start().await;
    let pipeline = Pipeline::start(&catalog(provider.url())).await.unwrap();
    let url = |path: &str| format!("{}{path}", pipeline.ingest_url);
    let json = "application/json";
    let oversized = vec![b' '; pipeline.settings.ingest.max_body_bytes + 1];

    let cases: Vec<(reqwest::RequestBuilder, u16, &str)> = vec![
        (
            pipeline
                .http
                .post(url("/v1/events/nowhere?type=order.created"))
                .header("content-type", json)
                .body("{}"),
            404,
            "no source named \"nowhere\"",
        ),
        (
            pipeline
                .http
                .post(url("/v1/events/shop?type=order.created"))
                .header("content-type", json)
                .body("{\"id\": "),
            400,
            "not valid JSON",
        ),
        (
            pipeline
                .http
                .post(url("/v1/events/shop?type=order.created"))
                .header("content-type", json)
                .body(oversized),
            413,
            "exceeds the limit",
        ),
        (
            pipeline
                .http
                .post(url("/v1/events/shop"))
                .header("content-type", json)
                .body("{}"),
            400,
            "`type`",
        ),
        (
            pipeline
                .http
                .post(url("/v1/events/shop?type=order..created"))
                .header("content-type", json)
                .body("{}"),
            400,
            "empty segment",
        ),
        (
            pipeline
                .http
                .post(url("/v1/events/shop?type=order.created"))
                .header("content-type", "text/plain")
                .body("{}"),
            415,
            "text/plain",
        ),
        (
            pipeline
                .http
                .post(url("/v1/events/shop?type=order.created"))
                .header("content-type", json)
                .header("idempotency-key", "has space")
                .body("{}"),
            400,
            "Idempotency-Key",
        ),
    ];
    for (request, status, detail) in cases {
        let response = request.send().await.unwrap();
        assert_eq!(
            response.status().as_u16(),
            status,
            "expected {status} for {detail}"
        );
        assert_eq!(
            response.headers()["content-type"],
            "application/problem+json",
            "problem body for {status}"
        );
        let problem: serde_json::Value = response.json().await.unwrap();
        assert_eq!(problem["status"], status);
        let text = problem["detail"].as_str().unwrap();
        assert!(
            text.contains(detail),
            "{status}: {text:?} should mention {detail:?}"
        );
    }

    assert_eq!(
        pipeline.stream_len("INGEST").await,
        0,
        "nothing was published"
    );
    assert!(provider.received().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_copy_arriving_after_the_duplicate_window_keeps_its_id_and_is_not_delivered_again() {
    let provider = FakeProvider::start().await;
    let nats = switchyard_tests::TestNats::start().await.unwrap();
    let mut settings = Pipeline::settings(nats.url());
    settings.topology.duplicate_window = Duration::from_secs(1);
    let pipeline = Pipeline::start_with(nats, settings, &catalog(provider.url()))
        .await
        .unwrap();

    let first = pipeline
        .post("shop", "order.created", &order("late", 5), Some("late-1"))
        .await;
    assert_eq!(first.status(), 202);
    let first: serde_json::Value = first.json().await.unwrap();
    provider.wait_for_accepted(1, Duration::from_secs(20)).await;

    // The sender retries long after the window: stored again, but under the same id.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let late = pipeline
        .post("shop", "order.created", &order("late", 5), Some("late-1"))
        .await;
    assert_eq!(late.status(), 202);
    let late: serde_json::Value = late.json().await.unwrap();
    assert_eq!(late["event_id"], first["event_id"]);
    switchyard_tests::eventually(Duration::from_secs(10), "the copy routed", || async {
        (pipeline.stream_len("INGEST").await == 2 && pipeline.stream_len("DELIVER").await == 0)
            .then_some(())
    })
    .await;
    pipeline.quiescent().await;
    assert_eq!(
        provider.received().len(),
        1,
        "delivery's ledger knew the id"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_s_traceparent_is_continued_to_the_provider() {
    let provider = FakeProvider::start().await;
    let pipeline = Pipeline::start(&catalog(provider.url())).await.unwrap();
    let caller_trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let status = pipeline
        .http
        .post(format!(
            "{}/v1/events/shop?type=order.created",
            pipeline.ingest_url
        ))
        .header(
            "traceparent",
            format!("00-{caller_trace}-00f067aa0ba902b7-01"),
        )
        .json(&order("t1", 1))
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(status, 202);
    pipeline
        .post("shop", "order.created", &order("t2", 2), None)
        .await;
    provider.wait_for_accepted(2, Duration::from_secs(10)).await;
    let trace_of = |order: &str| {
        let received = provider.received();
        let request = received
            .iter()
            .find(|r| r.json()["order"] == order)
            .unwrap();
        let traceparent = request.header("traceparent").unwrap().to_owned();
        traceparent.split('-').nth(1).unwrap().to_owned()
    };
    assert_eq!(trace_of("t1"), caller_trace, "the caller's trace goes on");
    let own = trace_of("t2");
    assert_ne!(
        own, caller_trace,
        "a request without traceparent starts its own"
    );
    assert_eq!(own.len(), 32);
}
