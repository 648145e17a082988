//! `make bench`: Switchyard against raw JetStream baselines measured in the same run
//! on the same kind of nats-server (file storage, a fresh one per measurement).
//!
//! Two parts:
//!
//! - **Transform** alone against a raw relay: a durable pull consumer on one stream,
//!   each message republished as it is to another stream with its publish ack awaited
//!   (pipelined, as many in flight as transform allows), then acked. Transform does the
//!   same plus routing, the 20-field VRL mapping of [`switchyard_tests::workload`] and
//!   its headers. Both start with the same events stored and are timed until every
//!   output is stored. The mapping step's own cost comes from the criterion benchmark
//!   (`cargo bench --bench mapping`), read from its estimates when present.
//! - **End to end** ([`e2e`]): HTTP ingest → transform → delivery → a local HTTP sink,
//!   each service a release-built process, against the raw acked publish rate and a
//!   raw 3-hop relay; ingest alone, one event per request and in batches of 500;
//!   batch delivery at a fixed provider request limit; latency at a fixed 1,000
//!   events/s; peak RSS and CPU per event of each service.
//!
//! Each rate is the best of two runs. Prints a table and writes `target/bench/bench.json`.
//!
//! `switchyard-bench soak` is `make soak` (see [`soak`]); `switchyard-bench ingest`
//! measures only ingest and the HTTP floor, for work on ingest; `switchyard-bench
//! batch` only the batch measurements.

mod e2e;
mod plot;

use std::time::{Duration, Instant};

use async_nats::jetstream;
use serde_json::{Value, json};
use switchyard_core::{shutdown::Shutdown, topology};
use switchyard_tests::{Pipeline, TestNats, target_dir, write_report};

/// Events per run; `BENCH_EVENTS` overrides.
const EVENTS: u64 = 20_000;
/// The fixed rate of the latency measurement, and for how long.
const FIXED_RATE: u64 = 1_000;
const FIXED_SECONDS: u64 = 15;
/// Targets.
const TRANSFORM_TO_RELAY: f64 = 0.5;
const MAPPING_TARGET_US: f64 = 20.0;
const END_TO_END_TO_THREE_HOPS: f64 = 0.4;
const INGEST_TO_PUBLISH: f64 = 0.35;
const BATCH_INGEST_TO_PUBLISH: f64 = 0.6;
/// CPU of ingest, transform and delivery together per event, end to end.
const CPU_TARGET_US_MAX: f64 = 140.0;
const CPU_TARGET_US_FIXED: f64 = 200.0;
/// The provider request limit and batch size of the batch delivery measurement.
const BATCH_REQUESTS_PER_SECOND: u32 = 20;
const BATCH_EVENTS: u32 = 100;
const P99_TARGET_MS: f64 = 10.0;
const RSS_TARGET_MIB: f64 = 50.0;
/// Most growth of a service's RSS from minute 5 to the last minute: of a soak of up to
/// 30 minutes, and of a longer one.
const SOAK_GROWTH: f64 = 0.05;
const LONG_SOAK_GROWTH: f64 = 0.1;

fn best(rates: &[f64]) -> f64 {
    rates.iter().copied().fold(0.0, f64::max)
}

/// Runs `measure` twice and keeps the best rate (and what came with it).
async fn best_of_two<T, F, Fut>(what: &str, mut measure: F) -> anyhow::Result<(f64, T)>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<(f64, T)>>,
{
    let first = measure().await?;
    let second = measure().await?;
    eprintln!("{what}: {:.0}/s, {:.0}/s", first.0, second.0);
    Ok(if second.0 > first.0 { second } else { first })
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match std::env::args().nth(1).as_deref() {
        Some("soak") => return soak().await,
        // Ingest alone and the HTTP floor, for work on ingest.
        Some("ingest") => {
            let events = 20_000;
            let floor = e2e::http_floor(events).await?;
            let (ingest, services) = e2e::ingest_only(events).await?;
            println!(
                "ingest {ingest:.0}/s, HTTP floor {floor:.0}/s ({:.0}%); {services}",
                ingest / floor * 100.0
            );
            return Ok(());
        }
        // Batch ingest and batch delivery against raw publish, for work on batches.
        Some("batch") => {
            let events = std::env::var("BENCH_EVENTS")
                .ok()
                .and_then(|n| n.parse().ok())
                .unwrap_or(EVENTS);
            let publish = e2e::raw_publish(events).await?;
            let (ingest, services) = e2e::batch_ingest_only(events).await?;
            let (delivery, requests) =
                e2e::batch_delivery(events, BATCH_REQUESTS_PER_SECOND, BATCH_EVENTS).await?;
            println!(
                "raw publish {publish:.0}/s; batch ingest {ingest:.0}/s ({:.0}%), {services}; batch delivery {delivery:.0}/s in {requests} requests at {BATCH_REQUESTS_PER_SECOND} requests/s",
                ingest / publish * 100.0
            );
            return Ok(());
        }
        // What `sync_interval: always` costs: the raw acked publish and ingest alone
        // with the server's default sync interval and with an fsync per write. Needs
        // nats-server 2.10 or newer (NATS_SERVER_BIN); Debian's 2.9 has no such setting.
        Some("sync") => return sync_interval_cost().await,
        // The whole pipeline alone, at its highest rate and at 1,000/s, for profiling.
        Some("e2e") => {
            let report = e2e::end_to_end(EVENTS, FIXED_RATE, FIXED_RATE * FIXED_SECONDS).await?;
            println!("{report:#}");
            return Ok(());
        }
        _ => {}
    }
    let events = std::env::var("BENCH_EVENTS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(EVENTS);

    // Transform alone.
    let mut relay = Vec::new();
    let mut transform = Vec::new();
    for round in 1..=2 {
        relay.push(raw_relay(events).await?);
        transform.push(transform_service(events).await?);
        eprintln!(
            "round {round}: relay {:.0}/s, transform {:.0}/s",
            relay[round - 1],
            transform[round - 1]
        );
    }
    let (relay_rate, transform_rate) = (best(&relay), best(&transform));
    let ratio = transform_rate / relay_rate;
    let mapping = criterion_estimate("vrl_20_fields_1kib");
    let baseline = criterion_estimate("json_roundtrip_baseline");

    // End to end.
    let (publish_rate, ()) = best_of_two("raw publish", || async {
        Ok((e2e::raw_publish(events).await?, ()))
    })
    .await?;
    let (hops_rate, ()) = best_of_two("raw 3-hop relay", || async {
        Ok((e2e::raw_three_hops(events).await?, ()))
    })
    .await?;
    let (floor_rate, ()) = best_of_two("HTTP floor", || async {
        Ok((e2e::http_floor(events).await?, ()))
    })
    .await?;
    let (ingest_rate, ingest_services) =
        best_of_two("ingest alone", || e2e::ingest_only(events)).await?;
    let (batch_ingest_rate, batch_ingest_services) =
        best_of_two("batch ingest alone", || e2e::batch_ingest_only(events)).await?;
    let (batch_delivery_rate, batch_requests) = best_of_two("batch delivery", || {
        e2e::batch_delivery(events, BATCH_REQUESTS_PER_SECOND, BATCH_EVENTS)
    })
    .await?;
    let (e2e_rate, end_to_end) = best_of_two("end to end", || async {
        let report = e2e::end_to_end(events, FIXED_RATE, FIXED_RATE * FIXED_SECONDS).await?;
        Ok((
            report["max"]["events_per_second"].as_f64().unwrap_or(0.0),
            report,
        ))
    })
    .await?;

    println!("events per run          {events}");
    println!("storage                 {}", storage_settings());
    println!();
    println!("transform alone");
    println!("  raw relay             {relay_rate:>9.0} events/s");
    println!(
        "  transform             {transform_rate:>9.0} events/s  = {:.0}% of the relay (target ≥ {:.0}%: {})",
        ratio * 100.0,
        TRANSFORM_TO_RELAY * 100.0,
        verdict(ratio >= TRANSFORM_TO_RELAY)
    );
    match (mapping, baseline) {
        (Some(mapping), Some(baseline)) => println!(
            "  mapping step          {:>9.2} µs/event = {:.2}× a JSON parse+write of the same body (target < {MAPPING_TARGET_US} µs: {})",
            mapping / 1000.0,
            mapping / baseline,
            verdict(mapping / 1000.0 < MAPPING_TARGET_US)
        ),
        _ => println!(
            "  mapping step          run `cargo bench -p switchyard-tests --bench mapping` first"
        ),
    }
    println!();
    println!("end to end: HTTP ingest → transform → delivery → HTTP sink");
    println!("  raw acked publish     {publish_rate:>9.0} events/s");
    println!("  raw 3-hop relay       {hops_rate:>9.0} events/s");
    let ingest_ratio = ingest_rate / publish_rate;
    println!(
        "  ingest alone (HTTP)   {ingest_rate:>9.0} events/s  = {:.0}% of the raw publish (target ≥ {:.0}%: {})",
        ingest_ratio * 100.0,
        INGEST_TO_PUBLISH * 100.0,
        verdict(ingest_ratio >= INGEST_TO_PUBLISH)
    );
    println!(
        "  HTTP floor            {floor_rate:>9.0} events/s  (a server that answers 202 and does nothing; ingest = {:.0}% of it)",
        ingest_rate / floor_rate * 100.0
    );
    let batch_ingest_ratio = batch_ingest_rate / publish_rate;
    println!(
        "  batch ingest alone    {batch_ingest_rate:>9.0} events/s  = {:.0}% of raw publish, batches of 500 (target ≥ {:.0}%: {})",
        batch_ingest_ratio * 100.0,
        BATCH_INGEST_TO_PUBLISH * 100.0,
        verdict(batch_ingest_ratio >= BATCH_INGEST_TO_PUBLISH)
    );
    let ceiling = f64::from(BATCH_REQUESTS_PER_SECOND * BATCH_EVENTS);
    println!(
        "  batch delivery        {batch_delivery_rate:>9.0} events/s  to a sink taking {BATCH_REQUESTS_PER_SECOND} requests/s of {BATCH_EVENTS} = {:.0}% of its {ceiling:.0}/s ceiling ({batch_requests} requests)",
        batch_delivery_rate / ceiling * 100.0,
    );
    let e2e_ratio = e2e_rate / hops_rate;
    println!(
        "  end to end, max       {e2e_rate:>9.0} events/s  = {:.0}% of the 3-hop relay (target ≥ {:.0}%: {})",
        e2e_ratio * 100.0,
        END_TO_END_TO_THREE_HOPS * 100.0,
        verdict(e2e_ratio >= END_TO_END_TO_THREE_HOPS)
    );
    for (phase, label) in [("max", "at max rate"), ("fixed", "at 1,000/s")] {
        let latency = &end_to_end[phase]["latency_ms"];
        let p99 = latency["p99"].as_f64().unwrap_or(f64::MAX);
        let target = if phase == "fixed" {
            format!(
                " (p99 target < {P99_TARGET_MS} ms: {})",
                verdict(p99 < P99_TARGET_MS)
            )
        } else {
            String::new()
        };
        println!(
            "  latency {label:<13} p50 {:>7.2} ms  p99 {:>7.2} ms  p99.9 {:>7.2} ms{target}",
            latency["p50"].as_f64().unwrap_or(0.0),
            p99,
            latency["p99_9"].as_f64().unwrap_or(0.0),
        );
    }
    println!("  CPU per event (µs)    ingest transform delivery  services  nats-server  all");
    for (phase, label, target) in [
        ("max", "at max rate", CPU_TARGET_US_MAX),
        ("fixed", "at 1,000/s", CPU_TARGET_US_FIXED),
    ] {
        let services = &end_to_end[phase]["services"];
        let cpu = |name: &str| services[name]["cpu_us_per_event"].as_f64().unwrap_or(0.0);
        let ours = cpu("ingest") + cpu("transform") + cpu("delivery");
        let nats = cpu("nats-server");
        println!(
            "  {label:<21} {:>6.1} {:>9.1} {:>8.1} {ours:>9.1} {nats:>12.1} {:>5.1}  (services target ≤ {target} µs: {})",
            cpu("ingest"),
            cpu("transform"),
            cpu("delivery"),
            ours + nats,
            verdict(ours <= target)
        );
    }
    let mut services: Vec<(String, Value)> = end_to_end["max"]["services"]
        .as_object()
        .into_iter()
        .flatten()
        .map(|(name, value)| (name.clone(), value.clone()))
        .collect();
    services.insert(
        0,
        ("ingest alone".into(), ingest_services["ingest"].clone()),
    );
    services.insert(
        1,
        (
            "batch ingest alone".into(),
            batch_ingest_services["ingest"].clone(),
        ),
    );
    for (name, service) in &services {
        let rss = service["peak_rss_mib"].as_f64().unwrap_or(f64::MAX);
        let target = if name == "nats-server" {
            String::from("the server's own")
        } else {
            format!(
                "target < {RSS_TARGET_MIB}: {}",
                verdict(rss < RSS_TARGET_MIB)
            )
        };
        println!(
            "  {name:<21} peak RSS {rss:>6.1} MiB ({target}), CPU {:>6.1} µs/event",
            service["cpu_us_per_event"].as_f64().unwrap_or(0.0),
        );
    }
    println!(
        "  sink                  {} requests for {} distinct events",
        end_to_end["sink_requests"], end_to_end["sink_distinct_events"]
    );

    let report = json!({
        "events": events,
        "transform": {
            "relay_events_per_second": relay,
            "transform_events_per_second": transform,
            "transform_to_relay_ratio": ratio,
            "target_ratio": TRANSFORM_TO_RELAY,
            "storage": storage_settings(),
            "mapping_ns_per_event": mapping,
            "json_roundtrip_ns_per_event": baseline,
            "mapping_target_ns": MAPPING_TARGET_US * 1000.0,
        },
        "end_to_end": {
            "raw_publish_events_per_second": publish_rate,
            "raw_three_hop_relay_events_per_second": hops_rate,
            "ingest_events_per_second": ingest_rate,
            "ingest_to_publish_ratio": ingest_ratio,
            "http_floor_events_per_second": floor_rate,
            "ingest_services": ingest_services,
            "batch_ingest_events_per_second": batch_ingest_rate,
            "batch_ingest_to_publish_ratio": batch_ingest_ratio,
            "batch_ingest_services": batch_ingest_services,
            "batch_delivery": {
                "events_per_second": batch_delivery_rate,
                "provider_requests_per_second": BATCH_REQUESTS_PER_SECOND,
                "max_events": BATCH_EVENTS,
                "requests": batch_requests,
            },
            "end_to_end_to_three_hops_ratio": e2e_ratio,
            "pipeline": end_to_end,
            "targets": {
                "end_to_end_to_three_hops_ratio": END_TO_END_TO_THREE_HOPS,
                "ingest_to_publish_ratio": INGEST_TO_PUBLISH,
                "batch_ingest_to_publish_ratio": BATCH_INGEST_TO_PUBLISH,
                "p99_ms_at_fixed_rate": P99_TARGET_MS,
                "peak_rss_mib": RSS_TARGET_MIB,
                "services_cpu_us_per_event_at_max": CPU_TARGET_US_MAX,
                "services_cpu_us_per_event_at_fixed_rate": CPU_TARGET_US_FIXED,
            },
        },
    });
    write_report("bench.json", &report)?;
    Ok(())
}

/// `make soak`: the whole pipeline at `SOAK_RATE` (500) events/s for `SOAK_MINUTES`
/// (30), the nats-server frozen for 1.5 s every `SOAK_STALL_EVERY` (10) minutes; fails
/// if a service's memory grew from minute 5 to the end by 5% or more (10% in a soak
/// longer than 30 minutes), or an event was lost or doubled. Writes
/// `target/bench/soak.json` and `target/bench/soak.png`.
async fn soak() -> anyhow::Result<()> {
    let setting = |name: &str, default: u64| {
        std::env::var(name)
            .ok()
            .and_then(|n| n.parse().ok())
            .unwrap_or(default)
    };
    let (minutes, rate) = (setting("SOAK_MINUTES", 30), setting("SOAK_RATE", 500));
    let stall_every = setting("SOAK_STALL_EVERY", 10);
    let limit = if minutes > 30 {
        LONG_SOAK_GROWTH
    } else {
        SOAK_GROWTH
    };
    eprintln!(
        "soak: {rate} events/s for {minutes} minutes, NATS stalled every {stall_every} minutes"
    );
    let report = e2e::soak(minutes, rate, stall_every).await?;
    let latency = &report["latency_ms"];
    println!(
        "soak: {} events at {rate}/s for {minutes} min; latency p50 {:.2} ms, p99 {:.2} ms, p99.9 {:.2} ms; nats-server frozen {} ms at {} s",
        report["events"],
        latency["p50"].as_f64().unwrap_or_default(),
        latency["p99"].as_f64().unwrap_or_default(),
        latency["p99_9"].as_f64().unwrap_or_default(),
        report["stall_ms"],
        report["stalls_seconds"],
    );
    let mut grew = false;
    for (name, service) in report["services"].as_object().into_iter().flatten() {
        let growth = service["growth"].as_f64().unwrap_or(f64::INFINITY);
        grew |= growth >= limit;
        let after: Vec<String> = service["peak_rss_mib_after_each_stall"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|mib| format!("{:.1}", mib.as_f64().unwrap_or_default()))
            .collect();
        println!(
            "  {name:<10} RSS {:6.1} MiB in minute 5, {:6.1} MiB in the last minute: {:+.1}% (target < {:.0}%: {}), peak {:.1} MiB, highest in the minute after each stall [{}] MiB",
            service["rss_mib_minute_5"].as_f64().unwrap_or_default(),
            service["rss_mib_last_minute"].as_f64().unwrap_or_default(),
            growth * 100.0,
            limit * 100.0,
            verdict(growth < limit),
            service["peak_rss_mib"].as_f64().unwrap_or_default(),
            after.join(", "),
        );
    }
    // The sink also got the warm-up event.
    let expected = report["events"].as_u64().unwrap_or_default() + 1;
    let (requests, distinct) = (
        report["sink_requests"].as_u64().unwrap_or_default(),
        report["sink_distinct_events"].as_u64().unwrap_or_default(),
    );
    println!("  sink       {requests} requests for {distinct} distinct events, {expected} sent");
    write_report("soak.json", &report)?;
    anyhow::ensure!(!grew, "memory grew by {:.0}% or more", limit * 100.0);
    anyhow::ensure!(
        requests == expected && distinct == expected,
        "events were lost or doubled"
    );
    Ok(())
}

/// `switchyard-bench sync`: the raw acked publish rate with the server's default sync
/// interval against `sync_interval: always`, best of two each, on the same server
/// binary.
async fn sync_interval_cost() -> anyhow::Result<()> {
    let events = 20_000;
    let dir = tempfile::tempdir()?;
    let config = dir.path().join("sync-always.conf");
    std::fs::write(&config, "jetstream { sync_interval: always }\n")?;
    let always_args = || vec!["-c".to_owned(), config.display().to_string()];
    let (default, ()) = best_of_two("raw publish, default sync", || async {
        Ok((
            e2e::raw_publish_on(&TestNats::start().await?, events).await?,
            (),
        ))
    })
    .await?;
    let (always, ()) = best_of_two("raw publish, sync_interval: always", || async {
        let nats = TestNats::start_with(always_args()).await?;
        Ok((e2e::raw_publish_on(&nats, events).await?, ()))
    })
    .await?;
    println!(
        "storage                 {}; and the same with sync_interval: always (fsync before each acknowledgement)",
        storage_settings()
    );
    println!(
        "raw acked publish       {default:>9.0} events/s with the default sync interval, {always:>9.0} events/s with sync_interval: always = {:.0}% of it",
        always / default * 100.0
    );
    Ok(())
}

/// The server and storage every measurement runs on: a fresh nats-server per
/// measurement, JetStream file storage in a temporary directory, the server's default
/// sync interval (written to the OS at once, fsynced every 2 minutes).
fn storage_settings() -> String {
    let version = switchyard::local_server::binary()
        .ok()
        .and_then(|binary| {
            std::process::Command::new(binary)
                .arg("--version")
                .output()
                .ok()
        })
        .map(|out| String::from_utf8_lossy(&out.stdout).trim().to_owned())
        .unwrap_or_else(|| "nats-server (version unknown)".into());
    format!(
        "{version}, JetStream file store (R1), sync interval: server default (fsync every 2 min)"
    )
}

fn verdict(met: bool) -> &'static str {
    if met { "met" } else { "MISSED" }
}

/// Criterion's mean estimate for `mapping/<name>`, in nanoseconds.
fn criterion_estimate(name: &str) -> Option<f64> {
    let path = target_dir().join(format!("criterion/mapping/{name}/new/estimates.json"));
    let estimates: serde_json::Value = serde_json::from_slice(&std::fs::read(path).ok()?).ok()?;
    estimates["mean"]["point_estimate"].as_f64()
}

/// The baseline: relays `events` stored messages from one stream to another.
async fn raw_relay(events: u64) -> anyhow::Result<f64> {
    let nats = TestNats::start().await?;
    let jetstream = jetstream::new(async_nats::connect(nats.url()).await?);
    e2e::file_streams(&jetstream, &["RELAY_IN", "RELAY_OUT"]).await?;
    e2e::publish(&jetstream, "relay_in.order", events).await?;
    let started = Instant::now();
    let relay = tokio::spawn(e2e::relay(
        jetstream.clone(),
        "RELAY_IN",
        "relay_out.order".into(),
        events,
    ));
    let done = e2e::stored(&jetstream, "RELAY_OUT", events).await?;
    relay.await??;
    Ok(events as f64 / (done - started).as_secs_f64())
}

/// Switchyard's transform service on the same workload.
async fn transform_service(events: u64) -> anyhow::Result<f64> {
    let nats = TestNats::start().await?;
    let settings = Pipeline::settings(nats.url());
    let (connection, _) =
        Pipeline::prepare(&settings, &e2e::catalog("http://127.0.0.1:9/orders")).await?;
    let jetstream = connection.jetstream;
    e2e::publish(&jetstream, "ingest.shop.order.created", events).await?;

    let shutdown = Shutdown::new();
    let started = Instant::now();
    shutdown.spawn(
        "transform",
        switchyard_transform::run(settings, shutdown.clone()),
    );
    let done = e2e::stored(&jetstream, topology::DELIVER, events).await?;
    shutdown.trigger();
    shutdown.wait(Duration::from_secs(30)).await?;
    Ok(events as f64 / (done - started).as_secs_f64())
}
