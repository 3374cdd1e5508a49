//! JSON descriptions of decoded CTAP structures, shared by the bring-up
//! commands. Text output is the same JSON, pretty-printed, so both forms
//! carry the same facts.

use serde_json::{json, Value};

use crate::ctap::auth_data::AuthenticatorData;
use crate::ctap::cose::CoseKey;
use crate::ctap::frame::InitResponse;
use crate::ctap::get_assertion::GetAssertionResponse;
use crate::ctap::get_info::{GetInfo, UvRequest};
use crate::ctap::make_credential::{AttestationStatement, MakeCredentialResponse};

pub fn cose_key(key: &CoseKey) -> Value {
    json!({
        "kty": "EC2",
        "alg": "ES256 (-7)",
        "crv": "P-256",
        "x": hex::encode(key.x),
        "y": hex::encode(key.y),
        "cose_hex": hex::encode(key.encode()),
    })
}

pub fn auth_data(data: &AuthenticatorData) -> Value {
    let flags = data.flags;
    let mut value = json!({
        "rp_id_hash": hex::encode(data.rp_id_hash),
        "flags": {
            "byte": format!("0x{:02x}", flags.0),
            "UP": flags.up(),
            "UV": flags.uv(),
            "BE": flags.be(),
            "BS": flags.bs(),
            "AT": flags.at(),
            "ED": flags.ed(),
        },
        "sign_count": data.sign_count,
    });
    if let Some(attested) = &data.attested {
        value["attested_credential"] = json!({
            "aaguid": hex::encode(attested.aaguid),
            "credential_id": hex::encode(&attested.credential_id),
            "credential_id_len": attested.credential_id.len(),
            "public_key": cose_key(&attested.public_key),
        });
    }
    if let Some(extensions) = &data.extensions {
        value["extensions"] = json!(crate::ctap::cbor::describe(extensions));
    }
    value
}

pub fn get_info(info: &GetInfo) -> Value {
    let uv = match info.uv_request() {
        UvRequest::UvOption => {
            "cardgate sends {\"uv\": true} in makeCredential and getAssertion (no PIN protocol)"
        }
        UvRequest::Unavailable => {
            "the card offers no built-in user verification; cardgate can only ask for presence"
        }
    };
    json!({
        "versions": info.versions,
        "extensions": info.extensions,
        "aaguid": hex::encode(info.aaguid),
        "options": info.options,
        "max_msg_size": info.max_msg_size,
        "pin_uv_auth_protocols": info.pin_uv_auth_protocols,
        "max_credential_count_in_list": info.max_credential_count_in_list,
        "max_credential_id_length": info.max_credential_id_length,
        "transports": info.transports,
        "algorithms": info.algorithms.as_ref().map(|list| list.iter().map(|a| json!({"type": a.credential_type, "alg": a.alg})).collect::<Vec<_>>()),
        "user_verification": uv,
    })
}

pub fn make_credential(response: &MakeCredentialResponse) -> Value {
    let statement = match &response.att_stmt {
        AttestationStatement::None => json!({}),
        AttestationStatement::Packed { alg, sig, x5c } => json!({
            "alg": alg,
            "sig": hex::encode(sig),
            "x5c": x5c.iter().map(hex::encode).collect::<Vec<_>>(),
        }),
        AttestationStatement::FidoU2f { sig, x5c } => json!({
            "sig": hex::encode(sig),
            "x5c": x5c.iter().map(hex::encode).collect::<Vec<_>>(),
        }),
        AttestationStatement::Other(fmt) => json!({ "unsupported_format": fmt }),
    };
    json!({
        "fmt": response.fmt,
        "auth_data": auth_data(&response.auth_data),
        "att_stmt": statement,
    })
}

pub fn get_assertion(response: &GetAssertionResponse) -> Value {
    json!({
        "credential_id": response.credential_id.as_ref().map(hex::encode),
        "auth_data": auth_data(&response.auth_data),
        "auth_data_hex": hex::encode(&response.auth_data.raw),
        "signature": hex::encode(&response.signature),
        "user_id": response.user_id.as_ref().map(hex::encode),
        "number_of_credentials": response.number_of_credentials,
    })
}

pub fn init(init: &InitResponse) -> Value {
    json!({
        "channel": format!("{:08x}", init.cid),
        "protocol_version": init.protocol_version,
        "device_version": format!("{}.{}.{}", init.device_version[0], init.device_version[1], init.device_version[2]),
        "capabilities": {
            "byte": format!("0x{:02x}", init.capabilities),
            "WINK": init.supports_wink(),
            "CBOR": init.supports_cbor(),
            "NMSG": !init.supports_msg(),
        },
    })
}
