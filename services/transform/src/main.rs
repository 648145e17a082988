//! `switchyard-transform`: routes and maps events from INGEST into DELIVER.

use std::{path::PathBuf, time::Duration};

use clap::Parser;
use switchyard_core::{config::Settings, shutdown::Shutdown, telemetry};

/// Routes INGEST events through versioned VRL mappings into DELIVER.
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
    let _guard = telemetry::init(&settings.telemetry, "transform")?;
    let shutdown = Shutdown::new();
    shutdown.listen_for_signals();
    switchyard_core::admin::start(&settings, &shutdown).await?;
    shutdown.spawn(
        "transform",
        switchyard_transform::run(settings, shutdown.clone()),
    );
    shutdown.wait(Duration::from_secs(30)).await?;
    Ok(())
}
