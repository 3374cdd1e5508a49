//! Latency of enrollment and login with the simulated card, and the share
//! of CTAPHID framing, ECDSA and sled in it.
//!
//! Method:
//! 1. End to end: k_proxy runs in this process with the in-process
//!    simulated card, which approves at once and keeps its state on disk.
//!    A client in the same process sends `POST /enroll/register` and
//!    `POST /session/login` over HTTPS one at a time and times each request.
//! 2. Parts, timed alone on the same data: the real makeCredential and
//!    getAssertion messages (built by the proxy's encoders, answered by
//!    the simulated card) are split into CTAPHID reports and reassembled in
//!    both directions; one ES256 signature (the card) and one verification
//!    (the proxy) over the signed bytes of each ceremony; and the
//!    enrollments actor's sled work of each ceremony (Reserve + Register,
//!    Lookup + RecordSignCount) on a store of its own. For scale, the
//!    simulated card's whole command (state in memory) is timed too.
//!
//! A part's share is its median divided by the end-to-end median. The
//! parts run without the contention of a real request, so the shares are
//! estimates.
//!
//! Usage: cargo build --release --examples &&
//!        target/release/examples/login [ITERATIONS]
//! Prints tab-separated lines: `path  metric  microseconds`.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use cardgate::actors::enrollments::{
    Credential, EnrollmentsActor, Lookup, RecordSignCount, Register, Reserve,
};
use cardgate::client::api::ProxyClient;
use cardgate::ctap::frame::{self, Reassembler, Reassembly};
use cardgate::ctap::get_assertion::{GetAssertionRequest, GetAssertionResponse};
use cardgate::ctap::make_credential::{MakeCredentialRequest, MakeCredentialResponse};
use cardgate::ctap::sim::authenticator::SimAuthenticator;
use cardgate::ctap::sim::{Ctap2Handler, PresenceOutcome, Step};
use cardgate::ctap::verify::verify_es256;
use cardgate::domain::Username;
use p256::ecdsa::signature::Signer;
use p256::ecdsa::{DerSignature, SigningKey};

/// Ceremonies of each kind before the timed ones.
const WARM_UP: usize = 5;

/// Channel id used for the framing measurement.
const CHANNEL: u32 = 0x0100_0001;

fn main() -> ExitCode {
    let iterations = match std::env::args().nth(1).map(|n| n.parse::<usize>()) {
        None => 100,
        Some(Ok(n)) if n > 0 => n,
        Some(_) => {
            eprintln!("login: ITERATIONS must be a positive number");
            return ExitCode::FAILURE;
        }
    };
    match run(iterations) {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("login: {message}");
            ExitCode::FAILURE
        }
    }
}

fn micros(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

/// Nearest-rank percentile of `samples` in microseconds.
fn percentile(samples: &mut [Duration], p: f64) -> f64 {
    samples.sort_unstable();
    let rank = ((p / 100.0) * samples.len() as f64).ceil() as usize;
    samples
        .get(rank.clamp(1, samples.len()) - 1)
        .map_or(0.0, |d| micros(*d))
}

/// Median time of `work` over `iterations` runs.
fn median_of(
    iterations: usize,
    mut work: impl FnMut() -> Result<(), String>,
) -> Result<f64, String> {
    let mut samples = Vec::with_capacity(iterations);
    for _ in 0..iterations {
        let started = Instant::now();
        work()?;
        samples.push(started.elapsed());
    }
    Ok(percentile(&mut samples, 50.0))
}

fn run(iterations: usize) -> Result<(), String> {
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let (enroll, login) = end_to_end(dir.path(), iterations)?;
    let parts = parts(dir.path(), iterations)?;

    for (path, mut samples, part) in [
        ("enroll", enroll, &parts.enroll),
        ("login", login, &parts.login),
    ] {
        let p50 = percentile(&mut samples, 50.0);
        println!("{path}\tend-to-end p50\t{p50:.1}");
        println!(
            "{path}\tend-to-end p99\t{:.1}",
            percentile(&mut samples, 99.0)
        );
        for (name, median) in [
            ("CTAPHID framing", part.framing),
            ("ECDSA", part.ecdsa),
            ("sled", part.sled),
            ("simulated card command", part.card),
        ] {
            println!("{path}\t{name} median\t{median:.2}");
            println!("{path}\t{name} share %\t{:.2}", 100.0 * median / p50);
        }
    }
    Ok(())
}

/// Times enrollments and logins through the proxy's HTTPS API.
fn end_to_end(
    dir: &std::path::Path,
    iterations: usize,
) -> Result<(Vec<Duration>, Vec<Duration>), String> {
    cardgate::certs::init(&cardgate::certs::InitOptions {
        out: dir.join("certs"),
        force: false,
        proxy_names: vec![],
        server_names: vec![],
    })
    .map_err(|e| e.to_string())?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map_err(|e| e.to_string())?
        .port();
    // k_server is not needed: enrollment and login never reach it. Every
    // request comes from one address, so the per-address limit is lifted,
    // and metrics stay off so that no fixed port can collide.
    std::fs::write(
        dir.join("proxy.toml"),
        format!(
            "listen = \"127.0.0.1:{port}\"\n[tls]\ncert = \"certs/proxy.crt\"\nkey = \"certs/proxy.key\"\n\
             [upstream]\nurl = \"https://127.0.0.1:9\"\nca = \"certs/ca.crt\"\n\
             client_cert = \"certs/proxy-client.crt\"\nclient_key = \"certs/proxy-client.key\"\n\
             [card]\ndevice = \"sim\"\nsim_state = \"card\"\n[store]\npath = \"proxy-store\"\n\
             [webauthn]\nrp_id = \"localhost\"\norigin = \"https://localhost:{port}\"\n\
             [limits]\naddress_burst = 1000000\n[metrics]\nlisten = \"\"\n"
        ),
    )
    .map_err(|e| e.to_string())?;
    let config =
        cardgate::config::load_proxy(&dir.join("proxy.toml")).map_err(|e| e.to_string())?;
    let ca = dir.join("certs/ca.crt");

    actix_rt::System::new().block_on(async move {
        let proxy = cardgate::http::proxy::start(config)
            .await
            .map_err(|e| e.to_string())?;
        actix_rt::spawn(proxy.server);
        let client = ProxyClient::new(&format!("https://localhost:{port}"), &ca, 1)
            .map_err(|e| e.to_string())?;

        let deadline = Instant::now() + Duration::from_secs(20);
        while !client
            .health()
            .await
            .is_ok_and(|h| h["card"]["state"] == "connected")
        {
            if Instant::now() > deadline {
                return Err("the simulated card did not connect within 20 s".to_string());
            }
            actix_rt::time::sleep(Duration::from_millis(50)).await;
        }

        let mut enroll = Vec::with_capacity(iterations);
        let mut login = Vec::with_capacity(iterations);
        for i in 0..WARM_UP + iterations {
            let username = format!("bench-{i}");
            let started = Instant::now();
            client
                .enroll(&username)
                .await
                .map_err(|e| format!("enroll {username}: {e}"))?;
            let enrolled = started.elapsed();
            let started = Instant::now();
            client
                .login(&username)
                .await
                .map_err(|e| format!("log in {username}: {e}"))?;
            let logged_in = started.elapsed();
            if i >= WARM_UP {
                enroll.push(enrolled);
                login.push(logged_in);
            }
        }
        Ok((enroll, login))
    })
}

/// Medians of the parts of one ceremony, in microseconds.
struct Part {
    framing: f64,
    ecdsa: f64,
    sled: f64,
    /// The simulated card's whole CTAP2 command (parsing, key derivation,
    /// signing, encoding), state in memory; includes the card's ECDSA.
    card: f64,
}

struct Parts {
    enroll: Part,
    login: Part,
}

/// Splits `message` into reports and reassembles it, as one side of a
/// CTAPHID exchange does.
fn frame_round_trip(message: &[u8]) -> Result<(), String> {
    let reports =
        frame::encode_message(CHANNEL, frame::CBOR, message).map_err(|e| e.to_string())?;
    let mut reassembler = Reassembler::new(CHANNEL);
    for report in &reports {
        if let Reassembly::Complete(done) = reassembler.feed(report).map_err(|e| e.to_string())? {
            if done.payload.len() != message.len() {
                return Err("reassembled message has another length".into());
            }
            return Ok(());
        }
    }
    Err("the reports did not complete the message".into())
}

/// Runs one CTAP2 command on the simulated card with presence approved.
fn card_command(card: &mut SimAuthenticator, request: &[u8]) -> Result<Vec<u8>, String> {
    let response = match card.begin(request) {
        Step::Done(response) => response,
        Step::NeedsPresence(pending) => card.complete(pending, PresenceOutcome::Approved),
    };
    match response.split_first() {
        Some((0, _)) => Ok(response),
        Some((status, _)) => Err(format!("the simulated card answered status {status:#04x}")),
        None => Err("the simulated card answered nothing".into()),
    }
}

fn parts(dir: &std::path::Path, iterations: usize) -> Result<Parts, String> {
    // The messages of one enrollment and one login.
    let mut card = SimAuthenticator::open(None).map_err(|e| e.to_string())?;
    let client_data_hash = [7u8; 32];
    let mc = MakeCredentialRequest {
        client_data_hash,
        rp_id: "localhost".into(),
        rp_name: "cardgate".into(),
        user_id: vec![1; 16],
        user_name: "bench-user".into(),
        user_display_name: "bench-user".into(),
        exclude_list: vec![],
        uv: true,
    };
    let mc_request = mc.encode();
    let mc_response = card_command(&mut card, &mc_request)?;
    let registration =
        MakeCredentialResponse::parse(&mc_response[1..]).map_err(|e| e.to_string())?;
    let attested = registration
        .auth_data
        .attested
        .clone()
        .ok_or("the registration has no attested credential")?;
    let ga = GetAssertionRequest {
        rp_id: "localhost".into(),
        client_data_hash,
        allow_list: vec![attested.credential_id.clone()],
        uv: true,
    };
    let ga_request = ga.encode();
    let ga_response = card_command(&mut card, &ga_request)?;
    let assertion = GetAssertionResponse::parse(&ga_response[1..]).map_err(|e| e.to_string())?;

    let enroll_card = median_of(iterations, || {
        card_command(&mut card, &mc_request).map(drop)
    })?;
    let login_card = median_of(iterations, || {
        card_command(&mut card, &ga_request).map(drop)
    })?;

    // CTAPHID framing: request and response, each split and reassembled.
    let enroll_framing = median_of(iterations, || {
        frame_round_trip(&mc_request)?;
        frame_round_trip(&mc_response)
    })?;
    let login_framing = median_of(iterations, || {
        frame_round_trip(&ga_request)?;
        frame_round_trip(&ga_response)
    })?;

    // ECDSA: the card signs authenticatorData ‖ clientDataHash, the proxy
    // verifies it (packed self-attestation at enrollment, the assertion at
    // login).
    let key = SigningKey::from_slice(&[0x42; 32]).map_err(|e| e.to_string())?;
    let verifying = *key.verifying_key();
    let ecdsa = |signed: &[u8]| {
        median_of(iterations, || {
            let signature: DerSignature = key.sign(&[signed, &client_data_hash].concat());
            verify_es256(
                &verifying,
                &[signed, &client_data_hash],
                signature.as_bytes(),
            )
            .map_err(|e| e.to_string())
        })
    };
    let enroll_ecdsa = ecdsa(&registration.auth_data.raw)?;
    let login_ecdsa = ecdsa(&assertion.auth_data.raw)?;

    // sled: the enrollments actor's work of each ceremony.
    let store = dir.join("sled-bench");
    let (enroll_sled, login_sled) = actix_rt::System::new().block_on(async move {
        let enrollments = EnrollmentsActor::start(store).map_err(|e| e.to_string())?;
        let mut enroll = Vec::with_capacity(iterations);
        let mut login = Vec::with_capacity(iterations);
        for i in 0..iterations {
            let username = Username::parse(&format!("sled-{i}")).map_err(|e| e.to_string())?;
            let credential_id =
                [attested.credential_id.as_slice(), &(i as u64).to_be_bytes()].concat();
            let credential = Credential {
                credential_id: credential_id.clone(),
                username: username.as_str().to_string(),
                public_key_cose: attested.public_key.encode(),
                sign_count: 1,
                aaguid: attested.aaguid,
                attestation: "packed-self".into(),
                created_at: 0,
                possibly_cloned: false,
            };
            let started = Instant::now();
            enrollments
                .send(Reserve {
                    username: username.clone(),
                })
                .await
                .map_err(|e| e.to_string())?
                .map_err(|e| e.to_string())?;
            enrollments
                .send(Register {
                    username: username.clone(),
                    display_name: String::new(),
                    credential,
                })
                .await
                .map_err(|e| e.to_string())?
                .map_err(|e| e.to_string())?;
            enroll.push(started.elapsed());

            let started = Instant::now();
            enrollments
                .send(Lookup { username })
                .await
                .map_err(|e| e.to_string())?
                .map_err(|e| e.to_string())?;
            enrollments
                .send(RecordSignCount {
                    credential_id,
                    reported: 2,
                })
                .await
                .map_err(|e| e.to_string())?
                .map_err(|e| e.to_string())?;
            login.push(started.elapsed());
        }
        Ok::<_, String>((percentile(&mut enroll, 50.0), percentile(&mut login, 50.0)))
    })?;

    Ok(Parts {
        enroll: Part {
            framing: enroll_framing,
            ecdsa: enroll_ecdsa,
            sled: enroll_sled,
            card: enroll_card,
        },
        login: Part {
            framing: login_framing,
            ecdsa: login_ecdsa,
            sled: login_sled,
            card: login_card,
        },
    })
}
