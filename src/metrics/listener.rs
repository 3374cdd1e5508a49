//! The `/metrics` listener: plain HTTP on a loopback address of its own
//! (`metrics.listen`), apart from the role's TLS listener so that a scraper
//! needs no client certificate and the API port serves no metrics.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;

use actix_web::dev::{Server, ServerHandle};
use actix_web::{web, App, HttpResponse, HttpServer};

use super::CONTENT_TYPE;
use crate::error::StartError;

/// Seconds a stopping metrics listener waits for a scrape in progress.
const SHUTDOWN_TIMEOUT_S: u64 = 1;

/// Renders one scrape. It runs on the listener's worker thread and may ask
/// actors for their current values.
pub type Scrape = Arc<dyn Fn() -> Pin<Box<dyn Future<Output = String>>> + Send + Sync>;

/// A running metrics listener.
pub struct MetricsListener {
    /// The bound address, with the real port when the config asked for port 0.
    pub addr: SocketAddr,
    handle: ServerHandle,
}

impl MetricsListener {
    /// Binds `addr` and serves `GET /metrics` with one worker on the current
    /// actix system.
    pub fn start(addr: SocketAddr, scrape: Scrape) -> Result<MetricsListener, StartError> {
        let server = HttpServer::new(move || {
            let scrape = scrape.clone();
            App::new()
                .route(
                    "/metrics",
                    web::get().to(move || {
                        let scrape = scrape.clone();
                        async move {
                            let text = scrape().await;
                            HttpResponse::Ok().content_type(CONTENT_TYPE).body(text)
                        }
                    }),
                )
                .default_service(web::to(|| async {
                    HttpResponse::NotFound()
                        .content_type("text/plain; charset=utf-8")
                        .body("this listener serves only GET /metrics\n")
                }))
        })
        .workers(1)
        .disable_signals()
        .shutdown_timeout(SHUTDOWN_TIMEOUT_S)
        .bind(addr)
        .map_err(|source| StartError::Io {
            what: format!("cannot listen on {addr} (config key `metrics.listen`)"),
            source,
        })?;
        let bound = server.addrs().first().copied().ok_or_else(|| {
            StartError::Other(format!("no socket was bound for metrics on {addr}"))
        })?;
        let server: Server = server.run();
        let handle = server.handle();
        actix_rt::spawn(server);
        tracing::info!(addr = %bound, "metrics listening on /metrics");
        Ok(MetricsListener {
            addr: bound,
            handle,
        })
    }

    /// Stops the listener, letting a scrape in progress finish.
    pub async fn stop(self) {
        self.handle.stop(true).await;
    }
}
