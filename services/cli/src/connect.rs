//! Where the control API is and how syctl authenticates to it: the `--server`, key
//! and TLS flags, and the connection every command's client is built on.

use std::path::PathBuf;

use tonic::{
    Status,
    metadata::{Ascii, MetadataValue},
    service::{Interceptor, interceptor::InterceptedService},
    transport::{Certificate, Channel, ClientTlsConfig, Identity},
};

use crate::{
    exit::{Exit, Failure, usage},
    flags::read,
};

/// Where the control API is and how to authenticate to it.
#[derive(clap::Args)]
pub struct Remote {
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

/// A connection to the control API that sends the API key with every call.
pub type Connection = InterceptedService<Channel, ApiKey>;

/// Adds `authorization: Bearer <key>` to every request.
#[derive(Clone)]
pub struct ApiKey(Option<MetadataValue<Ascii>>);

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

impl Remote {
    /// Connects to `--server` with the key and TLS files the command line gives.
    pub async fn connect(&self) -> Result<Connection, Failure> {
        let server = &self.server;
        let key = match &self.api_key {
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
            if let Some(ca) = &self.ca_cert {
                tls = tls.ca_certificate(Certificate::from_pem(read(ca)?));
            }
            if let (Some(cert), Some(key)) = (&self.client_cert, &self.client_key) {
                tls = tls.identity(Identity::from_pem(read(cert)?, read(key)?));
            }
            endpoint = endpoint
                .tls_config(tls)
                .map_err(|err| usage(format!("TLS settings: {err}")))?;
        } else if self.ca_cert.is_some() || self.client_cert.is_some() {
            return Err(usage(
                "--ca-cert and --client-cert need an https:// --server",
            ));
        }
        let channel = endpoint.connect().await.map_err(|err| {
            Failure::new(
                Exit::Unreachable,
                format!(
                    "cannot reach the control API at {server}: {}",
                    error_chain(&err)
                ),
            )
        })?;
        Ok(InterceptedService::new(channel, ApiKey(key)))
    }
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
