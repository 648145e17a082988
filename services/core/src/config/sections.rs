//! The sections of the settings, each with its defaults: listeners and their limits,
//! NATS and the topology, telemetry, secrets, the outbound guard, and each service's
//! own section. Validation of the whole is in the parent module.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use serde::Deserialize;

use crate::Error;

/// The admin listener of a service: `/metrics` and `/healthz`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminSettings {
    /// Address of the admin HTTP listener.
    pub listen: SocketAddr,
    /// Timeouts and limits of the admin listener.
    pub http: HttpLimits,
}

impl Default for AdminSettings {
    fn default() -> Self {
        Self {
            listen: (LOOPBACK, 9090).into(),
            http: HttpLimits {
                max_connections: 64,
                ..HttpLimits::default()
            },
        }
    }
}

/// The threads a service process runs its work on.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RuntimeSettings {
    /// Threads that run the service's tasks; 0 means one per CPU the process may use.
    /// One is the cheapest per event: every hand-over between threads costs a wake-up,
    /// and a service scales by replicas (see tests/README.md, "Wake-ups").
    pub worker_threads: usize,
}

impl Default for RuntimeSettings {
    fn default() -> Self {
        Self { worker_threads: 1 }
    }
}

impl RuntimeSettings {
    /// The tokio runtime these settings ask for: with one thread, the thread that
    /// calls `block_on` runs every task and polls every socket itself.
    pub fn build(&self) -> std::io::Result<tokio::runtime::Runtime> {
        let mut builder = match self.worker_threads {
            0 => tokio::runtime::Builder::new_multi_thread(),
            1 => tokio::runtime::Builder::new_current_thread(),
            threads => {
                let mut builder = tokio::runtime::Builder::new_multi_thread();
                builder.worker_threads(threads);
                builder
            }
        };
        builder.enable_all().build()
    }
}

/// Listeners bind this address unless configured otherwise: nothing is reachable
/// from the network until a setting says so.
const LOOPBACK: [u8; 4] = [127, 0, 0, 1];

/// Timeouts and limits of an HTTP listener, so that slow or hostile clients cannot
/// hold its connections or memory.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpLimits {
    /// Longest wait for a request's headers, counted from the end of the previous
    /// response on a kept-alive connection: it is also the idle keep-alive timeout.
    /// The connection is closed when it passes.
    #[serde(with = "humantime_serde")]
    pub header_read_timeout: Duration,
    /// Longest wait for a request's whole body once its headers arrived; a slower body
    /// is answered 408 and nothing is stored.
    #[serde(with = "humantime_serde")]
    pub body_timeout: Duration,
    /// Largest request head (request line and every header) in bytes; a larger one
    /// is answered 431.
    pub max_header_bytes: usize,
    /// Largest single header line (name, value and separators) in bytes; a longer
    /// one is answered 431.
    pub max_header_line_bytes: usize,
    /// Most headers in one request; more are answered 431.
    pub max_headers: usize,
    /// Connections open at once. Above it new connections wait in the kernel's accept
    /// queue until one closes; the cap is lowered to fit the process's file limit.
    pub max_connections: usize,
}

impl Default for HttpLimits {
    fn default() -> Self {
        Self {
            header_read_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(30),
            max_header_bytes: 64 * 1024,
            max_header_line_bytes: 16 * 1024,
            max_headers: 100,
            max_connections: 10_000,
        }
    }
}

impl HttpLimits {
    pub(super) fn validate(&self, at: &str, fail: &mut impl FnMut(String, String)) {
        if self.header_read_timeout.is_zero() {
            fail(
                format!("{at}.header_read_timeout"),
                "must be longer than 0s".into(),
            );
        }
        if self.body_timeout.is_zero() {
            fail(
                format!("{at}.body_timeout"),
                "must be longer than 0s".into(),
            );
        }
        if self.max_header_bytes < 1024 {
            fail(
                format!("{at}.max_header_bytes"),
                "must be at least 1024".into(),
            );
        }
        if self.max_header_line_bytes == 0 || self.max_header_line_bytes > self.max_header_bytes {
            fail(
                format!("{at}.max_header_line_bytes"),
                format!(
                    "must be between 1 and max_header_bytes ({})",
                    self.max_header_bytes
                ),
            );
        }
        if self.max_headers == 0 {
            fail(format!("{at}.max_headers"), "must be positive".into());
        }
        if self.max_connections == 0 {
            fail(format!("{at}.max_connections"), "must be positive".into());
        }
    }
}

/// Which addresses outbound requests for the catalog may reach. By default loopback,
/// private (RFC 1918, IPv6 ULA), link-local, CGNAT, multicast, broadcast, reserved and
/// unspecified addresses are refused; the check is made on every address a name
/// resolves to, just before connecting.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OutboundSettings {
    /// CIDR ranges (or single addresses) that may be called although refused by
    /// default, e.g. `10.20.0.0/16` for an internal provider.
    pub allow: Vec<String>,
    /// CIDR ranges that are refused although public; wins over `allow`.
    pub deny: Vec<String>,
}

/// Where secrets referenced by name are read from: `<dir>/<name>`, then the
/// environment variable `<name>`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SecretsSettings {
    /// Directory of mounted secret files.
    pub dir: PathBuf,
}

impl Default for SecretsSettings {
    fn default() -> Self {
        Self {
            dir: PathBuf::from("/run/secrets/switchyard"),
        }
    }
}

/// How to reach NATS.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NatsSettings {
    /// Server URL(s), comma separated, e.g. `nats://127.0.0.1:4222`.
    pub url: String,
    /// Optional NATS credentials file (JWT + NKey seed).
    pub credentials_file: Option<PathBuf>,
    /// Name this connection reports to the server (defaults to the service name).
    pub connection_name: Option<String>,
    /// How long to wait for the first connection before failing start-up.
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// Timeout of JetStream API requests and publish acknowledgements.
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
}

impl NatsSettings {
    /// The servers in `url`: one URL, or several separated by commas (seeds of a
    /// cluster; the client learns the other members from the server).
    pub fn servers(&self) -> Result<Vec<async_nats::ServerAddr>, Error> {
        let servers = self
            .url
            .split(',')
            .map(str::trim)
            .filter(|url| !url.is_empty())
            .enumerate()
            .map(|(i, url)| {
                // The error names the position, not the URL, which may hold a password.
                url.parse()
                    .map_err(|err| Error::Config(format!("nats.url: server {}: {err}", i + 1)))
            })
            .collect::<Result<Vec<async_nats::ServerAddr>, Error>>()?;
        if servers.is_empty() {
            return Err(Error::Config("nats.url: must not be empty".into()));
        }
        Ok(servers)
    }

    /// `scheme://host:port` of every server, for logs and errors (never user or
    /// password).
    pub fn display_servers(&self) -> String {
        self.servers().map_or_else(
            |_| "an invalid nats.url".to_owned(),
            |servers| {
                servers
                    .iter()
                    .map(|server| {
                        format!("{}://{}:{}", server.scheme(), server.host(), server.port())
                    })
                    .collect::<Vec<_>>()
                    .join(",")
            },
        )
    }
}

/// Limits of the streams and buckets that `ensure_topology` creates or reconciles.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TopologySettings {
    /// Replicas of every stream and bucket (1 on a laptop, 3 in a cluster).
    pub replicas: usize,
    /// How long INGEST keeps raw events for replay.
    #[serde(with = "humantime_serde")]
    pub ingest_max_age: Duration,
    /// Window in which a repeated `Nats-Msg-Id` is dropped as a duplicate.
    #[serde(with = "humantime_serde")]
    pub duplicate_window: Duration,
    /// Size cap of DELIVER; when full, publishing fails and back-pressure reaches INGEST.
    pub deliver_max_bytes: i64,
    /// How long DLQ keeps dead letters; `0s` keeps them until purged.
    #[serde(with = "humantime_serde")]
    pub dlq_max_age: Duration,
    /// How long OUTCOMES keeps the attempt log.
    #[serde(with = "humantime_serde")]
    pub outcomes_max_age: Duration,
    /// How long a delivered idempotency key is remembered.
    #[serde(with = "humantime_serde")]
    pub idempotency_horizon: Duration,
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// One JSON object per line, for production.
    Json,
    /// Human-readable lines, for a terminal.
    Pretty,
}

/// Logging and tracing.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TelemetrySettings {
    /// `json` or `pretty`.
    pub log_format: LogFormat,
    /// Default log filter when `RUST_LOG` is not set, e.g. `info,switchyard=debug`.
    pub log_level: String,
}

/// The HTTP ingest service.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IngestSettings {
    /// Address of the public HTTP listener (loopback unless set, e.g. `0.0.0.0:8080`).
    pub listen: SocketAddr,
    /// Timeouts and limits of that listener.
    pub http: HttpLimits,
    /// Largest accepted request body in bytes; larger bodies get 413.
    pub max_body_bytes: usize,
    /// Most events in one `POST /v1/events/{source}/batch` (within `max_body_bytes`).
    pub max_batch_events: usize,
    /// Requests served at once, counted once their body has arrived; more wait on
    /// their connections until one is answered.
    pub max_in_flight: usize,
    /// Longest wait for JetStream to store an event before answering 503.
    #[serde(with = "humantime_serde")]
    pub publish_timeout: Duration,
    /// How long a poller's lease lasts without renewal (one active poller per source).
    #[serde(with = "humantime_serde")]
    pub poll_lease_ttl: Duration,
}

/// The transform service.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TransformSettings {
    /// Ingest messages being processed at once (their outputs awaiting publish acks).
    pub max_in_flight: usize,
    /// How long the server waits for an ack before redelivering an ingest message.
    #[serde(with = "humantime_serde")]
    pub ack_wait: Duration,
}

/// The delivery service.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DeliverySettings {
    /// The provider this process delivers to (`--provider` on the command line).
    pub provider: Option<String>,
    /// How long the active replica's lease lasts without renewal; a standby takes
    /// over once it has gone unrenewed this long.
    #[serde(with = "humantime_serde")]
    pub lease_ttl: Duration,
    /// This replica's name in the lease (default: host name and process id).
    pub instance: Option<String>,
}

impl Default for DeliverySettings {
    fn default() -> Self {
        Self {
            provider: None,
            lease_ttl: Duration::from_secs(10),
            instance: None,
        }
    }
}

/// The gRPC control service.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ControlSettings {
    /// Address of the gRPC listener (loopback unless set).
    pub listen: SocketAddr,
    /// API keys accepted by the control API, stored as hashes.
    pub api_keys: Vec<ApiKeySettings>,
    /// Serve without API keys, every caller with the admin scope. Only for a laptop:
    /// the control API refuses to start with no keys unless this is set.
    pub allow_unauthenticated: bool,
    /// TLS, and with `client_ca` mutual TLS; plain HTTP/2 when absent.
    pub tls: Option<TlsSettings>,
    /// The operator console in the browser.
    pub console: ConsoleSettings,
}

/// The operator console: pages served by control on their own HTTP listener.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ConsoleSettings {
    /// Address of the console's HTTP listener; no console unless set (`switchyard
    /// dev` serves it on 127.0.0.1:8090).
    pub listen: Option<SocketAddr>,
    /// Jaeger's UI, e.g. `http://127.0.0.1:16686`: an event's page links to its trace
    /// there.
    pub jaeger_url: Option<String>,
    /// How long a signed-in session lasts without a request; it ends then.
    #[serde(with = "humantime_serde")]
    pub session_idle: Duration,
    /// Timeouts and limits of the console's listener.
    pub http: HttpLimits,
}

impl Default for ConsoleSettings {
    fn default() -> Self {
        Self {
            listen: None,
            jaeger_url: None,
            session_idle: Duration::from_secs(8 * 3600),
            http: HttpLimits {
                max_connections: 256,
                ..HttpLimits::default()
            },
        }
    }
}

/// One API key of the control API.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiKeySettings {
    /// Who holds the key; named in logs and PERMISSION_DENIED messages.
    pub name: String,
    /// `sha256:<hex>` of the key (`syctl keys create` prints both).
    pub hash: String,
    /// What the key may do.
    pub scope: Scope,
}

/// What a control API key may do. Each scope includes the ones before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    /// Read the catalog, dead letters, provider status, events and stats; dry runs.
    Read,
    /// Also replay, pause, resume, reset breakers, replay and purge dead letters.
    Operate,
    /// Also change the catalog.
    Admin,
}

impl std::fmt::Display for Scope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Read => "read",
            Self::Operate => "operate",
            Self::Admin => "admin",
        })
    }
}

/// TLS for a listener.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsSettings {
    /// PEM certificate chain of the server.
    pub cert: PathBuf,
    /// PEM private key of the server.
    pub key: PathBuf,
    /// PEM CA certificates that sign client certificates; when set, every client must
    /// present one (mutual TLS).
    pub client_ca: Option<PathBuf>,
}

/// `switchyard dev`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DevSettings {
    /// Catalog applied at start-up.
    pub catalog: Option<PathBuf>,
    /// Where the local nats-server keeps its store when no NATS URL is given.
    pub store_dir: PathBuf,
    /// Address of the built-in echo provider that logs every delivery.
    pub echo_listen: SocketAddr,
}

impl Default for NatsSettings {
    fn default() -> Self {
        Self {
            url: "nats://127.0.0.1:4222".into(),
            credentials_file: None,
            connection_name: None,
            connect_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(5),
        }
    }
}

impl Default for TopologySettings {
    fn default() -> Self {
        Self {
            replicas: 1,
            ingest_max_age: Duration::from_secs(7 * 24 * 3600),
            duplicate_window: Duration::from_secs(120),
            deliver_max_bytes: 1 << 30,
            dlq_max_age: Duration::ZERO,
            outcomes_max_age: Duration::from_secs(7 * 24 * 3600),
            idempotency_horizon: Duration::from_secs(7 * 24 * 3600),
        }
    }
}

impl Default for TelemetrySettings {
    fn default() -> Self {
        Self {
            log_format: LogFormat::Json,
            log_level: "info,async_nats=warn".into(),
        }
    }
}

impl Default for IngestSettings {
    fn default() -> Self {
        Self {
            listen: (LOOPBACK, 8080).into(),
            http: HttpLimits::default(),
            max_body_bytes: 1 << 20,
            max_batch_events: 1_000,
            max_in_flight: 256,
            publish_timeout: Duration::from_secs(5),
            poll_lease_ttl: Duration::from_secs(10),
        }
    }
}

impl Default for TransformSettings {
    fn default() -> Self {
        Self {
            max_in_flight: 1024,
            ack_wait: Duration::from_secs(30),
        }
    }
}

impl Default for ControlSettings {
    fn default() -> Self {
        Self {
            listen: (LOOPBACK, 50051).into(),
            api_keys: Vec::new(),
            allow_unauthenticated: false,
            tls: None,
            console: ConsoleSettings::default(),
        }
    }
}

impl Default for DevSettings {
    fn default() -> Self {
        Self {
            catalog: None,
            store_dir: PathBuf::from(".switchyard"),
            echo_listen: (LOOPBACK, 9999).into(),
        }
    }
}
