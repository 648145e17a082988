//! Per-key ordering, with any number of transform replicas.
//!
//! Messages with an ordering key arrive on a subject of their own
//! (`deliver.<provider>.<route>.<key hash>`) and carry the INGEST sequence of their
//! event (`Switchyard-Ingest-Sequence`): their order is the ingest order. Transform
//! replicas publish concurrently, so DELIVER may hold two events of one key in the
//! other order. A keyed message is released only when
//!
//! 1. every INGEST message before its own has been processed by transform — the
//!    transform consumer's ack floor has reached it, so every earlier event of the
//!    key is stored in DELIVER (transform acks only after its outputs are stored);
//! 2. no earlier message of the key is in this process ([`Gate`]): same-key messages
//!    pulled together take turns in ingest order;
//! 3. no earlier message of the key is still owed in DELIVER ([`Order`]): waiting for
//!    a retry on the server, or stored after this one and not pulled yet. Then the
//!    message is put back without spending an attempt.
//!
//! Other keys never wait for each other.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    sync::{Arc, Mutex},
    time::Duration,
};

use async_nats::{
    HeaderMap,
    jetstream::{
        context::ConsumerInfoErrorKind,
        stream::{RawMessageErrorKind, Stream},
    },
};
use switchyard_core::{headers, topology};
use tokio::{sync::Notify, time::Instant};

/// How often the transform consumer's ack floor is read while a message waits for it.
const FLOOR_EVERY: Duration = Duration::from_millis(5);
/// Longest wait here for the ack floor before the message is put back.
const FLOOR_PATIENCE: Duration = Duration::from_secs(2);
/// Delay before a message is offered again after a failed check.
const CHECK_RETRY: Duration = Duration::from_secs(1);

/// The place of a message in its key's order: the INGEST sequence of its event, or
/// for a message published to DELIVER by something other than transform, its DELIVER
/// sequence.
pub fn place(message_headers: Option<&HeaderMap>, stream_sequence: u64) -> u64 {
    ingest_sequence(message_headers).unwrap_or(stream_sequence)
}

fn ingest_sequence(message_headers: Option<&HeaderMap>) -> Option<u64> {
    headers::get(message_headers, headers::INGEST_SEQUENCE).and_then(|value| value.parse().ok())
}

/// In-process turns per ordering subject, by place and then DELIVER sequence (two
/// copies of one event have the same place).
#[derive(Default)]
pub struct Gate {
    in_flight: Mutex<HashMap<String, BTreeSet<(u64, u64)>>>,
    changed: Notify,
}

/// A registered message; leaves the gate when dropped.
pub struct Turn {
    gate: Arc<Gate>,
    subject: String,
    turn: (u64, u64),
}

impl Gate {
    /// Registers the message at DELIVER `sequence` with its [`place`]; call before
    /// the message's task starts.
    pub fn enter(self: &Arc<Self>, subject: &str, place: u64, sequence: u64) -> Turn {
        let turn = (place, sequence);
        self.in_flight
            .lock()
            .expect("gate lock")
            .entry(subject.to_owned())
            .or_default()
            .insert(turn);
        Turn {
            gate: self.clone(),
            subject: subject.to_owned(),
            turn,
        }
    }
}

impl Turn {
    /// Waits until no earlier message with the same subject is in this process.
    pub async fn wait(&self) {
        loop {
            let notified = self.gate.changed.notified();
            let first = self
                .gate
                .in_flight
                .lock()
                .expect("gate lock")
                .get(&self.subject)
                .and_then(|set| set.first().copied());
            if first.is_none_or(|first| first >= self.turn) {
                return;
            }
            notified.await;
        }
    }
}

impl Drop for Turn {
    fn drop(&mut self) {
        let mut in_flight = self.gate.in_flight.lock().expect("gate lock");
        if let Some(set) = in_flight.get_mut(&self.subject) {
            set.remove(&self.turn);
            if set.is_empty() {
                in_flight.remove(&self.subject);
            }
        }
        drop(in_flight);
        self.gate.changed.notify_waiters();
    }
}

/// What the server says about the order of keyed messages: the transform consumer's
/// ack floor, and which messages of each key are still stored in DELIVER.
pub struct Order {
    ingest: Stream<()>,
    deliver: Stream<()>,
    floor: tokio::sync::Mutex<Floor>,
    /// Per ordering subject, the DELIVER messages known to be stored: learnt by
    /// reading the subject forward from where the last reading ended, so each message
    /// is read once however long the key's backlog, and kept until a check finds it
    /// gone. A subject with nothing stored but the message being checked is forgotten.
    known: Mutex<HashMap<String, Known>>,
}

#[derive(Default)]
struct Floor {
    /// Every INGEST message up to this sequence has been processed by transform.
    sequence: u64,
    read: Option<Instant>,
}

#[derive(Default, Clone)]
struct Known {
    /// The subject was read up to this DELIVER sequence.
    read_to: u64,
    /// DELIVER sequence → place of the messages seen stored.
    stored: BTreeMap<u64, u64>,
}

impl Order {
    pub fn new(ingest: Stream<()>, deliver: Stream<()>) -> Self {
        Self {
            ingest,
            deliver,
            floor: tokio::sync::Mutex::default(),
            known: Mutex::default(),
        }
    }

    /// A delay when the message at DELIVER `sequence` on `subject` must wait: an
    /// earlier event of its key is still in transform or still owed. `delivered` is
    /// how often the server has handed it out, for the back-off.
    pub async fn earlier_pending(
        &self,
        subject: &str,
        message_headers: Option<&HeaderMap>,
        sequence: u64,
        delivered: i64,
    ) -> Option<Duration> {
        let back_off = {
            let step = 250u64 << (delivered.clamp(1, 6) - 1);
            Duration::from_millis(step.min(5_000))
        };
        if let Some(ingest) = ingest_sequence(message_headers) {
            match self.transformed_before(ingest).await {
                Ok(true) => {}
                Ok(false) => return Some(back_off),
                Err(err) => {
                    tracing::warn!(error = %err, "cannot read transform's progress; waiting");
                    return Some(CHECK_RETRY);
                }
            }
        }
        match self
            .stored_before(subject, sequence, place(message_headers, sequence))
            .await
        {
            Ok(false) => None,
            Ok(true) => Some(back_off),
            Err(err) => {
                tracing::warn!(error = %err, "cannot check the ordering key; waiting");
                Some(CHECK_RETRY)
            }
        }
    }

    /// Waits (a while) until transform has processed every INGEST message before
    /// `ingest`; `false` when it has not by then.
    async fn transformed_before(&self, ingest: u64) -> Result<bool, async_nats::Error> {
        let deadline = Instant::now() + FLOOR_PATIENCE;
        loop {
            let next_read = {
                let mut floor = self.floor.lock().await;
                if floor.sequence + 1 >= ingest {
                    return Ok(true);
                }
                match floor.read {
                    // Read recently: wait for the next reading, shared by every waiter.
                    Some(read) if read.elapsed() < FLOOR_EVERY => read + FLOOR_EVERY,
                    _ => {
                        // Without the consumer nothing is in transform, so nothing
                        // earlier can still come; not remembered, since transform
                        // creates the consumer when it starts.
                        let Some(read) = self.read_floor().await? else {
                            return Ok(true);
                        };
                        floor.sequence = floor.sequence.max(read);
                        floor.read = Some(Instant::now());
                        if floor.sequence + 1 >= ingest {
                            return Ok(true);
                        }
                        Instant::now() + FLOOR_EVERY
                    }
                }
            };
            if next_read > deadline {
                return Ok(false);
            }
            tokio::time::sleep_until(next_read).await;
        }
    }

    /// The transform consumer's ack floor on INGEST; `None` when there is no such
    /// consumer.
    async fn read_floor(&self) -> Result<Option<u64>, async_nats::Error> {
        match self
            .ingest
            .consumer_info(topology::TRANSFORM_CONSUMER)
            .await
        {
            Ok(info) => Ok(Some(info.ack_floor.stream_sequence)),
            Err(err) if err.kind() == ConsumerInfoErrorKind::NotFound => Ok(None),
            Err(err) => Err(err.into()),
        }
    }

    /// Whether a message of `subject` earlier than `place` is still stored in
    /// DELIVER, other than the one at `sequence` itself.
    async fn stored_before(
        &self,
        subject: &str,
        sequence: u64,
        place: u64,
    ) -> Result<bool, async_nats::Error> {
        // One check per subject at a time (the gate), so the entry is ours meanwhile.
        let mut known = self
            .known
            .lock()
            .expect("ordering lock")
            .get(subject)
            .cloned()
            .unwrap_or_default();
        // Learn what was stored since the last reading.
        loop {
            match self
                .deliver
                .get_first_raw_message_by_subject(subject, known.read_to + 1)
                .await
            {
                Ok(stored) => {
                    known.read_to = stored.sequence;
                    known.stored.insert(
                        stored.sequence,
                        self::place(Some(&stored.headers), stored.sequence),
                    );
                }
                Err(err) if err.kind() == RawMessageErrorKind::NoMessageFound => break,
                Err(err) => return Err(err.into()),
            }
        }
        // Earlier ones seen before may have been delivered since.
        let earlier: Vec<u64> = known
            .stored
            .iter()
            .filter(|(stored, earlier)| **stored != sequence && **earlier < place)
            .map(|(stored, _)| *stored)
            .collect();
        let mut owed = false;
        for earlier in earlier {
            match self.deliver.get_raw_message(earlier).await {
                Ok(_) => {
                    owed = true;
                    break;
                }
                Err(err) if err.kind() == RawMessageErrorKind::NoMessageFound => {
                    known.stored.remove(&earlier);
                }
                Err(err) => return Err(err.into()),
            }
        }
        let mut all = self.known.lock().expect("ordering lock");
        // Nothing else of the key stored: forget it (a later message reads it anew).
        if known.stored.keys().all(|stored| *stored == sequence) {
            all.remove(subject);
        } else {
            all.insert(subject.to_owned(), known);
        }
        Ok(owed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn same_subject_waits_for_the_earlier_one_other_subjects_do_not() {
        let gate = Arc::new(Gate::default());
        // Entered in arrival order; their places say a2 comes after a1.
        let second = gate.enter("a", 2, 10);
        let first = gate.enter("a", 1, 11);
        let other = gate.enter("b", 3, 12);
        tokio::time::timeout(Duration::from_millis(50), other.wait())
            .await
            .expect("b goes at once");
        first.wait().await;
        assert!(
            tokio::time::timeout(Duration::from_millis(50), second.wait())
                .await
                .is_err()
        );
        drop(first);
        tokio::time::timeout(Duration::from_millis(50), second.wait())
            .await
            .expect("a2 goes after a1");
    }

    #[tokio::test]
    async fn two_copies_of_one_event_take_turns() {
        let gate = Arc::new(Gate::default());
        let first = gate.enter("a", 5, 20);
        let copy = gate.enter("a", 5, 21);
        first.wait().await;
        assert!(
            tokio::time::timeout(Duration::from_millis(50), copy.wait())
                .await
                .is_err(),
            "the copy waits for the first"
        );
        drop(first);
        tokio::time::timeout(Duration::from_millis(50), copy.wait())
            .await
            .expect("the copy goes after the first");
    }

    #[test]
    fn the_place_is_the_ingest_sequence_when_there_is_one() {
        let mut with = HeaderMap::new();
        with.insert(headers::INGEST_SEQUENCE, "42");
        assert_eq!(place(Some(&with), 7), 42);
        assert_eq!(place(None, 7), 7);
        let mut unreadable = HeaderMap::new();
        unreadable.insert(headers::INGEST_SEQUENCE, "x");
        assert_eq!(place(Some(&unreadable), 7), 7);
    }
}
