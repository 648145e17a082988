//! Prometheus metrics: every series the README lists is exported, with the labels
//! that tell sources, routes and providers apart.

use std::{
    collections::HashSet,
    sync::{Arc, Mutex},
    time::Duration,
};

use switchyard_tests::{FakeProvider, Pipeline, Reply, eventually};

use crate::catalog_with;

/// The value of the series `name{labels}` in the exposition text, if present.
fn value(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.trim().parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_service_counts_what_it_does_and_the_readme_names_every_metric() {
    // The CRM fails the first request of every delivery once.
    let seen = Arc::new(Mutex::new(HashSet::new()));
    let provider = FakeProvider::with(move |request| {
        if seen
            .lock()
            .unwrap()
            .insert(request.idempotency_key().to_owned())
        {
            Reply::status(503)
        } else {
            Reply::ok()
        }
    })
    .await;
    // One request a second: the retry has to wait for the rate limit.
    let policies = "
    retry:
      max_attempts: 5
      backoff: { initial: 10ms, factor: 2, max: 50ms }
    rate_limit: { requests: 1, per: 1s, burst: 1 }";
    let pipeline = Pipeline::start(&catalog_with(provider.url(), policies, ""))
        .await
        .unwrap();
    for (source, body) in [
        (
            "shop",
            serde_json::json!({"id": "1", "email": "a@b.c", "total": 2}),
        ),
        (
            "shop",
            serde_json::json!({"id": "2", "email": "a@b.c", "total": "n/a"}),
        ),
        ("nowhere", serde_json::json!({})),
    ] {
        pipeline
            .http
            .post(format!(
                "{}/v1/events/{source}?type=order.created",
                pipeline.ingest_url
            ))
            .json(&body)
            .send()
            .await
            .unwrap();
    }
    provider.wait_for_accepted(1, Duration::from_secs(15)).await;

    let text = eventually(Duration::from_secs(10), "the backlog gauges", || async {
        let text = switchyard_core::metrics::encode();
        text.contains("switchyard_consumer_pending{stream=\"INGEST\",consumer=\"transform\"}")
            .then_some(text)
    })
    .await;
    let at_least = |series: &str, floor: f64| {
        let found = value(&text, series);
        assert!(
            found.is_some_and(|v| v >= floor),
            "{series} >= {floor}, got {found:?} in\n{text}"
        );
    };
    at_least(
        r#"switchyard_ingest_requests_total{source="shop",endpoint="events",status="202"}"#,
        2.0,
    );
    at_least(
        r#"switchyard_ingest_requests_total{source="unknown",endpoint="events",status="404"}"#,
        1.0,
    );
    at_least(r#"switchyard_events_published_total{source="shop"}"#, 2.0);
    at_least(
        r#"switchyard_transform_results_total{route="orders",outcome="published"}"#,
        1.0,
    );
    at_least(
        r#"switchyard_transform_results_total{route="orders",outcome="mapping"}"#,
        1.0,
    );
    at_least(
        r#"switchyard_mapping_duration_seconds_count{route="orders"}"#,
        2.0,
    );
    at_least(
        r#"switchyard_deliveries_total{provider="crm",outcome="retry",error="http_5xx"}"#,
        1.0,
    );
    at_least(
        r#"switchyard_deliveries_total{provider="crm",outcome="delivered",error="none"}"#,
        1.0,
    );
    at_least(r#"switchyard_retries_total{provider="crm"}"#, 1.0);
    at_least(
        r#"switchyard_delivery_duration_seconds_count{provider="crm"}"#,
        2.0,
    );
    let now = time::OffsetDateTime::now_utc().unix_timestamp() as f64;
    at_least(
        r#"switchyard_last_success_timestamp_seconds{provider="crm",route="orders"}"#,
        now - 60.0,
    );
    at_least(
        r#"switchyard_consumer_pending{stream="INGEST",consumer="transform"}"#,
        0.0,
    );
    eventually(Duration::from_secs(10), "the DLQ gauge", || async {
        let text = switchyard_core::metrics::encode();
        value(&text, r#"switchyard_dlq_depth{provider="crm"}"#)
            .is_some_and(|depth| depth >= 1.0)
            .then_some(())
    })
    .await;

    // The README's metrics table names every metric, and nothing that does not exist.
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md")).unwrap();
    let text = switchyard_core::metrics::encode();
    let exported: HashSet<String> = text
        .lines()
        .filter_map(|line| line.strip_prefix("# TYPE "))
        .filter_map(|rest| rest.split_whitespace().next())
        .map(str::to_owned)
        .collect();
    let section = readme
        .split("### Metrics")
        .nth(1)
        .expect("a Metrics section")
        .split("\n## ")
        .next()
        .unwrap();
    let listed: HashSet<String> = section
        .lines()
        .filter_map(|line| line.strip_prefix("| `switchyard_"))
        .filter_map(|rest| rest.split('`').next())
        .map(|name| format!("switchyard_{}", name.trim_end_matches("_total")))
        .collect();
    // A family shows up once it has a series; breaker transitions need an open
    // breaker, which the delivery tests check.
    let not_seen: HashSet<&str> = listed.difference(&exported).map(String::as_str).collect();
    assert_eq!(
        not_seen,
        HashSet::from(["switchyard_breaker_transitions"]),
        "exported: {exported:?}"
    );
    assert!(
        exported.is_subset(&listed),
        "README lists {listed:?}, the process exports {exported:?}"
    );
}
