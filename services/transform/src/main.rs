//! `switchyard-transform`: routes and maps events from INGEST into DELIVER.

use std::{path::PathBuf, time::Duration};

use clap::Parser;
use switchyard_core::service::Service;

/// Routes INGEST events through versioned VRL mappings into DELIVER.
#[derive(Parser)]
#[command(version)]
struct Args {
    /// YAML settings file; `SWITCHYARD__*` variables override it.
    #[arg(long, env = "SWITCHYARD_CONFIG")]
    config: Option<PathBuf>,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    Service::main(args.config.as_deref(), "transform", |service| async move {
        let run = switchyard_transform::run(service.settings.clone(), service.shutdown.clone());
        service.run(run, Duration::from_secs(30)).await?;
        Ok(())
    })
}
