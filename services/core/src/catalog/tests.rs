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
fn a_provider_names_the_secrets_its_requests_carry() {
    let mut provider = catalog().provider("crm").unwrap().clone();
    assert_eq!(provider.credential_secrets(), ["CRM_TOKEN"]);
    provider.auth = Some(Auth::StandardWebhooks {
        secrets: vec!["WHSEC_NEW".into(), "WHSEC_OLD".into()],
    });
    assert_eq!(
        provider.credential_secrets(),
        ["WHSEC_NEW", "WHSEC_OLD", "CRM_TOKEN"]
    );
    provider.headers.clear();
    provider.auth = None;
    assert!(provider.credential_secrets().is_empty());
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
fn a_mapping_versions_schemas_are_part_of_it() {
    let current = catalog();
    let mut bundle = Catalog::default();
    let mut changed = current.mappings[0].clone();
    changed.description = "descriptions may change".into();
    bundle.mappings.push(changed.clone());
    assert!(current.apply(&bundle, false).is_ok());
    changed.output_schema = Some(serde_json::json!({"type": "object"}));
    bundle.mappings[0] = changed;
    let err = current.apply(&bundle, false).unwrap_err();
    assert!(err.0[0].message.contains("immutable"), "{err}");
}

#[test]
fn a_version_in_use_cannot_be_removed() {
    let current = catalog();
    let mut bundle = current.clone();
    bundle.mappings.clear();
    let err = current.apply(&bundle, true).unwrap_err();
    assert_eq!(err.0[0].path, "routes[0].mapping");
    assert!(err.0[0].message.contains("order-to-contact@1"), "{err}");
}

#[test]
fn schemas_and_filters_are_compiled_when_applied() {
    let broken = CATALOG
        .replace(
            "    program: |\n",
            "    input_schema: { type: 12 }\n    output_schema: { required: [email] }\n    program: |\n",
        )
        .replace("    provider: crm\n", "    provider: crm\n    filter: .status\n");
    let err = Catalog::from_yaml(&broken).unwrap_err();
    let paths: Vec<_> = err.0.iter().map(|e| e.path.as_str()).collect();
    assert_eq!(
        paths,
        ["mappings[0].input_schema", "routes[0].filter"],
        "{err}"
    );
    assert!(err.0[1].message.contains("boolean"), "{err}");

    let good = CATALOG.replace(
        "    provider: crm\n",
        "    provider: crm\n    filter: .status == \"paid\"\n",
    );
    let catalog = Catalog::from_yaml(&good).unwrap();
    assert_eq!(
        catalog.routes[0].filter.as_deref(),
        Some(".status == \"paid\"")
    );
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
    let readme = include_str!("../../README.md");
    let section = &readme[readme.find("## The catalog").expect("a catalog section")..];
    let start = section.find("```yaml\n").expect("a YAML example") + "```yaml\n".len();
    let example = &section[start..start + section[start..].find("```").unwrap()];
    let catalog = Catalog::from_yaml(example)
        .unwrap_or_else(|err| panic!("services/core/README.md example: {err}"));
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
    let webhooks = include_str!("../../../../deploy/examples/webhooks.yaml");
    let catalog = Catalog::from_yaml(webhooks).unwrap();
    assert_eq!(catalog.sources.len(), 5);
    assert!(
        catalog
            .sources
            .iter()
            .all(|source| source.webhook.is_some())
    );
    let database = include_str!("../../../../deploy/examples/database.yaml");
    let catalog = Catalog::from_yaml(database).unwrap();
    assert!(catalog.sources[0].outbox.is_some());
    assert!(catalog.sources[1].cdc.is_some());
}

const SOURCES: &str = r#"
sources:
  - name: stripe
    webhook:
      verify: { stripe: { secrets: [STRIPE_WHSEC], tolerance: 5m } }
    rate_limit: { requests: 100, per: 1s, burst: 20 }
    schemas:
      - event_types: ["charge.*"]
        schema: { type: object, required: [id, data] }
    on_invalid: dead_letter
  - name: github
    webhook:
      verify: { github: { secrets: [GH_SECRET] } }
  - name: partner
    api_keys: ["sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"]
    webhook:
      verify:
        hmac: { secrets: [PARTNER], header: X-Signature, algorithm: sha512, encoding: base64, prefix: "v1=", timestamp_header: X-Timestamp }
      event_type: { json: /event }
  - name: crm-changes
    poll:
      url: https://crm.example.com/api/changes
      interval: 30s
      items: /data
      id: /id
      event_type: { value: contact.changed }
      cursor: { param: after, vrl: ".data[-1].id" }
      etag: true
"#;

#[test]
fn sources_take_webhooks_keys_limits_schemas_and_polling() {
    let catalog = Catalog::from_yaml(SOURCES).unwrap();
    let stripe = catalog.source("stripe").unwrap();
    assert_eq!(stripe.on_invalid, OnInvalid::DeadLetter);
    let webhook = stripe.webhook.as_ref().unwrap();
    assert_eq!(webhook.verify.secrets(), ["STRIPE_WHSEC"]);
    assert_eq!(
        webhook.verify.default_idempotency_key(),
        Extract::json("/id")
    );
    let github = catalog.source("github").unwrap().webhook.as_ref().unwrap();
    assert_eq!(
        github.verify.default_event_type(),
        Some(Extract::header("X-GitHub-Event"))
    );
    let Some(Verify::Hmac(hmac)) = catalog
        .source("partner")
        .unwrap()
        .webhook
        .as_ref()
        .map(|w| &w.verify)
    else {
        panic!("an hmac verifier")
    };
    assert_eq!(
        (hmac.algorithm, hmac.encoding),
        (HmacAlgorithm::Sha512, SignatureEncoding::Base64)
    );
    let poll = catalog
        .source("crm-changes")
        .unwrap()
        .poll
        .as_ref()
        .unwrap();
    assert_eq!(poll.timeout, Duration::from_secs(10));
    assert!(poll.etag);
    assert_eq!(Catalog::from_yaml(&catalog.to_yaml()).unwrap(), catalog);
}

#[test]
fn source_settings_are_validated_with_their_paths() {
    let broken = SOURCES
        .replace("sha256:9f86d0", "9f86d0")
        .replace("required: [id, data]", "required: 5")
        .replace("secrets: [GH_SECRET]", "secrets: []")
        .replace(
            "event_type: { json: /event }",
            "event_type: { json: event, header: X-Type }",
        )
        .replace("vrl: \".data[-1].id\"", "vrl: \".data[\"");
    let err = Catalog::from_yaml(&broken).unwrap_err();
    let paths: Vec<_> = err.0.iter().map(|e| e.path.as_str()).collect();
    for expected in [
        "sources[2].api_keys[0]",
        "sources[0].schemas[0].schema",
        "sources[1].webhook.verify",
        "sources[2].webhook.event_type",
        "sources[2].webhook.event_type.json",
        "sources[3].poll.cursor.vrl",
    ] {
        assert!(paths.contains(&expected), "{expected} in {paths:?}");
    }
    let two = SOURCES.replace(
        "verify: { github: { secrets: [GH_SECRET] } }",
        "verify: { github: { secrets: [A] }, shopify: { secrets: [B] } }",
    );
    assert!(
        Catalog::from_yaml(&two)
            .unwrap_err()
            .to_string()
            .contains("exactly one of")
    );
}

#[test]
fn deleting_names_what_still_refers_to_the_resource() {
    let current = catalog();
    let err = current
        .without(Kind::Mapping, "order-to-contact@1")
        .unwrap_err();
    assert_eq!(err.0[0].path, "routes[0].mapping");
    assert!(current.without(Kind::Route, "nope").unwrap().is_none());
    let fewer = current.without(Kind::Route, "orders").unwrap().unwrap();
    assert!(fewer.routes.is_empty());
    let fewer = fewer
        .without(Kind::Mapping, "order-to-contact@1")
        .unwrap()
        .unwrap();
    assert!(fewer.mappings.is_empty());
}

#[test]
fn batch_settings_are_checked_at_apply_naming_the_field() {
    let with = |extra: &str| {
        CATALOG.replace(
            "    url: http://127.0.0.1:9000/hooks\n",
            &format!("    url: http://127.0.0.1:9000/hooks\n{extra}"),
        )
    };
    let batched = with(
        "    batch: { max_events: 50, max_bytes: 256KiB, max_wait: 200ms, format: { wrap: records } }\n    batch_results: |\n      map_values(array!(.body.results)) -> |r| { r.status }\n",
    );
    let catalog = Catalog::from_yaml(&batched).unwrap();
    let batch = catalog.providers[0].batch.as_ref().unwrap();
    assert_eq!(batch.max_events, 50);
    assert_eq!(batch.max_bytes, ByteSize(256 << 10));
    assert_eq!(batch.format, BatchFormat::Wrap("records".into()));
    let paths = |yaml: &str| -> Vec<String> {
        Catalog::from_yaml(yaml)
            .unwrap_err()
            .0
            .into_iter()
            .map(|error| error.path)
            .collect()
    };
    assert_eq!(
        paths(&with(
            "    batch: { max_events: 0, max_bytes: 10, max_wait: 0s }\n"
        )),
        [
            "providers[0].batch.max_events",
            "providers[0].batch.max_bytes",
            "providers[0].batch.max_wait"
        ]
    );
    assert_eq!(
        paths(&with("    batch_program: '. = {\"records\": .}'\n")),
        ["providers[0].batch_program"]
    );
    assert_eq!(
        paths(&with(
            "    batch: { format: ndjson }\n    batch_program: '. = {\"records\": .}'\n    batch_results: 'upcase('\n"
        )),
        ["providers[0].batch_program", "providers[0].batch_results"]
    );
}

#[test]
fn outbox_sources_are_checked_field_by_field() {
    let broken = r#"
sources:
  - name: shop
    outbox: { dsn: { secret: "bad name" }, table: "Orders; DROP", batch: 0, poll_interval: 1ms }
  - name: both
    poll: { url: "https://api.example.com/x", interval: 5s, id: /id, event_type: { value: a.b } }
    outbox: { dsn: { secret: DSN } }
"#;
    let err = Catalog::from_yaml(broken).unwrap_err();
    let paths: Vec<_> = err.0.iter().map(|e| e.path.as_str()).collect();
    assert_eq!(
        paths,
        [
            "sources[0].outbox.dsn.secret",
            "sources[0].outbox.table",
            "sources[0].outbox.batch",
            "sources[0].outbox.poll_interval",
            "sources[1].outbox",
        ],
        "{err}"
    );
    let fine =
        Catalog::from_yaml("sources:\n  - name: shop\n    outbox: { dsn: { secret: DSN } }\n")
            .unwrap();
    let outbox = fine.sources[0].outbox.as_ref().unwrap();
    assert_eq!(outbox.table, "switchyard_outbox");
    assert_eq!(outbox.batch, 500);
}

#[test]
fn cdc_sources_are_checked_field_by_field() {
    let broken = r#"
sources:
  - name: shop
    cdc: { dsn: { secret: DSN }, publication: "Bad-Pub", slot: "", tables: [] }
  - name: both
    outbox: { dsn: { secret: DSN } }
    cdc: { dsn: { secret: DSN }, publication: p, slot: s, tables: ["Orders"] }
"#;
    let err = Catalog::from_yaml(broken).unwrap_err();
    let paths: Vec<_> = err.0.iter().map(|e| e.path.as_str()).collect();
    assert_eq!(
        paths,
        [
            "sources[0].cdc.publication",
            "sources[0].cdc.slot",
            "sources[0].cdc.tables",
            "sources[1].cdc.tables[0]",
            "sources[1].cdc",
        ],
        "{err}"
    );
}

#[test]
fn a_canary_is_checked_at_apply_naming_each_field() {
    // A second version of the mapping, and the route's canary.
    let with = |canary: &str| {
        CATALOG
            .replace(
                "routes:\n",
                "  - name: order-to-contact\n    version: 2\n    program: '. = {\"email\": .customer.email}'\nroutes:\n",
            )
            .replace(
                "    provider: crm\n",
                &format!("    provider: crm\n    canary: {canary}\n"),
            )
    };
    let good = Catalog::from_yaml(&with("{ mapping: order-to-contact@2, percent: 10 }")).unwrap();
    let canary = good.routes[0].canary.as_ref().unwrap();
    assert_eq!(
        (canary.percent, canary.by, canary.min_events, canary.margin),
        (10, CanaryBy::Event, 200, 2.0),
        "the defaults"
    );
    for (canary, path, says) in [
        (
            "{ mapping: order-to-contact@3, percent: 10 }",
            "routes[0].canary.mapping",
            "no mapping order-to-contact@3",
        ),
        (
            "{ mapping: order-to-contact@1, percent: 10 }",
            "routes[0].canary.mapping",
            "the route's own mapping",
        ),
        (
            "{ mapping: order-to-contact@2, percent: 0 }",
            "routes[0].canary.percent",
            "outside 1–50",
        ),
        (
            "{ mapping: order-to-contact@2, percent: 51 }",
            "routes[0].canary.percent",
            "outside 1–50",
        ),
        (
            "{ mapping: order-to-contact@2, percent: 5, by: ordering_key }",
            "routes[0].canary.by",
            "ordering_key",
        ),
        (
            "{ mapping: order-to-contact@2, percent: 5, min_events: 0 }",
            "routes[0].canary.min_events",
            "at least 1",
        ),
        (
            "{ mapping: order-to-contact@2, percent: 5, margin: -1 }",
            "routes[0].canary.margin",
            "between 0 and 100",
        ),
    ] {
        let err = Catalog::from_yaml(&with(canary)).unwrap_err();
        assert!(
            err.0
                .iter()
                .any(|e| e.path == path && e.message.contains(says)),
            "{canary}: {err}"
        );
    }
    let typo =
        Catalog::from_yaml(&with("{ mapping: order-to-contact@2, percentage: 5 }")).unwrap_err();
    assert!(typo.to_string().contains("percentage"), "{typo}");
}
