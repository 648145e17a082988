use super::*;

const CATALOG: &str = r#"
sources:
  - name: shop
providers:
  - name: crm
    url: http://127.0.0.1:9000/hooks
    headers:
      X-Team: integrations
      Authorization: { secret: CRM_TOKEN, prefix: "Bearer " }
mappings:
  - name: order-to-contact
    version: 1
    program: |
      . = {"email": .customer.email}
routes:
  - name: orders
    source: shop
    event_types: ["order.*"]
    mapping: order-to-contact@1
    provider: crm
"#;

fn catalog() -> Catalog {
    Catalog::from_yaml(CATALOG).unwrap()
}

#[test]
fn parses_the_documented_format_with_defaults() {
    let catalog = catalog();
    let provider = catalog.provider("crm").unwrap();
    assert_eq!(provider.method, HttpMethod::Post);
    assert_eq!(provider.timeout, Duration::from_secs(10));
    assert_eq!(provider.retry, RetryPolicy::default());
    assert_eq!(provider.breaker, BreakerPolicy::default());
    assert!(provider.auth.is_none() && provider.rate_limit.is_none());
    assert_eq!(
        provider.headers["Authorization"],
        HeaderValue::Secret(SecretRef {
            secret: "CRM_TOKEN".into(),
            prefix: "Bearer ".into()
        })
    );
    let route = catalog.route("orders").unwrap();
    assert_eq!(route.mapping.to_string(), "order-to-contact@1");
    assert!(route.matches_event_type("order.created"));
    assert!(!route.matches_event_type("customer.created"));
}

#[test]
fn round_trips_through_json_and_yaml() {
    let catalog = catalog();
    let json = serde_json::to_string(&catalog).unwrap();
    assert_eq!(serde_json::from_str::<Catalog>(&json).unwrap(), catalog);
    assert_eq!(Catalog::from_yaml(&catalog.to_yaml()).unwrap(), catalog);
}

#[test]
fn unknown_fields_are_rejected_with_their_location() {
    let err = Catalog::from_yaml("sources:\n  - name: shop\n    colour: blue\n").unwrap_err();
    let text = err.to_string();
    assert!(text.contains("colour"), "{text}");
    assert!(text.contains("line 3"), "{text}");
}

#[test]
fn broken_references_name_the_field() {
    let broken = CATALOG
        .replace("source: shop", "source: shopp")
        .replace("mapping: order-to-contact@1", "mapping: order-to-contact@2");
    let err = Catalog::from_yaml(&broken).unwrap_err();
    let paths: Vec<_> = err.0.iter().map(|e| e.path.as_str()).collect();
    assert_eq!(paths, ["routes[0].source", "routes[0].mapping"], "{err}");
    assert!(err.to_string().contains("no mapping order-to-contact@2"));
}

#[test]
fn invalid_values_are_all_reported() {
    let broken = CATALOG
        .replace("http://127.0.0.1:9000/hooks", "ftp://x")
        .replace("name: shop", "name: Shop!")
        .replace(".customer.email}", ".customer.email");
    let err = Catalog::from_yaml(&broken).unwrap_err();
    let paths: Vec<_> = err.0.iter().map(|e| e.path.as_str()).collect();
    assert!(paths.contains(&"sources[0].name"), "{err}");
    assert!(paths.contains(&"providers[0].url"), "{err}");
    assert!(paths.contains(&"mappings[0].program"), "{err}");
}

#[test]
fn duplicate_names_are_rejected() {
    let mut catalog = catalog();
    catalog.sources.push(catalog.sources[0].clone());
    let err = catalog.validate().unwrap_err();
    assert_eq!(err.0[0].path, "sources[1]");
    assert!(err.0[0].message.contains("sources[0]"));
}

#[test]
fn mapping_references_parse_strictly() {
    assert_eq!(
        "a@3".parse::<MappingRef>().unwrap(),
        MappingRef {
            name: "a".into(),
            version: 3
        }
    );
    assert!("a".parse::<MappingRef>().is_err());
    assert!("a@x".parse::<MappingRef>().is_err());
}

#[test]
fn event_type_globs() {
    assert!(glob_match("*", "anything.at.all"));
    assert!(glob_match("order.*", "order.created"));
    assert!(glob_match("order.*.v2", "order.created.v2"));
    assert!(!glob_match("order.*.v2", "order.created.v1"));
    assert!(glob_match("*.created", "order.created"));
    assert!(!glob_match("order.created", "order.created.x"));
    assert!(glob_match("a*a", "aa"));
    assert!(!glob_match("a*a", "a"));
}

#[test]
fn event_types_are_checked_before_they_become_subjects() {
    assert!(validate_event_type("order.created").is_ok());
    assert!(validate_event_type("order..created").is_err());
    assert!(validate_event_type("order.*").is_err());
    assert!(validate_event_type("").is_err());
    assert!(validate_event_type("has space").is_err());
}

#[test]
fn apply_merges_and_plans() {
    let current = catalog();
    let bundle = Catalog::parse_yaml(
        r#"
sources:
  - name: shop
    description: the web shop
  - name: erp
"#,
    )
    .unwrap();
    let (next, changes) = current.apply(&bundle, false).unwrap();
    assert_eq!(next.sources.len(), 2);
    assert_eq!(next.providers, current.providers);
    assert_eq!(
        changes,
        vec![
            Change {
                kind: Kind::Source,
                name: "shop".into(),
                action: Action::Update
            },
            Change {
                kind: Kind::Source,
                name: "erp".into(),
                action: Action::Create
            },
        ]
    );
}

#[test]
fn apply_with_prune_deletes_what_the_bundle_omits_but_keeps_references_whole() {
    let current = catalog();
    let mut bundle = current.clone();
    bundle.providers.clear();
    let err = current.apply(&bundle, true).unwrap_err();
    assert_eq!(err.0[0].path, "routes[0].provider", "{err}");

    bundle.routes.clear();
    let (next, changes) = current.apply(&bundle, true).unwrap();
    assert!(next.providers.is_empty() && next.routes.is_empty());
    assert!(changes.contains(&Change {
        kind: Kind::Provider,
        name: "crm".into(),
        action: Action::Delete
    }));
    assert!(changes.contains(&Change {
        kind: Kind::Route,
        name: "orders".into(),
        action: Action::Delete
    }));

    let (same, changes) = current.apply(&current, true).unwrap();
    assert_eq!(same, current);
    assert!(changes.iter().all(|c| c.action == Action::Unchanged));
}

#[test]
fn published_mapping_versions_are_immutable() {
    let current = catalog();
    let mut bundle = Catalog::default();
    let mut changed = current.mappings[0].clone();
    changed.program = ". = {}".into();
    bundle.mappings.push(changed);
    let err = current.apply(&bundle, false).unwrap_err();
    assert_eq!(err.0[0].path, "mappings[0]");
    assert!(err.0[0].message.contains("publish version 2"), "{err}");
}

#[test]
fn provider_policies_are_validated_with_their_paths() {
    let broken = CATALOG.replace(
        "    headers:\n",
        "    retry: { schedule: [1s], backoff: { initial: 1s, max: 2s } }\n    rate_limit: { requests: 0 }\n    breaker: { failure_ratio: 1.5 }\n    auth: { basic: { username: \"a:b\", password: { secret: \"no way\" } } }\n    headers:\n",
    );
    let err = Catalog::from_yaml(&broken).unwrap_err();
    let paths: Vec<_> = err.0.iter().map(|e| e.path.as_str()).collect();
    for expected in [
        "providers[0].retry",
        "providers[0].rate_limit",
        "providers[0].breaker.failure_ratio",
        "providers[0].auth.basic.username",
        "providers[0].auth.basic.password.secret",
    ] {
        assert!(paths.contains(&expected), "{expected} in {paths:?}");
    }
}

#[test]
fn an_ordering_key_must_compile() {
    let keyed = CATALOG.replace(
        "    provider: crm\n",
        "    provider: crm\n    ordering_key: .customer.id\n",
    );
    let catalog = Catalog::from_yaml(&keyed).unwrap();
    assert_eq!(
        catalog.routes[0].ordering_key.as_deref(),
        Some(".customer.id")
    );
    let broken = CATALOG.replace(
        "    provider: crm\n",
        "    provider: crm\n    ordering_key: upcase(\n",
    );
    let err = Catalog::from_yaml(&broken).unwrap_err();
    assert_eq!(err.0[0].path, "routes[0].ordering_key");
}

#[test]
fn the_readme_catalog_example_is_valid() {
    let readme = include_str!("../../../../README.md");
    let section = &readme[readme.find("## The catalog").expect("a catalog section")..];
    let start = section.find("```yaml\n").expect("a YAML example") + "```yaml\n".len();
    let example = &section[start..start + section[start..].find("```").unwrap()];
    let catalog = Catalog::from_yaml(example).unwrap_or_else(|err| panic!("README example: {err}"));
    assert!(matches!(catalog.providers[0].auth, Some(Auth::Oauth2(_))));
    assert_eq!(
        catalog.routes[0].ordering_key.as_deref(),
        Some(".customer.email")
    );
}

#[test]
fn the_quickstart_catalog_is_valid() {
    let quickstart = include_str!("../../../../deploy/examples/quickstart.yaml");
    let catalog = Catalog::from_yaml(quickstart).unwrap();
    assert_eq!(catalog.routes.len(), 1);
}
