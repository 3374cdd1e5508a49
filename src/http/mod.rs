//! HTTP front ends of the two network roles, and what they share: request
//! ids, JSON error handling and response headers.

use actix_web::error::{JsonPayloadError, QueryPayloadError};
use actix_web::{web, HttpRequest};

use crate::error::ApiError;

pub mod portal;
pub mod probes;
pub mod proxy;
pub mod request;
pub mod server;

pub use request::RequestId;

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
