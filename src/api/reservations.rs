//! Buyer endpoints: reserve, read, confirm, cancel, extend.

use std::time::Duration;

use actix_web::{web, HttpRequest, HttpResponse};

use super::extract::{
    idempotency_key, parse_object, reservation_id, sale_id, Buyer, Caller, JsonObject,
};
use super::views::{time, ErrorBody, ExtendInput, ReservationView, ReserveInput};
use super::{route, AppState};
use crate::error::ApiError;
use crate::gate::{Record, RecordOutcome, ReserveOutcome, Status};
use crate::ids::SaleId;

pub fn routes(cfg: &mut web::ServiceConfig) {
    route::<__path_reserve>(cfg, web::post().to(reserve));
    route::<__path_get>(cfg, web::get().to(get));
    route::<__path_confirm>(cfg, web::post().to(confirm));
    route::<__path_cancel>(cfg, web::post().to(cancel));
    route::<__path_extend>(cfg, web::post().to(extend));
}

/// The most units one request may ask for (the sale's cap applies too).
pub const MAX_QUANTITY: u32 = 10_000;
#[utoipa::path(post, path = "/v1/sales/{sale_id}/reservations", tag = "buyer",
    params(("sale_id" = String, Path, description = "1-64 characters of [A-Za-z0-9_-]", example = "spring-drop"), ("Idempotency-Key" = Option<String>, Header, description = "1-128 characters of [A-Za-z0-9_.:-]; a retry with the same key and body returns the same reservation")),
    request_body = ReserveInput,
    responses((status = 201, description = "held", body = ReservationView), (status = 200, description = "an idempotent replay (header Idempotent-Replayed: true)", body = ReservationView),
        (status = 400, description = "`invalid_request`", body = ErrorBody), (status = 401, description = "`unauthorized`", body = ErrorBody), (status = 404, description = "`sale_not_found`", body = ErrorBody), (status = 409, description = "`sold_out`, `user_limit_exceeded` or `sale_not_started`", body = ErrorBody), (status = 410, description = "`sale_ended`", body = ErrorBody), (status = 413, description = "`payload_too_large`", body = ErrorBody), (status = 422, description = "`idempotency_key_reused`", body = ErrorBody), (status = 429, description = "`rate_limited` (Retry-After)", body = ErrorBody), (status = 503, description = "`unavailable`: Redis down, out of memory, or the sale being rebuilt; retry", body = ErrorBody)),
    security(("buyer_jwt" = [])))]

pub(crate) async fn reserve(
    state: web::Data<AppState>,
    buyer: Buyer,
    path: web::Path<String>,
    req: HttpRequest,
    body: JsonObject<ReserveInput>,
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
        ReserveOutcome::ActiveHoldsFull { earliest_ms } => {
            // Retry once the earliest of the buyer's holds has ended.
            crate::metrics::rate_limited("active_holds");
            let wait_ms = (earliest_ms - chrono::Utc::now().timestamp_millis()).max(1000);
            Err(ApiError::retry_after(Duration::from_millis(
                u64::try_from(wait_ms).unwrap_or(1000),
            )))
        }
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
#[utoipa::path(get, path = "/v1/sales/{sale_id}/reservations/{reservation_id}", tag = "buyer", params(("sale_id" = String, Path, description = "1-64 characters of [A-Za-z0-9_-]", example = "spring-drop"), ("reservation_id" = uuid::Uuid, Path, description = "the reservation id")),
    responses((status = 200, description = "the reservation", body = ReservationView),
        (status = 400, description = "`invalid_request`", body = ErrorBody), (status = 401, description = "`unauthorized`", body = ErrorBody), (status = 403, description = "`forbidden`: another buyer's", body = ErrorBody), (status = 404, description = "`sale_not_found` or `reservation_not_found`", body = ErrorBody), (status = 503, description = "`unavailable`: Redis down, out of memory, or the sale being rebuilt; retry", body = ErrorBody)),
    security(("buyer_jwt" = []), ("admin_token" = [])))]

pub(crate) async fn get(
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
#[utoipa::path(post, path = "/v1/sales/{sale_id}/reservations/{reservation_id}/confirm", tag = "buyer", params(("sale_id" = String, Path, description = "1-64 characters of [A-Za-z0-9_-]", example = "spring-drop"), ("reservation_id" = uuid::Uuid, Path, description = "the reservation id")),
    responses((status = 200, description = "confirmed (again: the same)", body = ReservationView),
        (status = 400, description = "`invalid_request`", body = ErrorBody), (status = 401, description = "`unauthorized`", body = ErrorBody), (status = 403, description = "`forbidden`", body = ErrorBody), (status = 404, description = "`sale_not_found` or `reservation_not_found`", body = ErrorBody), (status = 409, description = "`reservation_cancelled`", body = ErrorBody), (status = 410, description = "`reservation_expired`", body = ErrorBody), (status = 429, description = "`rate_limited`", body = ErrorBody), (status = 503, description = "`unavailable`: e.g. confirmed but not yet durable in Postgres; retry", body = ErrorBody)),
    security(("buyer_jwt" = []), ("admin_token" = [])))]

pub(crate) async fn confirm(
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
#[utoipa::path(post, path = "/v1/sales/{sale_id}/reservations/{reservation_id}/cancel", tag = "buyer", params(("sale_id" = String, Path, description = "1-64 characters of [A-Za-z0-9_-]", example = "spring-drop"), ("reservation_id" = uuid::Uuid, Path, description = "the reservation id")),
    responses((status = 200, description = "cancelled (again: the same)", body = ReservationView),
        (status = 400, description = "`invalid_request`", body = ErrorBody), (status = 401, description = "`unauthorized`", body = ErrorBody), (status = 403, description = "`forbidden`", body = ErrorBody), (status = 404, description = "`sale_not_found` or `reservation_not_found`", body = ErrorBody), (status = 409, description = "`reservation_confirmed`", body = ErrorBody), (status = 410, description = "`reservation_expired`", body = ErrorBody), (status = 429, description = "`rate_limited`", body = ErrorBody), (status = 503, description = "`unavailable`: Redis down, out of memory, or the sale being rebuilt; retry", body = ErrorBody)),
    security(("buyer_jwt" = []), ("admin_token" = [])))]

pub(crate) async fn cancel(
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

#[utoipa::path(post, path = "/v1/sales/{sale_id}/reservations/{reservation_id}/extend", tag = "buyer", params(("sale_id" = String, Path, description = "1-64 characters of [A-Za-z0-9_-]", example = "spring-drop"), ("reservation_id" = uuid::Uuid, Path, description = "the reservation id")),
    request_body(content = Option<ExtendInput>, description = "optional; without it the hold is extended by the sale's hold_ttl_secs"),
    responses((status = 200, description = "the new expires_at", body = ReservationView),
        (status = 400, description = "`invalid_request`", body = ErrorBody), (status = 401, description = "`unauthorized`", body = ErrorBody), (status = 403, description = "`forbidden`", body = ErrorBody), (status = 404, description = "`sale_not_found` or `reservation_not_found`", body = ErrorBody), (status = 409, description = "`reservation_confirmed`, `reservation_cancelled` or `hold_limit_reached`", body = ErrorBody), (status = 410, description = "`reservation_expired`", body = ErrorBody), (status = 413, description = "`payload_too_large`", body = ErrorBody), (status = 429, description = "`rate_limited`", body = ErrorBody), (status = 503, description = "`unavailable`: Redis down, out of memory, or the sale being rebuilt; retry", body = ErrorBody)),
    security(("buyer_jwt" = []), ("admin_token" = [])))]
/// The body is optional: `{}` or none extends by the sale's hold ttl.
pub(crate) async fn extend(
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
        parse_object(&body)?
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
