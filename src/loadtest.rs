//! `cardgate loadtest`: many protected counter calls through the proxy, with
//! a check that every returned value is unique and that together they form
//! one contiguous range.
//!
//! Users are enrolled (when not yet enrolled) and logged in first, which
//! needs a card that approves by itself, such as the simulated card.

use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::rc::Rc;
use std::time::{Duration, Instant};

use clap::Args;
use futures_util::stream::{self, StreamExt};
use serde::Serialize;

use crate::client::api::{ClientError, ProxyClient};

#[derive(Debug, Args)]
pub struct LoadtestArgs {
    /// Proxy base URL, such as https://localhost:8443.
    #[arg(long)]
    pub proxy: String,

    /// CA certificate that signed the proxy's certificate.
    #[arg(long)]
    pub ca: PathBuf,

    /// Number of users (named loadtest-0, loadtest-1, …).
    #[arg(long, default_value_t = 5)]
    pub users: usize,

    /// Counter calls per user.
    #[arg(long, default_value_t = 5)]
    pub requests: usize,

    /// Maximum calls in flight at once; 0 sends all calls at once.
    #[arg(long, default_value_t = 64)]
    pub max_workers: usize,

    /// Print one JSON report instead of text and no progress bar.
    #[arg(long)]
    pub json: bool,
}

/// Latency percentiles in milliseconds.
#[derive(Debug, Serialize)]
pub struct Latency {
    pub p50_ms: f64,
    pub p95_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

/// The outcome of a run, printed as text or, with `--json`, as one object.
#[derive(Debug, Serialize)]
pub struct Report {
    /// True when every call succeeded and the values are unique and
    /// contiguous; the exit code is 0 exactly then.
    pub passed: bool,
    pub users: usize,
    pub requests: usize,
    pub succeeded: usize,
    /// Failures by error code.
    pub failed: BTreeMap<String, usize>,
    pub latency: Option<Latency>,
    pub seconds: f64,
    pub requests_per_second: f64,
    pub duplicates: usize,
    /// Values missing between the lowest and the highest returned value.
    pub gaps: u64,
    pub first_value: Option<u64>,
    pub last_value: Option<u64>,
}

impl Report {
    fn all_clean(&self) -> bool {
        self.failed.is_empty()
            && self.duplicates == 0
            && self.gaps == 0
            && self.succeeded == self.requests
    }
}

/// Percentile of sorted samples, nearest-rank.
fn percentile(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    let index = rank.clamp(1, sorted.len()) - 1;
    sorted[index].as_secs_f64() * 1000.0
}

/// Counts duplicates and missing values in a set of counter values.
pub fn check_values(values: &mut [u64]) -> (usize, u64) {
    values.sort_unstable();
    let duplicates = values.windows(2).filter(|w| w[0] == w[1]).count();
    let gaps = match (values.first(), values.last()) {
        (Some(first), Some(last)) => {
            let span = last - first + 1;
            let distinct = (values.len() - duplicates) as u64;
            span - distinct
        }
        _ => 0,
    };
    (duplicates, gaps)
}

/// Runs the load test; returns the report (also when calls failed).
pub async fn run(args: &LoadtestArgs) -> Result<Report, ClientError> {
    let workers = if args.max_workers == 0 {
        args.users * args.requests
    } else {
        args.max_workers
    };
    let client = ProxyClient::new(&args.proxy, &args.ca, workers.max(args.users))?;

    // 1. Sessions for every user, enrolling those that are not enrolled.
    //    One at a time, because the card serves one request at a time.
    let mut tokens = Vec::with_capacity(args.users);
    for index in 0..args.users {
        let username = format!("loadtest-{index}");
        let failed = |step: &str, e: ClientError| {
            ClientError::Setup(format!("cannot {step} {username}: {e}"))
        };
        let status = client
            .enroll_status(&username)
            .await
            .map_err(|e| failed("look up", e))?;
        if status["enrolled"] != true {
            client
                .enroll(&username)
                .await
                .map_err(|e| failed("enroll", e))?;
        }
        let login = client
            .login(&username)
            .await
            .map_err(|e| failed("log in", e))?;
        tokens.push(login.session_token);
    }

    // 2. The calls, at most `workers` in flight.
    let total = args.users * args.requests;
    let progress = Rc::new(Progress::new(
        total,
        !args.json && std::io::stderr().is_terminal(),
    ));
    let started = Instant::now();
    let calls = (0..total).map(|i| {
        let client = client.clone();
        let token = tokens[i % args.users].clone();
        let progress = progress.clone();
        async move {
            let begun = Instant::now();
            let result = client.counter(&token).await;
            progress.tick();
            (begun.elapsed(), result)
        }
    });
    let results: Vec<_> = stream::iter(calls)
        .buffer_unordered(workers.max(1))
        .collect()
        .await;
    let seconds = started.elapsed().as_secs_f64();
    progress.finish();

    // 3. The report.
    let mut latencies = Vec::with_capacity(total);
    let mut values = Vec::with_capacity(total);
    let mut failed = BTreeMap::new();
    for (elapsed, result) in results {
        match result {
            Ok(reply) => {
                latencies.push(elapsed);
                values.push(reply.value);
            }
            Err(e) => *failed.entry(e.code().to_string()).or_insert(0) += 1,
        }
    }
    latencies.sort_unstable();
    let (duplicates, gaps) = check_values(&mut values);
    let mut report = Report {
        passed: false,
        users: args.users,
        requests: total,
        succeeded: values.len(),
        failed,
        latency: (!latencies.is_empty()).then(|| Latency {
            p50_ms: percentile(&latencies, 50.0),
            p95_ms: percentile(&latencies, 95.0),
            p99_ms: percentile(&latencies, 99.0),
            max_ms: percentile(&latencies, 100.0),
        }),
        seconds,
        requests_per_second: if seconds > 0.0 {
            values.len() as f64 / seconds
        } else {
            0.0
        },
        duplicates,
        gaps,
        first_value: values.first().copied(),
        last_value: values.last().copied(),
    };
    report.passed = report.all_clean();
    Ok(report)
}

/// Runs `cardgate loadtest` and returns the exit code.
pub fn main(args: LoadtestArgs) -> std::process::ExitCode {
    let outcome = actix_rt::System::new().block_on(run(&args));
    let report = match outcome {
        Ok(report) => report,
        Err(e) => {
            eprintln!("cardgate loadtest: {e}");
            if args.json {
                println!(
                    "{}",
                    serde_json::json!({ "passed": false, "error": e.to_string() })
                );
            }
            return std::process::ExitCode::FAILURE;
        }
    };
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&report).unwrap_or_default()
        );
    } else {
        print_report(&report);
    }
    if report.passed {
        std::process::ExitCode::SUCCESS
    } else {
        std::process::ExitCode::FAILURE
    }
}

fn print_report(report: &Report) {
    println!("requests     {} ({} users)", report.requests, report.users);
    println!("succeeded    {}", report.succeeded);
    for (code, count) in &report.failed {
        println!("failed       {count} × {code}");
    }
    if let Some(l) = &report.latency {
        println!(
            "latency      p50 {:.2} ms, p95 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
            l.p50_ms, l.p95_ms, l.p99_ms, l.max_ms
        );
    }
    println!(
        "throughput   {:.0} requests/s over {:.2} s",
        report.requests_per_second, report.seconds
    );
    println!(
        "values       {}..={}, {} duplicates, {} missing",
        report.first_value.map_or("-".into(), |v| v.to_string()),
        report.last_value.map_or("-".into(), |v| v.to_string()),
        report.duplicates,
        report.gaps
    );
    println!(
        "result       {}",
        if report.passed { "PASS" } else { "FAIL" }
    );
}

/// A one-line progress bar on stderr, drawn only on a terminal.
struct Progress {
    total: usize,
    done: std::cell::Cell<usize>,
    enabled: bool,
}

impl Progress {
    fn new(total: usize, enabled: bool) -> Progress {
        Progress {
            total,
            done: std::cell::Cell::new(0),
            enabled,
        }
    }

    fn tick(&self) {
        let done = self.done.get() + 1;
        self.done.set(done);
        // Redraw about 100 times per run, not on every call.
        let step = (self.total / 100).max(1);
        if self.enabled && (done % step == 0 || done == self.total) {
            let width = 40;
            let filled = done * width / self.total.max(1);
            eprint!(
                "\r[{}{}] {done}/{}",
                "#".repeat(filled),
                " ".repeat(width - filled),
                self.total
            );
            let _ = std::io::stderr().flush();
        }
    }

    fn finish(&self) {
        if self.enabled {
            eprintln!();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn contiguous_values_pass() {
        let mut values = vec![5, 3, 4, 6];
        assert_eq!(check_values(&mut values), (0, 0));
    }

    #[test]
    fn duplicates_and_gaps_are_counted() {
        let mut values = vec![1, 2, 2, 5];
        assert_eq!(check_values(&mut values), (1, 2));
    }

    #[test]
    fn percentile_uses_nearest_rank() {
        let samples: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        assert_eq!(percentile(&samples, 50.0), 50.0);
        assert_eq!(percentile(&samples, 99.0), 99.0);
        assert_eq!(percentile(&samples, 100.0), 100.0);
    }
}
