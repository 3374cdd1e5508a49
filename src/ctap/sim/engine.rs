//! The CTAPHID half of the simulated card: channel allocation, message
//! reassembly, PING, WINK, CBOR through a [`Ctap2Handler`], KEEPALIVE while a
//! request waits for the simulated person, CANCEL, and the ERROR codes a
//! device sends for invalid input.
//!
//! The engine does no I/O and reads no clock: reports go in through
//! [`Engine::handle_report`], time advances through [`Engine::poll`], and
//! reports come out into a vector. The UDP server and the in-process
//! transport both drive it, and tests drive it with chosen instants.

use std::collections::VecDeque;
use std::fmt;
use std::str::FromStr;
use std::time::{Duration, Instant};

use tracing::{debug, error, info, warn};

use super::{Ctap2Handler, PresenceOutcome, Step};
use crate::ctap::frame::{
    self, command_name, encode_message, HidError, InitResponse, Packet, Reassembler, Reassembly,
    Report, BROADCAST_CID, INIT_NONCE_LEN, MAX_MESSAGE,
};

/// The simulated person's response to a request that needs presence.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Presence {
    /// Approves at once, after one KEEPALIVE "processing".
    Approve,
    /// Presses No at once: the request ends with status 0x27.
    Deny,
    /// Sends KEEPALIVE "up-needed" for this long, then approves.
    Delay(Duration),
    /// Never acts: KEEPALIVE "up-needed" until the user-action timeout,
    /// then status 0x2F.
    Never,
}

impl fmt::Display for Presence {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Presence::Approve => write!(f, "approve"),
            Presence::Deny => write!(f, "deny"),
            Presence::Delay(delay) => write!(f, "delay:{}", delay.as_millis()),
            Presence::Never => write!(f, "never"),
        }
    }
}

/// A presence policy that could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid presence `{value}`: expected approve, deny, delay:MS (milliseconds) or never")]
pub struct ParsePresenceError {
    pub value: String,
}

impl FromStr for Presence {
    type Err = ParsePresenceError;

    fn from_str(value: &str) -> Result<Self, Self::Err> {
        let invalid = || ParsePresenceError {
            value: value.to_string(),
        };
        match value {
            "approve" => Ok(Presence::Approve),
            "deny" => Ok(Presence::Deny),
            "never" => Ok(Presence::Never),
            _ => {
                let millis = value.strip_prefix("delay:").ok_or_else(invalid)?;
                let millis: u64 = millis.parse().map_err(|_| invalid())?;
                Ok(Presence::Delay(Duration::from_millis(millis)))
            }
        }
    }
}

/// How long a request waits for the person before it ends with status 0x2F;
/// 30 s is the user-presence timeout common FIDO2 keys use.
pub const DEFAULT_USER_ACTION_TIMEOUT: Duration = Duration::from_secs(30);
/// Interval between KEEPALIVE reports while a request is pending. CTAPHID
/// requires devices to send one at least this often.
pub const DEFAULT_KEEPALIVE_INTERVAL: Duration = Duration::from_millis(100);
/// How long the engine waits for the next continuation packet before it
/// drops the message with ERROR MSG_TIMEOUT, so a host that stopped mid-way
/// does not lock out other channels. Hosts write all packets back to back,
/// so the margin is wide.
pub const DEFAULT_MESSAGE_TIMEOUT: Duration = Duration::from_secs(2);
/// Allocated channels kept at once; the oldest idle one is forgotten first.
pub const MAX_CHANNELS: usize = 32;
/// CTAPHID protocol version in the INIT response.
pub const PROTOCOL_VERSION: u8 = 2;

/// Settings of the engine; [`EngineConfig::default`] suits the real card's
/// behaviour, tests shorten the timeouts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EngineConfig {
    pub user_action_timeout: Duration,
    pub keepalive_interval: Duration,
    pub message_timeout: Duration,
    /// Device version in the INIT response: major, minor, build.
    pub device_version: [u8; 3],
    /// Capability flags in the INIT response. The engine rejects MSG with
    /// ERROR INVALID_CMD, so NMSG is set.
    pub capabilities: u8,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            user_action_timeout: DEFAULT_USER_ACTION_TIMEOUT,
            keepalive_interval: DEFAULT_KEEPALIVE_INTERVAL,
            message_timeout: DEFAULT_MESSAGE_TIMEOUT,
            device_version: [1, 0, 0],
            capabilities: frame::CAPABILITY_WINK | frame::CAPABILITY_CBOR | frame::CAPABILITY_NMSG,
        }
    }
}

/// A message whose continuation packets are still arriving.
#[derive(Debug)]
struct Assembly {
    reassembler: Reassembler,
    last_packet: Instant,
}

/// A CBOR request that awaits the simulated person.
struct AwaitingPresence<P> {
    cid: u32,
    pending: P,
    started: Instant,
    /// When the wait ends, and how.
    resolve_at: Instant,
    outcome: PresenceOutcome,
    next_keepalive: Instant,
}

/// The CTAPHID state machine of one simulated card.
pub struct Engine<H: Ctap2Handler> {
    handler: H,
    presence: Presence,
    config: EngineConfig,
    /// Allocated channels, oldest first.
    channels: VecDeque<u32>,
    assembly: Option<Assembly>,
    awaiting: Option<AwaitingPresence<H::Pending>>,
}

impl<H: Ctap2Handler> Engine<H> {
    pub fn new(handler: H, presence: Presence, config: EngineConfig) -> Self {
        Engine {
            handler,
            presence,
            config,
            channels: VecDeque::new(),
            assembly: None,
            awaiting: None,
        }
    }

    pub fn presence(&self) -> Presence {
        self.presence
    }

    /// Changes the presence policy. A request already waiting is re-planned
    /// as if the new policy had applied from its start, so `Approve` or
    /// `Deny` ends it now.
    pub fn set_presence(&mut self, presence: Presence, now: Instant, out: &mut Vec<Report>) {
        info!(%presence, "simulated presence changed");
        self.presence = presence;
        if let Some(awaiting) = self.awaiting.take() {
            self.plan_presence(awaiting.cid, awaiting.pending, awaiting.started, now, out);
        }
    }

    /// Forgets all channels and any request in progress, as a card does when
    /// it loses power. A pending CTAP2 request is dropped without an answer.
    pub fn reset(&mut self) {
        self.channels.clear();
        self.assembly = None;
        if let Some(awaiting) = self.awaiting.take() {
            debug!(cid = %format_args!("{:08x}", awaiting.cid), "dropping pending request on reset");
        }
    }

    /// Returns whether a CBOR request waits for the simulated person.
    pub fn is_busy(&self) -> bool {
        self.awaiting.is_some()
    }

    /// The latest instant by which [`Engine::poll`] must run next, if any
    /// timer is armed.
    pub fn next_deadline(&self) -> Option<Instant> {
        let message = self
            .assembly
            .as_ref()
            .map(|a| a.last_packet + self.config.message_timeout);
        let presence = self
            .awaiting
            .as_ref()
            .map(|a| a.resolve_at.min(a.next_keepalive));
        match (message, presence) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Runs the timers: ends a stalled message with ERROR MSG_TIMEOUT, sends
    /// due keepalives and ends a presence wait whose time has come.
    pub fn poll(&mut self, now: Instant, out: &mut Vec<Report>) {
        if let Some(assembly) = &self.assembly {
            if now >= assembly.last_packet + self.config.message_timeout {
                let cid = assembly.reassembler.cid();
                warn!(cid = %format_args!("{cid:08x}"), "message not completed in time");
                self.assembly = None;
                send_error(out, cid, HidError::MessageTimeout);
            }
        }

        let Some(awaiting) = self.awaiting.as_mut() else {
            return;
        };
        if now >= awaiting.resolve_at {
            if let Some(awaiting) = self.awaiting.take() {
                self.finish(awaiting.cid, awaiting.pending, awaiting.outcome, out);
            }
            return;
        }
        if now >= awaiting.next_keepalive {
            send(
                out,
                awaiting.cid,
                frame::KEEPALIVE,
                &[frame::KEEPALIVE_UP_NEEDED],
            );
            awaiting.next_keepalive = now + self.config.keepalive_interval;
        }
    }

    /// Handles one report from the host.
    pub fn handle_report(&mut self, report: &Report, now: Instant, out: &mut Vec<Report>) {
        let packet = match Packet::parse(report) {
            Ok(packet) => packet,
            Err(error) => {
                warn!(%error, "dropping unparsable report");
                return;
            }
        };
        match packet {
            Packet::Continuation(cont) => self.handle_continuation(cont.cid, report, now, out),
            Packet::Init(init) => {
                self.handle_init_packet(init.cid, init.cmd, init.bcnt, report, now, out)
            }
        }
    }

    fn handle_continuation(
        &mut self,
        cid: u32,
        report: &Report,
        now: Instant,
        out: &mut Vec<Report>,
    ) {
        let Some(assembly) = self
            .assembly
            .as_mut()
            .filter(|a| a.reassembler.cid() == cid)
        else {
            debug!(cid = %format_args!("{cid:08x}"), "ignoring continuation packet outside a message");
            return;
        };
        match assembly.reassembler.feed(report) {
            Ok(Reassembly::Incomplete | Reassembly::Ignored) => assembly.last_packet = now,
            Ok(Reassembly::Complete(message)) => {
                self.assembly = None;
                self.dispatch(message, now, out);
            }
            Err(error) => {
                warn!(%error, "dropping message");
                self.assembly = None;
                send_error(out, cid, HidError::InvalidSequence);
            }
        }
    }

    fn handle_init_packet(
        &mut self,
        cid: u32,
        cmd: u8,
        bcnt: u16,
        report: &Report,
        now: Instant,
        out: &mut Vec<Report>,
    ) {
        // INIT is answered even while another channel is busy: it is a single
        // packet and allocating a channel does not disturb a transaction.
        if cmd == frame::INIT {
            return self.handle_init(cid, bcnt, report, out);
        }

        // CANCEL never gets a response of its own.
        if cmd == frame::CANCEL {
            match self.awaiting.take() {
                Some(awaiting) if awaiting.cid == cid => {
                    debug!(cid = %format_args!("{cid:08x}"), "CANCEL ends the pending request");
                    self.finish(
                        awaiting.cid,
                        awaiting.pending,
                        PresenceOutcome::Cancelled,
                        out,
                    );
                }
                other => {
                    self.awaiting = other;
                    debug!(cid = %format_args!("{cid:08x}"), "ignoring CANCEL without a pending request on this channel");
                }
            }
            return;
        }

        if cid == BROADCAST_CID || cid == 0 || !self.channels.contains(&cid) {
            warn!(cid = %format_args!("{cid:08x}"), command = command_name(cmd), "request on an unallocated channel");
            return send_error(out, cid, HidError::InvalidChannel);
        }

        if let Some(assembly) = &self.assembly {
            let busy_cid = assembly.reassembler.cid();
            if busy_cid != cid {
                return send_error(out, cid, HidError::ChannelBusy);
            }
            warn!(cid = %format_args!("{cid:08x}"), "new message before the previous one was complete");
            self.assembly = None;
            return send_error(out, cid, HidError::InvalidSequence);
        }
        if self.awaiting.is_some() {
            return send_error(out, cid, HidError::ChannelBusy);
        }

        if usize::from(bcnt) > MAX_MESSAGE {
            return send_error(out, cid, HidError::InvalidLength);
        }

        let mut reassembler = Reassembler::new(cid);
        match reassembler.feed(report) {
            Ok(Reassembly::Complete(message)) => self.dispatch(message, now, out),
            Ok(_) => {
                self.assembly = Some(Assembly {
                    reassembler,
                    last_packet: now,
                })
            }
            Err(error) => {
                warn!(%error, "dropping message");
                send_error(out, cid, HidError::InvalidLength);
            }
        }
    }

    fn handle_init(&mut self, cid: u32, bcnt: u16, report: &Report, out: &mut Vec<Report>) {
        let Ok(Reassembly::Complete(message)) = Reassembler::new(cid).feed(report) else {
            return send_error(out, cid, HidError::InvalidLength);
        };
        let Ok(nonce) = <[u8; INIT_NONCE_LEN]>::try_from(message.payload.as_slice()) else {
            warn!(bcnt, "INIT with a nonce that is not {INIT_NONCE_LEN} bytes");
            return send_error(out, cid, HidError::InvalidLength);
        };

        let allocated = if cid == BROADCAST_CID {
            self.allocate_channel()
        } else if self.channels.contains(&cid) {
            // INIT on an allocated channel resynchronises it: whatever the
            // channel had in progress is abandoned.
            if self
                .assembly
                .as_ref()
                .is_some_and(|a| a.reassembler.cid() == cid)
            {
                self.assembly = None;
            }
            if self.awaiting.as_ref().is_some_and(|a| a.cid == cid) {
                self.awaiting = None;
                debug!(cid = %format_args!("{cid:08x}"), "INIT abandons the pending request");
            }
            cid
        } else {
            return send_error(out, cid, HidError::InvalidChannel);
        };

        debug!(cid = %format_args!("{cid:08x}"), allocated = %format_args!("{allocated:08x}"), "INIT");
        let response = InitResponse {
            nonce,
            cid: allocated,
            protocol_version: PROTOCOL_VERSION,
            device_version: self.config.device_version,
            capabilities: self.config.capabilities,
        };
        send(out, cid, frame::INIT, &response.encode());
    }

    fn allocate_channel(&mut self) -> u32 {
        let cid = loop {
            let candidate: u32 = rand::random();
            if candidate != 0 && candidate != BROADCAST_CID && !self.channels.contains(&candidate) {
                break candidate;
            }
        };
        let busy = self.awaiting.as_ref().map(|a| a.cid);
        while self.channels.len() >= MAX_CHANNELS {
            match self.channels.iter().position(|c| Some(*c) != busy) {
                Some(oldest) => {
                    self.channels.remove(oldest);
                }
                None => break,
            }
        }
        self.channels.push_back(cid);
        cid
    }

    fn dispatch(&mut self, message: frame::Message, now: Instant, out: &mut Vec<Report>) {
        let cid = message.cid;
        debug!(cid = %format_args!("{cid:08x}"), command = command_name(message.cmd), length = message.payload.len(), "request");
        match message.cmd {
            frame::PING => send(out, cid, frame::PING, &message.payload),
            frame::WINK if message.payload.is_empty() => {
                info!("simulated card winks");
                send(out, cid, frame::WINK, &[]);
            }
            frame::WINK => send_error(out, cid, HidError::InvalidLength),
            frame::CBOR if message.payload.is_empty() => {
                send_error(out, cid, HidError::InvalidLength)
            }
            frame::CBOR => match self.handler.begin(&message.payload) {
                Step::Done(response) => send(out, cid, frame::CBOR, &response),
                Step::NeedsPresence(pending) => self.plan_presence(cid, pending, now, now, out),
            },
            _ => send_error(out, cid, HidError::InvalidCommand),
        }
    }

    /// Applies the presence policy to a request that started at `started`.
    fn plan_presence(
        &mut self,
        cid: u32,
        pending: H::Pending,
        started: Instant,
        now: Instant,
        out: &mut Vec<Report>,
    ) {
        let timeout_at = started + self.config.user_action_timeout;
        let (resolve_at, outcome) = match self.presence {
            Presence::Approve => {
                send(out, cid, frame::KEEPALIVE, &[frame::KEEPALIVE_PROCESSING]);
                return self.finish(cid, pending, PresenceOutcome::Approved, out);
            }
            Presence::Deny => return self.finish(cid, pending, PresenceOutcome::Denied, out),
            Presence::Delay(delay) if started + delay < timeout_at => {
                (started + delay, PresenceOutcome::Approved)
            }
            Presence::Delay(_) | Presence::Never => (timeout_at, PresenceOutcome::TimedOut),
        };
        if now >= resolve_at {
            return self.finish(cid, pending, outcome, out);
        }

        send(out, cid, frame::KEEPALIVE, &[frame::KEEPALIVE_UP_NEEDED]);
        self.awaiting = Some(AwaitingPresence {
            cid,
            pending,
            started,
            resolve_at,
            outcome,
            next_keepalive: now + self.config.keepalive_interval,
        });
    }

    fn finish(
        &mut self,
        cid: u32,
        pending: H::Pending,
        outcome: PresenceOutcome,
        out: &mut Vec<Report>,
    ) {
        debug!(cid = %format_args!("{cid:08x}"), ?outcome, "presence wait ended");
        let response = self.handler.complete(pending, outcome);
        send(out, cid, frame::CBOR, &response);
    }
}

/// Appends the reports of one message; a handler response above the CTAPHID
/// maximum becomes ERROR OTHER.
fn send(out: &mut Vec<Report>, cid: u32, cmd: u8, payload: &[u8]) {
    match encode_message(cid, cmd, payload) {
        Ok(reports) => out.extend(reports),
        Err(error) => {
            error!(%error, command = command_name(cmd), "response cannot be framed");
            send_error(out, cid, HidError::Other);
        }
    }
}

fn send_error(out: &mut Vec<Report>, cid: u32, code: HidError) {
    debug!(cid = %format_args!("{cid:08x}"), %code, "sending ERROR");
    if let Ok(reports) = encode_message(cid, frame::ERROR, &[code.code()]) {
        out.extend(reports);
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::ctap::frame::{Message, CONT_DATA, INIT_DATA};

    /// Status bytes the test handler returns, one per presence outcome.
    pub const APPROVED: u8 = 0x00;
    pub const DENIED: u8 = 0x27;
    pub const TIMED_OUT: u8 = 0x2f;
    pub const CANCELLED: u8 = 0x2d;

    /// authenticatorMakeCredential, which the test handler holds for presence.
    pub const MAKE_CREDENTIAL: u8 = 0x01;
    /// authenticatorGetInfo, which the test handler answers at once.
    pub const GET_INFO: u8 = 0x04;

    /// A CTAP2 handler that answers getInfo at once, holds makeCredential
    /// for presence, and encodes the outcome in the status byte.
    #[derive(Debug, Default)]
    pub struct TestHandler;

    impl Ctap2Handler for TestHandler {
        type Pending = Vec<u8>;

        fn begin(&mut self, request: &[u8]) -> Step<Vec<u8>> {
            match request.first() {
                Some(&GET_INFO) => Step::Done(vec![0x00, 0xa1, 0x01, 0x80]),
                Some(&MAKE_CREDENTIAL) => Step::NeedsPresence(request.to_vec()),
                _ => Step::Done(vec![0x01]),
            }
        }

        fn complete(&mut self, pending: Vec<u8>, outcome: PresenceOutcome) -> Vec<u8> {
            let status = match outcome {
                PresenceOutcome::Approved => APPROVED,
                PresenceOutcome::Denied => DENIED,
                PresenceOutcome::TimedOut => TIMED_OUT,
                PresenceOutcome::Cancelled => CANCELLED,
            };
            let mut response = vec![status];
            if outcome == PresenceOutcome::Approved {
                response.extend_from_slice(&pending);
            }
            response
        }
    }

    fn config() -> EngineConfig {
        EngineConfig {
            user_action_timeout: Duration::from_millis(1000),
            ..EngineConfig::default()
        }
    }

    struct Rig {
        engine: Engine<TestHandler>,
        now: Instant,
    }

    impl Rig {
        fn new(presence: Presence) -> Rig {
            Rig {
                engine: Engine::new(TestHandler, presence, config()),
                now: Instant::now(),
            }
        }

        fn send(&mut self, cid: u32, cmd: u8, payload: &[u8]) -> Vec<Message> {
            let mut out = Vec::new();
            for report in encode_message(cid, cmd, payload).unwrap() {
                self.engine.handle_report(&report, self.now, &mut out);
            }
            decode(&out)
        }

        fn advance(&mut self, by: Duration) -> Vec<Message> {
            self.now += by;
            let mut out = Vec::new();
            self.engine.poll(self.now, &mut out);
            decode(&out)
        }

        fn init(&mut self) -> u32 {
            let nonce = [9, 8, 7, 6, 5, 4, 3, 2];
            let replies = self.send(BROADCAST_CID, frame::INIT, &nonce);
            assert_eq!(replies.len(), 1);
            assert_eq!(replies[0].cid, BROADCAST_CID);
            assert_eq!(replies[0].cmd, frame::INIT);
            let response = InitResponse::parse(&replies[0].payload).unwrap();
            assert_eq!(response.nonce, nonce);
            response.cid
        }
    }

    /// Reassembles the engine's output, message by message.
    fn decode(reports: &[Report]) -> Vec<Message> {
        let mut messages = Vec::new();
        let mut current: Option<Reassembler> = None;
        for report in reports {
            let cid = Packet::parse(report).unwrap().cid();
            let reassembler = current.get_or_insert_with(|| Reassembler::new(cid));
            match reassembler.feed(report).unwrap() {
                Reassembly::Complete(message) => {
                    messages.push(message);
                    current = None;
                }
                Reassembly::Incomplete => {}
                Reassembly::Ignored => panic!("engine interleaved two messages"),
            }
        }
        assert!(current.is_none(), "engine output ends mid-message");
        messages
    }

    fn error_code(message: &Message) -> Option<HidError> {
        (message.cmd == frame::ERROR).then(|| HidError::parse(&message.payload).unwrap())
    }

    fn keepalives(messages: &[Message], status: u8) -> usize {
        messages
            .iter()
            .filter(|m| m.cmd == frame::KEEPALIVE && m.payload == [status])
            .count()
    }

    #[test]
    fn presence_parses_and_displays() {
        for (text, presence) in [
            ("approve", Presence::Approve),
            ("deny", Presence::Deny),
            ("delay:1500", Presence::Delay(Duration::from_millis(1500))),
            ("never", Presence::Never),
        ] {
            assert_eq!(text.parse::<Presence>(), Ok(presence));
            assert_eq!(presence.to_string(), text);
        }
        for bad in ["", "yes", "delay", "delay:", "delay:-1", "delay:1s"] {
            let error = bad.parse::<Presence>().unwrap_err();
            assert!(error.to_string().contains(&format!("`{bad}`")), "{error}");
        }
    }

    #[test]
    fn init_allocates_distinct_channels() {
        let mut rig = Rig::new(Presence::Approve);
        let first = rig.init();
        let second = rig.init();
        assert_ne!(first, second);
        for cid in [first, second] {
            assert_ne!(cid, 0);
            assert_ne!(cid, BROADCAST_CID);
        }
    }

    #[test]
    fn init_reply_carries_version_and_capabilities() {
        let mut rig = Rig::new(Presence::Approve);
        let replies = rig.send(BROADCAST_CID, frame::INIT, &[1; 8]);
        let response = InitResponse::parse(&replies[0].payload).unwrap();
        assert_eq!(response.protocol_version, 2);
        assert_eq!(response.device_version, [1, 0, 0]);
        assert!(response.supports_cbor());
        assert!(response.supports_wink());
        assert!(!response.supports_msg());
    }

    #[test]
    fn init_with_wrong_nonce_length_is_invalid_length() {
        let mut rig = Rig::new(Presence::Approve);
        let replies = rig.send(BROADCAST_CID, frame::INIT, &[1; 7]);
        assert_eq!(error_code(&replies[0]), Some(HidError::InvalidLength));
    }

    #[test]
    fn init_on_allocated_channel_keeps_it() {
        let mut rig = Rig::new(Presence::Approve);
        let cid = rig.init();
        let replies = rig.send(cid, frame::INIT, &[3; 8]);
        assert_eq!(replies[0].cid, cid);
        assert_eq!(InitResponse::parse(&replies[0].payload).unwrap().cid, cid);
    }

    #[test]
    fn ping_echoes_multi_packet_payload() {
        let mut rig = Rig::new(Presence::Approve);
        let cid = rig.init();
        let data: Vec<u8> = (0..300).map(|i| i as u8).collect();
        let replies = rig.send(cid, frame::PING, &data);
        assert_eq!(replies.len(), 1);
        assert_eq!(replies[0].cmd, frame::PING);
        assert_eq!(replies[0].payload, data);
    }

    #[test]
    fn wink_answers_empty_and_rejects_payload() {
        let mut rig = Rig::new(Presence::Approve);
        let cid = rig.init();
        let replies = rig.send(cid, frame::WINK, &[]);
        assert_eq!((replies[0].cmd, replies[0].payload.len()), (frame::WINK, 0));
        let replies = rig.send(cid, frame::WINK, &[1]);
        assert_eq!(error_code(&replies[0]), Some(HidError::InvalidLength));
    }

    #[test]
    fn unknown_channel_is_invalid_channel() {
        let mut rig = Rig::new(Presence::Approve);
        let replies = rig.send(0x1234_5678, frame::PING, &[1]);
        assert_eq!(error_code(&replies[0]), Some(HidError::InvalidChannel));
        let replies = rig.send(BROADCAST_CID, frame::CBOR, &[GET_INFO]);
        assert_eq!(error_code(&replies[0]), Some(HidError::InvalidChannel));
    }

    #[test]
    fn unknown_command_and_msg_are_invalid_command() {
        let mut rig = Rig::new(Presence::Approve);
        let cid = rig.init();
        for cmd in [frame::MSG, 0x22, frame::KEEPALIVE, frame::ERROR] {
            let replies = rig.send(cid, cmd, &[0]);
            assert_eq!(
                error_code(&replies[0]),
                Some(HidError::InvalidCommand),
                "cmd {cmd:#x}"
            );
        }
    }

    #[test]
    fn empty_cbor_is_invalid_length() {
        let mut rig = Rig::new(Presence::Approve);
        let cid = rig.init();
        let replies = rig.send(cid, frame::CBOR, &[]);
        assert_eq!(error_code(&replies[0]), Some(HidError::InvalidLength));
    }

    #[test]
    fn wrong_sequence_is_invalid_seq() {
        let mut rig = Rig::new(Presence::Approve);
        let cid = rig.init();
        let mut reports =
            encode_message(cid, frame::PING, &[7; INIT_DATA + 2 * CONT_DATA]).unwrap();
        reports[2][4] = 5;
        let mut out = Vec::new();
        for report in &reports {
            rig.engine.handle_report(report, rig.now, &mut out);
        }
        let replies = decode(&out);
        assert_eq!(replies.len(), 1);
        assert_eq!(error_code(&replies[0]), Some(HidError::InvalidSequence));
    }

    #[test]
    fn stalled_message_times_out() {
        let mut rig = Rig::new(Presence::Approve);
        let cid = rig.init();
        let reports = encode_message(cid, frame::PING, &[7; 100]).unwrap();
        let mut out = Vec::new();
        rig.engine.handle_report(&reports[0], rig.now, &mut out);
        assert!(out.is_empty());
        assert!(rig.advance(Duration::from_millis(1900)).is_empty());
        let replies = rig.advance(Duration::from_millis(100));
        assert_eq!(error_code(&replies[0]), Some(HidError::MessageTimeout));
    }

    #[test]
    fn other_channel_is_busy_during_message() {
        let mut rig = Rig::new(Presence::Approve);
        let first = rig.init();
        let second = rig.init();
        let reports = encode_message(first, frame::PING, &[7; 100]).unwrap();
        let mut out = Vec::new();
        rig.engine.handle_report(&reports[0], rig.now, &mut out);
        let replies = rig.send(second, frame::PING, &[1]);
        assert_eq!(error_code(&replies[0]), Some(HidError::ChannelBusy));
        rig.engine.handle_report(&reports[1], rig.now, &mut out);
        let replies = decode(&out);
        assert_eq!(replies[0].payload, vec![7; 100]);
    }

    #[test]
    fn cbor_without_presence_answers_at_once() {
        let mut rig = Rig::new(Presence::Never);
        let cid = rig.init();
        let replies = rig.send(cid, frame::CBOR, &[GET_INFO]);
        assert_eq!(replies.len(), 1);
        assert_eq!(replies[0].payload, vec![0x00, 0xa1, 0x01, 0x80]);
    }

    #[test]
    fn approve_sends_processing_then_response() {
        let mut rig = Rig::new(Presence::Approve);
        let cid = rig.init();
        let replies = rig.send(cid, frame::CBOR, &[MAKE_CREDENTIAL, 0xa0]);
        assert_eq!(replies.len(), 2);
        assert_eq!(replies[0].cmd, frame::KEEPALIVE);
        assert_eq!(replies[0].payload, [frame::KEEPALIVE_PROCESSING]);
        assert_eq!(replies[1].cmd, frame::CBOR);
        assert_eq!(replies[1].payload, [APPROVED, MAKE_CREDENTIAL, 0xa0]);
    }

    #[test]
    fn deny_ends_with_operation_denied() {
        let mut rig = Rig::new(Presence::Deny);
        let cid = rig.init();
        let replies = rig.send(cid, frame::CBOR, &[MAKE_CREDENTIAL]);
        assert_eq!(replies.len(), 1);
        assert_eq!(replies[0].payload, [DENIED]);
    }

    #[test]
    fn delay_sends_up_needed_then_approves() {
        let mut rig = Rig::new(Presence::Delay(Duration::from_millis(350)));
        let cid = rig.init();
        let mut replies = rig.send(cid, frame::CBOR, &[MAKE_CREDENTIAL]);
        for _ in 0..3 {
            replies.extend(rig.advance(Duration::from_millis(100)));
        }
        assert_eq!(keepalives(&replies, frame::KEEPALIVE_UP_NEEDED), 4);
        assert!(replies
            .iter()
            .all(|m| m.cmd == frame::KEEPALIVE && m.cid == cid));

        let last = rig.advance(Duration::from_millis(50));
        assert_eq!(last.len(), 1);
        assert_eq!(last[0].cmd, frame::CBOR);
        assert_eq!(last[0].payload, [APPROVED, MAKE_CREDENTIAL]);
        assert!(!rig.engine.is_busy());
    }

    #[test]
    fn never_times_out_with_user_action_timeout() {
        let mut rig = Rig::new(Presence::Never);
        let cid = rig.init();
        let mut replies = rig.send(cid, frame::CBOR, &[MAKE_CREDENTIAL]);
        for _ in 0..9 {
            replies.extend(rig.advance(Duration::from_millis(100)));
        }
        assert_eq!(keepalives(&replies, frame::KEEPALIVE_UP_NEEDED), 10);
        let last = rig.advance(Duration::from_millis(100));
        assert_eq!(last.len(), 1);
        assert_eq!(last[0].payload, [TIMED_OUT]);
    }

    #[test]
    fn delay_beyond_timeout_times_out() {
        let mut rig = Rig::new(Presence::Delay(Duration::from_secs(5)));
        let cid = rig.init();
        rig.send(cid, frame::CBOR, &[MAKE_CREDENTIAL]);
        let replies = rig.advance(Duration::from_millis(1000));
        assert_eq!(replies.last().unwrap().payload, [TIMED_OUT]);
    }

    #[test]
    fn cancel_ends_pending_request_with_keepalive_cancel() {
        let mut rig = Rig::new(Presence::Never);
        let cid = rig.init();
        rig.send(cid, frame::CBOR, &[MAKE_CREDENTIAL]);
        let replies = rig.send(cid, frame::CANCEL, &[]);
        assert_eq!(replies.len(), 1);
        assert_eq!(replies[0].cmd, frame::CBOR);
        assert_eq!(replies[0].payload, [CANCELLED]);
        assert!(!rig.engine.is_busy());
        assert!(rig.advance(Duration::from_secs(2)).is_empty());
    }

    #[test]
    fn cancel_from_other_channel_is_ignored() {
        let mut rig = Rig::new(Presence::Never);
        let busy = rig.init();
        let other = rig.init();
        rig.send(busy, frame::CBOR, &[MAKE_CREDENTIAL]);
        assert!(rig.send(other, frame::CANCEL, &[]).is_empty());
        assert!(rig.engine.is_busy());
    }

    #[test]
    fn cancel_without_request_gets_no_reply() {
        let mut rig = Rig::new(Presence::Never);
        let cid = rig.init();
        assert!(rig.send(cid, frame::CANCEL, &[]).is_empty());
    }

    #[test]
    fn other_channel_gets_busy_while_waiting() {
        let mut rig = Rig::new(Presence::Never);
        let busy = rig.init();
        let other = rig.init();
        rig.send(busy, frame::CBOR, &[MAKE_CREDENTIAL]);
        let replies = rig.send(other, frame::CBOR, &[GET_INFO]);
        assert_eq!(error_code(&replies[0]), Some(HidError::ChannelBusy));
        let replies = rig.send(busy, frame::PING, &[1]);
        assert_eq!(error_code(&replies[0]), Some(HidError::ChannelBusy));
    }

    #[test]
    fn init_on_busy_channel_abandons_request() {
        let mut rig = Rig::new(Presence::Never);
        let cid = rig.init();
        rig.send(cid, frame::CBOR, &[MAKE_CREDENTIAL]);
        let replies = rig.send(cid, frame::INIT, &[4; 8]);
        assert_eq!(replies.len(), 1);
        assert_eq!(replies[0].cmd, frame::INIT);
        assert!(!rig.engine.is_busy());
    }

    #[test]
    fn set_presence_resolves_waiting_request() {
        let mut rig = Rig::new(Presence::Never);
        let cid = rig.init();
        rig.send(cid, frame::CBOR, &[MAKE_CREDENTIAL]);
        let mut out = Vec::new();
        rig.engine.set_presence(Presence::Deny, rig.now, &mut out);
        let replies = decode(&out);
        assert_eq!(replies.last().unwrap().payload, [DENIED]);
    }

    #[test]
    fn reset_forgets_channels() {
        let mut rig = Rig::new(Presence::Never);
        let cid = rig.init();
        rig.send(cid, frame::CBOR, &[MAKE_CREDENTIAL]);
        rig.engine.reset();
        assert!(!rig.engine.is_busy());
        assert_eq!(rig.engine.next_deadline(), None);
        let replies = rig.send(cid, frame::PING, &[1]);
        assert_eq!(error_code(&replies[0]), Some(HidError::InvalidChannel));
    }

    #[test]
    fn channel_table_is_bounded() {
        let mut rig = Rig::new(Presence::Approve);
        let first = rig.init();
        for _ in 0..MAX_CHANNELS {
            rig.init();
        }
        assert_eq!(rig.engine.channels.len(), MAX_CHANNELS);
        let replies = rig.send(first, frame::PING, &[1]);
        assert_eq!(error_code(&replies[0]), Some(HidError::InvalidChannel));
    }

    #[test]
    fn oversized_handler_response_becomes_error_other() {
        struct Huge;
        impl Ctap2Handler for Huge {
            type Pending = ();
            fn begin(&mut self, _: &[u8]) -> Step<()> {
                Step::Done(vec![0; MAX_MESSAGE + 1])
            }
            fn complete(&mut self, _: (), _: PresenceOutcome) -> Vec<u8> {
                Vec::new()
            }
        }
        let mut engine = Engine::new(Huge, Presence::Approve, config());
        let now = Instant::now();
        let mut out = Vec::new();
        for report in encode_message(BROADCAST_CID, frame::INIT, &[0; 8]).unwrap() {
            engine.handle_report(&report, now, &mut out);
        }
        let cid = InitResponse::parse(&decode(&out)[0].payload).unwrap().cid;
        out.clear();
        for report in encode_message(cid, frame::CBOR, &[GET_INFO]).unwrap() {
            engine.handle_report(&report, now, &mut out);
        }
        assert_eq!(error_code(&decode(&out)[0]), Some(HidError::Other));
    }
}
