//! Buyer endpoints: reserve, read, confirm, cancel, extend.

use std::time::Duration;

use actix_web::{web, HttpRequest, HttpResponse};

use super::extract::{idempotency_key, reservation_id, sale_id, Buyer, Caller};
use super::views::{time, ExtendInput, ReservationView, ReserveInput};
use super::AppState;
use crate::error::ApiError;
use crate::gate::{Record, RecordOutcome, ReserveOutcome, Status};
use crate::ids::SaleId;

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/v1/sales/{sale_id}/reservations", web::post().to(reserve))
        .route(
            "/v1/sales/{sale_id}/reservations/{reservation_id}",
            web::get().to(get),
        )
        .route(
            "/v1/sales/{sale_id}/reservations/{reservation_id}/confirm",
            web::post().to(confirm),
        )
        .route(
            "/v1/sales/{sale_id}/reservations/{reservation_id}/cancel",
            web::post().to(cancel),
        )
        .route(
            "/v1/sales/{sale_id}/reservations/{reservation_id}/extend",
            web::post().to(extend),
        );
}

/// The most units one request may ask for (the sale's cap applies too).
pub const MAX_QUANTITY: u32 = 10_000;

async fn reserve(
    state: web::Data<AppState>,
    buyer: Buyer,
    path: web::Path<String>,
    req: HttpRequest,
    body: web::Json<ReserveInput>,
) -> Result<HttpResponse, ApiError> {
    state.limits.check_ip(&req)?;
    state.limits.check_user(buyer.0.as_str())?;
    let sale = sale_id(&path)?;
    let qty = body.quantity;
    if !(1..=MAX_QUANTITY).contains(&qty) {
        return Err(ApiError::InvalidRequest {
            message: "quantity must be at least 1 and at most the sale's per_user_limit".into(),
            details: serde_json::json!({ "field": "quantity" }),
        });
    }
    let idem = idempotency_key(&req)?;
    let user = &buyer.0;
    let view = |rid: &str, qty: u32, status: Status, expires_ms: i64| ReservationView {
        reservation_id: rid.to_string(),
        sale_id: sale.to_string(),
        user_id: user.as_str().to_string(),
        quantity: qty,
        status,
        expires_at: time(expires_ms),
        confirmed_at: None,
        cancelled_at: None,
        expired_at: None,
    };
    let outcome = state
        .service
        .reserve(&sale, user, qty, idem.as_ref())
        .await?;
    crate::metrics::reserve_outcome(outcome.label());
    match outcome {
        ReserveOutcome::Held {
            rid,
            qty,
            expires_ms,
        } => Ok(HttpResponse::Created().json(view(&rid, qty, Status::Held, expires_ms))),
        ReserveOutcome::Replay {
            rid,
            qty,
            status,
            expires_ms,
        } => Ok(HttpResponse::Ok()
            .insert_header(("Idempotent-Replayed", "true"))
            .json(view(&rid, qty, status, expires_ms))),
        ReserveOutcome::IdempotencyMismatch { .. } => Err(ApiError::IdempotencyKeyReused),
        ReserveOutcome::NotStarted { starts_ms } => Err(ApiError::SaleNotStarted {
            starts_at: time(starts_ms),
        }),
        ReserveOutcome::Ended { ends_ms } => Err(ApiError::SaleEnded {
            ends_at: time(ends_ms),
        }),
        ReserveOutcome::OverLimit { limit } => Err(ApiError::InvalidRequest {
            message: format!("quantity must be at most the sale's per_user_limit ({limit})"),
            details: serde_json::json!({ "field": "quantity", "per_user_limit": limit }),
        }),
        ReserveOutcome::UserLimit {
            limit,
            held,
            bought,
        } => Err(ApiError::UserLimitExceeded {
            limit,
            held,
            bought,
        }),
        ReserveOutcome::SoldOut { available } => Err(ApiError::SoldOut { available }),
    }
}

/// The per-IP limit for everyone, the per-buyer limit for buyers (the admin
/// acting for a payment service is not limited).
fn limited(state: &AppState, req: &HttpRequest, caller: &Caller) -> Result<(), ApiError> {
    state.limits.check_ip(req)?;
    match caller {
        Caller::Buyer(user) => state.limits.check_user(user.as_str()),
        Caller::Admin => Ok(()),
    }
}

fn ids(path: &(String, String)) -> Result<(SaleId, uuid::Uuid), ApiError> {
    Ok((sale_id(&path.0)?, reservation_id(&path.1)?))
}

fn ok(sale: &SaleId, rid: &uuid::Uuid, rec: &Record) -> HttpResponse {
    HttpResponse::Ok().json(ReservationView::new(sale, &rid.to_string(), rec))
}

/// Maps the outcome of a transition to the contract; `conflict` says what
/// the reservation is instead.
fn transition(
    sale: &SaleId,
    rid: &uuid::Uuid,
    outcome: RecordOutcome,
) -> Result<HttpResponse, ApiError> {
    match outcome {
        RecordOutcome::Done(rec) | RecordOutcome::Replay(rec) => Ok(ok(sale, rid, &rec)),
        RecordOutcome::Conflict(rec) => Err(match rec.status {
            Status::Confirmed => ApiError::ReservationConfirmed,
            Status::Cancelled => ApiError::ReservationCancelled,
            Status::Expired => ApiError::ReservationExpired,
            Status::Held => ApiError::Internal("a held reservation reported as a conflict".into()),
        }),
        RecordOutcome::HoldLimit(rec) => Err(ApiError::HoldLimitReached {
            expires_at: time(rec.expires_ms),
        }),
        RecordOutcome::NotFound => Err(ApiError::ReservationNotFound),
        RecordOutcome::Forbidden => Err(ApiError::Forbidden),
    }
}

async fn get(
    state: web::Data<AppState>,
    caller: Caller,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse, ApiError> {
    let (sale, rid) = ids(&path)?;
    let rec = state
        .service
        .lookup(&sale, &rid)
        .await?
        .ok_or(ApiError::ReservationNotFound)?;
    if !caller.may_see(&rec.user) {
        return Err(ApiError::Forbidden);
    }
    Ok(ok(&sale, &rid, &rec))
}

async fn confirm(
    state: web::Data<AppState>,
    caller: Caller,
    req: HttpRequest,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse, ApiError> {
    limited(&state, &req, &caller)?;
    let (sale, rid) = ids(&path)?;
    transition(
        &sale,
        &rid,
        state.service.confirm(&sale, &rid, caller.actor()).await?,
    )
}

async fn cancel(
    state: web::Data<AppState>,
    caller: Caller,
    req: HttpRequest,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse, ApiError> {
    limited(&state, &req, &caller)?;
    let (sale, rid) = ids(&path)?;
    transition(
        &sale,
        &rid,
        state.service.cancel(&sale, &rid, caller.actor()).await?,
    )
}

/// The body is optional: `{}` or none extends by the sale's hold ttl.
async fn extend(
    state: web::Data<AppState>,
    caller: Caller,
    req: HttpRequest,
    path: web::Path<(String, String)>,
    body: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    limited(&state, &req, &caller)?;
    let (sale, rid) = ids(&path)?;
    let input: ExtendInput = if body.iter().all(u8::is_ascii_whitespace) {
        ExtendInput::default()
    } else {
        serde_json::from_slice(&body)
            .map_err(|e| ApiError::invalid(format!("invalid JSON body: {e}")))?
    };
    let by = match input.extend_secs {
        Some(0) => {
            return Err(ApiError::InvalidRequest {
                message: "extend_secs must be at least 1".into(),
                details: serde_json::json!({ "field": "extend_secs" }),
            })
        }
        Some(s) => Some(Duration::from_secs(u64::from(s))),
        None => None,
    };
    transition(
        &sale,
        &rid,
        state
            .service
            .extend(&sale, &rid, caller.actor(), by)
            .await?,
    )
}
