//! The Helm chart and the image. The chart lints, renders and validates against
//! Kubernetes' schemas with every values file in `helm/switchyard/ci`; what it renders
//! for a release runs as written — every Deployment's command with its settings file,
//! environment, mounted secrets and probes, then the catalog-apply Job with the key the
//! chart generated — and delivers an event; the image holds every binary it runs.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    process::Stdio,
    time::Duration,
};

use base64::Engine;
use serde_json::{Value, json};
use switchyard_tests::{
    FakeProvider, Reply, TestNats, binary, eventually, free_port, succeeded, tool,
};
use tokio::process::Child;

const CHART: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../helm/switchyard");
/// The oldest Kubernetes minor version still supported upstream when this was written.
const KUBERNETES_VERSION: &str = "1.33.0";
const RELEASE: &str = "sy";
const NAMESPACE: &str = "switchyard";

/// Runs helm with `args`; fails with its output unless it succeeds.
fn helm(args: &[&str]) -> String {
    let output = std::process::Command::new(tool("helm"))
        .args(args)
        .output()
        .expect("helm runs");
    succeeded(&format!("helm {args:?}"), output)
}

/// The manifests `helm template` renders for the release with `values`.
fn render(values: &Path) -> (String, Vec<Value>) {
    let text = helm(&[
        "template",
        RELEASE,
        CHART,
        "--namespace",
        NAMESPACE,
        "-f",
        values.to_str().unwrap(),
    ]);
    // helm separates documents with `---` lines; block scalars are indented, so no
    // such line occurs inside one.
    let documents = format!("\n{text}")
        .split("\n---\n")
        .map(|document| serde_yaml_ng::from_str::<Value>(document).unwrap())
        .filter(|document| !document.is_null())
        .collect();
    (text, documents)
}

fn of_kind<'a>(documents: &'a [Value], kind: &str) -> Vec<&'a Value> {
    documents.iter().filter(|d| d["kind"] == kind).collect()
}

fn named<'a>(documents: &'a [Value], kind: &str, name: &str) -> &'a Value {
    of_kind(documents, kind)
        .into_iter()
        .find(|d| d["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name} rendered"))
}

fn ci_values_files() -> Vec<PathBuf> {
    let mut files: Vec<_> = std::fs::read_dir(format!("{CHART}/ci"))
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .collect();
    files.sort();
    assert!(files.len() >= 3, "{files:?}");
    files
}

#[test]
fn the_chart_lints_renders_and_validates_with_every_ci_values_file() {
    for values in ci_values_files() {
        let name = values.display().to_string();
        helm(&["lint", "--strict", CHART, "-f", &name]);
        let (text, documents) = render(&values);
        let rendered = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(rendered.path(), &text).unwrap();
        let validate = std::process::Command::new("python3")
            .args(["-m", "kubernetes_validate", "--strict", "--quiet", "-k"])
            .arg(KUBERNETES_VERSION)
            .arg(rendered.path())
            .output()
            .expect("python3 runs");
        succeeded(
            &format!("validating {name} against Kubernetes {KUBERNETES_VERSION}"),
            validate,
        );
        check_rendered(&name, &values, &documents);
    }
}

/// What every render must hold, whatever the values.
fn check_rendered(name: &str, values_file: &Path, documents: &[Value]) {
    let values: Value =
        serde_yaml_ng::from_str(&std::fs::read_to_string(values_file).unwrap()).unwrap();
    let providers: Vec<&str> = values["providers"]
        .as_array()
        .map(|list| list.iter().map(|p| p["name"].as_str().unwrap()).collect())
        .unwrap_or_default();
    let deployments = of_kind(documents, "Deployment");
    let mut expected = vec!["ingest".to_owned(), "transform".into(), "control".into()];
    expected.extend(providers.iter().map(|p| format!("delivery-{p}")));
    let components: Vec<String> = deployments
        .iter()
        .map(|d| {
            d["metadata"]["labels"]["app.kubernetes.io/component"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    assert_eq!(
        components, expected,
        "{name}: one Deployment per service and provider"
    );

    let mut pods: Vec<&Value> = deployments.iter().map(|d| &d["spec"]["template"]).collect();
    pods.extend(
        of_kind(documents, "Job")
            .iter()
            .map(|j| &j["spec"]["template"]),
    );
    for pod in pods {
        let spec = &pod["spec"];
        assert_eq!(spec["securityContext"]["runAsNonRoot"], true, "{name}");
        assert_eq!(spec["automountServiceAccountToken"], false, "{name}");
        for container in spec["containers"].as_array().unwrap() {
            let context = &container["securityContext"];
            let what = format!("{name}: container {}", container["name"]);
            assert_eq!(context["readOnlyRootFilesystem"], true, "{what}");
            assert_eq!(context["allowPrivilegeEscalation"], false, "{what}");
            assert_eq!(context["capabilities"]["drop"], json!(["ALL"]), "{what}");
            assert!(
                container["resources"]["limits"]["memory"].is_string(),
                "{what}"
            );
            assert!(
                container["resources"]["requests"]["cpu"].is_string(),
                "{what}"
            );
        }
    }
    for deployment in &deployments {
        let container = &deployment["spec"]["template"]["spec"]["containers"][0];
        let what = format!("{name}: {}", deployment["metadata"]["name"]);
        assert_eq!(
            container["livenessProbe"]["httpGet"]["path"], "/healthz",
            "{what}"
        );
        assert_eq!(
            container["readinessProbe"]["httpGet"]["path"], "/readyz",
            "{what}"
        );
    }
    for provider in &providers {
        let deployment = deployments
            .iter()
            .find(|d| d["metadata"]["name"] == format!("{RELEASE}-switchyard-delivery-{provider}"))
            .unwrap();
        let command = &deployment["spec"]["template"]["spec"]["containers"][0]["command"];
        assert_eq!(
            command,
            &json!(["switchyard-delivery", "--provider", provider]),
            "{name}"
        );
    }
    for component in ["ingest", "transform"] {
        let autoscaled = values[component]["autoscaling"]["enabled"] == true;
        let hpa = of_kind(documents, "HorizontalPodAutoscaler")
            .into_iter()
            .any(|h| {
                h["spec"]["scaleTargetRef"]["name"] == format!("{RELEASE}-switchyard-{component}")
            });
        let deployment = named(
            documents,
            "Deployment",
            &format!("{RELEASE}-switchyard-{component}"),
        );
        assert_eq!(hpa, autoscaled, "{name}: HPA of {component}");
        assert_eq!(
            deployment["spec"]["replicas"].is_null(),
            autoscaled,
            "{name}: an autoscaled Deployment leaves replicas to the HPA"
        );
    }
    // The console: a port of the control Service and of its pods, only when enabled.
    let console = values["control"]["console"]["enabled"] == true;
    let service = named(
        documents,
        "Service",
        &format!("{RELEASE}-switchyard-control"),
    );
    let has_port = |ports: &Value| {
        ports
            .as_array()
            .unwrap()
            .iter()
            .any(|port| port["name"] == "console")
    };
    assert_eq!(
        has_port(&service["spec"]["ports"]),
        console,
        "{name}: console Service port"
    );
    let control = named(
        documents,
        "Deployment",
        &format!("{RELEASE}-switchyard-control"),
    );
    assert_eq!(
        has_port(&control["spec"]["template"]["spec"]["containers"][0]["ports"]),
        console,
        "{name}: console container port"
    );
    let budgets = of_kind(documents, "PodDisruptionBudget").len();
    assert_eq!(
        budgets,
        deployments.len(),
        "{name}: a PodDisruptionBudget each"
    );
}

#[test]
fn the_image_holds_every_binary_the_chart_runs() {
    let dockerfile =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/Dockerfile"))
            .unwrap();
    let copied: Vec<&str> = dockerfile
        .lines()
        .find(|line| line.trim_start().starts_with("&& cp "))
        .expect("the build stage copies the binaries")
        .split_whitespace()
        .skip(2)
        .filter(|word| *word != "/out/")
        .collect();
    let built: Vec<&str> = dockerfile
        .lines()
        .filter_map(|line| line.trim().strip_prefix("--bin "))
        .map(|rest| rest.trim_end_matches(['\\', ' ']))
        .collect();
    assert_eq!(copied, built, "the image copies what it builds");
    assert!(dockerfile.contains("USER 65532:65532"));

    let values = ci_values_files()
        .into_iter()
        .find(|f| f.ends_with("production-values.yaml"))
        .unwrap();
    let (_, documents) = render(&values);
    for kind in ["Deployment", "Job"] {
        for workload in of_kind(&documents, kind) {
            let spec = &workload["spec"]["template"]["spec"];
            assert_eq!(spec["securityContext"]["runAsUser"], 65532);
            for container in spec["containers"].as_array().unwrap() {
                let program = container["command"][0].as_str().unwrap();
                assert!(copied.contains(&program), "{program} is not in the image");
                assert!(
                    binary(program).exists(),
                    "{program} is not a workspace binary"
                );
            }
        }
    }
}

/// A Secret the user creates in the cluster before installing.
const CRM_TOKEN: &str = "crm-t0ken-for-the-chart-test";

/// One pod of a rendered workload, run as a local process: its volumes are files
/// under a temporary root, its environment is resolved as the kubelet would.
struct Pod {
    root: tempfile::TempDir,
    env: BTreeMap<String, String>,
    command: Vec<String>,
    admin_port: Option<u16>,
}

impl Pod {
    fn new(pod_name: &str, template: &Value, objects: &BTreeMap<String, Value>) -> Self {
        let root = tempfile::tempdir().unwrap();
        let spec = &template["spec"];
        let container = &spec["containers"][0];
        let volumes = spec["volumes"].as_array().unwrap();
        let mut env: BTreeMap<String, String> = BTreeMap::new();
        let mut pod = Self {
            root,
            env: BTreeMap::new(),
            command: serde_json::from_value(container["command"].clone()).unwrap(),
            admin_port: None,
        };
        for mount in container["volumeMounts"].as_array().unwrap() {
            let volume = volumes
                .iter()
                .find(|v| v["name"] == mount["name"])
                .expect("every mount has its volume");
            let dir = pod.path(mount["mountPath"].as_str().unwrap());
            std::fs::create_dir_all(&dir).unwrap();
            if let Some(config_map) = volume["configMap"]["name"].as_str() {
                let data = &objects[&format!("ConfigMap/{config_map}")];
                for (file, content) in data.as_object().unwrap() {
                    std::fs::write(dir.join(file), content.as_str().unwrap()).unwrap();
                }
            }
            for source in volume["projected"]["sources"]
                .as_array()
                .into_iter()
                .flatten()
            {
                let secret =
                    &objects[&format!("Secret/{}", source["secret"]["name"].as_str().unwrap())];
                for item in source["secret"]["items"].as_array().unwrap() {
                    let value = secret[item["key"].as_str().unwrap()].as_str().unwrap();
                    std::fs::write(dir.join(item["path"].as_str().unwrap()), value).unwrap();
                }
            }
        }
        for var in container["env"].as_array().unwrap() {
            let name = var["name"].as_str().unwrap().to_owned();
            let value = if let Some(value) = var["value"].as_str() {
                let mut value = value.to_owned();
                for (defined, replacement) in &env {
                    value = value.replace(&format!("$({defined})"), replacement);
                }
                value
            } else if let Some(field) = var["valueFrom"]["fieldRef"]["fieldPath"].as_str() {
                match field {
                    "metadata.name" => pod_name.to_owned(),
                    "metadata.namespace" => NAMESPACE.to_owned(),
                    other => panic!("unexpected fieldRef {other}"),
                }
            } else {
                let reference = &var["valueFrom"]["secretKeyRef"];
                let secret = &objects[&format!("Secret/{}", reference["name"].as_str().unwrap())];
                secret[reference["key"].as_str().unwrap()]
                    .as_str()
                    .unwrap()
                    .to_owned()
            };
            env.insert(name, value);
        }
        pod.env = env;
        pod
    }

    /// Where `path` inside the container is on this machine.
    fn path(&self, path: &str) -> PathBuf {
        self.root.path().join(path.trim_start_matches('/'))
    }

    /// The settings file the container reads, as its environment names it.
    fn settings(&self) -> Value {
        let file = self.path(&self.env["SWITCHYARD_CONFIG"]);
        serde_yaml_ng::from_str(&std::fs::read_to_string(file).unwrap()).unwrap()
    }

    /// Starts the container's command. `overrides` are the only departures from the
    /// manifest: loopback addresses instead of cluster ones.
    async fn start(&mut self, nats_url: &str, listens: &[(&str, u16)]) -> Child {
        let settings = self.settings();
        let admin_port = free_port();
        self.admin_port = Some(admin_port);
        let mut command = tokio::process::Command::new(binary(&self.command[0]));
        command
            .args(&self.command[1..])
            .env_clear()
            .envs(&self.env)
            .env(
                "SWITCHYARD_CONFIG",
                self.path(&self.env["SWITCHYARD_CONFIG"]),
            )
            .env("SWITCHYARD__NATS__URL", nats_url)
            .env(
                "SWITCHYARD__ADMIN__LISTEN",
                format!("127.0.0.1:{admin_port}"),
            )
            .env(
                "SWITCHYARD__SECRETS__DIR",
                self.path(settings["secrets"]["dir"].as_str().unwrap()),
            )
            .stdout(Stdio::null())
            .kill_on_drop(true);
        for (section, port) in listens {
            command.env(
                format!("SWITCHYARD__{}__LISTEN", section.to_uppercase()),
                format!("127.0.0.1:{port}"),
            );
        }
        command.spawn().expect("the service starts")
    }

    async fn probe(&self, path: &str) -> Option<u16> {
        let url = format!("http://127.0.0.1:{}{path}", self.admin_port?);
        let response = reqwest::get(url).await.ok()?;
        Some(response.status().as_u16())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_rendered_release_runs_applies_its_catalog_and_delivers() {
    let provider = FakeProvider::with(|_| Reply::ok()).await;
    let mut nats = TestNats::start().await.unwrap();
    let values = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(
        values.path(),
        format!(
            r#"
nats: {{ url: "nats://nats.messaging:4222", streamReplicas: 1 }}
outbound: {{ allow: ["127.0.0.0/8"] }}
ingest: {{ http: {{ header_read_timeout: 5s }} }}
providers:
  - name: crm
    url: {}/contacts
    headers:
      Authorization: {{ secret: CRM_TOKEN, prefix: "Bearer " }}
    retry: {{ schedule: [100ms] }}
    deployment:
      replicas: 2
      secrets:
        - secretName: crm-credentials
          items: [{{ key: token, path: CRM_TOKEN }}]
catalog:
  sources: [{{ name: shop }}]
  mappings:
    - name: order-to-crm
      version: 1
      program: '. = {{"external_id": string!(.id)}}'
  routes:
    - {{ name: shop-orders, source: shop, event_types: ["order.*"], mapping: order-to-crm@1, provider: crm }}
"#,
            provider.url()
        ),
    )
    .unwrap();
    let (_, documents) = render(values.path());

    // What the cluster would hold: the rendered ConfigMaps and Secrets, and the one
    // Secret the user created.
    let mut objects = BTreeMap::new();
    objects.insert(
        "Secret/crm-credentials".to_owned(),
        json!({ "token": CRM_TOKEN }),
    );
    for config_map in of_kind(&documents, "ConfigMap") {
        let name = config_map["metadata"]["name"].as_str().unwrap();
        objects.insert(format!("ConfigMap/{name}"), config_map["data"].clone());
    }
    for secret in of_kind(&documents, "Secret") {
        let name = secret["metadata"]["name"].as_str().unwrap();
        let data = secret["data"]
            .as_object()
            .unwrap()
            .iter()
            .map(|(key, value)| {
                let bytes = base64::engine::general_purpose::STANDARD
                    .decode(value.as_str().unwrap())
                    .unwrap();
                (
                    key.clone(),
                    Value::String(String::from_utf8(bytes).unwrap()),
                )
            })
            .collect();
        objects.insert(format!("Secret/{name}"), Value::Object(data));
    }

    // Every replica of every Deployment, each listener on its own loopback port.
    let mut pods = Vec::new();
    let mut children = Vec::new();
    let mut ports: BTreeMap<&str, Vec<u16>> = BTreeMap::new();
    for deployment in of_kind(&documents, "Deployment") {
        let name = deployment["metadata"]["name"].as_str().unwrap();
        for replica in 0..deployment["spec"]["replicas"].as_u64().unwrap() {
            let mut pod = Pod::new(
                &format!("{name}-{replica}"),
                &deployment["spec"]["template"],
                &objects,
            );
            let section = match pod.command[0].as_str() {
                "switchyard-ingest" => Some("ingest"),
                "switchyard-control" => Some("control"),
                _ => None,
            };
            let mut listens = Vec::new();
            if let Some(section) = section {
                let port = free_port();
                ports.entry(section).or_default().push(port);
                listens.push((section, port));
            }
            children.push(pod.start(nats.url(), &listens).await);
            pods.push(pod);
        }
    }
    assert_eq!(
        pods.len(),
        7,
        "two ingest, two transform, one control and two delivery replicas"
    );
    let (ingest_port, control_port) = (ports["ingest"][0], ports["control"][0]);
    for pod in &pods {
        eventually(Duration::from_secs(30), "every pod to be ready", || async {
            (pod.probe("/readyz").await == Some(200)).then_some(())
        })
        .await;
        assert_eq!(pod.probe("/healthz").await, Some(200));
    }

    // The catalog-apply Job, against the control Service it names.
    let job = &of_kind(&documents, "Job")[0];
    let apply = Pod::new("catalog-apply", &job["spec"]["template"], &objects);
    let control_service = named(
        &documents,
        "Service",
        &format!("{RELEASE}-switchyard-control"),
    );
    assert_eq!(
        apply.env["SYCTL_SERVER"],
        format!(
            "http://{}:{}",
            control_service["metadata"]["name"].as_str().unwrap(),
            control_service["spec"]["ports"][0]["port"]
        )
    );
    let output = tokio::process::Command::new(binary(&apply.command[0]))
        .args(apply.command[1..].iter().map(|arg| {
            if arg.starts_with('/') {
                apply.path(arg).display().to_string()
            } else {
                arg.clone()
            }
        }))
        .env_clear()
        .envs(&apply.env)
        .env("SYCTL_SERVER", format!("http://127.0.0.1:{control_port}"))
        .output()
        .await
        .unwrap();
    succeeded("the catalog-apply Job", output);

    let accepted = reqwest::Client::new()
        .post(format!(
            "http://127.0.0.1:{ingest_port}/v1/events/shop?type=order.created"
        ))
        .json(&json!({ "id": "o-1" }))
        .send()
        .await
        .unwrap();
    assert_eq!(accepted.status(), 202, "{:?}", accepted.text().await);
    provider.wait_for_accepted(1, Duration::from_secs(30)).await;
    let received = provider.received();
    assert_eq!(
        received.len(),
        1,
        "one delivery, by the active replica only"
    );
    assert_eq!(
        received[0].headers["authorization"],
        format!("Bearer {CRM_TOKEN}").as_str(),
        "the provider's secret came from the mounted Secret"
    );
    assert_eq!(
        serde_json::from_slice::<Value>(&received[0].body).unwrap(),
        json!({ "external_id": "o-1" })
    );

    // Readiness follows the NATS connection; liveness does not.
    nats.kill().await;
    for pod in &pods {
        eventually(Duration::from_secs(15), "pods to be unready", || async {
            (pod.probe("/readyz").await == Some(503)).then_some(())
        })
        .await;
        assert_eq!(pod.probe("/healthz").await, Some(200));
    }
    nats.restart().await.unwrap();
    for pod in &pods {
        eventually(
            Duration::from_secs(30),
            "pods to be ready again",
            || async { (pod.probe("/readyz").await == Some(200)).then_some(()) },
        )
        .await;
    }
    drop(children);
}

/// Copies `from` into `to`, following symbolic links as `helm package` does.
fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let path = entry.unwrap().path();
        let target = to.join(path.file_name().unwrap());
        if std::fs::metadata(&path).unwrap().is_dir() {
            copy_dir(&path, &target);
        } else {
            std::fs::copy(&path, &target).unwrap();
        }
    }
}

#[test]
fn the_stack_points_switchyard_at_its_own_three_server_nats_cluster() {
    let stack = Path::new(CHART).join("../switchyard-stack");
    let chart: Value =
        serde_yaml_ng::from_str(&std::fs::read_to_string(stack.join("Chart.yaml")).unwrap())
            .unwrap();
    let values: Value =
        serde_yaml_ng::from_str(&std::fs::read_to_string(stack.join("values.yaml")).unwrap())
            .unwrap();
    let nats = chart["dependencies"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["name"] == "nats")
        .expect("the official nats chart is a dependency");
    assert_eq!(
        nats["repository"],
        "https://nats-io.github.io/k8s/helm/charts/"
    );
    let config = &values["nats"]["config"];
    assert_eq!(config["cluster"]["enabled"], true);
    assert_eq!(config["cluster"]["replicas"], 3);
    assert_eq!(config["jetstream"]["enabled"], true);
    assert_eq!(config["jetstream"]["fileStore"]["enabled"], true);

    // The nats chart cannot be fetched without the network: with a copy of it at
    // hand (../shared/charts/nats, or SWITCHYARD_NATS_CHART) the whole stack is
    // rendered, else the rest of it, with the charts in charts/ as `helm dependency
    // build` puts them.
    let nats_chart = std::env::var_os("SWITCHYARD_NATS_CHART")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| Path::new(CHART).join("../../../shared/charts/nats"))
        .canonicalize()
        .ok()
        .filter(|dir| dir.join("Chart.yaml").is_file());
    let offline = tempfile::tempdir().unwrap();
    copy_dir(&stack, offline.path());
    let mut offline_chart = chart.clone();
    match &nats_chart {
        Some(dir) => copy_dir(dir, &offline.path().join("charts/nats")),
        None => {
            eprintln!("no copy of the nats chart: rendering the stack without it");
            offline_chart["dependencies"]
                .as_array_mut()
                .unwrap()
                .retain(|d| d["name"] != "nats");
        }
    }
    std::fs::write(
        offline.path().join("Chart.yaml"),
        serde_yaml_ng::to_string(&offline_chart).unwrap(),
    )
    .unwrap();
    std::fs::copy(
        stack.join("values.yaml"),
        offline.path().join("values.yaml"),
    )
    .unwrap();
    copy_dir(Path::new(CHART), &offline.path().join("charts/switchyard"));
    let dir = offline.path().to_str().unwrap();
    helm(&["lint", "--strict", dir]);
    let text = helm(&["template", RELEASE, dir, "--namespace", NAMESPACE]);
    let settings_file = text
        .split("\n---\n")
        .filter_map(|document| serde_yaml_ng::from_str::<Value>(document).ok())
        .find(|document| document["metadata"]["name"] == format!("{RELEASE}-switchyard-settings"))
        .expect("the settings ConfigMap");
    let settings: Value =
        serde_yaml_ng::from_str(settings_file["data"]["switchyard.yaml"].as_str().unwrap())
            .unwrap();
    assert_eq!(
        settings["nats"]["url"],
        format!("nats://{RELEASE}-nats:4222")
    );
    assert_eq!(settings["topology"]["replicas"], 3);
    if nats_chart.is_some() {
        the_nats_chart_runs_three_jetstream_servers_on_volumes(&text, dir);
    }
}

/// What the official nats chart renders in the stack: three JetStream servers on
/// persistent volumes behind the Service Switchyard is pointed at, and the servers'
/// sync interval when `sync_interval: always` is chosen.
fn the_nats_chart_runs_three_jetstream_servers_on_volumes(text: &str, dir: &str) {
    let documents: Vec<Value> = text
        .split("\n---\n")
        .filter_map(|document| serde_yaml_ng::from_str::<Value>(document).ok())
        .collect();
    let servers = named(&documents, "StatefulSet", &format!("{RELEASE}-nats"));
    assert_eq!(servers["spec"]["replicas"], 3);
    let claims = servers["spec"]["volumeClaimTemplates"].as_array().unwrap();
    assert_eq!(claims.len(), 1, "one JetStream volume per server");
    assert_eq!(
        claims[0]["spec"]["resources"]["requests"]["storage"],
        "10Gi"
    );
    named(&documents, "Service", &format!("{RELEASE}-nats"));
    let config = |documents: &[Value]| -> String {
        named(documents, "ConfigMap", &format!("{RELEASE}-nats-config"))["data"]["nats.conf"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    let conf = config(&documents);
    assert!(conf.contains("\"jetstream\""), "{conf}");
    assert!(conf.contains("\"store_dir\": \"/data\""), "{conf}");
    assert!(conf.contains("\"cluster\""), "{conf}");
    assert!(
        !conf.contains("sync_interval"),
        "the server's default: {conf}"
    );

    let always = helm(&[
        "template",
        RELEASE,
        dir,
        "--namespace",
        NAMESPACE,
        "--set",
        "nats.config.jetstream.merge.sync_interval=always",
    ]);
    let documents: Vec<Value> = always
        .split("\n---\n")
        .filter_map(|document| serde_yaml_ng::from_str::<Value>(document).ok())
        .collect();
    let conf = config(&documents);
    assert!(conf.contains("\"sync_interval\": \"always\""), "{conf}");
}
