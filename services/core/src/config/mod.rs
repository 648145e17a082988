//! Typed settings shared by every service.
//!
//! Settings come from built-in defaults, then an optional YAML file (`--config FILE`),
//! then `SWITCHYARD__SECTION__KEY` environment variables. Unknown keys are rejected and
//! every value is validated once, at start-up, with a message naming the key.

use std::{path::Path, time::Duration};

use serde::Deserialize;

mod sections;

pub use self::sections::*;
use crate::Error;

/// Everything a Switchyard process can be configured with.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Settings {
    /// How to reach NATS.
    pub nats: NatsSettings,
    /// Stream and bucket limits applied by `ensure_topology`.
    pub topology: TopologySettings,
    /// Logging and tracing.
    pub telemetry: TelemetrySettings,
    /// The HTTP ingest service.
    pub ingest: IngestSettings,
    /// The transform service.
    pub transform: TransformSettings,
    /// The delivery service.
    pub delivery: DeliverySettings,
    /// The gRPC control service.
    pub control: ControlSettings,
    /// `switchyard dev`, the all-in-one laptop mode.
    pub dev: DevSettings,
    /// Where secrets referenced by name are read from.
    pub secrets: SecretsSettings,
    /// The admin listener (metrics, health).
    pub admin: AdminSettings,
    /// Which addresses requests made for the catalog (providers, polled APIs, OAuth2
    /// token endpoints) may go to.
    pub outbound: OutboundSettings,
    /// The threads each service process runs on.
    pub runtime: RuntimeSettings,
}

impl Settings {
    /// Loads defaults, then `file` when given, then `SWITCHYARD__*` variables from the
    /// process environment, and validates the result.
    pub fn load(file: Option<&Path>) -> Result<Self, Error> {
        Self::load_from(file, std::env::vars())
    }

    /// Like [`Settings::load`] with an explicit environment, so tests need no `set_var`.
    pub fn load_from(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, Error> {
        let mut builder = config::Config::builder();
        if let Some(file) = file {
            if !file.exists() {
                return Err(Error::Config(format!(
                    "config file {} does not exist",
                    file.display()
                )));
            }
            builder = builder.add_source(config::File::from(file).format(config::FileFormat::Yaml));
        }
        let env: config::Map<String, String> = env
            .into_iter()
            .filter(|(key, _)| key.starts_with("SWITCHYARD__"))
            .collect();
        builder = builder.add_source(
            config::Environment::with_prefix("SWITCHYARD")
                .prefix_separator("__")
                .separator("__")
                // The CIDR lists may be given comma-separated in one variable.
                .try_parsing(true)
                .list_separator(",")
                .with_list_parse_key("outbound.allow")
                .with_list_parse_key("outbound.deny")
                .source(Some(env)),
        );
        let settings: Settings = builder
            .build()
            .and_then(config::Config::try_deserialize)
            .map_err(|err| Error::Config(err.to_string()))?;
        settings.validate()?;
        Ok(settings)
    }

    /// Checks values that parse but cannot work, naming every key that is wrong.
    pub fn validate(&self) -> Result<(), Error> {
        let mut errors: Vec<String> = Vec::new();
        if let Err(err) = self.nats.servers() {
            // It names the key and the position of the bad server already.
            errors.push(match err {
                Error::Config(message) => message,
                other => other.to_string(),
            });
        }
        let topology = &self.topology;
        let rules = [
            (
                (1..=5).contains(&topology.replicas),
                "topology.replicas",
                "must be between 1 and 5",
            ),
            (
                !topology.duplicate_window.is_zero(),
                "topology.duplicate_window",
                "must be longer than 0s",
            ),
            (
                topology.duplicate_window <= topology.ingest_max_age,
                "topology.duplicate_window",
                "must not be longer than topology.ingest_max_age",
            ),
            (
                topology.deliver_max_bytes > 0 || topology.deliver_max_bytes == -1,
                "topology.deliver_max_bytes",
                "must be positive or -1 (no cap)",
            ),
            (
                !topology.idempotency_horizon.is_zero(),
                "topology.idempotency_horizon",
                "must be longer than 0s",
            ),
            (
                self.ingest.max_body_bytes > 0,
                "ingest.max_body_bytes",
                "must be positive",
            ),
            (
                (1..=100_000).contains(&self.ingest.max_batch_events),
                "ingest.max_batch_events",
                "must be 1-100000",
            ),
            (
                self.ingest.max_in_flight > 0,
                "ingest.max_in_flight",
                "must be positive",
            ),
            (
                !self.ingest.publish_timeout.is_zero(),
                "ingest.publish_timeout",
                "must be longer than 0s",
            ),
            (
                self.ingest.poll_lease_ttl >= Duration::from_secs(1),
                "ingest.poll_lease_ttl",
                "must be at least 1s",
            ),
            (
                self.transform.max_in_flight > 0,
                "transform.max_in_flight",
                "must be positive",
            ),
            (
                self.delivery.lease_ttl >= Duration::from_secs(1),
                "delivery.lease_ttl",
                "must be at least 1s",
            ),
            (
                self.runtime.worker_threads <= 1024,
                "runtime.worker_threads",
                "must be 0 (one per CPU) to 1024",
            ),
            (
                self.transform.ack_wait >= Duration::from_secs(1),
                "transform.ack_wait",
                "must be at least 1s",
            ),
        ];
        let mut fail = |key: String, why: String| errors.push(format!("{key}: {why}"));
        for (ok, key, why) in rules {
            if !ok {
                fail(key.to_owned(), why.to_owned());
            }
        }
        let mut names = std::collections::HashSet::new();
        for (index, key) in self.control.api_keys.iter().enumerate() {
            let at = format!("control.api_keys[{index}]");
            if key.name.trim().is_empty() {
                fail(format!("{at}.name"), "must not be empty".into());
            } else if !names.insert(key.name.as_str()) {
                fail(format!("{at}.name"), format!("{} is named twice", key.name));
            }
            if crate::apikey::parse_hash(&key.hash).is_none() {
                fail(
                    format!("{at}.hash"),
                    "must be sha256:<64 hex digits> (syctl keys create prints one)".into(),
                );
            }
        }
        self.ingest.http.validate("ingest.http", &mut fail);
        self.admin.http.validate("admin.http", &mut fail);
        self.control
            .console
            .http
            .validate("control.console.http", &mut fail);
        if self.control.console.session_idle < Duration::from_secs(60) {
            fail(
                "control.console.session_idle".into(),
                "must be at least 1m".into(),
            );
        }
        if let Some(url) = &self.control.console.jaeger_url
            && !(url.starts_with("http://") || url.starts_with("https://"))
        {
            fail(
                "control.console.jaeger_url".into(),
                format!("{url:?} must be an http:// or https:// URL"),
            );
        }
        for error in crate::outbound::parse_ranges(&self.outbound)
            .err()
            .unwrap_or_default()
        {
            fail(error.path, error.message);
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(Error::Config(errors.join("; ")))
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn defaults_are_valid() {
        let settings = Settings::load_from(None, env(&[])).unwrap();
        assert_eq!(settings.nats.url, "nats://127.0.0.1:4222");
        assert_eq!(settings.topology.replicas, 1);
    }

    #[test]
    fn file_then_environment_override_defaults() {
        let mut file = tempfile::Builder::new().suffix(".yaml").tempfile().unwrap();
        writeln!(
            file,
            "nats:\n  url: nats://file:4222\ningest:\n  max_body_bytes: 2048\n"
        )
        .unwrap();
        let settings = Settings::load_from(
            Some(file.path()),
            env(&[
                ("SWITCHYARD__NATS__URL", "nats://env:4222"),
                ("SWITCHYARD__TOPOLOGY__DUPLICATE_WINDOW", "30s"),
                ("UNRELATED", "x"),
            ]),
        )
        .unwrap();
        assert_eq!(settings.nats.url, "nats://env:4222");
        assert_eq!(settings.ingest.max_body_bytes, 2048);
        assert_eq!(settings.topology.duplicate_window, Duration::from_secs(30));
    }

    #[test]
    fn a_service_runs_on_one_thread_unless_told_otherwise() {
        let one = Settings::load_from(None, env(&[])).unwrap().runtime;
        assert_eq!(one.worker_threads, 1);
        let runtime = one.build().unwrap();
        assert_eq!(
            runtime.handle().runtime_flavor(),
            tokio::runtime::RuntimeFlavor::CurrentThread
        );
        let four = Settings::load_from(None, env(&[("SWITCHYARD__RUNTIME__WORKER_THREADS", "4")]))
            .unwrap()
            .runtime;
        assert_eq!(four.build().unwrap().metrics().num_workers(), 4);
        let err = Settings::load_from(
            None,
            env(&[("SWITCHYARD__RUNTIME__WORKER_THREADS", "5000")]),
        )
        .unwrap_err();
        assert!(err.to_string().contains("runtime.worker_threads"), "{err}");
    }

    #[test]
    fn unknown_keys_are_rejected_by_name() {
        let err = Settings::load_from(None, env(&[("SWITCHYARD__NATS__ULR", "x")])).unwrap_err();
        assert!(err.to_string().contains("ulr"), "{err}");
    }

    #[test]
    fn invalid_values_name_the_key() {
        let err =
            Settings::load_from(None, env(&[("SWITCHYARD__TOPOLOGY__REPLICAS", "7")])).unwrap_err();
        assert!(err.to_string().contains("topology.replicas"), "{err}");
        let err = Settings::load_from(
            None,
            env(&[("SWITCHYARD__TOPOLOGY__INGEST_MAX_AGE", "soon")]),
        )
        .unwrap_err();
        assert!(err.to_string().contains("ingest_max_age"), "{err}");
    }

    #[test]
    fn nats_url_lists_cluster_seeds_and_errors_never_show_a_password() {
        let settings = Settings::load_from(
            None,
            env(&[(
                "SWITCHYARD__NATS__URL",
                "nats://a:4222, nats://user:s3cret@b:4223",
            )]),
        )
        .unwrap();
        assert_eq!(settings.nats.servers().unwrap().len(), 2);
        assert_eq!(
            settings.nats.display_servers(),
            "nats://a:4222,nats://b:4223"
        );

        let err = Settings::load_from(
            None,
            env(&[(
                "SWITCHYARD__NATS__URL",
                "nats://a:4222,nats://user:s3cret@b:x",
            )]),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("nats.url: server 2"), "{err}");
        assert!(!err.contains("s3cret"), "{err}");
        let err = Settings::load_from(None, env(&[("SWITCHYARD__NATS__URL", " , ")])).unwrap_err();
        assert!(
            err.to_string().contains("nats.url: must not be empty"),
            "{err}"
        );
    }

    #[test]
    fn every_invalid_key_is_reported_at_once() {
        let err = Settings::load_from(
            None,
            env(&[
                ("SWITCHYARD__TOPOLOGY__REPLICAS", "7"),
                ("SWITCHYARD__INGEST__HTTP__MAX_HEADER_LINE_BYTES", "999999"),
                ("SWITCHYARD__ADMIN__HTTP__MAX_CONNECTIONS", "0"),
                ("SWITCHYARD__INGEST__MAX_IN_FLIGHT", "0"),
                ("SWITCHYARD__OUTBOUND__ALLOW", "10.0.0.0/8,not-a-range"),
            ]),
        )
        .unwrap_err()
        .to_string();
        for key in [
            "topology.replicas",
            "ingest.http.max_header_line_bytes",
            "admin.http.max_connections",
            "ingest.max_in_flight",
            "outbound.allow[1]",
        ] {
            assert!(err.contains(key), "{key} in {err}");
        }
    }

    #[test]
    fn listeners_bind_loopback_and_outbound_ranges_come_from_one_variable() {
        let settings = Settings::load_from(
            None,
            env(&[("SWITCHYARD__OUTBOUND__ALLOW", "10.20.0.0/16,192.168.7.9")]),
        )
        .unwrap();
        assert!(settings.ingest.listen.ip().is_loopback());
        assert!(settings.control.listen.ip().is_loopback());
        assert!(settings.admin.listen.ip().is_loopback());
        assert_eq!(settings.outbound.allow, ["10.20.0.0/16", "192.168.7.9"]);
        // Other values keep their commas and digits.
        let settings = Settings::load_from(
            None,
            env(&[
                ("SWITCHYARD__NATS__URL", "nats://a:4222,nats://b:4222"),
                ("SWITCHYARD__DELIVERY__INSTANCE", "1234"),
            ]),
        )
        .unwrap();
        assert_eq!(settings.nats.url, "nats://a:4222,nats://b:4222");
        assert_eq!(settings.delivery.instance.as_deref(), Some("1234"));
    }

    #[test]
    fn a_missing_config_file_is_an_error() {
        let err =
            Settings::load_from(Some(Path::new("/nonexistent/sy.yaml")), env(&[])).unwrap_err();
        assert!(err.to_string().contains("/nonexistent/sy.yaml"), "{err}");
    }
}
