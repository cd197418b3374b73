//! Sale configuration and extend bodies: wrong types, out-of-range values,
//! unknown fields.

use serde_json::{json, Value};

use super::{run, sale_held_by_ann, spawn, Case, INVALID, TOO_LARGE};
use crate::support::*;

/// Sale configurations the admin route refuses (400 `invalid_request`).
fn bad_sales() -> Vec<(&'static str, Value)> {
    vec![
        ("stock missing", json!({"per_user_limit": 1})),
        ("per_user_limit missing", json!({"stock": 1})),
        (
            "stock as string",
            json!({"stock": "5", "per_user_limit": 1}),
        ),
        ("stock float", json!({"stock": 5.5, "per_user_limit": 1})),
        ("stock negative", json!({"stock": -1, "per_user_limit": 1})),
        (
            "stock over the maximum",
            json!({"stock": 1_000_000_001i64, "per_user_limit": 1}),
        ),
        (
            "stock i64 overflow",
            json!({"stock": 1e30, "per_user_limit": 1}),
        ),
        (
            "per_user_limit zero",
            json!({"stock": 5, "per_user_limit": 0}),
        ),
        (
            "per_user_limit negative",
            json!({"stock": 5, "per_user_limit": -2}),
        ),
        (
            "per_user_limit over the maximum",
            json!({"stock": 5, "per_user_limit": 10_001}),
        ),
        (
            "per_user_limit u32 overflow",
            json!({"stock": 5, "per_user_limit": 4_294_967_296i64}),
        ),
        (
            "hold_ttl_secs zero",
            json!({"stock": 5, "per_user_limit": 1, "hold_ttl_secs": 0}),
        ),
        (
            "hold_ttl_secs over a week",
            json!({"stock": 5, "per_user_limit": 1, "hold_ttl_secs": 604_801}),
        ),
        (
            "max_hold_secs below hold_ttl_secs",
            json!({"stock": 5, "per_user_limit": 1, "hold_ttl_secs": 60, "max_hold_secs": 59}),
        ),
        (
            "starts_at not a time",
            json!({"stock": 5, "per_user_limit": 1, "starts_at": "yesterday"}),
        ),
        (
            "starts_at a number",
            json!({"stock": 5, "per_user_limit": 1, "starts_at": 1_700_000_000}),
        ),
        (
            "ends_at before starts_at",
            json!({"stock": 5, "per_user_limit": 1, "starts_at": "2030-01-02T00:00:00Z", "ends_at": "2030-01-01T00:00:00Z"}),
        ),
        (
            "product_id empty",
            json!({"stock": 5, "per_user_limit": 1, "product_id": ""}),
        ),
        (
            "product_id 129 chars",
            json!({"stock": 5, "per_user_limit": 1, "product_id": "p".repeat(129)}),
        ),
        (
            "product_id control char",
            json!({"stock": 5, "per_user_limit": 1, "product_id": "a\u{0007}b"}),
        ),
        (
            "unknown field sold",
            json!({"stock": 5, "per_user_limit": 1, "sold": 0}),
        ),
        (
            "unknown field held",
            json!({"stock": 5, "per_user_limit": 1, "held": 3}),
        ),
        ("body an array", json!([5, 1])),
        ("body null", Value::Null),
    ]
}

/// Extend bodies refused (the body is optional, but when present it must
/// be right): 400 `invalid_request`.
const BAD_EXTENDS: &[(&str, &[u8])] = &[
    ("extend_secs zero", br#"{"extend_secs":0}"#),
    ("extend_secs negative", br#"{"extend_secs":-5}"#),
    ("extend_secs string", br#"{"extend_secs":"5"}"#),
    ("extend_secs float", br#"{"extend_secs":1.5}"#),
    ("extend_secs overflow", br#"{"extend_secs":4294967296}"#),
    (
        "extend unknown field",
        br#"{"extend_secs":5,"expires_at":"2099-01-01T00:00:00Z"}"#,
    ),
    ("extend truncated", br#"{"extend_secs":"#),
    ("extend not JSON", b"five seconds"),
    ("extend invalid UTF-8", b"{\"extend_secs\":\"\xff\"}"),
];

/// `n` nested empty arrays: 2n bytes of valid JSON nobody should parse.
fn nested(n: usize) -> Vec<u8> {
    format!("{}{}", "[".repeat(n), "]".repeat(n)).into_bytes()
}

/// Sale configuration and extend bodies: wrong types, out-of-range values,
/// unknown fields; the sale keeps its configuration.
#[tokio::test]
async fn bad_admin_and_extend_bodies() {
    let app = spawn().await;
    let (sale, rid) = sale_held_by_ann(&app).await;
    // The sale as a refused request must leave it (the read's clock aside).
    let seen = |mut v: serde_json::Value| {
        v["server_time"].take();
        v
    };
    let before = seen(app.view(&sale).await);
    let put = |b: Vec<u8>| {
        app.client
            .put(app.url(&format!("/v1/sales/{sale}")))
            .bearer_auth(ADMIN)
            .header("content-type", "application/json")
            .body(b)
    };
    let extend_url = app.url(&format!("/v1/sales/{sale}/reservations/{rid}/extend"));
    let extend = |b: Vec<u8>| {
        app.client
            .post(&extend_url)
            .bearer_auth(token("ann"))
            .header("content-type", "application/json")
            .body(b)
    };

    let mut cases = Vec::new();
    for (label, b) in bad_sales() {
        let b = serde_json::to_vec(&b).expect("json");
        cases.push(Case::http(format!("PUT {label}"), put(b), INVALID));
    }
    cases.push(Case::http(
        "PUT truncated",
        put(br#"{"stock":5,"#.to_vec()),
        INVALID,
    ));
    cases.push(Case::http(
        "PUT 10,000 nested arrays",
        put(nested(10_000)),
        TOO_LARGE,
    ));
    for (label, b) in BAD_EXTENDS {
        cases.push(Case::http(*label, extend(b.to_vec()), INVALID));
    }
    cases.push(Case::http(
        "extend 10,000 nested arrays",
        extend(nested(10_000)),
        TOO_LARGE,
    ));
    cases.push(Case::http(
        "extend 5,000 nested arrays",
        extend(nested(5_000)),
        INVALID,
    ));
    run(&app, cases).await;
    let after = seen(app.view(&sale).await);
    assert_eq!(after, before, "a refused request changed the sale");
    let (s, v) = app.get_reservation(&sale, &rid, Some("ann")).await;
    assert_eq!((s, v["status"].as_str()), (200, Some("held")), "{v}");
}
