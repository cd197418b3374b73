//! Redis loses its data: flashgate rebuilds each sale from Postgres before
//! serving it, and fails closed while it cannot.

use std::time::Duration;

use serde_json::json;

use crate::support::proxy::FaultProxy;
use crate::support::*;

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
    let proxy = FaultProxy::postgres().await;
    let app = Spawn::via_pg_proxy(&proxy)
        .await
        .with(|s| s.db_timeout = Duration::from_millis(500))
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

/// Orders in Postgres for a sale: the units, and `sales.sold_count`.
async fn recorded_units(app: &TestApp, sale: &str) -> (i64, i64) {
    let units = orders(&app.pool, sale).await.values().map(|(_, q)| q).sum();
    (units, sold_count(&app.pool, sale).await)
}

/// The attack (issue 12.1): a confirm whose Postgres write waits on a lock
/// answers 503; Redis is wiped before the retry; another buyer reserves
/// the rebuilt sale; the lock goes. Before the fix the write that timed
/// out (or the write-behind's copy of it) committed after the rebuild
/// had offered the unit again: 4 units in `orders` against a stock of 2.
/// Now every order write holds the sale's row and is recorded only in the
/// epoch its confirm ran in, and the rebuild takes the row exclusively: the
/// late write either lands before the rebuild reads, or never.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_confirm_that_timed_out_never_oversells_after_a_redis_wipe() {
    let app = Spawn::new()
        .await
        .with(|s| {
            s.confirm_timeout = Duration::from_millis(800);
            s.db_timeout = Duration::from_millis(1000);
        })
        .start()
        .await;
    let sale = app.sale(2, 2, 120).await;
    let (s, a) = app.reserve(&sale, "ann", 2, None).await;
    assert_eq!(s, 201, "{a}");

    let mut lock = app.pool.begin().await.expect("begin");
    sqlx::query("LOCK TABLE orders IN SHARE MODE")
        .execute(&mut *lock)
        .await
        .expect("lock");
    let c = timed(
        "confirm under the lock",
        confirm_req(&app, &sale, &rid(&a), "ann"),
    )
    .await;
    assert_eq!(
        (c.status, error_code(&c.body)),
        (503, "unavailable"),
        "{}",
        c.body
    );

    app.wipe_redis().await;
    // The attack's buyer B, while the lock still holds: 201 on a state
    // rebuilt without ann's units was the bug's first step; now the
    // rebuild waits for the write in flight (503) or, if it got the row
    // first, fences that write out.
    let mut bob = None;
    let (s, v) = app.reserve(&sale, "bob", 2, None).await;
    match s {
        201 => bob = Some(rid(&v)),
        503 => assert_eq!(error_code(&v), "unavailable"),
        _ => assert_eq!((s, error_code(&v)), (409, "sold_out"), "{v}"),
    }
    lock.commit().await.expect("release the lock");

    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while bob.is_none() {
        let (s, v) = app.reserve(&sale, "bob", 2, None).await;
        match s {
            201 => bob = Some(rid(&v)),
            409 => {
                assert_eq!(error_code(&v), "sold_out", "{v}");
                break;
            }
            _ => assert_eq!((s, error_code(&v)), (503, "unavailable"), "{v}"),
        }
        assert!(tokio::time::Instant::now() < deadline, "never rebuilt");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    if let Some(b) = &bob {
        let (s, v) = app.act(&sale, b, "confirm", Some("bob")).await;
        assert_eq!(s, 200, "{v}");
    }
    app.drained(Duration::from_secs(20)).await;

    // Ann's retry answers what Postgres holds: her order, or a hold that
    // was lost with Redis' data and can no longer be recorded.
    let (s, v) = app.act(&sale, &rid(&a), "confirm", Some("ann")).await;
    let ann_has_order: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM orders WHERE reservation_id = $1::uuid)")
            .bind(rid(&a))
            .fetch_one(&app.pool)
            .await
            .expect("ann's order");
    if ann_has_order {
        assert_eq!((s, v["status"].as_str()), (200, Some("confirmed")), "{v}");
    } else {
        assert!(
            matches!(
                (s, error_code(&v)),
                (404, "reservation_not_found") | (410, "reservation_expired")
            ),
            "{s} {v}"
        );
    }
    assert_ne!(ann_has_order, bob.is_some(), "exactly one of them bought");

    let (orders, sold_count) = recorded_units(&app, &sale).await;
    assert_eq!((orders, sold_count), (2, 2), "never more than the stock");
    let (st, sold, held, _) = counters(&app.view(&sale).await);
    assert_eq!((st, sold, held), (2, 2, 0));
    let id = flashgate::ids::SaleId::parse(&sale).expect("id");
    let report = flashgate::reconcile::reconcile(
        &app.service,
        Some(&id),
        &flashgate::reconcile::Options::default(),
    )
    .await
    .expect("reconcile");
    assert!(report.incidents.is_empty(), "{:?}", report.incidents);
}

/// Issue 12.2: after Redis loses its data the sale's stream and its
/// consumer group are gone. Whichever stream command notices first, the
/// worker creates the group again and goes on: later confirms reach
/// Postgres (with `redis` durability the worker is their only writer), and
/// so do their stock movements.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_wipe_the_write_behind_goes_on_writing() {
    let app = Spawn::new()
        .await
        .durability(flashgate::config::ConfirmDurability::Redis)
        .start()
        .await;
    let sale = app.sale(10, 2, 60).await;
    let other = app.sale(10, 2, 60).await;
    for (s, user) in [(&sale, "ann"), (&other, "ann")] {
        let (_, v) = app.reserve(s, user, 1, None).await;
        assert_eq!(app.act(s, &rid(&v), "confirm", Some(user)).await.0, 200);
    }
    app.drained(Duration::from_secs(10)).await;

    app.wipe_redis().await;
    // Let the worker hit the missing group (its claim runs first, every
    // pass, with the tests' short claim idle time).
    tokio::time::sleep(Duration::from_millis(700)).await;
    let mut after = Vec::new();
    for (s, user) in [(&sale, "bob"), (&other, "bob"), (&sale, "cid")] {
        let (st, v) = app.reserve(s, user, 1, None).await;
        assert_eq!(st, 201, "{v}");
        assert_eq!(app.act(s, &rid(&v), "confirm", Some(user)).await.0, 200);
        after.push(rid(&v));
    }
    app.drained(Duration::from_secs(15)).await;
    let n: i64 =
        sqlx::query_scalar("SELECT count(*) FROM orders WHERE reservation_id::text = ANY($1)")
            .bind(&after)
            .fetch_one(&app.pool)
            .await
            .expect("orders");
    assert_eq!(n, 3, "every confirm after the wipe reached Postgres");
    let moved: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM stock_movements WHERE reservation_id::text = ANY($1) AND kind = 'confirmed'",
    )
    .bind(&after)
    .fetch_one(&app.pool)
    .await
    .expect("movements");
    assert_eq!(moved, 3, "and their stock movements");
    for s in [&sale, &other] {
        let (orders, sold_count) = recorded_units(&app, s).await;
        assert_eq!(orders, sold_count);
    }
}
