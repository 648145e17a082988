//! The wire forms of catalog values: JSON documents ↔ protobuf `Struct` (the form
//! catalog resources take on the wire) and times ↔ protobuf `Timestamp`.

use serde_json::Value as Json;

/// Converts a JSON object to a protobuf `Struct` (non-objects are wrapped as `value`).
pub fn json_to_struct(value: Json) -> prost_types::Struct {
    match json_to_value(value).kind {
        Some(prost_types::value::Kind::StructValue(object)) => object,
        other => prost_types::Struct {
            fields: [("value".to_owned(), prost_types::Value { kind: other })].into(),
        },
    }
}

fn json_to_value(value: Json) -> prost_types::Value {
    use prost_types::value::Kind as K;
    let kind = match value {
        Json::Null => K::NullValue(0),
        Json::Bool(b) => K::BoolValue(b),
        Json::Number(n) => K::NumberValue(n.as_f64().unwrap_or_default()),
        Json::String(s) => K::StringValue(s),
        Json::Array(items) => K::ListValue(prost_types::ListValue {
            values: items.into_iter().map(json_to_value).collect(),
        }),
        Json::Object(map) => K::StructValue(prost_types::Struct {
            fields: map
                .into_iter()
                .map(|(k, v)| (k, json_to_value(v)))
                .collect(),
        }),
    };
    prost_types::Value { kind: Some(kind) }
}

/// A protobuf `Timestamp` from an RFC 3339 time; `None` when it does not parse.
pub fn timestamp(rfc3339: &str) -> Option<prost_types::Timestamp> {
    let at = time::OffsetDateTime::parse(rfc3339, &time::format_description::well_known::Rfc3339)
        .ok()?;
    Some(timestamp_of(at))
}

/// A protobuf `Timestamp` of a time.
pub fn timestamp_of(at: time::OffsetDateTime) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: at.unix_timestamp(),
        nanos: at.nanosecond() as i32,
    }
}

/// A protobuf `Timestamp` as RFC 3339, to the second; `None` when out of range.
pub fn rfc3339(timestamp: &prost_types::Timestamp) -> Option<String> {
    time::OffsetDateTime::from_unix_timestamp(timestamp.seconds)
        .ok()?
        .format(&time::format_description::well_known::Rfc3339)
        .ok()
}

/// The protobuf `Timestamp` `millis` milliseconds from now; `None` for zero.
pub fn timestamp_in(millis: u64) -> Option<prost_types::Timestamp> {
    (millis > 0).then(|| {
        timestamp_of(time::OffsetDateTime::now_utc() + std::time::Duration::from_millis(millis))
    })
}

/// Converts a protobuf `Struct` back to a JSON object.
pub fn struct_to_json(object: &prost_types::Struct) -> Json {
    Json::Object(
        object
            .fields
            .iter()
            .map(|(k, v)| (k.clone(), value_to_json(v)))
            .collect(),
    )
}

fn value_to_json(value: &prost_types::Value) -> Json {
    use prost_types::value::Kind as K;
    match &value.kind {
        None | Some(K::NullValue(_)) => Json::Null,
        Some(K::BoolValue(b)) => Json::Bool(*b),
        Some(K::NumberValue(n)) => {
            // Integral numbers go back as integers so versions and counts stay whole.
            if n.fract() == 0.0 && n.abs() < 9.0e15 {
                Json::from(*n as i64)
            } else {
                serde_json::Number::from_f64(*n).map_or(Json::Null, Json::Number)
            }
        }
        Some(K::StringValue(s)) => Json::String(s.clone()),
        Some(K::ListValue(list)) => Json::Array(list.values.iter().map(value_to_json).collect()),
        Some(K::StructValue(object)) => struct_to_json(object),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_survives_a_struct_round_trip() {
        let json = serde_json::json!({
            "name": "crm", "version": 3, "ratio": 0.5, "on": true, "none": null,
            "list": [1, "two", {"three": 3}]
        });
        assert_eq!(struct_to_json(&json_to_struct(json.clone())), json);
    }
}
