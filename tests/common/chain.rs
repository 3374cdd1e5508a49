//! The whole chain as separate processes on loopback: `cardgate server`,
//! `cardgate card-sim` over UDP and `cardgate proxy`, with blocking and raw
//! TLS clients to drive them.
//!
//! Every process writes its log to a file in the chain's tempdir, in append
//! mode, so the log of a restarted process keeps what the earlier one wrote.

use std::fs::OpenOptions;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

/// The `cardgate` binary built for these tests.
pub const BIN: &str = env!("CARGO_BIN_EXE_cardgate");

/// Maximum wait for a process to listen or for the card to connect.
pub const START_TIMEOUT: Duration = Duration::from_secs(20);

/// Timeout of one request from the blocking client.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// A child process that is killed when the test ends, pass or fail.
pub struct Proc {
    child: Child,
    name: &'static str,
}

impl Proc {
    /// Starts `cardgate ARGS` with `RUST_LOG` (default `info`), appending
    /// its output to `log`.
    pub fn spawn(name: &'static str, args: &[&str], log: &Path, rust_log: &str) -> Proc {
        let log_file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .unwrap_or_else(|e| panic!("cannot open {}: {e}", log.display()));
        let child = Command::new(BIN)
            .args(args)
            .env("RUST_LOG", rust_log)
            .stdout(log_file.try_clone().expect("clone log handle"))
            .stderr(log_file)
            .stdin(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        Proc { child, name }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends SIGKILL and reaps the process.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Sends `signal` (such as `STOP` or `CONT`) to this process only.
    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args([&format!("-{signal}"), &self.child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{signal} {} failed", self.name);
    }

    /// Sends SIGTERM and waits up to 15 s for the process to exit.
    pub fn terminate(&mut self) -> ExitStatus {
        self.signal("TERM");
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("{} did not stop within 15 s of SIGTERM", self.name);
    }

    /// Returns the exit status if the process has ended.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

pub fn free_tcp_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind a free TCP port")
        .port()
}

pub fn free_udp_port() -> u16 {
    UdpSocket::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .expect("bind a free UDP port")
        .port()
}

/// Waits until something accepts TCP connections on 127.0.0.1:`port`.
pub fn wait_for_port(port: u16) {
    let deadline = Instant::now() + START_TIMEOUT;
    while Instant::now() < deadline {
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("nothing listens on port {port} after {START_TIMEOUT:?}");
}

/// Keys of the proxy's config that tests change. Each `*_keys` string is
/// inserted into its section; `extra` is appended and may open sections
/// such as `[http]` or `[limits]`.
#[derive(Debug, Clone)]
pub struct ProxySettings {
    pub card_device: String,
    pub presence: String,
    pub confirm_timeout_s: u64,
    /// Folder of the proxy's sled store.
    pub store: PathBuf,
    pub upstream_keys: String,
    pub card_keys: String,
    pub extra: String,
}

/// The files and ports of one chain.
pub struct Chain {
    pub dir: tempfile::TempDir,
    pub server_port: u16,
    pub proxy_port: u16,
    pub card_port: u16,
    pub host_port: u16,
    /// `RUST_LOG` of every process started by this chain.
    pub rust_log: String,
}

impl Chain {
    /// Creates a tempdir with fresh certificates and picks free ports.
    pub fn new() -> Chain {
        let dir = tempfile::tempdir().expect("create tempdir");
        let output = Command::new(BIN)
            .args(["certs", "init", "--out"])
            .arg(dir.path().join("certs"))
            .output()
            .expect("run certs init");
        assert!(output.status.success(), "certs init failed: {output:?}");
        Chain {
            dir,
            server_port: free_tcp_port(),
            proxy_port: free_tcp_port(),
            card_port: free_udp_port(),
            host_port: free_udp_port(),
            rust_log: "info".into(),
        }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Proxy settings with the in-process simulated card, its store in the
    /// tempdir and everything else at the defaults.
    pub fn proxy_settings(&self) -> ProxySettings {
        ProxySettings {
            card_device: "sim".into(),
            presence: "approve".into(),
            confirm_timeout_s: 30,
            store: self.path("proxy-store"),
            upstream_keys: String::new(),
            card_keys: String::new(),
            extra: String::new(),
        }
    }

    /// Writes the server's config with its store at `store`; `extra` is
    /// appended (for example an `[http]` section).
    pub fn write_server_config(&self, store: &Path, extra: &str) {
        let text = format!(
            r#"listen = "127.0.0.1:{port}"
[tls]
cert = "certs/server.crt"
key = "certs/server.key"
client_ca = "certs/ca.crt"
[store]
path = "{store}"
[metrics]
listen = ""
{extra}
"#,
            port = self.server_port,
            store = store.display(),
        );
        std::fs::write(self.path("server.toml"), text).expect("write server.toml");
    }

    pub fn write_proxy_config(&self, settings: &ProxySettings) {
        let text = format!(
            r#"listen = "127.0.0.1:{proxy}"
[tls]
cert = "certs/proxy.crt"
key = "certs/proxy.key"
[upstream]
url = "https://127.0.0.1:{server}"
ca = "certs/ca.crt"
client_cert = "certs/proxy-client.crt"
client_key = "certs/proxy-client.key"
{upstream_keys}
[card]
device = "{device}"
sim_presence = "{presence}"
sim_state = "card-inproc"
confirm_timeout_s = {confirm}
{card_keys}
[store]
path = "{store}"
[webauthn]
rp_id = "localhost"
origin = "https://localhost:{proxy}"
[metrics]
listen = ""
{extra}
"#,
            proxy = self.proxy_port,
            server = self.server_port,
            upstream_keys = settings.upstream_keys,
            device = settings.card_device,
            presence = settings.presence,
            confirm = settings.confirm_timeout_s,
            card_keys = settings.card_keys,
            store = settings.store.display(),
            extra = settings.extra,
        );
        std::fs::write(self.path("proxy.toml"), text).expect("write proxy.toml");
    }

    /// Writes both configs with default settings and the in-process card.
    pub fn write_default_configs(&self) {
        self.write_configs("sim", "approve", 30);
    }

    /// Writes both configs, the proxy's with this card and simulated
    /// person.
    pub fn write_configs(&self, card_device: &str, presence: &str, confirm_timeout_s: u64) {
        self.write_configs_with(card_device, presence, confirm_timeout_s, "");
    }

    /// Writes both configs; `extra` is appended to the proxy's.
    pub fn write_configs_with(
        &self,
        card_device: &str,
        presence: &str,
        confirm_timeout_s: u64,
        extra: &str,
    ) {
        self.write_server_config(&self.path("server-store"), "");
        self.write_proxy_config(&ProxySettings {
            card_device: card_device.into(),
            presence: presence.into(),
            confirm_timeout_s,
            extra: extra.into(),
            ..self.proxy_settings()
        });
    }

    /// Returns the `card.device` value for this chain's `card-sim` over UDP.
    pub fn udp_device(&self) -> String {
        format!(
            "udp:127.0.0.1:{}@127.0.0.1:{}",
            self.card_port, self.host_port
        )
    }

    /// Starts the server and waits until it listens.
    pub fn server(&self) -> Proc {
        let config = self.path("server.toml");
        let process = Proc::spawn(
            "server",
            &["server", "--config", path_str(&config)],
            &self.path("server.log"),
            &self.rust_log,
        );
        wait_for_port(self.server_port);
        process
    }

    /// Starts `card-sim` on the chain's UDP port with its state in `card/`.
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
                path_str(&state),
                "--presence",
                presence,
            ],
            &self.path("card-sim.log"),
            &self.rust_log,
        )
    }

    /// Starts the proxy and waits until it listens.
    pub fn proxy(&self) -> Proc {
        let config = self.path("proxy.toml");
        let process = Proc::spawn(
            "proxy",
            &["proxy", "--config", path_str(&config)],
            &self.path("proxy.log"),
            &self.rust_log,
        );
        wait_for_port(self.proxy_port);
        process
    }

    /// Returns a client of the proxy, as a browser or `curl` on k_client is.
    pub fn client(&self) -> Client {
        Client::new(
            &self.path("certs/ca.crt"),
            None,
            format!("https://localhost:{}", self.proxy_port),
        )
    }

    /// Returns a client of the server that presents the proxy's client
    /// certificate.
    pub fn server_client(&self) -> Client {
        let cert = self.path("certs/proxy-client.crt");
        let key = self.path("certs/proxy-client.key");
        Client::new(
            &self.path("certs/ca.crt"),
            Some((&cert, &key)),
            format!("https://localhost:{}", self.server_port),
        )
    }

    /// Returns every process log of this chain, for failure messages.
    pub fn logs(&self) -> String {
        ["server.log", "proxy.log", "card-sim.log"]
            .iter()
            .map(|name| format!("--- {name}\n{}", self.log(name)))
            .collect()
    }

    pub fn log(&self, name: &str) -> String {
        std::fs::read_to_string(self.path(name)).unwrap_or_default()
    }
}

pub fn path_str(path: &Path) -> &str {
    path.to_str().expect("tempdir paths are UTF-8")
}

/// A small blocking HTTPS client on a runtime of its own.
pub struct Client {
    pub runtime: actix_rt::Runtime,
    pub client: awc::Client,
    pub base: String,
}

impl Client {
    /// Builds a client that trusts `ca` and, with `client_cert`, presents it.
    pub fn new(ca: &Path, client_cert: Option<(&Path, &Path)>, base: String) -> Client {
        let runtime = actix_rt::Runtime::new().expect("runtime");
        let tls = cardgate::tls::client_config(ca, client_cert).expect("client TLS config");
        let client = runtime.block_on(async {
            let connector = awc::Connector::new().rustls_0_23(Arc::new(tls)).limit(256);
            awc::Client::builder()
                .connector(connector)
                .timeout(REQUEST_TIMEOUT)
                .finish()
        });
        Client {
            runtime,
            client,
            base,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// Sends a POST with an optional bearer token and JSON body; a failed
    /// connection is an `Err` with its message.
    pub fn try_post(
        &self,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> Result<(u16, Value), String> {
        let url = self.url(path);
        self.runtime.block_on(async {
            let mut request = self.client.post(&url);
            if let Some(token) = token {
                request = request.bearer_auth(token);
            }
            let sent = match body {
                Some(body) => request.send_json(&body).await,
                None => request.send().await,
            };
            let mut response = sent.map_err(|e| e.to_string())?;
            let bytes = response.body().await.map_err(|e| e.to_string())?;
            let value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
            Ok((response.status().as_u16(), value))
        })
    }

    pub fn post(&self, path: &str, token: Option<&str>, body: Option<Value>) -> (u16, Value) {
        self.try_post(path, token, body)
            .unwrap_or_else(|e| panic!("POST {}: {e}", self.url(path)))
    }

    pub fn try_get(&self, path: &str) -> Result<(u16, Value), String> {
        let url = self.url(path);
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

    pub fn get(&self, path: &str) -> (u16, Value) {
        self.try_get(path)
            .unwrap_or_else(|e| panic!("GET {}: {e}", self.url(path)))
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

    pub fn enrolled(&self, username: &str) -> bool {
        let (status, body) = self.get(&format!("/enroll/status?username={username}"));
        assert_eq!(status, 200, "enroll status of {username}: {body}");
        body["enrolled"]
            .as_bool()
            .unwrap_or_else(|| panic!("no `enrolled` in {body}"))
    }
}

/// Waits for the card, enrolls `username`, logs in and returns the session
/// token.
pub fn enroll_and_log_in(client: &Client, username: &str) -> String {
    wait_for_card(client);
    let (status, reply) = client.enroll(username);
    assert_eq!(status, 200, "enrolling {username}: {reply}");
    let (status, login) = client.login(username);
    assert_eq!(status, 200, "logging in {username}: {login}");
    token_of(&login)
}

pub fn token_of(login: &Value) -> String {
    login["session_token"]
        .as_str()
        .unwrap_or_else(|| panic!("login reply has no session_token: {login}"))
        .to_string()
}

pub fn value_of(reply: &Value) -> u64 {
    reply["value"]
        .as_u64()
        .unwrap_or_else(|| panic!("no counter value in {reply}"))
}

/// Waits until the proxy reports the card as connected.
pub fn wait_for_card(client: &Client) {
    let deadline = Instant::now() + START_TIMEOUT;
    let mut last = String::new();
    while Instant::now() < deadline {
        match client.try_get("/health") {
            Ok((200, health)) if health["card"]["state"] == "connected" => return,
            Ok((status, health)) => last = format!("{status} {health}"),
            Err(e) => last = e,
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("the proxy did not connect to the card within {START_TIMEOUT:?}; last answer: {last}");
}

/// An HTTP response read off a raw connection.
#[derive(Debug)]
pub struct RawResponse {
    pub status: u16,
    pub head: String,
    pub body: Vec<u8>,
}

impl RawResponse {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }
}

/// Opens a TLS connection to 127.0.0.1:`port` that verifies the server's
/// certificate for `localhost` against `ca`, and completes the handshake.
pub fn tls_connect(
    ca: &Path,
    client_cert: Option<(&Path, &Path)>,
    port: u16,
) -> std::io::Result<rustls::StreamOwned<rustls::ClientConnection, TcpStream>> {
    let config = cardgate::tls::client_config(ca, client_cert).map_err(std::io::Error::other)?;
    let name = rustls_pki_types::ServerName::try_from("localhost").expect("server name");
    let connection =
        rustls::ClientConnection::new(Arc::new(config), name).map_err(std::io::Error::other)?;
    let tcp = TcpStream::connect(("127.0.0.1", port))?;
    tcp.set_read_timeout(Some(Duration::from_secs(10)))?;
    tcp.set_write_timeout(Some(Duration::from_secs(10)))?;
    let mut stream = rustls::StreamOwned::new(connection, tcp);
    while stream.conn.is_handshaking() {
        stream.conn.complete_io(&mut stream.sock)?;
    }
    Ok(stream)
}

/// Sends `request` as is over a new TLS connection and reads the response
/// until the server closes the connection. `request` should carry
/// `Connection: close`.
pub fn raw_exchange(ca: &Path, port: u16, request: &[u8]) -> std::io::Result<RawResponse> {
    let mut stream = tls_connect(ca, None, port)?;
    stream.write_all(request)?;
    stream.flush()?;
    let mut bytes = Vec::new();
    match stream.read_to_end(&mut bytes) {
        Ok(_) => {}
        // A server that closes without close_notify after a complete
        // response is common and harmless here.
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof && !bytes.is_empty() => {}
        Err(e) => return Err(e),
    }
    parse_response(&bytes)
}

/// Parses one HTTP/1.1 response with a Content-Length or no body.
pub fn parse_response(bytes: &[u8]) -> std::io::Result<RawResponse> {
    let invalid = |what: String| std::io::Error::new(std::io::ErrorKind::InvalidData, what);
    let split = bytes
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| invalid(format!("no end of head in {} bytes", bytes.len())))?;
    let head = String::from_utf8_lossy(&bytes[..split]).into_owned();
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse::<u16>().ok())
        .ok_or_else(|| invalid(format!("no status in {head:?}")))?;
    let body = bytes[split + 4..].to_vec();
    Ok(RawResponse { status, head, body })
}
