//! The middleware both roles put around every request: it gives the
//! request an id, runs it inside a tracing span that carries the id,
//! counts it in the role's HTTP metrics, writes the line about a failed
//! request, and returns the id in `x-request-id`.

use std::borrow::Cow;
use std::sync::Arc;
use std::time::Instant;

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header::{HeaderMap, HeaderName, HeaderValue};
use actix_web::http::{Method, StatusCode, Uri};
use actix_web::middleware::Next;
use actix_web::{web, HttpMessage};
use tracing::{Instrument as _, Level};

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
    /// The path of the protected counter call, which runs without a span
    /// (see [`track`]). Its handler must write no lines of its own.
    pub spanless_path: Option<&'static str>,
}

/// Middleware: see the module documentation. Without [`Tracking`] in the
/// app data it still sets the id, the span and the lines, but records no
/// metrics.
///
/// The protected counter call ([`Tracking::spanless_path`]) is the
/// exception: it runs without a span, and its lines about the request get
/// one when they are written. Opening a span for every call and entering
/// it on every poll cost 2 to 4 % of the proxy's throughput at one
/// connection (BENCHMARKS.md). That handler writes no lines of its own.
/// The actors it calls log from their own tasks, outside any request span.
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
    let spanless = tracking
        .as_ref()
        .and_then(|t| t.spanless_path)
        .is_some_and(|path| path == req.path());
    // Kept for the lines written after the request has been handed on.
    // Both clones are cheap because a standard method is an enum value and
    // a URI's parts are reference-counted bytes.
    let method = req.method().clone();
    let uri = req.uri().clone();
    req.extensions_mut().insert(RequestId(id.clone()));

    let result = if spanless {
        next.call(req).await
    } else {
        let span = request_span(Level::INFO, &id, &method, &uri);
        next.call(req).instrument(span).await
    };

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
    if let Some(error) = error {
        log_failure(error, status, &id, &method, &uri);
    }
    if tracing::enabled!(Level::DEBUG) {
        request_span(Level::INFO, &id, &method, &uri).in_scope(|| {
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

/// Opens the span of one request's lines at `level`. A line written at
/// `ERROR` gets a span at `ERROR`, so that it carries the id even when
/// the log shows errors only.
fn request_span(level: Level, id: &str, method: &Method, uri: &Uri) -> tracing::Span {
    let path = logged_path(uri.path());
    if level == Level::ERROR {
        tracing::error_span!("request", id = %id, method = %method, path = %path)
    } else {
        tracing::info_span!("request", id = %id, method = %method, path = %path)
    }
}

/// Writes the one line about a failed request, in its span: `error` for a
/// failure of the proxy, k_server or the card (5xx), `info` for a rejected
/// request (4xx), which is the client's to fix.
fn log_failure(error: &ApiError, status: StatusCode, id: &str, method: &Method, uri: &Uri) {
    if status.is_server_error() {
        request_span(Level::ERROR, id, method, uri)
            .in_scope(|| tracing::error!(code = error.code(), status = status.as_u16(), "{error}"));
    } else {
        request_span(Level::INFO, id, method, uri)
            .in_scope(|| tracing::info!(code = error.code(), status = status.as_u16(), "{error}"));
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

    use std::collections::HashMap;

    use crate::metrics::RouteTable;

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

    /// Paths of the test app: a rejection (4xx) and a failure (5xx) from a
    /// handler, a rejection from a middleware, a success whose handler logs,
    /// and a spanless route whose handler logs and then rejects.
    const PATHS: [&str; 5] = ["/fail", "/broken", "/guarded", "/ok", "/quiet"];

    /// Rejects `/guarded` with an error instead of a reply, as an inner
    /// middleware may.
    async fn reject_guarded(
        req: ServiceRequest,
        next: Next<impl MessageBody>,
    ) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
        if req.path() == "/guarded" {
            return Err(ApiError::Forbidden("guarded here".into()).into());
        }
        next.call(req).await
    }

    /// Calls each of [`PATHS`] once through [`track`], logging at `level`,
    /// and returns the log and each path's request id.
    async fn serve(level: &str) -> (String, HashMap<&'static str, String>) {
        use actix_web::middleware::from_fn;
        use actix_web::test::{init_service, try_call_service, TestRequest};
        use actix_web::{App, HttpResponse};

        let log = crate::telemetry::capture::CapturedLog::default();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(log.clone())
            .with_ansi(false)
            .with_env_filter(tracing_subscriber::EnvFilter::new(level))
            .finish();
        let _default = tracing::subscriber::set_default(subscriber);
        let tracking = Tracking {
            observer: Arc::new(ServerMetrics::new(RouteTable::new(&PATHS))),
            trust_incoming_id: false,
            spanless_path: Some("/quiet"),
        };
        let app = init_service(
            App::new()
                .app_data(web::Data::new(tracking))
                .route(
                    "/fail",
                    web::get().to(|| async {
                        Err::<HttpResponse, _>(ApiError::Unauthorized("no session here".into()))
                    }),
                )
                .route(
                    "/broken",
                    web::get().to(|| async {
                        Err::<HttpResponse, _>(ApiError::Internal("disk on fire".into()))
                    }),
                )
                .route(
                    "/ok",
                    web::get().to(|| async {
                        tracing::info!("ok handler ran");
                        HttpResponse::Ok().finish()
                    }),
                )
                .route(
                    "/quiet",
                    web::get().to(|| async {
                        tracing::info!("quiet handler ran");
                        Err::<HttpResponse, _>(ApiError::Unauthorized(
                            "no session for the quiet route".into(),
                        ))
                    }),
                )
                .wrap(from_fn(reject_guarded))
                .wrap(from_fn(track)),
        )
        .await;
        let mut ids = HashMap::new();
        for path in PATHS {
            // A middleware's error is returned as `Err`. actix-web turns it
            // into a reply later, without the id header, so its id is read
            // from its line instead.
            let Ok(reply) = try_call_service(&app, TestRequest::get().uri(path).to_request()).await
            else {
                continue;
            };
            let id = reply.headers().get(REQUEST_ID_HEADER).expect("request id");
            ids.insert(path, id.to_str().expect("ASCII id").to_owned());
        }
        let log = log.text();
        if let Some(line) = lines_with(&log, "guarded here").first() {
            let id = line
                .split("request{id=")
                .nth(1)
                .and_then(|rest| rest.split(' ').next())
                .expect("id in the guarded line");
            ids.insert("/guarded", id.to_owned());
        }
        (log, ids)
    }

    /// Returns the lines of `log` that contain `text`.
    fn lines_with<'a>(log: &'a str, text: &str) -> Vec<&'a str> {
        log.lines().filter(|line| line.contains(text)).collect()
    }

    fn span_of(ids: &HashMap<&str, String>, path: &str) -> String {
        format!("request{{id={} method=GET path={path}}}", ids[path])
    }

    #[actix_rt::test]
    async fn failures_logged_once_in_span() {
        let (log, ids) = serve("info").await;
        for (path, text, level) in [
            ("/fail", "no session here", " INFO "),
            ("/broken", "disk on fire", " ERROR "),
            ("/guarded", "guarded here", " INFO "),
            ("/quiet", "no session for the quiet route", " INFO "),
        ] {
            let lines = lines_with(&log, text);
            assert_eq!(lines.len(), 1, "{path}:\n{log}");
            assert!(lines[0].contains(level), "{path}: {}", lines[0]);
            assert!(
                lines[0].contains(&span_of(&ids, path)),
                "{path}: {}",
                lines[0]
            );
        }
    }

    #[actix_rt::test]
    async fn handler_lines_carry_span_unless_spanless() {
        let (log, ids) = serve("info").await;
        let ok = lines_with(&log, "ok handler ran");
        assert_eq!(ok.len(), 1, "{log}");
        assert!(ok[0].contains(&span_of(&ids, "/ok")), "{}", ok[0]);
        let quiet = lines_with(&log, "quiet handler ran");
        assert_eq!(quiet.len(), 1, "{log}");
        assert!(!quiet[0].contains("request{"), "{}", quiet[0]);
    }

    #[actix_rt::test]
    async fn error_lines_keep_span_at_error_level() {
        let (log, ids) = serve("error").await;
        assert_eq!(log.lines().count(), 1, "{log}");
        assert!(log.contains("disk on fire"), "{log}");
        assert!(log.contains(&span_of(&ids, "/broken")), "{log}");
    }

    #[actix_rt::test]
    async fn debug_logs_every_request_once() {
        let (log, ids) = serve("debug").await;
        for (path, status) in [
            ("/fail", 401),
            ("/broken", 500),
            ("/guarded", 403),
            ("/ok", 200),
            ("/quiet", 401),
        ] {
            let finished = lines_with(&log, "request finished");
            let finished: Vec<_> = finished
                .into_iter()
                .filter(|line| line.contains(&span_of(&ids, path)))
                .collect();
            assert_eq!(finished.len(), 1, "{path}:\n{log}");
            assert!(
                finished[0].contains(&format!("status={status}")),
                "{}",
                finished[0]
            );
        }
        assert_eq!(lines_with(&log, "no session here").len(), 1, "{log}");
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
