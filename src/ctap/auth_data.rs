//! authenticatorData: the bytes a card signs in every makeCredential and
//! getAssertion response.
//!
//! Layout: rpIdHash (32) | flags (1) | signCount (4, big-endian) |
//! attested credential data when flag AT is set: aaguid (16) |
//! credentialIdLength (2, big-endian) | credentialId | credentialPublicKey
//! (COSE_Key) | extensions (CBOR map) when flag ED is set.

use sha2::{Digest, Sha256};

use crate::ctap::cbor::{self, MapView, ParseError};
use crate::ctap::cose::CoseKey;

const STRUCTURE: &str = "authenticatorData";

/// Maximum credential id length in bytes that WebAuthn allows.
pub const MAX_CREDENTIAL_ID_LEN: usize = 1023;

/// The flags byte of authenticatorData.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Flags(pub u8);

impl Flags {
    /// User present: the person at the card confirmed presence.
    pub const UP: u8 = 0x01;
    /// User verified: the card verified the person.
    pub const UV: u8 = 0x04;
    /// Backup eligible.
    pub const BE: u8 = 0x08;
    /// Backed up.
    pub const BS: u8 = 0x10;
    /// Attested credential data included.
    pub const AT: u8 = 0x40;
    /// Extension data included.
    pub const ED: u8 = 0x80;

    pub fn up(&self) -> bool {
        self.0 & Self::UP != 0
    }

    pub fn uv(&self) -> bool {
        self.0 & Self::UV != 0
    }

    pub fn be(&self) -> bool {
        self.0 & Self::BE != 0
    }

    pub fn bs(&self) -> bool {
        self.0 & Self::BS != 0
    }

    pub fn at(&self) -> bool {
        self.0 & Self::AT != 0
    }

    pub fn ed(&self) -> bool {
        self.0 & Self::ED != 0
    }
}

/// The attested credential data of a makeCredential response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttestedCredential {
    /// The card model's AAGUID.
    pub aaguid: [u8; 16],
    pub credential_id: Vec<u8>,
    pub public_key: CoseKey,
}

/// Parsed authenticatorData, with the raw bytes kept for signature checks.
#[derive(Debug, Clone, PartialEq)]
pub struct AuthenticatorData {
    pub raw: Vec<u8>,
    /// SHA-256 of the relying party id.
    pub rp_id_hash: [u8; 32],
    pub flags: Flags,
    pub sign_count: u32,
    /// Present exactly when flag AT is set.
    pub attested: Option<AttestedCredential>,
    /// The extension outputs map; present exactly when flag ED is set.
    pub extensions: Option<ciborium::Value>,
}

/// Returns the SHA-256 of a relying party id, as it appears in rpIdHash.
pub fn rp_id_hash(rp_id: &str) -> [u8; 32] {
    Sha256::digest(rp_id.as_bytes()).into()
}

impl AuthenticatorData {
    /// Parses authenticatorData; flags AT and ED must agree with what
    /// follows the sign count, and no bytes may be left over.
    pub fn parse(bytes: &[u8]) -> Result<AuthenticatorData, ParseError> {
        let mut reader = Reader { bytes, offset: 0 };

        let rp_id_hash = reader.take_array::<32>("rpIdHash")?;
        let [flags] = reader.take_array::<1>("flags")?;
        let flags = Flags(flags);
        let sign_count = u32::from_be_bytes(reader.take_array::<4>("signCount")?);

        if flags.bs() && !flags.be() {
            return Err(ParseError::new(
                STRUCTURE,
                "flags",
                "BS (backed up) only together with BE (backup eligible)",
                format!("0x{:02x}", flags.0),
            ));
        }

        let attested = if flags.at() {
            Some(parse_attested_credential(&mut reader)?)
        } else {
            None
        };

        let extensions = if flags.ed() {
            Some(parse_extensions(&mut reader)?)
        } else {
            None
        };

        let left = reader.rest();
        if !left.is_empty() {
            let expected = match (flags.at(), flags.ed()) {
                (false, false) => "no bytes after signCount because flags AT and ED are clear",
                (_, true) => "no bytes after the extensions",
                (true, false) => {
                    "no bytes after the credential public key because flag ED is clear"
                }
            };
            return Err(ParseError::new(
                STRUCTURE,
                "",
                expected,
                format!("{} bytes", left.len()),
            ));
        }

        Ok(AuthenticatorData {
            raw: bytes.to_vec(),
            rp_id_hash,
            flags,
            sign_count,
            attested,
            extensions,
        })
    }
}

/// Encodes authenticatorData without extensions. Flag AT is set when
/// `attested` is given and cleared otherwise; flag ED is always cleared.
///
/// `attested.credential_id` must be at most [`MAX_CREDENTIAL_ID_LEN`]
/// bytes long.
pub fn encode(
    rp_id_hash: &[u8; 32],
    flags: Flags,
    sign_count: u32,
    attested: Option<&AttestedCredential>,
) -> Vec<u8> {
    let mut flags = flags.0 & !(Flags::AT | Flags::ED);
    if attested.is_some() {
        flags |= Flags::AT;
    }

    let mut out = Vec::with_capacity(37);
    out.extend_from_slice(rp_id_hash);
    out.push(flags);
    out.extend_from_slice(&sign_count.to_be_bytes());

    if let Some(credential) = attested {
        debug_assert!(credential.credential_id.len() <= MAX_CREDENTIAL_ID_LEN);
        let id_len = credential.credential_id.len().min(MAX_CREDENTIAL_ID_LEN) as u16;
        out.extend_from_slice(&credential.aaguid);
        out.extend_from_slice(&id_len.to_be_bytes());
        out.extend_from_slice(&credential.credential_id);
        out.extend_from_slice(&credential.public_key.encode());
    }
    out
}

fn parse_attested_credential(reader: &mut Reader<'_>) -> Result<AttestedCredential, ParseError> {
    let aaguid = reader.take_array::<16>("aaguid")?;

    let id_len = usize::from(u16::from_be_bytes(
        reader.take_array::<2>("credentialIdLength")?,
    ));
    if id_len > MAX_CREDENTIAL_ID_LEN {
        return Err(ParseError::new(
            STRUCTURE,
            "credentialIdLength",
            format!("at most {MAX_CREDENTIAL_ID_LEN}"),
            id_len.to_string(),
        ));
    }
    let credential_id = reader.take(id_len, "credentialId")?.to_vec();

    let key_start = reader.offset;
    let (public_key, key_len) = CoseKey::parse(reader.rest()).map_err(|error| {
        let field = if error.field.is_empty() {
            "credentialPublicKey".to_string()
        } else {
            format!("credentialPublicKey.{}", error.field)
        };
        ParseError::new(
            STRUCTURE,
            field,
            error.expected,
            format!("{} (key starts at byte {key_start})", error.found),
        )
    })?;
    reader.offset += key_len;

    Ok(AttestedCredential {
        aaguid,
        credential_id,
        public_key,
    })
}

fn parse_extensions(reader: &mut Reader<'_>) -> Result<ciborium::Value, ParseError> {
    let start = reader.offset;
    if reader.rest().is_empty() {
        return Err(ParseError::missing(
            STRUCTURE,
            "extensions",
            "an extensions map because flag ED is set",
        ));
    }
    let (extensions, len) = cbor::decode_prefix(STRUCTURE, reader.rest()).map_err(|error| {
        ParseError::new(
            STRUCTURE,
            "extensions",
            error.expected,
            format!("{} (extensions start at byte {start})", error.found),
        )
    })?;
    MapView::new(STRUCTURE, "extensions", &extensions)?;
    reader.offset += len;
    Ok(extensions)
}

/// A cursor over authenticatorData whose errors name the field being read.
struct Reader<'a> {
    bytes: &'a [u8],
    offset: usize,
}

impl<'a> Reader<'a> {
    fn rest(&self) -> &'a [u8] {
        self.bytes.get(self.offset..).unwrap_or_default()
    }

    fn take(&mut self, len: usize, field: &str) -> Result<&'a [u8], ParseError> {
        let rest = self.rest();
        let Some((taken, _)) = rest.split_at_checked(len) else {
            return Err(ParseError::new(
                STRUCTURE,
                field,
                format!("{len} bytes at byte {}", self.offset),
                format!("{} bytes", rest.len()),
            ));
        };
        self.offset += len;
        Ok(taken)
    }

    fn take_array<const N: usize>(&mut self, field: &str) -> Result<[u8; N], ParseError> {
        let bytes = self.take(N, field)?;
        let mut array = [0u8; N];
        array.copy_from_slice(bytes);
        Ok(array)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// makeCredential authData from a YubiKey (python-fido2 test data):
    /// flags UP|AT, sign count 43, 64-byte credential id, ES256 key.
    const ATTESTED_HEX: &str = "0021f5fc0b85cd22e60623bcd7d1ca48948909249b4776eb515154e57b66ae12410000002bf8a011f38c0a4d15800617111f9edc7d0040a17370d9c1759005700c8de77e7dfd3a0a5300e0a26e5213aa40d6df10ee4028b58b5f34167035d840bebae0c5ce8fd05ad9bd33e3be7d1c558d81ab4803570ba5010203262001215820a5fd5ce1b1c458c530a54fa61b31bf6b04be8b97afde54dd8cbb69275a8a1be1225820fa3a3231dd9deed9d1897be5a6228c59501e4bcd12975d3dff730f01278ea61c";
    /// getAssertion authData for the same credential: flags UP, count 44.
    const ASSERTION_HEX: &str =
        "0021f5fc0b85cd22e60623bcd7d1ca48948909249b4776eb515154e57b66ae12010000002c";

    fn attested_bytes() -> Vec<u8> {
        hex::decode(ATTESTED_HEX).unwrap()
    }

    #[test]
    fn parses_assertion_fields() {
        let data = AuthenticatorData::parse(&hex::decode(ASSERTION_HEX).unwrap()).unwrap();
        assert_eq!(
            hex::encode(data.rp_id_hash),
            "0021f5fc0b85cd22e60623bcd7d1ca48948909249b4776eb515154e57b66ae12"
        );
        assert_eq!(data.flags, Flags(0x01));
        assert!(data.flags.up());
        assert!(!data.flags.uv());
        assert_eq!(data.sign_count, 44);
        assert_eq!(data.attested, None);
        assert_eq!(data.extensions, None);
    }

    #[test]
    fn parses_attested_credential() {
        let data = AuthenticatorData::parse(&attested_bytes()).unwrap();
        let credential = data.attested.unwrap();
        assert_eq!(
            hex::encode(credential.aaguid),
            "f8a011f38c0a4d15800617111f9edc7d"
        );
        assert_eq!(credential.credential_id.len(), 64);
        assert_eq!(
            hex::encode(credential.public_key.x),
            "a5fd5ce1b1c458c530a54fa61b31bf6b04be8b97afde54dd8cbb69275a8a1be1"
        );
        assert_eq!(data.sign_count, 43);
    }

    #[test]
    fn encode_reproduces_parsed_bytes() {
        let bytes = attested_bytes();
        let data = AuthenticatorData::parse(&bytes).unwrap();
        let encoded = encode(
            &data.rp_id_hash,
            data.flags,
            data.sign_count,
            data.attested.as_ref(),
        );
        assert_eq!(encoded, bytes);
    }

    #[test]
    fn encode_sets_at_only_with_credential() {
        let hash = rp_id_hash("example.com");
        let plain = encode(&hash, Flags(Flags::UP | Flags::AT), 7, None);
        assert_eq!(plain.len(), 37);
        assert_eq!(plain[32], Flags::UP);
        assert_eq!(&plain[33..], &[0, 0, 0, 7]);
    }

    #[test]
    fn rejects_truncation_at_every_field() {
        let bytes = attested_bytes();
        // Cut points inside rpIdHash, flags, signCount, aaguid,
        // credentialIdLength, credentialId and the public key.
        let cases = [
            (0, "rpIdHash"),
            (31, "rpIdHash"),
            (32, "flags"),
            (33, "signCount"),
            (36, "signCount"),
            (37, "aaguid"),
            (52, "aaguid"),
            (53, "credentialIdLength"),
            (54, "credentialIdLength"),
            (55, "credentialId"),
            (118, "credentialId"),
            (119, "credentialPublicKey"),
            (bytes.len() - 1, "credentialPublicKey"),
        ];
        for (len, field) in cases {
            let error = AuthenticatorData::parse(&bytes[..len]).unwrap_err();
            assert_eq!(error.field, field, "cut at {len}: {error}");
        }
    }

    #[test]
    fn rejects_trailing_byte_after_assertion() {
        let mut bytes = hex::decode(ASSERTION_HEX).unwrap();
        bytes.push(0x00);
        let error = AuthenticatorData::parse(&bytes).unwrap_err();
        assert_eq!(error.found, "1 bytes");
        assert!(error.expected.contains("AT and ED are clear"), "{error}");
    }

    #[test]
    fn rejects_trailing_byte_after_credential() {
        let mut bytes = attested_bytes();
        bytes.push(0xa0);
        let error = AuthenticatorData::parse(&bytes).unwrap_err();
        assert!(error.expected.contains("flag ED is clear"), "{error}");
    }

    #[test]
    fn rejects_at_set_without_data() {
        let mut bytes = hex::decode(ASSERTION_HEX).unwrap();
        bytes[32] |= Flags::AT;
        let error = AuthenticatorData::parse(&bytes).unwrap_err();
        assert_eq!(error.field, "aaguid");
    }

    #[test]
    fn rejects_ed_set_without_extensions() {
        let mut bytes = hex::decode(ASSERTION_HEX).unwrap();
        bytes[32] |= Flags::ED;
        let error = AuthenticatorData::parse(&bytes).unwrap_err();
        assert_eq!(error.field, "extensions");
        assert!(error.is_missing());
    }

    #[test]
    fn rejects_extensions_that_are_not_a_map() {
        let mut bytes = hex::decode(ASSERTION_HEX).unwrap();
        bytes[32] |= Flags::ED;
        bytes.push(0x01);
        let error = AuthenticatorData::parse(&bytes).unwrap_err();
        assert_eq!(error.field, "extensions");
        assert_eq!(error.found, "integer 1");
    }

    #[test]
    fn parses_extensions_after_assertion() {
        let mut bytes = hex::decode(ASSERTION_HEX).unwrap();
        bytes[32] |= Flags::ED;
        // {"credProtect": 2}
        bytes.extend_from_slice(&hex::decode("a16b6372656450726f7465637402").unwrap());
        let data = AuthenticatorData::parse(&bytes).unwrap();
        assert!(data.flags.ed());
        assert!(matches!(data.extensions, Some(ciborium::Value::Map(ref m)) if m.len() == 1));
    }

    #[test]
    fn rejects_backed_up_without_backup_eligible() {
        let mut bytes = hex::decode(ASSERTION_HEX).unwrap();
        bytes[32] |= Flags::BS;
        let error = AuthenticatorData::parse(&bytes).unwrap_err();
        assert_eq!(error.field, "flags");
    }

    #[test]
    fn rejects_overlong_credential_id_length() {
        let mut bytes = attested_bytes();
        bytes[53] = 0x04;
        bytes[54] = 0x00;
        let error = AuthenticatorData::parse(&bytes).unwrap_err();
        assert_eq!(error.field, "credentialIdLength");
        assert_eq!(error.found, "1024");
    }

    #[test]
    fn rp_id_hash_is_sha256_of_the_id() {
        assert_eq!(
            hex::encode(rp_id_hash("localhost")),
            "49960de5880e8c687434170f6476605b8fe4aeb9a28632c7995cf3ba831d9763"
        );
    }
}
