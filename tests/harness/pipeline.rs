//! The whole pipeline in-process: ingest, transform, control and one delivery per
//! provider, against a test nats-server.

use std::{collections::HashMap, sync::Mutex, time::Duration};

use async_nats::jetstream::{self, message::StreamMessage};
use switchyard_core::{
    catalog::{Catalog, CatalogStore},
    config::Settings,
    nats,
    outcome::{Attempt, OutcomeRecord},
    shutdown::Shutdown,
    topology,
};

use crate::{LOCAL_PROVIDERS, TestNats};

/// A running pipeline and handles to drive and observe it.
pub struct Pipeline {
    /// The nats-server.
    pub nats: TestNats,
    /// A plain NATS client, as any third-party publisher would use.
    pub client: async_nats::Client,
    /// JetStream on that client.
    pub jetstream: jetstream::Context,
    /// Base URL of ingest, e.g. `http://127.0.0.1:41234`.
    pub ingest_url: String,
    /// URL of the control API.
    pub control_url: String,
    /// Base URL of the operator console, e.g. `http://127.0.0.1:41236`.
    pub console_url: String,
    /// The settings every service was started with.
    pub settings: Settings,
    /// HTTP client for ingest.
    pub http: reqwest::Client,
    shutdown: Shutdown,
    deliveries: Mutex<HashMap<String, Shutdown>>,
}

impl Pipeline {
    /// Settings for a test pipeline on `nats_url`.
    pub fn settings(nats_url: &str) -> Settings {
        let mut settings = Settings::default();
        settings.nats.url = nats_url.to_owned();
        settings.secrets.dir = std::env::temp_dir().join("switchyard-tests-no-secrets");
        settings.control.allow_unauthenticated = true;
        // The fake providers run on this machine.
        settings.outbound.allow = vec![LOCAL_PROVIDERS.to_owned()];
        settings
    }

    /// Starts a nats-server, applies `catalog`, and starts every service.
    pub async fn start(catalog: &str) -> anyhow::Result<Self> {
        let nats = TestNats::start().await?;
        let settings = Self::settings(nats.url());
        Self::start_with(nats, settings, catalog).await
    }

    /// Like [`Pipeline::start`] with a given server and settings.
    pub async fn start_with(
        nats: TestNats,
        settings: Settings,
        catalog: &str,
    ) -> anyhow::Result<Self> {
        Self::launch(nats, settings, catalog, true).await
    }

    /// Everything but delivery, which the test runs itself (in-process with
    /// [`Pipeline::start_delivery`] or as processes it can kill).
    pub async fn start_without_delivery(catalog: &str) -> anyhow::Result<Self> {
        let nats = TestNats::start().await?;
        let settings = Self::settings(nats.url());
        Self::launch(nats, settings, catalog, false).await
    }

    /// Creates the streams and buckets and saves `catalog`, as `switchyard dev` does
    /// before any service starts; for tests that run the services as processes.
    pub async fn prepare(
        settings: &Settings,
        catalog: &str,
    ) -> anyhow::Result<(nats::Nats, Catalog)> {
        let connection = nats::connect(&settings.nats, "test").await?;
        topology::ensure_topology(&connection.jetstream, &settings.topology).await?;
        let catalog = Catalog::from_yaml(catalog)?;
        CatalogStore::open(&connection.jetstream)
            .await?
            .save(&catalog, 0)
            .await?;
        Ok((connection, catalog))
    }

    async fn launch(
        nats: TestNats,
        settings: Settings,
        catalog: &str,
        deliveries: bool,
    ) -> anyhow::Result<Self> {
        let (connection, catalog) = Self::prepare(&settings, catalog).await?;

        let shutdown = Shutdown::new();
        let local = std::net::SocketAddr::from(([127, 0, 0, 1], 0));
        let ingest = switchyard_core::http::bind(local).await?;
        let control = switchyard_core::http::bind(local).await?;
        let console = switchyard_core::http::bind(local).await?;
        let ingest_url = format!("http://{}", ingest.local_addr()?);
        let control_url = format!("http://{}", control.local_addr()?);
        let console_url = format!("http://{}", console.local_addr()?);
        shutdown.spawn(
            "ingest",
            switchyard_ingest::run(settings.clone(), ingest, shutdown.clone()),
        );
        shutdown.spawn(
            "transform",
            switchyard_transform::run(settings.clone(), shutdown.clone()),
        );
        shutdown.spawn(
            "control",
            switchyard_control::run(
                settings.clone(),
                switchyard_control::Listeners {
                    grpc: control,
                    console: Some(console),
                },
                shutdown.clone(),
            ),
        );

        let pipeline = Self {
            client: connection.client,
            jetstream: connection.jetstream,
            nats,
            ingest_url,
            control_url,
            console_url,
            settings,
            http: reqwest::Client::new(),
            shutdown,
            deliveries: Mutex::default(),
        };
        if deliveries {
            for provider in &catalog.providers {
                pipeline.start_delivery(&provider.name);
            }
        }
        Ok(pipeline)
    }

    /// Starts one more transform replica (the pipeline starts with one).
    pub fn start_transform(&self) {
        let run = switchyard_transform::run(self.settings.clone(), self.shutdown.clone());
        self.shutdown.spawn("transform", run);
    }

    /// Starts a delivery process for `provider`.
    pub fn start_delivery(&self, provider: &str) {
        let scope = self.shutdown.child();
        let run =
            switchyard_delivery::run(self.settings.clone(), provider.to_owned(), scope.clone());
        scope.spawn("delivery", run);
        self.deliveries
            .lock()
            .expect("deliveries")
            .insert(provider.to_owned(), scope);
    }

    /// Stops the delivery process for `provider` the way SIGTERM does: it stops
    /// pulling, finishes what is in flight, and exits.
    pub async fn stop_delivery(&self, provider: &str) {
        let scope = self
            .deliveries
            .lock()
            .expect("deliveries")
            .remove(provider)
            .expect("a running delivery");
        scope.trigger();
        scope
            .wait(Duration::from_secs(30))
            .await
            .expect("delivery stops cleanly");
    }

    /// Posts a JSON event to ingest.
    pub async fn post(
        &self,
        source: &str,
        event_type: &str,
        body: &serde_json::Value,
        idempotency_key: Option<&str>,
    ) -> reqwest::Response {
        let mut request = self
            .http
            .post(format!(
                "{}/v1/events/{source}?type={event_type}",
                self.ingest_url
            ))
            .json(body);
        if let Some(key) = idempotency_key {
            request = request.header("Idempotency-Key", key);
        }
        request.send().await.expect("ingest answers")
    }

    /// Number of messages stored in `stream`.
    pub async fn stream_len(&self, stream: &str) -> u64 {
        let mut stream = self
            .jetstream
            .get_stream(stream)
            .await
            .expect("stream exists");
        stream.info().await.expect("stream info").state.messages
    }

    /// Waits until ingest admits events under catalog `revision` or later (what an
    /// apply answered), so the next event is routed with it: transform compiles the
    /// revision an event was admitted under before routing it.
    pub async fn catalog_applied(&self, revision: u64) {
        crate::eventually(
            Duration::from_secs(10),
            "ingest on the new catalog",
            || async {
                let text = switchyard_core::metrics::encode();
                let running = text.lines().find_map(|line| {
                    line.strip_prefix("switchyard_catalog_revision{service=\"ingest\"} ")
                })?;
                (running.trim().parse::<u64>().ok()? >= revision).then_some(())
            },
        )
        .await;
    }

    /// Waits until the pipeline is at rest: every consumer of INGEST and DELIVER has
    /// nothing pending and nothing unacknowledged (a message NAKed for a retry counts
    /// as unacknowledged), and still so after a short settle. "Nothing more arrives"
    /// is then a fact about the pipeline, not a guess about how long it takes.
    pub async fn quiescent(&self) {
        const SETTLE: Duration = Duration::from_millis(150);
        loop {
            crate::eventually(Duration::from_secs(60), "the pipeline at rest", || async {
                self.at_rest().await.then_some(())
            })
            .await;
            tokio::time::sleep(SETTLE).await;
            if self.at_rest().await {
                return;
            }
        }
    }

    /// Whether no consumer of INGEST or DELIVER has work left.
    async fn at_rest(&self) -> bool {
        use futures::TryStreamExt;
        for stream in [topology::INGEST, topology::DELIVER] {
            let Ok(handle) = self.jetstream.get_stream(stream).await else {
                return false;
            };
            let Ok(consumers) = handle.consumers().try_collect::<Vec<_>>().await else {
                return false;
            };
            // Durable consumers only: a replay's ordered consumer may linger after it
            // stopped reading.
            if consumers.iter().any(|info| {
                info.config.durable_name.is_some()
                    && (info.num_pending > 0 || info.num_ack_pending > 0)
            }) {
                return false;
            }
        }
        true
    }

    /// Every message stored in `stream`, oldest first.
    pub async fn stream_messages(&self, stream: &str) -> Vec<StreamMessage> {
        let mut handle = self
            .jetstream
            .get_stream(stream)
            .await
            .expect("stream exists");
        let state = handle.info().await.expect("stream info").state.clone();
        let mut messages = Vec::new();
        for sequence in state.first_sequence..=state.last_sequence {
            if let Ok(message) = handle.get_raw_message(sequence).await {
                messages.push(message);
            }
        }
        messages
    }
}

impl Pipeline {
    /// A gRPC channel to the control API, once it answers.
    pub async fn control_channel(&self) -> tonic::transport::Channel {
        crate::eventually(Duration::from_secs(10), "the control API", || async {
            tonic::transport::Channel::from_shared(self.control_url.clone())
                .expect("a valid URL")
                .connect()
                .await
                .ok()
        })
        .await
    }

    /// The value of `key` in KV bucket `bucket`, as JSON.
    pub async fn kv_json(&self, bucket: &str, key: &str) -> Option<serde_json::Value> {
        let store = self
            .jetstream
            .get_key_value(bucket)
            .await
            .expect("bucket exists");
        let value = store.get(key).await.expect("KV answers")?;
        serde_json::from_slice(&value).ok()
    }

    /// Every record on `outcome.<provider>` so far, oldest first.
    pub async fn outcomes(&self) -> Vec<OutcomeRecord> {
        self.stream_messages("OUTCOMES")
            .await
            .iter()
            .map(|m| serde_json::from_slice(&m.payload).expect("outcome records parse"))
            .collect()
    }

    /// Every attempt record on `outcome.<provider>` so far, oldest first, with its
    /// provider.
    pub async fn attempts(&self) -> Vec<(String, Attempt)> {
        self.outcomes()
            .await
            .into_iter()
            .filter_map(|o| Some((o.provider.clone(), o.attempt()?.clone())))
            .collect()
    }
}

impl Drop for Pipeline {
    fn drop(&mut self) {
        self.shutdown.trigger();
    }
}
