//! The roles as child processes on loopback: config files in a tempdir,
//! free ports, and a blocking HTTPS client for driving them.

use std::net::{TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

pub const BIN: &str = env!("CARGO_BIN_EXE_cardgate");

/// Longest wait for a process to start listening or to exit.
pub const PROCESS_TIMEOUT: Duration = Duration::from_secs(20);

/// A child process that is killed when dropped, pass or fail.
pub struct Proc {
    child: Option<Child>,
    pub name: &'static str,
}

impl Proc {
    pub fn spawn(name: &'static str, args: &[&str], log: &Path) -> Proc {
        let log_file = std::fs::File::create(log).expect("create log file");
        let child = Command::new(BIN)
            .args(args)
            .env("RUST_LOG", "info,cardgate=debug")
            .stdout(log_file.try_clone().expect("clone log file"))
            .stderr(log_file)
            .stdin(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        Proc {
            child: Some(child),
            name,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// Sends `signal` (`TERM`, `INT`) with kill(1).
    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args([format!("-{signal}"), self.pid().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{signal} {} failed", self.pid());
    }

    /// Waits for the process to exit and returns its status.
    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        let child = self.child.as_mut().expect("process still owned");
        while Instant::now() < deadline {
            if let Ok(Some(status)) = child.try_wait() {
                self.child = None;
                return status;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("{} did not exit within {timeout:?}", self.name);
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Some(child) = &mut self.child {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

pub fn free_tcp_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free TCP port")
        .port()
}

pub fn free_udp_port() -> u16 {
    UdpSocket::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .expect("free UDP port")
        .port()
}

pub fn wait_for_port(port: u16) {
    let deadline = Instant::now() + PROCESS_TIMEOUT;
    while Instant::now() < deadline {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("nothing listens on port {port} after {PROCESS_TIMEOUT:?}");
}

/// Settings of one chain that tests vary.
pub struct ChainOptions {
    /// `card.device` of the proxy.
    pub card_device: String,
    /// `card.sim_presence` of the proxy.
    pub presence: String,
    pub confirm_timeout_s: u64,
    pub shutdown_timeout_s: u64,
    /// Whether both roles serve metrics (on free ports).
    pub metrics: bool,
}

impl Default for ChainOptions {
    fn default() -> Self {
        ChainOptions {
            card_device: "sim".into(),
            presence: "approve".into(),
            confirm_timeout_s: 30,
            shutdown_timeout_s: 10,
            metrics: false,
        }
    }
}

/// The files and ports of one server and proxy pair.
pub struct Chain {
    pub dir: tempfile::TempDir,
    pub server_port: u16,
    pub proxy_port: u16,
    pub server_metrics_port: u16,
    pub proxy_metrics_port: u16,
    pub card_port: u16,
    pub host_port: u16,
}

impl Chain {
    /// Creates certificates in a new tempdir and picks free ports.
    pub fn new() -> Chain {
        let dir = tempfile::tempdir().expect("tempdir");
        let status = Command::new(BIN)
            .args(["certs", "init", "--out"])
            .arg(dir.path().join("certs"))
            .status()
            .expect("run certs init");
        assert!(status.success(), "certs init failed");
        Chain {
            dir,
            server_port: free_tcp_port(),
            proxy_port: free_tcp_port(),
            server_metrics_port: free_tcp_port(),
            proxy_metrics_port: free_tcp_port(),
            card_port: free_udp_port(),
            host_port: free_udp_port(),
        }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// `udp:` device spec of a `cardgate card-sim` on this chain's ports.
    pub fn udp_device(&self) -> String {
        format!(
            "udp:127.0.0.1:{}@127.0.0.1:{}",
            self.card_port, self.host_port
        )
    }

    pub fn write_configs(&self, options: &ChainOptions) {
        let metrics = |port: u16| {
            if options.metrics {
                format!("127.0.0.1:{port}")
            } else {
                String::new()
            }
        };
        std::fs::write(
            self.path("server.toml"),
            format!(
                r#"listen = "127.0.0.1:{server}"
[tls]
cert = "certs/server.crt"
key = "certs/server.key"
client_ca = "certs/ca.crt"
[store]
path = "server-store"
[http]
shutdown_timeout_s = {shutdown}
[metrics]
listen = "{metrics}"
"#,
                server = self.server_port,
                shutdown = options.shutdown_timeout_s,
                metrics = metrics(self.server_metrics_port),
            ),
        )
        .expect("write server.toml");
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
connect_timeout_ms = 500
[card]
device = "{device}"
sim_presence = "{presence}"
sim_state = "card-inproc"
confirm_timeout_s = {confirm}
[store]
path = "proxy-store"
[webauthn]
rp_id = "localhost"
origin = "https://localhost:{proxy}"
[http]
shutdown_timeout_s = {shutdown}
[metrics]
listen = "{metrics}"
"#,
                proxy = self.proxy_port,
                server = self.server_port,
                device = options.card_device,
                presence = options.presence,
                confirm = options.confirm_timeout_s,
                shutdown = options.shutdown_timeout_s,
                metrics = metrics(self.proxy_metrics_port),
            ),
        )
        .expect("write proxy.toml");
    }

    pub fn server(&self) -> Proc {
        let config = self.path("server.toml");
        let process = Proc::spawn(
            "server",
            &["server", "--config", config.to_str().expect("utf-8 path")],
            &self.path("server.log"),
        );
        wait_for_port(self.server_port);
        process
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
                state.to_str().expect("utf-8 path"),
                "--presence",
                presence,
            ],
            &self.path("card-sim.log"),
        )
    }

    /// Starts the proxy and waits until it listens. Each start appends to
    /// `proxy.log`'s numbered siblings so earlier logs survive a restart.
    pub fn proxy(&self) -> Proc {
        let config = self.path("proxy.toml");
        let mut log = self.path("proxy.log");
        let mut index = 1;
        while log.exists() {
            index += 1;
            log = self.path(&format!("proxy.{index}.log"));
        }
        let process = Proc::spawn(
            "proxy",
            &["proxy", "--config", config.to_str().expect("utf-8 path")],
            &log,
        );
        wait_for_port(self.proxy_port);
        process
    }

    /// The proxy's client as k_client would use it.
    pub fn client(&self) -> Client {
        Client::new(
            &self.path("certs/ca.crt"),
            None,
            format!("https://localhost:{}", self.proxy_port),
        )
    }

    /// A client of k_server with the proxy's client certificate.
    pub fn server_client(&self) -> Client {
        let cert = self.path("certs/proxy-client.crt");
        let key = self.path("certs/proxy-client.key");
        Client::new(
            &self.path("certs/ca.crt"),
            Some((&cert, &key)),
            format!("https://localhost:{}", self.server_port),
        )
    }

    /// Every log of this chain, for failure messages.
    pub fn logs(&self) -> String {
        let mut names: Vec<PathBuf> = std::fs::read_dir(self.dir.path())
            .map(|entries| {
                entries
                    .filter_map(Result::ok)
                    .map(|e| e.path())
                    .filter(|p| p.extension().is_some_and(|e| e == "log"))
                    .collect()
            })
            .unwrap_or_default();
        names.sort();
        names
            .iter()
            .map(|path| {
                format!(
                    "--- {}\n{}",
                    path.display(),
                    std::fs::read_to_string(path).unwrap_or_default()
                )
            })
            .collect()
    }

    /// Runs `cardgate ARGS` to completion.
    pub fn run(&self, args: &[&str]) -> Output {
        Command::new(BIN)
            .args(args)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .output()
            .expect("run cardgate")
    }
}

/// A small blocking HTTP(S) client on a runtime of its own.
pub struct Client {
    pub runtime: actix_rt::Runtime,
    pub client: awc::Client,
    pub base: String,
}

/// A reply: status, response headers, and the body as JSON (Null when it
/// is not JSON) and as text.
pub struct Reply {
    pub status: u16,
    pub headers: awc::http::header::HeaderMap,
    pub json: Value,
    pub text: String,
}

impl Client {
    pub fn new(ca: &Path, client_cert: Option<(&Path, &Path)>, base: String) -> Client {
        let runtime = actix_rt::Runtime::new().expect("runtime");
        let tls = cardgate::tls::client_config(ca, client_cert).expect("client TLS config");
        let client = runtime.block_on(async {
            awc::Client::builder()
                .connector(awc::Connector::new().rustls_0_23(Arc::new(tls)))
                .timeout(Duration::from_secs(40))
                .finish()
        });
        Client {
            runtime,
            client,
            base,
        }
    }

    /// A plain-HTTP client, for the metrics listeners.
    pub fn plain(base: String) -> Client {
        let runtime = actix_rt::Runtime::new().expect("runtime");
        let client = runtime.block_on(async {
            awc::Client::builder()
                .timeout(Duration::from_secs(10))
                .finish()
        });
        Client {
            runtime,
            client,
            base,
        }
    }

    pub fn request(
        &self,
        method: awc::http::Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> Result<Reply, String> {
        let url = format!("{}{path}", self.base);
        self.runtime.block_on(async {
            let mut request = self.client.request(method, &url);
            if let Some(token) = token {
                request = request.bearer_auth(token);
            }
            let sent = match body {
                Some(body) => request.send_json(&body).await,
                None => request.send().await,
            };
            let mut response = sent.map_err(|e| format!("{url}: {e}"))?;
            let bytes = response
                .body()
                .limit(16 << 20)
                .await
                .map_err(|e| format!("{url}: {e}"))?;
            Ok(Reply {
                status: response.status().as_u16(),
                headers: response.headers().clone(),
                json: serde_json::from_slice(&bytes).unwrap_or(Value::Null),
                text: String::from_utf8_lossy(&bytes).into_owned(),
            })
        })
    }

    pub fn get(&self, path: &str) -> Reply {
        self.request(awc::http::Method::GET, path, None, None)
            .unwrap_or_else(|e| panic!("GET {e}"))
    }

    pub fn post(&self, path: &str, token: Option<&str>, body: Option<Value>) -> Reply {
        self.request(awc::http::Method::POST, path, token, body)
            .unwrap_or_else(|e| panic!("POST {e}"))
    }

    pub fn enroll(&self, username: &str) -> Reply {
        self.post(
            "/enroll/register",
            None,
            Some(json!({ "username": username, "display_name": "Test User" })),
        )
    }

    pub fn login(&self, username: &str) -> Reply {
        self.post(
            "/session/login",
            None,
            Some(json!({ "username": username })),
        )
    }

    /// Waits until `GET /ready` answers 200.
    pub fn wait_ready(&self) {
        let deadline = Instant::now() + PROCESS_TIMEOUT;
        let mut last = String::new();
        while Instant::now() < deadline {
            match self.request(awc::http::Method::GET, "/ready", None, None) {
                Ok(reply) if reply.status == 200 => return,
                Ok(reply) => last = format!("{} {}", reply.status, reply.text),
                Err(e) => last = e,
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!(
            "{} is not ready after {PROCESS_TIMEOUT:?}; last answer: {last}",
            self.base
        );
    }
}

/// The session token of a login reply.
pub fn token_of(login: &Reply) -> String {
    login.json["session_token"]
        .as_str()
        .unwrap_or_else(|| panic!("no session_token in {}", login.text))
        .to_owned()
}
