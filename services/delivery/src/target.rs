//! The provider as this process calls it: its catalog entry with the client, the
//! credentials and the static headers resolved, rebuilt when the catalog changes.

use std::{sync::Arc, time::Duration};

use switchyard_core::{
    auth::Authenticator,
    catalog::{Provider, Snapshot},
    mapping::Program,
    outbound::{ClientOptions, Guard},
    secrets::SecretSource,
    shutdown::Shutdown,
};
use tokio::sync::watch;

use crate::{Error, sender::Sender};

/// A provider's configuration with everything resolved for sending.
pub(crate) struct Target {
    pub(crate) provider: Provider,
    pub(crate) sender: Sender,
    pub(crate) auth: Authenticator,
    /// `batch_program`, compiled.
    pub(crate) batch_program: Option<Program>,
    /// `batch_results`, compiled.
    pub(crate) batch_results: Option<Program>,
}

/// What a provider's [`Target`] is built from: the secrets it names and the guard
/// that decides where its requests may go.
pub(crate) struct Targets {
    pub(crate) secrets: SecretSource,
    pub(crate) guard: Guard,
}

impl Targets {
    /// The provider ready to call; fails when a secret is missing or unusable, or
    /// when its URL names an address the guard refuses.
    pub(crate) fn build(&self, provider: &Provider) -> Result<Target, Error> {
        let owner = format!("provider {}", provider.name);
        self.guard
            .check_provider(provider)
            .map_err(|err| Error::Provider {
                provider: provider.name.clone(),
                reason: err.to_string(),
            })?;
        let client = self.guard.client(ClientOptions {
            owner: &owner,
            timeout: Some(provider.timeout),
            connect_timeout: provider.timeout.min(Duration::from_secs(10)),
            redirects: 0,
            max_in_flight: provider.max_in_flight,
            tls: provider.tls.as_ref(),
            secrets: &self.secrets,
        })?;
        let compile = |field: &str, program: &Option<String>| {
            program
                .as_deref()
                .map(Program::compile)
                .transpose()
                .map_err(|err| Error::Provider {
                    provider: provider.name.clone(),
                    reason: format!("{field}: {err}"),
                })
        };
        Ok(Target {
            batch_program: compile("batch_program", &provider.batch_program)?,
            batch_results: compile("batch_results", &provider.batch_results)?,
            provider: provider.clone(),
            auth: Authenticator::new(&owner, provider.auth.as_ref(), &self.secrets, &client)?,
            sender: Sender::new(provider, &self.secrets, client)?,
        })
    }
}

/// Waits until the catalog has `provider`; `None` if the shutdown came first.
pub(crate) async fn wait_for_provider(
    catalog: &mut watch::Receiver<Arc<Snapshot>>,
    provider: &str,
    targets: &Targets,
    shutdown: &Shutdown,
) -> Result<Option<Arc<Target>>, Error> {
    loop {
        let snapshot = catalog.borrow_and_update().clone();
        if let Some(config) = snapshot.catalog.provider(provider) {
            return Ok(Some(Arc::new(targets.build(config)?)));
        }
        tracing::warn!(
            provider,
            "no such provider in the catalog yet; waiting for it to be applied"
        );
        tokio::select! {
            () = shutdown.cancelled() => return Ok(None),
            changed = catalog.changed() => if changed.is_err() { return Ok(None) },
        }
    }
}

/// The provider's new configuration, or `None` to keep the current one.
pub(crate) fn refresh(
    catalog: &mut watch::Receiver<Arc<Snapshot>>,
    provider: &str,
    targets: &Targets,
) -> Option<Arc<Target>> {
    let snapshot = catalog.borrow_and_update().clone();
    let Some(config) = snapshot.catalog.provider(provider) else {
        tracing::error!(
            provider,
            revision = snapshot.revision,
            "provider removed from the catalog; keeping its last configuration until this process is stopped"
        );
        return None;
    };
    match targets.build(config) {
        Ok(target) => {
            tracing::info!(
                provider,
                revision = snapshot.revision,
                "provider configuration updated"
            );
            Some(Arc::new(target))
        }
        Err(err) => {
            tracing::error!(provider, error = %err, "new provider configuration unusable; keeping the previous one");
            None
        }
    }
}
