//! Prometheus metrics: every series the README lists is exported, with the labels
//! that tell sources, routes and providers apart.

use std::{collections::HashSet, time::Duration};

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
    let provider = FakeProvider::with(|request| {
        if request.attempt == 1 {
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
        pipeline.post(source, "order.created", &body, None).await;
    }
    provider.wait_for_accepted(1, Duration::from_secs(15)).await;

    // The provider counts a request before delivery has read its answer.
    let text = eventually(Duration::from_secs(10), "the backlog gauges", || async {
        let text = switchyard_core::metrics::encode();
        (text.contains("switchyard_consumer_pending{stream=\"INGEST\",consumer=\"transform\"}")
            && text.contains(
                "switchyard_deliveries_total{provider=\"crm\",outcome=\"delivered\",error=\"none\"}",
            ))
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
    let text = switchyard_core::metrics::encode();
    let exported: HashSet<String> = text
        .lines()
        .filter_map(|line| line.strip_prefix("# TYPE "))
        .filter_map(|rest| rest.split_whitespace().next())
        .map(str::to_owned)
        .collect();
    let listed = readme_metrics();
    // Every family is described, also before its first series (breaker transitions
    // need an open breaker, which the delivery tests check).
    assert_eq!(
        listed, exported,
        "README lists {listed:?}, the process exports {exported:?}"
    );
}

/// The metric families the Observability → Metrics table of deploy/README.md lists,
/// without the `_total` of counters.
fn readme_metrics() -> HashSet<String> {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/README.md"))
            .unwrap();
    let section = readme
        .split("### Metrics")
        .nth(1)
        .expect("a Metrics section")
        .split("\n## ")
        .next()
        .unwrap()
        .to_owned();
    section
        .lines()
        .filter_map(|line| line.strip_prefix("| `switchyard_"))
        .filter_map(|rest| rest.split('`').next())
        .map(|name| format!("switchyard_{}", name.trim_end_matches("_total")))
        .collect()
}

/// Checks that `expr` is valid PromQL and uses only metrics the README lists.
fn check_expr(what: &str, expr: &str, known: &HashSet<String>) {
    if let Err(err) = promql_parser::parser::parse(expr) {
        panic!("{what}: {err}\n{expr}");
    }
    let mut rest = expr;
    while let Some(at) = rest.find("switchyard_") {
        let name: String = rest[at..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        rest = &rest[at + name.len()..];
        let family = ["_total", "_bucket", "_count", "_sum"]
            .iter()
            .find_map(|suffix| name.strip_suffix(suffix))
            .unwrap_or(&name);
        assert!(
            known.contains(family),
            "{what} uses {name}, which Switchyard does not export"
        );
    }
}

#[test]
fn alert_rules_and_the_dashboard_parse_and_use_only_exported_metrics() {
    let known = readme_metrics();
    // The check itself refuses bad PromQL and unknown metrics.
    for bad in [
        "sum(rate(switchyard_retries_total[5m])",
        "rate(switchyard_retried_total[5m])",
    ] {
        let known = known.clone();
        assert!(
            std::panic::catch_unwind(move || check_expr("bad", bad, &known)).is_err(),
            "{bad}"
        );
    }
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy");
    let rules: serde_json::Value = serde_yaml_ng::from_str(
        &std::fs::read_to_string(format!("{root}/prometheus/alerts.yaml")).unwrap(),
    )
    .unwrap();
    let mut alerts = Vec::new();
    for group in rules["groups"].as_array().expect("groups") {
        for rule in group["rules"].as_array().expect("rules") {
            let name = rule["alert"].as_str().expect("every rule is an alert");
            check_expr(name, rule["expr"].as_str().expect("an expr"), &known);
            let severity = rule["labels"]["severity"].as_str().unwrap_or_default();
            assert!(
                ["warning", "critical"].contains(&severity),
                "{name}: severity {severity:?}"
            );
            assert!(rule["for"].as_str().is_some(), "{name}: a `for`");
            assert!(
                rule["annotations"]["summary"].as_str().is_some(),
                "{name}: a summary"
            );
            alerts.push(name.to_owned());
        }
    }
    for wanted in [
        "SwitchyardDeliveryFailureSpike",
        "SwitchyardFreshnessStale",
        "SwitchyardBreakerOpenTooLong",
        "SwitchyardDeadLettersGrowing",
        "SwitchyardVolumeDrop",
    ] {
        assert!(alerts.iter().any(|a| a == wanted), "{wanted} in {alerts:?}");
    }

    let dashboard: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(format!("{root}/grafana/switchyard.json")).unwrap(),
    )
    .unwrap();
    let mut used = HashSet::new();
    for panel in dashboard["panels"].as_array().expect("panels") {
        for target in panel["targets"].as_array().expect("targets") {
            let expr = target["expr"].as_str().expect("an expr");
            check_expr(panel["title"].as_str().unwrap_or_default(), expr, &known);
            used.extend(
                known
                    .iter()
                    .filter(|name| expr.contains(name.as_str()))
                    .cloned(),
            );
        }
    }
    let unused: Vec<_> = known
        .difference(&used)
        .filter(|name| !name.ends_with("transitions"))
        .collect();
    assert!(
        unused.is_empty(),
        "the dashboard shows every metric but {unused:?}"
    );
}
