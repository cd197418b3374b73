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
    let route = req
        .match_pattern()
        .unwrap_or_else(|| "unmatched".to_string());
    let method = req.method().to_string();
    let request_id = req
        .extensions()
        .get::<tracing_actix_web::RequestId>()
        .map(|id| id.to_string());
    let mut res = next.call(req).await?;
    let status = res.status().as_u16().to_string();
    counter!("flashgate_http_requests_total", "route" => route.clone(), "method" => method, "status" => status).increment(1);
    histogram!("flashgate_http_request_duration_seconds", "route" => route)
        .record(start.elapsed().as_secs_f64());
    if let Some(id) = request_id.and_then(|id| HeaderValue::from_str(&id).ok()) {
        res.headers_mut()
            .insert(HeaderName::from_static("x-request-id"), id);
    }
    Ok(res)
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

pub fn dead_lettered() {
    counter!("flashgate_write_behind_dead_letters_total").increment(1);
}
