//! `syctl`: the command-line client of the Switchyard control API.
//!
//! One module per command group (`catalog`, `events`, `stats`, `mapping`, `dlq`,
//! `providers`, `keys`, `replay`); each returns an [`output::Output`] that `main`
//! prints in the chosen format, or a [`exit::Failure`] whose [`exit::Exit`] is the
//! process's exit code: 0 success, 1 the server refused the request (invalid input,
//! conflict, not found), 2 bad usage, 3 the server could not be reached, 4 the
//! command's check failed (`mapping test` did not pass, `dlq replay` kept dead
//! letters that still fail).

mod catalog;
mod connect;
mod dlq;
mod events;
mod exit;
mod flags;
mod keys;
mod mapping;
mod outbox;
mod output;
mod progress;
mod providers;
mod replay;
mod routes;
mod sources;
mod stats;
mod suggest;

use std::{path::PathBuf, process::ExitCode};

use clap::{Parser, Subcommand};

use crate::{
    catalog::Kind,
    connect::Remote,
    exit::Failure,
    output::{Format, Output},
};

/// Manage a Switchyard installation through its gRPC control API.
#[derive(Parser)]
#[command(version)]
struct Cli {
    #[command(flatten)]
    remote: Remote,
    /// Output format.
    #[arg(long, short, global = true, value_enum, default_value_t = Format::Table)]
    output: Format,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Apply a catalog document: create or update what it names.
    Apply {
        /// The catalog file (YAML or JSON); `-` reads standard input.
        #[arg(long, short)]
        file: PathBuf,
        /// Show the plan without changing anything.
        #[arg(long)]
        dry_run: bool,
        /// Also delete resources the file does not name.
        #[arg(long)]
        prune: bool,
    },
    /// List resources, or show one.
    Get {
        /// source, provider, mapping or route (all kinds when omitted).
        kind: Option<Kind>,
        /// The resource's name (`name@version` for a mapping).
        name: Option<String>,
    },
    /// Show one resource, the routes that use it, and a provider's status.
    Describe {
        /// source, provider, mapping or route.
        kind: Kind,
        /// The resource's name (`name@version` for a mapping).
        name: String,
    },
    /// Delete one resource; refused while others still refer to it.
    Delete {
        /// source, provider, mapping or route.
        kind: Kind,
        /// The resource's name (`name@version` for a mapping).
        name: String,
    },
    /// Follow one event: the ingest record, each route's state and every attempt.
    #[command(subcommand)]
    Events(events::EventsCommand),
    /// Streams, consumers and dead letters at a glance.
    Stats,
    /// Try mappings out and draft new ones.
    #[command(subcommand)]
    Mapping(mapping::MappingCommand),
    /// Dead letters: list, show, replay, purge.
    #[command(subcommand)]
    Dlq(dlq::DlqCommand),
    /// Provider status, pause, resume and breaker reset.
    #[command(subcommand)]
    Providers(providers::ProvidersCommand),
    /// A route's canary mapping version: results, promote, roll back.
    #[command(subcommand)]
    Routes(routes::RoutesCommand),
    /// API keys of the control API (offline).
    #[command(subcommand)]
    Keys(keys::KeysCommand),
    /// Re-run stored events through the current routes and mapping versions.
    Replay(replay::ReplayArgs),
    /// How ingest reads the sources it reads itself (outbox tables).
    #[command(subcommand)]
    Sources(sources::SourcesCommand),
    /// The outbox table an outbox source reads (offline).
    #[command(subcommand)]
    Outbox(outbox::OutboxCommand),
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let format = cli.output;
    match run(cli).await.and_then(|output| output.print(format)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => {
            eprintln!("error: {}", failure.message);
            failure.exit.into()
        }
    }
}

async fn run(cli: Cli) -> Result<Output, Failure> {
    let remote = &cli.remote;
    let format = cli.output;
    match cli.command {
        Command::Apply {
            file,
            dry_run,
            prune,
        } => catalog::apply(remote.connect().await?, file, dry_run, prune).await,
        Command::Get { kind, name } => catalog::get(remote.connect().await?, kind, name).await,
        Command::Describe { kind, name } => {
            catalog::describe(remote.connect().await?, kind, name).await
        }
        Command::Delete { kind, name } => {
            catalog::delete(remote.connect().await?, kind, name).await
        }
        Command::Events(command) => events::run(command, remote.connect().await?).await,
        Command::Stats => stats::run(remote.connect().await?).await,
        Command::Mapping(command) => mapping::run(command, remote).await,
        Command::Dlq(command) => dlq::run(command, remote.connect().await?, format).await,
        Command::Providers(command) => providers::run(command, remote.connect().await?).await,
        Command::Routes(command) => routes::run(command, remote.connect().await?).await,
        Command::Keys(command) => keys::run(command),
        Command::Replay(args) => replay::run(args, remote.connect().await?, format).await,
        Command::Sources(command) => sources::run(command, remote.connect().await?).await,
        Command::Outbox(command) => outbox::run(command),
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    #[test]
    fn the_command_line_is_consistent() {
        super::Cli::command().debug_assert();
    }

    #[test]
    fn exit_codes_are_stable() {
        use crate::exit::Exit;
        let codes = [
            Exit::Refused,
            Exit::Usage,
            Exit::Unreachable,
            Exit::CheckFailed,
        ]
        .map(|exit| exit as u8);
        assert_eq!(codes, [1, 2, 3, 4]);
    }
}
