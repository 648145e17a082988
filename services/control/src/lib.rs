//! Switchyard control: the gRPC API (package `switchyard.v1`).
//!
//! Serves the catalog, mapping dry-run and replay APIs, `grpc.health.v1`, and server reflection in both the v1 and
//! v1alpha protocols so that grpcurl of any age can list and call the services; and,
//! on its own listener, the operator console ([`console`]), which renders the same
//! service layer in a browser.

#![forbid(unsafe_code)]

mod auth;
mod canary;
mod catalog;
mod console;
mod dead_letters;
mod error;
mod events;
mod explain;
mod mapping;
mod provider;
mod replay;
mod source;
mod stats;

use switchyard_core::{
    catalog::CatalogStore, config::Settings, nats, outbound::Guard, shutdown::Shutdown, topology,
};
use tokio::net::TcpListener;
use tonic::transport::{Certificate, Identity, ServerTlsConfig, server::TcpIncoming};

use crate::auth::Authenticate;

pub use crate::{
    canary::RouteApi, catalog::CatalogApi, dead_letters::DeadLetterApi, error::ApiError,
    events::EventApi, explain::Explainer, mapping::MappingApi, provider::ProviderApi,
    replay::ReplayApi, source::SourceApi, stats::StatsApi,
};

use switchyard_proto as proto;

/// Errors that stop the control service.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// NATS, topology or catalog set-up failed.
    #[error(transparent)]
    Core(#[from] switchyard_core::Error),
    /// The gRPC server failed.
    #[error("gRPC server: {0}")]
    Transport(#[from] tonic::transport::Error),
    /// The listener failed.
    #[error("listener: {0}")]
    Io(#[from] std::io::Error),
    /// Reflection could not be built from the descriptors.
    #[error("reflection: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    /// The settings cannot be served: no API keys, or unreadable TLS files.
    #[error("{0}")]
    Settings(String),
}

/// How often an idle gRPC connection is pinged.
const GRPC_KEEPALIVE: std::time::Duration = std::time::Duration::from_secs(30);
/// How long a ping may go unanswered before the connection is closed.
const GRPC_KEEPALIVE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);
/// Concurrent calls on one gRPC connection.
const GRPC_MAX_STREAMS: u32 = 128;
/// Largest header block of a gRPC call.
const GRPC_MAX_HEADER_BYTES: u32 = 64 * 1024;

/// The listeners control serves, bound by the caller.
pub struct Listeners {
    /// The gRPC API (`control.listen`).
    pub grpc: TcpListener,
    /// The operator console (`control.console.listen`), when it is served.
    pub console: Option<TcpListener>,
}

/// The service layer: what the gRPC API serves and the console renders, so each query
/// and action exists once.
#[derive(Clone)]
pub(crate) struct Apis {
    pub catalog: CatalogApi,
    pub mappings: MappingApi,
    pub replay: ReplayApi,
    pub providers: ProviderApi,
    pub dead_letters: DeadLetterApi,
    pub events: EventApi,
    pub sources: SourceApi,
    pub stats: StatsApi,
    pub routes: RouteApi,
}

/// Serves the control API, and the console when it has a listener, until `shutdown`
/// starts draining.
pub async fn run(
    settings: Settings,
    listeners: Listeners,
    shutdown: Shutdown,
) -> Result<(), Error> {
    let authenticate = Authenticate::new(&settings.control).map_err(Error::Settings)?;
    let tls = settings.control.tls.as_ref().map(tls_config).transpose()?;
    let guard = Guard::new(&settings.outbound)?;
    let nats = nats::connect(&settings.nats, "control").await?;
    topology::ensure_topology(&nats.jetstream, &settings.topology).await?;
    let store = CatalogStore::open(&nats.jetstream).await?;
    let explainer = Explainer::new(store.clone(), &nats.jetstream).await?;
    let apis = Apis {
        catalog: CatalogApi::new(store.clone(), guard),
        mappings: MappingApi::new(store.clone()),
        replay: ReplayApi::new(nats.jetstream.clone()),
        providers: ProviderApi::new(store.clone(), nats.clone()).await?,
        dead_letters: DeadLetterApi::new(nats.jetstream.clone(), explainer.clone()),
        events: EventApi::new(nats.jetstream.clone(), store.clone(), explainer),
        sources: SourceApi::new(store.clone(), nats.clone()),
        stats: StatsApi::new(nats.jetstream.clone(), store.clone()),
        routes: RouteApi::new(store.clone(), nats.jetstream.clone()).await?,
    };
    shutdown.spawn(
        "canary-judge",
        canary::judge(nats.jetstream.clone(), store, shutdown.clone()),
    );
    let console = listeners.console.map(|listener| {
        let console = console::Console::new(
            apis.clone(),
            authenticate.clone(),
            settings.control.console.clone(),
        );
        console::serve(listener, console, shutdown.clone())
    });
    let grpc = serve_grpc(&settings, listeners.grpc, apis, authenticate, tls, shutdown);
    match console {
        Some(console) => {
            tokio::try_join!(grpc, async { console.await.map_err(Error::Io) })?;
        }
        None => grpc.await?,
    }
    Ok(())
}

/// Serves the gRPC API on `listener`.
async fn serve_grpc(
    settings: &Settings,
    listener: TcpListener,
    apis: Apis,
    authenticate: Authenticate,
    tls: Option<ServerTlsConfig>,
    shutdown: Shutdown,
) -> Result<(), Error> {
    let (health, health_service) = tonic_health::server::health_reporter();
    health
        .set_serving::<proto::catalog_service_server::CatalogServiceServer<CatalogApi>>()
        .await;
    health
        .set_serving::<proto::mapping_service_server::MappingServiceServer<MappingApi>>()
        .await;
    health
        .set_serving::<proto::replay_service_server::ReplayServiceServer<ReplayApi>>()
        .await;
    health
        .set_serving::<proto::provider_service_server::ProviderServiceServer<ProviderApi>>()
        .await;
    health
        .set_serving::<proto::dead_letter_service_server::DeadLetterServiceServer<DeadLetterApi>>()
        .await;
    health
        .set_serving::<proto::event_service_server::EventServiceServer<EventApi>>()
        .await;
    health
        .set_serving::<proto::route_service_server::RouteServiceServer<RouteApi>>()
        .await;
    health
        .set_serving::<proto::stats_service_server::StatsServiceServer<StatsApi>>()
        .await;
    health
        .set_serving::<proto::source_service_server::SourceServiceServer<SourceApi>>()
        .await;
    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    let reflection_v1 = reflection().build_v1()?;
    let reflection_v1alpha = reflection().build_v1alpha()?;

    tracing::info!(
        address = %listener.local_addr()?,
        tls = tls.is_some(),
        mutual_tls = settings.control.tls.as_ref().is_some_and(|tls| tls.client_ca.is_some()),
        api_keys = settings.control.api_keys.len(),
        "control listening"
    );
    // Limits of the gRPC listener: a connection that stops answering keep-alive pings
    // is dropped, and a client cannot open streams or send headers without bound.
    let mut server = tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(GRPC_KEEPALIVE))
        .http2_keepalive_timeout(Some(GRPC_KEEPALIVE_TIMEOUT))
        .max_concurrent_streams(GRPC_MAX_STREAMS)
        .http2_max_header_list_size(GRPC_MAX_HEADER_BYTES);
    if let Some(tls) = tls {
        server = server.tls_config(tls)?;
    }
    // Health checks and reflection are open, so probes and grpcurl can find the
    // services; everything else passes the API-key check.
    server
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(
            proto::catalog_service_server::CatalogServiceServer::with_interceptor(
                apis.catalog,
                authenticate.clone(),
            ),
        )
        .add_service(
            proto::mapping_service_server::MappingServiceServer::with_interceptor(
                apis.mappings,
                authenticate.clone(),
            ),
        )
        .add_service(
            proto::replay_service_server::ReplayServiceServer::with_interceptor(
                apis.replay,
                authenticate.clone(),
            ),
        )
        .add_service(
            proto::provider_service_server::ProviderServiceServer::with_interceptor(
                apis.providers,
                authenticate.clone(),
            ),
        )
        .add_service(
            proto::dead_letter_service_server::DeadLetterServiceServer::with_interceptor(
                apis.dead_letters,
                authenticate.clone(),
            ),
        )
        .add_service(
            proto::event_service_server::EventServiceServer::with_interceptor(
                apis.events,
                authenticate.clone(),
            ),
        )
        .add_service(
            proto::source_service_server::SourceServiceServer::with_interceptor(
                apis.sources,
                authenticate.clone(),
            ),
        )
        .add_service(
            proto::stats_service_server::StatsServiceServer::with_interceptor(
                apis.stats,
                authenticate.clone(),
            ),
        )
        .add_service(
            proto::route_service_server::RouteServiceServer::with_interceptor(
                apis.routes,
                authenticate,
            ),
        )
        .serve_with_incoming_shutdown(TcpIncoming::from(listener), async move {
            shutdown.cancelled().await;
        })
        .await?;
    Ok(())
}

/// Reads the server's certificate and key, and the client CA for mutual TLS.
fn tls_config(tls: &switchyard_core::config::TlsSettings) -> Result<ServerTlsConfig, Error> {
    let read = |key: &str, path: &std::path::Path| {
        std::fs::read(path)
            .map_err(|err| Error::Settings(format!("control.tls.{key}: {}: {err}", path.display())))
    };
    let mut config = ServerTlsConfig::new().identity(Identity::from_pem(
        read("cert", &tls.cert)?,
        read("key", &tls.key)?,
    ));
    if let Some(ca) = &tls.client_ca {
        config = config.client_ca_root(Certificate::from_pem(read("client_ca", ca)?));
    }
    Ok(config)
}
