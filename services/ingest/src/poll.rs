//! Polling sources: GET an HTTP API on an interval and store one event per item.
//!
//! One replica polls each source at a time, under the lease `poll.<source>`. Each
//! item's id is its idempotency key, so an item read twice (a page re-read after a
//! crash, an API that repeats items) is stored once. The cursor and ETag are saved in
//! the `switchyard-cursors` bucket only after every event of the page is stored: a
//! crash between the two re-reads the page, and deduplication absorbs the repeat.
//! A 429 waits for its `Retry-After`; other failures wait for the next interval.

use std::{sync::Arc, time::Duration};

use async_nats::jetstream::kv;
use reqwest::{StatusCode, header};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use switchyard_core::{
    catalog::validate_event_type, config::Settings, lease, outbound::Failure,
    ratelimit::parse_retry_after, shutdown::Shutdown, topology,
};

use crate::{
    Ingest, is_valid_key,
    publish::{Outgoing, publish},
    readers,
    sources::{self, PollSetup},
};

/// What a poller remembers between polls, in KV under `poll.<source>`.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Position {
    /// The cursor to send next.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cursor: Option<String>,
    /// The last `ETag`, sent as `If-None-Match`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub etag: Option<String>,
}

/// Starts a poller for every polled source and keeps the set current as the
/// catalog changes: a poller whose settings changed is restarted, a removed one stops.
pub fn start(state: Arc<Ingest>, settings: &Settings, shutdown: &Shutdown) {
    let ttl = settings.ingest.poll_lease_ttl;
    readers::supervise(
        state,
        settings,
        shutdown,
        "poller",
        |ready| ready.poller.clone(),
        |old, new| old.config == new.config,
        move |state, source, setup, stop, instance| async move {
            let poller = Poller {
                state,
                source,
                setup,
                stop,
            };
            poller.run(&instance, ttl).await
        },
    );
}

struct Poller {
    state: Arc<Ingest>,
    source: String,
    setup: Arc<PollSetup>,
    stop: Shutdown,
}

/// What one poll found.
enum Polled {
    /// Items were stored; poll again at once when `more`.
    Stored { more: bool },
    /// Nothing new.
    Nothing,
    /// Try again after this long.
    Wait(Duration),
}

impl Poller {
    /// Holds the lease and polls while it lasts; stands by while another replica does.
    async fn run(&self, instance: &str, ttl: Duration) -> Result<(), switchyard_core::Error> {
        let jetstream = &self.state.nats.jetstream;
        let cursors = jetstream
            .get_key_value(topology::CURSORS_BUCKET)
            .await
            .map_err(switchyard_core::Error::nats)?;
        let key = format!("poll.{}", self.source);
        loop {
            let Some(mut held) = lease::acquire(jetstream, &key, instance, ttl, &self.stop).await
            else {
                return Ok(());
            };
            tracing::info!(source = self.source, "polling");
            let active = self.stop.child();
            let keep = async {
                held.keep(&active).await;
                active.trigger();
            };
            tokio::join!(keep, self.poll_while(&cursors, &key, &active));
            if self.stop.is_shutting_down() {
                held.release().await;
                return Ok(());
            }
            tracing::warn!(
                source = self.source,
                "lost the poll lease; standing by again"
            );
        }
    }

    async fn poll_while(&self, cursors: &kv::Store, key: &str, active: &Shutdown) {
        let interval = self.setup.config.interval;
        while !active.is_shutting_down() {
            let wait = match self.poll_once(cursors, key).await {
                Ok(Polled::Stored { more: true }) => Duration::ZERO,
                Ok(Polled::Stored { more: false } | Polled::Nothing) => interval,
                Ok(Polled::Wait(wait)) => wait,
                Err(err) => {
                    tracing::warn!(
                        source = self.source,
                        error = err,
                        "poll failed; trying again after the interval"
                    );
                    interval
                }
            };
            if !wait.is_zero() {
                active.sleep(wait).await;
            }
        }
        // Let `keep` end with this scope.
        active.trigger();
    }

    /// Reads one page, stores its items, then saves the new position.
    async fn poll_once(&self, cursors: &kv::Store, key: &str) -> Result<Polled, String> {
        let poll = &self.setup.config;
        let position: Position = match cursors.entry(key).await {
            Ok(Some(entry)) if !entry.value.is_empty() => serde_json::from_slice(&entry.value)
                .map_err(|err| format!("the saved position is unreadable: {err}"))?,
            Ok(_) => Position::default(),
            Err(err) => return Err(format!("reading the saved position: {err}")),
        };
        let mut request = self.setup.client.get(&poll.url).timeout(poll.timeout);
        let cursor = position
            .cursor
            .clone()
            .or_else(|| poll.cursor.as_ref().and_then(|c| c.initial.clone()));
        if let (Some(config), Some(cursor)) = (&poll.cursor, &cursor) {
            request = request.query(&[(config.param.as_str(), cursor.as_str())]);
        }
        if poll.etag
            && let Some(etag) = &position.etag
        {
            request = request.header(header::IF_NONE_MATCH, etag);
        }
        let auth = self
            .setup
            .auth
            .headers(&self.source, b"")
            .await
            .map_err(|err| err.to_string())?;
        let response = request
            .headers(auth)
            .send()
            .await
            .map_err(|err| format!("GET {}: {}", poll.url, Failure::of(&err).message))?;
        let status = response.status();
        if status == StatusCode::NOT_MODIFIED {
            return Ok(Polled::Nothing);
        }
        if status == StatusCode::TOO_MANY_REQUESTS {
            let wait = response
                .headers()
                .get(header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(parse_retry_after)
                .unwrap_or(poll.interval);
            tracing::info!(
                source = self.source,
                wait_ms = wait.as_millis() as u64,
                "the API answered 429; waiting"
            );
            return Ok(Polled::Wait(wait));
        }
        if !status.is_success() {
            return Err(format!("GET {} answered {status}", poll.url));
        }
        let etag = response
            .headers()
            .get(header::ETAG)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let body = response
            .bytes()
            .await
            .map_err(|err| format!("reading the response: {err}"))?;
        let document: Value = serde_json::from_slice(&body)
            .map_err(|err| format!("the response is not JSON: {err}"))?;
        let items = document
            .pointer(&poll.items)
            .and_then(Value::as_array)
            .ok_or_else(|| format!("the response has no array at {:?}", poll.items))?;

        let stored = self.store(items).await?;
        let next = self.next_cursor(&document, &body).or(cursor);
        let saved = Position {
            cursor: next,
            etag: etag.filter(|_| poll.etag),
        };
        if saved != position {
            let value = serde_json::to_vec(&saved).expect("positions serialize");
            cursors
                .put(key, value.into())
                .await
                .map_err(|err| format!("saving the position: {err}"))?;
        }
        let moved = saved.cursor != position.cursor && poll.cursor.is_some();
        Ok(Polled::Stored {
            more: stored > 0 && moved,
        })
    }

    /// Stores one event per item (pipelined); fails unless every one is stored.
    async fn store(&self, items: &[Value]) -> Result<usize, String> {
        let poll = &self.setup.config;
        let sources = self.state.sources.borrow().clone();
        let ready = match sources.get(&self.source) {
            sources::Lookup::Ready(ready) => ready,
            _ => return Err("the source is no longer ready".into()),
        };
        let mut events = Vec::new();
        for (i, item) in items.iter().enumerate() {
            let Some(id) = item.pointer(&poll.id).and_then(sources::scalar) else {
                tracing::error!(
                    source = self.source,
                    item = i,
                    pointer = poll.id,
                    "an item has no id; skipped"
                );
                continue;
            };
            if !is_valid_key(&id) {
                tracing::error!(
                    source = self.source,
                    item = i,
                    "an item's id is not 1-200 visible ASCII characters; skipped"
                );
                continue;
            }
            let event_type = sources::extract(&poll.event_type, &http::HeaderMap::new(), item)
                .map(|name| sources::normalize_event_type(&name));
            let Some(event_type) = event_type.filter(|name| validate_event_type(name).is_ok())
            else {
                tracing::error!(
                    source = self.source,
                    item = i,
                    id,
                    "an item has no valid event type; skipped"
                );
                continue;
            };
            let body = serde_json::to_vec(item).expect("JSON values serialize");
            // A polled item cannot be refused back to its sender: one that breaks the
            // schema is dead-lettered whatever `on_invalid` says.
            let violations = ready.check(&event_type, item).err();
            events.push((id, event_type, body, violations));
        }
        let stores = events
            .into_iter()
            .map(|(id, event_type, body, violations)| {
                let (state, source, revision) = (&self.state, &self.source, sources.revision);
                async move {
                    let event = Outgoing {
                        source,
                        event_type: &event_type,
                        key: Some(&id),
                        body: body.into(),
                        revision,
                        violations,
                    };
                    publish(&state.nats, state.publish_timeout, event).await
                }
            });
        let accepted = futures::future::try_join_all(stores).await?;
        let new = accepted.iter().filter(|a| !a.duplicate).count();
        tracing::info!(
            source = self.source,
            items = accepted.len(),
            new,
            "stored a page"
        );
        Ok(accepted.len())
    }

    /// The cursor for the next request, read from the response.
    fn next_cursor(&self, document: &Value, body: &[u8]) -> Option<String> {
        let config = self.setup.config.cursor.as_ref()?;
        if let Some(pointer) = &config.json {
            return document.pointer(pointer).and_then(sources::scalar);
        }
        let program = self.setup.cursor_program.as_ref()?;
        match program.evaluate_json(body) {
            Ok(Some(value)) => {
                let json = serde_json::to_value(&value).ok()?;
                sources::scalar(&json)
            }
            Ok(None) => None,
            Err(err) => {
                tracing::warn!(source = self.source, error = %err, "the cursor expression failed; keeping the cursor");
                None
            }
        }
    }
}
