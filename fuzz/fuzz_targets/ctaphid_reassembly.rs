//! Feeds arbitrary bytes, cut into 64-byte reports, to a CTAPHID
//! Reassembler on the channel named by the first four bytes and to the
//! `-v` report decoder, and every completed message to the INIT, ERROR and
//! KEEPALIVE payload parsers.

#![no_main]

use cardgate::ctap::device::KeepaliveStatus;
use cardgate::ctap::frame::{
    encode_message, HidError, InitResponse, Packet, Reassembler, Reassembly, Report, MAX_MESSAGE,
    REPORT_LEN,
};
use cardgate::ctap::transport::logged::{describe_report, Direction};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let cid = match data.get(..4) {
        Some(&[a, b, c, d]) => u32::from_be_bytes([a, b, c, d]),
        _ => return,
    };
    let mut reassembler = Reassembler::new(cid);

    // The trailing chunk is usually shorter than a report, which the
    // parsers must reject without panicking.
    for report in data[4..].chunks(REPORT_LEN) {
        let _ = Packet::parse(report);
        if let Ok(full) = Report::try_from(report) {
            let _ = describe_report(Direction::Received, &full);
        }
        let Ok(Reassembly::Complete(message)) = reassembler.feed(report) else {
            continue;
        };
        assert_eq!(message.cid, cid, "message of another channel was completed");
        assert!(message.payload.len() <= MAX_MESSAGE);

        let _ = InitResponse::parse(&message.payload);
        let _ = HidError::parse(&message.payload);
        let _ = KeepaliveStatus::parse(&message.payload);

        // A completed message encodes back into reports that reassemble
        // into the same message.
        let reports = encode_message(message.cid, message.cmd, &message.payload)
            .expect("a reassembled message fits in CTAPHID");
        let mut again = Reassembler::new(cid);
        let mut rebuilt = None;
        for report in &reports {
            if let Reassembly::Complete(m) = again.feed(report).expect("encoded reports are valid")
            {
                rebuilt = Some(m);
            }
        }
        assert_eq!(rebuilt.as_ref(), Some(&message));
    }
});
