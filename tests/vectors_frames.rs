//! CTAPHID framing against captured device reports in
//! tests/data/ctap-vectors.json (from libfido2's fuzz and regression data).

use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use cardgate::ctap::device::{CtapHidDevice, DeviceError, Timing};
use cardgate::ctap::frame::{
    self, encode_message, InitResponse, Packet, Reassembler, Reassembly, REPORT_LEN,
};
use cardgate::ctap::transport::{Transport, TransportError};
use serde_json::Value;

fn vector(name: &str) -> Value {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/data/ctap-vectors.json"
    ))
    .expect("tests/data/ctap-vectors.json is readable");
    let vectors: Vec<Value> = serde_json::from_str(&text).expect("vector file is JSON");
    vectors
        .into_iter()
        .find(|v| v["name"] == name)
        .unwrap_or_else(|| panic!("vector {name} is missing"))
}

fn frames(vector: &Value) -> Vec<Vec<u8>> {
    vector["frames_hex"]
        .as_array()
        .expect("frames_hex is an array")
        .iter()
        .map(|f| hex::decode(f.as_str().expect("frame is a string")).expect("frame is hex"))
        .collect()
}

fn hex_field(vector: &Value, field: &str) -> Vec<u8> {
    hex::decode(
        vector[field]
            .as_str()
            .unwrap_or_else(|| panic!("{field} is a string")),
    )
    .unwrap_or_else(|e| panic!("{field} is not hex: {e}"))
}

fn cid_of(text: &str) -> u32 {
    u32::from_str_radix(text, 16).expect("CID is hex")
}

#[test]
fn init_response_vector_decodes_fields() {
    let vector = vector("libfido2_ctaphid_init_response_frame");
    let expected = &vector["expected"];
    let frames = frames(&vector);
    assert_eq!(frames.len(), 1);
    assert_eq!(frames[0].len(), REPORT_LEN);

    let mut reassembler = Reassembler::new(cid_of(expected["cid"].as_str().unwrap()));
    let Ok(Reassembly::Complete(message)) = reassembler.feed(&frames[0]) else {
        panic!("the INIT response is one complete report");
    };
    assert_eq!(message.cmd, frame::INIT);
    assert_eq!(
        message.payload.len() as u64,
        expected["bcnt"].as_u64().unwrap()
    );

    let response = InitResponse::parse(&message.payload).unwrap();
    assert_eq!(
        hex::encode(response.nonce),
        expected["nonce_hex"].as_str().unwrap()
    );
    assert_eq!(
        response.cid,
        cid_of(expected["allocated_cid_hex"].as_str().unwrap())
    );
    assert_eq!(
        u64::from(response.protocol_version),
        expected["ctaphid_protocol_version"].as_u64().unwrap()
    );
    let version: Vec<u8> = expected["device_version"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap() as u8)
        .collect();
    assert_eq!(response.device_version.to_vec(), version);
    assert_eq!(
        u64::from(response.capabilities),
        expected["capabilities"].as_u64().unwrap()
    );
    let decoded = &expected["capabilities_decoded"];
    assert_eq!(response.supports_wink(), decoded["WINK"].as_bool().unwrap());
    assert_eq!(response.supports_cbor(), decoded["CBOR"].as_bool().unwrap());
    assert_eq!(!response.supports_msg(), decoded["NMSG"].as_bool().unwrap());
}

#[test]
fn keepalive_vector_is_up_needed() {
    let vector = vector("libfido2_ctaphid_keepalive_upneeded_frame");
    let expected = &vector["expected"];
    let frames = frames(&vector);
    let Ok(Packet::Init(init)) = Packet::parse(&frames[0]) else {
        panic!("the keepalive is an initialization packet");
    };
    assert_eq!(init.cid, cid_of(expected["cid"].as_str().unwrap()));
    assert_eq!(init.cmd, frame::KEEPALIVE);
    assert_eq!(u64::from(init.bcnt), expected["bcnt"].as_u64().unwrap());

    let mut reassembler = Reassembler::new(init.cid);
    let Ok(Reassembly::Complete(message)) = reassembler.feed(&frames[0]) else {
        panic!("the keepalive is one complete report");
    };
    assert_eq!(message.payload, [frame::KEEPALIVE_UP_NEEDED]);
    assert_eq!(
        u64::from(message.payload[0]),
        expected["status"].as_u64().unwrap()
    );
}

#[test]
fn getinfo_vector_reassembles_exact_payload() {
    let vector = vector("libfido2_ctaphid_getinfo_multiframe");
    let expected = &vector["expected"];
    let frames = frames(&vector);
    assert_eq!(frames.len() as u64, expected["frames"].as_u64().unwrap());

    let mut reassembler = Reassembler::new(cid_of(expected["cid"].as_str().unwrap()));
    let mut message = None;
    for (index, report) in frames.iter().enumerate() {
        match reassembler.feed(report).unwrap() {
            Reassembly::Complete(complete) => {
                assert_eq!(index, frames.len() - 1, "completes on the last frame");
                message = Some(complete);
            }
            Reassembly::Incomplete => {}
            Reassembly::Ignored => panic!("frame {index} belongs to the same channel"),
        }
    }
    let message = message.expect("the frames form one message");
    assert_eq!(message.cmd, frame::CBOR);
    assert_eq!(
        message.payload.len() as u64,
        expected["bcnt"].as_u64().unwrap()
    );
    assert_eq!(message.payload, hex_field(&vector, "ctaphid_payload_hex"));
    assert_eq!(
        u64::from(message.payload[0]),
        expected["status"].as_u64().unwrap()
    );
}

#[test]
fn getinfo_vector_encodes_to_captured_frames() {
    let vector = vector("libfido2_ctaphid_getinfo_multiframe");
    let cid = cid_of(vector["expected"]["cid"].as_str().unwrap());
    let payload = hex_field(&vector, "ctaphid_payload_hex");
    let encoded: Vec<Vec<u8>> = encode_message(cid, frame::CBOR, &payload)
        .unwrap()
        .iter()
        .map(|r| r.to_vec())
        .collect();
    assert_eq!(encoded, frames(&vector));
}

#[test]
fn mixed_cid_vector_is_not_spliced() {
    let vector = vector("libfido2_fuzz_getassertion_frames_mixed_cid");
    let expected = &vector["expected"];
    let frames = frames(&vector);
    let ours = cid_of(expected["init_frame_cid"].as_str().unwrap());
    let theirs = cid_of(expected["continuation_frame_cids"][0].as_str().unwrap());
    assert_ne!(ours, theirs);

    let mut reassembler = Reassembler::new(ours);
    assert_eq!(reassembler.feed(&frames[0]), Ok(Reassembly::Incomplete));
    for (index, report) in frames.iter().enumerate().skip(1) {
        assert_eq!(
            reassembler.feed(report),
            Ok(Reassembly::Ignored),
            "frame {index} of channel {theirs:08x}"
        );
    }
    assert!(
        reassembler.is_in_progress(),
        "the message stays incomplete, waiting for its own continuation packets"
    );
}

#[test]
fn mixed_cid_vector_with_rewritten_cids_completes() {
    // A host without CID checks would in effect rewrite the foreign CIDs to
    // ours. The payload then matches the published one, so the negative test
    // above fails for the right reason.
    let vector = vector("libfido2_fuzz_getassertion_frames_mixed_cid");
    let ours = cid_of(vector["expected"]["init_frame_cid"].as_str().unwrap());
    let mut reassembler = Reassembler::new(ours);
    let mut completed = None;
    for mut report in frames(&vector) {
        report[..4].copy_from_slice(&ours.to_be_bytes());
        if let Reassembly::Complete(message) = reassembler.feed(&report).unwrap() {
            completed = Some(message);
        }
    }
    let message = completed.expect("rewritten frames form one message");
    assert_eq!(message.payload, hex_field(&vector, "ctaphid_payload_hex"));
}

/// Replays captured frames. INIT gets the captured INIT response (its nonce
/// patched to the one sent, as libfido2's mock does), and CBOR gets
/// `response_frames`.
struct Replay {
    init_frame: Vec<u8>,
    response_frames: Vec<Vec<u8>>,
    queue: std::collections::VecDeque<[u8; REPORT_LEN]>,
}

impl Transport for Replay {
    fn write_report(&mut self, report: &[u8; REPORT_LEN]) -> Result<(), TransportError> {
        let to_queue: Vec<Vec<u8>> = match Packet::parse(report) {
            Ok(Packet::Init(init)) if init.cmd == frame::INIT => {
                let mut reply = self.init_frame.clone();
                reply[7..15].copy_from_slice(&init.data[..8]);
                vec![reply]
            }
            Ok(Packet::Init(init)) if init.cmd == frame::CBOR => self.response_frames.clone(),
            _ => Vec::new(),
        };
        for frame in to_queue {
            self.queue
                .push_back(frame.try_into().expect("captured frames are 64 bytes"));
        }
        Ok(())
    }

    fn read_report(
        &mut self,
        timeout: Duration,
    ) -> Result<Option<[u8; REPORT_LEN]>, TransportError> {
        match self.queue.pop_front() {
            Some(report) => Ok(Some(report)),
            None => {
                std::thread::sleep(timeout);
                Ok(None)
            }
        }
    }

    fn describe(&self) -> String {
        "replayed vectors".to_string()
    }
}

fn replay_device(response_vector: &str) -> CtapHidDevice {
    let init = vector("libfido2_ctaphid_init_response_frame");
    let transport = Replay {
        init_frame: frames(&init).remove(0),
        response_frames: frames(&vector(response_vector)),
        queue: Default::default(),
    };
    let timing = Timing {
        read_slice: Duration::from_millis(5),
        idle_timeout: Duration::from_millis(200),
        ..Timing::default()
    };
    CtapHidDevice::open(Box::new(transport), timing).expect("INIT with the captured response")
}

#[test]
fn device_reads_captured_getinfo() {
    let mut device = replay_device("libfido2_ctaphid_getinfo_multiframe");
    assert_eq!(device.init_info().cid, 0x0022_0002);
    device.set_max_msg_size(1536);
    let deadline = Instant::now() + Duration::from_secs(2);
    let response = device
        .cbor(&[0x04], &mut |_| {}, &AtomicBool::new(false), deadline)
        .unwrap();
    let vector = vector("libfido2_ctaphid_getinfo_multiframe");
    assert_eq!(response, hex_field(&vector, "ctaphid_payload_hex"));
}

#[test]
fn device_times_out_on_mixed_cid_response() {
    let mut device = replay_device("libfido2_fuzz_getassertion_frames_mixed_cid");
    let deadline = Instant::now() + Duration::from_secs(2);
    let error = device
        .cbor(&[0x02], &mut |_| {}, &AtomicBool::new(false), deadline)
        .unwrap_err();
    assert!(
        matches!(error, DeviceError::IdleTimeout { .. }),
        "expected the foreign frames to be ignored until the idle timeout, got {error}"
    );
}
