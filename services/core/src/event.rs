//! Event identity.
//!
//! Ingest gives every event a time-ordered UUIDv7 in `Switchyard-Event-Id`. An event
//! published straight to NATS without that header gets an id derived from where it is
//! stored (sequence and time), so every redelivery and replay of it sees the same id.

use async_nats::HeaderMap;
use time::{OffsetDateTime, format_description::well_known::Rfc3339};
use uuid::Uuid;

use crate::headers;

/// Namespace of ids derived from an INGEST position.
const DERIVED_NAMESPACE: Uuid = Uuid::from_u128(0x6f0b_7a43_5c3e_4b9a_9f59_3b1d_2a6e_8c41);

/// Namespace of ids derived from a source's idempotency key.
const KEYED_NAMESPACE: Uuid = Uuid::from_u128(0x2c4e_91d7_0b6a_4f38_8e15_c7a2_5d90_3f64);

/// A new event id.
pub fn new_event_id() -> String {
    Uuid::now_v7().to_string()
}

/// The id of the event `source` sent with idempotency key `key`: the same for every
/// copy, so a late duplicate (after the deduplication window) still carries the first
/// copy's id and delivery's ledger recognises it.
pub fn keyed_event_id(source: &str, key: &str) -> String {
    Uuid::new_v5(&KEYED_NAMESPACE, format!("{source}:{key}").as_bytes()).to_string()
}

/// The current time as RFC 3339, as written in `Switchyard-Received-At`.
pub fn now_rfc3339() -> String {
    rfc3339(OffsetDateTime::now_utc())
}

/// Formats a time as RFC 3339.
pub fn rfc3339(at: OffsetDateTime) -> String {
    at.format(&Rfc3339).expect("UTC times always format")
}

/// When ingest accepted an event: its `Switchyard-Received-At` header, or, for an
/// event a NATS client published directly, when JetStream stored it.
pub fn received_at(message_headers: Option<&HeaderMap>, published: OffsetDateTime) -> String {
    crate::headers::get(message_headers, crate::headers::RECEIVED_AT)
        .map_or_else(|| rfc3339(published), str::to_owned)
}

/// The id of the event stored in INGEST at `sequence`, published at `published`.
pub fn event_id(
    message_headers: Option<&HeaderMap>,
    sequence: u64,
    published: OffsetDateTime,
) -> String {
    match headers::get(message_headers, headers::EVENT_ID) {
        Some(id) if !id.is_empty() => id.to_owned(),
        _ => Uuid::new_v5(
            &DERIVED_NAMESPACE,
            format!("{sequence}:{}", published.unix_timestamp_nanos()).as_bytes(),
        )
        .to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_header_wins_and_derived_ids_are_stable() {
        let mut with_id = HeaderMap::new();
        with_id.insert(headers::EVENT_ID, "abc");
        let at = OffsetDateTime::from_unix_timestamp(1_700_000_000).unwrap();
        assert_eq!(event_id(Some(&with_id), 7, at), "abc");
        let derived = event_id(None, 7, at);
        assert_eq!(derived, event_id(Some(&HeaderMap::new()), 7, at));
        assert_ne!(derived, event_id(None, 8, at));
    }
}
