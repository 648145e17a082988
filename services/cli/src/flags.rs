//! Values given on the command line: files (`-` for standard input), and the bounds
//! and times that replays and dead-letter filters take.

use std::path::Path;

use crate::exit::{Failure, usage};

/// Reads a file named on the command line; `-` is standard input.
pub fn read(file: &Path) -> Result<String, Failure> {
    if file.as_os_str() == "-" {
        std::io::read_to_string(std::io::stdin())
    } else {
        std::fs::read_to_string(file)
    }
    .map_err(|err| usage(format!("{}: {err}", file.display())))
}

/// A replay bound.
#[derive(Debug, PartialEq)]
pub enum Bound {
    /// An INGEST sequence number.
    Sequence(u64),
    /// A time.
    Time(prost_types::Timestamp),
}

/// A replay bound: a sequence number, an RFC 3339 time, or a duration ago.
pub fn bound(flag: &str, text: &str) -> Result<Bound, Failure> {
    if let Ok(sequence) = text.parse::<u64>() {
        return Ok(Bound::Sequence(sequence));
    }
    let at = match time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339)
    {
        Ok(at) => at,
        Err(_) => {
            let ago = humantime::parse_duration(text).map_err(|_| {
                usage(format!(
                    "{flag} {text:?}: give a sequence number, an RFC 3339 time or a duration ago such as 2h"
                ))
            })?;
            time::OffsetDateTime::now_utc() - ago
        }
    };
    Ok(Bound::Time(switchyard_proto::convert::timestamp_of(at)))
}

/// A time given as RFC 3339 or as a duration ago (`2h`).
pub fn time_flag(flag: &str, text: &str) -> Result<prost_types::Timestamp, Failure> {
    match bound(flag, text)? {
        Bound::Time(at) if text.parse::<u64>().is_err() => Ok(at),
        _ => Err(usage(format!(
            "{flag} {text:?}: give an RFC 3339 time or a duration ago such as 2h"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounds_are_sequences_times_or_durations_ago() {
        assert_eq!(bound("--from", "42").unwrap(), Bound::Sequence(42));
        assert_eq!(
            bound("--from", "2026-12-01T10:00:00Z").unwrap(),
            Bound::Time(prost_types::Timestamp {
                seconds: 1_796_119_200,
                nanos: 0
            })
        );
        let Bound::Time(ago) = bound("--from", "2h").unwrap() else {
            panic!("a duration is a time");
        };
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        assert!((now - 7200 - ago.seconds).abs() <= 5);
        let err = bound("--to", "soon").unwrap_err();
        assert!(err.message.contains("--to \"soon\""), "{}", err.message);
        assert!(time_flag("--since", "42").is_err());
    }
}
