//! `syctl`: the command-line client of the Switchyard control API.
//!
//! Exit codes: 0 success, 1 the server refused the request (invalid input, conflict,
//! not found), 2 bad usage, 3 the server could not be reached.

use std::{path::PathBuf, process::ExitCode};

use clap::{Parser, Subcommand, ValueEnum};
use switchyard_control::{
    convert::struct_to_json,
    proto::{
        ApplyRequest, ChangeAction, GetResourceRequest, ListResourcesRequest, Resource,
        ResourceKind, catalog_service_client::CatalogServiceClient,
    },
};
use tonic::transport::Channel;

/// Manage a Switchyard installation through its gRPC control API.
#[derive(Parser)]
#[command(version)]
struct Cli {
    /// Address of the control API.
    #[arg(
        long,
        global = true,
        env = "SYCTL_SERVER",
        default_value = "http://127.0.0.1:50051"
    )]
    server: String,
    /// Output format.
    #[arg(long, short, global = true, value_enum, default_value_t = Format::Table)]
    output: Format,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum, PartialEq, Eq)]
enum Format {
    Table,
    Json,
    Yaml,
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
}

#[derive(Clone, Copy, ValueEnum)]
enum Kind {
    #[value(alias = "sources")]
    Source,
    #[value(alias = "providers")]
    Provider,
    #[value(alias = "mappings")]
    Mapping,
    #[value(alias = "routes")]
    Route,
}

impl From<Kind> for ResourceKind {
    fn from(kind: Kind) -> Self {
        match kind {
            Kind::Source => Self::Source,
            Kind::Provider => Self::Provider,
            Kind::Mapping => Self::Mapping,
            Kind::Route => Self::Route,
        }
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => {
            eprintln!("error: {}", failure.message);
            ExitCode::from(failure.code)
        }
    }
}

struct Failure {
    message: String,
    code: u8,
}

impl From<tonic::Status> for Failure {
    fn from(status: tonic::Status) -> Self {
        let code = match status.code() {
            tonic::Code::Unavailable | tonic::Code::DeadlineExceeded => 3,
            _ => 1,
        };
        Self {
            message: format!("{:?}: {}", status.code(), status.message()),
            code,
        }
    }
}

fn usage(message: impl Into<String>) -> Failure {
    Failure {
        message: message.into(),
        code: 2,
    }
}

async fn run(cli: Cli) -> Result<(), Failure> {
    let channel = Channel::from_shared(cli.server.clone())
        .map_err(|err| usage(format!("--server {}: {err}", cli.server)))?
        .connect()
        .await
        .map_err(|err| Failure {
            message: format!("cannot reach the control API at {}: {err}", cli.server),
            code: 3,
        })?;
    let mut client = CatalogServiceClient::new(channel);
    match cli.command {
        Command::Apply {
            file,
            dry_run,
            prune,
        } => {
            let document = if file.as_os_str() == "-" {
                std::io::read_to_string(std::io::stdin())
            } else {
                std::fs::read_to_string(&file)
            }
            .map_err(|err| usage(format!("{}: {err}", file.display())))?;
            let response = client
                .apply(ApplyRequest {
                    document,
                    dry_run,
                    prune,
                    expected_revision: 0,
                })
                .await?
                .into_inner();
            if cli.output == Format::Table {
                for change in &response.changes {
                    println!(
                        "{:<10} {:<9} {}",
                        action_name(change.action()),
                        kind_name(change.kind()),
                        change.name
                    );
                }
                let verb = if response.dry_run {
                    "would be at"
                } else {
                    "now at"
                };
                println!("catalog {verb} revision {}", response.revision);
            } else {
                let changes: Vec<_> = response
                    .changes
                    .iter()
                    .map(|c| {
                        serde_json::json!({
                            "kind": kind_name(c.kind()),
                            "name": c.name,
                            "action": action_name(c.action()),
                        })
                    })
                    .collect();
                print_value(
                    cli.output,
                    &serde_json::json!({"revision": response.revision, "dry_run": response.dry_run, "changes": changes}),
                );
            }
        }
        Command::Get { kind, name } => {
            let resources = match (kind, name) {
                (Some(kind), Some(name)) => vec![
                    client
                        .get_resource(GetResourceRequest {
                            kind: ResourceKind::from(kind) as i32,
                            name,
                        })
                        .await?
                        .into_inner(),
                ],
                (kind, None) => {
                    client
                        .list_resources(ListResourcesRequest {
                            kind: kind.map_or(ResourceKind::Unspecified, ResourceKind::from) as i32,
                        })
                        .await?
                        .into_inner()
                        .resources
                }
                (None, Some(_)) => return Err(usage("give the kind before the name")),
            };
            print_resources(cli.output, &resources);
        }
    }
    Ok(())
}

fn print_resources(format: Format, resources: &[Resource]) {
    if format == Format::Table {
        println!("{:<9} {:<32} DETAIL", "KIND", "NAME");
        for resource in resources {
            let spec = resource
                .spec
                .as_ref()
                .map(struct_to_json)
                .unwrap_or_default();
            let detail = match resource.kind() {
                ResourceKind::Provider => spec["url"].as_str().unwrap_or_default().to_owned(),
                ResourceKind::Route => format!(
                    "{} → {} → {}",
                    spec["source"].as_str().unwrap_or_default(),
                    spec["mapping"].as_str().unwrap_or_default(),
                    spec["provider"].as_str().unwrap_or_default()
                ),
                _ => spec["description"].as_str().unwrap_or_default().to_owned(),
            };
            println!(
                "{:<9} {:<32} {detail}",
                kind_name(resource.kind()),
                resource.name
            );
        }
        return;
    }
    let items: Vec<_> = resources
        .iter()
        .map(|r| {
            serde_json::json!({
                "kind": kind_name(r.kind()),
                "name": r.name,
                "spec": r.spec.as_ref().map(struct_to_json),
            })
        })
        .collect();
    print_value(format, &serde_json::Value::Array(items));
}

fn print_value(format: Format, value: &serde_json::Value) {
    match format {
        Format::Yaml => print!("{}", serde_yaml_ng::to_string(value).unwrap_or_default()),
        _ => println!(
            "{}",
            serde_json::to_string_pretty(value).unwrap_or_default()
        ),
    }
}

fn kind_name(kind: ResourceKind) -> &'static str {
    match kind {
        ResourceKind::Source => "source",
        ResourceKind::Provider => "provider",
        ResourceKind::Mapping => "mapping",
        ResourceKind::Route => "route",
        ResourceKind::Unspecified => "unknown",
    }
}

fn action_name(action: ChangeAction) -> &'static str {
    match action {
        ChangeAction::Create => "create",
        ChangeAction::Update => "update",
        ChangeAction::Delete => "delete",
        ChangeAction::Unchanged => "unchanged",
        ChangeAction::Unspecified => "unknown",
    }
}
