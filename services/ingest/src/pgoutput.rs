//! The `pgoutput` logical replication messages (protocol version 1) that carry row
//! changes, decoded into rows of JSON values by column type.
//!
//! Only what a change event needs is kept: relations (a table's columns, sent before
//! its first change and after each change of its shape), inserts, updates and deletes
//! with their old and new tuples, and transaction boundaries. Values arrive as text;
//! booleans, integers, floats and JSON become JSON of their kind, `numeric` stays text
//! (exact), everything else is text. A TOASTed value an update did not change is not
//! sent by PostgreSQL, so its column is absent from the new row.

use std::collections::HashMap;

use serde_json::{Map, Value};

/// A table as the stream describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Relation {
    pub id: u32,
    pub namespace: String,
    pub name: String,
    pub columns: Vec<Column>,
}

/// One column of a [`Relation`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Column {
    pub name: String,
    pub type_oid: u32,
    /// Part of the replica identity (the key sent as the old row of updates and
    /// deletes).
    pub key: bool,
}

/// What a row change did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    Insert,
    Update,
    Delete,
}

impl Operation {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Insert => "insert",
            Self::Update => "update",
            Self::Delete => "delete",
        }
    }
}

/// One value of a tuple.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cell {
    Null,
    /// A TOASTed value the change left as it was; PostgreSQL does not send it.
    Unchanged,
    Text(String),
}

/// A decoded message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    Begin {
        final_lsn: u64,
        /// Microseconds since 2000-01-01 UTC.
        committed_at: i64,
        xid: u32,
    },
    Commit {
        lsn: u64,
        end_lsn: u64,
    },
    Relation(Relation),
    Change {
        relation: u32,
        operation: Operation,
        /// The old row: the replica identity's columns (or all of them with `REPLICA
        /// IDENTITY FULL`); none for inserts, and for updates that kept the key.
        before: Option<Vec<Cell>>,
        /// `before` holds only the replica identity's columns (the others are null
        /// in it); with `REPLICA IDENTITY FULL` it is the whole old row.
        key_only: bool,
        /// The new row; none for deletes.
        after: Option<Vec<Cell>>,
    },
    /// Anything else (origin, type, truncate, logical messages): not a row change.
    Other(u8),
}

/// Why a message could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed pgoutput message: {0}")]
pub struct Malformed(String);

struct Reader<'a> {
    bytes: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8], Malformed> {
        if self.bytes.len() < n {
            return Err(Malformed(format!("{what} is cut short")));
        }
        let (head, rest) = self.bytes.split_at(n);
        self.bytes = rest;
        Ok(head)
    }
    fn u8(&mut self, what: &str) -> Result<u8, Malformed> {
        Ok(self.take(1, what)?[0])
    }
    fn i16(&mut self, what: &str) -> Result<i16, Malformed> {
        Ok(i16::from_be_bytes(
            self.take(2, what)?.try_into().expect("2 bytes"),
        ))
    }
    fn u32(&mut self, what: &str) -> Result<u32, Malformed> {
        Ok(u32::from_be_bytes(
            self.take(4, what)?.try_into().expect("4 bytes"),
        ))
    }
    fn i32(&mut self, what: &str) -> Result<i32, Malformed> {
        Ok(i32::from_be_bytes(
            self.take(4, what)?.try_into().expect("4 bytes"),
        ))
    }
    fn u64(&mut self, what: &str) -> Result<u64, Malformed> {
        Ok(u64::from_be_bytes(
            self.take(8, what)?.try_into().expect("8 bytes"),
        ))
    }
    fn string(&mut self, what: &str) -> Result<String, Malformed> {
        let end = self
            .bytes
            .iter()
            .position(|b| *b == 0)
            .ok_or_else(|| Malformed(format!("{what} has no terminator")))?;
        let text = std::str::from_utf8(&self.bytes[..end])
            .map_err(|_| Malformed(format!("{what} is not UTF-8")))?
            .to_owned();
        self.bytes = &self.bytes[end + 1..];
        Ok(text)
    }
    fn tuple(&mut self) -> Result<Vec<Cell>, Malformed> {
        let count = self.i16("a tuple's column count")?;
        let count =
            usize::try_from(count).map_err(|_| Malformed("a negative column count".into()))?;
        let mut cells = Vec::with_capacity(count);
        for _ in 0..count {
            cells.push(match self.u8("a column's kind")? {
                b'n' => Cell::Null,
                b'u' => Cell::Unchanged,
                b't' => {
                    let length = self.i32("a value's length")?;
                    let length = usize::try_from(length)
                        .map_err(|_| Malformed("a negative value length".into()))?;
                    let text = std::str::from_utf8(self.take(length, "a value")?)
                        .map_err(|_| Malformed("a text value is not UTF-8".into()))?;
                    Cell::Text(text.to_owned())
                }
                other => {
                    return Err(Malformed(format!(
                        "column kind {:?} (binary values are not requested)",
                        other as char
                    )));
                }
            });
        }
        Ok(cells)
    }
}

/// Decodes one message of the stream.
pub fn decode(bytes: &[u8]) -> Result<Message, Malformed> {
    let mut r = Reader { bytes };
    let tag = r.u8("the message tag")?;
    Ok(match tag {
        b'B' => Message::Begin {
            final_lsn: r.u64("the final LSN")?,
            committed_at: r.u64("the commit time")? as i64,
            xid: r.u32("the transaction id")?,
        },
        b'C' => {
            r.u8("the commit flags")?;
            Message::Commit {
                lsn: r.u64("the commit LSN")?,
                end_lsn: r.u64("the end LSN")?,
            }
        }
        b'R' => {
            let id = r.u32("the relation id")?;
            let namespace = r.string("the namespace")?;
            let name = r.string("the relation name")?;
            r.u8("the replica identity")?;
            let count = r.i16("the column count")?;
            let mut columns = Vec::new();
            for _ in 0..count.max(0) {
                let flags = r.u8("column flags")?;
                let name = r.string("a column name")?;
                let type_oid = r.u32("a column type")?;
                r.i32("a column type modifier")?;
                columns.push(Column {
                    name,
                    type_oid,
                    key: flags & 1 == 1,
                });
            }
            Message::Relation(Relation {
                id,
                namespace,
                name,
                columns,
            })
        }
        b'I' => {
            let relation = r.u32("the relation id")?;
            match r.u8("the new-tuple marker")? {
                b'N' => {}
                other => {
                    return Err(Malformed(format!(
                        "insert without N, found {:?}",
                        other as char
                    )));
                }
            }
            Message::Change {
                relation,
                operation: Operation::Insert,
                before: None,
                key_only: false,
                after: Some(r.tuple()?),
            }
        }
        b'U' => {
            let relation = r.u32("the relation id")?;
            let mut before = None;
            let mut marker = r.u8("the tuple marker")?;
            let key_only = marker == b'K';
            if matches!(marker, b'K' | b'O') {
                before = Some(r.tuple()?);
                marker = r.u8("the new-tuple marker")?;
            }
            if marker != b'N' {
                return Err(Malformed(format!(
                    "update without N, found {:?}",
                    marker as char
                )));
            }
            Message::Change {
                relation,
                operation: Operation::Update,
                before,
                key_only,
                after: Some(r.tuple()?),
            }
        }
        b'D' => {
            let relation = r.u32("the relation id")?;
            let key_only = match r.u8("the old-tuple marker")? {
                b'K' => true,
                b'O' => false,
                other => {
                    return Err(Malformed(format!(
                        "delete without K or O, found {:?}",
                        other as char
                    )));
                }
            };
            Message::Change {
                relation,
                operation: Operation::Delete,
                before: Some(r.tuple()?),
                key_only,
                after: None,
            }
        }
        other => Message::Other(other),
    })
}

/// The relations seen so far in a stream, by id.
#[derive(Debug, Default)]
pub struct Relations(HashMap<u32, Relation>);

impl Relations {
    pub fn remember(&mut self, relation: Relation) {
        self.0.insert(relation.id, relation);
    }

    pub fn get(&self, id: u32) -> Option<&Relation> {
        self.0.get(&id)
    }
}

/// A tuple as a JSON object by column name. An old row that carries only the key
/// has `Null` for the other columns in the stream; they are left out, as are TOASTed
/// values the change did not touch.
pub fn row(relation: &Relation, cells: &[Cell], key_only: bool) -> Map<String, Value> {
    let mut object = Map::new();
    for (column, cell) in relation.columns.iter().zip(cells) {
        if key_only && !column.key {
            continue;
        }
        let value = match cell {
            Cell::Unchanged => continue,
            Cell::Null => Value::Null,
            Cell::Text(text) => typed(column.type_oid, text),
        };
        object.insert(column.name.clone(), value);
    }
    object
}

/// A text value as JSON of its column's type.
fn typed(type_oid: u32, text: &str) -> Value {
    const BOOL: u32 = 16;
    const INT8: u32 = 20;
    const INT2: u32 = 21;
    const INT4: u32 = 23;
    const OID: u32 = 26;
    const JSON: u32 = 114;
    const FLOAT4: u32 = 700;
    const FLOAT8: u32 = 701;
    const JSONB: u32 = 3802;
    match type_oid {
        BOOL => Value::Bool(text == "t"),
        INT2 | INT4 | INT8 | OID => text
            .parse::<i64>()
            .map(Value::from)
            .unwrap_or_else(|_| Value::String(text.to_owned())),
        FLOAT4 | FLOAT8 => text
            .parse::<f64>()
            .ok()
            .and_then(serde_json::Number::from_f64)
            .map_or_else(|| Value::String(text.to_owned()), Value::Number),
        JSON | JSONB => {
            serde_json::from_str(text).unwrap_or_else(|_| Value::String(text.to_owned()))
        }
        _ => Value::String(text.to_owned()),
    }
}

/// An LSN as PostgreSQL writes it: `16/B374D848`.
pub fn lsn_text(lsn: u64) -> String {
    format!("{:X}/{:X}", lsn >> 32, lsn & 0xFFFF_FFFF)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cstr(out: &mut Vec<u8>, text: &str) {
        out.extend_from_slice(text.as_bytes());
        out.push(0);
    }

    fn tuple(out: &mut Vec<u8>, cells: &[Option<&str>]) {
        out.extend_from_slice(&(cells.len() as i16).to_be_bytes());
        for cell in cells {
            match cell {
                None => out.push(b'n'),
                Some("<unchanged>") => out.push(b'u'),
                Some(text) => {
                    out.push(b't');
                    out.extend_from_slice(&(text.len() as i32).to_be_bytes());
                    out.extend_from_slice(text.as_bytes());
                }
            }
        }
    }

    fn orders() -> Vec<u8> {
        let mut out = vec![b'R'];
        out.extend_from_slice(&16_385u32.to_be_bytes());
        cstr(&mut out, "public");
        cstr(&mut out, "orders");
        out.push(b'd');
        out.extend_from_slice(&5i16.to_be_bytes());
        for (flags, name, oid) in [
            (1u8, "id", 20u32),
            (0, "paid", 16),
            (0, "total", 1700),
            (0, "meta", 3802),
            (0, "note", 25),
        ] {
            out.push(flags);
            cstr(&mut out, name);
            out.extend_from_slice(&oid.to_be_bytes());
            out.extend_from_slice(&(-1i32).to_be_bytes());
        }
        out
    }

    #[test]
    fn relations_and_changes_decode_into_typed_rows() {
        let Message::Relation(relation) = decode(&orders()).unwrap() else {
            panic!("a relation");
        };
        assert_eq!(relation.name, "orders");
        assert!(relation.columns[0].key && !relation.columns[1].key);

        let mut insert = vec![b'I'];
        insert.extend_from_slice(&16_385u32.to_be_bytes());
        insert.push(b'N');
        tuple(
            &mut insert,
            &[
                Some("42"),
                Some("t"),
                Some("19.90"),
                Some(r#"{"a": [1]}"#),
                None,
            ],
        );
        let Message::Change {
            operation,
            before,
            after,
            ..
        } = decode(&insert).unwrap()
        else {
            panic!("a change");
        };
        assert_eq!(operation, Operation::Insert);
        assert!(before.is_none());
        let after = row(&relation, &after.unwrap(), false);
        assert_eq!(
            Value::Object(after),
            serde_json::json!({"id": 42, "paid": true, "total": "19.90", "meta": {"a": [1]}, "note": null})
        );

        // An update that changed the key sends the old key; a TOASTed value it did
        // not change is absent.
        let mut update = vec![b'U'];
        update.extend_from_slice(&16_385u32.to_be_bytes());
        update.push(b'K');
        tuple(&mut update, &[Some("42"), None, None, None, None]);
        update.push(b'N');
        tuple(
            &mut update,
            &[
                Some("43"),
                Some("f"),
                Some("1"),
                Some("<unchanged>"),
                Some("x"),
            ],
        );
        let Message::Change {
            operation,
            before,
            after,
            ..
        } = decode(&update).unwrap()
        else {
            panic!("a change");
        };
        assert_eq!(operation, Operation::Update);
        assert_eq!(
            Value::Object(row(&relation, &before.unwrap(), true)),
            serde_json::json!({"id": 42})
        );
        let after = row(&relation, &after.unwrap(), false);
        assert!(!after.contains_key("meta"));
        assert_eq!(after["note"], "x");

        let mut delete = vec![b'D'];
        delete.extend_from_slice(&16_385u32.to_be_bytes());
        delete.push(b'O');
        tuple(
            &mut delete,
            &[Some("43"), Some("f"), Some("1"), Some("{}"), Some("x")],
        );
        let Message::Change {
            operation,
            after,
            before,
            ..
        } = decode(&delete).unwrap()
        else {
            panic!("a change");
        };
        assert_eq!(operation, Operation::Delete);
        assert!(after.is_none());
        assert_eq!(row(&relation, &before.unwrap(), false).len(), 5);
    }

    #[test]
    fn boundaries_lsns_and_bad_input() {
        let mut begin = vec![b'B'];
        begin.extend_from_slice(&0x16_B374_D848u64.to_be_bytes());
        begin.extend_from_slice(&1_000_000u64.to_be_bytes());
        begin.extend_from_slice(&7u32.to_be_bytes());
        assert_eq!(
            decode(&begin).unwrap(),
            Message::Begin {
                final_lsn: 0x16_B374_D848,
                committed_at: 1_000_000,
                xid: 7
            }
        );
        assert_eq!(lsn_text(0x16_B374_D848), "16/B374D848");
        assert_eq!(decode(b"Y\0\0").unwrap(), Message::Other(b'Y'));
        for bad in [&b""[..], b"B\0\0", b"I\0\0\0\x01X", b"R\0\0\0\x01public"] {
            assert!(decode(bad).is_err(), "{bad:?}");
        }
        let mut truncated = orders();
        truncated.truncate(truncated.len() - 3);
        assert!(decode(&truncated).is_err());
    }
}
