//! Canary mapping versions: a failing canary is rolled back on its own and its
//! events still reach the provider once each; a healthy one is promoted while
//! events flow, and nothing is lost or doubled.

use std::{collections::HashMap, time::Duration};

use switchyard_proto::{
    CanaryStatus, GetCanaryRequest, GetResourceRequest, ResourceKind,
    catalog_service_client::CatalogServiceClient, route_service_client::RouteServiceClient,
};
use switchyard_tests::{FakeProvider, Pipeline, Reply, eventually, syctl};
use tonic::{Code, transport::Channel};

use crate::{order_id, publish_orders};

/// Source `shop`, provider `crm`, stable mapping v1 and a canary v2 on route
/// `orders`; v2 fails (a runtime error) on every id ending in 0 when `flawed`.
fn catalog(provider_url: &str, flawed: bool, canary: &str) -> String {
    let check = if flawed {
        "assert!(!ends_with(string!(.id), \"0\"), \"v2 cannot read this id\")\n      "
    } else {
        ""
    };
    format!(
        r#"
sources:
  - name: shop
providers:
  - name: crm
    url: {provider_url}/contacts
    timeout: 2s
    retry: {{ max_attempts: 3, backoff: {{ initial: 50ms, max: 200ms }} }}
mappings:
  - name: order-to-contact
    version: 1
    program: |
      . = {{ "order": string!(.id), "v": 1 }}
  - name: order-to-contact
    version: 2
    program: |
      {check}. = {{ "order": string!(.id), "v": 2 }}
routes:
  - name: orders
    source: shop
    event_types: ["order.*"]
    mapping: order-to-contact@1
    provider: crm
    canary: {canary}
"#
    )
}

async fn canary(channel: &Channel) -> CanaryStatus {
    RouteServiceClient::new(channel.clone())
        .get_canary(GetCanaryRequest {
            route: "orders".into(),
        })
        .await
        .unwrap()
        .into_inner()
}

fn syctl_ok(pipeline: &Pipeline, args: &[&str]) -> String {
    let output = std::process::Command::new(syctl())
        .args(["--server", &pipeline.control_url])
        .args(args)
        .output()
        .unwrap();
    assert!(output.status.success(), "syctl {args:?}: {output:?}");
    String::from_utf8(output.stdout).unwrap()
}

/// How often each order reached the provider, and through which versions.
fn received(provider: &FakeProvider) -> HashMap<String, Vec<i64>> {
    let mut seen: HashMap<String, Vec<i64>> = HashMap::new();
    for request in provider.accepted() {
        seen.entry(order_id(&request))
            .or_default()
            .push(request.json()["v"].as_i64().unwrap());
    }
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_canary_that_fails_more_is_rolled_back_and_its_events_still_arrive_once() {
    // Beside v2's mapping errors (ids ending in 0), the CRM refuses what v2 makes of
    // ids ending in 5.
    let provider = FakeProvider::with(|request| {
        let body = request.json();
        let id = body["order"].as_str().unwrap_or_default();
        if body["v"] == 2 && id.ends_with('5') {
            Reply::status(422).body(r#"{"error":"v2 shape refused"}"#)
        } else {
            Reply::ok()
        }
    })
    .await;
    let pipeline = Pipeline::start(&catalog(
        provider.url(),
        true,
        "{ mapping: order-to-contact@2, percent: 50 }",
    ))
    .await
    .unwrap();
    let channel = pipeline.control_channel().await;
    let ids = |range: std::ops::Range<u32>| range.map(|i| format!("o{i}")).collect::<Vec<_>>();

    // 700 events: about 350 through v2, of which a tenth fail in the mapping.
    publish_orders(&pipeline, "order.created", &ids(0..700)).await;
    let rolled_back = eventually(
        Duration::from_secs(30),
        "the canary rolled back",
        || async {
            let status = canary(&channel).await;
            (status.state == "rolled_back").then_some(status)
        },
    )
    .await;
    let canary_results = rolled_back.canary_results.clone().unwrap();
    let stable_results = rolled_back.stable_results.clone().unwrap();
    assert!(
        canary_results.mapping_errors > 0
            && canary_results.rejected > 0
            && canary_results.failed_percent > 10.0,
        "{rolled_back:#?}"
    );
    assert!(
        canary_results.delivered + canary_results.mapping_errors >= 200
            && stable_results.delivered >= 200,
        "judged after the sample: {rolled_back:#?}"
    );
    assert_eq!(stable_results.failed_percent, 0.0);
    assert!(
        rolled_back
            .reason
            .starts_with("rolled back automatically: order-to-contact@2 failed")
            && rolled_back
                .reason
                .contains("`syctl dlq replay --all --route orders`"),
        "{}",
        rolled_back.reason
    );
    // The outcome record and the metric say so too.
    let records = pipeline.outcomes().await;
    let change = records
        .iter()
        .find_map(|record| record.canary())
        .expect("a canary outcome record");
    assert_eq!(
        (
            change.route.as_str(),
            change.mapping.as_str(),
            change.to.as_str()
        ),
        ("orders", "order-to-contact@2", "rolled_back")
    );
    let metrics = switchyard_core::metrics::encode();
    assert!(
        metrics.contains("switchyard_canary_rollbacks_total{route=\"orders\"} 1"),
        "{metrics}"
    );
    pipeline.quiescent().await;

    // From now on the stable version takes every event.
    let before = received(&provider);
    publish_orders(&pipeline, "order.created", &ids(700..1000)).await;
    pipeline.quiescent().await;
    let after = received(&provider);
    for id in ids(700..1000) {
        assert_eq!(after.get(&id), Some(&vec![1]), "{id} after the rollback");
    }
    assert_eq!(after.len() - before.len(), 300);

    // The canary's failures, replayed, go through the stable version once each: its
    // mapping errors from the event, and its refused deliveries made again from the
    // stored event by v1 rather than resent as v2 made them.
    let failed = 1000 - after.len();
    assert!(failed > 0, "some events failed in the canary");
    // Even with the canary taken off the route first.
    CatalogServiceClient::new(channel.clone())
        .apply(switchyard_proto::ApplyRequest {
            document: catalog(provider.url(), true, "null"),
            ..Default::default()
        })
        .await
        .unwrap();
    let replayed = syctl_ok(
        &pipeline,
        &["dlq", "replay", "--all", "--route", "orders", "-o", "json"],
    );
    let replayed: serde_json::Value = serde_json::from_str(&replayed).unwrap();
    assert_eq!(replayed["replayed"], failed, "{replayed}");
    pipeline.quiescent().await;
    let all = received(&provider);
    assert_eq!(all.len(), 1000, "every event arrived");
    for (id, versions) in &all {
        assert_eq!(versions.len(), 1, "{id} arrived {versions:?}");
        if (id.ends_with('0') || id.ends_with('5')) && versions == &vec![2] {
            panic!("{id} went through the flawed version");
        }
    }
    let through_canary = all.values().filter(|v| v == &&vec![2]).count();
    assert!(
        through_canary > 100,
        "the canary took its share: {through_canary}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_healthy_canary_is_promoted_while_events_flow() {
    let provider = FakeProvider::start().await;
    let pipeline = Pipeline::start(&catalog(
        provider.url(),
        false,
        "{ mapping: order-to-contact@2, percent: 20 }",
    ))
    .await
    .unwrap();
    let channel = pipeline.control_channel().await;

    // Refused by hand-made mistakes, changing nothing.
    let mut routes = RouteServiceClient::new(channel.clone());
    let unknown = routes
        .get_canary(GetCanaryRequest {
            route: "nowhere".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(unknown.code(), Code::NotFound);

    let shown = syctl_ok(&pipeline, &["routes", "canary", "orders"]);
    assert!(
        shown
            .contains("canary order-to-contact@2 (20% by event) beside order-to-contact@1: active"),
        "{shown}"
    );

    let described = syctl_ok(&pipeline, &["describe", "route", "orders"]);
    assert!(
        described.contains("status:") && described.contains("state: active"),
        "{described}"
    );
    let described = syctl_ok(&pipeline, &["describe", "mapping", "order-to-contact@2"]);
    assert!(described.contains("used by routes: orders"), "{described}");

    // Events flow while the route is promoted.
    let sender = {
        let jetstream = pipeline.jetstream.clone();
        tokio::spawn(async move {
            for batch in 0..20 {
                let ids: Vec<String> = (batch * 25..(batch + 1) * 25)
                    .map(|i| format!("p{i}"))
                    .collect();
                let events: Vec<(String, serde_json::Value)> = ids
                    .iter()
                    .map(|id| (id.clone(), crate::order(id, 1)))
                    .collect();
                crate::publish_events(&jetstream, "order.created", events).await;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
    };
    tokio::time::sleep(Duration::from_millis(400)).await;
    let promoted = syctl_ok(
        &pipeline,
        &["routes", "promote", "orders", "--reason", "looks good"],
    );
    assert!(promoted.contains(": promoted"), "{promoted}");
    sender.await.unwrap();
    pipeline.quiescent().await;

    let route = CatalogServiceClient::new(channel.clone())
        .get_resource(GetResourceRequest {
            kind: ResourceKind::Route as i32,
            name: "orders".into(),
        })
        .await
        .unwrap()
        .into_inner();
    let spec = switchyard_proto::convert::struct_to_json(&route.spec.unwrap());
    assert_eq!(spec["mapping"], "order-to-contact@2", "{spec}");
    assert!(spec.get("canary").is_none(), "{spec}");
    let status = canary(&channel).await;
    assert_eq!(status.state, "promoted");
    assert!(status.reason.contains("looks good"), "{}", status.reason);

    let all = received(&provider);
    assert_eq!(all.len(), 500, "every event arrived");
    for (id, versions) in &all {
        assert_eq!(versions.len(), 1, "{id} arrived {versions:?}");
    }
    let late: Vec<_> = (450..500).map(|i| format!("p{i}")).collect();
    for id in late {
        assert_eq!(all[&id], vec![2], "{id}, sent after the promotion");
    }
    let early_stable = (0..25)
        .map(|i| format!("p{i}"))
        .filter(|id| all[id] == vec![1])
        .count();
    assert!(early_stable > 0, "before it, the stable version took most");
}
