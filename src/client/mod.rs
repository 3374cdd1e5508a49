//! `cardgate client`: the k_client command line for enrollment, login and
//! the protected counter.
//!
//! The proxy URL and CA come from flags or from a client config file
//! (`$XDG_CONFIG_HOME/cardgate/client.toml`, keys `proxy` and `ca`). The
//! session token is kept in `$XDG_CONFIG_HOME/cardgate/session.json`, created
//! with mode 0600, and is never printed.
//!
//! Enrollment and login follow the card operation by polling, so the person
//! sees "confirm on the ChromeCard" while the card waits, and Ctrl-C
//! cancels the operation on the card.

use std::fs;
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};

use clap::{Args, Subcommand};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

pub mod api;

use api::{ClientError, OperationView, ProxyClient};

#[derive(Debug, Args)]
pub struct ClientArgs {
    /// Proxy base URL, such as https://k-proxy:8443 (overrides the config file).
    #[arg(long)]
    pub proxy: Option<String>,

    /// CA certificate that signed the proxy's certificate (overrides the config file).
    #[arg(long)]
    pub ca: Option<PathBuf>,

    /// Client config file [default: $XDG_CONFIG_HOME/cardgate/client.toml].
    #[arg(long)]
    pub config: Option<PathBuf>,

    /// Print JSON instead of sentences.
    #[arg(long, global = true)]
    pub json: bool,

    #[command(subcommand)]
    pub command: ClientCommand,
}

#[derive(Debug, Subcommand)]
pub enum ClientCommand {
    /// Enroll a user: the person at the card confirms.
    Enroll {
        username: String,
        /// Name shown in the portal, up to 64 characters.
        #[arg(long)]
        display_name: Option<String>,
    },
    /// Log in: the person at the card confirms; the session is saved.
    Login { username: String },
    /// Show the saved session and its time left.
    Status,
    /// Call the protected counter with the saved session.
    Counter,
    /// End the saved session.
    Logout,
    /// List enrolled users (needs a session).
    List,
    /// Change the logged-in user's display name.
    Update {
        #[arg(long)]
        display_name: String,
    },
    /// Delete the logged-in user's enrollment and end their sessions.
    Delete {
        /// Do not ask for confirmation.
        #[arg(long)]
        yes: bool,
    },
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ClientFile {
    proxy: Option<String>,
    ca: Option<PathBuf>,
}

#[derive(Debug, Serialize, Deserialize)]
struct SavedSession {
    proxy: String,
    username: String,
    token: String,
    expires_at: String,
}

fn config_dir() -> Result<PathBuf, ClientError> {
    if let Some(dir) = std::env::var_os("XDG_CONFIG_HOME").filter(|d| !d.is_empty()) {
        return Ok(PathBuf::from(dir).join("cardgate"));
    }
    let home = std::env::var_os("HOME").ok_or_else(|| {
        ClientError::Setup("neither XDG_CONFIG_HOME nor HOME is set; set one of them".into())
    })?;
    Ok(PathBuf::from(home).join(".config").join("cardgate"))
}

fn read_client_file(path: &Path, explicit: bool) -> Result<ClientFile, ClientError> {
    let text = match fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && !explicit => {
            return Ok(ClientFile::default())
        }
        Err(e) => {
            return Err(ClientError::Setup(format!(
                "cannot read {}: {e}",
                path.display()
            )))
        }
    };
    let parsed = config::Config::builder()
        .add_source(config::File::from_str(&text, config::FileFormat::Toml))
        .build()
        .and_then(|c| c.try_deserialize::<ClientFile>())
        .map_err(|e| ClientError::Setup(format!("{}: {e}", path.display())))?;
    // A relative CA path in the file is relative to the file's folder.
    let folder = path.parent().unwrap_or(Path::new("."));
    Ok(ClientFile {
        proxy: parsed.proxy,
        ca: parsed.ca.map(|ca| {
            if ca.is_relative() {
                folder.join(ca)
            } else {
                ca
            }
        }),
    })
}

fn session_path() -> Result<PathBuf, ClientError> {
    Ok(config_dir()?.join("session.json"))
}

fn save_session(session: &SavedSession) -> Result<(), ClientError> {
    use std::os::unix::fs::OpenOptionsExt;

    let path = session_path()?;
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir)
            .map_err(|e| ClientError::Setup(format!("cannot create {}: {e}", dir.display())))?;
    }
    let text = serde_json::to_vec_pretty(session).map_err(|e| ClientError::Setup(e.to_string()))?;
    let temporary = path.with_extension("json.tmp");
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&temporary)
        .map_err(|e| ClientError::Setup(format!("cannot write {}: {e}", temporary.display())))?;
    file.write_all(&text)
        .and_then(|_| file.sync_all())
        .and_then(|_| fs::rename(&temporary, &path))
        .map_err(|e| ClientError::Setup(format!("cannot write {}: {e}", path.display())))
}

fn load_session() -> Result<SavedSession, ClientError> {
    let path = session_path()?;
    let text = fs::read(&path).map_err(|_| ClientError::Api {
        status: 401,
        code: "unauthorized".into(),
        details: "you are not logged in; run `cardgate client login NAME` first".into(),
    })?;
    serde_json::from_slice(&text).map_err(|e| {
        ClientError::Setup(format!(
            "{} is damaged ({e}); delete it and log in again",
            path.display()
        ))
    })
}

fn forget_session() {
    if let Ok(path) = session_path() {
        let _ = fs::remove_file(path);
    }
}

/// Prints a card operation's progress on stderr, so stdout stays clean for
/// `--json`.
fn show_progress(view: &OperationView) {
    let line = match view.state.as_str() {
        "queued" => match view.position {
            Some(n) => format!("waiting for the card ({n} ahead)"),
            None => "waiting for the card".into(),
        },
        "awaiting_card" | "awaiting_presence" => "confirm on the ChromeCard now".into(),
        "processing" => "the card is working".into(),
        _ => return,
    };
    eprintln!("… {line}");
}

/// Awaits `wait`, a card operation being followed; on Ctrl-C cancels the
/// operation on the proxy (the card gets CTAPHID CANCEL) instead.
async fn cancel_on_interrupt<T>(
    client: &ProxyClient,
    operation: &str,
    wait: impl std::future::Future<Output = Result<T, ClientError>>,
) -> Result<T, ClientError> {
    tokio::select! {
        result = wait => result,
        _ = tokio::signal::ctrl_c() => {
            eprintln!("… cancelling the card operation");
            client.cancel(operation).await?;
            Err(ClientError::Setup("cancelled: the card operation was cancelled".into()))
        }
    }
}

/// Runs one client command; returns the process exit code.
pub fn run(args: ClientArgs) -> std::process::ExitCode {
    let json_output = args.json;
    let result = actix_rt::System::new().block_on(execute(args));
    match result {
        Ok(value) => {
            if json_output {
                println!("{}", json!({ "ok": true, "result": value }));
            }
            std::process::ExitCode::SUCCESS
        }
        Err(e) => {
            if json_output {
                println!(
                    "{}",
                    json!({ "ok": false, "error": e.code(), "details": e.to_string() })
                );
            } else {
                eprintln!("cardgate client: {e}");
            }
            std::process::ExitCode::FAILURE
        }
    }
}

async fn execute(args: ClientArgs) -> Result<Value, ClientError> {
    let explicit = args.config.is_some();
    let file_path = match args.config.clone() {
        Some(path) => path,
        None => config_dir()?.join("client.toml"),
    };
    let file = read_client_file(&file_path, explicit)?;
    let proxy = args.proxy.or(file.proxy).ok_or_else(|| {
        ClientError::Setup(format!(
            "no proxy URL: pass --proxy URL or set `proxy` in {}",
            file_path.display()
        ))
    })?;
    let ca = args.ca.or(file.ca).ok_or_else(|| {
        ClientError::Setup(format!(
            "no CA certificate: pass --ca FILE or set `ca` in {}",
            file_path.display()
        ))
    })?;
    let client = ProxyClient::new(&proxy, &ca, 4)?;
    let human = !args.json;

    match args.command {
        ClientCommand::Enroll {
            username,
            display_name,
        } => {
            let id = client
                .begin_enroll(&username, display_name.as_deref())
                .await?;
            let view = cancel_on_interrupt(&client, &id, client.wait(&id, show_progress)).await?;
            let user = view.result.unwrap_or(Value::Null)["user"].clone();
            if human {
                println!(
                    "enrolled {} on the card",
                    user["username"].as_str().unwrap_or(&username)
                );
            }
            Ok(user)
        }
        ClientCommand::Login { username } => {
            let id = client.begin_login(&username).await?;
            let reply =
                cancel_on_interrupt(&client, &id, client.wait_for_login(&id, show_progress))
                    .await?;
            save_session(&SavedSession {
                proxy: client.base().to_string(),
                username: reply.username.clone(),
                token: reply.session_token,
                expires_at: reply.expires_at.clone(),
            })?;
            if human {
                println!("logged in as {} until {}", reply.username, reply.expires_at);
            }
            Ok(json!({ "username": reply.username, "expires_at": reply.expires_at }))
        }
        ClientCommand::Status => {
            let saved = load_session()?;
            let summary = client.session_status(&saved.token).await?;
            if human {
                println!(
                    "logged in as {} until {}",
                    summary.username, summary.expires_at
                );
            }
            Ok(json!({ "username": summary.username, "expires_at": summary.expires_at }))
        }
        ClientCommand::Counter => {
            let saved = load_session()?;
            let reply = client.counter(&saved.token).await?;
            if human {
                println!("counter value {}", reply.value);
            }
            Ok(json!({ "value": reply.value, "username": reply.session.username }))
        }
        ClientCommand::Logout => {
            let saved = load_session()?;
            let result = client.logout(&saved.token).await;
            forget_session();
            result?;
            if human {
                println!("logged out {}", saved.username);
            }
            Ok(json!({ "logged_out": saved.username }))
        }
        ClientCommand::List => {
            let saved = load_session()?;
            let reply = client.list(&saved.token).await?;
            if human {
                for user in reply["users"].as_array().into_iter().flatten() {
                    println!(
                        "{}\t{}\tenrolled {}",
                        user["username"].as_str().unwrap_or("?"),
                        user["display_name"].as_str().unwrap_or(""),
                        user["created_at"].as_str().unwrap_or("?")
                    );
                }
            }
            Ok(reply["users"].clone())
        }
        ClientCommand::Update { display_name } => {
            let saved = load_session()?;
            let reply = client.update(&saved.token, &display_name).await?;
            if human {
                println!(
                    "display name of {} is now {:?}",
                    saved.username, display_name
                );
            }
            Ok(reply["user"].clone())
        }
        ClientCommand::Delete { yes } => {
            let saved = load_session()?;
            if !yes {
                if !std::io::stdin().is_terminal() {
                    return Err(ClientError::Setup(
                        "deleting needs confirmation: pass --yes".into(),
                    ));
                }
                eprint!(
                    "delete the enrollment of {} and end all their sessions? [y/N] ",
                    saved.username
                );
                let mut answer = String::new();
                let _ = std::io::stdin().read_line(&mut answer);
                if !matches!(answer.trim(), "y" | "Y" | "yes") {
                    return Err(ClientError::Setup("not deleted".into()));
                }
            }
            let reply = client.delete(&saved.token).await?;
            forget_session();
            if human {
                println!("deleted the enrollment of {}", saved.username);
            }
            Ok(reply)
        }
    }
}
