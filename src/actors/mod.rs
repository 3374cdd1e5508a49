//! Actors of the daemon. Each owns its state and is reached only through its
//! mailbox.

pub mod audit;
pub mod card;
pub mod counter;
pub mod counter_store;
pub mod enrollments;
pub mod operations;
pub mod ratelimit;
pub mod session_cache;
pub mod sessions;
pub mod upstream;

/// Mailbox capacity of the actors that each HTTP worker owns (session
/// cache, upstream link). Each request in flight on a worker may queue one
/// message. Past actix's default capacity of 16 a sender is parked and
/// woken again, which costs time on the hot path. Past this capacity
/// senders wait as well, so the queue stays bounded.
pub const WORKER_MAILBOX_CAPACITY: usize = 4096;
