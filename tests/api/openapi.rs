//! `/openapi.json` describes exactly the routes the app serves.

use std::collections::BTreeSet;

use crate::support::*;

#[tokio::test]
async fn the_document_lists_every_route_the_app_serves() {
    let app = spawn_app().await;
    let r = app
        .client
        .get(app.url("/openapi.json"))
        .send()
        .await
        .expect("openapi");
    assert_eq!(r.status().as_u16(), 200);
    let doc: serde_json::Value = r.json().await.expect("json");
    assert!(
        doc["openapi"].as_str().is_some_and(|v| v.starts_with("3.")),
        "{}",
        doc["openapi"]
    );
    let mut documented = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for method in item.as_object().expect("item").keys() {
            documented.insert((method.clone(), path.clone()));
        }
    }
    let served = flashgate::api::served_routes();
    assert_eq!(documented, served, "documented vs served routes");
    for route in [
        ("put", "/v1/sales/{sale_id}"),
        ("post", "/v1/sales/{sale_id}/reservations"),
        (
            "post",
            "/v1/sales/{sale_id}/reservations/{reservation_id}/extend",
        ),
        ("get", "/readyz"),
    ] {
        assert!(
            served.contains(&(route.0.to_string(), route.1.to_string())),
            "{route:?} not served"
        );
    }
    // Every documented path answers (anything but the router's 404).
    for (method, path) in &documented {
        let concrete = path
            .replace("{sale_id}", "no-such-sale")
            .replace("{reservation_id}", &uuid::Uuid::new_v4().to_string());
        let req = app.client.request(
            method.to_uppercase().parse().expect("method"),
            app.url(&concrete),
        );
        let (status, v) = body(req.send().await.expect("send")).await;
        assert!(
            !(status == 404 && v["error"]["code"] == "not_found"),
            "{method} {path} is documented but not routed"
        );
    }
    for schema in ["SaleView", "ReservationView", "ErrorBody", "SaleInput"] {
        assert!(
            doc["components"]["schemas"].get(schema).is_some(),
            "schema {schema} missing"
        );
    }
}
