//! Routes compiled from a catalog snapshot, and what each does with one event.
//!
//! Built once per catalog change; mapping versions are immutable, so mappings already
//! compiled are reused and only new versions are compiled. [`Routing::outputs`] is
//! the whole per-event decision — filter, input contract, program, output contract,
//! ordering key — shared by the transform consumer and by replays.

use std::{collections::HashMap, sync::Arc};

use async_nats::HeaderMap;
use switchyard_core::{
    canary::{self, Stopped},
    catalog::{Canary, CanaryBy, Catalog, MappingRef, Route},
    contract::Violation,
    headers,
    mapping::{CompiledMapping, Event, Filter, MappingError, Output, Program, RunError},
    metrics::{self, Counter, Histogram, RouteLabels, TransformLabels},
    outcome::FailureCategory,
    topology,
};

/// A route with its compiled mapping, filter and ordering key.
pub struct CompiledRoute {
    /// The route as configured.
    pub route: Route,
    /// Its mapping as `name@version`.
    pub mapping: String,
    compiled: Arc<CompiledMapping>,
    canary: Option<CompiledCanary>,
    filter: Option<Filter>,
    ordering_key: Option<Program>,
    metrics: RouteMetrics,
}

/// A route's canary version, compiled.
struct CompiledCanary {
    canary: Canary,
    /// `name@version`.
    mapping: String,
    compiled: Arc<CompiledMapping>,
}

/// The route's metric handles, looked up once per catalog change rather than per
/// event.
struct RouteMetrics {
    duration: Histogram,
    published: Counter,
    filtered: Counter,
    skipped: Counter,
}

impl RouteMetrics {
    fn new(route: &str) -> Self {
        let metrics = metrics::metrics();
        let outcome = |outcome: &str| {
            metrics
                .transform_results
                .get_or_create(&TransformLabels {
                    route: route.to_owned(),
                    outcome: outcome.to_owned(),
                })
                .clone()
        };
        Self {
            duration: metrics
                .mapping_duration
                .get_or_create(&RouteLabels {
                    route: route.to_owned(),
                })
                .clone(),
            published: outcome("published"),
            filtered: outcome("filtered"),
            skipped: outcome("skipped"),
        }
    }

    /// Counts one decision and how long it took.
    fn observe(&self, route: &str, decision: &Decision, took: std::time::Duration) {
        self.duration.observe(took.as_secs_f64());
        match decision {
            Decision::Deliver { .. } => self.published.inc(),
            Decision::Filtered => self.filtered.inc(),
            Decision::Skipped(_) => self.skipped.inc(),
            // Dead letters are rare; their counters are looked up when they happen.
            Decision::DeadLetter { category, .. } => metrics::metrics()
                .transform_results
                .get_or_create(&TransformLabels {
                    route: route.to_owned(),
                    outcome: category.as_str().to_owned(),
                })
                .inc(),
        };
    }
}

/// Every route of one catalog revision.
#[derive(Default)]
pub struct Routing {
    /// The catalog revision these routes come from.
    pub revision: u64,
    routes: Vec<CompiledRoute>,
    mappings: HashMap<MappingRef, Arc<CompiledMapping>>,
    stopped: Stopped,
}

/// Why a catalog revision could not be compiled (it passed validation when it was
/// applied, so this means a newer Switchyard wrote it or the KV value was edited).
#[derive(Debug, thiserror::Error)]
#[error("{what}: {message}")]
pub struct BuildError {
    /// The mapping or route at fault.
    pub what: String,
    /// The diagnostics.
    pub message: String,
}

/// What one route does with one event.
#[derive(Debug, PartialEq)]
pub enum Decision {
    /// Deliver this body, in order with others of the same key when there is one.
    Deliver {
        /// The mapped body (JSON).
        body: Vec<u8>,
        /// The ordering key, when the route has one and it yields a value.
        ordering_key: Option<String>,
    },
    /// The route's filter said no.
    Filtered,
    /// The program called `abort`.
    Skipped(Option<String>),
    /// The event cannot go this way: dead-letter it with the original body.
    DeadLetter {
        /// `filter`, `mapping` or `contract`.
        category: FailureCategory,
        /// What went wrong, with the failing paths for a contract.
        reason: String,
        /// The failing JSON pointers, for a contract violation.
        paths: Vec<String>,
    },
}

/// A message to publish for one event.
#[derive(Debug)]
pub struct Outgoing {
    /// The route it came from.
    pub route: String,
    /// `deliver.…` or `dlq.<provider>`.
    pub subject: String,
    /// Its headers, `Nats-Msg-Id` included.
    pub headers: HeaderMap,
    /// Its body.
    pub body: bytes::Bytes,
    /// Whether it is a dead letter.
    pub dead_letter: bool,
}

/// One ingest event, as the routes see it.
pub struct Incoming<'a> {
    /// The source, from the subject.
    pub source: &'a str,
    /// The event type, from the subject.
    pub event_type: &'a str,
    /// The ingest message's headers.
    pub headers: Option<&'a HeaderMap>,
    /// The raw body.
    pub payload: &'a bytes::Bytes,
    /// The event id.
    pub event_id: &'a str,
    /// Its INGEST stream sequence.
    pub sequence: u64,
    /// When ingest accepted it (RFC 3339).
    pub received_at: &'a str,
}

fn build_error(what: String, errors: Vec<MappingError>) -> BuildError {
    BuildError {
        what,
        message: errors
            .into_iter()
            .map(|error| format!("{}: {}", error.field, error.message))
            .collect::<Vec<_>>()
            .join("; "),
    }
}

impl Routing {
    /// Compiles `catalog`, reusing the mappings of `previous`; canaries in `stopped`
    /// take no events.
    pub fn build(
        catalog: &Catalog,
        revision: u64,
        previous: &Routing,
        stopped: &Stopped,
    ) -> Result<Self, BuildError> {
        let mut mappings = HashMap::new();
        for mapping in &catalog.mappings {
            let reference = mapping.reference();
            let compiled = match previous.mappings.get(&reference) {
                Some(compiled) => compiled.clone(),
                None => Arc::new(
                    CompiledMapping::compile(mapping)
                        .map_err(|errors| build_error(format!("mapping {reference}"), errors))?,
                ),
            };
            mappings.insert(reference, compiled);
        }
        let mut routes = Vec::new();
        for route in &catalog.routes {
            let Some(compiled) = mappings.get(&route.mapping).cloned() else {
                continue;
            };
            let fail = |field: &str, err: switchyard_core::mapping::CompileError| BuildError {
                what: format!("route {} {field}", route.name),
                message: err.diagnostics,
            };
            let ordering_key = match &route.ordering_key {
                Some(expression) => {
                    Some(Program::compile(expression).map_err(|err| fail("ordering_key", err))?)
                }
                None => None,
            };
            let filter = match &route.filter {
                Some(expression) => {
                    Some(Filter::compile(expression).map_err(|err| fail("filter", err))?)
                }
                None => None,
            };
            let canary = route.canary.as_ref().and_then(|canary| {
                Some(CompiledCanary {
                    canary: canary.clone(),
                    mapping: canary.mapping.to_string(),
                    compiled: mappings.get(&canary.mapping).cloned()?,
                })
            });
            routes.push(CompiledRoute {
                route: route.clone(),
                mapping: route.mapping.to_string(),
                compiled,
                canary,
                filter,
                ordering_key,
                metrics: RouteMetrics::new(&route.name),
            });
        }
        Ok(Self {
            revision,
            routes,
            mappings,
            stopped: stopped.clone(),
        })
    }

    /// The routes taking events of `source` with `event_type`.
    pub fn matching<'a>(
        &'a self,
        source: &'a str,
        event_type: &'a str,
    ) -> impl Iterator<Item = &'a CompiledRoute> + 'a {
        self.routes.iter().filter(move |compiled| {
            compiled.route.source == source && compiled.route.matches_event_type(event_type)
        })
    }

    /// The route named `name`.
    pub fn route(&self, name: &str) -> Option<&CompiledRoute> {
        self.routes
            .iter()
            .find(|compiled| compiled.route.name == name)
    }

    /// Whether `mapping` is a canary of `route` that was rolled back: not the
    /// route's own version, and stopped by its record (also after the canary was
    /// taken off the route).
    pub fn stopped_canary(&self, route: &str, mapping: &str) -> bool {
        self.route(route)
            .is_some_and(|compiled| compiled.mapping != mapping)
            && mapping
                .parse::<MappingRef>()
                .is_ok_and(|mapping| self.stopped.stops(route, &mapping))
    }

    /// Every message `event` produces: a delivery or a dead letter per route that
    /// takes it (only `only_route` when given), nothing for routes that filter or skip
    /// it. The event body is parsed once for all routes.
    pub fn outputs(&self, event: &Incoming<'_>, only_route: Option<&str>) -> Vec<Outgoing> {
        let routes: Vec<&CompiledRoute> = self
            .matching(event.source, event.event_type)
            .filter(|compiled| only_route.is_none_or(|name| name == compiled.route.name))
            .collect();
        let mut parsed = None;
        let mut outputs = Vec::with_capacity(routes.len());
        for (i, compiled) in routes.iter().enumerate() {
            let parsed = parsed.get_or_insert_with(|| Event::parse(event.payload));
            let started = std::time::Instant::now();
            let (decision, mapping) =
                compiled.decide(parsed, i + 1 == routes.len(), event.event_id, &self.stopped);
            compiled
                .metrics
                .observe(&compiled.route.name, &decision, started.elapsed());
            if let Some(outgoing) = compiled.outgoing(event, decision, mapping) {
                outputs.push(outgoing);
            }
        }
        outputs
    }
}

impl CompiledRoute {
    /// Runs the filter, the input contract, the program and the output contract of
    /// the version the event takes (the canary's, when it has one that takes events
    /// and the event falls in its share); `last` lets the program take the event
    /// instead of a copy. Returns the decision and the version, `name@version`.
    pub fn decide(
        &self,
        event: &mut Result<Event, RunError>,
        last: bool,
        event_id: &str,
        stopped: &Stopped,
    ) -> (Decision, &str) {
        let stable = self.mapping.as_str();
        let event = match event {
            Ok(event) => event,
            Err(err) => {
                return (
                    dead_letter(FailureCategory::Mapping, err.to_string(), &[]),
                    stable,
                );
            }
        };
        if let Some(filter) = &self.filter {
            match filter.matches(event) {
                Ok(true) => {}
                Ok(false) => return (Decision::Filtered, stable),
                Err(err) => {
                    return (
                        dead_letter(
                            FailureCategory::Filter,
                            format!("the route's filter failed: {err}"),
                            &[],
                        ),
                        stable,
                    );
                }
            }
        }
        let ordering_key = self.ordering_key(event);
        let (compiled, mapping) = match &self.canary {
            Some(canary)
                if !stopped.stops(&self.route.name, &canary.canary.mapping)
                    && canary::takes_canary(
                        &self.route.name,
                        match canary.canary.by {
                            CanaryBy::OrderingKey => ordering_key.as_deref().unwrap_or(event_id),
                            CanaryBy::Event => event_id,
                        },
                        canary.canary.percent,
                    ) =>
            {
                (&canary.compiled, canary.mapping.as_str())
            }
            _ => (&self.compiled, stable),
        };
        let applied = if last {
            compiled.apply_last(event)
        } else {
            compiled.apply(event)
        };
        let decision = match applied {
            Ok(Output::Body(body)) => Decision::Deliver { body, ordering_key },
            Ok(Output::Skipped(reason)) => Decision::Skipped(reason),
            Err(failure) => dead_letter(
                failure.category(),
                failure.to_string(),
                failure.violations(),
            ),
        };
        (decision, mapping)
    }

    /// The ordering key of `event` on this route, when the route has one and it
    /// yields a value: a text value as it is, anything else as JSON.
    fn ordering_key(&self, event: &Event) -> Option<String> {
        let value = self.ordering_key.as_ref()?.evaluate(event).ok()??;
        Some(match value {
            vrl::value::Value::Bytes(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
            other => serde_json::to_string(&other).ok()?,
        })
    }

    /// The message a decision of `mapping` publishes, if any.
    fn outgoing(
        &self,
        event: &Incoming<'_>,
        decision: Decision,
        mapping: &str,
    ) -> Option<Outgoing> {
        let route = &self.route;
        let mut out = HeaderMap::new();
        out.insert(headers::EVENT_ID, event.event_id);
        out.insert(headers::SOURCE, event.source);
        out.insert(headers::EVENT_TYPE, event.event_type);
        out.insert(headers::ROUTE, route.name.as_str());
        out.insert(headers::MAPPING, mapping);
        out.insert(headers::RECEIVED_AT, event.received_at);
        out.insert(
            headers::INGEST_SEQUENCE,
            event.sequence.to_string().as_str(),
        );
        match decision {
            Decision::Deliver { body, ordering_key } => {
                out.insert(
                    headers::NATS_MSG_ID,
                    format!("{}:{}", event.event_id, route.name).as_str(),
                );
                out.insert(headers::CONTENT_TYPE, "application/json");
                let subject = match ordering_key {
                    Some(key) => {
                        out.insert(
                            headers::ORDERING_KEY,
                            headers::sanitize_value(&key).as_str(),
                        );
                        topology::ordered_deliver_subject(&route.provider, &route.name, &key)
                    }
                    None => topology::deliver_subject(&route.provider, &route.name),
                };
                Some(Outgoing {
                    route: route.name.clone(),
                    subject,
                    headers: out,
                    body: body.into(),
                    dead_letter: false,
                })
            }
            Decision::Filtered => None,
            Decision::Skipped(reason) => {
                tracing::debug!(route = %route.name, reason = ?reason, "mapping skipped the event");
                None
            }
            Decision::DeadLetter {
                category,
                reason,
                paths,
            } => {
                tracing::warn!(route = %route.name, mapping, event_id = event.event_id, %category, reason, "dead-lettering the event");
                if let Some(original) = event.headers {
                    for (name, values) in original.iter() {
                        if headers::get(Some(&out), name.as_ref()).is_none() {
                            for value in values {
                                out.append(name.clone(), value.clone());
                            }
                        }
                    }
                }
                out.insert(
                    headers::NATS_MSG_ID,
                    format!("{}:{}:dlq", event.event_id, route.name).as_str(),
                );
                out.insert(headers::FAILURE_CATEGORY, category.as_str());
                out.insert(
                    headers::FAILURE_REASON,
                    headers::sanitize_value(&reason).as_str(),
                );
                if !paths.is_empty() {
                    out.insert(
                        headers::FAILING_PATHS,
                        headers::sanitize_value(&paths.join(" ")).as_str(),
                    );
                }
                out.insert(headers::ATTEMPTS, "0");
                Some(Outgoing {
                    route: route.name.clone(),
                    subject: topology::dlq_subject(&route.provider),
                    headers: out,
                    body: event.payload.clone(),
                    dead_letter: true,
                })
            }
        }
    }
}

fn dead_letter(category: FailureCategory, reason: String, violations: &[Violation]) -> Decision {
    Decision::DeadLetter {
        category,
        reason,
        paths: violations
            .iter()
            .map(|violation| violation.shown_path().to_owned())
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use switchyard_core::canary::{CanaryRecord, CanaryState, Tally};

    use super::*;

    fn compiled(canary: &str, stopped: &Stopped) -> Routing {
        let catalog = Catalog::from_yaml(&format!(
            r#"
sources: [{{ name: shop }}]
providers: [{{ name: crm, url: "http://127.0.0.1:9/x" }}]
mappings:
  - {{ name: m, version: 1, program: '. = {{"v": 1}}' }}
  - {{ name: m, version: 2, program: '. = {{"v": 2}}' }}
routes:
  - name: orders
    source: shop
    mapping: m@1
    provider: crm
    ordering_key: .customer
    canary: {canary}
"#
        ))
        .unwrap();
        Routing::build(&catalog, 1, &Routing::default(), stopped).unwrap()
    }

    /// The version an event with `id` from `customer` goes through.
    fn version(routing: &Routing, id: &str, customer: &str) -> String {
        let payload = bytes::Bytes::from(format!(r#"{{"customer": "{customer}"}}"#));
        let incoming = Incoming {
            source: "shop",
            event_type: "order.created",
            headers: None,
            payload: &payload,
            event_id: id,
            sequence: 1,
            received_at: "2026-12-02T00:00:00Z",
        };
        let outputs = routing.outputs(&incoming, None);
        headers::get(Some(&outputs[0].headers), headers::MAPPING)
            .unwrap()
            .to_owned()
    }

    #[test]
    fn by_ordering_key_a_key_keeps_its_version_and_a_stopped_canary_takes_nothing() {
        let stopped = Stopped::default();
        let keyed = compiled("{ mapping: m@2, percent: 50, by: ordering_key }", &stopped);
        let mut versions: HashMap<String, Vec<String>> = HashMap::new();
        for i in 0..400 {
            let customer = format!("c{}", i % 40);
            versions.entry(customer.clone()).or_default().push(version(
                &keyed,
                &format!("e{i}"),
                &customer,
            ));
        }
        let canary_keys = versions.values().filter(|v| v[0] == "m@2").count();
        assert!((10..=30).contains(&canary_keys), "{canary_keys} of 40 keys");
        for (customer, seen) in &versions {
            assert!(
                seen.iter().all(|v| v == &seen[0]),
                "{customer} switched: {seen:?}"
            );
        }

        // By event, the same event always takes the same version, and keys mix.
        let by_event = compiled("{ mapping: m@2, percent: 50 }", &stopped);
        let mixed = (0..100)
            .map(|i| version(&by_event, &format!("e{i}"), "c1"))
            .filter(|v| v == "m@2")
            .count();
        assert!((30..=70).contains(&mixed), "{mixed} of 100");
        assert_eq!(
            version(&by_event, "e7", "c1"),
            version(&by_event, "e7", "c2")
        );

        // Rolled back: every event takes the stable version, in routes built before.
        let record = CanaryRecord {
            mapping: "m@2".parse().unwrap(),
            stable: "m@1".parse().unwrap(),
            state: CanaryState::RolledBack,
            since: String::new(),
            reason: String::new(),
            changed_at: String::new(),
            canary: Tally::default(),
            stable_tally: Tally::default(),
        };
        stopped.replace(&HashMap::from([("orders".to_owned(), record)]));
        assert!(by_event.stopped_canary("orders", "m@2"));
        assert!((0..100).all(|i| version(&by_event, &format!("e{i}"), "c1") == "m@1"));
    }
}
