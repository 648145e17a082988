//! Each source's catalog entry made ready to serve: its webhook verifier with secrets
//! read, its API-key hashes, its rate limiter and its compiled schemas.
//!
//! Rebuilt whenever the catalog changes. At start-up a source that cannot be made
//! ready (a secret is missing) stops the service; later, the source keeps its previous
//! state and the error is logged, so a bad change never takes a working source down.

use std::{collections::HashMap, sync::Arc};

use serde_json::Value;
use switchyard_core::{
    auth::Authenticator,
    catalog::{Extract, Poll, Snapshot, Source, matches_any},
    contract::{Contract, Violation},
    mapping::Program,
    metrics,
    outbound::{ClientOptions, Guard},
    ratelimit::Limiter,
    secrets::SecretSource,
    shutdown::Shutdown,
};
use tokio::sync::watch;

use crate::{
    cdc::CdcSetup,
    outbox::OutboxSetup,
    verify::{ApiKeys, Verifier},
};

/// Longest time to connect to a polled API (or its token endpoint).
const CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);
/// Redirects a poll follows, each checked by the outbound guard.
const MAX_REDIRECTS: usize = 5;

/// A source ready to serve.
pub struct Ready {
    /// Its catalog entry.
    pub config: Source,
    /// The webhook verifier, when the source takes webhooks.
    pub verifier: Option<Verifier>,
    /// Keys accepted on `/v1/events`.
    pub api_keys: ApiKeys,
    /// Its own request rate, kept across catalog changes.
    pub limiter: Arc<Limiter>,
    /// How to poll it, when it is polled.
    pub poller: Option<Arc<PollSetup>>,
    /// How to read its outbox table, when it has one.
    pub outbox: Option<Arc<OutboxSetup>>,
    /// How to read its table changes, when it is a CDC source.
    pub cdc: Option<Arc<CdcSetup>>,
    contracts: Vec<(Vec<String>, Contract)>,
}

/// A polled source's settings with its HTTP client, authentication and cursor
/// program ready.
pub struct PollSetup {
    /// The settings.
    pub config: Poll,
    /// The client of its requests and token requests: guarded, with its TLS settings.
    pub client: reqwest::Client,
    /// How each request authenticates.
    pub auth: Authenticator,
    /// The compiled cursor expression, when the cursor is VRL.
    pub cursor_program: Option<Program>,
}

impl Ready {
    fn build(
        source: &Source,
        secrets: &SecretSource,
        guard: &Guard,
        limiter: Option<Arc<Limiter>>,
    ) -> Result<Self, String> {
        let poller = match &source.poll {
            None => None,
            Some(poll) => {
                let owner = format!("source {}", source.name);
                guard.check_poll(poll).map_err(|err| err.to_string())?;
                let client = guard
                    .client(ClientOptions {
                        owner: &owner,
                        // Each request sets the poll's timeout.
                        timeout: None,
                        connect_timeout: CONNECT_TIMEOUT,
                        redirects: MAX_REDIRECTS,
                        // One poll at a time (and its token requests).
                        max_in_flight: 1,
                        tls: poll.tls.as_ref(),
                        secrets,
                    })
                    .map_err(|err| err.to_string())?;
                let auth = Authenticator::new(&owner, poll.auth.as_ref(), secrets, &client)
                    .map_err(|err| err.to_string())?;
                let cursor_program = match poll
                    .cursor
                    .as_ref()
                    .and_then(|cursor| cursor.vrl.as_deref())
                {
                    Some(program) => Some(
                        Program::compile(program)
                            .map_err(|err| format!("poll.cursor.vrl: {err}"))?,
                    ),
                    None => None,
                };
                Some(Arc::new(PollSetup {
                    config: poll.clone(),
                    client,
                    auth,
                    cursor_program,
                }))
            }
        };
        let outbox = source
            .outbox
            .as_ref()
            .map(|outbox| OutboxSetup::new(&source.name, outbox, secrets, guard).map(Arc::new))
            .transpose()?;
        let cdc = source
            .cdc
            .as_ref()
            .map(|cdc| CdcSetup::new(&source.name, cdc, secrets, guard).map(Arc::new))
            .transpose()?;
        let verifier = source
            .webhook
            .as_ref()
            .map(|webhook| Verifier::new(&webhook.verify, secrets))
            .transpose()?;
        let contracts = source
            .schemas
            .iter()
            .map(|rule| Ok((rule.event_types.clone(), Contract::compile(&rule.schema)?)))
            .collect::<Result<_, String>>()?;
        let limiter = match limiter {
            Some(limiter) => {
                limiter.set_limit(source.rate_limit.as_ref());
                limiter
            }
            None => Arc::new(Limiter::new(source.rate_limit.as_ref())),
        };
        Ok(Self {
            config: source.clone(),
            verifier,
            api_keys: ApiKeys::new(&source.api_keys),
            limiter,
            poller,
            outbox,
            cdc,
            contracts,
        })
    }

    /// Whether any schema applies to `event_type`.
    pub fn has_schema(&self, event_type: &str) -> bool {
        self.contracts
            .iter()
            .any(|(patterns, _)| matches_any(patterns, event_type))
    }

    /// Checks `body` against every schema for `event_type`.
    pub fn check(&self, event_type: &str, body: &Value) -> Result<(), Vec<Violation>> {
        let violations: Vec<Violation> = self
            .contracts
            .iter()
            .filter(|(patterns, _)| matches_any(patterns, event_type))
            .filter_map(|(_, contract)| contract.check(body).err())
            .flatten()
            .collect();
        if violations.is_empty() {
            Ok(())
        } else {
            Err(violations)
        }
    }
}

/// Every source, as of one catalog revision.
pub struct Sources {
    /// The catalog revision these were built from.
    pub revision: u64,
    entries: HashMap<String, Result<Arc<Ready>, String>>,
}

/// What a request finds under a source name.
pub enum Lookup {
    /// Serve it.
    Ready(Arc<Ready>),
    /// In the catalog but not servable (why, without secret values).
    Broken(String),
    /// Not in the catalog.
    Unknown,
}

impl Sources {
    /// Builds every source; `previous` supplies limiters to keep and the state to fall
    /// back to for a source that cannot be built.
    pub fn build(
        snapshot: &Snapshot,
        secrets: &SecretSource,
        guard: &Guard,
        previous: Option<&Sources>,
    ) -> (Self, Vec<String>) {
        let mut errors = Vec::new();
        let mut entries = HashMap::new();
        for source in &snapshot.catalog.sources {
            let before = previous
                .and_then(|p| p.entries.get(&source.name))
                .and_then(|e| e.as_ref().ok());
            let entry = match Ready::build(
                source,
                secrets,
                guard,
                before.map(|ready| ready.limiter.clone()),
            ) {
                Ok(ready) => Ok(Arc::new(ready)),
                Err(err) => {
                    errors.push(format!("source {}: {err}", source.name));
                    match before {
                        Some(ready) => Ok(ready.clone()),
                        None => Err(format!(
                            "source {:?} is not ready: its configuration could not be loaded",
                            source.name
                        )),
                    }
                }
            };
            entries.insert(source.name.clone(), entry);
        }
        (
            Self {
                revision: snapshot.revision,
                entries,
            },
            errors,
        )
    }

    /// Finds `name`.
    pub fn get(&self, name: &str) -> Lookup {
        match self.entries.get(name) {
            Some(Ok(ready)) => Lookup::Ready(ready.clone()),
            Some(Err(reason)) => Lookup::Broken(reason.clone()),
            None => Lookup::Unknown,
        }
    }

    /// Every ready source.
    pub fn ready(&self) -> impl Iterator<Item = &Arc<Ready>> {
        self.entries
            .values()
            .filter_map(|entry| entry.as_ref().ok())
    }
}

/// Builds the sources of the current catalog (failing on any error) and keeps them
/// current as the catalog changes.
pub fn track(
    mut catalog: watch::Receiver<Arc<Snapshot>>,
    secrets: SecretSource,
    guard: Guard,
    shutdown: &Shutdown,
) -> Result<watch::Receiver<Arc<Sources>>, String> {
    let first = catalog.borrow_and_update().clone();
    let (sources, errors) = Sources::build(&first, &secrets, &guard, None);
    if !errors.is_empty() {
        return Err(errors.join("; "));
    }
    metrics::set_catalog_revision("ingest", sources.revision);
    let (sender, receiver) = watch::channel(Arc::new(sources));
    let shutdown_for_task = shutdown.clone();
    shutdown.spawn("ingest sources", async move {
        loop {
            tokio::select! {
                changed = catalog.changed() => if changed.is_err() { break },
                () = shutdown_for_task.cancelled() => break,
            }
            let snapshot = catalog.borrow_and_update().clone();
            let previous = sender.borrow().clone();
            let (sources, errors) = Sources::build(&snapshot, &secrets, &guard, Some(&previous));
            for error in errors {
                tracing::error!(
                    revision = snapshot.revision,
                    error,
                    "source kept its previous configuration"
                );
            }
            metrics::set_catalog_revision("ingest", sources.revision);
            sender.send_replace(Arc::new(sources));
        }
        Ok::<_, std::convert::Infallible>(())
    });
    Ok(receiver)
}

/// Reads `extract` from a request: a header, a JSON pointer into the body, or fixed.
/// Strings are taken as they are; numbers as their decimal text.
pub fn extract(extract: &Extract, headers: &http::HeaderMap, body: &Value) -> Option<String> {
    if let Some(name) = &extract.header {
        return headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(|v| v.trim().to_owned())
            .filter(|v| !v.is_empty());
    }
    if let Some(pointer) = &extract.json {
        return scalar(body.pointer(pointer)?);
    }
    extract.value.clone()
}

/// A JSON string or number as text.
pub fn scalar(value: &Value) -> Option<String> {
    match value {
        Value::String(text) if !text.is_empty() => Some(text.clone()),
        Value::Number(number) => Some(number.to_string()),
        _ => None,
    }
}

/// A provider's event name as a Switchyard event type: Shopify's `orders/create`
/// becomes `orders.create`.
pub fn normalize_event_type(name: &str) -> String {
    name.trim().replace('/', ".")
}

/// Where `extract` reads, for error messages.
pub fn describe(extract: &Extract) -> String {
    match (&extract.header, &extract.json) {
        (Some(name), _) => format!("the {name} header"),
        (None, Some(pointer)) => format!("the body at {pointer}"),
        (None, None) => "the source's settings".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use switchyard_core::catalog::Catalog;

    use super::*;

    fn snapshot(yaml: &str, revision: u64) -> Snapshot {
        Snapshot {
            catalog: Catalog::from_yaml(yaml).unwrap(),
            revision,
        }
    }

    fn github(secret: &str) -> String {
        format!(
            "sources:\n  - name: gh\n    webhook: {{ verify: {{ github: {{ secrets: [{secret}] }} }} }}\n    rate_limit: {{ requests: 1, per: 1m, burst: 1 }}\n"
        )
    }

    #[test]
    fn a_source_that_cannot_be_built_keeps_its_previous_state() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("GH_SECRET"), "s3cr3t").unwrap();
        let secrets = SecretSource::new(dir.path());
        let guard = Guard::new(&Default::default()).unwrap();

        let (first, errors) =
            Sources::build(&snapshot(&github("GH_SECRET"), 1), &secrets, &guard, None);
        assert!(errors.is_empty(), "{errors:?}");
        let Lookup::Ready(before) = first.get("gh") else {
            panic!("gh is ready")
        };
        before.limiter.try_acquire().unwrap();

        // The secret is renamed in the catalog but not yet mounted: the source keeps
        // working with its old secret, and the error names the missing one.
        let (second, errors) = Sources::build(
            &snapshot(&github("GH_SECRET_V2"), 2),
            &secrets,
            &guard,
            Some(&first),
        );
        assert_eq!(errors.len(), 1);
        assert!(
            errors[0].contains("GH_SECRET_V2") && !errors[0].contains("s3cr3t"),
            "{errors:?}"
        );
        let Lookup::Ready(after) = second.get("gh") else {
            panic!("gh still ready")
        };
        assert!(Arc::ptr_eq(&before, &after));
        assert!(
            after.limiter.try_acquire().is_err(),
            "the rate budget carries over"
        );
        assert_eq!(second.revision, 2);

        // With nothing to fall back on (start-up, or a new source) it is not servable.
        let (fresh, errors) = Sources::build(
            &snapshot(&github("GH_SECRET_V2"), 2),
            &secrets,
            &guard,
            None,
        );
        assert_eq!(errors.len(), 1);
        assert!(matches!(fresh.get("gh"), Lookup::Broken(reason) if reason.contains("not ready")));
        assert!(matches!(fresh.get("other"), Lookup::Unknown));
    }
}
