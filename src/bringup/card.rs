//! `cardgate card …`: bring-up commands that talk to a card.
//!
//! Each command opens the card named by `--device` (hidraw, UDP or the
//! in-process simulated card), runs INIT and getInfo, does its one job and
//! prints what it learned. With `-v` every CTAPHID report is printed on
//! standard error through [`Logged`]. Exit codes: 0 when everything
//! worked and verified, 1 when the card, the link or a check failed, 2 when
//! the command line was malformed.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use clap::{Args, Subcommand};
use serde_json::{json, Value};

use super::decode::parse_hex;
use super::{describe, doctor, hidraw};
use crate::ctap::attestation::{self, AttestationType};
use crate::ctap::auth_data::{rp_id_hash, AuthenticatorData};
use crate::ctap::cose::CoseKey;
use crate::ctap::device::{CtapHidDevice, DeviceError, KeepaliveStatus, Timing};
use crate::ctap::get_assertion::{GetAssertionRequest, GetAssertionResponse};
use crate::ctap::get_info::{self, GetInfo};
use crate::ctap::make_credential::{MakeCredentialRequest, MakeCredentialResponse};
use crate::ctap::sim::engine::Presence;
use crate::ctap::status::{split_status, CtapError, CtapStatus};
use crate::ctap::transport::{self, DeviceSpec, Logged, SimCard, SimHandle, Transport};
use crate::ctap::verify::{verify_assertion, VerifyError};
use crate::rng::os_random;

/// Exit code when the card, the link or a check failed.
const EXIT_FAILED: u8 = 1;
/// Exit code when the command line was malformed.
const EXIT_USAGE: u8 = 2;

/// Maximum wait for getInfo, which needs no person at the card.
const GET_INFO_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, Subcommand)]
pub enum CardCommand {
    /// List hidraw FIDO interfaces, whether each can be opened, and the
    /// skipped non-FIDO nodes of the same devices.
    List(ListArgs),
    /// Show the INIT response (channel, versions, capabilities) and the
    /// decoded getInfo.
    Info(InfoArgs),
    /// Create a credential, verify its attestation, and print its id and
    /// public key for get-assertion.
    MakeCredential(MakeCredentialArgs),
    /// Get an assertion for a credential and, with --public-key, verify its
    /// signature.
    GetAssertion(GetAssertionArgs),
    /// Ask the card to wink (blink or beep) to show which device it is.
    Wink(WinkArgs),
    /// Check hidraw nodes, permissions, the FIDO interface, INIT, getInfo
    /// and user verification in order, and name the next action.
    Doctor(DoctorArgs),
}

/// The card a command talks to.
#[derive(Debug, Clone, Args)]
pub struct DeviceArgs {
    /// The card: hid, hid:/dev/hidrawN, hid:VID:PID, udp:HOST:PORT,
    /// udp:HOST:PORT@LOCALHOST:LOCALPORT, or sim (an in-process simulated card).
    #[arg(long, default_value = "hid")]
    pub device: DeviceSpec,

    /// With --device sim: the simulated person's response: approve, deny,
    /// delay:MS (up-needed for MS milliseconds, then approve) or never.
    #[arg(long, default_value = "approve")]
    pub sim_presence: Presence,

    /// With --device sim: folder of the simulated card's state. Without it
    /// the state is kept in memory, so a credential made in one run is
    /// unknown to the next.
    #[arg(long)]
    pub sim_state: Option<PathBuf>,
}

/// Output options shared by the card commands.
#[derive(Debug, Clone, Copy, Args)]
pub struct OutputArgs {
    /// Print one line of compact JSON instead of indented JSON.
    #[arg(long)]
    pub json: bool,

    /// Print every HID report in hex with its direction, and each keepalive
    /// status, on standard error.
    #[arg(short, long)]
    pub verbose: bool,
}

#[derive(Debug, Args)]
pub struct ListArgs {
    #[command(flatten)]
    pub output: OutputArgs,
}

#[derive(Debug, Args)]
pub struct InfoArgs {
    #[command(flatten)]
    pub device: DeviceArgs,
    #[command(flatten)]
    pub output: OutputArgs,
}

#[derive(Debug, Args)]
pub struct MakeCredentialArgs {
    /// Relying party id the credential is bound to, for example `localhost`.
    #[arg(long)]
    pub rp_id: String,

    /// User name stored with the credential.
    #[arg(long, default_value = "cardgate-test")]
    pub user: String,

    /// Ask for the card's built-in user verification (sends `"uv": true`).
    #[arg(long)]
    pub uv: bool,

    /// Seconds the person has to confirm on the card before the request is
    /// cancelled.
    #[arg(long, default_value_t = 60)]
    pub timeout_s: u64,

    #[command(flatten)]
    pub device: DeviceArgs,
    #[command(flatten)]
    pub output: OutputArgs,
}

#[derive(Debug, Args)]
pub struct GetAssertionArgs {
    /// Relying party id the credential was made for.
    #[arg(long)]
    pub rp_id: String,

    /// The credential id in hex, as make-credential printed it.
    #[arg(long)]
    pub credential_id: String,

    /// The credential public key as a COSE_Key in hex; the signature is
    /// verified with it.
    #[arg(long)]
    pub public_key: Option<String>,

    /// Ask for the card's built-in user verification (sends `"uv": true`).
    #[arg(long)]
    pub uv: bool,

    /// Seconds the person has to confirm on the card before the request is
    /// cancelled.
    #[arg(long, default_value_t = 60)]
    pub timeout_s: u64,

    #[command(flatten)]
    pub device: DeviceArgs,
    #[command(flatten)]
    pub output: OutputArgs,
}

#[derive(Debug, Args)]
pub struct WinkArgs {
    #[command(flatten)]
    pub device: DeviceArgs,

    /// Print every HID report in hex with its direction on standard error.
    #[arg(short, long)]
    pub verbose: bool,
}

#[derive(Debug, Args)]
pub struct DoctorArgs {
    #[command(flatten)]
    pub device: DeviceArgs,
    #[command(flatten)]
    pub output: OutputArgs,
}

/// The reason a card command could not finish.
#[derive(Debug)]
pub enum Failure {
    /// The command line is malformed (exit code 2).
    Usage(String),
    /// The card, the link or a check failed (exit code 1).
    Card(String),
}

/// The findings of a command: the JSON it prints, a line for the reader of
/// the text output, and the checks that failed.
#[derive(Debug)]
pub struct Outcome {
    pub value: Value,
    /// Printed after the indented JSON, for example the next command to run.
    pub hint: Option<String>,
    /// Each failed check as a sentence; any makes the exit code 1.
    pub failed: Vec<String>,
}

/// Runs a card command and returns the process exit code.
pub fn run(command: CardCommand) -> ExitCode {
    let (name, output, result) = match command {
        CardCommand::List(args) => return hidraw::run_list(&args.output),
        CardCommand::Doctor(args) => return doctor::run(&args.device, &args.output),
        CardCommand::Info(args) => ("info", args.output, info(&args.device, &args.output)),
        CardCommand::MakeCredential(args) => {
            ("make-credential", args.output, make_credential(&args))
        }
        CardCommand::GetAssertion(args) => ("get-assertion", args.output, get_assertion(&args)),
        CardCommand::Wink(args) => {
            let output = OutputArgs {
                json: false,
                verbose: args.verbose,
            };
            ("wink", output, wink(&args.device, args.verbose))
        }
    };

    match result {
        Ok(outcome) => {
            print_value(&outcome.value, output.json);
            if let (Some(hint), false) = (&outcome.hint, output.json) {
                println!("{hint}");
            }
            for failure in &outcome.failed {
                eprintln!("cardgate card {name}: check failed: {failure}");
            }
            if outcome.failed.is_empty() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(EXIT_FAILED)
            }
        }
        Err(Failure::Usage(reason)) => {
            eprintln!("cardgate card {name}: {reason}");
            ExitCode::from(EXIT_USAGE)
        }
        Err(Failure::Card(reason)) => {
            eprintln!("cardgate card {name}: {reason}");
            ExitCode::from(EXIT_FAILED)
        }
    }
}

/// Prints `value` as one line of JSON or indented.
pub fn print_value(value: &Value, compact: bool) {
    let text = if compact {
        value.to_string()
    } else {
        serde_json::to_string_pretty(value).unwrap_or_else(|_| value.to_string())
    };
    println!("{text}");
}

/// An open card with its channel allocated and getInfo read.
pub struct OpenCard {
    pub device: CtapHidDevice,
    pub info: GetInfo,
    /// Keeps the in-process simulated card running while the command uses it.
    _sim: Option<SimHandle>,
}

/// Opens the transport of `args`, wrapped in [`Logged`] when `verbose`.
/// For `sim` it also starts the in-process simulated card, whose handle
/// must live as long as the transport is used.
pub fn open_transport(
    args: &DeviceArgs,
    verbose: bool,
) -> Result<(Box<dyn Transport>, Option<SimHandle>), Failure> {
    let sim = match args.device {
        DeviceSpec::Sim => {
            let handle = SimCard::spawn_authenticator(args.sim_state.as_deref(), args.sim_presence)
                .map_err(|e| Failure::Card(format!("cannot start the simulated card: {e}")))?;
            Some(handle)
        }
        _ => None,
    };
    let connector = transport::connector(&args.device, sim.clone())
        .map_err(|e| Failure::Card(e.to_string()))?;
    let inner = connector.connect().map_err(|e| {
        let advice = match args.device {
            DeviceSpec::Hid(_) => "; `cardgate card doctor` checks why",
            _ => "",
        };
        Failure::Card(format!("cannot open {}: {e}{advice}", args.device))
    })?;
    let transport: Box<dyn Transport> = if verbose {
        Box::new(Logged::to_stderr(inner))
    } else {
        inner
    };
    Ok((transport, sim))
}

/// Opens the card, allocates a channel with INIT and reads getInfo.
pub fn open_card(args: &DeviceArgs, verbose: bool) -> Result<OpenCard, Failure> {
    let (transport, sim) = open_transport(args, verbose)?;
    let mut device = CtapHidDevice::open(transport, Timing::default())
        .map_err(|e| Failure::Card(format!("INIT failed: {e}")))?;
    let info = read_get_info(&mut device)?;
    if let Some(max) = info.max_msg_size {
        device.set_max_msg_size(usize::try_from(max).unwrap_or(usize::MAX));
    }
    Ok(OpenCard {
        device,
        info,
        _sim: sim,
    })
}

/// Sends authenticatorGetInfo and parses the response.
pub fn read_get_info(device: &mut CtapHidDevice) -> Result<GetInfo, Failure> {
    let deadline = Instant::now() + GET_INFO_TIMEOUT;
    let response = device
        .cbor(
            &[get_info::COMMAND],
            &mut |_| {},
            &AtomicBool::new(false),
            deadline,
        )
        .map_err(|e| Failure::Card(format!("getInfo failed: {e}")))?;
    let body = split_status(&response).map_err(|e| Failure::Card(status_failure("getInfo", &e)))?;
    GetInfo::parse(body).map_err(|e| Failure::Card(format!("getInfo response is invalid: {e}")))
}

fn info(args: &DeviceArgs, output: &OutputArgs) -> Result<Outcome, Failure> {
    let card = open_card(args, output.verbose)?;
    let value = json!({
        "device": card.device.describe(),
        "init": describe::init(card.device.init_info()),
        "get_info": describe::get_info(&card.info),
    });
    Ok(Outcome {
        value,
        hint: None,
        failed: Vec::new(),
    })
}

fn wink(args: &DeviceArgs, verbose: bool) -> Result<Outcome, Failure> {
    let (transport, _sim) = open_transport(args, verbose)?;
    let mut device = CtapHidDevice::open(transport, Timing::default())
        .map_err(|e| Failure::Card(format!("INIT failed: {e}")))?;
    let init = *device.init_info();
    if !init.supports_wink() {
        return Err(Failure::Card(format!(
            "{} does not support WINK (INIT capabilities {:#04x} lack {:#04x})",
            device.describe(),
            init.capabilities,
            crate::ctap::frame::CAPABILITY_WINK
        )));
    }
    device
        .wink()
        .map_err(|e| Failure::Card(format!("WINK failed: {e}")))?;
    Ok(Outcome {
        value: json!({ "device": device.describe(), "wink": "sent" }),
        hint: Some("The card should now blink or beep.".to_string()),
        failed: Vec::new(),
    })
}

/// Returns a keepalive handler that prints, on the first up-needed status,
/// the request to confirm on the card.
fn confirm_prompt() -> impl FnMut(KeepaliveStatus) {
    let mut prompted = false;
    move |status| {
        if status == KeepaliveStatus::UpNeeded && !prompted {
            prompted = true;
            eprintln!("confirm on the ChromeCard: press Yes on the card");
        }
    }
}

/// Sends a CTAP2 request that needs the person at the card and returns the
/// response body after the status byte.
fn run_request(
    card: &mut OpenCard,
    command: &str,
    request: &[u8],
    timeout: Duration,
) -> Result<Vec<u8>, Failure> {
    let deadline = Instant::now() + timeout;
    let response = card
        .device
        .cbor(
            request,
            &mut confirm_prompt(),
            &AtomicBool::new(false),
            deadline,
        )
        .map_err(|e| Failure::Card(device_failure(command, &e)))?;
    split_status(&response)
        .map(<[u8]>::to_vec)
        .map_err(|e| Failure::Card(status_failure(command, &e)))
}

fn device_failure(command: &str, error: &DeviceError) -> String {
    match error {
        DeviceError::Timeout { waited } => format!(
            "{command} timed out: nobody confirmed on the card within {:.0} s, so the request was cancelled",
            waited.as_secs_f64()
        ),
        other => format!("{command} failed: {other}"),
    }
}

/// Describes a CTAP2 status failure, with what to do for the common ones.
fn status_failure(command: &str, error: &CtapError) -> String {
    let CtapError::Status(status) = error else {
        return format!("{command}: {error}");
    };
    let advice = match status {
        CtapStatus::OperationDenied => "the person at the card pressed No",
        CtapStatus::UserActionTimeout => "nobody confirmed on the card in time",
        CtapStatus::NoCredentials => {
            "the card does not know this credential id for this rp id; \
             a credential from `--device sim` without --sim-state lives only in that process"
        }
        CtapStatus::UnsupportedOption => {
            "the card does not support an option that was sent; try again without --uv"
        }
        _ => "",
    };
    let mut text = format!("{command}: the card returned {status}");
    if !advice.is_empty() {
        text.push_str(": ");
        text.push_str(advice);
    }
    text
}

/// One verification step of a response and its result.
struct Check {
    name: &'static str,
    ok: bool,
    detail: String,
}

impl Check {
    fn new(name: &'static str, ok: bool, detail: impl Into<String>) -> Check {
        Check {
            name,
            ok,
            detail: detail.into(),
        }
    }
}

fn checks_value(checks: &[Check]) -> Value {
    Value::Array(
        checks
            .iter()
            .map(|c| json!({ "check": c.name, "ok": c.ok, "detail": c.detail }))
            .collect(),
    )
}

fn failed_checks(checks: &[Check]) -> Vec<String> {
    checks
        .iter()
        .filter(|c| !c.ok)
        .map(|c| format!("{}: {}", c.name, c.detail))
        .collect()
}

/// Checks the authenticatorData fields every response must get right.
fn common_checks(auth_data: &AuthenticatorData, rp_id: &str, uv: bool) -> Vec<Check> {
    let expected_hash = rp_id_hash(rp_id);
    let mut checks = vec![
        Check::new(
            "rp_id_hash",
            auth_data.rp_id_hash == expected_hash,
            format!("SHA-256 of `{rp_id}` is {}", hex::encode(expected_hash)),
        ),
        Check::new(
            "user_present",
            auth_data.flags.up(),
            "flag UP must be set because the card was asked for presence",
        ),
    ];
    if uv {
        checks.push(Check::new(
            "user_verified",
            auth_data.flags.uv(),
            "flag UV must be set because --uv asked for user verification",
        ));
    }
    checks
}

fn make_credential(args: &MakeCredentialArgs) -> Result<Outcome, Failure> {
    let client_data_hash = random_bytes::<32>()?;
    let user_id = random_bytes::<16>()?;
    let request = MakeCredentialRequest {
        client_data_hash,
        rp_id: args.rp_id.clone(),
        rp_name: args.rp_id.clone(),
        user_id: user_id.to_vec(),
        user_name: args.user.clone(),
        user_display_name: args.user.clone(),
        exclude_list: Vec::new(),
        uv: args.uv,
    };

    let mut card = open_card(&args.device, args.output.verbose)?;
    warn_if_uv_unsupported(&card.info, args.uv);
    let body = run_request(
        &mut card,
        "makeCredential",
        &request.encode(),
        Duration::from_secs(args.timeout_s),
    )?;
    let response = MakeCredentialResponse::parse(&body)
        .map_err(|e| Failure::Card(format!("makeCredential response is invalid: {e}")))?;
    let Some(credential) = response.auth_data.attested.as_ref() else {
        return Err(Failure::Card(
            "makeCredential response has no attested credential data".to_string(),
        ));
    };

    let mut checks = common_checks(&response.auth_data, &args.rp_id, args.uv);
    checks.push(match attestation::verify(&response, &client_data_hash) {
        Ok(kind) => Check::new("attestation", true, attestation_name(&kind, &response.fmt)),
        Err(error) => Check::new("attestation", false, error.to_string()),
    });
    checks.push(Check::new(
        "aaguid",
        credential.aaguid == card.info.aaguid,
        format!(
            "the credential's AAGUID {} must equal getInfo's {}",
            hex::encode(credential.aaguid),
            hex::encode(card.info.aaguid)
        ),
    ));

    let credential_id = hex::encode(&credential.credential_id);
    let public_key = hex::encode(credential.public_key.encode());
    let uv_flag = if args.uv { " --uv" } else { "" };
    let sim_state = match (&args.device.device, &args.device.sim_state) {
        (DeviceSpec::Sim, Some(dir)) => format!(" --sim-state {}", dir.display()),
        _ => String::new(),
    };
    let next = format!(
        "cardgate card get-assertion --rp-id {} --credential-id {credential_id} --public-key {public_key}{uv_flag} --device {}{sim_state}",
        args.rp_id, args.device.device
    );
    let value = json!({
        "device": card.device.describe(),
        "rp_id": args.rp_id,
        "user": { "id": hex::encode(user_id), "name": args.user },
        "client_data_hash": hex::encode(client_data_hash),
        "response": describe::make_credential(&response),
        "checks": checks_value(&checks),
        "credential_id": credential_id,
        "public_key_cose": public_key,
        "next": next,
    });
    Ok(Outcome {
        value,
        hint: Some(format!("next: {next}")),
        failed: failed_checks(&checks),
    })
}

fn attestation_name(kind: &AttestationType, fmt: &str) -> String {
    match kind {
        AttestationType::None => "format none: the card made no statement".to_string(),
        AttestationType::SelfAttestation => {
            format!("{fmt} self attestation: signed by the credential key, signature valid")
        }
        AttestationType::Certificate { subject } => {
            format!("{fmt} attestation by certificate {subject}, signature valid")
        }
    }
}

fn get_assertion(args: &GetAssertionArgs) -> Result<Outcome, Failure> {
    let credential_id =
        parse_hex("--credential-id", &args.credential_id).map_err(Failure::Usage)?;
    if credential_id.is_empty() {
        return Err(Failure::Usage("--credential-id is empty".to_string()));
    }
    let public_key = match &args.public_key {
        Some(text) => {
            let bytes = parse_hex("--public-key", text).map_err(Failure::Usage)?;
            let key = CoseKey::parse_exact(&bytes)
                .map_err(|e| Failure::Usage(format!("--public-key: {e}")))?;
            Some(key)
        }
        None => None,
    };
    let client_data_hash = random_bytes::<32>()?;
    let request = GetAssertionRequest {
        rp_id: args.rp_id.clone(),
        client_data_hash,
        allow_list: vec![credential_id.clone()],
        uv: args.uv,
    };

    let mut card = open_card(&args.device, args.output.verbose)?;
    warn_if_uv_unsupported(&card.info, args.uv);
    let body = run_request(
        &mut card,
        "getAssertion",
        &request.encode(),
        Duration::from_secs(args.timeout_s),
    )?;
    let response = GetAssertionResponse::parse(&body)
        .map_err(|e| Failure::Card(format!("getAssertion response is invalid: {e}")))?;

    let mut checks = common_checks(&response.auth_data, &args.rp_id, args.uv);
    if let Some(returned) = &response.credential_id {
        checks.push(Check::new(
            "credential_id",
            *returned == credential_id,
            "the response must name the credential that was requested",
        ));
    }
    let signature_check = match &public_key {
        Some(key) => Some(
            match verify_assertion(
                key,
                &response.auth_data.raw,
                &client_data_hash,
                &response.signature,
            ) {
                Ok(()) => Check::new("signature", true, "valid for --public-key"),
                Err(VerifyError::SignatureMismatch) => Check::new(
                    "signature",
                    false,
                    "does not match --public-key and the signed data",
                ),
                Err(other) => Check::new("signature", false, other.to_string()),
            },
        ),
        None => None,
    };
    let hint = match &signature_check {
        Some(_) => None,
        None => Some(
            "signature not checked: pass --public-key COSE_HEX (make-credential prints it)"
                .to_string(),
        ),
    };
    checks.extend(signature_check);

    let value = json!({
        "device": card.device.describe(),
        "rp_id": args.rp_id,
        "client_data_hash": hex::encode(client_data_hash),
        "response": describe::get_assertion(&response),
        "checks": checks_value(&checks),
        "signature_verified": public_key.is_some() && failed_checks(&checks).is_empty(),
    });
    Ok(Outcome {
        value,
        hint,
        failed: failed_checks(&checks),
    })
}

fn warn_if_uv_unsupported(info: &GetInfo, uv: bool) {
    if uv && !info.uv_supported() {
        eprintln!(
            "warning: getInfo does not report built-in user verification (option uv is {}); \
             the card may reject `\"uv\": true`",
            match info.options.get("uv") {
                Some(value) => value.to_string(),
                None => "absent".to_string(),
            }
        );
    }
}

fn random_bytes<const N: usize>() -> Result<[u8; N], Failure> {
    os_random::<N>().map_err(|e| Failure::Card(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sim_args(presence: Presence) -> DeviceArgs {
        DeviceArgs {
            device: DeviceSpec::Sim,
            sim_presence: presence,
            sim_state: None,
        }
    }

    fn quiet() -> OutputArgs {
        OutputArgs {
            json: true,
            verbose: false,
        }
    }

    #[test]
    fn info_on_sim_reports_chromecard_get_info() {
        let outcome = info(&sim_args(Presence::Approve), &quiet()).unwrap();
        let value = outcome.value;
        assert_eq!(value["get_info"]["versions"], json!(["FIDO_2_0"]));
        assert_eq!(
            value["get_info"]["aaguid"],
            "1234567890abcdef0123456789abcdef"
        );
        assert_eq!(value["init"]["capabilities"]["CBOR"], true);
        assert!(outcome.failed.is_empty());
    }

    #[test]
    fn credential_then_assertion_verifies() {
        let state = tempfile::tempdir().unwrap();
        let device = DeviceArgs {
            device: DeviceSpec::Sim,
            sim_presence: Presence::Approve,
            sim_state: Some(state.path().to_path_buf()),
        };
        let made = make_credential(&MakeCredentialArgs {
            rp_id: "localhost".into(),
            user: "alice".into(),
            uv: true,
            timeout_s: 10,
            device: device.clone(),
            output: quiet(),
        })
        .unwrap();
        assert!(made.failed.is_empty(), "{:?}", made.failed);
        let credential_id = made.value["credential_id"].as_str().unwrap().to_string();
        let public_key = made.value["public_key_cose"].as_str().unwrap().to_string();

        let asserted = get_assertion(&GetAssertionArgs {
            rp_id: "localhost".into(),
            credential_id,
            public_key: Some(public_key),
            uv: true,
            timeout_s: 10,
            device,
            output: quiet(),
        })
        .unwrap();
        assert!(asserted.failed.is_empty(), "{:?}", asserted.failed);
        assert_eq!(asserted.value["signature_verified"], true);
    }

    #[test]
    fn get_assertion_with_other_key_fails_signature_check() {
        let state = tempfile::tempdir().unwrap();
        let device = DeviceArgs {
            device: DeviceSpec::Sim,
            sim_presence: Presence::Approve,
            sim_state: Some(state.path().to_path_buf()),
        };
        let make = |user: &str| {
            make_credential(&MakeCredentialArgs {
                rp_id: "localhost".into(),
                user: user.into(),
                uv: false,
                timeout_s: 10,
                device: device.clone(),
                output: quiet(),
            })
            .unwrap()
        };
        let first = make("alice");
        let second = make("bob");

        let asserted = get_assertion(&GetAssertionArgs {
            rp_id: "localhost".into(),
            credential_id: first.value["credential_id"].as_str().unwrap().into(),
            public_key: second.value["public_key_cose"].as_str().map(str::to_string),
            uv: false,
            timeout_s: 10,
            device,
            output: quiet(),
        })
        .unwrap();
        assert_eq!(asserted.failed.len(), 1, "{:?}", asserted.failed);
        assert!(
            asserted.failed[0].starts_with("signature"),
            "{:?}",
            asserted.failed
        );
    }

    #[test]
    fn get_assertion_rejects_malformed_hex_before_connecting() {
        let result = get_assertion(&GetAssertionArgs {
            rp_id: "localhost".into(),
            credential_id: "zz".into(),
            public_key: None,
            uv: false,
            timeout_s: 10,
            device: DeviceArgs {
                device: "hid:/dev/hidraw-cardgate-missing".parse().unwrap(),
                sim_presence: Presence::Approve,
                sim_state: None,
            },
            output: quiet(),
        });
        assert!(matches!(result, Err(Failure::Usage(_))), "{result:?}");
    }

    #[test]
    fn denied_make_credential_names_the_no_button() {
        let result = make_credential(&MakeCredentialArgs {
            rp_id: "localhost".into(),
            user: "alice".into(),
            uv: false,
            timeout_s: 10,
            device: sim_args(Presence::Deny),
            output: quiet(),
        });
        let Err(Failure::Card(reason)) = result else {
            panic!("expected a card failure, got {result:?}");
        };
        assert!(reason.contains("pressed No"), "{reason}");
    }

    #[test]
    fn wink_on_sim_succeeds() {
        let outcome = wink(&sim_args(Presence::Approve), false).unwrap();
        assert_eq!(outcome.value["wink"], "sent");
    }
}
