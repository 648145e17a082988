//! The catalog: sources, providers, mappings and routes.
//!
//! One document format (YAML or JSON) describes all four kinds; see
//! `deploy/examples/quickstart.yaml`. The whole catalog is validated as a unit —
//! names, references, URLs, durations and VRL programs — so a bad change is rejected
//! when it is applied, never discovered per event. Mappings are immutable once
//! published under `name@version`.

mod apply;
mod batch;
mod database;
mod policy;
mod source;
mod store;
mod validate;
mod webhook;

use std::{collections::BTreeMap, fmt, str::FromStr, time::Duration};

pub use apply::{Action, Change};
pub use batch::{Batch, BatchFormat, ByteSize, MAX_BATCH_BYTES, MAX_BATCH_EVENTS, MAX_BATCH_WAIT};
pub use database::{
    Cdc, DEFAULT_OUTBOX_TABLE, MAX_OUTBOX_BATCH, Outbox, channel_of, is_slot_name, is_table_name,
    quote_table,
};
pub use policy::{
    Auth, Backoff, BreakerPolicy, ClientTls, Delay, OAuth2, RateLimit, RetryPolicy,
    STANDARD_WEBHOOKS_SCHEDULE, SecretName, StatusMatch,
};
use serde::{Deserialize, Serialize};
pub use source::{Cursor, OnInvalid, Poll, SchemaRule, Source};
pub use store::{BUCKET, CatalogStore, Snapshot};
pub use validate::validate_event_type;
pub use webhook::{Extract, GenericHmac, HmacAlgorithm, SignatureEncoding, Verify, Webhook};

/// The whole catalog, as applied and as stored in KV.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Catalog {
    /// Systems that send events in.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sources: Vec<Source>,
    /// Systems that events are delivered to.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub providers: Vec<Provider>,
    /// Versioned VRL programs that turn a source's event into a provider's request body.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mappings: Vec<Mapping>,
    /// Which events of which source go through which mapping to which provider.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub routes: Vec<Route>,
}

/// A third-party HTTP API that events are delivered to.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Provider {
    /// Unique name; the `<provider>` in `deliver.<provider>.<route>`.
    pub name: String,
    /// Free text for operators.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub description: String,
    /// Endpoint every delivery is sent to (http or https).
    pub url: String,
    /// HTTP method of each delivery.
    #[serde(default)]
    pub method: HttpMethod,
    /// Extra request headers, each a literal or a reference to a secret.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, HeaderValue>,
    /// How long one request may take before it counts as a retryable failure.
    #[serde(default = "defaults::timeout", with = "humantime_serde")]
    pub timeout: Duration,
    /// Requests in flight to this provider at once.
    #[serde(default = "defaults::max_in_flight")]
    pub max_in_flight: usize,
    /// How each request authenticates.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth: Option<Auth>,
    /// Client certificate (mutual TLS) and extra trust roots, also for its OAuth2
    /// token endpoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<ClientTls>,
    /// Requests allowed over time; none means no limit beyond `max_in_flight`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<RateLimit>,
    /// What happens after a retryable failure.
    #[serde(default)]
    pub retry: RetryPolicy,
    /// When to stop calling a failing provider for a while.
    #[serde(default)]
    pub breaker: BreakerPolicy,
    /// Send many events per request; each is still delivered, retried and recorded
    /// on its own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch: Option<Batch>,
    /// VRL over the array of the members' bodies (`.`) that leaves the request body in
    /// `.`, for APIs that want an envelope. Needs `batch` (not ndjson).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch_program: Option<String>,
    /// VRL over the response (`.status`, `.body`) that returns one status
    /// per member, in member order: a number, or `{"status": N, "reason": "…"}`.
    /// Needs `batch`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch_results: Option<String>,
}

impl Provider {
    /// The names (never the values) of the secrets its requests authenticate with:
    /// those of `auth`, then those of `headers`.
    pub fn credential_secrets(&self) -> Vec<String> {
        let auth = self.auth.iter().flat_map(Auth::secret_names);
        let headers = self.headers.values().filter_map(|value| match value {
            HeaderValue::Secret(reference) => Some(reference.secret.as_str()),
            HeaderValue::Literal(_) => None,
        });
        auth.chain(headers).map(str::to_owned).collect()
    }
}

/// HTTP methods a delivery can use.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum HttpMethod {
    /// `POST` (the default).
    #[default]
    Post,
    /// `PUT`.
    Put,
    /// `PATCH`.
    Patch,
}

impl HttpMethod {
    /// The method's name on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Post => "POST",
            Self::Put => "PUT",
            Self::Patch => "PATCH",
        }
    }
}

/// A header value: literal text, or a secret read from the environment or a file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum HeaderValue {
    /// Sent as written.
    Literal(String),
    /// Read by name when the delivery process starts; never stored in clear.
    Secret(SecretRef),
}

/// A reference to a secret by name, with optional text put in front of its value.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecretRef {
    /// Name of the environment variable or file holding the secret.
    pub secret: String,
    /// Text sent before the secret, e.g. `"Bearer "`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub prefix: String,
}

/// A VRL program published under `name@version`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Mapping {
    /// Name shared by all versions.
    pub name: String,
    /// Version number, starting at 1; a published version never changes.
    pub version: u32,
    /// Free text for operators.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub description: String,
    /// The VRL program. It receives the event body as `.` and leaves the request
    /// body in `.`; `abort` skips the event for this route.
    pub program: String,
    /// JSON Schema (draft 2020-12) every input must meet; a violation dead-letters
    /// the event with the failing paths.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input_schema: Option<serde_json::Value>,
    /// JSON Schema (draft 2020-12) every output must meet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output_schema: Option<serde_json::Value>,
}

impl Mapping {
    /// This mapping's reference, `name@version`.
    pub fn reference(&self) -> MappingRef {
        MappingRef {
            name: self.name.clone(),
            version: self.version,
        }
    }

    /// Whether `other` is the same published version: same program and schemas (the
    /// description may change).
    pub fn same_version_as(&self, other: &Mapping) -> bool {
        self.program == other.program
            && self.input_schema == other.input_schema
            && self.output_schema == other.output_schema
    }
}

/// `name@version` of a mapping.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct MappingRef {
    /// The mapping's name.
    pub name: String,
    /// The pinned version.
    pub version: u32,
}

impl fmt::Display for MappingRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", self.name, self.version)
    }
}

impl FromStr for MappingRef {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let (name, version) = text
            .split_once('@')
            .ok_or_else(|| format!("{text:?} is not of the form name@version"))?;
        let version = version
            .parse::<u32>()
            .map_err(|_| format!("{text:?}: version {version:?} is not a whole number"))?;
        Ok(Self {
            name: name.to_owned(),
            version,
        })
    }
}

impl TryFrom<String> for MappingRef {
    type Error = String;

    fn try_from(text: String) -> Result<Self, Self::Error> {
        text.parse()
    }
}

impl From<MappingRef> for String {
    fn from(reference: MappingRef) -> Self {
        reference.to_string()
    }
}

/// Sends matching events of one source through a mapping to a provider.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Route {
    /// Unique name; the `<route>` in `deliver.<provider>.<route>`.
    pub name: String,
    /// Free text for operators.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub description: String,
    /// The source whose events this route takes.
    pub source: String,
    /// Event-type glob patterns (`*` matches any run of characters, dots included).
    #[serde(default = "defaults::event_types")]
    pub event_types: Vec<String>,
    /// A VRL expression over the incoming event that must be a boolean; the route
    /// takes only the events for which it is true.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filter: Option<String>,
    /// The mapping version applied to each event.
    pub mapping: MappingRef,
    /// The provider that receives the mapped body.
    pub provider: String,
    /// A VRL expression over the incoming event; events with the same value reach the
    /// provider in ingest order. No ordering when unset or when it yields null.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ordering_key: Option<String>,
    /// A second mapping version that takes a share of the events beside `mapping`,
    /// rolled back on its own when it fails more often.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub canary: Option<Canary>,
}

/// A canary mapping version on a route: `percent` of the events (picked by a
/// deterministic hash, so an event always takes the same version) go through
/// `mapping` instead of the route's. When its failed share exceeds the stable
/// version's by more than `margin` points after `min_events` finished events each,
/// it stops taking events.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Canary {
    /// The version tried, `name@version`.
    pub mapping: MappingRef,
    /// The share of events it takes, 1 to 50.
    pub percent: u8,
    /// What the hash is taken over.
    #[serde(default)]
    pub by: CanaryBy,
    /// Finished events each version needs before they are compared.
    #[serde(default = "defaults::canary_min_events")]
    pub min_events: u32,
    /// How many percentage points more of the canary's events may fail.
    #[serde(default = "defaults::canary_margin")]
    pub margin: f64,
}

/// What a canary's split hashes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CanaryBy {
    /// The event id: each event on its own.
    #[default]
    Event,
    /// The route's ordering key, so a key never switches version mid-stream (events
    /// without a key go by their id).
    OrderingKey,
}

impl Route {
    /// Whether `event_type` matches one of this route's patterns.
    pub fn matches_event_type(&self, event_type: &str) -> bool {
        matches_any(&self.event_types, event_type)
    }
}

/// Matches `text` against a pattern where `*` stands for any run of characters.
fn glob_match(pattern: &str, text: &str) -> bool {
    let mut parts = pattern.split('*');
    let first = parts.next().unwrap_or_default();
    let Some(mut rest) = text.strip_prefix(first) else {
        return false;
    };
    let parts: Vec<&str> = parts.collect();
    let Some((last, middle)) = parts.split_last() else {
        return rest.is_empty();
    };
    for part in middle {
        match rest.find(part) {
            Some(at) => rest = &rest[at + part.len()..],
            None => return false,
        }
    }
    rest.len() >= last.len() && rest.ends_with(last)
}

mod defaults {
    use std::time::Duration;

    pub fn timeout() -> Duration {
        Duration::from_secs(10)
    }

    pub fn max_in_flight() -> usize {
        16
    }

    pub fn event_types() -> Vec<String> {
        vec!["*".to_owned()]
    }

    pub fn canary_min_events() -> u32 {
        200
    }

    pub fn canary_margin() -> f64 {
        2.0
    }
}

/// The kinds of catalog resources.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    /// A [`Source`].
    Source,
    /// A [`Provider`].
    Provider,
    /// A [`Mapping`] version.
    Mapping,
    /// A [`Route`].
    Route,
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Source => "source",
            Self::Provider => "provider",
            Self::Mapping => "mapping",
            Self::Route => "route",
        })
    }
}

/// One thing wrong with a catalog, at a path such as `routes[2].mapping`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    /// Where the problem is.
    pub path: String,
    /// What is wrong.
    pub message: String,
}

/// Everything wrong with a catalog; never empty.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ValidationErrors(pub Vec<FieldError>);

impl fmt::Display for ValidationErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, error) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{}: {}", error.path, error.message)?;
        }
        Ok(())
    }
}

impl ValidationErrors {
    fn single(path: impl Into<String>, message: impl Into<String>) -> Self {
        Self(vec![FieldError {
            path: path.into(),
            message: message.into(),
        }])
    }
}

impl Catalog {
    /// Parses a YAML (or JSON, which is YAML) catalog document and validates it.
    pub fn from_yaml(text: &str) -> Result<Self, ValidationErrors> {
        let catalog = Self::parse_yaml(text)?;
        catalog.validate()?;
        Ok(catalog)
    }

    /// Parses a YAML document without validating references, for bundles that are
    /// merged into an existing catalog before validation.
    pub fn parse_yaml(text: &str) -> Result<Self, ValidationErrors> {
        if text.trim().is_empty() {
            return Ok(Self::default());
        }
        serde_yaml_ng::from_str(text).map_err(|err| {
            let path = err
                .location()
                .map(|at| format!("line {} column {}", at.line(), at.column()))
                .unwrap_or_else(|| "document".to_owned());
            ValidationErrors::single(path, validate::strip_location(&err.to_string()))
        })
    }

    /// The source named `name`.
    pub fn source(&self, name: &str) -> Option<&Source> {
        self.sources.iter().find(|source| source.name == name)
    }

    /// The provider named `name`.
    pub fn provider(&self, name: &str) -> Option<&Provider> {
        self.providers.iter().find(|provider| provider.name == name)
    }

    /// The mapping version `reference` points at.
    pub fn mapping(&self, reference: &MappingRef) -> Option<&Mapping> {
        self.mappings
            .iter()
            .find(|m| m.name == reference.name && m.version == reference.version)
    }

    /// The route named `name`.
    pub fn route(&self, name: &str) -> Option<&Route> {
        self.routes.iter().find(|route| route.name == name)
    }

    /// Serializes the catalog as YAML in the documented format.
    pub fn to_yaml(&self) -> String {
        serde_yaml_ng::to_string(self).expect("a catalog always serializes")
    }
}

/// Whether `event_type` matches one of `patterns` (globs where `*` is any run).
pub fn matches_any(patterns: &[String], event_type: &str) -> bool {
    patterns
        .iter()
        .any(|pattern| glob_match(pattern, event_type))
}

/// Characters allowed in an event type; dots separate NATS subject tokens.
pub fn is_event_type_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | ':')
}

#[cfg(test)]
mod tests;
