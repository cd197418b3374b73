//! What admins do to a live sale: steer it (pause, resume, close: in Redis
//! and Postgres together, audited), list its reservations, export its
//! orders, read the audit.

use std::time::Duration;

use chrono::{DateTime, Utc};
use futures_util::TryStreamExt;
use tokio::sync::mpsc;
use uuid::Uuid;

use super::{Service, ServiceError};
use crate::domain::{
    AdminOrigin, HeldPage, Order, Record, SaleState, Steer, SteerOutcome, Steering,
};
use crate::ids::SaleId;
use crate::store::{sale_json, AdminAction, AuditEntry, Store, StoreError};
use crate::telemetry::chain;

/// Order exports one instance runs at once: each holds one of its 16
/// Postgres connections while its client reads, and confirms need them.
pub(super) const MAX_EXPORTS: usize = 2;

/// An export's body goes out in chunks of about this size.
const CHUNK_BYTES: usize = 64 * 1024;

/// Chunks encoded ahead of the client: with the chunk size, the most an
/// export buffers whatever its length.
const CHUNKS_AHEAD: usize = 2;

/// An export whose client takes no chunk for this long is given up (it
/// holds a Postgres connection and an export slot).
const CLIENT_STALL: Duration = Duration::from_secs(60);

/// One piece of an export's body, or why it ends early.
pub type Chunk = Result<Vec<u8>, ServiceError>;

/// Encodes orders into an export's body (CSV, NDJSON: the caller's choice).
pub trait ExportEncoder: Send + 'static {
    /// Appends one order.
    fn order(&mut self, order: &Order) -> std::io::Result<()>;
    /// Bytes encoded and not yet taken (roughly: an encoder may buffer).
    fn pending(&self) -> usize;
    /// Takes every byte encoded so far.
    fn take(&mut self) -> std::io::Result<Vec<u8>>;
}

impl Service {
    /// Pauses, resumes or closes a sale, like a PUT: the row locked, the
    /// script decides (atomically with every reserve), the row and its
    /// audit row written, committed. Returns the sale as this left it.
    pub async fn steer(
        &self,
        sale: &SaleId,
        action: Steer,
        origin: &AdminOrigin,
    ) -> Result<SaleState, ServiceError> {
        self.rebuild_if_lost(sale).await?;
        let (mut tx, row) = self.store.begin_configure(sale).await?;
        let row = row.ok_or(ServiceError::SaleNotFound)?;
        let (paused, ends_ms, closed_ms) = match self.gate.steer(sale, action).await? {
            SteerOutcome::Closed { ends_ms } => return Err(ServiceError::SaleClosed { ends_ms }),
            SteerOutcome::Steered {
                paused,
                ends_ms,
                closed_ms,
                ..
            } => (paused, ends_ms, closed_ms),
        };
        let steering = Steering { paused, closed_ms };
        self.store
            .steer_sale(&mut tx, sale, steering, ends_ms)
            .await?;
        let mut after = row.config.clone();
        after.ends_ms = ends_ms;
        let change = (
            Some(sale_json(&row.config, row.steering)),
            Some(sale_json(&after, steering)),
        );
        self.store
            .audit(&mut tx, AdminAction::Steer(action), sale, change, origin)
            .await?;
        self.commit_viewed(tx, sale).await
    }

    /// A page of the sale's live holds, by deadline (Redis).
    pub async fn held_page(
        &self,
        sale: &SaleId,
        after: Option<(i64, Uuid)>,
        limit: u32,
    ) -> Result<HeldPage, ServiceError> {
        self.loaded(sale, || self.gate.held_page(sale, after, limit))
            .await
    }

    /// A page of the sale's confirmed reservations, by confirmation
    /// (Postgres), and where the next page starts.
    pub async fn confirmed_page(
        &self,
        sale: &SaleId,
        after: Option<(DateTime<Utc>, Uuid)>,
        limit: u32,
    ) -> Result<(Vec<(Uuid, Record)>, Option<(DateTime<Utc>, Uuid)>), ServiceError> {
        if !self.store.sale_exists(sale).await? {
            return Err(ServiceError::SaleNotFound);
        }
        let (orders, more) = self.store.confirmed_page(sale, after, limit).await?;
        let next = orders
            .last()
            .filter(|_| more)
            .map(|o| (o.confirmed_at, o.reservation_id));
        let page = orders
            .iter()
            .map(|o| (o.reservation_id, o.record()))
            .collect();
        Ok((page, next))
    }

    /// Every confirmed order of the sale, encoded by `encoder` into chunks
    /// the caller receives as the client reads them: a task reads the
    /// orders off one Postgres connection row by row, so memory stays
    /// bounded (`CHUNKS_AHEAD` chunks) however many there are. A chunk
    /// that is an error ends the export early.
    pub async fn export(
        &self,
        sale: &SaleId,
        encoder: Box<dyn ExportEncoder>,
    ) -> Result<mpsc::Receiver<Chunk>, ServiceError> {
        let permit = self
            .exports
            .clone()
            .try_acquire_owned()
            .map_err(|_| ServiceError::ExportsBusy(MAX_EXPORTS))?;
        if !self.store.sale_exists(sale).await? {
            return Err(ServiceError::SaleNotFound);
        }
        let (tx, rx) = mpsc::channel(CHUNKS_AHEAD);
        let (store, sale) = (self.store.clone(), sale.clone());
        tokio::spawn(async move {
            let _permit = permit;
            if let Err(e) = stream_orders(&store, &sale, encoder, &tx).await {
                tracing::error!(sale = %sale, error = %chain(&e), "order export failed: its body ends early");
                let _ = tx.send(Err(e)).await;
            }
        });
        Ok(rx)
    }

    /// The newest admin changes, of one sale or of all.
    pub async fn audit_log(
        &self,
        sale: Option<&SaleId>,
        limit: u32,
    ) -> Result<Vec<AuditEntry>, ServiceError> {
        Ok(self.store.audit_log(sale, limit).await?)
    }
}

/// Streams the orders into `tx` until done, the client gone or stalled
/// (both end quietly), or Postgres failing.
async fn stream_orders(
    store: &Store,
    sale: &SaleId,
    mut encoder: Box<dyn ExportEncoder>,
    tx: &mpsc::Sender<Chunk>,
) -> Result<(), ServiceError> {
    let mut orders = std::pin::pin!(store.orders_stream(sale));
    let row_wait = store.timeout();
    loop {
        let next = tokio::time::timeout(row_wait, orders.try_next())
            .await
            .map_err(|_| StoreError::Timeout(row_wait))??;
        let done = match next {
            Some(order) => {
                encoder.order(&order).map_err(ServiceError::Encode)?;
                false
            }
            None => true,
        };
        if done || encoder.pending() >= CHUNK_BYTES {
            let chunk = encoder.take().map_err(ServiceError::Encode)?;
            match tokio::time::timeout(CLIENT_STALL, tx.send(Ok(chunk))).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => return Ok(()),
                Err(_) => {
                    tracing::warn!(sale = %sale, "order export given up: its client took no data for {CLIENT_STALL:?}");
                    return Ok(());
                }
            }
        }
        if done {
            return Ok(());
        }
    }
}
