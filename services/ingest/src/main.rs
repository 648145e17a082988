//! `switchyard-ingest`: the HTTP ingest service.

use std::{path::PathBuf, time::Duration};

use anyhow::Context;
use clap::Parser;
use switchyard_core::{config::Settings, shutdown::Shutdown, telemetry};

/// Takes events in over HTTP and stores them in the INGEST stream.
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
    let _guard = telemetry::init(&settings.telemetry, "ingest")?;
    let shutdown = Shutdown::new();
    shutdown.listen_for_signals();
    switchyard_core::admin::start(&settings, &shutdown).await?;
    let listener = switchyard_core::http::bind(settings.ingest.listen)
        .await
        .with_context(|| format!("ingest.listen {}", settings.ingest.listen))?;
    shutdown.spawn(
        "ingest",
        switchyard_ingest::run(settings, listener, shutdown.clone()),
    );
    shutdown.wait(Duration::from_secs(30)).await?;
    Ok(())
}
