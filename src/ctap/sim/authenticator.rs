//! The CTAP2 half of the simulated ChromeCard.
//!
//! Like the real card it supports getInfo, makeCredential and getAssertion
//! with non-discoverable ES256 credentials, built-in user verification
//! through the `uv` option, no PIN protocol and no extensions.
//!
//! Nothing is stored per credential. A credential id is
//! `0x01 || nonce (16) || tag (32)`, where
//! `tag = HMAC-SHA256(master, ID_LABEL || nonce || rpIdHash)`, and the
//! private key is the scalar `HMAC-SHA256(master, KEY_LABEL || nonce ||
//! rpIdHash)`. An id made for another rp id, made by another master secret
//! or changed in any byte fails the tag check and counts as unknown.
//!
//! One sign count is shared by all credentials, as on many cards. With a
//! state directory it is written to disk (temporary file, fsync, rename)
//! before any response that carries it, so it only increases, also across
//! restarts.

use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use p256::ecdsa::signature::Signer;
use p256::ecdsa::{DerSignature, SigningKey};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::ctap::auth_data::{self, AttestedCredential, AuthenticatorData, Flags};
use crate::ctap::cbor::{self, ParseError};
use crate::ctap::cose::{CoseKey, ALG_ES256};
use crate::ctap::get_assertion::{
    self, GetAssertionRequest, GetAssertionResponse, ReceivedGetAssertion,
};
use crate::ctap::get_info::{self, GetInfo};
use crate::ctap::make_credential::{
    self, AttestationStatement, MakeCredentialRequest, MakeCredentialResponse,
    ReceivedMakeCredential,
};
use crate::ctap::sim::{Ctap2Handler, PresenceOutcome, Step};
use crate::ctap::status::CtapStatus;

/// The authenticatorGetNextAssertion command byte. The card stores no
/// credentials, so there is never a next assertion.
const GET_NEXT_ASSERTION: u8 = 0x08;

/// File in the state directory that contains the 32-byte master secret.
pub const MASTER_SECRET_FILE: &str = "master-secret";
/// File in the state directory that contains the sign count in decimal.
pub const SIGN_COUNT_FILE: &str = "sign-count";

const CREDENTIAL_ID_VERSION: u8 = 0x01;
const NONCE_LEN: usize = 16;
const TAG_LEN: usize = 32;
/// Length in bytes of the credential ids this simulator makes.
pub const CREDENTIAL_ID_LEN: usize = 1 + NONCE_LEN + TAG_LEN;

/// Domain separation for the credential id tag.
const ID_LABEL: &[u8; 26] = b"cardgate-sim credential id";
/// Domain separation for the credential private key.
const KEY_LABEL: &[u8; 27] = b"cardgate-sim credential key";

/// How many nonces makeCredential tries before giving up. A nonce fails
/// only when its HMAC output is not a valid P-256 scalar, which happens
/// with a probability of about 2^-32, because the P-256 group order is
/// about 2^256 - 2^224.
const MAX_KEY_ATTEMPTS: usize = 4;

/// The CTAP2 side of a simulated ChromeCard.
pub struct SimAuthenticator {
    master: [u8; 32],
    sign_count: u32,
    /// The directory that keeps the master secret and sign count, or `None`
    /// to keep them in memory only.
    state_dir: Option<PathBuf>,
    info: GetInfo,
}

/// A request that passed its checks and waits for the person at the card.
#[derive(Debug)]
pub struct PendingRequest(Pending);

#[derive(Debug)]
enum Pending {
    MakeCredential(MakeCredentialRequest),
    /// An excludeList entry is one of this card's credentials for the rp.
    Excluded,
    GetAssertion {
        request: GetAssertionRequest,
        nonce: [u8; NONCE_LEN],
        credential_id: Vec<u8>,
    },
}

impl fmt::Debug for SimAuthenticator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SimAuthenticator")
            .field("sign_count", &self.sign_count)
            .field("state_dir", &self.state_dir)
            .finish_non_exhaustive()
    }
}

impl SimAuthenticator {
    /// Opens a simulated card. With `None` it has a fresh random master
    /// secret and a sign count of 0 in memory. With a directory it creates
    /// the directory if missing (mode 0700) and loads the master secret and
    /// sign count from it, creating a random master secret (mode 0600) on
    /// first use.
    pub fn open(state_dir: Option<&Path>) -> io::Result<SimAuthenticator> {
        let (master, sign_count) = match state_dir {
            None => {
                let mut master = [0u8; 32];
                rand::fill(&mut master[..]);
                (master, 0)
            }
            Some(dir) => {
                fs::DirBuilder::new()
                    .recursive(true)
                    .mode(0o700)
                    .create(dir)?;
                (load_or_create_master(dir)?, load_sign_count(dir)?)
            }
        };

        Ok(SimAuthenticator {
            master,
            sign_count,
            state_dir: state_dir.map(Path::to_path_buf),
            info: GetInfo::chromecard(),
        })
    }

    /// Returns the sign count of the last makeCredential or getAssertion
    /// response.
    pub fn sign_count(&self) -> u32 {
        self.sign_count
    }

    fn begin_make_credential(&self, params: &[u8]) -> Result<Step<PendingRequest>, CtapStatus> {
        let received =
            ReceivedMakeCredential::parse(params).map_err(|e| request_error(params, &e))?;

        // The card has no PIN/UV auth protocol. It is not known what the
        // real card returns here; the simulator rejects both keys.
        if received.pin_uv_auth_param.is_some() || received.pin_uv_auth_protocol.is_some() {
            return Err(CtapStatus::UnsupportedOption);
        }
        if !received.algorithms.contains(&ALG_ES256) {
            return Err(CtapStatus::UnsupportedAlgorithm);
        }

        // CTAP 2.0: a known but unsupported option is UNSUPPORTED_OPTION
        // (rk, because the card stores no credentials), and a known option
        // that is not valid for the command is INVALID_OPTION (up, which
        // makeCredential does not take). Unknown options are ignored.
        if received.options.get("rk") == Some(&true) {
            return Err(CtapStatus::UnsupportedOption);
        }
        if received.options.contains_key("up") {
            return Err(CtapStatus::InvalidOption);
        }

        let request = received.request;
        let rp_id_hash = auth_data::rp_id_hash(&request.rp_id);
        let excluded = request
            .exclude_list
            .iter()
            .any(|id| self.open_credential_id(id, &rp_id_hash).is_some());
        if excluded {
            // The person confirms before the card reveals the match.
            return Ok(Step::NeedsPresence(PendingRequest(Pending::Excluded)));
        }
        Ok(Step::NeedsPresence(PendingRequest(
            Pending::MakeCredential(request),
        )))
    }

    fn begin_get_assertion(&mut self, params: &[u8]) -> Result<Step<PendingRequest>, CtapStatus> {
        let received =
            ReceivedGetAssertion::parse(params).map_err(|e| request_error(params, &e))?;

        if received.pin_uv_auth_param.is_some() || received.pin_uv_auth_protocol.is_some() {
            return Err(CtapStatus::UnsupportedOption);
        }
        // CTAP 2.0: rk is known but not valid for getAssertion.
        if received.options.contains_key("rk") {
            return Err(CtapStatus::InvalidOption);
        }
        let user_presence = received.options.get("up") != Some(&false);

        // The card stores no credentials, so only the allowList can name one.
        // CTAP 2.0 cards look the credential up before asking for presence.
        let request = received.request;
        let rp_id_hash = auth_data::rp_id_hash(&request.rp_id);
        let found = request.allow_list.iter().find_map(|id| {
            self.open_credential_id(id, &rp_id_hash)
                .map(|nonce| (nonce, id.clone()))
        });
        let Some((nonce, credential_id)) = found else {
            return Err(CtapStatus::NoCredentials);
        };

        // With up=false and no uv the card signs without asking anyone.
        if !user_presence && !request.uv {
            let response = self.sign_assertion(&request, &nonce, credential_id, false)?;
            return Ok(Step::Done(response));
        }
        Ok(Step::NeedsPresence(PendingRequest(Pending::GetAssertion {
            request,
            nonce,
            credential_id,
        })))
    }

    fn make_credential(&mut self, request: &MakeCredentialRequest) -> Result<Vec<u8>, CtapStatus> {
        let rp_id_hash = auth_data::rp_id_hash(&request.rp_id);

        let (nonce, signing_key) = (0..MAX_KEY_ATTEMPTS)
            .find_map(|_| {
                let mut nonce = [0u8; NONCE_LEN];
                rand::fill(&mut nonce[..]);
                self.derive_key(&nonce, &rp_id_hash).map(|key| (nonce, key))
            })
            .ok_or(CtapStatus::Other)?;
        let credential = AttestedCredential {
            aaguid: self.info.aaguid,
            credential_id: self.credential_id(&nonce, &rp_id_hash),
            public_key: CoseKey::from_verifying_key(signing_key.verifying_key()),
        };

        let sign_count = self.advance_sign_count()?;
        let mut flags = Flags::UP | Flags::AT;
        if request.uv {
            flags |= Flags::UV;
        }
        let raw = auth_data::encode(&rp_id_hash, Flags(flags), sign_count, Some(&credential));

        // Packed self attestation: the credential key signs
        // authData || clientDataHash.
        let signature: DerSignature =
            signing_key.sign(&[raw.as_slice(), &request.client_data_hash].concat());
        let response = MakeCredentialResponse {
            fmt: "packed".to_string(),
            auth_data: AuthenticatorData {
                raw,
                rp_id_hash,
                flags: Flags(flags),
                sign_count,
                attested: Some(credential),
                extensions: None,
            },
            att_stmt: AttestationStatement::Packed {
                alg: ALG_ES256,
                sig: signature.as_bytes().to_vec(),
                x5c: Vec::new(),
            },
        };
        Ok(success(response.encode()))
    }

    fn sign_assertion(
        &mut self,
        request: &GetAssertionRequest,
        nonce: &[u8; NONCE_LEN],
        credential_id: Vec<u8>,
        user_present: bool,
    ) -> Result<Vec<u8>, CtapStatus> {
        let rp_id_hash = auth_data::rp_id_hash(&request.rp_id);
        let signing_key = self
            .derive_key(nonce, &rp_id_hash)
            .ok_or(CtapStatus::NoCredentials)?;

        let sign_count = self.advance_sign_count()?;
        let mut flags = 0;
        if user_present {
            flags |= Flags::UP;
        }
        if request.uv {
            flags |= Flags::UV;
        }
        let raw = auth_data::encode(&rp_id_hash, Flags(flags), sign_count, None);

        let signature: DerSignature =
            signing_key.sign(&[raw.as_slice(), &request.client_data_hash].concat());
        let response = GetAssertionResponse {
            credential_id: Some(credential_id),
            auth_data: AuthenticatorData {
                raw,
                rp_id_hash,
                flags: Flags(flags),
                sign_count,
                attested: None,
                extensions: None,
            },
            signature: signature.as_bytes().to_vec(),
            user_id: None,
            number_of_credentials: None,
        };
        Ok(success(response.encode()))
    }

    /// Increments the sign count and, with a state directory, writes it to
    /// disk before it is used.
    fn advance_sign_count(&mut self) -> Result<u32, CtapStatus> {
        let next = self.sign_count.checked_add(1).ok_or_else(|| {
            tracing::warn!("simulated card sign count is exhausted");
            CtapStatus::Other
        })?;
        if let Some(dir) = &self.state_dir {
            store_sign_count(dir, next).map_err(|error| {
                tracing::warn!(dir = %dir.display(), %error, "cannot store the simulated card's sign count");
                CtapStatus::Other
            })?;
        }
        self.sign_count = next;
        Ok(next)
    }

    fn credential_id(&self, nonce: &[u8; NONCE_LEN], rp_id_hash: &[u8; 32]) -> Vec<u8> {
        let tag = hmac_sha256(&self.master, &[ID_LABEL, nonce, rp_id_hash]);
        [&[CREDENTIAL_ID_VERSION][..], nonce, &tag].concat()
    }

    /// Checks that `id` is one of this card's credential ids for the rp and
    /// returns its nonce.
    fn open_credential_id(&self, id: &[u8], rp_id_hash: &[u8; 32]) -> Option<[u8; NONCE_LEN]> {
        let (&version, rest) = id.split_first()?;
        if version != CREDENTIAL_ID_VERSION || rest.len() != NONCE_LEN + TAG_LEN {
            return None;
        }
        let (nonce, tag) = rest.split_at_checked(NONCE_LEN)?;
        let nonce: [u8; NONCE_LEN] = nonce.try_into().ok()?;
        let expected = hmac_sha256(&self.master, &[ID_LABEL, &nonce, rp_id_hash]);
        bool::from(expected.ct_eq(tag)).then_some(nonce)
    }

    fn derive_key(&self, nonce: &[u8; NONCE_LEN], rp_id_hash: &[u8; 32]) -> Option<SigningKey> {
        let scalar = hmac_sha256(&self.master, &[KEY_LABEL, nonce, rp_id_hash]);
        SigningKey::from_slice(&scalar).ok()
    }
}

impl Ctap2Handler for SimAuthenticator {
    type Pending = PendingRequest;

    fn begin(&mut self, request: &[u8]) -> Step<PendingRequest> {
        let Some((&command, params)) = request.split_first() else {
            return Step::Done(status_only(CtapStatus::InvalidLength));
        };
        let max_len = self.info.max_msg_size.unwrap_or(u64::MAX);
        if u64::try_from(request.len()).unwrap_or(u64::MAX) > max_len {
            // NOTE: the ChromeCard's response to an oversized request is not
            // known, and CTAP 2.0 has no dedicated status, so this uses
            // INVALID_LENGTH.
            return Step::Done(status_only(CtapStatus::InvalidLength));
        }

        let result = match command {
            get_info::COMMAND => Ok(Step::Done(success(self.info.encode()))),
            make_credential::COMMAND => self.begin_make_credential(params),
            get_assertion::COMMAND => self.begin_get_assertion(params),
            GET_NEXT_ASSERTION => Err(CtapStatus::NotAllowed),
            _ => Err(CtapStatus::InvalidCommand),
        };
        match result {
            Ok(step) => step,
            Err(status) => {
                tracing::debug!(
                    command,
                    status = status.code(),
                    "simulated card rejected the request"
                );
                Step::Done(status_only(status))
            }
        }
    }

    fn complete(&mut self, pending: PendingRequest, outcome: PresenceOutcome) -> Vec<u8> {
        let result = match outcome {
            PresenceOutcome::Denied => Err(CtapStatus::OperationDenied),
            PresenceOutcome::TimedOut => Err(CtapStatus::UserActionTimeout),
            PresenceOutcome::Cancelled => Err(CtapStatus::KeepaliveCancel),
            PresenceOutcome::Approved => match pending.0 {
                Pending::MakeCredential(request) => self.make_credential(&request),
                Pending::Excluded => Err(CtapStatus::CredentialExcluded),
                Pending::GetAssertion {
                    request,
                    nonce,
                    credential_id,
                } => self.sign_assertion(&request, &nonce, credential_id, true),
            },
        };
        result.unwrap_or_else(status_only)
    }
}

/// Maps a request that failed to parse to its CTAP2 status.
fn request_error(params: &[u8], error: &ParseError) -> CtapStatus {
    if cbor::decode("request", params).is_err() {
        CtapStatus::InvalidCbor
    } else if error.is_missing() {
        CtapStatus::MissingParameter
    } else {
        // NOTE: values of the right type but wrong size, such as a short
        // clientDataHash, also land here.
        CtapStatus::CborUnexpectedType
    }
}

fn success(body: Vec<u8>) -> Vec<u8> {
    let mut response = Vec::with_capacity(1 + body.len());
    response.push(CtapStatus::Success.code());
    response.extend_from_slice(&body);
    response
}

fn status_only(status: CtapStatus) -> Vec<u8> {
    vec![status.code()]
}

/// HMAC-SHA256 (RFC 2104) with a 32-byte key over the concatenation of
/// `parts`.
fn hmac_sha256(key: &[u8; 32], parts: &[&[u8]]) -> [u8; 32] {
    const BLOCK_LEN: usize = 64;
    let mut inner_pad = [0x36u8; BLOCK_LEN];
    let mut outer_pad = [0x5cu8; BLOCK_LEN];
    for ((inner, outer), byte) in inner_pad.iter_mut().zip(outer_pad.iter_mut()).zip(key) {
        *inner ^= byte;
        *outer ^= byte;
    }

    let mut inner = Sha256::new();
    inner.update(inner_pad);
    for part in parts {
        inner.update(part);
    }
    let mut outer = Sha256::new();
    outer.update(outer_pad);
    outer.update(inner.finalize());
    outer.finalize().into()
}

fn load_or_create_master(dir: &Path) -> io::Result<[u8; 32]> {
    let path = dir.join(MASTER_SECRET_FILE);
    match File::open(&path) {
        Ok(mut file) => {
            let mut contents = Vec::new();
            file.read_to_end(&mut contents)?;
            contents.try_into().map_err(|contents: Vec<u8>| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!(
                        "{} must hold exactly 32 bytes, found {}; delete it to start a new simulated card",
                        path.display(),
                        contents.len()
                    ),
                )
            })
        }
        Err(error) if error.kind() == io::ErrorKind::NotFound => {
            let mut master = [0u8; 32];
            rand::fill(&mut master[..]);
            write_atomically(dir, MASTER_SECRET_FILE, &master)?;
            Ok(master)
        }
        Err(error) => Err(error),
    }
}

fn load_sign_count(dir: &Path) -> io::Result<u32> {
    let path = dir.join(SIGN_COUNT_FILE);
    match fs::read_to_string(&path) {
        Ok(text) => text.trim().parse::<u32>().map_err(|error| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{} must hold a decimal sign count: {error}", path.display()),
            )
        }),
        Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(0),
        Err(error) => Err(error),
    }
}

fn store_sign_count(dir: &Path, count: u32) -> io::Result<()> {
    write_atomically(dir, SIGN_COUNT_FILE, count.to_string().as_bytes())
}

/// Replaces `dir/name` with `contents` so that a crash leaves either the
/// old or the new file: write a temporary file (mode 0600), fsync it,
/// rename it over the old one and fsync the directory.
fn write_atomically(dir: &Path, name: &str, contents: &[u8]) -> io::Result<()> {
    let temporary = dir.join(format!("{name}.tmp"));
    let mut file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&temporary)?;
    file.write_all(contents)?;
    file.sync_all()?;
    drop(file);

    fs::rename(&temporary, dir.join(name))?;
    File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;
    use crate::ctap::attestation::{self, AttestationType};
    use crate::ctap::cbor::Value;
    use crate::ctap::verify::verify_assertion;

    const RP_ID: &str = "cardgate.example";

    fn make_credential_request(uv: bool) -> MakeCredentialRequest {
        MakeCredentialRequest {
            client_data_hash: [0x31; 32],
            rp_id: RP_ID.to_string(),
            rp_name: "cardgate".to_string(),
            user_id: vec![7; 16],
            user_name: "alice".to_string(),
            user_display_name: "Alice".to_string(),
            exclude_list: Vec::new(),
            uv,
        }
    }

    fn assertion_request(allow_list: Vec<Vec<u8>>, uv: bool) -> GetAssertionRequest {
        GetAssertionRequest {
            rp_id: RP_ID.to_string(),
            client_data_hash: [0x42; 32],
            allow_list,
            uv,
        }
    }

    /// Runs a request through begin and, when it waits, complete with
    /// `outcome`.
    fn run(card: &mut SimAuthenticator, request: &[u8], outcome: PresenceOutcome) -> Vec<u8> {
        match card.begin(request) {
            Step::Done(response) => response,
            Step::NeedsPresence(pending) => card.complete(pending, outcome),
        }
    }

    fn approve(card: &mut SimAuthenticator, request: &[u8]) -> Vec<u8> {
        run(card, request, PresenceOutcome::Approved)
    }

    fn register(card: &mut SimAuthenticator, uv: bool) -> MakeCredentialResponse {
        let response = approve(card, &make_credential_request(uv).encode());
        assert_eq!(response[0], 0x00, "makeCredential status");
        MakeCredentialResponse::parse(&response[1..]).unwrap()
    }

    fn credential_id(response: &MakeCredentialResponse) -> Vec<u8> {
        response
            .auth_data
            .attested
            .as_ref()
            .unwrap()
            .credential_id
            .clone()
    }

    /// Builds a makeCredential request with extra entries that cardgate
    /// never sends.
    fn make_credential_with(extra: Vec<(Value, Value)>) -> Vec<u8> {
        let request = make_credential_request(false).encode();
        let item = cbor::decode("test", &request[1..]).unwrap();
        let ciborium::Value::Map(entries) = item else {
            panic!("request is a map");
        };
        let mut map: Vec<(Value, Value)> = entries
            .into_iter()
            .filter_map(|(key, value)| {
                let key = i64::try_from(i128::from(key.as_integer()?)).ok()?;
                Some((Value::Int(key), to_value(&value)))
            })
            .collect();
        for (key, value) in extra {
            map.retain(|(existing, _)| existing != &key);
            map.push((key, value));
        }
        let mut out = vec![make_credential::COMMAND];
        cbor::encode_into(&Value::Map(map), &mut out);
        out
    }

    fn to_value(item: &ciborium::Value) -> Value {
        match item {
            ciborium::Value::Integer(n) => Value::Int(i64::try_from(i128::from(*n)).unwrap()),
            ciborium::Value::Bytes(b) => Value::Bytes(b.clone()),
            ciborium::Value::Text(t) => Value::Text(t.clone()),
            ciborium::Value::Bool(b) => Value::Bool(*b),
            ciborium::Value::Array(items) => Value::Array(items.iter().map(to_value).collect()),
            ciborium::Value::Map(entries) => Value::Map(
                entries
                    .iter()
                    .map(|(k, v)| (to_value(k), to_value(v)))
                    .collect(),
            ),
            other => panic!("unexpected {other:?}"),
        }
    }

    fn options(entries: &[(&str, bool)]) -> Value {
        Value::Map(
            entries
                .iter()
                .map(|(name, value)| (Value::text(*name), Value::Bool(*value)))
                .collect(),
        )
    }

    #[test]
    fn hmac_matches_rfc4231_case_1() {
        // RFC 4231 test case 1 uses a 20-byte key of 0x0b. HMAC pads keys
        // with zeros to the block size, so the 32-byte key below is the same
        // key.
        let mut key = [0u8; 32];
        key[..20].fill(0x0b);
        assert_eq!(
            hex::encode(hmac_sha256(&key, &[b"Hi ", b"There"])),
            "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7"
        );
    }

    #[test]
    fn get_info_returns_chromecard_info() {
        let mut card = SimAuthenticator::open(None).unwrap();
        let response = approve(&mut card, &[get_info::COMMAND]);
        assert_eq!(response[0], 0x00);
        assert_eq!(
            GetInfo::parse(&response[1..]).unwrap(),
            GetInfo::chromecard()
        );
    }

    #[test]
    fn round_trip_registers_and_signs() {
        let mut card = SimAuthenticator::open(None).unwrap();
        let request = make_credential_request(true);

        let registration = register(&mut card, true);
        assert_eq!(registration.fmt, "packed");
        assert_eq!(
            attestation::verify(&registration, &request.client_data_hash),
            Ok(AttestationType::SelfAttestation)
        );
        let flags = registration.auth_data.flags;
        assert!(flags.up());
        assert!(flags.uv());
        assert!(flags.at());
        assert_eq!(
            registration.auth_data.rp_id_hash,
            auth_data::rp_id_hash(RP_ID)
        );
        let credential = registration.auth_data.attested.clone().unwrap();
        assert_eq!(credential.aaguid, get_info::CHROMECARD_AAGUID);
        assert_eq!(credential.credential_id.len(), CREDENTIAL_ID_LEN);
        assert_eq!(registration.auth_data.sign_count, 1);

        let assertion_request = assertion_request(vec![credential.credential_id.clone()], true);
        let response = approve(&mut card, &assertion_request.encode());
        assert_eq!(response[0], 0x00, "getAssertion status");
        let assertion = GetAssertionResponse::parse(&response[1..]).unwrap();
        assert_eq!(assertion.credential_id, Some(credential.credential_id));
        assert!(assertion.auth_data.flags.up());
        assert!(assertion.auth_data.flags.uv());
        assert!(!assertion.auth_data.flags.at());
        assert_eq!(assertion.auth_data.sign_count, 2);
        assert_eq!(card.sign_count(), 2);
        verify_assertion(
            &credential.public_key,
            &assertion.auth_data.raw,
            &assertion_request.client_data_hash,
            &assertion.signature,
        )
        .unwrap();
    }

    #[test]
    fn uv_flag_only_when_requested() {
        let mut card = SimAuthenticator::open(None).unwrap();
        let registration = register(&mut card, false);
        assert!(!registration.auth_data.flags.uv());

        let request = assertion_request(vec![credential_id(&registration)], false);
        let response = approve(&mut card, &request.encode());
        let assertion = GetAssertionResponse::parse(&response[1..]).unwrap();
        assert!(assertion.auth_data.flags.up());
        assert!(!assertion.auth_data.flags.uv());
    }

    #[test]
    fn sign_count_persists_across_open() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("card");

        let mut first = SimAuthenticator::open(Some(&state)).unwrap();
        let registration = register(&mut first, false);
        assert_eq!(first.sign_count(), 1);
        drop(first);

        let mut second = SimAuthenticator::open(Some(&state)).unwrap();
        assert_eq!(second.sign_count(), 1);
        let request = assertion_request(vec![credential_id(&registration)], false);
        let response = approve(&mut second, &request.encode());
        assert_eq!(response[0], 0x00, "credential of the same card accepted");
        let assertion = GetAssertionResponse::parse(&response[1..]).unwrap();
        assert_eq!(assertion.auth_data.sign_count, 2);

        let stored = fs::read_to_string(state.join(SIGN_COUNT_FILE)).unwrap();
        assert_eq!(stored, "2");
        assert!(!state.join(format!("{SIGN_COUNT_FILE}.tmp")).exists());
    }

    #[test]
    fn state_files_are_private() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("card");
        let mut card = SimAuthenticator::open(Some(&state)).unwrap();
        register(&mut card, false);

        let mode = |path: PathBuf| fs::metadata(path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(state.join(MASTER_SECRET_FILE)), 0o600);
        assert_eq!(mode(state.join(SIGN_COUNT_FILE)), 0o600);
        assert_eq!(mode(state.clone()), 0o700);
        assert_eq!(fs::read(state.join(MASTER_SECRET_FILE)).unwrap().len(), 32);
    }

    #[test]
    fn open_rejects_short_master_secret() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join(MASTER_SECRET_FILE), [1u8; 31]).unwrap();
        let error = SimAuthenticator::open(Some(dir.path())).unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::InvalidData);
    }

    #[test]
    fn tampered_credential_id_is_unknown() {
        let mut card = SimAuthenticator::open(None).unwrap();
        let id = credential_id(&register(&mut card, false));

        for position in [0, 1, NONCE_LEN, CREDENTIAL_ID_LEN - 1] {
            let mut tampered = id.clone();
            tampered[position] ^= 0x01;
            let request = assertion_request(vec![tampered], false);
            assert_eq!(
                approve(&mut card, &request.encode()),
                [0x2e],
                "byte {position} changed"
            );
        }
        let truncated = assertion_request(vec![id[..CREDENTIAL_ID_LEN - 1].to_vec()], false);
        assert_eq!(approve(&mut card, &truncated.encode()), [0x2e]);
    }

    #[test]
    fn credential_for_other_rp_is_unknown() {
        let mut card = SimAuthenticator::open(None).unwrap();
        let id = credential_id(&register(&mut card, false));
        let mut request = assertion_request(vec![id], false);
        request.rp_id = "other.example".to_string();
        assert_eq!(approve(&mut card, &request.encode()), [0x2e]);
    }

    #[test]
    fn credential_of_other_card_is_unknown() {
        let mut card = SimAuthenticator::open(None).unwrap();
        let mut other_card = SimAuthenticator::open(None).unwrap();
        let id = credential_id(&register(&mut other_card, false));
        let request = assertion_request(vec![id], false);
        assert_eq!(approve(&mut card, &request.encode()), [0x2e]);
    }

    #[test]
    fn first_own_credential_in_allow_list_signs() {
        let mut card = SimAuthenticator::open(None).unwrap();
        let id = credential_id(&register(&mut card, false));
        let request = assertion_request(vec![vec![9; 20], id.clone()], false);
        let response = approve(&mut card, &request.encode());
        let assertion = GetAssertionResponse::parse(&response[1..]).unwrap();
        assert_eq!(assertion.credential_id, Some(id));
    }

    #[test]
    fn empty_allow_list_has_no_credentials() {
        let mut card = SimAuthenticator::open(None).unwrap();
        let request = assertion_request(Vec::new(), false);
        assert_eq!(approve(&mut card, &request.encode()), [0x2e]);
    }

    #[test]
    fn resident_key_option_is_unsupported() {
        let mut card = SimAuthenticator::open(None).unwrap();
        let request = make_credential_with(vec![(Value::Int(7), options(&[("rk", true)]))]);
        assert_eq!(approve(&mut card, &request), [0x2b]);
    }

    #[test]
    fn resident_key_false_is_accepted() {
        let mut card = SimAuthenticator::open(None).unwrap();
        let request = make_credential_with(vec![(Value::Int(7), options(&[("rk", false)]))]);
        assert_eq!(approve(&mut card, &request)[0], 0x00);
    }

    #[test]
    fn up_option_in_make_credential_is_invalid() {
        let mut card = SimAuthenticator::open(None).unwrap();
        for value in [true, false] {
            let request = make_credential_with(vec![(Value::Int(7), options(&[("up", value)]))]);
            assert_eq!(approve(&mut card, &request), [0x2c], "up={value}");
        }
    }

    #[test]
    fn pin_uv_auth_keys_are_unsupported() {
        let mut card = SimAuthenticator::open(None).unwrap();
        let with_param = make_credential_with(vec![
            (Value::Int(8), Value::bytes(vec![0; 16])),
            (Value::Int(9), Value::Int(1)),
        ]);
        assert_eq!(approve(&mut card, &with_param), [0x2b]);
        let with_protocol = make_credential_with(vec![(Value::Int(9), Value::Int(1))]);
        assert_eq!(approve(&mut card, &with_protocol), [0x2b]);
    }

    #[test]
    fn algorithm_without_es256_is_unsupported() {
        let mut card = SimAuthenticator::open(None).unwrap();
        let rs256 = Value::Map(vec![
            (Value::text("alg"), Value::Int(-257)),
            (Value::text("type"), Value::text("public-key")),
        ]);
        let request = make_credential_with(vec![(Value::Int(4), Value::Array(vec![rs256]))]);
        assert_eq!(approve(&mut card, &request), [0x26]);
    }

    #[test]
    fn excluded_credential_is_reported_after_presence() {
        let mut card = SimAuthenticator::open(None).unwrap();
        let id = credential_id(&register(&mut card, false));
        let mut request = make_credential_request(false);
        request.exclude_list = vec![id];

        let Step::NeedsPresence(pending) = card.begin(&request.encode()) else {
            panic!("excluded credential must wait for presence");
        };
        assert_eq!(card.complete(pending, PresenceOutcome::Approved), [0x19]);
        assert_eq!(card.sign_count(), 1, "no new credential was made");
    }

    #[test]
    fn foreign_excluded_credential_is_ignored() {
        let mut card = SimAuthenticator::open(None).unwrap();
        let mut request = make_credential_request(false);
        request.exclude_list = vec![vec![1; CREDENTIAL_ID_LEN]];
        assert_eq!(approve(&mut card, &request.encode())[0], 0x00);
    }

    #[test]
    fn presence_outcomes_map_to_statuses() {
        let cases = [
            (PresenceOutcome::Denied, 0x27),
            (PresenceOutcome::TimedOut, 0x2f),
            (PresenceOutcome::Cancelled, 0x2d),
        ];
        let mut card = SimAuthenticator::open(None).unwrap();
        let id = credential_id(&register(&mut card, false));
        for (outcome, status) in cases {
            let make = make_credential_request(false).encode();
            assert_eq!(run(&mut card, &make, outcome), [status], "{outcome:?}");
            let get = assertion_request(vec![id.clone()], false).encode();
            assert_eq!(run(&mut card, &get, outcome), [status], "{outcome:?}");
        }
        assert_eq!(card.sign_count(), 1, "refused requests do not count");
    }

    #[test]
    fn silent_assertion_skips_presence() {
        let mut card = SimAuthenticator::open(None).unwrap();
        let id = credential_id(&register(&mut card, false));
        let mut request = assertion_request(vec![id], false).encode();
        // Append options {"up": false} as key 5 to the 3-entry map.
        request[1] = 0xa4;
        request.extend_from_slice(&[0x05, 0xa1, 0x62, b'u', b'p', 0xf4]);

        let Step::Done(response) = card.begin(&request) else {
            panic!("up=false must not wait for presence");
        };
        let assertion = GetAssertionResponse::parse(&response[1..]).unwrap();
        assert_eq!(assertion.auth_data.flags, Flags(0));
    }

    #[test]
    fn malformed_requests_get_ctap_statuses() {
        let mut card = SimAuthenticator::open(None).unwrap();
        let cases: [(&[u8], u8, &str); 7] = [
            (&[], 0x03, "empty message"),
            (&[0x40], 0x01, "unknown command"),
            (&[GET_NEXT_ASSERTION], 0x30, "getNextAssertion"),
            (&[0x01, 0xa1, 0x01], 0x12, "truncated CBOR"),
            (&[0x01, 0xa0, 0x00], 0x12, "bytes after the map"),
            (&[0x01, 0xa0], 0x14, "missing clientDataHash"),
            (&[0x02, 0xa2, 0x01, 0x01, 0x02, 0x40], 0x11, "rpId not text"),
        ];
        for (request, status, case) in cases {
            assert_eq!(approve(&mut card, request), [status], "{case}");
        }
    }

    #[test]
    fn oversized_request_is_rejected() {
        let mut card = SimAuthenticator::open(None).unwrap();
        let mut request = make_credential_request(false);
        request.user_display_name = "x".repeat(1100);
        assert_eq!(approve(&mut card, &request.encode()), [0x03]);
    }
}
