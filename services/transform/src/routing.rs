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
        let routes = catalog
            .routes
            .iter()
            .filter_map(|route| {
                let program = programs.get(&route.mapping)?.clone();
                Some(CompiledRoute {
                    route: route.clone(),
                    mapping: route.mapping.to_string(),
                    program,
                })
            })
            .collect();
        Ok(Self {
            revision,
            routes,
            programs,
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
