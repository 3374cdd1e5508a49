//! Helpers shared by the integration tests: certificates in a tempdir,
//! server configs on port 0 and awc clients with or without a client
//! certificate.

// Each test crate compiles this module and uses only some of it.
#![allow(dead_code)]

pub mod chain;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use cardgate::certs::{self, InitOptions};
use cardgate::config::{ServerConfig, ServerTls, Store};

/// Timeout of one request from a test client, so that a hung server fails
/// the test instead of blocking it.
pub const CLIENT_TIMEOUT: Duration = Duration::from_secs(10);

/// A CA with proxy, server and proxy-client certificates from
/// `certs::init`, deleted when dropped.
pub struct TestCerts {
    pub dir: tempfile::TempDir,
}

impl TestCerts {
    /// Creates a fresh CA and its certificates in a new tempdir.
    pub fn new() -> Self {
        let dir = tempfile::tempdir().expect("create tempdir for certificates");
        certs::init(&InitOptions {
            out: dir.path().to_path_buf(),
            force: false,
            proxy_names: vec![],
            server_names: vec![],
        })
        .expect("certs init");
        TestCerts { dir }
    }

    /// Path of one of the files `certs::init` writes, such as `ca.crt`.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    pub fn ca(&self) -> PathBuf {
        self.path("ca.crt")
    }

    /// Returns the proxy's client certificate and key, for mutual TLS to the
    /// server.
    pub fn proxy_client(&self) -> (PathBuf, PathBuf) {
        (self.path("proxy-client.crt"), self.path("proxy-client.key"))
    }
}

/// Builds a server config on 127.0.0.1 port 0 with the certificates of `certs`
/// and its store at `store`, with two workers.
pub fn server_config(certs: &TestCerts, store: &Path) -> ServerConfig {
    let mut config = ServerConfig::new(
        SocketAddr::from(([127, 0, 0, 1], 0)),
        ServerTls {
            cert: certs.path("server.crt"),
            key: certs.path("server.key"),
            client_ca: certs.ca(),
        },
        Store {
            path: store.to_path_buf(),
        },
    );
    config.http.workers = 2;
    config
}

/// Builds an HTTPS client that trusts the CAs in `ca` and, with `client_cert` as
/// (certificate, key), presents that certificate. Must be called inside an
/// actix System.
pub fn client(ca: &Path, client_cert: Option<(&Path, &Path)>) -> awc::Client {
    let tls = cardgate::tls::client_config(ca, client_cert).expect("client TLS config");
    let connector = awc::Connector::new()
        .rustls_0_23(Arc::new(tls))
        .timeout(CLIENT_TIMEOUT);
    awc::Client::builder()
        .connector(connector)
        .timeout(CLIENT_TIMEOUT)
        .finish()
}

/// Builds a client that presents the proxy's client certificate from `certs`.
pub fn proxy_client(certs: &TestCerts) -> awc::Client {
    let (cert, key) = certs.proxy_client();
    client(&certs.ca(), Some((&cert, &key)))
}

/// Builds a client without a client certificate that trusts the CA of `certs`.
pub fn anonymous_client(certs: &TestCerts) -> awc::Client {
    client(&certs.ca(), None)
}

/// `https://ADDR/PATH` for a server bound to `addr`. The certificates from
/// `certs::init` name 127.0.0.1 and ::1, so the address verifies.
pub fn url(addr: SocketAddr, path: &str) -> String {
    format!("https://{addr}{path}")
}
