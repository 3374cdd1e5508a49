//! Enrollment and login verification against a card that lies: the
//! simulated card's answers are altered on their way out, and every
//! alteration must make the ceremony fail.

use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::Addr;
use tokio::sync::broadcast;

use cardgate::actors::card::{CardActor, CardSettings, GetHealth};
use cardgate::actors::enrollments::EnrollmentsActor;
use cardgate::ctap::device::Timing;
use cardgate::ctap::get_assertion::{self, GetAssertionResponse};
use cardgate::ctap::sim::authenticator::SimAuthenticator;
use cardgate::ctap::sim::engine::Presence;
use cardgate::ctap::sim::{Ctap2Handler, PresenceOutcome, Step};
use cardgate::ctap::transport::{self, DeviceSpec, SimCard};
use cardgate::domain::Username;
use cardgate::error::ApiError;
use cardgate::http::proxy::ceremony::{Ceremony, RelyingParty};
use cardgate::metrics::{ProxyMetrics, RouteTable};

/// How the lying card alters its getAssertion responses.
#[derive(Clone, Copy)]
enum Lie {
    None,
    ClearUserPresent,
    ClearUserVerified,
    OtherRelyingParty,
    FlipSignatureBit,
    ForeignCredentialId,
}

struct LyingCard {
    inner: SimAuthenticator,
    lie: Lie,
    command: u8,
}

impl Ctap2Handler for LyingCard {
    type Pending = <SimAuthenticator as Ctap2Handler>::Pending;

    fn begin(&mut self, request: &[u8]) -> Step<Self::Pending> {
        self.command = request.first().copied().unwrap_or(0);
        self.inner.begin(request)
    }

    fn complete(&mut self, pending: Self::Pending, outcome: PresenceOutcome) -> Vec<u8> {
        let response = self.inner.complete(pending, outcome);
        if self.command != get_assertion::COMMAND || response.first() != Some(&0) {
            return response;
        }
        let Ok(mut parsed) = GetAssertionResponse::parse(&response[1..]) else {
            return response;
        };
        let raw = &mut parsed.auth_data.raw;
        match self.lie {
            Lie::None => {}
            Lie::ClearUserPresent => raw[32] &= !0x01,
            Lie::ClearUserVerified => raw[32] &= !0x04,
            Lie::OtherRelyingParty => raw[0] ^= 0xff,
            Lie::FlipSignatureBit => {
                let last = parsed.signature.len() - 1;
                parsed.signature[last] ^= 0x01;
            }
            Lie::ForeignCredentialId => parsed.credential_id = Some(vec![0xee; 49]),
        }
        let mut out = vec![0];
        out.extend(parsed.encode());
        out
    }
}

struct Rig {
    card: Addr<CardActor>,
    enrollments: Addr<EnrollmentsActor>,
    rp: RelyingParty,
    metrics: ProxyMetrics,
    _dir: tempfile::TempDir,
}

impl Rig {
    async fn start(lie: Lie) -> Rig {
        let dir = tempfile::tempdir().unwrap();
        let handler = LyingCard {
            inner: SimAuthenticator::open(None).unwrap(),
            lie,
            command: 0,
        };
        let sim = SimCard::spawn(handler, Presence::Approve);
        let connector = transport::connector(&DeviceSpec::Sim, Some(sim)).unwrap();
        let (events, _) = broadcast::channel(64);
        let settings = CardSettings {
            confirm_timeout: Duration::from_secs(5),
            queue_limit: 4,
            login_grace: Duration::from_secs(1),
            reconnect_max_backoff: Duration::from_millis(200),
            timing: Timing::default(),
        };
        let card = CardActor::new(Arc::from(connector), settings, events).start_supervised();
        let deadline = Instant::now() + Duration::from_secs(10);
        while card.send(GetHealth).await.unwrap().state != "connected" {
            assert!(
                Instant::now() < deadline,
                "the simulated card did not connect"
            );
            actix_rt::time::sleep(Duration::from_millis(20)).await;
        }
        let enrollments = EnrollmentsActor::start(dir.path().join("db")).unwrap();
        let rp = RelyingParty::new(
            "localhost".into(),
            "cardgate".into(),
            "https://localhost:8443".into(),
            true,
        );
        Rig {
            card,
            enrollments,
            rp,
            metrics: ProxyMetrics::new(RouteTable::new(&[])),
            _dir: dir,
        }
    }

    fn ceremony(&self) -> Ceremony<'_> {
        Ceremony {
            rp: &self.rp,
            card: &self.card,
            enrollments: &self.enrollments,
            metrics: &self.metrics,
            operation_id: 1,
            cancel: Arc::new(AtomicBool::new(false)),
        }
    }

    async fn enroll_and_login(&self) -> Result<(), ApiError> {
        let alice = Username::parse("alice").unwrap();
        self.ceremony()
            .enroll(alice.clone(), "Alice".into())
            .await?;
        self.ceremony().login(&alice).await
    }
}

#[actix_rt::test]
async fn honest_card_enrolls_and_logs_in_twice() {
    let rig = Rig::start(Lie::None).await;
    rig.enroll_and_login().await.unwrap();
    let alice = Username::parse("alice").unwrap();
    rig.ceremony().login(&alice).await.unwrap();
}

#[actix_rt::test]
async fn login_rejects_assertion_without_user_presence() {
    let rig = Rig::start(Lie::ClearUserPresent).await;
    let error = rig.enroll_and_login().await.unwrap_err();
    assert!(
        matches!(error, ApiError::CardFailed(ref m) if m.contains("UP flag")),
        "{error:?}"
    );
}

#[actix_rt::test]
async fn login_rejects_assertion_without_user_verification() {
    let rig = Rig::start(Lie::ClearUserVerified).await;
    let error = rig.enroll_and_login().await.unwrap_err();
    assert!(
        matches!(error, ApiError::CardFailed(ref m) if m.contains("UV flag")),
        "{error:?}"
    );
}

#[actix_rt::test]
async fn login_rejects_assertion_for_other_relying_party() {
    let rig = Rig::start(Lie::OtherRelyingParty).await;
    let error = rig.enroll_and_login().await.unwrap_err();
    assert!(
        matches!(error, ApiError::CardFailed(ref m) if m.contains("another relying party")),
        "{error:?}"
    );
}

#[actix_rt::test]
async fn login_rejects_bad_signature() {
    let rig = Rig::start(Lie::FlipSignatureBit).await;
    let error = rig.enroll_and_login().await.unwrap_err();
    assert!(
        matches!(error, ApiError::Forbidden(ref m) if m.contains("signature")),
        "{error:?}"
    );
}

#[actix_rt::test]
async fn login_rejects_credential_of_another_user() {
    let rig = Rig::start(Lie::ForeignCredentialId).await;
    let error = rig.enroll_and_login().await.unwrap_err();
    assert!(
        matches!(error, ApiError::CardFailed(ref m) if m.contains("not this user's")),
        "{error:?}"
    );
}
