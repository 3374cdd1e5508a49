//! Errors that reach an HTTP client, grouped by who is at fault, and the one
//! place that maps them to a status code and a JSON body.

use actix_web::http::StatusCode;
use actix_web::{HttpResponse, ResponseError};
use serde::Serialize;

/// An error returned to an HTTP client as
/// `{"ok":false,"error":CODE,"details":SENTENCE}`.
///
/// `details` is written for a person: it names the value that failed and
/// what to do next. It never contains a token or key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApiError {
    // The client is at fault.
    #[error("invalid {field}: {reason}")]
    InvalidInput { field: &'static str, reason: String },
    #[error("{0}")]
    Unauthorized(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("request body is larger than {limit} bytes")]
    PayloadTooLarge { limit: usize },
    #[error("{0}")]
    RequestTimeout(String),
    #[error("{0}")]
    TooManyRequests(String),

    // The card or the person at it.
    #[error("{0}")]
    CardNotConnected(String),
    #[error("{0}")]
    CardBusy(String),
    #[error("{0}")]
    CardDenied(String),
    #[error("{0}")]
    CardTimeout(String),
    #[error("{0}")]
    CardCancelled(String),
    #[error("card error: {0}")]
    CardFailed(String),

    // The upstream k_server.
    #[error("upstream failed: {0}")]
    UpstreamFailed(String),
    #[error("upstream unavailable: {0}")]
    UpstreamUnavailable(String),
    #[error("upstream timed out: {0}")]
    UpstreamTimeout(String),

    // The daemon itself.
    #[error("{0}")]
    Storage(String),
    #[error("service is shutting down or overloaded: {0}")]
    Unavailable(String),
    #[error("internal error: {0}")]
    Internal(String),
}

impl ApiError {
    pub fn invalid(field: &'static str, reason: impl Into<String>) -> Self {
        ApiError::InvalidInput {
            field,
            reason: reason.into(),
        }
    }

    /// The machine-readable code in the `error` field of the JSON body.
    pub fn code(&self) -> &'static str {
        match self {
            ApiError::InvalidInput { .. } => "invalid_input",
            ApiError::Unauthorized(_) => "unauthorized",
            ApiError::Forbidden(_) => "forbidden",
            ApiError::NotFound(_) => "not_found",
            ApiError::Conflict(_) => "conflict",
            ApiError::PayloadTooLarge { .. } => "payload_too_large",
            ApiError::RequestTimeout(_) => "request_timeout",
            ApiError::TooManyRequests(_) => "too_many_requests",
            ApiError::CardNotConnected(_) => "card_not_connected",
            ApiError::CardBusy(_) => "card_busy",
            ApiError::CardDenied(_) => "card_denied",
            ApiError::CardTimeout(_) => "card_timeout",
            ApiError::CardCancelled(_) => "card_cancelled",
            ApiError::CardFailed(_) => "card_failed",
            ApiError::UpstreamFailed(_) => "upstream_failed",
            ApiError::UpstreamUnavailable(_) => "upstream_unavailable",
            ApiError::UpstreamTimeout(_) => "upstream_timeout",
            ApiError::Storage(_) => "storage_failed",
            ApiError::Unavailable(_) => "unavailable",
            ApiError::Internal(_) => "internal",
        }
    }
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    ok: bool,
    error: &'a str,
    details: String,
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        match self {
            ApiError::InvalidInput { .. } => StatusCode::BAD_REQUEST,
            ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) | ApiError::CardDenied(_) => StatusCode::FORBIDDEN,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::RequestTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            ApiError::TooManyRequests(_) => StatusCode::TOO_MANY_REQUESTS,
            ApiError::CardNotConnected(_)
            | ApiError::CardBusy(_)
            | ApiError::UpstreamUnavailable(_)
            | ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::CardTimeout(_) | ApiError::UpstreamTimeout(_) => StatusCode::GATEWAY_TIMEOUT,
            // 499 is not a registered status; a cancelled card operation is
            // the client's own choice, so it is reported as a conflict.
            ApiError::CardCancelled(_) => StatusCode::CONFLICT,
            ApiError::CardFailed(_) | ApiError::UpstreamFailed(_) => StatusCode::BAD_GATEWAY,
            ApiError::Storage(_) | ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn error_response(&self) -> HttpResponse {
        // The request middleware logs the error, in the request's span.
        HttpResponse::build(self.status_code()).json(ErrorBody {
            ok: false,
            error: self.code(),
            details: self.to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_follow_the_documented_table() {
        let cases = [
            (ApiError::invalid("username", "too short"), 400),
            (ApiError::Unauthorized("expired".into()), 401),
            (ApiError::CardDenied("no".into()), 403),
            (ApiError::NotFound("alice".into()), 404),
            (ApiError::Conflict("alice".into()), 409),
            (ApiError::RequestTimeout("body".into()), 408),
            (ApiError::UpstreamFailed("reset".into()), 502),
            (ApiError::CardNotConnected("sim".into()), 503),
            (ApiError::CardTimeout("30 s".into()), 504),
        ];
        for (error, status) in cases {
            assert_eq!(error.status_code().as_u16(), status, "{error:?}");
        }
    }
}

/// The reason a role could not start, reported once by the binary before it exits.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("TLS setup failed: {0}")]
    Tls(String),
    #[error("cannot open the store at {path}: {reason}")]
    Store { path: String, reason: String },
    #[error("{0}")]
    Other(String),
}
