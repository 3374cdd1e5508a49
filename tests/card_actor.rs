//! The card actor against the in-process simulated card: queueing, one
//! operation per user, deadlines, cancellation, and restart after the card
//! is unplugged.

use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::Addr;
use tokio::sync::broadcast;

use cardgate::actors::card::{
    CardActor, CardError, CardEvent, CardEventKind, CardOperation, CardReply, CardSettings,
    GetHealth, Run,
};
use cardgate::ctap::device::Timing;
use cardgate::ctap::make_credential::MakeCredentialRequest;
use cardgate::ctap::sim::engine::Presence;
use cardgate::ctap::transport::{self, DeviceSpec, SimCard, SimHandle};

fn settings(confirm: Duration, queue_limit: usize) -> CardSettings {
    CardSettings {
        confirm_timeout: confirm,
        queue_limit,
        login_grace: Duration::from_secs(3),
        reconnect_max_backoff: Duration::from_millis(200),
        timing: Timing::default(),
    }
}

fn start(
    presence: Presence,
    settings: CardSettings,
) -> (Addr<CardActor>, SimHandle, broadcast::Receiver<CardEvent>) {
    let sim = SimCard::spawn_authenticator(None, presence).unwrap();
    let connector = transport::connector(&DeviceSpec::Sim, Some(sim.clone())).unwrap();
    let (events, receiver) = broadcast::channel(1024);
    let card = CardActor::new(Arc::from(connector), settings, events).start_supervised();
    (card, sim, receiver)
}

fn make_credential(user: &str) -> CardOperation {
    CardOperation::MakeCredential(MakeCredentialRequest {
        client_data_hash: [7; 32],
        rp_id: "localhost".into(),
        rp_name: "cardgate".into(),
        user_id: user.as_bytes().to_vec(),
        user_name: user.into(),
        user_display_name: user.into(),
        exclude_list: Vec::new(),
        uv: true,
    })
}

fn run(id: u64, user: &str) -> Run {
    Run {
        id,
        operation: make_credential(user),
        owner: Some(user.into()),
        cancel: Arc::new(AtomicBool::new(false)),
        wait_for_card: false,
    }
}

async fn wait_for_state(card: &Addr<CardActor>, state: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if card.send(GetHealth).await.unwrap().state == state {
            return;
        }
        actix_rt::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("card did not reach state {state} within 10 s");
}

#[actix_rt::test]
async fn make_credential_returns_attested_credential() {
    let (card, _sim, _) = start(Presence::Approve, settings(Duration::from_secs(5), 8));
    wait_for_state(&card, "connected").await;
    let reply = card.send(run(1, "alice")).await.unwrap().unwrap();
    let CardReply::MakeCredential(response) = reply else {
        panic!("expected a makeCredential reply");
    };
    assert!(response.auth_data.attested.is_some());
    assert!(response.auth_data.flags.uv(), "uv was requested");
    let health = card.send(GetHealth).await.unwrap();
    assert_eq!(
        health.aaguid.as_deref(),
        Some("1234567890abcdef0123456789abcdef")
    );
}

#[actix_rt::test]
async fn card_actor_restarts_after_unplug_and_works_after_replug() {
    let (card, sim, mut events) = start(Presence::Approve, settings(Duration::from_secs(5), 8));
    wait_for_state(&card, "connected").await;

    sim.unplug();
    let during = card.send(run(1, "alice")).await.unwrap();
    assert!(
        matches!(
            during,
            Err(CardError::Lost(_)) | Err(CardError::NotConnected(_))
        ),
        "{during:?}"
    );
    wait_for_state(&card, "disconnected").await;
    let failed_fast = Instant::now();
    let refused = card.send(run(2, "alice")).await.unwrap();
    assert!(
        matches!(refused, Err(CardError::NotConnected(_))),
        "{refused:?}"
    );
    assert!(
        failed_fast.elapsed() < Duration::from_millis(500),
        "must fail at once"
    );

    sim.replug();
    wait_for_state(&card, "connected").await;
    let health = card.send(GetHealth).await.unwrap();
    assert!(health.restarts >= 1, "{health:?}");
    card.send(run(3, "alice")).await.unwrap().unwrap();

    let mut saw_lost = false;
    let mut saw_reconnected = false;
    while let Ok(event) = events.try_recv() {
        match event.kind {
            CardEventKind::Lost { .. } => saw_lost = true,
            CardEventKind::Reconnected { .. } => saw_reconnected = true,
            _ => {}
        }
    }
    assert!(saw_lost, "a Lost event must be sent");
    assert!(saw_reconnected, "a Reconnected event must be sent");
}

#[actix_rt::test]
async fn waiting_operation_survives_a_short_unplug_within_grace() {
    let (card, sim, _) = start(Presence::Approve, settings(Duration::from_secs(5), 8));
    wait_for_state(&card, "connected").await;
    sim.unplug();
    // Let the actor notice the loss through a failed operation.
    let _ = card.send(run(1, "alice")).await.unwrap();
    wait_for_state(&card, "disconnected").await;

    let mut waiting = run(2, "alice");
    waiting.wait_for_card = true;
    let pending = card.send(waiting);
    actix_rt::time::sleep(Duration::from_millis(300)).await;
    sim.replug();
    let result = pending.await.unwrap();
    assert!(
        result.is_ok(),
        "the login grace must cover a reconnect: {result:?}"
    );
}

#[actix_rt::test]
async fn second_operation_for_same_user_is_rejected() {
    let (card, _sim, _) = start(
        Presence::Delay(Duration::from_millis(600)),
        settings(Duration::from_secs(5), 8),
    );
    wait_for_state(&card, "connected").await;
    let first = card.send(run(1, "alice"));
    actix_rt::time::sleep(Duration::from_millis(100)).await;
    let second = card.send(run(2, "alice")).await.unwrap();
    assert!(
        matches!(second, Err(CardError::AlreadyWaiting(ref u)) if u == "alice"),
        "{second:?}"
    );
    assert!(first.await.unwrap().is_ok());
}

#[actix_rt::test]
async fn operations_for_different_users_run_in_arrival_order() {
    let (card, _sim, mut events) = start(
        Presence::Delay(Duration::from_millis(150)),
        settings(Duration::from_secs(10), 8),
    );
    wait_for_state(&card, "connected").await;
    let calls: Vec<_> = ["ann", "ben", "cat"]
        .iter()
        .enumerate()
        .map(|(i, user)| card.send(run(i as u64 + 1, user)))
        .collect();
    for call in calls {
        call.await.unwrap().unwrap();
    }
    let mut started = Vec::new();
    while let Ok(event) = events.try_recv() {
        if event.kind == CardEventKind::Started {
            started.push(event.operation.unwrap());
        }
    }
    assert_eq!(started, vec![1, 2, 3]);
}

#[actix_rt::test]
async fn full_queue_is_rejected_as_busy() {
    let (card, _sim, _) = start(
        Presence::Delay(Duration::from_millis(500)),
        settings(Duration::from_secs(10), 1),
    );
    wait_for_state(&card, "connected").await;
    let running = card.send(run(1, "ann"));
    actix_rt::time::sleep(Duration::from_millis(100)).await;
    let queued = card.send(run(2, "ben"));
    actix_rt::time::sleep(Duration::from_millis(50)).await;
    let rejected = card.send(run(3, "cat")).await.unwrap();
    assert_eq!(rejected.unwrap_err(), CardError::QueueFull { limit: 1 });
    assert!(running.await.unwrap().is_ok());
    assert!(queued.await.unwrap().is_ok());
}

#[actix_rt::test]
async fn unanswered_operation_times_out_and_card_stays_usable() {
    let (card, sim, _) = start(Presence::Never, settings(Duration::from_millis(400), 8));
    wait_for_state(&card, "connected").await;
    let started = Instant::now();
    let result = card.send(run(1, "alice")).await.unwrap();
    assert!(matches!(result, Err(CardError::Timeout(_))), "{result:?}");
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "took {:?}",
        started.elapsed()
    );

    // The abandoned request was cancelled and drained: the next one works.
    sim.set_presence(Presence::Approve);
    card.send(run(2, "alice")).await.unwrap().unwrap();
}

#[actix_rt::test]
async fn cancel_flag_cancels_on_the_card() {
    let (card, _sim, _) = start(Presence::Never, settings(Duration::from_secs(10), 8));
    wait_for_state(&card, "connected").await;
    let operation = run(1, "alice");
    let cancel = operation.cancel.clone();
    let pending = card.send(operation);
    actix_rt::time::sleep(Duration::from_millis(200)).await;
    cancel.store(true, std::sync::atomic::Ordering::Relaxed);
    let result = pending.await.unwrap();
    assert_eq!(result.unwrap_err(), CardError::Cancelled);
}

#[actix_rt::test]
async fn denied_operation_is_reported_as_denied() {
    let (card, _sim, _) = start(Presence::Deny, settings(Duration::from_secs(5), 8));
    wait_for_state(&card, "connected").await;
    let result = card.send(run(1, "alice")).await.unwrap();
    assert_eq!(result.unwrap_err(), CardError::Denied);
}

#[actix_rt::test]
async fn idle_card_loss_is_noticed_without_an_operation() {
    let (card, sim, _) = start(Presence::Approve, settings(Duration::from_secs(5), 8));
    wait_for_state(&card, "connected").await;
    sim.unplug();
    // The heartbeat PING runs every 5 s; wait_for_state allows 10 s.
    wait_for_state(&card, "disconnected").await;
    let health = card.send(GetHealth).await.unwrap();
    assert!(health.last_error.is_some(), "{health:?}");
    sim.replug();
    wait_for_state(&card, "connected").await;
}
