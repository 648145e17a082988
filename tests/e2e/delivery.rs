//! Delivery dead-letters what can never succeed and what ran out of attempts, with the
//! original and the reason, and acks only after the dead letter is stored.

use std::time::Duration;
use switchyard_core::outcome::{ErrorKind, Outcome};

use std::{
    collections::HashMap,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
};

use switchyard_tests::{FakeProvider, Pipeline, Reply, eventually};

use crate::{POLICIES, catalog, catalog_with, order, order_id, publish_orders};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rejections_and_exhausted_retries_go_to_the_dlq_with_the_original() {
    // Order "bad" is refused for good; order "down" always meets a server error.
    let provider = FakeProvider::with(|request| {
        let body = String::from_utf8_lossy(&request.body).into_owned();
        if body.contains("\"bad\"") {
            Reply::status(422).body("{\"error\": \"email is invalid\"}")
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
    assert!(
        header(rejected, "Switchyard-Response-Excerpt").contains("email is invalid"),
        "the dead letter carries an excerpt of the answer"
    );
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_attempt_leaves_an_outcome_record() {
    let provider = FakeProvider::with(|r| {
        if r.attempt == 1 {
            Reply::status(502)
        } else {
            Reply::ok()
        }
    })
    .await;
    let pipeline = Pipeline::start(&catalog(provider.url())).await.unwrap();
    publish_orders(&pipeline, "order.created", &["o1".to_owned()]).await;
    provider.wait_for_accepted(1, Duration::from_secs(10)).await;
    let records = eventually(Duration::from_secs(5), "two outcome records", || async {
        let records = pipeline.outcomes().await;
        (records.len() >= 2).then_some(records)
    })
    .await;
    assert!(records.iter().all(|r| r.attempt().is_some()), "{records:?}");
    assert!(records[0].at.contains('T'), "{records:?}");
    let event_id = provider.accepted()[0]
        .header("switchyard-event-id")
        .unwrap()
        .to_owned();
    let attempts = pipeline.attempts().await;
    for ((provider, record), (attempt, status, category)) in attempts
        .iter()
        .zip([(1, 502, Outcome::Retry), (2, 200, Outcome::Delivered)])
    {
        assert_eq!(provider, "crm");
        assert_eq!(record.route, "orders");
        assert_eq!(record.event_id, event_id);
        assert_eq!(record.attempt, attempt);
        assert_eq!(record.status, Some(status));
        assert_eq!(record.category, category);
        assert!(record.latency_ms >= 0.0);
    }
    assert!(
        attempts[0]
            .1
            .reason
            .as_deref()
            .unwrap()
            .contains("HTTP 502")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_retry_schedule_and_the_classification_are_configurable() {
    // 409 is retryable here and 5xx is not; attempts follow the schedule.
    let provider = FakeProvider::with(|r| match (order_id(r).as_str(), r.attempt) {
        ("conflict", 1 | 2) | ("stuck", _) => Reply::status(409),
        ("broken", _) => Reply::status(500),
        _ => Reply::ok(),
    })
    .await;
    let policies = "
    max_in_flight: 8
    retry:
      schedule: [300ms, 600ms]
      retry_on: [409]
    breaker:
      consecutive_failures: 100";
    let pipeline = Pipeline::start(&catalog_with(provider.url(), policies, ""))
        .await
        .unwrap();
    let ids: Vec<String> = ["conflict", "stuck", "broken"].map(str::to_owned).into();
    publish_orders(&pipeline, "order.created", &ids).await;

    let dead = eventually(Duration::from_secs(20), "two dead letters", || async {
        let dead = pipeline.stream_messages("DLQ").await;
        (dead.len() >= 2).then_some(dead)
    })
    .await;
    provider.wait_for_accepted(1, Duration::from_secs(10)).await;
    let category = |id: &str| {
        dead.iter()
            .find(|m| {
                serde_json::from_slice::<serde_json::Value>(&m.payload).unwrap()["order"] == id
            })
            .and_then(|m| {
                m.headers
                    .get("Switchyard-Failure-Category")
                    .map(|v| v.as_str().to_owned())
            })
    };
    assert_eq!(
        category("broken").as_deref(),
        Some("rejected"),
        "500 is not in retry_on"
    );
    assert_eq!(
        category("stuck").as_deref(),
        Some("exhausted"),
        "three attempts, as the schedule allows"
    );

    let received = provider.received();
    let times = |id: &str| -> Vec<_> {
        received
            .iter()
            .filter(|r| order_id(r) == id)
            .map(|r| r.at)
            .collect()
    };
    let stuck = times("stuck");
    assert_eq!(stuck.len(), 3);
    assert!(
        stuck[1] - stuck[0] >= Duration::from_millis(290),
        "{:?}",
        stuck[1] - stuck[0]
    );
    assert!(
        stuck[2] - stuck[1] >= Duration::from_millis(590),
        "{:?}",
        stuck[2] - stuck[1]
    );
    assert_eq!(times("conflict").len(), 3, "409, 409, then accepted");
    assert_eq!(times("broken").len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delivered_key_is_not_sent_again_when_its_message_comes_back() {
    let provider = FakeProvider::start().await;
    let pipeline = Pipeline::start(&catalog(provider.url())).await.unwrap();
    publish_orders(&pipeline, "order.created", &["once".to_owned()]).await;
    provider.wait_for_accepted(1, Duration::from_secs(10)).await;
    let first = provider.accepted()[0].clone();

    // The same delivery again, as when a 2xx was received but the ack was lost (or a
    // publisher repeats it after the duplicate window).
    let mut headers = async_nats::HeaderMap::new();
    for name in [
        "Switchyard-Event-Id",
        "Switchyard-Route",
        "Switchyard-Mapping",
    ] {
        headers.insert(name, first.header(name).unwrap());
    }
    headers.insert("Nats-Msg-Id", "a-different-message-id");
    pipeline
        .jetstream
        .publish_with_headers("deliver.crm.orders", headers, first.body.clone())
        .await
        .unwrap()
        .await
        .unwrap();
    eventually(
        Duration::from_secs(10),
        "the copy to be settled",
        || async { (pipeline.stream_len("DELIVER").await == 0).then_some(()) },
    )
    .await;
    pipeline.quiescent().await;
    assert_eq!(
        provider.received().len(),
        1,
        "the ledger stopped the resend"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_breaker_opens_stops_sending_and_closes_after_a_good_probe() {
    let healthy = Arc::new(AtomicBool::new(false));
    let flag = healthy.clone();
    let provider = FakeProvider::with(move |_| {
        if flag.load(Ordering::SeqCst) {
            Reply::ok()
        } else {
            Reply::status(500)
        }
    })
    .await;
    // If waiting while open spent attempts, four would not be enough.
    let policies = "
    max_in_flight: 4
    retry:
      max_attempts: 4
      backoff: { initial: 50ms, factor: 2, max: 100ms }
    breaker:
      consecutive_failures: 3
      cool_down: 1s
      max_cool_down: 2s";
    let pipeline = Pipeline::start(&catalog_with(provider.url(), policies, ""))
        .await
        .unwrap();
    let ids: Vec<String> = (0..20).map(|i| format!("b{i}")).collect();
    publish_orders(&pipeline, "order.created", &ids).await;

    let state = eventually(Duration::from_secs(10), "the breaker to open", || async {
        let state = pipeline.kv_json("switchyard-breakers", "crm").await?;
        (state["state"] == "open").then_some(state)
    })
    .await;
    assert!(state["opened_at_ms"].as_i64().is_some());
    tokio::time::sleep(Duration::from_millis(2500)).await;
    healthy.store(true, Ordering::SeqCst);
    provider
        .wait_for_accepted(20, Duration::from_secs(20))
        .await;

    // From the moment it opened until the cool-down ended, nothing was sent (requests
    // already in flight then may still land just after).
    let outcomes = pipeline.outcomes().await;
    let opened = outcomes
        .iter()
        .find(|o| o.breaker().is_some_and(|change| change.to == "open"))
        .map(|o| {
            let at = o.at.as_str();
            std::time::SystemTime::from(
                time::OffsetDateTime::parse(at, &time::format_description::well_known::Rfc3339)
                    .unwrap(),
            )
        })
        .unwrap();
    let received = provider.received();
    let during: Vec<Duration> = received
        .iter()
        .filter_map(|r| r.wall.duration_since(opened).ok())
        .filter(|after| *after > Duration::from_millis(100) && *after < Duration::from_millis(900))
        .collect();
    assert!(
        during.is_empty(),
        "requests while open, at {during:?} after opening"
    );
    let failures = received.iter().filter(|r| r.status == 500).count();
    assert!(
        failures <= 10,
        "only the first failures and the probes: {failures}"
    );
    assert_eq!(
        pipeline.stream_len("DLQ").await,
        0,
        "no attempt was spent waiting"
    );
    let mut per_event: HashMap<String, usize> = HashMap::new();
    for request in received.iter().filter(|r| r.accepted()) {
        *per_event.entry(order_id(request)).or_default() += 1;
    }
    assert!(per_event.len() == 20 && per_event.values().all(|n| *n == 1));

    let transitions: Vec<(String, String)> = pipeline
        .outcomes()
        .await
        .into_iter()
        .filter_map(|o| {
            o.breaker()
                .map(|change| (change.from.clone(), change.to.clone()))
        })
        .collect();
    assert_eq!(
        transitions.first().map(|t| (t.0.as_str(), t.1.as_str())),
        Some(("closed", "open"))
    );
    assert_eq!(
        transitions.last().map(|t| (t.0.as_str(), t.1.as_str())),
        Some(("half_open", "closed"))
    );
    assert!(transitions.iter().any(|t| t.1 == "half_open"));
    let closed = pipeline
        .kv_json("switchyard-breakers", "crm")
        .await
        .unwrap();
    assert_eq!(closed["state"], "closed");

    // Each transition is also a metric.
    let metrics = switchyard_core::metrics::encode();
    assert!(
        metrics.contains("switchyard_breaker_state{provider=\"crm\"} 0"),
        "{metrics}"
    );
    for (from, to) in [
        ("closed", "open"),
        ("open", "half_open"),
        ("half_open", "closed"),
    ] {
        let series = format!(
            "switchyard_breaker_transitions_total{{provider=\"crm\",from=\"{from}\",to=\"{to}\"}}"
        );
        assert!(metrics.contains(&series), "{series} in {metrics}");
    }
    assert!(
        metrics.contains(
            "switchyard_deliveries_total{provider=\"crm\",outcome=\"delivered\",error=\"none\"} 20"
        ),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_request_times_out_and_is_retried() {
    let provider = FakeProvider::with(|r| {
        if r.attempt == 1 {
            Reply::ok().after(Duration::from_secs(5))
        } else {
            Reply::ok()
        }
    })
    .await;
    let pipeline =
        Pipeline::start(&catalog(provider.url()).replace("timeout: 2s", "timeout: 500ms"))
            .await
            .unwrap();
    publish_orders(&pipeline, "order.created", &["slow".to_owned()]).await;
    eventually(Duration::from_secs(15), "a second attempt", || async {
        (provider.received().len() >= 2).then_some(())
    })
    .await;
    let first = eventually(
        Duration::from_secs(5),
        "the outcome of the first attempt",
        || async {
            pipeline
                .attempts()
                .await
                .into_iter()
                .map(|(_, attempt)| attempt)
                .find(|attempt| attempt.attempt == 1)
        },
    )
    .await;
    assert_eq!(first.category, Outcome::Retry);
    assert_eq!(first.error, Some(ErrorKind::Timeout));
    assert!(
        first.reason.as_deref().unwrap().contains("timed out"),
        "{first:?}"
    );
    assert_eq!(first.status, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_provider_keeps_its_message_beyond_the_ack_wait() {
    // 12 s is longer than delivery's 10 s ack wait: without progress acks the server
    // would hand the message out again while the first request is still running.
    let provider = FakeProvider::with(|_| Reply::ok().after(Duration::from_secs(12))).await;
    let pipeline = Pipeline::start(&catalog(provider.url()).replace("timeout: 2s", "timeout: 30s"))
        .await
        .unwrap();
    publish_orders(&pipeline, "order.created", &["patient".to_owned()]).await;
    eventually(
        Duration::from_secs(30),
        "the message to be settled",
        || async {
            let done = pipeline.stream_len("DELIVER").await == 0 && !provider.received().is_empty();
            done.then_some(())
        },
    )
    .await;
    assert_eq!(
        provider.received().len(),
        1,
        "sent once, though it took longer than the ack wait"
    );
}
