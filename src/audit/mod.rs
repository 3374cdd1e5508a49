//! The proxy's audit trail: security events (enroll, update, delete, login
//! success and failure, logout, session revocation, card connected and
//! lost, start and stop), logged under the tracing target `audit` and kept
//! in the sled tree `audit` of the proxy's store.
//!
//! A record's key is the event time in microseconds since the Unix epoch
//! and a sequence number, both 8 bytes big-endian, so sled's key order is
//! time order and two events in the same microsecond keep their order. The
//! value is the [`AuditEvent`] as JSON, so a stored trail stays readable
//! when fields are added.
//!
//! The tree lives in the same sled database as the enrollments because
//! sled lets one process open a database, and the proxy's store is that
//! database. The audit actor (`actors::audit`) gets a clone of the
//! `sled::Db` handle that the enrollments actor uses, owns the `audit` tree
//! and is the only writer. `cardgate audit` queries a running proxy over the
//! Unix socket in [`socket`]. When the proxy is stopped, it opens the store
//! itself with [`read_stopped_store`].

use std::fmt;
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

pub mod command;
pub mod socket;

/// Name of the sled tree that contains the trail.
pub const TREE: &str = "audit";

/// Maximum records kept. Past it the oldest are deleted, so that a flood of
/// failed logins cannot fill the disk. At a few hundred bytes a record, this
/// is a few hundred megabytes.
pub const MAX_RECORDS: usize = 1_000_000;

/// Records a query returns when it sets no limit.
pub const DEFAULT_LIMIT: usize = 1000;

/// Maximum records one query may return.
pub const MAX_LIMIT: usize = 100_000;

/// What happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AuditAction {
    /// The proxy started and opened the store.
    Start,
    /// The proxy stopped after a signal.
    Stop,
    Enroll,
    /// A user's display name changed.
    Update,
    /// A user's enrollment and credentials were deleted.
    Delete,
    Login,
    Logout,
    /// Sessions were ended by the proxy rather than by their owner.
    Revoke,
    CardConnected,
    CardLost,
}

impl AuditAction {
    pub fn as_str(self) -> &'static str {
        match self {
            AuditAction::Start => "start",
            AuditAction::Stop => "stop",
            AuditAction::Enroll => "enroll",
            AuditAction::Update => "update",
            AuditAction::Delete => "delete",
            AuditAction::Login => "login",
            AuditAction::Logout => "logout",
            AuditAction::Revoke => "revoke",
            AuditAction::CardConnected => "card_connected",
            AuditAction::CardLost => "card_lost",
        }
    }
}

impl fmt::Display for AuditAction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AuditOutcome {
    Success,
    Failure,
}

impl AuditOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            AuditOutcome::Success => "success",
            AuditOutcome::Failure => "failure",
        }
    }
}

impl fmt::Display for AuditOutcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One security event. It never contains a token, a key or a PIN.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEvent {
    pub action: AuditAction,
    pub outcome: AuditOutcome,
    /// The user the event is about, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    /// The error code of a failure, as in the API's `error` field
    /// (`card_denied`, `not_found`, …).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// A sentence with the rest: the error message, the card device, the
    /// number of sessions ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub details: Option<String>,
    /// The first 8 hex digits of the session token's SHA-256, which tell
    /// sessions apart without authenticating anything.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session: Option<String>,
}

impl AuditEvent {
    pub fn success(action: AuditAction) -> Self {
        AuditEvent {
            action,
            outcome: AuditOutcome::Success,
            username: None,
            reason: None,
            details: None,
            session: None,
        }
    }

    pub fn failure(action: AuditAction, reason: impl Into<String>) -> Self {
        AuditEvent {
            outcome: AuditOutcome::Failure,
            reason: Some(reason.into()),
            ..Self::success(action)
        }
    }

    pub fn user(mut self, username: impl Into<String>) -> Self {
        self.username = Some(username.into());
        self
    }

    pub fn details(mut self, details: impl Into<String>) -> Self {
        self.details = Some(details.into());
        self
    }

    pub fn session(mut self, hash_prefix: impl Into<String>) -> Self {
        self.session = Some(hash_prefix.into());
        self
    }
}

/// A stored event with the time and sequence number from its key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditRecord {
    /// RFC 3339 UTC time with microseconds.
    pub time: String,
    /// Microseconds since the Unix epoch.
    pub time_us: u64,
    pub seq: u64,
    #[serde(flatten)]
    pub event: AuditEvent,
}

/// Which records a query returns: the newest `limit` records at or after
/// `since_us` about `username`, oldest first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditQuery {
    #[serde(default)]
    pub since_us: Option<u64>,
    #[serde(default)]
    pub username: Option<String>,
    #[serde(default = "default_limit")]
    pub limit: usize,
}

fn default_limit() -> usize {
    DEFAULT_LIMIT
}

impl Default for AuditQuery {
    fn default() -> Self {
        AuditQuery {
            since_us: None,
            username: None,
            limit: DEFAULT_LIMIT,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuditError {
    #[error("audit store failed: {0}")]
    Store(String),
    #[error("audit record {key} is corrupt: {reason}")]
    Corrupt { key: String, reason: String },
    #[error("invalid audit query: {0}")]
    InvalidQuery(String),
    #[error("{0}")]
    Unavailable(String),
}

impl From<sled::Error> for AuditError {
    fn from(e: sled::Error) -> Self {
        AuditError::Store(e.to_string())
    }
}

/// Microseconds since the Unix epoch, 0 for a clock before it.
pub fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// Encodes a record key: time, then sequence, both big-endian.
pub fn encode_key(time_us: u64, seq: u64) -> [u8; 16] {
    let mut key = [0u8; 16];
    key[..8].copy_from_slice(&time_us.to_be_bytes());
    key[8..].copy_from_slice(&seq.to_be_bytes());
    key
}

/// Decodes a record key into (time, sequence).
pub fn decode_key(key: &[u8]) -> Result<(u64, u64), AuditError> {
    let bytes: [u8; 16] = key.try_into().map_err(|_| AuditError::Corrupt {
        key: hex::encode(key),
        reason: format!("key: expected 16 bytes, found {}", key.len()),
    })?;
    let (time, seq) = bytes.split_at(8);
    let time: [u8; 8] = time.try_into().unwrap_or_default();
    let seq: [u8; 8] = seq.try_into().unwrap_or_default();
    Ok((u64::from_be_bytes(time), u64::from_be_bytes(seq)))
}

/// Formats microseconds since the epoch as RFC 3339 UTC.
pub fn format_time(time_us: u64) -> String {
    let nanos = i128::from(time_us) * 1000;
    time::OffsetDateTime::from_unix_timestamp_nanos(nanos)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| format!("{time_us} µs after the epoch"))
}

/// The `audit` tree and the next sequence number: everything that writes
/// records. One writer at a time (the audit actor).
#[derive(Clone)]
pub struct AuditLog {
    tree: sled::Tree,
    next_seq: u64,
    records: usize,
    max_records: usize,
}

impl AuditLog {
    /// Opens (or creates) the `audit` tree of `db` and counts its records.
    pub fn open(db: &sled::Db) -> Result<Self, AuditError> {
        let tree = db.open_tree(TREE)?;
        let next_seq = match tree.last()? {
            Some((key, _)) => decode_key(&key)?.1.wrapping_add(1),
            None => 0,
        };
        let records = tree.len();
        Ok(AuditLog {
            tree,
            next_seq,
            records,
            max_records: MAX_RECORDS,
        })
    }

    /// Sets the most records kept (tests use a small one).
    pub fn with_max_records(mut self, max_records: usize) -> Self {
        self.max_records = max_records.max(1);
        self
    }

    /// Stores `event` at `time_us` and returns the stored record. When the
    /// trail is full, the oldest records are deleted first.
    pub fn append(&mut self, time_us: u64, event: AuditEvent) -> Result<AuditRecord, AuditError> {
        let seq = self.next_seq;
        let value = serde_json::to_vec(&event).map_err(|e| AuditError::Store(e.to_string()))?;
        self.tree.insert(encode_key(time_us, seq), value)?;
        self.next_seq = seq.wrapping_add(1);
        self.records += 1;

        let mut dropped = 0usize;
        while self.records > self.max_records {
            if self.tree.pop_min()?.is_none() {
                break;
            }
            self.records -= 1;
            dropped += 1;
        }
        if dropped > 0 {
            tracing::warn!(
                dropped,
                max_records = self.max_records,
                "audit trail is full; the oldest records were deleted"
            );
        }

        Ok(AuditRecord {
            time: format_time(time_us),
            time_us,
            seq,
            event,
        })
    }

    pub fn tree(&self) -> &sled::Tree {
        &self.tree
    }
}

/// Runs `query` on an `audit` tree.
pub fn query_tree(tree: &sled::Tree, query: &AuditQuery) -> Result<Vec<AuditRecord>, AuditError> {
    if query.limit == 0 || query.limit > MAX_LIMIT {
        return Err(AuditError::InvalidQuery(format!(
            "limit {} is outside 1..={MAX_LIMIT}",
            query.limit
        )));
    }
    let start = encode_key(query.since_us.unwrap_or(0), 0);

    let mut found = Vec::new();
    for entry in tree.range(start..).rev() {
        let (key, value) = entry?;
        let (time_us, seq) = decode_key(&key)?;
        let event: AuditEvent =
            serde_json::from_slice(&value).map_err(|e| AuditError::Corrupt {
                key: hex::encode(&key),
                reason: format!("value: {e}"),
            })?;
        if let Some(wanted) = &query.username {
            if event.username.as_deref() != Some(wanted.as_str()) {
                continue;
            }
        }
        found.push(AuditRecord {
            time: format_time(time_us),
            time_us,
            seq,
            event,
        });
        if found.len() == query.limit {
            break;
        }
    }
    found.reverse();
    Ok(found)
}

/// Reads the trail of a stopped proxy from its store folder.
///
/// Fails without creating anything when the folder does not exist, and
/// names the socket when a running proxy holds the store's lock.
pub fn read_stopped_store(
    store: &Path,
    query: &AuditQuery,
) -> Result<Vec<AuditRecord>, AuditError> {
    if !store.is_dir() {
        return Err(AuditError::Unavailable(format!(
            "no store at {} (config key `store.path`); has the proxy run with this config?",
            store.display()
        )));
    }
    let db = sled::Config::new().path(store).open().map_err(|e| {
        AuditError::Unavailable(format!(
            "cannot open the store at {}: {e}; if a proxy is running on it, its audit socket {} \
             did not respond",
            store.display(),
            socket::socket_path(store).display()
        ))
    })?;
    let has_tree = db
        .tree_names()
        .iter()
        .any(|name| name.as_ref() == TREE.as_bytes());
    if !has_tree {
        return Ok(Vec::new());
    }
    let tree = db.open_tree(TREE)?;
    query_tree(&tree, query)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temporary_db() -> (tempfile::TempDir, sled::Db) {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = sled::open(dir.path().join("store")).expect("open sled");
        (dir, db)
    }

    #[test]
    fn keys_sort_by_time_then_sequence() {
        let keys = [
            encode_key(1, 5),
            encode_key(2, 0),
            encode_key(2, 1),
            encode_key(256, 0),
        ];
        let mut sorted = keys;
        sorted.sort();
        assert_eq!(sorted, keys);
        assert_eq!(decode_key(&encode_key(7, 9)), Ok((7, 9)));
    }

    #[test]
    fn decode_key_rejects_wrong_length() {
        let error = decode_key(&[0u8; 15]).expect_err("15 bytes");
        assert!(
            error.to_string().contains("expected 16 bytes, found 15"),
            "{error}"
        );
    }

    #[test]
    fn query_filters_by_user_and_since() {
        let (_dir, db) = temporary_db();
        let mut log = AuditLog::open(&db).expect("open");
        let login = |name: &str| AuditEvent::success(AuditAction::Login).user(name);
        log.append(100, login("alice")).expect("append");
        log.append(200, login("bob")).expect("append");
        log.append(300, login("alice")).expect("append");

        let alice = query_tree(
            log.tree(),
            &AuditQuery {
                username: Some("alice".into()),
                ..AuditQuery::default()
            },
        )
        .expect("query");
        let times: Vec<u64> = alice.iter().map(|r| r.time_us).collect();
        assert_eq!(times, [100, 300]);

        let recent = query_tree(
            log.tree(),
            &AuditQuery {
                since_us: Some(200),
                ..AuditQuery::default()
            },
        )
        .expect("query");
        let times: Vec<u64> = recent.iter().map(|r| r.time_us).collect();
        assert_eq!(times, [200, 300]);
    }

    #[test]
    fn query_limit_keeps_newest_in_time_order() {
        let (_dir, db) = temporary_db();
        let mut log = AuditLog::open(&db).expect("open");
        for time in 1..=5 {
            log.append(time, AuditEvent::success(AuditAction::Logout))
                .expect("append");
        }
        let newest = query_tree(
            log.tree(),
            &AuditQuery {
                limit: 2,
                ..AuditQuery::default()
            },
        )
        .expect("query");
        let times: Vec<u64> = newest.iter().map(|r| r.time_us).collect();
        assert_eq!(times, [4, 5]);

        let zero = query_tree(
            log.tree(),
            &AuditQuery {
                limit: 0,
                ..AuditQuery::default()
            },
        );
        assert!(matches!(zero, Err(AuditError::InvalidQuery(_))));
    }

    #[test]
    fn same_microsecond_events_keep_order() {
        let (_dir, db) = temporary_db();
        let mut log = AuditLog::open(&db).expect("open");
        log.append(10, AuditEvent::success(AuditAction::Login))
            .expect("append");
        log.append(10, AuditEvent::success(AuditAction::Logout))
            .expect("append");
        let all = query_tree(log.tree(), &AuditQuery::default()).expect("query");
        let actions: Vec<AuditAction> = all.iter().map(|r| r.event.action).collect();
        assert_eq!(actions, [AuditAction::Login, AuditAction::Logout]);
    }

    #[test]
    fn sequence_continues_after_reopen() {
        let (_dir, db) = temporary_db();
        let mut log = AuditLog::open(&db).expect("open");
        let first = log
            .append(10, AuditEvent::success(AuditAction::Start))
            .expect("append");
        let mut reopened = AuditLog::open(&db).expect("reopen");
        let second = reopened
            .append(10, AuditEvent::success(AuditAction::Stop))
            .expect("append");
        assert_eq!(second.seq, first.seq + 1);
    }

    #[test]
    fn full_trail_drops_oldest_records() {
        let (_dir, db) = temporary_db();
        let mut log = AuditLog::open(&db).expect("open").with_max_records(3);
        for time in 1..=5 {
            log.append(time, AuditEvent::success(AuditAction::Login))
                .expect("append");
        }
        let all = query_tree(log.tree(), &AuditQuery::default()).expect("query");
        let times: Vec<u64> = all.iter().map(|r| r.time_us).collect();
        assert_eq!(times, [3, 4, 5]);
    }

    #[test]
    fn corrupt_value_names_its_key() {
        let (_dir, db) = temporary_db();
        let log = AuditLog::open(&db).expect("open");
        log.tree()
            .insert(encode_key(1, 0), b"not json".as_slice())
            .expect("insert");
        let error = query_tree(log.tree(), &AuditQuery::default()).expect_err("corrupt");
        assert!(
            matches!(&error, AuditError::Corrupt { key, .. } if key == &hex::encode(encode_key(1, 0))),
            "{error:?}"
        );
    }

    #[test]
    fn record_json_flattens_the_event() {
        let record = AuditRecord {
            time: format_time(1_700_000_000_123_456),
            time_us: 1_700_000_000_123_456,
            seq: 3,
            event: AuditEvent::failure(AuditAction::Login, "card_denied").user("alice"),
        };
        let json = serde_json::to_value(&record).expect("json");
        assert_eq!(json["time"], "2023-11-14T22:13:20.123456Z");
        assert_eq!(json["action"], "login");
        assert_eq!(json["outcome"], "failure");
        assert_eq!(json["reason"], "card_denied");
        assert!(json.get("session").is_none(), "{json}");
        let back: AuditRecord = serde_json::from_value(json).expect("parse");
        assert_eq!(back, record);
    }

    #[test]
    fn stopped_store_read_does_not_create_missing_folder() {
        let dir = tempfile::tempdir().expect("tempdir");
        let missing = dir.path().join("never-created");
        let error = read_stopped_store(&missing, &AuditQuery::default()).expect_err("missing");
        assert!(error.to_string().contains("store.path"), "{error}");
        assert!(!missing.exists());
    }
}
