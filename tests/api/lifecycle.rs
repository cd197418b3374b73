//! Confirm, cancel, expiry: units move exactly once.

use std::time::Duration;

use crate::support::*;

#[tokio::test]
async fn confirm_cancel_and_double_confirm() {
    let app = spawn_app().await;
    let sale = app.sale(5, 2, 60).await;
    let (_, a) = app.reserve(&sale, "ann", 2, None).await;
    let (_, b) = app.reserve(&sale, "bob", 1, None).await;
    let (a, b) = (rid(&a), rid(&b));
    assert_eq!(app.act(&sale, &a, "confirm", Some("ann")).await.0, 200);
    assert_eq!(
        app.act(&sale, &a, "confirm", Some("ann")).await.0,
        200,
        "double confirm is idempotent"
    );
    assert_eq!(app.act(&sale, &b, "cancel", Some("bob")).await.0, 200);
    let v = app.view(&sale).await;
    assert_eq!(
        (
            v["sold"].as_i64(),
            v["held"].as_i64(),
            v["available"].as_i64()
        ),
        (Some(2), Some(0), Some(3))
    );
    // ann bought her cap: no more; bob's cancel gave his unit back to him too.
    let (s, v) = app.reserve(&sale, "ann", 1, None).await;
    assert_eq!((s, error_code(&v)), (409, "user_limit_exceeded"));
    assert_eq!(app.reserve(&sale, "bob", 2, None).await.0, 201);
    // The default durability: the order row is committed before the 200.
    let (n, q): (i64, i64) = sqlx::query_as(
        "SELECT count(*), coalesce(sum(quantity), 0)::int8 FROM orders WHERE sale_id = $1",
    )
    .bind(&sale)
    .fetch_one(&app.pool)
    .await
    .expect("orders");
    assert_eq!((n, q), (1, 2));
}

/// A 1 s hold: confirm after the TTL is 410 and the units come back with no
/// sweeper running (lazily, inside the scripts).
#[tokio::test]
async fn expiry_gives_units_back_without_a_sweeper() {
    let app = Spawn::new().await.no_sweeper().start().await;
    let sale = app.sale(2, 2, 1).await;
    let (s, a) = app.reserve(&sale, "ann", 2, None).await;
    assert_eq!(s, 201);
    let (s, v) = app.reserve(&sale, "bob", 1, None).await;
    assert_eq!((s, error_code(&v)), (409, "sold_out"));
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let v = app.view(&sale).await;
    assert_eq!(
        (v["held"].as_i64(), v["available"].as_i64()),
        (Some(0), Some(2)),
        "{v}"
    );
    let (s, v) = app.act(&sale, &rid(&a), "confirm", Some("ann")).await;
    assert_eq!((s, error_code(&v)), (410, "reservation_expired"));
    assert_eq!(app.reserve(&sale, "bob", 1, None).await.0, 201);
    // ann's expired hold no longer counts against her cap.
    assert_eq!(app.reserve(&sale, "ann", 1, None).await.0, 201);
}

/// Confirm after the TTL fails even when no read swept the sale first.
#[tokio::test]
async fn confirm_after_ttl_is_gone_even_before_any_sweep() {
    let app = Spawn::new().await.no_sweeper().start().await;
    let sale = app.sale(1, 1, 1).await;
    let (_, a) = app.reserve(&sale, "ann", 1, None).await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let (s, v) = app.act(&sale, &rid(&a), "confirm", Some("ann")).await;
    assert_eq!((s, error_code(&v)), (410, "reservation_expired"));
    let v = app.view(&sale).await;
    assert_eq!((v["sold"].as_i64(), v["held"].as_i64()), (Some(0), Some(0)));
}

/// The background sweeper gives units back with no request touching the sale.
#[tokio::test]
async fn the_sweeper_releases_expired_holds() {
    let app = spawn_app().await;
    let sale = app.sale(3, 3, 1).await;
    assert_eq!(app.reserve(&sale, "ann", 3, None).await.0, 201);
    // Read the raw counter (not the sweeping view) until the sweeper acted.
    let mut conn = app.redis().await;
    let key = format!("{}:{{{sale}}}:sale", app.prefix);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let held: i64 = redis::cmd("HGET")
            .arg(&key)
            .arg("held")
            .query_async(&mut conn)
            .await
            .expect("hget");
        if held == 0 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "sweeper never released the hold"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
