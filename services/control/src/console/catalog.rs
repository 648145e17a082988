//! The catalog: every resource and its YAML; for admin keys, an apply that shows the
//! dry run's plan first and applies only what was shown.

use axum::{
    Extension, Form,
    extract::{Path, State},
};
use maud::{Markup, html};
use serde::Deserialize;

use super::{Failure, Shared, layout, request, session::Session};
use crate::proto::{
    ApplyRequest, ApplyResponse, ChangeAction, GetResourceRequest, ListResourcesRequest,
    ResourceKind, catalog_service_server::CatalogService, convert::struct_to_json,
};

/// The kinds, as the pages' paths name them.
const KINDS: [(ResourceKind, &str, &str); 4] = [
    (ResourceKind::Source, "source", "Sources"),
    (ResourceKind::Provider, "provider", "Providers"),
    (ResourceKind::Mapping, "mapping", "Mappings"),
    (ResourceKind::Route, "route", "Routes"),
];

/// `GET /catalog`.
pub async fn list(
    State(console): State<Shared>,
    Extension(session): Extension<Session>,
) -> Result<Markup, Failure> {
    let listed = console
        .apis
        .catalog
        .list_resources(request(
            &session,
            ListResourcesRequest {
                kind: ResourceKind::Unspecified.into(),
            },
        ))
        .await?
        .into_inner();
    Ok(layout::page(
        &session,
        "Catalog",
        html! {
            p { "Revision " (listed.revision) "."
                @if layout::can_administer(&session) { " " a href="/catalog/apply" { "Apply a document…" } }
            }
            @for (kind, path, title) in KINDS {
                section {
                    h2 { (title) }
                    ul.resources {
                        @for resource in listed.resources.iter().filter(|r| r.kind == kind as i32) {
                            li { a href=(format!("/catalog/{path}/{}", resource.name)) { code { (resource.name) } } }
                        }
                    }
                }
            }
        },
    ))
}

/// `GET /catalog/{kind}/{name}`: one resource as YAML.
pub async fn show(
    State(console): State<Shared>,
    Extension(session): Extension<Session>,
    Path((kind, name)): Path<(String, String)>,
) -> Result<Markup, Failure> {
    let (kind, _, title) = KINDS
        .into_iter()
        .find(|(_, path, _)| *path == kind)
        .ok_or_else(|| {
            Failure::NotFound(format!(
                "{kind:?} is not a kind of resource: source, provider, mapping or route"
            ))
        })?;
    let (name, yaml) = resource_yaml(&console, &session, kind, name).await?;
    Ok(layout::page(
        &session,
        &format!("{} {name}", title.trim_end_matches('s')),
        html! {
            pre.yaml { (yaml) }
            @if kind == ResourceKind::Mapping {
                p { a href=(format!("/mappings?{}", layout::query(&[("edit", &name)]))) { "Edit and try on a sample" } }
            }
        },
    ))
}

/// One resource's name and its spec as YAML, in the catalog document format.
pub async fn resource_yaml(
    console: &Shared,
    session: &Session,
    kind: ResourceKind,
    name: String,
) -> Result<(String, String), Failure> {
    let resource = console
        .apis
        .catalog
        .get_resource(request(
            session,
            GetResourceRequest {
                kind: kind.into(),
                name,
            },
        ))
        .await?
        .into_inner();
    let spec = resource
        .spec
        .map(|spec| struct_to_json(&spec))
        .unwrap_or_default();
    Ok((
        resource.name,
        serde_yaml_ng::to_string(&spec).unwrap_or_default(),
    ))
}

/// The apply form's fields.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct ApplyForm {
    document: String,
    /// `"on"` when ticked: delete what the document does not name.
    prune: Option<String>,
    /// `plan` (the dry run) or `apply`.
    step: String,
    /// The revision the plan was made at; the apply fails if the catalog moved on.
    revision: u64,
}

/// `GET /catalog/apply`: the form.
pub async fn form(Extension(session): Extension<Session>) -> Markup {
    apply_page(&session, &ApplyForm::default(), None)
}

/// `POST /catalog/apply`: the plan of a dry run, or, for a shown plan, the apply.
pub async fn apply(
    State(console): State<Shared>,
    Extension(session): Extension<Session>,
    Form(form): Form<ApplyForm>,
) -> Result<Markup, Failure> {
    let dry_run = form.step != "apply";
    let apply = ApplyRequest {
        document: form.document.clone(),
        dry_run,
        prune: form.prune.is_some(),
        expected_revision: if dry_run { 0 } else { form.revision },
    };
    let result = console.apis.catalog.apply(request(&session, apply)).await;
    // A document that does not validate is the form's answer, not an error page.
    let result = match result {
        Ok(response) => Ok(response.into_inner()),
        Err(status) if status.code() == tonic::Code::InvalidArgument => {
            Err(status.message().to_owned())
        }
        Err(status) => return Err(status.into()),
    };
    Ok(apply_page(&session, &form, Some(result)))
}

fn apply_page(
    session: &Session,
    form: &ApplyForm,
    result: Option<Result<ApplyResponse, String>>,
) -> Markup {
    let admin = layout::can_administer(session);
    layout::page(
        session,
        "Apply to the catalog",
        html! {
            @if !admin {
                p.problem { "Applying needs an admin key; this one has scope " (session.caller.scope) "." }
            }
            @match &result {
                Some(Err(message)) => {
                    h2 { "The document was refused; nothing changed" }
                    pre.error role="alert" { (message) }
                }
                Some(Ok(response)) if response.dry_run => {
                    h2 { "Plan (dry run at revision " (response.revision) "; nothing changed yet)" }
                    (plan(response))
                    @if admin && response.changes.iter().any(|c| c.action != ChangeAction::Unchanged as i32) {
                        form method="post" action="/catalog/apply" {
                            (layout::csrf(session))
                            input type="hidden" name="document" value=(form.document);
                            @if form.prune.is_some() { input type="hidden" name="prune" value="on"; }
                            input type="hidden" name="revision" value=(response.revision);
                            button type="submit" name="step" value="apply" { "Apply this plan" }
                        }
                    }
                }
                Some(Ok(response)) => {
                    h2 role="status" { "Applied: the catalog is at revision " (response.revision) }
                    (plan(response))
                }
                None => {}
            }
            @if admin {
                form.apply method="post" action="/catalog/apply" {
                    (layout::csrf(session))
                    label for="document" { "Catalog document (YAML or JSON)" }
                    textarea #document name="document" rows="20" spellcheck="false" required { (form.document) }
                    label { input type="checkbox" name="prune" checked[form.prune.is_some()]; " Delete resources the document does not name" }
                    button type="submit" name="step" value="plan" { "Show the plan" }
                }
            }
        },
    )
}

fn plan(response: &ApplyResponse) -> Markup {
    html! {
        table.plan {
            thead { tr { th scope="col" { "Resource" } th scope="col" { "Change" } th scope="col" { "Fields" } } }
            tbody {
                @for change in &response.changes {
                    @let kind = KINDS.iter().find(|(kind, _, _)| *kind as i32 == change.kind).map_or("?", |(_, path, _)| path);
                    @let action = ChangeAction::try_from(change.action).unwrap_or(ChangeAction::Unspecified);
                    tr {
                        td { (kind) " " code { (change.name) } }
                        td { (action_name(action)) }
                        td { @if !change.diff.is_empty() { pre.diff { (change.diff.join("\n")) } } }
                    }
                }
            }
        }
    }
}

fn action_name(action: ChangeAction) -> &'static str {
    match action {
        ChangeAction::Create => "create",
        ChangeAction::Update => "update",
        ChangeAction::Delete => "delete",
        ChangeAction::Unchanged => "unchanged",
        ChangeAction::Unspecified => "?",
    }
}
