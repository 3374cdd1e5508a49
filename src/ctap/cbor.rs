//! CTAP2 canonical CBOR encoding, and decoding of responses.
//!
//! CTAP2 requires requests in its canonical form: definite lengths, minimal
//! length encodings, and map keys sorted by major type, then by encoded
//! length, then bytewise. ciborium writes map entries in insertion order, so
//! requests are built from [`Value`] and sorted here before they are written.
//! Responses are decoded with ciborium; see the helpers at the end of this file.

use std::collections::BTreeMap;
use std::fmt;

use ciborium::Value as Item;

/// A CBOR data item of the kinds CTAP2 requests use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    /// An integer: major type 0 when non-negative, 1 when negative.
    Int(i64),
    Bytes(Vec<u8>),
    Text(String),
    Array(Vec<Value>),
    /// Entries in any order; [`encode`] sorts them canonically.
    Map(Vec<(Value, Value)>),
    Bool(bool),
}

impl Value {
    pub fn text(s: impl Into<String>) -> Value {
        Value::Text(s.into())
    }

    pub fn bytes(b: impl Into<Vec<u8>>) -> Value {
        Value::Bytes(b.into())
    }
}

const MAJOR_UNSIGNED: u8 = 0;
const MAJOR_NEGATIVE: u8 = 1;
const MAJOR_BYTES: u8 = 2;
const MAJOR_TEXT: u8 = 3;
const MAJOR_ARRAY: u8 = 4;
const MAJOR_MAP: u8 = 5;
const SIMPLE_FALSE: u8 = 0xf4;
const SIMPLE_TRUE: u8 = 0xf5;

/// Encodes `value` in CTAP2 canonical form.
pub fn encode(value: &Value) -> Vec<u8> {
    let mut out = Vec::new();
    encode_into(value, &mut out);
    out
}

/// Appends the canonical encoding of `value` to `out`.
pub fn encode_into(value: &Value, out: &mut Vec<u8>) {
    match value {
        Value::Int(n) if *n >= 0 => write_head(MAJOR_UNSIGNED, *n as u64, out),
        // A negative integer n is written as major type 1 with argument -1 - n,
        // which `!n` computes without overflow for i64::MIN.
        Value::Int(n) => write_head(MAJOR_NEGATIVE, !*n as u64, out),
        Value::Bytes(b) => {
            write_head(MAJOR_BYTES, b.len() as u64, out);
            out.extend_from_slice(b);
        }
        Value::Text(s) => {
            write_head(MAJOR_TEXT, s.len() as u64, out);
            out.extend_from_slice(s.as_bytes());
        }
        Value::Array(items) => {
            write_head(MAJOR_ARRAY, items.len() as u64, out);
            for item in items {
                encode_into(item, out);
            }
        }
        Value::Map(entries) => {
            let mut encoded: Vec<(Vec<u8>, Vec<u8>)> = entries
                .iter()
                .map(|(k, v)| (encode(k), encode(v)))
                .collect();
            encoded.sort_by(|(a, _), (b, _)| canonical_key_order(a, b));
            write_head(MAJOR_MAP, encoded.len() as u64, out);
            for (k, v) in encoded {
                out.extend_from_slice(&k);
                out.extend_from_slice(&v);
            }
        }
        Value::Bool(false) => out.push(SIMPLE_FALSE),
        Value::Bool(true) => out.push(SIMPLE_TRUE),
    }
}

/// Orders two encoded map keys as CTAP2 requires: by major type, then by
/// encoded length, then bytewise.
pub(crate) fn canonical_key_order(a: &[u8], b: &[u8]) -> std::cmp::Ordering {
    let major = |k: &[u8]| k.first().map(|b| b >> 5).unwrap_or(0);
    major(a)
        .cmp(&major(b))
        .then(a.len().cmp(&b.len()))
        .then_with(|| a.cmp(b))
}

/// Writes a CBOR head with the shortest argument encoding.
fn write_head(major: u8, argument: u64, out: &mut Vec<u8>) {
    let m = major << 5;
    if argument < 24 {
        out.push(m | argument as u8);
    } else if argument <= u8::MAX as u64 {
        out.push(m | 24);
        out.push(argument as u8);
    } else if argument <= u16::MAX as u64 {
        out.push(m | 25);
        out.extend_from_slice(&(argument as u16).to_be_bytes());
    } else if argument <= u32::MAX as u64 {
        out.push(m | 26);
        out.extend_from_slice(&(argument as u32).to_be_bytes());
    } else {
        out.push(m | 27);
        out.extend_from_slice(&argument.to_be_bytes());
    }
}

// Decoding.
//
// Responses come from the card and are hostile input. They are decoded with
// ciborium into `ciborium::Value`, which keeps map entries in wire order, so
// duplicate keys and key order stay visible to the checks below. Responses
// need not be canonical: non-minimal lengths and other deviations whose
// meaning is unambiguous are accepted.

/// Maximum length in bytes of a CBOR message accepted for decoding: the
/// largest CTAPHID message (57 bytes in the init frame plus 128
/// continuation frames of 59 bytes).
pub const MAX_MESSAGE_LEN: usize = 7609;

/// Maximum nesting depth of arrays, maps and tags accepted for decoding.
/// The deepest CTAP2 response cardgate reads nests three levels (getInfo
/// algorithms: map, array, map), and the limit bounds the recursion.
pub const MAX_NESTING: usize = 16;

/// The `found` text of an error for a required key that is absent.
const FOUND_NOTHING: &str = "nothing";

/// A CTAP2 structure that could not be decoded: which structure and field
/// failed, what was expected and what was found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseError {
    /// The structure being decoded, for example `authenticatorData`.
    pub structure: &'static str,
    /// The field inside the structure, for example `rp.id`; empty when the
    /// structure as a whole failed.
    pub field: String,
    pub expected: String,
    pub found: String,
}

impl ParseError {
    pub fn new(
        structure: &'static str,
        field: impl Into<String>,
        expected: impl Into<String>,
        found: impl Into<String>,
    ) -> Self {
        ParseError {
            structure,
            field: field.into(),
            expected: expected.into(),
            found: found.into(),
        }
    }

    /// Builds the error for a required field that is absent.
    pub fn missing(structure: &'static str, field: impl Into<String>, expected: &str) -> Self {
        ParseError::new(structure, field, expected, FOUND_NOTHING)
    }

    /// Returns whether the error is a required field that is absent.
    pub fn is_missing(&self) -> bool {
        self.found == FOUND_NOTHING
    }
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.field.is_empty() {
            write!(f, "{}", self.structure)?;
        } else {
            write!(f, "{}.{}", self.structure, self.field)?;
        }
        write!(f, ": expected {}, found {}", self.expected, self.found)
    }
}

impl std::error::Error for ParseError {}

/// Decodes `bytes` as exactly one CBOR data item; bytes left after it are
/// an error.
pub fn decode(structure: &'static str, bytes: &[u8]) -> Result<Item, ParseError> {
    let (item, consumed) = decode_prefix(structure, bytes)?;
    let left = bytes.len().saturating_sub(consumed);
    if left != 0 {
        return Err(ParseError::new(
            structure,
            "",
            "exactly one CBOR data item",
            format!("{left} bytes after it"),
        ));
    }
    Ok(item)
}

/// Decodes the CBOR data item at the start of `bytes` and returns it with
/// the number of bytes it occupies. authenticatorData needs this because
/// the extensions follow the credential public key without a length.
pub fn decode_prefix(structure: &'static str, bytes: &[u8]) -> Result<(Item, usize), ParseError> {
    if bytes.len() > MAX_MESSAGE_LEN {
        return Err(ParseError::new(
            structure,
            "",
            format!("at most {MAX_MESSAGE_LEN} bytes of CBOR"),
            format!("{} bytes", bytes.len()),
        ));
    }

    let mut rest = bytes;
    let decoded = ciborium::de::from_reader_with_recursion_limit::<Item, _>(&mut rest, MAX_NESTING);
    let item = decoded.map_err(|error| {
        let found = match error {
            ciborium::de::Error::Io(_) => format!("the input ends after {} bytes", bytes.len()),
            ciborium::de::Error::Syntax(offset) => format!("malformed CBOR at byte {offset}"),
            ciborium::de::Error::Semantic(_, message) => message,
            ciborium::de::Error::RecursionLimitExceeded => {
                format!("more than {MAX_NESTING} levels of nesting")
            }
        };
        ParseError::new(structure, "", "a well-formed CBOR data item", found)
    })?;
    Ok((item, bytes.len() - rest.len()))
}

/// Describes a decoded item for the `found` part of an error message.
pub fn describe(item: &Item) -> String {
    match item {
        Item::Integer(n) => format!("integer {}", i128::from(*n)),
        Item::Bytes(b) => format!("a byte string of {} bytes", b.len()),
        Item::Text(t) if t.chars().count() > 40 => {
            let start: String = t.chars().take(40).collect();
            format!("text \"{start}...\"")
        }
        Item::Text(t) => format!("text \"{t}\""),
        Item::Bool(b) => format!("{b}"),
        Item::Null => "null".to_string(),
        Item::Float(x) => format!("float {x}"),
        Item::Tag(tag, _) => format!("an item with tag {tag}"),
        Item::Array(items) => format!("an array of {} items", items.len()),
        Item::Map(entries) => format!("a map of {} entries", entries.len()),
        _ => "an unsupported CBOR item".to_string(),
    }
}

/// A decoded CBOR item and the name of the field it was read from, with
/// typed accessors whose errors name that field.
#[derive(Debug, Clone)]
pub struct Field<'a> {
    structure: &'static str,
    name: String,
    item: &'a Item,
}

/// A decoded CBOR map with integer and text keys. Construction rejects
/// duplicate keys. Keys of other types are ignored.
#[derive(Debug)]
pub struct MapView<'a> {
    structure: &'static str,
    path: String,
    by_int: BTreeMap<i128, &'a Item>,
    by_text: BTreeMap<&'a str, &'a Item>,
    entries: &'a [(Item, Item)],
}

impl<'a> Field<'a> {
    pub fn new(structure: &'static str, name: impl Into<String>, item: &'a Item) -> Self {
        Field {
            structure,
            name: name.into(),
            item,
        }
    }

    /// Returns the field's name as errors show it.
    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn item(&self) -> &'a Item {
        self.item
    }

    /// Builds the error for this field holding something unexpected.
    pub fn unexpected(&self, expected: impl Into<String>) -> ParseError {
        ParseError::new(
            self.structure,
            self.name.clone(),
            expected,
            describe(self.item),
        )
    }

    pub fn bytes(&self) -> Result<&'a [u8], ParseError> {
        match self.item {
            Item::Bytes(b) => Ok(b),
            _ => Err(self.unexpected("a byte string")),
        }
    }

    /// Reads a byte string of exactly `N` bytes.
    pub fn byte_array<const N: usize>(&self) -> Result<[u8; N], ParseError> {
        let bytes = self.bytes()?;
        <[u8; N]>::try_from(bytes)
            .map_err(|_| self.unexpected(format!("a byte string of {N} bytes")))
    }

    pub fn text(&self) -> Result<&'a str, ParseError> {
        match self.item {
            Item::Text(t) => Ok(t),
            _ => Err(self.unexpected("a text string")),
        }
    }

    /// Reads an unsigned integer.
    pub fn uint(&self) -> Result<u64, ParseError> {
        match self.item {
            Item::Integer(n) => {
                u64::try_from(i128::from(*n)).map_err(|_| self.unexpected("an unsigned integer"))
            }
            _ => Err(self.unexpected("an unsigned integer")),
        }
    }

    /// Reads an integer in the range of `i64`.
    pub fn int(&self) -> Result<i64, ParseError> {
        match self.item {
            Item::Integer(n) => i64::try_from(i128::from(*n))
                .map_err(|_| self.unexpected("an integer in the 64-bit signed range")),
            _ => Err(self.unexpected("an integer")),
        }
    }

    pub fn boolean(&self) -> Result<bool, ParseError> {
        match self.item {
            Item::Bool(b) => Ok(*b),
            _ => Err(self.unexpected("true or false")),
        }
    }

    /// Reads an array whose elements are named `NAME[i]` in errors.
    pub fn array(&self) -> Result<Vec<Field<'a>>, ParseError> {
        match self.item {
            Item::Array(items) => Ok(items
                .iter()
                .enumerate()
                .map(|(i, item)| Field::new(self.structure, format!("{}[{i}]", self.name), item))
                .collect()),
            _ => Err(self.unexpected("an array")),
        }
    }

    /// Reads an array of text strings.
    pub fn text_array(&self) -> Result<Vec<String>, ParseError> {
        self.array()?
            .iter()
            .map(|item| item.text().map(str::to_string))
            .collect()
    }

    /// Reads a map whose fields are named `NAME.KEY` in errors.
    pub fn map(&self) -> Result<MapView<'a>, ParseError> {
        MapView::new(self.structure, &self.name, self.item)
    }
}

impl<'a> MapView<'a> {
    /// Checks that `item` is a map without duplicate keys. `path` names the
    /// map inside `structure` and prefixes the names of its fields; it is
    /// empty for the top-level map.
    pub fn new(structure: &'static str, path: &str, item: &'a Item) -> Result<Self, ParseError> {
        let Item::Map(entries) = item else {
            return Err(ParseError::new(structure, path, "a map", describe(item)));
        };

        let mut view = MapView {
            structure,
            path: path.to_string(),
            by_int: BTreeMap::new(),
            by_text: BTreeMap::new(),
            entries,
        };
        for (key, value) in entries {
            let duplicate = match key {
                Item::Integer(n) => view.by_int.insert(i128::from(*n), value).is_some(),
                Item::Text(t) => view.by_text.insert(t.as_str(), value).is_some(),
                _ => false,
            };
            if duplicate {
                return Err(ParseError::new(
                    structure,
                    path,
                    "a map without duplicate keys",
                    format!("key {} twice", describe(key)),
                ));
            }
        }
        Ok(view)
    }

    /// Returns the entries in wire order.
    pub fn entries(&self) -> &'a [(Item, Item)] {
        self.entries
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Returns the full name of the field `name` of this map, as errors show it.
    pub fn field_name(&self, name: &str) -> String {
        if self.path.is_empty() {
            name.to_string()
        } else {
            format!("{}.{name}", self.path)
        }
    }

    /// Builds the error for a required field of this map that is absent.
    pub fn missing(&self, name: &str, expected: &str) -> ParseError {
        ParseError::missing(self.structure, self.field_name(name), expected)
    }

    /// Builds an error about the field `name` of this map.
    pub fn error(
        &self,
        name: &str,
        expected: impl Into<String>,
        found: impl Into<String>,
    ) -> ParseError {
        ParseError::new(self.structure, self.field_name(name), expected, found)
    }

    /// Looks up an integer key.
    pub fn int_key(&self, key: i64) -> Option<&'a Item> {
        self.by_int.get(&i128::from(key)).copied()
    }

    /// Looks up a text key.
    pub fn text_key(&self, key: &str) -> Option<&'a Item> {
        self.by_text.get(key).copied()
    }

    /// Returns the integer keys present, in ascending order.
    pub fn int_keys(&self) -> impl Iterator<Item = i128> + '_ {
        self.by_int.keys().copied()
    }

    /// Returns the value of integer key `key`, named `name` in errors.
    pub fn optional(&self, key: i64, name: &str) -> Option<Field<'a>> {
        self.int_key(key)
            .map(|item| Field::new(self.structure, self.field_name(name), item))
    }

    /// Returns the value of integer key `key`, which must be present.
    pub fn required(&self, key: i64, name: &str) -> Result<Field<'a>, ParseError> {
        self.optional(key, name)
            .ok_or_else(|| self.missing(name, &format!("key {key}")))
    }

    /// Returns the value of text key `key`.
    pub fn optional_text(&self, key: &str) -> Option<Field<'a>> {
        self.text_key(key)
            .map(|item| Field::new(self.structure, self.field_name(key), item))
    }

    /// Returns the value of text key `key`, which must be present.
    pub fn required_text(&self, key: &str) -> Result<Field<'a>, ParseError> {
        self.optional_text(key)
            .ok_or_else(|| self.missing(key, &format!("key \"{key}\"")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn integer_keys_sort_positive_then_negative() {
        let map = Value::Map(vec![
            (Value::Int(-2), Value::Int(0)),
            (Value::Int(3), Value::Int(0)),
            (Value::Int(-1), Value::Int(0)),
            (Value::Int(1), Value::Int(0)),
            (Value::Int(-3), Value::Int(0)),
        ]);
        assert_eq!(
            hex::encode(encode(&map)),
            "a5010003002000210022 00".replace(' ', "")
        );
    }

    #[test]
    fn text_keys_sort_by_length_then_bytes() {
        let map = Value::Map(vec![
            (Value::text("displayName"), Value::text("d")),
            (Value::text("name"), Value::text("n")),
            (Value::text("id"), Value::bytes(vec![1])),
        ]);
        let encoded = encode(&map);
        let id = encoded.windows(3).position(|w| w == b"bid");
        let name = encoded.windows(5).position(|w| w == b"dname");
        let display = encoded.windows(12).position(|w| w == b"kdisplayName");
        assert!(id < name, "id must come before name");
        assert!(name < display, "name must come before displayName");
    }

    #[test]
    fn integer_keys_sort_before_text_keys_of_any_length() {
        let map = Value::Map(vec![
            (Value::text("a"), Value::Int(0)),
            (Value::Int(1000), Value::Int(0)),
        ]);
        assert_eq!(hex::encode(encode(&map)), "a21903e800616100");
    }

    #[test]
    fn heads_use_minimal_lengths() {
        assert_eq!(encode(&Value::Int(23)), [0x17]);
        assert_eq!(encode(&Value::Int(24)), [0x18, 24]);
        assert_eq!(encode(&Value::Int(256)), [0x19, 1, 0]);
        assert_eq!(encode(&Value::Int(65536)), [0x1a, 0, 1, 0, 0]);
        assert_eq!(encode(&Value::Int(-1)), [0x20]);
        assert_eq!(encode(&Value::Int(-7)), [0x26]);
        assert_eq!(encode(&Value::Int(-257)), [0x39, 1, 0]);
        assert_eq!(encode(&Value::Int(i64::MIN))[0], 0x3b);
    }

    #[test]
    fn booleans_and_containers_encode() {
        let value = Value::Array(vec![Value::Bool(true), Value::Bool(false)]);
        assert_eq!(encode(&value), [0x82, 0xf5, 0xf4]);
        assert_eq!(encode(&Value::bytes(vec![0xaa; 2])), [0x42, 0xaa, 0xaa]);
    }

    #[test]
    fn decode_rejects_trailing_bytes() {
        let error = decode("test", &[0xa0, 0x00]).unwrap_err();
        assert_eq!(
            error.to_string(),
            "test: expected exactly one CBOR data item, found 1 bytes after it"
        );
    }

    #[test]
    fn decode_rejects_truncated_item() {
        let error = decode("test", &[0x43, 0x01, 0x02]).unwrap_err();
        assert_eq!(error.expected, "a well-formed CBOR data item");
        assert_eq!(error.found, "the input ends after 3 bytes");
    }

    #[test]
    fn decode_rejects_deep_nesting() {
        let mut nested = vec![0x81; MAX_NESTING];
        nested.push(0x00);
        assert!(decode("test", &nested).is_ok());

        let mut too_deep = vec![0x81; MAX_NESTING + 1];
        too_deep.push(0x00);
        let error = decode("test", &too_deep).unwrap_err();
        assert_eq!(
            error.found,
            format!("more than {MAX_NESTING} levels of nesting")
        );
    }

    #[test]
    fn decode_rejects_oversized_input() {
        let mut big = vec![0x5a, 0x00, 0x00, 0x1d, 0xb6];
        big.resize(5 + MAX_MESSAGE_LEN, 0);
        let error = decode("test", &big).unwrap_err();
        assert_eq!(error.found, format!("{} bytes", MAX_MESSAGE_LEN + 5));
    }

    #[test]
    fn decode_rejects_length_beyond_input() {
        // A byte string that claims 2^32 - 1 bytes but has two.
        let error = decode("test", &[0x5a, 0xff, 0xff, 0xff, 0xff, 0x01, 0x02]).unwrap_err();
        assert_eq!(error.expected, "a well-formed CBOR data item");
    }

    #[test]
    fn decode_accepts_non_minimal_length() {
        let item = decode("test", &[0x59, 0x00, 0x01, 0xaa]).unwrap();
        assert_eq!(item, Item::Bytes(vec![0xaa]));
    }

    #[test]
    fn decode_prefix_returns_consumed_length() {
        let (item, consumed) = decode_prefix("test", &[0x82, 0x01, 0x02, 0xff]).unwrap();
        assert_eq!(consumed, 3);
        assert!(matches!(item, Item::Array(ref items) if items.len() == 2));
    }

    #[test]
    fn map_view_rejects_duplicate_text_key() {
        // {"a": 1, "a": 2}
        let item = decode("test", &[0xa2, 0x61, 0x61, 0x01, 0x61, 0x61, 0x02]).unwrap();
        let error = MapView::new("test", "options", &item).unwrap_err();
        assert_eq!(
            error.to_string(),
            "test.options: expected a map without duplicate keys, found key text \"a\" twice"
        );
    }

    #[test]
    fn map_view_reports_missing_and_mistyped_keys() {
        // {1: "x"}
        let item = decode("test", &[0xa1, 0x01, 0x61, 0x78]).unwrap();
        let map = MapView::new("test", "", &item).unwrap();

        let missing = map.required(2, "authData").unwrap_err();
        assert!(missing.is_missing());
        assert_eq!(
            missing.to_string(),
            "test.authData: expected key 2, found nothing"
        );

        let mistyped = map.required(1, "fmt").unwrap().bytes().unwrap_err();
        assert!(!mistyped.is_missing());
        assert_eq!(
            mistyped.to_string(),
            "test.fmt: expected a byte string, found text \"x\""
        );
    }

    #[test]
    fn uint_rejects_negative_integer() {
        let item = decode("test", &[0x20]).unwrap();
        let error = Field::new("test", "count", &item).uint().unwrap_err();
        assert_eq!(error.found, "integer -1");
    }
}
