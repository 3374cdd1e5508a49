//! The CTAPHID protocol over a [`Transport`]: channel allocation with INIT,
//! requests and their responses, keepalives, CHANNEL_BUSY retries, CANCEL,
//! and deadlines. Blocking; every read has a deadline.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use tracing::{debug, debug_span, trace, warn};

use crate::ctap::frame::{
    self, command_name, encode_message, FrameError, HidError, InitResponse, Reassembler,
    Reassembly, Report, BROADCAST_CID, INIT_NONCE_LEN, MAX_MESSAGE,
};
use crate::ctap::transport::{Transport, TransportError};

/// maxMsgSize a CTAP2 host assumes until getInfo reports another value.
pub const DEFAULT_MAX_MSG_SIZE: usize = 1024;

/// Timeouts and retry limits of [`CtapHidDevice`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Timing {
    /// Maximum single wait for a report. The cancel flag and the deadline
    /// are checked at least this often. Default 50 ms.
    pub read_slice: Duration,
    /// Maximum silence on the channel while a request is open. Devices send
    /// KEEPALIVE about every 100 ms while busy, so 5 s (the default) of
    /// silence means the card is gone or hung.
    pub idle_timeout: Duration,
    /// Maximum wait for the INIT response, which needs no person. Default 2 s.
    pub init_timeout: Duration,
    /// Maximum wait, after CANCEL, for the pending request to end (a card
    /// responds with status 0x2D at once). Default 2 s.
    pub cancel_drain: Duration,
    /// How often a request is resent after ERROR CHANNEL_BUSY. Default 5.
    pub busy_retries: u32,
    /// Wait before the first resend after CHANNEL_BUSY, doubled for each
    /// further one. The default 50 ms gives 1.55 s over 5 retries, enough for
    /// another client's short request, not for one waiting on the person.
    pub busy_backoff: Duration,
}

impl Default for Timing {
    fn default() -> Self {
        Timing {
            read_slice: Duration::from_millis(50),
            idle_timeout: Duration::from_secs(5),
            init_timeout: Duration::from_secs(2),
            cancel_drain: Duration::from_secs(2),
            busy_retries: 5,
            busy_backoff: Duration::from_millis(50),
        }
    }
}

/// The status a card reports in KEEPALIVE while it works on a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeepaliveStatus {
    Processing,
    /// The card waits for the person at the card.
    UpNeeded,
    Unknown(u8),
}

impl KeepaliveStatus {
    /// Parses a KEEPALIVE payload, which is one status byte.
    pub fn parse(payload: &[u8]) -> Result<KeepaliveStatus, FrameError> {
        match payload {
            [frame::KEEPALIVE_PROCESSING] => Ok(KeepaliveStatus::Processing),
            [frame::KEEPALIVE_UP_NEEDED] => Ok(KeepaliveStatus::UpNeeded),
            [other] => Ok(KeepaliveStatus::Unknown(*other)),
            _ => Err(FrameError::PayloadLength {
                structure: "KEEPALIVE message",
                expected: 1,
                found: payload.len(),
            }),
        }
    }
}

/// The reason a CTAPHID exchange failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DeviceError {
    #[error(transparent)]
    Transport(#[from] TransportError),

    /// The caller's deadline passed (the person did not act in time); the
    /// request was cancelled.
    #[error("card request timed out after {:.1} s", waited.as_secs_f64())]
    Timeout { waited: Duration },

    /// The card sent nothing on the channel for this long.
    #[error("card sent nothing for {:.1} s while a request was open", waited.as_secs_f64())]
    IdleTimeout { waited: Duration },

    /// The caller cancelled the request.
    #[error("card request cancelled")]
    Cancelled,

    #[error("card returned {0}")]
    Hid(HidError),

    #[error(
        "device is not a CTAP2 authenticator: INIT capabilities {capabilities:#04x} lack CBOR ({:#04x})",
        frame::CAPABILITY_CBOR
    )]
    NotFido2 { capabilities: u8 },

    #[error("invalid CTAPHID framing from the card: {0}")]
    Frame(#[from] FrameError),

    #[error("request of {len} bytes exceeds the card's maxMsgSize of {max} bytes")]
    RequestTooLarge { len: usize, max: usize },

    #[error("CTAPHID protocol violation: {0}")]
    Protocol(String),
}

impl DeviceError {
    /// Whether the card is gone or unresponsive, so that the caller should
    /// drop this device and connect again.
    pub fn is_device_lost(&self) -> bool {
        match self {
            DeviceError::Transport(error) => error.is_device_lost(),
            DeviceError::IdleTimeout { .. } => true,
            _ => false,
        }
    }
}

/// A card with an allocated CTAPHID channel.
pub struct CtapHidDevice {
    transport: Box<dyn Transport>,
    timing: Timing,
    info: InitResponse,
    max_msg_size: usize,
    /// Set while a request may still have reports in flight. The next
    /// request then first resynchronises the channel with INIT, so that a
    /// late response is never taken for its own.
    needs_resync: bool,
}

impl std::fmt::Debug for CtapHidDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CtapHidDevice")
            .field("transport", &self.transport.describe())
            .field("cid", &format_args!("{:08x}", self.info.cid))
            .field("max_msg_size", &self.max_msg_size)
            .finish()
    }
}

impl CtapHidDevice {
    /// Allocates a channel with INIT on the broadcast channel and checks that
    /// the card speaks CTAP2.
    pub fn open(mut transport: Box<dyn Transport>, timing: Timing) -> Result<Self, DeviceError> {
        let info = exchange_init(transport.as_mut(), &timing, BROADCAST_CID)?;
        check_init_response(&info)?;
        debug!(
            device = %transport.describe(),
            cid = %format_args!("{:08x}", info.cid),
            version = ?info.device_version,
            capabilities = %format_args!("{:#04x}", info.capabilities),
            "allocated CTAPHID channel"
        );
        Ok(CtapHidDevice {
            transport,
            timing,
            info,
            max_msg_size: DEFAULT_MAX_MSG_SIZE,
            needs_resync: false,
        })
    }

    /// Returns the INIT response of the current channel.
    pub fn init_info(&self) -> &InitResponse {
        &self.info
    }

    pub fn describe(&self) -> String {
        self.transport.describe()
    }

    /// Sets the card's maxMsgSize from getInfo, capped at the CTAPHID
    /// maximum. Longer requests are rejected before they are sent; responses
    /// may be up to the CTAPHID maximum regardless.
    pub fn set_max_msg_size(&mut self, n: usize) {
        self.max_msg_size = n.min(MAX_MESSAGE);
    }

    pub fn max_msg_size(&self) -> usize {
        self.max_msg_size
    }

    /// Sends a CTAP2 request (command byte and CBOR parameters) and returns
    /// the response: status byte and CBOR map.
    ///
    /// `on_keepalive` is called for every KEEPALIVE. When `cancel` becomes true or
    /// `deadline` passes, the request is cancelled on the card and
    /// [`DeviceError::Cancelled`] or [`DeviceError::Timeout`] returned.
    pub fn cbor(
        &mut self,
        request: &[u8],
        on_keepalive: &mut dyn FnMut(KeepaliveStatus),
        cancel: &AtomicBool,
        deadline: Instant,
    ) -> Result<Vec<u8>, DeviceError> {
        if request.is_empty() {
            return Err(DeviceError::Protocol(
                "a CBOR request needs at least the command byte".to_string(),
            ));
        }
        if request.len() > self.max_msg_size {
            return Err(DeviceError::RequestTooLarge {
                len: request.len(),
                max: self.max_msg_size,
            });
        }
        let response = self.request(frame::CBOR, request, on_keepalive, cancel, deadline)?;
        if response.is_empty() {
            return Err(DeviceError::Protocol(
                "CBOR response has no status byte".to_string(),
            ));
        }
        Ok(response)
    }

    /// Sends PING and checks that the card echoes `data`. Bounded by the
    /// idle timeout.
    pub fn ping(&mut self, data: &[u8]) -> Result<Vec<u8>, DeviceError> {
        let deadline = Instant::now() + self.timing.idle_timeout;
        let response = self.request(
            frame::PING,
            data,
            &mut |_| {},
            &AtomicBool::new(false),
            deadline,
        )?;
        if response != data {
            return Err(DeviceError::Protocol(format!(
                "PING response of {} bytes differs from the {} bytes sent",
                response.len(),
                data.len()
            )));
        }
        Ok(response)
    }

    /// Asks the card to show that it is the one being talked to. Bounded by
    /// the idle timeout.
    pub fn wink(&mut self) -> Result<(), DeviceError> {
        let deadline = Instant::now() + self.timing.idle_timeout;
        self.request(
            frame::WINK,
            &[],
            &mut |_| {},
            &AtomicBool::new(false),
            deadline,
        )?;
        Ok(())
    }

    /// Runs one request with the recovery CTAPHID calls for: resend after
    /// CHANNEL_BUSY with a growing backoff, and allocate a fresh channel once
    /// after INVALID_CHANNEL.
    fn request(
        &mut self,
        cmd: u8,
        payload: &[u8],
        on_keepalive: &mut dyn FnMut(KeepaliveStatus),
        cancel: &AtomicBool,
        deadline: Instant,
    ) -> Result<Vec<u8>, DeviceError> {
        let started = Instant::now();
        if self.needs_resync {
            self.resync()?;
        }

        let mut busy_retries = 0;
        let mut reallocated = false;
        loop {
            match self.transact(cmd, payload, on_keepalive, cancel, deadline, started) {
                Err(DeviceError::Hid(HidError::ChannelBusy))
                    if busy_retries < self.timing.busy_retries =>
                {
                    let backoff = self
                        .timing
                        .busy_backoff
                        .saturating_mul(1 << busy_retries.min(16));
                    busy_retries += 1;
                    debug!(
                        retry = busy_retries,
                        ?backoff,
                        "card busy with another channel"
                    );
                    self.pause(backoff, cancel, deadline, started)?;
                }
                Err(DeviceError::Hid(HidError::InvalidChannel)) if !reallocated => {
                    reallocated = true;
                    warn!(
                        cid = %format_args!("{:08x}", self.info.cid),
                        "card no longer knows the channel; allocating a new one"
                    );
                    self.allocate_channel()?;
                }
                result => return result,
            }
        }
    }

    /// Sends one request and reads until its response, an ERROR, the
    /// deadline, cancellation or silence ends it.
    fn transact(
        &mut self,
        cmd: u8,
        payload: &[u8],
        on_keepalive: &mut dyn FnMut(KeepaliveStatus),
        cancel: &AtomicBool,
        deadline: Instant,
        started: Instant,
    ) -> Result<Vec<u8>, DeviceError> {
        let cid = self.info.cid;
        let _span =
            debug_span!("ctaphid", cid = %format_args!("{cid:08x}"), command = command_name(cmd))
                .entered();
        debug!(length = payload.len(), "request");

        self.needs_resync = true;
        write_message(self.transport.as_mut(), cid, cmd, payload)?;

        let mut reassembler = Reassembler::new(cid);
        let mut last_report = Instant::now();
        loop {
            if cancel.load(Ordering::SeqCst) {
                return Err(self.abandon(&mut reassembler, DeviceError::Cancelled));
            }
            let now = Instant::now();
            if now >= deadline {
                let waited = now.saturating_duration_since(started);
                return Err(self.abandon(&mut reassembler, DeviceError::Timeout { waited }));
            }
            let silent = now.saturating_duration_since(last_report);
            if silent >= self.timing.idle_timeout {
                warn!(
                    silent_ms = silent.as_millis(),
                    "card went silent during a request"
                );
                // Best effort, so that a card that recovers does not stay busy.
                let _ = write_message(self.transport.as_mut(), cid, frame::CANCEL, &[]);
                return Err(DeviceError::IdleTimeout { waited: silent });
            }

            let wait = self
                .timing
                .read_slice
                .min(deadline.saturating_duration_since(now))
                .min(self.timing.idle_timeout.saturating_sub(silent));
            let Some(report) = read_report(self.transport.as_mut(), wait)? else {
                continue;
            };

            let message = match reassembler.feed(&report) {
                Ok(Reassembly::Ignored) => {
                    trace!("ignoring report of another channel");
                    continue;
                }
                Ok(Reassembly::Incomplete) => {
                    last_report = Instant::now();
                    continue;
                }
                Ok(Reassembly::Complete(message)) => message,
                Err(error @ FrameError::UnexpectedContinuation { .. }) => {
                    warn!(%error, "ignoring stray continuation packet");
                    continue;
                }
                Err(error) => {
                    warn!(%error, "malformed response");
                    return Err(DeviceError::Frame(error));
                }
            };
            last_report = Instant::now();

            match message.cmd {
                frame::KEEPALIVE => match KeepaliveStatus::parse(&message.payload) {
                    Ok(status) => {
                        trace!(?status, "keepalive");
                        on_keepalive(status);
                    }
                    Err(error) => warn!(%error, "ignoring malformed keepalive"),
                },
                frame::ERROR => {
                    self.needs_resync = false;
                    let code = HidError::parse(&message.payload)?;
                    debug!(%code, "card returned ERROR");
                    return Err(DeviceError::Hid(code));
                }
                answered if answered == cmd => {
                    self.needs_resync = false;
                    debug!(length = message.payload.len(), "response");
                    return Ok(message.payload);
                }
                other => {
                    warn!(
                        response = command_name(other),
                        "card responded with another command"
                    );
                    return Err(DeviceError::Protocol(format!(
                        "card responded to {} with {} ({other:#04x}) on channel {cid:08x}",
                        command_name(cmd),
                        command_name(other)
                    )));
                }
            }
        }
    }

    /// Sends CANCEL and reads until the pending request ends, so that the
    /// next request starts clean. Returns `reason`, or the transport error
    /// that interrupted the drain.
    fn abandon(&mut self, reassembler: &mut Reassembler, reason: DeviceError) -> DeviceError {
        let cid = self.info.cid;
        debug!(%reason, "sending CANCEL");
        if let Err(error) = write_message(self.transport.as_mut(), cid, frame::CANCEL, &[]) {
            return error;
        }

        let drain_deadline = Instant::now() + self.timing.cancel_drain;
        loop {
            let now = Instant::now();
            if now >= drain_deadline {
                warn!(
                    drain_ms = self.timing.cancel_drain.as_millis(),
                    "pending request did not end after CANCEL; the channel will be resynchronised"
                );
                return reason;
            }
            let wait = self.timing.read_slice.min(drain_deadline - now);
            let report = match read_report(self.transport.as_mut(), wait) {
                Ok(Some(report)) => report,
                Ok(None) => continue,
                Err(error) => return error.into(),
            };
            match reassembler.feed(&report) {
                Ok(Reassembly::Complete(message)) if message.cmd == frame::KEEPALIVE => {}
                Ok(Reassembly::Complete(message)) => {
                    debug!(
                        response = command_name(message.cmd),
                        status = ?message.payload.first(),
                        "pending request ended after CANCEL"
                    );
                    self.needs_resync = false;
                    return reason;
                }
                Ok(_) => {}
                Err(error) => {
                    warn!(%error, "malformed report while draining after CANCEL");
                    reassembler.reset();
                }
            }
        }
    }

    /// Waits `pause` before a resend, ending early on cancellation or the
    /// deadline. No request is open, so there is nothing to CANCEL.
    fn pause(
        &self,
        pause: Duration,
        cancel: &AtomicBool,
        deadline: Instant,
        started: Instant,
    ) -> Result<(), DeviceError> {
        let until = Instant::now() + pause;
        loop {
            if cancel.load(Ordering::SeqCst) {
                return Err(DeviceError::Cancelled);
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(DeviceError::Timeout {
                    waited: now.saturating_duration_since(started),
                });
            }
            if now >= until {
                return Ok(());
            }
            std::thread::sleep(self.timing.read_slice.min(until - now).min(deadline - now));
        }
    }

    /// Allocates a new channel with INIT on the broadcast channel.
    fn allocate_channel(&mut self) -> Result<(), DeviceError> {
        let info = exchange_init(self.transport.as_mut(), &self.timing, BROADCAST_CID)?;
        check_init_response(&info)?;
        debug!(cid = %format_args!("{:08x}", info.cid), "allocated CTAPHID channel");
        self.info = info;
        self.needs_resync = false;
        Ok(())
    }

    /// Resynchronises the current channel with INIT on it, which makes the
    /// card abandon whatever the channel had in progress. Reports that
    /// arrive before the INIT response are discarded.
    fn resync(&mut self) -> Result<(), DeviceError> {
        let cid = self.info.cid;
        debug!(cid = %format_args!("{cid:08x}"), "resynchronising channel");
        match exchange_init(self.transport.as_mut(), &self.timing, cid) {
            Ok(info) => {
                check_init_response(&info)?;
                self.info = info;
                self.needs_resync = false;
                Ok(())
            }
            Err(DeviceError::Hid(HidError::InvalidChannel)) => self.allocate_channel(),
            Err(error) => Err(error),
        }
    }
}

/// Sends INIT with a fresh random nonce on `request_cid` and returns the
/// response that echoes it. Responses with another nonce (for another host)
/// and other reports are skipped.
fn exchange_init(
    transport: &mut dyn Transport,
    timing: &Timing,
    request_cid: u32,
) -> Result<InitResponse, DeviceError> {
    let nonce: [u8; INIT_NONCE_LEN] = rand::random();
    let _span = debug_span!("ctaphid", cid = %format_args!("{request_cid:08x}"), command = "INIT")
        .entered();
    debug!("request");
    write_message(transport, request_cid, frame::INIT, &nonce)?;

    let started = Instant::now();
    let deadline = started + timing.init_timeout;
    let mut reassembler = Reassembler::new(request_cid);
    loop {
        let now = Instant::now();
        if now >= deadline {
            return Err(DeviceError::IdleTimeout {
                waited: now.saturating_duration_since(started),
            });
        }
        let Some(report) = read_report(transport, timing.read_slice.min(deadline - now))? else {
            continue;
        };
        let message = match reassembler.feed(&report) {
            Ok(Reassembly::Complete(message)) => message,
            Ok(_) => continue,
            Err(error) => {
                warn!(%error, "ignoring malformed report while waiting for INIT");
                reassembler.reset();
                continue;
            }
        };
        match message.cmd {
            frame::INIT => match InitResponse::parse(&message.payload) {
                Ok(info) if info.nonce == nonce => return Ok(info),
                Ok(_) => debug!("skipping INIT response for another nonce"),
                Err(error) => warn!(%error, "ignoring malformed INIT response"),
            },
            frame::ERROR => {
                let code = HidError::parse(&message.payload)?;
                debug!(%code, "card returned ERROR to INIT");
                return Err(DeviceError::Hid(code));
            }
            other => debug!(
                response = command_name(other),
                "skipping report while waiting for INIT"
            ),
        }
    }
}

fn check_init_response(info: &InitResponse) -> Result<(), DeviceError> {
    if info.cid == 0 || info.cid == BROADCAST_CID {
        return Err(DeviceError::Protocol(format!(
            "INIT response allocated the reserved channel {:08x}",
            info.cid
        )));
    }
    if !info.supports_cbor() {
        return Err(DeviceError::NotFido2 {
            capabilities: info.capabilities,
        });
    }
    if info.protocol_version != 2 {
        warn!(
            version = info.protocol_version,
            "card reports CTAPHID protocol version other than 2"
        );
    }
    Ok(())
}

fn write_message(
    transport: &mut dyn Transport,
    cid: u32,
    cmd: u8,
    payload: &[u8],
) -> Result<(), DeviceError> {
    for report in encode_message(cid, cmd, payload)? {
        trace!("→ {}", hex::encode(report));
        transport.write_report(&report)?;
    }
    Ok(())
}

fn read_report(
    transport: &mut dyn Transport,
    timeout: Duration,
) -> Result<Option<Report>, TransportError> {
    let report = transport.read_report(timeout)?;
    if let Some(report) = &report {
        trace!("← {}", hex::encode(report));
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;
    use std::sync::{Arc, Mutex};

    use super::*;
    use crate::ctap::frame::{Message, Packet, CAPABILITY_CBOR, CAPABILITY_WINK};

    const CID: u32 = 0x0022_0002;
    const OTHER_CID: u32 = 0x0092_000e;

    /// The fake card's reaction when the host completes a message.
    type Behaviour = Box<dyn FnMut(&Message, &mut FakeCard) + Send>;

    /// The card side of a scripted transport.
    #[derive(Default)]
    struct FakeCard {
        /// Reports the host will read, in order.
        outbox: VecDeque<Report>,
        /// Every message the host sent.
        received: Vec<Message>,
        /// While set, an idle read returns an UP_NEEDED keepalive on this
        /// channel, as a card waiting for the person does.
        keepalive_on: Option<u32>,
        disconnected: bool,
        incoming: Option<Reassembler>,
    }

    impl FakeCard {
        fn reply(&mut self, cid: u32, cmd: u8, payload: &[u8]) {
            self.outbox
                .extend(encode_message(cid, cmd, payload).unwrap());
        }

        fn reply_init(&mut self, request: &Message, allocated: u32, capabilities: u8) {
            let mut nonce = [0u8; 8];
            nonce.copy_from_slice(&request.payload);
            let response = InitResponse {
                nonce,
                cid: allocated,
                protocol_version: 2,
                device_version: [5, 2, 1],
                capabilities,
            };
            self.reply(request.cid, frame::INIT, &response.encode());
        }

        fn sent(&self, cmd: u8) -> Vec<&Message> {
            self.received.iter().filter(|m| m.cmd == cmd).collect()
        }
    }

    struct Scripted {
        card: Arc<Mutex<FakeCard>>,
        behaviour: Arc<Mutex<Behaviour>>,
    }

    impl Transport for Scripted {
        fn write_report(&mut self, report: &Report) -> Result<(), TransportError> {
            let mut card = self.card.lock().unwrap();
            if card.disconnected {
                return Err(TransportError::Disconnected("fake card unplugged".into()));
            }
            if let Ok(Packet::Init(init)) = Packet::parse(report) {
                card.incoming = Some(Reassembler::new(init.cid));
            }
            let Some(reassembler) = card.incoming.as_mut() else {
                return Ok(());
            };
            if let Ok(Reassembly::Complete(message)) = reassembler.feed(report) {
                card.incoming = None;
                card.received.push(message.clone());
                (self.behaviour.lock().unwrap())(&message, &mut card);
            }
            Ok(())
        }

        fn read_report(&mut self, timeout: Duration) -> Result<Option<Report>, TransportError> {
            {
                let mut card = self.card.lock().unwrap();
                if card.disconnected {
                    return Err(TransportError::Disconnected("fake card unplugged".into()));
                }
                if let Some(report) = card.outbox.pop_front() {
                    return Ok(Some(report));
                }
                if let Some(cid) = card.keepalive_on {
                    drop(card);
                    std::thread::sleep(timeout.min(Duration::from_millis(5)));
                    let reports =
                        encode_message(cid, frame::KEEPALIVE, &[frame::KEEPALIVE_UP_NEEDED])
                            .unwrap();
                    return Ok(reports.first().copied());
                }
            }
            std::thread::sleep(timeout);
            Ok(None)
        }

        fn describe(&self) -> String {
            "scripted".to_string()
        }
    }

    fn timing() -> Timing {
        Timing {
            read_slice: Duration::from_millis(5),
            idle_timeout: Duration::from_millis(300),
            init_timeout: Duration::from_millis(300),
            cancel_drain: Duration::from_millis(300),
            busy_retries: 3,
            busy_backoff: Duration::from_millis(5),
        }
    }

    /// Creates a scripted card that allocates channel `CID` on INIT and
    /// handles everything else with `behaviour`.
    fn scripted(
        mut behaviour: impl FnMut(&Message, &mut FakeCard) + Send + 'static,
    ) -> (Box<dyn Transport>, Arc<Mutex<FakeCard>>) {
        let card = Arc::new(Mutex::new(FakeCard::default()));
        let behaviour: Behaviour = Box::new(move |message, card| {
            if message.cmd == frame::INIT {
                card.reply_init(message, CID, CAPABILITY_WINK | CAPABILITY_CBOR);
            } else {
                behaviour(message, card);
            }
        });
        let transport = Scripted {
            card: Arc::clone(&card),
            behaviour: Arc::new(Mutex::new(behaviour)),
        };
        (Box::new(transport), card)
    }

    fn echo(message: &Message, card: &mut FakeCard) {
        card.reply(message.cid, message.cmd, &message.payload);
    }

    fn open(transport: Box<dyn Transport>) -> CtapHidDevice {
        CtapHidDevice::open(transport, timing()).unwrap()
    }

    fn call(device: &mut CtapHidDevice, request: &[u8]) -> Result<Vec<u8>, DeviceError> {
        let deadline = Instant::now() + Duration::from_secs(5);
        device.cbor(request, &mut |_| {}, &AtomicBool::new(false), deadline)
    }

    fn payload(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 7 % 256) as u8).collect()
    }

    #[test]
    fn open_allocates_channel_from_init_reply() {
        let (transport, card) = scripted(echo);
        let device = open(transport);
        assert_eq!(device.init_info().cid, CID);
        assert_eq!(device.init_info().device_version, [5, 2, 1]);
        let card = card.lock().unwrap();
        let inits = card.sent(frame::INIT);
        assert_eq!(inits.len(), 1);
        assert_eq!(inits[0].cid, BROADCAST_CID);
        assert_eq!(inits[0].payload.len(), 8);
    }

    #[test]
    fn open_skips_init_reply_with_other_nonce() {
        let card = Arc::new(Mutex::new(FakeCard::default()));
        let behaviour: Behaviour = Box::new(|message, card| {
            let mut foreign = message.clone();
            foreign.payload = vec![0xee; 8];
            card.reply_init(&foreign, OTHER_CID, CAPABILITY_CBOR);
            card.reply_init(message, CID, CAPABILITY_CBOR);
        });
        let transport = Scripted {
            card: Arc::clone(&card),
            behaviour: Arc::new(Mutex::new(behaviour)),
        };
        let device = open(Box::new(transport));
        assert_eq!(device.init_info().cid, CID);
    }

    #[test]
    fn open_rejects_card_without_cbor() {
        let card = Arc::new(Mutex::new(FakeCard::default()));
        let behaviour: Behaviour =
            Box::new(|message, card| card.reply_init(message, CID, CAPABILITY_WINK));
        let transport = Scripted {
            card,
            behaviour: Arc::new(Mutex::new(behaviour)),
        };
        let error = CtapHidDevice::open(Box::new(transport), timing()).unwrap_err();
        assert_eq!(
            error,
            DeviceError::NotFido2 {
                capabilities: CAPABILITY_WINK
            }
        );
    }

    #[test]
    fn open_times_out_on_silent_card() {
        let card = Arc::new(Mutex::new(FakeCard::default()));
        let behaviour: Behaviour = Box::new(|_, _| {});
        let transport = Scripted {
            card,
            behaviour: Arc::new(Mutex::new(behaviour)),
        };
        let error = CtapHidDevice::open(Box::new(transport), timing()).unwrap_err();
        assert!(matches!(error, DeviceError::IdleTimeout { .. }), "{error}");
    }

    #[test]
    fn cbor_ignores_other_channel_frames() {
        let (transport, _card) = scripted(|message, card| {
            let response = payload(200);
            let ours = encode_message(message.cid, frame::CBOR, &response).unwrap();
            let theirs = encode_message(OTHER_CID, frame::CBOR, &[0xbb; 200]).unwrap();
            // Interleave: their init, our init, their continuations, ours.
            card.outbox.push_back(theirs[0]);
            card.outbox.push_back(ours[0]);
            card.outbox.extend(&theirs[1..]);
            card.outbox.extend(&ours[1..]);
        });
        let mut device = open(transport);
        assert_eq!(call(&mut device, &[0x04]).unwrap(), payload(200));
    }

    #[test]
    fn cbor_reports_keepalives_and_keeps_reading() {
        let (transport, _card) = scripted(|message, card| {
            card.reply(
                message.cid,
                frame::KEEPALIVE,
                &[frame::KEEPALIVE_PROCESSING],
            );
            card.reply(message.cid, frame::KEEPALIVE, &[frame::KEEPALIVE_UP_NEEDED]);
            card.reply(message.cid, frame::KEEPALIVE, &[0x07]);
            card.reply(message.cid, frame::CBOR, &[0x00, 0xa0]);
        });
        let mut device = open(transport);
        let mut seen = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(5);
        let response = device
            .cbor(
                &[0x01],
                &mut |s| seen.push(s),
                &AtomicBool::new(false),
                deadline,
            )
            .unwrap();
        assert_eq!(response, [0x00, 0xa0]);
        assert_eq!(
            seen,
            [
                KeepaliveStatus::Processing,
                KeepaliveStatus::UpNeeded,
                KeepaliveStatus::Unknown(7)
            ]
        );
    }

    #[test]
    fn cbor_retries_channel_busy_then_succeeds() {
        let mut busy_left = 2;
        let (transport, card) = scripted(move |message, card| {
            if busy_left > 0 {
                busy_left -= 1;
                card.reply(message.cid, frame::ERROR, &[HidError::ChannelBusy.code()]);
            } else {
                card.reply(message.cid, frame::CBOR, &[0x00]);
            }
        });
        let mut device = open(transport);
        assert_eq!(call(&mut device, &[0x04]).unwrap(), [0x00]);
        assert_eq!(card.lock().unwrap().sent(frame::CBOR).len(), 3);
    }

    #[test]
    fn cbor_gives_up_after_busy_retries() {
        let (transport, card) = scripted(|message, card| {
            card.reply(message.cid, frame::ERROR, &[HidError::ChannelBusy.code()]);
        });
        let mut device = open(transport);
        let error = call(&mut device, &[0x04]).unwrap_err();
        assert_eq!(error, DeviceError::Hid(HidError::ChannelBusy));
        assert_eq!(
            card.lock().unwrap().sent(frame::CBOR).len(),
            4,
            "first try and 3 retries"
        );
    }

    #[test]
    fn invalid_channel_reinitialises_and_retries_once() {
        const NEW_CID: u32 = 0x0033_0003;
        let card = Arc::new(Mutex::new(FakeCard::default()));
        let mut inits = 0;
        let behaviour: Behaviour = Box::new(move |message, card| match message.cmd {
            frame::INIT => {
                inits += 1;
                card.reply_init(
                    message,
                    if inits == 1 { CID } else { NEW_CID },
                    CAPABILITY_CBOR,
                );
            }
            _ if message.cid == CID => {
                card.reply(CID, frame::ERROR, &[HidError::InvalidChannel.code()])
            }
            _ => card.reply(message.cid, frame::CBOR, &[0x00, 0x01]),
        });
        let transport = Scripted {
            card: Arc::clone(&card),
            behaviour: Arc::new(Mutex::new(behaviour)),
        };
        let mut device = open(Box::new(transport));
        assert_eq!(call(&mut device, &[0x04]).unwrap(), [0x00, 0x01]);
        assert_eq!(device.init_info().cid, NEW_CID);

        let card = card.lock().unwrap();
        let inits = card.sent(frame::INIT);
        assert_eq!(inits.len(), 2);
        assert_eq!(inits[1].cid, BROADCAST_CID, "a fresh channel, not a resync");
        let requests: Vec<u32> = card.sent(frame::CBOR).iter().map(|m| m.cid).collect();
        assert_eq!(requests, [CID, NEW_CID]);
    }

    #[test]
    fn invalid_channel_twice_is_an_error() {
        let (transport, card) = scripted(|message, card| {
            card.reply(
                message.cid,
                frame::ERROR,
                &[HidError::InvalidChannel.code()],
            );
        });
        let mut device = open(transport);
        let error = call(&mut device, &[0x04]).unwrap_err();
        assert_eq!(error, DeviceError::Hid(HidError::InvalidChannel));
        assert_eq!(card.lock().unwrap().sent(frame::CBOR).len(), 2);
    }

    #[test]
    fn silent_card_is_idle_timeout() {
        let (transport, card) = scripted(|_, _| {});
        let mut device = open(transport);
        let started = Instant::now();
        let error = call(&mut device, &[0x04]).unwrap_err();
        assert!(matches!(error, DeviceError::IdleTimeout { .. }), "{error}");
        assert!(error.is_device_lost());
        assert!(started.elapsed() >= Duration::from_millis(300));
        assert_eq!(card.lock().unwrap().sent(frame::CANCEL).len(), 1);
    }

    #[test]
    fn late_response_after_idle_timeout_is_discarded() {
        let mut requests = 0;
        let (transport, card) = scripted(move |message, card| {
            if message.cmd == frame::CBOR {
                requests += 1;
                if requests == 2 {
                    card.reply(message.cid, frame::CBOR, &[0x00, 0x02]);
                }
            }
        });
        let mut device = open(transport);
        assert!(call(&mut device, &[0x04]).is_err());

        // The first request's response arrives late, then the second one's.
        card.lock().unwrap().reply(CID, frame::CBOR, &[0x00, 0x01]);
        assert_eq!(call(&mut device, &[0x04]).unwrap(), [0x00, 0x02]);
        let card = card.lock().unwrap();
        let inits = card.sent(frame::INIT);
        assert_eq!(inits.len(), 2);
        assert_eq!(inits[1].cid, CID, "the channel was resynchronised");
    }

    #[test]
    fn deadline_sends_cancel_and_drains() {
        let (transport, card) = scripted(|message, card| match message.cmd {
            frame::CBOR => card.keepalive_on = Some(message.cid),
            frame::CANCEL => {
                card.keepalive_on = None;
                card.reply(message.cid, frame::CBOR, &[0x2d]);
            }
            _ => echo(message, card),
        });
        let mut device = open(transport);
        let deadline = Instant::now() + Duration::from_millis(100);
        let mut keepalives = 0;
        let error = device
            .cbor(
                &[0x01],
                &mut |_| keepalives += 1,
                &AtomicBool::new(false),
                deadline,
            )
            .unwrap_err();
        assert!(
            matches!(error, DeviceError::Timeout { waited } if waited >= Duration::from_millis(100)),
            "{error}"
        );
        assert!(keepalives > 0);
        assert!(!error.is_device_lost());
        {
            let card = card.lock().unwrap();
            assert_eq!(card.sent(frame::CANCEL).len(), 1);
            assert_eq!(card.sent(frame::CANCEL)[0].cid, CID);
            assert!(card.outbox.is_empty(), "the 0x2D reply was drained");
        }
        assert_eq!(device.ping(b"next").unwrap(), b"next");
        assert_eq!(
            card.lock().unwrap().sent(frame::INIT).len(),
            1,
            "no resync needed"
        );
    }

    #[test]
    fn cancel_flag_sends_cancel() {
        let (transport, card) = scripted(|message, card| match message.cmd {
            frame::CBOR => card.keepalive_on = Some(message.cid),
            frame::CANCEL => {
                card.keepalive_on = None;
                card.reply(message.cid, frame::CBOR, &[0x2d]);
            }
            _ => echo(message, card),
        });
        let mut device = open(transport);
        let cancel = AtomicBool::new(false);
        let deadline = Instant::now() + Duration::from_secs(5);
        let error = device
            .cbor(
                &[0x01],
                &mut |_| cancel.store(true, Ordering::SeqCst),
                &cancel,
                deadline,
            )
            .unwrap_err();
        assert_eq!(error, DeviceError::Cancelled);
        assert_eq!(card.lock().unwrap().sent(frame::CANCEL).len(), 1);
    }

    #[test]
    fn undrained_cancel_resyncs_next_request() {
        let (transport, card) = scripted(|message, card| match message.cmd {
            frame::CBOR => card.keepalive_on = Some(message.cid),
            frame::CANCEL => card.keepalive_on = None,
            _ => echo(message, card),
        });
        let mut device = open(transport);
        let deadline = Instant::now() + Duration::from_millis(50);
        let error = device
            .cbor(&[0x01], &mut |_| {}, &AtomicBool::new(false), deadline)
            .unwrap_err();
        assert!(matches!(error, DeviceError::Timeout { .. }), "{error}");
        assert_eq!(device.ping(b"x").unwrap(), b"x");
        assert_eq!(card.lock().unwrap().sent(frame::INIT).len(), 2);
    }

    #[test]
    fn response_lengths_at_real_and_max_sizes() {
        for len in [1043, MAX_MESSAGE] {
            let (transport, _card) = scripted(move |message, card| {
                card.reply(message.cid, frame::CBOR, &payload(len));
            });
            let mut device = open(transport);
            assert_eq!(
                call(&mut device, &[0x01]).unwrap(),
                payload(len),
                "len {len}"
            );
        }
    }

    #[test]
    fn cbor_rejects_request_above_max_msg_size() {
        let (transport, card) = scripted(echo);
        let mut device = open(transport);
        assert_eq!(device.max_msg_size(), DEFAULT_MAX_MSG_SIZE);
        device.set_max_msg_size(1024);
        let error = call(&mut device, &payload(1025)).unwrap_err();
        assert_eq!(
            error,
            DeviceError::RequestTooLarge {
                len: 1025,
                max: 1024
            }
        );
        assert!(card.lock().unwrap().sent(frame::CBOR).is_empty());
        assert_eq!(call(&mut device, &payload(1024)).unwrap(), payload(1024));
    }

    #[test]
    fn max_msg_size_is_capped_at_ctaphid_maximum() {
        let (transport, _card) = scripted(echo);
        let mut device = open(transport);
        device.set_max_msg_size(100_000);
        assert_eq!(device.max_msg_size(), MAX_MESSAGE);
    }

    #[test]
    fn ping_detects_wrong_echo() {
        let (transport, _card) =
            scripted(|message, card| card.reply(message.cid, frame::PING, b"other"));
        let mut device = open(transport);
        let error = device.ping(b"hello").unwrap_err();
        assert!(matches!(error, DeviceError::Protocol(_)), "{error}");
    }

    #[test]
    fn wrong_sequence_in_response_is_frame_error() {
        let (transport, _card) = scripted(|message, card| {
            let mut reports = encode_message(message.cid, frame::CBOR, &payload(200)).unwrap();
            reports[2][4] = 9;
            card.outbox.extend(reports);
        });
        let mut device = open(transport);
        let error = call(&mut device, &[0x04]).unwrap_err();
        assert!(
            matches!(error, DeviceError::Frame(FrameError::WrongSequence { .. })),
            "{error}"
        );
    }

    #[test]
    fn answer_with_other_command_is_protocol_error() {
        let (transport, _card) =
            scripted(|message, card| card.reply(message.cid, frame::PING, &[0]));
        let mut device = open(transport);
        let error = call(&mut device, &[0x04]).unwrap_err();
        assert!(matches!(error, DeviceError::Protocol(_)), "{error}");
    }

    #[test]
    fn disconnected_transport_is_device_lost() {
        let (transport, card) = scripted(echo);
        let mut device = open(transport);
        card.lock().unwrap().disconnected = true;
        let error = call(&mut device, &[0x04]).unwrap_err();
        assert!(error.is_device_lost(), "{error}");
    }

    #[test]
    fn keepalive_status_parses_one_byte() {
        assert_eq!(
            KeepaliveStatus::parse(&[1]),
            Ok(KeepaliveStatus::Processing)
        );
        assert_eq!(KeepaliveStatus::parse(&[2]), Ok(KeepaliveStatus::UpNeeded));
        assert_eq!(
            KeepaliveStatus::parse(&[9]),
            Ok(KeepaliveStatus::Unknown(9))
        );
        assert!(KeepaliveStatus::parse(&[]).is_err());
        assert!(KeepaliveStatus::parse(&[1, 2]).is_err());
    }
}
