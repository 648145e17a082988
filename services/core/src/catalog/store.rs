//! The catalog in JetStream KV, and the watch that keeps services current.
//!
//! The whole catalog is one JSON value under one key, so an apply is a single
//! compare-and-set: all-or-nothing, and two concurrent writers cannot interleave (the
//! loser sees [`Error::Conflict`]). Services hold a `watch::Receiver` of the latest
//! valid snapshot and rebuild their derived state when it changes.

use std::{sync::Arc, time::Duration};

use async_nats::jetstream::{
    self,
    kv::{self, Operation},
};
use tokio::sync::watch;

use super::Catalog;
use crate::{Error, nats::KvChanges, shutdown::Shutdown};

/// KV bucket holding the catalog.
pub const BUCKET: &str = "switchyard-catalog";
const KEY: &str = "catalog";

/// A catalog as read from KV, with the revision it was read at (0: never written).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Snapshot {
    /// The catalog.
    pub catalog: Catalog,
    /// KV revision of the stored value; pass it back to [`CatalogStore::save`].
    pub revision: u64,
}

/// Reads, writes and watches the catalog.
#[derive(Clone)]
pub struct CatalogStore {
    kv: kv::Store,
    jetstream: jetstream::Context,
}

impl CatalogStore {
    /// Opens the catalog bucket created by `ensure_topology`.
    pub async fn open(jetstream: &jetstream::Context) -> Result<Self, Error> {
        let kv = jetstream.get_key_value(BUCKET).await.map_err(|err| {
            Error::nats_while(
                format!("cannot open KV bucket {BUCKET} (has the topology been created?)"),
                err,
            )
        })?;
        Ok(Self {
            kv,
            jetstream: jetstream.clone(),
        })
    }

    /// Reads the current catalog; an empty one at revision 0 when none was written.
    pub async fn load(&self) -> Result<Snapshot, Error> {
        let entry = self.kv.entry(KEY).await.map_err(Error::nats)?;
        match entry {
            Some(entry) => decode(&entry),
            None => Ok(Snapshot::default()),
        }
    }

    /// Stores `catalog` if the stored revision is still `expected`; returns the new
    /// revision. The caller validates first.
    pub async fn save(&self, catalog: &Catalog, expected: u64) -> Result<u64, Error> {
        let value = serde_json::to_vec(catalog).expect("a catalog always serializes");
        let result = if expected == 0 {
            self.kv.create(KEY, value.into()).await.map_err(|err| {
                (
                    err.kind() == kv::CreateErrorKind::AlreadyExists,
                    err.to_string(),
                )
            })
        } else {
            self.kv
                .update(KEY, value.into(), expected)
                .await
                .map_err(|err| {
                    (
                        err.kind() == kv::UpdateErrorKind::WrongLastRevision,
                        err.to_string(),
                    )
                })
        };
        match result {
            Ok(revision) => Ok(revision),
            Err((true, _)) => Err(Error::Conflict {
                expected,
                actual: self.load().await?.revision,
            }),
            Err((false, message)) => Err(Error::nats(message)),
        }
    }

    /// Follows the catalog: the receiver always holds the latest valid snapshot.
    ///
    /// The key is re-read on each of its [`KvChanges`], and every [`RESYNC`].
    pub async fn watch(
        &self,
        shutdown: &Shutdown,
    ) -> Result<watch::Receiver<Arc<Snapshot>>, Error> {
        let mut changes = KvChanges::subscribe(
            self.jetstream.client(),
            format!("$KV.{BUCKET}.{KEY}"),
            RESYNC,
        )
        .await?;
        let initial = self.load().await?;
        let mut seen = initial.revision;
        let (sender, receiver) = watch::channel(Arc::new(initial));
        let store = self.clone();
        let stop = shutdown.clone();
        shutdown.spawn("catalog-watch", async move {
            while changes.next(&stop).await {
                let entry = match store.kv.entry(KEY).await {
                    Ok(Some(entry)) if entry.revision > seen => entry,
                    Ok(_) => continue,
                    Err(err) => {
                        tracing::warn!(error = %err, "cannot read the catalog; keeping the current one");
                        continue;
                    }
                };
                seen = entry.revision;
                match decode(&entry) {
                    Ok(snapshot) => {
                        tracing::info!(revision = snapshot.revision, "catalog changed");
                        sender.send_replace(Arc::new(snapshot));
                    }
                    Err(err) => tracing::error!(
                        revision = entry.revision,
                        error = %err,
                        "ignoring an invalid catalog in KV; keeping the previous one"
                    ),
                }
            }
            Ok::<(), Error>(())
        });
        Ok(receiver)
    }
}

/// How often watchers re-read the catalog even without a notification.
const RESYNC: Duration = Duration::from_secs(30);

fn decode(entry: &kv::Entry) -> Result<Snapshot, Error> {
    if matches!(entry.operation, Operation::Delete | Operation::Purge) {
        return Ok(Snapshot {
            catalog: Catalog::default(),
            revision: entry.revision,
        });
    }
    let catalog: Catalog = serde_json::from_slice(&entry.value)
        .map_err(|err| Error::Config(format!("stored catalog is not valid: {err}")))?;
    catalog.validate()?;
    Ok(Snapshot {
        catalog,
        revision: entry.revision,
    })
}
