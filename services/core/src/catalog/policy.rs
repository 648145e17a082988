//! How a provider is called: authentication, rate limit, retries and circuit breaker.
//!
//! These are catalog types; the delivery service gives them behaviour. Defaults follow
//! common practice: the Standard Webhooks retry schedule, and a breaker that opens after
//! five consecutive failures or half of at least twenty requests in a minute.

use std::{fmt, str::FromStr, time::Duration};

use serde::{Deserialize, Serialize};

/// A secret referenced by name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecretName {
    /// Name of the environment variable or file holding the secret.
    pub secret: String,
}

/// TLS of outgoing requests: a client certificate for mutual TLS, and trust roots
/// beyond the public ones. Each is a secret holding PEM text.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientTls {
    /// The client certificate chain presented to the server (with `client_key`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_cert: Option<SecretName>,
    /// The private key of `client_cert`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_key: Option<SecretName>,
    /// CA certificates trusted in addition to the public roots.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca: Option<SecretName>,
}

impl ClientTls {
    /// Reports a certificate without its key (or the reverse) and bad secret names.
    pub(super) fn validate(&self, at: &str, fail: &mut impl FnMut(String, String)) {
        match (&self.client_cert, &self.client_key) {
            (Some(_), None) => fail(
                format!("{at}.client_key"),
                "is needed with client_cert".into(),
            ),
            (None, Some(_)) => fail(
                format!("{at}.client_cert"),
                "is needed with client_key".into(),
            ),
            _ => {}
        }
        for (field, name) in [
            ("client_cert", &self.client_cert),
            ("client_key", &self.client_key),
            ("ca", &self.ca),
        ] {
            if let Some(name) = name
                && !crate::secrets::is_valid_name(&name.secret)
            {
                fail(
                    format!("{at}.{field}.secret"),
                    format!(
                        "{:?} is not a valid secret name (letters, digits, '_', '-', '.')",
                        name.secret
                    ),
                );
            }
        }
    }
}

/// How each request proves who sends it. Written as a map with exactly one key,
/// e.g. `auth: { bearer: { secret: CRM_TOKEN } }`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "AuthForms", into = "AuthForms")]
pub enum Auth {
    /// `Authorization: Bearer <secret>`.
    Bearer(SecretName),
    /// `Authorization: Basic base64(username:password)`.
    Basic {
        /// The user name (not secret).
        username: String,
        /// The password.
        password: SecretName,
    },
    /// An API key in a header of the provider's choosing.
    ApiKey {
        /// Header name, e.g. `X-Api-Key`.
        header: String,
        /// Name of the secret holding the key.
        secret: String,
        /// Text before the key, e.g. `"Token "`.
        prefix: String,
    },
    /// OAuth 2.0 client credentials: a token fetched from `token_url`, cached until
    /// shortly before it expires, and refreshed once when the provider answers 401.
    Oauth2(OAuth2),
    /// Standard Webhooks signatures (`webhook-id`, `webhook-timestamp`,
    /// `webhook-signature`), one per secret so a secret can be rotated.
    StandardWebhooks {
        /// Names of `whsec_…` secrets; every one signs each request.
        secrets: Vec<String>,
    },
}

impl Auth {
    /// The names (never the values) of the secrets its requests carry.
    pub fn secret_names(&self) -> Vec<&str> {
        match self {
            Self::Bearer(name) => vec![name.secret.as_str()],
            Self::Basic { password, .. } => vec![password.secret.as_str()],
            Self::ApiKey { secret, .. } => vec![secret.as_str()],
            Self::Oauth2(oauth) => vec![oauth.client_secret.secret.as_str()],
            Self::StandardWebhooks { secrets } => secrets.iter().map(String::as_str).collect(),
        }
    }
}

/// The written form of [`Auth`]: one key per kind, exactly one present.
#[derive(Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct AuthForms {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    bearer: Option<SecretName>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    basic: Option<BasicForm>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    api_key: Option<ApiKeyForm>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    oauth2: Option<OAuth2>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    standard_webhooks: Option<WebhooksForm>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct BasicForm {
    username: String,
    password: SecretName,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct ApiKeyForm {
    header: String,
    secret: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    prefix: String,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct WebhooksForm {
    secrets: Vec<String>,
}

impl TryFrom<AuthForms> for Auth {
    type Error = String;

    fn try_from(forms: AuthForms) -> Result<Self, Self::Error> {
        let mut found = Vec::new();
        if let Some(name) = forms.bearer {
            found.push(Auth::Bearer(name));
        }
        if let Some(BasicForm { username, password }) = forms.basic {
            found.push(Auth::Basic { username, password });
        }
        if let Some(ApiKeyForm {
            header,
            secret,
            prefix,
        }) = forms.api_key
        {
            found.push(Auth::ApiKey {
                header,
                secret,
                prefix,
            });
        }
        if let Some(oauth) = forms.oauth2 {
            found.push(Auth::Oauth2(oauth));
        }
        if let Some(WebhooksForm { secrets }) = forms.standard_webhooks {
            found.push(Auth::StandardWebhooks { secrets });
        }
        match found.len() {
            1 => Ok(found.remove(0)),
            0 => Err("auth needs one of bearer, basic, api_key, oauth2, standard_webhooks".into()),
            _ => Err(
                "auth takes exactly one of bearer, basic, api_key, oauth2, standard_webhooks"
                    .into(),
            ),
        }
    }
}

impl From<Auth> for AuthForms {
    fn from(auth: Auth) -> Self {
        let mut forms = AuthForms::default();
        match auth {
            Auth::Bearer(name) => forms.bearer = Some(name),
            Auth::Basic { username, password } => {
                forms.basic = Some(BasicForm { username, password })
            }
            Auth::ApiKey {
                header,
                secret,
                prefix,
            } => {
                forms.api_key = Some(ApiKeyForm {
                    header,
                    secret,
                    prefix,
                });
            }
            Auth::Oauth2(oauth) => forms.oauth2 = Some(oauth),
            Auth::StandardWebhooks { secrets } => {
                forms.standard_webhooks = Some(WebhooksForm { secrets });
            }
        }
        forms
    }
}

/// OAuth 2.0 client credentials settings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OAuth2 {
    /// The token endpoint.
    pub token_url: String,
    /// The client id (not secret).
    pub client_id: String,
    /// The client secret.
    pub client_secret: SecretName,
    /// Scopes requested, joined with spaces.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub scopes: Vec<String>,
    /// Optional `audience` parameter some identity providers require.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub audience: String,
}

/// A token bucket: `requests` per `per` on average, up to `burst` at once.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimit {
    /// Requests allowed per period.
    pub requests: u32,
    /// The period.
    #[serde(default = "one_second", with = "humantime_serde")]
    pub per: Duration,
    /// Requests that may be sent at once after a quiet spell (at least 1).
    #[serde(default = "one")]
    pub burst: u32,
}

impl RateLimit {
    /// Requests per second on average.
    pub fn per_second(&self) -> f64 {
        f64::from(self.requests) / self.per.as_secs_f64()
    }
}

fn one_second() -> Duration {
    Duration::from_secs(1)
}

fn one() -> u32 {
    1
}

/// What happens after a retryable failure.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetryPolicy {
    /// Delays before the 2nd, 3rd, … attempt. Default: the Standard Webhooks schedule
    /// (5s, 5m, 30m, 2h, 5h, 10h, 14h, 20h, 24h after an immediate first attempt).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub schedule: Option<Vec<Delay>>,
    /// Exponential backoff with full jitter instead of a schedule.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub backoff: Option<Backoff>,
    /// Attempts in all, including the first. Default: one more than the schedule has
    /// delays, or 10 with `backoff`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_attempts: Option<u32>,
    /// Answers worth retrying, as codes (`409`) or classes (`5xx`). Timeouts and
    /// connection errors are always retried.
    pub retry_on: Vec<StatusMatch>,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            schedule: None,
            backoff: None,
            max_attempts: None,
            retry_on: ["408", "425", "429", "5xx"]
                .iter()
                .map(|text| text.parse().expect("valid defaults"))
                .collect(),
        }
    }
}

/// The Standard Webhooks retry schedule.
pub const STANDARD_WEBHOOKS_SCHEDULE: [u64; 9] = [
    5,
    5 * 60,
    30 * 60,
    2 * 3600,
    5 * 3600,
    10 * 3600,
    14 * 3600,
    20 * 3600,
    24 * 3600,
];

impl RetryPolicy {
    /// Attempts in all, including the first.
    pub fn attempts(&self) -> u32 {
        match (&self.max_attempts, &self.backoff) {
            (Some(n), _) => *n,
            (None, Some(_)) => 10,
            (None, None) => self.schedule_len() + 1,
        }
    }

    fn schedule_len(&self) -> u32 {
        self.schedule
            .as_ref()
            .map_or(STANDARD_WEBHOOKS_SCHEDULE.len(), Vec::len) as u32
    }

    /// Delay before the attempt after failed attempt `failed` (1-based). `jitter` is
    /// a number in `[0, 1)`; exponential backoff scales its delay by it (full jitter).
    pub fn delay_after(&self, failed: u32, jitter: f64) -> Duration {
        let n = failed.max(1) - 1;
        if let Some(backoff) = &self.backoff {
            let ceiling = backoff.initial.as_secs_f64() * backoff.factor.powi(n.min(64) as i32);
            let ceiling = ceiling.min(backoff.max.as_secs_f64());
            return Duration::from_secs_f64(ceiling * jitter.clamp(0.0, 1.0));
        }
        match &self.schedule {
            Some(schedule) => schedule
                .get(n as usize)
                .or(schedule.last())
                .map_or(Duration::ZERO, |delay| delay.0),
            None => {
                let i = (n as usize).min(STANDARD_WEBHOOKS_SCHEDULE.len() - 1);
                Duration::from_secs(STANDARD_WEBHOOKS_SCHEDULE[i])
            }
        }
    }

    /// Whether an answer with `status` is worth retrying.
    pub fn retries_status(&self, status: u16) -> bool {
        self.retry_on.iter().any(|m| m.matches(status))
    }
}

/// Exponential backoff: `initial × factor^(n-1)`, capped at `max`, times a random
/// factor in `[0, 1)` (full jitter).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Backoff {
    /// Ceiling of the first delay.
    #[serde(with = "humantime_serde")]
    pub initial: Duration,
    /// Growth per attempt (at least 1).
    #[serde(default = "two")]
    pub factor: f64,
    /// Ceiling of any delay.
    #[serde(with = "humantime_serde")]
    pub max: Duration,
}

fn two() -> f64 {
    2.0
}

/// A duration written as text (`5s`, `30m`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Delay(#[serde(with = "humantime_serde")] pub Duration);

/// An HTTP status code or class (`5xx`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "StatusText", into = "StatusText")]
pub enum StatusMatch {
    /// Exactly this code.
    Code(u16),
    /// Every code of this hundred (`5` for `5xx`).
    Class(u16),
}

impl StatusMatch {
    /// Whether `status` is matched.
    pub fn matches(self, status: u16) -> bool {
        match self {
            Self::Code(code) => code == status,
            Self::Class(class) => status / 100 == class,
        }
    }
}

impl FromStr for StatusMatch {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let bad = || format!("{text:?} is not a status code (409) or class (5xx)");
        if let Some(class) = text.strip_suffix("xx") {
            let class: u16 = class.parse().map_err(|_| bad())?;
            return (1..=5)
                .contains(&class)
                .then_some(Self::Class(class))
                .ok_or_else(bad);
        }
        let code: u16 = text.parse().map_err(|_| bad())?;
        (100..=599)
            .contains(&code)
            .then_some(Self::Code(code))
            .ok_or_else(bad)
    }
}

impl fmt::Display for StatusMatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Code(code) => write!(f, "{code}"),
            Self::Class(class) => write!(f, "{class}xx"),
        }
    }
}

/// How a status is written in YAML: a number or a string.
#[derive(Serialize, Deserialize)]
#[serde(untagged)]
enum StatusText {
    Number(u16),
    Text(String),
}

impl TryFrom<StatusText> for StatusMatch {
    type Error = String;

    fn try_from(text: StatusText) -> Result<Self, Self::Error> {
        match text {
            StatusText::Number(code) => code.to_string().parse(),
            StatusText::Text(text) => text.parse(),
        }
    }
}

impl From<StatusMatch> for StatusText {
    fn from(status: StatusMatch) -> Self {
        match status {
            StatusMatch::Code(code) => Self::Number(code),
            class => Self::Text(class.to_string()),
        }
    }
}

/// When the circuit breaker opens and how long it stays open.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BreakerPolicy {
    /// Opens after this many failures in a row.
    pub consecutive_failures: u32,
    /// Opens when at least this share of the requests in `window` failed…
    pub failure_ratio: f64,
    /// …and there were at least this many of them.
    pub min_requests: u32,
    /// The rolling window of the failure ratio.
    #[serde(with = "humantime_serde")]
    pub window: Duration,
    /// How long it stays open before one probe is let through; doubles each time the
    /// probe fails, up to `max_cool_down`.
    #[serde(with = "humantime_serde")]
    pub cool_down: Duration,
    /// Upper bound of the cool-down.
    #[serde(with = "humantime_serde")]
    pub max_cool_down: Duration,
}

impl Default for BreakerPolicy {
    fn default() -> Self {
        Self {
            consecutive_failures: 5,
            failure_ratio: 0.5,
            min_requests: 20,
            window: Duration::from_secs(60),
            cool_down: Duration::from_secs(30),
            max_cool_down: Duration::from_secs(600),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_schedule_is_standard_webhooks() {
        let retry = RetryPolicy::default();
        assert_eq!(retry.attempts(), 10);
        assert_eq!(retry.delay_after(1, 0.5), Duration::from_secs(5));
        assert_eq!(retry.delay_after(2, 0.5), Duration::from_secs(300));
        assert_eq!(retry.delay_after(9, 0.5), Duration::from_secs(24 * 3600));
        assert_eq!(retry.delay_after(20, 0.5), Duration::from_secs(24 * 3600));
    }

    #[test]
    fn exponential_backoff_has_full_jitter_and_a_cap() {
        let retry = RetryPolicy {
            backoff: Some(Backoff {
                initial: Duration::from_secs(1),
                factor: 2.0,
                max: Duration::from_secs(60),
            }),
            ..Default::default()
        };
        assert_eq!(retry.attempts(), 10);
        assert_eq!(
            retry.delay_after(3, 0.999_999),
            Duration::from_secs_f64(4.0 * 0.999_999)
        );
        assert_eq!(retry.delay_after(3, 0.0), Duration::ZERO);
        assert_eq!(retry.delay_after(30, 0.5), Duration::from_secs(30));
    }

    #[test]
    fn statuses_parse_as_codes_and_classes() {
        let retry: RetryPolicy = serde_yaml_ng::from_str("retry_on: [409, 5xx, \"425\"]").unwrap();
        assert!(
            retry.retries_status(409) && retry.retries_status(503) && retry.retries_status(425)
        );
        assert!(!retry.retries_status(429) && !retry.retries_status(404));
        assert!("6xx".parse::<StatusMatch>().is_err());
        assert!("abc".parse::<StatusMatch>().is_err());
        assert!(serde_yaml_ng::from_str::<RetryPolicy>("retry_on: [700]").is_err());
    }

    #[test]
    fn auth_is_one_of_the_documented_forms() {
        let bearer: Auth = serde_yaml_ng::from_str("bearer: { secret: T }").unwrap();
        assert_eq!(bearer, Auth::Bearer(SecretName { secret: "T".into() }));
        let webhooks: Auth =
            serde_yaml_ng::from_str("standard_webhooks: { secrets: [A, B] }").unwrap();
        assert_eq!(
            webhooks,
            Auth::StandardWebhooks {
                secrets: vec!["A".into(), "B".into()]
            }
        );
        assert!(serde_yaml_ng::from_str::<Auth>("digest: {}").is_err());
        let two = serde_yaml_ng::from_str::<Auth>(
            "bearer: { secret: T }\nbasic: { username: u, password: { secret: P } }",
        );
        assert!(two.unwrap_err().to_string().contains("exactly one"));
        let json = serde_json::to_value(&webhooks).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"standard_webhooks": {"secrets": ["A", "B"]}})
        );
    }
}
