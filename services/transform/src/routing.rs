//! Routes compiled from a catalog snapshot.
//!
//! Built once per catalog change; mapping versions are immutable, so programs already
//! compiled are reused and only new versions are compiled.

use std::{collections::HashMap, sync::Arc};

use switchyard_core::{
    catalog::{Catalog, MappingRef, Route},
    mapping::{CompileError, Program},
};

/// A route with its compiled program.
pub struct CompiledRoute {
    /// The route as configured.
    pub route: Route,
    /// Its mapping as `name@version`.
    pub mapping: String,
    /// The compiled program.
    pub program: Arc<Program>,
    /// The compiled ordering-key expression, if the route has one.
    pub ordering_key: Option<Program>,
}

/// Every route of one catalog revision.
#[derive(Default)]
pub struct Routing {
    /// The catalog revision these routes come from.
    pub revision: u64,
    routes: Vec<CompiledRoute>,
    programs: HashMap<MappingRef, Arc<Program>>,
}

impl Routing {
    /// Compiles `catalog`, reusing programs from `previous`.
    pub fn build(
        catalog: &Catalog,
        revision: u64,
        previous: &Routing,
    ) -> Result<Self, (MappingRef, CompileError)> {
        let mut programs = HashMap::new();
        for mapping in &catalog.mappings {
            let reference = mapping.reference();
            let program = match previous.programs.get(&reference) {
                Some(program) => program.clone(),
                None => Arc::new(
                    Program::compile(&mapping.program).map_err(|err| (reference.clone(), err))?,
                ),
            };
            programs.insert(reference, program);
        }
        let mut routes = Vec::new();
        for route in &catalog.routes {
            let Some(program) = programs.get(&route.mapping).cloned() else {
                continue;
            };
            let ordering_key = match &route.ordering_key {
                Some(expression) => {
                    Some(Program::compile(expression).map_err(|err| (route.mapping.clone(), err))?)
                }
                None => None,
            };
            routes.push(CompiledRoute {
                route: route.clone(),
                mapping: route.mapping.to_string(),
                program,
                ordering_key,
            });
        }
        Ok(Self {
            revision,
            routes,
            programs,
        })
    }

    /// The ordering key of an event on `route`, when the route has one and it yields a
    /// value: a text value as it is, anything else as JSON.
    pub fn ordering_key(route: &CompiledRoute, body: &[u8]) -> Option<String> {
        let value = route.ordering_key.as_ref()?.evaluate_json(body).ok()??;
        Some(match value {
            vrl::value::Value::Bytes(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
            other => serde_json::to_string(&other).ok()?,
        })
    }

    /// The routes taking events of `source` with `event_type`.
    pub fn matching<'a>(
        &'a self,
        source: &'a str,
        event_type: &'a str,
    ) -> impl Iterator<Item = &'a CompiledRoute> + 'a {
        self.routes.iter().filter(move |compiled| {
            compiled.route.source == source && compiled.route.matches_event_type(event_type)
        })
    }
}
