//! The reservation endpoints: reserve (with Idempotency-Keys), get,
//! confirm, cancel, extend, and every error code they answer.

use std::time::Duration;

use serde_json::json;

use crate::support::*;

/// A buyer id may hold `:` and so may an Idempotency-Key: buyer `victim:b`
/// with key `cart1` and buyer `victim` with key `b:cart1` are two buyers'
/// two keys, never one (the attack replayed the other buyer's hold,
/// relabelled as the attacker's).
#[tokio::test]
async fn idempotency_keys_never_cross_buyers_whatever_their_colons() {
    let app = spawn_app().await;
    let id = app.sale(10, 2, 60).await;
    let (s, first) = app.reserve(&id, "victim:b", 1, Some("cart1")).await;
    assert_eq!(s, 201, "{first}");
    let (s, other) = app.reserve(&id, "victim", 1, Some("b:cart1")).await;
    assert_eq!(s, 201, "another buyer's key must not replay: {other}");
    assert_ne!(rid(&other), rid(&first));
    assert_eq!(other["user_id"], "victim");
    // Each buyer still replays its own.
    let (s, again) = app.reserve(&id, "victim", 1, Some("b:cart1")).await;
    assert_eq!((s, rid(&again)), (200, rid(&other)));
    let (s, again) = app.reserve(&id, "victim:b", 1, Some("cart1")).await;
    assert_eq!((s, rid(&again)), (200, rid(&first)));
    let (st, sold, held, _) = counters(&app.view(&id).await);
    assert_eq!((st, sold, held), (10, 0, 2));
}

#[tokio::test]
async fn reserve_error_codes() {
    let app = spawn_app().await;
    let id = app.sale(3, 2, 60).await;
    // 201 then a replay (200 + header) with the same key and body.
    let keyed = || reserve_req(&app, &id, "ann").header("Idempotency-Key", "k-1");
    let r = keyed().send().await.expect("reserve");
    assert_eq!(r.status().as_u16(), 201);
    let first = r.json::<serde_json::Value>().await.expect("json");
    assert_eq!(
        (
            first["status"].as_str(),
            first["quantity"].as_u64(),
            first["user_id"].as_str()
        ),
        (Some("held"), Some(1), Some("ann"))
    );
    assert!(first["expires_at"].is_string());
    let r = keyed().send().await.expect("reserve");
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(
        r.headers()
            .get("Idempotent-Replayed")
            .and_then(|v| v.to_str().ok()),
        Some("true")
    );
    let replay = r.json::<serde_json::Value>().await.expect("json");
    assert_eq!(replay["reservation_id"], first["reservation_id"]);
    // 422: same key, other body.
    let (s, v) = app.reserve(&id, "ann", 2, Some("k-1")).await;
    assert_eq!((s, error_code(&v)), (422, "idempotency_key_reused"));
    // 400: zero, negative, over the cap, bad key, not JSON.
    for bad in [
        json!({"quantity": 0}),
        json!({"quantity": -1}),
        json!({"quantity": 3}),
        json!({"quantity": "1"}),
    ] {
        let r = app
            .client
            .post(app.url(&format!("/v1/sales/{id}/reservations")))
            .bearer_auth(token("ann"))
            .json(&bad)
            .send()
            .await
            .expect("reserve");
        let (s, v) = body(r).await;
        assert_eq!((s, error_code(&v)), (400, "invalid_request"), "{bad}");
    }
    let (s, v) = app.reserve(&id, "ann", 1, Some("bad key!")).await;
    assert_eq!((s, error_code(&v)), (400, "invalid_request"));
    // 401: no token, garbage token.
    let r = app
        .client
        .post(app.url(&format!("/v1/sales/{id}/reservations")))
        .json(&json!({"quantity": 1}))
        .send()
        .await
        .expect("reserve");
    assert_eq!(body(r).await.0, 401);
    let r = app
        .client
        .post(app.url(&format!("/v1/sales/{id}/reservations")))
        .bearer_auth("garbage")
        .json(&json!({"quantity": 1}))
        .send()
        .await
        .expect("reserve");
    assert_eq!(body(r).await.0, 401);
    // 404 unknown sale.
    let (s, v) = app.reserve("no-such-sale", "ann", 1, None).await;
    assert_eq!((s, error_code(&v)), (404, "sale_not_found"));
    // 409 user_limit_exceeded (ann holds 1, cap 2, asks 2), then sold_out.
    let (s, v) = app.reserve(&id, "ann", 2, None).await;
    assert_eq!((s, error_code(&v)), (409, "user_limit_exceeded"), "{v}");
    assert_eq!(app.reserve(&id, "bob", 2, None).await.0, 201);
    let (s, v) = app.reserve(&id, "cid", 1, None).await;
    assert_eq!((s, error_code(&v)), (409, "sold_out"));
    assert_eq!(v["error"]["details"]["available"], 0);
    // 409 sale_not_started, 410 sale_ended.
    let later = unique_sale();
    let starts = chrono::Utc::now() + chrono::Duration::hours(1);
    assert_eq!(
        app.put_sale(
            &later,
            json!({"stock": 1, "per_user_limit": 1, "starts_at": starts})
        )
        .await
        .0,
        201
    );
    let (s, v) = app.reserve(&later, "ann", 1, None).await;
    assert_eq!((s, error_code(&v)), (409, "sale_not_started"));
    assert_eq!(app.view(&later).await["state"], "scheduled");
    let over = unique_sale();
    let ended = chrono::Utc::now() - chrono::Duration::minutes(1);
    assert_eq!(app.put_sale(&over, json!({"stock": 1, "per_user_limit": 1, "starts_at": ended - chrono::Duration::hours(1), "ends_at": ended})).await.0, 201);
    let (s, v) = app.reserve(&over, "ann", 1, None).await;
    assert_eq!((s, error_code(&v)), (410, "sale_ended"));
    assert_eq!(app.view(&over).await["state"], "ended");
}

#[tokio::test]
async fn reservation_endpoints_and_their_errors() {
    let app = spawn_app().await;
    let id = app.sale(10, 5, 60).await;
    let rid = |v: &serde_json::Value| v["reservation_id"].as_str().expect("rid").to_string();
    let (_, a) = app.reserve(&id, "ann", 1, None).await;
    let a = rid(&a);
    // GET: owner 200, admin 200, other buyer 403, unknown 404, bad id 400.
    let (s, v) = app.get_reservation(&id, &a, Some("ann")).await;
    assert_eq!((s, v["status"].as_str()), (200, Some("held")));
    assert_eq!(app.get_reservation(&id, &a, None).await.0, 200);
    let (s, v) = app.get_reservation(&id, &a, Some("eve")).await;
    assert_eq!((s, error_code(&v)), (403, "forbidden"));
    let (s, v) = app
        .get_reservation(&id, &uuid::Uuid::new_v4().to_string(), Some("ann"))
        .await;
    assert_eq!((s, error_code(&v)), (404, "reservation_not_found"));
    let (s, v) = app.get_reservation(&id, "not-a-uuid", Some("ann")).await;
    assert_eq!((s, error_code(&v)), (400, "invalid_request"));
    // Another buyer cannot confirm, cancel or extend it.
    for action in ["confirm", "cancel", "extend"] {
        let (s, v) = app.act(&id, &a, action, Some("eve")).await;
        assert_eq!((s, error_code(&v)), (403, "forbidden"), "{action}");
        let (s, v) = app
            .act(&id, &uuid::Uuid::new_v4().to_string(), action, Some("ann"))
            .await;
        assert_eq!(
            (s, error_code(&v)),
            (404, "reservation_not_found"),
            "{action}"
        );
    }
    // extend: 200 with a later expires_at (up to max_hold_secs).
    let before = app.get_reservation(&id, &a, Some("ann")).await.1["expires_at"]
        .as_str()
        .expect("t")
        .to_string();
    tokio::time::sleep(Duration::from_millis(20)).await;
    let (s, v) = app.act(&id, &a, "extend", Some("ann")).await;
    assert_eq!(s, 200, "{v}");
    assert!(v["expires_at"].as_str().expect("t") > before.as_str());
    // confirm by the admin (payment service): 200, again 200.
    let (s, v) = app.act(&id, &a, "confirm", None).await;
    assert_eq!((s, v["status"].as_str()), (200, Some("confirmed")), "{v}");
    let (s, v2) = app.act(&id, &a, "confirm", Some("ann")).await;
    assert_eq!((s, &v2["confirmed_at"]), (200, &v["confirmed_at"]));
    // after confirm: cancel 409, extend 409.
    let (s, v) = app.act(&id, &a, "cancel", Some("ann")).await;
    assert_eq!((s, error_code(&v)), (409, "reservation_confirmed"));
    let (s, v) = app.act(&id, &a, "extend", Some("ann")).await;
    assert_eq!((s, error_code(&v)), (409, "reservation_confirmed"));
    // cancel: 200, again 200; then confirm 409, extend 409.
    let (_, b) = app.reserve(&id, "ann", 1, None).await;
    let b = rid(&b);
    assert_eq!(app.act(&id, &b, "cancel", Some("ann")).await.0, 200);
    let (s, v) = app.act(&id, &b, "cancel", Some("ann")).await;
    assert_eq!((s, v["status"].as_str()), (200, Some("cancelled")));
    let (s, v) = app.act(&id, &b, "confirm", Some("ann")).await;
    assert_eq!((s, error_code(&v)), (409, "reservation_cancelled"));
    let (s, v) = app.act(&id, &b, "extend", Some("ann")).await;
    assert_eq!((s, error_code(&v)), (409, "reservation_cancelled"));
    let v = app.view(&id).await;
    assert_eq!(
        (
            v["sold"].as_i64(),
            v["held"].as_i64(),
            v["available"].as_i64()
        ),
        (Some(1), Some(0), Some(9))
    );
}

#[tokio::test]
async fn hold_limit_and_expired_reservations() {
    let app = Spawn::new().await.no_sweeper().start().await;
    let id = unique_sale();
    assert_eq!(
        app.put_sale(
            &id,
            json!({"stock": 5, "per_user_limit": 5, "hold_ttl_secs": 1, "max_hold_secs": 2})
        )
        .await
        .0,
        201
    );
    let (_, v) = app.reserve(&id, "ann", 1, None).await;
    let a = v["reservation_id"].as_str().expect("rid").to_string();
    // max hold 2 s from the reservation: one extension of 5 s is capped, the next refused.
    let r = app
        .client
        .post(app.url(&format!("/v1/sales/{id}/reservations/{a}/extend")))
        .bearer_auth(token("ann"))
        .json(&json!({"extend_secs": 5}))
        .send()
        .await
        .expect("extend");
    assert_eq!(body(r).await.0, 200);
    let (s, v) = app.act(&id, &a, "extend", Some("ann")).await;
    assert_eq!((s, error_code(&v)), (409, "hold_limit_reached"), "{v}");
    let r = app
        .client
        .post(app.url(&format!("/v1/sales/{id}/reservations/{a}/extend")))
        .bearer_auth(token("ann"))
        .json(&json!({"extend_secs": 0}))
        .send()
        .await
        .expect("extend");
    assert_eq!(body(r).await.0, 400);
    // Past its deadline: confirm 410, cancel 410, extend 410, GET says expired.
    let (_, v) = app.reserve(&id, "bob", 1, None).await;
    let b = v["reservation_id"].as_str().expect("rid").to_string();
    tokio::time::sleep(Duration::from_millis(2300)).await;
    let (s, v) = app.act(&id, &a, "confirm", Some("ann")).await;
    assert_eq!((s, error_code(&v)), (410, "reservation_expired"));
    let (s, v) = app.act(&id, &b, "cancel", Some("bob")).await;
    assert_eq!((s, error_code(&v)), (410, "reservation_expired"));
    let (s, v) = app.act(&id, &b, "extend", Some("bob")).await;
    assert_eq!((s, error_code(&v)), (410, "reservation_expired"));
    assert_eq!(
        app.get_reservation(&id, &b, Some("bob")).await.1["status"],
        "expired"
    );
}
