//! `switchyard.v1.RouteService`: a route's canary — how each version fares, and
//! promoting or rolling it back by hand — and the judge that rolls a failing canary
//! back on its own ([`judge`]).
//!
//! A canary's state lives in the record under the route's name in
//! [`topology::CANARIES_BUCKET`]; transform reads it and sends no events to a canary
//! whose record says it stopped. Promoting also changes the catalog: the route pins
//! the canary's version.

mod judge;

use async_nats::jetstream::{self, kv};
use switchyard_core::{
    canary::{CanaryRecord, CanaryState, Tally},
    catalog::{Canary, CanaryBy, CatalogStore, Route, Snapshot},
    config::Scope,
    event,
    outcome::{CanaryChange, OutcomeRecord, Record},
    topology,
};
use tonic::{Request, Response, Status};

pub use self::judge::judge;
use crate::{
    auth,
    error::ApiError,
    proto::{
        CanaryActionRequest, CanaryStatus, GetCanaryRequest, VersionResults, convert::timestamp,
        route_service_server::RouteService,
    },
};

/// Canaries of the catalog in `store`.
#[derive(Clone)]
pub struct RouteApi {
    store: CatalogStore,
    jetstream: jetstream::Context,
    records: kv::Store,
}

impl RouteApi {
    /// Serves the canaries of the catalog in `store`, with their records in
    /// `jetstream`.
    pub async fn new(
        store: CatalogStore,
        jetstream: jetstream::Context,
    ) -> Result<Self, switchyard_core::Error> {
        let records = bucket(&jetstream).await?;
        Ok(Self {
            store,
            jetstream,
            records,
        })
    }
}

async fn bucket(jetstream: &jetstream::Context) -> Result<kv::Store, switchyard_core::Error> {
    jetstream
        .get_key_value(topology::CANARIES_BUCKET)
        .await
        .map_err(switchyard_core::Error::nats)
}

/// The record of `route` and its KV revision, when there is one.
async fn read(records: &kv::Store, route: &str) -> Result<Option<(CanaryRecord, u64)>, ApiError> {
    let entry = records
        .entry(route)
        .await
        .map_err(|err| ApiError::nats_while(format!("the canary record of {route}"), err))?;
    Ok(entry.and_then(|entry| {
        serde_json::from_slice::<CanaryRecord>(&entry.value)
            .ok()
            .map(|record| (record, entry.revision))
    }))
}

/// A fresh record for `route`'s canary, starting now.
fn fresh(route: &Route, canary: &Canary) -> CanaryRecord {
    CanaryRecord {
        mapping: canary.mapping.clone(),
        stable: route.mapping.clone(),
        state: CanaryState::Active,
        since: event::now_rfc3339(),
        reason: String::new(),
        changed_at: String::new(),
        canary: Tally::default(),
        stable_tally: Tally::default(),
    }
}

/// Stores `record` for `route`: over `revision`, or as a new key when there is none.
async fn write(
    records: &kv::Store,
    route: &str,
    record: &CanaryRecord,
    revision: Option<u64>,
) -> Result<u64, Status> {
    let value = record.to_json().into();
    let written = match revision {
        Some(revision) => records
            .update(route, value, revision)
            .await
            .map_err(|err| err.to_string()),
        None => records
            .create(route, value)
            .await
            .map_err(|err| err.to_string()),
    };
    written.map_err(|err| {
        Status::aborted(format!(
            "the canary record of {route} changed meanwhile; try again ({err})"
        ))
    })
}

/// Moves `route`'s canary out of `active` and says so: in its record, an outcome
/// record on `outcome.<provider>` and a log line.
async fn leave(
    jetstream: &jetstream::Context,
    records: &kv::Store,
    route: &Route,
    mut record: CanaryRecord,
    revision: Option<u64>,
    state: CanaryState,
    reason: String,
) -> Result<CanaryRecord, Status> {
    record.state = state;
    record.reason = reason;
    record.changed_at = event::now_rfc3339();
    write(records, &route.name, &record, revision).await?;
    let change = OutcomeRecord {
        provider: route.provider.clone(),
        at: record.changed_at.clone(),
        record: Record::Canary(CanaryChange {
            route: route.name.clone(),
            mapping: record.mapping.to_string(),
            to: state.as_str().to_owned(),
            reason: record.reason.clone(),
        }),
    };
    let published = jetstream
        .publish(
            topology::outcome_subject(&route.provider),
            change.to_json().into(),
        )
        .await;
    if let Err(err) = published {
        tracing::warn!(route = route.name, error = %err, "could not record the canary's change");
    }
    tracing::warn!(
        route = route.name,
        canary = %record.mapping,
        state = state.as_str(),
        reason = record.reason,
        "canary left active"
    );
    Ok(record)
}

/// `<done> by <who>`, and `: <reason>` when one was given.
fn done_by(done: &str, by: &str, reason: &str) -> String {
    match reason.trim() {
        "" => format!("{done} by {by}"),
        reason => format!("{done} by {by}: {reason}"),
    }
}

fn results(mapping: &str, tally: &Tally) -> VersionResults {
    VersionResults {
        mapping: mapping.to_owned(),
        delivered: tally.delivered,
        mapping_errors: tally.mapping,
        contract_violations: tally.contract,
        rejected: tally.rejected,
        exhausted: tally.exhausted,
        retries: tally.retries,
        failed_percent: tally.failed_percent(),
        retries_per_delivery: tally.retries_per_delivery(),
    }
}

/// The status of `route`'s canary from its catalog entry (when it still has one)
/// and its record.
fn status(route_name: &str, canary: Option<&Canary>, record: &CanaryRecord) -> CanaryStatus {
    CanaryStatus {
        route: route_name.to_owned(),
        stable: record.stable.to_string(),
        canary: record.mapping.to_string(),
        percent: canary.map_or(0, |c| u32::from(c.percent)),
        by: match canary.map(|c| c.by) {
            Some(CanaryBy::OrderingKey) => "ordering_key",
            Some(CanaryBy::Event) => "event",
            None => "",
        }
        .to_owned(),
        state: record.state.as_str().to_owned(),
        reason: record.reason.clone(),
        since: timestamp(&record.since),
        changed_at: timestamp(&record.changed_at),
        stable_results: Some(results(&record.stable.to_string(), &record.stable_tally)),
        canary_results: Some(results(&record.mapping.to_string(), &record.canary)),
        min_events: canary.map_or(0, |c| c.min_events),
        margin: canary.map_or(0.0, |c| c.margin),
    }
}

impl RouteApi {
    /// The route and its canary, which it must have, and the catalog they were read
    /// from.
    async fn with_canary(&self, name: &str) -> Result<(Route, Canary, Snapshot), Status> {
        let snapshot = self.store.load().await.map_err(ApiError::from)?;
        let route = snapshot
            .catalog
            .route(name)
            .ok_or_else(|| Status::not_found(format!("no route named {name:?}")))?
            .clone();
        let canary = route
            .canary
            .clone()
            .ok_or_else(|| Status::failed_precondition(format!("route {name} has no canary")))?;
        Ok((route, canary, snapshot))
    }

    /// The route's record for its current canary: the stored one, or a fresh one.
    async fn record(
        &self,
        route: &Route,
        canary: &Canary,
    ) -> Result<(CanaryRecord, Option<u64>), Status> {
        Ok(match read(&self.records, &route.name).await? {
            Some((record, revision)) if record.mapping == canary.mapping => {
                (record, Some(revision))
            }
            Some((_, revision)) => (fresh(route, canary), Some(revision)),
            None => (fresh(route, canary), None),
        })
    }
}

#[tonic::async_trait]
impl RouteService for RouteApi {
    async fn get_canary(
        &self,
        request: Request<GetCanaryRequest>,
    ) -> Result<Response<CanaryStatus>, Status> {
        auth::require(&request, Scope::Read, "GetCanary")?;
        let name = request.into_inner().route;
        let snapshot = self.store.load().await.map_err(ApiError::from)?;
        let route = snapshot
            .catalog
            .route(&name)
            .ok_or_else(|| Status::not_found(format!("no route named {name:?}")))?;
        let record = match &route.canary {
            Some(canary) => self.record(route, canary).await?.0,
            // Promoted or rolled back and since taken off the route: what happened.
            None => match read(&self.records, &name).await? {
                Some((record, _)) if record.state != CanaryState::Active => record,
                _ => return Err(Status::not_found(format!("route {name} has no canary"))),
            },
        };
        Ok(Response::new(status(&name, route.canary.as_ref(), &record)))
    }

    async fn promote_canary(
        &self,
        request: Request<CanaryActionRequest>,
    ) -> Result<Response<CanaryStatus>, Status> {
        auth::require(&request, Scope::Admin, "PromoteCanary")?;
        let by = auth::caller(&request);
        let request = request.into_inner();
        let (route, canary, mut snapshot) = self.with_canary(&request.route).await?;
        let (record, record_revision) = self.record(&route, &canary).await?;
        let pinned = snapshot
            .catalog
            .routes
            .iter_mut()
            .find(|r| r.name == route.name)
            .expect("read above");
        pinned.mapping = canary.mapping.clone();
        pinned.canary = None;
        snapshot
            .catalog
            .validate()
            .map_err(|err| Status::failed_precondition(err.to_string()))?;
        self.store
            .save(&snapshot.catalog, snapshot.revision)
            .await
            .map_err(ApiError::from)?;
        let reason = done_by("promoted", &by, &request.reason);
        let record = leave(
            &self.jetstream,
            &self.records,
            &route,
            record,
            record_revision,
            CanaryState::Promoted,
            reason,
        )
        .await?;
        Ok(Response::new(status(&route.name, None, &record)))
    }

    async fn rollback_canary(
        &self,
        request: Request<CanaryActionRequest>,
    ) -> Result<Response<CanaryStatus>, Status> {
        auth::require(&request, Scope::Operate, "RollbackCanary")?;
        let by = auth::caller(&request);
        let request = request.into_inner();
        let (route, canary, _) = self.with_canary(&request.route).await?;
        let (record, revision) = self.record(&route, &canary).await?;
        if record.state != CanaryState::Active {
            return Ok(Response::new(status(&route.name, Some(&canary), &record)));
        }
        let reason = done_by("rolled back", &by, &request.reason);
        let record = leave(
            &self.jetstream,
            &self.records,
            &route,
            record,
            revision,
            CanaryState::RolledBack,
            reason,
        )
        .await?;
        Ok(Response::new(status(&route.name, Some(&canary), &record)))
    }
}
