//! The judge: counts what became of each version's events since a route's canary
//! started, and rolls the canary back when [`canary::judge`] says so.
//!
//! One control replica judges at a time (the lease `canary-judge`). For each active
//! canary it reads `outcome.<provider>` (every attempt names its mapping version)
//! and `dlq.<provider>` (what transform dead-lettered, with the version) from the
//! canary's start, so a restarted judge counts the same events again rather than
//! starting from zero.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use async_nats::jetstream::{
    self,
    consumer::{DeliverPolicy, pull::OrderedConfig},
    kv,
};
use futures::StreamExt;
use switchyard_core::{
    canary::{self, CanaryState, Tally},
    catalog::{CatalogStore, Route},
    headers, lease,
    metrics::{self, CanaryLabels, CanaryVersionLabels, RouteLabels},
    outcome::{FailureCategory, Outcome, OutcomeRecord},
    shutdown::Shutdown,
    topology,
};
use time::OffsetDateTime;

use super::{bucket, fresh, leave, read, write};

/// How often each canary is judged.
const EVERY: Duration = Duration::from_secs(1);
/// How often a canary's counts are written to its record while nothing else changes.
const RECORD_EVERY: Duration = Duration::from_secs(5);
/// The judge's lease: held by one control replica at a time.
const LEASE: &str = "canary-judge";
const LEASE_TTL: Duration = Duration::from_secs(10);

/// Judges every canary while this replica holds the lease, until `shutdown`.
pub async fn judge(
    jetstream: jetstream::Context,
    store: CatalogStore,
    shutdown: Shutdown,
) -> Result<(), switchyard_core::Error> {
    let records = bucket(&jetstream).await?;
    let instance = lease::default_instance();
    loop {
        let Some(mut held) =
            lease::acquire(&jetstream, LEASE, &instance, LEASE_TTL, &shutdown).await
        else {
            return Ok(());
        };
        let active = shutdown.child();
        let keep = async {
            held.keep(&active).await;
            active.trigger();
        };
        let judging = Judge {
            jetstream: &jetstream,
            store: &store,
            records: &records,
            counts: HashMap::new(),
        };
        tokio::join!(keep, judging.run(&active));
        if shutdown.is_shutting_down() {
            held.release().await;
            return Ok(());
        }
        tracing::warn!("lost the canary judge's lease; standing by again");
    }
}

struct Judge<'a> {
    jetstream: &'a jetstream::Context,
    store: &'a CatalogStore,
    records: &'a kv::Store,
    /// The counting of each route's active canary.
    counts: HashMap<String, Counting>,
}

impl Judge<'_> {
    async fn run(mut self, active: &Shutdown) {
        while !active.is_shutting_down() {
            if let Err(err) = self.once(active).await {
                tracing::warn!(error = %err, "could not judge the canaries; trying again");
            }
            active.sleep(EVERY).await;
        }
    }

    async fn once(&mut self, active: &Shutdown) -> Result<(), tonic::Status> {
        let snapshot = self
            .store
            .load()
            .await
            .map_err(crate::error::ApiError::from)?;
        let routes: Vec<&Route> = snapshot
            .catalog
            .routes
            .iter()
            .filter(|route| route.canary.is_some())
            .collect();
        self.counts.retain(|name, counting| {
            routes.iter().any(|route| {
                &route.name == name
                    && route.canary.as_ref().map(|c| &c.mapping) == Some(&counting.canary)
            })
        });
        for route in routes {
            let canary = route.canary.as_ref().expect("filtered");
            let (record, revision) = match read(self.records, &route.name).await? {
                Some((record, revision)) if record.mapping == canary.mapping => (record, revision),
                stale => {
                    // A new canary: its record starts the count.
                    let record = fresh(route, canary);
                    write(self.records, &route.name, &record, stale.map(|(_, r)| r)).await?;
                    tracing::info!(route = route.name, canary = %canary.mapping, percent = canary.percent, "canary taking events");
                    continue;
                }
            };
            if record.state != CanaryState::Active {
                self.counts.remove(&route.name);
                continue;
            }
            let counting = self
                .counts
                .entry(route.name.clone())
                .or_insert_with(|| Counting::start(self.jetstream, route, &record, active));
            let (stable, tried) = counting.tallies();
            export(route, &record.stable.to_string(), "stable", &stable);
            export(route, &record.mapping.to_string(), "canary", &tried);
            if let Some(reason) = canary::judge(canary, &tried, &stable) {
                let mut judged = record;
                judged.canary = tried;
                judged.stable_tally = stable;
                leave(
                    self.jetstream,
                    self.records,
                    route,
                    judged,
                    Some(revision),
                    CanaryState::RolledBack,
                    format!(
                        "rolled back automatically: {reason}; replay its dead letters through the stable version with `syctl dlq replay --all --route {}`",
                        route.name
                    ),
                )
                .await?;
                metrics::metrics()
                    .canary_rollbacks
                    .get_or_create(&RouteLabels {
                        route: route.name.clone(),
                    })
                    .inc();
                self.counts.remove(&route.name);
            } else if (record.canary, record.stable_tally) != (tried, stable)
                && counting.recorded.elapsed() >= RECORD_EVERY
            {
                let mut counted = record;
                counted.canary = tried;
                counted.stable_tally = stable;
                // A conflict means someone else wrote it (a rollback by hand): the
                // next round reads it.
                if write(self.records, &route.name, &counted, Some(revision))
                    .await
                    .is_ok()
                {
                    counting.recorded = tokio::time::Instant::now();
                }
            }
        }
        Ok(())
    }
}

/// Sets the per-version gauges of `route`.
fn export(route: &Route, mapping: &str, version: &str, tally: &Tally) {
    let metrics = metrics::metrics();
    for (result, count) in [
        ("delivered", tally.delivered),
        ("mapping", tally.mapping),
        ("contract", tally.contract),
        ("rejected", tally.rejected),
        ("exhausted", tally.exhausted),
        ("retries", tally.retries),
    ] {
        metrics
            .canary_events
            .get_or_create(&CanaryLabels {
                route: route.name.clone(),
                mapping: mapping.to_owned(),
                version: version.to_owned(),
                result: result.to_owned(),
            })
            .set(i64::try_from(count).unwrap_or(i64::MAX));
    }
    metrics
        .canary_failed_ratio
        .get_or_create(&CanaryVersionLabels {
            route: route.name.clone(),
            mapping: mapping.to_owned(),
            version: version.to_owned(),
        })
        .set(tally.failed_percent() / 100.0);
}

/// The counting of one canary: a task reading OUTCOMES and DLQ from its start.
struct Counting {
    canary: switchyard_core::catalog::MappingRef,
    /// Stable, then canary.
    tallies: Arc<Mutex<(Tally, Tally)>>,
    stop: Shutdown,
    recorded: tokio::time::Instant,
}

impl Drop for Counting {
    fn drop(&mut self) {
        self.stop.trigger();
    }
}

impl Counting {
    fn start(
        jetstream: &jetstream::Context,
        route: &Route,
        record: &canary::CanaryRecord,
        active: &Shutdown,
    ) -> Self {
        let tallies = Arc::new(Mutex::new((record.stable_tally, record.canary)));
        let stop = active.child();
        let since = OffsetDateTime::parse(
            &record.since,
            &time::format_description::well_known::Rfc3339,
        )
        .unwrap_or_else(|_| OffsetDateTime::now_utc());
        let versions = Versions {
            route: route.name.clone(),
            stable: record.stable.to_string(),
            canary: record.mapping.to_string(),
        };
        stop.spawn(
            "canary-count",
            count(
                jetstream.clone(),
                route.provider.clone(),
                versions,
                since,
                tallies.clone(),
                stop.clone(),
            ),
        );
        Self {
            canary: record.mapping.clone(),
            tallies,
            stop,
            recorded: tokio::time::Instant::now(),
        }
    }

    fn tallies(&self) -> (Tally, Tally) {
        *self.tallies.lock().expect("not poisoned")
    }
}

/// Which route and versions a counting is about.
struct Versions {
    route: String,
    stable: String,
    canary: String,
}

impl Versions {
    /// The tally `mapping` counts into: stable or canary, or neither.
    fn of<'t>(&self, mapping: &str, tallies: &'t mut (Tally, Tally)) -> Option<&'t mut Tally> {
        if mapping == self.stable {
            Some(&mut tallies.0)
        } else if mapping == self.canary {
            Some(&mut tallies.1)
        } else {
            None
        }
    }
}

/// Counts the route's events from `since` into `tallies` until `stop`; starts over
/// from `since` (and from zero) when a stream breaks off.
async fn count(
    jetstream: jetstream::Context,
    provider: String,
    versions: Versions,
    since: OffsetDateTime,
    tallies: Arc<Mutex<(Tally, Tally)>>,
    stop: Shutdown,
) -> Result<(), async_nats::Error> {
    let ordered = |stream: &'static str, subject: String| {
        let jetstream = jetstream.clone();
        async move {
            jetstream
                .get_stream(stream)
                .await?
                .create_consumer(OrderedConfig {
                    filter_subject: subject,
                    deliver_policy: DeliverPolicy::ByStartTime { start_time: since },
                    description: Some("canary judge".into()),
                    ..Default::default()
                })
                .await?
                .messages()
                .await
                .map_err(async_nats::Error::from)
        }
    };
    while !stop.is_shutting_down() {
        let opened = async {
            Ok::<_, async_nats::Error>((
                ordered(topology::OUTCOMES, topology::outcome_subject(&provider)).await?,
                ordered(topology::DLQ, topology::dlq_subject(&provider)).await?,
            ))
        };
        let (mut outcomes, mut dead) = match opened.await {
            Ok(streams) => streams,
            Err(err) => {
                tracing::warn!(route = versions.route, error = %err, "cannot read the canary's results; trying again");
                stop.sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        *tallies.lock().expect("not poisoned") = Default::default();
        loop {
            tokio::select! {
                () = stop.cancelled() => return Ok(()),
                message = outcomes.next() => match message {
                    Some(Ok(message)) => {
                        let Ok(record) = serde_json::from_slice::<OutcomeRecord>(&message.payload) else { continue };
                        let Some(attempt) = record.attempt() else { continue };
                        if attempt.route != versions.route {
                            continue;
                        }
                        let mut tallies = tallies.lock().expect("not poisoned");
                        if let Some(tally) = attempt.mapping.as_deref().and_then(|m| versions.of(m, &mut tallies)) {
                            match attempt.category {
                                Outcome::Delivered => tally.delivered += 1,
                                Outcome::Rejected => tally.rejected += 1,
                                Outcome::Exhausted => tally.exhausted += 1,
                                Outcome::Retry => tally.retries += 1,
                                Outcome::Deferred => {}
                            }
                        }
                    }
                    _ => break,
                },
                message = dead.next() => match message {
                    Some(Ok(message)) => {
                        let header = |name| headers::get(message.headers.as_ref(), name).unwrap_or_default();
                        if header(headers::ROUTE) != versions.route {
                            continue;
                        }
                        let mapping = header(headers::MAPPING);
                        let mut tallies = tallies.lock().expect("not poisoned");
                        let Some(tally) = versions.of(mapping, &mut tallies) else { continue };
                        match header(headers::FAILURE_CATEGORY).parse() {
                            Ok(FailureCategory::Mapping | FailureCategory::Filter) => tally.mapping += 1,
                            Ok(FailureCategory::Contract) => tally.contract += 1,
                            // Rejected and exhausted are counted from their attempts.
                            _ => {}
                        }
                    }
                    _ => break,
                },
            }
        }
        tracing::warn!(
            route = versions.route,
            "the canary's results broke off; counting again"
        );
        stop.sleep(Duration::from_secs(1)).await;
    }
    Ok(())
}
