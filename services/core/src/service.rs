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
    /// Loads the settings from `config` (and the environment), starts telemetry as
    /// `name`, listens for signals and serves the admin port.
    pub async fn start(config: Option<&Path>, name: &'static str) -> Result<Self, Error> {
        let settings = Settings::load(config)?;
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
