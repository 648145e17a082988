//! `syctl keys`: API keys of the control API, made offline.

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use clap::Subcommand;
use serde_json::json;

use crate::{
    exit::{Exit, Failure},
    output::{Output, Text},
};

#[derive(Subcommand)]
pub enum KeysCommand {
    /// Make a new random API key: prints the key once, and the control settings entry
    /// that stores only its hash.
    Create {
        /// Who will hold the key.
        #[arg(long)]
        name: String,
        /// read, operate or admin; each includes the ones before it.
        #[arg(long, value_parser = ["read", "operate", "admin"])]
        scope: String,
    },
}

pub fn run(command: KeysCommand) -> Result<Output, Failure> {
    let KeysCommand::Create { name, scope } = command;
    let key = new_key()?;
    let hash = key_hash(&key);
    let mut text = Text::default();
    text.line(format_args!("key (shown once; give it to {name}): {key}"));
    text.blank();
    text.line("control settings entry (stores only the hash):");
    text.line("  api_keys:");
    text.line(format_args!("    - name: {name}"));
    text.line(format_args!("      hash: {hash}"));
    text.line(format_args!("      scope: {scope}"));
    Ok(Output::with_table(
        json!({"name": name, "key": key, "hash": hash, "scope": scope}),
        text,
    ))
}

/// A new API key: `sy_` and 32 random bytes, URL-safe base64.
fn new_key() -> Result<String, Failure> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(|err| {
        Failure::new(
            Exit::Refused,
            format!("no random numbers from the system: {err}"),
        )
    })?;
    Ok(format!("sy_{}", URL_SAFE_NO_PAD.encode(bytes)))
}

/// The stored form of an API key, `sha256:<hex>`, as the servers' key check expects
/// it (`switchyard_core::apikey`; the access tests check that the two agree).
fn key_hash(key: &str) -> String {
    use sha2::Digest;
    let hex: String = sha2::Sha256::digest(key.trim().as_bytes())
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect();
    format!("sha256:{hex}")
}
