//! The write-behind worker in trouble: killed mid-batch, Postgres away.

use std::sync::Arc;
use std::time::Duration;

use flashgate::config::ConfirmDurability;
use flashgate::startup;
use futures_util::future::join_all;
use tokio_util::sync::CancellationToken;

use super::{assert_postgres_matches, Told};
use crate::support::proxy::FaultProxy;
use crate::support::*;

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
        told.add(&user, r);
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
    let proxy = FaultProxy::postgres().await;
    let app = Spawn::via_pg_proxy(&proxy)
        .await
        .with(|s| {
            s.confirm_timeout = Duration::from_millis(500);
            s.db_timeout = Duration::from_millis(500);
        })
        .start()
        .await;
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
    told.add("bob", rid(&held));
    told.add("ann", rid(&before));
    assert_postgres_matches(&app, &sale, &told, 2, 10).await;
}
