//! `switchyard-delivery --provider NAME`: delivers to one provider.

use std::{path::PathBuf, time::Duration};

use anyhow::Context;
use clap::Parser;
use switchyard_core::service::Service;

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

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    Service::main(args.config.as_deref(), "delivery", |service| async move {
        let provider = args
            .provider
            .or_else(|| service.settings.delivery.provider.clone())
            .context(
                "no provider given: pass --provider NAME or set SWITCHYARD__DELIVERY__PROVIDER",
            )?;
        let run =
            switchyard_delivery::run(service.settings.clone(), provider, service.shutdown.clone());
        service.run(run, Duration::from_secs(60)).await?;
        Ok(())
    })
}
