//! The provider's pace: a token bucket, pauses a provider asks for, and its
//! rate-limit headers.

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};
use switchyard_core::outcome::Outcome;

use switchyard_tests::{FakeProvider, Pipeline, Reply};

use crate::{assert_paced, catalog_with, publish_orders};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_provider_never_sees_more_than_rate_times_window_plus_burst() {
    let provider = FakeProvider::start().await;
    let policies = "
    max_in_flight: 32
    rate_limit: { requests: 20, per: 1s, burst: 5 }";
    let pipeline = Pipeline::start(&catalog_with(provider.url(), policies, ""))
        .await
        .unwrap();
    let ids: Vec<String> = (0..100).map(|i| format!("r{i}")).collect();
    publish_orders(&pipeline, "order.created", &ids).await;
    provider
        .wait_for_accepted(100, Duration::from_secs(30))
        .await;

    let arrivals: Vec<Instant> = provider.received().iter().map(|r| r.at).collect();
    assert_eq!(arrivals.len(), 100);
    assert_paced(
        &arrivals,
        20.0,
        5,
        &[
            Duration::from_millis(500),
            Duration::from_secs(1),
            Duration::from_secs(2),
        ],
    );
    let span = arrivals[99] - arrivals[0];
    assert!(
        span >= Duration::from_millis(4600),
        "95 requests beyond the burst at 20/s: {span:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn retry_after_pauses_the_whole_provider_without_spending_the_retry_budget() {
    // The very first request is answered 429 with Retry-After: 2.
    let first = Arc::new(AtomicUsize::new(0));
    let counter = first.clone();
    let provider = FakeProvider::with(move |_| {
        if counter.fetch_add(1, Ordering::SeqCst) == 0 {
            Reply::status(429).header("Retry-After", "2")
        } else {
            Reply::ok()
        }
    })
    .await;
    // One attempt only: if the 429 spent it, the event would be dead-lettered.
    let policies = "
    max_in_flight: 4
    retry: { max_attempts: 1 }";
    let pipeline = Pipeline::start(&catalog_with(provider.url(), policies, ""))
        .await
        .unwrap();
    let ids: Vec<String> = (0..10).map(|i| format!("p{i}")).collect();
    publish_orders(&pipeline, "order.created", &ids).await;
    provider
        .wait_for_accepted(10, Duration::from_secs(20))
        .await;

    let received = provider.received();
    assert_eq!(received[0].status, 429);
    // Requests already in flight when the 429 came back may still arrive; nothing is
    // sent after it until the two seconds are over.
    let paused = received[0].at;
    let during: Vec<Duration> = received
        .iter()
        .map(|r| r.at.saturating_duration_since(paused))
        .filter(|after| *after > Duration::from_millis(200) && *after < Duration::from_millis(1900))
        .collect();
    assert!(
        during.is_empty(),
        "requests during the pause, at {during:?} after the 429"
    );
    assert_eq!(
        received.len(),
        11,
        "the paused event was sent once more, nothing else twice"
    );
    assert_eq!(
        pipeline.stream_len("DLQ").await,
        0,
        "the pause spent no attempt"
    );
    let deferred = pipeline
        .attempts()
        .await
        .into_iter()
        .filter(|(_, a)| a.category == Outcome::Deferred)
        .count();
    assert_eq!(deferred, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rate_limit_headers_slow_sending_before_a_429_is_needed() {
    // The provider allows 3 requests per 2-second period, the first starting with the
    // first request, and says so on every answer; it answers 429 to anything beyond.
    let state: Arc<Mutex<Option<(Instant, u32)>>> = Arc::new(Mutex::new(None));
    let provider = FakeProvider::with(move |_| {
        let mut state = state.lock().unwrap();
        let now = Instant::now();
        let state = state.get_or_insert((now, 0));
        if now.duration_since(state.0) >= Duration::from_secs(2) {
            *state = (now, 0);
        }
        state.1 += 1;
        let reset = 2 - now.duration_since(state.0).as_secs().min(1);
        if state.1 > 3 {
            return Reply::status(429);
        }
        Reply::ok()
            .header("RateLimit-Remaining", (3 - state.1).to_string())
            .header("RateLimit-Reset", reset.to_string())
    })
    .await;
    let policies = "
    max_in_flight: 1";
    let pipeline = Pipeline::start(&catalog_with(provider.url(), policies, ""))
        .await
        .unwrap();
    let ids: Vec<String> = (0..9).map(|i| format!("h{i}")).collect();
    publish_orders(&pipeline, "order.created", &ids).await;
    provider.wait_for_accepted(9, Duration::from_secs(30)).await;

    let received = provider.received();
    let refused = received.iter().filter(|r| r.status == 429).count();
    assert_eq!(refused, 0, "the budget in the headers was respected");
    assert_eq!(received.len(), 9);
    let span = received[8].at - received[0].at;
    assert!(
        span >= Duration::from_millis(3500),
        "9 requests at 3 per 2s took {span:?}"
    );
}
