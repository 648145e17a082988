//! `syctl apply`, `get`, `describe` and `delete`: the catalog's resources.

use std::path::PathBuf;

use clap::ValueEnum;
use serde_json::{Value, json};
use switchyard_proto::{
    ApplyRequest, DeleteResourceRequest, GetCanaryRequest, GetProviderStatusRequest,
    GetResourceRequest, ListResourcesRequest, Resource, ResourceKind,
    catalog_service_client::CatalogServiceClient, convert::struct_to_json,
    provider_service_client::ProviderServiceClient, route_service_client::RouteServiceClient,
};

use crate::{
    connect::Connection,
    exit::{Failure, usage},
    flags::read,
    output::{Output, Text, action_name, kind_name, yaml},
    providers, routes,
};

#[derive(Clone, Copy, ValueEnum)]
pub enum Kind {
    #[value(alias = "sources")]
    Source,
    #[value(alias = "providers")]
    Provider,
    #[value(alias = "mappings")]
    Mapping,
    #[value(alias = "routes")]
    Route,
}

impl From<Kind> for ResourceKind {
    fn from(kind: Kind) -> Self {
        match kind {
            Kind::Source => Self::Source,
            Kind::Provider => Self::Provider,
            Kind::Mapping => Self::Mapping,
            Kind::Route => Self::Route,
        }
    }
}

/// Applies a catalog document: creates or updates what it names.
pub async fn apply(
    connection: Connection,
    file: PathBuf,
    dry_run: bool,
    prune: bool,
) -> Result<Output, Failure> {
    let document = read(&file)?;
    let response = CatalogServiceClient::new(connection)
        .apply(ApplyRequest {
            document,
            dry_run,
            prune,
            expected_revision: 0,
        })
        .await?
        .into_inner();
    let mut text = Text::default();
    for change in &response.changes {
        text.line(format_args!(
            "{:<10} {:<9} {}",
            action_name(change.action()),
            kind_name(change.kind()),
            change.name
        ));
        for line in &change.diff {
            text.line(format_args!("           {line}"));
        }
    }
    let verb = if response.dry_run {
        "would be at"
    } else {
        "now at"
    };
    text.line(format_args!(
        "catalog {verb} revision {}",
        response.revision
    ));
    let changes: Vec<_> = response
        .changes
        .iter()
        .map(|c| {
            json!({
                "kind": kind_name(c.kind()),
                "name": c.name,
                "action": action_name(c.action()),
                "diff": c.diff,
            })
        })
        .collect();
    Ok(Output::with_table(
        json!({"revision": response.revision, "dry_run": response.dry_run, "changes": changes}),
        text,
    ))
}

/// Deletes one resource.
pub async fn delete(connection: Connection, kind: Kind, name: String) -> Result<Output, Failure> {
    let response = CatalogServiceClient::new(connection)
        .delete_resource(DeleteResourceRequest {
            kind: ResourceKind::from(kind) as i32,
            name: name.clone(),
            expected_revision: 0,
        })
        .await?
        .into_inner();
    let kind = kind_name(ResourceKind::from(kind));
    let mut text = Text::default();
    text.line(format_args!(
        "deleted {kind} {name}; catalog now at revision {}",
        response.revision
    ));
    Ok(Output::with_table(
        json!({"deleted": {"kind": kind, "name": name}, "revision": response.revision}),
        text,
    ))
}

/// Lists resources (of one kind), or shows one.
pub async fn get(
    connection: Connection,
    kind: Option<Kind>,
    name: Option<String>,
) -> Result<Output, Failure> {
    let mut client = CatalogServiceClient::new(connection);
    let resources = match (kind, name) {
        (Some(kind), Some(name)) => vec![
            client
                .get_resource(GetResourceRequest {
                    kind: ResourceKind::from(kind) as i32,
                    name,
                })
                .await?
                .into_inner(),
        ],
        (kind, None) => {
            client
                .list_resources(ListResourcesRequest {
                    kind: kind.map_or(ResourceKind::Unspecified, ResourceKind::from) as i32,
                })
                .await?
                .into_inner()
                .resources
        }
        (None, Some(_)) => return Err(usage("give the kind before the name")),
    };
    Ok(resources_output(&resources))
}

fn resources_output(resources: &[Resource]) -> Output {
    let mut text = Text::default();
    text.line(format_args!("{:<9} {:<32} DETAIL", "KIND", "NAME"));
    for resource in resources {
        let spec = resource
            .spec
            .as_ref()
            .map(struct_to_json)
            .unwrap_or_default();
        let detail = match resource.kind() {
            ResourceKind::Provider => spec["url"].as_str().unwrap_or_default().to_owned(),
            ResourceKind::Route => format!(
                "{} → {} → {}",
                spec["source"].as_str().unwrap_or_default(),
                spec["mapping"].as_str().unwrap_or_default(),
                spec["provider"].as_str().unwrap_or_default()
            ),
            _ => spec["description"].as_str().unwrap_or_default().to_owned(),
        };
        text.line(format_args!(
            "{:<9} {:<32} {detail}",
            kind_name(resource.kind()),
            resource.name
        ));
    }
    let items: Vec<_> = resources
        .iter()
        .map(|r| {
            json!({
                "kind": kind_name(r.kind()),
                "name": r.name,
                "spec": r.spec.as_ref().map(struct_to_json),
            })
        })
        .collect();
    Output::with_table(Value::Array(items), text)
}

/// A resource, the routes that refer to it, and for a provider its status.
pub async fn describe(connection: Connection, kind: Kind, name: String) -> Result<Output, Failure> {
    let kind = ResourceKind::from(kind);
    let mut catalog = CatalogServiceClient::new(connection.clone());
    let resource = catalog
        .get_resource(GetResourceRequest {
            kind: kind as i32,
            name: name.clone(),
        })
        .await?
        .into_inner();
    let spec = resource
        .spec
        .as_ref()
        .map(struct_to_json)
        .unwrap_or_default();
    let routes = catalog
        .list_resources(ListResourcesRequest {
            kind: ResourceKind::Route as i32,
        })
        .await?
        .into_inner()
        .resources;
    let field = match kind {
        ResourceKind::Source => "source",
        ResourceKind::Provider => "provider",
        ResourceKind::Mapping => "mapping",
        _ => "",
    };
    let referred_by: Vec<String> = routes
        .iter()
        .filter(|route| {
            let spec = route.spec.as_ref().map(struct_to_json).unwrap_or_default();
            !field.is_empty()
                && (spec[field] == name.as_str()
                    || (field == "mapping" && spec["canary"]["mapping"] == name.as_str()))
        })
        .map(|route| route.name.clone())
        .collect();
    let status = match kind {
        ResourceKind::Provider => Some(providers::to_json(
            &ProviderServiceClient::new(connection)
                .get_provider_status(GetProviderStatusRequest {
                    provider: name.clone(),
                })
                .await?
                .into_inner(),
        )),
        ResourceKind::Route => {
            let canary = RouteServiceClient::new(connection)
                .get_canary(GetCanaryRequest {
                    route: name.clone(),
                })
                .await;
            match canary {
                Ok(canary) => Some(json!({ "canary": routes::to_json(&canary.into_inner()) })),
                Err(status) if status.code() == tonic::Code::NotFound => None,
                Err(status) => return Err(status.into()),
            }
        }
        _ => None,
    };

    let mut text = Text::default();
    text.line(format_args!("{} {}", kind_name(kind), name));
    text.blank();
    text.indented(&yaml(&spec));
    if !field.is_empty() {
        text.blank();
        match referred_by.as_slice() {
            [] => text.line("used by no route"),
            routes => text.line(format_args!("used by routes: {}", routes.join(", "))),
        }
    }
    if let Some(status) = &status {
        text.blank();
        text.line("status:");
        let mut shown = status.clone();
        if let Some(object) = shown.as_object_mut() {
            object.retain(|_, value| !value.is_null() && value != "");
        }
        text.indented(&yaml(&shown));
    }
    Ok(Output::with_table(
        json!({
            "kind": kind_name(kind),
            "name": name,
            "spec": spec,
            "routes": referred_by,
            "status": status,
        }),
        text,
    ))
}
