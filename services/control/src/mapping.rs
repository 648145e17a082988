//! `switchyard.v1.MappingService`: dry-runs of mapping versions on samples.

use switchyard_core::{
    catalog::{Catalog, CatalogStore, Mapping, MappingRef},
    config::Scope,
    contract::Violation,
    mapping::CompiledMapping,
};
use tonic::{Request, Response, Status};

use crate::{
    auth,
    error::ApiError,
    proto::{
        self, TestMappingRequest, TestMappingResponse, mapping_service_server::MappingService,
    },
};

/// Dry-runs over the catalog in KV.
#[derive(Clone)]
pub struct MappingApi {
    store: CatalogStore,
}

impl MappingApi {
    /// Tests mappings of the catalog in `store`, or given inline.
    pub fn new(store: CatalogStore) -> Self {
        Self { store }
    }

    /// The mapping a request names: inline in `document`, or published.
    async fn mapping(&self, request: &TestMappingRequest) -> Result<Mapping, Status> {
        let reference = match request.reference.trim() {
            "" => None,
            text => Some(
                text.parse::<MappingRef>()
                    .map_err(|err| Status::invalid_argument(format!("reference: {err}")))?,
            ),
        };
        if request.document.trim().is_empty() {
            let reference = reference.ok_or_else(|| {
                Status::invalid_argument("reference or document: say which mapping to test")
            })?;
            let snapshot = self.store.load().await.map_err(ApiError::from)?;
            return snapshot
                .catalog
                .mapping(&reference)
                .cloned()
                .ok_or_else(|| Status::not_found(format!("no mapping {reference} is published")));
        }
        inline(&request.document, reference.as_ref())
    }
}

/// Reads a mapping given inline: a lone mapping, or a catalog document holding it.
fn inline(document: &str, reference: Option<&MappingRef>) -> Result<Mapping, Status> {
    let invalid = |message: String| Status::invalid_argument(format!("document: {message}"));
    let value: serde_json::Value =
        serde_yaml_ng::from_str(document).map_err(|err| invalid(err.to_string()))?;
    if value.get("mappings").is_none() {
        return serde_json::from_value(value).map_err(|err| invalid(err.to_string()));
    }
    let catalog = Catalog::parse_yaml(document).map_err(|err| invalid(err.to_string()))?;
    match reference {
        Some(reference) => catalog
            .mapping(reference)
            .cloned()
            .ok_or_else(|| Status::not_found(format!("document: holds no mapping {reference}"))),
        None => match catalog.mappings.as_slice() {
            [only] => Ok(only.clone()),
            _ => Err(invalid(format!(
                "holds {} mappings; give the reference of the one to test",
                catalog.mappings.len()
            ))),
        },
    }
}

fn violations(list: Vec<Violation>) -> Vec<proto::Violation> {
    list.into_iter()
        .map(|v| proto::Violation {
            path: v.path,
            message: v.message,
        })
        .collect()
}

#[tonic::async_trait]
impl MappingService for MappingApi {
    async fn test_mapping(
        &self,
        request: Request<TestMappingRequest>,
    ) -> Result<Response<TestMappingResponse>, Status> {
        auth::require(&request, Scope::Read, "TestMapping")?;
        let request = request.into_inner();
        let sample: serde_json::Value = serde_json::from_str(&request.sample)
            .map_err(|err| Status::invalid_argument(format!("sample: not JSON: {err}")))?;
        let mapping = self.mapping(&request).await?;
        let mut response = TestMappingResponse {
            mapping: mapping.reference().to_string(),
            ..Default::default()
        };
        let compiled = match CompiledMapping::compile(&mapping) {
            Ok(compiled) => compiled,
            Err(errors) => {
                response.diagnostics = errors
                    .into_iter()
                    .map(|error| proto::Diagnostic {
                        field: error.field.to_owned(),
                        message: error.message,
                    })
                    .collect();
                return Ok(Response::new(response));
            }
        };
        let report = compiled.test(&sample);
        response.passed = report.passed();
        response.output = report
            .output
            .as_ref()
            .map(|output| serde_json::to_string(output).expect("JSON values serialize"));
        response.skipped = report.skipped;
        response.error = report.error;
        response.input_violations = violations(report.input_violations);
        response.output_violations = violations(report.output_violations);
        Ok(Response::new(response))
    }
}
