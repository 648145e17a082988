//! `make bench`: Switchyard's transform service against a raw JetStream relay, measured
//! in the same run on the same nats-server (file storage).
//!
//! The baseline is the least any consume→republish step can do: a durable pull
//! consumer on one stream, each message republished as it is to another stream with
//! its publish ack awaited (pipelined, as many in flight as transform allows), then
//! acked. Transform does the same plus routing, the 20-field VRL mapping of
//! [`switchyard_tests::workload`] and its headers. Both start with the same number of
//! events already stored and are timed until every output is stored. Each runs twice,
//! alternating, on a fresh server; the best of each is compared. The mapping step's
//! own cost comes from the criterion benchmark (`cargo bench --bench mapping`), read
//! from its estimates when present.
//!
//! Prints a table and writes `target/bench/transform.json`.

use std::{
    path::PathBuf,
    time::{Duration, Instant},
};

use anyhow::Context as _;
use async_nats::jetstream::{
    self,
    consumer::{AckPolicy, pull},
    stream,
};
use futures::{StreamExt, stream::FuturesUnordered};
use switchyard_core::{
    catalog::{Catalog, CatalogStore},
    shutdown::Shutdown,
    topology,
};
use switchyard_tests::{Pipeline, TestNats, workload};

/// Events per run; `BENCH_EVENTS` overrides.
const EVENTS: u64 = 20_000;
/// The transform target: at least this share of the raw relay's rate.
const RELAY_TARGET: f64 = 0.8;
/// The mapping-step target, per event.
const MAPPING_TARGET_US: f64 = 20.0;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let events = std::env::var("BENCH_EVENTS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(EVENTS);
    let max_in_flight = switchyard_core::config::Settings::default()
        .transform
        .max_in_flight;
    let mut relay = Vec::new();
    let mut transform = Vec::new();
    for round in 1..=2 {
        relay.push(raw_relay(events, max_in_flight).await?);
        transform.push(transform_service(events).await?);
        eprintln!(
            "round {round}: relay {:.0}/s, transform {:.0}/s",
            relay[round - 1],
            transform[round - 1]
        );
    }
    let best = |rates: &[f64]| rates.iter().copied().fold(0.0, f64::max);
    let (relay_rate, transform_rate) = (best(&relay), best(&transform));
    let ratio = transform_rate / relay_rate;
    let mapping = criterion_estimate("vrl_20_fields_1kib");
    let baseline = criterion_estimate("json_roundtrip_baseline");

    println!("events per run          {events}");
    println!("raw relay               {relay_rate:>9.0} events/s");
    println!(
        "transform               {transform_rate:>9.0} events/s  = {:.0}% of the relay (target ≥ {:.0}%: {})",
        ratio * 100.0,
        RELAY_TARGET * 100.0,
        verdict(ratio >= RELAY_TARGET)
    );
    match (mapping, baseline) {
        (Some(mapping), Some(baseline)) => println!(
            "mapping step            {:>9.2} µs/event = {:.2}× a JSON parse+write of the same body (target < {MAPPING_TARGET_US} µs: {})",
            mapping / 1000.0,
            mapping / baseline,
            verdict(mapping / 1000.0 < MAPPING_TARGET_US)
        ),
        _ => println!(
            "mapping step            run `cargo bench -p switchyard-tests --bench mapping` first"
        ),
    }

    let report = serde_json::json!({
        "events": events,
        "relay_events_per_second": relay,
        "transform_events_per_second": transform,
        "transform_to_relay_ratio": ratio,
        "transform_target_ratio": RELAY_TARGET,
        "mapping_ns_per_event": mapping,
        "json_roundtrip_ns_per_event": baseline,
        "mapping_target_ns": MAPPING_TARGET_US * 1000.0,
    });
    let out = target_dir().join("bench");
    std::fs::create_dir_all(&out)?;
    std::fs::write(
        out.join("transform.json"),
        serde_json::to_vec_pretty(&report)?,
    )?;
    println!("wrote {}", out.join("transform.json").display());
    Ok(())
}

fn verdict(met: bool) -> &'static str {
    if met { "met" } else { "MISSED" }
}

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target"))
}

/// Criterion's mean estimate for `mapping/<name>`, in nanoseconds.
fn criterion_estimate(name: &str) -> Option<f64> {
    let path = target_dir().join(format!("criterion/mapping/{name}/new/estimates.json"));
    let estimates: serde_json::Value = serde_json::from_slice(&std::fs::read(path).ok()?).ok()?;
    estimates["mean"]["point_estimate"].as_f64()
}

/// Stores `events` copies of the workload payload on `subject`, acks pipelined.
async fn fill(jetstream: &jetstream::Context, subject: &str, events: u64) -> anyhow::Result<()> {
    let payload = bytes::Bytes::from(workload::payload());
    let mut acks = Vec::with_capacity(1000);
    for i in 0..events {
        let mut headers = async_nats::HeaderMap::new();
        headers.insert("Nats-Msg-Id", format!("bench-{i}").as_str());
        acks.push(
            jetstream
                .publish_with_headers(subject.to_owned(), headers, payload.clone())
                .await?,
        );
        if acks.len() == 1000 {
            for ack in acks.drain(..) {
                ack.await?;
            }
        }
    }
    for ack in acks {
        ack.await?;
    }
    Ok(())
}

/// Waits until `stream` holds `count` messages; returns when that was seen.
async fn stored(
    jetstream: &jetstream::Context,
    stream: &str,
    count: u64,
) -> anyhow::Result<Instant> {
    let mut handle = jetstream.get_stream(stream).await?;
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        if handle.info().await?.state.messages >= count {
            return Ok(Instant::now());
        }
        anyhow::ensure!(Instant::now() < deadline, "{stream} never reached {count}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// The baseline: relays `events` stored messages from one stream to another.
async fn raw_relay(events: u64, max_in_flight: usize) -> anyhow::Result<f64> {
    let nats = TestNats::start().await?;
    let client = async_nats::connect(nats.url()).await?;
    let jetstream = jetstream::new(client);
    for (name, subject) in [("RELAY_IN", "relay.in.>"), ("RELAY_OUT", "relay.out.>")] {
        jetstream
            .create_stream(stream::Config {
                name: name.into(),
                subjects: vec![subject.into()],
                storage: stream::StorageType::File,
                ..Default::default()
            })
            .await?;
    }
    fill(&jetstream, "relay.in.order", events).await?;
    let consumer = jetstream
        .get_stream("RELAY_IN")
        .await?
        .create_consumer(pull::Config {
            durable_name: Some("relay".into()),
            ack_policy: AckPolicy::Explicit,
            max_ack_pending: i64::try_from(max_in_flight * 2)?,
            ..Default::default()
        })
        .await?;
    let started = Instant::now();
    let relay = {
        let jetstream = jetstream.clone();
        tokio::spawn(async move {
            let mut messages = consumer
                .stream()
                .max_messages_per_batch(256)
                .messages()
                .await?;
            let mut in_flight = FuturesUnordered::new();
            let mut relayed = 0;
            while relayed < events {
                tokio::select! {
                    Some(done) = in_flight.next(), if !in_flight.is_empty() => {
                        let (message, ack): (jetstream::Message, Result<_, _>) = done;
                        ack.context("publish ack")?;
                        message.ack().await.map_err(|err| anyhow::anyhow!("ack: {err}"))?;
                        relayed += 1;
                    }
                    Some(message) = messages.next(), if in_flight.len() < max_in_flight => {
                        let message = message?;
                        let headers = message.headers.clone().unwrap_or_default();
                        let ack = jetstream
                            .publish_with_headers("relay.out.order", headers, message.payload.clone())
                            .await?;
                        in_flight.push(async move { (message, ack.await) });
                    }
                }
            }
            anyhow::Ok(())
        })
    };
    let done = stored(&jetstream, "RELAY_OUT", events).await?;
    relay.await??;
    Ok(events as f64 / (done - started).as_secs_f64())
}

/// Switchyard's transform service on the same workload.
async fn transform_service(events: u64) -> anyhow::Result<f64> {
    let nats = TestNats::start().await?;
    let settings = Pipeline::settings(nats.url());
    let connection = switchyard_core::nats::connect(&settings.nats, "bench").await?;
    let jetstream = connection.jetstream.clone();
    topology::ensure_topology(&jetstream, &settings.topology).await?;
    let program = workload::PROGRAM.replace('\n', "\n      ");
    let catalog = Catalog::from_yaml(&format!(
        r#"
sources:
  - name: shop
providers:
  - name: sink
    url: http://127.0.0.1:9/orders
mappings:
  - name: order
    version: 1
    program: |
      {program}
routes:
  - name: orders
    source: shop
    event_types: ["order.*"]
    mapping: order@1
    provider: sink
"#
    ))?;
    CatalogStore::open(&jetstream)
        .await?
        .save(&catalog, 0)
        .await?;
    fill(&jetstream, "ingest.shop.order.created", events).await?;

    let shutdown = Shutdown::new();
    let started = Instant::now();
    shutdown.spawn(
        "transform",
        switchyard_transform::run(settings, shutdown.clone()),
    );
    let done = stored(&jetstream, topology::DELIVER, events).await?;
    shutdown.trigger();
    shutdown.wait(Duration::from_secs(30)).await?;
    Ok(events as f64 / (done - started).as_secs_f64())
}
