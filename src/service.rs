//! What a request asks of flashgate, across Redis and Postgres: the script
//! call, the rebuild of a sale whose Redis state was lost (fail closed until
//! it is rebuilt), and the durable confirm.

use std::future::Future;
use std::time::Duration;

use chrono::DateTime;
use uuid::Uuid;

use crate::config::ConfirmDurability;
use crate::error::ApiError;
use crate::gate::{
    Actor, ConfigureOutcome, Gate, GateError, Record, RecordOutcome, ReserveOutcome, SaleConfig,
    SaleState,
};
use crate::ids::{IdempotencyKey, SaleId, UserId};
use crate::store::{Order, Store};

#[derive(Clone)]
pub struct Service {
    pub gate: Gate,
    pub store: Store,
    pub durability: ConfirmDurability,
    pub confirm_timeout: Duration,
    /// Cap on one buyer's simultaneous holds across sales (0 = off).
    pub max_active_holds: u32,
}

impl Service {
    pub fn new(gate: Gate, store: Store, settings: &crate::config::Settings) -> Self {
        Self {
            gate,
            store,
            durability: settings.confirm_durability,
            confirm_timeout: settings.confirm_timeout,
            max_active_holds: settings.max_active_holds,
        }
    }

    /// Rebuilds a sale's Redis state from Postgres. Until this succeeds the
    /// sale answers 503: it is never served as if it had full stock.
    pub async fn restore(&self, sale: &SaleId) -> Result<(), ApiError> {
        let snap =
            self.store.snapshot(sale).await.map_err(|e| {
                ApiError::unavailable("the sale's state is being rebuilt; retry", e)
            })?;
        let Some(snap) = snap else {
            return Err(ApiError::SaleNotFound);
        };
        if self
            .gate
            .load(sale, &snap.sale.config(), snap.sold, &snap.bought)
            .await?
        {
            tracing::warn!(sale = %sale, sold = snap.sold, buyers = snap.bought.len(), "sale state was missing in Redis: rebuilt from Postgres");
        }
        Ok(())
    }

    /// Runs a gate call; if the sale has no Redis state, rebuilds it from
    /// Postgres once and runs the call again.
    async fn loaded<T, F, Fut>(&self, sale: &SaleId, op: F) -> Result<T, ApiError>
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

    pub async fn view(&self, sale: &SaleId) -> Result<SaleState, ApiError> {
        let state = self.loaded(sale, || self.gate.sweep(sale)).await?;
        crate::metrics::holds_expired("read", state.released);
        Ok(state)
    }

    pub async fn list(&self) -> Result<Vec<(SaleId, SaleState)>, ApiError> {
        let rows = self.store.list_sales().await?;
        let mut out = Vec::with_capacity(rows.len());
        for row in rows {
            let Ok(id) = SaleId::parse(&row.sale_id) else {
                continue;
            };
            let state = self.view(&id).await?;
            out.push((id, state));
        }
        Ok(out)
    }

    /// Creates or updates a sale in Postgres and Redis together: the row is
    /// locked, the script decides (refusing a stock below sold + held), and
    /// the row commits only if the script accepted.
    pub async fn configure(
        &self,
        sale: &SaleId,
        cfg: &SaleConfig,
    ) -> Result<(bool, SaleState), ApiError> {
        let (mut tx, existing) = self.store.begin_configure(sale).await?;
        if existing.is_some() {
            // Known to Postgres: its Redis state must be there (or be rebuilt)
            // before it changes, or the update would reset what was sold.
            if let Err(GateError::NotLoaded) = self.gate.sweep(sale).await {
                self.restore(sale).await?;
            }
        }
        let outcome = self.gate.configure(sale, cfg, existing.is_some()).await?;
        let created = match outcome {
            ConfigureOutcome::BelowCommitted { sold, held } => {
                return Err(ApiError::StockBelowCommitted { sold, held })
            }
            ConfigureOutcome::Created => true,
            ConfigureOutcome::Updated => false,
        };
        self.store.upsert_sale(&mut tx, sale, cfg).await?;
        // Read the sale while the row lock still holds back concurrent
        // updates, so the answer shows this update, not a later one. The
        // script has run: commit even if the read failed, and read again.
        let state = self.view(sale).await;
        tx.commit()
            .await
            .map_err(|e| ApiError::from(crate::store::StoreError::from(e)))?;
        let state = match state {
            Ok(s) => s,
            Err(_) => self.view(sale).await?,
        };
        Ok((created && existing.is_none(), state))
    }

    pub async fn reserve(
        &self,
        sale: &SaleId,
        user: &UserId,
        qty: u32,
        idem: Option<&IdempotencyKey>,
    ) -> Result<ReserveOutcome, ApiError> {
        let rid = Uuid::new_v4().to_string();
        let cap = self.max_active_holds;
        self.loaded(sale, || self.gate.reserve(sale, &rid, user, qty, idem, cap))
            .await
    }

    /// Best effort: an ended hold stops counting for its buyer (it would
    /// anyway at its deadline).
    async fn forget(&self, sale: &SaleId, rid: &str, outcome: &RecordOutcome) {
        if self.max_active_holds == 0 {
            return;
        }
        if let RecordOutcome::Done(rec) = outcome {
            if let Err(e) = self.gate.forget_hold(&rec.user, sale, rid).await {
                tracing::debug!(error = %crate::error::chain(&e), "could not drop an ended hold from its buyer's set");
            }
        }
    }

    pub async fn lookup(&self, sale: &SaleId, rid: &Uuid) -> Result<Option<Record>, ApiError> {
        let rid = rid.to_string();
        self.loaded(sale, || self.gate.lookup(sale, &rid)).await
    }

    /// Confirms in Redis; with `postgres` durability (the default) answers
    /// only once the order row is committed. A replay persists again
    /// (idempotent), so a client retrying after a 503 gets its 200.
    pub async fn confirm(
        &self,
        sale: &SaleId,
        rid: &Uuid,
        actor: Actor<'_>,
    ) -> Result<RecordOutcome, ApiError> {
        let rid_s = rid.to_string();
        let outcome = self
            .loaded(sale, || self.gate.confirm(sale, &rid_s, actor))
            .await?;
        self.forget(sale, &rid_s, &outcome).await;
        if self.durability == ConfirmDurability::Postgres {
            if let RecordOutcome::Done(rec) | RecordOutcome::Replay(rec) = &outcome {
                let order = Order {
                    reservation_id: *rid,
                    sale_id: sale.as_str().to_string(),
                    user_id: rec.user.clone(),
                    quantity: i32::try_from(rec.qty).unwrap_or(i32::MAX),
                    confirmed_at: DateTime::from_timestamp_millis(rec.at_ms).unwrap_or_default(),
                };
                if let Err(e) = self
                    .store
                    .record_orders(&[order], self.confirm_timeout)
                    .await
                {
                    crate::metrics::postgres_write_error("confirm");
                    return Err(ApiError::unavailable(
                        "confirmed, but not yet durable in Postgres; retry the confirm",
                        e,
                    ));
                }
            }
        }
        Ok(outcome)
    }

    pub async fn cancel(
        &self,
        sale: &SaleId,
        rid: &Uuid,
        actor: Actor<'_>,
    ) -> Result<RecordOutcome, ApiError> {
        let rid = rid.to_string();
        let outcome = self
            .loaded(sale, || self.gate.cancel(sale, &rid, actor))
            .await?;
        self.forget(sale, &rid, &outcome).await;
        Ok(outcome)
    }

    pub async fn extend(
        &self,
        sale: &SaleId,
        rid: &Uuid,
        actor: Actor<'_>,
        by: Option<Duration>,
    ) -> Result<RecordOutcome, ApiError> {
        let rid = rid.to_string();
        let outcome = self
            .loaded(sale, || self.gate.extend(sale, &rid, actor, by))
            .await?;
        if let (RecordOutcome::Done(rec), true) = (&outcome, self.max_active_holds > 0) {
            if let Ok(user) = UserId::parse(&rec.user) {
                if let Err(e) = self
                    .gate
                    .refresh_hold(&user, sale, &rid, rec.expires_ms)
                    .await
                {
                    tracing::debug!(error = %crate::error::chain(&e), "could not move an extended hold's deadline in its buyer's set");
                }
            }
        }
        Ok(outcome)
    }

    /// Loads every sale Postgres knows into Redis (no-op where present).
    pub async fn restore_all(&self) -> Result<usize, ApiError> {
        let mut n = 0;
        for row in self.store.list_sales().await? {
            if let Ok(id) = SaleId::parse(&row.sale_id) {
                self.restore(&id).await?;
                n += 1;
            }
        }
        Ok(n)
    }
}
