//! The card actor: the only owner of the CTAPHID link.
//!
//! All card traffic goes through this actor's queue, one operation at a
//! time in arrival order, so a touch on the card can only ever answer the
//! operation that is on the card. The blocking CTAPHID exchange runs on
//! tokio's blocking pool while the actor keeps answering its mailbox (health,
//! new jobs, cancellations).
//!
//! The actor runs under an actix `Supervisor`. When the transport fails
//! (device unplugged, read or write error) it stops; the supervisor restarts
//! it and it rediscovers the card with capped exponential backoff, then runs
//! INIT and getInfo again. Nothing from the old link is reused.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use serde::Serialize;
use tokio::sync::{broadcast, oneshot};

use crate::ctap::device::{CtapHidDevice, DeviceError, KeepaliveStatus, Timing};
use crate::ctap::get_assertion::{GetAssertionRequest, GetAssertionResponse};
use crate::ctap::get_info::{self, GetInfo};
use crate::ctap::make_credential::{MakeCredentialRequest, MakeCredentialResponse};
use crate::ctap::status::{split_status, CtapError, CtapStatus};
use crate::ctap::transport::Connector;
use crate::error::ApiError;

/// First wait before retrying to connect to a missing card.
const RECONNECT_FIRST_BACKOFF: Duration = Duration::from_millis(100);

/// How often queued jobs are checked for expired deadlines and
/// cancellations while they wait for the card.
const QUEUE_SWEEP_INTERVAL: Duration = Duration::from_millis(100);

/// How often an idle card is sent a CTAPHID PING. A UDP or relayed card
/// gives no sign when it goes away, and a hidraw node only fails when it is
/// used, so without this `/health` would report a lost card as connected
/// until the next login.
const HEARTBEAT_INTERVAL: Duration = Duration::from_secs(5);

/// Capacity of the event channel. A subscriber that falls this far behind
/// misses events (its next receive reports how many) instead of slowing the card.
pub const EVENT_CAPACITY: usize = 256;

/// Limits and deadlines of card operations.
#[derive(Debug, Clone)]
pub struct CardSettings {
    /// Deadline of one operation, counted from when it is queued: the person
    /// at the card must confirm within it.
    pub confirm_timeout: Duration,
    /// Most operations waiting for the card; one more is rejected as busy.
    pub queue_limit: usize,
    /// How long a login may wait for a card that is reconnecting.
    pub login_grace: Duration,
    /// Maximum wait between two attempts to find the card.
    pub reconnect_max_backoff: Duration,
    /// CTAPHID read slices, idle deadline and retry limits.
    pub timing: Timing,
}

/// Something that happened on the card, for the portal and the logs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CardEvent {
    /// The operation it belongs to; `None` for link events.
    pub operation: Option<u64>,
    pub kind: CardEventKind,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CardEventKind {
    /// The operation waits behind others; `position` 1 is next.
    Queued { position: usize },
    /// The operation was sent to the card.
    Started,
    /// The card is working on it.
    Processing,
    /// The card waits for the person to confirm.
    UpNeeded,
    /// The operation ended (successfully or not).
    Done,
    /// The card was found and initialised for the first time.
    Connected { device: String },
    /// The card came back after it was lost.
    Reconnected { device: String },
    /// The link to the card failed.
    Lost { reason: String },
}

/// The card's state as `/health` reports it.
#[derive(Debug, Clone, Serialize)]
pub struct CardHealth {
    /// `connected`, `busy` or `disconnected`.
    pub state: &'static str,
    pub device: String,
    pub restarts: u32,
    pub last_error: Option<String>,
    pub queued: usize,
    pub aaguid: Option<String>,
    pub versions: Vec<String>,
}

/// A CTAP2 operation for the card.
#[derive(Debug, Clone)]
pub enum CardOperation {
    MakeCredential(MakeCredentialRequest),
    GetAssertion(GetAssertionRequest),
}

#[derive(Debug)]
pub enum CardReply {
    MakeCredential(MakeCredentialResponse),
    GetAssertion(GetAssertionResponse),
}

/// The reason a card operation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CardError {
    #[error("card not connected ({0}); plug it in or check `cardgate card doctor`")]
    NotConnected(String),
    #[error("the card is busy with {limit} waiting operations; try again shortly")]
    QueueFull { limit: usize },
    #[error("an operation for {0} is already waiting on the card; confirm or cancel it first")]
    AlreadyWaiting(String),
    #[error("the person at the card declined")]
    Denied,
    #[error("nobody confirmed on the card within {} s; try again and confirm on the card", .0.as_secs_f64())]
    Timeout(Duration),
    #[error("the card operation was cancelled")]
    Cancelled,
    #[error("the card has no credential for this user and relying party")]
    NoCredentials,
    #[error("the card rejected the request: {0}")]
    Status(String),
    #[error("the card sent an invalid response: {0}")]
    Protocol(String),
    #[error("the card was lost during the operation ({0}); try again once it is connected")]
    Lost(String),
    #[error("the proxy is shutting down; retry once it is back")]
    ShuttingDown,
}

impl From<CardError> for ApiError {
    fn from(e: CardError) -> Self {
        let text = e.to_string();
        match e {
            CardError::NotConnected(_) | CardError::Lost(_) => ApiError::CardNotConnected(text),
            CardError::QueueFull { .. } => ApiError::CardBusy(text),
            CardError::AlreadyWaiting(_) => ApiError::Conflict(text),
            CardError::Denied => ApiError::CardDenied(text),
            CardError::Timeout(_) => ApiError::CardTimeout(text),
            CardError::Cancelled => ApiError::CardCancelled(text),
            CardError::NoCredentials => ApiError::Forbidden(text),
            CardError::Status(_) | CardError::Protocol(_) => ApiError::CardFailed(text),
            CardError::ShuttingDown => ApiError::Unavailable(text),
        }
    }
}

// Messages.

/// Runs one operation on the card.
#[derive(Message)]
#[rtype(result = "Result<CardReply, CardError>")]
pub struct Run {
    /// Id for events about this operation.
    pub id: u64,
    pub operation: CardOperation,
    /// The user it is for; a second operation for the same user is
    /// rejected while one waits, so one touch can never approve two.
    pub owner: Option<String>,
    /// Set by the caller to abandon the operation (the client went away or
    /// pressed Cancel); the card then gets CTAPHID CANCEL.
    pub cancel: Arc<AtomicBool>,
    /// Wait up to the login grace period for a reconnecting card instead of
    /// failing at once.
    pub wait_for_card: bool,
}

/// Returns the card's state for `/health`.
#[derive(Message)]
#[rtype(result = "CardHealth")]
pub struct GetHealth;

/// Cancels the operation on the card (the card gets CTAPHID CANCEL) and
/// every queued one, and rejects new operations, for a graceful stop.
/// Returns how many operations were cancelled.
#[derive(Message)]
#[rtype(result = "usize")]
pub struct Shutdown;

struct Job {
    id: u64,
    operation: CardOperation,
    owner: Option<String>,
    cancel: Arc<AtomicBool>,
    deadline: Instant,
    /// While no card is connected, the job fails once this passes.
    connect_by: Instant,
    reply: oneshot::Sender<Result<CardReply, CardError>>,
}

/// State of the link to the card.
enum Link {
    /// No card yet: discovery runs with backoff.
    AwaitingCard,
    /// The card is initialised and idle.
    Ready(Box<CtapHidDevice>),
    /// The device is lent to the blocking task running this operation.
    Running {
        owner: Option<String>,
        cancel: Arc<AtomicBool>,
    },
}

pub struct CardActor {
    connector: Arc<dyn Connector>,
    settings: CardSettings,
    events: broadcast::Sender<CardEvent>,
    link: Link,
    info: Option<GetInfo>,
    queue: VecDeque<Job>,
    restarts: u32,
    last_error: Option<String>,
    backoff: Duration,
    ever_connected: bool,
    /// Set by [`Shutdown`]: no new operation is accepted.
    shutting_down: bool,
}

impl CardActor {
    pub fn new(
        connector: Arc<dyn Connector>,
        settings: CardSettings,
        events: broadcast::Sender<CardEvent>,
    ) -> Self {
        CardActor {
            connector,
            settings,
            events,
            link: Link::AwaitingCard,
            info: None,
            queue: VecDeque::new(),
            restarts: 0,
            last_error: None,
            backoff: RECONNECT_FIRST_BACKOFF,
            ever_connected: false,
            shutting_down: false,
        }
    }

    /// Starts the actor under a supervisor that restarts it when the card
    /// is lost.
    pub fn start_supervised(self) -> Addr<CardActor> {
        Supervisor::start(|_| self)
    }

    fn emit(&self, operation: Option<u64>, kind: CardEventKind) {
        // No subscriber is not an error: events are informational.
        let _ = self.events.send(CardEvent { operation, kind });
    }

    fn is_connected(&self) -> bool {
        !matches!(self.link, Link::AwaitingCard)
    }

    /// Finds the card, runs INIT and getInfo on the blocking pool, and
    /// retries with capped exponential backoff until it succeeds.
    fn discover(&mut self, ctx: &mut Context<Self>) {
        let connector = self.connector.clone();
        let timing = self.settings.timing.clone();
        let task = actix_rt::task::spawn_blocking(move || open_card(connector.as_ref(), timing));
        ctx.spawn(task.into_actor(self).map(|joined, actor, ctx| {
            let result = joined.unwrap_or_else(|e| Err(format!("card discovery task failed: {e}")));
            match result {
                Ok((device, info)) => actor.on_connected(device, info, ctx),
                Err(reason) => {
                    if actor.last_error.as_deref() != Some(reason.as_str()) {
                        tracing::warn!(device = %actor.connector.describe(), error = %reason, retry_in = ?actor.backoff, "card not available");
                    }
                    actor.last_error = Some(reason);
                    let wait = actor.backoff;
                    actor.backoff = (actor.backoff * 2).min(actor.settings.reconnect_max_backoff);
                    ctx.run_later(wait, |actor, ctx| actor.discover(ctx));
                }
            }
        }));
    }

    fn on_connected(&mut self, device: CtapHidDevice, info: GetInfo, ctx: &mut Context<Self>) {
        let name = self.connector.describe();
        tracing::info!(
            device = %name,
            aaguid = %hex::encode(info.aaguid),
            versions = ?info.versions,
            "card connected"
        );
        let kind = if self.ever_connected {
            CardEventKind::Reconnected { device: name }
        } else {
            CardEventKind::Connected { device: name }
        };
        self.emit(None, kind);
        self.ever_connected = true;
        self.backoff = RECONNECT_FIRST_BACKOFF;
        self.info = Some(info);
        self.link = Link::Ready(Box::new(device));
        self.next(ctx);
    }

    /// Replies to jobs that were cancelled or ran out of time while queued.
    fn sweep_queue(&mut self) {
        let now = Instant::now();
        let connected = self.is_connected();
        let mut kept = VecDeque::with_capacity(self.queue.len());
        for job in self.queue.drain(..) {
            let outcome = if job.cancel.load(Ordering::Relaxed) {
                Some(CardError::Cancelled)
            } else if now >= job.deadline {
                Some(CardError::Timeout(self.settings.confirm_timeout))
            } else if !connected && now >= job.connect_by {
                Some(CardError::NotConnected(
                    self.last_error
                        .clone()
                        .unwrap_or_else(|| "no card found".into()),
                ))
            } else {
                None
            };
            match outcome {
                Some(error) => {
                    let _ = self.events.send(CardEvent {
                        operation: Some(job.id),
                        kind: CardEventKind::Done,
                    });
                    let _ = job.reply.send(Err(error));
                }
                None => kept.push_back(job),
            }
        }
        self.queue = kept;
    }

    /// Starts the next queued job if the card is idle.
    fn next(&mut self, ctx: &mut Context<Self>) {
        self.sweep_queue();
        if !matches!(self.link, Link::Ready(_)) {
            return;
        }
        let Some(job) = self.queue.pop_front() else {
            return;
        };
        let Link::Ready(mut device) = std::mem::replace(
            &mut self.link,
            Link::Running {
                owner: job.owner.clone(),
                cancel: job.cancel.clone(),
            },
        ) else {
            return;
        };
        for (position, waiting) in self.queue.iter().enumerate() {
            self.emit(
                Some(waiting.id),
                CardEventKind::Queued {
                    position: position + 1,
                },
            );
        }

        self.emit(Some(job.id), CardEventKind::Started);
        let events = self.events.clone();
        let Job {
            id,
            operation,
            cancel,
            deadline,
            reply,
            ..
        } = job;
        let confirm_timeout = self.settings.confirm_timeout;
        let task = actix_rt::task::spawn_blocking(move || {
            let result = run_operation(
                &mut device,
                &operation,
                id,
                &events,
                &cancel,
                deadline,
                confirm_timeout,
            );
            (device, result)
        });
        ctx.spawn(task.into_actor(self).map(move |joined, actor, ctx| {
            actor.emit(Some(id), CardEventKind::Done);
            let (device, result) = match joined {
                Ok(pair) => pair,
                Err(e) => {
                    let error = CardError::Lost(format!("card task failed: {e}"));
                    let _ = reply.send(Err(error.clone()));
                    actor.lose_card(error.to_string(), ctx);
                    return;
                }
            };
            match result {
                Err(RunError::Lost(reason)) => {
                    let _ = reply.send(Err(CardError::Lost(reason.clone())));
                    actor.lose_card(reason, ctx);
                }
                Err(RunError::Card(error)) => {
                    let error = match error {
                        CardError::Cancelled if actor.shutting_down => CardError::ShuttingDown,
                        other => other,
                    };
                    let _ = reply.send(Err(error));
                    actor.link = Link::Ready(device);
                    actor.next(ctx);
                }
                Ok(answer) => {
                    let _ = reply.send(Ok(answer));
                    actor.link = Link::Ready(device);
                    actor.next(ctx);
                }
            }
        }));
    }

    /// Pings the card when it is idle; a failed ping counts as a lost card.
    fn heartbeat(&mut self, ctx: &mut Context<Self>) {
        if !self.queue.is_empty() || !matches!(self.link, Link::Ready(_)) {
            return;
        }
        let Link::Ready(mut device) = std::mem::replace(
            &mut self.link,
            Link::Running {
                owner: None,
                cancel: Arc::new(AtomicBool::new(false)),
            },
        ) else {
            return;
        };
        let task = actix_rt::task::spawn_blocking(move || {
            let result = device.ping(b"cardgate heartbeat");
            (device, result)
        });
        ctx.spawn(
            task.into_actor(self)
                .map(|joined, actor, ctx| match joined {
                    Ok((device, Ok(_))) => {
                        actor.link = Link::Ready(device);
                        actor.next(ctx);
                    }
                    Ok((_, Err(e))) => actor.lose_card(
                        format!("the card did not respond to a heartbeat PING: {e}"),
                        ctx,
                    ),
                    Err(e) => actor.lose_card(format!("heartbeat task failed: {e}"), ctx),
                }),
        );
    }

    /// Records the failure and stops; the supervisor restarts the actor.
    fn lose_card(&mut self, reason: String, ctx: &mut Context<Self>) {
        tracing::warn!(device = %self.connector.describe(), error = %reason, "card lost");
        self.emit(
            None,
            CardEventKind::Lost {
                reason: reason.clone(),
            },
        );
        self.last_error = Some(reason);
        self.link = Link::AwaitingCard;
        ctx.stop();
    }
}

/// Why a run failed: either the link is gone (restart) or the operation
/// failed on a working link.
enum RunError {
    Lost(String),
    Card(CardError),
}

/// Connects, runs INIT and getInfo; returns a human-readable reason on
/// failure.
fn open_card(
    connector: &dyn Connector,
    timing: Timing,
) -> Result<(CtapHidDevice, GetInfo), String> {
    let transport = connector.connect().map_err(|e| e.to_string())?;
    let mut device = CtapHidDevice::open(transport, timing).map_err(|e| e.to_string())?;
    let never = AtomicBool::new(false);
    let deadline = Instant::now() + Duration::from_secs(5);
    let response = device
        .cbor(&[get_info::COMMAND], &mut |_| {}, &never, deadline)
        .map_err(|e| format!("getInfo failed: {e}"))?;
    let body = split_status(&response).map_err(|e| format!("getInfo failed: {e}"))?;
    let info = GetInfo::parse(body).map_err(|e| format!("getInfo response is invalid: {e}"))?;
    if let Some(max) = info.max_msg_size {
        device.set_max_msg_size(usize::try_from(max).unwrap_or(usize::MAX));
    }
    Ok((device, info))
}

fn run_operation(
    device: &mut CtapHidDevice,
    operation: &CardOperation,
    id: u64,
    events: &broadcast::Sender<CardEvent>,
    cancel: &AtomicBool,
    deadline: Instant,
    confirm_timeout: Duration,
) -> Result<CardReply, RunError> {
    let request = match operation {
        CardOperation::MakeCredential(r) => r.encode(),
        CardOperation::GetAssertion(r) => r.encode(),
    };
    let mut on_keepalive = |status: KeepaliveStatus| {
        let kind = match status {
            KeepaliveStatus::UpNeeded => CardEventKind::UpNeeded,
            _ => CardEventKind::Processing,
        };
        let _ = events.send(CardEvent {
            operation: Some(id),
            kind,
        });
    };
    let response = device
        .cbor(&request, &mut on_keepalive, cancel, deadline)
        .map_err(|e| device_error(e, confirm_timeout))?;
    let body =
        split_status(&response).map_err(|e| RunError::Card(status_error(e, confirm_timeout)))?;
    let reply = match operation {
        CardOperation::MakeCredential(_) => {
            MakeCredentialResponse::parse(body).map(CardReply::MakeCredential)
        }
        CardOperation::GetAssertion(_) => {
            GetAssertionResponse::parse(body).map(CardReply::GetAssertion)
        }
    };
    reply.map_err(|e| RunError::Card(CardError::Protocol(e.to_string())))
}

fn device_error(e: DeviceError, confirm_timeout: Duration) -> RunError {
    if e.is_device_lost() {
        return RunError::Lost(e.to_string());
    }
    RunError::Card(match e {
        DeviceError::Timeout { .. } => CardError::Timeout(confirm_timeout),
        DeviceError::Cancelled => CardError::Cancelled,
        other => CardError::Protocol(other.to_string()),
    })
}

fn status_error(e: CtapError, confirm_timeout: Duration) -> CardError {
    match e {
        CtapError::Status(CtapStatus::OperationDenied) => CardError::Denied,
        CtapError::Status(CtapStatus::UserActionTimeout) => CardError::Timeout(confirm_timeout),
        CtapError::Status(CtapStatus::KeepaliveCancel) => CardError::Cancelled,
        CtapError::Status(CtapStatus::NoCredentials) => CardError::NoCredentials,
        CtapError::Status(status) => CardError::Status(format!(
            "status 0x{:02X}: {}",
            status.code(),
            status.description()
        )),
        other => CardError::Protocol(other.to_string()),
    }
}

impl Actor for CardActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.run_interval(QUEUE_SWEEP_INTERVAL, |actor, _| actor.sweep_queue());
        ctx.run_interval(HEARTBEAT_INTERVAL, |actor, ctx| actor.heartbeat(ctx));
        self.discover(ctx);
    }
}

impl Supervised for CardActor {
    fn restarting(&mut self, _: &mut Self::Context) {
        self.restarts += 1;
        self.info = None;
        self.link = Link::AwaitingCard;
        // Queued jobs stay: those allowed to wait for a reconnect keep their
        // place, the others fail at the next sweep.
        tracing::info!(restarts = self.restarts, "card actor restarting");
    }
}

impl Handler<Run> for CardActor {
    type Result = ResponseFuture<Result<CardReply, CardError>>;

    fn handle(&mut self, msg: Run, ctx: &mut Self::Context) -> Self::Result {
        let fail = |e| -> Self::Result { Box::pin(async move { Err(e) }) };

        if self.shutting_down {
            return fail(CardError::ShuttingDown);
        }
        if !self.is_connected() && !msg.wait_for_card {
            let reason = self
                .last_error
                .clone()
                .unwrap_or_else(|| "no card found yet".into());
            return fail(CardError::NotConnected(reason));
        }
        if let Some(owner) = &msg.owner {
            let running = matches!(&self.link, Link::Running { owner: Some(o), .. } if o == owner);
            let queued = self.queue.iter().any(|j| j.owner.as_ref() == Some(owner));
            if running || queued {
                return fail(CardError::AlreadyWaiting(owner.clone()));
            }
        }
        if self.queue.len() >= self.settings.queue_limit {
            return fail(CardError::QueueFull {
                limit: self.settings.queue_limit,
            });
        }

        let now = Instant::now();
        let (reply, answer) = oneshot::channel();
        let grace = if msg.wait_for_card {
            self.settings.login_grace
        } else {
            Duration::ZERO
        };
        self.queue.push_back(Job {
            id: msg.id,
            operation: msg.operation,
            owner: msg.owner,
            cancel: msg.cancel,
            deadline: now + self.settings.confirm_timeout,
            connect_by: now + grace,
            reply,
        });
        let position = self.queue.len();
        if !matches!(self.link, Link::Ready(_)) {
            self.emit(Some(msg.id), CardEventKind::Queued { position });
        }
        self.next(ctx);

        Box::pin(async move {
            answer
                .await
                .unwrap_or_else(|_| Err(CardError::Lost("the card actor stopped".into())))
        })
    }
}

impl Handler<Shutdown> for CardActor {
    type Result = usize;

    fn handle(&mut self, _: Shutdown, _: &mut Self::Context) -> usize {
        self.shutting_down = true;
        let mut cancelled = 0;
        if let Link::Running { cancel, .. } = &self.link {
            cancel.store(true, Ordering::Relaxed);
            cancelled += 1;
        }
        for job in self.queue.drain(..) {
            let _ = self.events.send(CardEvent {
                operation: Some(job.id),
                kind: CardEventKind::Done,
            });
            let _ = job.reply.send(Err(CardError::ShuttingDown));
            cancelled += 1;
        }
        tracing::info!(cancelled, "card operations cancelled for shutdown");
        cancelled
    }
}

impl Handler<GetHealth> for CardActor {
    type Result = MessageResult<GetHealth>;

    fn handle(&mut self, _: GetHealth, _: &mut Self::Context) -> Self::Result {
        let state = match self.link {
            Link::AwaitingCard => "disconnected",
            Link::Ready(_) => "connected",
            Link::Running { .. } => "busy",
        };
        MessageResult(CardHealth {
            state,
            device: self.connector.describe(),
            restarts: self.restarts,
            last_error: self.last_error.clone(),
            queued: self.queue.len(),
            aaguid: self.info.as_ref().map(|i| hex::encode(i.aaguid)),
            versions: self
                .info
                .as_ref()
                .map(|i| i.versions.clone())
                .unwrap_or_default(),
        })
    }
}
