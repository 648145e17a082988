//! Mappings: the published versions, and a dry run of one of them, or of an edited
//! program, on a sample, with its output, diagnostics and schema verdicts.

use axum::{
    Extension, Form,
    extract::{Query, State},
};
use maud::{Markup, html};
use serde::Deserialize;

use super::{Failure, Shared, layout, request, session::Session};
use crate::proto::{
    ListResourcesRequest, ResourceKind, TestMappingRequest, TestMappingResponse, Violation,
    catalog_service_server::CatalogService, mapping_service_server::MappingService,
};

/// What the dry-run form holds.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct Trial {
    /// A published version, `name@version`.
    reference: String,
    /// An edited mapping (YAML), run instead of the published one when given.
    document: String,
    /// The event body to run it on.
    sample: String,
    /// On the page's query: a published version to load into the editor.
    edit: String,
}

/// `GET /mappings[?edit=name@N]`.
pub async fn page(
    State(console): State<Shared>,
    Extension(session): Extension<Session>,
    Query(mut trial): Query<Trial>,
) -> Result<Markup, Failure> {
    if !trial.edit.is_empty() {
        let edit = trial.edit.clone();
        (_, trial.document) =
            super::catalog::resource_yaml(&console, &session, ResourceKind::Mapping, edit).await?;
        trial.reference = std::mem::take(&mut trial.edit);
    }
    render(&console, &session, &trial, None).await
}

/// `POST /mappings`: runs the form's mapping on its sample.
pub async fn run(
    State(console): State<Shared>,
    Extension(session): Extension<Session>,
    Form(trial): Form<Trial>,
) -> Result<Markup, Failure> {
    let test = TestMappingRequest {
        reference: trial.reference.clone(),
        document: trial.document.clone(),
        sample: trial.sample.clone(),
    };
    let result = console
        .apis
        .mappings
        .test_mapping(request(&session, test))
        .await
        .map(tonic::Response::into_inner)
        .map_err(|status| status.message().to_owned());
    render(&console, &session, &trial, Some(result)).await
}

async fn render(
    console: &Shared,
    session: &Session,
    trial: &Trial,
    result: Option<Result<TestMappingResponse, String>>,
) -> Result<Markup, Failure> {
    let published = console
        .apis
        .catalog
        .list_resources(request(
            session,
            ListResourcesRequest {
                kind: ResourceKind::Mapping.into(),
            },
        ))
        .await?
        .into_inner()
        .resources;
    Ok(layout::page(
        session,
        "Mappings",
        html! {
            section aria-labelledby="published" {
                h2 #published { "Published versions" }
                @if published.is_empty() {
                    p.none { "The catalog has no mappings." }
                } @else {
                    ul.versions {
                        @for mapping in &published {
                            li {
                                a href=(format!("/catalog/mapping/{}", mapping.name)) { code { (mapping.name) } }
                                " · "
                                a href=(format!("/mappings?{}", layout::query(&[("edit", &mapping.name)]))) { "edit and try" }
                            }
                        }
                    }
                }
            }
            section aria-labelledby="try" {
                h2 #try { "Try a mapping on a sample" }
                form.trial method="post" action="/mappings" {
                    (layout::csrf(session))
                    label for="reference" { "Version (name@version)" }
                    input #reference type="text" name="reference" value=(trial.reference) list="versions" autocomplete="off";
                    datalist #versions { @for mapping in &published { option value=(mapping.name) {} } }
                    label for="document" { "Edited mapping (YAML, optional: when given it runs instead of the published version)" }
                    textarea #document name="document" rows="14" spellcheck="false" { (trial.document) }
                    label for="sample" { "Sample event body (JSON)" }
                    textarea #sample name="sample" rows="8" spellcheck="false" required { (trial.sample) }
                    button type="submit" { "Run" }
                }
            }
            @if let Some(result) = &result {
                section #result aria-labelledby="outcome" aria-live="polite" {
                    h2 #outcome { "Result" }
                    (outcome(result))
                }
            }
        },
    ))
}

fn outcome(result: &Result<TestMappingResponse, String>) -> Markup {
    let response = match result {
        Ok(response) => response,
        Err(message) => return layout::problem(message),
    };
    html! {
        p.verdict {
            @if response.passed {
                span.good { "passes" } ": transform would deliver this output (" code { (response.mapping) } ")"
            } @else {
                span.bad { "does not pass" } " (" code { (response.mapping) } ")"
            }
        }
        @if !response.diagnostics.is_empty() {
            h3 { "Diagnostics" }
            ul.diagnostics {
                @for diagnostic in &response.diagnostics {
                    li { strong { (diagnostic.field) } pre { (diagnostic.message) } }
                }
            }
        }
        (violations("Input schema", &response.input_violations))
        @if let Some(skipped) = &response.skipped {
            p { "The program aborted: the route would skip the event. " (skipped) }
        }
        @if let Some(error) = &response.error {
            h3 { "Runtime error" }
            pre.error { (error) }
        }
        @if let Some(output) = &response.output {
            h3 { "Output" }
            (layout::body(output.as_bytes()))
        }
        (violations("Output schema", &response.output_violations))
    }
}

fn violations(schema: &str, list: &[Violation]) -> Markup {
    html! {
        @if !list.is_empty() {
            h3 { (schema) " violations" }
            ul.violations {
                @for violation in list {
                    li {
                        code { @if violation.path.is_empty() { "(the document)" } @else { (violation.path) } }
                        " " (violation.message)
                    }
                }
            }
        }
    }
}
