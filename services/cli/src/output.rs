//! What a command prints, in one place: every command builds an [`Output`] — the
//! machine-readable value for `-o json` and `-o yaml`, and the lines for `-o table` —
//! and [`Output::print`] picks by the format. No command branches on the format.

use std::fmt::Display;

use clap::ValueEnum;
use serde_json::Value;
use switchyard_proto::{ChangeAction, ResourceKind};

use crate::exit::{Exit, Failure};

/// `--output`.
#[derive(Clone, Copy, ValueEnum, PartialEq, Eq, Debug)]
pub enum Format {
    /// Aligned columns and sentences for people.
    Table,
    /// Pretty-printed JSON.
    Json,
    /// YAML.
    Yaml,
}

/// A command's result in both forms.
#[derive(Debug)]
pub struct Output {
    value: Value,
    table: Option<String>,
    /// The command ran, but its check failed: printed, then exit 4.
    failed: Option<String>,
}

impl Output {
    /// `value` in every format (a table shows it as YAML).
    pub fn new(value: Value) -> Self {
        Self {
            value,
            table: None,
            failed: None,
        }
    }

    /// `value` for JSON and YAML, `table` for people.
    pub fn with_table(value: Value, table: Text) -> Self {
        Self {
            value,
            table: Some(table.0),
            failed: None,
        }
    }

    /// Marks the result as a failed check (a mapping that did not pass, dead letters
    /// that still fail): it is printed all the same, and syctl exits with 4.
    pub fn check_failed(mut self, why: impl Into<String>) -> Self {
        self.failed = Some(why.into());
        self
    }

    /// Prints in `format`; a failed check comes back as its failure.
    pub fn print(self, format: Format) -> Result<(), Failure> {
        match (format, &self.table) {
            (Format::Table, Some(table)) => print!("{table}"),
            (Format::Json, _) => println!(
                "{}",
                serde_json::to_string_pretty(&self.value).unwrap_or_default()
            ),
            (Format::Table | Format::Yaml, _) => print!("{}", yaml(&self.value)),
        }
        match self.failed {
            Some(why) => Err(Failure::new(Exit::CheckFailed, why)),
            None => Ok(()),
        }
    }
}

/// Lines of a table or report being built.
#[derive(Debug, Default)]
pub struct Text(String);

impl Text {
    /// Adds one line.
    pub fn line(&mut self, line: impl Display) {
        self.0.push_str(&line.to_string());
        self.0.push('\n');
    }

    /// Adds an empty line.
    pub fn blank(&mut self) {
        self.0.push('\n');
    }

    /// Adds `text` indented by two spaces.
    pub fn indented(&mut self, text: &str) {
        for line in text.lines() {
            self.line(format_args!("  {line}"));
        }
    }
}

/// `value` as YAML.
pub fn yaml(value: &Value) -> String {
    serde_yaml_ng::to_string(value).unwrap_or_default()
}

/// A protobuf timestamp as RFC 3339, to the second.
pub fn rfc3339(timestamp: Option<&prost_types::Timestamp>) -> Option<String> {
    switchyard_proto::convert::rfc3339(timestamp?)
}

/// A body as JSON when it is JSON, else as text.
pub fn body(bytes: &[u8]) -> Value {
    serde_json::from_slice(bytes)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(bytes).into_owned()))
}

/// The name of a resource kind.
pub fn kind_name(kind: ResourceKind) -> &'static str {
    match kind {
        ResourceKind::Source => "source",
        ResourceKind::Provider => "provider",
        ResourceKind::Mapping => "mapping",
        ResourceKind::Route => "route",
        ResourceKind::Unspecified => "unknown",
    }
}

/// The name of a change in an apply plan.
pub fn action_name(action: ChangeAction) -> &'static str {
    match action {
        ChangeAction::Create => "create",
        ChangeAction::Update => "update",
        ChangeAction::Delete => "delete",
        ChangeAction::Unchanged => "unchanged",
        ChangeAction::Unspecified => "unknown",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_table_falls_back_to_yaml_and_text_collects_lines() {
        let mut text = Text::default();
        text.line("a");
        text.blank();
        text.indented("b\nc");
        assert_eq!(text.0, "a\n\n  b\n  c\n");
        assert_eq!(yaml(&serde_json::json!({"k": 1})), "k: 1\n");
        assert_eq!(body(b"{\"a\":1}"), serde_json::json!({"a": 1}));
        assert_eq!(body(b"<xml/>"), serde_json::json!("<xml/>"));
    }
}
