//! Event lookup and lineage, stats, describe and single-resource puts.

use std::time::Duration;

use switchyard_proto::{
    convert::json_to_struct,
    {
        ChangeAction, GetEventRequest, GetStatsRequest, PutResourceRequest, Resource, ResourceKind,
        catalog_service_client::CatalogServiceClient, event_service_client::EventServiceClient,
        stats_service_client::StatsServiceClient,
    },
};
use switchyard_tests::{FakeProvider, Pipeline, Reply, eventually, syctl};
use tonic::Code;

use crate::catalog;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_event_is_followed_from_ingest_through_every_attempt() {
    // The CRM fails the first request of every delivery once.
    let provider = FakeProvider::with(|request| {
        if request.attempt == 1 {
            Reply::status(503)
        } else {
            Reply::ok()
        }
    })
    .await;
    let pipeline = Pipeline::start(&catalog(provider.url())).await.unwrap();
    let channel = pipeline.control_channel().await;

    // Over HTTP: the id is a UUIDv7 minted by ingest.
    let body = serde_json::json!({"id": "h1", "email": "a@b.c", "total": 3});
    let answer: serde_json::Value = pipeline
        .post("shop", "order.created", &body, None)
        .await
        .json()
        .await
        .unwrap();
    let http_id = answer["event_id"].as_str().unwrap().to_owned();
    // Straight to NATS without an id, and one the mapping cannot read.
    for body in [
        serde_json::json!({"id": "n1", "email": "a@b.c", "total": 4}),
        serde_json::json!({"id": "n2", "email": "a@b.c", "total": "n/a"}),
    ] {
        pipeline
            .jetstream
            .publish("ingest.shop.order.created", body.to_string().into())
            .await
            .unwrap()
            .await
            .unwrap();
    }
    provider.wait_for_accepted(2, Duration::from_secs(15)).await;
    let nats_id = provider
        .accepted()
        .iter()
        .find(|r| r.json()["order"] == "n1")
        .and_then(|r| r.header("switchyard-event-id").map(str::to_owned))
        .unwrap();

    let mut events = EventServiceClient::new(channel.clone());
    for (id, order) in [(&http_id, "h1"), (&nats_id, "n1")] {
        let event = eventually(Duration::from_secs(5), "both attempts recorded", || async {
            let event = events
                .clone()
                .get_event(GetEventRequest {
                    event_id: id.clone(),
                })
                .await
                .unwrap()
                .into_inner();
            (event.routes.first().is_some_and(|r| r.attempts.len() == 2)).then_some(event)
        })
        .await;
        assert_eq!(
            (event.source.as_str(), event.event_type.as_str()),
            ("shop", "order.created")
        );
        assert!(event.complete);
        let body: serde_json::Value = serde_json::from_slice(&event.body).unwrap();
        assert_eq!(body["id"], order);
        if order == "h1" {
            assert_eq!(event.headers["Switchyard-Event-Id"], *id);
        }
        let route = &event.routes[0];
        assert_eq!(route.route, "orders");
        assert_eq!(route.provider, "crm");
        assert_eq!(route.mapping, "order-to-contact@1");
        assert_eq!(route.state, "delivered");
        assert_eq!(route.idempotency_key, format!("{id}:orders"));
        let categories: Vec<_> = route
            .attempts
            .iter()
            .map(|a| (a.category.as_str(), a.status))
            .collect();
        assert_eq!(categories, [("retry", 503), ("delivered", 200)]);
    }

    // The unreadable one is dead-lettered, and says where.
    let stats = StatsServiceClient::new(channel.clone())
        .get_stats(GetStatsRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(stats.dead_letters.get("dlq.crm"), Some(&1), "{stats:?}");
    let ingest = stats.streams.iter().find(|s| s.name == "INGEST").unwrap();
    assert_eq!(ingest.messages, 3);
    let names: Vec<_> = stats.consumers.iter().map(|c| c.name.as_str()).collect();
    assert!(
        names.contains(&"transform") && names.contains(&"delivery-crm"),
        "{names:?}"
    );

    let output = std::process::Command::new(syctl())
        .args([
            "--server",
            &pipeline.control_url,
            "dlq",
            "list",
            "-o",
            "json",
        ])
        .output()
        .unwrap();
    let listed: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let dead_id = listed["dead_letters"][0]["event_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let output = std::process::Command::new(syctl())
        .args([
            "--server",
            &pipeline.control_url,
            "events",
            "show",
            &dead_id,
            "-o",
            "json",
        ])
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    let shown: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(shown["body"]["id"], "n2");
    assert_eq!(shown["routes"][0]["state"], "dead_lettered", "{shown}");
    assert_eq!(
        shown["routes"][0]["dead_letters"][0],
        listed["dead_letters"][0]["sequence"]
    );

    let missing = events
        .get_event(GetEventRequest {
            event_id: "0190aaaa-0000-7000-8000-000000000000".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(missing.code(), Code::NotFound, "{missing:?}");

    // describe and stats from syctl.
    let output = std::process::Command::new(syctl())
        .args([
            "--server",
            &pipeline.control_url,
            "describe",
            "provider",
            "crm",
            "-o",
            "json",
        ])
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    let described: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(described["routes"], serde_json::json!(["orders"]));
    assert_eq!(described["status"]["dead_letters"], 1);
    assert_eq!(described["spec"]["timeout"], "2s");
    let output = std::process::Command::new(syctl())
        .args(["--server", &pipeline.control_url, "stats"])
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    assert!(String::from_utf8_lossy(&output.stdout).contains("delivery-crm"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_resource_is_put_with_the_same_validation_as_an_apply() {
    let provider = FakeProvider::start().await;
    let pipeline = Pipeline::start(&catalog(provider.url())).await.unwrap();
    let mut catalog_client = CatalogServiceClient::new(pipeline.control_channel().await);
    let put = |name: &str, spec: serde_json::Value, dry_run: bool| PutResourceRequest {
        resource: Some(Resource {
            kind: ResourceKind::Provider as i32,
            name: name.into(),
            spec: Some(json_to_struct(spec)),
        }),
        expected_revision: 0,
        dry_run,
    };
    let spec = serde_json::json!({"url": format!("{}/contacts", provider.url()), "timeout": "3s"});
    let planned = catalog_client
        .put_resource(put("crm", spec.clone(), true))
        .await
        .unwrap()
        .into_inner();
    let change = planned.change.unwrap();
    assert_eq!(change.action(), ChangeAction::Update);
    // A put replaces the whole resource, and the dry run's diff shows every field
    // that changes with it, policies falling back to their defaults included.
    for line in [
        r#"timeout: "2s" → "3s""#,
        "- retry.max_attempts: 5",
        "max_in_flight: 32 → 16",
    ] {
        assert!(
            change.diff.iter().any(|l| l == line),
            "{line} in {:?}",
            change.diff
        );
    }
    let done = catalog_client
        .put_resource(put("crm", spec, false))
        .await
        .unwrap()
        .into_inner();
    assert!(done.revision > planned.revision);
    let snapshot = pipeline.kv_json("switchyard-catalog", "catalog").await;
    let stored = serde_json::to_string(&snapshot).unwrap();
    assert!(stored.contains("3s"), "{stored}");

    let wrong_name = catalog_client
        .put_resource(put(
            "crm",
            serde_json::json!({"name": "erp", "url": "http://x"}),
            false,
        ))
        .await
        .unwrap_err();
    assert_eq!(wrong_name.code(), Code::InvalidArgument);
    assert!(
        wrong_name.message().contains("resource.spec.name"),
        "{wrong_name:?}"
    );
    let bad_url = catalog_client
        .put_resource(put("erp", serde_json::json!({"url": "not a url"}), false))
        .await
        .unwrap_err();
    assert_eq!(bad_url.code(), Code::InvalidArgument);
    assert!(bad_url.message().contains("url"), "{bad_url:?}");
}
