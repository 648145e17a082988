//! Logging and tracing for every service.
//!
//! Spans always get real trace and span ids, so `traceparent` flows through NATS
//! headers even when nothing is exported. Spans are exported over OTLP/gRPC (Jaeger
//! accepts it) only when `OTEL_EXPORTER_OTLP_ENDPOINT` or
//! `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` is set; sampling follows `OTEL_TRACES_SAMPLER`.
//! Keep the returned [`Guard`] alive: dropping it flushes pending spans.

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::{Resource, propagation::TraceContextPropagator, trace::SdkTracerProvider};
use tracing_subscriber::{EnvFilter, Layer, layer::SubscriberExt, util::SubscriberInitExt};

use tracing::Span;

use crate::{
    Error,
    config::{LogFormat, TelemetrySettings},
    topology,
};

/// Flushes and stops the tracer provider when dropped.
#[must_use = "dropping the guard stops tracing"]
pub struct Guard {
    provider: SdkTracerProvider,
}

impl Drop for Guard {
    fn drop(&mut self) {
        if let Err(err) = self.provider.shutdown() {
            eprintln!("flushing spans failed: {err}");
        }
    }
}

/// Installs the global subscriber and tracer provider for `service` (e.g. `ingest`).
/// Must run inside a Tokio runtime (the OTLP exporter uses it).
pub fn init(settings: &TelemetrySettings, service: &str) -> Result<Guard, Error> {
    let provider = tracer_provider(service)?;
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&settings.log_level))
        .map_err(|err| Error::Config(format!("telemetry.log_level: {err}")))?;
    let fmt = match settings.log_format {
        LogFormat::Json => json_layer(std::io::stdout).boxed(),
        LogFormat::Pretty => tracing_subscriber::fmt::layer().compact().boxed(),
    };
    tracing_subscriber::registry()
        .with(filter)
        .with(fmt)
        .with(otel_layer(&provider))
        .try_init()
        .map_err(|err| Error::Config(format!("telemetry already initialised: {err}")))?;
    Ok(Guard { provider })
}

/// The layer that makes tracing spans OpenTelemetry spans. Only what the spans are
/// declared with is recorded: no busy/idle timings, thread or source-location
/// attributes, and no OpenTelemetry context attached on every enter (trace context is
/// taken from the span itself when it is injected) — each cost CPU on every span of
/// every event and none is read.
fn otel_layer<S>(provider: &SdkTracerProvider) -> impl Layer<S> + use<S>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
{
    tracing_opentelemetry::layer()
        .with_tracer(provider.tracer("switchyard"))
        .with_tracked_inactivity(false)
        .with_threads(false)
        .with_location(false)
        .with_target(false)
        .with_context_activation(false)
}

/// JSON lines: the event's fields flat, and every enclosing span's fields under
/// `spans`, so each line about an event carries its `event_id` and `trace_id`.
fn json_layer<S, W>(writer: W) -> impl Layer<S>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
    W: for<'w> tracing_subscriber::fmt::MakeWriter<'w> + Send + Sync + 'static,
{
    tracing_subscriber::fmt::layer()
        .json()
        .flatten_event(true)
        .with_current_span(false)
        .with_span_list(true)
        .fmt_fields(AppendedJsonFields)
        .with_writer(writer)
}

/// A span's fields as one JSON object, like `JsonFields`, except that
///
/// - the OpenTelemetry attributes a span is declared with for its trace
///   ([`for_traces_only`]) are left out: they describe the span to a tracing backend,
///   and formatting them on every span of every event was most of the log layer's CPU
///   although almost no span ever logs a line;
/// - fields recorded later (`span.record(…)`) are appended to the object instead of
///   parsing and rewriting it each time: spans per event record their event id, trace
///   id and outcome after creation, and the rewrite was a large share of a service's
///   CPU per event. A field recorded twice appears twice; readers keep the last.
struct AppendedJsonFields;

/// Span fields that are OpenTelemetry attributes only, not log-line context.
fn for_traces_only(name: &str) -> bool {
    const PREFIXES: [&str; 7] = [
        "otel.",
        "messaging.",
        "url.",
        "server.",
        "network.",
        "user_agent.",
        "http.request.",
    ];
    name == "http.route" || PREFIXES.iter().any(|prefix| name.starts_with(prefix))
}

/// Writes the fields that are not [`for_traces_only`] as a JSON object.
struct LogFields<'a> {
    out: tracing_subscriber::fmt::format::Writer<'a>,
    empty: bool,
    result: std::fmt::Result,
}

impl LogFields<'_> {
    fn field(&mut self, name: &str, value: impl std::fmt::Display) {
        if self.result.is_err() || for_traces_only(name) {
            return;
        }
        let comma = if self.empty { "{" } else { "," };
        self.empty = false;
        self.result = write!(self.out, "{comma}{}:{value}", serde_json::Value::from(name));
    }
}

impl tracing::field::Visit for LogFields<'_> {
    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        self.field(field.name(), serde_json::Value::from(value));
    }
    fn record_i64(&mut self, field: &tracing::field::Field, value: i64) {
        self.field(field.name(), value);
    }
    fn record_u64(&mut self, field: &tracing::field::Field, value: u64) {
        self.field(field.name(), value);
    }
    fn record_bool(&mut self, field: &tracing::field::Field, value: bool) {
        self.field(field.name(), value);
    }
    fn record_f64(&mut self, field: &tracing::field::Field, value: f64) {
        self.field(field.name(), serde_json::Value::from(value));
    }
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        self.field(field.name(), serde_json::Value::from(format!("{value:?}")));
    }
}

impl<'writer> tracing_subscriber::fmt::FormatFields<'writer> for AppendedJsonFields {
    fn format_fields<R: tracing_subscriber::field::RecordFields>(
        &self,
        writer: tracing_subscriber::fmt::format::Writer<'writer>,
        fields: R,
    ) -> std::fmt::Result {
        let mut visitor = LogFields {
            out: writer,
            empty: true,
            result: Ok(()),
        };
        fields.record(&mut visitor);
        visitor.result?;
        visitor
            .out
            .write_str(if visitor.empty { "{}" } else { "}" })
    }

    fn add_fields(
        &self,
        current: &'writer mut tracing_subscriber::fmt::FormattedFields<Self>,
        fields: &tracing::span::Record<'_>,
    ) -> std::fmt::Result {
        if current.fields.is_empty() {
            return self.format_fields(current.as_writer(), fields);
        }
        let mut added = String::new();
        self.format_fields(
            tracing_subscriber::fmt::format::Writer::new(&mut added),
            fields,
        )?;
        // `{"a":1}` and `{"b":2}` make `{"a":1,"b":2}`.
        if let Some(rest) = added.strip_prefix('{').filter(|rest| *rest != "}") {
            current.fields.pop();
            if current.fields != "{" {
                current.fields.push(',');
            }
            current.fields.push_str(rest);
        }
        Ok(())
    }
}

/// Records the OpenTelemetry trace id of `span` in its `trace_id` field (declared
/// `trace_id = tracing::field::Empty`), so log lines can be found from a trace and a
/// trace from a log line. Call it after the span's parent is set.
pub fn record_trace_id(span: &Span) {
    use opentelemetry::trace::TraceContextExt;
    use tracing_opentelemetry::OpenTelemetrySpanExt;
    let trace_id = span.context().span().span_context().trace_id();
    if trace_id != opentelemetry::trace::TraceId::INVALID {
        span.record("trace_id", trace_id.to_string());
    }
}

/// Links `span` to `to`'s trace (a batch request to each member's event), so the
/// request shows in every member's trace and each member's from the request.
pub fn link(span: &Span, to: &Span) {
    use opentelemetry::trace::TraceContextExt;
    use tracing_opentelemetry::OpenTelemetrySpanExt;
    span.add_link(to.context().span().span_context().clone());
}

// Numbers on spans are recorded as i64: the OpenTelemetry layer exports a u64 as text.

/// The producer span of publishing `count` events from one batch into INGEST (the
/// conventions' batch send): one span for the whole batch, whose trace context every
/// member carries, so each member's consumer spans are its children.
pub fn batch_publish_span(source: &str, count: usize) -> Span {
    let template = "ingest.{source}.{event_type}";
    let span = tracing::info_span!(
        "publish",
        otel.name = format!("publish {template}"),
        otel.kind = "producer",
        messaging.system = "nats",
        messaging.operation.type = "send",
        messaging.operation.name = "publish",
        messaging.destination.template = template,
        messaging.batch.message_count = count as i64,
        source = source,
        otel.status_code = tracing::field::Empty,
        error.type = tracing::field::Empty,
        trace_id = tracing::field::Empty,
    );
    record_trace_id(&span);
    span
}

/// The producer span of publishing one message to `subject`, named and attributed by
/// the OpenTelemetry messaging conventions (`publish deliver.{provider}.{route}`).
/// Its context is written into `headers`, so the consumer's span becomes its child;
/// lines logged inside it carry the message's `event_id` and `trace_id`.
pub fn publish_span(subject: &str, headers: &mut async_nats::HeaderMap, body_size: usize) -> Span {
    let template = topology::subject_template(subject);
    let span = tracing::info_span!(
        "publish",
        otel.name = format!("publish {template}"),
        otel.kind = "producer",
        messaging.system = "nats",
        messaging.operation.type = "send",
        messaging.operation.name = "publish",
        messaging.destination.name = subject,
        messaging.destination.template = template,
        messaging.message.id = crate::headers::get(Some(headers), crate::headers::NATS_MSG_ID),
        messaging.message.body.size = body_size as i64,
        otel.status_code = tracing::field::Empty,
        error.type = tracing::field::Empty,
        event_id = crate::headers::get(Some(headers), crate::headers::EVENT_ID),
        trace_id = tracing::field::Empty,
    );
    record_trace_id(&span);
    crate::headers::inject_span(&span, headers);
    span
}

/// The consumer span of processing one message that `consumer` pulled, named and
/// attributed by the OpenTelemetry messaging conventions (`process
/// ingest.{source}.{event_type}`), a child of the span that published the message.
/// Lines logged inside it carry `event_id` and `trace_id`.
pub fn process_span(message: &async_nats::Message, consumer: &str, event_id: &str) -> Span {
    let subject = message.subject.as_str();
    let template = topology::subject_template(subject);
    let span = tracing::info_span!(
        "process",
        otel.name = format!("process {template}"),
        otel.kind = "consumer",
        otel.status_code = tracing::field::Empty,
        error.type = tracing::field::Empty,
        messaging.system = "nats",
        messaging.operation.type = "process",
        messaging.operation.name = "process",
        messaging.destination.name = subject,
        messaging.destination.template = template,
        messaging.consumer.group.name = consumer,
        messaging.message.id = crate::headers::get(message.headers.as_ref(), crate::headers::NATS_MSG_ID),
        messaging.message.body.size = message.payload.len() as i64,
        event_id,
        trace_id = tracing::field::Empty,
    );
    crate::headers::set_parent_from(&span, message.headers.as_ref());
    span
}

/// Marks `span` (declared with `otel.status_code` and `error.type`) as failed, with
/// `kind` as a low-cardinality error type (`503`, `timeout`, `mapping`).
pub fn record_error(span: &Span, kind: &str) {
    span.record("otel.status_code", "error");
    span.record("error.type", kind);
}

/// Installs a subscriber that writes to the test harness's captured output; safe to
/// call from every test.
pub fn init_for_tests() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let provider = SdkTracerProvider::builder().build();
        opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
        let filter = EnvFilter::try_from_default_env()
            .unwrap_or_else(|_| EnvFilter::new("warn,switchyard=info"));
        let _ = tracing_subscriber::registry()
            .with(filter)
            .with(
                tracing_subscriber::fmt::layer()
                    .compact()
                    .with_test_writer(),
            )
            .with(otel_layer(&provider))
            .try_init();
        opentelemetry::global::set_tracer_provider(provider);
    });
}

fn tracer_provider(service: &str) -> Result<SdkTracerProvider, Error> {
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
    let mut resource = Resource::builder();
    if std::env::var_os("OTEL_SERVICE_NAME").is_none() {
        resource = resource.with_service_name(format!("switchyard-{service}"));
    }
    let mut builder = SdkTracerProvider::builder().with_resource(resource.build());
    if export_configured() {
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .build()
            .map_err(|err| Error::Config(format!("OTLP exporter: {err}")))?;
        builder = builder.with_batch_exporter(exporter);
    }
    let provider = builder.build();
    opentelemetry::global::set_tracer_provider(provider.clone());
    Ok(provider)
}

fn export_configured() -> bool {
    let set = |name: &str| std::env::var(name).is_ok_and(|value| !value.trim().is_empty());
    let disabled = std::env::var("OTEL_TRACES_EXPORTER").is_ok_and(|value| value == "none");
    !disabled && (set("OTEL_EXPORTER_OTLP_ENDPOINT") || set("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"))
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;

    #[derive(Clone, Default)]
    struct Lines(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Lines {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn json_lines_about_an_event_carry_its_event_id_and_trace_id() {
        let lines = Lines::default();
        let writer = lines.clone();
        let provider = SdkTracerProvider::builder().build();
        let subscriber = tracing_subscriber::registry()
            .with(json_layer(move || writer.clone()))
            .with(otel_layer(&provider));
        tracing::subscriber::with_default(subscriber, || {
            let span = tracing::info_span!(
                "transform process",
                event_id = "01a2-event",
                messaging.destination.name = "ingest.shop.order",
                route = tracing::field::Empty,
                trace_id = tracing::field::Empty,
                outcome = tracing::field::Empty,
            );
            record_trace_id(&span);
            span.record("route", "orders \"eu\"");
            span.record("outcome", "retry");
            span.record("outcome", "delivered");
            span.in_scope(|| {
                let inner = tracing::info_span!("transform publish");
                inner.in_scope(|| tracing::warn!(reason = "x", "nested line"));
            });
        });
        let text = String::from_utf8(lines.0.lock().unwrap().clone()).unwrap();
        let line: serde_json::Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
        assert_eq!(line["message"], "nested line");
        let outer = &line["spans"][0];
        assert_eq!(outer["event_id"], "01a2-event", "{line}");
        let trace_id = outer["trace_id"].as_str().unwrap();
        assert_eq!(trace_id.len(), 32, "{line}");
        assert!(trace_id.bytes().all(|b| b.is_ascii_hexdigit()));
        // Fields recorded after creation are all there, the last value of each.
        assert_eq!(outer["route"], "orders \"eu\"", "{line}");
        assert_eq!(outer["outcome"], "delivered", "{line}");
        // Attributes for the trace only are not formatted into log lines.
        assert!(outer.get("messaging.destination.name").is_none(), "{line}");
    }
}
