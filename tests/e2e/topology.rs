//! `ensure_topology` is idempotent, updates what it can and names what it cannot.

use std::time::Duration;

use async_nats::jetstream::stream::{Config, RetentionPolicy};
use switchyard_core::{
    config::TopologySettings,
    nats,
    topology::{Reconciled, ensure_topology},
};
use switchyard_tests::{Pipeline, TestNats};

#[tokio::test]
async fn running_it_again_changes_nothing_and_updates_what_differs() {
    let server = TestNats::start().await.unwrap();
    let settings = Pipeline::settings(server.url());
    let connection = nats::connect(&settings.nats, "test").await.unwrap();
    let js = &connection.jetstream;

    let first = ensure_topology(js, &settings.topology).await.unwrap();
    assert_eq!(first.len(), 11, "4 streams and 7 buckets");
    assert!(
        first.iter().all(|r| matches!(r, Reconciled::Created(_))),
        "{first:?}"
    );
    let again = ensure_topology(js, &settings.topology).await.unwrap();
    assert!(
        again.iter().all(|r| matches!(r, Reconciled::Unchanged(_))),
        "{again:?}"
    );

    let changed = TopologySettings {
        ingest_max_age: Duration::from_secs(3 * 24 * 3600),
        ..settings.topology.clone()
    };
    let report = ensure_topology(js, &changed).await.unwrap();
    let updated: Vec<_> = report
        .iter()
        .filter_map(|r| match r {
            Reconciled::Updated(name, diffs) => Some((name.as_str(), diffs.clone())),
            _ => None,
        })
        .collect();
    assert_eq!(updated.len(), 1, "{report:?}");
    assert_eq!(updated[0].0, "INGEST");
    assert!(
        updated[0].1[0].starts_with("max_age: 604800s -> 259200s"),
        "{updated:?}"
    );
    let mut ingest = js.get_stream("INGEST").await.unwrap();
    assert_eq!(
        ingest.info().await.unwrap().config.max_age,
        changed.ingest_max_age
    );
}

#[tokio::test]
async fn a_difference_it_cannot_update_is_named_instead_of_ignored() {
    let server = TestNats::start().await.unwrap();
    let settings = Pipeline::settings(server.url());
    let connection = nats::connect(&settings.nats, "test").await.unwrap();
    let js = &connection.jetstream;
    // Someone created DELIVER by hand with the wrong retention.
    js.create_stream(Config {
        name: "DELIVER".into(),
        subjects: vec!["deliver.>".into()],
        retention: RetentionPolicy::Limits,
        ..Default::default()
    })
    .await
    .unwrap();
    let err = ensure_topology(js, &settings.topology)
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("stream DELIVER"), "{err}");
    assert!(err.contains("retention: Limits -> WorkQueue"), "{err}");
}
