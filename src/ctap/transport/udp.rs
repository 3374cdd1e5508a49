//! Raw 64-byte CTAPHID reports over UDP, the convention of firmware
//! simulators: the device listens on one address and the host sends from
//! (and receives on) another, by default 127.0.0.1:7112.

use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use tracing::{debug, warn};

use super::{Connector, Transport, TransportError};
use crate::ctap::frame::{Report, REPORT_LEN};

/// Receive buffer size: larger than a report, so that an oversized datagram
/// is recognised instead of silently cut to 64 bytes.
const RECEIVE_BUFFER: usize = 2048;

/// Opens [`UdpTransport`]s from `local` to `device`.
#[derive(Debug, Clone)]
pub struct UdpConnector {
    device: SocketAddr,
    local: SocketAddr,
}

impl UdpConnector {
    pub fn new(device: SocketAddr, local: SocketAddr) -> Self {
        UdpConnector { device, local }
    }
}

impl Connector for UdpConnector {
    fn connect(&self) -> Result<Box<dyn Transport>, TransportError> {
        Ok(Box::new(UdpTransport::open(self.device, self.local)?))
    }

    fn describe(&self) -> String {
        format!("udp {} from {}", self.device, self.local)
    }
}

/// A UDP socket that exchanges single reports with one device address.
#[derive(Debug)]
pub struct UdpTransport {
    socket: UdpSocket,
    device: SocketAddr,
    local: SocketAddr,
    /// Datagrams dropped because they came from another address or were
    /// not exactly one report long.
    dropped_datagrams: u64,
}

impl UdpTransport {
    /// Binds `local` and sends reports to `device`. Binding `local` with port
    /// 0 picks a free port.
    pub fn open(device: SocketAddr, local: SocketAddr) -> Result<UdpTransport, TransportError> {
        let socket = UdpSocket::bind(local).map_err(|e| {
            TransportError::Io(format!(
                "cannot bind UDP {local} to reach the card at {device}: {e}"
            ))
        })?;
        let local = socket.local_addr().unwrap_or(local);
        debug!(%device, %local, "opened UDP card transport");
        Ok(UdpTransport {
            socket,
            device,
            local,
            dropped_datagrams: 0,
        })
    }

    /// Returns the bound local address.
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// Returns how many datagrams were dropped so far.
    pub fn dropped_datagrams(&self) -> u64 {
        self.dropped_datagrams
    }

    fn io_error(&self, action: &str, error: &io::Error) -> TransportError {
        match error.kind() {
            // Reported after an ICMP port unreachable: nothing listens there.
            io::ErrorKind::ConnectionRefused | io::ErrorKind::ConnectionReset => {
                TransportError::Disconnected(format!("{action} {}: {error}", self.device))
            }
            _ => TransportError::Io(format!("{action} {} failed: {error}", self.device)),
        }
    }
}

impl Transport for UdpTransport {
    fn write_report(&mut self, report: &Report) -> Result<(), TransportError> {
        let sent = self
            .socket
            .send_to(report, self.device)
            .map_err(|e| self.io_error("send to", &e))?;
        if sent != REPORT_LEN {
            return Err(TransportError::Io(format!(
                "short UDP send to {}: {sent} of {REPORT_LEN} bytes",
                self.device
            )));
        }
        Ok(())
    }

    fn read_report(&mut self, timeout: Duration) -> Result<Option<Report>, TransportError> {
        let deadline = Instant::now() + timeout;
        let mut buffer = [0u8; RECEIVE_BUFFER];
        loop {
            let remaining = deadline.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                return Ok(None);
            }
            self.socket
                .set_read_timeout(Some(remaining))
                .map_err(|e| self.io_error("set read timeout for", &e))?;
            let (length, from) = match self.socket.recv_from(&mut buffer) {
                Ok(received) => received,
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
                {
                    return Ok(None)
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(self.io_error("receive from", &e)),
            };

            if from != self.device {
                self.dropped_datagrams += 1;
                warn!(%from, expected = %self.device, dropped = self.dropped_datagrams, "dropped UDP datagram from another address");
                continue;
            }
            match buffer.get(..length).and_then(|d| Report::try_from(d).ok()) {
                Some(report) => return Ok(Some(report)),
                None => {
                    self.dropped_datagrams += 1;
                    warn!(%from, length, dropped = self.dropped_datagrams, "dropped UDP datagram that is not one {REPORT_LEN}-byte report");
                }
            }
        }
    }

    fn describe(&self) -> String {
        format!("udp {} from {}", self.device, self.local)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn loopback() -> SocketAddr {
        "127.0.0.1:0".parse().unwrap()
    }

    /// Creates a fake device socket and a transport connected to it.
    fn pair() -> (UdpSocket, UdpTransport) {
        let device = UdpSocket::bind(loopback()).unwrap();
        let transport = UdpTransport::open(device.local_addr().unwrap(), loopback()).unwrap();
        (device, transport)
    }

    #[test]
    fn reports_travel_both_ways() {
        let (device, mut transport) = pair();
        let report = [0x5a; REPORT_LEN];
        transport.write_report(&report).unwrap();

        let mut buffer = [0u8; 128];
        let (length, from) = device.recv_from(&mut buffer).unwrap();
        assert_eq!(length, REPORT_LEN);
        assert_eq!(from, transport.local_addr());

        device.send_to(&[0xa5; REPORT_LEN], from).unwrap();
        let received = transport.read_report(Duration::from_secs(2)).unwrap();
        assert_eq!(received, Some([0xa5; REPORT_LEN]));
    }

    #[test]
    fn read_times_out_with_none() {
        let (_device, mut transport) = pair();
        let started = Instant::now();
        assert_eq!(
            transport.read_report(Duration::from_millis(50)).unwrap(),
            None
        );
        assert!(started.elapsed() >= Duration::from_millis(50));
    }

    #[test]
    fn datagrams_from_other_addresses_are_dropped() {
        let (device, mut transport) = pair();
        let stranger = UdpSocket::bind(loopback()).unwrap();
        stranger
            .send_to(&[0x11; REPORT_LEN], transport.local_addr())
            .unwrap();
        device
            .send_to(&[0x22; REPORT_LEN], transport.local_addr())
            .unwrap();

        let received = transport.read_report(Duration::from_secs(2)).unwrap();
        assert_eq!(received, Some([0x22; REPORT_LEN]));
        assert_eq!(transport.dropped_datagrams(), 1);
    }

    #[test]
    fn datagrams_of_wrong_size_are_dropped() {
        let (device, mut transport) = pair();
        let to = transport.local_addr();
        device.send_to(&[0x11; REPORT_LEN - 1], to).unwrap();
        device.send_to(&[0x11; REPORT_LEN + 1], to).unwrap();
        device.send_to(&[0x33; REPORT_LEN], to).unwrap();

        let received = transport.read_report(Duration::from_secs(2)).unwrap();
        assert_eq!(received, Some([0x33; REPORT_LEN]));
        assert_eq!(transport.dropped_datagrams(), 2);
    }

    #[test]
    fn bind_failure_names_both_addresses() {
        let (device, transport) = pair();
        let taken = transport.local_addr();
        let error = UdpTransport::open(device.local_addr().unwrap(), taken).unwrap_err();
        let message = error.to_string();
        assert!(message.contains(&taken.to_string()), "{message}");
    }
}
