//! One active replica per job (a provider's delivery, a source's poller), held by a
//! lease in KV.
//!
//! A lease is a key such as `delivery.<provider>` in `switchyard-leases`. The holder
//! renews it every third of its TTL with a compare-and-set on its revision, so two
//! holders can never both succeed. A standby watches the revision: once it has not
//! changed for a whole TTL (measured on the standby's own clock, so clock skew between
//! machines does not matter) the holder is gone and the standby takes the lease with
//! the same compare-and-set. A holder that cannot renew for two thirds of the TTL
//! stops on its own, before any standby may take over. A holder that stops cleanly
//! deletes the lease so a standby takes over at once.

use std::time::Duration;

use crate::{shutdown::Shutdown, topology};
use async_nats::jetstream::{
    self,
    kv::{self, Operation},
};
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

/// How often a standby looks at the lease.
const STANDBY_POLL: Duration = Duration::from_millis(500);

#[derive(Debug, Serialize, Deserialize)]
struct Holder {
    holder: String,
}

/// This replica's name in leases when none is configured: host name and process id.
pub fn default_instance() -> String {
    let host = std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .map(|name| name.trim().to_owned())
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| "localhost".into());
    format!("{host}-{}", std::process::id())
}

/// A held lease.
pub struct Lease {
    kv: kv::Store,
    key: String,
    value: bytes::Bytes,
    revision: u64,
    ttl: Duration,
    renewed: Instant,
}

/// Waits until this process holds the lease `key`, or `None` on shutdown.
pub async fn acquire(
    jetstream: &jetstream::Context,
    key: &str,
    instance: &str,
    ttl: Duration,
    shutdown: &Shutdown,
) -> Option<Lease> {
    // The bucket exists (start-up ensured the topology), so a failure to open it is
    // NATS being unavailable for a while, as during a cluster's leader election: wait
    // it out like any other unreadable lease, not stop the caller.
    let kv = loop {
        match jetstream.get_key_value(topology::LEASES_BUCKET).await {
            Ok(kv) => break kv,
            Err(err) => {
                tracing::warn!(lease = key, error = %err, "cannot open the lease bucket");
                shutdown.sleep(STANDBY_POLL).await;
                if shutdown.is_shutting_down() {
                    return None;
                }
            }
        }
    };
    let key = key.to_owned();
    let value: bytes::Bytes = serde_json::to_vec(&Holder {
        holder: instance.to_owned(),
    })
    .expect("holders serialize")
    .into();
    let mut seen: Option<(u64, Instant)> = None;
    let mut announced = String::new();
    loop {
        if shutdown.is_shutting_down() {
            return None;
        }
        let taken = match kv.entry(&key).await {
            Ok(None) => kv.create(&key, value.clone()).await.ok(),
            Ok(Some(entry)) if matches!(entry.operation, Operation::Delete | Operation::Purge) => {
                kv.update(&key, value.clone(), entry.revision).await.ok()
            }
            Ok(Some(entry)) => {
                let holder = serde_json::from_slice::<Holder>(&entry.value)
                    .map(|h| h.holder)
                    .unwrap_or_default();
                if holder != announced {
                    tracing::info!(
                        lease = key,
                        active = holder,
                        "standing by; another replica holds the lease"
                    );
                    announced = holder;
                }
                match seen {
                    Some((revision, since)) if revision == entry.revision => {
                        if since.elapsed() >= ttl {
                            tracing::warn!(
                                lease = key,
                                previous = announced,
                                "the lease was not renewed for {ttl:?}; taking over"
                            );
                            kv.update(&key, value.clone(), entry.revision).await.ok()
                        } else {
                            None
                        }
                    }
                    _ => {
                        seen = Some((entry.revision, Instant::now()));
                        None
                    }
                }
            }
            Err(err) => {
                tracing::warn!(lease = key, error = %err, "cannot read the lease");
                None
            }
        };
        if let Some(revision) = taken {
            tracing::info!(lease = key, instance, "holding the lease; active");
            return Some(Lease {
                kv,
                key,
                value,
                revision,
                ttl,
                renewed: Instant::now(),
            });
        }
        shutdown.sleep(STANDBY_POLL).await;
    }
}

impl Lease {
    /// Renews the lease until it is lost (returns) or `active` is cancelled.
    pub async fn keep(&mut self, active: &Shutdown) {
        let mut tick = tokio::time::interval(self.ttl / 3);
        tick.tick().await;
        loop {
            tokio::select! {
                () = active.cancelled() => return,
                _ = tick.tick() => {}
            }
            match self
                .kv
                .update(&self.key, self.value.clone(), self.revision)
                .await
            {
                Ok(revision) => {
                    self.revision = revision;
                    self.renewed = Instant::now();
                }
                Err(err) if err.kind() == kv::UpdateErrorKind::WrongLastRevision => {
                    tracing::error!(key = self.key, "another replica took the lease; stopping");
                    return;
                }
                Err(err) => {
                    // Stop before a standby may take over, so two never send at once.
                    if self.renewed.elapsed() >= self.ttl * 2 / 3 {
                        tracing::error!(key = self.key, error = %err, "cannot renew the lease; stopping");
                        return;
                    }
                    tracing::warn!(key = self.key, error = %err, "lease renewal failed; retrying");
                }
            }
        }
    }

    /// Gives the lease up so a standby takes over at once.
    pub async fn release(self) {
        if let Err(err) = self
            .kv
            .delete_expect_revision(&self.key, Some(self.revision))
            .await
        {
            tracing::warn!(key = self.key, error = %err, "could not release the lease; a standby takes over after its TTL");
        }
    }
}
