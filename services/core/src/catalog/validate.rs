//! Validation of a whole catalog: every error at once, each at its path (such as
//! `routes[2].mapping`), so a bad change is refused at apply time and never found
//! per event.

use std::collections::BTreeMap;

use super::{
    Auth, CanaryBy, Catalog, FieldError, HeaderValue, Provider, ValidationErrors,
    is_event_type_char, source,
};
use crate::mapping;

impl Catalog {
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
            if let Some(canary) = &route.canary {
                let at = format!("{at}.canary");
                if canary.mapping == route.mapping {
                    fail(
                        format!("{at}.mapping"),
                        format!(
                            "{} is the route's own mapping; a canary tries another version",
                            canary.mapping
                        ),
                    );
                } else if self.mapping(&canary.mapping).is_none() {
                    fail(
                        format!("{at}.mapping"),
                        format!("no mapping {} is published", canary.mapping),
                    );
                }
                if !(1..=50).contains(&canary.percent) {
                    fail(
                        format!("{at}.percent"),
                        format!("{} is outside 1–50", canary.percent),
                    );
                }
                if canary.by == CanaryBy::OrderingKey && route.ordering_key.is_none() {
                    fail(
                        format!("{at}.by"),
                        "ordering_key needs the route's ordering_key".into(),
                    );
                }
                if canary.min_events == 0 {
                    fail(format!("{at}.min_events"), "must be at least 1".into());
                }
                if !(canary.margin.is_finite() && (0.0..=100.0).contains(&canary.margin)) {
                    fail(
                        format!("{at}.margin"),
                        format!("{} is not between 0 and 100 points", canary.margin),
                    );
                }
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

    pub(super) fn check_unique_names(&self, fail: &mut impl FnMut(String, String)) {
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
    validate_batch(provider, at, fail);
}

fn validate_batch(provider: &Provider, at: &str, fail: &mut impl FnMut(String, String)) {
    let Some(batch) = &provider.batch else {
        for (field, set) in [
            ("batch_program", provider.batch_program.is_some()),
            ("batch_results", provider.batch_results.is_some()),
        ] {
            if set {
                fail(
                    format!("{at}.{field}"),
                    "needs `batch` (the provider sends one event per request)".into(),
                );
            }
        }
        return;
    };
    if !(1..=super::MAX_BATCH_EVENTS).contains(&batch.max_events) {
        fail(
            format!("{at}.batch.max_events"),
            format!("must be 1-{}", super::MAX_BATCH_EVENTS),
        );
    }
    if !(1024..=super::MAX_BATCH_BYTES).contains(&batch.max_bytes.0) {
        fail(
            format!("{at}.batch.max_bytes"),
            format!("must be 1KiB-{}", super::ByteSize(super::MAX_BATCH_BYTES)),
        );
    }
    if batch.max_wait.is_zero() || batch.max_wait > super::MAX_BATCH_WAIT {
        fail(
            format!("{at}.batch.max_wait"),
            format!(
                "must be longer than 0s and at most {}s",
                super::MAX_BATCH_WAIT.as_secs()
            ),
        );
    }
    if provider.batch_program.is_some() && batch.format == super::BatchFormat::Ndjson {
        fail(
            format!("{at}.batch_program"),
            "builds one JSON body, so it cannot be used with format ndjson; use json_array".into(),
        );
    }
    for (field, program) in [
        ("batch_program", &provider.batch_program),
        ("batch_results", &provider.batch_results),
    ] {
        if let Some(program) = program
            && let Err(err) = mapping::Program::compile(program)
        {
            fail(format!("{at}.{field}"), err.to_string());
        }
    }
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

pub(super) fn is_header_name(name: &str) -> bool {
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

pub(super) fn strip_location(message: &str) -> String {
    match message.find(" at line ") {
        Some(at) => message[..at].to_owned(),
        None => message.to_owned(),
    }
}
