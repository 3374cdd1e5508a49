//! ES256 signature checks for assertions and attestation statements.
//!
//! Signatures are DER-encoded ECDSA over SHA-256 on P-256. Some cards
//! return "high-S" signatures (s greater than n/2); WebAuthn accepts them,
//! and so does this module: p256 0.14 does not normalise or reject S when
//! verifying.

use p256::ecdsa::signature::MultipartVerifier;
use p256::ecdsa::{Signature, VerifyingKey};

use crate::ctap::cbor::ParseError;
use crate::ctap::cose::CoseKey;

/// The reason a signature check failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    /// The signature is not a DER-encoded ECDSA P-256 signature.
    #[error("the signature is not a DER-encoded ECDSA P-256 signature ({len} bytes)")]
    SignatureEncoding { len: usize },
    /// The signature is well-formed but does not match the key and data.
    #[error("the signature does not match the public key and the signed data")]
    SignatureMismatch,
    /// The public key is unusable, for example a point off the curve.
    #[error("invalid public key: {0}")]
    Key(#[from] ParseError),
}

/// Verifies a DER-encoded ES256 signature over the concatenation of
/// `signed`.
pub fn verify_es256(
    key: &VerifyingKey,
    signed: &[&[u8]],
    der_signature: &[u8],
) -> Result<(), VerifyError> {
    // NOTE: DER is parsed strictly, so a signature with a non-minimal
    // integer encoding is rejected as SignatureEncoding.
    let signature =
        Signature::from_der(der_signature).map_err(|_| VerifyError::SignatureEncoding {
            len: der_signature.len(),
        })?;
    key.multipart_verify(signed, &signature)
        .map_err(|_| VerifyError::SignatureMismatch)
}

/// Verifies a getAssertion signature: ES256 over authenticatorData
/// followed by the client data hash.
pub fn verify_assertion(
    key: &CoseKey,
    auth_data_raw: &[u8],
    client_data_hash: &[u8; 32],
    der_signature: &[u8],
) -> Result<(), VerifyError> {
    let verifying_key = key.verifying_key()?;
    verify_es256(
        &verifying_key,
        &[auth_data_raw, client_data_hash],
        der_signature,
    )
}

#[cfg(test)]
mod tests {
    use p256::ecdsa::signature::Signer;
    use p256::ecdsa::SigningKey;
    use p256::elliptic_curve::scalar::IsHigh;

    use super::*;

    /// An assertion from a YubiKey whose signature has a high S
    /// (libfido2 regression data, public key x||y).
    const HIGH_S_KEY: &str = "34eb9977029c3638bbc2aea0a018c664fce84992d7749e0c468c9da6df46f784601e0f8b23854a9aecc1089f30d00dd7767b5548917c4f0f641a1df8be14908a";
    const HIGH_S_AUTH_DATA: &str =
        "49960de5880e8c687434170f6476605b8fe4aeb9a28632c7995cf3ba831d97630000000003";
    const HIGH_S_CDH: &str = "ec8d8f78424a2bb78234aaca07a1f656421cb6f6b3008652352da2624abe8976";
    const HIGH_S_SIGNATURE: &str = "3046022100f6d1a3d5242bdeeea09089cdf89ebd6b4d5579e4c14227b79b9ba40ae247640e022100e5c9c2834731c726e525b2b439a7fc3d70bee9810d4a62a9ab4a91c07d2d231e";

    fn high_s_key() -> CoseKey {
        let xy = hex::decode(HIGH_S_KEY).unwrap();
        CoseKey {
            x: xy[..32].try_into().unwrap(),
            y: xy[32..].try_into().unwrap(),
        }
    }

    fn high_s_cdh() -> [u8; 32] {
        hex::decode(HIGH_S_CDH).unwrap().try_into().unwrap()
    }

    #[test]
    fn high_s_signature_is_accepted() {
        let signature = hex::decode(HIGH_S_SIGNATURE).unwrap();
        let parsed = Signature::from_der(&signature).unwrap();
        assert!(
            bool::from(parsed.s().is_high()),
            "the test signature must have a high S"
        );

        let auth_data = hex::decode(HIGH_S_AUTH_DATA).unwrap();
        verify_assertion(&high_s_key(), &auth_data, &high_s_cdh(), &signature).unwrap();
    }

    #[test]
    fn changed_data_is_a_mismatch() {
        let signature = hex::decode(HIGH_S_SIGNATURE).unwrap();
        let mut auth_data = hex::decode(HIGH_S_AUTH_DATA).unwrap();
        auth_data[32] = 0x01;
        let result = verify_assertion(&high_s_key(), &auth_data, &high_s_cdh(), &signature);
        assert_eq!(result, Err(VerifyError::SignatureMismatch));
    }

    #[test]
    fn truncated_signature_is_an_encoding_error() {
        let signature = hex::decode(HIGH_S_SIGNATURE).unwrap();
        let auth_data = hex::decode(HIGH_S_AUTH_DATA).unwrap();
        let result = verify_assertion(
            &high_s_key(),
            &auth_data,
            &high_s_cdh(),
            &signature[..signature.len() - 1],
        );
        assert_eq!(result, Err(VerifyError::SignatureEncoding { len: 71 }));
    }

    #[test]
    fn key_off_the_curve_is_a_key_error() {
        let mut key = high_s_key();
        key.x[0] ^= 0x80;
        let signature = hex::decode(HIGH_S_SIGNATURE).unwrap();
        let auth_data = hex::decode(HIGH_S_AUTH_DATA).unwrap();
        let result = verify_assertion(&key, &auth_data, &high_s_cdh(), &signature);
        assert!(matches!(result, Err(VerifyError::Key(_))), "{result:?}");
    }

    #[test]
    fn signature_over_concatenation_verifies_in_parts() {
        let signing_key = SigningKey::from_slice(&[7u8; 32]).unwrap();
        let signature: p256::ecdsa::DerSignature = signing_key.sign(b"authDatacdh");
        let result = verify_es256(
            signing_key.verifying_key(),
            &[b"authData", b"cdh"],
            signature.as_bytes(),
        );
        assert_eq!(result, Ok(()));
    }
}
