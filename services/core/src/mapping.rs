//! VRL mappings: compile once, run per event.
//!
//! A mapping receives the event body as `.` and leaves the outgoing body in `.`. The
//! standard library is VRL's, without the functions that read the environment, the
//! file system or the network: a mapping is a pure function of its input.

use std::{ops::ControlFlow, sync::OnceLock};

use vrl::{
    compiler::{
        ExpressionError, Function, TargetValue, TimeZone,
        runtime::{Runtime, Terminate},
    },
    diagnostic::Formatter,
    value::{Secrets, Value},
};

/// Upper bound on VRL expression steps per event; stops runaway programs.
const MAX_STEPS_PER_EVENT: u64 = 1_000_000;

/// A compiled mapping program.
#[derive(Debug, Clone)]
pub struct Program {
    program: vrl::compiler::Program,
}

/// Why a mapping could not be compiled, with VRL's diagnostics (line, column, message).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{diagnostics}")]
pub struct CompileError {
    /// VRL's rendered diagnostics.
    pub diagnostics: String,
}

/// Why a mapping failed on one event. The event cannot succeed by retrying.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RunError {
    /// The body is not JSON.
    #[error("the event body is not JSON: {0}")]
    InvalidInput(String),
    /// The program raised an error.
    #[error("the mapping failed: {0}")]
    Failed(String),
}

/// What a mapping made of one event.
#[derive(Debug, Clone, PartialEq)]
pub enum Output {
    /// The body to deliver, as JSON.
    Body(Vec<u8>),
    /// The program called `abort`: this route skips the event.
    Skipped(Option<String>),
}

fn functions() -> &'static [Box<dyn Function>] {
    static FUNCTIONS: OnceLock<Vec<Box<dyn Function>>> = OnceLock::new();
    FUNCTIONS.get_or_init(vrl::stdlib::all)
}

impl Program {
    /// Compiles `source`, rejecting it with VRL's diagnostics when it has errors.
    pub fn compile(source: &str) -> Result<Self, CompileError> {
        match vrl::compiler::compile(source, functions()) {
            Ok(result) => Ok(Self {
                program: result.program,
            }),
            Err(diagnostics) => Err(CompileError {
                diagnostics: Formatter::new(source, diagnostics)
                    .to_string()
                    .trim()
                    .to_owned(),
            }),
        }
    }

    /// Runs the program on a JSON body.
    pub fn run_json(&self, body: &[u8]) -> Result<Output, RunError> {
        let input: Value =
            serde_json::from_slice(body).map_err(|err| RunError::InvalidInput(err.to_string()))?;
        self.run(input).map(|output| match output {
            Ok(value) => Output::Body(serde_json::to_vec(&value).expect("VRL values serialize")),
            Err(reason) => Output::Skipped(reason),
        })
    }

    /// Runs the program on `input`: `Ok(Ok(output))`, or `Ok(Err(reason))` when it
    /// aborted on purpose.
    pub fn run(&self, input: Value) -> Result<Result<Value, Option<String>>, RunError> {
        self.execute(input)
            .map(|done| done.map(|(_, target)| target))
    }

    /// Evaluates the program as an expression over a JSON body and returns its value
    /// (used for ordering keys): `None` when it yields null or aborts.
    pub fn evaluate_json(&self, body: &[u8]) -> Result<Option<Value>, RunError> {
        let input: Value =
            serde_json::from_slice(body).map_err(|err| RunError::InvalidInput(err.to_string()))?;
        Ok(match self.execute(input)? {
            Ok((Value::Null, _)) | Err(_) => None,
            Ok((value, _)) => Some(value),
        })
    }

    /// Runs the program: the value of its last expression and the final `.`.
    fn execute(&self, input: Value) -> Result<Result<(Value, Value), Option<String>>, RunError> {
        let mut target = TargetValue {
            value: input,
            metadata: Value::Object(Default::default()),
            secrets: Secrets::default(),
        };
        let mut steps = 0u64;
        let mut budget = || {
            steps += 1;
            if steps > MAX_STEPS_PER_EVENT {
                ControlFlow::Break(())
            } else {
                ControlFlow::Continue(())
            }
        };
        let result = Runtime::default().resolve_with_control(
            &mut target,
            &self.program,
            &TimeZone::default(),
            &mut budget,
        );
        match result {
            Ok(value) => Ok(Ok((value, target.value))),
            Err(Terminate::Abort(ExpressionError::Abort { message, .. })) => Ok(Err(message)),
            Err(Terminate::Interrupted) => Err(RunError::Failed(format!(
                "the program ran more than {MAX_STEPS_PER_EVENT} steps"
            ))),
            Err(err) => Err(RunError::Failed(err.to_string())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_json_to_json() {
        let program = Program::compile(
            r#"
            . = {"email": downcase(string!(.customer.email)), "total": to_float!(.total)}
            "#,
        )
        .unwrap();
        let output = program
            .run_json(br#"{"customer":{"email":"A@B.C"},"total":"12.5"}"#)
            .unwrap();
        let Output::Body(body) = output else {
            panic!("expected a body")
        };
        let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(json, serde_json::json!({"email": "a@b.c", "total": 12.5}));
    }

    #[test]
    fn compile_errors_carry_line_and_column() {
        let err = Program::compile(".a = \n  upcase(.b").unwrap_err();
        assert!(err.diagnostics.contains("error"), "{err}");
        assert!(err.diagnostics.contains(":2:"), "{err}");
    }

    #[test]
    fn runtime_errors_and_aborts_are_told_apart() {
        let failing = Program::compile(r#".x = parse_json!(.raw)"#).unwrap();
        let err = failing.run_json(br#"{"raw":"{not json"}"#).unwrap_err();
        assert!(matches!(err, RunError::Failed(_)), "{err:?}");

        let skipping = Program::compile(r#"if .kind == "test" { abort "test event" }"#).unwrap();
        assert_eq!(
            skipping.run_json(br#"{"kind":"test"}"#).unwrap(),
            Output::Skipped(Some("test event".into()))
        );
    }

    #[test]
    fn expressions_evaluate_to_their_value() {
        let key = Program::compile(".customer.id").unwrap();
        assert_eq!(
            key.evaluate_json(br#"{"customer":{"id":42}}"#).unwrap(),
            Some(Value::from(42))
        );
        assert_eq!(key.evaluate_json(br#"{"customer":{}}"#).unwrap(), None);
    }

    #[test]
    fn non_json_input_is_reported() {
        let program = Program::compile(".").unwrap();
        assert!(matches!(
            program.run_json(b"not json"),
            Err(RunError::InvalidInput(_))
        ));
    }

    #[test]
    fn environment_and_network_functions_are_not_available() {
        assert!(Program::compile(r#".x = get_env_var!("HOME")"#).is_err());
        assert!(Program::compile(r#".x = http_request!("http://example.com")"#).is_err());
    }
}
