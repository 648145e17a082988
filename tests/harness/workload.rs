//! The benchmark workload: a 1 KiB order event and a 20-field VRL mapping, shared by
//! the criterion benchmark of the mapping step and `make bench`.

/// A 20-field mapping with the usual work: renames, nested reads, coercions, string
/// functions, a date and a default.
pub const PROGRAM: &str = r#"
. = {
  "external_id": string!(.id),
  "order_number": to_int(.number) ?? 0,
  "email": downcase(string!(.customer.email)),
  "first_name": string(.customer.first_name) ?? "",
  "last_name": string(.customer.last_name) ?? "",
  "phone": string(.customer.phone) ?? null,
  "company": string(.customer.company) ?? null,
  "street": string(.shipping.street) ?? "",
  "city": string(.shipping.city) ?? "",
  "postal_code": string(.shipping.zip) ?? "",
  "country": upcase(string(.shipping.country) ?? ""),
  "currency": upcase(string!(.currency)),
  "total_cents": to_int(round(to_float(.total) ?? 0.0, 2) * 100),
  "tax_cents": to_int(round(to_float(.tax) ?? 0.0, 2) * 100),
  "items": length(array(.lines) ?? []),
  "paid": to_bool(.paid) ?? false,
  "status": string(.status) ?? "unknown",
  "created_at": format_timestamp!(parse_timestamp!(string!(.created_at), "%+"), "%Y-%m-%dT%H:%M:%SZ"),
  "source": "shop",
  "note": string(.note) ?? null,
}
"#;

/// An order of about 1 KiB.
pub fn payload() -> Vec<u8> {
    let body = serde_json::json!({
        "id": "ord_01HZX3Y8Q2",
        "number": "100234",
        "customer": {
            "email": "Ada.Lovelace@Example.COM",
            "first_name": "Ada",
            "last_name": "Lovelace",
            "phone": "+44 20 7946 0000",
            "company": "Analytical Engines Ltd"
        },
        "shipping": {
            "street": "12 St James's Square",
            "city": "London",
            "zip": "SW1Y 4JH",
            "country": "gb"
        },
        "currency": "gbp",
        "total": "129.90",
        "tax": "21.65",
        "paid": "true",
        "status": "paid",
        "created_at": "2026-11-24T09:30:00+01:00",
        "note": "Leave at the door",
        "lines": [
            {"sku": "ENG-1", "name": "Difference engine", "qty": 1, "price": "99.90"},
            {"sku": "CARD-50", "name": "Punched cards (50)", "qty": 2, "price": "15.00"},
            {"sku": "OIL", "name": "Machine oil", "qty": 1, "price": "0.00"},
            {"sku": "GEAR-12", "name": "Brass gear, 12 teeth", "qty": 4, "price": "2.50"},
            {"sku": "MANUAL", "name": "Operating notes, G", "qty": 1, "price": "0.00"}
        ],
        "billing": {
            "street": "12 St James's Square",
            "city": "London",
            "zip": "SW1Y 4JH",
            "country": "gb"
        },
        "tags": ["priority", "gift", "repeat-customer"],
        "metadata": {"channel": "web", "campaign": "autumn-sale", "ab_bucket": "b", "session": "f3a9c2e1d4b5a6978812"}
    });
    serde_json::to_vec(&body).expect("JSON serializes")
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_payload_is_about_one_kib() {
        let len = super::payload().len();
        assert!((1000..1100).contains(&len), "payload is {len} bytes");
    }
}
