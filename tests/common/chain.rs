//! Helpers for tests that run `cardgate server`, `cardgate card-sim` and
//! `cardgate proxy` as processes on loopback and drive them over HTTPS.

use std::net::{TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

/// The cardgate binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_cardgate");

/// A child process that is killed when the test ends, pass or fail.
pub struct Proc {
    pub child: Child,
    pub name: &'static str,
}

impl Proc {
    /// Starts `cardgate ARGS` with its output appended to `log`, so that a
    /// restarted role keeps the lines of its earlier run.
    pub fn spawn(name: &'static str, args: &[&str], log: &Path) -> Proc {
        let log_file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .unwrap();
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

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Sends SIGTERM and waits for a clean exit.
    pub fn terminate(&mut self) {
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

pub fn free_tcp_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub fn free_udp_port() -> u16 {
    UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The files and ports of one chain.
pub struct Chain {
    pub dir: tempfile::TempDir,
    pub server_port: u16,
    pub proxy_port: u16,
    pub card_port: u16,
    pub host_port: u16,
}

impl Chain {
    pub fn new() -> Chain {
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

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    pub fn write_configs(&self, card_device: &str, presence: &str, confirm_timeout_s: u64) {
        self.write_configs_with(card_device, presence, confirm_timeout_s, "");
    }

    /// Writes both configs; `card_keys` are extra TOML lines for the
    /// proxy's `[card]` section.
    pub fn write_configs_with(
        &self,
        card_device: &str,
        presence: &str,
        confirm_timeout_s: u64,
        card_keys: &str,
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
{card_keys}
[store]
path = "proxy-store"
[webauthn]
rp_id = "localhost"
origin = "https://localhost:{proxy}"
"#,
                proxy = self.proxy_port,
                server = self.server_port,
            ),
        )
        .unwrap();
    }

    pub fn udp_device(&self) -> String {
        format!(
            "udp:127.0.0.1:{}@127.0.0.1:{}",
            self.card_port, self.host_port
        )
    }

    pub fn server(&self) -> Proc {
        let config = self.path("server.toml");
        let p = Proc::spawn(
            "server",
            &["server", "--config", config.to_str().unwrap()],
            &self.path("server.log"),
        );
        wait_for_port(self.server_port);
        p
    }

    pub fn card_sim(&self, presence: &str) -> Proc {
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

    pub fn proxy(&self) -> Proc {
        let config = self.path("proxy.toml");
        let p = Proc::spawn(
            "proxy",
            &["proxy", "--config", config.to_str().unwrap()],
            &self.path("proxy.log"),
        );
        wait_for_port(self.proxy_port);
        p
    }

    pub fn client(&self) -> Client {
        Client::new(
            &self.path("certs/ca.crt"),
            None,
            format!("https://localhost:{}", self.proxy_port),
        )
    }

    pub fn logs(&self) -> String {
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

pub fn wait_for_port(port: u16) {
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
pub struct Client {
    pub runtime: actix_rt::Runtime,
    pub client: awc::Client,
    pub base: String,
}

impl Client {
    pub fn new(ca: &Path, client_cert: Option<(&Path, &Path)>, base: String) -> Client {
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

    pub fn post(&self, path: &str, token: Option<&str>, body: Option<Value>) -> (u16, Value) {
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

    pub fn get(&self, path: &str) -> (u16, Value) {
        let url = format!("{}{path}", self.base);
        self.try_get(path)
            .unwrap_or_else(|e| panic!("GET {url}: {e}"))
    }

    pub fn try_get(&self, path: &str) -> Result<(u16, Value), String> {
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

    pub fn enroll(&self, username: &str) -> (u16, Value) {
        self.post(
            "/enroll/register",
            None,
            Some(json!({ "username": username, "display_name": "Test User" })),
        )
    }

    pub fn login(&self, username: &str) -> (u16, Value) {
        self.post(
            "/session/login",
            None,
            Some(json!({ "username": username })),
        )
    }

    pub fn counter(&self, token: &str) -> (u16, Value) {
        self.post("/resource/counter", Some(token), None)
    }
}

pub fn token_of(login: &Value) -> String {
    login["session_token"]
        .as_str()
        .expect("login reply has session_token")
        .to_string()
}

pub fn value_of(reply: &Value) -> u64 {
    reply["value"]
        .as_u64()
        .unwrap_or_else(|| panic!("no counter value in {reply}"))
}

/// Waits until the proxy reports the card as connected.
pub fn wait_for_card(client: &Client) {
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
