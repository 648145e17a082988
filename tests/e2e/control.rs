//! The control API: catalog changes validated as a whole and picked up by running
//! services; health and reflection for third-party clients.

use std::time::Duration;

use switchyard_proto::{
    ApplyRequest, ChangeAction, DeleteResourceRequest, GetResourceRequest, ListResourcesRequest,
    ResourceKind, catalog_service_client::CatalogServiceClient,
};
use switchyard_tests::{FakeProvider, Pipeline};
use tonic::{Code, transport::Channel};

use crate::catalog;

async fn client(pipeline: &Pipeline) -> CatalogServiceClient<Channel> {
    CatalogServiceClient::new(pipeline.control_channel().await)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_applied_route_is_used_by_running_services_without_a_restart() {
    let provider = FakeProvider::start().await;
    let pipeline = Pipeline::start(&catalog(provider.url())).await.unwrap();
    let mut control = client(&pipeline).await;

    let bundle = r#"
sources:
  - name: erp
mappings:
  - name: stock-to-crm
    version: 1
    program: '. = {"sku": .sku, "order": "stock", "email": "x", "cents": 0}'
routes:
  - name: stock
    source: erp
    event_types: ["stock.changed"]
    mapping: stock-to-crm@1
    provider: crm
"#;
    let plan = control
        .apply(ApplyRequest {
            document: bundle.into(),
            dry_run: true,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(plan.dry_run);
    assert_eq!(
        plan.changes.len(),
        3,
        "resources the bundle does not name are left alone: {plan:?}"
    );
    let created: Vec<_> = plan
        .changes
        .iter()
        .filter(|c| c.action() == ChangeAction::Create)
        .map(|c| c.name.as_str())
        .collect();
    assert_eq!(created, ["erp", "stock-to-crm@1", "stock"]);
    // A dry run changes nothing.
    assert_eq!(
        pipeline
            .post("erp", "stock.changed", &serde_json::json!({}), None)
            .await
            .status(),
        404
    );

    let applied = control
        .apply(ApplyRequest {
            document: bundle.into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(applied.revision, plan.revision + 1);

    // Running ingest, transform and delivery pick the change up within 2 s.
    let started = tokio::time::Instant::now();
    switchyard_tests::eventually(
        Duration::from_secs(2),
        "ingest to know the new source",
        || async {
            let response = pipeline
                .post(
                    "erp",
                    "stock.changed",
                    &serde_json::json!({"sku": "A-1"}),
                    Some("s1"),
                )
                .await;
            (response.status() == 202).then_some(())
        },
    )
    .await;
    provider.wait_for_accepted(1, Duration::from_secs(10)).await;
    assert!(started.elapsed() < Duration::from_secs(5));
    let delivered = &provider.accepted()[0];
    assert_eq!(delivered.json()["sku"], "A-1");
    assert_eq!(delivered.header("switchyard-route"), Some("stock"));

    let listed = control
        .list_resources(ListResourcesRequest {
            kind: ResourceKind::Route as i32,
        })
        .await
        .unwrap()
        .into_inner();
    let names: Vec<_> = listed.resources.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(names, ["orders", "stock"]);
    let mapping = control
        .get_resource(GetResourceRequest {
            kind: ResourceKind::Mapping as i32,
            name: "stock-to-crm@1".into(),
        })
        .await
        .unwrap()
        .into_inner();
    let spec = switchyard_proto::convert::struct_to_json(mapping.spec.as_ref().unwrap());
    assert_eq!(spec["version"], 1);
    let missing = control
        .get_resource(GetResourceRequest {
            kind: ResourceKind::Source as i32,
            name: "nope".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(missing.code(), Code::NotFound);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_or_racing_applies_change_nothing() {
    let provider = FakeProvider::start().await;
    let pipeline = Pipeline::start(&catalog(provider.url())).await.unwrap();
    let mut control = client(&pipeline).await;
    let before = control
        .list_resources(ListResourcesRequest::default())
        .await
        .unwrap()
        .into_inner();

    let invalid = r#"
routes:
  - name: broken
    source: shop
    mapping: order-to-contact@9
    provider: crm
mappings:
  - name: typo
    version: 1
    program: '.x = upcase(.y'
"#;
    let err = control
        .apply(ApplyRequest {
            document: invalid.into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(
        err.message()
            .contains("routes[1].mapping: no mapping order-to-contact@9"),
        "{}",
        err.message()
    );
    assert!(
        err.message().contains("mappings[1].program"),
        "{}",
        err.message()
    );

    let changed_program = r#"
mappings:
  - name: order-to-contact
    version: 1
    program: '. = {}'
"#;
    let err = control
        .apply(ApplyRequest {
            document: changed_program.into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("immutable"), "{}", err.message());

    let stale = control
        .apply(ApplyRequest {
            document: "sources:\n  - name: erp\n".into(),
            expected_revision: before.revision + 7,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(stale.code(), Code::Aborted);

    let after = control
        .list_resources(ListResourcesRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(after, before, "no rejected apply changed the catalog");

    // Two applies racing on the same revision: exactly one wins, the other is ABORTED.
    let race = |name: &str| {
        let mut control = control.clone();
        let document = format!("sources:\n  - name: {name}\n");
        let revision = before.revision;
        async move {
            control
                .apply(ApplyRequest {
                    document,
                    expected_revision: revision,
                    ..Default::default()
                })
                .await
        }
    };
    let (a, b) = tokio::join!(race("one"), race("two"));
    let codes = [
        a.as_ref().err().map(|e| e.code()),
        b.as_ref().err().map(|e| e.code()),
    ];
    assert!(
        codes == [None, Some(Code::Aborted)] || codes == [Some(Code::Aborted), None],
        "{codes:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_and_reflection_serve_third_party_clients() {
    use tonic_health::pb::{
        HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
    };
    use tonic_reflection::pb::{v1, v1alpha};

    let provider = FakeProvider::start().await;
    let pipeline = Pipeline::start(&catalog(provider.url())).await.unwrap();
    let _ = client(&pipeline).await;
    let channel = Channel::from_shared(pipeline.control_url.clone())
        .unwrap()
        .connect()
        .await
        .unwrap();

    let mut health = HealthClient::new(channel.clone());
    for service in [
        "",
        "switchyard.v1.CatalogService",
        "switchyard.v1.MappingService",
        "switchyard.v1.ReplayService",
        "switchyard.v1.ProviderService",
        "switchyard.v1.DeadLetterService",
        "switchyard.v1.EventService",
        "switchyard.v1.StatsService",
    ] {
        let status = health
            .check(HealthCheckRequest {
                service: service.into(),
            })
            .await
            .unwrap()
            .into_inner()
            .status();
        assert_eq!(status, ServingStatus::Serving, "{service:?}");
    }

    let mut reflection = v1::server_reflection_client::ServerReflectionClient::new(channel.clone());
    let request = v1::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(v1::server_reflection_request::MessageRequest::ListServices(
            String::new(),
        )),
    };
    let mut answers = reflection
        .server_reflection_info(futures::stream::iter([request]))
        .await
        .unwrap()
        .into_inner();
    let Some(v1::server_reflection_response::MessageResponse::ListServicesResponse(list)) =
        answers.message().await.unwrap().unwrap().message_response
    else {
        panic!("a service list")
    };
    let names: Vec<_> = list.service.iter().map(|s| s.name.as_str()).collect();
    for expected in [
        "switchyard.v1.CatalogService",
        "switchyard.v1.MappingService",
        "switchyard.v1.ReplayService",
        "switchyard.v1.ProviderService",
        "switchyard.v1.DeadLetterService",
        "switchyard.v1.EventService",
        "switchyard.v1.StatsService",
        "grpc.health.v1.Health",
        "grpc.reflection.v1.ServerReflection",
    ] {
        assert!(names.contains(&expected), "{expected} in {names:?}");
    }

    // grpcurl 1.8 speaks v1alpha only.
    let mut alpha = v1alpha::server_reflection_client::ServerReflectionClient::new(channel);
    let request = v1alpha::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(
            v1alpha::server_reflection_request::MessageRequest::FileContainingSymbol(
                "switchyard.v1.CatalogService".into(),
            ),
        ),
    };
    let mut answers = alpha
        .server_reflection_info(futures::stream::iter([request]))
        .await
        .unwrap()
        .into_inner();
    let answer = answers.message().await.unwrap().unwrap().message_response;
    assert!(
        matches!(answer, Some(v1alpha::server_reflection_response::MessageResponse::FileDescriptorResponse(ref files)) if !files.file_descriptor_proto.is_empty()),
        "{answer:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_python_client_generated_from_the_proto_drives_the_api() {
    let provider = FakeProvider::start().await;
    let pipeline = Pipeline::start(&catalog(provider.url())).await.unwrap();
    let _ = client(&pipeline).await;
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let address = pipeline
        .control_url
        .trim_start_matches("http://")
        .to_owned();
    let output = tokio::process::Command::new("python3")
        .arg(root.join("clients/python_client.py"))
        .arg(&address)
        .arg(root.join("../proto"))
        .output()
        .await
        .unwrap();
    let stdout = switchyard_tests::succeeded("the Python client", output);
    let seen: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(
        seen["plan"],
        serde_json::json!([["python-made@1", "CHANGE_ACTION_CREATE"]])
    );
    assert_eq!(
        seen["mappings"],
        serde_json::json!(["order-to-contact@1", "python-made@1"])
    );
    assert_eq!(
        seen["test"],
        serde_json::json!({"passed": true, "output": {"from": "python", "id": 7}})
    );
    assert_eq!(seen["invalid"]["code"], "INVALID_ARGUMENT");
    let details = seen["invalid"]["details"].as_str().unwrap();
    assert!(
        details.contains("routes[1].source: no source named"),
        "{details}"
    );
    assert_eq!(
        seen["replay"],
        serde_json::json!({"done": true, "dry_run": true, "scanned": 0})
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deletes_refuse_what_is_still_referred_to() {
    let provider = FakeProvider::start().await;
    let pipeline = Pipeline::start(&catalog(provider.url())).await.unwrap();
    let mut control = client(&pipeline).await;
    let delete = |kind: ResourceKind, name: &str| DeleteResourceRequest {
        kind: kind as i32,
        name: name.into(),
        expected_revision: 0,
    };
    let refused = control
        .delete_resource(delete(ResourceKind::Mapping, "order-to-contact@1"))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::InvalidArgument);
    assert!(
        refused.message().contains("routes[0].mapping"),
        "{}",
        refused.message()
    );
    let missing = control
        .delete_resource(delete(ResourceKind::Route, "nope"))
        .await
        .unwrap_err();
    assert_eq!(missing.code(), Code::NotFound);

    // syctl deletes the route; then the mapping version can go.
    let output = tokio::process::Command::new(switchyard_tests::syctl())
        .args([
            "--server",
            &pipeline.control_url,
            "delete",
            "route",
            "orders",
        ])
        .output()
        .await
        .unwrap();
    let stdout = switchyard_tests::succeeded("syctl delete route", output);
    assert!(stdout.contains("deleted route orders"), "{stdout}");
    control
        .delete_resource(delete(ResourceKind::Mapping, "order-to-contact@1"))
        .await
        .unwrap();
    let left = control
        .list_resources(ListResourcesRequest {
            kind: ResourceKind::Unspecified as i32,
        })
        .await
        .unwrap()
        .into_inner();
    let names: Vec<_> = left.resources.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(names, ["shop", "crm"]);
}

/// `buf curl` from the Buf CLI (`make buf` unpacks it), a client that knows nothing
/// of Switchyard but what server reflection tells it, as grpcurl.
fn buf_curl() -> std::process::Command {
    let mut command = std::process::Command::new(switchyard_tests::tool("buf"));
    command.args(["curl", "--protocol", "grpc", "--http2-prior-knowledge"]);
    command
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reflection_only_client_lists_and_calls_the_api() {
    use switchyard_core::{
        apikey,
        config::{ApiKeySettings, Scope},
    };
    let provider = FakeProvider::start().await;
    let nats = switchyard_tests::TestNats::start().await.unwrap();
    let mut settings = Pipeline::settings(nats.url());
    settings.control.allow_unauthenticated = false;
    settings.control.api_keys = vec![ApiKeySettings {
        name: "buf".into(),
        hash: apikey::hash("sy_buf-key"),
        scope: Scope::Read,
    }];
    let pipeline = Pipeline::start_with(nats, settings, &catalog(provider.url()))
        .await
        .unwrap();
    let _ = client(&pipeline).await;
    let url = &pipeline.control_url;

    let listed = buf_curl().args(["--list-methods", url]).output().unwrap();
    assert!(listed.status.success(), "{listed:?}");
    let methods = String::from_utf8_lossy(&listed.stdout);
    for method in [
        "switchyard.v1.CatalogService/Apply",
        "switchyard.v1.CatalogService/DeleteResource",
        "switchyard.v1.DeadLetterService/ReplayDeadLetters",
        "switchyard.v1.MappingService/TestMapping",
        "switchyard.v1.ProviderService/PauseProvider",
        "switchyard.v1.ReplayService/Replay",
    ] {
        assert!(methods.contains(method), "{method} in {methods}");
    }

    let call = |method: &str, data: &str, key: Option<&str>| {
        let mut command = buf_curl();
        if let Some(key) = key {
            command.args(["-H", &format!("authorization: Bearer {key}")]);
        }
        command
            .args(["-d", data, &format!("{url}/{method}")])
            .output()
            .unwrap()
    };
    let routes = call(
        "switchyard.v1.CatalogService/ListResources",
        r#"{"kind": "RESOURCE_KIND_ROUTE"}"#,
        Some("sy_buf-key"),
    );
    assert!(routes.status.success(), "{routes:?}");
    let routes: serde_json::Value = serde_json::from_slice(&routes.stdout).unwrap();
    assert_eq!(routes["resources"][0]["name"], "orders", "{routes}");
    assert_eq!(routes["resources"][0]["spec"]["provider"], "crm");

    let status = call(
        "switchyard.v1.ProviderService/GetProviderStatus",
        r#"{"provider": "crm"}"#,
        Some("sy_buf-key"),
    );
    assert!(status.status.success(), "{status:?}");
    let status: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    assert_eq!(status["provider"], "crm", "{status}");

    let refused = call("switchyard.v1.CatalogService/ListResources", "{}", None);
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("unauthenticated"),
        "{refused:?}"
    );
}
