//! One trace per event across processes: ingest, transform and delivery run as their
//! own binaries, export over OTLP/gRPC to a receiver in this test, and the spans of
//! one event — continuing the caller's trace — link up hop by hop to the requests the
//! provider received.

use std::{
    collections::HashMap,
    net::SocketAddr,
    process::Stdio,
    sync::{Arc, Mutex},
    time::Duration,
};

use opentelemetry_proto::tonic::{
    collector::trace::v1::{
        ExportTraceServiceRequest, ExportTraceServiceResponse,
        trace_service_server::{TraceService, TraceServiceServer},
    },
    common::v1::{AnyValue, KeyValue, any_value::Value},
    trace::v1::{Span, span::SpanKind, status::StatusCode},
};
use serde_json::json;
use switchyard_tests::{FakeProvider, Pipeline, Reply, TestNats, eventually, service};
use tokio::{net::TcpListener, process::Child};

use crate::{catalog, order};

/// What the services exported: each span with its process's `service.name`.
#[derive(Clone, Default)]
struct Receiver {
    spans: Arc<Mutex<Vec<(String, Span)>>>,
}

#[tonic::async_trait]
impl TraceService for Receiver {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut spans = self.spans.lock().unwrap();
        for resource_spans in request.into_inner().resource_spans {
            let attributes = resource_spans
                .resource
                .map(|resource| resource.attributes)
                .unwrap_or_default();
            let service = text(&attributes, "service.name").unwrap_or_default();
            for span in resource_spans
                .scope_spans
                .into_iter()
                .flat_map(|scope| scope.spans)
            {
                spans.push((service.clone(), span));
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

impl Receiver {
    async fn start() -> (Self, SocketAddr) {
        let receiver = Self::default();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(receiver.clone()))
            .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener));
        tokio::spawn(server);
        (receiver, addr)
    }

    fn spans(&self) -> Vec<(String, Span)> {
        self.spans.lock().unwrap().clone()
    }
}

fn attribute<'a>(attributes: &'a [KeyValue], key: &str) -> Option<&'a Value> {
    attributes
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| kv.value.as_ref())
        .and_then(|value: &AnyValue| value.value.as_ref())
}

fn text(attributes: &[KeyValue], key: &str) -> Option<String> {
    match attribute(attributes, key)? {
        Value::StringValue(text) => Some(text.clone()),
        _ => None,
    }
}

fn number(attributes: &[KeyValue], key: &str) -> Option<i64> {
    match attribute(attributes, key)? {
        Value::IntValue(number) => Some(*number),
        _ => None,
    }
}

/// A service binary exporting to the receiver at `otlp`, with spans sent in batches
/// every 100 ms.
fn spawn(
    name: &str,
    pipeline_settings: &switchyard_core::config::Settings,
    otlp: SocketAddr,
) -> tokio::process::Command {
    let mut command = service(name, pipeline_settings);
    command
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", format!("http://{otlp}"))
        .env("OTEL_BSP_SCHEDULE_DELAY", "100")
        .env_remove("OTEL_SERVICE_NAME")
        .env_remove("OTEL_TRACES_SAMPLER");
    command
}

struct Services {
    ingest_url: String,
    children: Vec<Child>,
}

impl Services {
    /// Stops the services and returns the JSON lines they logged.
    async fn log_lines(self) -> Vec<serde_json::Value> {
        let mut lines = Vec::new();
        for mut child in self.children {
            child.start_kill().unwrap();
            let output = child.wait_with_output().await.unwrap();
            for line in String::from_utf8_lossy(&output.stdout).lines() {
                lines.push(
                    serde_json::from_str(line).unwrap_or_else(|err| {
                        panic!("a log line that is not JSON ({err}): {line}")
                    }),
                );
            }
        }
        lines
    }
}

async fn start_services(
    settings: &switchyard_core::config::Settings,
    otlp: SocketAddr,
) -> Services {
    let port = TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let ingest_url = format!("http://127.0.0.1:{port}");
    let children = vec![
        spawn("switchyard-ingest", settings, otlp)
            .env("SWITCHYARD__INGEST__LISTEN", format!("127.0.0.1:{port}"))
            .stdout(Stdio::piped())
            .spawn()
            .unwrap(),
        spawn("switchyard-transform", settings, otlp)
            .spawn()
            .unwrap(),
        spawn("switchyard-delivery", settings, otlp)
            .args(["--provider", "crm"])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap(),
    ];
    let http = reqwest::Client::new();
    eventually(Duration::from_secs(30), "ingest to be ready", || async {
        let ready = http.get(format!("{ingest_url}/readyz")).send().await.ok()?;
        ready.status().is_success().then_some(())
    })
    .await;
    Services {
        ingest_url,
        children,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_event_is_one_trace_across_ingest_transform_and_delivery_processes() {
    let (receiver, otlp) = Receiver::start().await;
    // The first attempt fails, so delivery makes two attempts in the same trace.
    let provider = FakeProvider::with(|request| {
        if request.attempt == 1 {
            Reply::status(503)
        } else {
            Reply::ok()
        }
    })
    .await;
    let nats = TestNats::start().await.unwrap();
    let settings = Pipeline::settings(nats.url());
    Pipeline::prepare(&settings, &catalog(provider.url()))
        .await
        .unwrap();
    let services = start_services(&settings, otlp).await;

    // The caller's own trace: Switchyard continues it.
    let caller_trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let caller_span = "00f067aa0ba902b7";
    let answer = reqwest::Client::new()
        .post(format!(
            "{}/v1/events/shop?type=order.created",
            services.ingest_url
        ))
        .header("traceparent", format!("00-{caller_trace}-{caller_span}-01"))
        .json(&order("t-1", 12))
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 202);
    let event_id = answer.json::<serde_json::Value>().await.unwrap()["event_id"]
        .as_str()
        .unwrap()
        .to_owned();
    provider.wait_for_accepted(1, Duration::from_secs(30)).await;

    // receive, publish, process, publish, then process and the HTTP request per attempt.
    let spans = eventually(Duration::from_secs(20), "8 spans exported", || async {
        let spans = receiver.spans();
        (spans.len() >= 8).then_some(spans)
    })
    .await;
    let trace_id = hex::decode(caller_trace).unwrap();
    for (service, span) in &spans {
        assert_eq!(
            span.trace_id, trace_id,
            "{service} span {:?} is in the caller's trace",
            span.name
        );
    }
    let by_name = |name: &str| -> Vec<(String, Span)> {
        spans
            .iter()
            .filter(|(_, span)| span.name == name)
            .cloned()
            .collect()
    };
    let one = |name: &str, service: &str, kind: SpanKind| -> Span {
        let found = by_name(name);
        assert_eq!(found.len(), 1, "one {name:?} span: {found:#?}");
        let (exported_by, span) = found.into_iter().next().unwrap();
        assert_eq!(exported_by, service, "{name:?} is exported by {service}");
        assert_eq!(span.kind, kind as i32, "{name:?} is a {kind:?} span");
        span
    };

    let receive = one(
        "POST /v1/events/{source}",
        "switchyard-ingest",
        SpanKind::Server,
    );
    assert_eq!(receive.parent_span_id, hex::decode(caller_span).unwrap());
    let a = &receive.attributes;
    assert_eq!(text(a, "http.request.method").as_deref(), Some("POST"));
    assert_eq!(
        text(a, "http.route").as_deref(),
        Some("/v1/events/{source}")
    );
    assert_eq!(text(a, "url.path").as_deref(), Some("/v1/events/shop"));
    assert_eq!(text(a, "url.scheme").as_deref(), Some("http"));
    assert_eq!(number(a, "http.response.status_code"), Some(202));
    assert_eq!(text(a, "event_id").as_deref(), Some(event_id.as_str()));

    let ingest_publish = one(
        "publish ingest.{source}.{event_type}",
        "switchyard-ingest",
        SpanKind::Producer,
    );
    assert_eq!(ingest_publish.parent_span_id, receive.span_id);
    let a = &ingest_publish.attributes;
    assert_eq!(text(a, "messaging.system").as_deref(), Some("nats"));
    assert_eq!(text(a, "messaging.operation.type").as_deref(), Some("send"));
    assert_eq!(
        text(a, "messaging.operation.name").as_deref(),
        Some("publish")
    );
    assert_eq!(
        text(a, "messaging.destination.name").as_deref(),
        Some("ingest.shop.order.created")
    );
    assert_eq!(
        text(a, "messaging.message.id").as_deref(),
        Some(event_id.as_str()),
        "without an idempotency key the event id is the message id"
    );
    assert!(number(a, "messaging.message.body.size").unwrap() > 0);

    let transform = one(
        "process ingest.{source}.{event_type}",
        "switchyard-transform",
        SpanKind::Consumer,
    );
    assert_eq!(transform.parent_span_id, ingest_publish.span_id);
    let a = &transform.attributes;
    assert_eq!(
        text(a, "messaging.operation.type").as_deref(),
        Some("process")
    );
    assert_eq!(
        text(a, "messaging.consumer.group.name").as_deref(),
        Some("transform")
    );
    assert_eq!(text(a, "event_id").as_deref(), Some(event_id.as_str()));

    let transform_publish = one(
        "publish deliver.{provider}.{route}",
        "switchyard-transform",
        SpanKind::Producer,
    );
    assert_eq!(transform_publish.parent_span_id, transform.span_id);
    assert_eq!(
        text(&transform_publish.attributes, "messaging.destination.name").as_deref(),
        Some("deliver.crm.orders")
    );

    // Each attempt is a process span under the publish, with the request under it.
    let mut processes = by_name("process deliver.{provider}.{route}");
    processes.sort_by_key(|(_, span)| span.start_time_unix_nano);
    assert_eq!(processes.len(), 2, "{processes:#?}");
    let mut requests: HashMap<Vec<u8>, Span> = by_name("POST")
        .into_iter()
        .map(|(service, span)| {
            assert_eq!(service, "switchyard-delivery");
            assert_eq!(span.kind, SpanKind::Client as i32);
            (span.parent_span_id.clone(), span)
        })
        .collect();
    assert_eq!(requests.len(), 2, "one request per attempt");
    let received = provider.received();
    for (i, (service, process)) in processes.iter().enumerate() {
        assert_eq!(service, "switchyard-delivery");
        assert_eq!(process.kind, SpanKind::Consumer as i32);
        assert_eq!(process.parent_span_id, transform_publish.span_id);
        assert_eq!(
            text(&process.attributes, "messaging.consumer.group.name").as_deref(),
            Some("delivery-crm")
        );
        let request = requests
            .remove(&process.span_id)
            .expect("the attempt's request is a child of its process span");
        let a = &request.attributes;
        assert_eq!(text(a, "http.request.method").as_deref(), Some("POST"));
        assert_eq!(
            text(a, "url.full").as_deref(),
            Some(format!("{}/contacts", provider.url()).as_str())
        );
        assert_eq!(text(a, "server.address").as_deref(), Some("127.0.0.1"));
        assert!(number(a, "server.port").is_some());
        // What the provider received carries the request span's context.
        let traceparent = received[i].header("traceparent").unwrap();
        assert_eq!(
            traceparent,
            format!("00-{caller_trace}-{}-01", hex::encode(&request.span_id)),
            "attempt {}",
            i + 1
        );
        let status = request.status.clone().unwrap_or_default();
        if i == 0 {
            assert_eq!(number(a, "http.response.status_code"), Some(503));
            assert_eq!(text(a, "error.type").as_deref(), Some("503"));
            assert_eq!(status.code, StatusCode::Error as i32);
            assert_eq!(number(a, "http.request.resend_count"), None);
        } else {
            assert_eq!(number(a, "http.response.status_code"), Some(200));
            assert_eq!(text(a, "error.type"), None);
            assert_ne!(status.code, StatusCode::Error as i32);
            assert_eq!(number(a, "http.request.resend_count"), Some(1));
        }
    }

    // Every line about the event carries its ids; its payload is in none.
    let lines = services.log_lines().await;
    let about_event: Vec<_> = lines
        .iter()
        .filter(|line| line.to_string().contains(&event_id))
        .collect();
    assert!(
        about_event
            .iter()
            .any(|line| line["message"] == "attempt failed; will retry"),
        "the failed attempt is logged: {lines:#?}"
    );
    for line in &about_event {
        let spans = line["spans"]
            .as_array()
            .expect("lines about an event are in its spans");
        let has = |field: &str, value: &str| spans.iter().any(|span| span[field] == value);
        assert!(has("event_id", &event_id), "{line}");
        assert!(has("trace_id", caller_trace), "{line}");
    }
    for line in &lines {
        assert!(
            !line.to_string().contains("Shop.Example"),
            "a payload in the log: {line}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_batch_request_has_one_client_span_linked_to_each_members_trace() {
    let (receiver, otlp) = Receiver::start().await;
    let provider = FakeProvider::start().await;
    let nats = TestNats::start().await.unwrap();
    let settings = Pipeline::settings(nats.url());
    let policies = "
    batch: { max_events: 3, max_wait: 5s }";
    Pipeline::prepare(
        &settings,
        &crate::catalog_with(provider.url(), policies, ""),
    )
    .await
    .unwrap();
    let services = start_services(&settings, otlp).await;

    // Three events, each in its caller's own trace, make one batch of three.
    let traces = [
        "4bf92f3577b34da6a3ce929d0e0e4701",
        "4bf92f3577b34da6a3ce929d0e0e4702",
        "4bf92f3577b34da6a3ce929d0e0e4703",
    ];
    for (i, trace) in traces.iter().enumerate() {
        let answer = reqwest::Client::new()
            .post(format!(
                "{}/v1/events/shop?type=order.created",
                services.ingest_url
            ))
            .header("traceparent", format!("00-{trace}-00f067aa0ba902b7-01"))
            .json(&order(&format!("bt-{i}"), 1))
            .send()
            .await
            .unwrap();
        assert_eq!(answer.status(), 202);
    }
    provider.wait_for_accepted(1, Duration::from_secs(30)).await;
    assert_eq!(provider.received().len(), 1, "one request for the batch");

    let request = eventually(
        Duration::from_secs(20),
        "the batch's client span",
        || async {
            receiver.spans().into_iter().find_map(|(service, span)| {
                (service == "switchyard-delivery" && span.name == "POST").then_some(span)
            })
        },
    )
    .await;
    assert_eq!(request.kind, SpanKind::Client as i32);
    assert_eq!(
        number(&request.attributes, "messaging.batch.message_count"),
        Some(3)
    );
    let mut linked: Vec<String> = request
        .links
        .iter()
        .map(|link| hex::encode(&link.trace_id))
        .collect();
    linked.sort();
    assert_eq!(linked, traces, "a link to each member's trace");
    assert!(
        !traces.contains(&hex::encode(&request.trace_id).as_str()),
        "the batch request is a trace of its own"
    );
    let posts = receiver
        .spans()
        .iter()
        .filter(|(service, span)| service == "switchyard-delivery" && span.name == "POST")
        .count();
    assert_eq!(posts, 1, "one client span per batch request");
    services.log_lines().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_ingest_request_has_one_publish_span_parenting_each_member() {
    let (receiver, otlp) = Receiver::start().await;
    let provider = FakeProvider::start().await;
    let nats = TestNats::start().await.unwrap();
    let settings = Pipeline::settings(nats.url());
    Pipeline::prepare(&settings, &catalog(provider.url()))
        .await
        .unwrap();
    let services = start_services(&settings, otlp).await;

    let caller_trace = "4bf92f3577b34da6a3ce929d0e0e4799";
    let events: Vec<_> = (0..3)
        .map(|i| json!({"type": "order.created", "data": order(&format!("bi-{i}"), 1)}))
        .collect();
    let answer = reqwest::Client::new()
        .post(format!("{}/v1/events/shop/batch", services.ingest_url))
        .header(
            "traceparent",
            format!("00-{caller_trace}-00f067aa0ba902b7-01"),
        )
        .json(&json!({ "events": events }))
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 200);
    provider.wait_for_accepted(3, Duration::from_secs(30)).await;

    // receive and one publish in ingest, then a process span per member in transform.
    // Each process exports on its own schedule: wait for both.
    let spans = eventually(Duration::from_secs(20), "the members' spans", || async {
        let spans = receiver.spans();
        let processed = spans
            .iter()
            .filter(|(service, span)| {
                service == "switchyard-transform" && span.name.starts_with("process ingest")
            })
            .count();
        let published = spans.iter().any(|(service, span)| {
            service == "switchyard-ingest" && span.name.starts_with("publish")
        });
        (processed == 3 && published).then_some(spans)
    })
    .await;
    let publishes: Vec<_> = spans
        .iter()
        .filter(|(service, span)| {
            service == "switchyard-ingest" && span.name.starts_with("publish")
        })
        .map(|(_, span)| span)
        .collect();
    assert_eq!(
        publishes.len(),
        1,
        "one publish span for the batch: {publishes:#?}"
    );
    let publish = publishes[0];
    assert_eq!(publish.kind, SpanKind::Producer as i32);
    assert_eq!(publish.trace_id, hex::decode(caller_trace).unwrap());
    assert_eq!(
        number(&publish.attributes, "messaging.batch.message_count"),
        Some(3)
    );
    for (_, process) in spans.iter().filter(|(service, span)| {
        service == "switchyard-transform" && span.name.starts_with("process ingest")
    }) {
        assert_eq!(process.parent_span_id, publish.span_id, "{process:#?}");
    }
    services.log_lines().await;
}
