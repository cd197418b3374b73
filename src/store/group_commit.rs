//! Group commit of the confirm path: concurrent confirms (of any sales)
//! are committed together, one transaction per batch, and each confirm is
//! answered only after the transaction holding its order has committed.
//!
//! A few writer tasks share one bounded queue. A writer takes the first
//! confirm waiting, then whatever else is waiting (up to the batch bound):
//! there is no fixed delay, so a lone confirm costs one transaction as
//! before, and a burst costs one transaction per batch instead of one per
//! confirm. A batch Postgres rejects (not a connection problem) is split in
//! halves and retried, down to single rows, so one bad row never fails its
//! neighbours.
//!
//! Each writer has its own Postgres connection (outside the pool) and
//! writes a batch as one statement in autocommit: one round trip, the
//! commit right after it. Its session's `statement_timeout` ends before
//! the earliest deadline of the batch's confirms, so Postgres cancels a
//! batch that waits (for a lock, say) instead of letting it commit after
//! its confirms answered 503; the commit itself (the WAL flush) is not
//! bounded by Postgres (README, Durability). A batch whose connection
//! failed is answered once that bound has passed, from what Postgres has.

use std::sync::Arc;
use std::time::Duration;

use sqlx::{Connection, PgConnection};
use tokio::sync::{mpsc, oneshot, Mutex};
use tokio::time::Instant;

use super::orders::{insert_orders, CLIENT_GRACE, STATEMENT_MARGIN};
use super::{Recorded, Store, StoreError};
use crate::domain::Order;

/// What became of one confirm's order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Committed {
    /// Its row is committed (by this batch, or was already).
    Recorded,
    /// Refused: its confirm ran in an epoch the sale has left (see
    /// `Store::record_orders`); it will never be recorded.
    Stale,
}

/// The bounds of the group commit.
#[derive(Debug, Clone, Copy)]
pub struct GroupCommitConfig {
    /// Writer tasks (each commits one batch at a time).
    pub writers: usize,
    /// Most confirms per batch.
    pub batch_max: usize,
    /// Confirms waiting for a writer at most; past it a confirm waits for
    /// room (within its deadline).
    pub queue: usize,
}

impl Default for GroupCommitConfig {
    fn default() -> Self {
        Self {
            writers: 1,
            batch_max: 512,
            queue: 16_384,
        }
    }
}

/// A confirm waiting for its batch.
struct Waiting {
    order: Order,
    deadline: Instant,
    reply: oneshot::Sender<Result<Committed, StoreError>>,
}

/// A confirm whose deadline is this close is not written any more: its
/// batch would get less than this for its statements.
const MIN_LEFT: Duration = Duration::from_millis(75);
/// A writer's statement_timeout moves in steps of this (it is set again
/// only when a batch needs a shorter one, or could have twice as long).
const BOUND_STEP: Duration = Duration::from_millis(100);

/// The handle the confirm path sends its orders to.
#[derive(Clone)]
pub struct ConfirmQueue {
    tx: mpsc::Sender<Waiting>,
}

impl ConfirmQueue {
    /// Starts the writer tasks; they stop once every handle is dropped
    /// (after answering what they hold).
    pub fn start(store: Store, cfg: GroupCommitConfig) -> Self {
        let (tx, rx) = mpsc::channel(cfg.queue.max(1));
        let rx = Arc::new(Mutex::new(rx));
        for _ in 0..cfg.writers.max(1) {
            tokio::spawn(writer(store.clone(), rx.clone(), cfg.batch_max.max(1)));
        }
        Self { tx }
    }

    /// Commits one confirm's order with the confirms waiting beside it,
    /// within `limit`: `Ok` only once its row is committed.
    pub async fn commit(&self, order: Order, limit: Duration) -> Result<Committed, StoreError> {
        let deadline = Instant::now() + limit;
        let (reply, answer) = oneshot::channel();
        let waiting = Waiting {
            order,
            deadline,
            reply,
        };
        match tokio::time::timeout_at(deadline, self.tx.send(waiting)).await {
            Ok(Ok(())) => {}
            // The writers are gone (shutting down): nothing was written.
            Ok(Err(_)) => return Err(StoreError::Timeout(limit)),
            // No room before the deadline: nothing was written.
            Err(_) => return Err(StoreError::Timeout(limit)),
        }
        match tokio::time::timeout_at(deadline + CLIENT_GRACE, answer).await {
            Ok(Ok(result)) => result,
            // The writer dropped it without an answer (it stopped).
            Ok(Err(_)) => Err(StoreError::Timeout(limit)),
            Err(_) => Err(StoreError::Timeout(limit + CLIENT_GRACE)),
        }
    }
}

/// A writer's own connection and the statement_timeout its session has.
struct WriterConn {
    conn: PgConnection,
    bound: Duration,
}

impl Store {
    /// A connection of its own for a writer (not the pool's: its session
    /// settings stay with it), within `limit`.
    ///
    /// Its session plans the batch statement once (`plan_cache_mode =
    /// force_generic_plan`): left to choose, Postgres kept planning it
    /// anew for each batch's arrays, a third of its cost (32 orders: 1.5
    /// ms a batch, 0.9 ms with the one generic plan). The plan does not
    /// depend on the arrays' contents: one index probe per order row.
    async fn writer_conn(&self, limit: Duration) -> Result<WriterConn, StoreError> {
        let opts = self
            .pool
            .connect_options()
            .as_ref()
            .clone()
            .options([("plan_cache_mode", "force_generic_plan")]);
        let conn = self
            .bounded(limit, PgConnection::connect_with(&opts))
            .await?;
        Ok(WriterConn {
            conn,
            bound: Duration::ZERO,
        })
    }

    /// Writes one batch of orders on the writer's connection (made first
    /// if it has none), as one statement that Postgres cancels unless it
    /// ends before `deadline` (less a margin). A connection that failed is
    /// dropped, and the next batch makes another.
    async fn write_batch(
        &self,
        slot: &mut Option<WriterConn>,
        orders: &[&Order],
        deadline: Instant,
    ) -> Result<Recorded, StoreError> {
        let mut w = match slot.take() {
            Some(w) => w,
            None => {
                let left = deadline.saturating_duration_since(Instant::now());
                self.writer_conn(left).await?
            }
        };
        // What is left once connected: the statement's bound ends before
        // the deadline however long the connection took.
        let left = deadline.saturating_duration_since(Instant::now());
        let bound = left.saturating_sub(STATEMENT_MARGIN);
        let fut = async {
            if w.bound.is_zero() || w.bound > bound || w.bound * 2 < bound {
                // Rounded down to a step (never above `bound`).
                let step = if bound > BOUND_STEP {
                    let steps = bound.as_millis() / BOUND_STEP.as_millis();
                    BOUND_STEP * u32::try_from(steps).unwrap_or(u32::MAX)
                } else {
                    bound
                };
                super::set_statement_timeout(&mut w.conn, step, false).await?;
                w.bound = step;
            }
            insert_orders(&mut w.conn, orders).await
        };
        match tokio::time::timeout(left + CLIENT_GRACE, fut).await {
            Ok(Ok(recorded)) => {
                *slot = Some(w);
                Ok(recorded)
            }
            Ok(Err(e)) => {
                // Postgres refused the statement (a bad row): the
                // connection is fine. Anything else: a new one next time.
                if matches!(e, sqlx::Error::Database(_)) {
                    *slot = Some(w);
                }
                Err(e.into())
            }
            Err(_) => Err(StoreError::Timeout(left + CLIENT_GRACE)),
        }
    }
}

/// One writer: takes the first confirm waiting, drains the rest up to
/// `batch_max` without waiting, commits them, answers them; again.
async fn writer(store: Store, rx: Arc<Mutex<mpsc::Receiver<Waiting>>>, batch_max: usize) {
    let mut batch = Vec::with_capacity(batch_max);
    let mut conn = None;
    loop {
        {
            let mut rx = rx.lock().await;
            let Some(first) = rx.recv().await else {
                return;
            };
            batch.push(first);
            while batch.len() < batch_max {
                match rx.try_recv() {
                    Ok(w) => batch.push(w),
                    Err(_) => break,
                }
            }
        }
        commit_batch(&store, &mut conn, std::mem::take(&mut batch)).await;
    }
}

/// Commits a batch and answers each of its confirms; a batch Postgres
/// rejects is split and retried until the culprit stands alone.
async fn commit_batch(store: &Store, conn: &mut Option<WriterConn>, batch: Vec<Waiting>) {
    let mut work = vec![batch];
    while let Some(batch) = work.pop() {
        let now = Instant::now();
        let (live, late): (Vec<Waiting>, Vec<Waiting>) = batch
            .into_iter()
            .filter(|w| !w.reply.is_closed())
            .partition(|w| w.deadline.saturating_duration_since(now) >= MIN_LEFT);
        for w in late {
            let left = w.deadline.saturating_duration_since(now);
            let _ = w.reply.send(Err(StoreError::Timeout(left)));
        }
        let Some(deadline) = live.iter().map(|w| w.deadline).min() else {
            continue;
        };
        let orders: Vec<&Order> = live.iter().map(|w| &w.order).collect();
        let started = std::time::Instant::now();
        let result = store.write_batch(conn, &orders, deadline).await;
        crate::metrics::confirm_batch(orders.len(), started.elapsed().as_secs_f64());
        match result {
            Ok(recorded) => {
                for w in live {
                    let outcome = if recorded.stale.contains(&w.order.reservation_id) {
                        Committed::Stale
                    } else {
                        Committed::Recorded
                    };
                    let _ = w.reply.send(Ok(outcome));
                }
            }
            Err(e) if e.is_transient() => {
                // The batch's statement may have reached Postgres before the
                // connection failed, and then it runs (and commits) on its
                // own until its server-side bound: answered only once that
                // has passed, with what Postgres then has.
                tokio::spawn(answer_after_bound(store.clone(), live, deadline, e));
            }
            Err(e) if live.len() == 1 => {
                let shared = Arc::new(e);
                for w in live {
                    let _ = w.reply.send(Err(StoreError::Batch(shared.clone())));
                }
            }
            Err(e) => {
                tracing::warn!(confirms = live.len(), error = %crate::telemetry::chain(&e), "a confirm batch was rejected by Postgres; retrying it in halves");
                let mut live = live;
                let second = live.split_off(live.len() / 2);
                work.push(second);
                work.push(live);
            }
        }
    }
}

/// Answers the confirms of a batch whose write failed on the way (a broken
/// connection, a timeout): once the batch's statement can no longer run
/// (its server-side bound has passed), those whose order Postgres has are
/// committed (200); the others get the error (503, retry).
async fn answer_after_bound(store: Store, live: Vec<Waiting>, deadline: Instant, e: StoreError) {
    tokio::time::sleep_until(deadline.checked_sub(STATEMENT_MARGIN).unwrap_or(deadline)).await;
    let rids: Vec<uuid::Uuid> = live.iter().map(|w| w.order.reservation_id).collect();
    let present = store.orders_present(&rids).await.unwrap_or_default();
    let shared = Arc::new(e);
    for w in live {
        let answer = if present.contains(&w.order.reservation_id) {
            Ok(Committed::Recorded)
        } else {
            Err(StoreError::Batch(shared.clone()))
        };
        let _ = w.reply.send(answer);
    }
}
