//! Canary mapping versions: which events a route's canary takes, what is known of
//! it (the record in [`topology::CANARIES_BUCKET`](crate::topology::CANARIES_BUCKET)),
//! and when its results call for a rollback.
//!
//! The split is a hash of the route's name and the event id (or ordering key), so
//! every transform replica, every restart and every replay sends an event through
//! the same version. Control counts each version's finished events and failures
//! from OUTCOMES and DLQ, and rolls the canary back by writing its record; transform
//! reads the records and stops sending events to a canary rolled back.

use std::{
    collections::HashMap,
    sync::{Arc, RwLock},
    time::Duration,
};

use async_nats::jetstream::{self, kv};
use futures::StreamExt;
use serde::{Deserialize, Serialize};

use crate::{
    Error,
    catalog::{Canary, MappingRef},
    nats::KvChanges,
    shutdown::Shutdown,
    topology,
};

/// How often the records are read again, beside the notifications.
const RESYNC: Duration = Duration::from_secs(10);

/// Whether the event with `key` (its id, or its ordering key) takes the canary of
/// `route`, which takes `percent` of the events.
pub fn takes_canary(route: &str, key: &str, percent: u8) -> bool {
    bucket(route, key) < u64::from(percent)
}

/// The event's place from 0 to 99: FNV-1a over the route's name and the key. Fixed
/// here, so it never changes between releases.
fn bucket(route: &str, key: &str) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in route.bytes().chain([0]).chain(key.bytes()) {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash % 100
}

/// Where a canary stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CanaryState {
    /// It takes its share of events.
    Active,
    /// It takes no more events; the route's own mapping takes them all.
    RolledBack,
    /// The route now pins it.
    Promoted,
}

impl CanaryState {
    /// The name in records, the API and metrics.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Active => "active",
            Self::RolledBack => "rolled_back",
            Self::Promoted => "promoted",
        }
    }
}

/// What became of one version's events: each finished event once, by how it ended.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tally {
    /// Delivered.
    pub delivered: u64,
    /// Dead-lettered by transform: the program failed (or the filter).
    pub mapping: u64,
    /// Dead-lettered by transform: a contract was broken.
    pub contract: u64,
    /// Refused by the provider.
    pub rejected: u64,
    /// Out of attempts.
    pub exhausted: u64,
    /// Attempts that failed and were tried again (not failures on their own).
    pub retries: u64,
}

impl Tally {
    /// Events that ended as a dead letter.
    pub fn failed(&self) -> u64 {
        self.mapping + self.contract + self.rejected + self.exhausted
    }

    /// Events that ended either way.
    pub fn finished(&self) -> u64 {
        self.delivered + self.failed()
    }

    /// The failed share in percent.
    pub fn failed_percent(&self) -> f64 {
        match self.finished() {
            0 => 0.0,
            finished => self.failed() as f64 * 100.0 / finished as f64,
        }
    }

    /// Retried attempts per delivered event.
    pub fn retries_per_delivery(&self) -> f64 {
        match self.delivered {
            0 => 0.0,
            delivered => self.retries as f64 / delivered as f64,
        }
    }
}

/// The record of one route's canary, keyed by the route's name.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CanaryRecord {
    /// The canary version this record is about; a record for another version than
    /// the route's canary now names is stale and ignored.
    pub mapping: MappingRef,
    /// The route's own version it is compared with.
    pub stable: MappingRef,
    /// Where it stands.
    pub state: CanaryState,
    /// When it started taking events (RFC 3339); counting starts there.
    pub since: String,
    /// Why it left `active`, and who or what did it.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub reason: String,
    /// When it left `active` (RFC 3339).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub changed_at: String,
    /// The canary's results when it was last judged.
    #[serde(default)]
    pub canary: Tally,
    /// The stable version's results over the same time.
    #[serde(default)]
    pub stable_tally: Tally,
}

impl CanaryRecord {
    /// The record's JSON, as stored.
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("canary records serialize")
    }

    /// Whether this record says `canary` (the route's canary now) takes no events.
    pub fn stops(&self, canary: &MappingRef) -> bool {
        &self.mapping == canary && self.state != CanaryState::Active
    }
}

/// Every canary record in `bucket`, by route.
pub async fn records(bucket: &kv::Store) -> Result<HashMap<String, CanaryRecord>, Error> {
    let mut keys = bucket.keys().await.map_err(Error::nats)?;
    let mut records = HashMap::new();
    while let Some(key) = keys.next().await {
        let key = key.map_err(Error::nats)?;
        if let Some(value) = bucket.get(&key).await.map_err(Error::nats)?
            && let Ok(record) = serde_json::from_slice::<CanaryRecord>(&value)
        {
            records.insert(key, record);
        }
    }
    Ok(records)
}

/// The canaries that take no events now, by route; kept current by [`Stopped::watch`].
#[derive(Debug, Clone, Default)]
pub struct Stopped(Arc<RwLock<HashMap<String, MappingRef>>>);

impl Stopped {
    /// Whether `route`'s canary `canary` takes no events.
    pub fn stops(&self, route: &str, canary: &MappingRef) -> bool {
        self.0
            .read()
            .expect("not poisoned")
            .get(route)
            .is_some_and(|stopped| stopped == canary)
    }

    /// Takes the stopped canaries from `records` (by route), in place of the ones
    /// known so far.
    pub fn replace(&self, records: &HashMap<String, CanaryRecord>) {
        let stopped = records
            .iter()
            .filter(|(_, record)| record.state != CanaryState::Active)
            .map(|(route, record)| (route.clone(), record.mapping.clone()))
            .collect();
        *self.0.write().expect("not poisoned") = stopped;
    }

    /// The canaries stopped now, read once (for a replay).
    pub async fn read(jetstream: &jetstream::Context) -> Result<Self, Error> {
        let bucket = jetstream
            .get_key_value(topology::CANARIES_BUCKET)
            .await
            .map_err(Error::nats)?;
        let stopped = Self::default();
        stopped.replace(&records(&bucket).await?);
        Ok(stopped)
    }

    /// Reads the records now, then again on every change (and every [`RESYNC`])
    /// until `shutdown`.
    pub async fn watch(jetstream: &jetstream::Context, shutdown: &Shutdown) -> Result<Self, Error> {
        let bucket = jetstream
            .get_key_value(topology::CANARIES_BUCKET)
            .await
            .map_err(Error::nats)?;
        let mut changes = KvChanges::subscribe(
            jetstream.client(),
            format!("$KV.{}.>", topology::CANARIES_BUCKET),
            RESYNC,
        )
        .await?;
        let stopped = Self::default();
        stopped.replace(&records(&bucket).await?);
        let kept = stopped.clone();
        let stop = shutdown.clone();
        shutdown.spawn("canary-watch", async move {
            while changes.next(&stop).await {
                match records(&bucket).await {
                    Ok(records) => kept.replace(&records),
                    Err(err) => tracing::warn!(error = %err, "cannot read the canary records; keeping the last ones"),
                }
            }
            Ok::<(), Error>(())
        });
        Ok(stopped)
    }
}

/// Why the canary should be rolled back, once both versions have `min_events`
/// finished events and the canary's failed share is more than `margin` points above
/// the stable one's; `None` while it holds or the sample is too small.
pub fn judge(canary: &Canary, canary_tally: &Tally, stable: &Tally) -> Option<String> {
    let sample = u64::from(canary.min_events);
    if canary_tally.finished() < sample || stable.finished() < sample {
        return None;
    }
    let (tried, pinned) = (canary_tally.failed_percent(), stable.failed_percent());
    (tried > pinned + canary.margin).then(|| {
        format!(
            "{} failed {:.1}% of {} events against {:.1}% of {} for the stable version, more than the {} points allowed",
            canary.mapping,
            tried,
            canary_tally.finished(),
            pinned,
            stable.finished(),
            canary.margin
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::CanaryBy;

    fn canary(percent: u8) -> Canary {
        Canary {
            mapping: "order-to-contact@2".parse().unwrap(),
            percent,
            by: CanaryBy::Event,
            min_events: 200,
            margin: 2.0,
        }
    }

    #[test]
    fn the_split_is_fixed_and_takes_about_its_share() {
        let ids: Vec<String> = (0..20_000).map(|i| format!("event-{i}")).collect();
        for percent in [1u8, 10, 50] {
            let taken = ids
                .iter()
                .filter(|id| takes_canary("orders", id, percent))
                .count();
            let share = taken as f64 / ids.len() as f64 * 100.0;
            assert!(
                (share - f64::from(percent)).abs() < 1.0,
                "{percent}%: took {share:.2}%"
            );
        }
        // The same event always goes the same way, and a bigger share keeps every
        // event a smaller one took.
        for id in &ids[..500] {
            assert_eq!(
                takes_canary("orders", id, 10),
                takes_canary("orders", id, 10)
            );
            if takes_canary("orders", id, 10) {
                assert!(takes_canary("orders", id, 20));
            }
        }
        // Fixed values: a release that changes the hash would move events.
        assert_eq!(
            [
                bucket("orders", "a"),
                bucket("orders", "b"),
                bucket("crm", "a")
            ],
            [63, 74, 96]
        );
    }

    #[test]
    fn a_canary_is_judged_after_its_sample_against_the_margin() {
        let canary = canary(10);
        let tally = |finished: u64, failed: u64| Tally {
            delivered: finished - failed,
            mapping: failed / 2,
            rejected: failed - failed / 2,
            ..Tally::default()
        };
        // Too few events of either version: no verdict, however bad.
        assert_eq!(judge(&canary, &tally(199, 199), &tally(1000, 0)), None);
        assert_eq!(judge(&canary, &tally(500, 500), &tally(199, 0)), None);
        // Within the margin.
        assert_eq!(judge(&canary, &tally(200, 6), &tally(1000, 10)), None);
        // 10% against 1%: rolled back, and the reason says so.
        let reason = judge(&canary, &tally(200, 20), &tally(1000, 10)).unwrap();
        assert!(
            reason.contains("order-to-contact@2 failed 10.0% of 200 events against 1.0% of 1000"),
            "{reason}"
        );
        assert!(reason.contains("2 points"), "{reason}");
    }

    #[test]
    fn a_record_stops_only_its_own_version() {
        let record = CanaryRecord {
            mapping: "m@2".parse().unwrap(),
            stable: "m@1".parse().unwrap(),
            state: CanaryState::RolledBack,
            since: String::new(),
            reason: String::new(),
            changed_at: String::new(),
            canary: Tally::default(),
            stable_tally: Tally::default(),
        };
        assert!(record.stops(&"m@2".parse().unwrap()));
        assert!(
            !record.stops(&"m@3".parse().unwrap()),
            "a new canary starts afresh"
        );
        let active = CanaryRecord {
            state: CanaryState::Active,
            ..record
        };
        assert!(!active.stops(&"m@2".parse().unwrap()));
    }
}
