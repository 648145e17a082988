//! Signed webhooks from real providers, API keys, per-source rate limits, schemas and
//! NATS outages, end to end: what was accepted reaches the provider exactly once, and
//! nothing that was refused is stored.

use std::time::{Duration, Instant};

use base64::{Engine, engine::general_purpose::STANDARD as BASE64};
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};
use switchyard_tests::{FakeProvider, Pipeline, TestNats, eventually};

const SW_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
const STRIPE_SECRET: &str = "whsec_QGZ8mNbPhwVx2Ltk9JsR4aEwYd7uFq3c";
const GITHUB_SECRET: &str = "It's a Secret to Everybody";
const SHOPIFY_SECRET: &str = "test-webhook-secret";
const API_KEY: &str = "sk_test_51HqZ";

/// Request headers, as (name, value).
type Headers = Vec<(String, String)>;

/// Secret files for every source, as a mounted Kubernetes secret would provide them.
fn secrets() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for (name, value) in [
        ("SW_SECRET", SW_SECRET),
        ("STRIPE_SECRET", STRIPE_SECRET),
        ("GITHUB_SECRET", GITHUB_SECRET),
        ("SHOPIFY_SECRET", SHOPIFY_SECRET),
        ("PARTNER_SECRET", "partner-secret"),
    ] {
        std::fs::write(dir.path().join(name), value).unwrap();
    }
    dir
}

fn catalog(provider_url: &str) -> String {
    let key_hash = hex::encode(Sha256::digest(API_KEY.as_bytes()));
    let mut catalog = format!(
        r#"
sources:
  - name: billing
    webhook: {{ verify: {{ standard_webhooks: {{ secrets: [SW_SECRET] }} }} }}
  - name: stripe
    webhook: {{ verify: {{ stripe: {{ secrets: [STRIPE_SECRET] }} }} }}
  - name: github
    webhook: {{ verify: {{ github: {{ secrets: [GITHUB_SECRET] }} }} }}
  - name: shopify
    webhook: {{ verify: {{ shopify: {{ secrets: [SHOPIFY_SECRET] }} }} }}
  - name: partner
    webhook:
      verify:
        hmac: {{ secrets: [PARTNER_SECRET], header: X-Partner-Signature, algorithm: sha512, encoding: base64, timestamp_header: X-Partner-Timestamp }}
      event_type: {{ json: /event }}
      idempotency_key: {{ json: /delivery }}
  - name: shop
    api_keys: ["sha256:{key_hash}"]
    rate_limit: {{ requests: 3, per: 1m, burst: 3 }}
  - name: strict
    schemas:
      - event_types: ["order.*"]
        schema:
          type: object
          required: [id, total]
          properties:
            id: {{ type: string }}
            total: {{ type: number, minimum: 0 }}
  - name: lenient
    on_invalid: dead_letter
    schemas:
      - event_types: ["*"]
        schema: {{ type: object, required: [id] }}
providers:
  - name: crm
    url: {provider_url}/events
    timeout: 2s
mappings:
  - name: same
    version: 1
    program: "."
routes:
"#
    );
    for source in [
        "billing", "stripe", "github", "shopify", "partner", "shop", "strict", "lenient",
    ] {
        catalog.push_str(&format!(
            "  - name: {source}-to-crm\n    source: {source}\n    mapping: same@1\n    provider: crm\n"
        ));
    }
    catalog
}

async fn start(provider: &FakeProvider) -> (Pipeline, tempfile::TempDir) {
    let secrets = secrets();
    let nats = TestNats::start().await.unwrap();
    let mut settings = Pipeline::settings(nats.url());
    settings.secrets.dir = secrets.path().to_owned();
    settings.ingest.publish_timeout = Duration::from_secs(2);
    let pipeline = Pipeline::start_with(nats, settings, &catalog(provider.url()))
        .await
        .unwrap();
    (pipeline, secrets)
}

fn now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

fn hmac_sha256(key: &[u8], data: &[u8]) -> Vec<u8> {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).unwrap();
    mac.update(data);
    mac.finalize().into_bytes().to_vec()
}

/// Standard Webhooks headers produced by the reference `standardwebhooks` library.
fn standard_webhooks_headers(id: &str, timestamp: i64, body: &str) -> Headers {
    let script = "import sys, datetime\n\
        from standardwebhooks.webhooks import Webhook\n\
        secret, msg_id, ts, body = sys.argv[1:5]\n\
        at = datetime.datetime.fromtimestamp(int(ts), tz=datetime.timezone.utc)\n\
        print(Webhook(secret).sign(msg_id, at, body))\n";
    let output = std::process::Command::new("python3")
        .args(["-c", script, SW_SECRET, id, &timestamp.to_string(), body])
        .output()
        .expect("python3 runs");
    assert!(
        output.status.success(),
        "the standardwebhooks library could not sign (pip install standardwebhooks): {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let signature = String::from_utf8(output.stdout).unwrap().trim().to_owned();
    vec![
        ("webhook-id".into(), id.into()),
        ("webhook-timestamp".into(), timestamp.to_string()),
        ("webhook-signature".into(), signature),
    ]
}

fn stripe_headers(body: &str, timestamp: i64) -> Headers {
    let signature = hex::encode(hmac_sha256(
        STRIPE_SECRET.as_bytes(),
        format!("{timestamp}.{body}").as_bytes(),
    ));
    vec![(
        "Stripe-Signature".into(),
        format!("t={timestamp},v1={signature}"),
    )]
}

fn github_headers(body: &str, delivery: &str) -> Headers {
    let signature = hex::encode(hmac_sha256(GITHUB_SECRET.as_bytes(), body.as_bytes()));
    vec![
        ("X-Hub-Signature-256".into(), format!("sha256={signature}")),
        ("X-GitHub-Event".into(), "pull_request".into()),
        ("X-GitHub-Delivery".into(), delivery.into()),
    ]
}

fn shopify_headers(body: &str, webhook_id: &str) -> Headers {
    let signature = BASE64.encode(hmac_sha256(SHOPIFY_SECRET.as_bytes(), body.as_bytes()));
    vec![
        ("X-Shopify-Hmac-Sha256".into(), signature),
        ("X-Shopify-Topic".into(), "orders/create".into()),
        ("X-Shopify-Webhook-Id".into(), webhook_id.into()),
        (
            "X-Shopify-Shop-Domain".into(),
            "example.myshopify.com".into(),
        ),
    ]
}

fn partner_headers(body: &str, timestamp: i64) -> Headers {
    use hmac::Mac as _;
    let mut mac = Hmac::<sha2::Sha512>::new_from_slice(b"partner-secret").unwrap();
    mac.update(format!("{timestamp}.{body}").as_bytes());
    vec![
        (
            "X-Partner-Signature".into(),
            BASE64.encode(mac.finalize().into_bytes()),
        ),
        ("X-Partner-Timestamp".into(), timestamp.to_string()),
    ]
}

async fn send(
    pipeline: &Pipeline,
    path: &str,
    headers: &[(String, String)],
    body: &str,
) -> reqwest::Response {
    let mut request = pipeline
        .http
        .post(format!("{}{path}", pipeline.ingest_url))
        .header("content-type", "application/json")
        .body(body.to_owned());
    for (name, value) in headers {
        request = request.header(name, value);
    }
    request.send().await.expect("ingest answers")
}

async fn json(response: reqwest::Response) -> serde_json::Value {
    response.json().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn each_providers_signed_webhook_is_delivered_once_even_when_sent_twice() {
    let provider = FakeProvider::start().await;
    let (pipeline, _secrets) = start(&provider).await;
    let at = now();

    let billing = r#"{"type":"invoice.paid","data":{"invoice":"in_1","amount":4200}}"#;
    let stripe = r#"{"id":"evt_1OaBcD2eZvKYlo2C","object":"event","api_version":"2023-10-16","created":1700000000,"data":{"object":{"id":"pi_3OaBcD","object":"payment_intent","amount":2000,"currency":"usd","status":"succeeded"}},"livemode":false,"type":"payment_intent.succeeded"}"#;
    let github = r#"{"action":"opened","number":1347,"pull_request":{"id":1,"title":"Amazing new feature"},"repository":{"full_name":"octocat/Hello-World"}}"#;
    let shopify = r#"{"id":820982911946154508,"email":"jon@example.com","total_price":"403.00","currency":"USD"}"#;
    let partner = r#"{"event":"shipment.sent","delivery":"dlv-77","tracking":"1Z999"}"#;
    let webhooks: Vec<(&str, &str, Headers, &str)> = vec![
        (
            "/webhooks/billing",
            billing,
            standard_webhooks_headers("msg_2KWPBgLlAfxdpx2AI54pPJ85f4W", at, billing),
            "invoice.paid",
        ),
        (
            "/webhooks/stripe",
            stripe,
            stripe_headers(stripe, at),
            "payment_intent.succeeded",
        ),
        (
            "/webhooks/github",
            github,
            github_headers(github, "72d3162e-cc78-11e3-81ab-4c9367dc0958"),
            "pull_request",
        ),
        (
            "/webhooks/shopify",
            shopify,
            shopify_headers(shopify, "b54557e4-bdd9-4b37-8a5f-bf7d70bcd043"),
            "orders.create",
        ),
        (
            "/webhooks/partner",
            partner,
            partner_headers(partner, at),
            "shipment.sent",
        ),
    ];

    let mut ids = Vec::new();
    for (path, body, headers, _) in &webhooks {
        let first = send(&pipeline, path, headers, body).await;
        assert_eq!(first.status(), 202, "{path}: {:?}", first.text().await);
        let first = json(first).await;
        // The provider retries (it did not see our answer): same delivery id.
        let again = send(&pipeline, path, headers, body).await;
        assert_eq!(again.status(), 200, "{path}");
        let again = json(again).await;
        assert_eq!(again["duplicate"], true, "{path}");
        assert_eq!(again["event_id"], first["event_id"], "{path}");
        ids.push(first["event_id"].as_str().unwrap().to_owned());
    }

    provider
        .wait_for_accepted(webhooks.len(), Duration::from_secs(20))
        .await;
    pipeline.quiescent().await;
    assert_eq!(
        provider.received().len(),
        webhooks.len(),
        "each exactly once"
    );
    let stored = pipeline.stream_messages("INGEST").await;
    assert_eq!(stored.len(), webhooks.len());
    for ((path, body, _, event_type), id) in webhooks.iter().zip(&ids) {
        let source = path.trim_start_matches("/webhooks/");
        let message = stored
            .iter()
            .find(|m| m.subject.as_str() == format!("ingest.{source}.{event_type}"))
            .unwrap_or_else(|| panic!("{path} stored as ingest.{source}.{event_type}"));
        assert_eq!(
            message.payload.as_ref(),
            body.as_bytes(),
            "the raw body is kept"
        );
        let delivered = provider
            .received()
            .into_iter()
            .find(|r| r.header("switchyard-event-id") == Some(id))
            .unwrap_or_else(|| panic!("{path} delivered under its event id"));
        let sent: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(delivered.json(), sent);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn unauthentic_webhooks_get_401_with_a_problem_body_and_store_nothing() {
    let provider = FakeProvider::start().await;
    let (pipeline, _secrets) = start(&provider).await;
    let at = now();
    let body = r#"{"type":"invoice.paid"}"#;
    let good = standard_webhooks_headers("msg_1", at, body);
    let with = |name: &str, value: &str| -> Headers {
        good.iter()
            .map(|(n, v)| {
                if n == name {
                    (n.clone(), value.to_owned())
                } else {
                    (n.clone(), v.clone())
                }
            })
            .collect()
    };
    let without =
        |name: &str| -> Headers { good.iter().filter(|(n, _)| n != name).cloned().collect() };
    let stale = standard_webhooks_headers("msg_2", at - 600, body);
    let cases: Vec<(&str, Headers, &str, u16, &str)> = vec![
        (
            "/webhooks/billing",
            without("webhook-signature"),
            body,
            401,
            "webhook-signature header is missing",
        ),
        (
            "/webhooks/billing",
            with(
                "webhook-signature",
                "v1,AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=",
            ),
            body,
            401,
            "no signature matches",
        ),
        (
            "/webhooks/billing",
            good.clone(),
            r#"{"type":"invoice.paid","amount":1}"#,
            401,
            "no signature matches",
        ),
        (
            "/webhooks/billing",
            stale,
            body,
            401,
            "beyond the 300s tolerance",
        ),
        (
            "/webhooks/billing",
            with("webhook-timestamp", "yesterday"),
            body,
            401,
            "not a Unix timestamp",
        ),
        (
            "/webhooks/stripe",
            vec![("Stripe-Signature".into(), "v1=abc".into())],
            body,
            401,
            "no t= timestamp",
        ),
        (
            "/webhooks/github",
            vec![("X-Hub-Signature-256".into(), "md5=abc".into())],
            body,
            401,
            "sha256=<hex>",
        ),
        (
            "/webhooks/shopify",
            vec![("X-Shopify-Hmac-Sha256".into(), "%%%".into())],
            body,
            401,
            "not base64",
        ),
        (
            "/webhooks/nowhere",
            good.clone(),
            body,
            404,
            "no source named \"nowhere\"",
        ),
        (
            "/webhooks/shop",
            good.clone(),
            body,
            404,
            "has no webhook settings",
        ),
    ];
    for (path, headers, body, status, detail) in cases {
        let response = send(&pipeline, path, &headers, body).await;
        assert_eq!(response.status().as_u16(), status, "{path} {detail}");
        assert_eq!(
            response.headers()["content-type"],
            "application/problem+json"
        );
        let problem = json(response).await;
        let text = problem["detail"].as_str().unwrap();
        assert!(
            text.contains(detail),
            "{path}: {text:?} should say {detail:?}"
        );
        assert!(!text.contains("MfKQ9r8"), "no secret in errors");
    }
    // Well signed but not JSON: verified first, then refused as malformed.
    let not_json = "not json";
    let response = send(
        &pipeline,
        "/webhooks/github",
        &github_headers(not_json, "d-1"),
        not_json,
    )
    .await;
    assert_eq!(response.status(), 400);
    assert!(
        json(response).await["detail"]
            .as_str()
            .unwrap()
            .contains("not valid JSON")
    );

    assert_eq!(pipeline.stream_len("INGEST").await, 0, "nothing stored");
    assert_eq!(pipeline.stream_len("DLQ").await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn api_keys_and_the_sources_rate_limit_guard_the_events_api() {
    let provider = FakeProvider::start().await;
    let (pipeline, _secrets) = start(&provider).await;
    let post = |key: Option<&str>, id: &str| {
        let mut request = pipeline
            .http
            .post(format!(
                "{}/v1/events/shop?type=order.created",
                pipeline.ingest_url
            ))
            .json(&serde_json::json!({"id": id}));
        if let Some(key) = key {
            request = request.header("authorization", format!("Bearer {key}"));
        }
        request.send()
    };
    // The first three requests (the burst) spend the budget whatever their outcome.
    let missing = post(None, "a").await.unwrap();
    assert_eq!(missing.status(), 401);
    assert!(
        json(missing).await["detail"]
            .as_str()
            .unwrap()
            .contains("API key")
    );
    assert_eq!(post(Some("sk_wrong"), "b").await.unwrap().status(), 401);
    assert_eq!(post(Some(API_KEY), "c").await.unwrap().status(), 202);
    let limited = post(Some(API_KEY), "d").await.unwrap();
    assert_eq!(limited.status(), 429);
    let retry_after: u64 = limited.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=20).contains(&retry_after), "Retry-After {retry_after}");
    let problem = json(limited).await;
    assert!(problem["detail"].as_str().unwrap().contains("rate limit"));
    assert_eq!(problem["retry_after"], retry_after);

    provider.wait_for_accepted(1, Duration::from_secs(20)).await;
    pipeline.quiescent().await;
    assert_eq!(
        pipeline.stream_len("INGEST").await,
        1,
        "only the authorised event"
    );
    assert_eq!(provider.received().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn schemas_reject_with_the_failing_paths_or_dead_letter_per_source() {
    let provider = FakeProvider::start().await;
    let (pipeline, _secrets) = start(&provider).await;
    let url = |source: &str, event_type: &str| {
        format!(
            "{}/v1/events/{source}?type={event_type}",
            pipeline.ingest_url
        )
    };
    let invalid = serde_json::json!({"id": 7, "total": -1});
    let response = pipeline
        .http
        .post(url("strict", "order.created"))
        .json(&invalid)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 422);
    assert_eq!(
        response.headers()["content-type"],
        "application/problem+json"
    );
    let problem = json(response).await;
    let paths: Vec<&str> = problem["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["path"].as_str().unwrap())
        .collect();
    assert_eq!(paths.len(), 2, "{problem}");
    assert!(
        paths.contains(&"/id") && paths.contains(&"/total"),
        "{paths:?}"
    );
    // Types the schema does not cover, and valid events, pass.
    for (event_type, body) in [
        ("customer.created", serde_json::json!({"anything": true})),
        ("order.created", serde_json::json!({"id": "o1", "total": 5})),
    ] {
        let response = pipeline
            .http
            .post(url("strict", event_type))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 202, "{event_type}");
    }

    // dead_letter: accepted, kept in the DLQ with the failing paths, never routed.
    let response = pipeline
        .http
        .post(url("lenient", "order.created"))
        .json(&serde_json::json!({"no_id": true}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202);
    let accepted = json(response).await;
    assert_eq!(accepted["dead_lettered"], true);
    let letters = pipeline.stream_messages("DLQ").await;
    assert_eq!(letters.len(), 1);
    let letter = &letters[0];
    assert_eq!(letter.subject.as_str(), "dlq._source.lenient");
    let header = |name: &str| letter.headers.get(name).map(|v| v.as_str().to_owned());
    assert_eq!(
        header("Switchyard-Failure-Category").as_deref(),
        Some("schema")
    );
    assert!(header("Switchyard-Failure-Reason").unwrap().contains("id"));
    assert_eq!(
        header("Switchyard-Event-Id").as_deref(),
        accepted["event_id"].as_str()
    );
    assert_eq!(letter.payload.as_ref(), br#"{"no_id":true}"#);

    provider.wait_for_accepted(2, Duration::from_secs(20)).await;
    pipeline.quiescent().await;
    assert_eq!(pipeline.stream_len("INGEST").await, 2);
    assert_eq!(provider.received().len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn with_nats_down_ingest_answers_503_quickly_and_recovers_by_itself() {
    let provider = FakeProvider::start().await;
    let (mut pipeline, _secrets) = start(&provider).await;
    let body = serde_json::json!({"id": "o1", "total": 1});
    let post = |pipeline: &Pipeline, id: &str| {
        pipeline
            .http
            .post(format!(
                "{}/v1/events/strict?type=order.created",
                pipeline.ingest_url
            ))
            .header("idempotency-key", id)
            .json(&body)
            .timeout(Duration::from_secs(10))
            .send()
    };
    assert_eq!(post(&pipeline, "before").await.unwrap().status(), 202);
    // Every service is up once the first event has gone all the way through, and
    // its delivery record is stored once the pipeline is at rest. (Killing NATS between
    // the provider's answer and that record sends the event again: the at-least-once
    // window `Idempotency-Key` covers, not what this test is about.)
    provider.wait_for_accepted(1, Duration::from_secs(20)).await;
    pipeline.quiescent().await;

    pipeline.nats.kill().await;
    let mut slowest = Duration::ZERO;
    for i in 0..5 {
        let started = Instant::now();
        let response = post(&pipeline, &format!("down-{i}")).await.unwrap();
        slowest = slowest.max(started.elapsed());
        assert_eq!(response.status(), 503);
        assert_eq!(response.headers()["retry-after"], "1");
        let problem = json(response).await;
        assert!(problem["detail"].as_str().unwrap().contains("retry later"));
    }
    eprintln!("slowest 503 with NATS down: {slowest:?}");
    // Bounded by ingest.publish_timeout (2s here), never a hang.
    assert!(
        slowest < Duration::from_secs(3),
        "slowest 503 took {slowest:?}"
    );

    pipeline.nats.restart().await.unwrap();
    eventually(
        Duration::from_secs(30),
        "ingest accepting again",
        || async {
            let response = post(&pipeline, "after").await.ok()?;
            (response.status() == 202 || response.status() == 200).then_some(())
        },
    )
    .await;
    provider.wait_for_accepted(2, Duration::from_secs(30)).await;
    pipeline.quiescent().await;
    let keys: Vec<String> = provider
        .received()
        .iter()
        .filter_map(|r| r.header("switchyard-event-id").map(str::to_owned))
        .collect();
    // The two accepted events, each once. (A 503 promises nothing was accepted; an
    // event a client gave up on may still be stored once, under its key.)
    let before = switchyard_core::event::keyed_event_id("strict", "before");
    let after = switchyard_core::event::keyed_event_id("strict", "after");
    assert_eq!(keys.iter().filter(|k| **k == before).count(), 1);
    assert_eq!(keys.iter().filter(|k| **k == after).count(), 1);
}
