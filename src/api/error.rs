//! The one error type of the HTTP API and its mapping to the contract's
//! JSON body: `{"error": {"code", "message", "details"}}`.

use actix_web::http::{header, StatusCode};
use actix_web::{HttpResponse, ResponseError};
use chrono::{DateTime, Utc};
use serde_json::{json, Value};

use crate::gate::GateError;
use crate::service::ServiceError;
use crate::store::StoreError;
use crate::telemetry::chain;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{message}")]
    InvalidRequest { message: String, details: Value },
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
    #[error("sold out")]
    SoldOut { available: i64 },
    #[error("this buyer would exceed the sale's per-user limit")]
    UserLimitExceeded { limit: u32, held: u32, bought: u32 },
    #[error("the sale has not started yet")]
    SaleNotStarted { starts_at: Option<DateTime<Utc>> },
    #[error("the sale has ended")]
    SaleEnded { ends_at: Option<DateTime<Utc>> },
    #[error("stock would fall below the units sold and held")]
    StockBelowCommitted { sold: i64, held: i64 },
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
    /// (the `Retry-After` header counts seconds).
    pub fn retry_after(wait: std::time::Duration) -> Self {
        Self::RateLimited {
            retry_after_secs: wait.as_secs() + u64::from(wait.subsec_nanos() > 0),
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
            Self::InvalidRequest { .. } => "invalid_request",
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
            Self::InvalidRequest { details, .. } => details.clone(),
            Self::PayloadTooLarge { limit } => json!({ "limit_bytes": limit }),
            Self::SoldOut { available } => json!({ "available": available }),
            Self::UserLimitExceeded {
                limit,
                held,
                bought,
            } => json!({ "per_user_limit": limit, "held": held, "bought": bought }),
            Self::SaleNotStarted { starts_at } => json!({ "starts_at": starts_at }),
            Self::SaleEnded { ends_at } => json!({ "ends_at": ends_at }),
            Self::StockBelowCommitted { sold, held } => json!({ "sold": sold, "held": held }),
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
            ServiceError::StockBelowCommitted { sold, held } => {
                Self::StockBelowCommitted { sold, held }
            }
            ServiceError::Forbidden => Self::Forbidden,
            ServiceError::Lost => Self::ReservationExpired,
            ServiceError::Rebuilding(_) => {
                Self::unavailable("the sale's state is being rebuilt; retry", e)
            }
            ServiceError::NotDurable(_) => Self::unavailable(
                "confirmed, but not yet durable in Postgres; retry the confirm",
                e,
            ),
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
            ServiceError::Postgres(StoreError::Database(_) | StoreError::Migrate(_)) => {
                Self::Internal(Box::new(e))
            }
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
            Self::IdempotencyKeyReused => StatusCode::UNPROCESSABLE_ENTITY,
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
mod tests {
    use super::*;
    use actix_web::body::MessageBody;

    fn body(e: &ApiError) -> Value {
        let bytes = e
            .error_response()
            .into_body()
            .try_into_bytes()
            .expect("bytes");
        serde_json::from_slice(&bytes).expect("json")
    }

    #[test]
    fn retry_after_rounds_up_to_whole_seconds() {
        let secs = |ms| match ApiError::retry_after(std::time::Duration::from_millis(ms)) {
            ApiError::RateLimited { retry_after_secs } => retry_after_secs,
            other => panic!("{other:?}"),
        };
        assert_eq!(
            [secs(0), secs(1), secs(1000), secs(1001), secs(2999)],
            [0, 1, 1, 2, 3]
        );
    }

    #[test]
    fn every_error_has_the_contract_shape_and_status() {
        let cases: Vec<(ApiError, u16, &str)> = vec![
            (ApiError::invalid("bad"), 400, "invalid_request"),
            (
                ApiError::PayloadTooLarge { limit: 10 },
                413,
                "payload_too_large",
            ),
            (ApiError::Unauthorized("no token"), 401, "unauthorized"),
            (ApiError::Forbidden, 403, "forbidden"),
            (ApiError::SaleNotFound, 404, "sale_not_found"),
            (ApiError::ReservationNotFound, 404, "reservation_not_found"),
            (ApiError::SoldOut { available: 0 }, 409, "sold_out"),
            (
                ApiError::UserLimitExceeded {
                    limit: 2,
                    held: 1,
                    bought: 1,
                },
                409,
                "user_limit_exceeded",
            ),
            (
                ApiError::SaleNotStarted { starts_at: None },
                409,
                "sale_not_started",
            ),
            (ApiError::SaleEnded { ends_at: None }, 410, "sale_ended"),
            (
                ApiError::StockBelowCommitted { sold: 3, held: 2 },
                409,
                "stock_below_committed",
            ),
            (ApiError::ReservationCancelled, 409, "reservation_cancelled"),
            (ApiError::ReservationConfirmed, 409, "reservation_confirmed"),
            (ApiError::ReservationExpired, 410, "reservation_expired"),
            (
                ApiError::HoldLimitReached { expires_at: None },
                409,
                "hold_limit_reached",
            ),
            (
                ApiError::NotAdmitted {
                    position: Some(3),
                    serving: 1,
                },
                409,
                "not_admitted",
            ),
            (
                ApiError::AdmissionExpired {
                    admitted_until: None,
                },
                410,
                "admission_expired",
            ),
            (ApiError::SaleNotQueued, 409, "sale_not_queued"),
            (
                ApiError::QueueNotOpen { opens_at: None },
                409,
                "queue_not_open",
            ),
            (ApiError::NotInQueue, 404, "not_in_queue"),
            (ApiError::SalePaused, 409, "sale_paused"),
            (
                ApiError::IdempotencyKeyReused,
                422,
                "idempotency_key_reused",
            ),
            (
                ApiError::RateLimited {
                    retry_after_secs: 2,
                },
                429,
                "rate_limited",
            ),
            (
                ApiError::Unavailable {
                    message: "down",
                    source: None,
                },
                503,
                "unavailable",
            ),
            (ApiError::Internal("boom".into()), 500, "internal"),
        ];
        for (err, status, code) in cases {
            assert_eq!(err.status_code().as_u16(), status, "{code}");
            let b = body(&err);
            assert_eq!(b["error"]["code"], code);
            assert!(b["error"]["message"].is_string());
            assert!(b["error"]["details"].is_object());
        }
    }

    #[test]
    fn details_carry_the_numbers_a_client_needs() {
        assert_eq!(
            body(&ApiError::SoldOut { available: 0 })["error"]["details"]["available"],
            0
        );
        assert_eq!(
            body(&ApiError::UserLimitExceeded {
                limit: 2,
                held: 1,
                bought: 1
            })["error"]["details"]["per_user_limit"],
            2
        );
        assert_eq!(
            body(&ApiError::StockBelowCommitted { sold: 3, held: 2 })["error"]["details"]["held"],
            2
        );
    }

    #[test]
    fn retry_after_on_429_and_503() {
        let r = ApiError::RateLimited {
            retry_after_secs: 7,
        }
        .error_response();
        assert_eq!(
            r.headers()
                .get(header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok()),
            Some("7")
        );
        let r = ApiError::Unavailable {
            message: "down",
            source: None,
        }
        .error_response();
        assert!(r.headers().contains_key(header::RETRY_AFTER));
    }

    #[test]
    fn internal_errors_are_opaque() {
        let b = body(&ApiError::Internal("password=hunter2 in a query".into()));
        assert_eq!(b["error"]["message"], "internal error");
    }

    #[test]
    fn service_errors_map_to_the_contract() {
        let code = |e: ServiceError| ApiError::from(e).code();
        let second = std::time::Duration::from_secs(1);
        assert_eq!(code(GateError::Timeout(second).into()), "unavailable");
        assert_eq!(code(GateError::NotLoaded.into()), "unavailable");
        assert_eq!(
            code(
                GateError::Protocol {
                    script: "reserve",
                    detail: "x".into()
                }
                .into()
            ),
            "internal"
        );
        assert_eq!(code(StoreError::Timeout(second).into()), "unavailable");
        assert_eq!(
            code(ServiceError::NotDurable(StoreError::Timeout(second))),
            "unavailable"
        );
        assert_eq!(code(ServiceError::Lost), "reservation_expired");
        assert_eq!(code(ServiceError::SaleNotFound), "sale_not_found");
        assert_eq!(code(ServiceError::Forbidden), "forbidden");
        assert_eq!(
            code(ServiceError::StockBelowCommitted { sold: 1, held: 2 }),
            "stock_below_committed"
        );
    }
}
