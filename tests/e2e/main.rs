//! End-to-end tests: a real nats-server, the services in-process, fake providers that
//! are real HTTP servers. Assertions are on what the provider received.

mod access;
mod auth;
mod batches;
mod canary;
mod cdc;
mod chaos;
mod chart;
mod cluster;
mod console;
mod control;
mod dead_letters;
mod delivery;
mod dev;
mod docs;
mod edges;
mod events;
mod flow;
mod ingest;
mod lease;
mod metrics;
mod ordering;
mod outbound;
mod outbox;
mod pacing;
mod polling;
mod prometheus;
mod providers;
mod replay;
mod topology;
mod traces;
mod transform;
mod webhooks;

/// Retry and breaker settings of the test provider unless a test gives its own: quick
/// retries, and a breaker that trips as by default but stays open only briefly.
pub const POLICIES: &str = "
    max_in_flight: 32
    retry:
      max_attempts: 5
      backoff: { initial: 50ms, factor: 2, max: 400ms }
    breaker:
      cool_down: 200ms
      max_cool_down: 1s";

/// The catalog most tests use: source `shop`, provider `crm` at `provider_url`, and a
/// route taking `order.*` events through a mapping that renames and coerces fields.
pub fn catalog(provider_url: &str) -> String {
    catalog_with(provider_url, POLICIES, "")
}

/// [`catalog`] with the provider's policies (YAML lines indented by four spaces) and
/// extra route lines.
pub fn catalog_with(provider_url: &str, policies: &str, route_extra: &str) -> String {
    format!(
        r#"
sources:
  - name: shop
providers:
  - name: crm
    url: {provider_url}/contacts
    timeout: 2s{policies}
mappings:
  - name: order-to-contact
    version: 1
    program: |
      . = {{
        "order": string!(.id),
        "email": downcase(string!(.email)),
        "cents": to_int!(.total) * 100,
      }}
routes:
  - name: orders
    source: shop
    event_types: ["order.*"]
    mapping: order-to-contact@1
    provider: crm{route_extra}
"#
    )
}

/// An order event as the shop sends it.
pub fn order(id: &str, total: i64) -> serde_json::Value {
    serde_json::json!({"id": id, "email": format!("User-{id}@Shop.Example"), "total": total})
}

/// Publishes an order per id straight to NATS, as any client would, and waits for
/// JetStream to store them all. Ids are also the idempotency keys.
pub async fn publish_orders(
    pipeline: &switchyard_tests::Pipeline,
    event_type: &str,
    ids: &[String],
) {
    let events = ids
        .iter()
        .enumerate()
        .map(|(i, id)| (id.clone(), order(id, i as i64)));
    publish_events(&pipeline.jetstream, event_type, events).await;
}

/// Publishes each `(id, body)` of source `shop` straight to NATS, in order, with
/// `shop:<id>` as its message id, and waits for JetStream to store them all.
pub async fn publish_events(
    jetstream: &async_nats::jetstream::Context,
    event_type: &str,
    events: impl IntoIterator<Item = (String, serde_json::Value)>,
) {
    // Acks are awaited in chunks: a JetStream context holds at most 5,000 unanswered.
    let mut acks: Vec<async_nats::jetstream::context::PublishAckFuture> = Vec::new();
    for (id, body) in events {
        if acks.len() == 1000 {
            for ack in acks.drain(..) {
                ack.await.unwrap();
            }
        }
        let mut headers = async_nats::HeaderMap::new();
        headers.insert("Nats-Msg-Id", format!("shop:{id}").as_str());
        let body = serde_json::to_vec(&body).unwrap();
        acks.push(
            jetstream
                .publish_with_headers(format!("ingest.shop.{event_type}"), headers, body.into())
                .await
                .unwrap(),
        );
    }
    for ack in acks {
        ack.await.unwrap();
    }
}

/// Checks that no window of each length in `windows` holds more than
/// `rate × window + burst` of the `arrivals` (sorted).
pub fn assert_paced(
    arrivals: &[std::time::Instant],
    rate: f64,
    burst: usize,
    windows: &[std::time::Duration],
) {
    for window in windows {
        for (i, start) in arrivals.iter().enumerate() {
            let within = arrivals[i..]
                .iter()
                .take_while(|at| **at < *start + *window)
                .count();
            let limit = (rate * window.as_secs_f64()).floor() as usize + burst;
            assert!(
                within <= limit,
                "{within} requests within {window:?} (limit {limit})"
            );
        }
    }
}

/// The order id in a delivered body.
pub fn order_id(request: &switchyard_tests::Received) -> String {
    request.json()["order"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

/// Starts ingest alone on `catalog`, with these variables (the secrets the catalog
/// names) in its environment, and returns what it printed when it refused to start.
pub async fn ingest_refuses(catalog: &str, env: &[(&str, &str)]) -> String {
    let nats = switchyard_tests::TestNats::start().await.unwrap();
    let settings = switchyard_tests::Pipeline::settings(nats.url());
    switchyard_tests::Pipeline::prepare(&settings, catalog)
        .await
        .unwrap();
    let mut command = switchyard_tests::service("switchyard-ingest", &settings);
    command
        .envs(env.iter().copied())
        .env("SWITCHYARD__INGEST__LISTEN", "127.0.0.1:0");
    let out = tokio::time::timeout(std::time::Duration::from_secs(30), command.output())
        .await
        .expect("ingest exits at start")
        .unwrap();
    assert!(!out.status.success(), "ingest must not start");
    let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&out.stderr));
    text
}

/// `syctl sources status -o json` against the stack's control API.
pub fn sources_status(stack: &switchyard_tests::processes::Processes) -> Option<serde_json::Value> {
    let out = std::process::Command::new(switchyard_tests::binary("syctl"))
        .args([
            "--server",
            &stack.control_url(),
            "-o",
            "json",
            "sources",
            "status",
        ])
        .output()
        .ok()?;
    serde_json::from_slice(&out.stdout).ok()
}
