//! A queued sale's fair queue: join it, read one's ticket.

use actix_web::{web, HttpRequest, HttpResponse};
use serde::Serialize;

use super::error::ApiError;
use super::extract::{sale_id, Buyer};
use super::views::answers::{BadRequest, RateLimited, SaleNotFound, Unauthorized, Unavailable};
use super::views::{time, ErrorBody, SalePath};
use super::{route, AppState};
use crate::domain::{QueueOutcome, Ticket, TicketState};
use crate::ids::{SaleId, UserId};

pub fn routes(cfg: &mut web::ServiceConfig) {
    route::<__path_join_queue>(cfg, web::post().to(join_queue));
    route::<__path_my_ticket>(cfg, web::get().to(my_ticket));
}

/// Where a buyer stands in the queue (`state`).
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum TicketStateName {
    /// Joined before the start: everyone who did gets a random place then.
    PreQueue,
    Waiting,
    /// May reserve until `admitted_until`.
    Admitted,
    /// The admission window passed.
    Expired,
}

/// A buyer's ticket.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct TicketView {
    pub sale_id: String,
    pub user_id: String,
    pub state: TicketStateName,
    /// 1-based; null before the start (the order is drawn then).
    pub position: Option<u64>,
    /// Places admitted so far.
    pub serving: u64,
    /// Buyers ahead not admitted yet; null before the start.
    pub ahead: Option<u64>,
    /// At the current rate; null before the start, or while the sale is
    /// sold out or paused (nobody is admitted then).
    pub estimated_wait_secs: Option<u64>,
    /// Until when an admitted buyer may reserve.
    pub admitted_until: Option<chrono::DateTime<chrono::Utc>>,
}

impl TicketView {
    fn new(sale: &SaleId, user: &UserId, t: &Ticket) -> Self {
        let state = match t.state {
            TicketState::PreQueue => TicketStateName::PreQueue,
            TicketState::Waiting => TicketStateName::Waiting,
            TicketState::Admitted => TicketStateName::Admitted,
            TicketState::Expired => TicketStateName::Expired,
        };
        let behind = t.position.map(|p| p.saturating_sub(t.serving));
        let estimated_wait_secs = match (state, behind) {
            (TicketStateName::Waiting, Some(n)) if t.running && t.admit_per_sec > 0 => {
                Some(n.div_ceil(u64::from(t.admit_per_sec)))
            }
            (TicketStateName::Admitted | TicketStateName::Expired, _) => Some(0),
            _ => None,
        };
        Self {
            sale_id: sale.to_string(),
            user_id: user.as_str().to_string(),
            state,
            position: t.position,
            serving: t.serving,
            ahead: behind.map(|n| n.saturating_sub(1)),
            estimated_wait_secs,
            admitted_until: t.admitted_until_ms.and_then(time),
        }
    }
}

/// The contract's answer to a queue outcome: a ticket (`created`: with 201
/// when it was made now) or the error.
fn answer(sale: &SaleId, user: &UserId, outcome: QueueOutcome) -> Result<HttpResponse, ApiError> {
    match outcome {
        QueueOutcome::Ticket { joined, ticket } => {
            let view = TicketView::new(sale, user, &ticket);
            Ok(if joined {
                HttpResponse::Created().json(view)
            } else {
                HttpResponse::Ok().json(view)
            })
        }
        QueueOutcome::NotQueued => Err(ApiError::SaleNotQueued),
        QueueOutcome::Ended { ends_ms } => Err(ApiError::SaleEnded {
            ends_at: time(ends_ms),
        }),
        QueueOutcome::NotOpen { opens_ms } => Err(ApiError::QueueNotOpen {
            opens_at: time(opens_ms),
        }),
        QueueOutcome::Paused => Err(ApiError::SalePaused),
        QueueOutcome::NotInQueue => Err(ApiError::NotInQueue),
    }
}

/// Joins a queued sale's queue: 201 with the ticket the first time, 200
/// with the same ticket after. One place per buyer.
#[utoipa::path(post, path = "/v1/sales/{sale_id}/queue", tag = "buyer", operation_id = "join_queue",
    params(SalePath),
    responses(
        (status = 201, description = "joined", body = TicketView),
        (status = 200, description = "already in the queue: the same ticket", body = TicketView),
        (status = 409, description = "`sale_not_queued` (open admission), `queue_not_open` or `sale_paused`", body = ErrorBody),
        (status = 410, description = "`sale_ended`", body = ErrorBody),
        BadRequest, Unauthorized, SaleNotFound, RateLimited, Unavailable,
    ),
    security(("buyer_jwt" = [])))]
pub(crate) async fn join_queue(
    state: web::Data<AppState>,
    buyer: Buyer,
    path: web::Path<String>,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    state.limits.check_ip(&req)?;
    state.limits.check_user(buyer.0.as_str())?;
    let sale = sale_id(&path)?;
    let outcome = state.service.queue(&sale, &buyer.0, true).await?;
    answer(&sale, &buyer.0, outcome)
}

/// The buyer's ticket.
#[utoipa::path(get, path = "/v1/sales/{sale_id}/queue/me", tag = "buyer", operation_id = "get_my_ticket",
    params(SalePath),
    responses(
        (status = 200, description = "the ticket", body = TicketView),
        (status = 404, description = "`sale_not_found` or `not_in_queue`", body = ErrorBody),
        (status = 409, description = "`sale_not_queued` (open admission)", body = ErrorBody),
        BadRequest, Unauthorized, Unavailable,
    ),
    security(("buyer_jwt" = [])))]
pub(crate) async fn my_ticket(
    state: web::Data<AppState>,
    buyer: Buyer,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let sale = sale_id(&path)?;
    let outcome = state.service.queue(&sale, &buyer.0, false).await?;
    answer(&sale, &buyer.0, outcome)
}
