//! A buyer's reservation: reserve, read, and the transitions (confirm,
//! cancel, extend), with the durable confirm and the reservations Redis
//! lost but Postgres recorded.

use chrono::DateTime;
use uuid::Uuid;

use super::{Service, ServiceError};
use crate::config::ConfirmDurability;
use crate::domain::{
    Actor, AdminOrigin, Line, Order, QueueOutcome, Record, RecordOutcome, ReserveOutcome, Status,
};
use crate::gate::Transition;
use crate::ids::{IdempotencyKey, SaleId, UserId};
use crate::store::{reservation_json, Committed};

impl Service {
    /// Holds `qty` units (a one-item sale) or, on a sale of several items,
    /// every line of `cart` (distinct skus, sorted; `qty` their total) or
    /// none.
    pub async fn reserve(
        &self,
        sale: &SaleId,
        user: &UserId,
        qty: u32,
        cart: &[Line],
        idem: Option<&IdempotencyKey>,
    ) -> Result<ReserveOutcome, ServiceError> {
        // Made here, once: the script may run twice (a cluster retry) and
        // must hold the units once.
        let rid = Uuid::new_v4();
        let outcome = self
            .loaded(sale, || {
                self.gate.reserve(sale, &rid, user, qty, cart, idem)
            })
            .await?;
        // A replay whose reservation Redis no longer has (the script then
        // says expired, deadline 0): what Postgres recorded, if anything.
        if let ReserveOutcome::Replay {
            rid,
            qty,
            status: Status::Expired,
            expires_ms: 0,
            ref items,
        } = outcome
        {
            if let Some(rec) = self.store.final_record(sale, &rid).await? {
                let items = if rec.items.is_empty() {
                    items.clone()
                } else {
                    rec.items
                };
                return Ok(ReserveOutcome::Replay {
                    rid,
                    qty,
                    status: rec.status,
                    expires_ms: rec.expires_ms,
                    items,
                });
            }
        }
        Ok(outcome)
    }

    /// Reads a reservation; the caller checks who may see it.
    pub async fn lookup(&self, sale: &SaleId, rid: &Uuid) -> Result<Option<Record>, ServiceError> {
        match self.loaded(sale, || self.gate.lookup(sale, rid)).await? {
            Some(rec) => Ok(Some(rec)),
            None => self.recorded(sale, rid, Actor::Admin).await,
        }
    }

    /// Confirms, cancels or extends a reservation.
    ///
    /// With `postgres` durability (the default) a confirm answers only once
    /// its order row is committed; a replay persists again (idempotent), so
    /// a client retrying after a 503 gets its 200. A confirm whose order
    /// Postgres refuses as stale (the sale's Redis state was lost and
    /// rebuilt before the write) is [`ServiceError::Lost`]. A reservation
    /// Redis does not know but Postgres recorded is confirmed: a confirm
    /// replays it, a cancel or extend conflicts with it.
    ///
    /// An admin cancel (`audit`: who asked) is audited once its script
    /// ran; until its row is written it answers [`ServiceError::NotAudited`]
    /// and its retry writes it (once, see `Store::audit_cancel`).
    pub async fn act(
        &self,
        sale: &SaleId,
        rid: &Uuid,
        actor: Actor<'_>,
        t: Transition,
        audit: Option<&AdminOrigin>,
    ) -> Result<RecordOutcome, ServiceError> {
        let outcome = self
            .loaded(sale, || self.gate.transition(sale, rid, actor, t))
            .await?;
        if outcome == RecordOutcome::NotFound {
            // Redis no longer has it (dropped once final and in Postgres,
            // expired, or lost): Postgres says what became of it, and the
            // transition answers as the script would have.
            let Some(rec) = self.recorded(sale, rid, actor).await? else {
                return Ok(RecordOutcome::NotFound);
            };
            let again = matches!(
                (t, rec.status),
                (Transition::Confirm, Status::Confirmed) | (Transition::Cancel, Status::Cancelled)
            );
            let outcome = if again {
                RecordOutcome::Replay(rec)
            } else {
                RecordOutcome::Conflict(rec)
            };
            // (An admin cancel read back from Postgres is audited already:
            // `by_admin` there means its `admin_actions` row exists.)
            return Ok(outcome);
        }
        if let (
            Transition::Confirm,
            ConfirmDurability::Postgres,
            RecordOutcome::Done(rec) | RecordOutcome::Replay(rec),
        ) = (t, self.durability, &outcome)
        {
            self.make_durable(sale, rid, rec).await?;
        }
        if let (
            Transition::Cancel,
            Actor::Admin,
            Some(origin),
            RecordOutcome::Done(rec) | RecordOutcome::Replay(rec),
        ) = (t, actor, audit, &outcome)
        {
            if rec.by_admin {
                self.audit_cancel(sale, rid, rec, origin).await?;
                self.forget_if_written(sale, rid).await;
            }
        }
        Ok(outcome)
    }

    /// Records an admin cancel: the hold as it was, and cancelled.
    async fn audit_cancel(
        &self,
        sale: &SaleId,
        rid: &Uuid,
        rec: &Record,
        origin: &AdminOrigin,
    ) -> Result<(), ServiceError> {
        let before = Record {
            status: Status::Held,
            ..rec.clone()
        };
        let change = (reservation_json(rid, &before), reservation_json(rid, rec));
        self.store
            .audit_cancel(sale, rid, change, origin)
            .await
            .map_err(ServiceError::NotAudited)
    }

    /// Drops an audited admin cancel's record from Redis if the
    /// write-behind wrote its event before the audit row was there (it
    /// then kept the record, see `background::worker`): one of the two
    /// sees the other's commit. Best effort: a record left stays until
    /// `FLASHGATE_RECORD_TTL_SECS`.
    async fn forget_if_written(&self, sale: &SaleId, rid: &Uuid) {
        if !self.drop_final_records {
            return;
        }
        let forgotten = match self.store.cancel_recorded(rid).await {
            Ok(true) => self
                .gate
                .drop_record(sale, rid)
                .await
                .map_err(|e| e.to_string()),
            Ok(false) => Ok(()),
            Err(e) => Err(e.to_string()),
        };
        if let Err(e) = forgotten {
            tracing::debug!(sale = %sale, reservation = %rid, error = %e, "an audited cancel's record stays in Redis until its TTL");
        }
    }

    /// Commits a confirmed reservation's order, within the confirm timeout,
    /// in a batch with the confirms waiting beside it (group commit).
    async fn make_durable(
        &self,
        sale: &SaleId,
        rid: &Uuid,
        rec: &Record,
    ) -> Result<(), ServiceError> {
        let order = Order {
            reservation_id: *rid,
            sale_id: sale.as_str().to_string(),
            user_id: rec.user.clone(),
            quantity: i32::try_from(rec.qty).unwrap_or(i32::MAX),
            confirmed_at: DateTime::from_timestamp_millis(rec.at_ms).unwrap_or_default(),
            epoch: rec.epoch,
            items: rec.items.clone(),
        };
        match self.confirms.commit(order, self.confirm_timeout).await {
            Ok(Committed::Recorded) => Ok(()),
            Ok(Committed::Stale) => {
                crate::metrics::stale_orders("confirm", 1);
                tracing::warn!(sale = %sale, reservation = %rid, "a confirm of a lost Redis state was refused: the sale was rebuilt from Postgres before its order was written");
                Err(ServiceError::Lost)
            }
            Err(e) => {
                crate::metrics::postgres_write_error("confirm");
                Err(ServiceError::NotDurable(e))
            }
        }
    }

    /// A reservation Redis does not know may still be recorded in Postgres
    /// (its record was dropped once final and written, has expired from
    /// Redis, or was lost with Redis' data): confirmed (its order),
    /// cancelled or expired (its event). Ownership is checked as in the
    /// scripts.
    async fn recorded(
        &self,
        sale: &SaleId,
        rid: &Uuid,
        actor: Actor<'_>,
    ) -> Result<Option<Record>, ServiceError> {
        let Some(rec) = self.store.final_record(sale, rid).await? else {
            return Ok(None);
        };
        if !actor.may_act_for(&rec.user) {
            return Err(ServiceError::Forbidden);
        }
        Ok(Some(rec))
    }
}

impl Service {
    /// Joins a queued sale's fair queue (`join`), or reads the buyer's
    /// ticket. A buyer who joins before the start gets a uniformly random
    /// place, drawn here.
    pub async fn queue(
        &self,
        sale: &SaleId,
        user: &UserId,
        join: bool,
    ) -> Result<QueueOutcome, ServiceError> {
        // 53 random bits: every place in [0, 1) a double can tell apart.
        let place = (Uuid::new_v4().as_u128() >> 75) as f64 / (1u64 << 53) as f64;
        self.loaded(sale, || self.gate.queue(sale, user, join, place))
            .await
    }
}
