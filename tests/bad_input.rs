//! Hostile and malformed input to the proxy and the server over real TLS:
//! a table of hand-written requests, a seeded mutation sweep of JSON
//! bodies, and bytes that are not TLS at all. Every case must get a clean
//! response, and the chain must work normally afterwards.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use common::chain::{raw_exchange, token_of, wait_for_card, Chain, RawResponse};

/// Builds an HTTP/1.1 request with `Host`, `Connection: close` and, unless
/// `headers` sets one, a `Content-Length` for `body`.
fn request(method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Vec<u8> {
    let mut text = format!("{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n");
    for (name, value) in headers {
        text.push_str(&format!("{name}: {value}\r\n"));
    }
    let sets_length = headers.iter().any(|(name, _)| {
        name.eq_ignore_ascii_case("content-length")
            || name.eq_ignore_ascii_case("transfer-encoding")
    });
    if !sets_length {
        text.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    text.push_str("\r\n");
    let mut bytes = text.into_bytes();
    bytes.extend_from_slice(body);
    bytes
}

fn json_post(path: &str, body: &[u8]) -> Vec<u8> {
    request("POST", path, &[("Content-Type", "application/json")], body)
}

/// What a case must get back.
struct Expect {
    status: u16,
    /// The `error` code of the JSON body.
    code: &'static str,
    /// Text the `details` sentence must contain, naming the value at fault.
    names: &'static str,
}

const fn expect(status: u16, code: &'static str, names: &'static str) -> Expect {
    Expect {
        status,
        code,
        names,
    }
}

/// Longest `details` sentence accepted: a reply must not echo a huge value.
const MAX_DETAILS: usize = 400;

/// Checks the error body contract: JSON with `ok:false`, the expected
/// `error` code and a `details` sentence that names the value.
fn check_error_body(case: &str, response: &RawResponse, expected: &Expect) -> Result<(), String> {
    if response.status != expected.status {
        return Err(format!(
            "{case}: status {} instead of {}: {}",
            response.status,
            expected.status,
            String::from_utf8_lossy(&response.body)
        ));
    }
    let body = response.json();
    if body["ok"] != false {
        return Err(format!("{case}: body without ok:false: {body}"));
    }
    if body["error"] != expected.code {
        return Err(format!(
            "{case}: error code {} instead of {}",
            body["error"], expected.code
        ));
    }
    let details = body["details"].as_str().unwrap_or("");
    if details.is_empty() || !details.contains(expected.names) {
        return Err(format!(
            "{case}: details {details:?} do not contain {:?}",
            expected.names
        ));
    }
    if details.len() > MAX_DETAILS {
        return Err(format!("{case}: details of {} bytes", details.len()));
    }
    if !response
        .head
        .to_ascii_lowercase()
        .contains("content-type: application/json")
    {
        return Err(format!("{case}: not sent as JSON: {}", response.head));
    }
    if !response
        .head
        .to_ascii_lowercase()
        .contains("x-request-id: ")
    {
        return Err(format!("{case}: no request id: {}", response.head));
    }
    Ok(())
}

/// Starts server and proxy with the in-process card and limits high
/// enough that the sweep is never throttled; enrolls alice.
fn sweep_chain() -> (Chain, common::chain::Proc, common::chain::Proc, String) {
    let chain = Chain::new();
    let mut settings = chain.proxy_settings();
    settings.extra = "[limits]\naddress_burst = 100000\naddress_refill_ms = 1\n".into();
    chain.write_server_config(&chain.path("server-store"), "");
    chain.write_proxy_config(&settings);
    let server = chain.server();
    let proxy = chain.proxy();
    let client = chain.client();
    wait_for_card(&client);
    assert_eq!(client.enroll("alice").0, 200);
    let (_, login) = client.login("alice");
    (chain, server, proxy, token_of(&login))
}

#[test]
fn bad_requests_get_json_errors() {
    let (chain, _server, _proxy, token) = sweep_chain();
    let ca = chain.path("certs/ca.crt");
    let bearer = format!("Bearer {token}");
    let long_name = "a".repeat(10_000);
    let long_name_body = format!(r#"{{"username":"{long_name}"}}"#);
    let huge = format!(
        r#"{{"username":"alice","display_name":"{}"}}"#,
        "x".repeat(20_000)
    );
    let nested = format!("{}{}", "[".repeat(500), "]".repeat(500));
    let unknown_token = format!("Bearer {}", "A".repeat(43));
    let status_path = |name: &str| format!("/enroll/status?username={name}");

    let cases: Vec<(&str, Vec<u8>, Expect)> = vec![
        // Malformed and truncated JSON.
        (
            "truncated JSON",
            json_post("/session/login", br#"{"username":"ali"#),
            expect(400, "invalid_input", "EOF"),
        ),
        (
            "unquoted key",
            json_post("/session/login", b"{username:alice}"),
            expect(400, "invalid_input", "key must be a string"),
        ),
        (
            "trailing garbage",
            json_post("/session/login", br#"{"username":"alice"} x"#),
            expect(400, "invalid_input", "trailing characters"),
        ),
        (
            "empty body",
            json_post("/session/login", b""),
            expect(400, "invalid_input", "EOF"),
        ),
        (
            "deep nesting",
            json_post("/session/login", nested.as_bytes()),
            expect(400, "invalid_input", "sequence"),
        ),
        (
            "invalid UTF-8",
            json_post("/session/login", b"{\"username\":\"al\xffice\"}"),
            expect(400, "invalid_input", "unicode"),
        ),
        (
            "no content type",
            request("POST", "/session/login", &[], br#"{"username":"alice"}"#),
            expect(400, "invalid_input", "Content-Type header is missing"),
        ),
        (
            "text content type",
            request(
                "POST",
                "/session/login",
                &[("Content-Type", "text/plain")],
                br#"{"username":"alice"}"#,
            ),
            expect(400, "invalid_input", "\"text/plain\" is not JSON"),
        ),
        // Wrong types and unknown fields.
        (
            "array body",
            json_post("/session/login", b"[]"),
            expect(400, "invalid_input", "expected struct"),
        ),
        (
            "string body",
            json_post("/session/login", br#""alice""#),
            expect(400, "invalid_input", "expected struct"),
        ),
        (
            "null body",
            json_post("/session/login", b"null"),
            expect(400, "invalid_input", "expected struct"),
        ),
        (
            "number username",
            json_post("/session/login", br#"{"username":42}"#),
            expect(400, "invalid_input", "42"),
        ),
        (
            "null username",
            json_post("/session/login", br#"{"username":null}"#),
            expect(400, "invalid_input", "null"),
        ),
        (
            "array username",
            json_post("/session/login", br#"{"username":["alice"]}"#),
            expect(400, "invalid_input", "sequence"),
        ),
        (
            "missing username",
            json_post("/session/login", b"{}"),
            expect(400, "invalid_input", "username"),
        ),
        (
            "unknown field",
            json_post("/session/login", br#"{"username":"alice","admin":true}"#),
            expect(400, "invalid_input", "admin"),
        ),
        (
            "duplicate field",
            json_post(
                "/session/login",
                br#"{"username":"alice","username":"bob"}"#,
            ),
            expect(400, "invalid_input", "duplicate field"),
        ),
        (
            "number display name",
            json_post(
                "/enroll/register",
                br#"{"username":"bob","display_name":5}"#,
            ),
            expect(400, "invalid_input", "5"),
        ),
        (
            "unknown update field",
            request(
                "POST",
                "/enroll/update",
                &[
                    ("Content-Type", "application/json"),
                    ("Authorization", &bearer),
                ],
                br#"{"display_name":"A","role":"admin"}"#,
            ),
            expect(400, "invalid_input", "role"),
        ),
        (
            "malformed delete body",
            request(
                "POST",
                "/enroll/delete",
                &[
                    ("Content-Type", "application/json"),
                    ("Authorization", &bearer),
                ],
                br#"{"username":"alice""#,
            ),
            expect(400, "invalid_input", "EOF"),
        ),
        // Huge bodies.
        (
            "body over the limit",
            json_post("/enroll/register", huge.as_bytes()),
            expect(413, "payload_too_large", "16384"),
        ),
        (
            "huge announced length",
            request(
                "POST",
                "/session/login",
                &[
                    ("Content-Type", "application/json"),
                    ("Content-Length", "1000000000000"),
                ],
                b"",
            ),
            expect(413, "payload_too_large", "16384"),
        ),
        (
            "chunked body over the limit",
            {
                let mut bytes = request(
                    "POST",
                    "/session/login",
                    &[
                        ("Content-Type", "application/json"),
                        ("Transfer-Encoding", "chunked"),
                    ],
                    b"",
                );
                for _ in 0..5 {
                    bytes.extend_from_slice(
                        format!("{:x}\r\n{}\r\n", 8192, "a".repeat(8192)).as_bytes(),
                    );
                }
                bytes.extend_from_slice(b"0\r\n\r\n");
                bytes
            },
            expect(413, "payload_too_large", "16384"),
        ),
        // Usernames.
        (
            "username too short",
            json_post("/session/login", br#"{"username":"ab"}"#),
            expect(400, "invalid_input", "\"ab\""),
        ),
        (
            "username 33 characters",
            json_post(
                "/session/login",
                format!(r#"{{"username":"{}"}}"#, "a".repeat(33)).as_bytes(),
            ),
            expect(400, "invalid_input", "33 characters"),
        ),
        (
            "username 10000 characters",
            json_post("/session/login", long_name_body.as_bytes()),
            expect(400, "invalid_input", "10000 characters"),
        ),
        (
            "non-ASCII username",
            json_post("/session/login", "{\"username\":\"\u{e5}lice\"}".as_bytes()),
            expect(400, "invalid_input", "\u{e5}"),
        ),
        (
            "Cyrillic username",
            json_post(
                "/session/login",
                "{\"username\":\"\u{430}lice\"}".as_bytes(),
            ),
            expect(400, "invalid_input", "\u{430}"),
        ),
        (
            "mixed-case username",
            json_post("/session/login", br#"{"username":"NoBody"}"#),
            expect(404, "not_found", "nobody"),
        ),
        (
            "path-like username",
            json_post("/session/login", br#"{"username":"../etc/passwd"}"#),
            expect(400, "invalid_input", "'/'"),
        ),
        (
            "backslash username",
            json_post("/session/login", br#"{"username":"a\\b\\c"}"#),
            expect(400, "invalid_input", "'\\\\'"),
        ),
        (
            "NUL in username",
            json_post("/session/login", br#"{"username":"al\u0000ice"}"#),
            expect(400, "invalid_input", "\\0"),
        ),
        (
            "newline in username",
            json_post("/session/login", br#"{"username":"al\nice"}"#),
            expect(400, "invalid_input", "\\n"),
        ),
        (
            "escape in username",
            json_post("/session/login", br#"{"username":"\u001b[31malice"}"#),
            expect(400, "invalid_input", "\\u{1b}"),
        ),
        (
            "space in username",
            json_post("/session/login", br#"{"username":" alice"}"#),
            expect(400, "invalid_input", "' '"),
        ),
        (
            "empty username",
            json_post("/session/login", br#"{"username":""}"#),
            expect(400, "invalid_input", "0 characters"),
        ),
        (
            "display name too long",
            json_post(
                "/enroll/register",
                format!(
                    r#"{{"username":"bob","display_name":"{}"}}"#,
                    "d".repeat(65)
                )
                .as_bytes(),
            ),
            expect(400, "invalid_input", "65 characters"),
        ),
        (
            "control in display name",
            json_post(
                "/enroll/register",
                br#"{"username":"bob","display_name":"B\u0007ob"}"#,
            ),
            expect(400, "invalid_input", "control character"),
        ),
        (
            "path-like query",
            request("GET", &status_path("..%2Fetc"), &[], b""),
            expect(400, "invalid_input", "'/'"),
        ),
        (
            "NUL in query",
            request("GET", &status_path("al%00ice"), &[], b""),
            expect(400, "invalid_input", "\\0"),
        ),
        (
            "missing query",
            request("GET", "/enroll/status", &[], b""),
            expect(400, "invalid_input", "username"),
        ),
        (
            "bad percent encoding",
            request("GET", &status_path("%zz"), &[], b""),
            expect(400, "invalid_input", "%zz"),
        ),
        // Tokens: invalid, or in the wrong place.
        (
            "no token",
            request("POST", "/session/status", &[], b""),
            expect(401, "unauthorized", "Bearer"),
        ),
        (
            "short token",
            request(
                "POST",
                "/session/status",
                &[("Authorization", "Bearer abc")],
                b"",
            ),
            expect(401, "unauthorized", "malformed"),
        ),
        (
            "unknown token",
            request(
                "POST",
                "/session/status",
                &[("Authorization", &unknown_token)],
                b"",
            ),
            expect(401, "unauthorized", "unknown"),
        ),
        (
            "token with bad characters",
            request(
                "POST",
                "/session/status",
                &[("Authorization", &format!("Bearer {}", "!".repeat(43)))],
                b"",
            ),
            expect(401, "unauthorized", "malformed"),
        ),
        (
            "Basic scheme",
            request(
                "POST",
                "/session/status",
                &[("Authorization", "Basic YWxpY2U6c2VjcmV0")],
                b"",
            ),
            expect(401, "unauthorized", "not of the form `Bearer TOKEN`"),
        ),
        (
            "token without scheme",
            request("POST", "/session/status", &[("Authorization", &token)], b""),
            expect(401, "unauthorized", "not of the form `Bearer TOKEN`"),
        ),
        (
            "token in the query",
            request(
                "POST",
                &format!("/session/status?session_token={token}"),
                &[],
                b"",
            ),
            expect(401, "unauthorized", "Bearer"),
        ),
        (
            "token in another header",
            request(
                "POST",
                "/session/status",
                &[("X-Session-Token", &token)],
                b"",
            ),
            expect(401, "unauthorized", "Bearer"),
        ),
        (
            "token in another cookie",
            request(
                "POST",
                "/session/status",
                &[("Cookie", &format!("session={token}"))],
                b"",
            ),
            expect(401, "unauthorized", "Bearer"),
        ),
        (
            "token in the body",
            json_post(
                "/session/status",
                format!(r#"{{"session_token":"{token}"}}"#).as_bytes(),
            ),
            expect(401, "unauthorized", "Bearer"),
        ),
        (
            "identity header",
            request(
                "POST",
                "/resource/counter",
                &[
                    ("X-Authenticated-User", "alice"),
                    ("X-Forwarded-User", "alice"),
                ],
                b"",
            ),
            expect(401, "unauthorized", "Bearer"),
        ),
        // Methods and paths.
        (
            "GET on a POST route",
            request("GET", "/session/login", &[], b""),
            expect(404, "not_found", "GET /session/login"),
        ),
        (
            "unknown path",
            request("GET", "/admin", &[], b""),
            expect(404, "not_found", "/admin"),
        ),
        (
            "dot segments",
            request("GET", "/../../etc/passwd", &[], b""),
            expect(404, "not_found", "passwd"),
        ),
        (
            "long path",
            request("GET", &format!("/{}", "p".repeat(8000)), &[], b""),
            expect(404, "not_found", "/ppp"),
        ),
        (
            "unknown operation",
            request("GET", "/op/not-an-operation", &[], b""),
            expect(404, "not_found", "unknown or expired"),
        ),
        (
            "cross-origin POST",
            request(
                "POST",
                "/session/login",
                &[
                    ("Content-Type", "application/json"),
                    ("Origin", "https://evil.example"),
                ],
                br#"{"username":"alice"}"#,
            ),
            expect(403, "forbidden", "https://evil.example"),
        ),
        (
            "cross-site POST",
            request(
                "POST",
                "/session/login",
                &[
                    ("Content-Type", "application/json"),
                    ("Sec-Fetch-Site", "cross-site"),
                ],
                br#"{"username":"alice"}"#,
            ),
            expect(403, "forbidden", "Sec-Fetch-Site: cross-site"),
        ),
    ];

    let started = Instant::now();
    let mut failures = Vec::new();
    for (name, bytes, expected) in &cases {
        match raw_exchange(&ca, chain.proxy_port, bytes) {
            Ok(response) => {
                if let Err(e) = check_error_body(name, &response, expected) {
                    failures.push(e);
                }
            }
            Err(e) => failures.push(format!("{name}: no answer: {e}")),
        }
    }
    eprintln!(
        "bad input table: {} cases in {:.1} s",
        cases.len(),
        started.elapsed().as_secs_f64()
    );
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// A small deterministic generator (xorshift64*), so that a failing
/// mutation case can be replayed from its seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// Bytes that matter to a JSON parser, mixed into the mutations.
const JSON_BYTES: &[u8] = b"{}[]\":,\\0-eE.+ tfn\x00\x1f\x7f\xc3\xff";

/// Applies one to four random edits to `body`: cut, overwrite, insert,
/// delete or duplicate bytes.
fn mutate(rng: &mut Rng, body: &[u8]) -> Vec<u8> {
    let mut bytes = body.to_vec();
    for _ in 0..=rng.below(4) {
        let at = rng.below(bytes.len() + 1);
        let byte = if rng.below(2) == 0 {
            JSON_BYTES[rng.below(JSON_BYTES.len())]
        } else {
            rng.next() as u8
        };
        match rng.below(5) {
            0 => bytes.truncate(at),
            1 if at < bytes.len() => bytes[at] = byte,
            2 => bytes.insert(at, byte),
            3 if at < bytes.len() => {
                bytes.remove(at);
            }
            _ => {
                let end = (at + rng.below(8)).min(bytes.len());
                let copy = bytes[at..end].to_vec();
                bytes.splice(at..at, copy);
            }
        }
    }
    bytes
}

#[test]
fn mutated_bodies_never_cause_5xx() {
    const CASES: usize = 5000;
    const SEED: u64 = 0x5eed_cafe_f00d_0007;

    let (chain, _server, _proxy, token) = sweep_chain();
    let client = chain.client();
    let bodies: [(&str, &[u8]); 4] = [
        ("/session/login", br#"{"username":"alice"}"#),
        (
            "/enroll/register",
            br#"{"username":"bob","display_name":"Bob B."}"#,
        ),
        ("/enroll/update", br#"{"display_name":"Alice A."}"#),
        ("/session/status", br#"{}"#),
    ];
    let mut rng = Rng(SEED);
    let mut by_status = std::collections::BTreeMap::new();
    let mut failures = Vec::new();
    let started = Instant::now();
    for case in 0..CASES {
        let (path, base) = bodies[rng.below(bodies.len())];
        let body = mutate(&mut rng, base);
        let url = client.url(path);
        let result = client.runtime.block_on(async {
            let mut response = client
                .client
                .post(&url)
                .insert_header(("Content-Type", "application/json"))
                .bearer_auth(&token)
                .send_body(body.clone())
                .await
                .map_err(|e| e.to_string())?;
            let bytes = response.body().await.map_err(|e| e.to_string())?;
            Ok::<_, String>((response.status().as_u16(), bytes))
        });
        let (status, bytes) = match result {
            Ok(answer) => answer,
            Err(e) => {
                failures.push(format!("case {case} {path} {body:?}: no answer: {e}"));
                continue;
            }
        };
        *by_status.entry(status).or_insert(0) += 1;
        if !matches!(status, 200 | 400 | 404 | 409 | 413) {
            failures.push(format!("case {case} {path} {body:?}: status {status}"));
        }
        if status >= 400 {
            let reply: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
            let details = reply["details"].as_str().unwrap_or("");
            let well_formed = reply["ok"] == false
                && reply["error"].is_string()
                && !details.is_empty()
                && details.len() <= MAX_DETAILS;
            if !well_formed {
                failures.push(format!("case {case} {path} {body:?}: error body {reply}"));
            }
        }
    }
    eprintln!(
        "mutation sweep: {CASES} cases from seed {SEED:#x} in {:.1} s, statuses {by_status:?}",
        started.elapsed().as_secs_f64()
    );
    assert!(
        failures.is_empty(),
        "{} failures:\n{}",
        failures.len(),
        failures[..failures.len().min(20)].join("\n")
    );
}

/// Writes `bytes` over plain TCP to 127.0.0.1:`port` and returns what
/// came back before the server closed the connection or 10 s passed.
fn plain_tcp_exchange(port: u16, bytes: &[u8]) -> (Vec<u8>, bool) {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("TCP connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("read timeout");
    // The server may close before it has read everything.
    let _ = stream.write_all(bytes);
    let mut received = Vec::new();
    let mut buffer = [0u8; 4096];
    loop {
        match stream.read(&mut buffer) {
            Ok(0) => return (received, true),
            Ok(n) => received.extend_from_slice(&buffer[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return (received, true),
            Err(_) => return (received, false),
        }
    }
}

/// Sends `bytes` inside a TLS connection and returns the raw response and
/// whether the server closed the connection.
fn tls_exchange(chain: &Chain, port: u16, bytes: &[u8]) -> (Vec<u8>, bool) {
    let mut stream =
        common::chain::tls_connect(&chain.path("certs/ca.crt"), None, port).expect("TLS connect");
    let _ = stream.write_all(bytes);
    let _ = stream.flush();
    let mut received = Vec::new();
    let mut buffer = [0u8; 4096];
    loop {
        match stream.read(&mut buffer) {
            Ok(0) => return (received, true),
            Ok(n) => received.extend_from_slice(&buffer[..n]),
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut =>
            {
                return (received, false)
            }
            Err(_) => return (received, true),
        }
    }
}

#[test]
fn non_tls_and_broken_http_are_closed() {
    let (chain, _server, _proxy, token) = sweep_chain();
    let mut garbage = vec![0u8; 4096];
    let mut rng = Rng(7);
    for byte in &mut garbage {
        *byte = rng.next() as u8;
    }

    // Bytes that are not TLS, to both TLS ports: the connection is closed
    // and no HTTP response is ever sent in clear.
    let plain: [(&str, &[u8]); 4] = [
        (
            "plain HTTP",
            b"GET /health HTTP/1.1\r\nHost: localhost\r\n\r\n",
        ),
        ("random bytes", &garbage),
        ("zeros", &[0u8; 1024]),
        (
            "TLS record header, no body",
            &[0x16, 0x03, 0x01, 0xff, 0xff],
        ),
    ];
    for port in [chain.proxy_port, chain.server_port] {
        for (name, bytes) in plain {
            let started = Instant::now();
            let (received, closed) = plain_tcp_exchange(port, bytes);
            assert!(closed, "{name} to port {port}: the connection stayed open");
            assert!(
                !String::from_utf8_lossy(&received).contains("HTTP/1.1"),
                "{name} to port {port}: an HTTP answer in clear: {received:?}"
            );
            eprintln!(
                "{name} to port {port}: closed after {:?} with {} bytes (a TLS alert at most)",
                started.elapsed(),
                received.len()
            );
        }
    }

    // Broken HTTP inside TLS: a 4xx without a body (the HTTP codec answers
    // before any handler runs), then the connection is closed.
    let broken: [(&str, Vec<u8>); 6] = [
        ("garbage request line", b"GARBAGE\r\n\r\n".to_vec()),
        ("header without colon", b"GET /health HTTP/1.1\r\nHost localhost\r\n\r\n".to_vec()),
        ("HTTP/2 preface", b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec()),
        (
            "length and chunked together",
            b"POST /session/login HTTP/1.1\r\nHost: localhost\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n".to_vec(),
        ),
        (
            "negative length",
            b"POST /session/login HTTP/1.1\r\nHost: localhost\r\nContent-Length: -1\r\n\r\n".to_vec(),
        ),
        ("oversized head", {
            let mut head = b"GET /health HTTP/1.1\r\nHost: localhost\r\n".to_vec();
            for i in 0..100 {
                head.extend_from_slice(format!("X-Filler-{i}: {}\r\n", "f".repeat(2000)).as_bytes());
            }
            head.extend_from_slice(b"\r\n");
            head
        }),
    ];
    for (name, bytes) in &broken {
        let (received, closed) = tls_exchange(&chain, chain.proxy_port, bytes);
        let text = String::from_utf8_lossy(&received);
        let status_line = text.lines().next().unwrap_or("");
        assert!(
            closed,
            "{name}: the connection stayed open after {status_line:?}"
        );
        assert!(
            status_line.is_empty() || status_line.starts_with("HTTP/1.1 4"),
            "{name}: answered {status_line:?}"
        );
        eprintln!("{name}: {status_line:?}, then closed");
    }

    // TLS without a client certificate to k_server.
    let result = common::chain::tls_connect(&chain.path("certs/ca.crt"), None, chain.server_port)
        .and_then(|mut stream| {
            stream.write_all(
                b"POST /resource/counter HTTP/1.1\r\nHost: localhost\r\nContent-Length: 0\r\n\r\n",
            )?;
            stream.flush()?;
            let mut answer = Vec::new();
            stream.read_to_end(&mut answer)?;
            Ok(answer)
        });
    match result {
        Ok(answer) => assert!(
            answer.is_empty(),
            "k_server answered a client without a certificate: {:?}",
            String::from_utf8_lossy(&answer)
        ),
        Err(e) => eprintln!("TLS without a client certificate to k_server: {e}"),
    }

    // Both daemons still serve: a whole flow through the proxy.
    let client = chain.client();
    let (status, body) = client.counter(&token);
    assert_eq!(status, 200, "counter after the garbage: {body}");
    let (status, body) = client.post("/session/logout", Some(&token), None);
    assert_eq!(status, 200, "{body}");
}

#[test]
fn normal_flow_works_after_garbage() {
    let (chain, _server, mut proxy, token) = sweep_chain();
    let ca = chain.path("certs/ca.crt");

    // A short sweep of each kind first.
    for bytes in [
        json_post("/session/login", br#"{"username":"#),
        json_post("/enroll/register", &[b'{'; 20_000]),
        request(
            "POST",
            "/session/status",
            &[("Authorization", "Bearer \u{7f}")],
            b"",
        ),
        request("GET", "/enroll/status?username=%ff%fe", &[], b""),
    ] {
        let response = raw_exchange(&ca, chain.proxy_port, &bytes).expect("an answer");
        assert!(
            (400..500).contains(&response.status),
            "status {}: {}",
            response.status,
            String::from_utf8_lossy(&response.body)
        );
    }
    let _ = plain_tcp_exchange(chain.proxy_port, b"\x16\x03\x01\x00\x05hello");

    // Enrollment, login, counter, update, logout and delete still work.
    let client = chain.client();
    let (status, body) = client.enroll("carol");
    assert_eq!(status, 200, "{body}");
    let (status, login) = client.login("carol");
    assert_eq!(status, 200, "{login}");
    let carol = token_of(&login);
    let (status, body) = client.counter(&carol);
    assert_eq!(status, 200, "{body}");
    let (status, body) = client.post(
        "/enroll/update",
        Some(&carol),
        Some(json!({ "display_name": "Carol C." })),
    );
    assert_eq!(status, 200, "{body}");
    let (status, body) = client.post("/session/logout", Some(&token), None);
    assert_eq!(status, 200, "{body}");
    // A delete without a body deletes the session's own enrollment.
    let (status, body) = client.post("/enroll/delete", Some(&carol), None);
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["deleted"], "carol", "{body}");
    assert!(!client.enrolled("carol"));

    proxy.terminate();
    let logs = chain.logs();
    assert!(!logs.contains("panicked"), "a process panicked:\n{logs}");
}
