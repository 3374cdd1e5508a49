//! Audit queries to a running proxy over a Unix socket in its store folder.
//!
//! sled lets one process open a database, so while the proxy runs,
//! `cardgate audit` cannot open the store and queries the proxy instead. The
//! socket is `<store.path>/audit.sock` with mode 0600, and the proxy also
//! checks each peer's user id (`SO_PEERCRED`): only the proxy's own user and
//! root may ask.
//!
//! The exchange is one JSON line each way: the client sends an
//! [`AuditQuery`], the proxy answers `{"ok":true,"records":[…]}` or
//! `{"ok":false,"error":SENTENCE}` and closes the connection.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use actix_rt::task::JoinHandle;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};

use super::{AuditError, AuditQuery, AuditRecord};
use crate::actors::audit::Audit;
use crate::error::StartError;

/// File name of the socket inside the store folder.
pub const SOCKET_NAME: &str = "audit.sock";

/// Maximum query line accepted, in bytes. A query is a few dozen bytes.
pub const MAX_QUERY_BYTES: u64 = 4096;

/// Maximum reply line the client reads, in bytes: [`super::MAX_LIMIT`]
/// records of up to about 1 KiB each.
pub const MAX_REPLY_BYTES: u64 = 128 * 1024 * 1024;

/// Deadline for each read and write on the socket, on both sides.
pub const IO_TIMEOUT: Duration = Duration::from_secs(10);

/// Maximum path length of a Unix socket address on Linux (`sun_path` is 108
/// bytes including the terminating NUL).
pub const MAX_SOCKET_PATH_BYTES: usize = 107;

/// Returns the socket path of the store folder `store`.
pub fn socket_path(store: &Path) -> PathBuf {
    store.join(SOCKET_NAME)
}

#[derive(Serialize, Deserialize)]
struct Reply {
    ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    records: Option<Vec<AuditRecord>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

/// The proxy's side: a listening socket and the task that serves it.
pub struct AuditSocket {
    path: PathBuf,
    task: JoinHandle<()>,
}

impl AuditSocket {
    /// Binds the socket in `store` with mode 0600 and serves queries with
    /// `audit` on the current arbiter.
    ///
    /// A file left at the path by a proxy that did not stop cleanly is
    /// removed first: the caller holds the store's sled lock, so no other
    /// proxy can be serving it.
    pub fn bind(store: &Path, audit: Audit) -> Result<AuditSocket, StartError> {
        let path = socket_path(store);
        let io_error = |what: &str, source| StartError::Io {
            what: format!("{what} {}", path.display()),
            source,
        };

        match std::fs::symlink_metadata(&path) {
            Ok(metadata) if metadata.file_type().is_socket() => {
                std::fs::remove_file(&path)
                    .map_err(|e| io_error("cannot remove the stale audit socket", e))?;
            }
            Ok(_) => {
                return Err(StartError::Other(format!(
                    "{} exists and is not a socket; move it away so the proxy can serve audit \
                     queries there",
                    path.display()
                )))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_error("cannot inspect", e)),
        }

        let listener =
            UnixListener::bind(&path).map_err(|e| io_error("cannot bind the audit socket", e))?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
            .map_err(|e| io_error("cannot set mode 0600 on", e))?;
        let owner = std::fs::metadata(&path)
            .map_err(|e| io_error("cannot inspect", e))?
            .uid();

        let task = actix_rt::spawn(serve(listener, owner, audit));
        tracing::info!(socket = %path.display(), "audit queries served");
        Ok(AuditSocket { path, task })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Stops serving and removes the socket file.
    pub fn close(self) {
        self.task.abort();
        if let Err(e) = std::fs::remove_file(&self.path) {
            tracing::warn!(socket = %self.path.display(), error = %e, "cannot remove the audit socket");
        }
    }
}

async fn serve(listener: UnixListener, owner: u32, audit: Audit) {
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                // Running out of file descriptors is the usual cause; the
                // pause keeps the loop from spinning until one is free.
                tracing::warn!(error = %e, "accepting an audit query failed");
                actix_rt::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let peer = stream.peer_cred().map(|cred| cred.uid());
        match peer {
            Ok(uid) if uid == owner || uid == 0 => {
                let audit = audit.clone();
                actix_rt::spawn(async move {
                    if let Err(e) = answer(stream, &audit).await {
                        tracing::warn!(error = %e, "audit query failed");
                    }
                });
            }
            Ok(uid) => {
                tracing::warn!(uid, "audit query from another user rejected");
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the peer of an audit query; rejected");
            }
        }
    }
}

async fn answer(stream: UnixStream, audit: &Audit) -> Result<(), String> {
    let (read_half, mut write_half) = stream.into_split();
    let mut reader = tokio::io::BufReader::new(read_half.take(MAX_QUERY_BYTES));
    let mut line = String::new();
    actix_rt::time::timeout(IO_TIMEOUT, reader.read_line(&mut line))
        .await
        .map_err(|_| format!("no query within {IO_TIMEOUT:?}"))?
        .map_err(|e| format!("reading the query failed: {e}"))?;

    let reply = match serde_json::from_str::<AuditQuery>(line.trim_end()) {
        Ok(query) => match audit.query(query).await {
            Ok(records) => Reply {
                ok: true,
                records: Some(records),
                error: None,
            },
            Err(e) => Reply {
                ok: false,
                records: None,
                error: Some(e.to_string()),
            },
        },
        Err(e) => Reply {
            ok: false,
            records: None,
            error: Some(format!(
                "invalid query: {e}; expected one JSON line with since_us, username and limit"
            )),
        },
    };
    let mut bytes = serde_json::to_vec(&reply).map_err(|e| e.to_string())?;
    bytes.push(b'\n');
    actix_rt::time::timeout(IO_TIMEOUT, write_half.write_all(&bytes))
        .await
        .map_err(|_| format!("the client did not read the reply within {IO_TIMEOUT:?}"))?
        .map_err(|e| format!("sending the reply failed: {e}"))
}

/// Asks the proxy that serves `socket`. Returns `Ok(None)` when no proxy
/// listens there (no socket file, or a stale one), so that the caller can
/// read the stopped store instead.
pub fn query_running(
    socket: &Path,
    query: &AuditQuery,
) -> Result<Option<Vec<AuditRecord>>, AuditError> {
    let failed = |what: &str, e: std::io::Error| {
        AuditError::Unavailable(format!("{what} {}: {e}", socket.display()))
    };
    let mut stream = match std::os::unix::net::UnixStream::connect(socket) {
        Ok(stream) => stream,
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
            ) =>
        {
            return Ok(None)
        }
        Err(e) => return Err(failed("cannot connect to the audit socket", e)),
    };
    stream
        .set_read_timeout(Some(IO_TIMEOUT))
        .and_then(|_| stream.set_write_timeout(Some(IO_TIMEOUT)))
        .map_err(|e| failed("cannot set timeouts on", e))?;

    let mut line = serde_json::to_vec(query).map_err(|e| AuditError::Store(e.to_string()))?;
    line.push(b'\n');
    stream
        .write_all(&line)
        .map_err(|e| failed("cannot send the query to", e))?;

    let mut reply = String::new();
    BufReader::new(stream.take(MAX_REPLY_BYTES))
        .read_line(&mut reply)
        .map_err(|e| failed("no reply from", e))?;
    if reply.is_empty() {
        return Err(AuditError::Unavailable(format!(
            "the proxy closed {} without a reply; it accepts queries only from its own user and root",
            socket.display()
        )));
    }
    let reply: Reply = serde_json::from_str(reply.trim_end()).map_err(|e| {
        AuditError::Unavailable(format!(
            "invalid reply from {}: {e}; are cardgate and the proxy the same version?",
            socket.display()
        ))
    })?;
    match (reply.ok, reply.records, reply.error) {
        (true, Some(records), _) => Ok(Some(records)),
        (_, _, Some(error)) => Err(AuditError::Unavailable(format!(
            "the proxy answered: {error}"
        ))),
        _ => Err(AuditError::Unavailable(format!(
            "the reply from {} has neither records nor an error",
            socket.display()
        ))),
    }
}
