//! Test harness: a real nats-server, the services in-process, and fake providers.
//!
//! Tests read as stories: start a [`FakeProvider`], start a [`Pipeline`] with a catalog
//! that points at it, send events, and assert on what the provider received.

#![forbid(unsafe_code)]

pub mod chaos;
mod pipeline;
pub mod pki;
mod postgres;
pub mod processes;
mod provider;
pub mod workload;

use std::time::Duration;

pub use pipeline::Pipeline;
pub use postgres::TestPostgres;
pub use provider::{FakeProvider, Received, Reply};
use switchyard::local_server::LocalNatsServer;
use tempfile::TempDir;

/// A nats-server with JetStream on a free loopback port and a temporary store, or a
/// cluster of them.
pub struct TestNats {
    servers: Vec<LocalNatsServer>,
    url: String,
    _dir: TempDir,
}

impl TestNats {
    /// Starts a fresh server.
    pub async fn start() -> anyhow::Result<Self> {
        Self::start_with(Vec::new()).await
    }

    /// Like [`TestNats::start`], with more command-line arguments (`-c FILE`).
    pub async fn start_with(args: Vec<String>) -> anyhow::Result<Self> {
        switchyard_core::telemetry::init_for_tests();
        let dir = tempfile::tempdir()?;
        let server = LocalNatsServer::start_with(dir.path(), None, args).await?;
        Ok(Self {
            url: server.url().to_owned(),
            servers: vec![server],
            _dir: dir,
        })
    }

    /// Starts `nodes` servers named `n0`, `n1`, … as one JetStream cluster on loopback,
    /// each with its own store, and waits until the cluster has a JetStream leader.
    pub async fn cluster(nodes: usize) -> anyhow::Result<Self> {
        switchyard_core::telemetry::init_for_tests();
        let dir = tempfile::tempdir()?;
        let ports: Vec<(u16, u16)> = (0..nodes).map(|_| (free_port(), free_port())).collect();
        let routes = ports
            .iter()
            .map(|(_, route)| format!("nats://127.0.0.1:{route}"))
            .collect::<Vec<_>>()
            .join(",");
        let mut servers = Vec::new();
        for (node, (client, route)) in ports.iter().enumerate() {
            let args = vec![
                "--name".to_owned(),
                format!("n{node}"),
                "--cluster_name".to_owned(),
                "switchyard".to_owned(),
                "--cluster".to_owned(),
                format!("nats://127.0.0.1:{route}"),
                "--routes".to_owned(),
                routes.clone(),
            ];
            let store = dir.path().join(format!("n{node}"));
            servers.push(LocalNatsServer::start_with(&store, Some(*client), args).await?);
        }
        let url = servers
            .iter()
            .map(LocalNatsServer::url)
            .collect::<Vec<_>>()
            .join(",");
        let jetstream = switchyard_core::nats::connect(&Pipeline::settings(&url).nats, "test")
            .await?
            .jetstream;
        // Ready once it can place a stream on every node: a JetStream leader alone
        // may not yet know all its peers ("no suitable peers for placement").
        eventually(
            Duration::from_secs(30),
            "the cluster can place a stream on every node",
            || async {
                let placed = jetstream
                    .create_stream(async_nats::jetstream::stream::Config {
                        name: "CLUSTER_READY".into(),
                        subjects: vec!["cluster.ready".into()],
                        num_replicas: nodes,
                        ..Default::default()
                    })
                    .await
                    .ok()?;
                drop(placed);
                jetstream.delete_stream("CLUSTER_READY").await.ok()
            },
        )
        .await;
        Ok(Self {
            servers,
            url,
            _dir: dir,
        })
    }

    /// User plus system CPU time of every node so far.
    pub fn cpu(&self) -> Duration {
        self.servers
            .iter()
            .filter_map(LocalNatsServer::pid)
            .map(processes::cpu)
            .sum()
    }

    /// The largest peak resident set size of a node, in bytes.
    pub fn peak_rss(&self) -> u64 {
        self.servers
            .iter()
            .filter_map(LocalNatsServer::pid)
            .map(|pid| processes::status_bytes(pid, "VmHWM"))
            .max()
            .unwrap_or(0)
    }

    /// The client URL; for a cluster, every node's URL separated by commas.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Kills the server (every node) with SIGKILL and leaves it down (until
    /// [`TestNats::restart`]).
    pub async fn kill(&mut self) {
        for server in &mut self.servers {
            server.kill().await;
        }
    }

    /// Kills the server (every node) with SIGKILL and starts it again on the same port
    /// and store.
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        for server in &mut self.servers {
            server.restart().await?;
        }
        Ok(())
    }

    /// Freezes every node for `duration` (SIGSTOP, then SIGCONT): the server neither
    /// answers nor drops a connection, as in a long GC pause or a stalled disk.
    pub async fn stall(&self, duration: Duration) -> anyhow::Result<()> {
        let signal = |name: &str| -> anyhow::Result<()> {
            for pid in self.servers.iter().filter_map(LocalNatsServer::pid) {
                let status = std::process::Command::new("kill")
                    .args([name, &pid.to_string()])
                    .status()?;
                anyhow::ensure!(status.success(), "kill {name} {pid}: {status}");
            }
            Ok(())
        };
        signal("-STOP")?;
        tokio::time::sleep(duration).await;
        signal("-CONT")
    }

    /// Kills one node of a cluster, `n0`, `n1`, …, with SIGKILL.
    pub async fn kill_node(&mut self, name: &str) {
        let node: usize = name
            .strip_prefix('n')
            .and_then(|n| n.parse().ok())
            .expect("a node name such as n1");
        self.servers[node].kill().await;
    }
}

/// The binary `name` (`syctl`, `switchyard-ingest`, …) of this workspace's build,
/// brought up to date first by one `cargo build --workspace --bins` per test process
/// (nothing to do after `make test`, which builds them before the tests).
pub fn binary(name: &str) -> std::path::PathBuf {
    static PROFILE_DIR: std::sync::OnceLock<std::path::PathBuf> = std::sync::OnceLock::new();
    PROFILE_DIR
        .get_or_init(|| {
            let exe = std::env::current_exe().expect("the test binary's path");
            // A test: target/<profile>/deps/e2e-<hash>; a harness binary such as
            // switchyard-bench: target/<profile>/switchyard-bench.
            let mut profile_dir = exe.parent().expect("a target directory");
            if profile_dir.ends_with("deps") {
                profile_dir = profile_dir.parent().expect("a target directory");
            }
            let target_dir = profile_dir.parent().expect("a target directory");
            let mut build = std::process::Command::new(env!("CARGO"));
            build
                .args(["build", "--quiet", "--workspace", "--bins", "--target-dir"])
                .arg(target_dir)
                .current_dir(env!("CARGO_MANIFEST_DIR"));
            if profile_dir.ends_with("release") {
                build.arg("--release");
            }
            // What cargo set for this test; build scripts that watch these (ring
            // watches CARGO_MANIFEST_DIR) would otherwise run again and rebuild.
            for (name, _) in std::env::vars_os() {
                let name = name.to_string_lossy();
                let set_for_tests = [
                    "CARGO_MANIFEST_DIR",
                    "CARGO_MANIFEST_PATH",
                    "CARGO_CRATE_NAME",
                    "CARGO_PRIMARY_PACKAGE",
                    "CARGO_TARGET_TMPDIR",
                ]
                .contains(&name.as_ref())
                    || name.starts_with("CARGO_PKG_")
                    || name.starts_with("CARGO_BIN_");
                if set_for_tests {
                    build.env_remove(name.as_ref());
                }
            }
            let status = build.status().expect("cargo runs");
            assert!(status.success(), "building the workspace's binaries failed");
            profile_dir.to_owned()
        })
        .join(name)
}

/// The `syctl` binary.
pub fn syctl() -> std::path::PathBuf {
    binary("syctl")
}

/// A loopback port free at the moment, for a server that must be told its port.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free loopback port")
        .port()
}

/// The workspace's target directory (`CARGO_TARGET_DIR` when set).
pub fn target_dir() -> std::path::PathBuf {
    std::env::var_os("CARGO_TARGET_DIR").map_or_else(
        || std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"),
        std::path::PathBuf::from,
    )
}

/// Where a measurement writes `file`: `<target>/bench/<file>`, its directory created.
pub fn report_path(file: &str) -> anyhow::Result<std::path::PathBuf> {
    let dir = target_dir().join("bench");
    std::fs::create_dir_all(&dir)?;
    Ok(dir.join(file))
}

/// Writes a measurement report as `<target>/bench/<file>` and says where.
pub fn write_report(file: &str, report: &serde_json::Value) -> anyhow::Result<()> {
    let path = report_path(file)?;
    std::fs::write(&path, serde_json::to_vec_pretty(report)?)?;
    println!("wrote {}", path.display());
    Ok(())
}

/// A third-party tool the Makefile unpacks into `target/tools` (`buf`, `helm`), or the
/// path in `<NAME>_BIN`; fails naming the `make` target that fetches it.
pub fn tool(name: &str) -> std::path::PathBuf {
    let path = std::env::var_os(format!("{}_BIN", name.to_uppercase())).map_or_else(
        || {
            std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../target/tools")
                .join(name)
        },
        std::path::PathBuf::from,
    );
    assert!(
        path.exists(),
        "{} is missing: run `make {name}`",
        path.display()
    );
    path
}

/// The standard output of a finished command; fails with `what` and everything the
/// command printed unless it exited with success.
pub fn succeeded(what: &str, output: std::process::Output) -> String {
    assert!(
        output.status.success(),
        "{what} failed ({}):\n{}{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).expect("UTF-8 output")
}

/// What the outbound guard of a test's services allows: the fake providers on this
/// machine.
pub const LOCAL_PROVIDERS: &str = "127.0.0.0/8";

/// The service binary `name` (`switchyard-delivery`, …) as a child process configured
/// like `settings` through `SWITCHYARD__*` variables, with its admin port on any free
/// port; it is killed when dropped.
pub fn service(
    name: &str,
    settings: &switchyard_core::config::Settings,
) -> tokio::process::Command {
    let mut command = tokio::process::Command::new(binary(name));
    command
        .env("SWITCHYARD__NATS__URL", &settings.nats.url)
        .env("SWITCHYARD__SECRETS__DIR", &settings.secrets.dir)
        .env("SWITCHYARD__ADMIN__LISTEN", "127.0.0.1:0")
        .env("SWITCHYARD__OUTBOUND__ALLOW", LOCAL_PROVIDERS)
        .kill_on_drop(true);
    command
}

/// Polls `check` until it returns `Some`, or fails after `timeout` with `what`.
pub async fn eventually<T, F, Fut>(timeout: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
