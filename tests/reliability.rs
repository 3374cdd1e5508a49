//! Faults injected into the chain's processes on loopback: kill -9 of the
//! server and the proxy, a hanging or missing server, a card that vanishes,
//! slow and idle clients, and a full or read-only store.
//!
//! Each test prints its figures on stderr (`cargo test -- --nocapture`).

mod common;

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::chain::{enroll_and_log_in, token_of, value_of, wait_for_card, Chain, Client};

/// One counter call as a client saw it.
#[derive(Debug, Clone)]
struct Sample {
    sent: Instant,
    received: Instant,
    outcome: Result<u64, String>,
}

/// Checks the counter's promises over `samples`: no value twice, and every
/// call sent after a value was received returned a larger value. Returns
/// the sorted values.
fn check_counter_samples(samples: &[Sample]) -> Vec<u64> {
    let mut values: Vec<u64> = samples
        .iter()
        .filter_map(|s| s.outcome.as_ref().ok().copied())
        .collect();
    values.sort_unstable();
    let duplicates: Vec<u64> = values
        .windows(2)
        .filter(|w| w[0] == w[1])
        .map(|w| w[0])
        .collect();
    assert!(
        duplicates.is_empty(),
        "{} values returned twice, the first: {:?}",
        duplicates.len(),
        &duplicates[..duplicates.len().min(20)]
    );

    // Prefix maximum of the values by the time they were received.
    let mut by_receipt: Vec<(Instant, u64)> = samples
        .iter()
        .filter_map(|s| s.outcome.as_ref().ok().map(|v| (s.received, *v)))
        .collect();
    by_receipt.sort_unstable();
    let mut prefix_max = Vec::with_capacity(by_receipt.len());
    let mut highest = 0;
    for (_, value) in &by_receipt {
        highest = highest.max(*value);
        prefix_max.push(highest);
    }
    for sample in samples {
        let Ok(value) = sample.outcome else { continue };
        let seen_before = by_receipt.partition_point(|(at, _)| *at < sample.sent);
        if seen_before > 0 {
            let before = prefix_max[seen_before - 1];
            assert!(
                value > before,
                "a call sent after value {before} was received returned {value}"
            );
        }
    }
    values
}

/// Values between the lowest and the highest returned that no client got.
fn count_gaps(sorted: &[u64]) -> u64 {
    match (sorted.first(), sorted.last()) {
        (Some(first), Some(last)) => last - first + 1 - sorted.len() as u64,
        _ => 0,
    }
}

/// Maximum run time of [`hammer_counter`], so that a test whose controller
/// failed before setting the stop flag still ends.
const HAMMER_LIMIT: Duration = Duration::from_secs(60);

/// Runs `concurrency` clients that call `path` in a loop until `stop` is
/// set or [`HAMMER_LIMIT`] has passed, counting successes in `successes`.
fn hammer_counter(
    client: &Client,
    path: &str,
    token: Option<&str>,
    concurrency: usize,
    stop: &AtomicBool,
    successes: &AtomicU64,
) -> Vec<Sample> {
    let samples = Rc::new(RefCell::new(Vec::new()));
    let url = client.url(path);
    let give_up = Instant::now() + HAMMER_LIMIT;
    client.runtime.block_on(async {
        let workers = (0..concurrency).map(|_| {
            let samples = samples.clone();
            let url = url.clone();
            async move {
                while !stop.load(Ordering::Relaxed) && Instant::now() < give_up {
                    let sent = Instant::now();
                    let mut request = client.client.post(&url);
                    if let Some(token) = token {
                        request = request.bearer_auth(token);
                    }
                    let outcome = match request.send().await {
                        Ok(mut response) => {
                            let status = response.status().as_u16();
                            let body = response.body().await;
                            match (status, body) {
                                (200, Ok(bytes)) => {
                                    serde_json::from_slice::<serde_json::Value>(&bytes)
                                        .ok()
                                        .and_then(|v| v["value"].as_u64())
                                        .ok_or_else(|| format!("200 without value: {bytes:?}"))
                                }
                                (status, Ok(bytes)) => {
                                    Err(format!("{status} {}", String::from_utf8_lossy(&bytes)))
                                }
                                (status, Err(e)) => Err(format!("{status} body: {e}")),
                            }
                        }
                        Err(e) => Err(format!("send: {e}")),
                    };
                    let failed = outcome.is_err();
                    if !failed {
                        successes.fetch_add(1, Ordering::Relaxed);
                    }
                    samples.borrow_mut().push(Sample {
                        sent,
                        received: Instant::now(),
                        outcome,
                    });
                    if failed {
                        actix_rt::time::sleep(Duration::from_millis(10)).await;
                    }
                }
            }
        });
        futures_util::future::join_all(workers).await;
    });
    Rc::try_unwrap(samples)
        .map(RefCell::into_inner)
        .unwrap_or_else(|shared| shared.borrow().clone())
}

/// Waits until `successes` reaches `target` or `deadline` passes.
fn wait_for_successes(successes: &AtomicU64, target: u64, deadline: Instant) -> bool {
    while Instant::now() < deadline {
        if successes.load(Ordering::Relaxed) >= target {
            return true;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    false
}

#[test]
fn server_kill_never_repeats_values() {
    const KILLS: u64 = 8;
    const SUCCESSES_PER_ROUND: u64 = 1000;
    const CONCURRENCY: usize = 64;

    let chain = Chain::new();
    chain.write_default_configs();
    let server = chain.server();
    let client = chain.server_client();
    let stop = AtomicBool::new(false);
    let successes = AtomicU64::new(0);
    let started = Instant::now();
    let deadline = started + Duration::from_secs(45);

    let (samples, outages) = std::thread::scope(|scope| {
        let controller = scope.spawn(|| {
            let mut server = server;
            let mut outages = Vec::new();
            let mut reached = true;
            for round in 1..=KILLS {
                reached = wait_for_successes(&successes, round * SUCCESSES_PER_ROUND, deadline);
                if !reached {
                    break;
                }
                server.kill();
                let down = Instant::now();
                std::thread::sleep(Duration::from_millis(200));
                server = chain.server();
                outages.push(down.elapsed());
            }
            if reached {
                reached =
                    wait_for_successes(&successes, (KILLS + 1) * SUCCESSES_PER_ROUND, deadline);
            }
            stop.store(true, Ordering::Relaxed);
            (server, outages, reached)
        });
        let samples = hammer_counter(
            &client,
            "/resource/counter",
            None,
            CONCURRENCY,
            &stop,
            &successes,
        );
        let (server, outages, reached) = controller.join().expect("controller thread");
        assert!(
            reached,
            "only {} successes within 45 s\n{}",
            successes.load(Ordering::Relaxed),
            chain.logs()
        );
        drop(server);
        (samples, outages)
    });

    let values = check_counter_samples(&samples);
    let failures = samples.iter().filter(|s| s.outcome.is_err()).count();
    let gaps = count_gaps(&values);
    eprintln!(
        "server kill -9: {KILLS} kills, {} values returned, {failures} failed calls, \
         {gaps} values skipped, outages {outages:?}, {:.1} s",
        values.len(),
        started.elapsed().as_secs_f64()
    );
    assert!(values.len() as u64 >= (KILLS + 1) * SUCCESSES_PER_ROUND);
}

/// Accepts TCP connections on 127.0.0.1:`port` in a thread and hands each
/// to `serve`, keeping the connections it returns open (up to 1000). Stops
/// when the returned flag is set or after 60 s, closes what it kept and
/// returns how many it kept.
fn fake_upstream<T: Send + 'static>(
    port: u16,
    mut serve: impl FnMut(std::net::TcpStream) -> Option<T> + Send + 'static,
) -> (Arc<AtomicBool>, std::thread::JoinHandle<usize>) {
    let listener = std::net::TcpListener::bind(("127.0.0.1", port)).expect("bind fake upstream");
    listener
        .set_nonblocking(true)
        .expect("nonblocking listener");
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    let handle = std::thread::spawn(move || {
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut kept = Vec::new();
        while !flag.load(Ordering::Relaxed) && Instant::now() < deadline {
            match listener.accept() {
                Ok((stream, _)) if kept.len() < 1000 => kept.extend(serve(stream)),
                Ok(_) => {}
                Err(_) => std::thread::sleep(Duration::from_millis(10)),
            }
        }
        kept.len()
    });
    (stop, handle)
}

/// Starts a fake upstream that accepts TCP connections and never responds,
/// like a server that hangs before its TLS handshake.
fn hanging_listener(port: u16) -> (Arc<AtomicBool>, std::thread::JoinHandle<usize>) {
    fake_upstream(port, Some)
}

/// Sends `count` counter calls at once through the proxy; returns each
/// call's status, error code and duration.
fn concurrent_counter_calls(
    client: &Client,
    token: &str,
    count: usize,
) -> Vec<(u16, String, Duration)> {
    let url = client.url("/resource/counter");
    client.runtime.block_on(async {
        let calls = (0..count).map(|_| {
            let request = client.client.post(&url).bearer_auth(token).send();
            async move {
                let started = Instant::now();
                let mut response = request.await.expect("the proxy answers");
                let body: serde_json::Value =
                    response.json().await.unwrap_or(serde_json::Value::Null);
                let code = body["error"].as_str().unwrap_or("").to_string();
                (response.status().as_u16(), code, started.elapsed())
            }
        });
        futures_util::future::join_all(calls).await
    })
}

#[test]
fn upstream_outage_fails_fast_and_recovers() {
    const REQUEST_TIMEOUT: Duration = Duration::from_millis(1500);
    const CONNECT_TIMEOUT: Duration = Duration::from_millis(500);
    // Scheduling slack on a busy machine.
    const SLACK: Duration = Duration::from_millis(1000);

    let chain = Chain::new();
    let mut settings = chain.proxy_settings();
    settings.upstream_keys = format!(
        "pool_size = 4\nconnect_timeout_ms = {}\nrequest_timeout_ms = {}\n",
        CONNECT_TIMEOUT.as_millis(),
        REQUEST_TIMEOUT.as_millis()
    );
    chain.write_server_config(&chain.path("server-store"), "");
    chain.write_proxy_config(&settings);
    let mut server = chain.server();
    let _proxy = chain.proxy();
    let client = chain.client();
    let token = enroll_and_log_in(&client, "alice");

    // 1. Killed under load: calls fail with 502 and JSON, fast; the proxy
    //    recovers by itself once the server is back.
    let stop = AtomicBool::new(false);
    let successes = AtomicU64::new(0);
    let deadline = Instant::now() + Duration::from_secs(30);
    let (samples, recovery) = std::thread::scope(|scope| {
        let controller = scope.spawn(|| {
            let reached = wait_for_successes(&successes, 300, deadline);
            server.kill();
            std::thread::sleep(Duration::from_millis(1000));
            server = chain.server();
            let back = Instant::now();
            let before = successes.load(Ordering::Relaxed);
            let recovered = wait_for_successes(&successes, before + 1, deadline);
            let recovery = back.elapsed();
            let finished = wait_for_successes(&successes, before + 300, deadline);
            stop.store(true, Ordering::Relaxed);
            assert!(
                reached && recovered && finished,
                "too few successes\n{}",
                chain.logs()
            );
            recovery
        });
        let samples = hammer_counter(
            &client,
            "/resource/counter",
            Some(&token),
            16,
            &stop,
            &successes,
        );
        (samples, controller.join().expect("controller thread"))
    });
    let mut values = check_counter_samples(&samples);
    let failures: Vec<&Sample> = samples.iter().filter(|s| s.outcome.is_err()).collect();
    assert!(!failures.is_empty(), "the kill caused no failed call");
    for failure in &failures {
        let text = failure
            .outcome
            .as_ref()
            .err()
            .map(String::as_str)
            .unwrap_or("");
        assert!(
            text.starts_with("502 {\"ok\":false,\"error\":\"upstream_failed\""),
            "a call during the outage ended with {text}"
        );
        let took = failure.received - failure.sent;
        assert!(took < REQUEST_TIMEOUT, "a failed call took {took:?}");
    }
    let slowest_failure = failures.iter().map(|s| s.received - s.sent).max();
    eprintln!(
        "server down: {} calls, {} failed with 502, slowest failure {slowest_failure:?}, \
         first success {recovery:?} after restart",
        samples.len(),
        failures.len()
    );

    // 2. Hanging before TLS: a listener that accepts and never responds.
    server.kill();
    let (stop_listener, listener) = hanging_listener(chain.server_port);
    let calls = concurrent_counter_calls(&client, &token, 16);
    for (status, code, took) in &calls {
        assert_eq!(
            (*status, code.as_str()),
            (504, "upstream_timeout"),
            "call to a hanging server"
        );
        // The calls of one worker share its one connection attempt, which
        // ends at the connect timeout; the bound allows for a slow machine.
        assert!(
            *took < REQUEST_TIMEOUT + SLACK,
            "a call to a hanging server took {took:?}"
        );
    }
    let fastest_hanging = calls.iter().map(|c| c.2).min();
    let slowest_hanging = calls.iter().map(|c| c.2).max();
    stop_listener.store(true, Ordering::Relaxed);
    let held = listener.join().expect("listener thread");
    assert!(
        held > 0,
        "the proxy never connected to the hanging listener"
    );

    // Back to normal without restarting the proxy.
    server = chain.server();
    let (status, body) = client.counter(&token);
    assert_eq!(status, 200, "first call after the hang: {body}");
    values.push(value_of(&body));

    // 3. Hanging after TLS: the server process is stopped with open pooled
    //    connections. Sixteen calls share a pool of four.
    server.signal("STOP");
    let calls = concurrent_counter_calls(&client, &token, 16);
    server.signal("CONT");
    for (status, code, took) in &calls {
        assert_eq!(
            (*status, code.as_str()),
            (504, "upstream_timeout"),
            "call to a stopped server"
        );
        assert!(
            *took < REQUEST_TIMEOUT + SLACK,
            "a call to a stopped server took {took:?}"
        );
    }
    let slowest_stopped = calls.iter().map(|c| c.2).max();
    let (status, body) = client.counter(&token);
    assert_eq!(status, 200, "first call after SIGCONT: {body}");
    let last = value_of(&body);
    assert!(
        values.iter().all(|v| *v < last),
        "value {last} after the hang is not above every earlier value"
    );
    eprintln!(
        "server hanging: before TLS 504 after {fastest_hanging:?} to {slowest_hanging:?} \
         ({held} connections held); \
         after TLS slowest 504 {slowest_stopped:?}"
    );
}

/// Sends `action` from a thread of its own and kills the proxy `offset`
/// after the request left; returns what the client saw.
fn kill_proxy_during(
    chain: &Chain,
    proxy: &mut common::chain::Proc,
    offset: Duration,
    action: impl FnOnce(&Client) -> Result<(u16, serde_json::Value), String> + Send,
) -> Result<(u16, serde_json::Value), String> {
    std::thread::scope(|scope| {
        let (sent_tx, sent_rx) = std::sync::mpsc::channel();
        let request = scope.spawn(move || {
            let client = chain.client();
            sent_tx.send(Instant::now()).expect("report the send time");
            action(&client)
        });
        let sent = sent_rx
            .recv_timeout(Duration::from_secs(10))
            .expect("the request thread starts");
        std::thread::sleep(offset.saturating_sub(sent.elapsed()));
        proxy.kill();
        request.join().expect("request thread")
    })
}

#[test]
fn proxy_kill_leaves_users_whole() {
    // The simulated person confirms after this long, which leaves a window
    // for the kill while the card waits and right after it responds.
    const PRESENCE_DELAY_MS: u64 = 300;

    let chain = Chain::new();
    let mut settings = chain.proxy_settings();
    settings.card_device = chain.udp_device();
    chain.write_server_config(&chain.path("server-store"), "");
    chain.write_proxy_config(&settings);
    let _server = chain.server();
    let _card = chain.card_sim(&format!("delay:{PRESENCE_DELAY_MS}"));
    let mut proxy = chain.proxy();
    let client = chain.client();
    wait_for_card(&client);
    let mut enroll_times = Vec::new();
    for name in ["base", "base1", "base2"] {
        // A fresh client, as in the runs with a kill, so that the time
        // includes the TLS handshake.
        let fresh = chain.client();
        let started = Instant::now();
        let (status, body) = fresh.enroll(name);
        assert_eq!(status, 200, "{body}");
        enroll_times.push(started.elapsed());
    }
    enroll_times.sort_unstable();
    let enroll_time = enroll_times[1].as_millis() as u64;

    // Kill offsets from the request's start: while the card waits, then in
    // 2 ms steps through the end of a typical enrollment (the card's response,
    // the store's write, the reply), then after it.
    let delay = PRESENCE_DELAY_MS;
    let enroll_offsets: Vec<u64> = [delay / 2]
        .into_iter()
        .chain((0..14).map(|i| enroll_time - 22 + i * 2))
        .chain([enroll_time + 100])
        .collect();
    let started = Instant::now();
    let (mut enrolled, mut absent, mut answered, mut stored_unanswered) = (0, 0, 0, 0);
    for (i, offset) in enroll_offsets.iter().enumerate() {
        let username = format!("user{i}");
        let seen = kill_proxy_during(
            &chain,
            &mut proxy,
            Duration::from_millis(*offset),
            |client| {
                client.try_post(
                    "/enroll/register",
                    None,
                    Some(serde_json::json!({ "username": username })),
                )
            },
        );
        if let Ok((status, _)) = &seen {
            answered += 1;
            assert_eq!(*status, 200, "enroll answered before the kill: {seen:?}");
        }

        proxy = chain.proxy();
        wait_for_card(&client);
        if client.enrolled(&username) {
            enrolled += 1;
            if seen.is_err() {
                stored_unanswered += 1;
            }
            let (status, body) = client.login(&username);
            assert_eq!(
                status,
                200,
                "{username} is enrolled after a kill at {offset} ms but cannot log in: {body}\n{}",
                chain.logs()
            );
        } else {
            absent += 1;
            assert!(
                seen.is_err(),
                "{username} got 200 before the kill at {offset} ms but is not enrolled"
            );
            let (status, body) = client.enroll(&username);
            assert_eq!(
                status, 200,
                "{username} is absent after a kill at {offset} ms but cannot enroll: {body}"
            );
        }
    }

    let login_offsets = [
        delay / 2,
        enroll_time - 20,
        enroll_time - 10,
        enroll_time - 4,
        enroll_time,
        enroll_time + 60,
    ];
    for offset in login_offsets {
        let seen = kill_proxy_during(
            &chain,
            &mut proxy,
            Duration::from_millis(offset),
            |client| {
                client.try_post(
                    "/session/login",
                    None,
                    Some(serde_json::json!({ "username": "base" })),
                )
            },
        );
        if let Ok((status, body)) = &seen {
            assert_eq!(*status, 200, "login answered before the kill: {body}");
        }
        proxy = chain.proxy();
        wait_for_card(&client);
        let (status, body) = client.login("base");
        assert_eq!(
            status,
            200,
            "login after a kill at {offset} ms: {body}\n{}",
            chain.logs()
        );
    }
    eprintln!(
        "proxy kill -9: enrollment takes {enroll_time} ms; {} kills during enrollment ({enrolled} enrolled, {absent} absent, \
         {answered} answered first, {stored_unanswered} stored but unanswered), {} during login, {:.1} s",
        enroll_offsets.len(),
        login_offsets.len(),
        started.elapsed().as_secs_f64()
    );
}

/// Starts `path` with `body` from a thread of its own; the handle returns
/// the status, the JSON body and how long the call took.
fn post_in_background<'scope>(
    scope: &'scope std::thread::Scope<'scope, '_>,
    chain: &'scope Chain,
    path: &'static str,
    body: serde_json::Value,
) -> std::thread::ScopedJoinHandle<'scope, (u16, serde_json::Value, Duration)> {
    scope.spawn(move || {
        let client = chain.client();
        let started = Instant::now();
        let (status, reply) = client.post(path, None, Some(body));
        (status, reply, started.elapsed())
    })
}

/// Waits until the card part of the proxy's `/health` satisfies `ready`.
/// A heartbeat PING also makes the card busy, for a few milliseconds, so a
/// state must hold over two polls 200 ms apart.
fn wait_for_card_health(client: &Client, what: &str, ready: impl Fn(&serde_json::Value) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut held = false;
    while Instant::now() < deadline {
        let (_, health) = client.get("/health");
        if ready(&health["card"]) {
            if held {
                return;
            }
            held = true;
        } else {
            held = false;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    panic!("the card did not reach this state within 10 s: {what}");
}

#[test]
fn card_loss_mid_login_frees_queue() {
    const PRESENCE_DELAY_MS: u64 = 1500;
    const IDLE_TIMEOUT: Duration = Duration::from_millis(1000);
    const LOGIN_GRACE: Duration = Duration::from_millis(4000);
    const SLACK: Duration = Duration::from_millis(1500);

    let chain = Chain::new();
    let mut settings = chain.proxy_settings();
    settings.card_device = chain.udp_device();
    settings.card_keys = format!(
        "idle_timeout_ms = {}\nlogin_grace_ms = {}\nreconnect_max_backoff_ms = 500\n",
        IDLE_TIMEOUT.as_millis(),
        LOGIN_GRACE.as_millis()
    );
    chain.write_server_config(&chain.path("server-store"), "");
    chain.write_proxy_config(&settings);
    let _server = chain.server();
    let presence = format!("delay:{PRESENCE_DELAY_MS}");
    let mut card = chain.card_sim(&presence);
    let _proxy = chain.proxy();
    let client = chain.client();
    wait_for_card(&client);
    for name in ["alice", "bob"] {
        let (status, body) = client.enroll(name);
        assert_eq!(status, 200, "{body}");
    }
    let login = |name: &str| serde_json::json!({ "username": name });
    let enroll = |name: &str| serde_json::json!({ "username": name });

    // 1. The card vanishes while alice's login waits for the person, with
    //    bob's login and carol's enrollment queued behind it, and stays
    //    away: every caller gets a clear error and the queue empties.
    let (alice, bob, carol, lost_after) = std::thread::scope(|scope| {
        let alice = post_in_background(scope, &chain, "/session/login", login("alice"));
        wait_for_card_health(&client, "alice's login on the card", |h| {
            h["state"] == "busy"
        });
        let bob = post_in_background(scope, &chain, "/session/login", login("bob"));
        let carol = post_in_background(scope, &chain, "/enroll/register", enroll("carol"));
        wait_for_card_health(&client, "two operations queued", |h| h["queued"] == 2);
        card.kill();
        let killed = Instant::now();
        let alice = alice.join().expect("alice's thread");
        let lost_after = killed.elapsed();
        (
            alice,
            bob.join().expect("bob's thread"),
            carol.join().expect("carol's thread"),
            lost_after,
        )
    });
    assert_eq!(
        alice.0, 503,
        "alice's login when the card vanished: {}",
        alice.1
    );
    assert_eq!(alice.1["error"], "card_not_connected", "{}", alice.1);
    let details = alice.1["details"].as_str().unwrap_or("");
    assert!(
        details.contains("lost"),
        "the details should say the card was lost: {details}"
    );
    assert!(
        lost_after < IDLE_TIMEOUT + SLACK,
        "alice waited {lost_after:?} after the card vanished"
    );
    assert_eq!(bob.0, 503, "bob's queued login: {}", bob.1);
    assert_eq!(bob.1["error"], "card_not_connected", "{}", bob.1);
    assert!(
        bob.2 < LOGIN_GRACE + SLACK,
        "bob's queued login took {:?}",
        bob.2
    );
    assert_eq!(carol.0, 503, "carol's queued enrollment: {}", carol.1);
    let (_, health) = client.get("/health");
    assert_eq!(health["card"]["state"], "disconnected", "{health}");
    assert_eq!(health["card"]["queued"], 0, "{health}");
    eprintln!(
        "card vanished: alice 503 {:?} after the kill, bob 503 after {:?}, carol {} after {:?}",
        lost_after, bob.2, carol.0, carol.2
    );

    // 2. The card returns: logins work again without restarting the proxy.
    card = chain.card_sim(&presence);
    wait_for_card(&client);
    let (status, body) = client.login("alice");
    assert_eq!(
        status,
        200,
        "alice after the card returned: {body}\n{}",
        chain.logs()
    );

    // 3. The card vanishes and returns within the login grace period: the
    //    login queued behind the lost one waits and then succeeds.
    let (alice, bob) = std::thread::scope(|scope| {
        let alice = post_in_background(scope, &chain, "/session/login", login("alice"));
        wait_for_card_health(&client, "alice's login on the card", |h| {
            h["state"] == "busy"
        });
        let bob = post_in_background(scope, &chain, "/session/login", login("bob"));
        wait_for_card_health(&client, "one operation queued", |h| h["queued"] == 1);
        card.kill();
        let alice = alice.join().expect("alice's thread");
        card = chain.card_sim(&presence);
        (alice, bob.join().expect("bob's thread"))
    });
    assert_eq!(
        alice.0, 503,
        "alice's login when the card vanished: {}",
        alice.1
    );
    assert_eq!(
        bob.0,
        200,
        "bob's login queued while the card was away for less than the grace period: {}\n{}",
        bob.1,
        chain.logs()
    );
    let (_, health) = client.get("/health");
    assert_eq!(health["card"]["queued"], 0, "{health}");
    eprintln!(
        "card returned within the grace period: bob 200 after {:?}",
        bob.2
    );
    drop(card);
}

/// How a misbehaving client treats its connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stall {
    /// TCP connect, then nothing: no TLS handshake.
    HalfOpenTls,
    /// TLS, then the request head one byte per tick, never finished.
    HeadByteByByte,
    /// TLS and a whole head announcing 100 bytes of body, then 10 bytes, to
    /// a route that reads the body.
    BodyUnfinished,
    /// The same to a route that responds without reading the body.
    BodyUnfinishedUnread,
    /// One whole keep-alive request, then nothing.
    IdleKeepAlive,
}

/// One misbehaving connection and when the server let go of it.
struct Stalled {
    kind: Stall,
    opened: Instant,
    tcp: Option<std::net::TcpStream>,
    tls: Option<rustls::StreamOwned<rustls::ClientConnection, std::net::TcpStream>>,
    sent: usize,
    /// The status line of a response, if the server sent one.
    answer: Option<String>,
    /// When the server closed the connection, from its opening.
    released: Option<Duration>,
}

const SLOW_HEAD: &[u8] = b"POST /session/login HTTP/1.1\r\nHost: localhost\r\nX-Padding: \
    aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\
    aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";

impl Stalled {
    fn open(kind: Stall, chain: &Chain) -> Stalled {
        let opened = Instant::now();
        let mut stalled = Stalled {
            kind,
            opened,
            tcp: None,
            tls: None,
            sent: 0,
            answer: None,
            released: None,
        };
        match kind {
            Stall::HalfOpenTls => {
                let tcp = std::net::TcpStream::connect(("127.0.0.1", chain.proxy_port))
                    .expect("TCP connect");
                tcp.set_nonblocking(true).expect("nonblocking");
                stalled.tcp = Some(tcp);
            }
            Stall::HeadByteByByte
            | Stall::BodyUnfinished
            | Stall::BodyUnfinishedUnread
            | Stall::IdleKeepAlive => {
                let mut tls =
                    common::chain::tls_connect(&chain.path("certs/ca.crt"), None, chain.proxy_port)
                        .expect("TLS connect");
                let unfinished = |path: &str| {
                    format!(
                        "POST {path} HTTP/1.1\r\nHost: localhost\r\n\
                         Content-Type: application/json\r\nContent-Length: 100\r\n\r\n\
                         {{\"username"
                    )
                };
                let request = match kind {
                    Stall::BodyUnfinished => Some(unfinished("/session/login")),
                    Stall::BodyUnfinishedUnread => Some(unfinished("/session/logout")),
                    Stall::IdleKeepAlive => {
                        Some("GET /health HTTP/1.1\r\nHost: localhost\r\n\r\n".to_string())
                    }
                    _ => None,
                };
                if let Some(request) = request {
                    use std::io::Write;
                    tls.write_all(request.as_bytes()).expect("write request");
                    tls.flush().expect("flush");
                }
                tls.sock.set_nonblocking(true).expect("nonblocking");
                stalled.tls = Some(tls);
            }
        }
        stalled
    }

    /// Sends the next byte of a slow head and notes whether the server has
    /// closed the connection or answered it.
    fn tick(&mut self) {
        use std::io::{Read, Write};
        if self.released.is_some() {
            return;
        }
        let mut buffer = [0u8; 4096];
        let read = match (&mut self.tcp, &mut self.tls) {
            (Some(tcp), _) => tcp.read(&mut buffer),
            (_, Some(tls)) => {
                if self.kind == Stall::HeadByteByByte {
                    let byte = SLOW_HEAD[self.sent % SLOW_HEAD.len()];
                    if tls.write(&[byte]).is_ok() {
                        self.sent += 1;
                    }
                }
                tls.read(&mut buffer)
            }
            _ => return,
        };
        let released = match read {
            Err(e) => e.kind() != std::io::ErrorKind::WouldBlock,
            Ok(0) => true,
            Ok(n) => {
                let text = String::from_utf8_lossy(&buffer[..n]);
                self.answer
                    .get_or_insert_with(|| text.lines().next().unwrap_or("").to_string());
                false
            }
        };
        if released {
            self.released = Some(self.opened.elapsed());
            self.tcp = None;
            self.tls = None;
        }
    }
}

#[test]
fn slow_clients_do_not_starve_others() {
    const HEAD_TIMEOUT: Duration = Duration::from_millis(2000);
    const BODY_TIMEOUT: Duration = Duration::from_millis(1500);
    const KEEP_ALIVE: Duration = Duration::from_secs(2);
    // Scheduling slack: 450 connections are opened and polled from one
    // thread, on a machine that may run other tests at the same time.
    const SLACK: Duration = Duration::from_millis(2000);
    const COUNTS: [(Stall, usize, &str); 5] = [
        (Stall::HalfOpenTls, 200, ""),
        (Stall::HeadByteByByte, 100, "408"),
        (Stall::BodyUnfinished, 50, "408"),
        (Stall::BodyUnfinishedUnread, 50, "401"),
        (Stall::IdleKeepAlive, 50, "200"),
    ];

    let chain = Chain::new();
    let mut settings = chain.proxy_settings();
    settings.extra = format!(
        "[http]\nworkers = 2\nclient_request_timeout_ms = {}\nbody_timeout_ms = {}\n\
         keep_alive_s = {}\n",
        HEAD_TIMEOUT.as_millis(),
        BODY_TIMEOUT.as_millis(),
        KEEP_ALIVE.as_secs()
    );
    chain.write_server_config(&chain.path("server-store"), "");
    chain.write_proxy_config(&settings);
    let _server = chain.server();
    let _proxy = chain.proxy();
    let client = chain.client();
    wait_for_card(&client);

    let mut stalled: Vec<Stalled> = COUNTS
        .iter()
        .flat_map(|(kind, count, _)| (0..*count).map(|_| Stalled::open(*kind, &chain)))
        .collect();

    // Normal requests from a separate client while the stalled
    // connections are open, until every stalled one is released or the
    // time is up.
    let deadline = Instant::now() + HEAD_TIMEOUT * 2 + SLACK * 2;
    let mut normal = Vec::new();
    let mut next_normal = Instant::now();
    while Instant::now() < deadline && stalled.iter().any(|s| s.released.is_none()) {
        for connection in &mut stalled {
            connection.tick();
        }
        if Instant::now() >= next_normal {
            let fresh = chain.client();
            let started = Instant::now();
            let result = fresh.try_get("/health");
            normal.push((result.map(|r| r.0), started.elapsed()));
            next_normal = Instant::now() + Duration::from_millis(250);
        }
        std::thread::sleep(Duration::from_millis(20));
    }

    let slowest_normal = normal.iter().map(|n| n.1).max().unwrap_or_default();
    for (result, took) in &normal {
        assert_eq!(
            result,
            &Ok(200),
            "a normal request failed while others stalled"
        );
        assert!(
            *took < Duration::from_secs(1),
            "a normal request took {took:?} while others stalled"
        );
    }
    let mut report = Vec::new();
    let mut failures = Vec::new();
    for (kind, count, status) in COUNTS {
        let of_kind: Vec<&Stalled> = stalled.iter().filter(|s| s.kind == kind).collect();
        let released: Vec<Duration> = of_kind.iter().filter_map(|s| s.released).collect();
        let slowest = released.iter().max().copied().unwrap_or_default();
        let fastest = released.iter().min().copied().unwrap_or_default();
        let mut answers: Vec<&str> = of_kind.iter().filter_map(|s| s.answer.as_deref()).collect();
        answers.sort_unstable();
        answers.dedup();
        report.push(format!(
            "{kind:?}: {}/{count} closed after {fastest:?} to {slowest:?}, answers {answers:?}",
            released.len()
        ));
        if released.len() < count {
            failures.push(format!(
                "{kind:?}: {} of {count} connections still open",
                count - released.len()
            ));
        }
        if slowest >= HEAD_TIMEOUT.max(KEEP_ALIVE) + SLACK {
            failures.push(format!("{kind:?}: a connection was held for {slowest:?}"));
        }
        let expected = if status.is_empty() {
            Vec::new()
        } else {
            vec![format!("HTTP/1.1 {status}")]
        };
        let prefixes: Vec<String> = answers
            .iter()
            .map(|a| a.chars().take(12).collect())
            .collect();
        if prefixes != expected {
            failures.push(format!(
                "{kind:?}: answers {answers:?}, expected {expected:?}"
            ));
        }
    }
    eprintln!(
        "slow clients: {} normal requests, slowest {slowest_normal:?}; {}",
        normal.len(),
        report.join("; ")
    );
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// A tmpfs mounted for one test and unmounted when dropped.
struct TmpfsMount {
    path: std::path::PathBuf,
}

impl TmpfsMount {
    /// Mounts a tmpfs of `size_kib` at `path`; `None` when this process may
    /// not mount (not root, or no mount permission in the sandbox).
    fn new(path: std::path::PathBuf, size_kib: u64) -> Option<TmpfsMount> {
        std::fs::create_dir_all(&path).expect("create mount point");
        let status = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size_kib}k"), "tmpfs"])
            .arg(&path)
            .stderr(std::process::Stdio::null())
            .status()
            .ok()?;
        status.success().then_some(TmpfsMount { path })
    }

    /// Remounts read-only (`ro`) or read-write (`rw`). Fails while a file
    /// on it is open for writing.
    fn remount(&self, mode: &str) {
        let status = std::process::Command::new("mount")
            .args(["-o", &format!("remount,{mode}")])
            .arg(&self.path)
            .status()
            .expect("run mount");
        assert!(
            status.success(),
            "remount {mode} of {}",
            self.path.display()
        );
    }

    /// Writes a filler file until the file system is full; returns its size.
    fn fill(&self) -> u64 {
        use std::io::Write;
        let mut file = std::fs::File::create(self.path.join("filler")).expect("create filler");
        let chunk = vec![0u8; 4096];
        let mut written = 0;
        while file.write_all(&chunk).is_ok() {
            written += chunk.len() as u64;
        }
        // Whatever still fits in the last partial block.
        while file.write_all(&chunk[..1]).is_ok() {
            written += 1;
        }
        written
    }

    fn unfill(&self) {
        std::fs::remove_file(self.path.join("filler")).expect("remove filler");
    }
}

impl Drop for TmpfsMount {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.path)
            .status();
    }
}

/// Mounts a tmpfs for a store test, or explains why the test is skipped.
fn mount_or_skip(chain: &Chain, name: &str) -> Option<TmpfsMount> {
    let mount = TmpfsMount::new(chain.path(name), 4096);
    if mount.is_none() {
        eprintln!("SKIPPED: this process may not mount a tmpfs (the test needs root)");
    }
    mount
}

#[test]
fn full_disk_rejects_writes_only() {
    let chain = Chain::new();
    let Some(proxy_disk) = mount_or_skip(&chain, "proxy-disk") else {
        return;
    };
    let Some(server_disk) = mount_or_skip(&chain, "server-disk") else {
        return;
    };
    let mut settings = chain.proxy_settings();
    settings.store = proxy_disk.path.join("store");
    chain.write_server_config(&server_disk.path.join("store"), "");
    chain.write_proxy_config(&settings);
    let mut server = chain.server();
    let mut proxy = chain.proxy();
    let client = chain.client();
    let token = enroll_and_log_in(&client, "alice");
    let mut values = vec![value_of(&client.counter(&token).1)];

    // 1. The proxy's disk fills up: display-name updates write until one
    //    fails, then the store refuses everything with a clear error, and
    //    the rest of the proxy keeps serving.
    proxy_disk.fill();
    let mut last_stored = None;
    let mut failed = None;
    for i in 0..500 {
        let name = format!("name {i:058}");
        let (status, body) = client.post(
            "/enroll/update",
            Some(&token),
            Some(serde_json::json!({ "display_name": name })),
        );
        if status != 200 {
            failed = Some((i, status, body));
            break;
        }
        last_stored = Some(name);
    }
    let (updates, status, body) = failed.expect("500 updates fitted on a full disk");
    assert_eq!(status, 500, "update on a full disk: {body}");
    assert_eq!(body["error"], "storage_failed", "{body}");
    let details = body["details"].as_str().unwrap_or("");
    assert!(details.contains("No space left on device"), "{details}");

    let (status, body) = client.enroll("bob");
    assert_eq!(status, 500, "enroll after a failed write: {body}");
    let details = body["details"].as_str().unwrap_or("");
    assert!(details.contains("closed after a failed write"), "{details}");
    let (status, body) = client.get("/enroll/status?username=alice");
    assert_eq!(
        status, 500,
        "a read must not show what was not stored: {body}"
    );
    let (status, body) = client.get("/health");
    assert_eq!(status, 200, "{body}");
    let (status, body) = client.post("/session/status", Some(&token), None);
    assert_eq!(status, 200, "{body}");
    let (status, body) = client.counter(&token);
    assert_eq!(status, 200, "counter with the proxy's disk full: {body}");
    values.push(value_of(&body));

    // 2. The server's disk fills up: increments go on, because the counter
    //    file keeps its size and its writes need no new space.
    server_disk.fill();
    let server_client = chain.server_client();
    for _ in 0..200 {
        let (status, body) = server_client.post("/resource/counter", None, None);
        assert_eq!(status, 200, "increment on a full disk: {body}");
        values.push(value_of(&body));
    }
    let (status, body) = client.counter(&token);
    assert_eq!(
        status, 200,
        "counter through the proxy, server disk full: {body}"
    );
    values.push(value_of(&body));
    let (status, body) = server_client.get("/health");
    assert_eq!(status, 200, "server health with a full disk: {body}");
    let values_before_restart = values.len();

    // 3. Space returns and both daemons restart after a crash: the stores
    //    open, hold exactly what was acknowledged, and accept writes.
    proxy_disk.unfill();
    server_disk.unfill();
    server.kill();
    proxy.kill();
    let _server = chain.server();
    let _proxy = chain.proxy();
    wait_for_card(&client);
    let (status, body) = client.get("/enroll/status?username=alice");
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["user"]["display_name"].as_str(),
        last_stored.as_deref(),
        "the display name must be the last one acknowledged"
    );
    assert!(
        !client.enrolled("bob"),
        "the rejected enrollment was stored"
    );
    let (status, login) = client.login("alice");
    assert_eq!(status, 200, "login after the restart: {login}");
    let (status, body) = client.counter(&token_of(&login));
    assert_eq!(status, 200, "counter after the restart: {body}");
    let next = value_of(&body);
    assert!(
        values.iter().all(|v| *v < next),
        "value {next} after the restart repeats or precedes an earlier one"
    );
    values.sort_unstable();
    values.dedup();
    assert_eq!(
        values.len(),
        values_before_restart,
        "a value was returned twice"
    );
    eprintln!("full disk: the proxy failed at update {updates}, the server went on");
}

#[test]
fn read_only_store_stops_start() {
    let chain = Chain::new();
    let Some(disk) = mount_or_skip(&chain, "disk") else {
        return;
    };
    let mut settings = chain.proxy_settings();
    settings.store = disk.path.join("proxy-store");
    chain.write_server_config(&disk.path.join("server-store"), "");
    chain.write_proxy_config(&settings);
    let mut server = chain.server();
    let mut proxy = chain.proxy();
    let client = chain.client();
    let token = enroll_and_log_in(&client, "alice");
    let first = value_of(&client.counter(&token).1);
    server.terminate();
    proxy.terminate();

    disk.remount("ro");
    for (role, config) in [("server", "server.toml"), ("proxy", "proxy.toml")] {
        let output = std::process::Command::new(common::chain::BIN)
            .args([role, "--config"])
            .arg(chain.path(config))
            .output()
            .expect("run the role");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            !output.status.success(),
            "the {role} started on a read-only store"
        );
        assert!(
            stderr.contains("cannot open the store at") && stderr.contains("Read-only file system"),
            "the {role}'s message should name the store and the reason: {stderr}"
        );
        eprintln!(
            "read-only store: {role}: {}",
            stderr.lines().last().unwrap_or("")
        );
    }

    disk.remount("rw");
    let _server = chain.server();
    let _proxy = chain.proxy();
    wait_for_card(&client);
    let (status, login) = client.login("alice");
    assert_eq!(status, 200, "{login}");
    let (status, body) = client.counter(&token_of(&login));
    assert_eq!(status, 200, "{body}");
    assert!(value_of(&body) > first);
}

/// Starts a fake upstream with k_server's certificate that replies to the
/// first request on each connection with `reply` and keeps the connection
/// open. The count it returns is the number of requests it replied to.
fn scripted_upstream(
    chain: &Chain,
    port: u16,
    reply: &'static str,
) -> (Arc<AtomicBool>, std::thread::JoinHandle<usize>) {
    use std::io::{Read, Write};

    let tls = cardgate::tls::server_config(
        &chain.path("certs/server.crt"),
        &chain.path("certs/server.key"),
        Some(&chain.path("certs/ca.crt")),
    )
    .expect("k_server's TLS config");
    let tls = Arc::new(tls);
    fake_upstream(port, move |tcp| {
        tcp.set_nonblocking(false).expect("blocking stream");
        tcp.set_read_timeout(Some(Duration::from_secs(5)))
            .expect("read timeout");
        let connection = rustls::ServerConnection::new(tls.clone()).ok()?;
        let mut stream = rustls::StreamOwned::new(connection, tcp);
        let mut request = [0u8; 4096];
        if !matches!(stream.read(&mut request), Ok(n) if n > 0) {
            return None;
        }
        let _ = stream.write_all(reply.as_bytes());
        let _ = stream.flush();
        Some(stream)
    })
}

#[test]
fn upstream_body_stall_times_out() {
    const REQUEST_TIMEOUT: Duration = Duration::from_millis(1500);
    // Scheduling slack on a busy machine.
    const SLACK: Duration = Duration::from_millis(1000);

    let chain = Chain::new();
    let mut settings = chain.proxy_settings();
    settings.upstream_keys = format!(
        "connect_timeout_ms = 500\nrequest_timeout_ms = {}\n",
        REQUEST_TIMEOUT.as_millis()
    );
    chain.write_proxy_config(&settings);
    // A head that announces a body it never sends.
    let stalling =
        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n";
    let (stop, server) = scripted_upstream(&chain, chain.server_port, stalling);
    let _proxy = chain.proxy();
    let client = chain.client();
    let token = enroll_and_log_in(&client, "alice");

    // One call at a time goes over HTTP/1.1, the path where a stalled body
    // has to be bounded by the proxy itself.
    for _ in 0..2 {
        let started = Instant::now();
        let (status, body) = client.counter(&token);
        let took = started.elapsed();
        assert_eq!(status, 504, "{body}");
        assert_eq!(body["error"], "upstream_timeout", "{body}");
        assert!(
            took < REQUEST_TIMEOUT + SLACK,
            "a stalled reply took {took:?}"
        );
        eprintln!("reply body stalled: 504 after {took:?}");
    }
    stop.store(true, Ordering::Relaxed);
    let held = server.join().expect("scripted upstream thread");
    assert!(
        held > 0,
        "the proxy never sent a request to the stalling server"
    );
}

#[test]
fn upstream_chunked_reply_is_rejected() {
    let chain = Chain::new();
    let chunked = "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n\
                   transfer-encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n";
    chain.write_proxy_config(&chain.proxy_settings());
    let (stop, server) = scripted_upstream(&chain, chain.server_port, chunked);
    let _proxy = chain.proxy();
    let client = chain.client();
    let token = enroll_and_log_in(&client, "alice");

    let (status, body) = client.counter(&token);
    assert_eq!(status, 502, "{body}");
    assert_eq!(body["error"], "upstream_failed", "{body}");
    let details = body["details"].as_str().unwrap_or_default();
    assert!(details.contains("Transfer-Encoding"), "{body}");
    stop.store(true, Ordering::Relaxed);
    assert!(server.join().expect("scripted upstream thread") > 0);
}

#[test]
fn kept_upstream_connection_is_replaced_after_server_restart() {
    let chain = Chain::new();
    chain.write_server_config(&chain.path("server-store"), "");
    chain.write_proxy_config(&chain.proxy_settings());
    let mut server = chain.server();
    let _proxy = chain.proxy();
    let client = chain.client();
    let token = enroll_and_log_in(&client, "alice");

    // One call at a time: each goes over the worker's kept HTTP/1.1
    // connection. After k_server restarts, that connection is closed, and
    // the next call must open a new one instead of failing on the old one.
    let mut last = 0;
    for round in 0..3 {
        for _ in 0..3 {
            let (status, body) = client.counter(&token);
            assert_eq!(status, 200, "round {round}: {body}\n{}", chain.logs());
            let value = value_of(&body);
            assert!(value > last, "value {value} after {last}");
            last = value;
        }
        server.kill();
        server = chain.server();
    }
}
