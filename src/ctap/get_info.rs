//! authenticatorGetInfo (0x04): what a card supports.
//!
//! The request has no parameters. The response is a map with integer keys.
//! Keys this parser does not know are ignored, because newer CTAP versions
//! keep adding keys.

use std::collections::BTreeMap;

use crate::ctap::cbor::{self, MapView, ParseError, Value};
use crate::ctap::make_credential::{parse_options, PublicKeyCredentialParameters};

/// The authenticatorGetInfo command byte.
pub const COMMAND: u8 = 0x04;

const STRUCTURE: &str = "getInfo";

const KEY_VERSIONS: i64 = 0x01;
const KEY_EXTENSIONS: i64 = 0x02;
const KEY_AAGUID: i64 = 0x03;
const KEY_OPTIONS: i64 = 0x04;
const KEY_MAX_MSG_SIZE: i64 = 0x05;
const KEY_PIN_UV_AUTH_PROTOCOLS: i64 = 0x06;
const KEY_MAX_CREDENTIAL_COUNT_IN_LIST: i64 = 0x07;
const KEY_MAX_CREDENTIAL_ID_LENGTH: i64 = 0x08;
const KEY_TRANSPORTS: i64 = 0x09;
const KEY_ALGORITHMS: i64 = 0x0a;

/// The ChromeCard's AAGUID.
pub const CHROMECARD_AAGUID: [u8; 16] = [
    0x12, 0x34, 0x56, 0x78, 0x90, 0xab, 0xcd, 0xef, 0x01, 0x23, 0x45, 0x67, 0x89, 0xab, 0xcd, 0xef,
];

/// The ChromeCard's maxMsgSize in bytes.
pub const CHROMECARD_MAX_MSG_SIZE: u64 = 1024;

/// A parsed authenticatorGetInfo response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GetInfo {
    /// Protocol versions, for example `FIDO_2_0`.
    pub versions: Vec<String>,
    /// Extension identifiers; empty when the card lists none.
    pub extensions: Vec<String>,
    pub aaguid: [u8; 16],
    /// Option identifiers and their values as the card reports them. An
    /// absent option has its CTAP default, which differs per option.
    pub options: BTreeMap<String, bool>,
    /// Largest request the card accepts, in bytes.
    pub max_msg_size: Option<u64>,
    pub pin_uv_auth_protocols: Option<Vec<u64>>,
    pub max_credential_count_in_list: Option<u64>,
    /// Maximum credential id length the card accepts, in bytes.
    pub max_credential_id_length: Option<u64>,
    pub transports: Option<Vec<String>>,
    pub algorithms: Option<Vec<PublicKeyCredentialParameters>>,
}

/// The way cardgate requests user verification from a card.
///
/// cardgate only uses the card's built-in user verification (the `uv`
/// option). It never uses a PIN/UV auth protocol or authenticatorClientPIN,
/// even when the card offers them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UvRequest {
    /// Send `"uv": true` in the options map, without pinUvAuthParam and
    /// pinUvAuthProtocol.
    UvOption,
    /// The card has no usable built-in user verification, so cardgate can
    /// only ask for user presence.
    Unavailable,
}

impl GetInfo {
    /// Parses the CBOR map of a getInfo response (after the status byte).
    pub fn parse(cbor: &[u8]) -> Result<GetInfo, ParseError> {
        let item = cbor::decode(STRUCTURE, cbor)?;
        let map = MapView::new(STRUCTURE, "", &item)?;

        let versions = map.required(KEY_VERSIONS, "versions")?.text_array()?;
        let extensions = match map.optional(KEY_EXTENSIONS, "extensions") {
            Some(field) => field.text_array()?,
            None => Vec::new(),
        };
        let aaguid = map.required(KEY_AAGUID, "aaguid")?.byte_array::<16>()?;

        let options = match map.optional(KEY_OPTIONS, "options") {
            Some(field) => parse_options(&field)?,
            None => BTreeMap::new(),
        };

        let max_msg_size = optional_uint(&map, KEY_MAX_MSG_SIZE, "maxMsgSize")?;
        let pin_uv_auth_protocols =
            match map.optional(KEY_PIN_UV_AUTH_PROTOCOLS, "pinUvAuthProtocols") {
                Some(field) => Some(
                    field
                        .array()?
                        .iter()
                        .map(|item| item.uint())
                        .collect::<Result<Vec<_>, _>>()?,
                ),
                None => None,
            };
        let max_credential_count_in_list = optional_uint(
            &map,
            KEY_MAX_CREDENTIAL_COUNT_IN_LIST,
            "maxCredentialCountInList",
        )?;
        let max_credential_id_length =
            optional_uint(&map, KEY_MAX_CREDENTIAL_ID_LENGTH, "maxCredentialIdLength")?;
        let transports = match map.optional(KEY_TRANSPORTS, "transports") {
            Some(field) => Some(field.text_array()?),
            None => None,
        };
        let algorithms = match map.optional(KEY_ALGORITHMS, "algorithms") {
            Some(field) => Some(
                field
                    .array()?
                    .iter()
                    .map(PublicKeyCredentialParameters::parse)
                    .collect::<Result<Vec<_>, _>>()?,
            ),
            None => None,
        };

        Ok(GetInfo {
            versions,
            extensions,
            aaguid,
            options,
            max_msg_size,
            pin_uv_auth_protocols,
            max_credential_count_in_list,
            max_credential_id_length,
            transports,
            algorithms,
        })
    }

    /// Encodes the response map in canonical form, leaving out absent
    /// fields and an empty extensions list.
    pub fn encode(&self) -> Vec<u8> {
        let texts = |items: &[String]| Value::Array(items.iter().map(Value::text).collect());
        let uint = |n: u64| Value::Int(i64::try_from(n).unwrap_or(i64::MAX));

        let mut entries = vec![(Value::Int(KEY_VERSIONS), texts(&self.versions))];
        if !self.extensions.is_empty() {
            entries.push((Value::Int(KEY_EXTENSIONS), texts(&self.extensions)));
        }
        entries.push((Value::Int(KEY_AAGUID), Value::bytes(self.aaguid)));
        if !self.options.is_empty() {
            let options = self
                .options
                .iter()
                .map(|(name, value)| (Value::text(name.as_str()), Value::Bool(*value)))
                .collect();
            entries.push((Value::Int(KEY_OPTIONS), Value::Map(options)));
        }
        if let Some(size) = self.max_msg_size {
            entries.push((Value::Int(KEY_MAX_MSG_SIZE), uint(size)));
        }
        if let Some(protocols) = &self.pin_uv_auth_protocols {
            let protocols = protocols.iter().map(|p| uint(*p)).collect();
            entries.push((
                Value::Int(KEY_PIN_UV_AUTH_PROTOCOLS),
                Value::Array(protocols),
            ));
        }
        if let Some(count) = self.max_credential_count_in_list {
            entries.push((Value::Int(KEY_MAX_CREDENTIAL_COUNT_IN_LIST), uint(count)));
        }
        if let Some(len) = self.max_credential_id_length {
            entries.push((Value::Int(KEY_MAX_CREDENTIAL_ID_LENGTH), uint(len)));
        }
        if let Some(transports) = &self.transports {
            entries.push((Value::Int(KEY_TRANSPORTS), texts(transports)));
        }
        if let Some(algorithms) = &self.algorithms {
            let algorithms = algorithms.iter().map(|a| a.to_value()).collect();
            entries.push((Value::Int(KEY_ALGORITHMS), Value::Array(algorithms)));
        }
        cbor::encode(&Value::Map(entries))
    }

    /// Returns the getInfo response of the ChromeCard: CTAP 2.0 only, options
    /// rk=false, up=true, uv=true (its Yes/No buttons), maxMsgSize 1024, no
    /// clientPin, no PIN/UV auth protocols and no extensions.
    pub fn chromecard() -> GetInfo {
        let options = [("rk", false), ("up", true), ("uv", true)]
            .into_iter()
            .map(|(name, value)| (name.to_string(), value))
            .collect();
        GetInfo {
            versions: vec!["FIDO_2_0".to_string()],
            extensions: Vec::new(),
            aaguid: CHROMECARD_AAGUID,
            options,
            max_msg_size: Some(CHROMECARD_MAX_MSG_SIZE),
            pin_uv_auth_protocols: None,
            max_credential_count_in_list: None,
            max_credential_id_length: None,
            transports: None,
            algorithms: None,
        }
    }

    /// Returns whether the card has built-in user verification that is
    /// ready to use (option `uv` is true).
    pub fn uv_supported(&self) -> bool {
        self.options.get("uv") == Some(&true)
    }

    /// Returns how cardgate requests user verification from this card.
    pub fn uv_request(&self) -> UvRequest {
        if self.uv_supported() {
            UvRequest::UvOption
        } else {
            UvRequest::Unavailable
        }
    }

    /// Returns whether the card can store discoverable credentials
    /// (option `rk`, false when absent).
    pub fn rk_supported(&self) -> bool {
        self.options.get("rk") == Some(&true)
    }
}

fn optional_uint(map: &MapView<'_>, key: i64, name: &str) -> Result<Option<u64>, ParseError> {
    map.optional(key, name)
        .map(|field| field.uint())
        .transpose()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The ChromeCard's getInfo map in canonical form.
    const CHROMECARD_HEX: &str = "a40181684649444f5f325f3003501234567890abcdef0123456789abcdef04a362726bf4627570f5627576f505190400";

    #[test]
    fn chromecard_encodes_to_known_bytes() {
        assert_eq!(hex::encode(GetInfo::chromecard().encode()), CHROMECARD_HEX);
    }

    #[test]
    fn chromecard_bytes_parse_back() {
        let info = GetInfo::parse(&hex::decode(CHROMECARD_HEX).unwrap()).unwrap();
        assert_eq!(info, GetInfo::chromecard());
        assert!(info.uv_supported());
        assert!(!info.rk_supported());
        assert_eq!(info.uv_request(), UvRequest::UvOption);
        assert_eq!(info.pin_uv_auth_protocols, None);
        assert!(!info.options.contains_key("clientPin"));
    }

    #[test]
    fn uv_false_or_absent_is_unavailable() {
        let mut info = GetInfo::chromecard();
        info.options.insert("uv".to_string(), false);
        assert_eq!(info.uv_request(), UvRequest::Unavailable);
        info.options.remove("uv");
        assert!(!info.uv_supported());
    }

    #[test]
    fn missing_aaguid_is_reported() {
        // {1: ["FIDO_2_0"]}
        let error = GetInfo::parse(&hex::decode("a10181684649444f5f325f30").unwrap()).unwrap_err();
        assert_eq!(
            error.to_string(),
            "getInfo.aaguid: expected key 3, found nothing"
        );
    }

    #[test]
    fn option_with_non_boolean_value_is_rejected() {
        let mut bytes = hex::decode(CHROMECARD_HEX).unwrap();
        // Replace the value of "uv" (0xf5) with the integer 1.
        let position = bytes.iter().position(|b| *b == b'v').unwrap() + 1;
        bytes[position] = 0x01;
        let error = GetInfo::parse(&bytes).unwrap_err();
        assert_eq!(error.field, "options.uv");
        assert_eq!(error.found, "integer 1");
    }

    #[test]
    fn trailing_bytes_are_rejected() {
        let mut bytes = hex::decode(CHROMECARD_HEX).unwrap();
        bytes.push(0x00);
        let error = GetInfo::parse(&bytes).unwrap_err();
        assert_eq!(error.found, "1 bytes after it");
    }
}
