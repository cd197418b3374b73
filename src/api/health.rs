//! Liveness and readiness.

use std::sync::atomic::Ordering;

use actix_web::{web, HttpResponse};
use serde_json::json;

use super::{route, AppState};

pub fn routes(cfg: &mut web::ServiceConfig) {
    route::<__path_healthz>(cfg, web::get().to(healthz));
    route::<__path_readyz>(cfg, web::get().to(readyz));
}

/// Liveness: 200 while the process runs.
#[utoipa::path(get, path = "/healthz", tag = "ops", operation_id = "healthz", responses((status = 200, description = "alive", body = Object)))]
pub(crate) async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(json!({ "status": "ok" }))
}

/// Readiness, answered from memory (dependencies probed in the background every
/// second, the background tasks' own reports), so it is fast whatever
/// Redis and Postgres do. 503 when Redis is unreachable (nothing can be
/// decided). `degraded` with 200 while Postgres is down (buyers keep
/// reserving on Redis; confirms answer 503 in `postgres` durability mode
/// until it is back) or a background task is stalled (`reasons` says
/// which): the instance stays in rotation.
#[utoipa::path(get, path = "/readyz", tag = "ops", operation_id = "readyz", responses((status = 200, description = "ready, or degraded (Postgres down, or a background task stalled: buyers still served)", body = Object), (status = 503, description = "Redis unreachable", body = Object)))]
pub(crate) async fn readyz(state: web::Data<AppState>) -> HttpResponse {
    let r = state.readiness.report();
    let worker = state.worker.as_ref().map(|w| {
        json!({
            "backlog": w.backlog.load(Ordering::Relaxed),
            "pending": w.pending.load(Ordering::Relaxed),
            "events_written": w.events_written.load(Ordering::Relaxed),
            "dead_lettered": w.dead_lettered.load(Ordering::Relaxed),
            "postgres_ok": w.postgres_ok.load(Ordering::Relaxed),
        })
    });
    let mut reasons = Vec::new();
    if !r.redis_ok {
        reasons.push("Redis is unreachable".to_string());
    }
    if !r.postgres_ok {
        reasons.push("Postgres is unreachable".to_string());
    }
    reasons.extend(r.stalls.iter().cloned());
    let status = if !r.redis_ok {
        "unavailable"
    } else if reasons.is_empty() {
        "ready"
    } else {
        "degraded"
    };
    let body = json!({
        "status": status,
        "redis": if r.redis_ok { "ok" } else { "down" },
        "postgres": if r.postgres_ok { "ok" } else { "down" },
        "reasons": reasons,
        "checked_ms_ago": r.checked_ms_ago,
        "write_behind": worker,
    });
    if r.redis_ok {
        HttpResponse::Ok().json(body)
    } else {
        HttpResponse::ServiceUnavailable().json(body)
    }
}
