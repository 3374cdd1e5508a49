//! The UDP simulated card, started in-process on a free loopback port and
//! driven through the UDP transport and the CTAPHID device layer.

use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use cardgate::ctap::device::{CtapHidDevice, Timing};
use cardgate::ctap::frame::{self, encode_message, Reassembler, Reassembly, BROADCAST_CID};
use cardgate::ctap::sim::authenticator::SimAuthenticator;
use cardgate::ctap::sim::engine::{EngineConfig, Presence};
use cardgate::ctap::sim::udp::{self, SimServer};
use cardgate::ctap::transport::{connector, DeviceSpec};

fn loopback_any_port() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

fn start_server(state: &tempfile::TempDir) -> SimServer {
    let authenticator = SimAuthenticator::open(Some(state.path())).unwrap();
    udp::start(
        loopback_any_port(),
        authenticator,
        Presence::Approve,
        EngineConfig::default(),
    )
    .unwrap()
}

fn open_device(server: &SimServer) -> CtapHidDevice {
    let spec: DeviceSpec = format!("udp:{}@127.0.0.1:0", server.local_addr())
        .parse()
        .unwrap();
    let transport = connector(&spec, None).unwrap().connect().unwrap();
    CtapHidDevice::open(transport, Timing::default()).unwrap()
}

#[test]
fn udp_sim_answers_init_and_ping() {
    let state = tempfile::tempdir().unwrap();
    let server = start_server(&state);
    let mut device = open_device(&server);

    let info = *device.init_info();
    assert!(info.supports_cbor());
    assert_ne!(info.cid, BROADCAST_CID);

    let data: Vec<u8> = (0..200).map(|i| i as u8).collect();
    assert_eq!(device.ping(&data).unwrap(), data);
    device.wink().unwrap();
    server.stop().unwrap();
}

#[test]
fn udp_sim_answers_get_info() {
    let state = tempfile::tempdir().unwrap();
    let server = start_server(&state);
    let mut device = open_device(&server);
    let deadline = Instant::now() + Duration::from_secs(5);
    let response = device
        .cbor(&[0x04], &mut |_| {}, &AtomicBool::new(false), deadline)
        .unwrap();
    assert_eq!(response.first(), Some(&0x00), "status OK");
    assert_eq!(
        response.get(1).map(|b| b >> 5),
        Some(5),
        "a CBOR map follows"
    );
}

#[test]
fn udp_sim_serves_two_clients() {
    let state = tempfile::tempdir().unwrap();
    let server = start_server(&state);
    let mut first = open_device(&server);
    let mut second = open_device(&server);
    assert_ne!(first.init_info().cid, second.init_info().cid);
    assert_eq!(first.ping(b"one").unwrap(), b"one");
    assert_eq!(second.ping(b"two").unwrap(), b"two");
}

#[test]
fn udp_sim_drops_datagrams_of_wrong_size() {
    let state = tempfile::tempdir().unwrap();
    let server = start_server(&state);
    let client = UdpSocket::bind(loopback_any_port()).unwrap();
    client
        .set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();

    let init = encode_message(BROADCAST_CID, frame::INIT, &[7; 8]).unwrap()[0];
    client.send_to(&init[..63], server.local_addr()).unwrap();
    let mut buffer = [0u8; 128];
    assert!(
        client.recv_from(&mut buffer).is_err(),
        "no reply to 63 bytes"
    );

    client.send_to(&init, server.local_addr()).unwrap();
    let (length, _) = client.recv_from(&mut buffer).unwrap();
    assert_eq!(length, 64);
    let mut reassembler = Reassembler::new(BROADCAST_CID);
    let Ok(Reassembly::Complete(message)) = reassembler.feed(&buffer[..length]) else {
        panic!("INIT reply is one report");
    };
    assert_eq!(message.cmd, frame::INIT);
    assert_eq!(&message.payload[..8], &[7; 8]);
}

#[test]
fn udp_sim_stops_promptly() {
    let state = tempfile::tempdir().unwrap();
    let server = start_server(&state);
    let started = Instant::now();
    server.stop().unwrap();
    assert!(started.elapsed() < Duration::from_secs(1));
}
