//! Readiness of both roles: `GET /ready` responds 200 when every part the
//! role needs works, and 503 naming the parts that do not.
//!
//! `GET /health` (in each role's routes) only shows that the process
//! responds. `/ready` is what a load balancer or an operator's check should
//! use before sending traffic.
//!
//! | role | parts checked |
//! |---|---|
//! | proxy | `store` (the sled store answers a read), `card` (connected), `upstream` (k_server answers `GET /health` over mutual TLS) |
//! | server | `store` (the counter store is open) |

use std::future::Future;
use std::time::Duration;

use actix::Addr;
use actix_web::{web, HttpResponse};
use serde::Serialize;
use serde_json::{json, Map, Value};

use crate::actors::card::GetHealth;
use crate::actors::counter::{CounterActor, Stats};
use crate::actors::upstream::Probe;
use crate::http::proxy::ProxyState;

/// Maximum time one readiness check may take before it counts as failed.
/// The checks run concurrently, so `/ready` responds within about this long
/// even when a part hangs.
pub const CHECK_TIMEOUT: Duration = Duration::from_secs(3);

/// The outcome of one part's check.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Check {
    pub ok: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub details: Option<String>,
}

impl Check {
    fn from_result(result: Result<(), String>) -> Check {
        match result {
            Ok(()) => Check {
                ok: true,
                details: None,
            },
            Err(details) => Check {
                ok: false,
                details: Some(details),
            },
        }
    }
}

/// Runs `check` with [`CHECK_TIMEOUT`].
async fn bounded(
    part: &str,
    check: impl Future<Output = Result<(), String>>,
) -> Result<(), String> {
    match actix_rt::time::timeout(CHECK_TIMEOUT, check).await {
        Ok(result) => result,
        Err(_) => Err(format!(
            "the {part} check did not finish within {CHECK_TIMEOUT:?}"
        )),
    }
}

/// Builds the `/ready` response from named checks, in the given order.
pub fn readiness_response(role: &str, checks: &[(&str, Check)]) -> HttpResponse {
    let mut parts = Map::new();
    for (name, check) in checks {
        parts.insert((*name).to_owned(), json!(check));
    }
    let failing: Vec<String> = checks
        .iter()
        .filter(|(_, check)| !check.ok)
        .map(|(name, check)| format!("{name}: {}", check.details.as_deref().unwrap_or("failed")))
        .collect();

    if failing.is_empty() {
        return HttpResponse::Ok().json(json!({
            "ok": true,
            "role": role,
            "ready": true,
            "checks": Value::Object(parts),
        }));
    }
    let details = format!("not ready: {}", failing.join("; "));
    tracing::debug!(%details, "readiness check failed");
    HttpResponse::ServiceUnavailable().json(json!({
        "ok": false,
        "role": role,
        "ready": false,
        "error": "not_ready",
        "details": details,
        "checks": Value::Object(parts),
    }))
}

/// `GET /ready` of the proxy.
pub async fn proxy_ready(
    state: web::Data<ProxyState>,
    upstream_link: web::Data<actix::Addr<crate::actors::upstream::UpstreamActor>>,
) -> HttpResponse {
    let store = bounded("store", async {
        if !state.enrollments.connected() {
            return Err("the enrollments actor has stopped".to_owned());
        }
        state.audit.check_store().await
    });
    let card = bounded("card", async {
        let health = state
            .card
            .send(GetHealth)
            .await
            .map_err(|e| format!("the card actor did not respond: {e}"))?;
        match health.state {
            "disconnected" => Err(format!(
                "card not connected ({}): {}",
                health.device,
                health.last_error.as_deref().unwrap_or("no card found yet")
            )),
            _ => Ok(()),
        }
    });
    let upstream = bounded("upstream", async {
        upstream_link
            .send(Probe)
            .await
            .map_err(|e| format!("the upstream actor did not respond: {e}"))?
            .map_err(|e| e.to_string())
    });

    let (store, card, upstream) = tokio::join!(store, card, upstream);
    readiness_response(
        "proxy",
        &[
            ("store", Check::from_result(store)),
            ("card", Check::from_result(card)),
            ("upstream", Check::from_result(upstream)),
        ],
    )
}

/// `GET /ready` of the server.
pub async fn server_ready(counter: web::Data<Addr<CounterActor>>) -> HttpResponse {
    let store = bounded("store", async {
        let stats = counter
            .send(Stats)
            .await
            .map_err(|e| format!("the counter actor did not respond: {e}"))?;
        if stats.open {
            Ok(())
        } else {
            Err("the counter store is closed after a failure; restart the server".to_owned())
        }
    })
    .await;
    readiness_response("server", &[("store", Check::from_result(store))])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failing_part_is_named_in_details() {
        let response = readiness_response(
            "proxy",
            &[
                ("store", Check::from_result(Ok(()))),
                ("card", Check::from_result(Err("card not connected".into()))),
            ],
        );
        assert_eq!(response.status().as_u16(), 503);
    }

    #[test]
    fn all_parts_ok_is_ready() {
        let response = readiness_response("server", &[("store", Check::from_result(Ok(())))]);
        assert_eq!(response.status().as_u16(), 200);
    }
}
