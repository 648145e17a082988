//! How a source sends events in: API keys, signed webhooks, input contracts, its own
//! rate limit, and polling.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{Auth, ClientTls, RateLimit};

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

/// Signed webhooks from a third party.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Webhook {
    /// How signatures are checked.
    pub verify: Verify,
    /// Where the event type is read; by default where the provider puts it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event_type: Option<Extract>,
    /// Where the idempotency key is read; by default the provider's delivery id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idempotency_key: Option<Extract>,
}

/// A value read from the request: a header, a JSON pointer into the body, or fixed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub struct Extract {
    /// A request header.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub header: Option<String>,
    /// A JSON pointer (RFC 6901) into the body, e.g. `/type`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub json: Option<String>,
    /// A fixed value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
}

impl Extract {
    /// A header.
    pub fn header(name: &str) -> Self {
        Self {
            header: Some(name.into()),
            json: None,
            value: None,
        }
    }

    /// A JSON pointer into the body.
    pub fn json(pointer: &str) -> Self {
        Self {
            header: None,
            json: Some(pointer.into()),
            value: None,
        }
    }

    fn forms(&self) -> usize {
        [
            self.header.is_some(),
            self.json.is_some(),
            self.value.is_some(),
        ]
        .iter()
        .filter(|set| **set)
        .count()
    }
}

/// How webhook signatures are checked. Every kind takes a list of secrets so a secret
/// can be rotated: a signature by any of them is accepted.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "VerifyForms", into = "VerifyForms")]
pub enum Verify {
    /// Standard Webhooks: `webhook-id`, `webhook-timestamp`, `webhook-signature`
    /// (`v1,<base64>`, several allowed), `whsec_` secrets.
    StandardWebhooks {
        /// Secret names.
        secrets: Vec<String>,
        /// Oldest accepted `webhook-timestamp`.
        tolerance: Duration,
    },
    /// Stripe: `Stripe-Signature: t=<ts>,v1=<hex>[,v1=…]`.
    Stripe {
        /// Secret names (`whsec_…` endpoint secrets).
        secrets: Vec<String>,
        /// Oldest accepted `t`.
        tolerance: Duration,
    },
    /// GitHub: `X-Hub-Signature-256: sha256=<hex>`.
    Github {
        /// Secret names.
        secrets: Vec<String>,
    },
    /// Shopify: `X-Shopify-Hmac-Sha256: <base64>`.
    Shopify {
        /// Secret names.
        secrets: Vec<String>,
    },
    /// Any HMAC scheme.
    Hmac(GenericHmac),
}

/// A generic HMAC signature scheme.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GenericHmac {
    /// Secret names.
    pub secrets: Vec<String>,
    /// Header carrying the signature.
    pub header: String,
    /// `sha256` or `sha512`.
    #[serde(default)]
    pub algorithm: HmacAlgorithm,
    /// `hex` or `base64`.
    #[serde(default)]
    pub encoding: SignatureEncoding,
    /// Text before the signature in the header, e.g. `sha256=`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub prefix: String,
    /// Header carrying a Unix timestamp that is signed too and checked for age.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timestamp_header: Option<String>,
    /// What is signed: `{body}` and `{timestamp}` are replaced. Default `{body}`, or
    /// `{timestamp}.{body}` with a timestamp header.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payload: Option<String>,
    /// Oldest accepted timestamp.
    #[serde(default = "five_minutes", with = "humantime_serde")]
    pub tolerance: Duration,
}

/// HMAC hash functions.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HmacAlgorithm {
    /// HMAC-SHA256.
    #[default]
    Sha256,
    /// HMAC-SHA512.
    Sha512,
}

/// How a signature is written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SignatureEncoding {
    /// Lowercase or uppercase hexadecimal.
    #[default]
    Hex,
    /// Standard base64.
    Base64,
}

fn five_minutes() -> Duration {
    Duration::from_secs(300)
}

#[derive(Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct VerifyForms {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    standard_webhooks: Option<TimedSecrets>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    stripe: Option<TimedSecrets>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    github: Option<Secrets>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    shopify: Option<Secrets>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    hmac: Option<GenericHmac>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct TimedSecrets {
    secrets: Vec<String>,
    #[serde(default = "five_minutes", with = "humantime_serde")]
    tolerance: Duration,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Secrets {
    secrets: Vec<String>,
}

const VERIFY_KINDS: &str = "standard_webhooks, stripe, github, shopify, hmac";

impl TryFrom<VerifyForms> for Verify {
    type Error = String;

    fn try_from(forms: VerifyForms) -> Result<Self, Self::Error> {
        let mut found = Vec::new();
        if let Some(TimedSecrets { secrets, tolerance }) = forms.standard_webhooks {
            found.push(Verify::StandardWebhooks { secrets, tolerance });
        }
        if let Some(TimedSecrets { secrets, tolerance }) = forms.stripe {
            found.push(Verify::Stripe { secrets, tolerance });
        }
        if let Some(Secrets { secrets }) = forms.github {
            found.push(Verify::Github { secrets });
        }
        if let Some(Secrets { secrets }) = forms.shopify {
            found.push(Verify::Shopify { secrets });
        }
        if let Some(hmac) = forms.hmac {
            found.push(Verify::Hmac(hmac));
        }
        match found.len() {
            1 => Ok(found.remove(0)),
            0 => Err(format!("verify needs one of {VERIFY_KINDS}")),
            _ => Err(format!("verify takes exactly one of {VERIFY_KINDS}")),
        }
    }
}

impl From<Verify> for VerifyForms {
    fn from(verify: Verify) -> Self {
        let mut forms = VerifyForms::default();
        match verify {
            Verify::StandardWebhooks { secrets, tolerance } => {
                forms.standard_webhooks = Some(TimedSecrets { secrets, tolerance });
            }
            Verify::Stripe { secrets, tolerance } => {
                forms.stripe = Some(TimedSecrets { secrets, tolerance })
            }
            Verify::Github { secrets } => forms.github = Some(Secrets { secrets }),
            Verify::Shopify { secrets } => forms.shopify = Some(Secrets { secrets }),
            Verify::Hmac(hmac) => forms.hmac = Some(hmac),
        }
        forms
    }
}

impl Verify {
    /// The secrets this verifier uses.
    pub fn secrets(&self) -> &[String] {
        match self {
            Self::StandardWebhooks { secrets, .. }
            | Self::Stripe { secrets, .. }
            | Self::Github { secrets }
            | Self::Shopify { secrets } => secrets,
            Self::Hmac(hmac) => &hmac.secrets,
        }
    }

    /// Where this kind of webhook carries its event type, unless configured.
    pub fn default_event_type(&self) -> Option<Extract> {
        match self {
            Self::StandardWebhooks { .. } | Self::Stripe { .. } => Some(Extract::json("/type")),
            Self::Github { .. } => Some(Extract::header("X-GitHub-Event")),
            Self::Shopify { .. } => Some(Extract::header("X-Shopify-Topic")),
            Self::Hmac(_) => None,
        }
    }

    /// Where this kind of webhook carries its delivery id, unless configured.
    pub fn default_idempotency_key(&self) -> Extract {
        match self {
            Self::StandardWebhooks { .. } => Extract::header("webhook-id"),
            Self::Stripe { .. } => Extract::json("/id"),
            Self::Github { .. } => Extract::header("X-GitHub-Delivery"),
            Self::Shopify { .. } => Extract::header("X-Shopify-Webhook-Id"),
            Self::Hmac(_) => Extract::header("Idempotency-Key"),
        }
    }
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
            if !super::is_header_name(&hmac.header) {
                fail(
                    format!("{path}.verify.hmac.header"),
                    format!("{:?} is not a header name", hmac.header),
                );
            }
            if let Some(header) = &hmac.timestamp_header
                && !super::is_header_name(header)
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
        && !super::is_header_name(header)
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
