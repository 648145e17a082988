//! `switchyard-ingest`: the HTTP ingest service.

use std::{path::PathBuf, time::Duration};

use clap::Parser;
use switchyard_core::service::Service;

/// Takes events in over HTTP and stores them in the INGEST stream.
#[derive(Parser)]
#[command(version)]
struct Args {
    /// YAML settings file; `SWITCHYARD__*` variables override it.
    #[arg(long, env = "SWITCHYARD_CONFIG")]
    config: Option<PathBuf>,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    Service::main(args.config.as_deref(), "ingest", |service| async move {
        let settings = service.settings.clone();
        let listener = service
            .bind(settings.ingest.listen, "ingest.listen")
            .await?;
        let run = switchyard_ingest::run(settings, listener, service.shutdown.clone());
        service.run(run, Duration::from_secs(30)).await?;
        Ok(())
    })
}
