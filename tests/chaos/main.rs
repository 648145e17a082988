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
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use serde_json::json;
use switchyard_tests::{
    FakeProvider, Reply,
    chaos::{Tally, catalog, send, tally},
    processes::Processes,
    write_report,
};

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
    write_report("chaos.json", &serde_json::Value::Array(report))?;
    if failed {
        anyhow::bail!("events were lost or doubled");
    }
    Ok(())
}
