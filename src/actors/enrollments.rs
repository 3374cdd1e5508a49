//! The enrollments actor: users and their credentials' public keys in sled.
//!
//! Two trees: `users` (username → [`User`]) and `credentials` (credential
//! id → [`Credential`]). Every change to both runs in one sled transaction
//! and is flushed before the reply, so a crash leaves a user either fully
//! enrolled or absent. The actor runs on its own thread (a `SyncArbiter` of
//! one) because sled calls block.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use actix::prelude::*;
use serde::{Deserialize, Serialize};
use sled::transaction::{ConflictableTransactionError, TransactionError};
use sled::Transactional;

use crate::domain::Username;

/// A stored user.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct User {
    pub username: String,
    pub display_name: String,
    /// Seconds since the Unix epoch.
    pub created_at: u64,
    pub updated_at: u64,
    /// Hex credential ids, in enrollment order.
    pub credential_ids: Vec<String>,
}

/// A stored credential: what the proxy needs to verify an assertion.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Credential {
    #[serde(with = "hex::serde")]
    pub credential_id: Vec<u8>,
    pub username: String,
    /// The credential public key as the card sent it (COSE_Key, canonical CBOR).
    #[serde(with = "hex::serde")]
    pub public_key_cose: Vec<u8>,
    /// Highest signature counter seen from the card for this credential.
    pub sign_count: u32,
    #[serde(with = "hex::serde")]
    pub aaguid: [u8; 16],
    /// Kind of attestation checked at enrollment (`packed-self`, …).
    pub attestation: String,
    pub created_at: u64,
    /// Set when the card reported a counter that did not increase.
    #[serde(default)]
    pub possibly_cloned: bool,
}

/// A user with their credentials.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Enrollment {
    pub user: User,
    pub credentials: Vec<Credential>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EnrollmentError {
    #[error("user {0} is already enrolled; log in, or delete the enrollment first")]
    AlreadyEnrolled(String),
    #[error("an enrollment for {0} is already waiting on the card; finish or cancel it first")]
    InProgress(String),
    #[error("user {0} is not enrolled; enroll first")]
    NotEnrolled(String),
    #[error("credential {0} is not stored")]
    UnknownCredential(String),
    #[error("the card's signature counter for credential {credential} went from {stored} to {reported}; the credential may be cloned")]
    CounterNotIncreased {
        credential: String,
        stored: u32,
        reported: u32,
    },
    #[error("enrollment store failed: {0}")]
    Store(String),
    /// sled could not read or write its files.
    #[error("enrollment store failed: {0}")]
    Io(String),
    #[error("the enrollment store is closed after a failed write ({0}); free disk space or fix the store folder, then restart the proxy")]
    Closed(String),
}

impl From<sled::Error> for EnrollmentError {
    fn from(e: sled::Error) -> Self {
        match e {
            sled::Error::Io(io) => EnrollmentError::Io(io.to_string()),
            other => EnrollmentError::Io(other.to_string()),
        }
    }
}

// Messages.

/// Returns a user's enrollment, if any.
#[derive(Message)]
#[rtype(result = "Result<Option<Enrollment>, EnrollmentError>")]
pub struct Lookup {
    pub username: Username,
}

/// Claims a username for an enrollment that is about to ask the card, so
/// that two enrollments for one name never both reach the card.
#[derive(Message)]
#[rtype(result = "Result<(), EnrollmentError>")]
pub struct Reserve {
    pub username: Username,
}

/// Drops a claim made by [`Reserve`] after the card operation failed.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Release {
    pub username: Username,
}

/// Stores a new user with their first credential (create-only) and drops
/// the claim.
#[derive(Message)]
#[rtype(result = "Result<User, EnrollmentError>")]
pub struct Register {
    pub username: Username,
    pub display_name: String,
    pub credential: Credential,
}

/// Changes a user's display name.
#[derive(Message)]
#[rtype(result = "Result<User, EnrollmentError>")]
pub struct Update {
    pub username: Username,
    pub display_name: String,
}

/// Removes a user and all their credentials.
#[derive(Message)]
#[rtype(result = "Result<User, EnrollmentError>")]
pub struct Delete {
    pub username: Username,
}

/// Returns every user, sorted by username.
#[derive(Message)]
#[rtype(result = "Result<Vec<User>, EnrollmentError>")]
pub struct List;

/// Stores the signature counter of a verified assertion.
///
/// A counter of 0 on both sides means the card keeps no counter. Otherwise
/// the reported value must be above the stored one; if it is not, the
/// credential is marked as possibly cloned and the login must fail.
#[derive(Message)]
#[rtype(result = "Result<(), EnrollmentError>")]
pub struct RecordSignCount {
    pub credential_id: Vec<u8>,
    pub reported: u32,
}

pub struct EnrollmentsActor {
    db: sled::Db,
    users: sled::Tree,
    credentials: sled::Tree,
    pending: HashSet<Username>,
    /// Reason of the first failed write. sled may then keep the change in
    /// memory without it being on disk, and it rejects later writes. So
    /// every later request is rejected until a restart reloads the disk.
    failed_write: Option<String>,
}

impl EnrollmentsActor {
    /// Opens (or creates) the store in `path`.
    pub fn open(path: &Path) -> Result<Self, EnrollmentError> {
        let db = sled::Config::new().path(path).open()?;
        let users = db.open_tree("users")?;
        let credentials = db.open_tree("credentials")?;
        Ok(EnrollmentsActor {
            db,
            users,
            credentials,
            pending: HashSet::new(),
            failed_write: None,
        })
    }

    /// Opens the store and starts the actor on a thread of its own.
    pub fn start(path: PathBuf) -> Result<Addr<EnrollmentsActor>, EnrollmentError> {
        let db = sled::Config::new().path(&path).open()?;
        Self::start_with_db(db)
    }

    /// Starts the actor on a thread of its own with an open database, whose
    /// handle the caller may share with other users of the same store.
    pub fn start_with_db(db: sled::Db) -> Result<Addr<EnrollmentsActor>, EnrollmentError> {
        // Open the trees here so that a damaged store fails at start, then
        // hand the handles to the actor thread (sled handles are cheap clones).
        let users = db.open_tree("users")?;
        let credentials = db.open_tree("credentials")?;
        Ok(SyncArbiter::start(1, move || EnrollmentsActor {
            db: db.clone(),
            users: users.clone(),
            credentials: credentials.clone(),
            pending: HashSet::new(),
            failed_write: None,
        }))
    }

    /// Rejects a request once a write has failed.
    fn usable(&self) -> Result<(), EnrollmentError> {
        match &self.failed_write {
            Some(reason) => Err(EnrollmentError::Closed(reason.clone())),
            None => Ok(()),
        }
    }

    /// Closes the store for later requests when `error` comes from sled's
    /// files, and returns it.
    fn write_failed(&mut self, error: EnrollmentError) -> EnrollmentError {
        if let EnrollmentError::Io(reason) = &error {
            tracing::error!(error = %reason, "an enrollment store write failed; the store is closed until a restart");
            self.failed_write = Some(reason.clone());
        }
        error
    }

    fn read_user(&self, username: &str) -> Result<Option<User>, EnrollmentError> {
        match self.users.get(username.as_bytes())? {
            None => Ok(None),
            Some(bytes) => decode(&bytes, "user", username).map(Some),
        }
    }

    fn read_credential(&self, id: &[u8]) -> Result<Option<Credential>, EnrollmentError> {
        match self.credentials.get(id)? {
            None => Ok(None),
            Some(bytes) => decode(&bytes, "credential", &hex::encode(id)).map(Some),
        }
    }

    fn flush(&mut self) -> Result<(), EnrollmentError> {
        match self.db.flush() {
            Ok(_) => Ok(()),
            Err(e) => Err(self.write_failed(e.into())),
        }
    }
}

fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, EnrollmentError> {
    serde_json::to_vec(value).map_err(|e| EnrollmentError::Store(e.to_string()))
}

fn decode<T: for<'de> Deserialize<'de>>(
    bytes: &[u8],
    what: &str,
    key: &str,
) -> Result<T, EnrollmentError> {
    serde_json::from_slice(bytes)
        .map_err(|e| EnrollmentError::Store(format!("stored {what} {key} is unreadable: {e}")))
}

fn transaction_error(e: TransactionError<EnrollmentError>) -> EnrollmentError {
    match e {
        TransactionError::Abort(e) => e,
        TransactionError::Storage(e) => e.into(),
    }
}

impl Actor for EnrollmentsActor {
    type Context = SyncContext<Self>;

    fn stopping(&mut self, _: &mut Self::Context) -> Running {
        if let Err(e) = self.db.flush() {
            tracing::error!(error = %e, "flushing the enrollment store failed at stop");
        }
        Running::Stop
    }
}

impl Handler<Lookup> for EnrollmentsActor {
    type Result = Result<Option<Enrollment>, EnrollmentError>;

    fn handle(&mut self, msg: Lookup, _: &mut Self::Context) -> Self::Result {
        self.usable()?;
        let Some(user) = self.read_user(msg.username.as_str())? else {
            return Ok(None);
        };
        let mut credentials = Vec::with_capacity(user.credential_ids.len());
        for id_hex in &user.credential_ids {
            let id = hex::decode(id_hex)
                .map_err(|e| EnrollmentError::Store(format!("credential id {id_hex}: {e}")))?;
            match self.read_credential(&id)? {
                Some(credential) => credentials.push(credential),
                None => return Err(EnrollmentError::UnknownCredential(id_hex.clone())),
            }
        }
        Ok(Some(Enrollment { user, credentials }))
    }
}

impl Handler<Reserve> for EnrollmentsActor {
    type Result = Result<(), EnrollmentError>;

    fn handle(&mut self, msg: Reserve, _: &mut Self::Context) -> Self::Result {
        self.usable()?;
        if self.pending.contains(&msg.username) {
            return Err(EnrollmentError::InProgress(msg.username.into_string()));
        }
        if self.users.contains_key(msg.username.as_str().as_bytes())? {
            return Err(EnrollmentError::AlreadyEnrolled(msg.username.into_string()));
        }
        self.pending.insert(msg.username);
        Ok(())
    }
}

impl Handler<Release> for EnrollmentsActor {
    type Result = ();

    fn handle(&mut self, msg: Release, _: &mut Self::Context) {
        self.pending.remove(&msg.username);
    }
}

impl Handler<Register> for EnrollmentsActor {
    type Result = Result<User, EnrollmentError>;

    fn handle(&mut self, msg: Register, _: &mut Self::Context) -> Self::Result {
        self.pending.remove(&msg.username);
        self.usable()?;

        let now = now_unix();
        let user = User {
            username: msg.username.as_str().to_string(),
            display_name: msg.display_name,
            created_at: now,
            updated_at: now,
            credential_ids: vec![hex::encode(&msg.credential.credential_id)],
        };
        let user_bytes = encode(&user)?;
        let credential_bytes = encode(&msg.credential)?;
        let key = user.username.as_bytes();
        let credential_id = msg.credential.credential_id.as_slice();

        (&self.users, &self.credentials)
            .transaction(|(users, credentials)| {
                if users.get(key)?.is_some() {
                    return Err(ConflictableTransactionError::Abort(
                        EnrollmentError::AlreadyEnrolled(user.username.clone()),
                    ));
                }
                if credentials.get(credential_id)?.is_some() {
                    return Err(ConflictableTransactionError::Abort(EnrollmentError::Store(
                        format!(
                            "credential {} is already stored for another user",
                            hex::encode(credential_id)
                        ),
                    )));
                }
                users.insert(key, user_bytes.as_slice())?;
                credentials.insert(credential_id, credential_bytes.as_slice())?;
                Ok(())
            })
            .map_err(|e| self.write_failed(transaction_error(e)))?;
        self.flush()?;
        tracing::info!(username = %user.username, credential = %hex::encode(credential_id), "user enrolled");
        Ok(user)
    }
}

impl Handler<Update> for EnrollmentsActor {
    type Result = Result<User, EnrollmentError>;

    fn handle(&mut self, msg: Update, _: &mut Self::Context) -> Self::Result {
        self.usable()?;
        let Some(mut user) = self.read_user(msg.username.as_str())? else {
            return Err(EnrollmentError::NotEnrolled(msg.username.into_string()));
        };
        user.display_name = msg.display_name;
        user.updated_at = now_unix();
        let encoded = encode(&user)?;
        if let Err(e) = self.users.insert(user.username.as_bytes(), encoded) {
            return Err(self.write_failed(e.into()));
        }
        self.flush()?;
        tracing::info!(username = %user.username, "enrollment updated");
        Ok(user)
    }
}

impl Handler<Delete> for EnrollmentsActor {
    type Result = Result<User, EnrollmentError>;

    fn handle(&mut self, msg: Delete, _: &mut Self::Context) -> Self::Result {
        self.usable()?;
        let Some(user) = self.read_user(msg.username.as_str())? else {
            return Err(EnrollmentError::NotEnrolled(msg.username.into_string()));
        };
        let ids: Vec<Vec<u8>> = user
            .credential_ids
            .iter()
            .filter_map(|id| hex::decode(id).ok())
            .collect();
        let key = user.username.as_bytes();
        (&self.users, &self.credentials)
            .transaction(|(users, credentials)| {
                users.remove(key)?;
                for id in &ids {
                    credentials.remove(id.as_slice())?;
                }
                Ok::<(), ConflictableTransactionError<EnrollmentError>>(())
            })
            .map_err(|e| self.write_failed(transaction_error(e)))?;
        self.flush()?;
        tracing::info!(username = %user.username, "enrollment deleted");
        Ok(user)
    }
}

impl Handler<List> for EnrollmentsActor {
    type Result = Result<Vec<User>, EnrollmentError>;

    fn handle(&mut self, _: List, _: &mut Self::Context) -> Self::Result {
        self.usable()?;
        let mut users = Vec::new();
        for entry in self.users.iter() {
            let (key, value) = entry?;
            users.push(decode(&value, "user", &String::from_utf8_lossy(&key))?);
        }
        Ok(users)
    }
}

impl Handler<RecordSignCount> for EnrollmentsActor {
    type Result = Result<(), EnrollmentError>;

    fn handle(&mut self, msg: RecordSignCount, _: &mut Self::Context) -> Self::Result {
        self.usable()?;
        let id_hex = hex::encode(&msg.credential_id);
        let Some(mut credential) = self.read_credential(&msg.credential_id)? else {
            return Err(EnrollmentError::UnknownCredential(id_hex));
        };
        let stored = credential.sign_count;
        let counterless = stored == 0 && msg.reported == 0;
        if !counterless && msg.reported <= stored {
            credential.possibly_cloned = true;
            let encoded = encode(&credential)?;
            if let Err(e) = self
                .credentials
                .insert(msg.credential_id.as_slice(), encoded)
            {
                return Err(self.write_failed(e.into()));
            }
            self.flush()?;
            tracing::warn!(credential = %id_hex, username = %credential.username, stored, reported = msg.reported, "signature counter did not increase; credential marked as possibly cloned");
            return Err(EnrollmentError::CounterNotIncreased {
                credential: id_hex,
                stored,
                reported: msg.reported,
            });
        }
        if msg.reported != stored {
            credential.sign_count = msg.reported;
            // Compare-and-swap so that a concurrent login with the same
            // credential cannot move the counter backwards.
            let current = self.credentials.get(msg.credential_id.as_slice())?;
            let swapped = self
                .credentials
                .compare_and_swap(
                    msg.credential_id.as_slice(),
                    current,
                    Some(encode(&credential)?),
                )
                .map_err(|e| self.write_failed(e.into()))?;
            if swapped.is_err() {
                return Err(EnrollmentError::Store(format!(
                    "credential {id_hex} changed during the update; retry the login"
                )));
            }
            self.flush()?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn credential(id: u8, username: &str) -> Credential {
        Credential {
            credential_id: vec![id; 16],
            username: username.into(),
            public_key_cose: vec![0xa5],
            sign_count: 1,
            aaguid: [0x12; 16],
            attestation: "packed-self".into(),
            created_at: 0,
            possibly_cloned: false,
        }
    }

    fn name(s: &str) -> Username {
        Username::parse(s).unwrap()
    }

    async fn register(
        actor: &Addr<EnrollmentsActor>,
        user: &str,
        id: u8,
    ) -> Result<User, EnrollmentError> {
        actor
            .send(Register {
                username: name(user),
                display_name: user.to_uppercase(),
                credential: credential(id, user),
            })
            .await
            .unwrap()
    }

    #[actix_rt::test]
    async fn register_is_create_only_and_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let actor = EnrollmentsActor::start(dir.path().join("db")).unwrap();
        register(&actor, "alice", 1).await.unwrap();
        let again = register(&actor, "alice", 2).await;
        assert_eq!(again, Err(EnrollmentError::AlreadyEnrolled("alice".into())));

        drop(actor);
        // The SyncArbiter thread keeps the sled handle open until it stops.
        actix_rt::time::sleep(std::time::Duration::from_millis(100)).await;
        let reopened = EnrollmentsActor::start(dir.path().join("db")).unwrap();
        let found = reopened
            .send(Lookup {
                username: name("alice"),
            })
            .await
            .unwrap()
            .unwrap()
            .expect("alice must still be enrolled");
        assert_eq!(found.credentials.len(), 1);
        assert_eq!(found.credentials[0].credential_id, vec![1; 16]);
    }

    #[actix_rt::test]
    async fn reserve_rejects_second_claim_and_enrolled_user() {
        let dir = tempfile::tempdir().unwrap();
        let actor = EnrollmentsActor::start(dir.path().join("db")).unwrap();
        actor
            .send(Reserve {
                username: name("bob"),
            })
            .await
            .unwrap()
            .unwrap();
        let second = actor
            .send(Reserve {
                username: name("bob"),
            })
            .await
            .unwrap();
        assert_eq!(second, Err(EnrollmentError::InProgress("bob".into())));
        actor
            .send(Release {
                username: name("bob"),
            })
            .await
            .unwrap();
        actor
            .send(Reserve {
                username: name("bob"),
            })
            .await
            .unwrap()
            .unwrap();

        register(&actor, "carol", 3).await.unwrap();
        let enrolled = actor
            .send(Reserve {
                username: name("carol"),
            })
            .await
            .unwrap();
        assert_eq!(
            enrolled,
            Err(EnrollmentError::AlreadyEnrolled("carol".into()))
        );
    }

    #[actix_rt::test]
    async fn delete_removes_user_and_credentials() {
        let dir = tempfile::tempdir().unwrap();
        let actor = EnrollmentsActor::start(dir.path().join("db")).unwrap();
        register(&actor, "dave", 4).await.unwrap();
        actor
            .send(Delete {
                username: name("dave"),
            })
            .await
            .unwrap()
            .unwrap();
        let found = actor
            .send(Lookup {
                username: name("dave"),
            })
            .await
            .unwrap()
            .unwrap();
        assert!(found.is_none());
        let count = actor
            .send(RecordSignCount {
                credential_id: vec![4; 16],
                reported: 9,
            })
            .await
            .unwrap();
        assert_eq!(
            count,
            Err(EnrollmentError::UnknownCredential(hex::encode([4u8; 16])))
        );
        // The name is free again.
        register(&actor, "dave", 5).await.unwrap();
    }

    #[actix_rt::test]
    async fn update_changes_display_name_only() {
        let dir = tempfile::tempdir().unwrap();
        let actor = EnrollmentsActor::start(dir.path().join("db")).unwrap();
        let before = register(&actor, "erin", 6).await.unwrap();
        let after = actor
            .send(Update {
                username: name("erin"),
                display_name: "Erin E.".into(),
            })
            .await
            .unwrap()
            .unwrap();
        assert_eq!(after.display_name, "Erin E.");
        assert_eq!(after.credential_ids, before.credential_ids);
        let missing = actor
            .send(Update {
                username: name("nobody"),
                display_name: "x".into(),
            })
            .await
            .unwrap();
        assert_eq!(missing, Err(EnrollmentError::NotEnrolled("nobody".into())));
    }

    #[actix_rt::test]
    async fn login_rejects_non_increasing_sign_count() {
        let dir = tempfile::tempdir().unwrap();
        let actor = EnrollmentsActor::start(dir.path().join("db")).unwrap();
        register(&actor, "frank", 7).await.unwrap();
        let record = |reported| RecordSignCount {
            credential_id: vec![7; 16],
            reported,
        };
        actor.send(record(5)).await.unwrap().unwrap();
        let equal = actor.send(record(5)).await.unwrap();
        assert!(matches!(
            equal,
            Err(EnrollmentError::CounterNotIncreased {
                stored: 5,
                reported: 5,
                ..
            })
        ));
        let lower = actor.send(record(3)).await.unwrap();
        assert!(matches!(
            lower,
            Err(EnrollmentError::CounterNotIncreased {
                stored: 5,
                reported: 3,
                ..
            })
        ));
        let found = actor
            .send(Lookup {
                username: name("frank"),
            })
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert!(found.credentials[0].possibly_cloned);
        assert_eq!(found.credentials[0].sign_count, 5);
    }

    #[actix_rt::test]
    async fn counterless_card_is_accepted() {
        let dir = tempfile::tempdir().unwrap();
        let actor = EnrollmentsActor::start(dir.path().join("db")).unwrap();
        let mut zero = credential(8, "gina");
        zero.sign_count = 0;
        actor
            .send(Register {
                username: name("gina"),
                display_name: String::new(),
                credential: zero,
            })
            .await
            .unwrap()
            .unwrap();
        for _ in 0..2 {
            actor
                .send(RecordSignCount {
                    credential_id: vec![8; 16],
                    reported: 0,
                })
                .await
                .unwrap()
                .unwrap();
        }
    }
}
