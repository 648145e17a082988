//! End-to-end tests: a real nats-server, the services in-process, fake providers that
//! are real HTTP servers. Assertions are on what the provider received.

mod control;
mod delivery;
mod flow;
mod ingest;
mod topology;

/// The catalog most tests use: source `shop`, provider `crm` at `provider_url`, and a
/// route taking `order.*` events through a mapping that renames and coerces fields.
pub fn catalog(provider_url: &str) -> String {
    catalog_with_retry(provider_url, 5)
}

/// [`catalog`] with a given number of delivery attempts.
pub fn catalog_with_retry(provider_url: &str, max_attempts: u32) -> String {
    format!(
        r#"
sources:
  - name: shop
providers:
  - name: crm
    url: {provider_url}/contacts
    timeout: 2s
    max_in_flight: 32
    retry:
      max_attempts: {max_attempts}
      initial_backoff: 50ms
      backoff_factor: 2
      max_backoff: 400ms
mappings:
  - name: order-to-contact
    version: 1
    program: |
      . = {{
        "order": string!(.id),
        "email": downcase(string!(.email)),
        "cents": to_int!(.total) * 100,
      }}
routes:
  - name: orders
    source: shop
    event_types: ["order.*"]
    mapping: order-to-contact@1
    provider: crm
"#
    )
}

/// An order event as the shop sends it.
pub fn order(id: &str, total: i64) -> serde_json::Value {
    serde_json::json!({"id": id, "email": format!("User-{id}@Shop.Example"), "total": total})
}
