//! Write-behind to Postgres: every confirmed sale exactly once, through
//! worker crashes and Postgres outages.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use flashgate::config::ConfirmDurability;
use flashgate::startup;
use futures_util::future::join_all;
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::helpers::*;

/// What the buyers were told: confirmed reservations and units per user.
#[derive(Default)]
struct Told {
    confirmed: BTreeSet<String>,
    per_user: BTreeMap<String, i64>,
}

async fn assert_postgres_matches(app: &TestApp, sale: &str, told: &Told, cap: i64, stock: i64) {
    let orders: Vec<(String, String, i32)> = sqlx::query_as(
        "SELECT reservation_id::text, user_id, quantity FROM orders WHERE sale_id = $1",
    )
    .bind(sale)
    .fetch_all(&app.pool)
    .await
    .expect("orders");
    let got: BTreeSet<String> = orders.iter().map(|o| o.0.clone()).collect();
    assert_eq!(orders.len(), got.len(), "duplicate order rows");
    assert_eq!(got, told.confirmed, "orders = the confirmed set");
    let purchases: BTreeMap<String, i64> = sqlx::query_as::<_, (String, i32)>(
        "SELECT user_id, quantity FROM user_purchases WHERE sale_id = $1",
    )
    .bind(sale)
    .fetch_all(&app.pool)
    .await
    .expect("purchases")
    .into_iter()
    .map(|(u, q)| (u, i64::from(q)))
    .collect();
    assert_eq!(purchases, told.per_user, "user_purchases = per-user sums");
    // The checks a shop would run: no rows.
    let over: Vec<(String,)> =
        sqlx::query_as("SELECT sale_id FROM sales WHERE sold_count > stock_limit")
            .fetch_all(&app.pool)
            .await
            .expect("q");
    assert!(over.is_empty());
    let over_cap: Vec<(String,)> = sqlx::query_as(
        "SELECT user_id FROM orders WHERE sale_id = $1 GROUP BY user_id HAVING sum(quantity) > $2",
    )
    .bind(sale)
    .bind(cap)
    .fetch_all(&app.pool)
    .await
    .expect("q");
    assert!(over_cap.is_empty());
    let (sold,): (i64,) = sqlx::query_as("SELECT sold_count FROM sales WHERE sale_id = $1")
        .bind(sale)
        .fetch_one(&app.pool)
        .await
        .expect("sold");
    assert_eq!(sold, told.per_user.values().sum::<i64>());
    assert!(sold <= stock);
}

/// Reserve, confirm, cancel and expire in one run (write-behind only:
/// `redis` durability), then Postgres matches exactly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_matches_after_a_mixed_run() {
    let app = Arc::new(
        Spawn::new()
            .await
            .durability(ConfirmDurability::Redis)
            .start()
            .await,
    );
    let (stock, cap) = (60, 2);
    let sale = app.sale(stock, cap as u32, 1).await;
    let tasks = (0..80).map(|i| {
        let (app, sale) = (app.clone(), sale.clone());
        tokio::spawn(async move {
            let user = format!("u{}", i % 40);
            let (s, v) = app.reserve(&sale, &user, 1, None).await;
            if s != 201 {
                return (user, None);
            }
            let r = rid(&v);
            match i % 4 {
                0 | 1 => {
                    let (s, _) = app.act(&sale, &r, "confirm", Some(&user)).await;
                    assert_eq!(s, 200);
                    (user, Some(r))
                }
                2 => {
                    assert_eq!(app.act(&sale, &r, "cancel", Some(&user)).await.0, 200);
                    (user, None)
                }
                _ => (user, None), // left to expire
            }
        })
    });
    let mut told = Told::default();
    for r in join_all(tasks).await {
        if let (user, Some(r)) = r.expect("task") {
            told.confirmed.insert(r);
            *told.per_user.entry(user).or_default() += 1;
        }
    }
    assert!(!told.confirmed.is_empty());
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let v = app.view(&sale).await;
    assert_eq!(v["held"], 0, "expired holds came back: {v}");
    app.drained(Duration::from_secs(20)).await;
    assert_postgres_matches(&app, &sale, &told, cap, stock).await;
    // The audit trail has every event kind of the run.
    let kinds: Vec<(String, i64)> = sqlx::query_as(
        "SELECT kind, count(*) FROM stock_movements WHERE sale_id = $1 GROUP BY kind ORDER BY kind",
    )
    .bind(&sale)
    .fetch_all(&app.pool)
    .await
    .expect("kinds");
    let kinds: BTreeMap<String, i64> = kinds.into_iter().collect();
    assert_eq!(
        kinds.get("confirmed").copied(),
        Some(told.confirmed.len() as i64)
    );
    for k in ["configured", "reserved", "cancelled", "expired"] {
        assert!(kinds.contains_key(k), "no {k} event: {kinds:?}");
    }
}

/// The worker killed (task aborted) three times during a 200-confirm run:
/// Postgres ends exact, no duplicate rows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_killed_mid_batch_three_times() {
    let spawn = Spawn::new()
        .await
        .durability(ConfirmDurability::Redis)
        .no_worker()
        .with(|s| {
            s.worker_batch = 16;
            s.worker_claim_idle = Duration::from_millis(300);
        });
    let settings = spawn.settings.clone();
    let app = Arc::new(spawn.start().await);
    let sale = app.sale(200, 1, 300).await;
    let buyers = (0..200).map(|i| {
        let (app, sale) = (app.clone(), sale.clone());
        tokio::spawn(async move {
            let user = format!("b{i}");
            let (s, v) = app.reserve(&sale, &user, 1, None).await;
            assert_eq!(s, 201, "{v}");
            let r = rid(&v);
            assert_eq!(app.act(&sale, &r, "confirm", Some(&user)).await.0, 200);
            (user, r)
        })
    });
    let load = tokio::spawn(join_all(buyers));
    for _ in 0..3 {
        let w = startup::worker(&settings, &app.service.gate, &app.service.store)
            .await
            .expect("worker");
        let task = tokio::spawn(w.run(CancellationToken::new()));
        tokio::time::sleep(Duration::from_millis(150)).await;
        task.abort();
        let _ = task.await;
    }
    let mut told = Told::default();
    for r in load.await.expect("load") {
        let (user, r) = r.expect("buyer");
        told.confirmed.insert(r);
        *told.per_user.entry(user).or_default() += 1;
    }
    let w = startup::worker(&settings, &app.service.gate, &app.service.store)
        .await
        .expect("worker");
    let stop = CancellationToken::new();
    let last = tokio::spawn(w.run(stop.clone()));
    app.drained(Duration::from_secs(30)).await;
    stop.cancel();
    last.await.expect("worker stops");
    assert_eq!(told.confirmed.len(), 200);
    assert_postgres_matches(&app, &sale, &told, 1, 200).await;
    let (movements, distinct): (i64, i64) = sqlx::query_as("SELECT count(*), count(DISTINCT (kind, reservation_id)) FROM stock_movements WHERE sale_id = $1 AND kind IN ('reserved','confirmed')").bind(&sale).fetch_one(&app.pool).await.expect("q");
    assert_eq!((movements, distinct), (400, 400));
}

/// Postgres unreachable: reserves keep working, confirms answer 503 (not
/// durable yet) and succeed on retry once it is back; the worker catches up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_outage_keeps_buyers_going_and_catches_up() {
    let proxy = FaultProxy::start("127.0.0.1:5432").await;
    let db = fresh_database().await;
    let name = db.rsplit('/').next().expect("db name").to_string();
    let via_proxy = format!("postgres://postgres@127.0.0.1:{}/{name}", proxy.port);
    let app = Spawn::new().await.with(|s| {
        s.database_url = flashgate::config::Secret::new(via_proxy.clone());
        s.confirm_timeout = Duration::from_millis(500);
        s.db_timeout = Duration::from_millis(500);
    });
    let app = app.start().await;
    let sale = app.sale(10, 2, 300).await;
    let (_, before) = app.reserve(&sale, "ann", 1, None).await;
    proxy.cut();
    // Buyers are not affected on the Redis side.
    let (s, held) = app.reserve(&sale, "bob", 1, None).await;
    assert_eq!(s, 201, "{held}");
    let (s, v) = app.act(&sale, &rid(&held), "confirm", Some("bob")).await;
    assert_eq!(
        (s, error_code(&v)),
        (503, "unavailable"),
        "not acknowledged before it is durable"
    );
    readyz_until(&app, Duration::from_secs(10), |s, v| {
        (s, v["status"].as_str(), v["postgres"].as_str()) == (200, Some("degraded"), Some("down"))
    })
    .await;
    proxy.restore();
    // The retry is answered 200 and the row is there exactly once.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (s, _) = app.act(&sale, &rid(&held), "confirm", Some("bob")).await;
        if s == 200 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "confirm never succeeded after Postgres came back"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(
        app.act(&sale, &rid(&before), "confirm", Some("ann"))
            .await
            .0,
        200
    );
    app.drained(Duration::from_secs(20)).await;
    let mut told = Told::default();
    told.confirmed.insert(rid(&held));
    told.confirmed.insert(rid(&before));
    told.per_user.insert("ann".into(), 1);
    told.per_user.insert("bob".into(), 1);
    assert_postgres_matches(&app, &sale, &told, 2, 10).await;
}

/// Replaying events (the same entry twice in one batch, a whole batch
/// twice) changes nothing.
#[tokio::test]
async fn replayed_events_change_nothing() {
    let app = Spawn::new().await.no_worker().start().await;
    let sale = app.sale(5, 2, 60).await;
    let order_event = |id: &str, rid: &uuid::Uuid| {
        let m: std::collections::HashMap<String, redis::Value> = [
            ("kind", "confirmed".to_string()),
            ("sale", sale.clone()),
            ("rid", rid.to_string()),
            ("user", "ann".into()),
            ("qty", "1".into()),
            ("at", "1795422534255".into()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), redis::Value::BulkString(v.into_bytes())))
        .collect();
        flashgate::store::Event::parse(id, &m).expect("event")
    };
    let (r1, r2) = (uuid::Uuid::new_v4(), uuid::Uuid::new_v4());
    let batch = vec![
        order_event("1-0", &r1),
        order_event("1-0", &r1),
        order_event("1-1", &r2),
    ];
    app.service.store.apply_events(&batch).await.expect("apply");
    app.service
        .store
        .apply_events(&batch)
        .await
        .expect("apply again");
    let (n, q): (i64, i64) =
        sqlx::query_as("SELECT count(*), sum(quantity)::int8 FROM orders WHERE sale_id = $1")
            .bind(&sale)
            .fetch_one(&app.pool)
            .await
            .expect("q");
    assert_eq!((n, q), (2, 2));
    let (bought,): (i32,) = sqlx::query_as(
        "SELECT quantity FROM user_purchases WHERE sale_id = $1 AND user_id = 'ann'",
    )
    .bind(&sale)
    .fetch_one(&app.pool)
    .await
    .expect("q");
    assert_eq!(bought, 2);
    let (sold,): (i64,) = sqlx::query_as("SELECT sold_count FROM sales WHERE sale_id = $1")
        .bind(&sale)
        .fetch_one(&app.pool)
        .await
        .expect("q");
    assert_eq!(sold, 2);
    let (m,): (i64,) = sqlx::query_as(
        "SELECT count(*) FROM stock_movements WHERE sale_id = $1 AND kind = 'confirmed'",
    )
    .bind(&sale)
    .fetch_one(&app.pool)
    .await
    .expect("q");
    assert_eq!(m, 2);
    let _ = json!({});
}

/// Three workers (as three flashgate instances would run) drain the same
/// streams at once: every order exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_workers_at_once_write_each_order_once() {
    let spawn = Spawn::new()
        .await
        .durability(ConfirmDurability::Redis)
        .no_worker()
        .with(|s| s.worker_batch = 8);
    let settings = spawn.settings.clone();
    let app = Arc::new(spawn.start().await);
    let stop = CancellationToken::new();
    let mut workers = Vec::new();
    for _ in 0..3 {
        let w = startup::worker(&settings, &app.service.gate, &app.service.store)
            .await
            .expect("worker");
        workers.push(tokio::spawn(w.run(stop.clone())));
    }
    let sale = app.sale(120, 1, 300).await;
    let buyers = (0..120).map(|i| {
        let (app, sale) = (app.clone(), sale.clone());
        tokio::spawn(async move {
            let user = format!("w{i}");
            let (s, v) = app.reserve(&sale, &user, 1, None).await;
            assert_eq!(s, 201, "{v}");
            let r = rid(&v);
            assert_eq!(app.act(&sale, &r, "confirm", Some(&user)).await.0, 200);
            (user, r)
        })
    });
    let mut told = Told::default();
    for r in join_all(buyers).await {
        let (user, r) = r.expect("buyer");
        told.confirmed.insert(r);
        *told.per_user.entry(user).or_default() += 1;
    }
    app.drained(Duration::from_secs(30)).await;
    stop.cancel();
    for w in workers {
        w.await.expect("worker stops");
    }
    assert_postgres_matches(&app, &sale, &told, 1, 120).await;
}
