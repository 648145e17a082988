//! Who may call the control API, and for what.
//!
//! Every call except health checks and reflection presents an API key in
//! `authorization: Bearer <key>` or `x-api-key`. The interceptor looks it up among the
//! configured hashes and attaches the caller; each method then asks for the scope it
//! needs. No key or an unknown one is UNAUTHENTICATED; a key whose scope is too low is
//! PERMISSION_DENIED, naming the key, its scope and what the call needs.

use std::sync::Arc;

use switchyard_core::{
    apikey::{self, KeyHashes},
    config::{ControlSettings, Scope},
};
use tonic::{Request, Status, service::Interceptor};

/// The caller of one request, attached by [`Authenticate`].
#[derive(Debug, Clone)]
pub struct Caller {
    /// The key's name.
    pub name: Arc<str>,
    /// What the key may do.
    pub scope: Scope,
}

/// Checks the API key of every request.
#[derive(Clone)]
pub struct Authenticate {
    keys: Arc<KeyHashes<Caller>>,
    open: bool,
}

impl Authenticate {
    /// The keys of `settings`; fails when there are none and unauthenticated access
    /// was not asked for.
    pub fn new(settings: &ControlSettings) -> Result<Self, String> {
        let keys = KeyHashes::new(settings.api_keys.iter().map(|key| {
            let caller = Caller {
                name: key.name.as_str().into(),
                scope: key.scope,
            };
            (key.hash.as_str(), caller)
        }));
        if keys.is_empty() && !settings.allow_unauthenticated {
            return Err(
                "control.api_keys is empty: add a key (syctl keys create prints one) \
                        or set control.allow_unauthenticated: true on a laptop"
                    .into(),
            );
        }
        Ok(Self {
            keys: Arc::new(keys),
            open: settings.api_keys.is_empty(),
        })
    }

    /// Whether every caller is let in as admin, without a key.
    pub fn is_open(&self) -> bool {
        self.open
    }

    /// The caller of an unauthenticated control API.
    pub fn anonymous() -> Caller {
        Caller {
            name: "anonymous".into(),
            scope: Scope::Admin,
        }
    }

    /// Who holds `key`, if it is one of the configured keys.
    pub fn caller_of(&self, key: &str) -> Option<Caller> {
        self.keys.find(key).cloned()
    }
}

impl Interceptor for Authenticate {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        let caller = if self.open {
            Self::anonymous()
        } else {
            let header = |name| request.metadata().get(name).and_then(|v| v.to_str().ok());
            let key = apikey::presented(header("authorization"), header("x-api-key")).ok_or_else(
                || {
                    Status::unauthenticated(
                        "no API key: send `authorization: Bearer <key>` or `x-api-key: <key>`",
                    )
                },
            )?;
            self.caller_of(key)
                .ok_or_else(|| Status::unauthenticated("unknown API key"))?
        };
        request.extensions_mut().insert(caller);
        Ok(request)
    }
}

/// Fails with PERMISSION_DENIED unless the caller of `request` has `scope`; `what`
/// names the call in the message.
pub fn require<T>(request: &Request<T>, scope: Scope, what: &str) -> Result<(), Status> {
    let caller = request
        .extensions()
        .get::<Caller>()
        .ok_or_else(|| Status::unauthenticated("no API key"))?;
    if caller.scope >= scope {
        return Ok(());
    }
    Err(Status::permission_denied(format!(
        "API key {} has scope {}; {what} needs {scope}",
        caller.name, caller.scope
    )))
}

/// The name of the key that made `request`, for logs and records.
pub fn caller<T>(request: &Request<T>) -> String {
    request
        .extensions()
        .get::<Caller>()
        .map_or_else(|| "unknown".to_owned(), |caller| caller.name.to_string())
}
