//! The session cache: one per HTTP worker, on the worker's own thread.
//!
//! The protected call checks its session on every request. Asking the
//! sessions actor costs a round trip to another thread, and under load each
//! such hop waits for that thread to be scheduled. This actor checks the
//! sessions it has cached without leaving the worker's thread, while the
//! sessions actor stays the owner of every session:
//! - a token that is not cached is checked by the sessions actor, and a
//!   valid one is cached;
//! - the sessions actor evicts every ended session from all caches before
//!   the logout or revocation that ended it replies, and a reply that
//!   crossed an eviction is used once but not cached;
//! - uses seen here are reported every [`TOUCH_INTERVAL`], so that the idle
//!   timeout counts them;
//! - entries unused for [`UNUSED_ENTRY_LIMIT`] are dropped, so the cache
//!   holds only sessions in use.
//!
//! NOTE: the sessions actor learns of a use here up to [`TOUCH_INTERVAL`]
//! late, so near the idle timeout a session may end up to that much earlier
//! than its last use on this worker implies.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use actix::prelude::*;

use crate::actors::sessions::{
    CacheEntry, Evict, SessionError, SessionInfo, SessionSettings, SessionsActor, Subscribe,
    TokenHash, Touched, ValidateForCache,
};

/// How often the sessions used here are reported to the sessions actor.
/// Much shorter than any sensible idle timeout.
pub const TOUCH_INTERVAL: Duration = Duration::from_secs(1);

/// Entries not used on this worker for this long are dropped, and the
/// sessions actor checks their next use again.
pub const UNUSED_ENTRY_LIMIT: Duration = Duration::from_secs(60);

/// How often unused and expired entries are dropped.
const PRUNE_INTERVAL: Duration = Duration::from_secs(10);

// Messages.

/// Checks a session and, when it is valid, counts this as activity.
#[derive(Message)]
#[rtype(result = "Result<SessionInfo, SessionError>")]
pub struct Check {
    pub hash: TokenHash,
}

pub struct SessionCache {
    sessions: Addr<SessionsActor>,
    settings: SessionSettings,
    entries: HashMap<TokenHash, CacheEntry>,
    /// Sessions used here since the last report.
    touched: HashSet<TokenHash>,
    /// Number of [`Evict`] messages handled. A reply of the sessions actor
    /// is cached only if no eviction arrived while it was awaited.
    evictions: u64,
}

impl SessionCache {
    /// A cache of `sessions`, which must have been started with `settings`.
    pub fn new(sessions: Addr<SessionsActor>, settings: SessionSettings) -> Self {
        SessionCache {
            sessions,
            settings,
            entries: HashMap::new(),
            touched: HashSet::new(),
            evictions: 0,
        }
    }

    fn report_touched(&mut self) {
        if !self.touched.is_empty() {
            let hashes = self.touched.drain().collect();
            self.sessions.do_send(Touched { hashes });
        }
    }

    fn prune(&mut self) {
        let now = Instant::now();
        let settings = self.settings;
        self.entries.retain(|_, entry| {
            entry.expiry(&settings) > now
                && now.duration_since(entry.last_seen) < UNUSED_ENTRY_LIMIT
        });
    }
}

impl Handler<Check> for SessionCache {
    /// A cached session gets its reply at once. Only a miss waits for the
    /// sessions actor.
    type Result = ActorResponse<Self, Result<SessionInfo, SessionError>>;

    fn handle(&mut self, msg: Check, _: &mut Self::Context) -> Self::Result {
        let hash = msg.hash;
        let now = Instant::now();
        if let Some(entry) = self.entries.get_mut(&hash) {
            if entry.expiry(&self.settings) > now {
                entry.last_seen = now;
                self.touched.insert(hash);
                let info =
                    SessionInfo::new(&hash, &entry.username, entry.expiry(&self.settings), now);
                return ActorResponse::reply(Ok(info));
            }
            // Expired by this worker's record. Uses on other workers may
            // have kept it alive, and only the sessions actor records those.
            self.entries.remove(&hash);
        }

        let evictions = self.evictions;
        let ask = self.sessions.send(ValidateForCache { hash });
        ActorResponse::r#async(ask.into_actor(self).map(move |reply, cache, _| {
            let entry = reply.map_err(|e| SessionError::Unavailable(e.to_string()))??;
            let now = Instant::now();
            let info = SessionInfo::new(&hash, &entry.username, entry.expiry(&cache.settings), now);
            if cache.evictions == evictions {
                cache.entries.insert(hash, entry);
            }
            Ok(info)
        }))
    }
}

impl Handler<Evict> for SessionCache {
    type Result = ();

    fn handle(&mut self, msg: Evict, _: &mut Self::Context) {
        self.evictions += 1;
        for hash in &msg.hashes {
            self.entries.remove(hash);
            self.touched.remove(hash);
        }
    }
}

impl Actor for SessionCache {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.set_mailbox_capacity(super::WORKER_MAILBOX_CAPACITY);

        // Sent before any check from this cache, so the sessions actor has
        // registered the cache before it validates a session for it.
        self.sessions.do_send(Subscribe {
            cache: ctx.address().recipient(),
        });
        ctx.run_interval(TOUCH_INTERVAL, |cache, _| cache.report_touched());
        ctx.run_interval(PRUNE_INTERVAL, |cache, _| cache.prune());
    }

    fn stopping(&mut self, _: &mut Self::Context) -> Running {
        self.report_touched();
        Running::Stop
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::actors::sessions::{Create, IssuedSession, Logout, RevokeUser, Validate};

    fn settings(idle_ms: u64) -> SessionSettings {
        SessionSettings {
            idle_timeout: Duration::from_millis(idle_ms),
            lifetime: Duration::from_secs(60),
            cleanup_interval: Duration::from_secs(60),
        }
    }

    fn start(idle_ms: u64) -> (Addr<SessionsActor>, Addr<SessionCache>) {
        let sessions = SessionsActor::new(settings(idle_ms)).start();
        let cache = SessionCache::new(sessions.clone(), settings(idle_ms)).start();
        (sessions, cache)
    }

    async fn create(sessions: &Addr<SessionsActor>, name: &str) -> IssuedSession {
        sessions
            .send(Create {
                username: name.into(),
            })
            .await
            .expect("sessions actor running")
            .expect("session created")
    }

    async fn check(cache: &Addr<SessionCache>, token: &str) -> Result<SessionInfo, SessionError> {
        let hash = TokenHash::of_well_formed(token)?;
        cache.send(Check { hash }).await.expect("cache running")
    }

    #[actix_rt::test]
    async fn cache_accepts_session_of_sessions_actor() {
        let (sessions, cache) = start(60_000);
        let issued = create(&sessions, "alice").await;

        for _ in 0..3 {
            let info = check(&cache, &issued.token).await.expect("valid session");
            assert_eq!(info.username, "alice");
            assert_eq!(info.hash_prefix, TokenHash::of(&issued.token).prefix());
        }
    }

    #[actix_rt::test]
    async fn cache_rejects_unknown_token() {
        let (_, cache) = start(60_000);
        let unknown = "A".repeat(crate::actors::sessions::TOKEN_TEXT_LEN);

        assert_eq!(check(&cache, &unknown).await, Err(SessionError::Unknown));
    }

    #[actix_rt::test]
    async fn logout_evicts_cached_session() {
        let (sessions, cache) = start(60_000);
        let issued = create(&sessions, "alice").await;
        check(&cache, &issued.token).await.expect("cached");

        sessions
            .send(Logout {
                token: issued.token.clone(),
            })
            .await
            .expect("sessions actor running")
            .expect("logged out");

        assert_eq!(
            check(&cache, &issued.token).await,
            Err(SessionError::Unknown)
        );
    }

    #[actix_rt::test]
    async fn revoke_user_evicts_only_that_users_sessions() {
        let (sessions, cache) = start(60_000);
        let alice = create(&sessions, "alice").await;
        let bob = create(&sessions, "bob").await;
        check(&cache, &alice.token).await.expect("cached");
        check(&cache, &bob.token).await.expect("cached");

        let revoked = sessions
            .send(RevokeUser {
                username: "alice".into(),
            })
            .await
            .expect("sessions actor running");

        assert_eq!(revoked, 1);
        assert_eq!(
            check(&cache, &alice.token).await,
            Err(SessionError::Unknown)
        );
        assert!(check(&cache, &bob.token).await.is_ok());
    }

    #[actix_rt::test]
    async fn use_in_cache_keeps_session_alive_in_sessions_actor() {
        // Idle timeout 1.5 s; the session is used only through the cache,
        // whose reports reach the sessions actor every second.
        let (sessions, cache) = start(1_500);
        let issued = create(&sessions, "alice").await;
        for _ in 0..4 {
            check(&cache, &issued.token).await.expect("valid session");
            actix_rt::time::sleep(Duration::from_millis(400)).await;
        }
        actix_rt::time::sleep(Duration::from_millis(600)).await;

        // 2.2 s after login: without the reports the session would have
        // ended at 1.5 s.
        let direct = sessions
            .send(Validate {
                token: issued.token,
            })
            .await
            .expect("sessions actor running");
        assert!(direct.is_ok(), "{direct:?}");
    }

    #[actix_rt::test]
    async fn idle_session_expires_in_cache() {
        let (sessions, cache) = start(100);
        let issued = create(&sessions, "alice").await;
        check(&cache, &issued.token).await.expect("cached");

        actix_rt::time::sleep(Duration::from_millis(150)).await;

        assert_eq!(
            check(&cache, &issued.token).await,
            Err(SessionError::Unknown)
        );
    }
}
