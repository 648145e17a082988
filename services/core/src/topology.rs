//! The JetStream streams and KV buckets Switchyard runs on.
//!
//! [`ensure_topology`] is idempotent: it creates what is missing, updates what differs
//! in ways the server can change in place, and fails with a list of differences when it
//! cannot (a retention or storage change needs an operator). It never leaves a
//! mismatch unreported.

use async_nats::jetstream::{
    self, kv,
    stream::{self, DiscardPolicy, RetentionPolicy, StorageType},
};

use crate::{Error, catalog, config::TopologySettings};

/// Raw events from every source: `ingest.<source>.<event_type>`.
pub const INGEST: &str = "INGEST";
/// Mapped events owed to providers: `deliver.<provider>.<route>`.
pub const DELIVER: &str = "DELIVER";
/// Dead letters: `dlq.<provider>`.
pub const DLQ: &str = "DLQ";
/// The attempt log: `outcome.<provider>`.
pub const OUTCOMES: &str = "OUTCOMES";

/// Delivered idempotency keys.
pub const DELIVERED_BUCKET: &str = "switchyard-delivered";
/// Circuit breaker state per provider.
pub const BREAKERS_BUCKET: &str = "switchyard-breakers";
/// Poll cursors per polling source.
pub const CURSORS_BUCKET: &str = "switchyard-cursors";
/// Leases: which replica is active for a provider or poller.
pub const LEASES_BUCKET: &str = "switchyard-leases";

/// Subject an event of `source` with `event_type` is published to.
pub fn ingest_subject(source: &str, event_type: &str) -> String {
    format!("ingest.{source}.{event_type}")
}

/// Subject a mapped event for `provider` via `route` is published to.
pub fn deliver_subject(provider: &str, route: &str) -> String {
    format!("deliver.{provider}.{route}")
}

/// Subject a dead letter for `provider` is published to.
pub fn dlq_subject(provider: &str) -> String {
    format!("dlq.{provider}")
}

/// Subject an attempt record for `provider` is published to.
pub fn outcome_subject(provider: &str) -> String {
    format!("outcome.{provider}")
}

/// Durable consumer name of the delivery process for `provider`.
pub fn delivery_consumer(provider: &str) -> String {
    format!("delivery-{provider}")
}

/// Durable consumer name shared by transform replicas.
pub const TRANSFORM_CONSUMER: &str = "transform";

/// Splits `ingest.<source>.<event_type>` into source and event type.
pub fn parse_ingest_subject(subject: &str) -> Option<(&str, &str)> {
    let rest = subject.strip_prefix("ingest.")?;
    let (source, event_type) = rest.split_once('.')?;
    (!source.is_empty() && !event_type.is_empty()).then_some((source, event_type))
}

/// What `ensure_topology` did to one stream or bucket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reconciled {
    /// It did not exist and was created.
    Created(String),
    /// It existed and was updated; the differences are listed.
    Updated(String, Vec<String>),
    /// It existed as wanted.
    Unchanged(String),
}

/// Creates or reconciles every stream and bucket; see the module docs.
pub async fn ensure_topology(
    js: &jetstream::Context,
    settings: &TopologySettings,
) -> Result<Vec<Reconciled>, Error> {
    let mut report = Vec::new();
    for config in stream_configs(settings) {
        report.push(reconcile_stream(js, config).await?);
    }
    for config in bucket_configs(settings) {
        report.push(reconcile_bucket(js, config).await?);
    }
    for line in &report {
        match line {
            Reconciled::Created(name) => tracing::info!(name, "created"),
            Reconciled::Updated(name, diffs) => tracing::info!(name, changes = ?diffs, "updated"),
            Reconciled::Unchanged(name) => tracing::debug!(name, "unchanged"),
        }
    }
    Ok(report)
}

/// The four streams as this version wants them.
pub fn stream_configs(settings: &TopologySettings) -> Vec<stream::Config> {
    let base = |name: &str, subject: &str, description: &str| stream::Config {
        name: name.to_owned(),
        subjects: vec![subject.to_owned()],
        description: Some(description.to_owned()),
        storage: StorageType::File,
        num_replicas: settings.replicas,
        duplicate_window: settings.duplicate_window,
        ..Default::default()
    };
    vec![
        stream::Config {
            retention: RetentionPolicy::Limits,
            max_age: settings.ingest_max_age,
            ..base(
                INGEST,
                "ingest.>",
                "Switchyard: raw events from every source",
            )
        },
        stream::Config {
            retention: RetentionPolicy::WorkQueue,
            max_bytes: settings.deliver_max_bytes,
            discard: DiscardPolicy::New,
            ..base(
                DELIVER,
                "deliver.>",
                "Switchyard: mapped events owed to providers",
            )
        },
        stream::Config {
            retention: RetentionPolicy::Limits,
            max_age: settings.dlq_max_age,
            ..base(DLQ, "dlq.>", "Switchyard: dead letters per provider")
        },
        stream::Config {
            retention: RetentionPolicy::Limits,
            max_age: settings.outcomes_max_age,
            duplicate_window: settings.duplicate_window.min(settings.outcomes_max_age),
            ..base(OUTCOMES, "outcome.>", "Switchyard: delivery attempt log")
        },
    ]
}

/// The KV buckets as this version wants them.
pub fn bucket_configs(settings: &TopologySettings) -> Vec<kv::Config> {
    let base = |bucket: &str, description: &str| kv::Config {
        bucket: bucket.to_owned(),
        description: description.to_owned(),
        history: 1,
        storage: StorageType::File,
        num_replicas: settings.replicas,
        ..Default::default()
    };
    vec![
        kv::Config {
            history: 16,
            ..base(catalog::BUCKET, "Switchyard: the catalog")
        },
        kv::Config {
            max_age: settings.idempotency_horizon,
            ..base(DELIVERED_BUCKET, "Switchyard: delivered idempotency keys")
        },
        base(BREAKERS_BUCKET, "Switchyard: circuit breaker state"),
        base(CURSORS_BUCKET, "Switchyard: poll cursors"),
        base(LEASES_BUCKET, "Switchyard: leases of active replicas"),
    ]
}

async fn reconcile_stream(
    js: &jetstream::Context,
    want: stream::Config,
) -> Result<Reconciled, Error> {
    let name = want.name.clone();
    let mut existing = match js.get_stream(&name).await {
        Ok(stream) => stream,
        Err(err) if is_not_found(&err) => {
            js.create_stream(want)
                .await
                .map_err(|err| Error::Topology(format!("cannot create stream {name}: {err}")))?;
            return Ok(Reconciled::Created(name));
        }
        Err(err) => return Err(Error::Nats(format!("cannot look up stream {name}: {err}"))),
    };
    let have = existing
        .info()
        .await
        .map_err(|err| Error::Nats(format!("cannot read stream {name}: {err}")))?
        .config
        .clone();
    let diffs = stream_differences(&have, &want);
    if diffs.is_empty() {
        return Ok(Reconciled::Unchanged(name));
    }
    let fixed = [
        ("retention", have.retention != want.retention),
        ("storage", have.storage != want.storage),
    ];
    if let Some((field, _)) = fixed.iter().find(|(_, changed)| *changed) {
        return Err(Error::Topology(format!(
            "stream {name} exists with a different {field} ({}); it cannot be changed in place — \
             move its data and delete the stream, or point Switchyard at another NATS account",
            diffs.join(", ")
        )));
    }
    js.update_stream(merge_stream(have, want))
        .await
        .map_err(|err| {
            Error::Topology(format!(
                "stream {name} differs ({}) and the server refused the update: {err}",
                diffs.join(", ")
            ))
        })?;
    Ok(Reconciled::Updated(name, diffs))
}

fn is_not_found(err: &jetstream::context::GetStreamError) -> bool {
    matches!(
        err.kind(),
        jetstream::context::GetStreamErrorKind::JetStream(inner)
            if inner.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND
    )
}

/// Takes the fields this version manages from `want` and keeps the rest of `have`,
/// so settings an operator added (placement, mirrors) survive an update.
fn merge_stream(have: stream::Config, want: stream::Config) -> stream::Config {
    stream::Config {
        subjects: want.subjects,
        retention: want.retention,
        max_age: want.max_age,
        max_bytes: want.max_bytes,
        discard: want.discard,
        num_replicas: want.num_replicas,
        duplicate_window: want.duplicate_window,
        description: want.description,
        ..have
    }
}

/// Lists the managed fields whose values differ, as `field: have -> want`.
pub fn stream_differences(have: &stream::Config, want: &stream::Config) -> Vec<String> {
    let mut diffs = Vec::new();
    let mut check = |field: &str, have: String, want: String| {
        if have != want {
            diffs.push(format!("{field}: {have} -> {want}"));
        }
    };
    check(
        "subjects",
        format!("{:?}", have.subjects),
        format!("{:?}", want.subjects),
    );
    check(
        "retention",
        format!("{:?}", have.retention),
        format!("{:?}", want.retention),
    );
    check(
        "storage",
        format!("{:?}", have.storage),
        format!("{:?}", want.storage),
    );
    check(
        "max_age",
        format!("{:?}", have.max_age),
        format!("{:?}", want.max_age),
    );
    check(
        "max_bytes",
        have.max_bytes.to_string(),
        want.max_bytes.to_string(),
    );
    check(
        "discard",
        format!("{:?}", have.discard),
        format!("{:?}", want.discard),
    );
    check(
        "replicas",
        have.num_replicas.to_string(),
        want.num_replicas.to_string(),
    );
    check(
        "duplicate_window",
        format!("{:?}", have.duplicate_window),
        format!("{:?}", want.duplicate_window),
    );
    diffs
}

async fn reconcile_bucket(js: &jetstream::Context, want: kv::Config) -> Result<Reconciled, Error> {
    let name = want.bucket.clone();
    let stream_name = format!("KV_{name}");
    let mut stream = match js.get_stream(&stream_name).await {
        Ok(stream) => stream,
        Err(err) if is_not_found(&err) => {
            js.create_key_value(want)
                .await
                .map_err(|err| Error::Topology(format!("cannot create KV bucket {name}: {err}")))?;
            return Ok(Reconciled::Created(name));
        }
        Err(err) => {
            return Err(Error::Nats(format!(
                "cannot look up KV bucket {name}: {err}"
            )));
        }
    };
    let have = stream
        .info()
        .await
        .map_err(|err| Error::Nats(format!("cannot read KV bucket {name}: {err}")))?
        .config
        .clone();
    let mut diffs = Vec::new();
    if have.max_messages_per_subject != want.history {
        diffs.push(format!(
            "history: {} -> {}",
            have.max_messages_per_subject, want.history
        ));
    }
    if have.max_age != want.max_age {
        diffs.push(format!("max_age: {:?} -> {:?}", have.max_age, want.max_age));
    }
    if have.num_replicas != want.num_replicas {
        diffs.push(format!(
            "replicas: {} -> {}",
            have.num_replicas, want.num_replicas
        ));
    }
    if have.storage != want.storage {
        return Err(Error::Topology(format!(
            "KV bucket {name} uses {:?} storage, this version needs {:?}; it cannot be changed in place",
            have.storage, want.storage
        )));
    }
    if diffs.is_empty() {
        return Ok(Reconciled::Unchanged(name));
    }
    js.update_key_value(want).await.map_err(|err| {
        Error::Topology(format!(
            "KV bucket {name} differs ({}) and the server refused the update: {err}",
            diffs.join(", ")
        ))
    })?;
    Ok(Reconciled::Updated(name, diffs))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn ingest_subjects_split_into_source_and_type() {
        assert_eq!(
            parse_ingest_subject("ingest.shop.order.created"),
            Some(("shop", "order.created"))
        );
        assert_eq!(parse_ingest_subject("ingest.shop"), None);
        assert_eq!(parse_ingest_subject("deliver.x.y"), None);
    }

    #[test]
    fn differences_name_field_and_values() {
        let settings = TopologySettings::default();
        let want = stream_configs(&settings).remove(0);
        let mut have = want.clone();
        have.max_age = Duration::from_secs(60);
        have.retention = RetentionPolicy::Interest;
        let diffs = stream_differences(&have, &want);
        assert_eq!(diffs.len(), 2, "{diffs:?}");
        assert!(
            diffs[0].starts_with("retention: Interest -> Limits"),
            "{diffs:?}"
        );
        assert!(diffs[1].starts_with("max_age: 60s -> "), "{diffs:?}");
    }
}
