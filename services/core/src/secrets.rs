//! Secrets referenced by name.
//!
//! The catalog and KV only ever hold a secret's name. Its value is read when a process
//! needs it, first from a file `<dir>/<name>` (a mounted Kubernetes secret), then from
//! the environment variable `<name>`, and kept in a [`SecretString`] that cannot be
//! printed by accident.

use std::path::PathBuf;

pub use secrecy::{ExposeSecret, SecretString};

use crate::Error;

/// Where secrets are looked up.
#[derive(Debug, Clone)]
pub struct SecretSource {
    dir: PathBuf,
}

/// Whether `name` can name a secret file and variable.
pub fn is_valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 128
        && !name.starts_with('.')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
}

impl SecretSource {
    /// Looks in `dir` first, then in the environment.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    /// Reads the secret `name`; the error names the secret, never its value.
    pub fn read(&self, name: &str) -> Result<SecretString, Error> {
        if !is_valid_name(name) {
            return Err(Error::Secret {
                name: name.to_owned(),
                reason: "is not a valid secret name".into(),
            });
        }
        let file = self.dir.join(name);
        match std::fs::read_to_string(&file) {
            Ok(value) => return Ok(SecretString::from(value.trim_end_matches(['\r', '\n']))),
            Err(err) if err.kind() != std::io::ErrorKind::NotFound => {
                return Err(Error::Secret {
                    name: name.to_owned(),
                    reason: format!("cannot read {}: {}", file.display(), err.kind()),
                });
            }
            Err(_) => {}
        }
        match std::env::var(name) {
            Ok(value) => Ok(SecretString::from(value)),
            Err(_) => Err(Error::Secret {
                name: name.to_owned(),
                reason: format!(
                    "not found: set the environment variable {name} or create {}",
                    file.display()
                ),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_files_first_and_never_shows_values() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("ACME_TOKEN"), "s3cr3t\n").unwrap();
        let secrets = SecretSource::new(dir.path());
        let token = secrets.read("ACME_TOKEN").unwrap();
        assert_eq!(token.expose_secret(), "s3cr3t");
        assert!(!format!("{token:?}").contains("s3cr3t"));

        let err = secrets.read("SWITCHYARD_TEST_MISSING_SECRET").unwrap_err();
        assert!(err.to_string().contains("SWITCHYARD_TEST_MISSING_SECRET"));
        assert!(secrets.read("../etc/passwd").is_err());
    }
}
