//! The upstream actor: the proxy's link to k_server.
//!
//! It owns one HTTP client with mutual TLS (the proxy's client certificate)
//! and a bounded pool of kept-alive connections, so TLS handshakes are paid
//! once per pooled connection, not once per request. Requests run
//! concurrently inside the actor; the mailbox only hands them out. The proxy
//! starts one such actor on each HTTP worker thread, so that forwarding
//! spreads over the workers like the incoming connections do.

use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use awc::error::{ConnectError, SendRequestError};
use serde::Deserialize;

use crate::error::ApiError;

/// Maximum upstream response body the proxy reads, in bytes. The counter
/// reply is a few dozen bytes; anything near this limit is a fault.
const MAX_RESPONSE_BYTES: usize = 64 * 1024;

/// Header that carries the proxy's request id to k_server.
const REQUEST_ID: awc::http::header::HeaderName =
    awc::http::header::HeaderName::from_static("x-request-id");

/// Settings of the proxy's link to k_server.
#[derive(Clone)]
pub struct UpstreamSettings {
    /// Base URL, such as `https://127.0.0.1:9443`.
    pub base_url: String,
    pub tls: Arc<rustls::ClientConfig>,
    /// Most connections kept open to k_server at once.
    pub pool_size: usize,
    pub connect_timeout: Duration,
    /// Deadline for one whole request, connection included.
    pub request_timeout: Duration,
}

pub struct UpstreamActor {
    settings: UpstreamSettings,
    client: awc::Client,
    /// The counter endpoint, parsed once; its text is shared with the
    /// futures of requests for their error messages.
    counter_uri: awc::http::Uri,
    counter_url: Arc<str>,
}

// Messages.

/// Asks k_server for the next counter value.
#[derive(Message)]
#[rtype(result = "Result<u64, ApiError>")]
pub struct IncrementCounter {
    /// Request id of the proxy's incoming request, for k_server's logs.
    pub request_id: String,
}

/// Checks that k_server responds on its health endpoint.
#[derive(Message)]
#[rtype(result = "Result<(), ApiError>")]
pub struct Probe;

#[derive(Deserialize)]
struct CounterReply {
    ok: bool,
    value: Option<u64>,
}

impl UpstreamActor {
    pub fn new(settings: UpstreamSettings) -> Self {
        let connector = awc::Connector::new()
            .rustls_0_23(settings.tls.clone())
            .timeout(settings.connect_timeout)
            .handshake_timeout(settings.connect_timeout)
            .limit(settings.pool_size)
            .conn_keep_alive(Duration::from_secs(30));
        let client = awc::Client::builder()
            .connector(connector)
            .timeout(settings.request_timeout)
            .disable_redirects()
            .finish();
        let counter_url = format!(
            "{}/resource/counter",
            settings.base_url.trim_end_matches('/')
        );
        // The config loader has checked `upstream.url`; a URL that still
        // fails to parse makes every request fail with an invalid-URL error.
        let counter_uri = counter_url.parse().unwrap_or_default();
        UpstreamActor {
            settings,
            client,
            counter_uri,
            counter_url: counter_url.into(),
        }
    }
}

/// Maps a failed upstream request to the client-facing error: a deadline
/// becomes 504, a refused or broken connection 502.
fn send_error(url: &str, e: SendRequestError) -> ApiError {
    match e {
        SendRequestError::Timeout | SendRequestError::Connect(ConnectError::Timeout) => {
            ApiError::UpstreamTimeout(format!("{url} did not respond in time"))
        }
        SendRequestError::Connect(e) => {
            ApiError::UpstreamFailed(format!("cannot connect to {url}: {e}"))
        }
        other => ApiError::UpstreamFailed(format!("request to {url} failed: {other}")),
    }
}

/// Returns the `details` of k_server's JSON error body, or the start of the
/// body when it is not such JSON.
fn upstream_error_text(body: &[u8]) -> String {
    #[derive(Deserialize)]
    struct ErrorReply {
        details: String,
    }
    match serde_json::from_slice::<ErrorReply>(body) {
        Ok(reply) => reply.details,
        Err(_) => String::from_utf8_lossy(body.get(..200).unwrap_or(body)).into_owned(),
    }
}

impl Actor for UpstreamActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.set_mailbox_capacity(super::WORKER_MAILBOX_CAPACITY);
        tracing::info!(url = %self.settings.base_url, pool = self.settings.pool_size, "upstream link ready");
    }
}

impl Handler<IncrementCounter> for UpstreamActor {
    type Result = ResponseFuture<Result<u64, ApiError>>;

    fn handle(&mut self, msg: IncrementCounter, _: &mut Self::Context) -> Self::Result {
        let request = self
            .client
            .post(self.counter_uri.clone())
            .insert_header((REQUEST_ID, msg.request_id))
            .send();
        let url = self.counter_url.clone();
        Box::pin(async move {
            let mut response = request.await.map_err(|e| send_error(&url, e))?;
            let status = response.status();
            let body = response
                .body()
                .limit(MAX_RESPONSE_BYTES)
                .await
                .map_err(|e| {
                    ApiError::UpstreamFailed(format!("reading the reply of {url} failed: {e}"))
                })?;
            if status.as_u16() == 503 {
                return Err(ApiError::UpstreamUnavailable(format!(
                    "{url} responded 503; k_server is starting, stopping or overloaded"
                )));
            }
            if !status.is_success() {
                return Err(ApiError::UpstreamFailed(format!(
                    "{url} responded {status}: {}",
                    upstream_error_text(&body)
                )));
            }
            match serde_json::from_slice::<CounterReply>(&body) {
                Ok(CounterReply {
                    ok: true,
                    value: Some(value),
                }) => Ok(value),
                Ok(_) => Err(ApiError::UpstreamFailed(format!(
                    "{url} responded without a counter value"
                ))),
                Err(e) => Err(ApiError::UpstreamFailed(format!(
                    "{url} responded with invalid JSON: {e}"
                ))),
            }
        })
    }
}

impl Handler<Probe> for UpstreamActor {
    type Result = ResponseFuture<Result<(), ApiError>>;

    fn handle(&mut self, _: Probe, _: &mut Self::Context) -> Self::Result {
        let url = format!("{}/health", self.settings.base_url.trim_end_matches('/'));
        let request = self.client.get(&url).send();
        Box::pin(async move {
            let response = request.await.map_err(|e| send_error(&url, e))?;
            if response.status().is_success() {
                Ok(())
            } else {
                Err(ApiError::UpstreamFailed(format!(
                    "{url} responded {}",
                    response.status()
                )))
            }
        })
    }
}
