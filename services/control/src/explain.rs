//! What the explanations of a provider's failures need beyond the failure itself:
//! the names of the secrets its requests carry (from the catalog) and whether its
//! breaker is open (the record delivery keeps in KV). Read once per provider per
//! answer, then [`verdict::explain`] does the rest.

use std::collections::HashMap;

use async_nats::jetstream::{self, kv};
use switchyard_core::{
    catalog::CatalogStore,
    operator::{BreakerRecord, BreakerState},
    topology,
    verdict::{self, Explanation, Facts},
};
use tonic::Status;

use crate::error::ApiError;

/// Reads the facts about providers.
#[derive(Clone)]
pub struct Explainer {
    store: CatalogStore,
    breakers: kv::Store,
}

/// What one provider adds to its failures' facts.
#[derive(Debug, Clone, Default)]
pub struct ProviderFacts {
    /// Names of the secrets its requests authenticate with.
    pub secrets: Vec<String>,
    /// Its breaker is open.
    pub breaker_open: bool,
}

impl Explainer {
    /// Reads the catalog in `store` and the breakers in `jetstream`.
    pub async fn new(
        store: CatalogStore,
        jetstream: &jetstream::Context,
    ) -> Result<Self, switchyard_core::Error> {
        let breakers = jetstream
            .get_key_value(topology::BREAKERS_BUCKET)
            .await
            .map_err(switchyard_core::Error::nats)?;
        Ok(Self { store, breakers })
    }

    /// A fresh cache for one answer.
    pub fn session(&self) -> Session<'_> {
        Session {
            explainer: self,
            providers: HashMap::new(),
        }
    }
}

/// Explains the failures of one answer, reading each provider's facts once.
pub struct Session<'a> {
    explainer: &'a Explainer,
    providers: HashMap<String, ProviderFacts>,
}

impl Session<'_> {
    /// The verdict and explanation of `facts`, with its provider's secrets and breaker
    /// filled in.
    pub async fn explain(&mut self, mut facts: Facts<'_>) -> Result<Option<Explanation>, Status> {
        let provider = self.provider(facts.provider).await?;
        facts.secrets = &provider.secrets;
        facts.breaker_open = provider.breaker_open;
        Ok(verdict::explain(&facts))
    }

    async fn provider(&mut self, name: &str) -> Result<&ProviderFacts, Status> {
        if !self.providers.contains_key(name) {
            let facts = if name.is_empty() {
                ProviderFacts::default()
            } else {
                self.read(name).await?
            };
            self.providers.insert(name.to_owned(), facts);
        }
        Ok(&self.providers[name])
    }

    async fn read(&self, name: &str) -> Result<ProviderFacts, Status> {
        let snapshot = self.explainer.store.load().await.map_err(ApiError::from)?;
        let secrets = snapshot
            .catalog
            .provider(name)
            .map(|provider| provider.credential_secrets())
            .unwrap_or_default();
        let record = self
            .explainer
            .breakers
            .get(name)
            .await
            .map_err(|err| ApiError::nats_while(format!("the breaker of {name}"), err))?;
        let breaker_open = record
            .and_then(|bytes| serde_json::from_slice::<BreakerRecord>(&bytes).ok())
            .is_some_and(|record| record.state == BreakerState::Open);
        Ok(ProviderFacts {
            secrets,
            breaker_open,
        })
    }
}
