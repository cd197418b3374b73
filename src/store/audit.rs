//! The audit of admin changes (`admin_actions`, see
//! `migrations/0005_steer.sql`): one row per PUT, pause, resume and close,
//! in the transaction of the change itself; one per admin cancel, written
//! right after its script, once.

use std::collections::HashSet;

use chrono::{DateTime, Utc};
use serde_json::{json, Value};
use sqlx::{Postgres, Transaction};
use uuid::Uuid;

use super::sales::to_time;
use super::{Store, StoreError};
use crate::domain::{AdminOrigin, Admission, Record, SaleConfig, Status, Steer, Steering};
use crate::ids::SaleId;

/// What an admin did (`admin_actions.action`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AdminAction {
    /// `PUT /v1/sales/{id}`: created or updated.
    Configure,
    Steer(Steer),
    Cancel,
}

impl AdminAction {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Configure => "configure",
            Self::Steer(s) => s.as_str(),
            Self::Cancel => "cancel",
        }
    }
}

/// One audited admin change, as `GET /v1/audit` shows it.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct AuditEntry {
    pub at: DateTime<Utc>,
    pub action: String,
    pub sale_id: String,
    pub before: Option<Value>,
    pub after: Option<Value>,
    pub request_id: Option<String>,
    pub client: Option<String>,
}

/// A sale as an audit row shows it: its configuration in the PUT body's
/// terms, and what admins steered.
pub fn sale_json(c: &SaleConfig, steering: Steering) -> Value {
    let mut v = json!({
        "stock": c.stock,
        "per_user_limit": c.per_user_limit,
        "hold_ttl_secs": c.hold_ttl_ms / 1000,
        "max_hold_secs": c.max_hold_ms / 1000,
        "starts_at": to_time(c.starts_ms),
        "ends_at": to_time(c.ends_ms),
        "product_id": c.product_id,
        "admission": c.admission.as_str(),
        "paused": steering.paused,
        "closed_at": to_time(steering.closed_ms),
    });
    if let (
        Admission::Queue {
            per_sec,
            window_ms,
            opens_ms,
        },
        Some(m),
    ) = (&c.admission, v.as_object_mut())
    {
        m.insert("admit_per_sec".into(), json!(per_sec));
        m.insert("admission_window_secs".into(), json!(window_ms / 1000));
        m.insert("queue_opens_at".into(), json!(to_time(*opens_ms)));
    }
    if let (false, Some(m)) = (c.items.is_empty(), v.as_object_mut()) {
        let items: Vec<Value> = c
            .items
            .iter()
            .map(|i| json!({"sku": i.sku, "stock": i.stock, "per_user_limit": i.per_user_limit}))
            .collect();
        m.insert("items".into(), Value::Array(items));
    }
    v
}

/// A reservation as an audit row shows it (`<status>_at`: when it left
/// `held`, as in the reservation view).
pub fn reservation_json(rid: &Uuid, rec: &Record) -> Value {
    let mut v = json!({
        "reservation_id": rid,
        "user_id": rec.user,
        "quantity": rec.qty,
        "status": rec.status.as_str(),
        "expires_at": to_time(Some(rec.expires_ms)),
    });
    if let (true, Some(m)) = (rec.status != Status::Held, v.as_object_mut()) {
        let at = json!(to_time(Some(rec.at_ms)));
        m.insert(format!("{}_at", rec.status.as_str()), at);
    }
    v
}

impl Store {
    /// Records an admin change in the transaction that makes it.
    pub async fn audit(
        &self,
        tx: &mut Transaction<'static, Postgres>,
        action: AdminAction,
        sale: &SaleId,
        change: (Option<Value>, Option<Value>),
        origin: &AdminOrigin,
    ) -> Result<(), StoreError> {
        let q = sqlx::query(
            "INSERT INTO admin_actions (action, sale_id, before, after, request_id, client)
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(action.as_str())
        .bind(sale.as_str())
        .bind(change.0)
        .bind(change.1)
        .bind(origin.request_id.as_deref())
        .bind(origin.client.as_deref());
        self.bounded(self.timeout, q.execute(&mut **tx))
            .await
            .map(|_| ())
    }

    /// Records an admin cancel (its change is in Redis already). Once per
    /// reservation: the retry of a cancel whose row could not be written
    /// writes it, and a row already there is kept.
    pub async fn audit_cancel(
        &self,
        sale: &SaleId,
        rid: &Uuid,
        change: (Value, Value),
        origin: &AdminOrigin,
    ) -> Result<(), StoreError> {
        let q = sqlx::query(
            "INSERT INTO admin_actions (action, sale_id, reservation_id, before, after, request_id, client)
             VALUES ('cancel', $1, $2, $3, $4, $5, $6)
             ON CONFLICT (reservation_id) WHERE action = 'cancel' DO NOTHING",
        )
        .bind(sale.as_str())
        .bind(rid)
        .bind(change.0)
        .bind(change.1)
        .bind(origin.request_id.as_deref())
        .bind(origin.client.as_deref());
        self.bounded(self.timeout, q.execute(&self.pool))
            .await
            .map(|_| ())
    }

    /// Which of these reservations have their admin cancel audited (one
    /// index probe each, on `admin_actions_one_cancel`).
    pub async fn audited_cancels(&self, rids: &[Uuid]) -> Result<HashSet<Uuid>, StoreError> {
        if rids.is_empty() {
            return Ok(HashSet::new());
        }
        let q = sqlx::query_as::<_, (Uuid,)>(
            "SELECT r.id FROM UNNEST($1::uuid[]) AS r(id)
             WHERE EXISTS (SELECT 1 FROM admin_actions a
                           WHERE a.reservation_id = r.id AND a.action = 'cancel')",
        )
        .bind(rids);
        let rows = self.bounded(self.timeout, q.fetch_all(&self.pool)).await?;
        Ok(rows.into_iter().map(|r| r.0).collect())
    }

    /// Whether the reservation's `cancelled` event is written.
    pub async fn cancel_recorded(&self, rid: &Uuid) -> Result<bool, StoreError> {
        let q = sqlx::query_scalar::<_, bool>(
            "SELECT EXISTS (SELECT 1 FROM stock_movements
                            WHERE reservation_id = $1 AND kind = 'cancelled')",
        )
        .bind(rid);
        self.bounded(self.timeout, q.fetch_one(&self.pool)).await
    }

    /// The newest `limit` admin changes (of one sale, or of all), newest first.
    pub async fn audit_log(
        &self,
        sale: Option<&SaleId>,
        limit: u32,
    ) -> Result<Vec<AuditEntry>, StoreError> {
        let q = match sale {
            Some(sale) => sqlx::query_as::<_, AuditEntry>(concat!(
                "SELECT at, action, sale_id, before, after, request_id, client FROM admin_actions",
                " WHERE sale_id = $2 ORDER BY id DESC LIMIT $1"
            ))
            .bind(i64::from(limit))
            .bind(sale.as_str()),
            None => sqlx::query_as::<_, AuditEntry>(concat!(
                "SELECT at, action, sale_id, before, after, request_id, client FROM admin_actions",
                " ORDER BY id DESC LIMIT $1"
            ))
            .bind(i64::from(limit)),
        };
        self.bounded(self.timeout, q.fetch_all(&self.pool)).await
    }
}
