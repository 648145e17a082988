//! JSON Schema (draft 2020-12) contracts: compiled once, checked per event, and every
//! violation reported with the JSON pointer of the failing value.

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// One failing value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Violation {
    /// JSON pointer to the failing value; empty for the document itself.
    pub path: String,
    /// What is wrong with it.
    pub message: String,
}

impl Violation {
    /// The path as people read it: `/` for the document itself.
    pub fn shown_path(&self) -> &str {
        if self.path.is_empty() {
            "/"
        } else {
            &self.path
        }
    }
}

impl std::fmt::Display for Violation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.shown_path(), self.message)
    }
}

/// A compiled schema.
pub struct Contract(jsonschema::Validator);

impl std::fmt::Debug for Contract {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Contract")
    }
}

/// Most violations reported for one document.
const MAX_VIOLATIONS: usize = 20;

impl Contract {
    /// Compiles `schema` as draft 2020-12.
    pub fn compile(schema: &Value) -> Result<Self, String> {
        jsonschema::draft202012::new(schema)
            .map(Self)
            .map_err(|err| format!("not a valid JSON Schema: {err}"))
    }

    /// Checks `document`, listing up to 20 violations.
    pub fn check(&self, document: &Value) -> Result<(), Vec<Violation>> {
        let violations: Vec<Violation> = self
            .0
            .iter_errors(document)
            .take(MAX_VIOLATIONS)
            .map(|error| Violation {
                path: error.instance_path().to_string(),
                message: error.to_string(),
            })
            .collect();
        if violations.is_empty() {
            Ok(())
        } else {
            Err(violations)
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn violations_name_their_paths() {
        let contract = Contract::compile(&json!({
            "type": "object",
            "required": ["id", "total"],
            "properties": {
                "id": {"type": "string"},
                "total": {"type": "number", "minimum": 0},
                "lines": {"type": "array", "items": {"type": "object", "required": ["sku"]}}
            }
        }))
        .unwrap();
        assert_eq!(contract.check(&json!({"id": "a", "total": 3})), Ok(()));
        let violations = contract
            .check(&json!({"id": 7, "total": -1, "lines": [{}]}))
            .unwrap_err();
        let paths: Vec<&str> = violations.iter().map(|v| v.path.as_str()).collect();
        assert_eq!(paths.len(), 3, "{violations:?}");
        for path in ["/id", "/total", "/lines/0"] {
            assert!(paths.contains(&path), "{path} missing from {paths:?}");
        }
        let missing = contract.check(&json!({})).unwrap_err();
        assert_eq!(missing.len(), 2);
        assert!(missing.iter().all(|v| v.path.is_empty()));
        assert!(missing[0].message.contains("required") || missing[0].message.contains("id"));
    }

    #[test]
    fn invalid_schemas_are_refused() {
        let err = Contract::compile(&json!({"type": "nonsense"})).unwrap_err();
        assert!(err.contains("not a valid JSON Schema"), "{err}");
    }
}
