//! The sale endpoints, health and readiness, and the JSON error body
//! everywhere (unknown routes and methods, bodies flashgate will not read).

use serde_json::json;

use crate::support::*;

#[tokio::test]
async fn sales_admin_endpoints() {
    let app = spawn_app().await;
    let id = unique_sale();
    // 201 created, 200 updated, with the sale in the body.
    let (s, v) = app
        .put_sale(
            &id,
            json!({"stock": 5, "per_user_limit": 2, "hold_ttl_secs": 60, "product_id": "sku-1"}),
        )
        .await;
    assert_eq!(s, 201, "{v}");
    assert_eq!(
        (
            v["stock"].as_i64(),
            v["available"].as_i64(),
            v["state"].as_str()
        ),
        (Some(5), Some(5), Some("live"))
    );
    let (s, v) = app
        .put_sale(&id, json!({"stock": 7, "per_user_limit": 2}))
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["stock"], 7);
    // 400: bad values, unknown fields, bad id.
    let (s, v) = app
        .put_sale(&id, json!({"stock": -1, "per_user_limit": 2}))
        .await;
    assert_eq!((s, error_code(&v)), (400, "invalid_request"));
    let (s, v) = app
        .put_sale(&id, json!({"stock": 1, "per_user_limit": 2, "sold": 0}))
        .await;
    assert_eq!((s, error_code(&v)), (400, "invalid_request"));
    let (s, v) = app
        .put_sale("bad:id", json!({"stock": 1, "per_user_limit": 2}))
        .await;
    assert_eq!((s, error_code(&v)), (400, "invalid_request"));
    // 401: no token, a buyer token.
    let r = app
        .client
        .put(app.url(&format!("/v1/sales/{id}")))
        .json(&json!({"stock": 1, "per_user_limit": 1}))
        .send()
        .await
        .expect("put");
    let (s, v) = body(r).await;
    assert_eq!((s, error_code(&v)), (401, "unauthorized"));
    let r = app
        .client
        .put(app.url(&format!("/v1/sales/{id}")))
        .bearer_auth(token("mallory"))
        .json(&json!({"stock": 1, "per_user_limit": 1}))
        .send()
        .await
        .expect("put");
    assert_eq!(body(r).await.0, 401);
    // 409 stock_below_committed: 3 held, stock 2 refused, nothing changed.
    for u in ["a", "b", "c"] {
        assert_eq!(app.reserve(&id, u, 1, None).await.0, 201);
    }
    let (s, v) = app
        .put_sale(&id, json!({"stock": 2, "per_user_limit": 2}))
        .await;
    assert_eq!((s, error_code(&v)), (409, "stock_below_committed"), "{v}");
    assert_eq!(v["error"]["details"]["held"], 3);
    assert_eq!(app.view(&id).await["stock"], 7);
    let (s, _) = app
        .put_sale(&id, json!({"stock": 3, "per_user_limit": 2}))
        .await;
    assert_eq!(s, 200, "stock == sold + held is allowed");
    // GET /v1/sales: 200 for the admin, 401 otherwise.
    let (s, v) = app.list_sales().await;
    assert_eq!(s, 200);
    assert!(v["sales"]
        .as_array()
        .expect("array")
        .iter()
        .any(|x| x["sale_id"] == id.as_str()));
    let (s, v) = body(
        app.client
            .get(app.url("/v1/sales"))
            .send()
            .await
            .expect("list"),
    )
    .await;
    assert_eq!((s, error_code(&v)), (401, "unauthorized"));
    // Postgres holds the configuration.
    let (stock,): (i64,) = sqlx::query_as("SELECT stock_limit FROM sales WHERE sale_id = $1")
        .bind(&id)
        .fetch_one(&app.pool)
        .await
        .expect("row");
    assert_eq!(stock, 3);
}

#[tokio::test]
async fn public_sale_view_and_404() {
    let app = spawn_app().await;
    let id = app.sale(10, 2, 60).await;
    let v = app.view(&id).await;
    for f in [
        "sale_id",
        "stock",
        "sold",
        "held",
        "available",
        "per_user_limit",
        "hold_ttl_secs",
        "starts_at",
        "ends_at",
        "state",
    ] {
        assert!(v.get(f).is_some(), "missing {f}: {v}");
    }
    let (s, v) = body(
        app.client
            .get(app.url("/v1/sales/no-such-sale"))
            .send()
            .await
            .expect("get"),
    )
    .await;
    assert_eq!((s, error_code(&v)), (404, "sale_not_found"));
    let (s, v) = body(
        app.client
            .get(app.url(&format!("/v1/sales/{}", "x".repeat(65))))
            .send()
            .await
            .expect("get"),
    )
    .await;
    assert_eq!((s, error_code(&v)), (400, "invalid_request"));
}

#[tokio::test]
async fn health_bad_input_and_json_errors_everywhere() {
    let app = spawn_app().await;
    let (s, v) = body(
        app.client
            .get(app.url("/healthz"))
            .send()
            .await
            .expect("healthz"),
    )
    .await;
    assert_eq!((s, v["status"].as_str()), (200, Some("ok")));
    let (s, v) = body(
        app.client
            .get(app.url("/readyz"))
            .send()
            .await
            .expect("readyz"),
    )
    .await;
    assert_eq!(
        (
            s,
            v["status"].as_str(),
            v["redis"].as_str(),
            v["postgres"].as_str()
        ),
        (200, Some("ready"), Some("ok"), Some("ok")),
        "{v}"
    );
    let id = app.sale(3, 2, 60).await;
    let url = app.url(&format!("/v1/sales/{id}/reservations"));
    // 413 over the body limit, in the JSON shape.
    let huge = format!(r#"{{"quantity": 1, "pad": "{}"}}"#, "x".repeat(64 * 1024));
    let r = app
        .client
        .post(&url)
        .bearer_auth(token("ann"))
        .header("content-type", "application/json")
        .body(huge)
        .send()
        .await
        .expect("post");
    let (s, v) = body(r).await;
    assert_eq!((s, error_code(&v)), (413, "payload_too_large"));
    // malformed, truncated, wrong content type, invalid UTF-8: 400.
    for (ct, raw) in [
        ("application/json", b"{\"quantity\":".to_vec()),
        ("application/json", b"not json".to_vec()),
        ("text/plain", b"{\"quantity\":1}".to_vec()),
        ("application/json", vec![b'{', 0xff, 0xfe, b'}']),
    ] {
        let r = app
            .client
            .post(&url)
            .bearer_auth(token("ann"))
            .header("content-type", ct)
            .body(raw)
            .send()
            .await
            .expect("post");
        let (s, v) = body(r).await;
        assert_eq!((s, error_code(&v)), (400, "invalid_request"));
    }
    // a buyer cannot pass its own user id.
    let r = app
        .client
        .post(&url)
        .bearer_auth(token("ann"))
        .json(&json!({"quantity": 1, "user_id": "bob"}))
        .send()
        .await
        .expect("post");
    assert_eq!(body(r).await.0, 400);
    // unknown route and method: JSON too.
    let (s, v) = body(
        app.client
            .get(app.url("/v2/nothing"))
            .send()
            .await
            .expect("get"),
    )
    .await;
    assert_eq!((s, error_code(&v)), (404, "not_found"));
    let (s, v) = body(
        app.client
            .delete(app.url(&format!("/v1/sales/{id}")))
            .send()
            .await
            .expect("delete"),
    )
    .await;
    assert_eq!((s, error_code(&v)), (405, "method_not_allowed"));
    // Nothing above changed the sale.
    let v = app.view(&id).await;
    assert_eq!((v["held"].as_i64(), v["sold"].as_i64()), (Some(0), Some(0)));
}

/// Bodies are JSON objects: an array is not read as a struct.
#[tokio::test]
async fn array_bodies_are_refused() {
    let app = spawn_app().await;
    let sale = app.sale(5, 2, 60).await;
    let cases = [
        (format!("/v1/sales/{sale}/reservations"), "[1]", Some("ann")),
        (format!("/v1/sales/{sale}"), "[5, 2]", None),
    ];
    for (path, raw, user) in cases {
        let req = if user.is_some() {
            app.client.post(app.url(&path)).bearer_auth(token("ann"))
        } else {
            app.client.put(app.url(&path)).bearer_auth(ADMIN)
        };
        let r = req
            .header("content-type", "application/json")
            .body(raw)
            .send()
            .await
            .expect("send");
        let (s, v) = body(r).await;
        assert_eq!(
            (s, error_code(&v)),
            (400, "invalid_request"),
            "{path} {raw}"
        );
    }
    let (_, v) = app.reserve(&sale, "ann", 1, None).await;
    let r = app
        .client
        .post(app.url(&format!("/v1/sales/{sale}/reservations/{}/extend", rid(&v))))
        .bearer_auth(token("ann"))
        .body("[30]")
        .send()
        .await
        .expect("send");
    assert_eq!(body(r).await.0, 400);
    // extend reads its optional body itself: still 413, with the real limit.
    let pad = format!("{{\"pad\": \"{}\"}}", "x".repeat(64 * 1024));
    let r = app
        .client
        .post(app.url(&format!("/v1/sales/{sale}/reservations/{}/extend", rid(&v))))
        .bearer_auth(token("ann"))
        .body(pad)
        .send()
        .await
        .expect("send");
    let (s, big) = body(r).await;
    assert_eq!((s, error_code(&big)), (413, "payload_too_large"));
    assert_eq!(big["error"]["details"]["limit_bytes"], 16 * 1024);
    let v = app.view(&sale).await;
    assert_eq!(
        (v["stock"].as_i64(), v["held"].as_i64()),
        (Some(5), Some(1))
    );
}
