//! Live views of sales for the event stream (`GET /v1/sales/{id}/events`).
//!
//! One watcher per watched sale per instance reads the sale (the same read
//! as `GET /v1/sales/{id}`) every `1 / FLASHGATE_EVENTS_MAX_HZ` seconds while
//! anyone watches, and fans a changed view out in memory (a
//! `tokio::sync::watch`: a slow subscriber skips to the newest view, it
//! never buffers). So Redis work follows the watched sales, not the
//! subscribers, and changes are coalesced to at most `MAX_HZ` per second,
//! the newest state winning. A watcher stops when its last subscriber
//! leaves; every stream ends when the instance shuts down.
//!
//! Why a watcher and not Redis pub/sub: the read is what subscribers get
//! anyway (one read per tick, not one per change), it needs no dedicated
//! subscribe connection per node, loses nothing on a reconnect, and works
//! unchanged on Redis Cluster (where PUBLISH goes to every node).

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::Duration;

use actix_web::web::Bytes;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::domain::SaleState;
use crate::ids::SaleId;
use crate::service::{Service, ServiceError};
use crate::telemetry::chain;

/// One read of a sale, shared by every subscriber; `encoded` is the wire
/// form, made once for all of them by the first that needs it (a `Bytes`:
/// each subscriber's stream takes a reference to it, not a copy).
#[derive(Debug)]
pub struct Snapshot {
    pub state: SaleState,
    pub encoded: OnceLock<Bytes>,
}

impl Snapshot {
    fn new(state: SaleState) -> Arc<Self> {
        Arc::new(Self {
            state,
            encoded: OnceLock::new(),
        })
    }
}

type Feed = watch::Receiver<Arc<Snapshot>>;

/// The watched sales of this instance.
pub struct Live {
    service: Service,
    every: Duration,
    max_subscribers: usize,
    subscribers: AtomicUsize,
    /// Woken when the last subscriber leaves (the shutdown waits for it).
    none_left: tokio::sync::Notify,
    feeds: Mutex<HashMap<SaleId, Feed>>,
    /// Ends every stream (the server begins to shut down).
    closing: CancellationToken,
    /// The runtime `Live` was made on (the process's main one): event
    /// streams that took their sockets run there, not on an HTTP worker's
    /// runtime, which stops as soon as its own connections are done.
    runtime: tokio::runtime::Handle,
}

/// A subscriber's feed of views. Dropping it leaves.
pub struct Subscription {
    pub feed: Feed,
    _seat: Seat,
}

/// One of the instance's subscriber places, given back on drop.
struct Seat(Arc<Live>);

impl Drop for Seat {
    fn drop(&mut self) {
        if self.0.subscribers.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.none_left.notify_waiters();
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SubscribeError {
    #[error("this instance has its maximum of {0} event-stream subscribers")]
    Full(usize),
    #[error(transparent)]
    Service(#[from] ServiceError),
}

impl Live {
    /// `max_hz`: views per second per sale at most (at least 1).
    pub fn new(
        service: Service,
        max_hz: u32,
        max_subscribers: usize,
        closing: CancellationToken,
    ) -> Arc<Self> {
        Arc::new(Self {
            service,
            every: Duration::from_secs(1) / max_hz.max(1),
            max_subscribers,
            subscribers: AtomicUsize::new(0),
            none_left: tokio::sync::Notify::new(),
            feeds: Mutex::new(HashMap::new()),
            closing,
            runtime: tokio::runtime::Handle::current(),
        })
    }

    /// Runs an event stream's task on the process's main runtime.
    pub fn spawn<F>(&self, stream: F)
    where
        F: std::future::Future<Output = ()> + Send + 'static,
    {
        self.runtime.spawn(stream);
    }

    pub fn subscribers(&self) -> usize {
        self.subscribers.load(Ordering::Relaxed)
    }

    /// Resolves once no subscriber is left (at once if none is).
    pub async fn all_left(&self) {
        loop {
            // Registered before the count is read: a last leave between
            // the two still wakes this wait.
            let left = self.none_left.notified();
            if self.subscribers.load(Ordering::Acquire) == 0 {
                return;
            }
            left.await;
        }
    }

    /// Ends every stream when it fires.
    pub fn closing(&self) -> &CancellationToken {
        &self.closing
    }

    /// Subscribes to a sale's views: the feed holds its current view at
    /// once. An unknown sale, or one that cannot be read, fails here.
    pub async fn subscribe(
        self: &Arc<Self>,
        sale: &SaleId,
    ) -> Result<Subscription, SubscribeError> {
        let n = self.subscribers.fetch_add(1, Ordering::Relaxed);
        let seat = Seat(self.clone());
        if n >= self.max_subscribers {
            return Err(SubscribeError::Full(self.max_subscribers));
        }
        if let Some(feed) = self.feed(sale) {
            return Ok(Subscription { feed, _seat: seat });
        }
        // Nobody watches it here yet: read it (an unknown sale fails now),
        // then start its watcher with that view, unless another subscriber
        // started one meanwhile.
        let state = self.service.view(sale).await?;
        let mut feeds = self.lock();
        let feed = match feeds.get(sale) {
            Some(feed) => feed.clone(),
            None => {
                let (tx, rx) = watch::channel(Snapshot::new(state));
                feeds.insert(sale.clone(), rx.clone());
                tokio::spawn(self.clone().watch(sale.clone(), tx));
                rx
            }
        };
        Ok(Subscription { feed, _seat: seat })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<SaleId, Feed>> {
        self.feeds.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn feed(&self, sale: &SaleId) -> Option<Feed> {
        self.lock().get(sale).cloned()
    }

    /// Reads the sale every tick while anyone subscribes; sends a view whose
    /// version moved on.
    async fn watch(self: Arc<Self>, sale: SaleId, tx: watch::Sender<Arc<Snapshot>>) {
        let mut tick = tokio::time::interval(self.every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = self.closing.cancelled() => break,
                _ = tick.tick() => {}
            }
            {
                // Under the lock: a new subscriber either sees the feed
                // gone, or is counted before the watcher decides.
                let mut feeds = self.lock();
                if tx.receiver_count() <= 1 {
                    feeds.remove(&sale);
                    return;
                }
            }
            match self.service.view(&sale).await {
                Ok(state) => {
                    if state.view_version() != tx.borrow().state.view_version() {
                        tx.send_replace(Snapshot::new(state));
                    }
                }
                Err(e) => {
                    tracing::debug!(sale = %sale, error = %chain(&e), "live view: could not read the sale; trying again next tick")
                }
            }
        }
        self.lock().remove(&sale);
    }
}
