//! The audit actor: the only writer of the proxy's audit trail.
//!
//! It owns the `audit` tree of the proxy's sled database through a clone of
//! the `sled::Db` handle that the enrollments actor also uses (sled allows
//! one process per database, so the two actors share it). Like the
//! enrollments actor it runs on a thread of its own, because sled calls
//! block.
//!
//! Callers use the [`Audit`] handle: it writes the event to the log under
//! the tracing target `audit` at once, inside the caller's span (so the
//! request id is on the line), and sends it to the actor to store. A
//! stored event is durable after sled's next flush (every 500 ms, sled's
//! default) or after [`Flush`], which a graceful stop sends.

use actix::prelude::*;
use tokio::sync::broadcast;

use crate::actors::card::{CardEvent, CardEventKind};
use crate::audit::{
    now_us, query_tree, AuditAction, AuditError, AuditEvent, AuditLog, AuditQuery, AuditRecord,
};

// Messages.

/// Stores one event that happened at `time_us`.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Record {
    pub time_us: u64,
    pub event: AuditEvent,
}

/// Returns the records that match a query.
#[derive(Message)]
#[rtype(result = "Result<Vec<AuditRecord>, AuditError>")]
pub struct Query(pub AuditQuery);

/// Makes every record stored so far (and the rest of the database) durable.
#[derive(Message)]
#[rtype(result = "Result<(), AuditError>")]
pub struct Flush;

/// Reads from the store to show that it works.
#[derive(Message)]
#[rtype(result = "Result<(), AuditError>")]
pub struct CheckStore;

pub struct AuditActor {
    db: sled::Db,
    log: AuditLog,
}

impl AuditActor {
    /// Opens the `audit` tree of `db` and starts the actor on a thread of
    /// its own.
    pub fn start(db: sled::Db) -> Result<Audit, AuditError> {
        let log = AuditLog::open(&db)?;
        let addr = SyncArbiter::start(1, move || AuditActor {
            db: db.clone(),
            log: log.clone(),
        });
        Ok(Audit { addr })
    }
}

impl Actor for AuditActor {
    type Context = SyncContext<Self>;

    fn stopping(&mut self, _: &mut Self::Context) -> Running {
        if let Err(e) = self.db.flush() {
            tracing::error!(error = %e, "flushing the audit trail failed at stop");
        }
        Running::Stop
    }
}

impl Handler<Record> for AuditActor {
    type Result = ();

    fn handle(&mut self, msg: Record, _: &mut Self::Context) {
        if let Err(e) = self.log.append(msg.time_us, msg.event) {
            // The event is already in the log; only the stored copy is lost.
            tracing::error!(target: "audit", error = %e, "storing an audit record failed");
        }
    }
}

impl Handler<Query> for AuditActor {
    type Result = Result<Vec<AuditRecord>, AuditError>;

    fn handle(&mut self, msg: Query, _: &mut Self::Context) -> Self::Result {
        query_tree(self.log.tree(), &msg.0)
    }
}

impl Handler<Flush> for AuditActor {
    type Result = Result<(), AuditError>;

    fn handle(&mut self, _: Flush, _: &mut Self::Context) -> Self::Result {
        self.db.flush()?;
        Ok(())
    }
}

impl Handler<CheckStore> for AuditActor {
    type Result = Result<(), AuditError>;

    fn handle(&mut self, _: CheckStore, _: &mut Self::Context) -> Self::Result {
        self.log.tree().last()?;
        Ok(())
    }
}

/// The address of the audit actor with the calls the proxy makes.
#[derive(Clone)]
pub struct Audit {
    addr: Addr<AuditActor>,
}

impl Audit {
    /// Logs `event` under the target `audit` and queues it for storing.
    pub fn record(&self, event: AuditEvent) {
        let dash = "-";
        tracing::info!(
            target: "audit",
            action = %event.action,
            outcome = %event.outcome,
            username = event.username.as_deref().unwrap_or(dash),
            reason = event.reason.as_deref().unwrap_or(dash),
            session = event.session.as_deref().unwrap_or(dash),
            "{}",
            event.details.as_deref().unwrap_or("")
        );
        // `do_send` ignores the mailbox limit, so that an audit record is
        // never dropped because the store is slow.
        self.addr.do_send(Record {
            time_us: now_us(),
            event,
        });
    }

    pub async fn query(&self, query: AuditQuery) -> Result<Vec<AuditRecord>, AuditError> {
        self.addr
            .send(Query(query))
            .await
            .map_err(|e| AuditError::Unavailable(format!("the audit actor did not respond: {e}")))?
    }

    /// Waits until every event recorded before this call is stored, then
    /// flushes the database.
    pub async fn flush(&self) -> Result<(), AuditError> {
        self.addr
            .send(Flush)
            .await
            .map_err(|e| AuditError::Unavailable(format!("the audit actor did not respond: {e}")))?
    }

    /// Returns `Err` with a sentence when a read from the store fails.
    pub async fn check_store(&self) -> Result<(), String> {
        match self.addr.send(CheckStore).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(e.to_string()),
            Err(e) => Err(format!("the audit actor did not respond: {e}")),
        }
    }
}

/// Records the card's link events (connected, reconnected, lost) until the
/// event channel closes. Runs on the current arbiter.
pub fn record_card_events(mut events: broadcast::Receiver<CardEvent>, audit: Audit) {
    actix_rt::spawn(async move {
        loop {
            let event = match events.recv().await {
                Ok(event) => event,
                Err(broadcast::error::RecvError::Lagged(missed)) => {
                    // Progress events of busy operations can crowd out a
                    // link event, which the trail then lacks.
                    tracing::warn!(
                        target: "audit",
                        missed,
                        "card events were missed; a card connected or lost event may be absent from the trail"
                    );
                    continue;
                }
                Err(broadcast::error::RecvError::Closed) => break,
            };
            let recorded = match event.kind {
                CardEventKind::Connected { device } => {
                    AuditEvent::success(AuditAction::CardConnected).details(device)
                }
                CardEventKind::Reconnected { device } => {
                    AuditEvent::success(AuditAction::CardConnected)
                        .details(format!("{device} (reconnected)"))
                }
                CardEventKind::Lost { reason } => {
                    AuditEvent::failure(AuditAction::CardLost, "card_lost").details(reason)
                }
                _ => continue,
            };
            audit.record(recorded);
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[actix_rt::test]
    async fn recorded_events_are_queryable_after_flush() {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = sled::open(dir.path().join("store")).expect("open sled");
        let audit = AuditActor::start(db).expect("start");
        audit.record(AuditEvent::success(AuditAction::Enroll).user("alice"));
        audit.record(AuditEvent::failure(AuditAction::Login, "card_denied").user("alice"));
        audit.flush().await.expect("flush");

        let records = audit.query(AuditQuery::default()).await.expect("query");
        let actions: Vec<(AuditAction, Option<&str>)> = records
            .iter()
            .map(|r| (r.event.action, r.event.reason.as_deref()))
            .collect();
        assert_eq!(
            actions,
            [
                (AuditAction::Enroll, None),
                (AuditAction::Login, Some("card_denied"))
            ]
        );
        assert_eq!(audit.check_store().await, Ok(()));
    }

    #[actix_rt::test]
    async fn card_link_events_are_recorded() {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = sled::open(dir.path().join("store")).expect("open sled");
        let audit = AuditActor::start(db).expect("start");
        let (sender, receiver) = broadcast::channel(16);
        record_card_events(receiver, audit.clone());

        let send = |kind| {
            sender
                .send(CardEvent {
                    operation: None,
                    kind,
                })
                .expect("send")
        };
        send(CardEventKind::Connected {
            device: "sim".into(),
        });
        send(CardEventKind::Started);
        send(CardEventKind::Lost {
            reason: "unplugged".into(),
        });

        let mut records = Vec::new();
        for _ in 0..50 {
            actix_rt::time::sleep(std::time::Duration::from_millis(10)).await;
            audit.flush().await.expect("flush");
            records = audit.query(AuditQuery::default()).await.expect("query");
            if records.len() >= 2 {
                break;
            }
        }
        let actions: Vec<AuditAction> = records.iter().map(|r| r.event.action).collect();
        assert_eq!(actions, [AuditAction::CardConnected, AuditAction::CardLost]);
        assert_eq!(records[1].event.details.as_deref(), Some("unplugged"));
    }
}
