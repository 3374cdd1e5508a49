//! HTTP front ends of the two network roles, and what they share: request
//! ids, JSON error handling and response headers.

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::error::{JsonPayloadError, QueryPayloadError};
use actix_web::middleware::Next;
use actix_web::{web, HttpMessage, HttpRequest};
use tracing::Instrument;

use crate::error::ApiError;

pub mod portal;
pub mod proxy;
pub mod server;

/// The id of one request, in its tracing span and forwarded upstream.
#[derive(Debug, Clone)]
pub struct RequestId(pub String);

/// Middleware: gives each request an id and runs it inside a span that
/// carries it, so every log line of the request can be found together.
pub async fn request_span(
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let id = format!("{:016x}", rand::random::<u64>());
    let span = tracing::info_span!("request", id = %id, method = %req.method(), path = %req.path());
    req.extensions_mut().insert(RequestId(id));
    next.call(req).instrument(span).await
}

/// JSON body limits and errors that name the problem.
pub fn json_config(limit: usize) -> web::JsonConfig {
    web::JsonConfig::default()
        .limit(limit)
        .error_handler(move |e, _| json_error(e, limit).into())
}

fn json_error(e: JsonPayloadError, limit: usize) -> ApiError {
    match e {
        JsonPayloadError::Overflow { .. } | JsonPayloadError::OverflowKnownLength { .. } => {
            ApiError::PayloadTooLarge { limit }
        }
        JsonPayloadError::ContentType => {
            ApiError::invalid("body", "send it with `Content-Type: application/json`")
        }
        JsonPayloadError::Deserialize(e) => ApiError::invalid(
            "body",
            format!("{e}; send a JSON object with the documented fields"),
        ),
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
        req.path()
    )))
}
