//! Mapping dry-runs and replays through the control API and syctl.

use std::{collections::HashMap, process::Command, time::Duration};

use switchyard_proto::{
    ApplyRequest, ReplayProgress, ReplayRequest, TestMappingRequest,
    catalog_service_client::CatalogServiceClient, mapping_service_client::MappingServiceClient,
    replay_service_client::ReplayServiceClient,
};
use switchyard_tests::{FakeProvider, Pipeline};
use tonic::Code;

use crate::{catalog, order};

/// Runs a replay to the end and returns its last progress report.
async fn replay(
    pipeline: &Pipeline,
    request: ReplayRequest,
) -> Result<ReplayProgress, tonic::Status> {
    let mut stream = ReplayServiceClient::new(pipeline.control_channel().await)
        .replay(request)
        .await?
        .into_inner();
    let mut last = None;
    while let Some(progress) = stream.message().await? {
        last = Some(progress);
    }
    Ok(last.expect("a final report"))
}

/// How many times the provider accepted each order id.
fn counts(provider: &FakeProvider) -> HashMap<String, usize> {
    let mut counts = HashMap::new();
    for request in provider.accepted() {
        *counts.entry(crate::order_id(&request)).or_default() += 1;
    }
    counts
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn replays_rerun_stored_events_through_the_current_mapping_without_doubling() {
    let provider = FakeProvider::start().await;
    let pipeline = Pipeline::start(&catalog(provider.url())).await.unwrap();
    // Five good orders, and five whose text totals the first mapping cannot read.
    for i in 0..10 {
        let mut body = order(&format!("o{i}"), i);
        if i % 2 == 1 {
            body["total"] = serde_json::json!(format!("{i} EUR"));
        }
        let response = pipeline.post("shop", "order.created", &body, None).await;
        assert_eq!(response.status(), 202);
    }
    provider.wait_for_accepted(5, Duration::from_secs(20)).await;
    switchyard_tests::eventually(Duration::from_secs(20), "five dead letters", || async {
        (pipeline.stream_len("DLQ").await == 5).then_some(())
    })
    .await;

    // Version 2 reads "7 EUR"; the route moves to it.
    CatalogServiceClient::new(pipeline.control_channel().await)
        .apply(ApplyRequest {
            document: r#"
mappings:
  - name: order-to-contact
    version: 2
    program: |
      total = to_int(.total) ?? to_int!(split(string!(.total), " ")[0])
      . = {"order": string!(.id), "email": downcase(string!(.email)), "cents": total * 100}
routes:
  - name: orders
    source: shop
    event_types: ["order.*"]
    mapping: order-to-contact@2
    provider: crm
"#
            .into(),
            ..Default::default()
        })
        .await
        .unwrap();

    // A dry run counts without publishing.
    let dry = replay(
        &pipeline,
        ReplayRequest {
            source: "shop".into(),
            dry_run: true,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert!(dry.done && dry.dry_run);
    assert_eq!(
        (dry.scanned, dry.published, dry.already_delivered),
        (10, 5, 5)
    );
    pipeline.quiescent().await;
    assert_eq!(provider.accepted().len(), 5);

    // The real replay delivers the five that failed, once, and leaves the rest.
    let done = replay(
        &pipeline,
        ReplayRequest {
            source: "shop".into(),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(
        (
            done.scanned,
            done.published,
            done.already_delivered,
            done.dead_lettered
        ),
        (10, 5, 5, 0)
    );
    provider
        .wait_for_accepted(10, Duration::from_secs(20))
        .await;
    pipeline.quiescent().await;
    let seen = counts(&provider);
    assert_eq!(seen.len(), 10, "{seen:?}");
    assert!(seen.values().all(|n| *n == 1), "nothing doubled: {seen:?}");
    for request in provider.accepted() {
        let id = crate::order_id(&request);
        let odd = id[1..].parse::<i64>().unwrap() % 2 == 1;
        let expected = if odd {
            "order-to-contact@2"
        } else {
            "order-to-contact@1"
        };
        assert_eq!(request.header("switchyard-mapping"), Some(expected), "{id}");
        if odd {
            assert_eq!(
                request.json()["cents"],
                id[1..].parse::<i64>().unwrap() * 100
            );
        }
    }

    // Replaying again finds everything delivered.
    let again = replay(
        &pipeline,
        ReplayRequest {
            route: "orders".into(),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert_eq!((again.published, again.already_delivered), (0, 10));

    // With --redeliver, a sequence range goes out again under new keys.
    let forced = replay(
        &pipeline,
        ReplayRequest {
            route: "orders".into(),
            from_sequence: 2,
            to_sequence: 4,
            redeliver: true,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert_eq!((forced.scanned, forced.published), (3, 3));
    provider
        .wait_for_accepted(13, Duration::from_secs(20))
        .await;
    let redelivered: Vec<_> = provider
        .accepted()
        .into_iter()
        .filter(|r| r.idempotency_key().contains(":redelivery:"))
        .map(|r| crate::order_id(&r))
        .collect();
    let mut sorted = redelivered.clone();
    sorted.sort();
    assert_eq!(sorted, ["o1", "o2", "o3"]);

    // A time range after the last event holds nothing.
    let later = time::OffsetDateTime::now_utc() + time::Duration::hours(1);
    let empty = replay(
        &pipeline,
        ReplayRequest {
            source: "shop".into(),
            from_time: Some(prost_types::Timestamp {
                seconds: later.unix_timestamp(),
                nanos: 0,
            }),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert_eq!((empty.scanned, empty.published), (0, 0));

    // Bad requests say what is wrong.
    let err = replay(&pipeline, ReplayRequest::default())
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(
        err.message().contains("source or route"),
        "{}",
        err.message()
    );
    let err = replay(
        &pipeline,
        ReplayRequest {
            route: "nope".into(),
            ..Default::default()
        },
    )
    .await
    .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);

    // syctl drives the same API: a dry run as JSON.
    let output = Command::new(switchyard_tests::syctl())
        .args(["--server", &pipeline.control_url, "-o", "json"])
        .args([
            "replay",
            "--source",
            "shop",
            "--from",
            "1",
            "--to",
            "6",
            "--dry-run",
        ])
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(report["scanned"], 6);
    assert_eq!(report["already_delivered"], 6);
    assert_eq!(report["dry_run"], true);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dry_run_shows_output_verdicts_and_diagnostics() {
    let provider = FakeProvider::start().await;
    let pipeline = Pipeline::start(&catalog(provider.url())).await.unwrap();
    let mut mappings = MappingServiceClient::new(pipeline.control_channel().await);
    let sample = order("42", 3).to_string();

    let published = mappings
        .test_mapping(TestMappingRequest {
            reference: "order-to-contact@1".into(),
            sample: sample.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(published.passed, "{published:?}");
    let output: serde_json::Value =
        serde_json::from_str(published.output.as_deref().unwrap()).unwrap();
    assert_eq!(
        output,
        serde_json::json!({"order": "42", "email": "user-42@shop.example", "cents": 300})
    );

    let draft = r#"
name: invoice
version: 1
input_schema: { type: object, required: [id, customer] }
output_schema: { type: object, properties: { cents: { type: integer } } }
program: |
  . = {"ref": .id, "cents": .total}
"#;
    let report = mappings
        .test_mapping(TestMappingRequest {
            document: draft.into(),
            sample: sample.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(!report.passed);
    assert_eq!(report.mapping, "invoice@1");
    let paths = |list: &[switchyard_proto::Violation]| -> Vec<String> {
        list.iter().map(|v| v.path.clone()).collect()
    };
    assert_eq!(paths(&report.input_violations), [""]);
    assert!(report.input_violations[0].message.contains("customer"));
    assert!(report.output.is_some());
    assert!(report.output_violations.is_empty(), "{report:?}");

    let broken = mappings
        .test_mapping(TestMappingRequest {
            document: "name: x\nversion: 1\nprogram: |\n  .a = 1\n  .b = upcase(.c)\n".into(),
            sample: sample.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(!broken.passed);
    assert_eq!(broken.diagnostics[0].field, "program");
    assert!(
        broken.diagnostics[0].message.contains(":2:"),
        "{:?}",
        broken.diagnostics
    );

    let err = mappings
        .test_mapping(TestMappingRequest {
            reference: "order-to-contact@1".into(),
            sample: "{not json".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().starts_with("sample:"), "{}", err.message());
    let err = mappings
        .test_mapping(TestMappingRequest {
            reference: "order-to-contact@9".into(),
            sample,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);

    // syctl: exit 0 when it passes, 4 when it does not, the report as JSON.
    let dir = tempfile::tempdir().unwrap();
    let sample_file = dir.path().join("sample.json");
    std::fs::write(&sample_file, order("7", 1).to_string()).unwrap();
    let draft_file = dir.path().join("invoice.yaml");
    std::fs::write(&draft_file, draft).unwrap();
    let syctl = |args: &[&str]| {
        Command::new(switchyard_tests::syctl())
            .args(["--server", &pipeline.control_url])
            .args(args)
            .output()
            .unwrap()
    };
    let sample_arg = sample_file.to_str().unwrap();
    let passed = syctl(&[
        "mapping",
        "test",
        "order-to-contact@1",
        "--sample",
        sample_arg,
    ]);
    assert_eq!(passed.status.code(), Some(0));
    let text = String::from_utf8_lossy(&passed.stdout);
    assert!(
        text.contains("user-7@shop.example") && text.contains("passed"),
        "{text}"
    );
    let failed = syctl(&[
        "-o",
        "json",
        "mapping",
        "test",
        "--file",
        draft_file.to_str().unwrap(),
        "--sample",
        sample_arg,
    ]);
    assert_eq!(failed.status.code(), Some(4));
    let report: serde_json::Value = serde_json::from_slice(&failed.stdout).unwrap();
    assert_eq!(report["passed"], false);
    assert_eq!(report["input_violations"][0]["path"], "");

    // syctl drafts a mapping offline, and the draft runs on the sample it came from.
    let wanted = dir.path().join("contact.json");
    std::fs::write(
        &wanted,
        serde_json::json!({"order_id": "7", "email": "x@y.z", "amount": 1.5}).to_string(),
    )
    .unwrap();
    let drafted = Command::new(switchyard_tests::syctl())
        .args(["--server", "http://127.0.0.1:1"])
        .args(["mapping", "suggest", "--from", sample_arg, "--to"])
        .arg(&wanted)
        .output()
        .unwrap();
    assert!(
        drafted.status.success(),
        "{}",
        String::from_utf8_lossy(&drafted.stderr)
    );
    let program = String::from_utf8(drafted.stdout).unwrap();
    assert!(program.contains(".email = input.email"), "{program}");
    let program_file = dir.path().join("draft.vrl");
    std::fs::write(&program_file, &program).unwrap();
    let tried = syctl(&[
        "-o",
        "json",
        "mapping",
        "test",
        "--program",
        program_file.to_str().unwrap(),
        "--sample",
        sample_arg,
    ]);
    assert_eq!(
        tried.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&tried.stdout)
    );
    let report: serde_json::Value = serde_json::from_slice(&tried.stdout).unwrap();
    assert_eq!(
        report["output"],
        serde_json::json!({"order_id": "7", "email": "User-7@Shop.Example", "amount": 1.0})
    );
}
