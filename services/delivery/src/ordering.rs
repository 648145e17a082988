//! Per-key ordering inside one delivery process.
//!
//! Messages with an ordering key arrive on a subject of their own
//! (`deliver.<provider>.<route>.<key hash>`). Two checks keep them in ingest order:
//! the [`Gate`] makes a message wait here while an earlier one with the same subject
//! is being delivered by this process, and the stream itself says whether an earlier
//! one is still owed elsewhere (waiting for a retry on the server), in which case the
//! message is put back without spending an attempt. Other keys never wait.

use std::{
    collections::{BTreeSet, HashMap},
    sync::{Arc, Mutex},
};

use tokio::sync::Notify;

/// In-process turns per ordering subject.
#[derive(Default)]
pub struct Gate {
    in_flight: Mutex<HashMap<String, BTreeSet<u64>>>,
    changed: Notify,
}

/// A registered message; leaves the gate when dropped.
pub struct Turn {
    gate: Arc<Gate>,
    subject: String,
    sequence: u64,
}

impl Gate {
    /// Registers a message in arrival order; call before the message's task starts.
    pub fn enter(self: &Arc<Self>, subject: &str, sequence: u64) -> Turn {
        self.in_flight
            .lock()
            .expect("gate lock")
            .entry(subject.to_owned())
            .or_default()
            .insert(sequence);
        Turn {
            gate: self.clone(),
            subject: subject.to_owned(),
            sequence,
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
            if first.is_none_or(|first| first >= self.sequence) {
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
            set.remove(&self.sequence);
            if set.is_empty() {
                in_flight.remove(&self.subject);
            }
        }
        drop(in_flight);
        self.gate.changed.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn same_subject_waits_for_the_earlier_one_other_subjects_do_not() {
        let gate = Arc::new(Gate::default());
        let first = gate.enter("a", 1);
        let second = gate.enter("a", 2);
        let other = gate.enter("b", 3);
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
}
