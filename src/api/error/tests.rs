//! The error body, statuses and the mapping of service errors.

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
fn retry_after_rounds_up_to_whole_seconds_and_is_never_0() {
    let secs = |ms| match ApiError::retry_after(std::time::Duration::from_millis(ms)) {
        ApiError::RateLimited { retry_after_secs } => retry_after_secs,
        other => panic!("{other:?}"),
    };
    assert_eq!(
        [secs(0), secs(1), secs(1000), secs(1001), secs(2999)],
        [1, 1, 1, 2, 3]
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
        (
            ApiError::SoldOut {
                available: 0,
                shortfalls: Vec::new(),
            },
            409,
            "sold_out",
        ),
        (
            ApiError::UserLimitExceeded {
                limit: 2,
                held: 1,
                bought: 1,
                sku: None,
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
            ApiError::StockBelowCommitted {
                sold: 3,
                held: 2,
                items: Vec::new(),
            },
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
        body(&ApiError::SoldOut {
            available: 0,
            shortfalls: Vec::new(),
        })["error"]["details"]["available"],
        0
    );
    assert_eq!(
        body(&ApiError::UserLimitExceeded {
            limit: 2,
            held: 1,
            bought: 1,
            sku: None,
        })["error"]["details"]["per_user_limit"],
        2
    );
    assert_eq!(
        body(&ApiError::StockBelowCommitted {
            sold: 3,
            held: 2,
            items: Vec::new(),
        })["error"]["details"]["held"],
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
        code(ServiceError::StockBelowCommitted {
            sold: 1,
            held: 2,
            items: Vec::new(),
        }),
        "stock_below_committed"
    );
}
