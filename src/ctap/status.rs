//! CTAP2 status codes and the split of a response into status and body.
//!
//! Every CTAP2 response starts with one status byte. The codes below are
//! the CTAP 2.1 table, plus the few that CTAP 2.0 and its drafts defined
//! and CTAP 2.1 later reserved, because older cards still send them.

use std::fmt;

use crate::ctap::cbor::ParseError;

/// Defines `CtapStatus` with one named variant per status byte and the
/// tables that map between variant, byte and description.
macro_rules! ctap_statuses {
    ($($(#[$meta:meta])* $name:ident = $code:literal, $description:literal;)*) => {
        /// A CTAP2 status byte.
        ///
        /// Every byte converts: named codes to their variant, the
        /// extension range 0xE0..=0xEF to [`CtapStatus::Extension`], the
        /// vendor range 0xF0..=0xFF to [`CtapStatus::Vendor`], and every
        /// other byte to [`CtapStatus::Unknown`].
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum CtapStatus {
            $($(#[$meta])* $name,)*
            /// An extension-specific error (0xE0..=0xEF).
            Extension(u8),
            /// A vendor-specific error (0xF0..=0xFF).
            Vendor(u8),
            /// A byte that no CTAP version defines.
            Unknown(u8),
        }

        impl CtapStatus {
            /// Returns the status byte.
            pub fn code(&self) -> u8 {
                match self {
                    $(CtapStatus::$name => $code,)*
                    CtapStatus::Extension(code)
                    | CtapStatus::Vendor(code)
                    | CtapStatus::Unknown(code) => *code,
                }
            }

            /// Returns a sentence for a person: what happened and, where
            /// there is something to do, what to do next.
            pub fn description(&self) -> &'static str {
                match self {
                    $(CtapStatus::$name => $description,)*
                    CtapStatus::Extension(_) => {
                        "the card reported an error in one of its extensions; \
                         retry without extensions"
                    }
                    CtapStatus::Vendor(_) => {
                        "the card reported a vendor-specific error; see the card maker's \
                         documentation, and replug the card if it persists"
                    }
                    CtapStatus::Unknown(_) => {
                        "the card returned a status byte that no CTAP version defines; \
                         replug the card and retry"
                    }
                }
            }
        }

        impl From<u8> for CtapStatus {
            fn from(code: u8) -> Self {
                match code {
                    $($code => CtapStatus::$name,)*
                    0xe0..=0xef => CtapStatus::Extension(code),
                    0xf0..=0xff => CtapStatus::Vendor(code),
                    _ => CtapStatus::Unknown(code),
                }
            }
        }
    };
}

ctap_statuses! {
    Success = 0x00, "the card completed the request";
    InvalidCommand = 0x01, "the card does not support this command";
    InvalidParameter = 0x02, "the card rejected a parameter of the request";
    InvalidLength = 0x03, "the card rejected the length of the request";
    InvalidSeq = 0x04, "the card received CTAPHID frames out of sequence; retry the request";
    Timeout = 0x05, "the card timed out waiting for the rest of the request; retry it";
    ChannelBusy = 0x06, "the card is busy with another request; retry shortly";
    LockRequired = 0x0a, "the card requires a channel lock for this command";
    InvalidChannel = 0x0b, "the card does not know this channel; re-initialise it and retry";
    /// Defined by CTAP 2.0 drafts and reserved since.
    CborParsing = 0x10, "the card could not parse the CBOR of the request";
    CborUnexpectedType = 0x11, "the card found a CBOR value of the wrong type in the request";
    InvalidCbor = 0x12, "the card could not decode the CBOR of the request";
    /// Defined by CTAP 2.0 drafts and reserved since.
    InvalidCborType = 0x13, "the card found an invalid CBOR type in the request";
    MissingParameter = 0x14, "the request lacks a parameter the card requires";
    LimitExceeded = 0x15, "the request has more items than the card accepts";
    /// Defined by CTAP 2.0 and reserved since CTAP 2.1.
    UnsupportedExtension = 0x16, "the card does not support a requested extension";
    FpDatabaseFull = 0x17, "the card's fingerprint store is full; remove a fingerprint";
    LargeBlobStorageFull = 0x18, "the card's large-blob store is full";
    CredentialExcluded = 0x19, "the card already holds a credential for this account; \
        use the existing one";
    Processing = 0x21, "the card is still processing the request";
    InvalidCredential = 0x22, "the card rejected the credential as not valid for it";
    UserActionPending = 0x23, "the card is waiting for the person at it to act";
    OperationPending = 0x24, "the card is busy with a long operation; retry shortly";
    NoOperations = 0x25, "the card has no pending operation";
    UnsupportedAlgorithm = 0x26, "the card supports none of the requested algorithms";
    OperationDenied = 0x27, "the person at the card declined";
    KeyStoreFull = 0x28, "the card's credential store is full";
    /// Defined by CTAP 2.0 and reserved since CTAP 2.1.
    NotBusy = 0x29, "the card is not busy";
    NoOperationPending = 0x2a, "the card has no pending operation to act on";
    UnsupportedOption = 0x2b, "the card does not support an option in the request";
    InvalidOption = 0x2c, "an option in the request is not valid for this command";
    KeepaliveCancel = 0x2d, "the request was cancelled before the card finished it";
    NoCredentials = 0x2e, "the card holds none of the credentials allowed for this request; \
        enroll this card first";
    UserActionTimeout = 0x2f, "nobody answered at the card in time; retry and press the button";
    NotAllowed = 0x30, "the card does not allow this command in its current state";
    PinInvalid = 0x31, "the PIN was wrong";
    PinBlocked = 0x32, "the card's PIN is blocked; reset the card";
    PinAuthInvalid = 0x33, "the card rejected the PIN/UV authentication of the request";
    PinAuthBlocked = 0x34, "PIN/UV authentication is blocked until the card is replugged";
    PinNotSet = 0x35, "the card has no PIN set";
    PuatRequired = 0x36, "the card requires a PIN/UV auth token for this request";
    PinPolicyViolation = 0x37, "the new PIN does not meet the card's PIN policy";
    /// Defined by CTAP 2.0 and reserved since CTAP 2.1.
    PinTokenExpired = 0x38, "the card's PIN token has expired; get a new one";
    RequestTooLarge = 0x39, "the request is larger than the card accepts";
    ActionTimeout = 0x3a, "the card's action timed out; retry";
    UpRequired = 0x3b, "the card requires the person at it to confirm presence";
    UvBlocked = 0x3c, "the card's built-in user verification is blocked; use the PIN";
    IntegrityFailure = 0x3d, "the card's integrity check failed";
    InvalidSubcommand = 0x3e, "the card does not support this subcommand";
    UvInvalid = 0x3f, "the card's built-in user verification did not recognise the person";
    UnauthorizedPermission = 0x40, "the PIN/UV auth token lacks the permission for this request";
    Other = 0x7f, "the card reported an unspecified error; replug the card and retry";
    SpecLast = 0xdf, "the card returned the reserved last-spec-error code";
}

impl CtapStatus {
    pub fn is_success(&self) -> bool {
        *self == CtapStatus::Success
    }
}

impl fmt::Display for CtapStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} (CTAP2 status 0x{:02X})",
            self.description(),
            self.code()
        )
    }
}

/// The reason a CTAP2 response could not be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CtapError {
    /// The card returned a non-zero status byte.
    #[error("{0}")]
    Status(CtapStatus),
    /// The response body could not be decoded.
    #[error("invalid response from the card: {0}")]
    Parse(#[from] ParseError),
    /// The response had no status byte at all.
    #[error("the card returned an empty response")]
    EmptyResponse,
}

/// Splits a CTAP2 response into its status byte and CBOR body and returns
/// the body when the status is success.
pub fn split_status(response: &[u8]) -> Result<&[u8], CtapError> {
    let (&status, body) = response.split_first().ok_or(CtapError::EmptyResponse)?;
    match CtapStatus::from(status) {
        CtapStatus::Success => Ok(body),
        failure => Err(CtapError::Status(failure)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_byte_round_trips() {
        for byte in 0..=u8::MAX {
            assert_eq!(CtapStatus::from(byte).code(), byte, "byte 0x{byte:02x}");
        }
    }

    #[test]
    fn every_byte_has_a_description() {
        for byte in 0..=u8::MAX {
            let description = CtapStatus::from(byte).description();
            assert!(!description.is_empty(), "byte 0x{byte:02x}");
            assert!(
                !description.ends_with('.'),
                "byte 0x{byte:02x}: {description}"
            );
        }
    }

    #[test]
    fn named_codes_map_to_their_variants() {
        let cases = [
            (0x00, CtapStatus::Success),
            (0x01, CtapStatus::InvalidCommand),
            (0x12, CtapStatus::InvalidCbor),
            (0x14, CtapStatus::MissingParameter),
            (0x19, CtapStatus::CredentialExcluded),
            (0x26, CtapStatus::UnsupportedAlgorithm),
            (0x27, CtapStatus::OperationDenied),
            (0x2b, CtapStatus::UnsupportedOption),
            (0x2c, CtapStatus::InvalidOption),
            (0x2d, CtapStatus::KeepaliveCancel),
            (0x2e, CtapStatus::NoCredentials),
            (0x2f, CtapStatus::UserActionTimeout),
            (0x36, CtapStatus::PuatRequired),
            (0x40, CtapStatus::UnauthorizedPermission),
            (0x7f, CtapStatus::Other),
            (0xdf, CtapStatus::SpecLast),
        ];
        for (byte, status) in cases {
            assert_eq!(CtapStatus::from(byte), status, "byte 0x{byte:02x}");
        }
    }

    #[test]
    fn ranges_map_to_extension_vendor_and_unknown() {
        assert_eq!(CtapStatus::from(0xe0), CtapStatus::Extension(0xe0));
        assert_eq!(CtapStatus::from(0xef), CtapStatus::Extension(0xef));
        assert_eq!(CtapStatus::from(0xf0), CtapStatus::Vendor(0xf0));
        assert_eq!(CtapStatus::from(0xff), CtapStatus::Vendor(0xff));
        for byte in [0x07, 0x0c, 0x1a, 0x20, 0x41, 0x7e, 0x80, 0xde] {
            assert_eq!(CtapStatus::from(byte), CtapStatus::Unknown(byte));
        }
    }

    #[test]
    fn operation_denied_names_the_person() {
        let text = CtapStatus::OperationDenied.to_string();
        assert_eq!(text, "the person at the card declined (CTAP2 status 0x27)");
    }

    #[test]
    fn split_status_returns_body_on_success() {
        assert_eq!(split_status(&[0x00, 0xa0]), Ok(&[0xa0][..]));
        assert_eq!(split_status(&[0x00]), Ok(&[][..]));
    }

    #[test]
    fn split_status_rejects_failure_and_empty() {
        assert_eq!(
            split_status(&[0x2e]),
            Err(CtapError::Status(CtapStatus::NoCredentials))
        );
        assert_eq!(split_status(&[]), Err(CtapError::EmptyResponse));
    }
}
