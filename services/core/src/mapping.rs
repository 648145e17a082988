//! VRL mappings: compile once, run per event.
//!
//! A mapping receives the event body as `.` and leaves the outgoing body in `.`. The
//! standard library is VRL's, without the functions that read the environment, the
//! file system or the network: a mapping is a pure function of its input. A mapping
//! version may carry JSON Schema contracts for its input and its output; a route may
//! carry a filter, a VRL expression that must be a boolean. Transform, replay and the
//! control API's dry-run all run events through [`CompiledMapping`], so what a dry-run
//! shows is what transform does.

use std::{fmt, ops::ControlFlow, sync::OnceLock};

use serde::Serialize;

use vrl::{
    compiler::{
        ExpressionError, Function, TargetValue, TimeZone,
        runtime::{Runtime, Terminate},
    },
    diagnostic::Formatter,
    value::{Secrets, Value},
};

use crate::{
    catalog::Mapping,
    contract::{Contract, Violation},
    outcome::FailureCategory,
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
        let input = Event::parse(body)?;
        self.run(input.value().clone()).map(|output| match output {
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

    /// Runs the program on a JSON document, with `metadata` readable as `%field`, and
    /// returns the final `.`; an abort is an error with its message.
    pub fn apply_json(
        &self,
        input: serde_json::Value,
        metadata: serde_json::Value,
    ) -> Result<serde_json::Value, RunError> {
        let done = self
            .execute_with(Value::from(input), Value::from(metadata))
            .map(|done| done.map(|(_, target)| target))?;
        match done {
            Ok(output) => Ok(to_json(&output)),
            Err(reason) => Err(RunError::Failed(format!(
                "the program aborted: {}",
                reason.as_deref().unwrap_or("no reason given")
            ))),
        }
    }

    /// Evaluates the program as an expression over a JSON document and returns its
    /// value as JSON (null when it yields null or aborts).
    pub fn evaluate_to_json(
        &self,
        input: serde_json::Value,
    ) -> Result<serde_json::Value, RunError> {
        Ok(self
            .evaluate(&Event::from_json(input))?
            .map_or(serde_json::Value::Null, |value| to_json(&value)))
    }

    /// Evaluates the program as an expression over a JSON body and returns its value
    /// (used for ordering keys): `None` when it yields null or aborts.
    pub fn evaluate_json(&self, body: &[u8]) -> Result<Option<Value>, RunError> {
        self.evaluate(&Event::parse(body)?)
    }

    /// Evaluates the program as an expression over `event`: `None` when it yields
    /// null or aborts.
    pub fn evaluate(&self, event: &Event) -> Result<Option<Value>, RunError> {
        Ok(match self.execute(event.value().clone())? {
            Ok((Value::Null, _)) | Err(_) => None,
            Ok((value, _)) => Some(value),
        })
    }

    /// Runs the program: the value of its last expression and the final `.`.
    fn execute(&self, input: Value) -> Result<Result<(Value, Value), Option<String>>, RunError> {
        self.execute_with(input, Value::Object(Default::default()))
    }

    fn execute_with(
        &self,
        input: Value,
        metadata: Value,
    ) -> Result<Result<(Value, Value), Option<String>>, RunError> {
        let mut target = TargetValue {
            value: input,
            metadata,
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

/// An event body parsed once and shared by every route that takes it.
#[derive(Debug)]
pub struct Event {
    value: Value,
    json: OnceLock<serde_json::Value>,
}

impl Event {
    /// Parses a JSON body.
    pub fn parse(body: &[u8]) -> Result<Self, RunError> {
        let value: Value =
            serde_json::from_slice(body).map_err(|err| RunError::InvalidInput(err.to_string()))?;
        Ok(Self {
            value,
            json: OnceLock::new(),
        })
    }

    /// Wraps an already parsed JSON document.
    pub fn from_json(json: serde_json::Value) -> Self {
        let value = Value::from(json.clone());
        let cell = OnceLock::new();
        let _ = cell.set(json);
        Self { value, json: cell }
    }

    /// The body as a VRL value.
    pub fn value(&self) -> &Value {
        &self.value
    }

    /// The body as a JSON document.
    pub fn json(&self) -> &serde_json::Value {
        self.json.get_or_init(|| to_json(&self.value))
    }
}

fn to_json(value: &Value) -> serde_json::Value {
    serde_json::to_value(value).expect("VRL values serialize")
}

/// A route filter: a VRL expression over the incoming event that must be a boolean.
#[derive(Debug, Clone)]
pub struct Filter(Program);

impl Filter {
    /// Compiles `source`, rejecting programs whose result is not always a boolean.
    pub fn compile(source: &str) -> Result<Self, CompileError> {
        let program = Program::compile(source)?;
        let kind = program.program.final_type_info().result.kind().clone();
        if !kind.is_boolean() {
            return Err(CompileError {
                diagnostics: format!(
                    "a filter must evaluate to a boolean, but this one can be {kind}; compare explicitly, for example `.status == \"paid\"`"
                ),
            });
        }
        Ok(Self(program))
    }

    /// Whether `event` passes; an error when the expression fails on it.
    pub fn matches(&self, event: &Event) -> Result<bool, RunError> {
        match self.0.execute(event.value().clone())? {
            Ok((Value::Boolean(pass), _)) => Ok(pass),
            Ok((other, _)) => Err(RunError::Failed(format!(
                "the filter gave {} instead of a boolean",
                other.kind()
            ))),
            Err(_) => Ok(false),
        }
    }
}

/// Why an event could not be mapped; none of these can succeed by retrying.
#[derive(Debug, Clone, PartialEq)]
pub enum Failure {
    /// The event breaks the mapping's input contract.
    Input(Vec<Violation>),
    /// The program failed, or the body is not JSON.
    Run(RunError),
    /// The program's output breaks the mapping's output contract.
    Output(Vec<Violation>),
}

impl Failure {
    /// The dead-letter category: `contract` or `mapping`.
    pub fn category(&self) -> FailureCategory {
        match self {
            Self::Input(_) | Self::Output(_) => FailureCategory::Contract,
            Self::Run(_) => FailureCategory::Mapping,
        }
    }

    /// The failing paths, for a contract violation.
    pub fn violations(&self) -> &[Violation] {
        match self {
            Self::Input(violations) | Self::Output(violations) => violations,
            Self::Run(_) => &[],
        }
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (side, violations) = match self {
            Self::Run(err) => return write!(f, "{err}"),
            Self::Input(violations) => ("input", violations),
            Self::Output(violations) => ("output", violations),
        };
        write!(f, "the {side} breaks the mapping's {side} schema: ")?;
        for (i, violation) in violations.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{violation}")?;
        }
        Ok(())
    }
}

/// A mapping version ready to run: its program and its contracts, compiled once.
#[derive(Debug)]
pub struct CompiledMapping {
    program: Program,
    input: Option<Contract>,
    output: Option<Contract>,
}

/// One thing wrong with a mapping version, by field (`program`, `input_schema`,
/// `output_schema`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MappingError {
    /// The field at fault.
    pub field: &'static str,
    /// VRL's diagnostics or the schema error.
    pub message: String,
}

/// What a dry-run of a mapping version made of a sample.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TestReport {
    /// Violations of the input schema (empty when it passes or there is none).
    pub input_violations: Vec<Violation>,
    /// The output body, when the program produced one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub output: Option<serde_json::Value>,
    /// Set when the program called `abort`: the route would skip the event.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub skipped: Option<String>,
    /// The runtime error, when the program failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Violations of the output schema.
    pub output_violations: Vec<Violation>,
}

impl TestReport {
    /// Whether transform would deliver the output.
    pub fn passed(&self) -> bool {
        self.input_violations.is_empty()
            && self.error.is_none()
            && self.output_violations.is_empty()
    }
}

impl CompiledMapping {
    /// Compiles the program and both schemas, reporting every problem at once.
    pub fn compile(mapping: &Mapping) -> Result<Self, Vec<MappingError>> {
        let mut errors = Vec::new();
        let program = Program::compile(&mapping.program)
            .map_err(|err| {
                errors.push(MappingError {
                    field: "program",
                    message: err.diagnostics,
                })
            })
            .ok();
        let mut contract = |field, schema: &Option<serde_json::Value>| {
            schema.as_ref().and_then(|schema| {
                Contract::compile(schema)
                    .map_err(|message| errors.push(MappingError { field, message }))
                    .ok()
            })
        };
        let input = contract("input_schema", &mapping.input_schema);
        let output = contract("output_schema", &mapping.output_schema);
        match program {
            Some(program) if errors.is_empty() => Ok(Self {
                program,
                input,
                output,
            }),
            _ => Err(errors),
        }
    }

    /// Checks the input, runs the program and checks its output.
    pub fn apply(&self, event: &Event) -> Result<Output, Failure> {
        self.check_input(event)?;
        self.run_and_check(event.value().clone())
    }

    /// [`CompiledMapping::apply`] for the last route that reads `event`: the program
    /// takes the event's value instead of a copy, and `event` is empty afterwards.
    pub fn apply_last(&self, event: &mut Event) -> Result<Output, Failure> {
        self.check_input(event)?;
        let value = std::mem::replace(&mut event.value, Value::Null);
        event.json = OnceLock::new();
        self.run_and_check(value)
    }

    fn check_input(&self, event: &Event) -> Result<(), Failure> {
        match &self.input {
            Some(contract) => contract.check(event.json()).map_err(Failure::Input),
            None => Ok(()),
        }
    }

    fn run_and_check(&self, input: Value) -> Result<Output, Failure> {
        let output = match self.program.run(input) {
            Ok(Ok(output)) => output,
            Ok(Err(reason)) => return Ok(Output::Skipped(reason)),
            Err(err) => return Err(Failure::Run(err)),
        };
        let body = match &self.output {
            Some(contract) => {
                let json = to_json(&output);
                contract.check(&json).map_err(Failure::Output)?;
                serde_json::to_vec(&json)
            }
            None => serde_json::to_vec(&output),
        };
        Ok(Output::Body(body.expect("JSON values serialize")))
    }

    /// Runs every step on `sample` whatever the earlier steps said, for a dry-run.
    pub fn test(&self, sample: &serde_json::Value) -> TestReport {
        let event = Event::from_json(sample.clone());
        let input_violations = match &self.input {
            Some(contract) => contract.check(event.json()).err().unwrap_or_default(),
            None => Vec::new(),
        };
        let mut report = TestReport {
            input_violations,
            output: None,
            skipped: None,
            error: None,
            output_violations: Vec::new(),
        };
        match self.program.run(event.value().clone()) {
            Ok(Ok(output)) => {
                let json = to_json(&output);
                if let Some(contract) = &self.output {
                    report.output_violations = contract.check(&json).err().unwrap_or_default();
                }
                report.output = Some(json);
            }
            Ok(Err(reason)) => {
                report.skipped = Some(reason.unwrap_or_else(|| "aborted".to_owned()));
            }
            Err(err) => report.error = Some(err.to_string()),
        }
        report
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

    fn mapping(
        program: &str,
        input: Option<serde_json::Value>,
        output: Option<serde_json::Value>,
    ) -> Mapping {
        Mapping {
            name: "m".into(),
            version: 1,
            description: String::new(),
            program: program.into(),
            input_schema: input,
            output_schema: output,
        }
    }

    #[test]
    fn filters_must_be_booleans_and_say_so_when_they_are_not() {
        let filter = Filter::compile(r#".status == "paid""#).unwrap();
        let paid = Event::parse(br#"{"status":"paid"}"#).unwrap();
        let open = Event::parse(br#"{"status":"open"}"#).unwrap();
        assert_eq!(filter.matches(&paid), Ok(true));
        assert_eq!(filter.matches(&open), Ok(false));

        let err = Filter::compile(".status").unwrap_err();
        assert!(
            err.diagnostics.contains("must evaluate to a boolean"),
            "{err}"
        );
        let err = Filter::compile(".total > ").unwrap_err();
        assert!(err.diagnostics.contains(":1:"), "{err}");
        // A fallible comparison must be handled, so every filter yields a boolean.
        let guarded = Filter::compile("(to_int(.total) ?? 0) > 100").unwrap();
        assert_eq!(
            guarded.matches(&Event::parse(br#"{"total":"250"}"#).unwrap()),
            Ok(true)
        );
        assert_eq!(
            guarded.matches(&Event::parse(br#"{"total":"n/a"}"#).unwrap()),
            Ok(false)
        );
    }

    #[test]
    fn contracts_are_checked_on_both_sides_with_their_paths() {
        let compiled = CompiledMapping::compile(&mapping(
            r#". = {"email": .customer.email, "total": .total}"#,
            Some(serde_json::json!({"type": "object", "required": ["customer"]})),
            Some(serde_json::json!({
                "type": "object",
                "properties": {"email": {"type": "string"}, "total": {"type": "number"}}
            })),
        ))
        .unwrap();
        let good = Event::parse(br#"{"customer":{"email":"a@b.c"},"total":3}"#).unwrap();
        let Ok(Output::Body(body)) = compiled.apply(&good) else {
            panic!("expected a body")
        };
        assert_eq!(
            serde_json::from_slice::<serde_json::Value>(&body).unwrap(),
            serde_json::json!({"email": "a@b.c", "total": 3})
        );

        let missing = Event::parse(br#"{"total":3}"#).unwrap();
        let failure = compiled.apply(&missing).unwrap_err();
        assert_eq!(failure.category(), FailureCategory::Contract);
        assert!(matches!(failure, Failure::Input(_)), "{failure:?}");
        assert!(
            failure.to_string().contains("input schema: /: "),
            "{failure}"
        );

        let wrong = Event::parse(br#"{"customer":{"email":7},"total":"x"}"#).unwrap();
        let failure = compiled.apply(&wrong).unwrap_err();
        let paths: Vec<&str> = failure
            .violations()
            .iter()
            .map(|v| v.path.as_str())
            .collect();
        assert!(matches!(failure, Failure::Output(_)), "{failure:?}");
        assert_eq!(paths.len(), 2, "{failure}");
        assert!(
            paths.contains(&"/email") && paths.contains(&"/total"),
            "{paths:?}"
        );
    }

    #[test]
    fn compile_reports_every_broken_field() {
        let errors = CompiledMapping::compile(&mapping(
            ".x = upcase(",
            Some(serde_json::json!({"type": 12})),
            Some(serde_json::json!({"type": "object"})),
        ))
        .unwrap_err();
        let fields: Vec<&str> = errors.iter().map(|e| e.field).collect();
        assert_eq!(fields, ["program", "input_schema"]);
    }

    #[test]
    fn a_dry_run_reports_every_step() {
        let compiled = CompiledMapping::compile(&mapping(
            r#"if .kind == "test" { abort "test event" }
            . = {"id": .id}"#,
            Some(serde_json::json!({"required": ["id"]})),
            Some(serde_json::json!({"properties": {"id": {"type": "string"}}})),
        ))
        .unwrap();
        let report = compiled.test(&serde_json::json!({"id": 5}));
        assert!(report.input_violations.is_empty());
        assert_eq!(report.output, Some(serde_json::json!({"id": 5})));
        assert_eq!(report.output_violations.len(), 1);
        assert!(!report.passed());

        let report = compiled.test(&serde_json::json!({"kind": "test"}));
        assert_eq!(report.input_violations.len(), 1);
        assert_eq!(report.skipped.as_deref(), Some("test event"));
        assert!(report.output.is_none());

        let failing =
            CompiledMapping::compile(&mapping(".x = parse_json!(.raw)", None, None)).unwrap();
        let report = failing.test(&serde_json::json!({"raw": "{"}));
        assert!(
            report.error.as_deref().unwrap().contains("parse_json"),
            "{report:?}"
        );
    }

    /// Every ```vrl block of the mappings reference (services/transform/README.md)
    /// with `# in:` and `# out:` lines runs and gives what the page says it gives.
    #[test]
    fn the_readme_patterns_do_what_they_say() {
        let readme = include_str!("../../transform/README.md");
        let mut checked = 0;
        for block in readme.split("```vrl\n").skip(1) {
            let program = block.split("```").next().unwrap();
            let line = |prefix: &str| -> serde_json::Value {
                let text = program
                    .lines()
                    .find_map(|line| line.strip_prefix(prefix))
                    .unwrap_or_else(|| panic!("no {prefix:?} line in\n{program}"));
                serde_json::from_str(text.trim()).unwrap()
            };
            let (input, expected) = (line("# in:"), line("# out:"));
            let compiled = CompiledMapping::compile(&mapping(program, None, None))
                .unwrap_or_else(|errors| panic!("{program}\n{errors:?}"));
            let event = Event::from_json(input);
            let Ok(Output::Body(body)) = compiled.apply(&event) else {
                panic!("{program} gave no body")
            };
            let output: serde_json::Value = serde_json::from_slice(&body).unwrap();
            assert_eq!(output, expected, "{program}");
            checked += 1;
        }
        assert!(checked >= 7, "only {checked} patterns found");
    }
}
