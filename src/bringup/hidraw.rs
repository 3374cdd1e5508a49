//! The hidraw side of bring-up, shared by `card list` and `card doctor`:
//! which `/dev/hidraw*` nodes exist, which are FIDO interfaces, which nodes
//! of the same devices are skipped and why, and whether each FIDO
//! interface can be opened.
//!
//! Only FIDO interfaces are ever opened. Opening another node of a card
//! can block, and its usages come from the report descriptor in sysfs
//! without opening it.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use serde_json::{json, Value};

use super::card::{print_value, OutputArgs};
use crate::ctap::transport::hid::{
    self, HidDeviceInfo, HidTransport, CHROMECARD_PID, CHROMECARD_VID, FIDO_USAGE, FIDO_USAGE_PAGE,
};
use crate::ctap::transport::TransportError;

/// Folder that contains the hidraw device nodes.
pub const DEV_DIR: &str = "/dev";

/// The HID devices the machine shows.
#[derive(Debug, Clone)]
pub struct Inventory {
    /// The `/dev/hidraw*` nodes, in numeric order.
    pub nodes: Vec<PathBuf>,
    /// hidapi's enumeration: one entry per node and top-level usage.
    pub devices: Vec<HidDeviceInfo>,
    /// The reason enumeration failed, if it did.
    pub enumeration_error: Option<String>,
}

impl Inventory {
    /// Reads the hidraw nodes and hidapi's enumeration.
    pub fn take() -> Inventory {
        let (devices, enumeration_error) = match hid::try_list_devices() {
            Ok(devices) => (devices, None),
            Err(error) => (Vec::new(), Some(error.to_string())),
        };
        Inventory {
            nodes: hidraw_nodes(Path::new(DEV_DIR)),
            devices,
            enumeration_error,
        }
    }
}

/// Lists the `hidrawN` entries of `dir`, in numeric order.
pub fn hidraw_nodes(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut numbered: Vec<(u32, PathBuf)> = entries
        .filter_map(Result::ok)
        .filter_map(|entry| {
            let name = entry.file_name();
            let number = name.to_str()?.strip_prefix("hidraw")?.parse().ok()?;
            Some((number, entry.path()))
        })
        .collect();
    numbered.sort();
    numbered.into_iter().map(|(_, path)| path).collect()
}

/// Whether a FIDO interface can be opened by this user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Access {
    Openable,
    /// The node exists but this user may not open it; `hint` names the
    /// udev rule that fixes it.
    PermissionDenied {
        hint: String,
    },
    Failed(String),
}

impl Access {
    /// Opens the node of `info` and closes it again at once.
    pub fn probe(info: &HidDeviceInfo) -> Access {
        match HidTransport::open(info) {
            Ok(_) => Access::Openable,
            Err(TransportError::PermissionDenied { hint, .. }) => Access::PermissionDenied { hint },
            Err(other) => Access::Failed(other.to_string()),
        }
    }

    fn describe(&self) -> String {
        match self {
            Access::Openable => "can be opened".to_string(),
            Access::PermissionDenied { .. } => "cannot be opened: permission denied".to_string(),
            Access::Failed(reason) => format!("cannot be opened: {reason}"),
        }
    }
}

/// A non-FIDO node that belongs to a device with a FIDO interface, or to
/// a ChromeCard.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Skipped {
    pub info: HidDeviceInfo,
    /// Every top-level (usage page, usage) of the node.
    pub usages: Vec<(u16, u16)>,
    pub reason: String,
}

/// Returns the FIDO interfaces, one entry per node.
pub fn fido_interfaces(devices: &[HidDeviceInfo]) -> Vec<HidDeviceInfo> {
    let mut interfaces: Vec<HidDeviceInfo> = Vec::new();
    for device in devices.iter().filter(|d| d.is_fido) {
        if !interfaces.iter().any(|i| i.path == device.path) {
            interfaces.push(device.clone());
        }
    }
    interfaces
}

/// Returns the nodes that are not FIDO interfaces but belong to the same
/// USB device (vid:pid and serial) as one, or to a ChromeCard.
pub fn skipped_nodes(devices: &[HidDeviceInfo]) -> Vec<Skipped> {
    let fido = fido_interfaces(devices);
    let same_device = |d: &HidDeviceInfo| {
        fido.iter()
            .any(|f| f.vid == d.vid && f.pid == d.pid && f.serial == d.serial)
    };
    let is_chromecard = |d: &HidDeviceInfo| d.vid == CHROMECARD_VID && d.pid == CHROMECARD_PID;

    let mut skipped: Vec<Skipped> = Vec::new();
    for device in devices {
        let fido_node = fido.iter().any(|f| f.path == device.path);
        if fido_node || !(same_device(device) || is_chromecard(device)) {
            continue;
        }
        match skipped.iter_mut().find(|s| s.info.path == device.path) {
            Some(existing) => existing.usages.push((device.usage_page, device.usage)),
            None => skipped.push(Skipped {
                info: device.clone(),
                usages: vec![(device.usage_page, device.usage)],
                reason: String::new(),
            }),
        }
    }
    for node in &mut skipped {
        let usages: Vec<String> = node
            .usages
            .iter()
            .map(|(page, usage)| format!("usage page {page:#06x} usage {usage:#04x}"))
            .collect();
        node.reason = format!(
            "{} is not the FIDO interface (usage page {FIDO_USAGE_PAGE:#06x} usage {FIDO_USAGE:#04x}); not opened",
            usages.join(", ")
        );
    }
    skipped
}

/// Describes one enumerated node as JSON.
pub fn device_value(info: &HidDeviceInfo) -> Value {
    json!({
        "path": info.path.display().to_string(),
        "vid_pid": format!("{:04x}:{:04x}", info.vid, info.pid),
        "manufacturer": info.manufacturer,
        "product": info.product,
        "serial": info.serial,
        "usage_page": format!("{:#06x}", info.usage_page),
        "usage": format!("{:#04x}", info.usage),
        "interface_number": info.interface_number,
        "chromecard": info.vid == CHROMECARD_VID && info.pid == CHROMECARD_PID,
    })
}

/// Returns the sentence `card list` prints when no FIDO interface was found.
pub fn none_found_message(nodes: &[PathBuf]) -> String {
    let seen = if nodes.is_empty() {
        "There are no /dev/hidraw* nodes at all".to_string()
    } else {
        let names: Vec<String> = nodes.iter().map(|p| p.display().to_string()).collect();
        format!(
            "The hidraw nodes ({}) belong to other kinds of HID devices",
            names.join(", ")
        )
    };
    format!(
        "No FIDO HID interface (usage page {FIDO_USAGE_PAGE:#06x}, usage {FIDO_USAGE:#04x}) was found. \
         {seen}. Check that the card is plugged in and attached to this machine \
         (in Qubes OS, attach it to this VM with `qvm-usb attach` in dom0), \
         then run `cardgate card doctor`."
    )
}

/// Builds the JSON of `card list` from an inventory and the access of each
/// FIDO interface.
pub fn list_value(
    inventory: &Inventory,
    interfaces: &[(HidDeviceInfo, Access)],
    verbose: bool,
) -> Value {
    let interfaces_json: Vec<Value> = interfaces
        .iter()
        .map(|(info, access)| {
            let mut value = device_value(info);
            value["openable"] = json!(*access == Access::Openable);
            value["access"] = json!(access.describe());
            if let Access::PermissionDenied { hint } = access {
                value["fix"] = json!(hint);
            }
            value
        })
        .collect();
    let skipped_json: Vec<Value> = skipped_nodes(&inventory.devices)
        .iter()
        .map(|node| {
            let mut value = device_value(&node.info);
            value["reason"] = json!(node.reason);
            value
        })
        .collect();
    let message = if interfaces.is_empty() {
        none_found_message(&inventory.nodes)
    } else {
        format!("{} FIDO HID interface(s) found.", interfaces.len())
    };

    let mut value = json!({
        "interfaces": interfaces_json,
        "skipped": skipped_json,
        "hidraw_nodes": inventory.nodes.iter().map(|p| p.display().to_string()).collect::<Vec<_>>(),
        "message": message,
    });
    if let Some(error) = &inventory.enumeration_error {
        value["enumeration_error"] = json!(error);
    }
    if verbose {
        value["all_devices"] = Value::Array(inventory.devices.iter().map(device_value).collect());
    }
    value
}

/// Formats the `card list` JSON as text lines.
pub fn list_text(value: &Value) -> String {
    let mut out = String::new();
    let field = |v: &Value, name: &str| v[name].as_str().unwrap_or("").to_string();
    let line = |v: &Value| {
        let mut text = format!("  {}  {}", field(v, "path"), field(v, "vid_pid"));
        for name in ["manufacturer", "product"] {
            if let Some(s) = v[name].as_str() {
                text.push_str(&format!("  {s}"));
            }
        }
        if let Some(serial) = v["serial"].as_str() {
            text.push_str(&format!("  serial {serial}"));
        }
        text
    };

    if let Some(error) = value["enumeration_error"].as_str() {
        out.push_str(&format!("HID enumeration failed: {error}\n"));
    }
    let interfaces = value["interfaces"].as_array().cloned().unwrap_or_default();
    if !interfaces.is_empty() {
        out.push_str("FIDO interfaces:\n");
        for interface in &interfaces {
            out.push_str(&format!(
                "{}  interface {}: {}\n",
                line(interface),
                interface["interface_number"],
                field(interface, "access")
            ));
            if let Some(fix) = interface["fix"].as_str() {
                out.push_str(&format!("    fix: {fix}\n"));
            }
        }
    }
    let skipped = value["skipped"].as_array().cloned().unwrap_or_default();
    if !skipped.is_empty() {
        out.push_str("Skipped nodes of the same devices:\n");
        for node in &skipped {
            out.push_str(&format!("{}: {}\n", line(node), field(node, "reason")));
        }
    }
    if let Some(all) = value["all_devices"].as_array() {
        let none = if all.is_empty() { " none" } else { "" };
        out.push_str(&format!("All enumerated HID devices:{none}\n"));
        for device in all {
            out.push_str(&format!(
                "{}  usage page {} usage {}\n",
                line(device),
                field(device, "usage_page"),
                field(device, "usage")
            ));
        }
    }
    out.push_str(&field(value, "message"));
    out
}

/// Runs `card list`.
pub fn run_list(output: &OutputArgs) -> ExitCode {
    let inventory = Inventory::take();
    let interfaces: Vec<(HidDeviceInfo, Access)> = fido_interfaces(&inventory.devices)
        .into_iter()
        .map(|info| {
            let access = Access::probe(&info);
            (info, access)
        })
        .collect();
    let value = list_value(&inventory, &interfaces, output.verbose);
    if output.json {
        print_value(&value, true);
    } else {
        println!("{}", list_text(&value));
    }
    if inventory.enumeration_error.is_some() {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
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
    ) -> HidDeviceInfo {
        HidDeviceInfo {
            path: PathBuf::from(path),
            vid,
            pid,
            manufacturer: Some("maker".into()),
            product: Some("ChromeCard".into()),
            serial: serial.map(str::to_string),
            usage_page: page,
            usage,
            interface_number: 0,
            is_fido: page == FIDO_USAGE_PAGE && usage == FIDO_USAGE,
        }
    }

    fn chromecard() -> Vec<HidDeviceInfo> {
        vec![
            node("/dev/hidraw2", 0x1209, 0x0005, Some("CC01"), 0xff00, 0x01),
            node(
                "/dev/hidraw3",
                0x1209,
                0x0005,
                Some("CC01"),
                FIDO_USAGE_PAGE,
                FIDO_USAGE,
            ),
            node("/dev/hidraw0", 0x046d, 0xc077, None, 0x0001, 0x02),
        ]
    }

    fn inventory(devices: Vec<HidDeviceInfo>) -> Inventory {
        Inventory {
            nodes: vec![PathBuf::from("/dev/hidraw0"), PathBuf::from("/dev/hidraw2")],
            devices,
            enumeration_error: None,
        }
    }

    #[test]
    fn hidraw_nodes_sorted_numerically() {
        let dir = tempfile::tempdir().unwrap();
        for name in ["hidraw10", "hidraw2", "hidrawx", "tty0", "hidraw0"] {
            std::fs::write(dir.path().join(name), b"").unwrap();
        }
        let names: Vec<String> = hidraw_nodes(dir.path())
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, ["hidraw0", "hidraw2", "hidraw10"]);
    }

    #[test]
    fn skipped_lists_only_nodes_of_fido_devices() {
        let skipped = skipped_nodes(&chromecard());
        assert_eq!(skipped.len(), 1, "{skipped:?}");
        assert_eq!(skipped[0].info.path, PathBuf::from("/dev/hidraw2"));
        assert!(
            skipped[0].reason.contains("usage page 0xff00"),
            "{}",
            skipped[0].reason
        );
        assert!(
            skipped[0].reason.contains("not opened"),
            "{}",
            skipped[0].reason
        );
    }

    #[test]
    fn skipped_lists_chromecard_nodes_without_fido_interface() {
        let devices = vec![node("/dev/hidraw2", 0x1209, 0x0005, None, 0xff00, 0x01)];
        assert!(fido_interfaces(&devices).is_empty());
        assert_eq!(skipped_nodes(&devices).len(), 1);
    }

    #[test]
    fn node_with_several_usages_is_one_entry() {
        let mut devices = chromecard();
        devices.push(node(
            "/dev/hidraw3",
            0x1209,
            0x0005,
            Some("CC01"),
            0x0001,
            0x06,
        ));
        devices.push(node(
            "/dev/hidraw2",
            0x1209,
            0x0005,
            Some("CC01"),
            0xff00,
            0x02,
        ));
        assert_eq!(fido_interfaces(&devices).len(), 1);
        let skipped = skipped_nodes(&devices);
        assert_eq!(skipped.len(), 1, "{skipped:?}");
        assert_eq!(skipped[0].usages, vec![(0xff00, 0x01), (0xff00, 0x02)]);
    }

    #[test]
    fn list_shows_permission_fix_for_denied_interface() {
        let devices = chromecard();
        let interfaces = vec![(
            devices[1].clone(),
            Access::PermissionDenied {
                hint: format!("add {}", hid::UDEV_RULE),
            },
        )];
        let value = list_value(&inventory(devices), &interfaces, false);
        assert_eq!(value["interfaces"][0]["openable"], false);
        assert_eq!(value["interfaces"][0]["vid_pid"], "1209:0005");
        let fix = value["interfaces"][0]["fix"].as_str().unwrap();
        assert!(fix.contains(hid::UDEV_RULE), "{fix}");
        assert_eq!(value["skipped"][0]["path"], "/dev/hidraw2");

        let text = list_text(&value);
        assert!(text.contains("/dev/hidraw3  1209:0005"), "{text}");
        assert!(text.contains("permission denied"), "{text}");
        assert!(text.contains(hid::UDEV_RULE), "{text}");
        assert!(text.contains("Skipped nodes"), "{text}");
    }

    #[test]
    fn list_without_interfaces_says_what_to_check() {
        let value = list_value(&inventory(Vec::new()), &[], false);
        let message = value["message"].as_str().unwrap();
        assert!(message.starts_with("No FIDO HID interface"), "{message}");
        assert!(message.contains("/dev/hidraw0"), "{message}");
        assert!(message.contains("cardgate card doctor"), "{message}");

        let bare = none_found_message(&[]);
        assert!(bare.contains("no /dev/hidraw* nodes"), "{bare}");

        let verbose = list_text(&list_value(&inventory(Vec::new()), &[], true));
        assert!(
            verbose.contains("All enumerated HID devices: none"),
            "{verbose}"
        );
    }

    #[test]
    fn verbose_list_includes_every_device() {
        let value = list_value(&inventory(chromecard()), &[], true);
        assert_eq!(value["all_devices"].as_array().unwrap().len(), 3);
    }
}
