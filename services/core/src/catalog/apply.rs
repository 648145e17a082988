//! Applying a bundle over the current catalog: the plan of what changes, merging
//! by name (mappings by `name@version`), pruning what the bundle leaves out, and
//! deleting one resource while nothing refers to it.

use super::{Catalog, FieldError, Kind, ValidationErrors};

/// What applying a bundle does to one resource.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// The resource is new.
    Create,
    /// The resource exists and changes.
    Update,
    /// The resource is removed (apply with prune).
    Delete,
    /// The resource exists as given.
    Unchanged,
}

/// One line of an apply plan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    /// The resource's kind.
    pub kind: Kind,
    /// Its name (`name@version` for mappings).
    pub name: String,
    /// What happens to it.
    pub action: Action,
}

impl Catalog {
    /// Merges `bundle` into this catalog (create or update by name; with `prune`, also
    /// delete what the bundle does not name), validates the result and returns it with
    /// the plan. Published mapping versions cannot be changed, only added or removed.
    pub fn apply(
        &self,
        bundle: &Catalog,
        prune: bool,
    ) -> Result<(Catalog, Vec<Change>), ValidationErrors> {
        let mut errors = Vec::new();
        for (i, m) in bundle.mappings.iter().enumerate() {
            if let Some(existing) = self.mapping(&m.reference())
                && !existing.same_version_as(m)
            {
                errors.push(FieldError {
                    path: format!("mappings[{i}]"),
                    message: format!(
                        "{} is already published with a different program or schema; mapping versions are immutable, publish version {} instead",
                        m.reference(),
                        self.next_mapping_version(&m.name)
                    ),
                });
            }
        }
        bundle.check_unique_names(&mut |path, message| errors.push(FieldError { path, message }));
        if !errors.is_empty() {
            return Err(ValidationErrors(errors));
        }

        let mut changes = Vec::new();
        let next = Catalog {
            sources: merge(
                &self.sources,
                &bundle.sources,
                prune,
                |s| s.name.clone(),
                Kind::Source,
                &mut changes,
            ),
            providers: merge(
                &self.providers,
                &bundle.providers,
                prune,
                |p| p.name.clone(),
                Kind::Provider,
                &mut changes,
            ),
            mappings: merge(
                &self.mappings,
                &bundle.mappings,
                prune,
                |m| m.reference().to_string(),
                Kind::Mapping,
                &mut changes,
            ),
            routes: merge(
                &self.routes,
                &bundle.routes,
                prune,
                |r| r.name.clone(),
                Kind::Route,
                &mut changes,
            ),
        };
        next.validate()?;
        Ok((next, changes))
    }

    /// This catalog without the resource `name` of `kind` (`name@version` for a
    /// mapping), validated: `Ok(None)` when there is no such resource, an error naming
    /// whatever still refers to it.
    pub fn without(&self, kind: Kind, name: &str) -> Result<Option<Catalog>, ValidationErrors> {
        let mut next = self.clone();
        let before = next.len();
        match kind {
            Kind::Source => next.sources.retain(|s| s.name != name),
            Kind::Provider => next.providers.retain(|p| p.name != name),
            Kind::Mapping => next.mappings.retain(|m| m.reference().to_string() != name),
            Kind::Route => next.routes.retain(|r| r.name != name),
        }
        if next.len() == before {
            return Ok(None);
        }
        next.validate()?;
        Ok(Some(next))
    }

    fn len(&self) -> usize {
        self.sources.len() + self.providers.len() + self.mappings.len() + self.routes.len()
    }

    /// The version number the next publication of mapping `name` should use.
    pub fn next_mapping_version(&self, name: &str) -> u32 {
        self.mappings
            .iter()
            .filter(|m| m.name == name)
            .map(|m| m.version)
            .max()
            .unwrap_or(0)
            + 1
    }
}

/// Merges `incoming` over `current` by key, recording what happens to each resource.
fn merge<T: Clone + PartialEq>(
    current: &[T],
    incoming: &[T],
    prune: bool,
    key: impl Fn(&T) -> String,
    kind: Kind,
    changes: &mut Vec<Change>,
) -> Vec<T> {
    let mut out = Vec::with_capacity(current.len() + incoming.len());
    for existing in current {
        let name = key(existing);
        match incoming.iter().find(|item| key(item) == name) {
            Some(item) => {
                let action = if item == existing {
                    Action::Unchanged
                } else {
                    Action::Update
                };
                changes.push(Change { kind, name, action });
                out.push(item.clone());
            }
            None if prune => changes.push(Change {
                kind,
                name,
                action: Action::Delete,
            }),
            None => out.push(existing.clone()),
        }
    }
    for item in incoming {
        let name = key(item);
        if !current.iter().any(|existing| key(existing) == name) {
            changes.push(Change {
                kind,
                name,
                action: Action::Create,
            });
            out.push(item.clone());
        }
    }
    out
}
