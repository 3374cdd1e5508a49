//! CTAPHID framing: splits a message into 64-byte reports and reassembles
//! reports into a message. Pure code with no I/O.
//!
//! An initialization packet is `CID (4) | CMD with bit 7 set (1) | BCNT
//! big-endian (2) | 57 data bytes`; a continuation packet is `CID (4) | SEQ
//! 0..=0x7F (1) | 59 data bytes`. A message therefore carries at most
//! 57 + 128 × 59 = 7609 bytes. The CID is an opaque 4-byte value; here it is
//! a `u32` read big-endian, so `{:08x}` prints it in wire order.

use std::fmt;

/// Length of one CTAPHID report, without the hidraw report-ID byte.
pub const REPORT_LEN: usize = 64;
/// Header length of an initialization packet: CID, CMD and BCNT.
pub const INIT_HEADER_LEN: usize = 7;
/// Header length of a continuation packet: CID and SEQ.
pub const CONT_HEADER_LEN: usize = 5;
/// Message bytes carried by an initialization packet.
pub const INIT_DATA: usize = REPORT_LEN - INIT_HEADER_LEN;
/// Message bytes carried by a continuation packet.
pub const CONT_DATA: usize = REPORT_LEN - CONT_HEADER_LEN;
/// Highest continuation sequence number; bit 7 marks initialization packets.
pub const MAX_SEQ: u8 = 0x7f;
/// Largest message one initialization and 128 continuation packets carry.
pub const MAX_MESSAGE: usize = INIT_DATA + (MAX_SEQ as usize + 1) * CONT_DATA;
/// The broadcast channel, used only for INIT before a channel is allocated.
pub const BROADCAST_CID: u32 = 0xffff_ffff;

/// Bit 7 of the fifth byte marks an initialization packet.
const INIT_FLAG: u8 = 0x80;

/// CTAPHID command bytes, without the initialization flag.
pub const PING: u8 = 0x01;
pub const MSG: u8 = 0x03;
pub const INIT: u8 = 0x06;
pub const WINK: u8 = 0x08;
pub const CBOR: u8 = 0x10;
pub const CANCEL: u8 = 0x11;
/// Sent by the device only, while it is busy with a request.
pub const KEEPALIVE: u8 = 0x3b;
/// Sent by the device only; the payload is one [`HidError`] code.
pub const ERROR: u8 = 0x3f;

/// Capability flags in the INIT response.
pub const CAPABILITY_WINK: u8 = 0x01;
pub const CAPABILITY_CBOR: u8 = 0x04;
/// Set when the device does not implement the CTAP1 MSG command.
pub const CAPABILITY_NMSG: u8 = 0x08;

/// KEEPALIVE status bytes.
pub const KEEPALIVE_PROCESSING: u8 = 1;
pub const KEEPALIVE_UP_NEEDED: u8 = 2;

/// Length of the INIT request nonce.
pub const INIT_NONCE_LEN: usize = 8;
/// Length of the INIT response payload.
pub const INIT_RESPONSE_LEN: usize = 17;

/// One 64-byte CTAPHID report.
pub type Report = [u8; REPORT_LEN];

/// Returns the CTAPHID name of a command byte, for logs.
pub fn command_name(cmd: u8) -> &'static str {
    match cmd & !INIT_FLAG {
        PING => "PING",
        MSG => "MSG",
        INIT => "INIT",
        WINK => "WINK",
        CBOR => "CBOR",
        CANCEL => "CANCEL",
        KEEPALIVE => "KEEPALIVE",
        ERROR => "ERROR",
        _ => "unknown",
    }
}

/// A framing error: the bytes do not form valid CTAPHID packets or messages.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("message of {len} bytes exceeds the CTAPHID maximum of {max} bytes")]
    MessageTooLarge { len: usize, max: usize },

    #[error("CTAPHID report has {found} bytes, expected {REPORT_LEN}")]
    ReportLength { found: usize },

    #[error(
        "initialization packet on channel {cid:08x} declares BCNT {bcnt}, \
         above the CTAPHID maximum of {MAX_MESSAGE}"
    )]
    DeclaredLengthTooLarge { cid: u32, bcnt: u16 },

    #[error("continuation packet on channel {cid:08x} has SEQ {found}, expected {expected}")]
    WrongSequence { cid: u32, expected: u8, found: u8 },

    #[error(
        "continuation packet with SEQ {seq} on channel {cid:08x} arrived \
         without an initialization packet"
    )]
    UnexpectedContinuation { cid: u32, seq: u8 },

    #[error(
        "initialization packet for command {cmd:#04x} on channel {cid:08x} \
         interrupted a message that still lacked {missing} bytes"
    )]
    InterruptedMessage { cid: u32, cmd: u8, missing: usize },

    #[error("invalid {structure} length: expected {expected} bytes, found {found}")]
    PayloadLength {
        structure: &'static str,
        expected: usize,
        found: usize,
    },
}

/// Splits a message into reports: one initialization packet and as many
/// continuation packets as needed, unused bytes zero.
///
/// `cmd` may be given with or without the initialization flag. Rejects a
/// payload longer than [`MAX_MESSAGE`].
pub fn encode_message(cid: u32, cmd: u8, payload: &[u8]) -> Result<Vec<Report>, FrameError> {
    let bcnt = u16::try_from(payload.len())
        .ok()
        .filter(|_| payload.len() <= MAX_MESSAGE)
        .ok_or(FrameError::MessageTooLarge {
            len: payload.len(),
            max: MAX_MESSAGE,
        })?;

    let (first, rest) = payload.split_at(payload.len().min(INIT_DATA));
    let mut reports = Vec::with_capacity(1 + rest.len().div_ceil(CONT_DATA));

    let mut report = [0u8; REPORT_LEN];
    report[..4].copy_from_slice(&cid.to_be_bytes());
    report[4] = cmd | INIT_FLAG;
    report[5..INIT_HEADER_LEN].copy_from_slice(&bcnt.to_be_bytes());
    report[INIT_HEADER_LEN..INIT_HEADER_LEN + first.len()].copy_from_slice(first);
    reports.push(report);

    // At most 128 chunks remain because the payload is at most MAX_MESSAGE
    // bytes, so every sequence number fits in 0..=MAX_SEQ.
    for (seq, chunk) in (0..=MAX_SEQ).zip(rest.chunks(CONT_DATA)) {
        let mut report = [0u8; REPORT_LEN];
        report[..4].copy_from_slice(&cid.to_be_bytes());
        report[4] = seq;
        report[CONT_HEADER_LEN..CONT_HEADER_LEN + chunk.len()].copy_from_slice(chunk);
        reports.push(report);
    }
    Ok(reports)
}

/// The first packet of a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InitPacket<'a> {
    pub cid: u32,
    /// The command byte without the initialization flag.
    pub cmd: u8,
    /// The length of the whole message.
    pub bcnt: u16,
    pub data: &'a [u8; INIT_DATA],
}

/// A packet that carries the next part of a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ContinuationPacket<'a> {
    pub cid: u32,
    pub seq: u8,
    pub data: &'a [u8; CONT_DATA],
}

/// One parsed CTAPHID report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Packet<'a> {
    Init(InitPacket<'a>),
    Continuation(ContinuationPacket<'a>),
}

impl<'a> Packet<'a> {
    /// Parses one report. Rejects a report that is not exactly
    /// [`REPORT_LEN`] bytes long.
    pub fn parse(report: &'a [u8]) -> Result<Packet<'a>, FrameError> {
        let report: &[u8; REPORT_LEN] =
            report.try_into().map_err(|_| FrameError::ReportLength {
                found: report.len(),
            })?;
        let [c0, c1, c2, c3, kind, rest @ ..] = report;
        let cid = u32::from_be_bytes([*c0, *c1, *c2, *c3]);

        if kind & INIT_FLAG == 0 {
            return Ok(Packet::Continuation(ContinuationPacket {
                cid,
                seq: *kind,
                data: rest,
            }));
        }
        let [high, low, data @ ..] = rest;
        Ok(Packet::Init(InitPacket {
            cid,
            cmd: kind & !INIT_FLAG,
            bcnt: u16::from_be_bytes([*high, *low]),
            data,
        }))
    }

    pub fn cid(&self) -> u32 {
        match self {
            Packet::Init(p) => p.cid,
            Packet::Continuation(p) => p.cid,
        }
    }
}

/// A complete CTAPHID message.
#[derive(Clone, PartialEq, Eq)]
pub struct Message {
    pub cid: u32,
    /// The command byte without the initialization flag.
    pub cmd: u8,
    pub payload: Vec<u8>,
}

impl fmt::Debug for Message {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Message")
            .field("cid", &format_args!("{:08x}", self.cid))
            .field(
                "cmd",
                &format_args!("{:#04x} ({})", self.cmd, command_name(self.cmd)),
            )
            .field("payload", &hex::encode(&self.payload))
            .finish()
    }
}

/// The outcome of feeding one report to a [`Reassembler`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reassembly {
    /// The report belongs to another channel and was not used.
    Ignored,
    /// The report was used; more continuation packets are needed.
    Incomplete,
    /// The report completed a message.
    Complete(Message),
}

/// Reassembles the messages of one channel, one report at a time.
///
/// Reports of other channels are ignored rather than spliced in. After an
/// error the partial message is dropped and the next report must start a
/// new message.
#[derive(Debug)]
pub struct Reassembler {
    cid: u32,
    partial: Option<Partial>,
}

#[derive(Debug)]
struct Partial {
    cmd: u8,
    expected_len: usize,
    data: Vec<u8>,
    next_seq: u8,
}

impl Reassembler {
    /// Starts reassembling messages of channel `cid`.
    pub fn new(cid: u32) -> Self {
        Reassembler { cid, partial: None }
    }

    pub fn cid(&self) -> u32 {
        self.cid
    }

    /// Returns whether a message has started and still lacks continuation packets.
    pub fn is_in_progress(&self) -> bool {
        self.partial.is_some()
    }

    /// Drops a partial message.
    pub fn reset(&mut self) {
        self.partial = None;
    }

    /// Feeds one report.
    pub fn feed(&mut self, report: &[u8]) -> Result<Reassembly, FrameError> {
        let packet = Packet::parse(report)?;
        if packet.cid() != self.cid {
            return Ok(Reassembly::Ignored);
        }
        match packet {
            Packet::Init(init) => self.start(init),
            Packet::Continuation(cont) => self.extend(cont),
        }
    }

    fn start(&mut self, init: InitPacket<'_>) -> Result<Reassembly, FrameError> {
        if let Some(partial) = self.partial.take() {
            return Err(FrameError::InterruptedMessage {
                cid: self.cid,
                cmd: init.cmd,
                missing: partial.expected_len - partial.data.len(),
            });
        }

        let expected_len = usize::from(init.bcnt);
        if expected_len > MAX_MESSAGE {
            return Err(FrameError::DeclaredLengthTooLarge {
                cid: self.cid,
                bcnt: init.bcnt,
            });
        }

        let (first, _padding) = init.data.split_at(expected_len.min(INIT_DATA));
        if first.len() == expected_len {
            return Ok(Reassembly::Complete(Message {
                cid: self.cid,
                cmd: init.cmd,
                payload: first.to_vec(),
            }));
        }

        let mut data = Vec::with_capacity(expected_len);
        data.extend_from_slice(first);
        self.partial = Some(Partial {
            cmd: init.cmd,
            expected_len,
            data,
            next_seq: 0,
        });
        Ok(Reassembly::Incomplete)
    }

    fn extend(&mut self, cont: ContinuationPacket<'_>) -> Result<Reassembly, FrameError> {
        let Some(partial) = self.partial.as_mut() else {
            return Err(FrameError::UnexpectedContinuation {
                cid: self.cid,
                seq: cont.seq,
            });
        };
        if cont.seq != partial.next_seq {
            let expected = partial.next_seq;
            self.partial = None;
            return Err(FrameError::WrongSequence {
                cid: self.cid,
                expected,
                found: cont.seq,
            });
        }

        let missing = partial.expected_len - partial.data.len();
        let (chunk, _padding) = cont.data.split_at(missing.min(CONT_DATA));
        partial.data.extend_from_slice(chunk);
        // A message of at most MAX_MESSAGE bytes completes by SEQ 0x7F, so
        // the counter never needs to pass MAX_SEQ while data is missing.
        partial.next_seq = partial.next_seq.wrapping_add(1);

        if partial.data.len() < partial.expected_len {
            return Ok(Reassembly::Incomplete);
        }
        match self.partial.take() {
            Some(done) => Ok(Reassembly::Complete(Message {
                cid: self.cid,
                cmd: done.cmd,
                payload: done.data,
            })),
            None => Ok(Reassembly::Incomplete),
        }
    }
}

/// The payload of a CTAPHID INIT response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InitResponse {
    /// The nonce of the request this response belongs to.
    pub nonce: [u8; INIT_NONCE_LEN],
    /// The channel allocated to the host.
    pub cid: u32,
    /// CTAPHID protocol version; 2 for CTAP 2.x devices.
    pub protocol_version: u8,
    /// Device version as major, minor, build.
    pub device_version: [u8; 3],
    /// Bit set of `CAPABILITY_*` flags.
    pub capabilities: u8,
}

impl InitResponse {
    /// Parses the 17-byte payload of an INIT response.
    pub fn parse(payload: &[u8]) -> Result<InitResponse, FrameError> {
        let payload: &[u8; INIT_RESPONSE_LEN] =
            payload.try_into().map_err(|_| FrameError::PayloadLength {
                structure: "INIT response",
                expected: INIT_RESPONSE_LEN,
                found: payload.len(),
            })?;
        let [n0, n1, n2, n3, n4, n5, n6, n7, c0, c1, c2, c3, protocol_version, major, minor, build, capabilities] =
            *payload;
        Ok(InitResponse {
            nonce: [n0, n1, n2, n3, n4, n5, n6, n7],
            cid: u32::from_be_bytes([c0, c1, c2, c3]),
            protocol_version,
            device_version: [major, minor, build],
            capabilities,
        })
    }

    /// Encodes the payload of an INIT response.
    pub fn encode(&self) -> [u8; INIT_RESPONSE_LEN] {
        let mut out = [0u8; INIT_RESPONSE_LEN];
        out[..8].copy_from_slice(&self.nonce);
        out[8..12].copy_from_slice(&self.cid.to_be_bytes());
        out[12] = self.protocol_version;
        out[13..16].copy_from_slice(&self.device_version);
        out[16] = self.capabilities;
        out
    }

    pub fn supports_wink(&self) -> bool {
        self.capabilities & CAPABILITY_WINK != 0
    }

    pub fn supports_cbor(&self) -> bool {
        self.capabilities & CAPABILITY_CBOR != 0
    }

    /// Returns whether the device implements the CTAP1 MSG command.
    pub fn supports_msg(&self) -> bool {
        self.capabilities & CAPABILITY_NMSG == 0
    }
}

/// A CTAPHID ERROR code, sent by the device in place of a response.
///
/// These share numbers with CTAP2 status codes but belong to the transport:
/// they report a wrong framing or channel, not a wrong CTAP2 request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum HidError {
    /// 0x01: the command is not known.
    InvalidCommand,
    /// 0x02: a parameter of the command is invalid.
    InvalidParameter,
    /// 0x03: BCNT is invalid for the command.
    InvalidLength,
    /// 0x04: a continuation packet arrived out of sequence.
    InvalidSequence,
    /// 0x05: the message was not completed in time.
    MessageTimeout,
    /// 0x06: the device is busy with another channel's request.
    ChannelBusy,
    /// 0x0A: the command needs a channel lock.
    LockRequired,
    /// 0x0B: the channel is not allocated or not allowed for the command.
    InvalidChannel,
    /// 0x7F: an unspecified error.
    Other,
    /// A code CTAPHID does not define.
    Unknown(u8),
}

impl HidError {
    pub fn from_code(code: u8) -> HidError {
        match code {
            0x01 => HidError::InvalidCommand,
            0x02 => HidError::InvalidParameter,
            0x03 => HidError::InvalidLength,
            0x04 => HidError::InvalidSequence,
            0x05 => HidError::MessageTimeout,
            0x06 => HidError::ChannelBusy,
            0x0a => HidError::LockRequired,
            0x0b => HidError::InvalidChannel,
            0x7f => HidError::Other,
            other => HidError::Unknown(other),
        }
    }

    pub fn code(self) -> u8 {
        match self {
            HidError::InvalidCommand => 0x01,
            HidError::InvalidParameter => 0x02,
            HidError::InvalidLength => 0x03,
            HidError::InvalidSequence => 0x04,
            HidError::MessageTimeout => 0x05,
            HidError::ChannelBusy => 0x06,
            HidError::LockRequired => 0x0a,
            HidError::InvalidChannel => 0x0b,
            HidError::Other => 0x7f,
            HidError::Unknown(code) => code,
        }
    }

    /// Parses the payload of an ERROR message, which is one code byte.
    pub fn parse(payload: &[u8]) -> Result<HidError, FrameError> {
        match payload {
            [code] => Ok(HidError::from_code(*code)),
            _ => Err(FrameError::PayloadLength {
                structure: "ERROR message",
                expected: 1,
                found: payload.len(),
            }),
        }
    }
}

impl fmt::Display for HidError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let text = match self {
            HidError::InvalidCommand => "invalid command",
            HidError::InvalidParameter => "invalid parameter",
            HidError::InvalidLength => "invalid length",
            HidError::InvalidSequence => "invalid sequence",
            HidError::MessageTimeout => "message timed out",
            HidError::ChannelBusy => "channel busy",
            HidError::LockRequired => "lock required",
            HidError::InvalidChannel => "invalid channel",
            HidError::Other => "other error",
            HidError::Unknown(_) => "unknown error",
        };
        write!(f, "CTAPHID error {:#04x} ({text})", self.code())
    }
}

impl std::error::Error for HidError {}

#[cfg(test)]
mod tests {
    use super::*;

    const CID: u32 = 0x0022_0002;

    fn payload(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i % 251) as u8).collect()
    }

    fn reassemble(reports: &[Report]) -> Result<Message, FrameError> {
        let mut reassembler = Reassembler::new(CID);
        for report in reports {
            if let Reassembly::Complete(message) = reassembler.feed(report)? {
                return Ok(message);
            }
        }
        panic!("message incomplete after {} reports", reports.len());
    }

    #[test]
    fn constants_match_ctaphid() {
        assert_eq!(INIT_DATA, 57);
        assert_eq!(CONT_DATA, 59);
        assert_eq!(MAX_MESSAGE, 7609);
    }

    #[test]
    fn encode_57_bytes_fits_one_report() {
        let reports = encode_message(CID, CBOR, &payload(57)).unwrap();
        assert_eq!(reports.len(), 1);
        assert_eq!(&reports[0][..7], &[0x00, 0x22, 0x00, 0x02, 0x90, 0x00, 57]);
        assert_eq!(&reports[0][7..], &payload(57)[..]);
    }

    #[test]
    fn encode_58_bytes_spans_two_reports() {
        let data = payload(58);
        let reports = encode_message(CID, CBOR, &data).unwrap();
        assert_eq!(reports.len(), 2);
        assert_eq!(&reports[0][..7], &[0x00, 0x22, 0x00, 0x02, 0x90, 0x00, 58]);
        assert_eq!(&reports[0][7..], &data[..57]);
        assert_eq!(&reports[1][..6], &[0x00, 0x22, 0x00, 0x02, 0x00, data[57]]);
        assert!(reports[1][6..].iter().all(|b| *b == 0), "padding is zero");
    }

    #[test]
    fn encode_empty_payload_is_one_report() {
        let reports = encode_message(BROADCAST_CID, WINK, &[]).unwrap();
        assert_eq!(reports.len(), 1);
        assert_eq!(&reports[0][..7], &[0xff, 0xff, 0xff, 0xff, 0x88, 0, 0]);
        assert!(reports[0][7..].iter().all(|b| *b == 0));
    }

    #[test]
    fn encode_accepts_max_message() {
        let reports = encode_message(CID, CBOR, &payload(MAX_MESSAGE)).unwrap();
        assert_eq!(reports.len(), 129);
        assert_eq!(&reports[0][5..7], &[0x1d, 0xb9]);
        assert_eq!(reports[128][4], MAX_SEQ);
    }

    #[test]
    fn encode_rejects_one_byte_over_max() {
        let error = encode_message(CID, CBOR, &payload(MAX_MESSAGE + 1)).unwrap_err();
        assert_eq!(
            error,
            FrameError::MessageTooLarge {
                len: 7610,
                max: 7609
            }
        );
    }

    #[test]
    fn encode_keeps_command_with_init_flag() {
        let reports = encode_message(CID, PING | 0x80, &[1]).unwrap();
        assert_eq!(reports[0][4], 0x81);
    }

    #[test]
    fn reassembly_round_trips_boundary_sizes() {
        for len in [
            0,
            1,
            56,
            57,
            58,
            115,
            116,
            117,
            1043,
            MAX_MESSAGE - 1,
            MAX_MESSAGE,
        ] {
            let data = payload(len);
            let reports = encode_message(CID, CBOR, &data).unwrap();
            let message = reassemble(&reports).unwrap();
            assert_eq!(message.cmd, CBOR, "len {len}");
            assert_eq!(message.payload, data, "len {len}");
        }
    }

    #[test]
    fn reassembly_rejects_wrong_sequence() {
        let mut reports = encode_message(CID, CBOR, &payload(200)).unwrap();
        reports[2][4] = 2;
        let mut reassembler = Reassembler::new(CID);
        assert_eq!(reassembler.feed(&reports[0]), Ok(Reassembly::Incomplete));
        assert_eq!(reassembler.feed(&reports[1]), Ok(Reassembly::Incomplete));
        assert_eq!(
            reassembler.feed(&reports[2]),
            Err(FrameError::WrongSequence {
                cid: CID,
                expected: 1,
                found: 2
            })
        );
        assert!(!reassembler.is_in_progress(), "partial message dropped");
    }

    #[test]
    fn reassembly_ignores_other_channel() {
        let ours = encode_message(CID, CBOR, &payload(100)).unwrap();
        let theirs = encode_message(0x0092_000e, CBOR, &payload(100)).unwrap();
        let mut reassembler = Reassembler::new(CID);
        assert_eq!(reassembler.feed(&ours[0]), Ok(Reassembly::Incomplete));
        assert_eq!(reassembler.feed(&theirs[0]), Ok(Reassembly::Ignored));
        assert_eq!(reassembler.feed(&theirs[1]), Ok(Reassembly::Ignored));
        let Ok(Reassembly::Complete(message)) = reassembler.feed(&ours[1]) else {
            panic!("our continuation packet completes the message");
        };
        assert_eq!(message.payload, payload(100));
    }

    #[test]
    fn reassembly_rejects_truncated_report() {
        let report = encode_message(CID, PING, &[1, 2, 3]).unwrap()[0];
        let mut reassembler = Reassembler::new(CID);
        assert_eq!(
            reassembler.feed(&report[..63]),
            Err(FrameError::ReportLength { found: 63 })
        );
        assert_eq!(
            reassembler.feed(&[]),
            Err(FrameError::ReportLength { found: 0 })
        );
    }

    #[test]
    fn reassembly_rejects_oversized_report() {
        let mut report = encode_message(CID, PING, &[1]).unwrap()[0].to_vec();
        report.push(0);
        assert_eq!(
            Reassembler::new(CID).feed(&report),
            Err(FrameError::ReportLength { found: 65 })
        );
    }

    #[test]
    fn reassembly_rejects_declared_length_over_max() {
        let mut report = [0u8; REPORT_LEN];
        report[..4].copy_from_slice(&CID.to_be_bytes());
        report[4] = 0x90;
        report[5..7].copy_from_slice(&7610u16.to_be_bytes());
        assert_eq!(
            Reassembler::new(CID).feed(&report),
            Err(FrameError::DeclaredLengthTooLarge {
                cid: CID,
                bcnt: 7610
            })
        );
    }

    #[test]
    fn reassembly_rejects_continuation_without_init() {
        let reports = encode_message(CID, CBOR, &payload(100)).unwrap();
        assert_eq!(
            Reassembler::new(CID).feed(&reports[1]),
            Err(FrameError::UnexpectedContinuation { cid: CID, seq: 0 })
        );
    }

    #[test]
    fn reassembly_rejects_init_inside_message() {
        let reports = encode_message(CID, CBOR, &payload(100)).unwrap();
        let keepalive = encode_message(CID, KEEPALIVE, &[KEEPALIVE_UP_NEEDED]).unwrap();
        let mut reassembler = Reassembler::new(CID);
        assert_eq!(reassembler.feed(&reports[0]), Ok(Reassembly::Incomplete));
        assert_eq!(
            reassembler.feed(&keepalive[0]),
            Err(FrameError::InterruptedMessage {
                cid: CID,
                cmd: KEEPALIVE,
                missing: 43
            })
        );
    }

    #[test]
    fn packet_parse_splits_header_fields() {
        let report = encode_message(CID, KEEPALIVE, &[2]).unwrap()[0];
        let Ok(Packet::Init(init)) = Packet::parse(&report) else {
            panic!("an initialization packet");
        };
        assert_eq!(init.cid, CID);
        assert_eq!(init.cmd, KEEPALIVE);
        assert_eq!(init.bcnt, 1);
        assert_eq!(init.data[0], 2);
    }

    #[test]
    fn init_response_round_trips() {
        let response = InitResponse {
            nonce: [1, 2, 3, 4, 5, 6, 7, 8],
            cid: 0xdead_beef,
            protocol_version: 2,
            device_version: [1, 0, 0],
            capabilities: CAPABILITY_WINK | CAPABILITY_CBOR,
        };
        let encoded = response.encode();
        assert_eq!(hex::encode(encoded), "0102030405060708deadbeef0201000005");
        assert_eq!(InitResponse::parse(&encoded), Ok(response));
        assert!(response.supports_cbor());
        assert!(response.supports_wink());
        assert!(response.supports_msg());
    }

    #[test]
    fn init_response_rejects_wrong_length() {
        for len in [0, 16, 18] {
            assert_eq!(
                InitResponse::parse(&vec![0; len]),
                Err(FrameError::PayloadLength {
                    structure: "INIT response",
                    expected: 17,
                    found: len
                }),
                "len {len}"
            );
        }
    }

    #[test]
    fn hid_error_codes_round_trip_for_all_bytes() {
        for code in 0..=u8::MAX {
            assert_eq!(HidError::from_code(code).code(), code);
        }
        assert_eq!(HidError::from_code(0x06), HidError::ChannelBusy);
        assert_eq!(HidError::from_code(0x0b), HidError::InvalidChannel);
        assert_eq!(HidError::from_code(0x27), HidError::Unknown(0x27));
    }

    #[test]
    fn hid_error_payload_must_be_one_byte() {
        assert_eq!(HidError::parse(&[0x06]), Ok(HidError::ChannelBusy));
        assert!(HidError::parse(&[]).is_err());
        assert!(HidError::parse(&[0x06, 0x00]).is_err());
    }
}
