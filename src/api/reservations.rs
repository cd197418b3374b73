//! Buyer endpoints: reserve, read, confirm, cancel, extend.

use std::time::Duration;

use actix_web::{web, HttpRequest, HttpResponse};
use uuid::Uuid;

use super::error::ApiError;
use super::extract::{
    idempotency_key, origin, parse_object, reservation_id, sale_id, Buyer, Caller, JsonObject,
};
use super::views::answers::{
    BadRequest, Forbidden, PayloadTooLarge, RateLimited, ReservationExpired, ReservationNotFound,
    SaleNotFound, Unauthorized, Unavailable,
};
use super::views::{
    time, ErrorBody, ExtendInput, ReservationPath, ReservationView, ReserveInput, SalePath,
};
use super::{route, AppState};
use crate::domain::{Line, Record, RecordOutcome, ReserveOutcome, Status};
use crate::gate::Transition;
use crate::ids::SaleId;

pub fn routes(cfg: &mut web::ServiceConfig) {
    route::<__path_reserve>(cfg, web::post().to(reserve));
    route::<__path_get_reservation>(cfg, web::get().to(get_reservation));
    route::<__path_confirm>(cfg, web::post().to(confirm));
    route::<__path_cancel>(cfg, web::post().to(cancel));
    route::<__path_extend>(cfg, web::post().to(extend));
}

/// The most units one request may ask for (the sale's cap applies too).
pub const MAX_QUANTITY: u32 = 10_000;
/// The most lines of one cart.
pub const MAX_LINES: usize = 100;

/// A cart as the scripts take it: distinct valid skus, sorted (one cart,
/// one spelling, for the idempotency key), and its total.
fn cart(lines: &[super::views::LineInput]) -> Result<(Vec<Line>, u32), ApiError> {
    use super::sales::{unprocessable, valid_sku};
    if !(1..=MAX_LINES).contains(&lines.len()) {
        return Err(unprocessable(
            "items",
            &format!("between 1 and {MAX_LINES} lines"),
        ));
    }
    let mut out: Vec<Line> = Vec::with_capacity(lines.len());
    let mut total: u32 = 0;
    for (i, l) in lines.iter().enumerate() {
        if !valid_sku(&l.sku) {
            return Err(unprocessable(
                &format!("items[{i}].sku"),
                "1-64 characters of [A-Za-z0-9_-]",
            ));
        }
        if !(1..=MAX_QUANTITY).contains(&l.quantity) {
            return Err(unprocessable(
                &format!("items[{i}].quantity"),
                &format!("must be between 1 and {MAX_QUANTITY}"),
            ));
        }
        total = total.saturating_add(l.quantity);
        out.push(Line {
            sku: l.sku.clone(),
            quantity: l.quantity,
        });
    }
    out.sort();
    if out.windows(2).any(|w| w[0].sku == w[1].sku) {
        return Err(unprocessable("items", "a sku is given twice"));
    }
    if total > MAX_QUANTITY {
        return Err(unprocessable(
            "items",
            &format!("at most {MAX_QUANTITY} units in all"),
        ));
    }
    Ok((out, total))
}

/// Holds units of a sale for the buyer of the token.
#[utoipa::path(post, path = "/v1/sales/{sale_id}/reservations", tag = "buyer", operation_id = "reserve",
    params(
        SalePath,
        ("Idempotency-Key" = Option<String>, Header, description = "1-128 characters of [A-Za-z0-9_.:-]; a retry with the same key and body returns the same reservation"),
    ),
    request_body = ReserveInput,
    responses(
        (status = 201, description = "held", body = ReservationView),
        (status = 200, description = "an idempotent replay (header Idempotent-Replayed: true)", body = ReservationView),
        (status = 409, description = "`sold_out`, `user_limit_exceeded`, `sale_not_started`, `sale_paused` or (a queued sale) `not_admitted` (details: position, serving)", body = ErrorBody),
        (status = 410, description = "`sale_ended` or (a queued sale) `admission_expired`", body = ErrorBody),
        (status = 422, description = "`idempotency_key_reused` (the key was used with another quantity or cart); `invalid_request`: a malformed cart, `items` on a one-item sale or `quantity` on a sale of several items, a sku the sale does not have", body = ErrorBody),
        BadRequest, Unauthorized, SaleNotFound, PayloadTooLarge, RateLimited, Unavailable,
    ),
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
    let (lines, qty) = match (&body.quantity, &body.items) {
        (Some(_), Some(_)) => {
            return Err(super::sales::unprocessable(
                "items",
                "give either quantity or items, not both",
            ))
        }
        (_, Some(items)) => cart(items)?,
        (_, None) => (Vec::new(), body.quantity()),
    };
    if !(1..=MAX_QUANTITY).contains(&qty) {
        return Err(ApiError::InvalidRequest {
            message: format!("quantity must be between 1 and {MAX_QUANTITY}"),
            details: serde_json::json!({ "field": "quantity" }),
        });
    }
    let idem = idempotency_key(&req)?;
    let user = &buyer.0;
    let view = |rid: &Uuid, qty: u32, status: Status, expires_ms: i64, items: Vec<Line>| {
        let rec = Record {
            user: user.as_str().to_string(),
            qty,
            status,
            expires_ms,
            at_ms: 0,
            epoch: 0,
            by_admin: false,
            items,
        };
        let mut v = ReservationView::new(&sale, rid, &rec);
        // A replay shows the reservation as it is now, without when it
        // moved on (the reserve script does not say).
        (v.confirmed_at, v.cancelled_at, v.expired_at) = (None, None, None);
        v
    };
    let outcome = state
        .service
        .reserve(&sale, user, qty, &lines, idem.as_ref())
        .await?;
    crate::metrics::reserve_outcome(outcome.label());
    match outcome {
        ReserveOutcome::Held {
            rid,
            qty,
            expires_ms,
        } => Ok(HttpResponse::Created().json(view(&rid, qty, Status::Held, expires_ms, lines))),
        ReserveOutcome::Replay {
            rid,
            qty,
            status,
            expires_ms,
            items,
        } => Ok(HttpResponse::Ok()
            .insert_header(("Idempotent-Replayed", "true"))
            .json(view(&rid, qty, status, expires_ms, items))),
        ReserveOutcome::IdempotencyMismatch => Err(ApiError::IdempotencyKeyReused),
        ReserveOutcome::NoItems => Err(super::sales::unprocessable(
            "items",
            "this sale has one item: reserve a quantity",
        )),
        ReserveOutcome::ItemsRequired => Err(super::sales::unprocessable(
            "items",
            "this sale has several items: reserve items [{sku, quantity}]",
        )),
        ReserveOutcome::UnknownSku { sku } => Err(ApiError::Unprocessable {
            message: format!("items: the sale has no item {sku}"),
            details: serde_json::json!({ "field": "items", "sku": sku }),
        }),
        ReserveOutcome::NotStarted { starts_ms } => Err(ApiError::SaleNotStarted {
            starts_at: time(starts_ms),
        }),
        ReserveOutcome::Ended { ends_ms } => Err(ApiError::SaleEnded {
            ends_at: time(ends_ms),
        }),
        ReserveOutcome::Paused => Err(ApiError::SalePaused),
        ReserveOutcome::OverLimit { limit } => Err(ApiError::InvalidRequest {
            message: format!("quantity must be at most the sale's per_user_limit ({limit})"),
            details: serde_json::json!({ "field": "quantity", "per_user_limit": limit }),
        }),
        ReserveOutcome::UserLimit {
            sku,
            limit,
            held,
            bought,
        } => Err(ApiError::UserLimitExceeded {
            limit,
            held,
            bought,
            sku,
        }),
        ReserveOutcome::SoldOut {
            available,
            shortfalls,
        } => Err(ApiError::SoldOut {
            available,
            shortfalls,
        }),
        ReserveOutcome::NotAdmitted { position, serving } => {
            Err(ApiError::NotAdmitted { position, serving })
        }
        ReserveOutcome::AdmissionExpired { until_ms } => Err(ApiError::AdmissionExpired {
            admitted_until: time(until_ms),
        }),
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

fn ids(path: &(String, String)) -> Result<(SaleId, Uuid), ApiError> {
    Ok((sale_id(&path.0)?, reservation_id(&path.1)?))
}

/// Reads a reservation: its buyer's, or any for the admin.
#[utoipa::path(get, path = "/v1/sales/{sale_id}/reservations/{reservation_id}", tag = "buyer", operation_id = "get_reservation",
    params(ReservationPath),
    responses(
        (status = 200, description = "the reservation", body = ReservationView),
        BadRequest, Unauthorized, Forbidden, ReservationNotFound, Unavailable,
    ),
    security(("buyer_jwt" = []), ("admin_token" = [])))]
pub(crate) async fn get_reservation(
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
    if !caller.actor().may_act_for(&rec.user) {
        return Err(ApiError::Forbidden);
    }
    Ok(HttpResponse::Ok().json(ReservationView::new(&sale, &rid, &rec)))
}

/// Runs a transition for the caller (rate-limited for buyers; the admin,
/// acting for a payment service, is not) and maps its outcome to the
/// contract: `conflict` says what the reservation is instead.
async fn act(
    state: &AppState,
    req: &HttpRequest,
    caller: &Caller,
    path: &(String, String),
    t: Transition,
) -> Result<HttpResponse, ApiError> {
    state.limits.check_ip(req)?;
    if let Caller::Buyer(user) = caller {
        state.limits.check_user(user.as_str())?;
    }
    let (sale, rid) = ids(path)?;
    // An admin cancel is audited: who asked.
    let audit = matches!(caller, Caller::Admin).then(|| origin(req));
    let outcome = state
        .service
        .act(&sale, &rid, caller.actor(), t, audit.as_ref())
        .await?;
    match outcome {
        RecordOutcome::Done(rec) | RecordOutcome::Replay(rec) => {
            Ok(HttpResponse::Ok().json(ReservationView::new(&sale, &rid, &rec)))
        }
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

/// The two transitions that take no body, confirm and cancel: the same
/// handler, told apart by their words (the path's last segment, the
/// operation id, the answer, the conflict).
macro_rules! transition_handlers {
    ($($(#[doc = $doc:literal])* $name:ident = $t:expr, $path:tt, $op:tt, $done:tt, $conflict:tt;)+) => {$(
        $(#[doc = $doc])*
        #[utoipa::path(post, path = $path, tag = "buyer", operation_id = $op,
            params(ReservationPath),
            responses(
                (status = 200, description = $done, body = ReservationView),
                (status = 409, description = $conflict, body = ErrorBody),
                BadRequest, Unauthorized, Forbidden, ReservationNotFound, ReservationExpired, RateLimited, Unavailable,
            ),
            security(("buyer_jwt" = []), ("admin_token" = [])))]
        pub(crate) async fn $name(
            state: web::Data<AppState>,
            caller: Caller,
            req: HttpRequest,
            path: web::Path<(String, String)>,
        ) -> Result<HttpResponse, ApiError> {
            act(&state, &req, &caller, &path, $t).await
        }
    )+};
}

transition_handlers! {
    /// Turns a hold into a sale (again: the same answer).
    confirm = Transition::Confirm, "/v1/sales/{sale_id}/reservations/{reservation_id}/confirm",
        "confirm_reservation", "confirmed (again: the same)", "`reservation_cancelled`";
    /// Gives a hold back (again: the same answer).
    cancel = Transition::Cancel, "/v1/sales/{sale_id}/reservations/{reservation_id}/cancel",
        "cancel_reservation", "cancelled (again: the same)", "`reservation_confirmed`";
}

/// Pushes a hold's deadline out, up to the sale's maximum hold time. The
/// body is optional: `{}` or none extends by the sale's hold ttl.
#[utoipa::path(post, path = "/v1/sales/{sale_id}/reservations/{reservation_id}/extend", tag = "buyer", operation_id = "extend_reservation",
    params(ReservationPath),
    request_body(content = Option<ExtendInput>, description = "optional; without it the hold is extended by the sale's hold_ttl_secs"),
    responses(
        (status = 200, description = "the new expires_at", body = ReservationView),
        (status = 409, description = "`reservation_confirmed`, `reservation_cancelled` or `hold_limit_reached`", body = ErrorBody),
        BadRequest, Unauthorized, Forbidden, ReservationNotFound, ReservationExpired, PayloadTooLarge,
        RateLimited, Unavailable,
    ),
    security(("buyer_jwt" = []), ("admin_token" = [])))]
pub(crate) async fn extend(
    state: web::Data<AppState>,
    caller: Caller,
    req: HttpRequest,
    path: web::Path<(String, String)>,
    body: web::Bytes,
) -> Result<HttpResponse, ApiError> {
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
    act(&state, &req, &caller, &path, Transition::Extend { by }).await
}
