//! Switchyard control: the gRPC API (package `switchyard.v1`).
//!
//! Serves the catalog, mapping dry-run and replay APIs, `grpc.health.v1`, and server reflection in both the v1 and
//! v1alpha protocols so that grpcurl of any age can list and call the services.

#![forbid(unsafe_code)]

mod catalog;
pub mod convert;
mod mapping;
mod replay;

use switchyard_core::{
    catalog::CatalogStore, config::Settings, nats, shutdown::Shutdown, topology,
};
use tokio::net::TcpListener;
use tonic::transport::server::TcpIncoming;

pub use crate::{catalog::CatalogApi, mapping::MappingApi, replay::ReplayApi};

/// Generated protobuf and gRPC code of `switchyard.v1`.
pub mod proto {
    #![allow(missing_docs, clippy::all, clippy::pedantic)]
    tonic::include_proto!("switchyard.v1");

    /// Encoded file descriptor set of `switchyard.v1`, for reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        include_bytes!(concat!(env!("OUT_DIR"), "/switchyard_descriptor.bin"));
}

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
}

/// Serves the control API on `listener` until `shutdown` starts draining.
pub async fn run(
    settings: Settings,
    listener: TcpListener,
    shutdown: Shutdown,
) -> Result<(), Error> {
    let nats = nats::connect(&settings.nats, "control").await?;
    topology::ensure_topology(&nats.jetstream, &settings.topology).await?;
    let store = CatalogStore::open(&nats.jetstream).await?;

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
    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    let reflection_v1 = reflection().build_v1()?;
    let reflection_v1alpha = reflection().build_v1alpha()?;

    tracing::info!(address = %listener.local_addr()?, "control listening");
    tonic::transport::Server::builder()
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(proto::catalog_service_server::CatalogServiceServer::new(
            CatalogApi::new(store.clone()),
        ))
        .add_service(proto::mapping_service_server::MappingServiceServer::new(
            MappingApi::new(store),
        ))
        .add_service(proto::replay_service_server::ReplayServiceServer::new(
            ReplayApi::new(nats.jetstream.clone()),
        ))
        .serve_with_incoming_shutdown(TcpIncoming::from(listener), async move {
            shutdown.cancelled().await;
        })
        .await?;
    Ok(())
}
