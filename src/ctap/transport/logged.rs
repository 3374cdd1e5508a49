//! A [`Transport`] wrapper that writes every report it carries, in hex with
//! its direction and a short decoding of the CTAPHID header, to a sink. The
//! bring-up commands use it for `-v`; the wrapped transport is unchanged.

use std::time::Duration;

use super::{Transport, TransportError};
use crate::ctap::device::KeepaliveStatus;
use crate::ctap::frame::{self, command_name, Packet, Report};

/// The way a report travelled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// From the host to the card.
    Sent,
    /// From the card to the host.
    Received,
}

impl Direction {
    fn arrow(self) -> &'static str {
        match self {
            Direction::Sent => "host → card",
            Direction::Received => "card → host",
        }
    }
}

/// Receives one line of text per report, and one more per KEEPALIVE status.
pub type LogSink = Box<dyn FnMut(&str) + Send>;

/// Wraps a transport and reports every report it sends or receives.
pub struct Logged {
    inner: Box<dyn Transport>,
    sink: LogSink,
}

impl Logged {
    /// Wraps `inner`; each logged line is passed to `sink`.
    pub fn new(inner: Box<dyn Transport>, sink: LogSink) -> Logged {
        Logged { inner, sink }
    }

    /// Wraps `inner` and writes the lines to standard error.
    pub fn to_stderr(inner: Box<dyn Transport>) -> Logged {
        Logged::new(inner, Box::new(|line| eprintln!("{line}")))
    }

    fn log(&mut self, direction: Direction, report: &Report) {
        for line in describe_report(direction, report) {
            (self.sink)(&line);
        }
    }
}

impl Transport for Logged {
    fn write_report(&mut self, report: &Report) -> Result<(), TransportError> {
        self.log(Direction::Sent, report);
        self.inner.write_report(report)
    }

    fn read_report(&mut self, timeout: Duration) -> Result<Option<Report>, TransportError> {
        let report = self.inner.read_report(timeout)?;
        if let Some(report) = &report {
            self.log(Direction::Received, report);
        }
        Ok(report)
    }

    fn describe(&self) -> String {
        self.inner.describe()
    }
}

/// Describes one report: a line with the direction, the 64 bytes in hex and
/// the CTAPHID header, and for a KEEPALIVE a second line with its status.
pub fn describe_report(direction: Direction, report: &Report) -> Vec<String> {
    let header = match Packet::parse(report) {
        Ok(Packet::Init(init)) => format!(
            "init cid={:08x} cmd={:#04x} {} bcnt={}",
            init.cid,
            init.cmd,
            command_name(init.cmd),
            init.bcnt
        ),
        Ok(Packet::Continuation(cont)) => format!("cont cid={:08x} seq={}", cont.cid, cont.seq),
        Err(error) => format!("unparsable: {error}"),
    };
    let mut lines = vec![format!(
        "{} {} [{header}]",
        direction.arrow(),
        hex::encode(report)
    )];

    if let Ok(Packet::Init(init)) = Packet::parse(report) {
        if init.cmd == frame::KEEPALIVE {
            let status = init.data.first().copied().unwrap_or_default();
            let name = match init
                .data
                .get(..usize::from(init.bcnt))
                .map(KeepaliveStatus::parse)
            {
                Some(Ok(KeepaliveStatus::Processing)) => "processing".to_string(),
                Some(Ok(KeepaliveStatus::UpNeeded)) => {
                    "up-needed (waiting for the person at the card)".to_string()
                }
                Some(Ok(KeepaliveStatus::Unknown(code))) => format!("unknown status {code}"),
                Some(Err(error)) => format!("malformed ({error})"),
                None => format!("malformed (BCNT {} exceeds one packet)", init.bcnt),
            };
            lines.push(format!("  keepalive status {status}: {name}"));
        }
    }
    lines
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;
    use crate::ctap::frame::{encode_message, KEEPALIVE_UP_NEEDED};

    /// A transport that echoes every written report back.
    struct Echo {
        pending: Option<Report>,
    }

    impl Transport for Echo {
        fn write_report(&mut self, report: &Report) -> Result<(), TransportError> {
            self.pending = Some(*report);
            Ok(())
        }

        fn read_report(&mut self, _timeout: Duration) -> Result<Option<Report>, TransportError> {
            Ok(self.pending.take())
        }

        fn describe(&self) -> String {
            "echo".to_string()
        }
    }

    fn logged_echo() -> (Logged, Arc<Mutex<Vec<String>>>) {
        let lines = Arc::new(Mutex::new(Vec::new()));
        let sink_lines = Arc::clone(&lines);
        let logged = Logged::new(
            Box::new(Echo { pending: None }),
            Box::new(move |line| sink_lines.lock().unwrap().push(line.to_string())),
        );
        (logged, lines)
    }

    #[test]
    fn logged_reports_both_directions_in_hex() {
        let (mut logged, lines) = logged_echo();
        let [report] = encode_message(0x0102_0304, frame::PING, b"hi").unwrap()[..] else {
            panic!("one report expected");
        };

        logged.write_report(&report).unwrap();
        let echoed = logged.read_report(Duration::ZERO).unwrap();
        assert_eq!(echoed, Some(report));

        let lines = lines.lock().unwrap();
        assert_eq!(lines.len(), 2, "{lines:?}");
        assert!(
            lines[0].starts_with("host → card 0102030481000268"),
            "{}",
            lines[0]
        );
        assert!(lines[0].contains("cmd=0x01 PING bcnt=2"), "{}", lines[0]);
        assert!(
            lines[1].starts_with("card → host 0102030481"),
            "{}",
            lines[1]
        );
        assert!(lines[1].contains(&hex::encode(report)), "{}", lines[1]);
    }

    #[test]
    fn logged_read_without_report_logs_nothing() {
        let (mut logged, lines) = logged_echo();
        assert_eq!(logged.read_report(Duration::ZERO).unwrap(), None);
        assert!(lines.lock().unwrap().is_empty());
        assert_eq!(logged.describe(), "echo");
    }

    #[test]
    fn keepalive_report_adds_status_line() {
        let [report] = encode_message(7, frame::KEEPALIVE, &[KEEPALIVE_UP_NEEDED]).unwrap()[..]
        else {
            panic!("one report expected");
        };
        let lines = describe_report(Direction::Received, &report);
        assert_eq!(lines.len(), 2, "{lines:?}");
        assert!(
            lines[1].contains("keepalive status 2: up-needed"),
            "{}",
            lines[1]
        );
    }

    #[test]
    fn continuation_report_shows_sequence() {
        let reports = encode_message(9, frame::CBOR, &[0xaa; 100]).unwrap();
        let lines = describe_report(Direction::Sent, &reports[1]);
        assert_eq!(lines.len(), 1);
        assert!(
            lines[0].contains("[cont cid=00000009 seq=0]"),
            "{}",
            lines[0]
        );
    }

    #[test]
    fn keepalive_with_wrong_length_is_marked_malformed() {
        let [report] = encode_message(7, frame::KEEPALIVE, &[1, 2]).unwrap()[..] else {
            panic!("one report expected");
        };
        let lines = describe_report(Direction::Received, &report);
        assert!(lines[1].contains("malformed"), "{}", lines[1]);
    }
}
