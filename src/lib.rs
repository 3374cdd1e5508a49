//! cardgate guards a protected service with a FIDO2 card.
//!
//! One binary has three roles: `server` owns the protected counter behind
//! mutual TLS, `proxy` talks to the card, keeps sessions and forwards
//! authorized calls to the server, and `card-sim` is a simulated card that
//! speaks CTAPHID over UDP. Everything except argument parsing lives in this
//! library so that tests can start each part in-process.

pub mod actors;
pub mod audit;
pub mod bringup;
pub mod certs;
pub mod cli;
pub mod client;
pub mod config;
pub mod ctap;
pub mod demo;
pub mod domain;
pub mod error;
pub mod http;
pub mod loadtest;
pub mod metrics;
pub mod preflight;
pub mod rng;
pub mod shutdown;
pub mod telemetry;
pub mod tls;
