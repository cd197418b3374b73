//! Request and response bodies of the v1 API.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::gate::{Record, SaleState, Status};
use crate::ids::SaleId;

pub fn time(ms: i64) -> Option<DateTime<Utc>> {
    DateTime::from_timestamp_millis(ms)
}

/// `PUT /v1/sales/{sale_id}`. Unknown fields are refused.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SaleInput {
    #[schema(minimum = 0, maximum = 1_000_000_000)]
    pub stock: i64,
    #[schema(minimum = 1, maximum = 10_000)]
    pub per_user_limit: u32,
    pub hold_ttl_secs: Option<u32>,
    pub max_hold_secs: Option<u32>,
    pub starts_at: Option<DateTime<Utc>>,
    pub ends_at: Option<DateTime<Utc>>,
    pub product_id: Option<String>,
}

/// `POST .../reservations`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReserveInput {
    #[serde(default = "one")]
    #[schema(minimum = 1, default = 1)]
    pub quantity: u32,
}

fn one() -> u32 {
    1
}

/// `POST .../extend` (the body is optional).
#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ExtendInput {
    pub extend_secs: Option<u32>,
}

#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum SaleStateName {
    Scheduled,
    Live,
    SoldOut,
    Ended,
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
}

impl SaleView {
    pub fn new(id: &SaleId, s: &SaleState) -> Self {
        let available = (s.stock - s.sold - s.held).max(0);
        let state = if s.ends_ms.is_some_and(|e| s.now_ms >= e) {
            SaleStateName::Ended
        } else if s.starts_ms.is_some_and(|st| s.now_ms < st) {
            SaleStateName::Scheduled
        } else if available == 0 {
            SaleStateName::SoldOut
        } else {
            SaleStateName::Live
        };
        Self {
            sale_id: id.to_string(),
            product_id: s.product_id.clone(),
            stock: s.stock,
            sold: s.sold,
            held: s.held,
            available,
            per_user_limit: s.per_user_limit,
            hold_ttl_secs: s.hold_ttl_ms / 1000,
            max_hold_secs: s.max_hold_ms / 1000,
            starts_at: s.starts_ms.and_then(time),
            ends_at: s.ends_ms.and_then(time),
            state,
        }
    }
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ReservationView {
    pub reservation_id: String,
    pub sale_id: String,
    pub user_id: String,
    pub quantity: u32,
    pub status: Status,
    pub expires_at: Option<DateTime<Utc>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub confirmed_at: Option<DateTime<Utc>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cancelled_at: Option<DateTime<Utc>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expired_at: Option<DateTime<Utc>>,
}

impl ReservationView {
    pub fn new(sale: &SaleId, rid: &str, rec: &Record) -> Self {
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
            status: rec.status,
            expires_at: time(rec.expires_ms),
            confirmed_at: at(Status::Confirmed),
            cancelled_at: at(Status::Cancelled),
            expired_at: at(Status::Expired),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(
        stock: i64,
        sold: i64,
        held: i64,
        starts: Option<i64>,
        ends: Option<i64>,
    ) -> SaleState {
        SaleState {
            stock,
            per_user_limit: 2,
            hold_ttl_ms: 300_000,
            max_hold_ms: 1_800_000,
            starts_ms: starts,
            ends_ms: ends,
            product_id: None,
            sold,
            held,
            now_ms: 1_000_000,
            created_ms: 0,
            updated_ms: 0,
            released: 0,
        }
    }

    #[test]
    fn sale_state_names() {
        let id = SaleId::parse("s").expect("id");
        assert_eq!(
            SaleView::new(&id, &state(10, 0, 0, None, None)).state,
            SaleStateName::Live
        );
        assert_eq!(
            SaleView::new(&id, &state(10, 4, 6, None, None)).state,
            SaleStateName::SoldOut
        );
        assert_eq!(
            SaleView::new(&id, &state(10, 0, 0, Some(2_000_000), None)).state,
            SaleStateName::Scheduled
        );
        assert_eq!(
            SaleView::new(&id, &state(10, 0, 0, None, Some(1_000_000))).state,
            SaleStateName::Ended
        );
        let v = SaleView::new(&id, &state(10, 3, 2, None, None));
        assert_eq!((v.available, v.hold_ttl_secs), (5, 300));
    }

    #[test]
    fn reserve_input_refuses_unknown_fields_and_bad_numbers() {
        assert_eq!(
            serde_json::from_str::<ReserveInput>("{}")
                .expect("default")
                .quantity,
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
