//! `PUT /v1/sales/{sale_id}`, `GET /v1/sales`, `GET /v1/sales/{sale_id}`.

use actix_web::http::header::{self, HeaderValue};
use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};
use serde_json::json;

use super::error::ApiError;
use super::extract::{origin, sale_id, Admin, JsonObject};
use super::views::answers::{BadRequest, PayloadTooLarge, SaleNotFound, Unauthorized, Unavailable};
use super::views::{AdmissionName, ErrorBody, SaleInput, SaleList, SalePath, SaleView};
use super::{route, AppState};
use crate::domain::{Admission, Item, SaleConfig};

pub const DEFAULT_HOLD_TTL_SECS: u32 = 300;
pub const DEFAULT_MAX_HOLD_SECS: u32 = 1800;
pub const MAX_STOCK: i64 = 1_000_000_000;
pub const MAX_PER_USER_LIMIT: u32 = 10_000;
pub const MAX_HOLD_SECS: u32 = 7 * 24 * 3600;
pub const DEFAULT_ADMIT_PER_SEC: u32 = 50;
pub const MAX_ADMIT_PER_SEC: u32 = 100_000;
pub const DEFAULT_ADMISSION_WINDOW_SECS: u32 = 120;
pub const MAX_ITEMS: usize = 100;

/// A sku (or a sale id): 1-64 characters of `[A-Za-z0-9_-]`.
pub fn valid_sku(s: &str) -> bool {
    (1..=64).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// 422 `invalid_request` naming the field of a sale's items or a cart.
pub fn unprocessable(field: &str, message: &str) -> ApiError {
    ApiError::Unprocessable {
        message: format!("{field}: {message}"),
        details: json!({ "field": field }),
    }
}

/// The items of a sale of several items: 1..=100, distinct valid skus, a
/// stock each, an item's cap within the sale's.
fn items(input: &[super::views::ItemInput], limit: u32) -> Result<Vec<Item>, ApiError> {
    if !(1..=MAX_ITEMS).contains(&input.len()) {
        return Err(unprocessable(
            "items",
            &format!("between 1 and {MAX_ITEMS} items"),
        ));
    }
    let mut seen = std::collections::HashSet::new();
    let mut out = Vec::with_capacity(input.len());
    for (i, it) in input.iter().enumerate() {
        if !valid_sku(&it.sku) {
            return Err(unprocessable(
                &format!("items[{i}].sku"),
                "1-64 characters of [A-Za-z0-9_-]",
            ));
        }
        if !seen.insert(it.sku.as_str()) {
            return Err(unprocessable(
                &format!("items[{i}].sku"),
                &format!("{} is given twice", it.sku),
            ));
        }
        if !(0..=MAX_STOCK).contains(&it.stock) {
            return Err(unprocessable(
                &format!("items[{i}].stock"),
                &format!("must be between 0 and {MAX_STOCK}"),
            ));
        }
        if let Some(cap) = it.per_user_limit {
            if !(1..=limit).contains(&cap) {
                return Err(unprocessable(
                    &format!("items[{i}].per_user_limit"),
                    "must be between 1 and the sale's per_user_limit",
                ));
            }
        }
        out.push(Item {
            sku: it.sku.clone(),
            stock: it.stock,
            per_user_limit: it.per_user_limit,
        });
    }
    Ok(out)
}

pub fn routes(cfg: &mut web::ServiceConfig) {
    route::<__path_list>(cfg, web::get().to(list));
    route::<__path_configure>(cfg, web::put().to(configure));
    route::<__path_get_sale>(cfg, web::get().to(get_sale));
}

fn field(field: &str, message: &str) -> ApiError {
    ApiError::InvalidRequest {
        message: format!("{field}: {message}"),
        details: json!({ "field": field }),
    }
}

/// The admission part of a configuration: the queue's settings are
/// refused on an open sale, so a typo never silently opens a sale.
fn admission(input: &SaleInput) -> Result<Admission, ApiError> {
    let queued = input.admission == Some(AdmissionName::Queue);
    if !queued {
        for (name, given) in [
            ("admit_per_sec", input.admit_per_sec.is_some()),
            (
                "admission_window_secs",
                input.admission_window_secs.is_some(),
            ),
            ("queue_opens_at", input.queue_opens_at.is_some()),
        ] {
            if given {
                return Err(field(name, "only for \"admission\": \"queue\""));
            }
        }
        return Ok(Admission::Open);
    }
    let per_sec = input.admit_per_sec.unwrap_or(DEFAULT_ADMIT_PER_SEC);
    if !(1..=MAX_ADMIT_PER_SEC).contains(&per_sec) {
        return Err(field(
            "admit_per_sec",
            &format!("must be between 1 and {MAX_ADMIT_PER_SEC}"),
        ));
    }
    let window = input
        .admission_window_secs
        .unwrap_or(DEFAULT_ADMISSION_WINDOW_SECS);
    if !(1..=MAX_HOLD_SECS).contains(&window) {
        return Err(field(
            "admission_window_secs",
            &format!("must be between 1 and {MAX_HOLD_SECS}"),
        ));
    }
    if let (Some(opens), Some(starts)) = (input.queue_opens_at, input.starts_at) {
        if opens > starts {
            return Err(field("queue_opens_at", "must not be after starts_at"));
        }
    }
    Ok(Admission::Queue {
        per_sec,
        window_ms: i64::from(window) * 1000,
        opens_ms: input.queue_opens_at.map(|t| t.timestamp_millis()),
    })
}

/// Checks a configuration and fills in the defaults.
pub fn validate(input: &SaleInput) -> Result<SaleConfig, ApiError> {
    if !(1..=MAX_PER_USER_LIMIT).contains(&input.per_user_limit) {
        return Err(field(
            "per_user_limit",
            &format!("must be between 1 and {MAX_PER_USER_LIMIT}"),
        ));
    }
    let (stock, items) = match (input.stock, &input.items) {
        (Some(_), Some(_)) => {
            return Err(unprocessable(
                "items",
                "give either stock or items, not both",
            ))
        }
        (None, None) => return Err(field("stock", "required (or items)")),
        (Some(stock), None) => {
            if !(0..=MAX_STOCK).contains(&stock) {
                return Err(field(
                    "stock",
                    &format!("must be between 0 and {MAX_STOCK}"),
                ));
            }
            (stock, Vec::new())
        }
        (None, Some(list)) => {
            let items = items(list, input.per_user_limit)?;
            (items.iter().map(|i| i.stock).sum(), items)
        }
    };
    let ttl = input.hold_ttl_secs.unwrap_or(DEFAULT_HOLD_TTL_SECS);
    if !(1..=MAX_HOLD_SECS).contains(&ttl) {
        return Err(field(
            "hold_ttl_secs",
            &format!("must be between 1 and {MAX_HOLD_SECS}"),
        ));
    }
    let max_hold = input
        .max_hold_secs
        .unwrap_or(DEFAULT_MAX_HOLD_SECS.max(ttl));
    if !(ttl..=MAX_HOLD_SECS).contains(&max_hold) {
        return Err(field(
            "max_hold_secs",
            &format!("must be between hold_ttl_secs and {MAX_HOLD_SECS}"),
        ));
    }
    if let (Some(s), Some(e)) = (input.starts_at, input.ends_at) {
        if e <= s {
            return Err(field("ends_at", "must be after starts_at"));
        }
    }
    if let Some(p) = &input.product_id {
        if p.is_empty() || p.len() > 128 || p.chars().any(char::is_control) {
            return Err(field(
                "product_id",
                "1-128 characters, no control characters",
            ));
        }
    }
    let admission = admission(input)?;
    Ok(SaleConfig {
        items,
        stock,
        per_user_limit: input.per_user_limit,
        hold_ttl_ms: i64::from(ttl) * 1000,
        max_hold_ms: i64::from(max_hold) * 1000,
        starts_ms: input.starts_at.map(|t| t.timestamp_millis()),
        ends_ms: input.ends_at.map(|t| t.timestamp_millis()),
        product_id: input.product_id.clone(),
        admission,
    })
}

/// Creates (201) or updates (200) a sale.
#[utoipa::path(put, path = "/v1/sales/{sale_id}", tag = "admin", operation_id = "put_sale",
    params(SalePath),
    request_body = SaleInput,
    responses(
        (status = 201, description = "created", body = SaleView),
        (status = 200, description = "updated", body = SaleView),
        (status = 409, description = "`stock_below_committed`: stock < sold + held (of the sale, or of the items named in `details.items`, an item left out counting as stock 0); `sale_closed`: an admin closed the sale, its configuration is final", body = ErrorBody),
        (status = 422, description = "`invalid_request`: `items` malformed (count, sku, duplicates, an item's cap over the sale's), given with `stock`, or a change the sale's units forbid (between `stock` and `items`, a new cap on an item with units)", body = ErrorBody),
        BadRequest, Unauthorized, PayloadTooLarge, Unavailable,
    ),
    security(("admin_token" = [])))]
#[tracing::instrument(skip_all, fields(sale = %path))]
pub(crate) async fn configure(
    state: web::Data<AppState>,
    _admin: Admin,
    path: web::Path<String>,
    req: HttpRequest,
    body: JsonObject<SaleInput>,
) -> Result<HttpResponse, ApiError> {
    let sale = sale_id(&path)?;
    let cfg = validate(&body)?;
    let (created, s) = state.service.configure(&sale, &cfg, &origin(&req)).await?;
    let view = SaleView::new(&sale, &s);
    Ok(if created {
        HttpResponse::Created().json(view)
    } else {
        HttpResponse::Ok().json(view)
    })
}

/// Every sale (admin).
#[utoipa::path(get, path = "/v1/sales", tag = "admin", operation_id = "list_sales",
    responses(
        (status = 200, description = "every sale (a sale whose Redis node is unavailable is named in `unavailable`)", body = SaleList),
        Unauthorized, Unavailable,
    ),
    security(("admin_token" = [])))]
pub(crate) async fn list(
    state: web::Data<AppState>,
    _admin: Admin,
) -> Result<HttpResponse, ApiError> {
    let (sales, unavailable) = state.service.list().await?;
    let sales = sales.iter().map(|(id, s)| SaleView::new(id, s)).collect();
    let unavailable = unavailable.iter().map(ToString::to_string).collect();
    Ok(HttpResponse::Ok().json(SaleList { sales, unavailable }))
}

/// Does `If-None-Match` name `etag` (or `*`)? Weak tags compare by value.
fn matches(if_none_match: Option<&HeaderValue>, etag: &str) -> bool {
    if_none_match
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.split(',')
                .map(|t| t.trim().trim_start_matches("W/"))
                .any(|t| t == "*" || t == etag)
        })
}

/// One sale, as anyone sees it: `ETag: "<version>"` and a second of
/// caching, so a CDN or a browser absorbs polling; a request naming the
/// current version in `If-None-Match` gets 304 and no body.
#[utoipa::path(get, path = "/v1/sales/{sale_id}", tag = "public", operation_id = "get_sale",
    params(
        SalePath,
        ("If-None-Match" = Option<String>, Header, description = "an ETag of this sale seen before: 304 if it is still the current version"),
    ),
    responses(
        (status = 200, description = "the sale (headers ETag, Cache-Control: public, max-age=1)", body = SaleView),
        (status = 304, description = "not modified since the ETag given"),
        BadRequest, SaleNotFound, Unavailable,
    ))]
pub(crate) async fn get_sale(
    state: web::Data<AppState>,
    path: web::Path<String>,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let sale = sale_id(&path)?;
    let s = state.service.view(&sale).await?;
    let view = SaleView::new(&sale, &s);
    let etag = format!("\"{}\"", view.version);
    let fresh = matches(req.headers().get(header::IF_NONE_MATCH), &etag);
    let mut res = HttpResponse::build(if fresh {
        StatusCode::NOT_MODIFIED
    } else {
        StatusCode::OK
    });
    res.insert_header((header::ETAG, etag.as_str()))
        .insert_header((header::CACHE_CONTROL, "public, max-age=1"));
    Ok(if fresh { res.finish() } else { res.json(view) })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input(v: serde_json::Value) -> SaleInput {
        serde_json::from_value(v).expect("shape")
    }

    #[test]
    fn defaults_fill_in() {
        let c = validate(&input(json!({"stock": 10, "per_user_limit": 2}))).expect("valid");
        assert_eq!((c.hold_ttl_ms, c.max_hold_ms), (300_000, 1_800_000));
        let c = validate(&input(
            json!({"stock": 10, "per_user_limit": 2, "hold_ttl_secs": 3600}),
        ))
        .expect("valid");
        assert_eq!(c.max_hold_ms, 3_600_000);
    }

    #[test]
    fn out_of_range_values_name_their_field() {
        let cases = [
            (json!({"stock": -1, "per_user_limit": 2}), "stock"),
            (json!({"stock": 10, "per_user_limit": 0}), "per_user_limit"),
            (
                json!({"stock": 10, "per_user_limit": 2, "hold_ttl_secs": 0}),
                "hold_ttl_secs",
            ),
            (
                json!({"stock": 10, "per_user_limit": 2, "hold_ttl_secs": 60, "max_hold_secs": 30}),
                "max_hold_secs",
            ),
            (
                json!({"stock": 10, "per_user_limit": 2, "starts_at": "2026-01-02T00:00:00Z", "ends_at": "2026-01-01T00:00:00Z"}),
                "ends_at",
            ),
            (
                json!({"stock": 10, "per_user_limit": 2, "product_id": ""}),
                "product_id",
            ),
        ];
        for (v, name) in cases {
            match validate(&input(v)) {
                Err(ApiError::InvalidRequest { details, .. }) => assert_eq!(details["field"], name),
                other => panic!("{name}: expected invalid_request, got {other:?}"),
            }
        }
    }

    #[test]
    fn unknown_fields_are_refused() {
        assert!(serde_json::from_value::<SaleInput>(
            json!({"stock": 1, "per_user_limit": 1, "sold": 0})
        )
        .is_err());
    }
}
