//! `switchyard-control`: the gRPC control API.

use std::{path::PathBuf, time::Duration};

use clap::Parser;
use switchyard_core::service::Service;

/// Serves the Switchyard gRPC control API.
#[derive(Parser)]
#[command(version)]
struct Args {
    /// YAML settings file; `SWITCHYARD__*` variables override it.
    #[arg(long, env = "SWITCHYARD_CONFIG")]
    config: Option<PathBuf>,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    Service::main(args.config.as_deref(), "control", |service| async move {
        let settings = service.settings.clone();
        let grpc = service
            .bind(settings.control.listen, "control.listen")
            .await?;
        let console = match settings.control.console.listen {
            Some(address) => Some(service.bind(address, "control.console.listen").await?),
            None => None,
        };
        let listeners = switchyard_control::Listeners { grpc, console };
        let run = switchyard_control::run(settings, listeners, service.shutdown.clone());
        service.run(run, Duration::from_secs(30)).await?;
        Ok(())
    })
}
