//! Actors of the daemon. Each owns its state and is reached only through its
//! mailbox.

pub mod card;
pub mod counter;
pub mod enrollments;
pub mod operations;
pub mod session_cache;
pub mod sessions;
pub mod upstream;
