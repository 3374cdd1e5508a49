//! HTTP front ends of the two network roles.

pub mod proxy;
pub mod server;
