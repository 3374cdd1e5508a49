//! The card layer: CTAPHID framing, transports, CTAP2 commands and their
//! verification, and the simulated card.
//!
//! Layers from the wire up:
//! - [`frame`]: pure codec for 64-byte CTAPHID reports (no I/O);
//! - [`transport`]: the narrow packet trait and its implementations
//!   (hidapi, UDP, in-process simulator);
//! - [`device`]: the CTAPHID protocol over a transport (INIT, CBOR requests,
//!   keepalives, cancel, deadlines);
//! - [`cbor`], [`status`], [`get_info`], [`make_credential`],
//!   [`get_assertion`]: CTAP2 requests and responses;
//! - [`auth_data`], [`cose`], [`attestation`], [`verify`]: what the relying
//!   party checks;
//! - [`sim`]: a simulated card that behaves like the ChromeCard.

pub mod attestation;
pub mod auth_data;
pub mod cbor;
pub mod cose;
pub mod device;
pub mod frame;
pub mod get_assertion;
pub mod get_info;
pub mod make_credential;
pub mod sim;
pub mod status;
pub mod transport;
pub mod verify;
