//! Supervision of the card link with real processes: `cardgate server`,
//! `cardgate card-sim` over UDP and `cardgate proxy`. The card-sim process
//! is killed and started again on the same state folder and port while the
//! proxy keeps running.

mod common;

use std::time::{Duration, Instant};

use serde_json::Value;

use common::chain::{token_of, value_of, wait_for_card, Chain, Client, ProxySettings};

/// `card.login_grace_ms` in the proxy's config: how long a login waits for
/// a reconnecting card.
const LOGIN_GRACE: Duration = Duration::from_millis(1500);

/// Slack on top of the grace period for the queue sweep (every 100 ms) and
/// the HTTPS round trip on a loaded 2-core test machine.
const GRACE_SLACK: Duration = Duration::from_secs(3);

/// Returns the proxy's `/health` card object.
fn card_health(client: &Client) -> Value {
    let (status, health) = client.get("/health");
    assert_eq!(status, 200, "health: {health}");
    health["card"].clone()
}

/// Waits until `/health` shows the card connected after at least one
/// restart of the card actor.
fn wait_for_reconnect(client: &Client, chain: &Chain) -> Value {
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut last = Value::Null;
    while Instant::now() < deadline {
        last = card_health(client);
        let restarts = last["restarts"].as_u64().unwrap_or(0);
        if last["state"] == "connected" && restarts >= 1 {
            return last;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!(
        "the card did not reconnect within 20 s; last health: {last}\n{}",
        chain.logs()
    );
}

#[test]
fn proxy_survives_card_sim_restart() {
    let chain = Chain::new();
    chain.write_server_config(&chain.path("server-store"), "");
    chain.write_proxy_config(&ProxySettings {
        card_device: chain.udp_device(),
        presence: "approve".into(),
        confirm_timeout_s: 30,
        card_keys: format!(
            "login_grace_ms = {}\nreconnect_max_backoff_ms = 500\nidle_timeout_ms = 1000",
            LOGIN_GRACE.as_millis()
        ),
        ..chain.proxy_settings()
    });
    let _server = chain.server();
    let mut card = chain.card_sim("approve");
    let mut proxy = chain.proxy();
    let proxy_pid = proxy.pid();
    let client = chain.client();
    wait_for_card(&client);

    // 1. Enroll and log in while the card is there.
    let (status, body) = client.enroll("alice");
    assert_eq!(status, 200, "enroll: {body}\n{}", chain.logs());
    let (status, login) = client.login("alice");
    assert_eq!(status, 200, "login: {login}\n{}", chain.logs());
    let token = token_of(&login);
    let (status, before) = client.counter(&token);
    assert_eq!(status, 200, "counter: {before}");

    // 2. The card vanishes. The proxy learns it on the next card request,
    //    which fails because the card went away under it.
    card.kill();
    let (status, body) = client.login("alice");
    assert_eq!(
        status,
        503,
        "login as the card vanishes: {body}\n{}",
        chain.logs()
    );
    assert_eq!(body["error"], "card_not_connected", "{body}");

    // 3. /health shows the loss with its reason.
    let health = card_health(&client);
    assert_eq!(health["state"], "disconnected", "{health}");
    let last_error = health["last_error"].as_str().unwrap_or_default();
    assert!(!last_error.is_empty(), "no last_error in {health}");

    // 4. A login now waits the grace period for a reconnect, then fails.
    let started = Instant::now();
    let (status, body) = client.login("alice");
    let waited = started.elapsed();
    assert_eq!(status, 503, "login without card: {body}");
    assert_eq!(body["error"], "card_not_connected", "{body}");
    assert!(
        waited >= LOGIN_GRACE - Duration::from_millis(100),
        "login failed after {waited:?}, before the {LOGIN_GRACE:?} grace period"
    );
    assert!(
        waited < LOGIN_GRACE + GRACE_SLACK,
        "login took {waited:?}; it must fail soon after the {LOGIN_GRACE:?} grace period"
    );

    // 5. Sessions and counter calls never need the card.
    let (status, during) = client.counter(&token);
    assert_eq!(status, 200, "counter without card: {during}");
    assert_eq!(value_of(&during), value_of(&before) + 1);

    // 6. The card comes back on the same state folder and port.
    let _card = chain.card_sim("approve");
    let health = wait_for_reconnect(&client, &chain);
    assert!(health["restarts"].as_u64().unwrap_or(0) >= 1, "{health}");

    // 7. The same credential logs in again, and the proxy never restarted.
    let (status, login) = client.login("alice");
    assert_eq!(
        status,
        200,
        "login after card restart: {login}\n{}",
        chain.logs()
    );
    let (status, after) = client.counter(&token_of(&login));
    assert_eq!(status, 200, "counter after card restart: {after}");
    assert_eq!(value_of(&after), value_of(&during) + 1);
    assert!(
        proxy.exited().is_none(),
        "the proxy exited\n{}",
        chain.logs()
    );
    assert_eq!(proxy.pid(), proxy_pid);
}
