//! The message header contract and W3C trace context on NATS headers.
//!
//! Headers carry metadata; bodies stay the payload. Every publisher and consumer in
//! Switchyard injects and extracts trace context through [`inject_context`] and
//! [`extract_context`], so one event forms one trace across every hop. Header names
//! are matched case-insensitively because other NATS clients send `Traceparent`.

use async_nats::HeaderMap;
use opentelemetry::{
    Context,
    propagation::{Extractor, Injector},
};

/// Idempotency key deduplicated by JetStream within the stream's duplicate window.
pub const NATS_MSG_ID: &str = "Nats-Msg-Id";
/// Media type of the body.
pub const CONTENT_TYPE: &str = "Content-Type";
/// The event's id, assigned at ingest and kept on every derived message.
pub const EVENT_ID: &str = "Switchyard-Event-Id";
/// The source the event came from.
pub const SOURCE: &str = "Switchyard-Source";
/// The event type, as in `ingest.<source>.<event_type>`.
pub const EVENT_TYPE: &str = "Switchyard-Event-Type";
/// When ingest accepted the event (RFC 3339).
pub const RECEIVED_AT: &str = "Switchyard-Received-At";
/// The route that produced a delivery.
pub const ROUTE: &str = "Switchyard-Route";
/// The mapping that produced a delivery, as `name@version`.
pub const MAPPING: &str = "Switchyard-Mapping";
/// Key whose events must reach the provider in order.
pub const ORDERING_KEY: &str = "Switchyard-Ordering-Key";
/// Why a message was dead-lettered: `rejected`, `exhausted`, `mapping`, `contract` or
/// `filter`.
pub const FAILURE_CATEGORY: &str = "Switchyard-Failure-Category";
/// Human-readable reason for a dead letter.
pub const FAILURE_REASON: &str = "Switchyard-Failure-Reason";
/// What kind of error a dead letter's last attempt met (an `ErrorKind` name).
pub const ERROR_KIND: &str = "Switchyard-Error-Kind";
/// The JSON pointers that broke a contract, separated by spaces.
pub const FAILING_PATHS: &str = "Switchyard-Failing-Paths";
/// Delivery attempts made before a message was dead-lettered.
pub const ATTEMPTS: &str = "Switchyard-Attempts";
/// The last HTTP status the provider answered, if any.
pub const LAST_STATUS: &str = "Switchyard-Last-Status";
/// The start of the provider's last response body, bounded.
pub const RESPONSE_EXCERPT: &str = "Switchyard-Response-Excerpt";
/// The catalog revision ingest accepted the event under; transform routes it with
/// that revision or a newer one.
pub const CATALOG_REVISION: &str = "Switchyard-Catalog-Revision";
/// Set on a forced replay of an event already delivered: the replay's id, which gives
/// the delivery an idempotency key of its own.
pub const REDELIVERY: &str = "Switchyard-Redelivery";
/// The ingest stream sequence of the original event.
pub const INGEST_SEQUENCE: &str = "Switchyard-Ingest-Sequence";

/// The first value of every header, by name.
pub fn first_values(headers: Option<&HeaderMap>) -> std::collections::BTreeMap<String, String> {
    headers
        .into_iter()
        .flat_map(HeaderMap::iter)
        .filter_map(|(name, values)| Some((name.to_string(), values.first()?.to_string())))
        .collect()
}

/// Longest header value Switchyard writes; longer text is cut at a char boundary.
const MAX_HEADER_VALUE: usize = 1024;

/// Returns the first value of `name`, compared case-insensitively (an exact match
/// first). One pass over the few headers a message has: `HeaderMap::get` builds a
/// header name (an allocation) for every lookup, and most lookups are of headers a
/// message does not carry.
pub fn get<'a>(headers: Option<&'a HeaderMap>, name: &str) -> Option<&'a str> {
    let mut found = None;
    for (key, values) in headers?.iter() {
        let key: &str = key.as_ref();
        if key == name {
            return values.first().map(|value| value.as_str());
        }
        if found.is_none() && key.eq_ignore_ascii_case(name) {
            found = values.first();
        }
    }
    found.map(|value| value.as_str())
}

/// Makes arbitrary text safe as a header value: one line, bounded length.
pub fn sanitize_value(text: &str) -> String {
    let mut out: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if out.len() > MAX_HEADER_VALUE {
        let mut cut = MAX_HEADER_VALUE;
        while !out.is_char_boundary(cut) {
            cut -= 1;
        }
        out.truncate(cut);
        out.push('…');
    }
    out
}

/// Writes the trace context of `cx` (`traceparent`, `tracestate`) into `headers`.
pub fn inject_context(cx: &Context, headers: &mut HeaderMap) {
    opentelemetry::global::get_text_map_propagator(|propagator| {
        propagator.inject_context(cx, &mut NatsInjector(headers));
    });
}

/// Reads the trace context carried by `headers`; an empty context when there is none.
pub fn extract_context(headers: Option<&HeaderMap>) -> Context {
    match headers {
        Some(headers) => opentelemetry::global::get_text_map_propagator(|propagator| {
            propagator.extract(&NatsExtractor(headers))
        }),
        None => Context::new(),
    }
}

/// Writes the current span's trace context into `headers`.
pub fn inject_current(headers: &mut HeaderMap) {
    inject_span(&tracing::Span::current(), headers);
}

/// Writes `span`'s trace context into `headers`.
pub fn inject_span(span: &tracing::Span, headers: &mut HeaderMap) {
    use tracing_opentelemetry::OpenTelemetrySpanExt;
    inject_context(&span.context(), headers);
}

/// Makes the span a child of the trace context carried by `headers`, and records the
/// trace id in its `trace_id` field when it has one.
pub fn set_parent_from(span: &tracing::Span, headers: Option<&HeaderMap>) {
    use tracing_opentelemetry::OpenTelemetrySpanExt;
    let cx = extract_context(headers);
    // Fails only when the span is disabled, and then there is nothing to link.
    let _ = span.set_parent(cx);
    crate::telemetry::record_trace_id(span);
}

/// Makes the span a child of the trace context an HTTP caller sent (`traceparent`,
/// `tracestate`), and records the trace id in its `trace_id` field; a request without
/// one starts a new trace.
pub fn set_parent_from_http(span: &tracing::Span, request: &axum::http::HeaderMap) {
    use tracing_opentelemetry::OpenTelemetrySpanExt;
    if request.contains_key("traceparent") {
        let cx = opentelemetry::global::get_text_map_propagator(|propagator| {
            propagator.extract(&HttpExtractor(request))
        });
        let _ = span.set_parent(cx);
    }
    crate::telemetry::record_trace_id(span);
}

struct HttpExtractor<'a>(&'a axum::http::HeaderMap);

impl Extractor for HttpExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|value| value.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(|key| key.as_str()).collect()
    }
}

struct NatsInjector<'a>(&'a mut HeaderMap);

impl Injector for NatsInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        self.0.insert(key, sanitize_value(&value).as_str());
    }
}

struct NatsExtractor<'a>(&'a HeaderMap);

impl Extractor for NatsExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        get(Some(self.0), key)
    }

    fn keys(&self) -> Vec<&str> {
        self.0.iter().map(|(key, _)| key.as_ref()).collect()
    }
}

#[cfg(test)]
mod tests {
    use opentelemetry::trace::{SpanContext, TraceContextExt, TraceFlags, TraceId, TraceState};
    use opentelemetry_sdk::propagation::TraceContextPropagator;

    use super::*;

    #[test]
    fn trace_context_round_trips_through_nats_headers() {
        opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
        let span = SpanContext::new(
            TraceId::from_hex("4bf92f3577b34da6a3ce929d0e0e4736").unwrap(),
            opentelemetry::trace::SpanId::from_hex("00f067aa0ba902b7").unwrap(),
            TraceFlags::SAMPLED,
            true,
            TraceState::default(),
        );
        let cx = Context::new().with_remote_span_context(span.clone());
        let mut headers = HeaderMap::new();
        inject_context(&cx, &mut headers);
        assert_eq!(
            get(Some(&headers), "traceparent"),
            Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
        );
        let back = extract_context(Some(&headers));
        assert_eq!(back.span().span_context().trace_id(), span.trace_id());
    }

    #[test]
    fn header_names_match_case_insensitively() {
        opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
        let mut headers = HeaderMap::new();
        headers.insert(
            "Traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        );
        let cx = extract_context(Some(&headers));
        assert_eq!(
            cx.span().span_context().trace_id().to_string(),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        assert_eq!(get(Some(&headers), "TRACEPARENT").map(str::len), Some(55));
    }

    #[test]
    fn sanitized_values_are_single_bounded_lines() {
        assert_eq!(sanitize_value("a\r\nb"), "a  b");
        let long = "é".repeat(2000);
        let cut = sanitize_value(&long);
        assert!(cut.len() <= MAX_HEADER_VALUE + '…'.len_utf8());
        assert!(cut.ends_with('…'));
    }
}
