//! Who may use the control API: API keys with scopes, TLS and mutual TLS.

use switchyard_core::{
    apikey,
    config::{ApiKeySettings, Scope, TlsSettings},
};
use switchyard_proto::{
    ApplyRequest, CanaryActionRequest, GetCanaryRequest, ListResourcesRequest,
    catalog_service_client::CatalogServiceClient, route_service_client::RouteServiceClient,
};
use switchyard_tests::{FakeProvider, Pipeline, TestNats, syctl};
use tonic::{Code, Request};

use crate::catalog;

const READ_KEY: &str = "sy_reader-key";
const OPERATE_KEY: &str = "sy_operator-key";
const ADMIN_KEY: &str = "sy_admin-key";

fn keys() -> Vec<ApiKeySettings> {
    [
        ("dashboard", READ_KEY, Scope::Read),
        ("oncall", OPERATE_KEY, Scope::Operate),
        ("ci", ADMIN_KEY, Scope::Admin),
    ]
    .into_iter()
    .map(|(name, key, scope)| ApiKeySettings {
        name: name.into(),
        hash: apikey::hash(key),
        scope,
    })
    .collect()
}

fn with_key<T>(message: T, key: &str) -> Request<T> {
    let mut request = Request::new(message);
    request
        .metadata_mut()
        .insert("authorization", format!("Bearer {key}").parse().unwrap());
    request
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_and_scopes_decide_what_a_caller_may_do() {
    let provider = FakeProvider::start().await;
    let nats = TestNats::start().await.unwrap();
    let mut settings = Pipeline::settings(nats.url());
    settings.control.allow_unauthenticated = false;
    settings.control.api_keys = keys();
    let pipeline = Pipeline::start_with(nats, settings, &catalog(provider.url()))
        .await
        .unwrap();
    let mut client = CatalogServiceClient::new(pipeline.control_channel().await);

    let refused = client
        .list_resources(ListResourcesRequest::default())
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::Unauthenticated, "{refused:?}");
    assert!(
        refused.message().contains("authorization: Bearer"),
        "{refused:?}"
    );
    let refused = client
        .list_resources(with_key(ListResourcesRequest::default(), "sy_guess"))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::Unauthenticated, "{refused:?}");

    let listed = client
        .list_resources(with_key(ListResourcesRequest::default(), READ_KEY))
        .await
        .unwrap()
        .into_inner();
    let revision = listed.revision;
    let document = catalog(provider.url()).replace("timeout: 2s", "timeout: 3s");
    let apply = |dry_run| ApplyRequest {
        document: document.clone(),
        dry_run,
        ..Default::default()
    };
    // A reader may plan, not change.
    client.apply(with_key(apply(true), READ_KEY)).await.unwrap();
    for key in [READ_KEY, OPERATE_KEY] {
        let denied = client.apply(with_key(apply(false), key)).await.unwrap_err();
        assert_eq!(denied.code(), Code::PermissionDenied, "{denied:?}");
        assert!(denied.message().contains("Apply needs admin"), "{denied:?}");
    }
    let denied = client
        .apply(with_key(apply(false), READ_KEY))
        .await
        .unwrap_err();
    assert!(
        denied.message().contains("dashboard has scope read"),
        "{denied:?}"
    );
    let unchanged = client
        .list_resources(with_key(ListResourcesRequest::default(), ADMIN_KEY))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        unchanged.revision, revision,
        "a refused apply changes nothing"
    );
    let applied = client
        .apply(with_key(apply(false), ADMIN_KEY))
        .await
        .unwrap()
        .into_inner();
    assert!(applied.revision > revision);

    // A canary: the reader may look, the operator may roll back, only an admin may
    // promote (it changes the catalog). The route has no canary, so the allowed
    // calls get past the scope check to FAILED_PRECONDITION.
    let mut routes = RouteServiceClient::new(pipeline.control_channel().await);
    let action = || CanaryActionRequest {
        route: "orders".into(),
        reason: String::new(),
    };
    let denied = routes
        .rollback_canary(with_key(action(), READ_KEY))
        .await
        .unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied, "{denied:?}");
    assert!(
        denied.message().contains("RollbackCanary needs operate"),
        "{denied:?}"
    );
    let denied = routes
        .promote_canary(with_key(action(), OPERATE_KEY))
        .await
        .unwrap_err();
    assert!(
        denied.message().contains("PromoteCanary needs admin"),
        "{denied:?}"
    );
    for (key, call) in [(OPERATE_KEY, "rollback"), (ADMIN_KEY, "promote")] {
        let answered = match call {
            "rollback" => routes.rollback_canary(with_key(action(), key)).await,
            _ => routes.promote_canary(with_key(action(), key)).await,
        }
        .unwrap_err();
        assert_eq!(answered.code(), Code::FailedPrecondition, "{answered:?}");
        assert!(answered.message().contains("has no canary"), "{answered:?}");
    }
    let looked = routes
        .get_canary(with_key(
            GetCanaryRequest {
                route: "orders".into(),
            },
            READ_KEY,
        ))
        .await
        .unwrap_err();
    assert_eq!(
        looked.code(),
        Code::NotFound,
        "a reader may look: {looked:?}"
    );

    // syctl sends the key from SYCTL_API_KEY; without one it exits 1 and says why.
    let run = |key: Option<&str>| {
        let mut command = std::process::Command::new(syctl());
        command
            .args(["--server", &pipeline.control_url, "get", "provider"])
            .env_remove("SYCTL_API_KEY");
        if let Some(key) = key {
            command.env("SYCTL_API_KEY", key);
        }
        command.output().unwrap()
    };
    let output = run(Some(READ_KEY));
    assert!(output.status.success(), "{output:?}");
    assert!(
        String::from_utf8_lossy(&output.stdout).contains("crm"),
        "{output:?}"
    );
    let output = run(None);
    assert_eq!(output.status.code(), Some(1), "{output:?}");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("Unauthenticated"), "{stderr}");
    assert!(!stderr.contains(READ_KEY));
}

/// `syctl keys create` hashes the key itself (it does not link the servers' crates);
/// the hash it prints is the one the servers' key check accepts.
#[test]
fn syctl_prints_the_hash_the_servers_accept() {
    let output = std::process::Command::new(syctl())
        .args([
            "keys", "create", "--name", "ci", "--scope", "admin", "-o", "json",
        ])
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    let created: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let key = created["key"].as_str().unwrap();
    assert!(key.starts_with("sy_") && key.len() > 40, "{created}");
    assert_eq!(created["hash"], apikey::hash(key));
    let stored = apikey::KeyHashes::new([(created["hash"].as_str().unwrap(), ())]);
    assert!(stored.find(key).is_some());
}

#[tokio::test]
async fn the_control_api_refuses_to_start_open_unless_asked() {
    let nats = TestNats::start().await.unwrap();
    let mut settings = Pipeline::settings(nats.url());
    settings.control.allow_unauthenticated = false;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let shutdown = switchyard_core::shutdown::Shutdown::new();
    let listeners = switchyard_control::Listeners {
        grpc: listener,
        console: None,
    };
    let err = switchyard_control::run(settings, listeners, shutdown)
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("control.api_keys is empty"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_lets_in_only_clients_with_a_certificate() {
    let dir = tempfile::tempdir().unwrap();
    switchyard_tests::pki::Pki::new().write(dir.path());
    let provider = FakeProvider::start().await;
    let nats = TestNats::start().await.unwrap();
    let mut settings = Pipeline::settings(nats.url());
    settings.control.tls = Some(TlsSettings {
        cert: dir.path().join("server.pem"),
        key: dir.path().join("server.key"),
        client_ca: Some(dir.path().join("ca.pem")),
    });
    let pipeline = Pipeline::start_with(nats, settings, &catalog(provider.url()))
        .await
        .unwrap();
    let https = pipeline.control_url.replace("http://", "https://");
    let file = |name: &str| dir.path().join(name).display().to_string();
    let run = |extra: &[String]| {
        std::process::Command::new(syctl())
            .args(["--server", &https, "get", "route"])
            .args(extra)
            .output()
            .unwrap()
    };
    let full = [
        "--ca-cert".to_owned(),
        file("ca.pem"),
        "--client-cert".to_owned(),
        file("client.pem"),
        "--client-key".to_owned(),
        file("client.key"),
    ];
    let output = switchyard_tests::eventually(
        std::time::Duration::from_secs(10),
        "the control API over mutual TLS",
        || async {
            let output = run(&full);
            output.status.success().then_some(output)
        },
    )
    .await;
    assert!(
        String::from_utf8_lossy(&output.stdout).contains("orders"),
        "{output:?}"
    );

    // Without a client certificate, or without trusting the CA, nothing is answered.
    for extra in [&full[..2], &full[2..]] {
        let output = run(extra);
        assert!(!output.status.success(), "{output:?}");
        assert!(output.stdout.is_empty(), "{output:?}");
    }
    // Plain HTTP/2 to the TLS port is refused too.
    let output = std::process::Command::new(syctl())
        .args(["--server", &pipeline.control_url, "get", "route"])
        .output()
        .unwrap();
    assert!(!output.status.success(), "{output:?}");
}
