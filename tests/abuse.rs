//! Abuse of the proxy on loopback: throttling by address and username,
//! cloned or replayed card responses, session tokens that must rotate and
//! end at once, and tokens that must never reach a log.

mod common;

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ciborium::Value as Cbor;
use serde_json::{json, Value};

use common::card_relay::{CardRelay, Mode};
use common::chain::{parse_response, token_of, wait_for_card, Chain, Client, RawResponse};

/// Sends one HTTP/1.1 request to the proxy over TLS from the local address
/// `source` (any 127.0.0.0/8 address works on Linux), so that tests can
/// act as several clients.
fn post_from(source: IpAddr, chain: &Chain, path: &str, body: &Value) -> RawResponse {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let proxy = SocketAddr::from(([127, 0, 0, 1], chain.proxy_port));
    let tcp = runtime
        .block_on(async {
            let socket = tokio::net::TcpSocket::new_v4()?;
            socket.bind(SocketAddr::new(source, 0))?;
            socket.connect(proxy).await?.into_std()
        })
        .expect("connect from the source address");
    tcp.set_nonblocking(false).expect("blocking socket");
    tcp.set_read_timeout(Some(Duration::from_secs(30)))
        .expect("read timeout");

    let config = cardgate::tls::client_config(&chain.path("certs/ca.crt"), None).expect("TLS");
    let name = rustls_pki_types::ServerName::try_from("localhost").expect("name");
    let connection = rustls::ClientConnection::new(Arc::new(config), name).expect("TLS client");
    let mut stream = rustls::StreamOwned::new(connection, tcp);
    let body = body.to_string();
    let request = format!(
        "POST {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).expect("send");
    let mut bytes = Vec::new();
    match stream.read_to_end(&mut bytes) {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof && !bytes.is_empty() => {}
        Err(e) => panic!("read from the proxy: {e}"),
    }
    parse_response(&bytes).expect("an HTTP response")
}

fn address(last: u8) -> IpAddr {
    IpAddr::from([127, 0, 0, last])
}

#[test]
fn throttling_by_address_and_username() {
    const REFILL: Duration = Duration::from_millis(1000);
    const MAX_BACKOFF: Duration = Duration::from_secs(1);
    const SLACK: Duration = Duration::from_millis(500);

    let chain = Chain::new();
    let mut settings = chain.proxy_settings();
    settings.extra = format!(
        "[limits]\naddress_burst = 3\naddress_refill_ms = {}\nusername_free_failures = 2\n\
         username_first_backoff_ms = 300\nusername_max_backoff_s = {}\n",
        REFILL.as_millis(),
        MAX_BACKOFF.as_secs()
    );
    chain.write_server_config(&chain.path("server-store"), "");
    chain.write_proxy_config(&settings);
    let _server = chain.server();
    let _proxy = chain.proxy();
    wait_for_card(&chain.client());
    let login = |name: &str| json!({ "username": name });

    // 1. Per address: a burst of three, then 429 for that address only,
    //    and one more attempt after each refill interval.
    for i in 0..3 {
        let reply = post_from(
            address(2),
            &chain,
            "/session/login",
            &login(&format!("nobody{i}")),
        );
        assert_eq!(
            reply.status,
            404,
            "attempt {i} from 127.0.0.2: {:?}",
            reply.json()
        );
    }
    let rejected = post_from(address(2), &chain, "/session/login", &login("nobody9"));
    assert_eq!(rejected.status, 429, "{:?}", rejected.json());
    let details = rejected.json()["details"]
        .as_str()
        .unwrap_or("")
        .to_string();
    assert!(details.contains("from this address"), "{details}");
    let other = post_from(address(3), &chain, "/session/login", &login("nobody9"));
    assert_eq!(
        other.status,
        404,
        "another address is not throttled: {:?}",
        other.json()
    );
    let enroll = post_from(address(2), &chain, "/enroll/register", &login("newuser"));
    assert_eq!(enroll.status, 429, "enrollment shares the address budget");
    std::thread::sleep(REFILL + Duration::from_millis(100));
    let again = post_from(address(2), &chain, "/session/login", &login("nobody9"));
    assert_eq!(
        again.status,
        404,
        "after a refill interval: {:?}",
        again.json()
    );

    // 2. Per username: failures from many addresses start a backoff for
    //    that name, rejected attempts do not extend it, and it never lasts
    //    longer than username_max_backoff_s after the last failure.
    let mut last_failure = Instant::now();
    let mut rejections = 0;
    for i in 0..30u8 {
        let reply = post_from(address(10 + i), &chain, "/session/login", &login("victim"));
        match reply.status {
            404 => last_failure = Instant::now(),
            429 => {
                rejections += 1;
                let details = reply.json()["details"].as_str().unwrap_or("").to_string();
                assert!(details.contains("for victim"), "{details}");
            }
            other => panic!("attempt {i} for victim: {other} {:?}", reply.json()),
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(rejections > 0, "30 failures never started the backoff");
    let wait = MAX_BACKOFF.saturating_sub(last_failure.elapsed());
    std::thread::sleep(wait + Duration::from_millis(50));
    let admitted = Instant::now();
    let client = chain.client();
    let (status, body) = client.enroll("victim");
    assert_eq!(
        status,
        200,
        "the real user is still locked out {:?} after the last failure: {body}",
        last_failure.elapsed()
    );
    let (status, body) = client.login("victim");
    assert_eq!(status, 200, "the real user's login: {body}");
    assert!(admitted - last_failure < MAX_BACKOFF + SLACK);
    eprintln!(
        "rate limits: address burst 3 then 429; username backoff rejected {rejections} of 30 \
         attempts; the user got in {:?} after the last failure",
        admitted - last_failure
    );
}

/// Reads the stored credentials of the proxy's store at `store` while the
/// proxy is stopped.
fn stored_credentials(store: &Path) -> Vec<cardgate::actors::enrollments::Credential> {
    let db = sled::open(store).expect("open the proxy's store");
    let tree = db.open_tree("credentials").expect("credentials tree");
    tree.iter()
        .map(|entry| {
            let (_, value) = entry.expect("read a credential");
            serde_json::from_slice(&value).expect("decode a credential")
        })
        .collect()
}

#[test]
fn login_rejects_stale_sign_count() {
    let chain = Chain::new();
    chain.write_default_configs();
    let sign_count_file = chain.path("card-inproc/sign-count");
    let _server = chain.server();
    let mut proxy = chain.proxy();
    let client = chain.client();
    wait_for_card(&client);
    assert_eq!(client.enroll("alice").0, 200);
    for _ in 0..2 {
        assert_eq!(client.login("alice").0, 200);
    }
    // makeCredential used count 1, the two logins 2 and 3.
    proxy.terminate();
    let stored = stored_credentials(&chain.path("proxy-store"));
    assert_eq!(stored.len(), 1);
    assert_eq!(stored[0].sign_count, 3);
    assert!(!stored[0].possibly_cloned);

    // The card's next count is the file's value plus one: 2 goes backwards,
    // 3 stays equal. Both reject the login and flag the credential.
    for (file_value, reported) in [(1, 2), (2, 3)] {
        std::fs::write(&sign_count_file, format!("{file_value}")).expect("set the card's count");
        proxy = chain.proxy();
        wait_for_card(&client);
        let (status, body) = client.login("alice");
        assert_eq!(status, 403, "login with count {reported} after 3: {body}");
        assert_eq!(body["error"], "forbidden", "{body}");
        let details = body["details"].as_str().unwrap_or("");
        assert!(
            details.contains(&format!("went from 3 to {reported}")) && details.contains("cloned"),
            "{details}"
        );
        proxy.terminate();
        let stored = stored_credentials(&chain.path("proxy-store"));
        assert!(stored[0].possibly_cloned, "count {reported}: not flagged");
        assert_eq!(stored[0].sign_count, 3, "a rejected count was stored");
    }
    let log = chain.log("proxy.log");
    assert!(
        log.contains("possibly cloned"),
        "the proxy log should say the credential may be cloned"
    );

    // The audit trail of the stopped proxy holds both rejected logins.
    let output = std::process::Command::new(common::chain::BIN)
        .args(["audit", "--user", "alice", "--json", "--config"])
        .arg(chain.path("proxy.toml"))
        .output()
        .expect("run cardgate audit");
    assert!(output.status.success(), "cardgate audit: {output:?}");
    let cloned: Vec<Value> = String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .filter(|record| {
            record["action"] == "login"
                && record["outcome"] == "failure"
                && record["details"]
                    .as_str()
                    .is_some_and(|d| d.contains("may be cloned"))
        })
        .collect();
    assert_eq!(
        cloned.len(),
        2,
        "audit records of cloned-credential logins: {cloned:?}"
    );

    // A card whose count moved on past the stored one is accepted again;
    // the flag stays for an operator to see.
    std::fs::write(&sign_count_file, "10").expect("set the card's count");
    let _proxy = chain.proxy();
    wait_for_card(&client);
    let (status, body) = client.login("alice");
    assert_eq!(status, 200, "login with count 11: {body}");
}

/// Returns the CBOR map of a successful getAssertion response, after its
/// status byte.
fn assertion_map(payload: &[u8]) -> Vec<(Cbor, Cbor)> {
    let (status, body) = payload.split_first().expect("a status byte");
    assert_eq!(*status, 0, "the card's response was not a success");
    match ciborium::de::from_reader(body).expect("CBOR map") {
        Cbor::Map(entries) => entries,
        other => panic!("expected a CBOR map, found {other:?}"),
    }
}

fn assertion_payload(entries: Vec<(Cbor, Cbor)>) -> Vec<u8> {
    let mut payload = vec![0u8];
    ciborium::ser::into_writer(&Cbor::Map(entries), &mut payload).expect("encode CBOR");
    payload
}

/// Applies `edit` to the byte string under integer key `key`.
fn edit_bytes(payload: &[u8], key: u8, edit: fn(&mut Vec<u8>)) -> Vec<u8> {
    let mut entries = assertion_map(payload);
    for (k, v) in &mut entries {
        if *k == Cbor::Integer(key.into()) {
            if let Cbor::Bytes(bytes) = v {
                edit(bytes);
            }
        }
    }
    assertion_payload(entries)
}

// Key 2 is authData, key 3 the signature (CTAP 2.0, authenticatorGetAssertion).
fn flip_signature(payload: &[u8]) -> Vec<u8> {
    edit_bytes(payload, 3, |signature| {
        if let Some(last) = signature.last_mut() {
            *last ^= 0x01;
        }
    })
}

fn other_relying_party(payload: &[u8]) -> Vec<u8> {
    edit_bytes(payload, 2, |auth_data| auth_data[0] ^= 0xff)
}

fn clear_user_presence(payload: &[u8]) -> Vec<u8> {
    edit_bytes(payload, 2, |auth_data| auth_data[32] &= !0x01)
}

fn raise_sign_count(payload: &[u8]) -> Vec<u8> {
    edit_bytes(payload, 2, |auth_data| auth_data[33] = 0x7f)
}

fn truncate_half(payload: &[u8]) -> Vec<u8> {
    payload[..payload.len() / 2].to_vec()
}

fn trailing_byte(payload: &[u8]) -> Vec<u8> {
    let mut bytes = payload.to_vec();
    bytes.push(0x00);
    bytes
}

fn no_credentials_status(_: &[u8]) -> Vec<u8> {
    vec![0x2e]
}

fn empty(_: &[u8]) -> Vec<u8> {
    Vec::new()
}

fn not_cbor(_: &[u8]) -> Vec<u8> {
    let mut bytes = vec![0x00];
    bytes.extend_from_slice(&[0xff; 40]);
    bytes
}

/// Turns the card's getAssertion response payload into a hostile one.
type Rewrite = fn(&[u8]) -> Vec<u8>;

#[test]
fn replayed_or_tampered_assertions_fail() {
    let chain = Chain::new();
    let relay = CardRelay::start(SocketAddr::from(([127, 0, 0, 1], chain.card_port)));
    let mut settings = chain.proxy_settings();
    settings.card_device = format!("udp:127.0.0.1:{}@127.0.0.1:{}", relay.port, chain.host_port);
    // Rejected assertions count as failures; keep them from throttling.
    settings.extra = "[limits]\nusername_free_failures = 1000\n".into();
    chain.write_server_config(&chain.path("server-store"), "");
    chain.write_proxy_config(&settings);
    let _server = chain.server();
    let _card = chain.card_sim("approve");
    let _proxy = chain.proxy();
    let client = chain.client();
    wait_for_card(&client);
    assert_eq!(client.enroll("alice").0, 200);
    let (status, body) = client.login("alice");
    assert_eq!(
        status, 200,
        "a genuine login, which the relay records: {body}"
    );

    // The recorded assertion signs the challenge of the login before. Each
    // login makes a fresh challenge that exists only inside that login, so
    // the old signature cannot verify.
    relay.set_mode(Mode::ReplayLast);
    let (status, body) = client.login("alice");
    assert_eq!(status, 403, "a replayed assertion: {body}");
    let details = body["details"].as_str().unwrap_or("");
    assert!(details.contains("signature did not verify"), "{details}");
    relay.set_mode(Mode::Forward);
    let (status, body) = client.login("alice");
    assert_eq!(status, 200, "after the replay: {body}");

    let cases: [(&str, Rewrite, u16, &str, &str); 9] = [
        (
            "flipped signature bit",
            flip_signature,
            403,
            "forbidden",
            "signature did not verify",
        ),
        (
            "raised sign count",
            raise_sign_count,
            403,
            "forbidden",
            "signature did not verify",
        ),
        (
            "other relying party",
            other_relying_party,
            502,
            "card_failed",
            "another relying party",
        ),
        (
            "user presence clear",
            clear_user_presence,
            502,
            "card_failed",
            "user presence",
        ),
        (
            "truncated CBOR",
            truncate_half,
            502,
            "card_failed",
            "invalid response",
        ),
        (
            "trailing byte",
            trailing_byte,
            502,
            "card_failed",
            "invalid response",
        ),
        ("not CBOR", not_cbor, 502, "card_failed", "invalid response"),
        (
            "empty response",
            empty,
            502,
            "card_failed",
            "invalid response",
        ),
        (
            "no credentials status",
            no_credentials_status,
            403,
            "forbidden",
            "no credential",
        ),
    ];
    let mut failures = Vec::new();
    for (name, rewrite, status, code, names) in cases {
        relay.set_mode(Mode::Rewrite(rewrite));
        let (got, body) = client.login("alice");
        let details = body["details"].as_str().unwrap_or("");
        if got != status || body["error"] != code || !details.contains(names) {
            failures.push(format!("{name}: {got} {body}"));
        }
        relay.set_mode(Mode::Forward);
        let (got, body) = client.login("alice");
        if got != 200 {
            failures.push(format!("login after {name}: {got} {body}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    let logs = chain.logs();
    assert!(!logs.contains("panicked"), "a process panicked:\n{logs}");
}

/// Returns the value of the `cardgate_session` cookie that a response sets.
fn session_cookie(headers: &awc::http::header::HeaderMap) -> Option<String> {
    headers
        .get_all("set-cookie")
        .filter_map(|value| value.to_str().ok())
        .find_map(|value| value.strip_prefix("cardgate_session="))
        .map(|rest| rest.split(';').next().unwrap_or("").to_string())
        .filter(|value| !value.is_empty())
}

#[test]
fn tokens_rotate_and_end_at_once() {
    let chain = Chain::new();
    chain.write_default_configs();
    let _server = chain.server();
    let _proxy = chain.proxy();
    let client = chain.client();
    wait_for_card(&client);
    assert_eq!(client.enroll("alice").0, 200);

    // Every login issues a new token, also to a client that sends a token
    // of its own choosing in the cookie (no session fixation).
    let chosen = "fixationfixationfixationfixationfixationfix";
    let url = client.url("/session/login");
    let (status, cookie, body) = client.runtime.block_on(async {
        let mut response = client
            .client
            .post(&url)
            .insert_header(("Cookie", format!("cardgate_session={chosen}")))
            .send_json(&json!({ "username": "alice" }))
            .await
            .expect("login");
        let cookie = session_cookie(response.headers());
        let body: Value = response.json().await.expect("JSON");
        (response.status().as_u16(), cookie, body)
    });
    assert_eq!(status, 200, "{body}");
    let first = token_of(&body);
    assert_ne!(first, chosen, "the login kept the client's chosen token");
    assert_eq!(
        cookie.as_deref(),
        Some(first.as_str()),
        "cookie and body differ"
    );
    let (status, _) = client.post("/session/status", Some(chosen), None);
    assert_eq!(status, 401, "the chosen token must not be a session");

    let tokens: Vec<String> = (0..3).map(|_| token_of(&client.login("alice").1)).collect();
    let mut distinct = tokens.clone();
    distinct.push(first.clone());
    distinct.sort();
    distinct.dedup();
    assert_eq!(distinct.len(), 4, "a login reused a token");
    for token in &tokens {
        assert_eq!(client.counter(token).0, 200);
    }

    // Logout ends that session on the very next request, and only that one.
    let (status, _) = client.post("/session/logout", Some(&tokens[0]), None);
    assert_eq!(status, 200);
    let (status, body) = client.counter(&tokens[0]);
    assert_eq!(status, 401, "counter right after logout: {body}");
    let (status, _) = client.post("/session/logout", Some(&tokens[0]), None);
    assert_eq!(status, 401, "a second logout of the same token");
    assert_eq!(client.counter(&tokens[1]).0, 200, "another session ended");

    // Deleting the enrollment revokes every session of the user at once.
    let (status, body) = client.post("/enroll/delete", Some(&tokens[1]), None);
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["sessions_ended"], 3, "{body}");
    for token in [&first, &tokens[1], &tokens[2]] {
        let (status, body) = client.counter(token);
        assert_eq!(status, 401, "counter right after the revocation: {body}");
    }
}

#[test]
fn sessions_expire_idle_and_at_lifetime() {
    let chain = Chain::new();
    let mut settings = chain.proxy_settings();
    settings.extra =
        "[session]\nidle_timeout_s = 1\nlifetime_s = 2\ncleanup_interval_s = 1\n".into();
    chain.write_server_config(&chain.path("server-store"), "");
    chain.write_proxy_config(&settings);
    let _server = chain.server();
    let _proxy = chain.proxy();
    let client = chain.client();
    wait_for_card(&client);
    assert_eq!(client.enroll("alice").0, 200);

    // Idle for longer than idle_timeout_s.
    let idle = token_of(&client.login("alice").1);
    std::thread::sleep(Duration::from_millis(1300));
    let (status, body) = client.counter(&idle);
    assert_eq!(status, 401, "an idle session: {body}");
    let details = body["details"].as_str().unwrap_or("");
    assert!(details.contains("expired"), "{details}");

    // Active, but past lifetime_s.
    let busy = token_of(&client.login("alice").1);
    let started = Instant::now();
    let mut last = 200;
    while started.elapsed() < Duration::from_millis(2600) {
        last = client.counter(&busy).0;
        if last == 401 {
            break;
        }
        std::thread::sleep(Duration::from_millis(300));
    }
    assert_eq!(last, 401, "an active session outlived its lifetime");
    assert!(
        started.elapsed() >= Duration::from_millis(1700),
        "the session ended after {:?}, before its lifetime",
        started.elapsed()
    );
}

/// Logs in through the polled operation API; returns the operation id and
/// the session token from the cookie.
fn portal_login(client: &Client, username: &str) -> (String, String) {
    let (status, body) = client.post("/op/login", None, Some(json!({ "username": username })));
    assert_eq!(status, 202, "{body}");
    let id = body["operation"]
        .as_str()
        .expect("an operation id")
        .to_string();
    let url = client.url(&format!("/op/{id}"));
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        let (state, cookie) = client.runtime.block_on(async {
            let mut response = client.client.get(&url).send().await.expect("poll");
            let cookie = session_cookie(response.headers());
            let body: Value = response.json().await.expect("JSON");
            (body["operation"]["state"].clone(), cookie)
        });
        if state == "succeeded" {
            return (
                id,
                cookie.expect("the first poll after success sets the cookie"),
            );
        }
        assert_ne!(state, "failed", "the portal login failed");
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("the portal login did not finish within 20 s");
}

#[test]
fn logs_never_contain_secrets() {
    let mut chain = Chain::new();
    // Every level, with the card's report dumps and the HTTP libraries.
    chain.rust_log = "trace".into();
    let mut settings = chain.proxy_settings();
    settings.card_device = chain.udp_device();
    chain.write_server_config(&chain.path("server-store"), "");
    chain.write_proxy_config(&settings);
    let mut server = chain.server();
    // The person confirms after 300 ms, so that an operation can be
    // cancelled while it waits.
    let mut card = chain.card_sim("delay:300");
    let mut proxy = chain.proxy();
    let client = chain.client();
    wait_for_card(&client);

    let mut secrets = Vec::new();
    assert_eq!(client.enroll("alice").0, 200);
    let (_, login) = client.login("alice");
    let token = token_of(&login);
    secrets.push(token.clone());
    assert_eq!(client.counter(&token).0, 200);
    assert_eq!(client.post("/session/status", Some(&token), None).0, 200);
    // A token in the wrong places, as a confused client would send it.
    let _ = client.post(&format!("/session/status?token={token}"), None, None);
    let url = client.url("/session/status");
    client.runtime.block_on(async {
        let _ = client
            .client
            .post(&url)
            .insert_header(("Authorization", token.clone()))
            .send()
            .await;
    });
    assert_eq!(client.post("/session/logout", Some(&token), None).0, 200);
    assert_eq!(client.counter(&token).0, 401);

    let (operation, cookie_token) = portal_login(&client, "alice");
    secrets.push(operation.clone());
    secrets.push(cookie_token.clone());
    assert_eq!(client.counter(&cookie_token).0, 200);
    let (_, body) = client.get(&format!("/op/{operation}"));
    assert_eq!(body["operation"]["state"], "succeeded", "{body}");

    // An operation cancelled while it waits for the card.
    let (status, body) = client.post("/op/login", None, Some(json!({ "username": "alice" })));
    assert_eq!(status, 202, "{body}");
    let pending = body["operation"]
        .as_str()
        .expect("an operation id")
        .to_string();
    secrets.push(pending.clone());
    // A cross-site cancel is rejected, and rejections are logged.
    let cancel_url = client.url(&format!("/op/{pending}/cancel"));
    let status = client.runtime.block_on(async {
        client
            .client
            .post(&cancel_url)
            .insert_header(("Origin", "https://evil.example"))
            .send()
            .await
            .expect("cross-site cancel")
            .status()
            .as_u16()
    });
    assert_eq!(status, 403, "a cross-site cancel");
    let (status, body) = client.post(&format!("/op/{pending}/cancel"), None, None);
    assert_eq!(status, 200, "{body}");

    proxy.terminate();
    server.terminate();
    card.kill();
    let logs = chain.logs();
    assert!(logs.lines().count() > 100, "trace logging produced little");
    for secret in &secrets {
        let leaks: Vec<&str> = logs
            .lines()
            .filter(|l| l.contains(secret.as_str()))
            .collect();
        assert!(
            leaks.is_empty(),
            "a secret appears in {} log lines, the first: {}",
            leaks.len(),
            leaks[0]
        );
    }
    eprintln!(
        "no secret in {} log lines at trace level ({} secrets checked)",
        logs.lines().count(),
        secrets.len()
    );
}
