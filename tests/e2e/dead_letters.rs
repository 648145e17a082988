//! The dead-letter API: list with filters and pages, show, replay (dry and real) and
//! purge — counted at the provider.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use switchyard_proto::{
    ApplyRequest, DeadLetterFilter, DeadLetterProgress, DeadLetterSelection, GetDeadLetterRequest,
    ListDeadLettersRequest, ReplayDeadLettersRequest, catalog_service_client::CatalogServiceClient,
    dead_letter_service_client::DeadLetterServiceClient,
};
use switchyard_tests::{FakeProvider, Pipeline, Reply, eventually, syctl};
use tonic::{Code, transport::Channel};

use crate::{POLICIES, catalog, order_id, publish_orders};

fn filter(category: &str) -> Option<DeadLetterFilter> {
    Some(DeadLetterFilter {
        category: category.into(),
        ..Default::default()
    })
}

async fn list(client: &DeadLetterServiceClient<Channel>, category: &str) -> Vec<u64> {
    client
        .clone()
        .list_dead_letters(ListDeadLettersRequest {
            filter: filter(category),
            page_size: 100,
            page_token: String::new(),
        })
        .await
        .unwrap()
        .into_inner()
        .dead_letters
        .iter()
        .map(|letter| letter.sequence)
        .collect()
}

async fn replay(
    client: &mut DeadLetterServiceClient<Channel>,
    selection: DeadLetterSelection,
    dry_run: bool,
) -> DeadLetterProgress {
    let mut stream = client
        .replay_dead_letters(ReplayDeadLettersRequest {
            selection: Some(selection),
            dry_run,
        })
        .await
        .unwrap()
        .into_inner();
    let mut last = None;
    while let Some(progress) = stream.message().await.unwrap() {
        last = Some(progress);
    }
    let last = last.unwrap();
    assert!(last.done);
    last
}

fn all_of(category: &str) -> DeadLetterSelection {
    DeadLetterSelection {
        filter: filter(category),
        all: true,
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn dead_letters_are_listed_shown_replayed_once_and_purged() {
    // The CRM rejects orders r* until it is fixed.
    let fixed = Arc::new(AtomicBool::new(false));
    let flag = fixed.clone();
    let provider = FakeProvider::with(move |request| {
        let id = request.json()["order"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        if id.starts_with('r') && !flag.load(Ordering::SeqCst) {
            Reply::status(422).body(r#"{"error":"unknown customer"}"#)
        } else {
            Reply::ok()
        }
    })
    .await;
    let pipeline = Pipeline::start(&catalog(provider.url())).await.unwrap();
    let channel = pipeline.control_channel().await;
    let mut client = DeadLetterServiceClient::new(channel.clone());

    publish_orders(
        &pipeline,
        "order.created",
        &["r0".into(), "r1".into(), "r2".into(), "ok".into()],
    )
    .await;
    // m0..m2 carry a total the mapping cannot read.
    for id in ["m0", "m1", "m2"] {
        let body = serde_json::json!({"id": id, "email": "x@y.z", "total": "n/a"});
        pipeline
            .jetstream
            .publish("ingest.shop.order.created", body.to_string().into())
            .await
            .unwrap()
            .await
            .unwrap();
    }
    eventually(Duration::from_secs(15), "six dead letters", || async {
        (list(&client, "").await.len() == 6).then_some(())
    })
    .await;
    provider.wait_for_accepted(1, Duration::from_secs(5)).await;

    // Filters and pages.
    let rejected = list(&client, "rejected").await;
    let mapping = list(&client, "mapping").await;
    assert_eq!((rejected.len(), mapping.len()), (3, 3));
    let first = client
        .list_dead_letters(ListDeadLettersRequest {
            filter: None,
            page_size: 4,
            page_token: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(first.dead_letters.len(), 4);
    let second = client
        .list_dead_letters(ListDeadLettersRequest {
            filter: None,
            page_size: 4,
            page_token: first.next_page_token.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(second.dead_letters.len(), 2);
    assert!(second.next_page_token.is_empty());
    let mut seen: Vec<u64> = first
        .dead_letters
        .iter()
        .chain(&second.dead_letters)
        .map(|l| l.sequence)
        .collect();
    seen.dedup();
    assert_eq!(seen.len(), 6, "pages neither overlap nor skip");
    let letter = &first.dead_letters[0];
    assert_eq!(letter.provider, "crm");
    assert_eq!(letter.route, "orders");
    assert!(letter.body.is_empty(), "a listing carries no bodies");
    let future = client
        .list_dead_letters(ListDeadLettersRequest {
            filter: Some(DeadLetterFilter {
                since: Some(prost_types::Timestamp {
                    seconds: 4_000_000_000,
                    nanos: 0,
                }),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(future.dead_letters.is_empty());
    let bad = client
        .list_dead_letters(ListDeadLettersRequest {
            filter: filter("lost"),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(bad.code(), Code::InvalidArgument);
    assert!(bad.message().contains("filter.category"), "{bad:?}");

    // Show: a rejected delivery holds the mapped body and the provider's answer.
    let shown = client
        .get_dead_letter(GetDeadLetterRequest {
            sequence: rejected[0],
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(shown.category, "rejected");
    assert_eq!(shown.last_status, 422);
    assert!(shown.response_excerpt.contains("unknown customer"));
    let body: serde_json::Value = serde_json::from_slice(&shown.body).unwrap();
    assert!(body["order"].as_str().unwrap().starts_with('r'));
    assert_eq!(shown.headers["Switchyard-Failure-Category"], "rejected");
    let missing = client
        .get_dead_letter(GetDeadLetterRequest { sequence: 99_999 })
        .await
        .unwrap_err();
    assert_eq!(missing.code(), Code::NotFound);

    // Replay without a selection is refused; a dry run changes nothing.
    let refused = client
        .replay_dead_letters(ReplayDeadLettersRequest::default())
        .await;
    let refused = match refused {
        Err(status) => status,
        Ok(stream) => stream.into_inner().message().await.unwrap_err(),
    };
    assert_eq!(refused.code(), Code::InvalidArgument, "{refused:?}");
    fixed.store(true, Ordering::SeqCst);
    let before = provider.received().len();
    let dry = replay(&mut client, all_of("rejected"), true).await;
    assert_eq!((dry.scanned, dry.replayed, dry.failed), (3, 3, 0));
    pipeline.quiescent().await;
    assert_eq!(provider.received().len(), before);
    assert_eq!(list(&client, "rejected").await, rejected);

    // The real replay: each rejected order reaches the provider once, and leaves the
    // queue.
    let done = replay(&mut client, all_of("rejected"), false).await;
    assert_eq!((done.replayed, done.failed), (3, 0), "{done:?}");
    provider.wait_for_accepted(4, Duration::from_secs(10)).await;
    assert!(list(&client, "rejected").await.is_empty());

    // Mapping failures still fail under the same mapping and stay.
    let still = replay(&mut client, all_of("mapping"), false).await;
    assert_eq!((still.replayed, still.failed), (0, 3), "{still:?}");
    assert!(still.failures[0].contains("still fails"), "{still:?}");
    assert_eq!(list(&client, "mapping").await, mapping);

    // Purge needs --yes; then one of them is gone for good.
    let purge = |args: &[&str]| {
        std::process::Command::new(syctl())
            .args(["--server", &pipeline.control_url, "dlq", "purge"])
            .args(args)
            .output()
            .unwrap()
    };
    let m2 = mapping[2].to_string();
    assert_eq!(purge(&[&m2]).status.code(), Some(2));
    let output = purge(&[&m2, "--yes"]);
    assert!(output.status.success(), "{output:?}");
    assert!(
        String::from_utf8_lossy(&output.stdout).contains("purged 1"),
        "{output:?}"
    );

    // A fixed mapping version, then replay the rest through it.
    CatalogServiceClient::new(channel)
        .apply(ApplyRequest {
            document: r#"
mappings:
  - name: order-to-contact
    version: 2
    program: |
      . = { "order": string!(.id), "email": downcase(string!(.email)), "cents": (to_int(.total) ?? 0) * 100 }
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
    let output = std::process::Command::new(syctl())
        .args([
            "--server",
            &pipeline.control_url,
            "dlq",
            "replay",
            "--all",
            "--category",
            "mapping",
            "-o",
            "json",
        ])
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(report["replayed"], 2, "{report}");
    provider.wait_for_accepted(6, Duration::from_secs(10)).await;
    pipeline.quiescent().await;

    let accepted = provider.accepted();
    let mut ids: Vec<String> = accepted.iter().map(order_id).collect();
    ids.sort();
    assert_eq!(
        ids,
        ["m0", "m1", "ok", "r0", "r1", "r2"],
        "each once, m2 purged"
    );
    let remapped: Vec<_> = accepted
        .iter()
        .filter(|r| order_id(r).starts_with('m'))
        .map(|r| {
            r.header("switchyard-mapping")
                .unwrap_or_default()
                .to_owned()
        })
        .collect();
    assert_eq!(remapped, ["order-to-contact@2", "order-to-contact@2"]);
    assert!(list(&client, "").await.is_empty());
}

/// Every dead letter and every failed attempt says what it takes to get through —
/// `retry_will_fix`, `needs_human` or `needs_config` — and what to do next, through
/// the API, `syctl dlq` and `syctl events show`: an order the CRM refuses needs a
/// person, a refused token needs its secret rotated (named, its value never shown),
/// an outage passes with a replay, and a mapping that fails needs the mapping tested.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn each_failure_carries_a_verdict_and_its_next_step() {
    const TOKEN_VALUE: &str = "tok-5f1e9c2a-never-shown";
    let provider =
        FakeProvider::with(
            |request| match request.json()["order"].as_str().unwrap_or_default() {
                "refused" => Reply::status(422).body(r#"{"error":"unknown customer"}"#),
                "unauthorized" => Reply::status(401),
                "outage" => Reply::status(503),
                _ => Reply::ok(),
            },
        )
        .await;
    let secrets = tempfile::tempdir().unwrap();
    std::fs::write(secrets.path().join("CRM_TOKEN"), TOKEN_VALUE).unwrap();
    let nats = switchyard_tests::TestNats::start().await.unwrap();
    let mut settings = Pipeline::settings(nats.url());
    settings.secrets.dir = secrets.path().to_owned();
    let policies = format!("{POLICIES}\n    auth: {{ bearer: {{ secret: CRM_TOKEN }} }}");
    let catalog = crate::catalog_with(provider.url(), &policies, "");
    let pipeline = Pipeline::start_with(nats, settings, &catalog)
        .await
        .unwrap();
    let channel = pipeline.control_channel().await;
    let mut client = DeadLetterServiceClient::new(channel.clone());

    let ids = ["refused", "unauthorized", "outage", "fine"].map(String::from);
    publish_orders(&pipeline, "order.created", &ids).await;
    let unreadable = serde_json::json!({"id": "unreadable", "email": "x@y.z", "total": "n/a"});
    pipeline
        .jetstream
        .publish("ingest.shop.order.created", unreadable.to_string().into())
        .await
        .unwrap()
        .await
        .unwrap();
    eventually(Duration::from_secs(20), "four dead letters", || async {
        (list(&client, "").await.len() == 4).then_some(())
    })
    .await;

    let letters = client
        .list_dead_letters(ListDeadLettersRequest {
            page_size: 100,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .dead_letters;
    let find = |category: &str, status: u32| {
        letters
            .iter()
            .find(|l| l.category == category && l.last_status == status)
            .unwrap_or_else(|| panic!("no {category} letter with status {status}: {letters:#?}"))
    };
    let refused = find("rejected", 422);
    assert_eq!(refused.verdict, "needs_human", "{}", refused.explanation);
    assert!(refused.explanation.contains("unknown customer"));
    assert!(
        refused
            .explanation
            .ends_with(&format!("`syctl dlq replay {}`.", refused.sequence)),
        "{}",
        refused.explanation
    );
    let unauthorized = find("rejected", 401);
    assert_eq!(unauthorized.verdict, "needs_config");
    assert!(
        unauthorized
            .explanation
            .contains("the secret CRM_TOKEN was refused"),
        "{}",
        unauthorized.explanation
    );
    assert!(
        unauthorized
            .explanation
            .ends_with("`syctl dlq replay --all --provider crm --category rejected`."),
        "{}",
        unauthorized.explanation
    );
    let outage = find("exhausted", 503);
    assert_eq!(outage.verdict, "retry_will_fix", "{}", outage.explanation);
    assert!(
        outage
            .explanation
            .contains("all 5 attempts (the last: HTTP 503)"),
        "{}",
        outage.explanation
    );
    assert!(
        outage
            .explanation
            .ends_with("--provider crm --category exhausted`."),
        "{}",
        outage.explanation
    );
    let mapping = find("mapping", 0);
    assert_eq!(mapping.verdict, "needs_config");
    assert!(
        mapping
            .explanation
            .contains("`syctl mapping test order-to-contact@1 --sample event.json`"),
        "{}",
        mapping.explanation
    );
    let shown = client
        .get_dead_letter(GetDeadLetterRequest {
            sequence: unauthorized.sequence,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (shown.verdict.as_str(), shown.explanation.as_str()),
        (
            unauthorized.verdict.as_str(),
            unauthorized.explanation.as_str()
        ),
        "listed and shown alike"
    );

    // The same through syctl, and never the secret's value.
    let syctl_out = |args: &[&str]| {
        let output = std::process::Command::new(syctl())
            .args(["--server", &pipeline.control_url])
            .args(args)
            .output()
            .unwrap();
        assert!(output.status.success(), "{args:?}: {output:?}");
        let text = String::from_utf8(output.stdout).unwrap();
        assert!(!text.contains(TOKEN_VALUE), "the secret's value: {text}");
        text
    };
    let show = syctl_out(&["dlq", "show", &unauthorized.sequence.to_string()]);
    assert!(show.contains("verdict: needs_config"), "{show}");
    assert!(show.contains("CRM_TOKEN was refused"), "{show}");
    let listed = syctl_out(&["dlq", "list"]);
    for verdict in ["needs_human", "needs_config", "retry_will_fix"] {
        assert!(listed.contains(verdict), "{verdict} in {listed}");
    }
    // Each of the outage's attempts: four retries and the last, all passing causes.
    let lineage = syctl_out(&["events", "show", &outage.event_id]);
    assert_eq!(
        lineage.matches("retry_will_fix: Attempt").count(),
        4,
        "{lineage}"
    );
    assert!(
        lineage.contains("retry_will_fix: Provider crm failed all 5 attempts"),
        "{lineage}"
    );
    let event = switchyard_proto::event_service_client::EventServiceClient::new(channel)
        .get_event(switchyard_proto::GetEventRequest {
            event_id: refused.event_id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    let attempt = &event.routes[0].attempts[0];
    assert_eq!(
        (attempt.category.as_str(), attempt.verdict.as_str()),
        ("rejected", "needs_human")
    );
    assert!(
        attempt
            .explanation
            .ends_with(&format!("`syctl dlq replay {}`.", refused.sequence)),
        "the attempt names its dead letter: {}",
        attempt.explanation
    );
    for letter in &letters {
        assert!(!letter.explanation.contains(TOKEN_VALUE));
    }
    let accepted: Vec<String> = provider.accepted().iter().map(order_id).collect();
    assert_eq!(accepted, ["fine"], "only the fine order got through, once");
}
