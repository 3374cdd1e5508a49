//! Actors of the daemon. Each owns its state and is reached only through its
//! mailbox.

pub mod audit;
pub mod card;
pub mod counter;
pub mod enrollments;
pub mod operations;
pub mod ratelimit;
pub mod sessions;
pub mod upstream;
