//! The protected counter: a monotonic `u64` that k_server hands out, one
//! value per request, starting at 1.
//!
//! A value is returned only after the write that covers it is durable.
//! Writes use group commit: while one batch is being written, new requests
//! wait, and the next batch reserves all of their values with one write and
//! one sync. A restart continues after the last durable value.
//!
//! NOTE: if the process dies after a batch is durable but before its
//! replies reach the clients, those values are never delivered, and the
//! restarted counter continues after them. No value is ever handed out
//! twice.

use std::panic::AssertUnwindSafe;
use std::path::Path;
use std::sync::Arc;

use actix::prelude::*;
use serde::Serialize;
use tokio::sync::oneshot;

use crate::actors::counter_store::FileStore;
use crate::error::ApiError;
use crate::metrics::ServerMetrics;

/// Increments that may wait for the next batch before new ones are
/// rejected.
///
/// NOTE: this bounds only the increments the actor has read. While a write
/// blocks the actor's thread, new increments queue in its mailbox, which
/// has no bound here. Each of them is an open HTTP request, so the server's
/// connection limits bound them, and the HTTP handler gives up after its
/// own timeout.
pub const MAX_WAITING: usize = 65_536;

/// Reserves the next value. Resolves once the value is durable.
#[derive(Debug, Message)]
#[rtype(result = "Result<u64, CounterError>")]
pub struct Increment;

/// Returns the counter's [`CounterStats`].
#[derive(Debug, Message)]
#[rtype(result = "CounterStats")]
pub struct Stats;

/// Writes the increments already received, closes the store and stops the
/// actor. Resolves after the store is closed, so the same path can be
/// opened again.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct Close;

/// Counts since the actor started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct CounterStats {
    /// Last durable value handed out, or loaded at start.
    pub value: u64,
    /// Batches written and flushed successfully.
    pub batches: u64,
    /// Values handed out.
    pub increments: u64,
    /// Values in the largest successful batch.
    pub largest_batch: u64,
    /// Batches whose write or flush failed.
    pub failed_batches: u64,
    /// Increments waiting for the next batch.
    pub waiting: usize,
    /// Whether the store is open; it closes after [`Close`] or a failed
    /// store task.
    pub open: bool,
}

/// Error of an increment that returned no value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CounterError {
    #[error("counter store failed: {0}")]
    Storage(String),
    #[error("counter store is corrupt: {0}")]
    Corrupt(String),
    #[error("counter reached its maximum value {}", u64::MAX)]
    Exhausted,
    #[error("{limit} increments are already waiting for the store; retry later")]
    Overloaded { limit: usize },
    #[error("counter is closed")]
    Closed,
    #[error("counter stopped before the increment finished")]
    Stopped,
}

impl From<CounterError> for ApiError {
    fn from(error: CounterError) -> Self {
        match error {
            CounterError::Storage(_) | CounterError::Corrupt(_) | CounterError::Exhausted => {
                ApiError::Storage(error.to_string())
            }
            CounterError::Overloaded { .. } | CounterError::Closed | CounterError::Stopped => {
                ApiError::Unavailable(error.to_string())
            }
        }
    }
}

/// Durable storage of the counter's last reserved value.
///
/// Calls run on the counter actor's thread, one at a time.
pub trait CounterStore: Send + 'static {
    /// Reads the stored value, which is 0 when nothing is stored yet.
    fn load(&mut self) -> Result<u64, CounterError>;

    /// Stores `value` and returns once it is durable. On error the store
    /// keeps its previous value, or a larger one: a later load must never
    /// return less than the last value stored successfully.
    fn store(&mut self, value: u64) -> Result<(), CounterError>;
}

type Waiter = oneshot::Sender<Result<u64, CounterError>>;

/// Actor that owns the counter store and hands out its values, as the
/// module documentation describes.
///
/// The actor writes each batch on its own thread and blocks that thread
/// until the write is durable, so it must run on an arbiter of its own
/// (see [`CounterActor::start_on_own_thread`]). Handing the write to a
/// blocking pool instead would add two thread wake-ups to every batch,
/// which at one client cost more CPU time than the write itself. While a
/// write runs, new increments wait in the mailbox. The next batch starts
/// once the mailbox has been read, so it takes all of them.
pub struct CounterActor {
    /// `None` once closed by [`Close`] or after the store panicked.
    store: Option<Box<dyn CounterStore>>,
    /// Last durable value handed out, or loaded at start.
    value: u64,
    /// Increments for the next batch, oldest first.
    waiting: Vec<Waiter>,
    max_waiting: usize,
    /// Whether a batch is scheduled to run after the mailbox is read.
    batch_scheduled: bool,
    /// Whether the actor runs on an arbiter of its own, which then stops
    /// with it.
    own_arbiter: bool,
    stats: CounterStats,
    /// Where batch sizes are recorded, when the server exports metrics.
    metrics: Option<Arc<ServerMetrics>>,
}

impl Handler<Increment> for CounterActor {
    type Result = ResponseFuture<Result<u64, CounterError>>;

    fn handle(&mut self, _: Increment, ctx: &mut Context<Self>) -> Self::Result {
        let queued = self.enqueue(ctx);
        Box::pin(async move {
            match queued {
                Ok(reply) => reply.await.unwrap_or(Err(CounterError::Stopped)),
                Err(error) => Err(error),
            }
        })
    }
}

impl Handler<Stats> for CounterActor {
    type Result = MessageResult<Stats>;

    fn handle(&mut self, _: Stats, _: &mut Context<Self>) -> Self::Result {
        MessageResult(CounterStats {
            value: self.value,
            waiting: self.waiting.len(),
            open: self.store.is_some(),
            ..self.stats
        })
    }
}

impl Handler<Close> for CounterActor {
    type Result = ();

    /// Writes the increments received so far as a last batch, then closes
    /// the store. The reply is sent after the store is closed.
    fn handle(&mut self, _: Close, ctx: &mut Context<Self>) {
        self.run_batch();
        self.store = None;
        ctx.stop();
    }
}

impl Actor for CounterActor {
    type Context = Context<Self>;

    fn started(&mut self, _: &mut Context<Self>) {
        tracing::info!(value = self.value, "counter started");
    }

    fn stopped(&mut self, _: &mut Context<Self>) {
        fail_all(std::mem::take(&mut self.waiting), &CounterError::Closed);
        tracing::info!(
            value = self.value,
            batches = self.stats.batches,
            increments = self.stats.increments,
            largest_batch = self.stats.largest_batch,
            failed_batches = self.stats.failed_batches,
            "counter stopped"
        );
        if self.own_arbiter {
            Arbiter::current().stop();
        }
    }
}

impl CounterActor {
    /// Opens (or creates) the counter file in the store folder `path`.
    pub fn open(path: &Path) -> Result<Self, CounterError> {
        Self::new(Box::new(FileStore::open(path)?))
    }

    /// Loads the last durable value from `store`.
    pub fn new(mut store: Box<dyn CounterStore>) -> Result<Self, CounterError> {
        let value = store.load()?;
        Ok(CounterActor {
            store: Some(store),
            value,
            waiting: Vec::new(),
            max_waiting: MAX_WAITING,
            batch_scheduled: false,
            own_arbiter: false,
            stats: CounterStats::default(),
            metrics: None,
        })
    }

    /// Records the size of each durable batch in `metrics`.
    pub fn with_metrics(mut self, metrics: Arc<ServerMetrics>) -> Self {
        self.metrics = Some(metrics);
        self
    }

    /// Sets how many increments may wait for the next batch.
    pub fn with_max_waiting(mut self, limit: usize) -> Self {
        self.max_waiting = limit;
        self
    }

    /// Starts the actor on a new arbiter, whose thread only this actor
    /// uses. The arbiter stops with the actor.
    pub fn start_on_own_thread(mut self) -> Addr<Self> {
        self.own_arbiter = true;
        let arbiter = Arbiter::new();
        Self::start_in_arbiter(&arbiter.handle(), move |_| self)
    }

    fn enqueue(
        &mut self,
        ctx: &mut Context<Self>,
    ) -> Result<oneshot::Receiver<Result<u64, CounterError>>, CounterError> {
        if self.store.is_none() {
            return Err(CounterError::Closed);
        }
        if self.waiting.len() >= self.max_waiting {
            return Err(CounterError::Overloaded {
                limit: self.max_waiting,
            });
        }

        let (waiter, reply) = oneshot::channel();
        self.waiting.push(waiter);
        if !self.batch_scheduled {
            // actix polls an actor's spawned futures after it has read its
            // mailbox, so the batch takes every increment queued by then.
            self.batch_scheduled = true;
            ctx.spawn(actix::fut::ready(()).map(|(), actor: &mut Self, _| actor.run_batch()));
        }
        Ok(reply)
    }

    /// Reserves values for every waiting increment, writes the last one
    /// and replies to each increment once the write is durable.
    fn run_batch(&mut self) {
        self.batch_scheduled = false;
        if self.waiting.is_empty() {
            return;
        }
        let waiters = std::mem::take(&mut self.waiting);
        let size = waiters.len() as u64;
        let Some(store) = self.store.as_mut() else {
            fail_all(waiters, &CounterError::Closed);
            return;
        };
        let Some(last) = self.value.checked_add(size) else {
            fail_all(waiters, &CounterError::Exhausted);
            return;
        };

        // A panicking store takes the counter down with it, but the
        // waiting clients still get an error instead of a dropped reply.
        let written = std::panic::catch_unwind(AssertUnwindSafe(|| store.store(last)));
        match written {
            Ok(Ok(())) => {
                let first = self.value + 1;
                self.value = last;
                self.stats.batches += 1;
                self.stats.increments += size;
                self.stats.largest_batch = self.stats.largest_batch.max(size);
                if let Some(metrics) = &self.metrics {
                    metrics.batch_sizes.observe(size);
                }
                tracing::debug!(first, last, size, "counter batch durable");

                // A waiter whose client has gone loses its value. Values
                // are never reused, so this leaves a gap but no duplicate.
                for (waiter, value) in waiters.into_iter().zip(first..=last) {
                    let _ = waiter.send(Ok(value));
                }
            }
            Ok(Err(error)) => {
                self.stats.failed_batches += 1;
                tracing::warn!(%error, size, value = self.value, "counter batch failed");
                fail_all(waiters, &error);
            }
            Err(_) => {
                self.store = None;
                self.stats.failed_batches += 1;
                let error = CounterError::Storage("the store panicked while writing".into());
                tracing::error!(%error, size, value = self.value, "counter closed");
                fail_all(waiters, &error);
            }
        }
    }
}

/// Replies `error` to each of `waiters`. A waiter whose client has gone is
/// skipped.
fn fail_all(waiters: Vec<Waiter>, error: &CounterError) {
    for waiter in waiters {
        let _ = waiter.send(Err(error.clone()));
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    use futures_util::future::join_all;

    use super::*;

    /// A store in memory whose writes take `delay` and fail while `fail`
    /// is set.
    #[derive(Clone, Default)]
    struct MemoryStore {
        value: Arc<Mutex<u64>>,
        writes: Arc<AtomicU64>,
        fail: Arc<AtomicBool>,
        delay: Duration,
    }

    impl CounterStore for MemoryStore {
        fn load(&mut self) -> Result<u64, CounterError> {
            Ok(*self.value.lock().expect("lock"))
        }

        fn store(&mut self, value: u64) -> Result<(), CounterError> {
            std::thread::sleep(self.delay);
            self.writes.fetch_add(1, Ordering::SeqCst);
            if self.fail.load(Ordering::SeqCst) {
                return Err(CounterError::Storage("disk full".to_owned()));
            }
            *self.value.lock().expect("lock") = value;
            Ok(())
        }
    }

    fn start(store: &MemoryStore) -> Addr<CounterActor> {
        CounterActor::new(Box::new(store.clone()))
            .expect("load")
            .start()
    }

    async fn increment(counter: &Addr<CounterActor>) -> Result<u64, CounterError> {
        counter.send(Increment).await.expect("actor running")
    }

    #[actix_rt::test]
    async fn increment_continues_after_loaded_value() {
        let store = MemoryStore::default();
        *store.value.lock().expect("lock") = 41;
        let counter = start(&store);

        assert_eq!(increment(&counter).await, Ok(42));
        assert_eq!(increment(&counter).await, Ok(43));
        assert_eq!(*store.value.lock().expect("lock"), 43);
    }

    #[actix_rt::test]
    async fn increments_during_write_share_next_batch() {
        let store = MemoryStore {
            delay: Duration::from_millis(300),
            ..MemoryStore::default()
        };
        let counter = CounterActor::new(Box::new(store.clone()))
            .expect("load")
            .start_on_own_thread();

        // The first increment starts a batch alone. The other 99 arrive
        // while its write blocks the actor's thread, and share the next.
        let first = counter.send(Increment);
        let rest = async {
            actix_rt::time::sleep(Duration::from_millis(30)).await;
            join_all((0..99).map(|_| counter.send(Increment))).await
        };
        let (first, rest) = tokio::join!(first, rest);
        let mut values: Vec<u64> = std::iter::once(first)
            .chain(rest)
            .map(|result| result.expect("actor running").expect("value"))
            .collect();
        values.sort_unstable();
        assert_eq!(values, (1..=100).collect::<Vec<_>>());

        let stats = counter.send(Stats).await.expect("stats");
        assert_eq!(stats.increments, 100);
        assert_eq!(stats.value, 100);
        assert_eq!(stats.batches, 2, "{stats:?}");
        assert_eq!(stats.largest_batch, 99, "{stats:?}");
        assert_eq!(store.writes.load(Ordering::SeqCst), 2);
        counter.send(Close).await.expect("close");
    }

    #[actix_rt::test]
    async fn failed_flush_fails_whole_batch_without_gap() {
        let store = MemoryStore {
            delay: Duration::from_millis(20),
            ..MemoryStore::default()
        };
        let counter = start(&store);
        assert_eq!(increment(&counter).await, Ok(1));

        store.fail.store(true, Ordering::SeqCst);
        let results = join_all((0..10).map(|_| counter.send(Increment))).await;
        for result in results {
            let error = result.expect("actor running").expect_err("store fails");
            assert_eq!(error, CounterError::Storage("disk full".to_owned()));
        }
        assert_eq!(*store.value.lock().expect("lock"), 1);

        store.fail.store(false, Ordering::SeqCst);
        assert_eq!(increment(&counter).await, Ok(2));
        let stats = counter.send(Stats).await.expect("stats");
        assert!(stats.failed_batches >= 1, "{stats:?}");
        assert_eq!(stats.increments, 2);
    }

    #[actix_rt::test]
    async fn increment_at_maximum_is_exhausted() {
        let store = MemoryStore::default();
        *store.value.lock().expect("lock") = u64::MAX;
        let counter = start(&store);

        assert_eq!(increment(&counter).await, Err(CounterError::Exhausted));
        assert_eq!(store.writes.load(Ordering::SeqCst), 0);
    }

    #[actix_rt::test]
    async fn increments_over_waiting_limit_are_rejected() {
        let store = MemoryStore {
            delay: Duration::from_millis(50),
            ..MemoryStore::default()
        };
        let counter = CounterActor::new(Box::new(store.clone()))
            .expect("load")
            .with_max_waiting(2)
            .start();

        // All four arrive before the batch starts: two may wait for it,
        // the others are over the limit.
        let results = join_all((0..4).map(|_| counter.send(Increment))).await;
        let outcomes: Vec<_> = results
            .into_iter()
            .map(|result| result.expect("actor running"))
            .collect();
        let over = Err(CounterError::Overloaded { limit: 2 });
        assert_eq!(outcomes, [Ok(1), Ok(2), over.clone(), over]);
        // The written batch no longer counts against the limit.
        assert_eq!(increment(&counter).await, Ok(3));
    }

    #[actix_rt::test]
    async fn close_writes_received_increments() {
        let store = MemoryStore {
            delay: Duration::from_millis(50),
            ..MemoryStore::default()
        };
        let counter = start(&store);

        let pending = counter.send(Increment);
        let closed = counter.send(Close);
        let (value, closed) = tokio::join!(pending, closed);
        assert_eq!(value.expect("actor running"), Ok(1));
        closed.expect("close replies");
        assert_eq!(*store.value.lock().expect("lock"), 1);
        assert!(counter.send(Increment).await.is_err(), "counter is stopped");
    }

    #[actix_rt::test]
    async fn file_store_reopens_at_last_value() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("counter");

        let counter = CounterActor::open(&path).expect("open").start();
        for expected in 1..=3 {
            assert_eq!(increment(&counter).await, Ok(expected));
        }
        counter.send(Close).await.expect("close");

        let counter = CounterActor::open(&path).expect("reopen after close");
        assert_eq!(counter.value, 3);
        let counter = counter.start();
        assert_eq!(increment(&counter).await, Ok(4));
    }
}
