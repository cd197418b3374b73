//! Admins steer a live sale: `POST /v1/sales/{sale_id}/pause`, `/resume`,
//! `/close` (no body). Each answers the sale as it left it.

use actix_web::{web, HttpRequest, HttpResponse};

use super::error::ApiError;
use super::extract::{origin, sale_id, Admin};
use super::views::answers::{BadRequest, SaleNotFound, Unauthorized, Unavailable};
use super::views::{ErrorBody, SalePath, SaleView};
use super::{route, AppState};
use crate::domain::Steer;

pub fn routes(cfg: &mut web::ServiceConfig) {
    route::<__path_pause>(cfg, web::post().to(pause));
    route::<__path_resume>(cfg, web::post().to(resume));
    route::<__path_close>(cfg, web::post().to(close));
}

async fn steer(
    state: &AppState,
    path: &str,
    req: &HttpRequest,
    action: Steer,
) -> Result<HttpResponse, ApiError> {
    let sale = sale_id(path)?;
    let s = state.service.steer(&sale, action, &origin(req)).await?;
    Ok(HttpResponse::Ok().json(SaleView::new(&sale, &s)))
}

/// Pauses a sale: reserves and queue joins answer 409 `sale_paused` (a
/// queued sale admits nobody meanwhile); holds can still be confirmed,
/// cancelled, extended. Pausing a paused sale answers the same.
#[utoipa::path(post, path = "/v1/sales/{sale_id}/pause", tag = "admin", operation_id = "pause_sale",
    params(SalePath),
    responses(
        (status = 200, description = "paused (`paused: true`)", body = SaleView),
        (status = 409, description = "`sale_closed`: a closed sale stays closed", body = ErrorBody),
        BadRequest, Unauthorized, SaleNotFound, Unavailable,
    ),
    security(("admin_token" = [])))]
#[tracing::instrument(skip_all, fields(sale = %path))]
pub(crate) async fn pause(
    state: web::Data<AppState>,
    _admin: Admin,
    path: web::Path<String>,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    steer(&state, &path, &req, Steer::Pause).await
}

/// Resumes a paused sale (a running one answers the same).
#[utoipa::path(post, path = "/v1/sales/{sale_id}/resume", tag = "admin", operation_id = "resume_sale",
    params(SalePath),
    responses(
        (status = 200, description = "running (`paused: false`)", body = SaleView),
        (status = 409, description = "`sale_closed`: a closed sale cannot be resumed", body = ErrorBody),
        BadRequest, Unauthorized, SaleNotFound, Unavailable,
    ),
    security(("admin_token" = [])))]
#[tracing::instrument(skip_all, fields(sale = %path))]
pub(crate) async fn resume(
    state: web::Data<AppState>,
    _admin: Admin,
    path: web::Path<String>,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    steer(&state, &path, &req, Steer::Resume).await
}

/// Closes a sale now, for good: `ends_at` becomes now (an earlier end is
/// kept), `closed: true`, a pause is lifted; reserves and joins answer 410
/// `sale_ended`, holds can still be confirmed until their deadline. A
/// closed sale cannot be resumed, paused or configured (409
/// `sale_closed`); closing it again answers the same.
#[utoipa::path(post, path = "/v1/sales/{sale_id}/close", tag = "admin", operation_id = "close_sale",
    params(SalePath),
    responses(
        (status = 200, description = "closed (`closed: true`, `state: ended`)", body = SaleView),
        BadRequest, Unauthorized, SaleNotFound, Unavailable,
    ),
    security(("admin_token" = [])))]
#[tracing::instrument(skip_all, fields(sale = %path))]
pub(crate) async fn close(
    state: web::Data<AppState>,
    _admin: Admin,
    path: web::Path<String>,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    steer(&state, &path, &req, Steer::Close).await
}
