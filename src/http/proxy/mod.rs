//! The k_proxy role: starts the card, enrollment, session, upstream and
//! audit actors, serves the JSON API over TLS, serves audit queries on a
//! Unix socket and metrics on a loopback listener, and stops all of it in
//! order.

use std::future::Future;
use std::io;
use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;

use actix::{Actor, Addr};
use actix_web::body::{EitherBody, MessageBody};
use actix_web::dev::{Server, ServiceRequest, ServiceResponse};
use actix_web::http::Method;
use actix_web::middleware::{from_fn, DefaultHeaders, Next};
use actix_web::{web, App, HttpServer};
use tokio::sync::broadcast;

use crate::actors::audit::{record_card_events, Audit, AuditActor};
use crate::actors::card::{self, CardActor, CardSettings, GetHealth, EVENT_CAPACITY};
use crate::actors::enrollments::EnrollmentsActor;
use crate::actors::operations::OperationsActor;
use crate::actors::ratelimit::{RateLimitActor, RateLimitSettings};
use crate::actors::session_cache::SessionCache;
use crate::actors::sessions::{self, SessionSettings, SessionsActor};
use crate::actors::upstream::{self as upstream_link, UpstreamActor, UpstreamSettings};
use crate::audit::socket::AuditSocket;
use crate::audit::{AuditAction, AuditEvent};
use crate::config::{ConfigError, ProxyConfig};
use crate::ctap::device::Timing;
use crate::ctap::sim::authenticator::SimAuthenticator;
use crate::ctap::sim::engine::Presence;
use crate::ctap::transport::{self, DeviceSpec, SimCard, SimHandle};
use crate::error::{ApiError, StartError};
use crate::http::request::Tracking;
use crate::metrics::listener::{MetricsListener, Scrape};
use crate::metrics::{ProxyGauges, ProxyMetrics, RouteTable};

pub mod ceremony;
pub mod routes;

pub use routes::ProxyState;

/// Route patterns of the proxy, the `route` label of its request metrics.
/// A path that matches none is counted as `other`. `/op/enroll` and
/// `/op/login` come before `/op/{id}`, which would match them too.
pub const ROUTE_PATTERNS: &[&str] = &[
    "/health",
    "/ready",
    "/enroll/register",
    "/enroll/status",
    "/enroll/update",
    "/enroll/delete",
    "/enroll/list",
    "/session/login",
    "/session/status",
    "/session/logout",
    "/resource/counter",
    "/op/enroll",
    "/op/login",
    "/op/{id}",
    "/op/{id}/cancel",
    "/",
    "/app.js",
    "/style.css",
    "/favicon.svg",
];

/// A started proxy. [`RunningProxy::run_until`] serves until a stop
/// signal and then shuts everything down in order.
pub struct RunningProxy {
    pub addr: SocketAddr,
    /// The bound metrics address, when `metrics.listen` is set.
    pub metrics_addr: Option<SocketAddr>,
    pub server: Server,
    pub card: actix::Addr<CardActor>,
    /// The owner of all sessions; benchmarks create sessions through it.
    pub sessions: actix::Addr<SessionsActor>,
    /// The in-process simulated card, when `card.device` is `sim`; tests use
    /// it to unplug and replug the card.
    pub sim: Option<SimHandle>,
    pub audit: Audit,
    pub metrics: Arc<ProxyMetrics>,
    /// Path of the audit query socket.
    pub audit_socket: PathBuf,
    teardown: Teardown,
}

/// What a stop closes after the HTTP server has stopped.
struct Teardown {
    db: sled::Db,
    socket: AuditSocket,
    metrics: Option<MetricsListener>,
    shutdown_timeout: Duration,
}

impl RunningProxy {
    /// Serves until `stop` resolves (with the reason, such as a signal's
    /// name) or the server stops by itself, then stops in order:
    ///
    /// 1. cancel the card's pending operations and reject new ones, so that
    ///    requests waiting for a person end at once with 503;
    /// 2. stop accepting connections and give open requests up to
    ///    `http.shutdown_timeout_s`;
    /// 3. close the metrics listener and the audit socket;
    /// 4. record the stop in the audit trail and flush the sled store.
    pub async fn run_until(self, stop: impl Future<Output = &'static str>) -> io::Result<()> {
        let RunningProxy {
            addr,
            server,
            card,
            audit,
            teardown,
            ..
        } = self;
        let handle = server.handle();
        let mut server = std::pin::pin!(server);

        // 1 and 2.
        let result = tokio::select! {
            result = &mut server => result,
            reason = stop => {
                tracing::info!(
                    reason,
                    timeout = ?teardown.shutdown_timeout,
                    "stopping: no new connections; open requests may finish"
                );
                if let Err(e) = card.send(card::Shutdown).await {
                    tracing::warn!(error = %e, "the card actor did not respond to the shutdown");
                }
                let ((), result) = tokio::join!(handle.stop(true), server);
                result
            }
        };

        // 3.
        if let Some(metrics) = teardown.metrics {
            metrics.stop().await;
        }
        teardown.socket.close();

        // 4.
        audit.record(AuditEvent::success(AuditAction::Stop).details(format!("listened on {addr}")));
        if let Err(e) = audit.flush().await {
            tracing::error!(error = %e, "flushing the audit trail failed");
        }
        let db = teardown.db;
        let flushed = actix_rt::task::spawn_blocking(move || db.flush()).await;
        match flushed {
            Ok(Ok(_)) => tracing::info!(%addr, "proxy stopped; store flushed"),
            Ok(Err(e)) => tracing::error!(error = %e, "flushing the store failed"),
            Err(e) => tracing::error!(error = %e, "the store flush task failed"),
        }
        result
    }
}

/// Response headers on every reply: no sniffing, no framing, no referrer,
/// no caching of API responses.
fn security_headers() -> DefaultHeaders {
    DefaultHeaders::new()
        .add(("X-Content-Type-Options", "nosniff"))
        .add(("X-Frame-Options", "DENY"))
        .add(("Referrer-Policy", "no-referrer"))
        .add(("Cache-Control", "no-store"))
        .add(("Strict-Transport-Security", "max-age=31536000"))
        .add((
            "Content-Security-Policy",
            "default-src 'none'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'",
        ))
}

/// Middleware: a state-changing request must come from the configured
/// origin. Browsers send `Origin` and `Sec-Fetch-Site` on cross-site
/// requests; command-line clients send neither and are let through, since
/// they cannot carry a browser's cookie by accident. A rejection is
/// returned as a reply, not as an error, so that the request middleware
/// around it adds the request id as it does to every reply.
async fn same_origin(
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<EitherBody<impl MessageBody>>, actix_web::Error> {
    match cross_origin_error(&req) {
        Some(error) => Ok(req.error_response(error).map_into_right_body()),
        None => next
            .call(req)
            .await
            .map(ServiceResponse::map_into_left_body),
    }
}

/// Returns the error for a cross-site `req`, or `None` when it is accepted.
fn cross_origin_error(req: &ServiceRequest) -> Option<ApiError> {
    if req.method() == Method::GET || req.method() == Method::HEAD {
        return None;
    }
    let expected = req
        .app_data::<web::Data<ProxyState>>()
        .map_or("", |s| s.rp.origin.as_str());
    if let Some(origin) = req.headers().get("origin") {
        if origin.as_bytes() != expected.as_bytes() {
            return Some(ApiError::Forbidden(format!(
                "requests from origin {:?} are not accepted; use the portal at {expected}",
                String::from_utf8_lossy(origin.as_bytes())
            )));
        }
    }
    if let Some(site) = req.headers().get("sec-fetch-site") {
        if !matches!(site.as_bytes(), b"same-origin" | b"none") {
            return Some(ApiError::Forbidden(format!(
                "a cross-site request (Sec-Fetch-Site: {}) is not accepted; use the portal at {expected}",
                String::from_utf8_lossy(site.as_bytes())
            )));
        }
    }
    None
}

fn bad_key(key: &str, message: impl Into<String>) -> StartError {
    StartError::Config(ConfigError {
        key: key.to_string(),
        message: message.into(),
    })
}

/// HTTP/2 connections per worker above which the proxy warns at start: at
/// 32 per worker, throughput at 64 client connections fell by about 40 %
/// in the benchmarks.
const MANY_CONNECTIONS_PER_WORKER: usize = 4;

/// Connections each worker's upstream actor keeps open: `pool_size`
/// (the whole proxy's limit) shared evenly, at least one per worker.
fn worker_pool_size(pool_size: usize, workers: usize) -> usize {
    (pool_size / workers.max(1)).max(1)
}

/// Starts the proxy's actors and binds its listener. Must run inside an
/// actix system.
pub async fn start(config: ProxyConfig) -> Result<RunningProxy, StartError> {
    crate::http::settle_failed_start(start_parts(config).await).await
}

async fn start_parts(config: ProxyConfig) -> Result<RunningProxy, StartError> {
    // TLS towards browsers and clients, and mutual TLS towards k_server.
    let server_tls = crate::tls::server_config(&config.tls.cert, &config.tls.key, None)
        .map_err(|e| StartError::Tls(e.to_string()))?;
    let upstream_tls = crate::tls::client_config(
        &config.upstream.ca,
        Some((&config.upstream.client_cert, &config.upstream.client_key)),
    )
    .map_err(|e| StartError::Tls(e.to_string()))?;

    // The card: a real one over hidraw or UDP, or the in-process simulator.
    let spec: DeviceSpec = config
        .card
        .device
        .parse()
        .map_err(|e| bad_key("card.device", format!("{e}")))?;
    let sim =
        match spec {
            DeviceSpec::Sim => {
                let presence: Presence = config
                    .card
                    .sim_presence
                    .parse()
                    .map_err(|e| bad_key("card.sim_presence", format!("{e}")))?;
                let authenticator = SimAuthenticator::open(config.card.sim_state.as_deref())
                    .map_err(|e| StartError::Io {
                        what: "cannot open the simulated card's state".into(),
                        source: e,
                    })?;
                Some(SimCard::spawn(authenticator, presence))
            }
            _ => None,
        };
    let connector = transport::connector(&spec, sim.clone())
        .map_err(|e| bad_key("card.device", e.to_string()))?;
    let (events, _) = broadcast::channel(EVENT_CAPACITY);
    // Subscribed before the card actor starts, so that the trail has the
    // first `card_connected`.
    let card_events = events.subscribe();
    let timing = Timing {
        idle_timeout: Duration::from_millis(config.card.idle_timeout_ms),
        ..Timing::default()
    };
    let card = CardActor::new(
        Arc::from(connector),
        CardSettings {
            confirm_timeout: Duration::from_secs(config.card.confirm_timeout_s),
            queue_limit: config.card.queue_limit,
            login_grace: Duration::from_millis(config.card.login_grace_ms),
            reconnect_max_backoff: Duration::from_millis(config.card.reconnect_max_backoff_ms),
            timing,
        },
        events.clone(),
    )
    .start_supervised();

    // The store: one sled database shared by the enrollments and the audit
    // trail, because sled lets one process open it.
    let store_error = |reason: String| StartError::Store {
        path: config.store.path.display().to_string(),
        reason,
    };
    let db = sled::Config::new()
        .path(&config.store.path)
        .open()
        .map_err(|e| store_error(e.to_string()))?;
    let enrollments =
        EnrollmentsActor::start_with_db(db.clone()).map_err(|e| store_error(e.to_string()))?;
    let audit = AuditActor::start(db.clone()).map_err(|e| store_error(e.to_string()))?;
    audit.record(AuditEvent::success(AuditAction::Start).details(format!(
        "cardgate {} on {}, card {}",
        env!("CARGO_PKG_VERSION"),
        config.listen,
        config.card.device
    )));
    record_card_events(card_events, audit.clone());
    let audit_socket = AuditSocket::bind(&config.store.path, audit.clone())?;

    let session_settings = SessionSettings {
        idle_timeout: Duration::from_secs(config.session.idle_timeout_s),
        lifetime: Duration::from_secs(config.session.lifetime_s),
        cleanup_interval: Duration::from_secs(config.session.cleanup_interval_s),
    };
    let sessions = SessionsActor::new(session_settings).start();
    let workers = match config.http.workers {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        n => n,
    };
    let upstream = upstream_link::Target::new(&UpstreamSettings {
        base_url: config.upstream.url.clone(),
        tls: Arc::new(upstream_tls),
        connect_timeout: Duration::from_millis(config.upstream.connect_timeout_ms),
        request_timeout: Duration::from_millis(config.upstream.request_timeout_ms),
    })
    .map(Arc::new)
    .map_err(|e| bad_key("upstream.url", e))?;
    let worker_connections = worker_pool_size(config.upstream.pool_size, workers);
    if worker_connections > MANY_CONNECTIONS_PER_WORKER {
        tracing::warn!(
            pool_size = config.upstream.pool_size,
            workers,
            "upstream.pool_size gives each HTTP worker {worker_connections} HTTP/2 connections to k_server; \
             requests spread over more connections share fewer writes, so set it to 1 or 2 per worker"
        );
    }

    let operations = OperationsActor::new(events.clone()).start();
    let limits = RateLimitActor::new(RateLimitSettings {
        address_burst: config.limits.address_burst,
        address_refill: Duration::from_millis(config.limits.address_refill_ms),
        username_free_failures: config.limits.username_free_failures,
        username_first_backoff: Duration::from_millis(config.limits.username_first_backoff_ms),
        username_max_backoff: Duration::from_secs(config.limits.username_max_backoff_s),
    })
    .start();
    let metrics = Arc::new(ProxyMetrics::new(RouteTable::new(ROUTE_PATTERNS)));
    let metrics_listener = match config.metrics.listen {
        Some(listen) => Some(MetricsListener::start(
            listen,
            proxy_scrape(metrics.clone(), card.clone(), sessions.clone()),
        )?),
        None => None,
    };

    let state = web::Data::new(ProxyState {
        operations,
        limits,
        sessions: sessions.clone(),
        enrollments,
        card: card.clone(),
        events,
        rp: ceremony::RelyingParty::new(
            config.webauthn.rp_id.clone(),
            config.webauthn.rp_name.clone(),
            config.webauthn.origin.clone(),
            config.webauthn.user_verification,
        ),
        cookie_name: config.session.cookie_name.clone(),
        session_lifetime: Duration::from_secs(config.session.lifetime_s),
        next_operation: AtomicU64::new(1),
        audit: audit.clone(),
        metrics: metrics.clone(),
    });
    let tracking = web::Data::new(Tracking {
        observer: metrics.clone(),
        trust_incoming_id: false,
        spanless_path: Some(crate::http::COUNTER_PATH),
    });

    // The HTTP listener.
    let listener = TcpListener::bind(config.listen).map_err(|e| StartError::Io {
        what: format!("cannot listen on {} (config key `listen`)", config.listen),
        source: e,
    })?;
    let addr = listener.local_addr().map_err(|e| StartError::Io {
        what: "cannot read the bound address".into(),
        source: e,
    })?;
    let http = config.http.clone();
    let builder = HttpServer::new(move || {
        // The factory runs once on each worker's thread, so each worker gets
        // its own session cache and upstream actor (with its own
        // connections to k_server), and a protected call runs on its worker's thread from
        // start to end. One shared actor of each kind would put two round
        // trips to another thread on every call, and run every forwarded
        // request on that one thread.
        let cache = SessionCache::new(state.sessions.clone(), session_settings).start();
        let upstream = UpstreamActor::new(upstream.clone(), worker_connections).start();
        App::new()
            .app_data(state.clone())
            .app_data(tracking.clone())
            .app_data(web::Data::new(cache))
            .app_data(web::Data::new(upstream))
            .app_data(crate::http::json_config(http.max_body_bytes))
            .app_data(crate::http::query_config())
            .app_data(crate::http::BodyTimeout(http.body_timeout()))
            .wrap(from_fn(crate::http::body_deadline))
            .wrap(from_fn(same_origin))
            .wrap(security_headers())
            .wrap(from_fn(crate::http::request::track))
            .configure(routes::configure)
            .route("/ready", web::get().to(crate::http::probes::proxy_ready))
            .configure(crate::http::portal::configure)
            .default_service(web::to(crate::http::not_found))
    })
    .workers(workers)
    // Every reply is one small write that must leave at once, not wait for
    // the client's acknowledgement of the one before (Nagle's algorithm).
    .tcp_nodelay(true)
    .keep_alive(Duration::from_secs(config.http.keep_alive_s))
    .client_request_timeout(config.http.client_request_timeout())
    .tls_handshake_timeout(config.http.client_request_timeout())
    .shutdown_timeout(config.http.shutdown_timeout_s)
    .max_connections(config.http.max_connections)
    // `run_until` handles SIGTERM and SIGINT; actix's own handler would
    // stop at once on SIGINT.
    .disable_signals();
    let server = builder
        .listen_rustls_0_23(listener, server_tls)
        .map_err(|e| StartError::Io {
            what: format!("cannot serve TLS on {addr}"),
            source: e,
        })?
        .run();
    tracing::info!(%addr, upstream = %config.upstream.url, card = %config.card.device, "proxy listening");

    Ok(RunningProxy {
        addr,
        metrics_addr: metrics_listener.as_ref().map(|m| m.addr),
        server,
        card,
        sessions,
        sim,
        audit,
        metrics,
        audit_socket: audit_socket.path().to_path_buf(),
        teardown: Teardown {
            db,
            socket: audit_socket,
            metrics: metrics_listener,
            shutdown_timeout: config.http.shutdown_timeout(),
        },
    })
}

/// Renders the proxy's metrics with the card's and the sessions' current
/// values.
fn proxy_scrape(
    metrics: Arc<ProxyMetrics>,
    card: Addr<CardActor>,
    sessions: Addr<SessionsActor>,
) -> Scrape {
    Arc::new(move || {
        let (metrics, card, sessions) = (metrics.clone(), card.clone(), sessions.clone());
        Box::pin(async move {
            let mut gauges = ProxyGauges::default();
            match card.send(GetHealth).await {
                Ok(health) => {
                    gauges.card_connected = health.state != "disconnected";
                    gauges.card_restarts = u64::from(health.restarts);
                    gauges.card_queued = health.queued as u64;
                }
                Err(e) => tracing::warn!(error = %e, "metrics: the card actor did not respond"),
            }
            match sessions.send(sessions::Count).await {
                Ok(count) => gauges.sessions = count as u64,
                Err(e) => tracing::warn!(error = %e, "metrics: the sessions actor did not respond"),
            }
            metrics.render(&gauges)
        })
    })
}

#[cfg(test)]
mod tests {
    use super::worker_pool_size;

    #[test]
    fn worker_pool_size_splits_evenly() {
        assert_eq!(worker_pool_size(64, 2), 32);
        assert_eq!(worker_pool_size(65, 2), 32);
        assert_eq!(worker_pool_size(64, 0), 64);
    }

    #[test]
    fn worker_pool_size_keeps_one_per_worker() {
        assert_eq!(worker_pool_size(1, 4), 1);
    }
}
