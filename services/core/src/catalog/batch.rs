//! How a provider takes many events in one request: the limits of a batch, the body
//! it is sent as, and the VRL that builds an envelope or reads per-item results.
//!
//! A batch is only a transport: every member keeps its own idempotency key, ledger
//! record, ack and outcome record (see `services/delivery/src/batch.rs`).

use std::{fmt, str::FromStr, time::Duration};

use serde::{Deserialize, Serialize};

/// Batch limits and body format of a provider.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Batch {
    /// Most events in one request.
    #[serde(default = "max_events")]
    pub max_events: usize,
    /// Most body bytes in one request (a number or `512KiB`, `1MiB`, `1MB`); an event
    /// larger than this on its own is sent alone.
    #[serde(default = "max_bytes")]
    pub max_bytes: ByteSize,
    /// Longest time the first event of a batch waits for others to join it.
    #[serde(default = "max_wait", with = "humantime_serde")]
    pub max_wait: Duration,
    /// How the members' bodies are put into one request body.
    #[serde(default)]
    pub format: BatchFormat,
}

/// Largest `max_events` accepted.
pub const MAX_BATCH_EVENTS: usize = 10_000;
/// Largest `max_bytes` accepted.
pub const MAX_BATCH_BYTES: u64 = 64 << 20;
/// Longest `max_wait` accepted.
pub const MAX_BATCH_WAIT: Duration = Duration::from_secs(60);

fn max_events() -> usize {
    100
}

fn max_bytes() -> ByteSize {
    ByteSize(1 << 20)
}

fn max_wait() -> Duration {
    Duration::from_millis(500)
}

/// The body of a batch request.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "FormatForm", into = "FormatForm")]
pub enum BatchFormat {
    /// `[body, body, …]` as `application/json` (the default).
    #[default]
    JsonArray,
    /// One body per line as `application/x-ndjson`.
    Ndjson,
    /// `{"<field>": [body, body, …]}` as `application/json`.
    Wrap(String),
}

impl BatchFormat {
    /// The `Content-Type` of the request body.
    pub fn content_type(&self) -> &'static str {
        match self {
            Self::JsonArray | Self::Wrap(_) => "application/json",
            Self::Ndjson => "application/x-ndjson",
        }
    }
}

#[derive(Serialize, Deserialize)]
#[serde(untagged)]
enum FormatForm {
    Name(String),
    Wrap {
        /// The field holding the array.
        wrap: String,
    },
}

impl TryFrom<FormatForm> for BatchFormat {
    type Error = String;

    fn try_from(form: FormatForm) -> Result<Self, String> {
        match form {
            FormatForm::Name(name) => match name.as_str() {
                "json_array" => Ok(Self::JsonArray),
                "ndjson" => Ok(Self::Ndjson),
                other => Err(format!(
                    "unknown batch format {other:?}: use json_array, ndjson or {{wrap: FIELD}}"
                )),
            },
            FormatForm::Wrap { wrap } if wrap.is_empty() => {
                Err("batch format wrap needs a field name".into())
            }
            FormatForm::Wrap { wrap } => Ok(Self::Wrap(wrap)),
        }
    }
}

impl From<BatchFormat> for FormatForm {
    fn from(format: BatchFormat) -> Self {
        match format {
            BatchFormat::JsonArray => Self::Name("json_array".into()),
            BatchFormat::Ndjson => Self::Name("ndjson".into()),
            BatchFormat::Wrap(wrap) => Self::Wrap { wrap },
        }
    }
}

/// A number of bytes, written as a plain number or with a unit (`KiB`, `MiB`, `GiB`,
/// `kB`, `MB`, `GB`, `B`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "SizeForm", into = "SizeForm")]
pub struct ByteSize(pub u64);

#[derive(Serialize, Deserialize)]
#[serde(untagged)]
enum SizeForm {
    Number(u64),
    Text(String),
}

impl TryFrom<SizeForm> for ByteSize {
    type Error = String;

    fn try_from(form: SizeForm) -> Result<Self, String> {
        match form {
            SizeForm::Number(bytes) => Ok(Self(bytes)),
            SizeForm::Text(text) => text.parse(),
        }
    }
}

impl From<ByteSize> for SizeForm {
    fn from(size: ByteSize) -> Self {
        Self::Text(size.to_string())
    }
}

const UNITS: [(&str, u64); 7] = [
    ("GiB", 1 << 30),
    ("MiB", 1 << 20),
    ("KiB", 1 << 10),
    ("GB", 1_000_000_000),
    ("MB", 1_000_000),
    ("kB", 1_000),
    ("B", 1),
];

impl FromStr for ByteSize {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let text = text.trim();
        let split = text
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(text.len());
        let (number, unit) = text.split_at(split);
        let number: u64 = number
            .parse()
            .map_err(|_| format!("{text:?} is not a size: write a number of bytes or e.g. 1MiB"))?;
        let unit = unit.trim();
        let factor = if unit.is_empty() {
            1
        } else {
            UNITS
                .iter()
                .find(|(name, _)| *name == unit)
                .map(|(_, factor)| *factor)
                .ok_or_else(|| {
                    format!(
                        "{text:?} has an unknown unit {unit:?}: use B, kB, MB, GB, KiB, MiB or GiB"
                    )
                })?
        };
        number
            .checked_mul(factor)
            .map(Self)
            .ok_or_else(|| format!("{text:?} is too large"))
    }
}

impl fmt::Display for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match UNITS
            .iter()
            .find(|(_, factor)| self.0 >= *factor && self.0.is_multiple_of(*factor))
        {
            Some((unit, factor)) if *factor > 1 => write!(f, "{}{unit}", self.0 / factor),
            _ => write!(f, "{}", self.0),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_read_with_and_without_units_and_print_back() {
        for (text, bytes) in [
            ("1MiB", 1 << 20),
            ("512KiB", 512 << 10),
            ("1MB", 1_000_000),
            ("100 kB", 100_000),
            ("4096", 4096),
            ("7B", 7),
        ] {
            let size: ByteSize = text.parse().unwrap();
            assert_eq!(size.0, bytes, "{text}");
            assert_eq!(size.to_string().parse::<ByteSize>().unwrap(), size);
        }
        for bad in ["", "MiB", "1 parsec", "-1", "99999999999999999999GiB"] {
            assert!(bad.parse::<ByteSize>().is_err(), "{bad}");
        }
    }

    #[test]
    fn formats_read_by_name_or_as_a_wrap() {
        let read = |yaml: &str| serde_yaml_ng::from_str::<BatchFormat>(yaml);
        assert_eq!(read("json_array").unwrap(), BatchFormat::JsonArray);
        assert_eq!(read("ndjson").unwrap(), BatchFormat::Ndjson);
        assert_eq!(
            read("{wrap: records}").unwrap(),
            BatchFormat::Wrap("records".into())
        );
        let err = read("csv").unwrap_err().to_string();
        assert!(err.contains("unknown batch format \"csv\""), "{err}");
        let batch: Batch = serde_yaml_ng::from_str("max_bytes: 1MiB").unwrap();
        assert_eq!(batch.max_events, 100);
        assert_eq!(batch.max_bytes, ByteSize(1 << 20));
        assert_eq!(batch.max_wait, Duration::from_millis(500));
    }
}
