//! Creation of the deployment's certificates for `cardgate certs init`.
//!
//! One private CA signs three leaf certificates: the proxy's HTTPS
//! certificate for browsers, the server's HTTPS certificate, and the client
//! certificate the proxy presents to the server for mutual TLS. All keys are
//! ECDSA P-256.

use std::fs;
use std::io::Write;
use std::net::IpAddr;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType, PKCS_ECDSA_P256_SHA256,
};
use time::{Duration, OffsetDateTime};

/// Names every leaf certificate carries, so that loopback setups work
/// without extra options.
pub const DEFAULT_NAMES: [&str; 3] = ["localhost", "127.0.0.1", "::1"];

/// Validity of the CA certificate.
pub const CA_VALIDITY: Duration = Duration::days(3650);

/// Validity of the leaf certificates. 397 days is the longest lifetime that
/// browsers accept for publicly trusted TLS server certificates; rerun
/// `certs init --force` to renew.
pub const LEAF_VALIDITY: Duration = Duration::days(397);

/// How far `notBefore` lies in the past, so that a peer whose clock is a
/// little behind still accepts a fresh certificate.
pub const CLOCK_SKEW: Duration = Duration::hours(1);

/// Mode of the written private key files: readable by the owner only.
pub const KEY_FILE_MODE: u32 = 0o600;

/// Mode of the written certificate files.
pub const CERT_FILE_MODE: u32 = 0o644;

/// Options of `cardgate certs init`.
#[derive(Debug, Clone)]
pub struct InitOptions {
    /// Folder to write the files into; created if missing.
    pub out: PathBuf,
    /// Overwrite existing files.
    pub force: bool,
    /// Extra DNS names or IP addresses for the proxy's certificate.
    pub proxy_names: Vec<String>,
    /// Extra DNS names or IP addresses for the server's certificate.
    pub server_names: Vec<String>,
}

/// Error while creating the certificates.
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    #[error("{} already exists; remove it or pass --force to overwrite it", .0.display())]
    AlreadyExists(PathBuf),
    #[error("invalid certificate name {name:?}: {reason}")]
    InvalidName { name: String, reason: String },
    #[error("cannot create {certificate} certificate: {source}")]
    Generate {
        certificate: &'static str,
        #[source]
        source: rcgen::Error,
    },
    #[error("cannot write {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// The files `init` writes, in the order it writes them.
pub const FILE_NAMES: [&str; 8] = [
    "ca.crt",
    "ca.key",
    "proxy.crt",
    "proxy.key",
    "server.crt",
    "server.key",
    "proxy-client.crt",
    "proxy-client.key",
];

/// Creates the CA and the three leaf certificates and writes them into
/// `opts.out`. Returns the written paths.
///
/// Nothing is written when any target file exists and `force` is off, or
/// when any certificate fails to generate.
pub fn init(opts: &InitOptions) -> Result<Vec<PathBuf>, CertError> {
    // 1. Check names and existing files before generating anything.
    let proxy_names = san_list(&opts.proxy_names)?;
    let server_names = san_list(&opts.server_names)?;
    if !opts.force {
        if let Some(existing) = FILE_NAMES
            .iter()
            .map(|name| opts.out.join(name))
            .find(|path| path.symlink_metadata().is_ok())
        {
            return Err(CertError::AlreadyExists(existing));
        }
    }

    // 2. Generate everything in memory.
    let now = OffsetDateTime::now_utc();
    let ca_key = generate_key("CA")?;
    let ca_params = ca_params(now);
    let ca_cert = ca_params
        .self_signed(&ca_key)
        .map_err(|source| CertError::Generate {
            certificate: "CA",
            source,
        })?;
    let ca = Issuer::new(ca_params, &ca_key);

    let proxy = leaf(
        "proxy",
        "cardgate proxy",
        proxy_names,
        ExtendedKeyUsagePurpose::ServerAuth,
        now,
        &ca,
    )?;
    let server = leaf(
        "server",
        "cardgate server",
        server_names,
        ExtendedKeyUsagePurpose::ServerAuth,
        now,
        &ca,
    )?;
    let client = leaf(
        "proxy client",
        "cardgate proxy client",
        san_list(&[])?,
        ExtendedKeyUsagePurpose::ClientAuth,
        now,
        &ca,
    )?;

    // 3. Write the files; keys are never readable by others, not even
    // while being written.
    fs::create_dir_all(&opts.out).map_err(|source| CertError::Io {
        path: opts.out.clone(),
        source,
    })?;
    let contents = [
        ca_cert.pem(),
        ca_key.serialize_pem(),
        proxy.cert_pem,
        proxy.key_pem,
        server.cert_pem,
        server.key_pem,
        client.cert_pem,
        client.key_pem,
    ];
    let mut written = Vec::with_capacity(FILE_NAMES.len());
    for (name, text) in FILE_NAMES.iter().zip(contents) {
        let path = opts.out.join(name);
        let mode = if name.ends_with(".key") {
            KEY_FILE_MODE
        } else {
            CERT_FILE_MODE
        };
        write_file(&path, text.as_bytes(), mode)?;
        written.push(path);
    }
    Ok(written)
}

struct Leaf {
    cert_pem: String,
    key_pem: String,
}

fn generate_key(certificate: &'static str) -> Result<KeyPair, CertError> {
    KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(|source| CertError::Generate {
        certificate,
        source,
    })
}

fn distinguished_name(common_name: &str) -> DistinguishedName {
    let mut name = DistinguishedName::new();
    name.push(DnType::OrganizationName, "cardgate");
    name.push(DnType::CommonName, common_name);
    name
}

fn ca_params(now: OffsetDateTime) -> CertificateParams {
    let mut params = CertificateParams::default();
    // A random suffix distinguishes the CAs of different deployments, in a
    // browser's certificate list and in a verifier's lookup by issuer name.
    let common_name = format!("cardgate CA {:08x}", rand::random::<u32>());
    params.distinguished_name = distinguished_name(&common_name);
    // Path length 0: the CA signs leaf certificates only.
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params.not_before = now - CLOCK_SKEW;
    params.not_after = now + CA_VALIDITY;
    params
}

fn leaf(
    certificate: &'static str,
    common_name: &str,
    names: Vec<SanType>,
    usage: ExtendedKeyUsagePurpose,
    now: OffsetDateTime,
    ca: &Issuer<'_, &KeyPair>,
) -> Result<Leaf, CertError> {
    let key = generate_key(certificate)?;

    let mut params = CertificateParams::default();
    params.distinguished_name = distinguished_name(common_name);
    params.subject_alt_names = names;
    // ExplicitNoCa writes basicConstraints CA:FALSE and, with it, the
    // subject key identifier.
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![usage];
    params.use_authority_key_identifier_extension = true;
    params.not_before = now - CLOCK_SKEW;
    params.not_after = now + LEAF_VALIDITY;

    let cert = params
        .signed_by(&key, ca)
        .map_err(|source| CertError::Generate {
            certificate,
            source,
        })?;
    Ok(Leaf {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

/// Builds the subject alternative names: the defaults, then `extra` in
/// order, without duplicates. A name that parses as an IP address becomes
/// an IP SAN, anything else must be a DNS name.
fn san_list(extra: &[String]) -> Result<Vec<SanType>, CertError> {
    let mut names: Vec<SanType> = Vec::new();
    for name in DEFAULT_NAMES
        .iter()
        .copied()
        .chain(extra.iter().map(String::as_str))
    {
        let san = match name.parse::<IpAddr>() {
            Ok(ip) => SanType::IpAddress(ip),
            Err(_) => {
                check_dns_name(name)?;
                let ia5 =
                    name.to_ascii_lowercase()
                        .try_into()
                        .map_err(|_| CertError::InvalidName {
                            name: name.to_owned(),
                            reason: "not an ASCII string".to_owned(),
                        })?;
                SanType::DnsName(ia5)
            }
        };
        if !names.contains(&san) {
            names.push(san);
        }
    }
    Ok(names)
}

/// Accepts a host name of letter, digit and hyphen labels, optionally with
/// a leading `*.` wildcard label.
fn check_dns_name(name: &str) -> Result<(), CertError> {
    let invalid = |reason: &str| CertError::InvalidName {
        name: name.to_owned(),
        reason: reason.to_owned(),
    };

    if name.is_empty() || name.len() > 253 {
        return Err(invalid(
            "expected a DNS name of 1 to 253 characters or an IP address",
        ));
    }
    let labels = name.strip_prefix("*.").unwrap_or(name);
    for label in labels.split('.') {
        if label.is_empty() || label.len() > 63 {
            return Err(invalid("each dot-separated label needs 1 to 63 characters"));
        }
        if !label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') {
            return Err(invalid("labels may contain only letters, digits and `-`"));
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err(invalid("a label may not start or end with `-`"));
        }
    }
    Ok(())
}

/// Writes `contents` to `path` through a temporary file created with
/// `mode`, then renames it into place, so that a reader never sees a
/// partial file and a key is never readable by others.
fn write_file(path: &Path, contents: &[u8], mode: u32) -> Result<(), CertError> {
    let io_error = |source| CertError::Io {
        path: path.to_path_buf(),
        source,
    };

    let mut temporary = path.as_os_str().to_owned();
    temporary.push(".tmp");
    let temporary = PathBuf::from(temporary);
    // A leftover from an interrupted run would make create_new fail.
    let _ = fs::remove_file(&temporary);

    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&temporary)
        .map_err(io_error)?;
    // The umask may have removed bits from `mode`; set it exactly.
    file.set_permissions(fs::Permissions::from_mode(mode))
        .map_err(io_error)?;
    file.write_all(contents).map_err(io_error)?;
    file.sync_all().map_err(io_error)?;
    drop(file);

    fs::rename(&temporary, path).map_err(io_error)
}

#[cfg(test)]
mod tests {
    use super::*;
    use x509_parser::extensions::GeneralName;
    use x509_parser::prelude::{FromDer, X509Certificate};

    fn options(out: &Path) -> InitOptions {
        InitOptions {
            out: out.to_path_buf(),
            force: false,
            proxy_names: vec!["portal.example.org".to_owned(), "10.1.2.3".to_owned()],
            server_names: vec![],
        }
    }

    fn read_der(path: &Path) -> Vec<u8> {
        use rustls_pki_types::pem::PemObject;
        let cert = rustls_pki_types::CertificateDer::from_pem_file(path).expect("PEM certificate");
        cert.to_vec()
    }

    fn san_strings(cert: &X509Certificate<'_>) -> Vec<String> {
        let san = cert
            .subject_alternative_name()
            .expect("valid SAN extension")
            .expect("SAN extension present");
        san.value
            .general_names
            .iter()
            .map(|name| match name {
                GeneralName::DNSName(dns) => format!("dns:{dns}"),
                GeneralName::IPAddress(bytes) => {
                    let ip = match bytes.len() {
                        4 => IpAddr::from(<[u8; 4]>::try_from(*bytes).expect("4 bytes")),
                        16 => IpAddr::from(<[u8; 16]>::try_from(*bytes).expect("16 bytes")),
                        other => panic!("IP SAN of {other} bytes"),
                    };
                    format!("ip:{ip}")
                }
                other => format!("other:{other:?}"),
            })
            .collect()
    }

    #[test]
    fn init_writes_all_files() {
        let dir = tempfile::tempdir().expect("tempdir");
        let written = init(&options(dir.path())).expect("init");
        let expected: Vec<PathBuf> = FILE_NAMES
            .iter()
            .map(|name| dir.path().join(name))
            .collect();
        assert_eq!(written, expected);
        for path in &written {
            assert!(path.is_file(), "{} missing", path.display());
        }
    }

    #[test]
    fn key_files_have_mode_0600() {
        let dir = tempfile::tempdir().expect("tempdir");
        init(&options(dir.path())).expect("init");
        for name in FILE_NAMES {
            let mode = fs::metadata(dir.path().join(name))
                .expect("metadata")
                .permissions()
                .mode()
                & 0o777;
            let expected = if name.ends_with(".key") { 0o600 } else { 0o644 };
            assert_eq!(mode, expected, "{name} has mode {mode:o}");
        }
    }

    #[test]
    fn init_refuses_overwrite_without_force() {
        let dir = tempfile::tempdir().expect("tempdir");
        let server_key = dir.path().join("server.key");
        fs::write(&server_key, "keep me").expect("write");

        let error = init(&options(dir.path())).expect_err("must refuse");
        assert!(error.to_string().contains("server.key"), "{error}");
        assert_eq!(fs::read_to_string(&server_key).expect("read"), "keep me");
        assert!(
            !dir.path().join("ca.crt").exists(),
            "nothing else may be written"
        );
    }

    #[test]
    fn init_overwrites_with_force() {
        let dir = tempfile::tempdir().expect("tempdir");
        init(&options(dir.path())).expect("first init");
        let first = fs::read(dir.path().join("ca.crt")).expect("read");

        let mut opts = options(dir.path());
        opts.force = true;
        init(&opts).expect("second init");
        let second = fs::read(dir.path().join("ca.crt")).expect("read");
        assert_ne!(first, second, "a forced init creates a new CA");
    }

    #[test]
    fn leaf_sans_include_defaults_and_extra_names() {
        let dir = tempfile::tempdir().expect("tempdir");
        init(&options(dir.path())).expect("init");

        let der = read_der(&dir.path().join("proxy.crt"));
        let (_, cert) = X509Certificate::from_der(&der).expect("parse proxy.crt");
        assert_eq!(
            san_strings(&cert),
            [
                "dns:localhost",
                "ip:127.0.0.1",
                "ip:::1",
                "dns:portal.example.org",
                "ip:10.1.2.3"
            ]
        );

        let der = read_der(&dir.path().join("server.crt"));
        let (_, cert) = X509Certificate::from_der(&der).expect("parse server.crt");
        assert_eq!(
            san_strings(&cert),
            ["dns:localhost", "ip:127.0.0.1", "ip:::1"]
        );
    }

    #[test]
    fn extensions_match_each_role() {
        let dir = tempfile::tempdir().expect("tempdir");
        init(&options(dir.path())).expect("init");

        let der = read_der(&dir.path().join("ca.crt"));
        let (_, ca) = X509Certificate::from_der(&der).expect("parse ca.crt");
        let constraints = ca
            .basic_constraints()
            .expect("valid")
            .expect("present")
            .value;
        assert!(constraints.ca);
        assert!(ca
            .key_usage()
            .expect("valid")
            .expect("present")
            .value
            .key_cert_sign());
        let ca_key_id = match ca
            .get_extension_unique(&x509_parser::oid_registry::OID_X509_EXT_SUBJECT_KEY_IDENTIFIER)
        {
            Ok(Some(ext)) => match ext.parsed_extension() {
                x509_parser::extensions::ParsedExtension::SubjectKeyIdentifier(id) => id.0.to_vec(),
                other => panic!("unexpected SKI content {other:?}"),
            },
            other => panic!("CA has no subject key identifier: {other:?}"),
        };

        for (name, server_auth, client_auth) in [
            ("proxy.crt", true, false),
            ("server.crt", true, false),
            ("proxy-client.crt", false, true),
        ] {
            let der = read_der(&dir.path().join(name));
            let (_, cert) = X509Certificate::from_der(&der).expect("parse leaf");
            let eku = cert
                .extended_key_usage()
                .expect("valid")
                .expect("present")
                .value;
            assert_eq!(eku.server_auth, server_auth, "{name} serverAuth");
            assert_eq!(eku.client_auth, client_auth, "{name} clientAuth");
            let constraints = cert
                .basic_constraints()
                .expect("valid")
                .expect("present")
                .value;
            assert!(!constraints.ca, "{name} must not be a CA");
            assert_eq!(cert.issuer(), ca.subject(), "{name} issuer");

            let mut authority_key_id = None;
            let mut has_subject_key_id = false;
            for ext in cert.extensions() {
                match ext.parsed_extension() {
                    x509_parser::extensions::ParsedExtension::AuthorityKeyIdentifier(aki) => {
                        authority_key_id = aki.key_identifier.as_ref().map(|id| id.0.to_vec());
                    }
                    x509_parser::extensions::ParsedExtension::SubjectKeyIdentifier(_) => {
                        has_subject_key_id = true;
                    }
                    _ => {}
                }
            }
            assert_eq!(
                authority_key_id.as_ref(),
                Some(&ca_key_id),
                "{name} authority key id"
            );
            assert!(has_subject_key_id, "{name} subject key id");
        }
    }

    #[test]
    fn invalid_extra_name_is_rejected() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut opts = options(dir.path());
        opts.server_names = vec!["bad name".to_owned()];
        let error = init(&opts).expect_err("space in a DNS name");
        assert!(error.to_string().contains("bad name"), "{error}");
        assert!(!dir.path().join("ca.crt").exists());
    }
}
