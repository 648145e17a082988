//! Provider authentication: bearer, basic, API key, OAuth2 client credentials and
//! Standard Webhooks signatures (checked by the reference Python library).

use std::{
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use axum::{Router, http::HeaderMap, routing::post};
use switchyard_tests::{FakeProvider, Pipeline, Received, Reply, TestNats};

const WHSEC_CURRENT: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
const WHSEC_OLD: &str = "whsec_c2VjcmV0LWtleS1iZWluZy1yb3RhdGVkLW91dA==";

/// A token endpoint that checks the client's credentials and hands out `tok-1`,
/// `tok-2`, … counting its requests.
async fn token_server(issued: Arc<AtomicUsize>) -> String {
    let app = Router::new().route(
        "/token",
        post(move |headers: HeaderMap, body: String| {
            let issued = issued.clone();
            async move {
                let expected = format!("Basic {}", base64_encode("switchyard:client-secret"));
                let authorized = headers.get("authorization").and_then(|v| v.to_str().ok())
                    == Some(expected.as_str());
                if !authorized
                    || !body.contains("grant_type=client_credentials")
                    || !body.contains("scope=contacts.write")
                {
                    return (axum::http::StatusCode::UNAUTHORIZED, String::new());
                }
                let n = issued.fetch_add(1, Ordering::SeqCst) + 1;
                (
                    axum::http::StatusCode::OK,
                    format!(
                        r#"{{"access_token":"tok-{n}","token_type":"Bearer","expires_in":3600}}"#
                    ),
                )
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/token", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    url
}

fn base64_encode(text: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(text)
}

fn authorized(request: &Received) -> bool {
    let auth = request.header("authorization").unwrap_or_default();
    match request.path.as_str() {
        "/bearer" => auth == "Bearer bearer-token",
        "/basic" => auth == format!("Basic {}", base64_encode("integration:basic-password")),
        "/key" => request.header("x-api-key") == Some("Token api-key"),
        // The first token is refused, as when a token is revoked early.
        "/oauth" => auth.starts_with("Bearer tok-") && auth != "Bearer tok-1",
        "/webhooks" => request.header("webhook-signature").is_some(),
        _ => false,
    }
}

fn verify_with_reference_library(request: &Received) {
    let headers: serde_json::Map<String, serde_json::Value> =
        ["webhook-id", "webhook-timestamp", "webhook-signature"]
            .iter()
            .map(|name| {
                (
                    name.to_string(),
                    serde_json::Value::from(request.header(name).unwrap()),
                )
            })
            .collect();
    for secret in [WHSEC_CURRENT, WHSEC_OLD] {
        let input = serde_json::json!({
            "secret": secret,
            "headers": headers,
            "body": String::from_utf8(request.body.to_vec()).unwrap(),
        });
        let script = "import json, sys\n\
            from standardwebhooks.webhooks import Webhook\n\
            data = json.load(sys.stdin)\n\
            Webhook(data['secret']).verify(data['body'], data['headers'])\n\
            print('verified')\n";
        let mut child = std::process::Command::new("python3")
            .args(["-c", script])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("python3 runs");
        use std::io::Write;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(input.to_string().as_bytes())
            .unwrap();
        let output = child.wait_with_output().unwrap();
        assert!(
            output.status.success(),
            "the standardwebhooks library rejected the signature for one of the secrets (pip install standardwebhooks): {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_auth_kind_is_sent_as_the_provider_expects() {
    let provider = FakeProvider::with(|r| {
        if authorized(r) {
            Reply::ok()
        } else {
            Reply::status(401)
        }
    })
    .await;
    let issued = Arc::new(AtomicUsize::new(0));
    let token_url = token_server(issued.clone()).await;

    let secrets = tempfile::tempdir().unwrap();
    for (name, value) in [
        ("BEARER_TOKEN", "bearer-token"),
        ("BASIC_PASSWORD", "basic-password"),
        ("API_KEY", "api-key"),
        ("CLIENT_SECRET", "client-secret"),
        ("WHSEC_CURRENT", WHSEC_CURRENT),
        ("WHSEC_OLD", WHSEC_OLD),
    ] {
        std::fs::write(secrets.path().join(name), format!("{value}\n")).unwrap();
    }
    let url = provider.url();
    let providers = [
        (
            "bearer",
            "auth: { bearer: { secret: BEARER_TOKEN } }".to_owned(),
        ),
        (
            "basic",
            "auth: { basic: { username: integration, password: { secret: BASIC_PASSWORD } } }"
                .to_owned(),
        ),
        (
            "key",
            "auth: { api_key: { header: X-Api-Key, secret: API_KEY, prefix: \"Token \" } }"
                .to_owned(),
        ),
        (
            "oauth",
            format!(
                "auth: {{ oauth2: {{ token_url: \"{token_url}\", client_id: switchyard, client_secret: {{ secret: CLIENT_SECRET }}, scopes: [contacts.write] }} }}"
            ),
        ),
        (
            "webhooks",
            "auth: { standard_webhooks: { secrets: [WHSEC_CURRENT, WHSEC_OLD] } }".to_owned(),
        ),
    ];
    let mut catalog = String::from(
        "sources:\n  - name: shop\nmappings:\n  - name: same\n    version: 1\n    program: '.'\nproviders:\n",
    );
    for (name, auth) in &providers {
        catalog.push_str(&format!("  - name: {name}\n    url: {url}/{name}\n    retry: {{ max_attempts: 1 }}\n    {auth}\n"));
    }
    catalog.push_str("routes:\n");
    for (name, _) in &providers {
        catalog.push_str(&format!(
            "  - name: to-{name}\n    source: shop\n    mapping: same@1\n    provider: {name}\n"
        ));
    }

    let nats = TestNats::start().await.unwrap();
    let mut settings = Pipeline::settings(nats.url());
    settings.secrets.dir = secrets.path().to_owned();
    let pipeline = Pipeline::start_with(nats, settings, &catalog)
        .await
        .unwrap();
    // One event at a time, so exactly one request meets the revoked first token.
    for (id, delivered) in [("first", 5), ("second", 10)] {
        let response = pipeline
            .post(
                "shop",
                "order.created",
                &serde_json::json!({"id": id}),
                Some(id),
            )
            .await;
        assert_eq!(response.status(), 202);
        provider
            .wait_for_accepted(delivered, Duration::from_secs(30))
            .await;
    }

    let received = provider.received();
    for (name, _) in &providers {
        let path = format!("/{name}");
        let accepted = received
            .iter()
            .filter(|r| r.path == path && r.accepted())
            .count();
        assert_eq!(accepted, 2, "{name}: both events accepted");
    }
    // OAuth2: one 401 with the first token, then one refresh; the token is cached after.
    let oauth_refused = received
        .iter()
        .filter(|r| r.path == "/oauth" && r.status == 401)
        .count();
    assert_eq!(oauth_refused, 1);
    assert_eq!(
        issued.load(Ordering::SeqCst),
        2,
        "one fetch, one refresh after the 401, then cached"
    );
    assert_eq!(
        pipeline.stream_len("DLQ").await,
        0,
        "the 401 retry spent no attempt"
    );

    for request in received.iter().filter(|r| r.path == "/webhooks") {
        assert_eq!(
            request.header("webhook-id"),
            request.header("idempotency-key")
        );
        assert_eq!(
            request
                .header("webhook-signature")
                .unwrap()
                .split(' ')
                .count(),
            2
        );
        verify_with_reference_library(request);
    }
    let logs_and_kv = format!(
        "{:?}",
        pipeline.kv_json("switchyard-catalog", "catalog").await
    );
    for secret in [
        "bearer-token",
        "basic-password",
        "api-key",
        "client-secret",
        "MfKQ9r8GK",
    ] {
        assert!(
            !logs_and_kv.contains(secret),
            "secret {secret} must not be stored in KV"
        );
    }
}
