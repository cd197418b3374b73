//! What a request asks of flashgate, across Redis and Postgres: a gate
//! call, the rebuild of a sale whose Redis state was lost (fail closed until
//! it is rebuilt), the durable confirm.
//!
//! - `mod.rs` (here): the service, its errors, the rebuild;
//! - `sales.rs`: read, list and configure sales;
//! - `reservations.rs`: reserve and the transitions of a reservation;
//! - `admin.rs`: what admins do to a live sale (steer it, list its
//!   reservations, export its orders, read the audit).
//!
//! Errors are the service's own ([`ServiceError`]); the HTTP edge maps them
//! to the API's error body (`api::error`).

mod admin;
mod reservations;
mod sales;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

pub use admin::{Chunk, ExportEncoder};

use crate::config::{ConfirmDurability, Settings};
use crate::domain::ItemBelow;
use crate::gate::{Durable, Gate, GateError};
use crate::ids::SaleId;
use crate::store::{ConfirmQueue, GroupCommitConfig, Store, StoreError};
use crate::telemetry::chain;

#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error("no such sale")]
    SaleNotFound,
    /// `items`: the items below (empty for a one-item sale).
    #[error("stock would fall below the units sold and held ({sold} sold, {held} held)")]
    StockBelowCommitted {
        sold: i64,
        held: i64,
        items: Vec<ItemBelow>,
    },
    /// A sale with units sold or held cannot change between one item and
    /// several.
    #[error("a sale with units sold or held cannot change between `stock` and `items` ({sold} sold, {held} held)")]
    ShapeChange { sold: i64, held: i64 },
    /// An item with units sold or held cannot get a cap it did not have.
    #[error("item {sku} has units sold or held: it cannot get a per_user_limit it did not have")]
    CapAdded { sku: String },
    /// An admin closed the sale: it cannot be resumed or paused, and its
    /// configuration no longer changes.
    #[error("the sale is closed")]
    SaleClosed { ends_ms: Option<i64> },
    #[error("this reservation belongs to another buyer")]
    Forbidden,
    /// A confirm whose sale was rebuilt from Postgres before its order was
    /// written (a new epoch): its unit was offered again, and this
    /// reservation will never be recorded.
    #[error("the reservation's hold was lost with Redis' data")]
    Lost,
    /// The sale's Redis state was lost and cannot be rebuilt right now.
    #[error("the sale's state is being rebuilt")]
    Rebuilding(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// Confirmed in Redis, but its order is not yet committed in Postgres.
    #[error("confirmed, but not yet durable in Postgres")]
    NotDurable(#[source] StoreError),
    /// An admin cancel happened, but its audit row is not yet written.
    #[error("cancelled, but its audit row is not yet written")]
    NotAudited(#[source] StoreError),
    /// This instance runs as many order exports as it allows at once.
    #[error("{0} order exports run already")]
    ExportsBusy(usize),
    /// An order export could not encode an order.
    #[error("could not encode an order")]
    Encode(#[source] std::io::Error),
    #[error(transparent)]
    Redis(#[from] GateError),
    #[error(transparent)]
    Postgres(#[from] StoreError),
}

impl ServiceError {
    fn rebuilding(e: impl std::error::Error + Send + Sync + 'static) -> Self {
        Self::Rebuilding(Box::new(e))
    }
}

#[derive(Clone)]
pub struct Service {
    pub gate: Gate,
    pub store: Store,
    pub durability: ConfirmDurability,
    pub confirm_timeout: Duration,
    /// Final reservations' records leave Redis once Postgres has them
    /// (`FLASHGATE_DROP_FINAL_RECORDS`; the write-behind drops most).
    drop_final_records: bool,
    /// The confirm path's group commit (see `store::group_commit`).
    confirms: ConfirmQueue,
    /// Order exports running at once on this instance (each holds a
    /// Postgres connection while its client reads).
    exports: Arc<tokio::sync::Semaphore>,
}

impl Service {
    /// Starts the confirm path's writer tasks (they stop when the last
    /// clone of the service is dropped): call it inside a Tokio runtime.
    pub fn new(gate: Gate, store: Store, settings: &Settings) -> Self {
        let confirms = ConfirmQueue::start(
            store.clone(),
            GroupCommitConfig {
                writers: settings.confirm_writers,
                batch_max: settings.confirm_batch_max,
                queue: settings.confirm_queue,
            },
        );
        Self {
            gate,
            store,
            confirms,
            durability: settings.confirm_durability,
            confirm_timeout: settings.confirm_timeout,
            drop_final_records: settings.drop_final_records,
            exports: Arc::new(tokio::sync::Semaphore::new(admin::MAX_EXPORTS)),
        }
    }

    /// Rebuilds a sale's Redis state from Postgres. Until this succeeds the
    /// sale answers 503: it is never served as if it had full stock.
    ///
    /// The sale's row stays locked from the read of what was sold until the
    /// new epoch is committed, so no order write of the lost state can slip
    /// in between (see `migrations/0002_sale_epoch.sql`). A rebuild Postgres
    /// did not commit is taken back from Redis.
    pub async fn restore(&self, sale: &SaleId) -> Result<(), ServiceError> {
        let Some(rebuild) = self
            .store
            .begin_rebuild(sale)
            .await
            .map_err(ServiceError::rebuilding)?
        else {
            return Err(ServiceError::SaleNotFound);
        };
        let snap = &rebuild.snapshot;
        let (sold, buyers, epoch) = (snap.sold, snap.bought.len(), snap.sale.epoch + 1);
        let loaded = self
            .gate
            .load(
                sale,
                &Durable {
                    config: &snap.sale.config,
                    steering: snap.sale.steering,
                    sold: snap.sold,
                    bought: &snap.bought,
                    item_sold: &snap.item_sold,
                    item_bought: &snap.item_bought,
                },
                epoch,
            )
            .await;
        match loaded {
            Ok(true) => {}
            // Another instance rebuilt it first (it held the lock before us).
            Ok(false) => {
                self.store.abandon_rebuild(rebuild).await;
                return Ok(());
            }
            Err(e) => {
                self.store.abandon_rebuild(rebuild).await;
                return Err(e.into());
            }
        }
        if let Err(e) = self.store.commit_rebuild(rebuild, sale, epoch).await {
            match self.gate.unload(sale, epoch).await {
                Ok(_) => {
                    tracing::warn!(sale = %sale, error = %chain(&e), "rebuilt a sale in Redis but could not commit its epoch: taken back, rebuilt on the next request")
                }
                Err(u) => {
                    tracing::error!(sale = %sale, error = %chain(&e), unload_error = %chain(&u), "rebuilt a sale in Redis but could neither commit its epoch nor take the rebuild back: its confirms are refused until `flashgate reconcile --fix`")
                }
            }
            return Err(ServiceError::rebuilding(e));
        }
        tracing::warn!(sale = %sale, sold, buyers, epoch, "sale state was missing in Redis: rebuilt from Postgres");
        Ok(())
    }

    /// Runs a gate call; if the sale has no Redis state, rebuilds it from
    /// Postgres once and runs the call again.
    async fn loaded<T, F, Fut>(&self, sale: &SaleId, op: F) -> Result<T, ServiceError>
    where
        F: Fn() -> Fut,
        Fut: Future<Output = Result<T, GateError>>,
    {
        match op().await {
            Err(GateError::NotLoaded) => {
                // Boxed: the rebuild (a Postgres read, then a load script)
                // is a rare path whose future is several KiB; inline, every
                // request's future would carry that room.
                Box::pin(self.restore(sale)).await?;
                Ok(op().await?)
            }
            other => Ok(other?),
        }
    }
}
