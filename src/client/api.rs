//! A typed client for the proxy's JSON API, used by `cardgate client` and
//! `cardgate loadtest`.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::{json, Value};

/// Deadline of one HTTP request to the proxy. Card ceremonies are polled,
/// so no single request waits for a person.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// How often a waiting card operation is polled.
pub const POLL_INTERVAL: Duration = Duration::from_millis(250);

/// An API call that did not succeed, in words a person can act on.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ClientError {
    /// The proxy returned an error body.
    #[error("{details}")]
    Api {
        status: u16,
        code: String,
        details: String,
    },
    #[error("cannot reach the proxy at {url}: {reason}")]
    Transport { url: String, reason: String },
    #[error("the proxy's reply to {url} is not what cardgate expects: {reason}")]
    Reply { url: String, reason: String },
    #[error("{0}")]
    Setup(String),
}

impl ClientError {
    /// The `error` code of an API error, or a code for the local failure.
    pub fn code(&self) -> &str {
        match self {
            ClientError::Api { code, .. } => code,
            ClientError::Transport { .. } => "transport",
            ClientError::Reply { .. } => "bad_reply",
            ClientError::Setup(_) => "setup",
        }
    }

    pub fn status(&self) -> Option<u16> {
        match self {
            ClientError::Api { status, .. } => Some(*status),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
pub struct SessionSummary {
    pub username: String,
    pub expires_at: String,
}

#[derive(Debug, Clone, Deserialize)]
pub struct LoginReply {
    pub username: String,
    pub session_token: String,
    pub expires_at: String,
}

#[derive(Debug, Clone, Deserialize)]
pub struct CounterReply {
    pub value: u64,
    pub session: SessionSummary,
}

/// A poll of a card operation (`GET /op/{id}`).
#[derive(Debug, Clone, Deserialize)]
pub struct OperationView {
    pub operation: String,
    pub state: String,
    #[serde(default)]
    pub position: Option<usize>,
    #[serde(default)]
    pub result: Option<Value>,
    #[serde(default)]
    pub error: Option<Value>,
}

/// A client for one proxy. Cheap to clone; clones share the connection pool.
#[derive(Clone)]
pub struct ProxyClient {
    base: String,
    client: awc::Client,
}

impl ProxyClient {
    /// Builds a client that trusts `ca` for the proxy's certificate and
    /// keeps up to `connections` connections open.
    pub fn new(base: &str, ca: &Path, connections: usize) -> Result<ProxyClient, ClientError> {
        let tls =
            crate::tls::client_config(ca, None).map_err(|e| ClientError::Setup(e.to_string()))?;
        let connector = awc::Connector::new()
            .rustls_0_23(Arc::new(tls))
            .limit(connections.max(1))
            .timeout(Duration::from_secs(5));
        let client = awc::Client::builder()
            .connector(connector)
            .timeout(REQUEST_TIMEOUT)
            .disable_redirects()
            .finish();
        Ok(ProxyClient {
            base: base.trim_end_matches('/').to_string(),
            client,
        })
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    async fn call<T: DeserializeOwned>(
        &self,
        method: awc::http::Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> Result<T, ClientError> {
        self.call_with_headers(method, path, token, body)
            .await
            .map(|(value, _)| value)
    }

    /// Like `call`, and also returns the response headers.
    async fn call_with_headers<T: DeserializeOwned>(
        &self,
        method: awc::http::Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> Result<(T, awc::http::header::HeaderMap), ClientError> {
        let url = format!("{}{path}", self.base);
        let mut request = self.client.request(method, &url);
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        let sent = match body {
            Some(body) => request.send_json(&body).await,
            None => request.send().await,
        };
        let mut response = sent.map_err(|e| ClientError::Transport {
            url: url.clone(),
            reason: e.to_string(),
        })?;
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let bytes = response
            .body()
            .limit(1 << 20)
            .await
            .map_err(|e| ClientError::Transport {
                url: url.clone(),
                reason: e.to_string(),
            })?;
        let value: Value = serde_json::from_slice(&bytes).map_err(|e| ClientError::Reply {
            url: url.clone(),
            reason: format!("status {status}, body is not JSON: {e}"),
        })?;
        if value.get("ok") != Some(&Value::Bool(true)) {
            return Err(ClientError::Api {
                status,
                code: value["error"].as_str().unwrap_or("unknown").to_string(),
                details: value["details"]
                    .as_str()
                    .map(str::to_string)
                    .unwrap_or_else(|| format!("the proxy answered {status}")),
            });
        }
        let parsed = serde_json::from_value(value).map_err(|e| ClientError::Reply {
            url,
            reason: e.to_string(),
        })?;
        Ok((parsed, headers))
    }

    pub async fn health(&self) -> Result<Value, ClientError> {
        self.call(awc::http::Method::GET, "/health", None, None)
            .await
    }

    pub async fn enroll_status(&self, username: &str) -> Result<Value, ClientError> {
        let path = format!("/enroll/status?username={}", url_escape(username));
        self.call(awc::http::Method::GET, &path, None, None).await
    }

    /// Starts an enrollment on the card; poll it with [`Self::wait`].
    pub async fn begin_enroll(
        &self,
        username: &str,
        display_name: Option<&str>,
    ) -> Result<String, ClientError> {
        let mut body = json!({ "username": username });
        if let Some(name) = display_name {
            body["display_name"] = json!(name);
        }
        let reply: Value = self
            .call(awc::http::Method::POST, "/op/enroll", None, Some(body))
            .await?;
        operation_id(&reply)
    }

    /// Logs in with one blocking request (the proxy waits for the card).
    pub async fn login(&self, username: &str) -> Result<LoginReply, ClientError> {
        self.call(
            awc::http::Method::POST,
            "/session/login",
            None,
            Some(json!({ "username": username })),
        )
        .await
    }

    /// Enrolls with one blocking request (the proxy waits for the card).
    pub async fn enroll(&self, username: &str) -> Result<Value, ClientError> {
        self.call(
            awc::http::Method::POST,
            "/enroll/register",
            None,
            Some(json!({ "username": username })),
        )
        .await
    }

    /// Starts a login on the card; follow it with [`Self::wait_for_login`].
    pub async fn begin_login(&self, username: &str) -> Result<String, ClientError> {
        let reply: Value = self
            .call(
                awc::http::Method::POST,
                "/op/login",
                None,
                Some(json!({ "username": username })),
            )
            .await?;
        operation_id(&reply)
    }

    pub async fn poll(&self, operation: &str) -> Result<OperationView, ClientError> {
        self.poll_with_token(operation).await.map(|(view, _)| view)
    }

    /// Polls an operation; the second value is the session token of a
    /// finished login, which the proxy sends once, as its session cookie.
    async fn poll_with_token(
        &self,
        operation: &str,
    ) -> Result<(OperationView, Option<String>), ClientError> {
        #[derive(Deserialize)]
        struct Reply {
            operation: OperationView,
        }
        let path = format!("/op/{}", url_escape(operation));
        let (reply, headers): (Reply, _) = self
            .call_with_headers(awc::http::Method::GET, &path, None, None)
            .await?;
        let token = headers
            .get_all(awc::http::header::SET_COOKIE)
            .filter_map(|value| value.to_str().ok())
            .find_map(session_token_of_cookie);
        Ok((reply.operation, token))
    }

    pub async fn cancel(&self, operation: &str) -> Result<(), ClientError> {
        let path = format!("/op/{}/cancel", url_escape(operation));
        self.call::<Value>(awc::http::Method::POST, &path, None, None)
            .await?;
        Ok(())
    }

    /// Polls an operation until it ends; `on_state` sees every new state.
    /// Returns the result of a success or the operation's error.
    pub async fn wait(
        &self,
        operation: &str,
        on_state: impl FnMut(&OperationView),
    ) -> Result<OperationView, ClientError> {
        self.wait_with_token(operation, on_state)
            .await
            .map(|(view, _)| view)
    }

    /// Polls a login until it ends, showing each new state to `on_state`,
    /// and returns the new session.
    pub async fn wait_for_login(
        &self,
        operation: &str,
        on_state: impl FnMut(&OperationView),
    ) -> Result<LoginReply, ClientError> {
        let (view, token) = self.wait_with_token(operation, on_state).await?;
        let url = format!("{}/op/…", self.base);
        let session_token = token.ok_or_else(|| ClientError::Reply {
            url: url.clone(),
            reason: "the login succeeded but the reply set no session cookie".into(),
        })?;
        let result = view.result.unwrap_or(Value::Null);
        let field = |name: &str| {
            result[name]
                .as_str()
                .map(str::to_owned)
                .ok_or_else(|| ClientError::Reply {
                    url: url.clone(),
                    reason: format!("the finished login has no `{name}`"),
                })
        };
        Ok(LoginReply {
            username: field("username")?,
            expires_at: field("expires_at")?,
            session_token,
        })
    }

    async fn wait_with_token(
        &self,
        operation: &str,
        mut on_state: impl FnMut(&OperationView),
    ) -> Result<(OperationView, Option<String>), ClientError> {
        let mut last = String::new();
        loop {
            let (view, token) = self.poll_with_token(operation).await?;
            if view.state != last {
                on_state(&view);
                last = view.state.clone();
            }
            match view.state.as_str() {
                "succeeded" => return Ok((view, token)),
                "failed" | "cancelled" => {
                    let error = view.error.clone().unwrap_or(Value::Null);
                    return Err(ClientError::Api {
                        status: 0,
                        code: error["error"].as_str().unwrap_or("failed").to_string(),
                        details: error["details"]
                            .as_str()
                            .unwrap_or("the card operation failed")
                            .to_string(),
                    });
                }
                _ => actix_rt::time::sleep(POLL_INTERVAL).await,
            }
        }
    }

    pub async fn session_status(&self, token: &str) -> Result<SessionSummary, ClientError> {
        self.call(
            awc::http::Method::POST,
            "/session/status",
            Some(token),
            None,
        )
        .await
    }

    pub async fn counter(&self, token: &str) -> Result<CounterReply, ClientError> {
        self.call(
            awc::http::Method::POST,
            "/resource/counter",
            Some(token),
            None,
        )
        .await
    }

    pub async fn logout(&self, token: &str) -> Result<(), ClientError> {
        self.call::<Value>(
            awc::http::Method::POST,
            "/session/logout",
            Some(token),
            None,
        )
        .await?;
        Ok(())
    }

    pub async fn list(&self, token: &str) -> Result<Value, ClientError> {
        self.call(awc::http::Method::GET, "/enroll/list", Some(token), None)
            .await
    }

    pub async fn update(&self, token: &str, display_name: &str) -> Result<Value, ClientError> {
        self.call(
            awc::http::Method::POST,
            "/enroll/update",
            Some(token),
            Some(json!({ "display_name": display_name })),
        )
        .await
    }

    pub async fn delete(&self, token: &str) -> Result<Value, ClientError> {
        self.call(
            awc::http::Method::POST,
            "/enroll/delete",
            Some(token),
            Some(json!({})),
        )
        .await
    }
}

fn operation_id(reply: &Value) -> Result<String, ClientError> {
    reply["operation"]
        .as_str()
        .map(str::to_string)
        .ok_or_else(|| ClientError::Reply {
            url: "/op".into(),
            reason: "no operation id in the reply".into(),
        })
}

/// Returns the value of a `Set-Cookie` header when it has the shape of a
/// session token. The proxy's cookie name is configurable, so the token is
/// recognised by its form: the one cookie a finished login sets.
fn session_token_of_cookie(header: &str) -> Option<String> {
    let pair = header.split(';').next()?;
    let (_, value) = pair.split_once('=')?;
    let value = value.trim();
    let well_formed = value.len() == crate::actors::sessions::TOKEN_TEXT_LEN
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    well_formed.then(|| value.to_owned())
}

/// Percent-encodes everything but unreserved characters.
fn url_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn session_cookie_token_is_recognised_by_shape() {
        let token = "a".repeat(crate::actors::sessions::TOKEN_TEXT_LEN);
        let header = format!("my_session={token}; Path=/; HttpOnly; Secure; SameSite=Strict");
        assert_eq!(session_token_of_cookie(&header), Some(token));
        assert_eq!(
            session_token_of_cookie("my_session=; Path=/; Max-Age=0"),
            None,
            "a removal cookie carries no token"
        );
        assert_eq!(session_token_of_cookie("other=short; Path=/"), None);
        assert_eq!(session_token_of_cookie("no-equals-sign"), None);
    }

    #[test]
    fn url_escape_keeps_unreserved_only() {
        assert_eq!(url_escape("alice.b_c-d~"), "alice.b_c-d~");
        assert_eq!(url_escape("a b/&"), "a%20b%2F%26");
    }
}
