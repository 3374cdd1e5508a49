//! Checks the CTAP2 parsers and verifiers against captured and published
//! device bytes in `tests/data/ctap-vectors.json`.
//!
//! Every vector of a CTAP2 kind must parse, verify or fail exactly as its
//! `expected` object states, and the decoded fields are compared one by one.
//! CTAPHID frame vectors are tested with the framing code, except for the
//! CBOR payloads they carry, which two tests at the end parse here.

use std::collections::BTreeMap;

use cardgate::ctap::attestation::{self, AttestationType};
use cardgate::ctap::auth_data::{rp_id_hash, AuthenticatorData};
use cardgate::ctap::cbor;
use cardgate::ctap::cose::CoseKey;
use cardgate::ctap::get_assertion::GetAssertionResponse;
use cardgate::ctap::get_info::GetInfo;
use cardgate::ctap::make_credential::{
    AttestationStatement, MakeCredentialResponse, ReceivedMakeCredential,
};
use cardgate::ctap::status::split_status;
use cardgate::ctap::verify::{verify_assertion, VerifyError};
use serde_json::Value as Json;

const VECTORS: &str = include_str!("data/ctap-vectors.json");

fn vectors() -> Vec<Json> {
    serde_json::from_str::<Vec<Json>>(VECTORS).expect("ctap-vectors.json is a JSON array")
}

fn vectors_of_kind(kind: &str) -> Vec<Json> {
    let matching: Vec<Json> = vectors()
        .into_iter()
        .filter(|vector| vector["kind"] == kind)
        .collect();
    assert!(!matching.is_empty(), "no vectors of kind {kind}");
    matching
}

fn name(vector: &Json) -> &str {
    vector["name"].as_str().expect("vector name")
}

fn hex_field(value: &Json) -> Vec<u8> {
    hex::decode(value.as_str().expect("hex string")).expect("valid hex")
}

fn hash_field(value: &Json) -> [u8; 32] {
    hex_field(value).try_into().expect("32-byte hash")
}

/// Compares parsed authenticatorData with an `auth_data` object of the
/// vectors file.
fn check_auth_data(vector: &str, expected: &Json, parsed: &AuthenticatorData) {
    assert_eq!(
        hex::encode(parsed.rp_id_hash),
        expected["rp_id_hash"],
        "{vector}: rp_id_hash"
    );
    assert_eq!(
        u64::from(parsed.flags.0),
        expected["flags"].as_u64().unwrap(),
        "{vector}: flags"
    );
    let decoded = &expected["flags_decoded"];
    let flags = parsed.flags;
    let checks = [
        ("UP", flags.up()),
        ("RFU1", flags.0 & 0x02 != 0),
        ("UV", flags.uv()),
        ("BE", flags.be()),
        ("BS", flags.bs()),
        ("RFU2", flags.0 & 0x20 != 0),
        ("AT", flags.at()),
        ("ED", flags.ed()),
    ];
    for (flag, value) in checks {
        assert_eq!(
            decoded[flag].as_bool(),
            Some(value),
            "{vector}: flag {flag}"
        );
    }
    assert_eq!(
        u64::from(parsed.sign_count),
        expected["sign_count"].as_u64().unwrap(),
        "{vector}: sign_count"
    );
    assert_eq!(expected["trailing_bytes"], 0, "{vector}: trailing_bytes");

    match &parsed.attested {
        Some(credential) => {
            assert_eq!(
                hex::encode(credential.aaguid),
                expected["aaguid"],
                "{vector}: aaguid"
            );
            assert_eq!(
                credential.credential_id.len() as u64,
                expected["credential_id_len"].as_u64().unwrap(),
                "{vector}: credential_id_len"
            );
            assert_eq!(
                hex::encode(&credential.credential_id),
                expected["credential_id"],
                "{vector}: credential_id"
            );
            let key = &expected["credential_public_key_cose"];
            assert_eq!(key["1"], 2, "{vector}: kty");
            assert_eq!(key["3"], -7, "{vector}: alg");
            assert_eq!(key["-1"], 1, "{vector}: crv");
            assert_eq!(
                hex::encode(credential.public_key.x),
                key["-2"],
                "{vector}: x"
            );
            assert_eq!(
                hex::encode(credential.public_key.y),
                key["-3"],
                "{vector}: y"
            );
        }
        None => assert!(
            expected.get("credential_id").is_none(),
            "{vector}: attested credential data expected"
        ),
    }

    match (&parsed.extensions, expected.get("extensions")) {
        (Some(extensions), Some(expected)) => {
            assert_eq!(&cbor_to_json(extensions), expected, "{vector}: extensions")
        }
        (None, None) => {}
        (found, expected) => panic!("{vector}: extensions {found:?}, expected {expected:?}"),
    }
}

/// Converts the simple CBOR values used by extension outputs to JSON.
fn cbor_to_json(value: &ciborium::Value) -> Json {
    match value {
        ciborium::Value::Bool(b) => Json::Bool(*b),
        ciborium::Value::Text(t) => Json::String(t.clone()),
        ciborium::Value::Integer(n) => Json::from(i64::try_from(i128::from(*n)).unwrap()),
        ciborium::Value::Bytes(b) => Json::String(hex::encode(b)),
        ciborium::Value::Map(entries) => Json::Object(
            entries
                .iter()
                .map(|(k, v)| (k.as_text().expect("text key").to_string(), cbor_to_json(v)))
                .collect(),
        ),
        other => panic!("no JSON form for {other:?}"),
    }
}

/// Returns the subject and issuer of a DER certificate as RFC 4514 strings.
fn subject_and_issuer(der: &[u8]) -> [String; 2] {
    let (_, certificate) = x509_parser::parse_x509_certificate(der).expect("certificate");
    [
        attestation::distinguished_name(certificate.subject()),
        attestation::distinguished_name(certificate.issuer()),
    ]
}

fn string_list(value: &Json) -> Vec<String> {
    value
        .as_array()
        .expect("array")
        .iter()
        .map(|item| item.as_str().expect("string").to_string())
        .collect()
}

fn check_get_info(vector: &str, expected: &Json, info: &GetInfo) {
    assert_eq!(
        info.versions,
        string_list(&expected["versions"]),
        "{vector}: versions"
    );
    match expected.get("extensions") {
        Some(extensions) => {
            assert_eq!(
                info.extensions,
                string_list(extensions),
                "{vector}: extensions"
            )
        }
        None => assert!(info.extensions.is_empty(), "{vector}: extensions"),
    }
    assert_eq!(
        hex::encode(info.aaguid),
        expected["aaguid"],
        "{vector}: aaguid"
    );

    let options: BTreeMap<String, bool> = expected["options"]
        .as_object()
        .expect("options object")
        .iter()
        .map(|(key, value)| (key.clone(), value.as_bool().expect("boolean option")))
        .collect();
    assert_eq!(info.options, options, "{vector}: options");

    assert_eq!(
        info.max_msg_size,
        expected["maxMsgSize"].as_u64(),
        "{vector}: maxMsgSize"
    );
    let protocols = expected["pinUvAuthProtocols"].as_array().map(|items| {
        items
            .iter()
            .map(|p| p.as_u64().unwrap())
            .collect::<Vec<_>>()
    });
    assert_eq!(
        info.pin_uv_auth_protocols, protocols,
        "{vector}: pinUvAuthProtocols"
    );
}

#[test]
fn get_info_responses_match_expected_fields() {
    for vector in vectors_of_kind("getInfo_response") {
        let vector_name = name(&vector);
        let expected = &vector["expected"];
        let bytes = hex_field(&vector["cbor_hex"]);

        let info = GetInfo::parse(&bytes).unwrap_or_else(|e| panic!("{vector_name}: {e}"));
        check_get_info(vector_name, expected, &info);

        if let Some(payload) = vector.get("ctaphid_payload_hex") {
            let payload = hex_field(payload);
            assert_eq!(
                split_status(&payload),
                Ok(bytes.as_slice()),
                "{vector_name}"
            );
        }

        // Canonical input without unknown keys re-encodes to the same bytes.
        if expected["canonical_cbor"] == true && expected.get("unknown_keys").is_none() {
            assert_eq!(
                hex::encode(info.encode()),
                hex::encode(&bytes),
                "{vector_name}"
            );
        }
    }
}

#[test]
fn chromecard_get_info_matches_synthetic_vector() {
    let vector = vectors()
        .into_iter()
        .find(|vector| vector["name"] == "synthetic_target_card_getinfo")
        .expect("synthetic getInfo vector");
    let bytes = hex_field(&vector["cbor_hex"]);
    assert_eq!(GetInfo::chromecard().encode(), bytes);

    let info = GetInfo::parse(&bytes).unwrap();
    assert!(info.uv_supported());
    assert_eq!(info.pin_uv_auth_protocols, None);
    assert!(!info.options.contains_key("clientPin"));
}

#[test]
fn make_credential_responses_match_expected_fields() {
    for vector in vectors_of_kind("makeCredential_response") {
        let vector_name = name(&vector);
        let expected = &vector["expected"];
        let bytes = hex_field(&vector["cbor_hex"]);

        let response =
            MakeCredentialResponse::parse(&bytes).unwrap_or_else(|e| panic!("{vector_name}: {e}"));
        assert_eq!(response.fmt, expected["fmt"], "{vector_name}: fmt");
        check_auth_data(vector_name, &expected["auth_data"], &response.auth_data);
        if let Some(raw) = expected.get("auth_data_hex") {
            assert_eq!(
                response.auth_data.raw,
                hex_field(raw),
                "{vector_name}: auth_data_hex"
            );
        }

        let AttestationStatement::Packed { alg, sig, x5c } = &response.att_stmt else {
            panic!(
                "{vector_name}: expected a packed statement, found {:?}",
                response.att_stmt
            );
        };
        assert_eq!(*alg, -7, "{vector_name}: alg");
        assert!(!sig.is_empty(), "{vector_name}: sig");
        let expected_names = string_list(&expected["x5c_subject_issuer"]);
        assert_eq!(
            subject_and_issuer(&x5c[0]).to_vec(),
            expected_names,
            "{vector_name}: x5c[0] subject and issuer"
        );

        // A response that was canonical on the wire re-encodes unchanged.
        if expected["canonical_cbor"] == true {
            assert_eq!(
                hex::encode(response.encode()),
                hex::encode(&bytes),
                "{vector_name}"
            );
        }

        match vector.get("client_data_hash_hex") {
            Some(cdh) => {
                let result = attestation::verify(&response, &hash_field(cdh));
                assert_eq!(expected["signature_valid"], true, "{vector_name}");
                assert_eq!(
                    result,
                    Ok(AttestationType::Certificate {
                        subject: expected_names[0].clone()
                    }),
                    "{vector_name}: attestation"
                );
                // The same statement fails for any other client data hash.
                assert!(
                    attestation::verify(&response, &[0; 32]).is_err(),
                    "{vector_name}: other client data hash"
                );
            }
            None => assert!(
                vector["notes"]
                    .as_str()
                    .unwrap()
                    .contains("No clientDataHash"),
                "{vector_name}: no client data hash to verify with"
            ),
        }
    }
}

#[test]
fn spec_example_request_parses_with_its_options() {
    let vector = vectors()
        .into_iter()
        .find(|vector| vector["name"] == "ctap21_spec_example_makecred_request_response")
        .expect("CTAP 2.1 example vector");
    let request = hex_field(&vector["request_cbor_hex"]);
    assert_eq!(request[0], 0x01, "command byte");

    let received = ReceivedMakeCredential::parse(&request[1..]).unwrap();
    assert_eq!(
        received.request.client_data_hash,
        hash_field(&vector["client_data_hash_hex"])
    );
    assert_eq!(received.request.rp_id, "test.ctap");
    assert_eq!(received.request.rp_name, "test.ctap");
    assert_eq!(received.request.user_name, "testctap@ctap.com");
    assert_eq!(received.request.user_display_name, "Test Ctap");
    assert_eq!(received.algorithms, vec![-7, -257, -37]);
    assert_eq!(received.options.get("rk"), Some(&true));
    assert_eq!(received.pin_uv_auth_param.map(|p| p.len()), Some(16));
    assert_eq!(received.pin_uv_auth_protocol, Some(1));
    assert!(!received.request.uv);
}

#[test]
fn get_assertion_responses_match_expected_fields() {
    for vector in vectors_of_kind("getAssertion_response") {
        let vector_name = name(&vector);
        let expected = &vector["expected"];
        let bytes = hex_field(&vector["cbor_hex"]);

        let response =
            GetAssertionResponse::parse(&bytes).unwrap_or_else(|e| panic!("{vector_name}: {e}"));
        assert_eq!(expected["credential"]["type"], "public-key");
        assert_eq!(
            response.credential_id.as_deref().map(hex::encode),
            expected["credential"]["id"].as_str().map(str::to_string),
            "{vector_name}: credential id"
        );
        assert_eq!(
            response.auth_data.raw,
            hex_field(&expected["auth_data_hex"]),
            "{vector_name}: auth_data_hex"
        );
        check_auth_data(vector_name, &expected["auth_data"], &response.auth_data);
        assert_eq!(
            hex::encode(&response.signature),
            expected["signature_hex"],
            "{vector_name}: signature"
        );
        assert_eq!(response.user_id, None, "{vector_name}: user");
        assert!(expected["user"].is_null());
        assert_eq!(response.number_of_credentials, None, "{vector_name}");
        assert!(expected["numberOfCredentials"].is_null());

        if expected["canonical_cbor"] == true {
            assert_eq!(
                hex::encode(response.encode()),
                hex::encode(&bytes),
                "{vector_name}"
            );
        }

        // The credential key from the matching makeCredential vector parses.
        let key = CoseKey::parse_exact(&hex_field(&vector["credential_public_key_cose_hex"]));
        assert!(key.is_ok(), "{vector_name}: {key:?}");
    }
}

#[test]
fn attestation_objects_verify_as_expected() {
    for vector in vectors_of_kind("attestation_object") {
        let vector_name = name(&vector);
        let expected = &vector["expected"];
        let bytes = hex_field(&vector["attestation_object_hex"]);

        let response = MakeCredentialResponse::parse_attestation_object(&bytes)
            .unwrap_or_else(|e| panic!("{vector_name}: {e}"));
        assert_eq!(response.fmt, expected["fmt"], "{vector_name}: fmt");
        assert_eq!(
            response.auth_data.raw,
            hex_field(&vector["auth_data_hex"]),
            "{vector_name}: auth_data_hex"
        );
        check_auth_data(vector_name, &expected["auth_data"], &response.auth_data);

        match expected["fmt"].as_str() {
            Some("fido-u2f") => {
                let AttestationStatement::FidoU2f { sig, x5c } = &response.att_stmt else {
                    panic!("{vector_name}: {:?}", response.att_stmt);
                };
                assert_eq!(
                    sig,
                    &hex_field(&vector["att_stmt_sig_hex"]),
                    "{vector_name}"
                );
                assert_eq!(
                    x5c.as_slice(),
                    &[hex_field(&vector["x5c0_hex"])],
                    "{vector_name}"
                );
                let names = string_list(&expected["x5c_subject_issuer"]);
                assert_eq!(subject_and_issuer(&x5c[0]).to_vec(), names, "{vector_name}");

                let cdh = hash_field(&vector["client_data_hash_hex"]);
                assert_eq!(expected["signature_valid"], true);
                assert_eq!(
                    attestation::verify(&response, &cdh),
                    Ok(AttestationType::Certificate {
                        subject: names[0].clone()
                    }),
                    "{vector_name}"
                );
                let mut other = cdh;
                other[0] ^= 1;
                assert!(
                    attestation::verify(&response, &other).is_err(),
                    "{vector_name}: changed client data hash"
                );
            }
            Some("none") => {
                assert_eq!(response.att_stmt, AttestationStatement::None);
                assert_eq!(expected["att_stmt"], serde_json::json!({}));
                assert_eq!(
                    attestation::verify(&response, &[0; 32]),
                    Ok(AttestationType::None)
                );

                // The rule: a non-empty attStmt with fmt "none" is rejected.
                // a0 (empty map) becomes a1 63 736967 41 00 ({"sig": h'00'}).
                let empty = hex::encode(b"attStmt") + "a0";
                let filled = hex::encode(b"attStmt") + "a163736967" + "4100";
                let mutated = hex::encode(&bytes).replacen(&empty, &filled, 1);
                let mutated = hex::decode(mutated).unwrap();
                assert_ne!(mutated, bytes);
                let error = MakeCredentialResponse::parse_attestation_object(&mutated);
                assert!(error.is_err(), "{vector_name}: non-empty attStmt accepted");
            }
            other => panic!("{vector_name}: no check for fmt {other:?}"),
        }
    }
}

#[test]
fn assertion_vectors_verify_as_expected() {
    for vector in vectors_of_kind("assertion_verify") {
        let vector_name = name(&vector);
        let expected = &vector["expected"];

        let key = CoseKey::parse_exact(&hex_field(&vector["credential_public_key_cose_hex"]))
            .unwrap_or_else(|e| panic!("{vector_name}: {e}"));
        if let Some(xy) = vector.get("public_key_xy_hex") {
            assert_eq!(
                hex_field(xy),
                [key.x, key.y].concat(),
                "{vector_name}: x||y"
            );
        }

        let raw = hex_field(&vector["auth_data_hex"]);
        if let Some(wrapped) = vector.get("auth_data_cbor_hex") {
            let item = cbor::decode("test", &hex_field(wrapped)).unwrap();
            assert_eq!(item, ciborium::Value::Bytes(raw.clone()), "{vector_name}");
        }
        let auth_data =
            AuthenticatorData::parse(&raw).unwrap_or_else(|e| panic!("{vector_name}: {e}"));
        check_auth_data(vector_name, &expected["auth_data"], &auth_data);
        if expected["rp_id_hash_is_sha256_localhost"] == true {
            assert_eq!(
                auth_data.rp_id_hash,
                rp_id_hash("localhost"),
                "{vector_name}"
            );
        }

        let cdh = hash_field(&vector["client_data_hash_hex"]);
        let signature = hex_field(&vector["signature_hex"]);
        assert_eq!(expected["signature_valid"], true, "{vector_name}");
        assert_eq!(
            verify_assertion(&key, &raw, &cdh, &signature),
            Ok(()),
            "{vector_name}"
        );

        let mut other = cdh;
        other[31] ^= 1;
        assert_eq!(
            verify_assertion(&key, &raw, &other, &signature),
            Err(VerifyError::SignatureMismatch),
            "{vector_name}: changed client data hash"
        );
    }
}

#[test]
fn negative_auth_data_vectors_are_rejected() {
    for vector in vectors_of_kind("authenticator_data_negative") {
        let vector_name = name(&vector);
        let expected = &vector["expected"];
        assert_eq!(expected["must_reject"], true, "{vector_name}");

        let item = cbor::decode("test", &hex_field(&vector["auth_data_cbor_hex"])).unwrap();
        let ciborium::Value::Bytes(raw) = item else {
            panic!("{vector_name}: auth_data_cbor_hex is not a byte string");
        };
        let error =
            AuthenticatorData::parse(&raw).expect_err(&format!("{vector_name}: must be rejected"));

        let reason = expected["reason"].as_str().unwrap();
        let expected_error = if reason.contains("duplicate") {
            "a map without duplicate keys"
        } else if reason.contains("canonical order") {
            "keys in CTAP2 canonical order"
        } else {
            panic!("{vector_name}: no check for reason {reason:?}");
        };
        assert_eq!(error.expected, expected_error, "{vector_name}: {error}");
        assert!(error.field.starts_with("credentialPublicKey"), "{error}");
    }
}

#[test]
fn every_ctap2_vector_kind_is_covered() {
    let covered = [
        "getInfo_response",
        "makeCredential_response",
        "getAssertion_response",
        "attestation_object",
        "assertion_verify",
        "authenticator_data_negative",
    ];
    for vector in vectors() {
        let kind = vector["kind"].as_str().unwrap();
        assert!(
            covered.contains(&kind) || kind.starts_with("ctaphid_frames"),
            "{}: kind {kind} has no test",
            name(&vector)
        );
    }
}

#[test]
fn multiframe_get_info_payload_parses() {
    let vector = vectors()
        .into_iter()
        .find(|vector| vector["name"] == "libfido2_ctaphid_getinfo_multiframe")
        .expect("multi-frame getInfo vector");
    let payload = hex_field(&vector["ctaphid_payload_hex"]);
    let expected = &vector["expected"]["getinfo"];

    let info = GetInfo::parse(split_status(&payload).unwrap()).unwrap();
    check_get_info("libfido2_ctaphid_getinfo_multiframe", expected, &info);
    assert_eq!(info.max_credential_count_in_list, Some(8));
    assert_eq!(info.max_credential_id_length, Some(128));
    assert_eq!(info.transports, Some(string_list(&expected["transports"])));
    let algorithms: Vec<i64> = info
        .algorithms
        .unwrap()
        .iter()
        .map(|parameters| parameters.alg)
        .collect();
    assert_eq!(algorithms, vec![-7, -8, -35]);
}

#[test]
fn mixed_cid_payload_parses_as_assertion() {
    let vector = vectors()
        .into_iter()
        .find(|vector| vector["name"] == "libfido2_fuzz_getassertion_frames_mixed_cid")
        .expect("mixed CID vector");
    let payload = hex_field(&vector["ctaphid_payload_hex"]);
    let expected = &vector["expected"]["payload_if_cid_check_disabled"];

    let response = GetAssertionResponse::parse(split_status(&payload).unwrap()).unwrap();
    assert_eq!(
        response.credential_id.map(hex::encode),
        expected["credential"]["id"].as_str().map(str::to_string)
    );
    check_auth_data(
        "mixed_cid payload",
        &expected["auth_data"],
        &response.auth_data,
    );
    assert_eq!(hex::encode(response.signature), expected["signature_hex"]);
}

/// A response from the vectors file: its vector name, its bytes and a
/// function that returns whether the parser for its kind accepts bytes.
type Response = (String, Vec<u8>, fn(&[u8]) -> bool);

/// Returns every response in the vectors file with the parser for its kind.
fn responses() -> Vec<Response> {
    let mut responses: Vec<Response> = Vec::new();
    for vector in vectors() {
        let vector_name = name(&vector).to_string();
        let parser: fn(&[u8]) -> bool = match vector["kind"].as_str().unwrap() {
            "getInfo_response" => |bytes| GetInfo::parse(bytes).is_ok(),
            "makeCredential_response" => |bytes| MakeCredentialResponse::parse(bytes).is_ok(),
            "getAssertion_response" => |bytes| GetAssertionResponse::parse(bytes).is_ok(),
            "attestation_object" => {
                |bytes| MakeCredentialResponse::parse_attestation_object(bytes).is_ok()
            }
            _ => continue,
        };
        let field = vector
            .get("cbor_hex")
            .or_else(|| vector.get("attestation_object_hex"))
            .expect("response bytes");
        responses.push((vector_name, hex_field(field), parser));
    }
    assert!(responses.len() >= 8, "found {} responses", responses.len());
    responses
}

#[test]
fn truncated_responses_are_rejected() {
    for (vector_name, bytes, parses) in responses() {
        assert!(
            parses(&bytes),
            "{vector_name}: the full response must parse"
        );
        for len in 0..bytes.len() {
            assert!(
                !parses(&bytes[..len]),
                "{vector_name}: prefix of {len} bytes parsed"
            );
        }
    }
}

#[test]
fn corrupted_responses_do_not_panic() {
    // Every single-bit change of every byte is parsed; the test fails only
    // if a parser panics.
    for (_, bytes, parses) in responses() {
        for position in 0..bytes.len() {
            for bit in 0..8 {
                let mut corrupted = bytes.clone();
                corrupted[position] ^= 1 << bit;
                let _ = parses(&corrupted);
            }
        }
    }
}
