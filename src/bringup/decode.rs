//! `cardgate ctap decode` and `cardgate ctap verify-assertion`: offline
//! tools for bytes captured from a card.

use std::process::ExitCode;

use clap::{Args, Subcommand, ValueEnum};
use serde_json::{json, Value};

use super::describe;
use crate::ctap::auth_data::AuthenticatorData;
use crate::ctap::cose::CoseKey;
use crate::ctap::frame::{self, Reassembler, Reassembly, REPORT_LEN};
use crate::ctap::get_assertion::GetAssertionResponse;
use crate::ctap::get_info::GetInfo;
use crate::ctap::make_credential::MakeCredentialResponse;
use crate::ctap::status::{split_status, CtapError};
use crate::ctap::verify::{verify_assertion, VerifyError};

#[derive(Debug, Subcommand)]
pub enum CtapCommand {
    /// Decode captured bytes and print what they contain.
    Decode(DecodeArgs),
    /// Check an assertion signature: exit 0 when valid, 1 when not, 2 on malformed input.
    VerifyAssertion(VerifyArgs),
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum DecodeKind {
    /// A getInfo response: status byte, then the CBOR map.
    GetInfo,
    /// A makeCredential response: status byte, then the CBOR map.
    MakeCredential,
    /// A getAssertion response: status byte, then the CBOR map.
    GetAssertion,
    /// Raw authenticatorData (no status byte).
    AuthData,
    /// Concatenated 64-byte CTAPHID reports, reassembled into one message.
    Frames,
}

#[derive(Debug, Args)]
pub struct DecodeArgs {
    pub kind: DecodeKind,
    /// The bytes in hex; spaces, colons and newlines are ignored.
    pub hex: String,
    /// Print compact JSON instead of indented JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// The credential public key as a COSE_Key in hex.
    #[arg(long)]
    pub public_key: String,
    /// authenticatorData in hex.
    #[arg(long)]
    pub auth_data: String,
    /// SHA-256 of clientDataJSON in hex (32 bytes).
    #[arg(long)]
    pub client_data_hash: String,
    /// The DER-encoded ECDSA signature in hex.
    #[arg(long)]
    pub signature: String,
}

/// Parses hex after dropping whitespace and `:` separators.
pub fn parse_hex(name: &str, text: &str) -> Result<Vec<u8>, String> {
    let cleaned: String = text
        .chars()
        .filter(|c| !c.is_whitespace() && *c != ':')
        .collect();
    hex::decode(&cleaned).map_err(|e| format!("{name} is not valid hex: {e}"))
}

fn status_body<'a>(bytes: &'a [u8], what: &str) -> Result<&'a [u8], String> {
    split_status(bytes).map_err(|e| match e {
        CtapError::Status(status) => format!(
            "the {what} carries status 0x{:02X} ({status:?}): {}",
            status.code(),
            status.description()
        ),
        other => format!("{what}: {other}"),
    })
}

/// Decodes `bytes` as `kind`.
pub fn decode(kind: DecodeKind, bytes: &[u8]) -> Result<Value, String> {
    match kind {
        DecodeKind::GetInfo => {
            let body = status_body(bytes, "getInfo response")?;
            GetInfo::parse(body)
                .map(|i| describe::get_info(&i))
                .map_err(|e| e.to_string())
        }
        DecodeKind::MakeCredential => {
            let body = status_body(bytes, "makeCredential response")?;
            MakeCredentialResponse::parse(body)
                .map(|r| describe::make_credential(&r))
                .map_err(|e| e.to_string())
        }
        DecodeKind::GetAssertion => {
            let body = status_body(bytes, "getAssertion response")?;
            GetAssertionResponse::parse(body)
                .map(|r| describe::get_assertion(&r))
                .map_err(|e| e.to_string())
        }
        DecodeKind::AuthData => AuthenticatorData::parse(bytes)
            .map(|d| describe::auth_data(&d))
            .map_err(|e| e.to_string()),
        DecodeKind::Frames => decode_frames(bytes),
    }
}

/// Reassembles reports on the channel of the first initialisation packet.
/// Reports of other channels are listed as ignored, never spliced in.
fn decode_frames(bytes: &[u8]) -> Result<Value, String> {
    if bytes.is_empty() || bytes.len() % REPORT_LEN != 0 {
        return Err(format!(
            "frames must be whole {REPORT_LEN}-byte reports; got {} bytes",
            bytes.len()
        ));
    }
    let reports: Vec<&[u8]> = bytes.chunks(REPORT_LEN).collect();
    let first_cid = reports
        .first()
        .and_then(|r| r.get(..4))
        .map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]))
        .ok_or("no report")?;
    let mut reassembler = Reassembler::new(first_cid);
    let mut ignored = Vec::new();
    for (index, report) in reports.iter().enumerate() {
        match reassembler
            .feed(report)
            .map_err(|e| format!("report {index}: {e}"))?
        {
            Reassembly::Complete(message) => {
                let mut value = json!({
                    "channel": format!("{:08x}", message.cid),
                    "command": format!("0x{:02x} ({})", message.cmd, frame::command_name(message.cmd)),
                    "length": message.payload.len(),
                    "reports_used": index + 1,
                    "payload_hex": hex::encode(&message.payload),
                    "ignored_reports": ignored,
                });
                if message.cmd == frame::CBOR {
                    value["cbor_status"] =
                        json!(message.payload.first().map(|s| format!("0x{s:02x}")));
                }
                return Ok(value);
            }
            Reassembly::Ignored => ignored.push(index),
            _ => {}
        }
    }
    Err(format!(
        "the message on channel {first_cid:08x} is incomplete after {} reports (ignored reports: {ignored:?})",
        reports.len()
    ))
}

pub fn run(command: CtapCommand) -> ExitCode {
    match command {
        CtapCommand::Decode(args) => {
            let result = parse_hex("HEX", &args.hex).and_then(|bytes| decode(args.kind, &bytes));
            match result {
                Ok(value) => {
                    if args.json {
                        println!("{value}");
                    } else {
                        println!(
                            "{}",
                            serde_json::to_string_pretty(&value).unwrap_or_default()
                        );
                    }
                    ExitCode::SUCCESS
                }
                Err(reason) => {
                    eprintln!("cardgate ctap decode: {reason}");
                    ExitCode::from(2)
                }
            }
        }
        CtapCommand::VerifyAssertion(args) => match verify(&args) {
            Ok(()) => {
                println!("valid: the signature matches the public key");
                ExitCode::SUCCESS
            }
            Err(Verdict::Invalid(reason)) => {
                println!("invalid: {reason}");
                ExitCode::from(1)
            }
            Err(Verdict::Malformed(reason)) => {
                eprintln!("malformed: {reason}");
                ExitCode::from(2)
            }
        },
    }
}

enum Verdict {
    Invalid(String),
    Malformed(String),
}

fn verify(args: &VerifyArgs) -> Result<(), Verdict> {
    let key_bytes = parse_hex("--public-key", &args.public_key).map_err(Verdict::Malformed)?;
    let auth_data = parse_hex("--auth-data", &args.auth_data).map_err(Verdict::Malformed)?;
    let hash =
        parse_hex("--client-data-hash", &args.client_data_hash).map_err(Verdict::Malformed)?;
    let signature = parse_hex("--signature", &args.signature).map_err(Verdict::Malformed)?;

    let key = CoseKey::parse_exact(&key_bytes)
        .map_err(|e| Verdict::Malformed(format!("--public-key: {e}")))?;
    let hash: [u8; 32] = hash.try_into().map_err(|h: Vec<u8>| {
        Verdict::Malformed(format!(
            "--client-data-hash must be 32 bytes, got {}",
            h.len()
        ))
    })?;
    AuthenticatorData::parse(&auth_data)
        .map_err(|e| Verdict::Malformed(format!("--auth-data: {e}")))?;
    verify_assertion(&key, &auth_data, &hash, &signature).map_err(|e| match e {
        VerifyError::SignatureMismatch => {
            Verdict::Invalid("the signature does not match this key and data".into())
        }
        other => Verdict::Malformed(other.to_string()),
    })
}
