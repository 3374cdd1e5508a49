//! The whole chain as separate processes on loopback: `cardgate server`,
//! `cardgate card-sim` over UDP and `cardgate proxy`, driven over HTTPS.

mod common;

use std::time::{Duration, Instant};

use serde_json::Value;

use common::chain::{token_of, value_of, wait_for_card, Chain, Client};

#[test]
fn chain_enroll_login_counter_logout_and_restarts() {
    let chain = Chain::new();
    chain.write_configs(&chain.udp_device(), "approve", 30);
    let mut server = chain.server();
    let _card = chain.card_sim("approve");
    let mut proxy = chain.proxy();
    let client = chain.client();
    wait_for_card(&client);

    // Enroll creates a credential on the card; a second enroll is a conflict.
    let (status, body) = client.enroll("Alice");
    assert_eq!(status, 200, "enroll: {body}\n{}", chain.logs());
    assert_eq!(body["user"]["username"], "alice");
    let (status, body) = client.enroll("alice");
    assert_eq!(status, 409, "second enroll: {body}");

    // Login, two counter calls with consecutive values, logout, then 401.
    let (status, login) = client.login("alice");
    assert_eq!(status, 200, "login: {login}\n{}", chain.logs());
    let token = token_of(&login);
    let (status, first) = client.counter(&token);
    assert_eq!(status, 200, "counter: {first}");
    assert_eq!(first["session"]["username"], "alice");
    let (_, second) = client.counter(&token);
    assert_eq!(value_of(&second), value_of(&first) + 1);
    let (status, _) = client.post("/session/logout", Some(&token), None);
    assert_eq!(status, 200);
    let (status, body) = client.counter(&token);
    assert_eq!(status, 401, "counter after logout: {body}");

    // Proxy restart: the user is still enrolled and can log in.
    proxy.terminate();
    let _proxy = chain.proxy();
    wait_for_card(&client);
    let (status, body) = client.get("/enroll/status?username=alice");
    assert_eq!(status, 200);
    assert_eq!(body["enrolled"], true, "{body}");
    let (status, login) = client.login("alice");
    assert_eq!(
        status,
        200,
        "login after proxy restart: {login}\n{}",
        chain.logs()
    );
    let token = token_of(&login);

    // Server restart: the counter continues after the last value returned.
    server.terminate();
    let _server = chain.server();
    let (status, third) = client.counter(&token);
    assert_eq!(
        status,
        200,
        "counter after server restart: {third}\n{}",
        chain.logs()
    );
    assert_eq!(value_of(&third), value_of(&second) + 1);
}

#[test]
fn server_rejects_client_without_certificate() {
    let chain = Chain::new();
    chain.write_configs("sim", "approve", 30);
    let _server = chain.server();
    let ca = chain.path("certs/ca.crt");
    let base = format!("https://localhost:{}", chain.server_port);

    let anonymous = Client::new(&ca, None, base.clone());
    let url = format!("{base}/resource/counter");
    let result = anonymous
        .runtime
        .block_on(async { anonymous.client.post(&url).send().await });
    assert!(
        result.is_err(),
        "a client without a certificate must not get a reply"
    );

    let cert = chain.path("certs/proxy-client.crt");
    let key = chain.path("certs/proxy-client.key");
    let proxy_like = Client::new(&ca, Some((&cert, &key)), base);
    let (status, body) = proxy_like.post("/resource/counter", None, None);
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["value"], 1);
}

#[test]
fn documented_errors_for_unknown_user_denial_and_timeout() {
    // Denial: the in-process simulated card answers No.
    let chain = Chain::new();
    chain.write_configs("sim", "deny", 30);
    let _server = chain.server();
    let mut proxy = chain.proxy();
    let client = chain.client();
    wait_for_card(&client);

    let (status, body) = client.login("nobody");
    assert_eq!(status, 404, "unenrolled login: {body}");
    assert_eq!(body["ok"], false);
    let (status, body) = client.enroll("bob");
    assert_eq!(status, 403, "denied enroll: {body}");
    assert_eq!(body["error"], "card_denied");
    let (_, body) = client.get("/enroll/status?username=bob");
    assert_eq!(
        body["enrolled"], false,
        "a denied enrollment must leave nothing behind"
    );

    // Timeout: nobody ever answers; the proxy's deadline is 2 s.
    proxy.terminate();
    chain.write_configs("sim", "never", 2);
    let _proxy = chain.proxy();
    wait_for_card(&client);
    let started = Instant::now();
    let (status, body) = client.enroll("carol");
    assert_eq!(status, 504, "timed-out enroll: {body}");
    assert_eq!(body["error"], "card_timeout");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "the timeout took {:?}",
        started.elapsed()
    );
}

#[test]
fn parallel_counter_calls_with_one_session_are_contiguous() {
    let chain = Chain::new();
    chain.write_configs("sim", "approve", 30);
    let _server = chain.server();
    let _proxy = chain.proxy();
    let client = chain.client();
    wait_for_card(&client);
    assert_eq!(client.enroll("dave").0, 200);
    let (_, login) = client.login("dave");
    let token = token_of(&login);

    let url = format!("{}/resource/counter", client.base);
    let mut values: Vec<u64> = client.runtime.block_on(async {
        let calls = (0..50).map(|_| {
            let request = client.client.post(&url).bearer_auth(&token).send();
            async move {
                let mut response = request.await.expect("counter call");
                assert_eq!(response.status().as_u16(), 200);
                let body: Value = response.json().await.expect("counter JSON");
                body["value"].as_u64().expect("counter value")
            }
        });
        futures_util::future::join_all(calls).await
    });
    values.sort_unstable();
    let first = values[0];
    let expected: Vec<u64> = (first..first + 50).collect();
    assert_eq!(values, expected, "values must be distinct and contiguous");
}

#[test]
fn identity_headers_grant_nothing_and_attempts_are_throttled() {
    let chain = Chain::new();
    let limits = "[limits]\naddress_burst = 4\naddress_refill_ms = 60000\n";
    chain.write_configs_with("sim", "approve", 30, limits);
    let _server = chain.server();
    let _proxy = chain.proxy();
    let client = chain.client();
    wait_for_card(&client);

    // Headers that a naive proxy would trust carry no identity here.
    let url = format!("{}/resource/counter", client.base);
    let status = client.runtime.block_on(async {
        client
            .client
            .post(&url)
            .insert_header(("X-Authenticated-User", "alice"))
            .insert_header(("X-Forwarded-For", "10.1.2.3"))
            .insert_header(("X-Forwarded-User", "alice"))
            .send()
            .await
            .expect("counter call")
            .status()
            .as_u16()
    });
    assert_eq!(status, 401, "identity headers must not authenticate");

    // Four attempts from this address are admitted, the fifth is throttled.
    assert_eq!(client.enroll("erin").0, 200);
    for _ in 0..3 {
        assert_eq!(client.login("erin").0, 200);
    }
    let (status, body) = client.login("erin");
    assert_eq!(status, 429, "{body}\n{}", chain.logs());
    assert_eq!(body["error"], "too_many_requests");
}
