//! rustls configurations built from PEM files, with the `ring` provider.
//!
//! Both sides offer only ALPN `http/1.1`, which is what actix-web and awc
//! speak here (HTTP/2 is not compiled in).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use rustls_pki_types::pem::{self, PemObject};
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// ALPN protocol both sides offer.
pub const ALPN_HTTP_1_1: &[u8] = b"http/1.1";

/// Error while building a TLS configuration. Each variant names the file
/// at fault.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}: invalid PEM: {reason}", path.display())]
    InvalidPem { path: PathBuf, reason: String },
    #[error("{}: no certificate found; expected PEM blocks starting with -----BEGIN CERTIFICATE-----", path.display())]
    NoCertificate { path: PathBuf },
    #[error("{}: no private key found; expected a PEM PKCS#8, SEC1 or PKCS#1 private key", path.display())]
    NoPrivateKey { path: PathBuf },
    #[error("{}: unusable private key: {reason}", path.display())]
    UnusableKey { path: PathBuf, reason: String },
    #[error("{}: the certificate does not belong to the private key in {}; use the key generated with this certificate", cert.display(), key.display())]
    KeyMismatch { cert: PathBuf, key: PathBuf },
    #[error("{}: certificate cannot be used as a trust anchor: {reason}", path.display())]
    InvalidTrustAnchor { path: PathBuf, reason: String },
    #[error("{}: cannot verify client certificates with these CAs: {reason}", path.display())]
    ClientVerifier { path: PathBuf, reason: String },
    #[error("TLS configuration failed: {0}")]
    Rustls(#[from] rustls::Error),
}

/// Reads all certificates from a PEM file, in file order.
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let bytes = read(path)?;
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|error| invalid_pem(path, error))?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate {
            path: path.to_path_buf(),
        });
    }
    Ok(certs)
}

/// Reads the first private key from a PEM file.
pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let bytes = read(path)?;
    PrivateKeyDer::from_pem_slice(&bytes).map_err(|error| match error {
        pem::Error::NoItemsFound => TlsError::NoPrivateKey {
            path: path.to_path_buf(),
        },
        other => invalid_pem(path, other),
    })
}

/// Builds a server config from a certificate chain and its key. With
/// `client_ca`, every client must present a certificate signed by one of
/// the CAs in that file; without it, no client certificate is requested.
pub fn server_config(
    cert: &Path,
    key: &Path,
    client_ca: Option<&Path>,
) -> Result<ServerConfig, TlsError> {
    let provider = provider();
    let chain = load_certs(cert)?;
    let private_key = load_key(key)?;
    let certified = certified_key(&provider, cert, key, chain, private_key)?;

    let verifier = match client_ca {
        Some(ca) => {
            let roots = root_store(ca)?;
            WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                .build()
                .map_err(|error| TlsError::ClientVerifier {
                    path: ca.to_path_buf(),
                    reason: error.to_string(),
                })?
        }
        None => WebPkiClientVerifier::no_client_auth(),
    };

    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(Arc::new(rustls::sign::SingleCertAndKey::from(certified)));
    config.alpn_protocols = vec![ALPN_HTTP_1_1.to_vec()];
    Ok(config)
}

/// Builds a client config that trusts only the CAs in `ca` and, with
/// `client_cert` as (certificate, key), presents that certificate.
pub fn client_config(
    ca: &Path,
    client_cert: Option<(&Path, &Path)>,
) -> Result<ClientConfig, TlsError> {
    let provider = provider();
    let roots = root_store(ca)?;
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots);

    let mut config = match client_cert {
        Some((cert, key)) => {
            let chain = load_certs(cert)?;
            let private_key = load_key(key)?;
            let certified = certified_key(&provider, cert, key, chain, private_key)?;
            builder.with_client_cert_resolver(Arc::new(rustls::sign::SingleCertAndKey::from(
                certified,
            )))
        }
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![ALPN_HTTP_1_1.to_vec()];
    Ok(config)
}

/// Checks that `key` holds the private key of the first certificate in
/// `cert`, the way both config builders do before they use the pair.
pub fn check_key_pair(cert: &Path, key: &Path) -> Result<(), TlsError> {
    let provider = provider();
    let chain = load_certs(cert)?;
    let private_key = load_key(key)?;
    certified_key(&provider, cert, key, chain, private_key).map(drop)
}

/// Checks that every certificate in `ca` can be a trust anchor; returns
/// how many there are.
pub fn check_trust_anchors(ca: &Path) -> Result<usize, TlsError> {
    root_store(ca).map(|roots| roots.len())
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.to_path_buf(),
        source,
    })
}

fn invalid_pem(path: &Path, error: pem::Error) -> TlsError {
    TlsError::InvalidPem {
        path: path.to_path_buf(),
        reason: error.to_string(),
    }
}

/// Loads the key and checks that the chain's first certificate carries its
/// public key.
fn certified_key(
    provider: &CryptoProvider,
    cert: &Path,
    key: &Path,
    chain: Vec<CertificateDer<'static>>,
    private_key: PrivateKeyDer<'static>,
) -> Result<rustls::sign::CertifiedKey, TlsError> {
    let signing_key = provider
        .key_provider
        .load_private_key(private_key)
        .map_err(|error| TlsError::UnusableKey {
            path: key.to_path_buf(),
            reason: error.to_string(),
        })?;
    let certified = rustls::sign::CertifiedKey::new(chain, signing_key);

    match certified.keys_match() {
        Ok(()) => Ok(certified),
        Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch)) => {
            Err(TlsError::KeyMismatch {
                cert: cert.to_path_buf(),
                key: key.to_path_buf(),
            })
        }
        // The ring provider always returns a key's public half, so any other
        // outcome means the certificate itself could not be parsed.
        Err(error) => Err(TlsError::UnusableKey {
            path: cert.to_path_buf(),
            reason: error.to_string(),
        }),
    }
}

fn root_store(ca: &Path) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in load_certs(ca)? {
        roots
            .add(cert)
            .map_err(|error| TlsError::InvalidTrustAnchor {
                path: ca.to_path_buf(),
                reason: error.to_string(),
            })?;
    }
    Ok(roots)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::certs::{init, InitOptions};

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

    /// Runs a TLS handshake in memory and returns the first error either
    /// side raised. Twenty flights are far more than a TLS 1.3 handshake
    /// with client authentication needs.
    fn handshake(client: ClientConfig, server: ServerConfig) -> Result<(), rustls::Error> {
        let name = rustls_pki_types::ServerName::try_from("localhost").expect("server name");
        let mut client = rustls::ClientConnection::new(Arc::new(client), name)?;
        let mut server = rustls::ServerConnection::new(Arc::new(server))?;

        for _ in 0..20 {
            let mut buffer = Vec::new();
            client.write_tls(&mut buffer).expect("client write");
            server
                .read_tls(&mut buffer.as_slice())
                .expect("server read");
            server.process_new_packets()?;

            let mut buffer = Vec::new();
            server.write_tls(&mut buffer).expect("server write");
            client
                .read_tls(&mut buffer.as_slice())
                .expect("client read");
            client.process_new_packets()?;

            if !client.is_handshaking() && !server.is_handshaking() {
                return Ok(());
            }
        }
        panic!("handshake did not finish in 20 flights");
    }

    #[test]
    fn mutual_tls_handshake_succeeds_with_client_cert() {
        let dir = certs();
        let path = |name: &str| dir.path().join(name);
        let server = server_config(
            &path("server.crt"),
            &path("server.key"),
            Some(&path("ca.crt")),
        )
        .expect("server config");
        let client = client_config(
            &path("ca.crt"),
            Some((&path("proxy-client.crt"), &path("proxy-client.key"))),
        )
        .expect("client config");

        assert_eq!(server.alpn_protocols, vec![b"http/1.1".to_vec()]);
        assert_eq!(client.alpn_protocols, vec![b"http/1.1".to_vec()]);
        handshake(client, server).expect("handshake");
    }

    #[test]
    fn server_rejects_client_without_cert() {
        let dir = certs();
        let path = |name: &str| dir.path().join(name);
        let server = server_config(
            &path("server.crt"),
            &path("server.key"),
            Some(&path("ca.crt")),
        )
        .expect("server config");
        let client = client_config(&path("ca.crt"), None).expect("client config");

        let error = handshake(client, server).expect_err("client certificate is required");
        assert_eq!(error, rustls::Error::NoCertificatesPresented);
    }

    #[test]
    fn server_rejects_server_auth_cert_as_client_cert() {
        let dir = certs();
        let path = |name: &str| dir.path().join(name);
        let server = server_config(
            &path("server.crt"),
            &path("server.key"),
            Some(&path("ca.crt")),
        )
        .expect("server config");
        // proxy.crt is signed by the right CA but carries only serverAuth.
        let client = client_config(
            &path("ca.crt"),
            Some((&path("proxy.crt"), &path("proxy.key"))),
        )
        .expect("client config");

        let error = handshake(client, server).expect_err("serverAuth-only certificate");
        assert!(
            matches!(error, rustls::Error::InvalidCertificate(_)),
            "{error:?}"
        );
    }

    #[test]
    fn server_without_client_ca_accepts_anonymous_client() {
        let dir = certs();
        let path = |name: &str| dir.path().join(name);
        let server = server_config(&path("proxy.crt"), &path("proxy.key"), None).expect("config");
        let client = client_config(&path("ca.crt"), None).expect("client config");
        handshake(client, server).expect("handshake");
    }

    #[test]
    fn mismatched_key_names_both_files() {
        let dir = certs();
        let path = |name: &str| dir.path().join(name);
        let error = server_config(&path("server.crt"), &path("proxy.key"), None)
            .expect_err("key of another certificate");
        assert!(matches!(error, TlsError::KeyMismatch { .. }), "{error:?}");
        let text = error.to_string();
        assert!(
            text.contains("server.crt") && text.contains("proxy.key"),
            "{text}"
        );
    }

    #[test]
    fn client_config_rejects_mismatched_key() {
        let dir = certs();
        let path = |name: &str| dir.path().join(name);
        let error = client_config(
            &path("ca.crt"),
            Some((&path("proxy-client.crt"), &path("server.key"))),
        )
        .expect_err("key of another certificate");
        assert!(matches!(error, TlsError::KeyMismatch { .. }), "{error:?}");
    }

    #[test]
    fn key_file_without_key_is_named() {
        let dir = certs();
        let error = load_key(&dir.path().join("ca.crt")).expect_err("a certificate is no key");
        assert!(matches!(error, TlsError::NoPrivateKey { .. }), "{error:?}");
        assert!(error.to_string().contains("ca.crt"), "{error}");
    }

    #[test]
    fn cert_file_without_cert_is_named() {
        let dir = certs();
        let error = load_certs(&dir.path().join("ca.key")).expect_err("a key is no certificate");
        assert!(matches!(error, TlsError::NoCertificate { .. }), "{error:?}");
    }

    #[test]
    fn missing_file_is_named() {
        let error = load_certs(Path::new("/nonexistent/ca.crt")).expect_err("missing");
        assert!(error.to_string().contains("/nonexistent/ca.crt"), "{error}");
    }

    #[test]
    fn truncated_pem_is_invalid() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("broken.crt");
        std::fs::write(&path, "-----BEGIN CERTIFICATE-----\nAAAA\n").expect("write");
        let error = load_certs(&path).expect_err("no end marker");
        assert!(matches!(error, TlsError::InvalidPem { .. }), "{error:?}");
    }
}
