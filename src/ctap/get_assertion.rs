//! authenticatorGetAssertion (0x02): sign a challenge with a credential.
//!
//! cardgate sends the rp id, the client data hash, the allowList of
//! credential ids and, when user verification is requested, the option
//! `"uv": true`. Without uv it leaves the options map out, so the card
//! applies its default of user presence only.

use std::collections::BTreeMap;

use crate::ctap::auth_data::AuthenticatorData;
use crate::ctap::cbor::{self, MapView, ParseError, Value};
use crate::ctap::make_credential::{
    descriptor_list_value, descriptor_value, parse_descriptor_list, parse_options, uv_option,
    PUBLIC_KEY_TYPE,
};

/// The authenticatorGetAssertion command byte.
pub const COMMAND: u8 = 0x02;

const REQUEST: &str = "getAssertionRequest";
const RESPONSE: &str = "getAssertionResponse";

const KEY_RP_ID: i64 = 0x01;
const KEY_CLIENT_DATA_HASH: i64 = 0x02;
const KEY_ALLOW_LIST: i64 = 0x03;
const KEY_OPTIONS: i64 = 0x05;
const KEY_PIN_UV_AUTH_PARAM: i64 = 0x06;
const KEY_PIN_UV_AUTH_PROTOCOL: i64 = 0x07;

const KEY_CREDENTIAL: i64 = 0x01;
const KEY_AUTH_DATA: i64 = 0x02;
const KEY_SIGNATURE: i64 = 0x03;
const KEY_USER: i64 = 0x04;
const KEY_NUMBER_OF_CREDENTIALS: i64 = 0x05;

/// A getAssertion request as cardgate sends it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GetAssertionRequest {
    pub rp_id: String,
    /// SHA-256 of the WebAuthn client data.
    pub client_data_hash: [u8; 32],
    /// Credential ids the card may use; the ChromeCard stores no
    /// credentials, so without them it has nothing to sign with.
    pub allow_list: Vec<Vec<u8>>,
    /// Ask for the card's built-in user verification.
    pub uv: bool,
}

/// A getAssertion request as a card receives it: the fields cardgate
/// sends plus the parameters other clients may add.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReceivedGetAssertion {
    pub request: GetAssertionRequest,
    pub options: BTreeMap<String, bool>,
    pub pin_uv_auth_param: Option<Vec<u8>>,
    pub pin_uv_auth_protocol: Option<u64>,
}

/// A parsed getAssertion response.
#[derive(Debug, Clone, PartialEq)]
pub struct GetAssertionResponse {
    /// The id of the credential that signed; a card may leave it out when
    /// the allowList had exactly one entry.
    pub credential_id: Option<Vec<u8>>,
    pub auth_data: AuthenticatorData,
    /// DER-encoded ES256 signature over authData followed by the client
    /// data hash.
    pub signature: Vec<u8>,
    /// The user id; cards return it only for discoverable credentials.
    pub user_id: Option<Vec<u8>>,
    pub number_of_credentials: Option<u64>,
}

impl GetAssertionRequest {
    /// Encodes the command byte followed by the canonical parameter map.
    pub fn encode(&self) -> Vec<u8> {
        let mut entries = vec![
            (Value::Int(KEY_RP_ID), Value::text(self.rp_id.as_str())),
            (
                Value::Int(KEY_CLIENT_DATA_HASH),
                Value::bytes(self.client_data_hash),
            ),
        ];
        if !self.allow_list.is_empty() {
            entries.push((
                Value::Int(KEY_ALLOW_LIST),
                descriptor_list_value(&self.allow_list),
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
    pub fn parse(params: &[u8]) -> Result<GetAssertionRequest, ParseError> {
        Ok(ReceivedGetAssertion::parse(params)?.request)
    }
}

impl ReceivedGetAssertion {
    /// Parses the parameter map of a request (the bytes after the command
    /// byte).
    pub fn parse(params: &[u8]) -> Result<ReceivedGetAssertion, ParseError> {
        let item = cbor::decode(REQUEST, params)?;
        let map = MapView::new(REQUEST, "", &item)?;

        let rp_id = map.required(KEY_RP_ID, "rpId")?.text()?.to_string();
        let client_data_hash = map
            .required(KEY_CLIENT_DATA_HASH, "clientDataHash")?
            .byte_array::<32>()?;
        let allow_list = match map.optional(KEY_ALLOW_LIST, "allowList") {
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
        Ok(ReceivedGetAssertion {
            request: GetAssertionRequest {
                rp_id,
                client_data_hash,
                allow_list,
                uv,
            },
            options,
            pin_uv_auth_param,
            pin_uv_auth_protocol,
        })
    }
}

impl GetAssertionResponse {
    /// Parses the CBOR map of a getAssertion response (after the status
    /// byte).
    pub fn parse(cbor: &[u8]) -> Result<GetAssertionResponse, ParseError> {
        let item = cbor::decode(RESPONSE, cbor)?;
        let map = MapView::new(RESPONSE, "", &item)?;

        let credential_id = match map.optional(KEY_CREDENTIAL, "credential") {
            Some(field) => {
                let credential = field.map()?;
                let credential_type = credential.required_text("type")?;
                if credential_type.text()? != PUBLIC_KEY_TYPE {
                    return Err(credential_type.unexpected(format!("text \"{PUBLIC_KEY_TYPE}\"")));
                }
                Some(credential.required_text("id")?.bytes()?.to_vec())
            }
            None => None,
        };
        let auth_data =
            AuthenticatorData::parse(map.required(KEY_AUTH_DATA, "authData")?.bytes()?)?;
        let signature = map.required(KEY_SIGNATURE, "signature")?.bytes()?.to_vec();
        let user_id = match map.optional(KEY_USER, "user") {
            Some(field) => Some(field.map()?.required_text("id")?.bytes()?.to_vec()),
            None => None,
        };
        let number_of_credentials = map
            .optional(KEY_NUMBER_OF_CREDENTIALS, "numberOfCredentials")
            .map(|field| field.uint())
            .transpose()?;

        Ok(GetAssertionResponse {
            credential_id,
            auth_data,
            signature,
            user_id,
            number_of_credentials,
        })
    }

    /// Encodes the response map in canonical form, without the status byte.
    pub fn encode(&self) -> Vec<u8> {
        let mut entries = Vec::new();
        if let Some(id) = &self.credential_id {
            entries.push((Value::Int(KEY_CREDENTIAL), descriptor_value(id)));
        }
        entries.push((
            Value::Int(KEY_AUTH_DATA),
            Value::bytes(self.auth_data.raw.as_slice()),
        ));
        entries.push((
            Value::Int(KEY_SIGNATURE),
            Value::bytes(self.signature.as_slice()),
        ));
        if let Some(user_id) = &self.user_id {
            let user = Value::Map(vec![(Value::text("id"), Value::bytes(user_id.as_slice()))]);
            entries.push((Value::Int(KEY_USER), user));
        }
        if let Some(count) = self.number_of_credentials {
            let count = Value::Int(i64::try_from(count).unwrap_or(i64::MAX));
            entries.push((Value::Int(KEY_NUMBER_OF_CREDENTIALS), count));
        }
        cbor::encode(&Value::Map(entries))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(uv: bool) -> GetAssertionRequest {
        GetAssertionRequest {
            rp_id: "a.b".to_string(),
            client_data_hash: [0x22; 32],
            allow_list: vec![vec![0xaa, 0xbb]],
            uv,
        }
    }

    /// Returns the canonical request without uv, written out by hand:
    /// 02 command, a3 map of 3,
    /// 01 63 612e62 rpId "a.b",
    /// 02 5820 <32 x 22> clientDataHash,
    /// 03 81 a2 626964 42aabb 6474797065 6a7075626c69632d6b6579
    ///    allowList [{id: aabb, type: "public-key"}].
    fn expected_without_uv() -> String {
        [
            "02a3",
            "0163612e62",
            "025820",
            &"22".repeat(32),
            "0381a2",
            "62696442aabb",
            "64747970656a7075626c69632d6b6579",
        ]
        .concat()
    }

    #[test]
    fn request_without_uv_omits_options() {
        assert_eq!(hex::encode(request(false).encode()), expected_without_uv());
    }

    #[test]
    fn request_with_uv_adds_the_uv_option() {
        let mut expected = expected_without_uv().replacen("02a3", "02a4", 1);
        // 05 a1 627576 f5: options {"uv": true}.
        expected.push_str("05a1627576f5");
        assert_eq!(hex::encode(request(true).encode()), expected);
    }

    #[test]
    fn request_without_allow_list_omits_key_3() {
        let mut empty = request(false);
        empty.allow_list.clear();
        let encoded = hex::encode(empty.encode());
        assert!(encoded.starts_with("02a2"), "{encoded}");
    }

    #[test]
    fn request_parses_back_without_pin_keys() {
        let original = request(true);
        let encoded = original.encode();
        let received = ReceivedGetAssertion::parse(&encoded[1..]).unwrap();
        assert_eq!(received.request, original);
        assert_eq!(received.pin_uv_auth_param, None);
        assert_eq!(received.pin_uv_auth_protocol, None);
        assert_eq!(received.options.len(), 1);
    }

    #[test]
    fn allow_list_skips_other_credential_types() {
        // {1: "a", 2: h'22..', 3: [{id: h'01', type: "other"}]}
        let bytes = hex::decode(
            [
                "a3016161025820",
                &"22".repeat(32),
                "0381a262696441016474797065656f74686572",
            ]
            .concat(),
        )
        .unwrap();
        let parsed = GetAssertionRequest::parse(&bytes).unwrap();
        assert!(parsed.allow_list.is_empty());
    }

    #[test]
    fn response_rejects_other_credential_type() {
        let auth_data =
            crate::ctap::auth_data::encode(&[0; 32], crate::ctap::auth_data::Flags(1), 1, None);
        let bytes = cbor::encode(&Value::Map(vec![
            (
                Value::Int(1),
                Value::Map(vec![
                    (Value::text("id"), Value::bytes(vec![1])),
                    (Value::text("type"), Value::text("other")),
                ]),
            ),
            (Value::Int(2), Value::bytes(auth_data)),
            (Value::Int(3), Value::bytes(vec![0x30])),
        ]));
        let error = GetAssertionResponse::parse(&bytes).unwrap_err();
        assert_eq!(error.field, "credential.type");
    }

    #[test]
    fn response_requires_signature() {
        let auth_data =
            crate::ctap::auth_data::encode(&[0; 32], crate::ctap::auth_data::Flags(1), 1, None);
        let bytes = cbor::encode(&Value::Map(vec![(Value::Int(2), Value::bytes(auth_data))]));
        let error = GetAssertionResponse::parse(&bytes).unwrap_err();
        assert_eq!(
            error.to_string(),
            "getAssertionResponse.signature: expected key 3, found nothing"
        );
    }

    #[test]
    fn response_round_trips() {
        let auth_data =
            crate::ctap::auth_data::encode(&[7; 32], crate::ctap::auth_data::Flags(5), 9, None);
        let response = GetAssertionResponse {
            credential_id: Some(vec![1, 2, 3]),
            auth_data: AuthenticatorData::parse(&auth_data).unwrap(),
            signature: vec![0x30, 0x00],
            user_id: Some(vec![4]),
            number_of_credentials: Some(1),
        };
        assert_eq!(
            GetAssertionResponse::parse(&response.encode()).unwrap(),
            response
        );
    }
}
