//! `cardgate card doctor`: checks, in the order a card comes up, why it
//! does or does not work, and ends with the one next action.
//!
//! The steps: hidraw nodes present, permissions, FIDO interface found,
//! INIT, getInfo, and the card's PIN/UV shape with what cardgate sends for
//! it. The three hidraw steps apply only to `hid` devices. A step that
//! depends on a failed one is skipped with that reason.

use std::process::ExitCode;

use serde::Serialize;
use serde_json::{json, Value};

use super::card::{open_transport, print_value, read_get_info, DeviceArgs, Failure, OutputArgs};
use super::hidraw::{fido_interfaces, skipped_nodes, Access, Inventory};
use crate::ctap::device::{CtapHidDevice, DeviceError, Timing};
use crate::ctap::get_info::{GetInfo, CHROMECARD_AAGUID};
use crate::ctap::transport::hid::{self, HidDeviceInfo, HidSelector};
use crate::ctap::transport::{DeviceSpec, TransportError};

/// The result of one step.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Ok,
    /// Works, but not the way cardgate is configured by default.
    Warn,
    Fail,
    /// Does not apply, or depends on a step that failed.
    Skip,
}

/// One step of the diagnosis.
#[derive(Debug, Clone, Serialize)]
pub struct Step {
    pub name: &'static str,
    pub status: Status,
    pub detail: String,
    /// The action that resolves a failure or warning.
    pub fix: Option<String>,
}

impl Step {
    fn ok(name: &'static str, detail: impl Into<String>) -> Step {
        Step {
            name,
            status: Status::Ok,
            detail: detail.into(),
            fix: None,
        }
    }

    fn fail(name: &'static str, detail: impl Into<String>, fix: impl Into<String>) -> Step {
        Step {
            name,
            status: Status::Fail,
            detail: detail.into(),
            fix: Some(fix.into()),
        }
    }

    fn warn(name: &'static str, detail: impl Into<String>, fix: impl Into<String>) -> Step {
        Step {
            name,
            status: Status::Warn,
            detail: detail.into(),
            fix: Some(fix.into()),
        }
    }

    fn skip(name: &'static str, detail: impl Into<String>) -> Step {
        Step {
            name,
            status: Status::Skip,
            detail: detail.into(),
            fix: None,
        }
    }
}

const NODES: &str = "hidraw nodes present";
const PERMISSIONS: &str = "permissions";
const INTERFACE: &str = "FIDO interface found";
const INIT: &str = "INIT";
const GET_INFO: &str = "getInfo";
const PIN_UV: &str = "PIN/UV";

const ATTACH_CARD: &str = "plug the card in and attach it to this machine (in Qubes OS, \
     `qvm-usb attach` in dom0), then run `cardgate card doctor` again";

/// Runs the hidraw steps for `selector` on `inventory`; `probe` opens a
/// FIDO interface to learn whether this user may.
pub fn hid_steps(
    selector: &HidSelector,
    inventory: &Inventory,
    probe: &dyn Fn(&HidDeviceInfo) -> Access,
) -> Vec<Step> {
    vec![
        nodes_step(selector, inventory),
        permissions_step(selector, inventory, probe),
        interface_step(selector, inventory),
    ]
}

fn nodes_step(selector: &HidSelector, inventory: &Inventory) -> Step {
    let names: Vec<String> = inventory
        .nodes
        .iter()
        .map(|p| p.display().to_string())
        .collect();
    if names.is_empty() {
        return Step::fail(
            NODES,
            "there are no /dev/hidraw* nodes, so no HID device is attached to this machine",
            ATTACH_CARD,
        );
    }
    if let HidSelector::Path(path) = selector {
        if !inventory.nodes.contains(path) {
            return Step::fail(
                NODES,
                format!("{} does not exist; present: {}", path.display(), names.join(", ")),
                "run `cardgate card list` to see the card's current node (it can change after a replug), \
                 or use --device hid",
            );
        }
    }
    Step::ok(NODES, names.join(", "))
}

/// Returns the FIDO interfaces `selector` can choose from.
fn candidates(selector: &HidSelector, devices: &[HidDeviceInfo]) -> Vec<HidDeviceInfo> {
    fido_interfaces(devices)
        .into_iter()
        .filter(|d| match selector {
            HidSelector::Any => true,
            HidSelector::Path(path) => d.path == *path,
            HidSelector::VidPid(vid, pid) => d.vid == *vid && d.pid == *pid,
        })
        .collect()
}

fn permissions_step(
    selector: &HidSelector,
    inventory: &Inventory,
    probe: &dyn Fn(&HidDeviceInfo) -> Access,
) -> Step {
    let candidates = candidates(selector, &inventory.devices);
    if candidates.is_empty() {
        return Step::skip(
            PERMISSIONS,
            "no FIDO interface to open (see the next step); other nodes are never opened",
        );
    }

    let mut openable = Vec::new();
    for info in &candidates {
        let name = format!(
            "{} ({:04x}:{:04x})",
            info.path.display(),
            info.vid,
            info.pid
        );
        match probe(info) {
            Access::Openable => openable.push(name),
            Access::PermissionDenied { hint } => {
                return Step::fail(
                    PERMISSIONS,
                    format!(
                        "cannot open {name}: permission denied; the udev rule that allows it is\n    {}",
                        hid::UDEV_RULE
                    ),
                    hint,
                );
            }
            Access::Failed(reason) => {
                return Step::fail(
                    PERMISSIONS,
                    format!("cannot open {name}: {reason}"),
                    "unplug and replug the card, then run `cardgate card doctor` again",
                );
            }
        }
    }
    Step::ok(PERMISSIONS, format!("can open {}", openable.join(", ")))
}

fn interface_step(selector: &HidSelector, inventory: &Inventory) -> Step {
    if let Some(error) = &inventory.enumeration_error {
        return Step::fail(
            INTERFACE,
            error.clone(),
            "check that /sys/class/hidraw is readable, then run `cardgate card doctor` again",
        );
    }
    match hid::select_device(&inventory.devices, selector, None) {
        Ok(chosen) => {
            let mut detail = format!(
                "{} ({:04x}:{:04x}{}{}), usage page {:#06x} usage {:#04x}",
                chosen.path.display(),
                chosen.vid,
                chosen.pid,
                chosen
                    .product
                    .as_deref()
                    .map(|p| format!(" {p}"))
                    .unwrap_or_default(),
                chosen
                    .serial
                    .as_deref()
                    .map(|s| format!(" serial {s}"))
                    .unwrap_or_default(),
                chosen.usage_page,
                chosen.usage
            );
            for node in skipped_nodes(&inventory.devices) {
                detail.push_str(&format!(
                    "; skipped {}: {}",
                    node.info.path.display(),
                    node.reason
                ));
            }
            Step::ok(INTERFACE, detail)
        }
        Err(error) => {
            let fix = if candidates(selector, &inventory.devices).len() > 1 {
                "choose one card with --device hid:/dev/hidrawN (see `cardgate card list`)"
                    .to_string()
            } else {
                ATTACH_CARD.to_string()
            };
            Step::fail(INTERFACE, error.to_string(), fix)
        }
    }
}

/// Runs INIT, getInfo and the PIN/UV step on the card of `args`.
fn card_steps(args: &DeviceArgs, verbose: bool) -> Vec<Step> {
    let skipped = |steps: &mut Vec<Step>, names: &[&'static str]| {
        for name in names {
            steps.push(Step::skip(name, "skipped because an earlier step failed"));
        }
    };
    let mut steps = Vec::new();

    let (transport, _sim) = match open_transport(args, verbose) {
        Ok(opened) => opened,
        Err(Failure::Card(reason) | Failure::Usage(reason)) => {
            steps.push(Step::fail(INIT, reason, connect_fix(&args.device)));
            skipped(&mut steps, &[GET_INFO, PIN_UV]);
            return steps;
        }
    };
    let mut device = match CtapHidDevice::open(transport, Timing::default()) {
        Ok(device) => device,
        Err(error) => {
            let fix = init_fix(&args.device, &error);
            steps.push(Step::fail(INIT, format!("INIT failed: {error}"), fix));
            skipped(&mut steps, &[GET_INFO, PIN_UV]);
            return steps;
        }
    };
    let init = *device.init_info();
    steps.push(Step::ok(
        INIT,
        format!(
            "{}: channel {:08x}, CTAPHID protocol {}, device version {}.{}.{}, capabilities {:#04x}{}{}",
            device.describe(),
            init.cid,
            init.protocol_version,
            init.device_version[0],
            init.device_version[1],
            init.device_version[2],
            init.capabilities,
            if init.supports_wink() { " WINK" } else { "" },
            if init.supports_cbor() { " CBOR" } else { "" },
        ),
    ));

    let info = match read_get_info(&mut device) {
        Ok(info) => info,
        Err(Failure::Card(reason) | Failure::Usage(reason)) => {
            steps.push(Step::fail(
                GET_INFO,
                reason,
                "run `cardgate card info -v` and keep the printed reports for the card's firmware developers",
            ));
            skipped(&mut steps, &[PIN_UV]);
            return steps;
        }
    };
    steps.push(get_info_step(&info));
    steps.push(pin_uv_step(&info));
    steps
}

fn connect_fix(device: &DeviceSpec) -> String {
    match device {
        DeviceSpec::Udp { local, .. } => format!(
            "free the local address {local} (another program uses it), or for `cardgate card-sim` \
             give another one with udp:HOST:PORT@127.0.0.1:0"
        ),
        DeviceSpec::Sim => "check that the --sim-state folder is writable".to_string(),
        DeviceSpec::Hid(_) => ATTACH_CARD.to_string(),
    }
}

fn init_fix(device: &DeviceSpec, error: &DeviceError) -> String {
    match (device, error) {
        (_, DeviceError::NotFido2 { .. }) => {
            "this device is not a FIDO2 (CTAP2) authenticator: choose the card with \
             --device hid:/dev/hidrawN (see `cardgate card list`)"
                .to_string()
        }
        (DeviceSpec::Udp { device, .. }, _) => format!(
            "nothing answers at {device}: start `cardgate card-sim --listen {device} --state DIR` \
             or the firmware simulator there"
        ),
        (_, DeviceError::Transport(TransportError::PermissionDenied { hint, .. })) => hint.clone(),
        _ => "unplug and replug the card, then run `cardgate card doctor` again".to_string(),
    }
}

fn get_info_step(info: &GetInfo) -> Step {
    let options: Vec<String> = info
        .options
        .iter()
        .map(|(name, value)| format!("{name}={value}"))
        .collect();
    let model = if info.aaguid == CHROMECARD_AAGUID {
        " (the ChromeCard's)"
    } else {
        ""
    };
    let max_msg_size = info
        .max_msg_size
        .map(|n| n.to_string())
        .unwrap_or_else(|| "absent (1024 assumed)".to_string());
    Step::ok(
        GET_INFO,
        format!(
            "versions {}, aaguid {}{model}, options {{{}}}, maxMsgSize {max_msg_size}",
            info.versions.join(", "),
            hex::encode(info.aaguid),
            options.join(", "),
        ),
    )
}

/// Describes how the card verifies the user and what cardgate sends for it.
fn pin_uv_step(info: &GetInfo) -> Step {
    let mut offered = Vec::new();
    if let Some(pin) = info.options.get("clientPin") {
        offered.push(format!("clientPin={pin}"));
    }
    if let Some(protocols) = &info.pin_uv_auth_protocols {
        offered.push(format!("pinUvAuthProtocols {protocols:?}"));
    }
    let pin_note = if offered.is_empty() {
        "no clientPin and no pinUvAuthProtocols, which cardgate does not need".to_string()
    } else {
        format!(
            "the card also offers {}, which cardgate never uses",
            offered.join(" and ")
        )
    };

    match info.options.get("uv") {
        Some(true) => Step::ok(
            PIN_UV,
            format!(
                "built-in user verification (uv=true); {pin_note}. With webauthn.user_verification = true \
                 cardgate sends {{\"uv\": true}} in makeCredential and getAssertion, without \
                 pinUvAuthParam or pinUvAuthProtocol, and never authenticatorClientPIN"
            ),
        ),
        Some(false) => Step::warn(
            PIN_UV,
            format!("built-in user verification exists but is not set up (uv=false); {pin_note}"),
            "set up user verification on the card, or set webauthn.user_verification = false in proxy.toml",
        ),
        None => Step::warn(
            PIN_UV,
            format!("no built-in user verification (option uv absent); {pin_note}. cardgate can only ask for presence"),
            "set webauthn.user_verification = false in proxy.toml, because the card is expected to reject {\"uv\": true}",
        ),
    }
}

/// Runs every step for `args`.
pub fn diagnose(args: &DeviceArgs, verbose: bool) -> Vec<Step> {
    let mut steps = match &args.device {
        DeviceSpec::Hid(selector) => hid_steps(selector, &Inventory::take(), &Access::probe),
        other => [NODES, PERMISSIONS, INTERFACE]
            .into_iter()
            .map(|name| {
                Step::skip(
                    name,
                    format!("`{other}` is not a hidraw device, so this check does not apply"),
                )
            })
            .collect(),
    };
    if steps.iter().any(|s| s.status == Status::Fail) {
        for name in [INIT, GET_INFO, PIN_UV] {
            steps.push(Step::skip(name, "skipped because an earlier step failed"));
        }
    } else {
        steps.extend(card_steps(args, verbose));
    }
    steps
}

/// Returns the one thing to do next: the fix of the first failure, else of
/// the first warning, else how to use the card.
pub fn next_action(steps: &[Step], device: &DeviceSpec) -> String {
    let first = |status: Status| steps.iter().find(|s| s.status == status);
    match first(Status::Fail).or_else(|| first(Status::Warn)) {
        Some(step) => step.fix.clone().unwrap_or_default(),
        None => format!(
            "the card is ready: run `cardgate card make-credential --rp-id localhost --uv --device {device}` \
             and confirm on the ChromeCard, then set card.device = \"{device}\" in proxy.toml"
        ),
    }
}

/// Builds the JSON of `card doctor`.
pub fn report_value(device: &DeviceSpec, steps: &[Step]) -> Value {
    json!({
        "device": device.to_string(),
        "ok": !steps.iter().any(|s| s.status == Status::Fail),
        "steps": steps,
        "next_action": next_action(steps, device),
    })
}

/// Formats the doctor's report as text lines.
pub fn report_text(device: &DeviceSpec, steps: &[Step]) -> String {
    let mut out = format!("cardgate card doctor --device {device}\n");
    for (index, step) in steps.iter().enumerate() {
        let status = match step.status {
            Status::Ok => "ok",
            Status::Warn => "warn",
            Status::Fail => "FAIL",
            Status::Skip => "skip",
        };
        out.push_str(&format!(
            "{}. [{status}] {}: {}\n",
            index + 1,
            step.name,
            step.detail
        ));
    }
    out.push_str(&format!("next action: {}", next_action(steps, device)));
    out
}

/// Runs `card doctor` and returns 0 when no step failed.
pub fn run(args: &DeviceArgs, output: &OutputArgs) -> ExitCode {
    let steps = diagnose(args, output.verbose);
    if output.json {
        print_value(&report_value(&args.device, &steps), true);
    } else {
        println!("{}", report_text(&args.device, &steps));
    }
    if steps.iter().any(|s| s.status == Status::Fail) {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;
    use crate::ctap::sim::engine::Presence;
    use crate::ctap::transport::hid::{FIDO_USAGE, FIDO_USAGE_PAGE};

    fn node(path: &str, page: u16, usage: u16) -> HidDeviceInfo {
        HidDeviceInfo {
            path: PathBuf::from(path),
            vid: 0x1209,
            pid: 0x0005,
            manufacturer: None,
            product: Some("ChromeCard".into()),
            serial: Some("CC01".into()),
            usage_page: page,
            usage,
            interface_number: 1,
            is_fido: page == FIDO_USAGE_PAGE && usage == FIDO_USAGE,
        }
    }

    fn chromecard_inventory() -> Inventory {
        Inventory {
            nodes: vec![PathBuf::from("/dev/hidraw2"), PathBuf::from("/dev/hidraw3")],
            devices: vec![
                node("/dev/hidraw2", 0xff00, 0x01),
                node("/dev/hidraw3", FIDO_USAGE_PAGE, FIDO_USAGE),
            ],
            enumeration_error: None,
        }
    }

    fn statuses(steps: &[Step]) -> Vec<Status> {
        steps.iter().map(|s| s.status).collect()
    }

    #[test]
    fn no_hidraw_nodes_fails_first_step() {
        let inventory = Inventory {
            nodes: Vec::new(),
            devices: Vec::new(),
            enumeration_error: None,
        };
        let steps = hid_steps(&HidSelector::Any, &inventory, &|_| Access::Openable);
        assert_eq!(statuses(&steps), [Status::Fail, Status::Skip, Status::Fail]);
        let action = next_action(&steps, &DeviceSpec::Hid(HidSelector::Any));
        assert!(action.contains("attach"), "{action}");
    }

    #[test]
    fn permission_denied_prints_udev_rule() {
        let probe = |_: &HidDeviceInfo| Access::PermissionDenied {
            hint: format!("add {}", hid::UDEV_RULE),
        };
        let steps = hid_steps(&HidSelector::Any, &chromecard_inventory(), &probe);
        assert_eq!(statuses(&steps), [Status::Ok, Status::Fail, Status::Ok]);
        assert!(
            steps[1].detail.contains(hid::UDEV_RULE),
            "{}",
            steps[1].detail
        );
        assert!(
            steps[1].detail.contains("/dev/hidraw3"),
            "{}",
            steps[1].detail
        );
        let action = next_action(&steps, &DeviceSpec::Hid(HidSelector::Any));
        assert!(action.contains(hid::UDEV_RULE), "{action}");
    }

    #[test]
    fn only_fido_interface_is_probed() {
        let probed = std::cell::RefCell::new(Vec::new());
        let probe = |info: &HidDeviceInfo| {
            probed.borrow_mut().push(info.path.clone());
            Access::Openable
        };
        let steps = hid_steps(&HidSelector::Any, &chromecard_inventory(), &probe);
        assert_eq!(statuses(&steps), [Status::Ok, Status::Ok, Status::Ok]);
        assert_eq!(*probed.borrow(), [PathBuf::from("/dev/hidraw3")]);
        assert!(
            steps[2].detail.contains("skipped /dev/hidraw2"),
            "{}",
            steps[2].detail
        );
    }

    #[test]
    fn missing_path_names_present_nodes() {
        let selector = HidSelector::Path("/dev/hidraw9".into());
        let steps = hid_steps(&selector, &chromecard_inventory(), &|_| Access::Openable);
        assert_eq!(steps[0].status, Status::Fail);
        assert!(
            steps[0].detail.contains("/dev/hidraw3"),
            "{}",
            steps[0].detail
        );
    }

    #[test]
    fn non_fido_path_fails_interface_step() {
        let selector = HidSelector::Path("/dev/hidraw2".into());
        let steps = hid_steps(&selector, &chromecard_inventory(), &|_| Access::Openable);
        assert_eq!(statuses(&steps), [Status::Ok, Status::Skip, Status::Fail]);
        assert!(
            steps[2].detail.contains("not a FIDO interface"),
            "{}",
            steps[2].detail
        );
    }

    #[test]
    fn sim_passes_every_card_step_and_skips_hidraw() {
        let args = DeviceArgs {
            device: DeviceSpec::Sim,
            sim_presence: Presence::Approve,
            sim_state: None,
        };
        let steps = diagnose(&args, false);
        assert_eq!(
            statuses(&steps),
            [
                Status::Skip,
                Status::Skip,
                Status::Skip,
                Status::Ok,
                Status::Ok,
                Status::Ok
            ]
        );
        assert!(
            steps[0].detail.contains("not a hidraw device"),
            "{}",
            steps[0].detail
        );
        assert!(
            steps[4].detail.contains("the ChromeCard's"),
            "{}",
            steps[4].detail
        );
        assert!(
            steps[5].detail.contains("{\"uv\": true}"),
            "{}",
            steps[5].detail
        );
        let action = next_action(&steps, &args.device);
        assert!(action.starts_with("the card is ready"), "{action}");
    }

    #[test]
    fn udp_without_listener_fails_init() {
        let silent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let device_addr = silent.local_addr().unwrap();
        drop(silent);
        let args = DeviceArgs {
            device: format!("udp:{device_addr}@127.0.0.1:0").parse().unwrap(),
            sim_presence: Presence::Approve,
            sim_state: None,
        };
        let steps = diagnose(&args, false);
        assert_eq!(steps[3].status, Status::Fail, "{steps:?}");
        assert_eq!(statuses(&steps[4..]), [Status::Skip, Status::Skip]);
        let action = next_action(&steps, &args.device);
        assert!(action.contains("cardgate card-sim"), "{action}");
    }

    #[test]
    fn card_without_uv_gets_warning_and_config_fix() {
        let mut info = GetInfo {
            versions: vec!["FIDO_2_0".into()],
            extensions: Vec::new(),
            aaguid: [0; 16],
            options: Default::default(),
            max_msg_size: None,
            pin_uv_auth_protocols: Some(vec![1]),
            max_credential_count_in_list: None,
            max_credential_id_length: None,
            transports: None,
            algorithms: None,
        };
        info.options.insert("clientPin".into(), true);
        let step = pin_uv_step(&info);
        assert_eq!(step.status, Status::Warn);
        assert!(step.detail.contains("never uses"), "{}", step.detail);
        assert!(step
            .fix
            .unwrap()
            .contains("webauthn.user_verification = false"));
    }
}
