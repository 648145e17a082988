//! Mapping suggestions: a first VRL draft from what goes in and what must come out.
//!
//! Both sides are JSON Schemas, or samples whose schema is inferred. Every leaf field
//! of the output is paired with the input field whose name (split into words, with a
//! few common synonyms) and type resemble it most; each input field is used once.
//! The draft has one explicit line per output field — an assignment with a
//! conversion when the types differ, or a comment when nothing matched, marking the
//! required ones. It is deterministic and needs nothing but the two documents.

use std::{cmp::Ordering, collections::BTreeSet, fmt::Write as _};

use serde_json::{Map, Value};

/// JSON types as a schema names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Type {
    String,
    Integer,
    Number,
    Boolean,
    Array,
    Object,
    Any,
}

impl Type {
    fn of_schema(schema: &Value) -> Self {
        let name = match schema.get("type") {
            Some(Value::String(name)) => name.as_str(),
            Some(Value::Array(names)) => names
                .iter()
                .filter_map(Value::as_str)
                .find(|name| *name != "null")
                .unwrap_or("null"),
            _ if schema.get("properties").is_some() => "object",
            _ => "",
        };
        match name {
            "string" => Self::String,
            "integer" => Self::Integer,
            "number" => Self::Number,
            "boolean" => Self::Boolean,
            "array" => Self::Array,
            "object" => Self::Object,
            _ => Self::Any,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Self::String => "string",
            Self::Integer => "integer",
            Self::Number => "number",
            Self::Boolean => "boolean",
            Self::Array => "array",
            Self::Object => "object",
            Self::Any => "any",
        }
    }

    /// How well a value of `self` serves a field of type `target`: `None` when it
    /// cannot.
    fn fit(self, target: Type) -> Option<f64> {
        use Type::*;
        match (self, target) {
            _ if self == target => Some(0.2),
            (Any, _) | (_, Any) => Some(0.0),
            (Integer, Number) | (Number, Integer) => Some(0.1),
            (String, Integer | Number | Boolean) | (Integer | Number | Boolean, String) => {
                Some(0.0)
            }
            _ => None,
        }
    }
}

/// One leaf field of a document.
#[derive(Debug, Clone)]
struct Field {
    path: Vec<String>,
    kind: Type,
    required: bool,
    format: Option<String>,
}

/// Whether `document` is a JSON Schema rather than a sample.
fn is_schema(document: &Value) -> bool {
    let Some(object) = document.as_object() else {
        return false;
    };
    object.contains_key("$schema")
        || (object.get("type").is_some_and(Value::is_string) && object.contains_key("properties"))
}

/// The schema of a sample: every key present is required.
fn infer(sample: &Value) -> Value {
    match sample {
        Value::Object(object) => {
            let properties: Map<String, Value> = object
                .iter()
                .map(|(key, value)| (key.clone(), infer(value)))
                .collect();
            serde_json::json!({
                "type": "object",
                "required": object.keys().collect::<Vec<_>>(),
                "properties": properties,
            })
        }
        Value::Array(_) => serde_json::json!({"type": "array"}),
        Value::String(_) => serde_json::json!({"type": "string"}),
        Value::Number(n) if n.is_i64() || n.is_u64() => serde_json::json!({"type": "integer"}),
        Value::Number(_) => serde_json::json!({"type": "number"}),
        Value::Bool(_) => serde_json::json!({"type": "boolean"}),
        Value::Null => serde_json::json!({}),
    }
}

/// Every leaf of `schema` (objects are walked, arrays and scalars are leaves).
fn leaves(schema: &Value, path: &mut Vec<String>, required: bool, out: &mut Vec<Field>) {
    let properties = schema.get("properties").and_then(Value::as_object);
    match properties {
        Some(properties) if !properties.is_empty() => {
            let needed: BTreeSet<&str> = schema
                .get("required")
                .and_then(Value::as_array)
                .map(|names| names.iter().filter_map(Value::as_str).collect())
                .unwrap_or_default();
            for (name, property) in properties {
                path.push(name.clone());
                leaves(
                    property,
                    path,
                    required && needed.contains(name.as_str()),
                    out,
                );
                path.pop();
            }
        }
        _ if path.is_empty() => {}
        _ => out.push(Field {
            path: path.clone(),
            kind: Type::of_schema(schema),
            required,
            format: schema
                .get("format")
                .and_then(Value::as_str)
                .map(str::to_owned),
        }),
    }
}

fn fields(document: &Value) -> Vec<Field> {
    let schema = if is_schema(document) {
        document.clone()
    } else {
        infer(document)
    };
    let mut out = Vec::new();
    leaves(&schema, &mut Vec::new(), true, &mut out);
    out
}

/// Words of a field name: split at `_`, `-`, `.`, spaces and lower→upper case
/// changes, lower-cased, with common synonyms folded together.
fn words(name: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut current = String::new();
    let mut previous_lower = false;
    for c in name.chars() {
        if !c.is_alphanumeric() {
            if !current.is_empty() {
                out.push(std::mem::take(&mut current));
            }
            previous_lower = false;
            continue;
        }
        if c.is_uppercase() && previous_lower && !current.is_empty() {
            out.push(std::mem::take(&mut current));
        }
        previous_lower = c.is_lowercase() || c.is_ascii_digit();
        current.extend(c.to_lowercase());
    }
    if !current.is_empty() {
        out.push(current);
    }
    out.into_iter()
        .map(|word| synonym(&word).to_owned())
        .collect()
}

fn synonym(word: &str) -> &str {
    match word {
        "mail" => "email",
        "identifier" | "key" => "id",
        "qty" => "quantity",
        "amt" | "total" | "sum" => "amount",
        "tel" | "telephone" | "mobile" => "phone",
        "zip" | "zipcode" | "postcode" | "postal" => "postal",
        "surname" | "family" => "last",
        "given" | "forename" => "first",
        "buyer" | "client" => "customer",
        "created" | "creation" => "created",
        "ts" | "time" | "timestamp" | "date" | "at" => "time",
        "desc" => "description",
        "addr" => "address",
        "no" | "num" | "nr" => "number",
        other => other,
    }
}

/// Dice similarity of two word lists, 1.0 when equal.
fn similarity(a: &[String], b: &[String]) -> f64 {
    if a.is_empty() || b.is_empty() {
        return 0.0;
    }
    if a == b {
        return 1.0;
    }
    let a_set: BTreeSet<&String> = a.iter().collect();
    let b_set: BTreeSet<&String> = b.iter().collect();
    let shared = a_set.intersection(&b_set).count() as f64;
    2.0 * shared / (a_set.len() + b_set.len()) as f64
}

/// How much `input` resembles `output`; `None` when it cannot serve it.
fn score(input: &Field, output: &Field) -> Option<f64> {
    let fit = input.kind.fit(output.kind)?;
    let last = |field: &Field| words(field.path.last().map_or("", String::as_str));
    let parents = |field: &Field| -> Vec<String> {
        field.path[..field.path.len() - 1]
            .iter()
            .flat_map(|segment| words(segment))
            .collect()
    };
    let name = similarity(&last(input), &last(output));
    if name == 0.0 {
        return None;
    }
    let context = match (parents(input), parents(output)) {
        (a, b) if a.is_empty() && b.is_empty() => 1.0,
        (a, b) => similarity(&a, &b),
    };
    Some(0.7 * name + 0.1 * context + fit)
}

/// Lowest score that counts as a match.
const THRESHOLD: f64 = 0.55;

/// A VRL path: `root` followed by each segment, quoted when it is not an identifier.
fn vrl_path(root: &str, path: &[String]) -> String {
    let mut out = root.to_owned();
    for segment in path {
        let plain = segment
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && segment
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_');
        if plain {
            let _ = write!(out, ".{segment}");
        } else {
            let _ = write!(
                out,
                ".{}",
                serde_json::to_string(segment).expect("strings serialize")
            );
        }
    }
    out
}

fn pointer(path: &[String]) -> String {
    path.iter().map(|segment| format!(".{segment}")).collect()
}

/// The expression reading `input` as a value for `output`.
fn conversion(input: &Field, output: &Field) -> String {
    let source = vrl_path("input", &input.path);
    let date_time = output.format.as_deref() == Some("date-time");
    match (input.kind, output.kind) {
        // Unix seconds become RFC 3339 text.
        (Type::Integer | Type::Number, Type::String) if date_time => format!(
            "format_timestamp(from_unix_timestamp(to_int({source}) ?? 0) ?? null, \"%+\") ?? null"
        ),
        (from, to) if from == to => source,
        (_, Type::String) => format!("to_string({source}) ?? null"),
        (_, Type::Integer) => format!("to_int({source}) ?? null"),
        (_, Type::Number) => format!("to_float({source}) ?? null"),
        (_, Type::Boolean) => format!("to_bool({source}) ?? null"),
        _ => source,
    }
}

/// Drafts a VRL mapping from `input` to `output` (JSON Schemas or samples).
pub fn suggest(input: &Value, output: &Value) -> String {
    let inputs = fields(input);
    let outputs = fields(output);
    // Every candidate pair, best first; ties go to the earlier paths so the draft is
    // the same on every run.
    let mut pairs: Vec<(f64, usize, usize)> = Vec::new();
    for (o, out_field) in outputs.iter().enumerate() {
        for (i, in_field) in inputs.iter().enumerate() {
            if let Some(score) = score(in_field, out_field).filter(|s| *s >= THRESHOLD) {
                pairs.push((score, o, i));
            }
        }
    }
    pairs.sort_by(|a, b| {
        b.0.partial_cmp(&a.0)
            .unwrap_or(Ordering::Equal)
            .then(a.1.cmp(&b.1))
            .then(a.2.cmp(&b.2))
    });
    let mut chosen: Vec<Option<(usize, f64)>> = vec![None; outputs.len()];
    let mut used = vec![false; inputs.len()];
    for (score, o, i) in pairs {
        if chosen[o].is_none() && !used[i] {
            chosen[o] = Some((i, score));
            used[i] = true;
        }
    }

    let mut draft = String::from(
        "# Drafted by `syctl mapping suggest` from field names and types.\n\
         # Review every line: a match is a guess, and a conversion yields null when it fails.\n\
         input = .\n\
         . = {}\n",
    );
    let mut objects = BTreeSet::new();
    for (o, out_field) in outputs.iter().enumerate() {
        let target = vrl_path("", &out_field.path);
        // VRL assigns into objects that exist: create each parent once.
        for depth in 1..out_field.path.len() {
            let parent = vrl_path("", &out_field.path[..depth]);
            if objects.insert(parent.clone()) {
                let _ = writeln!(draft, "{parent} = {{}}");
            }
        }
        match chosen[o] {
            Some((i, score)) => {
                let in_field = &inputs[i];
                let _ = writeln!(
                    draft,
                    "{target} = {}  # from {} ({}, match {:.2})",
                    conversion(in_field, out_field),
                    pointer(&in_field.path),
                    in_field.kind.name(),
                    score.min(1.0)
                );
            }
            None if out_field.required => {
                let _ = writeln!(
                    draft,
                    "# {target} ({}, required): no input field matches; set it here",
                    out_field.kind.name()
                );
            }
            None => {
                let _ = writeln!(
                    draft,
                    "# {target} ({}): no input field matches",
                    out_field.kind.name()
                );
            }
        }
    }
    let unused: Vec<String> = inputs
        .iter()
        .zip(&used)
        .filter(|(_, used)| !**used)
        .map(|(field, _)| pointer(&field.path))
        .collect();
    if !unused.is_empty() {
        let _ = writeln!(draft, "# input fields not used: {}", unused.join(", "));
    }
    draft
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use switchyard_core::mapping::{CompiledMapping, Event, Output};

    fn run(program: &str, input: &Value) -> Value {
        let mapping = switchyard_core::catalog::Mapping {
            name: "draft".into(),
            version: 1,
            description: String::new(),
            program: program.into(),
            input_schema: None,
            output_schema: None,
        };
        let compiled = CompiledMapping::compile(&mapping)
            .unwrap_or_else(|errors| panic!("the draft does not compile: {errors:?}\n{program}"));
        let event = Event::parse(input.to_string().as_bytes()).unwrap();
        match compiled.apply(&event).unwrap() {
            Output::Body(body) => serde_json::from_slice(&body).unwrap(),
            Output::Skipped(reason) => panic!("skipped: {reason:?}"),
        }
    }

    #[test]
    fn samples_pair_by_name_and_type_and_the_draft_runs() {
        let input = json!({
            "id": 42,
            "buyer": {"mail": "a@b.c", "firstName": "Ada", "last_name": "Lovelace"},
            "total": "12.50",
            "created_at": 1700000000,
            "note": "gift"
        });
        let output = json!({
            "type": "object",
            "required": ["order_id", "customer", "amount", "placed"],
            "properties": {
                "order_id": {"type": "string"},
                "customer": {
                    "type": "object",
                    "required": ["email"],
                    "properties": {
                        "email": {"type": "string"},
                        "first_name": {"type": "string"},
                        "last-name": {"type": "string"}
                    }
                },
                "amount": {"type": "number"},
                "created": {"type": "string", "format": "date-time"},
                "placed": {"type": "boolean"}
            }
        });
        let draft = suggest(&input, &output);
        assert!(
            draft.contains(".order_id = to_string(input.id) ?? null"),
            "{draft}"
        );
        assert!(
            draft.contains(".customer.email = input.buyer.mail"),
            "{draft}"
        );
        assert!(
            draft.contains(".customer.\"last-name\" = input.buyer.last_name"),
            "{draft}"
        );
        assert!(
            draft.contains(".amount = to_float(input.total) ?? null"),
            "{draft}"
        );
        assert!(
            draft.contains("# .placed (boolean, required): no input field matches"),
            "{draft}"
        );
        assert!(draft.contains("# input fields not used: .note"), "{draft}");
        let mapped = run(&draft, &input);
        assert_eq!(
            mapped,
            json!({
                "order_id": "42",
                "customer": {"email": "a@b.c", "first_name": "Ada", "last-name": "Lovelace"},
                "amount": 12.5,
                "created": "2023-11-14T22:13:20+00:00"
            })
        );
    }

    #[test]
    fn drafts_are_deterministic() {
        let input = json!({"a_id": 1, "b_id": 2, "email": "x", "mail": "y"});
        let output = json!({"id": 0, "email": ""});
        let first = suggest(&input, &output);
        for _ in 0..10 {
            assert_eq!(suggest(&input, &output), first);
        }
        // Each input field serves one output field at most.
        assert_eq!(
            first.matches("input.email").count() + first.matches("input.mail").count(),
            1,
            "{first}"
        );
    }

    #[test]
    fn incompatible_types_do_not_match() {
        let draft = suggest(
            &json!({"address": {"city": "x"}}),
            &json!({"address": "text"}),
        );
        assert!(
            draft.contains("# .address (string, required): no input field matches"),
            "{draft}"
        );
    }

    #[test]
    fn words_split_every_naming_style() {
        assert_eq!(words("firstName"), ["first", "name"]);
        assert_eq!(words("first_name"), ["first", "name"]);
        assert_eq!(words("First-Name"), ["first", "name"]);
        assert_eq!(words("zipCode"), ["postal", "code"]);
        assert_eq!(words("e_mail"), ["e", "email"]);
    }
}
