//! Pace: a token bucket, pauses ordered by the other side, and a budget taken from
//! its rate-limit headers.
//!
//! Delivery paces each provider with one (one active process owns a provider, so one
//! limiter in that process is the limit); ingest limits each source with one.
//! A token bucket of `burst` tokens refilled at `rate` per second lets through at most
//! `rate × window + burst` requests in any window. A `Retry-After` pauses every request
//! until then; `RateLimit-Remaining`/`RateLimit-Reset` headers cap what is sent until
//! the reset, so sending slows before the provider has to answer 429.

use std::{sync::Mutex, time::Duration};

use crate::catalog::RateLimit;
use tokio::time::Instant;

/// `Retry-After` as seconds or an HTTP date, as a delay from now.
pub fn parse_retry_after(value: &str) -> Option<Duration> {
    let value = value.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(
        at.duration_since(std::time::SystemTime::now())
            .unwrap_or(Duration::ZERO),
    )
}

/// A limiter's settings and bucket at one moment; all `None` when unlimited.
#[derive(Debug, Clone, Copy, Default)]
pub struct LimiterSnapshot {
    /// Requests per second.
    pub rate_per_second: Option<f64>,
    /// Bucket size.
    pub burst: Option<f64>,
    /// Tokens available.
    pub tokens: Option<f64>,
}

/// Shared pacing state of one provider.
#[derive(Debug)]
pub struct Limiter {
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    /// Tokens per second and bucket size; `None` is unlimited.
    rate: Option<(f64, f64)>,
    tokens: f64,
    refilled: Instant,
    paused_until: Option<Instant>,
    /// Requests the provider said it will still take before `until`.
    budget: Option<(u64, Instant)>,
}

impl Limiter {
    /// A limiter for `limit` (unlimited when `None`), starting with a full bucket.
    pub fn new(limit: Option<&RateLimit>) -> Self {
        let rate = limit.map(|limit| (limit.per_second(), f64::from(limit.burst)));
        Self {
            state: Mutex::new(State {
                rate,
                tokens: rate.map_or(0.0, |(_, burst)| burst),
                refilled: Instant::now(),
                paused_until: None,
                budget: None,
            }),
        }
    }

    /// Applies a changed limit, keeping the tokens already in the bucket.
    pub fn set_limit(&self, limit: Option<&RateLimit>) {
        let mut state = self.state.lock().expect("limiter lock");
        state.rate = limit.map(|limit| (limit.per_second(), f64::from(limit.burst)));
        if let Some((_, burst)) = state.rate {
            state.tokens = state.tokens.min(burst);
        }
    }

    /// Takes permission for one request now, or says how long to wait first.
    pub fn try_acquire(&self) -> Result<(), Duration> {
        self.try_acquire_at(Instant::now(), 1)
    }

    /// Takes permission for `count` units at once (a batch of events), or says how
    /// long to wait first. A count larger than the bucket needs a full bucket and
    /// leaves it in debt, so the average rate still holds.
    pub fn try_acquire_many(&self, count: u32) -> Result<(), Duration> {
        self.try_acquire_at(Instant::now(), count.max(1))
    }

    fn try_acquire_at(&self, now: Instant, count: u32) -> Result<(), Duration> {
        let mut state = self.state.lock().expect("limiter lock");
        if let Some(until) = state.paused_until {
            if until > now {
                return Err(until - now);
            }
            state.paused_until = None;
        }
        if let Some((left, until)) = state.budget {
            if until <= now {
                state.budget = None;
            } else if left == 0 {
                return Err(until - now);
            }
        }
        if let Some((rate, burst)) = state.rate {
            let elapsed = now.saturating_duration_since(state.refilled).as_secs_f64();
            state.tokens = (state.tokens + elapsed * rate).min(burst);
            state.refilled = now;
            let needed = f64::from(count).min(burst);
            if state.tokens < needed {
                return Err(Duration::from_secs_f64((needed - state.tokens) / rate));
            }
            state.tokens -= f64::from(count);
        }
        if let Some((left, _)) = &mut state.budget {
            *left = left.saturating_sub(u64::from(count));
        }
        Ok(())
    }

    /// Waits for permission to send one request.
    pub async fn acquire(&self) {
        while let Err(wait) = self.try_acquire() {
            tokio::time::sleep(wait).await;
        }
    }

    /// Nothing is sent before `now + delay` (a longer pause already set wins).
    pub fn pause_for(&self, delay: Duration) {
        let until = Instant::now() + delay;
        let mut state = self.state.lock().expect("limiter lock");
        if state.paused_until.is_none_or(|current| current < until) {
            state.paused_until = Some(until);
        }
    }

    /// How long sending stays paused, if it is.
    pub fn paused_for(&self) -> Option<Duration> {
        let now = Instant::now();
        let state = self.state.lock().expect("limiter lock");
        state
            .paused_until
            .filter(|until| *until > now)
            .map(|until| until - now)
    }

    /// The configured rate and the tokens in the bucket now.
    pub fn snapshot(&self) -> LimiterSnapshot {
        let now = Instant::now();
        let state = self.state.lock().expect("limiter lock");
        match state.rate {
            Some((rate, burst)) => {
                let elapsed = now.saturating_duration_since(state.refilled).as_secs_f64();
                LimiterSnapshot {
                    rate_per_second: Some(rate),
                    burst: Some(burst),
                    tokens: Some((state.tokens + elapsed * rate).min(burst)),
                }
            }
            None => LimiterSnapshot::default(),
        }
    }

    /// The provider will take only `remaining` more requests in the next `reset`.
    pub fn limit_until_reset(&self, remaining: u64, reset: Duration) {
        let until = Instant::now() + reset;
        self.state.lock().expect("limiter lock").budget = Some((remaining, until));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limit(requests: u32, burst: u32) -> RateLimit {
        RateLimit {
            requests,
            per: Duration::from_secs(1),
            burst,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_burst_then_the_rate() {
        let limiter = Limiter::new(Some(&limit(10, 3)));
        let start = Instant::now();
        for _ in 0..3 {
            limiter.acquire().await;
        }
        assert_eq!(start.elapsed(), Duration::ZERO, "the burst is free");
        for _ in 0..10 {
            limiter.acquire().await;
        }
        let elapsed = start.elapsed();
        assert!(
            elapsed >= Duration::from_millis(999) && elapsed <= Duration::from_millis(1001),
            "{elapsed:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_batch_takes_one_token_per_unit_and_a_large_one_leaves_a_debt() {
        let limiter = Limiter::new(Some(&limit(10, 20)));
        assert!(limiter.try_acquire_many(15).is_ok());
        let wait = limiter.try_acquire_many(10).unwrap_err();
        assert_eq!(wait, Duration::from_millis(500), "5 left, 5 more at 10/s");
        tokio::time::advance(Duration::from_secs(2)).await;
        assert!(
            limiter.try_acquire_many(50).is_ok(),
            "a full bucket lets it go"
        );
        let wait = limiter.try_acquire().unwrap_err();
        assert_eq!(wait, Duration::from_millis(3100), "30 owed, then 1");
    }

    #[tokio::test(start_paused = true)]
    async fn never_more_than_rate_times_window_plus_burst() {
        let limiter = Limiter::new(Some(&limit(20, 5)));
        let start = Instant::now();
        let mut sent = Vec::new();
        for _ in 0..200 {
            limiter.acquire().await;
            sent.push(start.elapsed());
        }
        for (i, at) in sent.iter().enumerate() {
            let window = Duration::from_secs(1);
            let in_window = sent[i..].iter().take_while(|t| **t < *at + window).count();
            assert!(
                in_window <= 20 + 5,
                "{in_window} requests in the second after {at:?}"
            );
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_pause_holds_everything_and_the_longest_wins() {
        let limiter = Limiter::new(None);
        limiter.pause_for(Duration::from_secs(5));
        limiter.pause_for(Duration::from_secs(2));
        assert_eq!(limiter.try_acquire(), Err(Duration::from_secs(5)));
        let start = Instant::now();
        limiter.acquire().await;
        assert_eq!(start.elapsed(), Duration::from_secs(5));
        assert_eq!(limiter.paused_for(), None);
    }

    #[tokio::test(start_paused = true)]
    async fn the_providers_remaining_budget_is_respected_until_reset() {
        let limiter = Limiter::new(None);
        limiter.limit_until_reset(2, Duration::from_secs(3));
        let start = Instant::now();
        limiter.acquire().await;
        limiter.acquire().await;
        assert_eq!(start.elapsed(), Duration::ZERO);
        limiter.acquire().await;
        assert_eq!(
            start.elapsed(),
            Duration::from_secs(3),
            "the third waits for the reset"
        );
    }

    #[test]
    fn retry_after_is_seconds_or_an_http_date() {
        assert_eq!(parse_retry_after("120"), Some(Duration::from_secs(120)));
        let soon = std::time::SystemTime::now() + Duration::from_secs(30);
        let delay = parse_retry_after(&httpdate::fmt_http_date(soon)).unwrap();
        assert!(
            delay > Duration::from_secs(28) && delay <= Duration::from_secs(30),
            "{delay:?}"
        );
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT"),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after("soon"), None);
    }
}
