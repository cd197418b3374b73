//! HTTP only: extractors, handlers, and the mapping of outcomes to the
//! contract. A handler reads: authenticate, validate, one call, map.

pub mod admin;
pub mod cors;
pub mod error;
pub mod events;
pub mod export;
pub mod extract;
#[cfg(test)]
mod fuzz_tests;
pub mod health;
pub mod limits;
pub mod observe;
pub mod openapi;
pub mod pages;
pub mod queue;
pub mod reservations;
pub mod sales;
pub mod steer;
pub mod views;

use std::sync::Arc;

use actix_web::body::{EitherBody, MessageBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::error::PathError;
use actix_web::http::{header, StatusCode};
use actix_web::middleware::{ErrorHandlerResponse, Next};
use actix_web::{web, HttpRequest, HttpResponse, ResponseError};

use tokio::time::Instant;

use crate::admission::{ConnState, MAX_WAIT};
use crate::auth::Auth;
use crate::background::readiness::Readiness;
use crate::background::worker::WorkerStatus;
use crate::service::Service;
use error::ApiError;
use limits::Limits;

/// Built once, shared by every actix worker.
pub struct AppState {
    pub service: Service,
    pub auth: Auth,
    pub max_body_bytes: usize,
    /// The in-process write-behind worker, when `serve` runs one.
    pub worker: Option<Arc<WorkerStatus>>,
    /// Dependencies probed in the background and the tasks' health.
    pub readiness: Arc<Readiness>,
    /// The watched sales' live views (event streams).
    pub live: Arc<crate::background::live::Live>,
    pub limits: Arc<Limits>,
    /// Requests being handled at once, over all workers. The socket-level
    /// admission (`crate::admission`) already reads no more than this many
    /// requests at once; this bound also covers the requests it lets
    /// through uncounted when their wait ran out, as far as its own wait
    /// (bounded like the admission's, see `bounded`) allows.
    pub inflight: Arc<tokio::sync::Semaphore>,
}

/// Waits for an in-flight permit before the handler runs, as long as the
/// socket-level admission would have (`ConnState::wait_deadline`: what is
/// left of the request's 2 s, nothing if it was read uncounted), then runs
/// the handler anyway. A request reading a slow body holds its permit, so
/// an unbounded wait here would let a few slow clients block every other
/// request, not just delay it.
pub async fn bounded(
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let sem = req
        .app_data::<web::Data<AppState>>()
        .map(|s| s.inflight.clone());
    let _permit = match &sem {
        Some(s) => {
            let deadline = req
                .conn_data::<Arc<ConnState>>()
                .map_or_else(|| Instant::now() + MAX_WAIT, |c| c.wait_deadline());
            match tokio::time::timeout_at(deadline, s.acquire()).await {
                Ok(permit) => permit.ok(),
                Err(_) => None,
            }
        }
        None => None,
    };
    next.call(req).await
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

/// In the order the router tries them: the hot buyer routes first.
pub fn routes(cfg: &mut web::ServiceConfig) {
    reservations::routes(cfg);
    queue::routes(cfg);
    events::routes(cfg);
    sales::routes(cfg);
    steer::routes(cfg);
    admin::routes(cfg);
    export::routes(cfg);
    health::routes(cfg);
    // The console and the buyer page: HTML, outside the OpenAPI description.
    pages::routes(cfg);
    // Not JSON: documented in README, outside the OpenAPI description.
    cfg.route("/metrics", web::get().to(observe::endpoint));
    cfg.route("/openapi.json", web::get().to(openapi::document));
}

pub fn path_config() -> web::PathConfig {
    web::PathConfig::default().error_handler(|err: PathError, _req| {
        ApiError::invalid(format!("invalid path: {err}")).into()
    })
}

/// Most bytes of request headers the API reads (names, values, separators).
/// actix itself accepts heads up to its 128 KiB buffer and answers a bare,
/// bodiless 431 past that, before any of our code runs; this lower bound
/// refuses the common oversized head in the contract's JSON shape.
pub const MAX_HEADER_BYTES: usize = 32 * 1024;

/// 431 with the contract's JSON body for headers over [`MAX_HEADER_BYTES`].
pub async fn limit_headers(
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<EitherBody<impl MessageBody>>, actix_web::Error> {
    let size: usize = req
        .headers()
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len() + 4)
        .sum();
    if size > MAX_HEADER_BYTES {
        let mut res = ApiError::InvalidRequest {
            message: format!("request headers larger than {MAX_HEADER_BYTES} bytes"),
            details: serde_json::json!({ "limit_bytes": MAX_HEADER_BYTES }),
        }
        .error_response();
        *res.status_mut() = StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE;
        return Ok(req.into_response(res).map_into_right_body());
    }
    Ok(next.call(req).await?.map_into_left_body())
}

/// Unmatched routes.
pub async fn not_found(req: HttpRequest) -> HttpResponse {
    let known = req.path().starts_with("/v1/sales")
        || matches!(req.path(), "/healthz" | "/readyz" | "/v1/audit");
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
        413 => ApiError::PayloadTooLarge {
            limit: res
                .request()
                .app_data::<web::Data<AppState>>()
                .map_or(0, |s| s.max_body_bytes),
        },
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
