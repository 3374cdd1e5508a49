//! The bring-up commands as a person runs them: the real binary against
//! the in-process simulated card, a `card-sim` process over UDP, and the
//! captured vectors in `tests/data/ctap-vectors.json`.

use std::net::UdpSocket;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_cardgate");

/// Runs `cardgate ARGS` to completion.
fn cardgate(args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run cardgate {args:?}: {e}"))
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn exit_code(output: &Output) -> i32 {
    output.status.code().unwrap_or(-1)
}

/// Parses the output of a `--json` command.
fn json_of(output: &Output) -> Value {
    serde_json::from_slice(&output.stdout).unwrap_or_else(|e| {
        panic!(
            "stdout is not JSON ({e}):\n{}\nstderr:\n{}",
            stdout(output),
            stderr(output)
        )
    })
}

fn vector(name: &str) -> Value {
    let text = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/ctap-vectors.json"),
    )
    .unwrap();
    let vectors: Vec<Value> = serde_json::from_str(&text).unwrap();
    vectors
        .into_iter()
        .find(|v| v["name"] == name)
        .unwrap_or_else(|| panic!("no vector {name}"))
}

fn text_field<'a>(value: &'a Value, name: &str) -> &'a str {
    value[name]
        .as_str()
        .unwrap_or_else(|| panic!("no text field {name} in {value}"))
}

/// A `cardgate card-sim` process, killed when dropped.
struct CardSim {
    child: Child,
    device: String,
}

impl CardSim {
    /// Starts card-sim on a free UDP port with its state in `state`, and
    /// waits until it answers `card info`.
    fn start(state: &Path, presence: &str) -> CardSim {
        let port = UdpSocket::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let listen = format!("127.0.0.1:{port}");
        let child = Command::new(BIN)
            .args(["card-sim", "--listen", &listen, "--presence", presence])
            .arg("--state")
            .arg(state)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        // Port 0 as the local address lets tests run in parallel.
        let sim = CardSim {
            child,
            device: format!("udp:{listen}@127.0.0.1:0"),
        };

        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let output = cardgate(&["card", "info", "--json", "--device", &sim.device]);
            if output.status.success() {
                return sim;
            }
            assert!(
                Instant::now() < deadline,
                "card-sim did not answer within 20 s: {}",
                stderr(&output)
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for CardSim {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn card_info_on_sim_prints_get_info() {
    let output = cardgate(&["card", "info", "--device", "sim", "--json"]);
    assert_eq!(exit_code(&output), 0, "{}", stderr(&output));
    let info = json_of(&output);
    assert_eq!(info["get_info"]["versions"][0], "FIDO_2_0");
    assert_eq!(
        info["get_info"]["aaguid"],
        "1234567890abcdef0123456789abcdef"
    );
    assert_eq!(info["get_info"]["max_msg_size"], 1024);
    assert_eq!(info["get_info"]["options"]["uv"], true);
    assert_eq!(info["init"]["protocol_version"], 2);
    assert_eq!(info["init"]["capabilities"]["CBOR"], true);
}

#[test]
fn verbose_prints_reports_and_keepalives() {
    let state = tempfile::tempdir().unwrap();
    let output = cardgate(&[
        "card",
        "make-credential",
        "--rp-id",
        "localhost",
        "--device",
        "sim",
        "--sim-presence",
        "delay:300",
        "--sim-state",
        state.path().to_str().unwrap(),
        "--json",
        "-v",
    ]);
    assert_eq!(exit_code(&output), 0, "{}", stderr(&output));
    let log = stderr(&output);
    assert!(
        log.contains("host → card ffffffff86"),
        "no INIT request:\n{log}"
    );
    assert!(
        log.contains("card → host"),
        "no report from the card:\n{log}"
    );
    assert!(
        log.contains("keepalive status 2: up-needed"),
        "no keepalive status:\n{log}"
    );
    assert!(
        log.contains("confirm on the ChromeCard"),
        "no prompt for the person:\n{log}"
    );
    assert!(json_of(&output)["credential_id"].is_string());
}

#[test]
fn credential_and_assertion_over_card_sim() {
    let state = tempfile::tempdir().unwrap();
    let sim = CardSim::start(state.path(), "approve");

    // makeCredential with uv, verified attestation, id and key printed.
    let made = cardgate(&[
        "card",
        "make-credential",
        "--rp-id",
        "localhost",
        "--user",
        "alice",
        "--uv",
        "--device",
        &sim.device,
        "--json",
    ]);
    assert_eq!(exit_code(&made), 0, "{}", stderr(&made));
    let made = json_of(&made);
    let credential_id = text_field(&made, "credential_id").to_string();
    let public_key = text_field(&made, "public_key_cose").to_string();
    let attestation = made["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["check"] == "attestation")
        .cloned()
        .unwrap();
    assert_eq!(attestation["ok"], true, "{attestation}");
    assert!(
        text_field(&attestation, "detail").contains("self attestation"),
        "{attestation}"
    );
    assert_eq!(made["response"]["fmt"], "packed");

    // getAssertion verified with the printed public key.
    let asserted = cardgate(&[
        "card",
        "get-assertion",
        "--rp-id",
        "localhost",
        "--credential-id",
        &credential_id,
        "--public-key",
        &public_key,
        "--uv",
        "--device",
        &sim.device,
        "--json",
    ]);
    assert_eq!(exit_code(&asserted), 0, "{}", stderr(&asserted));
    let asserted = json_of(&asserted);
    assert_eq!(asserted["signature_verified"], true, "{asserted}");
    assert_eq!(asserted["response"]["auth_data"]["flags"]["UV"], true);

    // Another credential's key does not verify: exit code 1.
    let other = cardgate(&[
        "card",
        "make-credential",
        "--rp-id",
        "localhost",
        "--device",
        &sim.device,
        "--json",
    ]);
    assert_eq!(exit_code(&other), 0, "{}", stderr(&other));
    let other_key = text_field(&json_of(&other), "public_key_cose").to_string();
    let mismatch = cardgate(&[
        "card",
        "get-assertion",
        "--rp-id",
        "localhost",
        "--credential-id",
        &credential_id,
        "--public-key",
        &other_key,
        "--device",
        &sim.device,
        "--json",
    ]);
    assert_eq!(exit_code(&mismatch), 1, "{}", stderr(&mismatch));
    assert!(
        stderr(&mismatch).contains("signature"),
        "{}",
        stderr(&mismatch)
    );

    // Malformed input: exit code 2 before the card is asked.
    let malformed = cardgate(&[
        "card",
        "get-assertion",
        "--rp-id",
        "localhost",
        "--credential-id",
        "not-hex",
        "--device",
        &sim.device,
    ]);
    assert_eq!(exit_code(&malformed), 2, "{}", stderr(&malformed));
}

#[test]
fn ctap_decode_reads_vectors() {
    let get_info = vector("synthetic_target_card_getinfo");
    let output = cardgate(&[
        "ctap",
        "decode",
        "get-info",
        text_field(&get_info, "ctaphid_payload_hex"),
        "--json",
    ]);
    assert_eq!(exit_code(&output), 0, "{}", stderr(&output));
    let decoded = json_of(&output);
    assert_eq!(decoded["versions"][0], "FIDO_2_0");
    assert_eq!(decoded["aaguid"], "1234567890abcdef0123456789abcdef");
    assert_eq!(decoded["max_msg_size"], 1024);

    let frames = vector("libfido2_ctaphid_getinfo_multiframe");
    let reports: String = frames["frames_hex"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f.as_str().unwrap())
        .collect();
    let output = cardgate(&["ctap", "decode", "frames", &reports, "--json"]);
    assert_eq!(exit_code(&output), 0, "{}", stderr(&output));
    let decoded = json_of(&output);
    assert_eq!(decoded["channel"], "00220002");
    assert_eq!(decoded["length"], 597);
    assert_eq!(decoded["reports_used"], 11);
    assert_eq!(
        decoded["payload_hex"], frames["ctaphid_payload_hex"],
        "reassembled payload"
    );

    let assertion = vector("pyfido2_cose_es256_assertion");
    let output = cardgate(&[
        "ctap",
        "decode",
        "auth-data",
        text_field(&assertion, "auth_data_hex"),
        "--json",
    ]);
    assert_eq!(exit_code(&output), 0, "{}", stderr(&output));
    let decoded = json_of(&output);
    assert_eq!(decoded["sign_count"], 44);
    assert_eq!(decoded["flags"]["UP"], true);
}

#[test]
fn ctap_decode_rejects_malformed_hex() {
    let output = cardgate(&["ctap", "decode", "auth-data", "0g"]);
    assert_eq!(exit_code(&output), 2, "{}", stderr(&output));
}

/// Runs `ctap verify-assertion` on the assertion vector with `signature`.
fn verify_assertion(signature: &str) -> Output {
    let v = vector("pyfido2_cose_es256_assertion");
    cardgate(&[
        "ctap",
        "verify-assertion",
        "--public-key",
        text_field(&v, "credential_public_key_cose_hex"),
        "--auth-data",
        text_field(&v, "auth_data_hex"),
        "--client-data-hash",
        text_field(&v, "client_data_hash_hex"),
        "--signature",
        signature,
    ])
}

#[test]
fn verify_assertion_exit_codes() {
    let signature =
        text_field(&vector("pyfido2_cose_es256_assertion"), "signature_hex").to_string();

    let valid = verify_assertion(&signature);
    assert_eq!(exit_code(&valid), 0, "{}", stderr(&valid));
    assert!(stdout(&valid).starts_with("valid"), "{}", stdout(&valid));

    // Flip the lowest bit of the last byte, which is part of s, so the DER
    // structure stays intact and only the value changes.
    let mut bytes = hex::decode(&signature).unwrap();
    if let Some(last) = bytes.last_mut() {
        *last ^= 0x01;
    }
    let flipped = verify_assertion(&hex::encode(bytes));
    assert_eq!(exit_code(&flipped), 1, "{}", stderr(&flipped));
    assert!(
        stdout(&flipped).starts_with("invalid"),
        "{}",
        stdout(&flipped)
    );

    let malformed = verify_assertion("30zz");
    assert_eq!(exit_code(&malformed), 2, "{}", stderr(&malformed));
    assert!(
        stderr(&malformed).starts_with("malformed"),
        "{}",
        stderr(&malformed)
    );
}

#[test]
fn card_list_json_works_without_devices() {
    let output = cardgate(&["card", "list", "--json"]);
    assert_eq!(exit_code(&output), 0, "{}", stderr(&output));
    let list = json_of(&output);
    assert!(list["interfaces"].is_array(), "{list}");
    assert!(list["skipped"].is_array(), "{list}");
    assert!(list["hidraw_nodes"].is_array(), "{list}");
    if list["interfaces"].as_array().is_some_and(Vec::is_empty) {
        let message = text_field(&list, "message");
        assert!(message.starts_with("No FIDO HID interface"), "{message}");
        assert!(message.contains("cardgate card doctor"), "{message}");
    }
}

#[test]
fn card_doctor_on_sim_ends_with_next_action() {
    let output = cardgate(&["card", "doctor", "--device", "sim"]);
    assert_eq!(exit_code(&output), 0, "{}", stderr(&output));
    let text = stdout(&output);
    let last = text.trim_end().lines().last().unwrap_or_default();
    assert!(last.starts_with("next action: "), "{text}");
    for step in [
        "hidraw nodes present",
        "permissions",
        "FIDO interface found",
        "INIT",
        "getInfo",
        "PIN/UV",
    ] {
        assert!(text.contains(step), "no step {step}:\n{text}");
    }
    assert!(text.contains("[ok] INIT"), "{text}");
}

#[test]
fn card_doctor_without_card_sim_fails() {
    let free = UdpSocket::bind("127.0.0.1:0").unwrap();
    let device = format!("udp:{}@127.0.0.1:0", free.local_addr().unwrap());
    drop(free);
    let output = cardgate(&["card", "doctor", "--device", &device, "--json"]);
    assert_eq!(exit_code(&output), 1, "{}", stderr(&output));
    let report = json_of(&output);
    assert_eq!(report["ok"], false);
    assert_eq!(report["steps"][3]["name"], "INIT");
    assert_eq!(report["steps"][3]["status"], "fail");
    assert!(
        text_field(&report, "next_action").contains("cardgate card-sim"),
        "{report}"
    );
}
