//! `switchyard dev`: every service in one process, for a laptop.

mod dev;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

/// Switchyard: connect the systems you depend on without losing data.
#[derive(Parser)]
#[command(version)]
struct Cli {
    /// YAML settings file; `SWITCHYARD__*` variables override it.
    #[arg(long, global = true, env = "SWITCHYARD_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run ingest, transform, control, one delivery per provider and a local echo
    /// provider in one process.
    Dev(dev::Args),
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Dev(args) => dev::run(cli.config, args).await,
    }
}
