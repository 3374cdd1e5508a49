//! Checks that a role's files exist and fit together, run by
//! `--check-config` and before each start, so that a bad file is reported
//! with the config key that names it.
//!
//! Loading a config already checks each value on its own and pairs of keys
//! that contradict each other. This module reads the files those values
//! name: every certificate and key must parse, each key must belong to its
//! certificate, CA files must hold usable trust anchors, and folders must
//! not be files. It creates and changes nothing.

use std::io::ErrorKind;
use std::path::Path;

use crate::config::{ConfigError, ProxyConfig, ServerConfig};
use crate::tls::{self, TlsError};

/// Checks the files of the server role.
pub fn check_server(config: &ServerConfig) -> Result<(), ConfigError> {
    key_pair(("tls.cert", &config.tls.cert), ("tls.key", &config.tls.key))?;
    trust_anchors("tls.client_ca", &config.tls.client_ca)?;
    folder("store.path", &config.store.path)
}

/// Checks the files of the proxy role.
pub fn check_proxy(config: &ProxyConfig) -> Result<(), ConfigError> {
    key_pair(("tls.cert", &config.tls.cert), ("tls.key", &config.tls.key))?;
    trust_anchors("upstream.ca", &config.upstream.ca)?;
    key_pair(
        ("upstream.client_cert", &config.upstream.client_cert),
        ("upstream.client_key", &config.upstream.client_key),
    )?;
    folder("store.path", &config.store.path)?;
    if let Some(state) = &config.card.sim_state {
        folder("card.sim_state", state)?;
    }
    Ok(())
}

/// Loads a certificate chain and its key, each reported under its own
/// config key, then checks that they belong together.
fn key_pair(cert: (&str, &Path), key: (&str, &Path)) -> Result<(), ConfigError> {
    let (cert_key, cert_path) = cert;
    let (key_key, key_path) = key;
    tls::load_certs(cert_path).map_err(|e| file_error(cert_key, e))?;
    tls::load_key(key_path).map_err(|e| file_error(key_key, e))?;

    tls::check_key_pair(cert_path, key_path).map_err(|e| match e {
        TlsError::KeyMismatch { .. } => ConfigError::new(
            key_key,
            format!(
                "{} does not belong to the certificate in `{cert_key}` ({}); set `{key_key}` \
                 to the key made with that certificate, or `{cert_key}` to the certificate \
                 of this key",
                key_path.display(),
                cert_path.display()
            ),
        ),
        other => file_error(key_key, other),
    })
}

fn trust_anchors(key: &str, path: &Path) -> Result<(), ConfigError> {
    tls::check_trust_anchors(path)
        .map(drop)
        .map_err(|e| file_error(key, e))
}

/// Accepts a folder that exists or can be created; rejects anything else
/// at the path.
fn folder(key: &str, path: &Path) -> Result<(), ConfigError> {
    match std::fs::metadata(path) {
        Ok(metadata) if metadata.is_dir() => Ok(()),
        Ok(_) => Err(ConfigError::new(
            key,
            format!("{} exists and is not a folder", path.display()),
        )),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
        Err(e) => Err(ConfigError::new(
            key,
            format!("cannot inspect {}: {e}", path.display()),
        )),
    }
}

/// Turns a TLS file error into a config error under `key`, with what to do
/// about it.
fn file_error(key: &str, error: TlsError) -> ConfigError {
    let hint = match &error {
        TlsError::Read { source, .. } if source.kind() == ErrorKind::NotFound => {
            "; check the path (relative paths resolve against the config file's folder)"
        }
        TlsError::Read { source, .. } if source.kind() == ErrorKind::PermissionDenied => {
            "; make the file readable by the daemon's user"
        }
        _ => "",
    };
    ConfigError::new(key, format!("{error}{hint}"))
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::net::SocketAddr;
    use std::path::PathBuf;

    use super::*;
    use crate::certs::{init, InitOptions};
    use crate::config::{ServerTls, Store, Tls, Upstream, Webauthn};

    fn certs() -> tempfile::TempDir {
        let dir = tempfile::tempdir().expect("tempdir");
        init(&InitOptions {
            out: dir.path().to_path_buf(),
            force: false,
            proxy_names: vec![],
            server_names: vec![],
        })
        .expect("certs init");
        dir
    }

    fn proxy(dir: &Path) -> ProxyConfig {
        let path = |name: &str| dir.join(name);
        ProxyConfig::new(
            SocketAddr::from(([127, 0, 0, 1], 8443)),
            Tls {
                cert: path("proxy.crt"),
                key: path("proxy.key"),
            },
            Upstream::new(
                "https://127.0.0.1:9443",
                path("ca.crt"),
                path("proxy-client.crt"),
                path("proxy-client.key"),
            ),
            Store {
                path: path("store"),
            },
            Webauthn::new("localhost", "https://localhost:8443"),
        )
    }

    fn server(dir: &Path) -> ServerConfig {
        let path = |name: &str| dir.join(name);
        ServerConfig::new(
            SocketAddr::from(([127, 0, 0, 1], 9443)),
            ServerTls {
                cert: path("server.crt"),
                key: path("server.key"),
                client_ca: path("ca.crt"),
            },
            Store {
                path: path("store"),
            },
        )
    }

    #[test]
    fn generated_certificates_pass() {
        let dir = certs();
        assert_eq!(check_proxy(&proxy(dir.path())), Ok(()));
        assert_eq!(check_server(&server(dir.path())), Ok(()));
    }

    #[test]
    fn missing_file_names_its_key() {
        let dir = certs();
        let mut config = proxy(dir.path());
        config.upstream.client_cert = dir.path().join("absent.crt");
        let error = check_proxy(&config).expect_err("missing file");
        assert_eq!(error.key, "upstream.client_cert");
        assert!(error.message.contains("absent.crt"), "{error}");
        assert!(error.message.contains("check the path"), "{error}");
    }

    #[test]
    fn unreadable_key_names_its_key() {
        let dir = certs();
        let garbage = dir.path().join("garbage.key");
        std::fs::write(&garbage, "this is not a key\n").expect("write");
        let mut config = server(dir.path());
        config.tls.key = garbage;
        let error = check_server(&config).expect_err("no key in file");
        assert_eq!(error.key, "tls.key");
        assert!(error.message.contains("no private key found"), "{error}");

        // A folder in place of the key cannot be read as a file.
        config.tls.key = dir.path().to_path_buf();
        let error = check_server(&config).expect_err("folder as key");
        assert_eq!(error.key, "tls.key");
        assert!(error.message.contains("cannot read"), "{error}");
    }

    #[test]
    fn mismatched_key_names_both_keys() {
        let dir = certs();
        let mut config = proxy(dir.path());
        config.tls.key = dir.path().join("server.key");
        let error = check_proxy(&config).expect_err("key of another certificate");
        assert_eq!(error.key, "tls.key");
        assert!(error.message.contains("`tls.cert`"), "{error}");
        assert!(error.message.contains("server.key"), "{error}");
    }

    #[test]
    fn certificate_as_ca_must_parse() {
        let dir = certs();
        let mut config = server(dir.path());
        config.tls.client_ca = dir.path().join("ca.key");
        let error = check_server(&config).expect_err("a key is no CA");
        assert_eq!(error.key, "tls.client_ca");
    }

    #[test]
    fn store_path_that_is_a_file_is_rejected() {
        let dir = certs();
        let mut config = server(dir.path());
        config.store.path = dir.path().join("ca.crt");
        let error = check_server(&config).expect_err("file as store");
        assert_eq!(error.key, "store.path");
        assert!(error.message.contains("not a folder"), "{error}");
    }

    #[test]
    fn loaded_file_paths_are_checked_after_resolution() {
        let dir = certs();
        let config_path: PathBuf = dir.path().join("server.toml");
        std::fs::write(
            &config_path,
            "listen = \"127.0.0.1:9443\"\n[tls]\ncert = \"server.crt\"\nkey = \"proxy.key\"\n\
             client_ca = \"ca.crt\"\n[store]\npath = \"store\"\n",
        )
        .expect("write config");
        let config =
            crate::config::load_server_with_env(&config_path, HashMap::new()).expect("load");
        let error = check_server(&config).expect_err("proxy key with server certificate");
        assert_eq!(error.key, "tls.key");
    }
}
