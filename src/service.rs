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
    SaleState, Status,
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
    ///
    /// The sale's row stays locked from the read of what was sold until the
    /// new epoch is committed, so no order write of the lost state can slip
    /// in between (see `migrations/0002_sale_epoch.sql`). A rebuild Postgres
    /// did not commit is taken back from Redis.
    pub async fn restore(&self, sale: &SaleId) -> Result<(), ApiError> {
        let rebuilding = |e| ApiError::unavailable("the sale's state is being rebuilt; retry", e);
        let Some(rebuild) = self.store.begin_rebuild(sale).await.map_err(rebuilding)? else {
            return Err(ApiError::SaleNotFound);
        };
        let snap = &rebuild.snapshot;
        let (sold, buyers, epoch) = (snap.sold, snap.bought.len(), snap.sale.epoch + 1);
        let loaded = match self
            .gate
            .load(sale, &snap.sale.config(), snap.sold, &snap.bought, epoch)
            .await
        {
            Ok(loaded) => loaded,
            Err(e) => {
                self.store.abandon_rebuild(rebuild).await;
                return Err(e.into());
            }
        };
        if !loaded {
            // Another instance rebuilt it first (it held the lock before us).
            self.store.abandon_rebuild(rebuild).await;
            return Ok(());
        }
        if let Err(e) = self.store.commit_rebuild(rebuild, sale, epoch).await {
            match self.gate.unload(sale, epoch).await {
                Ok(_) => {
                    tracing::warn!(sale = %sale, error = %crate::error::chain(&e), "rebuilt a sale in Redis but could not commit its epoch: taken back, rebuilt on the next request")
                }
                Err(u) => {
                    tracing::error!(sale = %sale, error = %crate::error::chain(&e), unload_error = %crate::error::chain(&u), "rebuilt a sale in Redis but could neither commit its epoch nor take the rebuild back: its confirms are refused until `flashgate reconcile --fix`")
                }
            }
            return Err(rebuilding(e));
        }
        tracing::warn!(sale = %sale, sold, buyers, epoch, "sale state was missing in Redis: rebuilt from Postgres");
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

    /// Every sale Postgres knows, as Redis has it; a sale whose Redis is
    /// unavailable (its node away, on Redis Cluster) is named in the second
    /// list instead of failing the whole listing.
    pub async fn list(&self) -> Result<(Vec<(SaleId, SaleState)>, Vec<SaleId>), ApiError> {
        let rows = self.store.list_sales().await?;
        let mut out = Vec::with_capacity(rows.len());
        let mut unavailable = Vec::new();
        for row in rows {
            let Ok(id) = SaleId::parse(&row.sale_id) else {
                continue;
            };
            match self.view(&id).await {
                Ok(state) => out.push((id, state)),
                Err(ApiError::Unavailable { .. }) => unavailable.push(id),
                Err(e) => return Err(e),
            }
        }
        Ok((out, unavailable))
    }

    /// Creates or updates a sale in Postgres and Redis together: the row is
    /// locked, the script decides (refusing a stock below sold + held), and
    /// the row commits only if the script accepted.
    pub async fn configure(
        &self,
        sale: &SaleId,
        cfg: &SaleConfig,
    ) -> Result<(bool, SaleState), ApiError> {
        // A sale known to Postgres whose Redis state was lost is rebuilt
        // before it changes, or the update would reset what was sold. Before
        // the configuration's own lock: the rebuild locks the row itself.
        if let Err(GateError::NotLoaded) = self.gate.sweep(sale).await {
            match self.restore(sale).await {
                Ok(()) | Err(ApiError::SaleNotFound) => {}
                Err(e) => return Err(e),
            }
        }
        let (mut tx, existing) = self.store.begin_configure(sale).await?;
        // Lost again since: the script answers not_loaded (503, retry).
        let epoch = existing.as_ref().map_or(0, |row| row.epoch);
        let outcome = self
            .gate
            .configure(sale, cfg, existing.is_some(), epoch)
            .await?;
        let (created, epoch) = match outcome {
            ConfigureOutcome::BelowCommitted { sold, held } => {
                return Err(ApiError::StockBelowCommitted { sold, held })
            }
            ConfigureOutcome::Created { epoch } => (true, epoch),
            ConfigureOutcome::Updated { epoch } => (false, epoch),
        };
        self.store.upsert_sale(&mut tx, sale, cfg, epoch).await?;
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

    /// A reservation Redis does not know may still have its order in
    /// Postgres (its record was lost with Redis' data, or has expired from
    /// Redis): then it is confirmed. Ownership is checked as in the scripts.
    async fn recorded(
        &self,
        sale: &SaleId,
        rid: &Uuid,
        actor: Actor<'_>,
    ) -> Result<Option<Record>, ApiError> {
        let Some(order) = self.store.order(sale, rid).await? else {
            return Ok(None);
        };
        if let Actor::Buyer(user) = actor {
            if user.as_str() != order.user_id {
                return Err(ApiError::Forbidden);
            }
        }
        let at_ms = order.confirmed_at.timestamp_millis();
        Ok(Some(Record {
            user: order.user_id,
            qty: u32::try_from(order.quantity).unwrap_or(0),
            status: Status::Confirmed,
            expires_ms: at_ms,
            at_ms,
            epoch: 0,
        }))
    }

    /// Redis' `not_found`, or the order Postgres recorded (see [`Self::recorded`]),
    /// as the transition's outcome for a confirmed reservation.
    async fn or_recorded(
        &self,
        sale: &SaleId,
        rid: &Uuid,
        actor: Actor<'_>,
        outcome: RecordOutcome,
        confirmed: fn(Record) -> RecordOutcome,
    ) -> Result<RecordOutcome, ApiError> {
        if outcome != RecordOutcome::NotFound {
            return Ok(outcome);
        }
        Ok(self
            .recorded(sale, rid, actor)
            .await?
            .map_or(RecordOutcome::NotFound, confirmed))
    }

    /// Reads a reservation; the caller checks who may see it.
    pub async fn lookup(&self, sale: &SaleId, rid: &Uuid) -> Result<Option<Record>, ApiError> {
        let rid_s = rid.to_string();
        match self.loaded(sale, || self.gate.lookup(sale, &rid_s)).await? {
            Some(rec) => Ok(Some(rec)),
            None => self.recorded(sale, rid, Actor::Admin).await,
        }
    }

    /// Confirms in Redis; with `postgres` durability (the default) answers
    /// only once the order row is committed. A replay persists again
    /// (idempotent), so a client retrying after a 503 gets its 200. A
    /// confirm whose order Postgres refuses as stale (the sale's Redis state
    /// was lost and rebuilt before the write) answers 410: its unit was
    /// offered again and this reservation will never be recorded.
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
        if outcome == RecordOutcome::NotFound {
            return self
                .or_recorded(sale, rid, actor, outcome, RecordOutcome::Replay)
                .await;
        }
        self.forget(sale, &rid_s, &outcome).await;
        if self.durability == ConfirmDurability::Postgres {
            if let RecordOutcome::Done(rec) | RecordOutcome::Replay(rec) = &outcome {
                let order = Order {
                    reservation_id: *rid,
                    sale_id: sale.as_str().to_string(),
                    user_id: rec.user.clone(),
                    quantity: i32::try_from(rec.qty).unwrap_or(i32::MAX),
                    confirmed_at: DateTime::from_timestamp_millis(rec.at_ms).unwrap_or_default(),
                    epoch: rec.epoch,
                };
                match self
                    .store
                    .record_orders(&[order], self.confirm_timeout)
                    .await
                {
                    Ok(recorded) if recorded.stale.is_empty() => {}
                    Ok(_) => {
                        crate::metrics::stale_orders("confirm", 1);
                        tracing::warn!(sale = %sale, reservation = %rid, "a confirm of a lost Redis state was refused: the sale was rebuilt from Postgres before its order was written");
                        return Err(ApiError::ReservationExpired);
                    }
                    Err(e) => {
                        crate::metrics::postgres_write_error("confirm");
                        return Err(ApiError::unavailable(
                            "confirmed, but not yet durable in Postgres; retry the confirm",
                            e,
                        ));
                    }
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
        let rid_s = rid.to_string();
        let outcome = self
            .loaded(sale, || self.gate.cancel(sale, &rid_s, actor))
            .await?;
        self.forget(sale, &rid_s, &outcome).await;
        self.or_recorded(sale, rid, actor, outcome, RecordOutcome::Conflict)
            .await
    }

    pub async fn extend(
        &self,
        sale: &SaleId,
        rid: &Uuid,
        actor: Actor<'_>,
        by: Option<Duration>,
    ) -> Result<RecordOutcome, ApiError> {
        let rid_s = rid.to_string();
        let outcome = self
            .loaded(sale, || self.gate.extend(sale, &rid_s, actor, by))
            .await?;
        if let (RecordOutcome::Done(rec), true) = (&outcome, self.max_active_holds > 0) {
            if let Ok(user) = UserId::parse(&rec.user) {
                if let Err(e) = self
                    .gate
                    .refresh_hold(&user, sale, &rid_s, rec.expires_ms)
                    .await
                {
                    tracing::debug!(error = %crate::error::chain(&e), "could not move an extended hold's deadline in its buyer's set");
                }
            }
        }
        self.or_recorded(sale, rid, actor, outcome, RecordOutcome::Conflict)
            .await
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
