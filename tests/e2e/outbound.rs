//! Where deliveries may go: the outbound guard refuses private addresses at apply time
//! and at connect time, and providers that require a client certificate get one.

use std::time::Duration;
use switchyard_core::outcome::{ErrorKind, Outcome};

use switchyard_proto::{
    ApplyRequest, ListResourcesRequest, catalog_service_client::CatalogServiceClient,
};
use switchyard_tests::{FakeProvider, Pipeline, Reply, TestNats, eventually, pki::Pki};
use tonic::Code;

use crate::{catalog, catalog_with, order};

/// The pipeline with `catalog`, its secrets read from a directory holding `secrets`
/// (kept while the returned directory lives).
async fn start_with_secrets(
    catalog: &str,
    secrets: &[(&str, &str)],
) -> (Pipeline, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    for (name, text) in secrets {
        std::fs::write(dir.path().join(name), text).unwrap();
    }
    let nats = TestNats::start().await.unwrap();
    let mut settings = Pipeline::settings(nats.url());
    settings.secrets.dir = dir.path().to_owned();
    let pipeline = Pipeline::start_with(nats, settings, catalog).await.unwrap();
    (pipeline, dir)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_catalog_naming_a_refused_address_is_refused_at_apply_by_field() {
    let provider = FakeProvider::start().await;
    let pipeline = Pipeline::start(&catalog(provider.url())).await.unwrap();
    let mut control = CatalogServiceClient::new(pipeline.control_channel().await);
    let before = control
        .list_resources(ListResourcesRequest::default())
        .await
        .unwrap()
        .into_inner();

    let document = r#"
providers:
  - name: metadata
    url: http://169.254.169.254/latest/meta-data/iam
  - name: erp
    url: https://erp.example.com/orders
    auth:
      oauth2:
        token_url: http://10.0.0.5/token
        client_id: switchyard
        client_secret: { secret: ERP_SECRET }
sources:
  - name: legacy
    poll:
      url: http://[::ffff:192.168.1.20]/changes
      interval: 1m
      id: /id
      event_type: { value: change }
"#;
    let err = control
        .apply(ApplyRequest {
            document: document.into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    let message = err.message();
    for expected in [
        "providers[0].url: 169.254.169.254 is a link-local address",
        "providers[1].auth.oauth2.token_url: 10.0.0.5 is a private address",
        "sources[0].poll.url: 192.168.1.20 is a private address",
        "outbound.allow",
    ] {
        assert!(message.contains(expected), "{expected:?} in {message}");
    }
    let after = control
        .list_resources(ListResourcesRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(after, before, "the refused apply changed nothing");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_name_that_resolves_to_a_refused_address_is_dead_lettered_at_once_as_blocked() {
    let provider = FakeProvider::start().await;
    let nats = TestNats::start().await.unwrap();
    let mut settings = Pipeline::settings(nats.url());
    // The default guard: loopback is refused, and `localhost` resolves to it.
    settings.outbound.allow.clear();
    let url = provider.url().replace("127.0.0.1", "localhost");
    let pipeline = Pipeline::start_with(nats, settings, &catalog(&url))
        .await
        .unwrap();
    let response = pipeline
        .post("shop", "order.created", &order("o-1", 5), Some("o-1"))
        .await;
    assert_eq!(response.status(), 202);

    let dead = eventually(Duration::from_secs(10), "the dead letter", || async {
        pipeline.stream_messages("DLQ").await.into_iter().next()
    })
    .await;
    let header = |name: &str| {
        dead.headers
            .get(name)
            .map(|value| value.as_str().to_owned())
            .unwrap_or_default()
    };
    assert_eq!(header("Switchyard-Failure-Category"), "rejected");
    assert_eq!(header("Switchyard-Attempts"), "1", "never retried");
    let reason = header("Switchyard-Failure-Reason");
    assert!(
        reason.contains("blocked by the outbound guard: localhost resolves to 127.0.0.1, a loopback address, which outbound.allow does not permit")
            || reason.contains("blocked by the outbound guard: localhost resolves to ::1, a loopback address, which outbound.allow does not permit"),
        "{reason}"
    );
    let attempts = pipeline.attempts().await;
    assert_eq!(attempts.len(), 1, "{attempts:?}");
    assert_eq!(attempts[0].1.error, Some(ErrorKind::Blocked));
    assert_eq!(attempts[0].1.category, Outcome::Rejected);
    assert!(
        provider.received().is_empty(),
        "nothing reached the address"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_provider_that_requires_a_client_certificate_gets_one() {
    let pki = Pki::new();
    let provider = FakeProvider::with_tls(
        pki.server_requiring_client_certificates(rustls::DEFAULT_VERSIONS),
        |_| Reply::ok(),
    )
    .await;
    // The same demand on TLS 1.2, where a missing certificate fails the handshake
    // itself. (Under TLS 1.3 the server refuses it after the client has finished its
    // side, so a request can also see the connection close before it is sent.)
    let strict = FakeProvider::with_tls(
        pki.server_requiring_client_certificates(&[&rustls::version::TLS12]),
        |_| Reply::ok(),
    )
    .await;
    // Route `orders` reaches the provider with the certificate; route `uncertified`
    // sends the same events to a server that trusts the same CA, without one.
    let policies = "
    tls:
      client_cert: { secret: CRM_CLIENT_CERT }
      client_key: { secret: CRM_CLIENT_KEY }
      ca: { secret: CRM_CA }";
    let mut document = catalog_with(provider.url(), policies, "");
    document = document.replace(
        "mappings:",
        &format!(
            "  - name: uncertified
    url: {}/contacts
    tls: {{ ca: {{ secret: CRM_CA }} }}
    retry: {{ max_attempts: 2, schedule: [50ms] }}
    breaker: {{ consecutive_failures: 1000, min_requests: 1000 }}
mappings:",
            strict.url()
        ),
    );
    document.push_str(
        "  - name: uncertified
    source: shop
    event_types: [\"order.*\"]
    mapping: order-to-contact@1
    provider: uncertified
",
    );
    let (pipeline, _secrets) = start_with_secrets(
        &document,
        &[
            ("CRM_CA", &pki.ca_pem),
            ("CRM_CLIENT_CERT", &pki.client.cert_pem),
            ("CRM_CLIENT_KEY", &pki.client.key_pem),
        ],
    )
    .await;

    let ids: Vec<String> = (0..20).map(|i| format!("m-{i}")).collect();
    for id in &ids {
        let response = pipeline
            .post("shop", "order.created", &order(id, 1), Some(id))
            .await;
        assert_eq!(response.status(), 202);
    }
    provider
        .wait_for_accepted(ids.len(), Duration::from_secs(20))
        .await;
    // Every event once through the provider with the certificate, none without.
    let received = provider.received();
    assert_eq!(received.len(), ids.len(), "each delivered once");
    assert_eq!(provider.accepted_keys().len(), ids.len());

    // The other one failed its TLS handshake on every attempt, said why, and
    // dead-lettered each event when its attempts ran out.
    let dead = eventually(Duration::from_secs(20), "20 dead letters", || async {
        let dead = pipeline.stream_messages("DLQ").await;
        (dead.len() >= ids.len()).then_some(dead)
    })
    .await;
    for letter in &dead {
        let header = |name: &str| letter.headers.get(name).map(|v| v.as_str().to_owned());
        assert_eq!(
            header("Switchyard-Failure-Category").as_deref(),
            Some("exhausted")
        );
        let reason = header("Switchyard-Failure-Reason").unwrap_or_default();
        assert!(
            reason.contains("TLS failed") && reason.contains("tls.client_cert"),
            "{reason}"
        );
    }
    let uncertified: Vec<_> = pipeline
        .attempts()
        .await
        .into_iter()
        .filter(|(provider, _)| provider == "uncertified")
        .collect();
    assert_eq!(uncertified.len(), 2 * ids.len(), "two attempts per event");
    assert!(
        uncertified
            .iter()
            .all(|(_, attempt)| attempt.error == Some(ErrorKind::Tls)),
        "{uncertified:?}"
    );
    assert!(
        strict.received().is_empty(),
        "no request got past the handshake"
    );
    let text = switchyard_core::metrics::encode();
    assert!(
        text.contains(
            r#"switchyard_deliveries_total{provider="uncertified",outcome="exhausted",error="tls"} 20"#
        ),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_polled_api_and_its_token_endpoint_get_the_client_certificate() {
    let pki = Pki::new();
    // One server that requires client certificates answers both the OAuth2 token
    // request and the poll, which must carry the token.
    let api = FakeProvider::with_tls(
        pki.server_requiring_client_certificates(rustls::DEFAULT_VERSIONS),
        |request| match request.path.as_str() {
            "/token" => Reply::ok().body(r#"{"access_token": "t0ken", "expires_in": 3600}"#),
            "/changes" if request.header("authorization") == Some("Bearer t0ken") => {
                Reply::ok().body(r#"{"items": [{"id": "c-1"}, {"id": "c-2"}]}"#)
            }
            _ => Reply::status(401),
        },
    )
    .await;
    let catalog = format!(
        r#"
sources:
  - name: erp
    poll:
      url: {url}/changes
      interval: 1s
      items: /items
      id: /id
      event_type: {{ value: change.made }}
      auth:
        oauth2:
          token_url: {url}/token
          client_id: switchyard
          client_secret: {{ secret: API_CLIENT_SECRET }}
      tls:
        client_cert: {{ secret: API_CLIENT_CERT }}
        client_key: {{ secret: API_CLIENT_KEY }}
        ca: {{ secret: API_CA }}
"#,
        url = api.url()
    );
    let (pipeline, _secrets) = start_with_secrets(
        &catalog,
        &[
            ("API_CA", &pki.ca_pem),
            ("API_CLIENT_CERT", &pki.client.cert_pem),
            ("API_CLIENT_KEY", &pki.client.key_pem),
            ("API_CLIENT_SECRET", "s3cret"),
        ],
    )
    .await;
    eventually(Duration::from_secs(15), "both items stored", || async {
        (pipeline.stream_len("INGEST").await == 2).then_some(())
    })
    .await;
    let paths: Vec<String> = api.received().iter().map(|r| r.path.clone()).collect();
    assert_eq!(
        paths.first().map(String::as_str),
        Some("/token"),
        "{paths:?}"
    );
    assert!(paths.iter().any(|path| path == "/changes"), "{paths:?}");
}
