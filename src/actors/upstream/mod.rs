//! The upstream actor: the proxy's link to k_server.
//!
//! k_server is reached over HTTP/2 with mutual TLS (the proxy's client
//! certificate). One HTTP/2 connection carries many requests at once, so
//! the requests a worker forwards in one turn of its event loop leave in one
//! TLS record and one system call, and their replies come back the same way.
//! Over HTTP/1.1 every request in flight needs a connection of its own, and
//! each request costs a write and a read on both sides.
//!
//! The proxy starts one such actor on each HTTP worker thread. It keeps its
//! share of `upstream.pool_size` connections, opens them on first use and
//! again after they break, and hands requests to them in turn. Requests run
//! concurrently inside the actor; the mailbox only hands them out.
//!
//! When a worker forwards one request at a time, there is nothing to share
//! a write with. HTTP/2's per-request work (stream state, header
//! compression, a task per stream in k_server) then made requests about
//! 10 % slower than over HTTP/1.1. So a request that finds no other in
//! flight, on a worker that has had few in flight lately, goes over the
//! worker's one kept-alive HTTP/1.1 connection instead (see [`http1`]).
//! Under load every request takes HTTP/2, also at the moments when none
//! happens to be in flight, so that they keep sharing k_server's flushes.

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use actix_web::http::header::{HeaderName, HeaderValue};
use actix_web::http::{Method, StatusCode, Uri};
use actix_web::web::{Bytes, BytesMut};
use futures_util::future::{FutureExt, LocalBoxFuture, Shared};
use h2::client::SendRequest;
use rustls_pki_types::ServerName;
use serde::Deserialize;

use crate::error::ApiError;

mod http1;

use http1::{Http1Link, ALPN_HTTP_1_1};

/// Maximum upstream response body the proxy reads, in bytes. The counter
/// reply is a few dozen bytes; anything near this limit is a fault.
const MAX_RESPONSE_BYTES: usize = 64 * 1024;

/// Maximum size of a response's header list k_server may send, in bytes.
const MAX_HEADER_BYTES: u32 = 16 * 1024;

/// HTTP/2 flow-control window for each response and for a whole
/// connection, in bytes. Replies are small, so this window is never the
/// limit and the proxy rarely has to send window updates.
const WINDOW_BYTES: u32 = 1024 * 1024;

/// The ALPN protocol id of HTTP/2.
const ALPN_H2: &[u8] = b"h2";

/// Moving average of calls in flight below which a call that finds none
/// in flight takes the HTTP/1.1 connection.
const LONE_LOAD: f64 = 0.5;

/// Header that carries the proxy's request id to k_server.
const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Settings of the proxy's link to k_server.
#[derive(Clone)]
pub struct UpstreamSettings {
    /// Base URL, such as `https://127.0.0.1:9443`.
    pub base_url: String,
    pub tls: Arc<rustls::ClientConfig>,
    /// Deadline for TCP connect plus TLS and HTTP/2 handshakes.
    pub connect_timeout: Duration,
    /// Deadline for one whole request, connection included.
    pub request_timeout: Duration,
}

pub struct UpstreamActor {
    target: Arc<Target>,
    links: Vec<Rc<Link>>,
    /// The link the next request goes to.
    next: usize,
    /// The HTTP/1.1 connection for lone requests.
    single: Rc<Http1Link>,
    /// Counter calls of this actor waiting for k_server.
    in_flight: Rc<Cell<usize>>,
    load: Load,
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

/// The address, TLS settings and deadlines of k_server, checked once when
/// the proxy starts and shared by the upstream actors of all workers.
pub struct Target {
    /// The base URL as configured, for messages.
    base_url: String,
    host: String,
    /// `host:port` for the HTTP/1.1 `Host` header.
    authority: String,
    port: u16,
    server_name: ServerName<'static>,
    tls: tokio_rustls::TlsConnector,
    /// The same TLS settings with HTTP/1.1 as the ALPN protocol.
    tls_http1: tokio_rustls::TlsConnector,
    counter_uri: Uri,
    health_uri: Uri,
    connect_timeout: Duration,
    request_timeout: Duration,
}

/// A failure to reach k_server or to get a usable reply.
#[derive(Debug, Clone)]
enum Failure {
    /// A deadline passed; the text names it.
    Timeout(String),
    Failed(String),
}

impl From<Failure> for ApiError {
    fn from(failure: Failure) -> Self {
        match failure {
            Failure::Timeout(text) => ApiError::UpstreamTimeout(text),
            Failure::Failed(text) => ApiError::UpstreamFailed(text),
        }
    }
}

type Opening = Shared<LocalBoxFuture<'static, Result<SendRequest<Bytes>, Failure>>>;

/// One HTTP/2 connection to k_server. It is opened when a request needs it
/// and reopened after it broke. Requests that arrive while it opens wait
/// for that one attempt instead of starting their own.
#[derive(Default)]
struct Link {
    state: RefCell<LinkState>,
}

#[derive(Default)]
enum LinkState {
    #[default]
    Closed,
    Opening(Opening),
    /// An open connection and its number. A request compares the number to
    /// learn whether the connection it saw fail is still the current one.
    Open(SendRequest<Bytes>, u64),
}

impl Link {
    /// Returns a handle on the open connection and its number, opening the
    /// connection first when there is none.
    async fn sender(&self, target: &Arc<Target>) -> Result<(SendRequest<Bytes>, u64), Failure> {
        let opening = {
            let mut state = self.state.borrow_mut();
            match &*state {
                LinkState::Open(sender, number) => return Ok((sender.clone(), *number)),
                LinkState::Opening(opening) => opening.clone(),
                LinkState::Closed => {
                    let opening = open(target.clone()).boxed_local().shared();
                    *state = LinkState::Opening(opening.clone());
                    opening
                }
            }
        };
        let result = opening.clone().await;
        let mut state = self.state.borrow_mut();
        // Every waiter of one attempt gets here; the first one records the
        // outcome, unless a newer attempt has replaced it already.
        if let LinkState::Opening(current) = &*state {
            if current.ptr_eq(&opening) {
                *state = match &result {
                    Ok(sender) => LinkState::Open(sender.clone(), next_connection_number()),
                    Err(_) => LinkState::Closed,
                };
            }
        }
        match (&*state, result) {
            (LinkState::Open(_, number), Ok(sender)) => Ok((sender, *number)),
            // Opened, and already replaced: still a working handle.
            (_, Ok(sender)) => Ok((sender, 0)),
            (_, Err(failure)) => Err(failure),
        }
    }

    /// Forgets connection `number` after it failed, so that the next
    /// request opens a new one.
    fn close(&self, number: u64) {
        let mut state = self.state.borrow_mut();
        if matches!(&*state, LinkState::Open(_, current) if *current == number) {
            *state = LinkState::Closed;
        }
    }
}

/// Numbers connections across the actor's links; 0 is never used.
fn next_connection_number() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(1);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

/// Opens one connection: TCP, TLS with HTTP/2 agreed by ALPN, and the
/// HTTP/2 preface, all within the connect timeout. The connection's own
/// task runs on the calling thread until the last handle is dropped or the
/// connection fails.
async fn open(target: Arc<Target>) -> Result<SendRequest<Bytes>, Failure> {
    let url = target.base_url.as_str();
    let connect = async {
        let tls = target.connect_tls(&target.tls).await?;
        if tls.get_ref().1.alpn_protocol() != Some(ALPN_H2) {
            return Err(Failure::Failed(format!(
                "{url} does not offer HTTP/2; point upstream.url at a cardgate server of the same version"
            )));
        }
        h2::client::Builder::new()
            .initial_window_size(WINDOW_BYTES)
            .initial_connection_window_size(WINDOW_BYTES)
            .max_header_list_size(MAX_HEADER_BYTES)
            .handshake::<_, Bytes>(tls)
            .await
            .map_err(|e| Failure::Failed(format!("HTTP/2 handshake with {url} failed: {e}")))
    };
    let (sender, connection) = tokio::time::timeout(target.connect_timeout, connect)
        .await
        .map_err(|_| target.connect_timed_out())??;
    tracing::debug!(url, "connected to k_server");
    actix_rt::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!(error = %e, "connection to k_server ended");
        }
    });
    Ok(sender)
}

/// Sends one request without a body on `link` and returns the status and
/// body of the reply.
///
/// A request is sent again on a new connection only when it never left:
/// when the connection turned out closed before the request went out, or
/// when k_server refused the stream unprocessed. Any other failure after
/// sending is reported, because k_server may have counted the request.
async fn exchange(
    link: &Link,
    target: &Arc<Target>,
    method: Method,
    uri: &Uri,
    request_id: Option<&str>,
) -> Result<(StatusCode, Bytes), Failure> {
    let url = target.base_url.as_str();
    let failed = |what: &str, e: h2::Error| Failure::Failed(format!("{what} {url} failed: {e}"));
    let mut attempts = 0;
    loop {
        attempts += 1;
        let retry_allowed = attempts < 2;
        let (sender, number) = link.sender(target).await?;
        let mut sender = match sender.ready().await {
            Ok(sender) => sender,
            Err(e) => {
                link.close(number);
                if retry_allowed {
                    continue;
                }
                return Err(failed("the connection to", e));
            }
        };
        let mut request = http::Request::new(());
        *request.method_mut() = method.clone();
        *request.uri_mut() = uri.clone();
        if let Some(id) = request_id.and_then(|id| HeaderValue::from_str(id).ok()) {
            request.headers_mut().insert(REQUEST_ID, id);
        }
        let response = match sender.send_request(request, true) {
            Ok((response, _)) => response.await,
            Err(e) => Err(e),
        };
        let response = match response {
            Ok(response) => response,
            Err(e) => {
                if e.is_io() || e.is_go_away() {
                    link.close(number);
                }
                if retry_allowed && e.reason() == Some(h2::Reason::REFUSED_STREAM) {
                    continue;
                }
                return Err(failed("request to", e));
            }
        };
        let (head, mut body) = response.into_parts();
        let mut bytes = BytesMut::new();
        while let Some(chunk) = body.data().await {
            let chunk = chunk.map_err(|e| failed("reading the reply of", e))?;
            // The window is released at once: the body is bounded below.
            let _ = body.flow_control().release_capacity(chunk.len());
            if bytes.len() + chunk.len() > MAX_RESPONSE_BYTES {
                return Err(Failure::Failed(format!(
                    "{url} sent a reply larger than {MAX_RESPONSE_BYTES} bytes"
                )));
            }
            bytes.extend_from_slice(&chunk);
        }
        return Ok((head.status, bytes.freeze()));
    }
}

/// Runs one upstream exchange, connection and body included, within the
/// request timeout.
async fn within_request_timeout<T>(
    target: &Target,
    exchange: impl std::future::Future<Output = Result<T, Failure>>,
) -> Result<T, Failure> {
    tokio::time::timeout(target.request_timeout, exchange)
        .await
        .map_err(|_| target.request_timed_out())?
}

/// The connection a counter call goes over.
enum Route {
    /// The worker's HTTP/1.1 connection, for a lone call.
    Http1(Rc<Http1Link>),
    Http2(Rc<Link>),
}

/// Moving average of the calls in flight that arriving counter calls find.
#[derive(Debug, Default)]
struct Load {
    average: f64,
}

impl Load {
    /// Records an arriving call that finds `waiting` calls in flight, and
    /// returns whether it goes alone over HTTP/1.1. Each arrival weighs
    /// 1/8: about 30 calls after a burst of 30 in flight, the average is
    /// back under the threshold.
    fn arrive(&mut self, waiting: usize) -> bool {
        self.average = self.average * 0.875 + waiting as f64 * 0.125;
        waiting == 0 && self.average < LONE_LOAD
    }
}

/// Counts one request as in flight until it is dropped, also when the
/// request fails or is cancelled.
struct InFlight(Rc<Cell<usize>>);

impl InFlight {
    fn enter(count: &Rc<Cell<usize>>) -> Self {
        count.set(count.get() + 1);
        InFlight(count.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.set(self.0.get().saturating_sub(1));
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

/// Reads the counter value from k_server's reply.
fn counter_value(url: &str, status: StatusCode, body: &[u8]) -> Result<u64, ApiError> {
    if status == StatusCode::SERVICE_UNAVAILABLE {
        return Err(ApiError::UpstreamUnavailable(format!(
            "{url} responded 503; k_server is starting, stopping or overloaded"
        )));
    }
    if !status.is_success() {
        return Err(ApiError::UpstreamFailed(format!(
            "{url} responded {status}: {}",
            upstream_error_text(body)
        )));
    }
    match serde_json::from_slice::<CounterReply>(body) {
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
}

impl Target {
    /// Takes the host, port and endpoints from the URL and prepares the TLS
    /// settings of both protocols; nothing connects yet. The config loader
    /// has already checked that the URL is `https://HOST[:PORT]`.
    pub fn new(settings: &UpstreamSettings) -> Result<Self, String> {
        let base = settings.base_url.trim_end_matches('/');
        let uri: Uri = base
            .parse()
            .map_err(|e| format!("upstream.url {:?} is not a URL: {e}", settings.base_url))?;

        // `Uri::host` keeps the brackets of an IPv6 address.
        let host = uri
            .host()
            .map(|host| host.trim_matches(['[', ']']).to_string())
            .filter(|host| !host.is_empty())
            .ok_or_else(|| format!("upstream.url {:?} has no host", settings.base_url))?;
        let server_name = ServerName::try_from(host.clone()).map_err(|e| {
            format!(
                "upstream.url {:?}: {host:?} is not a valid TLS server name: {e}",
                settings.base_url
            )
        })?;

        let endpoint = |path: &str| {
            format!("{base}{path}")
                .parse::<Uri>()
                .map_err(|e| format!("upstream.url {:?} + {path}: {e}", settings.base_url))
        };
        let mut tls = (*settings.tls).clone();
        tls.alpn_protocols = vec![ALPN_H2.to_vec()];
        let mut tls_http1 = (*settings.tls).clone();
        tls_http1.alpn_protocols = vec![ALPN_HTTP_1_1.to_vec()];

        let port = uri.port_u16().unwrap_or(443);
        Ok(Target {
            base_url: base.to_string(),
            authority: uri
                .authority()
                .map_or_else(|| format!("{host}:{port}"), |a| a.to_string()),
            port,
            host,
            server_name,
            tls: tokio_rustls::TlsConnector::from(Arc::new(tls)),
            tls_http1: tokio_rustls::TlsConnector::from(Arc::new(tls_http1)),
            counter_uri: endpoint("/resource/counter")?,
            health_uri: endpoint("/health")?,
            connect_timeout: settings.connect_timeout,
            request_timeout: settings.request_timeout,
        })
    }

    /// Opens a TCP connection and runs the TLS handshake with `connector`'s
    /// settings. The caller bounds both with the connect timeout.
    async fn connect_tls(
        &self,
        connector: &tokio_rustls::TlsConnector,
    ) -> Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>, Failure> {
        let url = self.base_url.as_str();
        let tcp = tokio::net::TcpStream::connect((self.host.as_str(), self.port))
            .await
            .map_err(|e| Failure::Failed(format!("cannot connect to {url}: {e}")))?;
        // Requests are small and must leave at once, not wait for Nagle's
        // algorithm to fill a segment.
        tcp.set_nodelay(true)
            .map_err(|e| Failure::Failed(format!("cannot set TCP_NODELAY towards {url}: {e}")))?;
        connector
            .connect(self.server_name.clone(), tcp)
            .await
            .map_err(|e| Failure::Failed(format!("TLS handshake with {url} failed: {e}")))
    }

    fn connect_timed_out(&self) -> Failure {
        Failure::Timeout(format!(
            "cannot connect to {} within {} ms (upstream.connect_timeout_ms)",
            self.base_url,
            self.connect_timeout.as_millis()
        ))
    }

    fn request_timed_out(&self) -> Failure {
        Failure::Timeout(format!(
            "{} did not respond within {} ms (upstream.request_timeout_ms)",
            self.base_url,
            self.request_timeout.as_millis()
        ))
    }
}

impl UpstreamActor {
    /// Creates an actor with `connections` links to `target` (at least one).
    pub fn new(target: Arc<Target>, connections: usize) -> Self {
        UpstreamActor {
            target,
            links: (0..connections.max(1))
                .map(|_| Rc::new(Link::default()))
                .collect(),
            next: 0,
            single: Rc::default(),
            in_flight: Rc::new(Cell::new(0)),
            load: Load::default(),
        }
    }

    /// Returns the link for the next request, in turn.
    fn next_link(&mut self) -> Rc<Link> {
        let link = self.links[self.next % self.links.len()].clone();
        self.next = self.next.wrapping_add(1);
        link
    }
}

impl Actor for UpstreamActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.set_mailbox_capacity(super::WORKER_MAILBOX_CAPACITY);
        tracing::info!(url = %self.target.base_url, connections = self.links.len(), "upstream link ready");
    }
}

impl Handler<IncrementCounter> for UpstreamActor {
    type Result = ResponseFuture<Result<u64, ApiError>>;

    fn handle(&mut self, msg: IncrementCounter, _: &mut Self::Context) -> Self::Result {
        let target = self.target.clone();
        let lone = self.load.arrive(self.in_flight.get());
        let in_flight = InFlight::enter(&self.in_flight);
        let route = if lone {
            Route::Http1(self.single.clone())
        } else {
            Route::Http2(self.next_link())
        };
        Box::pin(async move {
            let uri = &target.counter_uri;
            let call = async {
                match &route {
                    Route::Http1(single) => single.post(&target, uri.path(), &msg.request_id).await,
                    Route::Http2(link) => {
                        let request_id = Some(msg.request_id.as_str());
                        exchange(link, &target, Method::POST, uri, request_id).await
                    }
                }
            };
            let (status, body) = within_request_timeout(&target, call).await?;
            drop(in_flight);
            counter_value(&target.base_url, status, &body)
        })
    }
}

impl Handler<Probe> for UpstreamActor {
    type Result = ResponseFuture<Result<(), ApiError>>;

    fn handle(&mut self, _: Probe, _: &mut Self::Context) -> Self::Result {
        let link = self.next_link();
        let target = self.target.clone();
        Box::pin(async move {
            let uri = &target.health_uri;
            let call = exchange(&link, &target, Method::GET, uri, None);
            let (status, _) = within_request_timeout(&target, call).await?;
            if status.is_success() {
                Ok(())
            } else {
                Err(ApiError::UpstreamFailed(format!(
                    "{uri} responded {status}"
                )))
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lone_calls_take_http1_until_load_rises() {
        let mut load = Load::default();
        assert!((0..100).all(|_| load.arrive(0)));
        // Two calls at a time: the second always finds the first.
        assert!(!load.arrive(1));
        // A burst: no call goes alone, even one that finds none in flight.
        for _ in 0..50 {
            assert!(!load.arrive(30));
        }
        assert!(!load.arrive(0));
        let quiet_after = (1..100).find(|_| load.arrive(0));
        assert!(
            matches!(quiet_after, Some(10..=40)),
            "alone again after {quiet_after:?} quiet calls"
        );
    }

    #[test]
    fn counter_value_reads_the_reply() {
        let url = "https://k";
        assert_eq!(
            counter_value(url, StatusCode::OK, br#"{"ok":true,"value":7}"#),
            Ok(7)
        );
        assert!(matches!(
            counter_value(url, StatusCode::SERVICE_UNAVAILABLE, b""),
            Err(ApiError::UpstreamUnavailable(_))
        ));
        let Err(ApiError::UpstreamFailed(text)) = counter_value(
            url,
            StatusCode::INTERNAL_SERVER_ERROR,
            br#"{"ok":false,"details":"disk full"}"#,
        ) else {
            panic!("a 500 is a failure");
        };
        assert!(text.contains("disk full"), "{text}");
        for body in [
            &br#"{"ok":true}"#[..],
            b"not json",
            br#"{"ok":false,"value":1}"#,
        ] {
            assert!(matches!(
                counter_value(url, StatusCode::OK, body),
                Err(ApiError::UpstreamFailed(_))
            ));
        }
    }
}
