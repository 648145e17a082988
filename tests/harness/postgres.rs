//! A real PostgreSQL server for the database sources: Debian's `postgresql` package,
//! `initdb` into a temporary directory, `wal_level=logical` (unless a test wants
//! otherwise), on a free loopback port.
//! As root (CI) the server runs as the `postgres` user, which PostgreSQL insists on.

use std::{
    path::{Path, PathBuf},
    process::Stdio,
    time::Duration,
};

use anyhow::Context;
use tempfile::TempDir;
use tokio::process::{Child, Command};

use crate::free_port;

/// A PostgreSQL server that stops (immediately) when dropped.
pub struct TestPostgres {
    dir: TempDir,
    port: u16,
    bin: PathBuf,
    owner: Option<(u32, u32)>,
    server: Option<Child>,
    tls: bool,
    wal_level: &'static str,
}

/// Where the server binaries are: `PG_BINDIR`, or the newest
/// `/usr/lib/postgresql/<version>/bin`.
fn bindir() -> anyhow::Result<PathBuf> {
    if let Some(dir) = std::env::var_os("PG_BINDIR") {
        return Ok(dir.into());
    }
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .context("PostgreSQL is not installed (apt-get install postgresql, or set PG_BINDIR)")?
        .filter_map(|entry| {
            let entry = entry.ok()?;
            let version = entry.file_name().to_str()?.parse().ok()?;
            let bin = entry.path().join("bin");
            bin.join("initdb").exists().then_some((version, bin))
        })
        .collect();
    found.sort();
    found
        .pop()
        .map(|(_, bin)| bin)
        .context("no /usr/lib/postgresql/<version>/bin/initdb")
}

/// The `postgres` user's ids when running as root.
fn owner() -> anyhow::Result<Option<(u32, u32)>> {
    let id = |flag: &str| -> anyhow::Result<u32> {
        let out = std::process::Command::new("id")
            .args([flag, "postgres"])
            .output()?;
        anyhow::ensure!(out.status.success(), "there is no postgres user");
        Ok(String::from_utf8(out.stdout)?.trim().parse()?)
    };
    let me = std::process::Command::new("id").arg("-u").output()?;
    if String::from_utf8(me.stdout)?.trim() != "0" {
        return Ok(None);
    }
    Ok(Some((id("-u")?, id("-g")?)))
}

impl TestPostgres {
    /// Makes a cluster and starts it.
    pub async fn start() -> anyhow::Result<Self> {
        Self::make(None, "logical").await
    }

    /// Like [`TestPostgres::start`] with `wal_level=replica`, which logical
    /// replication refuses.
    pub async fn start_without_logical_wal() -> anyhow::Result<Self> {
        Self::make(None, "replica").await
    }

    /// Like [`TestPostgres::start`], with TLS on (the server certificate of `pki`) and
    /// a role `tls_user` that may connect only over TLS; the superuser still connects
    /// without.
    pub async fn start_tls(pki: &crate::pki::Pki) -> anyhow::Result<Self> {
        Self::make(Some(pki), "logical").await
    }

    async fn make(pki: Option<&crate::pki::Pki>, wal_level: &'static str) -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        let owner = owner()?;
        if let Some((uid, gid)) = owner {
            std::os::unix::fs::chown(dir.path(), Some(uid), Some(gid))?;
        }
        let mut postgres = Self {
            dir,
            port: free_port(),
            bin: bindir()?,
            owner,
            server: None,
            tls: pki.is_some(),
            wal_level,
        };
        let status = postgres
            .command("initdb")
            .arg("-D")
            .arg(postgres.data())
            .args(["-U", "postgres", "-A", "trust", "-E", "UTF8", "--no-sync"])
            .stdout(Stdio::null())
            .status()
            .await
            .context("initdb")?;
        anyhow::ensure!(status.success(), "initdb failed: {status}");
        if let Some(pki) = pki {
            let data = postgres.data();
            std::fs::write(data.join("server.crt"), &pki.server.cert_pem)?;
            std::fs::write(data.join("server.key"), &pki.server.key_pem)?;
            std::fs::write(
                data.join("pg_hba.conf"),
                "local all all trust\n\
                 hostnossl all tls_user 127.0.0.1/32 reject\n\
                 hostssl all tls_user 127.0.0.1/32 trust\n\
                 host all all 127.0.0.1/32 trust\n",
            )?;
            for file in ["server.crt", "server.key", "pg_hba.conf"] {
                let path = data.join(file);
                std::fs::set_permissions(
                    &path,
                    std::os::unix::fs::PermissionsExt::from_mode(0o600),
                )?;
                if let Some((uid, gid)) = owner {
                    std::os::unix::fs::chown(&path, Some(uid), Some(gid))?;
                }
            }
        }
        postgres.resume().await?;
        if pki.is_some() {
            postgres
                .client()
                .await?
                .batch_execute("CREATE ROLE tls_user LOGIN")
                .await?;
        }
        Ok(postgres)
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn command(&self, program: &str) -> Command {
        let mut command = Command::new(self.bin.join(program));
        if let Some((uid, gid)) = self.owner {
            command.uid(uid).gid(gid);
        }
        command.env("LC_ALL", "C").env("TZ", "UTC");
        command
    }

    /// The libpq connection string of the `postgres` superuser.
    pub fn dsn(&self) -> String {
        format!(
            "host=127.0.0.1 port={} user=postgres dbname=postgres",
            self.port
        )
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// A connection of the superuser (its connection task runs in the background).
    pub async fn client(&self) -> anyhow::Result<tokio_postgres::Client> {
        let (client, connection) = tokio_postgres::connect(&self.dsn(), tokio_postgres::NoTls)
            .await
            .context("connecting to the test PostgreSQL")?;
        tokio::spawn(connection);
        Ok(client)
    }

    /// Starts the server (after [`TestPostgres::stop`]) on the same port and data, and
    /// waits until it takes connections.
    pub async fn resume(&mut self) -> anyhow::Result<()> {
        let socket_dir: &Path = self.dir.path();
        let server = self
            .command("postgres")
            .arg("-D")
            .arg(self.data())
            .args(["-p", &self.port.to_string()])
            .args(["-c", "listen_addresses=127.0.0.1"])
            .arg("-c")
            .arg(format!("unix_socket_directories={}", socket_dir.display()))
            .arg("-c")
            .arg(format!("wal_level={}", self.wal_level))
            .args(["-c", "max_wal_senders=10", "-c", "max_replication_slots=10"])
            .args(["-c", "fsync=off", "-c", "log_min_messages=warning"])
            .args(["-c", if self.tls { "ssl=on" } else { "ssl=off" }])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .context("starting postgres")?;
        self.server = Some(server);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            if self.client().await.is_ok() {
                return Ok(());
            }
            anyhow::ensure!(
                tokio::time::Instant::now() < deadline,
                "PostgreSQL did not start within 30s"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Stops the server at once (immediate shutdown: clients are cut off mid-query, as
    /// by a crash; committed data survives).
    pub async fn stop(&mut self) -> anyhow::Result<()> {
        let status = self
            .command("pg_ctl")
            .arg("-D")
            .arg(self.data())
            .args(["stop", "-m", "immediate", "-w"])
            .stdout(Stdio::null())
            .status()
            .await?;
        anyhow::ensure!(status.success(), "pg_ctl stop failed: {status}");
        if let Some(mut server) = self.server.take() {
            server.wait().await?;
        }
        Ok(())
    }
}

impl Drop for TestPostgres {
    fn drop(&mut self) {
        if self.server.is_some() {
            use std::os::unix::process::CommandExt;
            let mut command = std::process::Command::new(self.bin.join("pg_ctl"));
            if let Some((uid, gid)) = self.owner {
                command.uid(uid).gid(gid);
            }
            let _ = command
                .arg("-D")
                .arg(self.data())
                .args(["stop", "-m", "immediate"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
    }
}
