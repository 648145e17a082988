//! Durable pull consumers that keep pulling through server restarts and deletions.
//!
//! Transform and delivery read their streams through [`Subscription`]: it creates (or
//! updates) the durable consumer, pulls in batches with heartbeats, and re-creates the
//! consumer or the pull when the server loses them. `next` returns `None` only when
//! the shutdown starts, so a consumer loop stops fetching on cancel and then drains.

use std::time::Duration;

use async_nats::jetstream::{
    self, AckKind,
    consumer::{
        PullConsumer,
        pull::{self, MessagesErrorKind},
    },
};
use futures::StreamExt;

use crate::{Error, shutdown::Shutdown};

/// A durable pull consumer and its message stream.
pub struct Subscription {
    jetstream: jetstream::Context,
    stream: String,
    config: pull::Config,
    batch: usize,
    messages: Option<pull::Stream>,
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
        let subscription = Self {
            jetstream: jetstream.clone(),
            stream: stream.to_owned(),
            config,
            batch: batch.max(1),
            messages: None,
            shutdown: shutdown.clone(),
        };
        subscription.consumer().await?;
        Ok(subscription)
    }

    async fn consumer(&self) -> Result<PullConsumer, Error> {
        let name = self.config.durable_name.clone().unwrap_or_default();
        self.jetstream
            .create_consumer_on_stream(self.config.clone(), self.stream.as_str())
            .await
            .map_err(|err| {
                Error::Nats(format!(
                    "cannot create consumer {name} on stream {}: {err}",
                    self.stream
                ))
            })
    }

    async fn open(&self) -> Result<pull::Stream, Error> {
        self.consumer()
            .await?
            .stream()
            .max_messages_per_batch(self.batch)
            .heartbeat(Duration::from_secs(5))
            .expires(Duration::from_secs(30))
            .messages()
            .await
            .map_err(Error::nats)
    }

    /// Hands back messages that were pulled but not yet taken with [`next`]: NAKed
    /// without delay, so another replica (or this one after a restart) gets them at
    /// once instead of after `ack_wait`.
    ///
    /// [`next`]: Subscription::next
    pub async fn close(mut self) {
        let Some(mut messages) = self.messages.take() else {
            return;
        };
        let mut released = 0usize;
        while let Ok(Some(Ok(message))) =
            tokio::time::timeout(Duration::from_millis(50), messages.next()).await
        {
            if message.ack_with(AckKind::Nak(None)).await.is_ok() {
                released += 1;
            }
        }
        if released > 0 {
            tracing::info!(released, stream = %self.stream, "handed back prefetched messages");
        }
    }

    /// The next message, or `None` once the shutdown has started.
    pub async fn next(&mut self) -> Option<jetstream::Message> {
        loop {
            if self.shutdown.is_shutting_down() {
                return None;
            }
            let messages = match &mut self.messages {
                Some(messages) => messages,
                None => {
                    match self.open().await {
                        Ok(messages) => self.messages = Some(messages),
                        Err(err) => {
                            tracing::warn!(error = %err, "cannot pull; retrying in 1s");
                            self.shutdown.sleep(Duration::from_secs(1)).await;
                        }
                    }
                    continue;
                }
            };
            let item = tokio::select! {
                () = self.shutdown.cancelled() => return None,
                item = messages.next() => item,
            };
            match item {
                Some(Ok(message)) => return Some(message),
                Some(Err(err)) => {
                    let reopen = matches!(
                        err.kind(),
                        MessagesErrorKind::ConsumerDeleted
                            | MessagesErrorKind::NoResponders
                            | MessagesErrorKind::RequestLimitExceeded
                            | MessagesErrorKind::PushBasedConsumer
                    );
                    tracing::warn!(error = %err, stream = %self.stream, reopen, "pull interrupted");
                    if reopen {
                        self.messages = None;
                        self.shutdown.sleep(Duration::from_millis(250)).await;
                    }
                }
                None => self.messages = None,
            }
        }
    }
}
