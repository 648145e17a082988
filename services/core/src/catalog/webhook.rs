//! Signed webhooks: how a source's signature is checked (Standard Webhooks, Stripe,
//! GitHub, Shopify, or any HMAC scheme) and where an event's type and id are found.

use std::time::Duration;

use serde::{Deserialize, Serialize};

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

    pub(super) fn forms(&self) -> usize {
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
