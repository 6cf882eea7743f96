//! Strict JSON objects parsed in one pass into a compact binary form. Member names must
//! be unique at every depth (RFC 7515 section 4: "MUST reject"; `serde_json` alone keeps
//! the last of two). The form is the wire encoding of protobuf's `google.protobuf.Struct`
//! (tags and lengths where JSON has quotes and commas): a well-known, language-neutral
//! encoding that registered claims are read from without a second parse, and that the
//! gRPC adapter sends as a response's `claims` without encoding anything again. No
//! protobuf library is involved; the few rules of that encoding are written out here.

use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Number, Value};

use super::echo;

/// `Struct.fields` entries, `MapEntry.key` and `ListValue.values`: field 1, length-delimited.
const FIELD_1: u8 = 0x0A;
/// `MapEntry.value`: field 2, length-delimited.
const FIELD_2: u8 = 0x12;
/// `Value.null_value` (field 1, varint).
const NULL: u8 = 0x08;
/// `Value.number_value` (field 2, 64-bit).
const NUMBER: u8 = 0x11;
/// `Value.string_value` (field 3, length-delimited).
const STRING: u8 = 0x1A;
/// `Value.bool_value` (field 4, varint).
const BOOL: u8 = 0x20;
/// `Value.struct_value` (field 5, length-delimited).
const STRUCT: u8 = 0x2A;
/// `Value.list_value` (field 6, length-delimited).
const LIST: u8 = 0x32;

/// Objects with more members than this are checked for duplicates by sorting.
const PAIRWISE_LIMIT: usize = 16;

/// Parses `json` as one JSON object without duplicate member names at any depth, and
/// returns its encoding (the content of a `google.protobuf.Struct`).
pub fn parse_object(json: &[u8]) -> Result<Vec<u8>, String> {
    let mut out = Vec::with_capacity(json.len() + json.len() / 8 + 16);
    let mut de = serde_json::Deserializer::from_slice(json);
    de.deserialize_any(TopLevel { out: &mut out })
        .map_err(|e| e.to_string())?;
    de.end().map_err(|e| e.to_string())?;
    Ok(out)
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn put_str(out: &mut Vec<u8>, tag: u8, s: &str) -> (usize, usize) {
    out.push(tag);
    put_varint(out, s.len() as u64);
    let start = out.len();
    out.extend_from_slice(s.as_bytes());
    (start, out.len())
}

/// Starts a length-delimited field: its tag and a one-byte length placeholder. Returns
/// where its content starts, for [`end`].
fn begin(out: &mut Vec<u8>, tag: u8) -> usize {
    out.push(tag);
    out.push(0);
    out.len()
}

/// Writes the length of the field begun at `start`; content of 128 bytes or more needs
/// a longer varint, so the content moves right to make room.
fn end(out: &mut Vec<u8>, start: usize) {
    let len = out.len().saturating_sub(start);
    if len < 0x80 {
        if let Some(b) = out.get_mut(start.wrapping_sub(1)) {
            *b = len as u8;
        }
        return;
    }
    let mut varint = Vec::with_capacity(4);
    put_varint(&mut varint, len as u64);
    out.splice(start - 1..start, varint);
}

/// The whole document: only an object is accepted.
struct TopLevel<'o> {
    out: &'o mut Vec<u8>,
}

impl<'de> Visitor<'de> for TopLevel<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<(), A::Error> {
        write_members(self.out, map)
    }
}

/// Writes every member of an object as `Struct.fields` entries, then refuses the object
/// if two members share a name.
fn write_members<'de, A: MapAccess<'de>>(out: &mut Vec<u8>, mut map: A) -> Result<(), A::Error> {
    let mut names: Vec<(usize, usize)> = Vec::new();
    loop {
        let mark = out.len();
        let entry = begin(out, FIELD_1);
        let Some((key_start, key_end)) = map.next_key_seed(KeySeed { out: &mut *out })? else {
            out.truncate(mark);
            break;
        };
        let value = begin(out, FIELD_2);
        map.next_value_seed(ValueSeed { out: &mut *out })?;
        end(out, value);
        // Closing the entry may move its content (a longer length); the name moves with it.
        let before = out.len();
        end(out, entry);
        let shift = out.len() - before;
        names.push((key_start + shift, key_end + shift));
    }
    match duplicate(out, &names) {
        Some(name) => Err(de::Error::custom(format_args!(
            "duplicate member name {}",
            echo(&String::from_utf8_lossy(name))
        ))),
        None => Ok(()),
    }
}

/// The first name that occurs twice, if any.
fn duplicate<'a>(out: &'a [u8], names: &[(usize, usize)]) -> Option<&'a [u8]> {
    let name = |r: &(usize, usize)| out.get(r.0..r.1).unwrap_or_default();
    if names.len() <= PAIRWISE_LIMIT {
        for (i, a) in names.iter().enumerate() {
            if names[..i].iter().any(|b| name(a) == name(b)) {
                return Some(name(a));
            }
        }
        return None;
    }
    let mut sorted: Vec<&[u8]> = names.iter().map(name).collect();
    sorted.sort_unstable();
    sorted.windows(2).find(|w| w[0] == w[1]).map(|w| w[0])
}

/// A member name, written as `MapEntry.key`; yields where its bytes are.
struct KeySeed<'o> {
    out: &'o mut Vec<u8>,
}

impl<'de> DeserializeSeed<'de> for KeySeed<'_> {
    type Value = (usize, usize);
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(usize, usize), D::Error> {
        d.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for KeySeed<'_> {
    type Value = (usize, usize);

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a member name")
    }

    fn visit_str<E>(self, v: &str) -> Result<(usize, usize), E> {
        Ok(put_str(self.out, FIELD_1, v))
    }
}

/// Any JSON value, written as the content of a `google.protobuf.Value`.
struct ValueSeed<'o> {
    out: &'o mut Vec<u8>,
}

impl ValueSeed<'_> {
    fn number<E: de::Error>(self, v: f64) -> Result<(), E> {
        if !v.is_finite() {
            return Err(E::custom("number out of range"));
        }
        self.out.push(NUMBER);
        self.out.extend_from_slice(&v.to_le_bytes());
        Ok(())
    }
}

impl<'de> DeserializeSeed<'de> for ValueSeed<'_> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for ValueSeed<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_bool<E>(self, v: bool) -> Result<(), E> {
        self.out.extend_from_slice(&[BOOL, u8::from(v)]);
        Ok(())
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<(), E> {
        self.number(v as f64)
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<(), E> {
        self.number(v as f64)
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<(), E> {
        self.number(v)
    }
    fn visit_str<E>(self, v: &str) -> Result<(), E> {
        put_str(self.out, STRING, v);
        Ok(())
    }
    fn visit_unit<E>(self) -> Result<(), E> {
        self.out.extend_from_slice(&[NULL, 0]);
        Ok(())
    }
    fn visit_none<E: de::Error>(self) -> Result<(), E> {
        self.visit_unit()
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let out = self.out;
        let list = begin(out, LIST);
        loop {
            let mark = out.len();
            let item = begin(out, FIELD_1);
            if seq
                .next_element_seed(ValueSeed { out: &mut *out })?
                .is_none()
            {
                out.truncate(mark);
                break;
            }
            end(out, item);
        }
        end(out, list);
        Ok(())
    }
    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<(), A::Error> {
        let out = self.out;
        let object = begin(out, STRUCT);
        write_members(out, map)?;
        end(out, object);
        Ok(())
    }
}

/// One field read back: its number and its payload.
enum Field<'a> {
    Varint(u64),
    Fixed64([u8; 8]),
    Bytes(&'a [u8]),
}

fn read_varint(buf: &mut &[u8]) -> Option<u64> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let (&b, rest) = buf.split_first()?;
        *buf = rest;
        v |= u64::from(b & 0x7F) << shift;
        if b < 0x80 {
            return Some(v);
        }
    }
    None
}

/// The next field of `buf`, or `None` at its end (or on bytes this module did not write).
fn read_field<'a>(buf: &mut &'a [u8]) -> Option<(u64, Field<'a>)> {
    let key = read_varint(buf)?;
    let field = match key & 7 {
        0 => Field::Varint(read_varint(buf)?),
        1 => {
            let (bytes, rest) = buf.split_first_chunk::<8>()?;
            *buf = rest;
            Field::Fixed64(*bytes)
        }
        2 => {
            let len = usize::try_from(read_varint(buf)?).ok()?;
            let (bytes, rest) = buf.split_at_checked(len)?;
            *buf = rest;
            Field::Bytes(bytes)
        }
        _ => return None,
    };
    Some((key >> 3, field))
}

/// A JSON value read from the compact form.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ValueRef<'a> {
    /// `null`.
    Null,
    /// `true` or `false`.
    Bool(bool),
    /// A number (every JSON number is held as a double, as in `google.protobuf.Value`).
    Number(f64),
    /// A string.
    String(&'a str),
    /// An array.
    List(ListRef<'a>),
    /// An object.
    Object(ObjectRef<'a>),
}

impl<'a> ValueRef<'a> {
    /// Decodes the content of a `google.protobuf.Value`.
    pub fn decode(mut bytes: &'a [u8]) -> Self {
        match read_field(&mut bytes) {
            Some((2, Field::Fixed64(b))) => ValueRef::Number(f64::from_le_bytes(b)),
            Some((3, Field::Bytes(b))) => ValueRef::String(std::str::from_utf8(b).unwrap_or("")),
            Some((4, Field::Varint(v))) => ValueRef::Bool(v != 0),
            Some((5, Field::Bytes(b))) => ValueRef::Object(ObjectRef(b)),
            Some((6, Field::Bytes(b))) => ValueRef::List(ListRef(b)),
            _ => ValueRef::Null,
        }
    }

    /// The string, if this is one.
    pub fn as_str(self) -> Option<&'a str> {
        match self {
            ValueRef::String(s) => Some(s),
            _ => None,
        }
    }

    /// The value as `serde_json`'s (integral numbers below 2^53 as integers).
    pub fn to_json(self) -> Value {
        match self {
            ValueRef::Null => Value::Null,
            ValueRef::Bool(b) => Value::Bool(b),
            ValueRef::Number(n) if n.fract() == 0.0 && n.abs() < 9.0e15 => Value::from(n as i64),
            ValueRef::Number(n) => Number::from_f64(n).map_or(Value::Null, Value::Number),
            ValueRef::String(s) => Value::String(s.to_owned()),
            ValueRef::List(l) => Value::Array(l.iter().map(ValueRef::to_json).collect()),
            ValueRef::Object(o) => Value::Object(o.to_json()),
        }
    }
}

/// An array in the compact form (the content of a `google.protobuf.ListValue`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ListRef<'a>(&'a [u8]);

impl<'a> ListRef<'a> {
    /// Reads a list's content.
    pub fn new(bytes: &'a [u8]) -> Self {
        Self(bytes)
    }

    /// The encoded bytes.
    pub fn bytes(self) -> &'a [u8] {
        self.0
    }

    /// Its elements, in order.
    pub fn iter(self) -> impl Iterator<Item = ValueRef<'a>> + Clone {
        let mut buf = self.0;
        std::iter::from_fn(move || match read_field(&mut buf)? {
            (1, Field::Bytes(b)) => Some(ValueRef::decode(b)),
            _ => None,
        })
    }
}

/// An object in the compact form (the content of a `google.protobuf.Struct`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ObjectRef<'a>(&'a [u8]);

impl<'a> ObjectRef<'a> {
    /// Reads an object written by [`parse_object`].
    pub fn new(bytes: &'a [u8]) -> Self {
        Self(bytes)
    }

    /// The encoded bytes.
    pub fn bytes(self) -> &'a [u8] {
        self.0
    }

    /// Its members, in document order.
    pub fn iter(self) -> impl Iterator<Item = (&'a str, ValueRef<'a>)> + Clone {
        self.entries().map(|(name, value)| {
            (
                std::str::from_utf8(name).unwrap_or(""),
                value.map_or(ValueRef::Null, ValueRef::decode),
            )
        })
    }

    /// Its members as encoded: each name's bytes and its value's (`None`: no value
    /// field, a null written by another encoder). Nothing is checked or decoded, so a
    /// lookup by name reads only the names and decodes only the value it finds.
    fn entries(self) -> impl Iterator<Item = (&'a [u8], Option<&'a [u8]>)> + Clone {
        let mut buf = self.0;
        std::iter::from_fn(move || {
            let (1, Field::Bytes(mut entry)) = read_field(&mut buf)? else {
                return None;
            };
            let (mut name, mut value): (&[u8], _) = (&[], None);
            while let Some((n, f)) = read_field(&mut entry) {
                match (n, f) {
                    (1, Field::Bytes(b)) => name = b,
                    (2, Field::Bytes(b)) => value = Some(b),
                    _ => {}
                }
            }
            Some((name, value))
        })
    }

    /// The member named `name`.
    pub fn get(self, name: &str) -> Option<ValueRef<'a>> {
        self.entries()
            .find(|(n, _)| *n == name.as_bytes())
            .map(|(_, v)| v.map_or(ValueRef::Null, ValueRef::decode))
    }

    /// The members named `names`, in one pass (`None` where there is none).
    pub fn pick<const N: usize>(self, names: [&str; N]) -> [Option<ValueRef<'a>>; N] {
        let mut found = [None; N];
        for (name, value) in self.entries() {
            if let Some(i) = names.iter().position(|n| n.as_bytes() == name)
                && let Some(slot) = found.get_mut(i)
            {
                *slot = Some(value.map_or(ValueRef::Null, ValueRef::decode));
            }
        }
        found
    }

    /// Whether a member is named `name` (its value is not decoded).
    pub fn contains(self, name: &str) -> bool {
        self.entries().any(|(n, _)| n == name.as_bytes())
    }

    /// The object as a `serde_json` map, members in document order.
    pub fn to_json(self) -> Map<String, Value> {
        self.iter()
            .map(|(n, v)| (n.to_owned(), v.to_json()))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn round_trip(v: &Value) -> Value {
        let bytes = parse_object(v.to_string().as_bytes()).expect("parses");
        Value::Object(ObjectRef::new(&bytes).to_json())
    }

    #[test]
    fn objects_round_trip_in_document_order() {
        let v =
            json!({"z": 1, "a": [true, null, "x", {"k": -2.5}], "m": {"n": {"o": "p"}}, "e": ""});
        assert_eq!(round_trip(&v), v);
        let keys: Vec<String> = round_trip(&v)
            .as_object()
            .expect("object")
            .keys()
            .cloned()
            .collect();
        assert_eq!(keys, ["z", "a", "m", "e"]);
    }

    #[test]
    fn long_members_get_long_lengths() {
        // Members over 127 bytes move their content to make room for a longer length;
        // names recorded before that must still be found.
        let long = "x".repeat(300);
        let v = json!({"a": long, "b": {"c": "y".repeat(20_000)}, "d": [long, long]});
        assert_eq!(round_trip(&v), v);
        let dup = format!(r#"{{"a":"{long}","b":1,"a":2}}"#);
        let err = parse_object(dup.as_bytes()).expect_err("duplicate");
        assert!(err.contains("duplicate member name `a`"), "{err}");
    }

    #[test]
    fn rejects_duplicates_at_any_depth_and_any_size() {
        assert!(parse_object(br#"{"a":1,"a":2}"#).is_err());
        assert!(parse_object(br#"{"a":{"b":1,"b":1}}"#).is_err());
        assert!(parse_object(br#"{"a":[{"b":1,"b":1}]}"#).is_err());
        assert!(
            parse_object(br#"{"a":1,"\u0061":2}"#).is_err(),
            "escapes decoded first"
        );
        let many: Vec<String> = (0..100).map(|i| format!(r#""k{i}":{i}"#)).collect();
        let ok = format!("{{{}}}", many.join(","));
        assert!(parse_object(ok.as_bytes()).is_ok());
        let dup = format!("{{{},\"k7\":0}}", many.join(","));
        assert!(parse_object(dup.as_bytes()).is_err(), "sorted check");
    }

    #[test]
    fn rejects_non_objects_and_trailing_data() {
        assert!(parse_object(b"[1]").is_err());
        assert!(parse_object(b"\"s\"").is_err());
        assert!(parse_object(b"foo").is_err());
        assert!(parse_object(br#"{"a":1} x"#).is_err());
        assert!(parse_object(br#"{"a":1e999}"#).is_err());
    }

    #[test]
    fn is_the_wire_encoding_of_google_protobuf_struct() {
        // {"a": "b", "n": null}: two map entries, key field 1, Value field 2.
        let bytes = parse_object(br#"{"a":"b","n":null}"#).expect("parses");
        assert_eq!(
            bytes,
            [
                0x0A, 0x08, 0x0A, 0x01, b'a', 0x12, 0x03, 0x1A, 0x01, b'b', //
                0x0A, 0x07, 0x0A, 0x01, b'n', 0x12, 0x02, 0x08, 0x00,
            ]
        );
    }

    #[test]
    fn lookups() {
        let bytes = parse_object(br#"{"s":"v","n":3,"l":["x","y"],"o":{"p":true}}"#).expect("ok");
        let o = ObjectRef::new(&bytes);
        assert_eq!(o.get("s").and_then(ValueRef::as_str), Some("v"));
        assert_eq!(o.get("n"), Some(ValueRef::Number(3.0)));
        assert!(o.contains("o") && !o.contains("missing"));
        let Some(ValueRef::List(l)) = o.get("l") else {
            panic!("list");
        };
        assert_eq!(
            l.iter().filter_map(ValueRef::as_str).collect::<Vec<_>>(),
            ["x", "y"]
        );
        let [n, missing, s, null] = o.pick(["n", "missing", "s", "z"]);
        assert_eq!(n, Some(ValueRef::Number(3.0)));
        assert_eq!((missing, null), (None, None));
        assert_eq!(s.and_then(ValueRef::as_str), Some("v"));
        let nulls = parse_object(br#"{"a":null}"#).expect("ok");
        assert_eq!(
            ObjectRef::new(&nulls).pick(["a"]),
            [Some(ValueRef::Null)],
            "a null member is there"
        );
    }
}
