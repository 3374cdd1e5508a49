//! COSE_Key for the one kind of credential key cardgate accepts: an EC2
//! key on P-256 used with ES256.
//!
//! In authenticatorData the credential public key is a CBOR map followed
//! directly by the extensions, so parsing returns how many bytes the key
//! used. The map must have no duplicate keys and its keys must be in CTAP2
//! canonical order, because a reordered or doubled key is either a broken
//! card or an attempt to make two parsers read different keys.

use p256::ecdsa::VerifyingKey;

use crate::ctap::cbor::{self, MapView, ParseError, Value};

const STRUCTURE: &str = "COSE_Key";

/// COSE key parameter `kty` (key type).
const LABEL_KTY: i64 = 1;
/// COSE key parameter `alg` (algorithm).
const LABEL_ALG: i64 = 3;
/// EC2 key parameter `crv` (curve).
const LABEL_CRV: i64 = -1;
/// EC2 key parameter `x` (x-coordinate).
const LABEL_X: i64 = -2;
/// EC2 key parameter `y` (y-coordinate).
const LABEL_Y: i64 = -3;

/// COSE key type EC2 (elliptic curve keys with x- and y-coordinate).
pub const KTY_EC2: i64 = 2;
/// COSE algorithm ES256: ECDSA with SHA-256.
pub const ALG_ES256: i64 = -7;
/// COSE elliptic curve P-256.
pub const CRV_P256: i64 = 1;

/// Length in bytes of one P-256 coordinate.
const COORDINATE_LEN: usize = 32;

/// A P-256 public key for ES256, as carried in a COSE_Key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CoseKey {
    pub x: [u8; 32],
    pub y: [u8; 32],
}

impl CoseKey {
    /// Parses the COSE_Key at the start of `bytes` and returns it with the
    /// number of bytes it occupies.
    pub fn parse(bytes: &[u8]) -> Result<(CoseKey, usize), ParseError> {
        let (item, consumed) = cbor::decode_prefix(STRUCTURE, bytes)?;
        let map = MapView::new(STRUCTURE, "", &item)?;
        check_canonical_key_order(&map)?;

        let kty = map.required(LABEL_KTY, "kty (1)")?;
        expect_value(&map, "kty (1)", kty.int()?, KTY_EC2, kty_name)?;
        let alg = map.required(LABEL_ALG, "alg (3)")?;
        expect_value(&map, "alg (3)", alg.int()?, ALG_ES256, alg_name)?;
        let crv = map.required(LABEL_CRV, "crv (-1)")?;
        expect_value(&map, "crv (-1)", crv.int()?, CRV_P256, crv_name)?;

        let x = map
            .required(LABEL_X, "x (-2)")?
            .byte_array::<COORDINATE_LEN>()?;
        let y = map
            .required(LABEL_Y, "y (-3)")?
            .byte_array::<COORDINATE_LEN>()?;
        Ok((CoseKey { x, y }, consumed))
    }

    /// Parses a COSE_Key that fills all of `bytes`.
    pub fn parse_exact(bytes: &[u8]) -> Result<CoseKey, ParseError> {
        let (key, consumed) = CoseKey::parse(bytes)?;
        let left = bytes.len().saturating_sub(consumed);
        if left != 0 {
            return Err(ParseError::new(
                STRUCTURE,
                "",
                "nothing after the key",
                format!("{left} bytes"),
            ));
        }
        Ok(key)
    }

    /// Returns the key for signature verification; fails when the point is
    /// not on P-256.
    pub fn verifying_key(&self) -> Result<VerifyingKey, ParseError> {
        let mut sec1 = [0u8; 1 + 2 * COORDINATE_LEN];
        sec1[0] = 0x04;
        sec1[1..1 + COORDINATE_LEN].copy_from_slice(&self.x);
        sec1[1 + COORDINATE_LEN..].copy_from_slice(&self.y);
        VerifyingKey::from_sec1_bytes(&sec1).map_err(|_| {
            ParseError::new(
                STRUCTURE,
                "x (-2), y (-3)",
                "a point on the P-256 curve",
                format!("x={} y={}", hex::encode(self.x), hex::encode(self.y)),
            )
        })
    }

    pub fn from_verifying_key(key: &VerifyingKey) -> CoseKey {
        let point = key.to_sec1_point(false);
        let mut x = [0u8; COORDINATE_LEN];
        let mut y = [0u8; COORDINATE_LEN];
        // An uncompressed point on a valid key always has both coordinates.
        if let (Some(px), Some(py)) = (point.x(), point.y()) {
            x.copy_from_slice(px);
            y.copy_from_slice(py);
        }
        CoseKey { x, y }
    }

    /// Encodes the key as a canonical COSE_Key map.
    pub fn encode(&self) -> Vec<u8> {
        cbor::encode(&Value::Map(vec![
            (Value::Int(LABEL_KTY), Value::Int(KTY_EC2)),
            (Value::Int(LABEL_ALG), Value::Int(ALG_ES256)),
            (Value::Int(LABEL_CRV), Value::Int(CRV_P256)),
            (Value::Int(LABEL_X), Value::bytes(self.x)),
            (Value::Int(LABEL_Y), Value::bytes(self.y)),
        ]))
    }
}

/// Rejects a map whose keys are not in CTAP2 canonical order. Duplicate
/// keys were already rejected when the map was read.
fn check_canonical_key_order(map: &MapView<'_>) -> Result<(), ParseError> {
    let mut previous: Option<Vec<u8>> = None;
    for (key, _) in map.entries() {
        let Some(encoded) = encode_key(key) else {
            return Err(ParseError::new(
                STRUCTURE,
                "",
                "integer or text keys",
                format!("key {}", cbor::describe(key)),
            ));
        };
        if let Some(previous) = &previous {
            if cbor::canonical_key_order(previous, &encoded) != std::cmp::Ordering::Less {
                return Err(ParseError::new(
                    STRUCTURE,
                    "",
                    "keys in CTAP2 canonical order",
                    format!("key {} out of order", cbor::describe(key)),
                ));
            }
        }
        previous = Some(encoded);
    }
    Ok(())
}

/// Encodes a decoded map key canonically so that it can be compared.
fn encode_key(key: &ciborium::Value) -> Option<Vec<u8>> {
    match key {
        ciborium::Value::Integer(n) => {
            let n = i64::try_from(i128::from(*n)).ok()?;
            Some(cbor::encode(&Value::Int(n)))
        }
        ciborium::Value::Text(t) => Some(cbor::encode(&Value::text(t.as_str()))),
        _ => None,
    }
}

fn expect_value(
    map: &MapView<'_>,
    name: &str,
    found: i64,
    expected: i64,
    describe: fn(i64) -> Option<&'static str>,
) -> Result<(), ParseError> {
    if found == expected {
        return Ok(());
    }
    let label = |value: i64| match describe(value) {
        Some(meaning) => format!("{value} ({meaning})"),
        None => value.to_string(),
    };
    Err(map.error(name, label(expected), label(found)))
}

fn kty_name(kty: i64) -> Option<&'static str> {
    match kty {
        1 => Some("OKP"),
        2 => Some("EC2"),
        3 => Some("RSA"),
        4 => Some("Symmetric"),
        _ => None,
    }
}

fn alg_name(alg: i64) -> Option<&'static str> {
    match alg {
        -7 => Some("ES256"),
        -8 => Some("EdDSA"),
        -35 => Some("ES384"),
        -36 => Some("ES512"),
        -37 => Some("PS256"),
        -257 => Some("RS256"),
        _ => None,
    }
}

fn crv_name(crv: i64) -> Option<&'static str> {
    match crv {
        1 => Some("P-256"),
        2 => Some("P-384"),
        3 => Some("P-521"),
        6 => Some("Ed25519"),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The credential key of a YubiKey assertion (python-fido2 test data).
    const KEY_HEX: &str = "a5010203262001215820a5fd5ce1b1c458c530a54fa61b31bf6b04be8b97afde54dd8cbb69275a8a1be1225820fa3a3231dd9deed9d1897be5a6228c59501e4bcd12975d3dff730f01278ea61c";
    const X_HEX: &str = "a5fd5ce1b1c458c530a54fa61b31bf6b04be8b97afde54dd8cbb69275a8a1be1";
    const Y_HEX: &str = "fa3a3231dd9deed9d1897be5a6228c59501e4bcd12975d3dff730f01278ea61c";

    fn key_map(entries: Vec<(i64, Value)>) -> Vec<u8> {
        // Writes the entries in the given order, without sorting, so that
        // tests can build non-canonical maps.
        let mut out = vec![0xa0 | entries.len() as u8];
        for (label, value) in entries {
            cbor::encode_into(&Value::Int(label), &mut out);
            cbor::encode_into(&value, &mut out);
        }
        out
    }

    fn coordinates() -> (Value, Value) {
        let x = hex::decode(X_HEX).unwrap();
        let y = hex::decode(Y_HEX).unwrap();
        (Value::bytes(x), Value::bytes(y))
    }

    fn valid_entries() -> Vec<(i64, Value)> {
        let (x, y) = coordinates();
        vec![
            (1, Value::Int(2)),
            (3, Value::Int(-7)),
            (-1, Value::Int(1)),
            (-2, x),
            (-3, y),
        ]
    }

    #[test]
    fn parse_reads_coordinates_and_length() {
        let mut bytes = hex::decode(KEY_HEX).unwrap();
        let key_len = bytes.len();
        bytes.extend_from_slice(&[0xa1, 0x01, 0x02]);

        let (key, consumed) = CoseKey::parse(&bytes).unwrap();

        assert_eq!(consumed, key_len);
        assert_eq!(hex::encode(key.x), X_HEX);
        assert_eq!(hex::encode(key.y), Y_HEX);
    }

    #[test]
    fn encode_reproduces_canonical_bytes() {
        let key = CoseKey::parse_exact(&hex::decode(KEY_HEX).unwrap()).unwrap();
        assert_eq!(hex::encode(key.encode()), KEY_HEX);
    }

    #[test]
    fn parse_exact_rejects_trailing_bytes() {
        let mut bytes = hex::decode(KEY_HEX).unwrap();
        bytes.push(0x00);
        let error = CoseKey::parse_exact(&bytes).unwrap_err();
        assert_eq!(error.found, "1 bytes");
    }

    #[test]
    fn rejects_wrong_kty_alg_and_crv() {
        let cases = [
            (0, Value::Int(1), "kty (1)", "1 (OKP)"),
            (1, Value::Int(-8), "alg (3)", "-8 (EdDSA)"),
            (2, Value::Int(2), "crv (-1)", "2 (P-384)"),
        ];
        for (index, value, field, found) in cases {
            let mut entries = valid_entries();
            entries[index].1 = value;
            let error = CoseKey::parse(&key_map(entries)).unwrap_err();
            assert_eq!(error.field, field);
            assert_eq!(error.found, found, "{error}");
        }
    }

    #[test]
    fn error_names_the_rejected_algorithm() {
        let mut entries = valid_entries();
        entries[1].1 = Value::Int(-257);
        let error = CoseKey::parse(&key_map(entries)).unwrap_err();
        assert_eq!(
            error.to_string(),
            "COSE_Key.alg (3): expected -7 (ES256), found -257 (RS256)"
        );
    }

    #[test]
    fn rejects_missing_x() {
        let mut entries = valid_entries();
        entries.remove(3);
        let error = CoseKey::parse(&key_map(entries)).unwrap_err();
        assert_eq!(error.field, "x (-2)");
        assert!(error.is_missing());
    }

    #[test]
    fn rejects_short_coordinate() {
        let mut entries = valid_entries();
        entries[4].1 = Value::bytes(vec![1; 31]);
        let error = CoseKey::parse(&key_map(entries)).unwrap_err();
        assert_eq!(error.field, "y (-3)");
        assert_eq!(error.found, "a byte string of 31 bytes");
    }

    #[test]
    fn rejects_duplicate_key() {
        let mut entries = valid_entries();
        entries.insert(1, (1, Value::Int(2)));
        let error = CoseKey::parse(&key_map(entries)).unwrap_err();
        assert_eq!(error.expected, "a map without duplicate keys");
    }

    #[test]
    fn rejects_unsorted_keys() {
        let mut entries = valid_entries();
        entries.swap(0, 1);
        let error = CoseKey::parse(&key_map(entries)).unwrap_err();
        assert_eq!(error.expected, "keys in CTAP2 canonical order");
    }

    #[test]
    fn rejects_point_not_on_curve() {
        let mut key = CoseKey::parse_exact(&hex::decode(KEY_HEX).unwrap()).unwrap();
        key.y[31] ^= 1;
        let error = key.verifying_key().unwrap_err();
        assert_eq!(error.expected, "a point on the P-256 curve");
    }

    #[test]
    fn verifying_key_round_trips() {
        let key = CoseKey::parse_exact(&hex::decode(KEY_HEX).unwrap()).unwrap();
        let verifying_key = key.verifying_key().unwrap();
        assert_eq!(CoseKey::from_verifying_key(&verifying_key), key);
    }
}
