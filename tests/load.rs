//! Correctness under load: `cardgate server` and `cardgate proxy` (with the
//! in-process simulated card) as processes on loopback, driven by
//! `cardgate loadtest --json` and by parallel logins.
//!
//! Sized for CI on two cores: the largest run sends 4,000 counter calls.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::future::join_all;
use serde_json::{json, Value};

const BIN: &str = env!("CARGO_BIN_EXE_cardgate");

/// Maximum duration of a `cardgate loadtest` run before the test kills it.
const LOADTEST_DEADLINE: Duration = Duration::from_secs(240);

/// A child process that is killed when the test ends, pass or fail.
struct Proc {
    child: Child,
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_tcp_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .expect("bind port 0")
        .local_addr()
        .expect("local address")
        .port()
}

fn wait_for_port(port: u16) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("nothing listens on port {port} after 20 s");
}

/// k_server and k_proxy with an in-process simulated card, in a tempdir.
struct Chain {
    dir: tempfile::TempDir,
    proxy_port: u16,
    _server: Proc,
    _proxy: Proc,
}

impl Chain {
    /// Starts the chain. The simulated person at the card responds as
    /// `presence` sets (`approve`, `delay:MS`, …).
    fn start(presence: &str) -> Chain {
        let dir = tempfile::tempdir().expect("tempdir");
        let status = Command::new(BIN)
            .args(["certs", "init", "--out"])
            .arg(dir.path().join("certs"))
            .stdout(Stdio::null())
            .status()
            .expect("run certs init");
        assert!(status.success(), "certs init failed");

        let server_port = free_tcp_port();
        let proxy_port = free_tcp_port();
        std::fs::write(
            dir.path().join("server.toml"),
            format!(
                r#"listen = "127.0.0.1:{server_port}"
[tls]
cert = "certs/server.crt"
key = "certs/server.key"
client_ca = "certs/ca.crt"
[store]
path = "server-store"
[metrics]
listen = ""
"#
            ),
        )
        .expect("write server.toml");
        // The queue is longer than the default so that the parallel logins
        // all wait for the card instead of getting 503, and the per-address
        // login limit is lifted because every user logs in from loopback.
        std::fs::write(
            dir.path().join("proxy.toml"),
            format!(
                r#"listen = "127.0.0.1:{proxy_port}"
[tls]
cert = "certs/proxy.crt"
key = "certs/proxy.key"
[upstream]
url = "https://127.0.0.1:{server_port}"
ca = "certs/ca.crt"
client_cert = "certs/proxy-client.crt"
client_key = "certs/proxy-client.key"
[card]
device = "sim"
sim_presence = "{presence}"
sim_state = "card"
queue_limit = 64
[store]
path = "proxy-store"
[webauthn]
rp_id = "localhost"
origin = "https://localhost:{proxy_port}"
[metrics]
listen = ""
# Hundreds of users log in from this one address on purpose.
[limits]
address_burst = 100000
"#
            ),
        )
        .expect("write proxy.toml");

        let spawn = |role: &str| {
            let log =
                std::fs::File::create(dir.path().join(format!("{role}.log"))).expect("create log");
            let child = Command::new(BIN)
                .args([role, "--config"])
                .arg(dir.path().join(format!("{role}.toml")))
                .env("RUST_LOG", "warn")
                .stdout(log.try_clone().expect("clone log"))
                .stderr(log)
                .stdin(Stdio::null())
                .spawn()
                .unwrap_or_else(|e| panic!("cannot start {role}: {e}"));
            Proc { child }
        };
        let server = spawn("server");
        wait_for_port(server_port);
        let proxy = spawn("proxy");
        wait_for_port(proxy_port);

        let chain = Chain {
            dir,
            proxy_port,
            _server: server,
            _proxy: proxy,
        };
        chain.wait_for_card();
        chain
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn base(&self) -> String {
        format!("https://localhost:{}", self.proxy_port)
    }

    fn logs(&self) -> String {
        ["server.log", "proxy.log"]
            .iter()
            .map(|name| {
                let text = std::fs::read_to_string(self.path(name)).unwrap_or_default();
                format!("--- {name}\n{text}")
            })
            .collect()
    }

    fn client(&self, connections: usize) -> awc::Client {
        let tls = cardgate::tls::client_config(&self.path("certs/ca.crt"), None)
            .expect("client TLS config");
        awc::Client::builder()
            .connector(
                awc::Connector::new()
                    .rustls_0_23(Arc::new(tls))
                    .limit(connections),
            )
            .timeout(Duration::from_secs(30))
            .finish()
    }

    fn wait_for_card(&self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut last = String::new();
        while Instant::now() < deadline {
            match self.run(|client, base| async move { get(&client, &base, "/health").await }) {
                (200, health) if health["card"]["state"] == "connected" => return,
                (status, health) => last = format!("{status} {health}"),
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("the proxy did not connect to the card within 20 s; last answer: {last}");
    }

    /// Runs `work` with a fresh client on a fresh actix system.
    fn run<F, Fut, T>(&self, work: F) -> T
    where
        F: FnOnce(awc::Client, String) -> Fut,
        Fut: std::future::Future<Output = T>,
    {
        actix_rt::System::new().block_on(async {
            let client = self.client(256);
            work(client, self.base()).await
        })
    }

    /// Reads the simulated card's signature counter, which advances once
    /// per approved makeCredential or getAssertion.
    fn card_sign_count(&self) -> u64 {
        let path = self
            .path("card")
            .join(cardgate::ctap::sim::authenticator::SIGN_COUNT_FILE);
        let text = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
        text.trim()
            .parse()
            .unwrap_or_else(|e| panic!("{} is not a number ({e}): {text:?}", path.display()))
    }

    /// Runs `cardgate loadtest --json` against the proxy and returns its exit
    /// status and report.
    fn loadtest(&self, users: usize, requests: usize, max_workers: usize) -> (ExitStatus, Value) {
        let child = Command::new(BIN)
            .args(["loadtest", "--json", "--proxy", &self.base(), "--ca"])
            .arg(self.path("certs/ca.crt"))
            .args(["--users", &users.to_string()])
            .args(["--requests", &requests.to_string()])
            .args(["--max-workers", &max_workers.to_string()])
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start cardgate loadtest");
        let output = wait_with_deadline(child, LOADTEST_DEADLINE);
        let stdout = String::from_utf8_lossy(&output.stdout);
        let report = serde_json::from_str(&stdout).unwrap_or_else(|e| {
            panic!(
                "loadtest printed no JSON report ({e}); stdout:\n{stdout}\nstderr:\n{}\n{}",
                String::from_utf8_lossy(&output.stderr),
                self.logs()
            )
        });
        (output.status, report)
    }
}

/// Waits for `child` to exit, killing it after `deadline`.
fn wait_with_deadline(mut child: Child, deadline: Duration) -> Output {
    let started = Instant::now();
    loop {
        match child.try_wait() {
            Ok(Some(_)) => return child.wait_with_output().expect("collect output"),
            Ok(None) if started.elapsed() < deadline => {
                std::thread::sleep(Duration::from_millis(100))
            }
            _ => {
                let _ = child.kill();
                let output = child.wait_with_output().expect("collect output");
                panic!(
                    "loadtest did not finish within {deadline:?}; stderr:\n{}",
                    String::from_utf8_lossy(&output.stderr)
                );
            }
        }
    }
}

async fn get(client: &awc::Client, base: &str, path: &str) -> (u16, Value) {
    match client.get(format!("{base}{path}")).send().await {
        Ok(mut response) => {
            let body = response.body().await.unwrap_or_default();
            let value = serde_json::from_slice(&body).unwrap_or(Value::Null);
            (response.status().as_u16(), value)
        }
        Err(e) => (0, json!(e.to_string())),
    }
}

async fn post(
    client: &awc::Client,
    base: &str,
    path: &str,
    token: Option<&str>,
    body: Value,
) -> (u16, Value) {
    let mut request = client.post(format!("{base}{path}"));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    match request.send_json(&body).await {
        Ok(mut response) => {
            let body = response.body().await.unwrap_or_default();
            let value = serde_json::from_slice(&body).unwrap_or(Value::Null);
            (response.status().as_u16(), value)
        }
        Err(e) => (0, json!(e.to_string())),
    }
}

/// Checks a loadtest report of `total` calls that all succeeded with
/// unique, contiguous values.
fn assert_clean_report(status: ExitStatus, report: &Value, total: u64, logs: impl Fn() -> String) {
    assert!(
        status.success(),
        "loadtest exited with {status}: {report}\n{}",
        logs()
    );
    assert_eq!(report["passed"], true, "{report}");
    assert_eq!(report["requests"], total, "{report}");
    assert_eq!(report["succeeded"], total, "{report}");
    assert_eq!(report["failed"], json!({}), "{report}");
    assert_eq!(report["duplicates"], 0, "{report}");
    assert_eq!(report["gaps"], 0, "{report}");

    let first = report["first_value"].as_u64().expect("first_value");
    let last = report["last_value"].as_u64().expect("last_value");
    assert_eq!(
        last - first + 1,
        total,
        "values must span exactly {total}: {report}"
    );
}

#[test]
fn loadtest_all_25_in_flight_passes() {
    let chain = Chain::start("approve");

    let (status, report) = chain.loadtest(5, 5, 0);

    assert_clean_report(status, &report, 25, || chain.logs());
    assert_eq!(report["users"], 5, "{report}");
}

#[test]
fn loadtest_200_users_200_in_flight_passes() {
    let chain = Chain::start("approve");

    let (status, report) = chain.loadtest(200, 20, 200);

    assert_clean_report(status, &report, 4000, || chain.logs());
    assert_eq!(report["users"], 200, "{report}");
}

#[test]
fn loadtest_fails_without_sessions() {
    // The simulated person declines, so enrolling the first user fails.
    let chain = Chain::start("deny");

    let output = Command::new(BIN)
        .args(["loadtest", "--json", "--proxy", &chain.base(), "--ca"])
        .arg(chain.path("certs/ca.crt"))
        .args(["--users", "1", "--requests", "1"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map(|child| wait_with_deadline(child, LOADTEST_DEADLINE))
        .expect("start cardgate loadtest");

    assert!(
        !output.status.success(),
        "loadtest must fail without sessions"
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("cannot enroll loadtest-0"), "{stderr}");
    let report: Value = serde_json::from_slice(&output.stdout).expect("JSON on stdout");
    assert_eq!(report["passed"], false, "{report}");
}

#[test]
fn parallel_logins_all_get_sessions() {
    const USERS: usize = 24;
    let chain = Chain::start("approve");

    let (enrolled, logins, counts) = chain.run(|client, base| async move {
        let mut enrolled = Vec::new();
        for i in 0..USERS {
            let body = json!({ "username": format!("user-{i}") });
            enrolled.push(post(&client, &base, "/enroll/register", None, body).await);
        }

        let logins = join_all((0..USERS).map(|i| {
            let body = json!({ "username": format!("user-{i}") });
            let (client, base) = (&client, &base);
            async move { post(client, base, "/session/login", None, body).await }
        }))
        .await;

        let mut counts = Vec::new();
        for (_, login) in &logins {
            let token = login["session_token"].as_str().unwrap_or_default();
            counts.push(post(&client, &base, "/resource/counter", Some(token), json!({})).await);
        }
        (enrolled, logins, counts)
    });

    for (status, body) in &enrolled {
        assert_eq!(*status, 200, "enroll: {body}\n{}", chain.logs());
    }
    let mut tokens = std::collections::HashSet::new();
    for (i, (status, body)) in logins.iter().enumerate() {
        assert_eq!(*status, 200, "login of user-{i}: {body}\n{}", chain.logs());
        assert_eq!(body["username"], format!("user-{i}"), "{body}");
        tokens.insert(
            body["session_token"]
                .as_str()
                .unwrap_or_default()
                .to_string(),
        );
    }
    assert_eq!(tokens.len(), USERS, "every login gets its own token");
    for (i, (status, body)) in counts.iter().enumerate() {
        assert_eq!(*status, 200, "counter with the session of user-{i}: {body}");
        assert_eq!(body["session"]["username"], format!("user-{i}"), "{body}");
    }
    let (_, health) = chain.run(|client, base| async move { get(&client, &base, "/health").await });
    assert_eq!(health["sessions"], USERS, "{health}");
}

#[test]
fn login_burst_one_session_per_confirmation() {
    const BURST: usize = 10;
    const ROUNDS: usize = 3;
    // The simulated person confirms after 1 s, so every login of a burst
    // reaches the proxy while the first one waits on the card.
    let chain = Chain::start("delay:1000");
    let (status, body) = chain.run(|client, base| async move {
        let body = json!({ "username": "burst" });
        post(&client, &base, "/enroll/register", None, body).await
    });
    assert_eq!(status, 200, "enroll: {body}\n{}", chain.logs());

    for round in 1..=ROUNDS {
        let confirmations_before = chain.card_sign_count();
        let results = chain.run(|client, base| async move {
            // Open the connections first, so that the burst is not spread
            // out by TLS handshakes.
            join_all((0..BURST).map(|_| get(&client, &base, "/health"))).await;
            join_all((0..BURST).map(|_| {
                let body = json!({ "username": "burst" });
                post(&client, &base, "/session/login", None, body)
            }))
            .await
        });
        let confirmations = chain.card_sign_count() - confirmations_before;

        let sessions: Vec<_> = results
            .iter()
            .filter(|(status, _)| *status == 200)
            .collect();
        let conflicts = results.iter().filter(|(status, _)| *status == 409).count();
        assert_eq!(
            sessions.len(),
            1,
            "round {round}: one login gets a session: {results:?}\n{}",
            chain.logs()
        );
        assert_eq!(
            conflicts,
            BURST - 1,
            "round {round}: the rest get 409: {results:?}"
        );
        assert_eq!(confirmations, 1, "round {round}: the card confirmed once");
        for (_, body) in results.iter().filter(|(status, _)| *status == 409) {
            assert_eq!(body["error"], "conflict", "round {round}: {body}");
        }
    }
    let (_, health) = chain.run(|client, base| async move { get(&client, &base, "/health").await });
    assert_eq!(health["sessions"], ROUNDS, "{health}");
}
