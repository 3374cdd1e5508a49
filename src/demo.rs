//! `cardgate demo`: the whole chain on loopback in one process.
//!
//! It writes certificates and two config files into the demo folder, starts
//! k_server and k_proxy with an in-process simulated card that approves by
//! itself, runs the flow once as a client would (enroll, log in, call the
//! counter, log out), prints how to repeat it with curl, and stops both on
//! Ctrl-C. The written
//! config files are ordinary ones: `cardgate server --config DIR/server.toml`
//! and `cardgate proxy --config DIR/proxy.toml` run the same chain as
//! separate processes.

use std::fs;
use std::path::{Path, PathBuf};

use crate::certs::{self, InitOptions};
use crate::client::api::{ClientError, ProxyClient};
use crate::config::{load_proxy, load_server};

/// The reason the demo could not run.
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0}")]
    Setup(String),
}

fn write(path: &Path, text: &str) -> Result<(), DemoError> {
    fs::write(path, text).map_err(|source| DemoError::Write {
        path: path.to_path_buf(),
        source,
    })
}

fn server_toml() -> String {
    r#"# Written by `cardgate demo`; paths are relative to this file.
listen = "127.0.0.1:0"

[tls]
cert = "certs/server.crt"
key = "certs/server.key"
client_ca = "certs/ca.crt"

[store]
path = "server-store"

# Off, so that the demo does not collide with installed daemons.
[metrics]
listen = ""
"#
    .to_string()
}

fn proxy_toml(port: u16, upstream: &str) -> String {
    format!(
        r#"# Written by `cardgate demo`; paths are relative to this file.
listen = "127.0.0.1:{port}"

[tls]
cert = "certs/proxy.crt"
key = "certs/proxy.key"

[upstream]
url = "{upstream}"
ca = "certs/ca.crt"
client_cert = "certs/proxy-client.crt"
client_key = "certs/proxy-client.key"

[card]
device = "sim"
sim_presence = "approve"
sim_state = "card"

[store]
path = "proxy-store"

[webauthn]
rp_id = "localhost"
origin = "https://localhost:{port}"

# Off, so that the demo does not collide with installed daemons.
[metrics]
listen = ""
"#
    )
}

/// Runs the demo until Ctrl-C.
pub fn run(dir: &Path, port: u16) -> Result<(), DemoError> {
    fs::create_dir_all(dir).map_err(|source| DemoError::Write {
        path: dir.to_path_buf(),
        source,
    })?;
    let dir = dir
        .canonicalize()
        .map_err(|e| DemoError::Setup(format!("cannot resolve {}: {e}", dir.display())))?;
    let cert_dir = dir.join("certs");
    if !cert_dir.join("ca.crt").exists() {
        certs::init(&InitOptions {
            out: cert_dir.clone(),
            force: false,
            proxy_names: Vec::new(),
            server_names: Vec::new(),
        })
        .map_err(|e| DemoError::Setup(e.to_string()))?;
    }

    actix_rt::System::new().block_on(async move {
        let server_path = dir.join("server.toml");
        write(&server_path, &server_toml())?;
        let server_config =
            load_server(&server_path).map_err(|e| DemoError::Setup(e.to_string()))?;
        let server = crate::http::server::start(server_config)
            .await
            .map_err(|e| DemoError::Setup(format!("k_server did not start: {e}")))?;
        let server = server.spawn();
        let upstream = format!("https://127.0.0.1:{}", server.addr.port());

        // Port 0 lets the OS pick, but the origin needs the real port, so
        // it is resolved first.
        let port = if port == 0 { free_port()? } else { port };
        let proxy_path = dir.join("proxy.toml");
        write(&proxy_path, &proxy_toml(port, &upstream))?;
        let proxy_config = load_proxy(&proxy_path).map_err(|e| DemoError::Setup(e.to_string()))?;
        let proxy = crate::http::proxy::start(proxy_config)
            .await
            .map_err(|e| DemoError::Setup(format!("k_proxy did not start: {e}")))?;
        print_banner(&dir, proxy.addr.port(), &upstream);
        let base = format!("https://localhost:{}", proxy.addr.port());
        let ca = dir.join("certs").join("ca.crt");

        // The HTTP server accepts connections only once `run_until` polls
        // it, so the walkthrough runs inside the future that `run_until`
        // waits on to stop.
        let stopped = proxy
            .run_until(async {
                if let Err(e) = walkthrough(&base, &ca).await {
                    println!(
                        "the walkthrough failed: {e}\nthe daemons keep running; see the log above"
                    );
                }
                println!("\nPress Ctrl-C to stop.");
                let _ = tokio::signal::ctrl_c().await;
                println!("\nstopping: finishing requests in flight");
                "Ctrl-C"
            })
            .await;
        if let Err(e) = stopped {
            eprintln!("k_proxy did not stop cleanly: {e}");
        }
        server
            .stop(true)
            .await
            .map_err(|e| DemoError::Setup(format!("k_server did not stop cleanly: {e}")))
    })
}

/// Runs the whole flow once through the real HTTPS API, as a client in
/// k_client would, and prints each step.
async fn walkthrough(base: &str, ca: &Path) -> Result<(), ClientError> {
    const USER: &str = "demo";
    let client = ProxyClient::new(base, ca, 2)?;
    println!("Walkthrough as user {USER:?}:");

    let status = client.enroll_status(USER).await?;
    if status["enrolled"] == true {
        println!("  1. enroll      already enrolled (state is kept between runs)");
    } else {
        client.enroll(USER).await?;
        println!(
            "  1. enroll      the card created a credential; the proxy checked its attestation"
        );
    }
    let login = client.login(USER).await?;
    println!(
        "  2. login       the card signed a fresh challenge; session valid until {}",
        login.expires_at
    );
    for step in 3..=4 {
        let reply = client.counter(&login.session_token).await?;
        println!("  {step}. counter     k_server returned {}", reply.value);
    }
    client.logout(&login.session_token).await?;
    println!("  5. logout      session ended");
    match client.counter(&login.session_token).await {
        Err(ClientError::Api { status: 401, .. }) => {
            println!("  6. counter     refused with 401 after logout, as it must be");
            Ok(())
        }
        Ok(reply) => Err(ClientError::Setup(format!(
            "the counter returned {} after logout; the session was not ended",
            reply.value
        ))),
        Err(e) => Err(e),
    }
}

fn free_port() -> Result<u16, DemoError> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")
        .map_err(|e| DemoError::Setup(format!("cannot find a free port: {e}")))?;
    listener
        .local_addr()
        .map(|a| a.port())
        .map_err(|e| DemoError::Setup(format!("cannot find a free port: {e}")))
}

fn print_banner(dir: &Path, port: u16, upstream: &str) {
    let url = format!("https://localhost:{port}");
    let ca = dir.join("certs").join("ca.crt");
    let ca = ca.display();
    println!(
        r#"
cardgate demo is running (Ctrl-C stops it).

  portal and API  {url}
  k_server        {upstream} (mutual TLS; only the proxy's client certificate gets in)
  CA certificate  {ca}
  card            simulated ChromeCard in this process, approving every request
  state           {dir}

Try the chain with curl:

  curl --cacert {ca} -H 'Content-Type: application/json' \
       -d '{{"username":"alice","display_name":"Alice"}}' {url}/enroll/register
  TOKEN=$(curl -s --cacert {ca} -H 'Content-Type: application/json' \
       -d '{{"username":"alice"}}' {url}/session/login | sed 's/.*"session_token":"\([^"]*\)".*/\1/')
  curl --cacert {ca} -H "Authorization: Bearer $TOKEN" -X POST {url}/resource/counter
  curl --cacert {ca} -H "Authorization: Bearer $TOKEN" -X POST {url}/session/logout
  curl --cacert {ca} -H "Authorization: Bearer $TOKEN" -X POST {url}/resource/counter   # 401 now
"#,
        dir = dir.display()
    );
}
