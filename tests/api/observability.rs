//! What an operator watches: Prometheus metrics and request ids.

use crate::helpers::*;

#[tokio::test]
async fn metrics_count_requests_outcomes_and_latency_histograms() {
    let app = spawn_app().await;
    let sale = app.sale(1, 1, 60).await;
    assert_eq!(app.reserve(&sale, "ann", 1, None).await.0, 201);
    assert_eq!(app.reserve(&sale, "bob", 1, None).await.0, 409);
    let r = app
        .client
        .get(app.url("/metrics"))
        .send()
        .await
        .expect("metrics");
    assert_eq!(r.status().as_u16(), 200);
    let text = r.text().await.expect("text");
    for needle in [
        r#"flashgate_reserve_outcomes_total{outcome="held"}"#,
        r#"flashgate_reserve_outcomes_total{outcome="sold_out"}"#,
        r#"flashgate_http_requests_total{route="/v1/sales/{sale_id}/reservations",method="POST",status="201"}"#,
        r#"flashgate_http_request_duration_seconds_bucket{route="/v1/sales/{sale_id}/reservations",le="0.005"}"#,
        r#"flashgate_script_duration_seconds_bucket{script="reserve",le="0.001"}"#,
    ] {
        assert!(text.contains(needle), "missing {needle} in:\n{text}");
    }
}

#[tokio::test]
async fn every_response_carries_a_request_id() {
    let app = spawn_app().await;
    for path in ["/healthz", "/v1/sales/nope", "/v2/unknown"] {
        let r = app.client.get(app.url(path)).send().await.expect("get");
        let id = r
            .headers()
            .get("x-request-id")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        assert!(
            id.as_deref()
                .and_then(|i| uuid::Uuid::parse_str(i).ok())
                .is_some(),
            "{path}: no request id ({id:?})"
        );
    }
}
