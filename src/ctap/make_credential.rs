//! authenticatorMakeCredential (0x01): create a credential on the card.
//!
//! cardgate sends only what the ChromeCard needs: the client data hash,
//! rp, user, ES256 as the one algorithm, an optional excludeList and, when
//! user verification is requested, the option `"uv": true`. It never sends
//! `rk`, `up`, pinUvAuthParam or pinUvAuthProtocol.

use std::collections::BTreeMap;

use crate::ctap::auth_data::AuthenticatorData;
use crate::ctap::cbor::{self, Field, MapView, ParseError, Value};
use crate::ctap::cose::ALG_ES256;

/// The authenticatorMakeCredential command byte.
pub const COMMAND: u8 = 0x01;

/// The only credential type CTAP2 defines.
pub const PUBLIC_KEY_TYPE: &str = "public-key";

const REQUEST: &str = "makeCredentialRequest";
const RESPONSE: &str = "makeCredentialResponse";
const ATTESTATION_OBJECT: &str = "attestationObject";
const ATT_STMT: &str = "attStmt";

const KEY_CLIENT_DATA_HASH: i64 = 0x01;
const KEY_RP: i64 = 0x02;
const KEY_USER: i64 = 0x03;
const KEY_PUB_KEY_CRED_PARAMS: i64 = 0x04;
const KEY_EXCLUDE_LIST: i64 = 0x05;
const KEY_OPTIONS: i64 = 0x07;
const KEY_PIN_UV_AUTH_PARAM: i64 = 0x08;
const KEY_PIN_UV_AUTH_PROTOCOL: i64 = 0x09;

const KEY_FMT: i64 = 0x01;
const KEY_AUTH_DATA: i64 = 0x02;
const KEY_ATT_STMT: i64 = 0x03;

/// A makeCredential request as cardgate sends it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MakeCredentialRequest {
    /// SHA-256 of the WebAuthn client data.
    pub client_data_hash: [u8; 32],
    pub rp_id: String,
    pub rp_name: String,
    pub user_id: Vec<u8>,
    pub user_name: String,
    pub user_display_name: String,
    /// Credential ids the card must not already hold for this rp.
    pub exclude_list: Vec<Vec<u8>>,
    /// Ask for the card's built-in user verification.
    pub uv: bool,
}

/// A makeCredential request as a card receives it: the fields cardgate
/// sends plus the parameters other clients may add, which a card has to
/// check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReceivedMakeCredential {
    pub request: MakeCredentialRequest,
    /// The algorithms of the `public-key` entries of pubKeyCredParams, in
    /// the client's order of preference.
    pub algorithms: Vec<i64>,
    pub options: BTreeMap<String, bool>,
    pub pin_uv_auth_param: Option<Vec<u8>>,
    pub pin_uv_auth_protocol: Option<u64>,
}

/// One entry of pubKeyCredParams or of getInfo's algorithms.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublicKeyCredentialParameters {
    pub credential_type: String,
    /// A COSE algorithm identifier, for example -7 for ES256.
    pub alg: i64,
}

/// A parsed makeCredential response.
#[derive(Debug, Clone, PartialEq)]
pub struct MakeCredentialResponse {
    /// The attestation statement format, for example `packed`.
    pub fmt: String,
    /// Always carries attested credential data; parsing rejects a response
    /// without it.
    pub auth_data: AuthenticatorData,
    pub att_stmt: AttestationStatement,
}

/// An attestation statement in one of the formats cardgate can check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AttestationStatement {
    /// Format `none`: no statement.
    None,
    /// Format `packed`: self attestation when `x5c` is empty, otherwise
    /// `x5c[0]` is the attestation certificate.
    Packed {
        alg: i64,
        sig: Vec<u8>,
        x5c: Vec<Vec<u8>>,
    },
    /// Format `fido-u2f`.
    FidoU2f { sig: Vec<u8>, x5c: Vec<Vec<u8>> },
    /// Any other format, by name; its statement is not kept.
    Other(String),
}

impl MakeCredentialRequest {
    /// Encodes the command byte followed by the canonical parameter map.
    pub fn encode(&self) -> Vec<u8> {
        let rp = Value::Map(vec![
            (Value::text("id"), Value::text(self.rp_id.as_str())),
            (Value::text("name"), Value::text(self.rp_name.as_str())),
        ]);
        let user = Value::Map(vec![
            (Value::text("id"), Value::bytes(self.user_id.as_slice())),
            (Value::text("name"), Value::text(self.user_name.as_str())),
            (
                Value::text("displayName"),
                Value::text(self.user_display_name.as_str()),
            ),
        ]);
        let es256 = PublicKeyCredentialParameters {
            credential_type: PUBLIC_KEY_TYPE.to_string(),
            alg: ALG_ES256,
        };

        let mut entries = vec![
            (
                Value::Int(KEY_CLIENT_DATA_HASH),
                Value::bytes(self.client_data_hash),
            ),
            (Value::Int(KEY_RP), rp),
            (Value::Int(KEY_USER), user),
            (
                Value::Int(KEY_PUB_KEY_CRED_PARAMS),
                Value::Array(vec![es256.to_value()]),
            ),
        ];
        if !self.exclude_list.is_empty() {
            entries.push((
                Value::Int(KEY_EXCLUDE_LIST),
                descriptor_list_value(&self.exclude_list),
            ));
        }
        if self.uv {
            entries.push((Value::Int(KEY_OPTIONS), uv_option()));
        }

        let mut out = vec![COMMAND];
        cbor::encode_into(&Value::Map(entries), &mut out);
        out
    }

    /// Parses the parameter map of a request (the bytes after the command
    /// byte), keeping only the fields cardgate sends.
    pub fn parse(params: &[u8]) -> Result<MakeCredentialRequest, ParseError> {
        Ok(ReceivedMakeCredential::parse(params)?.request)
    }
}

impl ReceivedMakeCredential {
    /// Parses the parameter map of a request (the bytes after the command
    /// byte).
    pub fn parse(params: &[u8]) -> Result<ReceivedMakeCredential, ParseError> {
        let item = cbor::decode(REQUEST, params)?;
        let map = MapView::new(REQUEST, "", &item)?;

        let client_data_hash = map
            .required(KEY_CLIENT_DATA_HASH, "clientDataHash")?
            .byte_array::<32>()?;

        let rp = map.required(KEY_RP, "rp")?.map()?;
        let rp_id = rp.required_text("id")?.text()?.to_string();
        let rp_name = optional_text(&rp, "name")?;

        let user = map.required(KEY_USER, "user")?.map()?;
        let user_id = user.required_text("id")?.bytes()?.to_vec();
        let user_name = optional_text(&user, "name")?;
        let user_display_name = optional_text(&user, "displayName")?;

        let mut algorithms = Vec::new();
        for entry in map
            .required(KEY_PUB_KEY_CRED_PARAMS, "pubKeyCredParams")?
            .array()?
        {
            let parameters = PublicKeyCredentialParameters::parse(&entry)?;
            if parameters.credential_type == PUBLIC_KEY_TYPE {
                algorithms.push(parameters.alg);
            }
        }

        let exclude_list = match map.optional(KEY_EXCLUDE_LIST, "excludeList") {
            Some(field) => parse_descriptor_list(&field)?,
            None => Vec::new(),
        };
        let options = match map.optional(KEY_OPTIONS, "options") {
            Some(field) => parse_options(&field)?,
            None => BTreeMap::new(),
        };
        let pin_uv_auth_param = map
            .optional(KEY_PIN_UV_AUTH_PARAM, "pinUvAuthParam")
            .map(|field| field.bytes().map(<[u8]>::to_vec))
            .transpose()?;
        let pin_uv_auth_protocol = map
            .optional(KEY_PIN_UV_AUTH_PROTOCOL, "pinUvAuthProtocol")
            .map(|field| field.uint())
            .transpose()?;

        let uv = options.get("uv") == Some(&true);
        Ok(ReceivedMakeCredential {
            request: MakeCredentialRequest {
                client_data_hash,
                rp_id,
                rp_name,
                user_id,
                user_name,
                user_display_name,
                exclude_list,
                uv,
            },
            algorithms,
            options,
            pin_uv_auth_param,
            pin_uv_auth_protocol,
        })
    }
}

impl PublicKeyCredentialParameters {
    /// Parses a `{"alg": ..., "type": ...}` map.
    pub fn parse(field: &Field<'_>) -> Result<PublicKeyCredentialParameters, ParseError> {
        let map = field.map()?;
        Ok(PublicKeyCredentialParameters {
            credential_type: map.required_text("type")?.text()?.to_string(),
            alg: map.required_text("alg")?.int()?,
        })
    }

    pub fn to_value(&self) -> Value {
        Value::Map(vec![
            (Value::text("alg"), Value::Int(self.alg)),
            (
                Value::text("type"),
                Value::text(self.credential_type.as_str()),
            ),
        ])
    }
}

impl MakeCredentialResponse {
    /// Parses the CBOR map of a makeCredential response (after the status
    /// byte).
    pub fn parse(cbor: &[u8]) -> Result<MakeCredentialResponse, ParseError> {
        let item = cbor::decode(RESPONSE, cbor)?;
        let map = MapView::new(RESPONSE, "", &item)?;
        MakeCredentialResponse::from_fields(
            map.required(KEY_FMT, "fmt")?,
            map.required(KEY_AUTH_DATA, "authData")?,
            map.required(KEY_ATT_STMT, "attStmt")?,
        )
    }

    /// Parses a WebAuthn attestation object, which carries the same three
    /// fields under the text keys `fmt`, `authData` and `attStmt`.
    pub fn parse_attestation_object(bytes: &[u8]) -> Result<MakeCredentialResponse, ParseError> {
        let item = cbor::decode(ATTESTATION_OBJECT, bytes)?;
        let map = MapView::new(ATTESTATION_OBJECT, "", &item)?;
        MakeCredentialResponse::from_fields(
            map.required_text("fmt")?,
            map.required_text("authData")?,
            map.required_text("attStmt")?,
        )
    }

    fn from_fields(
        fmt: Field<'_>,
        auth_data: Field<'_>,
        att_stmt: Field<'_>,
    ) -> Result<MakeCredentialResponse, ParseError> {
        let fmt = fmt.text()?.to_string();

        let auth_data = AuthenticatorData::parse(auth_data.bytes()?)?;
        if auth_data.attested.is_none() {
            return Err(ParseError::new(
                RESPONSE,
                "authData",
                "attested credential data (flag AT set)",
                format!("flags 0x{:02x}", auth_data.flags.0),
            ));
        }

        let att_stmt = AttestationStatement::parse(&fmt, &att_stmt.map()?)?;
        Ok(MakeCredentialResponse {
            fmt,
            auth_data,
            att_stmt,
        })
    }

    /// Encodes the response map in canonical form, without the status byte.
    pub fn encode(&self) -> Vec<u8> {
        cbor::encode(&Value::Map(vec![
            (Value::Int(KEY_FMT), Value::text(self.fmt.as_str())),
            (
                Value::Int(KEY_AUTH_DATA),
                Value::bytes(self.auth_data.raw.as_slice()),
            ),
            (Value::Int(KEY_ATT_STMT), self.att_stmt.to_value()),
        ]))
    }
}

impl AttestationStatement {
    /// Parses the attStmt map of format `fmt`.
    pub fn parse(fmt: &str, map: &MapView<'_>) -> Result<AttestationStatement, ParseError> {
        match fmt {
            "none" => {
                if !map.is_empty() {
                    return Err(ParseError::new(
                        ATT_STMT,
                        "",
                        "an empty map for format \"none\"",
                        format!("a map of {} entries", map.len()),
                    ));
                }
                Ok(AttestationStatement::None)
            }
            "packed" => {
                if map.text_key("ecdaaKeyId").is_some() {
                    return Err(ParseError::new(
                        ATT_STMT,
                        "ecdaaKeyId",
                        "no ECDAA attestation, which WebAuthn no longer supports",
                        "an ECDAA key id",
                    ));
                }
                let alg = map.required_text("alg")?.int()?;
                let sig = map.required_text("sig")?.bytes()?.to_vec();
                let x5c = match map.optional_text("x5c") {
                    Some(field) => parse_certificates(&field)?,
                    None => Vec::new(),
                };
                Ok(AttestationStatement::Packed { alg, sig, x5c })
            }
            "fido-u2f" => {
                let sig = map.required_text("sig")?.bytes()?.to_vec();
                let x5c = parse_certificates(&map.required_text("x5c")?)?;
                Ok(AttestationStatement::FidoU2f { sig, x5c })
            }
            other => Ok(AttestationStatement::Other(other.to_string())),
        }
    }

    /// Returns the attStmt map. For [`AttestationStatement::Other`] it is
    /// empty because the statement was not kept.
    pub fn to_value(&self) -> Value {
        let certificates = |x5c: &[Vec<u8>]| {
            Value::Array(
                x5c.iter()
                    .map(|cert| Value::bytes(cert.as_slice()))
                    .collect(),
            )
        };
        match self {
            AttestationStatement::None | AttestationStatement::Other(_) => Value::Map(Vec::new()),
            AttestationStatement::Packed { alg, sig, x5c } => {
                let mut entries = vec![
                    (Value::text("alg"), Value::Int(*alg)),
                    (Value::text("sig"), Value::bytes(sig.as_slice())),
                ];
                if !x5c.is_empty() {
                    entries.push((Value::text("x5c"), certificates(x5c)));
                }
                Value::Map(entries)
            }
            AttestationStatement::FidoU2f { sig, x5c } => Value::Map(vec![
                (Value::text("sig"), Value::bytes(sig.as_slice())),
                (Value::text("x5c"), certificates(x5c)),
            ]),
        }
    }
}

/// Reads a non-empty array of DER certificates.
fn parse_certificates(field: &Field<'_>) -> Result<Vec<Vec<u8>>, ParseError> {
    let certificates = field
        .array()?
        .iter()
        .map(|cert| cert.bytes().map(<[u8]>::to_vec))
        .collect::<Result<Vec<_>, _>>()?;
    if certificates.is_empty() {
        return Err(field.unexpected("at least one certificate"));
    }
    Ok(certificates)
}

fn optional_text(map: &MapView<'_>, key: &str) -> Result<String, ParseError> {
    Ok(match map.optional_text(key) {
        Some(field) => field.text()?.to_string(),
        None => String::new(),
    })
}

/// Returns the options map `{"uv": true}`.
pub(crate) fn uv_option() -> Value {
    Value::Map(vec![(Value::text("uv"), Value::Bool(true))])
}

/// Returns the PublicKeyCredentialDescriptor
/// `{"id": ..., "type": "public-key"}`.
pub(crate) fn descriptor_value(id: &[u8]) -> Value {
    Value::Map(vec![
        (Value::text("id"), Value::bytes(id)),
        (Value::text("type"), Value::text(PUBLIC_KEY_TYPE)),
    ])
}

pub(crate) fn descriptor_list_value(ids: &[Vec<u8>]) -> Value {
    Value::Array(ids.iter().map(|id| descriptor_value(id)).collect())
}

/// Parses a PublicKeyCredentialDescriptor and returns its id, or `None`
/// for another credential type, which is skipped because `public-key` is
/// the only type cardgate and the card use.
pub(crate) fn parse_descriptor(field: &Field<'_>) -> Result<Option<Vec<u8>>, ParseError> {
    let map = field.map()?;
    let credential_type = map.required_text("type")?.text()?;
    let id = map.required_text("id")?.bytes()?;
    Ok((credential_type == PUBLIC_KEY_TYPE).then(|| id.to_vec()))
}

/// Parses an excludeList or allowList and returns the `public-key` ids.
pub(crate) fn parse_descriptor_list(field: &Field<'_>) -> Result<Vec<Vec<u8>>, ParseError> {
    let mut ids = Vec::new();
    for entry in field.array()? {
        if let Some(id) = parse_descriptor(&entry)? {
            ids.push(id);
        }
    }
    Ok(ids)
}

/// Parses an options map of text keys and boolean values.
pub(crate) fn parse_options(field: &Field<'_>) -> Result<BTreeMap<String, bool>, ParseError> {
    let map = field.map()?;
    let mut options = BTreeMap::new();
    for (key, _) in map.entries() {
        let ciborium::Value::Text(name) = key else {
            return Err(map.error("key", "a text string", cbor::describe(key)));
        };
        options.insert(name.clone(), map.required_text(name)?.boolean()?);
    }
    Ok(options)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(uv: bool) -> MakeCredentialRequest {
        MakeCredentialRequest {
            client_data_hash: [0x11; 32],
            rp_id: "a.b".to_string(),
            rp_name: "AB".to_string(),
            user_id: vec![0x01, 0x02],
            user_name: "al".to_string(),
            user_display_name: "Al".to_string(),
            exclude_list: Vec::new(),
            uv,
        }
    }

    /// Returns the canonical request without uv, written out by hand:
    /// 01 command, a4 map of 4,
    /// 01 5820 <32 x 11> clientDataHash,
    /// 02 a2 6269 64 63 612e62 646e616d65 624142  rp {id: "a.b", name: "AB"},
    /// 03 a3 6269 64 42 0102 646e616d65 62616c
    ///       6b646973706c61794e616d65 62416c  user {id, name, displayName},
    /// 04 81 a2 63616c67 26 6474797065 6a7075626c69632d6b6579
    ///    [{alg: -7, type: "public-key"}].
    fn expected_without_uv() -> String {
        [
            "01a4",
            "015820",
            &"11".repeat(32),
            "02a262696463612e62646e616d65624142",
            "03a3626964420102",
            "646e616d6562616c",
            "6b646973706c61794e616d6562416c",
            "0481a263616c672664747970656a7075626c69632d6b6579",
        ]
        .concat()
    }

    #[test]
    fn request_without_uv_has_hand_checked_bytes() {
        assert_eq!(hex::encode(request(false).encode()), expected_without_uv());
    }

    #[test]
    fn request_with_uv_adds_only_the_uv_option() {
        let mut expected = expected_without_uv().replacen("01a4", "01a5", 1);
        // 07 a1 627576 f5: options {"uv": true}.
        expected.push_str("07a1627576f5");
        assert_eq!(hex::encode(request(true).encode()), expected);
    }

    #[test]
    fn request_puts_exclude_list_under_key_5() {
        let mut with_exclude = request(true);
        with_exclude.exclude_list = vec![vec![0xaa, 0xbb]];
        let encoded = hex::encode(with_exclude.encode());
        // 05 81 a2 626964 42aabb 6474797065 6a7075626c69632d6b6579,
        // then 07 for the options.
        let exclude = "0581a262696442aabb64747970656a7075626c69632d6b6579";
        let position = encoded.find(exclude).expect("excludeList encoded");
        assert!(encoded[position..].ends_with("07a1627576f5"));
        assert!(encoded.starts_with("01a6"));
    }

    #[test]
    fn request_never_carries_rk_up_or_pin_keys() {
        for uv in [false, true] {
            let encoded = request(uv).encode();
            let received = ReceivedMakeCredential::parse(&encoded[1..]).unwrap();
            assert!(!received.options.contains_key("rk"));
            assert!(!received.options.contains_key("up"));
            assert_eq!(received.pin_uv_auth_param, None);
            assert_eq!(received.pin_uv_auth_protocol, None);
        }
    }

    #[test]
    fn request_parses_back() {
        let mut original = request(true);
        original.exclude_list = vec![vec![1, 2, 3], vec![4]];
        let encoded = original.encode();
        let received = ReceivedMakeCredential::parse(&encoded[1..]).unwrap();
        assert_eq!(received.request, original);
        assert_eq!(received.algorithms, vec![ALG_ES256]);
    }

    #[test]
    fn parse_reports_missing_client_data_hash() {
        // {2: {"id": "a"}}
        let error =
            MakeCredentialRequest::parse(&hex::decode("a102a16269646161").unwrap()).unwrap_err();
        assert!(error.is_missing());
        assert_eq!(error.field, "clientDataHash");
    }

    #[test]
    fn parse_names_nested_fields() {
        let mut bytes = request(false).encode();
        // Change the rp id text "a.b" (63 612e62) into a byte string.
        let position = bytes.windows(4).position(|w| w == b"ca.b").unwrap();
        bytes[position] = 0x43;
        let error = MakeCredentialRequest::parse(&bytes[1..]).unwrap_err();
        assert_eq!(
            error.to_string(),
            "makeCredentialRequest.rp.id: expected a text string, found a byte string of 3 bytes"
        );
    }

    #[test]
    fn none_statement_must_be_empty() {
        let item = ciborium::Value::Map(vec![(
            ciborium::Value::Text("sig".into()),
            ciborium::Value::Bytes(vec![1]),
        )]);
        let map = MapView::new(ATT_STMT, "", &item).unwrap();
        let error = AttestationStatement::parse("none", &map).unwrap_err();
        assert_eq!(error.found, "a map of 1 entries");
    }

    #[test]
    fn unknown_format_is_kept_by_name() {
        let item = ciborium::Value::Map(Vec::new());
        let map = MapView::new(ATT_STMT, "", &item).unwrap();
        let statement = AttestationStatement::parse("tpm", &map).unwrap();
        assert_eq!(statement, AttestationStatement::Other("tpm".to_string()));
    }
}
