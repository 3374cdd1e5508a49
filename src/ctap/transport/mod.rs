//! The narrow packet interface between CTAPHID and whatever carries its
//! 64-byte reports: hidraw through hidapi, UDP datagrams to a firmware
//! simulator, or channels to the in-process simulated card. A relay to a
//! card on a phone would implement the same two traits.

pub mod hid;
pub mod logged;
pub mod sim;
pub mod udp;

use std::fmt;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use crate::ctap::frame::Report;

pub use hid::{HidConnector, HidSelector};
pub use logged::Logged;
pub use sim::{SimCard, SimHandle};
pub use udp::UdpConnector;

/// One open connection to a card that moves single reports.
pub trait Transport: Send {
    /// Sends one 64-byte report (the hidraw report-ID byte is the
    /// implementation's business).
    fn write_report(&mut self, report: &Report) -> Result<(), TransportError>;

    /// Waits at most `timeout` for one report; `Ok(None)` when none arrived.
    fn read_report(&mut self, timeout: Duration) -> Result<Option<Report>, TransportError>;

    /// Names the device for logs, for example `hid /dev/hidraw3 (1209:0005)`.
    fn describe(&self) -> String;
}

/// Opens transports to one configured card, again after it was lost.
pub trait Connector: Send + Sync {
    fn connect(&self) -> Result<Box<dyn Transport>, TransportError>;

    fn describe(&self) -> String;
}

/// Why a transport could not be opened or used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TransportError {
    #[error("card not found: {0}")]
    NotFound(String),

    #[error("permission denied opening {}; {hint}", path.display())]
    PermissionDenied { path: PathBuf, hint: String },

    #[error("card disconnected: {0}")]
    Disconnected(String),

    #[error("card I/O failed: {0}")]
    Io(String),

    /// The device specification cannot be served as configured.
    #[error("{0}")]
    Config(String),
}

impl TransportError {
    /// Whether the card is gone (unplugged, or never found), so that the
    /// caller should drop the transport and connect again later.
    pub fn is_device_lost(&self) -> bool {
        matches!(
            self,
            TransportError::NotFound(_) | TransportError::Disconnected(_)
        )
    }
}

/// The local UDP address reports are sent from when the spec names none;
/// firmware simulators send their replies to 127.0.0.1:7112.
pub const DEFAULT_UDP_LOCAL: SocketAddr =
    SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 7112));

/// The card to talk to, as written in configuration and on the command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeviceSpec {
    /// A FIDO interface of a USB HID device.
    Hid(HidSelector),
    /// Raw 64-byte reports over UDP: sent to `device` from a socket bound to `local`.
    Udp {
        device: SocketAddr,
        local: SocketAddr,
    },
    /// The in-process simulated card.
    Sim,
}

const ACCEPTED_FORMS: &str = "hid, hid:/dev/hidrawN, hid:VID:PID (hex, e.g. hid:1209:0005), \
     udp:HOST:PORT, udp:HOST:PORT@LOCALHOST:LOCALPORT, sim";

/// A device specification that could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid card device `{value}`: {reason}; accepted forms: {ACCEPTED_FORMS}")]
pub struct ParseDeviceSpecError {
    pub value: String,
    pub reason: String,
}

impl FromStr for DeviceSpec {
    type Err = ParseDeviceSpecError;

    fn from_str(value: &str) -> Result<Self, Self::Err> {
        let invalid = |reason: String| ParseDeviceSpecError {
            value: value.to_string(),
            reason,
        };

        if value == "sim" {
            return Ok(DeviceSpec::Sim);
        }
        if value == "hid" {
            return Ok(DeviceSpec::Hid(HidSelector::Any));
        }
        if let Some(rest) = value.strip_prefix("hid:") {
            return parse_hid_selector(rest)
                .map(DeviceSpec::Hid)
                .map_err(invalid);
        }
        if let Some(rest) = value.strip_prefix("udp:") {
            let (device, local) = match rest.split_once('@') {
                Some((device, local)) => (device, Some(local)),
                None => (rest, None),
            };
            let device = device
                .parse()
                .map_err(|_| invalid(format!("`{device}` is not an IP address and port")))?;
            let local = match local {
                Some(local) => local.parse().map_err(|_| {
                    invalid(format!("local `{local}` is not an IP address and port"))
                })?,
                None => DEFAULT_UDP_LOCAL,
            };
            return Ok(DeviceSpec::Udp { device, local });
        }
        Err(invalid("unknown kind".to_string()))
    }
}

fn parse_hid_selector(rest: &str) -> Result<HidSelector, String> {
    if rest.starts_with('/') {
        return Ok(HidSelector::Path(PathBuf::from(rest)));
    }
    let Some((vid, pid)) = rest.split_once(':') else {
        return Err(format!("`{rest}` is neither an absolute path nor VID:PID"));
    };
    let parse_id = |name: &str, text: &str| {
        let valid = !text.is_empty() && text.len() <= 4;
        u16::from_str_radix(text, 16)
            .ok()
            .filter(|_| valid)
            .ok_or_else(|| format!("{name} `{text}` is not 1 to 4 hex digits"))
    };
    Ok(HidSelector::VidPid(
        parse_id("vendor id", vid)?,
        parse_id("product id", pid)?,
    ))
}

impl fmt::Display for DeviceSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DeviceSpec::Hid(HidSelector::Any) => write!(f, "hid"),
            DeviceSpec::Hid(HidSelector::Path(path)) => write!(f, "hid:{}", path.display()),
            DeviceSpec::Hid(HidSelector::VidPid(vid, pid)) => write!(f, "hid:{vid:04x}:{pid:04x}"),
            DeviceSpec::Udp { device, local } if *local == DEFAULT_UDP_LOCAL => {
                write!(f, "udp:{device}")
            }
            DeviceSpec::Udp { device, local } => write!(f, "udp:{device}@{local}"),
            DeviceSpec::Sim => write!(f, "sim"),
        }
    }
}

/// Builds the connector for `spec`. `sim` is the in-process simulated card,
/// which [`DeviceSpec::Sim`] requires.
pub fn connector(
    spec: &DeviceSpec,
    sim: Option<SimHandle>,
) -> Result<Box<dyn Connector>, TransportError> {
    match spec {
        DeviceSpec::Hid(selector) => Ok(Box::new(HidConnector::new(selector.clone()))),
        DeviceSpec::Udp { device, local } => Ok(Box::new(UdpConnector::new(*device, *local))),
        DeviceSpec::Sim => match sim {
            Some(handle) => Ok(Box::new(handle)),
            None => Err(TransportError::Config(
                "card device `sim` needs an in-process simulated card, and none was started"
                    .to_string(),
            )),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(value: &str) -> DeviceSpec {
        value.parse().unwrap_or_else(|e| panic!("{value}: {e}"))
    }

    #[test]
    fn device_spec_parses_every_form() {
        assert_eq!(parse("hid"), DeviceSpec::Hid(HidSelector::Any));
        assert_eq!(
            parse("hid:/dev/hidraw3"),
            DeviceSpec::Hid(HidSelector::Path("/dev/hidraw3".into()))
        );
        assert_eq!(
            parse("hid:1209:0005"),
            DeviceSpec::Hid(HidSelector::VidPid(0x1209, 0x0005))
        );
        assert_eq!(
            parse("udp:127.0.0.1:8111"),
            DeviceSpec::Udp {
                device: "127.0.0.1:8111".parse().unwrap(),
                local: "127.0.0.1:7112".parse().unwrap(),
            }
        );
        assert_eq!(
            parse("udp:127.0.0.1:8111@127.0.0.1:7200"),
            DeviceSpec::Udp {
                device: "127.0.0.1:8111".parse().unwrap(),
                local: "127.0.0.1:7200".parse().unwrap(),
            }
        );
        assert_eq!(parse("sim"), DeviceSpec::Sim);
    }

    #[test]
    fn device_spec_display_round_trips() {
        for value in [
            "hid",
            "hid:/dev/hidraw3",
            "hid:1209:0005",
            "udp:127.0.0.1:8111",
            "udp:127.0.0.1:8111@127.0.0.1:7200",
            "sim",
        ] {
            assert_eq!(parse(value).to_string(), value);
        }
    }

    #[test]
    fn device_spec_errors_name_value_and_forms() {
        for value in [
            "usb",
            "hid:",
            "hid:hidraw3",
            "hid:1209",
            "hid:12345:0005",
            "hid:1209:zz",
            "udp:localhost",
            "udp:127.0.0.1:8111@nowhere",
            "",
        ] {
            let error = value.parse::<DeviceSpec>().unwrap_err();
            let message = error.to_string();
            assert!(message.contains(&format!("`{value}`")), "{message}");
            assert!(message.contains("hid:/dev/hidrawN"), "{message}");
            assert!(message.contains("udp:HOST:PORT"), "{message}");
        }
    }

    #[test]
    fn sim_connector_requires_handle() {
        let error = connector(&DeviceSpec::Sim, None).err().unwrap();
        assert!(matches!(error, TransportError::Config(_)), "{error}");
    }

    #[test]
    fn device_lost_covers_not_found_and_disconnected() {
        assert!(TransportError::NotFound("x".into()).is_device_lost());
        assert!(TransportError::Disconnected("x".into()).is_device_lost());
        assert!(!TransportError::Io("x".into()).is_device_lost());
        assert!(!TransportError::PermissionDenied {
            path: "/dev/hidraw0".into(),
            hint: String::new()
        }
        .is_device_lost());
    }
}
