//! How outgoing requests authenticate: to providers, and to the APIs that polling
//! sources read.
//!
//! Secrets are read by name when the provider's configuration is loaded and live only
//! in memory, marked sensitive so they never reach logs. OAuth2 tokens are fetched
//! with client credentials, cached until shortly before they expire, and dropped when
//! the provider answers 401 so the request is retried once with a fresh one. Standard
//! Webhooks signatures cover `webhook-id.webhook-timestamp.body`, once per secret, so
//! a receiver accepts either key while a secret is rotated.

use std::time::Duration;

use base64::{Engine, engine::general_purpose::STANDARD as BASE64};
use hmac::{Hmac, Mac};
use reqwest::header::{self, HeaderMap, HeaderName, HeaderValue};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use sha2::Sha256;
use tokio::{sync::Mutex, time::Instant};

use crate::{
    Error,
    catalog::{Auth, OAuth2},
    secrets::SecretSource,
};

/// Refresh a token this long before it expires (at half its life if it lives less
/// than twice this).
const TOKEN_MARGIN: Duration = Duration::from_secs(30);

/// A provider's (or polled API's) authentication, ready to apply.
pub enum Authenticator {
    /// Nothing to add.
    None,
    /// Fixed headers (bearer, basic, API key).
    Headers(HeaderMap),
    /// OAuth 2.0 client credentials.
    OAuth2(TokenSource),
    /// Standard Webhooks signing keys.
    StandardWebhooks(Vec<Vec<u8>>),
}

/// Why a request could not be authenticated; retryable, since a token endpoint that
/// fails now may answer later.
#[derive(Debug, thiserror::Error)]
#[error("authentication failed: {0}")]
pub struct AuthError(pub String);

impl Authenticator {
    /// Reads the secrets `auth` names for `owner` (e.g. `provider acme`); fails at
    /// start-up when one is missing or unusable.
    pub fn new(
        owner: &str,
        auth: Option<&Auth>,
        secrets: &SecretSource,
        client: &reqwest::Client,
    ) -> Result<Self, Error> {
        let invalid = |reason: String| Error::Config(format!("{owner}: {reason}"));
        let sensitive = |value: String| {
            let mut value = HeaderValue::from_str(&value)
                .map_err(|_| invalid("a secret does not make a valid header value".into()))?;
            value.set_sensitive(true);
            Ok::<_, Error>(value)
        };
        Ok(match auth {
            None => Self::None,
            Some(Auth::Bearer(name)) => {
                let token = secrets.read(&name.secret)?;
                let mut headers = HeaderMap::new();
                headers.insert(
                    header::AUTHORIZATION,
                    sensitive(format!("Bearer {}", token.expose_secret()))?,
                );
                Self::Headers(headers)
            }
            Some(Auth::Basic { username, password }) => {
                let password = secrets.read(&password.secret)?;
                let credentials = BASE64.encode(format!("{username}:{}", password.expose_secret()));
                let mut headers = HeaderMap::new();
                headers.insert(
                    header::AUTHORIZATION,
                    sensitive(format!("Basic {credentials}"))?,
                );
                Self::Headers(headers)
            }
            Some(Auth::ApiKey {
                header,
                secret,
                prefix,
            }) => {
                let key = secrets.read(secret)?;
                let name = HeaderName::from_bytes(header.as_bytes()).map_err(|_| {
                    invalid(format!(
                        "auth.api_key.header {header:?} is not a header name"
                    ))
                })?;
                let mut headers = HeaderMap::new();
                headers.insert(name, sensitive(format!("{prefix}{}", key.expose_secret()))?);
                Self::Headers(headers)
            }
            Some(Auth::Oauth2(oauth)) => Self::OAuth2(TokenSource {
                config: oauth.clone(),
                client_secret: secrets.read(&oauth.client_secret.secret)?,
                client: client.clone(),
                cached: Mutex::new(None),
            }),
            Some(Auth::StandardWebhooks { secrets: names }) => {
                let mut keys = Vec::new();
                for name in names {
                    keys.push(standard_webhooks_key(name, &secrets.read(name)?).map_err(invalid)?);
                }
                Self::StandardWebhooks(keys)
            }
        })
    }

    /// The headers that authenticate one request with `id` and `body`.
    pub async fn headers(&self, id: &str, body: &[u8]) -> Result<HeaderMap, AuthError> {
        match self {
            Self::None => Ok(HeaderMap::new()),
            Self::Headers(headers) => Ok(headers.clone()),
            Self::OAuth2(source) => {
                let token = source.token().await?;
                let mut value = HeaderValue::from_str(&format!("Bearer {}", token.expose_secret()))
                    .map_err(|_| {
                        AuthError("the token endpoint returned an unusable token".into())
                    })?;
                value.set_sensitive(true);
                let mut headers = HeaderMap::new();
                headers.insert(header::AUTHORIZATION, value);
                Ok(headers)
            }
            Self::StandardWebhooks(keys) => {
                let timestamp = time::OffsetDateTime::now_utc().unix_timestamp();
                let mut headers = HeaderMap::new();
                let value = |text: &str| {
                    HeaderValue::from_str(text)
                        .map_err(|_| AuthError(format!("{text:?} is not a header value")))
                };
                headers.insert("webhook-id", value(id)?);
                headers.insert("webhook-timestamp", value(&timestamp.to_string())?);
                headers.insert(
                    "webhook-signature",
                    value(&sign(keys, id, timestamp, body))?,
                );
                Ok(headers)
            }
        }
    }

    /// The provider answered 401 to a request sent with `sent` credentials: forget the
    /// cached token if it is the one refused (another request may already have
    /// fetched a new one). Returns whether a retry with fresh credentials can help.
    pub async fn unauthorized(&self, sent: &HeaderMap) -> bool {
        let Self::OAuth2(source) = self else {
            return false;
        };
        let refused = sent
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok());
        let mut cached = source.cached.lock().await;
        let cached_is_refused = cached.as_ref().is_some_and(|(token, _)| {
            refused == Some(format!("Bearer {}", token.expose_secret()).as_str())
        });
        if cached_is_refused {
            *cached = None;
        }
        true
    }
}

/// The key of a Standard Webhooks secret: the base64 after `whsec_`.
pub fn standard_webhooks_key(name: &str, secret: &SecretString) -> Result<Vec<u8>, String> {
    let encoded = secret
        .expose_secret()
        .strip_prefix("whsec_")
        .ok_or_else(|| format!("secret {name} is not a Standard Webhooks secret (whsec_…)"))?;
    BASE64
        .decode(encoded)
        .map_err(|_| format!("secret {name}: the part after whsec_ is not base64"))
}

/// `v1,<base64 HMAC-SHA256>` for each key, space separated (Standard Webhooks).
pub fn sign(keys: &[Vec<u8>], id: &str, timestamp: i64, body: &[u8]) -> String {
    keys.iter()
        .map(|key| {
            let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes any key length");
            mac.update(format!("{id}.{timestamp}.").as_bytes());
            mac.update(body);
            format!("v1,{}", BASE64.encode(mac.finalize().into_bytes()))
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// Fetches and caches OAuth2 client-credentials tokens.
pub struct TokenSource {
    config: OAuth2,
    client_secret: SecretString,
    client: reqwest::Client,
    cached: Mutex<Option<(SecretString, Instant)>>,
}

#[derive(Deserialize)]
struct TokenResponse {
    access_token: String,
    #[serde(default)]
    expires_in: Option<u64>,
}

impl TokenSource {
    /// A valid token, fetched when none is cached or the cached one is about to expire.
    /// Holding the lock while fetching means concurrent requests share one fetch.
    async fn token(&self) -> Result<SecretString, AuthError> {
        let mut cached = self.cached.lock().await;
        if let Some((token, refresh_at)) = cached.as_ref()
            && Instant::now() < *refresh_at
        {
            return Ok(token.clone());
        }
        let form = {
            let mut form = url::form_urlencoded::Serializer::new(String::new());
            form.append_pair("grant_type", "client_credentials");
            if !self.config.scopes.is_empty() {
                form.append_pair("scope", &self.config.scopes.join(" "));
            }
            if !self.config.audience.is_empty() {
                form.append_pair("audience", &self.config.audience);
            }
            form.finish()
        };
        let response = self
            .client
            .post(&self.config.token_url)
            .basic_auth(
                &self.config.client_id,
                Some(self.client_secret.expose_secret()),
            )
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .header(header::ACCEPT, "application/json")
            .body(form)
            .send()
            .await
            .map_err(|err| AuthError(format!("token endpoint {}: {err}", self.config.token_url)))?;
        let status = response.status();
        if !status.is_success() {
            return Err(AuthError(format!(
                "token endpoint {} answered {status}",
                self.config.token_url
            )));
        }
        let bytes = response
            .bytes()
            .await
            .map_err(|err| AuthError(format!("token endpoint {}: {err}", self.config.token_url)))?;
        let body: TokenResponse = serde_json::from_slice(&bytes).map_err(|err| {
            AuthError(format!(
                "token endpoint {} sent no usable token: {err}",
                self.config.token_url
            ))
        })?;
        let lifetime = Duration::from_secs(body.expires_in.unwrap_or(3600));
        let refresh_in = if lifetime > TOKEN_MARGIN * 2 {
            lifetime - TOKEN_MARGIN
        } else {
            lifetime / 2
        };
        let token = SecretString::from(body.access_token);
        *cached = Some((token.clone(), Instant::now() + refresh_in));
        tracing::info!(token_url = %self.config.token_url, expires_in_s = lifetime.as_secs(), "fetched an OAuth2 token");
        Ok(token)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_match_the_standard_webhooks_example() {
        // The example from the Standard Webhooks specification.
        let key = BASE64.decode("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        let signature = sign(
            &[key],
            "msg_p5jXN8AQM9LWM0D4loKWxJek",
            1614265330,
            br#"{"test": 2432232314}"#,
        );
        assert_eq!(signature, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
    }

    #[test]
    fn every_key_signs_during_a_rotation() {
        let signature = sign(&[b"old".to_vec(), b"new".to_vec()], "id", 1, b"{}");
        let parts: Vec<_> = signature.split(' ').collect();
        assert_eq!(parts.len(), 2);
        assert!(parts.iter().all(|p| p.starts_with("v1,")));
        assert_ne!(parts[0], parts[1]);
    }
}
