//! The proxy's JSON API.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use actix::Addr;
use actix_web::cookie::{Cookie, SameSite};
use actix_web::{web, HttpMessage, HttpRequest, HttpResponse};
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio::sync::broadcast;

use super::ceremony::{store_error, Ceremony, RelyingParty};
use crate::actors::audit::Audit;
use crate::actors::card::{CardActor, CardEvent, GetHealth};
use crate::actors::enrollments::{Delete, EnrollmentsActor, List, Lookup, Update, User};
use crate::actors::operations::{self, OperationKind, OperationsActor, Outcome};
use crate::actors::ratelimit::{self, RateLimitActor};
use crate::actors::session_cache::{Check, SessionCache};
use crate::actors::sessions::{
    self, IssuedSession, SessionError, SessionInfo, SessionsActor, TokenHash,
};
use crate::actors::upstream::{IncrementCounter, UpstreamActor};
use crate::audit::{AuditAction, AuditEvent};
use crate::domain::{parse_display_name, Username};
use crate::error::ApiError;
use crate::http::RequestId;
use crate::metrics::ProxyMetrics;

/// Everything the handlers share. Actors own the state; this contains their
/// addresses and the settings read from config.
pub struct ProxyState {
    pub sessions: Addr<SessionsActor>,
    pub enrollments: Addr<EnrollmentsActor>,
    pub card: Addr<CardActor>,
    pub operations: Addr<OperationsActor>,
    pub limits: Addr<RateLimitActor>,
    pub events: broadcast::Sender<CardEvent>,
    pub rp: RelyingParty,
    pub cookie_name: String,
    pub session_lifetime: Duration,
    pub next_operation: AtomicU64,
    pub audit: Audit,
    pub metrics: Arc<ProxyMetrics>,
}

type State = web::Data<ProxyState>;

pub fn configure(cfg: &mut web::ServiceConfig) {
    // actix-web tries routes in the order they are added, and the
    // protected call is the one made most often, so it comes first. No
    // other route matches its path.
    cfg.route(crate::http::COUNTER_PATH, web::post().to(resource_counter))
        .route("/health", web::get().to(health))
        .route("/enroll/register", web::post().to(enroll_register))
        .route("/enroll/status", web::get().to(enroll_status))
        .route("/enroll/update", web::post().to(enroll_update))
        .route("/enroll/delete", web::post().to(enroll_delete))
        .route("/enroll/list", web::get().to(enroll_list))
        .route("/session/login", web::post().to(session_login))
        .route("/session/status", web::post().to(session_status))
        .route("/session/logout", web::post().to(session_logout))
        .route("/op/enroll", web::post().to(op_enroll))
        .route("/op/login", web::post().to(op_login))
        .route("/op/{id}", web::get().to(op_poll))
        .route("/op/{id}/cancel", web::post().to(op_cancel));
}

fn mailbox(e: actix::MailboxError) -> ApiError {
    ApiError::Unavailable(format!("an internal actor did not respond: {e}"))
}

/// RFC 3339 UTC time, as used in every JSON reply.
pub fn rfc3339(time: SystemTime) -> String {
    let whole_seconds = time::OffsetDateTime::from(time).replace_nanosecond(0);
    whole_seconds
        .unwrap_or_else(|_| time::OffsetDateTime::from(time))
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

fn session_json(info: &SessionInfo) -> serde_json::Value {
    json!({ "username": info.username, "expires_at": rfc3339(info.expires_at) })
}

fn user_json(user: &User) -> serde_json::Value {
    json!({
        "username": user.username,
        "display_name": user.display_name,
        "created_at": rfc3339(SystemTime::UNIX_EPOCH + Duration::from_secs(user.created_at)),
        "updated_at": rfc3339(SystemTime::UNIX_EPOCH + Duration::from_secs(user.updated_at)),
        "credentials": user.credential_ids.len(),
    })
}

/// Sets the cancel flag when dropped, so that a card operation is abandoned
/// (and the card gets CTAPHID CANCEL) when the HTTP client goes away and
/// actix-web drops the handler's future.
struct CancelOnDrop(Arc<AtomicBool>);

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

impl ProxyState {
    fn ceremony(&self, operation_id: u64, cancel: Arc<AtomicBool>) -> Ceremony<'_> {
        Ceremony {
            rp: &self.rp,
            card: &self.card,
            enrollments: &self.enrollments,
            metrics: &self.metrics,
            operation_id,
            cancel,
        }
    }

    /// Refuses a login or enrollment attempt at once when the client
    /// address or the username is throttled.
    async fn admit(
        &self,
        peer: Option<std::net::IpAddr>,
        username: &Username,
    ) -> Result<(), ApiError> {
        self.limits
            .send(ratelimit::Admit {
                address: peer,
                username: username.as_str().to_string(),
            })
            .await
            .map_err(mailbox)?
    }

    /// Counts an attempt's outcome against the username when it failed in a
    /// way an attacker could cause: declined, bad signature, unknown user.
    fn report<T>(&self, username: &Username, result: &Result<T, ApiError>) {
        let failed = matches!(
            result,
            Err(ApiError::CardDenied(_) | ApiError::Forbidden(_) | ApiError::NotFound(_))
        );
        self.limits.do_send(ratelimit::Outcome {
            username: username.as_str().to_string(),
            failed,
        });
    }

    /// Runs an attempt between [`Self::admit`] and [`Self::report`].
    async fn limited<T>(
        &self,
        peer: Option<std::net::IpAddr>,
        username: &Username,
        attempt: impl std::future::Future<Output = Result<T, ApiError>>,
    ) -> Result<T, ApiError> {
        self.admit(peer, username).await?;
        let result = attempt.await;
        self.report(username, &result);
        result
    }

    /// Runs the enrollment ceremony and records its outcome in the audit
    /// trail.
    async fn enroll_user(
        &self,
        username: Username,
        display_name: String,
        operation_id: u64,
        cancel: Arc<AtomicBool>,
    ) -> Result<User, ApiError> {
        let name = username.as_str().to_owned();
        let result = self
            .ceremony(operation_id, cancel)
            .enroll(username, display_name)
            .await;
        self.audit.record(match &result {
            Ok(_) => AuditEvent::success(AuditAction::Enroll).user(name),
            Err(e) => AuditEvent::failure(AuditAction::Enroll, e.code())
                .user(name)
                .details(e.to_string()),
        });
        result
    }

    /// Runs the login ceremony, issues a session and records the outcome
    /// in the audit trail.
    async fn log_in(
        &self,
        username: Username,
        operation_id: u64,
        cancel: Arc<AtomicBool>,
    ) -> Result<IssuedSession, ApiError> {
        let name = username.as_str().to_owned();
        let verified = self.ceremony(operation_id, cancel).login(&username).await;
        let result = match verified {
            Ok(()) => self.issue_session(username).await,
            Err(e) => Err(e),
        };
        self.audit.record(match &result {
            Ok(issued) => AuditEvent::success(AuditAction::Login)
                .user(name)
                .session(issued.info.hash_prefix.clone()),
            Err(e) => AuditEvent::failure(AuditAction::Login, e.code())
                .user(name)
                .details(e.to_string()),
        });
        result
    }

    fn next_operation_id(&self) -> u64 {
        self.next_operation.fetch_add(1, Ordering::Relaxed)
    }

    async fn issue_session(&self, username: Username) -> Result<IssuedSession, ApiError> {
        self.sessions
            .send(sessions::Create {
                username: username.into_string(),
            })
            .await
            .map_err(mailbox)?
            .map_err(session_error)
    }

    /// The session token from `Authorization: Bearer` or, failing that, the
    /// session cookie.
    fn token(&self, req: &HttpRequest) -> Option<String> {
        if let Some(value) = req.headers().get(actix_web::http::header::AUTHORIZATION) {
            let text = value.to_str().ok()?;
            let token = text
                .strip_prefix("Bearer ")
                .or_else(|| text.strip_prefix("bearer "))?;
            return Some(token.trim().to_string());
        }
        req.cookie(&self.cookie_name).map(|c| c.value().to_string())
    }

    /// Checks the request's session with this worker's session cache.
    async fn cached_session(
        &self,
        cache: &Addr<SessionCache>,
        req: &HttpRequest,
    ) -> Result<SessionInfo, ApiError> {
        let token = self.token(req).ok_or_else(no_session)?;
        let hash = TokenHash::of_well_formed(&token).map_err(session_error)?;
        cache
            .send(Check { hash })
            .await
            .map_err(mailbox)?
            .map_err(session_error)
    }

    async fn session(&self, req: &HttpRequest) -> Result<(String, SessionInfo), ApiError> {
        let token = self.token(req).ok_or_else(|| {
            // The header's value is not quoted: it may be a token.
            let reason = if req.headers().contains_key(actix_web::http::header::AUTHORIZATION) {
                "the Authorization header is not of the form `Bearer TOKEN`; send the token from the login reply that way or in the session cookie"
            } else {
                "no session: send `Authorization: Bearer TOKEN` or the session cookie; log in first"
            };
            ApiError::Unauthorized(reason.into())
        })?;
        let info = self
            .sessions
            .send(sessions::Validate {
                token: token.clone(),
            })
            .await
            .map_err(mailbox)?
            .map_err(session_error)?;
        Ok((token, info))
    }

    fn session_cookie(&self, token: &str) -> Cookie<'static> {
        Cookie::build(self.cookie_name.clone(), token.to_string())
            .path("/")
            .http_only(true)
            .secure(true)
            .same_site(SameSite::Strict)
            .max_age(actix_web::cookie::time::Duration::seconds(
                i64::try_from(self.session_lifetime.as_secs()).unwrap_or(i64::MAX),
            ))
            .finish()
    }

    fn expired_cookie(&self) -> Cookie<'static> {
        let mut cookie = self.session_cookie("");
        cookie.make_removal();
        cookie
    }
}

/// Returns the TCP peer's address. Forwarding headers are never
/// consulted, because a client could write anything there.
fn peer_ip(req: &HttpRequest) -> Option<std::net::IpAddr> {
    req.peer_addr().map(|a| a.ip())
}

fn no_session() -> ApiError {
    ApiError::Unauthorized(
        "no session: send `Authorization: Bearer TOKEN` or the session cookie; log in first".into(),
    )
}

fn session_error(e: SessionError) -> ApiError {
    match e {
        SessionError::Rng(_) => ApiError::Internal(e.to_string()),
        SessionError::Unavailable(_) => ApiError::Unavailable(e.to_string()),
        SessionError::Malformed | SessionError::Unknown => ApiError::Unauthorized(e.to_string()),
    }
}

async fn health(state: State) -> Result<HttpResponse, ApiError> {
    let card = state.card.send(GetHealth).await.map_err(mailbox)?;
    let sessions = state
        .sessions
        .send(sessions::Count)
        .await
        .map_err(mailbox)?;
    Ok(HttpResponse::Ok().json(json!({
        "ok": true,
        "role": "proxy",
        "card": card,
        "sessions": sessions,
    })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RegisterBody {
    username: String,
    #[serde(default)]
    display_name: Option<String>,
}

async fn enroll_register(
    state: State,
    req: HttpRequest,
    body: web::Json<RegisterBody>,
) -> Result<HttpResponse, ApiError> {
    let username = Username::parse(&body.username)?;
    let display_name = parse_display_name(body.display_name.as_deref().unwrap_or(""))?;
    let cancel = Arc::new(AtomicBool::new(false));
    let _guard = CancelOnDrop(cancel.clone());

    let name = username.clone();
    let enroll = state.enroll_user(username, display_name, state.next_operation_id(), cancel);
    let user = state.limited(peer_ip(&req), &name, enroll).await?;
    Ok(HttpResponse::Ok().json(json!({ "ok": true, "user": user_json(&user) })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct StatusQuery {
    username: String,
}

async fn enroll_status(
    state: State,
    query: web::Query<StatusQuery>,
) -> Result<HttpResponse, ApiError> {
    let username = Username::parse(&query.username)?;
    let found = state
        .enrollments
        .send(Lookup {
            username: username.clone(),
        })
        .await
        .map_err(mailbox)?
        .map_err(store_error)?;
    Ok(HttpResponse::Ok().json(match found {
        Some(enrollment) => json!({
            "ok": true,
            "username": username.as_str(),
            "enrolled": true,
            "user": user_json(&enrollment.user),
        }),
        None => json!({ "ok": true, "username": username.as_str(), "enrolled": false }),
    }))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UpdateBody {
    /// Optional; when given it must be the session's user.
    #[serde(default)]
    username: Option<String>,
    display_name: String,
}

/// Rejects a request that names another user than the session's.
fn own_user(session: &SessionInfo, named: Option<&str>) -> Result<Username, ApiError> {
    let own = Username::parse(&session.username)?;
    if let Some(named) = named {
        let named = Username::parse(named)?;
        if named != own {
            return Err(ApiError::Forbidden(format!(
                "the session belongs to {own}, not {named}; log in as {named} to change that enrollment"
            )));
        }
    }
    Ok(own)
}

async fn enroll_update(
    state: State,
    req: HttpRequest,
    body: web::Json<UpdateBody>,
) -> Result<HttpResponse, ApiError> {
    let (_, session) = state.session(&req).await?;
    let username = own_user(&session, body.username.as_deref())?;
    let display_name = parse_display_name(&body.display_name)?;
    let user = state
        .enrollments
        .send(Update {
            username,
            display_name,
        })
        .await
        .map_err(mailbox)?
        .map_err(store_error)?;
    state.audit.record(
        AuditEvent::success(AuditAction::Update)
            .user(user.username.clone())
            .session(session.hash_prefix.clone())
            .details("display name changed"),
    );
    Ok(HttpResponse::Ok().json(json!({ "ok": true, "user": user_json(&user) })))
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct DeleteBody {
    #[serde(default)]
    username: Option<String>,
}

async fn enroll_delete(
    state: State,
    req: HttpRequest,
    body: Result<web::Json<DeleteBody>, actix_web::Error>,
) -> Result<HttpResponse, ApiError> {
    let (_, session) = state.session(&req).await?;
    // A request without a body means `{}`; a body that is not valid JSON is
    // an error, never a silent "delete my own enrollment".
    let body = match body {
        Ok(body) => body.into_inner(),
        Err(_) if has_no_body(&req) => DeleteBody::default(),
        Err(e) => {
            return Err(e
                .as_error::<ApiError>()
                .cloned()
                .unwrap_or_else(|| ApiError::invalid("body", e.to_string())))
        }
    };
    let username = own_user(&session, body.username.as_deref())?;
    let user = state
        .enrollments
        .send(Delete {
            username: username.clone(),
        })
        .await
        .map_err(mailbox)?
        .map_err(store_error)?;
    state.audit.record(
        AuditEvent::success(AuditAction::Delete)
            .user(user.username.clone())
            .session(session.hash_prefix.clone())
            .details(format!(
                "enrollment and {} credentials deleted",
                user.credential_ids.len()
            )),
    );
    let ended = state
        .sessions
        .send(sessions::RevokeUser {
            username: username.into_string(),
        })
        .await
        .map_err(mailbox)?;
    state.audit.record(
        AuditEvent::success(AuditAction::Revoke)
            .user(user.username.clone())
            .details(format!(
                "{ended} sessions ended because the user was deleted"
            )),
    );
    Ok(HttpResponse::Ok()
        .cookie(state.expired_cookie())
        .json(json!({ "ok": true, "deleted": user.username, "sessions_ended": ended })))
}

/// Returns whether the request announces no body: no `Transfer-Encoding`
/// and a `Content-Length` that is absent or 0.
fn has_no_body(req: &HttpRequest) -> bool {
    let headers = req.headers();
    let length = headers
        .get(actix_web::http::header::CONTENT_LENGTH)
        .map(|value| value.as_bytes());
    !headers.contains_key(actix_web::http::header::TRANSFER_ENCODING)
        && matches!(length, None | Some(b"0"))
}

async fn enroll_list(state: State, req: HttpRequest) -> Result<HttpResponse, ApiError> {
    state.session(&req).await?;
    let users = state
        .enrollments
        .send(List)
        .await
        .map_err(mailbox)?
        .map_err(store_error)?;
    let users: Vec<_> = users.iter().map(user_json).collect();
    Ok(HttpResponse::Ok().json(json!({ "ok": true, "users": users })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LoginBody {
    username: String,
}

#[derive(Serialize)]
struct LoginReply<'a> {
    ok: bool,
    username: &'a str,
    session_token: &'a str,
    expires_at: String,
}

async fn session_login(
    state: State,
    req: HttpRequest,
    body: web::Json<LoginBody>,
) -> Result<HttpResponse, ApiError> {
    let username = Username::parse(&body.username)?;
    let cancel = Arc::new(AtomicBool::new(false));
    let _guard = CancelOnDrop(cancel.clone());

    let name = username.clone();
    let login = state.log_in(username, state.next_operation_id(), cancel);
    let issued = state.limited(peer_ip(&req), &name, login).await?;
    Ok(HttpResponse::Ok()
        .cookie(state.session_cookie(&issued.token))
        .json(LoginReply {
            ok: true,
            username: &issued.info.username,
            session_token: &issued.token,
            expires_at: rfc3339(issued.info.expires_at),
        }))
}

async fn session_status(state: State, req: HttpRequest) -> Result<HttpResponse, ApiError> {
    let (_, info) = state.session(&req).await?;
    Ok(HttpResponse::Ok().json(json!({
        "ok": true,
        "username": info.username,
        "expires_at": rfc3339(info.expires_at),
    })))
}

async fn session_logout(state: State, req: HttpRequest) -> Result<HttpResponse, ApiError> {
    let token = state
        .token(&req)
        .ok_or_else(|| ApiError::Unauthorized("no session to log out of".into()))?;
    let info = state
        .sessions
        .send(sessions::Logout { token })
        .await
        .map_err(mailbox)?
        .map_err(session_error)?;
    state.audit.record(
        AuditEvent::success(AuditAction::Logout)
            .user(info.username.clone())
            .session(info.hash_prefix.clone()),
    );
    Ok(HttpResponse::Ok()
        .cookie(state.expired_cookie())
        .json(json!({ "ok": true, "logged_out": info.username })))
}

#[derive(Serialize)]
struct CounterReply<'a> {
    ok: bool,
    value: u64,
    session: SessionReply<'a>,
}

#[derive(Serialize)]
struct SessionReply<'a> {
    username: &'a str,
    expires_at: String,
}

/// The protected call: checks the session with this worker's session cache,
/// then requests the next value from k_server through this worker's
/// upstream actor. It runs without a request span (see
/// [`crate::http::request::track`]), so it writes no lines of its own.
async fn resource_counter(
    state: State,
    cache: web::Data<Addr<SessionCache>>,
    upstream: web::Data<Addr<UpstreamActor>>,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let info = state.cached_session(&cache, &req).await?;
    let request_id = req
        .extensions()
        .get::<RequestId>()
        .map(|id| id.0.clone())
        .unwrap_or_default();
    let value = upstream
        .send(IncrementCounter { request_id })
        .await
        .map_err(mailbox)??;
    Ok(HttpResponse::Ok().json(CounterReply {
        ok: true,
        value,
        session: SessionReply {
            username: &info.username,
            expires_at: rfc3339(info.expires_at),
        },
    }))
}

// Card ceremonies that the portal follows by polling: the request returns at
// once with an operation id, and the ceremony runs on in the background.

/// Registers an operation and runs `ceremony` for it in the background.
async fn begin_operation<F, Fut>(
    state: State,
    kind: OperationKind,
    username: &Username,
    ceremony: F,
) -> Result<HttpResponse, ApiError>
where
    F: FnOnce(State, u64, Arc<AtomicBool>) -> Fut,
    Fut: std::future::Future<Output = Result<Outcome, ApiError>> + 'static,
{
    let card_id = state.next_operation_id();
    let cancel = Arc::new(AtomicBool::new(false));
    let id = state
        .operations
        .send(operations::Begin {
            kind,
            username: username.as_str().to_string(),
            card_id,
            cancel: cancel.clone(),
        })
        .await
        .map_err(mailbox)??;

    let operations = state.operations.clone();
    let work = ceremony(state, card_id, cancel);
    actix_rt::spawn(async move {
        let outcome = work.await;
        operations.do_send(operations::Finish { card_id, outcome });
    });
    Ok(HttpResponse::Accepted()
        .json(json!({ "ok": true, "operation": id, "kind": kind, "state": "queued" })))
}

async fn op_enroll(
    state: State,
    req: HttpRequest,
    body: web::Json<RegisterBody>,
) -> Result<HttpResponse, ApiError> {
    let username = Username::parse(&body.username)?;
    let display_name = parse_display_name(body.display_name.as_deref().unwrap_or(""))?;
    state.admit(peer_ip(&req), &username).await?;
    let name = username.clone();
    begin_operation(
        state,
        OperationKind::Enroll,
        &name,
        move |state, card_id, cancel| async move {
            let result = state
                .enroll_user(username.clone(), display_name, card_id, cancel)
                .await;
            state.report(&username, &result);
            Ok(Outcome::Enrolled(json!({ "user": user_json(&result?) })))
        },
    )
    .await
}

async fn op_login(
    state: State,
    req: HttpRequest,
    body: web::Json<LoginBody>,
) -> Result<HttpResponse, ApiError> {
    let username = Username::parse(&body.username)?;
    state.admit(peer_ip(&req), &username).await?;
    let name = username.clone();
    begin_operation(
        state,
        OperationKind::Login,
        &name,
        move |state, card_id, cancel| async move {
            let result = state.log_in(username.clone(), card_id, cancel).await;
            state.report(&username, &result);
            let issued = result?;
            Ok(Outcome::LoggedIn {
                summary: session_json(&issued.info),
                token: Some(issued.token),
            })
        },
    )
    .await
}

async fn op_poll(state: State, id: web::Path<String>) -> Result<HttpResponse, ApiError> {
    let view = state
        .operations
        .send(operations::Poll {
            operation: id.into_inner(),
        })
        .await
        .map_err(mailbox)?
        .ok_or_else(|| {
            ApiError::NotFound(
                "the operation is unknown or expired; start the enrollment or login again".into(),
            )
        })?;
    let mut response = HttpResponse::Ok();
    if let Some(token) = &view.session_token {
        response.cookie(state.session_cookie(token));
    }
    Ok(response.json(json!({ "ok": true, "operation": view })))
}

async fn op_cancel(state: State, id: web::Path<String>) -> Result<HttpResponse, ApiError> {
    state
        .operations
        .send(operations::Cancel {
            operation: id.into_inner(),
        })
        .await
        .map_err(mailbox)??;
    Ok(HttpResponse::Ok().json(json!({ "ok": true, "cancelling": true })))
}
