//! The in-process simulated card: the CTAPHID [`Engine`] on its own thread,
//! reached through channels that carry 64-byte reports.
//!
//! Like a hidraw node, every open transport receives every report the card
//! sends, and the CID separates the channels. [`SimHandle::unplug`] makes the card
//! vanish the way a real one does: open transports fail with
//! `Disconnected`, new connects fail with `NotFound`, and the card forgets
//! its channels and any pending request.

use std::io;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender, SyncSender, TrySendError};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tracing::{debug, info};

use super::{Connector, Transport, TransportError};

/// Reports queued for one transport that does not read; later ones are
/// dropped, as hidraw drops input reports when its buffer is full. Room for
/// the largest message (129 reports) and its keepalives.
const REPORT_QUEUE: usize = 256;
use crate::ctap::frame::Report;
use crate::ctap::sim::authenticator::SimAuthenticator;
use crate::ctap::sim::engine::{Engine, EngineConfig, Presence};
use crate::ctap::sim::Ctap2Handler;

/// Messages from handles and transports to the card's thread.
enum Command {
    Report {
        generation: u64,
        report: Report,
    },
    Attach {
        id: u64,
        generation: u64,
        reports: SyncSender<Report>,
    },
    Detach {
        id: u64,
    },
    SetPresence(Presence),
    Unplug {
        generation: u64,
    },
    Shutdown,
}

/// Whether the card is plugged in. Each unplug starts a new generation, and
/// a transport only works while its generation is current.
#[derive(Debug)]
struct Plug {
    plugged: bool,
    generation: u64,
}

/// State shared by all handles and transports of one simulated card; the
/// card's thread stops when the last of them is dropped.
struct Inner {
    commands: Sender<Command>,
    plug: Mutex<Plug>,
    next_connection: AtomicU64,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl Inner {
    fn plug(&self) -> MutexGuard<'_, Plug> {
        // The plug state is two plain fields, valid even after a panic.
        self.plug.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        let _ = self.commands.send(Command::Shutdown);
        let thread = self
            .thread
            .get_mut()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(thread) = thread {
            let _ = thread.join();
        }
    }
}

/// A simulated card: the engine and the transports attached to it, owned by
/// the card's thread.
pub struct SimCard<H: Ctap2Handler> {
    engine: Engine<H>,
    commands: Receiver<Command>,
    connections: Vec<(u64, SyncSender<Report>)>,
    generation: u64,
}

impl SimCard<SimAuthenticator> {
    /// Starts the simulated ChromeCard with its state in `state_dir`
    /// (in memory when `None`).
    pub fn spawn_authenticator(
        state_dir: Option<&Path>,
        presence: Presence,
    ) -> io::Result<SimHandle> {
        let authenticator = SimAuthenticator::open(state_dir)?;
        Ok(SimCard::spawn(authenticator, presence))
    }
}

impl<H: Ctap2Handler> SimCard<H> {
    /// Starts a simulated card with the default engine settings.
    ///
    /// Panics if the OS cannot start a thread, as `std::thread::spawn` does.
    pub fn spawn(handler: H, presence: Presence) -> SimHandle {
        SimCard::spawn_with_config(handler, presence, EngineConfig::default())
    }

    /// Starts a simulated card; tests shorten the timeouts in `config`.
    ///
    /// Panics if the OS cannot start a thread, as `std::thread::spawn` does.
    pub fn spawn_with_config(handler: H, presence: Presence, config: EngineConfig) -> SimHandle {
        let (commands, receiver) = mpsc::channel();
        let card = SimCard {
            engine: Engine::new(handler, presence, config),
            commands: receiver,
            connections: Vec::new(),
            generation: 0,
        };
        let thread = std::thread::Builder::new()
            .name("sim-card".to_string())
            .spawn(move || card.run())
            .unwrap_or_else(|e| panic!("cannot start the simulated card's thread: {e}"));
        SimHandle {
            inner: Arc::new(Inner {
                commands,
                plug: Mutex::new(Plug {
                    plugged: true,
                    generation: 0,
                }),
                next_connection: AtomicU64::new(1),
                thread: Mutex::new(Some(thread)),
            }),
        }
    }

    fn run(mut self) {
        info!(presence = %self.engine.presence(), "simulated card started");
        let mut out = Vec::new();
        loop {
            let received = match self.engine.next_deadline() {
                Some(deadline) => {
                    let wait = deadline.saturating_duration_since(Instant::now());
                    match self.commands.recv_timeout(wait) {
                        Ok(command) => Some(command),
                        Err(RecvTimeoutError::Timeout) => None,
                        Err(RecvTimeoutError::Disconnected) => break,
                    }
                }
                None => match self.commands.recv() {
                    Ok(command) => Some(command),
                    Err(_) => break,
                },
            };

            let now = Instant::now();
            match received {
                Some(Command::Shutdown) => break,
                Some(command) => self.apply(command, now, &mut out),
                None => {}
            }
            self.engine.poll(now, &mut out);
            self.deliver(&mut out);
        }
        info!("simulated card stopped");
    }

    fn apply(&mut self, command: Command, now: Instant, out: &mut Vec<Report>) {
        match command {
            Command::Report { generation, report } if generation == self.generation => {
                self.engine.handle_report(&report, now, out);
            }
            Command::Report { .. } => debug!("dropping report from before the last unplug"),
            Command::Attach {
                id,
                generation,
                reports,
            } if generation == self.generation => self.connections.push((id, reports)),
            Command::Attach { .. } => {}
            Command::Detach { id } => self.connections.retain(|(c, _)| *c != id),
            Command::SetPresence(presence) => self.engine.set_presence(presence, now, out),
            Command::Unplug { generation } => {
                self.engine.reset();
                // Dropping the senders makes every waiting read fail at once.
                self.connections.clear();
                self.generation = generation;
                out.clear();
            }
            Command::Shutdown => {}
        }
    }

    /// Sends every output report to every attached transport, as hidraw
    /// does for every open file descriptor.
    fn deliver(&mut self, out: &mut Vec<Report>) {
        for report in out.drain(..) {
            self.connections
                .retain(|(id, reports)| match reports.try_send(report) {
                    Ok(()) => true,
                    Err(TrySendError::Full(_)) => {
                        debug!(connection = id, "transport queue full; dropping report");
                        true
                    }
                    Err(TrySendError::Disconnected(_)) => false,
                });
        }
    }
}

/// Controls a running simulated card and opens transports to it.
#[derive(Clone)]
pub struct SimHandle {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for SimHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimHandle")
            .field("plug", &*self.inner.plug())
            .finish()
    }
}

impl SimHandle {
    /// Opens a transport; fails with `NotFound` while the card is unplugged.
    pub fn connect(&self) -> Result<Box<dyn Transport>, TransportError> {
        let plug = self.inner.plug();
        if !plug.plugged {
            return Err(TransportError::NotFound(
                "simulated card is unplugged".to_string(),
            ));
        }
        let id = self.inner.next_connection.fetch_add(1, Ordering::Relaxed);
        let (sender, reports) = mpsc::sync_channel(REPORT_QUEUE);
        // Sent under the plug lock, so an unplug cannot slip in between.
        self.inner
            .commands
            .send(Command::Attach {
                id,
                generation: plug.generation,
                reports: sender,
            })
            .map_err(|_| TransportError::Disconnected("simulated card stopped".to_string()))?;
        Ok(Box::new(SimTransport {
            inner: Arc::clone(&self.inner),
            id,
            generation: plug.generation,
            reports,
        }))
    }

    /// Makes the card vanish: open transports fail with `Disconnected`, and
    /// the card forgets its channels and any pending request.
    pub fn unplug(&self) {
        let mut plug = self.inner.plug();
        if !plug.plugged {
            return;
        }
        plug.plugged = false;
        plug.generation += 1;
        let _ = self.inner.commands.send(Command::Unplug {
            generation: plug.generation,
        });
        info!("simulated card unplugged");
    }

    /// Makes the card available again; earlier transports stay dead.
    pub fn replug(&self) {
        let mut plug = self.inner.plug();
        if !plug.plugged {
            plug.plugged = true;
            info!("simulated card plugged in");
        }
    }

    pub fn is_plugged(&self) -> bool {
        self.inner.plug().plugged
    }

    /// Changes the presence policy, including for a request that is already
    /// waiting.
    pub fn set_presence(&self, presence: Presence) {
        let _ = self.inner.commands.send(Command::SetPresence(presence));
    }
}

impl Connector for SimHandle {
    fn connect(&self) -> Result<Box<dyn Transport>, TransportError> {
        SimHandle::connect(self)
    }

    fn describe(&self) -> String {
        "simulated card (in-process)".to_string()
    }
}

/// A transport to the simulated card over channels.
struct SimTransport {
    inner: Arc<Inner>,
    id: u64,
    generation: u64,
    reports: Receiver<Report>,
}

impl SimTransport {
    fn check_plugged(&self) -> Result<(), TransportError> {
        if self.inner.plug().generation != self.generation {
            return Err(TransportError::Disconnected(
                "simulated card was unplugged".to_string(),
            ));
        }
        Ok(())
    }
}

impl Transport for SimTransport {
    fn write_report(&mut self, report: &Report) -> Result<(), TransportError> {
        self.check_plugged()?;
        self.inner
            .commands
            .send(Command::Report {
                generation: self.generation,
                report: *report,
            })
            .map_err(|_| TransportError::Disconnected("simulated card stopped".to_string()))
    }

    fn read_report(&mut self, timeout: Duration) -> Result<Option<Report>, TransportError> {
        self.check_plugged()?;
        match self.reports.recv_timeout(timeout) {
            Ok(report) => {
                self.check_plugged()?;
                Ok(Some(report))
            }
            Err(RecvTimeoutError::Timeout) => Ok(None),
            Err(RecvTimeoutError::Disconnected) => {
                self.check_plugged()?;
                Err(TransportError::Disconnected(
                    "simulated card stopped".to_string(),
                ))
            }
        }
    }

    fn describe(&self) -> String {
        format!("simulated card (connection {})", self.id)
    }
}

impl Drop for SimTransport {
    fn drop(&mut self) {
        let _ = self.inner.commands.send(Command::Detach { id: self.id });
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicBool;

    use super::*;
    use crate::ctap::device::{CtapHidDevice, DeviceError, KeepaliveStatus, Timing};
    use crate::ctap::frame::{
        self, encode_message, InitResponse, Reassembler, Reassembly, BROADCAST_CID,
    };
    use crate::ctap::sim::engine::tests::{
        TestHandler, APPROVED, CANCELLED, DENIED, GET_INFO, MAKE_CREDENTIAL, TIMED_OUT,
    };

    fn spawn(presence: Presence) -> SimHandle {
        let config = EngineConfig {
            user_action_timeout: Duration::from_millis(400),
            ..EngineConfig::default()
        };
        SimCard::spawn_with_config(TestHandler, presence, config)
    }

    fn open(handle: &SimHandle) -> CtapHidDevice {
        CtapHidDevice::open(handle.connect().unwrap(), Timing::default()).unwrap()
    }

    /// Sends makeCredential and returns the response and the keepalives seen.
    fn make_credential(
        device: &mut CtapHidDevice,
    ) -> (Result<Vec<u8>, DeviceError>, Vec<KeepaliveStatus>) {
        let mut seen = Vec::new();
        let never = AtomicBool::new(false);
        let deadline = Instant::now() + Duration::from_secs(10);
        let result = device.cbor(&[MAKE_CREDENTIAL], &mut |s| seen.push(s), &never, deadline);
        (result, seen)
    }

    #[test]
    fn sim_card_answers_ping_and_get_info() {
        let handle = spawn(Presence::Approve);
        let mut device = open(&handle);
        assert_eq!(device.ping(b"hello card").unwrap(), b"hello card");
        let never = AtomicBool::new(false);
        let deadline = Instant::now() + Duration::from_secs(5);
        let info = device
            .cbor(&[GET_INFO], &mut |_| {}, &never, deadline)
            .unwrap();
        assert_eq!(info.first(), Some(&0x00));
        device.wink().unwrap();
    }

    #[test]
    fn approve_reports_processing_then_success() {
        let mut device = open(&spawn(Presence::Approve));
        let (result, seen) = make_credential(&mut device);
        assert_eq!(result.unwrap(), [APPROVED, MAKE_CREDENTIAL]);
        assert_eq!(seen, [KeepaliveStatus::Processing]);
    }

    #[test]
    fn deny_returns_operation_denied() {
        let mut device = open(&spawn(Presence::Deny));
        let (result, _) = make_credential(&mut device);
        assert_eq!(result.unwrap(), [DENIED]);
    }

    #[test]
    fn delay_sends_up_needed_keepalives_then_approves() {
        let mut device = open(&spawn(Presence::Delay(Duration::from_millis(250))));
        let started = Instant::now();
        let (result, seen) = make_credential(&mut device);
        assert_eq!(result.unwrap(), [APPROVED, MAKE_CREDENTIAL]);
        assert!(started.elapsed() >= Duration::from_millis(250));
        assert!(seen.len() >= 2, "keepalives: {seen:?}");
        assert!(
            seen.iter().all(|s| *s == KeepaliveStatus::UpNeeded),
            "{seen:?}"
        );
    }

    #[test]
    fn never_times_out_with_user_action_timeout() {
        let mut device = open(&spawn(Presence::Never));
        let (result, seen) = make_credential(&mut device);
        assert_eq!(result.unwrap(), [TIMED_OUT]);
        assert!(seen.len() >= 3, "keepalives: {seen:?}");
    }

    #[test]
    fn cancel_flag_cancels_and_next_request_is_clean() {
        let handle = spawn(Presence::Never);
        let mut device = open(&handle);
        let cancel = AtomicBool::new(false);
        let deadline = Instant::now() + Duration::from_secs(10);
        let result = device.cbor(
            &[MAKE_CREDENTIAL],
            &mut |_| cancel.store(true, Ordering::SeqCst),
            &cancel,
            deadline,
        );
        assert!(matches!(result, Err(DeviceError::Cancelled)), "{result:?}");

        // The 0x2D reply was drained, so a new request gets its own response.
        handle.set_presence(Presence::Approve);
        let (result, _) = make_credential(&mut device);
        assert_eq!(result.unwrap(), [APPROVED, MAKE_CREDENTIAL]);
    }

    /// Reads reports until a complete message of `cmd` arrives on `cid`.
    fn read_message(transport: &mut Box<dyn Transport>, cid: u32, cmd: u8) -> Vec<u8> {
        let mut reassembler = Reassembler::new(cid);
        loop {
            let report = transport
                .read_report(Duration::from_secs(2))
                .unwrap()
                .unwrap();
            if let Reassembly::Complete(message) = reassembler.feed(&report).unwrap() {
                if message.cmd == cmd {
                    return message.payload;
                }
            }
        }
    }

    fn write_message(transport: &mut Box<dyn Transport>, cid: u32, cmd: u8, payload: &[u8]) {
        for report in encode_message(cid, cmd, payload).unwrap() {
            transport.write_report(&report).unwrap();
        }
    }

    #[test]
    fn cancel_reaches_handler_as_keepalive_cancel() {
        let handle = spawn(Presence::Never);
        let mut transport = handle.connect().unwrap();
        write_message(&mut transport, BROADCAST_CID, frame::INIT, &[5; 8]);
        let init = read_message(&mut transport, BROADCAST_CID, frame::INIT);
        let cid = InitResponse::parse(&init).unwrap().cid;

        write_message(&mut transport, cid, frame::CBOR, &[MAKE_CREDENTIAL]);
        write_message(&mut transport, cid, frame::CANCEL, &[]);
        assert_eq!(read_message(&mut transport, cid, frame::CBOR), [CANCELLED]);
    }

    #[test]
    fn set_presence_approves_waiting_request() {
        let handle = spawn(Presence::Never);
        let mut device = open(&handle);
        let mut seen = Vec::new();
        let never = AtomicBool::new(false);
        let deadline = Instant::now() + Duration::from_secs(10);
        let result = device.cbor(
            &[MAKE_CREDENTIAL],
            &mut |s| {
                seen.push(s);
                handle.set_presence(Presence::Approve);
            },
            &never,
            deadline,
        );
        assert_eq!(result.unwrap(), [APPROVED, MAKE_CREDENTIAL]);
    }

    #[test]
    fn unplug_disconnects_and_replug_allows_new_connection() {
        let handle = spawn(Presence::Approve);
        let mut device = open(&handle);
        device.ping(&[1]).unwrap();

        handle.unplug();
        assert!(!handle.is_plugged());
        let error = device.ping(&[2]).unwrap_err();
        assert!(error.is_device_lost(), "{error}");
        let error = handle.connect().err().unwrap();
        assert!(matches!(error, TransportError::NotFound(_)), "{error}");

        handle.replug();
        let error = device.ping(&[3]).unwrap_err();
        assert!(error.is_device_lost(), "old transport stays dead: {error}");
        let mut device = open(&handle);
        assert_eq!(device.ping(&[4]).unwrap(), [4]);
    }

    #[test]
    fn unplug_fails_a_waiting_read() {
        let handle = spawn(Presence::Never);
        let mut transport = handle.connect().unwrap();
        let unplugger = handle.clone();
        let thread = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            unplugger.unplug();
        });
        let started = Instant::now();
        let error = transport.read_report(Duration::from_secs(5)).unwrap_err();
        assert!(matches!(error, TransportError::Disconnected(_)), "{error}");
        assert!(started.elapsed() < Duration::from_secs(2));
        thread.join().unwrap();
    }

    #[test]
    fn every_transport_sees_every_report() {
        let handle = spawn(Presence::Approve);
        let mut first = open(&handle);
        let mut second = open(&handle);
        assert_eq!(first.ping(&[1]).unwrap(), [1]);
        assert_eq!(second.ping(&[2]).unwrap(), [2]);
        assert_ne!(first.init_info().cid, second.init_info().cid);
    }
}
