//! A simulated ChromeCard.
//!
//! The simulation has two halves so that each can be tested alone:
//! - [`authenticator`]: the CTAP2 side (getInfo, makeCredential,
//!   getAssertion, the wrapped credential keys and the persisted sign count);
//! - [`engine`]: the CTAPHID side (channels, INIT, PING, WINK, keepalives,
//!   CANCEL and the simulated person's presence policy), which drives any
//!   [`Ctap2Handler`].
//!
//! [`udp`] serves the engine over UDP for the `card-sim` command.

pub mod authenticator;
pub mod engine;
pub mod udp;

/// The next step of a CTAP2 request after it has been parsed and checked.
#[derive(Debug)]
pub enum Step<P> {
    /// The response is ready: a status byte followed by the CBOR map, if any.
    Done(Vec<u8>),
    /// The request is valid and waits for the person at the card.
    NeedsPresence(P),
}

/// Outcome of the wait for the person at the card.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PresenceOutcome {
    Approved,
    /// The person pressed No (CTAP2 status 0x27).
    Denied,
    /// The person did not respond in time (CTAP2 status 0x2F).
    TimedOut,
    /// The host sent CTAPHID CANCEL (CTAP2 status 0x2D).
    Cancelled,
}

/// The CTAP2 half of a simulated card, driven by the CTAPHID engine.
pub trait Ctap2Handler: Send + 'static {
    /// A request that was accepted and waits for presence.
    type Pending: Send;

    /// Handles one CTAPHID CBOR message: a command byte followed by its
    /// CBOR parameters.
    fn begin(&mut self, request: &[u8]) -> Step<Self::Pending>;

    /// Finishes a request after the presence wait; returns the status byte
    /// and the CBOR response map, if any.
    fn complete(&mut self, pending: Self::Pending, outcome: PresenceOutcome) -> Vec<u8>;
}
