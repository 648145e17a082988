//! One message's way to the provider: wait for its ordering key's turn, skip it when
//! the ledger says it was delivered, wait for the pace and the breaker, send it, and
//! settle it by what the attempt led to (see `settle.rs`).

use std::{
    sync::{Arc, atomic::Ordering},
    time::Duration,
};

use async_nats::{
    HeaderMap,
    jetstream::{self, AckKind},
};
use reqwest::header::{HeaderName, HeaderValue};
use switchyard_core::{
    headers,
    ledger::{self, Ledger, Record},
    metrics::{self, ProviderLabels},
    outbound::{Failure, FailureKind},
    shutdown::Shutdown,
    telemetry, topology,
};
use tokio::{sync::mpsc, time::Instant};
use tracing::Instrument;

use crate::{
    ACK_WAIT, HAND_BACK, HELD_RETRY, PACING_STEP, SETTLE_RETRY, Shared,
    batch::Member,
    breaker::Permit,
    ordering::Turn,
    sender::{Answer, Verdict, classify},
    target::Target,
};

/// Everything one message's delivery needs from the process.
pub(crate) struct Delivery {
    pub(crate) shared: Arc<Shared>,
    pub(crate) target: Arc<Target>,
    pub(crate) active: Shutdown,
    /// Where a message joins a batch, when the provider takes batches.
    pub(crate) batches: Option<mpsc::Sender<Member>>,
}

/// One HTTP request to the provider: a single message or a batch.
pub(crate) struct Request {
    pub(crate) body: bytes::Bytes,
    /// Sent as `Idempotency-Key` and signed with the body.
    pub(crate) idempotency_key: String,
    /// Content type and Switchyard metadata.
    pub(crate) headers: reqwest::header::HeaderMap,
    /// The request's client span.
    pub(crate) span: tracing::Span,
    /// Bytes of the response body to keep (for per-item batch results).
    pub(crate) keep_body: Option<usize>,
}

/// A message owed to the provider, with what identifies it and its ledger record.
pub(crate) struct Owed<'a> {
    pub(crate) message: &'a jetstream::Message,
    pub(crate) event_id: &'a str,
    pub(crate) route: &'a str,
    /// Sent as `Idempotency-Key`; the same for every attempt of this delivery.
    pub(crate) idempotency_key: &'a str,
    /// The ledger entry of `idempotency_key`.
    pub(crate) ledger_key: String,
    /// Attempts counted so far and the last status.
    pub(crate) record: Record,
}

/// Why a message left without a counted attempt.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Deferral {
    /// Hand it back (shutdown or lease loss).
    HandBack,
    /// Try again after this long.
    After(Duration),
}

impl Delivery {
    /// Delivers `message`, counting it as in flight meanwhile.
    pub(crate) async fn handle(self, message: jetstream::Message, turn: Option<Turn>) {
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
                let earlier = self.shared.order.earlier_pending(
                    message.subject.as_str(),
                    message_headers,
                    sequence,
                    delivered,
                );
                if let Some(wait) = earlier.await {
                    return settle(&message, AckKind::Nak(Some(wait))).await;
                }
            }
            let ledger_key = Ledger::key(&idempotency_key);
            let record = match self.shared.ledger.get(&ledger_key).await {
                Ok(record) => record,
                Err(err) => {
                    tracing::warn!(error = %err, "cannot read the delivery record; trying later");
                    return settle(&message, AckKind::Nak(Some(SETTLE_RETRY))).await;
                }
            };
            if record.delivered {
                tracing::info!(
                    idempotency_key,
                    "already delivered; acking without sending again"
                );
                return settle(&message, AckKind::Ack).await;
            }
            let owed = Owed {
                message: &message,
                event_id: &event_id,
                route: &route,
                idempotency_key: &idempotency_key,
                ledger_key,
                record,
            };
            match &self.batches {
                Some(batches) if self.target.provider.batch.is_some() => {
                    self.join_batch(owed, batches).await;
                }
                _ => self.attempt(owed).await,
            }
        };
        keep_alive(&message, work.instrument(span)).await;
    }

    /// Makes one counted attempt and settles it.
    async fn attempt(&self, owed: Owed<'_>) {
        let probe = match self.pace().await {
            Ok(probe) => probe,
            Err(deferral) => return deferral.settle(owed.message).await,
        };
        let attempt = owed.record.attempts + 1;
        let (verdict, answer) = self.call(&self.request(&owed, attempt), probe).await;
        self.settle(owed, verdict, answer, None).await;
    }

    /// Sends one request (twice when a cached token is refused), applies the
    /// provider's rate-limit headers and counts the result on the breaker.
    pub(crate) async fn call(&self, request: &Request, probe: bool) -> (Verdict, Answer) {
        let (mut answer, credentials) = self.send(request).await;
        let mut verdict = classify(&answer, &self.target.provider.retry);
        if verdict == Verdict::Unauthorized && self.target.auth.unauthorized(&credentials).await {
            tracing::info!("401 with a cached token; retrying once with a fresh one");
            (answer, _) = self.send(request).await;
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
        (verdict, answer)
    }

    /// Waits until the pace and the breaker let a request go; `Ok(true)` when it is
    /// the breaker's probe.
    pub(crate) async fn pace(&self) -> Result<bool, Deferral> {
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
                    () = tokio::time::sleep(step) => continue,
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

    /// The request of attempt number `attempt` of one message, with its metadata.
    fn request(&self, owed: &Owed<'_>, attempt: u32) -> Request {
        let message_headers = owed.message.headers.as_ref();
        let mut request_headers = reqwest::header::HeaderMap::new();
        put(
            &mut request_headers,
            "content-type",
            headers::get(message_headers, headers::CONTENT_TYPE).unwrap_or("application/json"),
        );
        put(
            &mut request_headers,
            "switchyard-attempt",
            &attempt.to_string(),
        );
        for name in [
            headers::EVENT_ID,
            headers::SOURCE,
            headers::EVENT_TYPE,
            headers::ROUTE,
            headers::MAPPING,
        ] {
            if let Some(value) = headers::get(message_headers, name) {
                put(&mut request_headers, name, value);
            }
        }
        Request {
            body: owed.message.payload.clone(),
            idempotency_key: owed.idempotency_key.to_owned(),
            headers: request_headers,
            span: self.target.sender.span(attempt - 1, None),
            keep_body: None,
        }
    }

    /// Sends the request once with its trace context and credentials; returns the
    /// answer and the credentials used.
    async fn send(&self, request: &Request) -> (Answer, reqwest::header::HeaderMap) {
        let mut extra = request.headers.clone();
        put(&mut extra, "idempotency-key", &request.idempotency_key);
        let span = &request.span;
        let mut trace = HeaderMap::new();
        headers::inject_span(span, &mut trace);
        for name in ["traceparent", "tracestate"] {
            if let Some(value) = headers::get(Some(&trace), name) {
                put(&mut extra, name, value);
            }
        }
        let sent = async {
            let credentials = match self
                .target
                .auth
                .headers(&request.idempotency_key, &request.body)
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
            let answer = self
                .target
                .sender
                .send(request.body.clone(), extra, request.keep_body)
                .await;
            (answer, credentials)
        }
        .instrument(span.clone())
        .await;
        sent.0.trace(span);
        sent
    }
}

impl Deferral {
    /// Puts the message back without counting an attempt.
    pub(crate) async fn settle(self, message: &jetstream::Message) {
        let delay = match self {
            Self::HandBack => HAND_BACK,
            Self::After(delay) => delay,
        };
        settle(message, AckKind::Nak(Some(delay))).await;
    }
}

/// Sets a request header, skipping a name or value HTTP cannot carry.
pub(crate) fn put(map: &mut reqwest::header::HeaderMap, name: &str, value: &str) {
    if let (Ok(name), Ok(value)) = (
        HeaderName::from_bytes(name.as_bytes()),
        HeaderValue::from_str(value),
    ) {
        map.insert(name, value);
    }
}

/// Acks (waiting for the server) or NAKs the message, logging a failure once.
pub(crate) async fn settle(message: &jetstream::Message, kind: AckKind) {
    let result = match kind {
        AckKind::Ack => message.double_ack().await,
        other => message.ack_with(other).await,
    };
    if let Err(err) = result {
        tracing::warn!(error = %err, "could not settle the message; the server will redeliver it");
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
