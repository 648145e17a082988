//! Webhook signatures and API keys, checked on the raw body before it is parsed.
//!
//! Every comparison of secret material is constant-time (`Mac::verify_slice`,
//! `ConstantTimeEq`). A rejection names what is wrong — missing header, malformed
//! signature, stale timestamp, no matching signature — without echoing secrets.

use base64::{Engine, engine::general_purpose::STANDARD as BASE64};
use hmac::{Hmac, Mac};
use http::HeaderMap;
use secrecy::{ExposeSecret, SecretString};
use sha2::{Sha256, Sha512};
use switchyard_core::{
    apikey::{self, KeyHashes},
    auth,
    catalog::{GenericHmac, HmacAlgorithm, SignatureEncoding, Verify},
    secrets::SecretSource,
};

/// Why a request was not accepted as authentic (answered 401).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    /// A required header is absent.
    #[error("the {0} header is missing")]
    Missing(String),
    /// A header is present but cannot be read.
    #[error("the {0} header is malformed: {1}")]
    Malformed(String, String),
    /// The signed timestamp is outside the tolerance.
    #[error("the timestamp is {0}s away from now, beyond the {1}s tolerance")]
    Stale(i64, u64),
    /// No signature matches any secret.
    #[error("no signature matches")]
    Mismatch,
    /// The API key is missing or unknown.
    #[error("a valid API key is required (Authorization: Bearer <key> or X-Api-Key)")]
    ApiKey,
}

/// A source's webhook verifier, with its secrets read.
pub struct Verifier {
    scheme: Scheme,
    keys: Vec<Vec<u8>>,
}

enum Scheme {
    StandardWebhooks { tolerance: u64 },
    Stripe { tolerance: u64 },
    Github,
    Shopify,
    Hmac(GenericHmac),
}

impl Scheme {
    fn of(verify: &Verify) -> Self {
        match verify {
            Verify::StandardWebhooks { tolerance, .. } => Self::StandardWebhooks {
                tolerance: tolerance.as_secs(),
            },
            Verify::Stripe { tolerance, .. } => Self::Stripe {
                tolerance: tolerance.as_secs(),
            },
            Verify::Github { .. } => Self::Github,
            Verify::Shopify { .. } => Self::Shopify,
            Verify::Hmac(hmac) => Self::Hmac(hmac.clone()),
        }
    }
}

/// The key bytes of a secret under a scheme.
fn key_bytes(scheme: &Scheme, name: &str, secret: &SecretString) -> Result<Vec<u8>, String> {
    match scheme {
        Scheme::StandardWebhooks { .. } => auth::standard_webhooks_key(name, secret),
        // Stripe, GitHub, Shopify and generic HMAC use the secret text as the key.
        _ => Ok(secret.expose_secret().as_bytes().to_vec()),
    }
}

impl Verifier {
    /// Builds the verifier for `verify`, reading its secrets.
    pub fn new(verify: &Verify, secrets: &SecretSource) -> Result<Self, String> {
        let scheme = Scheme::of(verify);
        let mut keys = Vec::new();
        for name in verify.secrets() {
            let secret = secrets.read(name).map_err(|err| err.to_string())?;
            keys.push(key_bytes(&scheme, name, &secret)?);
        }
        Ok(Self { scheme, keys })
    }

    /// A verifier over literal keys, for tests.
    #[cfg(test)]
    fn with_keys(verify: &Verify, keys: Vec<Vec<u8>>) -> Self {
        Self {
            scheme: Scheme::of(verify),
            keys,
        }
    }

    /// Checks `body` as received with `headers` at Unix time `now`.
    pub fn verify(&self, headers: &HeaderMap, body: &[u8], now: i64) -> Result<(), Rejection> {
        match &self.scheme {
            Scheme::StandardWebhooks { tolerance } => {
                let id = header(headers, "webhook-id")?;
                let timestamp = timestamp(headers, "webhook-timestamp", now, *tolerance)?;
                let signatures: Vec<Vec<u8>> = header(headers, "webhook-signature")?
                    .split_whitespace()
                    .filter_map(|part| part.strip_prefix("v1,"))
                    .filter_map(|encoded| BASE64.decode(encoded).ok())
                    .collect();
                if signatures.is_empty() {
                    return Err(Rejection::Malformed(
                        "webhook-signature".into(),
                        "no v1 signature".into(),
                    ));
                }
                let signed = [format!("{id}.{timestamp}.").as_bytes(), body].concat();
                self.any_matches(HmacAlgorithm::Sha256, &signed, &signatures)
            }
            Scheme::Stripe { tolerance } => {
                let value = header(headers, "stripe-signature")?;
                let mut at = None;
                let mut signatures = Vec::new();
                for part in value.split(',') {
                    match part.trim().split_once('=') {
                        Some(("t", t)) => at = t.parse::<i64>().ok(),
                        Some(("v1", hex)) => signatures.extend(hex::decode(hex).ok()),
                        _ => {}
                    }
                }
                let Some(at) = at else {
                    return Err(Rejection::Malformed(
                        "Stripe-Signature".into(),
                        "no t= timestamp".into(),
                    ));
                };
                check_age(at, now, *tolerance)?;
                if signatures.is_empty() {
                    return Err(Rejection::Malformed(
                        "Stripe-Signature".into(),
                        "no v1 signature".into(),
                    ));
                }
                let signed = [format!("{at}.").as_bytes(), body].concat();
                self.any_matches(HmacAlgorithm::Sha256, &signed, &signatures)
            }
            Scheme::Github => {
                let value = header(headers, "x-hub-signature-256")?;
                let signature = value
                    .strip_prefix("sha256=")
                    .and_then(|hex| hex::decode(hex).ok())
                    .ok_or_else(|| {
                        Rejection::Malformed(
                            "X-Hub-Signature-256".into(),
                            "expected sha256=<hex>".into(),
                        )
                    })?;
                self.any_matches(HmacAlgorithm::Sha256, body, &[signature])
            }
            Scheme::Shopify => {
                let signature = BASE64
                    .decode(header(headers, "x-shopify-hmac-sha256")?.trim())
                    .map_err(|_| {
                        Rejection::Malformed("X-Shopify-Hmac-Sha256".into(), "not base64".into())
                    })?;
                self.any_matches(HmacAlgorithm::Sha256, body, &[signature])
            }
            Scheme::Hmac(hmac) => {
                let value = header(headers, &hmac.header)?;
                let encoded = value
                    .trim()
                    .strip_prefix(hmac.prefix.as_str())
                    .ok_or_else(|| {
                        Rejection::Malformed(
                            hmac.header.clone(),
                            format!("expected the prefix {:?}", hmac.prefix),
                        )
                    })?;
                let signature = match hmac.encoding {
                    SignatureEncoding::Hex => hex::decode(encoded).ok(),
                    SignatureEncoding::Base64 => BASE64.decode(encoded).ok(),
                }
                .ok_or_else(|| {
                    Rejection::Malformed(hmac.header.clone(), "cannot decode the signature".into())
                })?;
                let signed = match &hmac.timestamp_header {
                    Some(name) => {
                        let at = timestamp(headers, name, now, hmac.tolerance.as_secs())?;
                        let template = hmac.payload.as_deref().unwrap_or("{timestamp}.{body}");
                        fill(template, Some(at), body)
                    }
                    None => fill(hmac.payload.as_deref().unwrap_or("{body}"), None, body),
                };
                self.any_matches(hmac.algorithm, &signed, &[signature])
            }
        }
    }

    fn any_matches(
        &self,
        algorithm: HmacAlgorithm,
        signed: &[u8],
        signatures: &[Vec<u8>],
    ) -> Result<(), Rejection> {
        let matches = |key: &[u8], signature: &[u8]| match algorithm {
            HmacAlgorithm::Sha256 => {
                let mut mac =
                    Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes any key length");
                mac.update(signed);
                mac.verify_slice(signature).is_ok()
            }
            HmacAlgorithm::Sha512 => {
                let mut mac =
                    Hmac::<Sha512>::new_from_slice(key).expect("HMAC takes any key length");
                mac.update(signed);
                mac.verify_slice(signature).is_ok()
            }
        };
        let found = self
            .keys
            .iter()
            .any(|key| signatures.iter().any(|signature| matches(key, signature)));
        if found {
            Ok(())
        } else {
            Err(Rejection::Mismatch)
        }
    }
}

/// Replaces `{timestamp}` and `{body}` in a payload template (the body as raw bytes).
fn fill(template: &str, timestamp: Option<i64>, body: &[u8]) -> Vec<u8> {
    let with_time = match timestamp {
        Some(at) => template.replace("{timestamp}", &at.to_string()),
        None => template.to_owned(),
    };
    let (before, after) = with_time.split_once("{body}").unwrap_or((&with_time, ""));
    [before.as_bytes(), body, after.as_bytes()].concat()
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> Result<&'a str, Rejection> {
    let value = headers
        .get(name)
        .ok_or_else(|| Rejection::Missing(name.to_owned()))?;
    value
        .to_str()
        .map_err(|_| Rejection::Malformed(name.to_owned(), "not text".into()))
}

fn timestamp(headers: &HeaderMap, name: &str, now: i64, tolerance: u64) -> Result<i64, Rejection> {
    let at = header(headers, name)?
        .trim()
        .parse::<i64>()
        .map_err(|_| Rejection::Malformed(name.to_owned(), "not a Unix timestamp".into()))?;
    check_age(at, now, tolerance)?;
    Ok(at)
}

fn check_age(at: i64, now: i64, tolerance: u64) -> Result<(), Rejection> {
    let age = now.saturating_sub(at);
    if age.unsigned_abs() > tolerance {
        return Err(Rejection::Stale(age, tolerance));
    }
    Ok(())
}

/// The SHA-256 hashes of a source's API keys.
pub struct ApiKeys(KeyHashes<()>);

impl ApiKeys {
    /// Reads `sha256:<hex>` entries (validated when the catalog was applied).
    pub fn new(entries: &[String]) -> Self {
        Self(KeyHashes::new(entries.iter().map(|entry| (entry, ()))))
    }

    /// Whether requests must present a key.
    pub fn required(&self) -> bool {
        !self.0.is_empty()
    }

    /// Checks the key in `Authorization: Bearer <key>` or `X-Api-Key`.
    pub fn check(&self, headers: &HeaderMap) -> Result<(), Rejection> {
        let header = |name: &str| headers.get(name).and_then(|value| value.to_str().ok());
        let presented = apikey::presented(header("authorization"), header("x-api-key"))
            .ok_or(Rejection::ApiKey)?;
        self.0.find(presented).map(|_| ()).ok_or(Rejection::ApiKey)
    }
}

#[cfg(test)]
mod tests;
