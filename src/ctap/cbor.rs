//! CTAP2 canonical CBOR encoding.
//!
//! CTAP2 requires requests in its canonical form: definite lengths, minimal
//! length encodings, and map keys sorted by major type, then by encoded
//! length, then bytewise. ciborium writes map entries in insertion order, so
//! requests are built from [`Value`] and sorted here before they are written.
//! Responses are decoded with ciborium; see the helpers at the end of this file.

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
fn canonical_key_order(a: &[u8], b: &[u8]) -> std::cmp::Ordering {
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
}
