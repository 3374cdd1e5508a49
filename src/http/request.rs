//! The middleware both roles put around every request: it gives the
//! request an id, counts it in the role's HTTP metrics, writes the line
//! about a failed request in a tracing span that carries the id, and
//! returns the id in `x-request-id`.

use std::borrow::Cow;
use std::sync::Arc;
use std::time::Instant;

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header::{HeaderMap, HeaderName, HeaderValue};
use actix_web::http::StatusCode;
use actix_web::middleware::Next;
use actix_web::{web, HttpMessage};

use crate::error::ApiError;
use crate::metrics::{HttpMetrics, ProxyMetrics, ServerMetrics};

/// Header that carries the request id. The proxy sends its id to k_server
/// in it, so that both roles log the same id, and both return it in
/// responses.
pub const REQUEST_ID_HEADER: &str = "x-request-id";

/// Maximum length of a request id accepted from a client. Longer ones are
/// replaced.
pub const MAX_REQUEST_ID_LEN: usize = 64;

/// The id of one request, in its tracing span and forwarded upstream.
#[derive(Debug, Clone)]
pub struct RequestId(pub String);

/// What a role records about each completed request.
pub trait RequestObserver: Send + Sync {
    fn http(&self) -> &HttpMetrics;

    /// Called with the `ApiError` code of each failed request.
    fn failed(&self, _code: &str) {}
}

impl RequestObserver for ProxyMetrics {
    fn http(&self) -> &HttpMetrics {
        &self.http
    }

    fn failed(&self, code: &str) {
        self.upstream_error(code);
    }
}

impl RequestObserver for ServerMetrics {
    fn http(&self) -> &HttpMetrics {
        &self.http
    }
}

/// Per-role settings of [`track`], given to the app as `web::Data`.
#[derive(Clone)]
pub struct Tracking {
    pub observer: Arc<dyn RequestObserver>,
    /// Reuse a well-formed `x-request-id` sent by the client. Only k_server
    /// does, because its one client is the proxy. The proxy makes a fresh
    /// id for every request, so that a client cannot choose the ids in its
    /// logs.
    pub trust_incoming_id: bool,
}

/// Middleware: see the module documentation. Without [`Tracking`] in the
/// app data it still sets the id and writes the lines, but records no
/// metrics.
///
/// The request span is opened only when a line about the request is
/// written: for a failed request, and at `debug` level for every request.
/// Opening it for every request and entering it on every poll cost 2 to
/// 4 % of the proxy's throughput at one connection (BENCHMARKS.md). The
/// handlers write no lines of their own at `info` or above, and the actors
/// they call log from their own tasks, outside any request span.
pub async fn track(
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let started = Instant::now();
    let tracking = req.app_data::<web::Data<Tracking>>().cloned();
    let trust_incoming = tracking.as_ref().is_some_and(|t| t.trust_incoming_id);
    let id = request_id(req.headers(), trust_incoming);
    let route = tracking
        .as_ref()
        .map(|t| t.observer.http().routes().classify(req.path()));
    // For the span, after the request has been handed on. Both clones are
    // cheap: a method is an enum and a URI's parts are reference-counted.
    let method = req.method().clone();
    let uri = req.uri().clone();
    req.extensions_mut().insert(RequestId(id.clone()));

    let result = next.call(req).await;

    let (status, error) = match &result {
        Ok(response) => (
            response.status(),
            response
                .response()
                .error()
                .and_then(|e| e.as_error::<ApiError>()),
        ),
        Err(error) => (
            error.as_response_error().status_code(),
            error.as_error::<ApiError>(),
        ),
    };
    let elapsed = started.elapsed();
    if let (Some(tracking), Some(route)) = (&tracking, route) {
        tracking
            .observer
            .http()
            .observe(route, status.as_u16(), elapsed);
        if let Some(error) = error {
            tracking.observer.failed(error.code());
        }
    }
    let span = || {
        let path = logged_path(uri.path());
        tracing::info_span!("request", id = %id, method = %method, path = %path)
    };
    if let Some(error) = error {
        span().in_scope(|| log_failure(error, status));
    }
    if tracing::enabled!(tracing::Level::DEBUG) {
        span().in_scope(|| {
            tracing::debug!(
                status = status.as_u16(),
                elapsed_us = elapsed.as_micros() as u64,
                "request finished"
            )
        });
    }

    let mut response = result?;
    if let Ok(value) = HeaderValue::from_str(&id) {
        response
            .headers_mut()
            .insert(HeaderName::from_static(REQUEST_ID_HEADER), value);
    }
    Ok(response)
}

/// Writes the one line about a failed request: `error` for a failure of
/// the proxy, k_server or the card (5xx), `info` for a refused request
/// (4xx), which is the client's to fix.
fn log_failure(error: &ApiError, status: StatusCode) {
    if status.is_server_error() {
        tracing::error!(code = error.code(), status = status.as_u16(), "{error}");
    } else {
        tracing::info!(code = error.code(), status = status.as_u16(), "{error}");
    }
}

/// Characters of an operation id kept in logged paths.
const LOGGED_OPERATION_ID_LEN: usize = 8;

/// Returns `path` for the request's span with the id in `/op/{id}` cut to
/// its first characters. An operation id collects a login's session token,
/// so it is a secret like the token and is never logged whole.
pub fn logged_path(path: &str) -> Cow<'_, str> {
    let Some(rest) = path.strip_prefix("/op/") else {
        return Cow::Borrowed(path);
    };
    let (id, tail) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    if id.chars().count() <= LOGGED_OPERATION_ID_LEN {
        return Cow::Borrowed(path);
    }
    let prefix: String = id.chars().take(LOGGED_OPERATION_ID_LEN).collect();
    Cow::Owned(format!("/op/{prefix}…{tail}"))
}

/// Returns the client's request id when `trust_incoming` is set and the id
/// has 1 to [`MAX_REQUEST_ID_LEN`] letters, digits, `-` or `_`; otherwise a
/// new random id of 16 hex digits.
pub fn request_id(headers: &HeaderMap, trust_incoming: bool) -> String {
    let sent = headers
        .get(REQUEST_ID_HEADER)
        .filter(|_| trust_incoming)
        .and_then(|value| value.to_str().ok())
        .filter(|id| {
            !id.is_empty()
                && id.len() <= MAX_REQUEST_ID_LEN
                && id
                    .bytes()
                    .all(|byte| byte.is_ascii_alphanumeric() || byte == b'-' || byte == b'_')
        });
    match sent {
        Some(id) => id.to_owned(),
        None => format!("{:016x}", rand::random::<u64>()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(id: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(
            HeaderName::from_static(REQUEST_ID_HEADER),
            HeaderValue::from_str(id).expect("header value"),
        );
        headers
    }

    #[test]
    fn request_id_reused_only_when_trusted() {
        assert_eq!(request_id(&headers("abc-123_X"), true), "abc-123_X");
        assert_ne!(request_id(&headers("abc-123_X"), false), "abc-123_X");
    }

    #[test]
    fn request_id_replaces_malformed_ids() {
        let too_long = "a".repeat(MAX_REQUEST_ID_LEN + 1);
        for sent in ["", "has space", "semi;colon", too_long.as_str()] {
            let id = request_id(&headers(sent), true);
            assert_ne!(id, sent);
            assert_eq!(id.len(), 16, "{id}");
            assert!(id.bytes().all(|b| b.is_ascii_hexdigit()), "{id}");
        }
        let longest = "b".repeat(MAX_REQUEST_ID_LEN);
        assert_eq!(request_id(&headers(&longest), true), longest);
    }

    /// Serves `GET /fail` (refused with 401) and `GET /ok` through
    /// [`track`], logging at `level` into the returned log, and returns the
    /// request ids of one call to each.
    async fn call_both(level: &str) -> (crate::telemetry::capture::CapturedLog, String, String) {
        use actix_web::middleware::from_fn;
        use actix_web::test::{call_service, init_service, TestRequest};
        use actix_web::{App, HttpResponse};

        let log = crate::telemetry::capture::CapturedLog::default();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(log.clone())
            .with_ansi(false)
            .with_env_filter(tracing_subscriber::EnvFilter::new(level))
            .finish();
        let _default = tracing::subscriber::set_default(subscriber);
        let app = init_service(
            App::new()
                .route(
                    "/fail",
                    web::get().to(|| async {
                        Err::<HttpResponse, _>(ApiError::Unauthorized("no session here".into()))
                    }),
                )
                .route("/ok", web::get().to(HttpResponse::Ok))
                .wrap(from_fn(track)),
        )
        .await;
        let mut ids = Vec::new();
        for path in ["/fail", "/ok"] {
            let reply = call_service(&app, TestRequest::get().uri(path).to_request()).await;
            let id = reply.headers().get(REQUEST_ID_HEADER).expect("request id");
            ids.push(id.to_str().expect("ASCII id").to_owned());
        }
        let ok_id = ids.pop().expect("two ids");
        let fail_id = ids.pop().expect("two ids");
        (log, fail_id, ok_id)
    }

    #[actix_rt::test]
    async fn a_failed_request_is_logged_once_in_its_span() {
        let (log, fail_id, ok_id) = call_both("info").await;
        let text = log.text();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 1, "{text}");
        assert!(lines[0].contains(" INFO "), "{text}");
        assert!(
            lines[0].contains(&format!("request{{id={fail_id} method=GET path=/fail}}")),
            "{text}"
        );
        assert!(lines[0].contains("code=\"unauthorized\""), "{text}");
        assert!(lines[0].contains("no session here"), "{text}");
        assert!(!text.contains(&ok_id), "{text}");
    }

    #[actix_rt::test]
    async fn every_request_is_logged_at_debug() {
        let (log, fail_id, ok_id) = call_both("debug").await;
        let text = log.text();
        for (id, path, status) in [(&fail_id, "/fail", 401), (&ok_id, "/ok", 200)] {
            let finished = text
                .lines()
                .find(|line| line.contains(id.as_str()) && line.contains("request finished"))
                .unwrap_or_else(|| panic!("no finished line for {path}:\n{text}"));
            assert!(finished.contains(&format!("path={path}")), "{finished}");
            assert!(finished.contains(&format!("status={status}")), "{finished}");
        }
    }

    #[test]
    fn logged_path_cuts_operation_ids() {
        let id = "dc6b7a5ec1c489d8d29d45b479868dcc";
        assert_eq!(logged_path(&format!("/op/{id}")), "/op/dc6b7a5e…");
        assert_eq!(
            logged_path(&format!("/op/{id}/cancel")),
            "/op/dc6b7a5e…/cancel"
        );
        assert_eq!(logged_path("/op/login"), "/op/login");
        assert_eq!(logged_path("/session/login"), "/session/login");
    }
}
