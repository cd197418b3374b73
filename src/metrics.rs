//! Prometheus metrics (`GET /metrics`): one recorder per process, real
//! histograms with buckets, and the names an operator watches.

use std::sync::OnceLock;
use std::time::Instant;

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header::{HeaderName, HeaderValue};
use actix_web::middleware::Next;
use actix_web::{HttpMessage, HttpResponse};
use metrics::{counter, histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
];
const SIZE_BUCKETS: &[f64] = &[1.0, 2.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0];

/// Installs the recorder once (later calls reuse it: tests run several apps
/// in one process).
pub fn install() -> Option<&'static PrometheusHandle> {
    HANDLE
        .get_or_init(|| {
            let builder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), LATENCY_BUCKETS)
                .and_then(|b| {
                    b.set_buckets_for_metric(Matcher::Suffix("_size".into()), SIZE_BUCKETS)
                });
            match builder.and_then(|b| b.install_recorder()) {
                Ok(h) => Some(h),
                Err(e) => {
                    tracing::warn!(error = %e, "metrics recorder not installed");
                    None
                }
            }
        })
        .as_ref()
}

/// Folds the samples histograms collected into their buckets every
/// `every`. `install_recorder` leaves this to the caller, and a scrape does
/// it too; without it the raw samples pile up between scrapes, and for
/// ever where nothing scrapes `/metrics` (measured: tens of MiB after a few
/// million requests).
pub async fn upkeep(every: std::time::Duration, shutdown: tokio_util::sync::CancellationToken) {
    let Some(h) = install() else { return };
    let mut tick = tokio::time::interval(every);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => h.run_upkeep(),
        }
    }
}

pub fn render() -> String {
    match install() {
        Some(h) => {
            h.run_upkeep();
            h.render()
        }
        None => String::new(),
    }
}

pub async fn endpoint() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4")
        .body(render())
}

/// Requests by route and status, end-to-end latency, and the request id in
/// an `X-Request-Id` response header (the id is in every log line of the
/// request too).
pub async fn middleware(
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let start = Instant::now();
    let route = route_template(req.path());
    tracing::Span::current().record("http.route", route);
    let method = method_label(req.method());
    let request_id = req
        .extensions()
        .get::<tracing_actix_web::RequestId>()
        .map(|id| id.to_string());
    let mut res = next.call(req).await?;
    let status = status_label(res.status());
    counter!("flashgate_http_requests_total", "route" => route, "method" => method, "status" => status).increment(1);
    histogram!("flashgate_http_request_duration_seconds", "route" => route)
        .record(start.elapsed().as_secs_f64());
    if let Some(id) = request_id.and_then(|id| HeaderValue::from_str(&id).ok()) {
        res.headers_mut()
            .insert(HeaderName::from_static("x-request-id"), id);
    }
    Ok(res)
}

/// Static labels, so counting a request allocates nothing.
fn method_label(m: &actix_web::http::Method) -> &'static str {
    use actix_web::http::Method;
    match *m {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        Method::PATCH => "PATCH",
        _ => "other",
    }
}

fn status_label(s: actix_web::http::StatusCode) -> std::borrow::Cow<'static, str> {
    match s.as_u16() {
        200 => "200".into(),
        201 => "201".into(),
        400 => "400".into(),
        401 => "401".into(),
        404 => "404".into(),
        409 => "409".into(),
        410 => "410".into(),
        429 => "429".into(),
        503 => "503".into(),
        other => other.to_string().into(),
    }
}

/// The route template of a path, by shape (no regex: actix's router already
/// matched once, and asking it again per request cost a tenth of the CPU in
/// a profile). `api::routes` is the authority; a test keeps the two in step.
pub fn route_template(path: &str) -> &'static str {
    let mut seg = [""; 7];
    let mut n = 0;
    for part in path.strip_prefix('/').unwrap_or(path).split('/') {
        if n == seg.len() || part.is_empty() {
            return "other";
        }
        seg[n] = part;
        n += 1;
    }
    match (n, seg) {
        (1, ["healthz", ..]) => "/healthz",
        (1, ["readyz", ..]) => "/readyz",
        (1, ["metrics", ..]) => "/metrics",
        (1, ["openapi.json", ..]) => "/openapi.json",
        (2, ["v1", "sales", ..]) => "/v1/sales",
        (3, ["v1", "sales", ..]) => "/v1/sales/{sale_id}",
        (4, ["v1", "sales", _, "reservations", ..]) => "/v1/sales/{sale_id}/reservations",
        (5, ["v1", "sales", _, "reservations", ..]) => {
            "/v1/sales/{sale_id}/reservations/{reservation_id}"
        }
        (6, ["v1", "sales", _, "reservations", _, "confirm", ..]) => {
            "/v1/sales/{sale_id}/reservations/{reservation_id}/confirm"
        }
        (6, ["v1", "sales", _, "reservations", _, "cancel", ..]) => {
            "/v1/sales/{sale_id}/reservations/{reservation_id}/cancel"
        }
        (6, ["v1", "sales", _, "reservations", _, "extend", ..]) => {
            "/v1/sales/{sale_id}/reservations/{reservation_id}/extend"
        }
        _ => "other",
    }
}

pub fn reserve_outcome(outcome: &'static str) {
    counter!("flashgate_reserve_outcomes_total", "outcome" => outcome).increment(1);
}

pub fn script_latency(script: &'static str, seconds: f64) {
    histogram!("flashgate_script_duration_seconds", "script" => script).record(seconds);
}

pub fn holds_expired(via: &'static str, n: i64) {
    if n > 0 {
        counter!("flashgate_holds_expired_total", "via" => via).increment(n.unsigned_abs());
    }
}

/// A request whose wait for an admission permit ran out (read uncounted).
pub fn admission_wait_expired() {
    counter!("flashgate_admission_wait_expired_total").increment(1);
}

pub fn rate_limited(scope: &'static str) {
    counter!("flashgate_rate_limited_total", "scope" => scope).increment(1);
}

pub fn write_behind_batch(events: usize) {
    histogram!("flashgate_write_behind_batch_size").record(events as f64);
    counter!("flashgate_write_behind_events_total").increment(events as u64);
}

pub fn write_behind_lag(backlog: i64, pending: i64) {
    metrics::gauge!("flashgate_write_behind_backlog").set(backlog as f64);
    metrics::gauge!("flashgate_write_behind_pending").set(pending as f64);
}

pub fn postgres_write_error(path: &'static str) {
    counter!("flashgate_postgres_write_errors_total", "path" => path).increment(1);
}

/// Orders refused because their confirm ran in a sale state that was lost
/// and rebuilt before the write (`path`: `confirm`, `write_behind`).
pub fn stale_orders(path: &'static str, n: usize) {
    counter!("flashgate_stale_orders_total", "path" => path).increment(n as u64);
}

/// A background task (`write-behind`, `sweeper`) that has been failing for
/// longer than `FLASHGATE_STALL_AFTER_MS` (1), or not (0).
pub fn task_stalled(task: &'static str, stalled: bool) {
    metrics::gauge!("flashgate_background_stalled", "task" => task).set(if stalled {
        1.0
    } else {
        0.0
    });
}

pub fn dead_lettered() {
    counter!("flashgate_write_behind_dead_letters_total").increment(1);
}

#[cfg(test)]
mod tests {
    use super::route_template;
    use utoipa::OpenApi;

    #[test]
    fn every_documented_route_has_its_template() {
        let doc = crate::api::openapi::ApiDoc::openapi();
        let paths: Vec<&String> = doc.paths.paths.keys().collect();
        assert!(paths.len() >= 8);
        for path in paths {
            let concrete = path
                .replace("{sale_id}", "s-1")
                .replace("{reservation_id}", "0b6f1a52-55d0-4b5e-9bb4-0f1f3e0d7c11");
            assert_eq!(route_template(&concrete), path, "{concrete}");
        }
        for other in [
            "/",
            "/v1",
            "/v1/sales/a/b",
            "/v1/sales/a/reservations/b/pay",
            "//healthz",
            "/healthz/",
            "/a/b/c/d/e/f/g/h",
        ] {
            assert_eq!(route_template(other), "other", "{other}");
        }
    }
}
