//! Polling sources: ingest reads an HTTP API page by page, stores one event per item
//! under the item's id, saves its place in KV, honours 429, and polls from one replica
//! only.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use axum::{
    Router,
    extract::{Query, State},
    http::{HeaderMap, StatusCode, header},
    response::{IntoResponse, Response},
    routing::get,
};
use switchyard_core::shutdown::Shutdown;
use switchyard_tests::{FakeProvider, Pipeline, eventually};

/// A third-party API with two endpoints: `/tickets?after=N` pages through tickets
/// three at a time (answering 429 to the very first request), and `/feed?since=ID`
/// returns the events after an id with an ETag, answering 304 to a matching
/// `If-None-Match`.
#[derive(Default)]
struct Api {
    tickets: Vec<serde_json::Value>,
    feed: Vec<serde_json::Value>,
    /// (path, time) of every request.
    requests: Vec<(String, Instant)>,
    not_modified: usize,
}

type Shared = Arc<Mutex<Api>>;

async fn tickets(
    State(api): State<Shared>,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    let mut api = api.lock().unwrap();
    api.requests.push(("/tickets".into(), Instant::now()));
    if api
        .requests
        .iter()
        .filter(|(path, _)| path == "/tickets")
        .count()
        == 1
    {
        return (
            StatusCode::TOO_MANY_REQUESTS,
            [(header::RETRY_AFTER, "1")],
            "slow down",
        )
            .into_response();
    }
    let after: usize = query.get("after").and_then(|a| a.parse().ok()).unwrap_or(0);
    let page: Vec<_> = api.tickets.iter().skip(after).take(3).cloned().collect();
    let next = after + page.len();
    axum::Json(serde_json::json!({"results": {"tickets": page}, "next": next.to_string()}))
        .into_response()
}

async fn feed(
    State(api): State<Shared>,
    request_headers: HeaderMap,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    let mut api = api.lock().unwrap();
    api.requests.push(("/feed".into(), Instant::now()));
    let since: i64 = query.get("since").and_then(|s| s.parse().ok()).unwrap_or(0);
    let items: Vec<_> = api
        .feed
        .iter()
        .filter(|item| item["seq"].as_i64().unwrap() > since)
        .cloned()
        .collect();
    let etag = format!("\"{since}-{}\"", items.len());
    if request_headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        == Some(etag.as_str())
    {
        api.not_modified += 1;
        return StatusCode::NOT_MODIFIED.into_response();
    }
    ([(header::ETAG, etag)], axum::Json(items)).into_response()
}

async fn start_api(api: Shared) -> String {
    let app = Router::new()
        .route("/tickets", get(tickets))
        .route("/feed", get(feed))
        .with_state(api);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    url
}

fn ticket(i: usize) -> serde_json::Value {
    serde_json::json!({"id": format!("T-{i}"), "kind": if i.is_multiple_of(2) { "ticket.opened" } else { "ticket.closed" }, "subject": format!("subject {i}")})
}

fn feed_item(seq: i64) -> serde_json::Value {
    serde_json::json!({"seq": seq, "event": "stock.changed", "sku": format!("SKU-{seq}")})
}

fn catalog(api: &str, provider: &str) -> String {
    format!(
        r#"
sources:
  - name: helpdesk
    poll:
      url: {api}/tickets
      interval: 1s
      items: /results/tickets
      id: /id
      event_type: {{ json: /kind }}
      cursor: {{ param: after, json: /next }}
  - name: warehouse
    poll:
      url: {api}/feed
      interval: 1s
      id: /seq
      event_type: {{ value: stock.changed }}
      etag: true
      cursor: {{ param: since, vrl: ".[-1].seq", initial: "0" }}
providers:
  - name: crm
    url: {provider}/in
    timeout: 2s
mappings:
  - name: same
    version: 1
    program: "."
routes:
  - name: helpdesk-to-crm
    source: helpdesk
    mapping: same@1
    provider: crm
  - name: warehouse-to-crm
    source: warehouse
    mapping: same@1
    provider: crm
"#
    )
}

fn requests_to(api: &Shared, path: &str) -> Vec<Instant> {
    api.lock()
        .unwrap()
        .requests
        .iter()
        .filter(|(p, _)| p == path)
        .map(|(_, at)| *at)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn polled_items_are_delivered_once_with_the_place_saved_after_storing() {
    let api: Shared = Arc::default();
    {
        let mut state = api.lock().unwrap();
        state.tickets = (0..7).map(ticket).collect();
        state.feed = (1..=4).map(feed_item).collect();
    }
    let api_url = start_api(api.clone()).await;
    let provider = FakeProvider::start().await;
    let pipeline = Pipeline::start(&catalog(&api_url, provider.url()))
        .await
        .unwrap();

    // A second ingest replica on the same NATS: it must stand by, not poll too.
    let second = Shutdown::new();
    let mut settings = pipeline.settings.clone();
    settings.delivery.instance = Some("second-replica".into());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    second.spawn(
        "second ingest",
        switchyard_ingest::run(settings, listener, second.clone()),
    );

    provider
        .wait_for_accepted(11, Duration::from_secs(30))
        .await;

    // The first request got 429 with Retry-After: 1; the next came no sooner.
    let ticket_requests = requests_to(&api, "/tickets");
    let gap = ticket_requests[1] - ticket_requests[0];
    assert!(
        gap >= Duration::from_millis(950),
        "polled again after {gap:?}, before Retry-After"
    );

    // New items are picked up on a later poll, from the saved cursor.
    {
        let mut state = api.lock().unwrap();
        state.tickets.extend((7..9).map(ticket));
        state.feed.push(feed_item(5));
    }
    provider
        .wait_for_accepted(14, Duration::from_secs(30))
        .await;
    let cursor = eventually(
        Duration::from_secs(10),
        "the tickets cursor saved",
        || async {
            let saved = pipeline
                .kv_json("switchyard-cursors", "poll.helpdesk")
                .await?;
            (saved["cursor"] == "9").then_some(saved)
        },
    )
    .await;
    assert!(cursor.get("etag").is_none(), "{cursor}");
    let feed_position = pipeline
        .kv_json("switchyard-cursors", "poll.warehouse")
        .await
        .unwrap();
    assert_eq!(feed_position["cursor"], "5");
    assert_eq!(feed_position["etag"], "\"5-0\"");

    // Quiet now: one poller per source (not one per replica), every interval, and
    // the feed answers 304 to the ETag it gave.
    let window = Duration::from_secs(4);
    let before = requests_to(&api, "/feed").len();
    tokio::time::sleep(window).await;
    let during = requests_to(&api, "/feed").len() - before;
    assert!(
        (2..=6).contains(&during),
        "{during} feed polls in {window:?} with a 1s interval"
    );
    assert!(api.lock().unwrap().not_modified >= 2);

    let received = provider.received();
    assert_eq!(received.len(), 14, "every item exactly once");
    let mut ids: Vec<String> = received
        .iter()
        .map(|r| {
            let body = r.json();
            body["id"]
                .as_str()
                .map(str::to_owned)
                .unwrap_or_else(|| body["seq"].to_string())
        })
        .collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 14);
    let ingest = pipeline.stream_messages("INGEST").await;
    assert_eq!(ingest.len(), 14);
    assert_eq!(
        ingest
            .iter()
            .filter(|m| m.subject.as_str() == "ingest.helpdesk.ticket.opened")
            .count(),
        5
    );
    assert_eq!(
        ingest
            .iter()
            .filter(|m| m.subject.as_str() == "ingest.warehouse.stock.changed")
            .count(),
        5
    );
    // Each event's id is derived from the item's id: stable across re-reads.
    let first = &ingest[0];
    let id = first.headers.get("Switchyard-Event-Id").unwrap().as_str();
    let item: serde_json::Value = serde_json::from_slice(&first.payload).unwrap();
    let (source, key) = if first.subject.starts_with("ingest.helpdesk") {
        ("helpdesk", item["id"].as_str().unwrap().to_owned())
    } else {
        ("warehouse", item["seq"].to_string())
    };
    assert_eq!(id, switchyard_core::event::keyed_event_id(source, &key));

    second.trigger();
    second.wait(Duration::from_secs(10)).await.unwrap();
}
