//! `switchyard-control`: the gRPC control API.

use std::{path::PathBuf, time::Duration};

use anyhow::Context;
use clap::Parser;
use switchyard_core::{config::Settings, shutdown::Shutdown, telemetry};

/// Serves the Switchyard gRPC control API.
#[derive(Parser)]
#[command(version)]
struct Args {
    /// YAML settings file; `SWITCHYARD__*` variables override it.
    #[arg(long, env = "SWITCHYARD_CONFIG")]
    config: Option<PathBuf>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let settings = Settings::load(args.config.as_deref())?;
    let _guard = telemetry::init(&settings.telemetry, "control")?;
    let shutdown = Shutdown::new();
    shutdown.listen_for_signals();
    switchyard_core::admin::start(&settings, &shutdown).await?;
    let listener = switchyard_core::http::bind(settings.control.listen)
        .await
        .with_context(|| format!("control.listen {}", settings.control.listen))?;
    shutdown.spawn(
        "control",
        switchyard_control::run(settings, listener, shutdown.clone()),
    );
    shutdown.wait(Duration::from_secs(30)).await?;
    Ok(())
}
