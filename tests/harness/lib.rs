//! Test harness: a real nats-server, the services in-process, and fake providers.
//!
//! Tests read as stories: start a [`FakeProvider`], start a [`Pipeline`] with a catalog
//! that points at it, send events, and assert on what the provider received.

#![forbid(unsafe_code)]

mod pipeline;
mod provider;
pub mod workload;

use std::time::Duration;

pub use pipeline::Pipeline;
pub use provider::{FakeProvider, Received, Reply};
use switchyard_core::local_server::LocalNatsServer;
use tempfile::TempDir;

/// A nats-server with JetStream on a free loopback port and a temporary store.
pub struct TestNats {
    server: LocalNatsServer,
    _dir: TempDir,
}

impl TestNats {
    /// Starts a fresh server.
    pub async fn start() -> anyhow::Result<Self> {
        switchyard_core::telemetry::init_for_tests();
        let dir = tempfile::tempdir()?;
        let server = LocalNatsServer::start(dir.path(), None).await?;
        Ok(Self { server, _dir: dir })
    }

    /// The client URL.
    pub fn url(&self) -> &str {
        self.server.url()
    }

    /// Kills the server with SIGKILL and leaves it down (until [`TestNats::restart`]).
    pub async fn kill(&mut self) {
        self.server.kill().await;
    }

    /// Kills the server with SIGKILL and starts it again on the same port and store.
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        self.server.restart().await?;
        Ok(())
    }
}

/// The `syctl` binary of this workspace's build, built first when it is missing (as
/// when only this package's tests were built).
pub fn syctl() -> std::path::PathBuf {
    static BUILT: std::sync::OnceLock<std::path::PathBuf> = std::sync::OnceLock::new();
    BUILT
        .get_or_init(|| {
            let exe = std::env::current_exe().expect("the test binary's path");
            // target/<profile>/deps/e2e-<hash> → target/<profile>/syctl
            let path = exe
                .parent()
                .and_then(std::path::Path::parent)
                .expect("a target directory")
                .join("syctl");
            if !path.exists() {
                let status = std::process::Command::new(env!("CARGO"))
                    .args(["build", "--quiet", "-p", "syctl"])
                    .current_dir(env!("CARGO_MANIFEST_DIR"))
                    .status()
                    .expect("cargo runs");
                assert!(status.success(), "building syctl failed");
            }
            path
        })
        .clone()
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
