//! Batches in and out: many events per ingest request, many per provider request, and
//! each event still delivered exactly once, retried and dead-lettered on its own.

use std::{
    collections::{HashMap, HashSet},
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use serde_json::{Value, json};
use switchyard_core::outcome::Outcome;
use switchyard_tests::{FakeProvider, Pipeline, Received, Reply, eventually, processes::Processes};

use crate::{assert_paced, catalog_with, order, publish_events, publish_orders};

/// The order ids a batch request carried, in body order (`[{"order": …}, …]`, or
/// `[[{"order": …}, key], …]` when the batch program adds each member's key).
fn members(request: &Received) -> Vec<String> {
    let Value::Array(items) = request.json() else {
        panic!("a batch body is an array");
    };
    items
        .iter()
        .map(|item| {
            let body = if item.is_array() { &item[0] } else { item };
            body["order"].as_str().unwrap_or_default().to_owned()
        })
        .collect()
}

/// How often each order id was accepted, over every accepted batch request.
fn accepted_members(provider: &FakeProvider) -> HashMap<String, usize> {
    let mut seen = HashMap::new();
    for request in provider.accepted() {
        for id in members(&request) {
            *seen.entry(id).or_default() += 1;
        }
    }
    seen
}

async fn wait_for_members(provider: &FakeProvider, count: usize, timeout: Duration) {
    eventually(timeout, &format!("{count} delivered members"), || async {
        (accepted_members(provider).len() >= count).then_some(())
    })
    .await;
}

fn assert_each_once(seen: &HashMap<String, usize>, count: usize) {
    let twice: Vec<_> = seen.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "delivered more than once: {twice:?}");
    assert_eq!(seen.len(), count, "every member delivered");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ten_thousand_events_fit_under_five_requests_a_second_in_batches_of_100() {
    let provider = FakeProvider::start().await;
    let policies = "
    max_in_flight: 8
    rate_limit: { requests: 5, per: 1s, burst: 5 }
    batch: { max_events: 100, max_bytes: 1MiB, max_wait: 500ms }";
    let pipeline = Pipeline::start(&catalog_with(provider.url(), policies, ""))
        .await
        .unwrap();
    let started = Instant::now();
    let ids: Vec<String> = (0..10_000).map(|i| format!("n{i}")).collect();
    publish_orders(&pipeline, "order.created", &ids).await;
    wait_for_members(&provider, 10_000, Duration::from_secs(25)).await;
    let took = started.elapsed();
    pipeline.quiescent().await;

    let seen = accepted_members(&provider);
    assert_each_once(&seen, 10_000);
    let received = provider.received();
    let arrivals: Vec<Instant> = received.iter().map(|r| r.at).collect();
    assert_paced(
        &arrivals,
        5.0,
        5,
        &[
            Duration::from_secs(1),
            Duration::from_secs(2),
            Duration::from_secs(5),
        ],
    );
    let first = &received[0];
    assert_eq!(first.header("content-type"), Some("application/json"));
    assert_eq!(
        first.header("switchyard-batch-size"),
        Some(members(first).len().to_string().as_str())
    );
    assert!(first.idempotency_key().starts_with("batch-"));
    eprintln!(
        "batches: 10,000 events in {} requests in {:.1}s",
        received.len(),
        took.as_secs_f64()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_batch_answered_503_twice_then_200_delivers_every_member_once() {
    let calls = Arc::new(AtomicUsize::new(0));
    let counter = calls.clone();
    let provider = FakeProvider::with(move |_| {
        if counter.fetch_add(1, Ordering::SeqCst) < 2 {
            Reply::status(503)
        } else {
            Reply::ok()
        }
    })
    .await;
    let policies = "
    batch: { max_events: 100, max_wait: 1s }
    retry: { schedule: [300ms], max_attempts: 5 }";
    let pipeline = Pipeline::start(&catalog_with(provider.url(), policies, ""))
        .await
        .unwrap();
    let ids: Vec<String> = (0..100).map(|i| format!("r{i}")).collect();
    publish_orders(&pipeline, "order.created", &ids).await;
    wait_for_members(&provider, 100, Duration::from_secs(30)).await;
    pipeline.quiescent().await;

    assert_each_once(&accepted_members(&provider), 100);
    let received = provider.received();
    assert_eq!(received[0].status, 503);
    assert_eq!(received[1].status, 503);
    // The same members always make the same key, so a provider can deduplicate.
    let mut keys: HashMap<Vec<String>, HashSet<String>> = HashMap::new();
    for request in &received {
        let mut set = members(request);
        set.sort();
        keys.entry(set)
            .or_default()
            .insert(request.idempotency_key().to_owned());
    }
    assert!(keys.values().all(|keys| keys.len() == 1), "{keys:?}");
    let attempts = pipeline.attempts().await;
    let delivered: Vec<_> = attempts
        .iter()
        .filter(|(_, a)| a.category == Outcome::Delivered)
        .collect();
    assert_eq!(delivered.len(), 100, "one delivered record per member");
    assert!(attempts.iter().all(|(_, a)| a.batch.is_some()));
    let retried = attempts
        .iter()
        .filter(|(_, a)| a.category == Outcome::Retry)
        .count();
    assert!(
        retried >= 200,
        "each member of the two failed batches is retried: {retried}"
    );
    assert_eq!(pipeline.stream_len("DLQ").await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn per_item_results_retry_or_dead_letter_only_the_failed_members() {
    let refused = ["i13", "i57"];
    let provider = FakeProvider::with(move |request| {
        let results: Vec<Value> = members(request)
            .iter()
            .map(|id| {
                if refused.contains(&id.as_str()) {
                    json!({"ok": false, "error": format!("{id} refused: email bounced")})
                } else {
                    json!({"ok": true})
                }
            })
            .collect();
        Reply::status(207).body(json!({ "results": results }).to_string())
    })
    .await;
    let policies = r#"
    batch: { max_events: 100, max_wait: 1s }
    batch_results: |
      map_values(array!(.body.results)) -> |r| {
        if r.ok == true { 200 } else { {"status": 422, "reason": r.error} }
      }"#;
    let pipeline = Pipeline::start(&catalog_with(provider.url(), policies, ""))
        .await
        .unwrap();
    let ids: Vec<String> = (0..100).map(|i| format!("i{i}")).collect();
    publish_orders(&pipeline, "order.created", &ids).await;
    let dead = eventually(Duration::from_secs(30), "two dead letters", || async {
        let dead = pipeline.stream_messages("DLQ").await;
        (dead.len() >= 2).then_some(dead)
    })
    .await;
    pipeline.quiescent().await;

    // Every member was sent once: the 98 that succeeded are not sent again, the two
    // refused ones are not retried (422 is permanent) but dead-lettered.
    assert_each_once(&accepted_members(&provider), 100);
    assert_eq!(dead.len(), 2);
    let mut reasons: Vec<String> = dead
        .iter()
        .map(|m| {
            m.headers
                .get("Switchyard-Failure-Reason")
                .map(|v| v.as_str().to_owned())
                .unwrap_or_default()
        })
        .collect();
    reasons.sort();
    assert_eq!(
        reasons,
        [
            "HTTP 422: item result: i13 refused: email bounced",
            "HTTP 422: item result: i57 refused: email bounced"
        ]
    );
    let attempts = pipeline.attempts().await;
    let count = |outcome: Outcome| {
        attempts
            .iter()
            .filter(|(_, a)| a.category == outcome)
            .count()
    };
    assert_eq!(count(Outcome::Delivered), 98);
    assert_eq!(count(Outcome::Rejected), 2);
    let batches: HashSet<_> = attempts
        .iter()
        .filter_map(|(_, a)| a.batch.clone())
        .collect();
    assert_eq!(
        batches.len(),
        provider.received().len(),
        "each record names its batch"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn same_key_events_keep_their_order_within_and_across_batches() {
    // One request in five fails, whatever it carries.
    let provider = FakeProvider::with(|_| {
        if fastrand::u8(0..5) == 0 {
            Reply::status(500)
        } else {
            Reply::ok()
        }
    })
    .await;
    let policies = "
    max_in_flight: 4
    batch: { max_events: 50, max_wait: 100ms }
    retry: { schedule: [100ms], max_attempts: 30 }
    breaker: { consecutive_failures: 1000, min_requests: 1000000 }";
    let route = "
    ordering_key: .customer";
    let pipeline = Pipeline::start(&catalog_with(provider.url(), policies, route))
        .await
        .unwrap();
    let events = (0..30).flat_map(|i| {
        (0..10).map(move |customer| {
            let id = format!("c{customer}-{i:02}");
            let mut body = order(&id, i);
            body["customer"] = json!(customer);
            (id, body)
        })
    });
    publish_events(&pipeline.jetstream, "order.created", events).await;
    wait_for_members(&provider, 300, Duration::from_secs(60)).await;
    pipeline.quiescent().await;

    assert_each_once(&accepted_members(&provider), 300);
    let mut per_customer: HashMap<String, Vec<String>> = HashMap::new();
    for request in provider.accepted() {
        for id in members(&request) {
            let customer = id.split('-').next().unwrap().to_owned();
            per_customer.entry(customer).or_default().push(id);
        }
    }
    for (customer, got) in &per_customer {
        let mut sorted = got.clone();
        sorted.sort();
        assert_eq!(got, &sorted, "{customer}'s events kept their order");
    }
    let failed = provider.received().iter().filter(|r| !r.accepted()).count();
    assert!(failed > 0, "some batches failed and were retried");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigkill_of_delivery_mid_batch_loses_and_doubles_no_member() {
    let provider = FakeProvider::with(|_| Reply::ok().after(Duration::from_millis(200))).await;
    // The batch program puts each member's own idempotency key beside its body, as a
    // bulk API that deduplicates records wants it.
    let policies = "
    max_in_flight: 4
    batch: { max_events: 50, max_wait: 200ms }
    batch_program: '. = zip(array!(.), array!(%idempotency_keys))'";
    let mut stack = Processes::start(
        &catalog_with(provider.url(), policies, ""),
        &["transform", "delivery"],
    )
    .await
    .unwrap();
    let client = async_nats::connect(stack.nats.url()).await.unwrap();
    let jetstream = async_nats::jetstream::new(client);
    let publisher = tokio::spawn(async move {
        for chunk in 0..20 {
            let events = (0..100).map(|i| {
                let id = format!("k{}", chunk * 100 + i);
                let body = order(&id, i);
                (id, body)
            });
            publish_events(&jetstream, "order.created", events).await;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    wait_for_members(&provider, 300, Duration::from_secs(60)).await;
    stack.kill("delivery").await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    stack.restart("delivery").unwrap();
    publisher.await.unwrap();
    wait_for_members(&provider, 2_000, Duration::from_secs(90)).await;
    // Anything still owed would arrive late as a duplicate.
    tokio::time::sleep(Duration::from_secs(2)).await;

    // By member key: an event accepted under two keys would be acted on twice by a
    // provider that deduplicates; a resend under the same key would not.
    let mut keys_per_event: HashMap<String, HashSet<String>> = HashMap::new();
    let mut resends = 0;
    for request in provider.accepted() {
        let Value::Array(items) = request.json() else {
            panic!("an array of [body, key]");
        };
        for item in items {
            let id = item[0]["order"].as_str().unwrap().to_owned();
            let key = item[1].as_str().unwrap().to_owned();
            if !keys_per_event.entry(id).or_default().insert(key) {
                resends += 1;
            }
        }
    }
    let doubled: Vec<_> = keys_per_event.iter().filter(|(_, k)| k.len() > 1).collect();
    assert!(doubled.is_empty(), "members under two keys: {doubled:?}");
    assert_eq!(keys_per_event.len(), 2_000, "no member lost");
    eprintln!(
        "batches after SIGKILL: 2,000 members, 0 lost, 0 doubled, {resends} resent under their own key"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn batch_ingest_stores_the_valid_items_and_names_the_path_of_each_invalid_one() {
    let provider = FakeProvider::start().await;
    let catalog = catalog_with(provider.url(), "\n    max_in_flight: 64", "").replace(
        "  - name: shop\n",
        "  - name: shop
    schemas:
      - event_types: [\"order.*\"]
        schema:
          type: object
          required: [id, total]
          properties:
            total: { type: integer, minimum: 0 }
",
    );
    let pipeline = Pipeline::start(&catalog).await.unwrap();
    let url = format!("{}/v1/events/shop/batch", pipeline.ingest_url);

    // Faults of the whole request store nothing.
    let too_many: Vec<Value> = (0..1_001)
        .map(|i| json!({"type": "order.created", "data": order(&format!("x{i}"), 1)}))
        .collect();
    let answer = pipeline
        .http
        .post(&url)
        .json(&json!({ "events": too_many }))
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 413);
    let problem: Value = answer.json().await.unwrap();
    assert!(problem["detail"].as_str().unwrap().contains("at most 1000"));
    let answer = pipeline
        .http
        .post(&url)
        .header("content-type", "application/json")
        .body("{\"events\": [")
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 400);
    assert_eq!(pipeline.stream_len("INGEST").await, 0);

    let mut valid = HashSet::new();
    let mut invalid = 0;
    for request in 0..10 {
        let mut lines = String::new();
        let mut expected = Vec::new();
        for i in 0..1_000 {
            let n = request * 1_000 + i;
            let id = format!("b{n}");
            let item = match n % 40 {
                // 5% invalid: half break the schema, half have no usable type.
                0 => {
                    json!({"type": "order.created", "idempotency_key": id, "data": {"id": id, "email": "a@b.c", "total": "ten"}})
                }
                20 => json!({"type": "order created", "data": order(&id, 1)}),
                _ => json!({"type": "order.created", "idempotency_key": id, "data": order(&id, 1)}),
            };
            expected.push(n % 40);
            lines.push_str(&item.to_string());
            lines.push('\n');
            if n % 40 != 0 && n % 40 != 20 {
                valid.insert(id);
            }
        }
        // Half the requests as NDJSON, half as one JSON document.
        let answer = if request % 2 == 0 {
            pipeline
                .http
                .post(&url)
                .header("content-type", "application/x-ndjson")
                .body(lines)
                .send()
                .await
                .unwrap()
        } else {
            let events: Vec<Value> = lines
                .lines()
                .map(|line| serde_json::from_str(line).unwrap())
                .collect();
            pipeline
                .http
                .post(&url)
                .json(&json!({ "events": events }))
                .send()
                .await
                .unwrap()
        };
        assert_eq!(answer.status(), 200);
        let answer: Value = answer.json().await.unwrap();
        let results = answer["results"].as_array().unwrap();
        assert_eq!(results.len(), 1_000);
        for (i, (result, kind)) in results.iter().zip(&expected).enumerate() {
            match kind {
                0 => {
                    invalid += 1;
                    assert_eq!(result["error"]["status"], 422, "{result}");
                    assert_eq!(result["error"]["errors"][0]["path"], "/total", "{result}");
                    assert!(
                        result["error"]["detail"]
                            .as_str()
                            .unwrap()
                            .starts_with(&format!("events[{i}]: "))
                    );
                }
                20 => {
                    invalid += 1;
                    assert_eq!(result["error"]["status"], 400, "{result}");
                    assert!(
                        result["error"]["detail"].as_str().unwrap().contains("type"),
                        "{result}"
                    );
                }
                _ => {
                    assert!(
                        result["event_id"].as_str().is_some_and(|id| !id.is_empty()),
                        "{result}"
                    );
                    assert_eq!(result["duplicate"], false);
                }
            }
        }
    }
    assert_eq!(invalid, 500);
    provider
        .wait_for_accepted(9_500, Duration::from_secs(90))
        .await;
    pipeline.quiescent().await;
    let delivered: Vec<String> = provider.accepted().iter().map(crate::order_id).collect();
    assert_eq!(delivered.len(), 9_500, "each valid item once");
    assert_eq!(delivered.into_iter().collect::<HashSet<_>>(), valid);

    // Sending a batch again answers each stored item as a duplicate.
    let again = json!({"events": [
        {"type": "order.created", "idempotency_key": "b1", "data": order("b1", 1)},
        {"type": "order.created", "idempotency_key": "b2", "data": order("b2", 1)},
    ]});
    let answer: Value = pipeline
        .http
        .post(&url)
        .json(&again)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(answer["results"][0]["duplicate"], true, "{answer}");
    assert_eq!(answer["results"][1]["duplicate"], true, "{answer}");
}
