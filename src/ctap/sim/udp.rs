//! Serves the simulated card over UDP: each datagram is one 64-byte CTAPHID
//! report. Replies go to the address the channel's last datagram came from,
//! so both the firmware-simulator convention (host on 127.0.0.1:7112) and
//! clients on any other port work.

use std::collections::HashMap;
use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tracing::{debug, info, warn};

use super::authenticator::SimAuthenticator;
use super::engine::{Engine, EngineConfig};
use super::Ctap2Handler;
use crate::ctap::frame::{Packet, Report, BROADCAST_CID, REPORT_LEN};

pub use super::engine::Presence;

/// Maximum socket wait, so that a stop request is noticed within this time.
const STOP_CHECK_INTERVAL: Duration = Duration::from_millis(100);
/// Channels whose reply address is remembered; the table is cleared when
/// it grows past this, and replies then go to the last sender.
const MAX_PEERS: usize = 256;
/// Receive buffer size: larger than a report, so that an oversized datagram
/// is recognised and dropped instead of cut to 64 bytes.
const RECEIVE_BUFFER: usize = 2048;

/// Runs the simulated ChromeCard on `listen` with its state in `state_dir`
/// until Ctrl-C.
pub fn run(listen: SocketAddr, state_dir: &Path, presence: Presence) -> io::Result<()> {
    let authenticator = SimAuthenticator::open(Some(state_dir))?;
    let server = start(listen, authenticator, presence, EngineConfig::default())?;
    info!(
        listen = %server.local_addr(),
        state = %state_dir.display(),
        %presence,
        "simulated card listening for CTAPHID reports over UDP"
    );

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let interrupted = runtime.block_on(async {
        let ctrl_c = tokio::signal::ctrl_c();
        tokio::pin!(ctrl_c);
        loop {
            tokio::select! {
                result = &mut ctrl_c => return result.map(|()| true),
                _ = tokio::time::sleep(STOP_CHECK_INTERVAL) => {
                    if server.is_finished() {
                        return Ok(false);
                    }
                }
            }
        }
    })?;
    if interrupted {
        info!("interrupted; stopping the simulated card");
    }
    let result = server.stop();
    info!("simulated card stopped");
    result
}

/// Binds `listen` (port 0 picks a free port) and serves `handler` on a
/// background thread until [`SimServer::stop`] or drop.
pub fn start<H: Ctap2Handler>(
    listen: SocketAddr,
    handler: H,
    presence: Presence,
    config: EngineConfig,
) -> io::Result<SimServer> {
    let socket = UdpSocket::bind(listen).map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("cannot bind UDP {listen} for the simulated card: {e}"),
        )
    })?;
    let local_addr = socket.local_addr()?;
    let stop = Arc::new(AtomicBool::new(false));
    let server = Server {
        socket,
        engine: Engine::new(handler, presence, config),
        peers: HashMap::new(),
        last_peer: None,
        dropped_datagrams: 0,
        stop: Arc::clone(&stop),
    };
    let thread = std::thread::Builder::new()
        .name("sim-card-udp".to_string())
        .spawn(move || server.serve())?;
    Ok(SimServer {
        local_addr,
        stop,
        thread: Some(thread),
    })
}

/// A running UDP simulated card.
#[derive(Debug)]
pub struct SimServer {
    local_addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<io::Result<()>>>,
}

impl SimServer {
    /// Returns the bound address, with the port chosen when `listen` had port 0.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Returns whether the server thread has ended (stopped or failed).
    pub fn is_finished(&self) -> bool {
        self.thread.as_ref().is_none_or(|t| t.is_finished())
    }

    /// Stops the server and returns the error that ended it, if any.
    pub fn stop(mut self) -> io::Result<()> {
        self.shutdown()
    }

    fn shutdown(&mut self) -> io::Result<()> {
        self.stop.store(true, Ordering::SeqCst);
        match self.thread.take() {
            Some(thread) => thread
                .join()
                .unwrap_or_else(|_| Err(io::Error::other("simulated card thread panicked"))),
            None => Ok(()),
        }
    }
}

impl Drop for SimServer {
    fn drop(&mut self) {
        if let Err(error) = self.shutdown() {
            warn!(%error, "simulated card server failed");
        }
    }
}

struct Server<H: Ctap2Handler> {
    socket: UdpSocket,
    engine: Engine<H>,
    /// The reply address of each channel: the sender of its last datagram.
    peers: HashMap<u32, SocketAddr>,
    last_peer: Option<SocketAddr>,
    dropped_datagrams: u64,
    stop: Arc<AtomicBool>,
}

impl<H: Ctap2Handler> Server<H> {
    fn serve(mut self) -> io::Result<()> {
        let mut buffer = [0u8; RECEIVE_BUFFER];
        let mut out = Vec::new();
        while !self.stop.load(Ordering::SeqCst) {
            let wait = self
                .engine
                .next_deadline()
                .map(|d| d.saturating_duration_since(Instant::now()))
                .unwrap_or(STOP_CHECK_INTERVAL)
                .clamp(Duration::from_millis(1), STOP_CHECK_INTERVAL);
            self.socket.set_read_timeout(Some(wait))?;

            match self.socket.recv_from(&mut buffer) {
                Ok((length, from)) => {
                    if let Some(report) =
                        buffer.get(..length).and_then(|d| Report::try_from(d).ok())
                    {
                        self.remember_peer(&report, from);
                        self.engine.handle_report(&report, Instant::now(), &mut out);
                        self.send_all(&mut out, from);
                    } else {
                        self.dropped_datagrams += 1;
                        warn!(%from, length, dropped = self.dropped_datagrams, "dropped UDP datagram that is not one {REPORT_LEN}-byte report");
                    }
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock
                            | io::ErrorKind::TimedOut
                            | io::ErrorKind::Interrupted
                    ) => {}
                // Linux reports an earlier reply's ICMP port unreachable here;
                // that client is gone, the server is fine.
                Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
                    debug!(error = %e, "a client stopped listening");
                }
                Err(e) => return Err(e),
            }

            self.engine.poll(Instant::now(), &mut out);
            if let Some(peer) = self.last_peer {
                self.send_all(&mut out, peer);
            }
        }
        Ok(())
    }

    fn remember_peer(&mut self, report: &Report, from: SocketAddr) {
        self.last_peer = Some(from);
        let Ok(packet) = Packet::parse(report) else {
            return;
        };
        let cid = packet.cid();
        if cid == BROADCAST_CID {
            return;
        }
        if self.peers.len() >= MAX_PEERS && !self.peers.contains_key(&cid) {
            debug!("forgetting reply addresses of {MAX_PEERS} channels");
            self.peers.clear();
        }
        self.peers.insert(cid, from);
    }

    /// Sends each report to its channel's peer, or to `fallback` (the
    /// sender of the datagram being handled, or the last sender).
    fn send_all(&mut self, out: &mut Vec<Report>, fallback: SocketAddr) {
        for report in out.drain(..) {
            let to = Packet::parse(&report)
                .ok()
                .and_then(|p| self.peers.get(&p.cid()).copied())
                .unwrap_or(fallback);
            if let Err(error) = self.socket.send_to(&report, to) {
                warn!(%to, %error, "sending a report failed");
            }
        }
    }
}
