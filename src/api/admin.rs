//! What admins read of a sale: its reservations by pages
//! (`GET /v1/sales/{sale_id}/reservations`) and the audit of admin changes
//! (`GET /v1/audit`).

use actix_web::{web, HttpRequest, HttpResponse};
use chrono::{DateTime, Datelike, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

use super::error::ApiError;
use super::extract::{sale_id, Admin};
use super::views::answers::{BadRequest, SaleNotFound, Unauthorized, Unavailable};
use super::views::{ReservationView, SalePath};
use super::{route, AppState};
use crate::domain::Record;
use crate::ids::SaleId;
use crate::store::AuditEntry;

pub fn routes(cfg: &mut web::ServiceConfig) {
    route::<__path_list_reservations>(cfg, web::get().to(list_reservations));
    route::<__path_audit>(cfg, web::get().to(audit));
}

/// Most items on one page (reservations, audit rows); without `limit`, 50.
pub const MAX_PAGE: u32 = 500;
pub const DEFAULT_PAGE: u32 = 50;

/// Which reservations a listing pages through.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ListStatus {
    /// Live holds, by deadline (Redis).
    Held,
    /// Confirmed reservations, by confirmation (Postgres).
    Confirmed,
}

/// `GET /v1/sales/{sale_id}/reservations?status=&limit=&cursor=`.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// `held` (live holds, by deadline) or `confirmed` (by confirmation)
    pub status: ListStatus,
    /// 1-500 (default 50)
    #[param(minimum = 1, maximum = 500)]
    pub limit: Option<u32>,
    /// `next_cursor` of the page before (opaque)
    pub cursor: Option<String>,
}

/// A page of reservations.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ReservationPage {
    pub reservations: Vec<ReservationView>,
    /// Pass as `cursor` for the next page; null on the last one.
    pub next_cursor: Option<String>,
}

/// `GET /v1/audit?sale_id=&limit=`.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct AuditQuery {
    /// only this sale's changes
    pub sale_id: Option<String>,
    /// 1-500 (default 50)
    #[param(minimum = 1, maximum = 500)]
    pub limit: Option<u32>,
}

/// Admin changes, newest first.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct AuditList {
    pub actions: Vec<AuditView>,
}

/// One admin change.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct AuditView {
    pub at: DateTime<Utc>,
    /// `configure` (a PUT), `pause`, `resume`, `close` or `cancel` (an
    /// admin cancel of a reservation)
    pub action: String,
    pub sale_id: String,
    /// The sale (a PUT, pause, resume, close: configuration, `paused`,
    /// `closed_at`) or the reservation (a cancel) before the change; null
    /// when a PUT created the sale.
    #[schema(value_type = Option<Object>)]
    pub before: Option<Value>,
    /// The same after the change.
    #[schema(value_type = Option<Object>)]
    pub after: Option<Value>,
    /// The `X-Request-Id` the change was answered with.
    pub request_id: Option<String>,
    /// The client's address.
    pub client: Option<String>,
}

impl From<AuditEntry> for AuditView {
    fn from(e: AuditEntry) -> Self {
        Self {
            at: e.at,
            action: e.action,
            sale_id: e.sale_id,
            before: e.before,
            after: e.after,
            request_id: e.request_id,
            client: e.client,
        }
    }
}

/// A query string as `T` (unknown parameters refused), 400 otherwise.
fn query<T: serde::de::DeserializeOwned>(req: &HttpRequest) -> Result<T, ApiError> {
    web::Query::<T>::from_query(req.query_string())
        .map(web::Query::into_inner)
        .map_err(|e| ApiError::invalid(format!("invalid query: {e}")))
}

fn page_size(limit: Option<u32>) -> Result<u32, ApiError> {
    match limit.unwrap_or(DEFAULT_PAGE) {
        n @ 1..=MAX_PAGE => Ok(n),
        _ => Err(ApiError::InvalidRequest {
            message: format!("limit must be between 1 and {MAX_PAGE}"),
            details: serde_json::json!({ "field": "limit" }),
        }),
    }
}

/// Where a page starts: after the last reservation of the page before.
/// Opaque to clients: `h.<deadline ms>.<id>` (held), `c.<confirmed_at
/// µs>.<id>` (confirmed).
fn cursor(kind: &str, key: i64, rid: &Uuid) -> String {
    format!("{kind}.{key}.{rid}")
}

/// The key and id of a cursor of `kind`; anything else is 400 (a cursor of
/// the other status too).
fn after(raw: &str, kind: &str) -> Result<(i64, Uuid), ApiError> {
    let bad = || ApiError::InvalidRequest {
        message: "invalid cursor: pass the next_cursor of a page of the same status".into(),
        details: serde_json::json!({ "field": "cursor" }),
    };
    let mut parts = raw.splitn(3, '.');
    if parts.next() != Some(kind) {
        return Err(bad());
    }
    let key = parts.next().and_then(|k| k.parse().ok()).ok_or_else(bad)?;
    let rid = parts
        .next()
        .and_then(|r| Uuid::parse_str(r).ok())
        .ok_or_else(bad)?;
    Ok((key, rid))
}

/// A page of a sale's reservations: its live holds (Redis, by deadline)
/// or its confirmed ones (Postgres, by confirmation). Pages stay put while
/// reservations come and go: each starts after the last one of the page
/// before.
#[utoipa::path(get, path = "/v1/sales/{sale_id}/reservations", tag = "admin", operation_id = "list_reservations",
    params(SalePath, ListQuery),
    responses(
        (status = 200, description = "a page; `next_cursor` null on the last", body = ReservationPage),
        BadRequest, Unauthorized, SaleNotFound, Unavailable,
    ),
    security(("admin_token" = [])))]
pub(crate) async fn list_reservations(
    state: web::Data<AppState>,
    _admin: Admin,
    path: web::Path<String>,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let sale = sale_id(&path)?;
    let q: ListQuery = query(&req)?;
    let limit = page_size(q.limit)?;
    let view = |items: &[(Uuid, Record)]| -> Vec<ReservationView> {
        items
            .iter()
            .map(|(rid, rec)| ReservationView::new(&sale, rid, rec))
            .collect()
    };
    let cursor_of = |kind: &str| q.cursor.as_deref().map(|c| after(c, kind)).transpose();
    let page = match q.status {
        ListStatus::Held => {
            let page = state
                .service
                .held_page(&sale, cursor_of("h")?, limit)
                .await?;
            ReservationPage {
                reservations: view(&page.holds),
                next_cursor: page.next.map(|(d, rid)| cursor("h", d, &rid)),
            }
        }
        ListStatus::Confirmed => {
            let start = match cursor_of("c")? {
                Some((us, rid)) => Some((
                    // Years Postgres and chrono both hold (any real cursor's).
                    DateTime::from_timestamp_micros(us)
                        .filter(|t| (1..=9999).contains(&t.year()))
                        .ok_or_else(|| ApiError::invalid("invalid cursor: a time out of range"))?,
                    rid,
                )),
                None => None,
            };
            let (items, next) = state.service.confirmed_page(&sale, start, limit).await?;
            ReservationPage {
                reservations: view(&items),
                next_cursor: next.map(|(at, rid)| cursor("c", at.timestamp_micros(), &rid)),
            }
        }
    };
    Ok(HttpResponse::Ok().json(page))
}

/// Admin changes (PUT, pause, resume, close, admin cancel), newest first.
#[utoipa::path(get, path = "/v1/audit", tag = "admin", operation_id = "list_audit",
    params(AuditQuery),
    responses(
        (status = 200, description = "the newest `limit` changes", body = AuditList),
        BadRequest, Unauthorized, Unavailable,
    ),
    security(("admin_token" = [])))]
pub(crate) async fn audit(
    state: web::Data<AppState>,
    _admin: Admin,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let q: AuditQuery = query(&req)?;
    let limit = page_size(q.limit)?;
    let sale: Option<SaleId> = q.sale_id.as_deref().map(sale_id).transpose()?;
    let actions = state.service.audit_log(sale.as_ref(), limit).await?;
    Ok(HttpResponse::Ok().json(AuditList {
        actions: actions.into_iter().map(AuditView::from).collect(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_keep_to_their_status() {
        let rid = Uuid::new_v4();
        let held = cursor("h", 1_795_422_534_255, &rid);
        assert_eq!(after(&held, "h").expect("held"), (1_795_422_534_255, rid));
        for (raw, kind) in [
            (held.clone(), "c"),
            ("h.12".to_string(), "h"),
            (format!("h.x.{rid}"), "h"),
            (format!("h.1.{rid}x"), "h"),
            (String::new(), "h"),
        ] {
            assert!(after(&raw, kind).is_err(), "{raw}");
        }
    }

    #[test]
    fn page_sizes_default_and_stay_in_range() {
        assert_eq!(page_size(None).expect("default"), 50);
        assert_eq!(page_size(Some(500)).expect("max"), 500);
        assert!(page_size(Some(0)).is_err());
        assert!(page_size(Some(501)).is_err());
    }
}
