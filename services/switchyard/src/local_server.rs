//! A `nats-server` child process with JetStream, for `switchyard dev` and tests.
//!
//! The binary comes from `NATS_SERVER_BIN`, else `PATH`, else `/usr/sbin` (where
//! Debian installs it). The server listens on loopback only and reports its port in a
//! ports file, so a free port can be chosen by the server itself.

use std::{
    path::{Path, PathBuf},
    process::Stdio,
    time::Duration,
};

use tokio::process::{Child, Command};

use switchyard_core::Error;

/// A running `nats-server` child; killed when dropped.
pub struct LocalNatsServer {
    child: Child,
    url: String,
    port: u16,
    store_dir: PathBuf,
    args: Vec<String>,
}

/// Finds the `nats-server` binary.
pub fn binary() -> Result<PathBuf, Error> {
    if let Some(path) = std::env::var_os("NATS_SERVER_BIN") {
        return Ok(PathBuf::from(path));
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/usr/local/bin")])
        .map(|dir| dir.join("nats-server"))
        .find(|candidate| candidate.is_file())
        .ok_or_else(|| {
            Error::Config(
                "nats-server not found: install it (Debian: apt-get install nats-server), set \
                 NATS_SERVER_BIN, or pass --nats-url to use a running server"
                    .into(),
            )
        })
}

impl LocalNatsServer {
    /// Starts a server storing JetStream data under `store_dir`, on `port` (or a port
    /// the server picks when `None`), and waits until it accepts connections.
    pub async fn start(store_dir: &Path, port: Option<u16>) -> Result<Self, Error> {
        Self::start_with(store_dir, port, Vec::new()).await
    }

    /// Like [`LocalNatsServer::start`], with more command-line arguments (a server
    /// name and cluster routes, for a cluster of local servers).
    pub async fn start_with(
        store_dir: &Path,
        port: Option<u16>,
        args: Vec<String>,
    ) -> Result<Self, Error> {
        let binary = binary()?;
        let ports_dir = store_dir.join("ports");
        std::fs::create_dir_all(&ports_dir)
            .map_err(|err| Error::Config(format!("{}: {err}", ports_dir.display())))?;
        for stale in std::fs::read_dir(&ports_dir)
            .into_iter()
            .flatten()
            .flatten()
        {
            let _ = std::fs::remove_file(stale.path());
        }
        let log = std::fs::File::create(store_dir.join("nats-server.log"))
            .map_err(|err| Error::Config(format!("{}: {err}", store_dir.display())))?;
        let port_arg = port.map_or_else(|| "-1".to_owned(), |port| port.to_string());
        let mut child = Command::new(&binary)
            .arg("-js")
            .arg("-sd")
            .arg(store_dir.join("jetstream"))
            .args(["-a", "127.0.0.1", "-p", &port_arg])
            .arg("--ports_file_dir")
            .arg(&ports_dir)
            .args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .map_err(|err| Error::Config(format!("cannot start {}: {err}", binary.display())))?;

        let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
        loop {
            if let Some(url) = read_ports_file(&ports_dir) {
                let port = url
                    .rsplit(':')
                    .next()
                    .and_then(|port| port.parse().ok())
                    .unwrap_or_default();
                return Ok(Self {
                    child,
                    url,
                    port,
                    store_dir: store_dir.to_owned(),
                    args,
                });
            }
            if let Ok(Some(status)) = child.try_wait() {
                let log =
                    std::fs::read_to_string(store_dir.join("nats-server.log")).unwrap_or_default();
                return Err(Error::Config(format!(
                    "nats-server exited ({status}): {}",
                    log.lines().rev().take(5).collect::<Vec<_>>().join(" | ")
                )));
            }
            if tokio::time::Instant::now() > deadline {
                return Err(Error::Config("nats-server did not start within 15s".into()));
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// The client URL, e.g. `nats://127.0.0.1:4222`.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The server's process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// The port the server listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Kills the server at once (SIGKILL), keeping its store.
    pub async fn kill(&mut self) {
        let _ = self.child.kill().await;
    }

    /// Starts the server again on the same port with the same store.
    pub async fn restart(&mut self) -> Result<(), Error> {
        self.kill().await;
        *self =
            Self::start_with(&self.store_dir.clone(), Some(self.port), self.args.clone()).await?;
        Ok(())
    }
}

fn read_ports_file(dir: &Path) -> Option<String> {
    let entry = std::fs::read_dir(dir)
        .ok()?
        .flatten()
        .find(|entry| entry.file_name().to_string_lossy().ends_with(".ports"))?;
    let text = std::fs::read_to_string(entry.path()).ok()?;
    let ports: serde_json::Value = serde_json::from_str(&text).ok()?;
    ports["nats"][0].as_str().map(str::to_owned)
}
