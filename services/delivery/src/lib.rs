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

#![forbid(unsafe_code)]

pub mod breaker;
mod ordering;
mod outcome;
pub mod sender;

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Duration,
};

use async_nats::{
    HeaderMap,
    jetstream::{
        self, AckKind,
        consumer::{AckPolicy, DeliverPolicy, pull},
        kv,
        stream::Stream,
    },
};
use futures::StreamExt;
use reqwest::header::{HeaderName, HeaderValue};
use switchyard_core::{
    auth::Authenticator,
    catalog::{CatalogStore, Provider, Snapshot},
    config::Settings,
    consumer::Subscription,
    event, headers, lease,
    ledger::{self, Ledger, Record},
    metrics::{self, DeliveryLabels, ProviderLabels, ProviderRouteLabels, TransitionLabels},
    nats::{self, Nats},
    operator::{self, BreakerRecord, Command, LiveStatus, Pause},
    outbound::{ClientOptions, Failure, FailureKind, Guard},
    ratelimit::Limiter,
    secrets::SecretSource,
    shutdown::Shutdown,
    telemetry, topology,
};
use tokio::{sync::watch, task::JoinSet, time::Instant};
use tracing::Instrument;

use crate::{
    breaker::{Breaker, Permit, State, Transition},
    ordering::{Gate, Turn},
    outcome::OutcomeLog,
    sender::{Answer, Sender, Verdict, classify},
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

/// A provider's configuration with everything resolved for sending.
struct Target {
    provider: Provider,
    sender: Sender,
    auth: Authenticator,
}

/// What a provider's [`Target`] is built from: the secrets it names and the guard
/// that decides where its requests may go.
struct Targets {
    secrets: SecretSource,
    guard: Guard,
}

impl Targets {
    /// The provider ready to call; fails when a secret is missing or unusable, or
    /// when its URL names an address the guard refuses.
    fn build(&self, provider: &Provider) -> Result<Target, Error> {
        let owner = format!("provider {}", provider.name);
        self.guard
            .check_provider(provider)
            .map_err(|err| Error::Provider {
                provider: provider.name.clone(),
                reason: err.to_string(),
            })?;
        let client = self.guard.client(ClientOptions {
            owner: &owner,
            timeout: Some(provider.timeout),
            connect_timeout: provider.timeout.min(Duration::from_secs(10)),
            redirects: 0,
            tls: provider.tls.as_ref(),
            secrets: &self.secrets,
        })?;
        Ok(Target {
            provider: provider.clone(),
            auth: Authenticator::new(&owner, provider.auth.as_ref(), &self.secrets, &client)?,
            sender: Sender::new(provider, &self.secrets, client)?,
        })
    }
}

/// State shared by every delivery of the provider in this process.
struct Shared {
    nats: Nats,
    provider: String,
    ledger: Ledger,
    deliver: Stream<()>,
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
        deliver: nats
            .jetstream
            .get_stream_no_info(topology::DELIVER)
            .await
            .map_err(switchyard_core::Error::nats)?,
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
        .await?
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

/// Pulls and delivers while `active` lasts.
async fn deliver(
    shared: &Arc<Shared>,
    target: &mut Arc<Target>,
    catalog: &mut watch::Receiver<Arc<Snapshot>>,
    targets: &Targets,
    active: &Shutdown,
) -> Result<(), Error> {
    let provider = &shared.provider;
    let config = pull::Config {
        durable_name: Some(topology::delivery_consumer(provider)),
        description: Some(format!("Switchyard delivery to {provider}")),
        filter_subject: format!("deliver.{provider}.>"),
        ack_policy: AckPolicy::Explicit,
        deliver_policy: DeliverPolicy::All,
        ack_wait: ACK_WAIT,
        max_deliver: -1,
        max_ack_pending: MAX_ACK_PENDING,
        ..Default::default()
    };
    let mut subscription = Subscription::new(
        &shared.nats.jetstream,
        topology::DELIVER,
        config,
        target.provider.max_in_flight,
        active,
    )
    .await?;
    tracing::info!(provider, url = %target.provider.url, "delivery consuming DELIVER");

    let mut tasks = JoinSet::new();
    loop {
        if catalog.has_changed().unwrap_or(false)
            && let Some(updated) = refresh(catalog, provider, targets)
        {
            shared
                .limiter
                .set_limit(updated.provider.rate_limit.as_ref());
            shared
                .breaker
                .lock()
                .expect("breaker lock")
                .set_policy(updated.provider.breaker.clone());
            *target = updated;
        }
        let max_in_flight = target.provider.max_in_flight;
        if tasks.len() >= max_in_flight {
            tasks.join_next().await;
            continue;
        }
        // While the breaker is open or the provider asked for a pause, do not pull:
        // waiting costs no attempts and holds no messages.
        let allowance = shared
            .breaker
            .lock()
            .expect("breaker lock")
            .pull_allowance(Instant::now());
        let hold = match allowance {
            _ if shared.paused.load(Ordering::Relaxed) => Some(PACING_STEP),
            Err(wait) => Some(wait),
            Ok(_) => shared.limiter.paused_for(),
        };
        let busy = !tasks.is_empty();
        if let Some(wait) = hold {
            tokio::select! {
                () = active.cancelled() => break,
                Some(_) = tasks.join_next(), if busy => {}
                () = tokio::time::sleep(wait.min(PACING_STEP)) => {}
            }
            continue;
        }
        let room = (max_in_flight - tasks.len()).min(allowance.unwrap_or(usize::MAX));
        let message = tokio::select! {
            biased;
            Some(_) = tasks.join_next(), if busy => continue,
            message = subscription.next(room) => message,
        };
        let Some(message) = message else { break };
        // Registered here, in arrival order, before any task runs.
        let turn = headers::get(message.headers.as_ref(), headers::ORDERING_KEY)
            .and(message.info().ok())
            .map(|info| {
                shared
                    .gate
                    .enter(message.subject.as_str(), info.stream_sequence)
            });
        let delivery = Delivery {
            shared: shared.clone(),
            target: target.clone(),
            active: active.clone(),
        };
        tasks.spawn(async move { delivery.handle(message, turn).await });
    }
    tracing::info!(provider, in_flight = tasks.len(), "delivery draining");
    while tasks.join_next().await.is_some() {}
    subscription.close().await;
    Ok(())
}

/// Waits until the catalog has `provider`; `None` if the shutdown came first.
async fn wait_for_provider(
    catalog: &mut watch::Receiver<Arc<Snapshot>>,
    provider: &str,
    targets: &Targets,
    shutdown: &Shutdown,
) -> Result<Option<Arc<Target>>, Error> {
    loop {
        let snapshot = catalog.borrow_and_update().clone();
        if let Some(config) = snapshot.catalog.provider(provider) {
            return Ok(Some(Arc::new(targets.build(config)?)));
        }
        tracing::warn!(
            provider,
            "no such provider in the catalog yet; waiting for it to be applied"
        );
        tokio::select! {
            () = shutdown.cancelled() => return Ok(None),
            changed = catalog.changed() => if changed.is_err() { return Ok(None) },
        }
    }
}

/// The provider's new configuration, or `None` to keep the current one.
fn refresh(
    catalog: &mut watch::Receiver<Arc<Snapshot>>,
    provider: &str,
    targets: &Targets,
) -> Option<Arc<Target>> {
    let snapshot = catalog.borrow_and_update().clone();
    let Some(config) = snapshot.catalog.provider(provider) else {
        tracing::error!(
            provider,
            revision = snapshot.revision,
            "provider removed from the catalog; keeping its last configuration until this process is stopped"
        );
        return None;
    };
    match targets.build(config) {
        Ok(target) => {
            tracing::info!(
                provider,
                revision = snapshot.revision,
                "provider configuration updated"
            );
            Some(Arc::new(target))
        }
        Err(err) => {
            tracing::error!(provider, error = %err, "new provider configuration unusable; keeping the previous one");
            None
        }
    }
}

/// Follows the operator's pause of the provider for the life of the process.
async fn watch_pause(shared: Arc<Shared>, shutdown: Shutdown) -> Result<(), Error> {
    let pauses = shared
        .nats
        .jetstream
        .get_key_value(topology::PAUSES_BUCKET)
        .await
        .map_err(switchyard_core::Error::nats)?;
    loop {
        let mut watch = match pauses.watch_with_history(&shared.provider).await {
            Ok(watch) => watch,
            Err(err) => {
                tracing::warn!(error = %err, "cannot watch the pause; trying again");
                tokio::select! {
                    () = shutdown.cancelled() => return Ok(()),
                    () = tokio::time::sleep(SETTLE_RETRY) => continue,
                }
            }
        };
        loop {
            let entry = tokio::select! {
                () = shutdown.cancelled() => return Ok(()),
                entry = watch.next() => entry,
            };
            let Some(Ok(entry)) = entry else { break };
            let pause = (entry.operation == kv::Operation::Put)
                .then(|| serde_json::from_slice::<Pause>(&entry.value).ok())
                .flatten();
            let was = shared.paused.swap(pause.is_some(), Ordering::Relaxed);
            match pause {
                Some(pause) if !was => {
                    tracing::warn!(
                        provider = shared.provider,
                        reason = pause.reason,
                        by = pause.by,
                        "paused by an operator; not sending"
                    );
                }
                None if was => tracing::info!(provider = shared.provider, "resumed by an operator"),
                _ => {}
            }
        }
    }
}

/// Keeps the provider's dead-letter gauge current while this replica is active.
async fn watch_dead_letters(shared: &Arc<Shared>, active: &Shutdown) {
    let labels = ProviderLabels {
        provider: shared.provider.clone(),
    };
    let subject = topology::dlq_subject(&shared.provider);
    loop {
        // A failed read keeps the last figure.
        if let Ok(counts) =
            topology::subject_counts(&shared.nats.jetstream, topology::DLQ, &subject).await
        {
            let count = counts.values().sum::<u64>();
            metrics::metrics()
                .dlq_depth
                .get_or_create(&labels)
                .set(i64::try_from(count).unwrap_or(i64::MAX));
        }
        tokio::select! {
            () = active.cancelled() => return,
            () = tokio::time::sleep(BACKLOG_EVERY) => {}
        }
    }
}

/// Answers the control API's requests while this replica is active.
async fn answer_operators(shared: &Arc<Shared>, active: &Shutdown) {
    let mut requests = match shared
        .nats
        .client
        .subscribe(operator::control_subject(&shared.provider))
        .await
    {
        Ok(requests) => requests,
        Err(err) => {
            tracing::warn!(error = %err, "cannot answer operator requests");
            return;
        }
    };
    loop {
        let request = tokio::select! {
            () = active.cancelled() => break,
            request = requests.next() => request,
        };
        let Some(request) = request else { break };
        let Some(reply) = request.reply else { continue };
        if let Ok(Command::ResetBreaker) = serde_json::from_slice(&request.payload) {
            let reset = {
                let mut breaker = shared.breaker.lock().expect("breaker lock");
                breaker
                    .reset()
                    .map(|transition| (transition, breaker.cool_down()))
            };
            if let Some((transition, cool_down)) = reset {
                shared.breaker_changed(transition, cool_down).await;
            }
        }
        let status = serde_json::to_vec(&shared.live_status()).expect("status serializes");
        if let Err(err) = shared.nats.client.publish(reply, status.into()).await {
            tracing::warn!(error = %err, "operator answer not sent");
        }
    }
    let _ = requests.unsubscribe().await;
}

impl Shared {
    /// What the control API shows of this process.
    fn live_status(&self) -> LiveStatus {
        let now = Instant::now();
        let (breaker, retry_in) = {
            let breaker = self.breaker.lock().expect("breaker lock");
            let retry_in = breaker.pull_allowance(now).err().unwrap_or_default();
            (breaker.state(), retry_in)
        };
        let limiter = self.limiter.snapshot();
        let last = self.last.lock().expect("last outcomes lock");
        LiveStatus {
            instance: self.instance.clone(),
            breaker: Some(breaker),
            breaker_retry_in_ms: retry_in.as_millis() as u64,
            paused: self.paused.load(Ordering::Relaxed),
            rate_per_second: limiter.rate_per_second,
            burst: limiter.burst,
            tokens: limiter.tokens,
            provider_pause_ms: self.limiter.paused_for().unwrap_or_default().as_millis() as u64,
            in_flight: self.in_flight.load(Ordering::Relaxed),
            last_success: last.success.clone(),
            last_failure: last.failure.as_ref().map(|(at, _)| at.clone()),
            last_failure_reason: last.failure.as_ref().map(|(_, why)| why.clone()),
        }
    }

    /// Loads the breaker state of the provider from KV.
    async fn restore_breaker(&self) {
        let record = match self.breakers.get(&self.provider).await {
            Ok(Some(bytes)) => serde_json::from_slice::<BreakerRecord>(&bytes).ok(),
            Ok(None) => None,
            Err(err) => {
                tracing::warn!(error = %err, "cannot read the breaker state; starting closed");
                None
            }
        };
        let state = record.as_ref().map_or(State::Closed, |r| r.state);
        metrics::metrics()
            .breaker_state
            .get_or_create(&ProviderLabels {
                provider: self.provider.clone(),
            })
            .set(breaker_gauge(state));
        let Some(record) = record.filter(|r| r.state != State::Closed) else {
            return;
        };
        let now_ms = time::OffsetDateTime::now_utc().unix_timestamp_nanos() as i64 / 1_000_000;
        let open_until = record.opened_at_ms.unwrap_or(now_ms) + record.cool_down_ms as i64;
        let remaining = Duration::from_millis(open_until.saturating_sub(now_ms).max(0) as u64);
        self.breaker.lock().expect("breaker lock").restore_open(
            Instant::now(),
            remaining,
            Duration::from_millis(record.cool_down_ms),
        );
        tracing::warn!(
            provider = self.provider,
            remaining_s = remaining.as_secs(),
            "the breaker was open; honouring it"
        );
    }

    /// Persists, logs, counts and publishes a breaker transition.
    async fn breaker_changed(&self, transition: Transition, cool_down: Duration) {
        tracing::warn!(provider = self.provider, from = %transition.from, to = %transition.to, reason = transition.reason, "breaker");
        self.outcomes.breaker(&transition);
        let metrics = metrics::metrics();
        metrics
            .breaker_state
            .get_or_create(&ProviderLabels {
                provider: self.provider.clone(),
            })
            .set(breaker_gauge(transition.to));
        metrics
            .breaker_transitions
            .get_or_create(&TransitionLabels {
                provider: self.provider.clone(),
                from: transition.from.to_string(),
                to: transition.to.to_string(),
            })
            .inc();
        let now_ms = time::OffsetDateTime::now_utc().unix_timestamp_nanos() as i64 / 1_000_000;
        let record = BreakerRecord {
            state: transition.to,
            opened_at_ms: (transition.to == State::Open).then_some(now_ms),
            cool_down_ms: cool_down.as_millis() as u64,
        };
        let value = serde_json::to_vec(&record).expect("breaker records serialize");
        if let Err(err) = self.breakers.put(&self.provider, value.into()).await {
            tracing::warn!(error = %err, "breaker state not stored");
        }
    }
}

/// Everything one message's delivery needs.
struct Delivery {
    shared: Arc<Shared>,
    target: Arc<Target>,
    active: Shutdown,
}

/// Why a message left without a counted attempt.
enum Deferral {
    /// Hand it back (shutdown or lease loss).
    HandBack,
    /// Try again after this long.
    After(Duration),
}

impl Delivery {
    async fn handle(self, message: jetstream::Message, turn: Option<Turn>) {
        self.shared.in_flight.fetch_add(1, Ordering::Relaxed);
        let shared = self.shared.clone();
        self.work(message, turn).await;
        shared.in_flight.fetch_sub(1, Ordering::Relaxed);
    }

    async fn work(self, message: jetstream::Message, turn: Option<Turn>) {
        let Ok(info) = message.info() else {
            tracing::error!(subject = %message.subject, "message without JetStream metadata");
            return;
        };
        let (sequence, delivered) = (info.stream_sequence, info.delivered);
        let message_headers = message.headers.as_ref();
        let header = |name| headers::get(message_headers, name).unwrap_or("").to_owned();
        let (event_id, route) = (header(headers::EVENT_ID), header(headers::ROUTE));
        let idempotency_key = match (event_id.is_empty(), route.is_empty()) {
            (false, false) => ledger::delivery_key(
                &event_id,
                &route,
                headers::get(message_headers, headers::REDELIVERY),
            ),
            _ => headers::get(message_headers, headers::NATS_MSG_ID)
                .map(str::to_owned)
                .unwrap_or_else(|| format!("deliver-{sequence}")),
        };
        let consumer = topology::delivery_consumer(&self.shared.provider);
        let span = telemetry::process_span(&message, &consumer, &event_id);
        let work = async {
            if let Some(turn) = &turn {
                turn.wait().await;
                if let Some(wait) = self.earlier_pending(&message, sequence, delivered).await {
                    return self.settle(&message, AckKind::Nak(Some(wait))).await;
                }
            }
            let ledger_key = Ledger::key(&idempotency_key);
            let record = match self.shared.ledger.get(&ledger_key).await {
                Ok(record) => record,
                Err(err) => {
                    tracing::warn!(error = %err, "cannot read the delivery record; trying later");
                    return self
                        .settle(&message, AckKind::Nak(Some(SETTLE_RETRY)))
                        .await;
                }
            };
            if record.delivered {
                tracing::info!(
                    idempotency_key,
                    "already delivered; acking without sending again"
                );
                return self.settle(&message, AckKind::Ack).await;
            }
            self.attempt(
                &message,
                &idempotency_key,
                &ledger_key,
                record,
                &event_id,
                &route,
            )
            .await;
        };
        keep_alive(&message, work.instrument(span)).await;
    }

    /// A delay when an earlier message with the same ordering key is still owed.
    async fn earlier_pending(
        &self,
        message: &jetstream::Message,
        sequence: u64,
        delivered: i64,
    ) -> Option<Duration> {
        match self
            .shared
            .deliver
            .get_first_raw_message_by_subject(message.subject.as_str(), 0)
            .await
        {
            Ok(first) if first.sequence < sequence => {
                let step = 250u64 << (delivered.clamp(1, 6) - 1);
                Some(Duration::from_millis(step.min(5_000)))
            }
            Ok(_) => None,
            Err(err) => {
                tracing::warn!(error = %err, "cannot check the ordering key; waiting");
                Some(SETTLE_RETRY)
            }
        }
    }

    async fn attempt(
        &self,
        message: &jetstream::Message,
        idempotency_key: &str,
        ledger_key: &str,
        mut record: Record,
        event_id: &str,
        route: &str,
    ) {
        let probe = match self.pace().await {
            Ok(probe) => probe,
            Err(Deferral::HandBack) => {
                return self.settle(message, AckKind::Nak(Some(HAND_BACK))).await;
            }
            Err(Deferral::After(delay)) => {
                return self.settle(message, AckKind::Nak(Some(delay))).await;
            }
        };
        let (mut answer, credentials) = self
            .send(message, idempotency_key, record.attempts + 1)
            .await;
        let mut verdict = classify(&answer, &self.target.provider.retry);
        if verdict == Verdict::Unauthorized && self.target.auth.unauthorized(&credentials).await {
            tracing::info!("401 with a cached token; retrying once with a fresh one");
            (answer, _) = self
                .send(message, idempotency_key, record.attempts + 1)
                .await;
            verdict = classify(&answer, &self.target.provider.retry);
        }
        if let Some((remaining, reset)) = answer.budget {
            self.shared.limiter.limit_until_reset(remaining, reset);
        }
        // Only a provider that was called and failed counts against the breaker.
        let failed = verdict == Verdict::Retryable && !answer.not_sent;
        let transition = {
            let mut breaker = self.shared.breaker.lock().expect("breaker lock");
            breaker
                .record(Instant::now(), !failed, probe)
                .map(|transition| (transition, breaker.cool_down()))
        };
        if let Some((transition, cool_down)) = transition {
            self.shared.breaker_changed(transition, cool_down).await;
        }

        let policy = &self.target.provider.retry;
        let attempt = record.attempts + 1;
        record.last_status = answer.status;
        let reason = answer.reason();
        let category = match verdict {
            Verdict::Delivered => "delivered",
            Verdict::Deferred(_) => "deferred",
            Verdict::Retryable if attempt < policy.attempts() => "retry",
            Verdict::Retryable => "exhausted",
            Verdict::Unauthorized | Verdict::Rejected => "rejected",
        };
        let metrics = metrics::metrics();
        let provider = ProviderLabels {
            provider: self.shared.provider.clone(),
        };
        metrics
            .deliveries
            .get_or_create(&DeliveryLabels {
                provider: provider.provider.clone(),
                outcome: category.to_owned(),
                error: answer.error_kind().to_owned(),
            })
            .inc();
        match category {
            "retry" => {
                metrics.retries.get_or_create(&provider).inc();
            }
            "delivered" => {
                let now = time::OffsetDateTime::now_utc().unix_timestamp_nanos() as f64 / 1e9;
                metrics
                    .last_success
                    .get_or_create(&ProviderRouteLabels {
                        provider: provider.provider.clone(),
                        route: route.to_owned(),
                    })
                    .set(now);
            }
            _ => {}
        }
        if !answer.not_sent {
            metrics
                .delivery_duration
                .get_or_create(&provider)
                .observe(answer.latency.as_secs_f64());
        }
        {
            let mut last = self.shared.last.lock().expect("last outcomes lock");
            if verdict == Verdict::Delivered {
                last.success = Some(event::now_rfc3339());
            } else if category != "deferred" {
                let why = reason.clone().unwrap_or_else(|| category.to_owned());
                last.failure = Some((event::now_rfc3339(), why));
            }
        }
        self.shared.outcomes.attempt(&outcome::Attempt {
            event_id,
            route,
            attempt,
            status: answer.status,
            latency_ms: answer.latency.as_secs_f64() * 1000.0,
            category,
            error: Some(answer.error_kind()).filter(|kind| *kind != "none"),
            reason: reason.as_deref(),
        });
        match (verdict, category) {
            (Verdict::Delivered, _) => {
                record.delivered = true;
                if let Err(err) = self.shared.ledger.put(ledger_key, &record).await {
                    tracing::warn!(error = %err, "delivery record not stored; acking anyway");
                }
                self.settle(message, AckKind::Ack).await;
            }
            (Verdict::Deferred(delay), _) => {
                tracing::info!(
                    delay_ms = delay.as_millis() as u64,
                    status = answer.status,
                    "the provider asked for a pause; pausing every delivery"
                );
                self.shared.limiter.pause_for(delay);
                self.settle(message, AckKind::Nak(Some(delay))).await;
            }
            (_, "retry") => {
                record.attempts = attempt;
                let delay = policy.delay_after(attempt, fastrand::f64());
                tracing::info!(
                    reason,
                    delay_ms = delay.as_millis() as u64,
                    "attempt failed; will retry"
                );
                if let Err(err) = self.shared.ledger.put(ledger_key, &record).await {
                    tracing::warn!(error = %err, "attempt count not stored");
                }
                self.settle(message, AckKind::Nak(Some(delay))).await;
            }
            (_, category) => {
                tracing::warn!(category, reason, "dead-lettering");
                match self.dead_letter(message, category, attempt, &answer).await {
                    Ok(()) => self.settle(message, AckKind::Ack).await,
                    Err(err) => {
                        tracing::error!(error = %err, "dead letter not stored; will retry");
                        self.settle(message, AckKind::Nak(Some(SETTLE_RETRY))).await;
                    }
                }
            }
        }
    }

    /// Waits until the pace and the breaker let a request go; `Ok(true)` when it is
    /// the breaker's probe.
    async fn pace(&self) -> Result<bool, Deferral> {
        loop {
            if self.active.is_shutting_down() {
                return Err(Deferral::HandBack);
            }
            // An operator pause also holds back what was pulled before it.
            if self.shared.paused.load(Ordering::Relaxed) {
                return Err(Deferral::After(HELD_RETRY));
            }
            if let Err(wait) = self.shared.limiter.try_acquire() {
                let step = wait.min(PACING_STEP);
                metrics::metrics()
                    .rate_limit_wait
                    .get_or_create(&ProviderLabels {
                        provider: self.shared.provider.clone(),
                    })
                    .inc_by(step.as_secs_f64());
                tokio::select! {
                    () = self.active.cancelled() => return Err(Deferral::HandBack),
                    () = tokio::time::sleep(wait.min(PACING_STEP)) => continue,
                }
            }
            let (permit, transition) = {
                let mut breaker = self.shared.breaker.lock().expect("breaker lock");
                let (permit, transition) = breaker.permit(Instant::now());
                (permit, transition.map(|t| (t, breaker.cool_down())))
            };
            if let Some((transition, cool_down)) = transition {
                self.shared.breaker_changed(transition, cool_down).await;
            }
            match permit {
                Permit::Allow => return Ok(false),
                Permit::Probe => return Ok(true),
                Permit::Wait(wait) if wait > PACING_STEP => {
                    return Err(Deferral::After(wait.min(HELD_RETRY)));
                }
                Permit::Wait(wait) => tokio::time::sleep(wait).await,
            }
        }
    }

    /// Sends the message once with its metadata, trace context and credentials;
    /// returns the answer and the credentials used.
    async fn send(
        &self,
        message: &jetstream::Message,
        idempotency_key: &str,
        attempt: u32,
    ) -> (Answer, reqwest::header::HeaderMap) {
        let message_headers = message.headers.as_ref();
        let mut extra = reqwest::header::HeaderMap::new();
        let mut put = |name: &str, value: &str| {
            if let (Ok(name), Ok(value)) = (
                HeaderName::from_bytes(name.as_bytes()),
                HeaderValue::from_str(value),
            ) {
                extra.insert(name, value);
            }
        };
        put(
            "content-type",
            headers::get(message_headers, headers::CONTENT_TYPE).unwrap_or("application/json"),
        );
        put("idempotency-key", idempotency_key);
        put("switchyard-attempt", &attempt.to_string());
        for name in [
            headers::EVENT_ID,
            headers::SOURCE,
            headers::EVENT_TYPE,
            headers::ROUTE,
            headers::MAPPING,
        ] {
            if let Some(value) = headers::get(message_headers, name) {
                put(name, value);
            }
        }
        let span = self.target.sender.span(attempt - 1);
        let mut trace = HeaderMap::new();
        headers::inject_span(&span, &mut trace);
        for name in ["traceparent", "tracestate"] {
            if let Some(value) = headers::get(Some(&trace), name) {
                put(name, value);
            }
        }
        let sent = async {
            let credentials = match self
                .target
                .auth
                .headers(idempotency_key, &message.payload)
                .await
            {
                Ok(credentials) => credentials,
                Err(err) => {
                    let answer = Answer {
                        failure: Some(Failure {
                            kind: FailureKind::Other,
                            message: err.to_string(),
                        }),
                        not_sent: true,
                        ..Default::default()
                    };
                    return (answer, reqwest::header::HeaderMap::new());
                }
            };
            extra.extend(credentials.clone());
            let body = message.payload.clone();
            (self.target.sender.send(body, extra).await, credentials)
        }
        .instrument(span.clone())
        .await;
        sent.0.trace(&span);
        sent
    }

    /// Publishes the original with the failure's metadata to `dlq.<provider>` and waits
    /// until JetStream has stored it.
    async fn dead_letter(
        &self,
        message: &jetstream::Message,
        category: &str,
        attempts: u32,
        answer: &Answer,
    ) -> Result<(), String> {
        let mut out = message.headers.clone().unwrap_or_default();
        let original_id = headers::get(Some(&out), headers::NATS_MSG_ID)
            .map(str::to_owned)
            .unwrap_or_else(|| {
                format!(
                    "deliver-{}",
                    message.info().map(|i| i.stream_sequence).unwrap_or(0)
                )
            });
        out.insert(headers::NATS_MSG_ID, format!("{original_id}:dlq").as_str());
        out.insert(headers::FAILURE_CATEGORY, category);
        let reason = answer.reason().unwrap_or_default();
        out.insert(
            headers::FAILURE_REASON,
            headers::sanitize_value(&reason).as_str(),
        );
        out.insert(headers::ATTEMPTS, attempts.to_string().as_str());
        if let Some(status) = answer.status {
            out.insert(headers::LAST_STATUS, status.to_string().as_str());
        }
        if !answer.excerpt.is_empty() {
            out.insert(headers::RESPONSE_EXCERPT, answer.excerpt.as_str());
        }
        let subject = topology::dlq_subject(&self.shared.provider);
        let span = telemetry::publish_span(&subject, &mut out, message.payload.len());
        async {
            self.shared
                .nats
                .jetstream
                .publish_with_headers(subject, out, message.payload.clone())
                .await?
                .await
        }
        .instrument(span)
        .await
        .map_err(|err| err.to_string())?;
        Ok(())
    }

    /// Acks (waiting for the server) or NAKs the message, logging a failure once.
    async fn settle(&self, message: &jetstream::Message, kind: AckKind) {
        let result = match kind {
            AckKind::Ack => message.double_ack().await,
            other => message.ack_with(other).await,
        };
        if let Err(err) = result {
            tracing::warn!(error = %err, "could not settle the message; the server will redeliver it");
        }
    }
}

/// Runs `work` while telling the server every so often that the message is still being
/// worked on, so waiting for the pace or a slow provider never causes a redelivery.
async fn keep_alive(message: &jetstream::Message, work: impl std::future::Future<Output = ()>) {
    tokio::pin!(work);
    let mut progress = tokio::time::interval(ACK_WAIT / 3);
    progress.tick().await;
    loop {
        tokio::select! {
            () = &mut work => return,
            _ = progress.tick() => {
                let _ = message.ack_with(AckKind::Progress).await;
            }
        }
    }
}

/// The value of `switchyard_breaker_state` for a state.
fn breaker_gauge(state: State) -> i64 {
    match state {
        State::Closed => 0,
        State::HalfOpen => 1,
        State::Open => 2,
    }
}
