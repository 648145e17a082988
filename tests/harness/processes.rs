//! The services as separate processes of this workspace's build, on one nats-server,
//! for measurements and for killing: `make bench` reads their memory and CPU from
//! `/proc`, `make chaos` kills and restarts them.

use std::time::Duration;

use tokio::process::Child;

use crate::{Pipeline, TestNats, free_port, service};

/// One service process.
pub struct Process {
    /// `ingest`, `transform`, `delivery` or `control`.
    pub name: &'static str,
    /// The provider of a delivery process.
    pub provider: Option<String>,
    /// Where its admin listener (`/metrics`, `/healthz`, `/readyz`) is.
    pub admin: std::net::SocketAddr,
    child: Child,
}

impl Process {
    fn pid(&self) -> u32 {
        self.child.id().expect("the process is running")
    }

    /// Peak resident set size in bytes.
    pub fn peak_rss(&self) -> u64 {
        status_bytes(self.pid(), "VmHWM")
    }

    /// Resident set size now, in bytes.
    pub fn rss(&self) -> u64 {
        status_bytes(self.pid(), "VmRSS")
    }

    /// User plus system CPU time so far.
    pub fn cpu(&self) -> Duration {
        cpu(self.pid())
    }
}

/// A size field of `/proc/<pid>/status` (`VmRSS`, `VmHWM`), in bytes.
pub(crate) fn status_bytes(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|line| line.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|rest| {
            rest.trim()
                .trim_end_matches("kB")
                .trim()
                .parse::<u64>()
                .ok()
        })
        .map_or(0, |kib| kib * 1024)
}

/// User plus system CPU time of process `pid` so far.
pub(crate) fn cpu(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // The fields after the command name, which is in parentheses.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    // utime and stime, fields 14 and 15 of proc(5).
    let ticks: u64 = [11, 12]
        .iter()
        .filter_map(|&i| fields.get(i).and_then(|f| f.parse::<u64>().ok()))
        .sum();
    Duration::from_secs_f64(ticks as f64 / clock_ticks() as f64)
}

fn clock_ticks() -> u64 {
    static TICKS: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *TICKS.get_or_init(|| {
        std::process::Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|out| String::from_utf8(out.stdout).ok())
            .and_then(|text| text.trim().parse().ok())
            .unwrap_or(100)
    })
}

/// A nats-server and the services named at start, each one process.
pub struct Processes {
    /// The server; restart it to test recovery.
    pub nats: TestNats,
    /// Where ingest listens, e.g. `http://127.0.0.1:41234`.
    pub ingest_url: String,
    ingest_port: u16,
    control_port: u16,
    env: Vec<(String, String)>,
    services: Vec<Process>,
}

impl Processes {
    /// Starts a nats-server, saves `catalog` and starts `names` (`ingest`, `transform`,
    /// `delivery`, `control`); delivery runs for every provider of the catalog.
    pub async fn start(catalog: &str, names: &[&'static str]) -> anyhow::Result<Self> {
        Self::start_with_env(catalog, names, &[]).await
    }

    /// Like [`Processes::start`], with variables added to every process's environment
    /// (secrets the catalog names, for instance).
    pub async fn start_with_env(
        catalog: &str,
        names: &[&'static str],
        env: &[(&str, &str)],
    ) -> anyhow::Result<Self> {
        let nats = TestNats::start().await?;
        let settings = Pipeline::settings(nats.url());
        let (_, parsed) = Pipeline::prepare(&settings, catalog).await?;
        let ingest_port = free_port();
        let mut processes = Self {
            ingest_url: format!("http://127.0.0.1:{ingest_port}"),
            nats,
            ingest_port,
            control_port: free_port(),
            env: env
                .iter()
                .map(|(name, value)| ((*name).to_owned(), (*value).to_owned()))
                .collect(),
            services: Vec::new(),
        };
        for name in names {
            let providers: Vec<Option<String>> = if *name == "delivery" {
                parsed
                    .providers
                    .iter()
                    .map(|p| Some(p.name.clone()))
                    .collect()
            } else {
                vec![None]
            };
            for provider in providers {
                let admin = std::net::SocketAddr::from(([127, 0, 0, 1], free_port()));
                let child = processes.spawn(name, provider.as_deref(), admin)?;
                processes.services.push(Process {
                    name,
                    provider,
                    admin,
                    child,
                });
            }
        }
        Ok(processes)
    }

    fn spawn(
        &self,
        name: &str,
        provider: Option<&str>,
        admin: std::net::SocketAddr,
    ) -> anyhow::Result<Child> {
        let settings = Pipeline::settings(self.nats.url());
        let mut command = service(&format!("switchyard-{name}"), &settings);
        command
            .env(
                "SWITCHYARD__INGEST__LISTEN",
                format!("127.0.0.1:{}", self.ingest_port),
            )
            .env(
                "SWITCHYARD__CONTROL__LISTEN",
                format!("127.0.0.1:{}", self.control_port),
            )
            .env("SWITCHYARD__ADMIN__LISTEN", admin.to_string())
            .env("SWITCHYARD__CONTROL__ALLOW_UNAUTHENTICATED", "true")
            .envs(self.env.iter().map(|(name, value)| (name, value)))
            .stdout(std::process::Stdio::null());
        if let Some(provider) = provider {
            command.args(["--provider", provider]);
        }
        Ok(command.spawn()?)
    }

    /// Where control's gRPC API listens, e.g. `http://127.0.0.1:41235`.
    pub fn control_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.control_port)
    }

    /// The running processes.
    pub fn services(&self) -> &[Process] {
        &self.services
    }

    /// Kills every process named `name` with SIGKILL and waits until it is gone.
    pub async fn kill(&mut self, name: &str) {
        for process in self.services.iter_mut().filter(|p| p.name == name) {
            process.child.start_kill().expect("SIGKILL");
            process.child.wait().await.expect("the process ends");
        }
    }

    /// Starts every process named `name` again (after [`Processes::kill`]).
    pub fn restart(&mut self, name: &str) -> anyhow::Result<()> {
        let mut services = std::mem::take(&mut self.services);
        let mut started = Ok(());
        for process in services.iter_mut().filter(|p| p.name == name) {
            match self.spawn(name, process.provider.as_deref(), process.admin) {
                Ok(child) => process.child = child,
                Err(err) => started = Err(err),
            }
        }
        self.services = services;
        started
    }
}
