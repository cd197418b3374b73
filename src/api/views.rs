//! Request and response bodies of the v1 API.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use uuid::Uuid;

use crate::domain::{Admission, Phase, Record, SaleState, Status};
use crate::ids::SaleId;

pub fn time(ms: i64) -> Option<DateTime<Utc>> {
    DateTime::from_timestamp_millis(ms)
}

/// `PUT /v1/sales/{sale_id}`. Unknown fields are refused.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SaleInput {
    /// A one-item sale's units (or give `items`, not both).
    #[serde(default, deserialize_with = "present")]
    #[schema(minimum = 0, maximum = 1_000_000_000)]
    pub stock: Option<i64>,
    /// A sale of several items (1..=100, distinct skus), instead of
    /// `stock`; the sale's `per_user_limit` caps a buyer across them.
    #[serde(default, deserialize_with = "present")]
    pub items: Option<Vec<ItemInput>>,
    #[schema(minimum = 1, maximum = 10_000)]
    pub per_user_limit: u32,
    pub hold_ttl_secs: Option<u32>,
    pub max_hold_secs: Option<u32>,
    pub starts_at: Option<DateTime<Utc>>,
    pub ends_at: Option<DateTime<Utc>>,
    pub product_id: Option<String>,
    /// `"open"` (the default: whoever asks first) or `"queue"` (a fair
    /// queue from the start).
    pub admission: Option<AdmissionName>,
    /// Queued sales: places let in per second after the start (default 50).
    #[schema(minimum = 1, maximum = 100_000)]
    pub admit_per_sec: Option<u32>,
    /// Queued sales: how long an admitted buyer may take to reserve
    /// (seconds, default 120).
    pub admission_window_secs: Option<u32>,
    /// Queued sales: joins before this time are refused (`queue_not_open`).
    pub queue_opens_at: Option<DateTime<Utc>>,
}

/// One item of a sale of several items (`items` in `PUT`).
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ItemInput {
    /// 1-64 characters of `[A-Za-z0-9_-]`, distinct within the sale.
    #[schema(example = "M")]
    pub sku: String,
    #[schema(minimum = 0, maximum = 1_000_000_000)]
    pub stock: i64,
    /// A buyer's cap of this item, at most the sale's `per_user_limit`.
    pub per_user_limit: Option<u32>,
}

/// `POST .../reservations`: `quantity` (a one-item sale) or `items` (a sale
/// of several items), not both.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReserveInput {
    #[serde(default, deserialize_with = "present")]
    #[schema(minimum = 1, default = 1)]
    pub quantity: Option<u32>,
    /// A cart: every line is held, or none.
    #[serde(default, deserialize_with = "present")]
    pub items: Option<Vec<LineInput>>,
}

/// A field that may be left out but, when given, is not `null`.
fn present<'de, D, T>(d: D) -> Result<Option<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    T::deserialize(d).map(Some)
}

impl ReserveInput {
    /// Units of a one-item sale (1 when not given).
    pub fn quantity(&self) -> u32 {
        self.quantity.unwrap_or(1)
    }
}

/// One line of a cart (`items` in a reserve), and of a reservation.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LineInput {
    pub sku: String,
    #[schema(minimum = 1)]
    pub quantity: u32,
}

/// `POST .../extend` (the body is optional).
#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ExtendInput {
    pub extend_secs: Option<u32>,
}

/// How buyers are let in (`admission`).
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum AdmissionName {
    Open,
    Queue,
}

/// Where a sale stands (`state` in the sale view).
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum SaleStateName {
    Scheduled,
    Live,
    SoldOut,
    Ended,
}

impl From<Phase> for SaleStateName {
    fn from(p: Phase) -> Self {
        match p {
            Phase::Scheduled => Self::Scheduled,
            Phase::Live => Self::Live,
            Phase::SoldOut => Self::SoldOut,
            Phase::Ended => Self::Ended,
        }
    }
}

/// What a reservation is (`status`).
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum StatusName {
    Held,
    Confirmed,
    Cancelled,
    Expired,
}

impl From<Status> for StatusName {
    fn from(s: Status) -> Self {
        match s {
            Status::Held => Self::Held,
            Status::Confirmed => Self::Confirmed,
            Status::Cancelled => Self::Cancelled,
            Status::Expired => Self::Expired,
        }
    }
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct SaleView {
    pub sale_id: String,
    pub product_id: Option<String>,
    pub stock: i64,
    pub sold: i64,
    pub held: i64,
    pub available: i64,
    pub per_user_limit: u32,
    pub hold_ttl_secs: i64,
    pub max_hold_secs: i64,
    pub starts_at: Option<DateTime<Utc>>,
    pub ends_at: Option<DateTime<Utc>>,
    pub state: SaleStateName,
    pub admission: AdmissionName,
    /// Redis' clock when the sale was read (RFC 3339, ms): a countdown
    /// runs on this, not on the visitor's clock.
    pub server_time: Option<DateTime<Utc>>,
    /// Grows with every change of the sale (counters, configuration,
    /// pause, queue); the `ETag` and the event id.
    pub version: i64,
    /// A paused sale answers reserves and queue joins with `sale_paused`.
    pub paused: bool,
    /// An admin closed the sale: it ended at `ends_at`, for good.
    pub closed: bool,
    /// A queued sale's queue: buyers in it, places admitted so far.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub queue: Option<QueueView>,
    /// A sale of several items: each one's units (the sale's `stock`,
    /// `sold`, `held` and `available` are their sums). Absent for a
    /// one-item sale.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub items: Option<Vec<ItemView>>,
}

/// One item in the sale view.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ItemView {
    pub sku: String,
    pub stock: i64,
    pub sold: i64,
    pub held: i64,
    pub available: i64,
    /// The item's own per-buyer cap, if it has one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub per_user_limit: Option<u32>,
}

/// `queue` in the sale view.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct QueueView {
    pub joined: u64,
    pub serving: u64,
}

impl SaleView {
    pub fn new(id: &SaleId, s: &SaleState) -> Self {
        let c = &s.config;
        Self {
            sale_id: id.to_string(),
            product_id: c.product_id.clone(),
            stock: c.stock,
            sold: s.sold,
            held: s.held,
            available: s.available(),
            per_user_limit: c.per_user_limit,
            hold_ttl_secs: c.hold_ttl_ms / 1000,
            max_hold_secs: c.max_hold_ms / 1000,
            starts_at: c.starts_ms.and_then(time),
            ends_at: c.ends_ms.and_then(time),
            state: s.phase().into(),
            admission: match c.admission {
                Admission::Open => AdmissionName::Open,
                Admission::Queue { .. } => AdmissionName::Queue,
            },
            server_time: time(s.now_ms),
            // The queue moves on by the clock between changes: its count
            // of admitted places joins the version, which so still grows.
            version: s.view_version(),
            paused: s.paused,
            closed: s.closed_ms.is_some(),
            queue: s.queue.map(|q| QueueView {
                joined: q.joined,
                serving: q.serving,
            }),
            items: (!s.items.is_empty()).then(|| {
                s.items
                    .iter()
                    .map(|i| ItemView {
                        sku: i.item.sku.clone(),
                        stock: i.item.stock,
                        sold: i.sold,
                        held: i.held,
                        available: i.available(),
                        per_user_limit: i.item.per_user_limit,
                    })
                    .collect()
            }),
        }
    }
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ReservationView {
    pub reservation_id: String,
    pub sale_id: String,
    pub user_id: String,
    pub quantity: u32,
    pub status: StatusName,
    pub expires_at: Option<DateTime<Utc>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub confirmed_at: Option<DateTime<Utc>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cancelled_at: Option<DateTime<Utc>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expired_at: Option<DateTime<Utc>>,
    /// A sale of several items: the cart (`quantity` is its total).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub items: Option<Vec<LineInput>>,
}

impl ReservationView {
    pub fn new(sale: &SaleId, rid: &Uuid, rec: &Record) -> Self {
        let at = |s: Status| {
            if rec.status == s {
                time(rec.at_ms)
            } else {
                None
            }
        };
        Self {
            reservation_id: rid.to_string(),
            sale_id: sale.to_string(),
            user_id: rec.user.clone(),
            quantity: rec.qty,
            status: rec.status.into(),
            expires_at: time(rec.expires_ms),
            confirmed_at: at(Status::Confirmed),
            cancelled_at: at(Status::Cancelled),
            expired_at: at(Status::Expired),
            items: (!rec.items.is_empty()).then(|| {
                rec.items
                    .iter()
                    .map(|l| LineInput {
                        sku: l.sku.clone(),
                        quantity: l.quantity,
                    })
                    .collect()
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reserve_input_refuses_unknown_fields_and_bad_numbers() {
        assert_eq!(
            serde_json::from_str::<ReserveInput>("{}")
                .expect("default")
                .quantity(),
            1
        );
        assert!(
            serde_json::from_str::<ReserveInput>(r#"{"quantity":1,"user_id":"mallory"}"#).is_err()
        );
        for bad in [
            r#"{"quantity":-1}"#,
            r#"{"quantity":1.5}"#,
            r#"{"quantity":"2"}"#,
            r#"{"quantity":99999999999}"#,
            "{",
            "null",
        ] {
            assert!(serde_json::from_str::<ReserveInput>(bad).is_err(), "{bad}");
        }
    }
}

/// A list of sales (`GET /v1/sales`).
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct SaleList {
    pub sales: Vec<SaleView>,
    /// Sales Postgres knows whose Redis state could not be read now (their
    /// Redis node is away, on Redis Cluster): retry later.
    pub unavailable: Vec<String>,
}

/// The one error body: `{"error": {"code", "message", "details"}}`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ErrorDetail {
    /// snake_case, e.g. `sold_out`, `user_limit_exceeded`, `unavailable`.
    pub code: String,
    pub message: String,
    #[schema(value_type = Object)]
    pub details: serde_json::Value,
}

/// `{sale_id}` in a path, for the OpenAPI description.
#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Path)]
pub struct SalePath {
    /// 1-64 characters of `[A-Za-z0-9_-]`
    #[param(example = "spring-drop")]
    pub sale_id: String,
}

/// `{sale_id}/reservations/{reservation_id}` in a path.
#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Path)]
pub struct ReservationPath {
    /// 1-64 characters of `[A-Za-z0-9_-]`
    #[param(example = "spring-drop")]
    pub sale_id: String,
    /// the reservation id
    pub reservation_id: Uuid,
}

/// The error answers most routes share, for the OpenAPI description: one
/// text each, referenced by the handlers' `responses(...)`.
pub mod answers {
    use super::ErrorBody;

    #[derive(utoipa::IntoResponses)]
    #[response(
        status = 400,
        description = "`invalid_request`: a malformed id, body or header"
    )]
    pub struct BadRequest(pub ErrorBody);

    #[derive(utoipa::IntoResponses)]
    #[response(
        status = 401,
        description = "`unauthorized`: no, or a bad, bearer token"
    )]
    pub struct Unauthorized(pub ErrorBody);

    #[derive(utoipa::IntoResponses)]
    #[response(status = 404, description = "`sale_not_found`")]
    pub struct SaleNotFound(pub ErrorBody);

    #[derive(utoipa::IntoResponses)]
    #[response(status = 403, description = "`forbidden`: another buyer's reservation")]
    pub struct Forbidden(pub ErrorBody);

    #[derive(utoipa::IntoResponses)]
    #[response(
        status = 404,
        description = "`sale_not_found` or `reservation_not_found`"
    )]
    pub struct ReservationNotFound(pub ErrorBody);

    #[derive(utoipa::IntoResponses)]
    #[response(status = 410, description = "`reservation_expired`")]
    pub struct ReservationExpired(pub ErrorBody);

    #[derive(utoipa::IntoResponses)]
    #[response(status = 413, description = "`payload_too_large`")]
    pub struct PayloadTooLarge(pub ErrorBody);

    #[derive(utoipa::IntoResponses)]
    #[response(status = 429, description = "`rate_limited` (Retry-After)")]
    pub struct RateLimited(pub ErrorBody);

    #[derive(utoipa::IntoResponses)]
    #[response(
        status = 503,
        description = "`unavailable`: Redis or Postgres down, Redis out of memory, or the sale being rebuilt; retry (Retry-After)"
    )]
    pub struct Unavailable(pub ErrorBody);
}
