//! A UDP relay between the proxy and `cardgate card-sim` that can replay or
//! rewrite the card's getAssertion responses, to play a hostile card or an
//! attacker on the card link.

use std::collections::{HashMap, HashSet};
use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use cardgate::ctap::frame::{self, Packet, Reassembler, Reassembly};

/// The authenticatorGetAssertion command byte, the first byte of a CBOR
/// request payload.
const GET_ASSERTION: u8 = 0x02;

/// Maximum life of a relay thread, so that a forgotten relay ends.
const MAX_LIFETIME: Duration = Duration::from_secs(120);

/// What the relay does with the card's getAssertion responses.
#[derive(Clone, Copy)]
pub enum Mode {
    /// Passes them on and remembers the last successful one.
    Forward,
    /// Sends the remembered response instead of the card's new one.
    ReplayLast,
    /// Sends `rewrite(card's response payload)` instead.
    Rewrite(fn(&[u8]) -> Vec<u8>),
}

/// A running relay; stops when dropped.
pub struct CardRelay {
    /// The UDP port the proxy should send its reports to.
    pub port: u16,
    mode: Arc<Mutex<Mode>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl CardRelay {
    /// Starts relaying between a proxy and the card at `card`.
    pub fn start(card: SocketAddr) -> CardRelay {
        let front = UdpSocket::bind("127.0.0.1:0").expect("bind relay front");
        let back = UdpSocket::bind("127.0.0.1:0").expect("bind relay back");
        let tick = Some(Duration::from_millis(5));
        front.set_read_timeout(tick).expect("front timeout");
        back.set_read_timeout(tick).expect("back timeout");
        let port = front.local_addr().expect("front address").port();
        let mode = Arc::new(Mutex::new(Mode::Forward));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (mode, stop) = (mode.clone(), stop.clone());
            std::thread::spawn(move || relay(front, back, card, &mode, &stop))
        };
        CardRelay {
            port,
            mode,
            stop,
            thread: Some(thread),
        }
    }

    pub fn set_mode(&self, mode: Mode) {
        *self.mode.lock().expect("mode lock") = mode;
    }
}

impl Drop for CardRelay {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn relay(
    front: UdpSocket,
    back: UdpSocket,
    card: SocketAddr,
    mode: &Mutex<Mode>,
    stop: &AtomicBool,
) {
    let deadline = Instant::now() + MAX_LIFETIME;
    let mut proxy: Option<SocketAddr> = None;
    // Channels whose getAssertion response is being collected.
    let mut awaiting: HashMap<u32, (Reassembler, Vec<[u8; frame::REPORT_LEN]>)> = HashMap::new();
    let mut requested: HashSet<u32> = HashSet::new();
    let mut last_assertion: Option<Vec<u8>> = None;
    let mut buffer = [0u8; 2048];

    while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
        // Proxy to card: pass everything on, noting getAssertion requests.
        if let Ok((n, from)) = front.recv_from(&mut buffer) {
            proxy = Some(from);
            let report = &buffer[..n];
            if let Ok(Packet::Init(init)) = Packet::parse(report) {
                if init.cmd == frame::CBOR && init.bcnt > 0 && init.data[0] == GET_ASSERTION {
                    requested.insert(init.cid);
                }
            }
            let _ = back.send_to(report, card);
        }

        // Card to proxy: hold back a getAssertion response until it is
        // whole, then send it on, replayed or rewritten.
        let Ok((n, _)) = back.recv_from(&mut buffer) else {
            continue;
        };
        let Some(proxy) = proxy else { continue };
        let report = &buffer[..n];
        let Ok(packet) = Packet::parse(report) else {
            let _ = front.send_to(report, proxy);
            continue;
        };
        let cid = packet.cid();
        let is_keepalive = matches!(packet, Packet::Init(init) if init.cmd == frame::KEEPALIVE);
        if is_keepalive || !requested.contains(&cid) {
            let _ = front.send_to(report, proxy);
            continue;
        }
        let (reassembler, buffered) = awaiting
            .entry(cid)
            .or_insert_with(|| (Reassembler::new(cid), Vec::new()));
        let mut copy = [0u8; frame::REPORT_LEN];
        copy.copy_from_slice(&report[..frame::REPORT_LEN.min(report.len())]);
        buffered.push(copy);
        let message = match reassembler.feed(report) {
            Ok(Reassembly::Complete(message)) => message,
            Ok(_) => continue,
            Err(_) => {
                // Not ours to judge: pass the reports on as they came.
                let reports = awaiting.remove(&cid).map(|(_, b)| b).unwrap_or_default();
                for report in reports {
                    let _ = front.send_to(&report, proxy);
                }
                requested.remove(&cid);
                continue;
            }
        };
        let buffered = awaiting.remove(&cid).map(|(_, b)| b).unwrap_or_default();
        requested.remove(&cid);

        let current = *mode.lock().expect("mode lock");
        let replacement = match current {
            Mode::Forward => {
                if message.payload.first() == Some(&0) {
                    last_assertion = Some(message.payload.clone());
                }
                None
            }
            Mode::ReplayLast => last_assertion.clone(),
            Mode::Rewrite(rewrite) => Some(rewrite(&message.payload)),
        };
        match replacement {
            Some(payload) => {
                let reports = frame::encode_message(cid, frame::CBOR, &payload)
                    .expect("a replacement fits in one message");
                for report in reports {
                    let _ = front.send_to(&report, proxy);
                }
            }
            None => {
                for report in buffered {
                    let _ = front.send_to(&report, proxy);
                }
            }
        }
    }
}
