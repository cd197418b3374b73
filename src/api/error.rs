//! The one error type of the HTTP API and its mapping to the contract's
//! JSON body: `{"error": {"code", "message", "details"}}`.

use actix_web::http::{header, StatusCode};
use actix_web::{HttpResponse, ResponseError};
use chrono::{DateTime, Utc};
use serde_json::{json, Value};

use crate::domain::{ItemBelow, Shortfall};
use crate::gate::GateError;
use crate::service::ServiceError;
use crate::store::StoreError;
use crate::telemetry::chain;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{message}")]
    InvalidRequest { message: String, details: Value },
    /// Well-formed, but not a valid sale of several items or cart (422
    /// `invalid_request`, `details.field` names what).
    #[error("{message}")]
    Unprocessable { message: String, details: Value },
    #[error("request body larger than {limit} bytes")]
    PayloadTooLarge { limit: usize },
    #[error("{0}")]
    Unauthorized(&'static str),
    #[error("this reservation belongs to another buyer")]
    Forbidden,
    #[error("no such route")]
    NotFound,
    #[error("method not allowed")]
    MethodNotAllowed,
    #[error("no such sale")]
    SaleNotFound,
    #[error("no such reservation")]
    ReservationNotFound,
    /// `shortfalls`: a cart's lines short of units (none for one item).
    #[error("sold out")]
    SoldOut {
        available: i64,
        shortfalls: Vec<Shortfall>,
    },
    /// `sku`: the item whose own cap it is (None: the sale's cap).
    #[error("this buyer would exceed the sale's per-user limit")]
    UserLimitExceeded {
        limit: u32,
        held: u32,
        bought: u32,
        sku: Option<String>,
    },
    #[error("the sale has not started yet")]
    SaleNotStarted { starts_at: Option<DateTime<Utc>> },
    #[error("the sale has ended")]
    SaleEnded { ends_at: Option<DateTime<Utc>> },
    /// `items`: the items below (none for a one-item sale).
    #[error("stock would fall below the units sold and held")]
    StockBelowCommitted {
        sold: i64,
        held: i64,
        items: Vec<ItemBelow>,
    },
    #[error("the sale is closed: it cannot be resumed, paused or configured")]
    SaleClosed { ends_at: Option<DateTime<Utc>> },
    #[error("the reservation was cancelled")]
    ReservationCancelled,
    #[error("the reservation was confirmed")]
    ReservationConfirmed,
    #[error("the reservation expired")]
    ReservationExpired,
    #[error("the hold already runs to the sale's maximum hold time")]
    HoldLimitReached { expires_at: Option<DateTime<Utc>> },
    #[error("this Idempotency-Key was used with a different request body")]
    IdempotencyKeyReused,
    #[error("the buyer's place in the queue has not come yet")]
    NotAdmitted { position: Option<u64>, serving: u64 },
    #[error("the buyer's admission window has passed")]
    AdmissionExpired {
        admitted_until: Option<DateTime<Utc>>,
    },
    #[error("this sale has no queue (its admission is open)")]
    SaleNotQueued,
    #[error("the sale's queue is not open yet")]
    QueueNotOpen { opens_at: Option<DateTime<Utc>> },
    #[error("this buyer has not joined the sale's queue")]
    NotInQueue,
    #[error("the sale is paused")]
    SalePaused,
    #[error("too many requests")]
    RateLimited { retry_after_secs: u64 },
    /// A dependency is down, slow, full or rebuilding: retry later.
    #[error("{message}")]
    Unavailable {
        message: &'static str,
        #[source]
        source: Option<Box<dyn std::error::Error + Send + Sync>>,
    },
    #[error("internal error")]
    Internal(#[source] Box<dyn std::error::Error + Send + Sync>),
}

impl ApiError {
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::InvalidRequest {
            message: message.into(),
            details: json!({}),
        }
    }

    /// 429 `rate_limited`: retry after `wait`, rounded up to whole seconds
    /// (the `Retry-After` header counts seconds), and at least 1: a
    /// limiter's wait that ran out as it was read still answers "not now",
    /// and 0 would invite the retry at once.
    pub fn retry_after(wait: std::time::Duration) -> Self {
        Self::RateLimited {
            retry_after_secs: (wait.as_secs() + u64::from(wait.subsec_nanos() > 0)).max(1),
        }
    }

    pub fn unavailable(
        message: &'static str,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        Self::Unavailable {
            message,
            source: Some(Box::new(source)),
        }
    }

    pub fn code(&self) -> &'static str {
        match self {
            Self::InvalidRequest { .. } | Self::Unprocessable { .. } => "invalid_request",
            Self::PayloadTooLarge { .. } => "payload_too_large",
            Self::Unauthorized(_) => "unauthorized",
            Self::Forbidden => "forbidden",
            Self::NotFound => "not_found",
            Self::MethodNotAllowed => "method_not_allowed",
            Self::SaleNotFound => "sale_not_found",
            Self::ReservationNotFound => "reservation_not_found",
            Self::SoldOut { .. } => "sold_out",
            Self::UserLimitExceeded { .. } => "user_limit_exceeded",
            Self::SaleNotStarted { .. } => "sale_not_started",
            Self::SaleEnded { .. } => "sale_ended",
            Self::StockBelowCommitted { .. } => "stock_below_committed",
            Self::SaleClosed { .. } => "sale_closed",
            Self::ReservationCancelled => "reservation_cancelled",
            Self::ReservationConfirmed => "reservation_confirmed",
            Self::ReservationExpired => "reservation_expired",
            Self::HoldLimitReached { .. } => "hold_limit_reached",
            Self::IdempotencyKeyReused => "idempotency_key_reused",
            Self::NotAdmitted { .. } => "not_admitted",
            Self::AdmissionExpired { .. } => "admission_expired",
            Self::SaleNotQueued => "sale_not_queued",
            Self::QueueNotOpen { .. } => "queue_not_open",
            Self::NotInQueue => "not_in_queue",
            Self::SalePaused => "sale_paused",
            Self::RateLimited { .. } => "rate_limited",
            Self::Unavailable { .. } => "unavailable",
            Self::Internal(_) => "internal",
        }
    }

    fn details(&self) -> Value {
        match self {
            Self::InvalidRequest { details, .. } | Self::Unprocessable { details, .. } => {
                details.clone()
            }
            Self::PayloadTooLarge { limit } => json!({ "limit_bytes": limit }),
            Self::SoldOut {
                available,
                shortfalls,
            } => {
                if shortfalls.is_empty() {
                    json!({ "available": available })
                } else {
                    let lines: Vec<Value> = shortfalls
                        .iter()
                        .map(|s| json!({ "sku": s.sku, "requested": s.requested, "available": s.available }))
                        .collect();
                    json!({ "available": available, "shortfalls": lines })
                }
            }
            Self::UserLimitExceeded {
                limit,
                held,
                bought,
                sku,
            } => match sku {
                None => json!({ "per_user_limit": limit, "held": held, "bought": bought }),
                Some(sku) => {
                    json!({ "sku": sku, "per_user_limit": limit, "held": held, "bought": bought })
                }
            },
            Self::SaleNotStarted { starts_at } => json!({ "starts_at": starts_at }),
            Self::SaleEnded { ends_at } | Self::SaleClosed { ends_at } => {
                json!({ "ends_at": ends_at })
            }
            Self::StockBelowCommitted { sold, held, items } => {
                if items.is_empty() {
                    json!({ "sold": sold, "held": held })
                } else {
                    let below: Vec<Value> = items
                        .iter()
                        .map(|i| json!({ "sku": i.sku, "stock": i.stock, "sold": i.sold, "held": i.held }))
                        .collect();
                    json!({ "sold": sold, "held": held, "items": below })
                }
            }
            Self::HoldLimitReached { expires_at } => json!({ "expires_at": expires_at }),
            Self::NotAdmitted { position, serving } => {
                json!({ "position": position, "serving": serving })
            }
            Self::AdmissionExpired { admitted_until } => {
                json!({ "admitted_until": admitted_until })
            }
            Self::QueueNotOpen { opens_at } => json!({ "queue_opens_at": opens_at }),
            Self::RateLimited { retry_after_secs } => {
                json!({ "retry_after_secs": retry_after_secs })
            }
            _ => json!({}),
        }
    }

    fn public_message(&self) -> String {
        match self {
            // 500s are opaque to the client, logged in full.
            Self::Internal(_) => "internal error".to_string(),
            other => other.to_string(),
        }
    }
}

/// The one place a service error becomes the contract's: what the client
/// may do about it (fix the request, retry later) and nothing of the
/// internals (a 500 says "internal error"; the log has the chain).
impl From<ServiceError> for ApiError {
    fn from(e: ServiceError) -> Self {
        match e {
            ServiceError::SaleNotFound => Self::SaleNotFound,
            ServiceError::StockBelowCommitted { sold, held, items } => {
                Self::StockBelowCommitted { sold, held, items }
            }
            ServiceError::ShapeChange { .. } => Self::Unprocessable {
                message: e.to_string(),
                details: json!({ "field": "items" }),
            },
            ServiceError::CapAdded { ref sku } => Self::Unprocessable {
                message: e.to_string(),
                details: json!({ "field": "items", "sku": sku }),
            },
            ServiceError::SaleClosed { ends_ms } => Self::SaleClosed {
                ends_at: ends_ms.and_then(DateTime::from_timestamp_millis),
            },
            ServiceError::Forbidden => Self::Forbidden,
            ServiceError::Lost => Self::ReservationExpired,
            ServiceError::Rebuilding(_) => {
                Self::unavailable("the sale's state is being rebuilt; retry", e)
            }
            ServiceError::NotDurable(_) => Self::unavailable(
                "confirmed, but not yet durable in Postgres; retry the confirm",
                e,
            ),
            ServiceError::NotAudited(_) => Self::unavailable(
                "cancelled, but its audit row is not yet written; retry the cancel",
                e,
            ),
            ServiceError::ExportsBusy(_) => {
                Self::unavailable("order exports are running at their limit; retry", e)
            }
            ServiceError::Encode(_) => Self::Internal(Box::new(e)),
            ServiceError::Redis(GateError::NotLoaded) => {
                Self::unavailable("the sale's state is being rebuilt; retry", e)
            }
            ServiceError::Redis(GateError::OutOfMemory(_)) => {
                Self::unavailable("Redis is out of memory; nothing was changed", e)
            }
            ServiceError::Redis(GateError::Unavailable(_) | GateError::Timeout(_)) => {
                Self::unavailable("Redis is unavailable; retry", e)
            }
            ServiceError::Redis(GateError::Refused { .. } | GateError::Protocol { .. }) => {
                Self::Internal(Box::new(e))
            }
            ServiceError::Postgres(StoreError::Unavailable(_) | StoreError::Timeout(_)) => {
                Self::unavailable("Postgres is unavailable; retry", e)
            }
            ServiceError::Postgres(StoreError::Batch(ref b)) if b.is_transient() => {
                Self::unavailable("Postgres is unavailable; retry", e)
            }
            ServiceError::Postgres(
                StoreError::Database(_) | StoreError::Migrate(_) | StoreError::Batch(_),
            ) => Self::Internal(Box::new(e)),
        }
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        match self {
            Self::InvalidRequest { .. } => StatusCode::BAD_REQUEST,
            Self::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Self::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            Self::Forbidden => StatusCode::FORBIDDEN,
            Self::NotFound | Self::SaleNotFound | Self::ReservationNotFound => {
                StatusCode::NOT_FOUND
            }
            Self::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Self::SoldOut { .. }
            | Self::UserLimitExceeded { .. }
            | Self::SaleNotStarted { .. }
            | Self::StockBelowCommitted { .. }
            | Self::SaleClosed { .. }
            | Self::ReservationCancelled
            | Self::ReservationConfirmed
            | Self::HoldLimitReached { .. }
            | Self::NotAdmitted { .. }
            | Self::SaleNotQueued
            | Self::QueueNotOpen { .. }
            | Self::SalePaused => StatusCode::CONFLICT,
            Self::NotInQueue => StatusCode::NOT_FOUND,
            Self::AdmissionExpired { .. } => StatusCode::GONE,
            Self::SaleEnded { .. } | Self::ReservationExpired => StatusCode::GONE,
            Self::IdempotencyKeyReused | Self::Unprocessable { .. } => {
                StatusCode::UNPROCESSABLE_ENTITY
            }
            Self::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            Self::Unavailable { .. } => StatusCode::SERVICE_UNAVAILABLE,
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn error_response(&self) -> HttpResponse {
        let status = self.status_code();
        if status.is_server_error() {
            tracing::error!(code = self.code(), error = %chain(self), "request failed");
        }
        let mut res = HttpResponse::build(status);
        match self {
            Self::RateLimited { retry_after_secs } => {
                res.insert_header((header::RETRY_AFTER, retry_after_secs.to_string()));
            }
            Self::Unavailable { .. } => {
                res.insert_header((header::RETRY_AFTER, "1"));
            }
            Self::Unauthorized(_) => {
                res.insert_header((header::WWW_AUTHENTICATE, "Bearer"));
            }
            _ => {}
        }
        res.json(json!({ "error": { "code": self.code(), "message": self.public_message(), "details": self.details() } }))
    }
}

#[cfg(test)]
mod tests;
