//! The catalog: sources, providers, mappings and routes.
//!
//! One document format (YAML or JSON) describes all four kinds; see
//! `deploy/examples/quickstart.yaml`. The whole catalog is validated as a unit —
//! names, references, URLs, durations and VRL programs — so a bad change is rejected
//! when it is applied, never discovered per event. Mappings are immutable once
//! published under `name@version`.

mod policy;
mod source;
mod store;

use std::{collections::BTreeMap, fmt, str::FromStr, time::Duration};

pub use policy::{
    Auth, Backoff, BreakerPolicy, ClientTls, Delay, OAuth2, RateLimit, RetryPolicy,
    STANDARD_WEBHOOKS_SCHEDULE, SecretName, StatusMatch,
};
use serde::{Deserialize, Serialize};
pub use source::{
    Cursor, Extract, GenericHmac, HmacAlgorithm, OnInvalid, Poll, SchemaRule, SignatureEncoding,
    Source, Verify,
};
pub use store::{BUCKET, CatalogStore, Snapshot};

use crate::mapping;

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

/// What applying a bundle does to one resource.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// The resource is new.
    Create,
    /// The resource exists and changes.
    Update,
    /// The resource is removed (apply with prune).
    Delete,
    /// The resource exists as given.
    Unchanged,
}

/// One line of an apply plan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    /// The resource's kind.
    pub kind: Kind,
    /// Its name (`name@version` for mappings).
    pub name: String,
    /// What happens to it.
    pub action: Action,
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
            ValidationErrors::single(path, strip_location(&err.to_string()))
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

    /// Checks every rule and returns all violations at once.
    pub fn validate(&self) -> Result<(), ValidationErrors> {
        let mut errors = Vec::new();
        let mut fail = |path: String, message: String| errors.push(FieldError { path, message });

        self.check_unique_names(&mut fail);

        for (i, source) in self.sources.iter().enumerate() {
            check_name(&source.name, &format!("sources[{i}].name"), &mut fail);
            source::validate(source, &format!("sources[{i}]"), &mut fail);
            for (j, rule) in source.schemas.iter().enumerate() {
                check_patterns(
                    &rule.event_types,
                    &format!("sources[{i}].schemas[{j}].event_types"),
                    &mut fail,
                );
            }
        }
        for (i, provider) in self.providers.iter().enumerate() {
            validate_provider(provider, &format!("providers[{i}]"), &mut fail);
        }
        for (i, m) in self.mappings.iter().enumerate() {
            let at = format!("mappings[{i}]");
            check_name(&m.name, &format!("{at}.name"), &mut fail);
            if m.version == 0 {
                fail(format!("{at}.version"), "versions start at 1".into());
            }
            if let Err(errors) = mapping::CompiledMapping::compile(m) {
                for error in errors {
                    fail(format!("{at}.{}", error.field), error.message);
                }
            }
        }
        for (i, route) in self.routes.iter().enumerate() {
            let at = format!("routes[{i}]");
            check_name(&route.name, &format!("{at}.name"), &mut fail);
            if self.source(&route.source).is_none() {
                fail(
                    format!("{at}.source"),
                    format!("no source named {:?}", route.source),
                );
            }
            if self.provider(&route.provider).is_none() {
                fail(
                    format!("{at}.provider"),
                    format!("no provider named {:?}", route.provider),
                );
            }
            if self.mapping(&route.mapping).is_none() {
                fail(
                    format!("{at}.mapping"),
                    format!(
                        "no mapping {} is published; a route pins a published version, and a version stays while a route pins it",
                        route.mapping
                    ),
                );
            }
            if let Some(key) = &route.ordering_key
                && let Err(err) = mapping::Program::compile(key)
            {
                fail(format!("{at}.ordering_key"), err.to_string());
            }
            if let Some(filter) = &route.filter
                && let Err(err) = mapping::Filter::compile(filter)
            {
                fail(format!("{at}.filter"), err.to_string());
            }
            if route.event_types.is_empty() {
                fail(
                    format!("{at}.event_types"),
                    "needs at least one pattern (\"*\" matches every type)".into(),
                );
            }
            check_patterns(&route.event_types, &format!("{at}.event_types"), &mut fail);
        }

        if errors.is_empty() {
            Ok(())
        } else {
            Err(ValidationErrors(errors))
        }
    }

    /// Merges `bundle` into this catalog (create or update by name; with `prune`, also
    /// delete what the bundle does not name), validates the result and returns it with
    /// the plan. Published mapping versions cannot be changed, only added or removed.
    pub fn apply(
        &self,
        bundle: &Catalog,
        prune: bool,
    ) -> Result<(Catalog, Vec<Change>), ValidationErrors> {
        let mut errors = Vec::new();
        for (i, m) in bundle.mappings.iter().enumerate() {
            if let Some(existing) = self.mapping(&m.reference())
                && !existing.same_version_as(m)
            {
                errors.push(FieldError {
                    path: format!("mappings[{i}]"),
                    message: format!(
                        "{} is already published with a different program or schema; mapping versions are immutable, publish version {} instead",
                        m.reference(),
                        self.next_mapping_version(&m.name)
                    ),
                });
            }
        }
        bundle.check_unique_names(&mut |path, message| errors.push(FieldError { path, message }));
        if !errors.is_empty() {
            return Err(ValidationErrors(errors));
        }

        let mut changes = Vec::new();
        let next = Catalog {
            sources: merge(
                &self.sources,
                &bundle.sources,
                prune,
                |s| s.name.clone(),
                Kind::Source,
                &mut changes,
            ),
            providers: merge(
                &self.providers,
                &bundle.providers,
                prune,
                |p| p.name.clone(),
                Kind::Provider,
                &mut changes,
            ),
            mappings: merge(
                &self.mappings,
                &bundle.mappings,
                prune,
                |m| m.reference().to_string(),
                Kind::Mapping,
                &mut changes,
            ),
            routes: merge(
                &self.routes,
                &bundle.routes,
                prune,
                |r| r.name.clone(),
                Kind::Route,
                &mut changes,
            ),
        };
        next.validate()?;
        Ok((next, changes))
    }

    fn check_unique_names(&self, fail: &mut impl FnMut(String, String)) {
        check_unique(self.sources.iter().map(|s| s.name.clone()), "sources", fail);
        check_unique(
            self.providers.iter().map(|p| p.name.clone()),
            "providers",
            fail,
        );
        check_unique(
            self.mappings.iter().map(|m| m.reference().to_string()),
            "mappings",
            fail,
        );
        check_unique(self.routes.iter().map(|r| r.name.clone()), "routes", fail);
    }

    /// This catalog without the resource `name` of `kind` (`name@version` for a
    /// mapping), validated: `Ok(None)` when there is no such resource, an error naming
    /// whatever still refers to it.
    pub fn without(&self, kind: Kind, name: &str) -> Result<Option<Catalog>, ValidationErrors> {
        let mut next = self.clone();
        let before = next.len();
        match kind {
            Kind::Source => next.sources.retain(|s| s.name != name),
            Kind::Provider => next.providers.retain(|p| p.name != name),
            Kind::Mapping => next.mappings.retain(|m| m.reference().to_string() != name),
            Kind::Route => next.routes.retain(|r| r.name != name),
        }
        if next.len() == before {
            return Ok(None);
        }
        next.validate()?;
        Ok(Some(next))
    }

    fn len(&self) -> usize {
        self.sources.len() + self.providers.len() + self.mappings.len() + self.routes.len()
    }

    /// The version number the next publication of mapping `name` should use.
    pub fn next_mapping_version(&self, name: &str) -> u32 {
        self.mappings
            .iter()
            .filter(|m| m.name == name)
            .map(|m| m.version)
            .max()
            .unwrap_or(0)
            + 1
    }

    /// Serializes the catalog as YAML in the documented format.
    pub fn to_yaml(&self) -> String {
        serde_yaml_ng::to_string(self).expect("a catalog always serializes")
    }
}

/// Merges `incoming` over `current` by key, recording what happens to each resource.
fn merge<T: Clone + PartialEq>(
    current: &[T],
    incoming: &[T],
    prune: bool,
    key: impl Fn(&T) -> String,
    kind: Kind,
    changes: &mut Vec<Change>,
) -> Vec<T> {
    let mut out = Vec::with_capacity(current.len() + incoming.len());
    for existing in current {
        let name = key(existing);
        match incoming.iter().find(|item| key(item) == name) {
            Some(item) => {
                let action = if item == existing {
                    Action::Unchanged
                } else {
                    Action::Update
                };
                changes.push(Change { kind, name, action });
                out.push(item.clone());
            }
            None if prune => changes.push(Change {
                kind,
                name,
                action: Action::Delete,
            }),
            None => out.push(existing.clone()),
        }
    }
    for item in incoming {
        let name = key(item);
        if !current.iter().any(|existing| key(existing) == name) {
            changes.push(Change {
                kind,
                name,
                action: Action::Create,
            });
            out.push(item.clone());
        }
    }
    out
}

fn validate_provider(provider: &Provider, at: &str, fail: &mut impl FnMut(String, String)) {
    check_name(&provider.name, &format!("{at}.name"), fail);
    match url::Url::parse(&provider.url) {
        Ok(url) if matches!(url.scheme(), "http" | "https") && url.host().is_some() => {}
        Ok(url) => fail(
            format!("{at}.url"),
            format!(
                "{:?} must be an http or https URL with a host (scheme is {:?})",
                provider.url,
                url.scheme()
            ),
        ),
        Err(err) => fail(
            format!("{at}.url"),
            format!("{:?} is not a URL: {err}", provider.url),
        ),
    }
    if provider.timeout.is_zero() {
        fail(format!("{at}.timeout"), "must be longer than 0s".into());
    }
    if provider.max_in_flight == 0 {
        fail(format!("{at}.max_in_flight"), "must be at least 1".into());
    }
    for (name, value) in &provider.headers {
        let path = format!("{at}.headers.{name}");
        if name.is_empty()
            || !name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
        {
            fail(path.clone(), "is not a valid HTTP header name".into());
        }
        match value {
            HeaderValue::Literal(text) if text.chars().any(char::is_control) => {
                fail(path, "must not contain control characters".into());
            }
            HeaderValue::Secret(secret) if !crate::secrets::is_valid_name(&secret.secret) => fail(
                format!("{path}.secret"),
                format!(
                    "{:?} is not a valid secret name (letters, digits, '_', '-', '.')",
                    secret.secret
                ),
            ),
            _ => {}
        }
    }
    if let Some(tls) = &provider.tls {
        tls.validate(&format!("{at}.tls"), fail);
    }
    validate_policies(provider, at, fail);
}

fn validate_policies(provider: &Provider, at: &str, fail: &mut impl FnMut(String, String)) {
    let retry = &provider.retry;
    if retry.schedule.is_some() && retry.backoff.is_some() {
        fail(
            format!("{at}.retry"),
            "give either schedule or backoff, not both".into(),
        );
    }
    if retry.max_attempts == Some(0) {
        fail(
            format!("{at}.retry.max_attempts"),
            "must be at least 1".into(),
        );
    }
    if retry.schedule.as_ref().is_some_and(Vec::is_empty) {
        fail(
            format!("{at}.retry.schedule"),
            "needs at least one delay".into(),
        );
    }
    if let Some(backoff) = &retry.backoff {
        if !(backoff.factor.is_finite() && backoff.factor >= 1.0) {
            fail(
                format!("{at}.retry.backoff.factor"),
                "must be a number of at least 1".into(),
            );
        }
        if backoff.initial.is_zero() || backoff.max < backoff.initial {
            fail(
                format!("{at}.retry.backoff"),
                "initial must be longer than 0s and max at least initial".into(),
            );
        }
    }
    if let Some(limit) = &provider.rate_limit {
        if limit.requests == 0 || limit.per.is_zero() {
            fail(
                format!("{at}.rate_limit"),
                "requests and per must be more than 0".into(),
            );
        }
        if limit.burst == 0 {
            fail(
                format!("{at}.rate_limit.burst"),
                "must be at least 1".into(),
            );
        }
    }
    let breaker = &provider.breaker;
    if breaker.consecutive_failures == 0 {
        fail(
            format!("{at}.breaker.consecutive_failures"),
            "must be at least 1".into(),
        );
    }
    if !(breaker.failure_ratio > 0.0 && breaker.failure_ratio <= 1.0) {
        fail(
            format!("{at}.breaker.failure_ratio"),
            "must be above 0 and at most 1".into(),
        );
    }
    if breaker.window.is_zero() || breaker.cool_down.is_zero() {
        fail(
            format!("{at}.breaker"),
            "window and cool_down must be longer than 0s".into(),
        );
    }
    if breaker.max_cool_down < breaker.cool_down {
        fail(
            format!("{at}.breaker.max_cool_down"),
            "must not be shorter than cool_down".into(),
        );
    }
    let secret = |path: String, name: &str, fail: &mut dyn FnMut(String, String)| {
        if !crate::secrets::is_valid_name(name) {
            fail(
                path,
                format!("{name:?} is not a valid secret name (letters, digits, '_', '-', '.')"),
            );
        }
    };
    let path = format!("{at}.auth");
    match &provider.auth {
        None => {}
        Some(Auth::Bearer(name)) => secret(format!("{path}.bearer.secret"), &name.secret, fail),
        Some(Auth::Basic { username, password }) => {
            if username.is_empty() || username.contains(':') {
                fail(
                    format!("{path}.basic.username"),
                    "must be non-empty without ':'".into(),
                );
            }
            secret(
                format!("{path}.basic.password.secret"),
                &password.secret,
                fail,
            );
        }
        Some(Auth::ApiKey {
            header,
            secret: name,
            ..
        }) => {
            if !is_header_name(header) {
                fail(
                    format!("{path}.api_key.header"),
                    format!("{header:?} is not a valid HTTP header name"),
                );
            }
            secret(format!("{path}.api_key.secret"), name, fail);
        }
        Some(Auth::Oauth2(oauth)) => {
            if !matches!(url::Url::parse(&oauth.token_url), Ok(url) if matches!(url.scheme(), "http" | "https"))
            {
                fail(
                    format!("{path}.oauth2.token_url"),
                    format!("{:?} is not an http(s) URL", oauth.token_url),
                );
            }
            if oauth.client_id.is_empty() {
                fail(
                    format!("{path}.oauth2.client_id"),
                    "must not be empty".into(),
                );
            }
            secret(
                format!("{path}.oauth2.client_secret.secret"),
                &oauth.client_secret.secret,
                fail,
            );
        }
        Some(Auth::StandardWebhooks { secrets }) => {
            if secrets.is_empty() {
                fail(
                    format!("{path}.standard_webhooks.secrets"),
                    "needs at least one secret".into(),
                );
            }
            for (i, name) in secrets.iter().enumerate() {
                secret(format!("{path}.standard_webhooks.secrets[{i}]"), name, fail);
            }
        }
    }
}

fn is_header_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// Names become NATS subject tokens and consumer names: keep them to a safe alphabet.
fn check_name(name: &str, path: &str, fail: &mut impl FnMut(String, String)) {
    let valid = !name.is_empty()
        && name.len() <= 64
        && name.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_');
    if !valid {
        fail(
            path.to_owned(),
            format!(
                "{name:?} must be 1-64 characters of a-z, 0-9, '-' and '_', starting with a letter or digit"
            ),
        );
    }
}

fn check_unique(
    names: impl Iterator<Item = String>,
    list: &str,
    fail: &mut impl FnMut(String, String),
) {
    let mut seen = BTreeMap::new();
    for (i, name) in names.enumerate() {
        if let Some(first) = seen.insert(name.clone(), i) {
            fail(
                format!("{list}[{i}]"),
                format!("{name:?} is also defined at {list}[{first}]"),
            );
        }
    }
}

fn check_patterns(patterns: &[String], at: &str, fail: &mut impl FnMut(String, String)) {
    for (j, pattern) in patterns.iter().enumerate() {
        if pattern.is_empty() || !pattern.chars().all(|c| is_event_type_char(c) || c == '*') {
            fail(
                format!("{at}[{j}]"),
                format!("{pattern:?} may use only letters, digits, '_', '-', '.', ':' and '*'"),
            );
        }
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

/// Checks an event type before it becomes part of a subject.
pub fn validate_event_type(event_type: &str) -> Result<(), String> {
    if event_type.is_empty() || event_type.len() > 128 {
        return Err("the event type must be 1-128 characters".into());
    }
    if !event_type.chars().all(is_event_type_char) {
        return Err(format!(
            "event type {event_type:?} may use only letters, digits, '_', '-', '.' and ':'"
        ));
    }
    if event_type.split('.').any(str::is_empty) {
        return Err(format!(
            "event type {event_type:?} has an empty segment between dots"
        ));
    }
    Ok(())
}

fn strip_location(message: &str) -> String {
    match message.find(" at line ") {
        Some(at) => message[..at].to_owned(),
        None => message.to_owned(),
    }
}

#[cfg(test)]
mod tests;
