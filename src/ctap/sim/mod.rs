//! (placeholder)
pub mod udp;
