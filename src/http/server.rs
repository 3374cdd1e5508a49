//! HTTP front end of the `server` role (k_server): the protected counter
//! over HTTPS with mutual TLS.
//!
//! Routes:
//! - `GET /health` returns `{"ok":true,"role":"server","version":…,"counter":{…}}`
//!   with the counter's statistics.
//! - `GET /ready` answers 200 while the counter store is open and 503 with
//!   the failing part otherwise (see `http::probes`).
//! - `POST /resource/counter` returns `{"ok":true,"value":N}` once `N` is
//!   durable. The request body is ignored but may not exceed
//!   `http.max_body_bytes`.
//!
//! Every client must present a certificate signed by `tls.client_ca`;
//! without one the TLS handshake fails before any request is read.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use actix::{Addr, MailboxError};
use actix_rt::task::JoinHandle;
use actix_web::dev::{Server, ServerHandle};
use actix_web::http::KeepAlive;
use actix_web::middleware::from_fn;
use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer};
use futures_util::StreamExt as _;
use serde::Serialize;

use crate::actors::counter::{Close, CounterActor, CounterStats, Increment, Stats};
use crate::config::ServerConfig;
use crate::error::{ApiError, StartError};
use crate::http::probes::CHECK_TIMEOUT;
use crate::http::request::Tracking;
use crate::metrics::listener::{MetricsListener, Scrape};
use crate::metrics::{RouteTable, ServerGauges, ServerMetrics};

pub use crate::http::request::{MAX_REQUEST_ID_LEN, REQUEST_ID_HEADER};

/// Route patterns of the server, the `route` label of its request metrics.
pub const ROUTE_PATTERNS: &[&str] = &["/health", "/ready", "/resource/counter"];

/// A started server. It accepts connections only while `server` is polled:
/// await [`RunningServer::wait`], or call [`RunningServer::spawn`] to run
/// it on its own task. `server` resolves when the server stops after a
/// signal or a stop through its handle.
pub struct RunningServer {
    /// The bound address, with the real port when the config asked for port 0.
    pub addr: SocketAddr,
    /// The bound metrics address, when `metrics.listen` is set.
    pub metrics_addr: Option<SocketAddr>,
    pub server: Server,
    /// The counter actor, for its statistics and for closing the store.
    pub counter: Addr<CounterActor>,
    pub metrics: Arc<ServerMetrics>,
    metrics_listener: Option<MetricsListener>,
    shutdown_timeout: Duration,
}

impl RunningServer {
    /// Runs the server until it stops, then closes the metrics listener and
    /// the counter store.
    pub async fn wait(self) -> io::Result<()> {
        let result = self.server.await;
        if let Some(listener) = self.metrics_listener {
            listener.stop().await;
        }
        match self.counter.send(Close).timeout(CLOSE_TIMEOUT).await {
            Ok(()) => tracing::info!(addr = %self.addr, "server stopped; counter store closed"),
            Err(error) => tracing::error!(
                addr = %self.addr,
                %error,
                ?CLOSE_TIMEOUT,
                "server stopped; the counter store did not close"
            ),
        }
        result
    }

    /// Serves until `stop` resolves (with the reason, such as a signal's
    /// name), then stops accepting connections, gives open requests up to
    /// `http.shutdown_timeout_s`, and closes the metrics listener and the
    /// counter store (which flushes it).
    pub async fn run_until(self, stop: impl Future<Output = &'static str>) -> io::Result<()> {
        let handle = self.server.handle();
        let timeout = self.shutdown_timeout;
        let serving = self.wait();
        let mut serving = std::pin::pin!(serving);
        tokio::select! {
            result = &mut serving => result,
            reason = stop => {
                tracing::info!(reason, ?timeout, "stopping: no new connections; open requests may finish");
                let ((), result) = tokio::join!(handle.stop(true), serving);
                result
            }
        }
    }

    /// Runs the server on a task of the current arbiter.
    pub fn spawn(self) -> SpawnedServer {
        let addr = self.addr;
        let handle = self.server.handle();
        let counter = self.counter.clone();
        let task = actix_rt::spawn(self.wait());
        SpawnedServer {
            addr,
            handle,
            counter,
            task,
        }
    }
}

/// A server running on its own task, returned by [`RunningServer::spawn`].
pub struct SpawnedServer {
    pub addr: SocketAddr,
    pub handle: ServerHandle,
    pub counter: Addr<CounterActor>,
    task: JoinHandle<io::Result<()>>,
}

impl SpawnedServer {
    /// Stops the server, gracefully (open requests get up to
    /// `http.shutdown_timeout_s`) or at once. Returns after the counter
    /// store is closed, so the same store path can be opened again.
    pub async fn stop(self, graceful: bool) -> io::Result<()> {
        self.handle.stop(graceful).await;
        self.task.await.map_err(io::Error::other)?
    }
}

/// Starts the server on `config.listen`. Must run inside an actix System.
/// The counter actor runs on an arbiter of its own.
pub async fn start(config: ServerConfig) -> Result<RunningServer, StartError> {
    crate::http::settle_failed_start(start_parts(config).await).await
}

async fn start_parts(config: ServerConfig) -> Result<RunningServer, StartError> {
    // 1. TLS: client certificates from `tls.client_ca` are required.
    let tls = crate::tls::server_config(
        &config.tls.cert,
        &config.tls.key,
        Some(&config.tls.client_ca),
    )
    .map_err(|error| StartError::Tls(error.to_string()))?;

    // 2. The counter store.
    let metrics = Arc::new(ServerMetrics::new(RouteTable::new(ROUTE_PATTERNS)));
    let counter = CounterActor::open(&config.store.path)
        .map_err(|error| StartError::Store {
            path: config.store.path.display().to_string(),
            reason: error.to_string(),
        })?
        .with_metrics(metrics.clone())
        .start_on_own_thread();

    // 3. The metrics listener, when configured.
    let metrics_listener = match config.metrics.listen {
        Some(listen) => Some(MetricsListener::start(
            listen,
            server_scrape(metrics.clone(), counter.clone()),
        )?),
        None => None,
    };

    // 4. The HTTP listener. The proxy is the only client, so its request
    //    ids are reused.
    let http = config.http.clone();
    let counter_data = web::Data::new(counter.clone());
    let tracking = web::Data::new(Tracking {
        observer: metrics.clone(),
        trust_incoming_id: true,
        // The counter handler logs each value it hands out, in the span.
        spanless_path: None,
    });
    let body_limit = web::Data::new(BodyLimit(http.max_body_bytes));
    let body_timeout = crate::http::BodyTimeout(http.body_timeout());
    let keep_alive = match http.keep_alive_s {
        0 => KeepAlive::Disabled,
        _ => KeepAlive::Timeout(http.keep_alive()),
    };

    let mut builder = HttpServer::new(move || {
        App::new()
            .app_data(counter_data.clone())
            .app_data(body_limit.clone())
            .app_data(body_timeout)
            .app_data(tracking.clone())
            .wrap(from_fn(crate::http::body_deadline))
            .wrap(from_fn(crate::http::request::track))
            .configure(routes)
    })
    // Replies are small writes that must leave at once (see the proxy).
    .tcp_nodelay(true)
    .keep_alive(keep_alive)
    .client_request_timeout(http.client_request_timeout())
    .tls_handshake_timeout(http.client_request_timeout())
    .shutdown_timeout(http.shutdown_timeout_s)
    .max_connections(http.max_connections)
    // `run_until` handles SIGTERM and SIGINT; actix's own handler would
    // stop at once on SIGINT.
    .disable_signals();
    if http.workers > 0 {
        builder = builder.workers(http.workers);
    }

    let builder = builder
        .bind_rustls_0_23(config.listen, tls)
        .map_err(|source| StartError::Io {
            what: format!("cannot listen on {}", config.listen),
            source,
        })?;
    let addr =
        builder.addrs().first().copied().ok_or_else(|| {
            StartError::Other(format!("no socket was bound for {}", config.listen))
        })?;
    let server = builder.run();
    tracing::info!(%addr, store = %config.store.path.display(), "server listening");

    Ok(RunningServer {
        addr,
        metrics_addr: metrics_listener.as_ref().map(|m| m.addr),
        server,
        counter,
        metrics,
        metrics_listener,
        shutdown_timeout: http.shutdown_timeout(),
    })
}

/// Renders the server's metrics with the counter's current values.
fn server_scrape(metrics: Arc<ServerMetrics>, counter: Addr<CounterActor>) -> Scrape {
    Arc::new(move || {
        let (metrics, counter) = (metrics.clone(), counter.clone());
        Box::pin(async move {
            let mut gauges = ServerGauges::default();
            match counter_stats(&counter).await {
                Ok(stats) => {
                    gauges.value = stats.value;
                    gauges.waiting = stats.waiting as u64;
                    gauges.failed_batches = stats.failed_batches;
                }
                Err(error) => tracing::warn!(%error, "metrics: no counter values"),
            }
            metrics.render(&gauges)
        })
    })
}

/// Maximum request body in bytes, from `http.max_body_bytes`.
#[derive(Debug, Clone, Copy)]
struct BodyLimit(usize);

fn routes(config: &mut web::ServiceConfig) {
    config
        .service(
            web::resource("/health")
                .route(web::get().to(health))
                .default_service(web::to(|request: HttpRequest| wrong_method(request, "GET"))),
        )
        .service(
            web::resource("/ready")
                .route(web::get().to(crate::http::probes::server_ready))
                .default_service(web::to(|request: HttpRequest| wrong_method(request, "GET"))),
        )
        .service(
            web::resource(crate::http::COUNTER_PATH)
                .route(web::post().to(increment))
                .default_service(web::to(|request: HttpRequest| {
                    wrong_method(request, "POST")
                })),
        )
        .default_service(web::to(not_found));
}

#[derive(Serialize)]
struct HealthBody {
    ok: bool,
    role: &'static str,
    version: &'static str,
    counter: CounterStats,
}

async fn health(counter: web::Data<Addr<CounterActor>>) -> Result<HttpResponse, ApiError> {
    let stats = counter_stats(&counter).await?;
    Ok(HttpResponse::Ok().json(HealthBody {
        ok: true,
        role: "server",
        version: env!("CARGO_PKG_VERSION"),
        counter: stats,
    }))
}

#[derive(Serialize)]
struct CounterBody {
    ok: bool,
    value: u64,
}

async fn increment(
    counter: web::Data<Addr<CounterActor>>,
    limit: web::Data<BodyLimit>,
    body: web::Payload,
) -> Result<HttpResponse, ApiError> {
    discard_body(body, limit.0).await?;
    let value = counter
        .send(Increment)
        .timeout(INCREMENT_TIMEOUT)
        .await
        .map_err(|error| counter_gone(error, INCREMENT_TIMEOUT))??;
    tracing::debug!(value, "counter incremented");
    Ok(HttpResponse::Ok().json(CounterBody { ok: true, value }))
}

async fn not_found(request: HttpRequest) -> Result<HttpResponse, ApiError> {
    Err(ApiError::NotFound(format!(
        "no route for {} {}; the server serves GET /health, GET /ready and POST /resource/counter",
        request.method(),
        crate::http::shown_path(request.path())
    )))
}

// NOTE: ApiError has no variant for 405 Method Not Allowed, so a known path
// with the wrong method is reported as not found.
async fn wrong_method(
    request: HttpRequest,
    allowed: &'static str,
) -> Result<HttpResponse, ApiError> {
    Err(ApiError::NotFound(format!(
        "{} {} is not served; use {allowed}",
        request.method(),
        crate::http::shown_path(request.path())
    )))
}

/// Reads and drops the request body, failing as soon as it exceeds `limit`
/// bytes.
async fn discard_body(mut body: web::Payload, limit: usize) -> Result<(), ApiError> {
    let mut received = 0usize;
    while let Some(chunk) = body.next().await {
        let chunk = chunk.map_err(crate::http::payload_error)?;
        received = received.saturating_add(chunk.len());
        if received > limit {
            return Err(ApiError::PayloadTooLarge { limit });
        }
    }
    Ok(())
}

/// Returns the counter's statistics. The counter replies only between
/// writes, so a stalled disk delays the reply, and the wait is bounded.
async fn counter_stats(counter: &Addr<CounterActor>) -> Result<CounterStats, ApiError> {
    counter
        .send(Stats)
        .timeout(CHECK_TIMEOUT)
        .await
        .map_err(|error| counter_gone(error, CHECK_TIMEOUT))
}

/// Maximum wait for an increment. A write took about 75 µs on the
/// benchmark machine and takes milliseconds on a slow disk, so only a
/// stalled disk reaches this. An increment given up on loses its value,
/// which is never handed out later.
const INCREMENT_TIMEOUT: Duration = Duration::from_secs(10);

/// Maximum wait for the counter store to close at shutdown.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(10);

fn counter_gone(error: MailboxError, waited: Duration) -> ApiError {
    match error {
        MailboxError::Timeout => ApiError::Unavailable(format!(
            "timed out after {waited:?} waiting for the counter: its store may be \
             stalled; check the disk that contains store.path"
        )),
        MailboxError::Closed => {
            ApiError::Unavailable(format!("the counter is not running: {error}"))
        }
    }
}
