//! `switchyard.v1.CatalogService`: get, list, apply and delete catalog resources.

use serde_json::Value as Json;
use switchyard_core::{
    Error as CoreError,
    catalog::{Action, Catalog, CatalogStore, Kind, MappingRef},
    config::Scope,
    outbound::Guard,
};
use tonic::{Request, Response, Status};

use crate::{
    auth,
    error::ApiError,
    proto::convert::{json_to_struct, struct_to_json},
    proto::{
        self, ApplyRequest, ApplyResponse, ChangeAction, DeleteResourceRequest,
        DeleteResourceResponse, GetResourceRequest, ListResourcesRequest, ListResourcesResponse,
        PutResourceRequest, PutResourceResponse, Resource, ResourceKind,
        catalog_service_server::CatalogService,
    },
};

/// The catalog API over the KV store.
#[derive(Clone)]
pub struct CatalogApi {
    store: CatalogStore,
    guard: Guard,
}

impl CatalogApi {
    /// Serves the catalog in `store`; `guard` refuses applies that name an address
    /// outbound requests may not reach.
    pub fn new(store: CatalogStore, guard: Guard) -> Self {
        Self { store, guard }
    }
}

/// Maps a core error to the gRPC code that tells the caller what to do.
/// ABORTED unless the catalog is still at `expected` (0: whatever is current).
fn still_at(expected: u64, actual: u64) -> Result<(), Status> {
    if expected != 0 && expected != actual {
        return Err(ApiError::from(CoreError::Conflict { expected, actual }).into());
    }
    Ok(())
}

fn kind_of(kind: ResourceKind) -> Option<Kind> {
    match kind {
        ResourceKind::Unspecified => None,
        ResourceKind::Source => Some(Kind::Source),
        ResourceKind::Provider => Some(Kind::Provider),
        ResourceKind::Mapping => Some(Kind::Mapping),
        ResourceKind::Route => Some(Kind::Route),
    }
}

fn proto_kind(kind: Kind) -> ResourceKind {
    match kind {
        Kind::Source => ResourceKind::Source,
        Kind::Provider => ResourceKind::Provider,
        Kind::Mapping => ResourceKind::Mapping,
        Kind::Route => ResourceKind::Route,
    }
}

/// Every resource of `catalog`, optionally of one kind, in catalog order.
fn resources(catalog: &Catalog, only: Option<Kind>) -> Vec<Resource> {
    let mut out = Vec::new();
    let mut push = |kind: Kind, name: String, spec: Json| {
        if only.is_none_or(|only| only == kind) {
            out.push(Resource {
                kind: proto_kind(kind) as i32,
                name,
                spec: Some(json_to_struct(spec)),
            });
        }
    };
    for source in &catalog.sources {
        push(Kind::Source, source.name.clone(), to_json(source));
    }
    for provider in &catalog.providers {
        push(Kind::Provider, provider.name.clone(), to_json(provider));
    }
    for mapping in &catalog.mappings {
        push(
            Kind::Mapping,
            mapping.reference().to_string(),
            to_json(mapping),
        );
    }
    for route in &catalog.routes {
        push(Kind::Route, route.name.clone(), to_json(route));
    }
    out
}

impl CatalogApi {
    /// Applies `bundle` to the current catalog as one compare-and-set: the plan, and
    /// the revision after it.
    async fn apply_bundle(
        &self,
        bundle: &Catalog,
        prune: bool,
        dry_run: bool,
        expected_revision: u64,
    ) -> Result<(Vec<proto::Change>, u64), Status> {
        self.guard
            .check_catalog(bundle)
            .map_err(|err| Status::invalid_argument(err.to_string()))?;
        let current = self.store.load().await.map_err(ApiError::from)?;
        still_at(expected_revision, current.revision)?;
        let (next, changes) = current
            .catalog
            .apply(bundle, prune)
            .map_err(|err| Status::invalid_argument(err.to_string()))?;
        let changed = changes
            .iter()
            .any(|change| change.action != Action::Unchanged);
        let revision = if dry_run || !changed {
            current.revision
        } else {
            let revision = self
                .store
                .save(&next, current.revision)
                .await
                .map_err(ApiError::from)?;
            tracing::info!(revision, changes = changes.len(), "catalog applied");
            revision
        };
        let spec = |catalog: &Catalog, kind: Kind, name: &str| {
            resources(catalog, Some(kind))
                .into_iter()
                .find(|resource| resource.name == name)
                .and_then(|resource| resource.spec)
                .map(|spec| struct_to_json(&spec))
                .unwrap_or_default()
        };
        let changes = changes
            .into_iter()
            .map(|change| proto::Change {
                kind: proto_kind(change.kind) as i32,
                diff: if change.action == Action::Update {
                    let mut lines = Vec::new();
                    json_diff(
                        "",
                        &spec(&current.catalog, change.kind, &change.name),
                        &spec(&next, change.kind, &change.name),
                        &mut lines,
                    );
                    lines
                } else {
                    Vec::new()
                },
                name: change.name,
                action: match change.action {
                    Action::Create => ChangeAction::Create,
                    Action::Update => ChangeAction::Update,
                    Action::Delete => ChangeAction::Delete,
                    Action::Unchanged => ChangeAction::Unchanged,
                } as i32,
            })
            .collect();
        Ok((changes, revision))
    }
}

/// One line per field that differs between `before` and `after`, under `path`.
fn json_diff(path: &str, before: &Json, after: &Json, lines: &mut Vec<String>) {
    let at = |key: &str| {
        if path.is_empty() {
            key.to_owned()
        } else {
            format!("{path}.{key}")
        }
    };
    match (before, after) {
        (Json::Object(old), Json::Object(new)) => {
            let keys: std::collections::BTreeSet<&String> = old.keys().chain(new.keys()).collect();
            for key in keys {
                match (old.get(key), new.get(key)) {
                    (Some(old), Some(new)) => json_diff(&at(key), old, new, lines),
                    (Some(old), None) => lines.push(format!("- {}: {old}", at(key))),
                    (None, Some(new)) => lines.push(format!("+ {}: {new}", at(key))),
                    (None, None) => {}
                }
            }
        }
        (old, new) if old != new => lines.push(format!("{path}: {old} → {new}")),
        _ => {}
    }
}

fn to_json(resource: &impl serde::Serialize) -> Json {
    serde_json::to_value(resource).expect("catalog resources serialize")
}

#[tonic::async_trait]
impl CatalogService for CatalogApi {
    async fn get_resource(
        &self,
        request: Request<GetResourceRequest>,
    ) -> Result<Response<Resource>, Status> {
        auth::require(&request, Scope::Read, "GetResource")?;
        let request = request.into_inner();
        let kind =
            kind_of(request.kind()).ok_or_else(|| Status::invalid_argument("kind: must be set"))?;
        if kind == Kind::Mapping {
            request
                .name
                .parse::<MappingRef>()
                .map_err(|err| Status::invalid_argument(format!("name: {err}")))?;
        }
        let snapshot = self.store.load().await.map_err(ApiError::from)?;
        resources(&snapshot.catalog, Some(kind))
            .into_iter()
            .find(|resource| resource.name == request.name)
            .map(Response::new)
            .ok_or_else(|| Status::not_found(format!("no {kind} named {:?}", request.name)))
    }

    async fn list_resources(
        &self,
        request: Request<ListResourcesRequest>,
    ) -> Result<Response<ListResourcesResponse>, Status> {
        auth::require(&request, Scope::Read, "ListResources")?;
        let only = kind_of(request.into_inner().kind());
        let snapshot = self.store.load().await.map_err(ApiError::from)?;
        Ok(Response::new(ListResourcesResponse {
            resources: resources(&snapshot.catalog, only),
            revision: snapshot.revision,
        }))
    }

    async fn apply(
        &self,
        request: Request<ApplyRequest>,
    ) -> Result<Response<ApplyResponse>, Status> {
        if request.get_ref().dry_run {
            auth::require(&request, Scope::Read, "a dry-run Apply")?;
        } else {
            auth::require(&request, Scope::Admin, "Apply")?;
        }
        let request = request.into_inner();
        let bundle = Catalog::parse_yaml(&request.document)
            .map_err(|err| Status::invalid_argument(err.to_string()))?;
        let (changes, revision) = self
            .apply_bundle(
                &bundle,
                request.prune,
                request.dry_run,
                request.expected_revision,
            )
            .await?;
        Ok(Response::new(ApplyResponse {
            changes,
            revision,
            dry_run: request.dry_run,
        }))
    }

    async fn put_resource(
        &self,
        request: Request<PutResourceRequest>,
    ) -> Result<Response<PutResourceResponse>, Status> {
        if request.get_ref().dry_run {
            auth::require(&request, Scope::Read, "a dry-run PutResource")?;
        } else {
            auth::require(&request, Scope::Admin, "PutResource")?;
        }
        let request = request.into_inner();
        let resource = request
            .resource
            .ok_or_else(|| Status::invalid_argument("resource: must be set"))?;
        let kind = kind_of(resource.kind())
            .ok_or_else(|| Status::invalid_argument("resource.kind: must be set"))?;
        let mut spec = resource
            .spec
            .as_ref()
            .map(struct_to_json)
            .unwrap_or_default();
        let Some(fields) = spec.as_object_mut() else {
            return Err(Status::invalid_argument("resource.spec: must be an object"));
        };
        let named = match kind {
            Kind::Mapping => {
                let reference = resource
                    .name
                    .parse::<MappingRef>()
                    .map_err(|err| Status::invalid_argument(format!("resource.name: {err}")))?;
                fields
                    .entry("name")
                    .or_insert_with(|| reference.name.clone().into());
                fields
                    .entry("version")
                    .or_insert_with(|| reference.version.into());
                format!(
                    "{}@{}",
                    fields["name"].as_str().unwrap_or_default(),
                    fields["version"]
                )
            }
            _ => fields
                .entry("name")
                .or_insert_with(|| resource.name.clone().into())
                .as_str()
                .unwrap_or_default()
                .to_owned(),
        };
        if named != resource.name {
            return Err(Status::invalid_argument(format!(
                "resource.spec.name: {named:?} is not the resource's name {:?}",
                resource.name
            )));
        }
        let document = serde_json::json!({ format!("{kind}s"): [spec] }).to_string();
        let bundle = Catalog::parse_yaml(&document)
            .map_err(|err| Status::invalid_argument(err.to_string()))?;
        let (changes, revision) = self
            .apply_bundle(&bundle, false, request.dry_run, request.expected_revision)
            .await?;
        Ok(Response::new(PutResourceResponse {
            change: changes.into_iter().next(),
            revision,
        }))
    }

    async fn delete_resource(
        &self,
        request: Request<DeleteResourceRequest>,
    ) -> Result<Response<DeleteResourceResponse>, Status> {
        auth::require(&request, Scope::Admin, "DeleteResource")?;
        let request = request.into_inner();
        let kind =
            kind_of(request.kind()).ok_or_else(|| Status::invalid_argument("kind: must be set"))?;
        let current = self.store.load().await.map_err(ApiError::from)?;
        still_at(request.expected_revision, current.revision)?;
        let next = current
            .catalog
            .without(kind, &request.name)
            .map_err(|err| Status::invalid_argument(err.to_string()))?
            .ok_or_else(|| Status::not_found(format!("no {kind} named {:?}", request.name)))?;
        let revision = self
            .store
            .save(&next, current.revision)
            .await
            .map_err(ApiError::from)?;
        tracing::info!(revision, %kind, name = %request.name, "catalog resource deleted");
        Ok(Response::new(DeleteResourceResponse { revision }))
    }
}
