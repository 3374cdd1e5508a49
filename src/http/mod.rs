//! HTTP front ends of the two network roles, and what they share: request
//! ids, JSON error handling and response headers.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use actix_web::body::MessageBody;
use actix_web::dev::{Payload, ServiceRequest, ServiceResponse};
use actix_web::error::{JsonPayloadError, PayloadError, QueryPayloadError};
use actix_web::middleware::Next;
use actix_web::web::Bytes;
use actix_web::{web, HttpMessage, HttpRequest};
use futures_util::Stream;

use crate::error::ApiError;

pub mod portal;
pub mod probes;
pub mod proxy;
pub mod request;
pub mod server;

pub use request::RequestId;

/// The protected call of both roles, the one made most often.
pub const COUNTER_PATH: &str = "/resource/counter";

/// Time a client has to send a request's whole body after its head, from
/// `http.body_timeout_ms`. Read from app data by [`body_deadline`].
#[derive(Debug, Clone, Copy)]
pub struct BodyTimeout(pub Duration);

/// Middleware: the request body must arrive within [`BodyTimeout`] of the
/// head. actix-web bounds only the head (`client_request_timeout`), so
/// without this a client could announce a body, never send it, and keep
/// the connection and the handler waiting for ever.
pub async fn body_deadline(
    mut req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    if let Some(BodyTimeout(timeout)) = req.app_data::<BodyTimeout>().copied() {
        let inner = req.take_payload();
        // A request without a body (most API calls) has nothing to wait
        // for, and skips the timer.
        if matches!(inner, Payload::None) {
            return next.call(req).await;
        }
        let body = DeadlineBody {
            inner,
            deadline: Box::pin(tokio::time::sleep(timeout)),
            timeout,
            expired: false,
        };
        req.set_payload(Payload::Stream {
            payload: Box::pin(body),
        });
    }
    next.call(req).await
}

/// A request body that fails with `TimedOut` once its deadline passes.
struct DeadlineBody {
    inner: Payload,
    deadline: Pin<Box<tokio::time::Sleep>>,
    timeout: Duration,
    expired: bool,
}

impl Stream for DeadlineBody {
    type Item = Result<Bytes, PayloadError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        if this.expired {
            return Poll::Ready(None);
        }
        match Pin::new(&mut this.inner).poll_next(cx) {
            Poll::Pending => {}
            ready => return ready,
        }
        if this.deadline.as_mut().poll(cx).is_pending() {
            return Poll::Pending;
        }
        this.expired = true;
        Poll::Ready(Some(Err(PayloadError::Io(io::Error::new(
            io::ErrorKind::TimedOut,
            format!(
                "the request body did not arrive within {} ms (http.body_timeout_ms); send it whole, at once after the head",
                this.timeout.as_millis()
            ),
        )))))
    }
}

/// Returns a role's start-up result; after a failure it first lets the
/// actors that start-up had already started run once.
///
/// actix starts an actor on its first poll. An actor that was never polled
/// when the failed start-up drops the system is started from that drop,
/// outside the runtime, and an actor that sets a timer in `started` (the
/// card's heartbeat) then panics.
pub async fn settle_failed_start<T>(
    result: Result<T, crate::error::StartError>,
) -> Result<T, crate::error::StartError> {
    if result.is_err() {
        tokio::task::yield_now().await;
    }
    result
}

/// Maps an error while reading a request body to the client-facing error.
pub fn payload_error(e: PayloadError) -> ApiError {
    match e {
        PayloadError::Io(e) if e.kind() == io::ErrorKind::TimedOut => {
            ApiError::RequestTimeout(e.to_string())
        }
        other => ApiError::invalid("body", other.to_string()),
    }
}

/// JSON body limits and errors that name the problem.
pub fn json_config(limit: usize) -> web::JsonConfig {
    web::JsonConfig::default()
        .limit(limit)
        .error_handler(move |e, req| json_error(e, req, limit).into())
}

fn json_error(e: JsonPayloadError, req: &HttpRequest, limit: usize) -> ApiError {
    match e {
        JsonPayloadError::Overflow { .. } | JsonPayloadError::OverflowKnownLength { .. } => {
            ApiError::PayloadTooLarge { limit }
        }
        JsonPayloadError::ContentType => {
            let sent = req
                .headers()
                .get(actix_web::http::header::CONTENT_TYPE)
                .map(|value| crate::domain::quoted(&String::from_utf8_lossy(value.as_bytes())));
            let reason = match sent {
                Some(sent) => format!("Content-Type {sent} is not JSON; send the body with `Content-Type: application/json`"),
                None => "the Content-Type header is missing; send the body with `Content-Type: application/json`".to_string(),
            };
            ApiError::invalid("body", reason)
        }
        JsonPayloadError::Deserialize(e) => ApiError::invalid(
            "body",
            format!("{e}; send a JSON object with the documented fields"),
        ),
        JsonPayloadError::Payload(e) => payload_error(e),
        other => ApiError::invalid("body", other.to_string()),
    }
}

pub fn query_config() -> web::QueryConfig {
    web::QueryConfig::default().error_handler(|e, _| {
        let reason = match e {
            QueryPayloadError::Deserialize(e) => e.to_string(),
            other => other.to_string(),
        };
        ApiError::invalid("query", reason).into()
    })
}

/// Rejects requests for paths that do not exist with a JSON 404.
pub async fn not_found(req: HttpRequest) -> Result<actix_web::HttpResponse, ApiError> {
    Err(ApiError::NotFound(format!(
        "no endpoint {} {}; see the API list in the README",
        req.method(),
        shown_path(req.path())
    )))
}

/// Maximum characters of a request path quoted in an error message.
const SHOWN_PATH_MAX: usize = 100;

/// Returns `path` for an error message, cut after [`SHOWN_PATH_MAX`]
/// characters.
pub fn shown_path(path: &str) -> String {
    let mut chars = path.chars();
    let prefix: String = chars.by_ref().take(SHOWN_PATH_MAX).collect();
    if chars.next().is_some() {
        format!("{prefix}…")
    } else {
        prefix
    }
}
