//! What is known about each delivery across retries, restarts and replicas.
//!
//! One KV record per idempotency key (in `switchyard-delivered`, kept for the
//! configured horizon) holds the attempts counted so far and whether the provider
//! already accepted it. Counted attempts exclude deferrals — a rate-limit pause, an
//! open breaker, an ordering wait — so those never spend a message's retry budget. A
//! `delivered` record stops a resend when a 2xx was received but its ack was lost.

use crate::{Error, topology};
use async_nats::jetstream::{self, context::PublishAckFuture, kv};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// The idempotency key of the delivery of `event_id` on `route`: what the provider
/// receives as `Idempotency-Key`. A forced redelivery (a replay of an event already
/// delivered) gets a key of its own, so that the provider takes it again.
pub fn delivery_key(event_id: &str, route: &str, redelivery: Option<&str>) -> String {
    match redelivery {
        Some(replay) => format!("{event_id}:{route}:redelivery:{replay}"),
        None => format!("{event_id}:{route}"),
    }
}

/// The record of one idempotency key.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// Failed attempts counted against the retry budget.
    pub attempts: u32,
    /// The provider accepted it.
    #[serde(default)]
    pub delivered: bool,
    /// The last HTTP status seen.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_status: Option<u16>,
}

/// The KV bucket of records.
#[derive(Clone)]
pub struct Ledger {
    kv: kv::Store,
    jetstream: jetstream::Context,
}

impl Ledger {
    /// Opens the bucket created by `ensure_topology`.
    pub async fn open(jetstream: &jetstream::Context) -> Result<Self, Error> {
        let kv = jetstream
            .get_key_value(topology::DELIVERED_BUCKET)
            .await
            .map_err(Error::nats)?;
        Ok(Self {
            kv,
            jetstream: jetstream.clone(),
        })
    }

    /// The KV key of an idempotency key: a hash, since idempotency keys may hold any
    /// characters and KV keys may not.
    pub fn key(idempotency_key: &str) -> String {
        let digest = Sha256::digest(idempotency_key.as_bytes());
        digest[..16].iter().map(|b| format!("{b:02x}")).collect()
    }

    /// The record of `key`; an empty one when there is none.
    pub async fn get(&self, key: &str) -> Result<Record, Error> {
        match self.kv.get(key).await.map_err(Error::nats)? {
            Some(bytes) => serde_json::from_slice(&bytes)
                .map_err(|err| Error::nats_while(format!("unreadable delivery record {key}"), err)),
            None => Ok(Record::default()),
        }
    }

    /// Gives an event that was not delivered a fresh retry budget (for replays): the
    /// record keeps `delivered` if the provider took it meanwhile.
    pub async fn reset_attempts(&self, key: &str) -> Result<(), Error> {
        let record = self.get(key).await?;
        if record.attempts == 0 || record.delivered {
            return Ok(());
        }
        self.put(
            key,
            &Record {
                attempts: 0,
                ..record
            },
        )
        .await
    }

    /// Stores the record of `key` and waits until it is stored.
    pub async fn put(&self, key: &str, record: &Record) -> Result<(), Error> {
        self.send(key, record)
            .await?
            .await
            .map_err(|err| Error::nats_while(format!("delivery record {key}"), err))?;
        Ok(())
    }

    /// Sends the record of `key` (the KV bucket's put) without waiting: the returned
    /// future resolves once it is stored. What the same connection sends next (an ack)
    /// reaches the server after it.
    pub async fn send(&self, key: &str, record: &Record) -> Result<PublishAckFuture, Error> {
        let value = serde_json::to_vec(record).expect("records serialize");
        self.jetstream
            .publish(format!("$KV.{}.{key}", self.kv.name), value.into())
            .await
            .map_err(|err| Error::nats_while(format!("delivery record {key}"), err))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_stable_kv_safe_hashes() {
        let key = Ledger::key("01a2:orders");
        assert_eq!(key.len(), 32);
        assert!(key.chars().all(|c| c.is_ascii_hexdigit()));
        assert_eq!(key, Ledger::key("01a2:orders"));
        assert_ne!(key, Ledger::key("01a2:other"));
    }
}
