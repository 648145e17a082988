//! A real Prometheus (Debian's `prometheus` package) scrapes every service process and
//! loads the alert rules: every Switchyard metric arrives with its type and help, every
//! rule evaluates, and `promtool` accepts both the rules and the classic exposition.
//! Every rule has `promtool test rules` cases in which it fires and stays quiet.

use std::{collections::BTreeMap, path::PathBuf, time::Duration};

use serde_json::Value;
use switchyard_tests::{FakeProvider, eventually, free_port, processes::Processes, succeeded};

use crate::{catalog, order};

/// A program of the `prometheus` package, from `PROMETHEUS_BIN`'s directory or PATH.
fn prometheus_tool(name: &str) -> PathBuf {
    let path = std::env::var_os("PROMETHEUS_BIN")
        .map(PathBuf::from)
        .and_then(|bin| Some(bin.parent()?.join(name)))
        .or_else(|| {
            std::env::var_os("PATH").and_then(|paths| {
                std::env::split_paths(&paths)
                    .map(|dir| dir.join(name))
                    .find(|path| path.exists())
            })
        });
    match path {
        Some(path) if path.exists() => path,
        _ => panic!("{name} is missing: install the Debian package prometheus (make test does)"),
    }
}

/// Every metric family this build exports, with its type and help, read from the
/// exposition the services write.
fn families() -> BTreeMap<String, (String, String)> {
    let text = switchyard_core::metrics::encode();
    let mut families = BTreeMap::new();
    let mut help = BTreeMap::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, text) = rest.split_once(' ').unwrap();
            help.insert(name.to_owned(), text.to_owned());
        } else if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap();
            families.insert(
                name.to_owned(),
                (kind.to_owned(), help.get(name).cloned().unwrap_or_default()),
            );
        }
    }
    families
}

async fn api(client: &reqwest::Client, base: &str, path: &str) -> Option<Value> {
    let body: Value = client
        .get(format!("{base}{path}"))
        .send()
        .await
        .ok()?
        .json()
        .await
        .ok()?;
    (body["status"] == "success").then(|| body["data"].clone())
}

#[test]
fn every_alert_rule_is_unit_tested_firing_and_quiet() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy/prometheus");
    succeeded(
        "promtool test rules",
        std::process::Command::new(prometheus_tool("promtool"))
            .args(["test", "rules", "alerts_test.yaml", "alerts_week_test.yaml"])
            .current_dir(&dir)
            .output()
            .unwrap(),
    );
    let read = |file: &str| -> Value {
        serde_yaml_ng::from_str(&std::fs::read_to_string(dir.join(file)).unwrap()).unwrap()
    };
    let rules = read("alerts.yaml");
    let files = [read("alerts_test.yaml"), read("alerts_week_test.yaml")];
    let cases: Vec<(&str, bool)> = files
        .iter()
        .flat_map(|file| file["tests"].as_array().unwrap())
        .flat_map(|test| test["alert_rule_test"].as_array().unwrap())
        .map(|case| {
            let fires = !case["exp_alerts"].as_array().unwrap().is_empty();
            (case["alertname"].as_str().unwrap(), fires)
        })
        .collect();
    for group in rules["groups"].as_array().unwrap() {
        for rule in group["rules"].as_array().unwrap() {
            let name = rule["alert"].as_str().unwrap();
            for fires in [true, false] {
                assert!(
                    cases.contains(&(name, fires)),
                    "{name} has no case in alerts_test.yaml where it {}",
                    if fires { "fires" } else { "stays quiet" }
                );
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_scrapes_every_service_and_evaluates_every_rule() {
    let prometheus = prometheus_tool("prometheus");
    let promtool = prometheus_tool("promtool");
    let rules = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy/prometheus/alerts.yaml");
    succeeded(
        "promtool check rules",
        std::process::Command::new(&promtool)
            .args(["check", "rules"])
            .arg(&rules)
            .output()
            .unwrap(),
    );

    let provider = FakeProvider::start().await;
    let processes = Processes::start(
        &catalog(provider.url()),
        &["ingest", "transform", "delivery", "control"],
    )
    .await
    .unwrap();
    let targets: Vec<String> = processes
        .services()
        .iter()
        .map(|process| format!("'{}'", process.admin))
        .collect();

    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global: {{ scrape_interval: 1s, evaluation_interval: 1s }}\nrule_files: ['{}']\nscrape_configs:\n  - job_name: switchyard\n    static_configs:\n      - targets: [{}]\n",
            rules.display(),
            targets.join(", ")
        ),
    )
    .unwrap();
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let _server = tokio::process::Command::new(&prometheus)
        .arg(format!("--config.file={}", config.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.path().join("data").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .arg("--log.level=warn")
        .kill_on_drop(true)
        .spawn()
        .unwrap();

    // Some traffic, so the labelled series exist too.
    let client = reqwest::Client::new();
    eventually(Duration::from_secs(20), "ingest accepts events", || async {
        let response = client
            .post(format!(
                "{}/v1/events/shop?type=order.created",
                processes.ingest_url
            ))
            .header("Idempotency-Key", "p-1")
            .json(&order("p-1", 3))
            .send()
            .await
            .ok()?;
        response.status().is_success().then_some(())
    })
    .await;
    provider.wait_for_accepted(1, Duration::from_secs(20)).await;

    let up = eventually(Duration::from_secs(30), "every target up", || async {
        let data = api(&client, &base, "/api/v1/targets").await?;
        let active = data["activeTargets"].as_array()?.clone();
        (active.len() == targets.len() && active.iter().all(|t| t["health"] == "up"))
            .then_some(active)
    })
    .await;
    assert_eq!(up.len(), 4, "{up:?}");

    // Prometheus asks for OpenMetrics and is answered in it; scraped as OpenMetrics,
    // a counter's metadata is under its family name.
    let families = families();
    assert!(families.len() >= 15, "{families:?}");
    let metadata = eventually(
        Duration::from_secs(30),
        "every Switchyard metric in the metadata",
        || async {
            let data = api(&client, &base, "/api/v1/metadata").await?;
            families
                .keys()
                .all(|name| data.get(name).is_some())
                .then_some(data)
        },
    )
    .await;
    for (name, (kind, help)) in &families {
        let entry = &metadata[name][0];
        assert_eq!(entry["type"], kind.as_str(), "{name}: {entry}");
        assert_eq!(entry["help"], help.as_str(), "{name}: {entry}");
    }

    // Every rule has been evaluated, without error.
    let groups = eventually(Duration::from_secs(30), "every rule evaluated", || async {
        let data = api(&client, &base, "/api/v1/rules").await?;
        let groups = data["groups"].as_array()?.clone();
        let evaluated = groups.iter().all(|group| {
            group["rules"].as_array().is_some_and(|rules| {
                rules.iter().all(|rule| {
                    rule["lastEvaluation"]
                        .as_str()
                        .is_some_and(|at| !at.starts_with("0001-"))
                })
            })
        });
        (!groups.is_empty() && evaluated).then_some(groups)
    })
    .await;
    let mut count = 0;
    for rule in groups
        .iter()
        .flat_map(|group| group["rules"].as_array().unwrap())
    {
        count += 1;
        assert_eq!(rule["health"], "ok", "{rule}");
    }
    assert!(count >= 6, "{groups:?}");

    // Each service labels what it sends: OpenMetrics when asked for it, the classic
    // format otherwise, which promtool accepts without a complaint.
    for process in processes.services() {
        let url = format!("http://{}/metrics", process.admin);
        let openmetrics = client
            .get(&url)
            .header(
                "Accept",
                "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5",
            )
            .send()
            .await
            .unwrap();
        assert_eq!(
            openmetrics.headers()["content-type"],
            "application/openmetrics-text; version=1.0.0; charset=utf-8"
        );
        assert!(openmetrics.text().await.unwrap().ends_with("# EOF\n"));
        let classic = client.get(&url).send().await.unwrap();
        assert_eq!(
            classic.headers()["content-type"],
            "text/plain; version=0.0.4; charset=utf-8"
        );
        let text = classic.text().await.unwrap();
        assert!(!text.contains("# EOF"), "{text}");
        let mut check = std::process::Command::new(&promtool)
            .args(["check", "metrics"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        use std::io::Write;
        check
            .stdin
            .take()
            .unwrap()
            .write_all(text.as_bytes())
            .unwrap();
        let output = check.wait_with_output().unwrap();
        assert!(
            output.status.success(),
            "promtool check metrics on {}: {}{}",
            process.name,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
}
