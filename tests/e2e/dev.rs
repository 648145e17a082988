//! `switchyard dev` is private by default: every listener on loopback, the banner shows
//! the addresses actually bound, and it warns when the control API is open to the
//! network without API keys.

use std::time::Duration;

use switchyard_tests::{TestNats, binary};
use tokio::io::{AsyncBufReadExt, BufReader};

/// Starts `switchyard dev` with the quickstart catalog and `env`, and returns the
/// process and its banner.
async fn dev(nats: &TestNats, env: &[(&str, &str)]) -> (tokio::process::Child, String) {
    let store = tempfile::tempdir().unwrap();
    let catalog =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/examples/quickstart.yaml");
    let mut command = tokio::process::Command::new(binary("switchyard"));
    command
        .args(["dev", "--nats-url", nats.url(), "--catalog"])
        .arg(&catalog)
        .env("SWITCHYARD__DEV__STORE_DIR", store.keep())
        .env("SWITCHYARD__INGEST__LISTEN", "127.0.0.1:0")
        .env("SWITCHYARD__ADMIN__LISTEN", "127.0.0.1:0")
        .env("SWITCHYARD__DEV__ECHO_LISTEN", "127.0.0.1:0")
        .env("SWITCHYARD__CONTROL__LISTEN", "127.0.0.1:0")
        .env("SWITCHYARD__CONTROL__CONSOLE__LISTEN", "127.0.0.1:0")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true);
    for (key, value) in env {
        command.env(key, value);
    }
    let mut child = command.spawn().unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut banner = String::new();
    tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(line) = lines.next_line().await.unwrap() {
            banner.push_str(&line);
            banner.push('\n');
            // The last line of the banner: the example's body.
            if line.trim_start().starts_with("-d '") {
                break;
            }
        }
    })
    .await
    .expect("the banner within 30 s");
    (child, banner)
}

/// The `host:port` after `label` in the banner.
fn address(banner: &str, label: &str) -> std::net::SocketAddr {
    let line = banner
        .lines()
        .find(|line| line.trim_start().starts_with(label))
        .unwrap_or_else(|| panic!("no {label} line in {banner}"));
    let word = line.split_whitespace().nth(1).unwrap();
    let address = word
        .trim_start_matches("http://")
        .trim_end_matches("/metrics");
    address
        .parse()
        .unwrap_or_else(|_| panic!("{word} in {line}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dev_binds_loopback_and_the_banner_shows_what_was_bound() {
    let nats = TestNats::start().await.unwrap();
    let (_child, banner) = dev(&nats, &[]).await;
    for label in ["ingest", "control", "console", "echo", "metrics"] {
        let bound = address(&banner, label);
        assert!(bound.ip().is_loopback(), "{label}: {banner}");
        assert_ne!(
            bound.port(),
            0,
            "the bound port, not the configured 0: {banner}"
        );
        tokio::net::TcpStream::connect(bound)
            .await
            .unwrap_or_else(|err| panic!("{label} at {bound}: {err}"));
    }
    assert!(!banner.contains("WARNING"), "{banner}");

    // The curl the banner prints works as printed.
    let ingest = address(&banner, "ingest");
    assert!(banner.contains(&format!("curl -sS -X POST 'http://{ingest}/v1/events/shop")));
    let response = reqwest::Client::new()
        .post(format!("http://{ingest}/v1/events/shop?type=order.created"))
        .header("Idempotency-Key", "order-1001")
        .json(&serde_json::json!({"id":"1001","customer":{"email":"Ada@Example.com"},"total":"42.50","currency":"eur"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202);

    // The console opens without a sign-in on a laptop.
    let console = address(&banner, "console");
    let overview = reqwest::get(format!("http://{console}/")).await.unwrap();
    assert_eq!(overview.status(), 200);
    assert!(overview.text().await.unwrap().contains("anonymous · admin"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dev_warns_when_the_control_api_is_open_to_the_network_without_keys() {
    let nats = TestNats::start().await.unwrap();
    let (_child, banner) = dev(&nats, &[("SWITCHYARD__CONTROL__LISTEN", "0.0.0.0:0")]).await;
    let control = address(&banner, "control");
    assert!(control.ip().is_unspecified(), "{banner}");
    assert!(
        banner.contains(&format!(
            "WARNING: the control API on {control} is reachable beyond this machine and accepts every caller as admin"
        )),
        "{banner}"
    );
}
