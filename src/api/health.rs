//! Liveness and readiness.

use std::sync::atomic::Ordering;

use actix_web::{web, HttpResponse};
use serde_json::json;

use super::{route, AppState};

pub fn routes(cfg: &mut web::ServiceConfig) {
    route::<__path_healthz>(cfg, web::get().to(healthz));
    route::<__path_readyz>(cfg, web::get().to(readyz));
    // Not JSON: documented in README, outside the OpenAPI description.
    cfg.route("/metrics", web::get().to(crate::metrics::endpoint));
    cfg.route("/openapi.json", web::get().to(super::openapi::document));
}
#[utoipa::path(get, path = "/healthz", tag = "ops", responses((status = 200, description = "alive", body = Object)))]

pub(crate) async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(json!({ "status": "ok" }))
}

/// 503 when Redis is unreachable (nothing can be decided). Postgres down is
/// reported as `degraded` with 200: buyers keep reserving and confirming
/// on Redis (confirms answer 503 in `postgres` durability mode until it is
#[utoipa::path(get, path = "/readyz", tag = "ops", responses((status = 200, description = "ready, or degraded (Postgres down: buyers still served)", body = Object), (status = 503, description = "Redis unreachable", body = Object)))]
/// back), so the instance stays in rotation.
pub(crate) async fn readyz(state: web::Data<AppState>) -> HttpResponse {
    let (redis, pg) = tokio::join!(state.service.gate.ping(), state.service.store.ping());
    let worker = state.worker.as_ref().map(|w| {
        json!({
            "running": w.running.load(Ordering::Relaxed),
            "backlog": w.backlog.load(Ordering::Relaxed),
            "pending": w.pending.load(Ordering::Relaxed),
            "events_written": w.events_written.load(Ordering::Relaxed),
            "dead_lettered": w.dead_lettered.load(Ordering::Relaxed),
            "postgres_ok": w.postgres_ok.load(Ordering::Relaxed),
        })
    });
    let status = match (&redis, &pg) {
        (Ok(()), Ok(())) => "ready",
        (Ok(()), Err(_)) => "degraded",
        _ => "unavailable",
    };
    let body = json!({
        "status": status,
        "redis": if redis.is_ok() { "ok" } else { "down" },
        "postgres": if pg.is_ok() { "ok" } else { "down" },
        "write_behind": worker,
    });
    if redis.is_ok() {
        HttpResponse::Ok().json(body)
    } else {
        HttpResponse::ServiceUnavailable().json(body)
    }
}
