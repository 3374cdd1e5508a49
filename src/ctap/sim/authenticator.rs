//! Temporary stand-in for the CTAP2 half of the simulated card, so that the
//! CTAPHID half compiles and can be run. It returns a fixed getInfo response
//! and status 0x01 (invalid command) for every other request.

use std::io;
use std::path::Path;

use super::{Ctap2Handler, PresenceOutcome, Step};

/// The authenticatorGetInfo command byte.
const GET_INFO: u8 = 0x04;

/// Status 0x00 and the getInfo map of the ChromeCard: versions
/// `["FIDO_2_0"]`, aaguid 1234567890abcdef0123456789abcdef, options
/// `{rk: false, up: true, uv: true}`, maxMsgSize 1024.
const GET_INFO_RESPONSE_HEX: &str = "00a40181684649444f5f325f3003501234567890abcdef0123456789abcdef04a362726bf4627570f5627576f505190400";

/// CTAP1/CTAP2 status 0x01: the command is not supported.
const INVALID_COMMAND: u8 = 0x01;

/// A simulated authenticator that implements only getInfo.
#[derive(Debug, Default)]
pub struct SimAuthenticator;

impl SimAuthenticator {
    /// Opens the simulated authenticator; this stand-in keeps no state, so
    /// `state_dir` is not used.
    pub fn open(_state_dir: Option<&Path>) -> io::Result<Self> {
        Ok(SimAuthenticator)
    }
}

impl Ctap2Handler for SimAuthenticator {
    type Pending = ();

    fn begin(&mut self, request: &[u8]) -> Step<()> {
        if request == [GET_INFO] {
            let response = hex::decode(GET_INFO_RESPONSE_HEX).unwrap_or_default();
            return Step::Done(response);
        }
        Step::Done(vec![INVALID_COMMAND])
    }

    fn complete(&mut self, _pending: (), _outcome: PresenceOutcome) -> Vec<u8> {
        vec![INVALID_COMMAND]
    }
}
