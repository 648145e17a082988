//! The operator console over HTTP, as a browser without JavaScript uses it: sign-in,
//! sessions, CSRF and scopes; provider pause and resume, an event's page, a dead
//! letter replayed once, a mapping's dry run and a catalog apply — counted at the
//! provider.

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use switchyard_core::{
    apikey,
    config::{ApiKeySettings, Scope},
};
use switchyard_tests::{FakeProvider, Pipeline, Reply, TestNats, eventually};

use crate::{catalog, order_id};

const READ_KEY: &str = "sy_console-reader";
const OPERATE_KEY: &str = "sy_console-operator";

/// One browser: its cookies, and no redirect followed unseen.
struct Browser {
    http: reqwest::Client,
    base: String,
    cookies: Mutex<HashMap<String, String>>,
}

/// An answer: status, where it redirects, the page.
struct Page {
    status: u16,
    location: String,
    body: String,
    set_cookies: Vec<String>,
    headers: reqwest::header::HeaderMap,
}

impl Page {
    /// The CSRF token of the page's first form.
    fn csrf(&self) -> String {
        field(&self.body, "csrf").unwrap_or_else(|| panic!("no CSRF field in {}", self.body))
    }
}

/// The value of the first hidden or checkbox input named `name` in `html`.
fn field(html: &str, name: &str) -> Option<String> {
    let marker = format!("name=\"{name}\" value=\"");
    let start = html.find(&marker)? + marker.len();
    let end = html[start..].find('"')? + start;
    Some(html[start..end].to_owned())
}

impl Browser {
    fn new(base: &str) -> Self {
        Self {
            http: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .unwrap(),
            base: base.to_owned(),
            cookies: Mutex::default(),
        }
    }

    fn cookie_header(&self) -> String {
        let cookies = self.cookies.lock().unwrap();
        cookies
            .iter()
            .map(|(name, value)| format!("{name}={value}"))
            .collect::<Vec<_>>()
            .join("; ")
    }

    async fn read(&self, response: reqwest::Response) -> Page {
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let location = headers
            .get("location")
            .map(|value| value.to_str().unwrap().to_owned())
            .unwrap_or_default();
        let set_cookies: Vec<String> = headers
            .get_all("set-cookie")
            .iter()
            .map(|value| value.to_str().unwrap().to_owned())
            .collect();
        {
            let mut cookies = self.cookies.lock().unwrap();
            for set in &set_cookies {
                let (pair, attributes) = set.split_once(';').unwrap_or((set, ""));
                let (name, value) = pair.split_once('=').unwrap();
                if attributes.contains("Max-Age=0") {
                    cookies.remove(name);
                } else {
                    cookies.insert(name.to_owned(), value.to_owned());
                }
            }
        }
        Page {
            status,
            location,
            body: response.text().await.unwrap(),
            set_cookies,
            headers,
        }
    }

    async fn get(&self, path: &str) -> Page {
        let response = self
            .http
            .get(format!("{}{path}", self.base))
            .header("cookie", self.cookie_header())
            .send()
            .await
            .unwrap();
        self.read(response).await
    }

    async fn post(&self, path: &str, fields: &[(&str, &str)]) -> Page {
        let response = self
            .http
            .post(format!("{}{path}", self.base))
            .header("cookie", self.cookie_header())
            .form(fields)
            .send()
            .await
            .unwrap();
        self.read(response).await
    }

    /// Posts a form with the CSRF token of `page`.
    async fn submit(&self, page: &Page, path: &str, fields: &[(&str, &str)]) -> Page {
        let csrf = page.csrf();
        let mut all = vec![("csrf", csrf.as_str())];
        all.extend_from_slice(fields);
        self.post(path, &all).await
    }

    async fn sign_in(&self, key: &str) -> Page {
        let form = self.get("/sign-in?next=%2F").await;
        assert_eq!(form.status, 200, "{}", form.body);
        self.submit(&form, "/sign-in", &[("key", key), ("next", "/")])
            .await
    }
}

/// A CRM that answers order r1 with 422 until `fixed` is set.
async fn rejecting_r1() -> (FakeProvider, Arc<AtomicBool>) {
    let fixed = Arc::new(AtomicBool::new(false));
    let flag = fixed.clone();
    let provider = FakeProvider::with(move |request| {
        if order_id(request) == "r1" && !flag.load(Ordering::SeqCst) {
            Reply::status(422).body(r#"{"error":"unknown customer"}"#)
        } else {
            Reply::ok()
        }
    })
    .await;
    (provider, fixed)
}

fn keys() -> Vec<ApiKeySettings> {
    [
        ("support", READ_KEY, Scope::Read),
        ("oncall", OPERATE_KEY, Scope::Operate),
    ]
    .into_iter()
    .map(|(name, key, scope)| ApiKeySettings {
        name: name.into(),
        hash: apikey::hash(key),
        scope,
    })
    .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_key_sees_no_actions_and_an_operator_pauses_and_resumes() {
    let provider = FakeProvider::start().await;
    let nats = TestNats::start().await.unwrap();
    let mut settings = Pipeline::settings(nats.url());
    settings.control.allow_unauthenticated = false;
    settings.control.api_keys = keys();
    let pipeline = Pipeline::start_with(nats, settings, &catalog(provider.url()))
        .await
        .unwrap();

    // Nothing without a session but the sign-in page.
    let reader = Browser::new(&pipeline.console_url);
    let page = eventually(Duration::from_secs(10), "the console", || async {
        let page = reader.get("/").await;
        (page.status != 0).then_some(page)
    })
    .await;
    assert_eq!(page.status, 303);
    assert_eq!(page.location, "/sign-in?next=%2F");
    let refused = reader
        .post("/providers/crm/pause", &[("reason", "x")])
        .await;
    assert_eq!(refused.status, 303, "no session: to the sign-in page");

    // A wrong key changes nothing and says why.
    let wrong = reader.sign_in("sy_guess").await;
    assert_eq!(wrong.status, 401);
    assert!(
        wrong.body.contains("not one of control&#39;s API keys")
            || wrong.body.contains("not one of control's API keys"),
        "{}",
        wrong.body
    );
    assert!(
        !reader
            .cookies
            .lock()
            .unwrap()
            .contains_key("switchyard_session")
    );
    // A sign-in form posted without its cookie's token is refused.
    let forged = reader
        .post("/sign-in", &[("csrf", "0000"), ("key", READ_KEY)])
        .await;
    assert_eq!(forged.status, 403);

    // The read key: a session cookie no script can read, pages, and no action buttons.
    let signed_in = reader.sign_in(READ_KEY).await;
    assert_eq!(signed_in.status, 303, "{}", signed_in.body);
    assert_eq!(signed_in.location, "/");
    let session_cookie = signed_in
        .set_cookies
        .iter()
        .find(|c| c.starts_with("switchyard_session="))
        .expect("a session cookie");
    assert!(session_cookie.contains("HttpOnly"), "{session_cookie}");
    assert!(
        session_cookie.contains("SameSite=Strict"),
        "{session_cookie}"
    );
    let overview = reader.get("/").await;
    assert_eq!(overview.status, 200, "{}", overview.body);
    assert!(
        overview.body.contains("support · read"),
        "{}",
        overview.body
    );
    assert!(overview.body.contains("href=\"/providers/crm\""));
    let csp = overview.headers["content-security-policy"]
        .to_str()
        .unwrap();
    assert!(csp.contains("default-src 'none'"), "{csp}");
    let page = reader.get("/providers/crm").await;
    assert_eq!(page.status, 200, "{}", page.body);
    assert!(
        !page.body.contains("/providers/crm/pause"),
        "no pause button"
    );
    assert!(!page.body.contains("/providers/crm/resume"));

    // A POST it crafts: without the token, refused as CSRF; with it, refused by scope.
    let no_token = reader
        .post("/providers/crm/pause", &[("reason", "x")])
        .await;
    assert_eq!(no_token.status, 403);
    assert!(no_token.body.contains("CSRF"), "{}", no_token.body);
    let crafted = reader
        .submit(&page, "/providers/crm/pause", &[("reason", "crafted")])
        .await;
    assert_eq!(crafted.status, 403, "{}", crafted.body);
    assert!(crafted.body.contains("needs operate"), "{}", crafted.body);
    assert!(!reader.get("/providers/crm").await.body.contains("crafted"));

    // The operator pauses: nothing reaches the provider until it resumes.
    let operator = Browser::new(&pipeline.console_url);
    assert_eq!(operator.sign_in(OPERATE_KEY).await.status, 303);
    let page = operator.get("/providers/crm").await;
    assert!(
        page.body.contains("action=\"/providers/crm/pause\""),
        "{}",
        page.body
    );
    let empty = operator
        .submit(&page, "/providers/crm/pause", &[("reason", " ")])
        .await;
    assert_eq!(empty.status, 400, "a pause needs a reason");
    let paused = operator
        .submit(
            &page,
            "/providers/crm/pause",
            &[("reason", "CRM maintenance until 10:00")],
        )
        .await;
    assert_eq!(paused.status, 303, "{}", paused.body);
    let page = operator.get("/providers/crm").await;
    assert!(page.body.contains("paused"), "{}", page.body);
    assert!(page.body.contains("CRM maintenance until 10:00"));
    assert!(page.body.contains("by oncall"));
    // The pause reaches the delivery process through KV; give it a moment.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let ids: Vec<String> = (0..5).map(|i| format!("p{i}")).collect();
    crate::publish_orders(&pipeline, "order.created", &ids).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(provider.received().is_empty(), "a request while paused");
    // The breaker reset is there for operators too (refused to the read key).
    let reset = operator
        .submit(&page, "/providers/crm/reset-breaker", &[])
        .await;
    assert_eq!(reset.status, 303, "{}", reset.body);
    let denied = reader
        .submit(
            &reader.get("/providers/crm").await,
            "/providers/crm/reset-breaker",
            &[],
        )
        .await;
    assert_eq!(denied.status, 403, "{}", denied.body);
    let resumed = operator.submit(&page, "/providers/crm/resume", &[]).await;
    assert_eq!(resumed.status, 303, "{}", resumed.body);
    provider.wait_for_accepted(5, Duration::from_secs(15)).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut got: Vec<String> = provider.received().iter().map(order_id).collect();
    got.sort();
    assert_eq!(got, ids, "each once");
    // The overview's rates count them: delivered, none failed.
    let overview = operator.get("/").await;
    let row = &overview.body[overview.body.find("href=\"/providers/crm\"").unwrap()..];
    let row = &row[..row.find("</tr>").unwrap()];
    assert!(row.contains(">0.0%<"), "no attempt failed: {row}");
    assert!(
        !row.contains("<td class=\"number\">0.0</td>"),
        "deliveries were counted: {row}"
    );

    // Signing out ends the session: its cookie no longer opens a page.
    let page = operator.get("/").await;
    let out = operator.submit(&page, "/sign-out", &[]).await;
    assert_eq!(out.status, 303);
    assert_eq!(operator.get("/").await.status, 303);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_and_its_dead_letter_replayed_once_from_the_console() {
    // The CRM rejects order r1 until it is fixed.
    let (provider, fixed) = rejecting_r1().await;
    // Open, as in `switchyard dev`: no sign-in, the CSRF check still on.
    let nats = TestNats::start().await.unwrap();
    let mut settings = Pipeline::settings(nats.url());
    settings.control.console.jaeger_url = Some("http://jaeger.example:16686/".into());
    let pipeline = Pipeline::start_with(nats, settings, &catalog(provider.url()))
        .await
        .unwrap();
    let browser = Browser::new(&pipeline.console_url);
    // Open, but a POST from elsewhere (no session, no token) still changes nothing.
    let forged = browser
        .post("/providers/crm/pause", &[("reason", "forged")])
        .await;
    assert_eq!(forged.status, 403, "{}", forged.body);
    let providers = browser.get("/providers").await;
    assert!(
        providers.body.contains("href=\"/providers/crm\""),
        "{}",
        providers.body
    );
    assert!(!providers.body.contains("paused"), "{}", providers.body);

    let body =
        serde_json::json!({"id": "r1", "email": "<script>alert(1)</script>@x.example", "total": 3});
    let accepted: serde_json::Value = pipeline
        .http
        .post(format!(
            "{}/v1/events/shop?type=order.created",
            pipeline.ingest_url
        ))
        .header(
            "traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        )
        .json(&body)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let event_id = accepted["event_id"].as_str().unwrap().to_owned();

    // The event's page: the body as text, the route dead-lettered with its attempt.
    let page = eventually(
        Duration::from_secs(15),
        "the event dead-lettered",
        || async {
            let page = browser.get(&format!("/events?id={event_id}")).await;
            // The dead letter and the attempt's outcome record are stored apart: wait for
            // both.
            (page.status == 200
                && page.body.contains("dead_lettered")
                && page.body.contains(">422<"))
            .then_some(page)
        },
    )
    .await;
    assert!(
        page.body.contains("&lt;script&gt;alert(1)&lt;/script&gt;"),
        "{}",
        page.body
    );
    assert!(!page.body.contains("<script>"), "a script tag in the page");
    assert!(
        page.body.contains("422"),
        "the attempt's status: {}",
        page.body
    );
    assert!(page.body.contains("order-to-contact@1"));
    assert!(
        page.body
            .contains("<p class=\"explained needs_human\"><strong>Needs a person: </strong>"),
        "the attempt's verdict: {}",
        page.body
    );
    assert!(
        page.body.contains(
            "href=\"http://jaeger.example:16686/trace/4bf92f3577b34da6a3ce929d0e0e4736\""
        ),
        "the trace in Jaeger: {}",
        page.body
    );
    let unknown = browser
        .get("/events?id=00000000-0000-7000-8000-000000000000")
        .await;
    assert_eq!(unknown.status, 404);

    // The dead letter, listed by provider and category, and shown.
    let list = browser
        .get("/dead-letters?provider=crm&category=rejected")
        .await;
    assert_eq!(list.status, 200, "{}", list.body);
    let sequence = field(&list.body, "sequence").expect("a dead letter to select");
    let shown = browser.get(&format!("/dead-letters/{sequence}")).await;
    assert!(shown.body.contains("unknown customer"), "{}", shown.body);
    assert!(list.body.contains("<td>needs human</td>"), "{}", list.body);
    assert!(
        shown.body.contains("Needs a person: ")
            && shown
                .body
                .contains(&format!("`syctl dlq replay {sequence}`.")),
        "the verdict and the next step: {}",
        shown.body
    );
    assert!(
        shown.body.contains("&lt;script&gt;"),
        "the mapped body, escaped"
    );
    let none = browser
        .get("/dead-letters?provider=crm&category=mapping")
        .await;
    assert!(none.body.contains("No dead letters match."));
    let bad = browser.get("/dead-letters?since=yesterday").await;
    assert_eq!(bad.status, 400);
    assert!(bad.body.contains("since"), "{}", bad.body);

    // Fixed: replayed from the console, with progress, and received once.
    fixed.store(true, Ordering::SeqCst);
    let started = browser
        .submit(
            &list,
            "/dead-letters/replay",
            &[("sequence", &sequence), ("scope", "selected")],
        )
        .await;
    assert_eq!(started.status, 303, "{}", started.body);
    assert!(started.location.starts_with("/dead-letters/replays/"));
    let done = eventually(Duration::from_secs(15), "the replay done", || async {
        let page = browser.get(&started.location).await;
        (page.status == 200 && page.body.contains(">done<")).then_some(page)
    })
    .await;
    assert!(done.body.contains("id=\"replayed\">1<"), "{}", done.body);
    assert!(
        !done.body.contains("http-equiv=\"refresh\""),
        "a finished replay stops reloading"
    );
    provider.wait_for_accepted(1, Duration::from_secs(15)).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let r1: Vec<_> = provider
        .accepted()
        .into_iter()
        .filter(|r| order_id(r) == "r1")
        .collect();
    assert_eq!(r1.len(), 1, "r1 delivered exactly once");
    assert!(
        browser
            .get("/dead-letters?provider=crm")
            .await
            .body
            .contains("No dead letters match."),
        "the replayed dead letter is gone"
    );

    // A purge asks first, and changes nothing until confirmed.
    fixed.store(false, Ordering::SeqCst);
    crate::publish_orders(&pipeline, "order.created", &["r1".into()]).await;
    let list = eventually(Duration::from_secs(15), "a second dead letter", || async {
        let page = browser.get("/dead-letters?provider=crm").await;
        field(&page.body, "sequence").map(|_| page)
    })
    .await;
    let sequence = field(&list.body, "sequence").unwrap();
    let asked = browser
        .submit(
            &list,
            "/dead-letters/purge",
            &[("sequence", &sequence), ("scope", "selected")],
        )
        .await;
    assert_eq!(asked.status, 200, "{}", asked.body);
    assert!(asked.body.contains("Purge dead letters?"), "{}", asked.body);
    let still = browser.get("/dead-letters?provider=crm").await;
    assert_eq!(
        field(&still.body, "sequence").as_deref(),
        Some(sequence.as_str())
    );
    let purged = browser
        .submit(
            &asked,
            "/dead-letters/purge",
            &[
                ("sequence", &sequence),
                ("scope", "selected"),
                ("confirm", "yes"),
            ],
        )
        .await;
    assert!(purged.body.contains("id=\"purged\">1<"), "{}", purged.body);
    assert!(
        browser
            .get("/dead-letters?provider=crm")
            .await
            .body
            .contains("No dead letters match.")
    );

    // The overview shows the source's last event, as `syctl sources status --all` does.
    let overview = browser.get("/").await;
    assert!(overview.body.contains(">shop<"), "{}", overview.body);
    assert!(overview.body.contains("sends"));
    let output = tokio::process::Command::new(switchyard_tests::syctl())
        .args([
            "--server",
            &pipeline.control_url,
            "-o",
            "json",
            "sources",
            "status",
            "--all",
        ])
        .output()
        .await
        .unwrap();
    let status: serde_json::Value = serde_json::from_str(&switchyard_tests::succeeded(
        "syctl sources status --all",
        output,
    ))
    .unwrap();
    assert_eq!(status[0]["source"], "shop", "{status}");
    assert!(status[0]["last_event"].is_string(), "{status}");
    assert_eq!(
        status[0]["recent_events"], 2,
        "two events in five minutes: {status}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dry_runs_of_mappings_and_catalog_documents_show_what_would_happen() {
    let provider = FakeProvider::start().await;
    let pipeline = Pipeline::start(&catalog(provider.url())).await.unwrap();
    let browser = Browser::new(&pipeline.console_url);
    let page = eventually(Duration::from_secs(10), "the console", || async {
        let page = browser.get("/mappings").await;
        (page.status == 200).then_some(page)
    })
    .await;
    assert!(page.body.contains("order-to-contact@1"), "{}", page.body);

    // A published version on a sample, then an edit that does not compile.
    let sample = r#"{"id": "a1", "email": "A@B.C", "total": 2}"#;
    let ran = browser
        .submit(
            &page,
            "/mappings",
            &[
                ("reference", "order-to-contact@1"),
                ("document", ""),
                ("sample", sample),
            ],
        )
        .await;
    assert_eq!(ran.status, 200, "{}", ran.body);
    assert!(ran.body.contains("passes"), "{}", ran.body);
    assert!(ran.body.contains("&quot;cents&quot;: 200"), "{}", ran.body);
    let edit = browser.get("/mappings?edit=order-to-contact%401").await;
    assert!(
        edit.body.contains("to_int!(.total)"),
        "the program in the editor: {}",
        edit.body
    );
    let broken = "name: order-to-contact\nversion: 2\nprogram: |\n  .a = 1\n  .b = upcase(.c)\n";
    let ran = browser
        .submit(
            &page,
            "/mappings",
            &[("reference", ""), ("document", broken), ("sample", sample)],
        )
        .await;
    assert_eq!(ran.status, 200, "{}", ran.body);
    assert!(ran.body.contains("does not pass"), "{}", ran.body);
    assert!(ran.body.contains("Diagnostics"));
    assert!(ran.body.contains(":2:"), "line and column: {}", ran.body);
    let bad_sample = browser
        .submit(
            &page,
            "/mappings",
            &[("reference", "order-to-contact@1"), ("sample", "{not json")],
        )
        .await;
    assert!(bad_sample.body.contains("sample"), "{}", bad_sample.body);

    // The catalog: every resource, its YAML, and an apply that shows its plan first.
    let listed = browser.get("/catalog").await;
    assert!(
        listed.body.contains("href=\"/catalog/provider/crm\""),
        "{}",
        listed.body
    );
    let crm = browser.get("/catalog/provider/crm").await;
    assert!(crm.body.contains("timeout: 2s"), "{}", crm.body);
    let form = browser.get("/catalog/apply").await;
    let document = catalog(provider.url()).replace("timeout: 2s", "timeout: 3s");
    let plan = browser
        .submit(
            &form,
            "/catalog/apply",
            &[("document", &document), ("step", "plan")],
        )
        .await;
    assert_eq!(plan.status, 200, "{}", plan.body);
    assert!(plan.body.contains("update"), "{}", plan.body);
    assert!(
        plan.body
            .contains("timeout: &quot;2s&quot; → &quot;3s&quot;"),
        "{}",
        plan.body
    );
    assert!(
        browser
            .get("/catalog/provider/crm")
            .await
            .body
            .contains("timeout: 2s"),
        "a plan changes nothing"
    );
    let revision = field(&plan.body, "revision").expect("the plan's revision");
    let applied = browser
        .submit(
            &plan,
            "/catalog/apply",
            &[
                ("document", &document),
                ("revision", &revision),
                ("step", "apply"),
            ],
        )
        .await;
    assert_eq!(applied.status, 200, "{}", applied.body);
    assert!(applied.body.contains("Applied"), "{}", applied.body);
    assert!(
        browser
            .get("/catalog/provider/crm")
            .await
            .body
            .contains("timeout: 3s")
    );
    let refused = browser
        .submit(
            &form,
            "/catalog/apply",
            &[("document", "routes: [{name: x}]"), ("step", "plan")],
        )
        .await;
    assert!(refused.body.contains("nothing changed"), "{}", refused.body);
}

/// Headless Chromium, driven through `tests/clients/console_browser.py` (Selenium).
struct Chromium {
    child: tokio::process::Child,
    commands: tokio::process::ChildStdin,
    answers: tokio::io::Lines<tokio::io::BufReader<tokio::process::ChildStdout>>,
}

impl Chromium {
    async fn start(base: &str, screenshots: &std::path::Path) -> Self {
        use tokio::io::AsyncBufReadExt;
        let script =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("clients/console_browser.py");
        let mut child = tokio::process::Command::new("python3")
            .arg(script)
            .arg(base)
            .arg(screenshots)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            // Not killed when the test fails: its stdin closes, and the script then
            // quits Chromium and exits, where a kill would leave Chromium running.
            .spawn()
            .expect("python3 runs");
        let commands = child.stdin.take().unwrap();
        let mut answers = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
        let ready = tokio::time::timeout(Duration::from_secs(60), answers.next_line())
            .await
            .expect("Chromium starts within 60 s")
            .unwrap()
            .expect("the browser script answers (are chromium, chromium-driver and selenium installed?)");
        assert!(ready.contains("ready"), "{ready}");
        Self {
            child,
            commands,
            answers,
        }
    }

    async fn send(&mut self, command: serde_json::Value) -> serde_json::Value {
        use tokio::io::AsyncWriteExt;
        let line = format!("{command}\n");
        self.commands.write_all(line.as_bytes()).await.unwrap();
        let answer = tokio::time::timeout(Duration::from_secs(60), self.answers.next_line())
            .await
            .unwrap_or_else(|_| panic!("no answer to {command} within 60 s"))
            .unwrap()
            .unwrap_or_else(|| panic!("the browser script ended at {command}"));
        let answer: serde_json::Value = serde_json::from_str(&answer).unwrap();
        assert!(answer.get("error").is_none(), "{command}: {answer}");
        answer
    }

    /// Opens `path`; returns the page's title.
    async fn get(&mut self, path: &str) -> String {
        let page = self
            .send(serde_json::json!({"op": "get", "path": path}))
            .await;
        page["title"].as_str().unwrap().to_owned()
    }

    async fn click(&mut self, css: &str) -> String {
        let page = self
            .send(serde_json::json!({"op": "click", "css": css}))
            .await;
        page["title"].as_str().unwrap().to_owned()
    }

    async fn type_into(&mut self, css: &str, text: &str) {
        self.send(serde_json::json!({"op": "type", "css": css, "text": text}))
            .await;
    }

    async fn count(&mut self, css: &str) -> u64 {
        self.send(serde_json::json!({"op": "count", "css": css}))
            .await["count"]
            .as_u64()
            .unwrap()
    }

    async fn text(&mut self, css: &str) -> String {
        self.send(serde_json::json!({"op": "text", "css": css}))
            .await["text"]
            .as_str()
            .unwrap()
            .to_owned()
    }

    async fn screenshot(&mut self, name: &str) {
        self.send(serde_json::json!({"op": "screenshot", "name": name}))
            .await;
    }

    /// Signs in from the keyboard alone: the key field has the focus, Enter submits.
    async fn sign_in(&mut self, key: &str) -> String {
        let title = self.get("/").await;
        assert!(title.starts_with("Sign in"), "{title}");
        let focused = self.send(serde_json::json!({"op": "focused"})).await;
        assert_eq!(
            focused["name"], "key",
            "the key field has the focus: {focused}"
        );
        let page = self
            .send(serde_json::json!({"op": "keys", "text": format!("{key}\n")}))
            .await;
        page["title"].as_str().unwrap().to_owned()
    }

    async fn quit(mut self) {
        self.send_quit().await;
        let _ = tokio::time::timeout(Duration::from_secs(20), self.child.wait()).await;
    }

    async fn send_quit(&mut self) {
        use tokio::io::AsyncWriteExt;
        let _ = self.commands.write_all(b"{\"op\": \"quit\"}\n").await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_a_real_browser_scopes_hold_and_an_operator_replays_pauses_and_tries_a_mapping() {
    let (provider, fixed) = rejecting_r1().await;
    let nats = TestNats::start().await.unwrap();
    let mut settings = Pipeline::settings(nats.url());
    settings.control.allow_unauthenticated = false;
    settings.control.api_keys = keys();
    settings.control.console.jaeger_url = Some("http://127.0.0.1:16686".into());
    let pipeline = Pipeline::start_with(nats, settings, &catalog(provider.url()))
        .await
        .unwrap();
    let screenshots = switchyard_tests::target_dir().join("console-screenshots");
    let mut browser = Chromium::start(&pipeline.console_url, &screenshots).await;

    // A read key: no action buttons, and a POST it crafts is refused.
    browser.get("/").await;
    browser.screenshot("sign-in").await;
    let title = browser.sign_in(READ_KEY).await;
    assert!(title.starts_with("Overview"), "{title}");
    browser.get("/providers/crm").await;
    assert_eq!(
        browser.count("form[action='/providers/crm/pause']").await,
        0
    );
    assert_eq!(
        browser.count("form[action='/providers/crm/resume']").await,
        0
    );
    browser
        .send(serde_json::json!({"op": "craft_post", "action": "/providers/crm/pause", "fields": {"reason": "crafted"}}))
        .await;
    let refused = browser.text("h1").await;
    assert_eq!(refused, "Forbidden");
    assert!(browser.text(".problem").await.contains("needs operate"));
    browser.get("/providers/crm").await;
    assert!(
        !browser.text("main").await.contains("crafted"),
        "nothing changed"
    );
    browser.click("form[action='/sign-out'] button").await;

    // An operator: the dead letter of r1, replayed once it is fixed.
    assert!(browser.sign_in(OPERATE_KEY).await.starts_with("Overview"));
    let mut ids = Vec::new();
    for id in ["a1", "a2", "r1"] {
        let body = serde_json::json!({"id": id, "email": format!("{id}@shop.example"), "total": 5});
        let accepted: serde_json::Value = pipeline
            .http
            .post(format!(
                "{}/v1/events/shop?type=order.created",
                pipeline.ingest_url
            ))
            .json(&body)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        ids.push(accepted["event_id"].as_str().unwrap().to_owned());
    }
    provider.wait_for_accepted(2, Duration::from_secs(15)).await;
    let mut found = false;
    for _ in 0..60 {
        browser.get("/dead-letters?provider=crm").await;
        if browser.count("input[name=sequence]").await == 1 {
            found = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert!(found, "r1's dead letter is listed");
    browser.screenshot("dead-letters").await;
    browser.click("td.number a").await;
    assert!(browser.text("main").await.contains("unknown customer"));
    browser.screenshot("dead-letter").await;
    browser.get(&format!("/events?id={}", ids[2])).await;
    assert!(browser.text("main").await.contains("dead_lettered"));
    assert_eq!(
        browser
            .count("a[href^='http://127.0.0.1:16686/trace/']")
            .await,
        1
    );
    browser.screenshot("event").await;

    fixed.store(true, Ordering::SeqCst);
    browser.get("/dead-letters?provider=crm").await;
    browser.click("input[name=sequence]").await;
    let title = browser
        .click("button[name=scope][value=selected]:not(.danger)")
        .await;
    assert!(title.starts_with("Replay"), "{title}");
    let mut state = String::new();
    for _ in 0..60 {
        state = browser.text("dl.facts dd").await;
        if state.starts_with("done") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert!(state.starts_with("done"), "{state}");
    assert_eq!(browser.text("#replayed").await, "1");
    browser.screenshot("replay").await;
    provider.wait_for_accepted(3, Duration::from_secs(15)).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let r1 = provider
        .accepted()
        .iter()
        .filter(|r| order_id(r) == "r1")
        .count();
    assert_eq!(r1, 1, "r1 delivered exactly once");

    // Pause: no request reaches the provider until the operator resumes.
    browser.get("/providers/crm").await;
    browser.type_into("#reason", "CRM maintenance").await;
    browser
        .click("form[action='/providers/crm/pause'] button")
        .await;
    assert!(browser.text("main").await.contains("CRM maintenance"));
    browser.screenshot("provider").await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = provider.received().len();
    let later: Vec<String> = (0..3).map(|i| format!("p{i}")).collect();
    crate::publish_orders(&pipeline, "order.created", &later).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(provider.received().len(), before, "a request while paused");
    browser
        .click("form[action='/providers/crm/resume'] button")
        .await;
    provider.wait_for_accepted(6, Duration::from_secs(15)).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    for id in &later {
        let count = provider
            .accepted()
            .iter()
            .filter(|r| &order_id(r) == id)
            .count();
        assert_eq!(count, 1, "{id} once");
    }

    // A dry run of an edit that does not compile shows VRL's diagnostic.
    browser.get("/mappings").await;
    browser
        .type_into("#sample", r#"{"id": "a1", "email": "A@B.C", "total": 2}"#)
        .await;
    browser
        .type_into(
            "#document",
            "name: order-to-contact\nversion: 2\nprogram: |\n  .a = 1\n  .b = upcase(.c)\n",
        )
        .await;
    browser.click("form.trial button").await;
    let diagnostics = browser.text(".diagnostics").await;
    assert!(diagnostics.contains(":2:"), "{diagnostics}");
    browser.screenshot("mappings").await;

    browser.get("/").await;
    browser.screenshot("overview").await;
    // From the keyboard: the first Tab reaches the skip link, the next the sections.
    browser
        .send(serde_json::json!({"op": "keys", "text": "\t"}))
        .await;
    let focused = browser.send(serde_json::json!({"op": "focused"})).await;
    assert_eq!(focused["text"], "Skip to the content", "{focused}");
    browser
        .send(serde_json::json!({"op": "keys", "text": "\t\t"}))
        .await;
    let focused = browser.send(serde_json::json!({"op": "focused"})).await;
    assert_eq!(focused["text"], "Overview", "{focused}");
    browser.get("/catalog").await;
    browser.screenshot("catalog").await;
    browser.quit().await;
    for page in [
        "sign-in",
        "overview",
        "event",
        "dead-letters",
        "dead-letter",
        "replay",
        "provider",
        "mappings",
        "catalog",
    ] {
        let shot = screenshots.join(format!("{page}.png"));
        let size = std::fs::metadata(&shot).map(|m| m.len()).unwrap_or(0);
        assert!(size > 10_000, "{} is {size} bytes", shot.display());
    }
}
