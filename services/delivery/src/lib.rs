//! Switchyard delivery: one process owns one provider.
//!
//! Replicas of a provider's delivery compete for a lease in KV; the holder is active,
//! the others stand by and take over when it stops renewing. The active process pulls
//! `deliver.<provider>.>` through the durable consumer `delivery-<provider>` and owns
//! the provider's pace (token bucket, `Retry-After` pauses, rate-limit headers), its
//! circuit breaker (no pulling while open) and its credentials. Each message:
//!
//! 1. waits, without spending an attempt, while an earlier message with the same
//!    ordering key is still owed;
//! 2. is acked without a request when the ledger says it was already delivered;
//! 3. is sent when the pace and the breaker allow, with a stable `Idempotency-Key`;
//! 4. is acked after a 2xx (recorded in the ledger first), NAKed with the retry
//!    policy's delay after a retryable failure, NAKed with the provider's delay after
//!    a `Retry-After`, or dead-lettered after a rejection or the last attempt — the
//!    dead letter is stored before the message is acked.
//!
//! Every attempt and breaker transition is recorded on `outcome.<provider>`.
//!
//! Where each part lives: `consume` (the pull loop), `attempt` (one message up to
//! its request), `settle` (what the attempt led to: ack, NAK or dead letter),
//! `sender` (the HTTP call and its classification), `breaker` (the state machine) and
//! `breaker_store` (its state in KV), `operators` (pause, status, reset), `target`
//! (the provider resolved for sending), `outcome` (the attempt log).

#![forbid(unsafe_code)]

mod attempt;
mod batch;
pub mod breaker;
mod breaker_store;
mod consume;
mod operators;
mod ordering;
mod outcome;
pub mod sender;
mod settle;
mod target;

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64},
    },
    time::Duration,
};

use async_nats::jetstream::{kv, stream::Stream};
use switchyard_core::{
    catalog::CatalogStore,
    config::Settings,
    lease,
    ledger::Ledger,
    metrics,
    nats::{self, Nats},
    outbound::Guard,
    ratelimit::Limiter,
    secrets::SecretSource,
    shutdown::Shutdown,
    topology,
};

use crate::{
    breaker::Breaker,
    consume::deliver,
    operators::{answer_operators, watch_dead_letters, watch_pause},
    ordering::{Gate, Order},
    outcome::OutcomeLog,
    target::{Targets, wait_for_provider},
};

/// Errors that stop the delivery service.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// NATS, topology, catalog or secret set-up failed.
    #[error(transparent)]
    Core(#[from] switchyard_core::Error),
    /// The provider's configuration cannot be used.
    #[error("provider {provider}: {reason}")]
    Provider {
        /// The provider's name.
        provider: String,
        /// What is wrong.
        reason: String,
    },
}

/// Messages the server may hold for this consumer unacknowledged, waiting retries
/// included; beyond it the server stops handing out new ones.
const MAX_ACK_PENDING: i64 = 20_000;
/// How long the server waits for an ack before handing a message to another puller.
/// Work in progress keeps its message with progress acks, so this bounds only how long
/// a crashed process holds messages.
const ACK_WAIT: Duration = Duration::from_secs(10);
/// Delay before a message that could not be settled is tried again.
const SETTLE_RETRY: Duration = Duration::from_secs(5);
/// Delay before a message handed back at shutdown or lease loss is delivered again.
const HAND_BACK: Duration = Duration::from_secs(1);
/// Longest delay before a message held back by an operator pause or an open breaker
/// is offered again. Nothing is pulled while either lasts, so a short delay costs
/// nothing, and a resume or a breaker reset takes effect at once.
const HELD_RETRY: Duration = Duration::from_secs(1);
/// How often the backlog and dead-letter gauges are refreshed.
const BACKLOG_EVERY: Duration = Duration::from_secs(5);
/// Longest wait in one step while pacing, so cancellation is noticed.
const PACING_STEP: Duration = Duration::from_millis(500);

/// State shared by every delivery of the provider in this process.
struct Shared {
    nats: Nats,
    provider: String,
    ledger: Ledger,
    order: Order,
    outcomes: OutcomeLog,
    limiter: Limiter,
    breaker: Mutex<Breaker>,
    breakers: kv::Store,
    gate: Arc<Gate>,
    /// The operator's pause, as last read from `switchyard-pauses`.
    paused: AtomicBool,
    /// Deliveries being worked on.
    in_flight: AtomicU64,
    /// When the last delivery succeeded and the last attempt failed.
    last: Mutex<LastOutcomes>,
    instance: String,
}

#[derive(Default)]
struct LastOutcomes {
    success: Option<String>,
    failure: Option<(String, String)>,
    recent: switchyard_core::operator::Recent,
}

/// Delivers to `provider` until `shutdown` starts draining, then finishes what is in
/// flight and gives up the lease.
pub async fn run(settings: Settings, provider: String, shutdown: Shutdown) -> Result<(), Error> {
    let nats = nats::connect(&settings.nats, &format!("delivery-{provider}")).await?;
    topology::ensure_topology(&nats.jetstream, &settings.topology).await?;
    let mut catalog = CatalogStore::open(&nats.jetstream)
        .await?
        .watch(&shutdown)
        .await?;
    let targets = Targets {
        secrets: SecretSource::new(&settings.secrets.dir),
        guard: Guard::new(&settings.outbound)?,
    };
    let instance = settings
        .delivery
        .instance
        .clone()
        .unwrap_or_else(lease::default_instance);

    let Some(mut target) = wait_for_provider(&mut catalog, &provider, &targets, &shutdown).await?
    else {
        return Ok(());
    };
    let shared = Arc::new(Shared {
        ledger: Ledger::open(&nats.jetstream).await?,
        order: Order::new(
            stream(&nats, topology::INGEST).await?,
            stream(&nats, topology::DELIVER).await?,
        ),
        outcomes: OutcomeLog::new(nats.jetstream.clone(), &provider),
        limiter: Limiter::new(target.provider.rate_limit.as_ref()),
        breaker: Mutex::new(Breaker::new(target.provider.breaker.clone())),
        breakers: nats
            .jetstream
            .get_key_value(topology::BREAKERS_BUCKET)
            .await
            .map_err(switchyard_core::Error::nats)?,
        gate: Arc::default(),
        paused: AtomicBool::new(false),
        in_flight: AtomicU64::new(0),
        last: Mutex::default(),
        instance: instance.clone(),
        provider: provider.clone(),
        nats,
    });
    shutdown.spawn("pause watch", watch_pause(shared.clone(), shutdown.clone()));

    loop {
        let Some(mut lease) = lease::acquire(
            &shared.nats.jetstream,
            &format!("delivery.{provider}"),
            &instance,
            settings.delivery.lease_ttl,
            &shutdown,
        )
        .await
        else {
            break;
        };
        shared.restore_breaker().await;
        let active = shutdown.child();
        let keep = async {
            lease.keep(&active).await;
            active.trigger();
        };
        let (_, delivered, (), _, ()) = tokio::join!(
            keep,
            deliver(&shared, &mut target, &mut catalog, &targets, &active),
            answer_operators(&shared, &active),
            metrics::watch_consumer(
                shared.nats.jetstream.clone(),
                topology::DELIVER,
                topology::delivery_consumer(&provider),
                BACKLOG_EVERY,
                active.clone(),
            ),
            watch_dead_letters(&shared, &active),
        );
        delivered?;
        if shutdown.is_shutting_down() {
            lease.release().await;
            break;
        }
        tracing::warn!(provider, "lost the lease; standing by again");
    }
    Ok(())
}

async fn stream(nats: &Nats, name: &str) -> Result<Stream<()>, Error> {
    let stream = nats.jetstream.get_stream_no_info(name).await;
    Ok(stream.map_err(switchyard_core::Error::nats)?)
}
