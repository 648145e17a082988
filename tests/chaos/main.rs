//! `make chaos`: events sent over HTTP through ingest, transform and delivery — each
//! its own process on a nats-server with file storage — while something goes wrong.
//! Each scenario prints how many events ingest accepted (sent), how many distinct
//! events the provider accepted (delivered), events it accepted under more than one
//! idempotency key (duplicates: a receiver deduplicating by key would act twice) and
//! accepted events it never got (lost); both of the last must be 0. Requests repeated
//! with the same key after an answer was lost are counted too, as resends: a receiver
//! deduplicates those by the key.
//!
//! Exits 1 if any scenario lost or doubled an event.

use std::{
    collections::{HashMap, HashSet},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use serde_json::json;
use switchyard_tests::{FakeProvider, Received, Reply, processes::Processes};

/// A provider's state that a scenario changes while events flow.
#[derive(Default)]
struct Weather {
    /// Answer 503 to everything.
    down: AtomicBool,
    /// Answer 429 with Retry-After to most requests.
    storm: AtomicBool,
}

fn reply(weather: &Weather, slow: Option<Duration>) -> Reply {
    if weather.down.load(Ordering::Relaxed) {
        return Reply::status(503);
    }
    if weather.storm.load(Ordering::Relaxed) && fastrand::u8(0..10) < 8 {
        return Reply::status(429).header("Retry-After", "1");
    }
    match slow {
        Some(delay) => Reply::ok().after(delay),
        None => Reply::ok(),
    }
}

struct Scenario {
    name: &'static str,
    events: u64,
    rate: u64,
    /// Provider timeout and answer delay.
    slow: Option<Duration>,
}

#[derive(Debug)]
struct Tally {
    sent: u64,
    delivered: u64,
    duplicates: u64,
    lost: u64,
    resends: u64,
    seconds: f64,
}

fn catalog(provider_url: &str, timeout: Duration) -> String {
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
async fn send(ingest_url: String, events: u64, rate: u64) -> anyhow::Result<u64> {
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

fn tally(sent: u64, received: &[Received], seconds: f64) -> Tally {
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

async fn run(scenario: &Scenario) -> anyhow::Result<Tally> {
    let weather = Arc::new(Weather::default());
    let provider = {
        let (weather, slow) = (weather.clone(), scenario.slow);
        FakeProvider::with(move |_| reply(&weather, slow)).await
    };
    let timeout = scenario.slow.map_or(Duration::from_secs(5), |delay| {
        delay + Duration::from_secs(5)
    });
    let mut stack = Processes::start(
        &catalog(provider.url(), timeout),
        &["ingest", "transform", "delivery"],
    )
    .await?;
    let started = Instant::now();
    let sender = tokio::spawn(send(
        stack.ingest_url.clone(),
        scenario.events,
        scenario.rate,
    ));
    // Let events flow first.
    tokio::time::sleep(Duration::from_secs(3)).await;
    match scenario.name {
        "SIGKILL ingest" | "SIGKILL transform" | "SIGKILL delivery" => {
            let service = scenario.name.trim_start_matches("SIGKILL ");
            stack.kill(service).await;
            tokio::time::sleep(Duration::from_secs(1)).await;
            stack.restart(service)?;
        }
        "restart NATS" => stack.nats.restart().await?,
        "provider down 60 s" => {
            weather.down.store(true, Ordering::Relaxed);
            tokio::time::sleep(Duration::from_secs(60)).await;
            weather.down.store(false, Ordering::Relaxed);
        }
        "429 storm" => {
            weather.storm.store(true, Ordering::Relaxed);
            tokio::time::sleep(Duration::from_secs(20)).await;
            weather.storm.store(false, Ordering::Relaxed);
        }
        _ => {}
    }
    let sent = sender.await??;
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        let current = tally(sent, &provider.received(), started.elapsed().as_secs_f64());
        if current.delivered >= sent || Instant::now() > deadline {
            // Anything still in flight would show up as a late duplicate.
            tokio::time::sleep(Duration::from_secs(2)).await;
            return Ok(tally(
                sent,
                &provider.received(),
                started.elapsed().as_secs_f64(),
            ));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let scenario = |name, events, rate, slow| Scenario {
        name,
        events,
        rate,
        slow,
    };
    let scenarios = [
        scenario("SIGKILL ingest", 3_000, 300, None),
        scenario("SIGKILL transform", 3_000, 300, None),
        scenario("SIGKILL delivery", 3_000, 300, None),
        scenario("restart NATS", 3_000, 300, None),
        scenario("provider down 60 s", 3_000, 40, None),
        scenario("429 storm", 3_000, 100, None),
        scenario(
            "provider answers in 10 s",
            600,
            40,
            Some(Duration::from_secs(10)),
        ),
    ];
    let only = std::env::var("CHAOS_ONLY").ok();
    println!(
        "{:<26} {:>6} {:>9} {:>10} {:>5} {:>7} {:>8}",
        "scenario", "sent", "delivered", "duplicates", "lost", "resends", "seconds"
    );
    let mut failed = false;
    let mut report = Vec::new();
    for scenario in &scenarios {
        if only
            .as_deref()
            .is_some_and(|only| !scenario.name.contains(only))
        {
            continue;
        }
        let tally = run(scenario).await?;
        println!(
            "{:<26} {:>6} {:>9} {:>10} {:>5} {:>7} {:>8.1}",
            scenario.name,
            tally.sent,
            tally.delivered,
            tally.duplicates,
            tally.lost,
            tally.resends,
            tally.seconds
        );
        failed |= tally.lost > 0 || tally.duplicates > 0 || tally.sent < scenario.events;
        report.push(json!({
            "scenario": scenario.name,
            "sent": tally.sent,
            "delivered": tally.delivered,
            "duplicates": tally.duplicates,
            "lost": tally.lost,
            "resends": tally.resends,
            "seconds": tally.seconds,
        }));
    }
    let out = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/bench");
    std::fs::create_dir_all(&out)?;
    std::fs::write(out.join("chaos.json"), serde_json::to_vec_pretty(&report)?)?;
    println!("wrote {}", out.join("chaos.json").display());
    if failed {
        anyhow::bail!("events were lost or doubled");
    }
    Ok(())
}
