//! The JetStream streams and KV buckets Switchyard runs on.
//!
//! [`ensure_topology`] is idempotent: it creates what is missing, updates what differs
//! in ways the server can change in place, and fails with a list of differences when it
//! cannot (a retention or storage change needs an operator). It never leaves a
//! mismatch unreported.

use std::time::Duration;

use async_nats::jetstream::{
    self,
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
/// Operator pauses of providers.
pub const PAUSES_BUCKET: &str = "switchyard-pauses";
/// The state of each route's canary (taking events, rolled back, promoted).
pub const CANARIES_BUCKET: &str = "switchyard-canaries";

/// Subject an event of `source` with `event_type` is published to.
pub fn ingest_subject(source: &str, event_type: &str) -> String {
    format!("ingest.{source}.{event_type}")
}

/// Subject a mapped event for `provider` via `route` is published to.
pub fn deliver_subject(provider: &str, route: &str) -> String {
    format!("deliver.{provider}.{route}")
}

/// Subject of a mapped event with an ordering key: one subject per key, so the
/// stream can tell whether an earlier event with the same key is still owed.
pub fn ordered_deliver_subject(provider: &str, route: &str, key: &str) -> String {
    use sha2::{Digest, Sha256};
    let digest = Sha256::digest(key.as_bytes());
    let token: String = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
    format!("deliver.{provider}.{route}.{token}")
}

/// Subject a dead letter for `provider` is published to.
pub fn dlq_subject(provider: &str) -> String {
    format!("dlq.{provider}")
}

/// Subject an event that failed its source's contract is dead-lettered to. Catalog
/// names start with a letter or digit, so this never collides with a provider's.
pub fn source_dlq_subject(source: &str) -> String {
    format!("dlq._source.{source}")
}

/// Subject an attempt record for `provider` is published to.
pub fn outcome_subject(provider: &str) -> String {
    format!("outcome.{provider}")
}

/// Every subject of stream INGEST.
pub const ALL_INGEST: &str = "ingest.>";
/// Every subject of stream DELIVER.
pub const ALL_DELIVER: &str = "deliver.>";
/// Every subject of stream DLQ.
pub const ALL_DLQ: &str = "dlq.>";
/// Every subject of stream OUTCOMES.
pub const ALL_OUTCOMES: &str = "outcome.>";

/// The events of one source in INGEST.
pub fn source_ingest_filter(source: &str) -> String {
    format!("ingest.{source}.>")
}

/// What is owed to one provider in DELIVER (every route and ordering key).
pub fn provider_deliver_filter(provider: &str) -> String {
    format!("deliver.{provider}.>")
}

/// Whose dead letter a `dlq.*` subject holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeadLetterOwner<'a> {
    /// A delivery, or an event its route could not map, for this provider.
    Provider(&'a str),
    /// An event that broke this source's contract.
    Source(&'a str),
}

/// Splits `dlq.<provider>` or `dlq._source.<source>`.
pub fn parse_dlq_subject(subject: &str) -> Option<DeadLetterOwner<'_>> {
    let rest = subject.strip_prefix("dlq.")?;
    let owner = match rest.strip_prefix("_source.") {
        Some(source) => DeadLetterOwner::Source(source),
        None => DeadLetterOwner::Provider(rest),
    };
    match owner {
        DeadLetterOwner::Provider(name) | DeadLetterOwner::Source(name)
            if !name.is_empty() && !name.contains('.') =>
        {
            Some(owner)
        }
        _ => None,
    }
}

/// Splits `deliver.<provider>.<route>[.<key token>]` into provider and route.
pub fn parse_deliver_subject(subject: &str) -> Option<(&str, &str)> {
    let mut tokens = subject.strip_prefix("deliver.")?.split('.');
    let provider = tokens.next().filter(|t| !t.is_empty())?;
    let route = tokens.next().filter(|t| !t.is_empty())?;
    Some((provider, route))
}

/// The provider of `outcome.<provider>`.
pub fn parse_outcome_subject(subject: &str) -> Option<&str> {
    subject
        .strip_prefix("outcome.")
        .filter(|p| !p.is_empty() && !p.contains('.'))
}

/// Durable consumer name of the delivery process for `provider`.
pub fn delivery_consumer(provider: &str) -> String {
    format!("delivery-{provider}")
}

/// Durable consumer name shared by transform replicas.
pub const TRANSFORM_CONSUMER: &str = "transform";

/// The subject's shape with its variable parts named, e.g. `deliver.{provider}.{route}`:
/// a low-cardinality name for spans (OpenTelemetry's destination template).
pub fn subject_template(subject: &str) -> &'static str {
    let tokens = subject.split('.').count();
    match subject.split('.').next() {
        Some("ingest") => "ingest.{source}.{event_type}",
        Some("deliver") if tokens > 3 => "deliver.{provider}.{route}.{ordering_key}",
        Some("deliver") => "deliver.{provider}.{route}",
        Some("dlq") if subject.starts_with("dlq._source.") => "dlq._source.{source}",
        Some("dlq") => "dlq.{provider}",
        Some("outcome") => "outcome.{provider}",
        _ => "other",
    }
}

/// Splits `ingest.<source>.<event_type>` into source and event type.
pub fn parse_ingest_subject(subject: &str) -> Option<(&str, &str)> {
    let rest = subject.strip_prefix("ingest.")?;
    let (source, event_type) = rest.split_once('.')?;
    (!source.is_empty() && !event_type.is_empty()).then_some((source, event_type))
}

/// Messages stored in `stream` per subject matching `filter` (a wildcard gives one
/// entry per subject).
pub async fn subject_counts(
    jetstream: &jetstream::Context,
    stream: &str,
    filter: &str,
) -> Result<std::collections::BTreeMap<String, u64>, Error> {
    use futures::TryStreamExt;
    let stream = jetstream
        .get_stream_no_info(stream)
        .await
        .map_err(Error::nats)?;
    stream
        .info_with_subjects(filter)
        .await
        .map_err(Error::nats)?
        .map_ok(|(subject, count)| (subject, count as u64))
        .try_collect()
        .await
        .map_err(Error::nats)
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
    for config in stream_configs(settings)
        .into_iter()
        .chain(bucket_configs(settings))
    {
        report.push(reconcile_stream(js, config).await?);
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
        max_bytes: UNLIMITED,
        max_messages: UNLIMITED,
        max_messages_per_subject: UNLIMITED,
        max_consumers: -1,
        ..Default::default()
    };
    vec![
        stream::Config {
            retention: RetentionPolicy::Limits,
            max_age: settings.ingest_max_age,
            ..base(
                INGEST,
                ALL_INGEST,
                "Switchyard: raw events from every source",
            )
        },
        stream::Config {
            retention: RetentionPolicy::WorkQueue,
            max_bytes: settings.deliver_max_bytes,
            discard: DiscardPolicy::New,
            ..base(
                DELIVER,
                ALL_DELIVER,
                "Switchyard: mapped events owed to providers",
            )
        },
        stream::Config {
            retention: RetentionPolicy::Limits,
            max_age: settings.dlq_max_age,
            ..base(DLQ, ALL_DLQ, "Switchyard: dead letters per provider")
        },
        stream::Config {
            retention: RetentionPolicy::Limits,
            max_age: settings.outcomes_max_age,
            duplicate_window: settings.duplicate_window.min(settings.outcomes_max_age),
            ..base(OUTCOMES, ALL_OUTCOMES, "Switchyard: delivery attempt log")
        },
    ]
}

/// The KV buckets, as the streams that back them.
///
/// Buckets are created as streams directly: async-nats creates buckets after an
/// account-info request whose 2.9 answer it cannot parse, and the minimum server we
/// support is 2.9. The stream settings are those every NATS client uses for a bucket.
pub fn bucket_configs(settings: &TopologySettings) -> Vec<stream::Config> {
    let bucket = |name: &str, description: &str, history: i64, max_age: Duration| {
        let default_window = Duration::from_secs(120);
        stream::Config {
            name: format!("KV_{name}"),
            subjects: vec![format!("$KV.{name}.>")],
            description: Some(description.to_owned()),
            max_messages_per_subject: history,
            max_bytes: UNLIMITED,
            max_messages: UNLIMITED,
            max_consumers: -1,
            max_age,
            storage: StorageType::File,
            num_replicas: settings.replicas,
            allow_rollup: true,
            deny_delete: true,
            allow_direct: true,
            discard: DiscardPolicy::New,
            duplicate_window: if max_age.is_zero() {
                default_window
            } else {
                default_window.min(max_age)
            },
            ..Default::default()
        }
    };
    vec![
        bucket(
            catalog::BUCKET,
            "Switchyard: the catalog",
            16,
            Duration::ZERO,
        ),
        bucket(
            DELIVERED_BUCKET,
            "Switchyard: delivered idempotency keys",
            1,
            settings.idempotency_horizon,
        ),
        bucket(
            BREAKERS_BUCKET,
            "Switchyard: circuit breaker state",
            1,
            Duration::ZERO,
        ),
        bucket(
            CURSORS_BUCKET,
            "Switchyard: poll cursors",
            1,
            Duration::ZERO,
        ),
        bucket(
            LEASES_BUCKET,
            "Switchyard: leases of active replicas",
            1,
            Duration::ZERO,
        ),
        bucket(
            PAUSES_BUCKET,
            "Switchyard: operator pauses of providers",
            1,
            Duration::ZERO,
        ),
        bucket(
            CANARIES_BUCKET,
            "Switchyard: canary mapping versions of routes",
            1,
            Duration::ZERO,
        ),
    ]
}

/// The server's spelling of "no limit".
const UNLIMITED: i64 = -1;

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
        Err(err) => {
            return Err(Error::nats_while(
                format!("cannot look up stream {name}"),
                err,
            ));
        }
    };
    let have = existing
        .info()
        .await
        .map_err(|err| Error::nats_while(format!("cannot read stream {name}"), err))?
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
        max_messages_per_subject: want.max_messages_per_subject,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_subject_has_a_template_without_its_variable_parts() {
        let cases = [
            (
                ingest_subject("shop", "order.created"),
                "ingest.{source}.{event_type}",
            ),
            (
                deliver_subject("crm", "orders"),
                "deliver.{provider}.{route}",
            ),
            (
                ordered_deliver_subject("crm", "orders", "customer-7"),
                "deliver.{provider}.{route}.{ordering_key}",
            ),
            (dlq_subject("crm"), "dlq.{provider}"),
            (source_dlq_subject("shop"), "dlq._source.{source}"),
            (outcome_subject("crm"), "outcome.{provider}"),
        ];
        for (subject, template) in cases {
            assert_eq!(subject_template(&subject), template, "{subject}");
        }
    }

    #[test]
    fn built_subjects_parse_back_into_their_parts() {
        assert_eq!(
            parse_deliver_subject(&deliver_subject("crm", "orders")),
            Some(("crm", "orders"))
        );
        assert_eq!(
            parse_deliver_subject(&ordered_deliver_subject("crm", "orders", "c-7")),
            Some(("crm", "orders"))
        );
        assert_eq!(parse_deliver_subject("deliver.crm"), None);
        assert_eq!(
            parse_dlq_subject(&dlq_subject("crm")),
            Some(DeadLetterOwner::Provider("crm"))
        );
        assert_eq!(
            parse_dlq_subject(&source_dlq_subject("shop")),
            Some(DeadLetterOwner::Source("shop"))
        );
        assert_eq!(parse_dlq_subject("dlq."), None);
        assert_eq!(parse_dlq_subject("outcome.crm"), None);
        assert_eq!(parse_outcome_subject(&outcome_subject("crm")), Some("crm"));
        assert_eq!(parse_outcome_subject("dlq.crm"), None);
        assert!(provider_deliver_filter("crm").starts_with(&deliver_subject("crm", "")));
        assert!(source_ingest_filter("shop").starts_with(&ingest_subject("shop", "")));
    }

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
