//! Durable pull consumers that keep pulling through server restarts and deletions.
//!
//! Transform and delivery read their streams through [`Subscription`]: it creates (or
//! updates) the durable consumer and pulls in bounded batches, one request at a time,
//! re-creating the consumer when the server lost it. Because every pull request is
//! read to its end (its last message or the server's expiry notice), closing hands
//! every message this process was given back to the server — none is left on an
//! abandoned inbox waiting for `ack_wait`. `next` returns `None` only when the shutdown
//! starts, so a consumer loop stops fetching on cancel and then drains.

use std::time::Duration;

use async_nats::jetstream::{
    self, AckKind,
    consumer::{PullConsumer, pull},
};
use futures::StreamExt;
use tokio::task::JoinHandle;

use crate::{Error, shutdown::Shutdown};

/// How long the server holds one pull request open; also the longest [`Subscription::close`]
/// waits for the last request to end.
const PULL_EXPIRES: Duration = Duration::from_secs(2);
/// Delay before a handed-back message is delivered again; longer than the closing
/// subscription keeps reading, so it goes to another puller.
const HAND_BACK_DELAY: Duration = Duration::from_secs(1);

/// Where a subscription is in its pull cycle.
enum Pull {
    /// No request is open.
    Idle,
    /// A request is being issued; it runs as its own task so that a caller dropping
    /// `next` (in a `select!`) never abandons a request the server already holds.
    Issuing(JoinHandle<Result<(PullConsumer, pull::Batch), Error>>),
    /// A request is open and its messages are being read.
    Reading(Box<pull::Batch>),
}

/// A durable pull consumer and its current pull request.
pub struct Subscription {
    jetstream: jetstream::Context,
    stream: String,
    config: pull::Config,
    batch: usize,
    consumer: Option<PullConsumer>,
    pull: Pull,
    shutdown: Shutdown,
}

impl Subscription {
    /// Creates or updates the durable consumer `config` on `stream`; fails when the
    /// server refuses it, so a bad configuration stops start-up.
    pub async fn new(
        jetstream: &jetstream::Context,
        stream: &str,
        config: pull::Config,
        batch: usize,
        shutdown: &Shutdown,
    ) -> Result<Self, Error> {
        let consumer = create_consumer(jetstream, stream, &config).await?;
        Ok(Self {
            jetstream: jetstream.clone(),
            stream: stream.to_owned(),
            config,
            batch: batch.max(1),
            consumer: Some(consumer),
            pull: Pull::Idle,
            shutdown: shutdown.clone(),
        })
    }

    /// Starts issuing a pull request for at most `room` messages, re-creating the
    /// consumer first when it was lost.
    fn issue(&mut self, room: usize) -> Pull {
        let consumer = self.consumer.take();
        let (jetstream, stream, config) = (
            self.jetstream.clone(),
            self.stream.clone(),
            self.config.clone(),
        );
        let size = room.clamp(1, self.batch);
        Pull::Issuing(tokio::spawn(async move {
            let consumer = match consumer {
                Some(consumer) => consumer,
                None => create_consumer(&jetstream, &stream, &config).await?,
            };
            let batch = consumer
                .batch()
                .max_messages(size)
                .expires(PULL_EXPIRES)
                .messages()
                .await
                .map_err(Error::nats)?;
            Ok((consumer, batch))
        }))
    }

    /// Whether [`Subscription::next`] is worth calling with `room`: while a request is
    /// open any room will do, but a new request waits until at least half a batch
    /// fits, so a busy consumer pulls in full batches rather than one message per
    /// round trip.
    pub fn ready(&self, room: usize) -> bool {
        match self.pull {
            Pull::Idle => room >= self.batch.div_ceil(2),
            Pull::Issuing(_) | Pull::Reading(_) => room > 0,
        }
    }

    /// The next message, or `None` once the shutdown has started. `room` is how many
    /// messages the caller can start on right away: a new pull request asks for no
    /// more, so no message waits in a local buffer while its `ack_wait` runs out.
    /// Cancel-safe: dropping the future loses nothing.
    pub async fn next(&mut self, room: usize) -> Option<jetstream::Message> {
        loop {
            if self.shutdown.is_shutting_down() {
                return None;
            }
            match &mut self.pull {
                Pull::Idle => self.pull = self.issue(room),
                Pull::Issuing(task) => {
                    let issued = tokio::select! {
                        () = self.shutdown.cancelled() => return None,
                        issued = task => issued,
                    };
                    self.pull = Pull::Idle;
                    match issued {
                        Ok(Ok((consumer, batch))) => {
                            self.consumer = Some(consumer);
                            self.pull = Pull::Reading(Box::new(batch));
                        }
                        Ok(Err(err)) => {
                            tracing::warn!(error = %err, stream = %self.stream, "cannot pull; retrying in 1s");
                            self.shutdown.sleep(Duration::from_secs(1)).await;
                        }
                        Err(err) => tracing::error!(error = %err, "pull task failed"),
                    }
                }
                Pull::Reading(batch) => {
                    let item = tokio::select! {
                        () = self.shutdown.cancelled() => return None,
                        item = batch.next() => item,
                    };
                    match item {
                        Some(Ok(message)) => return Some(message),
                        Some(Err(err)) => {
                            // The server ended the request with an error status (consumer
                            // deleted, limits exceeded): start over with a fresh consumer.
                            tracing::warn!(error = %err, stream = %self.stream, "pull interrupted");
                            self.pull = Pull::Idle;
                            self.consumer = None;
                            self.shutdown.sleep(Duration::from_millis(250)).await;
                        }
                        None => self.pull = Pull::Idle,
                    }
                }
            }
        }
    }

    /// Reads the open pull request to its end and hands every message in it back
    /// (NAK with a short delay), so another replica, or this one after a restart, gets
    /// them at once instead of after `ack_wait`. Takes at most about [`PULL_EXPIRES`].
    ///
    /// Acks and NAKs are fire-and-forget writes, so this also flushes the connection:
    /// every settlement made before `close` reaches the server before the process lets
    /// go of its connection.
    pub async fn close(self) {
        let batch = match self.pull {
            Pull::Idle => None,
            Pull::Reading(batch) => Some(*batch),
            Pull::Issuing(task) => task.await.ok().and_then(Result::ok).map(|(_, batch)| batch),
        };
        let mut released = 0usize;
        if let Some(mut batch) = batch {
            while let Some(item) = batch.next().await {
                if let Ok(message) = item
                    && message
                        .ack_with(AckKind::Nak(Some(HAND_BACK_DELAY)))
                        .await
                        .is_ok()
                {
                    released += 1;
                }
            }
        }
        if let Err(err) = self.jetstream.client().flush().await {
            tracing::warn!(error = %err, "could not flush acks before closing; the server redelivers what it did not get");
        }
        if released > 0 {
            tracing::info!(released, stream = %self.stream, "handed back pulled messages");
        }
    }
}

async fn create_consumer(
    jetstream: &jetstream::Context,
    stream: &str,
    config: &pull::Config,
) -> Result<PullConsumer, Error> {
    let name = config.durable_name.clone().unwrap_or_default();
    jetstream
        .create_consumer_on_stream(config.clone(), stream)
        .await
        .map_err(|err| {
            Error::nats_while(
                format!("cannot create consumer {name} on stream {stream}"),
                err,
            )
        })
}
