//! Command-line interface: parses arguments, sets up tracing, starts the
//! requested role and reports why it stopped.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::telemetry::LogFormat;

#[derive(Debug, Parser)]
#[command(
    name = "cardgate",
    version,
    about = "Guards a protected service with a FIDO2 card"
)]
pub struct Cli {
    /// Log output format: `human` on a terminal, `json` for collectors.
    #[arg(long, global = true, value_enum, default_value_t = LogFormatArg::Human)]
    pub log_format: LogFormatArg,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum LogFormatArg {
    Human,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the k_server role: the protected counter behind mutual TLS.
    Server(RoleArgs),
    /// Run the k_proxy role: card, sessions, portal and forwarding.
    Proxy(RoleArgs),
    /// Run a simulated ChromeCard that responds to CTAPHID reports over UDP.
    CardSim(CardSimArgs),
    /// Create the deployment's certificates.
    Certs {
        #[command(subcommand)]
        command: CertsCommand,
    },
    /// Run the whole chain on loopback with a simulated card.
    Demo(DemoArgs),
    /// Enroll, log in and call the counter through a proxy (the k_client tool).
    Client(crate::client::ClientArgs),
    /// Send many protected counter calls through a proxy and check the values.
    Loadtest(crate::loadtest::LoadtestArgs),
    /// Decode captured CTAP bytes or check an assertion signature offline.
    Ctap {
        #[command(subcommand)]
        command: crate::bringup::decode::CtapCommand,
    },
    /// Print the proxy's audit trail, from the running proxy or its store.
    Audit(crate::audit::command::AuditArgs),
    /// Find, inspect and exercise a card: list, info, make-credential,
    /// get-assertion, wink and doctor.
    Card {
        #[command(subcommand)]
        command: crate::bringup::card::CardCommand,
    },
}

#[derive(Debug, Args)]
pub struct RoleArgs {
    /// Path of the role's TOML configuration file.
    #[arg(long, short)]
    pub config: PathBuf,

    /// Check the configuration and the files it names (certificates, keys,
    /// folders), print it resolved with private keys shown by path only, and
    /// exit without starting.
    #[arg(long)]
    pub check_config: bool,
}

#[derive(Debug, Args)]
pub struct CardSimArgs {
    /// UDP address the simulated card receives reports on.
    #[arg(long, default_value = "127.0.0.1:8111")]
    pub listen: SocketAddr,

    /// Folder for the card's state (master key and sign count); created if missing.
    #[arg(long)]
    pub state: PathBuf,

    /// Response of the simulated person at the card: `approve`, `deny`,
    /// `delay:MS` (up-needed keepalives for MS milliseconds, then approve) or
    /// `never` (up-needed until the request times out).
    #[arg(long, default_value = "approve")]
    pub presence: String,
}

#[derive(Debug, Subcommand)]
pub enum CertsCommand {
    /// Write a CA and the proxy's and server's certificates and keys.
    Init(CertsInitArgs),
}

#[derive(Debug, Args)]
pub struct CertsInitArgs {
    /// Folder to write the files into; created if missing.
    #[arg(long)]
    pub out: PathBuf,

    /// Overwrite existing files.
    #[arg(long)]
    pub force: bool,

    /// Extra DNS name or IP address for the proxy's server certificate (repeatable).
    #[arg(long = "proxy-name")]
    pub proxy_names: Vec<String>,

    /// Extra DNS name or IP address for the server's certificate (repeatable).
    #[arg(long = "server-name")]
    pub server_names: Vec<String>,
}

#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Folder for the demo's certificates and stores.
    #[arg(long, default_value = "demo-data")]
    pub dir: PathBuf,

    /// Port of the proxy on 127.0.0.1 (0 picks a free port).
    #[arg(long, default_value_t = 8443)]
    pub port: u16,
}

/// Runs the command line and returns the process exit code.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    // The card tools print their findings themselves; their default log
    // level is `warn` so that lifecycle lines do not mix with them.
    if matches!(cli.command, Command::Card { .. }) && std::env::var_os("RUST_LOG").is_none() {
        std::env::set_var("RUST_LOG", "warn");
    }
    let format = match cli.log_format {
        LogFormatArg::Human => LogFormat::Human,
        LogFormatArg::Json => LogFormat::Json,
    };
    // The demo prints its own walkthrough; routine log lines would bury it.
    let default_level = if matches!(cli.command, Command::Demo(_)) {
        "warn"
    } else {
        "info"
    };
    crate::telemetry::init(format, default_level);

    // These print their own results and choose their own exit codes.
    let command = match cli.command {
        Command::Client(args) => return crate::client::run(args),
        Command::Loadtest(args) => return crate::loadtest::main(args),
        Command::Ctap { command } => return crate::bringup::decode::run(command),
        Command::Audit(args) => return crate::audit::command::run(args),
        Command::Card { command } => return crate::bringup::card::run(command),
        other => other,
    };
    match run(command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("cardgate: {message}");
            ExitCode::FAILURE
        }
    }
}

fn run(command: Command) -> Result<(), String> {
    match command {
        Command::Server(args) => {
            let config = crate::config::load_server(&args.config).map_err(|e| e.to_string())?;
            crate::preflight::check_server(&config).map_err(|e| e.to_string())?;
            if args.check_config {
                print_checked(&args.config, &config.describe());
                return Ok(());
            }
            actix_rt::System::new().block_on(async move {
                let signals = crate::shutdown::Signals::install()
                    .map_err(|e| format!("cannot install signal handlers: {e}"))?;
                let running = crate::http::server::start(config)
                    .await
                    .map_err(|e| e.to_string())?;
                running
                    .run_until(signals.recv())
                    .await
                    .map_err(|e| e.to_string())
            })
        }
        Command::Proxy(args) => {
            let config = crate::config::load_proxy(&args.config).map_err(|e| e.to_string())?;
            crate::preflight::check_proxy(&config).map_err(|e| e.to_string())?;
            if args.check_config {
                print_checked(&args.config, &config.describe());
                return Ok(());
            }
            actix_rt::System::new().block_on(async move {
                let signals = crate::shutdown::Signals::install()
                    .map_err(|e| format!("cannot install signal handlers: {e}"))?;
                let running = crate::http::proxy::start(config)
                    .await
                    .map_err(|e| e.to_string())?;
                running
                    .run_until(signals.recv())
                    .await
                    .map_err(|e| e.to_string())
            })
        }
        Command::CardSim(args) => {
            let presence = args
                .presence
                .parse()
                .map_err(|e| format!("--presence: {e}"))?;
            crate::ctap::sim::udp::run(args.listen, &args.state, presence)
                .map_err(|e| e.to_string())
        }
        Command::Certs {
            command: CertsCommand::Init(args),
        } => {
            let written = crate::certs::init(&crate::certs::InitOptions {
                out: args.out,
                force: args.force,
                proxy_names: args.proxy_names,
                server_names: args.server_names,
            })
            .map_err(|e| e.to_string())?;
            for path in written {
                println!("wrote {}", path.display());
            }
            Ok(())
        }
        Command::Demo(args) => crate::demo::run(&args.dir, args.port).map_err(|e| e.to_string()),
        Command::Client(_)
        | Command::Loadtest(_)
        | Command::Ctap { .. }
        | Command::Audit(_)
        | Command::Card { .. } => Err("this command is run by `main`".into()),
    }
}

/// Prints the resolved configuration for `--check-config`, after every
/// check has passed.
fn print_checked(path: &std::path::Path, description: &str) {
    println!(
        "# {}: configuration and files are valid; private keys are shown by path only",
        path.display()
    );
    print!("{description}");
}
