//! Resident memory (VmRSS) of the proxy with many live sessions.
//!
//! Runs k_proxy in this process with the in-process simulated card, and
//! k_server as a child process (`cardgate server`, next to this example in
//! the target folder). Sessions are created through the sessions actor's
//! `Create` message, the same message a login sends after the card has
//! confirmed, because 100,000 card logins would take hours. The proxy has
//! no route that creates sessions without the card.
//!
//! After the last step every session makes one protected call over HTTPS
//! from a child process (this program with `--client`), so that the
//! per-worker session caches hold every session too.
//!
//! Usage: cargo build --release --bins --examples &&
//!        target/release/examples/memory [--steps 10000,100000]
//! Prints one line per step: `sessions<TAB>VmRSS KiB<TAB>what`.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use cardgate::actors::sessions::Create;
use cardgate::client::api::ProxyClient;
use futures_util::stream::{self, StreamExt};

/// Protected calls in flight while every session is used once.
const CALLS_IN_FLIGHT: usize = 64;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("--client") => client(&args[1..]),
        _ => measure(&args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("memory: {message}");
            ExitCode::FAILURE
        }
    }
}

/// Resident set size of this process in KiB, from /proc/self/status.
fn vm_rss_kib() -> Result<u64, String> {
    let status = std::fs::read_to_string("/proc/self/status")
        .map_err(|e| format!("cannot read /proc/self/status: {e}"))?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .ok_or_else(|| "no VmRSS line in /proc/self/status".to_string())
}

fn report(sessions: usize, what: &str) -> Result<(), String> {
    println!("{sessions}\t{}\t{what}", vm_rss_kib()?);
    std::io::stdout().flush().map_err(|e| e.to_string())
}

fn free_port() -> Result<u16, String> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    listener
        .local_addr()
        .map(|a| a.port())
        .map_err(|e| e.to_string())
}

fn wait_for_port(port: u16) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Err(format!("nothing listens on port {port} after 20 s"))
}

/// A child process that is killed when dropped.
struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn sibling_binary(name: &str) -> Result<PathBuf, String> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    // target/release/examples/memory → target/release/NAME
    exe.parent()
        .and_then(Path::parent)
        .map(|dir| dir.join(name))
        .filter(|path| path.exists())
        .ok_or_else(|| {
            format!(
                "no {name} binary next to {}; run cargo build --release --bins",
                exe.display()
            )
        })
}

fn measure(args: &[String]) -> Result<(), String> {
    let steps: Vec<usize> = match args {
        [flag, list] if flag == "--steps" => list
            .split(',')
            .map(|s| s.parse().map_err(|e| format!("--steps: {s:?}: {e}")))
            .collect::<Result<_, _>>()?,
        [] => vec![10_000, 100_000],
        _ => return Err("usage: memory [--steps N,N,…]".into()),
    };

    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    cardgate::certs::init(&cardgate::certs::InitOptions {
        out: dir.path().join("certs"),
        force: false,
        proxy_names: vec![],
        server_names: vec![],
    })
    .map_err(|e| e.to_string())?;
    let server_port = free_port()?;
    let proxy_port = free_port()?;
    let write = |name: &str, text: String| {
        std::fs::write(dir.path().join(name), text).map_err(|e| format!("{name}: {e}"))
    };
    write(
        "server.toml",
        format!(
            "listen = \"127.0.0.1:{server_port}\"\n[tls]\ncert = \"certs/server.crt\"\n\
             key = \"certs/server.key\"\nclient_ca = \"certs/ca.crt\"\n[store]\npath = \"server-store\"\n"
        ),
    )?;
    write(
        "proxy.toml",
        format!(
            "listen = \"127.0.0.1:{proxy_port}\"\n[tls]\ncert = \"certs/proxy.crt\"\nkey = \"certs/proxy.key\"\n\
             [upstream]\nurl = \"https://127.0.0.1:{server_port}\"\nca = \"certs/ca.crt\"\n\
             client_cert = \"certs/proxy-client.crt\"\nclient_key = \"certs/proxy-client.key\"\n\
             [card]\ndevice = \"sim\"\n[store]\npath = \"proxy-store\"\n\
             [webauthn]\nrp_id = \"localhost\"\norigin = \"https://localhost:{proxy_port}\"\n"
        ),
    )?;

    let server = Command::new(sibling_binary("cardgate")?)
        .args(["server", "--config"])
        .arg(dir.path().join("server.toml"))
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .spawn()
        .map(Server)
        .map_err(|e| format!("cannot start cardgate server: {e}"))?;
    wait_for_port(server_port)?;

    let config =
        cardgate::config::load_proxy(&dir.path().join("proxy.toml")).map_err(|e| e.to_string())?;
    let base = format!("https://localhost:{proxy_port}");
    let ca = dir.path().join("certs/ca.crt");
    let tokens_path = dir.path().join("tokens");
    actix_rt::System::new().block_on(async move {
        let proxy = cardgate::http::proxy::start(config)
            .await
            .map_err(|e| e.to_string())?;
        let sessions = proxy.sessions.clone();
        actix_rt::spawn(proxy.server);
        actix_rt::time::sleep(Duration::from_secs(1)).await;
        report(0, "proxy started")?;

        let mut tokens = Vec::new();
        for &target in &steps {
            while tokens.len() < target {
                let username = format!("user-{}", tokens.len());
                let issued = sessions
                    .send(Create { username })
                    .await
                    .map_err(|e| e.to_string())?
                    .map_err(|e| e.to_string())?;
                tokens.push(issued.token);
            }
            report(tokens.len(), "sessions created")?;
        }

        std::fs::write(&tokens_path, tokens.join("\n")).map_err(|e| e.to_string())?;
        let status = actix_rt::task::spawn_blocking(move || {
            Command::new(std::env::current_exe()?)
                .arg("--client")
                .arg(&base)
                .arg(&ca)
                .arg(&tokens_path)
                .status()
        })
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| format!("cannot start the client: {e}"))?;
        if !status.success() {
            return Err(format!("the client failed: {status}"));
        }
        report(tokens.len(), "each session used once through HTTPS")
    })?;
    drop(server);
    Ok(())
}

/// `--client URL CA TOKENS`: one protected call per token in the file.
fn client(args: &[String]) -> Result<(), String> {
    let [base, ca, tokens] = args else {
        return Err("usage: memory --client URL CA TOKENS".into());
    };
    let tokens = std::fs::read_to_string(tokens).map_err(|e| format!("{tokens}: {e}"))?;
    actix_rt::System::new().block_on(async move {
        let client =
            ProxyClient::new(base, Path::new(ca), CALLS_IN_FLIGHT).map_err(|e| e.to_string())?;
        let failures = stream::iter(tokens.lines())
            .map(|token| {
                let client = client.clone();
                async move { client.counter(token).await.err() }
            })
            .buffer_unordered(CALLS_IN_FLIGHT)
            .filter_map(|failure| async move { failure })
            .collect::<Vec<_>>()
            .await;
        match failures.first() {
            None => Ok(()),
            Some(first) => Err(format!(
                "{} calls failed, the first with: {first}",
                failures.len()
            )),
        }
    })
}
