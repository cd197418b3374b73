//! `/openapi.json` describes exactly the routes the app serves.

use std::collections::BTreeSet;

use crate::support::*;

#[tokio::test]
async fn the_document_lists_every_route_the_app_serves() {
    let app = spawn_app().await;
    let r = app.get("/openapi.json").await;
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

/// Every `$ref` in `v`, e.g. `#/components/schemas/SaleView`.
fn refs(v: &serde_json::Value, out: &mut Vec<String>) {
    match v {
        serde_json::Value::Object(m) => {
            for (k, v) in m {
                match (k.as_str(), v) {
                    ("$ref", serde_json::Value::String(r)) => out.push(r.clone()),
                    _ => refs(v, out),
                }
            }
        }
        serde_json::Value::Array(a) => a.iter().for_each(|v| refs(v, out)),
        _ => {}
    }
}

/// The served document is a valid OpenAPI 3 description as client
/// generators need it: every operation has an operationId, unique across
/// the document (generators name methods by it: `get` twice, for the sale
/// and the reservation, broke them), every `$ref` resolves, every path
/// parameter is declared.
#[tokio::test]
async fn the_document_is_valid_for_client_generators() {
    let app = spawn_app().await;
    let doc: serde_json::Value = app.get("/openapi.json").await.json().await.expect("json");
    assert!(doc["info"]["title"].is_string() && doc["info"]["version"].is_string());
    let mut ids = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for (method, op) in item.as_object().expect("item") {
            let id = op["operationId"]
                .as_str()
                .unwrap_or_else(|| panic!("{method} {path} has no operationId"));
            assert!(ids.insert(id.to_string()), "operationId {id} used twice");
            assert!(
                op["responses"].as_object().is_some_and(|r| !r.is_empty()),
                "{method} {path} has no responses"
            );
            let declared: BTreeSet<&str> = op["parameters"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|p| p["in"] == "path")
                .filter_map(|p| p["name"].as_str())
                .collect();
            for segment in path.split('/') {
                if let Some(name) = segment.strip_prefix('{').and_then(|s| s.strip_suffix('}')) {
                    assert!(
                        declared.contains(name),
                        "{method} {path}: {name} undeclared"
                    );
                }
            }
        }
    }
    let mut all = Vec::new();
    refs(&doc, &mut all);
    assert!(!all.is_empty());
    for r in all {
        let pointer = r.strip_prefix('#').expect("a local $ref");
        assert!(doc.pointer(pointer).is_some(), "{r} does not resolve");
    }
}
