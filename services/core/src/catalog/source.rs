//! How a source sends events in: API keys, input contracts, its own rate limit, and
//! polling; signed webhooks are in `webhook`. The whole source is validated here.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{
    Auth, Cdc, ClientTls, Outbox, RateLimit,
    webhook::{Extract, Verify, Webhook},
};

/// A system that sends events in, over HTTP or NATS, or that ingest polls.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Source {
    /// Unique name; the `<source>` in `ingest.<source>.<type>` and the URLs.
    pub name: String,
    /// Free text for operators.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub description: String,
    /// API keys accepted on `/v1/events/<source>`, as `sha256:<hex>` of the key (the key
    /// itself is never stored). When empty, that endpoint takes no key.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub api_keys: Vec<String>,
    /// How `/webhooks/<source>` verifies and reads the provider's webhooks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub webhook: Option<Webhook>,
    /// Requests this source may make to each ingest replica; beyond it, 429.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<RateLimit>,
    /// JSON Schemas (draft 2020-12) the events must satisfy, by event type.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub schemas: Vec<SchemaRule>,
    /// What happens to an event that fails its schema.
    #[serde(default)]
    pub on_invalid: OnInvalid,
    /// Fetch events from an HTTP API instead of waiting for them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub poll: Option<Poll>,
    /// Publish the events an application writes into an outbox table of its own
    /// PostgreSQL database.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outbox: Option<Outbox>,
    /// Turn every change of some tables of its PostgreSQL database into an event.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cdc: Option<Cdc>,
}

/// A contract for the events whose type matches `event_types`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SchemaRule {
    /// Event-type globs this schema applies to.
    pub event_types: Vec<String>,
    /// The JSON Schema, inline.
    pub schema: serde_json::Value,
}

/// What happens to an event that fails its schema.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnInvalid {
    /// Answer 422 listing the failing paths; nothing is stored.
    #[default]
    Reject,
    /// Accept it and store it on `dlq.source.<source>` with the failing paths.
    DeadLetter,
}

/// Pulling events from an HTTP API on an interval.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Poll {
    /// The endpoint (GET).
    pub url: String,
    /// Time between polls once a poll has read everything new.
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
    /// How long one request may take.
    #[serde(default = "ten_seconds", with = "humantime_serde")]
    pub timeout: Duration,
    /// How each request authenticates (as for providers).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth: Option<Auth>,
    /// Client certificate (mutual TLS) and extra trust roots, also for its OAuth2
    /// token endpoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<ClientTls>,
    /// JSON pointer to the array of items in the response; empty when the response is
    /// the array.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub items: String,
    /// JSON pointer to each item's id: its idempotency key.
    pub id: String,
    /// The event type of each item: fixed, or a JSON pointer into the item.
    pub event_type: Extract,
    /// How the next request continues where the last one ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cursor: Option<Cursor>,
    /// Send `If-None-Match` with the last `ETag`; a 304 means nothing new.
    #[serde(default)]
    pub etag: bool,
}

fn ten_seconds() -> Duration {
    Duration::from_secs(10)
}

/// A poll cursor: read from each response, sent back as a query parameter.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Cursor {
    /// Query parameter the cursor is sent in.
    pub param: String,
    /// A JSON pointer into the response, e.g. `/next_cursor`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub json: Option<String>,
    /// A VRL expression over the response, e.g. `.data[-1].id`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vrl: Option<String>,
    /// The cursor of the very first request, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initial: Option<String>,
}

/// Checks a source and reports every problem with its path.
pub(super) fn validate(source: &Source, at: &str, fail: &mut impl FnMut(String, String)) {
    for (i, key) in source.api_keys.iter().enumerate() {
        if crate::apikey::parse_hash(key).is_none() {
            fail(
                format!("{at}.api_keys[{i}]"),
                "must be sha256:<64 hex digits> of the key (e.g. printf %s KEY | sha256sum); keys are never stored in clear".into(),
            );
        }
    }
    if let Some(webhook) = &source.webhook {
        let path = format!("{at}.webhook");
        let secrets = webhook.verify.secrets();
        if secrets.is_empty() {
            fail(format!("{path}.verify"), "needs at least one secret".into());
        }
        for (i, name) in secrets.iter().enumerate() {
            if !crate::secrets::is_valid_name(name) {
                fail(
                    format!("{path}.verify.secrets[{i}]"),
                    format!("{name:?} is not a valid secret name"),
                );
            }
        }
        if let Verify::Hmac(hmac) = &webhook.verify {
            if !super::validate::is_header_name(&hmac.header) {
                fail(
                    format!("{path}.verify.hmac.header"),
                    format!("{:?} is not a header name", hmac.header),
                );
            }
            if let Some(header) = &hmac.timestamp_header
                && !super::validate::is_header_name(header)
            {
                fail(
                    format!("{path}.verify.hmac.timestamp_header"),
                    format!("{header:?} is not a header name"),
                );
            }
            if let Some(payload) = &hmac.payload {
                if !payload.contains("{body}") {
                    fail(
                        format!("{path}.verify.hmac.payload"),
                        "must contain {body}".into(),
                    );
                }
                if payload.contains("{timestamp}") && hmac.timestamp_header.is_none() {
                    fail(
                        format!("{path}.verify.hmac.payload"),
                        "uses {timestamp} but no timestamp_header is set".into(),
                    );
                }
            }
        }
        for (field, extract) in [
            ("event_type", &webhook.event_type),
            ("idempotency_key", &webhook.idempotency_key),
        ] {
            if let Some(extract) = extract {
                validate_extract(extract, &format!("{path}.{field}"), fail);
            }
        }
    }
    if let Some(limit) = &source.rate_limit
        && (limit.requests == 0 || limit.per.is_zero() || limit.burst == 0)
    {
        fail(
            format!("{at}.rate_limit"),
            "requests, per and burst must be more than 0".into(),
        );
    }
    for (i, rule) in source.schemas.iter().enumerate() {
        let path = format!("{at}.schemas[{i}]");
        if rule.event_types.is_empty() {
            fail(
                format!("{path}.event_types"),
                "needs at least one pattern".into(),
            );
        }
        if let Err(err) = crate::contract::Contract::compile(&rule.schema) {
            fail(format!("{path}.schema"), err);
        }
    }
    if let Some(outbox) = &source.outbox {
        outbox.validate(&format!("{at}.outbox"), fail);
    }
    if let Some(cdc) = &source.cdc {
        cdc.validate(&format!("{at}.cdc"), fail);
    }
    let read = [
        ("poll", source.poll.is_some()),
        ("outbox", source.outbox.is_some()),
        ("cdc", source.cdc.is_some()),
    ];
    if read.iter().filter(|(_, set)| *set).count() > 1 {
        let (second, _) = read
            .iter()
            .filter(|(_, set)| *set)
            .nth(1)
            .expect("two are set");
        fail(
            format!("{at}.{second}"),
            "a source reads at most one of poll, outbox or cdc".into(),
        );
    }
    if let Some(poll) = &source.poll {
        let path = format!("{at}.poll");
        if !matches!(url::Url::parse(&poll.url), Ok(url) if matches!(url.scheme(), "http" | "https"))
        {
            fail(
                format!("{path}.url"),
                format!("{:?} is not an http(s) URL", poll.url),
            );
        }
        if poll.interval < Duration::from_secs(1) {
            fail(format!("{path}.interval"), "must be at least 1s".into());
        }
        if let Some(tls) = &poll.tls {
            tls.validate(&format!("{path}.tls"), fail);
        }
        if poll.timeout.is_zero() {
            fail(format!("{path}.timeout"), "must be longer than 0s".into());
        }
        for (field, pointer) in [("items", &poll.items), ("id", &poll.id)] {
            if !is_pointer(pointer) || (field == "id" && pointer.is_empty()) {
                fail(
                    format!("{path}.{field}"),
                    format!("{pointer:?} is not a JSON pointer such as /data"),
                );
            }
        }
        validate_extract(&poll.event_type, &format!("{path}.event_type"), fail);
        if poll.event_type.header.is_some() {
            fail(
                format!("{path}.event_type"),
                "takes json (a pointer into the item) or value".into(),
            );
        }
        if let Some(cursor) = &poll.cursor {
            let cpath = format!("{path}.cursor");
            if cursor.param.is_empty() {
                fail(
                    format!("{cpath}.param"),
                    "must name a query parameter".into(),
                );
            }
            match (&cursor.json, &cursor.vrl) {
                (Some(pointer), None) if !is_pointer(pointer) => {
                    fail(
                        format!("{cpath}.json"),
                        format!("{pointer:?} is not a JSON pointer"),
                    );
                }
                (None, Some(program)) => {
                    if let Err(err) = crate::mapping::Program::compile(program) {
                        fail(format!("{cpath}.vrl"), err.to_string());
                    }
                }
                (Some(_), None) => {}
                _ => fail(cpath, "give exactly one of json or vrl".into()),
            }
        }
    }
}

fn validate_extract(extract: &Extract, path: &str, fail: &mut impl FnMut(String, String)) {
    if extract.forms() != 1 {
        fail(
            path.to_owned(),
            "give exactly one of header, json or value".into(),
        );
    }
    if let Some(pointer) = &extract.json
        && !is_pointer(pointer)
    {
        fail(
            format!("{path}.json"),
            format!("{pointer:?} is not a JSON pointer such as /type"),
        );
    }
    if let Some(header) = &extract.header
        && !super::validate::is_header_name(header)
    {
        fail(
            format!("{path}.header"),
            format!("{header:?} is not a header name"),
        );
    }
}

fn is_pointer(pointer: &str) -> bool {
    pointer.is_empty() || pointer.starts_with('/')
}
