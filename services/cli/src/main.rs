//! `syctl`: the command-line client of the Switchyard control API.
//!
//! Exit codes: 0 success, 1 the server refused the request (invalid input, conflict,
//! not found), 2 bad usage, 3 the server could not be reached, 4 `mapping test` ran
//! and the mapping did not pass, or `dlq replay` kept dead letters that still fail.

mod dlq;
mod inspect;
mod providers;
mod suggest;

use std::{path::PathBuf, process::ExitCode};

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use clap::{Parser, Subcommand, ValueEnum};
use switchyard_proto::{
    convert::struct_to_json,
    {
        ApplyRequest, ChangeAction, DeleteResourceRequest, GetResourceRequest,
        ListResourcesRequest, ReplayProgress, ReplayRequest, Resource, ResourceKind,
        TestMappingRequest, TestMappingResponse, catalog_service_client::CatalogServiceClient,
        mapping_service_client::MappingServiceClient, replay_service_client::ReplayServiceClient,
    },
};
use tonic::{
    Status,
    metadata::{Ascii, MetadataValue},
    service::{Interceptor, interceptor::InterceptedService},
    transport::{Certificate, Channel, ClientTlsConfig, Identity},
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

/// Where the control API is and how to authenticate to it.
#[derive(clap::Args)]
struct Remote {
    /// Address of the control API.
    #[arg(
        long,
        global = true,
        env = "SYCTL_SERVER",
        default_value = "http://127.0.0.1:50051"
    )]
    server: String,
    /// API key of the control API (sent as `authorization: Bearer`).
    #[arg(long, global = true, env = "SYCTL_API_KEY", hide_env_values = true)]
    api_key: Option<String>,
    /// PEM CA certificate that signs the server's certificate (for https:// servers
    /// whose CA is not a public one).
    #[arg(long, global = true, env = "SYCTL_CA_CERT")]
    ca_cert: Option<PathBuf>,
    /// PEM client certificate, for servers that require mutual TLS.
    #[arg(
        long,
        global = true,
        env = "SYCTL_CLIENT_CERT",
        requires = "client_key"
    )]
    client_cert: Option<PathBuf>,
    /// PEM private key of --client-cert.
    #[arg(
        long,
        global = true,
        env = "SYCTL_CLIENT_KEY",
        requires = "client_cert"
    )]
    client_key: Option<PathBuf>,
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
    /// Show one resource, the routes that use it, and a provider's status.
    Describe {
        /// source, provider, mapping or route.
        kind: Kind,
        /// The resource's name (`name@version` for a mapping).
        name: String,
    },
    /// Follow one event: the ingest record, each route's state and every attempt.
    #[command(subcommand)]
    Events(EventsCommand),
    /// Streams, consumers and dead letters at a glance.
    Stats,
    /// Delete one resource; refused while others still refer to it.
    Delete {
        /// source, provider, mapping or route.
        kind: Kind,
        /// The resource's name (`name@version` for a mapping).
        name: String,
    },
    /// Try mappings out and draft new ones.
    #[command(subcommand)]
    Mapping(MappingCommand),
    /// Dead letters: list, show, replay, purge.
    #[command(subcommand)]
    Dlq(dlq::DlqCommand),
    /// Provider status, pause, resume and breaker reset.
    #[command(subcommand)]
    Providers(providers::ProvidersCommand),
    /// API keys of the control API (offline).
    #[command(subcommand)]
    Keys(KeysCommand),
    /// Re-run stored events through the current routes and mapping versions.
    Replay {
        /// Replay the events of this source through every route that takes them.
        #[arg(long, required_unless_present = "route")]
        source: Option<String>,
        /// Replay only through this route.
        #[arg(long)]
        route: Option<String>,
        /// Start: an INGEST sequence number, an RFC 3339 time, or a duration ago (`2h`).
        #[arg(long)]
        from: Option<String>,
        /// End, in the same forms; the newest stored event when omitted.
        #[arg(long)]
        to: Option<String>,
        /// Also replay events already delivered; providers receive them again.
        #[arg(long)]
        redeliver: bool,
        /// Count what would happen without publishing anything.
        #[arg(long)]
        dry_run: bool,
    },
}

#[derive(Subcommand)]
enum EventsCommand {
    /// One event by id.
    Show {
        /// The event id (`Switchyard-Event-Id`, or the id ingest answered with).
        event_id: String,
    },
}

#[derive(Subcommand)]
enum KeysCommand {
    /// Make a new random API key: prints the key once, and the control settings entry
    /// that stores only its hash.
    Create {
        /// Who will hold the key.
        #[arg(long)]
        name: String,
        /// read, operate or admin; each includes the ones before it.
        #[arg(long, value_parser = ["read", "operate", "admin"])]
        scope: String,
    },
}

#[derive(Subcommand)]
enum MappingCommand {
    /// Run a mapping on a sample: the output, the schema verdicts and diagnostics.
    Test {
        /// A published version, `name@version` (or the one to pick from --file).
        reference: Option<String>,
        /// A mapping, or a catalog document holding it, to test before applying.
        #[arg(long, short, conflicts_with = "program")]
        file: Option<PathBuf>,
        /// A VRL program file to test on its own.
        #[arg(long)]
        program: Option<PathBuf>,
        /// The sample event (JSON); `-` reads standard input.
        #[arg(long, short)]
        sample: PathBuf,
    },
    /// Draft a VRL mapping from the input and output shapes (JSON Schemas or samples),
    /// offline: one line per output field, a comment for each that nothing matches.
    Suggest {
        /// What comes in: a JSON Schema or a sample event (JSON or YAML).
        #[arg(long)]
        from: PathBuf,
        /// What must come out: a JSON Schema or a sample body.
        #[arg(long)]
        to: PathBuf,
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

/// A connection to the control API that sends the API key with every call.
type Connection = InterceptedService<Channel, ApiKey>;

/// Adds `authorization: Bearer <key>` to every request.
#[derive(Clone)]
struct ApiKey(Option<MetadataValue<Ascii>>);

impl Interceptor for ApiKey {
    fn call(&mut self, mut request: tonic::Request<()>) -> Result<tonic::Request<()>, Status> {
        if let Some(value) = &self.0 {
            request
                .metadata_mut()
                .insert("authorization", value.clone());
        }
        Ok(request)
    }
}

/// Connects to `--server` with the key and TLS files the command line gives.
async fn connect(cli: &Remote) -> Result<Connection, Failure> {
    let server = &cli.server;
    let key = match &cli.api_key {
        Some(key) => Some(
            format!("Bearer {}", key.trim())
                .parse::<MetadataValue<Ascii>>()
                .map_err(|_| usage("--api-key: not a printable ASCII key"))?,
        ),
        None => None,
    };
    let mut endpoint = Channel::from_shared(server.clone())
        .map_err(|err| usage(format!("--server {server}: {err}")))?;
    if server.starts_with("https://") {
        let mut tls = ClientTlsConfig::new().with_enabled_roots();
        if let Some(ca) = &cli.ca_cert {
            tls = tls.ca_certificate(Certificate::from_pem(read(ca)?));
        }
        if let (Some(cert), Some(key)) = (&cli.client_cert, &cli.client_key) {
            tls = tls.identity(Identity::from_pem(read(cert)?, read(key)?));
        }
        endpoint = endpoint
            .tls_config(tls)
            .map_err(|err| usage(format!("TLS settings: {err}")))?;
    } else if cli.ca_cert.is_some() || cli.client_cert.is_some() {
        return Err(usage(
            "--ca-cert and --client-cert need an https:// --server",
        ));
    }
    let channel = endpoint.connect().await.map_err(|err| Failure {
        message: format!(
            "cannot reach the control API at {server}: {}",
            error_chain(&err)
        ),
        code: 3,
    })?;
    Ok(InterceptedService::new(channel, ApiKey(key)))
}

/// An error with its causes, which is where transport errors say what went wrong.
fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text = format!("{text}: {cause}");
        source = cause.source();
    }
    text
}

/// A new API key: `sy_` and 32 random bytes, URL-safe base64.
fn new_key() -> Result<String, Failure> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(|err| Failure {
        message: format!("no random numbers from the system: {err}"),
        code: 1,
    })?;
    Ok(format!("sy_{}", URL_SAFE_NO_PAD.encode(bytes)))
}

/// The stored form of an API key, `sha256:<hex>`, as the servers' key check expects
/// it (`switchyard_core::apikey`; the access tests check that the two agree).
fn key_hash(key: &str) -> String {
    use sha2::Digest;
    let hex: String = sha2::Sha256::digest(key.trim().as_bytes())
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect();
    format!("sha256:{hex}")
}

async fn run(cli: Cli) -> Result<(), Failure> {
    let remote = &cli.remote;
    let connect = || connect(remote);
    match cli.command {
        Command::Describe { kind, name } => {
            inspect::describe(connect().await?, kind, name, cli.output).await?;
        }
        Command::Events(EventsCommand::Show { event_id }) => {
            inspect::show_event(connect().await?, event_id, cli.output).await?;
        }
        Command::Stats => inspect::stats(connect().await?, cli.output).await?,
        Command::Dlq(command) => dlq::run(command, connect().await?, cli.output).await?,
        Command::Providers(command) => {
            providers::run(command, connect().await?, cli.output).await?
        }
        Command::Keys(KeysCommand::Create { name, scope }) => {
            let key = new_key()?;
            let hash = key_hash(&key);
            if cli.output == Format::Table {
                println!("key (shown once; give it to {name}): {key}");
                println!();
                println!("control settings entry (stores only the hash):");
                println!("  api_keys:");
                println!("    - name: {name}");
                println!("      hash: {hash}");
                println!("      scope: {scope}");
            } else {
                print_value(
                    cli.output,
                    &serde_json::json!({"name": name, "key": key, "hash": hash, "scope": scope}),
                );
            }
        }
        Command::Mapping(MappingCommand::Suggest { from, to }) => {
            let document = |file: &PathBuf| -> Result<serde_json::Value, Failure> {
                serde_yaml_ng::from_str(&read(file)?)
                    .map_err(|err| usage(format!("{}: not JSON or YAML: {err}", file.display())))
            };
            print!("{}", suggest::suggest(&document(&from)?, &document(&to)?));
        }
        Command::Mapping(MappingCommand::Test {
            reference,
            file,
            program,
            sample,
        }) => {
            let document = match (&file, &program) {
                (Some(file), _) => read(file)?,
                (None, Some(program)) => serde_json::json!({
                    "name": "draft",
                    "version": 1,
                    "program": read(program)?,
                })
                .to_string(),
                (None, None) => String::new(),
            };
            if document.is_empty() && reference.is_none() {
                return Err(usage(
                    "give a published mapping (name@version), --file or --program",
                ));
            }
            let response = MappingServiceClient::new(connect().await?)
                .test_mapping(TestMappingRequest {
                    reference: reference.unwrap_or_default(),
                    document,
                    sample: read(&sample)?,
                })
                .await?
                .into_inner();
            print_test(cli.output, &response);
            if !response.passed {
                return Err(Failure {
                    message: format!("{} did not pass", response.mapping),
                    code: 4,
                });
            }
        }
        Command::Replay {
            source,
            route,
            from,
            to,
            redeliver,
            dry_run,
        } => {
            let mut request = ReplayRequest {
                source: source.unwrap_or_default(),
                route: route.unwrap_or_default(),
                redeliver,
                dry_run,
                ..Default::default()
            };
            if let Some(from) = from {
                match bound("--from", &from)? {
                    Bound::Sequence(sequence) => request.from_sequence = sequence,
                    Bound::Time(time) => request.from_time = Some(time),
                }
            }
            if let Some(to) = to {
                match bound("--to", &to)? {
                    Bound::Sequence(sequence) => request.to_sequence = sequence,
                    Bound::Time(time) => request.to_time = Some(time),
                }
            }
            let mut stream = ReplayServiceClient::new(connect().await?)
                .replay(request)
                .await?
                .into_inner();
            let bar =
                cli.output == Format::Table && std::io::IsTerminal::is_terminal(&std::io::stderr());
            let mut last = None;
            while let Some(progress) = stream.message().await? {
                if bar {
                    eprint!("\r{}", progress_bar(&progress));
                }
                last = Some(progress);
            }
            if bar {
                eprintln!();
            }
            let last = last.ok_or_else(|| Failure {
                message: "the replay ended without a result".into(),
                code: 1,
            })?;
            print_replay(cli.output, &last);
        }
        Command::Apply {
            file,
            dry_run,
            prune,
        } => {
            let document = read(&file)?;
            let response = CatalogServiceClient::new(connect().await?)
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
                    for line in &change.diff {
                        println!("           {line}");
                    }
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
                            "diff": c.diff,
                        })
                    })
                    .collect();
                print_value(
                    cli.output,
                    &serde_json::json!({"revision": response.revision, "dry_run": response.dry_run, "changes": changes}),
                );
            }
        }
        Command::Delete { kind, name } => {
            let response = CatalogServiceClient::new(connect().await?)
                .delete_resource(DeleteResourceRequest {
                    kind: ResourceKind::from(kind) as i32,
                    name: name.clone(),
                    expected_revision: 0,
                })
                .await?
                .into_inner();
            let kind = kind_name(ResourceKind::from(kind));
            if cli.output == Format::Table {
                println!(
                    "deleted {kind} {name}; catalog now at revision {}",
                    response.revision
                );
            } else {
                print_value(
                    cli.output,
                    &serde_json::json!({"deleted": {"kind": kind, "name": name}, "revision": response.revision}),
                );
            }
        }
        Command::Get { kind, name } => {
            let mut client = CatalogServiceClient::new(connect().await?);
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

/// Reads a file named on the command line; `-` is standard input.
fn read(file: &PathBuf) -> Result<String, Failure> {
    if file.as_os_str() == "-" {
        std::io::read_to_string(std::io::stdin())
    } else {
        std::fs::read_to_string(file)
    }
    .map_err(|err| usage(format!("{}: {err}", file.display())))
}

enum Bound {
    Sequence(u64),
    Time(prost_types::Timestamp),
}

/// A replay bound: a sequence number, an RFC 3339 time, or a duration ago.
fn bound(flag: &str, text: &str) -> Result<Bound, Failure> {
    if let Ok(sequence) = text.parse::<u64>() {
        return Ok(Bound::Sequence(sequence));
    }
    let at = match time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339)
    {
        Ok(at) => at,
        Err(_) => {
            let ago = humantime::parse_duration(text).map_err(|_| {
                usage(format!(
                    "{flag} {text:?}: give a sequence number, an RFC 3339 time or a duration ago such as 2h"
                ))
            })?;
            time::OffsetDateTime::now_utc() - ago
        }
    };
    Ok(Bound::Time(switchyard_proto::convert::timestamp_of(at)))
}

fn progress_bar(progress: &ReplayProgress) -> String {
    format!(
        "{} events, {} published",
        bar(progress.scanned, progress.total),
        progress.published
    )
}

/// `[####------] done/total`, for progress on a terminal.
fn bar(done: u64, total: u64) -> String {
    const WIDTH: u64 = 30;
    let total = total.max(done).max(1);
    let filled = (done * WIDTH / total).min(WIDTH) as usize;
    format!(
        "[{}{}] {done}/{total}",
        "#".repeat(filled),
        "-".repeat(WIDTH as usize - filled),
    )
}

/// A time given as RFC 3339 or as a duration ago (`2h`).
fn time_flag(flag: &str, text: &str) -> Result<prost_types::Timestamp, Failure> {
    match bound(flag, text)? {
        Bound::Time(at) if text.parse::<u64>().is_err() => Ok(at),
        _ => Err(usage(format!(
            "{flag} {text:?}: give an RFC 3339 time or a duration ago such as 2h"
        ))),
    }
}

fn print_replay(format: Format, progress: &ReplayProgress) {
    let value = serde_json::json!({
        "replay_id": progress.replay_id,
        "dry_run": progress.dry_run,
        "scanned": progress.scanned,
        "published": progress.published,
        "already_delivered": progress.already_delivered,
        "dead_lettered": progress.dead_lettered,
        "not_routed": progress.not_routed,
        "last_sequence": progress.last_sequence,
    });
    if format != Format::Table {
        return print_value(format, &value);
    }
    let published = if progress.dry_run {
        "would publish"
    } else {
        "published"
    };
    println!("replay {}", progress.replay_id);
    println!("  events read        {}", progress.scanned);
    println!("  {published:<19}{}", progress.published);
    println!(
        "  already delivered  {} (left out; --redeliver sends them again)",
        progress.already_delivered
    );
    println!("  dead-lettered      {}", progress.dead_lettered);
    println!("  not routed         {}", progress.not_routed);
    if progress.last_sequence > 0 {
        println!("  last sequence      {}", progress.last_sequence);
    }
}

fn print_test(format: Format, response: &TestMappingResponse) {
    let violations = |list: &[switchyard_proto::Violation]| -> Vec<serde_json::Value> {
        list.iter()
            .map(|v| serde_json::json!({"path": v.path, "message": v.message}))
            .collect()
    };
    let output: Option<serde_json::Value> = response
        .output
        .as_deref()
        .and_then(|text| serde_json::from_str(text).ok());
    if format != Format::Table {
        let diagnostics: Vec<_> = response
            .diagnostics
            .iter()
            .map(|d| serde_json::json!({"field": d.field, "message": d.message}))
            .collect();
        return print_value(
            format,
            &serde_json::json!({
                "mapping": response.mapping,
                "passed": response.passed,
                "diagnostics": diagnostics,
                "input_violations": violations(&response.input_violations),
                "output": output,
                "skipped": response.skipped,
                "error": response.error,
                "output_violations": violations(&response.output_violations),
            }),
        );
    }
    println!("mapping  {}", response.mapping);
    if !response.diagnostics.is_empty() {
        println!("compile  failed");
        for diagnostic in &response.diagnostics {
            println!("{}:\n{}", diagnostic.field, diagnostic.message);
        }
        return;
    }
    let verdict = |list: &[switchyard_proto::Violation]| {
        if list.is_empty() {
            "ok".to_owned()
        } else {
            let lines: Vec<String> = list
                .iter()
                .map(|v| {
                    format!(
                        "\n  {}: {}",
                        if v.path.is_empty() { "/" } else { &v.path },
                        v.message
                    )
                })
                .collect();
            format!("{} violation(s){}", list.len(), lines.concat())
        }
    };
    println!("input    {}", verdict(&response.input_violations));
    if let Some(reason) = &response.skipped {
        println!("skipped  {reason} (the route would skip this event)");
    }
    if let Some(error) = &response.error {
        println!("error    {error}");
    }
    if let Some(output) = &output {
        println!(
            "output   {}",
            serde_json::to_string_pretty(output)
                .unwrap_or_default()
                .replace('\n', "\n         ")
        );
        println!("schema   {}", verdict(&response.output_violations));
    }
    println!(
        "result   {}",
        if response.passed { "passed" } else { "failed" }
    );
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

/// A protobuf timestamp as RFC 3339, to the second.
fn rfc3339(timestamp: Option<&prost_types::Timestamp>) -> Option<String> {
    switchyard_proto::convert::rfc3339(timestamp?)
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
