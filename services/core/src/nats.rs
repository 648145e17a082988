//! The NATS connection every service shares.
//!
//! Connecting retries until `nats.connect_timeout` so services can start before NATS
//! is ready; once connected, the client reconnects forever and logs each change.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use async_nats::{Client, ConnectOptions, Event, jetstream};

use crate::{Error, config::NatsSettings};

/// A connected client and its JetStream context.
#[derive(Clone)]
pub struct Nats {
    /// Core NATS client.
    pub client: Client,
    /// JetStream context with the configured request timeout.
    pub jetstream: jetstream::Context,
}

/// Connects to NATS as `service`, retrying until the configured connect timeout.
pub async fn connect(settings: &NatsSettings, service: &str) -> Result<Nats, Error> {
    let name = settings
        .connection_name
        .clone()
        .unwrap_or_else(|| format!("switchyard-{service}"));
    let deadline = tokio::time::Instant::now() + settings.connect_timeout;
    let mut delay = Duration::from_millis(100);
    let (servers, shown) = (settings.servers()?, settings.display_servers());
    // Kept current by the connection's events; `/readyz` reads it.
    let up = Arc::new(AtomicBool::new(false));
    let client = loop {
        let events_up = up.clone();
        let mut options = ConnectOptions::new()
            .name(&name)
            .max_reconnects(None)
            .connection_timeout(settings.connect_timeout.min(Duration::from_secs(5)))
            .request_timeout(Some(settings.request_timeout))
            .event_callback(move |event| {
                let up = events_up.clone();
                async move {
                    match event {
                        Event::Connected => {
                            up.store(true, Ordering::Relaxed);
                            tracing::info!("NATS connection restored");
                        }
                        Event::Disconnected => {
                            up.store(false, Ordering::Relaxed);
                            tracing::warn!("NATS connection lost; reconnecting");
                        }
                        Event::ClientError(err) => {
                            tracing::warn!(error = %err, "NATS client error")
                        }
                        other => tracing::debug!(event = %other, "NATS event"),
                    }
                }
            });
        if let Some(file) = &settings.credentials_file {
            options = options.credentials_file(file).await.map_err(|err| {
                Error::Config(format!("nats.credentials_file {}: {err}", file.display()))
            })?;
        }
        match options.connect(servers.clone()).await {
            Ok(client) => break client,
            Err(err) if tokio::time::Instant::now() + delay < deadline => {
                tracing::info!(servers = %shown, error = %err, "waiting for NATS");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(2));
            }
            Err(err) => {
                return Err(Error::nats_while(
                    format!(
                        "cannot connect to {shown} within {:?}",
                        settings.connect_timeout
                    ),
                    err,
                ));
            }
        }
    };
    up.store(true, Ordering::Relaxed);
    crate::admin::watch(&up);
    let jetstream = jetstream::ContextBuilder::new()
        .timeout(settings.request_timeout)
        .build(client.clone());
    Ok(Nats { client, jetstream })
}

/// Changes to KV keys: each write to a key is also a message on
/// `$KV.<bucket>.<key>`, and a watcher re-reads what it follows on each. Subscribed
/// before the watcher's first read, so no change slips between the two; a re-read
/// every `resync` covers notifications lost while the connection was down.
pub struct KvChanges {
    client: Client,
    subject: String,
    updates: async_nats::Subscriber,
    resync: tokio::time::Interval,
}

impl KvChanges {
    /// Follows `subject` (`$KV.<bucket>.<key>`, or `.>` for every key).
    pub async fn subscribe(
        client: Client,
        subject: String,
        resync: Duration,
    ) -> Result<Self, Error> {
        let updates = client
            .subscribe(subject.clone())
            .await
            .map_err(Error::nats)?;
        let mut resync = tokio::time::interval(resync);
        resync.reset();
        Ok(Self {
            client,
            subject,
            updates,
            resync,
        })
    }

    /// Waits for a change or the next resync; `false` once `stop` is cancelled.
    pub async fn next(&mut self, stop: &crate::shutdown::Shutdown) -> bool {
        tokio::select! {
            () = stop.cancelled() => false,
            update = futures::StreamExt::next(&mut self.updates) => {
                if update.is_none() {
                    tracing::warn!(subject = self.subject, "KV notifications ended; re-subscribing");
                    stop.sleep(Duration::from_secs(1)).await;
                    match self.client.subscribe(self.subject.clone()).await {
                        Ok(subscription) => self.updates = subscription,
                        Err(err) => tracing::warn!(subject = self.subject, error = %err, "cannot re-subscribe to KV notifications"),
                    }
                }
                !stop.is_shutting_down()
            }
            _ = self.resync.tick() => true,
        }
    }
}
