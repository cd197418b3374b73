//! The write-behind worker: drains every sale's event stream into Postgres.
//!
//! Per sale: read a batch with the consumer group, write it in one
//! transaction (idempotent), then XACK and XDEL it atomically — never before
//! the commit. Entries another (dead) consumer left pending are claimed with
//! XAUTOCLAIM; an entry that cannot be applied after `max_deliveries` goes to
//! the sale's dead-letter stream with a log line instead of blocking the rest.
//! Several workers can run at once: every write is idempotent.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use redis::streams::{
    StreamAutoClaimOptions, StreamAutoClaimReply, StreamId, StreamReadOptions, StreamReadReply,
};
use redis::AsyncCommands;
use tokio_util::sync::CancellationToken;

use super::directory::Directory;
use super::readiness::TaskHealth;
use crate::gate::{Gate, GateError, RedisCode, RedisConn, SaleKeys};
use crate::ids::SaleId;
use crate::store::{Store, StoreError};
use crate::telemetry::chain;

mod batch;

pub const GROUP: &str = "flashgate-writer";

#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error(transparent)]
    Redis(#[from] GateError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<redis::RedisError> for WorkerError {
    fn from(e: redis::RedisError) -> Self {
        Self::Redis(GateError::from(e))
    }
}

impl WorkerError {
    /// The sale's stream or its consumer group is gone (Redis lost its
    /// data, or the stream was deleted): the group must be created again.
    fn is_no_group(&self) -> bool {
        matches!(self, Self::Redis(e) if e.code() == Some(RedisCode::NoGroup))
    }
}

/// What the worker last saw: shown by `/readyz` and logged.
#[derive(Debug, Default)]
pub struct WorkerStatus {
    /// Stream entries not yet written and acknowledged, over all sales.
    pub backlog: AtomicI64,
    /// Of those, delivered to a consumer but not yet acknowledged.
    pub pending: AtomicI64,
    pub events_written: AtomicU64,
    pub dead_lettered: AtomicU64,
    /// False while the last write to Postgres failed.
    pub postgres_ok: AtomicBool,
}

#[derive(Clone, Debug)]
pub struct WorkerConfig {
    pub consumer: String,
    pub batch: usize,
    pub max_deliveries: u64,
    pub claim_idle: Duration,
    /// Drop confirmed, cancelled and expired reservation records from Redis
    /// once their event is committed (`FLASHGATE_DROP_FINAL_RECORDS`).
    pub drop_final_records: bool,
    /// Pause when a whole pass found nothing to do, doubled after each
    /// pass that found nothing, up to [`IDLE_WAIT_MAX`].
    pub idle_wait: Duration,
    /// Pause after a pass that found less than a batch: events gather
    /// meanwhile, so a steady flow is written in batches of a few hundred,
    /// not of a few dozen, each of which costs a stream read, two
    /// transactions and an acknowledgement. A pass that found a batch or
    /// more goes on at once (a backlog is drained at full speed).
    pub gather: Duration,
}

impl WorkerConfig {
    pub fn new(batch: usize, max_deliveries: u64, claim_idle: Duration) -> Self {
        let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "flashgate".into());
        let tag = uuid::Uuid::new_v4().simple().to_string();
        Self {
            consumer: format!("{host}-{}-{}", std::process::id(), &tag[..8]),
            batch,
            max_deliveries,
            claim_idle,
            drop_final_records: true,
            idle_wait: Duration::from_millis(50),
            gather: Duration::from_millis(20),
        }
    }
}

/// A sale whose drain failed waits this long before the next try, doubling
/// up to [`SALE_BACKOFF_MAX`]: one sale whose Redis node is away must not
/// slow the others down.
const SALE_BACKOFF_MIN: Duration = Duration::from_millis(100);
const SALE_BACKOFF_MAX: Duration = Duration::from_secs(5);
/// The longest pause between passes that found nothing: the first event
/// after a quiet spell waits at most this long for the worker.
const IDLE_WAIT_MAX: Duration = Duration::from_millis(400);
/// How often the backlog is counted (and logged while it is not zero).
const STATS_EVERY: Duration = Duration::from_secs(5);

pub struct Worker {
    gate: Gate,
    directory: Arc<Directory>,
    /// Its own connection: the worker's reads never queue behind (or in
    /// front of) the request path's multiplexed connection.
    conn: RedisConn,
    store: Store,
    cfg: WorkerConfig,
    status: Arc<WorkerStatus>,
    health: Arc<TaskHealth>,
    /// Sales whose consumer group exists.
    grouped: HashSet<SaleId>,
    /// Sales with entries delivered to this consumer and not yet acked.
    own_pending: HashSet<SaleId>,
    /// Sales whose last drain failed: when to try again, the next wait,
    /// and why.
    failing: HashMap<SaleId, (Instant, Duration, String)>,
    last_claim: Instant,
    last_stats: Instant,
}

impl Worker {
    pub fn new(
        gate: Gate,
        directory: Arc<Directory>,
        conn: RedisConn,
        store: Store,
        cfg: WorkerConfig,
        health: Arc<TaskHealth>,
    ) -> Self {
        let long_ago = Instant::now()
            .checked_sub(Duration::from_secs(3600))
            .unwrap_or_else(Instant::now);
        Self {
            gate,
            directory,
            conn,
            store,
            cfg,
            status: Arc::new(WorkerStatus::default()),
            health,
            grouped: HashSet::new(),
            own_pending: HashSet::new(),
            failing: HashMap::new(),
            last_claim: long_ago,
            last_stats: long_ago,
        }
    }

    pub fn status(&self) -> Arc<WorkerStatus> {
        self.status.clone()
    }

    /// Reports into `status` (shared by the write-behind tasks of one
    /// instance) instead of a status of its own.
    pub fn sharing(mut self, status: Arc<WorkerStatus>) -> Self {
        self.status = status;
        self
    }

    pub fn health(&self) -> Arc<TaskHealth> {
        self.health.clone()
    }

    /// Runs until `shutdown` fires; a batch in flight is finished (or
    /// abandoned unacknowledged), never acknowledged before its commit.
    pub async fn run(mut self, shutdown: CancellationToken) {
        tracing::info!(consumer = %self.cfg.consumer, "write-behind worker started");
        self.health.set_running(true);
        self.status.postgres_ok.store(true, Ordering::Relaxed);
        let mut idle = self.cfg.idle_wait;
        while !shutdown.is_cancelled() {
            let done = tokio::select! {
                _ = shutdown.cancelled() => break,
                done = self.pass() => done,
            };
            if done == 0 {
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = tokio::time::sleep(idle) => {}
                }
                // Every pass lists the sales and reads each one's stream:
                // while nothing happens, pass less and less often.
                idle = (idle * 2).min(IDLE_WAIT_MAX.max(self.cfg.idle_wait));
            } else {
                idle = self.cfg.idle_wait;
                if done < self.cfg.batch && !self.cfg.gather.is_zero() {
                    tokio::select! {
                        _ = shutdown.cancelled() => break,
                        _ = tokio::time::sleep(self.cfg.gather) => {}
                    }
                }
            }
        }
        self.health.set_running(false);
        tracing::info!(consumer = %self.cfg.consumer, "write-behind worker stopped");
    }

    /// One pass over every sale (but those waiting out a failure). Returns
    /// the number of entries handled. A sale that fails is retried after a
    /// backoff of its own; the pass goes on with the others, and the
    /// worker's health says what failed (a stall shows in `/readyz`).
    pub async fn pass(&mut self) -> usize {
        let listing = self.directory.sales().await;
        let claim = self.last_claim.elapsed() >= self.cfg.claim_idle / 2;
        if claim {
            self.last_claim = Instant::now();
        }
        let mut done = 0;
        for sale in &listing.sales {
            if self
                .failing
                .get(sale)
                .is_some_and(|(at, _, _)| Instant::now() < *at)
            {
                continue;
            }
            match self.drain(sale, claim).await {
                Ok(n) => {
                    done += n;
                    self.failing.remove(sale);
                }
                Err(e) => self.sale_failed(sale, &e),
            }
        }
        if self.last_stats.elapsed() >= STATS_EVERY {
            self.last_stats = Instant::now();
            self.refresh_stats(&listing.sales).await;
        }
        let mut problems: Vec<String> = listing.problem.into_iter().collect();
        problems.extend(
            self.failing
                .iter()
                .map(|(sale, (_, _, why))| format!("sale {sale}: {why}")),
        );
        if problems.is_empty() {
            self.health.succeeded();
        } else {
            problems.sort();
            self.health.failed(problems.join("; "));
        }
        done
    }

    fn sale_failed(&mut self, sale: &SaleId, e: &WorkerError) {
        if let WorkerError::Store(_) = e {
            self.status.postgres_ok.store(false, Ordering::Relaxed);
            crate::metrics::postgres_write_error("write_behind");
        }
        let wait = self
            .failing
            .get(sale)
            .map_or(SALE_BACKOFF_MIN, |(_, w, _)| (*w * 2).min(SALE_BACKOFF_MAX));
        let why = chain(e);
        tracing::warn!(sale = %sale, error = %why, retry_in_ms = wait.as_millis() as u64, "write-behind of a sale failed; retrying");
        self.failing
            .insert(sale.clone(), (Instant::now() + wait, wait, why));
    }

    /// Processes what is waiting in one sale's stream. A stream whose
    /// consumer group is gone (Redis lost its data, whichever command
    /// notices it first) gets the group again and is drained at once.
    async fn drain(&mut self, sale: &SaleId, claim: bool) -> Result<usize, WorkerError> {
        match self.drain_once(sale, claim).await {
            Err(e) if e.is_no_group() => {
                tracing::info!(sale = %sale, "the sale's consumer group is gone (Redis lost its data?): creating it again");
                self.grouped.remove(sale);
                self.own_pending.remove(sale);
                self.drain_once(sale, claim).await
            }
            other => other,
        }
    }

    /// One batch of each kind: claimed from dead consumers, our own
    /// unacknowledged ones, new ones.
    async fn drain_once(&mut self, sale: &SaleId, claim: bool) -> Result<usize, WorkerError> {
        let keys = self.gate.keys(sale);
        if !self.grouped.contains(sale) {
            self.ensure_group(&keys).await?;
            self.grouped.insert(sale.clone());
            // After a restart under the same name, entries may await us.
            self.own_pending.insert(sale.clone());
        }
        let mut done = 0;
        if claim {
            let opts = StreamAutoClaimOptions::default().count(self.cfg.batch);
            let idle = u64::try_from(self.cfg.claim_idle.as_millis()).unwrap_or(u64::MAX);
            let reply: StreamAutoClaimReply = self
                .conn
                .xautoclaim_options(keys.events(), GROUP, &self.cfg.consumer, idle, "0-0", opts)
                .await?;
            if !reply.claimed.is_empty() {
                tracing::info!(sale = %sale, entries = reply.claimed.len(), "claimed entries a dead consumer left pending");
                done += self.apply(sale, &keys, reply.claimed).await?;
            }
        }
        // Our own unacknowledged entries first (after a failed batch), then new ones.
        let start = if self.own_pending.contains(sale) {
            "0"
        } else {
            ">"
        };
        let entries = self.read(&keys, start).await?;
        if entries.is_empty() {
            if start == "0" {
                self.own_pending.remove(sale);
            }
            return Ok(done);
        }
        self.own_pending.insert(sale.clone());
        done += self.apply(sale, &keys, entries).await?;
        if start == ">" {
            self.own_pending.remove(sale);
        }
        Ok(done)
    }

    async fn read(&mut self, keys: &SaleKeys, start: &str) -> Result<Vec<StreamId>, WorkerError> {
        let opts = StreamReadOptions::default()
            .group(GROUP, &self.cfg.consumer)
            .count(self.cfg.batch);
        let reply: Option<StreamReadReply> = self
            .conn
            .xread_options(&[keys.events()], &[start], &opts)
            .await?;
        Ok(reply
            .into_iter()
            .flat_map(|r| r.keys)
            .flat_map(|k| k.ids)
            .collect())
    }

    async fn ensure_group(&mut self, keys: &SaleKeys) -> Result<(), WorkerError> {
        let r: Result<(), redis::RedisError> = self
            .conn
            .xgroup_create_mkstream(keys.events(), GROUP, "0")
            .await;
        match r {
            Ok(()) => Ok(()),
            Err(e) if RedisCode::of(&e) == Some(RedisCode::BusyGroup) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Counts the backlog of every sale that answers (a sale whose node is
    /// away is left out, and the worker's health already says so).
    async fn refresh_stats(&mut self, sales: &[SaleId]) {
        let (mut backlog, mut pending) = (0i64, 0i64);
        for sale in sales {
            if self.failing.contains_key(sale) {
                continue;
            }
            let keys = self.gate.keys(sale);
            let Ok(len) = self.conn.xlen::<_, i64>(keys.events()).await else {
                continue;
            };
            backlog += len;
            if len > 0 {
                let summary: Result<redis::streams::StreamPendingReply, _> =
                    self.conn.xpending(keys.events(), GROUP).await;
                if let Ok(summary) = summary {
                    pending += summary.count() as i64;
                }
            }
        }
        self.status.backlog.store(backlog, Ordering::Relaxed);
        self.status.pending.store(pending, Ordering::Relaxed);
        crate::metrics::write_behind_lag(backlog, pending);
        if backlog > 0 {
            tracing::info!(backlog, pending, sales = sales.len(), "write-behind lag");
        }
    }
}
