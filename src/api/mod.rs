//! HTTP only: extractors, handlers, and the mapping of outcomes to the
//! contract. A handler reads: authenticate, validate, one call, map.

pub mod extract;
pub mod health;
pub mod openapi;
pub mod reservations;
pub mod sales;
pub mod views;

use std::sync::Arc;

use actix_web::dev::ServiceResponse;
use actix_web::error::{JsonPayloadError, PathError};
use actix_web::http::header;
use actix_web::middleware::ErrorHandlerResponse;
use actix_web::{web, HttpRequest, HttpResponse, ResponseError};

use crate::auth::Auth;
use crate::error::ApiError;
use crate::service::Service;
use crate::store::worker::WorkerStatus;

/// Built once, shared by every actix worker.
pub struct AppState {
    pub service: Service,
    pub auth: Auth,
    pub max_body_bytes: usize,
    /// The in-process write-behind worker, when `serve` runs one.
    pub worker: Option<Arc<WorkerStatus>>,
    pub limits: Arc<crate::limits::Limits>,
}

/// Registers a handler at the path its OpenAPI description names, so the
/// served routes and `/openapi.json` cannot drift apart; remembers it for
/// the test that compares the two.
fn route<P: utoipa::Path>(cfg: &mut web::ServiceConfig, r: actix_web::Route) {
    let path = P::path();
    if let Ok(mut seen) = SERVED.lock() {
        for m in P::methods() {
            let method = serde_json::to_value(&m)
                .ok()
                .and_then(|v| v.as_str().map(str::to_ascii_lowercase))
                .unwrap_or_default();
            seen.insert((method, path.clone()));
        }
    }
    cfg.route(&path, r);
}

static SERVED: std::sync::Mutex<std::collections::BTreeSet<(String, String)>> =
    std::sync::Mutex::new(std::collections::BTreeSet::new());

/// (method, path) of every documented route an app in this process serves.
pub fn served_routes() -> std::collections::BTreeSet<(String, String)> {
    SERVED.lock().map(|s| s.clone()).unwrap_or_default()
}

pub fn routes(cfg: &mut web::ServiceConfig) {
    health::routes(cfg);
    sales::routes(cfg);
    reservations::routes(cfg);
}

/// JSON bodies: size limit and the contract's error body for every failure.
pub fn json_config(limit: usize) -> web::JsonConfig {
    web::JsonConfig::default()
        .limit(limit)
        .error_handler(move |err, _req| {
            match err {
                JsonPayloadError::Overflow { .. }
                | JsonPayloadError::OverflowKnownLength { .. } => {
                    ApiError::PayloadTooLarge { limit }
                }
                JsonPayloadError::ContentType => {
                    ApiError::invalid("expected Content-Type: application/json")
                }
                JsonPayloadError::Deserialize(e) => {
                    ApiError::invalid(format!("invalid JSON body: {e}"))
                }
                other => ApiError::invalid(format!("invalid request body: {other}")),
            }
            .into()
        })
}

pub fn path_config() -> web::PathConfig {
    web::PathConfig::default().error_handler(|err: PathError, _req| {
        ApiError::invalid(format!("invalid path: {err}")).into()
    })
}

pub fn query_config() -> web::QueryConfig {
    web::QueryConfig::default()
        .error_handler(|err, _req| ApiError::invalid(format!("invalid query: {err}")).into())
}

/// Unmatched routes.
pub async fn not_found(req: HttpRequest) -> HttpResponse {
    let known = req.path().starts_with("/v1/sales") || matches!(req.path(), "/healthz" | "/readyz");
    if known
        && req.method() != actix_web::http::Method::GET
        && req.method() != actix_web::http::Method::POST
        && req.method() != actix_web::http::Method::PUT
    {
        return ApiError::MethodNotAllowed.error_response();
    }
    ApiError::NotFound.error_response()
}

/// Safety net: an error response that actix (or a middleware) produced
/// without the contract's JSON body gets one, so clients parse one shape.
pub fn ensure_json_error<B>(res: ServiceResponse<B>) -> actix_web::Result<ErrorHandlerResponse<B>> {
    let is_json = res
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if is_json {
        return Ok(ErrorHandlerResponse::Response(res.map_into_left_body()));
    }
    let status = res.status();
    let err = match status.as_u16() {
        400 => ApiError::invalid("bad request"),
        404 => ApiError::NotFound,
        405 => ApiError::MethodNotAllowed,
        413 => ApiError::PayloadTooLarge { limit: 0 },
        431 => ApiError::invalid("request headers too large"),
        401 => ApiError::Unauthorized("unauthorized"),
        503 => ApiError::Unavailable {
            message: "service unavailable",
            source: None,
        },
        _ if status.is_server_error() => ApiError::Internal(format!("unhandled {status}").into()),
        _ => ApiError::invalid(
            status
                .canonical_reason()
                .unwrap_or("bad request")
                .to_string(),
        ),
    };
    let (req, _) = res.into_parts();
    let mut response = err.error_response();
    *response.status_mut() = status;
    Ok(ErrorHandlerResponse::Response(
        ServiceResponse::new(req, response).map_into_right_body(),
    ))
}
