//! A PostgreSQL logical replication connection: the streaming replication protocol
//! on a plain or TLS socket, just enough for `pgoutput` — start-up with
//! `replication=database`, password, MD5 or SCRAM-SHA-256 authentication,
//! `START_REPLICATION … LOGICAL`, then XLogData and keep-alive frames in, and standby
//! status updates (the position the slot may advance to) out.
//!
//! Messages are built with `postgres-protocol` (tokio-postgres' own); the few backend
//! messages replication needs are read here.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use bytes::{Buf, BufMut, BytesMut};
use postgres_protocol::{
    authentication::{
        md5_hash,
        sasl::{ChannelBinding, SCRAM_SHA_256, ScramSha256},
    },
    message::frontend,
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Microseconds from the Unix epoch to PostgreSQL's (2000-01-01).
pub const PG_EPOCH_MICROS: i64 = 946_684_800_000_000;

trait Socket: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Socket for T {}

/// Why the connection failed: an error PostgreSQL sent (its SQLSTATE and message),
/// or the connection itself.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{message} (SQLSTATE {code})")]
    Server { code: String, message: String },
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("{0}")]
    Protocol(String),
}

/// How to reach the server.
pub struct Target<'a> {
    pub address: SocketAddr,
    /// The name TLS verifies the certificate against.
    pub host: &'a str,
    pub user: &'a str,
    pub password: Option<&'a [u8]>,
    pub database: &'a str,
    /// TLS configuration, when the connection is to use TLS.
    pub tls: Option<Arc<rustls::ClientConfig>>,
    /// Whether a server that does not take TLS is refused (`sslmode=require`) or
    /// talked to in the clear (`prefer`).
    pub tls_required: bool,
    pub connect_timeout: Duration,
}

/// One frame of the replication stream.
#[derive(Debug)]
pub enum Frame {
    /// WAL data: one `pgoutput` message.
    XLogData { data: bytes::Bytes },
    /// The server's heartbeat; `reply` asks for a status update now.
    KeepAlive { end: u64, reply: bool },
}

/// An open replication connection.
pub struct Connection {
    socket: Box<dyn Socket>,
    buffer: BytesMut,
}

impl Connection {
    /// Connects and authenticates as a replication connection for `database`.
    pub async fn open(target: Target<'_>) -> Result<Self, Error> {
        let tcp = tokio::time::timeout(
            target.connect_timeout,
            tokio::net::TcpStream::connect(target.address),
        )
        .await
        .map_err(|_| {
            Error::Protocol(format!(
                "no connection to {} within {:?}",
                target.address, target.connect_timeout
            ))
        })??;
        tcp.set_nodelay(true)?;
        let socket: Box<dyn Socket> = match &target.tls {
            None => Box::new(tcp),
            Some(config) => {
                let mut tcp = tcp;
                let mut request = BytesMut::new();
                frontend::ssl_request(&mut request);
                tcp.write_all(&request).await?;
                let mut answer = [0u8; 1];
                tcp.read_exact(&mut answer).await?;
                if answer[0] != b'S' {
                    if target.tls_required {
                        return Err(Error::Protocol(
                            "the server does not accept TLS, which the DSN's sslmode requires"
                                .into(),
                        ));
                    }
                    return Self::start_up(Box::new(tcp), &target).await;
                }
                let name = rustls::pki_types::ServerName::try_from(target.host.to_owned())
                    .map_err(|_| {
                        Error::Protocol(format!("{:?} is not a TLS server name", target.host))
                    })?;
                let connector = tokio_rustls::TlsConnector::from(config.clone());
                Box::new(connector.connect(name, tcp).await?)
            }
        };
        Self::start_up(socket, &target).await
    }

    /// Sends the start-up message and authenticates.
    async fn start_up(socket: Box<dyn Socket>, target: &Target<'_>) -> Result<Self, Error> {
        let mut connection = Self {
            socket,
            buffer: BytesMut::with_capacity(64 * 1024),
        };
        let mut out = BytesMut::new();
        frontend::startup_message(
            [
                ("user", target.user),
                ("database", target.database),
                ("replication", "database"),
                ("application_name", "switchyard-ingest"),
            ],
            &mut out,
        )?;
        connection.send(&out).await?;
        connection.authenticate(target).await?;
        Ok(connection)
    }

    async fn send(&mut self, bytes: &[u8]) -> Result<(), Error> {
        self.socket.write_all(bytes).await?;
        self.socket.flush().await?;
        Ok(())
    }

    /// Reads one backend message: its tag and body.
    async fn message(&mut self) -> Result<(u8, BytesMut), Error> {
        loop {
            if self.buffer.len() >= 5 {
                let length = i32::from_be_bytes(self.buffer[1..5].try_into().expect("4 bytes"));
                let length = usize::try_from(length)
                    .ok()
                    .filter(|length| *length >= 4)
                    .ok_or_else(|| Error::Protocol("a negative message length".into()))?;
                if self.buffer.len() > length {
                    let tag = self.buffer[0];
                    self.buffer.advance(5);
                    let body = self.buffer.split_to(length - 4);
                    if tag == b'E' {
                        return Err(server_error(&body));
                    }
                    return Ok((tag, body));
                }
            }
            if self.socket.read_buf(&mut self.buffer).await? == 0 {
                return Err(Error::Protocol("the server closed the connection".into()));
            }
        }
    }

    async fn authenticate(&mut self, target: &Target<'_>) -> Result<(), Error> {
        let password = || {
            target.password.ok_or_else(|| {
                Error::Protocol("the server asks for a password and the DSN has none".into())
            })
        };
        let mut scram: Option<ScramSha256> = None;
        loop {
            let (tag, mut body) = self.message().await?;
            match tag {
                b'R' => {
                    let mut out = BytesMut::new();
                    match body.get_i32() {
                        0 => {}
                        3 => {
                            frontend::password_message(password()?, &mut out)?;
                            self.send(&out).await?;
                        }
                        5 => {
                            let salt: [u8; 4] = body[..4]
                                .try_into()
                                .map_err(|_| Error::Protocol("a short MD5 salt".into()))?;
                            let hash = md5_hash(target.user.as_bytes(), password()?, salt);
                            frontend::password_message(hash.as_bytes(), &mut out)?;
                            self.send(&out).await?;
                        }
                        10 => {
                            let offers_scram = body[..]
                                .split(|b| *b == 0)
                                .any(|mechanism| mechanism == SCRAM_SHA_256.as_bytes());
                            if !offers_scram {
                                return Err(Error::Protocol("the server offers no SASL mechanism but SCRAM-SHA-256 is supported".into()));
                            }
                            let exchange =
                                ScramSha256::new(password()?, ChannelBinding::unsupported());
                            frontend::sasl_initial_response(
                                SCRAM_SHA_256,
                                exchange.message(),
                                &mut out,
                            )?;
                            self.send(&out).await?;
                            scram = Some(exchange);
                        }
                        11 => {
                            let exchange = scram.as_mut().ok_or_else(|| {
                                Error::Protocol("SASL continue without a start".into())
                            })?;
                            exchange.update(&body)?;
                            frontend::sasl_response(exchange.message(), &mut out)?;
                            self.send(&out).await?;
                        }
                        12 => {
                            let exchange = scram.as_mut().ok_or_else(|| {
                                Error::Protocol("SASL final without a start".into())
                            })?;
                            exchange.finish(&body)?;
                        }
                        other => {
                            return Err(Error::Protocol(format!(
                                "authentication method {other} is not supported"
                            )));
                        }
                    }
                }
                b'Z' => return Ok(()),
                // Parameter status, backend key data, notices.
                _ => {}
            }
        }
    }

    /// Starts streaming `slot` from `start` (the slot's own position when that is
    /// later), decoded by `pgoutput` for `publication`.
    pub async fn start(&mut self, slot: &str, publication: &str, start: u64) -> Result<(), Error> {
        let sql = format!(
            "START_REPLICATION SLOT \"{slot}\" LOGICAL {} (proto_version '1', publication_names '\"{publication}\"')",
            crate::pgoutput::lsn_text(start)
        );
        let mut out = BytesMut::new();
        frontend::query(&sql, &mut out)?;
        self.send(&out).await?;
        loop {
            let (tag, _) = self.message().await?;
            if tag == b'W' {
                return Ok(());
            }
        }
    }

    /// The next frame of the stream.
    pub async fn next(&mut self) -> Result<Frame, Error> {
        loop {
            let (tag, mut body) = self.message().await?;
            match tag {
                b'd' => match body.first() {
                    Some(b'w') => {
                        // Tag, WAL start and end, server clock.
                        body.advance(1 + 8 + 8 + 8);
                        return Ok(Frame::XLogData {
                            data: body.freeze(),
                        });
                    }
                    Some(b'k') => {
                        body.advance(1);
                        let end = body.get_u64();
                        let _clock = body.get_i64();
                        let reply = body.get_u8() == 1;
                        return Ok(Frame::KeepAlive { end, reply });
                    }
                    _ => {}
                },
                b'c' => {
                    return Err(Error::Protocol(
                        "the server ended the replication stream".into(),
                    ));
                }
                _ => {}
            }
        }
    }

    /// Tells the server everything up to `lsn` is durably handled, so the slot may
    /// advance and WAL before it be recycled.
    pub async fn confirm(&mut self, lsn: u64) -> Result<(), Error> {
        let mut update = BytesMut::with_capacity(34);
        update.put_u8(b'r');
        update.put_u64(lsn);
        update.put_u64(lsn);
        update.put_u64(lsn);
        let now = time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1000;
        update.put_i64(now as i64 - PG_EPOCH_MICROS);
        update.put_u8(0);
        let mut out = BytesMut::new();
        frontend::CopyData::new(&update[..])?.write(&mut out);
        self.send(&out).await
    }
}

/// The SQLSTATE and message of an ErrorResponse body.
fn server_error(body: &[u8]) -> Error {
    let mut code = String::new();
    let mut message = String::new();
    for field in body.split(|b| *b == 0).filter(|field| !field.is_empty()) {
        let value = String::from_utf8_lossy(&field[1..]).into_owned();
        match field[0] {
            b'C' => code = value,
            b'M' => message = value,
            _ => {}
        }
    }
    Error::Server { code, message }
}
