//! The delivery service as its own process, for tests that kill it with SIGKILL.
//! Configured like the real binary: `SWITCHYARD__*` variables and `--provider`.

use std::time::Duration;

use switchyard_core::{config::Settings, shutdown::Shutdown};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let provider = std::env::args()
        .skip_while(|arg| arg != "--provider")
        .nth(1)
        .ok_or_else(|| anyhow::anyhow!("--provider NAME is required"))?;
    let settings = Settings::load(None)?;
    switchyard_core::telemetry::init_for_tests();
    let shutdown = Shutdown::new();
    shutdown.listen_for_signals();
    shutdown.spawn(
        "delivery",
        switchyard_delivery::run(settings, provider, shutdown.clone()),
    );
    shutdown.wait(Duration::from_secs(30)).await?;
    Ok(())
}
