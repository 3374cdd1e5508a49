//! Enrollment and login as relying-party procedures, step by step.
//!
//! The proxy plays both WebAuthn client and relying party: it builds the
//! clientDataJSON itself (origin and rp_id from config, a fresh challenge
//! from the OS RNG), sends its hash to the card, and verifies what the card
//! returns. The challenge exists only inside one call, so an assertion can
//! never be replayed into another login.

use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Instant;

use actix::Addr;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::actors::card::{CardActor, CardError, CardOperation, CardReply, Run};
use crate::actors::enrollments::{
    Credential, EnrollmentError, EnrollmentsActor, Lookup, RecordSignCount, Register, Release,
    Reserve, User,
};
use crate::ctap::attestation::{self, AttestationType};
use crate::ctap::auth_data::AuthenticatorData;
use crate::ctap::cose::CoseKey;
use crate::ctap::get_assertion::GetAssertionRequest;
use crate::ctap::make_credential::MakeCredentialRequest;
use crate::ctap::verify::verify_assertion;
use crate::domain::Username;
use crate::error::ApiError;
use crate::metrics::{CardOperationKind, ProxyMetrics};
use crate::rng::os_random;

/// The relying party as configured; never taken from request headers.
#[derive(Debug, Clone)]
pub struct RelyingParty {
    pub id: String,
    pub id_hash: [u8; 32],
    pub name: String,
    /// The origin written into clientDataJSON, such as `https://proxy:8443`.
    pub origin: String,
    /// Ask the card for user verification and require the UV flag.
    pub user_verification: bool,
}

impl RelyingParty {
    pub fn new(id: String, name: String, origin: String, user_verification: bool) -> Self {
        let id_hash = Sha256::digest(id.as_bytes()).into();
        RelyingParty {
            id,
            id_hash,
            name,
            origin,
            user_verification,
        }
    }
}

/// The actors and settings a ceremony uses.
pub struct Ceremony<'a> {
    pub rp: &'a RelyingParty,
    pub card: &'a Addr<CardActor>,
    pub enrollments: &'a Addr<EnrollmentsActor>,
    pub metrics: &'a ProxyMetrics,
    /// Id for the card events of this ceremony.
    pub operation_id: u64,
    pub cancel: Arc<AtomicBool>,
}

/// WebAuthn's CollectedClientData, in the member order browsers use.
#[derive(Serialize)]
struct ClientData<'a> {
    #[serde(rename = "type")]
    kind: &'a str,
    challenge: String,
    origin: &'a str,
    #[serde(rename = "crossOrigin")]
    cross_origin: bool,
}

/// Builds clientDataJSON with a fresh 32-byte challenge; returns its SHA-256.
fn client_data_hash(kind: &str, origin: &str) -> Result<[u8; 32], ApiError> {
    let challenge = os_random::<32>().map_err(|e| ApiError::Internal(e.to_string()))?;
    let json = serde_json::to_vec(&ClientData {
        kind,
        challenge: URL_SAFE_NO_PAD.encode(challenge),
        origin,
        cross_origin: false,
    })
    .map_err(|e| ApiError::Internal(e.to_string()))?;
    Ok(Sha256::digest(&json).into())
}

pub fn store_error(e: EnrollmentError) -> ApiError {
    match e {
        EnrollmentError::AlreadyEnrolled(_) | EnrollmentError::InProgress(_) => {
            ApiError::Conflict(e.to_string())
        }
        EnrollmentError::NotEnrolled(_) => ApiError::NotFound(e.to_string()),
        EnrollmentError::CounterNotIncreased { .. } => ApiError::Forbidden(e.to_string()),
        EnrollmentError::UnknownCredential(_)
        | EnrollmentError::Store(_)
        | EnrollmentError::Io(_)
        | EnrollmentError::Closed(_) => ApiError::Storage(e.to_string()),
    }
}

fn mailbox(e: actix::MailboxError) -> ApiError {
    ApiError::Unavailable(format!("an internal actor did not respond: {e}"))
}

/// The outcome label of a failed card operation in the metrics.
fn card_outcome(error: &CardError) -> &'static str {
    match error {
        CardError::NotConnected(_) => "not_connected",
        CardError::QueueFull { .. } => "queue_full",
        CardError::AlreadyWaiting(_) => "already_waiting",
        CardError::Denied => "denied",
        CardError::Timeout(_) => "timeout",
        CardError::Cancelled => "cancelled",
        CardError::NoCredentials => "no_credentials",
        CardError::Status(_) => "status",
        CardError::Protocol(_) => "protocol",
        CardError::Lost(_) => "lost",
        CardError::ShuttingDown => "shutting_down",
    }
}

impl Ceremony<'_> {
    /// Sends one operation to the card on behalf of `username` and
    /// records its outcome and duration.
    async fn run_on_card(
        &self,
        username: &Username,
        operation: CardOperation,
        wait_for_card: bool,
    ) -> Result<CardReply, ApiError> {
        let kind = match operation {
            CardOperation::MakeCredential(_) => CardOperationKind::MakeCredential,
            CardOperation::GetAssertion(_) => CardOperationKind::GetAssertion,
        };
        let run = Run {
            id: self.operation_id,
            operation,
            owner: Some(username.as_str().to_string()),
            cancel: self.cancel.clone(),
            wait_for_card,
        };
        let started = Instant::now();
        let result = self.card.send(run).await;
        let outcome = match &result {
            Ok(Ok(_)) => "ok",
            Ok(Err(error)) => card_outcome(error),
            Err(_) => "internal",
        };
        self.metrics.card.observe(kind, outcome, started.elapsed());
        Ok(result.map_err(mailbox)??)
    }

    /// Checks what both ceremonies require of authenticatorData: our
    /// rpIdHash, the UP flag, and the UV flag when it is configured.
    fn check_auth_data(&self, auth_data: &AuthenticatorData) -> Result<(), ApiError> {
        if auth_data.rp_id_hash != self.rp.id_hash {
            return Err(ApiError::CardFailed(format!(
                "the card signed for another relying party (rpIdHash {}, expected SHA-256 of {:?})",
                hex::encode(auth_data.rp_id_hash),
                self.rp.id
            )));
        }
        if !auth_data.flags.up() {
            return Err(ApiError::CardFailed(
                "the card did not report user presence (UP flag clear)".into(),
            ));
        }
        if self.rp.user_verification && !auth_data.flags.uv() {
            return Err(ApiError::CardFailed(
                "the card did not verify the user (UV flag clear) although webauthn.user_verification is on".into(),
            ));
        }
        Ok(())
    }

    /// Creates a credential on the card for a new user and stores it.
    pub async fn enroll(&self, username: Username, display_name: String) -> Result<User, ApiError> {
        // 1. Claim the name so that a second enrollment cannot reach the card.
        self.enrollments
            .send(Reserve {
                username: username.clone(),
            })
            .await
            .map_err(mailbox)?
            .map_err(store_error)?;

        let result = self.create_and_store(&username, display_name).await;
        if result.is_err() {
            self.enrollments.do_send(Release { username });
        }
        result
    }

    async fn create_and_store(
        &self,
        username: &Username,
        display_name: String,
    ) -> Result<User, ApiError> {
        // 2. Client data for webauthn.create with a fresh challenge.
        let client_data_hash = client_data_hash("webauthn.create", &self.rp.origin)?;

        // 3. makeCredential on the card. The user handle is random, so the
        //    card never learns the username from it.
        let user_id = os_random::<16>().map_err(|e| ApiError::Internal(e.to_string()))?;
        let request = MakeCredentialRequest {
            client_data_hash,
            rp_id: self.rp.id.clone(),
            rp_name: self.rp.name.clone(),
            user_id: user_id.to_vec(),
            user_name: username.as_str().to_string(),
            user_display_name: if display_name.is_empty() {
                username.as_str().to_string()
            } else {
                display_name.clone()
            },
            exclude_list: Vec::new(),
            uv: self.rp.user_verification,
        };
        let reply = self
            .run_on_card(username, CardOperation::MakeCredential(request), false)
            .await?;
        let CardReply::MakeCredential(response) = reply else {
            return Err(ApiError::Internal(
                "the card actor returned another reply to makeCredential".into(),
            ));
        };

        // 4. The attestation statement: packed (self or x5c), fido-u2f or none.
        let attestation = attestation::verify(&response, &client_data_hash)
            .map_err(|e| ApiError::CardFailed(format!("attestation rejected: {e}")))?;

        // 5. rpIdHash must be ours, UP must be set, and UV when configured.
        let auth_data = &response.auth_data;
        self.check_auth_data(auth_data)?;

        // 6. The new credential and its public key.
        let Some(attested) = &auth_data.attested else {
            return Err(ApiError::CardFailed(
                "the card returned no attested credential data".into(),
            ));
        };
        let credential = Credential {
            credential_id: attested.credential_id.clone(),
            username: username.as_str().to_string(),
            public_key_cose: attested.public_key.encode(),
            sign_count: auth_data.sign_count,
            aaguid: attested.aaguid,
            attestation: attestation_label(&response.fmt, &attestation),
            created_at: unix_now(),
            possibly_cloned: false,
        };

        // 7. Store user and credential in one transaction.
        self.enrollments
            .send(Register {
                username: username.clone(),
                display_name,
                credential,
            })
            .await
            .map_err(mailbox)?
            .map_err(store_error)
    }

    /// Asks the card for an assertion over a fresh challenge and verifies it.
    pub async fn login(&self, username: &Username) -> Result<(), ApiError> {
        // 1. The user and their credentials.
        let enrollment = self
            .enrollments
            .send(Lookup {
                username: username.clone(),
            })
            .await
            .map_err(mailbox)?
            .map_err(store_error)?
            .ok_or_else(|| {
                ApiError::NotFound(format!("user {username} is not enrolled; enroll first"))
            })?;
        if enrollment.credentials.is_empty() {
            return Err(ApiError::NotFound(format!(
                "user {username} has no credential; enroll again"
            )));
        }

        // 2. Client data for webauthn.get with a fresh challenge.
        let client_data_hash = client_data_hash("webauthn.get", &self.rp.origin)?;

        // 3. getAssertion restricted to this user's credentials.
        let request = GetAssertionRequest {
            rp_id: self.rp.id.clone(),
            client_data_hash,
            allow_list: enrollment
                .credentials
                .iter()
                .map(|c| c.credential_id.clone())
                .collect(),
            uv: self.rp.user_verification,
        };
        let reply = self
            .run_on_card(username, CardOperation::GetAssertion(request), true)
            .await?;
        let CardReply::GetAssertion(response) = reply else {
            return Err(ApiError::Internal(
                "the card actor returned another reply to getAssertion".into(),
            ));
        };

        // 4. The credential used must be one of this user's. A card may omit
        //    it when the allow list had exactly one entry.
        let credential = match (&response.credential_id, enrollment.credentials.as_slice()) {
            (Some(id), credentials) => credentials.iter().find(|c| &c.credential_id == id),
            (None, [only]) => Some(only),
            (None, _) => None,
        }
        .ok_or_else(|| {
            ApiError::CardFailed("the card returned a credential that is not this user's".into())
        })?;

        // 5. rpIdHash must be ours, UP must be set, and UV when configured.
        let auth_data = &response.auth_data;
        self.check_auth_data(auth_data)?;

        // 6. The signature over authenticatorData ‖ clientDataHash with the
        //    stored public key.
        let (key, _) = CoseKey::parse(&credential.public_key_cose).map_err(|e| {
            ApiError::Storage(format!(
                "stored public key of {username} is unreadable: {e}"
            ))
        })?;
        verify_assertion(&key, &auth_data.raw, &client_data_hash, &response.signature).map_err(
            |e| ApiError::Forbidden(format!("the card's signature did not verify: {e}")),
        )?;

        // 7. The signature counter must increase unless the card keeps none.
        self.enrollments
            .send(RecordSignCount {
                credential_id: credential.credential_id.clone(),
                reported: auth_data.sign_count,
            })
            .await
            .map_err(mailbox)?
            .map_err(store_error)?;
        Ok(())
    }
}

fn attestation_label(fmt: &str, kind: &AttestationType) -> String {
    match kind {
        AttestationType::None => "none".into(),
        AttestationType::SelfAttestation => format!("{fmt}-self"),
        AttestationType::Certificate { .. } => format!("{fmt}-x5c"),
    }
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}
