//! Provider status, pause, resume and breaker reset through the control API, counted
//! at the provider.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use switchyard_proto::{
    BreakerState, GetProviderStatusRequest, PauseProviderRequest, ProviderStatus,
    ResetBreakerRequest, ResumeProviderRequest, provider_service_client::ProviderServiceClient,
};
use switchyard_tests::{FakeProvider, Pipeline, Reply, eventually, syctl};
use tonic::{Code, transport::Channel};

use crate::{catalog_with, publish_orders};

async fn status(client: &ProviderServiceClient<Channel>) -> ProviderStatus {
    client
        .clone()
        .get_provider_status(GetProviderStatusRequest {
            provider: "crm".into(),
        })
        .await
        .unwrap()
        .into_inner()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_paused_provider_receives_nothing_until_resumed_and_then_everything_once() {
    let provider = FakeProvider::start().await;
    let policies = "
    max_in_flight: 8
    rate_limit: { requests: 50, per: 1s, burst: 10 }";
    let pipeline = Pipeline::start(&catalog_with(provider.url(), policies, ""))
        .await
        .unwrap();
    let mut client = ProviderServiceClient::new(pipeline.control_channel().await);

    publish_orders(&pipeline, "order.created", &["first".into()]).await;
    provider.wait_for_accepted(1, Duration::from_secs(10)).await;
    let before = eventually(Duration::from_secs(5), "an active process", || async {
        let status = status(&client).await;
        (status.active && status.last_success.is_some()).then_some(status)
    })
    .await;
    assert_eq!(before.breaker(), BreakerState::Closed);
    assert!(!before.instance.is_empty());
    assert_eq!((before.rate_per_second, before.burst), (50.0, 10.0));
    assert!(!before.paused);

    let paused = client
        .pause_provider(PauseProviderRequest {
            provider: "crm".into(),
            reason: "CRM maintenance window".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(paused.paused);
    assert_eq!(paused.paused_reason, "CRM maintenance window");
    assert_eq!(paused.paused_by, "anonymous");
    // The pause reaches the process through KV; give the watch a moment.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let ids: Vec<String> = (0..25).map(|i| format!("p{i}")).collect();
    publish_orders(&pipeline, "order.created", &ids).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(provider.received().len(), 1, "nothing is sent while paused");
    let waiting = status(&client).await;
    assert!(waiting.paused);
    assert_eq!(waiting.backlog + waiting.in_flight, 25, "{waiting:?}");

    // syctl shows the same in JSON.
    let output = std::process::Command::new(syctl())
        .args([
            "--server",
            &pipeline.control_url,
            "providers",
            "status",
            "crm",
            "-o",
            "json",
        ])
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    let shown: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(shown[0]["paused"], true, "{shown}");
    assert_eq!(shown[0]["paused_reason"], "CRM maintenance window");

    let output = std::process::Command::new(syctl())
        .args([
            "--server",
            &pipeline.control_url,
            "providers",
            "resume",
            "crm",
        ])
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    provider
        .wait_for_accepted(26, Duration::from_secs(15))
        .await;
    pipeline.quiescent().await;
    let keys = provider.accepted_keys();
    assert_eq!(provider.received().len(), 26, "each event once");
    assert_eq!(keys.len(), 26);
    let after = status(&client).await;
    assert!(!after.paused);
    assert_eq!(after.backlog, 0);

    let missing = client
        .pause_provider(PauseProviderRequest {
            provider: "nope".into(),
            reason: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(missing.code(), Code::NotFound, "{missing:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_operator_closes_an_open_breaker_and_sending_resumes_at_once() {
    let healthy = Arc::new(AtomicBool::new(false));
    let flag = healthy.clone();
    let provider = FakeProvider::with(move |_| {
        if flag.load(Ordering::SeqCst) {
            Reply::ok()
        } else {
            Reply::status(500)
        }
    })
    .await;
    // A cool-down far longer than the test: only the reset can close it in time.
    let policies = "
    max_in_flight: 4
    retry:
      max_attempts: 10
      backoff: { initial: 50ms, factor: 2, max: 100ms }
    breaker:
      consecutive_failures: 3
      cool_down: 5m
      max_cool_down: 10m";
    let pipeline = Pipeline::start(&catalog_with(provider.url(), policies, ""))
        .await
        .unwrap();
    let mut client = ProviderServiceClient::new(pipeline.control_channel().await);
    let ids: Vec<String> = (0..10).map(|i| format!("r{i}")).collect();
    publish_orders(&pipeline, "order.created", &ids).await;

    let open = eventually(Duration::from_secs(10), "the breaker to open", || async {
        let status = status(&client).await;
        (status.breaker() == BreakerState::Open).then_some(status)
    })
    .await;
    assert!(open.active);
    assert!(open.breaker_retry_at.is_some());
    assert!(open.last_failure.is_some());
    assert!(open.last_failure_reason.contains("500"), "{open:?}");
    let sent_while_open = provider.received().len();
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        provider.received().len(),
        sent_while_open,
        "nothing sent while open"
    );

    healthy.store(true, Ordering::SeqCst);
    let reset = client
        .reset_breaker(ResetBreakerRequest {
            provider: "crm".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(reset.breaker(), BreakerState::Closed, "{reset:?}");
    provider
        .wait_for_accepted(10, Duration::from_secs(10))
        .await;
    assert_eq!(provider.accepted_keys().len(), 10);
    let stored = pipeline
        .kv_json("switchyard-breakers", "crm")
        .await
        .unwrap();
    assert_eq!(stored["state"], "closed");
    let resets = pipeline
        .outcomes()
        .await
        .into_iter()
        .filter(|o| o.breaker().is_some_and(|change| change.reason == "reset"))
        .count();
    assert_eq!(resets, 1, "the reset is in the attempt log");
    let _ = client
        .resume_provider(ResumeProviderRequest {
            provider: "crm".into(),
        })
        .await
        .unwrap();
}
