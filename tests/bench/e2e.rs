//! End to end: HTTP ingest → transform with the 20-field VRL mapping → delivery to a
//! local HTTP sink, each service its own release-built process, against raw JetStream
//! baselines measured on the same kind of server in the same run.
//!
//! - Raw publish: one client stores the events with pipelined publish acks.
//! - Raw 3-hop relay: that publisher plus three consume→republish relays in a chain,
//!   timed until the last stream holds every event: the least any three-step
//!   pipeline on JetStream does (Switchyard's are ingest, transform and delivery).
//! - Ingest alone: HTTP clients posting events, timed until every 202; and the same
//!   clients against a server that answers 202 doing nothing (the HTTP floor).
//! - End to end at the highest rate: HTTP clients as fast as ingest answers, timed
//!   from the first request until the sink holds every event.
//! - End to end at a fixed 1,000 events/s, open loop: latency from sending the request
//!   to ingest until the sink receives the delivery (p50, p99, p99.9).
//!
//! Peak RSS (VmHWM) and CPU time per event come from `/proc` for each service.

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use crate::plot;
use anyhow::Context as _;
use async_nats::jetstream::{
    self,
    consumer::{AckPolicy, pull},
    stream,
};
use futures::{StreamExt, stream::FuturesUnordered};
use serde_json::{Value, json};
use switchyard_tests::{
    TestNats,
    processes::{Process, Processes},
    workload,
};
use tokio::net::TcpListener;

const MIB: f64 = 1024.0 * 1024.0;

/// Requests in flight of the closed-loop HTTP clients.
const HTTP_CONCURRENCY: usize = 64;
/// Publishes in flight of the raw publisher and each relay: as many as transform
/// allows itself (`transform.max_in_flight`).
fn pipeline() -> usize {
    switchyard_core::config::Settings::default()
        .transform
        .max_in_flight
}

/// The workload payload with a unique, fixed-width id, so the sink can tell events
/// apart and every body has the same size.
fn body(index: u64) -> Vec<u8> {
    let template = workload::payload();
    let text = String::from_utf8(template).expect("UTF-8");
    text.replacen("ord_01HZX3Y8Q2", &id_of(index), 1)
        .into_bytes()
}

fn id_of(index: u64) -> String {
    format!("ord_{index:010}")
}

/// Stores `events` payloads on `subject` with [`pipeline`] publish acks in flight.
pub async fn publish(
    jetstream: &jetstream::Context,
    subject: &str,
    events: u64,
) -> anyhow::Result<()> {
    let mut acks = FuturesUnordered::new();
    for i in 0..events {
        if acks.len() >= pipeline() {
            acks.next().await.expect("an ack")?;
        }
        let ack = jetstream
            .publish(subject.to_owned(), body(i).into())
            .await?;
        acks.push(ack.into_future());
    }
    while let Some(ack) = acks.next().await {
        ack?;
    }
    Ok(())
}

/// Moves `events` messages from stream `from` to `to_subject`: consume, republish
/// with the ack awaited, ack.
pub async fn relay(
    jetstream: jetstream::Context,
    from: &str,
    to_subject: String,
    events: u64,
) -> anyhow::Result<()> {
    let consumer = jetstream
        .get_stream(from)
        .await?
        .create_consumer(pull::Config {
            durable_name: Some(format!("relay-{from}")),
            ack_policy: AckPolicy::Explicit,
            max_ack_pending: i64::try_from(pipeline() * 2)?,
            ..Default::default()
        })
        .await?;
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
            Some(message) = messages.next(), if in_flight.len() < pipeline() => {
                let message = message?;
                let ack = jetstream
                    .publish(to_subject.clone(), message.payload.clone())
                    .await?;
                in_flight.push(async move { (message, ack.await) });
            }
        }
    }
    Ok(())
}

pub async fn file_streams(jetstream: &jetstream::Context, names: &[&str]) -> anyhow::Result<()> {
    for name in names {
        jetstream
            .create_stream(stream::Config {
                name: (*name).into(),
                subjects: vec![format!("{}.>", name.to_lowercase())],
                storage: stream::StorageType::File,
                ..Default::default()
            })
            .await?;
    }
    Ok(())
}

/// Waits until `stream` holds `count` messages; returns when that was seen.
pub async fn stored(
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
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// The raw acked publish rate.
pub async fn raw_publish(events: u64) -> anyhow::Result<f64> {
    raw_publish_on(&TestNats::start().await?, events).await
}

/// The raw acked publish rate on `nats`.
pub async fn raw_publish_on(nats: &TestNats, events: u64) -> anyhow::Result<f64> {
    let jetstream = jetstream::new(async_nats::connect(nats.url()).await?);
    file_streams(&jetstream, &["PUB"]).await?;
    let started = Instant::now();
    publish(&jetstream, "pub.order", events).await?;
    Ok(events as f64 / started.elapsed().as_secs_f64())
}

/// The raw 3-hop relay rate: publisher and three relays at once.
pub async fn raw_three_hops(events: u64) -> anyhow::Result<f64> {
    let nats = TestNats::start().await?;
    let jetstream = jetstream::new(async_nats::connect(nats.url()).await?);
    let hops = ["HOP0", "HOP1", "HOP2", "HOP3"];
    file_streams(&jetstream, &hops).await?;
    let started = Instant::now();
    let mut relays = Vec::new();
    for pair in hops.windows(2) {
        relays.push(tokio::spawn(relay(
            jetstream.clone(),
            pair[0],
            format!("{}.order", pair[1].to_lowercase()),
            events,
        )));
    }
    publish(&jetstream, "hop0.order", events).await?;
    let done = stored(&jetstream, "HOP3", events).await?;
    for relay in relays {
        relay.await??;
    }
    Ok(events as f64 / (done - started).as_secs_f64())
}

/// What the sink received: when each event id first arrived, and how many requests.
#[derive(Default)]
struct Sink {
    first: Mutex<HashMap<String, Instant>>,
    requests: AtomicU64,
}

async fn start_sink() -> anyhow::Result<(SocketAddr, Arc<Sink>)> {
    let sink = Arc::new(Sink::default());
    let state = sink.clone();
    let app = axum::Router::new().route(
        "/orders",
        axum::routing::post(move |body: axum::body::Bytes| {
            let sink = state.clone();
            async move {
                let at = Instant::now();
                sink.requests.fetch_add(1, Ordering::Relaxed);
                let value: Value = serde_json::from_slice(&body).unwrap_or_default();
                // One event, or a batch of them.
                let events = match &value {
                    Value::Array(items) => items.iter().collect(),
                    single => vec![single],
                };
                let mut first = sink.first.lock().expect("sink");
                for event in events {
                    if let Some(id) = event["external_id"].as_str() {
                        first.entry(id.to_owned()).or_insert(at);
                    }
                }
                axum::http::StatusCode::OK
            }
        }),
    );
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let address = listener.local_addr()?;
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok((address, sink))
}

/// The benchmarks' catalog: `order.*` events of source `shop` through the 20-field
/// workload mapping to provider `sink` at `url`.
pub fn catalog(url: &str) -> String {
    catalog_with(url, "")
}

/// [`catalog`] with more settings of the provider (indented by four spaces).
fn catalog_with(url: &str, provider: &str) -> String {
    let program = workload::PROGRAM.replace('\n', "\n      ");
    format!(
        r#"
sources:
  - name: shop
providers:
  - name: sink
    url: {url}
    max_in_flight: 256{provider}
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
    )
}

/// The services as processes, and the sink their deliveries go to.
struct Stack {
    processes: Processes,
    ingest: String,
    sink: Arc<Sink>,
}

impl Stack {
    async fn start(names: &[&'static str]) -> anyhow::Result<Self> {
        Self::start_with(names, "").await
    }

    /// Like [`Stack::start`], with more settings of the sink provider.
    async fn start_with(names: &[&'static str], provider: &str) -> anyhow::Result<Self> {
        let (sink_address, sink) = start_sink().await?;
        let catalog = catalog_with(&format!("http://{sink_address}/orders"), provider);
        let processes = Processes::start(&catalog, names).await?;
        let stack = Self {
            ingest: format!("{}/v1/events/shop?type=order.created", processes.ingest_url),
            processes,
            sink,
        };
        stack.warm_up().await?;
        Ok(stack)
    }

    /// Waits until ingest answers and, with delivery running, one event went through.
    async fn warm_up(&self) -> anyhow::Result<()> {
        let client = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(30);
        let delivering = self
            .processes
            .services()
            .iter()
            .any(|s| s.name == "delivery");
        loop {
            let sent = client
                .post(&self.ingest)
                .header("content-type", "application/json")
                // One event however often it is sent, so the sink's count stays exact.
                .header("idempotency-key", "warm-up")
                .body(body(u64::MAX / 2))
                .send()
                .await;
            let accepted = sent.is_ok_and(|r| r.status().is_success());
            if accepted && (!delivering || self.sink.requests.load(Ordering::Relaxed) > 0) {
                return Ok(());
            }
            anyhow::ensure!(Instant::now() < deadline, "the services did not start");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// CPU time so far of every service, and last of the nats-server.
    fn cpu(&self) -> Vec<Duration> {
        let services = self.processes.services().iter().map(Process::cpu);
        services.chain([self.processes.nats.cpu()]).collect()
    }

    /// Peak RSS and CPU per event since `cpu_before` ([`Stack::cpu`]) of every service
    /// and of the nats-server (`nats-server`).
    fn report(&self, cpu_before: &[Duration], events: u64) -> Value {
        let services = self
            .processes
            .services()
            .iter()
            .map(|service| (service.name, service.cpu(), service.peak_rss()));
        let nats = &self.processes.nats;
        let all = services.chain([("nats-server", nats.cpu(), nats.peak_rss())]);
        let mut report = serde_json::Map::new();
        for ((name, cpu, peak_rss), before) in all.zip(cpu_before) {
            let cpu = cpu.saturating_sub(*before);
            report.insert(
                name.to_owned(),
                json!({
                    "peak_rss_mib": peak_rss as f64 / MIB,
                    "cpu_us_per_event": cpu.as_secs_f64() * 1e6 / events as f64,
                }),
            );
        }
        Value::Object(report)
    }

    /// Posts one event every `1/rate` seconds for `events` events, not waiting for
    /// answers before sending the next. Returns when each request was due.
    async fn post_open_loop(
        &self,
        first: u64,
        events: u64,
        rate: u64,
    ) -> anyhow::Result<Vec<Instant>> {
        let client = reqwest::Client::new();
        let start = Instant::now() + Duration::from_millis(50);
        let period = Duration::from_secs_f64(1.0 / rate as f64);
        let mut requests = FuturesUnordered::new();
        let mut times = Vec::with_capacity(usize::try_from(events)?);
        for i in 0..events {
            let due = start + period * u32::try_from(i)?;
            tokio::time::sleep_until(due.into()).await;
            times.push(due);
            let request = client
                .post(&self.ingest)
                .header("content-type", "application/json")
                .body(body(first + i))
                .send();
            requests.push(request);
            // Collect finished answers without waiting for any.
            while let Some(Some(answer)) = futures::FutureExt::now_or_never(requests.next()) {
                anyhow::ensure!(answer?.status() == 202, "ingest refused an event");
            }
        }
        while let Some(answer) = requests.next().await {
            anyhow::ensure!(answer?.status() == 202, "ingest refused an event");
        }
        Ok(times)
    }

    /// Waits until the sink holds `count` distinct events; the time the last arrived.
    async fn delivered(&self, count: usize) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(600);
        loop {
            // The warm-up event is one of them.
            if self.sink.first.lock().expect("sink").len() > count {
                return Ok(());
            }
            anyhow::ensure!(Instant::now() < deadline, "not every event was delivered");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Receipt minus send time of events `first..first + sent.len()`, sorted.
    fn latencies(&self, first: u64, sent: &[Instant]) -> Vec<Duration> {
        let received = self.sink.first.lock().expect("sink");
        let mut latencies: Vec<Duration> = sent
            .iter()
            .enumerate()
            .map(|(i, at)| received[&id_of(first + i as u64)].saturating_duration_since(*at))
            .collect();
        latencies.sort();
        latencies
    }

    fn last_receipt(&self) -> Instant {
        *self
            .sink
            .first
            .lock()
            .expect("sink")
            .values()
            .max()
            .expect("receipts")
    }
}

/// Posts `events` events from `HTTP_CONCURRENCY` clients, each waiting for its
/// answer; a 503 (back-pressure) is retried. Returns when each request was sent.
async fn post_closed_loop(url: &str, first: u64, events: u64) -> anyhow::Result<Vec<Instant>> {
    let client = reqwest::Client::new();
    let next = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for _ in 0..HTTP_CONCURRENCY {
        let (client, next, url) = (client.clone(), next.clone(), url.to_owned());
        tasks.push(tokio::spawn(async move {
            let mut sent = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= events {
                    return anyhow::Ok(sent);
                }
                let at = Instant::now();
                loop {
                    let answer = client
                        .post(&url)
                        .header("content-type", "application/json")
                        .body(body(first + i))
                        .send()
                        .await?;
                    match answer.status().as_u16() {
                        202 => break,
                        503 => tokio::time::sleep(Duration::from_millis(10)).await,
                        other => anyhow::bail!("ingest answered {other}"),
                    }
                }
                sent.push((i, at));
            }
        }));
    }
    let mut times = vec![Instant::now(); usize::try_from(events)?];
    for task in tasks {
        for (i, at) in task.await?? {
            times[usize::try_from(i)?] = at;
        }
    }
    Ok(times)
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1].as_secs_f64() * 1000.0
}

/// The HTTP floor: the same clients against a server that reads each body and
/// answers 202 at once, doing nothing else. What ingest can at most reach on this
/// machine with these clients.
pub async fn http_floor(events: u64) -> anyhow::Result<f64> {
    let app = axum::Router::new().route(
        "/v1/events/shop",
        axum::routing::post(|_body: axum::body::Bytes| async {
            (
                axum::http::StatusCode::ACCEPTED,
                r#"{"event_id":"x","duplicate":false}"#,
            )
        }),
    );
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}/v1/events/shop", listener.local_addr()?);
    let server = tokio::spawn(async move { axum::serve(listener, app).await });
    let started = Instant::now();
    post_closed_loop(&url, 0, events).await?;
    let rate = events as f64 / started.elapsed().as_secs_f64();
    server.abort();
    Ok(rate)
}

/// Ingest alone: HTTP events per second, every one stored.
pub async fn ingest_only(events: u64) -> anyhow::Result<(f64, Value)> {
    let stack = Stack::start(&["ingest"]).await?;
    let before = stack.cpu();
    let started = Instant::now();
    post_closed_loop(&stack.ingest, 0, events).await?;
    let rate = events as f64 / started.elapsed().as_secs_f64();
    Ok((rate, stack.report(&before, events)))
}

/// Events per batch of the batch ingest measurement: 500 of the ~1 KiB workload
/// events fit the default 1 MiB body limit.
const INGEST_BATCH: u64 = 500;
/// Batch requests in flight at once.
const BATCH_CONCURRENCY: usize = 4;

/// Posts `events` events (from `first`) in batches of [`INGEST_BATCH`] from
/// [`BATCH_CONCURRENCY`] clients; every item must be stored.
async fn post_batches(ingest_url: &str, first: u64, events: u64) -> anyhow::Result<()> {
    let client = reqwest::Client::new();
    let url = format!("{ingest_url}/v1/events/shop/batch");
    let next = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for _ in 0..BATCH_CONCURRENCY {
        let (client, next, url) = (client.clone(), next.clone(), url.clone());
        tasks.push(tokio::spawn(async move {
            loop {
                let start = next.fetch_add(INGEST_BATCH, Ordering::Relaxed);
                if start >= events {
                    return anyhow::Ok(());
                }
                let end = (start + INGEST_BATCH).min(events);
                let mut lines = Vec::new();
                for i in start..end {
                    lines.extend_from_slice(br#"{"type":"order.created","data":"#);
                    lines.extend_from_slice(&body(first + i));
                    lines.extend_from_slice(b"}\n");
                }
                let answer = client
                    .post(&url)
                    .header("content-type", "application/x-ndjson")
                    .body(lines)
                    .send()
                    .await?;
                anyhow::ensure!(
                    answer.status() == 200,
                    "ingest answered {}",
                    answer.status()
                );
                let answer: Value = answer.json().await?;
                let results = answer["results"].as_array().context("results")?;
                anyhow::ensure!(
                    results.len() as u64 == end - start
                        && results.iter().all(|r| r["event_id"].is_string()),
                    "not every item was stored: {answer}"
                );
            }
        }));
    }
    for task in tasks {
        task.await??;
    }
    Ok(())
}

/// Batch ingest alone: events per second posted in batches, every one stored.
pub async fn batch_ingest_only(events: u64) -> anyhow::Result<(f64, Value)> {
    let stack = Stack::start(&["ingest"]).await?;
    let before = stack.cpu();
    let started = Instant::now();
    post_batches(&stack.processes.ingest_url, 0, events).await?;
    let rate = events as f64 / started.elapsed().as_secs_f64();
    Ok((rate, stack.report(&before, events)))
}

/// Batch delivery: events per second through the whole pipeline to a sink that takes
/// `requests_per_second` requests of up to `max_events` events; the events enter by
/// batch ingest. Returns the rate and the requests the sink received.
pub async fn batch_delivery(
    events: u64,
    requests_per_second: u32,
    max_events: u32,
) -> anyhow::Result<(f64, u64)> {
    let provider = format!(
        "
    rate_limit: {{ requests: {requests_per_second}, per: 1s, burst: {requests_per_second} }}
    batch: {{ max_events: {max_events}, max_wait: 500ms }}"
    );
    let stack = Stack::start_with(&["ingest", "transform", "delivery"], &provider).await?;
    let before = stack.sink.requests.load(Ordering::Relaxed);
    let started = Instant::now();
    post_batches(&stack.processes.ingest_url, 0, events).await?;
    stack.delivered(usize::try_from(events)?).await?;
    let rate = events as f64 / started.elapsed().as_secs_f64();
    Ok((rate, stack.sink.requests.load(Ordering::Relaxed) - before))
}

/// The whole pipeline at its highest rate, then at `fixed_rate` for `fixed_events`.
pub async fn end_to_end(events: u64, fixed_rate: u64, fixed_events: u64) -> anyhow::Result<Value> {
    let stack = Stack::start(&["ingest", "transform", "delivery"]).await?;

    let before = stack.cpu();
    let sent = post_closed_loop(&stack.ingest, 0, events).await?;
    stack.delivered(usize::try_from(events)?).await?;
    let rate = events as f64 / (stack.last_receipt() - sent[0]).as_secs_f64();
    let max = stack.latencies(0, &sent);
    let max_services = stack.report(&before, events);

    let before = stack.cpu();
    let sent = stack
        .post_open_loop(events, fixed_events, fixed_rate)
        .await?;
    stack
        .delivered(usize::try_from(events + fixed_events)?)
        .await?;
    let fixed = stack.latencies(events, &sent);
    let fixed_services = stack.report(&before, fixed_events);
    let requests = stack.sink.requests.load(Ordering::Relaxed);
    let distinct = stack.sink.first.lock().expect("sink").len() as u64;

    Ok(json!({
        "max": {
            "events": events,
            "events_per_second": rate,
            "latency_ms": { "p50": percentile(&max, 50.0), "p99": percentile(&max, 99.0), "p99_9": percentile(&max, 99.9) },
            "services": max_services,
        },
        "fixed": {
            "events": fixed_events,
            "events_per_second": fixed_rate,
            "latency_ms": { "p50": percentile(&fixed, 50.0), "p99": percentile(&fixed, 99.0), "p99_9": percentile(&fixed, 99.9) },
            "services": fixed_services,
        },
        "sink_requests": requests,
        "sink_distinct_events": distinct,
    }))
}

/// RSS of every service, sampled while a soak runs.
struct Samples {
    /// Seconds since the start, and the RSS in bytes of each service.
    rows: Vec<(f64, Vec<u64>)>,
}

impl Samples {
    /// Median RSS of service `index` over samples taken in `from..to` seconds: the
    /// level it stays at, which a few samples taken in a burst do not move.
    fn median(&self, index: usize, from: f64, to: f64) -> f64 {
        let mut window: Vec<u64> = self.window(index, from, to).collect();
        window.sort_unstable();
        window.get(window.len() / 2).copied().unwrap_or(0) as f64
    }

    /// Highest RSS of service `index` over samples taken in `from..to` seconds.
    fn max(&self, index: usize, from: f64, to: f64) -> f64 {
        self.window(index, from, to).max().unwrap_or(0) as f64
    }

    fn window(&self, index: usize, from: f64, to: f64) -> impl Iterator<Item = u64> + '_ {
        self.rows
            .iter()
            .filter(move |(at, _)| (from..to).contains(at))
            .map(move |(_, rss)| rss[index])
    }
}

/// How long the soak freezes the nats-server each `stall_every`: the transient stall
/// under which every service once grew in one step and never shrank back.
const STALL: Duration = Duration::from_millis(1500);
/// Where the soak's growth is measured from: minutes before it are warm-up, while
/// connection pools, caches and the allocator's arenas fill.
const SOAK_WARM_SECONDS: f64 = 300.0;

/// The whole pipeline at `rate` events/s for `minutes` (at least 7), open loop, with
/// every service's RSS sampled every 5 s and the nats-server frozen for 1.5 s every
/// `stall_every` minutes (0: never). Growth compares the median of the last minute
/// with that of minute 5; each stall reports the highest RSS in the minute after it.
/// Draws the samples into `<target>/bench/soak.png`.
pub async fn soak(minutes: u64, rate: u64, stall_every: u64) -> anyhow::Result<Value> {
    anyhow::ensure!(minutes >= 7, "a soak needs at least 7 minutes");
    let stack = Stack::start(&["ingest", "transform", "delivery"]).await?;
    let events = minutes * 60 * rate;
    let end = minutes as f64 * 60.0;
    let stalls: Vec<f64> = (1..)
        .map(|n| (n * stall_every * 60) as f64)
        .take_while(|at| stall_every > 0 && *at < end - 60.0)
        .collect();
    let started = Instant::now();
    let sending = AtomicBool::new(true);
    let send = async {
        let sent = stack.post_open_loop(0, events, rate).await;
        sending.store(false, Ordering::Relaxed);
        sent
    };
    let stall = async {
        for at in &stalls {
            tokio::time::sleep_until((started + Duration::from_secs_f64(*at)).into()).await;
            stack.processes.nats.stall(STALL).await?;
        }
        anyhow::Ok(())
    };
    let sample = async {
        let mut samples = Samples { rows: Vec::new() };
        while sending.load(Ordering::Relaxed) {
            let rss = stack
                .processes
                .services()
                .iter()
                .map(Process::rss)
                .collect();
            samples.rows.push((started.elapsed().as_secs_f64(), rss));
            tokio::time::sleep(Duration::from_secs(5)).await;
        }
        samples
    };
    let (sent, stalled, samples) = tokio::join!(send, stall, sample);
    let sent = sent?;
    stalled?;
    stack.delivered(usize::try_from(events)?).await?;
    let latencies = stack.latencies(0, &sent);

    let mut services = serde_json::Map::new();
    for (index, service) in stack.processes.services().iter().enumerate() {
        let warm = samples.median(index, SOAK_WARM_SECONDS, SOAK_WARM_SECONDS + 60.0);
        let last = samples.median(index, end - 60.0, end + 60.0);
        let after_stalls: Vec<f64> = stalls
            .iter()
            .map(|at| samples.max(index, *at, at + 60.0) / MIB)
            .collect();
        services.insert(
            service.name.to_owned(),
            json!({
                "rss_mib_minute_5": warm / MIB,
                "rss_mib_last_minute": last / MIB,
                "growth": last / warm - 1.0,
                "peak_rss_mib": service.peak_rss() as f64 / MIB,
                "peak_rss_mib_after_each_stall": after_stalls,
            }),
        );
    }
    plot_soak(&stack, &samples, &stalls, rate)?;
    let requests = stack.sink.requests.load(Ordering::Relaxed);
    let distinct = stack.sink.first.lock().expect("sink").len() as u64;
    Ok(json!({
        "minutes": minutes,
        "events_per_second": rate,
        "events": events,
        "stalls_seconds": stalls,
        "stall_ms": STALL.as_millis(),
        "latency_ms": { "p50": percentile(&latencies, 50.0), "p99": percentile(&latencies, 99.0), "p99_9": percentile(&latencies, 99.9) },
        "services": services,
        "samples": samples.rows.iter().map(|(at, rss)| json!({ "seconds": at, "rss_mib": rss.iter().map(|b| *b as f64 / MIB).collect::<Vec<_>>() })).collect::<Vec<_>>(),
        // The warm-up event is one more.
        "sink_requests": requests,
        "sink_distinct_events": distinct,
    }))
}

/// Draws every service's RSS over the soak, with its stalls and minute 5 marked.
fn plot_soak(stack: &Stack, samples: &Samples, stalls: &[f64], rate: u64) -> anyhow::Result<()> {
    let minutes = |seconds: f64| seconds / 60.0;
    let series = stack
        .processes
        .services()
        .iter()
        .enumerate()
        .map(|(index, service)| plot::Series {
            name: service.name,
            points: samples
                .rows
                .iter()
                .map(|(at, rss)| (minutes(*at), rss[index] as f64 / MIB))
                .collect(),
        })
        .collect();
    let title = format!(
        "RSS of each service under {rate} events/s, nats-server frozen {:.1} s at each grey line",
        STALL.as_secs_f64()
    );
    let mut marks = vec![(minutes(SOAK_WARM_SECONDS), "minute 5")];
    marks.extend(stalls.iter().map(|at| (minutes(*at), "stall")));
    let path = switchyard_tests::report_path("soak.png")?;
    plot::Chart {
        title: &title,
        x_label: "minutes",
        y_label: "RSS, MiB",
        series,
        marks,
    }
    .write_png(&path)?;
    println!("wrote {}", path.display());
    Ok(())
}
