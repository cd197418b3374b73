//! Redis keeps live state, not history (README, Durability): once a
//! confirmed, cancelled or expired reservation's event is committed in
//! Postgres (and an admin cancel's audit row with it), the
//! write-behind drops its record from Redis, and every lookup of it falls
//! back to Postgres with the answer Redis would have given.

use std::time::Duration;

use crate::support::*;

/// Waits until `user`'s hold `rid` has expired and the sweeper gave its
/// units back (the sale holds none).
async fn until_expired_and_swept(app: &TestApp, sale: &str, rid: &str, user: &str) {
    for attempt in 0.. {
        let (s, v) = app.get_reservation(sale, rid, Some(user)).await;
        assert_eq!(s, 200, "{v}");
        if v["status"] == "expired" && app.view(sale).await["held"] == 0 {
            return;
        }
        assert!(attempt < 200, "{user}'s hold never expired: {v}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A confirmed, an expired reservation, one cancelled by its buyer, one
/// by an admin, and one made with an Idempotency-Key, then confirmed.
/// Drained: every record is gone from Redis; GET, confirm, cancel and the
/// idempotent replay answer from Postgres as before; one order each, one
/// audit row.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn final_records_leave_redis_once_in_postgres_and_lookups_fall_back() {
    let app = spawn_app().await;
    let sale = app.sale(10, 1, 1).await;
    let confirmed = app.hold(&sale, "ann", 1).await;
    let expired = app.hold(&sale, "bob", 1).await;
    let cancelled = app.hold(&sale, "cat", 1).await;
    let released = app.hold(&sale, "eve", 1).await;
    let (s, v) = app.reserve(&sale, "dan", 1, Some("cart-dan")).await;
    assert_eq!(s, 201, "{v}");
    let keyed = rid(&v);
    app.confirm(&sale, &confirmed, "ann").await;
    assert_eq!(
        app.act(&sale, &cancelled, "cancel", Some("cat")).await.0,
        200
    );
    assert_eq!(app.act(&sale, &released, "cancel", None).await.0, 200);
    app.confirm(&sale, &keyed, "dan").await;
    // bob's hold expires (1 s), and the sweeper gives it back.
    until_expired_and_swept(&app, &sale, &expired, "bob").await;
    app.drained(Duration::from_secs(30)).await;

    assert!(
        !app.record_exists(&sale, &confirmed).await,
        "confirmed record dropped"
    );
    assert!(
        !app.record_exists(&sale, &keyed).await,
        "confirmed record dropped"
    );
    assert!(
        !app.record_exists(&sale, &expired).await,
        "expired record dropped"
    );
    assert!(
        !app.record_exists(&sale, &cancelled).await,
        "the buyer's cancelled record dropped"
    );
    assert!(
        !app.record_exists(&sale, &released).await,
        "the admin's cancelled record dropped (its audit row is written)"
    );

    let (s, v) = app.get_reservation(&sale, &confirmed, Some("ann")).await;
    assert_eq!((s, v["status"].as_str()), (200, Some("confirmed")), "{v}");
    let (s, v) = app.act(&sale, &confirmed, "confirm", Some("ann")).await;
    assert_eq!((s, v["status"].as_str()), (200, Some("confirmed")), "{v}");
    let (s, v) = app.act(&sale, &confirmed, "cancel", Some("ann")).await;
    assert_eq!((s, error_code(&v)), (409, "reservation_confirmed"), "{v}");
    let (s, v) = app.act(&sale, &confirmed, "extend", Some("ann")).await;
    assert_eq!((s, error_code(&v)), (409, "reservation_confirmed"), "{v}");
    let (s, _) = app.get_reservation(&sale, &confirmed, Some("bob")).await;
    assert_eq!(s, 403, "another buyer's, from Postgres too");

    let (s, v) = app.get_reservation(&sale, &expired, Some("bob")).await;
    assert_eq!((s, v["status"].as_str()), (200, Some("expired")), "{v}");
    let (s, v) = app.act(&sale, &expired, "confirm", Some("bob")).await;
    assert_eq!((s, error_code(&v)), (410, "reservation_expired"), "{v}");
    for action in ["cancel", "extend"] {
        let (s, v) = app.act(&sale, &expired, action, Some("bob")).await;
        assert_eq!(
            (s, error_code(&v)),
            (410, "reservation_expired"),
            "{action}: {v}"
        );
    }

    let (s, v) = app.get_reservation(&sale, &cancelled, Some("cat")).await;
    assert_eq!((s, v["status"].as_str()), (200, Some("cancelled")), "{v}");
    let (s, v) = app.act(&sale, &cancelled, "cancel", Some("cat")).await;
    assert_eq!((s, v["status"].as_str()), (200, Some("cancelled")), "{v}");
    let (s, v) = app.act(&sale, &cancelled, "confirm", Some("cat")).await;
    assert_eq!((s, error_code(&v)), (409, "reservation_cancelled"), "{v}");
    let (s, _) = app.get_reservation(&sale, &cancelled, Some("eve")).await;
    assert_eq!(s, 403, "another buyer's, from Postgres too");
    let (s, v) = app.get_reservation(&sale, &released, None).await;
    assert_eq!((s, v["status"].as_str()), (200, Some("cancelled")), "{v}");
    let (s, v) = app.act(&sale, &released, "cancel", None).await;
    assert_eq!((s, v["status"].as_str()), (200, Some("cancelled")), "{v}");
    let audited: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM admin_actions WHERE action = 'cancel' AND sale_id = $1",
    )
    .bind(&sale)
    .fetch_one(&app.pool)
    .await
    .expect("count");
    assert_eq!(audited, 1, "the admin's cancel, audited once");

    let (s, v) = app.reserve(&sale, "dan", 1, Some("cart-dan")).await;
    assert_eq!(s, 200, "the idempotent replay: {v}");
    assert_eq!(
        (rid(&v), v["status"].as_str()),
        (keyed.clone(), Some("confirmed")),
        "{v}"
    );

    let rows = orders(&app.pool, &sale).await;
    assert_eq!(rows.len(), 2, "one order per confirm: {rows:?}");
    assert_eq!(sold_count(&app.pool, &sale).await, 2);
}

/// A cart's record, once dropped, reads back from Postgres with its lines:
/// a confirmed cart's from `order_items`, an expired one's from its
/// movements (one per line, summed into the quantity).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_cart_reads_back_with_its_lines() {
    let app = spawn_app().await;
    let sale = app
        .items_sale(
            serde_json::json!([{"sku": "S", "stock": 5}, {"sku": "M", "stock": 5}]),
            3,
            1,
        )
        .await;
    let cart = serde_json::json!([{"sku": "M", "quantity": 1}, {"sku": "S", "quantity": 2}]);
    let confirmed = rid(&app.buy_cart(&sale, "ann", cart.clone()).await);
    let (s, v) = app.reserve_cart(&sale, "bob", cart, None).await;
    assert_eq!(s, 201, "{v}");
    let expired = rid(&v);
    until_expired_and_swept(&app, &sale, &expired, "bob").await;
    app.drained(Duration::from_secs(30)).await;
    for (id, user, status) in [
        (&confirmed, "ann", "confirmed"),
        (&expired, "bob", "expired"),
    ] {
        assert!(
            !app.record_exists(&sale, id).await,
            "{status} record dropped"
        );
        let (s, v) = app.get_reservation(&sale, id, Some(user)).await;
        assert_eq!((s, v["status"].as_str()), (200, Some(status)), "{v}");
        assert_eq!(v["quantity"], 3, "{v}");
        let lines: Vec<(String, i64)> = v["items"]
            .as_array()
            .unwrap_or_else(|| panic!("items: {v}"))
            .iter()
            .map(|l| {
                (
                    l["sku"].as_str().unwrap_or_default().to_string(),
                    l["quantity"].as_i64().unwrap_or_default(),
                )
            })
            .collect();
        assert_eq!(lines, [("M".to_string(), 1), ("S".to_string(), 2)], "{v}");
    }
}

/// A batch Postgres rejects is written event by event: the events that
/// then land drop their final records too (the same step as in a whole
/// batch), while the one Postgres refuses stays pending.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_written_one_by_one_after_a_rejected_batch_drop_their_records() {
    let spawn = Spawn::new().await.no_worker();
    let settings = spawn.settings.clone();
    let app = spawn.start().await;
    refuse_poison_rows(&app.pool, "stock_movements").await;
    let sale = app.sale(10, 1, 300).await;
    let confirmed = app.buy(&sale, "ann", 1).await;
    assert_eq!(app.reserve(&sale, "poison", 1, None).await.0, 201);
    assert!(app.record_exists(&sale, &confirmed).await);

    // One worker reads all three events in one batch; Postgres refuses it.
    let stop = tokio_util::sync::CancellationToken::new();
    let worker = flashgate::startup::worker(&settings, &app.service.gate, &app.service.store)
        .await
        .expect("worker");
    let task = tokio::spawn(worker.run(stop.clone()));
    for attempt in 0.. {
        if !app.record_exists(&sale, &confirmed).await {
            break;
        }
        assert!(
            attempt < 300,
            "ann's confirmed record was never dropped after her events were written one by one"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop.cancel();
    task.await.expect("worker task");
    let (n,): (i64,) = sqlx::query_as(
        "SELECT count(*) FROM stock_movements WHERE user_id = 'ann' AND kind = 'confirmed'",
    )
    .fetch_one(&app.pool)
    .await
    .expect("movements");
    assert_eq!(n, 1, "ann's confirmed event is written once");
}

/// `FLASHGATE_DROP_FINAL_RECORDS=0`: the write-behind writes and
/// acknowledges as before, and the final records stay in Redis.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_dropping_off_final_records_stay_in_redis() {
    let app = Spawn::new()
        .await
        .with(|s| s.drop_final_records = false)
        .start()
        .await;
    let sale = app.sale(10, 1, 60).await;
    let confirmed = app.buy(&sale, "ann", 1).await;
    app.drained(Duration::from_secs(30)).await;
    assert!(
        app.record_exists(&sale, &confirmed).await,
        "the confirmed record is kept"
    );
    assert_eq!(orders(&app.pool, &sale).await.len(), 1);
}
