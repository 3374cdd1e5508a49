//! The sessions actor: server-side sessions keyed by the SHA-256 of their
//! token.
//!
//! A token is 32 bytes from the OS RNG, given to the client once as
//! base64url and never stored or logged. The actor keeps only the hash, so
//! a memory dump or a log does not reveal a usable token. Lookups go through
//! a hash map keyed by that hash: an attacker who can time them learns at
//! most about the SHA-256 of a guess, not about a stored token.
//!
//! Each HTTP worker of the proxy may keep a [`SessionCache`] actor that
//! checks the sessions of protected calls on the worker's own thread. The
//! caches subscribe here. A logout or revocation replies only after every
//! cache has evicted the ended sessions. Expired sessions are evicted
//! without waiting, because caches check expiry themselves. The caches
//! report the sessions they saw used, so that idle timeouts count that use.
//!
//! [`SessionCache`]: crate::actors::session_cache::SessionCache

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use actix::prelude::*;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use futures_util::future::join_all;
use sha2::{Digest, Sha256};

use crate::rng::{os_random, RngError};

/// Length of a session token before encoding, in bytes (256 bits).
pub const TOKEN_BYTES: usize = 32;

/// Length of a token's base64url text (no padding).
pub const TOKEN_TEXT_LEN: usize = 43;

/// How long sessions live. Both limits are checked on every request.
#[derive(Debug, Clone, Copy)]
pub struct SessionSettings {
    /// A session ends after this long without a request.
    pub idle_timeout: Duration,
    /// A session ends this long after login, however active it is.
    pub lifetime: Duration,
    /// How often expired sessions are removed from memory.
    pub cleanup_interval: Duration,
}

/// SHA-256 of a token's text: the only form in which the actor keeps it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TokenHash([u8; 32]);

impl TokenHash {
    /// Hashes `token` after checking that it has the shape of a token this
    /// actor issues; anything else is rejected before hashing.
    pub fn of_well_formed(token: &str) -> Result<TokenHash, SessionError> {
        if !is_well_formed(token) {
            return Err(SessionError::Malformed);
        }
        Ok(TokenHash::of(token))
    }

    pub fn of(token: &str) -> TokenHash {
        TokenHash(Sha256::digest(token.as_bytes()).into())
    }

    /// The first 8 hex digits, for log lines that must tell sessions apart
    /// without revealing anything that authenticates.
    pub fn prefix(&self) -> String {
        hex::encode(&self.0[..4])
    }
}

/// A session as returned to the HTTP layer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionInfo {
    pub username: String,
    /// When the session ends if it is not used again (the earlier of the
    /// idle and the absolute limit).
    pub expires_at: SystemTime,
    pub hash_prefix: String,
}

impl SessionInfo {
    /// Builds the view of a session that ends at `expiry`, as of `now`.
    pub fn new(hash: &TokenHash, username: &str, expiry: Instant, now: Instant) -> SessionInfo {
        SessionInfo {
            username: username.to_string(),
            expires_at: SystemTime::now() + expiry.saturating_duration_since(now),
            hash_prefix: hash.prefix(),
        }
    }
}

/// A new session: the token is shown to the client once and then dropped.
#[derive(Debug)]
pub struct IssuedSession {
    pub token: String,
    pub info: SessionInfo,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SessionError {
    #[error("the session token is malformed: expected {TOKEN_TEXT_LEN} base64url characters")]
    Malformed,
    #[error("the session is unknown, expired or logged out; log in again")]
    Unknown,
    #[error("cannot create a session: {0}")]
    Rng(String),
    #[error("the sessions actor did not respond: {0}")]
    Unavailable(String),
}

impl From<RngError> for SessionError {
    fn from(e: RngError) -> Self {
        SessionError::Rng(e.to_string())
    }
}

struct Session {
    /// Shared with the caches' entries of this session.
    username: Arc<str>,
    created: Instant,
    last_seen: Instant,
}

impl Session {
    fn expiry(&self, settings: &SessionSettings) -> Instant {
        (self.created + settings.lifetime).min(self.last_seen + settings.idle_timeout)
    }
}

pub struct SessionsActor {
    settings: SessionSettings,
    /// Every live session. There is no index by user: it would cost about
    /// as much memory as this map, and only the rare [`RevokeUser`] needs
    /// it, which scans this map instead.
    sessions: HashMap<TokenHash, Session>,
    /// Caches that must forget ended sessions.
    caches: Vec<Recipient<Evict>>,
}

// Messages.

/// Creates a session for a user who has just proved possession of the card.
#[derive(Message)]
#[rtype(result = "Result<IssuedSession, SessionError>")]
pub struct Create {
    pub username: String,
}

/// Checks a token and, when it is valid, counts this as activity.
#[derive(Message)]
#[rtype(result = "Result<SessionInfo, SessionError>")]
pub struct Validate {
    pub token: String,
}

/// Ends the session of this token.
#[derive(Message)]
#[rtype(result = "Result<SessionInfo, SessionError>")]
pub struct Logout {
    pub token: String,
}

/// Ends every session of a user; returns how many ended.
#[derive(Message)]
#[rtype(result = "usize")]
pub struct RevokeUser {
    pub username: String,
}

/// Returns the number of live sessions.
#[derive(Message)]
#[rtype(result = "usize")]
pub struct Count;

/// Checks a token for a cache: like [`Validate`], and also returns what the
/// cache needs to check the session by itself.
#[derive(Message)]
#[rtype(result = "Result<CacheEntry, SessionError>")]
pub struct ValidateForCache {
    pub hash: TokenHash,
}

/// A live session as a cache keeps it.
#[derive(Debug, Clone)]
pub struct CacheEntry {
    pub username: Arc<str>,
    /// Login time: the absolute lifetime counts from here.
    pub created: Instant,
    /// Last known use.
    pub last_seen: Instant,
}

impl CacheEntry {
    /// When the session ends if it is not used again.
    pub fn expiry(&self, settings: &SessionSettings) -> Instant {
        (self.created + settings.lifetime).min(self.last_seen + settings.idle_timeout)
    }
}

/// Registers a cache; from then on it gets an [`Evict`] for every ended
/// session. Logout and revocation reply only after every cache confirmed.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Subscribe {
    pub cache: Recipient<Evict>,
}

/// Tells a cache to forget these sessions. The reply confirms that it has.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Evict {
    pub hashes: Vec<TokenHash>,
}

/// Sessions a cache saw used; each counts as activity now.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Touched {
    pub hashes: Vec<TokenHash>,
}

/// Removes expired sessions; returns how many were removed.
#[derive(Message)]
#[rtype(result = "usize")]
pub struct Cleanup;

impl SessionsActor {
    pub fn new(settings: SessionSettings) -> Self {
        SessionsActor {
            settings,
            sessions: HashMap::new(),
            caches: Vec::new(),
        }
    }

    /// Sends `hashes` to every cache and resolves once all have confirmed.
    /// A cache that is gone cannot accept the session any more, so a failed
    /// send counts as confirmed.
    fn evict_from_caches(&self, hashes: Vec<TokenHash>) -> impl std::future::Future<Output = ()> {
        let sends: Vec<_> = if hashes.is_empty() {
            Vec::new()
        } else {
            self.caches
                .iter()
                .map(|cache| {
                    cache.send(Evict {
                        hashes: hashes.clone(),
                    })
                })
                .collect()
        };
        async move {
            join_all(sends).await;
        }
    }

    fn info(&self, hash: &TokenHash, session: &Session, now: Instant) -> SessionInfo {
        SessionInfo::new(hash, &session.username, session.expiry(&self.settings), now)
    }

    fn remove(&mut self, hash: &TokenHash) -> Option<Session> {
        self.sessions.remove(hash)
    }

    fn lookup(&mut self, token: &str) -> Result<TokenHash, SessionError> {
        let hash = TokenHash::of_well_formed(token)?;
        self.lookup_hash(hash)
    }

    fn lookup_hash(&mut self, hash: TokenHash) -> Result<TokenHash, SessionError> {
        let now = Instant::now();
        let expired = match self.sessions.get(&hash) {
            None => return Err(SessionError::Unknown),
            Some(session) => session.expiry(&self.settings) <= now,
        };
        if expired {
            self.remove(&hash);
            tracing::info!(session = %hash.prefix(), "session expired");
            // Caches check expiry themselves; this only frees their memory.
            for cache in &self.caches {
                cache.do_send(Evict { hashes: vec![hash] });
            }
            return Err(SessionError::Unknown);
        }
        Ok(hash)
    }
}

/// Whether `token` has the shape of a token this actor issues; anything else
/// is rejected before hashing.
fn is_well_formed(token: &str) -> bool {
    token.len() == TOKEN_TEXT_LEN
        && token
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

impl Actor for SessionsActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.run_interval(self.settings.cleanup_interval, |actor, ctx| {
            let removed = actor.handle_cleanup(ctx);
            if removed > 0 {
                tracing::debug!(removed, "expired sessions removed");
            }
        });
    }
}

impl SessionsActor {
    fn handle_cleanup(&mut self, ctx: &mut Context<Self>) -> usize {
        let now = Instant::now();
        let expired: Vec<TokenHash> = self
            .sessions
            .iter()
            .filter(|(_, s)| s.expiry(&self.settings) <= now)
            .map(|(h, _)| *h)
            .collect();
        for hash in &expired {
            self.remove(hash);
        }
        let removed = expired.len();
        ctx.spawn(actix::fut::wrap_future(self.evict_from_caches(expired)));
        removed
    }
}

impl Handler<Create> for SessionsActor {
    type Result = Result<IssuedSession, SessionError>;

    fn handle(&mut self, msg: Create, _: &mut Self::Context) -> Self::Result {
        let token = URL_SAFE_NO_PAD.encode(os_random::<TOKEN_BYTES>()?);
        let hash = TokenHash::of(&token);
        let now = Instant::now();
        let session = Session {
            username: msg.username.into(),
            created: now,
            last_seen: now,
        };
        let info = self.info(&hash, &session, now);
        self.sessions.insert(hash, session);
        tracing::info!(session = %hash.prefix(), username = %info.username, "session created");
        Ok(IssuedSession { token, info })
    }
}

impl Handler<Validate> for SessionsActor {
    type Result = Result<SessionInfo, SessionError>;

    fn handle(&mut self, msg: Validate, _: &mut Self::Context) -> Self::Result {
        let hash = self.lookup(&msg.token)?;
        let now = Instant::now();
        let session = self.sessions.get_mut(&hash).ok_or(SessionError::Unknown)?;
        session.last_seen = now;
        let session = self.sessions.get(&hash).ok_or(SessionError::Unknown)?;
        Ok(self.info(&hash, session, now))
    }
}

impl Handler<Logout> for SessionsActor {
    type Result = ResponseFuture<Result<SessionInfo, SessionError>>;

    /// Replies once every cache has forgotten the session.
    fn handle(&mut self, msg: Logout, _: &mut Self::Context) -> Self::Result {
        let ended = self.lookup(&msg.token).and_then(|hash| {
            let session = self.remove(&hash).ok_or(SessionError::Unknown)?;
            Ok((hash, session))
        });
        let (hash, session) = match ended {
            Ok(ended) => ended,
            Err(e) => return Box::pin(async move { Err(e) }),
        };
        let info = self.info(&hash, &session, Instant::now());
        tracing::info!(session = %hash.prefix(), username = %info.username, "session logged out");
        let evicted = self.evict_from_caches(vec![hash]);
        Box::pin(async move {
            evicted.await;
            Ok(info)
        })
    }
}

impl Handler<RevokeUser> for SessionsActor {
    type Result = ResponseFuture<usize>;

    /// Replies once every cache has forgotten the user's sessions.
    fn handle(&mut self, msg: RevokeUser, _: &mut Self::Context) -> Self::Result {
        let hashes: Vec<TokenHash> = self
            .sessions
            .iter()
            .filter(|(_, session)| *session.username == *msg.username)
            .map(|(hash, _)| *hash)
            .collect();
        for hash in &hashes {
            self.sessions.remove(hash);
        }
        if !hashes.is_empty() {
            tracing::info!(username = %msg.username, count = hashes.len(), "sessions revoked");
        }
        let count = hashes.len();
        let evicted = self.evict_from_caches(hashes);
        Box::pin(async move {
            evicted.await;
            count
        })
    }
}

impl Handler<ValidateForCache> for SessionsActor {
    type Result = Result<CacheEntry, SessionError>;

    fn handle(&mut self, msg: ValidateForCache, _: &mut Self::Context) -> Self::Result {
        let hash = self.lookup_hash(msg.hash)?;
        let session = self.sessions.get_mut(&hash).ok_or(SessionError::Unknown)?;
        session.last_seen = Instant::now();
        Ok(CacheEntry {
            username: session.username.clone(),
            created: session.created,
            last_seen: session.last_seen,
        })
    }
}

impl Handler<Subscribe> for SessionsActor {
    type Result = ();

    fn handle(&mut self, msg: Subscribe, _: &mut Self::Context) {
        // Caches of stopped workers are dropped here.
        self.caches.retain(|cache| cache.connected());
        self.caches.push(msg.cache);
    }
}

impl Handler<Touched> for SessionsActor {
    type Result = ();

    fn handle(&mut self, msg: Touched, _: &mut Self::Context) {
        let now = Instant::now();
        for hash in msg.hashes {
            if let Some(session) = self.sessions.get_mut(&hash) {
                session.last_seen = session.last_seen.max(now);
            }
        }
    }
}

impl Handler<Count> for SessionsActor {
    type Result = usize;

    fn handle(&mut self, _: Count, _: &mut Self::Context) -> usize {
        self.sessions.len()
    }
}

impl Handler<Cleanup> for SessionsActor {
    type Result = usize;

    fn handle(&mut self, _: Cleanup, ctx: &mut Self::Context) -> usize {
        self.handle_cleanup(ctx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(idle_ms: u64, lifetime_ms: u64) -> SessionSettings {
        SessionSettings {
            idle_timeout: Duration::from_millis(idle_ms),
            lifetime: Duration::from_millis(lifetime_ms),
            cleanup_interval: Duration::from_secs(60),
        }
    }

    fn create(
        actor: &Addr<SessionsActor>,
        name: &str,
    ) -> impl std::future::Future<Output = IssuedSession> {
        let send = actor.send(Create {
            username: name.into(),
        });
        async move { send.await.unwrap().unwrap() }
    }

    #[actix_rt::test]
    async fn token_is_256_bits_of_base64url_and_validates() {
        let actor = SessionsActor::new(settings(60_000, 60_000)).start();
        let issued = create(&actor, "alice").await;
        assert_eq!(issued.token.len(), TOKEN_TEXT_LEN);
        assert_eq!(
            URL_SAFE_NO_PAD.decode(&issued.token).unwrap().len(),
            TOKEN_BYTES
        );

        let info = actor
            .send(Validate {
                token: issued.token.clone(),
            })
            .await
            .unwrap()
            .unwrap();
        assert_eq!(info.username, "alice");
    }

    #[actix_rt::test]
    async fn tokens_differ_between_logins() {
        let actor = SessionsActor::new(settings(60_000, 60_000)).start();
        let first = create(&actor, "alice").await;
        let second = create(&actor, "alice").await;
        assert_ne!(first.token, second.token);
        assert_eq!(actor.send(Count).await.unwrap(), 2);
    }

    #[actix_rt::test]
    async fn logout_ends_session_at_next_request() {
        let actor = SessionsActor::new(settings(60_000, 60_000)).start();
        let issued = create(&actor, "alice").await;
        actor
            .send(Logout {
                token: issued.token.clone(),
            })
            .await
            .unwrap()
            .unwrap();
        let again = actor
            .send(Validate {
                token: issued.token,
            })
            .await
            .unwrap();
        assert_eq!(again, Err(SessionError::Unknown));
    }

    #[actix_rt::test]
    async fn idle_session_expires() {
        let actor = SessionsActor::new(settings(50, 60_000)).start();
        let issued = create(&actor, "alice").await;
        actix_rt::time::sleep(Duration::from_millis(80)).await;
        let result = actor
            .send(Validate {
                token: issued.token,
            })
            .await
            .unwrap();
        assert_eq!(result, Err(SessionError::Unknown));
        assert_eq!(actor.send(Count).await.unwrap(), 0);
    }

    #[actix_rt::test]
    async fn activity_does_not_extend_past_lifetime() {
        let actor = SessionsActor::new(settings(60, 150)).start();
        let issued = create(&actor, "alice").await;
        for _ in 0..3 {
            actix_rt::time::sleep(Duration::from_millis(40)).await;
            let ok = actor
                .send(Validate {
                    token: issued.token.clone(),
                })
                .await
                .unwrap();
            assert!(ok.is_ok(), "session must live while active and young");
        }
        actix_rt::time::sleep(Duration::from_millis(40)).await;
        let late = actor
            .send(Validate {
                token: issued.token,
            })
            .await
            .unwrap();
        assert_eq!(late, Err(SessionError::Unknown));
    }

    #[actix_rt::test]
    async fn revoke_user_ends_only_that_users_sessions() {
        let actor = SessionsActor::new(settings(60_000, 60_000)).start();
        let alice1 = create(&actor, "alice").await;
        let alice2 = create(&actor, "alice").await;
        let bob = create(&actor, "bob").await;
        let revoked = actor
            .send(RevokeUser {
                username: "alice".into(),
            })
            .await
            .unwrap();
        assert_eq!(revoked, 2);
        for token in [alice1.token, alice2.token] {
            let result = actor.send(Validate { token }).await.unwrap();
            assert_eq!(result, Err(SessionError::Unknown));
        }
        assert!(actor
            .send(Validate { token: bob.token })
            .await
            .unwrap()
            .is_ok());
    }

    #[actix_rt::test]
    async fn malformed_tokens_are_rejected_before_lookup() {
        let actor = SessionsActor::new(settings(60_000, 60_000)).start();
        for token in [
            "",
            "short",
            &"a".repeat(44),
            &format!("{}=", "a".repeat(42)),
        ] {
            let result = actor
                .send(Validate {
                    token: token.to_string(),
                })
                .await
                .unwrap();
            assert_eq!(result, Err(SessionError::Malformed), "{token:?}");
        }
    }

    #[actix_rt::test]
    async fn cleanup_removes_only_expired_sessions() {
        let actor = SessionsActor::new(settings(50, 60_000)).start();
        create(&actor, "old").await;
        actix_rt::time::sleep(Duration::from_millis(80)).await;
        create(&actor, "new").await;
        assert_eq!(actor.send(Cleanup).await.unwrap(), 1);
        assert_eq!(actor.send(Count).await.unwrap(), 1);
    }
}
