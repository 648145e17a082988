//! What the services tell each other about how an event fared: why an event was
//! dead-lettered ([`FailureCategory`], the `Switchyard-Failure-Category` header), what
//! one delivery attempt led to ([`Outcome`]) and what kind of error it met
//! ([`ErrorKind`]), and the records on `outcome.<provider>` ([`OutcomeRecord`]) that
//! delivery writes and control and the tests read.
//!
//! Every one of these crosses a process boundary as text, so each enum owns its
//! spelling: one `as_str` for headers and metric labels, the same names in serde and
//! in `FromStr`.

use std::{fmt, str::FromStr};

use serde::{Deserialize, Serialize};

/// Writes an enum's `Display`, `FromStr`, `Serialize` and `Deserialize` from its
/// `as_str` and `ALL`, so each name is spelled once.
macro_rules! named {
    ($name:ident, $what:literal) => {
        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl FromStr for $name {
            type Err = String;

            fn from_str(text: &str) -> Result<Self, String> {
                Self::ALL
                    .into_iter()
                    .find(|value| value.as_str() == text)
                    .ok_or_else(|| {
                        let names: Vec<_> = Self::ALL.iter().map(|v| v.as_str()).collect();
                        format!("{text:?} is not {}: one of {}", $what, names.join(", "))
                    })
            }
        }

        impl Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.serialize_str(self.as_str())
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                let text = String::deserialize(deserializer)?;
                text.parse().map_err(serde::de::Error::custom)
            }
        }
    };
}

/// Why an event was dead-lettered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FailureCategory {
    /// The provider refused the delivery (or the outbound guard blocked it); no retry
    /// can change that.
    Rejected,
    /// Every attempt of the retry policy failed.
    Exhausted,
    /// The mapping's program failed, or the body is not JSON.
    Mapping,
    /// The event or the mapping's output broke the mapping's JSON Schema.
    Contract,
    /// The route's filter failed to run.
    Filter,
    /// The event broke its source's JSON Schema (dead-lettered by ingest).
    Schema,
}

impl FailureCategory {
    /// Every category.
    pub const ALL: [Self; 6] = [
        Self::Rejected,
        Self::Exhausted,
        Self::Mapping,
        Self::Contract,
        Self::Filter,
        Self::Schema,
    ];

    /// The header value and name in records, metrics and the API.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Rejected => "rejected",
            Self::Exhausted => "exhausted",
            Self::Mapping => "mapping",
            Self::Contract => "contract",
            Self::Filter => "filter",
            Self::Schema => "schema",
        }
    }
}

named!(FailureCategory, "a dead-letter category");

/// What one delivery attempt led to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// The provider took it: recorded in the ledger and acked.
    Delivered,
    /// The provider asked for a pause: tried again later, no attempt counted.
    Deferred,
    /// It failed in a way a later attempt may fix: tried again after the policy's delay.
    Retry,
    /// The provider refused it: dead-lettered.
    Rejected,
    /// The last attempt failed: dead-lettered.
    Exhausted,
}

impl Outcome {
    /// Every outcome.
    pub const ALL: [Self; 5] = [
        Self::Delivered,
        Self::Deferred,
        Self::Retry,
        Self::Rejected,
        Self::Exhausted,
    ];

    /// The name in outcome records and the `outcome` metric label.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Delivered => "delivered",
            Self::Deferred => "deferred",
            Self::Retry => "retry",
            Self::Rejected => "rejected",
            Self::Exhausted => "exhausted",
        }
    }

    /// The dead-letter category this outcome files the event under, if it ends there.
    pub const fn dead_letter(self) -> Option<FailureCategory> {
        match self {
            Self::Rejected => Some(FailureCategory::Rejected),
            Self::Exhausted => Some(FailureCategory::Exhausted),
            Self::Delivered | Self::Deferred | Self::Retry => None,
        }
    }
}

named!(Outcome, "an attempt outcome");

/// What kind of error an attempt met, for metrics, spans and outcome records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// It succeeded.
    None,
    /// HTTP 429.
    Http429,
    /// Another 4xx.
    Http4xx,
    /// A 5xx.
    Http5xx,
    /// No answer in time.
    Timeout,
    /// The connection could not be made or broke.
    Connect,
    /// The TLS handshake failed.
    Tls,
    /// The outbound guard refused the address.
    Blocked,
    /// The request's credentials could not be obtained; nothing was sent.
    Credentials,
    /// Anything else.
    Other,
}

impl ErrorKind {
    /// Every kind.
    pub const ALL: [Self; 10] = [
        Self::None,
        Self::Http429,
        Self::Http4xx,
        Self::Http5xx,
        Self::Timeout,
        Self::Connect,
        Self::Tls,
        Self::Blocked,
        Self::Credentials,
        Self::Other,
    ];

    /// The `error` label and record field.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::Http429 => "http_429",
            Self::Http4xx => "http_4xx",
            Self::Http5xx => "http_5xx",
            Self::Timeout => "timeout",
            Self::Connect => "connect",
            Self::Tls => "tls",
            Self::Blocked => "blocked",
            Self::Credentials => "credentials",
            Self::Other => "other",
        }
    }
}

impl ErrorKind {
    /// The kind of an HTTP answer with `status`.
    pub const fn of_status(status: u16) -> Self {
        match status {
            200..=299 => Self::None,
            429 => Self::Http429,
            400..=499 => Self::Http4xx,
            500..=599 => Self::Http5xx,
            _ => Self::Other,
        }
    }
}

named!(ErrorKind, "an error kind");

/// What it takes to get a failed event through, for the person looking at it
/// ([`crate::verdict`] gives it with an explanation).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Verdict {
    /// The cause is passing (an outage, a timeout, a rate limit): trying again later
    /// gets it through, with nothing changed.
    RetryWillFix,
    /// The data or the provider's answer needs a person to look at it and decide.
    NeedsHuman,
    /// Something Switchyard is configured with (a mapping, a URL, a secret, the
    /// outbound guard) has to change first.
    NeedsConfig,
}

impl Verdict {
    /// Every verdict.
    pub const ALL: [Self; 3] = [Self::RetryWillFix, Self::NeedsHuman, Self::NeedsConfig];

    /// The name in the API, the CLI and the console.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::RetryWillFix => "retry_will_fix",
            Self::NeedsHuman => "needs_human",
            Self::NeedsConfig => "needs_config",
        }
    }
}

named!(Verdict, "a verdict");

/// One record on `outcome.<provider>`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OutcomeRecord {
    /// The provider.
    pub provider: String,
    /// When it happened (RFC 3339).
    pub at: String,
    /// What happened.
    #[serde(flatten)]
    pub record: Record,
}

/// What an outcome record is about, named by its `kind` field.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Record {
    /// One delivery attempt.
    Attempt(Attempt),
    /// A transition of the provider's circuit breaker.
    Breaker(BreakerChange),
    /// A route's canary mapping version stopped taking events, or was promoted.
    Canary(CanaryChange),
}

/// One delivery attempt.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Attempt {
    /// The event.
    pub event_id: String,
    /// The route that produced the delivery.
    pub route: String,
    /// Counted attempt number (deferrals are not counted).
    pub attempt: u32,
    /// HTTP status, when the provider answered.
    pub status: Option<u16>,
    /// Time to the answer.
    pub latency_ms: f64,
    /// What the attempt led to.
    pub category: Outcome,
    /// What kind of failure; absent when it succeeded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<ErrorKind>,
    /// Why it did not succeed.
    pub reason: Option<String>,
    /// The batch request that carried it, when the provider takes batches.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch: Option<String>,
    /// The mapping version that made the delivery, `name@version`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mapping: Option<String>,
}

/// A canary's change of state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CanaryChange {
    /// The route.
    pub route: String,
    /// The canary version, `name@version`.
    pub mapping: String,
    /// The state it entered (`rolled_back`, `promoted`).
    pub to: String,
    /// Why.
    pub reason: String,
}

/// A breaker transition.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BreakerChange {
    /// The state it left (`closed`, `open`, `half_open`).
    pub from: String,
    /// The state it entered.
    pub to: String,
    /// Why.
    pub reason: String,
}

impl OutcomeRecord {
    /// The record's JSON, as published.
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("outcome records serialize")
    }

    /// The attempt, if this record is one.
    pub fn attempt(&self) -> Option<&Attempt> {
        match &self.record {
            Record::Attempt(attempt) => Some(attempt),
            _ => None,
        }
    }

    /// The breaker change, if this record is one.
    pub fn breaker(&self) -> Option<&BreakerChange> {
        match &self.record {
            Record::Breaker(change) => Some(change),
            _ => None,
        }
    }

    /// The canary change, if this record is one.
    pub fn canary(&self) -> Option<&CanaryChange> {
        match &self.record {
            Record::Canary(change) => Some(change),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn names_round_trip_through_text_and_serde() {
        for category in FailureCategory::ALL {
            assert_eq!(category.as_str().parse::<FailureCategory>(), Ok(category));
            assert_eq!(serde_json::to_value(category).unwrap(), category.as_str());
        }
        for outcome in Outcome::ALL {
            assert_eq!(outcome.as_str().parse::<Outcome>(), Ok(outcome));
            assert_eq!(serde_json::to_value(outcome).unwrap(), outcome.as_str());
        }
        for kind in ErrorKind::ALL {
            assert_eq!(kind.as_str().parse::<ErrorKind>(), Ok(kind));
            assert_eq!(serde_json::to_value(kind).unwrap(), kind.as_str());
        }
        let err = "lost".parse::<FailureCategory>().unwrap_err();
        assert_eq!(
            err,
            "\"lost\" is not a dead-letter category: one of rejected, exhausted, mapping, contract, filter, schema"
        );
    }

    #[test]
    fn records_keep_their_wire_form() {
        let attempt = OutcomeRecord {
            provider: "crm".into(),
            at: "2026-12-01T10:00:00Z".into(),
            record: Record::Attempt(Attempt {
                event_id: "e-1".into(),
                route: "orders".into(),
                attempt: 2,
                status: Some(503),
                latency_ms: 12.5,
                category: Outcome::Retry,
                error: Some(ErrorKind::Http5xx),
                reason: Some("HTTP 503".into()),
                batch: None,
                mapping: None,
            }),
        };
        let wire = json!({
            "kind": "attempt", "provider": "crm", "at": "2026-12-01T10:00:00Z",
            "event_id": "e-1", "route": "orders", "attempt": 2, "status": 503,
            "latency_ms": 12.5, "category": "retry", "error": "http_5xx", "reason": "HTTP 503"
        });
        assert_eq!(serde_json::to_value(&attempt).unwrap(), wire);
        let read: OutcomeRecord = serde_json::from_value(wire).unwrap();
        assert_eq!(read, attempt);
        assert_eq!(read.attempt().unwrap().category, Outcome::Retry);

        let breaker: OutcomeRecord = serde_json::from_value(json!({
            "kind": "breaker", "provider": "crm", "at": "2026-12-01T10:00:00Z",
            "from": "closed", "to": "open", "reason": "5 failures"
        }))
        .unwrap();
        assert_eq!(breaker.breaker().unwrap().to, "open");
        assert!(breaker.attempt().is_none());
    }

    #[test]
    fn only_refusals_and_exhaustion_end_in_the_dead_letter_queue() {
        let filed: Vec<_> = Outcome::ALL
            .into_iter()
            .filter_map(Outcome::dead_letter)
            .collect();
        assert_eq!(
            filed,
            [FailureCategory::Rejected, FailureCategory::Exhausted]
        );
    }
}
