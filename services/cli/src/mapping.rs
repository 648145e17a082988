//! `syctl mapping`: try a mapping on a sample, and draft a new one offline.

use std::path::PathBuf;

use clap::Subcommand;
use serde_json::{Value, json};
use switchyard_proto::{
    TestMappingRequest, TestMappingResponse, Violation,
    mapping_service_client::MappingServiceClient,
};

use crate::{
    connect::Remote,
    exit::{Failure, usage},
    flags::read,
    output::{Output, Text},
    suggest::suggest,
};

#[derive(Subcommand)]
pub enum MappingCommand {
    /// Run a mapping on a sample: the output, the schema verdicts and diagnostics.
    Test {
        /// A published version, `name@version` (or the one to pick from --file).
        reference: Option<String>,
        /// A mapping, or a catalog document holding it, to test before applying.
        #[arg(long, short, conflicts_with = "program")]
        file: Option<PathBuf>,
        /// A VRL program file to test on its own.
        #[arg(long)]
        program: Option<PathBuf>,
        /// The sample event (JSON); `-` reads standard input.
        #[arg(long, short)]
        sample: PathBuf,
    },
    /// Draft a VRL mapping from the input and output shapes (JSON Schemas or samples),
    /// offline: one line per output field, a comment for each that nothing matches.
    Suggest {
        /// What comes in: a JSON Schema or a sample event (JSON or YAML).
        #[arg(long)]
        from: PathBuf,
        /// What must come out: a JSON Schema or a sample body.
        #[arg(long)]
        to: PathBuf,
    },
}

pub async fn run(command: MappingCommand, remote: &Remote) -> Result<Output, Failure> {
    match command {
        MappingCommand::Suggest { from, to } => {
            let document = |file: &PathBuf| -> Result<Value, Failure> {
                serde_yaml_ng::from_str(&read(file)?)
                    .map_err(|err| usage(format!("{}: not JSON or YAML: {err}", file.display())))
            };
            let draft = suggest(&document(&from)?, &document(&to)?);
            let mut text = Text::default();
            text.line(draft.trim_end());
            Ok(Output::with_table(json!({"program": draft}), text))
        }
        MappingCommand::Test {
            reference,
            file,
            program,
            sample,
        } => {
            let document = match (&file, &program) {
                (Some(file), _) => read(file)?,
                (None, Some(program)) => json!({
                    "name": "draft",
                    "version": 1,
                    "program": read(program)?,
                })
                .to_string(),
                (None, None) => String::new(),
            };
            if document.is_empty() && reference.is_none() {
                return Err(usage(
                    "give a published mapping (name@version), --file or --program",
                ));
            }
            let response = MappingServiceClient::new(remote.connect().await?)
                .test_mapping(TestMappingRequest {
                    reference: reference.unwrap_or_default(),
                    document,
                    sample: read(&sample)?,
                })
                .await?
                .into_inner();
            let output = report(&response);
            Ok(if response.passed {
                output
            } else {
                output.check_failed(format!("{} did not pass", response.mapping))
            })
        }
    }
}

fn report(response: &TestMappingResponse) -> Output {
    let violations = |list: &[Violation]| -> Vec<Value> {
        list.iter()
            .map(|v| json!({"path": v.path, "message": v.message}))
            .collect()
    };
    let output: Option<Value> = response
        .output
        .as_deref()
        .and_then(|text| serde_json::from_str(text).ok());
    let diagnostics: Vec<_> = response
        .diagnostics
        .iter()
        .map(|d| json!({"field": d.field, "message": d.message}))
        .collect();
    let value = json!({
        "mapping": response.mapping,
        "passed": response.passed,
        "diagnostics": diagnostics,
        "input_violations": violations(&response.input_violations),
        "output": output,
        "skipped": response.skipped,
        "error": response.error,
        "output_violations": violations(&response.output_violations),
    });

    let mut text = Text::default();
    text.line(format_args!("mapping  {}", response.mapping));
    if !response.diagnostics.is_empty() {
        text.line("compile  failed");
        for diagnostic in &response.diagnostics {
            text.line(format_args!(
                "{}:\n{}",
                diagnostic.field, diagnostic.message
            ));
        }
        return Output::with_table(value, text);
    }
    let verdict = |list: &[Violation]| {
        if list.is_empty() {
            "ok".to_owned()
        } else {
            let lines: Vec<String> = list
                .iter()
                .map(|v| {
                    format!(
                        "\n  {}: {}",
                        if v.path.is_empty() { "/" } else { &v.path },
                        v.message
                    )
                })
                .collect();
            format!("{} violation(s){}", list.len(), lines.concat())
        }
    };
    text.line(format_args!(
        "input    {}",
        verdict(&response.input_violations)
    ));
    if let Some(reason) = &response.skipped {
        text.line(format_args!(
            "skipped  {reason} (the route would skip this event)"
        ));
    }
    if let Some(error) = &response.error {
        text.line(format_args!("error    {error}"));
    }
    if let Some(output) = &output {
        text.line(format_args!(
            "output   {}",
            serde_json::to_string_pretty(output)
                .unwrap_or_default()
                .replace('\n', "\n         ")
        ));
        text.line(format_args!(
            "schema   {}",
            verdict(&response.output_violations)
        ));
    }
    text.line(format_args!(
        "result   {}",
        if response.passed { "passed" } else { "failed" }
    ));
    Output::with_table(value, text)
}
