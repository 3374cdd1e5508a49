//! The rate-limit actor: throttles login and enrollment attempts.
//!
//! Two independent limits apply to every attempt:
//! - per client address, a token bucket: a burst of attempts, then one more
//!   per refill interval. The address is the TCP peer, never a forwarding
//!   header, so a client cannot pick its own.
//! - per username, a backoff after failures: the first few failures are
//!   free, then each further failure doubles the wait before the next
//!   attempt, up to a short maximum. A success clears it. The maximum is
//!   kept short on purpose: anyone can fail logins for any username, and a
//!   long lockout would let them keep the real user out.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use actix::prelude::*;

use crate::error::ApiError;

/// Most addresses and usernames tracked at once. Past this, idle entries
/// are dropped first; if none are idle, the oldest go.
pub const MAX_TRACKED: usize = 100_000;

const CLEANUP_INTERVAL: Duration = Duration::from_secs(60);

#[derive(Debug, Clone, Copy)]
pub struct RateLimitSettings {
    /// Attempts one address may make at once before it must wait.
    pub address_burst: u32,
    /// One more attempt is allowed per address after each such interval.
    pub address_refill: Duration,
    /// Failures for one username before the backoff starts.
    pub username_free_failures: u32,
    /// First wait after the free failures; it doubles with each failure.
    pub username_first_backoff: Duration,
    /// Maximum wait for one username.
    pub username_max_backoff: Duration,
}

struct Bucket {
    tokens: f64,
    updated: Instant,
}

struct Failures {
    count: u32,
    blocked_until: Instant,
    updated: Instant,
}

pub struct RateLimitActor {
    settings: RateLimitSettings,
    addresses: HashMap<IpAddr, Bucket>,
    usernames: HashMap<String, Failures>,
}

// Messages.

/// Asks whether an attempt may go ahead; an admitted attempt uses one of
/// the address's tokens.
#[derive(Message)]
#[rtype(result = "Result<(), ApiError>")]
pub struct Admit {
    pub address: Option<IpAddr>,
    pub username: String,
}

/// Reports how an admitted attempt ended.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Outcome {
    pub username: String,
    /// Whether the attempt failed in a way that counts against the username
    /// (declined on the card, bad signature, unknown user).
    pub failed: bool,
}

impl RateLimitActor {
    pub fn new(settings: RateLimitSettings) -> Self {
        RateLimitActor {
            settings,
            addresses: HashMap::new(),
            usernames: HashMap::new(),
        }
    }

    fn refill(&self, bucket: &mut Bucket, now: Instant) {
        let refill = self.settings.address_refill.as_secs_f64();
        let earned = if refill > 0.0 {
            now.duration_since(bucket.updated).as_secs_f64() / refill
        } else {
            f64::from(self.settings.address_burst)
        };
        bucket.tokens = (bucket.tokens + earned).min(f64::from(self.settings.address_burst));
        bucket.updated = now;
    }

    fn backoff(&self, failures: u32) -> Duration {
        let over = failures.saturating_sub(self.settings.username_free_failures);
        if over == 0 {
            return Duration::ZERO;
        }
        let factor = 2u32.saturating_pow(over - 1);
        self.settings
            .username_first_backoff
            .saturating_mul(factor)
            .min(self.settings.username_max_backoff)
    }

    /// Drops entries that no longer limit anything.
    fn cleanup(&mut self, now: Instant) {
        let burst = f64::from(self.settings.address_burst);
        let settings = self.settings;
        self.addresses.retain(|_, bucket| {
            let refill = settings.address_refill.as_secs_f64();
            let earned = if refill > 0.0 {
                now.duration_since(bucket.updated).as_secs_f64() / refill
            } else {
                burst
            };
            bucket.tokens + earned < burst
        });
        let quiet = self.settings.username_max_backoff * 4;
        self.usernames
            .retain(|_, f| now < f.blocked_until || now.duration_since(f.updated) < quiet);
    }

    fn make_room(&mut self, now: Instant) {
        if self.addresses.len() + self.usernames.len() < MAX_TRACKED {
            return;
        }
        self.cleanup(now);
        if self.addresses.len() >= MAX_TRACKED / 2 {
            let oldest = self
                .addresses
                .iter()
                .min_by_key(|(_, b)| b.updated)
                .map(|(a, _)| *a);
            if let Some(address) = oldest {
                self.addresses.remove(&address);
            }
        }
        if self.usernames.len() >= MAX_TRACKED / 2 {
            let oldest = self
                .usernames
                .iter()
                .min_by_key(|(_, f)| f.updated)
                .map(|(u, _)| u.clone());
            if let Some(username) = oldest {
                self.usernames.remove(&username);
            }
        }
    }
}

fn refused(what: &str, wait: Duration) -> ApiError {
    let seconds = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    ApiError::TooManyRequests(format!(
        "too many attempts {what}; try again in {seconds} s"
    ))
}

impl Actor for RateLimitActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.run_interval(CLEANUP_INTERVAL, |actor, _| actor.cleanup(Instant::now()));
    }
}

impl Handler<Admit> for RateLimitActor {
    type Result = Result<(), ApiError>;

    fn handle(&mut self, msg: Admit, _: &mut Self::Context) -> Self::Result {
        let now = Instant::now();
        self.make_room(now);

        if let Some(failures) = self.usernames.get(&msg.username) {
            if now < failures.blocked_until {
                return Err(refused(
                    &format!("for {}", msg.username),
                    failures.blocked_until - now,
                ));
            }
        }

        if let Some(address) = msg.address {
            let burst = f64::from(self.settings.address_burst);
            let mut bucket = self.addresses.remove(&address).unwrap_or(Bucket {
                tokens: burst,
                updated: now,
            });
            self.refill(&mut bucket, now);
            if bucket.tokens < 1.0 {
                let wait = self.settings.address_refill.mul_f64(1.0 - bucket.tokens);
                self.addresses.insert(address, bucket);
                tracing::warn!(%address, "login and enrollment attempts throttled for this address");
                return Err(refused("from this address", wait));
            }
            bucket.tokens -= 1.0;
            self.addresses.insert(address, bucket);
        }
        Ok(())
    }
}

impl Handler<Outcome> for RateLimitActor {
    type Result = ();

    fn handle(&mut self, msg: Outcome, _: &mut Self::Context) {
        let now = Instant::now();
        if !msg.failed {
            self.usernames.remove(&msg.username);
            return;
        }
        let count = self.usernames.get(&msg.username).map_or(0, |f| f.count) + 1;
        let wait = self.backoff(count);
        if !wait.is_zero() {
            tracing::warn!(username = %msg.username, failures = count, wait = ?wait, "login failures for this username: backing off");
        }
        self.usernames.insert(
            msg.username,
            Failures {
                count,
                blocked_until: now + wait,
                updated: now,
            },
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> RateLimitSettings {
        RateLimitSettings {
            address_burst: 3,
            address_refill: Duration::from_millis(100),
            username_free_failures: 2,
            username_first_backoff: Duration::from_millis(100),
            username_max_backoff: Duration::from_millis(300),
        }
    }

    fn admit(address: [u8; 4], username: &str) -> Admit {
        Admit {
            address: Some(IpAddr::from(address)),
            username: username.into(),
        }
    }

    #[actix_rt::test]
    async fn address_burst_then_refill() {
        let actor = RateLimitActor::new(settings()).start();
        for i in 0..3 {
            let name = format!("user{i}");
            actor
                .send(admit([10, 0, 0, 1], &name))
                .await
                .unwrap()
                .unwrap();
        }
        let refused = actor.send(admit([10, 0, 0, 1], "user9")).await.unwrap();
        assert!(
            matches!(refused, Err(ApiError::TooManyRequests(_))),
            "{refused:?}"
        );
        // Another address is not affected.
        actor
            .send(admit([10, 0, 0, 2], "user9"))
            .await
            .unwrap()
            .unwrap();
        actix_rt::time::sleep(Duration::from_millis(120)).await;
        actor
            .send(admit([10, 0, 0, 1], "user9"))
            .await
            .unwrap()
            .unwrap();
    }

    #[actix_rt::test]
    async fn username_backoff_starts_after_free_failures_and_is_capped() {
        let actor = RateLimitActor::new(settings()).start();
        let fail = || Outcome {
            username: "alice".into(),
            failed: true,
        };
        actor.send(fail()).await.unwrap();
        actor.send(fail()).await.unwrap();
        // Two free failures: still admitted, from any address.
        actor
            .send(admit([10, 0, 0, 1], "alice"))
            .await
            .unwrap()
            .unwrap();
        for _ in 0..6 {
            actor.send(fail()).await.unwrap();
        }
        let blocked = actor.send(admit([10, 0, 0, 2], "alice")).await.unwrap();
        assert!(
            matches!(blocked, Err(ApiError::TooManyRequests(_))),
            "{blocked:?}"
        );
        // The cap (300 ms) ends the lockout however many failures came first.
        actix_rt::time::sleep(Duration::from_millis(320)).await;
        actor
            .send(admit([10, 0, 0, 3], "alice"))
            .await
            .unwrap()
            .unwrap();
    }

    #[actix_rt::test]
    async fn success_clears_username_failures() {
        let actor = RateLimitActor::new(settings()).start();
        for _ in 0..3 {
            actor
                .send(Outcome {
                    username: "bob".into(),
                    failed: true,
                })
                .await
                .unwrap();
        }
        actix_rt::time::sleep(Duration::from_millis(120)).await;
        actor
            .send(Outcome {
                username: "bob".into(),
                failed: false,
            })
            .await
            .unwrap();
        actor
            .send(Outcome {
                username: "bob".into(),
                failed: true,
            })
            .await
            .unwrap();
        actor
            .send(admit([10, 0, 0, 1], "bob"))
            .await
            .unwrap()
            .unwrap();
    }
}
