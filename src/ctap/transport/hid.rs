//! USB HID transport through hidapi's hidraw backend.
//!
//! A card can expose several hidraw nodes; only the one whose report
//! descriptor has usage page 0xF1D0, usage 0x01 speaks CTAPHID. Opening
//! another node can block, so selection looks at descriptor usages and never
//! at "the first node with this vid:pid". The card's identity (vid:pid plus
//! serial number, or interface number when it has no serial) is remembered
//! so that after a replug under another `/dev/hidrawN` the same card is
//! chosen again.

use std::ffi::CString;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tracing::{debug, info, warn};

use super::{Connector, Transport, TransportError};
use crate::ctap::frame::{Report, REPORT_LEN};

/// HID usage page of FIDO authenticators.
pub const FIDO_USAGE_PAGE: u16 = 0xf1d0;
/// HID usage of the CTAPHID interface within [`FIDO_USAGE_PAGE`].
pub const FIDO_USAGE: u16 = 0x01;
/// USB vendor and product id of the ChromeCard.
pub const CHROMECARD_VID: u16 = 0x1209;
pub const CHROMECARD_PID: u16 = 0x0005;

/// A udev rule that lets the logged-in user open the ChromeCard's hidraw nodes.
pub const UDEV_RULE: &str = r#"SUBSYSTEM=="hidraw", ATTRS{idVendor}=="1209", ATTRS{idProduct}=="0005", MODE="0660", TAG+="uaccess""#;

/// The rule that picks the HID device to use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HidSelector {
    /// The only FIDO interface present (a ChromeCard if there are several).
    Any,
    /// The FIDO interface at this hidraw path.
    Path(PathBuf),
    /// The only FIDO interface with this vendor and product id.
    VidPid(u16, u16),
}

/// One hidraw node as enumerated by hidapi. A node with several top-level
/// usages is listed once per usage.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HidDeviceInfo {
    pub path: PathBuf,
    pub vid: u16,
    pub pid: u16,
    pub manufacturer: Option<String>,
    pub product: Option<String>,
    pub serial: Option<String>,
    pub usage_page: u16,
    pub usage: u16,
    /// USB interface number, -1 when unknown.
    pub interface_number: i32,
    /// Whether this usage is the CTAPHID one.
    pub is_fido: bool,
}

impl HidDeviceInfo {
    fn identity(&self) -> CardIdentity {
        CardIdentity {
            vid: self.vid,
            pid: self.pid,
            serial: self.serial.clone(),
            interface_number: self.interface_number,
        }
    }
}

/// The identity of one card across re-enumerations.
///
/// NOTE: two cards with the same vid:pid and no serial number are
/// indistinguishable. The interface number only separates interfaces of one card.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CardIdentity {
    pub vid: u16,
    pub pid: u16,
    pub serial: Option<String>,
    pub interface_number: i32,
}

impl std::fmt::Display for CardIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:04x}:{:04x}", self.vid, self.pid)?;
        match &self.serial {
            Some(serial) => write!(f, " serial {serial}"),
            None => write!(f, " interface {}", self.interface_number),
        }
    }
}

/// Lists the HID devices hidapi can enumerate; empty (with a warning) when
/// enumeration fails.
pub fn list_devices() -> Vec<HidDeviceInfo> {
    match try_list_devices() {
        Ok(devices) => devices,
        Err(error) => {
            warn!(%error, "HID enumeration failed");
            Vec::new()
        }
    }
}

/// Lists the HID devices hidapi can enumerate.
///
/// hidapi 2.6's linux-native backend reads udev's hidraw devices and each
/// node's report descriptor from sysfs, without opening any node. It skips
/// devices on buses other than USB, Bluetooth, I2C and SPI, and lists a node
/// once per top-level usage.
pub fn try_list_devices() -> Result<Vec<HidDeviceInfo>, TransportError> {
    let api = new_api()?;
    Ok(enumerate(&api))
}

fn new_api() -> Result<hidapi::HidApi, TransportError> {
    hidapi::HidApi::new().map_err(|e| TransportError::Io(format!("HID enumeration failed: {e}")))
}

fn enumerate(api: &hidapi::HidApi) -> Vec<HidDeviceInfo> {
    // Serial, manufacturer and product are `None` in hidapi when the device's
    // string is not valid UTF-8; an empty serial (HID_UNIQ unset) is no
    // serial either.
    let text = |s: Option<&str>| s.filter(|s| !s.is_empty()).map(str::to_string);
    api.device_list()
        .map(|info| HidDeviceInfo {
            path: PathBuf::from(std::ffi::OsStr::from_bytes(info.path().to_bytes())),
            vid: info.vendor_id(),
            pid: info.product_id(),
            manufacturer: text(info.manufacturer_string()),
            product: text(info.product_string()),
            serial: text(info.serial_number()),
            usage_page: info.usage_page(),
            usage: info.usage(),
            interface_number: info.interface_number(),
            is_fido: info.usage_page() == FIDO_USAGE_PAGE && info.usage() == FIDO_USAGE,
        })
        .collect()
}

/// Picks the FIDO interface for `selector` from `devices`.
///
/// A `remembered` card is preferred wherever it now is, so that a card that
/// came back under another hidraw path is found again. Otherwise several
/// matching interfaces are an error rather than a guess.
pub fn select_device(
    devices: &[HidDeviceInfo],
    selector: &HidSelector,
    remembered: Option<&CardIdentity>,
) -> Result<HidDeviceInfo, TransportError> {
    let fido: Vec<&HidDeviceInfo> = devices.iter().filter(|d| d.is_fido).collect();

    if let Some(identity) = remembered {
        if let Some(found) = fido.iter().find(|d| d.identity() == *identity) {
            return Ok((*found).clone());
        }
    }

    match selector {
        HidSelector::Path(path) => {
            if let Some(found) = fido.iter().find(|d| d.path == *path) {
                return Ok((*found).clone());
            }
            if let Some(other) = devices.iter().find(|d| d.path == *path) {
                return Err(TransportError::NotFound(format!(
                    "{} ({:04x}:{:04x}) is not a FIDO interface: usage page {:#06x} usage {:#04x}, \
                     expected usage page {FIDO_USAGE_PAGE:#06x} usage {FIDO_USAGE:#04x}",
                    path.display(),
                    other.vid,
                    other.pid,
                    other.usage_page,
                    other.usage
                )));
            }
            Err(TransportError::NotFound(format!(
                "no HID device at {}",
                path.display()
            )))
        }
        HidSelector::VidPid(vid, pid) => {
            let matching: Vec<&HidDeviceInfo> = fido
                .iter()
                .copied()
                .filter(|d| d.vid == *vid && d.pid == *pid)
                .collect();
            only_one(&matching, &format!("{vid:04x}:{pid:04x}"))
        }
        HidSelector::Any => {
            let cards: Vec<&HidDeviceInfo> = fido
                .iter()
                .copied()
                .filter(|d| d.vid == CHROMECARD_VID && d.pid == CHROMECARD_PID)
                .collect();
            if !cards.is_empty() {
                return only_one(&cards, "the ChromeCard's 1209:0005");
            }
            only_one(&fido, "any vendor")
        }
    }
}

fn only_one(candidates: &[&HidDeviceInfo], what: &str) -> Result<HidDeviceInfo, TransportError> {
    // hidapi lists a node once per top-level usage, so count distinct paths.
    let mut paths: Vec<String> = candidates
        .iter()
        .map(|d| d.path.display().to_string())
        .collect();
    paths.sort();
    paths.dedup();
    match (candidates.first(), paths.len()) {
        (None, _) => Err(TransportError::NotFound(format!(
            "no FIDO HID interface (usage page {FIDO_USAGE_PAGE:#06x}) with {what}"
        ))),
        (Some(only), 1) => Ok((*only).clone()),
        (Some(_), count) => Err(TransportError::NotFound(format!(
            "{count} FIDO HID interfaces match {what}: {}; choose one with hid:/dev/hidrawN",
            paths.join(", ")
        ))),
    }
}

/// Opens the FIDO interface chosen by a [`HidSelector`].
#[derive(Debug)]
pub struct HidConnector {
    selector: HidSelector,
    remembered: Mutex<Option<CardIdentity>>,
}

impl HidConnector {
    pub fn new(selector: HidSelector) -> Self {
        HidConnector {
            selector,
            remembered: Mutex::new(None),
        }
    }

    /// Returns the card opened last, which later connects prefer.
    pub fn remembered(&self) -> Option<CardIdentity> {
        self.remembered.lock().ok().and_then(|r| r.clone())
    }
}

impl Connector for HidConnector {
    fn connect(&self) -> Result<Box<dyn Transport>, TransportError> {
        let api = new_api()?;
        let devices = enumerate(&api);
        let remembered = self.remembered();
        let chosen = select_device(&devices, &self.selector, remembered.as_ref())?;
        let identity = chosen.identity();
        if remembered.as_ref().is_some_and(|r| *r != identity) {
            info!(previous = %remembered.as_ref().map(|r| r.to_string()).unwrap_or_default(), now = %identity, "a different card was selected");
        }

        let transport = HidTransport::open_with(&api, &chosen)?;
        if let Ok(mut slot) = self.remembered.lock() {
            *slot = Some(identity);
        }
        Ok(Box::new(transport))
    }

    fn describe(&self) -> String {
        match &self.selector {
            HidSelector::Any => "hid (any FIDO interface)".to_string(),
            HidSelector::Path(path) => format!("hid {}", path.display()),
            HidSelector::VidPid(vid, pid) => format!("hid {vid:04x}:{pid:04x}"),
        }
    }
}

/// An open hidraw node.
///
/// NOTE: never run against a real card. Opening, the report-ID byte and the
/// disconnect errors follow the source of hidapi 2.6's linux-native backend.
pub struct HidTransport {
    device: hidapi::HidDevice,
    path: PathBuf,
    identity: CardIdentity,
    /// Reports of a length other than [`REPORT_LEN`], which were dropped.
    dropped_reports: u64,
}

impl HidTransport {
    /// Opens the node of `info`. A node the user may not open yields
    /// [`TransportError::PermissionDenied`] with the udev rule that fixes it.
    pub fn open(info: &HidDeviceInfo) -> Result<HidTransport, TransportError> {
        let api = new_api()?;
        HidTransport::open_with(&api, info)
    }

    fn open_with(
        api: &hidapi::HidApi,
        info: &HidDeviceInfo,
    ) -> Result<HidTransport, TransportError> {
        // hidapi 2.6's linux-native open_path panics on a path that is not
        // UTF-8, so such a path is rejected here first.
        let utf8 = info.path.to_str().ok_or_else(|| {
            TransportError::Io(format!(
                "HID path {} is not valid UTF-8",
                info.path.display()
            ))
        })?;
        let c_path = CString::new(utf8).map_err(|_| {
            TransportError::Io(format!(
                "HID path {} contains a NUL byte",
                info.path.display()
            ))
        })?;
        let device = match api.open_path(&c_path) {
            Ok(device) => device,
            Err(error) => return Err(open_error(&info.path, &error)),
        };
        debug!(path = %info.path.display(), card = %info.identity(), "opened HID card");
        Ok(HidTransport {
            device,
            path: info.path.clone(),
            identity: info.identity(),
            dropped_reports: 0,
        })
    }

    pub fn identity(&self) -> &CardIdentity {
        &self.identity
    }
}

/// Classifies a failed open. hidapi's linux backend reports it only as a
/// message, so the node is opened once more with std to learn the error kind,
/// non-blocking as hidapi opens it.
fn open_error(path: &Path, error: &hidapi::HidError) -> TransportError {
    match std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(O_NONBLOCK | O_CLOEXEC)
        .open(path)
    {
        Err(io_error) => classify_open_error(path, &io_error),
        Ok(_) => TransportError::Io(format!("opening {} failed: {error}", path.display())),
    }
}

fn classify_open_error(path: &Path, error: &io::Error) -> TransportError {
    match error.kind() {
        io::ErrorKind::PermissionDenied => TransportError::PermissionDenied {
            path: path.to_path_buf(),
            hint: format!(
                "allow the user to open it with a udev rule such as {UDEV_RULE} \
                 (for example in /etc/udev/rules.d/70-chromecard.rules), then run \
                 `udevadm control --reload && udevadm trigger` and replug the card"
            ),
        },
        io::ErrorKind::NotFound => {
            TransportError::NotFound(format!("{} disappeared", path.display()))
        }
        // The node is still there but its device is gone.
        _ if matches!(error.raw_os_error(), Some(ENODEV | ENXIO)) => TransportError::NotFound(
            format!("{} has no device behind it: {error}", path.display()),
        ),
        _ => TransportError::Io(format!("opening {} failed: {error}", path.display())),
    }
}

/// Flags of open(2) on Linux, the values hidapi's linux-native backend uses.
const O_NONBLOCK: i32 = 0o4000;
const O_CLOEXEC: i32 = 0o2000000;

/// How often a write interrupted by a signal (EINTR) or refused for now
/// (EAGAIN) is tried again, with [`WRITE_RETRY_PAUSE`] between tries.
const WRITE_RETRIES: u32 = 10;
/// Pause between two write tries: 10 tries of 5 ms stay far below the
/// card's idle deadline.
const WRITE_RETRY_PAUSE: Duration = Duration::from_millis(5);

/// Returns whether a failed transfer should simply be tried again.
fn is_transient(error: &hidapi::HidError) -> bool {
    matches!(
        error,
        hidapi::HidError::IoError { error }
            if matches!(error.kind(), io::ErrorKind::Interrupted | io::ErrorKind::WouldBlock)
    )
}

/// errno values with which hidraw reports a removed device.
const ENODEV: i32 = 19;
const EIO: i32 = 5;
const ENXIO: i32 = 6;
const ESHUTDOWN: i32 = 108;

/// Maps a hidapi read or write error; a removed device becomes
/// [`TransportError::Disconnected`].
fn transfer_error(path: &Path, action: &str, error: &hidapi::HidError) -> TransportError {
    let lost = match error {
        hidapi::HidError::IoError { error } => {
            matches!(error.raw_os_error(), Some(ENODEV | EIO | ENXIO | ESHUTDOWN))
        }
        // hidapi's linux backend reports POLLHUP/POLLERR this way.
        hidapi::HidError::HidApiError { message } => message.contains("disconnected"),
        _ => false,
    };
    if lost {
        TransportError::Disconnected(format!("{} ({action}: {error})", path.display()))
    } else {
        TransportError::Io(format!("{action} {} failed: {error}", path.display()))
    }
}

impl Transport for HidTransport {
    fn write_report(&mut self, report: &Report) -> Result<(), TransportError> {
        // hidraw expects the report ID first; CTAPHID devices use unnumbered
        // reports, which take ID 0.
        let mut buffer = [0u8; REPORT_LEN + 1];
        buffer[1..].copy_from_slice(report);
        // hidapi opens the node with O_NONBLOCK and passes write(2) errors
        // through unchanged, so EINTR, and EAGAIN from a driver that honours
        // O_NONBLOCK on writes, can arrive here.
        let mut tries = 0;
        let written = loop {
            match self.device.write(&buffer) {
                Ok(written) => break written,
                Err(error) if is_transient(&error) && tries < WRITE_RETRIES => {
                    tries += 1;
                    std::thread::sleep(WRITE_RETRY_PAUSE);
                }
                Err(error) => return Err(transfer_error(&self.path, "write", &error)),
            }
        };
        // hidraw counts the report-ID byte as written even though USB
        // transfers only the 64 report bytes.
        if written != buffer.len() {
            return Err(TransportError::Io(format!(
                "short write to {}: {written} of {} bytes",
                self.path.display(),
                buffer.len()
            )));
        }
        Ok(())
    }

    fn read_report(&mut self, timeout: Duration) -> Result<Option<Report>, TransportError> {
        let deadline = Instant::now() + timeout;
        // One byte more than a report, so that an oversized report is noticed.
        let mut buffer = [0u8; REPORT_LEN + 1];
        loop {
            let remaining = deadline.saturating_duration_since(Instant::now());
            // Rounded up, so that a wait shorter than 1 ms does not spin.
            let millis = i32::try_from(remaining.as_micros().div_ceil(1000)).unwrap_or(i32::MAX);
            // read_timeout polls for at most `millis` ms and returns 0 when
            // nothing arrived. A poll or read interrupted by a signal (EINTR)
            // is tried again until the deadline.
            let read = match self.device.read_timeout(&mut buffer, millis) {
                Ok(read) => read,
                Err(error) if is_transient(&error) => 0,
                Err(error) => return Err(transfer_error(&self.path, "read", &error)),
            };
            if read == 0 {
                if Instant::now() >= deadline {
                    return Ok(None);
                }
                continue;
            }
            if let Some(report) = buffer.get(..read).and_then(|r| Report::try_from(r).ok()) {
                return Ok(Some(report));
            }
            self.dropped_reports += 1;
            warn!(
                path = %self.path.display(),
                length = read,
                dropped = self.dropped_reports,
                "dropped HID input report of unexpected length (expected {REPORT_LEN})"
            );
            if Instant::now() >= deadline {
                return Ok(None);
            }
        }
    }

    fn describe(&self) -> String {
        format!("hid {} ({})", self.path.display(), self.identity)
    }
}

impl Drop for HidTransport {
    fn drop(&mut self) {
        debug!(path = %self.path.display(), "closing HID card");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(
        path: &str,
        vid: u16,
        pid: u16,
        serial: Option<&str>,
        page: u16,
        usage: u16,
        interface: i32,
    ) -> HidDeviceInfo {
        HidDeviceInfo {
            path: PathBuf::from(path),
            vid,
            pid,
            manufacturer: Some("test maker".into()),
            product: Some("test".into()),
            serial: serial.map(str::to_string),
            usage_page: page,
            usage,
            interface_number: interface,
            is_fido: page == FIDO_USAGE_PAGE && usage == FIDO_USAGE,
        }
    }

    /// The ChromeCard as Linux shows it: a vendor interface first, then the
    /// FIDO interface, both with vid:pid 1209:0005.
    fn chromecard(first: &str, second: &str) -> Vec<HidDeviceInfo> {
        vec![
            node(first, 0x1209, 0x0005, Some("CC01"), 0xff00, 0x01, 0),
            node(
                second,
                0x1209,
                0x0005,
                Some("CC01"),
                FIDO_USAGE_PAGE,
                FIDO_USAGE,
                1,
            ),
        ]
    }

    #[test]
    fn selection_skips_non_fido_node_of_same_card() {
        let devices = chromecard("/dev/hidraw2", "/dev/hidraw3");
        for selector in [HidSelector::Any, HidSelector::VidPid(0x1209, 0x0005)] {
            let chosen = select_device(&devices, &selector, None).unwrap();
            assert_eq!(chosen.path, PathBuf::from("/dev/hidraw3"), "{selector:?}");
        }
    }

    #[test]
    fn selection_by_path_rejects_non_fido_node() {
        let devices = chromecard("/dev/hidraw2", "/dev/hidraw3");
        let error =
            select_device(&devices, &HidSelector::Path("/dev/hidraw2".into()), None).unwrap_err();
        let message = error.to_string();
        assert!(message.contains("/dev/hidraw2"), "{message}");
        assert!(message.contains("not a FIDO interface"), "{message}");
    }

    #[test]
    fn selection_by_path_finds_fido_node() {
        let devices = chromecard("/dev/hidraw2", "/dev/hidraw3");
        let chosen =
            select_device(&devices, &HidSelector::Path("/dev/hidraw3".into()), None).unwrap();
        assert_eq!(chosen.interface_number, 1);
    }

    #[test]
    fn selection_reports_missing_card() {
        let devices = vec![node("/dev/hidraw0", 0x046d, 0xc077, None, 0x0001, 0x02, 0)];
        for selector in [
            HidSelector::Any,
            HidSelector::VidPid(0x1209, 0x0005),
            HidSelector::Path("/dev/hidraw9".into()),
        ] {
            let error = select_device(&devices, &selector, None).unwrap_err();
            assert!(
                matches!(error, TransportError::NotFound(_)),
                "{selector:?}: {error}"
            );
        }
    }

    #[test]
    fn selection_follows_remembered_card_to_new_path() {
        let before = chromecard("/dev/hidraw2", "/dev/hidraw3");
        let first =
            select_device(&before, &HidSelector::Path("/dev/hidraw3".into()), None).unwrap();
        let identity = first.identity();

        let after = chromecard("/dev/hidraw6", "/dev/hidraw7");
        let again = select_device(
            &after,
            &HidSelector::Path("/dev/hidraw3".into()),
            Some(&identity),
        )
        .unwrap();
        assert_eq!(again.path, PathBuf::from("/dev/hidraw7"));
    }

    #[test]
    fn selection_prefers_remembered_card_among_several() {
        let mut devices = chromecard("/dev/hidraw2", "/dev/hidraw3");
        devices.push(node(
            "/dev/hidraw5",
            0x1209,
            0x0005,
            Some("CC02"),
            FIDO_USAGE_PAGE,
            FIDO_USAGE,
            1,
        ));
        let remembered = devices[2].identity();
        let chosen = select_device(&devices, &HidSelector::Any, Some(&remembered)).unwrap();
        assert_eq!(chosen.path, PathBuf::from("/dev/hidraw5"));
    }

    #[test]
    fn selection_rejects_ambiguous_cards() {
        let mut devices = chromecard("/dev/hidraw2", "/dev/hidraw3");
        devices.push(node(
            "/dev/hidraw5",
            0x1209,
            0x0005,
            Some("CC02"),
            FIDO_USAGE_PAGE,
            FIDO_USAGE,
            1,
        ));
        let error =
            select_device(&devices, &HidSelector::VidPid(0x1209, 0x0005), None).unwrap_err();
        let message = error.to_string();
        assert!(message.contains("/dev/hidraw3"), "{message}");
        assert!(message.contains("/dev/hidraw5"), "{message}");
    }

    #[test]
    fn selection_any_prefers_chromecard_over_other_keys() {
        let mut devices = vec![node(
            "/dev/hidraw1",
            0x1050,
            0x0407,
            None,
            FIDO_USAGE_PAGE,
            FIDO_USAGE,
            0,
        )];
        devices.extend(chromecard("/dev/hidraw2", "/dev/hidraw3"));
        let chosen = select_device(&devices, &HidSelector::Any, None).unwrap();
        assert_eq!(chosen.path, PathBuf::from("/dev/hidraw3"));
    }

    #[test]
    fn selection_any_accepts_single_other_key() {
        let devices = vec![node(
            "/dev/hidraw1",
            0x1050,
            0x0407,
            None,
            FIDO_USAGE_PAGE,
            FIDO_USAGE,
            0,
        )];
        let chosen = select_device(&devices, &HidSelector::Any, None).unwrap();
        assert_eq!(chosen.vid, 0x1050);
    }

    #[test]
    fn selection_counts_node_with_several_usages_once() {
        let devices = vec![
            node(
                "/dev/hidraw4",
                0x1209,
                0x0005,
                None,
                FIDO_USAGE_PAGE,
                FIDO_USAGE,
                1,
            ),
            node(
                "/dev/hidraw4",
                0x1209,
                0x0005,
                None,
                FIDO_USAGE_PAGE,
                FIDO_USAGE,
                1,
            ),
        ];
        let chosen = select_device(&devices, &HidSelector::VidPid(0x1209, 0x0005), None).unwrap();
        assert_eq!(chosen.path, PathBuf::from("/dev/hidraw4"));
    }

    #[test]
    fn permission_denied_names_path_and_udev_rule() {
        let error = classify_open_error(
            Path::new("/dev/hidraw3"),
            &io::Error::from(io::ErrorKind::PermissionDenied),
        );
        let TransportError::PermissionDenied { path, hint } = &error else {
            panic!("expected PermissionDenied, got {error:?}");
        };
        assert_eq!(path, Path::new("/dev/hidraw3"));
        assert!(hint.contains(UDEV_RULE), "{hint}");
        assert!(error.to_string().contains("/dev/hidraw3"));
    }

    #[test]
    fn open_of_missing_node_is_not_found() {
        let info = node(
            "/dev/hidraw-cardgate-missing",
            0x1209,
            0x0005,
            None,
            FIDO_USAGE_PAGE,
            FIDO_USAGE,
            1,
        );
        let error = HidTransport::open(&info).err().unwrap();
        assert!(matches!(error, TransportError::NotFound(_)), "{error}");
    }

    #[test]
    fn open_of_non_hidraw_node_is_io_error() {
        let info = node(
            "/dev/null",
            0x1209,
            0x0005,
            None,
            FIDO_USAGE_PAGE,
            FIDO_USAGE,
            1,
        );
        let error = HidTransport::open(&info).err().unwrap();
        let TransportError::Io(message) = &error else {
            panic!("expected Io, got {error:?}");
        };
        assert!(message.contains("/dev/null"), "{message}");
    }

    #[test]
    fn open_rejects_non_utf8_path_without_panic() {
        let mut info = node(
            "/dev/x",
            0x1209,
            0x0005,
            None,
            FIDO_USAGE_PAGE,
            FIDO_USAGE,
            1,
        );
        info.path = PathBuf::from(std::ffi::OsStr::from_bytes(b"/dev/hidraw\xff"));
        let error = HidTransport::open(&info).err().unwrap();
        assert!(error.to_string().contains("UTF-8"), "{error}");
    }

    #[test]
    fn gone_device_on_open_is_not_found() {
        for errno in [ENODEV, ENXIO] {
            let error = classify_open_error(
                Path::new("/dev/hidraw3"),
                &io::Error::from_raw_os_error(errno),
            );
            assert!(error.is_device_lost(), "errno {errno}: {error}");
        }
    }

    #[test]
    fn interrupted_and_would_block_are_transient() {
        const EINTR: i32 = 4;
        const EAGAIN: i32 = 11;
        for errno in [EINTR, EAGAIN] {
            let error = hidapi::HidError::IoError {
                error: io::Error::from_raw_os_error(errno),
            };
            assert!(is_transient(&error), "errno {errno}");
        }
        let gone = hidapi::HidError::IoError {
            error: io::Error::from_raw_os_error(ENODEV),
        };
        assert!(!is_transient(&gone));
    }

    #[test]
    fn removed_device_errors_are_disconnects() {
        let path = Path::new("/dev/hidraw3");
        let gone = hidapi::HidError::IoError {
            error: io::Error::from_raw_os_error(ENODEV),
        };
        assert!(transfer_error(path, "read", &gone).is_device_lost());
        let hangup = hidapi::HidError::HidApiError {
            message: "unexpected poll error (device disconnected)".into(),
        };
        assert!(transfer_error(path, "read", &hangup).is_device_lost());
        let other = hidapi::HidError::IoError {
            error: io::Error::from_raw_os_error(22),
        };
        assert!(!transfer_error(path, "write", &other).is_device_lost());
    }
}
