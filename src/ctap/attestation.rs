//! Verification of the attestation statement in a makeCredential response.
//!
//! This checks that the statement is internally consistent: the signature
//! verifies with the key the statement names, and the certificate has the
//! shape WebAuthn requires. It applies no trust policy: no certificate
//! chain is built or checked against roots, validity dates are not
//! checked, and any card model is accepted. Whether to trust a card model
//! is a decision for the caller.

use p256::ecdsa::VerifyingKey;
use x509_parser::certificate::X509Certificate;
use x509_parser::x509::X509Name;

use crate::ctap::cbor::ParseError;
use crate::ctap::cose::ALG_ES256;
use crate::ctap::make_credential::{AttestationStatement, MakeCredentialResponse};
use crate::ctap::verify::{verify_es256, VerifyError};

/// OID of the id-fido-gen-ce-aaguid certificate extension, which carries
/// the card model's AAGUID.
const OID_FIDO_AAGUID: &str = "1.3.6.1.4.1.45724.1.1.4";
/// OID of id-ecPublicKey.
const OID_EC_PUBLIC_KEY: &str = "1.2.840.10045.2.1";
/// OID of the P-256 curve (prime256v1).
const OID_P256: &str = "1.2.840.10045.3.1.7";

/// The kind of attestation a verified statement carried.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AttestationType {
    /// Format `none`: the card made no statement.
    None,
    /// `packed` without certificate: signed with the credential's own key.
    SelfAttestation,
    /// Signed with the key of an attestation certificate.
    Certificate {
        /// The certificate subject as an RFC 4514 string.
        subject: String,
    },
}

/// The reason an attestation statement did not verify.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AttestationError {
    #[error(
        "attestation format \"{0}\" is not supported; cardgate checks packed, fido-u2f and none"
    )]
    UnsupportedFormat(String),
    #[error("attestation algorithm {0} is not supported; expected -7 (ES256)")]
    UnsupportedAlgorithm(i64),
    #[error("authData has no attested credential data")]
    MissingCredential,
    #[error("credential public key is invalid: {0}")]
    CredentialKey(ParseError),
    #[error("attestation signature is invalid: {0}")]
    Signature(VerifyError),
    #[error("fido-u2f attestation needs exactly one certificate, found {0}")]
    CertificateCount(usize),
    #[error("attestation certificate is invalid: {0}")]
    Certificate(String),
    #[error(
        "attestation certificate AAGUID {certificate} differs from authData AAGUID {auth_data}"
    )]
    AaguidMismatch {
        certificate: String,
        auth_data: String,
    },
}

/// Verifies the attestation statement of `response` for the client data
/// hash that was sent in the request, and returns which kind it was.
pub fn verify(
    response: &MakeCredentialResponse,
    client_data_hash: &[u8; 32],
) -> Result<AttestationType, AttestationError> {
    let auth_data = &response.auth_data;
    let credential = auth_data
        .attested
        .as_ref()
        .ok_or(AttestationError::MissingCredential)?;
    let signed: [&[u8]; 2] = [&auth_data.raw, client_data_hash];

    match &response.att_stmt {
        AttestationStatement::None => Ok(AttestationType::None),

        AttestationStatement::Packed { alg, sig, x5c } => {
            if *alg != ALG_ES256 {
                return Err(AttestationError::UnsupportedAlgorithm(*alg));
            }
            let Some(leaf) = x5c.first() else {
                // Self attestation: the credential key signs. The credential
                // key is always ES256, so it matches `alg`.
                let key = credential
                    .public_key
                    .verifying_key()
                    .map_err(AttestationError::CredentialKey)?;
                verify_es256(&key, &signed, sig).map_err(AttestationError::Signature)?;
                return Ok(AttestationType::SelfAttestation);
            };

            let certificate = parse_certificate(leaf)?;
            check_packed_certificate(&certificate, &credential.aaguid)?;
            let key = p256_key(&certificate)?;
            verify_es256(&key, &signed, sig).map_err(AttestationError::Signature)?;
            Ok(AttestationType::Certificate {
                subject: distinguished_name(certificate.subject()),
            })
        }

        AttestationStatement::FidoU2f { sig, x5c } => {
            let [leaf] = x5c.as_slice() else {
                return Err(AttestationError::CertificateCount(x5c.len()));
            };
            let certificate = parse_certificate(leaf)?;
            let key = p256_key(&certificate)?;

            // U2F registration data: 0x00 || rpIdHash || clientDataHash ||
            // credentialId || 0x04 || x || y.
            let public_key = &credential.public_key;
            let u2f_signed: [&[u8]; 7] = [
                &[0x00],
                &auth_data.rp_id_hash,
                client_data_hash,
                &credential.credential_id,
                &[0x04],
                &public_key.x,
                &public_key.y,
            ];
            verify_es256(&key, &u2f_signed, sig).map_err(AttestationError::Signature)?;
            Ok(AttestationType::Certificate {
                subject: distinguished_name(certificate.subject()),
            })
        }

        AttestationStatement::Other(fmt) => Err(AttestationError::UnsupportedFormat(fmt.clone())),
    }
}

/// Formats an X.509 name as an RFC 4514 string: the most specific
/// attribute first, for example `CN=Example,O=Maker,C=US`.
pub fn distinguished_name(name: &X509Name<'_>) -> String {
    let registry = x509_parser::objects::oid_registry();
    let mut relative_names: Vec<String> = name
        .iter()
        .map(|rdn| {
            let attributes: Vec<String> = rdn
                .iter()
                .map(|attribute| {
                    let oid = attribute.attr_type();
                    let label = x509_parser::objects::oid2abbrev(oid, registry)
                        .map(str::to_string)
                        .unwrap_or_else(|_| oid.to_id_string());
                    let value = attribute
                        .as_str()
                        .map(str::to_string)
                        .unwrap_or_else(|_| format!("#{}", hex::encode(attribute.as_slice())));
                    format!("{label}={value}")
                })
                .collect();
            attributes.join("+")
        })
        .collect();
    relative_names.reverse();
    relative_names.join(",")
}

fn parse_certificate(der: &[u8]) -> Result<X509Certificate<'_>, AttestationError> {
    let (rest, certificate) = x509_parser::parse_x509_certificate(der).map_err(|error| {
        AttestationError::Certificate(format!("not a DER certificate: {error}"))
    })?;
    if !rest.is_empty() {
        return Err(AttestationError::Certificate(format!(
            "{} bytes follow the certificate",
            rest.len()
        )));
    }
    Ok(certificate)
}

/// Checks the certificate requirements of `packed` attestation that do not
/// depend on trust: X.509 version 3, not a CA, and an AAGUID extension,
/// when present, that is not critical and equals authData's AAGUID.
fn check_packed_certificate(
    certificate: &X509Certificate<'_>,
    aaguid: &[u8; 16],
) -> Result<(), AttestationError> {
    // X509Version counts from 0, so version 3 is 2.
    if certificate.version().0 != 2 {
        return Err(AttestationError::Certificate(format!(
            "expected X.509 version 3, found version {}",
            certificate.version().0 + 1
        )));
    }

    let constraints = certificate.basic_constraints().map_err(|error| {
        AttestationError::Certificate(format!("invalid basic constraints: {error}"))
    })?;
    if constraints.is_some_and(|constraints| constraints.value.ca) {
        return Err(AttestationError::Certificate(
            "expected an end-entity certificate, found a CA certificate".to_string(),
        ));
    }

    let mut aaguid_extensions = certificate
        .extensions()
        .iter()
        .filter(|extension| extension.oid.to_id_string() == OID_FIDO_AAGUID);
    let Some(extension) = aaguid_extensions.next() else {
        return Ok(());
    };
    if aaguid_extensions.next().is_some() {
        return Err(AttestationError::Certificate(
            "the AAGUID extension appears twice".to_string(),
        ));
    }
    if extension.critical {
        return Err(AttestationError::Certificate(
            "the AAGUID extension is marked critical".to_string(),
        ));
    }

    // The extension value is a DER OCTET STRING of 16 bytes: 04 10 <aaguid>.
    let certificate_aaguid = match extension.value {
        [0x04, 0x10, rest @ ..] if rest.len() == 16 => rest,
        other => {
            return Err(AttestationError::Certificate(format!(
                "expected the AAGUID extension to hold a 16-byte OCTET STRING, found {}",
                hex::encode(other)
            )))
        }
    };
    if certificate_aaguid != aaguid.as_slice() {
        return Err(AttestationError::AaguidMismatch {
            certificate: hex::encode(certificate_aaguid),
            auth_data: hex::encode(aaguid),
        });
    }
    Ok(())
}

/// Returns the certificate's public key, which must be on P-256.
fn p256_key(certificate: &X509Certificate<'_>) -> Result<VerifyingKey, AttestationError> {
    let info = certificate.public_key();
    let algorithm = info.algorithm.algorithm.to_id_string();
    if algorithm != OID_EC_PUBLIC_KEY {
        return Err(AttestationError::Certificate(format!(
            "expected an EC public key ({OID_EC_PUBLIC_KEY}), found algorithm {algorithm}"
        )));
    }
    let curve = info
        .algorithm
        .parameters
        .as_ref()
        .and_then(|parameters| parameters.as_oid().ok())
        .map(|oid| oid.to_id_string())
        .unwrap_or_default();
    if curve != OID_P256 {
        return Err(AttestationError::Certificate(format!(
            "expected a P-256 key ({OID_P256}), found curve \"{curve}\""
        )));
    }
    VerifyingKey::from_sec1_bytes(&info.subject_public_key.data).map_err(|_| {
        AttestationError::Certificate("the public key is not a point on P-256".to_string())
    })
}

#[cfg(test)]
mod tests {
    use p256::ecdsa::signature::Signer;
    use p256::ecdsa::{DerSignature, SigningKey};

    use super::*;
    use crate::ctap::auth_data::{self, AttestedCredential, AuthenticatorData, Flags};
    use crate::ctap::cose::CoseKey;

    const CDH: [u8; 32] = [0x5a; 32];

    fn credential_key() -> SigningKey {
        SigningKey::from_slice(&[3u8; 32]).unwrap()
    }

    fn auth_data_for(key: &SigningKey) -> AuthenticatorData {
        let credential = AttestedCredential {
            aaguid: [9; 16],
            credential_id: vec![1, 2, 3, 4],
            public_key: CoseKey::from_verifying_key(key.verifying_key()),
        };
        let raw = auth_data::encode(
            &auth_data::rp_id_hash("example.com"),
            Flags(Flags::UP),
            1,
            Some(&credential),
        );
        AuthenticatorData::parse(&raw).unwrap()
    }

    fn packed_self(key: &SigningKey, signed_cdh: &[u8; 32]) -> MakeCredentialResponse {
        let auth_data = auth_data_for(key);
        let signed = [auth_data.raw.as_slice(), signed_cdh].concat();
        let signature: DerSignature = key.sign(&signed);
        MakeCredentialResponse {
            fmt: "packed".to_string(),
            auth_data,
            att_stmt: AttestationStatement::Packed {
                alg: ALG_ES256,
                sig: signature.as_bytes().to_vec(),
                x5c: Vec::new(),
            },
        }
    }

    #[test]
    fn packed_self_attestation_verifies() {
        let response = packed_self(&credential_key(), &CDH);
        assert_eq!(
            verify(&response, &CDH),
            Ok(AttestationType::SelfAttestation)
        );
    }

    #[test]
    fn packed_self_attestation_rejects_other_client_data() {
        let response = packed_self(&credential_key(), &[0; 32]);
        assert_eq!(
            verify(&response, &CDH),
            Err(AttestationError::Signature(VerifyError::SignatureMismatch))
        );
    }

    #[test]
    fn packed_rejects_other_algorithm() {
        let mut response = packed_self(&credential_key(), &CDH);
        if let AttestationStatement::Packed { alg, .. } = &mut response.att_stmt {
            *alg = -257;
        }
        assert_eq!(
            verify(&response, &CDH),
            Err(AttestationError::UnsupportedAlgorithm(-257))
        );
    }

    #[test]
    fn fido_u2f_rejects_two_certificates() {
        let mut response = packed_self(&credential_key(), &CDH);
        response.att_stmt = AttestationStatement::FidoU2f {
            sig: vec![0x30],
            x5c: vec![vec![0x30], vec![0x30]],
        };
        assert_eq!(
            verify(&response, &CDH),
            Err(AttestationError::CertificateCount(2))
        );
    }

    #[test]
    fn packed_rejects_garbage_certificate() {
        let mut response = packed_self(&credential_key(), &CDH);
        if let AttestationStatement::Packed { x5c, .. } = &mut response.att_stmt {
            x5c.push(vec![0x30, 0x03, 0x02, 0x01, 0x00]);
        }
        assert!(matches!(
            verify(&response, &CDH),
            Err(AttestationError::Certificate(_))
        ));
    }

    #[test]
    fn unknown_format_is_unsupported() {
        let mut response = packed_self(&credential_key(), &CDH);
        response.att_stmt = AttestationStatement::Other("tpm".to_string());
        assert_eq!(
            verify(&response, &CDH),
            Err(AttestationError::UnsupportedFormat("tpm".to_string()))
        );
    }

    /// Builds a self-signed P-256 attestation certificate, optionally with
    /// an AAGUID extension (content, critical), and returns it with its key.
    fn attestation_certificate(aaguid: Option<(Vec<u8>, bool)>, ca: bool) -> (Vec<u8>, SigningKey) {
        use p256::pkcs8::DecodePrivateKey;
        use rcgen::{BasicConstraints, CertificateParams, CustomExtension, DnType, IsCa, KeyPair};

        let key_pair = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::OrganizationName, "Maker");
        params
            .distinguished_name
            .push(DnType::OrganizationalUnitName, "Authenticator Attestation");
        params
            .distinguished_name
            .push(DnType::CommonName, "Test Card");
        params.is_ca = if ca {
            IsCa::Ca(BasicConstraints::Unconstrained)
        } else {
            IsCa::ExplicitNoCa
        };
        if let Some((content, critical)) = aaguid {
            let mut extension =
                CustomExtension::from_oid_content(&[1, 3, 6, 1, 4, 1, 45724, 1, 1, 4], content);
            extension.set_criticality(critical);
            params.custom_extensions.push(extension);
        }

        let certificate = params.self_signed(&key_pair).unwrap();
        let signing_key = SigningKey::from_pkcs8_der(&key_pair.serialize_der()).unwrap();
        (certificate.der().to_vec(), signing_key)
    }

    /// Builds a packed statement signed by a certificate key over the credential
    /// of [`auth_data_for`], whose AAGUID is 16 bytes of 9.
    fn packed_with_certificate(
        certificate: Vec<u8>,
        attestation_key: &SigningKey,
    ) -> MakeCredentialResponse {
        let auth_data = auth_data_for(&credential_key());
        let signed = [auth_data.raw.as_slice(), &CDH].concat();
        let signature: DerSignature = attestation_key.sign(&signed);
        MakeCredentialResponse {
            fmt: "packed".to_string(),
            auth_data,
            att_stmt: AttestationStatement::Packed {
                alg: ALG_ES256,
                sig: signature.as_bytes().to_vec(),
                x5c: vec![certificate],
            },
        }
    }

    fn aaguid_extension(aaguid: [u8; 16]) -> Vec<u8> {
        [&[0x04, 0x10][..], &aaguid].concat()
    }

    #[test]
    fn packed_certificate_attestation_verifies() {
        let (certificate, key) =
            attestation_certificate(Some((aaguid_extension([9; 16]), false)), false);
        let response = packed_with_certificate(certificate, &key);
        assert_eq!(
            verify(&response, &CDH),
            Ok(AttestationType::Certificate {
                subject: "CN=Test Card,OU=Authenticator Attestation,O=Maker".to_string()
            })
        );
    }

    #[test]
    fn packed_certificate_without_aaguid_verifies() {
        let (certificate, key) = attestation_certificate(None, false);
        let response = packed_with_certificate(certificate, &key);
        assert!(matches!(
            verify(&response, &CDH),
            Ok(AttestationType::Certificate { .. })
        ));
    }

    #[test]
    fn packed_certificate_rejects_other_aaguid() {
        let (certificate, key) =
            attestation_certificate(Some((aaguid_extension([8; 16]), false)), false);
        let response = packed_with_certificate(certificate, &key);
        assert_eq!(
            verify(&response, &CDH),
            Err(AttestationError::AaguidMismatch {
                certificate: "08".repeat(16),
                auth_data: "09".repeat(16),
            })
        );
    }

    #[test]
    fn packed_certificate_rejects_critical_aaguid() {
        let (certificate, key) =
            attestation_certificate(Some((aaguid_extension([9; 16]), true)), false);
        let response = packed_with_certificate(certificate, &key);
        let error = verify(&response, &CDH).unwrap_err();
        assert_eq!(
            error,
            AttestationError::Certificate("the AAGUID extension is marked critical".to_string())
        );
    }

    #[test]
    fn packed_certificate_rejects_malformed_aaguid() {
        let (certificate, key) =
            attestation_certificate(Some((vec![0x04, 0x02, 9, 9], false)), false);
        let response = packed_with_certificate(certificate, &key);
        assert!(matches!(
            verify(&response, &CDH),
            Err(AttestationError::Certificate(_))
        ));
    }

    #[test]
    fn packed_certificate_rejects_ca() {
        let (certificate, key) = attestation_certificate(None, true);
        let response = packed_with_certificate(certificate, &key);
        assert_eq!(
            verify(&response, &CDH),
            Err(AttestationError::Certificate(
                "expected an end-entity certificate, found a CA certificate".to_string()
            ))
        );
    }

    #[test]
    fn packed_certificate_rejects_signature_by_other_key() {
        let (certificate, _) = attestation_certificate(None, false);
        let response = packed_with_certificate(certificate, &credential_key());
        assert_eq!(
            verify(&response, &CDH),
            Err(AttestationError::Signature(VerifyError::SignatureMismatch))
        );
    }
}
