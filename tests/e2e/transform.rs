//! Transform: pinned mapping versions, filters, event-type globs, fan-out, and
//! contracts that dead-letter with the failing paths.

use std::time::Duration;

use switchyard_proto::{ApplyRequest, catalog_service_client::CatalogServiceClient};
use switchyard_tests::{FakeProvider, Pipeline, Received};
use tonic::Code;

use crate::POLICIES;

fn catalog(crm: &str, billing: &str) -> String {
    format!(
        r#"
sources:
  - name: shop
providers:
  - name: crm
    url: {crm}/contacts{POLICIES}
  - name: billing
    url: {billing}/invoices{POLICIES}
mappings:
  - name: contact
    version: 1
    program: '. = {{"id": .id, "v": 1}}'
  - name: contact
    version: 2
    program: '. = {{"id": .id, "v": 2}}'
  - name: invoice
    version: 1
    input_schema:
      type: object
      required: [id, total, customer]
      properties:
        customer: {{ type: object, required: [email] }}
    output_schema:
      type: object
      required: [ref, amount]
      properties:
        amount: {{ type: integer, minimum: 0 }}
    program: |
      . = {{"ref": .id, "amount": .total, "to": .customer.email}}
routes:
  - name: contacts-created
    source: shop
    event_types: ["order.created"]
    mapping: contact@1
    provider: crm
  - name: contacts-updated
    source: shop
    event_types: ["order.updated"]
    mapping: contact@2
    provider: crm
  - name: invoices
    source: shop
    event_types: ["order.*", "refund.*"]
    filter: (to_int(.total) ?? 0) >= 100
    mapping: invoice@1
    provider: billing
"#
    )
}

fn event(id: &str, total: i64) -> serde_json::Value {
    serde_json::json!({"id": id, "total": total, "customer": {"email": format!("{id}@example.com")}})
}

/// What each provider received, as (id, mapping header), sorted.
fn seen(requests: &[Received], field: &str) -> Vec<(String, String)> {
    let mut out: Vec<_> = requests
        .iter()
        .map(|r| {
            (
                r.json()[field].as_str().unwrap_or_default().to_owned(),
                r.header("switchyard-mapping")
                    .unwrap_or_default()
                    .to_owned(),
            )
        })
        .collect();
    out.sort();
    out
}

fn pairs(items: &[(&str, &str)]) -> Vec<(String, String)> {
    let mut out: Vec<_> = items
        .iter()
        .map(|(a, b)| ((*a).to_owned(), (*b).to_owned()))
        .collect();
    out.sort();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn routes_pin_versions_filter_match_globs_and_fan_out() {
    let crm = FakeProvider::start().await;
    let billing = FakeProvider::start().await;
    let pipeline = Pipeline::start(&catalog(crm.url(), billing.url()))
        .await
        .unwrap();
    let sends = [
        ("order.created", "small", 50), // crm v1 only: the filter keeps it from billing
        ("order.created", "big", 150),  // crm v1 and billing
        ("order.updated", "changed", 200), // crm v2 and billing
        ("refund.issued", "refund", 300), // billing only
        ("customer.created", "cust", 900), // no route
    ];
    for (event_type, id, total) in sends {
        let response = pipeline
            .post("shop", event_type, &event(id, total), None)
            .await;
        assert_eq!(response.status(), 202);
    }
    crm.wait_for_accepted(3, Duration::from_secs(20)).await;
    billing.wait_for_accepted(3, Duration::from_secs(20)).await;
    // Once the pipeline is at rest, nothing more can arrive.
    pipeline.quiescent().await;
    assert_eq!(
        seen(&crm.received(), "id"),
        pairs(&[
            ("small", "contact@1"),
            ("big", "contact@1"),
            ("changed", "contact@2")
        ])
    );
    for request in crm.received() {
        let expected = if request.json()["id"] == "changed" {
            2
        } else {
            1
        };
        assert_eq!(request.json()["v"], expected);
    }
    assert_eq!(
        seen(&billing.received(), "ref"),
        pairs(&[
            ("big", "invoice@1"),
            ("changed", "invoice@1"),
            ("refund", "invoice@1")
        ])
    );
    assert_eq!(pipeline.stream_len("DLQ").await, 0);

    // Publishing version 3 and moving one route to it leaves version 1 working for
    // the route that still pins it.
    let mut control = CatalogServiceClient::new(pipeline.control_channel().await);
    let apply = |document: &str| ApplyRequest {
        document: document.to_owned(),
        ..Default::default()
    };
    let applied = control
        .apply(apply(
            r#"
mappings:
  - name: contact
    version: 3
    program: '. = {"id": .id, "v": 3}'
routes:
  - name: contacts-updated
    source: shop
    event_types: ["order.updated"]
    mapping: contact@3
    provider: crm
"#,
        ))
        .await
        .unwrap()
        .into_inner()
        .revision;
    pipeline.catalog_applied(applied).await;
    for (event_type, id) in [("order.created", "after-1"), ("order.updated", "after-3")] {
        let response = pipeline.post("shop", event_type, &event(id, 1), None).await;
        assert_eq!(response.status(), 202);
    }
    crm.wait_for_accepted(5, Duration::from_secs(20)).await;
    let after: Vec<_> = seen(&crm.received(), "id")
        .into_iter()
        .filter(|(id, _)| id.starts_with("after"))
        .collect();
    assert_eq!(
        after,
        pairs(&[("after-1", "contact@1"), ("after-3", "contact@3")])
    );

    // A version in use cannot be removed, and a published version cannot change.
    let mut whole = pipeline_catalog(&pipeline).await;
    whole
        .mappings
        .retain(|m| !(m.name == "contact" && m.version == 1));
    let refused = control
        .apply(ApplyRequest {
            document: whole.to_yaml(),
            prune: true,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::InvalidArgument);
    assert!(
        refused.message().contains("routes[0].mapping") && refused.message().contains("contact@1"),
        "{}",
        refused.message()
    );
    let refused = control
        .apply(apply(
            "mappings:\n  - name: contact\n    version: 1\n    program: '. = {}'\n",
        ))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::InvalidArgument);
    assert!(
        refused.message().contains("immutable") && refused.message().contains("version 4"),
        "{}",
        refused.message()
    );
}

async fn pipeline_catalog(pipeline: &Pipeline) -> switchyard_core::catalog::Catalog {
    switchyard_core::catalog::CatalogStore::open(&pipeline.jetstream)
        .await
        .unwrap()
        .load()
        .await
        .unwrap()
        .catalog
        .clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn contract_violations_dead_letter_the_original_with_the_failing_paths() {
    let crm = FakeProvider::start().await;
    let billing = FakeProvider::start().await;
    let pipeline = Pipeline::start(&catalog(crm.url(), billing.url()))
        .await
        .unwrap();
    // Breaks the input schema: no customer, a customer without an email.
    let bad_input = serde_json::json!({"id": "in", "total": 500, "customer": {}});
    // Passes the filter and the input schema, but the mapping passes the text total
    // through and the output schema wants an integer.
    let bad_output =
        serde_json::json!({"id": "out", "total": "150", "customer": {"email": "x@y.z"}});
    let fine = event("fine", 120);
    for body in [&bad_input, &bad_output, &fine] {
        let response = pipeline.post("shop", "refund.issued", body, None).await;
        assert_eq!(response.status(), 202);
    }
    billing.wait_for_accepted(1, Duration::from_secs(20)).await;
    let dead =
        switchyard_tests::eventually(Duration::from_secs(20), "two dead letters", || async {
            let messages = pipeline.stream_messages("DLQ").await;
            (messages.len() == 2).then_some(messages)
        })
        .await;
    for message in &dead {
        let header = |name: &str| {
            message
                .headers
                .get(name)
                .map(|v| v.as_str().to_owned())
                .unwrap_or_default()
        };
        assert_eq!(message.subject.as_str(), "dlq.billing");
        assert_eq!(header("Switchyard-Failure-Category"), "contract");
        assert_eq!(header("Switchyard-Mapping"), "invoice@1");
        assert_eq!(header("Switchyard-Route"), "invoices");
        let original: serde_json::Value = serde_json::from_slice(&message.payload).unwrap();
        let reason = header("Switchyard-Failure-Reason");
        if original["id"] == "in" {
            assert_eq!(original, bad_input, "the original body is kept intact");
            assert_eq!(header("Switchyard-Failing-Paths"), "/customer");
            assert!(
                reason.contains("input schema") && reason.contains("email"),
                "{reason}"
            );
        } else {
            assert_eq!(original, bad_output, "the original body is kept intact");
            assert_eq!(header("Switchyard-Failing-Paths"), "/amount");
            assert!(
                reason.contains("output schema") && reason.contains("integer"),
                "{reason}"
            );
        }
    }
    assert_eq!(billing.received().len(), 1);
    assert_eq!(billing.received()[0].json()["ref"], "fine");
}
