//! Day-2 operations of the roles as separate processes: the audit trail,
//! graceful shutdown on SIGTERM and SIGINT, readiness, metrics, request
//! ids and `--check-config`.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, Instant};

use serde_json::Value;

use common::process::{token_of, Chain, ChainOptions, Client};

/// Runs `cardgate audit` on the chain's proxy config with `extra`
/// arguments and `--json`; returns stderr and the parsed records.
fn audit_json(chain: &Chain, extra: &[&str]) -> (String, Vec<Value>) {
    let config = chain.path("proxy.toml");
    let mut args = vec!["audit", "--config", config.to_str().expect("utf-8 path")];
    args.extend_from_slice(extra);
    args.push("--json");
    let output = chain.run(&args);
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(output.status.success(), "cardgate audit failed: {stderr}");
    let records = String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}")))
        .collect();
    (stderr, records)
}

/// Returns (action, outcome, username, reason) of each record, with
/// absent fields as empty strings.
fn summaries(records: &[Value]) -> Vec<(String, String, String, String)> {
    let text = |value: &Value| value.as_str().unwrap_or("").to_owned();
    records
        .iter()
        .map(|r| {
            (
                text(&r["action"]),
                text(&r["outcome"]),
                text(&r["username"]),
                text(&r["reason"]),
            )
        })
        .collect()
}

fn has(summaries: &[(String, String, String, String)], wanted: (&str, &str, &str, &str)) -> bool {
    summaries
        .iter()
        .any(|(a, o, u, r)| (a.as_str(), o.as_str(), u.as_str(), r.as_str()) == wanted)
}

#[test]
fn audit_trail_read_from_running_and_stopped_proxy() {
    let chain = Chain::new();
    chain.write_configs(&ChainOptions::default());
    let _server = chain.server();
    let mut proxy = chain.proxy();
    let client = chain.client();
    client.wait_ready();

    // Events: enroll, login, a failed login, logout.
    assert_eq!(client.enroll("alice").status, 200, "{}", chain.logs());
    let login = client.login("alice");
    assert_eq!(login.status, 200, "{}", login.text);
    assert_eq!(client.login("nobody").status, 404);
    let token = token_of(&login);
    assert_eq!(
        client.post("/session/logout", Some(&token), None).status,
        200
    );

    // While the proxy runs, the trail comes over its socket.
    let socket = chain.path("proxy-store/audit.sock");
    let mode = std::fs::metadata(&socket)
        .expect("audit socket exists")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "socket mode {mode:o}");
    let (stderr, records) = audit_json(&chain, &[]);
    assert!(stderr.contains("from the running proxy"), "{stderr}");
    let seen = summaries(&records);
    for wanted in [
        ("start", "success", "", ""),
        ("card_connected", "success", "", ""),
        ("enroll", "success", "alice", ""),
        ("login", "success", "alice", ""),
        ("login", "failure", "nobody", "not_found"),
        ("logout", "success", "alice", ""),
    ] {
        assert!(has(&seen, wanted), "no {wanted:?} in {seen:?}");
    }
    let login_record = records
        .iter()
        .find(|r| r["action"] == "login" && r["outcome"] == "success")
        .expect("login record");
    assert_eq!(
        login_record["session"].as_str().map(str::len),
        Some(8),
        "{login_record}"
    );
    let text = serde_json::to_string(&records).expect("json");
    assert!(!text.contains(&token), "the trail must not hold a token");

    // Filters: one user, and a start time after every event.
    let (_, alice) = audit_json(&chain, &["--user", "Alice"]);
    let actions: Vec<String> = summaries(&alice).into_iter().map(|s| s.0).collect();
    assert_eq!(actions, ["enroll", "login", "logout"]);
    let (_, none) = audit_json(&chain, &["--since", "0s"]);
    assert!(none.is_empty(), "{none:?}");

    // The human format is one aligned line per record.
    let config = chain.path("proxy.toml");
    let output = chain.run(&["audit", "--config", config.to_str().expect("utf-8 path")]);
    let lines = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        lines
            .lines()
            .any(|l| l.contains("login") && l.contains("nobody") && l.contains("not_found")),
        "{lines}"
    );

    // After a stop, the trail comes from the store, with the stop recorded.
    proxy.signal("TERM");
    let status = proxy.wait_exit(Duration::from_secs(20));
    assert!(status.success(), "proxy exit {status:?}\n{}", chain.logs());
    assert!(!socket.exists(), "the socket must be removed at stop");
    let (stderr, records) = audit_json(&chain, &[]);
    assert!(
        stderr.contains("from the store of the stopped proxy"),
        "{stderr}"
    );
    let last = summaries(&records).pop().expect("records");
    assert_eq!(last.0, "stop", "{records:?}");
    assert_eq!(records.len(), seen.len() + 1, "{records:?}");
}

#[test]
fn sigterm_cancels_pending_card_operation_and_exits_zero() {
    let chain = Chain::new();
    chain.write_configs(&ChainOptions {
        presence: "never".into(),
        confirm_timeout_s: 60,
        shutdown_timeout_s: 20,
        ..ChainOptions::default()
    });
    let _server = chain.server();
    let mut proxy = chain.proxy();
    let client = chain.client();
    client.wait_ready();

    // An enrollment that waits for a person who never confirms.
    let waiting = {
        let ca = chain.path("certs/ca.crt");
        let base = client.base.clone();
        std::thread::spawn(move || Client::new(&ca, None, base).enroll("carol"))
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let health = client.get("/health");
        if health.json["card"]["state"] == "busy" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the card never got busy: {}",
            health.text
        );
        std::thread::sleep(Duration::from_millis(50));
    }

    let signalled = Instant::now();
    proxy.signal("TERM");
    let reply = waiting.join().expect("enroll thread");
    let status = proxy.wait_exit(Duration::from_secs(20));
    let stopped_after = signalled.elapsed();

    assert_eq!(reply.status, 503, "{}\n{}", reply.text, chain.logs());
    assert_eq!(reply.json["error"], "unavailable", "{}", reply.text);
    assert!(
        reply.json["details"]
            .as_str()
            .is_some_and(|d| d.contains("shutting down")),
        "{}",
        reply.text
    );
    assert!(status.success(), "proxy exit {status:?}\n{}", chain.logs());
    assert!(
        stopped_after < Duration::from_secs(10),
        "stopping took {stopped_after:?}; the card wait must be cancelled, not waited out"
    );
    let log = std::fs::read_to_string(chain.path("proxy.log")).expect("proxy log");
    assert!(
        log.contains("card operations cancelled for shutdown"),
        "{log}"
    );
    assert!(log.contains("store flushed"), "{log}");

    // The cancelled enrollment and the stop are durable in the trail.
    let (_, records) = audit_json(&chain, &["--user", "carol"]);
    assert!(
        has(
            &summaries(&records),
            ("enroll", "failure", "carol", "unavailable")
        ),
        "{records:?}"
    );
}

#[test]
fn sigint_stops_server_and_counter_continues() {
    let chain = Chain::new();
    chain.write_configs(&ChainOptions::default());
    let mut server = chain.server();
    let client = chain.server_client();
    for expected in 1..=3 {
        let reply = client.post("/resource/counter", None, None);
        assert_eq!(reply.json["value"], expected, "{}", reply.text);
    }

    server.signal("INT");
    let status = server.wait_exit(Duration::from_secs(20));
    assert!(status.success(), "server exit {status:?}\n{}", chain.logs());
    let log = std::fs::read_to_string(chain.path("server.log")).expect("server log");
    assert!(log.contains("SIGINT"), "{log}");
    assert!(log.contains("counter store closed"), "{log}");

    // A new client: the old one's pool still holds the closed connection.
    let _server = chain.server();
    let reply = chain.server_client().post("/resource/counter", None, None);
    assert_eq!(reply.json["value"], 4, "{}", reply.text);
}

/// Returns the value of the sample line `series` (name and labels
/// exactly as exposed), or `None` when it is absent.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|value| value.parse().ok())
}

#[test]
fn ready_and_metrics_cover_both_roles() {
    let chain = Chain::new();
    chain.write_configs(&ChainOptions {
        card_device: chain.udp_device(),
        metrics: true,
        ..ChainOptions::default()
    });

    // With no card and no k_server, /ready names both and the store is fine.
    let mut proxy = chain.proxy();
    let client = chain.client();
    let not_ready = client.get("/ready");
    assert_eq!(not_ready.status, 503, "{}", not_ready.text);
    assert_eq!(not_ready.json["error"], "not_ready");
    let details = not_ready.json["details"].as_str().unwrap_or("");
    assert!(details.contains("card:"), "{details}");
    assert!(details.contains("upstream:"), "{details}");
    assert_eq!(not_ready.json["checks"]["store"]["ok"], true);
    assert_eq!(client.get("/health").status, 200, "alive while not ready");

    let mut server = chain.server();
    let _card = chain.card_sim("approve");
    client.wait_ready();
    let server_ready = chain.server_client().get("/ready");
    assert_eq!(server_ready.status, 200, "{}", server_ready.text);
    assert_eq!(server_ready.json["checks"]["store"]["ok"], true);

    // Traffic: enroll, login, two counter calls.
    assert_eq!(client.enroll("dave").status, 200, "{}", chain.logs());
    let token = token_of(&client.login("dave"));
    let mut request_id = String::new();
    for _ in 0..2 {
        let reply = client.post("/resource/counter", Some(&token), None);
        assert_eq!(reply.status, 200, "{}", reply.text);
        request_id = reply
            .headers
            .get("x-request-id")
            .and_then(|v| v.to_str().ok())
            .expect("x-request-id header")
            .to_owned();
    }

    // k_server logged the proxy's request id.
    assert_eq!(request_id.len(), 16, "{request_id}");
    let server_log = std::fs::read_to_string(chain.path("server.log")).expect("server log");
    assert!(
        server_log.contains(&request_id),
        "k_server's log lacks request id {request_id}:\n{server_log}"
    );

    // The proxy's metrics.
    let scraper = Client::plain(format!("http://127.0.0.1:{}", chain.proxy_metrics_port));
    let scrape = scraper.get("/metrics");
    assert_eq!(scrape.status, 200);
    let content_type = scrape
        .headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    assert!(
        content_type.starts_with("text/plain; version=0.0.4"),
        "{content_type}"
    );
    let text = &scrape.text;
    for (series, expected) in [
        (
            "cardgate_http_requests_total{route=\"/resource/counter\",status=\"200\"}",
            2.0,
        ),
        (
            "cardgate_http_request_duration_seconds_count{route=\"/resource/counter\"}",
            2.0,
        ),
        (
            "cardgate_card_operations_total{operation=\"make_credential\",outcome=\"ok\"}",
            1.0,
        ),
        (
            "cardgate_card_operations_total{operation=\"get_assertion\",outcome=\"ok\"}",
            1.0,
        ),
        ("cardgate_sessions_live", 1.0),
        ("cardgate_card_connected", 1.0),
    ] {
        assert_eq!(sample(text, series), Some(expected), "{series}\n{text}");
    }
    assert!(
        sample(
            text,
            "cardgate_http_requests_total{route=\"/ready\",status=\"503\"}"
        )
        .is_some_and(|n| n >= 1.0),
        "{text}"
    );

    // The server's metrics.
    let scraper = Client::plain(format!("http://127.0.0.1:{}", chain.server_metrics_port));
    let text = scraper.get("/metrics").text;
    assert_eq!(
        sample(
            &text,
            "cardgate_http_requests_total{route=\"/resource/counter\",status=\"200\"}"
        ),
        Some(2.0),
        "{text}"
    );
    let batches = sample(&text, "cardgate_counter_flush_batch_size_count").unwrap_or(0.0);
    let increments = sample(&text, "cardgate_counter_flush_batch_size_sum").unwrap_or(0.0);
    assert!((1.0..=2.0).contains(&batches), "{text}");
    assert_eq!(increments, 2.0, "{text}");
    assert_eq!(sample(&text, "cardgate_counter_value"), Some(2.0), "{text}");

    // With k_server gone, the counter call fails and is counted.
    server.signal("TERM");
    assert!(server.wait_exit(Duration::from_secs(20)).success());
    let failed = client.post("/resource/counter", Some(&token), None);
    assert!((502..=504).contains(&failed.status), "{}", failed.text);
    let code = failed.json["error"].as_str().unwrap_or("").to_owned();
    let text = Client::plain(format!("http://127.0.0.1:{}", chain.proxy_metrics_port))
        .get("/metrics")
        .text;
    assert_eq!(
        sample(
            &text,
            &format!("cardgate_upstream_errors_total{{code=\"{code}\"}}")
        ),
        Some(1.0),
        "{text}"
    );

    proxy.signal("TERM");
    assert!(proxy.wait_exit(Duration::from_secs(20)).success());
}

#[test]
fn check_config_names_key_of_bad_file() {
    let chain = Chain::new();
    chain.write_configs(&ChainOptions::default());
    let proxy_toml = std::fs::read_to_string(chain.path("proxy.toml")).expect("read");
    let check = |role: &str, text: &str| {
        let path = chain.path(&format!("check-{role}.toml"));
        std::fs::write(&path, text).expect("write config");
        chain.run(&[
            role,
            "--check-config",
            "--config",
            path.to_str().expect("utf-8 path"),
        ])
    };

    // Valid files: the resolved config, keys by path only, nothing started.
    let output = check("proxy", &proxy_toml);
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        stdout.contains("configuration and files are valid"),
        "{stdout}"
    );
    assert!(stdout.contains("[metrics]"), "{stdout}");
    assert!(stdout.contains("certs/proxy-client.key"), "{stdout}");
    assert!(!stdout.contains("PRIVATE KEY"), "{stdout}");
    assert!(
        !chain.path("proxy-store").exists(),
        "check must not create the store"
    );
    let server_toml = std::fs::read_to_string(chain.path("server.toml")).expect("read");
    assert!(check("server", &server_toml).status.success());

    std::fs::write(chain.path("certs/garbage.key"), "not a key\n").expect("write");
    let port_taken = format!("[metrics]\nlisten = \"127.0.0.1:{}\"", chain.proxy_port);
    let cases = [
        (
            "key of another certificate",
            proxy_toml.replace("key = \"certs/proxy.key\"", "key = \"certs/server.key\""),
            vec!["config key `tls.key`", "`tls.cert`"],
        ),
        (
            "missing certificate",
            proxy_toml.replace("certs/proxy-client.crt", "certs/absent.crt"),
            vec!["config key `upstream.client_cert`", "absent.crt"],
        ),
        (
            "key file without a key",
            proxy_toml.replace("certs/proxy-client.key", "certs/garbage.key"),
            vec!["config key `upstream.client_key`", "no private key found"],
        ),
        (
            "metrics on the API port",
            proxy_toml.replace("[metrics]\nlisten = \"\"", &port_taken),
            vec!["config key `metrics.listen`", "`listen`"],
        ),
    ];
    for (case, text, expected) in cases {
        assert_ne!(text, proxy_toml, "{case}: the replacement did not apply");
        let output = check("proxy", &text);
        let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
        assert_eq!(output.status.code(), Some(1), "{case}: {stderr}");
        for fragment in expected {
            assert!(
                stderr.contains(fragment),
                "{case}: no {fragment:?} in {stderr}"
            );
        }
    }

    let output = check(
        "server",
        &server_toml.replace(
            "client_ca = \"certs/ca.crt\"",
            "client_ca = \"certs/ca.key\"",
        ),
    );
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(stderr.contains("config key `tls.client_ca`"), "{stderr}");
}

#[test]
fn client_login_shows_progress_and_keeps_token_private() {
    let chain = Chain::new();
    chain.write_configs(&ChainOptions {
        presence: "delay:300".into(),
        ..ChainOptions::default()
    });
    let _server = chain.server();
    let _proxy = chain.proxy();
    chain.client().wait_ready();

    let home = chain.path("client-home");
    let proxy_url = format!("https://localhost:{}", chain.proxy_port);
    let ca = chain.path("certs/ca.crt");
    let client = |args: &[&str]| {
        let output = std::process::Command::new(common::process::BIN)
            .arg("client")
            .args(["--proxy", &proxy_url, "--ca"])
            .arg(&ca)
            .args(args)
            .env("XDG_CONFIG_HOME", &home)
            .env("RUST_LOG", "warn")
            .stdin(std::process::Stdio::null())
            .output()
            .expect("run cardgate client");
        (
            output.status.success(),
            String::from_utf8_lossy(&output.stdout).into_owned(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )
    };

    let (ok, stdout, stderr) = client(&["enroll", "erin", "--display-name", "Erin"]);
    assert!(ok, "enroll: {stdout}{stderr}");
    assert!(stderr.contains("confirm on the ChromeCard"), "{stderr}");

    let (ok, stdout, stderr) = client(&["login", "erin"]);
    assert!(ok, "login: {stdout}{stderr}");
    assert!(stderr.contains("confirm on the ChromeCard"), "{stderr}");
    assert!(stdout.contains("logged in as erin"), "{stdout}");

    let session = home.join("cardgate/session.json");
    let mode = std::fs::metadata(&session)
        .expect("session file")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "session file mode {mode:o}");
    let saved: Value =
        serde_json::from_slice(&std::fs::read(&session).expect("read")).expect("json");
    let token = saved["token"].as_str().expect("token saved").to_owned();
    assert!(!stdout.contains(&token) && !stderr.contains(&token));

    let (ok, stdout, _) = client(&["--json", "counter"]);
    assert!(ok, "{stdout}");
    let reply: Value = serde_json::from_str(stdout.trim()).expect("json output");
    assert_eq!(reply["result"]["value"], 1, "{stdout}");

    let (ok, _, _) = client(&["logout"]);
    assert!(ok);
    let (ok, _, stderr) = client(&["counter"]);
    assert!(!ok);
    assert!(stderr.contains("not logged in"), "{stderr}");
}

#[test]
fn taken_port_fails_start_without_panic() {
    let chain = Chain::new();
    chain.write_configs(&ChainOptions {
        metrics: true,
        ..ChainOptions::default()
    });
    let config = |name: &str| chain.path(name).to_str().expect("utf-8 path").to_string();
    let (proxy_toml, server_toml) = (config("proxy.toml"), config("server.toml"));
    let cases = [
        ("proxy", proxy_toml.as_str(), chain.proxy_port, "`listen`"),
        (
            "proxy",
            proxy_toml.as_str(),
            chain.proxy_metrics_port,
            "`metrics.listen`",
        ),
        (
            "server",
            server_toml.as_str(),
            chain.server_port,
            "cannot listen on",
        ),
    ];
    for (role, path, port, expected) in cases {
        let holder = std::net::TcpListener::bind(("127.0.0.1", port)).expect("take the port");
        let output = chain.run(&[role, "--config", path]);
        drop(holder);
        let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
        assert_eq!(
            output.status.code(),
            Some(1),
            "{role} on port {port}: {stderr}"
        );
        assert!(stderr.contains(expected), "{role} on port {port}: {stderr}");
        assert!(
            !stderr.contains("panicked"),
            "{role} on port {port}: {stderr}"
        );
    }
}

#[test]
fn demo_walkthrough_then_sigint_stop() {
    use std::io::{BufRead, BufReader};
    use std::process::{Command, Stdio};

    let dir = tempfile::tempdir().expect("temp dir");
    let port = common::process::free_tcp_port().to_string();
    let mut demo = Command::new(common::process::BIN)
        .args(["demo", "--dir", dir.path().to_str().expect("utf-8 path")])
        .args(["--port", &port])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start cardgate demo");
    let stdout = demo.stdout.take().expect("demo stdout");
    let (lines, received) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if lines.send(line).is_err() {
                break;
            }
        }
    });

    let deadline = Instant::now() + Duration::from_secs(60);
    let mut output = String::new();
    let finished = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match received.recv_timeout(left) {
            Ok(line) => {
                output.push_str(&line);
                output.push('\n');
                if line.contains("Press Ctrl-C to stop") {
                    break true;
                }
            }
            Err(_) => break false,
        }
    };
    let killed = Command::new("kill")
        .args(["-INT", &demo.id().to_string()])
        .status()
        .expect("run kill");
    let stop_deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = demo.try_wait().expect("wait for demo") {
            break Some(status);
        }
        if Instant::now() > stop_deadline {
            let _ = demo.kill();
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };

    assert!(finished, "the walkthrough did not finish:\n{output}");
    assert!(!output.contains("walkthrough failed"), "{output}");
    assert!(
        output.contains("3. counter     k_server returned"),
        "{output}"
    );
    assert!(output.contains("refused with 401 after logout"), "{output}");
    assert!(killed.success(), "kill -INT failed");
    assert!(
        status.is_some_and(|status| status.success()),
        "demo did not stop cleanly on SIGINT: {status:?}"
    );
}
