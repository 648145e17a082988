//! `switchyard-delivery --provider NAME`: delivers to one provider.

use std::{path::PathBuf, time::Duration};

use anyhow::Context;
use clap::Parser;
use switchyard_core::{config::Settings, shutdown::Shutdown, telemetry};

/// Delivers events from DELIVER to one provider's HTTP API.
#[derive(Parser)]
#[command(version)]
struct Args {
    /// YAML settings file; `SWITCHYARD__*` variables override it.
    #[arg(long, env = "SWITCHYARD_CONFIG")]
    config: Option<PathBuf>,
    /// The provider this process owns (overrides `delivery.provider`).
    #[arg(long)]
    provider: Option<String>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let settings = Settings::load(args.config.as_deref())?;
    let provider = args
        .provider
        .or_else(|| settings.delivery.provider.clone())
        .context("no provider given: pass --provider NAME or set SWITCHYARD__DELIVERY__PROVIDER")?;
    let _guard = telemetry::init(&settings.telemetry, "delivery")?;
    let shutdown = Shutdown::new();
    shutdown.listen_for_signals();
    switchyard_core::admin::start(&settings, &shutdown).await?;
    let run = switchyard_delivery::run(settings, provider, shutdown.clone());
    shutdown.spawn("delivery", run);
    shutdown.wait(Duration::from_secs(60)).await?;
    Ok(())
}
