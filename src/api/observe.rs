//! What an operator watches over HTTP: `GET /metrics`, and the middleware
//! that counts and times every request and gives it an `X-Request-Id`.

use std::time::Instant;

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header::{HeaderName, HeaderValue};
use actix_web::middleware::Next;
use actix_web::{HttpMessage, HttpResponse};
use metrics::{counter, histogram};

pub async fn endpoint() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4")
        .body(crate::metrics::render())
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
        (2, ["v1", "audit", ..]) => "/v1/audit",
        (3, ["v1", "sales", ..]) => "/v1/sales/{sale_id}",
        (4, ["v1", "sales", _, "reservations", ..]) => "/v1/sales/{sale_id}/reservations",
        (4, ["v1", "sales", _, "queue", ..]) => "/v1/sales/{sale_id}/queue",
        (5, ["v1", "sales", _, "queue", "me", ..]) => "/v1/sales/{sale_id}/queue/me",
        (4, ["v1", "sales", _, "events", ..]) => "/v1/sales/{sale_id}/events",
        (4, ["v1", "sales", _, "pause", ..]) => "/v1/sales/{sale_id}/pause",
        (4, ["v1", "sales", _, "resume", ..]) => "/v1/sales/{sale_id}/resume",
        (4, ["v1", "sales", _, "close", ..]) => "/v1/sales/{sale_id}/close",
        (4, ["v1", "sales", _, "orders", ..]) => "/v1/sales/{sale_id}/orders",
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
