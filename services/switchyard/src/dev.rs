//! `switchyard dev`: ingest, transform, control, one delivery per provider and a local
//! echo provider, all in this process, against a NATS server it starts itself (with
//! its store under `.switchyard/`) unless `--nats-url` names one.

use std::{collections::HashSet, net::SocketAddr, path::PathBuf, time::Duration};

use anyhow::Context;
use axum::{Router, extract::Request, http::StatusCode};
use switchyard::local_server::LocalNatsServer;
use switchyard_core::{
    catalog::{Action, Catalog, CatalogStore},
    config::{LogFormat, SecretsSettings, Settings},
    nats,
    outbound::Guard,
    shutdown::Shutdown,
    telemetry, topology,
};
use tokio::net::TcpListener;

/// Options of `switchyard dev`.
#[derive(clap::Args)]
pub struct Args {
    /// Use this NATS server instead of starting a local one.
    #[arg(long, env = "SWITCHYARD_NATS_URL")]
    nats_url: Option<String>,
    /// Catalog file applied at start-up (overrides `dev.catalog`).
    #[arg(long)]
    catalog: Option<PathBuf>,
    /// Log lines as JSON instead of for a terminal.
    #[arg(long)]
    json_logs: bool,
}

/// Largest echoed body shown in the log.
const ECHO_LOG_LIMIT: usize = 2048;

/// Address ranges `switchyard dev` lets deliveries and polls reach, on top of
/// `outbound.allow`: this machine, where the echo provider and local mocks run.
const LOCAL_PROVIDERS: &[&str] = &["127.0.0.0/8", "::1/128"];
/// Where the console listens on a laptop unless `control.console.listen` says.
const DEV_CONSOLE_PORT: u16 = 8090;

/// The addresses the listeners actually bound.
struct Bound {
    ingest: SocketAddr,
    control: SocketAddr,
    console: SocketAddr,
    echo: SocketAddr,
    admin: SocketAddr,
}

pub async fn run(config: Option<PathBuf>, args: Args) -> anyhow::Result<()> {
    let mut settings = Settings::load(config.as_deref())?;
    settings.telemetry.log_format = if args.json_logs {
        LogFormat::Json
    } else {
        LogFormat::Pretty
    };
    let _guard = telemetry::init(&settings.telemetry, "dev")?;
    // Secrets for a laptop live next to the local store unless configured.
    if settings.secrets.dir == SecretsSettings::default().dir {
        settings.secrets.dir = settings.dev.store_dir.join("secrets");
    }
    // A laptop needs no keys; a configured key still turns the check on.
    if settings.control.api_keys.is_empty() && !settings.control.allow_unauthenticated {
        settings.control.allow_unauthenticated = true;
    }
    // The console is on for a laptop.
    let console_listen = *settings
        .control
        .console
        .listen
        .get_or_insert(SocketAddr::from(([127, 0, 0, 1], DEV_CONSOLE_PORT)));
    // Providers on a laptop run on it: the echo provider, a local mock.
    for range in LOCAL_PROVIDERS {
        if !settings
            .outbound
            .allow
            .iter()
            .any(|allowed| allowed == range)
        {
            settings.outbound.allow.push((*range).to_owned());
        }
    }
    let guard = Guard::new(&settings.outbound)?;
    let shutdown = Shutdown::new();
    shutdown.listen_for_signals();

    let _local_server = match args.nats_url {
        Some(url) => {
            settings.nats.url = url;
            None
        }
        None => {
            let store = settings.dev.store_dir.join("nats");
            std::fs::create_dir_all(&store).with_context(|| store.display().to_string())?;
            let port = port_is_free(4222).await.then_some(4222);
            let server = LocalNatsServer::start(&store, port).await?;
            tracing::info!(url = server.url(), store = %store.display(), "started a local nats-server");
            settings.nats.url = server.url().to_owned();
            Some(server)
        }
    };

    let nats = nats::connect(&settings.nats, "dev").await?;
    topology::ensure_topology(&nats.jetstream, &settings.topology).await?;
    let store = CatalogStore::open(&nats.jetstream).await?;
    if let Some(path) = args.catalog.or_else(|| settings.dev.catalog.clone()) {
        apply_file(&store, &guard, &path).await?;
    }

    let admin_address = switchyard_core::admin::start(&settings, &shutdown).await?;
    let echo = bind(settings.dev.echo_listen, "dev.echo_listen").await?;
    let ingest = bind(settings.ingest.listen, "ingest.listen").await?;
    let control = bind(settings.control.listen, "control.listen").await?;
    let console = bind(console_listen, "control.console.listen").await?;
    let ingest_address = ingest.local_addr()?;
    let control_address = control.local_addr()?;
    let console_address = console.local_addr()?;
    let echo_address = echo.local_addr()?;

    shutdown.spawn("echo", serve_echo(echo, shutdown.clone()));
    shutdown.spawn(
        "ingest",
        switchyard_ingest::run(settings.clone(), ingest, shutdown.clone()),
    );
    shutdown.spawn(
        "transform",
        switchyard_transform::run(settings.clone(), shutdown.clone()),
    );
    shutdown.spawn(
        "control",
        switchyard_control::run(
            settings.clone(),
            switchyard_control::Listeners {
                grpc: control,
                console: Some(console),
            },
            shutdown.clone(),
        ),
    );
    shutdown.spawn(
        "deliveries",
        supervise_deliveries(settings.clone(), store.clone(), shutdown.clone()),
    );

    let catalog = store.load().await?.catalog;
    print_banner(
        &catalog,
        &settings.nats.display_servers(),
        Bound {
            ingest: ingest_address,
            control: control_address,
            console: console_address,
            echo: echo_address,
            admin: admin_address,
        },
        &settings.secrets.dir,
        settings.control.api_keys.is_empty(),
    );
    shutdown.wait(Duration::from_secs(30)).await?;
    Ok(())
}

async fn port_is_free(port: u16) -> bool {
    TcpListener::bind(("127.0.0.1", port)).await.is_ok()
}

async fn bind(address: std::net::SocketAddr, key: &str) -> anyhow::Result<TcpListener> {
    switchyard_core::http::bind(address).await.with_context(|| {
        format!("{key} {address} cannot be bound (is another switchyard running?)")
    })
}

/// Applies a catalog file on top of what is stored (nothing is deleted).
async fn apply_file(
    store: &CatalogStore,
    guard: &Guard,
    path: &std::path::Path,
) -> anyhow::Result<()> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("catalog {}", path.display()))?;
    let bundle =
        Catalog::parse_yaml(&text).with_context(|| format!("catalog {}", path.display()))?;
    guard
        .check_catalog(&bundle)
        .with_context(|| format!("catalog {}", path.display()))?;
    let current = store.load().await?;
    let (next, changes) = current
        .catalog
        .apply(&bundle, false)
        .with_context(|| format!("catalog {}", path.display()))?;
    if changes
        .iter()
        .all(|change| change.action == Action::Unchanged)
    {
        tracing::info!(catalog = %path.display(), "catalog already applied");
        return Ok(());
    }
    let revision = store.save(&next, current.revision).await?;
    for change in changes
        .iter()
        .filter(|change| change.action != Action::Unchanged)
    {
        tracing::info!(kind = %change.kind, name = change.name, action = ?change.action, "catalog");
    }
    tracing::info!(catalog = %path.display(), revision, "catalog applied");
    Ok(())
}

/// Starts a delivery process for every provider in the catalog, now and as providers
/// are added.
async fn supervise_deliveries(
    settings: Settings,
    store: CatalogStore,
    shutdown: Shutdown,
) -> anyhow::Result<()> {
    let mut catalog = store.watch(&shutdown).await?;
    let mut running = HashSet::new();
    loop {
        let snapshot = catalog.borrow_and_update().clone();
        for provider in &snapshot.catalog.providers {
            if running.insert(provider.name.clone()) {
                tracing::info!(provider = provider.name, "starting delivery");
                let run = switchyard_delivery::run(
                    settings.clone(),
                    provider.name.clone(),
                    shutdown.clone(),
                );
                shutdown.spawn("delivery", run);
            }
        }
        tokio::select! {
            () = shutdown.cancelled() => return Ok(()),
            changed = catalog.changed() => if changed.is_err() { return Ok(()) },
        }
    }
}

/// A provider that accepts everything and logs each delivery, so a first event is
/// visibly delivered.
async fn serve_echo(listener: TcpListener, shutdown: Shutdown) -> anyhow::Result<()> {
    let app = Router::new().fallback(|request: Request| async move {
        let (parts, body) = request.into_parts();
        let body = axum::body::to_bytes(body, 1 << 20)
            .await
            .unwrap_or_default();
        let header = |name: &str| {
            parts
                .headers
                .get(name)
                .and_then(|value| value.to_str().ok())
                .unwrap_or("-")
                .to_owned()
        };
        let mut text = String::from_utf8_lossy(&body).into_owned();
        if text.len() > ECHO_LOG_LIMIT {
            text.truncate(text.floor_char_boundary(ECHO_LOG_LIMIT));
            text.push('…');
        }
        tracing::info!(
            target: "switchyard::echo",
            method = %parts.method,
            path = %parts.uri.path(),
            event_id = header("switchyard-event-id"),
            route = header("switchyard-route"),
            mapping = header("switchyard-mapping"),
            idempotency_key = header("idempotency-key"),
            body = text,
            "echo provider received a delivery"
        );
        StatusCode::OK
    });
    axum::serve(listener, app)
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await?;
    Ok(())
}

fn print_banner(
    catalog: &Catalog,
    nats_url: &str,
    bound: Bound,
    secrets_dir: &std::path::Path,
    no_api_keys: bool,
) {
    // What a local client should call: the bound address, or loopback for a listener
    // on every interface.
    let local = |address: SocketAddr| {
        if address.ip().is_unspecified() {
            SocketAddr::new(std::net::Ipv4Addr::LOCALHOST.into(), address.port())
        } else {
            address
        }
    };
    let reach = |address: SocketAddr| {
        if address.ip().to_canonical().is_loopback() {
            "this machine only"
        } else {
            "reachable from the network"
        }
    };
    let mut banner = format!(
        "\nSwitchyard is running.\n  NATS      {nats_url}\n  ingest    http://{} ({})\n  control   {} (gRPC, {}; try `syctl get`)\n  console   http://{} (in a browser, {})\n  echo      http://{} (logs every delivery)\n  metrics   http://{}/metrics ({})\n  secrets   {} (files named after the secret)\n",
        bound.ingest,
        reach(bound.ingest),
        bound.control,
        reach(bound.control),
        bound.console,
        reach(bound.console),
        bound.echo,
        bound.admin,
        reach(bound.admin),
        secrets_dir.display(),
    );
    for (what, address, key) in [
        ("the control API", bound.control, "control.listen"),
        ("the console", bound.console, "control.console.listen"),
    ] {
        if no_api_keys && !address.ip().to_canonical().is_loopback() {
            let warning = format!(
                "{what} on {address} is reachable beyond this machine and accepts every caller as admin: set control.api_keys, or bind {key} to 127.0.0.1"
            );
            tracing::warn!("{warning}");
            banner.push_str(&format!("\n  WARNING: {warning}\n"));
        }
    }
    if let Some(route) = catalog.routes.first() {
        let event_type = route
            .event_types
            .first()
            .map_or("event".to_owned(), |pattern| {
                pattern.replace('*', "created")
            });
        banner.push_str(&format!(
            "\nSend an event:\n  curl -sS -X POST 'http://{}/v1/events/{}?type={event_type}' \\\n    -H 'Content-Type: application/json' -H 'Idempotency-Key: order-1001' \\\n    -d '{{\"id\":\"1001\",\"customer\":{{\"email\":\"Ada@Example.com\"}},\"total\":\"42.50\",\"currency\":\"eur\"}}'\n",
            local(bound.ingest),
            route.source,
        ));
    } else {
        banner.push_str("\nThe catalog has no routes yet: apply one with `syctl apply -f deploy/examples/quickstart.yaml`.\n");
    }
    println!("{banner}");
}
