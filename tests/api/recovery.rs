//! Redis loses its data: flashgate rebuilds each sale from Postgres before
//! serving it, and fails closed while it cannot.

use std::time::Duration;

use serde_json::json;

use crate::helpers::*;

#[tokio::test]
async fn a_wiped_sale_is_rebuilt_with_its_sold_count_and_caps() {
    let app = spawn_app().await;
    let sale = app.sale(5, 2, 60).await;
    let (_, a) = app.reserve(&sale, "ann", 2, None).await;
    assert_eq!(
        app.act(&sale, &rid(&a), "confirm", Some("ann")).await.0,
        200
    );
    let (_, b) = app.reserve(&sale, "bob", 1, None).await;
    assert_eq!(
        app.act(&sale, &rid(&b), "confirm", Some("bob")).await.0,
        200
    );
    let (s, _) = app.reserve(&sale, "cid", 1, None).await; // a hold only Redis knew
    assert_eq!(s, 201);
    app.wipe_redis().await;
    // Never served as full stock: sold comes back from Postgres, the hold is gone.
    let v = app.view(&sale).await;
    assert_eq!(
        (
            v["stock"].as_i64(),
            v["sold"].as_i64(),
            v["held"].as_i64(),
            v["available"].as_i64()
        ),
        (Some(5), Some(3), Some(0), Some(2)),
        "{v}"
    );
    // The cap holds across the loss.
    let (s, v) = app.reserve(&sale, "ann", 1, None).await;
    assert_eq!((s, error_code(&v)), (409, "user_limit_exceeded"));
    assert_eq!(app.reserve(&sale, "bob", 1, None).await.0, 201);
    assert_eq!(app.reserve(&sale, "cid", 1, None).await.0, 201);
    let (s, v) = app.reserve(&sale, "dan", 1, None).await;
    assert_eq!((s, error_code(&v)), (409, "sold_out"));
    // An update after a wipe keeps what was sold.
    app.wipe_redis().await;
    let (s, v) = app
        .put_sale(&sale, json!({"stock": 6, "per_user_limit": 2}))
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(
        (v["sold"].as_i64(), v["available"].as_i64()),
        (Some(3), Some(3))
    );
}

#[tokio::test]
async fn a_wiped_sale_fails_closed_while_postgres_is_unreachable() {
    let proxy = FaultProxy::start("127.0.0.1:5432").await;
    let db = fresh_database().await;
    let name = db.rsplit('/').next().expect("db name").to_string();
    let via_proxy = format!("postgres://postgres@127.0.0.1:{}/{name}", proxy.port);
    let app = Spawn::new()
        .await
        .with(|s| {
            s.database_url = flashgate::config::Secret::new(via_proxy.clone());
            s.db_timeout = Duration::from_millis(500);
        })
        .start()
        .await;
    let sale = app.sale(3, 3, 60).await;
    let (_, a) = app.reserve(&sale, "ann", 3, None).await;
    assert_eq!(
        app.act(&sale, &rid(&a), "confirm", Some("ann")).await.0,
        200
    );
    proxy.cut();
    app.wipe_redis().await;
    for _ in 0..3 {
        let (s, v) = app.reserve(&sale, "bob", 1, None).await;
        assert_eq!(
            (s, error_code(&v)),
            (503, "unavailable"),
            "a wiped sale must not be sold again: {v}"
        );
    }
    let (s, v) = body(
        app.client
            .get(app.url(&format!("/v1/sales/{sale}")))
            .send()
            .await
            .expect("get"),
    )
    .await;
    assert_eq!((s, error_code(&v)), (503, "unavailable"));
    proxy.restore();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (s, v) = app.reserve(&sale, "bob", 1, None).await;
        if s != 503 {
            assert_eq!(
                (s, error_code(&v)),
                (409, "sold_out"),
                "rebuilt with its 3 sold units"
            );
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "never recovered");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Redis flushed after confirms: a concurrent burst on the rebuilt sale sells
/// exactly the remaining stock, and the buyer who bought up to the cap is
/// refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_flush_a_burst_sells_exactly_the_remaining_stock() {
    let app = std::sync::Arc::new(spawn_app().await);
    let sale = app.sale(10, 2, 60).await;
    for user in ["ann", "bob"] {
        let (_, v) = app.reserve(&sale, user, 2, None).await;
        assert_eq!(app.act(&sale, &rid(&v), "confirm", Some(user)).await.0, 200);
    }
    app.wipe_redis().await;
    let buyers: Vec<String> = std::iter::once("ann".to_string())
        .chain((0..40).map(|i| format!("late-{i}")))
        .collect();
    let barrier = std::sync::Arc::new(tokio::sync::Barrier::new(buyers.len()));
    let tasks = buyers.into_iter().map(|user| {
        let (app, sale, barrier) = (app.clone(), sale.clone(), barrier.clone());
        tokio::spawn(async move {
            barrier.wait().await;
            (user.clone(), app.reserve(&sale, &user, 1, None).await)
        })
    });
    let mut held = 0;
    for t in futures_util::future::join_all(tasks).await {
        let (user, (s, v)) = t.expect("task");
        match (user.as_str(), s) {
            ("ann", _) => assert_eq!(
                (s, error_code(&v)),
                (409, "user_limit_exceeded"),
                "ann bought her cap before the flush"
            ),
            (_, 201) => held += 1,
            (_, 409) => assert_eq!(error_code(&v), "sold_out"),
            // The first requests may find the sale being rebuilt.
            (_, 503) => assert_eq!(error_code(&v), "unavailable"),
            other => panic!("unexpected {other:?}: {v}"),
        }
    }
    let v = app.view(&sale).await;
    assert_eq!(
        (
            v["sold"].as_i64(),
            v["held"].as_i64(),
            v["available"].as_i64()
        ),
        (Some(4), Some(held), Some(6 - held))
    );
    // Whatever 503s the rebuild caused, the rest of the stock is still for sale.
    let mut n = 0;
    while app.view(&sale).await["available"].as_i64() > Some(0) {
        assert_eq!(
            app.reserve(&sale, &format!("later-{n}"), 1, None).await.0,
            201
        );
        n += 1;
    }
    assert_eq!(held + n, 6, "exactly the remaining stock was sold");
}
