//! The whole chain as separate processes on loopback: `cardgate server`,
//! `cardgate card-sim` over UDP and `cardgate proxy`, driven over HTTPS.

use std::net::{TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

const BIN: &str = env!("CARGO_BIN_EXE_cardgate");

/// A child process that is killed when the test ends, pass or fail.
struct Proc {
    child: Child,
    name: &'static str,
}

impl Proc {
    fn spawn(name: &'static str, args: &[&str], log: &Path) -> Proc {
        let log_file = std::fs::File::create(log).unwrap();
        let child = Command::new(BIN)
            .args(args)
            .env("RUST_LOG", "info")
            .stdout(log_file.try_clone().unwrap())
            .stderr(log_file)
            .stdin(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        Proc { child, name }
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Sends SIGTERM and waits for a clean exit.
    fn terminate(&mut self) {
        let pid = self.child.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("{} did not stop within 15 s of SIGTERM", self.name);
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

fn free_tcp_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn free_udp_port() -> u16 {
    UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The files and ports of one chain.
struct Chain {
    dir: tempfile::TempDir,
    server_port: u16,
    proxy_port: u16,
    card_port: u16,
    host_port: u16,
}

impl Chain {
    fn new() -> Chain {
        let dir = tempfile::tempdir().unwrap();
        let status = Command::new(BIN)
            .args(["certs", "init", "--out"])
            .arg(dir.path().join("certs"))
            .status()
            .unwrap();
        assert!(status.success(), "certs init failed");
        Chain {
            dir,
            server_port: free_tcp_port(),
            proxy_port: free_tcp_port(),
            card_port: free_udp_port(),
            host_port: free_udp_port(),
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn write_configs(&self, card_device: &str, presence: &str, confirm_timeout_s: u64) {
        self.write_configs_with(card_device, presence, confirm_timeout_s, "");
    }

    /// Writes both configs; `extra` is appended to the proxy's.
    fn write_configs_with(
        &self,
        card_device: &str,
        presence: &str,
        confirm_timeout_s: u64,
        extra: &str,
    ) {
        std::fs::write(
            self.path("server.toml"),
            format!(
                r#"listen = "127.0.0.1:{}"
[tls]
cert = "certs/server.crt"
key = "certs/server.key"
client_ca = "certs/ca.crt"
[store]
path = "server-store"
[metrics]
listen = ""
"#,
                self.server_port
            ),
        )
        .unwrap();
        std::fs::write(
            self.path("proxy.toml"),
            format!(
                r#"listen = "127.0.0.1:{proxy}"
[tls]
cert = "certs/proxy.crt"
key = "certs/proxy.key"
[upstream]
url = "https://127.0.0.1:{server}"
ca = "certs/ca.crt"
client_cert = "certs/proxy-client.crt"
client_key = "certs/proxy-client.key"
[card]
device = "{card_device}"
sim_presence = "{presence}"
sim_state = "card-inproc"
confirm_timeout_s = {confirm_timeout_s}
[store]
path = "proxy-store"
[webauthn]
rp_id = "localhost"
origin = "https://localhost:{proxy}"
[metrics]
listen = ""
{extra}
"#,
                proxy = self.proxy_port,
                server = self.server_port,
            ),
        )
        .unwrap();
    }

    fn udp_device(&self) -> String {
        format!(
            "udp:127.0.0.1:{}@127.0.0.1:{}",
            self.card_port, self.host_port
        )
    }

    fn server(&self) -> Proc {
        let config = self.path("server.toml");
        let p = Proc::spawn(
            "server",
            &["server", "--config", config.to_str().unwrap()],
            &self.path("server.log"),
        );
        wait_for_port(self.server_port);
        p
    }

    fn card_sim(&self, presence: &str) -> Proc {
        let listen = format!("127.0.0.1:{}", self.card_port);
        let state = self.path("card");
        Proc::spawn(
            "card-sim",
            &[
                "card-sim",
                "--listen",
                &listen,
                "--state",
                state.to_str().unwrap(),
                "--presence",
                presence,
            ],
            &self.path("card-sim.log"),
        )
    }

    fn proxy(&self) -> Proc {
        let config = self.path("proxy.toml");
        let p = Proc::spawn(
            "proxy",
            &["proxy", "--config", config.to_str().unwrap()],
            &self.path("proxy.log"),
        );
        wait_for_port(self.proxy_port);
        p
    }

    fn client(&self) -> Client {
        Client::new(
            &self.path("certs/ca.crt"),
            None,
            format!("https://localhost:{}", self.proxy_port),
        )
    }

    fn logs(&self) -> String {
        ["server.log", "proxy.log", "card-sim.log"]
            .iter()
            .map(|n| {
                format!(
                    "--- {n}\n{}",
                    std::fs::read_to_string(self.path(n)).unwrap_or_default()
                )
            })
            .collect()
    }
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

/// A small blocking HTTPS client on a runtime of its own.
struct Client {
    runtime: actix_rt::Runtime,
    client: awc::Client,
    base: String,
}

impl Client {
    fn new(ca: &Path, client_cert: Option<(&Path, &Path)>, base: String) -> Client {
        let runtime = actix_rt::Runtime::new().unwrap();
        let tls = cardgate::tls::client_config(ca, client_cert).unwrap();
        let client = runtime.block_on(async {
            awc::Client::builder()
                .connector(awc::Connector::new().rustls_0_23(Arc::new(tls)))
                .timeout(Duration::from_secs(30))
                .finish()
        });
        Client {
            runtime,
            client,
            base,
        }
    }

    fn post(&self, path: &str, token: Option<&str>, body: Option<Value>) -> (u16, Value) {
        let url = format!("{}{path}", self.base);
        self.runtime.block_on(async {
            let mut request = self.client.post(&url);
            if let Some(token) = token {
                request = request.bearer_auth(token);
            }
            let sent = match body {
                Some(body) => request.send_json(&body).await,
                None => request.send().await,
            };
            let mut response = sent.unwrap_or_else(|e| panic!("POST {url}: {e}"));
            let bytes = response.body().await.unwrap();
            let value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
            (response.status().as_u16(), value)
        })
    }

    fn get(&self, path: &str) -> (u16, Value) {
        let url = format!("{}{path}", self.base);
        self.try_get(path)
            .unwrap_or_else(|e| panic!("GET {url}: {e}"))
    }

    fn try_get(&self, path: &str) -> Result<(u16, Value), String> {
        let url = format!("{}{path}", self.base);
        self.runtime.block_on(async {
            let mut response = self
                .client
                .get(&url)
                .send()
                .await
                .map_err(|e| e.to_string())?;
            let bytes = response.body().await.map_err(|e| e.to_string())?;
            Ok((
                response.status().as_u16(),
                serde_json::from_slice(&bytes).unwrap_or(Value::Null),
            ))
        })
    }

    fn enroll(&self, username: &str) -> (u16, Value) {
        self.post(
            "/enroll/register",
            None,
            Some(json!({ "username": username, "display_name": "Test User" })),
        )
    }

    fn login(&self, username: &str) -> (u16, Value) {
        self.post(
            "/session/login",
            None,
            Some(json!({ "username": username })),
        )
    }

    fn counter(&self, token: &str) -> (u16, Value) {
        self.post("/resource/counter", Some(token), None)
    }
}

fn token_of(login: &Value) -> String {
    login["session_token"]
        .as_str()
        .expect("login reply has session_token")
        .to_string()
}

fn value_of(reply: &Value) -> u64 {
    reply["value"]
        .as_u64()
        .unwrap_or_else(|| panic!("no counter value in {reply}"))
}

/// Waits until the proxy reports the card as connected.
fn wait_for_card(client: &Client) {
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut last = String::new();
    while Instant::now() < deadline {
        match client.try_get("/health") {
            Ok((200, health)) if health["card"]["state"] == "connected" => return,
            Ok((status, health)) => last = format!("{status} {health}"),
            Err(e) => last = e,
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("the proxy did not connect to the card within 20 s; last answer: {last}");
}

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
