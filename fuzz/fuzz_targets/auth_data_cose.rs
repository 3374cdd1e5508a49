//! Parses arbitrary bytes as authenticatorData, as a COSE_Key and as an
//! attestation object, and runs the signature checks on whatever parsed.

#![no_main]

use cardgate::bringup::describe;
use cardgate::ctap::attestation;
use cardgate::ctap::auth_data::AuthenticatorData;
use cardgate::ctap::cose::CoseKey;
use cardgate::ctap::make_credential::MakeCredentialResponse;
use cardgate::ctap::verify::verify_assertion;
use libfuzzer_sys::fuzz_target;

const CLIENT_DATA_HASH: [u8; 32] = [0x5a; 32];

fuzz_target!(|data: &[u8]| {
    if let Ok(auth_data) = AuthenticatorData::parse(data) {
        let _ = describe::auth_data(&auth_data);
        if let Some(credential) = &auth_data.attested {
            // The tail of the input doubles as a signature.
            let signature = data
                .get(data.len().saturating_sub(72)..)
                .unwrap_or_default();
            let _ = verify_assertion(&credential.public_key, data, &CLIENT_DATA_HASH, signature);
        }
    }

    if let Ok((key, used)) = CoseKey::parse(data) {
        assert!(used <= data.len());
        let _ = key.verifying_key();
        let _ = describe::cose_key(&key);
        let signature = data.get(used..).unwrap_or_default();
        let _ = verify_assertion(&key, data, &CLIENT_DATA_HASH, signature);
    }
    let _ = CoseKey::parse_exact(data);

    // makeCredential response maps and WebAuthn attestation objects use
    // different keys for the same three fields.
    for parsed in [
        MakeCredentialResponse::parse(data),
        MakeCredentialResponse::parse_attestation_object(data),
    ] {
        if let Ok(response) = parsed {
            let _ = attestation::verify(&response, &CLIENT_DATA_HASH);
        }
    }
});
