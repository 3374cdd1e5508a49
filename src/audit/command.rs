//! `cardgate audit`: prints the proxy's audit trail, from the running proxy
//! over its socket or, when it is stopped, from its store.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;

use super::socket::{query_running, socket_path};
use super::{read_stopped_store, AuditQuery, AuditRecord, DEFAULT_LIMIT};
use crate::domain::Username;

#[derive(Debug, Args)]
pub struct AuditArgs {
    /// The proxy's TOML configuration file; its `store.path` locates the trail.
    #[arg(long, short)]
    pub config: PathBuf,

    /// Show events at or after TIME: an RFC 3339 time such as
    /// 2025-06-01T08:00:00Z, or an age such as 90s, 15m, 2h or 7d.
    #[arg(long, value_name = "TIME")]
    pub since: Option<String>,

    /// Show only events about this user.
    #[arg(long, value_name = "NAME")]
    pub user: Option<String>,

    /// Show at most this many events, the newest ones.
    #[arg(long, default_value_t = DEFAULT_LIMIT)]
    pub limit: usize,

    /// Print one JSON object per event instead of aligned columns.
    #[arg(long)]
    pub json: bool,
}

/// Origin of the records, reported on stderr.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    RunningProxy,
    StoppedStore,
}

/// Runs the command and returns the process exit code.
pub fn run(args: AuditArgs) -> ExitCode {
    match fetch(&args) {
        Ok((records, source)) => {
            let origin = match source {
                Source::RunningProxy => "from the running proxy",
                Source::StoppedStore => "from the store of the stopped proxy",
            };
            eprintln!("{} audit records {origin}", records.len());
            for record in &records {
                if args.json {
                    match serde_json::to_string(record) {
                        Ok(line) => println!("{line}"),
                        Err(e) => {
                            eprintln!("cardgate audit: cannot print record {}: {e}", record.seq)
                        }
                    }
                } else {
                    println!("{}", format_line(record));
                }
            }
            ExitCode::SUCCESS
        }
        Err(message) => {
            eprintln!("cardgate audit: {message}");
            ExitCode::FAILURE
        }
    }
}

/// Reads the records that `args` request and returns them with their origin.
pub fn fetch(args: &AuditArgs) -> Result<(Vec<AuditRecord>, Source), String> {
    let config = crate::config::load_proxy(&args.config).map_err(|e| e.to_string())?;
    let query = AuditQuery {
        since_us: args
            .since
            .as_deref()
            .map(|text| parse_since(text, super::now_us()))
            .transpose()?,
        username: args
            .user
            .as_deref()
            .map(|name| {
                Username::parse(name)
                    .map(Username::into_string)
                    .map_err(|e| format!("--user: {e}"))
            })
            .transpose()?,
        limit: args.limit,
    };

    let socket = socket_path(&config.store.path);
    if let Some(records) = query_running(&socket, &query).map_err(|e| e.to_string())? {
        return Ok((records, Source::RunningProxy));
    }
    let records = read_stopped_store(&config.store.path, &query).map_err(|e| e.to_string())?;
    Ok((records, Source::StoppedStore))
}

/// Parses `--since`: an RFC 3339 time, or an age (`90s`, `15m`, `2h`, `7d`)
/// counted back from `now_us`. Returns microseconds since the epoch.
pub fn parse_since(text: &str, now_us: u64) -> Result<u64, String> {
    let text = text.trim();
    if let Ok(time) =
        time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339)
    {
        let micros = time.unix_timestamp_nanos() / 1000;
        return u64::try_from(micros)
            .map_err(|_| format!("--since {text:?} is before 1970; give a later time"));
    }

    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let seconds_per_unit: u64 = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 60 * 60,
        "d" => 24 * 60 * 60,
        _ => {
            return Err(format!(
                "--since {text:?} is neither an RFC 3339 time (2025-06-01T08:00:00Z) \
                 nor an age such as 90s, 15m, 2h or 7d"
            ))
        }
    };
    let count: u64 = number.parse().map_err(|_| {
        format!("--since {text:?}: expected a whole number before {unit:?}, such as 15{unit}")
    })?;
    let age_us = count
        .checked_mul(seconds_per_unit)
        .and_then(|seconds| seconds.checked_mul(1_000_000))
        .ok_or_else(|| format!("--since {text:?} is too long ago"))?;
    Ok(now_us.saturating_sub(age_us))
}

/// One record as an aligned line: time, action, outcome, user, reason, details.
pub fn format_line(record: &AuditRecord) -> String {
    let event = &record.event;
    let mut line = format!(
        "{}  {:<14} {:<7}  {:<16} {}",
        record.time,
        event.action.as_str(),
        event.outcome.as_str(),
        event.username.as_deref().unwrap_or("-"),
        event.reason.as_deref().unwrap_or("-"),
    );
    if let Some(session) = &event.session {
        line.push_str(&format!("  session {session}"));
    }
    if let Some(details) = &event.details {
        line.push_str("  ");
        line.push_str(details);
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::{AuditAction, AuditEvent};

    const NOW: u64 = 1_700_000_000_000_000;

    #[test]
    fn since_accepts_ages() {
        assert_eq!(parse_since("90s", NOW), Ok(NOW - 90_000_000));
        assert_eq!(parse_since("15m", NOW), Ok(NOW - 900_000_000));
        assert_eq!(parse_since("2h", NOW), Ok(NOW - 7_200_000_000));
        assert_eq!(parse_since("7d", NOW), Ok(NOW - 604_800_000_000));
    }

    #[test]
    fn since_accepts_rfc3339() {
        assert_eq!(
            parse_since("2023-11-14T22:13:20Z", NOW),
            Ok(1_700_000_000_000_000)
        );
        assert_eq!(
            parse_since("2023-11-14T23:13:20.5+01:00", NOW),
            Ok(1_700_000_000_500_000)
        );
    }

    #[test]
    fn since_rejects_other_text() {
        for text in ["yesterday", "15", "m", "-5m", "1.5h", "2023-11-14"] {
            let error = parse_since(text, NOW).expect_err(text);
            assert!(error.contains("--since"), "{error}");
        }
        let error = parse_since("99999999999999999d", NOW).expect_err("overflow");
        assert!(error.contains("too long ago"), "{error}");
    }

    #[test]
    fn line_shows_reason_session_and_details() {
        let record = AuditRecord {
            time: "2023-11-14T22:13:20Z".into(),
            time_us: 0,
            seq: 0,
            event: AuditEvent::failure(AuditAction::Login, "card_denied")
                .user("alice")
                .session("0a1b2c3d")
                .details("the person at the card declined"),
        };
        let line = format_line(&record);
        assert!(line.starts_with("2023-11-14T22:13:20Z  login"), "{line}");
        assert!(line.contains("failure"), "{line}");
        assert!(line.contains("alice"), "{line}");
        assert!(line.contains("card_denied"), "{line}");
        assert!(line.contains("session 0a1b2c3d"), "{line}");
        assert!(line.ends_with("the person at the card declined"), "{line}");
    }
}
