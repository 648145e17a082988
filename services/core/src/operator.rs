//! What operators change and read on a running provider's delivery, shared by the
//! delivery service and the control API.
//!
//! - A pause is a key `<provider>` in `switchyard-pauses`; the delivery process watches
//!   it, so a pause outlives restarts and reaches whichever replica is active.
//! - The breaker state is a key `<provider>` in `switchyard-breakers`, written by the
//!   active process on every transition and read by the next one.
//! - The active process answers requests on [`control_subject`]: its live status, and
//!   a breaker reset (which it applies, records and persists).
//! - Likewise the ingest replica reading a source's outbox answers on
//!   [`source_subject`] with the source's [`SourceStatus`].

use serde::{Deserialize, Serialize};

/// The circuit breaker's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BreakerState {
    /// Requests flow.
    Closed,
    /// No requests until the cool-down ends.
    Open,
    /// One probe decides.
    HalfOpen,
}

impl std::fmt::Display for BreakerState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Closed => "closed",
            Self::Open => "open",
            Self::HalfOpen => "half_open",
        })
    }
}

/// The breaker state kept in KV, so a restarted or new active replica honours it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BreakerRecord {
    /// The state.
    pub state: BreakerState,
    /// When it opened, in Unix milliseconds.
    pub opened_at_ms: Option<i64>,
    /// How long it stays open.
    pub cool_down_ms: u64,
}

/// An operator's pause of a provider: nothing is sent until it is removed.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Pause {
    /// Why, as the operator said.
    pub reason: String,
    /// The API key that paused it.
    pub by: String,
    /// When (RFC 3339).
    pub at: String,
}

/// A request to the active delivery process of a provider.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Command {
    /// Answer with [`LiveStatus`].
    Status,
    /// Close the breaker, then answer with [`LiveStatus`].
    ResetBreaker,
}

/// What only the active delivery process knows.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct LiveStatus {
    /// The replica's instance name.
    pub instance: String,
    /// The breaker's state in memory.
    pub breaker: Option<BreakerState>,
    /// Time until an open breaker lets a probe through.
    pub breaker_retry_in_ms: u64,
    /// Whether the process honours an operator pause.
    pub paused: bool,
    /// Requests per second allowed; `None` is unlimited.
    pub rate_per_second: Option<f64>,
    /// Bucket size of the rate limit.
    pub burst: Option<f64>,
    /// Tokens in the bucket now.
    pub tokens: Option<f64>,
    /// Time left of a pause the provider asked for (429/503 with `Retry-After`).
    pub provider_pause_ms: u64,
    /// Deliveries being worked on in this process.
    pub in_flight: u64,
    /// When the last delivery succeeded (RFC 3339).
    pub last_success: Option<String>,
    /// When the last attempt failed (RFC 3339).
    pub last_failure: Option<String>,
    /// Why it failed.
    pub last_failure_reason: Option<String>,
    /// Attempts of the last [`RECENT_MINUTES`] minutes, oldest first.
    #[serde(default)]
    pub recent: Vec<MinuteCount>,
}

/// How many minutes of attempts [`Recent`] keeps.
pub const RECENT_MINUTES: usize = 10;

/// What one minute's delivery attempts came to.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MinuteCount {
    /// The minute's start, in Unix seconds.
    pub minute: i64,
    /// Attempts the provider accepted.
    pub delivered: u64,
    /// Attempts that failed: retried, rejected or out of attempts.
    pub failed: u64,
}

/// Delivery attempts per minute over the last [`RECENT_MINUTES`] minutes; time comes
/// in as Unix seconds, so it is exact under test.
#[derive(Debug, Default)]
pub struct Recent {
    minutes: std::collections::VecDeque<MinuteCount>,
}

impl Recent {
    /// Counts one attempt at `now`.
    pub fn record(&mut self, now: i64, delivered: bool) {
        let minute = now - now.rem_euclid(60);
        if self.minutes.back().is_none_or(|last| last.minute < minute) {
            self.minutes.push_back(MinuteCount {
                minute,
                ..MinuteCount::default()
            });
        }
        let oldest = minute - 60 * (RECENT_MINUTES as i64 - 1);
        while self
            .minutes
            .front()
            .is_some_and(|first| first.minute < oldest)
        {
            self.minutes.pop_front();
        }
        if let Some(last) = self.minutes.back_mut() {
            if delivered {
                last.delivered += 1;
            } else {
                last.failed += 1;
            }
        }
    }

    /// Every one of the last [`RECENT_MINUTES`] minutes at `now`, oldest first, the
    /// minutes without attempts at zero; the last is the minute under way.
    pub fn minutes(&self, now: i64) -> Vec<MinuteCount> {
        let current = now - now.rem_euclid(60);
        (0..RECENT_MINUTES as i64)
            .rev()
            .map(|ago| {
                let minute = current - 60 * ago;
                self.minutes
                    .iter()
                    .find(|count| count.minute == minute)
                    .copied()
                    .unwrap_or(MinuteCount {
                        minute,
                        ..MinuteCount::default()
                    })
            })
            .collect()
    }
}

/// The subject the active delivery process of `provider` answers [`Command`]s on.
pub fn control_subject(provider: &str) -> String {
    format!("switchyard.control.delivery.{provider}")
}

/// What the active reader of a source that ingest reads itself (an outbox table)
/// knows, answered on [`source_subject`] while it holds the source's lease.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceStatus {
    /// The replica's instance name.
    pub instance: String,
    /// `outbox` or `cdc`.
    pub kind: String,
    /// Rows waiting in the table at the last count (outbox).
    pub rows_waiting: Option<u64>,
    /// Bytes of WAL the slot's confirmed position is behind (CDC).
    #[serde(default)]
    pub bytes_behind: Option<u64>,
    /// When the table was last read (RFC 3339).
    pub last_read_at: Option<String>,
    /// Why the last read failed, and the fix when it is the configuration.
    pub last_error: Option<String>,
}

/// The subject the active reader of `source` answers status requests on.
pub fn source_subject(source: &str) -> String {
    format!("switchyard.control.source.{source}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attempts_are_counted_per_minute_for_ten_minutes() {
        let mut recent = Recent::default();
        let start = 1_800_000_000; // a whole minute
        recent.record(start + 5, true);
        recent.record(start + 59, false);
        recent.record(start + 60, true);
        recent.record(start + 61, true);
        let minutes = recent.minutes(start + 90);
        assert_eq!(minutes.len(), RECENT_MINUTES);
        let at = |minute, delivered, failed| MinuteCount {
            minute,
            delivered,
            failed,
        };
        assert_eq!(minutes[8], at(start, 1, 1));
        assert_eq!(minutes[9], at(start + 60, 2, 0));
        assert!(minutes[..8].iter().all(|m| m.delivered + m.failed == 0));
        assert_eq!(minutes[0].minute, start + 60 - 9 * 60);

        // Nine minutes on, the first minute has gone, and a quiet stretch reads as zeros.
        recent.record(start + 600, false);
        let minutes = recent.minutes(start + 600);
        assert_eq!(minutes[0], at(start + 60, 2, 0));
        assert_eq!(minutes[9], at(start + 600, 0, 1));
        assert_eq!(recent.minutes.len(), 2, "nothing older is kept");
        assert!(
            recent
                .minutes(start + 3600)
                .iter()
                .all(|m| m.delivered + m.failed == 0)
        );
    }
}
