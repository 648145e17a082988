//! Connections to a source's own PostgreSQL database (outbox and CDC sources): the DSN
//! read from its secret, TLS (rustls: the public roots plus the catalog's CA and
//! client certificate), every host checked by the outbound guard, and errors sorted
//! into outages (try again soon) and configuration faults (say the fix).

use std::{str::FromStr, sync::Arc, time::Duration};

use futures::StreamExt;
use switchyard_core::{
    catalog::{ClientTls, SecretName},
    outbound::{Guard, Refused},
    secrets::{ExposeSecret, SecretSource},
};
use tokio::sync::Notify;
use tokio_postgres::{AsyncMessage, Client, config::Host, error::SqlState};

/// How long a connection attempt may take when the DSN sets no `connect_timeout`.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// A source's database: where it is and how to reach it.
pub struct Database {
    /// `outbox` or `cdc`: the field of the source's settings, for messages.
    field: &'static str,
    /// The secret holding the DSN, for messages.
    secret: String,
    pg: tokio_postgres::Config,
    tls: Arc<rustls::ClientConfig>,
    guard: Guard,
}

/// Why reading stopped: PostgreSQL or NATS is away (reconnect soon), or the source is
/// configured wrong (say how to fix it; try again later).
#[derive(Debug)]
pub(crate) enum Fault {
    Away(String),
    Config(String),
}

impl std::fmt::Display for Fault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Away(why) | Self::Config(why) => f.write_str(why),
        }
    }
}

impl Database {
    /// Reads the DSN secret and prepares TLS; errors name the source's field.
    pub(crate) fn new(
        source: &str,
        field: &'static str,
        dsn: &SecretName,
        tls: Option<&ClientTls>,
        secrets: &SecretSource,
        guard: &Guard,
    ) -> Result<Self, String> {
        let text = secrets
            .read(&dsn.secret)
            .map_err(|err| format!("{field}.dsn: {err}"))?;
        // The parse error may quote the DSN (and its password): say only where it is.
        let mut pg = tokio_postgres::Config::from_str(text.expose_secret()).map_err(|_| {
            format!(
                "{field}.dsn: the secret {} is not a PostgreSQL connection string (host=… dbname=… or postgres://user@host/db)",
                dsn.secret
            )
        })?;
        if pg.get_connect_timeout().is_none() {
            pg.connect_timeout(CONNECT_TIMEOUT);
        }
        if pg.get_application_name().is_none() {
            pg.application_name(format!("switchyard-ingest {source}"));
        }
        pg.keepalives_idle(Duration::from_secs(30));
        Ok(Self {
            field,
            secret: dsn.secret.clone(),
            pg,
            tls: Arc::new(tls_config(field, tls, secrets)?),
            guard: guard.clone(),
        })
    }

    /// The connection settings as the DSN gives them.
    pub(crate) fn config(&self) -> &tokio_postgres::Config {
        &self.pg
    }

    /// The TLS settings, for a connection made by hand (replication).
    pub(crate) fn tls(&self) -> Arc<rustls::ClientConfig> {
        self.tls.clone()
    }

    /// The connection settings with each host resolved to an address the outbound
    /// guard permits (the connection goes to that address; TLS still checks the name).
    pub(crate) async fn guarded(&self) -> Result<tokio_postgres::Config, Fault> {
        let mut pg = self.pg.clone();
        if !pg.get_hostaddrs().is_empty() {
            for address in pg.get_hostaddrs() {
                self.guard.check(*address).map_err(refused)?;
            }
            return Ok(pg);
        }
        let ports = self.pg.get_ports();
        for (i, host) in self.pg.get_hosts().iter().enumerate() {
            let address = match host {
                Host::Tcp(name) => {
                    let port = ports.get(i).or(ports.first()).copied().unwrap_or(5432);
                    let found: Vec<std::net::SocketAddr> =
                        tokio::net::lookup_host((name.as_str(), port))
                            .await
                            .map_err(|err| Fault::Away(format!("resolving {name}: {err}")))?
                            .collect();
                    let mut refusal = None;
                    let permitted = found.iter().map(std::net::SocketAddr::ip).find(|ip| {
                        self.guard
                            .check(*ip)
                            .map_err(|err| refusal.get_or_insert(err).to_string())
                            .is_ok()
                    });
                    match (permitted, refusal) {
                        (Some(ip), _) => ip,
                        (None, Some(refusal)) => return Err(refused(refusal)),
                        (None, None) => {
                            return Err(Fault::Away(format!("{name} has no address")));
                        }
                    }
                }
                // A socket on this machine: allowed where loopback is.
                #[cfg(unix)]
                Host::Unix(_) => {
                    let loopback = std::net::IpAddr::from([127, 0, 0, 1]);
                    self.guard.check(loopback).map_err(refused)?;
                    continue;
                }
            };
            pg.hostaddr(address);
        }
        Ok(pg)
    }

    /// Connects; the connection's notifications (and its end) wake the returned
    /// [`Notify`].
    pub(crate) async fn connect(
        &self,
        hint: &(dyn Fn(&SqlState) -> Option<String> + Sync),
    ) -> Result<(Client, Arc<Notify>), Fault> {
        let tls = tokio_postgres_rustls::MakeRustlsConnect::new((*self.tls).clone());
        let (client, mut connection) = self
            .guarded()
            .await?
            .connect(tls)
            .await
            .map_err(|err| self.fault(&err, "connecting to PostgreSQL", hint))?;
        let wake = Arc::new(Notify::new());
        let woken = wake.clone();
        tokio::spawn(async move {
            let mut messages = futures::stream::poll_fn(move |cx| connection.poll_message(cx));
            while let Some(message) = messages.next().await {
                match message {
                    Ok(AsyncMessage::Notification(_)) => woken.notify_one(),
                    Ok(_) => {}
                    Err(err) => {
                        tracing::debug!(error = %err, "PostgreSQL connection ended");
                        break;
                    }
                }
            }
            // Wake the reader so it finds the connection closed at once.
            woken.notify_one();
        });
        Ok((client, wake))
    }

    /// Classifies a PostgreSQL error: refused credentials, an unknown database, a
    /// certificate that does not verify, and what `hint` has a fix for (a missing
    /// table or grant) are configuration; everything else is an outage.
    pub(crate) fn fault(
        &self,
        err: &tokio_postgres::Error,
        doing: &str,
        hint: &(dyn Fn(&SqlState) -> Option<String> + Sync),
    ) -> Fault {
        let Some(db) = err.as_db_error() else {
            let mut cause = std::error::Error::source(err);
            while let Some(inner) = cause {
                if let Some(tls) = tls_error(inner) {
                    return self.tls_fault(doing, tls);
                }
                cause = inner.source();
            }
            let why = match std::error::Error::source(err) {
                _ if err.is_closed() => {
                    format!("{doing}: the connection to PostgreSQL was closed")
                }
                Some(cause) => format!("{doing}: PostgreSQL: {err}: {cause}"),
                None => format!("{doing}: PostgreSQL: {err}"),
            };
            return Fault::Away(why);
        };
        match self.fix(db.code(), hint) {
            Some(fix) => Fault::Config(format!("{doing}: {}; {fix}", db.message())),
            None => Fault::Away(format!("{doing}: {}", db.message())),
        }
    }

    /// The fix for an error PostgreSQL answered with `code`, if it is configuration.
    pub(crate) fn fix(
        &self,
        code: &SqlState,
        hint: &(dyn Fn(&SqlState) -> Option<String> + Sync),
    ) -> Option<String> {
        if *code == SqlState::INVALID_PASSWORD
            || *code == SqlState::INVALID_AUTHORIZATION_SPECIFICATION
        {
            Some(format!(
                "check the user and password in the secret {}",
                self.secret
            ))
        } else if *code == SqlState::INVALID_CATALOG_NAME {
            Some(format!(
                "check the database name in the secret {}",
                self.secret
            ))
        } else {
            hint(code)
        }
    }

    /// A TLS failure: the certificates or the DSN's host are wrong.
    pub(crate) fn tls_fault(&self, doing: &str, tls: &rustls::Error) -> Fault {
        Fault::Config(format!(
            "{doing}: TLS failed: {tls}; check {}.tls (ca, client_cert, client_key) and the DSN's host",
            self.field
        ))
    }
}

fn refused(refusal: Refused) -> Fault {
    Fault::Config(format!(
        "connecting to PostgreSQL: {refusal}; add its range to outbound.allow"
    ))
}

/// The rustls error in `err`, also inside an I/O error.
pub(crate) fn tls_error<'a>(
    err: &'a (dyn std::error::Error + 'static),
) -> Option<&'a rustls::Error> {
    if let Some(tls) = err.downcast_ref::<rustls::Error>() {
        return Some(tls);
    }
    err.downcast_ref::<std::io::Error>()?
        .get_ref()?
        .downcast_ref::<rustls::Error>()
}

/// TLS to PostgreSQL: the public roots and the catalog's extra ones, and a client
/// certificate when given. Used only when the DSN's `sslmode` asks for TLS.
fn tls_config(
    field: &str,
    tls: Option<&ClientTls>,
    secrets: &SecretSource,
) -> Result<rustls::ClientConfig, String> {
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};
    let unusable = |which: &str, name: &str, what: &str| {
        format!("{field}.tls.{which}: secret {name} is not {what}")
    };
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if let Some(ca) = tls.and_then(|tls| tls.ca.as_ref()) {
        let pem = secrets
            .read(&ca.secret)
            .map_err(|err| format!("{field}.tls.ca: {err}"))?;
        let certificates: Vec<CertificateDer> =
            CertificateDer::pem_slice_iter(pem.expose_secret().as_bytes())
                .collect::<Result<_, _>>()
                .map_err(|_| unusable("ca", &ca.secret, "a PEM certificate"))?;
        if certificates.is_empty() {
            return Err(unusable("ca", &ca.secret, "a PEM certificate"));
        }
        for certificate in certificates {
            roots
                .add(certificate)
                .map_err(|_| unusable("ca", &ca.secret, "a usable CA certificate"))?;
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|err| format!("{field}.tls: {err}"))?
        .with_root_certificates(roots);
    let client_pair = tls.and_then(|tls| tls.client_cert.as_ref().zip(tls.client_key.as_ref()));
    let Some((cert, key)) = client_pair else {
        return Ok(builder.with_no_client_auth());
    };
    let chain = secrets
        .read(&cert.secret)
        .map_err(|err| format!("{field}.tls.client_cert: {err}"))?;
    let chain: Vec<CertificateDer<'static>> =
        CertificateDer::pem_slice_iter(chain.expose_secret().as_bytes())
            .collect::<Result<_, _>>()
            .ok()
            .filter(|chain: &Vec<_>| !chain.is_empty())
            .ok_or_else(|| unusable("client_cert", &cert.secret, "a PEM certificate chain"))?;
    let private = secrets
        .read(&key.secret)
        .map_err(|err| format!("{field}.tls.client_key: {err}"))?;
    let private = PrivateKeyDer::from_pem_slice(private.expose_secret().as_bytes())
        .map_err(|_| unusable("client_key", &key.secret, "a PEM private key"))?;
    builder
        .with_client_auth_cert(chain, private)
        .map_err(|_| unusable("client_key", &key.secret, "the key of client_cert"))
}
