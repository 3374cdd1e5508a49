//! Prometheus metrics of both roles, in the text exposition format 0.0.4.
//!
//! Every series that a request or a card operation touches is an atomic
//! integer allocated at start, so recording costs a few relaxed atomic adds
//! and takes no lock. Labels come from fixed tables (route patterns, status
//! codes 100–599, card operations and outcomes), which also bounds the
//! number of series whatever the clients send. Gauges that an actor owns,
//! such as live sessions, are read from it when Prometheus scrapes.
//!
//! The families are plain structs rather than a registry because each role
//! has a fixed set of them: [`HttpMetrics`] for both roles, [`ProxyMetrics`]
//! and [`ServerMetrics`] for what only one role does.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

pub mod listener;

/// Content type of the text exposition format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Label value for a request whose path matches no route pattern.
pub const OTHER_ROUTE: &str = "other";

/// Upper bounds in seconds of the request latency buckets: loopback calls
/// take well under a millisecond, and a login that waits for a person can
/// take the whole `card.confirm_timeout_s`.
const REQUEST_SECONDS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    60.0,
];

/// Upper bounds in seconds of the card operation buckets: from the card's
/// own processing (tenths of a second) to a person who confirms late.
const CARD_SECONDS: &[f64] = &[0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0];

/// Upper bounds of the counter's batch size buckets, in increments.
const BATCH_SIZES: &[f64] = &[
    1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0, 4096.0, 16384.0,
];

/// A monotonically increasing count.
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    pub fn increment(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }

    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// A histogram with fixed bucket bounds.
///
/// Observations are integers in a base unit (microseconds, or plain
/// counts); `scale` converts them to the exposed unit, so that the sum is an
/// integer atomic as well.
#[derive(Debug)]
pub struct Histogram {
    /// Upper bounds in the exposed unit, ascending.
    bounds: &'static [f64],
    /// Upper bounds in the base unit, for the comparison on each observation.
    scaled_bounds: Box<[u64]>,
    /// Observations per bucket (not cumulative); the last one is `+Inf`.
    buckets: Box<[AtomicU64]>,
    count: AtomicU64,
    sum: AtomicU64,
    /// Base units per exposed unit.
    scale: f64,
}

impl Histogram {
    fn new(bounds: &'static [f64], scale: f64) -> Self {
        Histogram {
            bounds,
            scaled_bounds: bounds.iter().map(|b| (b * scale).round() as u64).collect(),
            buckets: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            count: AtomicU64::new(0),
            sum: AtomicU64::new(0),
            scale,
        }
    }

    /// A histogram of durations exposed in seconds.
    pub fn seconds(bounds: &'static [f64]) -> Self {
        Self::new(bounds, 1_000_000.0)
    }

    /// A histogram of plain counts.
    pub fn counts(bounds: &'static [f64]) -> Self {
        Self::new(bounds, 1.0)
    }

    /// Records one observation in the base unit.
    pub fn observe(&self, value: u64) {
        let index = self
            .scaled_bounds
            .iter()
            .position(|bound| value <= *bound)
            .unwrap_or(self.scaled_bounds.len());
        if let Some(bucket) = self.buckets.get(index) {
            bucket.fetch_add(1, Ordering::Relaxed);
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum.fetch_add(value, Ordering::Relaxed);
    }

    /// Records a duration in a histogram made by [`Histogram::seconds`].
    pub fn observe_duration(&self, elapsed: Duration) {
        self.observe(u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX));
    }

    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    /// Writes the `_bucket`, `_sum` and `_count` lines; `labels` is empty
    /// or a rendered `name="value"` list without braces.
    fn render(&self, out: &mut String, name: &str, labels: &str) {
        let separator = if labels.is_empty() { "" } else { "," };
        let mut cumulative = 0u64;
        for (index, bucket) in self.buckets.iter().enumerate() {
            cumulative += bucket.load(Ordering::Relaxed);
            let bound = match self.bounds.get(index) {
                Some(bound) => format_float(*bound),
                None => "+Inf".to_owned(),
            };
            let _ = writeln!(
                out,
                "{name}_bucket{{{labels}{separator}le=\"{bound}\"}} {cumulative}"
            );
        }
        let braces = if labels.is_empty() {
            String::new()
        } else {
            format!("{{{labels}}}")
        };
        let sum = self.sum.load(Ordering::Relaxed) as f64 / self.scale;
        let _ = writeln!(out, "{name}_sum{braces} {}", format_float(sum));
        let _ = writeln!(out, "{name}_count{braces} {}", self.count());
    }
}

/// Route patterns of one role, the `route` label of its HTTP metrics.
///
/// A pattern segment in braces (`/op/{id}`) matches any one path segment.
/// The patterns are split into segments once, because every request is
/// classified: splitting each pattern again per request cost about a
/// tenth of the proxy's own instructions for a protected call.
#[derive(Debug, Clone)]
pub struct RouteTable {
    patterns: Vec<&'static str>,
    /// Each pattern's segments, with `None` for a parameter.
    segments: Vec<Vec<Option<&'static str>>>,
}

/// Most segments a classified path may have; longer paths are
/// [`OTHER_ROUTE`]. Patterns with more segments never match.
const MAX_ROUTE_SEGMENTS: usize = 8;

impl RouteTable {
    pub fn new(patterns: &[&'static str]) -> Self {
        let segments = patterns
            .iter()
            .map(|pattern| {
                pattern
                    .split('/')
                    .map(|segment| {
                        let is_parameter = segment.starts_with('{') && segment.ends_with('}');
                        (!is_parameter).then_some(segment)
                    })
                    .collect()
            })
            .collect();
        RouteTable {
            patterns: patterns.to_vec(),
            segments,
        }
    }

    /// Returns the index of the first pattern that matches `path`, or the
    /// index of [`OTHER_ROUTE`] (one past the last pattern).
    pub fn classify(&self, path: &str) -> usize {
        let other = self.patterns.len();
        let mut found = [""; MAX_ROUTE_SEGMENTS];
        let mut count = 0;
        for segment in path.split('/') {
            let Some(slot) = found.get_mut(count) else {
                return other;
            };
            *slot = segment;
            count += 1;
        }
        let found = &found[..count];
        self.segments
            .iter()
            .position(|pattern| {
                pattern.len() == found.len()
                    && pattern
                        .iter()
                        .zip(found)
                        .all(|(expected, segment)| match expected {
                            Some(literal) => literal == segment,
                            None => !segment.is_empty(),
                        })
            })
            .unwrap_or(other)
    }

    /// The label of a route index from [`RouteTable::classify`].
    pub fn label(&self, index: usize) -> &'static str {
        self.patterns.get(index).copied().unwrap_or(OTHER_ROUTE)
    }

    /// Number of labels, [`OTHER_ROUTE`] included.
    fn len(&self) -> usize {
        self.patterns.len() + 1
    }
}

/// Lowest and highest status code with a series of its own.
const FIRST_STATUS: u16 = 100;
const LAST_STATUS: u16 = 599;

/// Requests by route and status, and their latency by route.
#[derive(Debug)]
pub struct HttpMetrics {
    routes: RouteTable,
    /// `routes.len()` rows of one counter per status code 100–599.
    requests: Box<[AtomicU64]>,
    /// Responses with a status outside 100–599, by route.
    odd_status: Box<[AtomicU64]>,
    latency: Box<[Histogram]>,
}

impl HttpMetrics {
    pub fn new(routes: RouteTable) -> Self {
        let statuses = usize::from(LAST_STATUS - FIRST_STATUS + 1);
        let rows = routes.len();
        HttpMetrics {
            requests: (0..rows * statuses).map(|_| AtomicU64::new(0)).collect(),
            odd_status: (0..rows).map(|_| AtomicU64::new(0)).collect(),
            latency: (0..rows)
                .map(|_| Histogram::seconds(REQUEST_SECONDS))
                .collect(),
            routes,
        }
    }

    pub fn routes(&self) -> &RouteTable {
        &self.routes
    }

    /// Records one answered request.
    pub fn observe(&self, route: usize, status: u16, elapsed: Duration) {
        let route = route.min(self.routes.len() - 1);
        if (FIRST_STATUS..=LAST_STATUS).contains(&status) {
            let statuses = usize::from(LAST_STATUS - FIRST_STATUS + 1);
            let index = route * statuses + usize::from(status - FIRST_STATUS);
            if let Some(counter) = self.requests.get(index) {
                counter.fetch_add(1, Ordering::Relaxed);
            }
        } else if let Some(counter) = self.odd_status.get(route) {
            counter.fetch_add(1, Ordering::Relaxed);
        }
        if let Some(histogram) = self.latency.get(route) {
            histogram.observe_duration(elapsed);
        }
    }

    /// Returns how many requests on `route` (a pattern) got `status`.
    pub fn requests(&self, route: &str, status: u16) -> u64 {
        let Some(row) = (0..self.routes.len()).find(|i| self.routes.label(*i) == route) else {
            return 0;
        };
        if !(FIRST_STATUS..=LAST_STATUS).contains(&status) {
            return 0;
        }
        let statuses = usize::from(LAST_STATUS - FIRST_STATUS + 1);
        self.requests
            .get(row * statuses + usize::from(status - FIRST_STATUS))
            .map_or(0, |c| c.load(Ordering::Relaxed))
    }

    fn render(&self, out: &mut Exposition) {
        out.family(
            "cardgate_http_requests_total",
            "counter",
            "HTTP requests answered, by route pattern and status code.",
        );
        let statuses = usize::from(LAST_STATUS - FIRST_STATUS + 1);
        for row in 0..self.routes.len() {
            let route = escape_label(self.routes.label(row));
            for offset in 0..statuses {
                let count = self
                    .requests
                    .get(row * statuses + offset)
                    .map_or(0, |c| c.load(Ordering::Relaxed));
                if count > 0 {
                    let status = usize::from(FIRST_STATUS) + offset;
                    out.sample(
                        "cardgate_http_requests_total",
                        &format!("route=\"{route}\",status=\"{status}\""),
                        count,
                    );
                }
            }
            let odd = self.odd_status[row].load(Ordering::Relaxed);
            if odd > 0 {
                out.sample(
                    "cardgate_http_requests_total",
                    &format!("route=\"{route}\",status=\"other\""),
                    odd,
                );
            }
        }

        out.family(
            "cardgate_http_request_duration_seconds",
            "histogram",
            "Time from receiving a request to having its response head, by route pattern.",
        );
        for (row, histogram) in self.latency.iter().enumerate() {
            if histogram.count() > 0 {
                let labels = format!("route=\"{}\"", escape_label(self.routes.label(row)));
                histogram.render(
                    &mut out.text,
                    "cardgate_http_request_duration_seconds",
                    &labels,
                );
            }
        }
    }
}

/// A CTAP2 operation the proxy runs on the card.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CardOperationKind {
    MakeCredential,
    GetAssertion,
}

impl CardOperationKind {
    const ALL: [CardOperationKind; 2] = [
        CardOperationKind::MakeCredential,
        CardOperationKind::GetAssertion,
    ];

    fn label(self) -> &'static str {
        match self {
            CardOperationKind::MakeCredential => "make_credential",
            CardOperationKind::GetAssertion => "get_assertion",
        }
    }

    fn index(self) -> usize {
        match self {
            CardOperationKind::MakeCredential => 0,
            CardOperationKind::GetAssertion => 1,
        }
    }
}

/// Outcome labels of card operations, from `CardError` names.
pub const CARD_OUTCOMES: &[&str] = &[
    "ok",
    "not_connected",
    "queue_full",
    "already_waiting",
    "denied",
    "timeout",
    "cancelled",
    "no_credentials",
    "status",
    "protocol",
    "lost",
    "shutting_down",
    "internal",
];

/// Card operations by outcome, and their duration.
#[derive(Debug)]
pub struct CardMetrics {
    /// One row of [`CARD_OUTCOMES`] counters per operation kind.
    outcomes: Box<[AtomicU64]>,
    durations: [Histogram; 2],
}

impl Default for CardMetrics {
    fn default() -> Self {
        CardMetrics {
            outcomes: (0..CardOperationKind::ALL.len() * CARD_OUTCOMES.len())
                .map(|_| AtomicU64::new(0))
                .collect(),
            durations: [
                Histogram::seconds(CARD_SECONDS),
                Histogram::seconds(CARD_SECONDS),
            ],
        }
    }
}

impl CardMetrics {
    /// Records one finished operation; an unknown outcome counts as `internal`.
    pub fn observe(&self, operation: CardOperationKind, outcome: &str, elapsed: Duration) {
        let column = CARD_OUTCOMES
            .iter()
            .position(|o| *o == outcome)
            .unwrap_or(CARD_OUTCOMES.len() - 1);
        let index = operation.index() * CARD_OUTCOMES.len() + column;
        if let Some(counter) = self.outcomes.get(index) {
            counter.fetch_add(1, Ordering::Relaxed);
        }
        self.durations[operation.index()].observe_duration(elapsed);
    }

    /// Returns how many `operation`s ended with `outcome`.
    pub fn count(&self, operation: CardOperationKind, outcome: &str) -> u64 {
        CARD_OUTCOMES
            .iter()
            .position(|o| *o == outcome)
            .and_then(|column| {
                self.outcomes
                    .get(operation.index() * CARD_OUTCOMES.len() + column)
            })
            .map_or(0, |c| c.load(Ordering::Relaxed))
    }

    fn render(&self, out: &mut Exposition) {
        out.family(
            "cardgate_card_operations_total",
            "counter",
            "CTAP2 operations sent to the card, by operation and outcome.",
        );
        for operation in CardOperationKind::ALL {
            for outcome in CARD_OUTCOMES {
                let count = self.count(operation, outcome);
                if count > 0 {
                    out.sample(
                        "cardgate_card_operations_total",
                        &format!("operation=\"{}\",outcome=\"{outcome}\"", operation.label()),
                        count,
                    );
                }
            }
        }

        out.family(
            "cardgate_card_operation_duration_seconds",
            "histogram",
            "Time from queueing a card operation to its result, including the wait for a person.",
        );
        for operation in CardOperationKind::ALL {
            let histogram = &self.durations[operation.index()];
            if histogram.count() > 0 {
                histogram.render(
                    &mut out.text,
                    "cardgate_card_operation_duration_seconds",
                    &format!("operation=\"{}\"", operation.label()),
                );
            }
        }
    }
}

/// Error codes of failed requests to k_server, as `ApiError::code` names them.
const UPSTREAM_ERRORS: &[&str] = &[
    "upstream_failed",
    "upstream_unavailable",
    "upstream_timeout",
];

/// Metrics of the proxy role.
#[derive(Debug)]
pub struct ProxyMetrics {
    pub http: HttpMetrics,
    pub card: CardMetrics,
    /// One counter per [`UPSTREAM_ERRORS`] code.
    upstream_errors: [Counter; 3],
}

impl ProxyMetrics {
    pub fn new(routes: RouteTable) -> Self {
        ProxyMetrics {
            http: HttpMetrics::new(routes),
            card: CardMetrics::default(),
            upstream_errors: Default::default(),
        }
    }

    /// Counts a failed request to k_server; `code` is an `ApiError` code,
    /// and codes of other errors are ignored.
    pub fn upstream_error(&self, code: &str) {
        if let Some(index) = UPSTREAM_ERRORS.iter().position(|c| *c == code) {
            self.upstream_errors[index].increment();
        }
    }

    pub fn upstream_errors(&self, code: &str) -> u64 {
        UPSTREAM_ERRORS
            .iter()
            .position(|c| *c == code)
            .map_or(0, |index| self.upstream_errors[index].get())
    }

    /// Renders every family, with `live` holding the values read from the
    /// actors at scrape time.
    pub fn render(&self, live: &ProxyGauges) -> String {
        let mut out = Exposition::default();
        build_info(&mut out, "proxy");
        self.http.render(&mut out);
        self.card.render(&mut out);

        out.family(
            "cardgate_card_restarts_total",
            "counter",
            "Times the card actor restarted after losing the card.",
        );
        out.sample("cardgate_card_restarts_total", "", live.card_restarts);
        out.family(
            "cardgate_card_connected",
            "gauge",
            "1 while the card is connected, 0 otherwise.",
        );
        out.sample(
            "cardgate_card_connected",
            "",
            u64::from(live.card_connected),
        );
        out.family(
            "cardgate_card_queue_length",
            "gauge",
            "Card operations waiting behind the one on the card.",
        );
        out.sample("cardgate_card_queue_length", "", live.card_queued);
        out.family(
            "cardgate_sessions_live",
            "gauge",
            "Login sessions that have not ended.",
        );
        out.sample("cardgate_sessions_live", "", live.sessions);

        out.family(
            "cardgate_upstream_errors_total",
            "counter",
            "Failed requests to k_server, by error code.",
        );
        for (code, counter) in UPSTREAM_ERRORS.iter().zip(&self.upstream_errors) {
            out.sample(
                "cardgate_upstream_errors_total",
                &format!("code=\"{code}\""),
                counter.get(),
            );
        }
        out.text
    }
}

/// Proxy values that actors own, read at scrape time.
#[derive(Debug, Clone, Copy, Default)]
pub struct ProxyGauges {
    pub card_connected: bool,
    pub card_restarts: u64,
    pub card_queued: u64,
    pub sessions: u64,
}

/// Metrics of the server role.
#[derive(Debug)]
pub struct ServerMetrics {
    pub http: HttpMetrics,
    /// Increments written by one flush of the counter store.
    pub batch_sizes: Histogram,
}

impl ServerMetrics {
    pub fn new(routes: RouteTable) -> Self {
        ServerMetrics {
            http: HttpMetrics::new(routes),
            batch_sizes: Histogram::counts(BATCH_SIZES),
        }
    }

    /// Renders every family, with `live` holding the values read from the
    /// counter actor at scrape time.
    pub fn render(&self, live: &ServerGauges) -> String {
        let mut out = Exposition::default();
        build_info(&mut out, "server");
        self.http.render(&mut out);

        out.family(
            "cardgate_counter_flush_batch_size",
            "histogram",
            "Increments made durable by one write and flush of the counter store.",
        );
        self.batch_sizes
            .render(&mut out.text, "cardgate_counter_flush_batch_size", "");
        out.family(
            "cardgate_counter_failed_flushes_total",
            "counter",
            "Counter batches whose write or flush failed.",
        );
        out.sample(
            "cardgate_counter_failed_flushes_total",
            "",
            live.failed_batches,
        );
        out.family(
            "cardgate_counter_value",
            "gauge",
            "Last durable counter value handed out.",
        );
        out.sample("cardgate_counter_value", "", live.value);
        out.family(
            "cardgate_counter_waiting",
            "gauge",
            "Increments waiting for the next batch.",
        );
        out.sample("cardgate_counter_waiting", "", live.waiting);
        out.text
    }
}

/// Server values that the counter actor owns, read at scrape time.
#[derive(Debug, Clone, Copy, Default)]
pub struct ServerGauges {
    pub value: u64,
    pub waiting: u64,
    pub failed_batches: u64,
}

fn build_info(out: &mut Exposition, role: &str) {
    out.family(
        "cardgate_build_info",
        "gauge",
        "Always 1; the labels name the version and role.",
    );
    out.sample(
        "cardgate_build_info",
        &format!(
            "version=\"{}\",role=\"{role}\"",
            escape_label(env!("CARGO_PKG_VERSION"))
        ),
        1,
    );
}

/// Text of one scrape.
#[derive(Default)]
struct Exposition {
    text: String,
}

impl Exposition {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.text, "# HELP {name} {help}");
        let _ = writeln!(self.text, "# TYPE {name} {kind}");
    }

    fn sample(&mut self, name: &str, labels: &str, value: u64) {
        if labels.is_empty() {
            let _ = writeln!(self.text, "{name} {value}");
        } else {
            let _ = writeln!(self.text, "{name}{{{labels}}} {value}");
        }
    }
}

/// Escapes a label value: backslash, double quote and newline.
fn escape_label(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Formats a float the way Prometheus parses it, without a trailing `.0`
/// on whole numbers.
fn format_float(value: f64) -> String {
    if value.fract() == 0.0 && value.abs() < 1e15 {
        format!("{}", value as i64)
    } else {
        format!("{value}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn routes() -> RouteTable {
        RouteTable::new(&["/health", "/op/{id}", "/op/{id}/cancel"])
    }

    #[test]
    fn route_table_matches_parameters_and_falls_back_to_other() {
        let table = routes();
        assert_eq!(table.label(table.classify("/health")), "/health");
        assert_eq!(table.label(table.classify("/op/abc")), "/op/{id}");
        assert_eq!(
            table.label(table.classify("/op/abc/cancel")),
            "/op/{id}/cancel"
        );
        let too_long = "/a".repeat(MAX_ROUTE_SEGMENTS);
        for path in [
            "/op/",
            "/op",
            "/health/x",
            "/",
            "/nope",
            "/op/a/b/c",
            "",
            &too_long,
        ] {
            assert_eq!(table.label(table.classify(path)), OTHER_ROUTE, "{path}");
        }
    }

    #[test]
    fn histogram_buckets_are_cumulative_with_inf() {
        let histogram = Histogram::counts(&[1.0, 4.0]);
        for value in [1, 2, 4, 9] {
            histogram.observe(value);
        }
        let mut text = String::new();
        histogram.render(&mut text, "batch", "");
        assert!(text.contains("batch_bucket{le=\"1\"} 1\n"), "{text}");
        assert!(text.contains("batch_bucket{le=\"4\"} 3\n"), "{text}");
        assert!(text.contains("batch_bucket{le=\"+Inf\"} 4\n"), "{text}");
        assert!(text.contains("batch_sum 16\n"), "{text}");
        assert!(text.contains("batch_count 4\n"), "{text}");
    }

    #[test]
    fn seconds_histogram_sums_in_seconds() {
        let histogram = Histogram::seconds(&[0.5]);
        histogram.observe_duration(Duration::from_millis(250));
        histogram.observe_duration(Duration::from_millis(1500));
        let mut text = String::new();
        histogram.render(&mut text, "t", "route=\"/x\"");
        assert!(
            text.contains("t_bucket{route=\"/x\",le=\"0.5\"} 1\n"),
            "{text}"
        );
        assert!(text.contains("t_sum{route=\"/x\"} 1.75\n"), "{text}");
    }

    #[test]
    fn http_metrics_count_route_and_status() {
        let metrics = HttpMetrics::new(routes());
        let health = metrics.routes().classify("/health");
        let other = metrics.routes().classify("/unknown");
        metrics.observe(health, 200, Duration::from_millis(1));
        metrics.observe(health, 200, Duration::from_millis(1));
        metrics.observe(other, 404, Duration::from_millis(1));
        metrics.observe(health, 42, Duration::from_millis(1));

        assert_eq!(metrics.requests("/health", 200), 2);
        assert_eq!(metrics.requests(OTHER_ROUTE, 404), 1);
        let mut out = Exposition::default();
        metrics.render(&mut out);
        let text = out.text;
        assert!(
            text.contains("cardgate_http_requests_total{route=\"/health\",status=\"200\"} 2\n"),
            "{text}"
        );
        assert!(
            text.contains("cardgate_http_requests_total{route=\"/health\",status=\"other\"} 1\n"),
            "{text}"
        );
        assert!(
            text.contains("cardgate_http_request_duration_seconds_count{route=\"/health\"} 3\n"),
            "{text}"
        );
    }

    #[test]
    fn card_metrics_map_unknown_outcome_to_internal() {
        let metrics = CardMetrics::default();
        metrics.observe(
            CardOperationKind::GetAssertion,
            "denied",
            Duration::from_secs(2),
        );
        metrics.observe(
            CardOperationKind::GetAssertion,
            "bogus",
            Duration::from_secs(1),
        );
        assert_eq!(metrics.count(CardOperationKind::GetAssertion, "denied"), 1);
        assert_eq!(
            metrics.count(CardOperationKind::GetAssertion, "internal"),
            1
        );
        assert_eq!(
            metrics.count(CardOperationKind::MakeCredential, "denied"),
            0
        );
    }

    #[test]
    fn every_family_has_help_and_type() {
        let metrics = ProxyMetrics::new(routes());
        metrics.upstream_error("upstream_timeout");
        metrics.upstream_error("card_denied");
        let text = metrics.render(&ProxyGauges {
            card_connected: true,
            card_restarts: 2,
            card_queued: 0,
            sessions: 5,
        });
        assert_eq!(metrics.upstream_errors("upstream_timeout"), 1);
        assert!(text.contains("cardgate_sessions_live 5\n"), "{text}");
        assert!(text.contains("cardgate_card_restarts_total 2\n"), "{text}");
        assert!(
            text.contains("cardgate_upstream_errors_total{code=\"upstream_timeout\"} 1\n"),
            "{text}"
        );
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let name = line
                .split(['{', ' '])
                .next()
                .expect("sample line has a name");
            let family = name
                .trim_end_matches("_bucket")
                .trim_end_matches("_sum")
                .trim_end_matches("_count");
            assert!(
                text.contains(&format!("# TYPE {family} ")),
                "no TYPE line for {name}"
            );
        }
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(escape_label("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }
}
