//! The operations actor: card ceremonies that a browser follows by polling.
//!
//! A person may take many seconds to confirm on the card. Rather than hold
//! one HTTP request open for that long, the portal starts an operation,
//! gets its id at once, and polls it; the card's events (queued, up-needed,
//! processing) move the operation's state as they happen.
//!
//! An operation id is 128 bits from the OS RNG. A finished login keeps its
//! session token here until the first poll collects it (as a cookie), so the
//! id is a secret like the token itself and is never logged whole.

use std::collections::HashMap;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use serde::Serialize;
use tokio::sync::broadcast;

use crate::actors::card::{CardEvent, CardEventKind};
use crate::error::ApiError;
use crate::rng::os_random;

/// Most operations kept at once; one more is rejected with 503.
pub const MAX_OPERATIONS: usize = 4096;

/// How long a finished operation can still be polled.
pub const FINISHED_RETENTION: Duration = Duration::from_secs(120);

const CLEANUP_INTERVAL: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum OperationKind {
    Enroll,
    Login,
}

/// State of an operation, named for what it waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum OperationState {
    /// Behind other operations in the card's queue.
    Queued,
    /// Sent to the card.
    AwaitingCard,
    /// The card waits for the person to confirm.
    AwaitingPresence,
    /// The card is working.
    Processing,
    Succeeded,
    Failed,
    Cancelled,
}

impl OperationState {
    fn is_final(self) -> bool {
        matches!(
            self,
            OperationState::Succeeded | OperationState::Failed | OperationState::Cancelled
        )
    }
}

/// The result of a successful operation.
#[derive(Debug, Clone)]
pub enum Outcome {
    Enrolled(serde_json::Value),
    LoggedIn {
        summary: serde_json::Value,
        /// Handed out once, then dropped.
        token: Option<String>,
    },
}

/// An operation as a poll returns it.
#[derive(Debug, Clone, Serialize)]
pub struct OperationView {
    pub operation: String,
    pub kind: OperationKind,
    pub username: String,
    pub state: OperationState,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub position: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub result: Option<serde_json::Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<serde_json::Value>,
    /// A login's session token, present in exactly one poll; the HTTP layer
    /// turns it into the session cookie and never puts it in the body.
    #[serde(skip)]
    pub session_token: Option<String>,
}

struct Operation {
    kind: OperationKind,
    username: String,
    card_id: u64,
    state: OperationState,
    position: Option<usize>,
    outcome: Option<Result<Outcome, ApiError>>,
    cancel: Arc<AtomicBool>,
    finished_at: Option<Instant>,
}

pub struct OperationsActor {
    operations: HashMap<String, Operation>,
    by_card_id: HashMap<u64, String>,
    events: broadcast::Sender<CardEvent>,
}

// Messages.

/// Registers a new operation; returns its public id.
#[derive(Message)]
#[rtype(result = "Result<String, ApiError>")]
pub struct Begin {
    pub kind: OperationKind,
    pub username: String,
    /// The id the card actor uses in its events for this operation.
    pub card_id: u64,
    pub cancel: Arc<AtomicBool>,
}

/// Records how an operation ended.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Finish {
    pub card_id: u64,
    pub outcome: Result<Outcome, ApiError>,
}

/// Returns an operation's state; a login's token is taken out on the first
/// poll after success.
#[derive(Message)]
#[rtype(result = "Option<OperationView>")]
pub struct Poll {
    pub operation: String,
}

/// Abandons an operation: the card gets CTAPHID CANCEL.
#[derive(Message)]
#[rtype(result = "Result<(), ApiError>")]
pub struct Cancel {
    pub operation: String,
}

/// A card event, forwarded from the broadcast channel.
#[derive(Message)]
#[rtype(result = "()")]
struct Progress(CardEvent);

impl OperationsActor {
    pub fn new(events: broadcast::Sender<CardEvent>) -> Self {
        OperationsActor {
            operations: HashMap::new(),
            by_card_id: HashMap::new(),
            events,
        }
    }

    fn cleanup(&mut self) {
        let now = Instant::now();
        let expired: Vec<(String, u64)> = self
            .operations
            .iter()
            .filter(|(_, op)| {
                op.finished_at
                    .is_some_and(|t| now.duration_since(t) > FINISHED_RETENTION)
            })
            .map(|(id, op)| (id.clone(), op.card_id))
            .collect();
        for (id, card_id) in expired {
            self.operations.remove(&id);
            self.by_card_id.remove(&card_id);
        }
    }
}

fn not_found(id: &str) -> ApiError {
    let shown: String = id.chars().take(8).collect();
    ApiError::NotFound(format!(
        "operation {shown}… is unknown or expired; start the enrollment or login again"
    ))
}

impl Actor for OperationsActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        let mut events = self.events.subscribe();
        let addr = ctx.address();
        actix_rt::spawn(async move {
            loop {
                match events.recv().await {
                    Ok(event) => addr.do_send(Progress(event)),
                    Err(broadcast::error::RecvError::Lagged(missed)) => {
                        tracing::warn!(missed, "operation progress fell behind the card's events");
                    }
                    Err(broadcast::error::RecvError::Closed) => break,
                }
            }
        });
        ctx.run_interval(CLEANUP_INTERVAL, |actor, _| actor.cleanup());
    }
}

impl Handler<Begin> for OperationsActor {
    type Result = Result<String, ApiError>;

    fn handle(&mut self, msg: Begin, _: &mut Self::Context) -> Self::Result {
        if self.operations.len() >= MAX_OPERATIONS {
            self.cleanup();
            if self.operations.len() >= MAX_OPERATIONS {
                return Err(ApiError::Unavailable(format!(
                    "{MAX_OPERATIONS} card operations are pending; try again in a minute"
                )));
            }
        }
        let id = hex::encode(os_random::<16>().map_err(|e| ApiError::Internal(e.to_string()))?);
        self.by_card_id.insert(msg.card_id, id.clone());
        self.operations.insert(
            id.clone(),
            Operation {
                kind: msg.kind,
                username: msg.username,
                card_id: msg.card_id,
                state: OperationState::Queued,
                position: None,
                outcome: None,
                cancel: msg.cancel,
                finished_at: None,
            },
        );
        Ok(id)
    }
}

impl Handler<Progress> for OperationsActor {
    type Result = ();

    fn handle(&mut self, Progress(event): Progress, _: &mut Self::Context) {
        let Some(card_id) = event.operation else {
            return;
        };
        let Some(op) = self
            .by_card_id
            .get(&card_id)
            .and_then(|id| self.operations.get_mut(id))
        else {
            return;
        };
        if op.state.is_final() {
            return;
        }
        match event.kind {
            CardEventKind::Queued { position } => {
                op.state = OperationState::Queued;
                op.position = Some(position);
            }
            CardEventKind::Started => {
                op.state = OperationState::AwaitingCard;
                op.position = None;
            }
            CardEventKind::UpNeeded => op.state = OperationState::AwaitingPresence,
            CardEventKind::Processing => op.state = OperationState::Processing,
            _ => {}
        }
    }
}

impl Handler<Finish> for OperationsActor {
    type Result = ();

    fn handle(&mut self, msg: Finish, _: &mut Self::Context) {
        let Some(op) = self
            .by_card_id
            .get(&msg.card_id)
            .and_then(|id| self.operations.get_mut(id))
        else {
            return;
        };
        op.state = match &msg.outcome {
            Ok(_) => OperationState::Succeeded,
            Err(ApiError::CardCancelled(_)) => OperationState::Cancelled,
            Err(_) => OperationState::Failed,
        };
        op.position = None;
        op.outcome = Some(msg.outcome);
        op.finished_at = Some(Instant::now());
    }
}

impl Handler<Poll> for OperationsActor {
    type Result = Option<OperationView>;

    fn handle(&mut self, msg: Poll, _: &mut Self::Context) -> Self::Result {
        let op = self.operations.get_mut(&msg.operation)?;
        let mut view = OperationView {
            operation: msg.operation.clone(),
            kind: op.kind,
            username: op.username.clone(),
            state: op.state,
            position: op.position,
            result: None,
            error: None,
            session_token: None,
        };
        match &mut op.outcome {
            Some(Ok(Outcome::Enrolled(result))) => view.result = Some(result.clone()),
            Some(Ok(Outcome::LoggedIn { summary, token })) => {
                view.result = Some(summary.clone());
                view.session_token = token.take();
            }
            Some(Err(e)) => {
                view.error =
                    Some(serde_json::json!({ "error": e.code(), "details": e.to_string() }));
            }
            None => {}
        }
        Some(view)
    }
}

impl Handler<Cancel> for OperationsActor {
    type Result = Result<(), ApiError>;

    fn handle(&mut self, msg: Cancel, _: &mut Self::Context) -> Self::Result {
        let op = self
            .operations
            .get(&msg.operation)
            .ok_or_else(|| not_found(&msg.operation))?;
        if !op.state.is_final() {
            op.cancel.store(true, std::sync::atomic::Ordering::Relaxed);
            tracing::info!(username = %op.username, kind = ?op.kind, "card operation cancelled by the client");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[actix_rt::test]
    async fn progress_and_finish_move_the_state() {
        let (events, _) = broadcast::channel(16);
        let actor = OperationsActor::new(events.clone()).start();
        let cancel = Arc::new(AtomicBool::new(false));
        let id = actor
            .send(Begin {
                kind: OperationKind::Login,
                username: "alice".into(),
                card_id: 7,
                cancel: cancel.clone(),
            })
            .await
            .unwrap()
            .unwrap();
        assert_eq!(id.len(), 32);

        events
            .send(CardEvent {
                operation: Some(7),
                kind: CardEventKind::UpNeeded,
            })
            .unwrap();
        let mut state = OperationState::Queued;
        for _ in 0..50 {
            state = actor
                .send(Poll {
                    operation: id.clone(),
                })
                .await
                .unwrap()
                .unwrap()
                .state;
            if state == OperationState::AwaitingPresence {
                break;
            }
            actix_rt::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(state, OperationState::AwaitingPresence);

        actor
            .send(Cancel {
                operation: id.clone(),
            })
            .await
            .unwrap()
            .unwrap();
        assert!(cancel.load(std::sync::atomic::Ordering::Relaxed));

        actor
            .send(Finish {
                card_id: 7,
                outcome: Ok(Outcome::LoggedIn {
                    summary: serde_json::json!({ "username": "alice" }),
                    token: Some("secret".into()),
                }),
            })
            .await
            .unwrap();
        let first = actor
            .send(Poll {
                operation: id.clone(),
            })
            .await
            .unwrap()
            .unwrap();
        assert_eq!(first.state, OperationState::Succeeded);
        assert_eq!(first.session_token.as_deref(), Some("secret"));
        let second = actor.send(Poll { operation: id }).await.unwrap().unwrap();
        assert_eq!(second.session_token, None, "the token is handed out once");
    }

    #[actix_rt::test]
    async fn unknown_operation_is_not_found() {
        let (events, _) = broadcast::channel(16);
        let actor = OperationsActor::new(events).start();
        assert!(actor
            .send(Poll {
                operation: "nope".into()
            })
            .await
            .unwrap()
            .is_none());
        let cancel = actor
            .send(Cancel {
                operation: "nope".into(),
            })
            .await
            .unwrap();
        assert!(matches!(cancel, Err(ApiError::NotFound(_))));
    }
}
