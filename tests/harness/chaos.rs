//! Events sent through a pipeline while something fails, and the count of what the
//! provider received: shared by `make chaos` and the cluster failover test.

use std::{
    collections::{HashMap, HashSet},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use serde_json::json;

use crate::Received;

/// What a provider received of the events ingest accepted.
#[derive(Debug)]
pub struct Tally {
    /// Events ingest accepted.
    pub sent: u64,
    /// Distinct events the provider accepted.
    pub delivered: u64,
    /// Events the provider accepted under more than one idempotency key.
    pub duplicates: u64,
    /// Accepted events the provider never accepted.
    pub lost: u64,
    /// Requests the provider accepted again under a key it had accepted before.
    pub resends: u64,
    /// Seconds since the scenario started.
    pub seconds: f64,
}

/// A catalog routing `order.*` of source `shop` to provider `crm` at `provider_url`,
/// which retries for minutes; the mapping keeps the order id as `order`.
pub fn catalog(provider_url: &str, timeout: Duration) -> String {
    format!(
        r#"
sources:
  - name: shop
providers:
  - name: crm
    url: {provider_url}/contacts
    timeout: {timeout}ms
    max_in_flight: 64
    retry:
      max_attempts: 200
      backoff: {{ initial: 100ms, factor: 2, max: 2s }}
    breaker:
      cool_down: 1s
      max_cool_down: 5s
mappings:
  - name: order-to-contact
    version: 1
    program: |
      . = {{ "order": string!(.id), "email": downcase(string!(.email)) }}
routes:
  - name: orders
    source: shop
    event_types: ["order.*"]
    mapping: order-to-contact@1
    provider: crm
"#,
        timeout = timeout.as_millis()
    )
}

/// Posts `events` events at `rate` per second, each retried with its own
/// `Idempotency-Key` until ingest accepts it, whatever happens to ingest meanwhile.
pub async fn send(ingest_url: String, events: u64, rate: u64) -> anyhow::Result<u64> {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()?;
    let accepted = Arc::new(AtomicU64::new(0));
    let period = Duration::from_secs_f64(1.0 / rate as f64);
    let start = tokio::time::Instant::now();
    let mut tasks = Vec::new();
    for i in 0..events {
        tokio::time::sleep_until(start + period * u32::try_from(i)?).await;
        let (client, url, accepted) = (client.clone(), ingest_url.clone(), accepted.clone());
        tasks.push(tokio::spawn(async move {
            let deadline = Instant::now() + Duration::from_secs(180);
            loop {
                let answer = client
                    .post(format!("{url}/v1/events/shop?type=order.created"))
                    .header("idempotency-key", format!("chaos-{i}"))
                    .json(&json!({ "id": format!("o-{i}"), "email": format!("C{i}@Example.com") }))
                    .send()
                    .await;
                if answer.is_ok_and(|a| a.status().is_success()) {
                    accepted.fetch_add(1, Ordering::Relaxed);
                    return anyhow::Ok(());
                }
                anyhow::ensure!(Instant::now() < deadline, "ingest never accepted o-{i}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }));
    }
    for task in tasks {
        task.await??;
    }
    Ok(accepted.load(Ordering::Relaxed))
}

/// Counts what the provider received against the `sent` events.
pub fn tally(sent: u64, received: &[Received], seconds: f64) -> Tally {
    let mut keys_per_event: HashMap<String, HashSet<String>> = HashMap::new();
    let mut accepted_requests = 0;
    for request in received.iter().filter(|r| r.accepted()) {
        accepted_requests += 1;
        let order = request.json()["order"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        keys_per_event
            .entry(order)
            .or_default()
            .insert(request.idempotency_key().to_owned());
    }
    let delivered = keys_per_event.len() as u64;
    let keys: u64 = keys_per_event.values().map(|k| k.len() as u64).sum();
    Tally {
        sent,
        delivered,
        duplicates: keys - delivered,
        lost: sent.saturating_sub(delivered),
        resends: accepted_requests - keys,
        seconds,
    }
}
