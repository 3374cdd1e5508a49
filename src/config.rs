//! Typed configuration of the `server` and `proxy` roles.
//!
//! A role reads one TOML file (see `config/server.toml` and
//! `config/proxy.toml`), then applies environment overrides named
//! `CARDGATE_SECTION__KEY`: the prefix `CARDGATE_`, then the key path with
//! `__` between levels (`CARDGATE_LISTEN`, `CARDGATE_CARD__DEVICE`).
//! Every relative path, from the file or from the environment, resolves
//! against the folder of the config file. Unknown keys are rejected, and so
//! is any other variable that starts with `CARDGATE_`.
//!
//! Durations are integers whose key names their unit (`_ms`, `_s`); each
//! section has accessors that return them as [`Duration`].
//!
//! Tests and the demo build configs without a file: [`ServerConfig::new`]
//! and [`ProxyConfig::new`] take the required parts and fill every optional
//! section with its `Default`. Paths given to them are used as they are.

use std::collections::HashMap;
use std::fmt;
use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer};

/// Prefix of the environment variables that override config keys.
pub const ENV_PREFIX: &str = "CARDGATE_";

/// Separator between key levels in an environment variable name.
pub const ENV_SEPARATOR: &str = "__";

/// A config value that is missing, malformed or contradicts another one.
///
/// `key` is the dotted key path (`webauthn.rp_id`); it is empty for errors
/// about the file as a whole, such as a TOML syntax error.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigError {
    pub key: String,
    pub message: String,
}

impl ConfigError {
    pub fn new(key: impl Into<String>, message: impl Into<String>) -> Self {
        ConfigError {
            key: key.into(),
            message: message.into(),
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.key.is_empty() {
            write!(f, "config: {}", self.message)
        } else {
            write!(f, "config key `{}`: {}", self.key, self.message)
        }
    }
}

/// Configuration of the `server` role (k_server).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    /// Address the HTTPS server listens on; port 0 picks a free port.
    #[serde(deserialize_with = "socket_addr")]
    pub listen: SocketAddr,
    pub tls: ServerTls,
    pub store: Store,
    #[serde(default)]
    pub http: Http,
    #[serde(default = "Metrics::server_default")]
    pub metrics: Metrics,
}

/// TLS files of the server. Clients must present a certificate signed by
/// `client_ca`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerTls {
    /// PEM certificate chain, leaf first.
    pub cert: PathBuf,
    /// PEM private key (PKCS#8, SEC1 or PKCS#1).
    pub key: PathBuf,
    /// PEM CA certificates that sign accepted client certificates.
    pub client_ca: PathBuf,
}

/// TLS files of the proxy's HTTPS listener.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tls {
    /// PEM certificate chain, leaf first.
    pub cert: PathBuf,
    /// PEM private key (PKCS#8, SEC1 or PKCS#1).
    pub key: PathBuf,
}

/// Location of a role's sled database.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Store {
    /// Folder of the sled database; created if missing.
    pub path: PathBuf,
}

/// Limits and timeouts of an HTTP listener.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Http {
    /// Maximum request body in bytes.
    pub max_body_bytes: usize,
    /// Worker threads; 0 starts one per CPU core.
    pub workers: usize,
    /// Seconds an idle keep-alive connection stays open; 0 disables keep-alive.
    pub keep_alive_s: u64,
    /// Milliseconds a client has to send a request's head after connecting;
    /// the same limit applies to the TLS handshake.
    pub client_request_timeout_ms: u64,
    /// Milliseconds a client has to send a request's whole body after its
    /// head; a body still incomplete then gets 408.
    pub body_timeout_ms: u64,
    /// Seconds a graceful stop waits for open requests; 0 stops at once.
    pub shutdown_timeout_s: u64,
    /// Open connections per worker before the listener stops accepting.
    pub max_connections: usize,
}

impl Default for Http {
    fn default() -> Self {
        Http {
            max_body_bytes: 16 * 1024,
            workers: 0,
            keep_alive_s: 30,
            client_request_timeout_ms: 5000,
            body_timeout_ms: 10_000,
            shutdown_timeout_s: 10,
            max_connections: 25_000,
        }
    }
}

impl Http {
    pub fn keep_alive(&self) -> Duration {
        Duration::from_secs(self.keep_alive_s)
    }

    pub fn client_request_timeout(&self) -> Duration {
        Duration::from_millis(self.client_request_timeout_ms)
    }

    pub fn body_timeout(&self) -> Duration {
        Duration::from_millis(self.body_timeout_ms)
    }

    pub fn shutdown_timeout(&self) -> Duration {
        Duration::from_secs(self.shutdown_timeout_s)
    }
}

/// The Prometheus listener, plain HTTP apart from the role's TLS listener.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Metrics {
    /// Loopback address that serves `GET /metrics`; `None` (an empty
    /// string in the file) turns the listener off.
    #[serde(deserialize_with = "optional_socket_addr")]
    pub listen: Option<SocketAddr>,
}

impl Metrics {
    /// Default address of the proxy's metrics listener.
    pub const PROXY_DEFAULT: SocketAddr =
        SocketAddr::new(IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 9464);

    /// Default address of the server's metrics listener, one port above
    /// the proxy's so that both roles can run on one machine.
    pub const SERVER_DEFAULT: SocketAddr =
        SocketAddr::new(IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 9465);

    fn proxy_default() -> Self {
        Metrics {
            listen: Some(Self::PROXY_DEFAULT),
        }
    }

    fn server_default() -> Self {
        Metrics {
            listen: Some(Self::SERVER_DEFAULT),
        }
    }

    /// No metrics listener.
    pub fn off() -> Self {
        Metrics { listen: None }
    }
}

/// Configuration of the `proxy` role (k_proxy).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProxyConfig {
    /// Address the HTTPS portal listens on; port 0 picks a free port.
    #[serde(deserialize_with = "socket_addr")]
    pub listen: SocketAddr,
    pub tls: Tls,
    pub upstream: Upstream,
    #[serde(default)]
    pub card: Card,
    pub store: Store,
    #[serde(default)]
    pub session: Session,
    pub webauthn: Webauthn,
    #[serde(default)]
    pub http: Http,
    #[serde(default = "Metrics::proxy_default")]
    pub metrics: Metrics,
    #[serde(default)]
    pub limits: Limits,
}

/// Throttling of login and enrollment attempts.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// Attempts one client address may make in a burst.
    pub address_burst: u32,
    /// Milliseconds after which one client address earns one more attempt.
    pub address_refill_ms: u64,
    /// Failed attempts for one username before its backoff starts.
    pub username_free_failures: u32,
    /// Milliseconds of the first backoff for a username; it doubles with
    /// each further failure.
    pub username_first_backoff_ms: u64,
    /// Maximum backoff for one username, in seconds. Kept short because
    /// anyone can fail logins for any username.
    pub username_max_backoff_s: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            address_burst: 30,
            address_refill_ms: 2000,
            username_free_failures: 5,
            username_first_backoff_ms: 1000,
            username_max_backoff_s: 60,
        }
    }
}

/// The k_server the proxy forwards to, reached over mutual TLS.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Upstream {
    /// Base URL of the server; must be `https://`.
    pub url: String,
    /// PEM CA certificates that sign the server's certificate.
    pub ca: PathBuf,
    /// PEM client certificate the proxy presents to the server.
    pub client_cert: PathBuf,
    /// PEM private key of `client_cert`.
    pub client_key: PathBuf,
    /// HTTP/2 connections kept open to the server, shared evenly among the
    /// HTTP workers (each keeps at least one). Each carries many requests
    /// at once.
    #[serde(default = "Upstream::default_pool_size")]
    pub pool_size: usize,
    /// Milliseconds allowed for TCP connect plus TLS handshake.
    #[serde(default = "Upstream::default_connect_timeout_ms")]
    pub connect_timeout_ms: u64,
    /// Milliseconds allowed for one forwarded request, response included.
    #[serde(default = "Upstream::default_request_timeout_ms")]
    pub request_timeout_ms: u64,
}

impl Upstream {
    /// Creates an upstream with the default pool size and timeouts.
    pub fn new(
        url: impl Into<String>,
        ca: PathBuf,
        client_cert: PathBuf,
        client_key: PathBuf,
    ) -> Self {
        Upstream {
            url: url.into(),
            ca,
            client_cert,
            client_key,
            pool_size: Self::default_pool_size(),
            connect_timeout_ms: Self::default_connect_timeout_ms(),
            request_timeout_ms: Self::default_request_timeout_ms(),
        }
    }

    fn default_pool_size() -> usize {
        2
    }

    fn default_connect_timeout_ms() -> u64 {
        2000
    }

    fn default_request_timeout_ms() -> u64 {
        5000
    }

    pub fn connect_timeout(&self) -> Duration {
        Duration::from_millis(self.connect_timeout_ms)
    }

    pub fn request_timeout(&self) -> Duration {
        Duration::from_millis(self.request_timeout_ms)
    }
}

/// The FIDO2 card and the queue of requests waiting for it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Card {
    /// Device spec string; the card layer parses and validates it.
    pub device: String,
    /// Response of the simulated person when `device` is a simulator:
    /// `approve`, `deny`, `delay:MS` or `never`.
    pub sim_presence: String,
    /// State folder of an in-process simulated card; `None` keeps it in memory.
    pub sim_state: Option<PathBuf>,
    /// Requests that may wait for the card before new ones are rejected.
    pub queue_limit: usize,
    /// Seconds the person has to confirm on the card.
    pub confirm_timeout_s: u64,
    /// Milliseconds without a report from the card before a request fails.
    pub idle_timeout_ms: u64,
    /// Milliseconds a login waits for a reconnecting card before it fails.
    pub login_grace_ms: u64,
    /// Maximum wait in milliseconds between reconnect attempts to a lost card.
    pub reconnect_max_backoff_ms: u64,
}

impl Default for Card {
    fn default() -> Self {
        Card {
            device: "sim".to_owned(),
            sim_presence: "approve".to_owned(),
            sim_state: None,
            queue_limit: 16,
            confirm_timeout_s: 30,
            idle_timeout_ms: 3000,
            login_grace_ms: 2000,
            reconnect_max_backoff_ms: 5000,
        }
    }
}

impl Card {
    pub fn confirm_timeout(&self) -> Duration {
        Duration::from_secs(self.confirm_timeout_s)
    }

    pub fn idle_timeout(&self) -> Duration {
        Duration::from_millis(self.idle_timeout_ms)
    }

    pub fn login_grace(&self) -> Duration {
        Duration::from_millis(self.login_grace_ms)
    }

    pub fn reconnect_max_backoff(&self) -> Duration {
        Duration::from_millis(self.reconnect_max_backoff_ms)
    }
}

/// Lifetime of the proxy's login sessions.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Session {
    /// Seconds without a request after which a session ends.
    pub idle_timeout_s: u64,
    /// Seconds after login after which a session ends regardless of use.
    pub lifetime_s: u64,
    /// Seconds between sweeps that delete ended sessions from the store.
    pub cleanup_interval_s: u64,
    /// Name of the session cookie.
    pub cookie_name: String,
}

impl Default for Session {
    fn default() -> Self {
        Session {
            idle_timeout_s: 900,
            lifetime_s: 8 * 60 * 60,
            cleanup_interval_s: 60,
            cookie_name: "cardgate_session".to_owned(),
        }
    }
}

impl Session {
    pub fn idle_timeout(&self) -> Duration {
        Duration::from_secs(self.idle_timeout_s)
    }

    pub fn lifetime(&self) -> Duration {
        Duration::from_secs(self.lifetime_s)
    }

    pub fn cleanup_interval(&self) -> Duration {
        Duration::from_secs(self.cleanup_interval_s)
    }
}

/// WebAuthn relying party settings.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Webauthn {
    /// Relying party ID: the origin's host or a registrable suffix of it.
    pub rp_id: String,
    /// Origin browsers send, `https://HOST[:PORT]`.
    pub origin: String,
    /// Relying party name shown by the authenticator.
    #[serde(default = "Webauthn::default_rp_name")]
    pub rp_name: String,
    /// Whether enrollment and login require user verification (PIN).
    #[serde(default = "Webauthn::default_user_verification")]
    pub user_verification: bool,
}

impl Webauthn {
    /// Relying party settings with the default name and user verification on.
    pub fn new(rp_id: impl Into<String>, origin: impl Into<String>) -> Self {
        Webauthn {
            rp_id: rp_id.into(),
            origin: origin.into(),
            rp_name: Self::default_rp_name(),
            user_verification: Self::default_user_verification(),
        }
    }

    fn default_rp_name() -> String {
        "cardgate".to_owned()
    }

    fn default_user_verification() -> bool {
        true
    }
}

impl ServerConfig {
    /// Creates a server config with default HTTP limits and no metrics
    /// listener, so that tests can start many servers at once.
    pub fn new(listen: SocketAddr, tls: ServerTls, store: Store) -> Self {
        ServerConfig {
            listen,
            tls,
            store,
            http: Http::default(),
            metrics: Metrics::off(),
        }
    }

    /// Checks the values that the types alone do not constrain.
    pub fn validate(&self) -> Result<(), ConfigError> {
        validate_paths(&[
            ("tls.cert", &self.tls.cert),
            ("tls.key", &self.tls.key),
            ("tls.client_ca", &self.tls.client_ca),
            ("store.path", &self.store.path),
        ])?;
        validate_http(&self.http)?;
        validate_metrics(&self.metrics, self.listen)
    }

    /// Renders the resolved config as TOML. It contains no secret: key
    /// files appear by path only.
    pub fn describe(&self) -> String {
        let mut out = TomlWriter::default();
        out.value("listen", &self.listen.to_string());

        out.section("tls");
        out.path("cert", &self.tls.cert);
        out.path("key", &self.tls.key);
        out.path("client_ca", &self.tls.client_ca);

        out.section("store");
        out.path("path", &self.store.path);

        describe_http(&mut out, &self.http);
        describe_metrics(&mut out, &self.metrics);
        out.finish()
    }

    fn resolve_paths(&mut self, base: &Path) {
        resolve(base, &mut self.tls.cert);
        resolve(base, &mut self.tls.key);
        resolve(base, &mut self.tls.client_ca);
        resolve(base, &mut self.store.path);
    }
}

impl ProxyConfig {
    /// Creates a proxy config with default card, session and HTTP settings
    /// and no metrics listener, so that tests can start many proxies at once.
    pub fn new(
        listen: SocketAddr,
        tls: Tls,
        upstream: Upstream,
        store: Store,
        webauthn: Webauthn,
    ) -> Self {
        ProxyConfig {
            listen,
            tls,
            upstream,
            card: Card::default(),
            store,
            session: Session::default(),
            webauthn,
            http: Http::default(),
            limits: Limits::default(),
            metrics: Metrics::off(),
        }
    }

    /// Checks the values that the types alone do not constrain, including
    /// pairs of keys that contradict each other.
    pub fn validate(&self) -> Result<(), ConfigError> {
        validate_paths(&[
            ("tls.cert", &self.tls.cert),
            ("tls.key", &self.tls.key),
            ("upstream.ca", &self.upstream.ca),
            ("upstream.client_cert", &self.upstream.client_cert),
            ("upstream.client_key", &self.upstream.client_key),
            ("store.path", &self.store.path),
        ])?;
        if let Some(state) = &self.card.sim_state {
            validate_paths(&[("card.sim_state", state)])?;
        }

        validate_upstream(&self.upstream)?;
        validate_card(&self.card)?;
        validate_session(&self.session)?;
        validate_webauthn(&self.webauthn)?;
        validate_http(&self.http)?;
        require_nonzero("limits.address_burst", u64::from(self.limits.address_burst))?;
        require_nonzero(
            "limits.username_max_backoff_s",
            self.limits.username_max_backoff_s,
        )?;
        validate_metrics(&self.metrics, self.listen)?;
        validate_store_socket(&self.store)?;
        validate_upstream_is_not_self(&self.upstream, self.listen)
    }

    /// Renders the resolved config as TOML. It contains no secret: key
    /// files appear by path only.
    pub fn describe(&self) -> String {
        let mut out = TomlWriter::default();
        out.value("listen", &self.listen.to_string());

        out.section("tls");
        out.path("cert", &self.tls.cert);
        out.path("key", &self.tls.key);

        let upstream = &self.upstream;
        out.section("upstream");
        out.value("url", &upstream.url);
        out.path("ca", &upstream.ca);
        out.path("client_cert", &upstream.client_cert);
        out.path("client_key", &upstream.client_key);
        out.number("pool_size", upstream.pool_size);
        out.number("connect_timeout_ms", upstream.connect_timeout_ms);
        out.number("request_timeout_ms", upstream.request_timeout_ms);

        let card = &self.card;
        out.section("card");
        out.value("device", &card.device);
        out.value("sim_presence", &card.sim_presence);
        match &card.sim_state {
            Some(path) => out.path("sim_state", path),
            None => out.comment("sim_state is not set: a simulated card keeps its state in memory"),
        }
        out.number("queue_limit", card.queue_limit);
        out.number("confirm_timeout_s", card.confirm_timeout_s);
        out.number("idle_timeout_ms", card.idle_timeout_ms);
        out.number("login_grace_ms", card.login_grace_ms);
        out.number("reconnect_max_backoff_ms", card.reconnect_max_backoff_ms);

        out.section("store");
        out.path("path", &self.store.path);

        let session = &self.session;
        out.section("session");
        out.number("idle_timeout_s", session.idle_timeout_s);
        out.number("lifetime_s", session.lifetime_s);
        out.number("cleanup_interval_s", session.cleanup_interval_s);
        out.value("cookie_name", &session.cookie_name);

        let webauthn = &self.webauthn;
        out.section("webauthn");
        out.value("rp_id", &webauthn.rp_id);
        out.value("origin", &webauthn.origin);
        out.value("rp_name", &webauthn.rp_name);
        out.boolean("user_verification", webauthn.user_verification);

        describe_http(&mut out, &self.http);

        let limits = &self.limits;
        out.section("limits");
        out.number("address_burst", limits.address_burst);
        out.number("address_refill_ms", limits.address_refill_ms);
        out.number("username_free_failures", limits.username_free_failures);
        out.number(
            "username_first_backoff_ms",
            limits.username_first_backoff_ms,
        );
        out.number("username_max_backoff_s", limits.username_max_backoff_s);
        describe_metrics(&mut out, &self.metrics);
        out.finish()
    }

    fn resolve_paths(&mut self, base: &Path) {
        resolve(base, &mut self.tls.cert);
        resolve(base, &mut self.tls.key);
        resolve(base, &mut self.upstream.ca);
        resolve(base, &mut self.upstream.client_cert);
        resolve(base, &mut self.upstream.client_key);
        resolve(base, &mut self.store.path);
        if let Some(state) = &mut self.card.sim_state {
            resolve(base, state);
        }
    }
}

/// Loads the server config from `path`, applying `CARDGATE_*` variables
/// from the process environment.
pub fn load_server(path: &Path) -> Result<ServerConfig, ConfigError> {
    load_server_with_env(path, process_env())
}

/// Loads the proxy config from `path`, applying `CARDGATE_*` variables
/// from the process environment.
pub fn load_proxy(path: &Path) -> Result<ProxyConfig, ConfigError> {
    load_proxy_with_env(path, process_env())
}

/// Loads the server config from `path` with overrides taken from `env`
/// (variable name to value) in place of the process environment.
pub fn load_server_with_env(
    path: &Path,
    env: HashMap<String, String>,
) -> Result<ServerConfig, ConfigError> {
    let (mut config, base): (ServerConfig, PathBuf) = load(path, env)?;
    config.resolve_paths(&base);
    config.validate()?;
    Ok(config)
}

/// Loads the proxy config from `path` with overrides taken from `env`
/// (variable name to value) in place of the process environment.
pub fn load_proxy_with_env(
    path: &Path,
    env: HashMap<String, String>,
) -> Result<ProxyConfig, ConfigError> {
    let (mut config, base): (ProxyConfig, PathBuf) = load(path, env)?;
    config.resolve_paths(&base);
    config.validate()?;
    Ok(config)
}

/// Collects the process's `CARDGATE_*` variables. Variables that are not
/// valid Unicode are skipped because they cannot be config values.
fn process_env() -> HashMap<String, String> {
    std::env::vars_os()
        .filter_map(|(name, value)| Some((name.into_string().ok()?, value.into_string().ok()?)))
        .filter(|(name, _)| name.to_ascii_uppercase().starts_with(ENV_PREFIX))
        .collect()
}

/// Reads and deserializes the file plus overrides; returns the config and
/// the absolute folder that relative paths resolve against.
fn load<T: DeserializeOwned>(
    path: &Path,
    env: HashMap<String, String>,
) -> Result<(T, PathBuf), ConfigError> {
    // Reading the file here gives a clearer error than the config crate's
    // for a missing or unreadable file.
    if let Err(error) = std::fs::metadata(path) {
        return Err(ConfigError::new(
            "",
            format!(
                "cannot read config file {}: {error}; pass an existing TOML file",
                path.display()
            ),
        ));
    }
    let absolute = std::path::absolute(path).map_err(|error| {
        ConfigError::new(
            "",
            format!(
                "cannot resolve config file path {}: {error}",
                path.display()
            ),
        )
    })?;
    let base = absolute
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("/"));

    let env_names: Vec<String> = env.keys().cloned().collect();
    let environment = config::Environment::with_prefix(ENV_PREFIX.trim_end_matches('_'))
        .prefix_separator("_")
        .separator(ENV_SEPARATOR)
        .source(Some(env.into_iter().collect()));
    let parsed = config::Config::builder()
        .add_source(config::File::from(absolute.as_path()).format(config::FileFormat::Toml))
        .add_source(environment)
        .build()
        .and_then(|built| built.try_deserialize::<T>())
        .map_err(|error| translate_error(error, &absolute, &env_names))?;
    Ok((parsed, base))
}

/// Returns the environment variable that overrides `key` (`card.device` becomes
/// `CARDGATE_CARD__DEVICE`).
pub fn env_var_for(key: &str) -> String {
    format!(
        "{ENV_PREFIX}{}",
        key.to_ascii_uppercase().replace('.', ENV_SEPARATOR)
    )
}

/// Converts the config crate's error into one that names the key and the
/// fix.
fn translate_error(error: config::ConfigError, file: &Path, env_names: &[String]) -> ConfigError {
    let source_of = |key: &str| -> String {
        let variable = env_var_for(key);
        if env_names
            .iter()
            .any(|name| name.eq_ignore_ascii_case(&variable))
        {
            format!("environment variable {variable}")
        } else {
            file.display().to_string()
        }
    };

    match error {
        config::ConfigError::Type {
            unexpected,
            expected,
            key,
            ..
        } => {
            let key = key.unwrap_or_default();
            let message = format!(
                "invalid value {unexpected} in {}; expected {expected}",
                source_of(&key)
            );
            ConfigError::new(key, message)
        }
        config::ConfigError::At { error, key, .. } => match *error {
            config::ConfigError::Message(message) => {
                translate_serde_message(key.as_deref(), &message, &source_of)
            }
            other => translate_error(other, file, env_names),
        },
        config::ConfigError::Message(message) => {
            translate_serde_message(None, &message, &source_of)
        }
        config::ConfigError::NotFound(key) => {
            let message = format!(
                "missing; set it in {} or with {}",
                file.display(),
                env_var_for(&key)
            );
            ConfigError::new(key, message)
        }
        config::ConfigError::FileParse { cause, .. } => {
            ConfigError::new("", format!("invalid TOML in {}: {cause}", file.display()))
        }
        other => ConfigError::new("", format!("{other} (in {})", file.display())),
    }
}

/// Interprets serde's messages for unknown and missing fields, which carry
/// the field name in backquotes but not its section.
fn translate_serde_message(
    section: Option<&str>,
    message: &str,
    source_of: &dyn Fn(&str) -> String,
) -> ConfigError {
    let join = |field: &str| match section {
        Some(section) if !section.is_empty() => format!("{section}.{field}"),
        _ => field.to_owned(),
    };

    if let Some(rest) = message.strip_prefix("unknown field `") {
        let (field, expected) = rest.split_once('`').unwrap_or((rest, ""));
        let key = join(field);
        let expected = expected.trim_start_matches(", ").replace('`', "");
        let message = format!(
            "unknown key in {}; remove it or fix its spelling ({expected})",
            source_of(&key)
        );
        return ConfigError::new(key, message);
    }

    if let Some(rest) = message.strip_prefix("missing field `") {
        let field = rest.split_once('`').map_or(rest, |(field, _)| field);
        let key = join(field);
        let message = format!(
            "missing; set it in the config file or with {}",
            env_var_for(&key)
        );
        return ConfigError::new(key, message);
    }

    let key = section.unwrap_or_default().to_owned();
    let message = if key.is_empty() {
        message.to_owned()
    } else {
        format!("{message} (in {})", source_of(&key))
    };
    ConfigError::new(key, message)
}

fn socket_addr<'de, D: Deserializer<'de>>(deserializer: D) -> Result<SocketAddr, D::Error> {
    let text = String::deserialize(deserializer)?;
    text.parse().map_err(|_| {
        serde::de::Error::custom(format!(
            "invalid socket address {text:?}; expected IP:PORT such as 127.0.0.1:8443 or [::1]:8443"
        ))
    })
}

fn optional_socket_addr<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<SocketAddr>, D::Error> {
    let text = String::deserialize(deserializer)?;
    if text.trim().is_empty() {
        return Ok(None);
    }
    text.parse().map(Some).map_err(|_| {
        serde::de::Error::custom(format!(
            "invalid socket address {text:?}; expected IP:PORT such as 127.0.0.1:9464, \
             or an empty string to turn the listener off"
        ))
    })
}

fn resolve(base: &Path, path: &mut PathBuf) {
    if path.is_relative() && !path.as_os_str().is_empty() {
        *path = base.join(&*path);
    }
}

fn validate_paths(paths: &[(&str, &PathBuf)]) -> Result<(), ConfigError> {
    for (key, path) in paths {
        if path.as_os_str().is_empty() {
            return Err(ConfigError::new(
                *key,
                "empty path; set a file or folder path",
            ));
        }
    }
    Ok(())
}

fn require_nonzero(key: &str, value: u64) -> Result<(), ConfigError> {
    if value == 0 {
        return Err(ConfigError::new(
            key,
            "must be greater than 0; set a positive value",
        ));
    }
    Ok(())
}

fn validate_http(http: &Http) -> Result<(), ConfigError> {
    require_nonzero("http.max_body_bytes", http.max_body_bytes as u64)?;
    require_nonzero(
        "http.client_request_timeout_ms",
        http.client_request_timeout_ms,
    )?;
    require_nonzero("http.body_timeout_ms", http.body_timeout_ms)?;
    require_nonzero("http.max_connections", http.max_connections as u64)
}

fn validate_metrics(metrics: &Metrics, listen: SocketAddr) -> Result<(), ConfigError> {
    let Some(addr) = metrics.listen else {
        return Ok(());
    };
    if !addr.ip().is_loopback() {
        return Err(ConfigError::new(
            "metrics.listen",
            format!(
                "{addr} is not a loopback address; metrics are served over plain HTTP \
                 without authentication, so bind them to 127.0.0.1 or [::1]"
            ),
        ));
    }
    if addr.port() != 0 && addr == listen {
        return Err(ConfigError::new(
            "metrics.listen",
            format!(
                "{addr} is also `listen`; give the metrics listener a port of its own \
                 or set `metrics.listen = \"\"` to turn it off"
            ),
        ));
    }
    Ok(())
}

/// Rejects a store path whose audit socket path would not fit a Unix
/// socket address.
fn validate_store_socket(store: &Store) -> Result<(), ConfigError> {
    let socket = crate::audit::socket::socket_path(&store.path);
    let length = socket.as_os_str().len();
    if length > crate::audit::socket::MAX_SOCKET_PATH_BYTES {
        return Err(ConfigError::new(
            "store.path",
            format!(
                "the audit socket {} would be {length} bytes long, over the {} bytes a Unix \
                 socket path may have; choose a shorter store folder",
                socket.display(),
                crate::audit::socket::MAX_SOCKET_PATH_BYTES
            ),
        ));
    }
    Ok(())
}

/// Rejects an upstream URL that names the proxy's own listen address,
/// which would forward every counter call back to the proxy.
fn validate_upstream_is_not_self(
    upstream: &Upstream,
    listen: SocketAddr,
) -> Result<(), ConfigError> {
    let Ok(uri) = upstream.url.parse::<actix_web::http::Uri>() else {
        return Ok(());
    };
    let host = uri.host().unwrap_or_default().trim_matches(['[', ']']);
    let Ok(ip) = host.parse::<IpAddr>() else {
        return Ok(());
    };
    let port = uri.port_u16().unwrap_or(443);
    let same_ip = ip == listen.ip() || (listen.ip().is_unspecified() && ip.is_loopback());
    if listen.port() != 0 && port == listen.port() && same_ip {
        return Err(ConfigError::new(
            "upstream.url",
            format!(
                "{:?} is the proxy's own `listen` address ({listen}); point it at k_server",
                upstream.url
            ),
        ));
    }
    Ok(())
}

fn validate_upstream(upstream: &Upstream) -> Result<(), ConfigError> {
    let uri: actix_web::http::Uri = upstream.url.parse().map_err(|error| {
        ConfigError::new(
            "upstream.url",
            format!(
                "invalid URL {:?}: {error}; expected https://HOST:PORT",
                upstream.url
            ),
        )
    })?;
    if uri.scheme_str() != Some("https") {
        return Err(ConfigError::new(
            "upstream.url",
            format!(
                "{:?} is not an https:// URL; the server accepts only mutual TLS",
                upstream.url
            ),
        ));
    }
    if uri.host().is_none_or(str::is_empty) {
        return Err(ConfigError::new(
            "upstream.url",
            format!("{:?} has no host; expected https://HOST:PORT", upstream.url),
        ));
    }
    if uri.query().is_some() {
        return Err(ConfigError::new(
            "upstream.url",
            format!("{:?} has a query string; remove it", upstream.url),
        ));
    }

    require_nonzero("upstream.pool_size", upstream.pool_size as u64)?;
    require_nonzero("upstream.connect_timeout_ms", upstream.connect_timeout_ms)?;
    require_nonzero("upstream.request_timeout_ms", upstream.request_timeout_ms)
}

fn validate_card(card: &Card) -> Result<(), ConfigError> {
    if card.device.trim().is_empty() {
        return Err(ConfigError::new(
            "card.device",
            "empty device spec; set `sim`, a HID device or udp:HOST:PORT",
        ));
    }
    require_nonzero("card.queue_limit", card.queue_limit as u64)?;
    require_nonzero("card.confirm_timeout_s", card.confirm_timeout_s)?;
    require_nonzero("card.idle_timeout_ms", card.idle_timeout_ms)?;
    require_nonzero(
        "card.reconnect_max_backoff_ms",
        card.reconnect_max_backoff_ms,
    )
}

fn validate_session(session: &Session) -> Result<(), ConfigError> {
    require_nonzero("session.idle_timeout_s", session.idle_timeout_s)?;
    require_nonzero("session.lifetime_s", session.lifetime_s)?;
    require_nonzero("session.cleanup_interval_s", session.cleanup_interval_s)?;
    if session.idle_timeout_s > session.lifetime_s {
        return Err(ConfigError::new(
            "session.idle_timeout_s",
            format!(
                "{} s is longer than `session.lifetime_s` ({} s); \
                 lower the idle timeout or raise the lifetime",
                session.idle_timeout_s, session.lifetime_s
            ),
        ));
    }

    // A cookie name is an RFC 6265 token: visible ASCII without separators.
    let name = &session.cookie_name;
    let valid_char = |c: char| c.is_ascii_graphic() && !"()<>@,;:\\\"/[]?={}".contains(c);
    if name.is_empty() || !name.chars().all(valid_char) {
        return Err(ConfigError::new(
            "session.cookie_name",
            format!("invalid cookie name {name:?}; use letters, digits, `_` or `-`"),
        ));
    }
    Ok(())
}

fn validate_webauthn(webauthn: &Webauthn) -> Result<(), ConfigError> {
    let host = parse_origin_host(&webauthn.origin)?;
    let rp_id = webauthn.rp_id.as_str();

    if rp_id.parse::<IpAddr>().is_ok() || rp_id.starts_with('[') {
        return Err(ConfigError::new(
            "webauthn.rp_id",
            format!(
                "{rp_id:?} is an IP address, which browsers reject as a relying party ID; \
                 use a domain such as localhost in `webauthn.rp_id` and `webauthn.origin`"
            ),
        ));
    }

    // NOTE: without the public suffix list, a multi-label public suffix such
    // as `co.uk` passes this check, although browsers reject it at enrollment.
    let is_suffix = host
        .strip_suffix(rp_id)
        .is_some_and(|prefix| prefix.ends_with('.'))
        && rp_id.contains('.');
    if rp_id != host && !is_suffix {
        return Err(ConfigError::new(
            "webauthn.rp_id",
            format!(
                "{rp_id:?} is neither the host {host:?} of `webauthn.origin` ({:?}) \
                 nor a registrable suffix of it; set `webauthn.rp_id` to {host:?} \
                 or change `webauthn.origin`",
                webauthn.origin
            ),
        ));
    }

    if webauthn.rp_name.trim().is_empty() {
        return Err(ConfigError::new(
            "webauthn.rp_name",
            "empty name; set the name the card shows",
        ));
    }
    Ok(())
}

/// Returns the host of an `https://HOST[:PORT]` origin, written the way a
/// browser serializes it in the `Origin` header.
fn parse_origin_host(origin: &str) -> Result<&str, ConfigError> {
    let invalid = |reason: String| {
        ConfigError::new(
            "webauthn.origin",
            format!("invalid origin {origin:?}: {reason}; expected https://HOST[:PORT]"),
        )
    };

    let authority = origin
        .strip_prefix("https://")
        .ok_or_else(|| invalid("the scheme must be https".to_owned()))?;
    if authority.contains(['/', '?', '#', '@']) {
        return Err(invalid("an origin has no path, query or user".to_owned()));
    }

    let (host, port) = if authority.starts_with('[') {
        let end = authority
            .find(']')
            .ok_or_else(|| invalid("unclosed IPv6 bracket".to_owned()))?;
        let (host, rest) = authority.split_at(end + 1);
        (host, rest.strip_prefix(':'))
    } else {
        match authority.split_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (authority, None),
        }
    };

    if host.is_empty() {
        return Err(invalid("the host is empty".to_owned()));
    }
    if host.chars().any(|c| c.is_ascii_uppercase()) {
        return Err(invalid("browsers send the host in lowercase".to_owned()));
    }
    if let Some(port) = port {
        match port.parse::<u16>() {
            Ok(443) => {
                return Err(invalid(
                    "browsers omit the default port 443 from the origin".to_owned(),
                ))
            }
            Ok(0) | Err(_) => return Err(invalid(format!("invalid port {port:?}"))),
            Ok(_) => {}
        }
    }
    Ok(host)
}

fn describe_http(out: &mut TomlWriter, http: &Http) {
    out.section("http");
    out.number("max_body_bytes", http.max_body_bytes);
    out.number("workers", http.workers);
    out.number("keep_alive_s", http.keep_alive_s);
    out.number("client_request_timeout_ms", http.client_request_timeout_ms);
    out.number("body_timeout_ms", http.body_timeout_ms);
    out.number("shutdown_timeout_s", http.shutdown_timeout_s);
    out.number("max_connections", http.max_connections);
}

fn describe_metrics(out: &mut TomlWriter, metrics: &Metrics) {
    out.section("metrics");
    match metrics.listen {
        Some(addr) => out.value("listen", &addr.to_string()),
        None => {
            out.comment("the metrics listener is off");
            out.value("listen", "");
        }
    }
}

/// Writes the resolved config as TOML for `--check-config`.
#[derive(Default)]
struct TomlWriter {
    text: String,
}

impl TomlWriter {
    fn section(&mut self, name: &str) {
        let _ = write!(self.text, "\n[{name}]\n");
    }

    fn value(&mut self, key: &str, value: &str) {
        let _ = writeln!(self.text, "{key} = {}", quote(value));
    }

    fn path(&mut self, key: &str, path: &Path) {
        self.value(key, &path.display().to_string());
    }

    fn number(&mut self, key: &str, value: impl fmt::Display) {
        let _ = writeln!(self.text, "{key} = {value}");
    }

    fn boolean(&mut self, key: &str, value: bool) {
        let _ = writeln!(self.text, "{key} = {value}");
    }

    fn comment(&mut self, text: &str) {
        let _ = writeln!(self.text, "# {text}");
    }

    fn finish(self) -> String {
        self.text
    }
}

/// Quotes `value` as a TOML basic string.
fn quote(value: &str) -> String {
    let mut quoted = String::with_capacity(value.len() + 2);
    quoted.push('"');
    for c in value.chars() {
        match c {
            '"' => quoted.push_str("\\\""),
            '\\' => quoted.push_str("\\\\"),
            '\n' => quoted.push_str("\\n"),
            '\t' => quoted.push_str("\\t"),
            c if c.is_control() => {
                let _ = write!(quoted, "\\u{:04X}", c as u32);
            }
            c => quoted.push(c),
        }
    }
    quoted.push('"');
    quoted
}

#[cfg(test)]
mod tests {
    use super::*;

    const SERVER_TOML: &str = r#"
listen = "127.0.0.1:9443"

[tls]
cert = "certs/server.crt"
key = "certs/server.key"
client_ca = "/etc/cardgate/ca.crt"

[store]
path = "data/server"
"#;

    const PROXY_TOML: &str = r#"
listen = "127.0.0.1:8443"

[tls]
cert = "certs/proxy.crt"
key = "certs/proxy.key"

[upstream]
url = "https://127.0.0.1:9443"
ca = "certs/ca.crt"
client_cert = "certs/proxy-client.crt"
client_key = "certs/proxy-client.key"

[store]
path = "data/proxy"

[webauthn]
rp_id = "localhost"
origin = "https://localhost:8443"
"#;

    fn write_config(text: &str) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().expect("create tempdir");
        let path = dir.path().join("role.toml");
        std::fs::write(&path, text).expect("write config");
        (dir, path)
    }

    fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(name, value)| (name.to_string(), value.to_string()))
            .collect()
    }

    fn proxy_error(text: &str) -> ConfigError {
        let (_dir, path) = write_config(text);
        load_proxy_with_env(&path, HashMap::new()).expect_err("config should be rejected")
    }

    #[test]
    fn server_relative_paths_resolve_against_config_folder() {
        let (dir, path) = write_config(SERVER_TOML);
        let config = load_server_with_env(&path, HashMap::new()).expect("load");
        let base = std::path::absolute(dir.path()).expect("absolute");

        assert_eq!(config.tls.cert, base.join("certs/server.crt"));
        assert_eq!(config.store.path, base.join("data/server"));
        assert_eq!(config.tls.client_ca, PathBuf::from("/etc/cardgate/ca.crt"));
        assert_eq!(config.http, Http::default());
    }

    #[test]
    fn env_overrides_file_values() {
        let (dir, path) = write_config(PROXY_TOML);
        let overrides = env(&[
            ("CARDGATE_LISTEN", "127.0.0.1:9000"),
            ("CARDGATE_CARD__DEVICE", "udp:127.0.0.1:8111"),
            ("CARDGATE_CARD__QUEUE_LIMIT", "4"),
            ("CARDGATE_STORE__PATH", "other"),
            ("CARDGATE_WEBAUTHN__USER_VERIFICATION", "false"),
        ]);
        let config = load_proxy_with_env(&path, overrides).expect("load");
        let base = std::path::absolute(dir.path()).expect("absolute");

        assert_eq!(config.listen, "127.0.0.1:9000".parse().expect("addr"));
        assert_eq!(config.card.device, "udp:127.0.0.1:8111");
        assert_eq!(config.card.queue_limit, 4);
        assert_eq!(config.store.path, base.join("other"));
        assert!(!config.webauthn.user_verification);
        assert_eq!(config.card.confirm_timeout_s, 30);
    }

    #[test]
    fn unknown_file_key_is_named() {
        let error = proxy_error(&format!("{PROXY_TOML}\n[session]\nidle_timeout = 5\n"));
        assert_eq!(error.key, "session.idle_timeout");
        assert!(error.message.contains("unknown key"), "{error}");
        assert!(error.message.contains("idle_timeout_s"), "{error}");
    }

    #[test]
    fn unknown_top_level_key_is_named() {
        let error = proxy_error(&format!("verbose = true\n{PROXY_TOML}"));
        assert_eq!(error.key, "verbose");
    }

    #[test]
    fn unknown_env_variable_is_named() {
        let (_dir, path) = write_config(SERVER_TOML);
        let error = load_server_with_env(&path, env(&[("CARDGATE_HTTP__WORKERZ", "2")]))
            .expect_err("unknown variable");
        assert_eq!(error.key, "http.workerz");
        assert!(error.message.contains("CARDGATE_HTTP__WORKERZ"), "{error}");
    }

    #[test]
    fn missing_key_names_its_env_variable() {
        let error = proxy_error(&PROXY_TOML.replace("rp_id = \"localhost\"\n", ""));
        assert_eq!(error.key, "webauthn.rp_id");
        assert!(
            error.message.contains("CARDGATE_WEBAUTHN__RP_ID"),
            "{error}"
        );
    }

    #[test]
    fn invalid_number_from_env_names_key_and_source() {
        let (_dir, path) = write_config(SERVER_TOML);
        let error = load_server_with_env(&path, env(&[("CARDGATE_HTTP__WORKERS", "many")]))
            .expect_err("invalid number");
        assert_eq!(error.key, "http.workers");
        assert!(error.message.contains("CARDGATE_HTTP__WORKERS"), "{error}");
        assert!(error.message.contains("many"), "{error}");
    }

    #[test]
    fn invalid_listen_address_shows_value() {
        let (_dir, path) = write_config(&SERVER_TOML.replace("127.0.0.1:9443", "localhost"));
        let error = load_server_with_env(&path, HashMap::new()).expect_err("invalid address");
        assert_eq!(error.key, "listen");
        assert!(error.message.contains("\"localhost\""), "{error}");
    }

    #[test]
    fn rp_id_origin_mismatch_names_both_keys() {
        let error =
            proxy_error(&PROXY_TOML.replace("rp_id = \"localhost\"", "rp_id = \"example.com\""));
        let text = error.to_string();
        assert!(text.contains("webauthn.rp_id"), "{text}");
        assert!(text.contains("webauthn.origin"), "{text}");
    }

    #[test]
    fn rp_id_accepts_registrable_suffix() {
        let mut webauthn = Webauthn::new("example.com", "https://login.example.com");
        assert_eq!(validate_webauthn(&webauthn), Ok(()));

        webauthn.rp_id = "ample.com".to_owned();
        assert!(
            validate_webauthn(&webauthn).is_err(),
            "suffix must end at a label"
        );

        webauthn.rp_id = "com".to_owned();
        assert!(
            validate_webauthn(&webauthn).is_err(),
            "a top-level domain is no RP ID"
        );
    }

    #[test]
    fn origin_with_path_or_http_is_rejected() {
        for origin in [
            "http://localhost:8443",
            "https://localhost:8443/",
            "https://LOCALHOST",
            "https://localhost:443",
            "https://localhost:0",
            "https://",
        ] {
            let webauthn = Webauthn::new("localhost", origin);
            let error = validate_webauthn(&webauthn).expect_err(origin);
            assert_eq!(error.key, "webauthn.origin", "{origin}");
        }
    }

    #[test]
    fn idle_timeout_longer_than_lifetime_names_both_keys() {
        let error = proxy_error(&format!(
            "{PROXY_TOML}\n[session]\nidle_timeout_s = 600\nlifetime_s = 300\n"
        ));
        let text = error.to_string();
        assert!(text.contains("session.idle_timeout_s"), "{text}");
        assert!(text.contains("session.lifetime_s"), "{text}");
    }

    #[test]
    fn zero_limits_are_rejected() {
        let error = proxy_error(&format!("{PROXY_TOML}\n[http]\nmax_body_bytes = 0\n"));
        assert_eq!(error.key, "http.max_body_bytes");

        let error = proxy_error(&format!("{PROXY_TOML}\n[card]\nqueue_limit = 0\n"));
        assert_eq!(error.key, "card.queue_limit");
    }

    #[test]
    fn upstream_url_must_be_https() {
        let error =
            proxy_error(&PROXY_TOML.replace("https://127.0.0.1:9443", "http://127.0.0.1:9443"));
        assert_eq!(error.key, "upstream.url");
    }

    #[test]
    fn toml_syntax_error_names_file() {
        let (_dir, path) = write_config("listen = \n");
        let error = load_server_with_env(&path, HashMap::new()).expect_err("syntax error");
        assert!(error.message.contains("role.toml"), "{error}");
    }

    #[test]
    fn missing_file_is_reported() {
        let error = load_server_with_env(Path::new("/nonexistent/cardgate.toml"), HashMap::new())
            .expect_err("missing file");
        assert!(
            error.message.contains("/nonexistent/cardgate.toml"),
            "{error}"
        );
    }

    #[test]
    fn describe_lists_resolved_values() {
        let (_dir, path) = write_config(PROXY_TOML);
        let config = load_proxy_with_env(&path, HashMap::new()).expect("load");
        let text = config.describe();

        assert!(text.contains("listen = \"127.0.0.1:8443\""), "{text}");
        assert!(text.contains("[webauthn]\nrp_id = \"localhost\""), "{text}");
        assert!(
            text.contains("cookie_name = \"cardgate_session\""),
            "{text}"
        );
        let key_line = format!(
            "client_key = {}",
            quote(&config.upstream.client_key.display().to_string())
        );
        assert!(text.contains(&key_line), "{text}");
    }

    #[test]
    fn metrics_listen_defaults_per_role_and_empty_turns_off() {
        let (_dir, path) = write_config(PROXY_TOML);
        let proxy = load_proxy_with_env(&path, HashMap::new()).expect("load");
        assert_eq!(proxy.metrics.listen, Some(Metrics::PROXY_DEFAULT));
        let (_dir, path) = write_config(SERVER_TOML);
        let server = load_server_with_env(&path, HashMap::new()).expect("load");
        assert_eq!(server.metrics.listen, Some(Metrics::SERVER_DEFAULT));

        let (_dir, path) = write_config(&format!("{PROXY_TOML}\n[metrics]\nlisten = \"\"\n"));
        let off = load_proxy_with_env(&path, HashMap::new()).expect("load");
        assert_eq!(off.metrics.listen, None);
        assert!(off
            .describe()
            .contains("[metrics]\n# the metrics listener is off"));

        let (_dir, path) = write_config(PROXY_TOML);
        let from_env =
            load_proxy_with_env(&path, env(&[("CARDGATE_METRICS__LISTEN", "")])).expect("load");
        assert_eq!(from_env.metrics.listen, None);
    }

    #[test]
    fn metrics_listen_must_be_loopback() {
        let error = proxy_error(&format!(
            "{PROXY_TOML}\n[metrics]\nlisten = \"0.0.0.0:9464\"\n"
        ));
        assert_eq!(error.key, "metrics.listen");
        assert!(error.message.contains("loopback"), "{error}");

        let error = proxy_error(&format!("{PROXY_TOML}\n[metrics]\nlisten = \"nowhere\"\n"));
        assert_eq!(error.key, "metrics.listen");
    }

    #[test]
    fn metrics_on_api_port_names_both_keys() {
        let error = proxy_error(&format!(
            "{PROXY_TOML}\n[metrics]\nlisten = \"127.0.0.1:8443\"\n"
        ));
        assert_eq!(error.key, "metrics.listen");
        assert!(error.message.contains("`listen`"), "{error}");
    }

    #[test]
    fn upstream_pointing_at_proxy_is_rejected() {
        let error = proxy_error(&PROXY_TOML.replace(
            "url = \"https://127.0.0.1:9443\"",
            "url = \"https://127.0.0.1:8443\"",
        ));
        assert_eq!(error.key, "upstream.url");
        assert!(error.message.contains("`listen`"), "{error}");
    }

    #[test]
    fn store_path_too_long_for_audit_socket() {
        let long = "s".repeat(120);
        let error = proxy_error(&PROXY_TOML.replace("data/proxy", &long));
        assert_eq!(error.key, "store.path");
        assert!(error.message.contains("audit socket"), "{error}");
    }

    #[test]
    fn shipped_config_files_load() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let server = load_server_with_env(&root.join("config/server.toml"), HashMap::new())
            .expect("config/server.toml");
        let proxy = load_proxy_with_env(&root.join("config/proxy.toml"), HashMap::new())
            .expect("config/proxy.toml");

        assert_eq!(server.tls.client_ca, root.join("config/../certs/ca.crt"));
        assert_eq!(proxy.upstream.ca, root.join("config/../certs/ca.crt"));
        assert_eq!(
            proxy.upstream.url,
            format!("https://{}", server.listen),
            "the proxy's upstream must point at the server's listen address"
        );
    }
}
