//! What every service binary does before and after its `run`: load the settings,
//! start telemetry (its guard flushes spans on exit), listen for SIGINT/SIGTERM,
//! serve the admin port, bind the service's listener, run the service as a named
//! task, and drain within a grace period. Each `main.rs` is then only its flags and
//! the call of its `run`.

use std::{future::Future, net::SocketAddr, path::Path, time::Duration};

use tokio::net::TcpListener;

use crate::{Error, config::Settings, shutdown::Shutdown, telemetry};

/// A started service process, before its `run` is spawned.
pub struct Service {
    /// The loaded settings.
    pub settings: Settings,
    /// The process's shutdown, already listening for signals.
    pub shutdown: Shutdown,
    name: &'static str,
    _telemetry: telemetry::Guard,
}

impl Service {
    /// A service binary's `main`: loads the settings from `config` (and the
    /// environment), builds the runtime they ask for (`runtime.worker_threads`), starts
    /// the service as `name` on it and runs `body` with it.
    pub fn main<F, Fut, E>(config: Option<&Path>, name: &'static str, body: F) -> Result<(), E>
    where
        F: FnOnce(Self) -> Fut,
        Fut: Future<Output = Result<(), E>>,
        E: From<Error>,
    {
        let settings = Settings::load(config)?;
        let runtime = settings.runtime.build().map_err(|err| {
            Error::Config(format!(
                "runtime.worker_threads: cannot start the runtime: {err}"
            ))
        })?;
        runtime.block_on(async move {
            let service = Self::start(settings, name).await?;
            body(service).await
        })
    }

    /// Starts telemetry as `name`, listens for signals and serves the admin port.
    async fn start(settings: Settings, name: &'static str) -> Result<Self, Error> {
        let telemetry = telemetry::init(&settings.telemetry, name)?;
        let shutdown = Shutdown::new();
        shutdown.listen_for_signals();
        crate::admin::start(&settings, &shutdown).await?;
        Ok(Self {
            settings,
            shutdown,
            name,
            _telemetry: telemetry,
        })
    }

    /// Binds the service's listener; `key` names the setting in the error.
    pub async fn bind(&self, address: SocketAddr, key: &str) -> Result<TcpListener, Error> {
        crate::http::bind(address)
            .await
            .map_err(|err| Error::Config(format!("{key} {address}: {err}")))
    }

    /// Runs `task` until it ends or a signal comes, then waits up to `grace` for
    /// every task to finish.
    pub async fn run<F, E>(self, task: F, grace: Duration) -> Result<(), Error>
    where
        F: Future<Output = Result<(), E>> + Send + 'static,
        E: std::fmt::Display + Send + 'static,
    {
        self.shutdown.spawn(self.name, task);
        self.shutdown.wait(grace).await
    }
}
