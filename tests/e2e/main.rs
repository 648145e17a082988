//! End-to-end tests: a real nats-server, the services in-process, fake providers that
//! are real HTTP servers. Assertions are on what the provider received.

mod control;
mod delivery;
mod flow;
mod ingest;
mod topology;

/// Retry and breaker settings of the test provider unless a test gives its own: quick
/// retries, and a breaker that trips as by default but stays open only briefly.
pub const POLICIES: &str = "
    retry:
      max_attempts: 5
      backoff: { initial: 50ms, factor: 2, max: 400ms }
    breaker:
      cool_down: 200ms
      max_cool_down: 1s";

/// The catalog most tests use: source `shop`, provider `crm` at `provider_url`, and a
/// route taking `order.*` events through a mapping that renames and coerces fields.
pub fn catalog(provider_url: &str) -> String {
    catalog_with(provider_url, POLICIES, "")
}

/// [`catalog`] with the provider's policies (YAML lines indented by four spaces) and
/// extra route lines.
pub fn catalog_with(provider_url: &str, policies: &str, route_extra: &str) -> String {
    format!(
        r#"
sources:
  - name: shop
providers:
  - name: crm
    url: {provider_url}/contacts
    timeout: 2s
    max_in_flight: 32{policies}
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
    provider: crm{route_extra}
"#
    )
}

/// An order event as the shop sends it.
pub fn order(id: &str, total: i64) -> serde_json::Value {
    serde_json::json!({"id": id, "email": format!("User-{id}@Shop.Example"), "total": total})
}
